//! The server end to end over a unix socket, with a hand-written client.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::*;
use hospes_devices::framebuffer::{FbMemory, Rect, Surface};

#[derive(Default)]
struct Keys(Mutex<Vec<(u32, Option<u16>, bool)>>);

impl InputSink for Keys {
    fn key(&self, keysym: u32, xt: Option<u16>, down: bool) {
        lock(&self.0).push((keysym, xt, down));
    }
    fn pointer(&self, _x: u32, _y: u32, _b: u8, _w: u32, _h: u32) {}
}

/// A test server and what the test needs of it.
type TestServer = (
    tempfile::TempDir,
    PathBuf,
    Arc<Display>,
    Arc<Keys>,
    VncServer,
);

fn server(password: Option<&[u8]>) -> TestServer {
    server_sized(password, 64, 32)
}

fn server_sized(password: Option<&[u8]>, w: u32, h: u32) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vnc.sock");
    let display = Arc::new(Display::new());
    let mem = Arc::new(FbMemory::new((w * h * 4) as usize + (1 << 20)).unwrap());
    let s = Surface::new(mem, 0, w, h, w * 4).unwrap();
    s.mem.fill32(0, (w * 4 * h) as usize, 0x0000_ff00);
    display.set_surface(Some(s));
    let keys = Arc::new(Keys::default());
    let srv = VncServer::start(
        VncConfig {
            listen: VncListen::Unix(path.clone()),
            password: password.map(<[u8]>::to_vec),
            name: "test".into(),
            write_timeout: Duration::from_millis(300),
        },
        display.clone(),
        keys.clone(),
    )
    .unwrap();
    (dir, path, display, keys, srv)
}

fn connect(path: &Path) -> (UnixStream, u16, u16) {
    let mut c = UnixStream::connect(path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut v = [0u8; 12];
    c.read_exact(&mut v).unwrap();
    assert_eq!(&v, b"RFB 003.008\n");
    c.write_all(b"RFB 003.008\n").unwrap();
    let mut types = [0u8; 2];
    c.read_exact(&mut types).unwrap();
    assert_eq!(types, [1, 1]);
    c.write_all(&[1]).unwrap();
    let mut result = [0u8; 4];
    c.read_exact(&mut result).unwrap();
    assert_eq!(result, [0; 4]);
    c.write_all(&[1]).unwrap();
    let mut init = [0u8; 24];
    c.read_exact(&mut init).unwrap();
    let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap());
    let mut name = vec![0u8; name_len as usize];
    c.read_exact(&mut name).unwrap();
    assert_eq!(name, b"test");
    (
        c,
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    )
}

fn request(c: &mut UnixStream, incremental: bool, w: u16, h: u16) {
    let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
    m.extend_from_slice(&w.to_be_bytes());
    m.extend_from_slice(&h.to_be_bytes());
    c.write_all(&m).unwrap();
}

/// Reads an update: (x, y, w, h, encoding, raw pixels if Raw).
fn read_update(c: &mut UnixStream) -> Vec<(u16, u16, u16, u16, i32, Vec<u8>)> {
    let mut h = [0u8; 4];
    c.read_exact(&mut h).unwrap();
    assert_eq!(h[0], 0);
    let n = u16::from_be_bytes([h[2], h[3]]);
    (0..n)
        .map(|_| {
            let mut r = [0u8; 12];
            c.read_exact(&mut r).unwrap();
            let f = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
            let enc = i32::from_be_bytes(r[8..12].try_into().unwrap());
            let mut px = Vec::new();
            if enc == 1 {
                px = vec![0u8; 4];
                c.read_exact(&mut px).unwrap();
            }
            if enc == 0 {
                px = vec![0u8; f(4) as usize * f(6) as usize * 4];
                c.read_exact(&mut px).unwrap();
            }
            if enc == proto::ENC_EXT_DESKTOP_SIZE {
                // Number of screens, padding, then 16 bytes a screen.
                let mut head = [0u8; 4];
                c.read_exact(&mut head).unwrap();
                px = vec![0u8; usize::from(head[0]) * 16];
                c.read_exact(&mut px).unwrap();
            }
            (f(0), f(2), f(4), f(6), enc, px)
        })
        .collect()
}

