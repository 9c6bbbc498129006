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
        lock_file(&lock, read_only).map_err(|_| DiskOpenError::Locked {
            path: path.to_owned(),
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

/// Takes an open-file-description lock on the whole file, as virtio-blk does for raw
/// images: shared for a read-only disk, exclusive otherwise.
fn lock_file(file: &std::fs::File, read_only: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let kind = if read_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    };
    // SAFETY: `flock` is plain data; all-zero is a valid value that the fields below complete.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads the `flock` we pass, which lives for the call.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
