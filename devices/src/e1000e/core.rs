//! The register file behind BAR0 and the interrupt logic, shared by the vCPU thread (MMIO)
//! and the network worker (frames). See the parent module for the data flow.
//!
//! Most registers are plain storage (a driver writes them and reads them back); the ones
//! with side effects are decoded in [`Core::read`] and [`Core::write`]: CTRL (reset),
//! STATUS (link), EECD/EERD (the EEPROM), MDIC (the PHY), the interrupt registers, the
//! ring tails (which wake the worker) and the statistics (clear on read).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::regs::*;
use super::tx::TxState;
use crate::legacy::IrqLine;
use crate::pci::{MsiRoutes, MsixInterrupt, MsixState};

/// MSI-X vectors of the 82574: RxQ0, RxQ1, TxQ0, TxQ1, Other.
pub const MSIX_VECTORS: u16 = 5;
/// The interrupt index the MSI capability uses, after the MSI-X vectors: the machine
/// gives the function `MSIX_VECTORS + 1` interrupts.
pub const MSI_VECTOR: u16 = MSIX_VECTORS;
/// EEPROM words and the value they must sum to.
pub const EEPROM_WORDS: usize = 64;
pub const EEPROM_SUM: u16 = 0xbaba;
/// PHY address of the internal PHY, and its identifier (BME1000, the 82574's PHY).
pub const PHY_ADDR: u32 = 1;
pub const PHY_ID1: u16 = 0x0141;
pub const PHY_ID2: u16 = 0x0cb0;

/// PHY registers (IEEE 802.3 clause 22, plus the M88-style specific status).
pub mod phy {
    pub const BMCR: usize = 0;
    pub const BMSR: usize = 1;
    pub const ID1: usize = 2;
    pub const ID2: usize = 3;
    pub const ANAR: usize = 4;
    pub const ANLPAR: usize = 5;
    pub const ANER: usize = 6;
    pub const GCR: usize = 9;
    pub const GSR: usize = 10;
    pub const ESR: usize = 15;
    pub const SPEC_STATUS: usize = 17;
    pub const BMCR_RESET: u16 = 1 << 15;
    pub const BMCR_RESTART_AN: u16 = 1 << 9;
    /// BMSR: link up (bit 2) and autonegotiation complete (bit 5), with the abilities.
    pub const BMSR_LINK: u16 = 1 << 2;
    pub const BMSR_AN_COMPLETE: u16 = 1 << 5;
    pub const BMSR_ABILITIES: u16 = 0x7949;
}

/// Frame counters and the link state, readable while the card runs (the helper's view;
/// the guest reads the statistics registers).
#[derive(Default, Debug)]
pub struct E1000eCounters {
    pub link_up: AtomicBool,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
    /// Descriptors the guest got wrong: outside RAM, impossible lengths or types.
    pub descriptor_errors: AtomicU64,
}

impl E1000eCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// How the card raises interrupts.
pub struct E1000eInterrupts {
    /// Interrupts 0..5 are the MSI-X vectors, 5 is MSI.
    pub msix: Arc<dyn MsixInterrupt>,
    /// Told about every MSI-X table and MSI capability change.
    pub routes: Arc<dyn MsiRoutes>,
    /// INTA#, level-triggered, while neither MSI-X nor MSI is on.
    pub intx: Arc<dyn IrqLine>,
}

/// The MSI capability's state (one message, 64-bit address).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Msi {
    pub enabled: bool,
    pub addr: u64,
    pub data: u32,
}

/// Interrupt delivery: MSI-X, MSI or INTx, whichever the guest turned on.
pub(crate) struct Irq {
    pub msix: MsixState,
    pub msi: Msi,
    trigger: Arc<dyn MsixInterrupt>,
    routes: Arc<dyn MsiRoutes>,
    intx: Arc<dyn IrqLine>,
    intx_level: bool,
    pub intx_disabled: bool,
}

impl Irq {
    /// Programs the MSI route after a change to the capability.
    pub fn set_msi(&mut self, msi: Msi) {
        if msi != self.msi {
            self.msi = msi;
            self.routes
                .update(MSI_VECTOR, msi.addr, msi.data, !msi.enabled);
        }
    }

    fn fire_msi(&self) {
        if let Err(e) = self.trigger.trigger(MSI_VECTOR) {
            log::warn!("e1000e: cannot raise MSI: {e}");
        }
    }

