//! Emulated USB HID devices (HID 1.11): an absolute tablet ([`UsbTablet`]) and a boot
//! keyboard ([`UsbKeyboard`]), so a guest's inbox HID drivers (Linux usbhid, Windows
//! HidUsb with mouhid/kbdhid) follow the client's pointer exactly and get keys through
//! USB when it has no virtio-input driver.
//!
//! Data flow: the xHCI controller hands each [`Transfer`] to the device in its port. Control
//! transfers on endpoint 0 (descriptors, configuration, HID class requests) are answered at
//! once from the descriptors and state here. An interrupt IN transfer on endpoint 0x81
//! takes the oldest queued input report, or else waits (a NAK on the wire). Display clients'
//! input reaches the device's handle ([`UsbTabletHandle`], [`UsbKeyboardHandle`], an `Arc`
//! shared with [`crate::input::InputRouter`]) on a client thread: the event changes the
//! device's state, queues a report and, when a transfer waits, completes it with that
//! report right away. The state sits behind one mutex in the handle; completions run with
//! it held, so reports reach the controller in the order they were made (a completion only
//! queues its result and never takes the controller's lock).
//!
//! This module is the core both devices share: the standard requests (USB 2.0 §9.4), the
//! HID class requests (HID 1.11 §7.2), the descriptors built from each device's
//! [`HidIdentity`], and the queue of waiting interrupt transfers. The devices supply their
//! report descriptor and report state through [`HidReports`].

pub mod keyboard;
pub mod tablet;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use keyboard::{UsbKeyboard, UsbKeyboardHandle, xt_to_hid};
pub use tablet::{UsbTablet, UsbTabletHandle};

use super::{
    Completion, SetupPacket, Transfer, TransferKind, TransferResult, TransferStatus, UsbDevice,
    UsbSpeed, descriptor, request,
};
use crate::bus::lock;
use crate::state::{self, StateError};

/// pid.codes, the open-source vendor id (https://pid.codes); the product ids below are
/// Hospes's within it.
pub const VENDOR_ID: u16 = 0x1209;
/// bcdDevice: release 1.00 of Hospes's HID devices.
const DEVICE_RELEASE: u16 = 0x0100;
/// bcdUSB: USB 2.0.
const USB_RELEASE: u16 = 0x0200;
/// bcdHID: HID 1.11.
const HID_RELEASE: u16 = 0x0111;
/// bMaxPacketSize0 of a full-speed device (USB 2.0 §5.5.3 allows 8, 16, 32 or 64).
const CONTROL_MAX_PACKET: u8 = 64;
/// The one configuration's bConfigurationValue.
const CONFIGURATION_VALUE: u8 = 1;
/// Configuration bmAttributes (USB 2.0 Table 9-10): bit 7 reserved set; bus-powered, no
/// remote wakeup.
const CONFIG_ATTRIBUTES: u8 = 0x80;
/// bMaxPower in 2 mA units: 100 mA.
const CONFIG_MAX_POWER: u8 = 50;
/// The interrupt IN endpoint reports go through.
pub const INTERRUPT_IN: u8 = 0x81;
/// Endpoint bmAttributes: interrupt transfers (USB 2.0 Table 9-13).
const ENDPOINT_INTERRUPT: u8 = 0x03;
/// bInterfaceClass of HID (HID 1.11 §4.1).
const CLASS_HID: u8 = 3;
/// bInterfaceSubClass of a boot interface (HID 1.11 §4.2).
pub const SUBCLASS_BOOT: u8 = 1;
/// String descriptor indexes.
const STRING_LANGUAGES: u8 = 0;
const STRING_MANUFACTURER: u8 = 1;
const STRING_PRODUCT: u8 = 2;
const STRING_SERIAL: u8 = 3;
/// LANGID of US English (USB LANGID table), the one language the strings come in.
const LANGID_EN_US: u16 = 0x0409;
const MANUFACTURER: &str = "Hospes";
const SERIAL: &str = "1";

/// Descriptor lengths (USB 2.0 §9.6; HID 1.11 §6.2.1).
const DEVICE_DESCRIPTOR_LEN: usize = 18;
const CONFIG_DESCRIPTOR_LEN: usize = 9;
const INTERFACE_DESCRIPTOR_LEN: usize = 9;
const HID_DESCRIPTOR_LEN: usize = 9;
const ENDPOINT_DESCRIPTOR_LEN: usize = 7;

