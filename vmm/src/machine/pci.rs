//! One call that puts PCI and the virtio devices into a machine: [`attach_pci`].
//!
//! It builds bus 0 (host bridge at 00:00.0, then one virtio-blk per disk, then virtio-rng),
//! gives every device MSI-X vectors (KVM irqfds and GSI routes when a VM fd is given),
//! assigns BARs from the machine's MMIO window as firmware would, and places on the
//! machine's buses: ports 0xCF8..0xCFF, the ECAM window, and the MMIO window(s) behind
//! which the BARs live on a bus of their own ([`PciMmioWindow`]), so a guest moving a BAR
//! never needs the machine's bus locks. [`attach_to_machine`] is the one-line form for
//! [`Machine`]'s device registration step.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use kvm_ioctls::VmFd;

use crate::arch::x86_64::layout;
use crate::machine::firmware::Platform;
use crate::machine::{Machine, MachineError};
use crate::vstate::pci_kvm::{KvmGsiRouter, KvmIoEvents, KvmMsixVectors};
use hospes_core::config::DiskFormat;
use hospes_core::error_chain;
use hospes_devices::bus::{Bus, BusDevice, BusError, SharedDevice, lock};
use hospes_devices::pci::config::{COMMAND_BUS_MASTER, COMMAND_MEMORY, REG_COMMAND_STATUS};
use hospes_devices::pci::root::{PciMmioWindow, PciSaved};
use hospes_devices::pci::{
    BarAllocator, BarRelocator, HostBridge, PciConfigIo, PciConfigMmio, PciDevice, PciError,
    PciRoot,
};
use hospes_devices::state::StateRegistry;
use hospes_devices::virtio::block::{Block, BlockError};

use crate::backends::qcow2::{DiskOpenError, open_disk};
use hospes_devices::disk_image::DiskImage;
use hospes_devices::virtio::pci::{TransportParts, VirtioPciDevice};
use hospes_devices::virtio::rng::Rng;
use hospes_devices::virtio::{
    GuestMemory, IoEventRegistrar, MsiRoutes, MsixInterrupt, VirtioDevice, VirtioError,
};

/// The ICH9 LPC bridge's slot (00:1f.0), where firmware looks for it.
pub const LPC_SLOT: usize = 0x1f;

/// Ports of configuration mechanism #1.
pub const CONFIG_IO_PORT: u64 = 0xcf8;
pub const CONFIG_IO_LEN: u64 = 8;

/// A disk given on the command line: `PATH[,readonly][,format=raw|qcow2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    /// The image format (raw unless said otherwise).
    pub format: DiskFormat,
}

impl FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("empty disk path")?;
        let mut read_only = false;
        let mut format = DiskFormat::Raw;
        for opt in parts {
            match opt {
                "readonly" | "ro" => read_only = true,
                "format=raw" => format = DiskFormat::Raw,
                "format=qcow2" => format = DiskFormat::Qcow2,
                other => return Err(format!("unknown disk option `{other}`")),
            }
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
            format,
        })
    }
}

/// What [`attach_pci`] needs from the machine.
pub struct PciParams<'a> {
    pub mem: GuestMemory,
    /// The VM, for irqfds, MSI routes and ioeventfds. `None` builds the same topology with
    /// interrupts that go nowhere (unit tests, no /dev/kvm).
    pub vm: Option<Arc<VmFd>>,
    /// The 32-bit MMIO window BARs are assigned from, `(start, end)` exclusive
    /// (`layout::PCI_MMIO_START`, `PCI_MMIO_END`).
    pub mmio_window: (u64, u64),
    /// A 64-bit window, `(start, end)`, where a guest may move 64-bit BARs; `None` for none.
    pub high_mmio_window: Option<(u64, u64)>,
    /// ECAM base and size (`layout::PCI_ECAM_START`, `PCI_ECAM_SIZE`); `None` for none.
    pub ecam: Option<(u64, u64)>,
    /// The Q35 chipset of a firmware boot: its MCH at 00:00.0 and LPC bridge at 00:1f.0
    /// replace the i440FX host bridge, its movable ECAM window replaces `ecam`, and its
    /// window replaces `mmio_window`. None for direct kernel boot.
    pub platform: Option<&'a Platform>,
    pub disks: &'a [DiskSpec],
    pub rng: bool,
    /// More virtio devices (network, sound), placed after virtio-rng in this order.
    pub extra: Vec<Box<dyn VirtioDevice>>,
}

