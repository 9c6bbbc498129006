//! Builds and runs one virtual machine.
//!
//! Boot flow: [`Vmm::run`] loops over boots. Each boot [`Machine::new`] opens KVM, creates
//! the VM (irqchip, PIT), maps guest memory, writes the boot GDT and the ACPI tables, loads
//! the kernel, and puts the legacy devices on the buses. Then the caller's *registration
//! step* runs (see [`Vmm::run`]'s `setup`): other device families (PCI host bridge, virtio)
//! insert themselves into [`Machine::pio_bus`]/[`Machine::mmio_bus`] and wire irqfds,
//! ioeventfds and MSI routes on [`Machine::vm_fd`]. [`Machine::run`] then creates the
//! vCPUs, starts one thread each, and waits for an event: guest power-off, reset, a vCPU
//! error, or a command from a [`VmHandle`]. A reset ends this boot and starts the next one
//! from scratch (fresh VM, memory and per-boot devices); the serial port and the CMOS RTC
//! persist across boots, as on a PC.
//!
//! Threads: the calling thread waits for events; one thread per vCPU; a stdin (or unix
//! socket) reader for the serial console when there is one.

use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::hyperv as arch_hyperv;
use crate::arch::x86_64::{acpi, layout, regs};
use crate::boot::{self, BootInputs};
use crate::vstate::vcpu::{self, ExitBuses, RunControl, VcpuEvent, VcpuStart};
use crate::vstate::vm::{EventFdIrq, KvmIrqLine};
use crate::vstate::{hyperv, memory, save as kvm_save, vm};
use hospes_devices::bus::{Bus, BusError, lock};
use hospes_devices::legacy::debug_port::DebugPort;
use hospes_devices::legacy::i8042::I8042;
use hospes_devices::legacy::pm::PmBlock;
use hospes_devices::legacy::port92::Port92;
use hospes_devices::legacy::rtc::Rtc;
use hospes_devices::legacy::serial::SerialDevice;
use hospes_devices::legacy::{PowerEvent, PowerEvents};
use hospes_devices::state::StateRegistry;

pub mod console;
pub mod display;
pub mod e1000e;
pub mod firmware;
pub mod hda;
pub mod pci;
pub mod qmp;
pub mod save;
pub mod storage;
pub mod tpm;
pub mod uefi;
pub mod usb;

/// Smallest guest RAM accepted.
pub const MIN_MEMORY: u64 = 2 << 20;
/// Most vCPUs (8-bit APIC ids in the MADT).
pub const MAX_CPUS: u32 = 255;

