//! virtio-net through a real passt: DHCP from passt, a UDP port forward from the host into
//! the guest and back, passt restarted after it dies, a save and resume in the middle of
//! DHCP exchanges, and a clear error without passt.
//! The guest is `tests/guests/net.S`, a polling virtio-net driver.

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use hospes_core::control::client::QmpClient;
use hospes_tests::peers::{LiveVm, free_udp_port, host_ipv4, process_name, require_program};
use hospes_tests::save::save_and_wait;
use hospes_tests::{
    Guest, GuestKind, build_guest, build_guest_with, skip_without_kvm, wait_timeout,
};

const BOOT: Duration = Duration::from_secs(30);

/// Sends `payload` to 127.0.0.1:`port` until the same bytes come back (up to 10 tries).
fn echo(sock: &UdpSocket, port: u16, payload: &[u8]) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        sock.send_to(payload, ("127.0.0.1", port)).ok()?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// The net guest on a card configured by `--net net`.
fn net_vm(g: &Guest, net: &str, env: &[(&str, &str)]) -> LiveVm {
    let kernel = g.path.to_str().unwrap();
    LiveVm::spawn(
        &["--kernel", kernel, "-m", "64M", "--no-rng", "--net", net],
        env,
    )
}

fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

#[test]
fn guest_gets_a_dhcp_offer_from_passt_and_echoes_a_forwarded_udp_port() {
    if skip_without_kvm() {
        return;
    }
    require_program("passt", "passt");
    let g = build_guest("net", GuestKind::Pvh);
    let port = free_udp_port();
    let net = format!("user,hostfwd=udp:{port}-:7,mac=52:54:00:ab:cd:ef");
    let mut vm = net_vm(&g, &net, &[]);
    let offer = vm.wait_line("dhcp offer ", BOOT);
    let Some(offer) = offer else {
        let (_, out, err) = vm.finish(Duration::ZERO);
        panic!("no DHCP offer; stdout {out:?}, stderr {err}");
    };
    // "dhcp offer A.B.C.D router E.F.G.H": passt offers the host's own address and gateway.
    let words: Vec<&str> = offer.split_whitespace().collect();
    let (addrs, gw) = host_ipv4();
    assert!(addrs.iter().any(|a| a == words[2]), "{offer} vs {addrs:?}");
    if let Some(gw) = gw {
        assert_eq!(words[4], gw, "{offer}");
    }
    assert!(vm.wait_line("ready", BOOT).is_some());

    let sock = udp_client();
    let reply = echo(&sock, port, b"hello through passt");
    assert_eq!(reply.as_deref(), Some(&b"hello through passt"[..]));
    assert!(vm.wait_line("echo 19", BOOT).is_some());
    let reply = echo(&sock, port, b"bye");
    assert_eq!(reply.as_deref(), Some(&b"bye"[..]));
    let (status, out, err) = vm.finish(BOOT);
    assert!(status.is_some_and(|s| s.success()), "{out:?} {err}");
    assert_eq!(out.last().map(String::as_str), Some("bye"));
}

#[test]
fn passt_killed_under_a_running_guest_is_restarted_and_the_forward_works_again() {
    if skip_without_kvm() {
        return;
    }
    require_program("passt", "passt");
    let g = build_guest("net", GuestKind::Pvh);
    let port = free_udp_port();
    let net = format!("user,hostfwd=udp:{port}-:7");
    let mut vm = net_vm(&g, &net, &[("HOSPES_LOG", "info")]);
    assert!(vm.wait_line("ready", BOOT).is_some(), "{:?}", vm.seen);
    let sock = udp_client();
    assert_eq!(echo(&sock, port, b"one").as_deref(), Some(&b"one"[..]));

    let passt: Vec<u32> = vm
        .children()
        .into_iter()
        .filter(|p| process_name(*p).starts_with("passt"))
        .collect();
    assert_eq!(passt.len(), 1, "one passt per VM");
    // SAFETY: kill(2) on the pid of a child of the helper we started.
    assert_eq!(unsafe { libc::kill(passt[0] as i32, libc::SIGKILL) }, 0);

    // The new passt binds the forward again; the guest never noticed.
    assert_eq!(echo(&sock, port, b"two").as_deref(), Some(&b"two"[..]));
    let after: Vec<u32> = vm
        .children()
        .into_iter()
        .filter(|p| process_name(*p).starts_with("passt"))
        .collect();
    assert_eq!(after.len(), 1);
    assert_ne!(after, passt);
    assert_eq!(echo(&sock, port, b"bye").as_deref(), Some(&b"bye"[..]));
    let (status, out, err) = vm.finish(BOOT);
    assert!(status.is_some_and(|s| s.success()), "{out:?} {err}");
    assert!(err.contains("passt exited"), "the death is reported: {err}");
}

