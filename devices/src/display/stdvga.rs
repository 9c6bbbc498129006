//! std-VGA / bochs display, PCI 1234:1111, the adapter OVMF's QemuVideoDxe, Linux's bochs
//! DRM driver and Windows' basic display driver program.
//!
//! - BAR0: the linear framebuffer, 16 MiB of [`FbMemory`] mapped into the guest as a KVM
//!   memory slot through [`FbSlot`] (moved with the BAR); guest writes cause no exits.
//! - DISPI (VBE) registers: index at port 0x1CE, data at 0x1CF (0x1D0 too, as QEMU), and
//!   in BAR2 at 0x500 + 2 * index, in the bochs-display layout: EDID at 0x000, the VGA
//!   ports at 0x400 (port 0x3C0 + n at 0x400 + n), QEMU's extended registers at 0x600.
//! - Legacy VGA ([`Vga`]): ports 0x3C0..0x3DF (and the mono 0x3B4..0x3BA) and the
//!   0xA0000..0xBFFFF window, for the VGA BIOS, bootloaders and text screens.
//! - The expansion ROM BAR (with [`StdVga::with_option_rom`]): the VGA BIOS image, read-only,
//!   sized to the next power of two and reading 0xff past the image, where firmware finds
//!   the adapter's option ROM and guests read it (Linux's `/sys/bus/pci/devices/*/rom`).
//!
//! Data flow: register writes go through `fixup` (QEMU's clamping rules, so a guest sees
//! the same values under both) and, in 32 bpp, publish a [`Surface`] on the [`Display`].
//! Damage inside the framebuffer comes from KVM's dirty log ([`super::refresh`]). While
//! DISPI is disabled the display belongs to the [`Vga`], which the refresh thread renders
//! ([`super::refresh::spawn_with_vga`]); enabling DISPI takes the display back for the
//! framebuffer, and the 0xA0000 window then reaches the framebuffer through the 64 KiB
//! bank of DISPI register 5 (VBE banked modes), as on QEMU.
//!
//! Saved state ([`Snapshot`]): the PCI configuration (BARs, command), the DISPI registers
//! and index, the legacy VGA's ([`super::vga::VgaState`]), and the framebuffer's pages
//! that are not all zero. The machine registers the adapter wrapped in
//! [`crate::pci::root::PciSaved`], which moves restored BARs on the bus; the restore maps
//! the framebuffer slot where BAR0 decodes, and publishes the restored mode at once (a
//! whole-screen damage, so VNC clients redraw without a guest
//! write); a VGA text or graphics screen is drawn by the next refresh.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::vga::{VGA_MONO_PORT_BASE, VGA_PORT_BASE, VGA_WINDOW_BASE, Vga, VgaState};
use super::{DisplayDeviceError, FbSlot};
use crate::bus::{BusDevice, lock};
use crate::framebuffer::fbmem::SavedPage;
use crate::framebuffer::{Display, FbMemory, MAX_HEIGHT, MAX_WIDTH, Rect, Surface, edid};
use crate::pci::config::{BarChange, PciConfigState, ROM_SLOT};
use crate::pci::{BarKind, PciConfig, PciDevice, PciIds};
use crate::state::{Snapshot, StateError, decode, encode};

/// The name the adapter's saved state goes by (in errors).
const STATE_NAME: &str = "std-vga";

/// Framebuffer (BAR0) size.
pub const VRAM_SIZE: usize = 16 << 20;
/// BAR2 size.
const MMIO_SIZE: u64 = 0x1000;
/// The smallest expansion ROM BAR (its address field's 2 KiB granularity).
const ROM_MIN_BAR: u64 = 0x800;
/// Ports: DISPI index and data (0x1D0 is a second data port).
pub const DISPI_PORT: u64 = 0x1ce;
pub const DISPI_PORT_LEN: u64 = 3;

const IDX_ID: usize = 0;
const IDX_XRES: usize = 1;
const IDX_YRES: usize = 2;
const IDX_BPP: usize = 3;
const IDX_ENABLE: usize = 4;
const IDX_BANK: usize = 5;
const IDX_VIRT_WIDTH: usize = 6;
const IDX_VIRT_HEIGHT: usize = 7;
const IDX_X_OFFSET: usize = 8;
const IDX_Y_OFFSET: usize = 9;
const IDX_VIDEO_MEMORY_64K: usize = 0xa;
const NB_REGS: usize = 0xa;

const ENABLED: u16 = 0x01;
const GETCAPS: u16 = 0x02;
const NOCLEARMEM: u16 = 0x80;
const ID_MIN: u16 = 0xb0c0;
const ID_MAX: u16 = 0xb0c5;

/// BAR2 layout.
const MMIO_EDID: u64 = 0x000;
const MMIO_DISPI: u64 = 0x500;
const MMIO_QEXT: u64 = 0x600;
const MMIO_VGA: u64 = 0x400;
const MMIO_VGA_LEN: u64 = 0x20;
/// The VBE bank window: 64 KiB at 0xA0000, bank n at framebuffer offset n * 64 KiB.
const BANK_SIZE: u64 = 0x1_0000;

/// The device.
pub struct StdVga {
    config: PciConfig,
    regs: [u16; NB_REGS],
    index: u16,
    line_offset: u32,
    start: u32,
    vram: Arc<FbMemory>,
    slot: Arc<Mutex<Box<dyn FbSlot>>>,
    display: Arc<Display>,
    edid: [u8; 128],
    vga: Arc<Mutex<Vga>>,
    /// The option ROM image behind the expansion ROM BAR; empty without one.
    rom: Box<[u8]>,
}

