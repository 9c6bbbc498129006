//! Legacy VGA: the register file at ports 0x3B4..0x3DF, 256 KiB of planar video memory
//! behind the 0xA0000..0xBFFFF window, and text and graphics scanout onto the [`Display`].
//! It is the VGA half of [`super::stdvga::StdVga`]: the VGA BIOS (SeaBIOS' vgabios-stdvga)
//! programs these registers, loads its font into plane 2 and writes characters at 0xB8000;
//! bootloaders and installers draw text screens and mode 12h/13h pictures here.
//!
//! Data flow: port accesses go to `regs` one byte at a time (a 16-bit `out dx, ax` to
//! an index port writes the index, then the data port); window accesses are placed by the
//! memory map select and go through `memory`'s addressing and write modes. Both only
//! store and mark the VGA dirty (a palette or font change marks every pixel): nothing is
//! drawn on the vCPU thread. [`Vga::refresh`], called by the display refresh thread
//! ([`super::refresh::spawn_with_vga`]) at most once a frame, renders the dirty picture
//! through `render`, which compares against a shadow of the last frame and reports
//! only the changed cells or pixel spans as damage.
//!
//! While the DISPI (VBE) interface is enabled, [`super::stdvga::StdVga`] owns the display
//! and this device stops publishing ([`Vga::set_scanout`]); switching back republishes the
//! VGA picture.
//!
//! Saved state ([`VgaState`]): the registers, the planes (pages that are not all zero) and
//! the latches. The shadow of the last frame is not saved: a restored VGA draws its whole
//! picture at the next refresh.

mod memory;
mod regs;
mod render;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;

pub use render::{GraphicsMode, Mode, TextMode};

use crate::bus::BusDevice;
use crate::framebuffer::{Display, DisplayError};
use memory::{Access, GR_MISC, Planes, PlanesState, SR_MAP_MASK, SR_MEMORY_MODE};
use regs::{AR_MODE, Change, Regs, RegsState};

/// The legacy VGA in saved state (part of the std-VGA's).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VgaState {
    regs: RegsState,
    planes: PlanesState,
}

/// Ports 0x3C0..0x3DF: attribute, misc, sequencer, DAC, graphics, colour CRTC, status.
pub const VGA_PORT_BASE: u64 = 0x3c0;
pub const VGA_PORT_LEN: u64 = 0x20;
/// Ports 0x3B4..0x3BA: the monochrome CRTC and input status 1 (when misc bit 0 is clear).
pub const VGA_MONO_PORT_BASE: u64 = 0x3b4;
pub const VGA_MONO_PORT_LEN: u64 = 7;
/// The legacy video memory window.
pub const VGA_WINDOW_BASE: u64 = 0xa_0000;
pub const VGA_WINDOW_LEN: u64 = 0x2_0000;

/// Window offsets (from 0xA0000) of the GR06 memory maps.
const MAP_64K_END: usize = 0x1_0000;
const MAP_B0000: usize = 0x1_0000;
const MAP_B8000: usize = 0x1_8000;
const WINDOW_END: usize = 0x2_0000;
/// AR10 bit 0: graphics (not text) mode.
const AR10_GRAPHICS: u8 = 0x01;
/// Plane 2 holds the font in text modes.
const FONT_PLANE: u8 = 0x04;

/// The legacy VGA. See the module docs.
pub struct Vga {
    regs: Regs,
    planes: Planes,
    screen: render::Screen,
    dirty: bool,
    full: bool,
    scanout: bool,
}

impl Vga {
    /// A VGA in its power-on state (blank until programmed), showing on `display` while
    /// it has the scanout (from the start).
    pub fn new(display: Arc<Display>) -> Result<Self, DisplayError> {
        Ok(Self {
            regs: Regs::default(),
            planes: Planes::new(),
            screen: render::Screen::new(display)?,
            dirty: true,
            full: true,
            scanout: true,
        })
    }

