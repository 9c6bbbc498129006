//! The Q35 host bridge (Intel 82P35 MCH, 8086:29C0) at 00:00.0.
//!
//! Firmware identifies the platform by this function (OVMF's PlatformPei accepts 0x29C0,
//! SeaBIOS's shadow.c finds PAM0 at 0x90 by it) and programs three things through its
//! configuration space (Intel 3 Series Chipset datasheet 316966, §5.1; edk2
//! `OvmfPkg/Include/IndustryStandard/Q35MchIch9.h`):
//!
//! - **PCIEXBAR** (0x60, 64-bit): where the ECAM (MMCONFIG) window sits and how large it is.
//!   SeaBIOS programs 0xB0000000, OVMF 0xE0000000, so the window moves; every change of the
//!   decoded window goes to [`EcamWindow::set`].
//! - **PAM0..PAM6** (0x90..0x96): how each of the 13 segments of 0xC0000-0xFFFFF decodes
//!   (firmware/PCI, RAM read-only, write-only, or RAM). Every segment whose mode changes
//!   goes to [`ShadowMemory::set_segment`]. SeaBIOS writes 0x30/0x33 to copy itself into
//!   shadow RAM and 0x10/0x11 to write-protect it again.
//! - **SMRAM/ESMRAMC/EXT_TSEG_MB** (0x9D, 0x9E, 0x50): the SMM memory controls OVMF's SMM
//!   builds use, stored with their write masks and lock (SMRAM.D_LCK freezes both and
//!   clears D_OPEN). On a machine with SMM (one given an [`SmramMapper`]) every change of
//!   what they show ([`super::smram::smram_view`]) goes to [`SmramMapper::set`]; without
//!   one they have no effect on memory.
//!
//! TOLUD (0xB0) is read-only and says where low RAM ends; every other device-specific byte
//! is plain storage. Data flow: configuration write -> [`ChipsetConfig`] (masked merge) ->
//! [`ChipsetFunction::after_write`] -> the trait calls, made from inside the configuration access
//! (see the traits for what that means to an implementation).

use std::ops::Range;
use std::sync::Arc;

use super::regs::{ChipsetConfig, ChipsetConfigState, ChipsetFunction, touches};
use super::smram::{SmramMapper, SmramView, smram_view};
use super::{SUBCLASS_HOST_BRIDGE, bridge_ids};

/// Device id of the 82P35 MCH, the Q35 variant without integrated graphics (QEMU's choice).
pub const DEVICE_ID: u16 = 0x29c0;
/// Revision QEMU's MCH reports (`MCH_HOST_BRIDGE_REVISION_DEFAULT`).
const REVISION: u8 = 0;

/// EXT_TSEG_MB: extended TSEG size in MiB (a QEMU/OVMF register, 16-bit).
pub const EXT_TSEG_MB: usize = 0x50;
/// Writing this to EXT_TSEG_MB asks for the size; it then reads back [`EXT_TSEG_MB_SIZE`].
pub const EXT_TSEG_MB_QUERY: u16 = 0xffff;
/// Extended TSEG size Hospes reports, in MiB.
pub const EXT_TSEG_MB_SIZE: u16 = 16;

/// PCIEXBAR: PCI Express register range base address (64-bit).
pub const PCIEXBAR: usize = 0x60;
const PCIEXBAR_LEN: usize = 8;
/// Power-on value: QEMU's default base, decoding off.
pub const PCIEXBAR_DEFAULT: u64 = 0xb000_0000;
/// PCIEXBAR bit 0: decoding enabled.
pub const PCIEXBAR_EN: u64 = 1;
/// PCIEXBAR bits 2:1: length (0 = 256 MiB, 1 = 128 MiB, 2 = 64 MiB, 3 reserved).
const PCIEXBAR_LENGTH_SHIFT: u32 = 1;
const PCIEXBAR_LENGTH_MASK: u64 = 3;
/// Base address bits a guest can set (38:26; the length decides which low ones count).
const PCIEXBAR_ADDRESS_MASK: u64 = ((1 << 39) - 1) & !((1 << 26) - 1);
const PCIEXBAR_WMASK: u64 = PCIEXBAR_ADDRESS_MASK | 0b111;

/// PAM0: attributes of 0xF0000-0xFFFFF in bits 5:4; PAM1..PAM6 follow, two 16 KiB
/// segments each (low nibble = lower segment).
pub const PAM0: usize = 0x90;
const PAM_REGISTERS: usize = 7;
/// Read enable / write enable bits of one PAM nibble.
const PAM_RE: u8 = 0x1;
const PAM_WE: u8 = 0x2;
/// PAM0's low nibble is reserved.
const PAM0_WMASK: u8 = 0x30;
const PAM_WMASK: u8 = 0x33;

/// Fixed SMBASE control (QEMU's SMRAM-at-default-SMBASE negotiation). Plain storage: a
/// query (0xFF) reads back 0xFF, which OVMF takes as "not offered".
pub const F_SMBASE: usize = 0x9c;

