//! What a disk controller reads and writes: a disk image seen as a flat run of bytes.
//!
//! virtio-blk and AHCI address a disk by byte offset and never know its file format. A
//! raw image is the file itself ([`RawImage`]); other formats (qcow2, through `vmm`'s
//! backends) implement [`DiskImage`] over their own files. A raw image also hands out its
//! file ([`DiskImage::raw_file`]) so that virtio-blk keeps moving data with one
//! `preadv`/`pwritev` straight into guest memory; other formats go through a bounce copy.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A disk image: fixed size, byte-addressed, safe to use from several threads at once.
pub trait DiskImage: Send + Sync + std::fmt::Debug {
    /// The virtual size in bytes (what the guest sees).
    fn size(&self) -> u64;

    /// Fills `buf` from byte `offset`; the caller keeps `offset + buf.len()` within
    /// [`Self::size`].
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes `buf` at byte `offset`, within [`Self::size`].
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes every completed write durable (a guest's flush).
    fn flush(&self) -> io::Result<()>;

    /// Makes bytes `[offset, offset + len)` read as zeroes.
    fn write_zeroes(&self, mut offset: u64, mut len: u64) -> io::Result<()> {
        static ZEROES: [u8; 4096] = [0; 4096];
        while len > 0 {
            let n = len.min(ZEROES.len() as u64) as usize;
            self.write_at(&ZEROES[..n], offset)?;
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }

    /// Says bytes `[offset, offset + len)` are no longer needed (a hint; the default keeps
    /// them).
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    /// The file holding the bytes one to one, for a raw image: callers may then read and
    /// write it directly (vectored, without a bounce buffer) at the same offsets.
    fn raw_file(&self) -> Option<&File> {
        None
    }
}

/// A raw image: the file's bytes are the disk's bytes.
#[derive(Debug)]
pub struct RawImage {
    file: File,
    size: u64,
}

impl RawImage {
    /// Wraps `file`, measuring it by seeking to its end (which works for block devices,
    /// whose metadata length is zero).
    pub fn new(mut file: File) -> io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Self { file, size })
    }

    /// A raw image over `file` of `size` bytes.
    pub fn with_size(file: File, size: u64) -> Self {
        Self { file, size }
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

impl DiskImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn raw_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

/// Takes an open-file-description lock on the whole image: shared for a read-only disk,
/// exclusive otherwise, so two VMs (or a VM and a tool that locks the same way, like QEMU)
/// never write one image at once. The lock lives as long as the file and its clones.
pub fn lock_image(file: &std::fs::File, read_only: bool) -> std::io::Result<()> {
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
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_image_reads_writes_and_zeroes() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[7u8; 8192], 0).unwrap();
        let img = RawImage::new(f.try_clone().unwrap()).unwrap();
        assert_eq!(img.size(), 8192);
        img.write_at(b"hello", 100).unwrap();
        let mut buf = [0u8; 7];
        img.read_at(&mut buf, 99).unwrap();
        assert_eq!(&buf, b"\x07hello\x07");
        img.write_zeroes(1000, 5000).unwrap();
        let mut buf = vec![1u8; 5002];
        img.read_at(&mut buf, 999).unwrap();
        assert_eq!(buf[0], 7);
        assert!(buf[1..5001].iter().all(|&b| b == 0));
        assert_eq!(buf[5001], 7);
        img.flush().unwrap();
        assert!(img.raw_file().is_some());
        // Past the end of the file: an error, not a short read.
        assert!(img.read_at(&mut [0u8; 16], 8190).is_err());
    }
}
