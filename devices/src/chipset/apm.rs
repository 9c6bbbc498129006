//! The APM control and status ports 0xB2/0xB3 (ICH9 datasheet 316972, §13.4: APM_CNT and
//! APM_STS; PIIX4 has the same pair).
//!
//! A write to APM_CNT (0xB2) raises an SMI when SMI_EN allows it; firmware uses it to call
//! its SMM handler, APM_STS (0xB3) being scratch space the two sides share. Both bytes are
//! stored and read back. On a machine with SMM the port holds an [`SmiRoute`] and every
//! byte written to APM_CNT goes to [`SmiRoute::command`], which decides (SMI_EN, the
//! negotiated broadcast) and raises the SMI; without one no SMI is ever raised. SeaBIOS
//! only waits on 0xB3 when SMI_EN.APMC_EN is clear, which the ICH9 PM block presets
//! ([`crate::legacy::pm::PmLayout::Ich9`]), so it skips its SMM setup.
//! Insert at 0xB2 with length 2.

use serde::{Deserialize, Serialize};

use super::smi::{SmiFeaturesState, SmiRoute};
use crate::bus::BusDevice;
use crate::state::{Snapshot, StateError, decode, encode};

/// The port of APM_CNT; APM_STS follows it.
pub const APM_CNT_PORT: u64 = 0xb2;
/// Ports the pair covers.
pub const APM_LEN: u64 = 2;

/// APM_CNT and APM_STS.
#[derive(Default)]
pub struct Apm {
    regs: [u8; 2],
    smi: Option<SmiRoute>,
}

impl Apm {
    /// The ports of a machine without SMM: storage only.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ports of a machine with SMM: APM_CNT writes raise SMIs through `route`.
    pub fn with_smi(route: SmiRoute) -> Self {
        Self {
            regs: [0; 2],
            smi: Some(route),
        }
    }

    /// The last value written to APM_CNT (the command an SMI handler would read).
    pub fn control(&self) -> u8 {
        self.regs[0]
    }

    /// Back to power-on values (both 0).
    pub fn reset(&mut self) {
        self.regs = [0; 2];
    }
}

/// The register byte `i` bytes into an access at `offset`.
fn index(offset: u64, i: usize) -> Option<usize> {
    usize::try_from(offset.checked_add(i as u64)?).ok()
}

impl BusDevice for Apm {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = index(offset, i).and_then(|r| self.regs.get(r)) {
                *b = *v;
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let reg = index(offset, i);
            if let Some(b) = reg.and_then(|r| self.regs.get_mut(r)) {
                *b = *v;
            }
        }
        // After both bytes are stored: a word write to 0xB2 sets APM_STS for the handler.
        if index(offset, 0) == Some(0)
            && let (Some(route), Some(&cmd)) = (&self.smi, data.first())
        {
            route.command(cmd);
        }
    }
}

/// The name saved APM ports go by in errors.
const STATE_NAME: &str = "q35/apm";

/// Saved state: both bytes and, on a machine with SMM, the broadcast negotiation the
/// firmware made through fw_cfg (SMI_EN itself is saved with the LPC bridge).
#[derive(Debug, Serialize, Deserialize)]
struct ApmState {
    regs: [u8; 2],
    features: Option<SmiFeaturesState>,
}

impl Snapshot for Apm {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        encode(
            STATE_NAME,
            &ApmState {
                regs: self.regs,
                features: self.smi.as_ref().map(|r| r.features.save()),
            },
        )
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let s: ApmState = decode(STATE_NAME, state)?;
        match (&self.smi, &s.features) {
            (Some(route), Some(f)) => route.features.restore(f).map_err(|asked| {
                StateError::mismatch(
                    STATE_NAME,
                    format!("SMI features {asked:#x} negotiated, not offered here"),
                )
            })?,
            (None, None) => {}
            _ => {
                return Err(StateError::mismatch(
                    STATE_NAME,
                    "saved on a machine with SMM, restored on one without, or the reverse",
                ));
            }
        }
        self.regs = s.regs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::Bus;

