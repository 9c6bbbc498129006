//! AHCI SATA controller, PCI 8086:2922 (ICH9), class 01/06/01, with up to six ports of
//! SATA hard disks ([`ata`]) and ATAPI CD/DVD drives ([`atapi`]) over image files.
//!
//! SeaBIOS boots El Torito from an AHCI CD, OVMF drives it with AtaAtapiPassThru, and
//! Linux (`ahci`) and Windows (`storahci`) have inbox drivers for it, so installer ISOs boot
//! and install without virtio drivers.
//!
//! Data flow: the HBA's registers live in BAR5 (ABAR, 4 KiB of MMIO, [`Ahci`] as a
//! [`BusDevice`]): the global block at 0x00 (AHCI 1.3.1 §3.1) and one 0x80-byte block per
//! port from 0x100 ([`port`]). A guest points each port at a command list and a
//! received-FIS area in its RAM, sets PxCMD.FRE and PxCMD.ST, builds a command and writes
//! its bit to PxCI; the port's engine runs the command at once, **synchronously on the
//! vCPU thread of that MMIO write** (image I/O included: simple, and fast enough for
//! installing and booting; a worker thread is the next step), moves the data through the
//! PRDT ([`prdt`]) with vm-memory, and posts the answer FIS ([`fis`]). Each port's PxIS
//! & PxIE feeds the HBA's IS; IS with GHC.IE drives INTA# through [`IrqLine::set_level`]
//! (level-triggered; no MSI). A malformed command is an error for that command (ERR in
//! the task file, PxIS.TFES), logged through `guest_warn!`, never a panic.

pub mod ata;
pub mod atapi;
pub mod backend;
pub mod fis;
pub mod port;
pub mod prdt;
mod state;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

pub use backend::{Drive, DriveKind};
pub use port::{AhciPort, TrayState};

use crate::bus::BusDevice;
use crate::legacy::IrqLine;
use crate::pci::config::BarChange;
use crate::pci::{BarKind, PciConfig, PciDevice, PciError, PciIds};

/// PCI identity: Intel ICH9 AHCI, as QEMU's q35 presents it.
pub const VENDOR_ID: u16 = 0x8086;
pub const DEVICE_ID: u16 = 0x2922;
/// Class 01 (mass storage), subclass 06 (SATA), interface 01 (AHCI 1.0).
const CLASS: u8 = 0x01;
const SUBCLASS: u8 = 0x06;
const PROG_IF: u8 = 0x01;
const REVISION: u8 = 0x02;
const SUBSYSTEM_VENDOR: u16 = 0x1af4;
const SUBSYSTEM: u16 = 0x1100;
/// The ABAR: BAR5, 4 KiB, 32-bit, not prefetchable.
pub const ABAR_INDEX: usize = 5;
pub const ABAR_SIZE: u64 = 0x1000;
/// Interrupt pin register value for INTA#.
const INTERRUPT_PIN_A: u8 = 1;
/// PCI command register: INTx disable.
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// Ports this HBA implements (CAP.NP + 1, all in PI).
pub const NUM_PORTS: usize = 6;

/// Generic host control registers (AHCI 1.3.1 §3.1).
const CAP: u64 = 0x00;
const GHC: u64 = 0x04;
const IS: u64 = 0x08;
const PI: u64 = 0x0c;
const VS: u64 = 0x10;
const CAP2: u64 = 0x24;
/// Port register blocks.
const PORT_BASE: u64 = 0x100;
const PORT_STRIDE: u64 = 0x80;

/// CAP bits: 64-bit addressing, command list override, AHCI only, interface speed.
const CAP_S64A: u32 = 1 << 31;
const CAP_SCLO: u32 = 1 << 24;
const CAP_ISS_SHIFT: u32 = 20;
const CAP_SAM: u32 = 1 << 18;
const CAP_NCS_SHIFT: u32 = 8;
/// The CAP value: 6 ports, 32 slots, Gen3, no NCQ, no staggered spin-up, no port
/// multiplier, no power-management states.
const CAP_VALUE: u32 = CAP_S64A
    | CAP_SCLO
    | port::SPEED_GEN3 << CAP_ISS_SHIFT
    | CAP_SAM
    | (port::SLOTS - 1) << CAP_NCS_SHIFT
    | (NUM_PORTS as u32 - 1);
/// GHC bits.
const GHC_HR: u32 = 1 << 0;
const GHC_IE: u32 = 1 << 1;
const GHC_AE: u32 = 1 << 31;
/// VS: AHCI 1.3.
const VS_VALUE: u32 = 0x0001_0300;
const PI_VALUE: u32 = (1 << NUM_PORTS) - 1;

