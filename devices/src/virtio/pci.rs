//! The modern virtio-pci transport (virtio 1.x, section 4.1).
//!
//! One 64-bit memory BAR (BAR0) holds every region the driver uses:
//!
//! | offset   | region                                           |
//! |----------|--------------------------------------------------|
//! | `0x0000` | common configuration (features, status, queues)  |
//! | `0x1000` | ISR status (read clears)                         |
//! | `0x2000` | device-specific configuration                    |
//! | `0x3000` | notify: queue `n` at `0x3000 + 4 n`              |
//! | `0x4000` | MSI-X table (16 bytes per vector)                |
//! | `0x5000` | MSI-X pending bit array                          |
//!
//! Vendor capabilities in configuration space point at these regions, and a PCI_CFG
//! capability gives the same regions through configuration space. A notify write reaches
//! the queue's eventfd either from the kernel (KVM ioeventfd, registered through
//! [`IoEventRegistrar`] whenever BAR0 is placed) or, without one, from [`BusDevice::write`].
//! Interrupts go through the PCI layer's MSI-X table ([`MsixState`]): masked vectors set their
//! pending bit and fire when unmasked, unmasked ones go out through [`MsixInterrupt`].

use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{
    Activation, ActiveQueue, GuestMemory, IoEventRegistrar, MsiRoutes, MsixInterrupt,
    QueuePosition, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError, VirtioInterrupt,
};
use crate::bus::{BusDevice, lock};
use crate::pci::config::PciConfigState;
use crate::pci::config::{BarChange, BarKind, CAP_ID_VENDOR, PciConfig, PciIds};
use crate::pci::{MsixSaved, MsixState, PciDevice, PciError};
use crate::state::{Snapshot, StateError};

pub const BAR_SIZE: u64 = 0x8000;
pub const COMMON_OFFSET: u64 = 0x0000;
pub const ISR_OFFSET: u64 = 0x1000;
pub const DEVICE_OFFSET: u64 = 0x2000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
const REGION_LEN: u64 = 0x1000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;

/// "No vector" in the MSI-X vector registers.
pub const NO_VECTOR: u16 = 0xffff;

const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// The interrupt handle devices get: queue and configuration vectors, ISR and MSI-X.
pub struct TransportInterrupt {
    msix: Arc<Mutex<MsixState>>,
    isr: Arc<AtomicU8>,
    queue_vectors: Arc<[AtomicU16]>,
    config_vector: Arc<AtomicU16>,
}

impl VirtioInterrupt for TransportInterrupt {
    fn notify_queue(&self, queue: u16) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        if let Some(v) = self.queue_vectors.get(usize::from(queue)) {
            lock(&self.msix).signal(v.load(Ordering::Acquire));
        }
    }

    fn notify_config(&self) {
        self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        lock(&self.msix).signal(self.config_vector.load(Ordering::Acquire));
    }
}

/// What the transport needs from the machine.
pub struct TransportParts {
    pub mem: GuestMemory,
    pub msix: Arc<dyn MsixInterrupt>,
    pub routes: Arc<dyn MsiRoutes>,
    /// KVM ioeventfds for the notify addresses; `None` leaves notification to MMIO exits.
    pub ioevents: Option<Arc<dyn IoEventRegistrar>>,
}

/// A virtio device behind the modern virtio-pci transport.
pub struct VirtioPciDevice {
    config: PciConfig,
    msix_cap: usize,
    /// Offset of the VIRTIO_PCI_CAP_PCI_CFG capability: a window onto BAR0 through
    /// configuration space, for drivers that cannot map the BAR yet.
    pci_cfg_cap: usize,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    ioevents: Option<Arc<dyn IoEventRegistrar>>,
    msix: Arc<Mutex<MsixState>>,
    isr: Arc<AtomicU8>,
    queue_vectors: Arc<[AtomicU16]>,
    config_vector: Arc<AtomicU16>,
    queues: Vec<Queue>,
    events: Vec<EventFd>,
    /// BAR0 address the notify ioeventfds are registered at.
    ioevent_base: Option<u64>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    active: bool,
}

fn new_queue(max: u16) -> Result<Queue, VirtioError> {
    Queue::new(max).map_err(|_| VirtioError::InvalidQueue {
        index: usize::from(max),
    })
}

