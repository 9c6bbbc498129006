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
pub mod launch;
pub mod library;
pub mod logger;
pub mod machine;
pub mod runtime;
pub mod vnc;
pub mod vstate;
