use super::testing::{MODE_3, MODE_12H, MODE_13H, ModeTable, program};
use super::*;
use crate::framebuffer::Rect;

/// An 8x16 'A', as in the VGA BIOS font.
const GLYPH_A: [u8; 16] = [
    0x00, 0x00, 0x10, 0x38, 0x6c, 0xc6, 0xc6, 0xfe, 0xc6, 0xc6, 0xc6, 0xc6, 0x00, 0x00, 0x00, 0x00,
];
const WHITE: u32 = 0x00ff_ffff;
// DAC 0x2a widened as QEMU does (0xa8), 0x3f to 0xff.
const BLUE: u32 = 0x0000_00a8;
const GREY: u32 = 0x00a8_a8a8;
/// Window offset of 0xB8000.
const TEXT: u64 = 0x1_8000;

fn vga() -> (Vga, Arc<Display>) {
    let display = Arc::new(Display::new());
    (Vga::new(display.clone()).unwrap(), display)
}

/// The bus base the port is reached through, and its offset there.
fn at(port: u16) -> (u64, u64) {
    let base = if u64::from(port) >= VGA_PORT_BASE {
        VGA_PORT_BASE
    } else {
        VGA_MONO_PORT_BASE
    };
    (base, u64::from(port) - base)
}

fn outb(v: &mut Vga, port: u16, val: u8) {
    let (base, off) = at(port);
    v.write(base, off, &[val]);
}

fn inb(v: &mut Vga, port: u16) -> u8 {
    let (base, off) = at(port);
    let mut b = [0xffu8];
    v.read(base, off, &mut b);
    b[0]
}

fn set_mode(v: &mut Vga, t: &ModeTable) {
    let cell = std::cell::RefCell::new(v);
    program(
        &mut |p, x| outb(&mut cell.borrow_mut(), p, x),
        &mut |p| inb(&mut cell.borrow_mut(), p),
        t,
    );
}

fn sr(v: &mut Vga, i: u8, val: u8) {
    v.write(VGA_PORT_BASE, 4, &[i, val]);
}

fn gr(v: &mut Vga, i: u8, val: u8) {
    v.write(VGA_PORT_BASE, 0xe, &[i, val]);
}

fn poke(v: &mut Vga, offset: u64, data: &[u8]) {
    v.write(VGA_WINDOW_BASE, offset, data);
}

fn peek(v: &mut Vga, offset: u64) -> u8 {
    let mut b = [0u8];
    v.read(VGA_WINDOW_BASE, offset, &mut b);
    b[0]
}

/// Loads glyphs into plane 2 as the VGA BIOS does: sequencer and graphics controller set
/// for plane 2 at 0xA0000, then back to text mode.
fn load_glyph(v: &mut Vga, ch: u8, glyph: &[u8; 16]) {
    sr(v, 2, 0x04);
    sr(v, 4, 0x07);
    gr(v, 4, 0x02);
    gr(v, 5, 0x00);
    gr(v, 6, 0x04);
    poke(v, u64::from(ch) * 32, glyph);
    sr(v, 2, 0x03);
    sr(v, 4, 0x02);
    gr(v, 4, 0x00);
    gr(v, 5, 0x10);
    gr(v, 6, 0x0e);
}

fn text_mode_with_a() -> (Vga, Arc<Display>) {
    let (mut v, d) = vga();
    set_mode(&mut v, &MODE_3);
    load_glyph(&mut v, b'A', &GLYPH_A);
    v.refresh();
    (v, d)
}

