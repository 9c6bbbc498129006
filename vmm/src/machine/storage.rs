//! Firmware-boot storage: the AHCI controller with the VM's SATA disks and its CD-ROM
//! drive, its PCI interrupt, the boot order handed to the firmware, and the CD drive's
//! tray, which outlives the boots.
//!
//! Data flow: after the PCI registration step has placed bus 0, [`attach_ahci`] puts one
//! ICH9 AHCI function (8086:2922) in the next free slot with SATA disks on ports 0.. and the
//! CD-ROM drive on the port after them; its INTA# reaches the guest through [`PciIntx`]
//! (the slot's PIRQ, as the DSDT's `_PRT` routes it: `acpi_loader::q35_pirq`).
//! [`boot_order`] then tells the firmware where to boot from: the CD first when one is
//! attached (an installer), then the disks in vm.ron's order.
//!
//! The disc in the drive lives in a [`CdTray`], made once per helper run: every boot
//! attaches what the tray holds ([`CdTray::load_for_boot`]) and connects the tray to that
//! boot's drive; QMP's `eject` and `blockdev-change-medium` change the tray and, during a
//! boot, the drive itself (the guest sees a unit attention); when the boot ends
//! ([`CdTray::end_boot`]) a disc the guest ejected (START STOP UNIT: the tray opened, no
//! medium present) leaves the tray, so an installer that ejects its CD and reboots boots
//! the installed system next.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hospes_core::control::block::{BlockInfo, open_disc_image};

use kvm_ioctls::VmFd;

use super::pci::{DiskSpec, PciSetup};
use super::{Machine, MachineError};
use crate::backends::qcow2::open_disk;
use hospes_core::error_chain;
use hospes_devices::ahci::{Ahci, Drive, TrayState};
use hospes_devices::bus::lock;
use hospes_devices::chipset::Ich9Lpc;
use hospes_devices::fw_cfg::{ahci_path, bootorder, virtio_blk_path};
use hospes_devices::legacy::IrqLine;
use hospes_devices::pci::root::PciSaved;

use crate::arch::x86_64::acpi_loader::{PIRQ_GSI_BASE, q35_pirq};

/// Not yet connected to a slot.
const UNCONNECTED: usize = usize::MAX;

