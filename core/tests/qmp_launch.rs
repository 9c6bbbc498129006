//! Starting, finding, stopping and killing helpers, and attaching a console, with real
//! processes. This test binary is its own helper: run with `--qmp`, it becomes a fake
//! `hospes-vmm` (see `control::fake`), so it has no harness of its own (`harness =
//! false` in Cargo.toml) and runs its cases from `main`. Filters given on the command
//! line select cases by substring, as libtest does.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::panic;
use std::path::Path;
use std::thread;
use std::time::Duration;

use hospes_core::control::RunState;
use hospes_core::control::client::QmpClient;
use hospes_core::control::console::{ConsoleExit, ESCAPE, pump};
use hospes_core::control::fake::run_fake_helper;
use hospes_core::launch::{self, HelperStatus, LaunchError, LaunchSpec, StopOutcome, spawn_helper};
use hospes_core::runtime::{self, Liveness, RuntimeDir, is_helper_alive};

fn spec(name: &str) -> LaunchSpec {
    let me = std::env::current_exe().unwrap();
    let mut spec = LaunchSpec::new(me, name, "/nonexistent/vm.ron");
    spec.ready_timeout = Duration::from_secs(10);
    spec
}

fn runtime_in(base: &Path, id: &str) -> RuntimeDir {
    RuntimeDir::create_in(base, id).unwrap()
}

fn spawned_helper_is_named_detached_found_and_stopped_by_the_power_button() {
    let base = tempfile::tempdir().unwrap();
    let rt = runtime_in(base.path(), "vm-1");
    let pid = spawn_helper(&spec("Test VM"), &rt).unwrap();

    assert_eq!(rt.read_pid().unwrap(), Some(pid));
    assert_eq!(rt.probe(), Liveness::Running(pid));
    let running = runtime::list_running_in(base.path()).unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!((running[0].dir.id(), running[0].pid), ("vm-1", pid));

    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap();
    assert_eq!(argv0, b"hospes-vmm: Test VM", "ps shows the VM name");
    // SAFETY: getsid only reads the session id of a process.
    let sid = unsafe { libc::getsid(pid.0) };
    assert_eq!(sid, pid.0, "the helper leads its own session");
    let mode = std::fs::metadata(rt.qmp_socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let mut client = QmpClient::connect(&rt.qmp_socket()).unwrap();
    client.stop().unwrap();
    drop(client);
    let status = launch::status(&rt, Duration::from_secs(5)).unwrap();
    assert_eq!(
        status,
        HelperStatus::Running {
            pid,
            state: RunState::Paused
        }
    );

    assert_eq!(
        launch::stop(&rt, Duration::from_secs(5)).unwrap(),
        StopOutcome::PoweredOff
    );
    assert!(!is_helper_alive(pid));
    assert_eq!(rt.read_pid().unwrap(), None);
    assert!(!rt.qmp_socket().exists());
    assert!(rt.log_file().exists(), "the log stays for post-mortems");
    assert!(runtime::list_running_in(base.path()).unwrap().is_empty());
    let status = launch::status(&rt, Duration::from_secs(5)).unwrap();
    assert_eq!(status, HelperStatus::NotRunning);
}

fn stop_kills_a_helper_whose_guest_ignores_the_power_button() {
    let base = tempfile::tempdir().unwrap();
    let rt = runtime_in(base.path(), "stubborn");
    let mut spec = spec("stubborn");
    spec.extra_args.push("--ignore-powerdown".into());
    let pid = spawn_helper(&spec, &rt).unwrap();
    assert_eq!(
        launch::stop(&rt, Duration::from_millis(300)).unwrap(),
        StopOutcome::Killed
    );
    assert!(!is_helper_alive(pid));
}

fn kill_ends_the_helper_and_a_second_stop_finds_nothing() {
    let base = tempfile::tempdir().unwrap();
    let rt = runtime_in(base.path(), "doomed");
    let pid = spawn_helper(&spec("doomed"), &rt).unwrap();
    assert_eq!(launch::kill(&rt).unwrap(), StopOutcome::Killed);
    assert!(!is_helper_alive(pid));
    assert_eq!(
        launch::stop(&rt, Duration::from_secs(1)).unwrap(),
        StopOutcome::NotRunning
    );
    assert_eq!(runtime::cleanup_stale_in(base.path()).unwrap(), ["doomed"]);
}

fn a_second_start_of_a_running_vm_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let rt = runtime_in(base.path(), "once");
    let pid = spawn_helper(&spec("once"), &rt).unwrap();
    let err = spawn_helper(&spec("once"), &rt).unwrap_err();
    assert!(
        matches!(err, LaunchError::AlreadyRunning(p) if p == pid),
        "{err}"
    );
    launch::kill(&rt).unwrap();
}

