//! MSI-X (PCI Local Bus 3.0 §6.8.2): the capability in configuration space, the vector table
//! and the pending bit array a function keeps in one of its BARs.
//!
//! Data flow: a function adds the capability with [`MsixState::add_capability`], forwards
//! guest accesses to its table and PBA windows to [`MsixState::read_table`] /
//! [`MsixState::write_table`] / [`MsixState::read_pba`], and after every configuration write
//! to the capability's dword calls [`MsixState::sync_control`]. Its interrupt sources call
//! [`MsixState::signal`]: an unmasked vector goes out at once through [`MsixInterrupt`]
//! (an irqfd under KVM), a masked one sets its pending bit and fires when unmasked. Every
//! table entry change reaches the machine through [`MsiRoutes`], which programs the route.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::{CAP_ID_MSIX, PciConfig};
use super::{MsiRoutes, MsixInterrupt, PciError};
use crate::state::StateError;

/// The saved MSI-X table and pending bits ([`MsixState::save`]): per vector address low,
/// address high, data and vector control.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixSaved {
    pub enabled: bool,
    pub function_mask: bool,
    pub table: Vec<[u32; 4]>,
    pub pending: Vec<bool>,
}

/// Message Control bit 15 (byte 3 of the capability, bit 7): MSI-X Enable.
pub const MSIX_ENABLE: u8 = 0x80;
/// Message Control bit 14 (byte 3, bit 6): Function Mask.
pub const MSIX_FUNCTION_MASK: u8 = 0x40;
/// Bytes per table entry: address low, address high, data, vector control.
pub const MSIX_ENTRY_SIZE: u64 = 16;

#[derive(Debug, Clone, Copy, Default)]
struct MsixEntry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl MsixEntry {
    fn masked(&self) -> bool {
        self.control & 1 != 0
    }
}

/// The MSI-X table, its pending bits and the capability's enable and mask bits.
pub struct MsixState {
    enabled: bool,
    function_mask: bool,
    table: Vec<MsixEntry>,
    pending: Vec<bool>,
    trigger: Arc<dyn MsixInterrupt>,
    routes: Arc<dyn MsiRoutes>,
}

impl MsixState {
    /// A table of `vectors` entries, all masked, MSI-X disabled.
    pub fn new(vectors: u16, trigger: Arc<dyn MsixInterrupt>, routes: Arc<dyn MsiRoutes>) -> Self {
        let entry = MsixEntry {
            control: 1,
            ..MsixEntry::default()
        };
        Self {
            enabled: false,
            function_mask: false,
            table: vec![entry; usize::from(vectors)],
            pending: vec![false; usize::from(vectors)],
            trigger,
            routes,
        }
    }

    /// Adds the MSI-X capability for `vectors` vectors whose table and PBA live in BAR
    /// `bar` at `table_offset` and `pba_offset`; the guest may write Enable and Function
    /// Mask. Returns the capability's offset in configuration space.
    pub fn add_capability(
        config: &mut PciConfig,
        vectors: u16,
        bar: u8,
        table_offset: u32,
        pba_offset: u32,
    ) -> Result<usize, PciError> {
        let mut body = vectors.saturating_sub(1).to_le_bytes().to_vec();
        body.extend_from_slice(&(table_offset | u32::from(bar & 7)).to_le_bytes());
        body.extend_from_slice(&(pba_offset | u32::from(bar & 7)).to_le_bytes());
        config.add_capability(
            CAP_ID_MSIX,
            &body,
            &[0, 0, 0, MSIX_ENABLE | MSIX_FUNCTION_MASK],
        )
    }

    /// Number of vectors in the table.
    pub fn vectors(&self) -> u16 {
        self.table.len() as u16
    }

    /// True while the guest has MSI-X enabled (the function must not use INTx then).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Takes Enable and Function Mask from the capability at `cap` after a configuration
    /// write, and fires what unmasking released.
    pub fn sync_control(&mut self, config: &PciConfig, cap: usize) {
        let control = config.byte(cap + 3);
        self.enabled = control & MSIX_ENABLE != 0;
        self.function_mask = control & MSIX_FUNCTION_MASK != 0;
        self.deliver_pending();
    }

