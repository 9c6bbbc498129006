//! The guest's screen and input through real VNC clients and QMP, on tiny guests:
//!
//! - `vga`: programs std-VGA to 1920x1080x32 through the DISPI ports and paints a known
//!   picture; vncdotool (unix socket, security None, Raw), gvnccapture (TCP, VNC password,
//!   ZRLE: it asks for it first) and
//!   QMP `screendump` must each see it pixel for pixel. The same guest under QEMU
//!   `-vga std` prints the same serial output (differential).
//! - `gpu`: drives virtio-gpu to show bands of the preferred mode's size and a 64x64
//!   cursor, and shows them again at the size a client asks for with SetDesktopSize.
//! - `vinput`: drives the virtio-input keyboard and the PS/2 mouse: keys must arrive as
//!   Linux key events on virtio, the pointer still on PS/2 (its tablet is not driven).
//! - `input`: echoes PS/2 bytes; keys and pointer moves from vncdotool and from QMP
//!   `input-send-event` must arrive as set-1 scancodes and mouse packets.
//!
//! Peers: `.venv/bin/vncdo` (vncdotool) and `gvnccapture` (gvncviewer), both installed by
//! scripts/install-deps.sh; a missing peer or QEMU skips its test with a note.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use hospes_core::control::client::QmpClient;
use hospes_tests::rfb::RfbClient;
use hospes_tests::{GuestKind, build_guest, read_png, skip_without_kvm, vmm_binary, wait_timeout};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
const W: u32 = 1920;
const H: u32 = 1080;

/// The picture `vga.S` paints, as 0xRRGGBB.
fn expected(x: u32, y: u32) -> u32 {
    if (100..200).contains(&x) && (100..200).contains(&y) {
        return 0x12_3456;
    }
    [0xff_0000, 0x00_ff00, 0x00_00ff, 0xff_ffff][(y / 270) as usize]
}

