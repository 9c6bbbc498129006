//! Save and resume of a whole VM with the real helper: QMP `hospes-save` writes the
//! machine to `--state FILE` and the helper exits; started again with the same flags, it
//! resumes from the file and the guest goes on where it stopped.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use hospes_tests::save::{assert_counts_on, counts, save_and_wait};
use hospes_tests::{Guest, GuestKind, build_guest, skip_without_kvm, spawn_vmm, wait_timeout};

const TIMEOUT: Duration = Duration::from_secs(60);

/// One run of the counting guest: its console file, QMP socket and state file.
struct Run {
    console: PathBuf,
    qmp: PathBuf,
    child: Child,
}

fn start(guest: &Guest, memory: &str, state: &Path, tag: &str, extra: &[&str]) -> Run {
    let console = guest.dir.path().join(format!("console-{tag}.txt"));
    let qmp = guest.dir.path().join(format!("qmp-{tag}.sock"));
    let mut args = vec![
        "--serial".to_string(),
        format!("file:{}", console.display()),
        "--qmp".into(),
        format!("unix:{}", qmp.display()),
        "--state".into(),
        state.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = spawn_vmm(guest, memory, &args);
    Run {
        console,
        qmp,
        child,
    }
}

/// Waits until the console shows at least `n` complete counts; returns its text.
fn wait_counts(run: &mut Run, n: u64) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&run.console).unwrap_or_default();
        if counts(&text).len() as u64 >= n {
            return text;
        }
        if let Ok(Some(status)) = run.child.try_wait() {
            panic!("the helper ended ({status}) before {n} counts:\n{text}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} counts after {TIMEOUT:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Run {
    /// A failed test does not leave its helper running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn quit(mut run: Run) {
    let mut qmp = hospes_core::control::client::QmpClient::connect(&run.qmp).expect("QMP");
    qmp.quit().expect("quit");
    let status = wait_timeout(&mut run.child, TIMEOUT).expect("the helper exits on quit");
    assert!(status.success(), "quit: {status}");
}

/// The counting guest with the USB controller and its devices, saved mid-count
/// and resumed: the count goes on from where it stopped, memory intact, and the file is
/// gone once the VM runs again.
#[test]
fn a_counting_guest_saved_and_resumed_counts_on() {
    if skip_without_kvm() {
        return;
    }
    let guest = build_guest("count", GuestKind::Pvh);
    let state = guest.dir.path().join("vm.hospes");
    let devices = ["--usb", "on"];
    let mut first = start(&guest, "64M", &state, "first", &devices);
    wait_counts(&mut first, 20);
    let report = save_and_wait(&first.qmp, &mut first.child);
    assert_eq!(report.file, state);
    let on_disk = std::fs::metadata(&state).expect("the state file").len();
    assert_eq!(report.bytes, on_disk);
    let before = std::fs::read_to_string(&first.console).unwrap();

    let mut second = start(&guest, "64M", &state, "second", &devices);
    let last_before = counts(&before).last().copied().unwrap_or(0);
    let after = wait_counts(&mut second, 20);
    let (saved_at, reached) = assert_counts_on(&before, &after);
    assert_eq!(saved_at, last_before);
    assert!(reached >= last_before + 20);
    assert!(
        !state.exists(),
        "the state file is still there after the resume"
    );
    quit(second);
}

/// A save the helper is killed in the middle of (kill -9) leaves the state file that was
/// there before intact: the next start resumes from it.
#[test]
fn a_save_killed_midway_leaves_the_previous_state_intact() {
    if skip_without_kvm() {
        return;
    }
    // 192 MiB of non-zero RAM: the save takes long enough to be caught writing.
    let guest = hospes_tests::build_guest_with("count", GuestKind::Pvh, &["FILL_MIB=192"]);
    let state = guest.dir.path().join("vm.hospes");
    let partial = hospes_core::saved_state::partial_path(&state);

    // The previous state: a save of the guest after a few counts.
    let mut first = start(&guest, "256M", &state, "first", &[]);
    wait_counts(&mut first, 5);
    save_and_wait(&first.qmp, &mut first.child);
    let before = std::fs::read_to_string(&first.console).unwrap();
    let previous = std::fs::read(&state).expect("the first state file");

    // Another run of the same VM (started afresh, beside the kept file), killed while it
    // writes its own save.
    let kept = guest.dir.path().join("kept.hospes");
    std::fs::rename(&state, &kept).unwrap();
    let mut second = start(&guest, "256M", &state, "second", &[]);
    wait_counts(&mut second, 5);
    std::fs::rename(&kept, &state).unwrap();
    let mut qmp = hospes_core::control::client::QmpClient::connect(&second.qmp).unwrap();
    qmp.execute("hospes-save", None)
        .expect("hospes-save starts");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !partial.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the save never started writing {}",
            partial.display()
        );
        assert!(
            second.child.try_wait().unwrap().is_none(),
            "the save ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let written = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(
        written < previous.len() as u64,
        "the killed save had already written {written} bytes"
    );
    assert_eq!(
        std::fs::read(&state).expect("the previous state file"),
        previous,
        "the previous state changed"
    );

    // The next start resumes the previous state and counts on from it.
    let mut third = start(&guest, "256M", &state, "third", &[]);
    let after = wait_counts(&mut third, 5);
    assert_counts_on(&before, &after);
    assert!(
        !partial.exists(),
        "the killed save's partial file is still there after the next start"
    );
    quit(third);
}
