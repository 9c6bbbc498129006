//! Host services a device talks to, each run and watched by the helper: `passt` for the
//! network card, PipeWire for the sound card; and the host's USB devices a guest may be
//! given (`usb_host`, read by the app's settings pane).

pub mod passt;
pub mod pipewire;
pub mod usb_host;