/// What the machine may keep: the root (for ACPI or hot paths later) and the devices.
pub struct PciSetup {
    pub root: Arc<Mutex<PciRoot>>,
    pub devices: Vec<(usize, Arc<Mutex<VirtioPciDevice>>)>,
    /// The GSI routing table; other MSI users (future devices) must share it.
    pub router: Option<Arc<KvmGsiRouter>>,
    /// Where BARs live and where the next one goes, for [`PciSetup::add_device`].
    bar_bus: Arc<RwLock<Bus>>,
    alloc: BarAllocator,
    /// Disk images that are not plain files (qcow2), flushed when the boot ends.
    pub images: Vec<Arc<dyn DiskImage>>,
    /// The i440FX host bridge of a direct boot (a Q35 chipset saves its own).
    host_bridge: Option<Arc<Mutex<HostBridge>>>,
    /// Ports 0xCF8..0xCFF, whose address latch is saved state.
    config_io: Arc<Mutex<PciConfigIo>>,
}

impl PciSetup {
    /// The moves of BARs go through here (a restored BAR too).
    pub fn relocator(&self) -> Arc<dyn BarRelocator> {
        self.bar_bus.clone()
    }

    /// Registers the saved state of bus 0 and its virtio devices, each function under
    /// "pci/00:SS.0"; a virtio device without saved state is marked unsupported.
    pub fn register_states(&self, states: &mut StateRegistry) {
        states.add("pci/config-address", self.config_io.clone());
        if let Some(host) = &self.host_bridge {
            states.add(
                "pci/00:00.0",
                Arc::new(PciSaved::new(host.clone(), self.relocator())),
            );
        }
        for (slot, dev) in &self.devices {
            let (can_save, name) = {
                let d = lock(dev);
                (d.can_save(), d.device_name())
            };
            if can_save {
                states.add(
                    format!("pci/00:{slot:02x}.0"),
                    Arc::new(PciSaved::new(dev.clone(), self.relocator())),
                );
            } else {
                states.unsupported(format!("{name} at PCI 00:{slot:02x}.0"));
            }
        }
    }
}

impl PciSetup {
    /// Adds a device that is not virtio (a display adapter) in the next free slot, with
    /// its BARs assigned as for the others; returns the slot.
    pub fn add_device<T>(&mut self, dev: Arc<Mutex<T>>) -> Result<usize, PciError>
    where
        T: PciDevice + BusDevice + 'static,
    {
        let mut root = lock(&self.root);
        let slot = root.free_slot().ok_or(PciError::NoFreeSlot)?;
        root.add_device(slot, dev.clone())?;
        drop(root);
        assign_bars(
            &dev,
            &mut self.alloc,
            &mut self.bar_bus.write().unwrap_or_else(|e| e.into_inner()),
        )?;
        Ok(slot)
    }
}

