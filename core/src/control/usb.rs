//! QMP USB hot-plug: `device_add` (drivers `usb-host`, `usb-tablet`, `usb-kbd`),
//! `device_del` and Hospes' own `query-usb` (QEMU only has the HMP `info usb`).
//!
//! Data flow: the command table deserializes `device_add`'s arguments into
//! [`DeviceAddArgs`] (QEMU's names: `driver`, `id`, `vendorid`, `productid`, `hostbus`,
//! `hostaddr`; numbers as JSON integers or as text like `"0x046d"`), plus Hospes' `fd`:
//! the name of a descriptor the client passed earlier with `getfd` (a usbfs device node the
//! app opened through the XDG USB portal). [`device_add`] checks them, takes that
//! descriptor out of the connection's table, picks an id (`usb0`, `usb1`, ...) when none is
//! given, and hands a [`UsbDeviceSpec`] to [`VmControl::device_add_usb`]. `device_del`
//! calls [`VmControl::device_del`]; the VM emits `DEVICE_DELETED` once the device is gone.
//! `query-usb` lists what [`VmControl::query_usb`] reports as [`UsbInfo`] records.

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fdpass::FdTable;
use super::protocol::{NoArgs, QmpError};
use super::{VmControl, qmp_error};

/// `driver` of a host device passed through (QEMU's name).
pub const USB_HOST_DRIVER: &str = "usb-host";
/// `driver` of the emulated USB tablet (QEMU's name).
pub const USB_TABLET_DRIVER: &str = "usb-tablet";
/// `driver` of the emulated USB keyboard (QEMU's name).
pub const USB_KBD_DRIVER: &str = "usb-kbd";
/// Every `driver` that `device_add` takes.
pub const SUPPORTED_DRIVERS: [&str; 3] = [USB_HOST_DRIVER, USB_TABLET_DRIVER, USB_KBD_DRIVER];
/// The prefix of ids `device_add` makes up (`usb0`, `usb1`, ...).
pub const GENERATED_ID_PREFIX: &str = "usb";

/// Which host device a `usb-host` device passes through. At least one of the three is
/// set; when several are, the device must match all of them.
#[derive(Debug, Default)]
pub struct UsbHostSpec {
    /// Vendor and product id (`vendorid`, `productid`).
    pub vendor_product: Option<(u16, u16)>,
    /// Bus number and device address as `lsusb` prints them (`hostbus`, `hostaddr`).
    pub bus_addr: Option<(u8, u8)>,
    /// An open usbfs device node (`/dev/bus/usb/BBB/DDD`) the client passed with
    /// `getfd`: the helper uses it instead of opening the node itself (inside a Flatpak
    /// only the portal can open it).
    pub fd: Option<OwnedFd>,
}

/// What kind of USB device to plug in.
#[derive(Debug)]
pub enum UsbDriver {
    /// A host device passed through (`usb-host`).
    Host(UsbHostSpec),
    /// The emulated tablet (`usb-tablet`).
    Tablet,
    /// The emulated keyboard (`usb-kbd`).
    Keyboard,
}

/// A checked `device_add` request for a USB device.
#[derive(Debug)]
pub struct UsbDeviceSpec {
    /// The device's id, unique in the VM: given by the client or made up (`usb0`).
    pub id: String,
    /// What to plug in.
    pub driver: UsbDriver,
}

/// A USB device's speed, with the names QEMU's `info usb` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsbSpeed {
    /// 1.5 Mbit/s.
    Low,
    /// 12 Mbit/s.
    Full,
    /// 480 Mbit/s.
    High,
    /// 5 Gbit/s and up.
    Super,
    /// A speed this client does not know (only produced when parsing replies).
    #[serde(other)]
    Unknown,
}

/// Where a passed-through device sits on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsbHostAddr {
    /// Bus number.
    pub bus: u8,
    /// Device address on that bus.
    pub addr: u8,
}

/// One USB device plugged into the VM, as `query-usb` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsbInfo {
    /// Its id (`device_del` takes it).
    pub id: String,
    /// The guest-side port it is plugged into, like QEMU's `info usb` prints it (`"1"`,
    /// `"1.2"` behind a hub).
    pub port: String,
    /// Vendor id.
    pub vendorid: u16,
    /// Product id.
    pub productid: u16,
    /// Its speed.
    pub speed: UsbSpeed,
    /// The product name, as the device reports it.
    pub description: String,
    /// Where it sits on the host, for a passed-through device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<UsbHostAddr>,
}

