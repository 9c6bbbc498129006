//! `hospesctl start/status/stop/kill` on a real VM: a helper started detached, found
//! again through its runtime folder, shut down through the ACPI power button.

use std::path::Path;
use std::process::{Command, Output};

use hospes_core::control::client::QmpClient;
use hospes_tests::{GuestKind, boot_iso, build_guest, skip_without_kvm, target_dir, vmm_binary};

fn hospesctl(data: &Path, runtime: &Path, args: &[&str]) -> Output {
    Command::new(target_dir().join("hospesctl"))
        .args(args)
        .env("XDG_DATA_HOME", data)
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .expect("run hospesctl")
}

/// Whether `pid` is a live helper (a zombie waiting for its reaper is not).
fn helper_alive(pid: i64) -> bool {
    hospes_core::runtime::is_helper_alive(hospes_core::runtime::Pid(pid as i32))
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn start_status_stop_and_kill_a_vm_from_the_library() {
    if skip_without_kvm() {
        return;
    }
    // `hospesctl start` runs the hospes-vmm beside it.
    assert!(vmm_binary().exists());
    let g = build_guest("powerbutton", GuestKind::Pvh);
    let data = g.dir.path().join("data");
    let runtime = g.dir.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let kernel = g.path.to_str().unwrap();
    let created = hospesctl(
        &data,
        &runtime,
        &[
            "create",
            "Button Box",
            "--preset",
            "kernel",
            "--kernel",
            kernel,
            "--memory",
            "32M",
            "--cpus",
            "1",
        ],
    );
    assert!(created.status.success(), "{created:?}");

    let started = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "start", "Button Box"],
    ));
    assert_eq!(started["state"], "running");
    let pid = started["pid"].as_i64().unwrap();
    // The helper is its own process, named after the VM, in its own session.
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.starts_with("hospes-vmm: Button Box\0"),
        "{cmdline:?}"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        pid.to_string(),
        "session id is the helper's own pid"
    );

    let again = hospesctl(&data, &runtime, &["start", "button-box"]);
    assert_eq!(again.status.code(), Some(5), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    let status = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "status", "Button Box"],
    ));
    assert_eq!(status["state"], "running");
    assert_eq!(status["pid"], pid);
    let all = json(&hospesctl(&data, &runtime, &["--json", "status"]));
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(all[0]["id"], "button-box");

    // The guest waits for the power button, then powers off: a clean stop.
    let stopped = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "stop", "Button Box", "--timeout", "30"],
    ));
    assert_eq!(stopped["outcome"], "powered_off");
    assert!(!helper_alive(pid), "helper {pid} still there after stop");
    let status = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "status", "Button Box"],
    ));
    assert_eq!(status["state"], "stopped");
    let log = runtime.join("hospes/button-box/helper.log");
    assert!(log.exists(), "the helper's log stays for a post-mortem");

    // Kill: no question asked of the guest.
    let started = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "start", "Button Box"],
    ));
    let killed = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "kill", "Button Box"],
    ));
    assert_eq!(killed["outcome"], "killed");
    let pid = started["pid"].as_i64().unwrap();
    assert!(!helper_alive(pid), "helper {pid} still there after kill");
    let text = hospesctl(&data, &runtime, &["stop", "Button Box"]);
    assert_eq!(
        String::from_utf8_lossy(&text.stdout),
        "Button Box was not running\n"
    );
}

