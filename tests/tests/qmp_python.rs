//! The real Python QMP tools against the real helper: `qemu.qmp` (asyncio and legacy
//! clients, the script in `core/tests/qmp/qmp_interop.py`) driving `hospes-vmm --qmp` on a
//! tiny guest that waits for console input and ignores the power button.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hospes_tests::{GuestKind, build_guest, skip_without_kvm, vmm_binary, wait_timeout};

fn venv_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `make test` creates it (scripts/install-deps.sh)",
        python.display()
    );
    python
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn qemu_qmp_library_drives_the_real_helper() {
    if skip_without_kvm() {
        return;
    }
    let python = venv_python();
    let g = build_guest("echo", GuestKind::Pvh);
    let sock = g.dir.path().join("qmp.sock");
    let helper = Command::new(vmm_binary())
        .args([
            "--kernel",
            g.path.to_str().unwrap(),
            "-m",
            "32M",
            "--serial",
            "none",
        ])
        .arg("--qmp")
        .arg(format!("unix:{}", sock.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed on any failure below, so a failed run leaves no guest spinning.
    let mut helper = KillOnDrop(helper);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "the helper's QMP socket never answered"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/qmp/qmp_interop.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&sock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu.qmp against hospes-vmm failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The script ends with `quit`: the helper exits with status 0 and removes its socket.
    let status = wait_timeout(&mut helper.0, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!sock.exists());
}
