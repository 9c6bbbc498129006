//! TPM end to end: the `tpm` guest drives the CRB interface at 0xfed40000 by polling
//! (locality 0, cmdReady, TPM2_Startup(SU_CLEAR), TPM2_GetRandom(16)) against a real
//! swtpm the helper starts for `--tpm`, and prints every answer on COM1 (see
//! `tests/guests/tpm.S` for its lines).
//!
//! - `hospes_*`: under `hospes-vmm --kernel tpm.elf --tpm[=DIR]`: both commands succeed,
//!   16 random bytes come back and two runs get different ones; with `--tpm=DIR` the TPM's
//!   state stays in DIR (0700). With `reset`, the guest resets the machine once: the TPM
//!   is reset with it, so the second boot's Startup succeeds as well. With `loop`, the test kills swtpm
//!   while the guest sends GetRandom after GetRandom: the helper logs the death once, the
//!   guest gets TPM_RC_FAILURE (0x101) with CTRL_STS.tpmSts set, and runs on to power off.
//! - `hospes_save_*`: with `pcrs`, the guest extends PCR 16 and reads it again and
//!   again; QMP `hospes-save` saves the helper to `--state FILE`, a new helper resumes it,
//!   and the resumed guest, which never sends Startup again, reads the extended value
//!   (with `--tpm=DIR` and with a temporary `--tpm`). A plain boot afterwards reads zero.
//! - `hospes_seabios_*`: SeaBIOS under `hospes-vmm --bios --tpm` finds the TPM through
//!   the firmware's ACPI tables (TPM2, with its log area) and sends Startup and PCR
//!   extends, which the helper's debug log shows.
//! - `qemu_*`: the same guest under QEMU's `tpm-crb` with a swtpm of the test's own: the
//!   lines that describe the interface (TPM2 table, INTF_ID, LOC_STATE, the buffer) and
//!   the GetRandom answer's shape must match Hospes'. QEMU runs SeaBIOS, which sends
//!   TPM2_Startup itself, so the guest's Startup answers TPM_RC_INITIALIZE there.
//!
//! swtpm (Debian package swtpm) and QEMU (qemu-system-x86) are installed by the test
//! command; the tests fail without them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hospes_core::control::client::QmpClient;
use hospes_tests::peers::{LiveVm, process_name, require_program};
use hospes_tests::save::save_and_wait;
use hospes_tests::{
    Guest, GuestKind, build_guest, run_vmm, skip_without_kvm, spawn_vmm, vmm_binary, wait_for_text,
    wait_timeout,
};

const TIMEOUT: Duration = Duration::from_secs(90);
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// The lines both VMMs must print alike.
const INTERFACE_LINES: [&str; 4] = [
    "tpm2: start method 7 control area fed40040",
    "intf 00025811",
    "locality 0 granted, state 00000083",
    "ready: buffer fed40080 size 3968",
];

/// A child process killed on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bytes of a "random rc 00000000 len 16: b0 b1 ..." line.
fn random_bytes(console: &str) -> Vec<u8> {
    let line = console
        .lines()
        .find(|l| l.starts_with("random rc "))
        .unwrap_or_else(|| panic!("no GetRandom answer: {console}"));
    let (head, bytes) = line
        .split_once(':')
        .unwrap_or_else(|| panic!("GetRandom failed: {line}"));
    assert_eq!(head, "random rc 00000000 len 16", "{console}");
    let bytes: Vec<u8> = bytes
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    assert_eq!(bytes.len(), 16, "{line}");
    bytes
}

/// The guest's console under `hospes-vmm --kernel guest -m 32M --serial stdio flags...`,
/// which must power off by itself.
fn run_hospes(guest: &Path, flags: &[&str]) -> String {
    let mut args = vec!["--kernel", guest.to_str().unwrap(), "-m", "32M"];
    args.extend_from_slice(&["--serial", "stdio"]);
    args.extend_from_slice(flags);
    let out = run_vmm(&args, TIMEOUT);
    assert!(out.success(), "{out:?}");
    assert!(!out.stderr.contains("swtpm"), "{}", out.stderr);
    out.stdout
}

