//! `cargo run --release -p hospes-tests --bin save_bench`: saving a VM to a file and
//! resuming it, hospes-vmm (`hospes-save` to `--state FILE`, then a start with it) against
//! QEMU (`migrate "exec:cat > FILE"`, then `-incoming "exec:cat FILE"`) on the same guest
//! in the same run. Prints a table; asserts nothing.
//!
//! The guest (`tests/guests/count.S`, built with FILL_MIB) writes a non-zero pattern over
//! FILL MiB of its RAM, then counts on COM1. Save: from the command to the file complete
//! (hospes: `SAVE_COMPLETED`'s `ms` and the wall time until the helper exited; QEMU:
//! `query-migrate` reporting `completed`). Resume: from spawning the process on the file to
//! the guest's next count line in its serial file (process start, loading, first guest
//! steps). Throughput is the guest's dirty RAM (FILL MiB) over that time. The file is
//! written to the page cache (as a person's save is): the figures say how fast the VMM
//! gets memory out and in, not how fast the disk is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hospes_core::control::client::QmpClient;
use hospes_tests::save::counts;
use hospes_tests::{GuestKind, build_guest_with, vmm_binary};
use serde_json::json;

const MEMORY: &str = "1G";
const FILL_MIB: u64 = 512;
const RUNS: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(120);

struct Figures {
    save_ms: f64,
    resume_ms: f64,
    file_bytes: u64,
}

fn spawn(mut cmd: Command) -> Option<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Waits until `serial` holds at least `n` complete count lines.
fn wait_counts(serial: &Path, n: usize) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if counts(&text).len() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

fn connect(qmp: &Path) -> Option<QmpClient> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match QmpClient::connect(qmp) {
            Ok(c) => return Some(c),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return None,
        }
    }
}

fn finish(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn hospes(guest: &Path, dir: &Path, run: usize) -> Option<Figures> {
    let state = dir.join(format!("hospes-{run}.state"));
    let start = |tag: &str| {
        let serial = dir.join(format!("hospes-{run}-{tag}.txt"));
        let qmp = dir.join(format!("hospes-{run}-{tag}.sock"));
        let mut c = Command::new(vmm_binary());
        c.arg("--kernel")
            .arg(guest)
            .args(["-m", MEMORY, "--no-rng"])
            .arg("--serial")
            .arg(format!("file:{}", serial.display()))
            .arg("--qmp")
            .arg(format!("unix:{}", qmp.display()))
            .arg("--state")
            .arg(&state);
        (c, serial, qmp)
    };
    let (cmd, serial, qmp) = start("first");
    let mut child = spawn(cmd)?;
    let figures = (|| {
        if !wait_counts(&serial, 2) {
            return None;
        }
        let mut client = connect(&qmp)?;
        let sent = Instant::now();
        let report = client.save(TIMEOUT, |_, _| {}).ok()?;
        child.wait().ok()?;
        let save_ms = sent.elapsed().as_secs_f64() * 1000.0;
        eprintln!(
            "hospes run {run}: SAVE_COMPLETED {} ms, helper gone after {save_ms:.0} ms",
            report.ms
        );
        let (cmd, serial, qmp) = start("resumed");
        let spawned = Instant::now();
        let resumed = spawn(cmd)?;
        let ok = wait_counts(&serial, 1);
        let resume_ms = spawned.elapsed().as_secs_f64() * 1000.0;
        if let Some(mut c) = connect(&qmp) {
            let _ = c.quit();
        }
        finish(resumed);
        ok.then_some(Figures {
            save_ms,
            resume_ms,
            file_bytes: report.bytes,
        })
    })();
    let _ = std::fs::remove_file(&state);
    figures
}

fn qemu(guest: &Path, dir: &Path, run: usize) -> Option<Figures> {
    let state = dir.join(format!("qemu-{run}.state"));
    let start = |tag: &str, incoming: bool| {
        let serial = dir.join(format!("qemu-{run}-{tag}.txt"));
        let qmp = dir.join(format!("qemu-{run}-{tag}.sock"));
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-accel", "kvm", "-M", "microvm", "-m", MEMORY])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-kernel")
            .arg(guest);
        if incoming {
            c.arg("-incoming")
                .arg(format!("exec:cat {}", state.display()));
        }
        (c, serial, qmp)
    };
    let (cmd, serial, qmp) = start("first", false);
    let child = spawn(cmd)?;
    let figures = (|| {
        if !wait_counts(&serial, 2) {
            return None;
        }
        let mut client = connect(&qmp)?;
        let sent = Instant::now();
        let uri = format!("exec:cat > {}", state.display());
        client
            .execute("migrate", Some(json!({ "uri": uri })))
            .ok()?;
        loop {
            let info = client.execute("query-migrate", None).ok()?;
            match info["status"].as_str() {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => return None,
                _ if sent.elapsed() > TIMEOUT => return None,
                _ => std::thread::sleep(Duration::from_micros(500)),
            }
        }
        let save_ms = sent.elapsed().as_secs_f64() * 1000.0;
        let _ = client.quit();
        let file_bytes = std::fs::metadata(&state).ok()?.len();
        let (cmd, serial, qmp) = start("resumed", true);
        let spawned = Instant::now();
        let resumed = spawn(cmd)?;
        let ok = wait_counts(&serial, 1);
        let resume_ms = spawned.elapsed().as_secs_f64() * 1000.0;
        if let Some(mut c) = connect(&qmp) {
            let _ = c.quit();
        }
        finish(resumed);
        ok.then_some(Figures {
            save_ms,
            resume_ms,
            file_bytes,
        })
    })();
    finish(child);
    let _ = std::fs::remove_file(&state);
    figures
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn main() {
    let fill = format!("FILL_MIB={FILL_MIB}");
    let g = build_guest_with("count", GuestKind::Pvh, &[fill.as_str()]);
    let dir: PathBuf = g.dir.path().to_path_buf();
    println!(
        "guest: {MEMORY} of RAM, {FILL_MIB} MiB of it written; median of {RUNS} runs; GiB/s = {FILL_MIB} MiB / time"
    );
    println!(
        "{:<34} {:>9} {:>8} {:>10} {:>8} {:>11}",
        "save / resume", "save ms", "GiB/s", "resume ms", "GiB/s", "file MiB"
    );
    let gib = FILL_MIB as f64 / 1024.0;
    for who in [
        "hospes-vmm hospes-save / --state",
        "qemu migrate exec: / -incoming",
    ] {
        let mut rows = Vec::new();
        for run in 0..RUNS {
            let f = match who.starts_with("hospes") {
                true => hospes(&g.path, &dir, run),
                false => qemu(&g.path, &dir, run),
            };
            rows.extend(f);
        }
        let save = median(rows.iter().map(|f| f.save_ms).collect());
        let resume = median(rows.iter().map(|f| f.resume_ms).collect());
        let size = median(rows.iter().map(|f| f.file_bytes as f64).collect());
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
        let rate = |v: Option<f64>| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{:.2}", gib / (v / 1000.0)))
        };
        let mib = size.map_or_else(|| "-".to_owned(), |s| format!("{:.0}", s / 1048576.0));
        println!(
            "{who:<34} {:>9} {:>8} {:>10} {:>8} {:>11}",
            ms(save),
            rate(save),
            ms(resume),
            rate(resume),
            mib
        );
    }
}
