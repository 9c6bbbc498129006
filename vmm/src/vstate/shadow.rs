//! The KVM side of the Q35 MCH's PAM registers: each of the 13 segments of the BIOS area
//! (0xc0000..0x100000) is a KVM memory slot of its own, remapped when the firmware changes
//! the segment's mode.
//!
//! | mode | KVM slot | what exits (to `chipset::shadow::ShadowArea`) |
//! |---|---|---|
//! | ReadWrite | shadow RAM | nothing |
//! | ReadOnly | shadow RAM, read-only | writes (dropped) |
//! | Off, WriteOnly | the ROM's low alias, read-only (0xe0000 and up); none below | writes (dropped, or to RAM for WriteOnly); reads below 0xe0000 |

use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use hospes_devices::bus::lock;
use hospes_devices::chipset::mch::PAM_SEGMENTS;
use hospes_devices::chipset::shadow::{BIOS_AREA_START, ROM_ALIAS_START, ShadowArea};
use hospes_devices::chipset::{PamMode, PamSegment, ShadowMemory, pam_segments};
use hospes_devices::framebuffer::FbMemory;

use super::rom::ROM_SLOT_BASE;

/// The first of the 13 slots (after the system ROM's).
pub const SHADOW_SLOT_BASE: u32 = ROM_SLOT_BASE + 1;

/// Errors setting up the BIOS area.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("guest RAM does not cover the BIOS area")]
    NoRam(#[source] vm_memory::GuestMemoryError),
}

/// The BIOS area's KVM slots.
pub struct KvmShadow {
    vm: Arc<VmFd>,
    area: Arc<Mutex<ShadowArea>>,
    /// Host address of guest 0xc0000 (the shadow RAM).
    ram_host: u64,
    /// Host address of the ROM byte shown at 0xe0000.
    rom_host: u64,
    /// The ROM, kept alive while a slot maps it.
    _rom: Arc<FbMemory>,
    mapped: Mutex<[bool; PAM_SEGMENTS]>,
}

impl KvmShadow {
    /// Maps every segment Off (the ROM alias at 0xe0000.., nothing below), as after
    /// reset. `rom_alias` is the offset in `rom` of the byte shown at 0xe0000.
    pub fn new(
        vm: Arc<VmFd>,
        mem: &GuestMemoryMmap,
        area: Arc<Mutex<ShadowArea>>,
        rom: Arc<FbMemory>,
        rom_alias: usize,
    ) -> Result<Self, ShadowError> {
        let ram_host = mem
            .get_host_address(GuestAddress(BIOS_AREA_START))
            .map_err(ShadowError::NoRam)? as u64;
        let shadow = Self {
            vm,
            area,
            ram_host,
            rom_host: rom.host_address() + rom_alias as u64,
            _rom: rom,
            mapped: Mutex::new([false; PAM_SEGMENTS]),
        };
        for seg in pam_segments() {
            shadow.set_segment(seg, PamMode::Off);
        }
        Ok(shadow)
    }

    fn slot(&self, seg: PamSegment, host: u64, flags: u32) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot: SHADOW_SLOT_BASE + seg.index as u32,
            flags,
            guest_phys_addr: seg.start,
            memory_size: if host == 0 { 0 } else { seg.len },
            userspace_addr: host,
        }
    }

    fn apply(&self, region: kvm_userspace_memory_region) -> bool {
        // SAFETY: every host range mapped here lies in guest RAM's mapping (owned by the
        // machine's GuestMemoryMmap) or in the ROM's mapping (kept by `_rom`), both alive
        // as long as the VM; a size of 0 deletes the slot.
        match unsafe { self.vm.set_user_memory_region(region) } {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "BIOS area slot {} at {:#x}: KVM refused the change: {e}",
                    region.slot,
                    region.guest_phys_addr
                );
                false
            }
        }
    }
}

impl ShadowMemory for KvmShadow {
    fn set_segment(&self, seg: PamSegment, mode: PamMode) {
        lock(&self.area).set_mode(seg.index, mode);
        let mut mapped = lock(&self.mapped);
        let Some(was) = mapped.get_mut(seg.index) else {
            return;
        };
        if *was && self.apply(self.slot(seg, 0, 0)) {
            *was = false;
        }
        let ram = self.ram_host + (seg.start - BIOS_AREA_START);
        let (host, flags) = match mode {
            PamMode::ReadWrite => (ram, 0),
            PamMode::ReadOnly => (ram, KVM_MEM_READONLY),
            PamMode::Off | PamMode::WriteOnly if seg.start >= ROM_ALIAS_START => (
                self.rom_host + (seg.start - ROM_ALIAS_START),
                KVM_MEM_READONLY,
            ),
            PamMode::Off | PamMode::WriteOnly => (0, 0),
        };
        if host != 0 && !*was {
            *was = self.apply(self.slot(seg, host, flags));
        }
    }
}