/// SMRAM: system management RAM control.
pub const SMRAM: usize = 0x9d;
/// Power-on value: C_BASE_SEG hard-wired to 010 (SMRAM at 0xA0000).
pub const SMRAM_DEFAULT: u8 = 0x02;
/// SMRAM.D_LCK: once set, SMRAM and ESMRAMC are frozen until reset (D_CLS excepted).
pub use super::smram::SMRAM_D_LCK;
use super::smram::{SMRAM_D_CLS, SMRAM_D_OPEN, SMRAM_G_SMRAME};
const SMRAM_WMASK: u8 = SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME;
const SMRAM_WMASK_LOCKED: u8 = SMRAM_D_CLS;

/// ESMRAMC: extended SMRAM control.
pub const ESMRAMC: usize = 0x9e;
/// Power-on value: SM_CACHE, SM_L1, SM_L2 read as 1.
pub const ESMRAMC_DEFAULT: u8 = 0x38;
/// H_SMRAME, TSEG_SZ and T_EN are writable until D_LCK.
const ESMRAMC_WMASK: u8 = 0x87;

/// TOLUD: top of low usable DRAM, bits 15:4 in MiB. Read-only here: set from the RAM layout.
pub const TOLUD: usize = 0xb0;
const TOLUD_MB_SHIFT: u32 = 4;
/// Largest value TOLUD's 12-bit MiB field holds.
const TOLUD_MAX_MB: u64 = 0xfff;

/// Where the ECAM window is decoded: `len` bytes (1 MiB per bus) from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamRange {
    pub base: u64,
    pub len: u64,
}

impl EcamRange {
    /// Buses the window covers (256, 128 or 64).
    pub fn buses(&self) -> u64 {
        self.len >> 20
    }
}

/// Places the ECAM window on the machine's MMIO bus. The helper implements it.
///
/// Called from inside a configuration write (with the PCI root and the host bridge locked
/// and, when the write came through ECAM itself, the MMIO bus read-locked), once for every
/// change of the decoded window: `None` takes it away, `Some` places it (a move is a single
/// call with the new range). An implementation must not take the MMIO bus's write lock
/// inline; it can keep ECAM on a bus of its own behind a forwarding window (as
/// [`crate::pci::root::PciMmioWindow`] does for BARs) or apply the change after the exit.
/// The guest picks the address: a window over RAM or another device is the guest's
/// mistake, which the implementation logs and refuses.
pub trait EcamWindow: Send + Sync {
    fn set(&self, window: Option<EcamRange>);
}

/// How one PAM segment decodes (datasheet §5.1.10; QEMU `hw/pci-host/pam.c`). "Firmware"
/// is whatever sits there when RAM does not: for 0xE0000-0xFFFFF the alias of the top of the
/// BIOS image below 4 GiB, for 0xC0000-0xDFFFF nothing (reads all-ones) unless the helper
/// puts option ROMs there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PamMode {
    /// Reads come from the firmware/PCI, writes go to the firmware/PCI (dropped for a ROM);
    /// RAM is hidden. The power-on state.
    Off,
    /// Reads come from RAM; writes are dropped (go to PCI, where nothing takes them).
    /// Firmware write-protects its shadow copy this way.
    ReadOnly,
    /// Reads come from the firmware/PCI; writes go to RAM. Firmware copies a ROM into the
    /// RAM beneath it this way.
    WriteOnly,
    /// Reads and writes go to RAM.
    ReadWrite,
}

impl PamMode {
    fn from_bits(bits: u8) -> Self {
        match (bits & PAM_RE != 0, bits & PAM_WE != 0) {
            (false, false) => Self::Off,
            (true, false) => Self::ReadOnly,
            (false, true) => Self::WriteOnly,
            (true, true) => Self::ReadWrite,
        }
    }

    /// Whether reads of the segment return RAM.
    pub fn reads_ram(self) -> bool {
        matches!(self, Self::ReadOnly | Self::ReadWrite)
    }

    /// Whether writes to the segment reach RAM.
    pub fn writes_ram(self) -> bool {
        matches!(self, Self::WriteOnly | Self::ReadWrite)
    }
}

/// One of the 13 PAM segments: index 0 is 0xF0000-0xFFFFF (64 KiB, PAM0), 1..=12 are the
/// 16 KiB segments from 0xC0000 to 0xEFFFF (PAM1 low nibble, PAM1 high, PAM2 low, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PamSegment {
    pub index: usize,
    pub start: u64,
    pub len: u64,
}

/// Start and length of the BIOS area PAM0 controls.
const PAM_BIOS_START: u64 = 0xf_0000;
const PAM_BIOS_LEN: u64 = 0x1_0000;
/// Start and length of each expansion/extended BIOS segment PAM1..PAM6 control.
const PAM_EXPANSION_START: u64 = 0xc_0000;
const PAM_EXPANSION_LEN: u64 = 0x4000;
/// Number of PAM segments.
pub const PAM_SEGMENTS: usize = 13;

impl PamSegment {
    fn new(index: usize) -> Self {
        match index.checked_sub(1) {
            None => Self {
                index,
                start: PAM_BIOS_START,
                len: PAM_BIOS_LEN,
            },
            Some(i) => Self {
                index,
                start: PAM_EXPANSION_START + i as u64 * PAM_EXPANSION_LEN,
                len: PAM_EXPANSION_LEN,
            },
        }
    }

