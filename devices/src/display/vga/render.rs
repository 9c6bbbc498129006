//! Draws what the VGA's CRTC would scan out into a 32-bpp [`Surface`] on the [`Display`].
//!
//! Data flow: [`Mode::of`] reads the geometry from the registers (text, 16-colour planar,
//! 256-colour, or blank). [`Screen::render`] then walks the CRTC's addresses (start
//! address, offset, byte/word/doubleword addressing) over the planes and compares what it
//! finds with a shadow of the last frame: per cell in text modes (character, attribute,
//! cursor), per pixel (palette index) in graphics modes. Only what differs is drawn and
//! reported as damage, one rectangle per changed row span, so a single character written
//! by the guest damages a single cell. A new geometry is drawn in full and then published
//! as a new surface; a palette or font change redraws everything.
//!
//! Simplified: blinking (drawn steady), the cursor (always on), split screen (line
//! compare), horizontal panning, preset row scan, the underline, and CGA-compatible
//! modes 4-6 (drawn as planar) are not modelled.

use std::sync::Arc;

use super::memory::{GR_MODE, PLANE_SIZE, Planes};
use super::regs::{AR_COLOR_SELECT, AR_INDEX_PAS, AR_MODE, AR_PLANE_ENABLE, Regs};
use super::regs::{SR_CHAR_MAP, SR_CLOCKING};
use crate::framebuffer::{
    BYTES_PER_PIXEL, Display, DisplayError, FbMemory, MAX_HEIGHT, MAX_WIDTH, Rect, Surface,
};

/// Output memory: the largest picture any mode may produce.
const OUT_SIZE: usize = (MAX_WIDTH * MAX_HEIGHT * BYTES_PER_PIXEL) as usize;

/// AR10 bits: graphics mode, line graphics (9th dot copies the 8th for 0xC0..0xDF),
/// blink (attribute bit 7 blinks instead of brightening the background), P5-P4 select.
const AR10_GRAPHICS: u8 = 0x01;
const AR10_LINE_GRAPHICS: u8 = 0x04;
const AR10_BLINK: u8 = 0x08;
const AR10_P54_SELECT: u8 = 0x80;
/// SR01 bits: 8-dot characters, dot clock halved (40-column and 320-pixel modes), screen off.
const SR01_8DOT: u8 = 0x01;
const SR01_HALF_CLOCK: u8 = 0x08;
const SR01_SCREEN_OFF: u8 = 0x20;
/// GR05 bit 6: 256-colour shift mode.
const GR05_SHIFT256: u8 = 0x40;
/// CRTC registers (IBM VGA).
const CR_H_DISPLAY_END: usize = 0x01;
const CR_OVERFLOW: usize = 0x07;
const CR_MAX_SCAN: usize = 0x09;
const CR_CURSOR_START: usize = 0x0a;
const CR_CURSOR_END: usize = 0x0b;
const CR_START_HI: usize = 0x0c;
const CR_START_LO: usize = 0x0d;
const CR_CURSOR_HI: usize = 0x0e;
const CR_CURSOR_LO: usize = 0x0f;
const CR_V_DISPLAY_END: usize = 0x12;
const CR_OFFSET: usize = 0x13;
const CR_UNDERLINE: usize = 0x14;
const CR_MODE: usize = 0x17;
/// CR0A bit 5: cursor off.
const CURSOR_OFF: u8 = 0x20;
/// CR14 bit 6: doubleword addressing; CR17 bit 6: byte (not word) addressing.
const CR14_DWORD: u8 = 0x40;
const CR17_BYTE: u8 = 0x40;
/// Bytes of plane 2 per glyph.
const GLYPH_BYTES: usize = 32;
/// Shadow cell flag: the cursor is drawn in this cell.
const CELL_CURSOR: u32 = 1 << 16;

/// Text mode geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextMode {
    pub cols: u32,
    pub rows: u32,
    pub cell_w: u32,
    pub cell_h: u32,
    /// Each dot drawn this many pixels wide (2 with the halved dot clock).
    pub dup: u32,
}