/// bmRequestType values (USB 2.0 Table 9-2): direction, type (standard/class), recipient.
const RT_DEVICE_IN: u8 = 0x80;
const RT_INTERFACE_IN: u8 = 0x81;
const RT_ENDPOINT_IN: u8 = 0x82;
const RT_DEVICE_OUT: u8 = 0x00;
const RT_INTERFACE_OUT: u8 = 0x01;
const RT_ENDPOINT_OUT: u8 = 0x02;
const RT_CLASS_INTERFACE_IN: u8 = 0xa1;
const RT_CLASS_INTERFACE_OUT: u8 = 0x21;

/// Feature selectors (USB 2.0 Table 9-6).
const FEATURE_ENDPOINT_HALT: u16 = 0;
const FEATURE_DEVICE_REMOTE_WAKEUP: u16 = 1;

/// HID class requests (HID 1.11 §7.2).
pub mod hid_request {
    pub const GET_REPORT: u8 = 0x01;
    pub const GET_IDLE: u8 = 0x02;
    pub const GET_PROTOCOL: u8 = 0x03;
    pub const SET_REPORT: u8 = 0x09;
    pub const SET_IDLE: u8 = 0x0a;
    pub const SET_PROTOCOL: u8 = 0x0b;
}

/// Report types in GET_REPORT/SET_REPORT's wValue high byte (HID 1.11 §7.2.1).
const REPORT_INPUT: u8 = 1;
const REPORT_OUTPUT: u8 = 2;

/// Interrupt transfers the guest may keep waiting at once; past that a new one fails.
const MAX_WAITING_TRANSFERS: usize = 16;
/// Input reports kept for the guest at most; past it the oldest is dropped (each report
/// carries the whole state, so a dropped one loses a moment, never a key left down).
pub const MAX_QUEUED_REPORTS: usize = 64;

/// What tells the HID devices apart on the bus.
pub struct HidIdentity {
    pub product_id: u16,
    /// The product string.
    pub product: &'static str,
    /// bInterfaceSubClass: [`SUBCLASS_BOOT`] or 0.
    pub subclass: u8,
    /// bInterfaceProtocol: 1 keyboard, 2 mouse, 0 none (HID 1.11 §4.3).
    pub protocol: u8,
    pub report_descriptor: &'static [u8],
    /// wMaxPacketSize of the interrupt IN endpoint: the input report's length.
    pub report_len: u8,
    /// bInterval of the interrupt IN endpoint, in ms (full speed).
    pub interval: u8,
    /// For logs and QMP.
    pub description: &'static str,
}

impl HidIdentity {
    /// The device descriptor (USB 2.0 §9.6.1).
    pub fn device_descriptor(&self) -> Vec<u8> {
        let [usb0, usb1] = USB_RELEASE.to_le_bytes();
        let [v0, v1] = VENDOR_ID.to_le_bytes();
        let [p0, p1] = self.product_id.to_le_bytes();
        let [d0, d1] = DEVICE_RELEASE.to_le_bytes();
        vec![
            DEVICE_DESCRIPTOR_LEN as u8,
            descriptor::DEVICE,
            usb0,
            usb1,
            0, // bDeviceClass: per interface
            0,
            0,
            CONTROL_MAX_PACKET,
            v0,
            v1,
            p0,
            p1,
            d0,
            d1,
            STRING_MANUFACTURER,
            STRING_PRODUCT,
            STRING_SERIAL,
            1, // bNumConfigurations
        ]
    }

    /// The HID descriptor (HID 1.11 §6.2.1), also part of the configuration.
    pub fn hid_descriptor(&self) -> Vec<u8> {
        let [h0, h1] = HID_RELEASE.to_le_bytes();
        let [r0, r1] = (self.report_descriptor.len() as u16).to_le_bytes();
        vec![
            HID_DESCRIPTOR_LEN as u8,
            descriptor::HID,
            h0,
            h1,
            0, // bCountryCode: not localized
            1, // bNumDescriptors
            descriptor::HID_REPORT,
            r0,
            r1,
        ]
    }