/// Errors building or running a machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Firmware(#[from] firmware::FirmwareError),
    #[error(transparent)]
    Uefi(#[from] uefi::UefiError),
    #[error(transparent)]
    Hyperv(#[from] hyperv::HypervError),
    #[error("cannot place a device on the bus")]
    Bus(#[from] BusError),
    #[error("{requested} bytes of guest memory is more than this host's {host} bytes of RAM")]
    MemoryTooLarge { requested: u64, host: u64 },
    #[error("guest memory must be at least {MIN_MEMORY} bytes")]
    MemoryTooSmall,
    #[error("the number of vCPUs must be between 1 and {MAX_CPUS}")]
    BadCpuCount,
    #[error("cannot write boot data to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    #[error("cannot read KVM's supported CPUID")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error("cannot register an irqfd")]
    Irqfd(#[source] kvm_ioctls::Error),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot open serial output {path}")]
    SerialOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Guest(String),
    #[error("device setup failed: {0}")]
    Setup(String),
    #[error(transparent)]
    Save(#[from] save::SaveError),
}

/// Where COM1 goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialConfig {
    /// The helper's stdin/stdout.
    Stdio,
    /// A listening unix socket; one client at a time.
    Unix(PathBuf),
    /// Append to a file (output only).
    File(PathBuf),
    /// Nowhere.
    None,
}

/// Everything needed to build a machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    pub cpus: u32,
    pub serial: SerialConfig,
    /// A guest reset ends the process instead of rebooting.
    pub no_reboot: bool,
    /// Boot firmware (SeaBIOS or OVMF on the Q35 platform) instead of `kernel`.
    pub firmware: Option<firmware::FirmwareConfig>,
    /// Offer Hyper-V enlightenments (Windows guests), where KVM supports them.
    pub hyperv: bool,
    /// The CMOS clock keeps the host's local time instead of UTC (Windows guests).
    pub rtc_local: bool,
    /// The machine has a TPM: the ACPI tables describe it (`machine::tpm` places it).
    pub tpm: bool,
    /// Where QMP `hospes-save` writes the VM's state (the VM folder's saved state for a
    /// VM started from its vm.ron); None: this VM cannot be saved.
    pub save_file: Option<PathBuf>,
}

/// The host's offset from UTC now, in seconds (east positive), from its time zone.
fn host_utc_offset() -> i64 {
    // SAFETY: time(NULL) reads the clock; localtime_r fills the tm it is given and keeps
    // no pointer to it.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    }
}

/// Adds the Hyper-V leaves to `cpuid` where KVM supports them, and says in the log what
/// the guest gets; returns whether the vCPUs need KVM's SynIC.
fn enlighten(kvm: &Kvm, cpuid: &mut CpuId) -> Result<bool, MachineError> {
    let Some(supported) = hyperv::supported_leaves(kvm)? else {
        log::warn!(
            "this KVM offers no Hyper-V interface (KVM_CAP_SYS_HYPERV_CPUID): Windows runs \
             without enlightenments, which costs it speed"
        );
        return Ok(false);
    };
    let mut entries = cpuid.as_slice().to_vec();
    let Some(on) = arch_hyperv::enlighten(&mut entries, &supported) else {
        log::warn!("KVM reports no usable Hyper-V interface: no enlightenments");
        return Ok(false);
    };
    *cpuid = CpuId::from_entries(&entries).map_err(|_| {
        MachineError::Setup(format!(
            "{} CPUID entries are more than KVM takes",
            entries.len()
        ))
    })?;
    log::info!("Hyper-V enlightenments: {}", on.names().join(", "));
    Ok(on.synic())
}

/// Events that end a boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineEvent {
    Reset,
    PowerOff,
    Quit,
    Error(String),
    /// Save the machine's state and end (`hospes-save`).
    Save(save::SaveRequest),
    /// The machine's state was saved.
    Saved,
}

/// How a run of [`Vmm::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest powered off.
    PowerOff,
    /// The guest reset with `no_reboot` set.
    Reset,
    /// [`VmHandle::quit`].
    Quit,
    /// The VM was saved to its saved-state file ([`VmHandle::save`]).
    Saved,
}

/// Device power requests forwarded into the machine's event channel.
struct EventSink(Sender<MachineEvent>);

impl PowerEvents for EventSink {
    fn request(&self, event: PowerEvent) {
        let ev = match event {
            PowerEvent::Reset => MachineEvent::Reset,
            PowerEvent::PowerOff => MachineEvent::PowerOff,
        };
        // The receiver lives as long as the Vmm; a send after it is gone has no one to tell.
        let _ = self.0.send(ev);
    }
}

/// Tells the machine when a vCPU thread dies by panicking, so the boot ends with an error
/// instead of waiting for an event that never comes.
struct PanicNotice(Sender<MachineEvent>, usize);

impl Drop for PanicNotice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.send(MachineEvent::Error(format!(
                "vCPU {} thread panicked",
                self.1
            )));
        }
    }
}

/// The VM state QMP `query-status` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Not started yet.
    Prelaunch,
    Running,
    Paused,
    /// Powered off or quitting.
    Shutdown,
}

impl RunState {
    /// The QMP spelling (`query-status` "status").
    pub fn as_qmp_str(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Shutdown => "shutdown",
        }
    }
}

/// Errors from [`VmHandle`] commands.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    #[error("the VM is not running")]
    NotRunning,
    #[error("the vCPUs did not stop in time")]
    PauseTimeout,
    #[error("{0}")]
    CannotSave(String),
}

