//! A 128-byte EDID 1.4 block announcing one preferred mode, for std-VGA's EDID window and
//! virtio-gpu's GET_EDID. Guests pick their start resolution from it.

/// Builds the EDID block for a `width` x `height` panel at 60 Hz (reduced blanking).
pub fn build(width: u32, height: u32) -> [u8; 128] {
    let mut e = [0u8; 128];
    e[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "HOS" (three 5-bit letters, big-endian), product 1, serial 0.
    let id =
        ((u16::from(b'H' - b'@')) << 10) | ((u16::from(b'O' - b'@')) << 5) | u16::from(b'S' - b'@');
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10] = 1;
    e[16] = 1; // week
    e[17] = 34; // 2024
    e[18] = 1;
    e[19] = 4;
    e[20] = 0x80; // digital input
    e[21] = 53; // cm
    e[22] = 30;
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // sRGB, preferred timing is native
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    e[35] = 0x21; // 640x480@60, 800x600@60
    e[36] = 0x08; // 1024x768@60
    for i in 0..8 {
        e[38 + i * 2] = 1;
        e[39 + i * 2] = 1;
    }
    e[54..72].copy_from_slice(&timing(width, height));
    // Monitor name.
    e[72..77].copy_from_slice(&[0, 0, 0, 0xfc, 0]);
    e[77..90].copy_from_slice(b"Hospes\n      ");
    // Two dummy descriptors.
    e[90..95].copy_from_slice(&[0, 0, 0, 0x10, 0]);
    e[108..113].copy_from_slice(&[0, 0, 0, 0x10, 0]);
    let sum = e[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

/// A detailed timing descriptor.
fn timing(w: u32, h: u32) -> [u8; 18] {
    let w = w.clamp(1, 4095);
    let h = h.clamp(1, 4095);
    let (hblank, hso, hsw) = (160u32, 48u32, 32u32);
    let (vblank, vso, vsw) = (30u32, 3u32, 6u32);
    let clock = ((w + hblank) * (h + vblank) * 60 / 10_000).min(0xffff);
    let (wmm, hmm) = (530u32, 300u32);
    [
        clock as u8,
        (clock >> 8) as u8,
        w as u8,
        hblank as u8,
        (((w >> 8) & 0xf) << 4 | ((hblank >> 8) & 0xf)) as u8,
        h as u8,
        vblank as u8,
        (((h >> 8) & 0xf) << 4 | ((vblank >> 8) & 0xf)) as u8,
        hso as u8,
        hsw as u8,
        (((vso & 0xf) << 4) | (vsw & 0xf)) as u8,
        (((hso >> 8) & 3) << 6 | ((hsw >> 8) & 3) << 4 | ((vso >> 4) & 3) << 2 | ((vsw >> 4) & 3))
            as u8,
        wmm as u8,
        hmm as u8,
        (((wmm >> 8) & 0xf) << 4 | ((hmm >> 8) & 0xf)) as u8,
        0,
        0,
        0x1e,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_checksums_to_zero_and_names_the_preferred_mode() {
        let e = build(1920, 1080);
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(&e[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        let w = u32::from(e[56]) | (u32::from(e[58] >> 4) << 8);
        let h = u32::from(e[59]) | (u32::from(e[61] >> 4) << 8);
        assert_eq!((w, h), (1920, 1080));
    }
}
