//! The guest's screen as the VM view keeps it, without GTK: a BGRA pixel buffer cut into
//! square tiles, each with a dirty flag.
//!
//! RFB updates land here rectangle by rectangle ([`Framebuffer::put`], [`Framebuffer::copy`]);
//! only the tiles they touch are marked dirty, so the widget re-uploads those tiles as
//! textures and keeps the rest. [`fit`] is the letterbox geometry the widget draws with
//! and maps the pointer through.

/// Tile edge in pixels: 128×128×4 = 64 KiB per texture.
pub const TILE: u32 = 128;

/// Bytes per pixel (BGRA, as the RFB pixel format the session asks for).
const BPP: usize = 4;

/// A rectangle in framebuffer pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// The guest's screen.
#[derive(Debug, Default)]
pub struct Framebuffer {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    dirty: Vec<bool>,
}

impl Framebuffer {
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Tiles across.
    pub fn tiles_x(&self) -> u32 {
        self.width.div_ceil(TILE)
    }

    /// Tiles down.
    pub fn tiles_y(&self) -> u32 {
        self.height.div_ceil(TILE)
    }

    /// A new size: every pixel black and every tile dirty.
    pub fn resize(&mut self, width: u32, height: u32) {
        self.width = width;
        self.height = height;
        self.pixels = vec![0; width as usize * height as usize * BPP];
        self.dirty = vec![true; (self.tiles_x() * self.tiles_y()) as usize];
    }

    /// Writes `data` (BGRA rows of `rect.width` pixels) at `rect`, clipped to the screen.
    /// Returns false when `data` is too short for the rectangle.
    pub fn put(&mut self, rect: Rect, data: &[u8]) -> bool {
        let src_stride = rect.width as usize * BPP;
        if data.len() < src_stride * rect.height as usize {
            return false;
        }
        let Some(clip) = self.clip(rect) else {
            return true;
        };
        let dst_stride = self.width as usize * BPP;
        let row_bytes = clip.width as usize * BPP;
        for row in 0..clip.height as usize {
            let src = row * src_stride;
            let dst = (clip.y as usize + row) * dst_stride + clip.x as usize * BPP;
            self.pixels[dst..dst + row_bytes].copy_from_slice(&data[src..src + row_bytes]);
        }
        self.mark(clip);
        true
    }

    /// Copies the `dst`-sized rectangle at (`src_x`, `src_y`) to `dst` (RFB CopyRect).
    pub fn copy(&mut self, dst: Rect, src_x: u32, src_y: u32) {
        let src = Rect {
            x: src_x,
            y: src_y,
            ..dst
        };
        let (Some(d), Some(s)) = (self.clip(dst), self.clip(src)) else {
            return;
        };
        let width = d.width.min(s.width) as usize * BPP;
        let height = d.height.min(s.height) as usize;
        let stride = self.width as usize * BPP;
        // Rows in the order that never reads a row already overwritten.
        let rows: Box<dyn Iterator<Item = usize>> = if d.y > s.y {
            Box::new((0..height).rev())
        } else {
            Box::new(0..height)
        };
        for row in rows {
            let from = (s.y as usize + row) * stride + s.x as usize * BPP;
            let to = (d.y as usize + row) * stride + d.x as usize * BPP;
            self.pixels.copy_within(from..from + width, to);
        }
        self.mark(d);
    }

    /// The BGRA pixels of tile (`tx`, `ty`), opaque, its size, and clears its dirty flag; None
    /// when the tile is clean or outside the screen.
    pub fn take_dirty_tile(&mut self, tx: u32, ty: u32) -> Option<(u32, u32, Vec<u8>)> {
        let index = (ty * self.tiles_x() + tx) as usize;
        if !self.dirty.get(index).copied().unwrap_or(false) {
            return None;
        }
        self.dirty[index] = false;
        let x = tx * TILE;
        let y = ty * TILE;
        let width = TILE.min(self.width - x);
        let height = TILE.min(self.height - y);
        let stride = self.width as usize * BPP;
        let row_bytes = width as usize * BPP;
        let mut out = Vec::with_capacity(row_bytes * height as usize);
        for row in 0..height as usize {
            let start = (y as usize + row) * stride + x as usize * BPP;
            out.extend_from_slice(&self.pixels[start..start + row_bytes]);
        }
        // RFB servers leave the padding byte of 32-bit pixels at 0: make it opaque alpha.
        for pixel in out.chunks_exact_mut(BPP) {
            pixel[3] = 0xff;
        }
        Some((width, height, out))
    }

    /// The pixel at (`x`, `y`) as BGRA.
    #[cfg(test)]
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 4]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let at = (y as usize * self.width as usize + x as usize) * BPP;
        self.pixels.get(at..at + BPP)?.try_into().ok()
    }

    fn clip(&self, rect: Rect) -> Option<Rect> {
        let right = rect.x.saturating_add(rect.width).min(self.width);
        let bottom = rect.y.saturating_add(rect.height).min(self.height);
        (rect.x < right && rect.y < bottom).then_some(Rect {
            x: rect.x,
            y: rect.y,
            width: right - rect.x,
            height: bottom - rect.y,
        })
    }

    fn mark(&mut self, rect: Rect) {
        let tiles_x = self.tiles_x();
        for ty in rect.y / TILE..=(rect.y + rect.height - 1) / TILE {
            for tx in rect.x / TILE..=(rect.x + rect.width - 1) / TILE {
                if let Some(flag) = self.dirty.get_mut((ty * tiles_x + tx) as usize) {
                    *flag = true;
                }
            }
        }
    }
}

