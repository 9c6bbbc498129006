//! SMP start-up, resets, power-off, and a guest writing garbage everywhere.

use std::time::Duration;

use hospes_tests::{GuestKind, build_guest, run_vmm, skip_without_kvm};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn second_cpu_starts_through_init_sipi() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("smp", GuestKind::Pvh);
    let out = run_vmm(
        &[
            "--kernel",
            g.path.to_str().unwrap(),
            "--cpus",
            "2",
            "-m",
            "64M",
        ],
        TIMEOUT,
    );
    assert_eq!(
        out.stdout, "bsp: starting cpu 1\nap: hello from cpu 1\nbsp: cpu 1 is up\n",
        "stderr: {}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
}

#[test]
fn i8042_reset_reboots_and_cmos_survives() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("reset", GuestKind::Pvh);
    let out = run_vmm(
        &["--kernel", g.path.to_str().unwrap(), "-m", "64M"],
        TIMEOUT,
    );
    assert_eq!(
        out.stdout, "reset: first boot\nreset: second boot\n",
        "stderr: {}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
}

#[test]
fn no_reboot_turns_a_reset_into_exit_0() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("reset", GuestKind::Pvh);
    let out = run_vmm(
        &[
            "--kernel",
            g.path.to_str().unwrap(),
            "-m",
            "64M",
            "--no-reboot",
        ],
        TIMEOUT,
    );
    assert_eq!(out.stdout, "reset: first boot\n", "stderr: {}", out.stderr);
    assert!(out.success(), "{out:?}");
}

#[test]
fn garbage_io_is_logged_rate_limited_and_ignored() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("garbage", GuestKind::Pvh);
    let out = run_vmm(
        &["--kernel", g.path.to_str().unwrap(), "-m", "64M"],
        TIMEOUT,
    );
    assert_eq!(out.stdout, "alive\n", "stderr: {}", out.stderr);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stderr.contains("unhandled port write 0x0000 <- [a5]"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unhandled MMIO write 0x8000000"),
        "{}",
        out.stderr
    );
    // Thousands of unclaimed accesses; a handful of call sites, each limited per second,
    // and the size of the flood on record when the VM ends.
    assert!(out.stderr.contains("more messages"), "{}", out.stderr);
    assert!(
        out.stderr.lines().count() < 200,
        "{} lines",
        out.stderr.lines().count()
    );
}

#[test]
fn pci_scan_finds_the_host_bridge_one_virtio_blk_per_disk_and_virtio_rng() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("pci", GuestKind::Pvh);
    let disk = g.dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let kernel = g.path.to_str().unwrap();
    let out = run_vmm(&["--kernel", kernel, "-m", "64M", "--no-rng"], TIMEOUT);
    assert_eq!(
        out.stdout, "pci 00:00.0 8086:1237\npci scan done\n",
        "stderr: {}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
    let d = disk.to_str().unwrap();
    let out = run_vmm(&["--kernel", kernel, "-m", "64M", "--disk", d], TIMEOUT);
    assert_eq!(
        out.stdout,
        "pci 00:00.0 8086:1237\npci 00:01.0 1af4:1042\npci 00:02.0 1af4:1044\npci scan done\n",
        "stderr: {}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
}

#[test]
fn acpi_reset_register_and_triple_fault_reboot_too() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("reset", GuestKind::Pvh);
    for how in ["acpi", "triple"] {
        let args = [
            "--kernel",
            g.path.to_str().unwrap(),
            "-m",
            "64M",
            "--cmdline",
            how,
        ];
        let out = run_vmm(&args, TIMEOUT);
        assert_eq!(
            out.stdout, "reset: first boot\nreset: second boot\n",
            "{how}: {}",
            out.stderr
        );
        assert!(out.success(), "{how}: {out:?}");
        let mut once = args.to_vec();
        once.push("--no-reboot");
        let out = run_vmm(&once, TIMEOUT);
        assert_eq!(out.stdout, "reset: first boot\n", "{how}: {}", out.stderr);
        assert!(out.success(), "{how}: {out:?}");
    }
}

#[test]
fn sigterm_ends_the_vm_cleanly_with_status_0() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("powerbutton", GuestKind::Pvh);
    let console = g.dir.path().join("console.txt");
    let serial = format!("file:{}", console.display());
    let mut child = hospes_tests::spawn_vmm(&g, "32M", &["--serial".into(), serial]);
    let started = hospes_tests::wait_for_text(&console, "\n", TIMEOUT);
    assert!(started.contains('\n'), "guest never started");
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = hospes_tests::wait_timeout(&mut child, TIMEOUT);
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "waiting for the power button\n"
    );
}