#[test]
fn start_reports_the_helpers_own_error_and_unknown_vms() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let runtime = dir.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let missing = hospesctl(&data, &runtime, &["start", "nothing"]);
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    let console = hospesctl(&data, &runtime, &["console", "nothing"]);
    assert_eq!(console.status.code(), Some(3), "{console:?}");

    // The install ISO went away after the VM was made: start fails with the helper's own
    // words from its log (which file is missing), and leaves nothing running.
    let iso = dir.path().join("install.iso");
    std::fs::write(&iso, b"not really an ISO").unwrap();
    let created = hospesctl(
        &data,
        &runtime,
        &[
            "create",
            "Desk",
            "--preset",
            "linux",
            "--iso",
            iso.to_str().unwrap(),
            "--memory",
            "64M",
            "--cpus",
            "1",
            "--disk-size",
            "16M",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    std::fs::remove_file(&iso).unwrap();
    let failed = hospesctl(&data, &runtime, &["start", "Desk"]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_ne!(failed.status.code(), Some(0), "{failed:?}");
    assert!(stderr.contains("install.iso"), "{stderr}");
    // (Named by its id: its settings no longer check out with the ISO gone.)
    let status = hospesctl(&data, &runtime, &["status", "Desk"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout), "desk: stopped\n");
}

/// Reads `serial.sock` of a running VM until `text` arrives.
fn read_console_until(socket: &Path, text: &str) -> String {
    use std::io::Read;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut stream = loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{}: {e}", socket.display()),
        }
    };
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(90)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(text) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Makes a Linux-preset VM `name` (SeaBIOS, 128 MiB, one vCPU) with `iso` in its CD drive.
fn create_linux_vm(data: &Path, runtime: &Path, name: &str, iso: &Path) {
    let iso = iso.to_str().unwrap();
    let created = hospesctl(
        data,
        runtime,
        &[
            "create",
            name,
            "--preset",
            "linux",
            "--iso",
            iso,
            "--memory",
            "128M",
            "--cpus",
            "1",
            "--disk-size",
            "16M",
        ],
    );
    assert!(created.status.success(), "{created:?}");
}

#[test]
fn a_linux_preset_vm_boots_its_install_cd_through_the_bios() {
    if skip_without_kvm() {
        return;
    }
    // An El Torito CD whose boot image is the boot-sector guest, as installers are made.
    let g = tempfile::tempdir().unwrap();
    let iso = boot_iso(g.path(), &[]);

    let data = g.path().join("data");
    let runtime = g.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    create_linux_vm(&data, &runtime, "Installer", &iso);
    let started = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "start", "Installer"],
    ));
    assert_eq!(started["state"], "running");
    // SeaBIOS boots the CD (first in the boot order); the boot image reports on COM1.
    let console = read_console_until(&runtime.join("hospes/installer/serial.sock"), "DONE");
    assert!(console.contains("BOOT drive=E0"), "{console}");
    // Then it powers the VM off through the ICH9 PM block.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = hospesctl(&data, &runtime, &["status", "Installer"]);
        if String::from_utf8_lossy(&status.stdout) == "Installer: stopped\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {status:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn cdrom_changes_the_disc_of_a_running_vm_without_touching_vm_ron() {
    if skip_without_kvm() {
        return;
    }
    // The boot image built with VGA_TEXT prints DONE and halts: the VM keeps running.
    let g = tempfile::tempdir().unwrap();
    let iso = boot_iso(g.path(), &["VGA_TEXT"]);
    let data = g.path().join("data");
    let runtime = g.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    create_linux_vm(&data, &runtime, "Changer", &iso);
    let vm_ron = data.join("hospes/machines/changer/vm.ron");
    let settings = std::fs::read_to_string(&vm_ron).unwrap();
    let started = json(&hospesctl(&data, &runtime, &["--json", "start", "Changer"]));
    let pid = started["pid"].as_i64().unwrap();
    let console = read_console_until(&runtime.join("hospes/changer/serial.sock"), "DONE");
    assert!(console.contains("BOOT drive=E0"), "{console}");
    let qmp = runtime.join("hospes/changer/qmp.sock");
    let inserted = || {
        let mut client = QmpClient::connect(&qmp).expect("QMP");
        let drives = client.query_block().expect("query-block");
        assert_eq!(drives.len(), 1, "{drives:?}");
        drives[0].inserted.as_ref().map(|i| i.file.clone())
    };
    assert_eq!(inserted(), Some(iso.display().to_string()));

    let ejected = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "cdrom", "Changer", "eject"],
    ));
    assert_eq!(ejected["running"], true);
    assert_eq!(inserted(), None, "the running drive is empty");

    let drivers = g.path().join("drivers.iso");
    std::fs::copy(&iso, &drivers).unwrap();
    let changed = hospesctl(
        &data,
        &runtime,
        &["cdrom", "Changer", "insert", drivers.to_str().unwrap()],
    );
    assert!(changed.status.success(), "{changed:?}");
    assert_eq!(
        String::from_utf8_lossy(&changed.stdout),
        format!("Changer: the CD drive now holds {}\n", drivers.display())
    );
    assert_eq!(inserted(), Some(drivers.display().to_string()));
    let missing = hospesctl(
        &data,
        &runtime,
        &["cdrom", "Changer", "insert", "/no/such.iso"],
    );
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    assert_eq!(
        std::fs::read_to_string(&vm_ron).unwrap(),
        settings,
        "a running VM's change lasts as long as its helper"
    );
    assert!(helper_alive(pid), "the VM runs on");
    let killed = json(&hospesctl(&data, &runtime, &["--json", "kill", "Changer"]));
    assert_eq!(killed["outcome"], "killed");
}

