//! `hospes-vmm`: runs one virtual machine in this process.
//!
//! Flags are spelled for QEMU users; `--config vm.ron` reads the same settings from a VM's
//! file. Exit status: 0 after a guest power-off (or a reset with `--no-reboot`, or QMP
//! `quit`), 1 with a one-line reason on stderr after any error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hospes_core::config::{DiskBus, MachineUuid, Network, NetworkCard, SoundCard};
use hospes_core::firmware::Image;
use hospes_devices::virtio::VirtioDevice;
use hospes_devices::virtio::snd::Snd;
use hospes_vmm::arch::x86_64::smbios::vm_uuid;
use hospes_vmm::backends::passt::{UserNetwork, parse_net_option};
use hospes_vmm::backends::pipewire::PipeWire;
use hospes_vmm::machine::display::{DisplayKind, DisplayOptions, DisplayStack};
use hospes_vmm::machine::e1000e;
use hospes_vmm::machine::firmware::{FirmwareConfig, FirmwareKind};
use hospes_vmm::machine::hda;
use hospes_vmm::machine::pci::{DiskSpec, attach_pci_to_machine};
use hospes_vmm::machine::storage;
use hospes_vmm::machine::tpm::{Tpm, TpmState};
use hospes_vmm::machine::uefi;
use hospes_vmm::machine::usb::Usb;
use hospes_vmm::machine::{MachineConfig, MachineError, SerialConfig, Vmm, qmp};
use hospes_vmm::sandbox::Sandbox;
use hospes_vmm::vnc::VncListen;