/// Graphics mode geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphicsMode {
    /// Pixels a line in video memory holds, and lines (before the scaling below).
    pub width: u32,
    pub height: u32,
    /// How many dots and scan lines each pixel takes on the screen: mode 13h's pixels are
    /// two dots wide and two lines high (a 640x400 screen), as the CRTC draws them and as
    /// QEMU shows them.
    pub sx: u32,
    pub sy: u32,
    /// 256 colours, one byte a pixel (mode 13h, mode X); else 16 colours, one bit a plane.
    pub shift256: bool,
}

/// What the CRTC shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Blank,
    Text(TextMode),
    Graphics(GraphicsMode),
}

impl Mode {
    /// The mode the registers describe.
    pub fn of(r: &Regs) -> Mode {
        if r.attr_index & AR_INDEX_PAS == 0 || r.sr(SR_CLOCKING) & SR01_SCREEN_OFF != 0 {
            return Mode::Blank;
        }
        let overflow = u32::from(r.cr(CR_OVERFLOW));
        let lines = (u32::from(r.cr(CR_V_DISPLAY_END))
            | ((overflow & 0x02) << 7)
            | ((overflow & 0x40) << 3))
            + 1;
        let max_scan = u32::from(r.cr(CR_MAX_SCAN) & 0x1f) + 1;
        let chars = u32::from(r.cr(CR_H_DISPLAY_END)) + 1;
        if r.ar(AR_MODE) & AR10_GRAPHICS == 0 {
            let cell_w = if r.sr(SR_CLOCKING) & SR01_8DOT != 0 {
                8
            } else {
                9
            };
            let dup = if r.sr(SR_CLOCKING) & SR01_HALF_CLOCK != 0 {
                2
            } else {
                1
            };
            let cols = chars.min(MAX_WIDTH / (cell_w * dup));
            let rows = (lines / max_scan).min(MAX_HEIGHT / max_scan);
            if rows == 0 {
                return Mode::Blank;
            }
            return Mode::Text(TextMode {
                cols,
                rows,
                cell_w,
                cell_h: max_scan,
                dup,
            });
        }
        let shift256 = r.gc.get(GR_MODE).is_some_and(|m| m & GR05_SHIFT256 != 0);
        let double = if r.cr(CR_MAX_SCAN) & 0x80 != 0 { 2 } else { 1 };
        let height = (lines / (max_scan * double)).min(MAX_HEIGHT);
        let width = if shift256 { chars * 4 } else { chars * 8 }.min(MAX_WIDTH);
        if height == 0 {
            return Mode::Blank;
        }
        let half_clock = r.sr(SR_CLOCKING) & SR01_HALF_CLOCK != 0;
        Mode::Graphics(GraphicsMode {
            width,
            height,
            sx: if shift256 || half_clock { 2 } else { 1 },
            sy: (max_scan * double).clamp(1, MAX_HEIGHT / height.max(1)),
            shift256,
        })
    }

    fn size(&self) -> Option<(u32, u32)> {
        match self {
            Mode::Blank => None,
            Mode::Text(t) => Some((t.cols * t.cell_w * t.dup, t.rows * t.cell_h)),
            Mode::Graphics(g) => Some((g.width * g.sx, g.height * g.sy)),
        }
    }
}

/// How the CRTC walks memory: a row of the picture starts at `start + row * offset`
/// (CRTC counter units), and counter `c` reads plane offset `c << shift`.
#[derive(Clone, Copy)]
struct Scan {
    start: u32,
    offset: u32,
    shift: u32,
}

impl Scan {
    fn of(r: &Regs) -> Scan {
        let shift = if r.cr(CR_UNDERLINE) & CR14_DWORD != 0 {
            2
        } else if r.cr(CR_MODE) & CR17_BYTE == 0 {
            1
        } else {
            0
        };
        Scan {
            start: (u32::from(r.cr(CR_START_HI)) << 8) | u32::from(r.cr(CR_START_LO)),
            offset: u32::from(r.cr(CR_OFFSET)) * 2,
            shift,
        }
    }

