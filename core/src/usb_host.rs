//! The host's USB devices, as sysfs lists them: what a person can hand to a guest.
//!
//! Data flow: [`scan`] reads `<root>/bus/usb/devices/`, where the kernel keeps one entry per
//! USB device (`1-1`, `1-1.2`: bus, then the port path), per interface (`1-1:1.0`) and per
//! root hub (`usb1`). Devices carry `idVendor` and `idProduct` (four hex digits) and, when
//! the device reports them, `manufacturer` and `product` strings. Interfaces, root hubs
//! and other hubs are left out: none of them can be given to a guest. The root is a
//! parameter, `/sys` on a real host ([`sysfs_root`]), so tests run on a fake tree.
//!
//! Only the list is read here; the helper passes a device through (usbfs) when QMP's
//! `device_add` asks for it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::UsbDevice;

/// The environment variable that points [`sysfs_root`] somewhere else than `/sys`: a fake
/// tree for tests and demonstrations.
pub const SYSFS_ROOT_ENV: &str = "HOSPES_SYSFS_ROOT";

/// `bDeviceClass` of a hub.
const HUB_CLASS: &str = "09";

/// Errors of the USB scan.
#[derive(Debug, thiserror::Error)]
pub enum UsbScanError {
    /// The device list exists but cannot be read.
    #[error("cannot read the USB device list {}", .0.display())]
    List(PathBuf, #[source] io::Error),
}

/// A USB device plugged into this computer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUsbDevice {
    /// Vendor and product id, the way `vm.ron` names the device.
    pub id: UsbDevice,
    /// Where it is plugged in: the sysfs name, bus then port path (`1-1.2`).
    pub port: String,
    /// Bus number and device address (`busnum`, `devnum`), as `lsusb` prints them
    /// (`Bus 003 Device 002`); `None` when sysfs does not say.
    pub bus_addr: Option<(u8, u8)>,
    /// The maker's name the device reports, if any.
    pub manufacturer: Option<String>,
    /// The product name the device reports, if any.
    pub product: Option<String>,
}

/// The sysfs root: `$HOSPES_SYSFS_ROOT` when set and not empty, else `/sys`.
pub fn sysfs_root() -> PathBuf {
    std::env::var_os(SYSFS_ROOT_ENV)
        .filter(|root| !root.is_empty())
        .map_or_else(|| PathBuf::from("/sys"), PathBuf::from)
}

/// The USB devices under the sysfs tree at `root`, in port order. A host without a USB
/// bus (no `bus/usb/devices`) has none. An entry that is not a whole device (an interface,
/// a hub, ids missing or unreadable) is skipped.
pub fn scan(root: &Path) -> Result<Vec<HostUsbDevice>, UsbScanError> {
    let list = root.join("bus/usb/devices");
    let entries = match fs::read_dir(&list) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(UsbScanError::List(list, err)),
    };
    let mut devices: Vec<HostUsbDevice> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| read_device(&entry.path(), &entry.file_name().to_string_lossy()))
        .collect();
    devices.sort_by_cached_key(|device| port_order(&device.port));
    Ok(devices)
}

/// The device in the sysfs entry `dir` named `name`, or `None` when the entry is not one
/// that can be handed to a guest.
fn read_device(dir: &Path, name: &str) -> Option<HostUsbDevice> {
    // Root hubs are `usbN`, interfaces `bus-port:config.interface`.
    if name.starts_with("usb") || name.contains(':') {
        return None;
    }
    if attribute(dir, "bDeviceClass").as_deref() == Some(HUB_CLASS) {
        return None;
    }
    let hex = |attr: &str| {
        let text = attribute(dir, attr)?;
        (text.len() == 4)
            .then(|| u16::from_str_radix(&text, 16).ok())
            .flatten()
    };
    Some(HostUsbDevice {
        id: UsbDevice {
            vendor: hex("idVendor")?,
            product: hex("idProduct")?,
        },
        port: name.to_owned(),
        bus_addr: attribute(dir, "busnum")
            .and_then(|bus| bus.parse().ok())
            .zip(attribute(dir, "devnum").and_then(|addr| addr.parse().ok())),
        manufacturer: attribute(dir, "manufacturer"),
        product: attribute(dir, "product"),
    })
}

