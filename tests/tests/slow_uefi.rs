//! Slow tier (opt-in, `cargo test -p hospes-tests --test slow_uefi -- --ignored`): Debian's
//! OVMF (package `ovmf`) boots on hospes-vmm from a vm.ron with `boot: Uefi(..)` and no
//! disk, and reaches its boot manager: with nothing to boot it says so, or starts the
//! built-in UEFI shell. Designed for a laptop with VT-x/AMD-V; a nested KVM that cannot
//! emulate OVMF's first x87 instructions stops in SEC (see `firmware.rs`).
//!
//! Data flow: COM1 (the helper's stdout, where OVMF's console goes without a display) and
//! the helper's log (stderr, with OVMF's port 0x402 lines as `firmware: ...`) are read as
//! they come; the test ends as soon as either shows the boot manager, or at the deadline.

use std::io::Read;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hospes_tests::{skip_without_kvm, uefi_vm, wait_timeout};

/// OVMF takes a few seconds to reach BDS on a laptop; leave room.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What OVMF prints when it reaches the boot manager with no disk: BdsDxe's "No bootable
/// option or device was found." or the shell it then starts.
const BOOT_MANAGER: [&str; 3] = ["No bootable option", "UEFI Interactive Shell", "Shell>"];

/// Sends what `r` yields, chunk by chunk, until end of file (the prompt ends in no newline,
/// so chunks rather than lines).
fn forward(mut r: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
}

#[test]
#[ignore = "slow tier: needs OVMF (Debian package ovmf) and a KVM with VT-x/AMD-V"]
fn ovmf_reaches_its_boot_manager_with_no_disk() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = uefi_vm(dir.path(), 2, "512M")
        .spawn()
        .expect("spawn hospes-vmm");
    let (tx, rx) = mpsc::channel();
    forward(child.stdout.take().unwrap(), tx.clone());
    forward(child.stderr.take().unwrap(), tx);

    let start = Instant::now();
    let deadline = start + TIMEOUT;
    let mut seen = String::new();
    let reached = loop {
        if let Some(marker) = BOOT_MANAGER.iter().find(|m| seen.contains(*m)) {
            break Some(*marker);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&chunk),
            // The deadline passed, or the helper exited and both streams ended.
            Err(_) => break None,
        }
    };
    let elapsed = start.elapsed();
    let _ = child.kill();
    let _ = wait_timeout(&mut child, Duration::from_secs(5));
    eprintln!("OVMF's boot manager: {reached:?} after {elapsed:?}");
    assert!(
        reached.is_some(),
        "OVMF did not reach its boot manager (the helper stopped, or {TIMEOUT:?} passed) \
         in {elapsed:?}; it printed:\n{seen}"
    );
    assert!(
        dir.path().join("OVMF_VARS.fd").is_file(),
        "the VM's variable store"
    );
}
