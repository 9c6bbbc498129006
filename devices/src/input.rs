//! Keyboard and pointer input from display clients to the guest.
//!
//! Data flow: a VNC client's KeyEvent (an X keysym) or QEMU Extended Key Event (an XT
//! scancode) and PointerEvent (absolute position, button mask) reach [`InputRouter`], the
//! one [`InputSink`] of the helper. It keeps across reboots and forwards to the input
//! devices the current boot registered: virtio-input keyboard and tablet once the guest's
//! driver has started them ([`InputRouter::set_virtio`]), else the USB HID keyboard and
//! tablet once the guest has configured them and polls their interrupt endpoint
//! ([`InputRouter::set_usb`]; Windows and Linux bind their inbox HID drivers to them), else
//! the i8042's PS/2 keyboard and mouse ([`InputRouter::set_ps2`]), which firmware and
//! installers use. Keyboard and pointer choose apart: a guest may drive one device of a
//! kind and not the other. Keys travel as XT (set 1) scancodes, 0xE0-prefixed keys with
//! bit 7 set (QEMU's numbering); the i8042 turns them into the bytes its translation mode
//! calls for, virtio-input into Linux key codes, the USB keyboard into HID usages. The
//! absolute pointer stays absolute on the tablets and becomes relative PS/2 motion on the
//! mouse.

use std::sync::{Arc, Mutex};

use crate::bus::lock;
use crate::usb::hid::{UsbKeyboardHandle, UsbTabletHandle};
use crate::virtio::input::{
    ABS_MAX, BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, EV_ABS, EV_KEY, EV_REL, InputEvent, REL_WHEEL,
    VirtioInputHandle, xt_to_evdev,
};

/// Where client input goes. Implementations must not block for long: they run on display
/// client threads.
pub trait InputSink: Send + Sync {
    /// A key; `xt` is the scancode when the client sent one, else it is looked up from
    /// `keysym`.
    fn key(&self, keysym: u32, xt: Option<u16>, down: bool);
    /// The pointer at (`x`, `y`) on a `width` x `height` screen, buttons as RFB's mask
    /// (bit 0 left, 1 middle, 2 right, 3/4 wheel up/down).
    fn pointer(&self, x: u32, y: u32, buttons: u8, width: u32, height: u32);
}

/// A guest input device the router can forward to.
pub trait Ps2Input: Send {
    /// An XT scancode (bit 7: 0xE0 prefix) pressed or released.
    fn key(&mut self, xt: u16, down: bool);
    /// Relative motion (`dy` positive = down the screen), buttons (bit 0 left, 1 right,
    /// 2 middle), wheel steps (positive = up).
    fn mouse(&mut self, dx: i32, dy: i32, buttons: u8, wheel: i32);
}

struct RouterState {
    ps2: Option<Arc<Mutex<dyn Ps2Input>>>,
    keyboard: Option<Arc<VirtioInputHandle>>,
    tablet: Option<Arc<VirtioInputHandle>>,
    usb_keyboard: Option<Arc<UsbKeyboardHandle>>,
    usb_tablet: Option<Arc<UsbTabletHandle>>,
    last: Option<(u32, u32)>,
    /// Tablet buttons last sent (RFB mask).
    buttons: u8,
    /// Where keyboard and pointer input went last, for the log.
    key_target: Option<&'static str>,
    pointer_target: Option<&'static str>,
}

/// The helper's input sink; see the module docs.
pub struct InputRouter {
    state: Mutex<RouterState>,
}

impl Default for InputRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl InputRouter {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(RouterState {
                ps2: None,
                keyboard: None,
                tablet: None,
                usb_keyboard: None,
                usb_tablet: None,
                last: None,
                buttons: 0,
                key_target: None,
                pointer_target: None,
            }),
        }
    }

    /// Sets the PS/2 device of the current boot (None when the boot ends).
    pub fn set_ps2(&self, dev: Option<Arc<Mutex<dyn Ps2Input>>>) {
        let mut s = lock(&self.state);
        s.ps2 = dev;
        s.last = None;
    }

    /// Sets the virtio-input keyboard and tablet of the current boot; they take input
    /// once their driver is up.
    pub fn set_virtio(
        &self,
        keyboard: Option<Arc<VirtioInputHandle>>,
        tablet: Option<Arc<VirtioInputHandle>>,
    ) {
        let mut s = lock(&self.state);
        s.keyboard = keyboard;
        s.tablet = tablet;
        s.buttons = 0;
    }

    /// Sets the USB HID keyboard and tablet of the current boot; they take input while the
    /// guest uses them ([`UsbKeyboardHandle::is_active`]) and virtio-input is not up.
    pub fn set_usb(
        &self,
        keyboard: Option<Arc<UsbKeyboardHandle>>,
        tablet: Option<Arc<UsbTabletHandle>>,
    ) {
        let mut s = lock(&self.state);
        s.usb_keyboard = keyboard;
        s.usb_tablet = tablet;
    }
}