impl StdVga {
    /// A std-VGA with fresh (zeroed) video memory, showing on `display`; `slot` maps the
    /// framebuffer into the guest. `edid_mode` is the preferred mode the EDID announces.
    pub fn new(
        vram: Arc<FbMemory>,
        slot: Arc<Mutex<Box<dyn FbSlot>>>,
        display: Arc<Display>,
        edid_mode: (u32, u32),
    ) -> Result<Self, DisplayDeviceError> {
        let mut config = PciConfig::new(PciIds {
            vendor: 0x1234,
            device: 0x1111,
            revision: 2,
            class: 0x03,
            subclass: 0x00,
            prog_if: 0x00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        });
        config.add_bar(0, VRAM_SIZE as u64, BarKind::Mem32, true)?;
        config.add_bar(2, MMIO_SIZE, BarKind::Mem32, false)?;
        let mut regs = [0u16; NB_REGS];
        regs[IDX_ID] = ID_MAX;
        display.set_surface(None);
        let vga = Arc::new(Mutex::new(Vga::new(display.clone())?));
        Ok(Self {
            config,
            regs,
            index: 0,
            line_offset: 0,
            start: 0,
            vram,
            slot,
            display,
            edid: edid::build(edid_mode.0, edid_mode.1),
            vga,
            rom: Box::default(),
        })
    }

    /// Gives the adapter an expansion ROM BAR holding `image` (the VGA BIOS), sized to the
    /// next power of two (2 KiB at least). Call before the BARs are assigned.
    pub fn with_option_rom(mut self, image: Vec<u8>) -> Result<Self, DisplayDeviceError> {
        let size = u64::try_from(image.len())
            .unwrap_or(u64::MAX)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .max(ROM_MIN_BAR);
        self.config.add_rom_bar(size)?;
        self.rom = image.into_boxed_slice();
        Ok(self)
    }

    /// Reads of the expansion ROM: the image, 0xff past its end.
    fn rom_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.rom.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// The legacy VGA, for the refresh thread.
    pub fn vga(&self) -> Arc<Mutex<Vga>> {
        self.vga.clone()
    }

    /// The framebuffer slot, for the refresh thread.
    pub fn slot(&self) -> Arc<Mutex<Box<dyn FbSlot>>> {
        self.slot.clone()
    }

    fn enabled(&self) -> bool {
        self.regs[IDX_ENABLE] & ENABLED != 0
    }

    fn bits(&self) -> u32 {
        match self.regs[IDX_BPP] {
            15 => 16,
            b => u32::from(b),
        }
    }

    fn read_dispi(&self, index: usize) -> u16 {
        if index < NB_REGS {
            if self.regs[IDX_ENABLE] & GETCAPS != 0 {
                match index {
                    IDX_XRES => return MAX_WIDTH as u16,
                    IDX_YRES => return MAX_HEIGHT as u16,
                    IDX_BPP => return 32,
                    _ => {}
                }
            }
            self.regs[index]
        } else if index == IDX_VIDEO_MEMORY_64K {
            (VRAM_SIZE >> 16) as u16
        } else {
            0
        }
    }

    fn write_dispi(&mut self, index: usize, val: u16) {
        match index {
            IDX_ID if (ID_MIN..=ID_MAX).contains(&val) => self.regs[IDX_ID] = val,
            IDX_XRES | IDX_YRES | IDX_BPP | IDX_VIRT_WIDTH | IDX_X_OFFSET | IDX_Y_OFFSET => {
                self.regs[index] = val;
                self.fixup();
            }
            IDX_BANK => self.regs[IDX_BANK] = val & 0xff,
            IDX_ENABLE => {
                let newly = val & ENABLED != 0 && !self.enabled();
                self.regs[IDX_ENABLE] = val;
                if newly {
                    self.regs[IDX_VIRT_WIDTH] = self.regs[IDX_XRES];
                    self.regs[IDX_VIRT_HEIGHT] = self.regs[IDX_YRES];
                    self.regs[IDX_X_OFFSET] = 0;
                    self.regs[IDX_Y_OFFSET] = 0;
                    self.fixup();
                    if val & NOCLEARMEM == 0 {
                        let len = self.line_offset as usize * usize::from(self.regs[IDX_YRES]);
                        self.vram.fill32(0, len, 0);
                    }
                    if let Some(s) = self.display.surface() {
                        self.display.add_damage(&[s.full()]);
                    }
                }
            }
            _ => {}
        }
        self.publish();
    }

    /// QEMU's rules for consistent registers (`vbe_fixup_regs`), with this device's limits.
    fn fixup(&mut self) {
        if !self.enabled() {
            return;
        }
        let r = &mut self.regs;
        if !matches!(r[IDX_BPP], 4 | 8 | 15 | 16 | 24 | 32) {
            r[IDX_BPP] = 8;
        }
        let bits = self.bits();
        let r = &mut self.regs;
        r[IDX_XRES] &= !7;
        if r[IDX_XRES] == 0 {
            r[IDX_XRES] = 8;
        }
        r[IDX_XRES] = r[IDX_XRES].min(MAX_WIDTH as u16);
        r[IDX_VIRT_WIDTH] &= !7;
        r[IDX_VIRT_WIDTH] = r[IDX_VIRT_WIDTH].min(MAX_WIDTH as u16).max(r[IDX_XRES]);
        let line = u32::from(r[IDX_VIRT_WIDTH]) * bits / 8;
        let maxy = (VRAM_SIZE as u32 / line.max(1)).min(u32::from(u16::MAX)) as u16;
        if r[IDX_YRES] == 0 {
            r[IDX_YRES] = 1;
        }
        r[IDX_YRES] = r[IDX_YRES].min(MAX_HEIGHT as u16).min(maxy);
        r[IDX_X_OFFSET] = r[IDX_X_OFFSET].min(MAX_WIDTH as u16);
        r[IDX_Y_OFFSET] = r[IDX_Y_OFFSET].min(MAX_HEIGHT as u16);
        let yres = u32::from(r[IDX_YRES]);
        let fits = |off: u32| off + yres * line <= VRAM_SIZE as u32;
        let mut offset = u32::from(r[IDX_X_OFFSET]) * bits / 8 + u32::from(r[IDX_Y_OFFSET]) * line;
        if !fits(offset) {
            r[IDX_Y_OFFSET] = 0;
            offset = u32::from(r[IDX_X_OFFSET]) * bits / 8;
            if !fits(offset) {
                r[IDX_X_OFFSET] = 0;
                offset = 0;
            }
        }
        r[IDX_VIRT_HEIGHT] = maxy;
        self.line_offset = line;
        self.start = offset / 4 * 4;
    }

