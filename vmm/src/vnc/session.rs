//! One client connection: handshake, then a reader thread (this one) and a sender thread.
//!
//! The reader parses messages as they come and updates [`ClientState`]: the pixel format,
//! the encodings, the one pending update request, and one-shot replies (pseudo-encoding
//! acknowledgements, a resize answer). It wakes the sender through the client's condition
//! variable and [`Display::kick`]. The sender answers a non-incremental request at once with
//! the requested area, and an incremental one as soon as the display has damage after the
//! last sequence number it sent. A new size (DesktopSize or ExtendedDesktopSize) goes in an
//! update without pixels, after any other pseudo-rectangle; the next update then carries
//! the whole screen.
//!
//! ExtendedDesktopSize (rfbproto): a client that announces it gets the current layout in
//! answer to its next non-incremental request, alone as above, so that it knows it may
//! ask for a size. A SetDesktopSize the display passed on is answered (reason 1) once the
//! guest shows the asked size, or after [`RESIZE_ANSWER_WAIT`] with the size it shows
//! then: vnc-rs takes an answer whose layout is not the one it asked for as "uncertain"
//! and refuses further requests on that connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::encode::{self, Zrle};
use super::proto::{self, ClientMessage, PixelFormat};
use super::{ClientInfo, Shared, VncError, auth};
use hospes_devices::bus::lock;
use hospes_devices::framebuffer::{BYTES_PER_PIXEL, Rect, Surface};

/// The size shown while the guest shows nothing.
const BLANK: (u32, u32) = (640, 480);

/// How long an accepted SetDesktopSize waits for the guest to show the asked size before
/// it is answered with the size shown then; below vnc-rs's 5 s wait for an answer.
const RESIZE_ANSWER_WAIT: Duration = Duration::from_secs(4);

/// A client socket.
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

/// Encodings the client announced.
#[derive(Clone, Copy, Debug, Default)]
struct Encodings {
    copyrect: bool,
    zrle: bool,
    desktop_size: bool,
    ext_desktop_size: bool,
    cursor: bool,
    ext_key: bool,
    pointer_motion: bool,
}

/// This client's SetDesktopSize, to be answered with an ExtendedDesktopSize of reason 1.
#[derive(Clone, Copy, Debug)]
struct ResizeAnswer {
    /// 0: accepted, 1: prohibited.
    status: u16,
    /// The asked size.
    want: (u32, u32),
    /// Answer by then even if the guest does not show `want`.
    until: Instant,
}

impl ResizeAnswer {
    /// Whether to send the answer now, with the screen at `shown`.
    fn due(&self, shown: (u32, u32), now: Instant) -> bool {
        self.status != 0 || shown == self.want || now >= self.until
    }
}

#[derive(Clone, Copy, Debug)]
struct Request {
    incremental: bool,
    rect: Rect,
    /// Counts requests, so the sender clears only the one it answered.
    serial: u64,
}

struct ClientState {
    pf: PixelFormat,
    enc: Encodings,
    request: Option<Request>,
    serial: u64,
    closed: bool,
    /// One-shot pseudo rectangles to send with the next update.
    ack_ext_key: bool,
    ack_pointer_motion: bool,
    /// The client announced ExtendedDesktopSize and has not had a layout since.
    ext_size_owed: bool,
    resize_answer: Option<ResizeAnswer>,
    cursor_sent_gen: Option<u64>,
}

struct Client {
    state: Mutex<ClientState>,
    wake: Condvar,
}

impl Client {
    fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_all();
    }
}

/// Runs one client to its end; errors only end this client.
pub(crate) fn run(shared: Arc<Shared>, mut stream: Stream, id: u64, peer: String) {
    lock(&shared.clients).push(ClientInfo {
        id,
        peer: peer.clone(),
    });
    match serve(&shared, &mut stream) {
        Ok(()) => log::info!("vnc: client {peer} left"),
        Err(e) => log::info!("vnc: client {peer} dropped: {e}"),
    }
    stream.shutdown();
    lock(&shared.clients).retain(|c| c.id != id);
}

