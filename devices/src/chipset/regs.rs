//! The device-specific part of a chipset function's configuration space (bytes 0x40-0xFF),
//! where the MCH and the LPC bridge keep their registers.
//!
//! [`crate::pci::PciConfig`] owns the standard header and treats everything past it as
//! read-only zeroes; a chipset function instead answers configuration dwords 0x10-0x3F from
//! a [`ConfigBytes`]: a byte array with, per byte, the bits a guest may change. A write
//! merges the guest's bits through that mask and reports the byte range it touched, so the
//! owner can act on the registers inside it (move a window, remap shadow RAM) and nothing
//! else. Bytes no register claims are plain storage, as on QEMU's chipset, so firmware that
//! writes a register Hospes does not model reads back what it wrote.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::pci::config::{PciConfigState, REG_HEADER};
use crate::pci::{BarChange, PciConfig, PciDevice, PciIds};
use crate::state::StateError;

/// First byte of the device-specific part of configuration space (PCI 3.0 §6.1: the type-0
/// header is 64 bytes).
pub const START: usize = 0x40;
/// First byte past the conventional configuration space reachable through 0xCF8/0xCFC.
pub const END: usize = 0x100;

/// Registers 0x40..0x100 of one function.
pub struct ConfigBytes {
    bytes: [u8; END - START],
    wmask: [u8; END - START],
}

impl Default for ConfigBytes {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBytes {
    /// All bytes zero and writable (plain storage).
    pub fn new() -> Self {
        Self {
            bytes: [0; END - START],
            wmask: [0xff; END - START],
        }
    }

    /// Whether configuration dword `reg` lies in this range.
    pub fn holds(reg: usize) -> bool {
        (START / 4..END / 4).contains(&reg)
    }

    fn slot(offset: usize) -> Option<usize> {
        offset.checked_sub(START).filter(|i| *i < END - START)
    }

    /// Sets the bytes at `offset` to `value` regardless of the write mask (power-on values,
    /// read-only registers, a register's side effect). Bytes outside the range are ignored.
    pub fn set(&mut self, offset: usize, value: &[u8]) {
        for (i, v) in value.iter().enumerate() {
            if let Some(b) = Self::slot(offset + i).and_then(|s| self.bytes.get_mut(s)) {
                *b = *v;
            }
        }
    }

    /// Sets the write mask of the bytes at `offset`.
    pub fn set_wmask(&mut self, offset: usize, mask: &[u8]) {
        for (i, m) in mask.iter().enumerate() {
            if let Some(b) = Self::slot(offset + i).and_then(|s| self.wmask.get_mut(s)) {
                *b = *m;
            }
        }
    }

    /// The byte at `offset` (0xff outside the range, as an absent register reads).
    pub fn byte(&self, offset: usize) -> u8 {
        Self::slot(offset)
            .and_then(|s| self.bytes.get(s))
            .copied()
            .unwrap_or(0xff)
    }

    /// `N` little-endian bytes from `offset`.
    fn array<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.byte(offset + i);
        }
        out
    }

    /// The little-endian word at `offset`.
    pub fn word(&self, offset: usize) -> u16 {
        u16::from_le_bytes(self.array(offset))
    }

    /// The little-endian dword at `offset`.
    pub fn dword(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.array(offset))
    }

    /// The little-endian qword at `offset`.
    pub fn qword(&self, offset: usize) -> u64 {
        u64::from_le_bytes(self.array(offset))
    }

    /// Configuration dword `reg` as a guest reads it.
    pub fn read_dword(&self, reg: usize) -> u32 {
        self.dword(reg * 4)
    }

    /// Merges `data` (1, 2 or 4 bytes) at byte `offset` inside dword `reg` through the write
    /// mask. Returns the configuration offsets the access covered, or `None` for an access
    /// that does not fit the dword (which changes nothing).
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<Range<usize>> {
        let offset = usize::try_from(offset).ok()?;
        let fits = offset.checked_add(data.len()).is_some_and(|end| end <= 4);
        if !Self::holds(reg) || data.is_empty() || !fits {
            return None;
        }
        let first = reg * 4 + offset;
        for (i, v) in data.iter().enumerate() {
            let slot = Self::slot(first + i)?;
            if let (Some(b), Some(m)) = (self.bytes.get_mut(slot), self.wmask.get(slot)) {
                *b = (*b & !m) | (v & m);
            }
        }
        Some(first..first + data.len())
    }
}

/// The saved configuration space of a chipset function ([`ChipsetConfig::save`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChipsetConfigState {
    header: PciConfigState,
    /// Bytes 0x40..0x100.
    bytes: Vec<u8>,
    /// Their write masks: a lock the guest set (SMRAM.D_LCK, SMI_LOCK) narrows them.
    wmask: Vec<u8>,
}

/// Header type bit 7: the device has more functions than function 0 (PCI 3.0 §6.2.1).
const HEADER_MULTIFUNCTION: u32 = 0x80 << 16;

/// The whole configuration space of a chipset function: the standard header (which has no
/// BARs) and the device-specific bytes.
pub struct ChipsetConfig {
    pub header: PciConfig,
    pub regs: ConfigBytes,
    multifunction: bool,
}

impl ChipsetConfig {
    /// A function with identity `ids`; `multifunction` sets header type bit 7, as the
    /// function 0 of a device with siblings (the LPC bridge at 00:1f.0) shows it.
    pub fn new(ids: PciIds, multifunction: bool) -> Self {
        Self {
            header: PciConfig::new(ids),
            regs: ConfigBytes::new(),
            multifunction,
        }
    }

