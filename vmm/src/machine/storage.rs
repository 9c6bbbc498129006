//! Firmware-boot storage: the AHCI controller with the VM's SATA disks and its CD-ROM
//! drive, its PCI interrupt, and the boot order handed to the firmware.
//!
//! Data flow: after the PCI registration step has placed bus 0, [`attach_ahci`] puts one
//! ICH9 AHCI function (8086:2922) in the next free slot with SATA disks on ports 0.. and the
//! CD-ROM drive on the port after them; its INTA# reaches the guest through [`PciIntx`]
//! (the slot's PIRQ, as the DSDT's `_PRT` routes it: `acpi_loader::q35_pirq`). [`boot_order`] then tells the firmware
//! where to boot from: the CD first when one is attached (an installer), then the disks in
//! vm.ron's order.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;

use super::pci::{DiskSpec, PciSetup};
use super::{Machine, MachineError};
use hospes_core::error_chain;
use hospes_devices::ahci::{Ahci, Drive};
use hospes_devices::bus::lock;
use hospes_devices::chipset::Ich9Lpc;
use hospes_devices::fw_cfg::{ahci_path, bootorder, virtio_blk_path};
use hospes_devices::legacy::IrqLine;

use crate::arch::x86_64::acpi_loader::{PIRQ_GSI_BASE, q35_pirq};

/// Not yet connected to a slot.
const UNCONNECTED: usize = usize::MAX;

