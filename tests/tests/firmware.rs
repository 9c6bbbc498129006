//! Firmware boot on the Q35 platform: Debian's SeaBIOS (package `seabios`, installed by
//! the test command) boots a disk whose first sector is the `bootsector` guest, which
//! prints what the BIOS handed it (boot drive, INT 12h, the INT 15h E820 map) and powers
//! the machine off. The same disk under QEMU's q35 machine must print the same lines.
//! Debian's OVMF (package `ovmf`, installed by the test command) starts from a vm.ron
//! with `boot: Uefi(..)` on its two flash devices.

use std::io::{BufRead, BufReader};
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

const OVMF_VARS_TEMPLATE: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Where the 4 MiB OVMF build's CODE image starts (it ends at 4 GiB).
const OVMF_CODE_BASE: u64 = 0xffc8_4000;

/// The `rip 0x...` of the helper's vCPU error line.
fn error_rip(stderr: &str) -> Option<u64> {
    let at = stderr.rfind("rip 0x")? + "rip 0x".len();
    let hex: String = stderr[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&hex, 16).ok()
}

#[test]
fn uefi_boot_makes_the_vms_variable_store_and_runs_ovmf_from_its_flash() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.ron");
    std::fs::write(
        &config,
        "(version: 1, name: \"efi\", os: Linux, cpus: 1, memory: \"256M\", \
         boot: Uefi(firmware: None, tpm: false), network: None, display: (enabled: false))\n",
    )
    .unwrap();
    let mut child = Command::new(hospes_tests::vmm_binary())
        .arg("--config")
        .arg(&config)
        .arg("--no-rng")
        .env("HOSPES_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hospes-vmm");
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    // Here OVMF stops within a second (below); where it runs, it is still running.
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());

    // The first start made the VM's own variable store from the template, private to its
    // owner.
    let vars = dir.path().join("OVMF_VARS.fd");
    let store = std::fs::read(&vars).expect("the VM folder holds OVMF_VARS.fd");
    let template = std::fs::read(OVMF_VARS_TEMPLATE)
        .expect("OVMF (Debian package ovmf) is installed by the test command");
    assert_eq!(
        store.len(),
        template.len(),
        "a copy of {OVMF_VARS_TEMPLATE}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&vars).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Both flash devices are in place, where OVMF's 4 MiB layout has them.
    assert!(
        stderr.contains("UEFI flash: VARS at 0xffc00000 (528 KiB, writable), CODE at 0xffc84000"),
        "{stderr}"
    );

    match status {
        // This machine's nested KVM cannot run OVMF: it ends in an emulation failure at
        // an x87 instruction (FWAIT, FNINIT) early in OVMF's SEC phase, and QEMU stops at
        // the same address. OVMF prints nothing before that, so this test (and
        // only this one) accepts the vCPU error, provided the vCPU was running OVMF's
        // code from the CODE flash when it stopped.
        Some(s) => {
            assert!(!s.success(), "{stderr}");
            assert!(stderr.contains("KVM internal error"), "{stderr}");
            let rip = error_rip(&stderr).unwrap_or_else(|| panic!("no rip in: {stderr}"));
            assert!(
                (OVMF_CODE_BASE..1 << 32).contains(&rip),
                "OVMF's code ran from the CODE flash: rip {rip:#x}"
            );
            // OVMF wrote no variable before it stopped: the store is the template, and
            // a second start keeps what is there now.
            assert!(store == template, "a copy of {OVMF_VARS_TEMPLATE}");
            let mut mine = store;
            mine[0x1000] ^= 0xff;
            std::fs::write(&vars, &mine).unwrap();
            let again = run_vmm(&["--config", config.to_str().unwrap()], TIMEOUT);
            assert!(again.status.is_some(), "stops as the first start did");
            assert!(std::fs::read(&vars).unwrap() == mine, "not overwritten");
        }
        // A KVM that runs OVMF (VT-x, AMD-V): after 20 s it has written to the serial
        // console or the firmware log.
        None => assert!(
            !stdout.trim().is_empty() || stderr.contains("firmware: "),
            "OVMF said nothing in 20 s: {stderr}"
        ),
    }
}
