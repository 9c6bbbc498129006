//! System Management Mode on the Q35 platform, with the `smm` guest as the system ROM
//! (`--bios` with `--smm`): it installs an SMI handler at SMBASE+0x8000, raises SMIs
//! through port 0xB2 once SMI_EN allows them, and checks from inside and outside SMM that
//! TSEG, once enabled and locked through the MCH, is SMM's alone. Its report (see
//! `tests/guests/smm.S`) must match QEMU's `-M q35,smm=on` line for line, but for the one
//! place where Hospes follows the ICH9 datasheet instead of QEMU (GBL_SMI_EN gates APM SMIs).
//!
//! The guest needs a KVM with SMM (KVM_CAP_X86_SMM, address space 1). The nested,
//! software-assisted KVM of the development machines offers neither (KVM_CAP_X86_SMM is 0,
//! an address-space-1 memory slot is refused, KVM_SMI is not implemented; it also cannot
//! run the guest's switch to unreal mode), so the Hospes run is in the slow tier, for a
//! laptop with VT-x/AMD-V. QEMU runs the guest under TCG anywhere, which keeps the
//! reference report checked on every run.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use hospes_tests::{GuestKind, build_guest, rom_image, run_vmm, skip_without_kvm, wait_timeout};

const TIMEOUT: Duration = Duration::from_secs(30);

/// What the guest prints on every machine with SMM, up to the SMI_EN check.
const COMMON: [&str; 9] = [
    "SMM TEST",
    "TSEG open=0000cafe",
    "SMI apm=00000011 tseg=0000cafe",
    "BACK count=00000001",
    "SMRAM=0000001a ESMRAMC=0000003f",
    "TSEG hidden=ffffffff",
    "SMI apm=00000022 tseg=0000beef",
    "BACK count=00000002",
    "TSEG locked=ffffffff",
];

/// The full report: `COMMON`, then what a 0xB2 write does with GBL_SMI_EN clear and
/// APMC_EN set: nothing on Hospes (ICH9 datasheet §13.8.3.12), an SMI on QEMU (its ICH9
/// model looks at APMC_EN alone).
fn expected(qemu: bool) -> Vec<String> {
    let mut lines: Vec<String> = COMMON.iter().map(|l| (*l).to_owned()).collect();
    if qemu {
        lines.push("SMI apm=00000033 tseg=0000beef".into());
        lines.push("BACK count=00000003".into());
    } else {
        lines.push("BACK count=00000002".into());
    }
    lines.push("DONE".into());
    lines
}

/// The report's lines, from "SMM TEST" to "DONE".
fn report(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim_end)
        .skip_while(|l| *l != "SMM TEST")
        .scan(false, |done, l| {
            if *done {
                return None;
            }
            *done = l == "DONE";
            Some(l.to_owned())
        })
        .collect()
}

/// The guest as QEMU's q35 machine with SMM runs it under TCG (any host), 256 MiB of RAM,
/// killed once it printed DONE (QEMU powers off on another sleep type).
fn qemu_report(rom: &std::path::Path) -> Vec<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-M",
            "q35,smm=on",
            "-m",
            "256",
            "-nodefaults",
        ])
        .args(["-display", "none", "-serial", "stdio", "-bios"])
        .arg(rom)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "qemu-system-x86_64 (Debian package qemu-system-x86) is installed by the test command",
        );
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("DONE") {
                break;
            }
        }
        text
    });
    // QEMU stays up after DONE; the reader ends at DONE or when QEMU dies.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = wait_timeout(&mut child, Duration::from_secs(5));
    report(&reader.join().unwrap_or_default())
}

#[test]
fn the_smm_guest_reports_smram_and_smis_under_qemu() {
    let guest = build_guest("smm", GuestKind::Rom);
    let rom = rom_image(&guest);
    assert_eq!(qemu_report(&rom), expected(true));
}

#[test]
#[ignore = "slow tier: needs a KVM with SMM (VT-x/AMD-V); this nested KVM has none (KVM_CAP_X86_SMM = 0)"]
fn tseg_is_smms_alone_once_locked_and_smis_reach_the_handler() {
    if skip_without_kvm() {
        return;
    }
    let guest = build_guest("smm", GuestKind::Rom);
    let rom = rom_image(&guest);
    let rom_arg = rom.to_string_lossy();
    let run = run_vmm(
        &[
            "--bios", &rom_arg, "--smm", "-m", "256M", "--no-rng", "--serial", "stdio",
        ],
        TIMEOUT,
    );
    assert!(run.success(), "the guest powers itself off: {run:?}");
    let ours = report(&run.stdout);
    assert_eq!(ours, expected(false), "{run:?}");
    // The same machine under QEMU agrees on every line both define alike.
    let theirs = qemu_report(&rom);
    assert_eq!(ours[..COMMON.len()], theirs[..COMMON.len()]);
}
