//! Firmware boot on the Q35 platform: Debian's SeaBIOS (package `seabios`, installed by
//! the test command) boots a disk whose first sector is the `bootsector` guest, which
//! prints what the BIOS handed it (boot drive, INT 12h, the INT 15h E820 map) and powers
//! the machine off. The same disk under QEMU's q35 machine must print the same lines.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hospes_tests::{GuestKind, build_guest, run_vmm, skip_without_kvm, wait_timeout};

/// SeaBIOS takes about 1.5 s to reach a boot sector on this nested KVM; leave room.
const TIMEOUT: Duration = Duration::from_secs(90);
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// A 1 MiB raw disk whose first sector is the boot-sector guest.
fn boot_disk(dir: &Path) -> PathBuf {
    let guest = build_guest("bootsector", GuestKind::BootSector);
    let mut image = std::fs::read(&guest.path).expect("read the boot sector");
    assert_eq!(image.len(), 512, "the boot sector guest is one sector");
    image.resize(1 << 20, 0);
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, image).expect("write the disk image");
    disk
}

/// The lines from "BOOT" to "DONE".
fn report(out: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.starts_with("BOOT"))
        .take_while(|l| !l.starts_with("DONE"))
        .map(|l| l.trim_end().to_owned())
        .collect()
}

/// `report` with what depends on the size of the VMM's own tables left out: SeaBIOS
/// reserves room at the top of low RAM for the tables it was handed (ACPI, SMBIOS), which
/// differ in size between Hospes and QEMU, so the RAM entry at 1 MiB keeps its base and
/// the reserved entries between it and the end of low RAM keep only their type.
fn comparable(lines: &[String], low_end: u64) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let base = fields.get(1).and_then(|b| u64::from_str_radix(b, 16).ok());
            match (fields.as_slice(), base) {
                (["E820", b, _, kind], Some(0x10_0000)) => format!("E820 {b} * {kind}"),
                (["E820", _, _, kind], Some(base)) if (0x10_0000..low_end).contains(&base) => {
                    format!("E820 * * {kind}")
                }
                _ => l.clone(),
            }
        })
        .collect()
}

/// QEMU's q35 machine with SeaBIOS on the same disk (on its AHCI controller), until the
/// guest prints DONE (QEMU's ICH9 powers off on a different sleep type, so it is killed).
fn qemu_report(disk: &Path, memory: &str) -> Vec<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-M", "q35", "-m", memory, "-nodefaults"])
        .args(["-display", "none", "-serial", "stdio", "-bios", SEABIOS])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=none,id=d", disk.display()))
        .args(["-device", "ide-hd,drive=d,bus=ide.0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "qemu-system-x86_64 (Debian package qemu-system-x86) is installed by the test command",
        );
    let out = child.stdout.take().expect("QEMU's stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            text.push_str(&l);
            text.push('\n');
            if l.starts_with("DONE") {
                break;
            }
        }
        text
    });
    let deadline = Instant::now() + TIMEOUT;
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = wait_timeout(&mut child, TIMEOUT);
    report(&reader.join().expect("QEMU reader"))
}

#[test]
fn seabios_boots_a_disk_and_hands_the_boot_sector_what_qemu_hands_it() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = boot_disk(dir.path());
    let disk_arg = disk.display().to_string();
    let run = run_vmm(
        &[
            "--bios", SEABIOS, "--disk", &disk_arg, "-m", "256M", "--no-rng", "--serial", "stdio",
        ],
        TIMEOUT,
    );
    assert!(run.success(), "the guest powers itself off: {run:?}");
    let ours = report(&run.stdout);
    assert_eq!(
        ours.first().map(String::as_str),
        Some("BOOT drive=80"),
        "{run:?}"
    );
    assert!(
        ours.contains(&"INT12 027F".to_owned()),
        "639 KiB below the EBDA: {ours:?}"
    );
    let ram = ours
        .iter()
        .find(|l| l.starts_with("E820 0000000000100000 "))
        .unwrap_or_else(|| panic!("RAM above 1 MiB in the E820 map: {ours:?}"));
    assert!(ram.ends_with(" 01"), "{ram}");

    let qemu = qemu_report(&disk, "256M");
    assert!(!qemu.is_empty(), "QEMU ran the same boot sector");
    assert_eq!(
        comparable(&ours, 256 << 20),
        comparable(&qemu, 256 << 20),
        "the BIOS hands the guest the same things under both"
    );
    // Low RAM ends at 256 MiB under both: the last entry below it ends there.
    let low_end = |lines: &[String]| {
        lines
            .iter()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let base = u64::from_str_radix(f.get(1)?, 16).ok()?;
                let len = u64::from_str_radix(f.get(2)?, 16).ok()?;
                (base < 256 << 20).then_some(base + len)
            })
            .max()
    };
    assert_eq!(low_end(&ours), Some(256 << 20), "{ours:?}");
    assert_eq!(low_end(&qemu), Some(256 << 20), "{qemu:?}");
}

/// Runs the helper with `HOSPES_LOG=info` until it exits (or the deadline kills it):
/// (exited by itself with success, stdout, stderr).
fn run_logged(args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(hospes_tests::vmm_binary())
        .args(args)
        .env("HOSPES_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hospes-vmm");
    let drain = |r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(r).read_to_string(&mut text);
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_timeout(&mut child, TIMEOUT);
    (
        status.is_some_and(|s| s.success()),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

#[test]
fn seabios_loads_the_acpi_tables_hospes_hands_it_through_the_table_loader() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = boot_disk(dir.path());
    let disk_arg = disk.display().to_string();
    let (ok, stdout, stderr) = run_logged(&[
        "--bios", SEABIOS, "--disk", &disk_arg, "-m", "256M", "--no-rng", "--serial", "stdio",
    ]);
    assert!(ok, "the guest powers itself off: {stdout}\n{stderr}");
    assert!(stdout.contains("BOOT drive=80"), "{stdout}");
    let log: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once("firmware: ").map(|(_, m)| m))
        .collect();
    let has = |text: &str| log.iter().any(|l| l.contains(text));
    // etc/table-loader is there: SeaBIOS moves the PM block where the FADT says.
    assert!(has("Moving pm_base to 0x600"), "{log:#?}");
    // It found the FADT through the RSDP it loaded into the F-segment and the XSDT...
    assert!(
        log.iter()
            .any(|l| l.starts_with("table(50434146)=") && l.ends_with("(via xsdt)")),
        "{log:#?}"
    );
    // ... and parsed the DSDT the FADT points at, which lists the PS/2 keyboard
    // (SeaBIOS leaves the keyboard alone when a DSDT lacks PNP0303).
    assert!(has("ACPI: parse DSDT at"), "{log:#?}");
    assert!(has("PS2 keyboard initialized"), "{log:#?}");
    // No complaint from the loader, and none of SeaBIOS's built-in fallback tables.
    for bad in [
        "internal error",
        "ACPI DSDT=",
        "Copying ACPI RSDP",
        "not supported",
    ] {
        assert!(!has(bad), "{bad}: {log:#?}");
    }
}

#[test]
fn a_vm_without_installed_firmware_says_which_package_to_install() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vm.ron"),
        "(version: 1, name: \"bios\", os: Linux, cpus: 1, memory: \"64M\", \
         boot: Bios(firmware: None), display: (enabled: false))\n",
    )
    .unwrap();
    let out = Command::new(hospes_tests::vmm_binary())
        .arg("--config")
        .arg(dir.path().join("vm.ron"))
        .env("HOSPES_FIRMWARE_PATH", dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run hospes-vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("apt install seabios"), "{stderr}");
}