    /// The PAM register holding this segment's bits and their shift in it.
    fn register(self) -> (usize, u32) {
        match self.index {
            0 => (PAM0, 4),
            i => (PAM0 + i.div_ceil(2), if i % 2 == 1 { 0 } else { 4 }),
        }
    }
}

/// The 13 PAM segments in index order (0xF0000 first, then 0xC0000 upwards).
pub fn pam_segments() -> [PamSegment; PAM_SEGMENTS] {
    std::array::from_fn(PamSegment::new)
}

/// Moves and remaps the legacy BIOS/expansion ROM area 0xC0000-0xFFFFF. The helper
/// implements it on KVM memory slots.
///
/// Called from inside a configuration write (PCI root and host bridge locked), once for
/// every segment whose [`PamMode`] changed, lowest index first, then [`apply`] once, so
/// the helper may remap all the changed segments of one write together. At power-on and
/// after [`Q35Host::reset`] every segment is [`PamMode::Off`]; the helper maps that state
/// itself when it builds the machine.
///
/// [`apply`]: ShadowMemory::apply
pub trait ShadowMemory: Send + Sync {
    fn set_segment(&self, segment: PamSegment, mode: PamMode);
    /// The segments set since the last call are complete: make them take effect.
    fn apply(&self) {}
}

/// The MCH at 00:00.0.
pub struct Q35Host {
    config: ChipsetConfig,
    low_ram_end: u64,
    ecam: Arc<dyn EcamWindow>,
    shadow: Arc<dyn ShadowMemory>,
    /// The window and segment modes as last reported to the traits.
    ecam_now: Option<EcamRange>,
    pam_now: [PamMode; PAM_SEGMENTS],
    /// Where SMRAM changes go, on a machine with SMM.
    smram: Option<Arc<dyn SmramMapper>>,
    /// The SMRAM view as last reported.
    smram_now: SmramView,
}

/// Decodes a PCIEXBAR value into the window it enables.
fn decode_pciexbar(value: u64) -> Option<EcamRange> {
    if value & PCIEXBAR_EN == 0 {
        return None;
    }
    let len: u64 = match (value >> PCIEXBAR_LENGTH_SHIFT) & PCIEXBAR_LENGTH_MASK {
        0 => 256 << 20,
        1 => 128 << 20,
        2 => 64 << 20,
        _ => {
            crate::guest_warn!("q35: PCIEXBAR length field is reserved; ECAM off");
            return None;
        }
    };
    Some(EcamRange {
        base: value & PCIEXBAR_ADDRESS_MASK & !(len - 1),
        len,
    })
}

impl Q35Host {
    /// A host bridge in its power-on state for a machine whose RAM below 4 GiB ends at
    /// `low_ram_end` (TOLUD). No trait is called until the guest programs a register.
    pub fn new(low_ram_end: u64, ecam: Arc<dyn EcamWindow>, shadow: Arc<dyn ShadowMemory>) -> Self {
        Self {
            config: power_on_config(low_ram_end),
            low_ram_end,
            ecam,
            shadow,
            ecam_now: None,
            pam_now: [PamMode::Off; PAM_SEGMENTS],
            smram: None,
            smram_now: SmramView::default(),
        }
    }

    /// Makes the SMRAM registers take effect through `mapper` (a machine with SMM). The
    /// mapper starts from [`SmramView::default`], the power-on view.
    pub fn set_smram_mapper(&mut self, mapper: Arc<dyn SmramMapper>) {
        self.smram = Some(mapper);
        self.smram_now = SmramView::default();
        self.sync_smram();
    }

    /// What the SMRAM registers show now.
    pub fn smram_view(&self) -> SmramView {
        smram_view(
            self.config.regs.byte(SMRAM),
            self.config.regs.byte(ESMRAMC),
            EXT_TSEG_MB_SIZE,
        )
    }

    /// Back to power-on values (platform reset): the ECAM window goes away and every PAM
    /// segment returns to [`PamMode::Off`], each reported to its trait if it was otherwise.
    pub fn reset(&mut self) {
        self.config = power_on_config(self.low_ram_end);
        self.sync_ecam();
        self.sync_pam();
        self.sync_smram();
    }

    /// The ECAM window as decoded now.
    pub fn ecam_window(&self) -> Option<EcamRange> {
        self.ecam_now
    }

    /// The mode of PAM segment `segment` now.
    pub fn pam_mode(&self, segment: PamSegment) -> PamMode {
        self.pam_now
            .get(segment.index)
            .copied()
            .unwrap_or(PamMode::Off)
    }

    /// Whether the guest has locked SMRAM (SMRAM.D_LCK).
    pub fn smram_locked(&self) -> bool {
        self.config.regs.byte(SMRAM) & SMRAM_D_LCK != 0
    }

    fn sync_ecam(&mut self) {
        let window = decode_pciexbar(self.config.regs.qword(PCIEXBAR));
        if window != self.ecam_now {
            self.ecam_now = window;
            self.ecam.set(window);
        }
    }

    fn sync_smram(&mut self) {
        let view = self.smram_view();
        if let Some(mapper) = &self.smram
            && view != self.smram_now
        {
            self.smram_now = view;
            mapper.set(view);
        }
    }

