//! The USB keyboard: a full-speed HID boot keyboard (interface subclass 1, protocol 1),
//! whose report is the boot report in both protocols, so firmware and every OS's inbox
//! driver read it the same.
//!
//! Data flow: the router calls [`UsbKeyboardHandle::key`] with an XT scancode in QEMU's
//! numbering (bit 7 set for a 0xE0-prefixed key); [`xt_to_hid`] turns it into a Keyboard/
//! Keypad page usage; modifiers (usages 0xE0..=0xE7) become bits of byte 0, other keys
//! fill the six key slots in the order they were pressed (all six ErrorRollOver when more
//! are down). Each change queues the whole 8-byte report (modifiers, reserved, 6 keys);
//! repeats of a held key change nothing (the guest repeats keys itself). The guest's
//! interrupt IN transfers take the reports (see [`super`]). The LED output report
//! (SET_REPORT) is kept and readable through [`UsbKeyboardHandle::leds`].

use std::collections::VecDeque;

use super::{
    HidCore, HidDevice, HidHandle, HidIdentity, HidReports, MAX_QUEUED_REPORTS, SUBCLASS_BOOT,
};

/// The keyboard's product id under [`super::VENDOR_ID`].
pub const PRODUCT_ID: u16 = 0x7702;
/// The boot keyboard report (HID 1.11 Appendix B.1): modifiers, reserved, 6 key usages.
pub const REPORT_LEN: usize = 8;
/// Key slots in the report.
const KEY_SLOTS: usize = 6;
/// bInterfaceProtocol of a keyboard (HID 1.11 §4.3).
const PROTOCOL_KEYBOARD: u8 = 1;
/// The usage every slot holds when too many keys are down (HID Usage Tables §10).
const ERROR_ROLL_OVER: u8 = 0x01;
/// Left Control, the first modifier usage; Right GUI (0xE7) is the last.
const FIRST_MODIFIER: u8 = 0xe0;
const LAST_MODIFIER: u8 = 0xe7;
/// The LED output report's bits that mean something (Num, Caps, Scroll, Compose, Kana).
const LED_MASK: u8 = 0x1f;

/// The report descriptor: HID 1.11 Appendix B.1's boot keyboard layout (usages from HID
/// Usage Tables 1.12: Generic Desktop 0x01, Keyboard/Keypad 0x07, LED 0x08), with the key
/// array covering usages 0..=0xFF so the international and volume keys fit.
#[rustfmt::skip]
pub const REPORT_DESCRIPTOR: &[u8] = &[
    0x05, 0x01,       // Usage Page (Generic Desktop)
    0x09, 0x06,       // Usage (Keyboard)
    0xa1, 0x01,       // Collection (Application)
    0x05, 0x07,       //   Usage Page (Keyboard/Keypad)
    0x19, 0xe0,       //   Usage Minimum (Left Control)
    0x29, 0xe7,       //   Usage Maximum (Right GUI)
    0x15, 0x00,       //   Logical Minimum (0)
    0x25, 0x01,       //   Logical Maximum (1)
    0x75, 0x01,       //   Report Size (1)
    0x95, 0x08,       //   Report Count (8)
    0x81, 0x02,       //   Input (Data, Variable, Absolute): modifiers
    0x95, 0x01,       //   Report Count (1)
    0x75, 0x08,       //   Report Size (8)
    0x81, 0x01,       //   Input (Constant): reserved
    0x05, 0x08,       //   Usage Page (LEDs)
    0x19, 0x01,       //   Usage Minimum (Num Lock)
    0x29, 0x05,       //   Usage Maximum (Kana)
    0x95, 0x05,       //   Report Count (5)
    0x75, 0x01,       //   Report Size (1)
    0x91, 0x02,       //   Output (Data, Variable, Absolute): LEDs
    0x95, 0x01,       //   Report Count (1)
    0x75, 0x03,       //   Report Size (3)
    0x91, 0x01,       //   Output (Constant): padding
    0x05, 0x07,       //   Usage Page (Keyboard/Keypad)
    0x19, 0x00,       //   Usage Minimum (0)
    0x2a, 0xff, 0x00, //   Usage Maximum (0xFF)
    0x15, 0x00,       //   Logical Minimum (0)
    0x26, 0xff, 0x00, //   Logical Maximum (0xFF)
    0x95, 0x06,       //   Report Count (6)
    0x75, 0x08,       //   Report Size (8)
    0x81, 0x00,       //   Input (Data, Array, Absolute): keys
    0xc0,             // End Collection
];

