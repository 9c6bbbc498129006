//! UEFI boot: OVMF's CODE and the VM's own variable store (VARS) on two CFI flashes just
//! below 4 GiB, where SeaBIOS's boot has its system ROM.
//!
//! Data flow at each boot ([`Machine::new`](super::Machine)): [`FirmwareImages::load`]
//! reads SeaBIOS's ROM, or for OVMF first makes sure the VM has its variable store
//! ([`prepare_vars`]: on the first start a copy of the template, `<vm folder>/OVMF_VARS.fd`,
//! mode 0600, created atomically), then opens CODE read-only and VARS read-write as two
//! `Pflash` devices (`hospes_devices::pflash`). [`FirmwareImages::map`] puts them where
//! `ovmf_layout` says (VARS at 0xffc0_0000 and CODE ending at 4 GiB for the 4 MiB build) on
//! the MMIO bus and as read-only KVM slots that come and go with read-array mode
//! (`vstate::flash`). OVMF's variable writes go through the VARS flash to the file. The
//! chipset's low alias at 0xe0000 shows CODE's last 128 KiB, as it shows a BIOS's.
//!
//! Secure Boot (`FirmwareConfig::secure_boot`): the store is made from the template with
//! Microsoft's keys enrolled (Debian's `OVMF_VARS_4M.ms.fd`), and the machine has SMM, so
//! the VARS flash takes writes from SMM only (`WriteGate::SmmOnly`): the firmware's SMM
//! code alone can change authenticated variables. A store that already exists is kept
//! as it is; if it has no Platform Key (made earlier without Secure Boot) the start is
//! refused with a message naming the file, because the firmware would silently boot with
//! Secure Boot off. Deleting the file makes a fresh one with the keys on the next start.
//!
//! fw_cfg: what `firmware::fw_cfg` gives (`etc/e820`, the CPU count, SMBIOS) is all the
//! QEMU build of OVMF needs from Hospes today; the ACPI tables (`etc/table-loader`) and
//! `bootorder` come from their own modules. Left out on purpose, each with its default
//! being the right one for Hospes:
//! - `etc/msr_feature_control`: absent means OVMF leaves IA32_FEATURE_CONTROL alone; it
//!   only matters for nested VMX or LMCE, which Hospes does not offer.
//! - `etc/reserved-memory-end`: only for memory hotplug, which Hospes has not.
//! - `opt/ovmf/X-PciMmio64Mb`: OVMF's own 64-bit MMIO aperture is large enough for the
//!   devices Hospes has (no device with multi-GiB BARs).
//! - `etc/smi/*`: given on a machine with SMM (`firmware::Platform::build`); the plain
//!   `OVMF_CODE_4M.fd` has no SMM and never reads them.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;

use super::firmware::{FirmwareConfig, FirmwareError, FirmwareKind, MAX_ROM, SystemRom};
use crate::vstate::flash::{FLASH_CODE_SLOT, FLASH_SLOT_BASE, KvmFlashSlot};
use hospes_core::firmware::{Image, locate};
use hospes_devices::bus::{Bus, lock};
use hospes_devices::chipset::shadow::{BIOS_AREA_LEN, BIOS_AREA_START, ROM_ALIAS_START};
use hospes_devices::framebuffer::FbMemory;
use hospes_devices::pflash::{
    Access, BLOCK_SIZE, FlashLayout, MAX_IMAGE_LEN, Pflash, PflashError, WriteGate, ovmf_layout,
};

/// The VM's variable store, in its folder.
pub const VARS_FILE: &str = "OVMF_VARS.fd";
/// The part of the system ROM the chipset shows at 0xe0000: up to 1 MiB.
const LOW_ALIAS_LEN: u64 = BIOS_AREA_START + BIOS_AREA_LEN - ROM_ALIAS_START;