/// Logs where `what` input goes when that changes (the guest's driver for a device came
/// up, or a reboot went back to PS/2): the line that says which device a guest uses.
fn note_target(last: &mut Option<&'static str>, target: &'static str, what: &str) {
    if *last != Some(target) {
        *last = Some(target);
        log::info!("{what} input goes to the {target}");
    }
}

/// The tablet events for a pointer at (`x`, `y`) with `buttons`, after `old` buttons.
fn tablet_events(x: u32, y: u32, w: u32, h: u32, buttons: u8, old: u8) -> Vec<InputEvent> {
    let scale = |v: u32, size: u32| {
        (u64::from(v) * u64::from(ABS_MAX) / u64::from(size.saturating_sub(1).max(1)))
            .min(u64::from(ABS_MAX)) as u32
    };
    let mut ev = vec![
        InputEvent {
            kind: EV_ABS,
            code: 0,
            value: scale(x, w),
        },
        InputEvent {
            kind: EV_ABS,
            code: 1,
            value: scale(y, h),
        },
    ];
    for (bit, code) in [(1u8, BTN_LEFT), (2, BTN_MIDDLE), (4, BTN_RIGHT)] {
        if (buttons ^ old) & bit != 0 {
            ev.push(InputEvent {
                kind: EV_KEY,
                code,
                value: u32::from(buttons & bit != 0),
            });
        }
    }
    // Wheel buttons count when pressed.
    for (bit, step) in [(8u8, 1i32), (16, -1)] {
        if buttons & bit != 0 && old & bit == 0 {
            ev.push(InputEvent {
                kind: EV_REL,
                code: REL_WHEEL,
                value: step as u32,
            });
        }
    }
    ev
}

/// The device a keyboard or pointer event goes to, chosen once per event.
enum Target<V, U> {
    Virtio(V),
    Usb(U),
    Ps2,
}

impl InputSink for InputRouter {
    fn key(&self, keysym: u32, xt: Option<u16>, down: bool) {
        let Some(code) = xt.filter(|&c| c != 0).or_else(|| keysym_to_xt(keysym)) else {
            return;
        };
        let mut s = lock(&self.state);
        let (target, name) = if let Some(k) = s.keyboard.clone().filter(|k| k.ready()) {
            (Target::Virtio(k), "virtio-input keyboard")
        } else if let Some(k) = s.usb_keyboard.clone().filter(|k| k.is_active()) {
            (Target::Usb(k), "USB keyboard")
        } else {
            (Target::Ps2, "PS/2 keyboard")
        };
        note_target(&mut s.key_target, name, "keyboard");
        let ps2 = s.ps2.clone();
        drop(s);
        match target {
            Target::Virtio(k) => {
                if let Some(ev) = xt_to_evdev(code) {
                    k.send(&[InputEvent {
                        kind: EV_KEY,
                        code: ev,
                        value: u32::from(down),
                    }]);
                }
            }
            Target::Usb(k) => k.key(code, down),
            Target::Ps2 => {
                if let Some(d) = ps2 {
                    lock(&d).key(code, down);
                }
            }
        }
    }

    fn pointer(&self, x: u32, y: u32, buttons: u8, width: u32, height: u32) {
        let mut s = lock(&self.state);
        let (target, name) = if let Some(t) = s.tablet.clone().filter(|t| t.ready()) {
            (Target::Virtio(t), "virtio-input tablet")
        } else if let Some(t) = s.usb_tablet.clone().filter(|t| t.is_active()) {
            (Target::Usb(t), "USB tablet")
        } else {
            (Target::Ps2, "PS/2 mouse")
        };
        note_target(&mut s.pointer_target, name, "pointer");
        match target {
            Target::Virtio(t) => {
                t.send(&tablet_events(x, y, width, height, buttons, s.buttons));
                s.buttons = buttons;
            }
            Target::Usb(t) => {
                drop(s);
                t.pointer(x, y, buttons, width, height);
            }
            Target::Ps2 => {
                let (dx, dy) = match s.last {
                    Some((lx, ly)) => (x as i32 - lx as i32, y as i32 - ly as i32),
                    None => (0, 0),
                };
                s.last = Some((x, y));
                let dev = s.ps2.clone();
                drop(s);
                // RFB: bit 1 middle, bit 2 right; PS/2: bit 1 right, bit 2 middle.
                let ps2_buttons = (buttons & 1) | ((buttons >> 1) & 2) | ((buttons << 1) & 4);
                let wheel = i32::from(buttons & 8 != 0) - i32::from(buttons & 16 != 0);
                if let Some(d) = dev {
                    lock(&d).mouse(dx, dy, ps2_buttons, wheel);
                }
            }
        }
    }
}

