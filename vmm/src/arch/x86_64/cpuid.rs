//! Per-vCPU CPUID.
//!
//! KVM's supported CPUID list is taken as is, then each vCPU's copy gets its own APIC id
//! (leaf 1 EBX[31:24], leaf 0xB/0x1F x2APIC id), a topology of one package with `count`
//! cores of one thread, and the hypervisor bit. The KVM paravirt leaves (0x4000_0000..,
//! kvmclock and friends) come from KVM unchanged.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0xB level type: SMT.
const LEVEL_SMT: u32 = 1;
/// Leaf 0xB level type: core.
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` cores.
fn core_shift(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

/// Adjusts `entries` (KVM's supported CPUID) for vCPU `index` of `count`.
pub fn customize(entries: &mut [kvm_cpuid_entry2], index: u32, count: u32) {
    let apic_id = index;
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            4 => {
                // Cores per package - 1 in EAX[31:26]; threads sharing this cache - 1 in
                // EAX[25:14]: L1/L2 per core, L3 per package.
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 {
                    count.saturating_sub(1)
                } else {
                    0
                };
                e.eax = (e.eax & 0x3fff)
                    | ((sharing & 0xfff) << 14)
                    | ((count.saturating_sub(1) & 0x3f) << 26);
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_shift(count);
                        e.ebx = count;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0001_0800,
            ..Default::default()
        }
    }

    #[test]
    fn gives_each_vcpu_its_apic_id_and_topology() {
        let mut e = vec![leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)];
        customize(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].edx, e[1].ebx, e[1].ecx >> 8), (3, 1, LEVEL_SMT));
        assert_eq!(
            (e[2].edx, e[2].ebx, e[2].eax, e[2].ecx >> 8),
            (3, 4, 2, LEVEL_CORE)
        );
        assert_eq!((e[3].ecx >> 8, e[3].ebx), (0, 0));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = vec![kvm_cpuid_entry2 {
            function: 1,
            edx: EDX_HTT,
            ..Default::default()
        }];
        customize(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!(core_shift(1), 0);
        assert_eq!(core_shift(3), 2);
    }
}