    /// Sets Enable and Function Mask directly (what [`MsixState::sync_control`] reads).
    pub fn set_control(&mut self, enabled: bool, function_mask: bool) {
        self.enabled = enabled;
        self.function_mask = function_mask;
        self.deliver_pending();
    }

    /// Raises `vector`, or marks it pending while it is masked. Does nothing while MSI-X
    /// is disabled or for a vector past the table.
    pub fn signal(&mut self, vector: u16) {
        let v = usize::from(vector);
        let (Some(entry), true) = (self.table.get(v), self.enabled) else {
            return;
        };
        if self.function_mask || entry.masked() {
            if let Some(p) = self.pending.get_mut(v) {
                *p = true;
            }
        } else if let Err(e) = self.trigger.trigger(vector) {
            log::warn!("msix: cannot raise vector {vector}: {e}");
        }
    }

    /// Fires the pending vectors that are no longer masked.
    pub fn deliver_pending(&mut self) {
        if !self.enabled || self.function_mask {
            return;
        }
        for (v, (pending, entry)) in self.pending.iter_mut().zip(&self.table).enumerate() {
            if *pending && !entry.masked() {
                *pending = false;
                if let Err(e) = self.trigger.trigger(v as u16) {
                    log::warn!("msix: cannot raise vector {v}: {e}");
                }
            }
        }
    }