    /// The plane offset of counter `row` start + `col`.
    fn addr(&self, row: u32, col: u32) -> usize {
        let c = self.start.wrapping_add(row * self.offset).wrapping_add(col);
        ((c << self.shift) as usize) % PLANE_SIZE
    }
}

/// What every text cell of one render shares.
struct TextStyle {
    /// The 16 attribute colours as `0x00RRGGBB`.
    palette: [u32; 16],
    ar10: u8,
    sr3: u8,
}

/// One text cell to draw: where, what, and the cursor's scan lines in it.
struct Cell {
    col: u32,
    row: u32,
    ch: u8,
    attr: u8,
    cursor: Option<(u32, u32)>,
}

/// The picture the VGA last drew, and where it is shown.
pub struct Screen {
    display: Arc<Display>,
    out: Arc<FbMemory>,
    mode: Option<Mode>,
    /// The size of the surface this screen last put on the display (None: not shown).
    published: Option<(u32, u32)>,
    cells: Vec<u32>,
    pixels: Vec<u8>,
    frame: Vec<u8>,
    line: Vec<u8>,
}

impl Screen {
    pub fn new(display: Arc<Display>) -> Result<Self, DisplayError> {
        Ok(Self {
            display,
            out: Arc::new(FbMemory::new(OUT_SIZE)?),
            mode: None,
            published: None,
            cells: Vec::new(),
            pixels: Vec::new(),
            frame: Vec::new(),
            line: Vec::new(),
        })
    }

    /// Forgets that the display shows this screen (another scanout took it over).
    pub fn unpublish(&mut self) {
        self.published = None;
    }

    /// Draws the registers' picture; `full` redraws every pixel.
    pub fn render(&mut self, r: &Regs, planes: &Planes, full: bool) {
        let mode = Mode::of(r);
        let size = mode.size().or(match mode {
            // Blank keeps the last size, drawn black.
            Mode::Blank => self.mode.and_then(|m| m.size()).or(self.published),
            _ => None,
        });
        let new_mode = self.mode != Some(mode);
        let full = full || new_mode || self.published.is_none() || self.published != size;
        self.mode = Some(mode);
        let rects = match (mode, size) {
            (Mode::Text(t), _) => self.text(r, planes, t, full),
            (Mode::Graphics(g), _) => self.graphics(r, planes, g, full),
            (Mode::Blank, Some((w, h))) if full => {
                self.out.fill32(0, (w * h * BYTES_PER_PIXEL) as usize, 0);
                vec![Rect::new(0, 0, w, h)]
            }
            (Mode::Blank, _) => Vec::new(),
        };
        if self.published != size || size.is_none() {
            let surface = size
                .and_then(|(w, h)| Surface::new(self.out.clone(), 0, w, h, w * BYTES_PER_PIXEL));
            self.published = surface.as_ref().map(|s| (s.width, s.height));
            // A new surface is damaged whole.
            self.display.set_surface(surface);
        } else if !rects.is_empty() {
            self.display.add_damage(&rects);
        }
    }

