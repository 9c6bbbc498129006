//! VGA video memory: 256 KiB as four 64 KiB planes, reached by the CPU through the
//! 0xA0000..0xBFFFF window and read by the CRTC when it draws.
//!
//! Data flow: a CPU byte at window offset `w` is first placed by the memory map select
//! (GR06 bits 2-3), then addressed in one of three ways. Chain-4 (SR04 bit 3, mode 13h):
//! the low two address bits pick the plane, the plane offset is the address with them
//! cleared. Odd/even (SR04 bit 2 clear for writes, GR05 bit 4 for reads; text modes): even
//! addresses reach planes 0/2, odd ones planes 1/3, at the address with bit 0 cleared.
//! Planar (everything else): the address is the offset in all four planes at once, and
//! writes go through the graphics controller's write modes 0-3 (data rotate, set/reset,
//! logical function, bit mask) against the latches that every read loads, limited to the
//! planes of the map mask (SR02). Reads return one plane (read mode 0, GR04) or a colour
//! compare of all four (read mode 1, GR02/GR07).
//!
//! The planes are stored as one `u32` per offset, plane n in byte n, so the latch logic
//! works on all four planes with one word operation.

use crate::framebuffer::fbmem::{SavedPage, apply_pages, sparse_pages};

/// Offsets in one plane (64 KiB).
pub const PLANE_SIZE: usize = 0x1_0000;

/// Graphics controller registers used here (index in the GR file).
pub const GR_SET_RESET: usize = 0x00;
pub const GR_ENABLE_SET_RESET: usize = 0x01;
pub const GR_COLOR_COMPARE: usize = 0x02;
pub const GR_DATA_ROTATE: usize = 0x03;
pub const GR_READ_MAP: usize = 0x04;
pub const GR_MODE: usize = 0x05;
pub const GR_MISC: usize = 0x06;
pub const GR_COLOR_DONT_CARE: usize = 0x07;
pub const GR_BIT_MASK: usize = 0x08;
/// Sequencer registers used here.
pub const SR_MAP_MASK: usize = 0x02;
pub const SR_MEMORY_MODE: usize = 0x04;

/// SR04 bit 2: odd/even addressing disabled for CPU writes.
const SR04_ODD_EVEN_DISABLE: u8 = 0x04;
/// SR04 bit 3: chain-4.
const SR04_CHAIN4: u8 = 0x08;
/// GR05 bit 4: odd/even addressing for CPU reads.
const GR05_ODD_EVEN: u8 = 0x10;
/// GR05 bit 3: read mode 1 (colour compare).
const GR05_READ_MODE1: u8 = 0x08;

/// The register values a memory access depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Access {
    pub gr: [u8; 9],
    pub map_mask: u8,
    pub memory_mode: u8,
}

/// What a CPU write changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Planes written (bit n: plane n).
    pub planes: u8,
}

/// The four planes and the latches.
pub struct Planes {
    mem: Vec<u32>,
    latch: u32,
}

impl Default for Planes {
    fn default() -> Self {
        Self::new()
    }
}

/// Each of the low four bits of `bits` as a full byte in its plane's lane.
fn expand(bits: u8) -> u32 {
    (0..4).fold(0, |acc, p| {
        if bits & (1 << p) != 0 {
            acc | (0xff << (8 * p))
        } else {
            acc
        }
    })
}

/// `v` in all four lanes.
fn splat(v: u8) -> u32 {
    u32::from(v) * 0x0101_0101
}

/// The planes in saved state: the pages of the interleaved memory (plane n in byte n of
/// each little-endian word) that are not all zero, and the latches.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanesState {
    pages: Vec<SavedPage>,
    latch: u32,
}

impl Planes {
    pub fn new() -> Self {
        Self {
            mem: vec![0; PLANE_SIZE],
            latch: 0,
        }
    }

    /// The planes as saved state.
    pub fn save(&self) -> PlanesState {
        let bytes: Vec<u8> = self.mem.iter().flat_map(|w| w.to_le_bytes()).collect();
        PlanesState {
            pages: sparse_pages(&bytes),
            latch: self.latch,
        }
    }