/// Errors of the AHCI controller and of the commands it runs.
#[derive(Debug, thiserror::Error)]
pub enum AhciError {
    #[error("port {port} does not exist")]
    NoPort { port: usize },
    #[error("the port holds no CD drive")]
    NotCdrom,
    #[error("a disk needs an image")]
    NoImage,
    #[error("image I/O failed")]
    Image(#[source] std::io::Error),
    #[error("the image is read-only")]
    ReadOnly,
    #[error("guest address {addr:#x} is outside RAM")]
    GuestMemory { addr: u64 },
    #[error("the PRDT holds fewer bytes than the command moves")]
    PrdtTooShort,
    #[error("a command FIS of {cfl} dwords is impossible")]
    CommandFisLength { cfl: u8 },
    #[error("the command FIS is not a Register H2D FIS (type {fis_type:#04x})")]
    FisType { fis_type: u8 },
    #[error("unknown command {command:#04x}")]
    UnknownCommand { command: u8 },
    #[error("sectors {lba}+{count} lie past the end of the disk")]
    LbaRange { lba: u64, count: u64 },
    #[error("invalid field in the command")]
    InvalidField,
    #[error("no device on the port")]
    NoDevice,
}

/// The AHCI host bus adapter.
pub struct Ahci {
    config: PciConfig,
    mem: GuestMemoryMmap,
    irq: Arc<dyn IrqLine>,
    ghc: u32,
    is: u32,
    ports: [AhciPort; NUM_PORTS],
    irq_level: bool,
}

impl Ahci {
    /// An HBA with empty ports, reaching guest RAM through `mem` and raising INTA#
    /// through `irq` (a level-triggered line).
    pub fn new(mem: GuestMemoryMmap, irq: Arc<dyn IrqLine>) -> Result<Self, PciError> {
        let mut config = PciConfig::new(PciIds {
            vendor: VENDOR_ID,
            device: DEVICE_ID,
            revision: REVISION,
            class: CLASS,
            subclass: SUBCLASS,
            prog_if: PROG_IF,
            subsystem_vendor: SUBSYSTEM_VENDOR,
            subsystem: SUBSYSTEM,
        });
        config.add_bar(ABAR_INDEX, ABAR_SIZE, BarKind::Mem32, false)?;
        config.set_interrupt_pin(INTERRUPT_PIN_A);
        Ok(Self {
            config,
            mem,
            irq,
            ghc: GHC_AE,
            is: 0,
            ports: std::array::from_fn(|_| AhciPort::new()),
            irq_level: false,
        })
    }

    /// Port `index`, to attach a drive or change a disc.
    pub fn port_mut(&mut self, index: usize) -> Option<&mut AhciPort> {
        self.ports.get_mut(index)
    }

    /// Attaches `drive` to port `index` (before the guest runs).
    pub fn attach(&mut self, index: usize, drive: Drive) -> Result<(), AhciError> {
        self.port(index)?.attach(drive)
    }

    /// Puts a disc in the CD drive on port `index`; returns the disc it replaced.
    pub fn insert_media(&mut self, index: usize, file: File) -> Result<Option<File>, AhciError> {
        self.port(index)?.insert_media(file)
    }

    /// Takes the disc out of the CD drive on port `index`.
    pub fn eject(&mut self, index: usize) -> Result<Option<File>, AhciError> {
        self.port(index)?.eject()
    }

    fn port(&mut self, index: usize) -> Result<&mut AhciPort, AhciError> {
        self.ports
            .get_mut(index)
            .ok_or(AhciError::NoPort { port: index })
    }

    /// Resets the HBA as GHC.HR does (global registers, every port and device); the
    /// machine calls it on a system reset too. Attached drives and discs stay.
    pub fn reset(&mut self) {
        self.ghc = GHC_AE;
        self.is = 0;
        for p in &mut self.ports {
            p.reset(Some(&self.mem));
        }
        self.update_irq();
    }

    /// Folds port interrupts into IS and sets INTA# to match.
    fn update_irq(&mut self) {
        for (i, p) in self.ports.iter().enumerate() {
            if p.interrupt_pending() {
                self.is |= 1 << i;
            }
        }
        let level = self.ghc & GHC_IE != 0
            && self.is != 0
            && self.config.command() & PCI_COMMAND_INTX_DISABLE == 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            CAP => CAP_VALUE,
            GHC => self.ghc,
            IS => self.is,
            PI => PI_VALUE,
            VS => VS_VALUE,
            CAP2 => 0,
            o if o >= PORT_BASE => {
                let index = ((o - PORT_BASE) / PORT_STRIDE) as usize;
                self.ports
                    .get(index)
                    .map_or(0, |p| p.read((o - PORT_BASE) % PORT_STRIDE))
            }
            _ => 0,
        }
    }

