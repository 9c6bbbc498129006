//! The control plane: a QMP-subset server in the helper and a typed client for
//! `hospesctl` and the app.
//!
//! Data flow in the helper: [`QmpServer::start`] binds a unix socket and serves every
//! client on its own threads. Commands are looked up in the command table
//! (`commands.rs`) and act on the VM only through the [`VmControl`] trait, which the VMM
//! implements. The VMM reports state changes by sending [`Event`]s through an
//! [`EventSender`]; the server broadcasts them to every client that has finished
//! capabilities negotiation.
//!
//! On the other side, [`client::QmpClient`] connects to that socket (or to QEMU's),
//! negotiates, runs commands and collects events. [`console`] attaches a terminal to the
//! helper's serial socket.

pub mod block;
pub mod client;
mod commands;
pub mod console;
pub mod display;
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod fdpass;
mod poll;
pub mod protocol;
pub mod server;
pub mod usb;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use protocol::{ErrorClass, QmpError, StatusInfo, Timestamp, VersionInfo};
pub use server::{EventSender, QmpServer, QmpServerHandle, ServerError};

/// Errors of VM operations requested through [`VmControl`].
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The operation makes no sense in the VM's current state.
    #[error("not possible while the VM is {0}")]
    InvalidState(RunState),
    /// The VM does not support the operation.
    #[error("not supported by this VM")]
    Unsupported,
    /// The operation failed.
    #[error("{0}")]
    Failed(String),
    /// The VM has no device of that name (QMP class DeviceNotFound).
    #[error("Device '{0}' not found")]
    DeviceNotFound(String),
    /// An endpoint argument such as `--qmp` is malformed.
    #[error("invalid socket address '{0}': expected unix:PATH")]
    BadEndpoint(String),
}

/// The QMP error for a failed VM operation: class DeviceNotFound for a missing device,
/// GenericError otherwise.
pub(crate) fn qmp_error(e: ControlError) -> QmpError {
    match e {
        ControlError::DeviceNotFound(_) => QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: e.to_string(),
        },
        e => QmpError::generic(e.to_string()),
    }
}

/// The run state of a VM, with QEMU's names on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Created, not started yet.
    Prelaunch,
    /// vCPUs are running.
    Running,
    /// Paused by the host (`stop`).
    Paused,
    /// The guest powered off and the helper waits to be told what to do.
    Shutdown,
    /// The guest suspended itself (ACPI S3).
    Suspended,
    /// The VMM hit an error it cannot continue from.
    InternalError,
    /// The guest reported a panic.
    GuestPanicked,
    /// A state this client does not know (only produced when parsing replies).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Same spelling as on the wire.
        let name = match self {
            Self::Prelaunch => "prelaunch",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Shutdown => "shutdown",
            Self::Suspended => "suspended",
            Self::InternalError => "internal-error",
            Self::GuestPanicked => "guest-panicked",
            Self::Unknown => "unknown",
        };
        f.write_str(name)
    }
}

/// Why the VM shut down or reset (QEMU's `ShutdownCause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownReason {
    /// No particular reason.
    None,
    /// The host hit an error.
    HostError,
    /// The QMP `quit` command.
    HostQmpQuit,
    /// The QMP `system_reset` command.
    HostQmpSystemReset,
    /// A signal such as SIGTERM reached the helper.
    HostSignal,
    /// The user closed the VM from a user interface.
    HostUi,
    /// The guest powered off.
    GuestShutdown,
    /// The guest reset itself.
    GuestReset,
    /// The guest panicked.
    GuestPanic,
    /// A device asked for a reset.
    SubsystemReset,
}

