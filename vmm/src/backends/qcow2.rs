//! Disk images in the qcow2 format, through the `imago` crate (its synchronous API).
//!
//! Data flow: the disk controllers (virtio-blk's worker, AHCI on a vCPU thread) call the
//! [`DiskImage`] trait; [`Qcow2Image`] turns each call into imago's read/write on the
//! virtual disk, which walks the image's cluster tables and, for clusters the image does
//! not hold, its backing chain. imago opens that chain from the image headers (a
//! relative backing name is taken relative to the image's folder), read-only; only the top
//! image is ever written. A guest flush writes imago's cached metadata and then syncs the
//! files.
//!
//! [`open_disk`] is what the machine calls for every disk: a raw image stays a plain file
//! (so virtio-blk keeps its `preadv`/`pwritev` path), a qcow2 image becomes a
//! [`Qcow2Image`].

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hospes_core::config::DiskFormat;
use hospes_devices::disk_image::{DiskImage, RawImage};
use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};

/// Why a disk image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    #[error("cannot open the disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not a usable qcow2 image (or one of its backing files is missing or damaged)"
    )]
    Qcow2 {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is in use by another program (a running VM?)")]
    Locked { path: PathBuf },
}

/// A qcow2 image with its backing chain, seen as the virtual disk.
pub struct Qcow2Image {
    access: FormatAccess<ImagoFile>,
    size: u64,
    /// A descriptor on the top image holding its open-file-description lock (exclusive when
    /// writable), so two VMs never write one image.
    _lock: std::fs::File,
    path: PathBuf,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish()
    }
}

impl Qcow2Image {
    /// Opens the qcow2 image at `path` and its backing chain (read-only); the top image
    /// writable unless `read_only`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskOpenError> {
        let lock = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskOpenError::Open {
                path: path.to_owned(),
                source,
            })?;
        hospes_devices::disk_image::lock_image(&lock, read_only).map_err(|_| {
            DiskOpenError::Locked {
                path: path.to_owned(),
            }
        })?;
        let qcow2 = Qcow2::<ImagoFile>::builder_path(path)
            .write(!read_only)
            .open(PermissiveImplicitOpenGate::default())
            .map_err(|source| DiskOpenError::Qcow2 {
                path: path.to_owned(),
                source,
            })?;
        let access = FormatAccess::new(qcow2);
        Ok(Self {
            size: access.size(),
            access,
            _lock: lock,
            path: path.to_owned(),
        })
    }
}

impl DiskImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        self.access.read(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        self.access.write(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.access.flush()?;
        self.access.sync()
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(
            self.size,
            offset,
            usize::try_from(len).unwrap_or(usize::MAX),
        )?;
        self.access.write_zeroes(offset, len)
    }
}

/// Refuses an access past the virtual disk's end (imago would read zeroes there).
fn check_range(size: u64, offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "access past the end of the disk",
        )),
    }
}

/// Opens the disk image at `path` in `format` for a disk controller. `None` for a raw
/// image: the controller opens the file itself (virtio-blk with its lock and fast path).
pub fn open_disk(
    path: &Path,
    format: DiskFormat,
    read_only: bool,
) -> Result<Option<Arc<dyn DiskImage>>, DiskOpenError> {
    match format {
        DiskFormat::Raw => Ok(None),
        DiskFormat::Qcow2 => Ok(Some(Arc::new(Qcow2Image::open(path, read_only)?))),
    }
}

/// Deepest backing chain [`backing_chain`] follows.
const MAX_CHAIN: usize = 16;
/// Longest backing file name a qcow2 header may hold.
const MAX_BACKING_NAME: u32 = 1023;

/// The files below the qcow2 image at `path`: its backing file, that one's, and so on,
/// each resolved as the image's driver resolves it (relative to the image's folder). For
/// the sandbox, which must let the helper open them at every boot. A file that is not
/// qcow2 (a raw base) ends the chain; an unreadable one is left for the open to report.
pub fn backing_chain(path: &Path) -> Vec<PathBuf> {
    let mut chain = Vec::new();
    let mut current = path.to_path_buf();
    while chain.len() < MAX_CHAIN {
        let Some(next) = backing_file(&current) else {
            break;
        };
        chain.push(next.clone());
        current = next;
    }
    chain
}

/// The backing file a qcow2 header names, resolved; `None` for none or not qcow2.
fn backing_file(image: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(image).ok()?;
    let mut header = [0u8; 20];
    file.read_exact_at(&mut header, 0).ok()?;
    if header[..4] != *b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let len = u32::from_be_bytes(header[16..20].try_into().ok()?);
    if offset == 0 || len == 0 || len > MAX_BACKING_NAME {
        return None;
    }
    let mut name = vec![0u8; len as usize];
    file.read_exact_at(&mut name, offset).ok()?;
    let name =
        PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(name));
    Some(match image.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name,
    })
}

