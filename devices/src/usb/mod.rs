//! USB: the xHCI host controller, the devices that plug into its ports, and the one
//! interface between them.
//!
//! Data flow: a guest driver rings an xHCI doorbell; the controller ([`xhci`]) walks the
//! endpoint's transfer ring, turns each transfer descriptor into a [`Transfer`] (bytes to
//! send, or room for bytes to receive) and hands it to the port's [`UsbDevice`] with a
//! [`Completion`]. The device answers through the completion, at once (a descriptor from
//! the emulated tablet) or later from another thread (a key press for a waiting interrupt
//! IN transfer, a host device's bulk read through usbfs); the controller then copies the
//! data into guest memory, posts a Transfer Event and raises the interrupter. Emulated
//! devices live in [`hid`]; a host device handed to the guest is [`passthrough`], which
//! speaks to the host through a backend trait the helper implements on usbfs.
//!
//! The controller never waits on a device and a device never locks the controller: a
//! completion only queues its result and wakes the controller's worker, so a device may
//! complete inside [`UsbDevice::submit`] on the vCPU thread, or from any other thread.

pub mod hid;
pub mod passthrough;
pub mod xhci;

#[cfg(test)]
mod end_to_end;

use crate::state::StateError;
use std::fmt;

/// How fast a device talks, as the port reports it (xHCI 1.2 §7.2.2.1.1 Protocol Speed ID
/// defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsbSpeed {
    /// 1.5 Mbit/s (USB 1.x low speed; PSIV 2).
    Low,
    /// 12 Mbit/s (USB 1.x full speed; PSIV 1).
    Full,
    /// 480 Mbit/s (USB 2.0; PSIV 3).
    High,
    /// 5 Gbit/s and up (USB 3.x; PSIV 4). Such a device sits on a USB 3 port.
    Super,
}

impl UsbSpeed {
    /// True for devices that belong on a USB 3 (SuperSpeed) root port.
    pub fn is_super(self) -> bool {
        self == UsbSpeed::Super
    }
}

/// The 8-byte SETUP packet that starts a control transfer (USB 2.0 §9.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetupPacket {
    /// bmRequestType: bit 7 direction (1 = device to host), bits 6..5 type, 4..0 recipient.
    pub request_type: u8,
    /// bRequest.
    pub request: u8,
    /// wValue.
    pub value: u16,
    /// wIndex.
    pub index: u16,
    /// wLength: the most bytes of the data stage.
    pub length: u16,
}

impl SetupPacket {
    /// The packet from its 8 wire bytes (little-endian fields).
    pub fn from_bytes(b: [u8; 8]) -> SetupPacket {
        SetupPacket {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        }
    }

    /// The 8 wire bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        let [v0, v1] = self.value.to_le_bytes();
        let [i0, i1] = self.index.to_le_bytes();
        let [l0, l1] = self.length.to_le_bytes();
        [self.request_type, self.request, v0, v1, i0, i1, l0, l1]
    }

    /// True when the data stage goes device to host.
    pub fn is_in(&self) -> bool {
        self.request_type & 0x80 != 0
    }
}

/// Standard requests (USB 2.0 §9.4, Table 9-4) the controller and devices look at.
pub mod request {
    pub const GET_STATUS: u8 = 0;
    pub const CLEAR_FEATURE: u8 = 1;
    pub const SET_FEATURE: u8 = 3;
    pub const SET_ADDRESS: u8 = 5;
    pub const GET_DESCRIPTOR: u8 = 6;
    pub const SET_DESCRIPTOR: u8 = 7;
    pub const GET_CONFIGURATION: u8 = 8;
    pub const SET_CONFIGURATION: u8 = 9;
    pub const GET_INTERFACE: u8 = 10;
    pub const SET_INTERFACE: u8 = 11;
}

/// Descriptor types (USB 2.0 Table 9-5; HID 1.11 §7.1).
pub mod descriptor {
    pub const DEVICE: u8 = 1;
    pub const CONFIGURATION: u8 = 2;
    pub const STRING: u8 = 3;
    pub const INTERFACE: u8 = 4;
    pub const ENDPOINT: u8 = 5;
    pub const DEVICE_QUALIFIER: u8 = 6;
    pub const BOS: u8 = 15;
    pub const HID: u8 = 0x21;
    pub const HID_REPORT: u8 = 0x22;
}

/// What kind of transfer, from the endpoint's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferKind {
    /// On endpoint 0: SETUP, an optional data stage, a status stage.
    Control(SetupPacket),
    Bulk,
    Interrupt,
    Isochronous,
}

/// One transfer the guest asked for, as the controller hands it to a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Endpoint address: number in bits 3..0, bit 7 set for IN. 0 for control.
    pub endpoint: u8,
    pub kind: TransferKind,
    /// OUT (and control writes): the bytes to send. IN: empty.
    pub data: Vec<u8>,
    /// IN (and control reads): the most bytes the guest has room for. OUT: `data.len()`.
    pub length: usize,
}

impl Transfer {
    /// True when data flows device to host (an IN endpoint or a control read).
    pub fn is_in(&self) -> bool {
        match self.kind {
            TransferKind::Control(setup) => setup.is_in(),
            _ => self.endpoint & 0x80 != 0,
        }
    }
}

/// How a transfer ended (what becomes the Transfer Event's completion code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferStatus {
    /// Done; an IN transfer may have returned fewer bytes than asked (a short packet).
    Success,
    /// The endpoint answered STALL (an unsupported request, a halted endpoint).
    Stall,
    /// The device sent more than the transfer had room for.
    Babble,
    /// The device is gone (unplugged, or released by the host).
    Disconnected,
    /// Anything else: a host I/O error, a transfer the device cannot carry out.
    Error,
}

