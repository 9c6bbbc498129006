//! The ACPI PM block in I/O space, as the FADT describes it, in one of two layouts
//! ([`PmLayout`]). Hospes' own (the default; the helper places it at
//! `arch::x86_64::layout::PM_BASE`, 0x20 ports):
//!
//! ```text
//! +0x00 PM1a_STS (W1C)   +0x02 PM1a_EN   +0x04 PM1a_CNT   +0x08 PM_TMR (3.579545 MHz)
//! +0x0c GPE0_STS (W1C)   +0x0e GPE0_EN   +0x10 RESET_REG
//! ```
//!
//! and the ICH9 one Q35 firmware expects at PMBASE (0x80 ports; ICH9 datasheet 316972
//! §13.8.3, QEMU `hw/acpi/ich9.c`), whose reset register is port 0xCF9 instead:
//!
//! ```text
//! +0x00 PM1a_STS  +0x02 PM1a_EN  +0x04 PM1a_CNT  +0x08 PM_TMR
//! +0x20 GPE0_STS (8 bytes, W1C)  +0x28 GPE0_EN (8 bytes)
//! +0x30 SMI_EN (4 bytes)         +0x34 SMI_STS (4 bytes, W1C)
//! ```
//!
//! Writing SLP_TYP = 5 with SLP_EN to PM1a_CNT powers off; writing the reset value to
//! RESET_REG resets. [`PmBlock::press_power_button`] sets PWRBTN_STS; the SCI (a level
//! interrupt on IRQ 9) is high while any enabled status bit is set and SCI_EN is on.
//! SMI_EN starts with APMC_EN set, as QEMU leaves it when there is no SMM: SeaBIOS reads
//! that as "SMM already set up" and does not wait for an SMI handler. SMI_EN and SMI_STS
//! live in a [`SmiRegs`] shared with the APM port, which raises an SMI by them on a machine
//! with SMM (GBL_SMI_EN and APMC_EN both set: [`crate::chipset::smi`]); the preset leaves
//! GBL_SMI_EN clear, so SeaBIOS's 0xB2 writes raise nothing.

use std::sync::Arc;
use std::time::Instant;

use super::{IrqLine, PowerEvent, PowerEvents};
use crate::bus::BusDevice;
use crate::chipset::smi::SmiRegs;

/// Value written to the reset register to reset.
pub const RESET_VALUE: u8 = 0x6;
/// SLP_TYP value for S5 (soft off); the DSDT's `_S5` package names it.
pub const S5_SLP_TYP: u8 = 5;

/// PM1 status/enable: power button.
pub const PWRBTN: u16 = 1 << 8;
/// PM1 status: wake.
const WAK_STS: u16 = 1 << 15;
/// PM1 control: SCI enabled (always: there is no SMI handler to hand over from).
const SCI_EN: u16 = 1;
/// PM1 control: sleep enable.
const SLP_EN: u16 = 1 << 13;
/// PM timer frequency.
const PM_TIMER_HZ: u128 = 3_579_545;

/// SMI_EN bit 5 (ICH9 §13.8.3.12): an APM_CNT write raises an SMI. Preset so that firmware
/// skips its SMM setup.
pub const SMI_EN_APMC_EN: u32 = 1 << 5;

/// Byte offsets inside the block (both layouts).
const PM1_STS: u64 = 0x0;
const PM1_EN: u64 = 0x2;
const PM1_CNT: u64 = 0x4;
const PM_TMR: u64 = 0x8;
/// Byte offsets of Hospes' layout.
const GPE0_STS: u64 = 0xc;
const RESET: u64 = 0x10;
/// Byte offsets of the ICH9 layout.
const ICH9_GPE0: u64 = 0x20;
const ICH9_SMI_EN: u64 = 0x30;
/// SMI_EN and SMI_STS (which follows it) are 32-bit.
const SMI_REG_LEN: u64 = 4;

/// Which registers sit past the PM timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PmLayout {
    /// Hospes' own: GPE0 status and enable (2 bytes each) at +0x0c, RESET_REG at +0x10;
    /// 0x20 ports.
    #[default]
    Hospes,
    /// ICH9 (Q35): GPE0 status and enable (8 bytes each) at +0x20, SMI_EN at +0x30,
    /// SMI_STS at +0x34; 0x80 ports, 128-aligned. The reset register is port 0xCF9
    /// ([`crate::chipset::ResetControl`]).
    Ich9,
}