    fn sync_pam(&mut self) {
        let mut changed = false;
        for (segment, now) in pam_segments().into_iter().zip(self.pam_now.iter_mut()) {
            let (reg, shift) = segment.register();
            let mode = PamMode::from_bits(self.config.regs.byte(reg) >> shift);
            if mode != *now {
                *now = mode;
                self.shadow.set_segment(segment, mode);
                changed = true;
            }
        }
        if changed {
            self.shadow.apply();
        }
    }
}

/// Configuration space at power-on for a machine with low RAM ending at `low_ram_end`.
fn power_on_config(low_ram_end: u64) -> ChipsetConfig {
    let mut c = ChipsetConfig::new(bridge_ids(DEVICE_ID, REVISION, SUBCLASS_HOST_BRIDGE), false);
    let r = &mut c.regs;
    r.set(EXT_TSEG_MB, &EXT_TSEG_MB_SIZE.to_le_bytes());
    r.set(PCIEXBAR, &PCIEXBAR_DEFAULT.to_le_bytes());
    r.set_wmask(PCIEXBAR, &PCIEXBAR_WMASK.to_le_bytes());
    r.set_wmask(PAM0, &[PAM0_WMASK]);
    r.set_wmask(PAM0 + 1, &[PAM_WMASK; PAM_REGISTERS - 1]);
    r.set(SMRAM, &[SMRAM_DEFAULT]);
    r.set_wmask(SMRAM, &[SMRAM_WMASK]);
    r.set(ESMRAMC, &[ESMRAMC_DEFAULT]);
    r.set_wmask(ESMRAMC, &[ESMRAMC_WMASK]);
    let tolud_mb = (low_ram_end >> 20).min(TOLUD_MAX_MB) as u16;
    r.set(TOLUD, &(tolud_mb << TOLUD_MB_SHIFT).to_le_bytes());
    r.set_wmask(TOLUD, &[0, 0]);
    c
}

impl ChipsetFunction for Q35Host {
    fn chipset_config(&self) -> &ChipsetConfig {
        &self.config
    }

    fn chipset_config_mut(&mut self) -> &mut ChipsetConfig {
        &mut self.config
    }

    fn after_write(&mut self, written: &Range<usize>) {
        if touches(written, EXT_TSEG_MB, 2)
            && self.config.regs.word(EXT_TSEG_MB) == EXT_TSEG_MB_QUERY
        {
            self.config
                .regs
                .set(EXT_TSEG_MB, &EXT_TSEG_MB_SIZE.to_le_bytes());
        }
        if touches(written, SMRAM, 1) && self.smram_locked() {
            let smram = self.config.regs.byte(SMRAM) & !SMRAM_D_OPEN;
            self.config.regs.set(SMRAM, &[smram]);
            self.config.regs.set_wmask(SMRAM, &[SMRAM_WMASK_LOCKED]);
            self.config.regs.set_wmask(ESMRAMC, &[0]);
        }
        if touches(written, SMRAM, 2) {
            self.sync_smram();
        }
        if touches(written, PCIEXBAR, PCIEXBAR_LEN) {
            self.sync_ecam();
        }
        if touches(written, PAM0, PAM_REGISTERS) {
            self.sync_pam();
        }
    }
}

/// The name a saved MCH goes by in errors.
const STATE_NAME: &str = "q35/mch";

/// Saved state: the configuration space. Everything else the MCH holds (the ECAM window,
/// the PAM modes, the SMRAM view as last reported) follows from it.
impl crate::state::Snapshot for Q35Host {
    fn save_state(&mut self) -> Result<Vec<u8>, crate::state::StateError> {
        crate::state::encode(STATE_NAME, &self.config.save())
    }

    /// Restores the registers, then reports what they decode to through the same
    /// [`EcamWindow`], [`ShadowMemory`] and [`SmramMapper`] calls a guest's writes make:
    /// the freshly built machine shows the power-on state, so every window, segment and
    /// SMRAM range the saved guest had changed is set up again.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::state::StateError> {
        let saved: ChipsetConfigState = crate::state::decode(STATE_NAME, state)?;
        self.config.restore(STATE_NAME, &saved)?;
        self.sync_smram();
        self.sync_ecam();
        self.sync_pam();
        Ok(())
    }
}