/// Errors attaching storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the SATA controller")]
    Ahci(#[from] hospes_devices::ahci::AhciError),
    #[error("cannot put the SATA controller on PCI")]
    Pci(#[from] hospes_devices::pci::PciError),
    #[error("{0} SATA drives do not fit the controller's 6 ports")]
    TooManyDrives(usize),
}

/// A PCI function's INTx line: a level on its PIRQ, which the ICH9 drives into the
/// IOAPIC (GSI 16 + PIRQ, what an APIC-mode guest uses through `_PRT`) and, while the
/// firmware has routed the PIRQ, into that ISA IRQ of the PIC (what the BIOS and a
/// PIC-mode guest use).
pub struct PciIntx {
    vm: Arc<VmFd>,
    lpc: Arc<Mutex<Ich9Lpc>>,
    pirq: AtomicUsize,
}

impl PciIntx {
    pub fn new(vm: Arc<VmFd>, lpc: Arc<Mutex<Ich9Lpc>>) -> Self {
        Self {
            vm,
            lpc,
            pirq: AtomicUsize::new(UNCONNECTED),
        }
    }

    /// Connects the line to the function in `slot` (INTA), routed as the DSDT's `_PRT`
    /// says.
    pub fn connect(&self, slot: usize) {
        let pirq = u8::try_from(slot).map_or(UNCONNECTED, |s| usize::from(q35_pirq(s, 0)));
        self.pirq.store(pirq, Ordering::Release);
    }
}

impl IrqLine for PciIntx {
    fn trigger(&self) {
        self.set_level(true);
        self.set_level(false);
    }

    fn set_level(&self, high: bool) {
        let pirq = self.pirq.load(Ordering::Acquire);
        if pirq == UNCONNECTED {
            return;
        }
        let gsi = PIRQ_GSI_BASE + pirq as u32;
        if let Err(e) = self.vm.set_irq_line(gsi, high) {
            hospes_devices::guest_warn!("cannot set PCI interrupt GSI {gsi}: {e}");
        }
        if let Some(irq) = lock(&self.lpc).pirq_route(pirq)
            && let Err(e) = self.vm.set_irq_line(u32::from(irq), high)
        {
            hospes_devices::guest_warn!("cannot set PCI interrupt IRQ {irq}: {e}");
        }
    }
}

/// What [`attach_ahci`] placed: the controller's slot and which port holds what.
pub struct AhciSetup {
    pub slot: usize,
    /// Ports of the SATA disks, in vm.ron's order.
    pub disk_ports: Vec<usize>,
    /// Port of the CD-ROM drive.
    pub cdrom_port: Option<usize>,
    pub device: Arc<Mutex<Ahci>>,
}

fn open(path: &Path, read_only: bool) -> Result<File, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|source| StorageError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Puts an AHCI controller holding `disks` and, if `cdrom` is `Some`, a CD-ROM drive
/// (with the image, or empty for `Some(None)`) into `pci`. Nothing is added when there
/// is nothing to hold.
pub fn attach_ahci(
    pci: &mut PciSetup,
    mem: &vm_memory::GuestMemoryMmap,
    intx: Arc<PciIntx>,
    disks: &[DiskSpec],
    cdrom: Option<Option<&Path>>,
) -> Result<Option<AhciSetup>, StorageError> {
    let drives = disks.len() + usize::from(cdrom.is_some());
    if drives == 0 {
        return Ok(None);
    }
    if drives > 6 {
        return Err(StorageError::TooManyDrives(drives));
    }
    let mut ahci = Ahci::new(mem.clone(), intx.clone())?;
    let mut disk_ports = Vec::new();
    for (port, d) in disks.iter().enumerate() {
        let file = open(&d.path, d.read_only)?;
        ahci.attach(
            port,
            Drive::disk(file, d.read_only, &format!("HOSPES-SATA{port}")),
        )?;
        disk_ports.push(port);
    }
    let cdrom_port = match cdrom {
        Some(image) => {
            let port = disks.len();
            let file = image.map(|p| open(p, true)).transpose()?;
            ahci.attach(port, Drive::cdrom(file, &format!("HOSPES-CD{port}")))?;
            Some(port)
        }
        None => None,
    };
    let device = Arc::new(Mutex::new(ahci));
    let slot = pci.add_device(device.clone())?;
    intx.connect(slot);
    Ok(Some(AhciSetup {
        slot,
        disk_ports,
        cdrom_port,
        device,
    }))
}

/// The firmware-boot storage step: the AHCI controller with `sata` disks and the CD-ROM
/// drive, and the boot order over them and the first `virtio_disks` virtio devices (the
/// disks, which the registration step places first).
pub fn attach_for_firmware(
    machine: &Machine,
    pci: &mut PciSetup,
    sata: &[DiskSpec],
    cdrom: Option<&Path>,
    virtio_disks: usize,
) -> Result<(), MachineError> {
    let Some(q35) = &machine.chipset else {
        return Ok(());
    };
    let intx = Arc::new(PciIntx::new(machine.vm_fd.clone(), q35.lpc.clone()));
    let ahci = attach_ahci(pci, &machine.guest_memory, intx, sata, cdrom.map(Some))
        .map_err(|e| MachineError::Setup(error_chain(&e)))?;
    let virtio: Vec<usize> = pci
        .devices
        .iter()
        .take(virtio_disks)
        .map(|(slot, _)| *slot)
        .collect();
    lock(&q35.fw_cfg)
        .add_file("bootorder", boot_order(ahci.as_ref(), &virtio))
        .map_err(|e| MachineError::Setup(error_chain(&e)))
}

/// The `bootorder` file: the CD first (an installer), then SATA disks, then virtio disks
/// (`virtio_disk_slots`, in vm.ron's order).
pub fn boot_order(ahci: Option<&AhciSetup>, virtio_disk_slots: &[usize]) -> Vec<u8> {
    let mut paths = Vec::new();
    if let Some(a) = ahci {
        let slot = a.slot as u8;
        if let Some(port) = a.cdrom_port {
            paths.push(ahci_path(slot, 0, port as u8));
        }
        paths.extend(a.disk_ports.iter().map(|&p| ahci_path(slot, 0, p as u8)));
    }
    paths.extend(virtio_disk_slots.iter().map(|&s| virtio_blk_path(s as u8)));
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    bootorder(&refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cd_boots_first_then_sata_then_virtio_disks() {
        let order = boot_order(None, &[3, 4]);
        let text = String::from_utf8(order).unwrap();
        assert_eq!(
            text.trim_end_matches('\0'),
            "/pci@i0cf8/scsi@3/disk@0,0\n/pci@i0cf8/scsi@4/disk@0,0"
        );
    }
}
