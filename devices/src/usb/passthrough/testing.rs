//! A scripted host USB device for tests: a mass-storage-like stick behind [`HostUsb`].
//!
//! Data flow: the passthrough calls the [`HostUsb`] methods as it would on usbfs; the
//! script answers them from its own state (configuration, claimed interfaces, halted
//! endpoints), records each call for the test to check ([`ScriptedHostUsb::take_calls`])
//! and keeps bulk IN reads waiting until the test pushes data
//! ([`ScriptedHostUsb::push_bulk_in`]), from any thread, the way a real device answers
//! later. The test can stall an endpoint, make the next host call fail, or pull the
//! device out mid-transfer ([`ScriptedHostUsb::vanish`]).
//!
//! The device: 0781:5581, high speed, two configurations. Configuration 1 has interface 0
//! (mass storage, bulk-only) with alternate settings 0 and 1, each with bulk IN
//! [`BULK_IN`] and bulk OUT [`BULK_OUT`]; configuration 2 adds interface 1 with interrupt
//! IN [`INTERRUPT_IN`]. Built for unit tests and, with the `test-support` feature, for the
//! helper's tests.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{GoneSignal, HostUsb, HostUsbError};
use crate::usb::{
    Completion, SetupPacket, Transfer, TransferKind, TransferResult, TransferStatus, UsbSpeed,
    descriptor, request,
};

/// The stick's vendor id.
pub const VENDOR: u16 = 0x0781;
/// The stick's product id.
pub const PRODUCT: u16 = 0x5581;
/// Bulk IN endpoint of interface 0.
pub const BULK_IN: u8 = 0x81;
/// Bulk OUT endpoint of interface 0.
pub const BULK_OUT: u8 = 0x02;
/// Interrupt IN endpoint of interface 1 (configuration 2 only).
pub const INTERRUPT_IN: u8 = 0x83;
/// wMaxPacketSize of the bulk endpoints at high speed (USB 2.0 §5.8.3).
const BULK_PACKET: u16 = 512;
/// bmAttributes transfer types (USB 2.0 Table 9-13).
const BULK: u8 = 2;
const INTERRUPT: u8 = 3;
/// Mass storage class, SCSI transparent, bulk-only (USB MSC overview §2, §3).
const MASS_STORAGE: [u8; 3] = [0x08, 0x06, 0x50];
/// Mass storage Bulk-Only requests (USB MSC BOT §3.1, §3.2).
const BOT_RESET: u8 = 0xff;
const GET_MAX_LUN: u8 = 0xfe;

/// A host call the passthrough made, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCall {
    SetConfiguration(u8),
    Claim(u8),
    Release(u8),
    SetAltSetting(u8, u8),
    ClearHalt(u8),
    Reset,
    Cancel(u8),
    /// A control transfer forwarded to the device.
    Control(SetupPacket),
}

/// A host operation the test can make fail once ([`ScriptedHostUsb::fail_next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostOp {
    SetConfiguration,
    Claim,
    Release,
    SetAltSetting,
    ClearHalt,
    Reset,
}

/// The device's state and the test's script.
#[derive(Default)]
struct Script {
    configuration: u8,
    claimed: BTreeSet<u8>,
    alt_settings: BTreeMap<u8, u8>,
    halted: BTreeSet<u8>,
    bulk_in: VecDeque<Vec<u8>>,
    bulk_out: Vec<Vec<u8>>,
    /// IN transfers waiting for data.
    waiting: Vec<(Transfer, Completion)>,
    calls: Vec<HostCall>,
    failures: Vec<(HostOp, HostUsbError)>,
}

impl Script {
    /// The error the test planted for `op`, taken.
    fn planted(&mut self, op: HostOp) -> Result<(), HostUsbError> {
        match self.failures.iter().position(|(planted, _)| *planted == op) {
            Some(at) => Err(self.failures.remove(at).1),
            None => Ok(()),
        }
    }

    /// The interface that owns `endpoint` in the active configuration.
    fn owner(&self, endpoint: u8) -> Option<u8> {
        match (self.configuration, endpoint) {
            (1 | 2, BULK_IN | BULK_OUT) => Some(0),
            (2, INTERRUPT_IN) => Some(1),
            _ => None,
        }
    }

