//! vCPUs: setup before the first run, the run loop of each vCPU thread, and the kick.
//!
//! Each vCPU runs `KVM_RUN` on its own thread. Port and MMIO exits are dispatched to the
//! machine's buses; exits that end the boot (triple fault, system events, errors) go to
//! the machine as [`VcpuEvent`]s. Another thread stops or pauses a vCPU by setting the
//! shared [`RunControl`] and sending [`kick_signal`] (SIGRTMIN): its handler sets this thread's
//! `immediate_exit`, so `KVM_RUN` returns at once even when the signal lands just before
//! the vCPU enters the guest.
//!
//! Before dispatching an exit the thread records who makes the access
//! (`hospes_devices::bus::set_initiator`: its index, and whether `kvm_run.flags` says it
//! was in SMM). An SMI a device raises ([`SmiPending`], the KVM side of `SmiSink`) is
//! recorded per vCPU and injected with `KVM_SMI` by that vCPU's own thread right before
//! its next `KVM_RUN`; an SMI for another vCPU kicks it so that it gets there at once.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use kvm_bindings::CpuId;
use kvm_bindings::{
    KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, Msrs,
    kvm_mp_state, kvm_msr_entry,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::arch::x86_64::{cpuid, layout, msr, regs};
use crate::boot::BootEntry;
use hospes_devices::bus::{Bus, Initiator, lock, set_initiator};
use hospes_devices::chipset::smi::{SmiSink, SmiTarget};

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {0}")]
    Create(u32, #[source] kvm_ioctls::Error),
    #[error("cannot set up vCPU {index} ({what})")]
    Setup {
        index: u32,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot build the MSR list")]
    Msrs,
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// The real-time signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This vCPU thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: `p` points into this thread's kvm_run mapping, set by `run` before any
        // kick can target the thread and cleared before the mapping goes away.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Installs the kick handler (once per process is enough; repeating is harmless).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(VcpuError::Signal)
}

/// Sends the kick signal to a vCPU thread.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: the caller only passes handles of vCPU threads that have not been joined yet
    // (RunControl keeps the list and clears it before joining).
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if rc != 0 {
        log::debug!("kick failed: {rc}");
    }
}

/// What stops a vCPU's run loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuEvent {
    /// Triple fault or a reset system event.
    Reset,
    /// A shutdown system event.
    PowerOff,
    /// KVM reported an error or an exit the VMM cannot handle.
    Error(String),
}

/// Pause/stop state shared by the machine, the handle and all vCPU threads.
#[derive(Default)]
pub struct RunControl {
    state: Mutex<ControlState>,
    cond: Condvar,
}

#[derive(Default)]
struct ControlState {
    paused: bool,
    stopping: bool,
    parked: usize,
    threads: Vec<libc::pthread_t>,
}

impl RunControl {
    /// Starts a boot: clears the previous boot's `stopping`. Call before spawning the
    /// vCPU threads, or a new thread could see the old stop and end at once.
    pub fn begin(&self) {
        lock(&self.state).stopping = false;
    }

    /// Records the vCPU threads of the current boot, for kicks. A pause asked for while
    /// they were starting reaches them now.
    pub fn attach(&self, threads: Vec<libc::pthread_t>) {
        let mut s = lock(&self.state);
        s.threads = threads;
        if s.paused || s.stopping {
            for &t in &s.threads {
                kick(t);
            }
        }
    }

    /// Stops all vCPUs of the current boot and forgets their threads; the caller joins them.
    pub fn stop(&self) {
        let mut s = lock(&self.state);
        s.stopping = true;
        for &t in &s.threads {
            kick(t);
        }
        s.threads.clear();
        self.cond.notify_all();
    }

