//! QMP removable-media commands: `query-block`, `eject` and `blockdev-change-medium`,
//! with QEMU's names and argument shapes so that QEMU tools (`virsh change-media`-style
//! scripts, `qemu.qmp`) drive Hospes' CD drive as they drive QEMU's.
//!
//! Data flow: the command table in `commands.rs` deserializes the arguments into
//! [`EjectArgs`] or [`ChangeMediumArgs`]; the functions here check them (which drive,
//! which format) and call [`VmControl::eject`] / [`VmControl::change_medium`]; the VMM
//! opens the image with [`open_disc_image`] and puts it into the drive. `query-block`
//! lists what [`VmControl::query_block`] reports as [`BlockInfo`] records.
//!
//! The VM's one CD drive is named [`CDROM_ID`] both as QEMU's `device` (block backend)
//! and `id` (qdev id). Its images are read-only raw files.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::protocol::{NoArgs, QmpError};
use super::{VmControl, qmp_error};

/// The name of the VM's CD-ROM drive, as `device` and `id` in QMP.
pub const CDROM_ID: &str = "cdrom0";

/// The only image format Hospes reads in the CD drive (QEMU's `drv`).
pub const RAW_FORMAT: &str = "raw";

/// Opens the image at `path` for a CD drive: it must be an existing regular file (a
/// directory or a device node is refused), opened read-only.
pub fn open_disc_image(path: &Path) -> io::Result<File> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let file = OpenOptions::new().read(true).open(path)?;
    // The path may have been swapped between the check and the open: check what was
    // opened.
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// `eject` arguments (QEMU 2.8+: `id`; older tools: `device`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EjectArgs {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    id: Option<String>,
    /// Eject even while the guest has locked the drive.
    #[serde(default)]
    force: bool,
}

/// `blockdev-change-medium`'s `read-only-mode` (QEMU's `BlockdevChangeReadOnlyMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum ReadOnlyMode {
    Retain,
    ReadOnly,
    ReadWrite,
}

/// `blockdev-change-medium` arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangeMediumArgs {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    id: Option<String>,
    filename: PathBuf,
    #[serde(default)]
    format: Option<String>,
    /// Change even while the guest has locked the drive (QEMU 7.1+).
    #[serde(default)]
    force: bool,
    #[serde(default, rename = "read-only-mode")]
    read_only_mode: Option<ReadOnlyMode>,
}

/// The cache mode of an inserted image (QEMU's `BlockdevCacheInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInfo {
    pub writeback: bool,
    pub direct: bool,
    #[serde(rename = "no-flush")]
    pub no_flush: bool,
}

/// The image in a drive (the parts of QEMU's `ImageInfo` Hospes knows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub filename: String,
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
}

/// The medium in a drive (QEMU's `BlockDeviceInfo`, with the members QEMU always sends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsertedInfo {
    pub file: String,
    pub ro: bool,
    pub drv: String,
    pub backing_file_depth: u32,
    pub encrypted: bool,
    pub detect_zeroes: String,
    pub bps: u64,
    pub bps_rd: u64,
    pub bps_wr: u64,
    pub iops: u64,
    pub iops_rd: u64,
    pub iops_wr: u64,
    pub write_threshold: u64,
    pub cache: CacheInfo,
    pub image: ImageInfo,
}

/// One drive in `query-block` (QEMU's `BlockInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub removable: bool,
    pub locked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tray_open: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted: Option<InsertedInfo>,
}

