//! Intel 82574L Gigabit Ethernet (PCI 8086:10D3), the card Windows drives with its inbox
//! driver, on the same passt connection as virtio-net.
//!
//! Data flow: [`E1000e`] is the PCI function (configuration space with PM, MSI, PCIe and
//! MSI-X capabilities) and the [`BusDevice`] of its BARs: BAR0 (128 KiB of registers),
//! BAR3 (the MSI-X table and PBA). BAR2, the 32-byte I/O window (IOADDR/IODATA), is sized
//! and programmable in configuration space but not decoded: the drivers Hospes targets use
//! BAR0. Register accesses go to the [`Core`] ([`core`]), shared with the worker thread
//! ([`worker`]) behind a mutex. A write to TDT or RDT (or RCTL/TCTL) only rings the
//! doorbell eventfd; the worker wakes, runs the transmit ring ([`tx`]: legacy and
//! extended descriptors, checksum insertion, TSO) into the passt socket, and moves frames
//! from the socket into the receive ring ([`rx`]: legacy and extended descriptors) while
//! RDT leaves room; a frame with no room waits for the next RDT write. Interrupt causes
//! go out through MSI-X (IVAR maps causes to vectors), MSI, or INTA#.
//!
//! Nothing here knows passt or KVM: the connection comes through the same
//! [`ConnectionSlot`](crate::virtio::net::ConnectionSlot) virtio-net uses, the interrupts
//! through [`E1000eInterrupts`].

pub mod core;
pub mod regs;
pub mod rx;
mod state;
pub mod tx;
pub mod worker;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use self::core::{Core, E1000eCounters, E1000eInterrupts, MSIX_VECTORS, Msi};
pub use self::rx::Rx;
use crate::bus::{BusDevice, lock};
use crate::pci::config::{BarChange, REG_BAR0, REG_COMMAND_STATUS};
use crate::pci::{BarKind, MsixState, PciConfig, PciDevice, PciError, PciIds};

