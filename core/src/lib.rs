//! `hospes-core`: what every Hospes process shares.
//!
//! The settings file and its errors ([`config`]), the VM library ([`library`]), runtime
//! directories of running VMs ([`runtime`]), starting and stopping helpers ([`launch`]),
//! where firmware images live ([`firmware`]),
//! the QMP protocol with its client and server ([`control`]), key codes ([`keycodes`]) and
//! the host's USB devices ([`usb_host`]). The app and `hospesctl` depend on this crate
//! alone, so nothing here may touch KVM or depend on `hospes-devices` or `hospes-vmm`:
//! a change to a device model never rebuilds the app.
//!
//! The QMP server is here rather than in the helper because it is the protocol's other
//! half and holds no KVM code: the helper serves its VM through it, and the fake helper
//! ([`control::fake`], feature `test-support`) serves the launch and client tests.

pub mod config;
pub mod control;
pub mod firmware;
pub mod keycodes;
pub mod launch;
pub mod library;
pub mod runtime;
pub mod saved_state;
pub mod snapshots;
pub mod usb_host;

/// An error and its causes, outermost first, joined with ": " (a cause whose words the
/// text already holds is not repeated): the one-line form every Hospes program prints.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
