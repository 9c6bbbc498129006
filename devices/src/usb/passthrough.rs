//! USB passthrough: a device plugged into the host, handed to the guest.
//!
//! Data flow: the controller hands [`UsbPassthrough`] a [`Transfer`] with its
//! [`Completion`]. Bulk, interrupt and isochronous transfers go straight to the host
//! backend ([`HostUsb::submit`]), which queues them with the host kernel and completes them
//! later from its own thread. Control transfers go through the passthrough's one worker
//! thread, in the order the guest sent them: most are forwarded to the device the same way,
//! but the requests that change what the host must do are carried out on the host instead
//! (USB 2.0 §9.4): SET_CONFIGURATION releases the old configuration's interfaces, sets the
//! new one and claims its interfaces; SET_INTERFACE selects an alternate setting;
//! CLEAR_FEATURE(ENDPOINT_HALT) clears a halted endpoint; GET_DESCRIPTOR for the device and
//! configuration descriptors is answered from the copy read when the device was opened.
//! These host calls may block for a while (the device answers a request), so they never
//! run on the vCPU thread: [`UsbDevice::submit`] only queues work and returns.
//!
//! The host kernel already addressed the device, so SET_ADDRESS never reaches it. When the
//! device vanishes (unplugged, or taken away by the host), the backend raises its
//! [`GoneSignal`]: pending transfers end with [`TransferStatus::Disconnected`], later ones
//! at once, and [`UsbDevice::is_gone`] tells the machine to take it off its port while the
//! VM keeps running. Host errors become a STALL (the device refused) or an error for that
//! transfer, never a panic.
//!
//! The helper implements [`HostUsb`] on Linux usbfs; [`testing::ScriptedHostUsb`] (feature
//! `test-support`) is a scripted mass-storage-like device for tests.

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use super::{
    Completion, SetupPacket, Transfer, TransferKind, TransferResult, TransferStatus, UsbDevice,
    UsbSpeed, descriptor, request,
};

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

/// bmRequestType of a standard request to the device, host to device (USB 2.0 Table 9-2).
const STANDARD_OUT_DEVICE: u8 = 0x00;
/// bmRequestType of a standard request to the device, device to host.
const STANDARD_IN_DEVICE: u8 = 0x80;
/// bmRequestType of a standard request to an interface, host to device.
const STANDARD_OUT_INTERFACE: u8 = 0x01;
/// bmRequestType of a standard request to an endpoint, host to device.
const STANDARD_OUT_ENDPOINT: u8 = 0x02;
/// Feature selector ENDPOINT_HALT (USB 2.0 Table 9-6).
const ENDPOINT_HALT: u16 = 0;
/// Endpoint number bits of an endpoint address (USB 2.0 §9.6.6 bEndpointAddress).
const ENDPOINT_NUMBER_MASK: u8 = 0x0f;
/// Offset of bConfigurationValue in a configuration descriptor (USB 2.0 Table 9-10).
const CONFIG_VALUE_OFFSET: usize = 5;
/// Offset of bInterfaceNumber in an interface descriptor (USB 2.0 Table 9-12).
const INTERFACE_NUMBER_OFFSET: usize = 2;