    /// The waiting transfers on `endpoint` (every endpoint for `None`), taken.
    fn take_waiting(&mut self, endpoint: Option<u8>) -> Vec<(Transfer, Completion)> {
        let (taken, kept) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(t, _)| endpoint.is_none_or(|ep| t.endpoint == ep));
        self.waiting = kept;
        taken
    }
}

/// The scripted device. See the module documentation.
pub struct ScriptedHostUsb {
    device: Vec<u8>,
    configurations: Vec<Vec<u8>>,
    script: Mutex<Script>,
    gone: GoneSignal,
}

impl ScriptedHostUsb {
    /// The mass-storage stick, plugged in and unconfigured.
    pub fn mass_storage() -> ScriptedHostUsb {
        let [vl, vh] = VENDOR.to_le_bytes();
        let [pl, ph] = PRODUCT.to_le_bytes();
        // Device descriptor (USB 2.0 Table 9-8): USB 2.0, class per interface, 64-byte
        // endpoint 0, strings 1..3, two configurations.
        let device = vec![
            18,
            descriptor::DEVICE,
            0x00,
            0x02,
            0,
            0,
            0,
            64,
            vl,
            vh,
            pl,
            ph,
            0x00,
            0x01,
            1,
            2,
            3,
            2,
        ];
        let bulk_pair = [
            endpoint(BULK_IN, BULK, BULK_PACKET),
            endpoint(BULK_OUT, BULK, BULK_PACKET),
        ]
        .concat();
        let config1 = configuration(
            1,
            1,
            &[
                interface(0, 0, 2, MASS_STORAGE),
                bulk_pair.clone(),
                interface(0, 1, 2, MASS_STORAGE),
                bulk_pair.clone(),
            ]
            .concat(),
        );
        let config2 = configuration(
            2,
            2,
            &[
                interface(0, 0, 2, MASS_STORAGE),
                bulk_pair,
                interface(1, 0, 1, [0xff, 0, 0]),
                endpoint(INTERRUPT_IN, INTERRUPT, 8),
            ]
            .concat(),
        );
        ScriptedHostUsb {
            device,
            configurations: vec![config1, config2],
            script: Mutex::new(Script::default()),
            gone: GoneSignal::new(),
        }
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The host calls made since the last look, taken.
    pub fn take_calls(&self) -> Vec<HostCall> {
        std::mem::take(&mut self.script().calls)
    }

    /// The interfaces claimed now.
    pub fn claimed(&self) -> Vec<u8> {
        self.script().claimed.iter().copied().collect()
    }

    /// What the guest wrote to [`BULK_OUT`], one entry per transfer.
    pub fn bulk_out_data(&self) -> Vec<Vec<u8>> {
        self.script().bulk_out.clone()
    }

    /// Data for the next read of [`BULK_IN`]: a waiting read completes now, on the
    /// caller's thread; else the next read gets it.
    pub fn push_bulk_in(&self, data: Vec<u8>) {
        let waiting = {
            let mut script = self.script();
            match script
                .waiting
                .iter()
                .position(|(t, _)| t.endpoint == BULK_IN)
            {
                Some(at) => script.waiting.remove(at),
                None => return script.bulk_in.push_back(data),
            }
        };
        let (transfer, done) = waiting;
        done.complete(read_result(data, transfer.length));
    }

    /// Halts `endpoint`: waiting and later transfers stall until [`HostUsb::clear_halt`].
    pub fn stall(&self, endpoint: u8) {
        let stalled = {
            let mut script = self.script();
            script.halted.insert(endpoint);
            script.take_waiting(Some(endpoint))
        };
        for (_, done) in stalled {
            done.complete(TransferResult::failed(TransferStatus::Stall));
        }
    }

    /// Makes the next `op` fail with `error`.
    pub fn fail_next(&self, op: HostOp, error: HostUsbError) {
        self.script().failures.push((op, error));
    }

    /// Pulls the device out: waiting transfers end Disconnected, the gone signal rises.
    pub fn vanish(&self) {
        let waiting = self.script().take_waiting(None);
        self.gone.raise();
        for (_, done) in waiting {
            done.complete(TransferResult::failed(TransferStatus::Disconnected));
        }
    }

    /// A management call: fails when gone or planted, else records `call`.
    fn call(&self, op: HostOp, call: HostCall) -> Result<MutexGuard<'_, Script>, HostUsbError> {
        if self.gone.is_gone() {
            return Err(HostUsbError::Disconnected);
        }
        let mut script = self.script();
        script.calls.push(call);
        script.planted(op)?;
        Ok(script)
    }