    /// Pauses the vCPUs and waits (up to `timeout`) until they are all parked.
    pub fn pause(&self, timeout: Duration) -> bool {
        let mut s = lock(&self.state);
        s.paused = true;
        for &t in &s.threads {
            kick(t);
        }
        let want = s.threads.len();
        let (s, r) = self
            .cond
            .wait_timeout_while(s, timeout, |s| s.parked < want && !s.stopping)
            .unwrap_or_else(|e| e.into_inner());
        drop(s);
        !r.timed_out()
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        lock(&self.state).paused = false;
        self.cond.notify_all();
    }

    /// Kicks the vCPU thread `index` of the current boot, if it runs.
    fn kick_one(&self, index: usize) {
        if let Some(&t) = lock(&self.state).threads.get(index) {
            kick(t);
        }
    }

    /// Whether a pause was asked for.
    pub fn is_paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// Parks the calling vCPU while paused; returns false when it must stop.
    fn checkpoint(&self) -> bool {
        let mut s = lock(&self.state);
        if s.paused && !s.stopping {
            s.parked += 1;
            self.cond.notify_all();
            while s.paused && !s.stopping {
                s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.parked -= 1;
        }
        !s.stopping
    }
}

/// The buses a vCPU dispatches exits to, and the SMIs waiting for it.
#[derive(Clone)]
pub struct ExitBuses {
    pub pio: Arc<RwLock<Bus>>,
    pub mmio: Arc<RwLock<Bus>>,
    /// On a machine with SMM.
    pub smi: Option<Arc<SmiPending>>,
}

/// SMIs raised and not yet injected, one flag per vCPU (see the module header).
pub struct SmiPending {
    pending: Vec<AtomicBool>,
    control: Mutex<Option<Arc<RunControl>>>,
}

impl SmiPending {
    /// No SMI pending for any of `count` vCPUs.
    pub fn new(count: u32) -> Self {
        Self {
            pending: (0..count).map(|_| AtomicBool::new(false)).collect(),
            control: Mutex::new(None),
        }
    }

    /// The run control whose threads are kicked for an SMI on another vCPU.
    pub fn attach(&self, control: Arc<RunControl>) {
        *lock(&self.control) = Some(control);
    }

    /// Takes vCPU `index`'s pending SMI.
    fn take(&self, index: u32) -> bool {
        self.pending
            .get(index as usize)
            .is_some_and(|p| p.swap(false, Ordering::SeqCst))
    }

    fn mark(&self, index: usize, me: Option<u32>) {
        if let Some(p) = self.pending.get(index) {
            p.store(true, Ordering::SeqCst);
            // The raising vCPU injects before its next entry anyway; others may sit in
            // KVM_RUN (or halted) and need the kick.
            if me != Some(index as u32)
                && let Some(c) = lock(&self.control).as_ref()
            {
                c.kick_one(index);
            }
        }
    }
}

impl SmiSink for SmiPending {
    fn raise(&self, target: SmiTarget) {
        let me = hospes_devices::bus::initiator().vcpu;
        match target {
            SmiTarget::Vcpu(i) => self.mark(i as usize, me),
            SmiTarget::All => (0..self.pending.len()).for_each(|i| self.mark(i, me)),
        }
    }
}

/// Sets up vCPU `index` of `count`: CPUID, MSRs, LAPIC LINTs; the boot vCPU (index 0) gets
/// the entry state, the others wait for INIT/SIPI.
/// How a vCPU starts.
#[derive(Clone, Copy, Debug)]
pub enum VcpuStart<'a> {
    /// In 32-bit protected mode at a loaded kernel's entry point (direct kernel boot).
    Kernel(&'a BootEntry),
    /// At the reset vector 0xffff_fff0 in real mode, as after power-on (firmware boot):
    /// KVM creates vCPUs in that state.
    ResetVector,
    /// Halted until another vCPU sends INIT and SIPI (application processors).
    WaitForSipi,
}

pub fn configure(
    vcpu: &VcpuFd,
    base_cpuid: &CpuId,
    index: u32,
    count: u32,
    start: VcpuStart<'_>,
) -> Result<(), VcpuError> {
    let fail = |what| {
        move |source| VcpuError::Setup {
            index,
            what,
            source,
        }
    };
    let mut cpuid = base_cpuid.clone();
    cpuid::customize(cpuid.as_mut_slice(), index, count);
    vcpu.set_cpuid2(&cpuid).map_err(fail("CPUID"))?;

    let entries: Vec<kvm_msr_entry> = msr::boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs)?;
    vcpu.set_msrs(&msrs).map_err(fail("MSRs"))?;

