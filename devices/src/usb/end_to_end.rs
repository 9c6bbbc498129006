//! A host device passed through, end to end on the controller: the xHCI driven as a guest
//! driver would ([`xhci::testing::MockDriver`]) with [`passthrough::UsbPassthrough`] in a
//! port over the scripted usbfs backend ([`passthrough::testing::ScriptedHostUsb`]).

use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::passthrough::UsbPassthrough;
use super::passthrough::testing::{PRODUCT, ScriptedHostUsb, VENDOR};
use super::xhci::context::ep_type;
use super::xhci::port::{PORTSC_CCS, PORTSC_CSC};
use super::xhci::testing::{DATA, MEM_SIZE, MockDriver};
use super::xhci::trb::{CompletionCode, Trb, trb_type};
use super::{SetupPacket, descriptor, request};
use crate::bus::lock;

const WAIT: Duration = Duration::from_secs(5);
/// The bulk IN endpoint's Device Context Index (xHCI 1.2 §4.5.1: 2 * number + 1 for IN).
const BULK_IN_DCI: u8 = 3;

fn code(e: &Trb) -> u8 {
    (e.status >> 24) as u8
}

/// The next Transfer Event, applying late completions as the helper's worker does.
fn transfer_event(d: &mut MockDriver) -> Trb {
    loop {
        let e = d.wait_event(WAIT).expect("a transfer event within 5 s");
        if e.trb_type() == trb_type::TRANSFER_EVENT {
            return e;
        }
    }
}

/// A controller with the scripted stick plugged in and addressed: (driver, stick, port,
/// slot).
fn plugged() -> (MockDriver, Arc<ScriptedHostUsb>, u8, u8) {
    let mut d = MockDriver::new(MEM_SIZE);
    d.start();
    let stick = Arc::new(ScriptedHostUsb::mass_storage());
    let device = UsbPassthrough::new(stick.clone()).expect("passthrough");
    let (port, slot) = d.plug(Box::new(device));
    (d, stick, port, slot)
}

#[test]
fn a_passed_through_device_enumerates_configures_and_moves_bulk_data_through_the_xhci() {
    let (mut d, stick, _, slot) = plugged();
    let get_device = SetupPacket {
        request_type: 0x80,
        request: request::GET_DESCRIPTOR,
        value: u16::from(descriptor::DEVICE) << 8,
        index: 0,
        length: 18,
    };
    d.control(slot, get_device, DATA);
    assert_eq!(code(&transfer_event(&mut d)), CompletionCode::Success as u8);
    let mut desc = [0u8; 18];
    d.mem.read_slice(&mut desc, GuestAddress(DATA)).unwrap();
    assert_eq!(u16::from_le_bytes([desc[8], desc[9]]), VENDOR);
    assert_eq!(u16::from_le_bytes([desc[10], desc[11]]), PRODUCT);

    let set_configuration = SetupPacket {
        request_type: 0x00,
        request: request::SET_CONFIGURATION,
        value: 1,
        index: 0,
        length: 0,
    };
    d.control(slot, set_configuration, 0);
    assert_eq!(code(&transfer_event(&mut d)), CompletionCode::Success as u8);
    assert_eq!(
        stick.claimed(),
        [0],
        "configuration 1 claims interface 0 on the host"
    );

    assert_eq!(
        d.configure_endpoints(slot, &[(BULK_IN_DCI, ep_type::BULK_IN, 512)]),
        CompletionCode::Success as u8
    );
    let sector: Vec<u8> = (0..512u32).map(|i| (i * 7) as u8).collect();
    stick.push_bulk_in(sector.clone());
    d.normal(slot, BULK_IN_DCI, DATA, 512);
    let e = transfer_event(&mut d);
    assert_eq!(code(&e), CompletionCode::Success as u8);
    let mut got = vec![0u8; 512];
    d.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, sector, "the host's bytes land in guest memory");
}

#[test]
fn a_device_leaving_the_host_fails_its_transfer_and_its_port_disconnects() {
    let (mut d, stick, port, slot) = plugged();
    let set_configuration = SetupPacket {
        request_type: 0x00,
        request: request::SET_CONFIGURATION,
        value: 1,
        index: 0,
        length: 0,
    };
    d.control(slot, set_configuration, 0);
    assert_eq!(code(&transfer_event(&mut d)), CompletionCode::Success as u8);
    d.configure_endpoints(slot, &[(BULK_IN_DCI, ep_type::BULK_IN, 512)]);
    d.normal(slot, BULK_IN_DCI, DATA, 512);
    assert!(
        d.events().is_empty(),
        "nothing to read yet: the transfer waits"
    );

    stick.vanish();
    let e = transfer_event(&mut d);
    assert_ne!(code(&e), CompletionCode::Success as u8, "the read fails");
    let gone = lock(&d.xhci)
        .ports()
        .find(|(p, _)| *p == port)
        .map(|(_, dev)| dev.is_gone());
    assert_eq!(gone, Some(true), "the model reports the device gone");

    // What the helper's hot-plug thread does on the gone signal.
    let device = lock(&d.xhci)
        .detach(port)
        .expect("the device was in its port");
    assert!(device.is_gone());
    let events = d.events();
    assert!(
        events
            .iter()
            .any(|e| e.trb_type() == trb_type::PORT_STATUS_CHANGE_EVENT
                && e.param >> 24 == u64::from(port)),
        "the guest hears about the port"
    );
    let portsc = d.portsc(port);
    assert_eq!(portsc & PORTSC_CCS, 0, "nothing connected");
    assert_ne!(portsc & PORTSC_CSC, 0, "connect status changed");
}