#[test]
fn text_mode_3_draws_a_white_on_blue_a_and_damages_one_cell() {
    let (mut v, d) = text_mode_with_a();
    assert_eq!(
        v.mode(),
        Mode::Text(TextMode {
            cols: 80,
            rows: 25,
            cell_w: 9,
            cell_h: 16,
            dup: 1
        })
    );
    let s = d.surface().unwrap();
    assert_eq!((s.width, s.height), (720, 400));
    let seq = d.damage_since(0).seq;

    // Row 1, column 2.
    poke(&mut v, TEXT + (80 + 2) * 2, b"A\x1f");
    assert!(v.needs_refresh());
    v.refresh();
    let u = d.damage_since(seq);
    assert_eq!(u.rects, vec![Rect::new(18, 16, 9, 16)]);
    for (y, bits) in GLYPH_A.iter().enumerate() {
        for x in 0..9u32 {
            let on = x < 8 && bits & (0x80 >> x) != 0;
            let want = if on { WHITE } else { BLUE };
            assert_eq!(s.pixel(18 + x, 16 + y as u32), want, "dot {x},{y}");
        }
    }
    // The neighbours stay black.
    assert_eq!(s.pixel(17, 20), 0);
    assert_eq!(s.pixel(27, 20), 0);
    // Nothing changed: no damage.
    v.refresh();
    assert!(d.damage_since(u.seq).rects.is_empty());
}

#[test]
fn writes_coalesce_until_the_refresh() {
    let (mut v, d) = text_mode_with_a();
    let seq = d.damage_since(0).seq;
    poke(&mut v, TEXT, b"A\x1f");
    poke(&mut v, TEXT + 6, b"A\x1f");
    poke(&mut v, TEXT + 160 * 24, b"A\x1f");
    assert_eq!(
        d.damage_since(seq).seq,
        seq,
        "nothing is drawn on the vCPU thread"
    );
    v.refresh();
    assert_eq!(
        d.damage_since(seq).rects,
        vec![Rect::new(0, 0, 36, 16), Rect::new(0, 384, 9, 16)]
    );
}

#[test]
fn a_new_glyph_redraws_the_screen() {
    let (mut v, d) = text_mode_with_a();
    poke(&mut v, TEXT, b"A\x1f");
    v.refresh();
    let seq = d.damage_since(0).seq;
    load_glyph(&mut v, b'A', &[0xff; 16]);
    v.refresh();
    assert_eq!(d.damage_since(seq).rects, vec![Rect::new(0, 0, 720, 400)]);
    assert_eq!(d.surface().unwrap().pixel(0, 0), WHITE);
}

#[test]
fn cursor_is_drawn_at_the_crtc_location_on_its_scan_lines() {
    let (mut v, d) = vga();
    set_mode(&mut v, &MODE_3);
    // Grey on black everywhere, cursor at row 1, column 1 (counter 81).
    for i in 0..80 * 25 {
        poke(&mut v, TEXT + i * 2, b" \x07");
    }
    outb(&mut v, 0x3d4, 0x0e);
    outb(&mut v, 0x3d5, 0);
    outb(&mut v, 0x3d4, 0x0f);
    outb(&mut v, 0x3d5, 81);
    v.refresh();
    let s = d.surface().unwrap();
    // MODE_3's cursor: lines 13..=14 (CR0A 0x0d, CR0B 0x0e).
    assert_eq!(s.pixel(9, 16 + 12), 0);
    assert_eq!(s.pixel(9, 16 + 13), GREY);
    assert_eq!(s.pixel(17, 16 + 14), GREY);
    assert_eq!(s.pixel(9, 16 + 15), 0);
    assert_eq!(s.pixel(0, 16 + 13), 0);

    let seq = d.damage_since(0).seq;
    outb(&mut v, 0x3d5, 82);
    v.refresh();
    assert_eq!(d.damage_since(seq).rects, vec![Rect::new(9, 16, 18, 16)]);
    assert_eq!(s.pixel(9, 16 + 13), 0);
    assert_eq!(s.pixel(18, 16 + 13), GREY);

    // Cursor off (CR0A bit 5).
    outb(&mut v, 0x3d4, 0x0a);
    outb(&mut v, 0x3d5, 0x2d);
    v.refresh();
    assert_eq!(s.pixel(18, 16 + 13), 0);
}