impl PmLayout {
    /// Ports the block covers (its length on the bus).
    pub const fn block_len(self) -> u64 {
        match self {
            Self::Hospes => 0x20,
            Self::Ich9 => 0x80,
        }
    }

    /// Offset of GPE0_STS (the FADT's GPE0_BLK).
    pub const fn gpe0_offset(self) -> u64 {
        match self {
            Self::Hospes => GPE0_STS,
            Self::Ich9 => ICH9_GPE0,
        }
    }

    /// Length of the GPE0 block, status and enable halves together (the FADT's
    /// GPE0_BLK_LEN).
    pub const fn gpe0_len(self) -> u64 {
        match self {
            Self::Hospes => 4,
            Self::Ich9 => 0x10,
        }
    }

    /// Offset of RESET_REG, where this layout has one.
    pub const fn reset_offset(self) -> Option<u64> {
        match self {
            Self::Hospes => Some(RESET),
            Self::Ich9 => None,
        }
    }

    /// Offset of SMI_EN (SMI_STS follows it), where this layout has them.
    pub const fn smi_offset(self) -> Option<u64> {
        match self {
            Self::Hospes => None,
            Self::Ich9 => Some(ICH9_SMI_EN),
        }
    }
}

/// Which byte of a register `off` falls in, for a register of `len` bytes at `at`.
fn byte_in(off: u64, at: u64, len: u64) -> Option<u32> {
    let i = off.checked_sub(at).filter(|i| *i < len)?;
    u32::try_from(i).ok()
}

/// Byte `i` of `v`.
fn byte_of(v: u64, i: u32) -> u8 {
    v.checked_shr(i * 8).unwrap_or(0) as u8
}

/// `v` with byte `i` replaced by `b`.
fn with_byte(v: u64, i: u32, b: u8) -> u64 {
    let mask = 0xffu64.checked_shl(i * 8).unwrap_or(0);
    (v & !mask) | u64::from(b).checked_shl(i * 8).unwrap_or(0)
}

/// `v` with the bits of `b` cleared in byte `i` (write-one-to-clear).
fn clear_byte(v: u64, i: u32, b: u8) -> u64 {
    v & !u64::from(b).checked_shl(i * 8).unwrap_or(0)
}

/// The PM block.
pub struct PmBlock {
    layout: PmLayout,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0_sts: u64,
    gpe0_en: u64,
    /// SMI_EN and SMI_STS, shared with the APM port ([`crate::chipset::smi`]).
    smi: Arc<SmiRegs>,
    start: Instant,
    sci: Arc<dyn IrqLine>,
    power: Arc<dyn PowerEvents>,
    sci_level: bool,
}

impl PmBlock {
    /// A block in Hospes' own layout.
    pub fn new(sci: Arc<dyn IrqLine>, power: Arc<dyn PowerEvents>) -> Self {
        Self::with_layout(PmLayout::Hospes, sci, power)
    }

    /// A block in the ICH9 layout, for the Q35 chipset (placed by
    /// [`crate::chipset::PmRelocator`], length [`PmLayout::block_len`]).
    pub fn new_ich9(sci: Arc<dyn IrqLine>, power: Arc<dyn PowerEvents>) -> Self {
        Self::with_layout(PmLayout::Ich9, sci, power)
    }

    /// A block in `layout`.
    pub fn with_layout(
        layout: PmLayout,
        sci: Arc<dyn IrqLine>,
        power: Arc<dyn PowerEvents>,
    ) -> Self {
        Self {
            layout,
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: SCI_EN,
            gpe0_sts: 0,
            gpe0_en: 0,
            smi: Arc::new(SmiRegs::new(SMI_EN_APMC_EN)),
            start: Instant::now(),
            sci,
            power,
            sci_level: false,
        }
    }

    /// SMI_EN and SMI_STS, for the APM port that raises SMIs by them.
    pub fn smi_regs(&self) -> Arc<SmiRegs> {
        self.smi.clone()
    }

    /// The layout this block decodes.
    pub fn layout(&self) -> PmLayout {
        self.layout
    }