    /// Configuration dword `reg` as a guest reads it.
    pub fn read(&self, reg: usize) -> u32 {
        if ConfigBytes::holds(reg) {
            return self.regs.read_dword(reg);
        }
        let value = self.header.read_reg(reg);
        if reg == REG_HEADER && self.multifunction {
            value | HEADER_MULTIFUNCTION
        } else {
            value
        }
    }

    /// A guest's configuration write. Returns the device-specific bytes it covered; header
    /// writes (command register, cache line size) are handled by [`PciConfig`] and return
    /// `None`, as there are no BARs they could move.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<Range<usize>> {
        if ConfigBytes::holds(reg) {
            self.regs.write(reg, offset, data)
        } else {
            // No BARs are declared, so no BAR can move.
            let _ = self.header.write_reg(reg, offset, data);
            None
        }
    }
}

impl ChipsetConfig {
    /// The space as the guest left it, for a saved VM.
    pub fn save(&self) -> ChipsetConfigState {
        ChipsetConfigState {
            header: self.header.save(),
            bytes: self.regs.bytes.to_vec(),
            wmask: self.regs.wmask.to_vec(),
        }
    }

    /// Takes back a saved space on one built as for a fresh boot (`device` names it in
    /// errors). The header takes the bits a guest may write; the device-specific bytes take
    /// the saved values except where neither this space nor the saved one let a guest
    /// write (read-only registers such as TOLUD stay as this configuration sets them); a
    /// saved write mask can only be narrower than the power-on one (a lock). Only the
    /// register bytes change: the owner then reports what they drive through its traits.
    /// On error nothing changes.
    pub fn restore(&mut self, device: &str, state: &ChipsetConfigState) -> Result<(), StateError> {
        let n = END - START;
        if state.bytes.len() != n || state.wmask.len() != n {
            return Err(StateError::mismatch(
                device,
                format!(
                    "{} register bytes and {} masks saved, {n} expected",
                    state.bytes.len(),
                    state.wmask.len()
                ),
            ));
        }
        // No BARs: nothing can move.
        let _ = self.header.restore(device, &state.header)?;
        let regs = &mut self.regs;
        for (i, (saved, saved_mask)) in state.bytes.iter().zip(&state.wmask).enumerate() {
            if let (Some(b), Some(m)) = (regs.bytes.get_mut(i), regs.wmask.get_mut(i)) {
                let fixed = !*m & !*saved_mask;
                *b = (*b & fixed) | (saved & !fixed);
                *m &= saved_mask;
            }
        }
        Ok(())
    }
}

/// A chipset function: configuration space and nothing else (no BARs, so nothing reaches it
/// through a bus). Implementing it makes the type a [`PciDevice`] whose configuration
/// accesses go through its [`ChipsetConfig`], with [`ChipsetFunction::after_write`] called
/// after every write that covered device-specific bytes, and a [`BusDevice`] that decodes
/// nothing (what [`crate::pci::PciRoot::add_device`] asks for).
pub trait ChipsetFunction: Send {
    fn chipset_config(&self) -> &ChipsetConfig;
    fn chipset_config_mut(&mut self) -> &mut ChipsetConfig;
    /// Acts on a guest write that covered the configuration bytes `written`.
    fn after_write(&mut self, written: &Range<usize>);
}

impl<T: ChipsetFunction> PciDevice for T {
    fn config(&self) -> &PciConfig {
        &self.chipset_config().header
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.chipset_config_mut().header
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        self.chipset_config().read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarChange> {
        if let Some(written) = self.chipset_config_mut().write(reg, offset, data) {
            self.after_write(&written);
        }
        Vec::new()
    }
}

impl<T: ChipsetFunction> BusDevice for T {
    fn read(&mut self, _base: u64, _offset: u64, _data: &mut [u8]) {}
    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

/// Whether the configuration bytes `written` overlap the register at `offset` of `len` bytes.
pub fn touches(written: &Range<usize>, offset: usize, len: usize) -> bool {
    written.start < offset + len && offset < written.end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_merge_through_the_mask_and_report_the_bytes_covered() {
        let mut r = ConfigBytes::new();
        r.set(0x40, &[0x01, 0x00]);
        r.set_wmask(0x40, &[0x80, 0xff]);
        assert_eq!(r.write(0x10, 0, &[0xff, 0x12]), Some(0x40..0x42));
        assert_eq!(r.word(0x40), 0x1281);
        assert_eq!(r.read_dword(0x10), 0x0000_1281);
        assert_eq!(r.write(0x3f, 3, &[0xaa]), Some(0xff..0x100));
        assert_eq!(r.byte(0xff), 0xaa);
    }

    #[test]
    fn rejects_accesses_outside_its_dwords_or_past_a_dword() {
        let mut r = ConfigBytes::new();
        assert_eq!(r.write(0x0f, 0, &[1]), None);
        assert_eq!(r.write(0x40, 0, &[1]), None);
        assert_eq!(r.write(0x10, 2, &[1, 2, 3]), None);
        assert_eq!(r.write(0x10, 0, &[]), None);
        assert_eq!(r.write(0x10, u64::MAX, &[1]), None);
        assert_eq!(r.qword(0x40), 0);
        assert_eq!(r.byte(0x3f), 0xff);
        assert_eq!(r.byte(0x100), 0xff);
    }

    #[test]
    fn overlap_check_sees_partial_coverage_only() {
        assert!(touches(&(0x60..0x64), 0x60, 8));
        assert!(touches(&(0x64..0x68), 0x60, 8));
        assert!(!touches(&(0x68..0x6c), 0x60, 8));
        assert!(!touches(&(0x5c..0x60), 0x60, 8));
    }
}