/// An asynchronous QMP event the VMM reports. Add a variant (and its name and data
/// below) to introduce a new event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The VM shut down; `guest` tells whether the guest asked for it.
    Shutdown {
        /// True when the guest initiated it.
        guest: bool,
        /// Why.
        reason: ShutdownReason,
    },
    /// The VM was reset.
    Reset {
        /// True when the guest initiated it.
        guest: bool,
        /// Why.
        reason: ShutdownReason,
    },
    /// The vCPUs stopped.
    Stop,
    /// The vCPUs resumed.
    Resume,
    /// The ACPI power button was pressed (`system_powerdown`).
    Powerdown,
    /// A device was unplugged (`device_del`) and is gone from the guest.
    DeviceDeleted {
        /// Its id.
        device: String,
    },
    /// A save (`hospes-save`) wrote `done` of `total` bytes of guest RAM.
    SaveProgress { done: u64, total: u64 },
    /// A save finished: the state is in `file` (`bytes` long, `ms` milliseconds from the
    /// command to the file in place); the helper quits next.
    SaveCompleted { file: String, bytes: u64, ms: u64 },
    /// A save failed after it began; `error` says why.
    SaveFailed { error: String },
}

impl Event {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Shutdown { .. } => "SHUTDOWN",
            Self::Reset { .. } => "RESET",
            Self::Stop => "STOP",
            Self::Resume => "RESUME",
            Self::Powerdown => "POWERDOWN",
            Self::DeviceDeleted { .. } => "DEVICE_DELETED",
            Self::SaveProgress { .. } => "SAVE_PROGRESS",
            Self::SaveCompleted { .. } => "SAVE_COMPLETED",
            Self::SaveFailed { .. } => "SAVE_FAILED",
        }
    }

    /// The event's `data` member, if it has one.
    pub fn data(&self) -> Option<Value> {
        match self {
            Self::Shutdown { guest, reason } | Self::Reset { guest, reason } => {
                Some(json!({ "guest": guest, "reason": reason }))
            }
            // QEMU's data: the id and the device's QOM path.
            Self::DeviceDeleted { device } => {
                Some(json!({ "device": device, "path": format!("/machine/peripheral/{device}") }))
            }
            Self::SaveProgress { done, total } => Some(json!({ "done": done, "total": total })),
            Self::SaveCompleted { file, bytes, ms } => {
                Some(json!({ "file": file, "bytes": bytes, "ms": ms }))
            }
            Self::SaveFailed { error } => Some(json!({ "error": error })),
            Self::Stop | Self::Resume | Self::Powerdown => None,
        }
    }
}

