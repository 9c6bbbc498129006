//! A virtio-blk queue driven from arbitrary bytes: the input becomes guest RAM, holding the
//! descriptor table, the avail ring, indirect tables, request headers, discard segments and
//! data; a few leading bytes choose the queue size, EVENT_IDX, where the rings sit, whether
//! descriptor addresses are folded into RAM (so chains reach the request parser more often
//! than random 64-bit addresses would), a read-only disk and further rounds with a moved
//! avail index. The device's own queue handler (`BlockHandler::process_queue`: avail ring,
//! chain walk, header, execution on a memfd disk, status byte, used ring) must never panic
//! or hang, and must never write past the disk's end.
#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use hospes_devices::virtio::VirtioInterrupt;
use hospes_devices::virtio::block::request::{BlockHandler, Disk};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 0x10_0000;
const DESC: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HEADER: usize = 16;

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn notify_queue(&self, _queue: u16) {}
    fn notify_config(&self) {}
}

fn memfd(len: u64) -> File {
    // SAFETY: a constant NUL-terminated name; the returned descriptor is checked and owned.
    let fd = unsafe { libc::memfd_create(c"hospes-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    file
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (h, image) = data.split_at(HEADER);
    // h[0]: queue size (a power of two up to 256 mostly, anything else sometimes).
    let size = if h[0] & 0x80 == 0 {
        1u16 << (h[0] % 9)
    } else {
        u16::from(h[0] & 0x7f) * 3
    };
    let flags = h[1];
    let event_idx = flags & 1 != 0;
    let fold = flags & 2 != 0;
    let read_only = flags & 4 != 0;
    let rings_from_input = flags & 8 != 0;
    let rounds = 1 + (flags >> 6);
    let sectors = u64::from(h[2] % 64);
    let bump = h[3];
    let (desc, avail, used) = if rings_from_input {
        let at = |i: usize| u64::from(u32::from_le_bytes([h[i], h[i + 1], h[i + 2], 0]));
        (at(4), at(7), at(10))
    } else {
        (DESC, AVAIL, USED)
    };

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let image = &image[..image.len().min(MEM as usize)];
    mem.write_slice(image, GuestAddress(0)).unwrap();
    if fold {
        // Descriptor addresses into RAM, lengths below 64 KiB: the table stays the input's.
        for i in 0..u64::from(size.min(256)) {
            let at = GuestAddress(desc + i * 16);
            if let Ok(addr) = mem.read_obj::<u64>(at) {
                let _ = mem.write_obj(addr % MEM, at);
            }
            if let Ok(len) = mem.read_obj::<u32>(GuestAddress(desc + i * 16 + 8)) {
                let _ = mem.write_obj(len & 0xffff, GuestAddress(desc + i * 16 + 8));
            }
        }
    }
    // The driver's rings start where a fresh driver's would: used ring zeroed.
    let _ = mem.write_obj(0u32, GuestAddress(used));

    let mut queue = Queue::new(256).unwrap();
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);

    let disk_len = sectors * 512;
    let file = memfd(disk_len);
    let check = file.try_clone().unwrap();
    let disk = Disk::new(file, sectors, read_only, *b"hospes-fuzz-disk\0\0\0\0");
    let mut handler = BlockHandler::new(mem.clone(), queue, 0, Arc::new(NoInterrupt), disk);
    for _ in 0..rounds {
        handler.process_queue();
        // The driver publishes more (or claims to): move the avail index.
        if let Ok(idx) = mem.read_obj::<u16>(GuestAddress(avail + 2)) {
            let _ = mem.write_obj(idx.wrapping_add(u16::from(bump)), GuestAddress(avail + 2));
        }
    }
    assert_eq!(
        check.metadata().unwrap().len(),
        disk_len,
        "the disk changed size"
    );
});
