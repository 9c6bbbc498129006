//! `hospesctl usb NAME list|attach DEV|detach DEV`: host USB devices given to a VM.
//!
//! DEV is `VID:PID` (hex, as `lsusb` prints `ID 046d:c52b`) or `BUS/ADDR` (decimal, as
//! `lsusb` prints `Bus 003 Device 002`: `3/2` or `003/002`). A running VM gets the device
//! plugged in or out at once through QMP (`device_add` driver `usb-host` with an id
//! `usb-VVVV-PPPP` or `usb-B-A`, `device_del`, `query-usb`), and vm.ron's `usb` list is
//! updated too, so the device comes back on the next start (vm.ron names devices by
//! VID:PID only, so a device attached by BUS/ADDR is recorded by the ids the helper
//! reports). A stopped VM only gets vm.ron changed (an atomic save that keeps comments);
//! there BUS/ADDR is looked up in the host's sysfs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::{CtlError, Output};
use hospes_core::config::UsbDevice;
use hospes_core::control::client::{QmpClient, UsbAddRequest, UsbTarget};
use hospes_core::control::usb::{UsbInfo, host_device_id};
use hospes_core::library::{Library, Machine};
use hospes_core::runtime::{Liveness, RuntimeDir};
use hospes_core::usb_host;

/// How long the helper has to answer.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// The USB commands.
#[derive(Debug, Subcommand)]
pub enum UsbCommand {
    /// Give host USB devices to a VM: at once while it runs (and in its settings, for
    /// its next start), in its settings (vm.ron) while it is stopped.
    Usb {
        /// The VM's name or id.
        name: String,
        /// What to do.
        #[command(subcommand)]
        action: UsbAction,
    },
}

/// What to do with a VM's USB devices.
#[derive(Debug, Subcommand)]
pub enum UsbAction {
    /// List the devices the VM has (plugged in, when it runs) and those in its settings.
    List,
    /// Give the VM a host device: VID:PID (`046d:c52b`) or BUS/ADDR (`3/2`).
    Attach {
        /// VID:PID in hex, or BUS/ADDR in decimal, as `lsusb` prints them.
        device: UsbSelector,
    },
    /// Take a device away from the VM: VID:PID or BUS/ADDR.
    Detach {
        /// VID:PID in hex, or BUS/ADDR in decimal, as `lsusb` prints them.
        device: UsbSelector,
    },
}

/// A host USB device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsbSelector {
    /// By vendor and product id.
    Ids(UsbDevice),
    /// By bus number and device address.
    BusAddr(u8, u8),
}

impl FromStr for UsbSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some((bus, addr)) = text.split_once('/') {
            let number = |s: &str| s.parse::<u8>().ok().filter(|_| !s.is_empty());
            return match (number(bus), number(addr)) {
                (Some(bus), Some(addr)) => Ok(UsbSelector::BusAddr(bus, addr)),
                _ => Err(format!(
                    "bad USB device {text:?}: write BUS/ADDR in decimal, like 3/2 for \
                     lsusb's \"Bus 003 Device 002\""
                )),
            };
        }
        text.parse::<UsbDevice>()
            .map(UsbSelector::Ids)
            .map_err(|_| {
                format!(
                    "bad USB device {text:?}: write VID:PID in hex, like 046d:c52b, or \
                     BUS/ADDR in decimal, like 3/2"
                )
            })
    }
}

impl fmt::Display for UsbSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsbSelector::Ids(ids) => write!(f, "{ids}"),
            UsbSelector::BusAddr(bus, addr) => write!(f, "{bus:03}/{addr:03}"),
        }
    }
}

impl UsbSelector {
    /// The id the device gets in the VM: `usb-046d-c52b` or `usb-3-2`.
    fn qmp_id(self) -> String {
        match self {
            UsbSelector::Ids(ids) => host_device_id(ids.vendor, ids.product),
            UsbSelector::BusAddr(bus, addr) => format!("usb-{bus}-{addr}"),
        }
    }