/// Errors of putting PCI and its devices into a machine.
#[derive(Debug, thiserror::Error)]
pub enum PciSetupError {
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error("virtio device setup failed")]
    Virtio(#[from] VirtioError),
    #[error("cannot attach a disk")]
    Disk(#[from] BlockError),
    #[error(transparent)]
    DiskImage(#[from] DiskOpenError),
    #[error("bus placement failed")]
    Bus(#[from] BusError),
}

/// Interrupts for a run without KVM: nothing is raised.
struct NoInterrupts;

impl MsixInterrupt for NoInterrupts {
    fn trigger(&self, _vector: u16) -> std::io::Result<()> {
        Ok(())
    }
}

impl MsiRoutes for NoInterrupts {
    fn update(&self, _vector: u16, _addr: u64, _data: u32, _masked: bool) {}
}

/// Builds PCI bus 0 with its devices and places it on the machine's buses.
pub fn attach_pci(
    pio: &mut Bus,
    mmio: &mut Bus,
    p: PciParams<'_>,
) -> Result<PciSetup, PciSetupError> {
    let router =
        p.vm.as_ref()
            .map(|vm| Arc::new(KvmGsiRouter::new(vm.clone())));
    let ioevents: Option<Arc<dyn IoEventRegistrar>> =
        p.vm.as_ref()
            .map(|vm| Arc::new(KvmIoEvents::new(vm.clone())) as Arc<dyn IoEventRegistrar>);
    let mut models: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut images = Vec::new();
    for (i, d) in p.disks.iter().enumerate() {
        let id = format!("hospes-disk{i}");
        let blk = match open_disk(&d.path, d.format, d.read_only)? {
            Some(image) => {
                images.push(image.clone());
                Block::from_image(image, d.read_only, &id)
            }
            None => Block::open(&d.path, d.read_only, &id)?,
        };
        models.push(Box::new(blk));
    }
    if p.rng {
        models.push(Box::new(Rng::new()));
    }
    models.extend(p.extra);

    let bar_bus = Arc::new(RwLock::new(Bus::new()));
    let relocator: Arc<dyn BarRelocator> = bar_bus.clone();
    let mut root = PciRoot::new();
    let mmio_window = p.platform.map_or(p.mmio_window, |q35| q35.window);
    let mut host_bridge = None;
    match p.platform {
        Some(q35) => {
            root.add_device(0, q35.host.clone())?;
            root.add_device(LPC_SLOT, q35.lpc.clone())?;
        }
        None => {
            let host = Arc::new(Mutex::new(HostBridge::new()));
            root.add_device(0, host.clone())?;
            host_bridge = Some(host);
        }
    }
    let mut alloc = BarAllocator::new(mmio_window.0, mmio_window.1.saturating_sub(mmio_window.0));
    let mut devices = Vec::new();
    for model in models {
        let vectors = model.queue_max_sizes().len() as u16 + 1;
        let (msix, routes): (Arc<dyn MsixInterrupt>, Arc<dyn MsiRoutes>) = match (&p.vm, &router) {
            (Some(vm), Some(router)) => {
                let v = Arc::new(KvmMsixVectors::new(vm, router.clone(), vectors)?);
                (v.clone(), v)
            }
            _ => (Arc::new(NoInterrupts), Arc::new(NoInterrupts)),
        };
        let dev = VirtioPciDevice::new(
            model,
            TransportParts {
                mem: p.mem.clone(),
                msix,
                routes,
                ioevents: ioevents.clone(),
            },
        )?;
        let dev = Arc::new(Mutex::new(dev));
        let slot = root.free_slot().ok_or(PciError::NoFreeSlot)?;
        root.add_device(slot, dev.clone())?;
        assign_bars(
            &dev,
            &mut alloc,
            &mut bar_bus.write().unwrap_or_else(|e| e.into_inner()),
        )?;
        devices.push((slot, dev));
    }

    let root = Arc::new(Mutex::new(root));
    for (i, (start, end)) in std::iter::once(mmio_window)
        .chain(p.high_mmio_window)
        .enumerate()
    {
        let window = match p.platform {
            Some(q35) if i == 0 => {
                q35.ecam.connect(root.clone(), Some(relocator.clone()));
                PciMmioWindow::with_ecam(bar_bus.clone(), q35.ecam.clone())
            }
            _ => PciMmioWindow::new(bar_bus.clone()),
        };
        mmio.insert(
            Arc::new(Mutex::new(window)),
            start,
            end.saturating_sub(start),
        )?;
    }
    let mut config_io = PciConfigIo::new(root.clone(), Some(relocator.clone()));
    if let Some(q35) = p.platform {
        config_io = config_io.with_reset_control(q35.reset.clone());
    }
    let config_io = Arc::new(Mutex::new(config_io));
    pio.insert(config_io.clone(), CONFIG_IO_PORT, CONFIG_IO_LEN)?;
    if let (Some((base, len)), None) = (p.ecam, p.platform) {
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(
                root.clone(),
                Some(relocator),
            ))),
            base,
            len,
        )?;
    }
    Ok(PciSetup {
        root,
        devices,
        router,
        bar_bus,
        alloc,
        images,
        host_bridge,
        config_io,
    })
}