/// The XT scancode of the key that types `keysym` on a US keyboard.
pub fn keysym_to_xt(keysym: u32) -> Option<u16> {
    let code = match keysym {
        0x20..=0x7e => {
            let c = (keysym as u8).to_ascii_lowercase();
            let unshifted = match c {
                b'!' => b'1',
                b'@' => b'2',
                b'#' => b'3',
                b'$' => b'4',
                b'%' => b'5',
                b'^' => b'6',
                b'&' => b'7',
                b'*' => b'8',
                b'(' => b'9',
                b')' => b'0',
                b'_' => b'-',
                b'+' => b'=',
                b'{' => b'[',
                b'}' => b']',
                b':' => b';',
                b'"' => b'\'',
                b'~' => b'`',
                b'|' => b'\\',
                b'<' => b',',
                b'>' => b'.',
                b'?' => b'/',
                other => other,
            };
            let row = |s: &[u8], base: u16| {
                s.iter()
                    .position(|&k| k == unshifted)
                    .map(|i| base + i as u16)
            };
            row(b"1234567890-=", 0x02)
                .or_else(|| row(b"qwertyuiop[]", 0x10))
                .or_else(|| row(b"asdfghjkl;'`", 0x1e))
                .or_else(|| row(b"\\zxcvbnm,./", 0x2b))
                .or_else(|| (unshifted == b' ').then_some(0x39))?
        }
        0xff08 => 0x0e,
        0xff09 => 0x0f,
        0xff0d => 0x1c,
        0xff1b => 0x01,
        0xffe1 => 0x2a,
        0xffe2 => 0x36,
        0xffe3 => 0x1d,
        0xffe4 => 0x9d,
        0xffe9 | 0xffe7 => 0x38,
        0xffea | 0xfe03 => 0xb8,
        0xffe5 => 0x3a,
        0xffbe..=0xffc7 => 0x3b + (keysym - 0xffbe) as u16,
        0xffc8 => 0x57,
        0xffc9 => 0x58,
        0xff50 => 0xc7,
        0xff51 => 0xcb,
        0xff52 => 0xc8,
        0xff53 => 0xcd,
        0xff54 => 0xd0,
        0xff55 => 0xc9,
        0xff56 => 0xd1,
        0xff57 => 0xcf,
        0xff63 => 0xd2,
        0xffff => 0xd3,
        0xffeb => 0xdb,
        0xffec => 0xdc,
        0xff67 => 0xdd,
        0xff8d => 0x9c,
        _ => return None,
    };
    Some(code)
}