    /// Shows the mode on the display (32 bpp only; other depths show nothing), or gives
    /// the display to the legacy VGA while DISPI is disabled.
    fn publish(&self) {
        if !self.enabled() {
            lock(&self.vga).set_scanout(true);
            return;
        }
        lock(&self.vga).set_scanout(false);
        let surface = if self.regs[IDX_BPP] == 32 {
            Surface::new(
                self.vram.clone(),
                self.start as usize,
                u32::from(self.regs[IDX_XRES]),
                u32::from(self.regs[IDX_YRES]),
                self.line_offset,
            )
        } else {
            crate::guest_warn!("std-vga: {} bpp is not shown, only 32", self.regs[IDX_BPP]);
            None
        };
        self.display.set_surface(surface);
    }

    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < MMIO_EDID + 0x400 => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self
                        .edid
                        .get((o - MMIO_EDID) as usize + i)
                        .copied()
                        .unwrap_or(0);
                }
            }
            o if (MMIO_DISPI..MMIO_DISPI + 0x20).contains(&o) => {
                let index = ((o - MMIO_DISPI) / 2) as usize;
                let v = self.read_dispi(index).to_le_bytes();
                let at = ((o - MMIO_DISPI) % 2) as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = v.get(at + i).copied().unwrap_or(0);
                }
            }
            o if (MMIO_VGA..MMIO_VGA + MMIO_VGA_LEN).contains(&o) => {
                lock(&self.vga).port_read(vga_port(o), data);
            }
            o if (MMIO_QEXT..MMIO_QEXT + 8).contains(&o) => {
                // Register block size, then framebuffer endianness (little).
                let regs = [8u32.to_le_bytes(), 0x1e1e_1e1eu32.to_le_bytes()].concat();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = regs.get((o - MMIO_QEXT) as usize + i).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        if (MMIO_VGA..MMIO_VGA + MMIO_VGA_LEN).contains(&offset) {
            lock(&self.vga).port_write(vga_port(offset), data);
            return;
        }
        if (MMIO_DISPI..MMIO_DISPI + 0x20).contains(&offset) && offset.is_multiple_of(2) {
            let index = ((offset - MMIO_DISPI) / 2) as usize;
            let val = match data {
                [lo] => u16::from(*lo),
                [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
                [] => return,
            };
            self.write_dispi(index, val);
        }
    }

    fn port_read(&self, port: u64, data: &mut [u8]) {
        let v = match port {
            0x1ce => self.index,
            _ => self.read_dispi(usize::from(self.index)),
        };
        let v = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get(i).copied().unwrap_or(0);
        }
    }

    fn port_write(&mut self, port: u64, data: &[u8]) {
        let val = match data {
            [lo] => u16::from(*lo),
            [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
            [] => return,
        };
        match port {
            0x1ce => self.index = val,
            _ => self.write_dispi(usize::from(self.index), val),
        }
    }

    /// The framebuffer offset of window offset `offset` in the current VBE bank.
    fn bank_offset(&self, offset: u64) -> Option<usize> {
        (offset < BANK_SIZE)
            .then(|| u64::from(self.regs[IDX_BANK]) * BANK_SIZE + offset)
            .and_then(|o| usize::try_from(o).ok())
    }

    fn window_read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.enabled() {
            lock(&self.vga).window_read(offset, data);
        } else if let Some(o) = self.bank_offset(offset) {
            self.vram.read(o, data);
        }
    }

    fn window_write(&mut self, offset: u64, data: &[u8]) {
        if !self.enabled() {
            lock(&self.vga).window_write(offset, data);
        } else if let Some(o) = self.bank_offset(offset) {
            self.vram_write(o, data);
        }
    }

    /// A framebuffer write the CPU made through an exit (not the memory slot): damage
    /// the rows it touched.
    fn vram_write(&self, offset: usize, data: &[u8]) {
        self.vram.write(offset, data);
        if let Some(s) = self.display.surface()
            && let Some((y0, y1)) = super::refresh::rows_of(&s, offset, data.len())
        {
            self.display
                .add_damage(&[Rect::new(0, y0, s.width, y1 - y0)]);
        }
    }
}

/// The adapter in saved state.
#[derive(Serialize, Deserialize)]
struct StdVgaState {
    pci: PciConfigState,
    regs: [u16; NB_REGS],
    index: u16,
    line_offset: u32,
    start: u32,
    vga: VgaState,
    vram: Vec<SavedPage>,
}

impl Snapshot for StdVga {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        // No thread of the adapter writes guest memory: the refresh thread only reads.
        let state = StdVgaState {
            pci: self.config.save(),
            regs: self.regs,
            index: self.index,
            line_offset: self.line_offset,
            start: self.start,
            vga: lock(&self.vga).save(),
            vram: self.vram.save_pages(),
        };
        encode(STATE_NAME, &state)
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let s: StdVgaState = decode(STATE_NAME, bytes)?;
        let mismatch =
            |what: &str, e: String| StateError::mismatch(STATE_NAME, format!("{what}: {e}"));
        crate::framebuffer::fbmem::check_pages(&s.vram, self.vram.len())
            .map_err(|e| mismatch("framebuffer", e))?;
        Vga::check(&s.vga).map_err(|e| mismatch("VGA", e))?;
        // The last step that can fail; it changes nothing when it does. The BAR moves it
        // returns are the bus's (PciSaved); the framebuffer slot is mapped below.
        self.config.restore(STATE_NAME, &s.pci)?;
        lock(&self.vga)
            .restore(&s.vga)
            .map_err(|e| mismatch("VGA", e))?;
        self.vram
            .restore_pages(&s.vram)
            .map_err(|e| mismatch("framebuffer", e))?;
        self.regs = s.regs;
        self.index = s.index;
        self.line_offset = s.line_offset;
        self.start = s.start;
        // The derived geometry again from the registers, under the same limits a guest's
        // writes meet (a no-op for a state this adapter saved).
        self.fixup();
        lock(&self.slot).map(self.config.bar_mapped(0));
        self.publish();
        if let Some(surface) = self.display.surface() {
            self.display.add_damage(&[surface.full()]);
        }
        Ok(())
    }
}