    fn set_intx(&mut self, level: bool) {
        if level != self.intx_level {
            self.intx_level = level;
            self.intx.set_level(level);
        }
    }
}

/// The card's registers and state behind BAR0.
pub struct Core {
    regs: Box<[u32]>,
    pub(crate) eeprom: [u16; EEPROM_WORDS],
    phy: [u16; 32],
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) irq: Irq,
    /// Wakes the worker: a ring tail moved or a queue was enabled.
    doorbell: Arc<EventFd>,
    link_up: bool,
    pub(crate) counters: Arc<E1000eCounters>,
    pub(crate) tx: TxState,
    /// Saved for a VM's save: the rings are no longer run (see [`super::state`]).
    pub(crate) frozen: bool,
}

/// The register file's saved state: the registers that are not zero, EEPROM, PHY, the
/// packet being gathered and the link as the guest last saw it.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CoreSaved {
    regs: Vec<(u32, u32)>,
    eeprom: Vec<u16>,
    phy: Vec<u16>,
    link_up: bool,
    tx: TxState,
    msi: (bool, u64, u32),
    intx_disabled: bool,
}

impl Core {
    pub(crate) fn new(
        mem: GuestMemoryMmap,
        mac: [u8; 6],
        interrupts: E1000eInterrupts,
        doorbell: Arc<EventFd>,
        counters: Arc<E1000eCounters>,
    ) -> Self {
        let mut core = Core {
            regs: vec![0; (BAR0_SIZE / 4) as usize].into_boxed_slice(),
            eeprom: eeprom_image(mac),
            phy: [0; 32],
            mem,
            irq: Irq {
                msix: MsixState::new(
                    MSIX_VECTORS,
                    interrupts.msix.clone(),
                    interrupts.routes.clone(),
                ),
                msi: Msi::default(),
                trigger: interrupts.msix,
                routes: interrupts.routes,
                intx: interrupts.intx,
                intx_level: false,
                intx_disabled: false,
            },
            doorbell,
            link_up: false,
            counters,
            tx: TxState::default(),
            frozen: false,
        };
        core.reset();
        core
    }

