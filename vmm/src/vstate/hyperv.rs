//! KVM's Hyper-V interface: what it supports (`KVM_GET_SUPPORTED_HV_CPUID`, which
//! kvm-ioctls does not wrap) and the per-vCPU SynIC switch. The leaves themselves are
//! built in `arch::x86_64::hyperv`.

use kvm_bindings::{KVM_CAP_HYPERV_SYNIC2, kvm_cpuid_entry2, kvm_enable_cap};
use kvm_ioctls::{Kvm, VcpuFd};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;

/// KVM_CAP_SYS_HYPERV_CPUID: `KVM_GET_SUPPORTED_HV_CPUID` works on the system fd.
const KVM_CAP_SYS_HYPERV_CPUID: u64 = 191;
/// `_IOWR(KVMIO, 0xc1, struct kvm_cpuid2)`; the struct's fixed part is 8 bytes.
const KVM_GET_SUPPORTED_HV_CPUID: u64 = (3 << 30) | (8 << 16) | (0xae << 8) | 0xc1;
/// More entries than any KVM reports (it reports 11 today).
const MAX_HV_ENTRIES: usize = 64;

/// Errors asking KVM about Hyper-V.
#[derive(Debug, thiserror::Error)]
pub enum HypervError {
    #[error("KVM_GET_SUPPORTED_HV_CPUID failed")]
    Query(#[source] std::io::Error),
    #[error("cannot enable the SynIC on vCPU {index} (KVM_CAP_HYPERV_SYNIC2)")]
    Synic {
        index: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The Hyper-V leaves KVM supports, or `None` when this KVM has no Hyper-V interface to
/// offer (a kernel without it, or a nested KVM like this project's CI machine).
pub fn supported_leaves(kvm: &Kvm) -> Result<Option<Vec<kvm_cpuid_entry2>>, HypervError> {
    if kvm.check_extension_raw(KVM_CAP_SYS_HYPERV_CPUID) <= 0 {
        return Ok(None);
    }
    let mut cpuid = kvm_bindings::CpuId::new(MAX_HV_ENTRIES)
        .map_err(|_| HypervError::Query(std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
    // SAFETY: the ioctl writes at most `nent` entries into the FAM struct KVM is given,
    // whose `nent` is its real capacity; it does not keep the pointer.
    let ret = unsafe {
        ioctl_with_mut_ptr(
            kvm,
            KVM_GET_SUPPORTED_HV_CPUID,
            cpuid.as_mut_fam_struct_ptr(),
        )
    };
    if ret < 0 {
        return Err(HypervError::Query(std::io::Error::last_os_error()));
    }
    Ok(Some(cpuid.as_slice().to_vec()))
}

/// Turns on KVM's SynIC for one vCPU (before it first runs).
pub fn enable_synic(vcpu: &VcpuFd, index: u32) -> Result<(), HypervError> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_HYPERV_SYNIC2,
        ..Default::default()
    };
    vcpu.enable_cap(&cap)
        .map_err(|source| HypervError::Synic { index, source })
}