    /// Draws the text cells that changed.
    fn text(&mut self, r: &Regs, planes: &Planes, t: TextMode, full: bool) -> Vec<Rect> {
        let scan = Scan::of(r);
        let count = (t.cols * t.rows) as usize;
        if self.cells.len() != count {
            self.cells = vec![0; count];
        }
        let style = TextStyle {
            palette: std::array::from_fn(|i| r.dac_rgb(attr_to_dac(r, i as u8))),
            ar10: r.ar(AR_MODE),
            sr3: r.sr(SR_CHAR_MAP),
        };
        let cursor = cursor(r, &scan, t);
        let mut rects = Vec::new();
        for row in 0..t.rows {
            let mut span: Option<(u32, u32)> = None;
            for col in 0..t.cols {
                let at = scan.addr(row, col);
                let ch = planes.byte(0, at);
                let attr = planes.byte(1, at);
                let mut cell = u32::from(ch) | (u32::from(attr) << 8);
                let lines = cursor.filter(|c| c.0 == (row, col)).map(|c| c.1);
                if let Some((s, e)) = lines {
                    cell |= CELL_CURSOR | (s << 17) | (e << 22);
                }
                let i = (row * t.cols + col) as usize;
                let Some(old) = self.cells.get_mut(i) else {
                    continue;
                };
                if !full && *old == cell {
                    continue;
                }
                *old = cell;
                let cell = Cell {
                    col,
                    row,
                    ch,
                    attr,
                    cursor: lines,
                };
                self.draw_cell(planes, t, &style, cell);
                span = Some(span.map_or((col, col), |(a, _)| (a, col)));
            }
            if let Some((a, b)) = span {
                let w = t.cell_w * t.dup;
                rects.push(Rect::new(a * w, row * t.cell_h, (b - a + 1) * w, t.cell_h));
            }
        }
        rects
    }

    fn draw_cell(&mut self, planes: &Planes, t: TextMode, style: &TextStyle, cell: Cell) {
        let Cell {
            col,
            row,
            ch,
            attr,
            cursor,
        } = cell;
        let (palette, mode) = (&style.palette, style.ar10);
        let fg = palette[usize::from(attr & 0x0f)];
        let bg_index = if mode & AR10_BLINK != 0 {
            (attr >> 4) & 7
        } else {
            attr >> 4
        };
        let bg = palette[usize::from(bg_index & 0x0f)];
        let glyph = font_base(style.sr3, attr & 0x08 != 0) + usize::from(ch) * GLYPH_BYTES;
        let ninth = t.cell_w == 9 && mode & AR10_LINE_GRAPHICS != 0 && (0xc0..=0xdf).contains(&ch);
        let width = t.cell_w * t.dup;
        let out_stride = t.cols * width * BYTES_PER_PIXEL;
        self.line.clear();
        for y in 0..t.cell_h {
            let bits = if (y as usize) < GLYPH_BYTES {
                planes.byte(2, glyph + y as usize)
            } else {
                0
            };
            let on_cursor = cursor.is_some_and(|(s, e)| s <= y && y <= e);
            self.line.clear();
            for dot in 0..t.cell_w {
                let on = on_cursor
                    || match dot {
                        0..=7 => bits & (0x80 >> dot) != 0,
                        _ => ninth && bits & 1 != 0,
                    };
                let px = if on { fg } else { bg }.to_le_bytes();
                for _ in 0..t.dup {
                    self.line.extend_from_slice(&px);
                }
            }
            let offset = (row * t.cell_h + y) * out_stride + col * width * BYTES_PER_PIXEL;
            self.out.write(offset as usize, &self.line);
        }
    }

