//! `cargo run --release -p hospes-tests --bin bench_io`: the guest's I/O paths through the
//! real peers. Prints a table; asserts nothing.
//!
//! Network: the tiny virtio-net guest (`tests/guests/net.S` built with `BENCH_*`) gets its
//! address from passt, then sends COUNT UDP datagrams of SIZE bytes to the router address,
//! which passt maps to the host's loopback, where this program receives them. Throughput
//! is payload bytes over the time from the first datagram to the last one received.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use hospes_tests::peers::{LiveVm, free_udp_port};
use hospes_tests::{GuestKind, build_guest_with, target_dir};

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
}
