//! The USB part of the settings pane, without GTK: which devices the pane lists and how a
//! typed id is checked.
//!
//! The list is the host's USB devices (read from sysfs by
//! [`hospes_core::usb_host`]), one row per vendor:product id, each switched on when
//! `vm.ron` names it; then the devices `vm.ron` names that are not plugged in now.

use hospes_core::config::UsbDevice;
use hospes_core::usb_host::HostUsbDevice;

use crate::i18n::gettext_f;

/// A USB device the pane lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbChoice {
    /// Vendor and product id.
    pub id: UsbDevice,
    /// The product name the device reports, if plugged in and it reports one.
    pub product: Option<String>,
    /// The maker's name the device reports, if plugged in and it reports one.
    pub manufacturer: Option<String>,
    /// Plugged into this computer now.
    pub connected: bool,
    /// Handed to the machine (listed in `vm.ron`).
    pub chosen: bool,
}

impl UsbChoice {
    /// A device named only by its id, not plugged in: one from `vm.ron` or typed by hand.
    pub fn not_connected(id: UsbDevice) -> UsbChoice {
        UsbChoice {
            id,
            product: None,
            manufacturer: None,
            connected: false,
            chosen: true,
        }
    }
}

/// The rows for a machine whose `vm.ron` lists `saved`, on a host with `host` plugged in.
/// Two plugged-in devices with the same id share a row: `vm.ron` tells them apart by id only.
pub fn choices(saved: &[UsbDevice], host: &[HostUsbDevice]) -> Vec<UsbChoice> {
    let mut rows: Vec<UsbChoice> = Vec::new();
    for device in host {
        if rows.iter().any(|row| row.id == device.id) {
            continue;
        }
        rows.push(UsbChoice {
            id: device.id,
            product: device.product.clone(),
            manufacturer: device.manufacturer.clone(),
            connected: true,
            chosen: saved.contains(&device.id),
        });
    }
    for id in saved {
        if !rows.iter().any(|row| row.id == *id) {
            rows.push(UsbChoice::not_connected(*id));
        }
    }
    rows
}

/// A row of the list as it stands: the device, whether it is plugged in (its row has a
/// switch) and whether it is handed to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub id: UsbDevice,
    pub connected: bool,
    pub chosen: bool,
}

/// A change to the list after the host's devices changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsbChange {
    /// A device was plugged in: a new row, switched off.
    Add(UsbChoice),
    /// The row of this id becomes this one: a chosen device was unplugged (it stays
    /// listed, not connected) or a listed one was plugged in (a switch, on).
    Replace(UsbChoice),
    /// A device that was not chosen was unplugged: its row goes.
    Remove(UsbDevice),
}

/// What changes in the list `listed` when the host has `host` plugged in now. A choice the
/// person made is never dropped: an unplugged device they switched on stays, as one the
/// machine lists that is not connected.
pub fn replug(listed: &[Listed], host: &[HostUsbDevice]) -> Vec<UsbChange> {
    let plugged = |id: UsbDevice| host.iter().find(|device| device.id == id);
    let mut changes = Vec::new();
    for row in listed {
        match (row.connected, plugged(row.id)) {
            (true, None) if row.chosen => {
                changes.push(UsbChange::Replace(UsbChoice::not_connected(row.id)));
            }
            (true, None) => changes.push(UsbChange::Remove(row.id)),
            (false, Some(device)) => changes.push(UsbChange::Replace(UsbChoice {
                id: device.id,
                product: device.product.clone(),
                manufacturer: device.manufacturer.clone(),
                connected: true,
                chosen: true,
            })),
            _ => {}
        }
    }
    for device in host {
        let known = listed.iter().any(|row| row.id == device.id)
            || changes
                .iter()
                .any(|change| matches!(change, UsbChange::Add(c) if c.id == device.id));
        if !known {
            changes.push(UsbChange::Add(UsbChoice {
                id: device.id,
                product: device.product.clone(),
                manufacturer: device.manufacturer.clone(),
                connected: true,
                chosen: false,
            }));
        }
    }
    changes
}

