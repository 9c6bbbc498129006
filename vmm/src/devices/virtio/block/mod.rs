//! virtio-blk over a raw image file.
//!
//! Data flow: the driver queues a request (header, data buffers, status byte) and kicks the
//! queue; the worker thread ([`request::BlockHandler`]) wakes on the eventfd, splits the
//! chain into its device-readable and device-writable bytes, and moves data with one
//! `preadv`/`pwritev` whose iovecs point straight into guest memory: no bounce buffer, no
//! per-request allocation. Discard and write-zeroes become `fallocate`. Anything malformed
//! ends that one request with `VIRTIO_BLK_S_IOERR` (or, with no status byte to write, with
//! the chain returned unused); the device keeps serving.

pub mod request;

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::worker::Worker;
use super::{
    Activation, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, VirtioError,
    read_config_bytes,
};
use request::{BlockHandler, Disk};

/// Virtio device id of a block device.
pub const DEVICE_TYPE: u16 = 2;
pub const SECTOR_SIZE: u64 = 512;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments one request may carry (the queue minus header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Segments one discard or write-zeroes request may carry.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Sectors one discard or write-zeroes segment may cover (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;

pub const F_SEG_MAX: u32 = 2;
pub const F_RO: u32 = 5;
pub const F_BLK_SIZE: u32 = 6;
pub const F_FLUSH: u32 = 9;
pub const F_DISCARD: u32 = 13;
pub const F_WRITE_ZEROES: u32 = 14;

/// Length of `struct virtio_blk_config` up to `write_zeroes_may_unmap` and its padding.
const CONFIG_LEN: usize = 60;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the size of {path}")]
    Metadata {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A virtio block device.
pub struct Block {
    disk: Disk,
    config: [u8; CONFIG_LEN],
    worker: Option<Worker>,
}

impl Block {
    /// Opens the raw image at `path`. `id` is what GET_ID answers (up to 20 bytes, the
    /// serial a Linux guest shows in /dev/disk/by-id).
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| BlockError::Metadata {
                path: path.to_owned(),
                source,
            })?
            .len();
        Ok(Self::from_file(file, len / SECTOR_SIZE, read_only, id))
    }

    /// A device over an open file of `sectors` sectors.
    pub fn from_file(file: File, sectors: u64, read_only: bool, id: &str) -> Self {
        let mut serial = [0u8; 20];
        let n = id.len().min(serial.len());
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        let mut config = [0u8; CONFIG_LEN];
        let mut put = |at: usize, bytes: &[u8]| config[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &sectors.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEG.to_le_bytes());
        put(44, &1u32.to_le_bytes());
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(52, &MAX_DISCARD_SEG.to_le_bytes());
        put(56, &[1]);
        Self {
            disk: Disk::new(file, sectors, read_only, serial),
            config,
            worker: None,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Mass storage, "other" (what virtio-blk has always reported).
        (0x01, 0x80, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << F_SEG_MAX
            | 1 << F_BLK_SIZE
            | 1 << F_FLUSH
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC;
        if self.disk.read_only() {
            f |= 1 << F_RO;
        } else {
            f |= 1 << F_DISCARD | 1 << F_WRITE_ZEROES;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        let Activation {
            mem,
            interrupt,
            mut queues,
            ..
        } = activation;
        let got = queues.len();
        let (Some(q), 1) = (queues.pop(), got) else {
            return Err(VirtioError::QueueCount { got, want: 1 });
        };
        let disk = self.disk.try_clone().map_err(VirtioError::SpawnWorker)?;
        let handler = BlockHandler::new(mem, q.queue, q.index, interrupt, disk);
        self.worker = Some(Worker::spawn("hospes-blk", vec![q.event], handler)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}
