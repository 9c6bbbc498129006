//! The same tiny guest under hospes-vmm and under QEMU (microvm, PVH boot): what the guest
//! reads from the boot protocol must match. Skipped when QEMU or /dev/kvm is missing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hospes_tests::{GuestKind, build_guest, run_vmm, skip_without_kvm, wait_timeout};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs QEMU microvm on `kernel` until the guest prints a line starting with `last`
/// (QEMU's microvm has no PM1a block, so the guest cannot power it off), returning all
/// lines up to it, or None without QEMU.
fn qemu_lines(kernel: &str, initrd: &str, cmdline: &str, last: &str) -> Option<Vec<String>> {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-M",
            "microvm",
            "-nodefaults",
            "-no-user-config",
        ])
        .args([
            "-nographic",
            "-serial",
            "stdio",
            "-m",
            "64M",
            "-kernel",
            kernel,
        ])
        .args(["-initrd", initrd, "-append", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    let reader = std::thread::spawn({
        let last = last.to_string();
        move || {
            let mut lines = Vec::new();
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let done = l.starts_with(&last);
                lines.push(l);
                if done {
                    break;
                }
            }
            lines
        }
    });
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = wait_timeout(&mut child, TIMEOUT);
    reader.join().ok()
}

#[test]
fn pvh_boot_information_matches_qemu() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("pvh", GuestKind::Pvh);
    let initrd = g.dir.path().join("initrd");
    std::fs::write(&initrd, b"SAMEBYTES, same size").unwrap();
    let (kernel, rd) = (g.path.to_str().unwrap(), initrd.to_str().unwrap());
    let cmdline = "console=ttyS0 differential";
    let Some(qemu) = qemu_lines(kernel, rd, cmdline, "initrd:") else {
        eprintln!("skipped: qemu-system-x86_64 not available");
        return;
    };
    let ours = run_vmm(
        &[
            "--kernel",
            kernel,
            "--initrd",
            rd,
            "--cmdline",
            cmdline,
            "-m",
            "64M",
        ],
        TIMEOUT,
    );
    assert!(ours.success(), "{ours:?}");
    let ours: Vec<String> = ours.stdout.lines().map(str::to_string).collect();
    assert_eq!(ours, qemu);
    assert_eq!(ours.len(), 3, "{ours:?}");
}
