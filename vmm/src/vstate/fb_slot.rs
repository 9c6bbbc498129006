//! The framebuffer as a KVM memory slot with dirty-page logging (KVM_MEM_LOG_DIRTY_PAGES):
//! guest writes go straight to [`FbMemory`] with no exit, and KVM_GET_DIRTY_LOG says which
//! pages changed.

use std::sync::Arc;

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;

use hospes_devices::display::FbSlot;
use hospes_devices::framebuffer::FbMemory;

/// The memory slot number used for the framebuffer (guest RAM uses the first few).
pub const FB_SLOT: u32 = 16;

/// [`FbSlot`] on a KVM VM.
pub struct KvmFbSlot {
    vm: Arc<VmFd>,
    slot: u32,
    mem: Arc<FbMemory>,
    at: Option<u64>,
}

impl KvmFbSlot {
    pub fn new(vm: Arc<VmFd>, slot: u32, mem: Arc<FbMemory>) -> Self {
        Self {
            vm,
            slot,
            mem,
            at: None,
        }
    }

    fn set(&self, at: u64, size: u64) -> Result<(), kvm_ioctls::Error> {
        let r = kvm_userspace_memory_region {
            slot: self.slot,
            flags: if size > 0 { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: at,
            memory_size: size,
            userspace_addr: self.mem.host_address(),
        };
        // SAFETY: the mapping is owned by `self.mem`, an Arc this struct holds; the slot is
        // deleted (size 0) before a move and the VM fd is dropped with or before it.
        unsafe { self.vm.set_user_memory_region(r) }
    }
}

impl FbSlot for KvmFbSlot {
    fn map(&mut self, at: Option<u64>) {
        if at == self.at {
            return;
        }
        if let Some(old) = self.at.take()
            && let Err(e) = self.set(old, 0)
        {
            log::warn!("display: cannot unmap the framebuffer at {old:#x}: {e}");
        }
        if let Some(new) = at {
            match self.set(new, self.mem.len() as u64) {
                Ok(()) => self.at = Some(new),
                Err(e) => log::warn!("display: cannot map the framebuffer at {new:#x}: {e}"),
            }
        }
    }

    fn take_dirty(&mut self) -> Option<Vec<u64>> {
        self.at?;
        match self.vm.get_dirty_log(self.slot, self.mem.len()) {
            Ok(b) => Some(b),
            Err(e) => {
                hospes_devices::guest_warn!("display: KVM_GET_DIRTY_LOG failed: {e}");
                None
            }
        }
    }
}

impl Drop for KvmFbSlot {
    fn drop(&mut self) {
        self.map(None);
    }
}