/// A helper process whose stdout (COM1) lines arrive on a channel; killed on drop.
struct Vm {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Vm {
    fn spawn(args: &[&str]) -> Vm {
        let mut child = Command::new(vmm_binary())
            .args(args)
            .args(["-m", "64M", "--serial", "stdio"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hospes-vmm");
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Vm {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line equal to `want`, returning every line up to it.
    fn wait_line(&mut self, want: &str) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let start = self.seen.len();
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let done = l == want;
                    self.seen.push(l);
                    if done {
                        return self.seen[start..].to_vec();
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        panic!(
            "no line '{want}' from the guest; got {:?}",
            &self.seen[start..]
        );
    }
}

impl Vm {
    /// Collects lines until `done` holds for all lines seen since the call.
    fn lines_until(&mut self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let start = self.seen.len();
        while !done(&self.seen[start..]) {
            assert!(
                Instant::now() < deadline,
                "guest said only {:?}",
                &self.seen[start..]
            );
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(l);
            }
        }
        self.seen[start..].to_vec()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_timeout(&mut self.child, TIMEOUT);
    }
}

/// Builds guest `name` and starts it with `--vnc unix:` and `--qmp unix:` sockets in the
/// guest's directory, plus `extra` arguments; returns the guest, the VM and both sockets.
fn start(name: &str, extra: &[&str]) -> (hospes_tests::Guest, Vm, PathBuf, PathBuf) {
    let g = build_guest(name, GuestKind::Pvh);
    let vnc = g.dir.path().join("vnc.sock");
    let qmp = g.dir.path().join("qmp.sock");
    let mut args = vec![
        "--kernel".to_string(),
        g.path.display().to_string(),
        "--vnc".to_string(),
        format!("unix:{}", vnc.display()),
        "--qmp".to_string(),
        format!("unix:{}", qmp.display()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let vm = Vm::spawn(&args);
    (g, vm, vnc, qmp)
}

/// vncdotool's `vncdo`, a real RFB client: missing is a failure, not a skip.
fn vncdo() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/vncdo");
    assert!(
        p.exists(),
        ".venv/bin/vncdo is missing: run scripts/install-deps.sh (make test does)"
    );
    Some(p)
}

/// Every pixel of the capture against the picture; reports the first few differences.
fn assert_picture(path: &Path) {
    let (w, h, px) = read_png(path);
    assert_eq!((w, h), (W, H), "{}", path.display());
    let bad: Vec<String> = (0..H)
        .flat_map(|y| (0..W).map(move |x| (x, y)))
        .filter(|&(x, y)| px[(y * W + x) as usize] != expected(x, y))
        .take(5)
        .map(|(x, y)| {
            format!(
                "({x},{y}) {:06x} != {:06x}",
                px[(y * W + x) as usize],
                expected(x, y)
            )
        })
        .collect();
    assert!(bad.is_empty(), "{}: {bad:?}", path.display());
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_vm_with_a_display_survives_resets_and_paints_again() {
    if skip_without_kvm() {
        return;
    }
    let (g, mut vm, _vnc, qmp_sock) = start("vga", &[]);
    vm.wait_line("vga done");
    let mut qmp = QmpClient::connect(&qmp_sock).unwrap();
    for round in 0..3 {
        qmp.system_reset().unwrap();
        qmp.wait_event("RESET", TIMEOUT).unwrap();
        vm.wait_line("vga done");
        assert!(
            vm.child.try_wait().unwrap().is_none(),
            "the helper ended after reset {round}"
        );
    }
    let dump = g.dir.path().join("after-reset.png");
    qmp.execute("screendump", Some(json!({ "filename": dump })))
        .unwrap();
    assert_picture(&dump);
}

#[test]
fn std_vga_picture_reaches_vncdotool_and_screendump_pixel_for_pixel() {
    if skip_without_kvm() {
        return;
    }
    let (g, mut vm, vnc, qmp_sock) = start("vga", &[]);
    vm.wait_line("vga done");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&vnc).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut qmp = QmpClient::connect(&qmp_sock).unwrap();
    let dump = g.dir.path().join("screendump.png");
    qmp.execute("screendump", Some(json!({ "filename": dump })))
        .unwrap();
    assert_picture(&dump);
    let info = qmp.execute("query-vnc", None).unwrap();
    assert_eq!(info["enabled"], true);
    assert_eq!(info["auth"], "none");
    assert_eq!(info["host"], vnc.display().to_string());

    let Some(vncdo) = vncdo() else { return };
    let cap = g.dir.path().join("vncdo.png");
    run_ok(
        Command::new(&vncdo)
            .arg("-s")
            .arg(&vnc)
            .arg("capture")
            .arg(&cap),
    );
    assert_picture(&cap);
    // Two clients at once: a second capture while the first still holds a connection.
    let held = std::os::unix::net::UnixStream::connect(&vnc).unwrap();
    let cap2 = g.dir.path().join("vncdo2.png");
    run_ok(
        Command::new(&vncdo)
            .arg("-s")
            .arg(&vnc)
            .arg("capture")
            .arg(&cap2),
    );
    assert_picture(&cap2);
    drop(held);
}

/// A free TCP port at or above 5900 (gvnccapture names ports as displays 5900 + N).
fn free_vnc_port() -> u16 {
    let base = 5900 + (std::process::id() % 2000) as u16;
    (base..base + 200)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port")
}

#[test]
fn gvnccapture_and_vncdotool_over_tcp_with_a_password_see_the_picture() {
    if skip_without_kvm() {
        return;
    }
    if Command::new("gvnccapture").arg("--help").output().is_err()
        || Command::new("script").arg("--version").output().is_err()
    {
        panic!(
            "gvnccapture (gvncviewer) or script (util-linux) is missing: run scripts/install-deps.sh"
        );
    }
    let g = build_guest("vga", GuestKind::Pvh);
    let pw = g.dir.path().join("vnc-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let port = free_vnc_port();
    let mut vm = Vm::spawn(&[
        "--kernel",
        g.path.to_str().unwrap(),
        "--vnc",
        &format!("127.0.0.1:{port}"),
        "--vnc-password-file",
        pw.to_str().unwrap(),
    ]);
    vm.wait_line("vga done");
    // gvnccapture reads the password from a terminal: give it one with script(1).
    let cap = g.dir.path().join("gvnc.png");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!(
            "gvnccapture 127.0.0.1:{} {}",
            port - 5900,
            cap.display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let status = wait_timeout(&mut child, TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "gvnccapture failed");
    assert_picture(&cap);

    let Some(vncdo) = vncdo() else { return };
    let server = format!("127.0.0.1::{port}");
    let cap2 = g.dir.path().join("vncdo-tcp.png");
    run_ok(
        Command::new(&vncdo)
            .args(["-s", &server, "-p", "s3cret", "capture"])
            .arg(&cap2),
    );
    assert_picture(&cap2);
    let wrong = Command::new(&vncdo)
        .args(["-s", &server, "-p", "wrong", "capture"])
        .arg(g.dir.path().join("no.png"))
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "a wrong password was accepted");
}

#[test]
fn std_vga_guest_output_matches_qemu_vga_std() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("vga", GuestKind::Pvh);
    let mut ours = Vm::spawn(&["--kernel", g.path.to_str().unwrap(), "--display", "std-vga"]);
    let ours = ours.wait_line("vga done");
    let qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-M", "pc", "-vga", "std", "-display", "none",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-serial",
            "stdio",
            "-m",
            "64M",
        ])
        .arg("-kernel")
        .arg(&g.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut qemu) = qemu else {
        eprintln!("skipped: qemu-system-x86_64 not available");
        return;
    };
    let out = qemu.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let done = l == "vga done";
            lines.push(l);
            if done {
                break;
            }
        }
        let _ = tx.send(lines);
    });
    let theirs = rx.recv_timeout(TIMEOUT).unwrap_or_default();
    let _ = qemu.kill();
    let _ = wait_timeout(&mut qemu, TIMEOUT);
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 20, "{ours:?}");
}

