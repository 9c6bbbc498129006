//! Firmware boot on the Q35 platform: Debian's SeaBIOS (package `seabios`, installed by
//! the test command) boots a disk whose first sector is the `bootsector` guest, which
//! prints what the BIOS handed it (boot drive, INT 12h, the INT 15h E820 map) and powers
//! the machine off. The same disk under QEMU's q35 machine must print the same lines.
//! Debian's OVMF (package `ovmf`, installed by the test command) starts from a vm.ron
//! with `boot: Uefi(..)` on its two flash devices.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hospes_core::control::client::QmpClient;
use hospes_tests::{
    boot_disk, boot_iso, read_png, run_vmm, skip_without_kvm, uefi_vm, vmm_binary, wait_for_text,
    wait_timeout,
};

/// SeaBIOS takes about 1.5 s to reach a boot sector on this nested KVM; leave room.
const TIMEOUT: Duration = Duration::from_secs(90);
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// The lines from "BOOT" to "DONE" (the firmware's own console output may precede "BOOT"
/// on its line: without a display SeaBIOS writes its screen to COM1 too).
fn report(out: &str) -> Vec<String> {
    let start = out.find("BOOT drive=").unwrap_or(out.len());
    out[start..]
        .lines()
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

/// Runs hospes-vmm with Debian's SeaBIOS, no display and `args`, until the boot sector
/// powers the VM off; returns the run and its report, which starts with the boot drive.
fn seabios_run(args: &[&str], drive: &str) -> (hospes_tests::RunOutput, Vec<String>) {
    let mut all = vec!["--bios", SEABIOS, "--no-rng", "--serial", "stdio"];
    all.extend_from_slice(args);
    let run = run_vmm(&all, TIMEOUT);
    assert!(run.success(), "the guest powers itself off: {run:?}");
    let ours = report(&run.stdout);
    let first = format!("BOOT drive={drive}");
    assert_eq!(ours.first(), Some(&first), "{run:?}");
    (run, ours)
}

/// QEMU's q35 machine with Debian's SeaBIOS, no display window and `memory` of RAM; add
/// devices, `-vga std`, `-serial`, `-qmp` to it.
fn qemu_q35(memory: &str) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "kvm", "-M", "q35", "-m", memory, "-nodefaults"])
        .args(["-display", "none", "-bios", SEABIOS])
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    qemu
}

/// `qemu` with a raw disk image on the AHCI controller's port 0.
fn qemu_disk(qemu: &mut Command, disk: &Path) {
    qemu.arg("-drive")
        .arg(format!("file={},format=raw,if=none,id=d", disk.display()))
        .args(["-device", "ide-hd,drive=d,bus=ide.0"]);
}

/// `qemu` with an ISO in a CD drive on the AHCI controller's port `port`.
fn qemu_cdrom(qemu: &mut Command, iso: &Path, port: u8) {
    qemu.arg("-drive")
        .arg(format!("file={},media=cdrom,if=none,id=c", iso.display()))
        .arg("-device")
        .arg(format!("ide-cd,drive=c,bus=ide.{port}"));
}

const QEMU_MISSING: &str =
    "qemu-system-x86_64 (Debian package qemu-system-x86) is installed by the test command";

