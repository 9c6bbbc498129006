//! The ICH9 LPC bridge (8086:2918, PCI-to-ISA bridge) at 00:1f.0.
//!
//! Firmware programs it through configuration space (ICH9 datasheet 316972, §13.1; edk2
//! `Q35MchIch9.h`; SeaBIOS `mch_isa_bridge_setup`):
//!
//! - **PMBASE** (0x40) and **ACPI_CNTL** (0x44): where the ACPI PM I/O block sits (bits
//!   15:7, 128 ports) and whether it decodes (ACPI_EN, bit 7). SeaBIOS picks 0x600 or
//!   0xB000, OVMF 0x600. Every change of the decoded base goes to [`PmRelocator::set`].
//! - **PIRQA..H_ROUT** (0x60-0x63, 0x68-0x6B): which ISA IRQ each PCI interrupt line is
//!   steered to (bit 7 set = not routed). Stored and answered by [`Ich9Lpc::pirq_route`];
//!   Hospes' interrupt wiring reads them, the register itself routes nothing.
//! - **GEN_PMCON_1..3, GEN_PMCON_LOCK** (0xA0-0xA6) and **RCBA** (0xF0): stored and read
//!   back. The root complex register block RCBA names is not decoded. GEN_PMCON_1.SMI_LOCK
//!   (bit 4, which OVMF sets once it enabled SMIs) sticks until reset and, on a bridge given
//!   the PM block's [`SmiRegs`], freezes SMI_EN.GBL_SMI_EN, so an OS cannot switch SMIs
//!   off under the firmware's SMM.
//!
//! The SCI IRQ select in ACPI_CNTL bits 2:0 is stored but not acted on (the SCI is fixed at
//! IRQ 9 by the ACPI tables). Header type bit 7 is set, as on QEMU's 00:1f.0, whose
//! siblings are AHCI (1f.2) and SMBus (1f.3). Every other device-specific byte is plain
//! storage. Data flow: configuration write -> [`ChipsetConfig`] (masked merge) ->
//! [`ChipsetFunction::after_write`] -> [`PmRelocator::set`] when the PM block moved.

use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::regs::{ChipsetConfig, ChipsetConfigState, ChipsetFunction, touches};
use super::smi::{SmiRegs, SmiRegsState};
use super::{SUBCLASS_ISA_BRIDGE, bridge_ids};
use crate::state::{Snapshot, StateError, decode, encode};

/// Device id of the ICH9 LPC interface (the desktop part QEMU models).
pub const DEVICE_ID: u16 = 0x2918;
/// Revision QEMU's LPC reports (`ICH9_A2_LPC_REVISION`).
const REVISION: u8 = 0x02;

/// PMBASE: ACPI PM I/O base (32-bit register, base in bits 15:7).
pub const PMBASE: usize = 0x40;
/// PMBASE power-on value: base 0, bit 0 (resource type = I/O) hard-wired to 1.
const PMBASE_DEFAULT: u32 = 0x1;
/// PMBASE bits a guest may change: 15:7.
const PMBASE_ADDRESS_MASK: u32 = 0xff80;
/// ACPI_CNTL: ACPI control.
pub const ACPI_CNTL: usize = 0x44;
/// ACPI_CNTL bit 7: decode the PM block at PMBASE.
pub const ACPI_CNTL_ACPI_EN: u8 = 0x80;
/// ACPI_EN and the SCI IRQ select (bits 2:0) are writable.
const ACPI_CNTL_WMASK: u8 = 0x87;

/// PIRQA_ROUT..PIRQD_ROUT and PIRQE_ROUT..PIRQH_ROUT.
pub const PIRQA_ROUT: usize = 0x60;
pub const PIRQE_ROUT: usize = 0x68;
/// Pins A..H.
pub const PIRQ_PINS: usize = 8;
/// PIRQx_ROUT bit 7: interrupt routing disabled (the power-on value).
pub const PIRQ_ROUT_DISABLED: u8 = 0x80;
/// PIRQx_ROUT bits 3:0: the ISA IRQ.
const PIRQ_ROUT_IRQ_MASK: u8 = 0x0f;
const PIRQ_ROUT_WMASK: u8 = PIRQ_ROUT_DISABLED | PIRQ_ROUT_IRQ_MASK;
/// ISA IRQs a PIRQ may be steered to (datasheet §13.1.20: 0-2, 8 and 13 are reserved).
const PIRQ_VALID_IRQS: [u8; 11] = [3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15];

