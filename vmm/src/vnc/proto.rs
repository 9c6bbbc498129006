//! RFB 3.8 wire format (RFC 6143 plus the pseudo-encodings QEMU and TigerVNC added): client
//! message parsing and server message building. Pure functions over byte buffers: no I/O,
//! no KVM, so every byte a client can send is handled here and fuzzed.
//!
//! [`parse`] takes the bytes received so far and returns one message and how many bytes it
//! used, `Ok(None)` when more bytes are needed, or an error for a message no well-behaved
//! client sends (the server then drops that client).

/// Encodings and pseudo-encodings.
pub const ENC_RAW: i32 = 0;
pub const ENC_COPYRECT: i32 = 1;
pub const ENC_ZRLE: i32 = 16;
pub const ENC_CURSOR: i32 = -239;
pub const ENC_DESKTOP_SIZE: i32 = -223;
pub const ENC_QEMU_POINTER_MOTION: i32 = -257;
pub const ENC_QEMU_EXT_KEY: i32 = -258;
pub const ENC_EXT_DESKTOP_SIZE: i32 = -308;

/// Longest cut text accepted from a client.
pub const MAX_CUT_TEXT: u32 = 1 << 20;
/// Most encodings in one SetEncodings.
pub const MAX_ENCODINGS: u16 = 1024;

/// Errors in a client's byte stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("unknown client message type {0}")]
    UnknownMessage(u8),
    #[error("unknown QEMU client message subtype {0}")]
    UnknownQemuMessage(u8),
    #[error("cut text of {0} bytes is too long")]
    CutTextTooLong(u32),
    #[error("{0} encodings is too many")]
    TooManyEncodings(u16),
    #[error("unsupported pixel format")]
    BadPixelFormat,
    #[error("not an RFB 3.x version string")]
    BadVersion,
}

/// A pixel format as RFB describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelFormat {
    pub bpp: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub true_colour: bool,
    pub red_max: u16,
    pub green_max: u16,
    pub blue_max: u16,
    pub red_shift: u8,
    pub green_shift: u8,
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The server's own format: 32 bpp, depth 24, little-endian `0x00RRGGBB`.
    pub const NATIVE: PixelFormat = PixelFormat {
        bpp: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bpp;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = u8::from(self.true_colour);
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Parses and checks a format: true colour, 8/16/32 bpp, shifts inside the pixel.
    pub fn from_bytes(b: &[u8; 16]) -> Result<Self, ProtoError> {
        let f = PixelFormat {
            bpp: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        };
        let shifts_fit = [
            (f.red_max, f.red_shift),
            (f.green_max, f.green_shift),
            (f.blue_max, f.blue_shift),
        ]
        .iter()
        .all(|&(max, shift)| {
            u32::from(shift) < u32::from(f.bpp)
                && u32::from(shift) + (16 - max.leading_zeros()) <= u32::from(f.bpp)
        });
        if !f.true_colour || !matches!(f.bpp, 8 | 16 | 32) || !shifts_fit {
            return Err(ProtoError::BadPixelFormat);
        }
        Ok(f)
    }

    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bpp / 8)
    }

    /// Converts `0x00RRGGBB` to this format's pixel value.
    pub fn convert(&self, px: u32) -> u32 {
        let c = |v: u32, max: u16, shift: u8| ((v * u32::from(max) + 127) / 255) << shift;
        c((px >> 16) & 0xff, self.red_max, self.red_shift)
            | c((px >> 8) & 0xff, self.green_max, self.green_shift)
            | c(px & 0xff, self.blue_max, self.blue_shift)
    }

    /// Appends pixel value `v` in this format's size and byte order.
    pub fn put(&self, v: u32, out: &mut Vec<u8>) {
        match (self.bpp, self.big_endian) {
            (32, false) => out.extend_from_slice(&v.to_le_bytes()),
            (32, true) => out.extend_from_slice(&v.to_be_bytes()),
            (16, false) => out.extend_from_slice(&(v as u16).to_le_bytes()),
            (16, true) => out.extend_from_slice(&(v as u16).to_be_bytes()),
            _ => out.push(v as u8),
        }
    }

    /// For ZRLE: the CPIXEL byte range inside a pixel of this format, when it is 3 bytes.
    pub fn cpixel_range(&self) -> std::ops::Range<usize> {
        let fits_low = [
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        ]
        .iter()
        .all(|&(max, shift)| u32::from(shift) + (16 - max.leading_zeros()) <= 24);
        let fits_high = [self.red_shift, self.green_shift, self.blue_shift]
            .iter()
            .all(|&s| s >= 8);
        if self.bpp == 32 && self.depth <= 24 && self.true_colour {
            match (fits_low, fits_high, self.big_endian) {
                (true, _, false) => return 0..3,
                (true, _, true) => return 1..4,
                (false, true, false) => return 1..4,
                (false, true, true) => return 0..3,
                _ => {}
            }
        }
        0..self.bytes_per_pixel()
    }
}

