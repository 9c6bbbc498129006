//! Hyper-V enlightenments for Windows guests: the CPUID leaves that tell Windows it runs on
//! a hypervisor speaking Hyper-V's interface, and which parts of it to use.
//!
//! KVM implements the interface (the MSRs, hypercalls, SynIC, timers) in the kernel and
//! reports what it can do through `KVM_GET_SUPPORTED_HV_CPUID`; it turns on what the
//! vCPU's CPUID announces. [`enlighten`] builds the guest's leaves from that report: it
//! keeps the features Windows benefits from on a desktop (the set virt-manager enables for
//! Windows: relaxed timing, vapic, spinlocks, vpindex, runtime, time with the reference TSC
//! page, synic, stimer, frequencies, tlbflush, ipi, reset) where KVM offers them, and
//! drops the rest (nested virtualisation's enlightened VMCS, crash and debug MSRs, guest
//! idle). Hyper-V's leaves take 0x4000_0000; KVM's own paravirt leaves move to
//! 0x4000_0100, where Linux and KVM look for them too.

use kvm_bindings::kvm_cpuid_entry2;

/// The first hypervisor leaf; vendor and highest leaf.
pub const LEAF_VENDOR: u32 = 0x4000_0000;
/// Interface signature ("Hv#1").
pub const LEAF_INTERFACE: u32 = 0x4000_0001;
/// Hypervisor version.
pub const LEAF_VERSION: u32 = 0x4000_0002;
/// Features: EAX partition privileges (low), EBX (high), EDX misc features.
pub const LEAF_FEATURES: u32 = 0x4000_0003;
/// Implementation recommendations: EAX flags, EBX spinlock retries.
pub const LEAF_RECOMMENDATIONS: u32 = 0x4000_0004;
/// Implementation limits (virtual processors).
pub const LEAF_LIMITS: u32 = 0x4000_0005;
/// Hardware features in use.
pub const LEAF_HARDWARE: u32 = 0x4000_0006;
/// The highest Hyper-V leaf a Hospes guest sees.
pub const LAST_LEAF: u32 = LEAF_HARDWARE;
/// Where KVM's own leaves move when Hyper-V's take their place.
pub const KVM_LEAVES_OFFSET: u32 = 0x100;

/// Leaf 0x4000_0003 EAX: the partition privileges (which synthetic MSRs exist).
pub mod features_eax {
    /// HV_X64_MSR_VP_RUNTIME: time the vCPU ran (hv-runtime).
    pub const VP_RUNTIME: u32 = 1 << 0;
    /// HV_X64_MSR_TIME_REF_COUNT: the partition reference counter (hv-time).
    pub const TIME_REF_COUNT: u32 = 1 << 1;
    /// The synthetic interrupt controller (hv-synic).
    pub const SYNIC: u32 = 1 << 2;
    /// Synthetic timers (hv-stimer); Windows otherwise falls back to the HPET or the
    /// RTC and spends far more time in timer interrupts.
    pub const SYNTIMER: u32 = 1 << 3;
    /// The APIC through MSRs (hv-vapic): EOI, ICR and TPR without MMIO exits.
    pub const APIC_ACCESS: u32 = 1 << 4;
    /// The hypercall page (needed by every other enlightenment).
    pub const HYPERCALL: u32 = 1 << 5;
    /// HV_X64_MSR_VP_INDEX (hv-vpindex).
    pub const VP_INDEX: u32 = 1 << 6;
    /// HV_X64_MSR_RESET (hv-reset).
    pub const RESET: u32 = 1 << 7;
    /// The reference TSC page (hv-time): a clock read without exits.
    pub const REFERENCE_TSC: u32 = 1 << 9;
    /// TSC and APIC frequency MSRs (hv-frequencies).
    pub const FREQUENCY_MSRS: u32 = 1 << 11;
    /// Everything Hospes turns on.
    pub const WANTED: u32 = VP_RUNTIME
        | TIME_REF_COUNT
        | SYNIC
        | SYNTIMER
        | APIC_ACCESS
        | HYPERCALL
        | VP_INDEX
        | RESET
        | REFERENCE_TSC
        | FREQUENCY_MSRS;
}

/// Leaf 0x4000_0003 EBX: the partition privileges (which hypercalls the guest may make).
pub mod features_ebx {
    /// HvPostMessage (SynIC messages).
    pub const POST_MESSAGES: u32 = 1 << 4;
    /// HvSignalEvent (SynIC events).
    pub const SIGNAL_EVENTS: u32 = 1 << 5;
    /// Everything Hospes turns on (what the SynIC needs).
    pub const WANTED: u32 = POST_MESSAGES | SIGNAL_EVENTS;
}

