//! The VM's TPM 2.0: one swtpm for the whole run, a CRB device on every boot.
//!
//! Data flow: [`Tpm::start`] (before the first boot) runs swtpm on the VM's TPM state
//! folder: `tpm/` in the VM's folder for a vm.ron VM, the folder `--tpm=DIR` names, or a
//! private temporary folder (0700, removed when the VM ends) for a bare `--tpm`. At each
//! boot [`Tpm::attach`] resets the TPM (CMD_INIT, as a platform reset does) and puts a
//! fresh `hospes_devices::tpm::TpmCrb` on the MMIO bus at `CRB_BASE`, its commands going
//! to swtpm. The ACPI tables describe it when `MachineConfig::tpm` is set. If swtpm has
//! died, the device is placed all the same and answers every command with TPM_RC_FAILURE.
//!
//! Save and resume: the device and swtpm's state blobs are one registry entry, "tpm"
//! (`hospes_devices::tpm::state`). A resumed VM runs a fresh swtpm on the same state
//! folder (or a new temporary one: the permanent blob brings the TPM's state along);
//! the restore hands it the saved blobs before any vCPU runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Machine, MachineError};
use crate::backends::swtpm::{Swtpm, SwtpmConfig, SwtpmError};
use hospes_devices::tpm::state::{STATE_NAME, TpmSnapshot};
use hospes_devices::tpm::{CRB_BASE, CRB_SIZE, TpmCrb};

/// Where the TPM keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TpmState {
    /// A folder that outlives the VM (the VM's `tpm/`, or `--tpm=DIR`).
    Dir(PathBuf),
    /// A private folder removed when the VM ends (`--tpm`).
    Temporary,
}

impl TpmState {
    /// The state folder of the VM whose vm.ron lies in `vm_dir`.
    pub fn of_vm(vm_dir: &Path) -> Self {
        Self::Dir(vm_dir.join("tpm"))
    }

    /// `--tpm` (no value: a temporary folder) or `--tpm=DIR`.
    pub fn from_flag(value: &str) -> Self {
        match value {
            "" => Self::Temporary,
            dir => Self::Dir(PathBuf::from(dir)),
        }
    }
}

/// Errors starting the TPM.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("cannot create a temporary folder for the TPM's state")]
    TempDir(#[source] std::io::Error),
    #[error(transparent)]
    Swtpm(#[from] SwtpmError),
}

/// The VM's TPM across boots.
pub struct Tpm {
    // Dropped first: swtpm stops before its temporary folder goes.
    swtpm: Swtpm,
    _temp: Option<TempDir>,
}

impl Tpm {
    /// The temporary state folder of a bare `--tpm`, removed when the VM ends (the
    /// sandbox lets the helper remove it).
    pub fn temporary_dir(&self) -> Option<&std::path::Path> {
        self._temp.as_ref().map(|t| t.0.as_path())
    }

    /// Starts swtpm on the state `state` names.
    pub fn start(state: &TpmState) -> Result<Self, TpmError> {
        let (dir, temp) = match state {
            TpmState::Dir(d) => (d.clone(), None),
            TpmState::Temporary => {
                let t = TempDir::new().map_err(TpmError::TempDir)?;
                (t.0.clone(), Some(t))
            }
        };
        let swtpm = Swtpm::start(SwtpmConfig::new(dir))?;
        Ok(Self { swtpm, _temp: temp })
    }

    /// Resets the TPM for a new boot and places this boot's CRB device.
    pub fn attach(&self, machine: &mut Machine) -> Result<(), MachineError> {
        match self.swtpm.reset() {
            Ok(()) => {}
            // Its death was logged when it happened.
            Err(SwtpmError::Dead) => {}
            Err(e) => log::error!(
                "tpm: cannot reset swtpm: {}; its commands may fail",
                hospes_core::error_chain(&e)
            ),
        }
        let crb = TpmCrb::new(self.swtpm.backend()).map_err(MachineError::Thread)?;
        let crb = Arc::new(Mutex::new(crb));
        machine
            .mmio_bus
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(crb.clone(), CRB_BASE, CRB_SIZE)?;
        let state = TpmSnapshot::new(crb, self.swtpm.state_backend());
        machine.states.add(STATE_NAME, Arc::new(state));
        Ok(())
    }

    /// swtpm's process id.
    pub fn pid(&self) -> u32 {
        self.swtpm.pid()
    }
}

/// A private (0700) folder under the temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let base = std::env::temp_dir();
        let pid = std::process::id();
        for n in 0..1000 {
            let path = base.join(format!("hospes-tpm-{pid}-{n}"));
            match make_private_dir_new(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("no free temporary folder name"))
    }
}

/// Creates `path` (which must not exist) with mode 0700.
fn make_private_dir_new(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            log::warn!("tpm: cannot remove {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_a_temporary_or_a_lasting_state() {
        assert_eq!(TpmState::from_flag(""), TpmState::Temporary);
        assert_eq!(
            TpmState::from_flag("/x/tpm"),
            TpmState::Dir("/x/tpm".into())
        );
        assert_eq!(
            TpmState::of_vm(Path::new("/lib/vm")),
            TpmState::Dir("/lib/vm/tpm".into())
        );
    }

    #[test]
    fn a_temporary_state_folder_is_private_and_goes_with_the_tpm() {
        let tpm = Tpm::start(&TpmState::Temporary).unwrap();
        let dir = tpm._temp.as_ref().unwrap().0.clone();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(tpm);
        assert!(!dir.exists());
    }
}