#[test]
fn start_address_scrolls_the_text() {
    let (mut v, d) = text_mode_with_a();
    poke(&mut v, TEXT + 160, b"A\x1f");
    v.refresh();
    let s = d.surface().unwrap();
    assert_eq!(s.pixel(0, 16), BLUE);
    // Start one row (80 cells) further: row 1 moves to row 0.
    outb(&mut v, 0x3d4, 0x0d);
    outb(&mut v, 0x3d5, 80);
    v.refresh();
    assert_eq!(s.pixel(0, 0), BLUE);
    assert_eq!(s.pixel(0, 16), 0);
}

#[test]
fn blink_bit_is_background_intensity_or_blink() {
    let (mut v, d) = text_mode_with_a();
    poke(&mut v, TEXT, b" \x9f");
    v.refresh();
    let s = d.surface().unwrap();
    // AR10 0x0c: blink enabled, bit 7 blinks, background stays blue.
    assert_eq!(s.pixel(0, 0), BLUE);
    inb(&mut v, 0x3da);
    outb(&mut v, 0x3c0, 0x30);
    outb(&mut v, 0x3c0, 0x04);
    v.refresh();
    // Intensity: background 9, light blue (DAC 0x39).
    assert_eq!(s.pixel(0, 0), 0x0057_57ff);
}

#[test]
fn dac_write_and_read_auto_increment_over_triplets() {
    let (mut v, _) = vga();
    outb(&mut v, 0x3c8, 0xfe);
    for c in [1, 2, 3, 4, 5, 6, 0x7f] {
        outb(&mut v, 0x3c9, c);
    }
    assert_eq!(
        inb(&mut v, 0x3c8),
        0x00,
        "two entries written, index wrapped"
    );
    assert_eq!(inb(&mut v, 0x3c7), 0x00, "write mode");
    outb(&mut v, 0x3c7, 0xff);
    assert_eq!(inb(&mut v, 0x3c7), 0x03, "read mode");
    let got: Vec<u8> = (0..4).map(|_| inb(&mut v, 0x3c9)).collect();
    // Entry 0xff, then entry 0 (whose red got 0x7f & 0x3f).
    assert_eq!(got, vec![4, 5, 6, 0x3f]);
    outb(&mut v, 0x3c6, 0x0f);
    assert_eq!(inb(&mut v, 0x3c6), 0x0f);
}

/// Planar access at 0xA0000 (64K map), all planes.
fn planar(v: &mut Vga) {
    sr(v, 2, 0x0f);
    sr(v, 4, 0x06);
    gr(v, 5, 0x00);
    gr(v, 6, 0x05);
}

fn plane(v: &mut Vga, p: u8, offset: u64) -> u8 {
    gr(v, 4, p);
    peek(v, offset)
}

#[test]
fn write_mode_0_applies_set_reset_function_and_bit_mask_against_latches() {
    let (mut v, _) = vga();
    planar(&mut v);
    gr(&mut v, 8, 0xff);
    poke(&mut v, 10, &[0x0f]);
    assert_eq!(
        (0..4).map(|p| plane(&mut v, p, 10)).collect::<Vec<_>>(),
        vec![0x0f; 4]
    );
    // Latches loaded by the read above; set/reset planes 0 and 2 through mask 0xf0.
    gr(&mut v, 1, 0x0f);
    gr(&mut v, 0, 0x05);
    gr(&mut v, 8, 0xf0);
    poke(&mut v, 10, &[0x00]);
    assert_eq!(
        (0..4).map(|p| plane(&mut v, p, 10)).collect::<Vec<_>>(),
        vec![0xff, 0x0f, 0xff, 0x0f]
    );
    // XOR with the latches, rotate by 4, no set/reset, map mask plane 1 only.
    gr(&mut v, 1, 0x00);
    gr(&mut v, 8, 0xff);
    gr(&mut v, 3, 0x18 | 4);
    sr(&mut v, 2, 0x02);
    peek(&mut v, 10);
    poke(&mut v, 10, &[0x0f]);
    assert_eq!(plane(&mut v, 1, 10), 0xff, "0x0f xor (0x0f ror 4)");
    assert_eq!(plane(&mut v, 0, 10), 0xff, "plane 0 masked off");
    // Write mode 1 copies the latches.
    gr(&mut v, 3, 0);
    sr(&mut v, 2, 0x0f);
    gr(&mut v, 4, 1);
    peek(&mut v, 10);
    gr(&mut v, 5, 0x01);
    poke(&mut v, 20, &[0x00]);
    gr(&mut v, 5, 0x00);
    assert_eq!(
        (0..4).map(|p| plane(&mut v, p, 20)).collect::<Vec<_>>(),
        vec![0xff, 0xff, 0xff, 0x0f]
    );
}