#[test]
fn hospes_tpm_answers_startup_and_get_random_with_fresh_bytes_each_run() {
    if skip_without_kvm() {
        return;
    }
    require_program("swtpm", "swtpm");
    let g = build_guest("tpm", GuestKind::Pvh);
    let first = run_hospes(&g.path, &["--tpm"]);
    for line in INTERFACE_LINES {
        assert!(first.lines().any(|l| l == line), "{line}: {first}");
    }
    assert!(first.lines().any(|l| l == "startup rc 00000000"), "{first}");
    let state = g.dir.path().join("tpm-state");
    let flag = format!("--tpm={}", state.display());
    let second = run_hospes(&g.path, &[&flag]);
    assert!(
        second.lines().any(|l| l == "startup rc 00000000"),
        "{second}"
    );
    let (a, b) = (random_bytes(&first), random_bytes(&second));
    assert_ne!(a, b, "two runs, two different random answers");

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the state folder is private");
    assert!(
        state.join("tpm2-00.permall").exists(),
        "swtpm kept the TPM's state in --tpm=DIR"
    );
    // The same state again: the TPM starts from it.
    let third = run_hospes(&g.path, &[&flag]);
    random_bytes(&third);
}

#[test]
fn hospes_resets_the_tpm_with_the_machine_so_the_next_boot_starts_it_again() {
    if skip_without_kvm() {
        return;
    }
    require_program("swtpm", "swtpm");
    let g = build_guest("tpm", GuestKind::Pvh);
    let out = run_hospes(&g.path, &["--tpm", "--cmdline", "reset"]);
    let lines: Vec<&str> = out.lines().collect();
    let boots: Vec<&[&str]> = lines.split(|l| *l == "resetting").collect();
    assert_eq!(boots.len(), 2, "one reset: {lines:?}");
    for boot in &boots {
        assert!(boot.contains(&"startup rc 00000000"), "{lines:?}");
        assert!(
            boot.iter()
                .any(|l| l.starts_with("random rc 00000000 len 16:")),
            "{lines:?}"
        );
    }
    assert_eq!(boots[1].last(), Some(&"second boot"), "{lines:?}");
}

#[test]
fn hospes_logs_a_dead_swtpm_once_and_the_guest_gets_failures_and_runs_on() {
    if skip_without_kvm() {
        return;
    }
    require_program("swtpm", "swtpm");
    let g = build_guest("tpm", GuestKind::Pvh);
    let mut vm = LiveVm::spawn(
        &[
            "--kernel",
            g.path.to_str().unwrap(),
            "-m",
            "32M",
            "--tpm",
            "--cmdline",
            "loop",
        ],
        &[],
    );
    assert!(vm.wait_line("looping", TIMEOUT).is_some(), "{:?}", vm.seen);
    let swtpm: Vec<u32> = vm
        .children()
        .into_iter()
        .filter(|p| process_name(*p) == "swtpm")
        .collect();
    assert_eq!(swtpm.len(), 1, "one swtpm per VM: {swtpm:?}");
    // SAFETY: kill(2) on a pid read a moment ago from the helper's children.
    assert_eq!(unsafe { libc::kill(swtpm[0] as i32, libc::SIGKILL) }, 0);
    let (status, lines, stderr) = vm.finish(TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the VM ran on and powered off: {status:?} {lines:?} {stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "after failure: rc 00000101 sts 00000001"),
        "TPM_RC_FAILURE and tpmSts: {lines:?}"
    );
    let after: Vec<&String> = lines
        .iter()
        .skip_while(|l| !l.starts_with("after failure"))
        .collect();
    assert!(
        after.iter().any(|l| *l == "random rc 00000101"),
        "the next command fails too: {lines:?}"
    );
    assert!(after.iter().any(|l| *l == "still running"), "{lines:?}");
    let deaths = stderr
        .lines()
        .filter(|l| l.contains(&format!("swtpm (pid {}) exited", swtpm[0])))
        .count();
    assert_eq!(deaths, 1, "the death is logged once: {stderr}");
}