/// The VGA port a BAR2 offset in the VGA ports block stands for.
fn vga_port(offset: u64) -> u16 {
    (VGA_PORT_BASE + (offset - MMIO_VGA)) as u16
}

impl Drop for StdVga {
    fn drop(&mut self) {
        lock(&self.vga).set_scanout(false);
        self.display.set_surface(None);
    }
}

impl PciDevice for StdVga {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarChange> {
        let changes = self.config.write_reg(reg, offset, data);
        for c in &changes {
            match usize::from(c.bar) {
                0 => lock(&self.slot).map(c.new),
                ROM_SLOT => match c.new {
                    Some(at) => log::debug!("std-vga: option ROM decodes at {at:#x}"),
                    None => log::debug!("std-vga: option ROM no longer decodes"),
                },
                _ => {}
            }
        }
        changes
    }
}

impl BusDevice for StdVga {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if base == DISPI_PORT {
            self.port_read(base + offset, data);
        } else if base == VGA_PORT_BASE || base == VGA_MONO_PORT_BASE {
            lock(&self.vga).read(base, offset, data);
        } else if base == VGA_WINDOW_BASE {
            self.window_read(offset, data);
        } else if self.config.bar_mapped(2) == Some(base) {
            self.mmio_read(offset, data);
        } else if self.config.bar_mapped(0) == Some(base) {
            // Only reached when the memory slot could not be mapped.
            self.vram.read(offset as usize, data);
        } else if self.config.bar_mapped(ROM_SLOT) == Some(base) {
            self.rom_read(offset, data);
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        if base == DISPI_PORT {
            self.port_write(base + offset, data);
        } else if base == VGA_PORT_BASE || base == VGA_MONO_PORT_BASE {
            lock(&self.vga).write(base, offset, data);
        } else if base == VGA_WINDOW_BASE {
            self.window_write(offset, data);
        } else if self.config.bar_mapped(2) == Some(base) {
            self.mmio_write(offset, data);
        } else if self.config.bar_mapped(0) == Some(base) {
            // Only reached when the memory slot could not be mapped.
            self.vram_write(offset as usize, data);
        }
        // Writes to the expansion ROM are dropped: it is read-only.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::vga::testing::{MODE_3, program};
    use crate::pci::config::{COMMAND_MEMORY, REG_BAR0, REG_COMMAND_STATUS, REG_ROM};

    #[derive(Default)]
    struct FakeSlot {
        maps: Arc<Mutex<Vec<Option<u64>>>>,
    }

    impl FbSlot for FakeSlot {
        fn map(&mut self, at: Option<u64>) {
            self.maps.lock().unwrap().push(at);
        }
        fn take_dirty(&mut self) -> Option<Vec<u64>> {
            None
        }
    }

    type Maps = Arc<Mutex<Vec<Option<u64>>>>;

    fn vga() -> (StdVga, Arc<Display>, Maps) {
        let display = Arc::new(Display::new());
        let slot = FakeSlot::default();
        let maps = slot.maps.clone();
        let vram = Arc::new(FbMemory::new(VRAM_SIZE).unwrap());
        let v = StdVga::new(
            vram,
            Arc::new(Mutex::new(Box::new(slot))),
            display.clone(),
            (1024, 768),
        )
        .unwrap();
        (v, display, maps)
    }

    fn out16(v: &mut StdVga, port: u64, val: u16) {
        v.write(DISPI_PORT, port - DISPI_PORT, &val.to_le_bytes());
    }

    fn in16(v: &mut StdVga, port: u64) -> u16 {
        let mut b = [0u8; 2];
        v.read(DISPI_PORT, port - DISPI_PORT, &mut b);
        u16::from_le_bytes(b)
    }

    fn dispi(v: &mut StdVga, index: u16, val: u16) {
        out16(v, 0x1ce, index);
        out16(v, 0x1cf, val);
    }

    fn get(v: &mut StdVga, index: u16) -> u16 {
        out16(v, 0x1ce, index);
        in16(v, 0x1cf)
    }

    #[test]
    fn dispi_ports_set_1080p_and_publish_a_surface() {
        let (mut v, display, _) = vga();
        assert_eq!(get(&mut v, 0), 0xb0c5);
        dispi(&mut v, 4, 0);
        dispi(&mut v, 1, 1920);
        dispi(&mut v, 2, 1080);
        dispi(&mut v, 3, 32);
        assert!(display.surface().is_none());
        dispi(&mut v, 4, 0x41);
        let s = display.surface().unwrap();
        assert_eq!(
            (s.width, s.height, s.stride, s.offset),
            (1920, 1080, 7680, 0)
        );
        assert_eq!(get(&mut v, 6), 1920);
        assert_eq!(get(&mut v, 7), (VRAM_SIZE / 7680) as u16);
        assert_eq!(get(&mut v, 0xa), 256);
        // GETCAPS reads the limits.
        dispi(&mut v, 4, 0x43);
        assert_eq!(
            (get(&mut v, 1), get(&mut v, 2), get(&mut v, 3)),
            (2560, 1600, 32)
        );
    }

    #[test]
    fn bar2_mmio_holds_edid_and_dispi() {
        let (mut v, display, _) = vga();
        v.config.set_bar_address(2, 0xc100_0000).unwrap();
        v.config.set_bar_address(0, 0xc000_0000).unwrap();
        v.write_config(REG_COMMAND_STATUS, 0, &COMMAND_MEMORY.to_le_bytes());
        let mut b = [0u8; 8];
        v.read(0xc100_0000, 0, &mut b);
        assert_eq!(b, [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        for (i, val) in [(1u64, 800u16), (2, 600), (3, 32), (4, 0x41)] {
            v.write(0xc100_0000, 0x500 + i * 2, &val.to_le_bytes());
        }
        let mut x = [0u8; 2];
        v.read(0xc100_0000, 0x502, &mut x);
        assert_eq!(u16::from_le_bytes(x), 800);
        assert_eq!(display.surface().unwrap().width, 800);
    }

    #[test]
    fn bar0_placement_maps_the_framebuffer_slot() {
        let (mut v, _, maps) = vga();
        v.config.set_bar_address(0, 0xc000_0000).unwrap();
        v.write_config(REG_COMMAND_STATUS, 0, &COMMAND_MEMORY.to_le_bytes());
        v.write_config(REG_COMMAND_STATUS, 0, &[0, 0]);
        assert_eq!(*maps.lock().unwrap(), vec![Some(0xc000_0000), None]);
    }

    fn vga_out(v: &mut StdVga, port: u16, val: u8) {
        let base = VGA_PORT_BASE;
        v.write(base, u64::from(port) - base, &[val]);
    }

    fn vga_in(v: &mut StdVga, port: u16) -> u8 {
        let mut b = [0u8];
        v.read(VGA_PORT_BASE, u64::from(port) - VGA_PORT_BASE, &mut b);
        b[0]
    }

    fn text_mode(v: &mut StdVga) {
        let cell = std::cell::RefCell::new(v);
        program(
            &mut |p, x| vga_out(&mut cell.borrow_mut(), p, x),
            &mut |p| vga_in(&mut cell.borrow_mut(), p),
            &MODE_3,
        );
    }

    #[test]
    fn switching_dispi_on_and_off_moves_the_display_between_lfb_and_vga() {
        let (mut v, display, _) = vga();
        text_mode(&mut v);
        // A blue space in the top left cell.
        v.write(VGA_WINDOW_BASE, 0x1_8000, b" \x1f");
        lock(&v.vga()).refresh();
        let s = display.surface().unwrap();
        assert_eq!((s.width, s.height, s.pixel(0, 0)), (720, 400, 0xa8));

        dispi(&mut v, 1, 1024);
        dispi(&mut v, 2, 768);
        dispi(&mut v, 3, 32);
        dispi(&mut v, 4, 0x41);
        let s = display.surface().unwrap();
        assert_eq!((s.width, s.height), (1024, 768));
        // VGA changes while DISPI is on do not take the display back.
        vga_out(&mut v, 0x3c8, 0);
        vga_out(&mut v, 0x3c9, 0x3f);
        v.write(VGA_PORT_BASE, 0x14, &[0x0e, 0x01]);
        lock(&v.vga()).refresh();
        assert_eq!(display.surface().unwrap().width, 1024);

        dispi(&mut v, 4, 0);
        let s = display.surface().unwrap();
        assert_eq!((s.width, s.height, s.pixel(0, 0)), (720, 400, 0xa8));
    }

    #[test]
    fn the_window_is_the_vbe_bank_while_dispi_is_on() {
        let (mut v, _, _) = vga();
        dispi(&mut v, 1, 640);
        dispi(&mut v, 2, 480);
        dispi(&mut v, 3, 32);
        dispi(&mut v, 4, 0x01);
        dispi(&mut v, 5, 2);
        v.write(VGA_WINDOW_BASE, 0x10, &[1, 2, 3, 4]);
        let mut b = [0u8; 4];
        v.vram.read(2 * 0x1_0000 + 0x10, &mut b);
        assert_eq!(b, [1, 2, 3, 4]);
        let mut r = [0u8; 4];
        v.read(VGA_WINDOW_BASE, 0x10, &mut r);
        assert_eq!(r, [1, 2, 3, 4]);
        // Past the 64 KiB bank: nothing.
        v.write(VGA_WINDOW_BASE, 0x1_8000, &[9]);
        let mut x = [0xeeu8];
        v.read(VGA_WINDOW_BASE, 0x1_8000, &mut x);
        assert_eq!(x, [0xee]);
        // DISPI off: the window is VGA memory again, the bank untouched.
        dispi(&mut v, 4, 0);
        v.write(VGA_WINDOW_BASE, 0x10, &[7]);
        v.vram.read(2 * 0x1_0000 + 0x10, &mut b);
        assert_eq!(b, [1, 2, 3, 4]);
    }

    #[test]
    fn bar2_vga_block_reaches_the_vga_ports() {
        let (mut v, _, _) = vga();
        v.config.set_bar_address(2, 0xc100_0000).unwrap();
        v.write_config(REG_COMMAND_STATUS, 0, &COMMAND_MEMORY.to_le_bytes());
        // Misc output (0x3C2 at 0x402), read back at 0x3CC (0x40C).
        v.write(0xc100_0000, 0x402, &[0x67]);
        let mut b = [0u8];
        v.read(0xc100_0000, 0x40c, &mut b);
        assert_eq!(b, [0x67]);
        assert_eq!(vga_in(&mut v, 0x3cc), 0x67);
        // A 16-bit index/data write to the sequencer (0x3C4 at 0x404).
        v.write(0xc100_0000, 0x404, &[0x02, 0x0f]);
        vga_out(&mut v, 0x3c4, 0x02);
        assert_eq!(vga_in(&mut v, 0x3c5), 0x0f);
        // The colour CRTC at 0x414/0x415.
        v.write(0xc100_0000, 0x414, &[0x0e, 0x12]);
        let mut c = [0u8; 2];
        v.read(0xc100_0000, 0x414, &mut c);
        assert_eq!(c, [0x0e, 0x12]);
        // The last byte of the block and past it.
        v.write(0xc100_0000, 0x41f, &[0xff; 4]);
        let mut d = [0u8; 4];
        v.read(0xc100_0000, 0x41e, &mut d);
    }

    /// A VGA BIOS-like image: the 0x55 0xAA signature, then a counting pattern.
    fn rom_image(len: usize) -> Vec<u8> {
        let mut image: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        image[..2].copy_from_slice(&[0x55, 0xaa]);
        image
    }

    fn vga_with_rom(image: Vec<u8>) -> StdVga {
        vga().0.with_option_rom(image).unwrap()
    }

    fn cfg32(v: &mut StdVga, reg: usize, val: u32) -> Vec<BarChange> {
        v.write_config(reg, 0, &val.to_le_bytes())
    }

    #[test]
    fn the_option_rom_bar_is_sized_to_the_next_power_of_two() {
        let mut v = vga_with_rom(rom_image(38_912));
        assert_eq!(v.config.bar_size(ROM_SLOT), Some(0x1_0000));
        cfg32(&mut v, REG_ROM, 0xffff_fffe);
        assert_eq!(v.config.read_reg(REG_ROM), 0xffff_0000);
        // A tiny image still gets the smallest ROM BAR; none at all without an image.
        let small = vga_with_rom(vec![0x55, 0xaa]);
        assert_eq!(small.config.bar_size(ROM_SLOT), Some(0x800));
        assert_eq!(vga().0.config.bar_size(ROM_SLOT), None);
    }

    #[test]
    fn the_enabled_rom_bar_serves_the_image_and_0xff_past_it() {
        let image = rom_image(0x1800);
        let mut v = vga_with_rom(image.clone());
        v.config.set_bar_address(2, 0xc100_0000).unwrap();
        cfg32(&mut v, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY));
        let ch = cfg32(&mut v, REG_ROM, 0xc200_0001);
        assert_eq!(
            ch,
            vec![BarChange {
                bar: ROM_SLOT as u8,
                old: None,
                new: Some(0xc200_0000),
                len: 0x2000
            }]
        );
        let mut sig = [0u8; 2];
        v.read(0xc200_0000, 0, &mut sig);
        assert_eq!(sig, [0x55, 0xaa]);
        let mut d = [0u8; 4];
        v.read(0xc200_0000, 0x100, &mut d);
        assert_eq!(d, image[0x100..0x104]);
        // Straddling the image's end, then past it, then at offsets no access can reach.
        let mut q = [0u8; 8];
        v.read(0xc200_0000, 0x17fc, &mut q);
        assert_eq!(q[..4], image[0x17fc..]);
        assert_eq!(q[4..], [0xff; 4]);
        v.read(0xc200_0000, 0x1fff, &mut sig);
        assert_eq!(sig, [0xff, 0xff]);
        v.read(0xc200_0000, u64::MAX, &mut sig);
        assert_eq!(sig, [0xff, 0xff]);
        // BAR2 still answers at its own base.
        let mut e = [0u8; 2];
        v.read(0xc100_0000, 0, &mut e);
        assert_eq!(e, [0, 0xff]);
    }

    #[test]
    fn writes_to_the_rom_are_ignored() {
        let image = rom_image(0x800);
        let mut v = vga_with_rom(image.clone());
        cfg32(&mut v, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY));
        cfg32(&mut v, REG_ROM, 0xc200_0001);
        v.write(0xc200_0000, 0, &[0; 8]);
        v.write(0xc200_0000, 0x7ff, &[0; 8]);
        let mut d = [0u8; 8];
        v.read(0xc200_0000, 0, &mut d);
        assert_eq!(d, image[..8]);
        // Nor did the write reach the framebuffer or the display.
        let mut fb = [0xeeu8; 8];
        v.vram.read(0, &mut fb);
        assert_eq!(fb, [0; 8]);
    }

    #[test]
    fn the_rom_is_not_served_once_disabled() {
        let mut v = vga_with_rom(rom_image(0x800));
        cfg32(&mut v, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY));
        cfg32(&mut v, REG_ROM, 0xc200_0001);
        let ch = cfg32(&mut v, REG_ROM, 0xc200_0000);
        assert_eq!((ch[0].old, ch[0].new), (Some(0xc200_0000), None));
        // A stray access at the old base (the bus would not route it) reads nothing.
        let mut d = [0x77u8; 2];
        v.read(0xc200_0000, 0, &mut d);
        assert_eq!(d, [0x77, 0x77]);
    }