/// Errors attaching storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the SATA controller")]
    Ahci(#[from] hospes_devices::ahci::AhciError),
    #[error("cannot put the SATA controller on PCI")]
    Pci(#[from] hospes_devices::pci::PciError),
    #[error(transparent)]
    Image(#[from] crate::backends::qcow2::DiskOpenError),
    #[error("{0} SATA drives do not fit the controller's 6 ports")]
    TooManyDrives(usize),
    #[error("cannot open the CD image {path}")]
    OpenDisc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest has locked the CD drive (force was not specified)")]
    Locked,
}

/// A line that goes nowhere.
struct NoLine;

impl IrqLine for NoLine {
    fn trigger(&self) {}
    fn set_level(&self, _high: bool) {}
}

/// A PCI function's INTx line: a level on its PIRQ, which the ICH9 drives into the
/// IOAPIC (GSI 16 + PIRQ, what an APIC-mode guest uses through `_PRT`) and, while the
/// firmware has routed the PIRQ, into that ISA IRQ of the PIC (what the BIOS and a
/// PIC-mode guest use).
pub struct PciIntx {
    vm: Arc<VmFd>,
    lpc: Arc<Mutex<Ich9Lpc>>,
    pirq: AtomicUsize,
}

impl PciIntx {
    pub fn new(vm: Arc<VmFd>, lpc: Arc<Mutex<Ich9Lpc>>) -> Self {
        Self {
            vm,
            lpc,
            pirq: AtomicUsize::new(UNCONNECTED),
        }
    }

    /// The INTA# of a function about to be placed in `machine`: on the Q35 platform a
    /// line to connect once the slot is known, and that line as the device sees it;
    /// under direct kernel boot (its DSDT routes no PCI interrupts) none, and a line that
    /// goes nowhere.
    pub fn for_function(machine: &Machine) -> (Option<Arc<PciIntx>>, Arc<dyn IrqLine>) {
        match &machine.chipset {
            Some(platform) => {
                let intx = Arc::new(PciIntx::new(machine.vm_fd.clone(), platform.lpc.clone()));
                (Some(intx.clone()), intx)
            }
            None => (None, Arc::new(NoLine)),
        }
    }

    /// Connects the line to the function in `slot` (INTA), routed as the DSDT's `_PRT`
    /// says.
    pub fn connect(&self, slot: usize) {
        let pirq = u8::try_from(slot).map_or(UNCONNECTED, |s| usize::from(q35_pirq(s, 0)));
        self.pirq.store(pirq, Ordering::Release);
    }
}

impl IrqLine for PciIntx {
    fn trigger(&self) {
        self.set_level(true);
        self.set_level(false);
    }

    fn set_level(&self, high: bool) {
        let pirq = self.pirq.load(Ordering::Acquire);
        if pirq == UNCONNECTED {
            return;
        }
        let gsi = PIRQ_GSI_BASE + pirq as u32;
        if let Err(e) = self.vm.set_irq_line(gsi, high) {
            hospes_devices::guest_warn!("cannot set PCI interrupt GSI {gsi}: {e}");
        }
        if let Some(irq) = lock(&self.lpc).pirq_route(pirq)
            && let Err(e) = self.vm.set_irq_line(u32::from(irq), high)
        {
            hospes_devices::guest_warn!("cannot set PCI interrupt IRQ {irq}: {e}");
        }
    }
}

/// What [`attach_ahci`] placed: the controller's slot and which port holds what.
pub struct AhciSetup {
    pub slot: usize,
    /// Ports of the SATA disks, in vm.ron's order.
    pub disk_ports: Vec<usize>,
    /// Port of the CD-ROM drive.
    pub cdrom_port: Option<usize>,
    /// Ports of the extra CD-ROM drives (vm.ron's `extra_cdroms`), in order.
    pub extra_cd_ports: Vec<usize>,
    pub device: Arc<Mutex<Ahci>>,
}

fn open(path: &Path, read_only: bool) -> Result<File, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|source| StorageError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Puts an AHCI controller holding `disks`, if `cdrom` is `Some`, a CD-ROM drive (with
/// the disc, or empty for `Some(None)`), and one more CD-ROM drive per `extra_cds` image
/// (the drivers disc) into `pci`. Nothing is added when there is nothing to hold.
pub fn attach_ahci(
    pci: &mut PciSetup,
    mem: &vm_memory::GuestMemoryMmap,
    intx: Arc<PciIntx>,
    disks: &[DiskSpec],
    cdrom: Option<Option<File>>,
    extra_cds: &[PathBuf],
) -> Result<Option<AhciSetup>, StorageError> {
    let drives = disks.len() + usize::from(cdrom.is_some()) + extra_cds.len();
    if drives == 0 {
        return Ok(None);
    }
    if drives > 6 {
        return Err(StorageError::TooManyDrives(drives));
    }
    let mut ahci = Ahci::new(mem.clone(), intx.clone())?;
    let mut disk_ports = Vec::new();
    for (port, d) in disks.iter().enumerate() {
        let serial = format!("HOSPES-SATA{port}");
        let drive = match open_disk(&d.path, d.format, d.read_only)? {
            Some(image) => {
                pci.images.push(image.clone());
                Drive::disk_image(image, d.read_only, &serial)
            }
            None => Drive::disk(open(&d.path, d.read_only)?, d.read_only, &serial),
        };
        ahci.attach(port, drive)?;
        disk_ports.push(port);
    }
    let cdrom_port = match cdrom {
        Some(disc) => {
            let port = disks.len();
            ahci.attach(port, Drive::cdrom(disc, &format!("HOSPES-CD{port}")))?;
            Some(port)
        }
        None => None,
    };
    let mut extra_cd_ports = Vec::new();
    for (i, path) in extra_cds.iter().enumerate() {
        let port = disks.len() + usize::from(cdrom_port.is_some()) + i;
        // vm.ron's check found the image at start; one deleted since leaves its drive empty.
        let disc = open_disc_image(path)
            .inspect_err(|e| {
                log::warn!(
                    "the CD image {} cannot be opened ({e}): its drive is empty",
                    path.display()
                )
            })
            .ok();
        ahci.attach(port, Drive::cdrom(disc, &format!("HOSPES-CD{port}")))?;
        extra_cd_ports.push(port);
    }
    let device = Arc::new(Mutex::new(ahci));
    let slot = pci.add_device(device.clone())?;
    intx.connect(slot);
    Ok(Some(AhciSetup {
        slot,
        disk_ports,
        cdrom_port,
        extra_cd_ports,
        device,
    }))
}

/// The firmware-boot storage step: the AHCI controller with `sata` disks and, with a
/// `cdrom` tray, the CD-ROM drive holding the tray's disc, then a drive per `extra_cds`
/// image; and the boot order over them and the first `virtio_disks` virtio devices (the
/// disks, which the registration step places first).
pub fn attach_for_firmware(
    machine: &mut Machine,
    pci: &mut PciSetup,
    sata: &[DiskSpec],
    cdrom: Option<&Arc<CdTray>>,
    extra_cds: &[PathBuf],
    virtio_disks: usize,
) -> Result<(), MachineError> {
    let Some(q35) = &machine.chipset else {
        return Ok(());
    };
    let intx = Arc::new(PciIntx::new(machine.vm_fd.clone(), q35.lpc.clone()));
    let fw_cfg = q35.fw_cfg.clone();
    let mem = machine.guest_memory.clone();
    let images_before = pci.images.len();
    let ahci = match cdrom {
        Some(tray) => {
            tray.load_for_boot(|disc| attach_ahci(pci, &mem, intx, sata, Some(disc), extra_cds))
        }
        None => attach_ahci(pci, &mem, intx, sata, None, extra_cds),
    }
    .map_err(|e| MachineError::Setup(error_chain(&e)))?;
    super::pci::flush_at_boot_end(machine, &pci.images[images_before..]);
    if let Some(ahci) = &ahci {
        // Its configuration space (the ABAR moves through the relocator on restore),
        // HBA and port registers, disk settings and CD tray/sense state.
        machine.states.add(
            format!("pci/00:{:02x}.0", ahci.slot),
            Arc::new(PciSaved::new(ahci.device.clone(), pci.relocator())),
        );
    }
    if let Some(tray) = cdrom {
        let tray = tray.clone();
        machine.on_boot_end(move || tray.end_boot());
    }
    let virtio: Vec<usize> = pci
        .devices
        .iter()
        .take(virtio_disks)
        .map(|(slot, _)| *slot)
        .collect();
    lock(&fw_cfg)
        .add_file("bootorder", boot_order(ahci.as_ref(), &virtio))
        .map_err(|e| MachineError::Setup(error_chain(&e)))
}

/// The drive of the boot in progress that a [`CdTray`] is connected to.
struct LiveDrive {
    ahci: Arc<Mutex<Ahci>>,
    port: usize,
}

impl LiveDrive {
    fn tray(&self) -> Option<TrayState> {
        lock(&self.ahci).port_mut(self.port).and_then(|p| p.tray())
    }
}

/// What a [`CdTray`] holds.
struct TrayInner {
    /// The image in the drive.
    image: Option<PathBuf>,
    /// The drive of the boot in progress, between [`CdTray::load_for_boot`] and
    /// [`CdTray::end_boot`].
    live: Option<LiveDrive>,
    /// A boot has loaded the tray before: a disc that can no longer be opened then
    /// leaves the drive empty instead of failing the boot.
    booted: bool,
}

/// The VM's CD drive across boots: which image is in it. Made once per helper run and
/// shared by the boots (which attach its disc) and QMP (which changes it).
pub struct CdTray {
    inner: Mutex<TrayInner>,
}

impl CdTray {
    /// A drive holding `image`, or empty.
    pub fn new(image: Option<PathBuf>) -> Self {
        Self {
            inner: Mutex::new(TrayInner {
                image,
                live: None,
                booted: false,
            }),
        }
    }

    /// The image in the drive.
    pub fn image(&self) -> Option<PathBuf> {
        lock(&self.inner).image.clone()
    }

    /// Opens the tray's disc for a boot and hands it to `attach`, which places the drive;
    /// the tray is then connected to that drive until [`end_boot`](Self::end_boot). The
    /// tray stays locked meanwhile, so a QMP change cannot fall between the two. A disc
    /// that does not open fails the first boot (a wrong `--cdrom`) and leaves the drive
    /// empty on later ones (the image was deleted meanwhile).
    pub fn load_for_boot(
        &self,
        attach: impl FnOnce(Option<File>) -> Result<Option<AhciSetup>, StorageError>,
    ) -> Result<Option<AhciSetup>, StorageError> {
        let mut inner = lock(&self.inner);
        let disc = match &inner.image {
            None => None,
            Some(path) => match open_disc_image(path) {
                Ok(file) => Some(file),
                Err(source) if !inner.booted => {
                    return Err(StorageError::OpenDisc {
                        path: path.clone(),
                        source,
                    });
                }
                Err(e) => {
                    log::warn!(
                        "the CD image {} cannot be opened ({e}): the drive is empty",
                        path.display()
                    );
                    inner.image = None;
                    None
                }
            },
        };
        let setup = attach(disc)?;
        inner.booted = true;
        inner.live = setup.as_ref().and_then(|s| {
            s.cdrom_port.map(|port| LiveDrive {
                ahci: s.device.clone(),
                port,
            })
        });
        Ok(setup)
    }

    /// Ends the boot the tray was connected to: a disc the guest ejected (no medium
    /// present: the tray opened by START STOP UNIT) stays out on the next boot.
    pub fn end_boot(&self) {
        let mut inner = lock(&self.inner);
        let Some(live) = inner.live.take() else {
            return;
        };
        let present = live.tray().is_some_and(|t| t.media_present);
        if !present && let Some(image) = inner.image.take() {
            log::info!(
                "the guest ejected {}: the CD drive stays empty",
                image.display()
            );
        }
    }

    /// Takes the disc out (QMP `eject`); refused while the guest has locked the drive,
    /// unless `force`.
    pub fn eject(&self, force: bool) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        if let Some(live) = &inner.live {
            if !force && live.tray().is_some_and(|t| t.locked) {
                return Err(StorageError::Locked);
            }
            lock(&live.ahci).eject(live.port)?;
        }
        inner.image = None;
        Ok(())
    }

    /// Puts the image at `path` in (QMP `blockdev-change-medium`), replacing the disc that
    /// was there; refused while the guest has locked the drive, unless `force`. The image
    /// must be an existing regular file; it is opened read-only.
    pub fn insert(&self, path: &Path, force: bool) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        let file = open_disc_image(path).map_err(|source| StorageError::OpenDisc {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(live) = &inner.live {
            if !force && live.tray().is_some_and(|t| t.locked) {
                return Err(StorageError::Locked);
            }
            lock(&live.ahci).insert_media(live.port, file)?;
        }
        inner.image = Some(path.to_path_buf());
        Ok(())
    }

    /// The drive as QMP `query-block` lists it.
    pub fn info(&self) -> BlockInfo {
        let inner = lock(&self.inner);
        let tray = inner.live.as_ref().and_then(LiveDrive::tray);
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        // During a boot the drive says whether its disc is in (the guest may have
        // opened the tray); between boots the tray does.
        let present = tray.is_none_or(|t| t.media_present);
        let image = inner
            .image
            .as_deref()
            .filter(|_| present)
            .map(|p| (p, size(p)));
        BlockInfo::cdrom(
            image,
            tray.is_some_and(|t| t.open),
            tray.is_some_and(|t| t.locked),
        )
    }
}

/// The `bootorder` file: the CD first (an installer), then SATA disks, then virtio disks
/// (`virtio_disk_slots`, in vm.ron's order).
pub fn boot_order(ahci: Option<&AhciSetup>, virtio_disk_slots: &[usize]) -> Vec<u8> {
    let mut paths = Vec::new();
    if let Some(a) = ahci {
        let slot = a.slot as u8;
        if let Some(port) = a.cdrom_port {
            paths.push(ahci_path(slot, 0, port as u8));
        }
        paths.extend(a.disk_ports.iter().map(|&p| ahci_path(slot, 0, p as u8)));
    }
    paths.extend(virtio_disk_slots.iter().map(|&s| virtio_blk_path(s as u8)));
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    bootorder(&refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// An interrupt line nobody listens to.
    struct NoIrq;

    impl IrqLine for NoIrq {
        fn trigger(&self) {}
        fn set_level(&self, _high: bool) {}
    }

    /// What the CD drive of one boot holds.
    struct Boot {
        ahci: Arc<Mutex<Ahci>>,
        /// The disc the tray handed the boot, as its length (the images differ in size).
        disc_len: Option<u64>,
    }

    /// One boot as `attach_for_firmware` makes it: an AHCI controller with the CD drive
    /// on port 0 holding the tray's disc, the tray connected to it.
    fn boot(tray: &CdTray) -> Result<Boot, StorageError> {
        let mut disc_len = None;
        let setup = tray.load_for_boot(|disc| {
            disc_len = disc.as_ref().map(|f| f.metadata().unwrap().len());
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let mut ahci = Ahci::new(mem, Arc::new(NoIrq)).unwrap();
            ahci.attach(0, Drive::cdrom(disc, "CD"))?;
            Ok(Some(AhciSetup {
                slot: 1,
                disk_ports: Vec::new(),
                cdrom_port: Some(0),
                extra_cd_ports: Vec::new(),
                device: Arc::new(Mutex::new(ahci)),
            }))
        })?;
        Ok(Boot {
            ahci: setup.unwrap().device,
            disc_len,
        })
    }

    /// Two images of different sizes in a temporary folder.
    fn images() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            dir.path().join("install.iso"),
            dir.path().join("drivers.iso"),
        );
        std::fs::write(&a, vec![0u8; 2048 * 4]).unwrap();
        std::fs::write(&b, vec![0u8; 2048 * 8]).unwrap();
        (dir, a, b)
    }

    #[test]
    fn an_inserted_disc_survives_a_reboot() {
        let (_dir, a, _) = images();
        let tray = CdTray::new(Some(a.clone()));
        let first = boot(&tray).unwrap();
        assert_eq!(first.disc_len, Some(2048 * 4));
        tray.end_boot();
        let second = boot(&tray).unwrap();
        assert_eq!(second.disc_len, Some(2048 * 4), "the disc is still in");
        assert!(lock(&second.ahci).port_mut(0).unwrap().media_present());
        assert_eq!(tray.image(), Some(a));
    }

    #[test]
    fn a_disc_the_guest_ejected_stays_out_on_the_next_boot() {
        let (_dir, a, _) = images();
        let tray = CdTray::new(Some(a));
        let first = boot(&tray).unwrap();
        // What the guest's START STOP UNIT (LoEj) leaves: no medium present. (The AHCI
        // tests drive that command; here the drive's own eject gives the same state.)
        lock(&first.ahci).eject(0).unwrap();
        assert!(
            tray.info().inserted.is_none(),
            "query-block sees it at once"
        );
        tray.end_boot();
        assert_eq!(tray.image(), None);
        let second = boot(&tray).unwrap();
        assert_eq!(second.disc_len, None, "the next boot has an empty drive");
        assert!(!lock(&second.ahci).port_mut(0).unwrap().media_present());
        assert_eq!(tray.info().tray_open, Some(false));
    }

    #[test]
    fn inserting_replaces_the_disc_in_the_running_drive_and_on_later_boots() {
        let (_dir, a, b) = images();
        let tray = CdTray::new(Some(a));
        let first = boot(&tray).unwrap();
        tray.insert(&b, false).unwrap();
        assert!(lock(&first.ahci).port_mut(0).unwrap().media_present());
        let info = tray.info();
        let inserted = info.inserted.expect("a disc is in");
        assert_eq!(inserted.file, b.display().to_string());
        assert_eq!(inserted.image.virtual_size, 2048 * 8);
        tray.end_boot();
        let second = boot(&tray).unwrap();
        assert_eq!(second.disc_len, Some(2048 * 8), "the new disc boots next");
    }

    #[test]
    fn a_host_eject_empties_the_drive_during_a_boot_and_between_boots() {
        let (_dir, a, b) = images();
        let tray = CdTray::new(Some(a));
        let first = boot(&tray).unwrap();
        tray.eject(false).unwrap();
        assert!(!lock(&first.ahci).port_mut(0).unwrap().media_present());
        tray.end_boot();
        // Between two boots (a reset in progress) the change waits for the next boot.
        tray.insert(&b, false).unwrap();
        tray.eject(false).unwrap();
        assert_eq!(boot(&tray).unwrap().disc_len, None);
        assert!(
            tray.eject(false).is_ok(),
            "ejecting an empty drive succeeds"
        );
    }

    #[test]
    fn an_image_that_does_not_open_is_refused_with_its_path_and_changes_nothing() {
        let (dir, a, _) = images();
        let tray = CdTray::new(Some(a.clone()));
        let first = boot(&tray).unwrap();
        let missing = dir.path().join("missing.iso");
        for bad in [missing.as_path(), dir.path()] {
            let err = tray.insert(bad, false).unwrap_err();
            assert!(
                error_chain(&err).contains(&bad.display().to_string()),
                "{}",
                error_chain(&err)
            );
        }
        assert_eq!(tray.image(), Some(a));
        assert!(lock(&first.ahci).port_mut(0).unwrap().media_present());
    }

    #[test]
    fn a_missing_image_fails_the_first_boot_and_empties_the_drive_on_later_ones() {
        let (dir, a, _) = images();
        let missing = dir.path().join("gone.iso");
        let err = boot(&CdTray::new(Some(missing.clone()))).err().unwrap();
        assert!(
            error_chain(&err).contains("gone.iso"),
            "{}",
            error_chain(&err)
        );
        let tray = CdTray::new(Some(a.clone()));
        boot(&tray).unwrap();
        tray.end_boot();
        std::fs::remove_file(&a).unwrap();
        assert_eq!(
            boot(&tray).unwrap().disc_len,
            None,
            "the VM reboots without it"
        );
        assert_eq!(tray.image(), None);
    }

    #[test]
    fn the_cd_boots_first_then_sata_then_virtio_disks() {
        let order = boot_order(None, &[3, 4]);
        let text = String::from_utf8(order).unwrap();
        assert_eq!(
            text.trim_end_matches('\0'),
            "/pci@i0cf8/scsi@3/disk@0,0\n/pci@i0cf8/scsi@4/disk@0,0"
        );
    }
}
