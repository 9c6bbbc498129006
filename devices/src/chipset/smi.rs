//! System Management Interrupts on the Q35 platform: when a write to APM_CNT (port 0xB2)
//! raises an SMI, and on which vCPUs.
//!
//! Data flow: the ICH9 PM block keeps SMI_EN and SMI_STS (PMBASE+0x30/+0x34) in a shared
//! [`SmiRegs`]; the APM port ([`super::apm::Apm`]) holds an [`SmiRoute`] and, on a write
//! to APM_CNT, asks [`SmiRoute::command`] whether the write raises an SMI: only when SMI_EN
//! has both GBL_SMI_EN (bit 0) and APMC_EN (bit 5) set (ICH9 datasheet 316972 §13.8.3.12),
//! and not for the ACPI enable/disable commands 0x02/0x03, which stay plain writes as on
//! QEMU's ICH9. A raised SMI sets SMI_STS.APM_STS and goes to [`SmiSink::raise`]: on the
//! vCPU that wrote the port (from [`crate::bus::initiator`]), or on every vCPU once the
//! firmware negotiated broadcast SMIs.
//!
//! Broadcast is negotiated through three fw_cfg files (QEMU's ICH9 interface, which OVMF's
//! `SmmControl2Dxe`/`SmiFeatures.c` drive): the firmware reads
//! `etc/smi/supported-features` (LE64, bit 0 broadcast), writes the subset it wants to
//! `etc/smi/requested-features`, then selects `etc/smi/features-ok`, whose byte reads 1
//! when the request was a subset of what is supported (it is then in force until reset;
//! later requests change nothing) and 0 otherwise. [`SmiFeatures::add_to`] puts the three
//! files on a [`FwCfg`].
//!
//! SeaBIOS: the PM block presets APMC_EN but not GBL_SMI_EN, so SeaBIOS believes SMM is
//! set up, never waits on an SMI, and its 0xB2 writes raise nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::fw_cfg::{FwCfg, FwCfgError};

/// SMI_EN bit 0: SMIs may happen at all.
pub const SMI_EN_GBL_SMI_EN: u32 = 1 << 0;
/// SMI_EN bit 5: a write to APM_CNT raises an SMI.
pub const SMI_EN_APMC_EN: u32 = 1 << 5;
/// SMI_STS bit 5: the last SMI came from APM_CNT.
pub const SMI_STS_APM_STS: u32 = 1 << 5;
/// APM commands that only switch ACPI mode (FADT ACPI_ENABLE / ACPI_DISABLE).
const APM_ACPI_ENABLE: u8 = 0x02;
const APM_ACPI_DISABLE: u8 = 0x03;

/// The fw_cfg files of the negotiation.
pub const FILE_SUPPORTED: &str = "etc/smi/supported-features";
pub const FILE_REQUESTED: &str = "etc/smi/requested-features";
pub const FILE_OK: &str = "etc/smi/features-ok";
/// Feature bit 0: an SMI goes to every vCPU.
pub const SMI_F_BROADCAST: u64 = 1 << 0;

/// SMI_EN and SMI_STS, shared by the PM block (which decodes them) and the APM port.
#[derive(Debug)]
pub struct SmiRegs {
    en: AtomicU32,
    sts: AtomicU32,
    reset_en: u32,
    /// GEN_PMCON_1.SMI_LOCK: GBL_SMI_EN keeps its value until reset.
    gbl_locked: AtomicBool,
}

impl SmiRegs {
    /// Registers whose SMI_EN powers on (and resets) to `reset_en`.
    pub fn new(reset_en: u32) -> Self {
        Self {
            en: AtomicU32::new(reset_en),
            sts: AtomicU32::new(0),
            reset_en,
            gbl_locked: AtomicBool::new(false),
        }
    }

    pub fn enable(&self) -> u32 {
        self.en.load(Ordering::SeqCst)
    }

    /// A write of SMI_EN; GBL_SMI_EN keeps its value once locked.
    pub fn set_enable(&self, v: u32) {
        let v = if self.gbl_locked.load(Ordering::SeqCst) {
            (v & !SMI_EN_GBL_SMI_EN) | (self.enable() & SMI_EN_GBL_SMI_EN)
        } else {
            v
        };
        self.en.store(v, Ordering::SeqCst);
    }

    /// GEN_PMCON_1.SMI_LOCK was set: GBL_SMI_EN is frozen until reset.
    pub fn lock_gbl_smi_en(&self) {
        self.gbl_locked.store(true, Ordering::SeqCst);
    }

    pub fn status(&self) -> u32 {
        self.sts.load(Ordering::SeqCst)
    }

    /// Write-one-to-clear of SMI_STS bits.
    pub fn clear_status(&self, bits: u32) {
        self.sts.fetch_and(!bits, Ordering::SeqCst);
    }

    fn set_status(&self, bits: u32) {
        self.sts.fetch_or(bits, Ordering::SeqCst);
    }