    /// BAR0 and BAR2 placed and memory decoding on, as the machine's BAR assignment does.
    fn place_bars(v: &mut StdVga) {
        v.config.set_bar_address(0, 0xc000_0000).unwrap();
        v.config.set_bar_address(2, 0xc100_0000).unwrap();
        v.write_config(REG_COMMAND_STATUS, 0, &COMMAND_MEMORY.to_le_bytes());
    }

    /// The shown picture: size and every pixel's bytes.
    fn picture(display: &Display) -> (u32, u32, Vec<u8>) {
        let s = display.surface().expect("a surface");
        let mut px = Vec::new();
        s.read_rect(s.full(), &mut px);
        (s.width, s.height, px)
    }

    /// Everything a guest can read back: the DISPI and VGA index registers first, then
    /// every DISPI, sequencer, graphics, CRTC, attribute and DAC register, and the window.
    fn register_reads(v: &mut StdVga) -> Vec<u16> {
        let mut r = vec![in16(v, 0x1ce)];
        r.extend((0..=0xa).map(|i| get(v, i)));
        for p in [
            0x3c0, 0x3c4, 0x3c6, 0x3c7, 0x3c8, 0x3ca, 0x3cc, 0x3ce, 0x3d4,
        ] {
            r.push(u16::from(vga_in(v, p)));
        }
        for (index, data, n) in [(0x3c4, 0x3c5, 5), (0x3ce, 0x3cf, 9), (0x3d4, 0x3d5, 0x19)] {
            for i in 0..n {
                vga_out(v, index, i);
                r.push(u16::from(vga_in(v, data)));
            }
        }
        for i in 0..0x15 {
            vga_in(v, 0x3da);
            vga_out(v, 0x3c0, i | 0x20);
            r.push(u16::from(vga_in(v, 0x3c1)));
        }
        r.push(u16::from(vga_in(v, 0x3da)));
        vga_out(v, 0x3c7, 0);
        r.extend((0..768).map(|_| u16::from(vga_in(v, 0x3c9))));
        let mut w = [0u8; 64];
        v.read(VGA_WINDOW_BASE, 0x1_8000, &mut w);
        r.extend(w.iter().map(|&b| u16::from(b)));
        r
    }

