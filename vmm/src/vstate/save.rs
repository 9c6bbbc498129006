//! The KVM side of saving and restoring a VM: what KVM holds of each vCPU (registers,
//! segment and control registers, FPU/XSAVE, XCRs, debug registers, the LAPIC, MSRs, the
//! multiprocessor state, pending events) and of the VM (the in-kernel PICs and IOAPIC, the
//! PIT, kvmclock).
//!
//! A vCPU is read after its thread left `KVM_RUN` for good (a save ends the VM) and
//! written before its thread first enters it. Each piece is a `serde` struct encoded with
//! postcard into the saved-state file's sections `kvm/vm` and `kvm/vcpu<N>`.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, Msrs, kvm_clock_data,
    kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Errors reading or writing KVM's state.
#[derive(Debug, thiserror::Error)]
pub enum KvmStateError {
    #[error("cannot {op} {what} of vCPU {index}")]
    Vcpu {
        op: &'static str,
        what: &'static str,
        index: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot {op} the VM's {what}")]
    Vm {
        op: &'static str,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM took {set} of its {saved} saved MSRs (the first refused: {msr:#x})")]
    Msrs {
        index: u32,
        set: usize,
        saved: usize,
        msr: u32,
    },
    #[error("cannot build an MSR list")]
    MsrList,
}

/// The FPU and SSE state, where KVM has no XSAVE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FpuState {
    fpr: Vec<[u8; 16]>,
    fcw: u16,
    fsw: u16,
    ftwx: u8,
    last_opcode: u16,
    last_ip: u64,
    last_dp: u64,
    xmm: Vec<[u8; 16]>,
    mxcsr: u32,
}

/// Floating point state as KVM gives it.
#[derive(Debug, Serialize, Deserialize)]
pub enum FloatState {
    Xsave(Box<kvm_xsave>),
    Fpu(FpuState),
}

/// One vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub float: FloatState,
    /// Where KVM offers XCRs.
    pub xcrs: Option<kvm_xcrs>,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
}

/// The VM's in-kernel devices and clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// The MSRs KVM saves and restores for a guest (`KVM_GET_MSR_INDEX_LIST`).
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>, KvmStateError> {
    kvm.get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .map_err(|source| KvmStateError::Vm {
            op: "read",
            what: "MSR index list",
            source,
        })
}

/// Reads vCPU `index`'s state; `msrs` from [`msr_list`].
pub fn save_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    index: u32,
    msrs: &[u32],
) -> Result<VcpuState, KvmStateError> {
    let fail = |what| {
        move |source| KvmStateError::Vcpu {
            op: "read",
            what,
            index,
            source,
        }
    };
    // KVM wants the vCPU told it was paused before the clock is read (kvmclock's
    // PVCLOCK_GUEST_STOPPED); a guest without kvmclock makes this fail harmlessly.
    let _ = vcpu.kvmclock_ctrl();
    let float = if kvm.check_extension(Cap::Xsave) {
        FloatState::Xsave(Box::new(vcpu.get_xsave().map_err(fail("XSAVE state"))?))
    } else {
        let f = vcpu.get_fpu().map_err(fail("FPU state"))?;
        FloatState::Fpu(FpuState {
            fpr: f.fpr.to_vec(),
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm.to_vec(),
            mxcsr: f.mxcsr,
        })
    };
    let xcrs = match kvm.check_extension(Cap::Xcrs) {
        true => Some(vcpu.get_xcrs().map_err(fail("XCRs"))?),
        false => None,
    };
    Ok(VcpuState {
        regs: vcpu.get_regs().map_err(fail("registers"))?,
        sregs: vcpu.get_sregs().map_err(fail("segment registers"))?,
        float,
        xcrs,
        debugregs: vcpu.get_debug_regs().map_err(fail("debug registers"))?,
        lapic: vcpu.get_lapic().map_err(fail("LAPIC"))?,
        msrs: read_msrs(vcpu, index, msrs)?,
        mp_state: vcpu.get_mp_state().map_err(fail("MP state"))?,
        events: vcpu.get_vcpu_events().map_err(fail("events"))?,
    })
}

