//! A host USB device through Linux usbfs (`/dev/bus/usb/BBB/DDD`), via nusb: the backend
//! behind the guest's [`UsbPassthrough`].
//!
//! Data flow: [`UsbfsDevice::open`] finds the device (by vendor:product, by the sysfs port
//! the app's list shows, or by bus and address), opens its usbfs node and reads the
//! descriptors once; [`UsbfsDevice::from_fd`] wraps a node something else opened (the XDG USB
//! portal). The passthrough then calls [`HostUsb`]: management calls (configuration,
//! interface claims with the host kernel driver detached, alternate settings, halts,
//! reset) run as blocking usbfs ioctls on the passthrough's worker thread; transfers are
//! submitted as URBs and return at once. One worker thread per device polls what is in
//! flight (each endpoint's URB queue, control transfers, the hot-plug stream) with a waker
//! that unparks it, and calls the guest's [`Completion`]s: a STALL becomes
//! [`TransferStatus::Stall`], ENODEV [`TransferStatus::Disconnected`].
//!
//! Unplug: the worker watches hot-plug events ([`nusb::watch_devices`]); when the device
//! leaves (or a transfer ends with ENODEV) it raises the device's [`GoneSignal`], so the
//! machine takes it off its port. To hand a replugged device back, the helper watches
//! arrivals with [`watch_arrivals`] and re-opens the one [`UsbSelector::matches`].
//!
//! Host kernel drivers detached for the guest are given back when the device is dropped
//! (not when an interface is released: a host driver must not grab the device while the
//! guest switches configurations). Isochronous transfers are not carried (nusb 0.2 has
//! none); they end as errors.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

use futures_core::Stream;
use hospes_core::config::UsbDevice;
use hospes_core::usb_host::HostUsbDevice;
use hospes_devices::usb::passthrough::{GoneSignal, HostUsb, HostUsbError, UsbPassthrough};
use hospes_devices::usb::{
    Completion, SetupPacket, Transfer, TransferKind, TransferResult, TransferStatus, UsbSpeed,
};
use nusb::descriptors::TransferType;
use nusb::hotplug::{HotplugEvent, HotplugWatch};
use nusb::transfer::{
    Buffer, Bulk, ControlIn, ControlOut, ControlType, In, Interrupt, Out, Recipient, TransferError,
};
use nusb::{DeviceId, DeviceInfo, Endpoint, Interface, MaybeFuture};

/// How long a control transfer may take before usbfs gives up on it. Guest drivers time
/// out sooner (Linux: 5 s) and cancel; this only bounds a request nobody waits for.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing waits for one cancelled URB to come back from the kernel.
const CANCEL_WAIT: Duration = Duration::from_secs(1);
/// bmRequestType bits 6..5, the request type (USB 2.0 Table 9-2).
const REQUEST_TYPE_SHIFT: u8 = 5;
/// bmRequestType bits 4..0, the recipient.
const RECIPIENT_MASK: u8 = 0x1f;
/// bcdUSB from which a device is SuperSpeed (USB 3.2 §9.6.1).
const BCD_USB_3: u16 = 0x0300;
/// Where sysfs lists USB devices (nusb reads it; absent on a host without USB).
const SYSFS_USB_DEVICES: &str = "/sys/bus/usb/devices";
/// Where usbfs puts device nodes: `/dev/bus/usb/BBB/DDD`.
const USBFS_ROOT: &str = "/dev/bus/usb";

/// Errors opening or watching host USB devices.
#[derive(Debug, thiserror::Error)]
pub enum UsbfsError {
    /// The host's device list cannot be read.
    #[error("cannot list the host's USB devices")]
    List(#[source] io::Error),
    /// No device matches.
    #[error("no USB device {0} is plugged in")]
    NotFound(UsbSelector),
    /// The device node is not ours to open.
    #[error(
        "permission denied opening {} (USB device {id}): {}",
        .path.display(),
        access_hint(*.id)
    )]
    PermissionDenied { path: PathBuf, id: UsbDevice },
    /// Opening failed otherwise.
    #[error("cannot open {} (USB device {id})", .path.display())]
    Open {
        path: PathBuf,
        id: UsbDevice,
        #[source]
        source: io::Error,
    },
    /// A file descriptor handed over is not a usable usbfs node.
    #[error("cannot use file descriptor {fd} as a USB device")]
    FromFd {
        fd: i32,
        #[source]
        source: io::Error,
    },
    /// Hot-plug events cannot be watched.
    #[error("cannot watch USB devices come and go")]
    Watch(#[source] io::Error),
    /// The worker thread cannot start.
    #[error("cannot start the USB device's worker thread")]
    Thread(#[source] io::Error),
}

/// How to let the user open `id`'s node: a udev rule, or the `plugdev` group.
pub fn access_hint(id: UsbDevice) -> String {
    format!(
        "let your user use it with a udev rule such as \
         SUBSYSTEM==\"usb\", ATTR{{idVendor}}==\"{:04x}\", ATTR{{idProduct}}==\"{:04x}\", \
         TAG+=\"uaccess\" in /etc/udev/rules.d/70-hospes-usb.rules (then run \
         `sudo udevadm control --reload && sudo udevadm trigger` and plug it in again), \
         or add your user to the group that owns the node (often `plugdev`) and log in again",
        id.vendor, id.product
    )
}

/// Which host device to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsbSelector {
    /// The first device with this vendor:product.
    Id(UsbDevice),
    /// The device at this sysfs port (`1-1.2`), as [`hospes_core::usb_host::scan`] lists it.
    Port(String),
    /// The device at this bus number and address (`/dev/bus/usb/BBB/DDD`).
    BusAddress { bus: u8, address: u8 },
}

