//! USB end to end: the `xhci` guest drives an xHCI controller (PCI 1b36:000d) by polling,
//! sets up the first USB HID device that is not a boot keyboard (a tablet) and prints its
//! interrupt IN reports; a pointer event sent through QMP `input-send-event` must come
//! back in them.
//!
//! Data flow: the guest prints every step ("<step> cc XX" with the xHCI completion code,
//! descriptor fields, "READY"); the test then sends, through the VMM's QMP socket, an
//! absolute move to (`X`, `Y`) with the left button down, then the button up; the guest
//! prints each report as "report cc XX len NN: b0 b1 ..." until the press has been followed
//! by a release, then "DONE".
//!
//! The tablet report layout these tests decode (QEMU's usb-tablet has it; Hospes' tablet
//! must too): byte 0 buttons (bit 0 left, bit 1 right, bit 2 middle), bytes 1-2 X and
//! bytes 3-4 Y as little-endian 0..0x7fff, byte 5 the wheel.
//!
//! - `qemu_*`: the guest under QEMU's `qemu-xhci` + `usb-tablet` (and `usb-kbd`, which the
//!   guest must skip): pins what a real xHCI and tablet answer.
//! - `hospes_*`: the same guest under `hospes-vmm --usb` (its xHCI with a tablet and a
//!   keyboard), then under QEMU with the same devices: the lines that do not depend on the
//!   implementation (completion codes, device and interface class, the endpoint address,
//!   the decoded reports) must agree. Vendor/product ids, descriptor lengths, port numbers
//!   and speed may differ.
//!
//! QEMU (Debian package qemu-system-x86, installed by the test command) runs as
//! `qemu-system-x86_64 -accel kvm -accel tcg -M q35 -m 64M -nodefaults -display none
//! -bios /usr/share/seabios/bios-256k.bin -serial file:S -qmp unix:Q,server=on,wait=off
//! -kernel xhci.elf -device qemu-xhci [-device usb-kbd] -device usb-tablet`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hospes_core::control::client::QmpClient;
use hospes_tests::{GuestKind, build_guest, skip_without_kvm, vmm_binary, wait_for_text};
use serde_json::json;

/// The guest needs a few seconds under QEMU; the helper's nested KVM is slower.
const TIMEOUT: Duration = Duration::from_secs(90);
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// Where the test puts the pointer: exact pixels at 640x480, 1024x768 and 1280x800, so a
/// VMM that maps QMP's 0..0x7fff through the screen size gets them back unchanged.
const X: u16 = 0x1400;
const Y: u16 = 0x2800;
/// How far Hospes' X/Y may be from `X`/`Y`: two pixels of a 480-line screen, for a VMM that
/// maps QMP's absolute axes through its screen.
const SLACK: u16 = 0x90;

/// A child process killed on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One tablet report as the tests decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Report {
    buttons: u8,
    x: u16,
    y: u16,
}

/// Decodes "report cc XX len NN: b0 b1 b2 b3 b4 ..." (buttons, X LE, Y LE, ...).
fn decode(line: &str) -> Option<Report> {
    let bytes: Vec<u8> = line
        .strip_prefix("report cc ")?
        .split_once(':')?
        .1
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    match bytes.as_slice() {
        [buttons, x0, x1, y0, y1, ..] => Some(Report {
            buttons: *buttons,
            x: u16::from_le_bytes([*x0, *x1]),
            y: u16::from_le_bytes([*y0, *y1]),
        }),
        _ => None,
    }
}

/// The first report with the left button down and the last report (the release), decoded.
fn press_and_release(lines: &[String]) -> (Report, Report) {
    let reports: Vec<Report> = lines
        .iter()
        .filter(|l| l.starts_with("report cc "))
        .map(|l| decode(l).unwrap_or_else(|| panic!("undecodable report '{l}': {lines:?}")))
        .collect();
    let press = reports
        .iter()
        .find(|r| r.buttons & 1 != 0)
        .unwrap_or_else(|| panic!("no report with the left button down: {lines:?}"));
    let release = reports
        .last()
        .unwrap_or_else(|| panic!("no reports: {lines:?}"));
    (*press, *release)
}

/// QEMU's tablet reports the press and the release exactly at (`X`, `Y`).
fn assert_clicked_exactly(lines: &[String]) {
    let (press, release) = press_and_release(lines);
    let at = |buttons| Report {
        buttons,
        x: X,
        y: Y,
    };
    assert_eq!((press, release), (at(1), at(0)), "{lines:?}");
}

