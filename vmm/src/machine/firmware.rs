//! Firmware boot: the system ROM (SeaBIOS, or OVMF's code) mapped below 4 GiB, its low
//! alias in the BIOS area, and the firmware-facing devices a PC has besides the chipset.
//!
//! Data flow at each boot ([`Machine::new`](super::Machine) when the config names
//! firmware): [`SystemRom::load`] reads the image; [`SystemRom::map`] puts it read-only
//! just below 4 GiB as a KVM slot (reads at memory speed, writes exit and land on a
//! [`RomDevice`] that drops them) and, for a BIOS, copies its last 128 KiB to
//! 0xe0000..0x100000, where a PC's chipset shows it after reset; the vCPU then starts at
//! the reset vector 0xffff_fff0 inside the ROM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout;
use crate::arch::x86_64::smbios::{EntryPoint, SmbiosInfo, smbios_tables};
use crate::vstate::rom;
use hospes_devices::bus::{Bus, BusDevice, BusError};
use hospes_devices::framebuffer::FbMemory;
use hospes_devices::fw_cfg::{E820_RAM, E820_RESERVED, FwCfg, FwCfgError, e820_table};

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
    #[error("cannot copy the BIOS into the BIOS area")]
    LowAlias(#[source] vm_memory::GuestMemoryError),
    #[error("cannot place the firmware image on the bus")]
    Bus(#[from] BusError),
    #[error("cannot fill the firmware configuration")]
    FwCfg(#[from] FwCfgError),
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
        if !(MIN_ROM..=MAX_ROM).contains(&len) || len % 4096 != 0 {
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
    /// `mmio`; with `low_alias`, copies its last 128 KiB to 0xe0000 in `mem`.
    pub fn map(
        &self,
        vm: &VmFd,
        mmio: &mut Bus,
        mem: &GuestMemoryMmap,
        low_alias: bool,
    ) -> Result<(), FirmwareError> {
        rom::map_readonly(vm, rom::ROM_SLOT_BASE, self.base(), &self.mem, self.len)
            .map_err(FirmwareError::Map)?;
        mmio.insert(
            Arc::new(Mutex::new(RomDevice {
                mem: self.mem.clone(),
            })),
            self.base(),
            self.len,
        )?;
        if low_alias {
            let alias = LOW_ALIAS_LEN.min(self.len);
            let mut tail = vec![0u8; alias as usize];
            self.mem.read((self.len - alias) as usize, &mut tail);
            mem.write_slice(&tail, GuestAddress(layout::HIMEM_START - alias))
                .map_err(FirmwareError::LowAlias)?;
        }
        Ok(())
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

    #[test]
    fn a_missing_image_names_its_path() {
        let err = SystemRom::load(Path::new("/nonexistent/bios.bin"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/bios.bin"), "{err}");
    }
}
