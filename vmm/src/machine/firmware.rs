//! Firmware boot: the system ROM (SeaBIOS, or OVMF's code) mapped below 4 GiB, its low
//! alias in the BIOS area, and the firmware-facing devices a PC has besides the chipset.
//!
//! Data flow at each boot ([`Machine::new`](super::Machine) when the config names
//! firmware): [`SystemRom::load`] reads the image; [`Platform::build`] maps it read-only
//! just below 4 GiB as a KVM slot (reads at memory speed, writes exit and land on a
//! [`RomDevice`] that drops them), builds the Q35 chipset (the MCH, whose PAM registers
//! show the ROM's last 128 KiB or shadow RAM at 0xe0000..0x100000 through
//! `vstate::shadow`; the ICH9 LPC bridge, which places the ACPI PM block; the reset
//! control register) and the firmware's own devices: fw_cfg with what the firmware reads
//! about the machine ([`fw_cfg`]) and the 0x402 log. The PCI registration step puts the
//! MCH and LPC on bus 0 (`machine::pci`); the vCPU starts at the reset vector 0xffff_fff0
//! inside the ROM. For OVMF, [`super::uefi`] maps its two flash images in the ROM's place.
//!
//! With SMM (`FirmwareConfig::smm`, the Secure Boot build) [`Platform::build`] also gives
//! the MCH a `vstate::smram::KvmSmram` for its SMRAM registers, the APM port an SMI route
//! (SMI_EN from the PM block, the vCPUs' `SmiPending`, the broadcast negotiated through
//! the `etc/smi` fw_cfg files) and refuses to start when KVM offers no SMM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use super::uefi::FirmwareImages;
use crate::arch::x86_64::acpi_loader::{self, AcpiLoaderError, Q35Platform};
use crate::arch::x86_64::layout;
use crate::arch::x86_64::smbios::{EntryPoint, SmbiosInfo, smbios_tables};
use crate::vstate::rom;
use crate::vstate::shadow::KvmShadow;
use crate::vstate::smram::{self, KvmSmram, SmramError};
use crate::vstate::vcpu::SmiPending;
use hospes_devices::bus::{Bus, BusDevice, BusError, SharedDevice, lock};
use hospes_devices::chipset::shadow::{BIOS_AREA_LEN, BIOS_AREA_START, ShadowArea};
use hospes_devices::chipset::smi::{SMI_F_BROADCAST, SmiFeatures, SmiRoute};
use hospes_devices::chipset::{Apm, Ich9Lpc, PmRelocator, Q35Host, ResetControl};
use hospes_devices::framebuffer::FbMemory;
use hospes_devices::fw_cfg::{E820_RAM, E820_RESERVED, FwCfg, FwCfgError, e820_table};
use hospes_devices::fw_cfg::{
    FW_CFG_PORT_DMA, FW_CFG_PORT_DMA_LEN, FW_CFG_PORT_SEL, FW_CFG_PORT_SEL_LEN,
};
use hospes_devices::legacy::PowerEvents;
use hospes_devices::legacy::firmware_log::{FirmwareLog, LogSink};
use hospes_devices::legacy::pm::{PmBlock, S5_SLP_TYP};
use hospes_devices::pci::root::EcamOverlay;
use hospes_devices::state::StateRegistry;

/// Which firmware a machine boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirmwareKind {
    /// SeaBIOS (a PC BIOS).
    Bios,
    /// OVMF (UEFI).
    Uefi,
}

