//! Type-0 PCI configuration space of one function.
//!
//! The space is an array of little-endian dwords plus, for every dword, the mask of bits a
//! guest may change. Reads return the array; writes merge the guest's bits through the mask.
//! BARs follow the same rule: a BAR's mask keeps the size-aligned address bits only, so the
//! classic sizing probe (write all-ones, read back) returns `!(size - 1) | flags` with no
//! special case. After every write the space works out where each memory BAR should now be
//! decoded (address programmed, memory decoding on in the command register) and reports the
//! BARs whose placement changed, so the owner can move them on the MMIO bus.
//!
//! The expansion ROM BAR (register 0x30) rides the same path as BAR index [`ROM_SLOT`]: its
//! mask keeps address bits 31:11 down to its size plus the enable bit 0, and it decodes only
//! while both its enable bit and the command register's memory-space bit are set (PCI Local
//! Bus 3.0 §6.2.5.2). Its [`BarChange`]s carry `bar: ROM_SLOT`.

use serde::{Deserialize, Serialize};

use super::PciError;
use crate::state::StateError;

/// Dwords in the extended (ECAM) configuration space: 4 KiB.
pub const CONFIG_DWORDS: usize = 1024;
/// First byte after the conventional space reachable through ports 0xCF8/0xCFC.
pub const CONVENTIONAL_SIZE: usize = 256;

pub const REG_ID: usize = 0;
pub const REG_COMMAND_STATUS: usize = 1;
pub const REG_CLASS_REVISION: usize = 2;
pub const REG_HEADER: usize = 3;
pub const REG_BAR0: usize = 4;
pub const REG_SUBSYSTEM: usize = 11;
/// The expansion ROM base address register of a type-0 header (byte 0x30).
pub const REG_ROM: usize = 12;
pub const REG_CAP_POINTER: usize = 13;
pub const REG_INTERRUPT: usize = 15;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND_SERR: u16 = 1 << 8;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAP_LIST: u32 = 1 << 4;

/// The BAR index that names the expansion ROM BAR in [`BarChange`] and the BAR accessors
/// (after BARs 0-5, as QEMU's `PCI_ROM_SLOT`).
pub const ROM_SLOT: usize = 6;
/// Expansion ROM BAR: the enable bit and the address bits (PCI Local Bus 3.0 §6.2.5.2).
const ROM_ENABLE: u32 = 1 << 0;
const ROM_ADDRESS_MASK: u32 = 0xffff_f800;
/// Smallest and largest expansion ROM (2 KiB, the address field's granularity; 16 MiB,
/// the most the specification allows).
const ROM_MIN_SIZE: u64 = 0x800;
const ROM_MAX_SIZE: u64 = 16 << 20;

/// Capability ids this crate places.
pub const CAP_ID_VENDOR: u8 = 0x09;
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_MSIX: u8 = 0x11;

/// First byte capabilities may use (the standard header ends at 0x40).
const CAP_START: usize = 0x40;

/// Identity of a function: what enumeration shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Base class, subclass and programming interface.
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// The kind of a memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Mem32,
    /// Takes two BAR slots: the next one holds the high dword.
    Mem64,
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    size: u64,
    kind: BarKind,
    prefetchable: bool,
    /// Where the BAR is decoded now, as last reported to the owner.
    mapped: Option<u64>,
}

/// A memory BAR that moved: the owner removes `old` from the MMIO bus and inserts `new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarChange {
    pub bar: u8,
    pub old: Option<u64>,
    pub new: Option<u64>,
    pub len: u64,
}

/// The saved configuration space of one function ([`PciConfig::save`]): the registers up to
/// the last non-zero one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfigState {
    pub regs: Vec<u32>,
}

