//! Host services a device talks to, each run and watched by the helper: `passt` for the
//! network card, PipeWire for the sound card, usbfs for host USB devices handed to the guest, swtpm for the TPM.

pub mod child;
pub mod passt;
pub mod pipewire;
pub mod qcow2;
pub mod swtpm;
pub mod usbfs;