impl UsbSelector {
    /// True when `device` is the one meant.
    pub fn matches(&self, device: &HostDevice) -> bool {
        match self {
            UsbSelector::Id(id) => device.id == *id,
            UsbSelector::Port(port) => device.port == *port,
            UsbSelector::BusAddress { bus, address } => {
                device.bus == *bus && device.address == *address
            }
        }
    }
}

impl From<&HostUsbDevice> for UsbSelector {
    /// The device the app's list shows, by its port.
    fn from(device: &HostUsbDevice) -> UsbSelector {
        UsbSelector::Port(device.port.clone())
    }
}

impl fmt::Display for UsbSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsbSelector::Id(id) => write!(f, "{id}"),
            UsbSelector::Port(port) => write!(f, "at port {port}"),
            UsbSelector::BusAddress { bus, address } => {
                write!(f, "at bus {bus} address {address}")
            }
        }
    }
}

/// A USB device plugged into the host, as enumeration shows it before opening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    pub id: UsbDevice,
    /// Bus number and address: the node is `/dev/bus/usb/BBB/DDD`.
    pub bus: u8,
    pub address: u8,
    /// The sysfs name, bus then port path (`1-1.2`).
    pub port: String,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
}

impl HostDevice {
    fn from_info(info: &DeviceInfo) -> HostDevice {
        HostDevice {
            id: UsbDevice {
                vendor: info.vendor_id(),
                product: info.product_id(),
            },
            bus: info.busnum(),
            address: info.device_address(),
            port: info
                .sysfs_path()
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            manufacturer: info.manufacturer_string().map(str::to_owned),
            product: info.product_string().map(str::to_owned),
        }
    }

    /// The usbfs node.
    pub fn node(&self) -> PathBuf {
        devnode(self.bus, self.address)
    }

    /// `"vvvv:pppp Maker Product"`.
    pub fn description(&self) -> String {
        let mut words = vec![self.id.to_string()];
        words.extend(
            [&self.manufacturer, &self.product]
                .into_iter()
                .flatten()
                .cloned(),
        );
        words.join(" ")
    }
}

/// The usbfs node of the device at `bus`, `address`.
fn devnode(bus: u8, address: u8) -> PathBuf {
    Path::new(USBFS_ROOT).join(format!("{bus:03}/{address:03}"))
}

/// Bus and address from a usbfs node path (`/dev/bus/usb/001/005`).
fn parse_devnode(path: &Path) -> Option<(u8, u8)> {
    let rest = path.strip_prefix(USBFS_ROOT).ok()?;
    let mut parts = rest.iter().map(|part| part.to_str()?.parse::<u8>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(bus)), Some(Some(address)), None) => Some((bus, address)),
        _ => None,
    }
}

/// The first of `devices` that `selector` means.
pub fn find<'a>(devices: &'a [HostDevice], selector: &UsbSelector) -> Option<&'a HostDevice> {
    devices.iter().find(|device| selector.matches(device))
}

/// The host's USB devices with their enumeration records.
fn enumerate() -> Result<Vec<(HostDevice, DeviceInfo)>, UsbfsError> {
    let infos = match nusb::list_devices().wait() {
        Ok(infos) => infos,
        // A host without a USB bus has no devices, as `usb_host::scan` says too.
        Err(_) if !Path::new(SYSFS_USB_DEVICES).exists() => return Ok(Vec::new()),
        Err(err) => return Err(UsbfsError::List(err.into())),
    };
    Ok(infos
        .map(|info| (HostDevice::from_info(&info), info))
        .collect())
}

/// The host's USB devices.
pub fn list() -> Result<Vec<HostDevice>, UsbfsError> {
    Ok(enumerate()?.into_iter().map(|(device, _)| device).collect())
}

/// The plugged-in device `selector` means, if any: how the helper finds a device that was
/// unplugged and plugged in again (it has a new address).
pub fn find_device(selector: &UsbSelector) -> Result<Option<HostDevice>, UsbfsError> {
    Ok(find(&list()?, selector).cloned())
}

/// The error for a failed open of `device`, from nusb's error kind and cause.
fn open_error(kind: nusb::ErrorKind, source: io::Error, device: &HostDevice) -> UsbfsError {
    match kind {
        nusb::ErrorKind::PermissionDenied => UsbfsError::PermissionDenied {
            path: device.node(),
            id: device.id,
        },
        // The node vanished between the listing and the open.
        nusb::ErrorKind::Disconnected => UsbfsError::NotFound(UsbSelector::Id(device.id)),
        _ => UsbfsError::Open {
            path: device.node(),
            id: device.id,
            source,
        },
    }
}

/// A host error for the passthrough, from nusb's; `what` names the thing a NotFound lacks.
fn host_error(err: nusb::Error, what: &'static str) -> HostUsbError {
    host_error_kind(err.kind(), what, || err.into())
}

fn host_error_kind(
    kind: nusb::ErrorKind,
    what: &'static str,
    source: impl FnOnce() -> io::Error,
) -> HostUsbError {
    match kind {
        nusb::ErrorKind::Disconnected => HostUsbError::Disconnected,
        nusb::ErrorKind::Busy => HostUsbError::Busy,
        nusb::ErrorKind::NotFound => HostUsbError::NotFound(what),
        _ => HostUsbError::Io(source()),
    }
}

/// How a transfer that failed with `err` ends for the guest.
fn transfer_status(err: TransferError) -> TransferStatus {
    match err {
        TransferError::Stall => TransferStatus::Stall,
        TransferError::Disconnected => TransferStatus::Disconnected,
        TransferError::Cancelled
        | TransferError::Fault
        | TransferError::InvalidArgument
        | TransferError::Unknown(_) => TransferStatus::Error,
    }
}

