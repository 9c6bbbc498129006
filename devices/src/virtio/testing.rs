//! A mock virtio-pci driver for unit tests: it enumerates the function through its
//! configuration space, maps BAR0 on a private MMIO bus, negotiates features, builds split
//! virtqueues in guest memory (descriptor table, avail ring), kicks the notify region and
//! reads the used ring back, exactly as a guest driver would, but from the host side.
//! Built for unit tests and, with the `test-support` feature, for `benches/blk.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vm_memory::{
    ByteValued, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;

use super::pci::{
    COMMON_OFFSET, MSIX_TABLE_OFFSET, NOTIFY_OFFSET, STATUS_ACKNOWLEDGE, STATUS_DRIVER,
    STATUS_DRIVER_OK, STATUS_FEATURES_OK, TransportParts, VirtioPciDevice,
};
use super::{Activation, GuestMemory, MsiRoutes, MsixInterrupt, VirtioDevice, VirtioError};
use crate::bus::Bus;
use crate::pci::PciDevice;
use crate::pci::config::{
    CAP_ID_MSIX, COMMAND_BUS_MASTER, COMMAND_MEMORY, REG_BAR0, REG_CAP_POINTER, REG_COMMAND_STATUS,
};
use crate::state::{Snapshot, StateError};

pub const BAR: u64 = 0xc000_0000;
pub const MEM_SIZE: usize = 4 << 20;
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x3000;
pub const USED: u64 = 0x4000;
/// Where tests put request buffers.
pub const DATA: u64 = 0x10_0000;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Records every vector raised, and signals `event` like an interrupt line.
pub struct RecordingInterrupt {
    pub fired: Mutex<Vec<u16>>,
    /// How many interrupts were raised: what KVM's halt polling watches for a vCPU.
    pub raised: AtomicU64,
    pub event: EventFd,
}

impl Default for RecordingInterrupt {
    fn default() -> Self {
        Self {
            fired: Mutex::default(),
            raised: AtomicU64::new(0),
            event: EventFd::new(0).unwrap(),
        }
    }
}

impl MsixInterrupt for RecordingInterrupt {
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        self.fired.lock().unwrap().push(vector);
        self.raised.fetch_add(1, Ordering::Release);
        self.event.write(1)
    }
}

/// Records every MSI-X table update.
#[derive(Default)]
pub struct RecordingRoutes {
    pub updates: Mutex<Vec<(u16, u64, u32, bool)>>,
}

impl MsiRoutes for RecordingRoutes {
    fn update(&self, vector: u16, addr: u64, data: u32, masked: bool) {
        self.updates
            .lock()
            .unwrap()
            .push((vector, addr, data, masked));
    }
}

/// What a [`FakeDevice`] saw.
#[derive(Default)]
pub struct FakeLog {
    pub activations: Vec<(usize, u64, Vec<u16>)>,
    pub resets: usize,
}

/// A device with two queues and fixed config bytes that records activations.
pub struct FakeDevice {
    pub log: Arc<Mutex<FakeLog>>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u16 {
        0x3f
    }
    fn pci_class(&self) -> (u8, u8, u8) {
        (0xff, 0, 0)
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        1 << 3 | 1 << 40
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        let sizes = a.queues.iter().map(|q| q.queue.size()).collect();
        self.log
            .lock()
            .unwrap()
            .activations
            .push((a.queues.len(), a.acked_features, sizes));
        Ok(())
    }
    fn reset(&mut self) {
        self.log.lock().unwrap().resets += 1;
    }
}

pub struct MockDriver {
    pub mem: GuestMemory,
    pub dev: Arc<Mutex<VirtioPciDevice>>,
    pub bus: Bus,
    pub irq: Arc<RecordingInterrupt>,
    pub routes: Arc<RecordingRoutes>,
    pub qsize: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    /// Whether `VIRTIO_RING_F_EVENT_IDX` was negotiated by [`MockDriver::start_event_idx`].
    event_idx: bool,
    /// The avail index at the last kick (what `avail_event` is compared with).
    kicked_at: u16,
    /// `irq.raised` when the driver last took an interrupt.
    irq_seen: u64,
}

