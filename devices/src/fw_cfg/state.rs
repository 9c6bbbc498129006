//! Saved state of the fw_cfg device.
//!
//! The items and files are rebuilt from the VM's configuration at every start, so a
//! saved VM keeps only what its run changed: the cursor (selected key, offset in the
//! item, the high half of a DMA address written without its low half yet), how far each
//! lazy group got, and the content of the files the run wrote or built: writable files
//! (what the guest wrote, e.g. through a table-loader WRITE_POINTER), lazily generated
//! ones (the ACPI tables as generated when the firmware read them: regenerating could
//! give other bytes than the ones the guest already holds) and files rebuilt on select.
//! A restored guest that was half-way through reading a file goes on at the next byte.

use serde::{Deserialize, Serialize};

use super::{FwCfg, LazyState};
use crate::state::{Snapshot, StateError, decode, encode};

/// The name a saved fw_cfg goes by in errors.
const NAME: &str = "fw_cfg";

#[derive(Debug, Serialize, Deserialize)]
struct FwCfgState {
    selector: u16,
    offset: u64,
    dma_high: u32,
    /// Per lazy group, in the order the groups were added.
    lazy: Vec<SavedLazy>,
    /// Files whose content the run changed or built, by name.
    files: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum SavedLazy {
    Stale,
    Sized,
    Final,
}

impl From<LazyState> for SavedLazy {
    fn from(s: LazyState) -> Self {
        match s {
            LazyState::Stale => Self::Stale,
            LazyState::Sized => Self::Sized,
            LazyState::Final => Self::Final,
        }
    }
}

impl From<SavedLazy> for LazyState {
    fn from(s: SavedLazy) -> Self {
        match s {
            SavedLazy::Stale => Self::Stale,
            SavedLazy::Sized => Self::Sized,
            SavedLazy::Final => Self::Final,
        }
    }
}

impl FwCfg {
    /// Index of the file `name` if its content belongs to the saved state.
    fn run_file(&self, name: &str) -> Option<usize> {
        let i = self.find_file(name).ok()?;
        let f = self.files.get(i)?;
        (f.pristine.is_some() || f.lazy.is_some() || f.on_select.is_some()).then_some(i)
    }
}

impl Snapshot for FwCfg {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        let files = self
            .files
            .iter()
            .filter(|f| f.pristine.is_some() || f.lazy.is_some() || f.on_select.is_some())
            .map(|f| (f.name.clone(), f.data.clone()))
            .collect();
        encode(
            NAME,
            &FwCfgState {
                selector: self.selector,
                offset: self.offset as u64,
                dma_high: self.dma_high,
                lazy: self.lazy.iter().map(|g| g.state.into()).collect(),
                files,
            },
        )
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let s: FwCfgState = decode(NAME, state)?;
        // Check everything before changing anything.
        if s.lazy.len() != self.lazy.len() {
            return Err(StateError::mismatch(
                NAME,
                format!(
                    "{} generated file groups saved, {} here",
                    s.lazy.len(),
                    self.lazy.len()
                ),
            ));
        }
        let mut targets = Vec::with_capacity(s.files.len());
        for (name, data) in &s.files {
            let i = self
                .run_file(name)
                .ok_or_else(|| StateError::mismatch(NAME, format!("no file {name} here")))?;
            let writable = self.files.get(i).and_then(|f| f.pristine.as_ref());
            if let Some(p) = writable
                && p.len() != data.len()
            {
                return Err(StateError::mismatch(
                    NAME,
                    format!("{name} is {} bytes here, {} saved", p.len(), data.len()),
                ));
            }
            super::check_size(data.len())
                .map_err(|e| StateError::mismatch(NAME, format!("{name}: {e}")))?;
            targets.push(i);
        }
        let offset = usize::try_from(s.offset)
            .map_err(|_| StateError::mismatch(NAME, "item offset out of range"))?;

        for (i, (_, data)) in targets.into_iter().zip(s.files) {
            if let Some(f) = self.files.get_mut(i) {
                f.data = data;
            }
        }
        for (g, saved) in self.lazy.iter_mut().zip(s.lazy) {
            g.state = saved.into();
        }
        self.selector = s.selector;
        self.offset = offset;
        self.dma_high = s.dma_high;
        // The directory is rendered on select; a guest half-way through reading it goes
        // on in the rendering of the restored files.
        self.render_directory();
        Ok(())
    }
}