/// A message from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    SetPixelFormat(PixelFormat),
    SetEncodings(Vec<i32>),
    UpdateRequest {
        incremental: bool,
        x: u16,
        y: u16,
        w: u16,
        h: u16,
    },
    Key {
        down: bool,
        keysym: u32,
    },
    Pointer {
        buttons: u8,
        x: u16,
        y: u16,
    },
    CutText(Vec<u8>),
    SetDesktopSize {
        width: u16,
        height: u16,
    },
    /// QEMU Extended Key Event: an XT scancode (0xE0-prefixed keys have bit 7 set).
    ExtKey {
        down: bool,
        keysym: u32,
        keycode: u32,
    },
    EnableContinuousUpdates,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one client message from the front of `buf`.
pub fn parse(buf: &[u8]) -> Result<Option<(ClientMessage, usize)>, ProtoError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let need = |n: usize| buf.len() >= n;
    let msg = match kind {
        0 => {
            if !need(20) {
                return Ok(None);
            }
            let mut pf = [0u8; 16];
            pf.copy_from_slice(&buf[4..20]);
            (
                ClientMessage::SetPixelFormat(PixelFormat::from_bytes(&pf)?),
                20,
            )
        }
        2 => {
            if !need(4) {
                return Ok(None);
            }
            let n = be16(buf, 2);
            if n > MAX_ENCODINGS {
                return Err(ProtoError::TooManyEncodings(n));
            }
            let len = 4 + usize::from(n) * 4;
            if !need(len) {
                return Ok(None);
            }
            let encs = (0..usize::from(n))
                .map(|i| be32(buf, 4 + i * 4) as i32)
                .collect();
            (ClientMessage::SetEncodings(encs), len)
        }
        3 => {
            if !need(10) {
                return Ok(None);
            }
            (
                ClientMessage::UpdateRequest {
                    incremental: buf[1] != 0,
                    x: be16(buf, 2),
                    y: be16(buf, 4),
                    w: be16(buf, 6),
                    h: be16(buf, 8),
                },
                10,
            )
        }
        4 => {
            if !need(8) {
                return Ok(None);
            }
            (
                ClientMessage::Key {
                    down: buf[1] != 0,
                    keysym: be32(buf, 4),
                },
                8,
            )
        }
        5 => {
            if !need(6) {
                return Ok(None);
            }
            (
                ClientMessage::Pointer {
                    buttons: buf[1],
                    x: be16(buf, 2),
                    y: be16(buf, 4),
                },
                6,
            )
        }
        6 => {
            if !need(8) {
                return Ok(None);
            }
            let n = be32(buf, 4);
            if n > MAX_CUT_TEXT {
                return Err(ProtoError::CutTextTooLong(n));
            }
            let len = 8 + n as usize;
            if !need(len) {
                return Ok(None);
            }
            (ClientMessage::CutText(buf[8..len].to_vec()), len)
        }
        150 => {
            if !need(10) {
                return Ok(None);
            }
            (ClientMessage::EnableContinuousUpdates, 10)
        }
        251 => {
            if !need(8) {
                return Ok(None);
            }
            let screens = usize::from(buf[6]);
            let len = 8 + screens * 16;
            if !need(len) {
                return Ok(None);
            }
            (
                ClientMessage::SetDesktopSize {
                    width: be16(buf, 2),
                    height: be16(buf, 4),
                },
                len,
            )
        }
        255 => {
            if !need(2) {
                return Ok(None);
            }
            if buf[1] != 0 {
                return Err(ProtoError::UnknownQemuMessage(buf[1]));
            }
            if !need(12) {
                return Ok(None);
            }
            (
                ClientMessage::ExtKey {
                    down: be16(buf, 2) != 0,
                    keysym: be32(buf, 4),
                    keycode: be32(buf, 8),
                },
                12,
            )
        }
        other => return Err(ProtoError::UnknownMessage(other)),
    };
    Ok(Some(msg))
}

/// Parses the client's ProtocolVersion ("RFB 003.00x\n"), returning the minor version.
pub fn parse_version(b: &[u8; 12]) -> Result<u32, ProtoError> {
    let s = std::str::from_utf8(b).map_err(|_| ProtoError::BadVersion)?;
    let rest = s
        .strip_prefix("RFB 003.")
        .and_then(|r| r.strip_suffix('\n'))
        .ok_or(ProtoError::BadVersion)?;
    rest.parse().map_err(|_| ProtoError::BadVersion)
}

/// ServerInit.
pub fn server_init(width: u16, height: u16, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + name.len());
    b.extend_from_slice(&width.to_be_bytes());
    b.extend_from_slice(&height.to_be_bytes());
    b.extend_from_slice(&PixelFormat::NATIVE.to_bytes());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// A FramebufferUpdate header for `rects` rectangles.
pub fn update_header(rects: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&rects.to_be_bytes());
}