#[test]
fn hospes_seabios_finds_the_tpm_through_the_firmware_acpi_tables_and_measures_into_it() {
    if skip_without_kvm() {
        return;
    }
    require_program("swtpm", "swtpm");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("helper.log");
    let _vm = KillOnDrop(
        Command::new(vmm_binary())
            .args(["--bios", SEABIOS, "--tpm", "-m", "64M", "--serial", "none"])
            .env("HOSPES_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn hospes-vmm"),
    );
    // SeaBIOS finds the TPM2 table, starts the TPM and extends PCRs with its measurements
    // (TPM2_PCR_Extend, 0x182), logging them in the table's log area.
    let text = wait_for_text(&log, "tpm: command 0x182 answered 0x0", TIMEOUT);
    assert!(
        text.contains("tpm: command 0x144 answered 0x0"),
        "TPM2_Startup first: {text}"
    );
    assert!(
        text.contains("tpm: command 0x182 answered 0x0"),
        "measurements: {text}"
    );
    assert!(
        text.contains("table(324d5054)"),
        "SeaBIOS saw the TPM2 table: {text}"
    );
}

/// The guest's console under QEMU's tpm-crb with a swtpm of our own, up to the GetRandom
/// answer.
fn qemu_console() -> String {
    require_program("qemu-system-x86_64", "qemu-system-x86");
    require_program("swtpm", "swtpm");
    let g = build_guest("tpm", GuestKind::Pvh);
    let dir = g.dir.path();
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    let sock = dir.join("swtpm.sock");
    let _swtpm = KillOnDrop(
        Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", sock.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start swtpm"),
    );
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "swtpm made no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let console = dir.join("console.txt");
    let _qemu = KillOnDrop(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "kvm", "-accel", "tcg", "-M", "q35", "-m", "64M"])
            .args(["-nodefaults", "-display", "none", "-bios", SEABIOS])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&g.path)
            .arg("-chardev")
            .arg(format!("socket,id=c,path={}", sock.display()))
            .args(["-tpmdev", "emulator,id=t,chardev=c"])
            .args(["-device", "tpm-crb,tpmdev=t"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu-system-x86_64"),
    );
    let text = wait_for_text(&console, "random rc ", TIMEOUT);
    // The rest of that line.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut text = text;
    while !text.ends_with('\n') && !text.contains("FAILED") {
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(10));
        text = std::fs::read_to_string(&console).unwrap_or_default();
    }
    text
}

