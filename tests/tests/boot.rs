//! Direct boot of the tiny PVH and bzImage guests, and the helper's command-line errors.

use std::time::Duration;

use hospes_tests::{
    GuestKind, build_guest, kvm_available, run_vmm, skip_without_kvm, visible_ram_kib,
};

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn pvh_guest_sees_cmdline_memory_and_initrd_then_powers_off() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("pvh", GuestKind::Pvh);
    let initrd = g.dir.path().join("initrd");
    std::fs::write(&initrd, b"HOSPESRD and more bytes").unwrap();
    let out = run_vmm(
        &[
            "--kernel",
            g.path.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 hello=pvh",
            "--memory",
            "64M",
        ],
        TIMEOUT,
    );
    assert_eq!(
        out.stdout,
        format!(
            "cmdline: console=ttyS0 hello=pvh\nram: {} KiB\ninitrd: HOSPESRD (23 bytes)\n",
            visible_ram_kib(64 << 20)
        ),
        "stderr: {}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
}

#[test]
fn pvh_guest_without_initrd_on_memory_above_4g_boundary() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("pvh", GuestKind::Pvh);
    let out = run_vmm(
        &["--kernel", g.path.to_str().unwrap(), "--memory", "3200M"],
        TIMEOUT,
    );
    let ram = ((3200u64 << 20) - 0x60400) / 1024;
    assert_eq!(
        out.stdout,
        format!("cmdline: \nram: {ram} KiB\ninitrd: none\n"),
        "{}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
}

#[test]
fn bzimage_guest_reads_boot_params_then_powers_off() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("bzimage", GuestKind::BzImage);
    let initrd = g.dir.path().join("initrd");
    std::fs::write(&initrd, b"BZINITRD").unwrap();
    let out = run_vmm(
        &[
            "--kernel",
            g.path.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "root=/dev/vda",
            "-m",
            "128",
        ],
        TIMEOUT,
    );
    assert_eq!(
        out.stdout,
        format!(
            "cmdline: root=/dev/vda\nram: {} KiB\ninitrd: BZINITRD (8 bytes)\n",
            visible_ram_kib(128 << 20)
        ),
        "stderr: {}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
}

fn assert_fails_with(out: &hospes_tests::RunOutput, needle: &str) {
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(out.stderr.contains(needle), "stderr: {}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
}

#[test]
fn missing_kernel_is_a_one_line_error() {
    let out = run_vmm(&["--kernel", "/nonexistent/vmlinux", "-m", "64M"], TIMEOUT);
    if !kvm_available() {
        return;
    }
    assert_fails_with(&out, "cannot open /nonexistent/vmlinux");
}

#[test]
fn file_that_is_no_kernel_is_rejected() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.txt");
    std::fs::write(&f, "just some text, not a kernel\n".repeat(40)).unwrap();
    let out = run_vmm(&["--kernel", f.to_str().unwrap(), "-m", "64M"], TIMEOUT);
    assert_fails_with(&out, "is neither a bzImage nor an ELF kernel");
}

#[test]
fn kernel_larger_than_memory_is_rejected() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("huge");
    std::fs::File::create(&f).unwrap().set_len(8 << 20).unwrap();
    let out = run_vmm(&["--kernel", f.to_str().unwrap(), "-m", "4M"], TIMEOUT);
    assert_fails_with(&out, "does not fit in the guest's memory");
}

#[test]
fn memory_above_host_ram_is_rejected() {
    let out = run_vmm(&["--kernel", "/dev/null", "-m", "64T"], TIMEOUT);
    assert_fails_with(&out, "more than this host's");
}

#[test]
fn unknown_flags_get_clap_usage_error() {
    let out = run_vmm(&["--kernel", "x", "--frobnicate"], TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("unexpected argument '--frobnicate'"),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_disk_image_is_a_one_line_error() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("pvh", GuestKind::Pvh);
    let out = run_vmm(
        &[
            "--kernel",
            g.path.to_str().unwrap(),
            "-m",
            "64M",
            "--disk",
            "/nonexistent/disk.img",
        ],
        TIMEOUT,
    );
    assert_fails_with(&out, "/nonexistent/disk.img");
}

#[test]
fn config_file_supplies_kernel_memory_and_cpus_and_flags_override_it() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("pvh", GuestKind::Pvh);
    std::fs::write(g.dir.path().join("initrd"), b"FROMVMRON").unwrap();
    let ron = g.dir.path().join("vm.ron");
    let kernel = g.path.file_name().unwrap().to_str().unwrap();
    std::fs::write(
        &ron,
        format!(
            "(version: 1, name: \"tiny\", os: Linux, cpus: 2, memory: \"48M\",\n \
             boot: Kernel(kernel: \"{kernel}\", initrd: Some(\"initrd\"), cmdline: \"from ron\"))\n"
        ),
    )
    .unwrap();
    let out = run_vmm(&["--config", ron.to_str().unwrap()], TIMEOUT);
    let want = |cmd: &str, mem: u64| {
        format!(
            "cmdline: {cmd}\nram: {} KiB\ninitrd: FROMVMRO (9 bytes)\n",
            visible_ram_kib(mem)
        )
    };
    assert_eq!(out.stdout, want("from ron", 48 << 20), "{}", out.stderr);
    assert!(out.success(), "{out:?}");
    let out = run_vmm(
        &[
            "--config",
            ron.to_str().unwrap(),
            "--cmdline",
            "flag",
            "-m",
            "64M",
        ],
        TIMEOUT,
    );
    assert_eq!(out.stdout, want("flag", 64 << 20), "{}", out.stderr);
    assert!(out.success(), "{out:?}");
}

#[test]
fn broken_config_file_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ron = dir.path().join("vm.ron");
    std::fs::write(&ron, "(version: 1, frobnicate: true)\n").unwrap();
    let out = run_vmm(&["--config", ron.to_str().unwrap()], TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(out.stderr.contains("vm.ron"), "{}", out.stderr);
}

#[test]
fn no_permission_on_dev_kvm_says_to_join_the_kvm_group() {
    // Needs root to drop to an unprivileged user, and a /dev/kvm that user cannot open.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let kvm_mode = std::fs::metadata("/dev/kvm").map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode()
    });
    if !root || kvm_mode.map_or(true, |m| m & 0o006 != 0) {
        eprintln!("skipped: needs root and a /dev/kvm closed to other users");
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(hospes_tests::vmm_binary())
        .args(["--kernel", "/nonexistent", "-m", "16M"])
        .output();
    let Ok(out) = out else {
        eprintln!("skipped: no setpriv");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "hospes-vmm: no permission to open /dev/kvm: add your user to the kvm group \
         (sudo usermod -aG kvm $USER), then log out and back in\n"
    );
}

#[test]
fn elf_without_pvh_note_is_rejected() {
    if skip_without_kvm() {
        return;
    }
    let g = hospes_tests::build_guest_with("pvh", GuestKind::Pvh, &["NO_PVH_NOTE"]);
    let out = run_vmm(
        &["--kernel", g.path.to_str().unwrap(), "-m", "64M"],
        TIMEOUT,
    );
    assert_fails_with(&out, "ELF file without a PVH entry note");
}