/// The configuration space of one type-0 function.
pub struct PciConfig {
    regs: Box<[u32; CONFIG_DWORDS]>,
    wmask: Box<[u32; CONFIG_DWORDS]>,
    /// BARs 0-5, then the expansion ROM at [`ROM_SLOT`].
    bars: [Option<Bar>; 7],
    /// BAR slots in use, high halves of 64-bit BARs included.
    taken: [bool; 6],
    /// Byte offset of the next free capability byte, and of the last capability placed.
    cap_next_free: usize,
    cap_last: Option<usize>,
}

impl PciConfig {
    /// A function with the given identity, no BARs and no capabilities.
    pub fn new(ids: PciIds) -> Self {
        let mut regs = Box::new([0u32; CONFIG_DWORDS]);
        let mut wmask = Box::new([0u32; CONFIG_DWORDS]);
        regs[REG_ID] = u32::from(ids.vendor) | u32::from(ids.device) << 16;
        regs[REG_CLASS_REVISION] = u32::from(ids.revision)
            | u32::from(ids.prog_if) << 8
            | u32::from(ids.subclass) << 16
            | u32::from(ids.class) << 24;
        regs[REG_SUBSYSTEM] = u32::from(ids.subsystem_vendor) | u32::from(ids.subsystem) << 16;
        wmask[REG_COMMAND_STATUS] = u32::from(
            COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_SERR | COMMAND_INTX_DISABLE,
        );
        // Cache line size and latency timer are plain storage; interrupt line too.
        wmask[REG_HEADER] = 0x0000_ffff;
        wmask[REG_INTERRUPT] = 0x0000_00ff;
        Self {
            regs,
            wmask,
            bars: [None; 7],
            taken: [false; 6],
            cap_next_free: CAP_START,
            cap_last: None,
        }
    }

    /// The identity this space was built with (vendor and device).
    pub fn vendor_device(&self) -> (u16, u16) {
        let id = self.regs[REG_ID];
        (id as u16, (id >> 16) as u16)
    }

    /// Declares memory BAR `index` of `size` bytes (a power of two, at least 4 KiB so that
    /// every BAR owns whole pages). A 64-bit BAR also takes slot `index + 1`.
    pub fn add_bar(
        &mut self,
        index: usize,
        size: u64,
        kind: BarKind,
        prefetchable: bool,
    ) -> Result<(), PciError> {
        let slots = if kind == BarKind::Mem64 { 2 } else { 1 };
        let max_size = if kind == BarKind::Mem64 {
            1 << 63
        } else {
            1 << 31
        };
        if index + slots > 6 || self.taken[index..index + slots].iter().any(|t| *t) {
            return Err(PciError::BarSlot { index });
        }
        if !size.is_power_of_two() || !(0x1000..=max_size).contains(&size) {
            return Err(PciError::BarSize { size });
        }
        let flags = (if kind == BarKind::Mem64 { 0b100 } else { 0 })
            | (if prefetchable { 0b1000 } else { 0 });
        let mask = !(size - 1);
        self.regs[REG_BAR0 + index] = flags;
        self.wmask[REG_BAR0 + index] = (mask as u32) & !0xf;
        if kind == BarKind::Mem64 {
            self.wmask[REG_BAR0 + index + 1] = (mask >> 32) as u32;
        }
        self.taken[index..index + slots].fill(true);
        self.bars[index] = Some(Bar {
            size,
            kind,
            prefetchable,
            mapped: None,
        });
        Ok(())
    }

    /// Declares the expansion ROM BAR of `size` bytes (a power of two from 2 KiB to 16 MiB).
    /// It reads as BAR [`ROM_SLOT`] through the accessors below and starts disabled.
    pub fn add_rom_bar(&mut self, size: u64) -> Result<(), PciError> {
        if self.bars[ROM_SLOT].is_some() {
            return Err(PciError::BarSlot { index: ROM_SLOT });
        }
        if !size.is_power_of_two() || !(ROM_MIN_SIZE..=ROM_MAX_SIZE).contains(&size) {
            return Err(PciError::BarSize { size });
        }
        self.regs[REG_ROM] = 0;
        self.wmask[REG_ROM] = (!(size - 1) as u32 & ROM_ADDRESS_MASK) | ROM_ENABLE;
        self.bars[ROM_SLOT] = Some(Bar {
            size,
            kind: BarKind::Mem32,
            prefetchable: false,
            mapped: None,
        });
        Ok(())
    }

