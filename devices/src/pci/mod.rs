//! PCI: configuration space, the root bus with its host bridge, configuration access through
//! ports 0xCF8/0xCFC and ECAM, and BAR assignment for directly booted guests.
//!
//! Data flow: the machine puts [`root::PciConfigIo`] on its PIO bus and
//! [`root::PciConfigMmio`] on its MMIO bus; both forward to one [`root::PciRoot`], which holds
//! each device by slot. Devices' BARs sit on the MMIO bus as ordinary bus devices; when a
//! guest moves one, the machine's [`root::BarRelocator`] moves it on the bus. Interrupts and
//! doorbells leave through the traits in [`interrupt`], which the helper implements on KVM;
//! MSI-X tables are kept by [`msix`].

pub mod alloc;
pub mod config;
pub mod interrupt;
pub mod msi;
pub mod msix;
pub mod root;

pub use alloc::BarAllocator;
pub use config::{BarChange, BarKind, PciConfig, PciConfigState, PciIds};
pub use interrupt::{IoEventRegistrar, MsiRoutes, MsixInterrupt};
pub use msi::MsiCap;
pub use msix::{MsixSaved, MsixState};
pub use root::{BarRelocator, HostBridge, PciConfigIo, PciConfigMmio, PciDevice, PciRoot};

use crate::bus::BusError;

/// Errors from building the PCI topology.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("BAR slot {index} is taken or out of range")]
    BarSlot { index: usize },
    #[error("BAR size {size:#x} is not a power of two within limits")]
    BarSize { size: u64 },
    #[error("BAR address {addr:#x} is not aligned to its size")]
    BarAddress { addr: u64 },
    #[error("no room left for a capability in configuration space")]
    CapabilitySpace,
    #[error("PCI slot {slot} does not exist")]
    SlotOutOfRange { slot: usize },
    #[error("PCI slot {slot} is taken")]
    SlotBusy { slot: usize },
    #[error("no free PCI slot")]
    NoFreeSlot,
    #[error("MMIO window exhausted: no room for a BAR of {size:#x} bytes")]
    WindowFull { size: u64 },
    #[error("bus placement failed")]
    Bus(#[from] BusError),
    #[error("KVM call failed: {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