    /// Whether the running VM's device `info` is this one.
    fn matches(self, info: &UsbInfo) -> bool {
        match self {
            UsbSelector::Ids(ids) => (info.vendorid, info.productid) == (ids.vendor, ids.product),
            UsbSelector::BusAddr(bus, addr) => info
                .host
                .is_some_and(|host| (host.bus, host.addr) == (bus, addr)),
        }
    }

    /// The vendor and product id, looking a BUS/ADDR up among the host's devices.
    fn ids_on_host(self) -> Result<UsbDevice, CtlError> {
        match self {
            UsbSelector::Ids(ids) => Ok(ids),
            UsbSelector::BusAddr(bus, addr) => usb_host::scan(&usb_host::sysfs_root())
                .ok()
                .and_then(|devices| {
                    devices
                        .into_iter()
                        .find(|d| d.bus_addr == Some((bus, addr)))
                })
                .map(|d| d.id)
                .ok_or_else(|| CtlError::NoHostUsb(self.to_string())),
        }
    }
}

/// Runs a USB subcommand.
pub fn run(command: UsbCommand, out: &Output) -> Result<(), CtlError> {
    let UsbCommand::Usb { name, action } = command;
    let library = Library::open_default()?;
    let machine = library.find(&name)?;
    let runtime = RuntimeDir::open(&machine.id)?;
    let running = !matches!(runtime.probe(), Liveness::Stale);
    let mut client = if running {
        Some(
            QmpClient::connect_with_timeout(&runtime.qmp_socket(), QMP_TIMEOUT)
                .map_err(|source| usb_error(&machine, source))?,
        )
    } else {
        None
    };
    match action {
        UsbAction::List => list(&machine, client.as_mut(), out),
        UsbAction::Attach { device } => attach(&library, &machine, client.as_mut(), device, out),
        UsbAction::Detach { device } => detach(&library, &machine, client.as_mut(), device, out),
    }
}

fn usb_error(machine: &Machine, source: hospes_core::control::client::ClientError) -> CtlError {
    CtlError::Usb {
        name: machine.name().to_owned(),
        source,
    }
}

/// The devices in vm.ron.
fn saved(machine: &Machine) -> Result<Vec<UsbDevice>, CtlError> {
    let path = machine.config_path();
    let text = hospes_core::config::read(&path)?;
    Ok(hospes_core::config::parse(&text, &path)?.usb)
}

fn list(machine: &Machine, client: Option<&mut QmpClient>, out: &Output) -> Result<(), CtlError> {
    let settings = saved(machine)?;
    let plugged = match client {
        Some(client) => Some(client.query_usb().map_err(|e| usb_error(machine, e))?),
        None => None,
    };
    let mut text = String::new();
    if let Some(plugged) = &plugged {
        if plugged.is_empty() {
            text.push_str(&format!("{} runs without USB devices\n", machine.name()));
        }
        for d in plugged {
            let host = d
                .host
                .map(|h| format!(", host bus {:03} device {:03}", h.bus, h.addr))
                .unwrap_or_default();
            text.push_str(&format!(
                "{}  {:04x}:{:04x}  port {}{host}  {}\n",
                d.id, d.vendorid, d.productid, d.port, d.description
            ));
        }
    }
    let names: Vec<String> = settings.iter().map(ToString::to_string).collect();
    if names.is_empty() {
        text.push_str("settings (vm.ron): no USB devices\n");
    } else {
        text.push_str(&format!("settings (vm.ron): {}\n", names.join(", ")));
    }
    out.emit(
        &text,
        &json!({
            "id": machine.id,
            "name": machine.name(),
            "running": plugged.is_some(),
            "devices": plugged,
            "settings": names,
        }),
    )
}