    #[test]
    fn stores_control_and_status_through_the_bus() {
        let apm = Arc::new(Mutex::new(Apm::new()));
        let mut pio = Bus::new();
        pio.insert(apm.clone(), APM_CNT_PORT, APM_LEN).unwrap();
        assert!(pio.write(0xb2, &[0x02]));
        assert!(pio.write(0xb3, &[0x5a]));
        let mut b = [0u8; 2];
        assert!(pio.read(0xb2, &mut b));
        assert_eq!(b, [0x02, 0x5a]);
        assert_eq!(apm.lock().unwrap().control(), 0x02);
        // A word write covers both; an access past 0xB3 is not the APM's.
        assert!(pio.write(0xb2, &[0x03, 0x00]));
        assert!(!pio.write(0xb3, &[1, 2]));
        let mut s = [0u8];
        assert!(pio.read(0xb3, &mut s));
        assert_eq!(s, [0x00]);
        apm.lock().unwrap().reset();
        assert_eq!(apm.lock().unwrap().control(), 0);
    }

    #[test]
    fn a_write_to_apm_cnt_raises_an_smi_when_smi_en_allows_it() {
        use crate::chipset::smi::testing::route;
        use crate::chipset::smi::{SMI_EN_APMC_EN, SMI_EN_GBL_SMI_EN, SmiTarget};
        let (r, rec) = route(SMI_EN_APMC_EN);
        let regs = r.regs.clone();
        let mut pio = Bus::new();
        pio.insert(
            Arc::new(Mutex::new(Apm::with_smi(r))),
            APM_CNT_PORT,
            APM_LEN,
        )
        .unwrap();
        assert!(pio.write(0xb2, &[0x00]));
        assert!(
            rec.take().is_empty(),
            "GBL_SMI_EN clear (the power-on value)"
        );
        regs.set_enable(SMI_EN_GBL_SMI_EN | SMI_EN_APMC_EN);
        // A status write alone raises nothing; a command does, a word write too.
        assert!(pio.write(0xb3, &[0x11]));
        assert!(rec.take().is_empty());
        assert!(pio.write(0xb2, &[0x42]));
        assert!(pio.write(0xb2, &[0x43, 0x22]));
        assert_eq!(rec.take(), [SmiTarget::Vcpu(0), SmiTarget::Vcpu(0)]);
        let mut b = [0u8; 2];
        assert!(pio.read(0xb2, &mut b));
        assert_eq!(b, [0x43, 0x22]);
    }

    #[test]
    fn offsets_past_the_pair_are_ignored() {
        let mut apm = Apm::new();
        apm.write(APM_CNT_PORT, 5, &[1]);
        apm.write(APM_CNT_PORT, u64::MAX, &[1, 2]);
        let mut b = [0xee; 2];
        apm.read(APM_CNT_PORT, u64::MAX, &mut b);
        assert_eq!(b, [0xee, 0xee]);
        assert_eq!(apm.regs, [0, 0]);
    }

    #[test]
    fn ports_and_the_negotiated_broadcast_survive_restore() {
        use crate::bus::{Initiator, set_initiator};
        use crate::chipset::smi::testing::route;
        use crate::chipset::smi::{SMI_EN_APMC_EN, SMI_EN_GBL_SMI_EN, SMI_F_BROADCAST, SmiTarget};
        let (r, _) = route(SMI_EN_APMC_EN);
        assert!(r.features.negotiate(SMI_F_BROADCAST));
        let mut apm = Apm::with_smi(r);
        apm.write(APM_CNT_PORT, 1, &[0x5a]);
        let saved = apm.save_state().unwrap();

        let (r2, rec2) = route(SMI_EN_APMC_EN | SMI_EN_GBL_SMI_EN);
        let mut fresh = Apm::with_smi(r2);
        // A machine without SMM refuses the state; garbage too.
        assert!(Apm::new().restore_state(&saved).is_err());
        assert!(fresh.restore_state(&saved[..1]).is_err());
        fresh.restore_state(&saved).unwrap();
        let mut b = [0u8; 2];
        fresh.read(APM_CNT_PORT, 0, &mut b);
        assert_eq!(b, [0, 0x5a]);
        // The broadcast negotiated before the save still holds: an SMI goes to all.
        set_initiator(Initiator {
            vcpu: Some(1),
            ..Initiator::default()
        });
        fresh.write(APM_CNT_PORT, 0, &[0x42]);
        assert_eq!(rec2.take(), [SmiTarget::All]);
    }
}