/// Where a `fb_w`×`fb_h` screen goes in a `area_w`×`area_h` area, scaled to fit with its
/// aspect ratio kept and centred: (scale, left, top).
pub fn fit(fb_w: u32, fb_h: u32, area_w: f64, area_h: f64) -> (f64, f64, f64) {
    if fb_w == 0 || fb_h == 0 || area_w <= 0.0 || area_h <= 0.0 {
        return (1.0, 0.0, 0.0);
    }
    let scale = (area_w / f64::from(fb_w)).min(area_h / f64::from(fb_h));
    let left = (area_w - f64::from(fb_w) * scale) / 2.0;
    let top = (area_h - f64::from(fb_h) * scale) / 2.0;
    (scale, left, top)
}

/// The framebuffer pixel under widget point (`x`, `y`), clamped to the screen.
pub fn to_guest(fb_w: u32, fb_h: u32, area: (f64, f64), x: f64, y: f64) -> Option<(u16, u16)> {
    if fb_w == 0 || fb_h == 0 {
        return None;
    }
    let (scale, left, top) = fit(fb_w, fb_h, area.0, area.1);
    let gx = ((x - left) / scale).clamp(0.0, f64::from(fb_w - 1));
    let gy = ((y - top) / scale).clamp(0.0, f64::from(fb_h - 1));
    Some((gx as u16, gy as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(width: u32, height: u32, bgra: [u8; 4]) -> Vec<u8> {
        bgra.repeat((width * height) as usize)
    }

    fn clean(fb: &mut Framebuffer) {
        for ty in 0..fb.tiles_y() {
            for tx in 0..fb.tiles_x() {
                fb.take_dirty_tile(tx, ty);
            }
        }
    }

    #[test]
    fn an_update_dirties_only_the_tiles_it_touches() {
        let mut fb = Framebuffer::default();
        fb.resize(300, 200);
        assert_eq!((fb.tiles_x(), fb.tiles_y()), (3, 2));
        clean(&mut fb);
        let rect = Rect {
            x: 130,
            y: 10,
            width: 10,
            height: 10,
        };
        assert!(fb.put(rect, &solid(10, 10, [1, 2, 3, 255])));
        assert_eq!(fb.pixel(135, 15), Some([1, 2, 3, 255]));
        assert_eq!(fb.pixel(129, 15), Some([0, 0, 0, 0]));
        assert!(fb.take_dirty_tile(0, 0).is_none());
        let (w, h, pixels) = fb.take_dirty_tile(1, 0).unwrap();
        assert_eq!((w, h), (128, 128));
        assert_eq!(&pixels[(15 * 128 + 5) * 4..][..4], &[1, 2, 3, 255]);
        assert!(fb.take_dirty_tile(1, 0).is_none(), "taken once");
        let (w, h, _) = {
            fb.put(
                Rect {
                    x: 290,
                    y: 190,
                    width: 20,
                    height: 20,
                },
                &solid(20, 20, [9; 4]),
            );
            fb.take_dirty_tile(2, 1).unwrap()
        };
        assert_eq!((w, h), (44, 72), "edge tiles are cut to the screen");
    }

    #[test]
    fn a_short_update_is_refused() {
        let mut fb = Framebuffer::default();
        fb.resize(16, 16);
        let rect = Rect {
            x: 0,
            y: 0,
            width: 4,
            height: 4,
        };
        assert!(!fb.put(rect, &[0; 10]));
    }

    #[test]
    fn copy_rect_moves_pixels_down_without_smearing() {
        let mut fb = Framebuffer::default();
        fb.resize(4, 4);
        for y in 0..4 {
            let rect = Rect {
                x: 0,
                y,
                width: 4,
                height: 1,
            };
            fb.put(rect, &solid(4, 1, [y as u8; 4]));
        }
        let dst = Rect {
            x: 0,
            y: 1,
            width: 4,
            height: 3,
        };
        fb.copy(dst, 0, 0);
        let rows: Vec<u8> = (0..4).map(|y| fb.pixel(0, y).unwrap()[0]).collect();
        assert_eq!(rows, [0, 0, 1, 2]);
    }

    #[test]
    fn fit_keeps_the_aspect_ratio_and_centres() {
        let (scale, left, top) = fit(1920, 1080, 960.0, 1000.0);
        assert_eq!(scale, 0.5);
        assert_eq!(left, 0.0);
        assert_eq!(top, (1000.0 - 540.0) / 2.0);
        assert_eq!(
            to_guest(1920, 1080, (960.0, 1000.0), 480.0, 500.0),
            Some((960, 540))
        );
        assert_eq!(
            to_guest(1920, 1080, (960.0, 1000.0), -5.0, 0.0),
            Some((0, 0))
        );
    }
}
