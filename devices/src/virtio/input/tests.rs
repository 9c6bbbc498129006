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

fn ev(kind: u16, code: u16, value: u32) -> InputEvent {
    InputEvent { kind, code, value }
}

/// The event in the buffer of descriptor `id` (buffers at `DATA + id * 16`).
fn event_at(d: &MockDriver, id: u32) -> InputEvent {
    let mut b = [0u8; 8];
    d.mem
        .read_slice(&mut b, GuestAddress(DATA + u64::from(id) * 16))
        .unwrap();
    ev(
        u16::from_le_bytes([b[0], b[1]]),
        u16::from_le_bytes([b[2], b[3]]),
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// Posts 8-byte event buffers `from..from + n` (one descriptor each, so the head is the
/// number posted before it) at `DATA + head * 16`.
fn post(d: &mut MockDriver, from: u64, n: u64) {
    for k in from..from + n {
        let head = d.add_chain(&[(DATA + k * 16, 8, true)]);
        assert_eq!(u64::from(head), k);
    }
    d.kick(0);
}

#[test]
fn a_restored_tablet_delivers_its_pending_events_once_in_order_then_new_ones() {
    use crate::state::Snapshot;
    let (mut d, h) = started(InputKind::Tablet);
    // The driver's last configuration read: the Y axis.
    let abs_y = select(&d, CFG_ABS_INFO, 1);
    post(&mut d, 0, 1);
    h.send(&[ev(EV_ABS, 0, 100), ev(EV_ABS, 1, 200)]);
    let (id, len) = d.wait_used();
    assert_eq!((event_at(&d, id), len), (ev(EV_ABS, 0, 100), 8));
    assert!(d.stays_idle(), "two events wait for buffers");

    let state = d.dev.lock().unwrap().save_state().unwrap();
    // The old device's handle no longer reaches a guest buffer.
    h.send(&[ev(EV_KEY, BTN_LEFT, 1)]);
    let fresh = VirtioInput::new(InputKind::Tablet).unwrap();
    let h2 = fresh.handle();
    d.restore_into(Box::new(fresh), &state).unwrap();
    assert!(h2.ready(), "the restored device is active again");
    assert!(d.stays_idle(), "no buffer posted: nothing delivered");
    // The selector survives: the size and data read without selecting again.
    let mut size = [0u8];
    d.read(DEVICE_OFFSET + 2, &mut size);
    let mut data = vec![0u8; size[0] as usize];
    d.read(DEVICE_OFFSET + 8, &mut data);
    assert_eq!(data, abs_y);

    post(&mut d, 1, 4);
    let mut got = Vec::new();
    for _ in 0..2 {
        let (id, len) = d.wait_used();
        assert_eq!(len, 8);
        got.push(event_at(&d, id));
    }
    assert_eq!(got, [ev(EV_ABS, 1, 200), InputEvent::SYN]);
    assert!(d.stays_idle(), "each pending event exactly once");
    // Host input after the resume reaches the two buffers still posted.
    h2.send(&[ev(EV_KEY, BTN_RIGHT, 1)]);
    let mut got = Vec::new();
    for _ in 0..2 {
        let (id, _) = d.wait_used();
        got.push(event_at(&d, id));
    }
    assert_eq!(got, [ev(EV_KEY, BTN_RIGHT, 1), InputEvent::SYN]);
    assert!(d.stays_idle());
}

#[test]
fn buffers_posted_before_a_save_stay_posted_for_a_keyboard() {
    let (mut d, _h) = started(InputKind::Keyboard);
    post(&mut d, 0, 2);
    assert!(d.stays_idle());
    let fresh = VirtioInput::new(InputKind::Keyboard).unwrap();
    let h2 = fresh.handle();
    d.save_and_restore(Box::new(fresh)).unwrap();
    h2.send(&[ev(EV_KEY, 30, 1)]);
    let mut got = Vec::new();
    for _ in 0..2 {
        let (id, _) = d.wait_used();
        got.push(event_at(&d, id));
    }
    assert_eq!(got, [ev(EV_KEY, 30, 1), InputEvent::SYN]);
}

#[test]
fn a_truncated_garbage_or_other_kind_state_is_refused() {
    let mut kbd = VirtioInput::new(InputKind::Keyboard).unwrap();
    kbd.write_config(0, &[CFG_EV_BITS, EV_KEY as u8]);
    kbd.handle().send(&[ev(EV_KEY, 30, 1)]);
    let state = kbd.save_device_state().unwrap();

    let mut tablet = VirtioInput::new(InputKind::Tablet).unwrap();
    let err = tablet.restore_device_state(&state).unwrap_err().to_string();
    assert!(
        err.contains("tablet") && err.contains("saved from a keyboard"),
        "{err}"
    );
    for bad in [
        &state[..state.len() - 1],
        &[][..],
        &[0xff; 40][..],
        &[state.clone(), vec![0]].concat()[..],
    ] {
        let mut k = VirtioInput::new(InputKind::Keyboard).unwrap();
        assert!(k.restore_device_state(bad).is_err(), "{bad:?}");
    }
    // Too many pending events for the queue bound.
    let flood = crate::state::encode(
        "test",
        &SavedInput {
            kind: InputKind::Keyboard,
            select: 0,
            subsel: 0,
            pending: vec![InputEvent::SYN; MAX_PENDING + 1],
        },
    )
    .unwrap();
    let mut k = VirtioInput::new(InputKind::Keyboard).unwrap();
    assert!(k.restore_device_state(&flood).is_err());

    let mut k = VirtioInput::new(InputKind::Keyboard).unwrap();
    k.restore_device_state(&state).unwrap();
    let mut keys = [0u8; 8];
    k.read_config(8, &mut keys);
    assert_ne!(keys[30 / 8] & (1 << (30 % 8)), 0, "selector restored");
    assert_eq!(
        lock(&k.handle.pending).events,
        [ev(EV_KEY, 30, 1), InputEvent::SYN]
    );
}
