//! virtio-input through the mock driver: configuration as the Linux driver reads it, and
//! events landing in posted buffers.

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::pci::DEVICE_OFFSET;
use crate::virtio::testing::{DATA, MockDriver};

fn started(kind: InputKind) -> (MockDriver, Arc<VirtioInputHandle>) {
    let dev = VirtioInput::new(kind).unwrap();
    let h = dev.handle();
    assert!(!h.ready());
    let d = MockDriver::started(Box::new(dev), 16);
    (d, h)
}

fn select(d: &MockDriver, sel: u8, sub: u8) -> Vec<u8> {
    d.write(DEVICE_OFFSET, &[sel]);
    d.write(DEVICE_OFFSET + 1, &[sub]);
    let mut size = [0u8];
    d.read(DEVICE_OFFSET + 2, &mut size);
    let mut data = vec![0u8; size[0] as usize];
    d.read(DEVICE_OFFSET + 8, &mut data);
    data
}

#[test]
fn configuration_names_the_devices_and_their_events() {
    let (d, _) = started(InputKind::Keyboard);
    assert_eq!(select(&d, CFG_ID_NAME, 0), b"Hospes Keyboard");
    let keys = select(&d, CFG_EV_BITS, EV_KEY as u8);
    assert_ne!(keys[30 / 8] & (1 << (30 % 8)), 0, "KEY_A");
    assert_ne!(keys[103 / 8] & (1 << (103 % 8)), 0, "KEY_UP");
    assert!(select(&d, CFG_EV_BITS, EV_ABS as u8).is_empty());
    let (t, _) = started(InputKind::Tablet);
    let abs = select(&t, CFG_ABS_INFO, 1);
    assert_eq!(u32::from_le_bytes(abs[4..8].try_into().unwrap()), ABS_MAX);
    assert_eq!(select(&t, CFG_EV_BITS, EV_ABS as u8), [0b11]);
    assert!(select(&t, 0x77, 0).is_empty());
}

#[test]
fn events_fill_posted_buffers_with_a_syn_after_each_group() {
    let (mut d, h) = started(InputKind::Tablet);
    assert!(h.ready());
    for i in 0..3u64 {
        d.add_chain(&[(DATA + i * 16, 8, true)]);
    }
    d.kick(0);
    h.send(&[
        InputEvent {
            kind: EV_ABS,
            code: 0,
            value: 100,
        },
        InputEvent {
            kind: EV_ABS,
            code: 1,
            value: 200,
        },
    ]);
    let mut got = Vec::new();
    for _ in 0..3 {
        let (id, len) = d.wait_used();
        assert_eq!(len, 8);
        let mut b = [0u8; 8];
        d.mem
            .read_slice(&mut b, GuestAddress(DATA + u64::from(id) * 16))
            .unwrap();
        got.push((
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        ));
    }
    assert_eq!(got, [(EV_ABS, 0, 100), (EV_ABS, 1, 200), (EV_SYN, 0, 0)]);
    // Events with no buffer wait; a buffer posted later takes the next one.
    h.send(&[InputEvent {
        kind: EV_KEY,
        code: BTN_LEFT,
        value: 1,
    }]);
    d.add_chain(&[(DATA + 0x100, 8, true)]);
    d.kick(0);
    d.wait_used();
    assert_eq!(
        d.mem.read_obj::<u16>(GuestAddress(DATA + 0x102)).unwrap(),
        BTN_LEFT
    );
}

#[test]
fn a_flood_of_events_is_bounded() {
    let (_d, h) = started(InputKind::Keyboard);
    for _ in 0..10 * MAX_PENDING {
        h.send(&[InputEvent {
            kind: EV_KEY,
            code: 30,
            value: 1,
        }]);
    }
    assert!(lock(&h.pending).events.len() <= MAX_PENDING);
}

#[test]
fn xt_scancodes_map_to_linux_key_codes() {
    assert_eq!(xt_to_evdev(0x1e), Some(30));
    assert_eq!(xt_to_evdev(0xc8), Some(103));
    assert_eq!(xt_to_evdev(0x9d), Some(97));
    assert_eq!(xt_to_evdev(0xe3), Some(143)); // KEY_WAKEUP
    assert_eq!(xt_to_evdev(0xa0), Some(113)); // KEY_MUTE
    assert_eq!(xt_to_evdev(0xe2), None);
    assert_eq!(xt_to_evdev(0), None);
}