/// The firmware a machine boots and its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareConfig {
    pub kind: FirmwareKind,
    /// The system ROM: SeaBIOS's image or OVMF's code.
    pub image: PathBuf,
    /// OVMF's variable store (the VM's own copy); None for a BIOS.
    pub vars: Option<PathBuf>,
    /// Send the firmware's text screen to COM1 too (a VM without a display).
    pub serial_console: bool,
    /// The machine's UUID, as SMBIOS reports it (stable for a VM).
    pub uuid: [u8; 16],
    /// The product name SMBIOS reports (the VM's name).
    pub product: String,
    /// The std-VGA adapter's VGA BIOS (Debian's vgabios-stdvga.bin), handed to the
    /// firmware as the adapter's option ROM; None without a std-VGA adapter.
    pub vga_rom: Option<PathBuf>,
    /// Give the machine System Management Mode: SMRAM behind the MCH's registers, SMIs
    /// from port 0xB2, the `etc/smi` files, a VARS flash only SMM may write. The Secure
    /// Boot build of OVMF requires it (SMM_REQUIRE); the host's KVM must offer it.
    pub smm: bool,
    /// OVMF with Secure Boot: the VM's store comes from the template with Microsoft's keys.
    pub secure_boot: bool,
}

/// Smallest system ROM accepted (SeaBIOS's smallest build is 128 KiB).
pub const MIN_ROM: u64 = 64 << 10;
/// Largest system ROM accepted: the space below 4 GiB above the LAPIC and the KVM pages.
pub const MAX_ROM: u64 = 16 << 20;
/// The low alias of a BIOS: its last 128 KiB at 0xe0000.
const LOW_ALIAS_LEN: u64 = 0x2_0000;

