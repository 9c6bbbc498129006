//! The BIOS area (0xc0000..0x100000) under the MCH's PAM registers, for the accesses that
//! leave the guest.
//!
//! The helper maps each PAM segment as KVM memory the way its mode says (RAM read-write,
//! RAM read-only, the BIOS ROM's low alias read-only, or nothing), so most accesses never
//! exit. What does exit lands here, inserted on the MMIO bus over the whole area: a write
//! to a read-only segment (dropped, as the chipset drops it), a write to a write-only
//! segment (it goes to the shadow RAM, while reads still come from the ROM), and any
//! access to a segment with nothing mapped (0xc0000..0xdffff when its mode is Off or
//! WriteOnly: reads come from PCI, where nothing answers, so 0xff).

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mch::{PAM_SEGMENTS, PamMode, pam_segments};
use crate::framebuffer::FbMemory;

/// Start of the BIOS area.
pub const BIOS_AREA_START: u64 = 0xc_0000;
/// Its length.
pub const BIOS_AREA_LEN: u64 = 0x4_0000;
/// Where the system ROM's low alias starts (its last 128 KiB).
pub const ROM_ALIAS_START: u64 = 0xe_0000;

/// The BIOS area's exit path.
pub struct ShadowArea {
    mem: GuestMemoryMmap,
    rom: Arc<FbMemory>,
    /// Offset in `rom` of the byte shown at [`ROM_ALIAS_START`].
    rom_alias: usize,
    modes: [PamMode; PAM_SEGMENTS],
}

impl ShadowArea {
    /// `mem` holds the shadow RAM at 0xc0000; `rom` is the system ROM, whose byte at
    /// `rom_alias` appears at 0xe0000 while a segment reads from the ROM. Every segment
    /// starts Off, as after reset.
    pub fn new(mem: GuestMemoryMmap, rom: Arc<FbMemory>, rom_alias: usize) -> Self {
        Self {
            mem,
            rom,
            rom_alias,
            modes: [PamMode::Off; PAM_SEGMENTS],
        }
    }

    /// Sets segment `index`'s mode (the helper calls this before remapping it).
    pub fn set_mode(&mut self, index: usize, mode: PamMode) {
        if let Some(m) = self.modes.get_mut(index) {
            *m = mode;
        }
    }

    /// The mode of the segment holding `addr`, if `addr` is in the area.
    pub fn mode_at(&self, addr: u64) -> Option<PamMode> {
        let seg = pam_segments()
            .into_iter()
            .find(|s| (s.start..s.start + s.len).contains(&addr))?;
        self.modes.get(seg.index).copied()
    }

    fn read_byte(&self, addr: u64) -> u8 {
        match self.mode_at(addr) {
            Some(m) if m.reads_ram() => self.mem.read_obj(GuestAddress(addr)).unwrap_or(0xff),
            Some(_) if addr >= ROM_ALIAS_START => {
                let mut b = [0xff];
                self.rom
                    .read(self.rom_alias + (addr - ROM_ALIAS_START) as usize, &mut b);
                b[0]
            }
            _ => 0xff,
        }
    }

    fn write_byte(&self, addr: u64, b: u8) {
        if self.mode_at(addr).is_some_and(PamMode::writes_ram) {
            // The shadow RAM is guest memory the helper mapped; a failure means no RAM
            // backs the area (a tiny VM), where the write goes nowhere, as on the bus.
            let _ = self.mem.write_obj(b, GuestAddress(addr));
        }
    }
}

impl crate::bus::BusDevice for ShadowArea {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_byte(base.saturating_add(offset).saturating_add(i as u64));
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.write_byte(base.saturating_add(offset).saturating_add(i as u64), b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    fn area() -> ShadowArea {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_obj(0x11u8, GuestAddress(0xf0000)).unwrap();
        mem.write_obj(0x22u8, GuestAddress(0xc0000)).unwrap();
        let rom = FbMemory::new(0x4_0000).unwrap();
        // A 256 KiB ROM: its last 128 KiB (offset 0x20000) shows at 0xe0000.
        rom.write(0x20000 + 0x10000, &[0x99]);
        ShadowArea::new(mem, Arc::new(rom), 0x20000)
    }

    fn read(a: &mut ShadowArea, addr: u64) -> u8 {
        let mut b = [0];
        a.read(BIOS_AREA_START, addr - BIOS_AREA_START, &mut b);
        b[0]
    }

    #[test]
    fn off_reads_the_rom_alias_or_nothing_and_drops_writes() {
        let mut a = area();
        assert_eq!(read(&mut a, 0xf0000), 0x99, "the ROM's byte, not RAM's");
        assert_eq!(
            read(&mut a, 0xc0000),
            0xff,
            "nothing answers below the alias"
        );
        a.write(BIOS_AREA_START, 0x30000, &[0x55]);
        assert_eq!(a.mem.read_obj::<u8>(GuestAddress(0xf0000)).unwrap(), 0x11);
    }

    #[test]
    fn write_only_writes_ram_while_reads_come_from_the_rom() {
        let mut a = area();
        a.set_mode(0, PamMode::WriteOnly);
        a.write(BIOS_AREA_START, 0x30000, &[0x55]);
        assert_eq!(a.mem.read_obj::<u8>(GuestAddress(0xf0000)).unwrap(), 0x55);
        assert_eq!(read(&mut a, 0xf0000), 0x99);
        a.set_mode(0, PamMode::ReadWrite);
        assert_eq!(
            read(&mut a, 0xf0000),
            0x55,
            "what was shadowed is there now"
        );
    }

    #[test]
    fn read_only_reads_ram_and_drops_writes() {
        let mut a = area();
        a.set_mode(1, PamMode::ReadOnly);
        assert_eq!(read(&mut a, 0xc0000), 0x22);
        a.write(BIOS_AREA_START, 0, &[0x77]);
        assert_eq!(read(&mut a, 0xc0000), 0x22);
        assert_eq!(a.mode_at(0xc3fff), Some(PamMode::ReadOnly));
        assert_eq!(a.mode_at(0xc4000), Some(PamMode::Off));
        assert_eq!(a.mode_at(0x10_0000), None);
    }

    #[test]
    fn accesses_past_the_area_or_with_no_ram_do_not_panic() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let rom = Arc::new(FbMemory::new(0x1000).unwrap());
        let mut a = ShadowArea::new(mem, rom, 0);
        a.set_mode(0, PamMode::ReadWrite);
        let mut b = [0u8; 8];
        a.read(BIOS_AREA_START, 0x3fffc, &mut b);
        a.write(BIOS_AREA_START, u64::MAX - 2, &[1, 2, 3, 4]);
        assert_eq!(b[..4], [0xff; 4], "no RAM behind the area reads as nothing");
    }
}