/// The PCI root's movable ECAM window follows PCIEXBAR.
impl EcamWindow for crate::pci::root::EcamOverlay {
    fn set(&self, window: Option<EcamRange>) {
        let range = window.map(|w| (w.base, w.len));
        if !crate::pci::root::EcamOverlay::set(self, range) {
            crate::guest_warn!(
                "PCIEXBAR puts the ECAM window at {range:x?}, outside the PCI window: not decoded"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::bus::Bus;
    use crate::chipset::testing::{config_bus, read, write};

    #[derive(Default)]
    struct Recorder {
        ecam: Mutex<Vec<Option<EcamRange>>>,
        pam: Mutex<Vec<(PamSegment, PamMode)>>,
        applies: Mutex<usize>,
    }

    impl EcamWindow for Recorder {
        fn set(&self, window: Option<EcamRange>) {
            self.ecam.lock().unwrap().push(window);
        }
    }

    impl ShadowMemory for Recorder {
        fn set_segment(&self, segment: PamSegment, mode: PamMode) {
            self.pam.lock().unwrap().push((segment, mode));
        }
        fn apply(&self) {
            *self.applies.lock().unwrap() += 1;
        }
    }

    impl Recorder {
        fn take_ecam(&self) -> Vec<Option<EcamRange>> {
            std::mem::take(&mut *self.ecam.lock().unwrap())
        }
        fn take_pam(&self) -> Vec<(usize, PamMode)> {
            std::mem::take(&mut *self.pam.lock().unwrap())
                .into_iter()
                .map(|(s, m)| (s.index, m))
                .collect()
        }
    }

    const LOW_RAM_END: u64 = 0x8000_0000;

    fn setup() -> (Bus, Arc<Mutex<Q35Host>>, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let host = Arc::new(Mutex::new(Q35Host::new(
            LOW_RAM_END,
            rec.clone(),
            rec.clone(),
        )));
        (config_bus(0, host.clone()), host, rec)
    }

    fn window(base: u64, len: u64) -> Option<EcamRange> {
        Some(EcamRange { base, len })
    }

    #[test]
    fn identifies_as_the_q35_host_bridge() {
        let (pio, _, _) = setup();
        assert_eq!(read(&pio, 0, 0x00, 4), 0x29c0_8086);
        assert_eq!(read(&pio, 0, 0x08, 4), 0x0600_0000);
        assert_eq!(read(&pio, 0, 0x0e, 1), 0x00, "single-function header");
        assert_eq!(read(&pio, 0, 0x2c, 4), 0x1100_1af4);
        // No BARs: sizing probes read zero.
        write(&pio, 0, 0x10, 4, 0xffff_ffff);
        assert_eq!(read(&pio, 0, 0x10, 4), 0);
    }

    #[test]
    fn ovmf_pciexbar_programming_places_a_256_mib_window() {
        let (pio, host, rec) = setup();
        assert_eq!(read(&pio, 0, 0x60, 4), 0xb000_0000, "power-on base, off");
        // OVMF: high dword first, then the low dword with the enable bit.
        write(&pio, 0, 0x64, 4, 0);
        assert!(rec.take_ecam().is_empty(), "still off: nothing to report");
        write(&pio, 0, 0x60, 4, 0xe000_0000 | 1);
        assert_eq!(rec.take_ecam(), [window(0xe000_0000, 256 << 20)]);
        assert_eq!(read(&pio, 0, 0x60, 4), 0xe000_0001);
        assert_eq!(read(&pio, 0, 0x64, 4), 0);
        assert_eq!(
            host.lock().unwrap().ecam_window(),
            window(0xe000_0000, 256 << 20)
        );
        // Writing the same value again is no change.
        write(&pio, 0, 0x60, 4, 0xe000_0001);
        assert!(rec.take_ecam().is_empty());
    }

    #[test]
    fn seabios_pciexbar_programming_moves_the_window_through_off() {
        let (pio, _, rec) = setup();
        write(&pio, 0, 0x60, 4, 0xe000_0001);
        rec.take_ecam();
        // SeaBIOS mch_mmconfig_setup: disable, upper half, then base | enable.
        write(&pio, 0, 0x60, 4, 0);
        write(&pio, 0, 0x64, 4, 0);
        write(&pio, 0, 0x60, 4, 0xb000_0001);
        assert_eq!(rec.take_ecam(), [None, window(0xb000_0000, 256 << 20)]);
    }

    #[test]
    fn pciexbar_length_field_sets_size_and_alignment() {
        let (pio, _, rec) = setup();
        // 128 MiB: base bit 27 counts; 64 MiB: bit 26 too.
        write(&pio, 0, 0x60, 4, 0xe800_0000 | 0b011);
        write(&pio, 0, 0x60, 4, 0xe400_0000 | 0b101);
        // 256 MiB drops bits 27:26.
        write(&pio, 0, 0x60, 4, 0xec00_0000 | 0b001);
        // High dword: a window above 4 GiB.
        write(&pio, 0, 0x64, 4, 0x1);
        assert_eq!(
            rec.take_ecam(),
            [
                window(0xe800_0000, 128 << 20),
                window(0xe400_0000, 64 << 20),
                window(0xe000_0000, 256 << 20),
                window(0x1_e000_0000, 256 << 20),
            ]
        );
        // The reserved length turns decoding off; low bits outside the fields stay zero.
        write(&pio, 0, 0x60, 4, 0xe000_0000 | 0b111 | 0x00ff_fff8);
        assert_eq!(rec.take_ecam(), [None]);
        assert_eq!(read(&pio, 0, 0x60, 4), 0xe000_0007);
        // Bits above 38 do not stick.
        write(&pio, 0, 0x64, 4, 0xffff_ffff);
        assert_eq!(read(&pio, 0, 0x64, 4), 0x7f);
    }

    #[test]
    fn seabios_shadowing_sequence_remaps_every_segment() {
        let (pio, host, rec) = setup();
        // make_bios_writable: read both PAM dwords, PAM0 bit 4 clear means "copy the BIOS".
        let lo = read(&pio, 0, 0x90, 4);
        let hi = read(&pio, 0, 0x94, 4);
        assert_eq!((lo, hi), (0, 0));
        assert_eq!(lo & 0x10, 0);
        write(&pio, 0, 0x90, 4, 0x3333_3330);
        write(&pio, 0, 0x94, 4, (hi & 0xff00_0000) | 0x0033_3333);
        let mut expected: Vec<(usize, PamMode)> =
            (0..13).map(|i| (i, PamMode::ReadWrite)).collect();
        assert_eq!(rec.take_pam(), expected);
        assert_eq!(
            *rec.applies.lock().unwrap(),
            2,
            "one apply per register write"
        );
        assert_eq!(
            read(&pio, 0, 0x90, 1) & 0x10,
            0x10,
            "RAM present after writing"
        );
        // make_bios_readonly: 0xF0000 and the first four ROM segments read-only.
        write(&pio, 0, 0x90, 4, 0x3311_1110);
        expected = vec![
            (0, PamMode::ReadOnly),
            (1, PamMode::ReadOnly),
            (2, PamMode::ReadOnly),
            (3, PamMode::ReadOnly),
            (4, PamMode::ReadOnly),
        ];
        assert_eq!(rec.take_pam(), expected);
        assert_eq!(*rec.applies.lock().unwrap(), 3);
        write(&pio, 0, 0x90, 4, 0x3311_1110);
        assert_eq!(
            *rec.applies.lock().unwrap(),
            3,
            "nothing changed, nothing applied"
        );
        let seg = pam_segments()[3];
        assert_eq!(host.lock().unwrap().pam_mode(seg), PamMode::ReadOnly);
    }

    #[test]
    fn pam_nibbles_map_to_the_right_segments_and_modes() {
        let (pio, _, rec) = setup();
        // PAM3 = 0x21: segment 5 (0xD0000) read-only, segment 6 (0xD4000) write-only.
        write(&pio, 0, 0x93, 1, 0x21);
        let calls = std::mem::take(&mut *rec.pam.lock().unwrap());
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].0.start, calls[0].1),
            (0xd_0000, PamMode::ReadOnly)
        );
        assert_eq!(
            (calls[1].0.start, calls[1].1),
            (0xd_4000, PamMode::WriteOnly)
        );
        // PAM0's low nibble is reserved and reads zero.
        write(&pio, 0, 0x90, 1, 0xff);
        assert_eq!(read(&pio, 0, 0x90, 1), 0x30);
        assert_eq!(rec.take_pam(), [(0, PamMode::ReadWrite)]);
        // Reserved bits of PAM1..6 do not stick.
        write(&pio, 0, 0x96, 1, 0xcc);
        assert_eq!(read(&pio, 0, 0x96, 1), 0);
        assert!(rec.take_pam().is_empty());
    }