/// PCI identity: Intel 82574L.
pub const VENDOR_ID: u16 = 0x8086;
pub const DEVICE_ID: u16 = 0x10d3;
pub const SUBSYSTEM_VENDOR: u16 = 0x8086;
pub const SUBSYSTEM: u16 = 0x0000;
/// Interrupts the machine gives the function: the MSI-X vectors, then MSI.
pub const INTERRUPTS: u16 = MSIX_VECTORS + 1;
/// BAR indices.
pub const BAR_REGS: usize = 0;
pub const BAR_IO: usize = 2;
pub const BAR_MSIX: usize = 3;
const IO_BAR_SIZE: u32 = 32;
const MSIX_BAR_SIZE: u64 = 16 * 1024;
const MSIX_TABLE: u64 = 0;
const MSIX_PBA: u64 = 0x2000;
const CAP_ID_PM: u8 = 0x01;
const CAP_ID_MSI: u8 = 0x05;
const CAP_ID_PCIE: u8 = 0x10;
const COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// Errors building the card.
#[derive(Debug, thiserror::Error)]
pub enum E1000eError {
    #[error("PCI setup failed")]
    Pci(#[from] PciError),
    #[error("cannot create the doorbell eventfd")]
    EventFd(#[source] std::io::Error),
}

/// The PCI function.
pub struct E1000e {
    config: PciConfig,
    msi_cap: usize,
    msix_cap: usize,
    /// BAR2's register: the I/O window's address (bit 0 says I/O).
    io_bar: u32,
    core: Arc<Mutex<Core>>,
    doorbell: Arc<EventFd>,
    counters: Arc<E1000eCounters>,
}

impl E1000e {
    /// A card with address `mac` reaching guest RAM through `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        mac: [u8; 6],
        interrupts: E1000eInterrupts,
    ) -> Result<Self, E1000eError> {
        let mut config = PciConfig::new(PciIds {
            vendor: VENDOR_ID,
            device: DEVICE_ID,
            revision: 0,
            class: 0x02,
            subclass: 0x00,
            prog_if: 0x00,
            subsystem_vendor: SUBSYSTEM_VENDOR,
            subsystem: SUBSYSTEM,
        });
        config.add_bar(BAR_REGS, regs::BAR0_SIZE, BarKind::Mem32, false)?;
        config.add_bar(BAR_MSIX, MSIX_BAR_SIZE, BarKind::Mem32, false)?;
        config.set_interrupt_pin(1);
        // Power management 1.2: D0 and D3hot, PMCSR's power state writable.
        config.add_capability(
            CAP_ID_PM,
            &[0x23, 0xc8, 0x00, 0x00, 0x00, 0x00],
            &[0, 0, 0, 0, 0x03, 0x01],
        )?;
        // MSI: one message, 64-bit address.
        let msi_cap = config.add_capability(
            CAP_ID_MSI,
            &[0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[
                0, 0, 0x01, 0, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        )?;
        config.add_capability(CAP_ID_PCIE, &pcie_capability(), &pcie_writable())?;
        let msix_cap = MsixState::add_capability(
            &mut config,
            MSIX_VECTORS,
            BAR_MSIX as u8,
            MSIX_TABLE as u32,
            MSIX_PBA as u32,
        )?;
        let doorbell = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(E1000eError::EventFd)?);
        let counters = Arc::new(E1000eCounters::default());
        let core = Core::new(mem, mac, interrupts, doorbell.clone(), counters.clone());
        Ok(Self {
            config,
            msi_cap,
            msix_cap,
            io_bar: 1,
            core: Arc::new(Mutex::new(core)),
            doorbell,
            counters,
        })
    }

    /// The register file, for the worker.
    pub fn core(&self) -> Arc<Mutex<Core>> {
        self.core.clone()
    }

    /// Readable when the driver moved a ring tail or enabled a queue.
    pub fn doorbell(&self) -> Arc<EventFd> {
        self.doorbell.clone()
    }

    /// The card's frame counters.
    pub fn counters(&self) -> Arc<E1000eCounters> {
        self.counters.clone()
    }

    fn sync_interrupt_caps(&mut self) {
        let c = &self.config;
        let dword = |at: usize| c.read_reg(at / 4);
        let msi = Msi {
            enabled: c.byte(self.msi_cap + 2) & 1 != 0,
            addr: u64::from(dword(self.msi_cap + 4)) | u64::from(dword(self.msi_cap + 8)) << 32,
            data: dword(self.msi_cap + 12) & 0xffff,
        };
        let intx_disabled = c.command() & COMMAND_INTX_DISABLE != 0;
        let mut core = lock(&self.core);
        core.irq.msix.sync_control(&self.config, self.msix_cap);
        core.irq.set_msi(msi);
        core.irq.intx_disabled = intx_disabled;
        core.update_intx();
    }
}

/// PCI Express capability, version 2, endpoint: 256-byte payload, link 2.5 GT/s x1.
fn pcie_capability() -> Vec<u8> {
    let mut b = vec![0u8; 0x3c - 2];
    let mut put = |cap_offset: usize, bytes: &[u8]| {
        b[cap_offset - 2..cap_offset - 2 + bytes.len()].copy_from_slice(bytes);
    };
    put(0x02, &0x0002u16.to_le_bytes());
    put(0x04, &0x0000_8001u32.to_le_bytes());
    put(0x08, &0x2810u16.to_le_bytes());
    put(0x0c, &0x0000_0411u32.to_le_bytes());
    put(0x12, &0x1011u16.to_le_bytes());
    b
}

/// Device control, link control and device control 2 are writable.
fn pcie_writable() -> Vec<u8> {
    let mut w = vec![0u8; 0x3c];
    for at in [0x08, 0x09, 0x10, 0x11, 0x28, 0x29] {
        w[at] = 0xff;
    }
    w
}

impl PciDevice for E1000e {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == REG_BAR0 + BAR_IO {
            return self.io_bar;
        }
        self.config.read_reg(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarChange> {
        if reg == REG_BAR0 + BAR_IO {
            // An I/O BAR: address bits above the size, bit 0 always set.
            let mut bytes = self.io_bar.to_le_bytes();
            for (i, b) in data.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(offset as usize + i) {
                    *slot = *b;
                }
            }
            self.io_bar = (u32::from_le_bytes(bytes) & !(IO_BAR_SIZE - 1) & 0xffff) | 1;
            return Vec::new();
        }
        let changes = self.config.write_reg(reg, offset, data);
        let msi = self.msi_cap / 4..self.msi_cap / 4 + 4;
        if reg == REG_COMMAND_STATUS || reg == self.msix_cap / 4 || msi.contains(&reg) {
            self.sync_interrupt_caps();
        }
        changes
    }
}

impl BusDevice for E1000e {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match self.config.bar_for_address(base).map(|b| b.0) {
            Some(BAR_REGS) => {
                // Registers are dwords; narrower or wider reads take the bytes of the
                // dwords they cover (each dword read once: ICR and statistics clear).
                let mut core = lock(&self.core);
                let mut cached: Option<(u64, [u8; 4])> = None;
                for (i, b) in data.iter_mut().enumerate() {
                    let at = offset + i as u64;
                    let dword = at & !3;
                    let bytes = match cached {
                        Some((d, v)) if d == dword => v,
                        _ => {
                            let v = core.read(dword).to_le_bytes();
                            cached = Some((dword, v));
                            v
                        }
                    };
                    *b = bytes[(at & 3) as usize];
                }
            }
            Some(BAR_MSIX) => {
                let mut core = lock(&self.core);
                if offset >= MSIX_PBA {
                    core.msix().read_pba(offset - MSIX_PBA, data);
                } else {
                    core.msix().read_table(offset - MSIX_TABLE, data);
                }
            }
            _ => {}
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        match self.config.bar_for_address(base).map(|b| b.0) {
            Some(BAR_REGS) => {
                if offset & 3 != 0 || !data.len().is_multiple_of(4) {
                    crate::guest_warn!("e1000e: {}-byte write at {offset:#x} ignored", data.len());
                    return;
                }
                let mut core = lock(&self.core);
                for (i, chunk) in data.chunks_exact(4).enumerate() {
                    let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    core.write(offset + 4 * i as u64, v);
                }
            }
            Some(BAR_MSIX) if offset < MSIX_PBA => {
                let mut core = lock(&self.core);
                core.msix().write_table(offset - MSIX_TABLE, data);
            }
            _ => {}
        }
    }
}