/// QEMU's q35 machine with SeaBIOS on the same disk (on its AHCI controller) and CD, until
/// the guest prints DONE (QEMU's ICH9 powers off on a different sleep type, so it is killed).
fn qemu_report(disk: Option<&Path>, cdrom: Option<&Path>, memory: &str) -> Vec<String> {
    let mut qemu = qemu_q35(memory);
    qemu.args(["-serial", "stdio"]).stdout(Stdio::piped());
    if let Some(disk) = disk {
        qemu_disk(&mut qemu, disk);
    }
    if let Some(iso) = cdrom {
        qemu_cdrom(&mut qemu, iso, 1);
        qemu.args(["-boot", "d"]);
    }
    let mut child = qemu.spawn().expect(QEMU_MISSING);
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
    let disk = boot_disk(dir.path(), &[]);
    let disk_arg = disk.display().to_string();
    let (_, ours) = seabios_run(&["--disk", &disk_arg, "-m", "256M"], "80");
    assert!(
        ours.contains(&"INT12 027F".to_owned()),
        "639 KiB below the EBDA: {ours:?}"
    );
    let ram = ours
        .iter()
        .find(|l| l.starts_with("E820 0000000000100000 "))
        .unwrap_or_else(|| panic!("RAM above 1 MiB in the E820 map: {ours:?}"));
    assert!(ram.ends_with(" 01"), "{ram}");

    let qemu = qemu_report(Some(&disk), None, "256M");
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
    let disk = boot_disk(dir.path(), &[]);
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

#[test]
fn seabios_boots_the_install_cd_on_the_sata_controller_before_the_sata_disk() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = boot_disk(dir.path(), &[]);
    let iso = boot_iso(dir.path(), &[]);
    let (disk_arg, iso_arg) = (disk.display().to_string(), iso.display().to_string());
    // 0xe0: the first CD-ROM drive, as SeaBIOS numbers El Torito no-emulation boots.
    let (_, ours) = seabios_run(
        &["--sata", &disk_arg, "--cdrom", &iso_arg, "-m", "256M"],
        "E0",
    );
    let qemu = qemu_report(Some(&disk), Some(&iso), "256M");
    assert_eq!(
        comparable(&ours, 256 << 20),
        comparable(&qemu, 256 << 20),
        "the BIOS hands the CD's boot image the same things under both"
    );
}

#[test]
fn seabios_boots_a_disk_on_the_sata_controller() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = boot_disk(dir.path(), &[]);
    let disk_arg = disk.display().to_string();
    // The only disk is on the SATA controller, so this boot read it through AHCI.
    let (_, ours) = seabios_run(&["--sata", &disk_arg, "-m", "128M"], "80");
    assert!(ours.iter().any(|l| l.starts_with("E820 ")), "{ours:?}");
}

/// The SMBIOS UUID both machines report, so SeaBIOS prints the same line under both.
const UUID: &str = "0d475e6f-6592-51ec-a52f-7d556bdbdc48";

/// Waits for DONE on the serial file, then takes a screendump through QMP at `qmp` into
/// `png` and ends the VM.
fn screendump_after_done(serial: &Path, qmp: &Path, png: &Path, png_format: bool) {
    wait_for_text(serial, "DONE", TIMEOUT);
    let mut screen = Screen::connect(qmp, png.to_path_buf(), png_format);
    screen.grab().expect("screendump");
    let _ = screen.client.quit();
}