    let mut lapic = vcpu.get_lapic().map_err(fail("LAPIC"))?;
    regs::setup_lint(&mut lapic.regs);
    vcpu.set_lapic(&lapic).map_err(fail("LAPIC"))?;

    match start {
        VcpuStart::Kernel(b) => {
            let sregs = vcpu.get_sregs().map_err(fail("sregs"))?;
            vcpu.set_sregs(&regs::protected_mode_sregs(sregs, layout::BOOT_GDT))
                .map_err(fail("sregs"))?;
            vcpu.set_regs(&regs::boot_regs(b.entry, b.info))
                .map_err(fail("regs"))?;
            vcpu.set_fpu(&regs::boot_fpu()).map_err(fail("FPU"))?;
        }
        VcpuStart::ResetVector => {}
        VcpuStart::WaitForSipi => {
            let mp = kvm_mp_state {
                mp_state: KVM_MP_STATE_UNINITIALIZED,
            };
            vcpu.set_mp_state(mp).map_err(fail("MP state"))?;
        }
    }
    Ok(())
}

/// Creates vCPU `index`.
pub fn create(vm: &VmFd, index: u32) -> Result<VcpuFd, VcpuError> {
    vm.create_vcpu(u64::from(index))
        .map_err(|e| VcpuError::Create(index, e))
}

/// Runs a vCPU until it must stop; returns why, or None when stopped from outside.
///
/// Before it returns, an I/O or MMIO exit the devices have answered is completed inside
/// KVM (one `KVM_RUN` with `immediate_exit` set: KVM finishes the instruction and returns
/// at once), so the registers read afterwards (a save) hold the instruction's result.
pub fn run(
    vcpu: &mut VcpuFd,
    index: u32,
    buses: &ExitBuses,
    control: &RunControl,
) -> Option<VcpuEvent> {
    let immediate_exit = std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit);
    IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
    let result = run_loop(vcpu, index, buses, control);
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    if result.is_none() {
        vcpu.set_kvm_immediate_exit(1);
        // EINTR is the expected answer; the exit it would report (none) does not matter.
        let _ = vcpu.run();
        vcpu.set_kvm_immediate_exit(0);
    }
    set_initiator(Initiator::default());
    result
}

/// Whether `kvm_run.flags`, read through `flags`, says the last exit happened in SMM.
///
/// # Safety
///
/// `flags` must point at the `flags` field of the kvm_run mapping of a live VcpuFd whose
/// `KVM_RUN` has returned on this thread.
unsafe fn exit_in_smm(flags: *const u16) -> bool {
    // SAFETY: the caller's promise: a live mapping, which KVM wrote before KVM_RUN returned
    // and leaves alone until the next KVM_RUN on this thread.
    let flags = unsafe { std::ptr::read_volatile(flags) };
    u32::from(flags) & kvm_bindings::KVM_RUN_X86_SMM != 0
}