fn handshake(shared: &Shared, s: &mut Stream) -> Result<(u32, u32), VncError> {
    s.write_all(b"RFB 003.008\n")?;
    let mut v = [0u8; 12];
    s.read_exact(&mut v)?;
    let minor = proto::parse_version(&v)?;
    let sec_type: u8 = if shared.password.is_some() { 2 } else { 1 };
    if minor < 7 {
        s.write_all(&u32::from(sec_type).to_be_bytes())?;
    } else {
        s.write_all(&[1, sec_type])?;
        let mut chosen = [0u8];
        s.read_exact(&mut chosen)?;
        if chosen[0] != sec_type {
            return Err(VncError::AuthFailed);
        }
    }
    if let Some(pw) = &shared.password {
        let challenge = auth::challenge();
        s.write_all(&challenge)?;
        let mut resp = [0u8; 16];
        s.read_exact(&mut resp)?;
        if !auth::check(pw, &challenge, &resp) {
            s.write_all(&1u32.to_be_bytes())?;
            if minor >= 8 {
                let reason = b"authentication failed";
                s.write_all(&(reason.len() as u32).to_be_bytes())?;
                s.write_all(reason)?;
            }
            return Err(VncError::AuthFailed);
        }
        s.write_all(&0u32.to_be_bytes())?;
    } else if minor >= 8 {
        s.write_all(&0u32.to_be_bytes())?;
    }
    let mut shared_flag = [0u8];
    s.read_exact(&mut shared_flag)?;
    let (w, h) = shared
        .display
        .surface()
        .map_or(BLANK, |s| (s.width, s.height));
    s.write_all(&proto::server_init(w as u16, h as u16, &shared.name))?;
    Ok((w, h))
}

fn serve(shared: &Arc<Shared>, stream: &mut Stream) -> Result<(), VncError> {
    let size = handshake(shared, stream)?;
    stream.set_write_timeout(Some(shared.write_timeout))?;
    let client = Arc::new(Client {
        state: Mutex::new(ClientState {
            pf: PixelFormat::NATIVE,
            enc: Encodings::default(),
            request: None,
            serial: 0,
            closed: false,
            ack_ext_key: false,
            ack_pointer_motion: false,
            ext_size_owed: false,
            resize_answer: None,
            cursor_sent_gen: None,
        }),
        wake: Condvar::new(),
    });
    let out = stream.try_clone()?;
    let sender = {
        let (shared, client) = (shared.clone(), client.clone());
        std::thread::Builder::new()
            .name("vnc-send".into())
            .spawn(move || {
                let mut out = out;
                if let Err(e) = send_loop(&shared, &client, &mut out, size) {
                    log::info!("vnc: send failed: {e}");
                }
                client.close();
                out.shutdown();
            })
            .map_err(VncError::Thread)?
    };
    let result = read_loop(shared, &client, stream);
    client.close();
    shared.display.kick();
    stream.shutdown();
    let _ = sender.join();
    result
}

fn read_loop(shared: &Shared, client: &Client, s: &mut Stream) -> Result<(), VncError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Some((msg, used)) = proto::parse(&buf[at..])? {
            at += used;
            handle(shared, client, msg);
        }
        buf.drain(..at);
        if lock(&client.state).closed {
            return Ok(());
        }
    }
}