/// The XT scancode of a QEMU key name (QMP `input-send-event`'s qcode).
pub fn qcode_to_xt(name: &str) -> Option<u16> {
    if let [c] = name.as_bytes() {
        return keysym_to_xt(u32::from(*c));
    }
    let code = match name {
        "esc" => 0x01,
        "minus" => 0x0c,
        "equal" => 0x0d,
        "backspace" => 0x0e,
        "tab" => 0x0f,
        "bracket_left" => 0x1a,
        "bracket_right" => 0x1b,
        "ret" => 0x1c,
        "ctrl" => 0x1d,
        "semicolon" => 0x27,
        "apostrophe" => 0x28,
        "grave_accent" => 0x29,
        "shift" => 0x2a,
        "backslash" => 0x2b,
        "comma" => 0x33,
        "dot" => 0x34,
        "slash" => 0x35,
        "shift_r" => 0x36,
        "kp_multiply" => 0x37,
        "alt" => 0x38,
        "spc" => 0x39,
        "caps_lock" => 0x3a,
        "f11" => 0x57,
        "f12" => 0x58,
        "kp_enter" => 0x9c,
        "ctrl_r" => 0x9d,
        "alt_r" => 0xb8,
        "home" => 0xc7,
        "up" => 0xc8,
        "pgup" => 0xc9,
        "left" => 0xcb,
        "right" => 0xcd,
        "end" => 0xcf,
        "down" => 0xd0,
        "pgdn" => 0xd1,
        "insert" => 0xd2,
        "delete" => 0xd3,
        "meta_l" => 0xdb,
        "meta_r" => 0xdc,
        "menu" => 0xdd,
        f if f.starts_with('f') => {
            let n: u16 = f[1..].parse().ok()?;
            if (1..=10).contains(&n) {
                0x3a + n
            } else {
                return None;
            }
        }
        _ => return None,
    };
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usb::UsbDevice;
    use crate::usb::hid::tests as hid_tests;
    use crate::usb::hid::{UsbKeyboard, UsbTablet};

    #[derive(Default)]
    struct Rec(Vec<String>);

    impl Ps2Input for Rec {
        fn key(&mut self, xt: u16, down: bool) {
            self.0
                .push(format!("k{xt:02x}{}", if down { "d" } else { "u" }));
        }
        fn mouse(&mut self, dx: i32, dy: i32, buttons: u8, wheel: i32) {
            self.0.push(format!("m{dx},{dy},{buttons},{wheel}"));
        }
    }

    #[test]
    fn keysyms_map_to_us_scancodes() {
        assert_eq!(keysym_to_xt(u32::from(b'a')), Some(0x1e));
        assert_eq!(keysym_to_xt(u32::from(b'A')), Some(0x1e));
        assert_eq!(keysym_to_xt(u32::from(b'1')), Some(0x02));
        assert_eq!(keysym_to_xt(u32::from(b'?')), Some(0x35));
        assert_eq!(keysym_to_xt(u32::from(b'\\')), Some(0x2b));
        assert_eq!(keysym_to_xt(u32::from(b' ')), Some(0x39));
        assert_eq!(keysym_to_xt(0xff0d), Some(0x1c));
        assert_eq!(keysym_to_xt(0xff52), Some(0xc8));
        assert_eq!(keysym_to_xt(0xffc9), Some(0x58));
        assert_eq!(keysym_to_xt(0x12345), None);
    }

    #[test]
    fn qcodes_map_to_scancodes() {
        assert_eq!(qcode_to_xt("a"), Some(0x1e));
        assert_eq!(qcode_to_xt("ret"), Some(0x1c));
        assert_eq!(qcode_to_xt("f1"), Some(0x3b));
        assert_eq!(qcode_to_xt("f10"), Some(0x44));
        assert_eq!(qcode_to_xt("f13"), None);
        assert_eq!(qcode_to_xt("ctrl_r"), Some(0x9d));
        assert_eq!(qcode_to_xt("nonsense"), None);
    }

    #[test]
    fn a_ready_tablet_gets_absolute_events_and_button_changes() {
        let ev = tablet_events(1919, 0, 1920, 1080, 0b1001, 0b0001);
        assert_eq!(
            ev[0],
            InputEvent {
                kind: EV_ABS,
                code: 0,
                value: ABS_MAX
            }
        );
        assert_eq!(
            ev[1],
            InputEvent {
                kind: EV_ABS,
                code: 1,
                value: 0
            }
        );
        assert_eq!(
            ev[2],
            InputEvent {
                kind: EV_REL,
                code: REL_WHEEL,
                value: 1
            }
        );
        assert_eq!(ev.len(), 3);
        let ev = tablet_events(0, 0, 1, 1, 0b100, 0);
        assert_eq!(
            ev[2],
            InputEvent {
                kind: EV_KEY,
                code: BTN_RIGHT,
                value: 1
            }
        );
    }

    #[test]
    fn router_forwards_to_the_current_device_and_makes_motion_relative() {
        let r = InputRouter::new();
        r.key(u32::from(b'a'), None, true);
        let rec = Arc::new(Mutex::new(Rec::default()));
        r.set_ps2(Some(rec.clone()));
        r.key(u32::from(b'a'), None, true);
        r.key(0, Some(0x9d), false);
        r.pointer(100, 100, 0, 640, 480);
        r.pointer(110, 95, 0b100, 640, 480);
        r.pointer(110, 95, 0b1000, 640, 480);
        assert_eq!(
            rec.lock().unwrap().0,
            vec!["k1ed", "k9du", "m0,0,0,0", "m10,-5,2,0", "m0,0,0,1"]
        );
    }

    /// A USB device of each kind, configured and polled (the polls still waiting).
    fn active_usb() -> (
        UsbKeyboard,
        UsbTablet,
        crate::usb::hid::tests::Slot,
        crate::usb::hid::tests::Slot,
    ) {
        let (mut k, mut t) = (UsbKeyboard::new(), UsbTablet::new());
        let ks = hid_tests::activate(&mut k);
        let ts = hid_tests::activate(&mut t);
        (k, t, ks, ts)
    }

    #[test]
    fn usb_devices_take_input_once_the_guest_polls_them() {
        let r = InputRouter::new();
        let rec = Arc::new(Mutex::new(Rec::default()));
        r.set_ps2(Some(rec.clone()));
        let (mut k, mut t) = (UsbKeyboard::new(), UsbTablet::new());
        r.set_usb(Some(k.handle()), Some(t.handle()));
        // Unconfigured: PS/2 has the input.
        r.key(u32::from(b'a'), None, true);
        r.pointer(10, 10, 0, 100, 100);
        let ks = hid_tests::activate(&mut k);
        // The tablet is configured but its driver does not poll it (nobody opened it).
        hid_tests::configure(&mut t);
        r.key(u32::from(b'a'), None, false);
        r.key(0, Some(0x9d), true);
        r.pointer(20, 10, 0, 100, 100);
        assert_eq!(rec.lock().unwrap().0, vec!["k1ed", "m0,0,0,0", "m10,0,0,0"]);
        let ts = hid_tests::poll(&mut t);
        r.pointer(99, 0, 0b100, 100, 100);
        assert_eq!(rec.lock().unwrap().0.len(), 3, "PS/2 got no more");
        // The release of a key pressed before reaches the keyboard as no change; right
        // control does.
        let key = ks.lock().unwrap().take().unwrap();
        assert_eq!(key.data, [0x10, 0, 0, 0, 0, 0, 0, 0]);
        let pointer = ts.lock().unwrap().take().unwrap();
        assert_eq!(pointer.data, [0b010, 0xff, 0x7f, 0, 0, 0]);
        // A reset (a reboot) hands input back to PS/2.
        k.reset();
        t.reset();
        r.key(0, Some(0x1e), true);
        r.pointer(50, 0, 0, 100, 100);
        assert_eq!(
            rec.lock().unwrap().0,
            vec!["k1ed", "m0,0,0,0", "m10,0,0,0", "k1ed", "m30,-10,0,0"]
        );
    }

    #[test]
    fn each_kind_goes_to_the_device_its_guest_drives() {
        let r = InputRouter::new();
        let rec = Arc::new(Mutex::new(Rec::default()));
        r.set_ps2(Some(rec.clone()));
        let mut k = UsbKeyboard::new();
        let ks = hid_tests::activate(&mut k);
        let t = UsbTablet::new();
        r.set_usb(Some(k.handle()), Some(t.handle()));
        r.key(0, Some(0xc8), true);
        r.pointer(5, 5, 1, 10, 10);
        assert_eq!(ks.lock().unwrap().take().unwrap().data[2], 0x52, "up");
        assert_eq!(rec.lock().unwrap().0, vec!["m0,0,1,0"]);
        // Without USB devices set, PS/2 again.
        r.set_usb(None, None);
        r.key(0, Some(0xc8), false);
        assert_eq!(rec.lock().unwrap().0, vec!["m0,0,1,0", "kc8u"]);
    }

    #[test]
    fn virtio_input_wins_over_usb() {
        use crate::virtio::input::{InputKind, VirtioInput};
        use crate::virtio::testing::{DATA, MockDriver};
        use vm_memory::{Bytes, GuestAddress};

        let virtio = VirtioInput::new(InputKind::Keyboard).unwrap();
        let vk = virtio.handle();
        let mut d = MockDriver::started(Box::new(virtio), 16);
        d.add_chain(&[(DATA, 8, true)]);
        d.kick(0);
        let (k, t, ks, ts) = active_usb();
        let r = InputRouter::new();
        r.set_virtio(Some(vk), None);
        r.set_usb(Some(k.handle()), Some(t.handle()));
        r.key(0, Some(0x1e), true);
        d.wait_used();
        let code = d.mem.read_obj::<u16>(GuestAddress(DATA + 2)).unwrap();
        assert_eq!(code, 30, "KEY_A through virtio-input");
        assert!(ks.lock().unwrap().is_none(), "nothing for the USB keyboard");
        // No virtio tablet: the pointer goes to the USB one.
        r.pointer(0, 0, 1, 10, 10);
        assert_eq!(ts.lock().unwrap().take().unwrap().data[0], 1);
    }
}