    /// Draws the pixels that changed in a graphics mode.
    fn graphics(&mut self, r: &Regs, planes: &Planes, g: GraphicsMode, full: bool) -> Vec<Rect> {
        let scan = Scan::of(r);
        let (w, h) = (g.width as usize, g.height as usize);
        self.frame.clear();
        self.frame.reserve(w * h);
        let palette: [u8; 16] = std::array::from_fn(|i| {
            let enabled = i as u8 & r.ar(AR_PLANE_ENABLE) & 0x0f;
            attr_to_dac(r, enabled)
        });
        for y in 0..g.height {
            if g.shift256 {
                for x in 0..g.width {
                    let p = planes.byte((x & 3) as usize, scan.addr(y, x / 4));
                    self.frame.push(p & r.dac_mask);
                }
            } else {
                for xb in 0..g.width.div_ceil(8) {
                    let word = planes.word(scan.addr(y, xb)).to_le_bytes();
                    for bit in (0..8).rev() {
                        let idx = (0..4).fold(0u8, |acc, p| acc | (((word[p] >> bit) & 1) << p));
                        self.frame.push(palette[usize::from(idx)]);
                    }
                }
                self.frame.truncate((y as usize + 1) * w);
            }
        }
        if self.pixels.len() != w * h {
            self.pixels = vec![0; w * h];
        }
        let dac: Vec<u32> = (0..=255u8).map(|i| r.dac_rgb(i)).collect();
        let mut rects: Vec<Rect> = Vec::new();
        let (sx, sy) = (g.sx as usize, g.sy as usize);
        let stride = w * sx * BYTES_PER_PIXEL as usize;
        for y in 0..h {
            let (Some(new), Some(old)) = (
                self.frame.get(y * w..(y + 1) * w),
                self.pixels.get_mut(y * w..(y + 1) * w),
            ) else {
                continue;
            };
            let (a, b) = if full {
                (0, w)
            } else {
                let Some(a) = new.iter().zip(old.iter()).position(|(n, o)| n != o) else {
                    continue;
                };
                let b = w - new
                    .iter()
                    .zip(old.iter())
                    .rev()
                    .position(|(n, o)| n != o)
                    .unwrap_or(0);
                (a, b)
            };
            old.copy_from_slice(new);
            self.line.clear();
            for &i in new.get(a..b).unwrap_or(&[]) {
                let px = dac.get(usize::from(i)).copied().unwrap_or(0).to_le_bytes();
                for _ in 0..sx {
                    self.line.extend_from_slice(&px);
                }
            }
            for line in y * sy..(y + 1) * sy {
                self.out.write(
                    line * stride + a * sx * BYTES_PER_PIXEL as usize,
                    &self.line,
                );
            }
            let rect = Rect::new(
                (a * sx) as u32,
                (y * sy) as u32,
                ((b - a) * sx) as u32,
                sy as u32,
            );
            match rects.last_mut() {
                Some(last) if last.y + last.h == y as u32 => *last = last.union(&rect),
                _ => rects.push(rect),
            }
        }
        rects
    }
}

/// The DAC index of 4-bit colour `i` through the attribute palette and colour select.
fn attr_to_dac(r: &Regs, i: u8) -> u8 {
    let mut v = r.ar(usize::from(i & 0x0f)) & 0x3f;
    let select = r.ar(AR_COLOR_SELECT);
    if r.ar(AR_MODE) & AR10_P54_SELECT != 0 {
        v = (v & 0x0f) | ((select & 0x03) << 4);
    }
    (v | ((select & 0x0c) << 4)) & r.dac_mask
}

/// Plane 2 offset of the font SR03 selects: map A (attribute bit 3 set) or map B.
fn font_base(sr3: u8, map_a: bool) -> usize {
    let sel = if map_a {
        ((sr3 >> 3) & 0x04) | ((sr3 >> 2) & 0x03)
    } else {
        ((sr3 >> 2) & 0x04) | (sr3 & 0x03)
    };
    usize::from(sel & 3) * 0x4000 + usize::from(sel >> 2) * 0x2000
}

/// The cell (row, col) holding the cursor and its first and last scan line, if shown.
fn cursor(r: &Regs, scan: &Scan, t: TextMode) -> Option<((u32, u32), (u32, u32))> {
    let start = r.cr(CR_CURSOR_START);
    if start & CURSOR_OFF != 0 {
        return None;
    }
    let (s, e) = (
        u32::from(start & 0x1f),
        u32::from(r.cr(CR_CURSOR_END) & 0x1f),
    );
    if s > e || s >= t.cell_h {
        return None;
    }
    let at = (u32::from(r.cr(CR_CURSOR_HI)) << 8) | u32::from(r.cr(CR_CURSOR_LO));
    let rel = at.wrapping_sub(scan.start) & 0xffff;
    let per_row = scan.offset.max(1);
    let (row, col) = (rel / per_row, rel % per_row);
    (row < t.rows && col < t.cols).then_some(((row, col), (s, e.min(t.cell_h - 1))))
}
