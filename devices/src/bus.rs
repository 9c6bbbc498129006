//! Address-decoded buses for port I/O and MMIO.
//!
//! A vCPU exit names an address and a width; the bus finds the device whose range holds the
//! address and hands it the offset inside that range. Devices never see absolute addresses,
//! so the same model serves a fixed port (COM1) and a relocatable PCI BAR.
//!
//! Devices are shared behind `Arc<Mutex<_>>` because several vCPU threads can reach the same
//! device; a device that must not block a vCPU hands slow work to a worker thread.
//!
//! Who made an access ([`Initiator`]: which vCPU, whether it was in System Management
//! Mode) is not part of the address: the vCPU thread records it with [`set_initiator`]
//! before it dispatches an exit, and the few devices that care (the APM port raising an
//! SMI on the vCPU that wrote it, the secure flash taking writes from SMM only) read it
//! with [`initiator`]. An access from any other thread (a worker, a test) has the default:
//! no vCPU, not in SMM.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a bus.
///
/// `offset` is relative to the base of the range the device was inserted at; `base` is that
/// base, for devices inserted at several places. Reads fill all of `data`; a device that does
/// not decode an offset leaves it as it found it (the bus pre-fills reads with `0xff`, what
/// an unclaimed ISA/PCI cycle returns).
pub trait BusDevice: Send {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors from placing devices on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
    #[error("range at {base:#x} is empty or wraps the address space")]
    BadRange { base: u64 },
    #[error("no device at {base:#x}")]
    NotFound { base: u64 },
}

/// A shared device handle as stored on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// One address space (port I/O or MMIO) of the machine.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base })?;
        if let Some((&prev_base, prev)) = self.ranges.range(..end).next_back()
            && prev_base + prev.len > base
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the device placed at `base` (a BAR being moved), returning it.
    pub fn remove(&mut self, base: u64) -> Result<SharedDevice, BusError> {
        self.ranges
            .remove(&base)
            .map(|e| e.device)
            .ok_or(BusError::NotFound { base })
    }

    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= entry.len).then_some((base, entry))
    }

    /// The device covering the whole access `[addr, addr + size)`, its base and the offset of
    /// `addr` in it. Callers that may move devices while one is being accessed (a chipset
    /// register that relocates a block) look the device up here, release the bus, and
    /// then access it, so the device may take the bus's write lock.
    pub fn route(&self, addr: u64, size: usize) -> Option<(SharedDevice, u64, u64)> {
        let (base, entry) = self.resolve(addr, size)?;
        Some((entry.device.clone(), base, addr - base))
    }

    /// Reads from the device covering `addr`. Returns false when no device claims the whole
    /// access; `data` then holds all-ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0xff);
        let Some((base, entry)) = self.resolve(addr, data.len()) else {
            return false;
        };
        lock(&entry.device).read(base, addr - base, data);
        true
    }

    /// Writes to the device covering `addr`. Returns false when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((base, entry)) = self.resolve(addr, data.len()) else {
            return false;
        };
        lock(&entry.device).write(base, addr - base, data);
        true
    }
}

/// Who makes the bus access in progress on this thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Initiator {
    /// The vCPU whose exit this is; None off a vCPU thread.
    pub vcpu: Option<u32>,
    /// The vCPU was in System Management Mode (KVM_RUN_X86_SMM on the exit).
    pub smm: bool,
}

thread_local! {
    static INITIATOR: Cell<Initiator> = const { Cell::new(Initiator { vcpu: None, smm: false }) };
}

/// Records who makes the accesses this thread dispatches from now on.
pub fn set_initiator(who: Initiator) {
    INITIATOR.with(|c| c.set(who));
}

/// Who makes the access in progress on this thread (see the module header).
pub fn initiator() -> Initiator {
    INITIATOR.with(Cell::get)
}

/// Locks a device, recovering from a poisoned lock: a device that panicked mid-access is in
/// whatever state it was left in, which is no worse than a guest-visible hardware glitch,
/// and refusing every later access would hang the guest instead.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn route_names_the_device_its_base_and_the_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x600, 0x80).unwrap();
        let (found, base, offset) = bus.route(0x604, 2).unwrap();
        assert_eq!((base, offset), (0x600, 4));
        lock(&found).write(base, offset, &[1, 2]);
        assert_eq!(dev.lock().unwrap().last, Some((0x600, 4, vec![1, 2])));
        assert!(
            bus.route(0x67f, 2).is_none(),
            "an access running past the end"
        );
        assert!(bus.route(0x500, 1).is_none());
    }

    #[test]
    fn routes_by_offset_within_range() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fb, &mut b));
        assert_eq!(b, [3]);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(dev.lock().unwrap().last, Some((0x3f8, 1, vec![7])));
    }

    #[test]
    fn unclaimed_reads_are_all_ones() {
        let bus = Bus::new();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x80, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(!bus.write(0x80, &[1]));
    }

    #[test]
    fn rejects_access_straddling_range_end() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 4)
            .unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x1002, &mut b));
        assert!(bus.read(0x1000, &mut b));
    }

    #[test]
    fn rejects_overlap_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default())) as SharedDevice;
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(d(), 0x108, 4),
            Err(BusError::Overlap {
                base: 0x108,
                len: 4
            })
        );
        assert_eq!(
            bus.insert(d(), 0xf8, 0x10),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(d(), 0x200, 0),
            Err(BusError::BadRange { base: 0x200 })
        );
        assert_eq!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::BadRange { base: u64::MAX })
        );
        bus.insert(d(), 0x110, 4).unwrap();
        bus.remove(0x100).unwrap();
        bus.insert(d(), 0x108, 4).unwrap();
    }
}