    /// Back to power-on register values (platform reset); the timer keeps counting and a
    /// raised SCI drops.
    pub fn reset(&mut self) {
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = SCI_EN;
        self.gpe0_sts = 0;
        self.gpe0_en = 0;
        self.smi.reset();
        self.update_sci();
    }

    /// The ACPI power button was pressed (QMP `system_powerdown`).
    pub fn press_power_button(&mut self) {
        self.pm1_sts |= PWRBTN;
        self.update_sci();
    }

    fn update_sci(&mut self) {
        let level = self.pm1_cnt & SCI_EN != 0
            && (self.pm1_sts & self.pm1_en != 0 || self.gpe0_sts & self.gpe0_en != 0);
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set_level(level);
        }
    }

    fn timer(&self) -> u32 {
        (self.start.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000) as u32
    }

    fn read_byte(&self, off: u64) -> u8 {
        let word = |v: u16, hi: bool| if hi { (v >> 8) as u8 } else { v as u8 };
        let hi = off & 1 == 1;
        match off & !1 {
            PM1_STS => word(self.pm1_sts, hi),
            PM1_EN => word(self.pm1_en, hi),
            PM1_CNT => word(self.pm1_cnt, hi),
            PM_TMR | 0xa => (self.timer() >> ((off - PM_TMR) * 8)) as u8,
            _ => self.read_upper(off),
        }
    }

    /// Reads a byte of the layout-dependent registers past the timer.
    fn read_upper(&self, off: u64) -> u8 {
        let (gpe0, half) = (self.layout.gpe0_offset(), self.layout.gpe0_len() / 2);
        if let Some(i) = byte_in(off, gpe0, half) {
            return byte_of(self.gpe0_sts, i);
        }
        if let Some(i) = byte_in(off, gpe0 + half, half) {
            return byte_of(self.gpe0_en, i);
        }
        if let Some(smi) = self.layout.smi_offset() {
            if let Some(i) = byte_in(off, smi, SMI_REG_LEN) {
                return byte_of(self.smi.enable().into(), i);
            }
            if let Some(i) = byte_in(off, smi + SMI_REG_LEN, SMI_REG_LEN) {
                return byte_of(self.smi.status().into(), i);
            }
        }
        0
    }

    /// Writes a byte of the layout-dependent registers past the timer.
    fn write_upper(&mut self, off: u64, b: u8) {
        let (gpe0, half) = (self.layout.gpe0_offset(), self.layout.gpe0_len() / 2);
        if let Some(i) = byte_in(off, gpe0, half) {
            self.gpe0_sts = clear_byte(self.gpe0_sts, i, b);
            return;
        }
        if let Some(i) = byte_in(off, gpe0 + half, half) {
            self.gpe0_en = with_byte(self.gpe0_en, i, b);
            return;
        }
        if self.layout.reset_offset() == Some(off) {
            if b == RESET_VALUE {
                self.power.request(PowerEvent::Reset);
            }
            return;
        }
        if let Some(smi) = self.layout.smi_offset() {
            if let Some(i) = byte_in(off, smi, SMI_REG_LEN) {
                self.smi
                    .set_enable(with_byte(self.smi.enable().into(), i, b) as u32);
                return;
            }
            if let Some(i) = byte_in(off, smi + SMI_REG_LEN, SMI_REG_LEN) {
                self.smi
                    .clear_status(u32::from(b).checked_shl(i * 8).unwrap_or(0));
                return;
            }
        }
        crate::guest_warn!("acpi pm: write {b:#04x} to read-only offset {off:#x}");
    }

    fn write_byte(&mut self, off: u64, b: u8) {
        let set = |reg: &mut u16, hi: bool| {
            *reg = if hi {
                (*reg & 0x00ff) | u16::from(b) << 8
            } else {
                (*reg & 0xff00) | u16::from(b)
            }
        };
        let clear = |reg: &mut u16, hi: bool| *reg &= !(u16::from(b) << if hi { 8 } else { 0 });
        let hi = off & 1 == 1;
        match off & !1 {
            PM1_STS => clear(&mut self.pm1_sts, hi),
            PM1_EN => set(&mut self.pm1_en, hi),
            PM1_CNT => {
                set(&mut self.pm1_cnt, hi);
                self.pm1_cnt |= SCI_EN;
                self.check_sleep();
            }
            _ => self.write_upper(off, b),
        }
    }

    fn check_sleep(&mut self) {
        if self.pm1_cnt & SLP_EN == 0 {
            return;
        }
        self.pm1_cnt &= !SLP_EN;
        let slp_typ = ((self.pm1_cnt >> 10) & 7) as u8;
        if slp_typ == S5_SLP_TYP {
            self.power.request(PowerEvent::PowerOff);
        } else {
            // S1..S4 are not offered (no _S1.._S4); report an immediate wake.
            self.pm1_sts |= WAK_STS;
            crate::guest_warn!("acpi pm: sleep type {slp_typ} not supported");
        }
    }
}