/// Errors preparing or opening OVMF's flash images.
#[derive(Debug, thiserror::Error)]
pub enum UefiError {
    #[error(transparent)]
    Rom(#[from] FirmwareError),
    #[error("UEFI boot needs the VM's variable store (its {VARS_FILE})")]
    NoVars,
    #[error(transparent)]
    Locate(#[from] hospes_core::firmware::FirmwareError),
    #[error("cannot open the flash image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the flash image {path} is not usable")]
    Flash {
        path: PathBuf,
        #[source]
        source: PflashError,
    },
    #[error(
        "OVMF's code ({code} bytes) and variable store ({vars} bytes) do not fit below 4 GiB \
         (at most {MAX_ROM} bytes together; is it the right build?)"
    )]
    TooLarge { code: u64, vars: u64 },
    #[error("cannot create the VM's variable store {path} from {template}")]
    CopyVars {
        path: PathBuf,
        template: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the variable store template {path} is {len} bytes; a flash image is a whole \
         number of {BLOCK_SIZE}-byte blocks up to {MAX_IMAGE_LEN} bytes (is it the right file?)"
    )]
    BadTemplate { path: PathBuf, len: u64 },
    #[error(
        "the VM's variable store {path} was made without Secure Boot keys, so the firmware \
         would start with Secure Boot off: delete {path} (the firmware makes its boot \
         entries again) to get a store with Microsoft's keys, or set secure_boot: false"
    )]
    StoreWithoutKeys { path: PathBuf },
}

/// What a firmware boot maps below 4 GiB: SeaBIOS's system ROM, or OVMF's two flashes.
pub enum FirmwareImages {
    Rom(SystemRom),
    Ovmf(OvmfFlash),
}

impl FirmwareImages {
    /// Loads the images `fw` names; for OVMF, creates the VM's variable store first if it
    /// has none yet.
    pub fn load(fw: &FirmwareConfig) -> Result<Self, UefiError> {
        match fw.kind {
            FirmwareKind::Bios => Ok(Self::Rom(SystemRom::load(&fw.image)?)),
            FirmwareKind::Uefi => {
                let vars = fw.vars.as_deref().ok_or(UefiError::NoVars)?;
                prepare_vars(&fw.image, vars, fw.secure_boot)?;
                let gate = if fw.smm {
                    WriteGate::SmmOnly
                } else {
                    WriteGate::Anyone
                };
                Ok(Self::Ovmf(OvmfFlash::open(&fw.image, vars, gate)?))
            }
        }
    }

    /// Puts the images on `mmio` and maps them into the VM (see the module header).
    pub fn map(&self, vm: &Arc<VmFd>, mmio: &mut Bus) -> Result<(), FirmwareError> {
        match self {
            Self::Rom(rom) => rom.map(vm, mmio),
            Self::Ovmf(flash) => flash.map(vm, mmio),
        }
    }

    /// The image whose end the chipset shows at 0xe0000: the ROM, or OVMF's CODE.
    pub fn memory(&self) -> Arc<FbMemory> {
        match self {
            Self::Rom(rom) => rom.memory(),
            Self::Ovmf(flash) => flash.code_mem.clone(),
        }
    }

    /// Offset in [`memory`](Self::memory) of the byte shown at 0xe0000.
    pub fn low_alias_offset(&self) -> usize {
        match self {
            Self::Rom(rom) => rom.low_alias_offset(),
            Self::Ovmf(flash) => (flash.code_len - LOW_ALIAS_LEN.min(flash.code_len)) as usize,
        }
    }
}

/// OVMF's CODE (read-only) and the VM's VARS (read-write) as two CFI flashes.
pub struct OvmfFlash {
    code: Arc<Mutex<Pflash>>,
    vars: Arc<Mutex<Pflash>>,
    code_mem: Arc<FbMemory>,
    vars_mem: Arc<FbMemory>,
    code_len: u64,
    vars_len: u64,
    layout: FlashLayout,
    /// A machine with SMM: both flashes are mapped in the SMM address space too.
    smm: bool,
}