/// Errors loading or mapping firmware.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("cannot read the firmware image {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the firmware image {path} is {len} bytes; a system ROM is a whole number of 4 KiB \
         pages between 64 KiB and 16 MiB (is it the right file?)"
    )]
    BadSize { path: PathBuf, len: u64 },
    #[error("cannot allocate memory for the firmware image")]
    Alloc(#[source] hospes_devices::framebuffer::DisplayError),
    #[error("cannot map the firmware image into the VM")]
    Map(#[source] kvm_ioctls::Error),
    #[error("cannot set up the BIOS area")]
    Shadow(#[from] crate::vstate::shadow::ShadowError),
    #[error("cannot place the firmware image on the bus")]
    Bus(#[from] BusError),
    #[error("cannot fill the firmware configuration")]
    FwCfg(#[from] FwCfgError),
    #[error("cannot build the ACPI tables for the firmware")]
    Acpi(#[from] AcpiLoaderError),
    #[error(transparent)]
    Smm(#[from] SmramError),
}

/// How long SeaBIOS waits before trying again when nothing boots (ms).
const BOOT_FAIL_WAIT_MS: u32 = 5_000;

/// The firmware configuration device for one boot: what SeaBIOS and OVMF read about the
/// machine (CPUs, RAM, the memory map, SMBIOS, where the text console goes).
pub fn fw_cfg(
    fw: &FirmwareConfig,
    cpus: u32,
    memory: u64,
    mem: &GuestMemoryMmap,
) -> Result<FwCfg, FwCfgError> {
    let mut cfg = FwCfg::new(mem.clone());
    let cpus16 = u16::try_from(cpus).unwrap_or(u16::MAX);
    cfg.set_nb_cpus(cpus16);
    cfg.set_max_cpus(cpus16);
    cfg.set_ram_size(memory);
    cfg.set_boot_menu(false);
    let low = layout::firmware_low_ram(memory);
    let mut e820 = vec![(0, low, E820_RAM)];
    // KVM's TSS and identity-map pages (QEMU reserves the same four pages).
    e820.push((layout::KVM_IDENTITY_MAP, 0x4000, E820_RESERVED));
    if memory > low {
        e820.push((layout::HIGH_RAM_START, memory - low, E820_RAM));
    }
    cfg.add_file("etc/e820", e820_table(&e820))?;
    cfg.add_file(
        "etc/boot-fail-wait",
        BOOT_FAIL_WAIT_MS.to_le_bytes().to_vec(),
    )?;
    // Sleep states offered, one byte each for S0..S5 (bit 7: offered, low bits: SLP_TYP):
    // S5 only. Hospes has no S3/S4 resume path, so OVMF must not offer suspend to RAM.
    let mut states = vec![0u8; 6];
    states[5] = 0x80 | S5_SLP_TYP;
    cfg.add_file("etc/system-states", states)?;
    if fw.serial_console {
        cfg.add_file("etc/sercon-port", layout::COM1_PORT.to_le_bytes().to_vec())?;
    }
    let mut info = SmbiosInfo::hospes(&fw.product, fw.uuid, cpus, memory);
    if fw.kind == FirmwareKind::Bios {
        // SeaBIOS shows the guest the entry point it is given; 2.1 is the one every
        // guest reads (OVMF publishes both forms whichever it gets).
        info.entry_point = EntryPoint::V21;
    }
    let (tables, anchor) = smbios_tables(&info);
    cfg.add_file("etc/smbios/smbios-tables", tables)?;
    cfg.add_file("etc/smbios/smbios-anchor", anchor)?;
    Ok(cfg)
}

/// The Q35 platform of one firmware boot: the chipset functions the PCI registration
/// step puts on bus 0, and the movable ECAM window.
pub struct Platform {
    /// 00:00.0.
    pub host: Arc<Mutex<Q35Host>>,
    /// 00:1f.0.
    pub lpc: Arc<Mutex<Ich9Lpc>>,
    /// The reset control register at 0xcf9, inside the PCI configuration ports.
    pub reset: SharedDevice,
    /// The same register, for its saved state.
    reset_control: Arc<Mutex<ResetControl>>,
    /// The APM ports 0xb2/0xb3.
    apm: Arc<Mutex<Apm>>,
    /// ECAM where PCIEXBAR says, inside the 32-bit PCI window.
    pub ecam: Arc<EcamOverlay>,
    /// The 32-bit PCI window, `(start, end)`.
    pub window: (u64, u64),
    /// The firmware configuration device, for files the registration step adds (the
    /// boot order).
    pub fw_cfg: Arc<Mutex<FwCfg>>,
}

/// What [`Platform::build`] needs.
pub struct PlatformParts<'a> {
    pub fw: &'a FirmwareConfig,
    pub cpus: u32,
    pub memory: u64,
    pub vm: &'a Arc<VmFd>,
    pub guest_memory: &'a GuestMemoryMmap,
    /// SeaBIOS's ROM or OVMF's flashes.
    pub rom: &'a FirmwareImages,
    pub pio: &'a Arc<RwLock<Bus>>,
    pub mmio: &'a mut Bus,
    /// The ICH9 ACPI PM block, placed where the firmware programs PMBASE.
    pub pm: &'a Arc<Mutex<PmBlock>>,
    pub power: Arc<dyn PowerEvents>,
    /// The machine has a TPM (the ACPI tables describe it).
    pub tpm: bool,
    /// With SMM: the host's KVM (to check it offers SMM), where SMIs go, and the hole
    /// guest RAM's slots leave (see `memory::register`).
    pub smm: Option<SmmParts<'a>>,
}

/// What a machine with SMM adds to [`PlatformParts`].
pub struct SmmParts<'a> {
    pub kvm: &'a Kvm,
    pub smi: Arc<SmiPending>,
    pub ram_hole: Option<(u64, u64)>,
}

impl Platform {
    /// Maps the ROM, builds the chipset (PAM-governed BIOS area, movable ECAM and PM
    /// block, reset control, APM ports) and the firmware's devices (fw_cfg, the 0x402
    /// log).
    pub fn build(p: PlatformParts<'_>) -> Result<Self, FirmwareError> {
        // Before anything maps into the SMM address space, which such a KVM refuses.
        if let Some(smm) = &p.smm
            && !smram::supported(smm.kvm)
        {
            return Err(SmramError::NoSmm.into());
        }
        p.rom.map(p.vm, p.mmio)?;
        let area = Arc::new(Mutex::new(ShadowArea::new(
            p.guest_memory.clone(),
            p.rom.memory(),
            p.rom.low_alias_offset(),
        )));
        p.mmio
            .insert(area.clone(), BIOS_AREA_START, BIOS_AREA_LEN)?;
        let shadow = KvmShadow::new(
            p.vm.clone(),
            p.guest_memory,
            area,
            p.rom.memory(),
            p.rom.low_alias_offset(),
        )?;
        let low = layout::firmware_low_ram(p.memory);
        let window = (low.max(FW_PCI_WINDOW_MIN), layout::FW_PCI_MMIO_END);
        let ecam = Arc::new(EcamOverlay::new(window));
        let mut host = Q35Host::new(low, ecam.clone(), Arc::new(shadow));
        let mut lpc = Ich9Lpc::new(Arc::new(PmMover {
            pio: p.pio.clone(),
            pm: p.pm.clone(),
            at: Mutex::new(None),
        }));
        lpc.set_smi_regs(lock(p.pm).smi_regs());

        let mut cfg = fw_cfg(p.fw, p.cpus, p.memory, p.guest_memory)?;
        let platform = Q35Platform {
            cpus: p.cpus,
            memory: p.memory,
            window,
            ecam: ecam.range(),
            pm_base: layout::PM_BASE,
            tpm: p.tpm,
        };
        add_acpi_tables(&mut cfg, platform, &ecam)?;
        let apm = match &p.smm {
            Some(smm) => {
                let smram =
                    KvmSmram::new(smm.kvm, p.vm.clone(), p.guest_memory, smm.ram_hole, low)?;
                host.set_smram_mapper(Arc::new(smram));
                let features = Arc::new(SmiFeatures::new(SMI_F_BROADCAST));
                features.add_to(&mut cfg)?;
                log::info!("SMM on: SMRAM under the MCH's registers, SMIs from port 0xb2");
                Apm::with_smi(SmiRoute {
                    regs: lock(p.pm).smi_regs(),
                    features,
                    sink: smm.smi.clone(),
                })
            }
            None => Apm::new(),
        };
        let cfg = Arc::new(Mutex::new(cfg));
        let mut pio = p.pio.write().unwrap_or_else(|e| e.into_inner());
        pio.insert(cfg.clone(), FW_CFG_PORT_SEL, FW_CFG_PORT_SEL_LEN)?;
        pio.insert(cfg.clone(), FW_CFG_PORT_DMA, FW_CFG_PORT_DMA_LEN)?;
        pio.insert(
            Arc::new(Mutex::new(FirmwareLog::new(Box::new(LogSink)))),
            u64::from(layout::FW_DEBUG_PORT),
            1,
        )?;
        let apm = Arc::new(Mutex::new(apm));
        pio.insert(apm.clone(), APM_PORT, APM_LEN)?;
        let reset_control = Arc::new(Mutex::new(ResetControl::new(p.power)));
        Ok(Self {
            host: Arc::new(Mutex::new(host)),
            lpc: Arc::new(Mutex::new(lpc)),
            reset: reset_control.clone(),
            reset_control,
            apm,
            ecam,
            window,
            fw_cfg: cfg,
        })
    }
}

impl Platform {
    /// Adds the chipset and the firmware's devices to a machine's saved state, in the
    /// order a restore must take them: the MCH first (ECAM window, PAM, SMRAM views), the
    /// LPC bridge (PM block placement, SMI_EN), RST_CNT, the APM ports, fw_cfg, then
    /// OVMF's two flashes (`images`: what this boot mapped). The 0x402 log has no state.
    pub fn register_states(&self, states: &mut StateRegistry, images: Option<&FirmwareImages>) {
        states.add("q35/mch", self.host.clone());
        states.add("q35/lpc", self.lpc.clone());
        states.add("q35/reset", self.reset_control.clone());
        states.add("q35/apm", self.apm.clone());
        states.add("fw_cfg", self.fw_cfg.clone());
        if let Some(FirmwareImages::Ovmf(flash)) = images {
            let (code, vars) = flash.flashes();
            states.add("pflash/code", code);
            states.add("pflash/vars", vars);
        }
    }
}

/// Adds the ACPI tables the firmware loads through `etc/table-loader`
/// ([`acpi_loader`]), generated when the guest first reads them so that the MCFG and the
/// root bridge's `_CRS` follow the ECAM window the firmware programmed into PCIEXBAR.
/// The PM block is described at 0x600, where SeaBIOS (when `etc/table-loader` exists) and
/// OVMF put PMBASE. With a TPM, its event log area goes with them.
fn add_acpi_tables(
    cfg: &mut FwCfg,
    platform: Q35Platform,
    ecam: &Arc<EcamOverlay>,
) -> Result<(), FirmwareError> {
    if platform.tpm {
        cfg.add_file(
            acpi_loader::TPM_LOG_FILE,
            vec![0; acpi_loader::TPM_LOG_LEN as usize],
        )?;
    }
    // Built once now, so that a machine the tables cannot describe fails to start
    // instead of booting without ACPI; later builds differ only in the ECAM window.
    acpi_loader::build(&platform)?;
    let generate = acpi_loader::generator(platform, ecam.clone());
    cfg.add_lazy_files(&acpi_loader::FILES, generate)?;
    Ok(())
}

/// The 32-bit PCI window starts at 2 GiB at the lowest (SeaBIOS's ECAM at 0xb000_0000
/// must fall inside it).
const FW_PCI_WINDOW_MIN: u64 = 0x8000_0000;
/// The APM control and status ports.
const APM_PORT: u64 = 0xb2;
const APM_LEN: u64 = 2;

/// Moves the ICH9 PM block on the port bus when the firmware programs PMBASE and
/// ACPI_EN. Called from a configuration write: the vCPU holds no bus lock then (it looks
/// devices up and releases the bus before accessing them), so taking the write lock is safe.
struct PmMover {
    pio: Arc<RwLock<Bus>>,
    pm: Arc<Mutex<PmBlock>>,
    at: Mutex<Option<u16>>,
}

impl PmRelocator for PmMover {
    fn set(&self, base: Option<u16>) {
        let mut at = lock(&self.at);
        if *at == base {
            return;
        }
        let len = lock(&self.pm).layout().block_len();
        let mut bus = self.pio.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = at.take() {
            let _ = bus.remove(u64::from(old));
        }
        if let Some(new) = base {
            match bus.insert(self.pm.clone(), u64::from(new), len) {
                Ok(()) => *at = Some(new),
                Err(e) => hospes_devices::guest_warn!(
                    "PMBASE {new:#x} puts the ACPI PM block over another device: {e}"
                ),
            }
        }
    }
}

/// The system ROM of one boot.
pub struct SystemRom {
    mem: Arc<FbMemory>,
    len: u64,
}

impl SystemRom {
    /// Reads the image at `path`.
    pub fn load(path: &Path) -> Result<Self, FirmwareError> {
        let bytes = std::fs::read(path).map_err(|source| FirmwareError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let len = bytes.len() as u64;
        if !(MIN_ROM..=MAX_ROM).contains(&len) || !len.is_multiple_of(4096) {
            return Err(FirmwareError::BadSize {
                path: path.to_path_buf(),
                len,
            });
        }
        let mem = FbMemory::new(bytes.len()).map_err(FirmwareError::Alloc)?;
        mem.write(0, &bytes);
        Ok(Self {
            mem: Arc::new(mem),
            len,
        })
    }

    /// The image's memory.
    pub fn memory(&self) -> Arc<FbMemory> {
        self.mem.clone()
    }

    /// Where the image starts: it ends at 4 GiB.
    pub fn base(&self) -> u64 {
        (1u64 << 32) - self.len
    }

    /// The image's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty image (never: [`load`](Self::load) refuses it).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maps the image below 4 GiB (KVM slot `rom::ROM_SLOT_BASE`) with its write sink on
    /// `mmio`. Its last 128 KiB also show at 0xe0000 while the chipset's PAM registers
    /// say so (see `vstate::shadow`).
    pub fn map(&self, vm: &VmFd, mmio: &mut Bus) -> Result<(), FirmwareError> {
        rom::map_readonly(vm, rom::ROM_SLOT_BASE, self.base(), &self.mem, self.len)
            .map_err(FirmwareError::Map)?;
        mmio.insert(
            Arc::new(Mutex::new(RomDevice {
                mem: self.mem.clone(),
            })),
            self.base(),
            self.len,
        )?;
        Ok(())
    }

    /// Offset in the image of the byte shown at 0xe0000 (the low alias's start).
    pub fn low_alias_offset(&self) -> usize {
        (self.len - LOW_ALIAS_LEN.min(self.len)) as usize
    }
}

/// The ROM on the MMIO bus: reads (which only exit when KVM cannot map it read-only)
/// come from the image, writes are dropped as a ROM drops them.
struct RomDevice {
    mem: Arc<FbMemory>,
}

impl BusDevice for RomDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.mem.read(offset as usize, data);
    }

    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_an_image_that_is_no_rom() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bios.bin");
        std::fs::write(&path, vec![0u8; 1000]).unwrap();
        let err = SystemRom::load(&path).err().unwrap();
        assert!(
            matches!(err, FirmwareError::BadSize { len: 1000, .. }),
            "{err}"
        );
        std::fs::write(&path, vec![0u8; 256 << 10]).unwrap();
        let rom = SystemRom::load(&path).unwrap();
        assert_eq!(rom.base(), 0xfffc_0000);
    }

    fn config(kind: FirmwareKind, serial_console: bool) -> FirmwareConfig {
        FirmwareConfig {
            kind,
            image: PathBuf::from("bios.bin"),
            vars: None,
            serial_console,
            uuid: [7; 16],
            product: "Test".into(),
            vga_rom: None,
            smm: false,
            secure_boot: false,
        }
    }

    #[test]
    fn fw_cfg_describes_memory_sleep_states_and_the_console() {
        use vm_memory::GuestAddress;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cfg = fw_cfg(&config(FirmwareKind::Bios, true), 2, 4 << 30, &mem).unwrap();
        // 4 GiB: 2 GiB below 4 GiB, the KVM pages reserved, 2 GiB above.
        let e820 = cfg.file_data("etc/e820").unwrap();
        let entry = |i: usize| {
            let e = &e820[i * 20..(i + 1) * 20];
            (
                u64::from_le_bytes(e[0..8].try_into().unwrap()),
                u64::from_le_bytes(e[8..16].try_into().unwrap()),
                u32::from_le_bytes(e[16..20].try_into().unwrap()),
            )
        };
        assert_eq!(e820.len(), 60);
        assert_eq!(entry(0), (0, 2 << 30, E820_RAM));
        assert_eq!(entry(1), (layout::KVM_IDENTITY_MAP, 0x4000, E820_RESERVED));
        assert_eq!(entry(2), (1 << 32, 2 << 30, E820_RAM));
        assert_eq!(
            cfg.file_data("etc/system-states").unwrap(),
            [0, 0, 0, 0, 0, 0x80 | S5_SLP_TYP],
            "S5 only: no suspend without a resume path"
        );
        assert_eq!(
            cfg.file_data("etc/sercon-port").unwrap(),
            0x3f8u16.to_le_bytes()
        );
        let anchor = cfg.file_data("etc/smbios/smbios-anchor").unwrap();
        assert_eq!(&anchor[..4], b"_SM_", "SeaBIOS gets the 2.1 entry point");
        let with_display = fw_cfg(&config(FirmwareKind::Uefi, false), 1, 256 << 20, &mem).unwrap();
        assert!(with_display.file_data("etc/sercon-port").is_none());
        let anchor = with_display.file_data("etc/smbios/smbios-anchor").unwrap();
        assert_eq!(&anchor[..5], b"_SM3_");
    }

    #[test]
    fn a_missing_image_names_its_path() {
        let err = SystemRom::load(Path::new("/nonexistent/bios.bin"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/bios.bin"), "{err}");
    }
}