#[test]
fn keys_and_pointer_from_vncdotool_and_qmp_reach_the_ps2_guest() {
    if skip_without_kvm() {
        return;
    }
    let (_g, mut vm, vnc, qmp_sock) = start("input", &[]);
    vm.wait_line("input ready");
    vm.wait_line("aux fa");

    let mut qmp = QmpClient::connect(&qmp_sock).unwrap();
    let key = |down: bool, key: serde_json::Value| json!({"type": "key", "data": {"down": down, "key": key}});
    qmp.execute(
        "input-send-event",
        Some(json!({"events": [
            key(true, json!({"type": "qcode", "data": "ret"})),
            key(false, json!({"type": "qcode", "data": "ret"})),
            key(true, json!({"type": "number", "data": 0xc8})),
        ]})),
    )
    .unwrap();
    assert_eq!(
        vm.wait_line("kbd 48"),
        ["kbd 1c", "kbd 9c", "kbd e0", "kbd 48"]
    );

    let Some(vncdo) = vncdo() else { return };
    run_ok(
        Command::new(&vncdo)
            .arg("-s")
            .arg(&vnc)
            .args(["key", "a", "move", "100", "100", "move", "110", "95"]),
    );
    assert_eq!(vm.wait_line("kbd 9e"), ["kbd 1e", "kbd 9e"]);
    // First move: no motion yet; second: 10 right, 5 up (PS/2 y grows upwards).
    let packets = vm.wait_line("aux 05");
    assert_eq!(
        &packets[packets.len() - 6..],
        ["aux 08", "aux 00", "aux 00", "aux 08", "aux 0a", "aux 05"]
    );
}

/// The picture `gpu.S` shows at `w` x `h`: four bands, a quarter of the height each.
fn gpu_expected(y: u32, h: u32) -> u32 {
    [0xff_0000, 0x00_ff00, 0x00_00ff, 0xff_ffff][(y / (h / 4)).min(3) as usize]
}

fn assert_gpu_frame(c: &RfbClient, w: u16, h: u16) {
    assert_eq!((c.width, c.height), (w, h));
    for y in 0..u32::from(h) / 4 * 4 {
        for x in (0..u32::from(w)).step_by(7) {
            let got = c.pixel(x as u16, y as u16);
            assert_eq!(
                got,
                gpu_expected(y, u32::from(h)),
                "pixel ({x},{y}) of {w}x{h}"
            );
        }
    }
}