#[test]
fn full_then_incremental_updates_carry_the_pixels() {
    let (_d, path, display, _k, srv) = server(None);
    let (mut c, w, h) = connect(&path);
    assert_eq!((w, h), (64, 32));
    request(&mut c, false, 64, 32);
    let u = read_update(&mut c);
    assert_eq!(u.len(), 1);
    assert_eq!(&u[0].5[..4], &[0, 0xff, 0, 0]);
    assert_eq!(srv.info().clients.len(), 1);
    request(&mut c, true, 64, 32);
    let s = display.surface().unwrap();
    s.mem
        .write(s.pixel_offset(5, 6), &0x00ff_0000u32.to_le_bytes());
    display.add_damage(&[Rect::new(5, 6, 1, 1)]);
    let u = read_update(&mut c);
    assert_eq!(u, vec![(5, 6, 1, 1, 0, vec![0, 0, 0xff, 0])]);
}

#[test]
fn desktop_size_follows_a_new_mode_and_keys_reach_the_sink() {
    let (_d, path, display, keys, _srv) = server(None);
    let (mut c, _, _) = connect(&path);
    c.write_all(&[2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21])
        .unwrap();
    c.write_all(&[4, 1, 0, 0, 0, 0, 0, 0x61]).unwrap();
    request(&mut c, true, 64, 32);
    let mem = Arc::new(FbMemory::new(1 << 20).unwrap());
    display.set_surface(Some(Surface::new(mem, 0, 128, 16, 512).unwrap()));
    let u = read_update(&mut c);
    assert_eq!(
        u.iter()
            .map(|r| (r.0, r.1, r.2, r.3, r.4))
            .collect::<Vec<_>>(),
        vec![(0, 0, 128, 16, proto::ENC_DESKTOP_SIZE)]
    );
    request(&mut c, true, 128, 16);
    let u = read_update(&mut c);
    assert_eq!((u[0].0, u[0].1, u[0].2, u[0].3), (0, 0, 128, 16));
    assert_eq!(*lock(&keys.0), vec![(0x61, None, true)]);
}

/// SetEncodings as the Hospes app sends them (vnc-rs): Raw, DesktopSize and
/// ExtendedDesktopSize.
fn announce_app_encodings(c: &mut UnixStream) {
    let mut m = vec![2, 0, 0, 3];
    for e in [
        proto::ENC_RAW,
        proto::ENC_DESKTOP_SIZE,
        proto::ENC_EXT_DESKTOP_SIZE,
    ] {
        m.extend_from_slice(&e.to_be_bytes());
    }
    c.write_all(&m).unwrap();
}

fn show(display: &Display, w: u32, h: u32) {
    let mem = Arc::new(FbMemory::new((w * h * 4) as usize).unwrap());
    display.set_surface(Some(Surface::new(mem, 0, w, h, w * 4).unwrap()));
}

#[test]
fn a_mode_switch_before_the_first_request_sends_the_new_size_alone() {
    let (_d, path, display, _k, _srv) = server(None);
    let (mut c, w, h) = connect(&path);
    assert_eq!((w, h), (64, 32));
    // The guest switches mode after ServerInit told the client 64x32.
    show(&display, 128, 48);
    announce_app_encodings(&mut c);
    request(&mut c, false, w, h);
    let u = read_update(&mut c);
    assert_eq!(u.len(), 1, "pixels beside the size change: {u:?}");
    assert_eq!(
        (u[0].0, u[0].1, u[0].2, u[0].3, u[0].4),
        (0, 0, 128, 48, proto::ENC_EXT_DESKTOP_SIZE)
    );
    request(&mut c, true, 128, 48);
    let u = read_update(&mut c);
    assert_eq!(
        u.iter()
            .map(|r| (r.0, r.1, r.2, r.3, r.4))
            .collect::<Vec<_>>(),
        vec![(0, 0, 128, 48, proto::ENC_RAW)]
    );
}