#[test]
fn read_mode_1_compares_colours() {
    let (mut v, _) = vga();
    planar(&mut v);
    // Write mode 2: pixel 0 colour 5, pixel 7 colour 0xc, the rest 0.
    gr(&mut v, 5, 0x02);
    gr(&mut v, 8, 0xff);
    poke(&mut v, 3, &[0]);
    gr(&mut v, 8, 0x80);
    peek(&mut v, 3);
    poke(&mut v, 3, &[5]);
    gr(&mut v, 8, 0x01);
    peek(&mut v, 3);
    poke(&mut v, 3, &[0x0c]);
    // Read mode 1.
    gr(&mut v, 5, 0x08);
    gr(&mut v, 7, 0x0f);
    gr(&mut v, 2, 0x05);
    assert_eq!(peek(&mut v, 3), 0x80);
    gr(&mut v, 2, 0x00);
    assert_eq!(peek(&mut v, 3), 0x7e);
    // Don't care about plane 2 and 3: colour 0xc matches 0.
    gr(&mut v, 7, 0x03);
    assert_eq!(peek(&mut v, 3), 0x7f);
}

#[test]
fn mode_13h_pixel_lands_at_x_y_as_two_by_two_dots() {
    let (mut v, d) = vga();
    set_mode(&mut v, &MODE_13H);
    outb(&mut v, 0x3c8, 0x42);
    for c in [0x3f, 0, 0] {
        outb(&mut v, 0x3c9, c);
    }
    v.refresh();
    let s = d.surface().unwrap();
    // 320x200 pixels, each two dots wide and two lines high on the 640x400 screen.
    assert_eq!((s.width, s.height), (640, 400));
    let seq = d.damage_since(0).seq;
    poke(&mut v, 100 * 320 + 37, &[0x42]);
    v.refresh();
    assert_eq!(d.damage_since(seq).rects, vec![Rect::new(74, 200, 2, 2)]);
    for (x, y) in [(74, 200), (75, 200), (74, 201), (75, 201)] {
        assert_eq!(s.pixel(x, y), 0x00ff_0000, "({x}, {y})");
    }
    assert_eq!(s.pixel(73, 200), 0);
    assert_eq!(s.pixel(76, 201), 0);
    assert_eq!(s.pixel(74, 202), 0);
    assert_eq!(peek(&mut v, 100 * 320 + 37), 0x42);
    // Chain-4: the byte is in plane 37 & 3 = 1.
    sr(&mut v, 4, 0x06);
    gr(&mut v, 4, 1);
    assert_eq!(peek(&mut v, 100 * 320 + 36), 0x42);
}

#[test]
fn mode_12h_planar_pixel_goes_through_the_attribute_palette() {
    let (mut v, d) = vga();
    set_mode(&mut v, &MODE_12H);
    v.refresh();
    let s = d.surface().unwrap();
    assert_eq!((s.width, s.height), (640, 480));
    // Colour 6 at (9, 479): set/reset through the bit mask of pixel 1 of byte 1.
    gr(&mut v, 1, 0x0f);
    gr(&mut v, 0, 0x06);
    gr(&mut v, 8, 0x40);
    poke(&mut v, 479 * 80 + 1, &[0]);
    v.refresh();
    // Palette 6 is 0x14: brown.
    assert_eq!(s.pixel(9, 479), 0x00a8_5700);
    assert_eq!(s.pixel(8, 479), 0);
}

