//! A minimal RFB 3.8 client for benchmarks and tests: security None, Raw encoding in the
//! server's native 32-bit format, blocking reads. It is the measuring stick, so it keeps
//! nothing but the last frame.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A connected client.
pub struct RfbClient {
    s: UnixStream,
    pub width: u16,
    pub height: u16,
    /// The last frame, 0x00RRGGBB little-endian bytes, `width * height * 4`.
    pub frame: Vec<u8>,
    /// The last Cursor pseudo-rectangle.
    pub cursor: Option<CursorImage>,
    /// The last ExtendedDesktopSize: (reason, status, w, h).
    pub desktop_size: Option<(u16, u16, u16, u16)>,
}

/// A Cursor pseudo-rectangle: hot spot, size, 0x00RRGGBB pixels and the 1-bit mask.
#[derive(Clone, Debug)]
pub struct CursorImage {
    pub hot_x: u16,
    pub hot_y: u16,
    pub width: u16,
    pub height: u16,
    pub pixels: Vec<u32>,
    pub mask: Vec<u8>,
}

/// One rectangle of an update (pseudo-encodings carry no pixels here).
#[derive(Clone, Copy, Debug)]
pub struct RectInfo {
    pub x: u16,
    pub y: u16,
    pub w: u16,
    pub h: u16,
    pub encoding: i32,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

impl RfbClient {
    /// Connects, negotiates security None, and asks for Raw in 32 bpp 0x00RRGGBB.
    pub fn connect(path: &Path) -> io::Result<Self> {
        Self::connect_with(path, &[])
    }

    /// [`connect`](Self::connect), announcing `pseudo` encodings after Raw.
    pub fn connect_with(path: &Path, pseudo: &[i32]) -> io::Result<Self> {
        let mut s = UnixStream::connect(path)?;
        let mut v = [0u8; 12];
        s.read_exact(&mut v)?;
        s.write_all(b"RFB 003.008\n")?;
        let mut n = [0u8];
        s.read_exact(&mut n)?;
        let mut types = vec![0u8; n[0] as usize];
        s.read_exact(&mut types)?;
        if !types.contains(&1) {
            return Err(io::Error::other("server wants authentication"));
        }
        s.write_all(&[1])?;
        let mut result = [0u8; 4];
        s.read_exact(&mut result)?;
        s.write_all(&[1])?;
        let mut init = [0u8; 24];
        s.read_exact(&mut init)?;
        let mut name =
            vec![0u8; u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize];
        s.read_exact(&mut name)?;
        let (width, height) = (be16(&init[0..]), be16(&init[2..]));
        // SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, 255/255/255, 16/8/0.
        let mut pf = vec![
            0u8, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
        ];
        // SetEncodings: Raw, then the pseudo-encodings asked for.
        pf.extend_from_slice(&[2, 0]);
        pf.extend_from_slice(&(1 + pseudo.len() as u16).to_be_bytes());
        pf.extend_from_slice(&0i32.to_be_bytes());
        for e in pseudo {
            pf.extend_from_slice(&e.to_be_bytes());
        }
        s.write_all(&pf)?;
        Ok(Self {
            s,
            width,
            height,
            frame: vec![0; width as usize * height as usize * 4],
            cursor: None,
            desktop_size: None,
        })
    }

    /// Sends SetDesktopSize for one screen of `w` x `h`.
    pub fn set_desktop_size(&mut self, w: u16, h: u16) -> io::Result<()> {
        let mut m = vec![251, 0];
        m.extend_from_slice(&w.to_be_bytes());
        m.extend_from_slice(&h.to_be_bytes());
        m.extend_from_slice(&[1, 0]);
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&w.to_be_bytes());
        m.extend_from_slice(&h.to_be_bytes());
        m.extend_from_slice(&[0; 4]);
        self.s.write_all(&m)
    }

    /// Sends a FramebufferUpdateRequest for the whole screen.
    pub fn request(&mut self, incremental: bool) -> io::Result<()> {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend_from_slice(&self.width.to_be_bytes());
        m.extend_from_slice(&self.height.to_be_bytes());
        self.s.write_all(&m)
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.s.set_read_timeout(t)
    }

    /// Reads one FramebufferUpdate into `frame`, skipping other server messages.
    pub fn read_update(&mut self) -> io::Result<Vec<RectInfo>> {
        loop {
            let mut t = [0u8; 1];
            self.s.read_exact(&mut t)?;
            match t[0] {
                0 => break,
                // Bell.
                2 => continue,
                // ServerCutText.
                3 => {
                    let mut h = [0u8; 7];
                    self.s.read_exact(&mut h)?;
                    let n = u32::from_be_bytes([h[3], h[4], h[5], h[6]]);
                    io::copy(&mut (&mut self.s).take(u64::from(n)), &mut io::sink())?;
                }
                other => return Err(io::Error::other(format!("server message {other}"))),
            }
        }
        let mut h = [0u8; 3];
        self.s.read_exact(&mut h)?;
        let n = be16(&h[1..]);
        let mut rects = Vec::new();
        let mut row = Vec::new();
        for _ in 0..n {
            let mut r = [0u8; 12];
            self.s.read_exact(&mut r)?;
            let info = RectInfo {
                x: be16(&r[0..]),
                y: be16(&r[2..]),
                w: be16(&r[4..]),
                h: be16(&r[6..]),
                encoding: i32::from_be_bytes([r[8], r[9], r[10], r[11]]),
            };
            match info.encoding {
                0 => {
                    row.resize(info.w as usize * 4, 0);
                    for y in info.y..info.y + info.h {
                        self.s.read_exact(&mut row)?;
                        let at = (y as usize * self.width as usize + info.x as usize) * 4;
                        if let Some(dst) = self.frame.get_mut(at..at + row.len()) {
                            dst.copy_from_slice(&row);
                        }
                    }
                }
                -223 => self.resize(info.w, info.h),
                -308 => {
                    let mut n = [0u8; 4];
                    self.s.read_exact(&mut n)?;
                    let mut screens = vec![0u8; n[0] as usize * 16];
                    self.s.read_exact(&mut screens)?;
                    self.desktop_size = Some((info.x, info.y, info.w, info.h));
                    if info.y == 0 {
                        self.resize(info.w, info.h);
                    }
                }
                -239 => {
                    let mut px = vec![0u8; info.w as usize * info.h as usize * 4];
                    self.s.read_exact(&mut px)?;
                    let mut mask = vec![0u8; info.w.div_ceil(8) as usize * info.h as usize];
                    self.s.read_exact(&mut mask)?;
                    let px = px
                        .chunks_exact(4)
                        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & 0x00ff_ffff)
                        .collect();
                    self.cursor = Some(CursorImage {
                        hot_x: info.x,
                        hot_y: info.y,
                        width: info.w,
                        height: info.h,
                        pixels: px,
                        mask,
                    });
                }
                // QEMU pseudo-encodings carry no data.
                -257 | -258 => {}
                other => return Err(io::Error::other(format!("unexpected encoding {other}"))),
            }
            rects.push(info);
        }
        Ok(rects)
    }

    fn resize(&mut self, w: u16, h: u16) {
        self.width = w;
        self.height = h;
        self.frame = vec![0; w as usize * h as usize * 4];
    }

    /// The pixel at (x, y) as 0x00RRGGBB.
    pub fn pixel(&self, x: u16, y: u16) -> u32 {
        let at = (y as usize * self.width as usize + x as usize) * 4;
        self.frame.get(at..at + 4).map_or(0, |p| {
            u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & 0x00ff_ffff
        })
    }
}
