//! Where the firmware images a VM boots live: SeaBIOS for `Boot::Bios`, OVMF (code and
//! a variable-store template) for `Boot::Uefi`, OVMF's Secure Boot build (which needs SMM)
//! and a variable store with Microsoft's keys enrolled for `Boot::Uefi { secure_boot:
//! true }`, and the VGA BIOS the std-VGA adapter's option ROM holds.
//!
//! Lookup: a path from vm.ron (`firmware: Some(..)`) is used as given. Otherwise the
//! helper looks in the Flatpak's `/app/share/hospes/firmware`, then the distribution's
//! folders (Debian's `seabios` and `ovmf` packages, QEMU's `/usr/share/qemu`); a packager
//! (or a test) replaces that list with `HOSPES_FIRMWARE_PATH`, colon-separated folders.
//! A missing image is an error that names the package to install.

use std::path::{Path, PathBuf};

/// A firmware image Hospes knows how to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Image {
    /// SeaBIOS, 256 KiB, mapped just below 4 GiB.
    SeaBios,
    /// The VGA BIOS for the std-VGA adapter (PCI 1234:1111).
    VgaBiosStdVga,
    /// OVMF's code, 4 MiB flash layout.
    OvmfCode,
    /// OVMF's empty variable store, copied into each UEFI VM's folder.
    OvmfVars,
    /// OVMF's Secure Boot build (SECURE_BOOT_ENABLE + SMM_REQUIRE), 4 MiB flash layout.
    OvmfCodeSecureBoot,
    /// A variable store with Microsoft's Secure Boot keys (PK, KEK, db, dbx) enrolled, for
    /// the Secure Boot build.
    OvmfVarsMs,
}

impl Image {
    /// File names to try, best first.
    fn file_names(self) -> &'static [&'static str] {
        match self {
            Image::SeaBios => &["bios-256k.bin"],
            Image::VgaBiosStdVga => &["vgabios-stdvga.bin"],
            Image::OvmfCode => &["OVMF_CODE_4M.fd", "OVMF_CODE.fd", "edk2-x86_64-code.fd"],
            Image::OvmfVars => &["OVMF_VARS_4M.fd", "OVMF_VARS.fd", "edk2-i386-vars.fd"],
            Image::OvmfCodeSecureBoot => &[
                "OVMF_CODE_4M.secboot.fd",
                "OVMF_CODE.secboot.fd",
                "edk2-x86_64-secure-code.fd",
            ],
            // QEMU's edk2-i386-vars.fd has no keys enrolled: not a candidate.
            Image::OvmfVarsMs => &["OVMF_VARS_4M.ms.fd", "OVMF_VARS.ms.fd"],
        }
    }

    /// The distribution folders holding it.
    fn system_dirs(self) -> &'static [&'static str] {
        match self {
            Image::SeaBios | Image::VgaBiosStdVga => &["/usr/share/seabios", "/usr/share/qemu"],
            Image::OvmfCode | Image::OvmfVars | Image::OvmfCodeSecureBoot | Image::OvmfVarsMs => &[
                "/usr/share/OVMF",
                "/usr/share/ovmf",
                "/usr/share/edk2/ovmf",
                "/usr/share/qemu",
            ],
        }
    }

    /// The Debian package that ships it.
    pub fn package(self) -> &'static str {
        match self {
            Image::SeaBios | Image::VgaBiosStdVga => "seabios",
            Image::OvmfCode | Image::OvmfVars | Image::OvmfCodeSecureBoot | Image::OvmfVarsMs => {
                "ovmf"
            }
        }
    }

    /// What it is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Image::SeaBios => "the SeaBIOS firmware",
            Image::VgaBiosStdVga => "the std-VGA BIOS",
            Image::OvmfCode => "the OVMF UEFI firmware",
            Image::OvmfVars => "OVMF's variable store template",
            Image::OvmfCodeSecureBoot => "the OVMF UEFI firmware with Secure Boot",
            Image::OvmfVarsMs => "OVMF's variable store template with Microsoft's keys",
        }
    }
}