pub(super) static IDENTITY: HidIdentity = HidIdentity {
    product_id: PRODUCT_ID,
    product: "Hospes USB Keyboard",
    subclass: SUBCLASS_BOOT,
    protocol: PROTOCOL_KEYBOARD,
    report_descriptor: REPORT_DESCRIPTOR,
    report_len: REPORT_LEN as u8,
    interval: 10,
    description: "Hospes USB Keyboard",
};

/// Keyboard/Keypad page usages (HID Usage Tables §10) of XT set-1 make codes 0x00..=0x7F
/// without prefix; 0 where no key makes the code.
#[rustfmt::skip]
const PLAIN: [u8; 0x80] = [
    // 0x00: -, Esc, 1..9, 0, -, =, Backspace, Tab
    0x00, 0x29, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23,
    0x24, 0x25, 0x26, 0x27, 0x2d, 0x2e, 0x2a, 0x2b,
    // 0x10: Q W E R T Y U I O P [ ] Enter LCtrl A S
    0x14, 0x1a, 0x08, 0x15, 0x17, 0x1c, 0x18, 0x0c,
    0x12, 0x13, 0x2f, 0x30, 0x28, 0xe0, 0x04, 0x16,
    // 0x20: D F G H J K L ; ' ` LShift \ Z X C V
    0x07, 0x09, 0x0a, 0x0b, 0x0d, 0x0e, 0x0f, 0x33,
    0x34, 0x35, 0xe1, 0x31, 0x1d, 0x1b, 0x06, 0x19,
    // 0x30: B N M , . / RShift KP* LAlt Space CapsLock F1..F5
    0x05, 0x11, 0x10, 0x36, 0x37, 0x38, 0xe5, 0x55,
    0xe2, 0x2c, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e,
    // 0x40: F6..F10 NumLock ScrollLock KP7 KP8 KP9 KP- KP4 KP5 KP6 KP+ KP1
    0x3f, 0x40, 0x41, 0x42, 0x43, 0x53, 0x47, 0x5f,
    0x60, 0x61, 0x56, 0x5c, 0x5d, 0x5e, 0x57, 0x59,
    // 0x50: KP2 KP3 KP0 KP. -, -, Non-US \ (ISO), F11, F12, KP=, -, -, KP JP comma, -, -, -
    0x5a, 0x5b, 0x62, 0x63, 0x00, 0x00, 0x64, 0x44,
    0x45, 0x67, 0x00, 0x00, 0x8c, 0x00, 0x00, 0x00,
    // 0x60..0x6F: none
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    // 0x70: Katakana/Hiragana (Intl2), -, -, Ro (Intl1), -, -, Zenkaku/Hankaku (LANG5),
    //       Hiragana (LANG4), Katakana (LANG3), Henkan (Intl4), -, Muhenkan (Intl5), -,
    //       Yen (Intl3), KP comma, -
    0x88, 0x00, 0x00, 0x87, 0x00, 0x00, 0x94, 0x93,
    0x92, 0x8a, 0x00, 0x8b, 0x00, 0x89, 0x85, 0x00,
];

/// Usages of 0xE0-prefixed keys that are on the Keyboard/Keypad page, by QEMU number
/// (prefixed make code with bit 7 set). Media keys of the Consumer page are left out.
const PREFIXED: &[(u16, u8)] = &[
    (0x9c, 0x58), // Keypad Enter
    (0x9d, 0xe4), // Right Control
    (0xa0, 0x7f), // Mute
    (0xae, 0x81), // Volume Down
    (0xb0, 0x80), // Volume Up
    (0xb5, 0x54), // Keypad /
    (0xb7, 0x46), // Print Screen
    (0xb8, 0xe6), // Right Alt
    (0xc6, 0x48), // Pause
    (0xc7, 0x4a), // Home
    (0xc8, 0x52), // Up
    (0xc9, 0x4b), // Page Up
    (0xcb, 0x50), // Left
    (0xcd, 0x4f), // Right
    (0xcf, 0x4d), // End
    (0xd0, 0x51), // Down
    (0xd1, 0x4e), // Page Down
    (0xd2, 0x49), // Insert
    (0xd3, 0x4c), // Delete
    (0xdb, 0xe3), // Left GUI
    (0xdc, 0xe7), // Right GUI
    (0xdd, 0x65), // Application (Menu)
    (0xde, 0x66), // Power
    (0xe8, 0x78), // Stop
];

