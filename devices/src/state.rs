//! Saved device state: what a device model gives to a VM's state file when the VM is
//! saved, and takes back when it is restored (`hospes-vmm`'s `snapshot` module writes
//! and reads the file).
//!
//! A device implements [`Snapshot`] on its own type; the machine holds it behind a
//! `Mutex` in a [`StateRegistry`] under a name that is stable across runs of the same
//! configuration ("serial", "pci/00:03.0", ...). The state itself is a `serde` struct of
//! the device's, encoded with [`encode`] / [`decode`] (postcard: compact, and a field
//! added to a struct makes older files fail to decode instead of loading garbage; the
//! file's format version changes whenever a state struct does).
//!
//! The order of events:
//! - **save**: every vCPU is out of the guest and will not run again in this process
//!   (a save ends the VM). [`Snapshot::save_state`] first stops whatever the device's own
//!   threads still do to guest memory or to the device (a worker draining a queue, frames
//!   arriving from the network), then returns its state. The registry saves in the order
//!   devices were added.
//! - **restore**: the machine is built as for a fresh boot of the same configuration (same
//!   devices, same names), guest RAM is loaded, then [`Snapshot::restore_state`] runs for
//!   each device in the order devices were added, before any vCPU runs. A device whose
//!   state moves things outside itself (a BAR, an MSI route, a memory slot) redoes those
//!   moves through the same paths a guest's register writes take.
//!
//! A device that cannot be saved yet is named with [`StateRegistry::unsupported`]: saving
//! such a VM is refused up front with that name, instead of writing a file that would
//! restore the device wrong.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors saving or restoring a device's state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{device}: cannot encode its state: {reason}")]
    Encode { device: String, reason: String },
    #[error("{device}: the saved state does not fit this device: {reason}")]
    Mismatch { device: String, reason: String },
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
    #[error("this VM cannot be saved: its {0} has no saved state yet")]
    Unsupported(String),
    #[error("the state file has no state for {0}")]
    Missing(String),
    #[error("the state file has state for {0}, which this VM does not have")]
    Unexpected(String),
}

