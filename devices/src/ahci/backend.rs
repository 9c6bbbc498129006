//! What sits behind an AHCI port: a disk image or a CD/DVD image, as an open file.
//!
//! Data flow: the command engine ([`super::port`]) asks a [`Medium`] for whole sectors at a
//! byte offset; the medium reads or writes them with `pread`/`pwrite` (`FileExt`) on the
//! vCPU thread that wrote PxCI. A CD drive's medium comes and goes ([`Drive::cdrom`] with no
//! file is an empty tray); a disk always has one. Images are never grown: the size is
//! fixed when the medium is inserted, and every access is checked against it first.

use std::fs::File;
use std::sync::Arc;

use crate::disk_image::{DiskImage, RawImage};

use super::AhciError;
use super::prdt::Transfer;

/// Bytes moved between the image and guest memory at a time.
const CHUNK: usize = 64 << 10;

/// What kind of device a port holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveKind {
    /// An ATA hard disk of 512-byte sectors.
    Disk,
    /// An ATAPI CD/DVD drive of 2048-byte sectors, read-only, removable medium.
    Cdrom,
}

/// A device to attach to a port ([`super::AhciPort::attach`]).
#[derive(Debug)]
pub struct Drive {
    pub kind: DriveKind,
    /// The image file (raw); `None` is an empty CD tray, or a disk given as `image`.
    pub file: Option<File>,
    /// A disk image of any format, used when `file` is `None`.
    pub image: Option<Arc<dyn DiskImage>>,
    /// Refuse writes. Always true in effect for a CD.
    pub read_only: bool,
    /// The serial number IDENTIFY reports (first 20 ASCII bytes used).
    pub serial: String,
}

impl Drive {
    /// A hard disk over `file`.
    pub fn disk(file: File, read_only: bool, serial: &str) -> Self {
        Self {
            kind: DriveKind::Disk,
            file: Some(file),
            image: None,
            read_only,
            serial: serial.to_owned(),
        }
    }

    /// A hard disk over `image` (any format).
    pub fn disk_image(image: Arc<dyn DiskImage>, read_only: bool, serial: &str) -> Self {
        Self {
            kind: DriveKind::Disk,
            file: None,
            image: Some(image),
            read_only,
            serial: serial.to_owned(),
        }
    }

    /// A CD/DVD drive holding `file` (an ISO image), or empty.
    pub fn cdrom(file: Option<File>, serial: &str) -> Self {
        Self {
            kind: DriveKind::Cdrom,
            file,
            image: None,
            read_only: true,
            serial: serial.to_owned(),
        }
    }
}

/// An image inserted in a drive, with its size fixed at insertion.
#[derive(Debug)]
pub struct Medium {
    image: Arc<dyn DiskImage>,
    /// The file of a raw image, given back on eject.
    file: Option<File>,
    bytes: u64,
    read_only: bool,
}

impl Medium {
    /// Wraps the raw image `file`, measuring it by seeking to its end (which works for
    /// block devices, whose metadata length is zero).
    pub fn new(file: File, read_only: bool) -> Result<Self, AhciError> {
        let keep = file.try_clone().map_err(AhciError::Image)?;
        let image = RawImage::new(file).map_err(AhciError::Image)?;
        let mut m = Self::from_image(Arc::new(image), read_only);
        m.file = Some(keep);
        Ok(m)
    }

    /// Wraps `image` (any format).
    pub fn from_image(image: Arc<dyn DiskImage>, read_only: bool) -> Self {
        Self {
            bytes: image.size(),
            image,
            file: None,
            read_only,
        }
    }

    /// Whole sectors of `sector_size` bytes the image holds (a partial last sector is
    /// not addressable).
    pub fn sectors(&self, sector_size: u64) -> u64 {
        self.bytes / sector_size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Fills `buf` from byte `offset`; the caller checked the range against [`Self::sectors`].
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), AhciError> {
        self.image.read_at(buf, offset).map_err(AhciError::Image)
    }

    /// Writes `buf` at byte `offset`; refused on a read-only medium.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), AhciError> {
        if self.read_only {
            return Err(AhciError::ReadOnly);
        }
        self.image.write_at(buf, offset).map_err(AhciError::Image)
    }

    /// Makes written data durable (FLUSH CACHE).
    pub fn flush(&self) -> Result<(), AhciError> {
        if self.read_only {
            return Ok(());
        }
        self.image.flush().map_err(AhciError::Image)
    }

    /// Streams `bytes` from byte `offset` of the image into guest memory through `xfer`.
    /// The caller checked the range; a PRDT too short for all of it fails up front.
    pub fn read_into(&self, xfer: &mut Transfer, offset: u64, bytes: u64) -> Result<(), AhciError> {
        self.stream(xfer, offset, bytes, |m, x, chunk, at| {
            m.read_at(chunk, at)?;
            x.put(chunk)
        })
    }

    /// Streams `bytes` from guest memory through `xfer` to byte `offset` of the image.
    pub fn write_from(
        &self,
        xfer: &mut Transfer,
        offset: u64,
        bytes: u64,
    ) -> Result<(), AhciError> {
        if self.read_only {
            return Err(AhciError::ReadOnly);
        }
        self.stream(xfer, offset, bytes, |m, x, chunk, at| {
            x.take(chunk)?;
            m.write_at(chunk, at)
        })
    }

    fn stream(
        &self,
        xfer: &mut Transfer,
        offset: u64,
        bytes: u64,
        mut step: impl FnMut(&Self, &mut Transfer, &mut [u8], u64) -> Result<(), AhciError>,
    ) -> Result<(), AhciError> {
        if xfer.capacity() < bytes {
            return Err(AhciError::PrdtTooShort);
        }
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(bytes).unwrap_or(CHUNK))];
        let mut at = offset;
        let end = offset.saturating_add(bytes);
        while at < end {
            let n = usize::try_from(end - at).map_or(buf.len(), |left| left.min(buf.len()));
            let chunk = buf.get_mut(..n).ok_or(AhciError::PrdtTooShort)?;
            step(self, xfer, chunk, at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Gives the file back (an ejected disc); `None` for an image that is not a raw file.
    pub fn into_file(self) -> Option<File> {
        self.file
    }
}