    /// Whether the expansion ROM BAR's enable bit is set (decoding also needs memory space).
    pub fn rom_enabled(&self) -> bool {
        self.regs[REG_ROM] & ROM_ENABLE != 0
    }

    /// Size of BAR `index`, if declared.
    pub fn bar_size(&self, index: usize) -> Option<u64> {
        self.bars.get(index).copied().flatten().map(|b| b.size)
    }

    /// Indices and sizes of the declared BARs, the expansion ROM last as [`ROM_SLOT`].
    pub fn bar_list(&self) -> impl Iterator<Item = (usize, u64, BarKind)> + '_ {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|b| (i, b.size, b.kind)))
    }

    /// The address programmed into BAR `index` (whether or not decoding is on).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        if index == ROM_SLOT {
            return Some(u64::from(self.regs[REG_ROM] & ROM_ADDRESS_MASK));
        }
        let low = u64::from(self.regs[REG_BAR0 + index] & !0xf);
        let high = match bar.kind {
            BarKind::Mem64 => u64::from(self.regs[REG_BAR0 + index + 1]) << 32,
            BarKind::Mem32 => 0,
        };
        Some(high | low)
    }

    /// Where BAR `index` is decoded now, if anywhere.
    pub fn bar_mapped(&self, index: usize) -> Option<u64> {
        self.bars.get(index).copied().flatten()?.mapped
    }

    /// Which decoded BAR holds `addr`, and the offset inside it.
    pub fn bar_for_address(&self, addr: u64) -> Option<(usize, u64)> {
        self.bars.iter().enumerate().find_map(|(i, b)| {
            let b = (*b)?;
            let base = b.mapped?;
            let off = addr.checked_sub(base)?;
            (off < b.size).then_some((i, off))
        })
    }

    /// Programs BAR `index` as firmware would (the helper's allocator for direct boot).
    /// The expansion ROM keeps its enable bit: firmware assigns it an address but leaves it
    /// off until it reads the ROM.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), PciError> {
        let bar = self
            .bars
            .get(index)
            .copied()
            .flatten()
            .ok_or(PciError::BarSlot { index })?;
        if addr & (bar.size - 1) != 0 || (bar.kind == BarKind::Mem32 && addr >> 32 != 0) {
            return Err(PciError::BarAddress { addr });
        }
        if index == ROM_SLOT {
            self.regs[REG_ROM] = addr as u32 | (self.regs[REG_ROM] & ROM_ENABLE);
            return Ok(());
        }
        let flags = self.regs[REG_BAR0 + index] & 0xf;
        self.regs[REG_BAR0 + index] = addr as u32 | flags;
        if bar.kind == BarKind::Mem64 {
            self.regs[REG_BAR0 + index + 1] = (addr >> 32) as u32;
        }
        Ok(())
    }

    /// Records that the owner placed (or removed) BAR `index` on its bus, without a guest
    /// write; used after the helper assigns BARs itself.
    pub fn set_bar_mapped(&mut self, index: usize, at: Option<u64>) {
        if let Some(Some(bar)) = self.bars.get_mut(index) {
            bar.mapped = at;
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.regs[REG_COMMAND_STATUS] as u16
    }

    /// Sets command register bits (the helper enabling decoding for direct boot).
    pub fn set_command(&mut self, bits: u16) {
        self.regs[REG_COMMAND_STATUS] |= u32::from(bits);
    }

    /// Sets the interrupt pin register (1 = INTA#).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.regs[REG_INTERRUPT] = (self.regs[REG_INTERRUPT] & !0xff00) | u32::from(pin) << 8;
    }

    /// Keeps the bytes from the next free capability byte up to `end` for device-specific
    /// registers the guest may read and write (ICH9 functions keep 0x40..0x60 so, and
    /// drivers write them): capabilities go after them.
    pub fn add_device_specific(&mut self, end: usize) {
        let end = end.min(CONVENTIONAL_SIZE);
        for reg in self.cap_next_free.div_ceil(4)..end / 4 {
            self.wmask[reg] = !0;
        }
        self.cap_next_free = self.cap_next_free.max(end);
    }

    /// Appends a capability: `body` is the capability without its id and next-pointer bytes.
    /// `writable` gives, per byte of the whole capability (id and next included), the bits a
    /// guest may change. Returns the capability's offset in configuration space.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciError> {
        let len = (body.len() + 2).next_multiple_of(4);
        let at = self.cap_next_free;
        if at + len > CONVENTIONAL_SIZE {
            return Err(PciError::CapabilitySpace);
        }
        let mut bytes = vec![0u8; len];
        bytes[0] = id;
        bytes[2..2 + body.len()].copy_from_slice(body);
        for (i, b) in bytes.iter().enumerate() {
            self.set_byte(at + i, *b);
            let mask = writable.get(i).copied().unwrap_or(0);
            let reg = &mut self.wmask[(at + i) / 4];
            let shift = ((at + i) % 4) * 8;
            *reg = (*reg & !(0xff << shift)) | u32::from(mask) << shift;
        }
        match self.cap_last {
            Some(prev) => self.set_byte(prev + 1, at as u8),
            None => {
                self.regs[REG_CAP_POINTER] = at as u32;
                self.regs[REG_COMMAND_STATUS] |= STATUS_CAP_LIST << 16;
            }
        }
        self.cap_last = Some(at);
        self.cap_next_free = at + len;
        Ok(at)
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        let reg = &mut self.regs[offset / 4];
        *reg = (*reg & !(0xff << shift)) | u32::from(value) << shift;
    }

    /// Reads a byte of configuration space (capability state for the owning device).
    pub fn byte(&self, offset: usize) -> u8 {
        self.regs
            .get(offset / 4)
            .map_or(0xff, |r| (r >> ((offset % 4) * 8)) as u8)
    }

    /// Reads dword `reg`; registers past the space read as zero, as absent capabilities do.
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` inside dword `reg`, and returns the
    /// BARs whose decoded placement changed.
    pub fn write_reg(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarChange> {
        let Some(old) = self.regs.get(reg).copied() else {
            return Vec::new();
        };
        if offset as usize + data.len() > 4 || data.is_empty() {
            return Vec::new();
        }
        let mut value = 0u32;
        let mut bytes_mask = 0u32;
        for (i, b) in data.iter().enumerate() {
            let shift = (offset as usize + i) * 8;
            value |= u32::from(*b) << shift;
            bytes_mask |= 0xff << shift;
        }
        let mask = self.wmask[reg] & bytes_mask;
        self.regs[reg] = (old & !mask) | (value & mask);
        // A write of all-ones to a BAR dword is the sizing probe: the BAR keeps decoding
        // where it was until a real address comes back. The ROM's probe sets its address
        // bits, whatever it writes to the enable bit.
        let sizing = match reg {
            REG_ROM => {
                let addr_bytes = bytes_mask & ROM_ADDRESS_MASK;
                addr_bytes != 0 && value & addr_bytes == addr_bytes
            }
            r => (REG_BAR0..REG_BAR0 + 6).contains(&r) && value & bytes_mask == bytes_mask,
        };
        if sizing {
            return Vec::new();
        }
        self.update_mappings()
    }

    fn update_mappings(&mut self) -> Vec<BarChange> {
        let memory = self.command() & COMMAND_MEMORY != 0;
        let mut changes = Vec::new();
        for (index, bar) in self.bars.into_iter().enumerate() {
            let Some(bar) = bar else {
                continue;
            };
            let decode = memory && (index != ROM_SLOT || self.rom_enabled());
            let addr = self.bar_address(index).filter(|&a| decode && a != 0);
            if addr != bar.mapped {
                changes.push(BarChange {
                    bar: index as u8,
                    old: bar.mapped,
                    new: addr,
                    len: bar.size,
                });
                self.set_bar_mapped(index, addr);
            }
        }
        changes
    }

    /// The guest-visible state of this space for a saved VM: every register as the guest
    /// left it (BAR addresses, command, capability registers, device-specific bytes).
    pub fn save(&self) -> PciConfigState {
        let used = self
            .regs
            .iter()
            .rposition(|r| *r != 0)
            .map_or(0, |last| last + 1);
        PciConfigState {
            regs: self.regs[..used].to_vec(),
        }
    }

    /// Takes back a [`PciConfigState`] on a space built as for a fresh boot of the same
    /// device (`device` names it in errors). Only the bits a guest may write are taken
    /// from `state`; the identity must match. Returns the BARs whose decoded placement
    /// changed, which the owner applies as it does after a guest's write (the relocator).
    /// On error the space is unchanged.
    pub fn restore(
        &mut self,
        device: &str,
        state: &PciConfigState,
    ) -> Result<Vec<BarChange>, StateError> {
        if state.regs.len() > CONFIG_DWORDS {
            return Err(StateError::mismatch(
                device,
                format!("{} configuration dwords", state.regs.len()),
            ));
        }
        let saved = |reg: usize| state.regs.get(reg).copied().unwrap_or(0);
        if saved(REG_ID) != self.regs[REG_ID] {
            return Err(StateError::mismatch(
                device,
                format!(
                    "saved PCI id {:#010x}, this device is {:#010x}",
                    saved(REG_ID),
                    self.regs[REG_ID]
                ),
            ));
        }
        for reg in 0..CONFIG_DWORDS {
            let mask = self.wmask[reg];
            self.regs[reg] = (self.regs[reg] & !mask) | (saved(reg) & mask);
        }
        Ok(self.update_mappings())
    }

    /// Whether BAR `index` was declared prefetchable.
    pub fn bar_prefetchable(&self, index: usize) -> bool {
        self.bars
            .get(index)
            .copied()
            .flatten()
            .is_some_and(|b| b.prefetchable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 1,
            subclass: 0,
            prog_if: 0,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        }
    }

    #[test]
    fn sizing_probe_returns_size_mask_and_flags() {
        let mut c = PciConfig::new(ids());
        c.add_bar(0, 0x4000, BarKind::Mem64, false).unwrap();
        c.add_bar(2, 0x1000, BarKind::Mem32, true).unwrap();
        c.write_reg(REG_BAR0, 0, &[0xff; 4]);
        c.write_reg(REG_BAR0 + 1, 0, &[0xff; 4]);
        c.write_reg(REG_BAR0 + 2, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(REG_BAR0), 0xffff_c004);
        assert_eq!(c.read_reg(REG_BAR0 + 1), 0xffff_ffff);
        assert_eq!(c.read_reg(REG_BAR0 + 2), 0xffff_f008);
        // Unused BARs stay zero: not implemented.
        c.write_reg(REG_BAR0 + 3, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(REG_BAR0 + 3), 0);
    }

    #[test]
    fn reports_bar_move_only_when_memory_decoding_is_on() {
        let mut c = PciConfig::new(ids());
        c.add_bar(0, 0x4000, BarKind::Mem32, false).unwrap();
        assert!(
            c.write_reg(REG_BAR0, 0, &0xe000_0000u32.to_le_bytes())
                .is_empty()
        );
        let ch = c.write_reg(REG_COMMAND_STATUS, 0, &[COMMAND_MEMORY as u8, 0]);
        assert_eq!(
            ch,
            vec![BarChange {
                bar: 0,
                old: None,
                new: Some(0xe000_0000),
                len: 0x4000
            }]
        );
        // Sizing while decoding keeps the mapping; restoring it changes nothing.
        assert!(c.write_reg(REG_BAR0, 0, &[0xff; 4]).is_empty());
        assert!(
            c.write_reg(REG_BAR0, 0, &0xe000_0000u32.to_le_bytes())
                .is_empty()
        );
        let ch = c.write_reg(REG_BAR0, 0, &0xe001_0000u32.to_le_bytes());
        assert_eq!(ch[0].old, Some(0xe000_0000));
        assert_eq!(ch[0].new, Some(0xe001_0000));
        let ch = c.write_reg(REG_COMMAND_STATUS, 0, &[0, 0]);
        assert_eq!(ch[0].new, None);
        assert_eq!(c.bar_for_address(0xe001_0010), None);
    }

    #[test]
    fn capabilities_form_a_linked_list() {
        let mut c = PciConfig::new(ids());
        let a = c.add_capability(CAP_ID_VENDOR, &[14, 1, 2], &[]).unwrap();
        let b = c
            .add_capability(CAP_ID_MSIX, &[0; 10], &[0, 0, 0, 0xc0])
            .unwrap();
        assert_eq!(c.read_reg(REG_CAP_POINTER) as usize, a);
        assert_ne!(c.read_reg(REG_COMMAND_STATUS) & (STATUS_CAP_LIST << 16), 0);
        assert_eq!(c.byte(a), CAP_ID_VENDOR);
        assert_eq!(c.byte(a + 1) as usize, b);
        assert_eq!(c.byte(b + 1), 0);
        // Only the writable bits of the MSI-X message control change.
        c.write_reg(b / 4, 2, &[0xff, 0xff]);
        assert_eq!(c.byte(b + 2), 0);
        assert_eq!(c.byte(b + 3), 0xc0);
    }

    #[test]
    fn identity_registers_are_read_only() {
        let mut c = PciConfig::new(ids());
        c.write_reg(REG_ID, 0, &[0; 4]);
        c.write_reg(REG_CLASS_REVISION, 0, &[0; 4]);
        assert_eq!(c.vendor_device(), (0x1af4, 0x1042));
        assert_eq!(c.read_reg(REG_CLASS_REVISION), 0x0100_0001);
    }

    fn rom_config(size: u64) -> PciConfig {
        let mut c = PciConfig::new(ids());
        c.add_bar(0, 0x1000, BarKind::Mem32, false).unwrap();
        c.add_rom_bar(size).unwrap();
        c
    }

    fn write32(c: &mut PciConfig, reg: usize, v: u32) -> Vec<BarChange> {
        c.write_reg(reg, 0, &v.to_le_bytes())
    }

    #[test]
    fn rom_sizing_probe_returns_the_size_mask_and_the_enable_bit_as_written() {
        let mut c = rom_config(0x1_0000);
        assert!(write32(&mut c, REG_ROM, 0xffff_ffff).is_empty());
        assert_eq!(c.read_reg(REG_ROM), 0xffff_0001);
        // SeaBIOS's and Linux's probes leave the enable bit clear.
        write32(&mut c, REG_ROM, 0xffff_fffe);
        assert_eq!(c.read_reg(REG_ROM), 0xffff_0000);
        write32(&mut c, REG_ROM, 0xffff_f800);
        assert_eq!(c.read_reg(REG_ROM), 0xffff_0000);
        // The smallest ROM: 2 KiB, every address bit writable.
        let mut small = rom_config(0x800);
        write32(&mut small, REG_ROM, 0xffff_ffff);
        assert_eq!(small.read_reg(REG_ROM), 0xffff_f801);
        // Without a ROM BAR the register is read-only zero.
        let mut none = PciConfig::new(ids());
        write32(&mut none, REG_ROM, 0xffff_ffff);
        assert_eq!(none.read_reg(REG_ROM), 0);
        assert_eq!(none.bar_size(ROM_SLOT), None);
    }

    #[test]
    fn rom_address_keeps_its_size_alignment() {
        let mut c = rom_config(0x1_0000);
        write32(&mut c, REG_ROM, 0xfebc_1801);
        assert_eq!(c.read_reg(REG_ROM), 0xfebc_0001);
        assert_eq!(c.bar_address(ROM_SLOT), Some(0xfebc_0000));
        assert!(c.rom_enabled());
        assert!(c.set_bar_address(ROM_SLOT, 0xfebd_0800).is_err());
        assert!(c.set_bar_address(ROM_SLOT, 0x1_0000_0000).is_err());
    }

    #[test]
    fn rom_decodes_only_with_its_enable_bit_and_memory_space_on() {
        let mut c = rom_config(0x8000);
        assert!(write32(&mut c, REG_ROM, 0xfeb0_0000).is_empty());
        // Memory space on, ROM disabled: BAR0 (at zero) does not decode, nor the ROM.
        assert!(write32(&mut c, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY)).is_empty());
        assert_eq!(c.bar_mapped(ROM_SLOT), None);
        let ch = write32(&mut c, REG_ROM, 0xfeb0_0001);
        assert_eq!(
            ch,
            vec![BarChange {
                bar: ROM_SLOT as u8,
                old: None,
                new: Some(0xfeb0_0000),
                len: 0x8000
            }]
        );
        assert_eq!(c.bar_for_address(0xfeb0_7fff), Some((ROM_SLOT, 0x7fff)));
        // Memory space off takes it away, on brings it back.
        let ch = write32(&mut c, REG_COMMAND_STATUS, 0);
        assert_eq!(ch[0].new, None);
        let ch = write32(&mut c, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY));
        assert_eq!(ch[0].new, Some(0xfeb0_0000));
        // A byte write of the enable bit alone switches it off, the address kept.
        let ch = c.write_reg(REG_ROM, 0, &[0]);
        assert_eq!((ch[0].old, ch[0].new), (Some(0xfeb0_0000), None));
        assert_eq!(c.bar_address(ROM_SLOT), Some(0xfeb0_0000));
        let ch = c.write_reg(REG_ROM, 0, &[1]);
        assert_eq!(ch[0].new, Some(0xfeb0_0000));
    }

    #[test]
    fn rom_probe_while_enabled_keeps_it_mapped_until_the_address_comes_back() {
        let mut c = rom_config(0x8000);
        write32(&mut c, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY));
        write32(&mut c, REG_ROM, 0xfeb0_0001);
        assert!(write32(&mut c, REG_ROM, 0xffff_ffff).is_empty());
        assert_eq!(c.bar_mapped(ROM_SLOT), Some(0xfeb0_0000));
        let ch = write32(&mut c, REG_ROM, 0xfea0_0001);
        assert_eq!(
            (ch[0].old, ch[0].new),
            (Some(0xfeb0_0000), Some(0xfea0_0000))
        );
        assert_eq!(c.bar_for_address(0xfeb0_0000), None);
    }

    #[test]
    fn the_rom_is_listed_after_the_bars_and_programmed_without_enabling_it() {
        let mut c = rom_config(0x1_0000);
        assert_eq!(
            c.bar_list().collect::<Vec<_>>(),
            vec![
                (0, 0x1000, BarKind::Mem32),
                (ROM_SLOT, 0x1_0000, BarKind::Mem32)
            ]
        );
        c.set_bar_address(ROM_SLOT, 0xc001_0000).unwrap();
        assert_eq!(c.read_reg(REG_ROM), 0xc001_0000);
        // Memory decoding on: BAR0 decodes, the ROM waits for its enable bit.
        let ch = write32(&mut c, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY));
        assert_eq!(ch.len(), 0);
        c.set_bar_address(0, 0xc000_0000).unwrap();
        let ch = write32(&mut c, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY));
        assert_eq!(ch.iter().map(|c| c.bar).collect::<Vec<_>>(), vec![0]);
        assert!(!c.rom_enabled());
    }

    #[test]
    fn rejects_bad_rom_declarations() {
        let mut c = PciConfig::new(ids());
        assert!(c.add_rom_bar(0x400).is_err());
        assert!(c.add_rom_bar(0x3000).is_err());
        assert!(c.add_rom_bar(32 << 20).is_err());
        c.add_rom_bar(0x800).unwrap();
        assert!(matches!(
            c.add_rom_bar(0x800),
            Err(PciError::BarSlot { index: ROM_SLOT })
        ));
        // BAR declarations cannot reach the ROM slot.
        assert!(c.add_bar(ROM_SLOT, 0x1000, BarKind::Mem32, false).is_err());
    }

    #[test]
    fn rejects_bad_bar_declarations() {
        let mut c = PciConfig::new(ids());
        assert!(c.add_bar(5, 0x1000, BarKind::Mem64, false).is_err());
        assert!(c.add_bar(0, 0x1800, BarKind::Mem32, false).is_err());
        c.add_bar(0, 0x1000, BarKind::Mem64, false).unwrap();
        assert!(c.add_bar(1, 0x1000, BarKind::Mem32, false).is_err());
        assert!(c.set_bar_address(0, 0x1800).is_err());
    }

    #[test]
    fn a_saved_space_restores_into_a_fresh_one_with_its_bars_decoded() {
        let fresh = || {
            let mut c = rom_config(0x8000);
            c.add_capability(CAP_ID_MSIX, &[0; 10], &[0, 0, 0, 0xc0])
                .unwrap();
            c
        };
        let mut c = fresh();
        write32(&mut c, REG_BAR0, 0xe000_1000);
        write32(&mut c, REG_ROM, 0xe001_0001);
        write32(&mut c, REG_COMMAND_STATUS, 0x0406);
        write32(&mut c, REG_INTERRUPT, 0x0000_000b);
        c.write_reg(0x40 / 4, 2, &[0, 0xc0]);
        let state = c.save();

        let mut r = fresh();
        let changes = r.restore("t", &state).unwrap();
        assert_eq!(
            changes.iter().map(|c| (c.bar, c.new)).collect::<Vec<_>>(),
            vec![(0, Some(0xe000_1000)), (ROM_SLOT as u8, Some(0xe001_0000))]
        );
        for reg in 0..CONFIG_DWORDS {
            assert_eq!(r.read_reg(reg), c.read_reg(reg), "register {reg}");
        }
        assert_eq!(r.bar_for_address(0xe000_1004), Some((0, 4)));
        // Read-only bits come from the fresh device, never from the state.
        let mut forged = state.clone();
        forged.regs[REG_CLASS_REVISION] = 0x0300_0000;
        let mut r = fresh();
        r.restore("t", &forged).unwrap();
        assert_eq!(r.read_reg(REG_CLASS_REVISION), 0x0100_0001);
    }

    #[test]
    fn a_state_of_another_device_or_size_is_refused_and_changes_nothing() {
        let mut c = rom_config(0x8000);
        write32(&mut c, REG_BAR0, 0xe000_1000);
        let mut state = c.save();
        state.regs[REG_ID] = 0x1234_5678;
        let mut r = rom_config(0x8000);
        assert!(r.restore("t", &state).is_err());
        assert_eq!(r.read_reg(REG_BAR0), 0);
        let too_long = PciConfigState {
            regs: vec![0; CONFIG_DWORDS + 1],
        };
        assert!(r.restore("t", &too_long).is_err());
        let ch = write32(&mut r, REG_BAR0, 0xe000_2000);
        assert!(ch.is_empty());
        assert_eq!(r.read_reg(REG_BAR0), 0xe000_2000);
    }
}
