//! Guest memory: anonymous mappings placed per `layout::ram_ranges` (the PCI hole stays
//! free), registered as KVM memory slots. Pages are neither zeroed nor touched here: the
//! kernel hands them out on first use, so a 4 GiB guest costs nothing until it runs.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::arch::x86_64::layout;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {0} bytes of guest memory")]
    Map(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("cannot register guest memory with KVM")]
    Register(#[source] kvm_ioctls::Error),
    #[error("guest memory region has no host address")]
    HostAddress(#[source] vm_memory::GuestMemoryError),
}

/// Maps `size` bytes of guest RAM for direct kernel boot.
pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    create_at(size, layout::ram_ranges(size))
}

/// Maps `size` bytes of guest RAM for firmware boot (the VGA window left out).
pub fn create_for_firmware(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    create_at(size, layout::firmware_ram_ranges(size))
}

fn create_at(size: u64, ranges: Vec<(u64, u64)>) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ranges
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Map(size, e))
}

/// One KVM memory slot of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamSlot {
    /// Slot number within an address space.
    pub slot: u32,
    /// Guest physical address and length.
    pub start: u64,
    pub len: u64,
    /// Host address of `start`, inside a mapping of the `GuestMemoryMmap`.
    pub host: u64,
}

impl RamSlot {
    /// First guest address past the slot.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The slots [`register`] makes for `mem`: every region, slots numbered from 0, leaving
/// out `hole` (`(start, end)`: the BIOS area under firmware boot, whose slots the
/// chipset's PAM registers govern).
pub fn ram_slots(
    mem: &GuestMemoryMmap,
    hole: Option<(u64, u64)>,
) -> Result<Vec<RamSlot>, MemoryError> {
    let mut slots = Vec::new();
    for region in mem.iter() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(MemoryError::HostAddress)? as u64;
        let (start, end) = (region.start_addr().0, region.start_addr().0 + region.len());
        let pieces = match hole {
            Some((h0, h1)) if h0 < end && h1 > start => {
                vec![(start, h0.max(start)), (h1.min(end), end)]
            }
            _ => vec![(start, end)],
        };
        for (s, e) in pieces.into_iter().filter(|(s, e)| e > s) {
            slots.push(RamSlot {
                slot: slots.len() as u32,
                start: s,
                len: e - s,
                host: host + (s - start),
            });
        }
    }
    Ok(slots)
}

/// Maps the RAM of `slot`, or its first `len` bytes (0 deletes the slot), in KVM address
/// space `space` (0: normal, 1: System Management Mode).
pub fn set_ram_slot(
    vm: &VmFd,
    slot: &RamSlot,
    len: u64,
    space: u32,
) -> Result<(), kvm_ioctls::Error> {
    let r = kvm_userspace_memory_region {
        slot: space << 16 | slot.slot,
        flags: 0,
        guest_phys_addr: slot.start,
        memory_size: len.min(slot.len),
        userspace_addr: slot.host,
    };
    // SAFETY: the range lies in a live mapping owned by the guest memory `slot` was made
    // from, which the caller keeps alive as long as the VM (the Machine owns both and drops
    // the VM first).
    unsafe { vm.set_user_memory_region(r) }
}

/// Registers every region of `mem` as KVM memory slots ([`ram_slots`]) in address space 0.
pub fn register(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    hole: Option<(u64, u64)>,
) -> Result<(), MemoryError> {
    for slot in ram_slots(mem, hole)? {
        set_ram_slot(vm, &slot, slot.len, 0).map_err(MemoryError::Register)?;
    }
    Ok(())
}

/// Host RAM in bytes, from sysinfo(2).
pub fn host_ram() -> Option<u64> {
    // SAFETY: sysinfo only writes into the struct we pass; all-zero is a valid value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    let rc = unsafe { libc::sysinfo(&mut info) };
    (rc == 0).then(|| (info.totalram as u64).saturating_mul(u64::from(info.mem_unit.max(1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_ram_around_the_hole_without_touching_it() {
        let m = create((3 << 30) + (1 << 20)).unwrap();
        let regions: Vec<(u64, u64)> = m.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(regions, [(0, 3 << 30), (1 << 32, 1 << 20)]);
        assert!(host_ram().unwrap() > 0);
    }

    #[test]
    fn firmware_ram_slots_leave_the_bios_area_out() {
        let m = create_for_firmware(256 << 20).unwrap();
        let slots = ram_slots(&m, Some((0xc_0000, 0x10_0000))).unwrap();
        let spans: Vec<(u32, u64, u64)> =
            slots.iter().map(|s| (s.slot, s.start, s.end())).collect();
        assert_eq!(spans, [(0, 0, 0xa_0000), (1, 0x10_0000, 256 << 20)]);
    }
}
