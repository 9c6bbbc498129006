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

/// One KVM slot of the BIOS area: a run of adjacent segments mapped alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: u64,
    len: u64,
    host: u64,
    flags: u32,
}

/// The BIOS area's KVM slots.
///
/// A PAM register write changes several segments at once (SeaBIOS rewrites all seven
/// registers to shadow itself), and every KVM slot change waits for the host kernel (tens
/// of milliseconds when nested), so segments collect in `modes` and [`apply`] maps the
/// area as the fewest runs of adjacent segments mapped alike, changing only the slots
/// that differ.
///
/// [`apply`]: ShadowMemory::apply
pub struct KvmShadow {
    vm: Arc<VmFd>,
    area: Arc<Mutex<ShadowArea>>,
    /// Host address of guest 0xc0000 (the shadow RAM).
    ram_host: u64,
    /// Host address of the ROM byte shown at 0xe0000.
    rom_host: u64,
    /// The ROM, kept alive while a slot maps it.
    _rom: Arc<FbMemory>,
    state: Mutex<State>,
}

struct State {
    modes: [PamMode; PAM_SEGMENTS],
    /// The slots mapped now, by slot number offset from [`SHADOW_SLOT_BASE`].
    slots: [Option<Run>; PAM_SEGMENTS],
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
            state: Mutex::new(State {
                modes: [PamMode::Off; PAM_SEGMENTS],
                slots: [None; PAM_SEGMENTS],
            }),
        };
        shadow.apply();
        Ok(shadow)
    }

    /// Where segment `seg` in `mode` is mapped: (host address, flags), or None.
    fn mapping(&self, seg: PamSegment, mode: PamMode) -> Option<(u64, u32)> {
        let ram = self.ram_host + (seg.start - BIOS_AREA_START);
        match mode {
            PamMode::ReadWrite => Some((ram, 0)),
            PamMode::ReadOnly => Some((ram, KVM_MEM_READONLY)),
            PamMode::Off | PamMode::WriteOnly if seg.start >= ROM_ALIAS_START => Some((
                self.rom_host + (seg.start - ROM_ALIAS_START),
                KVM_MEM_READONLY,
            )),
            PamMode::Off | PamMode::WriteOnly => None,
        }
    }

    /// The runs `modes` asks for, in address order.
    fn runs(&self, modes: &[PamMode; PAM_SEGMENTS]) -> Vec<Run> {
        let mut segs = pam_segments();
        segs.sort_by_key(|s| s.start);
        let mut runs: Vec<Run> = Vec::new();
        for seg in segs {
            let Some(mode) = modes.get(seg.index) else {
                continue;
            };
            let Some((host, flags)) = self.mapping(seg, *mode) else {
                continue;
            };
            match runs.last_mut() {
                Some(r)
                    if r.flags == flags
                        && r.start + r.len == seg.start
                        && r.host + r.len == host =>
                {
                    r.len += seg.len
                }
                _ => runs.push(Run {
                    start: seg.start,
                    len: seg.len,
                    host,
                    flags,
                }),
            }
        }
        runs
    }

    fn region(&self, index: usize, run: Option<Run>) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot: SHADOW_SLOT_BASE + index as u32,
            flags: run.map_or(0, |r| r.flags),
            guest_phys_addr: run.map_or(0, |r| r.start),
            memory_size: run.map_or(0, |r| r.len),
            userspace_addr: run.map_or(0, |r| r.host),
        }
    }

    fn set_region(&self, region: kvm_userspace_memory_region) -> bool {
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
        if let Some(m) = lock(&self.state).modes.get_mut(seg.index) {
            *m = mode;
        }
    }

    fn apply(&self) {
        let mut state = lock(&self.state);
        let wanted = self.runs(&state.modes);
        // Slots whose run is no longer wanted go first (slots may not overlap).
        for index in 0..PAM_SEGMENTS {
            if let Some(run) = state.slots[index]
                && !wanted.contains(&run)
                && self.set_region(self.region(index, None))
            {
                state.slots[index] = None;
            }
        }
        for run in wanted {
            if state.slots.contains(&Some(run)) {
                continue;
            }
            let Some(index) = state.slots.iter().position(Option::is_none) else {
                log::error!("BIOS area: no free slot for {run:x?}");
                continue;
            };
            if self.set_region(self.region(index, Some(run))) {
                state.slots[index] = Some(run);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A KvmShadow on a real VM (this machine has /dev/kvm), 1 MiB of RAM and a 256 KiB ROM.
    fn shadow() -> Option<KvmShadow> {
        let kvm = kvm_ioctls::Kvm::new().ok()?;
        let vm = Arc::new(kvm.create_vm().ok()?);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0xc_0000), 0x4_0000)]).ok()?;
        let rom = Arc::new(FbMemory::new(0x4_0000).ok()?);
        let area = Arc::new(Mutex::new(ShadowArea::new(
            mem.clone(),
            rom.clone(),
            0x2_0000,
        )));
        KvmShadow::new(vm, &mem, area, rom, 0x2_0000).ok()
    }

    fn runs(s: &KvmShadow) -> Vec<(u64, u64, u32)> {
        let mut v: Vec<_> = lock(&s.state)
            .slots
            .iter()
            .flatten()
            .map(|r| (r.start, r.len, r.flags))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn adjacent_segments_mapped_alike_share_one_slot() {
        let Some(s) = shadow() else {
            panic!("/dev/kvm is needed for this test (the kvm group grants it)");
        };
        // After reset: the ROM alias 0xe0000..0x100000 as one read-only slot.
        assert_eq!(runs(&s), [(0xe_0000, 0x2_0000, KVM_MEM_READONLY)]);
        // SeaBIOS shadows itself: everything read-write RAM, one slot.
        for seg in pam_segments() {
            s.set_segment(seg, PamMode::ReadWrite);
        }
        s.apply();
        assert_eq!(runs(&s), [(0xc_0000, 0x4_0000, 0)]);
        // Then locks 0xc0000..0xcffff and 0xf0000 read-only: three runs.
        for seg in pam_segments() {
            if seg.start < 0xd_0000 || seg.start >= 0xf_0000 {
                s.set_segment(seg, PamMode::ReadOnly);
            }
        }
        s.apply();
        assert_eq!(
            runs(&s),
            [
                (0xc_0000, 0x1_0000, KVM_MEM_READONLY),
                (0xd_0000, 0x2_0000, 0),
                (0xf_0000, 0x1_0000, KVM_MEM_READONLY)
            ]
        );
        assert_eq!(lock(&s.area).mode_at(0xc_1000), Some(PamMode::ReadOnly));
    }
}