fn a_helper_that_never_answers_is_killed_after_the_timeout() {
    let base = tempfile::tempdir().unwrap();
    let rt = runtime_in(base.path(), "mute");
    let script = base.path().join("mute.sh");
    std::fs::write(&script, "#!/bin/sh\necho starting\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = spec("mute");
    spec.helper = script;
    spec.ready_timeout = Duration::from_millis(300);
    let err = spawn_helper(&spec, &rt).unwrap_err();
    let LaunchError::NotReady { log, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(log, "starting");
    assert_eq!(rt.read_pid().unwrap(), None);
}

fn console_reaches_the_serial_socket_and_detaches_on_ctrl_close_bracket() {
    let base = tempfile::tempdir().unwrap();
    let rt = runtime_in(base.path(), "serial");
    spawn_helper(&spec("serial"), &rt).unwrap();

    let (mut keys, input) = UnixStream::pair().unwrap();
    let (screen_out, mut screen) = UnixStream::pair().unwrap();
    let serial = UnixStream::connect(rt.serial_socket()).unwrap();
    let console = thread::spawn(move || {
        let mut screen_out = screen_out;
        pump(input.as_fd(), &mut screen_out, serial, Some(ESCAPE)).unwrap()
    });
    keys.write_all(b"echo hi\r").unwrap();
    screen
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut seen = [0u8; 8];
    screen.read_exact(&mut seen).unwrap();
    assert_eq!(&seen, b"echo hi\r", "the fake guest echoes what it is sent");
    keys.write_all(&[ESCAPE]).unwrap();
    assert_eq!(console.join().unwrap(), ConsoleExit::Escape);
    launch::kill(&rt).unwrap();
}

const CASES: &[(&str, fn())] = &[
    (
        "spawned_helper_is_named_detached_found_and_stopped_by_the_power_button",
        spawned_helper_is_named_detached_found_and_stopped_by_the_power_button,
    ),
    (
        "stop_kills_a_helper_whose_guest_ignores_the_power_button",
        stop_kills_a_helper_whose_guest_ignores_the_power_button,
    ),
    (
        "kill_ends_the_helper_and_a_second_stop_finds_nothing",
        kill_ends_the_helper_and_a_second_stop_finds_nothing,
    ),
    (
        "a_second_start_of_a_running_vm_is_refused",
        a_second_start_of_a_running_vm_is_refused,
    ),
    (
        "a_helper_that_never_answers_is_killed_after_the_timeout",
        a_helper_that_never_answers_is_killed_after_the_timeout,
    ),
    (
        "console_reaches_the_serial_socket_and_detaches_on_ctrl_close_bracket",
        console_reaches_the_serial_socket_and_detaches_on_ctrl_close_bracket,
    ),
];

/// libtest options that take a value, which is not a filter.
const OPTIONS_WITH_VALUE: &[&str] = &["--test-threads", "--skip", "--format", "--color", "-Z"];

fn filters(args: &[OsString]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for arg in args.iter().map(|a| a.to_string_lossy()) {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if OPTIONS_WITH_VALUE.contains(&arg.as_ref()) {
            skip_next = true;
        } else if !arg.starts_with('-') {
            out.push(arg.into_owned());
        }
    }
    out
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.iter().any(|a| a == "--qmp") {
        // Started by spawn_helper: be the helper.
        if let Err(e) = run_fake_helper(args) {
            eprintln!("fake helper: {e}");
            std::process::exit(2);
        }
        return;
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in CASES {
            println!("{name}: test");
        }
        return;
    }
    let filters = filters(&args);
    let selected: Vec<_> = CASES
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, case) in selected {
        let ok = panic::catch_unwind(case).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        println!("\nfailures: {failed:?}");
        std::process::exit(101);
    }
    println!("\ntest result: ok");
}