/// A number argument: QEMU takes JSON integers; `"0x046d"` (hex) and `"1133"` (decimal)
/// as text are accepted too, as QEMU's `-device` option takes them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Number {
    Int(u64),
    Text(String),
}

impl Number {
    fn value<T: TryFrom<u64>>(&self, name: &str) -> Result<T, QmpError> {
        let n = match self {
            Number::Int(n) => Some(*n),
            Number::Text(text) => match text.strip_prefix("0x").or(text.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => text.parse().ok(),
            },
        };
        n.and_then(|n| T::try_from(n).ok()).ok_or_else(|| {
            QmpError::generic(format!(
                "Parameter '{name}' expects a number in range (got {})",
                self.shown()
            ))
        })
    }

    fn shown(&self) -> String {
        match self {
            Number::Int(n) => n.to_string(),
            Number::Text(text) => format!("'{text}'"),
        }
    }
}

/// `device_add` arguments (the part of QEMU's that USB devices use).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceAddArgs {
    driver: String,
    #[serde(default)]
    id: Option<String>,
    /// The bus to plug into (libvirt sends `"usb.0"` or `"xhci.0"`): the VM has one USB
    /// bus, so any name is taken to mean it.
    #[serde(default, rename = "bus")]
    _bus: Option<String>,
    #[serde(default)]
    vendorid: Option<Number>,
    #[serde(default)]
    productid: Option<Number>,
    #[serde(default)]
    hostbus: Option<Number>,
    #[serde(default)]
    hostaddr: Option<Number>,
    /// Hospes: a descriptor name given earlier with `getfd`.
    #[serde(default)]
    fd: Option<String>,
}

/// `device_del` arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceDelArgs {
    id: String,
}

/// The id the app and `hospesctl` give a host device they plug in by its ids
/// (`usb-046d-c52b`), so each finds what the other plugged in.
pub fn host_device_id(vendor: u16, product: u16) -> String {
    format!("usb-{vendor:04x}-{product:04x}")
}

/// Whether `id` is a valid device id, by QEMU's rule: a letter, then letters, digits,
/// `-`, `.` and `_`.
pub fn is_valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// The first of `usb0`, `usb1`, ... that no device in `taken` uses.
fn free_id(taken: &[UsbInfo]) -> String {
    (0..=taken.len())
        .map(|n| format!("{GENERATED_ID_PREFIX}{n}"))
        .find(|id| taken.iter().all(|d| d.id != *id))
        .unwrap_or_else(|| format!("{GENERATED_ID_PREFIX}{}", taken.len()))
}

/// Both members of a pair, or neither; one alone is an error naming the missing one.
fn pair<T: TryFrom<u64>>(
    first: Option<&Number>,
    second: Option<&Number>,
    names: (&str, &str),
) -> Result<Option<(T, T)>, QmpError> {
    match (first, second) {
        (None, None) => Ok(None),
        (Some(a), Some(b)) => Ok(Some((a.value(names.0)?, b.value(names.1)?))),
        (Some(_), None) => Err(QmpError::generic(format!(
            "'{}' needs '{}' as well",
            names.0, names.1
        ))),
        (None, Some(_)) => Err(QmpError::generic(format!(
            "'{}' needs '{}' as well",
            names.1, names.0
        ))),
    }
}

/// Refuses members that `driver` does not take.
fn no_host_members(a: &DeviceAddArgs) -> Result<(), QmpError> {
    let given = [
        ("vendorid", a.vendorid.is_some()),
        ("productid", a.productid.is_some()),
        ("hostbus", a.hostbus.is_some()),
        ("hostaddr", a.hostaddr.is_some()),
        ("fd", a.fd.is_some()),
    ];
    match given.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(QmpError::generic(format!(
            "Property '{}.{name}' not found",
            a.driver
        ))),
        None => Ok(()),
    }
}

