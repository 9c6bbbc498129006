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
use std::sync::Arc;

use crate::disk_image::{DiskImage, RawImage};

use super::QueuePosition;
use super::worker::Worker;
use super::{
    Activation, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, VirtioError,
    read_config_bytes,
};
use crate::state::StateError;
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
    #[error("{path} is in use by another program (a running VM?)")]
    Locked { path: std::path::PathBuf },
    #[error("cannot lock {path}")]
    Lock {
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
        crate::disk_image::lock_image(&file, read_only).map_err(|source| {
            if matches!(source.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
                BlockError::Locked {
                    path: path.to_owned(),
                }
            } else {
                BlockError::Lock {
                    path: path.to_owned(),
                    source,
                }
            }
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

    /// A device over an open raw file of `sectors` sectors.
    pub fn from_file(file: File, sectors: u64, read_only: bool, id: &str) -> Self {
        let image = RawImage::with_size(file, sectors * SECTOR_SIZE);
        Self::from_image(Arc::new(image), read_only, id)
    }

    /// A device over `image` (any format), its size rounded down to whole sectors.
    pub fn from_image(image: Arc<dyn DiskImage>, read_only: bool, id: &str) -> Self {
        let sectors = image.size() / SECTOR_SIZE;
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
            disk: Disk::new(image, sectors, read_only, serial),
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
        let (mem, interrupt, q) = activation.single_queue()?;
        let disk = self.disk.try_clone().map_err(VirtioError::SpawnWorker)?;
        let handler = BlockHandler::new(mem, q.queue, q.index, interrupt, disk);
        self.worker = Some(Worker::spawn("hospes-blk", vec![q.event], handler)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn state_name(&self) -> &str {
        "virtio-blk"
    }

    fn can_save(&self) -> bool {
        true
    }

    /// Requests are served synchronously by the worker: once it stopped, every request it
    /// took is in the used ring, and those it did not take wait in the avail ring.
    fn pause(&mut self) -> Result<Vec<QueuePosition>, StateError> {
        super::pause_worker("virtio-blk", &mut self.worker, |h: &BlockHandler| {
            vec![h.position()]
        })
    }

    fn save_device_state(&mut self) -> Result<Vec<u8>, StateError> {
        crate::state::encode(
            "virtio-blk",
            &BlockState {
                sectors: self.sectors(),
                read_only: self.disk.read_only(),
            },
        )
    }

    fn restore_device_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let s: BlockState = crate::state::decode("virtio-blk", state)?;
        if s.sectors != self.sectors() || s.read_only != self.disk.read_only() {
            return Err(StateError::mismatch(
                "virtio-blk",
                format!(
                    "saved with a disk of {} sectors{}, this one has {}{}",
                    s.sectors,
                    if s.read_only { " (read-only)" } else { "" },
                    self.sectors(),
                    if self.disk.read_only() {
                        " (read-only)"
                    } else {
                        ""
                    },
                ),
            ));
        }
        Ok(())
    }
}

/// What a block device checks on restore: the disk the guest saw (its contents belong to
/// the image, which the VM's configuration names).
#[derive(serde::Serialize, serde::Deserialize)]
struct BlockState {
    sectors: u64,
    read_only: bool,
}

impl Block {
    fn sectors(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.config[..8]);
        u64::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};

    use vm_memory::{Bytes, GuestAddress};

    use super::request::{
        S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES,
    };
    use super::*;
    use crate::state::Snapshot;
    use crate::virtio::testing::{
        DATA, MockDriver, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    };

    const SECTORS: u64 = 64;
    const HDR: u64 = DATA;
    const BUF: u64 = DATA + 0x1000;
    const STATUS: u64 = DATA + 0x800;

    /// A disk whose sector `n` is filled with byte `n`.
    fn image() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for n in 0..SECTORS {
            f.write_all(&[n as u8; 512]).unwrap();
        }
        f
    }

    fn start(f: &tempfile::NamedTempFile, read_only: bool) -> MockDriver {
        let blk = Block::open(f.path(), read_only, "serial-123").unwrap();
        MockDriver::started(Box::new(blk), 16)
    }

    fn header(d: &MockDriver, kind: u32, sector: u64) {
        d.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        d.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        d.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        d.mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
    }

    fn status(d: &MockDriver) -> u8 {
        d.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn sector_of_file(f: &tempfile::NamedTempFile, n: u64) -> Vec<u8> {
        let mut file = f.reopen().unwrap();
        file.seek(SeekFrom::Start(n * 512)).unwrap();
        let mut b = vec![0u8; 512];
        file.read_exact(&mut b).unwrap();
        b
    }

    /// Submits header + data + status and returns (used len, status).
    fn rw(d: &mut MockDriver, kind: u32, sector: u64, len: u32) -> (u32, u8) {
        header(d, kind, sector);
        let w = kind == T_IN || kind == T_GET_ID;
        let (_, used) = d.submit(&[(HDR, 16, false), (BUF, len, w), (STATUS, 1, true)]);
        (used, status(d))
    }

    #[test]
    fn an_image_is_locked_against_a_second_writer() {
        let f = image();
        let first = Block::open(f.path(), false, "a").unwrap();
        assert!(matches!(
            Block::open(f.path(), false, "b"),
            Err(BlockError::Locked { .. })
        ));
        assert!(matches!(
            Block::open(f.path(), true, "b"),
            Err(BlockError::Locked { .. })
        ));
        drop(first);
        let _ro1 = Block::open(f.path(), true, "a").unwrap();
        let _ro2 = Block::open(f.path(), true, "b").unwrap();
        assert!(Block::open(f.path(), false, "c").is_err());
    }

    #[test]
    fn config_space_reports_capacity_and_limits() {
        let f = image();
        let d = start(&f, false);
        let mut b = [0u8; 8];
        d.read(crate::virtio::pci::DEVICE_OFFSET, &mut b);
        assert_eq!(u64::from_le_bytes(b), SECTORS);
        assert_eq!(d.read32(crate::virtio::pci::DEVICE_OFFSET + 12), SEG_MAX);
        assert_eq!(d.read32(crate::virtio::pci::DEVICE_OFFSET + 20), 512);
        let feats = d.device_features();
        for bit in [F_SEG_MAX, F_BLK_SIZE, F_FLUSH, F_DISCARD, F_WRITE_ZEROES] {
            assert_ne!(feats & 1 << bit, 0, "feature {bit}");
        }
        assert_eq!(feats & 1 << F_RO, 0);
    }

    #[test]
    fn reads_sectors_into_guest_memory() {
        let f = image();
        let mut d = start(&f, false);
        let (used, st) = rw(&mut d, T_IN, 3, 1024);
        assert_eq!((used, st), (1025, S_OK));
        let mut got = vec![0u8; 1024];
        d.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert_eq!(&got[..512], &[3u8; 512][..]);
        assert_eq!(&got[512..], &[4u8; 512][..]);
        // The queue's vector (0) was raised.
        d.wait_interrupt();
        assert!(d.irq.fired.lock().unwrap().contains(&0));
    }

    #[test]
    fn reads_into_a_buffer_split_across_descriptors() {
        let f = image();
        let mut d = start(&f, false);
        header(&d, T_IN, 10);
        let (_, used) = d.submit(&[
            (HDR, 16, false),
            (BUF, 512, true),
            (BUF + 0x4000, 1024, true),
            (STATUS, 1, true),
        ]);
        assert_eq!((used, status(&d)), (1537, S_OK));
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(BUF)).unwrap(), 10);
        assert_eq!(
            d.mem.read_obj::<u8>(GuestAddress(BUF + 0x4000)).unwrap(),
            11
        );
        assert_eq!(
            d.mem.read_obj::<u8>(GuestAddress(BUF + 0x4200)).unwrap(),
            12
        );
    }

    #[test]
    fn writes_sectors_to_the_file() {
        let f = image();
        let mut d = start(&f, false);
        d.mem.write_slice(&[0x5a; 1024], GuestAddress(BUF)).unwrap();
        assert_eq!(rw(&mut d, T_OUT, 7, 1024), (1, S_OK));
        assert_eq!(sector_of_file(&f, 7), vec![0x5a; 512]);
        assert_eq!(sector_of_file(&f, 8), vec![0x5a; 512]);
        assert_eq!(sector_of_file(&f, 9), vec![9; 512]);
        // And reads back through the device.
        d.mem.write_slice(&[0; 512], GuestAddress(BUF)).unwrap();
        assert_eq!(rw(&mut d, T_IN, 8, 512), (513, S_OK));
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(BUF + 511)).unwrap(), 0x5a);
    }

    #[test]
    fn flush_and_get_id_succeed() {
        let f = image();
        let mut d = start(&f, false);
        header(&d, T_FLUSH, 0);
        let (_, used) = d.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!((used, status(&d)), (1, S_OK));
        assert_eq!(rw(&mut d, T_GET_ID, 0, 20), (21, S_OK));
        let mut id = [0u8; 20];
        d.mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
        assert_eq!(&id[..10], b"serial-123");
        assert_eq!(id[10..], [0; 10]);
    }

    fn segment_request(d: &mut MockDriver, kind: u32, sector: u64, count: u32) -> u8 {
        header(d, kind, 0);
        d.mem.write_obj(sector, GuestAddress(BUF)).unwrap();
        d.mem.write_obj(count, GuestAddress(BUF + 8)).unwrap();
        d.mem.write_obj(0u32, GuestAddress(BUF + 12)).unwrap();
        d.submit(&[(HDR, 16, false), (BUF, 16, false), (STATUS, 1, true)]);
        status(d)
    }

    #[test]
    fn discard_and_write_zeroes_clear_sectors() {
        let f = image();
        let mut d = start(&f, false);
        assert_eq!(segment_request(&mut d, T_WRITE_ZEROES, 2, 2), S_OK);
        assert_eq!(sector_of_file(&f, 2), vec![0; 512]);
        assert_eq!(sector_of_file(&f, 3), vec![0; 512]);
        assert_eq!(sector_of_file(&f, 4), vec![4; 512]);
        // Discard keeps the size; whether the range reads zero depends on the file system,
        // hole-punching ones (tmpfs, ext4, xfs) do.
        assert_eq!(segment_request(&mut d, T_DISCARD, 16, 8), S_OK);
        assert_eq!(f.as_file().metadata().unwrap().len(), SECTORS * 512);
        assert_eq!(segment_request(&mut d, T_DISCARD, SECTORS - 1, 2), S_IOERR);
    }

    /// An image that is not a plain file to the device (no [`DiskImage::raw_file`]): the
    /// requests take the per-buffer path that qcow2 images take. Counts flushes.
    #[derive(Debug)]
    struct Opaque {
        raw: RawImage,
        flushes: std::sync::atomic::AtomicUsize,
    }

    impl DiskImage for Opaque {
        fn size(&self) -> u64 {
            self.raw.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.raw.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.raw.write_at(buf, offset)
        }
        fn flush(&self) -> std::io::Result<()> {
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.raw.flush()
        }
    }

    #[test]
    fn an_image_that_is_not_a_file_serves_reads_writes_flushes_and_zeroes() {
        let f = image();
        let opaque = Arc::new(Opaque {
            raw: RawImage::new(f.reopen().unwrap()).unwrap(),
            flushes: Default::default(),
        });
        let blk = Block::from_image(opaque.clone(), false, "serial-123");
        let mut d = MockDriver::started(Box::new(blk), 16);
        let mut b = [0u8; 8];
        d.read(crate::virtio::pci::DEVICE_OFFSET, &mut b);
        assert_eq!(u64::from_le_bytes(b), SECTORS);
        // A read split over two descriptors.
        header(&d, T_IN, 10);
        let (_, used) = d.submit(&[
            (HDR, 16, false),
            (BUF, 512, true),
            (BUF + 0x4000, 1024, true),
            (STATUS, 1, true),
        ]);
        assert_eq!((used, status(&d)), (1537, S_OK));
        let mut got = vec![0u8; 1024];
        d.mem
            .read_slice(&mut got, GuestAddress(BUF + 0x4000))
            .unwrap();
        assert_eq!(&got[..512], &[11u8; 512][..]);
        assert_eq!(&got[512..], &[12u8; 512][..]);
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(BUF)).unwrap(), 10);
        // A write lands in the image.
        d.mem.write_slice(&[0x5a; 1024], GuestAddress(BUF)).unwrap();
        assert_eq!(rw(&mut d, T_OUT, 7, 1024), (1, S_OK));
        assert_eq!(sector_of_file(&f, 7), vec![0x5a; 512]);
        assert_eq!(sector_of_file(&f, 8), vec![0x5a; 512]);
        assert_eq!(sector_of_file(&f, 9), vec![9; 512]);
        // Flush reaches the image.
        header(&d, T_FLUSH, 0);
        let (_, used) = d.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!((used, status(&d)), (1, S_OK));
        assert_eq!(opaque.flushes.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Write-zeroes goes through the image; discard is a hint it may ignore.
        assert_eq!(segment_request(&mut d, T_WRITE_ZEROES, 2, 2), S_OK);
        assert_eq!(sector_of_file(&f, 2), vec![0; 512]);
        assert_eq!(sector_of_file(&f, 3), vec![0; 512]);
        assert_eq!(sector_of_file(&f, 4), vec![4; 512]);
        assert_eq!(segment_request(&mut d, T_DISCARD, 16, 8), S_OK);
        assert_eq!(sector_of_file(&f, 16), vec![16; 512]);
        // Past the end: an error for that request, and the device goes on.
        assert_eq!(rw(&mut d, T_IN, SECTORS, 512).1, S_IOERR);
        assert_eq!(rw(&mut d, T_IN, SECTORS - 1, 512), (513, S_OK));
    }

    #[test]
    fn event_idx_interrupts_only_when_the_driver_asks() {
        use crate::virtio::pci::STATUS_DRIVER_OK;
        use crate::virtio::testing::AVAIL;

        let f = image();
        let mut d = MockDriver::new(Box::new(Block::open(f.path(), false, "x").unwrap()));
        let all = d.device_features();
        assert_ne!(all & 1 << crate::virtio::VIRTIO_RING_F_EVENT_IDX, 0);
        let st = d.negotiate(all);
        d.enable_msix();
        d.setup_queue(0, 16, 0);
        d.write(0x14, &[st | STATUS_DRIVER_OK]);
        let used_event = AVAIL + 4 + 2 * 16;
        // used_event 0: interrupt once used idx passes 0.
        d.put(used_event, 0u16);
        assert_eq!(rw(&mut d, T_IN, 1, 512).1, S_OK);
        d.wait_interrupt();
        // used_event 10: the driver wants no interrupt for the next few.
        d.put(used_event, 10u16);
        assert_eq!(rw(&mut d, T_IN, 2, 512).1, S_OK);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(d.irq.fired.lock().unwrap().len(), 1);
    }

    #[test]
    fn read_only_disk_refuses_writes_but_serves_reads() {
        let f = image();
        let mut d = start(&f, true);
        assert_ne!(d.device_features() & 1 << F_RO, 0);
        assert_eq!(d.device_features() & 1 << F_DISCARD, 0);
        d.mem.write_slice(&[0x77; 512], GuestAddress(BUF)).unwrap();
        assert_eq!(rw(&mut d, T_OUT, 1, 512), (1, S_IOERR));
        assert_eq!(sector_of_file(&f, 1), vec![1; 512]);
        assert_eq!(segment_request(&mut d, T_WRITE_ZEROES, 1, 1), S_IOERR);
        assert_eq!(segment_request(&mut d, T_DISCARD, 1, 1), S_IOERR);
        assert_eq!(rw(&mut d, T_IN, 1, 512), (513, S_OK));
    }

    // ---- hostile drivers: each malformed request fails alone, the device keeps going ----

    /// After a hostile request, a good read must still work.
    fn still_serves(d: &mut MockDriver) {
        assert_eq!(rw(d, T_IN, 5, 512), (513, S_OK));
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(BUF)).unwrap(), 5);
    }

    #[test]
    fn rejects_sector_past_the_end_and_overflowing_sectors() {
        let f = image();
        let mut d = start(&f, false);
        assert_eq!(rw(&mut d, T_IN, SECTORS, 512).1, S_IOERR);
        assert_eq!(rw(&mut d, T_IN, SECTORS - 1, 1024).1, S_IOERR);
        assert_eq!(rw(&mut d, T_OUT, u64::MAX, 512).1, S_IOERR);
        assert_eq!(rw(&mut d, T_IN, u64::MAX / 512, 512).1, S_IOERR);
        still_serves(&mut d);
    }

    #[test]
    fn rejects_length_that_is_not_whole_sectors() {
        let f = image();
        let mut d = start(&f, false);
        assert_eq!(rw(&mut d, T_IN, 0, 100), (1, S_IOERR));
        still_serves(&mut d);
    }

    #[test]
    fn rejects_descriptor_chain_past_guest_memory() {
        let f = image();
        let mut d = start(&f, false);
        let far = crate::virtio::testing::MEM_SIZE as u64 - 512;
        header(&d, T_IN, 0);
        let (_, used) = d.submit(&[(HDR, 16, false), (far, 1024, true), (STATUS, 1, true)]);
        assert_eq!((used, status(&d)), (1, S_IOERR));
        // Header outside memory.
        let (_, used) = d.submit(&[(u64::MAX - 8, 16, false), (STATUS, 1, true)]);
        assert_eq!((used, status(&d)), (1, S_IOERR));
        // Status byte outside memory: nothing to report into, the chain comes back empty.
        let (_, used) = d.submit(&[(HDR, 16, false), (BUF, 512, true), (1 << 40, 1, true)]);
        assert_eq!(used, 0);
        still_serves(&mut d);
    }

    #[test]
    fn rejects_huge_descriptor_lengths() {
        let f = image();
        let mut d = start(&f, false);
        header(&d, T_IN, 0);
        let (_, used) = d.submit(&[
            (HDR, 16, false),
            (BUF, 0xffff_fe00, true),
            (STATUS, 1, true),
        ]);
        assert_eq!((used, status(&d)), (1, S_IOERR));
        header(&d, T_OUT, 0);
        let (_, used) = d.submit(&[
            (HDR, 16, false),
            (BUF, 0x8000_0000, false),
            (STATUS, 1, true),
        ]);
        assert_eq!((used, status(&d)), (1, S_IOERR));
        still_serves(&mut d);
    }

    #[test]
    fn rejects_short_header_and_wrong_direction() {
        let f = image();
        let mut d = start(&f, false);
        header(&d, T_IN, 0);
        let (_, used) = d.submit(&[(HDR, 8, false), (STATUS, 1, true)]);
        assert_eq!((used, status(&d)), (1, S_IOERR));
        // Header marked device-writable: no readable header at all.
        let (_, used) = d.submit(&[(HDR, 16, true), (STATUS, 1, true)]);
        assert_eq!((used, status(&d)), (1, S_IOERR));
        // Device-readable after device-writable.
        let (_, used) = d.submit(&[(HDR, 16, false), (STATUS, 1, true), (BUF, 512, false)]);
        assert_eq!(used, 0);
        // No writable byte at all.
        let (_, used) = d.submit(&[(HDR, 16, false), (BUF, 512, false)]);
        assert_eq!(used, 0);
        // Unknown request type.
        header(&d, 0x7777, 0);
        let (_, used) = d.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!((used, status(&d)), (1, S_UNSUPP));
        still_serves(&mut d);
    }

    #[test]
    fn survives_descriptor_loops_and_bad_indices() {
        let f = image();
        let mut d = start(&f, false);
        header(&d, T_IN, 0);
        // A descriptor whose next is itself: the chain ends at the queue size, no hang.
        d.write_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 0);
        d.publish(0);
        d.kick(0);
        let (id, used) = d.wait_used();
        assert_eq!((id, used), (0, 0));
        // A next index past the table.
        d.write_desc(1, HDR, 16, VIRTQ_DESC_F_NEXT, 500);
        d.publish(1);
        d.kick(0);
        assert_eq!(d.wait_used(), (1, 0));
        // A head index past the table: nothing to return it to, nothing breaks.
        d.publish(9999);
        d.kick(0);
        assert!(d.stays_idle());
        still_serves(&mut d);
    }

    #[test]
    fn survives_indirect_table_outside_memory() {
        let f = image();
        let mut d = start(&f, false);
        d.write_desc(0, 1 << 40, 64, VIRTQ_DESC_F_INDIRECT, 0);
        d.publish(0);
        d.kick(0);
        assert_eq!(d.wait_used(), (0, 0));
        // A well-formed indirect chain works.
        let table = DATA + 0x8000;
        header(&d, T_IN, 6);
        for (i, (addr, len, flags)) in [
            (HDR, 16u32, VIRTQ_DESC_F_NEXT),
            (BUF, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE),
            (STATUS, 1, VIRTQ_DESC_F_WRITE),
        ]
        .into_iter()
        .enumerate()
        {
            let at = table + i as u64 * 16;
            d.mem.write_obj(addr, GuestAddress(at)).unwrap();
            d.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            d.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            d.mem
                .write_obj(i as u16 + 1, GuestAddress(at + 14))
                .unwrap();
        }
        d.write_desc(1, table, 48, VIRTQ_DESC_F_INDIRECT, 0);
        d.publish(1);
        d.kick(0);
        assert_eq!(d.wait_used(), (1, 513));
        assert_eq!(status(&d), S_OK);
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(BUF)).unwrap(), 6);
    }

    #[test]
    fn drops_a_chain_with_too_many_descriptors() {
        let f = image();
        let mut d = start(&f, false);
        let table = DATA + 0x10_0000;
        let n = 2048u64;
        header(&d, T_IN, 0);
        for i in 0..n {
            let (addr, len, flags) = match i {
                0 => (HDR, 16u32, VIRTQ_DESC_F_NEXT),
                _ if i == n - 1 => (STATUS, 1, VIRTQ_DESC_F_WRITE),
                _ => (BUF, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE),
            };
            let at = table + i * 16;
            d.put(at, addr);
            d.put(at + 8, len);
            d.put(at + 12, flags);
            d.put(at + 14, i as u16 + 1);
        }
        d.write_desc(0, table, (n * 16) as u32, VIRTQ_DESC_F_INDIRECT, 0);
        d.publish(0);
        d.kick(0);
        assert_eq!(d.wait_used(), (0, 0));
        assert_eq!(status(&d), 0xaa, "no status written for a dropped chain");
        still_serves(&mut d);
    }

    #[test]
    fn survives_avail_index_far_ahead() {
        let f = image();
        let mut d = start(&f, false);
        d.set_avail_idx(1000);
        d.kick(0);
        assert!(d.stays_idle());
        // The worker is alive and answers once the driver behaves again.
        d.set_avail_idx(0);
        still_serves(&mut d);
    }

    #[test]
    fn reset_in_the_middle_of_requests_neither_hangs_nor_panics() {
        let f = image();
        let mut d = start(&f, false);
        for i in 0..5u64 {
            header(&d, T_IN, i);
            d.add_chain(&[
                (HDR, 16, false),
                (BUF + i * 0x1000, 4096, true),
                (STATUS, 1, true),
            ]);
        }
        d.kick(0);
        d.write(0x14, &[0]);
        assert_eq!(d.status(), 0);
        let mut d = d.start(16);
        still_serves(&mut d);
    }

    #[test]
    fn reset_stops_the_worker_and_restarts_cleanly() {
        let f = image();
        let mut d = start(&f, false);
        still_serves(&mut d);
        d.write(0x14, &[0]);
        assert_eq!(d.status(), 0);
        // The same device comes up again, worker and all.
        let mut d = d.start(16);
        still_serves(&mut d);
        still_serves(&mut d);
    }

    /// The same disk, reopened without a lock, as the restoring process would open it.
    fn same_disk(f: &tempfile::NamedTempFile) -> Box<Block> {
        Box::new(Block::from_file(
            f.reopen().unwrap(),
            SECTORS,
            false,
            "serial-123",
        ))
    }

    #[test]
    fn a_request_in_flight_at_save_completes_once_after_restore() {
        let f = image();
        let mut d = start(&f, false);
        still_serves(&mut d);
        assert_eq!(d.used_idx(), 1);
        // The worker went to sleep; the driver publishes a request and the VM is saved
        // before the kick reaches the device.
        std::thread::sleep(std::time::Duration::from_millis(20));
        header(&d, T_IN, 7);
        let head = d.add_chain(&[
            (HDR, 16, false),
            (BUF + 0x1000, 512, true),
            (STATUS, 1, true),
        ]);
        d.save_and_restore(same_disk(&f)).unwrap();

        let (id, len) = d.wait_used();
        assert_eq!((id, len), (u32::from(head), 513));
        assert_eq!(status(&d), S_OK);
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(BUF + 0x1000)).unwrap(), 7);
        assert_eq!(d.used_idx(), 2);
        assert!(d.stays_idle(), "completed exactly once");
        d.wait_interrupt();
        assert!(
            d.routes.updates.lock().unwrap().len() >= 2,
            "MSI-X vectors routed again"
        );
        // The transport reads back as the driver left it, and the next request completes.
        assert_ne!(d.status() & crate::virtio::pci::STATUS_DRIVER_OK, 0);
        still_serves(&mut d);
        assert_eq!(d.used_idx(), 3);
    }

    #[test]
    fn a_request_completed_before_save_is_not_served_again() {
        let f = image();
        let mut d = start(&f, false);
        still_serves(&mut d);
        assert_eq!(rw(&mut d, T_OUT, 9, 512).1, S_OK);
        d.save_and_restore(same_disk(&f)).unwrap();
        assert!(d.stays_idle());
        assert_eq!(d.used_idx(), 2);
        still_serves(&mut d);
        assert_eq!(d.used_idx(), 3);
    }

    #[test]
    fn a_garbage_or_foreign_state_is_refused_and_the_device_still_works() {
        let f = image();
        let mut d = start(&f, false);
        still_serves(&mut d);
        let state = d.dev.lock().unwrap().save_state().unwrap();
        drop(d);
        let fresh = MockDriver::new(same_disk(&f));
        assert!(
            fresh
                .dev
                .lock()
                .unwrap()
                .restore_state(&state[..state.len() - 1])
                .is_err()
        );
        assert!(
            fresh
                .dev
                .lock()
                .unwrap()
                .restore_state(&[0xff; 40])
                .is_err()
        );
        // A disk of another size is not the one the guest saw.
        let small = Block::from_file(f.reopen().unwrap(), SECTORS / 2, false, "x");
        let mut other = MockDriver::new(Box::new(small));
        assert!(other.dev.lock().unwrap().restore_state(&state).is_err());
        // A device that cannot be saved is refused, not saved empty.
        let fake = crate::virtio::testing::FakeDevice {
            log: Default::default(),
        };
        let err = MockDriver::new(Box::new(fake))
            .dev
            .lock()
            .unwrap()
            .save_state()
            .unwrap_err();
        assert!(matches!(err, StateError::Unsupported(_)), "{err}");
        let mut fresh = fresh.start(16);
        still_serves(&mut fresh);
        other = other.start(16);
        assert_eq!(rw(&mut other, T_IN, 1, 512).1, S_OK);
    }
}