    /// Whether a write of one bits acts rather than stores (W1C or W1S registers).
    fn write_one_acts(offset: u64) -> bool {
        match offset {
            IS => true,
            o if o >= PORT_BASE => AhciPort::write_one_acts((o - PORT_BASE) % PORT_STRIDE),
            _ => false,
        }
    }

    fn write_reg(&mut self, offset: u64, val: u32) {
        match offset {
            GHC => {
                if val & GHC_HR != 0 {
                    self.reset();
                } else {
                    self.ghc = GHC_AE | (val & GHC_IE);
                }
            }
            IS => self.is &= !val,
            o if o >= PORT_BASE => {
                let index = ((o - PORT_BASE) / PORT_STRIDE) as usize;
                if let Some(p) = self.ports.get_mut(index) {
                    p.write((o - PORT_BASE) % PORT_STRIDE, val, &self.mem);
                }
            }
            _ => {}
        }
        self.update_irq();
    }
}

/// The name a saved controller goes by in errors.
const STATE_NAME: &str = "AHCI controller";

impl crate::state::Snapshot for Ahci {
    /// Commands complete on the vCPU thread that issued them, so nothing is in flight
    /// here: the state is taken as it is (see [`state`]).
    fn save_state(&mut self) -> Result<Vec<u8>, crate::state::StateError> {
        crate::state::encode(
            STATE_NAME,
            &state::AhciState {
                config: self.config.save(),
                ghc: self.ghc,
                is: self.is,
                ports: self.ports.iter().map(AhciPort::save).collect(),
            },
        )
    }

    /// Takes back the registers on a controller built from the same configuration; the
    /// ABAR's move is the wrapper's ([`crate::pci::root::PciSaved`]). INTA# is set to
    /// what the restored IS, GHC.IE and INTx disable say, as after a register write.
    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), crate::state::StateError> {
        use crate::state::StateError;
        let s: state::AhciState = crate::state::decode(STATE_NAME, bytes)?;
        if s.ports.len() != NUM_PORTS {
            return Err(StateError::mismatch(
                STATE_NAME,
                format!("{} ports saved, {NUM_PORTS} here", s.ports.len()),
            ));
        }
        for (i, (port, saved)) in self.ports.iter().zip(&s.ports).enumerate() {
            if let Some(why) = port.restore_mismatch(saved) {
                return Err(StateError::mismatch(STATE_NAME, format!("port {i}: {why}")));
            }
        }
        self.config.restore(STATE_NAME, &s.config)?;
        for (port, saved) in self.ports.iter_mut().zip(&s.ports) {
            port.restore(saved);
        }
        self.ghc = GHC_AE | (s.ghc & GHC_IE);
        self.is = s.is & PI_VALUE;
        self.update_irq();
        Ok(())
    }
}

impl PciDevice for Ahci {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarChange> {
        let changes = self.config.write_reg(reg, offset, data);
        // INTx disable may have changed.
        self.update_irq();
        changes
    }
}

impl BusDevice for Ahci {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        // Registers are dwords; narrower and wider reads take bytes of the dwords covered.
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = (self.read_reg(at & !3) >> ((at & 3) * 8)) as u8;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let shift = offset & 3;
        match data.len() {
            // A qword write is two dword writes, low first.
            8 if shift == 0 => {
                for (i, half) in data.chunks_exact(4).enumerate() {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(half);
                    self.write_reg(offset + 4 * i as u64, u32::from_le_bytes(b));
                }
            }
            n @ 1..=4 if shift + n as u64 <= 4 => {
                let reg = offset & !3;
                let mut b = [0u8; 4];
                for (d, s) in b.iter_mut().zip(data) {
                    *d = *s;
                }
                let bits = 8 * shift as u32;
                let val = u32::from_le_bytes(b) << bits;
                let mask = (u32::MAX >> (32 - 8 * n as u32)) << bits;
                // A narrow write keeps the bytes it does not cover, except in registers
                // where writing a zero bit does nothing anyway.
                let val = if mask == u32::MAX || Self::write_one_acts(reg) {
                    val
                } else {
                    (self.read_reg(reg) & !mask) | val
                };
                self.write_reg(reg, val);
            }
            n => crate::guest_warn!("ahci: {n}-byte ABAR write at {offset:#x} ignored"),
        }
    }
}
