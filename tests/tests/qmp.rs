//! `hospes-vmm --qmp`: the QMP commands reach the VM and its state changes come back as
//! events, through the project's typed client.

use std::time::Duration;

use hospes_core::control::RunState;
use hospes_core::control::client::QmpClient;
use hospes_tests::{
    GuestKind, build_guest, skip_without_kvm, spawn_vmm, wait_for_text, wait_timeout,
};

const TIMEOUT: Duration = Duration::from_secs(30);

fn wait_for(path: &std::path::Path, text: &str) -> String {
    wait_for_text(path, text, TIMEOUT)
}

#[test]
fn qmp_stop_cont_reset_and_powerdown_drive_the_guest() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("powerbutton", GuestKind::Pvh);
    let console = g.dir.path().join("console.txt");
    let sock = g.dir.path().join("qmp.sock");
    let mut child = spawn_vmm(
        &g,
        "32M",
        &[
            "--serial".into(),
            format!("file:{}", console.display()),
            "--qmp".into(),
            format!("unix:{},server,nowait", sock.display()),
        ],
    );
    let once = "waiting for the power button\n";
    assert_eq!(wait_for(&console, once), once);
    let mut qmp = QmpClient::connect(&sock).unwrap();
    assert_eq!(qmp.query_status().unwrap().status, RunState::Running);
    qmp.stop().unwrap();
    assert_eq!(qmp.query_status().unwrap().status, RunState::Paused);
    qmp.wait_event("STOP", TIMEOUT).unwrap();
    qmp.cont().unwrap();
    qmp.wait_event("RESUME", TIMEOUT).unwrap();

    qmp.system_reset().unwrap();
    let reset = qmp.wait_event("RESET", TIMEOUT).unwrap();
    assert_eq!(reset.data["guest"], false);
    let twice = once.repeat(2);
    assert_eq!(wait_for(&console, &twice), twice);

    qmp.system_powerdown().unwrap();
    qmp.wait_event("POWERDOWN", TIMEOUT).unwrap();
    let shutdown = qmp.wait_event("SHUTDOWN", TIMEOUT).unwrap();
    assert_eq!(shutdown.data["reason"], "guest-shutdown");
    let status = wait_timeout(&mut child, TIMEOUT);
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        format!("{twice}power button pressed\n")
    );
}

#[test]
fn qmp_quit_ends_the_helper_with_status_0() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("powerbutton", GuestKind::Pvh);
    let console = g.dir.path().join("console.txt");
    let sock = g.dir.path().join("qmp.sock");
    let mut child = spawn_vmm(
        &g,
        "32M",
        &[
            "--serial".into(),
            format!("file:{}", console.display()),
            "--qmp".into(),
            format!("unix:{}", sock.display()),
        ],
    );
    wait_for(&console, "button\n");
    let mut qmp = QmpClient::connect(&sock).unwrap();
    qmp.quit().unwrap();
    let status = wait_timeout(&mut child, TIMEOUT);
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!sock.exists(), "the socket is removed");
}
