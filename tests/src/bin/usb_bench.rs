//! `cargo run --release -p hospes-tests --bin usb_bench`: the USB tablet's latency, from a
//! QMP pointer event to the report the guest reads, under hospes-vmm (`--usb`) and under
//! QEMU (q35, qemu-xhci, usb-tablet) in the same run. Prints a table; asserts nothing.
//!
//! The guest (`tests/guests/xhci.S`) polls the xHCI event ring for its interrupt IN
//! transfer and prints each report on COM1 as soon as it arrives; the latency is the time
//! from sending `input-send-event` (the left button down) to the report line with the
//! button bit appearing in the serial file, which this program polls every 200 µs. It
//! covers the helper's input path, the controller, the guest's polling loop and the serial
//! write, so on a slow nested KVM the guest's own speed dominates.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hospes_core::control::client::QmpClient;
use hospes_tests::{GuestKind, build_guest, vmm_binary, wait_for_text};
use serde_json::json;

const RUNS: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(60);

/// One run of `cmd`: milliseconds from the press to the guest's report of it.
fn one_run(mut cmd: Command, serial: &Path, qmp: &Path) -> Option<f64> {
    let mut vm: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let result = (|| {
        if !wait_for_text(serial, "READY", TIMEOUT).contains("READY") {
            return None;
        }
        let mut client = QmpClient::connect(qmp).ok()?;
        let press = json!({"events": [
            {"type": "abs", "data": {"axis": "x", "value": 0x1400}},
            {"type": "abs", "data": {"axis": "y", "value": 0x2800}},
            {"type": "btn", "data": {"down": true, "button": "left"}},
        ]});
        let sent = Instant::now();
        client.execute("input-send-event", Some(press)).ok()?;
        while sent.elapsed() < TIMEOUT {
            let text = std::fs::read_to_string(serial).unwrap_or_default();
            // "report cc 01 len 06: 01 ..." : the first report byte holds the buttons.
            let pressed = text.lines().any(|l| {
                l.starts_with("report")
                    && l.split(": ")
                        .nth(1)
                        .and_then(|b| u8::from_str_radix(b.get(..2)?, 16).ok())
                        .is_some_and(|b| b & 1 != 0)
            });
            if pressed {
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                let _ = client.execute("quit", None);
                return Some(ms);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        None
    })();
    let _ = vm.kill();
    let _ = vm.wait();
    result
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn main() {
    let g = build_guest("xhci", GuestKind::Pvh);
    let mut rows = Vec::new();
    for who in ["hospes-vmm --usb", "qemu q35 + qemu-xhci"] {
        let mut times = Vec::new();
        for run in 0..RUNS {
            let serial = g.dir.path().join(format!("serial-{run}.txt"));
            let qmp = g.dir.path().join(format!("qmp-{run}.sock"));
            let _ = std::fs::remove_file(&serial);
            let cmd = if who.starts_with("hospes") {
                let mut c = Command::new(vmm_binary());
                c.arg("--kernel")
                    .arg(&g.path)
                    .args(["-m", "64M", "--usb", "--no-rng"])
                    .arg("--serial")
                    .arg(format!("file:{}", serial.display()))
                    .arg("--qmp")
                    .arg(format!("unix:{}", qmp.display()));
                c
            } else {
                let mut c = Command::new("qemu-system-x86_64");
                c.args(["-accel", "kvm", "-accel", "tcg", "-M", "q35", "-m", "64M"])
                    .args(["-nodefaults", "-display", "none"])
                    .arg("-serial")
                    .arg(format!("file:{}", serial.display()))
                    .arg("-qmp")
                    .arg(format!("unix:{},server=on,wait=off", qmp.display()))
                    .arg("-kernel")
                    .arg(&g.path)
                    .args(["-device", "qemu-xhci", "-device", "usb-tablet"]);
                c
            };
            if let Some(ms) = one_run(cmd, &serial, &qmp) {
                times.push(ms);
            }
        }
        rows.push((who, times.len(), median(times)));
    }
    println!(
        "{:<24} {:>5} {:>22}",
        "tablet latency", "runs", "median press->report ms"
    );
    for (who, n, m) in rows {
        let shown = m.map_or_else(|| "-".to_owned(), |m| format!("{m:.2}"));
        println!("{who:<24} {n:>5} {shown:>22}");
    }
}