/// The lines that must read the same on every xHCI and tablet: from the last "port " line
/// on (the device set up; a keyboard before it was skipped), every step's completion code,
/// the device and interface class, the endpoint address, READY and DONE.
fn agreeing(lines: &[String]) -> Vec<String> {
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("port "))
        .unwrap_or(0);
    lines[start..]
        .iter()
        .filter(|l| {
            (l.contains(" cc ") && !l.starts_with("report cc "))
                || l.starts_with("device class ")
                || l.starts_with("interface class ")
                || (l.starts_with("endpoint ") && !l.starts_with("endpoint max packet"))
                || *l == "READY"
                || *l == "DONE"
        })
        .cloned()
        .collect()
}

/// What every xHCI and tablet must make the guest print (see `agreeing`).
const EXPECTED: &[&str] = &[
    "enable slot cc 01",
    "address device cc 01",
    "device descriptor cc 01",
    "device class 00",
    "configuration descriptor cc 01",
    "configuration descriptor cc 01",
    "interface class 03 subclass 00 protocol 00",
    "endpoint 81",
    "set configuration cc 01",
    "report descriptor cc 01",
    "set idle cc 01",
    "configure endpoint cc 01",
    "READY",
    "DONE",
];

/// Runs the VMM `cmd` (already told to write COM1 to `serial` and serve QMP on `qmp`)
/// until the guest is READY, sends the move with the left button down and then the
/// release, and returns the guest's lines once it prints DONE. `who` names the VMM in
/// failures.
fn drive(who: &str, cmd: &mut Command, serial: &Path, qmp: &Path) -> Vec<String> {
    let mut vm = KillOnDrop(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {who}: {e}")),
    );
    let deadline = Instant::now() + TIMEOUT;
    let mut text = String::new();
    while Instant::now() < deadline {
        text = wait_for_text(serial, "READY", Duration::from_millis(200));
        if text.contains("READY") || text.contains("FAILED") {
            break;
        }
        if let Ok(Some(status)) = vm.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = vm.0.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!(
                "{who} ended ({status}) before the guest was READY; stderr: {err}\nserial: {text}"
            );
        }
    }
    assert!(
        text.contains("READY"),
        "{who}: the guest did not get its tablet ready:\n{text}"
    );

    let mut client = QmpClient::connect(qmp).unwrap_or_else(|e| panic!("{who} QMP: {e}"));
    let abs =
        |axis: &str, value: u16| json!({"type": "abs", "data": {"axis": axis, "value": value}});
    let left = |down: bool| json!({"type": "btn", "data": {"down": down, "button": "left"}});
    client
        .execute(
            "input-send-event",
            Some(json!({"events": [abs("x", X), abs("y", Y), left(true)]})),
        )
        .unwrap_or_else(|e| panic!("{who} input-send-event: {e}"));
    // The release only once the press was reported, so that it is a report of its own.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if text.lines().filter_map(decode).any(|r| r.buttons & 1 != 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: no report with the left button down:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    client
        .execute("input-send-event", Some(json!({"events": [left(false)]})))
        .unwrap_or_else(|e| panic!("{who} input-send-event: {e}"));
    let text = wait_for_text(serial, "DONE", TIMEOUT);
    assert!(text.contains("DONE"), "{who}: no DONE:\n{text}");
    text.lines().map(str::to_owned).collect()
}

/// The guest under QEMU's q35 with qemu-xhci and `devices` (`usb-tablet`, `usb-kbd`) on it.
fn qemu_lines(devices: &[&str]) -> Vec<String> {
    let g = build_guest("xhci", GuestKind::Pvh);
    let serial = g.dir.path().join("serial.txt");
    let qmp = g.dir.path().join("qmp.sock");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "kvm", "-accel", "tcg", "-M", "q35", "-m", "64M"])
        .args(["-nodefaults", "-display", "none", "-bios", SEABIOS])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-kernel")
        .arg(&g.path)
        .args(["-device", "qemu-xhci"]);
    for d in devices {
        qemu.args(["-device", d]);
    }
    drive("QEMU", &mut qemu, &serial, &qmp)
}

#[test]
fn qemu_xhci_tablet_reports_a_qmp_move_and_click_to_the_guest() {
    let lines = qemu_lines(&["usb-tablet"]);
    assert_eq!(agreeing(&lines), EXPECTED, "{lines:?}");
    // QEMU's controller: USB 3 ports 1-4, USB 2 ports 5-8; the tablet is high speed.
    assert!(
        lines
            .iter()
            .any(|l| l == "supported protocol 0200 ports 5+4")
            && lines
                .iter()
                .any(|l| l == "supported protocol 0300 ports 1+4"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l == "port 5 speed 3"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "vendor 0627 product 0001"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "endpoint max packet 0008 interval 04"),
        "{lines:?}"
    );
    assert_clicked_exactly(&lines);
    // QEMU's report: buttons, X, Y, wheel: 6 bytes, short of the 8-byte packet.
    assert!(
        lines
            .iter()
            .any(|l| l == "report cc 0d len 06: 01 00 14 00 28 00"),
        "{lines:?}"
    );
}