    /// The configuration with its interface, HID and endpoint descriptors (USB 2.0
    /// §9.6.3, §9.6.5, §9.6.6).
    pub fn configuration_descriptor(&self) -> Vec<u8> {
        let total = CONFIG_DESCRIPTOR_LEN
            + INTERFACE_DESCRIPTOR_LEN
            + HID_DESCRIPTOR_LEN
            + ENDPOINT_DESCRIPTOR_LEN;
        let [t0, t1] = (total as u16).to_le_bytes();
        let mut d = vec![
            CONFIG_DESCRIPTOR_LEN as u8,
            descriptor::CONFIGURATION,
            t0,
            t1,
            1, // bNumInterfaces
            CONFIGURATION_VALUE,
            0, // iConfiguration
            CONFIG_ATTRIBUTES,
            CONFIG_MAX_POWER,
            INTERFACE_DESCRIPTOR_LEN as u8,
            descriptor::INTERFACE,
            0, // bInterfaceNumber
            0, // bAlternateSetting
            1, // bNumEndpoints
            CLASS_HID,
            self.subclass,
            self.protocol,
            0, // iInterface
        ];
        d.extend(self.hid_descriptor());
        d.extend([
            ENDPOINT_DESCRIPTOR_LEN as u8,
            descriptor::ENDPOINT,
            INTERRUPT_IN,
            ENDPOINT_INTERRUPT,
            self.report_len,
            0,
            self.interval,
        ]);
        d
    }

    /// String descriptor `index` (USB 2.0 §9.6.7): 0 lists the languages.
    pub fn string_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        let text = match index {
            STRING_LANGUAGES => {
                let [l0, l1] = LANGID_EN_US.to_le_bytes();
                return Some(vec![4, descriptor::STRING, l0, l1]);
            }
            STRING_MANUFACTURER => MANUFACTURER,
            STRING_PRODUCT => self.product,
            STRING_SERIAL => SERIAL,
            _ => return None,
        };
        let mut d = vec![0, descriptor::STRING];
        d.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        d[0] = d.len() as u8;
        Some(d)
    }

    fn is_boot(&self) -> bool {
        self.subclass == SUBCLASS_BOOT
    }
}

/// A device's reports: what it has to say and what the guest set (saved with the device
/// as they are: their serde form is their saved state).
pub trait HidReports: Send + Serialize + DeserializeOwned {
    /// The oldest report not yet sent, taken off the queue.
    fn next_report(&mut self) -> Option<Vec<u8>>;
    /// The input report for the state now (GET_REPORT input).
    fn input_report(&self) -> Vec<u8>;
    /// The output report (GET_REPORT output), for a device that has one.
    fn output_report(&self) -> Option<Vec<u8>>;
    /// Takes an output report (SET_REPORT output); false for a device without one or a
    /// report of the wrong length.
    fn set_output_report(&mut self, data: &[u8]) -> bool;
    /// Back to the power-on state: nothing held, nothing queued.
    fn reset(&mut self);
}

/// An interrupt IN transfer waiting for a report.
struct Waiting {
    length: usize,
    done: Completion,
}

struct HidState<R> {
    configured: bool,
    /// The guest polled the interrupt endpoint since the last reset.
    polled: bool,
    /// The interrupt endpoint is halted (SET_FEATURE ENDPOINT_HALT).
    halted: bool,
    /// SET_IDLE's duration, in 4 ms units; 0 = report only on change (the only mode
    /// carried out: reports go on change whatever the rate).
    idle: u8,
    /// SET_PROTOCOL: 0 boot, 1 report (HID 1.11 §7.2.6). Both send the same report here.
    protocol: u8,
    waiting: VecDeque<Waiting>,
    reports: R,
}

/// A HID device's saved state: the guest's settings and the reports not sent yet. The
/// interrupt transfers waiting for a report are not in it: the controller hands them
/// again after a restore.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "R: Serialize", deserialize = "R: DeserializeOwned"))]
struct SavedHid<R> {
    configured: bool,
    polled: bool,
    halted: bool,
    idle: u8,
    protocol: u8,
    reports: R,
}

/// What a control request comes to.
enum Reply {
    /// Data for the host (truncated to what it asked for).
    In(Vec<u8>),
    /// Done, no data back.
    Out,
    Stall,
}