    /// SMI_EN, SMI_STS and the GBL_SMI_EN lock, for a saved VM.
    pub fn save(&self) -> SmiRegsState {
        SmiRegsState {
            enable: self.enable(),
            status: self.status(),
            gbl_locked: self.gbl_locked.load(Ordering::SeqCst),
        }
    }

    /// Takes back [`SmiRegs::save`]'s values.
    pub fn restore(&self, state: &SmiRegsState) {
        self.en.store(state.enable, Ordering::SeqCst);
        self.sts.store(state.status, Ordering::SeqCst);
        self.gbl_locked.store(state.gbl_locked, Ordering::SeqCst);
    }

    /// Back to power-on values.
    pub fn reset(&self) {
        self.gbl_locked.store(false, Ordering::SeqCst);
        self.set_enable(self.reset_en);
        self.sts.store(0, Ordering::SeqCst);
    }
}

/// The saved [`SmiRegs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmiRegsState {
    pub enable: u32,
    pub status: u32,
    pub gbl_locked: bool,
}

/// The saved [`SmiFeatures`]: what the firmware negotiated (its offer is configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmiFeaturesState {
    pub negotiated: u64,
    pub ok: bool,
}

/// Where an SMI goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmiTarget {
    /// The vCPU with this index.
    Vcpu(u32),
    /// Every vCPU.
    All,
}

/// Delivers SMIs. The helper implements it: it records the SMI and injects it
/// (KVM_SMI) on the target vCPU before that vCPU next enters the guest. Called on the vCPU
/// thread of the APM write, with the APM device locked.
pub trait SmiSink: Send + Sync {
    fn raise(&self, target: SmiTarget);
}

/// The broadcast negotiation's state (see the module header).
#[derive(Debug)]
pub struct SmiFeatures {
    supported: u64,
    negotiated: AtomicU64,
    ok: AtomicBool,
}

impl SmiFeatures {
    /// A negotiation offering `supported` (e.g. [`SMI_F_BROADCAST`]).
    pub fn new(supported: u64) -> Self {
        Self {
            supported,
            negotiated: AtomicU64::new(0),
            ok: AtomicBool::new(false),
        }
    }

    /// The firmware selected `etc/smi/features-ok` after writing `requested`: true when
    /// the features are (now, or already were) in force.
    pub fn negotiate(&self, requested: u64) -> bool {
        if self.ok.load(Ordering::SeqCst) {
            return true;
        }
        if requested & !self.supported != 0 {
            crate::guest_warn!(
                "smi: firmware asks for features {requested:#x}, only {:#x} offered",
                self.supported
            );
            return false;
        }
        self.negotiated.store(requested, Ordering::SeqCst);
        self.ok.store(true, Ordering::SeqCst);
        true
    }

    /// Whether SMIs go to every vCPU.
    /// The negotiation's outcome, for a saved VM.
    pub fn save(&self) -> SmiFeaturesState {
        SmiFeaturesState {
            negotiated: self.negotiated.load(Ordering::SeqCst),
            ok: self.ok.load(Ordering::SeqCst),
        }
    }

    /// Takes back a saved outcome; one asking for features this machine does not offer
    /// is refused (`Err` with the features) and changes nothing.
    pub fn restore(&self, state: &SmiFeaturesState) -> Result<(), u64> {
        if state.negotiated & !self.supported != 0 {
            return Err(state.negotiated);
        }
        self.negotiated.store(state.negotiated, Ordering::SeqCst);
        self.ok.store(state.ok, Ordering::SeqCst);
        Ok(())
    }

    pub fn broadcast(&self) -> bool {
        self.negotiated.load(Ordering::SeqCst) & SMI_F_BROADCAST != 0
    }

    /// Platform reset: nothing negotiated.
    pub fn reset(&self) {
        self.negotiated.store(0, Ordering::SeqCst);
        self.ok.store(false, Ordering::SeqCst);
    }

    /// Adds the three negotiation files to `cfg`; selecting `features-ok` runs
    /// [`SmiFeatures::negotiate`] on what the guest wrote to `requested-features`.
    pub fn add_to(self: &Arc<Self>, cfg: &mut FwCfg) -> Result<(), FwCfgError> {
        cfg.add_file(FILE_SUPPORTED, self.supported.to_le_bytes().to_vec())?;
        cfg.add_file_writable(FILE_REQUESTED, vec![0; 8])?;
        let me = self.clone();
        cfg.add_file_on_select(
            FILE_OK,
            vec![0],
            Box::new(move |files| {
                let requested = files
                    .file_data(FILE_REQUESTED)
                    .and_then(|d| d.get(..8))
                    .and_then(|d| <[u8; 8]>::try_from(d).ok())
                    .map_or(0, u64::from_le_bytes);
                vec![u8::from(me.negotiate(requested))]
            }),
        )
    }
}