impl OvmfFlash {
    /// Opens CODE read-only and VARS read-write (its changes go to the file), VARS
    /// changed by those `gate` allows.
    pub fn open(code: &Path, vars: &Path, gate: WriteGate) -> Result<Self, UefiError> {
        let open = |path: &Path, access| -> Result<Pflash, UefiError> {
            let file = OpenOptions::new()
                .read(true)
                .write(access == Access::ReadWrite)
                .open(path)
                .map_err(|source| UefiError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
            Pflash::new(file, access).map_err(|source| UefiError::Flash {
                path: path.to_path_buf(),
                source,
            })
        };
        let code = open(code, Access::ReadOnly)?;
        let mut vars = open(vars, Access::ReadWrite)?;
        vars.set_write_gate(gate);
        let (code_len, vars_len) = (code.len() as u64, vars.len() as u64);
        let layout = ovmf_layout(code_len, vars_len)
            .filter(|_| code_len + vars_len <= MAX_ROM)
            .ok_or(UefiError::TooLarge {
                code: code_len,
                vars: vars_len,
            })?;
        Ok(Self {
            code_mem: code.memory(),
            vars_mem: vars.memory(),
            code: Arc::new(Mutex::new(code)),
            vars: Arc::new(Mutex::new(vars)),
            code_len,
            vars_len,
            layout,
            smm: gate == WriteGate::SmmOnly,
        })
    }

    /// The CODE and VARS flashes, for the machine's saved state.
    pub fn flashes(&self) -> (Arc<Mutex<Pflash>>, Arc<Mutex<Pflash>>) {
        (self.code.clone(), self.vars.clone())
    }

    /// Where the two images go.
    pub fn layout(&self) -> FlashLayout {
        self.layout
    }

    /// Puts both flashes on `mmio` and maps each as a read-only KVM slot that follows
    /// its read-array mode.
    fn map(&self, vm: &Arc<VmFd>, mmio: &mut Bus) -> Result<(), FirmwareError> {
        let images = [
            (
                &self.vars,
                &self.vars_mem,
                FLASH_SLOT_BASE,
                self.layout.vars_base,
                self.vars_len,
            ),
            (
                &self.code,
                &self.code_mem,
                FLASH_CODE_SLOT,
                self.layout.code_base,
                self.code_len,
            ),
        ];
        for (flash, mem, slot, at, len) in images {
            let mut mapping = KvmFlashSlot::new(vm.clone(), slot, at, mem.clone(), len)
                .map_err(FirmwareError::Map)?;
            if self.smm {
                mapping = mapping.mirror_for_smm().map_err(FirmwareError::Map)?;
            }
            lock(flash).set_mapping(Arc::new(mapping));
            mmio.insert(flash.clone(), at, len)?;
        }
        log::info!(
            "UEFI flash: VARS at {:#x} ({} KiB, writable), CODE at {:#x} ({} KiB, read-only)",
            self.layout.vars_base,
            self.vars_len >> 10,
            self.layout.code_base,
            self.code_len >> 10
        );
        Ok(())
    }
}

/// The OVMF code image a VM boots and whether it needs SMM: `chosen` (from vm.ron) or the
/// installed build, the Secure Boot one for `secure_boot`. SMM is on whenever the image is
/// a Secure Boot build (Debian's `*.secboot.fd`, QEMU's `*-secure-code.fd`), which stops
/// early without it, even when vm.ron names one with `secure_boot: false`.
pub fn ovmf_code(
    chosen: Option<&Path>,
    secure_boot: bool,
) -> Result<(PathBuf, bool), hospes_core::firmware::FirmwareError> {
    let image = if secure_boot {
        Image::OvmfCodeSecureBoot
    } else {
        Image::OvmfCode
    };
    let path = locate(image, chosen)?;
    let smm = secure_boot || is_smm_build(&path);
    Ok((path, smm))
}

/// Whether the file name says the image is a Secure Boot (SMM_REQUIRE) build.
fn is_smm_build(code: &Path) -> bool {
    code.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains(".secboot") || n.contains("secure-code") || n.contains(".ms."))
}

/// Makes sure the VM's variable store `vars` exists: on the first start it becomes a copy
/// of the template that belongs with `code` (see [`vars_template`]), for `secure_boot` the
/// one with Microsoft's keys ([`secure_vars_template`]). True when it was created now. An
/// existing store is never touched: it holds the VM's boot entries (with `secure_boot`, one
/// without a Platform Key is refused, see the module header).
pub fn prepare_vars(code: &Path, vars: &Path, secure_boot: bool) -> Result<bool, UefiError> {
    let exists = vars.try_exists().map_err(|source| UefiError::Open {
        path: vars.to_path_buf(),
        source,
    })?;
    if exists {
        if secure_boot && !has_platform_key(vars)? {
            return Err(UefiError::StoreWithoutKeys {
                path: vars.to_path_buf(),
            });
        }
        return Ok(false);
    }
    let template = if secure_boot {
        secure_vars_template(code)?
    } else {
        vars_template(code)?
    };
    copy_vars(&template, vars)?;
    log::info!(
        "created the UEFI variable store {} from {}",
        vars.display(),
        template.display()
    );
    Ok(true)
}