/// The input side of a HID device ([`UsbTabletHandle`], [`UsbKeyboardHandle`]): what the
/// router calls, around the [`HidCore`] it shares with the device in the port.
pub trait HidHandle: Send + Sync + 'static {
    type Reports: HidReports;
    /// The handle of a fresh, unconfigured device.
    fn create() -> Self;
    fn core(&self) -> &HidCore<Self::Reports>;
}

/// A HID device in a port of the xHCI controller ([`UsbTablet`], [`UsbKeyboard`]): every
/// request goes to the [`HidCore`] it shares with its handle.
pub struct HidDevice<H> {
    handle: Arc<H>,
}

impl<H: HidHandle> HidDevice<H> {
    pub fn new() -> Self {
        Self {
            handle: Arc::new(H::create()),
        }
    }

    /// The handle input goes through (give it to [`crate::input::InputRouter::set_usb`]).
    pub fn handle(&self) -> Arc<H> {
        self.handle.clone()
    }
}

impl<H: HidHandle> Default for HidDevice<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: HidHandle> UsbDevice for HidDevice<H> {
    fn speed(&self) -> UsbSpeed {
        UsbSpeed::Full
    }

    fn reset(&mut self) {
        self.handle.core().reset();
    }

    fn submit(&mut self, transfer: Transfer, done: Completion) {
        self.handle.core().submit(transfer, done);
    }

    fn cancel(&mut self, endpoint: u8) {
        self.handle.core().cancel(endpoint);
    }

    fn description(&self) -> String {
        self.handle.core().identity().description.to_string()
    }

    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        self.handle.core().save_state()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.handle.core().restore_state(state)
    }
}

/// The core of a HID device: its identity and its state, shared between the device in
/// the controller's port and the handle on the input side.
pub struct HidCore<R> {
    identity: &'static HidIdentity,
    state: Mutex<HidState<R>>,
}

impl<R: HidReports> HidCore<R> {
    pub fn new(identity: &'static HidIdentity, reports: R) -> Self {
        Self {
            identity,
            state: Mutex::new(HidState {
                configured: false,
                polled: false,
                halted: false,
                idle: 0,
                protocol: 1,
                waiting: VecDeque::new(),
                reports,
            }),
        }
    }