    /// An 8x16 'A' in plane 2 for character `ch`, loaded as a VGA BIOS loads its font.
    fn load_glyph(v: &mut StdVga, ch: u8) {
        const GLYPH_A: [u8; 16] = [
            0x00, 0x00, 0x10, 0x38, 0x6c, 0xc6, 0xc6, 0xfe, 0xc6, 0xc6, 0xc6, 0xc6, 0x00, 0x00,
            0x00, 0x00,
        ];
        v.write(VGA_PORT_BASE, 4, &[2, 0x04]);
        v.write(VGA_PORT_BASE, 4, &[4, 0x07]);
        v.write(VGA_PORT_BASE, 0xe, &[4, 0x02]);
        v.write(VGA_PORT_BASE, 0xe, &[5, 0x00]);
        v.write(VGA_PORT_BASE, 0xe, &[6, 0x04]);
        v.write(VGA_WINDOW_BASE, u64::from(ch) * 32, &GLYPH_A);
        v.write(VGA_PORT_BASE, 4, &[2, 0x03]);
        v.write(VGA_PORT_BASE, 4, &[4, 0x02]);
        v.write(VGA_PORT_BASE, 0xe, &[4, 0x00]);
        v.write(VGA_PORT_BASE, 0xe, &[5, 0x10]);
        v.write(VGA_PORT_BASE, 0xe, &[6, 0x0e]);
    }

