//! The e1000e card (Intel 82574L) end to end: the `e1000e` guest (tests/guests/e1000e.S, a
//! polling driver) finds the card, reads its MAC and checksum from the EEPROM, its PHY id,
//! brings the link up, broadcasts a DHCPDISCOVER and prints the offer it gets.
//!
//! - Under `hospes-vmm --net user,model=e1000e` (and vm.ron `card: E1000e`) the offer comes
//!   from a real passt: the host's own address and gateway.
//! - Under QEMU (`-device e1000e -netdev user`) the same guest must print the same lines,
//!   except the addresses of the offer (QEMU's user network offers 10.0.2.15 from
//!   10.0.2.2). QEMU runs as `qemu-system-x86_64 -accel kvm -accel tcg -M q35 -m 64M
//!   -nodefaults -display none -bios /usr/share/seabios/bios-256k.bin -serial file:S
//!   -kernel e1000e.elf -device e1000e,netdev=n,mac=MAC -netdev user,id=n`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hospes_tests::peers::{LiveVm, host_ipv4, require_program};
use hospes_tests::{GuestKind, build_guest, skip_without_kvm, wait_for_text};

const BOOT: Duration = Duration::from_secs(60);
const MAC: &str = "52:54:00:ab:cd:ef";
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// The offer's two addresses, from "dhcp offer A.B.C.D router E.F.G.H".
fn offer(lines: &[String]) -> (String, String) {
    let line = lines
        .iter()
        .find(|l| l.starts_with("dhcp offer "))
        .unwrap_or_else(|| panic!("no DHCP offer: {lines:?}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(w.len(), 5, "{line}");
    (w[2].to_owned(), w[4].to_owned())
}

/// The lines with the offer's addresses blanked: what two user networks agree on.
fn structure(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l.strip_prefix("dhcp offer ") {
            Some(_) => "dhcp offer A router R".to_owned(),
            None => l.clone(),
        })
        .collect()
}

/// What the guest must print on a working card (the offer blanked).
const EXPECTED: &[&str] = &[
    "found 8086:10d3",
    "mac 52:54:00:ab:cd:ef",
    "eeprom sum baba",
    "phy id 01410cb0",
    "link up",
    "sent, tdh 1 txdw 1",
    "dhcp offer A router R",
    "rx status 03 rxt0 1 gprc>0 1 gptc 1",
    "done",
];

/// Runs the guest under hospes-vmm with `args` and returns its lines once it is done.
fn hospes_lines(args: &[&str]) -> Vec<String> {
    let mut vm = LiveVm::spawn(args, &[]);
    let done = vm.wait_line("done", BOOT);
    let (status, out, err) = vm.finish(BOOT);
    assert!(done.is_some(), "the guest did not finish: {out:?}\n{err}");
    assert!(status.is_some_and(|s| s.success()), "{out:?} {err}");
    out
}

/// The guest under `hospes-vmm --net user,model=e1000e,mac=MAC`.
fn hospes_flag_lines() -> Vec<String> {
    let g = build_guest("e1000e", GuestKind::Pvh);
    let net = format!("user,model=e1000e,mac={MAC}");
    let kernel = g.path.to_str().unwrap();
    hospes_lines(&["--kernel", kernel, "-m", "64M", "--no-rng", "--net", &net])
}

/// The offer from passt is the host's address and gateway.
fn assert_passt_offer(lines: &[String]) {
    let (addr, router) = offer(lines);
    let (addrs, gw) = host_ipv4();
    assert!(addrs.contains(&addr), "{addr} vs {addrs:?}");
    if let Some(gw) = gw {
        assert_eq!(router, gw);
    }
}

#[test]
fn hospes_e1000e_gets_a_dhcp_offer_from_passt() {
    if skip_without_kvm() {
        return;
    }
    require_program("passt", "passt");
    let lines = hospes_flag_lines();
    assert_eq!(structure(&lines), EXPECTED, "{lines:?}");
    assert_passt_offer(&lines);
}

#[test]
fn vm_ron_card_e1000e_gives_the_guest_an_e1000e_and_no_virtio_net() {
    if skip_without_kvm() {
        return;
    }
    require_program("passt", "passt");
    let g = build_guest("e1000e", GuestKind::Pvh);
    let kernel = g.path.file_name().unwrap().to_str().unwrap();
    let ron = g.dir.path().join("vm.ron");
    std::fs::write(
        &ron,
        format!(
            "(version: 1, name: \"e1000evm\", os: Linux, cpus: 1, memory: \"64M\",\n \
             boot: Kernel(kernel: \"{kernel}\"),\n \
             display: (enabled: false),\n \
             network: User(mac: \"{MAC}\", forwards: [], card: E1000e),\n \
             sound: false)\n"
        ),
    )
    .unwrap();
    let lines = hospes_lines(&["--config", ron.to_str().unwrap(), "--no-rng"]);
    assert_eq!(structure(&lines), EXPECTED, "{lines:?}");
    assert_passt_offer(&lines);
    // The virtio-net guest finds no virtio card on the same configuration.
    let n = build_guest("net", GuestKind::Pvh);
    let nkernel = n.path.file_name().unwrap().to_str().unwrap();
    let nron = n.dir.path().join("vm.ron");
    let text = std::fs::read_to_string(&ron)
        .unwrap()
        .replace(kernel, nkernel);
    std::fs::write(&nron, text).unwrap();
    let mut vm = LiveVm::spawn(&["--config", nron.to_str().unwrap(), "--no-rng"], &[]);
    assert!(
        vm.wait_line("no virtio-net card", BOOT).is_some(),
        "{:?}",
        vm.seen
    );
    let (status, _, err) = vm.finish(BOOT);
    assert!(status.is_some_and(|s| s.success()), "{err}");
}

/// A child process killed on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The guest under QEMU's e1000e on its user network, until it prints "done".
fn qemu_lines() -> Vec<String> {
    require_program("qemu-system-x86_64", "qemu-system-x86");
    let g = build_guest("e1000e", GuestKind::Pvh);
    let serial = g.dir.path().join("serial.txt");
    let _qemu = KillOnDrop(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "kvm", "-accel", "tcg", "-M", "q35", "-m", "64M"])
            .args(["-nodefaults", "-display", "none", "-bios", SEABIOS])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(&g.path)
            .args(["-device", &format!("e1000e,netdev=n,mac={MAC}")])
            .args(["-netdev", "user,id=n"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start QEMU"),
    );
    let text = wait_for_text(&serial, "done", BOOT);
    assert!(
        text.contains("done"),
        "QEMU: the guest did not finish:\n{text}"
    );
    text.lines().map(str::to_owned).collect()
}

#[test]
fn qemu_e1000e_answers_the_guest_as_the_test_expects() {
    let lines = qemu_lines();
    assert_eq!(structure(&lines), EXPECTED, "{lines:?}");
    assert_eq!(
        offer(&lines),
        ("10.0.2.15".to_owned(), "10.0.2.2".to_owned())
    );
}

#[test]
fn hospes_e1000e_prints_what_qemus_e1000e_prints() {
    if skip_without_kvm() {
        return;
    }
    require_program("passt", "passt");
    let ours = hospes_flag_lines();
    let theirs = qemu_lines();
    assert_eq!(
        structure(&ours),
        structure(&theirs),
        "hospes {ours:?}\nqemu {theirs:?}"
    );
}