/// What went wrong on the host when the passthrough asked the backend for something.
#[derive(Debug, thiserror::Error)]
pub enum HostUsbError {
    /// The device answered STALL.
    #[error("the device stalled the request")]
    Stall,
    /// The configuration, interface, alternate setting or endpoint named does not exist.
    #[error("the device has no such {0}")]
    NotFound(&'static str),
    /// Another driver or program holds the device or interface.
    #[error("the device or interface is held by another driver or program")]
    Busy,
    /// The device is gone.
    #[error("the device is gone")]
    Disconnected,
    /// The host cannot do this (an isochronous endpoint on a backend without them).
    #[error("the host cannot carry out {0}")]
    Unsupported(&'static str),
    /// Any other host failure.
    #[error("host USB I/O failed")]
    Io(#[source] io::Error),
}

impl HostUsbError {
    /// How a guest transfer that ran into this error ends: a refused request (a STALL, a
    /// configuration or setting that does not exist) stalls, as a device would
    /// (USB 2.0 §9.2.7 Request Error); a vanished device is Disconnected; anything else is
    /// an error.
    pub fn status(&self) -> TransferStatus {
        match self {
            HostUsbError::Stall | HostUsbError::NotFound(_) => TransferStatus::Stall,
            HostUsbError::Disconnected => TransferStatus::Disconnected,
            HostUsbError::Busy | HostUsbError::Unsupported(_) | HostUsbError::Io(_) => {
                TransferStatus::Error
            }
        }
    }
}

/// Raised once when a host device vanishes; anyone may ask or wait for it.
#[derive(Default)]
pub struct GoneSignal {
    /// The flag, also readable without the lock.
    gone: AtomicBool,
    /// Who wants to hear of it; emptied when the signal is raised.
    waiters: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl GoneSignal {
    /// A signal not raised yet.
    pub fn new() -> GoneSignal {
        GoneSignal::default()
    }

    /// True once the device is gone.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Raises the signal and calls every waiter, once; true when this call raised it.
    pub fn raise(&self) -> bool {
        let waiters = {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            if self.gone.swap(true, Ordering::AcqRel) {
                return false;
            }
            std::mem::take(&mut *waiters)
        };
        for waiter in waiters {
            waiter();
        }
        true
    }

    /// Calls `notify` when the device goes, or at once when it is already gone.
    pub fn on_gone(&self, notify: impl FnOnce() + Send + 'static) {
        {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            if !self.is_gone() {
                waiters.push(Box::new(notify));
                return;
            }
        }
        notify();
    }
}

impl std::fmt::Debug for GoneSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoneSignal")
            .field("gone", &self.is_gone())
            .finish()
    }
}

/// What the passthrough needs from the host side of a USB device (Linux usbfs in the
/// helper). The descriptors are read once when the device is opened. The methods that
/// return a `Result` may block while the device answers; the passthrough calls them only
/// from its own worker thread, never from a vCPU. [`HostUsb::submit`] never blocks.
pub trait HostUsb: Send + Sync {
    /// The 18-byte device descriptor (USB 2.0 Table 9-8).
    fn device_descriptor(&self) -> &[u8];

    /// Every configuration descriptor with its interface and endpoint descriptors
    /// (wTotalLength bytes each), in descriptor index order.
    fn configuration_descriptors(&self) -> &[Vec<u8>];

    /// idVendor and idProduct from the device descriptor (offsets 8 and 10); 0 where the
    /// descriptor is too short.
    fn vendor_product(&self) -> (u16, u16) {
        let d = self.device_descriptor();
        let word = |at: usize| {
            d.get(at..at + 2)
                .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
        };
        (word(8), word(10))
    }

    /// How fast the device is plugged in.
    fn speed(&self) -> UsbSpeed;

    /// `"vvvv:pppp Maker Product"`, for logs and QMP.
    fn description(&self) -> String;

    /// Selects configuration `value` (0: unconfigured). The passthrough has released every
    /// interface it claimed before; host drivers still bound are detached first.
    fn set_configuration(&self, value: u8) -> Result<(), HostUsbError>;

    /// Takes `interface` of the active configuration for the guest, detaching a host
    /// kernel driver bound to it. The backend gives detached drivers back when it is closed
    /// (dropped), not on release, so no host driver grabs the device while the guest
    /// switches configurations.
    fn claim_interface(&self, interface: u8) -> Result<(), HostUsbError>;

    /// Gives `interface` up; its endpoints' pending transfers are cancelled.
    fn release_interface(&self, interface: u8) -> Result<(), HostUsbError>;

    /// Selects `alt_setting` of the claimed `interface`; its endpoints' pending transfers
    /// are cancelled first.
    fn set_alt_setting(&self, interface: u8, alt_setting: u8) -> Result<(), HostUsbError>;

    /// Clears a halt (STALL) on `endpoint` (an address, bit 7 set for IN) and its data
    /// toggle, on the host and on the device.
    fn clear_halt(&self, endpoint: u8) -> Result<(), HostUsbError>;

    /// Resets the device on the host's port. Called with no interface claimed.
    fn reset(&self) -> Result<(), HostUsbError>;

    /// Starts `transfer` and returns at once; `done` is completed later, from the backend's
    /// thread (or at once for a transfer refused outright): a STALL as
    /// [`TransferStatus::Stall`], a vanished device as [`TransferStatus::Disconnected`],
    /// more data than room as [`TransferStatus::Babble`], anything else (a cancelled
    /// transfer included) as [`TransferStatus::Error`].
    fn submit(&self, transfer: Transfer, done: Completion);

    /// Cancels the transfers pending on `endpoint`; they complete as errors.
    fn cancel(&self, endpoint: u8);

    /// Raised when the device vanishes.
    fn gone(&self) -> &GoneSignal;
}

/// Work for the passthrough's worker thread.
enum Job {
    /// A control transfer, started in cancel epoch `epoch`.
    Control {
        epoch: u64,
        setup: SetupPacket,
        transfer: Transfer,
        done: Completion,
    },
    /// A port reset.
    Reset,
}

/// A host USB device as the guest sees it. See the module documentation.
pub struct UsbPassthrough {
    host: Arc<dyn HostUsb>,
    /// The worker's queue; the worker ends when this is dropped.
    jobs: mpsc::Sender<Job>,
    /// Bumped when the guest cancels endpoint 0 or resets the port: control transfers queued
    /// before are dropped unstarted.
    epoch: Arc<AtomicU64>,
}

impl UsbPassthrough {
    /// Hands `host` to the guest, starting the worker thread that carries out control
    /// requests.
    pub fn new(host: Arc<dyn HostUsb>) -> Result<UsbPassthrough, HostUsbError> {
        let (jobs, queue) = mpsc::channel();
        let epoch = Arc::new(AtomicU64::new(0));
        let mut worker = Worker {
            host: host.clone(),
            epoch: epoch.clone(),
            configuration: 0,
            claimed: BTreeSet::new(),
        };
        thread::Builder::new()
            .name("usb-passthrough".into())
            .spawn(move || worker.run(&queue))
            .map_err(HostUsbError::Io)?;
        Ok(UsbPassthrough { host, jobs, epoch })
    }

    /// The backend, for the machine to watch ([`HostUsb::gone`]) or describe.
    pub fn host(&self) -> &Arc<dyn HostUsb> {
        &self.host
    }

    /// Calls `notify` once when the device vanishes (at once when it is gone already), so
    /// the machine can take it off its port.
    pub fn on_gone(&self, notify: impl FnOnce() + Send + 'static) {
        self.host.gone().on_gone(notify);
    }

    /// Queues `job`; a worker that is gone (it never panics, so only at teardown) fails
    /// the transfer.
    fn queue(&self, job: Job) {
        if let Err(mpsc::SendError(Job::Control { done, .. })) = self.jobs.send(job) {
            done.complete(TransferResult::failed(TransferStatus::Error));
        }
    }
}

impl UsbDevice for UsbPassthrough {
    fn speed(&self) -> UsbSpeed {
        self.host.speed()
    }

    fn reset(&mut self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.queue(Job::Reset);
    }

    fn submit(&mut self, transfer: Transfer, done: Completion) {
        if self.host.gone().is_gone() {
            done.complete(TransferResult::failed(TransferStatus::Disconnected));
            return;
        }
        match transfer.kind {
            TransferKind::Control(setup) => self.queue(Job::Control {
                epoch: self.epoch.load(Ordering::Acquire),
                setup,
                transfer,
                done,
            }),
            TransferKind::Bulk | TransferKind::Interrupt | TransferKind::Isochronous => {
                self.host.submit(transfer, done)
            }
        }
    }

    fn cancel(&mut self, endpoint: u8) {
        if endpoint & ENDPOINT_NUMBER_MASK == 0 {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.host.cancel(endpoint);
    }

    fn description(&self) -> String {
        self.host.description()
    }

    fn is_gone(&self) -> bool {
        self.host.gone().is_gone()
    }
}

/// The worker thread's state: what the guest configured, what it holds on the host.
struct Worker {
    host: Arc<dyn HostUsb>,
    epoch: Arc<AtomicU64>,
    /// The bConfigurationValue the guest selected; 0 when unconfigured.
    configuration: u8,
    /// Interfaces claimed on the host for the guest.
    claimed: BTreeSet<u8>,
}

impl Worker {
    /// Carries out jobs until the passthrough is dropped, then gives the interfaces back.
    fn run(&mut self, queue: &mpsc::Receiver<Job>) {
        while let Ok(job) = queue.recv() {
            match job {
                Job::Control {
                    epoch,
                    setup,
                    transfer,
                    done,
                } => {
                    if epoch != self.epoch.load(Ordering::Acquire) {
                        // Cancelled before it started; the controller ignores the result.
                        done.complete(TransferResult::failed(TransferStatus::Error));
                    } else if self.host.gone().is_gone() {
                        done.complete(TransferResult::failed(TransferStatus::Disconnected));
                    } else {
                        self.control(setup, transfer, done);
                    }
                }
                Job::Reset => self.reset(),
            }
        }
        self.release_all();
    }

    /// One control transfer: carried out on the host when it changes the host's state,
    /// answered from the cache for the device and configuration descriptors, else forwarded.
    fn control(&mut self, setup: SetupPacket, transfer: Transfer, done: Completion) {
        let room = usize::from(setup.length).min(transfer.length);
        let result = match (setup.request_type, setup.request) {
            // The host kernel addressed the device; the controller answers the guest.
            (STANDARD_OUT_DEVICE, request::SET_ADDRESS) => Ok(TransferResult::data_out(0)),
            (STANDARD_OUT_DEVICE, request::SET_CONFIGURATION) => match u8::try_from(setup.value) {
                Ok(value) => self.set_configuration(value),
                Err(_) => Err(HostUsbError::NotFound("configuration")),
            }
            .map(|()| TransferResult::data_out(0)),
            (STANDARD_IN_DEVICE, request::GET_CONFIGURATION) => {
                Ok(in_data(&[self.configuration], room))
            }
            (STANDARD_IN_DEVICE, request::GET_DESCRIPTOR) => match self.cached_descriptor(setup) {
                Some(bytes) => Ok(in_data(&bytes, room)),
                None => return self.host.submit(transfer, done),
            },
            (STANDARD_OUT_INTERFACE, request::SET_INTERFACE) => {
                match (u8::try_from(setup.index), u8::try_from(setup.value)) {
                    (Ok(interface), Ok(alt)) if self.claimed.contains(&interface) => {
                        self.host.set_alt_setting(interface, alt)
                    }
                    _ => Err(HostUsbError::NotFound("interface")),
                }
                .map(|()| TransferResult::data_out(0))
            }
            (STANDARD_OUT_ENDPOINT, request::CLEAR_FEATURE)
                if setup.value == ENDPOINT_HALT
                    && setup.index & u16::from(ENDPOINT_NUMBER_MASK) != 0 =>
            {
                match u8::try_from(setup.index) {
                    Ok(endpoint) => self.host.clear_halt(endpoint),
                    Err(_) => Err(HostUsbError::NotFound("endpoint")),
                }
                .map(|()| TransferResult::data_out(0))
            }
            _ => return self.host.submit(transfer, done),
        };
        done.complete(result.unwrap_or_else(|err| {
            crate::guest_warn!(
                "usb passthrough: {}: request {:#04x}/{:#04x} failed: {err}",
                self.host.description(),
                setup.request_type,
                setup.request
            );
            TransferResult::failed(err.status())
        }));
    }

    /// The device or configuration descriptor the guest asks for, from the cache; `None`
    /// for any other descriptor (strings, BOS), which the device answers.
    fn cached_descriptor(&self, setup: SetupPacket) -> Option<Vec<u8>> {
        let [index, kind] = setup.value.to_le_bytes();
        match kind {
            descriptor::DEVICE if index == 0 => Some(self.host.device_descriptor().to_vec()),
            descriptor::CONFIGURATION => self
                .host
                .configuration_descriptors()
                .get(usize::from(index))
                .cloned(),
            _ => None,
        }
    }

    /// SET_CONFIGURATION: releases what the guest held, selects `value` on the host and
    /// claims the interfaces of the new configuration.
    fn set_configuration(&mut self, value: u8) -> Result<(), HostUsbError> {
        let interfaces = if value == 0 {
            Vec::new()
        } else {
            self.host
                .configuration_descriptors()
                .iter()
                .find(|config| config.get(CONFIG_VALUE_OFFSET) == Some(&value))
                .map(|config| interface_numbers(config))
                .ok_or(HostUsbError::NotFound("configuration"))?
        };
        self.release_all();
        self.configuration = 0;
        self.host.set_configuration(value)?;
        self.configuration = value;
        for interface in interfaces {
            self.host.claim_interface(interface)?;
            self.claimed.insert(interface);
        }
        Ok(())
    }

    /// A port reset: back to unconfigured, interfaces released. A device the guest had
    /// configured is reset on the host too (a driver recovering it); the reset before
    /// enumeration touches nothing, the host kernel has just set the device up.
    fn reset(&mut self) {
        self.release_all();
        if self.configuration != 0
            && !self.host.gone().is_gone()
            && let Err(err) = self.host.reset()
        {
            log::warn!(
                "usb passthrough: {}: reset failed: {err}",
                self.host.description()
            );
        }
        self.configuration = 0;
    }

    /// Releases every interface claimed for the guest.
    fn release_all(&mut self) {
        for interface in std::mem::take(&mut self.claimed) {
            if let Err(err) = self.host.release_interface(interface) {
                log::debug!(
                    "usb passthrough: {}: releasing interface {interface}: {err}",
                    self.host.description()
                );
            }
        }
    }
}

/// An IN result carrying at most `room` bytes of `bytes`.
fn in_data(bytes: &[u8], room: usize) -> TransferResult {
    TransferResult::data_in(bytes.get(..room).unwrap_or(bytes).to_vec())
}

/// The interface numbers of a configuration descriptor set, each once, in order. A
/// truncated or malformed descriptor ends the walk.
pub fn interface_numbers(config: &[u8]) -> Vec<u8> {
    let mut interfaces = Vec::new();
    let mut at = 0;
    while let (Some(&len), Some(&kind)) = (config.get(at), config.get(at + 1)) {
        if len < 2 {
            break;
        }
        if kind == descriptor::INTERFACE
            && let Some(&number) = config.get(at + INTERFACE_NUMBER_OFFSET)
            && !interfaces.contains(&number)
        {
            interfaces.push(number);
        }
        at += usize::from(len);
    }
    interfaces
}

#[cfg(test)]
mod tests {
    use super::testing::{BULK_IN, BULK_OUT, HostCall, HostOp, INTERRUPT_IN, ScriptedHostUsb};
    use super::*;
    use std::time::Duration;

    /// How long a test waits for a completion that must come.
    const WAIT: Duration = Duration::from_secs(5);

    fn device() -> (Arc<ScriptedHostUsb>, UsbPassthrough) {
        let host = Arc::new(ScriptedHostUsb::mass_storage());
        let dev = UsbPassthrough::new(host.clone()).unwrap();
        (host, dev)
    }

    /// Submits `transfer` and returns the receiver its result arrives on.
    fn start(dev: &mut UsbPassthrough, transfer: Transfer) -> mpsc::Receiver<TransferResult> {
        let (tx, rx) = mpsc::channel();
        dev.submit(
            transfer,
            Completion::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        rx
    }

    fn run(dev: &mut UsbPassthrough, transfer: Transfer) -> TransferResult {
        start(dev, transfer)
            .recv_timeout(WAIT)
            .expect("transfer completes")
    }

    fn control(request_type: u8, request: u8, value: u16, index: u16, length: u16) -> Transfer {
        Transfer {
            endpoint: 0,
            kind: TransferKind::Control(SetupPacket {
                request_type,
                request,
                value,
                index,
                length,
            }),
            data: Vec::new(),
            length: usize::from(length),
        }
    }

    fn set_configuration(value: u16) -> Transfer {
        control(STANDARD_OUT_DEVICE, request::SET_CONFIGURATION, value, 0, 0)
    }

    fn bulk_in(length: usize) -> Transfer {
        Transfer {
            endpoint: BULK_IN,
            kind: TransferKind::Bulk,
            data: Vec::new(),
            length,
        }
    }

    fn bulk_out(data: &[u8]) -> Transfer {
        Transfer {
            endpoint: BULK_OUT,
            kind: TransferKind::Bulk,
            data: data.to_vec(),
            length: data.len(),
        }
    }

    fn configured() -> (Arc<ScriptedHostUsb>, UsbPassthrough) {
        let (host, mut dev) = device();
        assert_eq!(
            run(&mut dev, set_configuration(1)).status,
            TransferStatus::Success
        );
        host.take_calls();
        (host, dev)
    }

    #[test]
    fn device_and_configuration_descriptors_come_from_the_cache_cut_to_the_request() {
        let (host, mut dev) = device();
        let got = run(
            &mut dev,
            control(0x80, request::GET_DESCRIPTOR, 0x0100, 0, 8),
        );
        assert_eq!(got.data, host.device_descriptor()[..8]);
        let got = run(
            &mut dev,
            control(0x80, request::GET_DESCRIPTOR, 0x0201, 0, 255),
        );
        assert_eq!(got.data, host.configuration_descriptors()[1]);
        assert_eq!(
            host.take_calls(),
            [] as [HostCall; 0],
            "nothing asked of the device"
        );
    }

    #[test]
    fn other_requests_are_forwarded_to_the_device() {
        let (host, mut dev) = device();
        let languages = run(
            &mut dev,
            control(0x80, request::GET_DESCRIPTOR, 0x0300, 0, 255),
        );
        assert_eq!(languages.data, [4, descriptor::STRING, 0x09, 0x04]);
        // Mass storage Get Max LUN (class request to interface 0).
        let lun = run(&mut dev, control(0xa1, 0xfe, 0, 0, 1));
        assert_eq!(lun.data, [0]);
        assert!(matches!(
            host.take_calls()[..],
            [HostCall::Control(_), HostCall::Control(_)]
        ));
    }

    #[test]
    fn set_address_is_answered_without_asking_the_host() {
        let (host, mut dev) = device();
        let got = run(&mut dev, control(0, request::SET_ADDRESS, 5, 0, 0));
        assert_eq!(got.status, TransferStatus::Success);
        assert_eq!(host.take_calls(), [] as [HostCall; 0]);
    }

    #[test]
    fn set_configuration_claims_the_new_interfaces_after_releasing_the_old() {
        let (host, mut dev) = device();
        assert_eq!(
            run(&mut dev, set_configuration(1)).status,
            TransferStatus::Success
        );
        assert_eq!(
            host.take_calls(),
            [HostCall::SetConfiguration(1), HostCall::Claim(0)]
        );
        assert_eq!(
            run(&mut dev, set_configuration(2)).status,
            TransferStatus::Success
        );
        assert_eq!(
            host.take_calls(),
            [
                HostCall::Release(0),
                HostCall::SetConfiguration(2),
                HostCall::Claim(0),
                HostCall::Claim(1)
            ]
        );
        let got = run(&mut dev, control(0x80, request::GET_CONFIGURATION, 0, 0, 1));
        assert_eq!(got.data, [2]);
        assert_eq!(host.claimed(), [0, 1]);
    }

    #[test]
    fn unconfiguring_releases_every_interface() {
        let (host, mut dev) = configured();
        assert_eq!(
            run(&mut dev, set_configuration(0)).status,
            TransferStatus::Success
        );
        assert_eq!(
            host.take_calls(),
            [HostCall::Release(0), HostCall::SetConfiguration(0)]
        );
        assert_eq!(host.claimed(), [0u8; 0]);
    }

    #[test]
    fn an_unknown_configuration_stalls_without_touching_the_host() {
        let (host, mut dev) = configured();
        assert_eq!(
            run(&mut dev, set_configuration(7)).status,
            TransferStatus::Stall
        );
        assert_eq!(
            run(&mut dev, set_configuration(0x0101)).status,
            TransferStatus::Stall
        );
        assert_eq!(host.take_calls(), [] as [HostCall; 0]);
        assert_eq!(host.claimed(), [0], "the old configuration stays");
    }

    #[test]
    fn set_interface_selects_the_alternate_setting_on_the_host() {
        let (host, mut dev) = configured();
        let got = run(&mut dev, control(0x01, request::SET_INTERFACE, 1, 0, 0));
        assert_eq!(got.status, TransferStatus::Success);
        assert_eq!(host.take_calls(), [HostCall::SetAltSetting(0, 1)]);
        let missing = run(&mut dev, control(0x01, request::SET_INTERFACE, 9, 0, 0));
        assert_eq!(missing.status, TransferStatus::Stall);
        let unclaimed = run(&mut dev, control(0x01, request::SET_INTERFACE, 0, 4, 0));
        assert_eq!(unclaimed.status, TransferStatus::Stall);
        assert_eq!(host.take_calls(), [HostCall::SetAltSetting(0, 9)]);
    }

    #[test]
    fn bulk_data_flows_both_ways() {
        let (host, mut dev) = configured();
        let cbw = [0x55, 0x53, 0x42, 0x43, 1, 2, 3, 4];
        let sent = run(&mut dev, bulk_out(&cbw));
        assert_eq!((sent.status, sent.actual), (TransferStatus::Success, 8));
        assert_eq!(host.bulk_out_data(), [cbw.to_vec()]);
        host.push_bulk_in(vec![0xab; 13]);
        let read = run(&mut dev, bulk_in(512));
        assert_eq!(
            (read.status, read.data),
            (TransferStatus::Success, vec![0xab; 13])
        );
    }

    #[test]
    fn more_data_than_room_is_babble() {
        let (host, mut dev) = configured();
        host.push_bulk_in(vec![1; 64]);
        assert_eq!(run(&mut dev, bulk_in(13)).status, TransferStatus::Babble);
    }

    #[test]
    fn transfers_to_unclaimed_interfaces_fail() {
        let (_host, mut dev) = device();
        assert_eq!(run(&mut dev, bulk_out(&[1])).status, TransferStatus::Error);
        let (_host, mut dev) = configured();
        let interrupt = Transfer {
            endpoint: INTERRUPT_IN,
            kind: TransferKind::Interrupt,
            data: Vec::new(),
            length: 8,
        };
        assert_eq!(run(&mut dev, interrupt).status, TransferStatus::Error);
    }

    #[test]
    fn a_bulk_read_completes_later_from_another_thread() {
        let (host, mut dev) = configured();
        let pending = start(&mut dev, bulk_in(512));
        assert_eq!(
            pending.try_recv(),
            Err(mpsc::TryRecvError::Empty),
            "submit returned without data to give"
        );
        let pusher = {
            let host = host.clone();
            thread::spawn(move || host.push_bulk_in(vec![7; 31]))
        };
        let read = pending.recv_timeout(WAIT).unwrap();
        assert_eq!(read.data, vec![7; 31]);
        pusher.join().unwrap();
    }

    #[test]
    fn clear_feature_endpoint_halt_clears_a_stalled_endpoint() {
        let (host, mut dev) = configured();
        host.stall(BULK_IN);
        assert_eq!(run(&mut dev, bulk_in(512)).status, TransferStatus::Stall);
        let clear = control(
            0x02,
            request::CLEAR_FEATURE,
            ENDPOINT_HALT,
            u16::from(BULK_IN),
            0,
        );
        assert_eq!(run(&mut dev, clear).status, TransferStatus::Success);
        assert_eq!(host.take_calls(), [HostCall::ClearHalt(BULK_IN)]);
        host.push_bulk_in(vec![1, 2, 3]);
        assert_eq!(run(&mut dev, bulk_in(512)).data, [1, 2, 3]);
    }

    #[test]
    fn a_stall_while_waiting_ends_the_pending_read() {
        let (host, mut dev) = configured();
        let pending = start(&mut dev, bulk_in(512));
        host.stall(BULK_IN);
        assert_eq!(
            pending.recv_timeout(WAIT).unwrap().status,
            TransferStatus::Stall
        );
    }

    #[test]
    fn cancel_ends_the_endpoints_transfers_and_later_data_goes_to_the_next() {
        let (host, mut dev) = configured();
        let cancelled = start(&mut dev, bulk_in(512));
        dev.cancel(BULK_IN);
        assert_eq!(host.take_calls(), [HostCall::Cancel(BULK_IN)]);
        assert_eq!(
            cancelled.recv_timeout(WAIT).unwrap().status,
            TransferStatus::Error
        );
        let next = start(&mut dev, bulk_in(512));
        host.push_bulk_in(vec![9]);
        assert_eq!(next.recv_timeout(WAIT).unwrap().data, [9]);
    }

    #[test]
    fn unplugging_mid_transfer_ends_it_disconnected_and_reports_the_device_gone() {
        let (host, mut dev) = configured();
        let (told_tx, told) = mpsc::channel();
        dev.on_gone(move || {
            let _ = told_tx.send(());
        });
        let pending = start(&mut dev, bulk_in(512));
        assert!(!dev.is_gone());
        host.vanish();
        assert_eq!(
            pending.recv_timeout(WAIT).unwrap().status,
            TransferStatus::Disconnected
        );
        assert!(dev.is_gone());
        told.recv_timeout(WAIT).expect("the machine is told");
        let later = start(&mut dev, bulk_out(&[1]));
        assert_eq!(
            later.try_recv().unwrap().status,
            TransferStatus::Disconnected,
            "completed at once"
        );
        let control = start(&mut dev, control(0x80, request::GET_STATUS, 0, 0, 2));
        assert_eq!(
            control.try_recv().unwrap().status,
            TransferStatus::Disconnected
        );
    }

    #[test]
    fn backend_errors_become_stall_or_error() {
        let (host, mut dev) = device();
        host.fail_next(HostOp::Claim, HostUsbError::Busy);
        assert_eq!(
            run(&mut dev, set_configuration(1)).status,
            TransferStatus::Error
        );
        host.fail_next(HostOp::SetConfiguration, HostUsbError::Disconnected);
        assert_eq!(
            run(&mut dev, set_configuration(1)).status,
            TransferStatus::Disconnected
        );
        assert_eq!(
            run(&mut dev, set_configuration(1)).status,
            TransferStatus::Success
        );
        host.fail_next(HostOp::SetAltSetting, HostUsbError::Stall);
        let alt = run(&mut dev, control(0x01, request::SET_INTERFACE, 1, 0, 0));
        assert_eq!(alt.status, TransferStatus::Stall);
        host.fail_next(
            HostOp::ClearHalt,
            HostUsbError::Io(io::Error::other("EPROTO")),
        );
        let clear = control(0x02, request::CLEAR_FEATURE, 0, u16::from(BULK_OUT), 0);
        assert_eq!(run(&mut dev, clear).status, TransferStatus::Error);
        // A request the device does not know stalls; isochronous is not carried.
        assert_eq!(
            run(&mut dev, control(0xc0, 0x42, 0, 0, 4)).status,
            TransferStatus::Stall
        );
        let iso = Transfer {
            endpoint: 0x85,
            kind: TransferKind::Isochronous,
            data: Vec::new(),
            length: 192,
        };
        assert_eq!(run(&mut dev, iso).status, TransferStatus::Error);
    }

    #[test]
    fn a_port_reset_releases_interfaces_and_resets_a_configured_device() {
        let (host, mut dev) = device();
        dev.reset();
        // Wait for the worker: the next request is answered after the reset.
        run(&mut dev, control(0x80, request::GET_CONFIGURATION, 0, 0, 1));
        assert_eq!(
            host.take_calls(),
            [] as [HostCall; 0],
            "an enumeration reset touches nothing"
        );
        run(&mut dev, set_configuration(1));
        host.take_calls();
        dev.reset();
        let got = run(&mut dev, control(0x80, request::GET_CONFIGURATION, 0, 0, 1));
        assert_eq!(got.data, [0], "unconfigured after the reset");
        assert_eq!(host.take_calls(), [HostCall::Release(0), HostCall::Reset]);
    }

    #[test]
    fn interface_numbers_survive_malformed_descriptors() {
        let host = ScriptedHostUsb::mass_storage();
        let config2 = &host.configuration_descriptors()[1];
        assert_eq!(interface_numbers(config2), [0, 1]);
        assert_eq!(interface_numbers(&config2[..20]), [0], "truncated");
        assert_eq!(
            interface_numbers(&[9, 2, 0, 0, 0]),
            [0u8; 0],
            "no interfaces"
        );
        assert_eq!(
            interface_numbers(&[0, 4, 0, 0]),
            [0u8; 0],
            "zero length ends the walk"
        );
        assert_eq!(
            interface_numbers(&[9, 4]),
            [0u8; 0],
            "cut inside a descriptor"
        );
    }

    #[test]
    fn the_gone_signal_rises_once_and_tells_late_listeners_at_once() {
        let signal = GoneSignal::new();
        let (tx, heard) = mpsc::channel();
        let early = tx.clone();
        signal.on_gone(move || early.send("early").unwrap());
        assert_eq!(heard.try_recv(), Err(mpsc::TryRecvError::Empty));
        assert!(signal.raise());
        assert!(!signal.raise(), "only the first raise counts");
        signal.on_gone(move || tx.send("late").unwrap());
        assert_eq!(heard.try_iter().collect::<Vec<_>>(), ["early", "late"]);
        assert!(signal.is_gone());
    }

    #[test]
    fn the_device_describes_itself_and_its_speed() {
        let (_host, dev) = device();
        assert_eq!(dev.speed(), UsbSpeed::High);
        assert!(
            dev.description().starts_with("0781:5581"),
            "{}",
            dev.description()
        );
    }
}