    /// A control transfer the device answers itself.
    fn control(&self, setup: SetupPacket, transfer: &Transfer) -> TransferResult {
        self.script().calls.push(HostCall::Control(setup));
        let room = usize::from(setup.length).min(transfer.length);
        let reply = |bytes: Vec<u8>| read_result(bytes, room);
        let [index, kind] = setup.value.to_le_bytes();
        match (setup.request_type, setup.request) {
            (0x80, request::GET_DESCRIPTOR) if kind == descriptor::STRING => match index {
                0 => reply(vec![4, descriptor::STRING, 0x09, 0x04]),
                1 => reply(string("Hospes")),
                2 => reply(string("Scripted stick")),
                _ => TransferResult::failed(TransferStatus::Stall),
            },
            (0x80, request::GET_STATUS) => reply(vec![0, 0]),
            (0xa1, GET_MAX_LUN) => reply(vec![0]),
            (0x21, BOT_RESET) => TransferResult::data_out(0),
            _ => TransferResult::failed(TransferStatus::Stall),
        }
    }
}

impl HostUsb for ScriptedHostUsb {
    fn device_descriptor(&self) -> &[u8] {
        &self.device
    }

    fn configuration_descriptors(&self) -> &[Vec<u8>] {
        &self.configurations
    }

    fn speed(&self) -> UsbSpeed {
        UsbSpeed::High
    }

    fn description(&self) -> String {
        format!("{VENDOR:04x}:{PRODUCT:04x} Hospes Scripted stick")
    }

    fn set_configuration(&self, value: u8) -> Result<(), HostUsbError> {
        let mut script = self.call(HostOp::SetConfiguration, HostCall::SetConfiguration(value))?;
        if value > 2 {
            return Err(HostUsbError::NotFound("configuration"));
        }
        // Linux refuses to switch while interfaces are claimed (EBUSY).
        if !script.claimed.is_empty() {
            return Err(HostUsbError::Busy);
        }
        script.configuration = value;
        script.alt_settings.clear();
        Ok(())
    }

    fn claim_interface(&self, interface: u8) -> Result<(), HostUsbError> {
        let mut script = self.call(HostOp::Claim, HostCall::Claim(interface))?;
        let exists = matches!((script.configuration, interface), (1 | 2, 0) | (2, 1));
        if !exists {
            return Err(HostUsbError::NotFound("interface"));
        }
        if !script.claimed.insert(interface) {
            return Err(HostUsbError::Busy);
        }
        Ok(())
    }

    fn release_interface(&self, interface: u8) -> Result<(), HostUsbError> {
        let mut script = self.call(HostOp::Release, HostCall::Release(interface))?;
        if !script.claimed.remove(&interface) {
            return Err(HostUsbError::NotFound("interface"));
        }
        let owned: Vec<u8> = [BULK_IN, BULK_OUT, INTERRUPT_IN]
            .into_iter()
            .filter(|&ep| script.owner(ep) == Some(interface))
            .collect();
        let mut cancelled = Vec::new();
        for ep in owned {
            cancelled.extend(script.take_waiting(Some(ep)));
        }
        drop(script);
        for (_, done) in cancelled {
            done.complete(TransferResult::failed(TransferStatus::Error));
        }
        Ok(())
    }

    fn set_alt_setting(&self, interface: u8, alt_setting: u8) -> Result<(), HostUsbError> {
        let mut script = self.call(
            HostOp::SetAltSetting,
            HostCall::SetAltSetting(interface, alt_setting),
        )?;
        let exists = match (script.configuration, interface) {
            (1, 0) => alt_setting <= 1,
            (2, 0 | 1) => alt_setting == 0,
            _ => false,
        };
        if !exists || !script.claimed.contains(&interface) {
            return Err(HostUsbError::NotFound("alternate setting"));
        }
        script.alt_settings.insert(interface, alt_setting);
        Ok(())
    }

