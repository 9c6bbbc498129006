//! Rectangle encoders: Raw and ZRLE (RFC 6143 7.7.6), from a [`Surface`] into a client's
//! pixel format.
//!
//! ZRLE here cuts a rectangle into 64x64 tiles and sends each as a solid colour when it is
//! one, else as raw CPIXELs, through the client's one zlib stream (the desktop's large flat
//! areas are where the bytes go). The full-width native-format Raw path is written by the
//! session straight from framebuffer memory; see `session.rs`.

use flate2::{Compress, Compression, FlushCompress};

use super::proto::PixelFormat;
use hospes_devices::framebuffer::{Rect, Surface};

const TILE: u32 = 64;

/// Appends `r`'s pixels in format `pf` (the Raw encoding's payload).
pub fn raw(s: &Surface, r: Rect, pf: &PixelFormat, out: &mut Vec<u8>) {
    if *pf == PixelFormat::NATIVE {
        s.read_rect(r, out);
        return;
    }
    let mut row = Vec::with_capacity((r.w * 4) as usize);
    out.reserve(r.w as usize * r.h as usize * pf.bytes_per_pixel());
    for y in r.y..r.y + r.h {
        row.clear();
        s.read_rect(Rect::new(r.x, y, r.w, 1), &mut row);
        for p in row.chunks_exact(4) {
            let px = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & 0x00ff_ffff;
            pf.put(pf.convert(px), out);
        }
    }
}

/// A client's ZRLE state: the zlib stream lives as long as the connection.
pub struct Zrle {
    z: Compress,
    tile: Vec<u8>,
    plain: Vec<u8>,
}

impl Default for Zrle {
    fn default() -> Self {
        Self::new()
    }
}

impl Zrle {
    pub fn new() -> Self {
        Self {
            z: Compress::new(Compression::fast(), true),
            tile: Vec::new(),
            plain: Vec::new(),
        }
    }

    /// Appends the ZRLE payload of `r` (length, then zlib data).
    pub fn encode(&mut self, s: &Surface, r: Rect, pf: &PixelFormat, out: &mut Vec<u8>) {
        let cpx = pf.cpixel_range();
        self.plain.clear();
        let mut ty = r.y;
        while ty < r.y + r.h {
            let th = TILE.min(r.y + r.h - ty);
            let mut tx = r.x;
            while tx < r.x + r.w {
                let tw = TILE.min(r.x + r.w - tx);
                self.tile.clear();
                raw(s, Rect::new(tx, ty, tw, th), pf, &mut self.tile);
                let bpp = pf.bytes_per_pixel();
                let first = &self.tile[..bpp.min(self.tile.len())];
                if self.tile.chunks_exact(bpp).all(|p| p == first) {
                    self.plain.push(1);
                    self.plain.extend_from_slice(&first[cpx.clone()]);
                } else {
                    self.plain.push(0);
                    for p in self.tile.chunks_exact(bpp) {
                        self.plain.extend_from_slice(&p[cpx.clone()]);
                    }
                }
                tx += tw;
            }
            ty += th;
        }
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        out.reserve(self.plain.len() / 2 + 64);
        let mut input = &self.plain[..];
        loop {
            let before_in = self.z.total_in();
            // Vec output grows as needed: make room, compress, repeat until all is in and
            // the sync flush is out.
            if out.capacity() - out.len() < 1024 {
                out.reserve(64 * 1024);
            }
            if self
                .z
                .compress_vec(input, out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            let used = (self.z.total_in() - before_in) as usize;
            input = &input[used..];
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
        let len = (out.len() - start) as u32;
        out[len_at..start].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;

    use super::*;
    use hospes_devices::framebuffer::FbMemory;

    fn surface() -> Surface {
        let mem = Arc::new(FbMemory::new(1 << 20).unwrap());
        let s = Surface::new(mem, 0, 100, 70, 400).unwrap();
        s.mem.fill32(0, 400 * 70, 0x0011_2233);
        s.mem
            .write(s.pixel_offset(70, 5), &0x00ff_0000u32.to_le_bytes());
        s
    }

    #[test]
    fn zrle_tiles_decode_to_the_surface() {
        let s = surface();
        let mut z = Zrle::new();
        let mut out = Vec::new();
        z.encode(&s, s.full(), &PixelFormat::NATIVE, &mut out);
        let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 4);
        let mut plain = Vec::new();
        let mut d = flate2::read::ZlibDecoder::new(&out[4..]);
        let _ = d.read_to_end(&mut plain);
        // Tiles: (0,0) solid, (64,0) raw 36x64, (0,64) solid 64x6, (64,64) solid 36x6.
        assert_eq!(&plain[..4], &[1, 0x33, 0x22, 0x11]);
        assert_eq!(plain[4], 0);
        let raw = &plain[5..5 + 36 * 64 * 3];
        let px = |x: usize, y: usize| &raw[(y * 36 + x) * 3..(y * 36 + x) * 3 + 3];
        assert_eq!(px(6, 5), &[0, 0, 0xff]);
        assert_eq!(px(0, 0), &[0x33, 0x22, 0x11]);
        assert_eq!(
            &plain[5 + 36 * 64 * 3..],
            &[1, 0x33, 0x22, 0x11, 1, 0x33, 0x22, 0x11]
        );
    }

    #[test]
    fn raw_converts_to_the_client_format() {
        let s = surface();
        let mut pf = PixelFormat::NATIVE;
        pf.big_endian = true;
        let mut out = Vec::new();
        raw(&s, Rect::new(70, 5, 2, 1), &pf, &mut out);
        assert_eq!(out, [0, 0xff, 0, 0, 0, 0x11, 0x22, 0x33]);
    }
}
