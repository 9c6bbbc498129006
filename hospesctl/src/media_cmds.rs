//! `hospesctl cdrom NAME eject|insert FILE`: the disc in a VM's CD drive.
//!
//! A running VM changes its disc at once through QMP (`eject`, `blockdev-change-medium`
//! on the drive `cdrom0`, as QEMU names them): the guest sees the disc go or come, and
//! the change lasts until the helper ends (across guest reboots too), while vm.ron is
//! left as it is. A stopped VM gets the change in vm.ron's `cdrom` instead (an atomic
//! save), for its next start; there, no disc means no CD drive.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::{CtlError, Output};
use hospes_core::control::ErrorClass;
use hospes_core::control::block::CDROM_ID;
use hospes_core::control::client::{ClientError, QmpClient};
use hospes_core::library::{Library, Machine};
use hospes_core::runtime::{Liveness, RuntimeDir};

/// How long the helper has to answer.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// The CD drive commands.
#[derive(Debug, Subcommand)]
pub enum MediaCommand {
    /// Change or eject the disc in a VM's CD drive: at once while the VM runs, in its
    /// settings (vm.ron) while it is stopped.
    Cdrom {
        /// The VM's name or id.
        name: String,
        /// What to do with the drive.
        #[command(subcommand)]
        action: CdromAction,
    },
}

/// What to do with the CD drive.
#[derive(Debug, Subcommand)]
pub enum CdromAction {
    /// Take the disc out.
    Eject {
        /// Eject even while the guest has locked the drive.
        #[arg(long)]
        force: bool,
    },
    /// Put the ISO image FILE in, replacing the disc that is there.
    Insert {
        /// The ISO image (read-only).
        file: PathBuf,
        /// Change the disc even while the guest has locked the drive.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a CD drive subcommand.
pub fn run(command: MediaCommand, out: &Output) -> Result<(), CtlError> {
    let MediaCommand::Cdrom { name, action } = command;
    let library = Library::open_default()?;
    let machine = library.find(&name)?;
    let (image, force) = match action {
        CdromAction::Eject { force } => (None, force),
        CdromAction::Insert { file, force } => (Some(absolute_image(&file)?), force),
    };
    let runtime = RuntimeDir::open(&machine.id)?;
    let running = !matches!(runtime.probe(), Liveness::Stale);
    if running {
        change_running(&runtime, &machine, image.as_deref(), force)?;
    } else {
        library.set_cdrom(&machine.id, image.as_deref())?;
    }
    let name = machine.name();
    let text = match (&image, running) {
        (Some(image), true) => format!("{name}: the CD drive now holds {}", image.display()),
        (None, true) => format!("{name}: the CD drive is empty"),
        (Some(image), false) => format!(
            "{name} is stopped: it will start with {} in its CD drive",
            image.display()
        ),
        (None, false) => format!("{name} is stopped: it will start without a CD"),
    };
    out.emit(
        &text,
        &json!({ "id": machine.id, "name": name, "running": running, "cdrom": image }),
    )
}

/// `file` as an absolute path (the helper does not share our working folder), after
/// checking that it is there.
fn absolute_image(file: &Path) -> Result<PathBuf, CtlError> {
    if !file.is_file() {
        return Err(CtlError::FileNotFound(file.to_path_buf()));
    }
    std::path::absolute(file).map_err(|_| CtlError::FileNotFound(file.to_path_buf()))
}

/// Ejects (`image` None) or changes the disc of the running VM through QMP.
fn change_running(
    runtime: &RuntimeDir,
    machine: &Machine,
    image: Option<&Path>,
    force: bool,
) -> Result<(), CtlError> {
    let result = QmpClient::connect_with_timeout(&runtime.qmp_socket(), QMP_TIMEOUT).and_then(
        |mut client| match image {
            Some(image) => client.change_medium(CDROM_ID, image, force),
            None => client.eject(CDROM_ID, force),
        },
    );
    result.map_err(|source| match source {
        ClientError::Command(e) if e.class == ErrorClass::DeviceNotFound => {
            CtlError::NoCdDrive(machine.name().to_owned())
        }
        source => CtlError::Cdrom {
            name: machine.name().to_owned(),
            source,
        },
    })
}
