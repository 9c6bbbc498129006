//! Hospes' VM library, settings, control protocol and virtual machine monitor.
//!
//! The same crate serves three programs: `hospes-vmm` (one VM per process), `hospesctl`
//! (the command line) and the GTK app, which uses only [`config`], [`library`] and the
//! control client. See ARCHITECTURE.md for the code map.

pub mod arch;
pub mod backends;
pub mod boot;
pub mod config;
pub mod control;
pub mod ctl;
pub mod devices;
pub mod display;
pub mod input;
pub mod keycodes;
pub mod launch;
pub mod library;
pub mod logger;
pub mod machine;
pub mod runtime;
pub mod vnc;
pub mod vstate;

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