fn handle(shared: &Shared, client: &Client, msg: ClientMessage) {
    let screen = || {
        shared
            .display
            .surface()
            .map_or(BLANK, |s| (s.width, s.height))
    };
    match msg {
        ClientMessage::SetPixelFormat(pf) => lock(&client.state).pf = pf,
        ClientMessage::SetEncodings(list) => {
            let mut e = Encodings::default();
            for enc in list {
                match enc {
                    proto::ENC_ZRLE => e.zrle = true,
                    proto::ENC_COPYRECT => e.copyrect = true,
                    proto::ENC_DESKTOP_SIZE => e.desktop_size = true,
                    proto::ENC_EXT_DESKTOP_SIZE => e.ext_desktop_size = true,
                    proto::ENC_CURSOR => e.cursor = true,
                    proto::ENC_QEMU_EXT_KEY => e.ext_key = true,
                    proto::ENC_QEMU_POINTER_MOTION => e.pointer_motion = true,
                    _ => {}
                }
            }
            let mut st = lock(&client.state);
            st.ack_ext_key = e.ext_key && !st.enc.ext_key;
            st.ack_pointer_motion = e.pointer_motion && !st.enc.pointer_motion;
            st.ext_size_owed = e.ext_desktop_size && (st.ext_size_owed || !st.enc.ext_desktop_size);
            st.enc = e;
            st.cursor_sent_gen = None;
        }
        ClientMessage::UpdateRequest {
            incremental,
            x,
            y,
            w,
            h,
        } => {
            let mut st = lock(&client.state);
            st.serial += 1;
            let rect = Rect::new(x.into(), y.into(), w.into(), h.into());
            // A pending full request stays full.
            let incremental = incremental && st.request.is_none_or(|r| r.incremental);
            st.request = Some(Request {
                incremental,
                rect,
                serial: st.serial,
            });
            drop(st);
            client.wake.notify_all();
            shared.display.kick();
        }
        ClientMessage::Key { down, keysym } => shared.input.key(keysym, None, down),
        ClientMessage::ExtKey {
            down,
            keysym,
            keycode,
        } => shared.input.key(keysym, u16::try_from(keycode).ok(), down),
        ClientMessage::Pointer { buttons, x, y } => {
            let (w, h) = screen();
            shared.input.pointer(
                u32::from(x).min(w.saturating_sub(1)),
                u32::from(y).min(h.saturating_sub(1)),
                buttons,
                w,
                h,
            );
        }
        ClientMessage::SetDesktopSize { width, height } => {
            let ok = shared.display.request_resize(width.into(), height.into());
            lock(&client.state).resize_answer = Some(ResizeAnswer {
                status: if ok { 0 } else { 1 },
                want: (width.into(), height.into()),
                until: Instant::now() + RESIZE_ANSWER_WAIT,
            });
            client.wake.notify_all();
            shared.display.kick();
        }
        ClientMessage::CutText(_) | ClientMessage::EnableContinuousUpdates => {}
    }
}

/// What one update carries besides pixel rectangles.
struct Extras {
    ack_ext_key: bool,
    ack_pointer_motion: bool,
    resize_status: Option<u16>,
    send_cursor: Option<u64>,
}

/// Takes the answer to this client's SetDesktopSize if it is due with the screen at
/// `shown`.
fn take_due_answer(answer: &mut Option<ResizeAnswer>, shown: (u32, u32)) -> Option<u16> {
    let due = answer.is_some_and(|a| a.due(shown, Instant::now()));
    due.then(|| answer.take().map(|a| a.status)).flatten()
}