/// The counts a console shows, complete lines only.
fn console_counts(text: &str) -> Vec<u64> {
    hospes_tests::save::counts(text)
}

#[test]
fn save_resumes_where_the_guest_was_and_discard_starts_afresh() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("count", GuestKind::Pvh);
    let data = g.dir.path().join("data");
    let runtime = g.dir.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let kernel = g.path.to_str().unwrap();
    let created = hospesctl(
        &data,
        &runtime,
        &[
            "create", "Counter", "--preset", "kernel", "--kernel", kernel, "--memory", "32M",
            "--cpus", "1",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let serial = runtime.join("hospes/counter/serial.sock");
    let state_file = data.join("hospes/machines/counter/saved-state.hospes");

    // Nothing to save while stopped.
    let stopped = hospesctl(&data, &runtime, &["save", "Counter"]);
    assert_eq!(stopped.status.code(), Some(5), "{stopped:?}");
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("Counter is not running"));

    json(&hospesctl(&data, &runtime, &["--json", "start", "Counter"]));
    let before = read_console_until(&serial, "count 5\n");
    assert!(before.contains("count 5\n"), "{before}");
    let saved = json(&hospesctl(&data, &runtime, &["--json", "save", "Counter"]));
    assert_eq!(saved["state"], "saved");
    assert_eq!(
        saved["bytes"],
        std::fs::metadata(&state_file).unwrap().len()
    );
    let status = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "status", "Counter"],
    ));
    assert_eq!(status["state"], "saved", "{status}");
    assert_eq!(status["saved"]["hospes_version"], env!("CARGO_PKG_VERSION"));

    // Start resumes: the count goes on from past where the console was read, no "ready".
    json(&hospesctl(&data, &runtime, &["--json", "start", "Counter"]));
    let resumed = read_console_until(&serial, "0\n");
    let seen_before = *console_counts(&before).last().unwrap();
    let first_after = console_counts(&resumed)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no count after the resume: {resumed:?}"));
    assert!(
        !resumed.contains("ready"),
        "the VM booted afresh: {resumed}"
    );
    assert!(
        first_after > seen_before,
        "resumed at count {first_after}, saved after {seen_before}"
    );
    assert!(!state_file.exists(), "the state file outlived the resume");

    // Save again, then discard: the next start boots afresh.
    json(&hospesctl(&data, &runtime, &["--json", "save", "Counter"]));
    let running = json(&hospesctl(&data, &runtime, &["--json", "start", "Counter"]));
    let refused = hospesctl(&data, &runtime, &["discard", "Counter"]);
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    json(&hospesctl(&data, &runtime, &["--json", "save", "Counter"]));
    assert!(!helper_alive(running["pid"].as_i64().unwrap()));
    let discarded = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "discard", "Counter"],
    ));
    assert_eq!(discarded["discarded"], true);
    assert!(!state_file.exists());
    let again = hospesctl(&data, &runtime, &["discard", "Counter"]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "Counter has no saved state\n"
    );
    let status = json(&hospesctl(
        &data,
        &runtime,
        &["--json", "status", "Counter"],
    ));
    assert_eq!(status["state"], "stopped");
    json(&hospesctl(&data, &runtime, &["--json", "start", "Counter"]));
    let fresh = read_console_until(&serial, "count 1\n");
    assert!(fresh.contains("ready\n"), "not a fresh boot: {fresh}");
    json(&hospesctl(&data, &runtime, &["--json", "kill", "Counter"]));
}
