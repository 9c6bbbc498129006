//! `cargo run --release -p hospes-tests --bin bench_io`: the guest's I/O paths through the
//! real peers. Prints a table; asserts nothing.
//!
//! Network: the tiny virtio-net guest (`tests/guests/net.S` built with `BENCH_*`) gets its
//! address from passt, then sends COUNT UDP datagrams of SIZE bytes to the router address,
//! which passt maps to the host's loopback, where this program receives them. Throughput
//! is payload bytes over the time from the first datagram to the last one received.
//!
//! Audio: on a private PipeWire daemon (as the tests start it), the virtio-snd guest
//! (`tests/guests/snd.S` with `MARK`) plays silence, then prints "tone" on its serial line
//! as it queues the first period of a square wave. `pw-record` streams the sink to this
//! program; the latency is the time from reading "tone" to the first loud sample arriving,
//! so it covers the guest's 4 x 10 ms ring, the PipeWire graph and pw-record's own buffer.
//! The same run with the Intel HD Audio card (`tests/guests/hda.S` with `MARK`, `--sound
//! hda`) covers the controller's 20 ms read-ahead instead of the guest's ring.

use std::io::Read;
use std::net::UdpSocket;
use std::process::Stdio;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use hospes_tests::peers::{LiveVm, PipeWireDaemon, TEST_SINK, free_udp_port};
use hospes_tests::{GuestKind, build_guest_with, target_dir};

/// Audio latency runs (the median is printed).
const AUDIO_RUNS: usize = 5;

/// One guest -> host run: `(datagrams received, payload bytes, seconds)`.
fn udp_run(size: usize, count: usize) -> Option<(usize, usize, f64)> {
    let port = free_udp_port();
    let sock = UdpSocket::bind(("127.0.0.1", port)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    grow_receive_buffer(&sock);
    let g = build_guest_with(
        "net",
        GuestKind::Pvh,
        &[
            &format!("BENCH_PORT={port}"),
            &format!("BENCH_SIZE={size}"),
            &format!("BENCH_COUNT={count}"),
        ],
    );
    let mut vm = LiveVm::spawn(
        &[
            "--kernel",
            g.path.to_str()?,
            "-m",
            "64M",
            "--no-rng",
            "--net",
            "user",
        ],
        &[],
    );
    vm.wait_line("dhcp offer", Duration::from_secs(30))?;
    let mut buf = vec![0u8; 65536];
    let (mut n, mut bytes) = (0usize, 0usize);
    let mut first = None;
    let mut last = Instant::now();
    while n < count {
        match sock.recv(&mut buf) {
            Ok(len) => {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                n += 1;
                bytes += len;
            }
            Err(_) => break,
        }
    }
    let _ = vm.finish(Duration::from_secs(10));
    let secs = last.duration_since(first?).as_secs_f64();
    Some((n, bytes, secs))
}

/// Asks for an 8 MiB receive buffer so bursts are not lost on the host side (the kernel
/// caps it at net.core.rmem_max).
fn grow_receive_buffer(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// One audio run: "tone" on the guest's serial line -> first loud sample from pw-record.
/// One latency run of `kernel` with `--sound sound`.
fn audio_run(pw: &PipeWireDaemon, kernel: &str, sound: &str) -> Option<Duration> {
    let mut recorder = pw
        .command("pw-record")
        .args(["--target", TEST_SINK, "-P", "{ stream.capture.sink=true }"])
        .args(["--format", "s16", "--rate", "48000", "--channels", "1", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut out = recorder.stdout.take()?;
    let (tx, heard) = channel();
    // pw-record writes raw samples to a pipe (no WAV header).
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut odd: Option<u8> = None;
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            let now = Instant::now();
            let mut bytes: Vec<u8> = odd.take().into_iter().collect();
            bytes.extend_from_slice(&buf[..n]);
            if bytes.len() % 2 == 1 {
                odd = bytes.pop();
            }
            let loud = bytes
                .chunks_exact(2)
                .any(|c| i16::from_le_bytes([c[0], c[1]]).unsigned_abs() > 2000);
            if loud {
                let _ = tx.send(now);
                break;
            }
        }
    });
    // Give the recorder time to be linked to the sink.
    std::thread::sleep(Duration::from_millis(500));
    let (k, v) = pw.env();
    let mut vm = LiveVm::spawn(
        &[
            "--kernel", kernel, "-m", "64M", "--no-rng", "--sound", sound, "--name", "bench",
        ],
        &[(k, &v)],
    );
    let marked = vm
        .wait_line("tone", Duration::from_secs(30))
        .map(|_| Instant::now());
    let heard = heard.recv_timeout(Duration::from_secs(5)).ok();
    let _ = vm.finish(Duration::from_secs(10));
    let _ = recorder.kill();
    let _ = recorder.wait();
    Some(heard?.saturating_duration_since(marked?))
}

fn audio_latency() {
    let pw = PipeWireDaemon::start();
    for (guest, sound, what) in [
        ("snd", "on", "virtio-snd, guest ring 4 x 10 ms"),
        (
            "hda",
            "hda",
            "HD Audio, cyclic buffer 4 x 10 ms, 20 ms read-ahead",
        ),
    ] {
        let g = build_guest_with(guest, GuestKind::Pvh, &["MARK=50", "PERIODS=100"]);
        let Some(kernel) = g.path.to_str() else {
            return;
        };
        let mut runs: Vec<Duration> = (0..AUDIO_RUNS)
            .filter_map(|_| audio_run(&pw, kernel, sound))
            .collect();
        runs.sort();
        println!();
        println!("audio: guest queues a tone period -> first loud sample out of pw-record");
        println!("(mono S16 48 kHz, {what}; PipeWire's default quantum)");
        match runs.get(runs.len() / 2) {
            Some(median) => println!(
                "median {:.1} ms over {} runs (min {:.1}, max {:.1})",
                median.as_secs_f64() * 1e3,
                runs.len(),
                runs[0].as_secs_f64() * 1e3,
                runs[runs.len() - 1].as_secs_f64() * 1e3
            ),
            None => println!("no run heard the tone"),
        }
    }
}

fn main() {
    let vmm = target_dir().join("hospes-vmm");
    if !vmm.exists() {
        eprintln!("build hospes-vmm first: cargo build --release -p hospes-vmm");
        std::process::exit(1);
    }
    println!("guest -> host UDP through passt ({})", vmm.display());
    println!(
        "{:>10} {:>8} {:>10} {:>12} {:>12}",
        "payload", "sent", "received", "MB/s", "datagrams/s"
    );
    for (size, count) in [(1400, 20_000), (32_768, 5_000), (65_000, 2_000)] {
        match udp_run(size, count) {
            Some((n, bytes, secs)) if secs > 0.0 => println!(
                "{:>10} {:>8} {:>10} {:>12.1} {:>12.0}",
                size,
                count,
                n,
                bytes as f64 / secs / 1e6,
                n as f64 / secs
            ),
            _ => println!("{size:>10} {count:>8}   (run failed: is passt installed?)"),
        }
    }
    audio_latency();
}