#[test]
fn virtio_gpu_shows_the_picture_and_cursor_and_follows_a_client_resize() {
    if skip_without_kvm() {
        return;
    }
    let (g, mut vm, vnc, _) = start("gpu", &["--display", "virtio-gpu"]);
    vm.wait_line("gpu shown 1280x800");

    if let Some(vncdo) = vncdo() {
        let cap = g.dir.path().join("gpu.png");
        run_ok(
            Command::new(&vncdo)
                .arg("-s")
                .arg(&vnc)
                .arg("capture")
                .arg(&cap),
        );
        let (w, h, px) = read_png(&cap);
        assert_eq!((w, h), (1280, 800));
        for (i, p) in px.iter().enumerate() {
            let y = i as u32 / w;
            assert_eq!(*p, gpu_expected(y, h), "pixel {},{y}", i as u32 % w);
        }
    }

    // Raw plus Cursor, ExtendedDesktopSize and DesktopSize.
    let mut c = RfbClient::connect_with(&vnc, &[-239, -308, -223]).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.request(false).unwrap();
    // The layout first, alone (the client announced ExtendedDesktopSize), then pixels.
    assert!(c.read_update().unwrap().iter().all(|r| r.encoding < 0));
    assert_eq!(c.desktop_size, Some((0, 0, 1280, 800)));
    c.request(true).unwrap();
    c.read_update().unwrap();
    assert_gpu_frame(&c, 1280, 800);
    let cur = c.cursor.clone().expect("a cursor with the first update");
    assert_eq!(
        (cur.hot_x, cur.hot_y, cur.width, cur.height),
        (1, 1, 64, 64)
    );
    assert!(cur.pixels.iter().all(|&p| p == 0x00_ff00));
    assert!(cur.mask.iter().all(|&m| m == 0xff));

    c.set_desktop_size(1024, 768).unwrap();
    vm.wait_line("gpu shown 1024x768");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        c.request(true).unwrap();
        c.read_update().unwrap();
        if (c.width, c.height) == (1024, 768) && c.pixel(1023, 767) == 0xff_ffff {
            break;
        }
        assert!(Instant::now() < deadline, "no 1024x768 frame");
    }
    // The request's answer: status 0 (accepted), then the server-side change.
    assert!(
        matches!(c.desktop_size, Some((_, 0, 1024, 768))),
        "{:?}",
        c.desktop_size
    );
    c.request(false).unwrap();
    c.read_update().unwrap();
    assert_gpu_frame(&c, 1024, 768);
}

#[test]
fn keys_go_to_a_driven_virtio_keyboard_and_the_pointer_to_ps2_without_a_tablet_driver() {
    if skip_without_kvm() {
        return;
    }
    let Some(vncdo) = vncdo() else { return };
    let (_g, mut vm, vnc, _) = start("vinput", &[]);
    vm.wait_line("vinput ready");
    vm.wait_line("aux fa");
    run_ok(
        Command::new(&vncdo)
            .arg("-s")
            .arg(&vnc)
            .args(["key", "a", "move", "100", "100", "move", "110", "95"]),
    );
    let lines = vm.lines_until(|l| {
        l.iter().filter(|x| x.starts_with("vin ")).count() >= 4
            && l.iter().filter(|x| x.starts_with("aux ")).count() >= 6
    });
    let vin: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("vin "))
        .map(String::as_str)
        .collect();
    // KEY_A (30) down, SYN_REPORT, up, SYN_REPORT.
    assert_eq!(
        vin,
        [
            "vin 0001 001e 00000001",
            "vin 0000 0000 00000000",
            "vin 0001 001e 00000000",
            "vin 0000 0000 00000000"
        ]
    );
    let aux: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("aux "))
        .map(String::as_str)
        .collect();
    assert_eq!(
        aux,
        ["aux 08", "aux 00", "aux 00", "aux 08", "aux 0a", "aux 05"]
    );
    assert!(!lines.iter().any(|l| l.starts_with("kbd")), "{lines:?}");
}

/// Connects the app's client: vnc-rs, with the app's encodings and pixel format.
async fn app_vnc_client(sock: &Path) -> Result<vnc::VncClient, String> {
    use vnc::{PixelFormat, VncConnector, VncEncoding, VncError};
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(|e| e.to_string())?;
    VncConnector::new(stream)
        .set_auth_method(async { Ok::<_, VncError>(String::new()) })
        .add_encoding(VncEncoding::Zrle)
        .add_encoding(VncEncoding::CopyRect)
        .add_encoding(VncEncoding::Raw)
        .add_encoding(VncEncoding::DesktopSizePseudo)
        .add_encoding(VncEncoding::ExtendedDesktopSizePseudo)
        .allow_shared(true)
        .set_pixel_format(PixelFormat::bgra())
        .build()
        .map_err(|e| e.to_string())?
        .try_start()
        .await
        .map_err(|e| e.to_string())?
        .finish()
        .map_err(|e| e.to_string())
}