fn attach(
    library: &Library,
    machine: &Machine,
    client: Option<&mut QmpClient>,
    device: UsbSelector,
    out: &Output,
) -> Result<(), CtlError> {
    let running = client.is_some();
    let ids = match client {
        Some(client) => {
            let present = client.query_usb().map_err(|e| usb_error(machine, e))?;
            if present.iter().any(|d| device.matches(d)) {
                return Err(CtlError::UsbAlreadyAttached {
                    name: machine.name().to_owned(),
                    device: device.to_string(),
                });
            }
            let target = match device {
                UsbSelector::Ids(ids) => UsbTarget::VendorProduct(ids.vendor, ids.product),
                UsbSelector::BusAddr(bus, addr) => UsbTarget::BusAddr(bus, addr),
            };
            let id = device.qmp_id();
            client
                .usb_add(&UsbAddRequest {
                    id: Some(id.clone()),
                    target,
                })
                .map_err(|e| usb_error(machine, e))?;
            let added = client.query_usb().map_err(|e| usb_error(machine, e))?;
            added
                .iter()
                .find(|d| d.id == id)
                .map(|d| UsbDevice {
                    vendor: d.vendorid,
                    product: d.productid,
                })
                .map_or_else(|| device.ids_on_host(), Ok)?
        }
        None => device.ids_on_host()?,
    };
    let mut settings = saved(machine)?;
    settings.push(ids);
    library.set_usb(&machine.id, &settings)?;
    let name = machine.name();
    let text = if running {
        format!("{name}: {ids} is plugged in (and kept in its settings)")
    } else {
        format!("{name} is stopped: it will start with {ids} plugged in")
    };
    out.emit(
        &text,
        &json!({ "id": machine.id, "name": name, "running": running, "device": ids.to_string() }),
    )
}

fn detach(
    library: &Library,
    machine: &Machine,
    client: Option<&mut QmpClient>,
    device: UsbSelector,
    out: &Output,
) -> Result<(), CtlError> {
    let running = client.is_some();
    let mut settings = saved(machine)?;
    let ids = match client {
        Some(client) => {
            let present = client.query_usb().map_err(|e| usb_error(machine, e))?;
            let found = present.iter().find(|d| device.matches(d));
            match found {
                Some(info) => {
                    client
                        .device_del(&info.id)
                        .map_err(|e| usb_error(machine, e))?;
                    UsbDevice {
                        vendor: info.vendorid,
                        product: info.productid,
                    }
                }
                // Not plugged in: perhaps only in the settings.
                None => match device {
                    UsbSelector::Ids(ids) if settings.contains(&ids) => ids,
                    _ => return Err(not_attached(machine, device)),
                },
            }
        }
        None => match device {
            UsbSelector::Ids(ids) => ids,
            UsbSelector::BusAddr(..) => device.ids_on_host()?,
        },
    };
    let before = settings.len();
    settings.retain(|d| *d != ids);
    if settings.len() != before {
        library.set_usb(&machine.id, &settings)?;
    } else if !running {
        return Err(not_attached(machine, device));
    }
    let name = machine.name();
    let text = if running {
        format!("{name}: {ids} is unplugged (and gone from its settings)")
    } else {
        format!("{name} is stopped: it will start without {ids}")
    };
    out.emit(
        &text,
        &json!({ "id": machine.id, "name": name, "running": running, "device": ids.to_string() }),
    )
}

fn not_attached(machine: &Machine, device: UsbSelector) -> CtlError {
    CtlError::UsbNotAttached {
        name: machine.name().to_owned(),
        device: device.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_named_by_ids_or_by_bus_and_address_as_lsusb_prints_them() {
        let ids = UsbSelector::Ids("046d:c52b".parse().unwrap());
        assert_eq!("046d:c52b".parse::<UsbSelector>(), Ok(ids));
        assert_eq!("3/2".parse::<UsbSelector>(), Ok(UsbSelector::BusAddr(3, 2)));
        assert_eq!(
            "003/002".parse::<UsbSelector>(),
            Ok(UsbSelector::BusAddr(3, 2))
        );
        for bad in ["46d:c52b", "3-2", "3/", "/2", "300/2", "x/y", "", "046d"] {
            assert!(bad.parse::<UsbSelector>().is_err(), "{bad}");
        }
        assert_eq!(UsbSelector::BusAddr(3, 2).to_string(), "003/002");
        assert_eq!(UsbSelector::BusAddr(3, 2).qmp_id(), "usb-3-2");
        assert_eq!(ids.qmp_id(), "usb-046d-c52b");
    }
}