    #[test]
    fn pam_segments_cover_the_legacy_area_once() {
        let segs = pam_segments();
        assert_eq!(segs[0].start, 0xf_0000);
        assert_eq!(segs[0].len, 0x1_0000);
        let mut covered: Vec<(u64, u64)> = segs.iter().map(|s| (s.start, s.len)).collect();
        covered.sort();
        let mut at = 0xc_0000;
        for (start, len) in covered {
            assert_eq!(start, at);
            at += len;
        }
        assert_eq!(at, 0x10_0000);
        assert!(segs.iter().enumerate().all(|(i, s)| s.index == i));
        assert!(PamMode::ReadOnly.reads_ram() && !PamMode::ReadOnly.writes_ram());
        assert!(!PamMode::WriteOnly.reads_ram() && PamMode::WriteOnly.writes_ram());
    }

    #[test]
    fn ext_tseg_query_reads_back_the_size() {
        let (pio, _, _) = setup();
        assert_eq!(read(&pio, 0, 0x50, 2), 16);
        write(&pio, 0, 0x50, 2, 0xffff);
        assert_eq!(read(&pio, 0, 0x50, 2), 16);
        // Byte by byte works too: the query completes with the second byte.
        write(&pio, 0, 0x50, 1, 0xff);
        write(&pio, 0, 0x51, 1, 0xff);
        assert_eq!(read(&pio, 0, 0x50, 2), 16);
    }

    #[test]
    fn smram_lock_freezes_smram_and_esmramc() {
        let (pio, host, _) = setup();
        assert_eq!(read(&pio, 0, 0x9d, 1), 0x02);
        assert_eq!(read(&pio, 0, 0x9e, 1), 0x38);
        // C_BASE_SEG and reserved bits are read-only.
        write(&pio, 0, 0x9d, 1, u32::from(0x87 | SMRAM_D_OPEN));
        assert_eq!(read(&pio, 0, 0x9d, 1), 0x02 | u32::from(SMRAM_D_OPEN));
        write(&pio, 0, 0x9e, 1, 0xff);
        assert_eq!(read(&pio, 0, 0x9e, 1), 0xbf);
        // D_LCK closes D_OPEN and freezes everything but D_CLS.
        write(
            &pio,
            0,
            0x9d,
            1,
            u32::from(SMRAM_D_LCK | SMRAM_D_OPEN | SMRAM_G_SMRAME),
        );
        assert!(host.lock().unwrap().smram_locked());
        assert_eq!(read(&pio, 0, 0x9d, 1), 0x1a);
        write(&pio, 0, 0x9d, 1, u32::from(SMRAM_D_OPEN | SMRAM_D_CLS));
        assert_eq!(read(&pio, 0, 0x9d, 1), 0x3a);
        write(&pio, 0, 0x9e, 1, 0);
        assert_eq!(read(&pio, 0, 0x9e, 1), 0xbf);
        host.lock().unwrap().reset();
        assert!(!host.lock().unwrap().smram_locked());
        write(&pio, 0, 0x9e, 1, 0);
        assert_eq!(read(&pio, 0, 0x9e, 1), 0x38, "unlocked again after reset");
    }