/// An IN transfer's result: `data` read into `room` bytes (Babble when it did not fit).
fn in_result(status: Result<(), TransferError>, data: Vec<u8>, room: usize) -> TransferResult {
    match status {
        Err(err) => TransferResult::failed(transfer_status(err)),
        Ok(()) if data.len() > room => TransferResult::failed(TransferStatus::Babble),
        Ok(()) => TransferResult::data_in(data),
    }
}

/// An OUT transfer's result.
fn out_result(status: Result<(), TransferError>, actual: usize) -> TransferResult {
    match status {
        Err(err) => TransferResult::failed(transfer_status(err)),
        Ok(()) => TransferResult::data_out(actual),
    }
}

/// The request type and recipient of a raw bmRequestType; `None` for reserved values.
fn control_parts(request_type: u8) -> Option<(ControlType, Recipient)> {
    let control_type = match (request_type >> REQUEST_TYPE_SHIFT) & 0b11 {
        0 => ControlType::Standard,
        1 => ControlType::Class,
        2 => ControlType::Vendor,
        _ => return None,
    };
    let recipient = match request_type & RECIPIENT_MASK {
        0 => Recipient::Device,
        1 => Recipient::Interface,
        2 => Recipient::Endpoint,
        3 => Recipient::Other,
        _ => return None,
    };
    Some((control_type, recipient))
}

/// How many bytes to ask usbfs for so a read of `room` bytes is whole packets (nusb
/// refuses anything else): `room` rounded up to `max_packet`, at least one packet.
fn read_request_len(room: usize, max_packet: usize) -> usize {
    let max_packet = max_packet.max(1);
    room.max(1).div_ceil(max_packet).saturating_mul(max_packet)
}

/// The guest's speed for nusb's; `bcd_usb` decides when usbfs does not say.
fn guest_speed(speed: Option<nusb::Speed>, bcd_usb: u16) -> UsbSpeed {
    match speed {
        Some(nusb::Speed::Low) => UsbSpeed::Low,
        Some(nusb::Speed::Full) => UsbSpeed::Full,
        Some(nusb::Speed::High) => UsbSpeed::High,
        Some(nusb::Speed::Super | nusb::Speed::SuperPlus) => UsbSpeed::Super,
        _ if bcd_usb >= BCD_USB_3 => UsbSpeed::Super,
        _ => UsbSpeed::High,
    }
}

/// One open endpoint, typed as nusb wants.
enum AnyEndpoint {
    BulkIn(Endpoint<Bulk, In>),
    BulkOut(Endpoint<Bulk, Out>),
    InterruptIn(Endpoint<Interrupt, In>),
    InterruptOut(Endpoint<Interrupt, Out>),
}

/// Calls `$body` with the typed endpoint inside `$any`.
macro_rules! with_endpoint {
    ($any:expr, $ep:ident => $body:expr) => {
        match $any {
            AnyEndpoint::BulkIn($ep) => $body,
            AnyEndpoint::BulkOut($ep) => $body,
            AnyEndpoint::InterruptIn($ep) => $body,
            AnyEndpoint::InterruptOut($ep) => $body,
        }
    };
}

impl AnyEndpoint {
    /// Opens `address` on `interface` as the descriptor says it is.
    fn open(interface: &Interface, address: u8) -> Option<AnyEndpoint> {
        let kind = interface
            .descriptor()?
            .endpoints()
            .find(|ep| ep.address() == address)?
            .transfer_type();
        let is_in = address & 0x80 != 0;
        let opened = match (kind, is_in) {
            (TransferType::Bulk, true) => interface.endpoint(address).map(AnyEndpoint::BulkIn),
            (TransferType::Bulk, false) => interface.endpoint(address).map(AnyEndpoint::BulkOut),
            (TransferType::Interrupt, true) => {
                interface.endpoint(address).map(AnyEndpoint::InterruptIn)
            }
            (TransferType::Interrupt, false) => {
                interface.endpoint(address).map(AnyEndpoint::InterruptOut)
            }
            _ => return None,
        };
        opened
            .inspect_err(|err| log::debug!("usbfs: endpoint {address:#04x}: {err}"))
            .ok()
    }

    fn is_in(&self) -> bool {
        matches!(self, AnyEndpoint::BulkIn(_) | AnyEndpoint::InterruptIn(_))
    }

    /// Submits a URB for `transfer`; returns the room the guest has.
    fn submit(&mut self, transfer: Transfer) -> usize {
        if self.is_in() {
            let room = transfer.length;
            with_endpoint!(self, ep => {
                let len = read_request_len(room, ep.max_packet_size());
                ep.submit(Buffer::new(len));
            });
            room
        } else {
            with_endpoint!(self, ep => ep.submit(Buffer::from(transfer.data)));
            0
        }
    }

    fn pending(&self) -> usize {
        with_endpoint!(self, ep => ep.pending())
    }

    fn cancel_all(&mut self) {
        with_endpoint!(self, ep => ep.cancel_all())
    }

    /// The next finished URB, if one is.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Option<nusb::transfer::Completion> {
        if self.pending() == 0 {
            return None;
        }
        match with_endpoint!(self, ep => ep.poll_next_complete(cx)) {
            Poll::Ready(done) => Some(done),
            Poll::Pending => None,
        }
    }

    /// Waits for every pending URB after a cancel; returns how many came back.
    fn drain(&mut self) -> usize {
        self.cancel_all();
        let mut drained = 0;
        while self.pending() > 0 {
            match with_endpoint!(self, ep => ep.wait_next_complete(CANCEL_WAIT)) {
                Some(_) => drained += 1,
                None => break,
            }
        }
        drained
    }

    fn clear_halt(&mut self) -> Result<(), nusb::Error> {
        with_endpoint!(self, ep => ep.clear_halt().wait())
    }
}