fn vendor_cap(cfg_type: u8, offset: u64, len: u64, extra: &[u8]) -> Vec<u8> {
    // virtio_pci_cap without cap_vndr and cap_next: cap_len, cfg_type, bar, id, padding[2],
    // offset, length, then type-specific fields.
    let cap_len = 16 + extra.len() as u8;
    let mut body = vec![cap_len, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(len as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

impl VirtioPciDevice {
    pub fn new(device: Box<dyn VirtioDevice>, parts: TransportParts) -> Result<Self, VirtioError> {
        let pci = |e: PciError| VirtioError::Pci(Box::new(e));
        let (class, subclass, prog_if) = device.pci_class();
        let mut config = PciConfig::new(PciIds {
            vendor: 0x1af4,
            device: 0x1040 + device.device_type(),
            revision: 1,
            class,
            subclass,
            prog_if,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        });
        config
            .add_bar(0, BAR_SIZE, BarKind::Mem64, false)
            .map_err(pci)?;
        let nqueues = device.queue_max_sizes().len();
        let vectors = nqueues as u16 + 1;
        for (t, off) in [
            (CFG_COMMON, COMMON_OFFSET),
            (CFG_ISR, ISR_OFFSET),
            (CFG_DEVICE, DEVICE_OFFSET),
        ] {
            config
                .add_capability(CAP_ID_VENDOR, &vendor_cap(t, off, REGION_LEN, &[]), &[])
                .map_err(pci)?;
        }
        let notify_len = (nqueues as u64 * u64::from(NOTIFY_MULTIPLIER)).max(4);
        config
            .add_capability(
                CAP_ID_VENDOR,
                &vendor_cap(
                    CFG_NOTIFY,
                    NOTIFY_OFFSET,
                    notify_len,
                    &NOTIFY_MULTIPLIER.to_le_bytes(),
                ),
                &[],
            )
            .map_err(pci)?;
        let msix_cap = MsixState::add_capability(
            &mut config,
            vectors,
            0,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
        )
        .map_err(pci)?;
        // bar, offset and length (bytes 4, 8..16) and the data window (16..20) are the
        // driver's to write.
        let mut cfg_writable = [0u8; 20];
        cfg_writable[4] = 0xff;
        cfg_writable[8..20].fill(0xff);
        let pci_cfg_cap = config
            .add_capability(
                CAP_ID_VENDOR,
                &vendor_cap(CFG_PCI, 0, 0, &[0; 4]),
                &cfg_writable,
            )
            .map_err(pci)?;
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&m| new_queue(m))
            .collect::<Result<Vec<_>, _>>()?;
        let events = (0..nqueues)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            config,
            msix_cap,
            pci_cfg_cap,
            device,
            mem: parts.mem,
            ioevents: parts.ioevents,
            msix: Arc::new(Mutex::new(MsixState::new(
                vectors,
                parts.msix,
                parts.routes,
            ))),
            isr: Arc::new(AtomicU8::new(0)),
            queue_vectors: (0..nqueues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config_vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            queues,
            events,
            ioevent_base: None,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            active: false,
        })
    }

    /// Number of MSI-X vectors: one per queue plus one for configuration changes.
    pub fn msix_vectors(&self) -> u16 {
        self.queues.len() as u16 + 1
    }

    /// The device's status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    fn device_features(&self) -> u64 {
        self.device.features() | 1 << VIRTIO_F_VERSION_1
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let q = self.selected_queue();
        let value: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => self.device_features() & 0xffff_ffff,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.config_vector.load(Ordering::Acquire)),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status),
            (0x15, 1) => u64::from(self.config_generation),
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => q.map_or(0, |q| u64::from(q.size())),
            (0x1a, 2) => self
                .queue_vectors
                .get(usize::from(self.queue_select))
                .map_or(u64::from(NO_VECTOR), |v| {
                    u64::from(v.load(Ordering::Acquire))
                }),
            (0x1c, 2) => q.map_or(0, |q| u64::from(q.ready())),
            (0x1e, 2) => u64::from(self.queue_select),
            (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) | (0x20 | 0x28 | 0x30, 8) => {
                let addr = q.map_or(0, |q| match offset & !7 {
                    0x20 => q.desc_table(),
                    0x28 => q.avail_ring(),
                    _ => q.used_ring(),
                });
                if offset & 4 != 0 { addr >> 32 } else { addr }
            }
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(b);
        // Queue setup is frozen once the device runs.
        let may_setup = !self.active && self.status & STATUS_FEATURES_OK != 0;
        let sel = usize::from(self.queue_select);
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = value as u32,
            (0x08, 4) => self.driver_feature_select = value as u32,
            (0x0c, 4) if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | value << 32,
                    _ => {}
                }
            }
            (0x10, 2) => {
                let v = self.valid_vector(value as u16);
                self.config_vector.store(v, Ordering::Release);
            }
            (0x14, 1) => self.write_status(value as u8),
            (0x16, 2) => self.queue_select = value as u16,
            (0x18, 2) if may_setup => {
                if let Some(q) = self.queues.get_mut(sel) {
                    // A size that is not a power of two or exceeds the maximum is refused:
                    // the queue keeps its old size.
                    let _ = q.try_set_size(value as u16);
                }
            }
            (0x1a, 2) => {
                let v = self.valid_vector(value as u16);
                if let Some(slot) = self.queue_vectors.get(sel) {
                    slot.store(v, Ordering::Release);
                }
            }
            (0x1c, 2) if may_setup && value == 1 => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.set_ready(true);
                }
            }
            (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) | (0x20 | 0x28 | 0x30, 8) if may_setup => {
                let Some(q) = self.queues.get_mut(sel) else {
                    return;
                };
                let current = match offset & !7 {
                    0x20 => q.desc_table(),
                    0x28 => q.avail_ring(),
                    _ => q.used_ring(),
                };
                let addr = GuestAddress(match (offset & 4 != 0, data.len()) {
                    (false, 8) => value,
                    (false, _) => (current & !0xffff_ffff) | value,
                    (true, _) => (current & 0xffff_ffff) | value << 32,
                });
                // A misaligned address is refused; the queue then fails validation.
                let _ = match offset & !7 {
                    0x20 => q.try_set_desc_table_address(addr),
                    0x28 => q.try_set_avail_ring_address(addr),
                    _ => q.try_set_used_ring_address(addr),
                };
            }
            _ => {}
        }
    }

    fn valid_vector(&self, v: u16) -> u16 {
        if v < self.msix_vectors() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let newly = value & !self.status;
        let mut status = value;
        if newly & STATUS_FEATURES_OK != 0 {
            let offered = self.device_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if !ok {
                status &= !STATUS_FEATURES_OK;
            }
        }
        self.status = status;
        if newly & STATUS_DRIVER_OK != 0
            && status & STATUS_FEATURES_OK != 0
            && !self.active
            && let Err(e) = self.activate()
        {
            crate::guest_warn!("virtio-pci: activation failed: {e}");
            self.status |= STATUS_NEEDS_RESET;
        }
    }

    fn activate(&mut self) -> Result<(), VirtioError> {
        let event_idx = self.driver_features & (1 << super::VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut active = Vec::new();
        for (index, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                return Err(VirtioError::InvalidQueue { index });
            }
            q.set_event_idx(event_idx);
            let max = q.max_size();
            let queue = std::mem::replace(q, new_queue(max)?);
            // Keep what the driver reads back from the registers; these values passed
            // validation once already.
            let _ = q.try_set_size(queue.size());
            let _ = q.try_set_desc_table_address(GuestAddress(queue.desc_table()));
            let _ = q.try_set_avail_ring_address(GuestAddress(queue.avail_ring()));
            let _ = q.try_set_used_ring_address(GuestAddress(queue.used_ring()));
            q.set_ready(true);
            let event = self.events[index]
                .try_clone()
                .map_err(VirtioError::EventFd)?;
            active.push(ActiveQueue {
                index: index as u16,
                queue,
                event,
            });
        }
        let interrupt = Arc::new(TransportInterrupt {
            msix: self.msix.clone(),
            isr: self.isr.clone(),
            queue_vectors: self.queue_vectors.clone(),
            config_vector: self.config_vector.clone(),
        });
        self.device.activate(Activation {
            mem: self.mem.clone(),
            interrupt,
            queues: active,
            acked_features: self.driver_features,
        })?;
        self.active = true;
        Ok(())
    }

    /// Device reset (status 0): the device stops, queues and negotiation start over.
    fn reset(&mut self) {
        self.device.reset();
        self.active = false;
        for q in &mut self.queues {
            q.reset();
        }
        for e in &self.events {
            // Drop a stale kick; an empty eventfd reports EAGAIN, which is fine.
            let _ = e.read();
        }
        for v in self.queue_vectors.iter() {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        self.isr.store(0, Ordering::SeqCst);
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.status = 0;
    }

    fn notify(&self, offset: u64) {
        let index = offset / u64::from(NOTIFY_MULTIPLIER);
        if let Some(e) = self.events.get(index as usize)
            && let Err(err) = e.write(1)
        {
            crate::guest_warn!("virtio-pci: cannot kick queue {index}: {err}");
        }
    }

    /// Moves the notify ioeventfds to where BAR0 now sits.
    fn bar0_moved(&mut self, new: Option<u64>) {
        let Some(reg) = self.ioevents.clone() else {
            return;
        };
        let notify_addr =
            |base: u64, i: usize| base + NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_MULTIPLIER);
        if let Some(old) = self.ioevent_base.take() {
            for (i, e) in self.events.iter().enumerate() {
                if let Err(err) = reg.unregister(notify_addr(old, i), e) {
                    log::warn!("virtio-pci: cannot unregister notify ioeventfd: {err}");
                }
            }
        }
        if let Some(base) = new {
            for (i, e) in self.events.iter().enumerate() {
                if let Err(err) = reg.register(notify_addr(base, i), e) {
                    // Notifications still arrive, as MMIO exits.
                    log::warn!("virtio-pci: cannot register notify ioeventfd: {err}");
                }
            }
            self.ioevent_base = Some(base);
        }
    }

    fn sync_msix_control(&mut self) {
        lock(&self.msix).sync_control(&self.config, self.msix_cap);
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == self.pci_cfg_cap / 4 + 4
            && let Some((offset, len)) = self.pci_cfg_window()
        {
            let mut b = [0u8; 4];
            self.bar_read(offset, &mut b[..len]);
            return u32::from_le_bytes(b);
        }
        self.config.read_reg(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarChange> {
        let changes = self.config.write_reg(reg, offset, data);
        if reg == self.msix_cap / 4 {
            self.sync_msix_control();
        }
        if reg == self.pci_cfg_cap / 4 + 4
            && let Some((bar_offset, len)) = self.pci_cfg_window()
        {
            let b = self.config.read_reg(reg).to_le_bytes();
            self.bar_write(bar_offset, &b[..len]);
        }
        for c in &changes {
            if c.bar == 0 {
                self.bar0_moved(c.new);
            }
        }
        changes
    }
}

impl VirtioPciDevice {
    /// The BAR0 offset and width the PCI_CFG capability selects, if the driver chose a
    /// valid one (BAR0, an access of 1, 2 or 4 bytes, naturally aligned).
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let at = self.pci_cfg_cap;
        let bar = self.config.byte(at + 4);
        let offset = u64::from(self.config.read_reg(at / 4 + 2));
        let len = self.config.read_reg(at / 4 + 3) as usize;
        (bar == 0 && matches!(len, 1 | 2 | 4) && offset % len as u64 == 0 && offset < BAR_SIZE)
            .then_some((offset, len))
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        let (region, off) = (offset & !(REGION_LEN - 1), offset & (REGION_LEN - 1));
        match region {
            COMMON_OFFSET if matches!(data.len(), 1 | 2 | 4 | 8) => self.read_common(off, data),
            ISR_OFFSET => {
                data.fill(0);
                if off == 0 {
                    data[0] = self.isr.swap(0, Ordering::SeqCst);
                }
            }
            DEVICE_OFFSET => self.device.read_config(off, data),
            NOTIFY_OFFSET => data.fill(0),
            MSIX_TABLE_OFFSET => lock(&self.msix).read_table(off, data),
            MSIX_PBA_OFFSET => lock(&self.msix).read_pba(off, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let (region, off) = (offset & !(REGION_LEN - 1), offset & (REGION_LEN - 1));
        match region {
            COMMON_OFFSET if matches!(data.len(), 1 | 2 | 4 | 8) => self.write_common(off, data),
            DEVICE_OFFSET => self.device.write_config(off, data),
            NOTIFY_OFFSET => self.notify(off),
            MSIX_TABLE_OFFSET => lock(&self.msix).write_table(off, data),
            _ => {}
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if self.config.bar_mapped(0) == Some(base) {
            self.bar_read(offset, data);
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        if self.config.bar_mapped(0) == Some(base) {
            self.bar_write(offset, data);
        }
    }
}

/// One queue's registers as the driver programmed them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct QueueRegs {
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    vector: u16,
}

/// The transport's saved state, with the device's own state inside.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct TransportState {
    config: PciConfigState,
    msix: MsixSaved,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    isr: u8,
    config_vector: u16,
    queues: Vec<QueueRegs>,
    /// Set when the device was running: it is activated again with its queues here.
    positions: Option<Vec<QueuePosition>>,
    device: Vec<u8>,
}

impl VirtioPciDevice {
    /// Whether the device behind the transport implements saved state.
    pub fn can_save(&self) -> bool {
        self.device.can_save()
    }

    /// The device's name in saved-state messages ("virtio-blk").
    pub fn device_name(&self) -> String {
        self.device.state_name().to_string()
    }

    fn state_name(&self) -> String {
        self.device_name()
    }
}

/// Saving pauses the device (its workers stop for good: a save ends the VM), restoring
/// redoes what the driver's writes did: BAR0 placement and its notify ioeventfds, MSI-X
/// routes, and activation with the queues at their saved positions.
impl Snapshot for VirtioPciDevice {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        if !self.device.can_save() {
            return Err(StateError::Unsupported(self.state_name()));
        }
        let positions = if self.active {
            Some(self.device.pause()?)
        } else {
            None
        };
        let device = self.device.save_device_state()?;
        let queues = self
            .queues
            .iter()
            .zip(self.queue_vectors.iter())
            .map(|(q, v)| QueueRegs {
                size: q.size(),
                ready: q.ready(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                vector: v.load(Ordering::Acquire),
            })
            .collect();
        let state = TransportState {
            config: self.config.save(),
            msix: lock(&self.msix).save(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            queue_select: self.queue_select,
            isr: self.isr.load(Ordering::SeqCst),
            config_vector: self.config_vector.load(Ordering::Acquire),
            queues,
            positions,
            device,
        };
        crate::state::encode(&self.state_name(), &state)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let name = self.state_name();
        let s: TransportState = crate::state::decode(&name, state)?;
        if s.queues.len() != self.queues.len() {
            return Err(StateError::mismatch(
                &name,
                format!(
                    "{} saved queues, the device has {}",
                    s.queues.len(),
                    self.queues.len()
                ),
            ));
        }
        if s.msix.table.len() != usize::from(self.msix_vectors()) {
            return Err(StateError::mismatch(&name, "MSI-X table size"));
        }
        let id = s.config.regs.first().copied().unwrap_or(0);
        if id != self.config.read_reg(crate::pci::config::REG_ID) {
            return Err(StateError::mismatch(
                &name,
                format!("saved PCI id {id:#010x}"),
            ));
        }
        if self.active {
            self.reset();
        }
        self.device.restore_device_state(&s.device)?;
        let changes = self.config.restore(&name, &s.config)?;
        lock(&self.msix).restore(&name, &s.msix)?;
        for c in &changes {
            if c.bar == 0 {
                self.bar0_moved(c.new);
            }
        }
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.queue_select = s.queue_select;
        self.isr.store(s.isr, Ordering::SeqCst);
        let config_vector = self.valid_vector(s.config_vector);
        self.config_vector.store(config_vector, Ordering::Release);
        for (i, r) in s.queues.iter().enumerate() {
            let vector = self.valid_vector(r.vector);
            self.queue_vectors[i].store(vector, Ordering::Release);
            let q = &mut self.queues[i];
            q.reset();
            // Values a driver could not have written are refused here as there.
            let _ = q.try_set_size(r.size);
            let _ = q.try_set_desc_table_address(GuestAddress(r.desc));
            let _ = q.try_set_avail_ring_address(GuestAddress(r.avail));
            let _ = q.try_set_used_ring_address(GuestAddress(r.used));
            q.set_ready(r.ready);
        }
        if let Some(positions) = s.positions {
            for p in positions {
                let Some(q) = self.queues.get_mut(usize::from(p.index)) else {
                    return Err(StateError::mismatch(
                        &name,
                        "queue position past the queues",
                    ));
                };
                q.set_next_avail(p.next_avail);
                q.set_next_used(p.next_used);
            }
            self.activate()
                .map_err(|e| StateError::device(&name, format!("cannot start it again: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{REG_CAP_POINTER, REG_ID};
    use crate::virtio::testing::{FakeDevice, FakeLog, MockDriver};

    fn fake() -> (MockDriver, Arc<Mutex<FakeLog>>) {
        let log = Arc::new(Mutex::new(FakeLog::default()));
        let d = MockDriver::new(Box::new(FakeDevice { log: log.clone() }));
        (d, log)
    }

    fn started_fake() -> (MockDriver, Arc<Mutex<FakeLog>>) {
        let (mut d, log) = fake();
        let st = d.negotiate(1 << VIRTIO_F_VERSION_1 | 1 << 3);
        d.enable_msix();
        d.setup_queue(0, 8, 1);
        d.write(0x14, &[st | STATUS_DRIVER_OK]);
        (d, log)
    }

    #[test]
    fn presents_modern_ids_and_virtio_capabilities() {
        let (d, _) = fake();
        let mut dev = d.dev.lock().unwrap();
        assert_eq!(dev.read_config(REG_ID), 0x107f_1af4);
        let mut at = dev.read_config(REG_CAP_POINTER) as usize;
        let mut found = Vec::new();
        while at != 0 {
            let h = dev.read_config(at / 4);
            if h as u8 == CAP_ID_VENDOR {
                let w = dev.read_config(at / 4 + 1);
                let off = dev.read_config(at / 4 + 2);
                // cfg_type, bar, region offset
                found.push(((h >> 24) as u8, w as u8, off));
            }
            at = (h >> 8) as usize & 0xff;
        }
        assert_eq!(
            found,
            vec![
                (CFG_COMMON, 0, COMMON_OFFSET as u32),
                (CFG_ISR, 0, ISR_OFFSET as u32),
                (CFG_DEVICE, 0, DEVICE_OFFSET as u32),
                (CFG_NOTIFY, 0, NOTIFY_OFFSET as u32),
                (CFG_PCI, 0, 0),
            ]
        );
        drop(dev);
        assert_eq!(d.msix_cap() % 4, 0);
    }

    #[test]
    fn negotiates_offered_features_only() {
        let (d, _) = fake();
        let offered = d.device_features();
        assert_eq!(offered, 1 << 3 | 1 << 40 | 1 << VIRTIO_F_VERSION_1);
        // A bit the device does not offer: FEATURES_OK does not stick.
        assert_eq!(
            d.negotiate(1 << VIRTIO_F_VERSION_1 | 1 << 5) & STATUS_FEATURES_OK,
            0
        );
        // A legacy driver (no VERSION_1) is refused.
        assert_eq!(d.negotiate(1 << 3) & STATUS_FEATURES_OK, 0);
        assert_ne!(
            d.negotiate(1 << VIRTIO_F_VERSION_1 | 1 << 40) & STATUS_FEATURES_OK,
            0
        );
        // Driver features read back, and are frozen after FEATURES_OK.
        d.write(0x08, &1u32.to_le_bytes());
        assert_eq!(d.read32(0x0c), 1 | 1 << 8);
        d.write(0x0c, &0u32.to_le_bytes());
        assert_eq!(d.read32(0x0c), 1 | 1 << 8);
    }

    #[test]
    fn sets_up_queues_and_activates_on_driver_ok() {
        let (d, log) = started_fake();
        assert_eq!(d.read16(0x12), 2);
        d.write(0x16, &0u16.to_le_bytes());
        assert_eq!(d.read16(0x18), 8);
        assert_eq!(d.read16(0x1a), 1);
        assert_eq!(d.read16(0x1c), 1);
        assert_eq!(d.read32(0x28), crate::virtio::testing::AVAIL as u32);
        // Queue 1 keeps its maximum size and was not enabled.
        d.write(0x16, &1u16.to_le_bytes());
        assert_eq!(d.read16(0x18), 8);
        assert_eq!(d.read16(0x1c), 0);
        assert_eq!(d.read16(0x1e), 1);
        let log = log.lock().unwrap();
        assert_eq!(
            log.activations,
            vec![(1, 1 << VIRTIO_F_VERSION_1 | 1 << 3, vec![8])]
        );
        assert_ne!(d.status() & STATUS_DRIVER_OK, 0);
    }

    #[test]
    fn queue_setup_is_ignored_before_features_ok_and_after_driver_ok() {
        let (mut d, _) = started_fake();
        d.write(0x16, &0u16.to_le_bytes());
        d.write(0x18, &4u16.to_le_bytes());
        assert_eq!(d.read16(0x18), 8);
        d.write(0x14, &[0]);
        d.write(0x14, &[STATUS_ACKNOWLEDGE]);
        d.setup_queue(0, 4, 0);
        d.write(0x16, &0u16.to_le_bytes());
        assert_eq!(d.read16(0x18), 16);
        assert_eq!(d.read16(0x1c), 0);
    }

    #[test]
    fn rejects_a_queue_size_that_is_not_a_power_of_two() {
        let (mut d, log) = fake();
        let st = d.negotiate(1 << VIRTIO_F_VERSION_1);
        d.setup_queue(0, 6, 0);
        d.write(0x16, &0u16.to_le_bytes());
        assert_eq!(d.read16(0x18), 16);
        d.write(0x14, &[st | STATUS_DRIVER_OK]);
        assert_eq!(log.lock().unwrap().activations[0].2, vec![16]);
    }

    #[test]
    fn queue_outside_guest_memory_fails_activation_with_needs_reset() {
        let (d, log) = fake();
        let st = d.negotiate(1 << VIRTIO_F_VERSION_1);
        d.write(0x16, &0u16.to_le_bytes());
        d.write(0x18, &8u16.to_le_bytes());
        d.write(0x20, &(1u64 << 40).to_le_bytes());
        d.write(0x1c, &1u16.to_le_bytes());
        d.write(0x14, &[st | STATUS_DRIVER_OK]);
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
        assert!(log.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn driver_ok_without_features_ok_does_not_activate() {
        let (d, log) = fake();
        d.write(
            0x14,
            &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK],
        );
        assert!(log.lock().unwrap().activations.is_empty());
        // Nor does a refused FEATURES_OK.
        let st = d.negotiate(1 << 3);
        d.write(0x14, &[st | STATUS_DRIVER_OK]);
        assert!(log.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn reset_returns_to_initial_state() {
        let (d, log) = started_fake();
        let resets = log.lock().unwrap().resets;
        d.write(0x14, &[0]);
        assert_eq!(d.status(), 0);
        assert_eq!(log.lock().unwrap().resets, resets + 1);
        d.write(0x16, &0u16.to_le_bytes());
        assert_eq!(d.read16(0x1c), 0);
        assert_eq!(d.read16(0x18), 16);
        assert_eq!(d.read16(0x1a), NO_VECTOR);
        assert_eq!(d.read32(0x20), 0);
        // And the device can be brought up again.
        let st = d.negotiate(1 << VIRTIO_F_VERSION_1);
        assert_ne!(st & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn out_of_range_msix_vector_reads_back_no_vector() {
        let (d, _) = fake();
        d.write(0x10, &7u16.to_le_bytes());
        assert_eq!(d.read16(0x10), NO_VECTOR);
        d.write(0x10, &2u16.to_le_bytes());
        assert_eq!(d.read16(0x10), 2);
    }

    #[test]
    fn masked_vector_is_pending_until_unmasked() {
        let (d, _) = fake();
        let dev = d.dev.lock().unwrap();
        let intr = TransportInterrupt {
            msix: dev.msix.clone(),
            isr: dev.isr.clone(),
            queue_vectors: dev.queue_vectors.clone(),
            config_vector: dev.config_vector.clone(),
        };
        drop(dev);
        d.enable_msix();
        d.write(0x16, &0u16.to_le_bytes());
        d.write(0x1a, &1u16.to_le_bytes());
        // Mask vector 1, raise queue 0: nothing fires, PBA bit 1 is set.
        d.write(MSIX_TABLE_OFFSET + 16 + 12, &1u32.to_le_bytes());
        intr.notify_queue(0);
        assert!(d.irq.fired.lock().unwrap().is_empty());
        assert_eq!(d.read32(MSIX_PBA_OFFSET), 0b10);
        d.write(MSIX_TABLE_OFFSET + 16 + 12, &0u32.to_le_bytes());
        assert_eq!(*d.irq.fired.lock().unwrap(), vec![1]);
        assert_eq!(d.read32(MSIX_PBA_OFFSET), 0);
        // ISR: the queue bit, cleared by reading.
        let mut isr = [0u8];
        d.read(ISR_OFFSET, &mut isr);
        assert_eq!(isr[0], ISR_QUEUE);
        d.read(ISR_OFFSET, &mut isr);
        assert_eq!(isr[0], 0);
        // Function mask holds every vector back.
        let cap = d.msix_cap();
        d.dev.lock().unwrap().write_config(cap / 4, 3, &[0xc0]);
        intr.notify_queue(0);
        assert_eq!(d.irq.fired.lock().unwrap().len(), 1);
        d.dev.lock().unwrap().write_config(cap / 4, 3, &[0x80]);
        assert_eq!(d.irq.fired.lock().unwrap().len(), 2);
        // Config changes use the config vector.
        d.write(0x10, &0u16.to_le_bytes());
        intr.notify_config();
        assert_eq!(d.irq.fired.lock().unwrap().last(), Some(&0));
    }

    #[test]
    fn msix_table_writes_reach_the_routes() {
        let (d, _) = fake();
        d.enable_msix();
        let updates = d.routes.updates.lock().unwrap();
        assert!(updates.contains(&(2, 0xfee0_0000, 2, false)));
        drop(updates);
        let mut e = [0u8; 4];
        d.read(MSIX_TABLE_OFFSET + 2 * 16 + 8, &mut e);
        assert_eq!(u32::from_le_bytes(e), 2);
        // Past the table: ignored, no panic.
        d.write(MSIX_TABLE_OFFSET + 3 * 16, &1u32.to_le_bytes());
        d.write(MSIX_TABLE_OFFSET + 3, &[1, 2]);
    }

    #[test]
    fn pci_cfg_capability_reaches_bar0_through_config_space() {
        let (d, _) = fake();
        let mut dev = d.dev.lock().unwrap();
        let at = dev.pci_cfg_cap;
        assert_eq!(dev.read_config(at / 4) >> 24, u32::from(CFG_PCI));
        // Select num_queues (common config 0x12, 2 bytes) and read it.
        dev.write_config(at / 4 + 2, 0, &0x12u32.to_le_bytes());
        dev.write_config(at / 4 + 3, 0, &2u32.to_le_bytes());
        assert_eq!(dev.read_config(at / 4 + 4) & 0xffff, 2);
        // Write the device status through the window.
        dev.write_config(at / 4 + 2, 0, &0x14u32.to_le_bytes());
        dev.write_config(at / 4 + 3, 0, &1u32.to_le_bytes());
        dev.write_config(at / 4 + 4, 0, &[STATUS_ACKNOWLEDGE]);
        drop(dev);
        assert_eq!(d.status(), STATUS_ACKNOWLEDGE);
        // A misaligned or odd-sized selection does nothing.
        let mut dev = d.dev.lock().unwrap();
        dev.write_config(at / 4 + 2, 0, &0x13u32.to_le_bytes());
        dev.write_config(at / 4 + 3, 0, &2u32.to_le_bytes());
        dev.write_config(at / 4 + 4, 0, &[0, 0]);
        dev.write_config(at / 4 + 3, 0, &3u32.to_le_bytes());
        dev.write_config(at / 4 + 4, 0, &[0, 0, 0]);
        drop(dev);
        assert_eq!(d.status(), STATUS_ACKNOWLEDGE);
    }

    #[test]
    fn device_config_and_odd_accesses_are_safe() {
        let (d, _) = fake();
        let mut b = [0u8; 4];
        d.read(DEVICE_OFFSET + 2, &mut b);
        assert_eq!(b, [3, 4, 5, 6]);
        d.read(DEVICE_OFFSET + 6, &mut b);
        assert_eq!(b, [7, 8, 0, 0]);
        // Misaligned and odd-width common config accesses read zero and change nothing.
        d.read(COMMON_OFFSET + 0x13, &mut b[..3]);
        d.write(COMMON_OFFSET + 0x15, &[0xff, 0xff]);
        d.write(NOTIFY_OFFSET + 0xffc, &[0; 4]);
        assert_eq!(d.status(), 0);
    }
}