/// GEN_PMCON_1 (16-bit; bit 4 SMI_LOCK), GEN_PMCON_2, GEN_PMCON_3, GEN_PMCON_LOCK.
pub const GEN_PMCON_1: usize = 0xa0;
pub const GEN_PMCON_2: usize = 0xa2;
pub const GEN_PMCON_3: usize = 0xa4;
pub const GEN_PMCON_LOCK: usize = 0xa6;
/// GEN_PMCON_1 bit 4: SMI_EN.GBL_SMI_EN locked until reset.
const GEN_PMCON_1_SMI_LOCK: u8 = 1 << 4;

/// RCBA: root complex base address (bits 31:14) and enable (bit 0).
pub const RCBA: usize = 0xf0;
const RCBA_WMASK: u32 = 0xffff_c001;

/// Moves the ACPI PM I/O block on the machine's port bus. The helper implements it.
///
/// Called from inside a configuration write, once for every change of the decoded base:
/// `Some(base)` places the block ([`crate::legacy::pm::PmLayout::Ich9`], 0x80 ports) at
/// `base`, `None` takes it away (ACPI_EN clear, or PMBASE 0). The write usually arrives
/// through port 0xCFC, so the vCPU holds the port bus's read lock: an implementation must
/// not take its write lock inline (defer the move until the exit is done, or keep the
/// block on a bus of its own behind a forwarding window). The guest picks the base; one
/// over another device is refused and logged by the implementation.
pub trait PmRelocator: Send + Sync {
    fn set(&self, base: Option<u16>);
}

/// The LPC bridge at 00:1f.0.
pub struct Ich9Lpc {
    config: ChipsetConfig,
    pm: Arc<dyn PmRelocator>,
    /// The PM block base as last reported to `pm`.
    pm_now: Option<u16>,
    /// SMI_EN, which SMI_LOCK locks.
    smi: Option<Arc<SmiRegs>>,
}

/// Configuration space at power-on.
fn power_on_config() -> ChipsetConfig {
    let mut c = ChipsetConfig::new(bridge_ids(DEVICE_ID, REVISION, SUBCLASS_ISA_BRIDGE), true);
    let r = &mut c.regs;
    r.set(PMBASE, &PMBASE_DEFAULT.to_le_bytes());
    r.set_wmask(PMBASE, &PMBASE_ADDRESS_MASK.to_le_bytes());
    r.set_wmask(ACPI_CNTL, &[ACPI_CNTL_WMASK]);
    for base in [PIRQA_ROUT, PIRQE_ROUT] {
        r.set(base, &[PIRQ_ROUT_DISABLED; 4]);
        r.set_wmask(base, &[PIRQ_ROUT_WMASK; 4]);
    }
    r.set_wmask(RCBA, &RCBA_WMASK.to_le_bytes());
    c
}

impl Ich9Lpc {
    /// An LPC bridge in its power-on state: PM block not decoded, every PIRQ unrouted. No
    /// trait is called until the guest programs a register.
    pub fn new(pm: Arc<dyn PmRelocator>) -> Self {
        Self {
            config: power_on_config(),
            pm,
            pm_now: None,
            smi: None,
        }
    }

    /// Lets GEN_PMCON_1.SMI_LOCK lock GBL_SMI_EN in `regs` (the PM block's).
    pub fn set_smi_regs(&mut self, regs: Arc<SmiRegs>) {
        self.smi = Some(regs);
    }

    /// Back to power-on values (platform reset); a decoded PM block is reported gone.
    pub fn reset(&mut self) {
        self.config = power_on_config();
        self.sync_pm();
    }

