//! `hospes-vmm`, the helper: one virtual machine per process.
//!
//! What belongs here is everything that touches KVM or runs only in the helper: KVM state
//! ([`vstate`], the only module that calls KVM), the x86 machine description ([`arch`]),
//! kernel and firmware loading ([`boot`]), machine assembly and the boot loop
//! ([`machine`]), the host services devices talk to ([`backends`]: passt, PipeWire) and
//! the RFB server ([`vnc`]). Device models live in `hospes-devices` (free of KVM); the
//! settings, the VM library and the control protocol in `hospes-core`. The app and
//! `hospesctl` never depend on this crate. See ARCHITECTURE.md for the code map.

pub mod arch;
pub mod backends;
pub mod boot;
pub mod machine;
pub mod sandbox;
pub mod vnc;
pub mod vstate;
