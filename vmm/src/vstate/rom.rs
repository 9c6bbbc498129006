//! Read-only memory slots: firmware images mapped into the guest, so the firmware runs
//! from them at memory speed while a write leaves the guest (KVM_MEM_READONLY) and is
//! dropped by the bus device the machine puts over the same range.

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;

use hospes_devices::framebuffer::FbMemory;

/// The first KVM memory slot used for ROMs (guest RAM takes the first few, the
/// framebuffer 16).
pub const ROM_SLOT_BASE: u32 = 20;

/// Maps `len` bytes of `mem` read-only at guest address `at`, as KVM memory slot `slot`.
/// `mem` must outlive the VM (the machine keeps it next to the VM fd).
pub fn map_readonly(
    vm: &VmFd,
    slot: u32,
    at: u64,
    mem: &FbMemory,
    len: u64,
) -> Result<(), kvm_ioctls::Error> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: KVM_MEM_READONLY,
        guest_phys_addr: at,
        memory_size: len.min(mem.len() as u64),
        userspace_addr: mem.host_address(),
    };
    // SAFETY: the host range is a live mapping owned by `mem`, which the caller keeps alive
    // as long as the VM; KVM only reads it (the slot is read-only).
    unsafe { vm.set_user_memory_region(region) }
}