struct HandleInner {
    control: Arc<RunControl>,
    events: Sender<MachineEvent>,
    pm: Mutex<PmSlot>,
    state: Mutex<RunState>,
    /// Why the boot in progress cannot be saved (None: it can).
    save_blocker: Mutex<Option<String>>,
}

/// The power-management block of the boot in progress, if any, and a power-button press
/// that arrived between two boots (during a reset): it is latched and delivered to the
/// next boot's block, as the button's status bit survives a reset on a PC.
#[derive(Default)]
struct PmSlot {
    block: Option<Arc<Mutex<PmBlock>>>,
    button_latched: bool,
}

/// A cloneable remote control for the VM, for the QMP server and signal handlers. Every
/// method may be called from any thread, before, during or after a boot.
///
/// - [`pause`](Self::pause) / [`resume`](Self::resume): `stop` / `cont`; pause returns once
///   every vCPU is out of the guest. A reset keeps the VM paused.
/// - [`powerdown`](Self::powerdown): `system_powerdown`, the ACPI power button (the guest
///   decides what to do; a guest without ACPI ignores it).
/// - [`reset`](Self::reset): `system_reset`, a hard reset (or exit with `--no-reboot`).
/// - [`quit`](Self::quit): `quit`, ends [`Vmm::run`] with [`Exit::Quit`].
/// - [`status`](Self::status): `query-status`.
#[derive(Clone)]
pub struct VmHandle {
    inner: Arc<HandleInner>,
}

impl VmHandle {
    fn new(events: Sender<MachineEvent>) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                control: Arc::new(RunControl::default()),
                events,
                pm: Mutex::new(PmSlot::default()),
                state: Mutex::new(RunState::Prelaunch),
                save_blocker: Mutex::new(Some("the VM has not started yet".into())),
            }),
        }
    }

    /// The current state.
    pub fn status(&self) -> RunState {
        let s = *lock(&self.inner.state);
        if s == RunState::Running && self.inner.control.is_paused() {
            RunState::Paused
        } else {
            s
        }
    }

    /// Stops all vCPUs; returns when they are out of the guest.
    pub fn pause(&self) -> Result<(), HandleError> {
        if self.inner.control.pause(Duration::from_secs(2)) {
            Ok(())
        } else {
            Err(HandleError::PauseTimeout)
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.inner.control.resume();
    }

    /// Presses the ACPI power button. Between two boots (a reset in progress) the press
    /// is latched for the next boot; before the first boot or after the last it fails.
    pub fn powerdown(&self) -> Result<(), HandleError> {
        let mut slot = lock(&self.inner.pm);
        match &slot.block {
            Some(pm) => lock(pm).press_power_button(),
            None if matches!(
                *lock(&self.inner.state),
                RunState::Running | RunState::Paused
            ) =>
            {
                slot.button_latched = true
            }
            None => return Err(HandleError::NotRunning),
        }
        Ok(())
    }

    /// Resets the machine.
    pub fn reset(&self) {
        let _ = self.inner.events.send(MachineEvent::Reset);
    }

    /// Ends the VM.
    pub fn quit(&self) {
        let _ = self.inner.events.send(MachineEvent::Quit);
    }

    /// Saves the VM to its saved-state file and ends it (see [`save`]): refused at once
    /// when the running machine cannot be saved (a device without saved state, no file to
    /// write); the rest goes to `reporter`.
    pub fn save(&self, reporter: Arc<dyn save::SaveReporter>) -> Result<(), HandleError> {
        if !matches!(self.status(), RunState::Running | RunState::Paused) {
            return Err(HandleError::NotRunning);
        }
        if let Some(why) = lock(&self.inner.save_blocker).clone() {
            return Err(HandleError::CannotSave(why));
        }
        let request = save::SaveRequest {
            reporter,
            started: std::time::Instant::now(),
        };
        let _ = self.inner.events.send(MachineEvent::Save(request));
        Ok(())
    }

    fn set_state(&self, s: RunState) {
        *lock(&self.inner.state) = s;
    }
}