/// Connects the app's client and refreshes as the app does until a pixel rectangle
/// arrives at `want`: the size ServerInit announced, or the error vnc-rs reports.
async fn vnc_rs_until_pixels_at(sock: &Path, want: (u16, u16)) -> Result<(u16, u16), String> {
    use vnc::{VncEvent, X11Event};
    let client = app_vnc_client(sock).await?;
    let mut size = None;
    let mut first = None;
    let mut tick = tokio::time::interval(Duration::from_millis(16));
    let result = loop {
        tokio::select! {
            event = client.recv_event() => match event.map_err(|e| e.to_string())? {
                VncEvent::SetResolution(s) => {
                    size = Some((s.width, s.height));
                    first = first.or(size);
                }
                VncEvent::DesktopUpdate(u) => {
                    if let Some(l) = u.layout {
                        size = Some((l.width, l.height));
                    }
                }
                VncEvent::RawImage(..) if size == Some(want) => break Ok(first.unwrap_or(want)),
                VncEvent::Error(e) => break Err(e),
                _ => {}
            },
            _ = tick.tick() => {
                client.input(X11Event::Refresh).await.map_err(|e| e.to_string())?;
            }
        }
    };
    let _ = client.close().await;
    result
}

#[test]
fn the_apps_vnc_client_decodes_every_update_across_the_std_vga_mode_switch() {
    if skip_without_kvm() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let want = (W as u16, H as u16);
    let mut crossed = 0;
    for round in 0..20 {
        // Connect as soon as the socket is there: the guest sets 1920x1080 about then,
        // before the first update request, or while the client waits for damage.
        let (_g, mut vm, vnc, _qmp) = start("vga", &[]);
        let deadline = Instant::now() + TIMEOUT;
        while !vnc.exists() {
            assert!(Instant::now() < deadline, "no VNC socket");
            std::thread::sleep(Duration::from_millis(1));
        }
        let result = rt.block_on(async {
            let client = vnc_rs_until_pixels_at(&vnc, want);
            tokio::time::timeout(TIMEOUT, client).await
        });
        let seen = result.unwrap_or_else(|_| panic!("round {round}: no picture in time"));
        match seen {
            Ok(first) => crossed += usize::from(first != want),
            Err(e) => panic!("round {round}: {e}"),
        }
        vm.wait_line("vga done");
    }
    eprintln!("{crossed} of 20 connections began before the mode switch");
}

/// What the app's client saw of a resize to the window's size.
#[derive(Debug)]
struct ResizeSeen {
    /// The layout before the request.
    before: (u16, u16),
    /// `resize_desktop`'s result.
    result: Result<(u16, u16), String>,
    /// The whole screen after the new size, as 0xRRGGBB.
    frame: Vec<u32>,
}

/// As the app does when the window follows the VM: waits for the layout, asks for
/// `want` with `resize_desktop` while it goes on refreshing, and gathers the pixels of the
/// new size until every one arrived.
async fn vnc_rs_resize(sock: &Path, want: (u16, u16)) -> Result<ResizeSeen, String> {
    use vnc::{VncEvent, X11Event};
    let client = app_vnc_client(sock).await?;
    let mut before = None;
    let mut resize = None;
    let mut size = None;
    let area = usize::from(want.0) * usize::from(want.1);
    let mut frame = vec![0u32; area];
    let mut painted = vec![false; area];
    let mut left = area;
    let mut tick = tokio::time::interval(Duration::from_millis(16));
    while left > 0 {
        tokio::select! {
            event = client.recv_event() => match event.map_err(|e| e.to_string())? {
                VncEvent::SetResolution(s) => size = Some((s.width, s.height)),
                VncEvent::DesktopUpdate(u) => {
                    if let Some(l) = u.layout {
                        size = Some((l.width, l.height));
                    }
                }
                VncEvent::RawImage(r, data) if size == Some(want) && resize.is_some() => {
                    let px = data.chunks_exact(4);
                    for (i, p) in px.enumerate() {
                        let x = usize::from(r.x) + i % usize::from(r.width);
                        let y = usize::from(r.y) + i / usize::from(r.width);
                        let at = y * usize::from(want.0) + x;
                        if x < usize::from(want.0) && at < area {
                            frame[at] = u32::from_le_bytes([p[0], p[1], p[2], 0]);
                            left -= usize::from(!std::mem::replace(&mut painted[at], true));
                        }
                    }
                }
                VncEvent::Error(e) => return Err(e),
                _ => {}
            },
            _ = tick.tick() => {
                client.input(X11Event::Refresh).await.map_err(|e| e.to_string())?;
            }
        }
        if resize.is_none()
            && let Some(l) = client.desktop_layout()
        {
            before = Some((l.width, l.height));
            let c = client.clone();
            resize = Some(tokio::spawn(async move {
                c.resize_desktop(want.0, want.1).await
            }));
        }
    }
    let result = match resize {
        Some(r) => r
            .await
            .map_err(|e| e.to_string())?
            .map(|l| (l.width, l.height))
            .map_err(|e| e.to_string()),
        None => Err("no resize".into()),
    };
    let _ = client.close().await;
    Ok(ResizeSeen {
        before: before.unwrap_or_default(),
        result,
        frame,
    })
}