/// A sysfs attribute's text without the trailing newline; `None` when missing, unreadable
/// or empty.
fn attribute(dir: &Path, attr: &str) -> Option<String> {
    let text = fs::read_to_string(dir.join(attr)).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Sorts `1-2` before `1-10` and `1-1.2` after `1-1`: the numbers of the name, in order.
fn port_order(port: &str) -> Vec<u32> {
    port.split(['-', '.'])
        .map(|part| part.parse().unwrap_or(u32::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a sysfs entry `name` with the given attributes under a fake root.
    fn entry(root: &Path, name: &str, attrs: &[(&str, &str)]) {
        let dir = root.join("bus/usb/devices").join(name);
        fs::create_dir_all(&dir).unwrap();
        for (attr, value) in attrs {
            fs::write(dir.join(attr), format!("{value}\n")).unwrap();
        }
    }

    #[test]
    fn lists_devices_with_names_in_port_order() {
        let root = tempfile::tempdir().unwrap();
        entry(
            root.path(),
            "1-10",
            &[("idVendor", "1050"), ("idProduct", "0407")],
        );
        entry(
            root.path(),
            "1-2",
            &[
                ("idVendor", "046d"),
                ("idProduct", "c52b"),
                ("bDeviceClass", "00"),
                ("busnum", "1"),
                ("devnum", "7"),
                ("manufacturer", "Logitech"),
                ("product", "USB Receiver"),
            ],
        );
        let devices = scan(root.path()).unwrap();
        assert_eq!(
            devices,
            vec![
                HostUsbDevice {
                    id: "046d:c52b".parse().unwrap(),
                    port: "1-2".into(),
                    bus_addr: Some((1, 7)),
                    manufacturer: Some("Logitech".into()),
                    product: Some("USB Receiver".into()),
                },
                HostUsbDevice {
                    id: "1050:0407".parse().unwrap(),
                    port: "1-10".into(),
                    bus_addr: None,
                    manufacturer: None,
                    product: None,
                },
            ]
        );
    }

    #[test]
    fn skips_root_hubs_interfaces_and_hubs() {
        let root = tempfile::tempdir().unwrap();
        let ids = [("idVendor", "1d6b"), ("idProduct", "0002")];
        entry(root.path(), "usb1", &ids);
        entry(root.path(), "1-0:1.0", &[("bInterfaceClass", "09")]);
        entry(root.path(), "1-1:1.0", &[("bInterfaceClass", "03")]);
        entry(
            root.path(),
            "1-1",
            &[
                ("idVendor", "05e3"),
                ("idProduct", "0610"),
                ("bDeviceClass", "09"),
            ],
        );
        entry(
            root.path(),
            "1-1.3",
            &[("idVendor", "0781"), ("idProduct", "5581")],
        );
        let ports: Vec<String> = scan(root.path())
            .unwrap()
            .into_iter()
            .map(|device| device.port)
            .collect();
        assert_eq!(ports, ["1-1.3"]);
    }

    #[test]
    fn skips_entries_with_bad_or_missing_ids() {
        let root = tempfile::tempdir().unwrap();
        entry(root.path(), "1-1", &[("idVendor", "046d")]);
        entry(
            root.path(),
            "1-2",
            &[("idVendor", "zzzz"), ("idProduct", "c52b")],
        );
        entry(
            root.path(),
            "1-3",
            &[("idVendor", "46d"), ("idProduct", "c52b")],
        );
        assert_eq!(scan(root.path()).unwrap(), []);
    }

    #[test]
    fn a_host_without_a_usb_bus_has_no_devices() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(scan(root.path()).unwrap(), []);
    }

    #[test]
    fn an_unreadable_device_list_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("bus/usb")).unwrap();
        fs::write(root.path().join("bus/usb/devices"), "not a directory").unwrap();
        let err = scan(root.path()).unwrap_err();
        assert!(
            err.to_string().contains("bus/usb/devices"),
            "{err}: names the list"
        );
    }
}