/// A finished transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferResult {
    pub status: TransferStatus,
    /// IN: the bytes received (at most the transfer's `length`). OUT: empty.
    pub data: Vec<u8>,
    /// OUT: how many bytes the device took. IN: `data.len()`.
    pub actual: usize,
}

impl TransferResult {
    /// An IN transfer that returned `data`.
    pub fn data_in(data: Vec<u8>) -> TransferResult {
        TransferResult {
            status: TransferStatus::Success,
            actual: data.len(),
            data,
        }
    }

    /// An OUT transfer (or a control transfer without data stage) that took `actual` bytes.
    pub fn data_out(actual: usize) -> TransferResult {
        TransferResult {
            status: TransferStatus::Success,
            data: Vec::new(),
            actual,
        }
    }

    /// A transfer that ended with `status` and moved nothing.
    pub fn failed(status: TransferStatus) -> TransferResult {
        TransferResult {
            status,
            data: Vec::new(),
            actual: 0,
        }
    }
}

/// Hands one transfer's result back to the controller. Callable from any thread, exactly
/// once; it only queues the result and wakes the controller, so it never blocks on the
/// controller's lock. Dropped without [`Completion::complete`] (a device that gave up on a
/// transfer), it reports [`TransferStatus::Disconnected`]. The controller ignores results of
/// transfers it cancelled meanwhile.
pub struct Completion {
    deliver: Option<Box<dyn FnOnce(TransferResult) + Send>>,
}

impl Completion {
    /// A completion that calls `deliver` with the result.
    pub fn new(deliver: impl FnOnce(TransferResult) + Send + 'static) -> Completion {
        Completion {
            deliver: Some(Box::new(deliver)),
        }
    }

    /// Reports the transfer's result.
    pub fn complete(mut self, result: TransferResult) {
        if let Some(deliver) = self.deliver.take() {
            deliver(result);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(deliver) = self.deliver.take() {
            deliver(TransferResult::failed(TransferStatus::Disconnected));
        }
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("pending", &self.deliver.is_some())
            .finish()
    }
}

/// A device in a port of the controller: emulated (the tablet, the keyboard) or a host
/// device passed through. The controller owns it as `Box<dyn UsbDevice>` and calls it with
/// its own lock held, so methods must return quickly and never call back into the
/// controller; results go through [`Completion`].
pub trait UsbDevice: Send {
    /// The speed the port reports, and which kind of root port (USB 2 or 3) it needs.
    fn speed(&self) -> UsbSpeed;

    /// A port reset (also the first thing after attach): back to the default state,
    /// unconfigured, pending transfers dropped.
    fn reset(&mut self);

    /// Starts `transfer`; its result goes through `done`, now or later. The controller has
    /// already handled SET_ADDRESS itself (xHCI's Address Device command): the device sees
    /// every other request, SET_CONFIGURATION and SET_INTERFACE included.
    fn submit(&mut self, transfer: Transfer, done: Completion);

    /// Forgets pending transfers on `endpoint` (the guest stopped or reset it). Their
    /// completions may still run or be dropped; the controller ignores them.
    fn cancel(&mut self, endpoint: u8);

    /// Says what the device is, for logs and QMP (`"USB tablet"`, `"046d:c52b Logitech
    /// USB Receiver"`).
    fn description(&self) -> String;

    /// True once the device is gone for good (a host device unplugged): the machine takes
    /// it off its port; transfers to it end as [`TransferStatus::Disconnected`]. Emulated
    /// devices never go.
    fn is_gone(&self) -> bool {
        false
    }

    /// The device's state for a saved VM (see [`crate::state`]); transfers it still holds
    /// are left out: the controller hands them again after a restore. The default refuses:
    /// a host device passed through keeps its state in the host, where a save cannot
    /// take it.
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        Err(StateError::device(
            &format!("USB device {}", self.description()),
            "a device passed through from the host cannot be saved; unplug it first",
        ))
    }

    /// Takes back what [`UsbDevice::save_state`] gave, on a device just reset.
    fn restore_state(&mut self, _state: &[u8]) -> Result<(), StateError> {
        Err(StateError::device(
            &format!("USB device {}", self.description()),
            "has no saved state",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn setup_packets_round_trip_through_their_wire_bytes() {
        let wire = [
            0x80,
            request::GET_DESCRIPTOR,
            0x00,
            0x01,
            0x00,
            0x00,
            0x12,
            0x00,
        ];
        let setup = SetupPacket::from_bytes(wire);
        assert_eq!(setup.value, 0x0100);
        assert_eq!(setup.length, 18);
        assert!(setup.is_in());
        assert_eq!(setup.to_bytes(), wire);
    }

    #[test]
    fn a_completion_dropped_unfinished_reports_the_device_gone() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        drop(Completion::new(move |r| s.lock().unwrap().push(r.status)));
        let s = seen.clone();
        Completion::new(move |r| s.lock().unwrap().push(r.status))
            .complete(TransferResult::data_in(vec![1, 2]));
        assert_eq!(
            *seen.lock().unwrap(),
            [TransferStatus::Disconnected, TransferStatus::Success]
        );
    }

    #[test]
    fn control_reads_and_in_endpoints_flow_to_the_host() {
        let read = SetupPacket {
            request_type: 0x80,
            ..SetupPacket::default()
        };
        let t = |endpoint, kind| Transfer {
            endpoint,
            kind,
            data: Vec::new(),
            length: 0,
        };
        assert!(t(0, TransferKind::Control(read)).is_in());
        assert!(!t(0, TransferKind::Control(SetupPacket::default())).is_in());
        assert!(t(0x81, TransferKind::Interrupt).is_in());
        assert!(!t(0x02, TransferKind::Bulk).is_in());
    }
}