#[test]
fn the_apps_vnc_client_resizes_a_virtio_gpu_guest_to_its_window() {
    if skip_without_kvm() {
        return;
    }
    let (_g, mut vm, vnc, _) = start("gpu", &["--display", "virtio-gpu"]);
    vm.wait_line("gpu shown 1280x800");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = rt
        .block_on(async { tokio::time::timeout(TIMEOUT, vnc_rs_resize(&vnc, (1024, 768))).await })
        .expect("no 1024x768 picture in time")
        .unwrap();
    // The server told the layout unasked, so the client could ask for a size at all.
    assert_eq!(seen.before, (1280, 800));
    assert_eq!(seen.result, Ok((1024, 768)));
    vm.wait_line("gpu shown 1024x768");
    for (i, p) in seen.frame.iter().enumerate() {
        let y = i as u32 / 1024;
        assert_eq!(*p, gpu_expected(y, 768), "pixel {},{y}", i as u32 % 1024);
    }
}

/// The `vinput` guest with its virtio keyboard driven, saved with `hospes-save` and
/// resumed from `--state FILE`: a key sent through QMP after the resume reaches the guest
/// as Linux key events through the restored device (its posted buffers still posted),
/// and the guest goes on instead of starting over.
#[test]
fn a_virtio_keyboard_saved_and_resumed_delivers_keys_sent_after_the_resume() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("vinput", GuestKind::Pvh);
    let state = g.dir.path().join("vm.hospes");
    let args = |tag: &str| -> Vec<String> {
        vec![
            "--kernel".into(),
            g.path.display().to_string(),
            "--vnc".into(),
            format!(
                "unix:{}",
                g.dir.path().join(format!("vnc-{tag}.sock")).display()
            ),
            "--qmp".into(),
            format!(
                "unix:{}",
                g.dir.path().join(format!("qmp-{tag}.sock")).display()
            ),
            "--state".into(),
            state.display().to_string(),
        ]
    };
    let key = |down: bool, qcode: &str| json!({"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": qcode}}});
    let first_args = args("first");
    let mut first = Vm::spawn(&first_args.iter().map(String::as_str).collect::<Vec<_>>());
    first.wait_line("vinput ready");
    first.wait_line("aux fa");
    let qmp = g.dir.path().join("qmp-first.sock");
    let mut client = QmpClient::connect(&qmp).unwrap();
    client
        .execute(
            "input-send-event",
            Some(json!({"events": [key(true, "a"), key(false, "a")]})),
        )
        .unwrap();
    let before = first.lines_until(|l| l.iter().filter(|x| x.starts_with("vin ")).count() >= 4);
    assert!(
        before.contains(&"vin 0001 001e 00000001".to_string()),
        "{before:?}"
    );
    drop(client);
    hospes_tests::save::save_and_wait(&qmp, &mut first.child);

    let second_args = args("second");
    let mut second = Vm::spawn(&second_args.iter().map(String::as_str).collect::<Vec<_>>());
    let qmp = g.dir.path().join("qmp-second.sock");
    let deadline = Instant::now() + TIMEOUT;
    let mut client = loop {
        match QmpClient::connect(&qmp) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no QMP after the resume: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    // QMP answers once the machine is built; the state file goes once the vCPUs run.
    while state.exists() {
        assert!(Instant::now() < deadline, "the resumed VM never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    client
        .execute(
            "input-send-event",
            Some(json!({"events": [key(true, "b"), key(false, "b")]})),
        )
        .unwrap();
    let after = second.lines_until(|l| l.iter().filter(|x| x.starts_with("vin ")).count() >= 4);
    let vin: Vec<&str> = after
        .iter()
        .filter(|l| l.starts_with("vin "))
        .map(String::as_str)
        .collect();
    // KEY_B (48) down, SYN_REPORT, up, SYN_REPORT; nothing from before the save again.
    assert_eq!(
        vin,
        [
            "vin 0001 0030 00000001",
            "vin 0000 0000 00000000",
            "vin 0001 0030 00000000",
            "vin 0000 0000 00000000"
        ]
    );
    assert!(
        !after
            .iter()
            .any(|l| l == "vinput ready" || l.starts_with("kbd")),
        "the guest started over or the key went to PS/2: {after:?}"
    );
}