    /// Where the ACPI PM block decodes now.
    pub fn pm_base(&self) -> Option<u16> {
        self.pm_now
    }

    /// The ISA IRQ PCI interrupt line `pin` (0 = PIRQA .. 7 = PIRQH) is routed to, or `None`
    /// when it is not routed, names a reserved IRQ, or `pin` is out of range.
    pub fn pirq_route(&self, pin: usize) -> Option<u8> {
        let offset = match pin {
            0..4 => PIRQA_ROUT + pin,
            4..PIRQ_PINS => PIRQE_ROUT + pin - 4,
            _ => return None,
        };
        let value = self.config.regs.byte(offset);
        let irq = value & PIRQ_ROUT_IRQ_MASK;
        (value & PIRQ_ROUT_DISABLED == 0 && PIRQ_VALID_IRQS.contains(&irq)).then_some(irq)
    }

    /// RCBA as programmed: the root complex base address when its enable bit is set.
    pub fn rcba(&self) -> Option<u32> {
        let value = self.config.regs.dword(RCBA);
        (value & 1 != 0).then_some(value & !1)
    }

    fn sync_pm(&mut self) {
        let enabled = self.config.regs.byte(ACPI_CNTL) & ACPI_CNTL_ACPI_EN != 0;
        let base = (self.config.regs.dword(PMBASE) & PMBASE_ADDRESS_MASK) as u16;
        let now = (enabled && base != 0).then_some(base);
        if now != self.pm_now {
            self.pm_now = now;
            self.pm.set(now);
        }
    }
}

impl ChipsetFunction for Ich9Lpc {
    fn chipset_config(&self) -> &ChipsetConfig {
        &self.config
    }

    fn chipset_config_mut(&mut self) -> &mut ChipsetConfig {
        &mut self.config
    }

    fn after_write(&mut self, written: &Range<usize>) {
        if touches(written, PMBASE, 4) || touches(written, ACPI_CNTL, 1) {
            self.sync_pm();
        }
        let pmcon1 = self.config.regs.byte(GEN_PMCON_1);
        if touches(written, GEN_PMCON_1, 1) && pmcon1 & GEN_PMCON_1_SMI_LOCK != 0 {
            // Sticky until reset.
            self.config
                .regs
                .set_wmask(GEN_PMCON_1, &[!GEN_PMCON_1_SMI_LOCK]);
            if let Some(smi) = &self.smi {
                smi.lock_gbl_smi_en();
            }
        }
    }
}

/// The name a saved LPC bridge goes by in errors.
const STATE_NAME: &str = "q35/lpc";

/// Saved state: the configuration space (PMBASE, ACPI_CNTL, PIRQ routing, GEN_PMCON with
/// SMI_LOCK, RCBA) and, on a bridge given them, SMI_EN/SMI_STS with their lock.
#[derive(Debug, Serialize, Deserialize)]
struct LpcState {
    config: ChipsetConfigState,
    smi: Option<SmiRegsState>,
}

