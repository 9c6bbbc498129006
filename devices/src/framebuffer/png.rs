//! QMP `screendump`: the shown surface as an RGB PNG file.

use std::io::BufWriter;
use std::path::Path;

use super::{DisplayError, Rect, Surface};

/// Encodes `s` as an 8-bit RGB PNG.
pub fn encode(s: &Surface) -> Result<Vec<u8>, DisplayError> {
    let mut out = Vec::new();
    {
        let mut enc = ::png::Encoder::new(&mut out, s.width, s.height);
        enc.set_color(::png::ColorType::Rgb);
        enc.set_depth(::png::BitDepth::Eight);
        enc.set_compression(::png::Compression::Fast);
        let mut w = enc.write_header().map_err(DisplayError::Png)?;
        let mut bgrx = Vec::new();
        s.read_rect(Rect::new(0, 0, s.width, s.height), &mut bgrx);
        let rgb: Vec<u8> = bgrx
            .chunks_exact(4)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect();
        w.write_image_data(&rgb).map_err(DisplayError::Png)?;
    }
    Ok(out)
}

/// Writes the PNG of `s` to `path`.
pub fn save(s: &Surface, path: &Path) -> Result<(), DisplayError> {
    let data = encode(s)?;
    let write = |path: &Path| -> std::io::Result<()> {
        let f = std::fs::File::create(path)?;
        std::io::Write::write_all(&mut BufWriter::new(f), &data)
    };
    write(path).map_err(|source| DisplayError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::framebuffer::FbMemory;

    #[test]
    fn png_decodes_to_the_surface_pixels() {
        let mem = Arc::new(FbMemory::new(4096).unwrap());
        let s = Surface::new(mem, 0, 2, 2, 8).unwrap();
        s.mem.write(0, &[0x30, 0x20, 0x10, 0, 1, 2, 3, 0]);
        let data = encode(&s).unwrap();
        let dec = ::png::Decoder::new(std::io::Cursor::new(data));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (2, 2));
        assert_eq!(&buf[..6], &[0x10, 0x20, 0x30, 3, 2, 1]);
    }
}