    /// Reads `data.len()` consecutive ports from `port`; ports not decoded are left as
    /// they were (the bus pre-fills all-ones).
    pub fn port_read(&mut self, port: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = self.regs.read(port.wrapping_add(i as u16)) {
                *b = v;
            }
        }
    }

    /// Writes `data` to consecutive ports from `port` (index, then data for a 16-bit write).
    pub fn port_write(&mut self, port: u16, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            match self.regs.write(port.wrapping_add(i as u16), v) {
                Change::None => {}
                Change::Dirty => self.dirty = true,
                Change::Full => {
                    self.dirty = true;
                    self.full = true;
                }
            }
        }
    }

    /// The plane address of window offset `w` under the GR06 memory map, or None when the
    /// map leaves it out.
    fn place(&self, w: usize) -> Option<usize> {
        let map = self.regs.gc.get(GR_MISC).map_or(0, |m| (m >> 2) & 3);
        match map {
            0 => (w < WINDOW_END).then_some(w),
            1 => (w < MAP_64K_END).then_some(w),
            2 => (MAP_B0000..MAP_B8000).contains(&w).then(|| w - MAP_B0000),
            _ => (MAP_B8000..WINDOW_END).contains(&w).then(|| w - MAP_B8000),
        }
    }

    fn access(&self) -> Access {
        Access {
            gr: self.regs.gc,
            map_mask: self.regs.sr(SR_MAP_MASK),
            memory_mode: self.regs.sr(SR_MEMORY_MODE),
        }
    }

    /// A CPU read of the window at `offset` (from 0xA0000); unmapped bytes read all-ones.
    pub fn window_read(&mut self, offset: u64, data: &mut [u8]) {
        let a = self.access();
        for (i, b) in data.iter_mut().enumerate() {
            let w = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            *b = match self.place(w) {
                Some(addr) => self.planes.read(&a, addr),
                None => 0xff,
            };
        }
    }

    /// A CPU write to the window at `offset`; bytes the memory map leaves out are dropped.
    pub fn window_write(&mut self, offset: u64, data: &[u8]) {
        let a = self.access();
        let text = self.regs.ar(AR_MODE) & AR10_GRAPHICS == 0;
        for (i, &v) in data.iter().enumerate() {
            let w = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            let Some(addr) = self.place(w) else {
                continue;
            };
            let written = self.planes.write(&a, addr, v);
            self.dirty = true;
            if text && written.planes & FONT_PLANE != 0 {
                // A glyph changed: any cell may show it.
                self.full = true;
            }
        }
    }

    /// Gives the display to this VGA (true) or takes it away (false: the DISPI interface
    /// shows the linear framebuffer). Taking it back draws and publishes at once.
    pub fn set_scanout(&mut self, on: bool) {
        if on == self.scanout {
            return;
        }
        self.scanout = on;
        self.screen.unpublish();
        self.dirty = true;
        self.full = true;
        if on {
            self.refresh();
        }
    }

    /// Whether the VGA has the display.
    pub fn scanout(&self) -> bool {
        self.scanout
    }

    /// Whether a [`refresh`](Self::refresh) would draw something.
    pub fn needs_refresh(&self) -> bool {
        self.scanout && self.dirty
    }

    /// Draws what changed since the last refresh and reports it as damage.
    pub fn refresh(&mut self) {
        if !self.needs_refresh() {
            return;
        }
        self.screen.render(&self.regs, &self.planes, self.full);
        self.dirty = false;
        self.full = false;
    }

    /// The registers and video memory as saved state.
    pub fn save(&self) -> VgaState {
        VgaState {
            regs: self.regs.save(),
            planes: self.planes.save(),
        }
    }

    /// Whether `s` would [`restore`](Self::restore) (Err with the reason when not).
    pub fn check(s: &VgaState) -> Result<(), String> {
        Regs::restore(&s.regs)?;
        Planes::restore(&s.planes)?;
        Ok(())
    }

    /// Takes back a [`save`](Self::save)d state (Err, and nothing changed, when it does not
    /// fit); the whole picture is drawn at the next [`refresh`](Self::refresh). Who has
    /// the display is the std-VGA's business ([`set_scanout`](Self::set_scanout)).
    pub fn restore(&mut self, s: &VgaState) -> Result<(), String> {
        let regs = Regs::restore(&s.regs)?;
        let planes = Planes::restore(&s.planes)?;
        self.regs = regs;
        self.planes = planes;
        self.dirty = true;
        self.full = true;
        Ok(())
    }

    /// The mode the registers describe now.
    pub fn mode(&self) -> Mode {
        Mode::of(&self.regs)
    }
}

/// The port number of an access at `offset` into ports inserted at `base`.
fn port_of(base: u64, offset: u64) -> Option<u16> {
    base.checked_add(offset).and_then(|p| u16::try_from(p).ok())
}

impl BusDevice for Vga {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if base == VGA_WINDOW_BASE {
            self.window_read(offset, data);
        } else if let Some(port) = port_of(base, offset) {
            self.port_read(port, data);
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        if base == VGA_WINDOW_BASE {
            self.window_write(offset, data);
        } else if let Some(port) = port_of(base, offset) {
            self.port_write(port, data);
        }
    }
}

#[cfg(test)]
mod tests;