/// Reads every MSR of `list` KVM will give; an MSR it refuses (KVM lists some a CPU
/// lacks) is left out.
fn read_msrs(vcpu: &VcpuFd, index: u32, list: &[u32]) -> Result<Vec<kvm_msr_entry>, KvmStateError> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| KvmStateError::MsrList)?;
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(|source| KvmStateError::Vcpu {
                op: "read",
                what: "MSRs",
                index,
                source,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // The entry at `read` is one KVM refuses: skip it.
        rest = rest.get(read + 1..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Writes vCPU `index`'s state (after its CPUID is set), in an order KVM accepts: the
/// LAPIC before the MSRs that depend on its mode, pending events last.
pub fn restore_vcpu(vcpu: &VcpuFd, index: u32, s: &VcpuState) -> Result<(), KvmStateError> {
    let fail = |what| {
        move |source| KvmStateError::Vcpu {
            op: "restore",
            what,
            index,
            source,
        }
    };
    vcpu.set_sregs(&s.sregs)
        .map_err(fail("segment registers"))?;
    vcpu.set_regs(&s.regs).map_err(fail("registers"))?;
    match &s.float {
        // SAFETY: the buffer came from KVM_GET_XSAVE of a vCPU of the same VM configuration
        // and was checked by its checksum in the state file; KVM validates its header.
        FloatState::Xsave(x) => unsafe { vcpu.set_xsave(x) }.map_err(fail("XSAVE state"))?,
        FloatState::Fpu(f) => {
            let mut fpu = kvm_bindings::kvm_fpu {
                fcw: f.fcw,
                fsw: f.fsw,
                ftwx: f.ftwx,
                last_opcode: f.last_opcode,
                last_ip: f.last_ip,
                last_dp: f.last_dp,
                mxcsr: f.mxcsr,
                ..Default::default()
            };
            for (d, s) in fpu.fpr.iter_mut().zip(&f.fpr) {
                *d = *s;
            }
            for (d, s) in fpu.xmm.iter_mut().zip(&f.xmm) {
                *d = *s;
            }
            vcpu.set_fpu(&fpu).map_err(fail("FPU state"))?;
        }
    }
    if let Some(xcrs) = &s.xcrs {
        vcpu.set_xcrs(xcrs).map_err(fail("XCRs"))?;
    }
    vcpu.set_debug_regs(&s.debugregs)
        .map_err(fail("debug registers"))?;
    vcpu.set_lapic(&s.lapic).map_err(fail("LAPIC"))?;
    let msrs = Msrs::from_entries(&s.msrs).map_err(|_| KvmStateError::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(fail("MSRs"))?;
    if set < s.msrs.len() {
        return Err(KvmStateError::Msrs {
            index,
            set,
            saved: s.msrs.len(),
            msr: s.msrs[set].index,
        });
    }
    vcpu.set_mp_state(s.mp_state).map_err(fail("MP state"))?;
    vcpu.set_vcpu_events(&s.events).map_err(fail("events"))?;
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, KvmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(|source| KvmStateError::Vm {
            op: "read",
            what: "interrupt controllers",
            source,
        })?;
    Ok(chip)
}

/// Reads the VM's interrupt controllers, PIT and clock.
pub fn save_vm(vm: &VmFd) -> Result<VmState, KvmStateError> {
    let fail = |what| {
        move |source| KvmStateError::Vm {
            op: "read",
            what,
            source,
        }
    };
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(fail("PIT"))?,
        clock: vm.get_clock().map_err(fail("clock"))?,
    })
}

/// Writes the VM's interrupt controllers, PIT and clock (before its vCPUs run).
pub fn restore_vm(vm: &VmFd, s: &VmState) -> Result<(), KvmStateError> {
    let fail = |what| {
        move |source| KvmStateError::Vm {
            op: "restore",
            what,
            source,
        }
    };
    for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
        vm.set_irqchip(chip)
            .map_err(fail("interrupt controllers"))?;
    }
    vm.set_pit2(&s.pit).map_err(fail("PIT"))?;
    // Only the clock's value: its flags describe the host it was read on.
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(fail("clock"))?;
    Ok(())
}