    /// The card's address, as the EEPROM holds it.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        for (i, w) in self.eeprom[..3].iter().enumerate() {
            mac[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
        }
        mac
    }

    /// Power-on state, as after CTRL.RST: registers at their defaults, the receive address
    /// loaded from the EEPROM, the PHY autonegotiated, a link change pending if linked.
    pub fn reset(&mut self) {
        self.regs.fill(0);
        self.set(CTRL, STATUS_FD | CTRL_SLU | 1 << 5);
        self.set(RXCSUM, RXCSUM_IPOFLD | RXCSUM_TUOFLD);
        // PBA: 20 KiB receive, 20 KiB transmit packet buffer.
        self.set(0x1000, 0x0014_0014);
        // EEMNGCTL: configuration done for port 0.
        self.set(0x1010, 1 << 18);
        self.set(VET, 0x8100);
        let mac = self.mac();
        self.set(RA, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        self.set(RA + 4, u32::from(mac[4]) | u32::from(mac[5]) << 8 | RAH_AV);
        self.phy_reset();
        self.tx = TxState::default();
        if self.link_up {
            self.set(ICR, ICR_LSC);
        }
        self.update_intx();
    }

    fn phy_reset(&mut self) {
        self.phy = [0; 32];
        self.phy[phy::BMCR] = 0x1140;
        self.phy[phy::ID1] = PHY_ID1;
        self.phy[phy::ID2] = PHY_ID2;
        self.phy[phy::ANAR] = 0x0de1;
        self.phy[phy::ANLPAR] = 0x45e1;
        self.phy[phy::ANER] = 0x000f;
        self.phy[phy::GCR] = 0x0e00;
        self.phy[phy::ESR] = 0x3000;
        self.update_phy_link();
    }

    fn update_phy_link(&mut self) {
        let up = self.link_up;
        self.phy[phy::BMSR] = phy::BMSR_ABILITIES
            | if up {
                phy::BMSR_LINK | phy::BMSR_AN_COMPLETE
            } else {
                0
            };
        // 1000BASE-T status: partner full duplex capable, local and remote receivers OK.
        self.phy[phy::GSR] = if up { 0x3c00 } else { 0 };
        // Specific status: 1000 Mb/s, full duplex, resolved, link.
        self.phy[phy::SPEC_STATUS] = if up { 0xac00 } else { 0 };
    }

    /// Whether the cable is plugged in (the worker has a peer); a change raises LSC.
    pub fn set_link(&mut self, up: bool) {
        self.counters.link_up.store(up, Ordering::Relaxed);
        if up != self.link_up {
            self.link_up = up;
            self.update_phy_link();
            self.raise(ICR_LSC);
        }
    }

    pub(crate) fn get(&self, reg: u64) -> u32 {
        self.regs.get((reg / 4) as usize).copied().unwrap_or(0)
    }

    pub(crate) fn set(&mut self, reg: u64, value: u32) {
        if let Some(r) = self.regs.get_mut((reg / 4) as usize) {
            *r = value;
        }
    }

    /// Adds `n` to a statistics register, or to a low/high pair when `wide`.
    pub(crate) fn stat(&mut self, reg: u64, n: u64, wide: bool) {
        let low = u64::from(self.get(reg)) + n;
        self.set(reg, low as u32);
        if wide {
            let high = self.get(reg + 4).wrapping_add((low >> 32) as u32);
            self.set(reg + 4, high);
        } else if low > u64::from(u32::MAX) {
            self.set(reg, u32::MAX);
        }
    }

    /// A guest read of dword `offset` in BAR0.
    pub fn read(&mut self, offset: u64) -> u32 {
        match offset {
            CTRL | CTRL_DUP => self.get(CTRL) & !(CTRL_RST | CTRL_PHY_RST),
            STATUS => self.status(),
            EECD => {
                let eecd = self.get(EECD);
                let gnt = if eecd & EECD_REQ != 0 { EECD_GNT } else { 0 };
                (eecd & !EECD_GNT) | gnt | EECD_PRES | EECD_AUTO_RD
            }
            ICR => self.read_icr(),
            ICS => self.get(ICR),
            IMC => 0,
            STATS_START..STATS_END => {
                let v = self.get(offset);
                self.set(offset, 0);
                v
            }
            _ => self.get(offset),
        }
    }

    fn status(&self) -> u32 {
        let mut s = STATUS_FD | STATUS_SPEED_1000 | STATUS_ASDV_1000;
        if self.link_up {
            s |= STATUS_LU;
        }
        if self.get(CTRL) & CTRL_GIO_MASTER_DISABLE == 0 {
            s |= STATUS_GIO_MASTER_ENABLE;
        }
        s
    }

    fn read_icr(&mut self) -> u32 {
        let icr = self.get(ICR);
        let ims = self.get(IMS);
        let asserted = icr & ims != 0;
        let value = if asserted {
            icr | ICR_INT_ASSERTED
        } else {
            icr
        };
        if asserted && self.get(CTRL_EXT) & CTRL_EXT_IAME != 0 {
            self.set(IMS, ims & !self.get(IAM));
        }
        self.set(ICR, 0);
        self.update_intx();
        value
    }

    /// A guest write of dword `offset` in BAR0.
    pub fn write(&mut self, offset: u64, value: u32) {
        match offset {
            CTRL | CTRL_DUP => {
                if value & CTRL_RST != 0 {
                    self.reset();
                    self.ring();
                    return;
                }
                let was = self.get(CTRL);
                if value & CTRL_PHY_RST != 0 {
                    self.phy_reset();
                }
                self.set(CTRL, value & !(CTRL_RST | CTRL_PHY_RST));
                if was & CTRL_SLU == 0 && value & CTRL_SLU != 0 && self.link_up {
                    // Setting link up brings the link up: tell the driver.
                    self.raise(ICR_LSC);
                }
            }
            STATUS => {}
            EERD => self.eeprom_read(value),
            MDIC => self.mdic(value),
            ICR => {
                // Write 1 to clear.
                let icr = self.get(ICR) & !value;
                self.set(ICR, icr);
                self.update_intx();
            }
            ICS => self.raise(value & !ICR_INT_ASSERTED),
            IMS => {
                let ims = self.get(IMS) | value;
                let newly = value & !self.get(IMS);
                self.set(IMS, ims);
                // Causes already pending and now enabled are delivered.
                let pending = self.get(ICR) & newly;
                self.deliver(pending);
            }
            IMC => {
                let ims = self.get(IMS) & !value;
                self.set(IMS, ims);
                self.update_intx();
            }
            RDT | TDT => {
                self.set(offset, value & 0xffff);
                self.ring();
            }
            RDH | TDH => self.set(offset, value & 0xffff),
            RDLEN | TDLEN => self.set(offset, value & 0x000f_ff80),
            RDBAL | TDBAL => self.set(offset, value & !0xf),
            RCTL | TCTL => {
                self.set(offset, value);
                self.ring();
            }
            STATS_START..STATS_END => {}
            _ => self.set(offset, value),
        }
    }

    fn ring(&self) {
        if let Err(e) = self.doorbell.write(1) {
            log::warn!("e1000e: cannot wake the worker: {e}");
        }
    }

    fn eeprom_read(&mut self, value: u32) {
        if value & EERD_START == 0 {
            self.set(EERD, value & !EERD_DONE);
            return;
        }
        let addr = (value >> EERD_ADDR_SHIFT) & 0x3fff;
        let data = self.eeprom.get(addr as usize).copied().unwrap_or(0xffff);
        let result = (value & 0xfffc) | EERD_DONE | u32::from(data) << 16;
        self.set(EERD, result);
    }

    fn mdic(&mut self, value: u32) {
        let reg = ((value >> MDIC_REG_SHIFT) & 0x1f) as usize;
        let addr = (value >> MDIC_PHY_SHIFT) & 0x1f;
        let op = value & (3 << 26);
        let mut result = value & !(MDIC_READY | MDIC_ERROR);
        if addr != PHY_ADDR || !(op == MDIC_OP_READ || op == MDIC_OP_WRITE) {
            result |= MDIC_ERROR;
        } else if op == MDIC_OP_READ {
            result = (result & !MDIC_DATA_MASK) | u32::from(self.phy[reg]);
        } else {
            self.phy_write(reg, value as u16);
        }
        self.set(MDIC, result | MDIC_READY);
        // MDIC.IE: MDI access done interrupt.
        if value & (1 << 29) != 0 {
            self.raise(1 << 9);
        }
    }

    fn phy_write(&mut self, reg: usize, v: u16) {
        match reg {
            phy::BMCR if v & phy::BMCR_RESET != 0 => self.phy_reset(),
            phy::BMCR => {
                self.phy[reg] = v & !phy::BMCR_RESTART_AN;
                if v & phy::BMCR_RESTART_AN != 0 && self.link_up {
                    self.raise(ICR_LSC);
                }
            }
            // Status and identity are read-only.
            phy::BMSR | phy::ID1 | phy::ID2 | phy::ANLPAR | phy::GSR | phy::SPEC_STATUS => {}
            _ => self.phy[reg] = v,
        }
    }

    /// Sets interrupt causes (`ICR_*`) and delivers the enabled ones. Under MSI-X the
    /// queue bits follow: receive causes set RxQ0, transmit causes TxQ0, others Other.
    pub fn raise(&mut self, causes: u32) {
        let mut causes = causes;
        if self.irq.msix.enabled() {
            if causes & (ICR_RXT0 | ICR_RXDMT0 | ICR_RXO) != 0 {
                causes |= ICR_RXQ0;
            }
            if causes & (ICR_TXDW | ICR_TXQE) != 0 {
                causes |= ICR_TXQ0;
            }
            if causes & !(ICR_RXT0 | ICR_RXDMT0 | ICR_RXO | ICR_TXDW | ICR_TXQE | ICR_MSIX_MASK)
                != 0
            {
                causes |= ICR_OTHER;
            }
        }
        let icr = self.get(ICR) | causes;
        self.set(ICR, icr);
        self.deliver(causes);
    }

    /// Sends the interrupts `causes` (just set or just unmasked) call for.
    fn deliver(&mut self, causes: u32) {
        let enabled = causes & self.get(IMS);
        if self.irq.msix.enabled() {
            let ivar = self.get(IVAR);
            for (field, bit) in [ICR_RXQ0, ICR_RXQ1, ICR_TXQ0, ICR_TXQ1, ICR_OTHER]
                .into_iter()
                .enumerate()
            {
                if enabled & bit == 0 {
                    continue;
                }
                let entry = (ivar >> (4 * field)) & 0xf;
                if entry & IVAR_VALID == 0 {
                    continue;
                }
                self.irq.msix.signal((entry & 7) as u16);
                // Auto-clear of the cause and auto-mask of the vector's bit.
                let icr = self.get(ICR) & !(bit & self.get(EIAC));
                self.set(ICR, icr);
                if self.get(CTRL_EXT) & CTRL_EXT_EIAME != 0 {
                    let ims = self.get(IMS) & !(bit & self.get(IAM));
                    self.set(IMS, ims);
                }
            }
        } else if self.irq.msi.enabled && enabled != 0 {
            self.irq.fire_msi();
        }
        self.update_intx();
    }

    /// INTA# follows ICR & IMS while neither MSI-X nor MSI is on.
    pub(crate) fn update_intx(&mut self) {
        let level = !self.irq.msix.enabled()
            && !self.irq.msi.enabled
            && !self.irq.intx_disabled
            && self.get(ICR) & self.get(IMS) != 0;
        self.irq.set_intx(level);
    }

    /// The MSI-X table and PBA in BAR3.
    /// The state [`Core::restore`] takes back.
    pub(crate) fn save(&self) -> CoreSaved {
        CoreSaved {
            regs: (0u32..)
                .zip(self.regs.iter())
                .filter(|(_, v)| **v != 0)
                .map(|(i, v)| (i, *v))
                .collect(),
            eeprom: self.eeprom.to_vec(),
            phy: self.phy.to_vec(),
            link_up: self.link_up,
            tx: self.tx.clone(),
            msi: (self.irq.msi.enabled, self.irq.msi.addr, self.irq.msi.data),
            intx_disabled: self.irq.intx_disabled,
        }
    }

    /// Checks a saved state before [`Core::restore`] takes it.
    pub(crate) fn check(&self, s: &CoreSaved) -> Result<(), String> {
        if s.eeprom.len() != EEPROM_WORDS || s.phy.len() != self.phy.len() {
            return Err(format!(
                "{} EEPROM words, {} PHY registers",
                s.eeprom.len(),
                s.phy.len()
            ));
        }
        match s.regs.iter().find(|(i, _)| *i as usize >= self.regs.len()) {
            Some((i, _)) => Err(format!("register {:#x} past BAR0", u64::from(*i) * 4)),
            None => Ok(()),
        }
    }

    /// Takes back a state [`Core::check`] accepted. The link stays as the connection has
    /// it now: if that differs from what the guest saw, the guest hears of the change.
    pub(crate) fn restore(&mut self, s: &CoreSaved) {
        self.regs.fill(0);
        for &(i, v) in &s.regs {
            if let Some(r) = self.regs.get_mut(i as usize) {
                *r = v;
            }
        }
        self.eeprom.copy_from_slice(&s.eeprom[..EEPROM_WORDS]);
        self.phy.copy_from_slice(&s.phy[..32]);
        self.tx = s.tx.clone();
        let (enabled, addr, data) = s.msi;
        self.irq.set_msi(Msi {
            enabled,
            addr,
            data,
        });
        self.irq.intx_disabled = s.intx_disabled;
        self.frozen = false;
        let now = self.link_up;
        self.link_up = s.link_up;
        self.set_link(now);
        self.update_intx();
        // Descriptors the guest handed over before the save are run again by the worker.
        self.ring();
    }

    pub fn msix(&mut self) -> &mut MsixState {
        &mut self.irq.msix
    }
}

/// The EEPROM: the MAC in words 0-2, the identity words, no alternate MAC, and the
/// checksum word 0x3f that makes the first 64 words sum to 0xBABA.
pub fn eeprom_image(mac: [u8; 6]) -> [u16; EEPROM_WORDS] {
    let mut e = [0u16; EEPROM_WORDS];
    for i in 0..3 {
        e[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
    }
    // LED settings: use the defaults.
    e[0x04] = 0xffff;
    e[0x0b] = super::SUBSYSTEM;
    e[0x0c] = super::SUBSYSTEM_VENDOR;
    e[0x0d] = super::DEVICE_ID;
    e[0x0e] = super::VENDOR_ID;
    // Alternate MAC address pointer: none.
    e[0x37] = 0xffff;
    let sum = e[..EEPROM_WORDS - 1]
        .iter()
        .fold(0u16, |s, w| s.wrapping_add(*w));
    e[EEPROM_WORDS - 1] = EEPROM_SUM.wrapping_sub(sum);
    e
}