/// A firmware image that could not be found.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error(
        "{} is not installed: looked for {} in {}; install the Debian package `{}` \
         (apt install {}) or name the file in vm.ron (boot: ...(firmware: Some(\"PATH\")))",
        image.describe(),
        image.file_names().join(" or "),
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        image.package(),
        image.package()
    )]
    NotInstalled {
        image: Image,
        searched: Vec<PathBuf>,
    },
    #[error("firmware file {0} does not exist")]
    Missing(PathBuf),
}

/// The folders searched for `image`, in order.
pub fn search_dirs(image: Image) -> Vec<PathBuf> {
    if let Some(path) = std::env::var_os("HOSPES_FIRMWARE_PATH") {
        return std::env::split_paths(&path)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
    }
    let mut dirs = vec![PathBuf::from("/app/share/hospes/firmware")];
    dirs.extend(image.system_dirs().iter().map(PathBuf::from));
    dirs
}

/// Finds `image`: `chosen` if given (it must exist), else the first installed copy.
pub fn locate(image: Image, chosen: Option<&Path>) -> Result<PathBuf, FirmwareError> {
    if let Some(path) = chosen {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(FirmwareError::Missing(path.to_path_buf()))
        };
    }
    locate_in(image, &search_dirs(image))
}

fn locate_in(image: Image, dirs: &[PathBuf]) -> Result<PathBuf, FirmwareError> {
    dirs.iter()
        .flat_map(|dir| image.file_names().iter().map(move |name| dir.join(name)))
        .find(|path| path.is_file())
        .ok_or_else(|| FirmwareError::NotInstalled {
            image,
            searched: dirs.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_image_names_the_package_and_the_folders() {
        let dir = tempfile::tempdir().unwrap();
        let err = locate_in(Image::SeaBios, &[dir.path().to_path_buf()]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("apt install seabios"), "{text}");
        assert!(text.contains("bios-256k.bin"), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
    }

    #[test]
    fn the_first_folder_holding_the_image_wins() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(b.path().join("OVMF_CODE.fd"), b"x").unwrap();
        std::fs::write(a.path().join("OVMF_CODE_4M.fd"), b"x").unwrap();
        let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(
            locate_in(Image::OvmfCode, &dirs).unwrap(),
            a.path().join("OVMF_CODE_4M.fd")
        );
        std::fs::remove_file(a.path().join("OVMF_CODE_4M.fd")).unwrap();
        assert_eq!(
            locate_in(Image::OvmfCode, &dirs).unwrap(),
            b.path().join("OVMF_CODE.fd")
        );
    }

    #[test]
    fn secure_boot_takes_the_secboot_code_and_the_store_with_microsofts_keys() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let dirs = [dir.path().to_path_buf()];
        let err = locate_in(Image::OvmfCodeSecureBoot, &dirs).unwrap_err();
        assert!(err.to_string().contains("apt install ovmf"), "{err}");
        assert!(
            locate_in(Image::OvmfVarsMs, &dirs).is_err(),
            "keyless store refused"
        );
        for name in ["OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(
            locate_in(Image::OvmfCodeSecureBoot, &dirs).unwrap(),
            dir.path().join("OVMF_CODE_4M.secboot.fd")
        );
        assert_eq!(
            locate_in(Image::OvmfVarsMs, &dirs).unwrap(),
            dir.path().join("OVMF_VARS_4M.ms.fd")
        );
    }

    #[test]
    fn a_chosen_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("my-bios.bin");
        assert!(matches!(
            locate(Image::SeaBios, Some(&path)),
            Err(FirmwareError::Missing(p)) if p == path
        ));
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(locate(Image::SeaBios, Some(&path)).unwrap(), path);
    }
}