#[test]
fn odd_even_puts_even_bytes_in_plane_0_and_odd_in_plane_1() {
    let (mut v, _) = vga();
    set_mode(&mut v, &MODE_3);
    poke(&mut v, TEXT + 4, b"Z\x1e");
    assert_eq!(peek(&mut v, TEXT + 4), b'Z');
    assert_eq!(peek(&mut v, TEXT + 5), 0x1e);
    // Planar reads at plane offset 4.
    sr(&mut v, 4, 0x06);
    gr(&mut v, 5, 0x00);
    gr(&mut v, 6, 0x05);
    assert_eq!(plane(&mut v, 0, 4), b'Z');
    assert_eq!(plane(&mut v, 1, 4), 0x1e);
    assert_eq!(plane(&mut v, 0, 5), 0);
    assert_eq!(plane(&mut v, 2, 4), 0, "map mask 3 keeps plane 2");
}

#[test]
fn input_status_read_resets_the_attribute_flip_flop_and_toggles_retrace() {
    let (mut v, _) = vga();
    outb(&mut v, 0x3c2, 0x01);
    outb(&mut v, 0x3c0, 0x31);
    let a = inb(&mut v, 0x3da);
    let b = inb(&mut v, 0x3da);
    assert_eq!((a ^ b) & 0x09, 0x09);
    // The flip-flop is back on index: 0x12 is an index, then 0x05 its data.
    outb(&mut v, 0x3c0, 0x12);
    outb(&mut v, 0x3c0, 0x05);
    outb(&mut v, 0x3c0, 0x32);
    assert_eq!(inb(&mut v, 0x3c1), 0x05);
    assert_eq!(inb(&mut v, 0x3c0), 0x32);
    assert_eq!(
        inb(&mut v, 0x3ba),
        0xff,
        "mono status is not decoded in colour mode"
    );
}

#[test]
fn crtc_follows_misc_mono_or_colour_and_honours_write_protect() {
    let (mut v, _) = vga();
    // Mono (misc bit 0 clear): CRTC at 0x3B4.
    v.write(VGA_MONO_PORT_BASE, 0, &[0x0c, 0x12]);
    let mut b = [0u8; 2];
    v.read(VGA_MONO_PORT_BASE, 0, &mut b);
    assert_eq!(b, [0x0c, 0x12]);
    assert_eq!(inb(&mut v, 0x3d5), 0xff);
    outb(&mut v, 0x3c2, 0x01);
    assert_eq!(inb(&mut v, 0x3d5), 0x12);
    assert_eq!(inb(&mut v, 0x3cc), 0x01);
    // CR11 bit 7 protects CR00..CR07 except CR07 bit 4.
    v.write(VGA_PORT_BASE, 0x14, &[0x11, 0x80]);
    v.write(VGA_PORT_BASE, 0x14, &[0x01, 0x4f]);
    v.write(VGA_PORT_BASE, 0x14, &[0x07, 0xff]);
    outb(&mut v, 0x3d4, 0x01);
    assert_eq!(inb(&mut v, 0x3d5), 0);
    outb(&mut v, 0x3d4, 0x07);
    assert_eq!(inb(&mut v, 0x3d5), 0x10);
}

#[test]
fn a_16_bit_write_to_an_index_port_writes_index_then_data() {
    let (mut v, _) = vga();
    v.write(VGA_PORT_BASE, 4, &0x0f02u16.to_le_bytes());
    outb(&mut v, 0x3c4, 0x02);
    assert_eq!(inb(&mut v, 0x3c5), 0x0f);
    let mut w = [0u8; 2];
    v.read(VGA_PORT_BASE, 0xe, &mut w);
    assert_eq!(w, [0, 0]);
}