#[test]
fn no_update_mixes_a_size_change_with_pixels_or_exceeds_the_announced_size() {
    let (_d, path, display, _k, _srv) = server(None);
    let (mut c, w, h) = connect(&path);
    announce_app_encodings(&mut c);
    request(&mut c, false, w, h);
    read_update(&mut c);
    let mut screen = (w, h);
    for (nw, nh) in [(128u16, 48u16), (32, 16), (96, 96)] {
        // Damage in the old mode, then the new mode, with the client's request sized
        // for the old one.
        display.add_damage(&[Rect::new(0, 0, 8, 8)]);
        request(&mut c, true, screen.0, screen.1);
        show(&display, nw.into(), nh.into());
        loop {
            let u = read_update(&mut c);
            let sizes: Vec<usize> = (0..u.len())
                .filter(|&i| u[i].4 == proto::ENC_EXT_DESKTOP_SIZE)
                .collect();
            if let Some(&i) = sizes.first() {
                assert_eq!(u.len(), 1, "pixels beside the size change: {u:?}");
                assert_eq!(i, u.len() - 1);
                screen = (u[i].2, u[i].3);
            }
            for r in u.iter().filter(|r| r.4 == proto::ENC_RAW) {
                assert!(r.2 > 0 && r.3 > 0, "empty rectangle {r:?}");
                assert!(
                    r.0 + r.2 <= screen.0 && r.1 + r.3 <= screen.1,
                    "{r:?} outside {screen:?}"
                );
            }
            if !sizes.is_empty() {
                break;
            }
            request(&mut c, true, screen.0, screen.1);
        }
        assert_eq!(screen, (nw, nh));
        // The next update brings the whole new screen.
        request(&mut c, true, nw, nh);
        let u = read_update(&mut c);
        assert_eq!(
            u.iter()
                .map(|r| (r.0, r.1, r.2, r.3, r.4))
                .collect::<Vec<_>>(),
            vec![(0, 0, nw, nh, proto::ENC_RAW)]
        );
    }
}