fn send_loop(
    shared: &Shared,
    client: &Client,
    out: &mut Stream,
    mut size: (u32, u32),
) -> Result<(), VncError> {
    let mut seq = shared.display.damage_since(0).seq;
    let mut zrle = Zrle::new();
    let mut buf = Vec::new();
    // The size changed in an update without pixels: the next one sends the whole screen.
    let mut full_pending = false;
    loop {
        // Wait for a request or a one-shot reply.
        let (req, pf, enc, announce) = {
            let mut st = lock(&client.state);
            loop {
                if st.closed {
                    return Ok(());
                }
                if st.request.is_some() {
                    break;
                }
                st = match client.wake.wait_timeout(st, Duration::from_secs(1)) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            }
            let Some(req) = st.request else { continue };
            // A non-incremental request is always answered, so the layout goes with it.
            let announce = !req.incremental && std::mem::take(&mut st.ext_size_owed);
            (req, st.pf, st.enc, announce)
        };
        let update = shared.display.damage_since(seq);
        let (surface_w, surface_h) = update
            .surface
            .as_ref()
            .map_or(BLANK, |s| (s.width, s.height));
        let cursor_gen = update.cursor_gen;
        let extras = {
            let mut st = lock(&client.state);
            let send_cursor =
                (enc.cursor && st.cursor_sent_gen != Some(cursor_gen)).then_some(cursor_gen);
            Extras {
                ack_ext_key: std::mem::take(&mut st.ack_ext_key),
                ack_pointer_motion: std::mem::take(&mut st.ack_pointer_motion),
                resize_status: take_due_answer(&mut st.resize_answer, (surface_w, surface_h)),
                send_cursor,
            }
        };
        let resized = (surface_w, surface_h) != size && (enc.desktop_size || enc.ext_desktop_size);
        if resized {
            size = (surface_w, surface_h);
        }
        let size_rect = size_rect(resized, announce, extras.resize_status, &enc);
        if matches!(size_rect, Some(SizeRect::Extended { .. })) {
            lock(&client.state).ext_size_owed = false;
        }
        let (vw, vh) = (size.0.min(surface_w), size.1.min(surface_h));
        let full_request =
            req.rect.x == 0 && req.rect.y == 0 && req.rect.w >= vw && req.rect.h >= vh;
        let mut copy = None;
        let mut rects: Vec<Rect> = if update.surface.is_none() {
            Vec::new()
        } else if full_pending {
            vec![Rect::new(0, 0, vw, vh)]
        } else if !req.incremental {
            vec![req.rect.clip(vw, vh)]
        } else if let Some(dy) = update.scroll {
            if enc.copyrect && full_request && dy.unsigned_abs() < vh {
                copy = Some(dy);
                update.rects.iter().map(|r| r.clip(vw, vh)).collect()
            } else {
                vec![req.rect.clip(vw, vh)]
            }
        } else {
            update
                .rects
                .iter()
                .map(|r| intersect(r, &req.rect).clip(vw, vh))
                .collect()
        };
        // A rectangle with no pixels is malformed to some clients (vnc-rs).
        rects.retain(|r| !r.is_empty());
        if size_rect.is_some() {
            // An update that changes the size carries no pixels (rfbproto, DesktopSize
            // server semantics; vnc-rs fails on pixels beside an ExtendedDesktopSize
            // rectangle): the whole new screen goes with the next update.
            full_pending |= resized || !rects.is_empty() || copy.is_some();
            rects.clear();
            copy = None;
        } else if !rects.is_empty() {
            full_pending = false;
        }
        let nothing = rects.is_empty()
            && copy.is_none()
            && size_rect.is_none()
            && !extras.ack_ext_key
            && !extras.ack_pointer_motion
            && extras.send_cursor.is_none();
        seq = update.seq;
        if nothing && req.incremental {
            // Wait for damage (or a kick from the reader) and look again.
            shared.display.wait_damage(seq, Duration::from_secs(1));
            continue;
        }
        {
            let mut st = lock(&client.state);
            if st.request.is_some_and(|r| r.serial == req.serial) {
                st.request = None;
            }
            if let Some(g) = extras.send_cursor {
                st.cursor_sent_gen = Some(g);
            }
        }
        buf.clear();
        let cursor = extras.send_cursor.and_then(|_| shared.display.cursor());
        let count = rects.len()
            + usize::from(copy.is_some())
            + usize::from(size_rect.is_some())
            + usize::from(extras.ack_ext_key)
            + usize::from(extras.ack_pointer_motion)
            + usize::from(cursor.is_some());
        proto::update_header(count as u16, &mut buf);
        if extras.ack_ext_key {
            proto::rect_header(0, 0, 0, 0, proto::ENC_QEMU_EXT_KEY, &mut buf);
        }
        if extras.ack_pointer_motion {
            // x = 1: absolute coordinates.
            proto::rect_header(1, 0, 0, 0, proto::ENC_QEMU_POINTER_MOTION, &mut buf);
        }
        if let Some(c) = &cursor {
            cursor_rect(c, &pf, &mut buf);
        }
        // Last, for early clients that expect the size change to end the update.
        match size_rect {
            Some(SizeRect::Desktop) => proto::rect_header(
                0,
                0,
                size.0 as u16,
                size.1 as u16,
                proto::ENC_DESKTOP_SIZE,
                &mut buf,
            ),
            Some(SizeRect::Extended { reason, status }) => {
                proto::ext_desktop_size(reason, status, size.0 as u16, size.1 as u16, &mut buf);
            }
            None => {}
        }
        if let Some(dy) = copy {
            // The picture moved up by dy rows: copy what is still in view.
            let h = vh - dy.unsigned_abs();
            let (dst_y, src_y) = if dy > 0 {
                (0, dy as u16)
            } else {
                (dy.unsigned_abs() as u16, 0)
            };
            proto::rect_header(0, dst_y, vw as u16, h as u16, proto::ENC_COPYRECT, &mut buf);
            buf.extend_from_slice(&0u16.to_be_bytes());
            buf.extend_from_slice(&src_y.to_be_bytes());
        }
        let Some(surface) = update.surface else {
            out.write_all(&buf)?;
            continue;
        };
        for r in rects {
            if enc.zrle {
                proto::rect_header(
                    r.x as u16,
                    r.y as u16,
                    r.w as u16,
                    r.h as u16,
                    proto::ENC_ZRLE,
                    &mut buf,
                );
                zrle.encode(&surface, r, &pf, &mut buf);
            } else {
                proto::rect_header(
                    r.x as u16,
                    r.y as u16,
                    r.w as u16,
                    r.h as u16,
                    proto::ENC_RAW,
                    &mut buf,
                );
                if pf == PixelFormat::NATIVE && contiguous(&surface, &r) && r.w * r.h >= 16384 {
                    out.write_all(&buf)?;
                    buf.clear();
                    write_direct(out, &surface, &r)?;
                } else {
                    encode::raw(&surface, r, &pf, &mut buf);
                }
            }
        }
        out.write_all(&buf)?;
    }
}