/// Leaf 0x4000_0003 EDX: miscellaneous features.
pub mod features_edx {
    /// The frequency MSRs are available (with [`super::features_eax::FREQUENCY_MSRS`]).
    pub const FREQUENCY_MSRS: u32 = 1 << 8;
    /// Synthetic timers may deliver straight to a vector ("direct mode").
    pub const STIMER_DIRECT: u32 = 1 << 19;
    /// Everything Hospes turns on.
    pub const WANTED: u32 = FREQUENCY_MSRS | STIMER_DIRECT;
}

/// Leaf 0x4000_0004 EAX: what the guest is advised to do.
pub mod recommend_eax {
    /// Flush the local TLB with a hypercall (hv-tlbflush).
    pub const LOCAL_TLB_FLUSH: u32 = 1 << 1;
    /// Flush remote TLBs with a hypercall instead of IPIs (hv-tlbflush).
    pub const REMOTE_TLB_FLUSH: u32 = 1 << 2;
    /// Use the APIC MSRs instead of MMIO (hv-vapic).
    pub const APIC_ACCESS: u32 = 1 << 3;
    /// Do not time out on slow virtual hardware (hv-relaxed): no watchdog blue screens when
    /// the host is busy.
    pub const RELAXED_TIMING: u32 = 1 << 5;
    /// Send IPIs with a hypercall (hv-ipi).
    pub const CLUSTER_IPI: u32 = 1 << 10;
    /// Processor sets in the extended format (with the two above, past 64 vCPUs).
    pub const EX_PROCESSOR_MASKS: u32 = 1 << 11;
    /// Everything Hospes turns on. Left out: the enlightened VMCS (bit 14, nested
    /// virtualisation, which needs its own KVM capability), deprecated AutoEOI (bit 9).
    pub const WANTED: u32 = LOCAL_TLB_FLUSH
        | REMOTE_TLB_FLUSH
        | APIC_ACCESS
        | RELAXED_TIMING
        | CLUSTER_IPI
        | EX_PROCESSOR_MASKS;
}

/// Leaf 0x4000_0004 EBX: failed spinlock attempts before the guest yields with a
/// hypercall (hv-spinlocks). 8191, as virt-manager configures Windows guests.
pub const SPINLOCK_RETRIES: u32 = 0x1fff;

/// What [`enlighten`] turned on, for the log and for the vCPU set-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enlightenments {
    /// Leaf 0x4000_0003 EAX as the guest sees it.
    pub features: u32,
    /// Leaf 0x4000_0004 EAX as the guest sees it.
    pub recommendations: u32,
}

impl Enlightenments {
    /// Whether the SynIC is on: each vCPU must then enable KVM's SynIC (KVM_CAP_HYPERV_SYNIC2).
    pub fn synic(&self) -> bool {
        self.features & features_eax::SYNIC != 0
    }

    /// The names of what is on, in the order the docs list them.
    pub fn names(&self) -> Vec<&'static str> {
        use features_eax as f;
        use recommend_eax as r;
        let has = |bits: u32, mask: u32| bits & mask == mask;
        let mut names = Vec::new();
        let list = [
            (has(self.recommendations, r::RELAXED_TIMING), "relaxed"),
            (has(self.features, f::APIC_ACCESS), "vapic"),
            (self.features & f::HYPERCALL != 0, "spinlocks"),
            (has(self.features, f::VP_INDEX), "vpindex"),
            (has(self.features, f::VP_RUNTIME), "runtime"),
            (
                has(self.features, f::TIME_REF_COUNT | f::REFERENCE_TSC),
                "time",
            ),
            (has(self.features, f::SYNIC), "synic"),
            (has(self.features, f::SYNTIMER), "stimer"),
            (has(self.features, f::FREQUENCY_MSRS), "frequencies"),
            (has(self.recommendations, r::REMOTE_TLB_FLUSH), "tlbflush"),
            (has(self.recommendations, r::CLUSTER_IPI), "ipi"),
            (has(self.features, f::RESET), "reset"),
        ];
        for (on, name) in list {
            if on {
                names.push(name);
            }
        }
        names
    }
}