    /// Planes from saved state; Err when a page does not fit.
    pub fn restore(s: &PlanesState) -> Result<Self, String> {
        let mut bytes = vec![0u8; PLANE_SIZE * 4];
        apply_pages(&mut bytes, &s.pages)?;
        Ok(Self {
            mem: bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            latch: s.latch,
        })
    }

    /// The byte of `plane` (0-3) at `offset` (wrapped to the plane).
    pub fn byte(&self, plane: usize, offset: usize) -> u8 {
        let word = self.mem.get(offset % PLANE_SIZE).copied().unwrap_or(0);
        word.to_le_bytes().get(plane).copied().unwrap_or(0)
    }

    /// All four planes at `offset`, plane n in byte n.
    pub fn word(&self, offset: usize) -> u32 {
        self.mem.get(offset % PLANE_SIZE).copied().unwrap_or(0)
    }

    fn store(&mut self, offset: usize, value: u32, lanes: u32) {
        if let Some(w) = self.mem.get_mut(offset % PLANE_SIZE) {
            *w = (*w & !lanes) | (value & lanes);
        }
    }

    /// A CPU read of plane address `addr` (already placed in the window).
    pub fn read(&mut self, a: &Access, addr: usize) -> u8 {
        if a.memory_mode & SR04_CHAIN4 != 0 {
            let off = addr & !3;
            self.latch = self.word(off);
            return self.byte(addr & 3, off);
        }
        if a.gr[GR_MODE] & GR05_ODD_EVEN != 0 {
            let off = addr & !1;
            self.latch = self.word(off);
            let plane = usize::from(a.gr[GR_READ_MAP] & 2) | (addr & 1);
            return self.byte(plane, off);
        }
        self.latch = self.word(addr);
        if a.gr[GR_MODE] & GR05_READ_MODE1 != 0 {
            // Colour compare: a bit is set where every plane in "colour don't care"
            // matches the colour compare register.
            let care = expand(a.gr[GR_COLOR_DONT_CARE]);
            let diff = (self.latch ^ expand(a.gr[GR_COLOR_COMPARE])) & care;
            let b = diff.to_le_bytes();
            !(b[0] | b[1] | b[2] | b[3])
        } else {
            self.latch.to_le_bytes()[usize::from(a.gr[GR_READ_MAP] & 3)]
        }
    }

    /// A CPU write of `val` to plane address `addr`.
    pub fn write(&mut self, a: &Access, addr: usize, val: u8) -> Written {
        let map_mask = a.map_mask & 0x0f;
        if a.memory_mode & SR04_CHAIN4 != 0 {
            let planes = map_mask & (1 << (addr & 3));
            self.store(addr & !3, splat(val), expand(planes));
            return Written { planes };
        }
        if a.memory_mode & SR04_ODD_EVEN_DISABLE == 0 {
            let planes = map_mask & if addr & 1 == 0 { 0b0101 } else { 0b1010 };
            self.store(addr & !1, splat(val), expand(planes));
            return Written { planes };
        }
        let gr = &a.gr;
        let rotated = val.rotate_right(u32::from(gr[GR_DATA_ROTATE] & 7));
        let set_reset = expand(gr[GR_SET_RESET]);
        let mut mask = gr[GR_BIT_MASK];
        let data = match gr[GR_MODE] & 3 {
            0 => {
                let enable = expand(gr[GR_ENABLE_SET_RESET]);
                (splat(rotated) & !enable) | (set_reset & enable)
            }
            1 => {
                // Write mode 1: the latches, unchanged.
                self.store(addr, self.latch, expand(map_mask));
                return Written { planes: map_mask };
            }
            2 => expand(val),
            _ => {
                mask &= rotated;
                set_reset
            }
        };
        let data = match (gr[GR_DATA_ROTATE] >> 3) & 3 {
            0 => data,
            1 => data & self.latch,
            2 => data | self.latch,
            _ => data ^ self.latch,
        };
        let mask = splat(mask);
        let result = (data & mask) | (self.latch & !mask);
        self.store(addr, result, expand(map_mask));
        Written { planes: map_mask }
    }
}
