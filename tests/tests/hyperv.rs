//! Hyper-V enlightenments seen from a guest: with `--hyperv` (what `os: Windows` turns
//! on) the guest finds "Microsoft Hv" at CPUID 0x40000000 and KVM's own leaves at
//! 0x40000100 — where this host's KVM offers a Hyper-V interface. Where it does not (this
//! project's nested CI KVM reports no KVM_CAP_SYS_HYPERV_CPUID), the helper says so in
//! its log and the guest sees KVM's leaves unchanged.

use std::time::Duration;

use hospes_tests::{GuestKind, build_guest, run_vmm, skip_without_kvm};

const TIMEOUT: Duration = Duration::from_secs(60);

fn run(hyperv: bool) -> hospes_tests::RunOutput {
    let g = build_guest("hyperv", GuestKind::Pvh);
    let mut args = vec!["--kernel", g.path.to_str().unwrap(), "--memory", "32M"];
    if hyperv {
        args.push("--hyperv");
    }
    let out = run_vmm(&args, TIMEOUT);
    assert!(out.success(), "{out:?}");
    out
}

#[test]
fn a_linux_guest_sees_kvm_at_the_first_hypervisor_leaf() {
    if skip_without_kvm() {
        return;
    }
    let out = run(false);
    let first = out.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("40000000: KVMKVMKVM..."),
        "stdout: {}",
        out.stdout
    );
    assert!(!out.stdout.contains("Microsoft Hv"), "{}", out.stdout);
}

#[test]
fn a_windows_guest_sees_microsoft_hv_where_kvm_offers_it() {
    if skip_without_kvm() {
        return;
    }
    let out = run(true);
    let lines: Vec<&str> = out.stdout.lines().collect();
    if out.stderr.contains("Hyper-V enlightenments: ") {
        assert_eq!(
            lines.first().copied(),
            Some("40000000: Microsoft Hv max 40000006"),
            "{}",
            out.stdout
        );
        assert!(
            lines
                .get(1)
                .is_some_and(|l| l.starts_with("40000100: KVMKVMKVM... max 4000010")),
            "{}",
            out.stdout
        );
        // The hypercall page (bit 5) at least, and 8191 spinlock retries.
        let features = lines.get(2).copied().unwrap_or_default();
        let words: Vec<u32> = features
            .split(' ')
            .filter_map(|w| u32::from_str_radix(w, 16).ok())
            .collect();
        assert_eq!(words.len(), 3, "{features}");
        assert_ne!(words[0] & (1 << 5), 0, "{features}");
        assert_eq!(words[2], 0x1fff, "{features}");
    } else {
        assert!(
            out.stderr.contains("this KVM offers no Hyper-V interface"),
            "stderr: {}",
            out.stderr
        );
        assert!(
            lines
                .first()
                .is_some_and(|l| l.starts_with("40000000: KVMKVMKVM...")),
            "{}",
            out.stdout
        );
    }
}