#[test]
fn a_malformed_client_is_dropped_alone() {
    let (_d, path, _display, _k, srv) = server(None);
    let (mut good, _, _) = connect(&path);
    let (mut bad, _, _) = connect(&path);
    bad.write_all(&[99, 1, 2, 3]).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(bad.read(&mut b).unwrap_or(0), 0);
    request(&mut good, false, 8, 8);
    assert_eq!(read_update(&mut good).len(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while srv.info().clients.len() != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(srv.info().clients.len(), 1);
}

#[test]
fn vnc_auth_accepts_the_password_and_refuses_others() {
    let (_d, path, _display, _k, _srv) = server(Some(b"secret"));
    for (pw, ok) in [(&b"secret"[..], true), (b"wrong", false)] {
        let mut c = UnixStream::connect(&path).unwrap();
        let mut v = [0u8; 12];
        c.read_exact(&mut v).unwrap();
        c.write_all(b"RFB 003.008\n").unwrap();
        let mut types = [0u8; 2];
        c.read_exact(&mut types).unwrap();
        assert_eq!(types, [1, 2]);
        c.write_all(&[2]).unwrap();
        let mut ch = [0u8; 16];
        c.read_exact(&mut ch).unwrap();
        c.write_all(&auth::response(pw, &ch)).unwrap();
        let mut result = [0u8; 4];
        c.read_exact(&mut result).unwrap();
        assert_eq!(result == [0; 4], ok);
    }
}

#[test]
fn parses_listen_addresses() {
    assert_eq!(
        VncListen::parse("unix:/tmp/v.sock").unwrap(),
        VncListen::Unix("/tmp/v.sock".into())
    );
    assert_eq!(
        VncListen::parse(":5901").unwrap(),
        VncListen::Tcp("127.0.0.1:5901".parse().unwrap())
    );
    assert_eq!(
        VncListen::parse("0.0.0.0:5900").unwrap(),
        VncListen::Tcp("0.0.0.0:5900".parse().unwrap())
    );
    assert!(VncListen::parse("unix:").is_err());
    assert!(VncListen::parse("nonsense").is_err());
}

#[test]
fn a_panned_surface_arrives_as_copyrect_plus_the_new_rows() {
    let (_d, path, display, _k, _srv) = server(None);
    let (mut c, _, _) = connect(&path);
    // Raw and CopyRect.
    c.write_all(&[2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]).unwrap();
    request(&mut c, false, 64, 32);
    read_update(&mut c);
    request(&mut c, true, 64, 32);
    let s = display.surface().unwrap();
    let moved = Surface::new(s.mem.clone(), s.offset + 2 * 256, 64, 32, 256).unwrap();
    display.set_surface(Some(moved));
    let u = read_update(&mut c);
    assert_eq!(u.len(), 2, "{u:?}");
    // Destination (0,0) 64x30 from source (0,2), then rows 30..32 raw.
    assert_eq!((u[0].0, u[0].1, u[0].2, u[0].3, u[0].4), (0, 0, 64, 30, 1));
    assert_eq!(u[0].5, [0, 0, 0, 2]);
    assert_eq!((u[1].0, u[1].1, u[1].2, u[1].3, u[1].4), (0, 30, 64, 2, 0));
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_the_others_go_on() {
    let (_d, path, _display, _k, srv) = server_sized(None, 1024, 768);
    let (mut slow, w, h) = connect(&path);
    let (mut good, _, _) = connect(&path);
    // Ask for many full frames (3 MiB each) and never read them.
    for _ in 0..8 {
        request(&mut slow, false, w, h);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while srv.info().clients.len() != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        srv.info().clients.len(),
        1,
        "the stalled client is still there"
    );
    request(&mut good, false, 16, 16);
    let u = read_update(&mut good);
    assert_eq!((u[0].2, u[0].3), (16, 16));
    assert_eq!(&u[0].5[..4], &[0, 0xff, 0, 0]);
}

#[test]
fn qemu_extended_key_events_are_acknowledged_and_carry_scancodes() {
    let (_d, path, _display, keys, _srv) = server(None);
    let (mut c, _, _) = connect(&path);
    // Raw and QEMU Extended Key Event.
    c.write_all(&[2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xfe, 0xfe])
        .unwrap();
    request(&mut c, true, 64, 32);
    let u = read_update(&mut c);
    assert_eq!(u[0].4, proto::ENC_QEMU_EXT_KEY);
    c.write_all(&[255, 0, 0, 1, 0, 0, 0xff, 0x52, 0, 0, 0, 0xc8])
        .unwrap();
    request(&mut c, false, 1, 1);
    read_update(&mut c);
    assert_eq!(*lock(&keys.0), vec![(0xff52, Some(0xc8), true)]);
}

/// A rectangle as [`read_update`] returns it: (x, y, w, h, encoding, data).
type UpdateRect = (u16, u16, u16, u16, i32, Vec<u8>);

/// Update rectangles without their data: (x, y, w, h, encoding).
fn headers(u: &[UpdateRect]) -> Vec<(u16, u16, u16, u16, i32)> {
    u.iter().map(|r| (r.0, r.1, r.2, r.3, r.4)).collect()
}

/// SetDesktopSize for one screen of `w` x `h`.
fn set_desktop_size(c: &mut UnixStream, w: u16, h: u16) {
    let mut m = vec![251, 0];
    for v in [w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(&[1, 0]);
    m.extend_from_slice(&0u32.to_be_bytes());
    for v in [0, 0, w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(&0u32.to_be_bytes());
    c.write_all(&m).unwrap();
}

#[test]
fn the_first_full_request_after_extended_desktop_size_gets_the_layout_alone() {
    let (_d, path, _display, _k, _srv) = server(None);
    let (mut c, w, h) = connect(&path);
    announce_app_encodings(&mut c);
    request(&mut c, false, w, h);
    let u = read_update(&mut c);
    // Reason 0, status 0, the screen as it is: one screen (id 0) covering it.
    assert_eq!(
        headers(&u),
        vec![(0, 0, 64, 32, proto::ENC_EXT_DESKTOP_SIZE)]
    );
    assert_eq!(u[0].5, [0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 32, 0, 0, 0, 0]);
    // The screen follows with the next request, even an incremental one.
    request(&mut c, true, w, h);
    let u = read_update(&mut c);
    assert_eq!(headers(&u), vec![(0, 0, 64, 32, proto::ENC_RAW)]);
    assert_eq!(&u[0].5[..4], &[0, 0xff, 0, 0]);
    // Once told, a full request brings pixels only.
    request(&mut c, false, w, h);
    assert_eq!(
        headers(&read_update(&mut c)),
        vec![(0, 0, 64, 32, proto::ENC_RAW)]
    );
    // Announcing the encodings again owes nothing new.
    announce_app_encodings(&mut c);
    request(&mut c, false, w, h);
    assert_eq!(
        headers(&read_update(&mut c)),
        vec![(0, 0, 64, 32, proto::ENC_RAW)]
    );
}

#[test]
fn a_client_without_extended_desktop_size_gets_pixels_first() {
    let (_d, path, _display, _k, _srv) = server(None);
    let (mut c, w, h) = connect(&path);
    // Raw and DesktopSize only.
    let mut m = vec![2, 0, 0, 2];
    for e in [proto::ENC_RAW, proto::ENC_DESKTOP_SIZE] {
        m.extend_from_slice(&e.to_be_bytes());
    }
    c.write_all(&m).unwrap();
    request(&mut c, false, w, h);
    assert_eq!(
        headers(&read_update(&mut c)),
        vec![(0, 0, 64, 32, proto::ENC_RAW)]
    );
}

#[test]
fn an_accepted_resize_is_answered_with_the_new_layout_once_the_guest_shows_it() {
    let (_d, path, display, _k, _srv) = server(None);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    display.set_resize_handler(Some(Box::new(move |w, h| {
        lock(&log).push((w, h));
        true
    })));
    let (mut c, w, h) = connect(&path);
    announce_app_encodings(&mut c);
    request(&mut c, false, w, h);
    read_update(&mut c);
    request(&mut c, true, w, h);
    read_update(&mut c);
    set_desktop_size(&mut c, 100, 40);
    request(&mut c, true, 1, 1);
    // The guest takes its time: no answer while it still shows the old size.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lock(&asked).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no resize request");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*lock(&asked), vec![(100, 40)]);
    c.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut b = [0u8; 1];
    assert!(
        c.read(&mut b).is_err(),
        "an answer before the guest followed"
    );
    c.set_nonblocking(false).unwrap();
    show(&display, 100, 40);
    let u = read_update(&mut c);
    // Reason 1 (this client), status 0, the new layout, alone.
    assert_eq!(
        headers(&u),
        vec![(1, 0, 100, 40, proto::ENC_EXT_DESKTOP_SIZE)]
    );
    request(&mut c, true, 1, 1);
    assert_eq!(
        headers(&read_update(&mut c)),
        vec![(0, 0, 100, 40, proto::ENC_RAW)]
    );
}

#[test]
fn a_refused_resize_is_answered_at_once_with_the_old_layout() {
    let (_d, path, _display, _k, _srv) = server(None);
    let (mut c, w, h) = connect(&path);
    announce_app_encodings(&mut c);
    request(&mut c, false, w, h);
    read_update(&mut c);
    request(&mut c, true, w, h);
    read_update(&mut c);
    // No resize handler: prohibited (status 1).
    set_desktop_size(&mut c, 100, 40);
    request(&mut c, true, w, h);
    let u = read_update(&mut c);
    assert_eq!(
        headers(&u),
        vec![(1, 1, 64, 32, proto::ENC_EXT_DESKTOP_SIZE)]
    );
}