    #[derive(Default)]
    struct SmramRecorder(Mutex<Vec<SmramView>>);

    impl SmramMapper for SmramRecorder {
        fn set(&self, view: SmramView) {
            self.0.lock().unwrap().push(view);
        }
    }

    impl SmramRecorder {
        fn take(&self) -> Vec<SmramView> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    #[test]
    fn ovmf_tseg_setup_hides_tseg_and_the_lock_keeps_it_hidden() {
        let (pio, host, _) = setup();
        let smram = Arc::new(SmramRecorder::default());
        host.lock().unwrap().set_smram_mapper(smram.clone());
        assert!(smram.take().is_empty(), "power-on view: nothing to report");
        // OVMF's SmmAccessPei: ask for the extended TSEG size, pick it, enable TSEG...
        write(&pio, 0, 0x50, 2, 0xffff);
        assert_eq!(read(&pio, 0, 0x50, 2), 16);
        write(&pio, 0, 0x9e, 1, 0x38 | 0b110 | 1);
        assert!(
            smram.take().is_empty(),
            "T_EN without G_SMRAME hides nothing"
        );
        // ... then turn SMRAM on (legacy window closed): TSEG goes to SMM.
        write(&pio, 0, 0x9d, 1, u32::from(0x02 | SMRAM_G_SMRAME));
        let locked_view = SmramView {
            aseg_open: false,
            aseg_smm: true,
            tseg_len: 16 << 20,
        };
        assert_eq!(smram.take(), [locked_view]);
        // The same value again changes nothing and is not reported.
        write(&pio, 0, 0x9d, 1, u32::from(0x02 | SMRAM_G_SMRAME));
        assert!(smram.take().is_empty());
        // D_LCK: afterwards nothing a guest writes can show TSEG or the window again.
        write(
            &pio,
            0,
            0x9d,
            1,
            u32::from(0x02 | SMRAM_G_SMRAME | SMRAM_D_LCK),
        );
        assert!(smram.take().is_empty(), "locking alone changes no range");
        write(&pio, 0, 0x9e, 1, 0x38);
        write(&pio, 0, 0x9d, 1, u32::from(SMRAM_D_OPEN));
        assert!(smram.take().is_empty());
        assert_eq!(host.lock().unwrap().smram_view(), locked_view);
        // Reset: back to no SMRAM, reported once.
        host.lock().unwrap().reset();
        assert_eq!(smram.take(), [SmramView::default()]);
    }

    #[test]
    fn d_open_shows_the_legacy_window_until_locked() {
        let (pio, host, _) = setup();
        let smram = Arc::new(SmramRecorder::default());
        host.lock().unwrap().set_smram_mapper(smram.clone());
        write(
            &pio,
            0,
            0x9d,
            1,
            u32::from(0x02 | SMRAM_G_SMRAME | SMRAM_D_OPEN),
        );
        let open = SmramView {
            aseg_open: true,
            aseg_smm: true,
            tseg_len: 0,
        };
        assert_eq!(smram.take(), [open]);
        // Setting D_LCK together with D_OPEN closes the window (D_LCK clears D_OPEN).
        write(
            &pio,
            0,
            0x9d,
            1,
            u32::from(0x02 | SMRAM_G_SMRAME | SMRAM_D_OPEN | SMRAM_D_LCK),
        );
        assert_eq!(
            smram.take(),
            [SmramView {
                aseg_open: false,
                ..open
            }]
        );
    }