/// One boot of the machine. Public fields are the registration surface for other device
/// families; see the module docs.
pub struct Machine {
    /// Port I/O space. Insert devices before [`Machine::run`]; a device moving itself
    /// (a BAR) at run time takes the write lock from outside its own bus access.
    pub pio_bus: Arc<RwLock<Bus>>,
    /// MMIO space (ECAM at `layout::PCI_ECAM_START`, BARs in the PCI MMIO windows).
    pub mmio_bus: Arc<RwLock<Bus>>,
    /// The KVM VM: `register_irqfd`, `register_ioevent`, `set_gsi_routing` (MSI routes;
    /// GSIs 0..23 are the IOAPIC pins, use 24 and up for MSIs).
    pub vm_fd: Arc<VmFd>,
    /// Guest RAM.
    pub guest_memory: GuestMemoryMmap,
    /// The configuration this boot was built from.
    pub config: MachineConfig,
    /// The keyboard controller: PS/2 keyboard and mouse input goes here.
    pub i8042: Arc<Mutex<I8042>>,
    /// The Q35 chipset of a firmware boot, for the PCI registration step.
    pub chipset: Option<firmware::Platform>,
    /// The devices whose state a save takes (`hospes_devices::state`): each device
    /// family adds its devices as it attaches them, or names them as not savable yet.
    pub states: StateRegistry,
    kvm: Kvm,
    /// The loaded kernel's entry (direct kernel boot); None: firmware boot.
    boot: Option<boot::BootEntry>,
    /// The firmware images mapped into this boot (kept as long as the VM).
    _rom: Option<uefi::FirmwareImages>,
    /// SMIs waiting for their vCPU, on a machine with SMM.
    smi: Option<Arc<vcpu::SmiPending>>,
    serial: Arc<Mutex<SerialDevice>>,
    /// The VM's kernel side (the PIT), still being set up while devices are added.
    setup: vm::VmSetup,
    /// Run when this boot ends, after its vCPUs stopped (see [`Machine::on_boot_end`]).
    end_hooks: Vec<Box<dyn FnOnce() + Send>>,
}

/// Devices that live across boots.
struct Persistent {
    serial: Arc<Mutex<SerialDevice>>,
    serial_irq: Arc<EventFdIrq>,
    rtc: Arc<Mutex<Rtc>>,
}

