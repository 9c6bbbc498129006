//! The e1000e card (Intel 82574L) in the machine, for guests without virtio drivers
//! (Windows' inbox driver). Chosen by vm.ron's `network: User(.., card: E1000e)` or
//! `--net user,model=e1000e`.
//!
//! Data flow: every boot [`attach`] puts a fresh card on PCI with its MSI-X vectors and
//! its MSI message (KVM irqfds on the machine's GSI router) and, on the Q35 platform, its
//! INTA# line, then starts the card's worker on the VM's passt connection (the same
//! [`UserNetwork`] and supervisor virtio-net uses). When the boot ends the worker stops and
//! hands the connection back for the next boot's card.

use std::sync::{Arc, Mutex};

use hospes_devices::e1000e::worker::E1000eWorker;
use hospes_devices::e1000e::{E1000e, E1000eInterrupts, INTERRUPTS};
use hospes_devices::pci::root::PciSaved;

use super::pci::PciSetup;
use super::storage::PciIntx;
use super::{Machine, MachineError};
use crate::backends::passt::UserNetwork;
use crate::vstate::pci_kvm::KvmMsixVectors;

/// Puts this boot's e1000e on PCI and starts its worker; undone when the boot ends.
pub fn attach(
    machine: &mut Machine,
    pci: &mut PciSetup,
    network: &UserNetwork,
) -> Result<(), MachineError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        MachineError::Setup(format!("e1000e network card: {what}: {e}"))
    };
    let router = pci
        .router
        .clone()
        .ok_or_else(|| setup("MSI-X", &"no MSI routing"))?;
    let vectors = Arc::new(
        KvmMsixVectors::new(&machine.vm_fd, router, INTERRUPTS).map_err(|e| setup("MSI-X", &e))?,
    );
    // Direct kernel boot routes no PCI interrupts (its DSDT has no _PRT): MSI-X and MSI.
    let (intx, line) = PciIntx::for_function(machine);
    let card = E1000e::new(
        machine.guest_memory.clone(),
        network.mac().0,
        E1000eInterrupts {
            msix: vectors.clone(),
            routes: vectors,
            intx: line,
        },
    )
    .map_err(|e| setup("create", &e))?;
    let (core, doorbell) = (card.core(), card.doorbell());
    let card = Arc::new(Mutex::new(card));
    let slot = pci.add_device(card.clone()).map_err(|e| setup("PCI", &e))?;
    // Its save freezes the register file: the worker stops running the rings.
    machine.states.add(
        format!("pci/00:{slot:02x}.0"),
        Arc::new(PciSaved::new(card, pci.relocator())),
    );
    if let Some(intx) = intx {
        intx.connect(slot);
    }
    let worker =
        E1000eWorker::spawn(core, doorbell, network.slot()).map_err(|e| setup("worker", &e))?;
    machine.on_boot_end(move || drop(worker));
    Ok(())
}
