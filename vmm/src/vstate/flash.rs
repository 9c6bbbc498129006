//! The KVM side of the CFI flash (`hospes_devices::pflash`): each flash image is a
//! read-only KVM memory slot while the flash is in read-array mode, and no slot while it
//! is in a command mode.
//!
//! Data flow: in read-array mode the guest reads (and runs) the image at memory speed
//! through the slot; a write to a read-only slot exits as MMIO and reaches the `Pflash`
//! on the MMIO bus, which takes it as a command. When a command leaves read-array mode
//! the flash calls [`FlashMapping::set_array_mode`]`(false)` and the slot goes, so the
//! next reads (status, CFI query) exit to the device too; back in read-array mode the
//! slot returns. Adding and deleting a slot are both KVM_SET_USER_MEMORY_REGION (a size
//! of 0 deletes). On a machine with SMM ([`KvmFlashSlot::mirror_for_smm`]) the same slot
//! comes and goes in the SMM address space too, so SMM code (OVMF's variable driver)
//! reads the image at memory speed as well.

use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;

use hospes_devices::bus::lock;
use hospes_devices::chipset::mch::PAM_SEGMENTS;
use hospes_devices::framebuffer::FbMemory;
use hospes_devices::pflash::FlashMapping;

use super::shadow::SHADOW_SLOT_BASE;
use super::smram::SMM_SPACE;

/// The first flash slot, after the BIOS area's 13 shadow slots: OVMF's VARS image.
pub const FLASH_SLOT_BASE: u32 = SHADOW_SLOT_BASE + PAM_SEGMENTS as u32;
/// OVMF's CODE image.
pub const FLASH_CODE_SLOT: u32 = FLASH_SLOT_BASE + 1;

/// One flash image as a KVM memory slot that comes and goes with read-array mode.
pub struct KvmFlashSlot {
    vm: Arc<VmFd>,
    slot: u32,
    /// Guest address of the image's first byte.
    at: u64,
    /// The image, kept alive while the slot maps it.
    mem: Arc<FbMemory>,
    len: u64,
    mapped: Mutex<bool>,
    /// Also in KVM's SMM address space (1).
    smm: bool,
}

impl KvmFlashSlot {
    /// Maps `len` bytes of `mem` read-only at `at` as KVM slot `slot` (a flash starts in
    /// read-array mode).
    pub fn new(
        vm: Arc<VmFd>,
        slot: u32,
        at: u64,
        mem: Arc<FbMemory>,
        len: u64,
    ) -> Result<Self, kvm_ioctls::Error> {
        let flash = Self {
            vm,
            slot,
            at,
            len: len.min(mem.len() as u64),
            mem,
            mapped: Mutex::new(false),
            smm: false,
        };
        flash.apply(flash.region(true))?;
        *lock(&flash.mapped) = true;
        Ok(flash)
    }

    /// Maps the slot in KVM's SMM address space too, now and on every later change.
    pub fn mirror_for_smm(mut self) -> Result<Self, kvm_ioctls::Error> {
        self.smm = true;
        if self.is_mapped() {
            self.apply_in(SMM_SPACE, self.region(true))?;
        }
        Ok(self)
    }

    /// Whether the slot maps the image now.
    pub fn is_mapped(&self) -> bool {
        *lock(&self.mapped)
    }

    /// The KVM slot number.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The slot as KVM takes it: the image, read-only, or (`on` false) its deletion.
    fn region(&self, on: bool) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot: self.slot,
            flags: if on { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: self.at,
            memory_size: if on { self.len } else { 0 },
            userspace_addr: if on { self.mem.host_address() } else { 0 },
        }
    }

    /// `region` in address space 0 and, on a machine with SMM, 1.
    fn apply(&self, region: kvm_userspace_memory_region) -> Result<(), kvm_ioctls::Error> {
        self.apply_in(0, region)?;
        if self.smm {
            self.apply_in(SMM_SPACE, region)?;
        }
        Ok(())
    }

    fn apply_in(
        &self,
        space: u32,
        mut region: kvm_userspace_memory_region,
    ) -> Result<(), kvm_ioctls::Error> {
        region.slot |= space << 16;
        // SAFETY: a mapped range lies inside `self.mem`'s mapping, which this struct keeps
        // alive and which Drop unmaps from the VM before releasing it; KVM only reads it
        // (the slot is read-only). A size of 0 deletes the slot.
        unsafe { self.vm.set_user_memory_region(region) }
    }
}

