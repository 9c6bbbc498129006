//! The HID devices driven as the xHCI controller would: control transfers in the order
//! Linux's and Windows's hub drivers enumerate, interrupt IN transfers the way usbhid and
//! HidUsb poll, input from a client thread.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use super::keyboard::{self, REPORT_LEN as KEYBOARD_REPORT_LEN};
use super::tablet::{self, REPORT_LEN as TABLET_REPORT_LEN};
use super::*;
use crate::usb::{TransferResult, TransferStatus, UsbDevice, UsbSpeed};

/// Where a transfer's result lands once the device completes it.
pub(crate) type Slot = Arc<Mutex<Option<TransferResult>>>;

fn slot_completion() -> (Slot, Completion) {
    let slot: Slot = Arc::new(Mutex::new(None));
    let s = slot.clone();
    (slot, Completion::new(move |r| *s.lock().unwrap() = Some(r)))
}

fn taken(slot: &Slot) -> Option<TransferResult> {
    slot.lock().unwrap().take()
}

/// A control transfer with `setup`, room for `room` bytes (IN) or `data` (OUT); the
/// result, which HID devices give at once.
fn control_with_room(
    dev: &mut dyn UsbDevice,
    setup: SetupPacket,
    data: &[u8],
    room: usize,
) -> TransferResult {
    let (slot, done) = slot_completion();
    dev.submit(
        Transfer {
            endpoint: 0,
            kind: TransferKind::Control(setup),
            data: data.to_vec(),
            length: if setup.is_in() { room } else { data.len() },
        },
        done,
    );
    taken(&slot).expect("control transfers complete at once")
}

fn setup(request_type: u8, request: u8, value: u16, index: u16, length: u16) -> SetupPacket {
    SetupPacket {
        request_type,
        request,
        value,
        index,
        length,
    }
}

/// A control read of at most `length` bytes: the data, or the status it failed with.
fn read(
    dev: &mut dyn UsbDevice,
    request_type: u8,
    request: u8,
    value: u16,
    index: u16,
    length: u16,
) -> Result<Vec<u8>, TransferStatus> {
    let s = setup(request_type, request, value, index, length);
    let r = control_with_room(dev, s, &[], usize::from(length));
    match r.status {
        TransferStatus::Success => {
            assert_eq!(r.actual, r.data.len());
            assert!(r.data.len() <= usize::from(length));
            Ok(r.data)
        }
        status => Err(status),
    }
}

/// A control write (no data stage unless `data`): Ok or the failing status.
fn write(
    dev: &mut dyn UsbDevice,
    request_type: u8,
    request: u8,
    value: u16,
    index: u16,
    data: &[u8],
) -> Result<(), TransferStatus> {
    let s = setup(request_type, request, value, index, data.len() as u16);
    let r = control_with_room(dev, s, data, 0);
    match r.status {
        TransferStatus::Success => {
            assert_eq!(r.actual, data.len());
            Ok(())
        }
        status => Err(status),
    }
}

fn get_descriptor(dev: &mut dyn UsbDevice, kind: u8, index: u8, length: u16) -> Vec<u8> {
    read(
        dev,
        0x80,
        request::GET_DESCRIPTOR,
        u16::from(kind) << 8 | u16::from(index),
        if kind == descriptor::STRING {
            0x0409
        } else {
            0
        },
        length,
    )
    .unwrap_or_else(|e| panic!("descriptor {kind} {index}: {e:?}"))
}

/// An interrupt IN transfer of `length` on endpoint `endpoint`; its slot fills when a
/// report comes.
pub(crate) fn poll_endpoint(dev: &mut dyn UsbDevice, endpoint: u8, length: usize) -> Slot {
    let (slot, done) = slot_completion();
    dev.submit(
        Transfer {
            endpoint,
            kind: TransferKind::Interrupt,
            data: Vec::new(),
            length,
        },
        done,
    );
    slot
}

pub(crate) fn poll(dev: &mut dyn UsbDevice) -> Slot {
    poll_endpoint(dev, INTERRUPT_IN, 64)
}

fn report(slot: &Slot) -> Vec<u8> {
    let r = taken(slot).expect("a report");
    assert_eq!(r.status, TransferStatus::Success);
    assert_eq!(r.actual, r.data.len());
    r.data
}

fn utf16(d: &[u8]) -> String {
    assert_eq!(usize::from(d[0]), d.len());
    assert_eq!(d[1], descriptor::STRING);
    let units: Vec<u16> = d[2..]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).unwrap()
}

/// What enumeration found.
struct Enumerated {
    device: Vec<u8>,
    config: Vec<u8>,
    report_descriptor: Vec<u8>,
    product: String,
}