impl Machine {
    fn new(
        config: &MachineConfig,
        persistent: &Persistent,
        events: &Sender<MachineEvent>,
        handle: &VmHandle,
        restoring: bool,
    ) -> Result<Self, MachineError> {
        let kvm = vm::open_kvm()?;
        let guest_memory = match config.firmware {
            Some(_) => memory::create_for_firmware(config.memory)?,
            None => memory::create(config.memory)?,
        };
        // Under firmware boot the chipset's PAM registers map the BIOS area.
        let bios_area = config
            .firmware
            .as_ref()
            .map(|_| (layout::BIOS_AREA_START, layout::HIMEM_START));
        let mut setup = vm::VmSetup::start(vm::create_vm(&kvm)?, guest_memory.clone(), bios_area)?;

        let (boot, rom) = match &config.firmware {
            Some(fw) => (None, Some(uefi::FirmwareImages::load(fw)?)),
            // A restored machine's RAM comes from its saved state.
            None if restoring => (None, None),
            None => (Some(load_kernel(config, &guest_memory)?), None),
        };

        let vm_fd = setup.irqchip()?;
        // SMIs raised on a machine with SMM, injected by each vCPU before it runs.
        let smi = config
            .firmware
            .as_ref()
            .filter(|fw| fw.smm)
            .map(|_| Arc::new(vcpu::SmiPending::new(config.cpus)));
        let power: Arc<dyn PowerEvents> = Arc::new(EventSink(events.clone()));
        let mut pio = Bus::new();
        pio.insert(persistent.serial.clone(), u64::from(layout::COM1_PORT), 8)?;
        persistent
            .serial_irq
            .rebind(|fd| vm_fd.register_irqfd(fd, layout::COM1_IRQ))
            .map_err(MachineError::Irqfd)?;
        let kbd_irq = Arc::new(KvmIrqLine::new(vm_fd.clone(), layout::I8042_KBD_IRQ));
        let mut kbc = I8042::new(kbd_irq, power.clone());
        kbc.set_aux_irq(Arc::new(KvmIrqLine::new(
            vm_fd.clone(),
            layout::I8042_AUX_IRQ,
        )));
        let i8042 = Arc::new(Mutex::new(kbc));
        pio.insert(i8042.clone(), 0x60, 1)?;
        pio.insert(i8042.clone(), 0x64, 1)?;
        pio.insert(persistent.rtc.clone(), 0x70, 2)?;
        pio.insert(Arc::new(Mutex::new(DebugPort::new())), 0x80, 1)?;
        let port92 = Arc::new(Mutex::new(Port92::new(power.clone())));
        pio.insert(port92.clone(), 0x92, 1)?;
        let sci = Arc::new(KvmIrqLine::new(vm_fd.clone(), layout::SCI_IRQ));
        let mut mmio = Bus::new();
        let pio_bus;
        let mut chipset = None;
        let pm = match (&config.firmware, &rom) {
            (Some(fw), Some(rom)) => {
                // The ICH9 PM block appears where the firmware programs PMBASE.
                let pm = Arc::new(Mutex::new(PmBlock::new_ich9(sci, power.clone())));
                pio_bus = Arc::new(RwLock::new(pio));
                chipset = Some(firmware::Platform::build(firmware::PlatformParts {
                    fw,
                    cpus: config.cpus,
                    memory: config.memory,
                    vm: &vm_fd,
                    guest_memory: &guest_memory,
                    rom,
                    pio: &pio_bus,
                    mmio: &mut mmio,
                    pm: &pm,
                    power,
                    tpm: config.tpm,
                    smm: smi.as_ref().map(|smi| firmware::SmmParts {
                        kvm: &kvm,
                        smi: smi.clone(),
                        ram_hole: bios_area,
                    }),
                })?);
                pm
            }
            _ => {
                let pm = Arc::new(Mutex::new(PmBlock::new(sci, power)));
                pio.insert(
                    pm.clone(),
                    u64::from(layout::PM_BASE),
                    u64::from(layout::PM_LEN),
                )?;
                pio_bus = Arc::new(RwLock::new(pio));
                pm
            }
        };
        let mut slot = lock(&handle.inner.pm);
        if std::mem::take(&mut slot.button_latched) {
            lock(&pm).press_power_button();
        }
        slot.block = Some(pm.clone());
        drop(slot);

        let mut states = StateRegistry::default();
        states.add("serial", persistent.serial.clone());
        states.add("rtc", persistent.rtc.clone());
        states.add("i8042", i8042.clone());
        states.add("pm", pm);
        states.add("port92", port92);
        if let Some(platform) = &chipset {
            // The MCH (PAM, SMRAM), the LPC bridge, RST_CNT, APM, fw_cfg, OVMF's flashes.
            platform.register_states(&mut states, rom.as_ref());
        }
        Ok(Self {
            pio_bus,
            mmio_bus: Arc::new(RwLock::new(mmio)),
            chipset,
            states,
            vm_fd,
            guest_memory,
            config: config.clone(),
            i8042,
            kvm,
            boot,
            _rom: rom,
            smi,
            serial: persistent.serial.clone(),
            setup,
            end_hooks: Vec::new(),
        })
    }

    /// Runs `hook` when this boot ends (guest reset or power-off, quit), once every vCPU
    /// has left the guest: for state that outlives the boot, such as the disc a guest
    /// ejected from the CD drive.
    pub fn on_boot_end(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.end_hooks.push(Box::new(hook));
    }