/// The saved PM block. The timer is saved as its count and goes on counting from there;
/// the SCI level is raised again when status and enable bits say so (the power button
/// latched, a GPE). SMI_EN rides along; SMI_STS and the SMI lock belong to the chipset's
/// state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PmSaved {
    ich9: bool,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0_sts: u64,
    gpe0_en: u64,
    smi_en: u32,
    timer_ns: u64,
}

impl crate::state::Snapshot for PmBlock {
    fn save_state(&mut self) -> Result<Vec<u8>, crate::state::StateError> {
        crate::state::encode(
            "power management block",
            &PmSaved {
                ich9: self.layout == PmLayout::Ich9,
                pm1_sts: self.pm1_sts,
                pm1_en: self.pm1_en,
                pm1_cnt: self.pm1_cnt,
                gpe0_sts: self.gpe0_sts,
                gpe0_en: self.gpe0_en,
                smi_en: self.smi.enable(),
                timer_ns: self.start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64,
            },
        )
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::state::StateError> {
        let s: PmSaved = crate::state::decode("power management block", state)?;
        if s.ich9 != (self.layout == PmLayout::Ich9) {
            return Err(crate::state::StateError::mismatch(
                "power management block",
                "saved with the other chipset's layout",
            ));
        }
        let gpe_mask = match self.layout.gpe0_len() / 2 {
            8.. => u64::MAX,
            n => (1u64 << (n * 8)) - 1,
        };
        self.pm1_sts = s.pm1_sts;
        self.pm1_en = s.pm1_en;
        self.pm1_cnt = (s.pm1_cnt & !SLP_EN) | SCI_EN;
        self.gpe0_sts = s.gpe0_sts & gpe_mask;
        self.gpe0_en = s.gpe0_en & gpe_mask;
        if self.layout.smi_offset().is_some() {
            self.smi.set_enable(s.smi_en);
        }
        let elapsed = std::time::Duration::from_nanos(s.timer_ns);
        self.start = Instant::now().checked_sub(elapsed).unwrap_or_else(|| {
            // A host up for less time than the guest's timer count: keep the low bits the
            // guest sees modulo the 32-bit wrap instead.
            let wrap = std::time::Duration::from_nanos(
                ((1u128 << 32) * 1_000_000_000 / PM_TIMER_HZ) as u64,
            );
            let rem = std::time::Duration::from_nanos(s.timer_ns % wrap.as_nanos() as u64);
            Instant::now().checked_sub(rem).unwrap_or_else(Instant::now)
        });
        self.update_sci();
        Ok(())
    }
}

impl BusDevice for PmBlock {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_byte(offset + i as u64);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // PM1_CNT is acted on once the whole access is in, so a 16-bit write of
        // SLP_TYP|SLP_EN sees both bytes.
        for (i, &b) in data.iter().enumerate() {
            let off = offset + i as u64;
            if off == PM1_CNT && data.len() > i + 1 {
                self.pm1_cnt = (self.pm1_cnt & 0xff00) | u16::from(b);
                continue;
            }
            self.write_byte(off, b);
        }
        self.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::testing::{RecordingIrq, RecordingPower};

    fn dev() -> (PmBlock, Arc<RecordingPower>, Arc<RecordingIrq>) {
        let p = Arc::new(RecordingPower::default());
        let i = Arc::new(RecordingIrq::default());
        (PmBlock::new(i.clone(), p.clone()), p, i)
    }

