//! Split virtqueues written from the host side, for device tests that need several
//! queues at once (the mock driver in `testing` drives one): descriptors, avail and used
//! rings at fixed offsets from a base address, an eventfd as the queue's kick, and an
//! interrupt sink that records which queues were signalled.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioInterrupt;

/// Entries per test queue.
pub const QSIZE: u16 = 16;

/// Records the queues a device signalled; a configuration interrupt is [`CONFIG`].
#[derive(Default)]
pub struct Irq(pub Mutex<Vec<u16>>);

/// What [`Irq`] records for a configuration change.
pub const CONFIG: u16 = u16::MAX;

impl VirtioInterrupt for Irq {
    fn notify_queue(&self, queue: u16) {
        self.0.lock().unwrap().push(queue);
    }
    fn notify_config(&self) {
        self.0.lock().unwrap().push(CONFIG);
    }
}

/// One split ring in guest memory: descriptors at `base`, avail at +0x800, used at +0x1000.
pub struct Ring {
    base: u64,
    next_desc: u16,
    avail: u16,
    used_seen: u16,
    pub kick: EventFd,
}

impl Ring {
    pub fn new(mem: &GuestMemoryMmap, base: u64) -> (Self, Queue) {
        mem.write_obj(0u32, GuestAddress(base + 0x800)).unwrap();
        mem.write_obj(0u32, GuestAddress(base + 0x1000)).unwrap();
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some((base + 0x800) as u32), Some(0));
        q.set_used_ring_address(Some((base + 0x1000) as u32), Some(0));
        q.set_ready(true);
        let ring = Self {
            base,
            next_desc: 0,
            avail: 0,
            used_seen: 0,
            kick: EventFd::new(0).unwrap(),
        };
        (ring, q)
    }

    /// Publishes a chain of `(addr, len, device_writable)` and kicks.
    pub fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let at = GuestAddress(self.base + u64::from(idx) * 16);
            let last = i + 1 == bufs.len();
            let flags = (u16::from(w) * 2) | u16::from(!last);
            mem.write_obj(addr, at).unwrap();
            mem.write_obj(len, at.unchecked_add(8)).unwrap();
            mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            mem.write_obj((idx + 1) % QSIZE, at.unchecked_add(14))
                .unwrap();
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = u64::from(self.avail % QSIZE);
        mem.write_obj(head, GuestAddress(self.base + 0x804 + slot * 2))
            .unwrap();
        self.avail = self.avail.wrapping_add(1);
        mem.write_obj(self.avail, GuestAddress(self.base + 0x802))
            .unwrap();
        self.kick.write(1).unwrap();
        head
    }

    /// Waits up to 5 s for the next used element `(id, len)`.
    pub fn used(&mut self, mem: &GuestMemoryMmap) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let idx: u16 = mem.read_obj(GuestAddress(self.base + 0x1002)).unwrap();
            if idx != self.used_seen {
                let at = self.base + 0x1004 + u64::from(self.used_seen % QSIZE) * 8;
                self.used_seen = self.used_seen.wrapping_add(1);
                return (
                    mem.read_obj(GuestAddress(at)).unwrap(),
                    mem.read_obj(GuestAddress(at + 4)).unwrap(),
                );
            }
            assert!(Instant::now() < deadline, "device returned no buffer");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether the device left the used ring alone for 50 ms.
    pub fn idle(&self, mem: &GuestMemoryMmap) -> bool {
        std::thread::sleep(Duration::from_millis(50));
        let idx: u16 = mem.read_obj(GuestAddress(self.base + 0x1002)).unwrap();
        idx == self.used_seen
    }
}