/// What the APM port needs to raise SMIs: on a machine without SMM it has none.
#[derive(Clone)]
pub struct SmiRoute {
    pub regs: Arc<SmiRegs>,
    pub features: Arc<SmiFeatures>,
    pub sink: Arc<dyn SmiSink>,
}

impl SmiRoute {
    /// A write of `value` to APM_CNT: raises the SMI it calls for, if SMI_EN allows one.
    /// Returns where it went.
    pub fn command(&self, value: u8) -> Option<SmiTarget> {
        if matches!(value, APM_ACPI_ENABLE | APM_ACPI_DISABLE) {
            return None;
        }
        let needed = SMI_EN_GBL_SMI_EN | SMI_EN_APMC_EN;
        if self.regs.enable() & needed != needed {
            return None;
        }
        self.regs.set_status(SMI_STS_APM_STS);
        let target = if self.features.broadcast() {
            SmiTarget::All
        } else {
            SmiTarget::Vcpu(crate::bus::initiator().vcpu.unwrap_or(0))
        };
        self.sink.raise(target);
        Some(target)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;

    use super::*;

    /// Records the SMIs raised.
    #[derive(Default)]
    pub struct SmiRecorder(pub Mutex<Vec<SmiTarget>>);

    impl SmiSink for SmiRecorder {
        fn raise(&self, target: SmiTarget) {
            self.0.lock().unwrap().push(target);
        }
    }

    impl SmiRecorder {
        pub fn take(&self) -> Vec<SmiTarget> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// A route with SMI_EN at `en`, offering broadcast, and the recorder it raises on.
    pub fn route(en: u32) -> (SmiRoute, Arc<SmiRecorder>) {
        let rec = Arc::new(SmiRecorder::default());
        let route = SmiRoute {
            regs: Arc::new(SmiRegs::new(en)),
            features: Arc::new(SmiFeatures::new(SMI_F_BROADCAST)),
            sink: rec.clone(),
        };
        (route, rec)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::route;
    use super::*;
    use crate::bus::{Initiator, set_initiator};

    #[test]
    fn apm_write_raises_an_smi_only_with_gbl_smi_en_and_apmc_en() {
        let (r, rec) = route(SMI_EN_APMC_EN);
        // SeaBIOS's view: APMC_EN preset, GBL_SMI_EN clear: nothing.
        assert_eq!(r.command(0x00), None);
        r.regs.set_enable(SMI_EN_GBL_SMI_EN);
        assert_eq!(r.command(0x00), None);
        assert_eq!(r.regs.status(), 0);
        r.regs.set_enable(SMI_EN_GBL_SMI_EN | SMI_EN_APMC_EN);
        set_initiator(Initiator {
            vcpu: Some(3),
            smm: false,
        });
        assert_eq!(r.command(0x5a), Some(SmiTarget::Vcpu(3)));
        set_initiator(Initiator::default());
        assert_eq!(rec.take(), [SmiTarget::Vcpu(3)]);
        assert_eq!(r.regs.status(), SMI_STS_APM_STS);
        r.regs.clear_status(SMI_STS_APM_STS);
        assert_eq!(r.regs.status(), 0);
        // ACPI enable/disable never raise one.
        assert_eq!(r.command(0x02), None);
        assert_eq!(r.command(0x03), None);
        assert!(rec.take().is_empty());
        r.regs.reset();
        assert_eq!(r.regs.enable(), SMI_EN_APMC_EN);
    }

    #[test]
    fn smi_lock_freezes_gbl_smi_en_until_reset() {
        let regs = SmiRegs::new(SMI_EN_APMC_EN);
        regs.set_enable(SMI_EN_GBL_SMI_EN | SMI_EN_APMC_EN);
        regs.lock_gbl_smi_en();
        regs.set_enable(0);
        assert_eq!(regs.enable(), SMI_EN_GBL_SMI_EN, "APMC_EN still writable");
        regs.reset();
        regs.set_enable(0);
        assert_eq!(regs.enable(), 0);
    }

    #[test]
    fn broadcast_once_negotiated_reaches_every_vcpu() {
        let (r, rec) = route(SMI_EN_GBL_SMI_EN | SMI_EN_APMC_EN);
        assert_eq!(r.command(0), Some(SmiTarget::Vcpu(0)));
        // Asking for more than offered fails and changes nothing.
        assert!(!r.features.negotiate(0b110));
        assert!(!r.features.broadcast());
        assert!(r.features.negotiate(SMI_F_BROADCAST));
        assert_eq!(r.command(0), Some(SmiTarget::All));
        // Settled until reset: a later request does not undo it.
        assert!(r.features.negotiate(0));
        assert!(r.features.broadcast());
        r.features.reset();
        assert!(!r.features.broadcast());
        assert_eq!(rec.take(), [SmiTarget::Vcpu(0), SmiTarget::All]);
    }
}