    fn read16(d: &mut PmBlock, off: u64) -> u16 {
        let mut b = [0u8; 2];
        d.read(0x600, off, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn slp_en_with_s5_powers_off() {
        let (mut d, p, _) = dev();
        d.write(0x600, PM1_CNT, &((5u16 << 10) | SLP_EN).to_le_bytes());
        assert_eq!(*p.events.lock().unwrap(), [PowerEvent::PowerOff]);
    }

    #[test]
    fn other_sleep_types_do_not_power_off() {
        let (mut d, p, _) = dev();
        d.write(0x600, PM1_CNT, &((1u16 << 10) | SLP_EN).to_le_bytes());
        assert!(p.events.lock().unwrap().is_empty());
        assert_eq!(read16(&mut d, PM1_CNT) & SCI_EN, SCI_EN);
    }

    #[test]
    fn power_button_raises_sci_until_acknowledged() {
        let (mut d, _, irq) = dev();
        d.press_power_button();
        assert!(!*irq.level.lock().unwrap(), "not enabled yet");
        d.write(0x600, PM1_EN, &PWRBTN.to_le_bytes());
        assert!(*irq.level.lock().unwrap());
        assert_eq!(read16(&mut d, PM1_STS) & PWRBTN, PWRBTN);
        d.write(0x600, PM1_STS, &PWRBTN.to_le_bytes());
        assert!(!*irq.level.lock().unwrap());
        assert_eq!(read16(&mut d, PM1_STS), 0);
    }

    fn ich9() -> (PmBlock, Arc<RecordingPower>, Arc<RecordingIrq>) {
        let p = Arc::new(RecordingPower::default());
        let i = Arc::new(RecordingIrq::default());
        (PmBlock::new_ich9(i.clone(), p.clone()), p, i)
    }

    fn read32(d: &mut PmBlock, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(0x600, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn layouts_describe_their_blocks() {
        assert_eq!(PmLayout::default(), PmLayout::Hospes);
        assert_eq!(PmLayout::Hospes.block_len(), 0x20);
        assert_eq!(
            (PmLayout::Ich9.block_len(), PmLayout::Ich9.gpe0_offset()),
            (0x80, 0x20)
        );
        assert_eq!(PmLayout::Ich9.gpe0_len(), 0x10);
        assert_eq!(PmLayout::Ich9.reset_offset(), None);
        assert_eq!(PmLayout::Hospes.smi_offset(), None);
        assert_eq!(ich9().0.layout(), PmLayout::Ich9);
    }

    #[test]
    fn ich9_smi_en_starts_with_apmc_en_so_seabios_skips_smm_setup() {
        let (mut d, _, _) = ich9();
        // SeaBIOS ich9_lpc_apmc_smm_setup: returns early when APMC_EN is already set.
        assert_eq!(read32(&mut d, 0x30) & SMI_EN_APMC_EN, SMI_EN_APMC_EN);
        // OVMF's SMM builds set GBL_SMI_EN | APMC_EN; stored as written.
        d.write(0x600, 0x30, &0x21u32.to_le_bytes());
        assert_eq!(read32(&mut d, 0x30), 0x21);
        d.write(0x600, 0x31, &[0x40]);
        assert_eq!(read32(&mut d, 0x30), 0x4021);
        // SMI_STS is write-one-to-clear and nothing sets it.
        d.write(0x600, 0x34, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read32(&mut d, 0x34), 0);
        d.write(0x600, 0x30, &0u32.to_le_bytes());
        d.reset();
        assert_eq!(read32(&mut d, 0x30), SMI_EN_APMC_EN);
    }

    #[test]
    fn ich9_gpe0_is_eight_bytes_each_and_raises_sci() {
        let (mut d, _, irq) = ich9();
        // Enable GPE 40 (byte 5 of the enable half).
        d.write(0x600, 0x28 + 5, &[0x01]);
        assert_eq!(read32(&mut d, 0x2c), 0x0000_0100);
        d.gpe0_sts |= 1 << 40;
        d.write(0x600, 0x28, &[0]);
        assert!(*irq.level.lock().unwrap());
        d.write(0x600, 0x20 + 5, &[0x01]);
        assert!(!*irq.level.lock().unwrap());
        assert_eq!(d.gpe0_sts, 0);
        // Hospes' GPE0 and reset register offsets are plain nothing here.
        d.write(0x600, 0x0e, &[0xff]);
        d.write(0x600, 0x10, &[RESET_VALUE]);
        assert_eq!(d.gpe0_en, 1 << 40);
        let mut b = [0xaa; 2];
        d.read(0x600, 0x7e, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn ich9_layout_keeps_pm1_timer_and_has_no_reset_register() {
        let (mut d, p, _) = ich9();
        d.write(0x600, 0x10, &[RESET_VALUE]);
        assert!(p.events.lock().unwrap().is_empty());
        d.write(0x600, PM1_CNT, &((5u16 << 10) | SLP_EN).to_le_bytes());
        assert_eq!(*p.events.lock().unwrap(), [PowerEvent::PowerOff]);
        let a = read32(&mut d, PM_TMR);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(read32(&mut d, PM_TMR) > a);
    }

    #[test]
    fn hospes_layout_has_no_smi_registers() {
        let (mut d, _, _) = dev();
        d.write(0x600, 0x1e, &[0xff]);
        let mut b = [0xaa];
        d.read(0x600, 0x10, &mut b);
        assert_eq!(b, [0]);
        // GPE0 still two bytes each at 0x0c/0x0e.
        d.write(0x600, 0x0e, &0x0102u16.to_le_bytes());
        assert_eq!(read16(&mut d, 0x0e), 0x0102);
        assert_eq!(d.gpe0_en, 0x0102);
    }

    #[test]
    fn reset_register_resets_and_timer_counts() {
        let (mut d, p, _) = dev();
        d.write(0x600, RESET, &[0x1]);
        assert!(p.events.lock().unwrap().is_empty());
        d.write(0x600, RESET, &[RESET_VALUE]);
        assert_eq!(*p.events.lock().unwrap(), [PowerEvent::Reset]);
        let mut a = [0u8; 4];
        d.read(0x600, PM_TMR, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut b = [0u8; 4];
        d.read(0x600, PM_TMR, &mut b);
        assert!(u32::from_le_bytes(b) > u32::from_le_bytes(a));
    }

    #[test]
    fn a_restored_block_keeps_its_registers_timer_and_latched_button() {
        use crate::state::Snapshot;
        for layout in [PmLayout::Hospes, PmLayout::Ich9] {
            let irq = Arc::new(RecordingIrq::default());
            let power = Arc::new(RecordingPower::default());
            let mut d = PmBlock::with_layout(layout, irq.clone(), power.clone());
            d.write(0, PM1_EN, &PWRBTN.to_le_bytes());
            let gpe0 = layout.gpe0_offset();
            let half = layout.gpe0_len() / 2;
            d.write(0, gpe0 + half, &[0x05]);
            d.press_power_button();
            std::thread::sleep(std::time::Duration::from_millis(5));
            let t0 = read32(&mut d, PM_TMR);
            let state = d.save_state().unwrap();

            let irq2 = Arc::new(RecordingIrq::default());
            let mut r = PmBlock::with_layout(layout, irq2.clone(), power.clone());
            r.restore_state(&state).unwrap();
            assert!(
                *irq2.level.lock().unwrap(),
                "SCI raised again for the button"
            );
            for off in [PM1_STS, PM1_EN, PM1_CNT, gpe0, gpe0 + half] {
                assert_eq!(read16(&mut r, off), read16(&mut d, off), "offset {off:#x}");
            }
            let t1 = read32(&mut r, PM_TMR);
            assert!(
                t1 >= t0 && t1 - t0 < PM_TIMER_HZ as u32,
                "timer goes on: {t0} -> {t1}"
            );
            // The guest acknowledges: the SCI drops.
            r.write(0, PM1_STS, &PWRBTN.to_le_bytes());
            assert!(!*irq2.level.lock().unwrap());

            let other = match layout {
                PmLayout::Hospes => PmLayout::Ich9,
                PmLayout::Ich9 => PmLayout::Hospes,
            };
            let mut o = PmBlock::with_layout(other, irq2.clone(), power.clone());
            assert!(o.restore_state(&state).is_err());
            assert!(r.restore_state(&state[..state.len() - 1]).is_err());
            assert_eq!(
                read16(&mut r, PM1_STS) & PWRBTN,
                0,
                "unchanged by a refused state"
            );
        }
    }
}