/// What the control plane may do to a VM. The VMM implements it; the server calls it
/// from its client threads, so implementations only signal the VMM's own threads and
/// return quickly.
pub trait VmControl: Send + Sync + 'static {
    /// The current run state.
    fn status(&self) -> RunState;
    /// Pauses the vCPUs (`stop`). Emits STOP once they are stopped.
    fn pause(&self) -> Result<(), ControlError>;
    /// Resumes the vCPUs (`cont`). Emits RESUME.
    fn resume(&self) -> Result<(), ControlError>;
    /// Presses the ACPI power button (`system_powerdown`). Emits POWERDOWN.
    fn powerdown(&self) -> Result<(), ControlError>;
    /// Resets the machine (`system_reset`). Emits RESET.
    fn reset(&self) -> Result<(), ControlError>;
    /// Ends the helper (`quit`). Called after the reply is queued; the VMM then emits
    /// SHUTDOWN (guest false, reason host-qmp-quit), closes the server and exits.
    fn quit(&self);
    /// Writes the screen as a PNG file (`screendump`).
    fn screendump(&self, _filename: &std::path::Path) -> Result<(), ControlError> {
        Err(ControlError::Unsupported)
    }
    /// The VNC server's address and clients (`query-vnc`).
    fn query_vnc(&self) -> display::VncInfo {
        display::VncInfo::disabled()
    }
    /// Feeds keyboard and pointer events to the guest (`input-send-event`).
    fn input_send_event(&self, _events: &[display::InputEvent]) -> Result<(), ControlError> {
        Err(ControlError::Unsupported)
    }
    /// The VM's removable drives (`query-block`).
    fn query_block(&self) -> Vec<block::BlockInfo> {
        Vec::new()
    }
    /// Takes the disc out of drive `id` (`eject`); `force` ejects even while the guest
    /// has locked the drive.
    fn eject(&self, id: &str, _force: bool) -> Result<(), ControlError> {
        Err(ControlError::DeviceNotFound(id.to_owned()))
    }
    /// Puts the image at `filename` into drive `id` (`blockdev-change-medium`), replacing
    /// the disc in it; open it with [`block::open_disc_image`].
    fn change_medium(
        &self,
        id: &str,
        _filename: &std::path::Path,
        _force: bool,
    ) -> Result<(), ControlError> {
        Err(ControlError::DeviceNotFound(id.to_owned()))
    }
    /// Plugs a USB device into the VM's USB controller (`device_add`). `spec.id` is
    /// checked (valid, not in use by a device [`VmControl::query_usb`] lists); a
    /// `usb-host` spec names the host device by ids, bus/address or an open usbfs
    /// descriptor (see [`usb::UsbHostSpec`]). Returns once the device is attached; a
    /// device that cannot be found or opened is a [`ControlError::Failed`] naming it.
    fn device_add_usb(&self, _spec: usb::UsbDeviceSpec) -> Result<(), ControlError> {
        Err(ControlError::Unsupported)
    }
    /// Unplugs the device `id` (`device_del`) and, once it is gone, emits
    /// [`Event::DeviceDeleted`]. An unknown id is [`ControlError::DeviceNotFound`].
    fn device_del(&self, id: &str) -> Result<(), ControlError> {
        Err(ControlError::DeviceNotFound(id.to_owned()))
    }
    /// The USB devices plugged into the VM (`query-usb`).
    fn query_usb(&self) -> Vec<usb::UsbInfo> {
        Vec::new()
    }
    /// Saves the VM to its saved-state file and quits (`hospes-save`): checks that it
    /// can (every device can be saved, there is a file to write) and returns; the save
    /// itself reports [`Event::SaveProgress`], then [`Event::SaveCompleted`] (and the
    /// helper exits) or [`Event::SaveFailed`].
    fn save(&self) -> Result<(), ControlError> {
        Err(ControlError::Unsupported)
    }
}

/// Parses a QEMU-style unix socket address as given to `--qmp`, `--serial` or `--vnc`:
/// `unix:PATH`, optionally followed by QEMU's `,server`, `,server=on`, `,nowait` or
/// `,wait=off` (accepted and ignored: Hospes always listens and never waits).
pub fn parse_unix_endpoint(arg: &str) -> Result<PathBuf, ControlError> {
    let bad = || ControlError::BadEndpoint(arg.to_string());
    let mut rest = arg.strip_prefix("unix:").ok_or_else(bad)?;
    const IGNORED: [&str; 4] = [",server=on", ",server", ",wait=off", ",nowait"];
    while let Some(stripped) = IGNORED.iter().find_map(|opt| rest.strip_suffix(opt)) {
        rest = stripped;
    }
    if rest.is_empty() {
        return Err(bad());
    }
    Ok(PathBuf::from(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_endpoints_with_qemu_options() {
        assert_eq!(
            parse_unix_endpoint("unix:/r/q.sock").unwrap(),
            PathBuf::from("/r/q.sock")
        );
        assert_eq!(
            parse_unix_endpoint("unix:/r/q.sock,server=on,wait=off").unwrap(),
            PathBuf::from("/r/q.sock")
        );
        assert!(parse_unix_endpoint("tcp:1.2.3.4:5").is_err());
        assert!(parse_unix_endpoint("unix:").is_err());
    }

    #[test]
    fn run_state_display_matches_wire_name() {
        for state in [
            RunState::Running,
            RunState::InternalError,
            RunState::GuestPanicked,
        ] {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                json!(state.to_string())
            );
        }
    }
}