/// The Keyboard/Keypad page usage of XT scancode `xt` (QEMU numbering: bit 7 set for a
/// 0xE0-prefixed key), if the key is on that page.
pub fn xt_to_hid(xt: u16) -> Option<u8> {
    if xt < 0x80 {
        return PLAIN
            .get(usize::from(xt))
            .copied()
            .filter(|&usage| usage != 0);
    }
    PREFIXED
        .iter()
        .find(|&&(code, _)| code == xt)
        .map(|&(_, usage)| usage)
}

/// The keys held, the LEDs set and the reports not yet sent.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct KeyboardReports {
    modifiers: u8,
    /// Non-modifier usages held, in the order they went down.
    keys: Vec<u8>,
    leds: u8,
    /// The report for the state now.
    now: [u8; REPORT_LEN],
    queue: VecDeque<[u8; REPORT_LEN]>,
}

impl KeyboardReports {
    fn new() -> Self {
        Self {
            modifiers: 0,
            keys: Vec::new(),
            leds: 0,
            now: [0; REPORT_LEN],
            queue: VecDeque::new(),
        }
    }

    fn key(&mut self, usage: u8, down: bool) {
        if (FIRST_MODIFIER..=LAST_MODIFIER).contains(&usage) {
            let bit = 1 << (usage - FIRST_MODIFIER);
            if down {
                self.modifiers |= bit;
            } else {
                self.modifiers &= !bit;
            }
        } else if down {
            if !self.keys.contains(&usage) {
                self.keys.push(usage);
            }
        } else {
            self.keys.retain(|&k| k != usage);
        }
        let report = self.report();
        if report == self.now {
            return;
        }
        self.now = report;
        if self.queue.len() >= MAX_QUEUED_REPORTS {
            self.queue.pop_front();
        }
        self.queue.push_back(report);
    }

    fn report(&self) -> [u8; REPORT_LEN] {
        let mut r = [0; REPORT_LEN];
        r[0] = self.modifiers;
        let slots = &mut r[2..];
        if self.keys.len() > KEY_SLOTS {
            slots.fill(ERROR_ROLL_OVER);
        } else {
            for (slot, &key) in slots.iter_mut().zip(&self.keys) {
                *slot = key;
            }
        }
        r
    }
}

impl HidReports for KeyboardReports {
    fn next_report(&mut self) -> Option<Vec<u8>> {
        self.queue.pop_front().map(|r| r.to_vec())
    }

    fn input_report(&self) -> Vec<u8> {
        self.now.to_vec()
    }

    fn output_report(&self) -> Option<Vec<u8>> {
        Some(vec![self.leds])
    }

    fn set_output_report(&mut self, data: &[u8]) -> bool {
        match data {
            [leds] => {
                self.leds = leds & LED_MASK;
                true
            }
            _ => false,
        }
    }

    fn reset(&mut self) {
        *self = Self::new();
    }
}

/// The input side of the keyboard, shared with the router.
pub struct UsbKeyboardHandle {
    core: HidCore<KeyboardReports>,
}

impl UsbKeyboardHandle {
    /// XT scancode `xt` (QEMU numbering) pressed or released. Keys that have no usage on
    /// the Keyboard/Keypad page are dropped.
    pub fn key(&self, xt: u16, down: bool) {
        if let Some(usage) = xt_to_hid(xt) {
            self.core.update(|r| r.key(usage, down));
        }
    }

    /// The LEDs the guest last set: bit 0 Num Lock, 1 Caps Lock, 2 Scroll Lock, 3 Compose,
    /// 4 Kana (HID Usage Tables §11).
    pub fn leds(&self) -> u8 {
        self.core.with_reports(|r| r.leds)
    }

    /// Whether the guest's driver uses the keyboard: configured and polling.
    pub fn is_active(&self) -> bool {
        self.core.is_active()
    }
}

/// The keyboard in a port of the xHCI controller.
pub type UsbKeyboard = HidDevice<UsbKeyboardHandle>;

impl HidHandle for UsbKeyboardHandle {
    type Reports = KeyboardReports;

    fn create() -> Self {
        Self {
            core: HidCore::new(&IDENTITY, KeyboardReports::new()),
        }
    }

    fn core(&self) -> &HidCore<KeyboardReports> {
        &self.core
    }
}
