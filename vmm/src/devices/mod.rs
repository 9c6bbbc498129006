//! Device models. Each is free of KVM: it sees guest memory through vm-memory, raises
//! interrupts through a small trait, and is reached through a [`bus::Bus`].

pub mod bus;
pub mod display;
pub mod legacy;
pub mod pci;
pub mod virtio;
