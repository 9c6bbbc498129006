//! virtio-blk device path vs host `preadv`/`pwritev` on the same file.
//!
//! The device side is the whole path a guest request takes minus KVM: a mock driver keeps
//! `qd` requests (header, data and status descriptors in guest memory) in flight, kicking
//! the notify register through the virtio-pci transport when the device asks for it; the
//! worker thread does the I/O straight into guest memory, fills the used ring and raises
//! the interrupt the driver sleeps on; the driver resubmits every completed request. The host side issues the same reads or writes
//! on the same file with one `preadv`/`pwritev` each, cycling through as many buffers as
//! the device has requests in flight. Both run on a file in the page cache, so the figure
//! is the device path's overhead, not the disk's speed. The mock driver sleeps on the
//! device's interrupt (an eventfd) as a guest vCPU would; the device column includes its
//! small share of work (a sector number and an avail entry per request, the used ring).
//! Like Linux's virtio-blk driver it negotiates `VIRTIO_RING_F_EVENT_IDX`: it re-arms
//! `used_event` before sleeping and kicks only when the device's `avail_event` asks for it.
//! Like a KVM vCPU in `hlt`, it first polls for the interrupt for up to [`HALT_POLL`]
//! (KVM's halt polling, which gives way when another task wants the CPU: the poll yields
//! each round) before sleeping on the eventfd.
//!
//! Run: `cargo bench -p hospes-vmm --bench blk --features test-support`.
//! Target (DESIGN.md): device >= 90% of host at 128 KiB, >= 70% at 4 KiB.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hospes_devices::virtio::block::Block;
use hospes_devices::virtio::block::request::{T_IN, T_OUT};
use hospes_devices::virtio::testing::{DATA, MockDriver};
use vm_memory::{Bytes, GuestAddress};

const FILE_SIZE: u64 = 64 << 20;
/// One measurement's length.
const RUN: Duration = Duration::from_millis(300);
/// Measurements per side and row, alternating host and device (the order flipping each
/// round, so a drift in the machine's load falls on both sides); each side's figure is the
/// median. On a shared 2-core machine one 700 ms sample of each moved a row's ratio by
/// 15-20 points between runs.
const ROUNDS: usize = 5;
/// How long the driver's vCPU polls for an interrupt before sleeping, as KVM's halt
/// polling does (its x86 default, 200 µs, is longer).
const HALT_POLL: Duration = Duration::from_micros(50);
const HEADERS: u64 = 0x8000;
const STATUS: u64 = 0xc000;

fn device(path: &std::path::Path, bs: u64, qd: u64, write: bool) -> f64 {
    let mem = (DATA + bs * qd) as usize;
    let blk = Block::open(path, false, "bench").expect("open image");
    let mut d = MockDriver::with_memory(Box::new(blk), mem).start_event_idx(256);
    let blocks = FILE_SIZE / bs;
    // Like a real driver, build each request's descriptors once and reuse them; per request
    // only the sector and the avail ring entry change.
    let kind = if write { T_OUT } else { T_IN };
    let mut heads = Vec::new();
    for i in 0..qd {
        let hdr = HEADERS + i * 16;
        d.mem.write_obj(kind, GuestAddress(hdr)).unwrap();
        d.mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
        d.mem.write_obj(0u64, GuestAddress(hdr + 8)).unwrap();
        heads.push(d.add_chain(&[
            (hdr, 16, false),
            (DATA + i * bs, bs as u32, !write),
            (STATUS + i, 1, true),
        ]));
    }
    d.kick(0);
    for _ in 0..qd {
        d.wait_used();
    }
    // Keep `qd` requests in flight, as fio's iodepth does: every completion is resubmitted
    // at once, so the worker drains a queue that never runs dry.
    for &head in &heads {
        d.publish(head);
    }
    d.kick(0);
    let (mut next, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < RUN {
        d.halt(HALT_POLL);
        // As Linux's virtio-blk does: take every completion, resubmit, kick if the device
        // asks for it, re-arm `used_event` and go round again if more completed meanwhile.
        loop {
            while let Some((id, _)) = d.try_used() {
                bytes += bs;
                let slot = u64::from(id) / 3;
                let sector = (next % blocks) * bs / 512;
                next += 1;
                d.put(HEADERS + slot * 16 + 8, sector);
                d.publish(id as u16);
            }
            d.kick_if_needed(0);
            if !d.rearm() {
                break;
            }
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

/// `qd` buffers used in turn, so both sides touch the same amount of memory.
fn host(file: &std::fs::File, bs: u64, qd: u64, write: bool) -> f64 {
    let mut bufs = vec![0x5au8; (bs * qd) as usize];
    let blocks = FILE_SIZE / bs;
    let (mut next, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < RUN {
        let at = ((next % qd) * bs) as usize;
        let buf = &mut bufs[at..at + bs as usize];
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let off = ((next % blocks) * bs) as libc::off_t;
        next += 1;
        let n = if write {
            // SAFETY: `iov` points at `buf`, alive and `bs` bytes long, for the call.
            unsafe { libc::pwritev(file.as_raw_fd(), &iov, 1, off) }
        } else {
            // SAFETY: as above; the kernel writes at most `bs` bytes into `buf`.
            unsafe { libc::preadv(file.as_raw_fd(), &iov, 1, off) }
        };
        assert_eq!(n, bs as isize);
        bytes += bs;
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let mut img = tempfile::NamedTempFile::new().expect("temp file");
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..FILE_SIZE >> 20 {
        img.write_all(&chunk).expect("fill image");
    }
    img.as_file().sync_all().expect("sync image");
    println!(
        "virtio-blk device path vs host syscalls, {} MiB file in page cache; each side the \
         median of {ROUNDS} alternating {} ms runs",
        FILE_SIZE >> 20,
        RUN.as_millis()
    );
    println!(
        "{:<6} {:>8} {:>3} {:>12} {:>12} {:>7}",
        "op", "size", "qd", "device MB/s", "host MB/s", "ratio"
    );
    // `cargo bench ... -- read-4K-qd32` runs only the rows whose name contains the filter.
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    for write in [false, true] {
        for bs in [4096u64, 128 << 10] {
            for qd in [1u64, 32] {
                let op = if write { "write" } else { "read" };
                let name = format!("{op}-{}K-qd{qd}", bs >> 10);
                if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
                    continue;
                }
                let (mut hs, mut ds) = (Vec::new(), Vec::new());
                for round in 0..ROUNDS {
                    if round % 2 == 0 {
                        hs.push(host(img.as_file(), bs, qd, write));
                        ds.push(device(img.path(), bs, qd, write));
                    } else {
                        ds.push(device(img.path(), bs, qd, write));
                        hs.push(host(img.as_file(), bs, qd, write));
                    }
                }
                let (h, dv) = (median(hs), median(ds));
                println!(
                    "{:<6} {:>7}K {:>3} {:>12.0} {:>12.0} {:>6.0}%",
                    op,
                    bs >> 10,
                    qd,
                    dv / 1e6,
                    h / 1e6,
                    100.0 * dv / h
                );
            }
        }
    }
}