/// A URB in flight for the guest.
struct InFlight {
    done: Completion,
    /// IN: the most bytes the guest has room for.
    room: usize,
}

/// An endpoint the guest uses and what it has in flight there, in order.
struct OpenEndpoint {
    interface: u8,
    endpoint: AnyEndpoint,
    in_flight: VecDeque<InFlight>,
}

impl OpenEndpoint {
    /// Cancels everything in flight and waits for the kernel to give it back; the guest's
    /// transfers end as errors.
    fn close(mut self) {
        self.endpoint.drain();
        for flight in self.in_flight {
            flight
                .done
                .complete(TransferResult::failed(TransferStatus::Error));
        }
    }
}

/// A control transfer in flight.
struct PendingControl {
    future: Pin<Box<dyn Future<Output = Result<Vec<u8>, TransferError>> + Send>>,
    done: Completion,
    room: usize,
    is_in: bool,
}

/// What the device holds for the guest.
#[derive(Default)]
struct State {
    interfaces: BTreeMap<u8, Interface>,
    endpoints: BTreeMap<u8, OpenEndpoint>,
    controls: Vec<PendingControl>,
    /// Interfaces whose host kernel driver was detached (or that were claimed): given
    /// back on close.
    taken: BTreeSet<u8>,
}

/// What the device and its worker thread share.
struct Shared {
    state: Mutex<State>,
    gone: GoneSignal,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Collects finished transfers: endpoint URBs in order, control transfers in any order.
    fn poll(&self, cx: &mut Context<'_>) -> Vec<(Completion, TransferResult)> {
        let mut finished = Vec::new();
        let mut state = self.state();
        for open in state.endpoints.values_mut() {
            while let Some(urb) = open.endpoint.poll_next(cx) {
                let Some(flight) = open.in_flight.pop_front() else {
                    continue;
                };
                let result = if open.endpoint.is_in() {
                    let mut data = urb.buffer.into_vec();
                    data.truncate(urb.actual_len);
                    in_result(urb.status, data, flight.room)
                } else {
                    out_result(urb.status, urb.actual_len)
                };
                finished.push((flight.done, result));
            }
        }
        let mut still = Vec::new();
        for mut control in std::mem::take(&mut state.controls) {
            match control.future.as_mut().poll(cx) {
                Poll::Ready(Ok(data)) if control.is_in => {
                    finished.push((control.done, in_result(Ok(()), data, control.room)));
                }
                Poll::Ready(Ok(_)) => {
                    finished.push((control.done, out_result(Ok(()), control.room)))
                }
                Poll::Ready(Err(err)) => {
                    finished.push((control.done, TransferResult::failed(transfer_status(err))))
                }
                Poll::Pending => still.push(control),
            }
        }
        state.controls = still;
        drop(state);
        if finished
            .iter()
            .any(|(_, result)| result.status == TransferStatus::Disconnected)
        {
            self.gone.raise();
        }
        finished
    }
}

