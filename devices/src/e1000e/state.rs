//! The card's saved state (see [`crate::state`]): configuration space, the I/O BAR, the
//! MSI-X table, and the register file ([`Core`](super::Core): registers with the ring
//! heads and tails and the interrupt cause and mask, EEPROM, PHY, the packet being
//! gathered from transmit descriptors).
//!
//! Save freezes the register file: the worker then finds no transmit work and no room
//! for received frames, so nothing reaches guest memory, and frames from passt wait in
//! the connection. Restore takes the registers back, routes MSI, MSI-X and INTA# again
//! from the restored configuration space (the path a guest's config writes take), and
//! rings the doorbell so the worker goes on with descriptors the guest had handed over.

use serde::{Deserialize, Serialize};

use super::E1000e;
use super::core::CoreSaved;
use crate::bus::lock;
use crate::pci::PciConfigState;
use crate::pci::msix::MsixSaved;
use crate::state::{self, Snapshot, StateError};

const NAME: &str = "e1000e network card";

#[derive(Serialize, Deserialize)]
struct SavedE1000e {
    pci: PciConfigState,
    io_bar: u32,
    msix: MsixSaved,
    core: CoreSaved,
}

impl Snapshot for E1000e {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        let mut core = lock(&self.core);
        core.frozen = true;
        let saved = SavedE1000e {
            pci: self.config.save(),
            io_bar: self.io_bar,
            msix: core.irq.msix.save(),
            core: core.save(),
        };
        drop(core);
        state::encode(NAME, &saved)
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let s: SavedE1000e = state::decode(NAME, bytes)?;
        lock(&self.core)
            .check(&s.core)
            .map_err(|e| StateError::mismatch(NAME, e))?;
        self.config.restore(NAME, &s.pci)?;
        self.io_bar = (s.io_bar & !(super::IO_BAR_SIZE - 1) & 0xffff) | 1;
        let mut core = lock(&self.core);
        core.irq.msix.restore(NAME, &s.msix)?;
        core.restore(&s.core);
        drop(core);
        self.sync_interrupt_caps();
        Ok(())
    }
}