#[test]
fn qemu_tpm_crb_shows_the_interface_hospes_shows() {
    if skip_without_kvm() {
        return;
    }
    let qemu = qemu_console();
    for line in INTERFACE_LINES {
        assert!(qemu.lines().any(|l| l == line), "{line}: {qemu}");
    }
    assert!(
        qemu.lines().any(|l| l == "startup rc 00000100"),
        "SeaBIOS started the TPM already (TPM_RC_INITIALIZE): {qemu}"
    );
    random_bytes(&qemu);

    let g = build_guest("tpm", GuestKind::Pvh);
    let hospes = run_hospes(&g.path, &["--tpm"]);
    let interface = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with("startup rc") && !l.starts_with("random rc"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(interface(&hospes), interface(&qemu));
}

/// One run of the `pcrs` guest that a test saves or resumes: its console file and QMP
/// socket; the helper is killed if the test fails.
struct PcrRun {
    console: PathBuf,
    qmp: PathBuf,
    child: KillOnDrop,
}

/// Starts the `pcrs` guest with `tpm` (`--tpm` or `--tpm=DIR`), saving to and resuming
/// from `state`.
fn start_pcrs(g: &Guest, tag: &str, state: &Path, tpm: &str) -> PcrRun {
    let console = g.dir.path().join(format!("console-{tag}.txt"));
    let qmp = g.dir.path().join(format!("qmp-{tag}.sock"));
    let args = [
        "--serial".to_string(),
        format!("file:{}", console.display()),
        "--qmp".into(),
        format!("unix:{}", qmp.display()),
        "--state".into(),
        state.display().to_string(),
        tpm.into(),
        "--cmdline".into(),
        "pcrs".into(),
    ];
    let child = KillOnDrop(spawn_vmm(g, "32M", &args));
    PcrRun {
        console,
        qmp,
        child,
    }
}

/// The complete "pcr16 rc ..." lines of a console (a line cut off at either end is left
/// out: it does not start with "pcr16" or has no newline yet).
fn pcr_lines(console: &str) -> Vec<&str> {
    let complete = console.rfind('\n').map_or("", |end| &console[..end]);
    complete
        .lines()
        .filter(|l| l.starts_with("pcr16 rc "))
        .collect()
}

/// Waits until the console shows `n` complete PCR reads; returns its text.
fn wait_pcr_reads(run: &mut PcrRun, n: usize) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&run.console).unwrap_or_default();
        if pcr_lines(&text).len() >= n {
            return text;
        }
        if let Ok(Some(status)) = run.child.0.try_wait() {
            panic!("the helper ended ({status}) before {n} PCR reads:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} PCR reads after {TIMEOUT:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn quit(mut run: PcrRun) {
    let mut qmp = QmpClient::connect(&run.qmp).expect("QMP");
    qmp.quit().expect("quit");
    let status = wait_timeout(&mut run.child.0, TIMEOUT).expect("the helper exits on quit");
    assert!(status.success(), "quit: {status}");
}

/// PCR 16 as a freshly started TPM has it.
fn zero_pcr() -> String {
    format!("pcr16 rc 00000000 value {}", "0".repeat(64))
}

/// Runs the `pcrs` guest until it has extended PCR 16, saves it, resumes it and checks
/// that the resumed TPM reads the extended value (a fresh TPM that never saw Startup
/// answers TPM_RC_INITIALIZE, "pcr16 rc 00000100"); returns that PCR line.
fn pcr16_survives_save_and_resume(g: &Guest, tpm: &str) -> String {
    let state = g.dir.path().join("vm.hospes");
    let mut first = start_pcrs(g, "first", &state, tpm);
    let before = wait_pcr_reads(&mut first, 3);
    assert!(
        before.lines().any(|l| l == "extend rc 00000000"),
        "{before}"
    );
    let reads = pcr_lines(&before);
    assert_eq!(reads[0], zero_pcr(), "PCR 16 after Startup: {before}");
    let extended = reads[1].to_string();
    assert!(extended.starts_with("pcr16 rc 00000000 value "), "{before}");
    assert_ne!(extended, zero_pcr(), "the extend changed PCR 16");
    save_and_wait(&first.qmp, &mut first.child.0);
    let before = std::fs::read_to_string(&first.console).unwrap();
    for read in &pcr_lines(&before)[1..] {
        assert_eq!(*read, extended, "before the save: {before}");
    }

    let mut second = start_pcrs(g, "second", &state, tpm);
    let after = wait_pcr_reads(&mut second, 3);
    assert!(
        !after.contains("startup rc") && !after.contains("extended"),
        "the resumed guest started over:\n{after}"
    );
    for read in pcr_lines(&after) {
        assert_eq!(
            read, extended,
            "the resumed TPM has the saved PCR 16:\n{before}\n--- resumed ---\n{after}"
        );
    }
    assert!(
        !state.exists(),
        "the state file goes once the VM runs again"
    );
    quit(second);
    extended
}

/// Needs swtpm. A TPM whose state lives in `--tpm=DIR`: the extended PCR 16 is there
/// after the resume; a plain boot on the same folder afterwards starts from zero again
/// (PCRs are not kept across a power cycle) and the same extend gives the same value.
#[test]
fn hospes_save_and_resume_keep_an_extended_pcr_and_a_plain_boot_clears_it() {
    if skip_without_kvm() {
        return;
    }
    require_program("swtpm", "swtpm");
    let g = build_guest("tpm", GuestKind::Pvh);
    let dir = g.dir.path().join("tpm-state");
    let flag = format!("--tpm={}", dir.display());
    let extended = pcr16_survives_save_and_resume(&g, &flag);

    // No state file any more: a plain boot of the same VM.
    let state = g.dir.path().join("vm.hospes");
    let mut plain = start_pcrs(&g, "plain", &state, &flag);
    let text = wait_pcr_reads(&mut plain, 2);
    let reads = pcr_lines(&text);
    assert!(text.contains("startup rc 00000000"), "{text}");
    assert_eq!(reads[0], zero_pcr(), "a plain boot clears PCR 16: {text}");
    assert_eq!(
        reads[1], extended,
        "the same extend, the same value: {text}"
    );
    quit(plain);
}

/// Needs swtpm. A bare `--tpm`: the resumed helper's TPM lives in a new temporary
/// folder and gets all of its state from the saved blobs.
#[test]
fn hospes_save_and_resume_keep_an_extended_pcr_with_a_temporary_tpm_folder() {
    if skip_without_kvm() {
        return;
    }
    require_program("swtpm", "swtpm");
    let g = build_guest("tpm", GuestKind::Pvh);
    pcr16_survives_save_and_resume(&g, "--tpm");
}

/// Overwrites 16 bytes of the "dev/tpm" section of the saved state `file` where `needle`
/// (bytes of the TPM's permanent state) lies, and seals the section's checksum again, so
/// the file reads well and only swtpm can tell.
fn damage_tpm_section(file: &Path, needle: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    let name = b"\x07\x00dev/tpm";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("a dev/tpm section");
    let len_at = at + name.len();
    let len = u64::from_le_bytes(bytes[len_at..len_at + 8].try_into().unwrap()) as usize;
    let data = len_at + 8;
    let blob = bytes[data..data + len]
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the permanent state in the tpm section");
    bytes[data + blob..data + blob + 16].fill(0xee);
    let mut crc = crc32fast::Hasher::new();
    crc.update(b"dev/tpm");
    crc.update(&bytes[data..data + len]);
    bytes[data + len..data + len + 4].copy_from_slice(&crc.finalize().to_le_bytes());
    std::fs::write(file, bytes).unwrap();
}

/// Needs swtpm. A saved state whose TPM blobs swtpm refuses: the resume fails with the
/// TPM named, no vCPU runs (the console stays empty) and the file stays for another try.
#[test]
fn hospes_save_a_tpm_state_swtpm_refuses_stops_the_resume_naming_the_tpm() {
    if skip_without_kvm() {
        return;
    }
    require_program("swtpm", "swtpm");
    let g = build_guest("tpm", GuestKind::Pvh);
    let dir = g.dir.path().join("tpm-state");
    let flag = format!("--tpm={}", dir.display());
    let state = g.dir.path().join("vm.hospes");
    let mut first = start_pcrs(&g, "first", &state, &flag);
    wait_pcr_reads(&mut first, 2);
    save_and_wait(&first.qmp, &mut first.child.0);
    let permanent = std::fs::read(dir.join("tpm2-00.permall")).unwrap();
    // Past the state file's own header, which the blob does not carry.
    damage_tpm_section(&state, &permanent[16..48]);

    let console = g.dir.path().join("console-damaged.txt");
    let out = run_vmm(
        &[
            "--kernel",
            g.path.to_str().unwrap(),
            "-m",
            "32M",
            "--serial",
            &format!("file:{}", console.display()),
            "--state",
            state.to_str().unwrap(),
            &flag,
            "--cmdline",
            "pcrs",
        ],
        TIMEOUT,
    );
    assert!(
        !out.success(),
        "a refused TPM state must not resume: {out:?}"
    );
    assert!(
        out.stderr.contains("tpm: the TPM refused its saved state"),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(text.is_empty(), "the guest ran: {text}");
    assert!(state.exists(), "the state file is kept");
}