/// The pseudo-rectangle that tells a client its screen size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SizeRect {
    /// DesktopSize: the size changed.
    Desktop,
    /// ExtendedDesktopSize: the size changed or the client is owed the layout (reason 0),
    /// or the answer to this client's SetDesktopSize (reason 1).
    Extended { reason: u16, status: u16 },
}

/// Which size rectangle an update carries, if any: only kinds the client announced.
/// `announce`: the client is owed the layout (first non-incremental request after it
/// announced ExtendedDesktopSize).
fn size_rect(
    resized: bool,
    announce: bool,
    resize_status: Option<u16>,
    enc: &Encodings,
) -> Option<SizeRect> {
    match resize_status {
        Some(status) if enc.ext_desktop_size => Some(SizeRect::Extended { reason: 1, status }),
        _ if (resized || announce) && enc.ext_desktop_size => Some(SizeRect::Extended {
            reason: 0,
            status: 0,
        }),
        _ if resized => Some(SizeRect::Desktop),
        _ => None,
    }
}

fn intersect(a: &Rect, b: &Rect) -> Rect {
    let x = a.x.max(b.x);
    let y = a.y.max(b.y);
    let r = (a.x + a.w).min(b.x + b.w);
    let bt = (a.y + a.h).min(b.y + b.h);
    if r <= x || bt <= y {
        Rect::default()
    } else {
        Rect::new(x, y, r - x, bt - y)
    }
}

/// Whether `r`'s pixels are one contiguous byte range (whole rows of a packed surface).
fn contiguous(s: &Surface, r: &Rect) -> bool {
    r.x == 0 && r.w == s.width && s.stride == s.width * BYTES_PER_PIXEL
}

/// Writes a contiguous rectangle from framebuffer memory to the socket, no copy.
fn write_direct(out: &mut Stream, s: &Surface, r: &Rect) -> io::Result<()> {
    let mut at = s.pixel_offset(0, r.y);
    let mut left = (r.h * s.stride) as usize;
    while left > 0 {
        match s.mem.write_to(out, at, left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                at += n;
                left -= n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The Cursor pseudo-rectangle: pixels in the client's format, then a 1-bit mask.
fn cursor_rect(c: &hospes_devices::framebuffer::Cursor, pf: &PixelFormat, out: &mut Vec<u8>) {
    proto::rect_header(
        c.hot_x as u16,
        c.hot_y as u16,
        c.width as u16,
        c.height as u16,
        proto::ENC_CURSOR,
        out,
    );
    for &p in &c.pixels {
        pf.put(pf.convert(p & 0x00ff_ffff), out);
    }
    let row_bytes = c.width.div_ceil(8) as usize;
    for y in 0..c.height as usize {
        let mut row = vec![0u8; row_bytes];
        for x in 0..c.width as usize {
            let alpha = c
                .pixels
                .get(y * c.width as usize + x)
                .map_or(0, |p| p >> 24);
            if alpha >= 0x80 {
                row[x / 8] |= 0x80 >> (x % 8);
            }
        }
        out.extend_from_slice(&row);
    }
}