impl BlockInfo {
    /// The CD drive [`CDROM_ID`] holding `image` (read-only raw, `size` bytes) or empty,
    /// its tray open or closed, locked by the guest or not.
    pub fn cdrom(image: Option<(&Path, u64)>, tray_open: bool, locked: bool) -> Self {
        let inserted = image.map(|(path, size)| {
            let file = path.display().to_string();
            InsertedInfo {
                file: file.clone(),
                ro: true,
                drv: RAW_FORMAT.into(),
                backing_file_depth: 0,
                encrypted: false,
                detect_zeroes: "off".into(),
                bps: 0,
                bps_rd: 0,
                bps_wr: 0,
                iops: 0,
                iops_rd: 0,
                iops_wr: 0,
                write_threshold: 0,
                cache: CacheInfo {
                    writeback: true,
                    direct: false,
                    no_flush: false,
                },
                image: ImageInfo {
                    filename: file,
                    format: RAW_FORMAT.into(),
                    virtual_size: size,
                },
            }
        });
        Self {
            device: CDROM_ID.into(),
            qdev: Some(CDROM_ID.into()),
            kind: "unknown".into(),
            removable: true,
            locked,
            tray_open: Some(tray_open),
            inserted,
        }
    }
}

/// The drive named by `id` or `device` (exactly one of them, as QEMU asks).
fn drive_name(device: Option<String>, id: Option<String>) -> Result<String, QmpError> {
    match (device, id) {
        (Some(_), Some(_)) => Err(QmpError::generic(
            "Parameters 'device' and 'id' are mutually exclusive",
        )),
        (None, None) => Err(QmpError::generic(
            "Either 'device' or 'id' must be specified",
        )),
        (Some(name), None) | (None, Some(name)) => Ok(name),
    }
}

pub(super) fn query_block(vm: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    serde_json::to_value(vm.query_block()).map_err(|e| QmpError::generic(e.to_string()))
}

pub(super) fn eject(vm: &dyn VmControl, a: EjectArgs) -> Result<Value, QmpError> {
    let name = drive_name(a.device, a.id)?;
    vm.eject(&name, a.force).map_err(qmp_error)?;
    Ok(json!({}))
}

pub(super) fn blockdev_change_medium(
    vm: &dyn VmControl,
    a: ChangeMediumArgs,
) -> Result<Value, QmpError> {
    let name = drive_name(a.device, a.id)?;
    if let Some(format) = a.format.as_deref().filter(|f| *f != RAW_FORMAT) {
        return Err(QmpError::generic(format!(
            "the CD drive reads raw images only, not '{format}'"
        )));
    }
    if a.read_only_mode == Some(ReadOnlyMode::ReadWrite) {
        return Err(QmpError::generic("the CD drive is read-only"));
    }
    if a.filename.as_os_str().is_empty() {
        return Err(QmpError::generic("'filename' is empty"));
    }
    vm.change_medium(&name, &a.filename, a.force)
        .map_err(qmp_error)?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_drive_lists_without_inserted_and_a_full_one_with_its_file() {
        let empty = serde_json::to_value(BlockInfo::cdrom(None, false, false)).unwrap();
        assert_eq!(
            empty,
            json!({"device": "cdrom0", "qdev": "cdrom0", "type": "unknown",
                   "removable": true, "locked": false, "tray_open": false})
        );
        let full = BlockInfo::cdrom(Some((Path::new("/isos/a.iso"), 2048)), false, true);
        let v = serde_json::to_value(&full).unwrap();
        assert_eq!(v["inserted"]["file"], "/isos/a.iso");
        assert_eq!(v["inserted"]["ro"], true);
        assert_eq!(v["inserted"]["drv"], "raw");
        assert_eq!(v["inserted"]["image"]["virtual-size"], 2048);
        assert_eq!(v["inserted"]["cache"]["no-flush"], false);
        assert_eq!(v["locked"], true);
        let back: BlockInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, full, "the client reads back what the server sends");
    }

    #[test]
    fn a_disc_image_must_be_an_existing_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = open_disc_image(&dir.path().join("none.iso")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let folder = open_disc_image(dir.path()).unwrap_err();
        assert_eq!(folder.kind(), io::ErrorKind::InvalidInput);
        let iso = dir.path().join("a.iso");
        std::fs::write(&iso, [0u8; 2048]).unwrap();
        let mut file = open_disc_image(&iso).unwrap();
        use std::io::Write;
        assert!(file.write_all(b"x").is_err(), "opened read-only");
    }
}