    /// Starts the vCPUs and runs until an event ends this boot.
    fn run(
        mut self,
        events: &Sender<MachineEvent>,
        rx: &Receiver<MachineEvent>,
        control: &Arc<RunControl>,
        mut restore: Option<Resume>,
    ) -> Result<MachineEvent, MachineError> {
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(MachineError::Cpuid)?;
        let synic = match self.config.hyperv {
            true => enlighten(&self.kvm, &mut cpuid)?,
            false => false,
        };
        let count = self.config.cpus;
        let mut vcpus = Vec::new();
        for index in 0..count {
            let fd = vcpu::create(&self.vm_fd, index)?;
            if synic {
                hyperv::enable_synic(&fd, index)?;
            }
            let start = match (index, &self.boot) {
                (0, Some(entry)) => VcpuStart::Kernel(entry),
                (0, None) => VcpuStart::ResetVector,
                _ => VcpuStart::WaitForSipi,
            };
            vcpu::configure(&fd, &cpuid, index, count, start)?;
            vcpus.push(fd);
        }
        vcpu::install_kick_handler()?;
        self.setup.finish()?;
        if let Some(r) = restore.as_mut() {
            r.apply(&self.vm_fd, &self.states, &vcpus)?;
        }
        if let Some(smi) = &self.smi {
            smi.attach(control.clone());
        }
        let buses = ExitBuses {
            pio: self.pio_bus.clone(),
            mmio: self.mmio_bus.clone(),
            smi: self.smi.clone(),
        };
        let mut threads = Vec::new();
        control.begin();
        for (index, fd) in vcpus.into_iter().enumerate() {
            let (buses, ctl, events) = (buses.clone(), control.clone(), events.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let mut fd = fd;
                    crate::sandbox::confine_vcpu_thread();
                    let _notice = PanicNotice(events.clone(), index);
                    let ev = vcpu::run(&mut fd, index as u32, &buses, &ctl);
                    let _ = events.send(match ev {
                        Some(VcpuEvent::Reset) => MachineEvent::Reset,
                        Some(VcpuEvent::PowerOff) => MachineEvent::PowerOff,
                        Some(VcpuEvent::Error(e)) => MachineEvent::Error(e),
                        None => return Some(fd),
                    });
                    None
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    control.stop();
                    return Err(MachineError::Thread(e));
                }
            }
        }
        control.attach(threads.iter().map(|t| t.as_pthread_t()).collect());
        if let Some(path) = restore.and_then(|r| r.consume) {
            // Resumed: the file must not be resumed again, the disks move on from here.
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("cannot remove the resumed state {}: {e}", path.display());
            }
        }
        // A sender is held by this function, so recv only fails if every sender is gone.
        let event = rx.recv().unwrap_or(MachineEvent::Quit);
        control.stop();
        let fds: Vec<_> = threads
            .into_iter()
            .filter_map(|t| t.join().ok().flatten())
            .collect();
        let event = match event {
            MachineEvent::Save(request) => save_boot(
                &save::Parts {
                    kvm: &self.kvm,
                    vm: &self.vm_fd,
                    vcpus: &fds,
                    memory: &self.guest_memory,
                    config: &self.config,
                    states: &self.states,
                },
                &request,
            ),
            other => other,
        };
        for hook in std::mem::take(&mut self.end_hooks) {
            hook();
        }
        lock(&self.serial).flush();
        Ok(event)
    }
}

/// Saves a stopped boot (vCPUs out of the guest for good) to the configured file,
/// reporting to the request's reporter; the VM ends either way.
fn save_boot(parts: &save::Parts<'_>, request: &save::SaveRequest) -> MachineEvent {
    let Some(path) = &parts.config.save_file else {
        request
            .reporter
            .failed(&save::SaveError::NoFile.to_string());
        return MachineEvent::Error(save::SaveError::NoFile.to_string());
    };
    match save::save(parts, path, request.reporter.as_ref()) {
        Ok(bytes) => {
            let ms = request.started.elapsed().as_millis() as u64;
            request.reporter.completed(path, bytes, ms);
            MachineEvent::Saved
        }
        Err(e) => {
            let msg = hospes_core::error_chain(&e);
            request.reporter.failed(&msg);
            MachineEvent::Error(format!("save failed: {msg}"))
        }
    }
}