fn run_loop(
    vcpu: &mut VcpuFd,
    index: u32,
    buses: &ExitBuses,
    control: &RunControl,
) -> Option<VcpuEvent> {
    let flags = std::ptr::addr_of!(vcpu.get_kvm_run().flags);
    loop {
        if !control.checkpoint() {
            return None;
        }
        if let Some(smi) = &buses.smi
            && smi.take(index)
            && let Err(e) = vcpu.smi()
        {
            hospes_devices::guest_warn!("vCPU {index}: cannot inject an SMI: {e}");
        }
        match vcpu.run() {
            Ok(exit) => {
                // SAFETY: `flags` points into `vcpu`'s kvm_run mapping, alive for this
                // loop; KVM_RUN just returned on this thread; the exit data borrowed from
                // `vcpu` does not cover the flags field.
                let smm = unsafe { exit_in_smm(flags) };
                set_initiator(Initiator {
                    vcpu: Some(index),
                    smm,
                });
                let internal = matches!(exit, VcpuExit::InternalError);
                if let Some(ev) = handle_exit(exit, index, buses) {
                    return Some(match ev {
                        VcpuEvent::Error(msg) if internal => {
                            VcpuEvent::Error(format!("{msg}: {}", internal_error_details(vcpu)))
                        }
                        ev => ev,
                    });
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => {
                return Some(VcpuEvent::Error(format!(
                    "vCPU {index}: KVM_RUN failed: {e}"
                )));
            }
        }
    }
}

/// KVM's sub-error code and data words, and the guest's instruction pointer, for an
/// internal-error exit.
fn internal_error_details(vcpu: &mut VcpuFd) -> String {
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or_default();
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the union
    // member KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    format!(
        "suberror {}, data {:x?}, rip {rip:#x}",
        internal.suberror,
        &internal.data[..n]
    )
}

fn read_bus(bus: &RwLock<Bus>) -> std::sync::RwLockReadGuard<'_, Bus> {
    bus.read().unwrap_or_else(|e| e.into_inner())
}

/// Reads through `bus` with the bus unlocked during the device access, so a device may
/// move devices on it (the ICH9 PM block follows PMBASE). False when no device claims it;
/// `data` then holds all-ones, what an unclaimed cycle returns.
fn bus_read(bus: &RwLock<Bus>, addr: u64, data: &mut [u8]) -> bool {
    data.fill(0xff);
    let Some((device, base, offset)) = read_bus(bus).route(addr, data.len()) else {
        return false;
    };
    lock(&device).read(base, offset, data);
    true
}

/// Writes through `bus` as [`bus_read`] reads.
fn bus_write(bus: &RwLock<Bus>, addr: u64, data: &[u8]) -> bool {
    let Some((device, base, offset)) = read_bus(bus).route(addr, data.len()) else {
        return false;
    };
    lock(&device).write(base, offset, data);
    true
}

fn handle_exit(exit: VcpuExit<'_>, index: u32, buses: &ExitBuses) -> Option<VcpuEvent> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !bus_read(&buses.pio, u64::from(port), data) {
                hospes_devices::guest_warn!(
                    "unhandled port read {port:#06x} ({} bytes)",
                    data.len()
                );
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !bus_write(&buses.pio, u64::from(port), data) {
                hospes_devices::guest_warn!("unhandled port write {port:#06x} <- {data:02x?}");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !bus_read(&buses.mmio, addr, data) {
                hospes_devices::guest_warn!("unhandled MMIO read {addr:#x} ({} bytes)", data.len());
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !bus_write(&buses.mmio, addr, data) {
                hospes_devices::guest_warn!("unhandled MMIO write {addr:#x} <- {data:02x?}");
            }
        }
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
        VcpuExit::Shutdown => {
            log::info!("vCPU {index}: triple fault, resetting");
            return Some(VcpuEvent::Reset);
        }
        VcpuExit::SystemEvent(kind, _) => {
            return Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => VcpuEvent::PowerOff,
                KVM_SYSTEM_EVENT_RESET => VcpuEvent::Reset,
                other => VcpuEvent::Error(format!("vCPU {index}: unexpected system event {other}")),
            });
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(VcpuEvent::Error(format!(
                "vCPU {index}: KVM could not enter the guest (reason {reason:#x}, cpu {cpu})"
            )));
        }
        VcpuExit::InternalError => {
            return Some(VcpuEvent::Error(format!(
                "vCPU {index}: KVM internal error (an instruction it cannot emulate?)"
            )));
        }
        other => {
            return Some(VcpuEvent::Error(format!(
                "vCPU {index}: unexpected exit {other:?}"
            )));
        }
    }
    None
}
