//! Slow tier (opt-in, `cargo test -p hospes-tests --test slow_linux -- --ignored`): a real
//! Linux kernel on hospes-vmm. Designed for a laptop with VT-x/AMD-V; on a nested KVM
//! without it, decompressing a stock kernel alone takes minutes.
//!
//! The kernel comes from `HOSPES_LINUX_KERNEL` (a bzImage, e.g. Debian's
//! `/boot/vmlinuz-*`). The initramfs is built here: a freestanding `/init`
//! (`tests/guests/linux/init.c`) that reports the CPUs Linux brought up and powers off.

use std::time::Duration;

use hospes_tests::{run_vmm, skip_without_kvm};

#[test]
#[ignore = "slow tier: needs HOSPES_LINUX_KERNEL and a KVM with VT-x/AMD-V"]
fn linux_boots_with_every_vcpu_and_powers_off_through_acpi() {
    if skip_without_kvm() {
        return;
    }
    let kernel = std::env::var("HOSPES_LINUX_KERNEL")
        .expect("set HOSPES_LINUX_KERNEL to a bzImage, e.g. /boot/vmlinuz-$(uname -r)");
    let dir = tempfile::tempdir().unwrap();
    let initrd = hospes_tests::initramfs::build(dir.path(), &[], &[]);
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