pub(super) fn device_add(
    vm: &dyn VmControl,
    fds: &mut FdTable,
    a: DeviceAddArgs,
) -> Result<Value, QmpError> {
    if !SUPPORTED_DRIVERS.contains(&a.driver.as_str()) {
        return Err(QmpError::generic(format!(
            "'{}' is not a valid device model name: Hospes adds {}",
            a.driver,
            SUPPORTED_DRIVERS.join(", ")
        )));
    }
    if let Some(id) = a.id.as_deref().filter(|id| !is_valid_id(id)) {
        return Err(QmpError::generic(format!(
            "Parameter 'id' expects an identifier (a letter, then letters, digits, '-', '.' \
             or '_'), not '{id}'"
        )));
    }
    let driver = if a.driver == USB_HOST_DRIVER {
        let vendor_product = pair(
            a.vendorid.as_ref(),
            a.productid.as_ref(),
            ("vendorid", "productid"),
        )?;
        let bus_addr = pair(
            a.hostbus.as_ref(),
            a.hostaddr.as_ref(),
            ("hostbus", "hostaddr"),
        )?;
        if vendor_product.is_none() && bus_addr.is_none() && a.fd.is_none() {
            return Err(QmpError::generic(
                "usb-host needs 'vendorid' and 'productid', 'hostbus' and 'hostaddr', or 'fd'",
            ));
        }
        // Checked before the descriptor is taken, so a refused request leaves it there.
        if let Some(name) = a.fd.as_deref().filter(|name| !fds.contains(name)) {
            return Err(QmpError::generic(format!(
                "File descriptor named '{name}' has not been found"
            )));
        }
        let fd = a.fd.as_deref().and_then(|name| fds.take(name));
        UsbDriver::Host(UsbHostSpec {
            vendor_product,
            bus_addr,
            fd,
        })
    } else {
        no_host_members(&a)?;
        if a.driver == USB_TABLET_DRIVER {
            UsbDriver::Tablet
        } else {
            UsbDriver::Keyboard
        }
    };
    let present = vm.query_usb();
    let id = match a.id {
        Some(id) if present.iter().any(|d| d.id == id) => {
            return Err(QmpError::generic(format!("Duplicate ID '{id}' for device")));
        }
        Some(id) => id,
        None => free_id(&present),
    };
    vm.device_add_usb(UsbDeviceSpec { id, driver })
        .map_err(qmp_error)?;
    Ok(json!({}))
}

pub(super) fn device_del(vm: &dyn VmControl, a: DeviceDelArgs) -> Result<Value, QmpError> {
    vm.device_del(&a.id).map_err(qmp_error)?;
    Ok(json!({}))
}

pub(super) fn query_usb(vm: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    serde_json::to_value(vm.query_usb()).map_err(|e| QmpError::generic(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> UsbInfo {
        UsbInfo {
            id: id.into(),
            port: "1".into(),
            vendorid: 0x046d,
            productid: 0xc52b,
            speed: UsbSpeed::Full,
            description: "Receiver".into(),
            host: Some(UsbHostAddr { bus: 3, addr: 2 }),
        }
    }

    #[test]
    fn made_up_ids_take_the_first_free_number() {
        assert_eq!(free_id(&[]), "usb0");
        assert_eq!(free_id(&[info("usb0"), info("usb2")]), "usb1");
        assert_eq!(free_id(&[info("usb1"), info("usb0")]), "usb2");
        assert_eq!(free_id(&[info("mouse")]), "usb0");
    }

    #[test]
    fn ids_follow_qemus_rule() {
        for good in ["usb0", "a", "Mouse_1.b-c"] {
            assert!(is_valid_id(good), "{good}");
        }
        for bad in ["", "0usb", "-a", "a b", "a/b", "é"] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn numbers_come_as_integers_or_as_hex_or_decimal_text() {
        let parse = |v: Value| serde_json::from_value::<Number>(v).unwrap();
        assert_eq!(parse(json!(1133)).value::<u16>("v").unwrap(), 1133);
        assert_eq!(parse(json!("0x046d")).value::<u16>("v").unwrap(), 0x046d);
        assert_eq!(parse(json!("0XC52B")).value::<u16>("v").unwrap(), 0xc52b);
        assert_eq!(parse(json!("12")).value::<u8>("v").unwrap(), 12);
        let too_big = parse(json!(70000)).value::<u16>("vendorid").unwrap_err();
        assert!(too_big.desc.contains("'vendorid'"), "{}", too_big.desc);
        assert!(parse(json!("0xzz")).value::<u16>("v").is_err());
        assert!(parse(json!("256")).value::<u8>("v").is_err());
        assert!(serde_json::from_value::<Number>(json!(-1)).is_err());
    }

    #[test]
    fn usb_info_has_qemu_style_member_names_and_reads_back() {
        let device = info("usb0");
        let v = serde_json::to_value(&device).unwrap();
        assert_eq!(
            v,
            json!({"id": "usb0", "port": "1", "vendorid": 0x046d, "productid": 0xc52b,
                   "speed": "full", "description": "Receiver",
                   "host": {"bus": 3, "addr": 2}})
        );
        let back: UsbInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, device);
        let emulated = UsbInfo {
            host: None,
            ..info("tablet")
        };
        let v = serde_json::to_value(&emulated).unwrap();
        assert!(v.get("host").is_none(), "{v}");
    }
}