/// Programs every BAR of `dev` from `alloc`, turns on memory decoding and bus mastering
/// through the same configuration write a guest would use, and places the BARs on `bars`.
///
/// The expansion ROM BAR (`ROM_SLOT` in the list) gets an address from the same window but
/// stays disabled, as firmware leaves it: it decodes once the guest sets its enable bit,
/// and the move comes through the relocator like any BAR's. Under firmware boot this runs
/// too and SeaBIOS reassigns everything, the ROM included, then enables the ROM only while
/// it copies the option ROM out.
fn assign_bars<T>(
    dev: &Arc<Mutex<T>>,
    alloc: &mut BarAllocator,
    bar_bus: &mut Bus,
) -> Result<(), PciError>
where
    T: PciDevice + BusDevice + 'static,
{
    let mut d = lock(dev);
    let bars: Vec<_> = d.config().bar_list().collect();
    for (index, size, _kind) in bars {
        let addr = alloc.allocate(size)?;
        d.config_mut().set_bar_address(index, addr)?;
    }
    let cmd = (COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes();
    let changes = d.write_config(REG_COMMAND_STATUS, 0, &cmd);
    drop(d);
    let shared: SharedDevice = dev.clone();
    for c in changes {
        if let Some(new) = c.new {
            bar_bus.insert(shared.clone(), new, c.len)?;
        }
    }
    Ok(())
}

/// The device registration step for [`Machine`]: PCI with one virtio-blk per disk and,
/// if `rng`, a virtio-rng, at the addresses of `arch::x86_64::layout`.
pub fn attach_to_machine(
    machine: &mut Machine,
    disks: &[DiskSpec],
    rng: bool,
) -> Result<(), MachineError> {
    attach_to_machine_with(machine, disks, rng, Vec::new())
}

/// [`attach_to_machine`] with more virtio devices after virtio-rng (`extra`).
pub fn attach_to_machine_with(
    machine: &mut Machine,
    disks: &[DiskSpec],
    rng: bool,
    extra: Vec<Box<dyn VirtioDevice>>,
) -> Result<(), MachineError> {
    attach_pci_to_machine(machine, disks, rng, extra).map(drop)
}

/// [`attach_to_machine_with`], returning the [`PciSetup`] so that more devices can be
/// added ([`PciSetup::add_device`]).
pub fn attach_pci_to_machine(
    machine: &mut Machine,
    disks: &[DiskSpec],
    rng: bool,
    extra: Vec<Box<dyn VirtioDevice>>,
) -> Result<PciSetup, MachineError> {
    let setup = {
        let high = layout::high_mmio_start(machine.config.memory);
        let mut pio = machine.pio_bus.write().unwrap_or_else(|e| e.into_inner());
        let mut mmio = machine.mmio_bus.write().unwrap_or_else(|e| e.into_inner());
        attach_pci(
            &mut pio,
            &mut mmio,
            PciParams {
                mem: machine.guest_memory.clone(),
                vm: Some(machine.vm_fd.clone()),
                mmio_window: (layout::PCI_MMIO_START, layout::PCI_MMIO_END),
                // The windows the DSDT's root bridge _CRS announces, where a guest may move BARs.
                high_mmio_window: Some((high, high + layout::HIGH_MMIO_SIZE)),
                ecam: Some((layout::PCI_ECAM_START, layout::PCI_ECAM_SIZE)),
                platform: machine.chipset.as_ref(),
                disks,
                rng,
                extra,
            },
        )
        .map_err(|e| MachineError::Setup(error_chain(&e)))?
    };
    flush_at_boot_end(machine, &setup.images);
    setup.register_states(&mut machine.states);
    Ok(setup)
}

/// Has the boot's end write what `images` still cache (a guest that powers off without
/// flushing its disk must not leave a qcow2 image with stale metadata).
pub fn flush_at_boot_end(machine: &mut Machine, images: &[Arc<dyn DiskImage>]) {
    for image in images {
        let image = image.clone();
        machine.on_boot_end(move || {
            if let Err(e) = image.flush() {
                log::error!("cannot write the disk image {image:?} back: {e}");
            }
        });
    }
}

/// Parameters for tests: 1 MiB of guest memory, no KVM, the x86 layout's windows.
#[cfg(test)]
pub(crate) fn test_params(disks: &[DiskSpec], rng: bool) -> PciParams<'_> {
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    PciParams {
        mem: GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        vm: None,
        mmio_window: (0xc000_0000, 0xe000_0000),
        high_mmio_window: None,
        ecam: Some((0xe000_0000, 0x1000_0000)),
        platform: None,
        disks,
        rng,
        extra: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn parses_disk_specs() {
        assert_eq!(
            "a.img".parse::<DiskSpec>().unwrap(),
            DiskSpec {
                path: "a.img".into(),
                read_only: false,
                format: DiskFormat::Raw,
            }
        );
        assert!("/x/b.img,readonly".parse::<DiskSpec>().unwrap().read_only);
        assert!("b.img,ro".parse::<DiskSpec>().unwrap().read_only);
        assert!("b.img,cache=none".parse::<DiskSpec>().is_err());
        let q = "c.qcow2,format=qcow2,ro".parse::<DiskSpec>().unwrap();
        assert_eq!((q.format, q.read_only), (DiskFormat::Qcow2, true));
        assert!("c.img,format=vmdk".parse::<DiskSpec>().is_err());
        assert!(",ro".parse::<DiskSpec>().is_err());
    }

    #[test]
    fn attaches_disks_and_rng_enumerable_through_cf8_and_ecam() {
        let mut img = tempfile::NamedTempFile::new().unwrap();
        img.write_all(&[0u8; 4096]).unwrap();
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let disks = [DiskSpec {
            path: img.path().to_owned(),
            read_only: true,
            format: DiskFormat::Raw,
        }];
        let setup = attach_pci(&mut pio, &mut mmio, test_params(&disks, true)).unwrap();
        assert_eq!(
            setup.devices.iter().map(|d| d.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let cfg = |dev: u32, reg: u32| {
            pio.write(
                0xcf8,
                &(0x8000_0000u32 | dev << 11 | reg << 2).to_le_bytes(),
            );
            let mut b = [0u8; 4];
            pio.read(0xcfc, &mut b);
            u32::from_le_bytes(b)
        };
        assert_eq!(cfg(0, 0), 0x1237_8086);
        assert_eq!(cfg(1, 0), 0x1042_1af4);
        assert_eq!(cfg(2, 0), 0x1044_1af4);
        assert_eq!(cfg(3, 0), 0xffff_ffff);
        let bar1 = u64::from(cfg(1, 4) & !0xf);
        let bar2 = u64::from(cfg(2, 4) & !0xf);
        assert_eq!((bar1, bar2), (0xc000_0000, 0xc000_8000));
        assert_eq!(cfg(1, 1) & 0x6, 0x6);
        // BAR0 decodes on the MMIO bus: num_queues in common config reads 1.
        let mut n = [0u8; 2];
        assert!(mmio.read(bar1 + 0x12, &mut n));
        assert_eq!(u16::from_le_bytes(n), 1);
        let mut id = [0u8; 4];
        assert!(mmio.read(0xe000_0000 + (2 << 15), &mut id));
        assert_eq!(u32::from_le_bytes(id), 0x1044_1af4);
    }

    #[test]
    fn ecam_bar_move_works_while_the_machine_bus_is_read_locked() {
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        attach_pci(&mut pio, &mut mmio, test_params(&[], true)).unwrap();
        // The vCPU exit path holds the machine's MMIO bus for reading during an access.
        let mmio = RwLock::new(mmio);
        let bus = mmio.read().unwrap();
        let ecam = |reg: u64| 0xe000_0000 + (1 << 15) + reg;
        let mut n = [0u8; 2];
        assert!(bus.read(0xc000_0012, &mut n));
        // Linux's BAR sizing: decoding off, probe, restore, decoding back on, then a move.
        bus.write(ecam(4), &[0, 0]);
        assert!(bus.read(0xc000_0012, &mut n));
        assert_eq!(n, [0xff, 0xff]);
        bus.write(ecam(0x10), &[0xff; 4]);
        bus.write(ecam(0x10), &0xc000_0000u32.to_le_bytes());
        bus.write(ecam(4), &[6, 0]);
        assert!(bus.read(0xc000_0012, &mut n));
        assert_eq!(u16::from_le_bytes(n), 1);
        bus.write(ecam(0x10), &0xd000_0000u32.to_le_bytes());
        bus.read(0xd000_0012, &mut n);
        assert_eq!(u16::from_le_bytes(n), 1);
        bus.read(0xc000_0012, &mut n);
        assert_eq!(n, [0xff, 0xff]);
    }

    struct NoSlot;

    impl hospes_devices::display::FbSlot for NoSlot {
        fn map(&mut self, _at: Option<u64>) {}
        fn take_dirty(&mut self) -> Option<Vec<u64>> {
            None
        }
    }

    #[test]
    fn an_added_adapters_option_rom_is_assigned_and_read_once_enabled() {
        use hospes_devices::display::stdvga::{StdVga, VRAM_SIZE};
        use hospes_devices::framebuffer::{Display, FbMemory};

        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let mut setup = attach_pci(&mut pio, &mut mmio, test_params(&[], false)).unwrap();
        let mut image = vec![0u8; 0x9000];
        image[..3].copy_from_slice(&[0x55, 0xaa, 0x48]);
        let slot: Box<dyn hospes_devices::display::FbSlot> = Box::new(NoSlot);
        let vga = StdVga::new(
            Arc::new(FbMemory::new(VRAM_SIZE).unwrap()),
            Arc::new(Mutex::new(slot)),
            Arc::new(Display::new()),
            (1024, 768),
        )
        .unwrap()
        .with_option_rom(image)
        .unwrap();
        let dev = setup.add_device(Arc::new(Mutex::new(vga))).unwrap() as u32;
        let addr = |reg: u32| 0x8000_0000u32 | dev << 11 | reg << 2;
        let cfg = |pio: &mut Bus, reg: u32| {
            pio.write(0xcf8, &addr(reg).to_le_bytes());
            let mut b = [0u8; 4];
            pio.read(0xcfc, &mut b);
            u32::from_le_bytes(b)
        };
        let set = |pio: &mut Bus, reg: u32, v: u32| {
            pio.write(0xcf8, &addr(reg).to_le_bytes());
            pio.write(0xcfc, &v.to_le_bytes());
        };
        // BAR0 (16 MiB) and BAR2 come first; the 64 KiB ROM follows, disabled.
        let rom = cfg(&mut pio, 12);
        assert_eq!(rom & 1, 0);
        let rom = u64::from(rom);
        assert!((0xc000_0000..0xe000_0000).contains(&rom) && rom % 0x1_0000 == 0);
        assert_ne!(rom, u64::from(cfg(&mut pio, 4) & !0xf));
        assert_ne!(rom, u64::from(cfg(&mut pio, 6) & !0xf));
        let mut sig = [0u8; 3];
        mmio.read(rom, &mut sig);
        assert_eq!(sig, [0xff; 3]);
        // Enabled through configuration space, the relocator places it on the BAR bus.
        set(&mut pio, 12, rom as u32 | 1);
        assert!(mmio.read(rom, &mut sig));
        assert_eq!(sig, [0x55, 0xaa, 0x48]);
        // SeaBIOS's probe and a move elsewhere in the window.
        set(&mut pio, 12, 0xffff_fffe);
        assert_eq!(cfg(&mut pio, 12), 0xffff_0000);
        set(&mut pio, 12, 0xd000_0001);
        mmio.read(rom, &mut sig);
        assert_eq!(sig, [0xff; 3]);
        mmio.read(0xd000_0000, &mut sig);
        assert_eq!(sig, [0x55, 0xaa, 0x48]);
    }

    #[test]
    fn missing_disk_is_an_error_naming_the_path() {
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let disks = [DiskSpec {
            path: "/nonexistent/disk.img".into(),
            read_only: false,
            format: DiskFormat::Raw,
        }];
        let err = attach_pci(
            &mut pio,
            &mut mmio,
            PciParams {
                ecam: None,
                ..test_params(&disks, false)
            },
        )
        .err()
        .unwrap();
        assert!(error_chain(&err).contains("/nonexistent/disk.img"));
    }

    #[test]
    fn bus_zero_is_saved_per_function_and_a_moved_bar_comes_back_on_restore() {
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let setup = attach_pci(&mut pio, &mut mmio, test_params(&[], true)).unwrap();
        let mut states = StateRegistry::default();
        setup.register_states(&mut states);
        assert_eq!(
            states.names().collect::<Vec<_>>(),
            ["pci/config-address", "pci/00:00.0", "pci/00:01.0"]
        );
        // The guest moves virtio-rng's BAR0 and leaves 0xCF8 pointing at its command
        // register.
        let ecam = |reg: u64| 0xe000_0000 + (1 << 15) + reg;
        mmio.write(ecam(0x10), &0xd000_0000u32.to_le_bytes());
        pio.write(0xcf8, &0x8000_0804u32.to_le_bytes());
        let saved = states.save().unwrap();

        let mut pio2 = Bus::new();
        let mut mmio2 = Bus::new();
        let fresh = attach_pci(&mut pio2, &mut mmio2, test_params(&[], true)).unwrap();
        let mut states2 = StateRegistry::default();
        fresh.register_states(&mut states2);
        let mut n = [0u8; 2];
        assert!(mmio2.read(0xc000_0012, &mut n), "the fresh boot's place");
        states2.restore(&saved).unwrap();
        assert!(mmio2.read(0xd000_0012, &mut n));
        assert_eq!(
            u16::from_le_bytes(n),
            1,
            "virtio-rng's queue count, at the moved BAR"
        );
        mmio2.read(0xc000_0012, &mut n);
        assert_eq!(n, [0xff, 0xff]);
        let mut cmd = [0u8; 4];
        pio2.read(0xcfc, &mut cmd);
        assert_eq!(
            cmd[0] & 0x6,
            0x6,
            "the latch still selects 00:01.0's command register"
        );
    }
}