/// The enumeration Linux's hub driver and usbhid (and Windows's usbhub and HidUsb, which
/// start with a 64-byte device descriptor read) carry out, checking each answer; the
/// device ends configured with idle 0 and, for a boot device, the boot protocol.
fn enumerate(dev: &mut dyn UsbDevice) -> Enumerated {
    dev.reset();
    // Windows: 64 bytes of device descriptor, answered short.
    assert_eq!(get_descriptor(dev, descriptor::DEVICE, 0, 64).len(), 18);
    // Linux: 8 bytes for bMaxPacketSize0, then the whole descriptor.
    let head = get_descriptor(dev, descriptor::DEVICE, 0, 8);
    assert_eq!(head.len(), 8);
    assert_eq!((head[0], head[1], head[7]), (18, descriptor::DEVICE, 64));
    let device = get_descriptor(dev, descriptor::DEVICE, 0, 18);
    assert_eq!(&device[..8], &head[..]);
    let config_head = get_descriptor(dev, descriptor::CONFIGURATION, 0, 9);
    assert_eq!(config_head.len(), 9);
    let total = u16::from_le_bytes([config_head[2], config_head[3]]);
    let config = get_descriptor(dev, descriptor::CONFIGURATION, 0, total);
    assert_eq!(config.len(), usize::from(total));
    // Windows asks for 255 bytes and takes what comes.
    assert_eq!(
        get_descriptor(dev, descriptor::CONFIGURATION, 0, 255),
        config
    );
    let langs = get_descriptor(dev, descriptor::STRING, 0, 255);
    assert_eq!(langs, [4, descriptor::STRING, 0x09, 0x04]);
    let manufacturer = utf16(&get_descriptor(dev, descriptor::STRING, device[14], 255));
    assert_eq!(manufacturer, "Hospes");
    let product = utf16(&get_descriptor(dev, descriptor::STRING, device[15], 255));
    assert_eq!(
        utf16(&get_descriptor(dev, descriptor::STRING, device[16], 255)),
        "1"
    );
    // Windows reads the string's length first, then the string.
    let product_head = get_descriptor(dev, descriptor::STRING, device[15], 2);
    assert_eq!(usize::from(product_head[0]), 2 + 2 * product.len());

    assert_eq!(
        read(dev, 0x80, request::GET_CONFIGURATION, 0, 0, 1),
        Ok(vec![0])
    );
    write(dev, 0x00, request::SET_CONFIGURATION, 1, 0, &[]).unwrap();
    assert_eq!(
        read(dev, 0x80, request::GET_CONFIGURATION, 0, 0, 1),
        Ok(vec![1])
    );

    // usbhid: SET_IDLE 0 then the report descriptor, asked for by its exact length.
    write(dev, 0x21, hid_request::SET_IDLE, 0, 0, &[]).unwrap();
    assert_eq!(read(dev, 0xa1, hid_request::GET_IDLE, 0, 0, 1), Ok(vec![0]));
    let hid = read(dev, 0x81, request::GET_DESCRIPTOR, 0x2100, 0, 9).unwrap();
    assert_eq!(&hid[..], &config[18..27]);
    let report_len = u16::from_le_bytes([hid[7], hid[8]]);
    let report_descriptor = read(
        dev,
        0x81,
        request::GET_DESCRIPTOR,
        0x2200,
        0,
        report_len + 64,
    )
    .expect("report descriptor");
    assert_eq!(report_descriptor.len(), usize::from(report_len));
    // A boot device is put in the boot protocol by firmware and by Linux's usbkbd.
    if config[9 + 6] == SUBCLASS_BOOT {
        write(dev, 0x21, hid_request::SET_PROTOCOL, 0, 0, &[]).unwrap();
        assert_eq!(
            read(dev, 0xa1, hid_request::GET_PROTOCOL, 0, 0, 1),
            Ok(vec![0])
        );
        write(dev, 0x21, hid_request::SET_PROTOCOL, 1, 0, &[]).unwrap();
        assert_eq!(
            read(dev, 0xa1, hid_request::GET_PROTOCOL, 0, 0, 1),
            Ok(vec![1])
        );
    }
    Enumerated {
        device,
        config,
        report_descriptor,
        product,
    }
}

/// A device enumerated and configured, never polled.
pub(crate) fn configure(dev: &mut dyn UsbDevice) {
    enumerate(dev);
}

/// A configured device, polled once (that transfer still waiting in the slot).
pub(crate) fn activate(dev: &mut dyn UsbDevice) -> Slot {
    enumerate(dev);
    poll(dev)
}

#[test]
fn the_tablet_enumerates_as_hospes_full_speed_hid_pointer() {
    let mut dev = UsbTablet::new();
    assert_eq!(dev.speed(), UsbSpeed::Full);
    assert_eq!(dev.description(), "Hospes USB Tablet");
    let e = enumerate(&mut dev);
    assert_eq!(&e.device[8..12], &[0x09, 0x12, 0x01, 0x77]);
    assert_eq!(&e.device[2..4], &[0x00, 0x02], "bcdUSB 2.00");
    assert_eq!(e.product, "Hospes USB Tablet");
    assert_eq!(&e.config[14..18], &[CLASS_HID, 0, 0, 0], "class 3, no boot");
    assert_eq!(e.report_descriptor, tablet::REPORT_DESCRIPTOR);
    // Not a boot device: no protocol to choose.
    assert_eq!(
        write(&mut dev, 0x21, hid_request::SET_PROTOCOL, 0, 0, &[]),
        Err(TransferStatus::Stall)
    );
}

#[test]
fn the_keyboard_enumerates_as_a_boot_keyboard() {
    let mut dev = UsbKeyboard::new();
    assert_eq!(dev.speed(), UsbSpeed::Full);
    assert_eq!(dev.description(), "Hospes USB Keyboard");
    let e = enumerate(&mut dev);
    assert_eq!(&e.device[8..12], &[0x09, 0x12, 0x02, 0x77]);
    assert_eq!(e.product, "Hospes USB Keyboard");
    assert_eq!(&e.config[14..17], &[CLASS_HID, 1, 1], "boot keyboard");
    assert_eq!(e.report_descriptor, keyboard::REPORT_DESCRIPTOR);
}