#[test]
fn blank_until_the_palette_source_is_on() {
    let (mut v, d) = vga();
    v.refresh();
    assert!(d.surface().is_none(), "power-on: nothing shown");
    set_mode(&mut v, &MODE_3);
    v.refresh();
    assert_eq!(d.surface().unwrap().width, 720);
    poke(&mut v, TEXT, b" \x1f");
    v.refresh();
    // Palette source off: the same size, black.
    inb(&mut v, 0x3da);
    outb(&mut v, 0x3c0, 0x00);
    assert_eq!(v.mode(), Mode::Blank);
    v.refresh();
    let s = d.surface().unwrap();
    assert_eq!((s.width, s.pixel(0, 0)), (720, 0));
    inb(&mut v, 0x3da);
    outb(&mut v, 0x3c0, 0x20);
    v.refresh();
    assert_eq!(s.pixel(0, 0), BLUE);
}

#[test]
fn scanout_off_stops_publishing_and_on_republishes() {
    let (mut v, d) = text_mode_with_a();
    v.set_scanout(false);
    d.set_surface(None);
    poke(&mut v, TEXT, b"A\x1f");
    assert!(!v.needs_refresh());
    v.refresh();
    assert!(d.surface().is_none());
    v.set_scanout(true);
    let s = d.surface().unwrap();
    assert_eq!((s.width, s.height, s.pixel(0, 0)), (720, 400, BLUE));
}

#[test]
fn window_outside_the_memory_map_is_ignored() {
    let (mut v, _) = vga();
    set_mode(&mut v, &MODE_3);
    // GR06 selects B8000: 0xA0000 and 0xB0000 are not decoded.
    poke(&mut v, 0, &[1, 2, 3, 4]);
    poke(&mut v, 0x1_0000, &[5; 8]);
    assert_eq!(peek(&mut v, 0), 0xff);
    assert_eq!(peek(&mut v, 0x1_0000), 0xff);
    assert_eq!(peek(&mut v, TEXT), 0, "nothing landed in the planes");
    // Past the window, and wide accesses at its very end.
    poke(&mut v, u64::MAX, &[1; 8]);
    let mut b = [0u8; 8];
    v.read(VGA_WINDOW_BASE, VGA_WINDOW_LEN - 8, &mut b);
    v.read(VGA_WINDOW_BASE, u64::MAX - 2, &mut b);
    assert_eq!(b, [0xff; 8]);
}

#[test]
fn hostile_register_values_do_not_panic() {
    let (mut v, d) = vga();
    // Out-of-range indices read 0 and drop writes.
    for port in [0x3c4u16, 0x3ce, 0x3d4] {
        outb(&mut v, 0x3c2, 0x01);
        outb(&mut v, port, 0xee);
        outb(&mut v, port + 1, 0x55);
        assert_eq!(inb(&mut v, port + 1), 0);
    }
    inb(&mut v, 0x3da);
    outb(&mut v, 0x3c0, 0x3f);
    outb(&mut v, 0x3c0, 0x55);
    assert_eq!(inb(&mut v, 0x3c1), 0);
    // 32-bit accesses on every port, a 32-bit access past the range, unknown ports.
    for off in 0..VGA_PORT_LEN {
        v.write(VGA_PORT_BASE, off, &0xffff_ffffu32.to_le_bytes());
        let mut b = [0u8; 4];
        v.read(VGA_PORT_BASE, off, &mut b);
    }
    v.write(u64::MAX, 5, &[1]);
    // Every CRTC/sequencer/attribute register at its extreme, in text and graphics.
    for ar10 in [0x0c, 0x41, 0x01] {
        for val in [0x00u8, 0xff] {
            for i in 0..25u8 {
                v.write(VGA_PORT_BASE, 0x14, &[i, val]);
            }
            for i in 0..5u8 {
                sr(&mut v, i, val & !0x20);
            }
            for i in 0..9u8 {
                gr(&mut v, i, val);
            }
            inb(&mut v, 0x3da);
            outb(&mut v, 0x3c0, 0x30);
            outb(&mut v, 0x3c0, ar10);
            poke(&mut v, 0, &[0xff; 64]);
            v.refresh();
            if let Some(s) = d.surface() {
                assert!(s.width <= crate::framebuffer::MAX_WIDTH);
                assert!(s.height <= crate::framebuffer::MAX_HEIGHT);
            }
        }
    }
}

