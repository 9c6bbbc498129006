//! Slow tier (opt-in, `cargo test -p hospes-tests --test slow_uefi -- --ignored`): Debian's
//! OVMF (package `ovmf`) boots on hospes-vmm from a vm.ron with `boot: Uefi(..)` and no
//! disk, and reaches its boot manager: with nothing to boot it says so, or starts the
//! built-in UEFI shell. Designed for a laptop with VT-x/AMD-V; a nested KVM that cannot
//! emulate OVMF's first x87 instructions stops in SEC (see `firmware.rs`).
//!
//! With `secure_boot: true` the helper boots Debian's Secure Boot build
//! (`OVMF_CODE_4M.secboot.fd`, which needs SMM) with a store made from
//! `OVMF_VARS_4M.ms.fd` (Microsoft's keys enrolled). Debian's OVMF is a release build
//! (nothing on port 0x402), but its boot manager tells on COM1: with Secure Boot enforcing
//! it refuses to start its own unsigned UEFI shell ("failed to start Boot0001 "EFI Internal
//! Shell" ...: Security Violation") and finds nothing else to boot; the same build without
//! keys starts the shell. QEMU (`-M q35,smm=on`, `cfi.pflash01` `secure=on`) prints those
//! lines under TCG on any host, which is where the markers come from.
//!
//! Data flow: COM1 (the helper's stdout, where OVMF's console goes without a display) and
//! the helper's log (stderr, with OVMF's port 0x402 lines as `firmware: ...`) are read as
//! they come; the test ends as soon as either shows the boot manager, or at the deadline.

use std::io::Read;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hospes_tests::{skip_without_kvm, uefi_vm, uefi_vm_with, wait_timeout};

/// OVMF takes a few seconds to reach BDS on a laptop; leave room.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What OVMF prints when it reaches the boot manager with no disk: BdsDxe's "No bootable
/// option or device was found." or the shell it then starts.
const BOOT_MANAGER: [&str; 3] = ["No bootable option", "UEFI Interactive Shell", "Shell>"];

/// What Debian's Secure Boot OVMF prints on COM1 when it refuses its unsigned shell.
const SECURITY_VIOLATION: &str = "Security Violation";
/// ... and when it has given up on every boot option.
const NOTHING_TO_BOOT: &str = "No bootable option";

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
    let (seen, elapsed) = watch(&mut child, |s| BOOT_MANAGER.iter().any(|m| s.contains(m)));
    let reached = BOOT_MANAGER.iter().find(|m| seen.contains(*m));
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

/// Reads both streams of `child` into one text until `done` says so, the streams end or
/// `TIMEOUT` passes; kills the helper and returns the text with the time taken.
fn watch(child: &mut std::process::Child, done: impl Fn(&str) -> bool) -> (String, Duration) {
    let (tx, rx) = mpsc::channel();
    forward(child.stdout.take().expect("piped"), tx.clone());
    forward(child.stderr.take().expect("piped"), tx);
    let start = Instant::now();
    let deadline = start + TIMEOUT;
    let mut seen = String::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&chunk),
            Err(_) => break,
        }
    }
    let elapsed = start.elapsed();
    let _ = child.kill();
    let _ = wait_timeout(child, Duration::from_secs(5));
    (seen, elapsed)
}

#[test]
#[ignore = "slow tier: needs OVMF (Debian package ovmf) and a KVM with VT-x/AMD-V and SMM"]
fn secure_boot_ovmf_with_microsofts_keys_enforces_secure_boot() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = uefi_vm_with(dir.path(), 2, "512M", true)
        .spawn()
        .expect("spawn hospes-vmm");
    let (seen, elapsed) = watch(&mut child, |s| s.contains(NOTHING_TO_BOOT));
    eprintln!("Secure Boot OVMF, {elapsed:?}:\n{seen}");
    assert!(
        seen.contains("SMM on"),
        "the helper gave the machine SMM:\n{seen}"
    );
    let refused = seen
        .lines()
        .any(|l| l.contains("EFI Internal Shell") && l.contains(SECURITY_VIOLATION));
    assert!(
        refused,
        "Secure Boot refuses the unsigned shell (within {TIMEOUT:?}); OVMF printed:\n{seen}"
    );
    assert!(
        !seen.contains("UEFI Interactive Shell"),
        "the unsigned shell must not run with Secure Boot on:\n{seen}"
    );
    let store = std::fs::read(dir.path().join("OVMF_VARS.fd")).expect("the VM's store");
    let pk: Vec<u8> = "PK\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert!(
        store.windows(pk.len()).any(|w| w == pk),
        "the store came from the template with keys (it holds PK)"
    );
}