/// Runs one virtual machine on KVM.
#[derive(Parser, Debug)]
#[command(
    name = "hospes-vmm",
    version,
    about = "Runs one virtual machine on KVM: the Hospes helper, one process per VM"
)]
struct Args {
    /// Kernel to boot: a bzImage or an ELF kernel with a PVH note.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["config", "bios"])]
    kernel: Option<PathBuf>,
    /// Boot a PC BIOS image (SeaBIOS's bios-256k.bin) on the Q35 platform instead of a
    /// kernel; it boots the disks.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    bios: Option<PathBuf>,
    /// Give the --bios machine System Management Mode (SMRAM, SMIs from port 0xB2), as the
    /// Secure Boot build of OVMF needs; the host's KVM must offer SMM.
    #[arg(long)]
    smm: bool,
    /// Initial ramdisk.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STRING")]
    cmdline: Option<String>,
    /// Guest RAM, e.g. 256M, 2G (a bare number is MiB, as in QEMU).
    #[arg(short = 'm', long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", alias = "smp")]
    cpus: Option<u32>,
    /// COM1: stdio, unix:PATH, file:PATH or none.
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_serial)]
    serial: SerialConfig,
    /// Exit instead of rebooting when the guest resets.
    #[arg(long)]
    no_reboot: bool,
    /// Read the VM's settings from a vm.ron file (flags given too take precedence).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A disk image as virtio-blk on PCI, FILE[,readonly][,format=raw|qcow2] (repeatable).
    #[arg(long, value_name = "FILE[,readonly][,format=qcow2]")]
    disk: Vec<DiskSpec>,
    /// A disk image on the SATA (AHCI) controller, FILE[,readonly][,format=raw|qcow2]
    /// (repeatable; firmware boot).
    #[arg(long, value_name = "FILE[,readonly][,format=qcow2]")]
    sata: Vec<DiskSpec>,
    /// The machine's UUID as firmware reports it (SMBIOS), e.g.
    /// 0d475e6f-6592-51ec-a52f-7d556bdbdc48 (default: derived from the VM's id or name).
    #[arg(long, value_name = "UUID")]
    uuid: Option<MachineUuid>,
    /// An ISO image in the CD-ROM drive on the SATA controller (firmware boot).
    #[arg(long, value_name = "FILE")]
    cdrom: Option<PathBuf>,
    /// Another CD-ROM drive with this ISO image, after the first (repeatable; firmware
    /// boot), e.g. the virtio-win drivers disc.
    #[arg(long, value_name = "FILE")]
    extra_cdrom: Vec<PathBuf>,
    /// QMP control socket, unix:PATH (QEMU's ",server,nowait" suffixes are accepted).
    #[arg(long, value_name = "unix:PATH", value_parser = parse_qmp)]
    qmp: Option<PathBuf>,
    /// The VM's name, shown as the process name in `ps` and `top` (default: from vm.ron).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Leave out the virtio-rng entropy device.
    #[arg(long)]
    no_rng: bool,
    /// Offer Hyper-V enlightenments, as for Windows guests (on for `os: Windows` in
    /// vm.ron), where KVM supports them.
    #[arg(long)]
    hyperv: bool,
    /// The CMOS clock keeps the host's local time (as Windows expects) instead of UTC.
    #[arg(long)]
    rtc_local: bool,
    /// Network card: `user[,hostfwd=tcp:HOSTPORT-:GUESTPORT,...][,mac=MAC][,model=virtio|e1000e]`
    /// (NAT through passt, forwards listen on 127.0.0.1) or `none` (the default without
    /// --config).
    #[arg(long, value_name = "user[,hostfwd=...]|none", value_parser = parse_net_option)]
    net: Option<Network>,
    /// Sound card played and recorded through PipeWire: on or off (the default without
    /// --config), or the card: virtio (virtio-snd, the default) or hda (Intel HD Audio,
    /// for Windows). Without a reachable PipeWire the VM runs without one.
    #[arg(long, value_name = "on|off|virtio|hda", value_parser = hda::parse_sound_flag)]
    sound: Option<hda::SoundFlag>,
    /// Display adapter: std-vga, virtio-gpu or none (std-vga when --vnc is given).
    #[arg(long, value_name = "std-vga|virtio-gpu|none")]
    display: Option<DisplayKind>,
    /// Serve the screen over RFB: unix:PATH (security None, mode 0600) or HOST:PORT
    /// (VNC authentication; `:PORT` listens on 127.0.0.1).
    #[arg(long, value_name = "unix:PATH|HOST:PORT", value_parser = parse_vnc)]
    vnc: Option<VncListen>,
    /// A USB controller (xHCI) with a USB tablet and keyboard: on or off (the default
    /// without --config; with it, on, plus the host devices vm.ron's `usb` names).
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_missing_value = "on",
          value_parser = parse_on_off)]
    usb: Option<bool>,
    /// The VNC password, first line of this file (required with --vnc HOST:PORT).
    #[arg(long, value_name = "FILE")]
    vnc_password_file: Option<PathBuf>,
    /// A TPM 2.0 (CRB) backed by swtpm; its state lives in DIR (`--tpm=DIR`) or, with a
    /// bare `--tpm`, in a temporary folder removed when the VM ends.
    #[arg(long, value_name = "DIR", num_args = 0..=1, require_equals = true,
          default_missing_value = "")]
    tpm: Option<String>,
    /// Confine the helper once it is set up (Landlock, seccomp, no new privileges): on
    /// (the default) or off, for debugging; HOSPES_SANDBOX=off does the same.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    sandbox: Option<bool>,
    /// The VM's saved-state file: QMP `hospes-save` writes the VM there and ends the
    /// helper; when FILE exists at start, the VM resumes from it and the file is removed
    /// once it runs (default with --config: saved-state.hospes in the VM's folder).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
    }
}

fn parse_vnc(s: &str) -> Result<VncListen, String> {
    VncListen::parse(s).map_err(|e| e.to_string())
}

/// Parses QEMU-style sizes: `512`, `512M`, `2G`, `1024K`, `1T`, optional `B`/`iB`.
fn parse_size(s: &str) -> Result<u64, String> {
    // vm.ron's size syntax, except that a bare number means MiB, as in QEMU's -m.
    let t = s.trim();
    let text = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        format!("{t}M")
    } else {
        t.to_owned()
    };
    text.parse::<hospes_core::config::Size>()
        .map(|size| size.bytes())
        .map_err(|_| format!("'{s}' is not a size like 256M or 2G"))
}

fn parse_qmp(s: &str) -> Result<PathBuf, String> {
    hospes_core::control::parse_unix_endpoint(s).map_err(|e| e.to_string())
}

fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    match s.split_once(':') {
        _ if s == "stdio" => Ok(SerialConfig::Stdio),
        _ if s == "none" => Ok(SerialConfig::None),
        Some(("unix", p)) if !p.is_empty() => Ok(SerialConfig::Unix(p.into())),
        Some(("file", p)) if !p.is_empty() => Ok(SerialConfig::File(p.into())),
        _ => Err(format!("'{s}' is not stdio, unix:PATH, file:PATH or none")),
    }
}

/// A VM's id: the name of its folder in the library (stable across renames).
fn vm_id(config: &std::path::Path) -> String {
    config
        .canonicalize()
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

/// What `main` needs besides the machine configuration.
struct Extras {
    /// virtio-blk disks.
    disks: Vec<DiskSpec>,
    /// SATA disks on the AHCI controller (firmware boot).
    sata: Vec<DiskSpec>,
    /// The CD-ROM drive's image (firmware boot).
    cdrom: Option<PathBuf>,
    /// More CD-ROM drives, each with its image (the drivers disc; firmware boot).
    extra_cdroms: Vec<PathBuf>,
    qmp: Option<PathBuf>,
    name: Option<String>,
    rng: bool,
    network: Network,
    sound: bool,
    sound_card: SoundCard,
    display: DisplayOptions,
    /// The xHCI with its tablet and keyboard.
    usb: bool,
    /// Host USB devices handed to the guest (vm.ron's `usb`).
    usb_devices: Vec<hospes_core::config::UsbDevice>,
    /// The TPM's state, if the VM has one.
    tpm: Option<TpmState>,
    /// The VM's folder (with --config): disks, OVMF_VARS.fd, tpm/.
    vm_dir: Option<PathBuf>,
    /// Whether the helper confines itself after set-up.
    sandbox: bool,
}

fn machine_config(args: Args) -> Result<(MachineConfig, Extras), String> {
    let mut cfg = MachineConfig {
        kernel: PathBuf::new(),
        initrd: None,
        cmdline: String::new(),
        memory: 256 << 20,
        cpus: 1,
        serial: args.serial,
        no_reboot: args.no_reboot,
        firmware: None,
        hyperv: args.hyperv,
        rtc_local: args.rtc_local,
        tpm: false,
        save_file: None,
    };
    let mut extras = Extras {
        disks: Vec::new(),
        sata: Vec::new(),
        cdrom: None,
        extra_cdroms: Vec::new(),
        qmp: args.qmp,
        name: args.name,
        rng: !args.no_rng,
        network: Network::None,
        sound: false,
        sound_card: SoundCard::Virtio,
        display: DisplayOptions {
            kind: if args.vnc.is_some() {
                DisplayKind::StdVga
            } else {
                DisplayKind::None
            },
            vnc: args.vnc,
            vnc_password_file: args.vnc_password_file,
            name: String::new(),
            resolution: (1280, 800),
        },
        usb: false,
        usb_devices: Vec::new(),
        tpm: None,
        vm_dir: None,
        sandbox: hospes_vmm::sandbox::enabled(args.sandbox),
    };
    if let Some(path) = &args.config {
        let vm = hospes_core::config::load(path).map_err(|e| e.to_string())?;
        // Paths in vm.ron are relative to the VM's folder.
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        extras.vm_dir = Some(dir.to_path_buf());
        cfg.save_file = Some(hospes_core::saved_state::path_in(dir));
        let machine_uuid = vm.uuid.map_or_else(|| vm_uuid(&vm_id(path)), |u| u.0);
        match vm.boot {
            hospes_core::config::Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                cfg.kernel = dir.join(kernel);
                cfg.initrd = initrd.map(|i| dir.join(i));
                cfg.cmdline = cmdline;
            }
            hospes_core::config::Boot::Bios { firmware } => {
                let chosen = firmware.map(|f| dir.join(f));
                let image = hospes_core::firmware::locate(Image::SeaBios, chosen.as_deref())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                cfg.firmware = Some(FirmwareConfig {
                    kind: FirmwareKind::Bios,
                    image,
                    vars: None,
                    serial_console: !vm.display.enabled,
                    uuid: machine_uuid,
                    product: vm.name.clone(),
                    vga_rom: None,
                    smm: false,
                    secure_boot: false,
                });
            }
            hospes_core::config::Boot::Uefi {
                firmware,
                tpm,
                secure_boot,
            } => {
                if tpm {
                    extras.tpm = Some(TpmState::of_vm(dir));
                }
                let chosen = firmware.map(|f| dir.join(f));
                let (image, smm) = uefi::ovmf_code(chosen.as_deref(), secure_boot)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                cfg.firmware = Some(FirmwareConfig {
                    kind: FirmwareKind::Uefi,
                    image,
                    // The VM's own copy of the template, made on its first start.
                    vars: Some(dir.join(uefi::VARS_FILE)),
                    serial_console: !vm.display.enabled,
                    uuid: machine_uuid,
                    product: vm.name.clone(),
                    vga_rom: None,
                    smm,
                    secure_boot,
                });
            }
        }
        cfg.memory = vm.memory.bytes();
        cfg.cpus = vm.cpus;
        cfg.hyperv |= vm.os == hospes_core::config::OsKind::Windows;
        cfg.rtc_local |= vm.clock == hospes_core::config::Clock::Local;
        cfg.no_reboot |= vm.on_reboot == hospes_core::config::RebootAction::PowerOff;
        extras.name.get_or_insert(vm.name);
        extras.network = vm.network;
        extras.sound = vm.sound;
        extras.sound_card = vm.sound_card;
        extras.display.resolution = (vm.display.resolution.width, vm.display.resolution.height);
        extras.display.kind = match (vm.display.enabled, vm.display.device) {
            (false, _) => DisplayKind::None,
            (true, hospes_core::config::DisplayDevice::StdVga) => DisplayKind::StdVga,
            (true, hospes_core::config::DisplayDevice::VirtioGpu) => DisplayKind::VirtioGpu,
        };
        for d in &vm.disks {
            let spec = DiskSpec {
                path: dir.join(&d.path),
                read_only: d.read_only,
                format: d.format,
            };
            match d.bus {
                DiskBus::Virtio => extras.disks.push(spec),
                DiskBus::Sata => extras.sata.push(spec),
            }
        }
        extras.cdrom = vm.cdrom.map(|c| dir.join(c));
        extras.extra_cdroms = vm.extra_cdroms.iter().map(|c| dir.join(c)).collect();
        extras.usb = true;
        extras.usb_devices = vm.usb;
    }
    if let Some(k) = args.kernel {
        cfg.kernel = k;
        cfg.firmware = None;
    }
    if args.smm && args.bios.is_none() {
        return Err(
            "--smm gives SMM to the --bios machine: name the ROM with --bios (for \
                    OVMF's Secure Boot build, set secure_boot in vm.ron)"
                .into(),
        );
    }
    if let Some(image) = args.bios {
        cfg.firmware = Some(FirmwareConfig {
            kind: FirmwareKind::Bios,
            image,
            vars: None,
            serial_console: false,
            uuid: vm_uuid(&extras.name.clone().unwrap_or_default()),
            product: extras.name.clone().unwrap_or_else(|| "hospes".into()),
            vga_rom: None,
            smm: args.smm,
            secure_boot: false,
        });
    }
    if args.initrd.is_some() {
        cfg.initrd = args.initrd;
    }
    if let Some(c) = args.cmdline {
        cfg.cmdline = c;
    }
    if let Some(m) = args.memory {
        cfg.memory = m;
    }
    if let Some(c) = args.cpus {
        cfg.cpus = c;
    }
    if !args.disk.is_empty() {
        extras.disks = args.disk;
    }
    if !args.sata.is_empty() {
        extras.sata = args.sata;
    }
    if args.cdrom.is_some() {
        extras.cdrom = args.cdrom;
    }
    if !args.extra_cdrom.is_empty() {
        extras.extra_cdroms = args.extra_cdrom;
    }
    if cfg.firmware.is_none()
        && (!extras.sata.is_empty() || extras.cdrom.is_some() || !extras.extra_cdroms.is_empty())
    {
        // Direct kernel boot has no SATA controller (its DSDT routes no PCI interrupts).
        log::warn!(
            "direct kernel boot: SATA disks are attached as virtio-blk, CD-ROMs are left out"
        );
        extras.disks.append(&mut extras.sata);
        extras.cdrom = None;
        extras.extra_cdroms.clear();
    }
    if let Some(n) = args.net {
        extras.network = n;
    }
    if let Some(flag) = args.sound {
        hda::apply_sound_flag(flag, &mut extras.sound, &mut extras.sound_card);
    }
    if let Some(d) = args.display {
        extras.display.kind = d;
    }
    if let Some(on) = args.usb {
        extras.usb = on;
    }
    if let Some(t) = &args.tpm {
        extras.tpm = Some(TpmState::from_flag(t));
    }
    cfg.tpm = extras.tpm.is_some();
    if let Some(state) = args.state {
        cfg.save_file = Some(state);
    }
    extras.display.name = extras.name.clone().unwrap_or_else(|| "hospes".into());
    if let Some(fw) = &mut cfg.firmware {
        if let Some(uuid) = args.uuid {
            fw.uuid = uuid.0;
        }
        // Without a screen the firmware's text console goes to COM1.
        fw.serial_console = extras.display.kind == DisplayKind::None;
        // OVMF drives the adapter with its own driver; a BIOS needs the VGA BIOS.
        if extras.display.kind == DisplayKind::StdVga && fw.kind == FirmwareKind::Bios {
            fw.vga_rom = Some(
                hospes_core::firmware::locate(Image::VgaBiosStdVga, None)
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    Ok((cfg, extras))
}

/// The signals that end the VM cleanly (terminal restored, output flushed).
const QUIT_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn quit_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in QUIT_SIGNALS {
        // SAFETY: `set` is initialised and `sig` a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// Blocks the quit signals in this thread, and so in every thread started after it; call
/// before any thread starts.
fn block_quit_signals() {
    let set = quit_sigset();
    // SAFETY: `set` is a valid signal set; the old mask is not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Starts a thread that waits for the quit signals and quits the VM through `handle` (or
/// through QMP's bridge, so its SHUTDOWN event names the signal).
fn quit_on_signals(handle: hospes_vmm::machine::VmHandle, bridge: Option<Arc<qmp::QmpBridge>>) {
    let set = quit_sigset();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` and `sig` are valid for the call.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                log::info!("terminating on signal {sig}");
                match &bridge {
                    Some(b) => b.quit_on_signal(),
                    None => handle.quit(),
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("signals end the VM abruptly: {e}");
    }
}

/// What the confined helper may open besides [`Sandbox::for_machine`]'s files: the VM's
/// folder, the disks, the CD images and their folders (QMP may insert another disc from
/// there by name), the sockets' folders, the VNC password, host USB, a temporary TPM
/// folder. Docs: docs/sandbox.md.
fn sandbox_for(cfg: &MachineConfig, extras: &Extras, tpm: Option<&Tpm>) -> Sandbox {
    let mut s = Sandbox::for_machine(cfg);
    if let Some(dir) = &extras.vm_dir {
        s.write(dir);
    }
    for d in extras.disks.iter().chain(&extras.sata) {
        match d.read_only {
            true => s.read(&d.path),
            false => s.write(&d.path),
        };
        // A qcow2 disk's backing files are opened (read-only) at every boot too.
        if d.format == hospes_core::config::DiskFormat::Qcow2 {
            for backing in hospes_vmm::backends::qcow2::backing_chain(&d.path) {
                s.read(backing);
            }
        }
    }
    for cd in extras.cdrom.iter().chain(&extras.extra_cdroms) {
        s.read_with_folder(cd);
    }
    if let Some(q) = &extras.qmp {
        s.create_beside(q);
    }
    // A save writes `<file>.partial` beside the file and renames it into place.
    if let Some(state) = &cfg.save_file {
        s.create_beside(state);
    }
    if let Some(VncListen::Unix(v)) = &extras.display.vnc {
        s.create_beside(v);
    }
    if let Some(p) = &extras.display.vnc_password_file {
        s.read(p);
    }
    if extras.usb {
        s.usb_host();
    }
    if let Some(dir) = tpm.and_then(Tpm::temporary_dir) {
        s.write(dir).remove_dir(dir);
    }
    s
}

/// Connects to PipeWire for the sound card; without it the VM runs with no sound card.
fn start_sound(vm_name: &str) -> Option<Arc<PipeWire>> {
    match PipeWire::start(vm_name) {
        Ok(pw) => Some(Arc::new(pw)),
        Err(e) => {
            log::warn!(
                "sound unavailable, the VM has no sound card: {}",
                hospes_core::error_chain(&e)
            );
            None
        }
    }
}

fn main() -> ExitCode {
    hospes_devices::logger::init();
    let args = Args::parse();
    let (cfg, extras) = match machine_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hospes-vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(name) = &extras.name
        && let Err(e) = hospes_core::launch::set_process_title(name)
    {
        log::warn!("cannot set the process name: {e}");
    }
    block_quit_signals();
    let network = match UserNetwork::start(&extras.network) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("hospes-vmm: network: {}", hospes_core::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let tpm = match extras.tpm.as_ref().map(Tpm::start).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hospes-vmm: tpm: {}", hospes_core::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let sound = extras
        .sound
        .then(|| start_sound(extras.name.as_deref().unwrap_or("vm")))
        .flatten();
    // Peers and PipeWire run; everything started from here on (the VM, its sockets and
    // threads) is confined.
    if extras.sandbox
        && let Err(e) =
            hospes_vmm::sandbox::confine_or_log(&sandbox_for(&cfg, &extras, tpm.as_ref()))
    {
        eprintln!("hospes-vmm: sandbox: {}", hospes_core::error_chain(&e));
        return ExitCode::FAILURE;
    } else if !extras.sandbox {
        log::info!("sandbox: off, the helper runs unconfined");
    }
    // The device registration step, run on every boot before the vCPUs start.
    // The PCI host bridge is always there (the DSDT describes it); disks hang off it.
    if let Some(file) = &cfg.save_file {
        // What a save killed half-way left behind; the file it was to replace is intact.
        let partial = hospes_core::saved_state::partial_path(file);
        if std::fs::remove_file(&partial).is_ok() {
            log::info!(
                "removed {}, left by a save that did not finish",
                partial.display()
            );
        }
    }
    let saved = cfg.save_file.clone().filter(|p| p.exists());
    let result = Vmm::new(cfg).and_then(|mut vmm| {
        // A VM saved with hospes-save resumes where it was (the file goes once resumed).
        if let Some(path) = &saved {
            log::info!("resuming the saved state {}", path.display());
            vmm.resume_from(hospes_vmm::machine::save::Restore::open(path, true)?);
        }
        let display = match extras.display.kind {
            // USB input needs the input router even without a screen.
            DisplayKind::None if extras.display.vnc.is_none() && !extras.usb => None,
            _ => Some(Arc::new(DisplayStack::start(&extras.display)?)),
        };
        let qmp = match &extras.qmp {
            Some(path) => Some(qmp::start(path, vmm.handle())?),
            None => None,
        };
        let bridge = qmp.as_ref().map(|q| q.bridge.clone());
        if let (Some(b), Some(d)) = (&bridge, &display) {
            b.set_display(d.clone());
        }
        // The CD drive's tray outlives the boots: a disc the guest ejects stays out.
        let cdrom = extras
            .cdrom
            .clone()
            .map(|image| Arc::new(storage::CdTray::new(Some(image))));
        if let (Some(b), Some(t)) = (&bridge, &cdrom) {
            b.set_cdrom(t.clone());
        }
        let usb = match extras.usb {
            true => Some(
                Usb::new(display.as_ref().map(|d| d.input()), &extras.usb_devices)
                    .map_err(|e| MachineError::Setup(hospes_core::error_chain(&e)))?,
            ),
            false => None,
        };
        if let (Some(b), Some(u)) = (&bridge, &usb) {
            b.set_usb(u.clone());
        }
        quit_on_signals(vmm.handle(), bridge.clone());
        let mut boots = 0;
        let setup = |machine: &mut hospes_vmm::machine::Machine| {
            boots += 1;
            if let Some(b) = &bridge {
                b.on_boot(boots);
            }
            let mut extra: Vec<Box<dyn VirtioDevice>> = network
                .iter()
                .filter(|n| n.card() == NetworkCard::Virtio)
                .map(|n| n.device())
                .collect();
            if let Some(pw) = &sound
                && extras.sound_card == SoundCard::Virtio
            {
                extra.push(Box::new(Snd::new(pw.clone())));
            }
            if let Some(d) = &display {
                extra.extend(d.virtio_devices());
            }
            let mut pci = attach_pci_to_machine(machine, &extras.disks, extras.rng, extra)?;
            if machine.chipset.is_some() {
                storage::attach_for_firmware(
                    machine,
                    &mut pci,
                    &extras.sata,
                    cdrom.as_ref(),
                    &extras.extra_cdroms,
                    extras.disks.len(),
                )?;
            }
            if let Some(d) = &display {
                d.attach(machine, &mut pci)?;
            }
            if let Some(t) = &tpm {
                t.attach(machine)?;
            }
            if let Some(n) = network.as_ref().filter(|n| n.card() == NetworkCard::E1000e) {
                e1000e::attach(machine, &mut pci, n)?;
            }
            if let Some(pw) = &sound
                && extras.sound_card == SoundCard::Hda
            {
                hda::attach(machine, &mut pci, pw.clone())?;
            }
            match &usb {
                Some(u) => u.attach(machine, &mut pci),
                None => Ok(()),
            }
        };
        let result = vmm.run(setup);
        if let Some(q) = qmp {
            q.finish(&result);
        }
        result
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hospes-vmm: {}", hospes_core::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_style_sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512"), Ok(512 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn parses_serial_backends() {
        assert_eq!(
            parse_serial("unix:/tmp/s"),
            Ok(SerialConfig::Unix("/tmp/s".into()))
        );
        assert_eq!(
            parse_serial("file:/tmp/f"),
            Ok(SerialConfig::File("/tmp/f".into()))
        );
        assert_eq!(parse_serial("none"), Ok(SerialConfig::None));
        assert!(parse_serial("tcp:1").is_err());
    }

    fn uefi_vm(boot: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.ron");
        std::fs::write(
            &path,
            format!(
                "(version: 1, name: \"efi\", os: Linux, cpus: 2, memory: \"512M\", \
                 boot: {boot}, display: (enabled: false))\n"
            ),
        )
        .unwrap();
        (dir, path)
    }

    fn from_config(path: &std::path::Path) -> Result<(MachineConfig, Extras), String> {
        let args = Args::parse_from(["hospes-vmm", "--config", path.to_str().unwrap()]);
        machine_config(args)
    }

    #[test]
    fn uefi_boot_takes_the_installed_ovmf_and_the_vms_own_variable_store() {
        let (dir, path) = uefi_vm("Uefi(firmware: None, tpm: false)");
        let result = from_config(&path);
        // Whatever this machine has installed: the same file the lookup finds, or the same
        // "install ovmf" error.
        match hospes_core::firmware::locate(Image::OvmfCode, None) {
            Ok(code) => {
                let fw = result.unwrap().0.firmware.expect("firmware boot");
                assert_eq!(fw.kind, FirmwareKind::Uefi);
                assert_eq!(fw.image, code);
                assert_eq!(fw.vars, Some(dir.path().join("OVMF_VARS.fd")));
                assert!(fw.serial_console, "no display: the console is COM1");
                assert_eq!(fw.product, "efi");
            }
            Err(e) => {
                let err = result.err().unwrap();
                assert!(err.contains("apt install ovmf"), "{err}");
                assert!(err.contains(&e.to_string()), "{err}");
            }
        }
        assert!(
            !dir.path().join("OVMF_VARS.fd").exists(),
            "the store is made when the VM starts, not when its settings are read"
        );
    }

    #[test]
    fn secure_boot_takes_the_secure_boot_build_with_smm() {
        let (dir, path) = uefi_vm("Uefi(firmware: None, tpm: false, secure_boot: true)");
        let result = from_config(&path);
        match hospes_core::firmware::locate(Image::OvmfCodeSecureBoot, None) {
            Ok(code) => {
                let fw = result.unwrap().0.firmware.expect("firmware boot");
                assert_eq!(fw.image, code);
                assert!(fw.smm && fw.secure_boot);
                assert_eq!(fw.vars, Some(dir.path().join("OVMF_VARS.fd")));
            }
            Err(_) => {
                let err = result.err().unwrap();
                assert!(err.contains("apt install ovmf"), "{err}");
            }
        }
        // Without Secure Boot: the plain build, no SMM.
        let (_dir, path) = uefi_vm("Uefi(firmware: None, tpm: false, secure_boot: false)");
        if let Ok((cfg, _)) = from_config(&path) {
            let fw = cfg.firmware.unwrap();
            assert!(!fw.smm && !fw.secure_boot);
        }
        // --smm belongs to --bios.
        let args = Args::parse_from(["hospes-vmm", "--kernel", "k", "--smm"]);
        let err = machine_config(args).err().unwrap();
        assert!(err.contains("--bios"), "{err}");
        let args = Args::parse_from(["hospes-vmm", "--bios", "rom.bin", "--smm"]);
        let (cfg, _) = machine_config(args).unwrap();
        assert!(cfg.firmware.unwrap().smm);
    }

    #[test]
    fn uefi_firmware_from_vm_ron_is_relative_to_the_vm_folder() {
        let (dir, path) = uefi_vm("Uefi(firmware: Some(\"my/CODE.fd\"), tpm: true)");
        std::fs::create_dir(dir.path().join("my")).unwrap();
        std::fs::write(dir.path().join("my/CODE.fd"), b"x").unwrap();
        let (cfg, _) = from_config(&path).unwrap();
        let fw = cfg.firmware.unwrap();
        assert_eq!(fw.kind, FirmwareKind::Uefi);
        assert_eq!(fw.image, dir.path().join("my/CODE.fd"));
        assert_eq!(fw.vars, Some(dir.path().join("OVMF_VARS.fd")));
        assert_eq!(cfg.memory, 512 << 20);
        assert_eq!(cfg.cpus, 2);
        assert!(cfg.tpm, "tpm: true gives the VM a TPM");
    }

    #[test]
    fn a_uefi_vm_with_a_tpm_keeps_its_state_in_its_folder() {
        let (dir, path) = uefi_vm("Uefi(firmware: Some(\"CODE.fd\"), tpm: true)");
        std::fs::write(dir.path().join("CODE.fd"), b"x").unwrap();
        let (cfg, extras) = from_config(&path).unwrap();
        assert!(cfg.tpm);
        assert_eq!(extras.tpm, Some(TpmState::Dir(dir.path().join("tpm"))));
        let (dir, path) = uefi_vm("Uefi(firmware: Some(\"CODE.fd\"), tpm: false)");
        std::fs::write(dir.path().join("CODE.fd"), b"x").unwrap();
        let (cfg, extras) = from_config(&path).unwrap();
        assert!(!cfg.tpm);
        assert_eq!(extras.tpm, None);
    }

    #[test]
    fn the_tpm_flag_takes_an_optional_state_folder() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["hospes-vmm", "--kernel", "k"];
            argv.extend_from_slice(flags);
            machine_config(Args::parse_from(argv)).unwrap()
        };
        let (cfg, extras) = parse(&["--tpm"]);
        assert!(cfg.tpm);
        assert_eq!(extras.tpm, Some(TpmState::Temporary));
        let (cfg, extras) = parse(&["--tpm=/s/tpm"]);
        assert!(cfg.tpm);
        assert_eq!(extras.tpm, Some(TpmState::Dir("/s/tpm".into())));
        let (cfg, extras) = parse(&[]);
        assert!(!cfg.tpm);
        assert_eq!(extras.tpm, None);
    }
}
