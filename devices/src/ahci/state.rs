//! Saved state of the AHCI controller: the HBA's registers, each port's registers and the
//! settings of the disk or CD drive behind it.
//!
//! Commands run synchronously on the vCPU thread that writes PxCI (see the module
//! header of [`super`]), so when a save runs (every vCPU out of the guest) no command is
//! in flight: every issued command has completed, its data, FIS and PxCI bit included.
//! A PxCI bit still set belongs to a failed command the engine halted on, which is port
//! state like any other. The images are not state: they are the VM's disk files, opened
//! again from the configuration; a CD drive records whether it held a disc, so a disc
//! ejected before the save stays out.

use serde::{Deserialize, Serialize};

use super::ata::XferMode;
use super::atapi::Sense;
use crate::pci::config::PciConfigState;

/// The whole controller.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AhciState {
    pub config: PciConfigState,
    pub ghc: u32,
    pub is: u32,
    pub ports: Vec<PortState>,
}

/// One port's registers and engine.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PortState {
    pub clb: u64,
    pub fb: u64,
    pub is: u32,
    pub ie: u32,
    pub cmd: u32,
    pub tfd: u32,
    pub sig: u32,
    pub ssts: u32,
    pub sctl: u32,
    pub serr: u32,
    pub sact: u32,
    pub ci: u32,
    pub sig_pending: bool,
    pub halted: bool,
    pub device: Option<DeviceState>,
}

/// What the guest set on the device behind a port.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum DeviceState {
    Disk(DiskState),
    Cdrom(CdromState),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct DiskState {
    pub write_cache: bool,
    pub look_ahead: bool,
    /// SET MULTIPLE MODE's count.
    pub multiple: u8,
    pub mode: XferMode,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CdromState {
    /// A disc was in the drive (tray open or closed).
    pub medium: bool,
    pub tray_open: bool,
    pub sense: Sense,
    pub unit_attention: bool,
    pub locked: bool,
    pub event: u8,
    pub mode: XferMode,
}
