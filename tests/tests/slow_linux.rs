//! Slow tier (opt-in, `cargo test -p hospes-tests --test slow_linux -- --ignored`): a real
//! Linux kernel on hospes-vmm. Designed for a laptop with VT-x/AMD-V; on a nested KVM
//! without it, decompressing a stock kernel alone takes minutes.
//!
//! The kernel comes from `HOSPES_LINUX_KERNEL` (a bzImage, e.g. Debian's
//! `/boot/vmlinuz-*`). The initramfs is built here: a freestanding `/init`
//! (`tests/guests/linux/init.c`) that reports the CPUs Linux brought up and powers off.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hospes_tests::{run_vmm, skip_without_kvm};

/// One entry of a `newc` cpio archive (what the kernel unpacks as an initramfs).
fn cpio_entry(out: &mut Vec<u8>, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let name_len = name.len() + 1;
    let fields = [
        0, // inode
        mode,
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        data.len() as u32,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name_len as u32,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn initramfs(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/linux/init.c");
    let init = dir.join("init");
    let built = Command::new("gcc")
        .args([
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-O2",
            "-o",
        ])
        .arg(&init)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(built.success(), "gcc failed on {}", src.display());
    let mut cpio = Vec::new();
    for d in ["dev", "proc", "sys"] {
        cpio_entry(&mut cpio, d, 0o040755, (0, 0), &[]);
    }
    cpio_entry(&mut cpio, "dev/console", 0o020600, (5, 1), &[]);
    cpio_entry(
        &mut cpio,
        "init",
        0o100755,
        (0, 0),
        &std::fs::read(&init).unwrap(),
    );
    cpio_entry(&mut cpio, "TRAILER!!!", 0, (0, 0), &[]);
    let path = dir.join("initramfs.cpio");
    std::fs::write(&path, cpio).unwrap();
    path
}

#[test]
#[ignore = "slow tier: needs HOSPES_LINUX_KERNEL and a KVM with VT-x/AMD-V"]
fn linux_boots_with_every_vcpu_and_powers_off_through_acpi() {
    if skip_without_kvm() {
        return;
    }
    let kernel = std::env::var("HOSPES_LINUX_KERNEL")
        .expect("set HOSPES_LINUX_KERNEL to a bzImage, e.g. /boot/vmlinuz-$(uname -r)");
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs(dir.path());
    let out = run_vmm(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 panic=-1 quiet",
            "-m",
            "512M",
            "--cpus",
            "2",
            "--no-reboot",
        ],
        Duration::from_secs(300),
    );
    assert!(out.stdout.contains("hospes-init: started"), "{out:?}");
    assert!(
        out.stdout.contains("hospes-init: cpus online 0-1"),
        "{out:?}"
    );
    assert!(out.stdout.contains("hospes-init: Linux version"), "{out:?}");
    assert!(out.stdout.contains("hospes-init: powering off"), "{out:?}");
    // Linux powers off through the ACPI PM block (S5): status 0, not a reset or a timeout.
    assert!(out.success(), "{out:?}");
}