/// The id in `text` ("046d:c52b", spaces around allowed), or why it is not one, for a person.
/// The same rule as `vm.ron` ([`UsbDevice`]'s parser), with its message translated.
pub fn parse_id(text: &str) -> Result<UsbDevice, String> {
    let text = text.trim();
    text.parse().map_err(|_| {
        gettext_f(
            // Translators: {id} is what the person typed; keep 046d:c52b as it is.
            "Bad USB device “{id}” (write vendor:product in hex, like 046d:c52b)",
            &[("id", text)],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> UsbDevice {
        text.parse().unwrap()
    }

    fn plugged(text: &str, port: &str, product: Option<&str>) -> HostUsbDevice {
        HostUsbDevice {
            id: id(text),
            port: port.into(),
            bus_addr: None,
            manufacturer: None,
            product: product.map(Into::into),
        }
    }

    #[test]
    fn host_devices_come_first_then_saved_ones_not_plugged_in() {
        let host = [
            plugged("046d:c52b", "1-1", Some("USB Receiver")),
            plugged("0781:5581", "1-2", None),
        ];
        let rows = choices(&[id("1050:0407"), id("0781:5581")], &host);
        let summary: Vec<(String, bool, bool)> = rows
            .iter()
            .map(|row| (row.id.to_string(), row.connected, row.chosen))
            .collect();
        assert_eq!(
            summary,
            [
                ("046d:c52b".into(), true, false),
                ("0781:5581".into(), true, true),
                ("1050:0407".into(), false, true),
            ]
        );
        assert_eq!(rows[0].product.as_deref(), Some("USB Receiver"));
    }

    #[test]
    fn two_plugged_in_devices_with_one_id_share_a_row() {
        let host = [
            plugged("0781:5581", "1-1", Some("Ultra")),
            plugged("0781:5581", "1-2", Some("Ultra")),
        ];
        assert_eq!(choices(&[], &host).len(), 1);
    }

    #[test]
    fn plugging_and_unplugging_keeps_what_the_person_chose() {
        let listed = [
            // Chosen, unplugged now: stays, not connected.
            Listed {
                id: id("046d:c52b"),
                connected: true,
                chosen: true,
            },
            // Not chosen, unplugged now: goes.
            Listed {
                id: id("0781:5581"),
                connected: true,
                chosen: false,
            },
            // Saved, not connected, plugged in now: gets its switch, on.
            Listed {
                id: id("1050:0407"),
                connected: false,
                chosen: true,
            },
            // Plugged in and still there: unchanged.
            Listed {
                id: id("05ac:12a8"),
                connected: true,
                chosen: false,
            },
        ];
        let host = [
            plugged("1050:0407", "1-3", Some("Security Key")),
            plugged("05ac:12a8", "1-4", Some("iPhone")),
            plugged("04f9:0042", "2-1", Some("Printer")),
            plugged("04f9:0042", "2-2", Some("Printer")),
        ];
        let changes = replug(&listed, &host);
        assert_eq!(
            changes,
            [
                UsbChange::Replace(UsbChoice::not_connected(id("046d:c52b"))),
                UsbChange::Remove(id("0781:5581")),
                UsbChange::Replace(UsbChoice {
                    id: id("1050:0407"),
                    product: Some("Security Key".into()),
                    manufacturer: None,
                    connected: true,
                    chosen: true,
                }),
                UsbChange::Add(UsbChoice {
                    id: id("04f9:0042"),
                    product: Some("Printer".into()),
                    manufacturer: None,
                    connected: true,
                    chosen: false,
                }),
            ]
        );
        let unchanged = [Listed {
            id: id("05ac:12a8"),
            connected: true,
            chosen: true,
        }];
        assert_eq!(replug(&unchanged, &host[1..2]), []);
    }

    #[test]
    fn a_typed_id_is_checked_like_vm_ron() {
        assert_eq!(parse_id(" 046D:c52b ").unwrap(), id("046d:c52b"));
        for bad in ["", "046d", "46d:c52b", "046d:c52bx", "zzzz:0001"] {
            let err = parse_id(bad).unwrap_err();
            assert!(err.contains("vendor:product"), "{bad:?}: {err}");
        }
    }
}
