//! `cargo run --release -p hospes-tests --bin display_bench`: the screen path of hospes-vmm
//! next to QEMU's `-vga std -vnc unix:` on the same std-VGA guest (`vga.S` built with
//! -DBENCH: 1920x1080x32, then a 64x64 square painted per byte received on COM1). Prints
//! a table; asserts nothing.
//!
//! - Frames/s: a local RFB client on the unix socket (Raw, 32 bpp) sends non-incremental
//!   full-screen requests back to back and reads each whole 1080p frame, for [`SECONDS`].
//! - Small-update latency: with an incremental request pending, one byte goes to the
//!   guest's serial port; the time until an update showing the new square's colour at
//!   (0,0) arrives. It includes the serial path into the guest (socket -> UART -> a guest
//!   polling loop) and the guest's write of 64 rows, so it bounds the display path from
//!   above.
//! - Memory: the VMM's resident memory beyond the guest RAM and the video memory (16 MiB
//!   for both) the guest touched, with the client still connected after the measurements;
//!   the DESIGN target is 8 MiB plus one framebuffer (7.9 MiB at 1080p).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hospes_tests::rfb::RfbClient;
use hospes_tests::{GuestKind, build_guest_with, resident_split, vmm_binary, wait_timeout};

const SECONDS: f64 = 3.0;
const PROBES: usize = 40;

struct Figures {
    fps: Option<f64>,
    latency: Vec<Duration>,
    /// Resident KiB beyond guest RAM and video memory.
    overhead_kib: Option<u64>,
}

/// Guest RAM and video memory, MiB: the same for both VMMs.
const RAM_MIB: u64 = 64;
const VRAM_MIB: u64 = 16;

fn wait_for_path(p: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Connects to the serial socket and waits for "vga done".
fn serial(path: &Path) -> Option<UnixStream> {
    if !wait_for_path(path) {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut lines = BufReader::new(s.try_clone().ok()?).lines();
    lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.trim_end() == "vga done")?;
    Some(s)
}

fn measure(vnc: &Path, ser: &Path, pid: u32) -> Option<Figures> {
    let mut serial = serial(ser)?;
    wait_for_path(vnc);
    let mut c = RfbClient::connect(vnc).ok()?;
    if (c.width, c.height) != (1920, 1080) {
        eprintln!("screen is {}x{}, not 1080p", c.width, c.height);
        return None;
    }
    // Frames per second, full non-incremental frames.
    c.request(false).ok()?;
    c.read_update().ok()?;
    let start = Instant::now();
    let mut frames = 0u32;
    while start.elapsed().as_secs_f64() < SECONDS {
        c.request(false).ok()?;
        let rects = c.read_update().ok()?;
        if rects.iter().any(|r| r.w == 1920 && r.h == 1080) {
            frames += 1;
        }
    }
    let fps = f64::from(frames) / start.elapsed().as_secs_f64();

    // Latency of a small update.
    let mut latency = Vec::new();
    c.request(true).ok()?;
    for i in 0..PROBES {
        let grey = 0x20 + (i as u32 * 5) % 0xc0;
        let want = grey * 0x010101;
        let t0 = Instant::now();
        serial.write_all(&[grey as u8]).ok()?;
        loop {
            c.read_update().ok()?;
            if c.pixel(0, 0) == want {
                latency.push(t0.elapsed());
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                eprintln!("probe {i}: no update in 10 s");
                return Some(Figures {
                    fps: Some(fps),
                    latency,
                    overhead_kib: overhead_kib(pid),
                });
            }
            c.request(true).ok()?;
        }
        // Let the rest of the square arrive, then leave one request pending.
        std::thread::sleep(Duration::from_millis(30));
        c.request(true).ok()?;
        c.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
        while c.read_update().is_ok() {
            c.request(true).ok()?;
        }
        c.set_read_timeout(None).ok()?;
    }
    Some(Figures {
        fps: Some(fps),
        latency,
        overhead_kib: overhead_kib(pid),
    })
}

/// Resident KiB of process `pid` beyond its guest RAM and video memory.
fn overhead_kib(pid: u32) -> Option<u64> {
    let (vmrss, resident) = resident_split(pid, &[RAM_MIB * 1024, VRAM_MIB * 1024])?;
    Some(vmrss.saturating_sub(resident.iter().sum()))
}

fn run(mut cmd: Command, vnc: &Path, ser: &Path) -> Option<Figures> {
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let f = measure(vnc, ser, child.id());
    let _ = child.kill();
    let _ = wait_timeout(&mut child, Duration::from_secs(10));
    f
}

fn percentile(v: &[Duration], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied()
}

fn cell(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "n/a".into(), |x| format!("{x:.2} {unit}"))
}

fn main() {
    let g = build_guest_with("vga", GuestKind::Pvh, &["BENCH"]);
    let dir: PathBuf = g.dir.path().to_owned();
    let kernel = g.path.to_str().unwrap_or_default().to_string();

    let (vnc, ser) = (dir.join("h-vnc.sock"), dir.join("h-serial.sock"));
    let mut ours = Command::new(vmm_binary());
    ours.args(["--kernel", &kernel, "-m", &format!("{RAM_MIB}M")])
        .arg("--vnc")
        .arg(format!("unix:{}", vnc.display()))
        .arg("--serial")
        .arg(format!("unix:{}", ser.display()));
    let hospes = run(ours, &vnc, &ser);

    let (qvnc, qser) = (dir.join("q-vnc.sock"), dir.join("q-serial.sock"));
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "kvm",
        "-M",
        "pc",
        "-vga",
        "std",
        "-nodefaults",
        "-no-user-config",
    ])
    .args(["-m", &format!("{RAM_MIB}M"), "-kernel", &kernel])
    .args(["-global", &format!("VGA.vgamem_mb={VRAM_MIB}")])
    .arg("-vnc")
    .arg(format!("unix:{}", qvnc.display()))
    .arg("-serial")
    .arg(format!("unix:{},server=on,wait=off", qser.display()));
    let qemu = run(qemu, &qvnc, &qser);

    println!("std-VGA 1920x1080x32 guest, local RFB client on a unix socket (Raw, 32 bpp)");
    println!(
        "{:<46} {:>14} {:>14}",
        "figure", "hospes-vmm", "qemu -vga std"
    );
    let row = |name: &str, f: &dyn Fn(&Figures) -> Option<f64>, unit: &str| {
        let a = hospes.as_ref().and_then(f);
        let b = qemu.as_ref().and_then(f);
        println!("{name:<46} {:>14} {:>14}", cell(a, unit), cell(b, unit));
    };
    row("full 1080p frames/s (non-incremental)", &|f| f.fps, "fps");
    row(
        "64x64 update latency, median",
        &|f| percentile(&f.latency, 0.5),
        "ms",
    );
    row(
        "64x64 update latency, p95",
        &|f| percentile(&f.latency, 0.95),
        "ms",
    );
    row(
        "64x64 update latency, min",
        &|f| percentile(&f.latency, 0.0),
        "ms",
    );
    row(
        "RSS beyond guest RAM and video memory",
        &|f| f.overhead_kib.map(|k| k as f64 / 1024.0),
        "MiB",
    );
    println!(
        "(latency includes serial input into the guest and its 64-row write; targets: >= 200 fps, <= 1 ms, \
         <= 8 MiB + one framebuffer = 15.9 MiB)"
    );
}