#[test]
fn stdin_reaches_the_guest_through_com1() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("echo", GuestKind::Pvh);
    let out = hospes_tests::run_vmm_with_input(
        &["--kernel", g.path.to_str().unwrap(), "-m", "32M"],
        Some(b"hello from the host\n"),
        TIMEOUT,
    );
    assert_eq!(
        out.stdout, "type a line\ngot: hello from the host\n",
        "stderr: {}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
}

#[test]
fn unix_socket_console_carries_input_and_output() {
    use std::io::{BufRead, BufReader, Write};
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("echo", GuestKind::Pvh);
    let sock = g.dir.path().join("serial.sock");
    let serial = format!("unix:{}", sock.display());
    let mut child = hospes_tests::spawn_vmm(&g, "32M", &["--serial".into(), serial]);
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut conn = loop {
        if let Ok(c) = std::os::unix::net::UnixStream::connect(&sock) {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no console socket");
        std::thread::sleep(Duration::from_millis(5));
    };
    conn.write_all(b"over the socket\n").unwrap();
    let mut lines = BufReader::new(conn).lines().map_while(Result::ok);
    assert!(lines.any(|l| l == "got: over the socket"));
    let status = hospes_tests::wait_timeout(&mut child, TIMEOUT);
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn com1_interrupt_reaches_the_guest_through_the_ioapic() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("irq", GuestKind::Pvh);
    let out = run_vmm(
        &["--kernel", g.path.to_str().unwrap(), "-m", "32M"],
        TIMEOUT,
    );
    assert_eq!(
        out.stdout,
        "irq: waiting for COM1's interrupt\nirq: COM1 interrupt arrived on vector 0x24\n",
        "stderr: {}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
}

#[test]
fn every_cpu_starts_with_its_own_apic_id() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("smp_all", GuestKind::Pvh);
    let args = [
        "--kernel",
        g.path.to_str().unwrap(),
        "-m",
        "32M",
        "--cpus",
        "4",
        "--cmdline",
        "3",
    ];
    let out = run_vmm(&args, TIMEOUT);
    assert!(out.success(), "{out:?}");
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.pop(), Some("bsp: 3 APs up"), "{}", out.stdout);
    lines.sort_unstable();
    assert_eq!(lines, ["ap: apic id 1", "ap: apic id 2", "ap: apic id 3"]);
}

/// The guest's "rtc HH:MM" with the helper in time zone `tz`, and the UTC minute of day
/// just before and after the run.
fn rtc_reading(tz: &str, local: bool) -> (u32, u32, u32) {
    let g = build_guest("rtc", GuestKind::Pvh);
    let utc_minute = || {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        ((secs / 60) % (24 * 60)) as u32
    };
    let mut cmd = std::process::Command::new(hospes_tests::vmm_binary());
    cmd.args(["--kernel", g.path.to_str().unwrap(), "-m", "32M"])
        .env("TZ", tz);
    if local {
        cmd.arg("--rtc-local");
    }
    let before = utc_minute();
    let out = cmd.output().unwrap();
    let after = utc_minute();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let time = stdout.trim().strip_prefix("rtc ").expect("rtc line");
    let (h, m) = time.split_once(':').unwrap();
    let guest = h.parse::<u32>().unwrap() * 60 + m.parse::<u32>().unwrap();
    (before, guest, after)
}

#[test]
fn the_cmos_clock_keeps_utc_or_the_hosts_local_time() {
    if skip_without_kvm() {
        return;
    }
    // POSIX TZ strings need no zoneinfo files: "HOS-5" is five hours east of Greenwich.
    for (tz, local, ahead) in [
        ("HOS-5", false, 0),
        ("HOS-5", true, 5 * 60),
        ("HOS+3:30", true, 24 * 60 - 210),
    ] {
        let (before, guest, after) = rtc_reading(tz, local);
        let expected = |utc: u32| (utc + ahead) % (24 * 60);
        assert!(
            guest == expected(before) || guest == expected(after),
            "TZ={tz} local={local}: guest clock at minute {guest}, UTC minute {before}..{after}"
        );
    }
}