/// The empty variable store of the same build as `code`: the file beside it named with
/// VARS for CODE (Debian's `OVMF_CODE_4M.fd` and `OVMF_VARS_4M.fd`; a store of another
/// build has another size and OVMF would not find its variables), else the installed
/// template.
pub fn vars_template(code: &Path) -> Result<PathBuf, hospes_core::firmware::FirmwareError> {
    let sibling = code
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|name| {
            [("CODE", "VARS"), ("code", "vars")]
                .iter()
                .find(|(from, _)| name.contains(from))
                .map(|(from, to)| code.with_file_name(name.replacen(from, to, 1)))
        })
        .filter(|p| p.is_file());
    match sibling {
        Some(path) => Ok(path),
        None => locate(Image::OvmfVars, None),
    }
}

/// The variable store with Microsoft's keys of the same build as `code`: beside it, named
/// with VARS for CODE and `.ms` for `.secboot` (Debian's `OVMF_CODE_4M.secboot.fd` and
/// `OVMF_VARS_4M.ms.fd`), else the installed one.
pub fn secure_vars_template(code: &Path) -> Result<PathBuf, hospes_core::firmware::FirmwareError> {
    let sibling = code
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|name| name.contains("CODE") && name.contains(".secboot"))
        .map(|name| {
            code.with_file_name(
                name.replacen("CODE", "VARS", 1)
                    .replacen(".secboot", ".ms", 1),
            )
        })
        .filter(|p| p.is_file());
    match sibling {
        Some(path) => Ok(path),
        None => locate(Image::OvmfVarsMs, None),
    }
}

/// Whether the store at `vars` holds a Platform Key: the variable name "PK" (UTF-16,
/// NUL-terminated) appears in it. A store made from a keyless template has none until a
/// guest enrolls one.
fn has_platform_key(vars: &Path) -> Result<bool, UefiError> {
    let bytes = fs::read(vars).map_err(|source| UefiError::Open {
        path: vars.to_path_buf(),
        source,
    })?;
    const PK: [u8; 6] = [b'P', 0, b'K', 0, 0, 0];
    Ok(bytes.windows(PK.len()).any(|w| w == PK))
}