#[test]
fn line_graphics_characters_fill_the_ninth_dot() {
    let (mut v, d) = vga();
    set_mode(&mut v, &MODE_3);
    // A horizontal bar glyph in 0xC4 (line graphics) and in 'B' (not).
    let bar = [0xff; 16];
    load_glyph(&mut v, 0xc4, &bar);
    load_glyph(&mut v, b'B', &bar);
    poke(&mut v, TEXT, b"\xc4\x0fB\x0f");
    v.refresh();
    let s = d.surface().unwrap();
    assert_eq!(s.pixel(8, 0), WHITE, "0xC4 copies dot 7 into dot 8");
    assert_eq!(s.pixel(9 + 8, 0), 0, "'B' leaves dot 8 background");
    // Line graphics off (AR10 bit 2): dot 8 is background for 0xC4 too.
    inb(&mut v, 0x3da);
    outb(&mut v, 0x3c0, 0x30);
    outb(&mut v, 0x3c0, 0x08);
    v.refresh();
    assert_eq!(s.pixel(8, 0), 0);
}

#[test]
fn eight_dot_and_forty_column_cells_change_the_surface_size() {
    let (mut v, d) = vga();
    set_mode(&mut v, &MODE_3);
    v.refresh();
    sr(&mut v, 1, 0x01);
    v.refresh();
    assert_eq!(d.surface().unwrap().width, 640);
    // 40 columns with the halved dot clock: each dot two pixels wide.
    sr(&mut v, 1, 0x09);
    // MODE_3 leaves CR00..CR07 write-protected (CR11 bit 7): unlock first.
    v.write(VGA_PORT_BASE, 0x14, &[0x01, 39]);
    v.refresh();
    assert_eq!(
        d.surface().unwrap().width,
        1280,
        "protected: still 80 columns"
    );
    v.write(VGA_PORT_BASE, 0x14, &[0x11, 0x0e]);
    v.write(VGA_PORT_BASE, 0x14, &[0x01, 39]);
    load_glyph(&mut v, b'A', &GLYPH_A);
    poke(&mut v, TEXT + 2, b"A\x1f");
    v.refresh();
    let s = d.surface().unwrap();
    assert_eq!((s.width, s.height), (640, 400));
    // Row 3 of 'A' is 0x38: dots 2..=4 of cell 1, pixels 16 + 4..=9.
    assert_eq!(s.pixel(16 + 3, 3), BLUE);
    assert_eq!(s.pixel(16 + 4, 3), WHITE);
    assert_eq!(s.pixel(16 + 9, 3), WHITE);
    assert_eq!(s.pixel(16 + 10, 3), BLUE);
}

#[test]
fn character_map_select_picks_the_font_by_attribute_bit_3() {
    let (mut v, d) = vga();
    set_mode(&mut v, &MODE_3);
    // SR03 = 0x04: map A (attribute bit 3 set) at plane 2 offset 0x4000, map B at 0.
    sr(&mut v, 3, 0x04);
    load_glyph(&mut v, b'A', &[0xff; 16]);
    sr(&mut v, 2, 0x04);
    sr(&mut v, 4, 0x07);
    gr(&mut v, 5, 0x00);
    gr(&mut v, 6, 0x04);
    poke(&mut v, 0x4000 + u64::from(b'A') * 32, &[0x80; 16]);
    sr(&mut v, 2, 0x03);
    sr(&mut v, 4, 0x02);
    gr(&mut v, 5, 0x10);
    gr(&mut v, 6, 0x0e);
    poke(&mut v, TEXT, b"A\x1fA\x17");
    v.refresh();
    let s = d.surface().unwrap();
    // Map A: only the first dot; map B: the whole row.
    assert_eq!((s.pixel(0, 0), s.pixel(1, 0)), (WHITE, BLUE));
    assert_eq!((s.pixel(9, 0), s.pixel(10, 0)), (GREY, GREY));
}
