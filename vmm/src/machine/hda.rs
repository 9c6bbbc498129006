//! The Intel HD Audio card in the machine (vm.ron `sound_card: Hda`, `--sound hda`).
//!
//! Data flow: every boot [`attach`] puts a fresh controller (8086:293E) on PCI with one
//! MSI vector (a KVM GSI route and irqfd) and, on the Q35 platform, its INTA# line, with
//! the VM's PipeWire connection as its audio backend, and starts its `hda` worker, which
//! stops when the boot ends. The PipeWire connection outlives the boots.

use std::sync::{Arc, Mutex};

use hospes_core::config::SoundCard;
use hospes_devices::audio::AudioBackend;
use hospes_devices::hda::{Hda, HdaInterrupts, worker};
use hospes_devices::pci::root::PciSaved;

use super::pci::PciSetup;
use super::storage::PciIntx;
use super::{Machine, MachineError};
use crate::vstate::pci_kvm::KvmMsixVectors;

/// What `--sound` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoundFlag {
    Off,
    /// On, with the card vm.ron names (virtio-snd without a vm.ron).
    On,
    Card(SoundCard),
}

/// Parses `--sound on|off|virtio|hda`.
pub fn parse_sound_flag(s: &str) -> Result<SoundFlag, String> {
    match s {
        "on" => Ok(SoundFlag::On),
        "off" => Ok(SoundFlag::Off),
        "virtio" => Ok(SoundFlag::Card(SoundCard::Virtio)),
        "hda" => Ok(SoundFlag::Card(SoundCard::Hda)),
        _ => Err(format!("'{s}' is not on, off, virtio or hda")),
    }
}

/// Applies `--sound` to vm.ron's (or the default) `sound` and `sound_card`.
pub fn apply_sound_flag(flag: SoundFlag, sound: &mut bool, card: &mut SoundCard) {
    match flag {
        SoundFlag::Off => *sound = false,
        SoundFlag::On => *sound = true,
        SoundFlag::Card(c) => {
            *sound = true;
            *card = c;
        }
    }
}

/// The registration step of a boot: the controller on PCI, its worker started and
/// stopped when the boot ends.
pub fn attach(
    machine: &mut Machine,
    pci: &mut PciSetup,
    backend: Arc<dyn AudioBackend>,
) -> Result<(), MachineError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        MachineError::Setup(format!("HD Audio: {what}: {e}"))
    };
    let router = pci
        .router
        .clone()
        .ok_or_else(|| setup("MSI", &"no MSI routing"))?;
    let msi =
        Arc::new(KvmMsixVectors::new(&machine.vm_fd, router, 1).map_err(|e| setup("MSI", &e))?);
    // Direct kernel boot routes no PCI interrupts (its DSDT has no _PRT): MSI only.
    let (intx, line) = PciIntx::for_function(machine);
    let hda = Hda::new(
        machine.guest_memory.clone(),
        Some(backend),
        HdaInterrupts {
            msi: msi.clone(),
            routes: msi,
            intx: line,
        },
    )
    .map_err(|e| setup("create", &hospes_core::error_chain(&e)))?;
    let hda = Arc::new(Mutex::new(hda));
    let slot = pci.add_device(hda.clone()).map_err(|e| setup("PCI", &e))?;
    if let Some(intx) = intx {
        intx.connect(slot);
    }
    // Its save freezes the streams: the worker moves no more sound.
    machine.states.add(
        format!("pci/00:{slot:02x}.0"),
        Arc::new(PciSaved::new(hda.clone(), pci.relocator())),
    );
    let worker = worker::spawn(&hda).map_err(|e| setup("worker", &e))?;
    log::info!("HD Audio controller at 00:{slot:02x}.0");
    machine.on_boot_end(move || drop(worker));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sound_flag_keeps_on_off_and_picks_a_card() {
        let (mut on, mut card) = (false, SoundCard::Hda);
        apply_sound_flag(parse_sound_flag("on").unwrap(), &mut on, &mut card);
        assert_eq!((on, card), (true, SoundCard::Hda), "on keeps vm.ron's card");
        apply_sound_flag(parse_sound_flag("virtio").unwrap(), &mut on, &mut card);
        assert_eq!(card, SoundCard::Virtio);
        apply_sound_flag(parse_sound_flag("hda").unwrap(), &mut on, &mut card);
        assert_eq!(card, SoundCard::Hda);
        apply_sound_flag(parse_sound_flag("off").unwrap(), &mut on, &mut card);
        assert!(!on);
        assert!(parse_sound_flag("loud").is_err());
    }
}