/// Opens a raw image as a [`DiskImage`] (for tests and tools that want the trait).
pub fn open_raw(path: &Path, read_only: bool) -> Result<RawImage, DiskOpenError> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|source| DiskOpenError::Open {
            path: path.to_owned(),
            source,
        })?;
    RawImage::new(file).map_err(|source| DiskOpenError::Open {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hospes_core::snapshots::create_qcow2;

    const MIB: u64 = 1 << 20;

    #[test]
    fn reads_writes_and_keeps_data_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.qcow2");
        create_qcow2(&path, MIB, None).unwrap();
        {
            let img = Qcow2Image::open(&path, false).unwrap();
            assert_eq!(img.size(), MIB);
            let mut buf = [0xffu8; 4096];
            img.read_at(&mut buf, 0).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "a new image reads as zeroes");
            img.write_at(&[0xab; 1000], 70_000).unwrap();
            img.flush().unwrap();
            // The last byte of the disk is addressable; one past it is not.
            img.write_at(&[1], MIB - 1).unwrap();
            assert!(img.read_at(&mut [0u8; 2], MIB - 1).is_err());
            assert!(img.write_at(&[0u8; 2], MIB - 1).is_err());
            assert!(img.read_at(&mut [0u8; 1], u64::MAX).is_err());
        }
        let img = Qcow2Image::open(&path, true).unwrap();
        let mut buf = vec![0u8; 1002];
        img.read_at(&mut buf, 69_999).unwrap();
        assert_eq!(buf[0], 0);
        assert!(buf[1..1001].iter().all(|&b| b == 0xab));
        assert_eq!(buf[1001], 0);
        let mut last = [0u8];
        img.read_at(&mut last, MIB - 1).unwrap();
        assert_eq!(last, [1]);
        img.write_zeroes(70_000, 10).unwrap_err(); // read-only
    }

    #[test]
    fn write_zeroes_clears_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.qcow2");
        create_qcow2(&path, MIB, None).unwrap();
        let img = Qcow2Image::open(&path, false).unwrap();
        img.write_at(&[7; 8192], 0).unwrap();
        img.write_zeroes(512, 4096).unwrap();
        let mut buf = vec![0u8; 8192];
        img.read_at(&mut buf, 0).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 7));
        assert!(buf[512..4608].iter().all(|&b| b == 0));
        assert!(buf[4608..].iter().all(|&b| b == 7));
    }

    #[test]
    fn reads_through_a_backing_chain_and_writes_only_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let top = dir.path().join("top.qcow2");
        create_qcow2(&base, MIB, None).unwrap();
        Qcow2Image::open(&base, false)
            .unwrap()
            .write_at(&[0x42; 512], 0)
            .unwrap();
        // The backing name is relative: imago finds it next to the top image.
        create_qcow2(&top, MIB, Some("base.qcow2")).unwrap();
        {
            let img = Qcow2Image::open(&top, false).unwrap();
            let mut buf = [0u8; 512];
            img.read_at(&mut buf, 0).unwrap();
            assert_eq!(buf, [0x42; 512]);
            img.write_at(&[0x43; 256], 256).unwrap();
            img.flush().unwrap();
            img.read_at(&mut buf, 0).unwrap();
            assert_eq!(buf[..256], [0x42; 256]);
            assert_eq!(buf[256..], [0x43; 256]);
        }
        let mut buf = [0u8; 512];
        Qcow2Image::open(&base, true)
            .unwrap()
            .read_at(&mut buf, 0)
            .unwrap();
        assert_eq!(buf, [0x42; 512], "the backing image is never written");
    }

    #[test]
    fn lists_the_backing_chain_the_sandbox_must_let_through() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let base = other.path().join("base.qcow2");
        let mid = dir.path().join("mid.qcow2");
        let top = dir.path().join("top.qcow2");
        create_qcow2(&base, MIB, None).unwrap();
        // An absolute backing name in another folder, then a relative one.
        create_qcow2(&mid, MIB, Some(base.to_str().unwrap())).unwrap();
        create_qcow2(&top, MIB, Some("mid.qcow2")).unwrap();
        assert_eq!(backing_chain(&top), [mid.clone(), base.clone()]);
        assert!(backing_chain(&base).is_empty());
        // A raw file is no qcow2: no chain, no error.
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, [0u8; 4096]).unwrap();
        assert!(backing_chain(&raw).is_empty());
    }

    #[test]
    fn a_missing_backing_file_or_a_bad_header_names_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top.qcow2");
        create_qcow2(&top, MIB, Some("gone.qcow2")).unwrap();
        let err = Qcow2Image::open(&top, false).unwrap_err();
        assert!(matches!(err, DiskOpenError::Qcow2 { .. }), "{err:?}");
        let chain = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(
            chain.contains("top.qcow2") && chain.contains("gone.qcow2"),
            "{chain}"
        );

        let raw = dir.path().join("raw.img");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let err = Qcow2Image::open(&raw, false).unwrap_err();
        assert!(err.to_string().contains("raw.img"), "{err}");
        let err = Qcow2Image::open(&dir.path().join("none.qcow2"), false).unwrap_err();
        assert!(matches!(err, DiskOpenError::Open { .. }), "{err:?}");
    }

    #[test]
    fn a_writable_image_is_locked_against_a_second_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.qcow2");
        create_qcow2(&path, MIB, None).unwrap();
        let _first = Qcow2Image::open(&path, false).unwrap();
        let err = Qcow2Image::open(&path, false).unwrap_err();
        assert!(matches!(err, DiskOpenError::Locked { .. }), "{err:?}");
    }

    #[test]
    fn open_disk_leaves_raw_images_to_the_controllers() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("r.img");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        assert!(open_disk(&raw, DiskFormat::Raw, false).unwrap().is_none());
        let img = open_raw(&raw, false).unwrap();
        assert_eq!(img.size(), 4096);
        assert!(img.raw_file().is_some());
    }
}