impl MockDriver {
    /// Puts `device` behind the transport and maps BAR0 at [`BAR`] the way a guest would.
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        Self::with_memory(device, MEM_SIZE)
    }

    /// As [`MockDriver::new`] with `mem_size` bytes of guest memory.
    pub fn with_memory(device: Box<dyn VirtioDevice>, mem_size: usize) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size)]).unwrap();
        let irq = Arc::new(RecordingInterrupt::default());
        let routes = Arc::new(RecordingRoutes::default());
        let dev = VirtioPciDevice::new(
            device,
            TransportParts {
                mem: mem.clone(),
                msix: irq.clone(),
                routes: routes.clone(),
                ioevents: None,
            },
        )
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut bus = Bus::new();
        {
            let mut d = dev.lock().unwrap();
            d.write_config(REG_BAR0, 0, &(BAR as u32).to_le_bytes());
            d.write_config(REG_BAR0 + 1, 0, &0u32.to_le_bytes());
            let cmd = (COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes();
            let changes = d.write_config(REG_COMMAND_STATUS, 0, &cmd);
            assert_eq!(changes.len(), 1);
            assert_eq!(changes[0].new, Some(BAR));
            bus.insert(dev.clone(), BAR, changes[0].len).unwrap();
        }
        Self {
            mem,
            dev,
            bus,
            irq,
            routes,
            qsize: 16,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            event_idx: false,
            kicked_at: 0,
            irq_seen: 0,
        }
    }

    /// Saves the device behind the transport (which pauses it), then goes on with
    /// [`MockDriver::restore_into`] a fresh `device`, as a VM's save and restore do.
    pub fn save_and_restore(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), StateError> {
        let state = self.dev.lock().unwrap().save_state()?;
        self.restore_into(device, &state)
    }

    /// Builds a fresh transport around `device` on the same guest memory, with BAR0 first
    /// where a fresh boot's firmware might put it ([`BAR`] + 1 MiB), restores `state` into
    /// it, moves BAR0 on the bus where the restored configuration decodes it, and drives
    /// that device from now on (new interrupt and route recorders). On error the driver
    /// keeps the fresh device, unrestored.
    pub fn restore_into(
        &mut self,
        device: Box<dyn VirtioDevice>,
        state: &[u8],
    ) -> Result<(), StateError> {
        let irq = Arc::new(RecordingInterrupt::default());
        let routes = Arc::new(RecordingRoutes::default());
        let dev = VirtioPciDevice::new(
            device,
            TransportParts {
                mem: self.mem.clone(),
                msix: irq.clone(),
                routes: routes.clone(),
                ioevents: None,
            },
        )
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut bus = Bus::new();
        let boot = BAR + 0x10_0000;
        {
            let mut d = dev.lock().unwrap();
            d.write_config(REG_BAR0, 0, &(boot as u32).to_le_bytes());
            let cmd = (COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes();
            let changes = d.write_config(REG_COMMAND_STATUS, 0, &cmd);
            bus.insert(dev.clone(), boot, changes[0].len).unwrap();
        }
        self.dev = dev.clone();
        self.irq = irq;
        self.routes = routes;
        self.irq_seen = 0;
        let result = dev.lock().unwrap().restore_state(state);
        let now = dev.lock().unwrap().config().bar_mapped(0);
        if now != Some(boot) {
            bus.remove(boot).unwrap();
            if let Some(at) = now {
                bus.insert(dev.clone(), at, super::pci::BAR_SIZE).unwrap();
            }
        }
        self.bus = bus;
        result
    }

    /// A driver that went through the whole handshake with queue 0 of size `qsize` live.
    pub fn started(device: Box<dyn VirtioDevice>, qsize: u16) -> Self {
        Self::new(device).start(qsize)
    }

    /// Runs the handshake on a driver from [`MockDriver::with_memory`].
    pub fn start(self, qsize: u16) -> Self {
        // Everything offered but EVENT_IDX, so every request interrupts.
        self.start_with(qsize, false)
    }

    /// As [`MockDriver::start`], keeping `VIRTIO_RING_F_EVENT_IDX` as Linux's virtio-blk
    /// driver does: the driver asks for interrupts with `used_event` ([`MockDriver::rearm`])
    /// and kicks only past the device's `avail_event` ([`MockDriver::kick_if_needed`]).
    pub fn start_event_idx(self, qsize: u16) -> Self {
        self.start_with(qsize, true)
    }

    fn start_with(self, qsize: u16, event_idx: bool) -> Self {
        let mut d = self;
        let mut features = d.device_features();
        if !event_idx {
            features &= !(1 << super::VIRTIO_RING_F_EVENT_IDX);
        }
        d.event_idx = features & 1 << super::VIRTIO_RING_F_EVENT_IDX != 0;
        let status = d.negotiate(features);
        assert_ne!(status & STATUS_FEATURES_OK, 0);
        d.enable_msix();
        d.setup_queue(0, qsize, 0);
        d.write(0x14, &[status | STATUS_DRIVER_OK]);
        d
    }

    /// The host address of guest bytes `[addr, addr + len)`, like a guest driver's own
    /// mapping of its rings: the mock's memory is one region at guest address 0. Panics
    /// outside it.
    fn host(&self, addr: u64, len: usize) -> *mut u8 {
        let end = addr.checked_add(len as u64).expect("guest range overflows");
        let region = self.mem.iter().next().expect("one memory region");
        assert!(end <= region.len(), "guest range outside memory");
        let base = region
            .get_host_address(MemoryRegionAddress(0))
            .expect("mapped region");
        // SAFETY: `end <= region.len()`, so the offset stays inside the region's mapping.
        unsafe { base.add(addr as usize) }
    }

    /// Writes `v` at guest address `addr` (straight through the mapping: this runs in the
    /// benchmark's hot loop).
    pub fn put<T: ByteValued>(&self, addr: u64, v: T) {
        let p = self.host(addr, size_of::<T>());
        // SAFETY: `host` checked that the bytes are mapped guest memory, which no Rust
        // reference aliases; `T: ByteValued` is plain bytes, written unaligned.
        unsafe { std::ptr::write_unaligned(p.cast::<T>(), v) };
    }

    /// Reads a `T` at guest address `addr`.
    pub fn get<T: ByteValued>(&self, addr: u64) -> T {
        let p = self.host(addr, size_of::<T>());
        // SAFETY: as in `put`; every bit pattern is a valid `T: ByteValued`.
        unsafe { std::ptr::read_unaligned(p.cast::<T>()) }
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) {
        assert!(self.bus.read(BAR + offset, data));
    }

    pub fn write(&self, offset: u64, data: &[u8]) {
        assert!(self.bus.write(BAR + offset, data));
    }

    pub fn read16(&self, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn status(&self) -> u8 {
        let mut b = [0u8; 1];
        self.read(COMMON_OFFSET + 0x14, &mut b);
        b[0]
    }

    pub fn device_features(&self) -> u64 {
        self.write(0x00, &0u32.to_le_bytes());
        let lo = self.read32(0x04);
        self.write(0x00, &1u32.to_le_bytes());
        let hi = self.read32(0x04);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; returns the status read back.
    pub fn negotiate(&self, features: u64) -> u8 {
        self.write(0x14, &[0]);
        self.write(0x14, &[STATUS_ACKNOWLEDGE]);
        self.write(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
        self.write(0x08, &0u32.to_le_bytes());
        self.write(0x0c, &(features as u32).to_le_bytes());
        self.write(0x08, &1u32.to_le_bytes());
        self.write(0x0c, &((features >> 32) as u32).to_le_bytes());
        self.write(
            0x14,
            &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK],
        );
        self.status()
    }

    /// Offset of the MSI-X capability, found by walking the capability list.
    pub fn msix_cap(&self) -> usize {
        let mut d = self.dev.lock().unwrap();
        let mut at = d.read_config(REG_CAP_POINTER) as usize & 0xff;
        while at != 0 {
            let header = d.read_config(at / 4);
            if header as u8 == CAP_ID_MSIX {
                return at;
            }
            at = (header >> 8) as usize & 0xff;
        }
        panic!("no MSI-X capability");
    }

    /// Enables MSI-X and unmasks every vector, with message data = vector number.
    pub fn enable_msix(&self) {
        let cap = self.msix_cap();
        self.dev.lock().unwrap().write_config(cap / 4, 3, &[0x80]);
        let n = self.dev.lock().unwrap().msix_vectors();
        for v in 0..u64::from(n) {
            let e = MSIX_TABLE_OFFSET + v * 16;
            self.write(e, &0xfee0_0000u32.to_le_bytes());
            self.write(e + 4, &0u32.to_le_bytes());
            self.write(e + 8, &(v as u32).to_le_bytes());
            self.write(e + 12, &0u32.to_le_bytes());
        }
    }

    /// Programs queue `index` with the rings at [`DESC`], [`AVAIL`], [`USED`].
    /// Fresh, empty rings: a driver after a device reset starts over.
    pub fn setup_queue(&mut self, index: u16, size: u16, vector: u16) {
        self.qsize = size;
        (self.next_desc, self.avail_idx, self.used_seen) = (0, 0, 0);
        self.kicked_at = 0;
        self.put(AVAIL, 0u32);
        self.put(USED, 0u32);
        self.write(0x16, &index.to_le_bytes());
        self.write(0x18, &size.to_le_bytes());
        self.write(0x1a, &vector.to_le_bytes());
        self.write(0x20, &(DESC as u32).to_le_bytes());
        self.write(0x24, &0u32.to_le_bytes());
        self.write(0x28, &AVAIL.to_le_bytes());
        self.write(0x30, &USED.to_le_bytes());
        self.write(0x1c, &1u16.to_le_bytes());
    }

    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + u64::from(index) * 16;
        self.put(at, addr);
        self.put(at + 8, len);
        self.put(at + 12, flags);
        self.put(at + 14, next);
    }

    /// Publishes descriptor `head` in the avail ring.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.qsize);
        self.put(AVAIL + 4 + slot * 2, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // x86 keeps stores in order: the entry is visible before the index.
        self.put(AVAIL + 2, self.avail_idx);
    }

    /// Sets the avail index to any value (hostile drivers).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.put(AVAIL + 2, idx);
    }

    /// Writes a chain of `(addr, len, device_writable)` buffers and publishes it.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % self.qsize;
            let last = i + 1 == bufs.len();
            let flags =
                if w { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            self.write_desc(idx, addr, len, flags, (idx + 1) % self.qsize);
        }
        self.next_desc = (head + bufs.len() as u16) % self.qsize;
        self.publish(head);
        head
    }

    /// Kicks unless the device said it does not need it: with EVENT_IDX, unless its
    /// `avail_event` lies outside the entries published since the last kick; otherwise unless
    /// it set `VRING_USED_F_NO_NOTIFY`.
    pub fn kick_if_needed(&mut self, queue: u16) {
        // The avail index store must be visible before the device's field is read.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let needed = if self.event_idx {
            let event: u16 = self.get(USED + 4 + 8 * u64::from(self.qsize));
            let (new, old) = (self.avail_idx, self.kicked_at);
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.get::<u16>(USED) & 1 == 0
        };
        self.kicked_at = self.avail_idx;
        if needed {
            self.kick(queue);
        }
    }

    /// With EVENT_IDX, asks for an interrupt at the next used entry (`used_event`); says
    /// whether one arrived meanwhile, which the driver must then handle without waiting.
    pub fn rearm(&mut self) -> bool {
        self.put(AVAIL + 4 + 2 * u64::from(self.qsize), self.used_seen);
        // The store must be visible before the used index is read again.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.used_idx() != self.used_seen
    }

    pub fn kick(&self, queue: u16) {
        self.write(NOTIFY_OFFSET + u64::from(queue) * 4, &queue.to_le_bytes());
    }

    pub fn used_idx(&self) -> u16 {
        self.get(USED + 2)
    }

    /// The next used element, if the device returned one: `(id, len)`.
    pub fn try_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.used_seen {
            return None;
        }
        let slot = u64::from(self.used_seen % self.qsize);
        let at = USED + 4 + slot * 8;
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((self.get(at), self.get(at + 4)))
    }

    /// Sleeps until the device raises an interrupt (as a guest would in `hlt`); panics after
    /// 5 s without one.
    pub fn wait_interrupt(&self) {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.irq.event.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, alive for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(n, 1, "no interrupt within 5 s");
        self.irq.event.read().unwrap();
    }

    /// Halts until the device raises an interrupt, as a KVM vCPU does: KVM first polls for
    /// a pending interrupt for a while (`halt_poll_ns`, 200 µs by default on x86), but only
    /// while no other task wants the CPU (`single_task_running`), and then schedules the
    /// vCPU thread out. This polls the interrupt count for up to `poll`, yielding the CPU
    /// each round so that a thread sharing it (the device worker, on a busy host) runs; an
    /// interrupt seen there leaves its eventfd signal to be consumed by the next sleep
    /// (which then returns at once), otherwise it sleeps like [`MockDriver::wait_interrupt`].
    pub fn halt(&mut self, poll: Duration) {
        let start = Instant::now();
        loop {
            let raised = self.irq.raised.load(Ordering::Acquire);
            if raised != self.irq_seen {
                self.irq_seen = raised;
                return;
            }
            if start.elapsed() >= poll {
                break;
            }
            std::thread::yield_now();
        }
        self.wait_interrupt();
        self.irq_seen = self.irq.raised.load(Ordering::Acquire);
    }

    /// Waits (up to 5 s) for the next used element: `(id, len)`.
    pub fn wait_used(&mut self) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(used) = self.try_used() {
                return used;
            }
            assert!(Instant::now() < deadline, "device returned no buffer");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Kicks queue 0 and waits for one used element.
    pub fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> (u32, u32) {
        let head = self.add_chain(bufs);
        self.kick(0);
        let (id, len) = self.wait_used();
        assert_eq!(id, u32::from(head));
        (id, len)
    }

    /// Waits a little and says whether the device left the used ring alone.
    pub fn stays_idle(&self) -> bool {
        let before = self.used_idx();
        std::thread::sleep(Duration::from_millis(50));
        self.used_idx() == before
    }
}