    /// An 800x600x32 mode on a 1024-pixel-wide virtual screen panned down 8 rows, a
    /// gradient drawn through the BAR (the memory slot) and a patch through VBE bank 3.
    fn lfb_picture(v: &mut StdVga) {
        text_mode(v);
        dispi(v, 1, 800);
        dispi(v, 2, 600);
        dispi(v, 3, 32);
        dispi(v, 4, 0x41);
        dispi(v, 6, 1024);
        dispi(v, 9, 8);
        dispi(v, 5, 3);
        for y in 0..608u32 {
            let row: Vec<u8> = (0..800u32)
                .flat_map(|x| ((x * 3) ^ (y * 7) ^ 0x00a0_0000).to_le_bytes())
                .collect();
            v.vram.write(y as usize * 4096, &row);
        }
        v.write(VGA_WINDOW_BASE, 0x100, &[0x11; 256]);
    }

    #[test]
    fn a_restored_adapter_shows_the_same_lfb_picture_and_reads_the_same() {
        let (mut v, display, _) = vga();
        place_bars(&mut v);
        // The guest moved the framebuffer BAR away from where the machine put it.
        cfg32(&mut v, REG_BAR0, 0xd000_0000);
        lfb_picture(&mut v);
        let before = picture(&display);
        let png_before = crate::framebuffer::png::encode(&display.surface().unwrap()).unwrap();
        let saved = v.save_state().unwrap();
        // Sparse: the picture's pages, not the 16 MiB.
        assert!(saved.len() < 4 << 20, "{} bytes saved", saved.len());

        let (mut w, display2, maps) = vga();
        place_bars(&mut w);
        maps.lock().unwrap().clear();
        w.restore_state(&saved).unwrap();
        assert_eq!(*maps.lock().unwrap(), vec![Some(0xd000_0000)]);
        for reg in 0..64 {
            assert_eq!(
                w.config.read_reg(reg),
                v.config.read_reg(reg),
                "config {reg}"
            );
        }
        let s = display2.surface().unwrap();
        assert_eq!(
            (s.width, s.height, s.stride, s.offset),
            (800, 600, 4096, 8 * 4096)
        );
        assert_eq!(picture(&display2), before);
        assert_eq!(
            crate::framebuffer::png::encode(&s).unwrap(),
            png_before,
            "the same PNG"
        );
        // The whole screen is damage for clients already connected.
        assert_eq!(display2.damage_since(0).rects, vec![s.full()]);
        assert_eq!(register_reads(&mut v), register_reads(&mut w));

        // The next guest accesses behave the same: the bank window, a pan.
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        v.read(VGA_WINDOW_BASE, 0xfc, &mut a);
        w.read(VGA_WINDOW_BASE, 0xfc, &mut b);
        assert_eq!(a, b);
        // Bank 3 + 0xfc: row 48, pixel 63 of the gradient, then the patch.
        assert_eq!(b, [0xed, 0x01, 0xa0, 0x00, 0x11, 0x11, 0x11, 0x11]);
        dispi(&mut v, 9, 2);
        dispi(&mut w, 9, 2);
        assert_eq!(picture(&display), picture(&display2));
    }