impl FlashMapping for KvmFlashSlot {
    fn set_array_mode(&self, on: bool) {
        let mut mapped = lock(&self.mapped);
        if *mapped == on {
            return;
        }
        match self.apply(self.region(on)) {
            Ok(()) => *mapped = on,
            // Without the slot, read-array reads exit to the device, which serves them
            // from the same memory: slower but right. A slot that cannot go would hide
            // the status register from the guest's reads.
            Err(e) => log::error!(
                "flash slot {} at {:#x}: KVM refused to {} it: {e}",
                self.slot,
                self.at,
                if on { "map" } else { "unmap" }
            ),
        }
    }
}

impl Drop for KvmFlashSlot {
    fn drop(&mut self) {
        // The VM may outlive this struct (others hold its fd): take the slot away before
        // the memory it points at is released.
        if *lock(&self.mapped) {
            let _ = self.apply(self.region(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: u64 = 0xffc0_0000;
    const LEN: u64 = 0x8_4000;

    /// Whether guest range `[at, at + len)` is free of memory slots: KVM refuses a new
    /// slot that overlaps an existing one (EEXIST), so probe with a spare slot.
    fn range_is_free(vm: &VmFd, mem: &FbMemory, at: u64, len: u64) -> bool {
        let probe = |size| kvm_userspace_memory_region {
            slot: FLASH_SLOT_BASE + 10,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: at,
            memory_size: size,
            userspace_addr: if size == 0 { 0 } else { mem.host_address() },
        };
        // SAFETY: `mem` outlives the probe slot, which is deleted again right away.
        let free = unsafe { vm.set_user_memory_region(probe(len)) }.is_ok();
        if free {
            // SAFETY: deletes the probe slot.
            unsafe { vm.set_user_memory_region(probe(0)) }.unwrap();
        }
        free
    }

    fn vm() -> Option<Arc<VmFd>> {
        let kvm = kvm_ioctls::Kvm::new().ok()?;
        Some(Arc::new(kvm.create_vm().ok()?))
    }

    /// Needs /dev/kvm; skipped where there is none.
    #[test]
    fn the_slot_follows_read_array_mode() {
        let Some(vm) = vm() else {
            return;
        };
        let mem = Arc::new(FbMemory::new(LEN as usize).unwrap());
        let spare = FbMemory::new(LEN as usize).unwrap();
        let flash = KvmFlashSlot::new(vm.clone(), FLASH_SLOT_BASE, AT, mem, LEN).unwrap();
        assert!(flash.is_mapped(), "a flash starts in read-array mode");
        assert!(!range_is_free(&vm, &spare, AT, LEN), "the image is mapped");

        flash.set_array_mode(false);
        assert!(!flash.is_mapped());
        assert!(range_is_free(&vm, &spare, AT, LEN), "command mode: no slot");
        flash.set_array_mode(false);
        assert!(!flash.is_mapped(), "a repeated change is no change");

        flash.set_array_mode(true);
        assert!(flash.is_mapped());
        assert!(!range_is_free(&vm, &spare, AT, LEN), "mapped again");
        flash.set_array_mode(true);
        assert!(flash.is_mapped());
        // Only the image's range is taken: the page after it is free.
        assert!(range_is_free(&vm, &spare, AT + LEN, 0x1000));
    }

    /// Needs /dev/kvm; skipped where there is none.
    #[test]
    fn dropping_the_slot_unmaps_the_image() {
        let Some(vm) = vm() else {
            return;
        };
        let mem = Arc::new(FbMemory::new(LEN as usize).unwrap());
        let spare = FbMemory::new(LEN as usize).unwrap();
        let flash = KvmFlashSlot::new(vm.clone(), FLASH_CODE_SLOT, AT, mem, LEN).unwrap();
        assert_eq!(flash.slot(), FLASH_CODE_SLOT);
        assert!(!range_is_free(&vm, &spare, AT, LEN));
        drop(flash);
        assert!(range_is_free(&vm, &spare, AT, LEN));
    }

    /// Needs /dev/kvm; skipped where there is none.
    #[test]
    fn a_clash_with_another_slot_is_an_error_not_a_panic() {
        let Some(vm) = vm() else {
            return;
        };
        let a = Arc::new(FbMemory::new(LEN as usize).unwrap());
        let b = Arc::new(FbMemory::new(LEN as usize).unwrap());
        let _first = KvmFlashSlot::new(vm.clone(), FLASH_SLOT_BASE, AT, a, LEN).unwrap();
        assert!(KvmFlashSlot::new(vm, FLASH_CODE_SLOT, AT + 0x1000, b, LEN).is_err());
    }
}