#[test]
fn qemu_xhci_guest_skips_a_usb_keyboard_for_the_tablet_behind_it() {
    let lines = qemu_lines(&["usb-kbd", "usb-tablet"]);
    assert!(
        lines.windows(2).any(
            |w| w[0] == "interface class 03 subclass 01 protocol 01" && w[1] == "skip keyboard"
        ),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l == "slot 02"), "{lines:?}");
    assert_eq!(agreeing(&lines), EXPECTED, "{lines:?}");
    assert_clicked_exactly(&lines);
}

/// Hospes' xHCI and tablet (`hospes-vmm --usb`): the report layout in the header, X/Y
/// within `SLACK` of what was sent, and the same agreeing lines as QEMU with the same
/// devices. Fails until the helper has `--usb`.
#[test]
fn hospes_xhci_tablet_reports_a_qmp_move_and_click_as_qemu_does() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("xhci", GuestKind::Pvh);
    let serial = g.dir.path().join("serial.txt");
    let qmp = g.dir.path().join("qmp.sock");
    let mut vmm = Command::new(vmm_binary());
    vmm.arg("--kernel")
        .arg(&g.path)
        .args(["-m", "64M", "--usb"])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--qmp")
        .arg(format!("unix:{}", qmp.display()));
    let ours = drive("hospes-vmm --usb", &mut vmm, &serial, &qmp);
    let (press, release) = press_and_release(&ours);
    let near = |r: Report, buttons: u8| {
        r.buttons == buttons && r.x.abs_diff(X) <= SLACK && r.y.abs_diff(Y) <= SLACK
    };
    assert!(
        near(press, 1),
        "press {press:x?}, sent ({X:#x}, {Y:#x}): {ours:?}"
    );
    assert!(near(release, 0), "release {release:x?}: {ours:?}");

    let theirs = qemu_lines(&["usb-kbd", "usb-tablet"]);
    assert_eq!(
        agreeing(&ours),
        agreeing(&theirs),
        "hospes {ours:?}\nqemu {theirs:?}"
    );
    let (qpress, qrelease) = press_and_release(&theirs);
    assert_eq!(
        (press.buttons, release.buttons),
        (qpress.buttons, qrelease.buttons)
    );
}

/// QMP hot-plug on the real helper: an emulated tablet plugged into a free port and out
/// again (DEVICE_DELETED), and a host device the host does not have refused with a reason
/// that names it, the VM running on throughout.
#[test]
fn qmp_plugs_devices_into_the_running_helpers_xhci_and_out_again() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("xhci", GuestKind::Pvh);
    let serial = g.dir.path().join("serial.txt");
    let qmp = g.dir.path().join("qmp.sock");
    let _vm = KillOnDrop(
        Command::new(vmm_binary())
            .arg("--kernel")
            .arg(&g.path)
            .args(["-m", "64M", "--usb"])
            .arg("--serial")
            .arg(format!("file:{}", serial.display()))
            .arg("--qmp")
            .arg(format!("unix:{}", qmp.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hospes-vmm"),
    );
    let text = wait_for_text(&serial, "READY", TIMEOUT);
    assert!(text.contains("READY"), "{text}");
    let mut client = QmpClient::connect(&qmp).expect("QMP");
    let ports = |client: &mut QmpClient| {
        let mut v: Vec<(String, String)> = client
            .query_usb()
            .expect("query-usb")
            .into_iter()
            .map(|d| (d.id, d.port))
            .collect();
        v.sort();
        v
    };
    // --usb: the tablet and keyboard in the first USB 2 ports.
    assert_eq!(
        ports(&mut client),
        [
            ("keyboard".into(), "6".into()),
            ("tablet".into(), "5".into())
        ]
    );
    client
        .execute(
            "device_add",
            Some(json!({"driver": "usb-tablet", "id": "tab2"})),
        )
        .expect("device_add usb-tablet");
    assert!(
        ports(&mut client).contains(&("tab2".into(), "7".into())),
        "the next free USB 2 port"
    );
    client
        .execute("device_del", Some(json!({"id": "tab2"})))
        .expect("device_del");
    let deleted = client
        .wait_event("DEVICE_DELETED", Duration::from_secs(10))
        .expect("DEVICE_DELETED");
    assert_eq!(deleted.data["device"], "tab2", "{deleted:?}");
    assert!(!ports(&mut client).iter().any(|(id, _)| id == "tab2"));

    let refused = client
        .execute(
            "device_add",
            Some(json!({"driver": "usb-host", "vendorid": 0x1234, "productid": 0x5678})),
        )
        .expect_err("no such host device");
    assert!(
        refused.to_string().contains("1234:5678"),
        "the reason names the device: {refused}"
    );
    assert_eq!(
        client.query_status().expect("query-status").status,
        hospes_core::control::RunState::Running
    );
    let _ = client.quit();
}
