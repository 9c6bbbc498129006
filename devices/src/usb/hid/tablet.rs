//! The USB tablet: a full-speed HID absolute pointer (X and Y over 0..=0x7FFF, three
//! buttons, a vertical wheel), so the guest's pointer sits where the client's is, without
//! a grab.
//!
//! Data flow: the router calls [`UsbTabletHandle::pointer`] with the client's position,
//! screen size and RFB button mask; the handle scales the position to the logical range and
//! queues a 6-byte input report (buttons, X, Y, wheel). Moves with the same buttons merge
//! into the report still waiting, so a slow guest gets the latest position; a button change
//! or a wheel step gets its own report, so no click is lost. The guest's interrupt IN
//! transfers on endpoint 0x81 take the reports (see [`super`]).

use std::collections::VecDeque;

use super::{HidCore, HidDevice, HidHandle, HidIdentity, HidReports, MAX_QUEUED_REPORTS};

/// The tablet's product id under [`super::VENDOR_ID`].
pub const PRODUCT_ID: u16 = 0x7701;
/// The largest X and Y (the report descriptor's Logical Maximum).
pub const AXIS_MAX: u16 = 0x7fff;
/// The input report: buttons, X (2 bytes LE), Y (2 bytes LE), wheel (signed).
pub const REPORT_LEN: usize = 6;

/// Button bits in the report (Button page usages 1..3: primary, secondary, tertiary).
const BUTTON_LEFT: u8 = 1 << 0;
const BUTTON_RIGHT: u8 = 1 << 1;
const BUTTON_MIDDLE: u8 = 1 << 2;
/// RFB PointerEvent button mask bits (RFC 6143 §7.5.5).
const RFB_LEFT: u8 = 1 << 0;
const RFB_MIDDLE: u8 = 1 << 1;
const RFB_RIGHT: u8 = 1 << 2;
const RFB_WHEEL_UP: u8 = 1 << 3;
const RFB_WHEEL_DOWN: u8 = 1 << 4;

/// The report descriptor (HID 1.11 §6.2.2; usages from HID Usage Tables 1.12: Generic
/// Desktop page 0x01, Button page 0x09): a Mouse application collection holding a Pointer
/// physical collection with 3 buttons and 5 bits of padding, absolute X and Y of 16 bits
/// each over 0..=0x7FFF, and a relative wheel of 8 bits over -127..=127.
#[rustfmt::skip]
pub const REPORT_DESCRIPTOR: &[u8] = &[
    0x05, 0x01,       // Usage Page (Generic Desktop)
    0x09, 0x02,       // Usage (Mouse)
    0xa1, 0x01,       // Collection (Application)
    0x09, 0x01,       //   Usage (Pointer)
    0xa1, 0x00,       //   Collection (Physical)
    0x05, 0x09,       //     Usage Page (Button)
    0x19, 0x01,       //     Usage Minimum (1)
    0x29, 0x03,       //     Usage Maximum (3)
    0x15, 0x00,       //     Logical Minimum (0)
    0x25, 0x01,       //     Logical Maximum (1)
    0x95, 0x03,       //     Report Count (3)
    0x75, 0x01,       //     Report Size (1)
    0x81, 0x02,       //     Input (Data, Variable, Absolute)
    0x95, 0x01,       //     Report Count (1)
    0x75, 0x05,       //     Report Size (5)
    0x81, 0x01,       //     Input (Constant): padding
    0x05, 0x01,       //     Usage Page (Generic Desktop)
    0x09, 0x30,       //     Usage (X)
    0x09, 0x31,       //     Usage (Y)
    0x15, 0x00,       //     Logical Minimum (0)
    0x26, 0xff, 0x7f, //     Logical Maximum (0x7FFF)
    0x35, 0x00,       //     Physical Minimum (0)
    0x46, 0xff, 0x7f, //     Physical Maximum (0x7FFF)
    0x75, 0x10,       //     Report Size (16)
    0x95, 0x02,       //     Report Count (2)
    0x81, 0x02,       //     Input (Data, Variable, Absolute)
    0x09, 0x38,       //     Usage (Wheel)
    0x15, 0x81,       //     Logical Minimum (-127)
    0x25, 0x7f,       //     Logical Maximum (127)
    0x35, 0x00,       //     Physical Minimum (0)
    0x45, 0x00,       //     Physical Maximum (0): none, as logical
    0x75, 0x08,       //     Report Size (8)
    0x95, 0x01,       //     Report Count (1)
    0x81, 0x06,       //     Input (Data, Variable, Relative)
    0xc0,             //   End Collection
    0xc0,             // End Collection
];