    #[test]
    fn a_restored_text_screen_is_drawn_the_same() {
        let (mut v, display, _) = vga();
        text_mode(&mut v);
        load_glyph(&mut v, b'A');
        // "AA" white on blue at row 1, a grey-on-black 'A' at the end of the last row, the
        // cursor at row 24, column 3.
        v.write(VGA_WINDOW_BASE, 0x1_8000 + 160, b"AA");
        v.write(VGA_WINDOW_BASE, 0x1_8000 + 24 * 160 + 158, b"A");
        v.write(VGA_PORT_BASE, 0x14, &[0x0e, 0x07]);
        v.write(VGA_PORT_BASE, 0x14, &[0x0f, 0xd3]);
        lock(&v.vga()).refresh();
        let before = picture(&display);
        assert_eq!((before.0, before.1), (720, 400));
        let s = display.surface().unwrap();
        assert_eq!(s.pixel(0, 16), 0xa8, "the blue background of the first 'A'");
        let saved = v.save_state().unwrap();

        let (mut w, display2, _) = vga();
        w.restore_state(&saved).unwrap();
        assert!(lock(&w.vga()).needs_refresh());
        lock(&w.vga()).refresh();
        assert_eq!(picture(&display2), before);
        assert_eq!(register_reads(&mut v), register_reads(&mut w));
        // The restored VGA goes on like the original: the same character written to both.
        for x in [&mut v, &mut w] {
            x.write(VGA_WINDOW_BASE, 0x1_8000 + 10 * 160, b"AN");
            lock(&x.vga()).refresh();
        }
        assert_eq!(picture(&display), picture(&display2));
    }

    #[test]
    fn the_refresh_thread_shows_a_restored_text_screen_to_a_waiting_client() {
        let (mut v, display, _) = vga();
        text_mode(&mut v);
        load_glyph(&mut v, b'A');
        v.write(VGA_WINDOW_BASE, 0x1_8000 + 162, b"A\x1f");
        lock(&v.vga()).refresh();
        let before = picture(&display);
        let saved = v.save_state().unwrap();

        let (mut w, display2, _) = vga();
        let w_vga = w.vga();
        // The fresh adapter has drawn its blank power-on screen already.
        lock(&w_vga).refresh();
        assert!(!lock(&w_vga).needs_refresh());
        let slot = w.slot();
        super::super::refresh::spawn_with_vga(
            display2.clone(),
            Arc::downgrade(&slot),
            Arc::downgrade(&w_vga),
        )
        .unwrap();
        w.restore_state(&saved).unwrap();
        // A client waits for damage, as a VNC client does; no guest write follows.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seq = 0;
        while display2.surface().map(|_| picture(&display2)) != Some(before.clone()) {
            assert!(std::time::Instant::now() < deadline, "never shown");
            seq = display2
                .wait_damage(seq, std::time::Duration::from_millis(200))
                .seq;
        }
    }

    #[test]
    fn a_restore_in_vga_mode_after_dispi_was_on_gives_the_display_to_the_vga() {
        let (mut v, display, _) = vga();
        lfb_picture(&mut v);
        dispi(&mut v, 4, 0);
        load_glyph(&mut v, b'A');
        v.write(VGA_WINDOW_BASE, 0x1_8000, b"A");
        lock(&v.vga()).refresh();
        let before = picture(&display);
        let saved = v.save_state().unwrap();
        let (mut w, display2, _) = vga();
        // The fresh adapter had a DISPI mode up (say the firmware's) before the restore.
        dispi(&mut w, 1, 640);
        dispi(&mut w, 2, 480);
        dispi(&mut w, 3, 32);
        dispi(&mut w, 4, 0x41);
        w.restore_state(&saved).unwrap();
        lock(&w.vga()).refresh();
        assert_eq!(picture(&display2), before);
        // The framebuffer came back too: DISPI on again shows the old picture.
        dispi(&mut v, 4, 0xc1);
        dispi(&mut w, 4, 0xc1);
        assert_eq!(picture(&display2), picture(&display));
    }

    #[test]
    fn truncated_or_garbage_state_is_refused_and_the_adapter_goes_on() {
        let (mut v, _, _) = vga();
        lfb_picture(&mut v);
        let saved = v.save_state().unwrap();
        // `w` takes the bad states; `x`, driven the same, does not.
        let busy = |v: &mut StdVga| {
            dispi(v, 1, 640);
            dispi(v, 2, 480);
            dispi(v, 3, 32);
            dispi(v, 4, 0x41);
            v.vram.write(0, &[0x5a; 16]);
        };
        let (mut w, display2, _) = vga();
        let (mut x, display3, _) = vga();
        busy(&mut w);
        busy(&mut x);

        let mut bad_page: StdVgaState = decode(STATE_NAME, &saved).unwrap();
        bad_page.vram.push(SavedPage {
            index: (VRAM_SIZE / 4096) as u32,
            bytes: vec![1; 4096],
        });
        let bad_page = encode(STATE_NAME, &bad_page).unwrap();
        let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 131 % 251) as u8).collect();
        for bad in [
            &saved[..saved.len() / 2],
            &saved[..3],
            &[][..],
            &garbage[..],
            &bad_page[..],
        ] {
            let err = w.restore_state(bad).unwrap_err();
            assert!(matches!(err, StateError::Mismatch { .. }), "{err}");
        }
        assert_eq!(register_reads(&mut w), register_reads(&mut x));
        assert_eq!(picture(&display2), picture(&display3));
        // Still a working adapter.
        dispi(&mut w, 1, 800);
        assert_eq!(display2.surface().unwrap().width, 800);
    }

    #[test]
    fn odd_modes_are_clamped_not_trusted() {
        let (mut v, display, _) = vga();
        dispi(&mut v, 1, 0xffff);
        dispi(&mut v, 2, 0xffff);
        dispi(&mut v, 3, 32);
        dispi(&mut v, 4, 0x41);
        let s = display.surface().unwrap();
        assert_eq!((s.width, s.height), (2560, 1600));
        dispi(&mut v, 9, 0xffff);
        let s = display.surface().unwrap();
        assert!(s.offset + s.stride as usize * s.height as usize <= VRAM_SIZE);
        dispi(&mut v, 3, 7);
        assert!(display.surface().is_none());
        out16(&mut v, 0x1ce, 0x7777);
        assert_eq!(in16(&mut v, 0x1cf), 0);
    }
}