    #[test]
    fn pam_pciexbar_and_smram_come_back_through_their_traits_after_restore() {
        use crate::state::Snapshot;
        let (pio, host, _) = setup();
        let smram = Arc::new(SmramRecorder::default());
        host.lock().unwrap().set_smram_mapper(smram.clone());
        // SeaBIOS-style shadowing, then write-protect; OVMF-style ECAM and TSEG + lock.
        write(&pio, 0, 0x90, 4, 0x3311_1110);
        write(&pio, 0, 0x94, 4, 0x0033_2233);
        write(&pio, 0, 0x60, 4, 0xe000_0001);
        write(&pio, 0, 0x9e, 1, 0x38 | 0b110 | 1);
        write(
            &pio,
            0,
            0x9d,
            1,
            u32::from(0x02 | SMRAM_G_SMRAME | SMRAM_D_LCK),
        );
        write(&pio, 0, 0x04, 2, 0x0006);
        let modes: Vec<PamMode> = pam_segments()
            .into_iter()
            .map(|s| host.lock().unwrap().pam_mode(s))
            .collect();
        let view = host.lock().unwrap().smram_view();
        let saved = host.lock().unwrap().save_state().unwrap();

        let (pio2, fresh, rec2) = setup();
        let smram2 = Arc::new(SmramRecorder::default());
        fresh.lock().unwrap().set_smram_mapper(smram2.clone());
        fresh.lock().unwrap().restore_state(&saved).unwrap();
        // Every non-Off segment was reported, in order, with one apply.
        let expected: Vec<(usize, PamMode)> = modes
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, m)| *m != PamMode::Off)
            .collect();
        assert_eq!(rec2.take_pam(), expected);
        assert_eq!(*rec2.applies.lock().unwrap(), 1);
        assert_eq!(rec2.take_ecam(), [window(0xe000_0000, 256 << 20)]);
        assert_eq!(smram2.take(), [view]);
        assert_eq!(view.tseg_len, 16 << 20);
        // The same register reads, the lock still holds, the command register is back.
        for off in [0x04, 0x60, 0x64, 0x90, 0x94, 0x9c, 0xb0] {
            assert_eq!(read(&pio2, 0, off, 4), read(&pio, 0, off, 4), "{off:#x}");
        }
        assert!(fresh.lock().unwrap().smram_locked());
        write(&pio2, 0, 0x9e, 1, 0x38);
        write(&pio2, 0, 0x9d, 1, u32::from(SMRAM_D_OPEN));
        assert!(smram2.take().is_empty(), "locked: nothing reopens SMRAM");
        assert_eq!(read(&pio2, 0, 0x9d, 2), read(&pio, 0, 0x9d, 2));
        // The restored MCH goes on like the original: the next PAM write is one change.
        write(&pio2, 0, 0x96, 1, 0x00);
        assert_eq!(rec2.take_pam(), [(11, PamMode::Off), (12, PamMode::Off)]);
    }

    #[test]
    fn garbage_mch_state_is_refused_and_changes_nothing() {
        use crate::state::Snapshot;
        let (pio, host, rec) = setup();
        write(&pio, 0, 0x90, 1, 0x30);
        rec.take_pam();
        let saved = host.lock().unwrap().save_state().unwrap();
        let mut h = host.lock().unwrap();
        assert!(h.restore_state(&saved[..saved.len() - 3]).is_err());
        assert!(h.restore_state(&[1, 2, 3]).is_err());
        assert!(h.restore_state(&[]).is_err());
        drop(h);
        assert!(rec.take_pam().is_empty() && rec.take_ecam().is_empty());
        assert_eq!(read(&pio, 0, 0x90, 1), 0x30);
        write(&pio, 0, 0x90, 1, 0x10);
        assert_eq!(rec.take_pam(), [(0, PamMode::ReadOnly)], "still works");
    }

    #[test]
    fn tolud_is_read_only_and_follows_low_ram() {
        let (pio, _, _) = setup();
        assert_eq!(read(&pio, 0, 0xb0, 2), (0x800 << 4));
        write(&pio, 0, 0xb0, 2, 0x1230);
        assert_eq!(read(&pio, 0, 0xb0, 2), (0x800 << 4));
        let rec = Arc::new(Recorder::default());
        let big = Q35Host::new(1 << 32, rec.clone(), rec);
        assert_eq!(big.config.regs.word(TOLUD), 0xfff0, "capped to the field");
    }

    #[test]
    fn other_registers_are_plain_storage_and_header_stays_sane() {
        let (pio, _, rec) = setup();
        write(&pio, 0, 0x9c, 1, 0xff);
        assert_eq!(read(&pio, 0, 0x9c, 1), 0xff, "SMBASE query gets no answer");
        write(&pio, 0, 0xac, 4, 0x7f00_0000);
        assert_eq!(read(&pio, 0, 0xac, 4), 0x7f00_0000);
        write(&pio, 0, 0xfc, 4, 0xdead_beef);
        assert_eq!(read(&pio, 0, 0xfc, 4), 0xdead_beef);
        write(&pio, 0, 0x00, 4, 0);
        assert_eq!(read(&pio, 0, 0x00, 4), 0x29c0_8086);
        assert!(rec.take_ecam().is_empty() && rec.take_pam().is_empty());
    }

    #[test]
    fn reset_reports_the_way_back_to_power_on() {
        let (pio, host, rec) = setup();
        write(&pio, 0, 0x60, 4, 0xe000_0001);
        write(&pio, 0, 0x90, 2, 0x3330);
        write(&pio, 0, 0x04, 2, 0x0006);
        rec.take_ecam();
        rec.take_pam();
        host.lock().unwrap().reset();
        assert_eq!(rec.take_ecam(), [None]);
        assert_eq!(
            rec.take_pam(),
            [(0, PamMode::Off), (1, PamMode::Off), (2, PamMode::Off)]
        );
        assert_eq!(read(&pio, 0, 0x60, 4), 0xb000_0000);
        assert_eq!(read(&pio, 0, 0x90, 4), 0);
        assert_eq!(read(&pio, 0, 0x04, 2), 0, "command register cleared");
        // A second reset has nothing to report.
        host.lock().unwrap().reset();
        assert!(rec.take_ecam().is_empty() && rec.take_pam().is_empty());
    }
}
