//! The ACPI PM block in I/O space (the helper places it at `arch::x86_64::layout::PM_BASE`), as the FADT
//! describes it:
//!
//! ```text
//! +0x00 PM1a_STS (W1C)   +0x02 PM1a_EN   +0x04 PM1a_CNT   +0x08 PM_TMR (3.579545 MHz)
//! +0x0c GPE0_STS (W1C)   +0x0e GPE0_EN   +0x10 RESET_REG
//! ```
//!
//! Writing SLP_TYP = 5 with SLP_EN to PM1a_CNT powers off; writing the reset value to
//! RESET_REG resets. [`PmBlock::press_power_button`] sets PWRBTN_STS; the SCI (a level
//! interrupt on IRQ 9) is high while any enabled status bit is set and SCI_EN is on.

use std::sync::Arc;
use std::time::Instant;

use super::{IrqLine, PowerEvent, PowerEvents};
use crate::bus::BusDevice;

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

/// Byte offsets inside the block.
const PM1_STS: u64 = 0x0;
const PM1_EN: u64 = 0x2;
const PM1_CNT: u64 = 0x4;
const PM_TMR: u64 = 0x8;
const GPE0_STS: u64 = 0xc;
const GPE0_EN: u64 = 0xe;
const RESET: u64 = 0x10;

/// The PM block.
pub struct PmBlock {
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0_sts: u16,
    gpe0_en: u16,
    start: Instant,
    sci: Arc<dyn IrqLine>,
    power: Arc<dyn PowerEvents>,
    sci_level: bool,
}

impl PmBlock {
    pub fn new(sci: Arc<dyn IrqLine>, power: Arc<dyn PowerEvents>) -> Self {
        Self {
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: SCI_EN,
            gpe0_sts: 0,
            gpe0_en: 0,
            start: Instant::now(),
            sci,
            power,
            sci_level: false,
        }
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
            GPE0_STS => word(self.gpe0_sts, hi),
            GPE0_EN => word(self.gpe0_en, hi),
            _ => 0,
        }
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
            GPE0_STS => clear(&mut self.gpe0_sts, hi),
            GPE0_EN => set(&mut self.gpe0_en, hi),
            RESET if off == RESET => {
                if b == RESET_VALUE {
                    self.power.request(PowerEvent::Reset);
                }
            }
            _ => crate::guest_warn!("acpi pm: write {b:#04x} to read-only offset {off:#x}"),
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
}