impl Snapshot for Ich9Lpc {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        encode(
            STATE_NAME,
            &LpcState {
                config: self.config.save(),
                smi: self.smi.as_ref().map(|r| r.save()),
            },
        )
    }

    /// Restores the registers, then places the PM block through [`PmRelocator::set`]
    /// as the guest's PMBASE/ACPI_EN writes did.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let s: LpcState = decode(STATE_NAME, state)?;
        if s.smi.is_some() != self.smi.is_some() {
            return Err(StateError::mismatch(
                STATE_NAME,
                "saved with and restored without SMI registers, or the reverse",
            ));
        }
        self.config.restore(STATE_NAME, &s.config)?;
        if let (Some(regs), Some(saved)) = (&self.smi, &s.smi) {
            regs.restore(saved);
        }
        self.sync_pm();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::bus::Bus;
    use crate::chipset::testing::{config_bus, read, write};
    use crate::pci::PciDevice;

    const SLOT: u32 = 0x1f;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Option<u16>>>);

    impl PmRelocator for Recorder {
        fn set(&self, base: Option<u16>) {
            self.0.lock().unwrap().push(base);
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<Option<u16>> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn setup() -> (Bus, Arc<Mutex<Ich9Lpc>>, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let lpc = Arc::new(Mutex::new(Ich9Lpc::new(rec.clone())));
        (config_bus(SLOT as usize, lpc.clone()), lpc, rec)
    }

    #[test]
    fn identifies_as_a_multifunction_ich9_isa_bridge() {
        let (pio, _, _) = setup();
        assert_eq!(read(&pio, SLOT, 0x00, 4), 0x2918_8086);
        assert_eq!(read(&pio, SLOT, 0x08, 4), 0x0601_0002);
        assert_eq!(read(&pio, SLOT, 0x0e, 1), 0x80);
        assert_eq!(read(&pio, SLOT, 0x2c, 4), 0x1100_1af4);
        // Cache line size stays writable beside the fixed header type.
        write(&pio, SLOT, 0x0c, 1, 0x10);
        assert_eq!(read(&pio, SLOT, 0x0c, 4), 0x0080_0010);
    }

    #[test]
    fn ovmf_pm_programming_places_the_block() {
        let (pio, lpc, rec) = setup();
        assert_eq!(read(&pio, SLOT, 0x40, 4), 1, "I/O space indicator reads 1");
        // OVMF PlatformPei: PMBASE, then ACPI_EN, then RCBA.
        write(&pio, SLOT, 0x40, 4, 0x600);
        assert!(rec.take().is_empty(), "not decoded before ACPI_EN");
        assert_eq!(read(&pio, SLOT, 0x40, 4), 0x601);
        write(&pio, SLOT, 0x44, 1, 0x80);
        assert_eq!(rec.take(), [Some(0x600)]);
        assert_eq!(lpc.lock().unwrap().pm_base(), Some(0x600));
        write(&pio, SLOT, 0xf0, 4, 0xfed1_c000 | 1);
        assert_eq!(read(&pio, SLOT, 0xf0, 4), 0xfed1_c001);
        assert_eq!(lpc.lock().unwrap().rcba(), Some(0xfed1_c000));
        assert!(rec.take().is_empty());
    }

    #[test]
    fn pm_block_moves_and_disappears() {
        let (pio, _, rec) = setup();
        write(&pio, SLOT, 0x44, 1, 0x80);
        assert!(rec.take().is_empty(), "PMBASE 0 decodes nothing");
        // SeaBIOS without a table loader: 0xB000 | 1.
        write(&pio, SLOT, 0x40, 4, 0xb001);
        write(&pio, SLOT, 0x40, 4, 0x600);
        write(&pio, SLOT, 0x44, 1, 0x00);
        write(&pio, SLOT, 0x44, 1, 0x80);
        assert_eq!(rec.take(), [Some(0xb000), Some(0x600), None, Some(0x600)]);
        // Bits below 7 and above 15 do not stick.
        write(&pio, SLOT, 0x40, 4, 0xffff_ffff);
        assert_eq!(read(&pio, SLOT, 0x40, 4), 0xff81);
        assert_eq!(rec.take(), [Some(0xff80)]);
        // The SCI select is stored; reserved bits are not.
        write(&pio, SLOT, 0x44, 1, 0xff);
        assert_eq!(read(&pio, SLOT, 0x44, 1), 0x87);
        assert!(rec.take().is_empty());
    }

    #[test]
    fn pirq_routing_reads_back_and_decodes() {
        let (pio, lpc, _) = setup();
        assert_eq!(read(&pio, SLOT, 0x60, 4), 0x8080_8080);
        assert_eq!(read(&pio, SLOT, 0x68, 4), 0x8080_8080);
        assert!((0..8).all(|p| lpc.lock().unwrap().pirq_route(p).is_none()));
        // SeaBIOS: PIRQA..D = 10, 10, 11, 11 and PIRQE..H = 5, 5, 9, 9, one byte each.
        for (i, irq) in [10, 10, 11, 11].into_iter().enumerate() {
            write(&pio, SLOT, 0x60 + i as u32, 1, irq);
        }
        write(&pio, SLOT, 0x68, 4, 0x0909_0505);
        let l = lpc.lock().unwrap();
        let routes: Vec<_> = (0..8).map(|p| l.pirq_route(p)).collect();
        assert_eq!(routes, [10, 10, 11, 11, 5, 5, 9, 9].map(Some).to_vec());
        assert_eq!(l.pirq_route(8), None);
        drop(l);
        // Reserved bits 6:4 read zero; a reserved IRQ (13) is no route; re-disabling works.
        write(&pio, SLOT, 0x61, 1, 0x7d);
        assert_eq!(read(&pio, SLOT, 0x61, 1), 0x0d);
        assert_eq!(lpc.lock().unwrap().pirq_route(1), None);
        write(&pio, SLOT, 0x62, 1, 0x8b);
        assert_eq!(lpc.lock().unwrap().pirq_route(2), None);
        // 0x64-0x67 sit between the two groups and are plain storage.
        write(&pio, SLOT, 0x64, 1, 0x0b);
        assert_eq!(lpc.lock().unwrap().pirq_route(4), Some(5));
    }

    #[test]
    fn power_management_and_rcba_registers_are_stored() {
        let (pio, lpc, rec) = setup();
        write(&pio, SLOT, 0xa0, 2, 0x0010);
        write(&pio, SLOT, 0xa0, 1, 0x00);
        write(&pio, SLOT, 0xa2, 1, 0x01);
        write(&pio, SLOT, 0xa4, 2, 0x1234);
        write(&pio, SLOT, 0xa6, 1, 0x06);
        assert_eq!(read(&pio, SLOT, 0xa0, 4), 0x0001_0010);
        assert_eq!(read(&pio, SLOT, 0xa4, 4), 0x0006_1234);
        // RCBA keeps bits 31:14 and the enable bit only.
        write(&pio, SLOT, 0xf0, 4, 0xffff_ffff);
        assert_eq!(read(&pio, SLOT, 0xf0, 4), 0xffff_c001);
        write(&pio, SLOT, 0xf0, 4, 0xfed1_c000);
        assert_eq!(lpc.lock().unwrap().rcba(), None, "not enabled");
        assert!(rec.take().is_empty());
    }

    #[test]
    fn smi_lock_sticks_and_freezes_gbl_smi_en() {
        use crate::chipset::smi::{SMI_EN_APMC_EN, SMI_EN_GBL_SMI_EN};
        let (pio, lpc, _) = setup();
        let regs = Arc::new(SmiRegs::new(SMI_EN_APMC_EN));
        lpc.lock().unwrap().set_smi_regs(regs.clone());
        // OVMF: enable SMIs, then lock.
        regs.set_enable(SMI_EN_GBL_SMI_EN | SMI_EN_APMC_EN);
        write(&pio, SLOT, 0xa0, 1, 0x10);
        regs.set_enable(SMI_EN_APMC_EN);
        assert_eq!(regs.enable(), SMI_EN_GBL_SMI_EN | SMI_EN_APMC_EN);
        write(&pio, SLOT, 0xa0, 1, 0x00);
        assert_eq!(
            read(&pio, SLOT, 0xa0, 1),
            0x10,
            "SMI_LOCK sticks until reset"
        );
        lpc.lock().unwrap().reset();
        assert_eq!(read(&pio, SLOT, 0xa0, 1), 0x00);
    }

    #[test]
    fn reset_restores_power_on_values_and_reports_the_pm_block_gone() {
        let (pio, lpc, rec) = setup();
        write(&pio, SLOT, 0x40, 4, 0x600);
        write(&pio, SLOT, 0x44, 1, 0x80);
        write(&pio, SLOT, 0x60, 1, 0x0a);
        write(&pio, SLOT, 0xa0, 2, 0x0010);
        rec.take();
        lpc.lock().unwrap().reset();
        assert_eq!(rec.take(), [None]);
        assert_eq!(read(&pio, SLOT, 0x40, 4), 1);
        assert_eq!(read(&pio, SLOT, 0x44, 1), 0);
        assert_eq!(read(&pio, SLOT, 0x60, 1), 0x80);
        assert_eq!(read(&pio, SLOT, 0xa0, 2), 0);
        assert_eq!(read(&pio, SLOT, 0x0e, 1), 0x80);
        lpc.lock().unwrap().reset();
        assert!(rec.take().is_empty());
    }

    #[test]
    fn hostile_accesses_change_nothing() {
        let (pio, lpc, rec) = setup();
        // Extended space through the legacy mechanism is out of reach; a write through
        // PciDevice past the dword is dropped.
        let mut l = lpc.lock().unwrap();
        assert!(l.write_config(0x10, 3, &[0xff, 0xff]).is_empty());
        assert!(l.write_config(0x400, 0, &[0xff]).is_empty());
        assert_eq!(l.read_config(0x400), 0);
        drop(l);
        assert_eq!(read(&pio, SLOT, 0x40, 4), 1);
        assert!(rec.take().is_empty());
    }

    #[test]
    fn pm_base_pirq_routes_and_smi_lock_survive_restore() {
        use crate::chipset::smi::{SMI_EN_APMC_EN, SMI_EN_GBL_SMI_EN};
        let (pio, lpc, _) = setup();
        let smi = Arc::new(SmiRegs::new(SMI_EN_APMC_EN));
        lpc.lock().unwrap().set_smi_regs(smi.clone());
        write(&pio, SLOT, 0x40, 4, 0x600);
        write(&pio, SLOT, 0x44, 1, 0x80);
        write(&pio, SLOT, 0x60, 4, 0x0b0a_0b0a);
        write(&pio, SLOT, 0xf0, 4, 0xfed1_c001);
        write(&pio, SLOT, 0x04, 2, 0x0007);
        smi.set_enable(SMI_EN_APMC_EN | SMI_EN_GBL_SMI_EN);
        write(&pio, SLOT, 0xa0, 1, 0x10); // SMI_LOCK (OVMF)
        let saved = lpc.lock().unwrap().save_state().unwrap();

        let (pio2, fresh, rec2) = setup();
        let smi2 = Arc::new(SmiRegs::new(SMI_EN_APMC_EN));
        fresh.lock().unwrap().set_smi_regs(smi2.clone());
        fresh.lock().unwrap().restore_state(&saved).unwrap();
        assert_eq!(rec2.take(), [Some(0x600)], "the PM block is placed again");
        for off in [0x04, 0x40, 0x44, 0x60, 0x68, 0xa0, 0xf0] {
            assert_eq!(
                read(&pio2, SLOT, off, 4),
                read(&pio, SLOT, off, 4),
                "{off:#x}"
            );
        }
        assert_eq!(fresh.lock().unwrap().pirq_route(0), Some(10));
        assert_eq!(fresh.lock().unwrap().pirq_route(1), Some(11));
        // SMI_LOCK still sticks and still freezes GBL_SMI_EN.
        write(&pio2, SLOT, 0xa0, 1, 0x00);
        assert_eq!(read(&pio2, SLOT, 0xa0, 1) & 0x10, 0x10);
        smi2.set_enable(0);
        assert_eq!(smi2.enable(), SMI_EN_GBL_SMI_EN);
    }

    #[test]
    fn garbage_lpc_state_is_refused_and_changes_nothing() {
        let (pio, lpc, rec) = setup();
        write(&pio, SLOT, 0x40, 4, 0x600);
        let saved = lpc.lock().unwrap().save_state().unwrap();
        let mut l = lpc.lock().unwrap();
        assert!(l.restore_state(&saved[..saved.len() - 1]).is_err());
        assert!(l.restore_state(&[0; 3]).is_err());
        // Saved without SMI registers: a bridge with them refuses it.
        l.set_smi_regs(Arc::new(SmiRegs::new(0)));
        assert!(l.restore_state(&saved).is_err());
        drop(l);
        assert!(rec.take().is_empty());
        write(&pio, SLOT, 0x44, 1, 0x80);
        assert_eq!(rec.take(), [Some(0x600)], "still works");
    }
}