#[test]
fn without_passt_the_helper_says_which_package_is_missing() {
    let g = build_guest("net", GuestKind::Pvh);
    let mut vm = LiveVm::spawn(
        &[
            "--kernel",
            g.path.to_str().unwrap(),
            "-m",
            "64M",
            "--net",
            "user",
        ],
        &[("PATH", "/nonexistent")],
    );
    assert!(vm.wait_line("", Duration::from_secs(5)).is_none());
    let (status, _, err) = vm.finish(BOOT);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("passt package"), "{err}");
}

#[test]
fn net_none_and_no_flag_give_the_guest_no_card() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("net", GuestKind::Pvh);
    for extra in [&["--net", "none"][..], &[][..]] {
        let mut args = vec!["--kernel", g.path.to_str().unwrap(), "-m", "64M"];
        args.extend_from_slice(extra);
        let mut vm = LiveVm::spawn(&args, &[]);
        assert!(vm.wait_line("no virtio-net card", BOOT).is_some());
        let (status, _, err) = vm.finish(BOOT);
        assert!(status.is_some_and(|s| s.success()), "{err}");
    }
}

#[test]
fn vm_ron_network_settings_reach_passt_and_the_flag_overrides_them() {
    if skip_without_kvm() {
        return;
    }
    require_program("passt", "passt");
    let g = build_guest("net", GuestKind::Pvh);
    let port = free_udp_port();
    let kernel = g.path.file_name().unwrap().to_str().unwrap();
    let ron = g.dir.path().join("vm.ron");
    std::fs::write(
        &ron,
        format!(
            "(version: 1, name: \"netvm\", os: Linux, cpus: 1, memory: \"64M\",\n \
             boot: Kernel(kernel: \"{kernel}\"),\n \
             display: (enabled: false),\n \
             network: User(mac: \"52:54:00:00:00:42\",\n \
             forwards: [(protocol: Udp, host: {port}, guest: 7)]),\n \
             sound: false)\n"
        ),
    )
    .unwrap();
    let mut vm = LiveVm::spawn(&["--config", ron.to_str().unwrap(), "--no-rng"], &[]);
    assert!(vm.wait_line("ready", BOOT).is_some(), "{:?}", vm.seen);
    let sock = udp_client();
    assert_eq!(
        echo(&sock, port, b"from ron").as_deref(),
        Some(&b"from ron"[..])
    );
    assert_eq!(echo(&sock, port, b"bye").as_deref(), Some(&b"bye"[..]));
    let (status, out, err) = vm.finish(BOOT);
    assert!(status.is_some_and(|s| s.success()), "{out:?} {err}");

    let mut vm = LiveVm::spawn(&["--config", ron.to_str().unwrap(), "--net", "none"], &[]);
    assert!(vm.wait_line("no virtio-net card", BOOT).is_some());
    let (status, _, err) = vm.finish(BOOT);
    assert!(status.is_some_and(|s| s.success()), "{err}");
}