/// The tablet on the bus. Not a boot device (subclass 0, protocol 0): firmware uses PS/2.
pub(super) static IDENTITY: HidIdentity = HidIdentity {
    product_id: PRODUCT_ID,
    product: "Hospes USB Tablet",
    subclass: 0,
    protocol: 0,
    report_descriptor: REPORT_DESCRIPTOR,
    report_len: REPORT_LEN as u8,
    interval: 10,
    description: "Hospes USB Tablet",
};

/// The pointer's state and the reports not yet sent.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct TabletReports {
    /// The report for the state now (wheel 0).
    now: [u8; REPORT_LEN],
    /// RFB buttons last seen, to count wheel presses.
    rfb_buttons: u8,
    queue: VecDeque<[u8; REPORT_LEN]>,
}

impl TabletReports {
    fn new() -> Self {
        Self {
            now: [0; REPORT_LEN],
            rfb_buttons: 0,
            queue: VecDeque::new(),
        }
    }

    fn pointer(&mut self, x: u16, y: u16, rfb: u8) {
        let pressed = rfb & !self.rfb_buttons;
        self.rfb_buttons = rfb;
        let wheel = i8::from(pressed & RFB_WHEEL_UP != 0) - i8::from(pressed & RFB_WHEEL_DOWN != 0);
        let mut buttons = 0;
        for (from, to) in [
            (RFB_LEFT, BUTTON_LEFT),
            (RFB_MIDDLE, BUTTON_MIDDLE),
            (RFB_RIGHT, BUTTON_RIGHT),
        ] {
            if rfb & from != 0 {
                buttons |= to;
            }
        }
        let [x0, x1] = x.to_le_bytes();
        let [y0, y1] = y.to_le_bytes();
        let report = [buttons, x0, x1, y0, y1, wheel as u8];
        let now = [buttons, x0, x1, y0, y1, 0];
        if wheel == 0 && now == self.now {
            return;
        }
        self.now = now;
        if let Some(last) = self.queue.back_mut() {
            // A move merges into the waiting report when neither clicks nor scrolls.
            if wheel == 0 && last[0] == buttons && last[5] == 0 {
                *last = report;
                return;
            }
        }
        if self.queue.len() >= MAX_QUEUED_REPORTS {
            self.queue.pop_front();
        }
        self.queue.push_back(report);
    }
}

impl HidReports for TabletReports {
    fn next_report(&mut self) -> Option<Vec<u8>> {
        self.queue.pop_front().map(|r| r.to_vec())
    }

    fn input_report(&self) -> Vec<u8> {
        self.now.to_vec()
    }

    fn output_report(&self) -> Option<Vec<u8>> {
        None
    }

    fn set_output_report(&mut self, _data: &[u8]) -> bool {
        false
    }

    fn reset(&mut self) {
        *self = Self::new();
    }
}

/// The input side of the tablet, shared with the router.
pub struct UsbTabletHandle {
    core: HidCore<TabletReports>,
}

impl UsbTabletHandle {
    /// The pointer at (`x`, `y`) on a `width` x `height` screen, buttons as RFB's mask
    /// (bit 0 left, 1 middle, 2 right, 3/4 wheel up/down, a step on each press).
    pub fn pointer(&self, x: u32, y: u32, buttons: u8, width: u32, height: u32) {
        let (x, y) = (scale(x, width), scale(y, height));
        self.core.update(|r| r.pointer(x, y, buttons));
    }

    /// Whether the guest's driver uses the tablet: configured and polling.
    pub fn is_active(&self) -> bool {
        self.core.is_active()
    }
}

/// `v` on a screen `size` pixels wide, on the 0..=[`AXIS_MAX`] axis: the last pixel is
/// the maximum.
fn scale(v: u32, size: u32) -> u16 {
    let last = u64::from(size.saturating_sub(1).max(1));
    (u64::from(v) * u64::from(AXIS_MAX) / last).min(u64::from(AXIS_MAX)) as u16
}

/// The tablet in a port of the xHCI controller.
pub type UsbTablet = HidDevice<UsbTabletHandle>;

impl HidHandle for UsbTabletHandle {
    type Reports = TabletReports;

    fn create() -> Self {
        Self {
            core: HidCore::new(&IDENTITY, TabletReports::new()),
        }
    }

    fn core(&self) -> &HidCore<TabletReports> {
        &self.core
    }
}
