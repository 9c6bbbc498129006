//! Interop with the real Python QMP tools: `qemu.qmp` (asyncio and legacy clients) and
//! `qmp-shell`, against a fake helper serving QMP in this process.
//!
//! Needs a virtual environment at the workspace root:
//! `python3 -m venv .venv && .venv/bin/pip install qemu.qmp`.
//! The same script drives the real `hospes-vmm` in `tests/tests/qmp_python.rs`; this one
//! pins the protocol layer on its own, with a fake VM whose state the test controls.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hospes_core::control::fake::run_fake_helper;

fn venv_bin(tool: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join(".venv/bin").join(tool);
    assert!(
        bin.exists(),
        "{} is missing: run `python3 -m venv .venv && .venv/bin/pip install qemu.qmp` \
         in the workspace root",
        bin.display()
    );
    bin
}

/// Starts the fake helper on a thread; returns its socket and the thread.
fn start_fake_helper(dir: &Path) -> (PathBuf, thread::JoinHandle<()>) {
    let socket = dir.join("qmp.sock");
    let args = [
        "--qmp".into(),
        format!("unix:{}", socket.display()),
        "--ignore-powerdown".into(),
    ];
    let helper = thread::spawn(move || {
        run_fake_helper(args.map(Into::into)).unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "fake helper did not start");
        thread::sleep(Duration::from_millis(10));
    }
    (socket, helper)
}

#[test]
fn qemu_qmp_library_and_qmp_shell_drive_the_server() {
    let python = venv_bin("python");
    let qmp_shell = venv_bin("qmp-shell");
    let dir = tempfile::tempdir().unwrap();
    let (socket, helper) = start_fake_helper(dir.path());

    // qmp-shell reads commands from stdin and prints each reply.
    let mut shell = Command::new(qmp_shell)
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"query-status\nstop\nquery-status\ncont\n")
        .unwrap();
    let out = shell.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qmp-shell failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""status": "running""#), "{stdout}");
    assert!(stdout.contains(r#""status": "paused""#), "{stdout}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qmp/qmp_interop.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu.qmp interop failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The script ends with `quit`, which ends the helper.
    helper.join().unwrap();
    assert!(!socket.exists(), "the helper removes its socket on exit");
}
