//! Slow tier (opt-in): a Windows 11 install ISO boots to setup's first screen in a VM made
//! from the windows11 preset — UEFI with Secure Boot (SMM), the TPM through swtpm, a SATA
//! disk and the CD, e1000e, HD Audio, std-VGA, the USB tablet, Hyper-V enlightenments —
//! started the way the app starts it (`hospes_core::launch::spawn_helper`).
//!
//! Run on a laptop with VT-x/AMD-V:
//! `HOSPES_WINDOWS_ISO=/path/Win11_24H2_English_x64.iso cargo test -p hospes-tests --test
//! slow_windows -- --ignored --nocapture` (or `make test-slow`). This project's CI KVM is
//! nested without VT-x and cannot run OVMF (it stops at OVMF's first x87 instruction).
//!
//! Data flow: the test presses Enter through QMP while the firmware asks "Press any key to
//! boot from CD or DVD", then takes a screendump every 5 s. Setup's first screen (the
//! language dialog on its coloured background) waits for input: the test passes when the
//! screen is a firmware-sized picture with many colours that stays the same for three
//! dumps in a row. The last dump is kept in `target/slow-windows/setup.png` for a person
//! to look at, with the helper's log beside it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hospes_core::config::Size;
use hospes_core::control::client::QmpClient;
use hospes_core::launch::{LaunchSpec, spawn_helper};
use hospes_core::library::{CreateRequest, HostResources, Library, Preset};
use hospes_core::runtime::RuntimeDir;
use hospes_tests::{read_png, skip_without_kvm, target_dir, vmm_binary};

/// From power-on to setup's first screen on a laptop: about a minute; leave room.
const TIMEOUT: Duration = Duration::from_secs(600);
/// How long the firmware's "Press any key to boot from CD or DVD" is answered.
const PRESS_FOR: Duration = Duration::from_secs(30);

/// Distinct colours in a picture (a firmware text screen has a handful; setup's dialog
/// with its fonts and background has thousands).
fn colours(pixels: &[u32]) -> usize {
    let mut seen: Vec<u32> = pixels.to_vec();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

fn press(client: &mut QmpClient, key: &str) {
    for down in [true, false] {
        let event = serde_json::json!({ "events": [
            { "type": "key", "data": { "down": down, "key": { "type": "qcode", "data": key } } }
        ] });
        // A key lost while the helper starts up is pressed again next time.
        let _ = client.execute("input-send-event", Some(event));
    }
}

#[test]
#[ignore = "slow tier: needs HOSPES_WINDOWS_ISO, OVMF, swtpm and a KVM with VT-x/AMD-V"]
fn windows_11_setup_shows_its_first_screen() {
    if skip_without_kvm() {
        return;
    }
    let Some(iso) = std::env::var_os("HOSPES_WINDOWS_ISO").map(PathBuf::from) else {
        eprintln!("slow_windows: set HOSPES_WINDOWS_ISO to a Windows 11 install ISO");
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let library = Library::open(data.path().join("machines"))
        .unwrap()
        .with_host_resources(HostResources::detect(data.path()));
    let mut request = CreateRequest::new("Windows 11", Preset::Windows11);
    request.iso = Some(iso);
    // Setup's first screen reads nothing from the disk; a sparse 64 GiB image costs nothing.
    request.disk_size = Some(Size::gib(64));
    request.memory = Some(Size::gib(4));
    request.cpus = Some(2);
    let machine = library.create(&request).unwrap();
    let config = machine.config.as_ref().expect("the preset loads");
    println!("slow_windows: {config:#?}");

    let runtime = RuntimeDir::create_in(data.path(), &machine.id).unwrap();
    let mut spec = LaunchSpec::new(vmm_binary(), "Windows 11", machine.config_path());
    spec.ready_timeout = Duration::from_secs(30);
    spawn_helper(&spec, &runtime).expect("start the helper");
    let mut client =
        QmpClient::connect_with_timeout(&runtime.qmp_socket(), Duration::from_secs(10))
            .expect("QMP");

    let out = target_dir().join("slow-windows");
    std::fs::create_dir_all(&out).unwrap();
    let png = out.join("setup.png");
    let start = Instant::now();
    let mut last: Option<(u32, u32, Vec<u32>)> = None;
    let mut same = 0;
    let reached = loop {
        if start.elapsed() > TIMEOUT {
            break false;
        }
        if start.elapsed() < PRESS_FOR {
            press(&mut client, "ret");
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        std::thread::sleep(Duration::from_secs(5));
        let args = serde_json::json!({ "filename": png.display().to_string(), "format": "png" });
        if client.execute("screendump", Some(args)).is_err() {
            continue;
        }
        let now = read_png(&png);
        let rich = now.0 >= 800 && colours(&now.2) > 256;
        same = match (&last, rich) {
            (Some(prev), true) if *prev == now => same + 1,
            _ => 0,
        };
        last = Some(now);
        if same >= 2 {
            break true;
        }
    };
    let _ = client.execute("quit", None);
    let log = std::fs::read_to_string(runtime.log_file()).unwrap_or_default();
    std::fs::write(out.join("helper.log"), &log).unwrap();
    assert!(
        reached,
        "no still setup screen within {TIMEOUT:?}; last screen in {}, helper log:\n{log}",
        png.display()
    );
    // Every device of the preset came up: nothing in the log says one is missing.
    for missing in ["cannot give", "no sound card", "TPM failed", "swtpm exited"] {
        assert!(!log.contains(missing), "{missing}: {log}");
    }
    println!(
        "slow_windows: setup's first screen after {:?}, in {}",
        start.elapsed(),
        png.display()
    );
}
