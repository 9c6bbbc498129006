//! USB hot-plug over a real QMP socket against the fake VM: `getfd` with a descriptor
//! passed by `SCM_RIGHTS`, `device_add`, `query-usb`, `device_del` and its
//! `DEVICE_DELETED` event, through the typed client the app and `hospesctl` use.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hospes_core::control::client::{ClientError, QmpClient, UsbAddRequest, UsbTarget};
use hospes_core::control::fake::FakeVm;
use hospes_core::control::usb::{UsbHostAddr, UsbSpeed};
use hospes_core::control::{ErrorClass, QmpServerHandle, VmControl};
use serde_json::json;

struct Fixture {
    dir: tempfile::TempDir,
    path: PathBuf,
    vm: Arc<FakeVm>,
    _server: QmpServerHandle,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let (vm, server) = FakeVm::serve(&path).unwrap();
    Fixture {
        dir,
        path,
        vm,
        _server: server,
    }
}

fn command_error(result: Result<impl std::fmt::Debug, ClientError>) -> (ErrorClass, String) {
    match result {
        Err(ClientError::Command(e)) => (e.class, e.desc),
        other => panic!("expected a command error, got {other:?}"),
    }
}

#[test]
fn a_host_device_added_by_ids_is_listed_then_deleted_with_an_event() {
    let f = start();
    let mut client = QmpClient::connect(&f.path).unwrap();
    client
        .usb_add(&UsbAddRequest {
            id: None,
            target: UsbTarget::VendorProduct(0x046d, 0xc52b),
        })
        .unwrap();
    let listed = client.query_usb().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, "usb0", "an id is made up when none is given");
    assert_eq!((listed[0].vendorid, listed[0].productid), (0x046d, 0xc52b));
    assert_eq!(listed[0].host, Some(UsbHostAddr { bus: 3, addr: 2 }));
    assert_eq!(listed[0].speed, UsbSpeed::Full);
    assert_eq!(listed[0].description, "USB Receiver");

    client.device_del("usb0").unwrap();
    let event = client
        .wait_event("DEVICE_DELETED", Duration::from_secs(5))
        .unwrap();
    assert_eq!(event.data["device"], "usb0");
    assert_eq!(event.data["path"], "/machine/peripheral/usb0");
    assert!(client.query_usb().unwrap().is_empty());
    assert!(f.vm.query_usb().is_empty());
}

#[test]
fn a_host_device_added_by_bus_and_address_keeps_its_id() {
    let f = start();
    let mut client = QmpClient::connect(&f.path).unwrap();
    client
        .usb_add(&UsbAddRequest {
            id: Some("stick".into()),
            target: UsbTarget::BusAddr(1, 5),
        })
        .unwrap();
    let listed = client.query_usb().unwrap();
    assert_eq!(listed[0].id, "stick");
    assert_eq!((listed[0].vendorid, listed[0].productid), (0x0781, 0x5581));
    let (class, desc) = command_error(client.usb_add(&UsbAddRequest {
        id: Some("stick".into()),
        target: UsbTarget::BusAddr(3, 2),
    }));
    assert_eq!(class, ErrorClass::GenericError);
    assert_eq!(desc, "Duplicate ID 'stick' for device");
    assert_eq!(client.query_usb().unwrap().len(), 1);
}

#[test]
fn a_descriptor_passed_with_getfd_reaches_the_vm_with_device_add() {
    let f = start();
    let node = f.dir.path().join("usbfs-node");
    std::fs::write(&node, b"pretend /dev/bus/usb/003/002").unwrap();
    let file = std::fs::File::open(&node).unwrap();
    let mut client = QmpClient::connect(&f.path).unwrap();
    client
        .usb_add_fd(Some("portal0"), file.as_fd(), Some((0x046d, 0xc52b)))
        .unwrap();
    drop(file);
    let passed =
        f.vm.usb_passed_file("portal0")
            .expect("the VM got a descriptor");
    let original = std::fs::metadata(&node).unwrap();
    assert_eq!(
        (passed.dev(), passed.ino()),
        (original.dev(), original.ino()),
        "the VM holds the very file the client opened"
    );
    let listed = client.query_usb().unwrap();
    assert_eq!(listed[0].id, "portal0");
    assert_eq!(listed[0].vendorid, 0x046d);
}

#[test]
fn getfd_without_a_descriptor_and_unknown_fd_names_are_refused() {
    let f = start();
    let mut client = QmpClient::connect(&f.path).unwrap();
    let (_, desc) = command_error(client.execute("getfd", Some(json!({"fdname": "x"}))));
    assert_eq!(desc, "No file descriptor supplied via SCM_RIGHTS");
    let (_, desc) = command_error(client.usb_add(&UsbAddRequest {
        id: None,
        target: UsbTarget::Fd {
            name: "never-passed".into(),
            vendor_product: None,
        },
    }));
    assert!(desc.contains("'never-passed'"), "{desc}");
    let (_, desc) = command_error(client.closefd("never-passed"));
    assert!(desc.contains("not found"), "{desc}");

    // A descriptor closed with closefd can no longer be used.
    let null = std::fs::File::open("/dev/null").unwrap();
    client.getfd("dev", null.as_fd()).unwrap();
    client.closefd("dev").unwrap();
    let (_, desc) = command_error(client.usb_add(&UsbAddRequest {
        id: None,
        target: UsbTarget::Fd {
            name: "dev".into(),
            vendor_product: None,
        },
    }));
    assert!(desc.contains("'dev'"), "{desc}");
    assert!(f.vm.query_usb().is_empty());
}

#[test]
fn descriptors_belong_to_the_connection_that_passed_them() {
    let f = start();
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut first = QmpClient::connect(&f.path).unwrap();
    first.getfd("mine", null.as_fd()).unwrap();
    let mut second = QmpClient::connect(&f.path).unwrap();
    let (_, desc) = command_error(second.closefd("mine"));
    assert!(desc.contains("'mine'"), "{desc}");
    first.closefd("mine").unwrap();
}

#[test]
fn missing_devices_and_other_drivers_get_clear_errors() {
    let f = start();
    let mut client = QmpClient::connect(&f.path).unwrap();
    let (class, desc) = command_error(client.device_del("usb7"));
    assert_eq!(class, ErrorClass::DeviceNotFound);
    assert_eq!(desc, "Device 'usb7' not found");
    let (_, desc) = command_error(client.usb_add(&UsbAddRequest {
        id: None,
        target: UsbTarget::VendorProduct(0x1234, 0x5678),
    }));
    assert_eq!(desc, "no host USB device 1234:5678");
    let (_, desc) = command_error(client.execute(
        "device_add",
        Some(json!({"driver": "virtio-net-pci", "id": "n"})),
    ));
    assert!(
        desc.contains("'virtio-net-pci'") && desc.contains("usb-host"),
        "the error names the supported drivers: {desc}"
    );
    assert!(f.vm.query_usb().is_empty());
}

#[test]
fn emulated_tablet_and_keyboard_plug_into_free_ports() {
    let f = start();
    let mut client = QmpClient::connect(&f.path).unwrap();
    for driver in ["usb-tablet", "usb-kbd"] {
        client
            .execute(
                "device_add",
                Some(json!({"driver": driver, "bus": "xhci.0"})),
            )
            .unwrap();
    }
    let listed = client.query_usb().unwrap();
    let summary: Vec<_> = listed
        .iter()
        .map(|d| (d.id.as_str(), d.port.as_str(), d.host))
        .collect();
    assert_eq!(summary, [("usb0", "1", None), ("usb1", "2", None)]);
    assert_eq!(listed[0].description, "QEMU USB Tablet");
}