/// A saved state's KVM and device parts, put into a boot before its vCPUs run (guest RAM
/// is already back by then).
struct Resume {
    vm: kvm_save::VmState,
    vcpus: Vec<kvm_save::VcpuState>,
    devices: Vec<(String, Vec<u8>)>,
    /// The file to delete once the vCPUs run.
    consume: Option<PathBuf>,
}

impl Resume {
    /// Checks `restore` against the freshly built `machine` and loads its RAM.
    fn prepare(restore: save::Restore, machine: &Machine) -> Result<Self, MachineError> {
        restore.check_machine(&machine.config, &machine.states)?;
        let (vm, vcpus) = restore.kvm_state(machine.config.cpus)?;
        let devices = restore.device_sections();
        let consume = restore.consume.then(|| restore.path().to_path_buf());
        restore.load_ram(&machine.guest_memory)?;
        Ok(Self {
            vm,
            vcpus,
            devices,
            consume,
        })
    }

    /// The irqchip, PIT and clock, then the devices in order, then the vCPUs.
    fn apply(
        &self,
        vm: &VmFd,
        states: &StateRegistry,
        vcpus: &[kvm_ioctls::VcpuFd],
    ) -> Result<(), MachineError> {
        kvm_save::restore_vm(vm, &self.vm).map_err(save::SaveError::from)?;
        states
            .restore(&self.devices)
            .map_err(save::SaveError::from)?;
        for (i, (fd, state)) in vcpus.iter().zip(&self.vcpus).enumerate() {
            kvm_save::restore_vcpu(fd, i as u32, state).map_err(save::SaveError::from)?;
        }
        log::info!("resumed the saved state");
        Ok(())
    }
}

/// Direct kernel boot: writes the boot GDT and the ACPI tables and loads the kernel.
fn load_kernel(
    config: &MachineConfig,
    guest_memory: &GuestMemoryMmap,
) -> Result<boot::BootEntry, MachineError> {
    let gdt: Vec<u8> = regs::gdt().iter().flat_map(|e| e.to_le_bytes()).collect();
    guest_memory
        .write_slice(&gdt, GuestAddress(layout::BOOT_GDT))
        .map_err(MachineError::GuestMemory)?;
    let tables = acpi::build(config.cpus, config.memory, config.tpm)?;
    guest_memory
        .write_slice(&tables.blob, GuestAddress(tables.base))
        .map_err(MachineError::GuestMemory)?;
    Ok(boot::load(
        guest_memory,
        &BootInputs {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            cmdline: &config.cmdline,
            memory: config.memory,
            rsdp_addr: tables.rsdp_addr,
        },
    )?)
}

/// Runs a VM across reboots.
pub struct Vmm {
    config: MachineConfig,
    handle: VmHandle,
    events: Sender<MachineEvent>,
    rx: Receiver<MachineEvent>,
    persistent: Persistent,
    /// A saved state the first boot resumes.
    restore: Option<save::Restore>,
    /// Restores the terminal when the VM ends.
    _terminal: Option<console::RawTerminal>,
}