/// Wakes the worker thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// The worker: polls the hot-plug stream and what is in flight, completes what finished,
/// sleeps until woken.
fn work(shared: &Shared, mut hotplug: Option<(HotplugWatch, DeviceId)>) {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    while !shared.stop.load(Ordering::Acquire) {
        if let Some((watch, id)) = hotplug.as_mut() {
            loop {
                match Pin::new(&mut *watch).poll_next(&mut cx) {
                    Poll::Ready(Some(HotplugEvent::Disconnected(left))) if left == *id => {
                        log::info!("usbfs: the passed-through device was unplugged");
                        shared.gone.raise();
                    }
                    Poll::Ready(Some(_)) => {}
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
        }
        for (done, result) in shared.poll(&mut cx) {
            done.complete(result);
        }
        thread::park();
    }
}

/// A host USB device opened through usbfs. See the module documentation.
pub struct UsbfsDevice {
    device: nusb::Device,
    device_descriptor: Vec<u8>,
    configurations: Vec<Vec<u8>>,
    speed: UsbSpeed,
    description: String,
    /// Bus number and address on the host, when known.
    bus_address: Option<(u8, u8)>,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl UsbfsDevice {
    /// Opens the device `selector` means.
    pub fn open(selector: &UsbSelector) -> Result<Arc<UsbfsDevice>, UsbfsError> {
        let devices = enumerate()?;
        let (found, info) = devices
            .into_iter()
            .find(|(device, _)| selector.matches(device))
            .ok_or_else(|| UsbfsError::NotFound(selector.clone()))?;
        let device = info.open().wait().map_err(|err| {
            let kind = err.kind();
            open_error(kind, err.into(), &found)
        })?;
        UsbfsDevice::start(
            device,
            found.description(),
            Some((found.bus, found.address)),
            Some(info.id()),
        )
    }

    /// Wraps a usbfs node opened elsewhere (the fd the XDG USB portal hands out).
    pub fn from_fd(fd: OwnedFd) -> Result<Arc<UsbfsDevice>, UsbfsError> {
        let raw = fd.as_raw_fd();
        // Which device it is, for its name and to hear when it leaves: the node's path.
        let known = std::fs::read_link(format!("/proc/self/fd/{raw}"))
            .ok()
            .and_then(|path| parse_devnode(&path))
            .and_then(|(bus, address)| {
                let selector = UsbSelector::BusAddress { bus, address };
                enumerate()
                    .ok()?
                    .into_iter()
                    .find(|(device, _)| selector.matches(device))
            });
        let device = nusb::Device::from_fd(fd)
            .wait()
            .map_err(|err| UsbfsError::FromFd {
                fd: raw,
                source: err.into(),
            })?;
        let description = match &known {
            Some((found, _)) => found.description(),
            None => {
                let desc = device.device_descriptor();
                UsbDevice {
                    vendor: desc.vendor_id(),
                    product: desc.product_id(),
                }
                .to_string()
            }
        };
        let bus_address = known.as_ref().map(|(found, _)| (found.bus, found.address));
        UsbfsDevice::start(
            device,
            description,
            bus_address,
            known.map(|(_, info)| info.id()),
        )
    }

    /// Reads the descriptors and starts the worker (watching for `id` to leave).
    fn start(
        device: nusb::Device,
        description: String,
        bus_address: Option<(u8, u8)>,
        id: Option<DeviceId>,
    ) -> Result<Arc<UsbfsDevice>, UsbfsError> {
        let descriptor = device.device_descriptor();
        let device_descriptor = descriptor.as_bytes().to_vec();
        let configurations = device
            .configurations()
            .map(|config| config.as_bytes().to_vec())
            .collect();
        let speed = guest_speed(device.speed(), descriptor.usb_version());
        // Without hot-plug events an unplug still shows: the next transfer ends in ENODEV.
        let hotplug = id.and_then(|id| match nusb::watch_devices() {
            Ok(watch) => Some((watch, id)),
            Err(err) => {
                log::warn!("usbfs: {description}: cannot watch for unplugging: {err}");
                None
            }
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            gone: GoneSignal::new(),
            stop: AtomicBool::new(false),
        });
        let worker = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("usbfs".into())
                .spawn(move || work(&shared, hotplug))
                .map_err(UsbfsError::Thread)?
        };
        Ok(Arc::new(UsbfsDevice {
            device,
            device_descriptor,
            configurations,
            speed,
            description,
            bus_address,
            shared,
            worker: Some(worker),
        }))
    }

    /// Bus number and address on the host (`/dev/bus/usb/BBB/DDD`), when known.
    pub fn bus_address(&self) -> Option<(u8, u8)> {
        self.bus_address
    }

    /// The device as the guest sees it.
    pub fn passthrough(self: &Arc<Self>) -> Result<UsbPassthrough, HostUsbError> {
        UsbPassthrough::new(self.clone())
    }

    fn wake_worker(&self) {
        if let Some(worker) = &self.worker {
            worker.thread().unpark();
        }
    }

    /// Takes the open endpoints of `interface` (every one for `None`) out of the worker's
    /// reach, so they can be cancelled and waited for without holding the lock.
    fn take_endpoints(&self, interface: Option<u8>) -> Vec<OpenEndpoint> {
        let mut state = self.shared.state();
        let (taken, kept) = std::mem::take(&mut state.endpoints)
            .into_iter()
            .partition(|(_, open)| interface.is_none_or(|number| open.interface == number));
        state.endpoints = kept;
        taken.into_values().collect()
    }

    /// Cancels and closes the open endpoints of `interface` (every one for `None`).
    fn close_endpoints(&self, interface: Option<u8>) {
        for open in self.take_endpoints(interface) {
            open.close();
        }
    }

    /// Detaches the host kernel driver of `interface`, remembering to give it back.
    fn detach(&self, state: &mut State, interface: u8) {
        match self.device.detach_kernel_driver(interface) {
            Ok(()) => log::info!(
                "usbfs: {}: host driver of interface {interface} detached",
                self.description
            ),
            Err(err) => log::debug!("usbfs: {}: interface {interface}: {err}", self.description),
        }
        state.taken.insert(interface);
    }

    /// Starts a control transfer as a future the worker polls.
    fn submit_control(&self, setup: SetupPacket, transfer: Transfer, done: Completion) {
        let Some((control_type, recipient)) = control_parts(setup.request_type) else {
            return done.complete(TransferResult::failed(TransferStatus::Stall));
        };
        let room = usize::from(setup.length).min(transfer.length);
        let future: Pin<Box<dyn Future<Output = _> + Send>> = if setup.is_in() {
            let request = ControlIn {
                control_type,
                recipient,
                request: setup.request,
                value: setup.value,
                index: setup.index,
                length: u16::try_from(room).unwrap_or(u16::MAX),
            };
            Box::pin(
                self.device
                    .control_in(request, CONTROL_TIMEOUT)
                    .into_future(),
            )
        } else {
            let request = ControlOut {
                control_type,
                recipient,
                request: setup.request,
                value: setup.value,
                index: setup.index,
                data: &transfer.data,
            };
            Box::pin(
                self.device
                    .control_out(request, CONTROL_TIMEOUT)
                    .map(|result| result.map(|()| Vec::new()))
                    .into_future(),
            )
        };
        let sent = transfer.data.len();
        self.shared.state().controls.push(PendingControl {
            future,
            done,
            room: if setup.is_in() { room } else { sent },
            is_in: setup.is_in(),
        });
        self.wake_worker();
    }

    /// Submits a bulk or interrupt transfer on its endpoint, opening it on first use.
    fn submit_endpoint(&self, transfer: Transfer, done: Completion) {
        let address = transfer.endpoint;
        let mut state = self.shared.state();
        if !state.endpoints.contains_key(&address) {
            let opened = state.interfaces.iter().find_map(|(&number, interface)| {
                AnyEndpoint::open(interface, address).map(|endpoint| OpenEndpoint {
                    interface: number,
                    endpoint,
                    in_flight: VecDeque::new(),
                })
            });
            match opened {
                Some(open) => {
                    state.endpoints.insert(address, open);
                }
                None => {
                    drop(state);
                    hospes_devices::guest_warn!(
                        "usbfs: {}: no claimed interface has endpoint {address:#04x}",
                        self.description
                    );
                    return done.complete(TransferResult::failed(TransferStatus::Error));
                }
            }
        }
        if let Some(open) = state.endpoints.get_mut(&address) {
            let room = open.endpoint.submit(transfer);
            open.in_flight.push_back(InFlight { done, room });
        }
        drop(state);
        self.wake_worker();
    }
}

impl HostUsb for UsbfsDevice {
    fn device_descriptor(&self) -> &[u8] {
        &self.device_descriptor
    }

    fn configuration_descriptors(&self) -> &[Vec<u8>] {
        &self.configurations
    }

    fn speed(&self) -> UsbSpeed {
        self.speed
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn set_configuration(&self, value: u8) -> Result<(), HostUsbError> {
        {
            let mut state = self.shared.state();
            // Linux refuses while any driver holds an interface of the old configuration.
            let bound: Vec<u8> = self
                .device
                .active_configuration()
                .map(|config| config.interfaces().map(|i| i.interface_number()).collect())
                .unwrap_or_default();
            for interface in bound {
                if !state.interfaces.contains_key(&interface) {
                    self.detach(&mut state, interface);
                }
            }
        }
        self.device
            .set_configuration(value)
            .wait()
            .map_err(|err| host_error(err, "configuration"))
    }

    fn claim_interface(&self, interface: u8) -> Result<(), HostUsbError> {
        let mut state = self.shared.state();
        self.detach(&mut state, interface);
        let claimed = self
            .device
            .claim_interface(interface)
            .wait()
            .map_err(|err| host_error(err, "interface"))?;
        state.interfaces.insert(interface, claimed);
        Ok(())
    }

    fn release_interface(&self, interface: u8) -> Result<(), HostUsbError> {
        self.close_endpoints(Some(interface));
        let claimed = self
            .shared
            .state()
            .interfaces
            .remove(&interface)
            .ok_or(HostUsbError::NotFound("interface"))?;
        claimed
            .release()
            .wait()
            .map_err(|err| host_error(err, "interface"))
    }

    fn set_alt_setting(&self, interface: u8, alt_setting: u8) -> Result<(), HostUsbError> {
        self.close_endpoints(Some(interface));
        let claimed = self
            .shared
            .state()
            .interfaces
            .get(&interface)
            .cloned()
            .ok_or(HostUsbError::NotFound("interface"))?;
        claimed
            .set_alt_setting(alt_setting)
            .wait()
            .map_err(|err| host_error(err, "alternate setting"))
    }

    fn clear_halt(&self, endpoint: u8) -> Result<(), HostUsbError> {
        let open = self.shared.state().endpoints.remove(&endpoint);
        let mut ep = match open {
            Some(mut open) => {
                open.endpoint.drain();
                for flight in std::mem::take(&mut open.in_flight) {
                    flight
                        .done
                        .complete(TransferResult::failed(TransferStatus::Error));
                }
                open.endpoint
            }
            None => {
                let state = self.shared.state();
                state
                    .interfaces
                    .values()
                    .find_map(|interface| AnyEndpoint::open(interface, endpoint))
                    .ok_or(HostUsbError::NotFound("endpoint"))?
            }
        };
        ep.clear_halt().map_err(|err| host_error(err, "endpoint"))
    }

    fn reset(&self) -> Result<(), HostUsbError> {
        self.close_endpoints(None);
        self.device
            .reset()
            .wait()
            .map_err(|err| host_error(err, "device"))
    }

    fn submit(&self, transfer: Transfer, done: Completion) {
        if self.shared.gone.is_gone() {
            return done.complete(TransferResult::failed(TransferStatus::Disconnected));
        }
        match transfer.kind {
            TransferKind::Control(setup) => self.submit_control(setup, transfer, done),
            TransferKind::Bulk | TransferKind::Interrupt => self.submit_endpoint(transfer, done),
            TransferKind::Isochronous => {
                hospes_devices::guest_warn!(
                    "usbfs: {}: isochronous transfers are not carried",
                    self.description
                );
                done.complete(TransferResult::failed(TransferStatus::Error));
            }
        }
    }

    fn cancel(&self, endpoint: u8) {
        let cancelled = {
            let mut state = self.shared.state();
            if endpoint & 0x0f == 0 {
                std::mem::take(&mut state.controls)
                    .into_iter()
                    .map(|control| control.done)
                    .collect()
            } else {
                if let Some(open) = state.endpoints.get_mut(&endpoint) {
                    // The URBs come back cancelled; the worker completes them as errors.
                    open.endpoint.cancel_all();
                }
                Vec::new()
            }
        };
        for done in cancelled {
            done.complete(TransferResult::failed(TransferStatus::Error));
        }
        self.wake_worker();
    }

    fn gone(&self) -> &GoneSignal {
        &self.shared.gone
    }
}

impl Drop for UsbfsDevice {
    /// Stops the worker, cancels what is in flight, releases the interfaces and gives the
    /// host kernel drivers back.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(worker) = self.worker.take() {
            worker.thread().unpark();
            let _ = worker.join();
        }
        self.close_endpoints(None);
        let (interfaces, controls, taken) = {
            let mut state = self.shared.state();
            (
                std::mem::take(&mut state.interfaces),
                std::mem::take(&mut state.controls),
                std::mem::take(&mut state.taken),
            )
        };
        drop(controls);
        for (number, interface) in interfaces {
            if let Err(err) = interface.release().wait() {
                log::debug!(
                    "usbfs: {}: releasing interface {number}: {err}",
                    self.description
                );
            }
        }
        if self.shared.gone.is_gone() {
            return;
        }
        for interface in taken {
            match self.device.attach_kernel_driver(interface) {
                Ok(()) => log::info!(
                    "usbfs: {}: interface {interface} given back to the host",
                    self.description
                ),
                Err(err) => {
                    log::debug!("usbfs: {}: interface {interface}: {err}", self.description)
                }
            }
        }
    }
}

/// Watches USB devices arrive; stops when dropped.
pub struct ArrivalWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ArrivalWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Calls `arrived` on a watcher thread for every USB device plugged in from now on; the
/// helper re-opens the one a gone passthrough was (see [`UsbSelector::matches`]).
pub fn watch_arrivals(
    mut arrived: impl FnMut(HostDevice) + Send + 'static,
) -> Result<ArrivalWatch, UsbfsError> {
    let mut watch = nusb::watch_devices().map_err(|err| UsbfsError::Watch(err.into()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = thread::Builder::new()
        .name("usb-hotplug".into())
        .spawn(move || {
            let waker = Waker::from(Arc::new(Unpark(thread::current())));
            let mut cx = Context::from_waker(&waker);
            while !stopped.load(Ordering::Acquire) {
                match Pin::new(&mut watch).poll_next(&mut cx) {
                    Poll::Ready(Some(HotplugEvent::Connected(info))) => {
                        arrived(HostDevice::from_info(&info))
                    }
                    Poll::Ready(Some(HotplugEvent::Disconnected(_))) => {}
                    Poll::Ready(None) => break,
                    Poll::Pending => thread::park(),
                }
            }
        })
        .map_err(UsbfsError::Thread)?;
    Ok(ArrivalWatch {
        stop,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logitech(bus: u8, address: u8, port: &str) -> HostDevice {
        HostDevice {
            id: "046d:c52b".parse().unwrap(),
            bus,
            address,
            port: port.into(),
            manufacturer: Some("Logitech".into()),
            product: Some("USB Receiver".into()),
        }
    }

    fn scanned() -> Vec<HostDevice> {
        let mut stick = logitech(2, 3, "2-4");
        stick.id = "0781:5581".parse().unwrap();
        stick.manufacturer = None;
        stick.product = None;
        vec![logitech(1, 5, "1-1.2"), stick, logitech(3, 9, "3-1")]
    }

    #[test]
    fn finds_a_device_by_id_port_or_bus_and_address() {
        let devices = scanned();
        let by_id = UsbSelector::Id("0781:5581".parse().unwrap());
        assert_eq!(find(&devices, &by_id).map(|d| d.address), Some(3));
        let first = UsbSelector::Id("046d:c52b".parse().unwrap());
        assert_eq!(
            find(&devices, &first).map(|d| d.port.as_str()),
            Some("1-1.2"),
            "the first of two alike"
        );
        let by_port = UsbSelector::Port("3-1".into());
        assert_eq!(find(&devices, &by_port).map(|d| d.bus), Some(3));
        let by_node = UsbSelector::BusAddress { bus: 1, address: 5 };
        assert_eq!(
            find(&devices, &by_node).map(|d| d.port.as_str()),
            Some("1-1.2")
        );
        let absent = UsbSelector::BusAddress { bus: 1, address: 6 };
        assert_eq!(find(&devices, &absent), None);
    }

    #[test]
    fn the_apps_list_entry_selects_by_port() {
        let listed = HostUsbDevice {
            id: "046d:c52b".parse().unwrap(),
            port: "3-1".into(),
            manufacturer: None,
            product: None,
            bus_addr: None,
        };
        let devices = scanned();
        let selector = UsbSelector::from(&listed);
        assert_eq!(find(&devices, &selector).map(|d| d.address), Some(9));
    }

    #[test]
    fn permission_denied_names_the_node_and_how_to_grant_access() {
        let device = logitech(1, 5, "1-1.2");
        let err = open_error(
            nusb::ErrorKind::PermissionDenied,
            io::Error::from_raw_os_error(libc::EACCES),
            &device,
        );
        let text = err.to_string();
        assert!(text.contains("/dev/bus/usb/001/005"), "{text}");
        assert!(text.contains("046d:c52b"), "{text}");
        assert!(
            text.contains(
                r#"SUBSYSTEM=="usb", ATTR{idVendor}=="046d", ATTR{idProduct}=="c52b", TAG+="uaccess""#
            ),
            "{text}"
        );
        assert!(text.contains("plugdev"), "{text}");
    }

    #[test]
    fn a_device_that_is_not_there_is_named_by_its_id() {
        let gone = open_error(
            nusb::ErrorKind::Disconnected,
            io::Error::from_raw_os_error(libc::ENOENT),
            &logitech(1, 5, "1-1.2"),
        );
        assert_eq!(gone.to_string(), "no USB device 046d:c52b is plugged in");
        let by_node = UsbfsError::NotFound(UsbSelector::BusAddress { bus: 2, address: 7 });
        assert_eq!(
            by_node.to_string(),
            "no USB device at bus 2 address 7 is plugged in"
        );
        let other = open_error(
            nusb::ErrorKind::Other,
            io::Error::from_raw_os_error(libc::EIO),
            &logitech(1, 5, "1-1.2"),
        );
        assert!(matches!(other, UsbfsError::Open { .. }));
        assert!(other.to_string().contains("/dev/bus/usb/001/005"));
    }

    #[test]
    fn transfer_errors_map_to_guest_statuses() {
        assert_eq!(transfer_status(TransferError::Stall), TransferStatus::Stall);
        assert_eq!(
            transfer_status(TransferError::Disconnected),
            TransferStatus::Disconnected
        );
        for err in [
            TransferError::Cancelled,
            TransferError::Fault,
            TransferError::InvalidArgument,
            TransferError::Unknown(71),
        ] {
            assert_eq!(transfer_status(err), TransferStatus::Error, "{err:?}");
        }
    }

    #[test]
    fn host_errors_map_to_passthrough_errors() {
        let io = || io::Error::other("x");
        let map = |kind| host_error_kind(kind, "interface", io).status();
        assert_eq!(
            map(nusb::ErrorKind::Disconnected),
            TransferStatus::Disconnected
        );
        assert_eq!(map(nusb::ErrorKind::NotFound), TransferStatus::Stall);
        assert_eq!(map(nusb::ErrorKind::Busy), TransferStatus::Error);
        assert_eq!(
            map(nusb::ErrorKind::PermissionDenied),
            TransferStatus::Error
        );
        assert!(matches!(
            host_error_kind(nusb::ErrorKind::NotFound, "alternate setting", io),
            HostUsbError::NotFound("alternate setting")
        ));
    }

    #[test]
    fn reads_fit_the_guests_room_or_are_babble() {
        assert_eq!(
            in_result(Ok(()), vec![1; 13], 13),
            TransferResult::data_in(vec![1; 13])
        );
        assert_eq!(
            in_result(Ok(()), vec![1; 512], 13).status,
            TransferStatus::Babble
        );
        assert_eq!(
            in_result(Err(TransferError::Stall), vec![1; 4], 13).status,
            TransferStatus::Stall
        );
        assert_eq!(out_result(Ok(()), 31), TransferResult::data_out(31));
    }

    #[test]
    fn reads_ask_for_whole_packets() {
        assert_eq!(read_request_len(13, 512), 512);
        assert_eq!(read_request_len(512, 512), 512);
        assert_eq!(read_request_len(513, 512), 1024);
        assert_eq!(read_request_len(0, 64), 64, "at least one packet");
        assert_eq!(
            read_request_len(8, 0),
            8,
            "a zero packet size is not a division by zero"
        );
        assert_eq!(
            read_request_len(usize::MAX, 512),
            usize::MAX,
            "saturates instead of overflowing"
        );
    }

    #[test]
    fn request_types_split_into_type_and_recipient() {
        assert_eq!(
            control_parts(0xa1),
            Some((ControlType::Class, Recipient::Interface))
        );
        assert_eq!(
            control_parts(0xc0),
            Some((ControlType::Vendor, Recipient::Device))
        );
        assert_eq!(
            control_parts(0x02),
            Some((ControlType::Standard, Recipient::Endpoint))
        );
        assert_eq!(control_parts(0x60), None, "reserved type");
        assert_eq!(control_parts(0x04), None, "reserved recipient");
    }

    #[test]
    fn speeds_follow_usbfs_or_the_usb_version() {
        assert_eq!(guest_speed(Some(nusb::Speed::Low), 0x0110), UsbSpeed::Low);
        assert_eq!(guest_speed(Some(nusb::Speed::Full), 0x0200), UsbSpeed::Full);
        assert_eq!(
            guest_speed(Some(nusb::Speed::SuperPlus), 0x0320),
            UsbSpeed::Super
        );
        assert_eq!(guest_speed(None, 0x0310), UsbSpeed::Super);
        assert_eq!(guest_speed(None, 0x0200), UsbSpeed::High);
    }

    #[test]
    fn device_nodes_round_trip_through_their_paths() {
        let device = logitech(1, 5, "1-1.2");
        assert_eq!(device.node(), Path::new("/dev/bus/usb/001/005"));
        assert_eq!(parse_devnode(&device.node()), Some((1, 5)));
        assert_eq!(parse_devnode(Path::new("/dev/bus/usb/001")), None);
        assert_eq!(parse_devnode(Path::new("/dev/bus/usb/001/999")), None);
        assert_eq!(parse_devnode(Path::new("/dev/null")), None);
    }

    #[test]
    fn descriptions_name_the_id_maker_and_product() {
        assert_eq!(
            logitech(1, 5, "1-1.2").description(),
            "046d:c52b Logitech USB Receiver"
        );
        assert_eq!(scanned()[1].description(), "0781:5581");
    }

    #[test]
    fn opening_a_device_that_is_not_plugged_in_names_it() {
        // No device has the reserved vendor id ffff.
        let selector = UsbSelector::Id("ffff:fffe".parse().unwrap());
        match UsbfsDevice::open(&selector) {
            Err(UsbfsError::NotFound(named)) => assert_eq!(named, selector),
            Err(other) => panic!("unexpected: {other}"),
            Ok(_) => panic!("opened a device that cannot exist"),
        }
    }

    /// Opens the device named by `HOSPES_USB_TEST_DEVICE=VID:PID` and reads its
    /// descriptors through the backend. Needs a USB device the user may open.
    #[test]
    #[ignore = "needs a real USB device: HOSPES_USB_TEST_DEVICE=VID:PID"]
    fn opens_a_real_device_and_reads_its_descriptors() {
        let id: UsbDevice = std::env::var("HOSPES_USB_TEST_DEVICE")
            .expect("HOSPES_USB_TEST_DEVICE=VID:PID names the device")
            .parse()
            .unwrap();
        let device = UsbfsDevice::open(&UsbSelector::Id(id)).unwrap_or_else(|err| panic!("{err}"));
        let desc = device.device_descriptor();
        assert_eq!(desc.len(), 18);
        assert_eq!(u16::from_le_bytes([desc[8], desc[9]]), id.vendor);
        assert_eq!(u16::from_le_bytes([desc[10], desc[11]]), id.product);
        assert_eq!(
            device.configuration_descriptors().len(),
            usize::from(desc[17])
        );
        assert!(device.description().starts_with(&id.to_string()));
        // A control transfer through the worker: GET_STATUS of the device.
        let (tx, rx) = std::sync::mpsc::channel();
        let setup = SetupPacket {
            request_type: 0x80,
            request: hospes_devices::usb::request::GET_STATUS,
            value: 0,
            index: 0,
            length: 2,
        };
        device.submit(
            Transfer {
                endpoint: 0,
                kind: TransferKind::Control(setup),
                data: Vec::new(),
                length: 2,
            },
            Completion::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        let status = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(status.status, TransferStatus::Success);
        assert_eq!(status.data.len(), 2);
        assert!(!device.gone().is_gone());
    }
}
