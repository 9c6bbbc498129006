//! The Q35 chipset: the MCH host bridge at 00:00.0 ([`mch::Q35Host`]), the ICH9 LPC bridge
//! at 00:1f.0 ([`lpc::Ich9Lpc`]), the reset control register at port 0xCF9
//! ([`reset_control::ResetControl`]) and the APM ports 0xB2/0xB3 ([`apm::Apm`]).
//!
//! SeaBIOS and OVMF recognise the platform by the host bridge's device id and then program
//! chipset registers through PCI configuration space. A configuration write goes: port
//! 0xCFC or ECAM -> [`crate::pci::PciRoot`] -> the bridge's `write_config` -> the register
//! bytes in [`regs::ConfigBytes`] -> a check of what the write changed -> a call on one of
//! the small traits the helper implements on KVM: [`mch::EcamWindow`] (PCIEXBAR moved the
//! ECAM window), [`mch::ShadowMemory`] (a PAM register changed how 0xC0000-0xFFFFF decodes)
//! and [`lpc::PmRelocator`] (PMBASE/ACPI_CNTL moved the ACPI PM block). Each trait is called
//! only when the effective state changes, never for a write that leaves it as it was.
//!
//! The ACPI PM block itself is [`crate::legacy::pm::PmBlock`] with
//! [`crate::legacy::pm::PmLayout::Ich9`]; the CMOS memory bytes firmware reads live in
//! [`crate::legacy::rtc::Rtc::set_machine_info`].

pub mod apm;
pub mod lpc;
pub mod mch;
pub mod regs;
pub mod reset_control;
pub mod shadow;
pub mod smi;
pub mod smram;

pub use apm::Apm;
pub use lpc::{Ich9Lpc, PmRelocator};
pub use mch::{EcamRange, EcamWindow, PamMode, PamSegment, Q35Host, ShadowMemory, pam_segments};
pub use reset_control::ResetControl;

use crate::pci::PciIds;

/// Intel's PCI vendor id, which every chipset function carries.
pub const VENDOR_INTEL: u16 = 0x8086;
/// The subsystem ids QEMU gives its functions (Red Hat, "QEMU"), which guests' inbox
/// drivers and firmware have seen for years.
pub const SUBSYSTEM_VENDOR: u16 = 0x1af4;
pub const SUBSYSTEM: u16 = 0x1100;
/// Base class 0x06 (bridge) and the subclasses of the chipset's bridges (PCI Code and ID
/// Assignment, §1.7).
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST_BRIDGE: u8 = 0x00;
const SUBCLASS_ISA_BRIDGE: u8 = 0x01;

/// Identity of an Intel chipset bridge function.
fn bridge_ids(device: u16, revision: u8, subclass: u8) -> PciIds {
    PciIds {
        vendor: VENDOR_INTEL,
        device,
        revision,
        class: CLASS_BRIDGE,
        subclass,
        prog_if: 0,
        subsystem_vendor: SUBSYSTEM_VENDOR,
        subsystem: SUBSYSTEM,
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Configuration access the way firmware does it, through ports 0xCF8/0xCFC, for the
    //! chipset tests.
    use std::sync::{Arc, Mutex};

    use crate::bus::{Bus, BusDevice};
    use crate::pci::{PciConfigIo, PciDevice, PciRoot};

    /// A PIO bus with the configuration ports on it and `device` at slot `slot`.
    pub fn config_bus<T>(slot: usize, device: Arc<Mutex<T>>) -> Bus
    where
        T: PciDevice + BusDevice + 'static,
    {
        let mut root = PciRoot::new();
        root.add_device(slot, device).unwrap();
        let mut pio = Bus::new();
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(
                Arc::new(Mutex::new(root)),
                None,
            ))),
            0xcf8,
            8,
        )
        .unwrap();
        pio
    }

    fn select(pio: &Bus, slot: u32, offset: u32) {
        let address = 0x8000_0000 | slot << 11 | (offset & 0xfc);
        assert!(pio.write(0xcf8, &address.to_le_bytes()));
    }

    /// `pci_config_read{b,w,l}`: `len` bytes at `offset` of 00:slot.0.
    pub fn read(pio: &Bus, slot: u32, offset: u32, len: usize) -> u32 {
        select(pio, slot, offset);
        let mut b = [0u8; 4];
        let data = &mut b[..len];
        assert!(pio.read(0xcfc + u64::from(offset & 3), data));
        u32::from_le_bytes(b)
    }

    /// `pci_config_write{b,w,l}`: the low `len` bytes of `value` at `offset` of 00:slot.0.
    pub fn write(pio: &Bus, slot: u32, offset: u32, len: usize, value: u32) {
        select(pio, slot, offset);
        let b = value.to_le_bytes();
        assert!(pio.write(0xcfc + u64::from(offset & 3), &b[..len]));
    }
}