impl Vmm {
    /// Checks `config` against the host and opens the serial backend.
    pub fn new(config: MachineConfig) -> Result<Self, MachineError> {
        if config.memory < MIN_MEMORY {
            return Err(MachineError::MemoryTooSmall);
        }
        if let Some(host) = memory::host_ram()
            && config.memory > host
        {
            return Err(MachineError::MemoryTooLarge {
                requested: config.memory,
                host,
            });
        }
        if config.cpus == 0 || config.cpus > MAX_CPUS {
            return Err(MachineError::BadCpuCount);
        }
        let (events, rx) = channel();
        let serial_irq = Arc::new(EventFdIrq::new().map_err(MachineError::EventFd)?);
        let (out, input) = console::open(&config.serial)?;
        let terminal = match input {
            Some(console::Input::Stdin) => console::RawTerminal::enable(),
            _ => None,
        };
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq.clone(), out)));
        if let Some(input) = input {
            console::spawn_input(input, serial.clone())?;
        }
        let mut rtc = Rtc::new();
        if config.rtc_local {
            rtc.set_utc_offset(host_utc_offset());
        }
        let (below_4g, above_4g) = match config.firmware {
            Some(_) => {
                let low = layout::firmware_low_ram(config.memory);
                (low, config.memory - low)
            }
            None => {
                let ram = layout::ram_ranges(config.memory);
                (
                    ram.first().map_or(0, |r| r.1),
                    ram.get(1).map_or(0, |r| r.1),
                )
            }
        };
        rtc.set_machine_info(below_4g, above_4g, config.cpus);
        let persistent = Persistent {
            serial,
            serial_irq,
            rtc: Arc::new(Mutex::new(rtc)),
        };
        Ok(Self {
            config,
            handle: VmHandle::new(events.clone()),
            events,
            rx,
            persistent,
            restore: None,
            _terminal: terminal,
        })
    }

    /// Makes the first boot resume `restore` instead of starting afresh.
    pub fn resume_from(&mut self, restore: save::Restore) {
        self.restore = Some(restore);
    }

    /// The remote control for this VM.
    pub fn handle(&self) -> VmHandle {
        self.handle.clone()
    }

    /// Boots the VM, calling `setup` on every boot after the built-in devices are placed
    /// and before any vCPU runs (the device registration step), until the guest powers
    /// off, resets with `no_reboot`, or [`VmHandle::quit`] is called.
    pub fn run(
        &mut self,
        mut setup: impl FnMut(&mut Machine) -> Result<(), MachineError>,
    ) -> Result<Exit, MachineError> {
        let control = self.handle.inner.control.clone();
        let result = loop {
            let restore = self.restore.take();
            let mut machine = match Machine::new(
                &self.config,
                &self.persistent,
                &self.events,
                &self.handle,
                restore.is_some(),
            ) {
                Ok(m) => m,
                Err(e) => break Err(e),
            };
            if let Err(e) = setup(&mut machine) {
                break Err(e);
            }
            let resume = match restore.map(|r| Resume::prepare(r, &machine)).transpose() {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            *lock(&self.handle.inner.save_blocker) = match &self.config.save_file {
                None => Some(save::SaveError::NoFile.to_string()),
                Some(_) => machine.states.check().err().map(|e| e.to_string()),
            };
            self.handle.set_state(RunState::Running);
            let event = match machine.run(&self.events, &self.rx, &control, resume) {
                Ok(ev) => ev,
                Err(e) => break Err(e),
            };
            // Events from the boot that just ended (a second vCPU's triple fault, a
            // repeated reset request) do not carry over; a quit asked for meanwhile does.
            let mut quit = false;
            while let Ok(stale) = self.rx.try_recv() {
                quit |= matches!(stale, MachineEvent::Quit);
                if let MachineEvent::Save(request) = stale {
                    request
                        .reporter
                        .failed("the VM reset or stopped before it could be saved");
                }
            }
            lock(&self.handle.inner.pm).block = None;
            match event {
                MachineEvent::Reset if quit => break Ok(Exit::Quit),
                MachineEvent::PowerOff => break Ok(Exit::PowerOff),
                MachineEvent::Quit => break Ok(Exit::Quit),
                MachineEvent::Saved => break Ok(Exit::Saved),
                // Machine::run answers a save itself.
                MachineEvent::Save(_) => break Ok(Exit::Quit),
                MachineEvent::Error(e) => break Err(MachineError::Guest(e)),
                MachineEvent::Reset if self.config.no_reboot => break Ok(Exit::Reset),
                MachineEvent::Reset => log::info!("guest reset: rebooting"),
            }
        };
        self.handle.set_state(RunState::Shutdown);
        hospes_devices::logger::flush_suppressed();
        let _ = std::io::stdout().flush();
        result
    }
}