/// Walks a configuration descriptor: returns the descriptors it holds, checking that their
/// lengths add up to wTotalLength.
fn split_configuration(config: &[u8]) -> Vec<&[u8]> {
    let total = usize::from(u16::from_le_bytes([config[2], config[3]]));
    assert_eq!(total, config.len(), "wTotalLength");
    let mut parts = Vec::new();
    let mut at = 0;
    while at < config.len() {
        let len = usize::from(config[at]);
        assert!(len >= 2, "bLength {len} at {at}");
        assert!(
            at + len <= config.len(),
            "descriptor at {at} runs past the end"
        );
        parts.push(&config[at..at + len]);
        at += len;
    }
    assert_eq!(at, total);
    parts
}

#[test]
fn configuration_descriptors_hold_together() {
    for (identity, report_len) in [
        (&tablet::IDENTITY, TABLET_REPORT_LEN),
        (&keyboard::IDENTITY, KEYBOARD_REPORT_LEN),
    ] {
        let device = identity.device_descriptor();
        assert_eq!(device.len(), usize::from(device[0]));
        assert_eq!(device[17], 1, "one configuration");
        let config = identity.configuration_descriptor();
        let parts = split_configuration(&config);
        let kinds: Vec<u8> = parts.iter().map(|p| p[1]).collect();
        assert_eq!(
            kinds,
            [
                descriptor::CONFIGURATION,
                descriptor::INTERFACE,
                descriptor::HID,
                descriptor::ENDPOINT
            ]
        );
        let (conf, interface, hid, endpoint) = (parts[0], parts[1], parts[2], parts[3]);
        assert_eq!(conf.len(), 9);
        let interfaces = kinds
            .iter()
            .filter(|&&k| k == descriptor::INTERFACE)
            .count();
        assert_eq!(usize::from(conf[4]), interfaces, "bNumInterfaces");
        assert_eq!(conf[5], 1, "bConfigurationValue");
        assert_ne!(conf[7] & 0x80, 0, "bmAttributes bit 7");
        let endpoints = kinds.iter().filter(|&&k| k == descriptor::ENDPOINT).count();
        assert_eq!(usize::from(interface[4]), endpoints, "bNumEndpoints");
        assert_eq!(interface[5], CLASS_HID);
        assert_eq!(hid.len(), 9);
        assert_eq!(u16::from_le_bytes([hid[2], hid[3]]), 0x0111, "HID 1.11");
        assert_eq!(hid[5], 1);
        assert_eq!(hid[6], descriptor::HID_REPORT);
        assert_eq!(
            usize::from(u16::from_le_bytes([hid[7], hid[8]])),
            identity.report_descriptor.len()
        );
        assert_eq!(endpoint.len(), 7);
        assert_eq!(endpoint[2], INTERRUPT_IN);
        assert_eq!(endpoint[3] & 3, 3, "interrupt");
        let max_packet = usize::from(u16::from_le_bytes([endpoint[4], endpoint[5]]));
        assert!(max_packet >= report_len && max_packet <= 64);
        assert!((1..=255).contains(&endpoint[6]), "bInterval");
    }
}