/// Copies `template` to `vars` atomically: into a temporary file (mode 0600) in the same
/// folder, synced, renamed into place, the folder synced; on any failure the temporary
/// file goes and `vars` does not appear.
fn copy_vars(template: &Path, vars: &Path) -> Result<(), UefiError> {
    let dir = match vars.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = vars
        .file_name()
        .map_or_else(|| VARS_FILE.into(), |n| n.to_string_lossy());
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write_copy(template, &temp).and_then(|len| {
        let usable = len > 0 && len % BLOCK_SIZE as u64 == 0 && len <= MAX_IMAGE_LEN as u64;
        if !usable {
            return Err(UefiError::BadTemplate {
                path: template.to_path_buf(),
                len,
            });
        }
        fs::rename(&temp, vars)
            .and_then(|()| File::open(dir)?.sync_all())
            .map_err(|source| UefiError::CopyVars {
                path: vars.to_path_buf(),
                template: template.to_path_buf(),
                source,
            })
    });
    if result.is_err() {
        // Best effort: the temporary file may not exist, and failing to remove it changes
        // nothing about the error to report.
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Writes a synced copy of `template` to `temp` (mode 0600); returns its length.
fn write_copy(template: &Path, temp: &Path) -> Result<u64, UefiError> {
    let err = |source| UefiError::CopyVars {
        path: temp.to_path_buf(),
        template: template.to_path_buf(),
        source,
    };
    let mut src = File::open(template).map_err(err)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(temp)
        .map_err(err)?;
    // A leftover from a crashed start of this pid may have another mode.
    out.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    let len = std::io::copy(&mut src, &mut out).map_err(err)?;
    out.flush().map_err(err)?;
    out.sync_all().map_err(err)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const VARS_LEN: usize = 0x8_4000;
    const CODE_LEN: usize = 0x37_c000;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A firmware folder with a CODE image and its VARS template, and a VM folder.
    fn folders() -> (tempfile::TempDir, PathBuf, tempfile::TempDir) {
        let fw = tempfile::tempdir().unwrap();
        let code = fw.path().join("OVMF_CODE_4M.fd");
        fs::write(&code, vec![0xc0u8; CODE_LEN]).unwrap();
        let template: Vec<u8> = (0..VARS_LEN).map(|i| (i % 253) as u8).collect();
        fs::write(fw.path().join("OVMF_VARS_4M.fd"), template).unwrap();
        (fw, code, tempfile::tempdir().unwrap())
    }

    #[test]
    fn the_first_start_copies_the_template_with_mode_0600() {
        let (fw, code, vm) = folders();
        let vars = vm.path().join(VARS_FILE);
        assert!(prepare_vars(&code, &vars, false).unwrap(), "created now");
        assert_eq!(
            fs::read(&vars).unwrap(),
            fs::read(fw.path().join("OVMF_VARS_4M.fd")).unwrap()
        );
        assert_eq!(fs::metadata(&vars).unwrap().mode() & 0o777, 0o600);
        assert_eq!(names(vm.path()), [VARS_FILE], "no temporary file left");
    }

    #[test]
    fn a_later_start_keeps_the_vms_own_variables() {
        let (_fw, code, vm) = folders();
        let vars = vm.path().join(VARS_FILE);
        prepare_vars(&code, &vars, false).unwrap();
        // The guest stored a boot entry.
        let mut mine = fs::read(&vars).unwrap();
        mine[0x1000..0x1008].copy_from_slice(b"BootOrdr");
        fs::write(&vars, &mine).unwrap();
        assert!(
            !prepare_vars(&code, &vars, false).unwrap(),
            "not created again"
        );
        assert_eq!(fs::read(&vars).unwrap(), mine);
    }

    #[test]
    fn a_failed_copy_leaves_no_half_file() {
        let (fw, _code, vm) = folders();
        let vars = vm.path().join(VARS_FILE);
        // A folder opens but cannot be read: the copy fails after the temporary file
        // exists.
        let err = copy_vars(fw.path(), &vars).unwrap_err();
        assert!(matches!(err, UefiError::CopyVars { .. }), "{err}");
        assert!(names(vm.path()).is_empty(), "{:?}", names(vm.path()));
        // A template that is no flash image is refused before it becomes the store.
        let short = fw.path().join("short.fd");
        fs::write(&short, vec![0u8; 100]).unwrap();
        let err = copy_vars(&short, &vars).unwrap_err();
        assert!(
            matches!(err, UefiError::BadTemplate { len: 100, .. }),
            "{err}"
        );
        assert!(names(vm.path()).is_empty(), "{:?}", names(vm.path()));
        // A folder that does not exist: nothing is created anywhere.
        let err = copy_vars(
            &fw.path().join("OVMF_VARS_4M.fd"),
            &vm.path().join("gone/OVMF_VARS.fd"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
        assert!(names(vm.path()).is_empty());
    }

    #[test]
    fn secure_boot_stores_come_with_keys_and_a_keyless_one_is_refused() {
        let (fw, _code, vm) = folders();
        let code = fw.path().join("OVMF_CODE_4M.secboot.fd");
        fs::write(&code, vec![0xc0u8; CODE_LEN]).unwrap();
        let mut keyed = vec![0xffu8; VARS_LEN];
        let pk: Vec<u8> = "PK\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
        keyed[0x100..0x100 + pk.len()].copy_from_slice(&pk);
        fs::write(fw.path().join("OVMF_VARS_4M.ms.fd"), &keyed).unwrap();
        let vars = vm.path().join(VARS_FILE);
        assert!(prepare_vars(&code, &vars, true).unwrap());
        assert_eq!(
            fs::read(&vars).unwrap(),
            keyed,
            "made from the .ms template"
        );
        assert!(
            !prepare_vars(&code, &vars, true).unwrap(),
            "kept on the next start"
        );
        // A store made earlier without Secure Boot: refused, naming the file.
        let plain = vm.path().join("plain.fd");
        prepare_vars(&fw.path().join("OVMF_CODE_4M.fd"), &plain, false).unwrap();
        let err = prepare_vars(&code, &plain, true).unwrap_err();
        assert!(matches!(err, UefiError::StoreWithoutKeys { .. }), "{err}");
        assert!(err.to_string().contains("plain.fd"), "{err}");
        // Without Secure Boot any store is fine.
        assert!(!prepare_vars(&code, &plain, false).unwrap());
    }

    #[test]
    fn secure_boot_builds_get_smm_whatever_vm_ron_says() {
        let dir = tempfile::tempdir().unwrap();
        let sb = dir.path().join("OVMF_CODE_4M.secboot.fd");
        let plain = dir.path().join("OVMF_CODE_4M.fd");
        for p in [&sb, &plain] {
            fs::write(p, b"c").unwrap();
        }
        assert_eq!(ovmf_code(Some(&sb), false).unwrap(), (sb.clone(), true));
        assert_eq!(ovmf_code(Some(&sb), true).unwrap(), (sb, true));
        assert_eq!(ovmf_code(Some(&plain), false).unwrap(), (plain, false));
    }

    #[test]
    fn the_template_is_the_one_beside_the_code_image() {
        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().join("MY_CODE.fd");
        fs::write(&code, b"c").unwrap();
        fs::write(dir.path().join("MY_VARS.fd"), b"v").unwrap();
        assert_eq!(vars_template(&code).unwrap(), dir.path().join("MY_VARS.fd"));
        let lower = dir.path().join("edk2-x86_64-code.fd");
        fs::write(dir.path().join("edk2-x86_64-vars.fd"), b"v").unwrap();
        assert_eq!(
            vars_template(&lower).unwrap(),
            dir.path().join("edk2-x86_64-vars.fd")
        );
    }

    #[test]
    fn opens_code_read_only_and_vars_where_ovmf_expects_them() {
        let (_fw, code, vm) = folders();
        let vars = vm.path().join(VARS_FILE);
        prepare_vars(&code, &vars, false).unwrap();
        let flash = OvmfFlash::open(&code, &vars, WriteGate::Anyone).unwrap();
        assert_eq!(flash.layout().vars_base, 0xffc0_0000);
        assert_eq!(flash.layout().code_base, 0xffc8_4000);
        let images = FirmwareImages::Ovmf(flash);
        // The chipset shows CODE's last 128 KiB at 0xe0000.
        assert_eq!(images.low_alias_offset(), CODE_LEN - 0x2_0000);
        assert_eq!(images.memory().len(), CODE_LEN);
    }

    #[test]
    fn images_that_do_not_fit_below_4g_are_refused() {
        let (_fw, code, vm) = folders();
        fs::write(&code, vec![0u8; 16 << 20]).unwrap();
        let vars = vm.path().join(VARS_FILE);
        fs::write(&vars, vec![0u8; VARS_LEN]).unwrap();
        let err = OvmfFlash::open(&code, &vars, WriteGate::Anyone)
            .err()
            .unwrap();
        assert!(matches!(err, UefiError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn uefi_without_a_variable_store_is_an_error() {
        let (_fw, code, _vm) = folders();
        let fw = FirmwareConfig {
            kind: FirmwareKind::Uefi,
            image: code,
            vars: None,
            serial_console: false,
            uuid: [0; 16],
            product: "t".into(),
            vga_rom: None,
            smm: false,
            secure_boot: false,
        };
        assert!(matches!(FirmwareImages::load(&fw), Err(UefiError::NoVars)));
    }

    /// Needs /dev/kvm; skipped where there is none.
    #[test]
    fn load_creates_the_store_and_map_places_both_flashes() {
        let (_fw, code, vm_dir) = folders();
        let vars = vm_dir.path().join(VARS_FILE);
        let fw = FirmwareConfig {
            kind: FirmwareKind::Uefi,
            image: code,
            vars: Some(vars.clone()),
            serial_console: false,
            uuid: [0; 16],
            product: "t".into(),
            vga_rom: None,
            smm: false,
            secure_boot: false,
        };
        let images = FirmwareImages::load(&fw).unwrap();
        assert!(vars.is_file(), "the first load made the VM's store");
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let mut mmio = Bus::new();
        images.map(&vm, &mut mmio).unwrap();
        let mut b = [0u8; 1];
        // The reset vector's page is CODE's, VARS starts at 0xffc0_0000.
        let (dev, _, off) = mmio.route(0xffff_fff0, 1).unwrap();
        lock(&dev).read(0, off, &mut b);
        assert_eq!(b, [0xc0]);
        let (dev, _, off) = mmio.route(0xffc0_0001, 1).unwrap();
        lock(&dev).read(0, off, &mut b);
        assert_eq!(b, [1]);
        assert!(mmio.route(0xffbf_ffff, 1).is_none());
        // A status read on VARS exits to the device: the flash now answers with status.
        lock(&dev).write(0, off, &[0x70]);
        lock(&dev).read(0, off, &mut b);
        assert_eq!(b, [0x80], "ready");
    }
}