    /// A guest read of the table window at `offset`.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (v, field) = (
            (offset / MSIX_ENTRY_SIZE) as usize,
            (offset % MSIX_ENTRY_SIZE) as usize,
        );
        let Some(e) = self.table.get(v) else {
            return;
        };
        let mut bytes = [0u8; 16];
        for (chunk, w) in bytes
            .chunks_exact_mut(4)
            .zip([e.addr_lo, e.addr_hi, e.data, e.control])
        {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        if let Some(src) = bytes.get(field..field + data.len()) {
            data.copy_from_slice(src);
        }
    }

    /// A guest write to the table window at `offset`: dword or aligned qword accesses.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let (v, field) = (
            (offset / MSIX_ENTRY_SIZE) as usize,
            (offset % MSIX_ENTRY_SIZE) as usize,
        );
        if !matches!((field, data.len()), (0 | 4 | 8 | 12, 4) | (0 | 8, 8)) {
            return;
        }
        let Some(e) = self.table.get_mut(v) else {
            return;
        };
        let mut words = [e.addr_lo, e.addr_hi, e.data, e.control];
        for (w, chunk) in words[field / 4..].iter_mut().zip(data.chunks_exact(4)) {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            *w = u32::from_le_bytes(b);
        }
        let was_masked = e.masked();
        *e = MsixEntry {
            addr_lo: words[0],
            addr_hi: words[1],
            data: words[2],
            control: words[3] & 1,
        };
        let e = *e;
        self.routes.update(
            v as u16,
            u64::from(e.addr_hi) << 32 | u64::from(e.addr_lo),
            e.data,
            e.masked(),
        );
        if was_masked && !e.masked() {
            self.deliver_pending();
        }
    }

    /// A guest read of the pending bit array at `offset`.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            let first = (offset as usize).saturating_add(i).saturating_mul(8);
            *d = (0..8)
                .filter(|bit| self.pending.get(first + bit).copied().unwrap_or(false))
                .fold(0u8, |acc, bit| acc | 1 << bit);
        }
    }

    /// The table, pending bits and control bits for a saved VM.
    pub fn save(&self) -> MsixSaved {
        MsixSaved {
            enabled: self.enabled,
            function_mask: self.function_mask,
            table: self
                .table
                .iter()
                .map(|e| [e.addr_lo, e.addr_hi, e.data, e.control])
                .collect(),
            pending: self.pending.clone(),
        }
    }

    /// Takes back a saved table on a fresh one of the same size, and programs every
    /// vector's route again through [`MsiRoutes`] as a guest's table writes do. Pending
    /// bits stay pending (they fire when the guest unmasks, as before the save).
    pub fn restore(&mut self, device: &str, saved: &MsixSaved) -> Result<(), StateError> {
        if saved.table.len() != self.table.len() || saved.pending.len() != self.pending.len() {
            return Err(StateError::mismatch(
                device,
                format!(
                    "{} saved MSI-X vectors, this device has {}",
                    saved.table.len(),
                    self.table.len()
                ),
            ));
        }
        for (v, (e, w)) in self.table.iter_mut().zip(&saved.table).enumerate() {
            *e = MsixEntry {
                addr_lo: w[0],
                addr_hi: w[1],
                data: w[2],
                control: w[3] & 1,
            };
            self.routes.update(
                v as u16,
                u64::from(e.addr_hi) << 32 | u64::from(e.addr_lo),
                e.data,
                e.masked(),
            );
        }
        self.pending.copy_from_slice(&saved.pending);
        self.enabled = saved.enabled;
        self.function_mask = saved.function_mask;
        self.deliver_pending();
        Ok(())
    }

    /// Back to power-on state: every entry masked and cleared, nothing pending, disabled.
    pub fn reset(&mut self) {
        for (e, p) in self.table.iter_mut().zip(self.pending.iter_mut()) {
            *e = MsixEntry {
                control: 1,
                ..MsixEntry::default()
            };
            *p = false;
        }
        self.enabled = false;
        self.function_mask = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fired(Mutex<Vec<u16>>);
    impl MsixInterrupt for Fired {
        fn trigger(&self, vector: u16) -> std::io::Result<()> {
            self.0.lock().unwrap().push(vector);
            Ok(())
        }
    }
    impl MsiRoutes for Fired {
        fn update(&self, vector: u16, _addr: u64, _data: u32, _masked: bool) {
            self.0.lock().unwrap().push(1000 + vector);
        }
    }

    #[test]
    fn a_masked_vector_stays_pending_until_unmasked() {
        let fired = Arc::new(Fired::default());
        let routes = Arc::new(Fired::default());
        let mut m = MsixState::new(4, fired.clone(), routes.clone());
        m.signal(1);
        assert!(
            fired.0.lock().unwrap().is_empty(),
            "disabled: nothing fires"
        );
        m.set_control(true, false);
        m.signal(1);
        let mut pba = [0u8; 1];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        m.write_table(16 + 12, &0u32.to_le_bytes());
        assert_eq!(*fired.0.lock().unwrap(), vec![1]);
        assert_eq!(*routes.0.lock().unwrap(), vec![1001]);
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        // Past the table, odd widths: ignored.
        m.write_table(4 * 16, &1u32.to_le_bytes());
        m.write_table(3, &[1, 2]);
        m.signal(9);
        assert_eq!(fired.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_saved_table_restores_its_routes_and_pending_bits() {
        let fired = Arc::new(Fired::default());
        let mut m = MsixState::new(2, fired.clone(), fired.clone());
        m.set_control(true, false);
        m.write_table(0, &0xfee0_0000u32.to_le_bytes());
        m.write_table(8, &0x41u32.to_le_bytes());
        m.write_table(12, &0u32.to_le_bytes());
        m.signal(1);
        let saved = m.save();

        let fired2 = Arc::new(Fired::default());
        let mut r = MsixState::new(2, fired2.clone(), fired2.clone());
        r.restore("t", &saved).unwrap();
        assert_eq!(
            *fired2.0.lock().unwrap(),
            vec![1000, 1001],
            "both routed again"
        );
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        m.read_table(0, &mut a);
        r.read_table(0, &mut b);
        assert_eq!(a, b);
        let mut pba = [0u8; 1];
        r.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10, "vector 1 still pending");
        r.write_table(16 + 12, &0u32.to_le_bytes());
        assert_eq!(fired2.0.lock().unwrap().last(), Some(&1));
        r.signal(0);
        assert_eq!(fired2.0.lock().unwrap().last(), Some(&0));

        let mut small = MsixState::new(1, fired.clone(), fired);
        assert!(small.restore("t", &saved).is_err());
        assert!(!small.enabled());
    }
}