    pub fn identity(&self) -> &'static HidIdentity {
        self.identity
    }

    /// Configured and polled since the last reset: the guest's driver listens.
    pub fn is_active(&self) -> bool {
        let s = lock(&self.state);
        s.configured && s.polled
    }

    /// Applies an input event to the reports, then hands queued reports to waiting
    /// transfers.
    pub fn update<T>(&self, event: impl FnOnce(&mut R) -> T) -> T {
        let mut s = lock(&self.state);
        let out = event(&mut s.reports);
        s.deliver();
        out
    }

    /// Reads the report state.
    pub fn with_reports<T>(&self, read: impl FnOnce(&R) -> T) -> T {
        read(&lock(&self.state).reports)
    }

    /// A port reset: unconfigured, nothing waiting, reports forgotten.
    pub fn reset(&self) {
        let mut s = lock(&self.state);
        s.configured = false;
        s.polled = false;
        s.halted = false;
        s.idle = 0;
        s.protocol = 1;
        s.waiting.clear();
        s.reports.reset();
    }

    /// The saved state (see [`SavedHid`]).
    pub fn save_state(&self) -> Result<Vec<u8>, StateError> {
        let s = lock(&self.state);
        state::encode(
            self.identity.description,
            &SavedHid {
                configured: s.configured,
                polled: s.polled,
                halted: s.halted,
                idle: s.idle,
                protocol: s.protocol,
                reports: &s.reports,
            },
        )
    }

    /// Takes back a saved state; transfers waiting now are dropped (the controller hands
    /// them again).
    pub fn restore_state(&self, bytes: &[u8]) -> Result<(), StateError> {
        let saved: SavedHid<R> = state::decode(self.identity.description, bytes)?;
        let mut s = lock(&self.state);
        s.configured = saved.configured;
        s.polled = saved.polled;
        s.halted = saved.halted;
        s.idle = saved.idle;
        s.protocol = saved.protocol;
        s.reports = saved.reports;
        s.waiting.clear();
        Ok(())
    }

    /// Drops the transfers waiting on `endpoint`.
    pub fn cancel(&self, endpoint: u8) {
        if endpoint == INTERRUPT_IN {
            lock(&self.state).waiting.clear();
        }
    }

    /// Starts `transfer` (see [`super::UsbDevice::submit`]).
    pub fn submit(&self, transfer: Transfer, done: Completion) {
        match transfer.kind {
            TransferKind::Control(setup) if transfer.endpoint == 0 => {
                let result = match self.control(setup, &transfer.data) {
                    Reply::In(mut data) => {
                        data.truncate(usize::from(setup.length).min(transfer.length));
                        TransferResult::data_in(data)
                    }
                    Reply::Out => TransferResult::data_out(transfer.data.len()),
                    Reply::Stall => {
                        log::debug!(
                            "{}: stalls request {:02x} {:02x} value {:04x} index {:04x}",
                            self.identity.description,
                            setup.request_type,
                            setup.request,
                            setup.value,
                            setup.index
                        );
                        TransferResult::failed(TransferStatus::Stall)
                    }
                };
                done.complete(result);
            }
            TransferKind::Interrupt if transfer.endpoint == INTERRUPT_IN => {
                self.interrupt_in(transfer.length, done)
            }
            _ => {
                crate::guest_warn!(
                    "{}: no endpoint {:#04x} for {:?} transfers",
                    self.identity.description,
                    transfer.endpoint,
                    transfer.kind
                );
                done.complete(TransferResult::failed(TransferStatus::Stall));
            }
        }
    }

    fn interrupt_in(&self, length: usize, done: Completion) {
        let mut s = lock(&self.state);
        if !s.configured || s.halted {
            done.complete(TransferResult::failed(TransferStatus::Stall));
            return;
        }
        s.polled = true;
        if s.waiting.len() >= MAX_WAITING_TRANSFERS {
            crate::guest_warn!(
                "{}: more than {} interrupt transfers waiting",
                self.identity.description,
                MAX_WAITING_TRANSFERS
            );
            done.complete(TransferResult::failed(TransferStatus::Error));
            return;
        }
        s.waiting.push_back(Waiting { length, done });
        s.deliver();
    }

    fn control(&self, setup: SetupPacket, data: &[u8]) -> Reply {
        let mut s = lock(&self.state);
        let [value_low, value_high] = setup.value.to_le_bytes();
        match (setup.request_type, setup.request) {
            (RT_DEVICE_IN, request::GET_DESCRIPTOR) => match value_high {
                descriptor::DEVICE => Reply::In(self.identity.device_descriptor()),
                descriptor::CONFIGURATION if value_low == 0 => {
                    Reply::In(self.identity.configuration_descriptor())
                }
                descriptor::STRING => self
                    .identity
                    .string_descriptor(value_low)
                    .map_or(Reply::Stall, Reply::In),
                // A full-speed-only device has no device qualifier (USB 2.0 §9.6.2), and a
                // bcdUSB 2.00 device no BOS.
                _ => Reply::Stall,
            },
            (RT_INTERFACE_IN, request::GET_DESCRIPTOR) if setup.index == 0 => match value_high {
                descriptor::HID => Reply::In(self.identity.hid_descriptor()),
                descriptor::HID_REPORT => Reply::In(self.identity.report_descriptor.to_vec()),
                _ => Reply::Stall,
            },
            (RT_DEVICE_IN, request::GET_STATUS) => Reply::In(vec![0, 0]),
            (RT_INTERFACE_IN, request::GET_STATUS) if setup.index == 0 => Reply::In(vec![0, 0]),
            (RT_ENDPOINT_IN, request::GET_STATUS) => match setup.index {
                0 => Reply::In(vec![0, 0]),
                i if i == u16::from(INTERRUPT_IN) => Reply::In(vec![u8::from(s.halted), 0]),
                _ => Reply::Stall,
            },
            // Remote wakeup is not offered; clearing it is harmless.
            (RT_DEVICE_OUT, request::CLEAR_FEATURE)
                if setup.value == FEATURE_DEVICE_REMOTE_WAKEUP =>
            {
                Reply::Out
            }
            (RT_ENDPOINT_OUT, request::CLEAR_FEATURE | request::SET_FEATURE)
                if setup.value == FEATURE_ENDPOINT_HALT =>
            {
                let halt = setup.request == request::SET_FEATURE;
                match setup.index {
                    0 if !halt => Reply::Out,
                    i if i == u16::from(INTERRUPT_IN) => {
                        s.halted = halt;
                        if halt {
                            s.stall_waiting();
                        }
                        Reply::Out
                    }
                    _ => Reply::Stall,
                }
            }
            (RT_DEVICE_IN, request::GET_CONFIGURATION) => {
                Reply::In(vec![if s.configured { CONFIGURATION_VALUE } else { 0 }])
            }
            (RT_DEVICE_OUT, request::SET_CONFIGURATION) => match setup.value {
                0 => {
                    s.configured = false;
                    s.waiting.clear();
                    Reply::Out
                }
                v if v == u16::from(CONFIGURATION_VALUE) => {
                    // Configuring clears the endpoint's halt (USB 2.0 §9.4.5).
                    s.configured = true;
                    s.halted = false;
                    Reply::Out
                }
                _ => Reply::Stall,
            },
            (RT_INTERFACE_IN, request::GET_INTERFACE) if s.configured && setup.index == 0 => {
                Reply::In(vec![0])
            }
            (RT_INTERFACE_OUT, request::SET_INTERFACE)
                if s.configured && setup.index == 0 && setup.value == 0 =>
            {
                s.halted = false;
                Reply::Out
            }
            // The controller carries out SET_ADDRESS; one that reaches the device is a no-op.
            (RT_DEVICE_OUT, request::SET_ADDRESS) => Reply::Out,
            (RT_CLASS_INTERFACE_IN | RT_CLASS_INTERFACE_OUT, _) if setup.index == 0 => {
                self.class_request(&mut s, setup, data)
            }
            _ => Reply::Stall,
        }
    }

    /// The HID class requests (HID 1.11 §7.2); report ids are 0 (none used).
    fn class_request(&self, s: &mut HidState<R>, setup: SetupPacket, data: &[u8]) -> Reply {
        let [report_id, value_high] = setup.value.to_le_bytes();
        let boot = self.identity.is_boot();
        match (setup.request_type, setup.request) {
            (RT_CLASS_INTERFACE_IN, hid_request::GET_REPORT) if report_id == 0 => {
                match value_high {
                    REPORT_INPUT => Reply::In(s.reports.input_report()),
                    REPORT_OUTPUT => s.reports.output_report().map_or(Reply::Stall, Reply::In),
                    _ => Reply::Stall,
                }
            }
            (RT_CLASS_INTERFACE_OUT, hid_request::SET_REPORT)
                if report_id == 0 && value_high == REPORT_OUTPUT =>
            {
                if s.reports.set_output_report(data) {
                    Reply::Out
                } else {
                    Reply::Stall
                }
            }
            (RT_CLASS_INTERFACE_IN, hid_request::GET_IDLE) if report_id == 0 => {
                Reply::In(vec![s.idle])
            }
            (RT_CLASS_INTERFACE_OUT, hid_request::SET_IDLE) if report_id == 0 => {
                s.idle = value_high;
                Reply::Out
            }
            // Only boot devices have a protocol to choose (HID 1.11 §7.2.5, §7.2.6).
            (RT_CLASS_INTERFACE_IN, hid_request::GET_PROTOCOL) if boot => {
                Reply::In(vec![s.protocol])
            }
            (RT_CLASS_INTERFACE_OUT, hid_request::SET_PROTOCOL) if boot && setup.value <= 1 => {
                s.protocol = report_id;
                Reply::Out
            }
            _ => Reply::Stall,
        }
    }
}

impl<R: HidReports> HidState<R> {
    /// Completes waiting transfers with queued reports, oldest first. Unconfigured, the
    /// queue is dropped: nobody listens.
    fn deliver(&mut self) {
        if !self.configured {
            while self.reports.next_report().is_some() {}
            return;
        }
        while !self.waiting.is_empty() {
            let Some(mut report) = self.reports.next_report() else {
                return;
            };
            if let Some(w) = self.waiting.pop_front() {
                report.truncate(w.length);
                w.done.complete(TransferResult::data_in(report));
            }
        }
    }

    fn stall_waiting(&mut self) {
        for w in self.waiting.drain(..) {
            w.done
                .complete(TransferResult::failed(TransferStatus::Stall));
        }
    }
}
