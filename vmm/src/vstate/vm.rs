//! The KVM VM: opening /dev/kvm (with an actionable message when that fails), creating the
//! VM with the in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT, and the interrupt lines
//! devices use.

use std::sync::{Arc, mpsc};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::layout;
use hospes_devices::legacy::IrqLine;

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "/dev/kvm does not exist: enable virtualization in the firmware settings and load the kvm module"
    )]
    NoKvm,
    #[error(
        "no permission to open /dev/kvm: add your user to the kvm group (sudo usermod -aG kvm $USER), then log out and back in"
    )]
    KvmPermission,
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported")]
    ApiVersion(i32),
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot set up the VM ({0})")]
    Setup(&'static str, #[source] kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] super::memory::MemoryError),
    #[error("cannot start the VM set-up thread")]
    Thread(#[source] std::io::Error),
    #[error("the VM set-up thread failed")]
    SetupThread,
}

/// Opens /dev/kvm.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmError::NoKvm,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::OpenKvm(e),
    })?;
    let v = kvm.get_api_version();
    if v != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmError::ApiVersion(v));
    }
    Ok(kvm)
}

/// Creates an empty VM.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    kvm.create_vm().map_err(VmError::CreateVm)
}

/// The kernel side of a new VM, set up on a thread of its own while the caller fills guest
/// memory: registering the memory slots and creating the PIT each wait on the host kernel
/// (an SRCU grace period, the start of the PIT's worker thread), together more than half of
/// a tiny guest's start-up when nested, and none of it is needed to load the kernel or
/// build the ACPI tables.
///
/// In order: guest memory (a slot added before the irqchip exists costs no grace period),
/// the TSS and identity-map pages, the in-kernel irqchip ([`VmSetup::irqchip`] waits for
/// this far), then the PIT ([`VmSetup::finish`] waits for everything). Dropping it waits
/// for the thread, so the memory it registered outlives its use.
pub struct VmSetup {
    vm: Arc<VmFd>,
    irqchip: Option<mpsc::Receiver<Result<(), VmError>>>,
    thread: Option<std::thread::JoinHandle<Result<(), VmError>>>,
}

impl VmSetup {
    /// Starts setting up `vm` with `memory` as its RAM.
    /// `hole` is a range of `memory` left out of the slots (see `memory::register`).
    pub fn start(
        vm: VmFd,
        memory: GuestMemoryMmap,
        hole: Option<(u64, u64)>,
    ) -> Result<Self, VmError> {
        let vm = Arc::new(vm);
        let (tx, rx) = mpsc::sync_channel(1);
        let kernel_vm = vm.clone();
        let thread = std::thread::Builder::new()
            .name("vm-setup".into())
            .spawn(move || {
                let first = setup_irqchip(&kernel_vm, &memory, hole);
                let ok = first.is_ok();
                let _ = tx.send(first);
                drop(memory);
                if ok { create_pit(&kernel_vm) } else { Ok(()) }
            })
            .map_err(VmError::Thread)?;
        Ok(Self {
            vm,
            irqchip: Some(rx),
            thread: Some(thread),
        })
    }

    /// Waits until guest memory and the irqchip are in place (irqfds need the irqchip);
    /// returns the VM.
    pub fn irqchip(&mut self) -> Result<Arc<VmFd>, VmError> {
        if let Some(rx) = self.irqchip.take() {
            match rx.recv() {
                Ok(result) => result?,
                // The thread ended without a word: it panicked; its join says so.
                Err(_) => return self.join().map(|()| self.vm.clone()),
            }
        }
        Ok(self.vm.clone())
    }

    /// Waits until the whole VM, the PIT included, is set up.
    pub fn finish(mut self) -> Result<(), VmError> {
        self.irqchip()?;
        self.join()
    }

    fn join(&mut self) -> Result<(), VmError> {
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or(Err(VmError::SetupThread)),
            None => Ok(()),
        }
    }
}

impl Drop for VmSetup {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn setup_irqchip(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    hole: Option<(u64, u64)>,
) -> Result<(), VmError> {
    super::memory::register(vm, memory, hole)?;
    vm.set_tss_address(layout::KVM_TSS as usize)
        .map_err(|e| VmError::Setup("TSS address", e))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP)
        .map_err(|e| VmError::Setup("identity map", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmError::Setup("irqchip", e))
}

fn create_pit(vm: &VmFd) -> Result<(), VmError> {
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(|e| VmError::Setup("PIT", e))
}

/// An ISA/GSI line of the in-kernel irqchip, driven with `KVM_IRQ_LINE`.
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl KvmIrqLine {
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Self {
        Self { vm, gsi }
    }
}

impl IrqLine for KvmIrqLine {
    fn trigger(&self) {
        self.set_level(true);
        self.set_level(false);
    }

    fn set_level(&self, high: bool) {
        if let Err(e) = self.vm.set_irq_line(self.gsi, high) {
            hospes_devices::guest_warn!("cannot set IRQ {}: {e}", self.gsi);
        }
    }
}

/// An edge-triggered line through an eventfd registered as an irqfd: raising it is one
/// write(2), no ioctl, so any thread may do it cheaply.
pub struct EventFdIrq(std::sync::Mutex<vmm_sys_util::eventfd::EventFd>);

impl EventFdIrq {
    /// A line on a new non-blocking eventfd, not yet bound to a VM.
    pub fn new() -> std::io::Result<Self> {
        let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)?;
        Ok(Self(std::sync::Mutex::new(fd)))
    }

    /// Binds the line to a new VM on a fresh eventfd, which `register` hands to KVM (as an
    /// irqfd). A fresh one each boot, because KVM lets an eventfd serve one VM's irqfd at a
    /// time and releases the previous VM's asynchronously after it is closed: the old
    /// eventfd could still be taken (EBUSY) when the next boot starts.
    pub fn rebind(
        &self,
        register: impl FnOnce(&vmm_sys_util::eventfd::EventFd) -> Result<(), kvm_ioctls::Error>,
    ) -> Result<(), kvm_ioctls::Error> {
        let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)))?;
        register(&fd)?;
        *hospes_devices::bus::lock(&self.0) = fd;
        Ok(())
    }
}

impl IrqLine for EventFdIrq {
    fn trigger(&self) {
        if let Err(e) = hospes_devices::bus::lock(&self.0).write(1) {
            hospes_devices::guest_warn!("cannot signal irqfd: {e}");
        }
    }

    fn set_level(&self, high: bool) {
        if high {
            self.trigger();
        }
    }
}
