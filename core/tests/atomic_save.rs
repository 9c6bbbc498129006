//! Crash safety of `config::save`: a process killed with SIGKILL in the middle of saving
//! leaves the old file or the new one, never a broken one.
//!
//! The test re-runs this test binary as a child that saves two different settings in a
//! loop, kills it at random moments, and checks what is on disk each time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use hospes_core::config::{self, Boot, Network, OsKind, Size, VmConfig};

/// Set in the child to the file it must keep saving.
const LOOP_FILE_VAR: &str = "HOSPES_TEST_SAVE_LOOP_FILE";

/// Two settings that differ in size (the second has a long command line, so a save of
/// it takes many write calls and a torn write would show).
fn versions() -> [VmConfig; 2] {
    let small = VmConfig {
        version: 1,
        name: "small".into(),
        os: OsKind::Linux,
        cpus: 1,
        memory: Size::mib(256),
        boot: Boot::Kernel {
            kernel: "bzImage".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
        },
        disks: Vec::new(),
        cdrom: None,
        extra_cdroms: Vec::new(),
        display: Default::default(),
        network: Network::None,
        sound: false,
        sound_card: Default::default(),
        clock: Default::default(),
        usb: Vec::new(),
        on_reboot: Default::default(),
        uuid: None,
    };
    let large = VmConfig {
        name: "large".into(),
        cpus: 2,
        boot: Boot::Kernel {
            kernel: "bzImage".into(),
            initrd: None,
            cmdline: "x=123456789 ".repeat(40_000),
        },
        ..small.clone()
    };
    [small, large]
}

/// The child's side: saves the two versions in turn until killed.
#[test]
#[ignore = "run by killed_saves_leave_the_old_or_the_new_file as a child process"]
fn save_loop_child() {
    let Some(file) = std::env::var_os(LOOP_FILE_VAR) else {
        return;
    };
    let versions = versions();
    for i in 0.. {
        config::save(Path::new(&file), &versions[i % 2]).unwrap();
    }
}

/// A small xorshift generator: random kill times without a crate.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn killed_saves_leave_the_old_or_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.ron");
    let versions = versions();
    config::save(&file, &versions[0]).unwrap();
    let mut random = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut seen = [false; 2];
    for round in 0..40 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "save_loop_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env(LOOP_FILE_VAR, &file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let the child get into its loop (its first save of the other version), then kill
        // it: in even rounds at once, which catches the version it just saved on disk
        // (the child is writing the next one); in odd rounds at a random moment, where
        // time spent writing the large version leaves the small one. Random moments alone
        // left the large version so rarely where saves are fast that 40 rounds
        // sometimes never saw it.
        let started = Instant::now();
        let before = std::fs::read(&file).unwrap();
        while std::fs::read(&file).unwrap() == before && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if round % 2 == 1 {
            std::thread::sleep(Duration::from_micros(next_random(&mut random) % 20_000));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let text = std::fs::read_to_string(&file).unwrap();
        let loaded = config::parse(&text, &file)
            .unwrap_or_else(|e| panic!("round {round}: broken file after kill -9: {e}"));
        let which = versions
            .iter()
            .position(|v| *v == loaded)
            .unwrap_or_else(|| panic!("round {round}: neither version: {}", loaded.name));
        seen[which] = true;
    }
    assert!(
        seen[0] && seen[1],
        "kills never caught both versions: {seen:?}"
    );
    // The next save clears the temporary files killed savers left (one is made here for
    // certain: no process can have pid 999999999, above the kernel's limit).
    std::fs::write(dir.path().join(".vm.ron.tmp-999999999-0"), b"(").unwrap();
    config::save(&file, &versions[0]).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("vm.ron")]);
}