/// A rectangle header.
pub fn rect_header(x: u16, y: u16, w: u16, h: u16, encoding: i32, out: &mut Vec<u8>) {
    for v in [x, y, w, h] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&encoding.to_be_bytes());
}

/// The ExtendedDesktopSize rectangle: one screen of `w` x `h`. `reason` 0: server change,
/// 1: this client's request, 2: another client's; `status` 0 OK, 1 prohibited.
pub fn ext_desktop_size(reason: u16, status: u16, w: u16, h: u16, out: &mut Vec<u8>) {
    rect_header(reason, status, w, h, ENC_EXT_DESKTOP_SIZE, out);
    out.extend_from_slice(&[1, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    for v in [0u16, 0, w, h] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&0u32.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_message_and_waits_for_partial_ones() {
        let req = [3, 1, 0, 1, 0, 2, 0, 3, 0, 4];
        assert_eq!(
            parse(&req).unwrap(),
            Some((
                ClientMessage::UpdateRequest {
                    incremental: true,
                    x: 1,
                    y: 2,
                    w: 3,
                    h: 4
                },
                10
            ))
        );
        for n in 0..req.len() {
            assert_eq!(parse(&req[..n]).unwrap(), None);
        }
        let enc = [2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21];
        assert_eq!(
            parse(&enc).unwrap(),
            Some((ClientMessage::SetEncodings(vec![0, -223]), 12))
        );
        assert_eq!(
            parse(&[4, 1, 0, 0, 0, 0, 0, 0x61]).unwrap(),
            Some((
                ClientMessage::Key {
                    down: true,
                    keysym: 0x61
                },
                8
            ))
        );
        assert_eq!(
            parse(&[5, 1, 0, 10, 0, 20]).unwrap(),
            Some((
                ClientMessage::Pointer {
                    buttons: 1,
                    x: 10,
                    y: 20
                },
                6
            ))
        );
        assert_eq!(
            parse(&[6, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']).unwrap(),
            Some((ClientMessage::CutText(b"hi".to_vec()), 10))
        );
        let ext = [255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e];
        assert_eq!(
            parse(&ext).unwrap(),
            Some((
                ClientMessage::ExtKey {
                    down: true,
                    keysym: 0x61,
                    keycode: 0x1e
                },
                12
            ))
        );
        let mut sds = vec![251, 0, 0x03, 0x20, 0x02, 0x58, 1, 0];
        sds.extend_from_slice(&[0; 16]);
        assert_eq!(
            parse(&sds).unwrap(),
            Some((
                ClientMessage::SetDesktopSize {
                    width: 800,
                    height: 600
                },
                24
            ))
        );
        let mut pf = vec![0, 0, 0, 0];
        pf.extend_from_slice(&PixelFormat::NATIVE.to_bytes());
        assert_eq!(
            parse(&pf).unwrap(),
            Some((ClientMessage::SetPixelFormat(PixelFormat::NATIVE), 20))
        );
    }

    #[test]
    fn refuses_what_no_client_sends() {
        assert_eq!(parse(&[7]), Err(ProtoError::UnknownMessage(7)));
        assert_eq!(
            parse(&[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            Err(ProtoError::CutTextTooLong(u32::MAX))
        );
        assert_eq!(
            parse(&[2, 0, 0xff, 0xff]),
            Err(ProtoError::TooManyEncodings(0xffff))
        );
        assert_eq!(parse(&[255, 9]), Err(ProtoError::UnknownQemuMessage(9)));
        let mut pf = vec![0, 0, 0, 0];
        let mut bad = PixelFormat::NATIVE;
        bad.red_shift = 30;
        pf.extend_from_slice(&bad.to_bytes());
        assert_eq!(parse(&pf), Err(ProtoError::BadPixelFormat));
    }

    #[test]
    fn random_bytes_never_panic_and_progress_is_bounded() {
        // A small xorshift generator: deterministic, no dependency.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(b) = buf.first_mut() {
                *b = [0u8, 2, 3, 4, 5, 6, 150, 251, 255][(next() % 9) as usize];
            }
            let mut at = 0;
            while at < buf.len() {
                match parse(&buf[at..]) {
                    Ok(Some((_, used))) => {
                        assert!(used > 0 && at + used <= buf.len());
                        at += used;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn converts_pixels_to_client_formats() {
        let rgb565 = PixelFormat {
            bpp: 16,
            depth: 16,
            big_endian: false,
            true_colour: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
        };
        assert_eq!(rgb565.convert(0x00ff_0000), 0xf800);
        assert_eq!(rgb565.convert(0x0000_ff00), 0x07e0);
        assert_eq!(PixelFormat::NATIVE.convert(0x0012_3456), 0x0012_3456);
        assert_eq!(PixelFormat::NATIVE.cpixel_range(), 0..3);
        assert_eq!(parse_version(b"RFB 003.008\n"), Ok(8));
        assert!(parse_version(b"RFB 004.000\n").is_err());
    }
}