#[test]
fn a_forward_from_a_busy_host_port_fails_the_start_with_passts_reason() {
    require_program("passt", "passt");
    let g = build_guest("net", GuestKind::Pvh);
    let busy = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let vm = net_vm(&g, &format!("user,hostfwd=udp:{port}-:7"), &[]);
    let (status, out, err) = vm.finish(BOOT);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out:?} {err}");
    assert!(err.contains("passt exited at start"), "{err}");
    assert!(
        err.contains(&format!("{port}")),
        "passt's own reason: {err}"
    );
}

/// The numbers of the "round N" lines among `lines`.
fn rounds(lines: &[String]) -> Vec<u32> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("round "))
        .map(|n| n.parse().unwrap_or_else(|_| panic!("not a round: {n:?}")))
        .collect()
}

/// The DHCP_ROUNDS guest, which runs one DHCP exchange with passt after another, saved
/// between two of them and resumed with the same flags: the rounds go on without a restart
/// and a round begun after the resume gets its offer, so the card sent and received on
/// the connection to the new passt.
#[test]
fn a_guest_saved_between_dhcp_exchanges_gets_offers_from_the_new_passt_after_the_resume() {
    if skip_without_kvm() {
        return;
    }
    require_program("passt", "passt");
    let g = build_guest_with("net", GuestKind::Pvh, &["DHCP_ROUNDS"]);
    let state = g.dir.path().join("vm.hospes");
    let start = |tag: &str| {
        let qmp = g.dir.path().join(format!("qmp-{tag}.sock"));
        let args = [
            "--kernel".to_string(),
            g.path.display().to_string(),
            "-m".into(),
            "64M".into(),
            "--no-rng".into(),
            "--net".into(),
            "user,mac=52:54:00:ab:cd:01".into(),
            "--qmp".into(),
            format!("unix:{}", qmp.display()),
            "--state".into(),
            state.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (LiveVm::spawn(&args, &[("HOSPES_LOG", "info")]), qmp)
    };

    let (mut first, qmp) = start("first");
    let Some(offer) = first.wait_line("dhcp offer ", BOOT) else {
        let (_, out, err) = first.finish(Duration::ZERO);
        panic!("no DHCP offer; stdout {out:?}, stderr {err}");
    };
    // Two exchanges done, the third about to start or under way.
    assert!(
        first.wait_line("round 3", BOOT).is_some(),
        "{:?}",
        first.seen
    );
    let report = save_and_wait(&qmp, &mut first.child);
    assert_eq!(report.file, state);
    let (_, before, err) = first.finish(BOOT);
    assert!(state.exists(), "no state file; stderr {err}");
    let last = *rounds(&before).last().expect("rounds before the save");

    let (mut second, qmp) = start("second");
    let next = format!("round {}", last + 1);
    let resumed = second.wait_line(&next, BOOT);
    assert!(
        resumed.is_some(),
        "the resumed guest never began {next:?}: {:?}",
        second.seen
    );
    let offer_after = second.wait_line("dhcp offer ", BOOT);
    assert_eq!(
        offer_after.as_deref(),
        Some(offer.as_str()),
        "the round begun after the resume got no offer through the new passt: {:?}",
        second.seen
    );
    assert!(
        !state.exists(),
        "the state file is gone once the guest runs"
    );
    quit(&qmp, &mut second);
    let (_, after, _) = second.finish(Duration::ZERO);
    // One run of rounds: a restarted guest would count from 1 again; none lost or repeated.
    let all: Vec<u32> = rounds(&before).into_iter().chain(rounds(&after)).collect();
    assert_eq!(
        all,
        (1..=all.len() as u32).collect::<Vec<_>>(),
        "{before:?} then {after:?}"
    );
}

/// Ends the helper through QMP `quit` and waits for it.
fn quit(qmp: &Path, vm: &mut LiveVm) {
    let mut client = QmpClient::connect(qmp).expect("connect to QMP");
    client.quit().expect("quit");
    let status = wait_timeout(&mut vm.child, BOOT).expect("the helper exits on quit");
    assert!(status.success(), "quit: {status}");
}