    fn clear_halt(&self, endpoint: u8) -> Result<(), HostUsbError> {
        let mut script = self.call(HostOp::ClearHalt, HostCall::ClearHalt(endpoint))?;
        script.halted.remove(&endpoint);
        Ok(())
    }

    fn reset(&self) -> Result<(), HostUsbError> {
        let mut script = self.call(HostOp::Reset, HostCall::Reset)?;
        script.halted.clear();
        Ok(())
    }

    fn submit(&self, transfer: Transfer, done: Completion) {
        if self.gone.is_gone() {
            return done.complete(TransferResult::failed(TransferStatus::Disconnected));
        }
        if let TransferKind::Control(setup) = transfer.kind {
            let result = self.control(setup, &transfer);
            return done.complete(result);
        }
        let mut script = self.script();
        let claimed = script
            .owner(transfer.endpoint)
            .is_some_and(|interface| script.claimed.contains(&interface));
        if transfer.kind == TransferKind::Isochronous || !claimed {
            drop(script);
            return done.complete(TransferResult::failed(TransferStatus::Error));
        }
        if script.halted.contains(&transfer.endpoint) {
            drop(script);
            return done.complete(TransferResult::failed(TransferStatus::Stall));
        }
        if !transfer.is_in() {
            let actual = transfer.data.len();
            script.bulk_out.push(transfer.data);
            drop(script);
            return done.complete(TransferResult::data_out(actual));
        }
        match script.bulk_in.pop_front() {
            Some(data) if transfer.endpoint == BULK_IN => {
                drop(script);
                done.complete(read_result(data, transfer.length));
            }
            other => {
                if let Some(data) = other {
                    script.bulk_in.push_front(data);
                }
                script.waiting.push((transfer, done));
            }
        }
    }

    fn cancel(&self, endpoint: u8) {
        let cancelled = {
            let mut script = self.script();
            script.calls.push(HostCall::Cancel(endpoint));
            script.take_waiting(Some(endpoint))
        };
        for (_, done) in cancelled {
            done.complete(TransferResult::failed(TransferStatus::Error));
        }
    }

    fn gone(&self) -> &GoneSignal {
        &self.gone
    }
}

/// An IN result for `data` read into `room` bytes: Babble when it does not fit.
fn read_result(data: Vec<u8>, room: usize) -> TransferResult {
    if data.len() > room {
        return TransferResult::failed(TransferStatus::Babble);
    }
    TransferResult::data_in(data)
}

/// A configuration descriptor (USB 2.0 Table 9-10) followed by `rest`: bus powered, 100 mA.
fn configuration(value: u8, interfaces: u8, rest: &[u8]) -> Vec<u8> {
    let total = u16::try_from(9 + rest.len()).unwrap_or(u16::MAX);
    let [tl, th] = total.to_le_bytes();
    let mut bytes = vec![
        9,
        descriptor::CONFIGURATION,
        tl,
        th,
        interfaces,
        value,
        0,
        0x80,
        50,
    ];
    bytes.extend_from_slice(rest);
    bytes
}

/// An interface descriptor (USB 2.0 Table 9-12) of class/subclass/protocol `class`.
fn interface(number: u8, alt: u8, endpoints: u8, class: [u8; 3]) -> Vec<u8> {
    let [c, s, p] = class;
    vec![9, descriptor::INTERFACE, number, alt, endpoints, c, s, p, 0]
}

/// An endpoint descriptor (USB 2.0 Table 9-13).
fn endpoint(address: u8, kind: u8, max_packet: u16) -> Vec<u8> {
    let [ml, mh] = max_packet.to_le_bytes();
    vec![7, descriptor::ENDPOINT, address, kind, ml, mh, 0]
}

/// A string descriptor (USB 2.0 §9.6.7) holding `text` in UTF-16LE.
fn string(text: &str) -> Vec<u8> {
    let units: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut bytes = vec![
        u8::try_from(2 + units.len()).unwrap_or(u8::MAX),
        descriptor::STRING,
    ];
    bytes.extend(units);
    bytes
}
