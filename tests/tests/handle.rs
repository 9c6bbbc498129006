//! The VmHandle the QMP server drives: status, pause, resume, power button, in-process.

use std::time::Duration;

use hospes_tests::{GuestKind, build_guest, skip_without_kvm, wait_for_text};
use hospes_vmm::machine::{
    Exit, MachineConfig, MachineError, RunState, SerialConfig, VmHandle, Vmm,
};

fn wait_for(path: &std::path::Path, text: &str) -> String {
    wait_for_text(path, text, Duration::from_secs(30))
}

/// The power-button guest with its console in a file, and that file's path.
fn powerbutton_vmm(cpus: u32, no_reboot: bool) -> (hospes_tests::Guest, std::path::PathBuf, Vmm) {
    let g = build_guest("powerbutton", GuestKind::Pvh);
    let console = g.dir.path().join("console.txt");
    let cfg = MachineConfig {
        kernel: g.path.clone(),
        initrd: None,
        cmdline: String::new(),
        memory: 32 << 20,
        cpus,
        serial: SerialConfig::File(console.clone()),
        no_reboot,
        firmware: None,
        hyperv: false,
        rtc_local: false,
        tpm: false,
        save_file: None,
    };
    let vmm = Vmm::new(cfg).unwrap();
    (g, console, vmm)
}

/// The power-button guest running on a thread, past its first line: its guest, console,
/// handle and the thread that returns how the run ended.
fn running_powerbutton(
    no_reboot: bool,
) -> (
    hospes_tests::Guest,
    std::path::PathBuf,
    VmHandle,
    std::thread::JoinHandle<Result<Exit, MachineError>>,
) {
    let (guest, console, mut vmm) = powerbutton_vmm(1, no_reboot);
    let handle = vmm.handle();
    let runner = std::thread::spawn(move || vmm.run(|_| Ok(())));
    wait_for(&console, "button\n");
    (guest, console, handle, runner)
}

#[test]
fn pause_resume_and_power_button_through_the_handle() {
    if skip_without_kvm() {
        return;
    }
    let (_guest, console, mut vmm) = powerbutton_vmm(2, true);
    let handle = vmm.handle();
    assert_eq!(handle.status(), RunState::Prelaunch);
    assert!(handle.powerdown().is_err(), "no machine yet");
    let runner = std::thread::spawn(move || vmm.run(|_| Ok(())));

    assert_eq!(
        wait_for(&console, "button\n"),
        "waiting for the power button\n"
    );
    assert_eq!(handle.status(), RunState::Running);
    handle.pause().unwrap();
    assert_eq!(handle.status(), RunState::Paused);
    assert_eq!(handle.status().as_qmp_str(), "paused");
    // Pressed while paused: seen once the vCPUs run again.
    handle.powerdown().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "waiting for the power button\n"
    );
    handle.resume();
    let exit = runner.join().unwrap().unwrap();
    assert_eq!(exit, Exit::PowerOff);
    assert_eq!(handle.status(), RunState::Shutdown);
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "waiting for the power button\npower button pressed\n"
    );
}

#[test]
fn quit_ends_a_running_vm() {
    if skip_without_kvm() {
        return;
    }
    let (_guest, _console, handle, runner) = running_powerbutton(false);
    handle.quit();
    assert_eq!(runner.join().unwrap().unwrap(), Exit::Quit);
}

#[test]
fn reset_reboots_and_the_handle_keeps_working() {
    if skip_without_kvm() {
        return;
    }
    let (_guest, console, handle, runner) = running_powerbutton(false);
    handle.reset();
    let twice = "waiting for the power button\nwaiting for the power button\n";
    assert_eq!(wait_for(&console, twice), twice);
    handle.powerdown().unwrap();
    assert_eq!(runner.join().unwrap().unwrap(), Exit::PowerOff);
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        format!("{twice}power button pressed\n")
    );
}

#[test]
fn reset_with_no_reboot_ends_the_run() {
    if skip_without_kvm() {
        return;
    }
    let (_guest, _console, handle, runner) = running_powerbutton(true);
    handle.reset();
    assert_eq!(runner.join().unwrap().unwrap(), Exit::Reset);
    assert_eq!(handle.status(), RunState::Shutdown);
}

#[test]
fn a_quit_during_a_reset_ends_the_vm_instead_of_being_lost() {
    if skip_without_kvm() {
        return;
    }
    let (_guest, console, mut vmm) = powerbutton_vmm(1, false);
    let handle = vmm.handle();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(vmm.run(|_| Ok(())));
    });
    assert_eq!(
        wait_for(&console, "button\n"),
        "waiting for the power button\n"
    );
    // Both requests are queued before the machine thread takes the first: the quit
    // arrives while the reset's boot is being torn down.
    handle.reset();
    handle.quit();
    let exit = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the VM must end after quit, not reboot and run on");
    assert!(matches!(exit, Ok(Exit::Quit)), "{exit:?}");
}