impl StateError {
    /// A device-specific failure, e.g. a saved register value the device refuses.
    pub fn device(device: &str, reason: impl std::fmt::Display) -> Self {
        Self::Device {
            device: device.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Saved state that does not match the device built from this configuration.
    pub fn mismatch(device: &str, reason: impl std::fmt::Display) -> Self {
        Self::Mismatch {
            device: device.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A device model whose state can be saved and restored (see the module docs for when
/// each method runs).
pub trait Snapshot: Send {
    /// The device's state, after stopping its own threads' guest-visible work.
    fn save_state(&mut self) -> Result<Vec<u8>, StateError>;
    /// Takes back a state [`save_state`](Self::save_state) gave, on a device freshly
    /// built from the same configuration. Decoding errors leave the device as it was.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError>;
}

/// What the registry holds: a device behind its lock (any `Mutex<T: Snapshot>`), or an
/// object of the device's own that locks what it needs.
pub trait SavedState: Send + Sync {
    fn save(&self) -> Result<Vec<u8>, StateError>;
    fn restore(&self, state: &[u8]) -> Result<(), StateError>;
}

impl<T: Snapshot> SavedState for Mutex<T> {
    fn save(&self) -> Result<Vec<u8>, StateError> {
        crate::bus::lock(self).save_state()
    }

    fn restore(&self, state: &[u8]) -> Result<(), StateError> {
        crate::bus::lock(self).restore_state(state)
    }
}

/// Encodes a device's state struct.
pub fn encode<T: Serialize>(device: &str, state: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(state).map_err(|e| StateError::Encode {
        device: device.to_string(),
        reason: e.to_string(),
    })
}

/// Decodes a device's state struct; the whole input must be used.
pub fn decode<T: DeserializeOwned>(device: &str, bytes: &[u8]) -> Result<T, StateError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(StateError::mismatch(
            device,
            format!("{} bytes left over after its state", rest.len()),
        )),
        Err(e) => Err(StateError::mismatch(device, e)),
    }
}

/// The devices of one machine whose state a save takes, by name, in the order added.
#[derive(Default, Clone)]
pub struct StateRegistry {
    entries: Vec<(String, Arc<dyn SavedState>)>,
    unsupported: Vec<String>,
}

impl StateRegistry {
    /// Adds a device under `name` (unique in the machine; a repeated name replaces the
    /// earlier entry, as a device re-attached at the same place would).
    pub fn add(&mut self, name: impl Into<String>, device: Arc<dyn SavedState>) {
        let name = name.into();
        self.entries.retain(|(n, _)| *n != name);
        self.entries.push((name, device));
    }

    /// Notes a device of this machine that cannot be saved yet (`what`: the words a user
    /// reads, "xHCI USB controller").
    pub fn unsupported(&mut self, what: impl Into<String>) {
        self.unsupported.push(what.into());
    }

    /// Whether a save can work: Err names the first device without saved state.
    pub fn check(&self) -> Result<(), StateError> {
        match self.unsupported.first() {
            Some(what) => Err(StateError::Unsupported(what.clone())),
            None => Ok(()),
        }
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Saves every device, in order.
    pub fn save(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.check()?;
        self.entries
            .iter()
            .map(|(name, dev)| Ok((name.clone(), dev.save()?)))
            .collect()
    }

    /// Restores every device from `sections` (name, state): each device must find its
    /// state, and each state its device.
    pub fn restore(&self, sections: &[(String, Vec<u8>)]) -> Result<(), StateError> {
        for (name, _) in sections {
            if !self.entries.iter().any(|(n, _)| n == name) {
                return Err(StateError::Unexpected(name.clone()));
            }
        }
        for (name, _) in &self.entries {
            if !sections.iter().any(|(n, _)| n == name) {
                return Err(StateError::Missing(name.clone()));
            }
        }
        for (name, dev) in &self.entries {
            if let Some((_, state)) = sections.iter().find(|(n, _)| n == name) {
                dev.restore(state)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Counter {
        value: u32,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct CounterState {
        value: u32,
    }

    impl Snapshot for Counter {
        fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
            encode("counter", &CounterState { value: self.value })
        }

        fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
            let s: CounterState = decode("counter", state)?;
            self.value = s.value;
            Ok(())
        }
    }

    #[test]
    fn a_registry_saves_and_restores_its_devices_by_name() {
        let a = Arc::new(Mutex::new(Counter { value: 7 }));
        let mut reg = StateRegistry::default();
        reg.add("a", a.clone());
        let saved = reg.save().unwrap();
        assert_eq!(saved[0].0, "a");

        let b = Arc::new(Mutex::new(Counter::default()));
        let mut fresh = StateRegistry::default();
        fresh.add("a", b.clone());
        fresh.restore(&saved).unwrap();
        assert_eq!(b.lock().unwrap().value, 7);
    }

    #[test]
    fn missing_extra_and_unsupported_devices_are_refused() {
        let mut reg = StateRegistry::default();
        reg.add("a", Arc::new(Mutex::new(Counter::default())));
        let err = reg.restore(&[]).unwrap_err();
        assert!(
            matches!(err, StateError::Missing(ref n) if n == "a"),
            "{err}"
        );
        let err = reg
            .restore(&[("a".into(), vec![0]), ("b".into(), vec![])])
            .unwrap_err();
        assert!(
            matches!(err, StateError::Unexpected(ref n) if n == "b"),
            "{err}"
        );
        reg.unsupported("xHCI USB controller");
        let err = reg.save().unwrap_err();
        assert!(err.to_string().contains("xHCI USB controller"), "{err}");
    }

    #[test]
    fn trailing_or_short_bytes_do_not_decode() {
        let bytes = encode("c", &CounterState { value: 300 }).unwrap();
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode::<CounterState>("c", &long).is_err());
        assert!(decode::<CounterState>("c", &bytes[..bytes.len() - 1]).is_err());
        assert_eq!(decode::<CounterState>("c", &bytes).unwrap().value, 300);
    }
}