/// Rewrites `cpuid` (KVM's supported CPUID, before the per-vCPU adjustments) for a Windows
/// guest, from `hv_supported` (what `KVM_GET_SUPPORTED_HV_CPUID` reported). Returns what is
/// on, or `None` (and leaves `cpuid` alone) when KVM reports no Hyper-V interface.
pub fn enlighten(
    cpuid: &mut Vec<kvm_cpuid_entry2>,
    hv_supported: &[kvm_cpuid_entry2],
) -> Option<Enlightenments> {
    let find = |function: u32| hv_supported.iter().find(|e| e.function == function);
    let vendor = find(LEAF_VENDOR)?;
    let kvm_features = find(LEAF_FEATURES)?;
    let kvm_recommend = find(LEAF_RECOMMENDATIONS).copied().unwrap_or_default();

    // SynIC timers need the SynIC; the SynIC's messages need their hypercalls.
    let mut features = kvm_features.eax & features_eax::WANTED;
    if features & features_eax::SYNIC == 0 {
        features &= !features_eax::SYNTIMER;
    }
    if features & features_eax::HYPERCALL == 0 {
        // Without the hypercall page nothing else can be used.
        return None;
    }
    let privileges = kvm_features.ebx & features_ebx::WANTED;
    let misc = kvm_features.edx & features_edx::WANTED;
    let mut recommendations = kvm_recommend.eax & recommend_eax::WANTED;
    if features & features_eax::APIC_ACCESS == 0 {
        recommendations &= !recommend_eax::APIC_ACCESS;
    }

    // KVM's leaves move up; their first leaf's EAX names their highest leaf.
    for e in cpuid.iter_mut() {
        if (LEAF_VENDOR..LEAF_VENDOR + KVM_LEAVES_OFFSET).contains(&e.function) {
            if e.function == LEAF_VENDOR {
                e.eax = e.eax.saturating_add(KVM_LEAVES_OFFSET);
            }
            e.function += KVM_LEAVES_OFFSET;
        }
    }

    let mut leaves = vec![kvm_cpuid_entry2 {
        function: LEAF_VENDOR,
        eax: LAST_LEAF,
        ebx: vendor.ebx,
        ecx: vendor.ecx,
        edx: vendor.edx,
        ..Default::default()
    }];
    for function in [LEAF_INTERFACE, LEAF_VERSION, LEAF_LIMITS, LEAF_HARDWARE] {
        if let Some(e) = find(function) {
            leaves.push(kvm_cpuid_entry2 {
                function,
                index: 0,
                flags: 0,
                ..*e
            });
        }
    }
    leaves.push(kvm_cpuid_entry2 {
        function: LEAF_FEATURES,
        eax: features,
        ebx: privileges,
        ecx: 0,
        edx: misc,
        ..Default::default()
    });
    leaves.push(kvm_cpuid_entry2 {
        function: LEAF_RECOMMENDATIONS,
        eax: recommendations,
        ebx: SPINLOCK_RETRIES,
        ecx: 0,
        edx: 0,
        ..Default::default()
    });
    cpuid.extend(leaves);
    Some(Enlightenments {
        features,
        recommendations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// What a KVM with every Hyper-V feature reports (Linux 6.x on VT-x, shape only).
    fn kvm_hv_report() -> Vec<kvm_cpuid_entry2> {
        // "Microsoft Hv"
        vec![
            leaf(
                0x4000_0000,
                0x4000_000a,
                0x7263_694d,
                0x666f_736f,
                0x7648_2074,
            ),
            leaf(0x4000_0001, 0x3123_7648, 0, 0, 0),
            leaf(0x4000_0002, 0x0000_3839, 0x000a_0000, 0, 0),
            // Every privilege bit KVM knows, the debugging and crash bits included.
            leaf(0x4000_0003, 0x0000_3fff, 0x0000_0838, 0, 0x0008_bd32),
            // Recommendations including the enlightened VMCS (bit 14) and AutoEOI (bit 9).
            leaf(0x4000_0004, 0x0000_4e3e, 0xffff_ffff, 0, 0),
            leaf(0x4000_0005, 0xffff_ffff, 0, 0, 0),
            leaf(0x4000_0006, 0x0000_0002, 0, 0, 0),
            leaf(0x4000_000a, 0x0000_0801, 0, 0, 0),
        ]
    }

    /// KVM's own supported CPUID: a standard leaf and its two paravirt leaves.
    fn kvm_cpuid() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(1, 0x806c1, 0, 0, 0),
            leaf(0x4000_0000, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            leaf(0x4000_0001, 0x0100_7efb, 0, 0, 0),
        ]
    }

    fn get(cpuid: &[kvm_cpuid_entry2], function: u32) -> kvm_cpuid_entry2 {
        let found: Vec<_> = cpuid.iter().filter(|e| e.function == function).collect();
        assert_eq!(
            found.len(),
            1,
            "leaf {function:#x} appears {} times",
            found.len()
        );
        *found[0]
    }

    #[test]
    fn windows_sees_microsoft_hv_and_kvm_moves_up() {
        let mut cpuid = kvm_cpuid();
        enlighten(&mut cpuid, &kvm_hv_report()).unwrap();
        let vendor = get(&cpuid, 0x4000_0000);
        let mut name = Vec::new();
        for r in [vendor.ebx, vendor.ecx, vendor.edx] {
            name.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&name, b"Microsoft Hv");
        assert_eq!(vendor.eax, LAST_LEAF);
        assert_eq!(get(&cpuid, 0x4000_0001).eax, u32::from_le_bytes(*b"Hv#1"));
        // KVM's leaves at 0x4000_0100, its highest leaf number moved with them.
        let kvm = get(&cpuid, 0x4000_0100);
        assert_eq!(kvm.ebx, 0x4b4d_564b);
        assert_eq!(kvm.eax, 0x4000_0101);
        assert_eq!(get(&cpuid, 0x4000_0101).eax, 0x0100_7efb);
        // The standard leaves are untouched; nested virtualisation's leaf is not offered.
        assert_eq!(get(&cpuid, 1).eax, 0x806c1);
        assert!(cpuid.iter().all(|e| e.function != 0x4000_000a));
        assert!(cpuid.iter().all(|e| e.function <= LAST_LEAF
            || e.function >= 0x4000_0100
            || e.function < 0x4000_0000));
    }

    #[test]
    fn turns_on_the_desktop_set_and_nothing_else() {
        let mut cpuid = kvm_cpuid();
        let on = enlighten(&mut cpuid, &kvm_hv_report()).unwrap();
        let features = get(&cpuid, LEAF_FEATURES);
        assert_eq!(features.eax, features_eax::WANTED);
        // Guest idle (10), reenlightenment (12), invariant TSC (13) and the statistics
        // pages (8) stay off.
        assert_eq!(features.eax & (1 << 8 | 1 << 10 | 1 << 12 | 1 << 13), 0);
        assert_eq!(features.ebx, features_ebx::WANTED);
        assert_eq!(features.edx, features_edx::WANTED);
        let recommend = get(&cpuid, LEAF_RECOMMENDATIONS);
        assert_eq!(recommend.eax, recommend_eax::WANTED);
        assert_eq!(
            recommend.eax & (1 << 14 | 1 << 9),
            0,
            "no eVMCS, no AutoEOI"
        );
        assert_eq!(recommend.ebx, SPINLOCK_RETRIES);
        assert!(on.synic());
        assert_eq!(
            on.names(),
            [
                "relaxed",
                "vapic",
                "spinlocks",
                "vpindex",
                "runtime",
                "time",
                "synic",
                "stimer",
                "frequencies",
                "tlbflush",
                "ipi",
                "reset"
            ]
        );
    }

    #[test]
    fn offers_only_what_kvm_supports() {
        let mut report = kvm_hv_report();
        for e in &mut report {
            if e.function == LEAF_FEATURES {
                // An older KVM: no SynIC, no APIC MSRs, no frequencies.
                e.eax &= !(features_eax::SYNIC
                    | features_eax::APIC_ACCESS
                    | features_eax::FREQUENCY_MSRS);
            }
        }
        let mut cpuid = kvm_cpuid();
        let on = enlighten(&mut cpuid, &report).unwrap();
        assert!(!on.synic());
        let features = get(&cpuid, LEAF_FEATURES).eax;
        assert_eq!(
            features & features_eax::SYNTIMER,
            0,
            "timers need the SynIC"
        );
        assert_eq!(
            get(&cpuid, LEAF_RECOMMENDATIONS).eax & recommend_eax::APIC_ACCESS,
            0
        );
        assert!(!on.names().contains(&"vapic"));
        assert!(on.names().contains(&"relaxed"));
    }

    #[test]
    fn without_a_hyper_v_interface_nothing_changes() {
        let mut cpuid = kvm_cpuid();
        assert_eq!(enlighten(&mut cpuid, &[]), None);
        assert_eq!(cpuid.len(), kvm_cpuid().len());
        assert_eq!(get(&cpuid, 0x4000_0000).ebx, 0x4b4d_564b);
        // No hypercall page: the rest cannot work either.
        let mut report = kvm_hv_report();
        report[3].eax &= !features_eax::HYPERCALL;
        assert_eq!(enlighten(&mut cpuid, &report), None);
        assert_eq!(get(&cpuid, 0x4000_0000).ebx, 0x4b4d_564b);
    }
}
