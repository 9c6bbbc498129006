//! SMRAM on KVM: the memory slots behind the Q35 MCH's SMRAM registers.
//!
//! KVM gives a vCPU in System Management Mode its own set of memory slots, address space
//! 1 (slot numbers `1 << 16 | n`); outside SMM it uses address space 0. The device model
//! (`hospes_devices::chipset::smram`) decides who sees RAM where and calls
//! [`SmramMapper::set`] with the new [`SmramView`]; [`KvmSmram`] turns it into slots:
//!
//! - Address space 1 mirrors every RAM slot of address space 0 for good (made once in
//!   [`KvmSmram::new`]), so SMM code sees all RAM, TSEG included; OVMF's flashes follow
//!   their read-array mode there too (`flash::KvmFlashSlot::mirror_for_smm`). What has no
//!   slot there (a `--bios` ROM, the BIOS area, the VGA window) exits as MMIO and reaches
//!   the same bus devices as outside SMM: the same data, but no code runs from it in SMM.
//! - TSEG, the top `tseg_len` bytes of RAM below 4 GiB: the address-space-0 slot holding
//!   them is deleted and made again `tseg_len` bytes shorter, so code outside SMM reaches
//!   nothing there (reads all-ones, writes dropped, as unclaimed MMIO); set back whole
//!   when TSEG goes (only at reset once the firmware set D_LCK). Between the delete and the
//!   re-add the slot is briefly absent for every vCPU: the firmware programs TSEG once,
//!   early, with its other CPUs idle.
//! - The legacy SMRAM at 0xA0000-0xBFFFF: under firmware boot guest RAM leaves the VGA
//!   window out, so it is a 128 KiB memory of its own, mapped as slot [`ASEG_SLOT`] in
//!   address space 0 while open (D_OPEN) and in address space 1 while SMM owns it; where it
//!   is not mapped the VGA device answers.
//!
//! Calls come from inside an MCH configuration write on a vCPU thread; KVM serialises slot
//! updates itself, and the state here is under one lock.

use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_CAP_MULTI_ADDRESS_SPACE, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use super::memory::{RamSlot, ram_slots, set_ram_slot};
use hospes_devices::bus::lock;
use hospes_devices::chipset::smram::{ASEG_LEN, ASEG_START, SmramMapper, SmramView};
use hospes_devices::framebuffer::FbMemory;

/// The legacy SMRAM's slot number (in either address space), after the flashes' slots.
pub const ASEG_SLOT: u32 = 40;
/// KVM's address space for SMM.
pub const SMM_SPACE: u32 = 1;

/// Errors setting up SMM.
#[derive(Debug, thiserror::Error)]
pub enum SmramError {
    #[error(
        "this host's KVM offers no System Management Mode (KVM_CAP_X86_SMM), which the \
         Secure Boot firmware requires; boot the non-Secure-Boot firmware instead"
    )]
    NoSmm,
    #[error("cannot list guest RAM for SMM")]
    Memory(#[from] super::memory::MemoryError),
    #[error("cannot map guest RAM for SMM")]
    Map(#[source] kvm_ioctls::Error),
    #[error("cannot allocate the legacy SMRAM")]
    Alloc(#[source] hospes_devices::framebuffer::DisplayError),
}

/// Whether this host's KVM runs guests with SMM: KVM_CAP_X86_SMM and a second address
/// space for SMRAM.
pub fn supported(kvm: &Kvm) -> bool {
    kvm.check_extension(Cap::X86Smm)
        && kvm.check_extension_raw(libc::c_ulong::from(KVM_CAP_MULTI_ADDRESS_SPACE)) >= 2
}

/// The SMRAM slots of one VM (see the module header).
pub struct KvmSmram {
    vm: Arc<VmFd>,
    /// The address-space-0 RAM slot that ends where RAM below 4 GiB ends (holds TSEG).
    top: Option<RamSlot>,
    aseg: Arc<FbMemory>,
    view: Mutex<SmramView>,
    /// Keeps the RAM the SMM slots map alive.
    _ram: GuestMemoryMmap,
}

impl KvmSmram {
    /// Mirrors `mem`'s RAM slots (made with `hole`, as `memory::register` made them) into
    /// the SMM address space. `low_end` is where RAM below 4 GiB ends (TSEG's top).
    pub fn new(
        kvm: &Kvm,
        vm: Arc<VmFd>,
        mem: &GuestMemoryMmap,
        hole: Option<(u64, u64)>,
        low_end: u64,
    ) -> Result<Self, SmramError> {
        if !supported(kvm) {
            return Err(SmramError::NoSmm);
        }
        let slots = ram_slots(mem, hole)?;
        for s in &slots {
            set_ram_slot(&vm, s, s.len, SMM_SPACE).map_err(SmramError::Map)?;
        }
        let top = slots
            .iter()
            .find(|s| s.start < low_end && s.end() == low_end)
            .copied();
        let aseg = FbMemory::new(ASEG_LEN as usize).map_err(SmramError::Alloc)?;
        Ok(Self {
            vm,
            top,
            aseg: Arc::new(aseg),
            view: Mutex::new(SmramView::default()),
            _ram: mem.clone(),
        })
    }

    /// Maps (or with `on` false removes) the legacy SMRAM in address space `space`.
    fn map_aseg(&self, space: u32, on: bool) {
        let region = kvm_userspace_memory_region {
            slot: space << 16 | ASEG_SLOT,
            flags: 0,
            guest_phys_addr: ASEG_START,
            memory_size: if on { ASEG_LEN } else { 0 },
            userspace_addr: self.aseg.host_address(),
        };
        // SAFETY: the host range is `self.aseg`'s live mapping, which outlives the slot:
        // Drop removes the slot before the mapping goes.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            log::error!("legacy SMRAM (address space {space}, on: {on}): KVM refused: {e}");
        }
    }

    /// Hides the top `tseg_len` bytes of low RAM from address space 0 (0: shows all).
    fn hide_tseg(&self, tseg_len: u64) {
        let Some(top) = self.top else {
            log::error!("TSEG: no RAM slot ends at the top of low RAM; not hidden");
            return;
        };
        if tseg_len >= top.len {
            hospes_devices::guest_warn!(
                "TSEG of {tseg_len:#x} bytes is larger than the RAM slot under it; not hidden"
            );
            return;
        }
        let result = set_ram_slot(&self.vm, &top, 0, 0)
            .and_then(|()| set_ram_slot(&self.vm, &top, top.len - tseg_len, 0));
        if let Err(e) = result {
            log::error!("TSEG ({tseg_len:#x} bytes): KVM refused the RAM slot change: {e}");
        }
    }
}

impl SmramMapper for KvmSmram {
    fn set(&self, view: SmramView) {
        let mut now = lock(&self.view);
        if view.tseg_len != now.tseg_len {
            self.hide_tseg(view.tseg_len);
        }
        if view.aseg_open != now.aseg_open {
            self.map_aseg(0, view.aseg_open);
        }
        if view.aseg_smm != now.aseg_smm {
            self.map_aseg(SMM_SPACE, view.aseg_smm);
        }
        log::debug!("SMRAM: {view:?}");
        *now = view;
    }
}

impl Drop for KvmSmram {
    fn drop(&mut self) {
        let now = *lock(&self.view);
        if now.aseg_open {
            self.map_aseg(0, false);
        }
        if now.aseg_smm {
            self.map_aseg(SMM_SPACE, false);
        }
    }
}
