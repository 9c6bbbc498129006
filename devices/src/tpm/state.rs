//! The TPM's saved state: one registry entry ("tpm") holding the CRB device's registers
//! and the TPM's own state as its backend hands it out (swtpm's permanent, volatile and
//! savestate blobs).
//!
//! Data flow: on save, [`TpmSnapshot`] first waits for the CRB device to finish the
//! command in flight ([`TpmCrb::save_regs`]), so the TPM is between commands, then asks
//! the [`TpmStateBackend`] for its blobs and encodes both. On restore (a fresh device and
//! a fresh backend, before any vCPU runs) the state is decoded whole first, the blobs go
//! back to the backend (which restarts the TPM on them, volatile state kept), and only
//! then do the registers: a state the backend refuses leaves the device untouched and
//! fails the resume with the TPM named.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::crb::{CrbState, TpmCrb};
use crate::bus::lock;
use crate::state::{SavedState, StateError, decode, encode};

/// The registry name of the TPM.
pub const STATE_NAME: &str = "tpm";
/// How long a save waits for a TPM command in flight (key generation on a slow host
/// takes seconds; the backend gives up on a command after two minutes).
pub const COMMAND_WAIT: Duration = Duration::from_secs(130);

/// One of the TPM's state blobs, opaque to Hospes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmBlob {
    /// The backend said the blob is encrypted (it must be told so when it gets it back).
    pub encrypted: bool,
    pub data: Vec<u8>,
}

/// The TPM's state as its backend gives it: what survives power-off (permanent), the
/// running TPM's PCRs, sessions and loaded objects (volatile), and what a
/// TPM2_Shutdown(STATE) kept (savestate, often empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmBlobs {
    pub permanent: TpmBlob,
    pub volatile: TpmBlob,
    pub savestate: TpmBlob,
}

/// A backend error, its causes already in the text or chained.
pub type BackendStateError = Box<dyn std::error::Error + Send + Sync>;

/// A TPM backend whose state can be taken and given back.
pub trait TpmStateBackend: Send + Sync {
    /// The TPM's blobs; the TPM runs no command meanwhile.
    fn save_blobs(&self) -> Result<TpmBlobs, BackendStateError>;
    /// Stops the TPM, gives it `blobs` and starts it again without wiping its volatile
    /// state, so it goes on as it was when they were taken.
    fn restore_blobs(&self, blobs: &TpmBlobs) -> Result<(), BackendStateError>;
}

/// What the state file holds for the TPM.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SavedTpm {
    crb: CrbState,
    blobs: TpmBlobs,
}

/// The registry entry of one boot's TPM: its CRB device and its backend.
pub struct TpmSnapshot {
    crb: Arc<Mutex<TpmCrb>>,
    backend: Arc<dyn TpmStateBackend>,
    wait: Duration,
}

impl TpmSnapshot {
    pub fn new(crb: Arc<Mutex<TpmCrb>>, backend: Arc<dyn TpmStateBackend>) -> Self {
        Self {
            crb,
            backend,
            wait: COMMAND_WAIT,
        }
    }

    /// The same, waiting at most `wait` for a command in flight at save time.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

fn chain(e: &BackendStateError) -> String {
    hospes_core::error_chain(e.as_ref())
}

impl SavedState for TpmSnapshot {
    fn save(&self) -> Result<Vec<u8>, StateError> {
        let crb = lock(&self.crb)
            .save_regs(self.wait)
            .map_err(|e| StateError::device(STATE_NAME, e))?;
        let blobs = self.backend.save_blobs().map_err(|e| {
            StateError::device(
                STATE_NAME,
                format!("cannot take the TPM's state: {}", chain(&e)),
            )
        })?;
        encode(STATE_NAME, &SavedTpm { crb, blobs })
    }

    fn restore(&self, state: &[u8]) -> Result<(), StateError> {
        let saved: SavedTpm = decode(STATE_NAME, state)?;
        let mut crb = lock(&self.crb);
        if saved.crb.buffer.len() != super::CRB_BUFFER_SIZE {
            // Checked before the TPM is touched; restore_regs checks it again.
            return Err(StateError::mismatch(
                STATE_NAME,
                format!("a {}-byte command buffer", saved.crb.buffer.len()),
            ));
        }
        self.backend.restore_blobs(&saved.blobs).map_err(|e| {
            StateError::device(
                STATE_NAME,
                format!("the TPM refused its saved state: {}", chain(&e)),
            )
        })?;
        crb.restore_regs(&saved.crb)
            .map_err(|e| StateError::mismatch(STATE_NAME, e))
    }
}

#[cfg(test)]
mod tests;
