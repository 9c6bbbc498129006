//! `hospes-devices`: the guest-visible device models, free of KVM.
//!
//! Every model sees guest memory through vm-memory and raises interrupts through small
//! traits ([`legacy::IrqLine`], [`pci::MsixInterrupt`]), so it is driven from host-side
//! unit tests with a mock driver ([`virtio::testing`], feature `test-support`) without
//! /dev/kvm. What belongs here: the address-decoded buses ([`bus`]), legacy PC devices
//! ([`legacy`]), PCI ([`pci`]), virtio ([`virtio`]), display devices ([`display`]) and the
//! framebuffer they draw into ([`framebuffer`]), input routing ([`input`]) and the
//! rate-limited guest log ([`logger`]); the coming chipset, fw_cfg, AHCI, VGA, xHCI, HDA
//! and TPM models too, USB ([`usb`]), the e1000e network card ([`e1000e`]), the Intel HD
//! Audio card ([`hda`]) and what both sound cards share ([`audio`]). What must not:
//! kvm-ioctls (the helper implements the traits
//! on KVM in `hospes-vmm`'s `vstate`), host services such as passt or PipeWire (they sit
//! behind a device's backend trait), and anything of the app.

pub mod ahci;
pub mod audio;
pub mod bus;
pub mod chipset;
pub mod disk_image;
pub mod display;
pub mod e1000e;
pub mod framebuffer;
pub mod fw_cfg;
pub mod hda;
pub mod input;
pub mod legacy;
pub mod logger;
pub mod pci;
pub mod pflash;
pub mod state;
pub mod tpm;
pub mod usb;
pub mod virtio;