/// What a walk over a report descriptor found.
#[derive(Debug, Default)]
struct ReportLayout {
    /// (usage page, usage) of each collection, with its type (0 physical, 1 application).
    collections: Vec<(u16, u16, u8)>,
    deepest: usize,
    /// Input fields: (usage page, first usage, bit offset, size, count, logical min,
    /// logical max, flags).
    inputs: Vec<InputField>,
    input_bits: u32,
    output_bits: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct InputField {
    page: u16,
    usage: Option<u16>,
    offset: u32,
    size: u32,
    count: u32,
    min: i32,
    max: i32,
    flags: u32,
}

/// A HID report descriptor walker (HID 1.11 §6.2.2): short items only, report ids none.
/// Checks that collections nest and close and that every main item has its globals set.
fn walk(desc: &[u8]) -> ReportLayout {
    let mut layout = ReportLayout::default();
    let (mut page, mut size, mut count, mut min, mut max) = (0u16, None, None, 0i32, 0i32);
    let mut usages: Vec<u16> = Vec::new();
    let mut usage_min: Option<u16> = None;
    let mut depth = 0usize;
    let mut at = 0;
    while at < desc.len() {
        let prefix = desc[at];
        assert_ne!(prefix, 0xfe, "long items are not used");
        let len = [0, 1, 2, 4][usize::from(prefix & 3)];
        assert!(at + 1 + len <= desc.len(), "item at {at} runs past the end");
        let bytes = &desc[at + 1..at + 1 + len];
        let unsigned = bytes.iter().rev().fold(0u32, |v, &b| v << 8 | u32::from(b));
        let signed = match len {
            1 => i32::from(bytes[0] as i8),
            2 => i32::from(i16::from_le_bytes([bytes[0], bytes[1]])),
            _ => unsigned as i32,
        };
        let (kind, tag) = ((prefix >> 2) & 3, prefix >> 4);
        match (kind, tag) {
            // Main items.
            (0, 0x8) | (0, 0x9) => {
                let bits = size.expect("Report Size") * count.expect("Report Count");
                assert!(depth > 0, "main item outside a collection");
                if tag == 0x8 {
                    layout.inputs.push(InputField {
                        page,
                        usage: usages.first().copied().or(usage_min),
                        offset: layout.input_bits,
                        size: size.unwrap(),
                        count: count.unwrap(),
                        min,
                        max,
                        flags: unsigned,
                    });
                    layout.input_bits += bits;
                } else {
                    layout.output_bits += bits;
                }
                usages.clear();
                usage_min = None;
            }
            (0, 0xa) => {
                let usage = usages.first().copied().expect("a collection has a usage");
                layout.collections.push((page, usage, unsigned as u8));
                depth += 1;
                layout.deepest = layout.deepest.max(depth);
                usages.clear();
            }
            (0, 0xc) => {
                assert!(depth > 0, "End Collection without a collection");
                depth -= 1;
            }
            // Global items.
            (1, 0x0) => page = unsigned as u16,
            (1, 0x1) => min = signed,
            (1, 0x2) => max = signed,
            (1, 0x3) | (1, 0x4) => {}
            (1, 0x7) => size = Some(unsigned),
            (1, 0x9) => count = Some(unsigned),
            // Local items.
            (2, 0x0) => usages.push(unsigned as u16),
            (2, 0x1) => usage_min = Some(unsigned as u16),
            (2, 0x2) => assert!(usage_min.is_some(), "Usage Maximum without minimum"),
            other => panic!("unexpected item {other:?} at {at}"),
        }
        at += 1 + len;
    }
    assert_eq!(depth, 0, "collections left open");
    layout
}

#[test]
fn the_tablet_report_descriptor_describes_the_report_it_sends() {
    let layout = walk(tablet::REPORT_DESCRIPTOR);
    // Generic Desktop Mouse application holding a Pointer physical collection.
    assert_eq!(layout.collections, [(0x01, 0x02, 1), (0x01, 0x01, 0)]);
    assert_eq!(layout.deepest, 2);
    assert_eq!(layout.input_bits, TABLET_REPORT_LEN as u32 * 8);
    assert_eq!(layout.output_bits, 0);
    let field = |page, usage| {
        *layout
            .inputs
            .iter()
            .find(|f| f.page == page && f.usage == Some(usage))
            .unwrap()
    };
    let buttons = field(0x09, 1);
    assert_eq!((buttons.offset, buttons.size, buttons.count), (0, 1, 3));
    let xy = field(0x01, 0x30);
    assert_eq!((xy.offset, xy.size, xy.count), (8, 16, 2));
    assert_eq!((xy.min, xy.max), (0, i32::from(tablet::AXIS_MAX)));
    assert_eq!(xy.flags & 0x04, 0, "X and Y are absolute");
    let wheel = field(0x01, 0x38);
    assert_eq!((wheel.offset, wheel.size, wheel.count), (40, 8, 1));
    assert_eq!((wheel.min, wheel.max), (-127, 127));
    assert_ne!(wheel.flags & 0x04, 0, "the wheel is relative");

    // And the report the tablet sends lays out that way.
    let mut dev = UsbTablet::new();
    let h = dev.handle();
    let slot = activate(&mut dev);
    h.pointer(639, 0, 0b100 | 0b1000, 640, 480);
    let r = report(&slot);
    assert_eq!(r.len(), TABLET_REPORT_LEN);
    assert_eq!(r[0], 0b010, "right button is button 2");
    assert_eq!(u16::from_le_bytes([r[1], r[2]]), 0x7fff);
    assert_eq!(u16::from_le_bytes([r[3], r[4]]), 0);
    assert_eq!(r[5] as i8, 1, "a wheel step up");
}

#[test]
fn the_keyboard_report_descriptor_is_the_boot_layout() {
    let layout = walk(keyboard::REPORT_DESCRIPTOR);
    assert_eq!(layout.collections, [(0x01, 0x06, 1)]);
    assert_eq!(layout.input_bits, KEYBOARD_REPORT_LEN as u32 * 8);
    assert_eq!(layout.output_bits, 8, "one LED byte");
    let modifiers = layout.inputs[0];
    assert_eq!(
        (
            modifiers.page,
            modifiers.usage,
            modifiers.size,
            modifiers.count
        ),
        (0x07, Some(0xe0), 1, 8)
    );
    let keys = layout.inputs.last().unwrap();
    assert_eq!((keys.offset, keys.size, keys.count), (16, 8, 6));
    assert_eq!((keys.min, keys.max), (0, 0xff));
    assert_eq!(keys.flags & 0x02, 0, "the keys are an array");
}

#[test]
fn a_pointer_event_from_another_thread_completes_the_waiting_transfer() {
    let mut dev = UsbTablet::new();
    let h = dev.handle();
    let (tx, rx) = mpsc::channel();
    enumerate(&mut dev);
    dev.submit(
        Transfer {
            endpoint: INTERRUPT_IN,
            kind: TransferKind::Interrupt,
            data: Vec::new(),
            length: 8,
        },
        Completion::new(move |r| tx.send(r).unwrap()),
    );
    // Nothing new: the transfer waits.
    assert!(rx.try_recv().is_err());
    thread::spawn(move || h.pointer(960, 540, 1, 1921, 1081))
        .join()
        .unwrap();
    let r = rx.recv().unwrap();
    assert_eq!(r.status, TransferStatus::Success);
    assert_eq!(r.data, [1, 0xff, 0x3f, 0xff, 0x3f, 0]);
    assert_eq!(r.actual, 6);
}

#[test]
fn moves_merge_while_clicks_and_wheel_steps_keep_their_own_reports() {
    let mut dev = UsbTablet::new();
    let h = dev.handle();
    let first = activate(&mut dev);
    h.pointer(1, 1, 0, 2, 2);
    assert_eq!(report(&first), [0, 0xff, 0x7f, 0xff, 0x7f, 0]);
    // With no transfer waiting: three moves, a click, a move, a wheel step.
    h.pointer(0, 0, 0, 2, 2);
    h.pointer(1, 0, 0, 2, 2);
    h.pointer(0, 1, 0, 2, 2);
    h.pointer(0, 1, 1, 2, 2);
    h.pointer(0, 1, 0, 2, 2);
    h.pointer(1, 1, 0, 2, 2);
    h.pointer(1, 1, 0b10000, 2, 2);
    h.pointer(1, 1, 0, 2, 2); // wheel button up: nothing changes
    h.pointer(1, 1, 0b10000, 2, 2);
    let got: Vec<Vec<u8>> = (0..5).map(|_| report(&poll(&mut dev))).collect();
    assert_eq!(
        got,
        [
            vec![0, 0, 0, 0xff, 0x7f, 0],          // the three moves, as the last
            vec![1, 0, 0, 0xff, 0x7f, 0],          // left down
            vec![0, 0xff, 0x7f, 0xff, 0x7f, 0],    // left up, then the move merged in
            vec![0, 0xff, 0x7f, 0xff, 0x7f, 0xff], // wheel down
            vec![0, 0xff, 0x7f, 0xff, 0x7f, 0xff], // and again
        ]
    );
    // Nothing left: the next poll waits.
    let slot = poll(&mut dev);
    assert!(taken(&slot).is_none());
    // Repeating the same state sends nothing either.
    h.pointer(1, 1, 0, 2, 2);
    assert!(taken(&slot).is_none());
}

#[test]
fn pointer_positions_scale_to_the_logical_range_and_clamp() {
    let mut dev = UsbTablet::new();
    let h = dev.handle();
    enumerate(&mut dev);
    let at = |dev: &mut UsbTablet, x, y, w, h_: u32| {
        h.pointer(x, y, 0, w, h_);
        let r = report(&poll(dev));
        (
            u16::from_le_bytes([r[1], r[2]]),
            u16::from_le_bytes([r[3], r[4]]),
        )
    };
    assert_eq!(
        at(&mut dev, 5000, 0, 1024, 768),
        (0x7fff, 0),
        "x past the screen"
    );
    assert_eq!(at(&mut dev, 511, 767, 1024, 768), (16367, 0x7fff));
    assert_eq!(at(&mut dev, 0, 3, 0, 0), (0, 0x7fff), "an empty screen");
}

#[test]
fn key_presses_and_releases_queue_until_polled() {
    let mut dev = UsbKeyboard::new();
    let h = dev.handle();
    let first = activate(&mut dev);
    h.key(0x2a, true); // left shift
    assert_eq!(report(&first), [0x02, 0, 0, 0, 0, 0, 0, 0]);
    h.key(0x1e, true); // a
    h.key(0x1e, true); // auto-repeat: no change
    h.key(0x1e, false);
    h.key(0x30, true); // b
    h.key(0x2a, false);
    h.key(0x30, false);
    let got: Vec<Vec<u8>> = (0..5).map(|_| report(&poll(&mut dev))).collect();
    assert_eq!(
        got,
        [
            vec![0x02, 0, 0x04, 0, 0, 0, 0, 0],
            vec![0x02, 0, 0, 0, 0, 0, 0, 0],
            vec![0x02, 0, 0x05, 0, 0, 0, 0, 0],
            vec![0x00, 0, 0x05, 0, 0, 0, 0, 0],
            vec![0x00, 0, 0, 0, 0, 0, 0, 0],
        ]
    );
    assert!(taken(&poll(&mut dev)).is_none());
}

#[test]
fn a_flood_of_keys_keeps_the_newest_reports() {
    let mut dev = UsbKeyboard::new();
    let h = dev.handle();
    enumerate(&mut dev);
    for i in 0..MAX_QUEUED_REPORTS {
        h.key(0x1e, i % 2 == 0);
    }
    h.key(0x1f, true); // s
    let mut got = Vec::new();
    loop {
        let slot = poll(&mut dev);
        match taken(&slot) {
            Some(r) => got.push(r.data),
            None => break,
        }
    }
    assert_eq!(got.len(), MAX_QUEUED_REPORTS);
    assert_eq!(got.last().unwrap(), &[0, 0, 0x16, 0, 0, 0, 0, 0]);
}

#[test]
fn scancodes_map_to_keyboard_page_usages() {
    // Letters and digits.
    assert_eq!(xt_to_hid(0x1e), Some(0x04)); // A
    assert_eq!(xt_to_hid(0x2c), Some(0x1d)); // Z
    assert_eq!(xt_to_hid(0x10), Some(0x14)); // Q
    assert_eq!(xt_to_hid(0x32), Some(0x10)); // M
    assert_eq!(xt_to_hid(0x02), Some(0x1e)); // 1
    assert_eq!(xt_to_hid(0x0b), Some(0x27)); // 0
    assert_eq!(xt_to_hid(0x1c), Some(0x28)); // Enter
    assert_eq!(xt_to_hid(0x01), Some(0x29)); // Escape
    assert_eq!(xt_to_hid(0x39), Some(0x2c)); // Space
    // Modifiers, both sides.
    assert_eq!(xt_to_hid(0x1d), Some(0xe0)); // Left Control
    assert_eq!(xt_to_hid(0x2a), Some(0xe1)); // Left Shift
    assert_eq!(xt_to_hid(0x38), Some(0xe2)); // Left Alt
    assert_eq!(xt_to_hid(0xdb), Some(0xe3)); // Left GUI
    assert_eq!(xt_to_hid(0x9d), Some(0xe4)); // Right Control
    assert_eq!(xt_to_hid(0x36), Some(0xe5)); // Right Shift
    assert_eq!(xt_to_hid(0xb8), Some(0xe6)); // Right Alt
    assert_eq!(xt_to_hid(0xdc), Some(0xe7)); // Right GUI
    // 0xE0-prefixed navigation keys.
    assert_eq!(xt_to_hid(0xc8), Some(0x52)); // Up
    assert_eq!(xt_to_hid(0xd0), Some(0x51)); // Down
    assert_eq!(xt_to_hid(0xcb), Some(0x50)); // Left
    assert_eq!(xt_to_hid(0xcd), Some(0x4f)); // Right
    assert_eq!(xt_to_hid(0xd3), Some(0x4c)); // Delete
    assert_eq!(xt_to_hid(0x9c), Some(0x58)); // Keypad Enter
    assert_eq!(xt_to_hid(0x1c | 0x80), Some(0x58));
    // The keypad without prefix.
    assert_eq!(xt_to_hid(0x48), Some(0x60)); // Keypad 8
    assert_eq!(xt_to_hid(0x53), Some(0x63)); // Keypad .
    // Function keys: F1..F10 in a row, F11 and F12 elsewhere.
    assert_eq!(xt_to_hid(0x3b), Some(0x3a));
    assert_eq!(xt_to_hid(0x44), Some(0x43));
    assert_eq!(xt_to_hid(0x57), Some(0x44));
    assert_eq!(xt_to_hid(0x58), Some(0x45));
    // ISO and JIS extras.
    assert_eq!(xt_to_hid(0x56), Some(0x64));
    assert_eq!(xt_to_hid(0x73), Some(0x87));
    assert_eq!(xt_to_hid(0x7d), Some(0x89));
    // Nothing makes these, or they are Consumer page keys.
    assert_eq!(xt_to_hid(0), None);
    assert_eq!(xt_to_hid(0x54), None);
    assert_eq!(xt_to_hid(0x80), None);
    assert_eq!(xt_to_hid(0xa2), None); // Play/Pause
    assert_eq!(xt_to_hid(0x1e5), None);
    assert_eq!(xt_to_hid(0xffff), None);
}

#[test]
fn every_scancode_hospes_knows_maps_to_one_usage_or_is_a_media_key() {
    let mut seen = std::collections::HashMap::new();
    for evdev in hospes_core::keycodes::evdev_keys() {
        let xt = hospes_core::keycodes::evdev_to_qnum(evdev).unwrap();
        if let Some(usage) = xt_to_hid(xt) {
            assert!(usage >= 0x04, "{xt:#x} -> {usage:#x}");
            if let Some(other) = seen.insert(usage, xt) {
                panic!("usage {usage:#x} is both {other:#x} and {xt:#x}");
            }
        } else {
            // Only keys beyond the keyboard page (media, browser, sleep) lack a usage.
            assert!(evdev >= 113 && evdev != 117 && evdev != 119, "KEY {evdev}");
        }
    }
    assert!(seen.len() > 100);
}

#[test]
fn seven_keys_down_report_roll_over_errors() {
    let mut dev = UsbKeyboard::new();
    let h = dev.handle();
    enumerate(&mut dev);
    for xt in [0x10, 0x11, 0x12, 0x13, 0x14, 0x15] {
        h.key(xt, true);
    }
    h.key(0x1d, true); // control: a modifier takes no slot
    let mut last = Vec::new();
    for _ in 0..7 {
        last = report(&poll(&mut dev));
    }
    assert_eq!(last, [0x01, 0, 0x14, 0x1a, 0x08, 0x15, 0x17, 0x1c]);
    h.key(0x16, true);
    assert_eq!(report(&poll(&mut dev)), [0x01, 0, 1, 1, 1, 1, 1, 1]);
    h.key(0x10, false);
    assert_eq!(
        report(&poll(&mut dev)),
        [0x01, 0, 0x1a, 0x08, 0x15, 0x17, 0x1c, 0x18]
    );
}

#[test]
fn led_output_reports_are_kept() {
    let mut dev = UsbKeyboard::new();
    let h = dev.handle();
    enumerate(&mut dev);
    assert_eq!(h.leds(), 0);
    // SET_REPORT(Output, id 0) with Caps Lock and Num Lock.
    write(&mut dev, 0x21, hid_request::SET_REPORT, 0x0200, 0, &[0x03]).unwrap();
    assert_eq!(h.leds(), 0x03);
    assert_eq!(
        read(&mut dev, 0xa1, hid_request::GET_REPORT, 0x0200, 0, 1),
        Ok(vec![0x03])
    );
    // Wrong length, or a feature report: refused, LEDs kept.
    assert_eq!(
        write(&mut dev, 0x21, hid_request::SET_REPORT, 0x0200, 0, &[1, 2]),
        Err(TransferStatus::Stall)
    );
    assert_eq!(
        write(&mut dev, 0x21, hid_request::SET_REPORT, 0x0300, 0, &[1]),
        Err(TransferStatus::Stall)
    );
    assert_eq!(h.leds(), 0x03);
    // The tablet has no output report.
    let mut tablet = UsbTablet::new();
    enumerate(&mut tablet);
    assert_eq!(
        write(&mut tablet, 0x21, hid_request::SET_REPORT, 0x0200, 0, &[1]),
        Err(TransferStatus::Stall)
    );
}

#[test]
fn get_report_reads_the_state_now() {
    let mut dev = UsbKeyboard::new();
    let h = dev.handle();
    enumerate(&mut dev);
    h.key(0xc8, true); // up
    h.key(0xb8, true); // right alt
    assert_eq!(
        read(&mut dev, 0xa1, hid_request::GET_REPORT, 0x0100, 0, 8),
        Ok(vec![0x40, 0, 0x52, 0, 0, 0, 0, 0])
    );
    write(&mut dev, 0x21, hid_request::SET_IDLE, 0x7d00, 0, &[]).unwrap();
    assert_eq!(
        read(&mut dev, 0xa1, hid_request::GET_IDLE, 0, 0, 1),
        Ok(vec![0x7d])
    );
}

#[test]
fn requests_the_devices_do_not_know_stall() {
    let mut dev = UsbTablet::new();
    dev.reset();
    let stall = Err(TransferStatus::Stall);
    // Before configuration: no interface to ask about.
    assert_eq!(read(&mut dev, 0x81, request::GET_INTERFACE, 0, 0, 1), stall);
    enumerate(&mut dev);
    let d = &mut dev;
    assert_eq!(
        read(d, 0x80, request::GET_DESCRIPTOR, 0x0309, 0x0409, 255),
        stall
    );
    assert_eq!(read(d, 0x80, request::GET_DESCRIPTOR, 0x03ee, 0, 18), stall);
    assert_eq!(read(d, 0x80, request::GET_DESCRIPTOR, 0x0201, 0, 9), stall);
    assert_eq!(read(d, 0x80, request::GET_DESCRIPTOR, 0x0600, 0, 10), stall);
    assert_eq!(read(d, 0x80, request::GET_DESCRIPTOR, 0x0f00, 0, 5), stall);
    assert_eq!(read(d, 0x81, request::GET_DESCRIPTOR, 0x2200, 1, 64), stall);
    assert_eq!(read(d, 0x81, request::GET_DESCRIPTOR, 0x2300, 0, 64), stall);
    assert_eq!(
        write(d, 0x00, request::SET_DESCRIPTOR, 0x0100, 0, &[0; 18]),
        Err(TransferStatus::Stall)
    );
    assert_eq!(
        write(d, 0x00, request::SET_CONFIGURATION, 2, 0, &[]),
        Err(TransferStatus::Stall)
    );
    assert_eq!(
        write(d, 0x01, request::SET_INTERFACE, 1, 0, &[]),
        Err(TransferStatus::Stall)
    );
    assert_eq!(
        write(d, 0x00, request::SET_FEATURE, 1, 0, &[]),
        Err(TransferStatus::Stall)
    );
    assert_eq!(
        write(d, 0x02, request::CLEAR_FEATURE, 0, 0x82, &[]),
        Err(TransferStatus::Stall)
    );
    assert_eq!(read(d, 0x82, request::GET_STATUS, 0, 0x02, 2), stall);
    assert_eq!(read(d, 0xc0, 0x01, 0, 0, 16), stall, "a vendor request");
    assert_eq!(read(d, 0xa1, 0x05, 0, 0, 1), stall, "no class request 5");
    assert_eq!(read(d, 0xa1, hid_request::GET_REPORT, 0x0300, 0, 8), stall);
    assert_eq!(
        read(d, 0xa1, hid_request::GET_REPORT, 0x0101, 0, 8),
        stall,
        "report id 1"
    );
    assert_eq!(
        read(d, 0xa1, hid_request::GET_IDLE, 0, 1, 1),
        stall,
        "interface 1"
    );
    assert_eq!(read(d, 0xa1, hid_request::GET_PROTOCOL, 0, 0, 1), stall);
    // Transfers on endpoints the device does not have.
    assert_eq!(
        taken(&poll_endpoint(d, 0x82, 8)).unwrap().status,
        TransferStatus::Stall
    );
    let (slot, done) = slot_completion();
    d.submit(
        Transfer {
            endpoint: 0x02,
            kind: TransferKind::Bulk,
            data: vec![1, 2, 3],
            length: 3,
        },
        done,
    );
    assert_eq!(taken(&slot).unwrap().status, TransferStatus::Stall);
    // The device still works.
    assert_eq!(read(d, 0x80, request::GET_STATUS, 0, 0, 2), Ok(vec![0, 0]));
    assert_eq!(read(d, 0x81, request::GET_INTERFACE, 0, 0, 1), Ok(vec![0]));
    write(d, 0x01, request::SET_INTERFACE, 0, 0, &[]).unwrap();
    let mut kbd = UsbKeyboard::new();
    enumerate(&mut kbd);
    assert_eq!(
        write(&mut kbd, 0x21, hid_request::SET_PROTOCOL, 2, 0, &[]),
        Err(TransferStatus::Stall)
    );
}

#[test]
fn transfers_shorter_than_the_answer_are_truncated() {
    let mut dev = UsbKeyboard::new();
    let h = dev.handle();
    enumerate(&mut dev);
    // wLength larger than the buffer the TD gives: the buffer wins.
    let s = setup(0x80, request::GET_DESCRIPTOR, 0x0200, 0, 255);
    let r = control_with_room(&mut dev, s, &[], 20);
    assert_eq!(r.status, TransferStatus::Success);
    assert_eq!((r.data.len(), r.actual), (20, 20));
    // wLength 0: nothing.
    let s = setup(0x80, request::GET_DESCRIPTOR, 0x0100, 0, 0);
    let r = control_with_room(&mut dev, s, &[], 64);
    assert_eq!((r.status, r.actual), (TransferStatus::Success, 0));
    // An interrupt transfer with room for 3 bytes of the 8-byte report.
    let slot = poll_endpoint(&mut dev, INTERRUPT_IN, 3);
    h.key(0x1d, true);
    let r = taken(&slot).unwrap();
    assert_eq!(r.data, [0x01, 0, 0]);
    assert_eq!(r.actual, 3);
}

#[test]
fn active_once_configured_and_polled_until_reset() {
    let mut dev = UsbKeyboard::new();
    let h = dev.handle();
    assert!(!h.is_active());
    // Polled before configuration: stalled, not active.
    assert_eq!(
        taken(&poll(&mut dev)).unwrap().status,
        TransferStatus::Stall
    );
    enumerate(&mut dev);
    assert!(!h.is_active(), "configured, never polled");
    h.key(0x1e, true); // queued for the first poll
    let slot = poll(&mut dev);
    assert!(h.is_active());
    assert_eq!(report(&slot)[2], 0x04);
    let waiting = poll(&mut dev);
    // A reset forgets the configuration, the waiting transfer and the keys.
    dev.reset();
    assert!(!h.is_active());
    assert_eq!(
        taken(&waiting).unwrap().status,
        TransferStatus::Disconnected
    );
    assert_eq!(
        read(&mut dev, 0x80, request::GET_CONFIGURATION, 0, 0, 1),
        Ok(vec![0])
    );
    h.key(0x1f, true); // unconfigured: no report kept
    write(&mut dev, 0x00, request::SET_CONFIGURATION, 1, 0, &[]).unwrap();
    let slot = poll(&mut dev);
    assert!(
        taken(&slot).is_none(),
        "nothing from before the configuration"
    );
    h.key(0x1f, false); // the state was kept: releasing s is a change
    assert_eq!(report(&slot), [0; 8]);
    // Unconfiguring deactivates too.
    write(&mut dev, 0x00, request::SET_CONFIGURATION, 0, 0, &[]).unwrap();
    assert!(!h.is_active());
}

#[test]
fn cancel_drops_the_waiting_transfer_and_keeps_the_report() {
    let mut dev = UsbTablet::new();
    let h = dev.handle();
    let slot = activate(&mut dev);
    dev.cancel(0x01); // another endpoint: nothing happens
    assert!(taken(&slot).is_none());
    dev.cancel(INTERRUPT_IN);
    assert_eq!(taken(&slot).unwrap().status, TransferStatus::Disconnected);
    h.pointer(0, 0, 1, 10, 10);
    assert_eq!(report(&poll(&mut dev)), [1, 0, 0, 0, 0, 0]);
}

#[test]
fn a_halted_endpoint_stalls_until_cleared() {
    let mut dev = UsbTablet::new();
    let h = dev.handle();
    let waiting = activate(&mut dev);
    write(
        &mut dev,
        0x02,
        request::SET_FEATURE,
        0,
        u16::from(INTERRUPT_IN),
        &[],
    )
    .unwrap();
    assert_eq!(taken(&waiting).unwrap().status, TransferStatus::Stall);
    assert_eq!(
        read(
            &mut dev,
            0x82,
            request::GET_STATUS,
            0,
            u16::from(INTERRUPT_IN),
            2
        ),
        Ok(vec![1, 0])
    );
    assert_eq!(
        taken(&poll(&mut dev)).unwrap().status,
        TransferStatus::Stall
    );
    write(
        &mut dev,
        0x02,
        request::CLEAR_FEATURE,
        0,
        u16::from(INTERRUPT_IN),
        &[],
    )
    .unwrap();
    assert_eq!(
        read(
            &mut dev,
            0x82,
            request::GET_STATUS,
            0,
            u16::from(INTERRUPT_IN),
            2
        ),
        Ok(vec![0, 0])
    );
    let slot = poll(&mut dev);
    h.pointer(3, 3, 0, 4, 4);
    assert_eq!(report(&slot), [0, 0xff, 0x7f, 0xff, 0x7f, 0]);
}

#[test]
fn a_guest_queueing_endless_transfers_is_refused_past_the_limit() {
    let mut dev = UsbTablet::new();
    let h = dev.handle();
    enumerate(&mut dev);
    let slots: Vec<Slot> = (0..MAX_WAITING_TRANSFERS).map(|_| poll(&mut dev)).collect();
    assert!(slots.iter().all(|s| taken(s).is_none()));
    assert_eq!(
        taken(&poll(&mut dev)).unwrap().status,
        TransferStatus::Error
    );
    // The waiting ones are served oldest first.
    h.pointer(1, 0, 0, 2, 2);
    h.pointer(1, 0, 1, 2, 2);
    assert_eq!(report(&slots[0])[0], 0);
    assert_eq!(report(&slots[1])[0], 1);
    assert!(taken(&slots[2]).is_none());
}