/// Boots `disk` under Hospes (std-VGA, its VGA BIOS) and under QEMU's q35 (-vga std, the
/// same firmware and UUID), and returns both screens once the guest printed DONE:
/// (width, height, our pixels, QEMU's pixels). A guest left for inspection keeps `dir`.
fn screens_under_both(dir: &Path, disk: &Path) -> (u32, u32, Vec<u32>, Vec<u32>) {
    let ours_png = dir.join("hospes.png");
    let qemu_png = dir.join("qemu.png");
    let (serial, qmp) = (dir.join("serial.txt"), dir.join("qmp.sock"));
    let mut ours = Command::new(vmm_binary())
        .args([
            "--bios",
            SEABIOS,
            "-m",
            "128M",
            "--no-rng",
            "--display",
            "std-vga",
        ])
        .arg("--disk")
        .arg(disk)
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--qmp")
        .arg(format!("unix:{}", qmp.display()))
        .args(["--name", "vga", "--uuid", UUID])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hospes-vmm");
    screendump_after_done(&serial, &qmp, &ours_png, false);
    let _ = wait_timeout(&mut ours, TIMEOUT);

    let (qserial, qqmp) = (dir.join("qserial.txt"), dir.join("qqmp.sock"));
    let mut qemu = qemu_q35("128M");
    qemu.args(["-vga", "std", "-uuid", UUID]);
    qemu_disk(&mut qemu, disk);
    qemu.arg("-serial")
        .arg(format!("file:{}", qserial.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server,nowait", qqmp.display()));
    let mut qemu = qemu.spawn().expect(QEMU_MISSING);
    screendump_after_done(&qserial, &qqmp, &qemu_png, true);
    let _ = wait_timeout(&mut qemu, TIMEOUT);

    let (w, h, ours) = read_png(&ours_png);
    let (qw, qh, theirs) = read_png(&qemu_png);
    assert_eq!((qw, qh), (w, h), "QEMU's screen has the same size");
    (w, h, ours, theirs)
}

/// Every pixel of our screen is QEMU's; on a difference both screenshots are kept.
fn assert_same_screen(ours: &[u32], theirs: &[u32], dir: tempfile::TempDir) {
    let differing = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
    assert_eq!(
        differing,
        0,
        "pixels that differ from QEMU's screen (saved in {})",
        dir.keep().display()
    );
}

#[test]
fn the_bios_and_a_boot_sector_text_screen_show_as_under_qemu() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // SeaBIOS prints its banner in text mode; the boot sector goes through a VBE mode of
    // the VGA BIOS and back to text mode, then writes a line into 0xb8000.
    let disk = boot_disk(dir.path(), &["VGA_TEXT"]);
    let (w, h, ours, theirs) = screens_under_both(dir.path(), &disk);
    assert_eq!((w, h), (720, 400), "80x25 text with 9x16 cells");
    // The boot sector's line: white on blue at row 10, column 10.
    let at = |x: u32, y: u32| ours[(y * w + x) as usize];
    assert_eq!(
        at(10 * 9, 10 * 16),
        0x0000_00a8,
        "blue background of the line"
    );
    let lit = (0..16)
        .flat_map(|y| (0..9 * 6).map(move |x| (x, y)))
        .filter(|&(x, y)| at(10 * 9 + x, 10 * 16 + y) == 0x00ff_ffff)
        .count();
    assert!(lit > 50, "white glyph pixels of \"Hospes\": {lit}");
    assert_same_screen(&ours, &theirs, dir);
}

#[test]
fn a_boot_sector_in_vga_mode_13h_shows_as_under_qemu() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = boot_disk(dir.path(), &["VGA_MODE13"]);
    let (w, h, ours, theirs) = screens_under_both(dir.path(), &disk);
    assert_eq!((w, h), (640, 400), "mode 13h: 320x200 pixels of 2x2 dots");
    // Four bands of 50 rows (100 lines): colours 1 (blue), 2 (green), 4 (red), 15 (white)
    // of the VGA BIOS's default palette.
    let at = |x: u32, y: u32| ours[(y * w + x) as usize];
    assert_eq!(
        [at(320, 50), at(320, 150), at(320, 250), at(320, 350)],
        [0x0000_00a8, 0x0000_a800, 0x00a8_0000, 0x00ff_ffff]
    );
    assert_same_screen(&ours, &theirs, dir);
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
    let mut child = uefi_vm(dir.path(), 1, "256M")
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
            let config = dir.path().join("vm.ron");
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

/// Connects to the QMP socket at `path` as soon as the helper serves it.
fn qmp_when_up(path: &Path) -> QmpClient {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match QmpClient::connect_with_timeout(path, TIMEOUT) {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("QMP at {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

#[test]
fn a_cd_ejected_through_qmp_stays_out_and_the_next_boot_starts_the_disk() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = boot_disk(dir.path(), &[]);
    let iso = boot_iso(dir.path(), &[]);
    let (serial, qmp) = (dir.path().join("serial.txt"), dir.path().join("qmp.sock"));
    let mut child = Command::new(vmm_binary())
        .args(["--bios", SEABIOS, "-m", "128M", "--no-rng"])
        .arg("--sata")
        .arg(&disk)
        .arg("--cdrom")
        .arg(&iso)
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--qmp")
        .arg(format!("unix:{}", qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hospes-vmm");
    let stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    // The helper serves QMP before its first boot starts, and SeaBIOS needs over a second
    // to reach the CD's boot image: `stop` lands before the boot image runs (the vCPUs
    // park before their first instruction, or somewhere inside SeaBIOS). That it did is
    // checked, not assumed: nothing reached COM1 from the boot image yet.
    let mut client = qmp_when_up(&qmp);
    client.stop().expect("stop");
    let early = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(!early.contains("BOOT"), "paused too late: {early}");
    // The first boot's devices are in place once it reports paused (not prelaunch): the
    // commands below act on its running CD drive.
    let deadline = Instant::now() + TIMEOUT;
    while client.query_status().expect("query-status").status
        != hospes_core::control::RunState::Paused
    {
        assert!(Instant::now() < deadline, "the first boot never started");
        std::thread::sleep(Duration::from_millis(5));
    }

    let block = client.execute("query-block", None).expect("query-block");
    println!("query-block with the install CD: {block}");
    let cd = &block[0];
    assert_eq!(cd["device"], "cdrom0");
    assert_eq!(cd["qdev"], "cdrom0");
    assert_eq!(cd["removable"], true);
    assert_eq!(cd["tray_open"], false);
    assert_eq!(cd["inserted"]["file"], iso.display().to_string());
    assert_eq!(cd["inserted"]["ro"], true);
    assert_eq!(cd["inserted"]["drv"], "raw");

    // A missing image is an error naming it; the VM is still there, the CD still in.
    let missing = dir.path().join("missing.iso");
    let err = client
        .execute(
            "blockdev-change-medium",
            Some(serde_json::json!({"id": "cdrom0", "filename": missing})),
        )
        .expect_err("no such file");
    println!("blockdev-change-medium with a missing file: {err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    let err = client
        .execute("eject", Some(serde_json::json!({"id": "floppy0"})))
        .expect_err("no such drive");
    assert!(
        err.to_string().contains("Device 'floppy0' not found"),
        "{err}"
    );
    assert_eq!(
        client.query_status().expect("query-status").status,
        hospes_core::control::RunState::Paused
    );

    // A disc changed in the running drive shows at once.
    let other = dir.path().join("other.iso");
    std::fs::copy(&iso, &other).unwrap();
    client
        .execute(
            "blockdev-change-medium",
            Some(serde_json::json!({"id": "cdrom0", "filename": other, "format": "raw"})),
        )
        .expect("blockdev-change-medium");
    let block = client.execute("query-block", None).expect("query-block");
    assert_eq!(
        block[0]["inserted"]["file"],
        other.display().to_string(),
        "{block}"
    );

    client
        .execute("eject", Some(serde_json::json!({"device": "cdrom0"})))
        .expect("eject");
    let block = client.execute("query-block", None).expect("query-block");
    println!("query-block after eject: {block}");
    assert!(block[0].get("inserted").is_none(), "{block}");
    assert_eq!(block[0]["removable"], true);

    // The reset builds a new machine; the tray keeps the drive empty, so SeaBIOS skips
    // the CD and boots the SATA disk.
    client.system_reset().expect("system_reset");
    client.cont().expect("cont");
    let out = wait_for_text(&serial, "DONE", TIMEOUT);
    let status = wait_timeout(&mut child, TIMEOUT);
    let log = log.join().unwrap_or_default();
    println!("boot after the eject: {:?}", report(&out).first());
    assert!(out.contains("BOOT drive=80"), "{out}\n{log}");
    assert!(!out.contains("BOOT drive=E0"), "the CD booted: {out}");
    assert!(
        status.is_some_and(|s| s.success()),
        "the disk's boot sector powered off: {log}"
    );
}

/// A real boot loader's install medium: GRUB's El Torito CD made by grub-mkrescue (Debian
/// packages grub-pc-bin, grub-common, mtools and xorriso, installed by the test command),
/// with a menu of two entries that waits for a key forever.
fn grub_iso(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("grub-tree");
    std::fs::create_dir_all(tree.join("boot/grub")).unwrap();
    std::fs::write(
        tree.join("boot/grub/grub.cfg"),
        "set timeout=-1\n\
         menuentry \"Install Hospes Test OS\" { echo install }\n\
         menuentry \"Boot from the first disk\" { echo disk }\n",
    )
    .unwrap();
    let iso = dir.join("grub.iso");
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&iso)
        .arg(&tree)
        .output()
        .expect("grub-mkrescue (Debian package grub-common) is installed by the test command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    iso
}

/// A child process killed (and reaped) when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A VM's screen through QMP `screendump`.
struct Screen {
    client: QmpClient,
    png: std::path::PathBuf,
    png_format: bool,
}

impl Screen {
    fn connect(qmp: &Path, png: std::path::PathBuf, png_format: bool) -> Screen {
        let deadline = Instant::now() + TIMEOUT;
        let client = loop {
            match QmpClient::connect_with_timeout(qmp, TIMEOUT) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("QMP at {}: {e}", qmp.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        Screen {
            client,
            png,
            png_format,
        }
    }

    /// (width, height, pixels) now; an error while the guest shows nothing yet.
    fn grab(&mut self) -> Result<(u32, u32, Vec<u32>), hospes_core::control::client::ClientError> {
        let mut args = serde_json::json!({ "filename": self.png.display().to_string() });
        if self.png_format {
            args["format"] = "png".into();
        }
        self.client.execute("screendump", Some(args))?;
        Ok(read_png(&self.png))
    }

    /// The screen once pixel (x, y) has `colour`: what the guest drew, not a moment of it.
    fn wait_for(&mut self, x: u32, y: u32, colour: u32) -> (u32, u32, Vec<u32>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // Before the firmware sets a mode there is no screen to dump.
            let (w, h, px) = self.grab().unwrap_or_default();
            if x < w && y < h && px[(y * w + x) as usize] == colour {
                return self.settled(w, h, px);
            }
            assert!(
                Instant::now() < deadline,
                "pixel ({x}, {y}) never became {colour:06x} (last screen {w}x{h}, {})",
                self.png.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The screen once it stops changing, starting from `px`: a guest at a few million
    /// instructions a second draws a menu over several screendumps. Gives up at the
    /// deadline and returns the last screen, whose comparison then shows what moved.
    fn settled(&mut self, mut w: u32, mut h: u32, mut px: Vec<u32>) -> (u32, u32, Vec<u32>) {
        let deadline = Instant::now() + TIMEOUT;
        let mut same = 0;
        while same < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            let (nw, nh, next) = self.grab().unwrap_or_default();
            if (nw, nh) == (w, h) && next == px {
                same += 1;
            } else {
                same = 0;
            }
            (w, h, px) = (nw, nh, next);
        }
        (w, h, px)
    }

    /// Presses and releases `key` (a QMP qcode) on the guest's keyboard.
    fn key(&mut self, key: &str) {
        for down in [true, false] {
            let event = serde_json::json!({ "events": [
                { "type": "key", "data": { "down": down, "key": { "type": "qcode", "data": key } } }
            ] });
            self.client
                .execute("input-send-event", Some(event))
                .expect("input-send-event");
        }
    }
}

/// GRUB's menu in 80x25 text: the highlight bar (grey, 0xa8a8a8) on the first entry's row
/// (4: pixels 64..80), then on the second's (5) after the Down key; sampled right of the
/// entries' text, where the bar is plain.
const MENU_FIRST: (u32, u32) = (600, 72);
const MENU_SECOND: (u32, u32) = (600, 88);
const MENU_GREY: u32 = 0x00a8_a8a8;

/// Drives GRUB's menu on the VM whose QMP socket is `qmp`: waits for it, presses Down,
/// waits for the bar to move, quits the VM. Returns (width, height, the menu, the moved
/// menu); screendumps go to `png` (`png_format`: QEMU's needs asking for PNG).
fn grub_menu_and_down(
    qmp: &Path,
    png: std::path::PathBuf,
    png_format: bool,
) -> (u32, u32, Vec<u32>, Vec<u32>) {
    let mut screen = Screen::connect(qmp, png, png_format);
    let (w, h, menu) = screen.wait_for(MENU_FIRST.0, MENU_FIRST.1, MENU_GREY);
    screen.key("down");
    let (_, _, moved) = screen.wait_for(MENU_SECOND.0, MENU_SECOND.1, MENU_GREY);
    assert_ne!(
        moved[(MENU_FIRST.1 * w + MENU_FIRST.0) as usize],
        MENU_GREY,
        "the bar left entry 1"
    );
    let _ = screen.client.quit();
    (w, h, menu, moved)
}

/// hospes-vmm booting SeaBIOS with std-VGA and `iso` in the CD drive, QMP at `qmp`, `extra`
/// flags and `env` variables, stderr to `stderr`.
fn spawn_bios_cdrom(
    iso: &Path,
    qmp: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> KillOnDrop {
    KillOnDrop(
        Command::new(vmm_binary())
            .envs(env.iter().copied())
            .args([
                "--bios",
                SEABIOS,
                "-m",
                "256M",
                "--no-rng",
                "--display",
                "std-vga",
            ])
            .args(extra)
            .arg("--cdrom")
            .arg(iso)
            .args(["--serial", "none", "--qmp"])
            .arg(format!("unix:{}", qmp.display()))
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn hospes-vmm"),
    )
}

#[test]
fn grub_shows_its_menu_from_an_install_cd_and_follows_the_keyboard_as_under_qemu() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = grub_iso(dir.path());

    let qmp = dir.path().join("qmp.sock");
    let mut ours = spawn_bios_cdrom(&iso, &qmp, &[], &[], Stdio::null());
    let (w, h, menu, moved) = grub_menu_and_down(&qmp, dir.path().join("hospes.png"), false);
    assert_eq!((w, h), (720, 400), "GRUB's menu is in VGA text mode");
    let _ = wait_timeout(&mut ours.0, TIMEOUT);

    let qqmp = dir.path().join("qqmp.sock");
    let mut qemu = qemu_q35("256M");
    qemu.args(["-vga", "std"]);
    qemu_cdrom(&mut qemu, &iso, 0);
    qemu.arg("-qmp")
        .arg(format!("unix:{},server,nowait", qqmp.display()));
    let mut qemu = KillOnDrop(qemu.spawn().expect(QEMU_MISSING));
    let (_, _, qemu_menu, qemu_moved) =
        grub_menu_and_down(&qqmp, dir.path().join("qemu.png"), true);
    let _ = wait_timeout(&mut qemu.0, TIMEOUT);

    assert_same_screen(&menu, &qemu_menu, tempfile::tempdir().unwrap());
    assert_same_screen(&moved, &qemu_moved, dir);
}

#[test]
fn seabios_drives_the_usb_keyboard_on_the_xhci_and_grub_follows_it() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = grub_iso(dir.path());
    let qmp = dir.path().join("qmp.sock");
    let log = dir.path().join("helper.log");
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    // The firmware's 0x402 log and the input router's choices, at info level.
    let mut ours = spawn_bios_cdrom(&iso, &qmp, &["--usb"], &[("HOSPES_LOG", "info")], stderr);
    grub_menu_and_down(&qmp, dir.path().join("hospes.png"), false);
    let _ = wait_timeout(&mut ours.0, TIMEOUT);
    let log = std::fs::read_to_string(&log).unwrap();
    for line in [
        // SeaBIOS's own xHCI driver found the controller and both devices' ports.
        "firmware: XHCI init",
        "firmware: USB keyboard initialized",
        // The key went to the USB keyboard SeaBIOS polls, not to the PS/2 one.
        "keyboard input goes to the USB keyboard",
    ] {
        assert!(
            log.contains(line),
            "no {line:?} in the helper's log:\n{log}"
        );
    }
}

#[test]
fn a_second_cd_drive_holds_the_drivers_disc_and_the_install_cd_still_boots_first() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = boot_disk(dir.path(), &[]);
    let iso = boot_iso(dir.path(), &[]);
    // The drivers disc needs no boot image: it is only read by the installed guest.
    let drivers = dir.path().join("drivers.iso");
    std::fs::write(&drivers, vec![0u8; 1 << 20]).unwrap();
    let (disk_arg, iso_arg) = (disk.display().to_string(), iso.display().to_string());
    let drivers_arg = drivers.display().to_string();
    let (ok, stdout, stderr) = run_logged(&[
        "--bios",
        SEABIOS,
        "--sata",
        &disk_arg,
        "--cdrom",
        &iso_arg,
        "--extra-cdrom",
        &drivers_arg,
        "-m",
        "256M",
        "--no-rng",
        "--serial",
        "stdio",
    ]);
    assert!(ok, "the guest powers itself off: {stdout}\n{stderr}");
    // The install CD boots (0xe0, the first CD drive), not the drivers disc or the disk.
    assert!(stdout.contains("BOOT drive=E0"), "{stdout}");
    let registered: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once("firmware: ").map(|(_, m)| m))
        .filter(|m| m.contains("registering"))
        .collect();
    assert_eq!(
        registered,
        [
            "AHCI/0: registering: \"AHCI/0: HOSPES HARDDISK ATA-8 Hard-Disk (1 MiBytes)\"",
            "AHCI/1: registering: \"DVD/CD [AHCI/1: HOSPES DVD-ROM ATAPI-8 DVD/CD]\"",
            "AHCI/2: registering: \"DVD/CD [AHCI/2: HOSPES DVD-ROM ATAPI-8 DVD/CD]\"",
        ],
        "{stderr}"
    );
}
