//! USB in the machine: the xHCI controller of each boot, the devices plugged into it, and
//! hot-plug, all of which outlive the boots.
//!
//! Data flow: [`Usb`] is made once per helper run with what vm.ron (or `--usb`) plugs in:
//! the emulated tablet and keyboard and the host devices the user switched on. Every boot
//! [`Usb::attach`] puts a fresh xHCI (1b36:000d) on PCI with its MSI-X vectors (KVM irqfds)
//! and, on the Q35 platform, its INTA# line, plugs every device in, points the input router
//! at the new tablet and keyboard, and starts the controller's completion worker: the
//! thread that locks the controller whenever a device finished a transfer from another
//! thread (a key press, a host device's bulk read). When the boot ends the worker stops and
//! the host devices, still open, wait for the next boot's controller.
//!
//! Hot-plug (QMP `device_add`/`device_del`, which `hospesctl usb` and the app's switches
//! send) goes through [`Usb::add`] and [`Usb::remove`]. A host device that leaves the host
//! raises its gone signal; the hot-plug thread then takes it off its port (the guest sees a
//! disconnect, the VM keeps running) and keeps it switched on: when a device it names
//! comes back (the host's arrival watch), it is opened and plugged in again. A device
//! passed as a file descriptor (the Flatpak portal) cannot be reopened by the helper; it is
//! removed and DEVICE_DELETED tells the app.
//!
//! Lock order: the device list ([`Usb`]'s state), then the controller. vCPU threads take
//! only the controller; completions and gone signals take neither (they queue).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hospes_core::config::UsbDevice as UsbId;
use hospes_core::control::usb::{
    UsbDeviceSpec, UsbDriver, UsbHostAddr, UsbHostSpec, UsbInfo, UsbSpeed as QmpSpeed,
};
use hospes_core::control::{ControlError, Event, EventSender};
use hospes_devices::bus::lock;
use hospes_devices::input::InputRouter;
use hospes_devices::pci::root::PciSaved;
use hospes_devices::usb::hid::{self, UsbKeyboard, UsbKeyboardHandle, UsbTablet, UsbTabletHandle};
use hospes_devices::usb::passthrough::HostUsb;
use hospes_devices::usb::xhci::{CompletionWaiter, Xhci, XhciInterrupts};
use hospes_devices::usb::{UsbDevice, UsbSpeed};

use super::pci::PciSetup;
use super::storage::PciIntx;
use super::{Machine, MachineError};
use crate::backends::usbfs::{self, ArrivalWatch, HostDevice, UsbSelector, UsbfsDevice};
use crate::vstate::pci_kvm::KvmMsixVectors;

/// MSI-X vectors of the controller (one per interrupter).
const XHCI_VECTORS: u16 = 16;
/// Ids of the devices vm.ron and `--usb` plug in.
pub const TABLET_ID: &str = "tablet";
pub const KEYBOARD_ID: &str = "keyboard";

/// What is plugged into a port.
enum Kind {
    /// With the input handle of this boot's device, while it is in a port.
    Tablet(Option<Arc<UsbTabletHandle>>),
    Keyboard(Option<Arc<UsbKeyboardHandle>>),
    Host {
        /// How to find it again after it left the host; None for a portal descriptor.
        selector: Option<UsbSelector>,
        /// Open while it is on the host.
        device: Option<Arc<UsbfsDevice>>,
    },
}

struct Plugged {
    id: String,
    kind: Kind,
    /// The controller port of this boot, while plugged in.
    port: Option<u8>,
    /// Told apart from an earlier opening of the same device, for gone signals.
    generation: u64,
}

/// The controller of the boot in progress.
struct Booted {
    xhci: Arc<Mutex<Xhci>>,
    waiter: CompletionWaiter,
    worker: Option<JoinHandle<()>>,
}

struct State {
    devices: Vec<Plugged>,
    boot: Option<Booted>,
    generation: u64,
}

/// What the hot-plug thread hears about.
enum HotplugEvent {
    Gone { id: String, generation: u64 },
    Arrived(HostDevice),
}

/// Errors plugging in a device.
#[derive(Debug, thiserror::Error)]
pub enum UsbError {
    #[error(transparent)]
    Host(#[from] usbfs::UsbfsError),
    #[error("cannot pass {0} through")]
    Passthrough(
        String,
        #[source] hospes_devices::usb::passthrough::HostUsbError,
    ),
    #[error("a USB device with id {0:?} is already plugged in")]
    DuplicateId(String),
    #[error("cannot start the USB hot-plug thread")]
    Thread(#[source] std::io::Error),
}

/// The VM's USB: see the module docs.
pub struct Usb {
    state: Mutex<State>,
    input: Option<Arc<InputRouter>>,
    hotplug: Sender<HotplugEvent>,
    events: Mutex<Option<EventSender>>,
    _arrivals: Mutex<Option<ArrivalWatch>>,
}

impl Usb {
    /// USB with the tablet and keyboard (their input comes through `input`) and the host
    /// devices `host` names; a host device that is not plugged in yet is plugged in when
    /// it arrives. Starts the hot-plug thread.
    pub fn new(input: Option<Arc<InputRouter>>, host: &[UsbId]) -> Result<Arc<Usb>, UsbError> {
        let (tx, rx) = channel();
        let usb = Arc::new(Usb {
            state: Mutex::new(State {
                devices: Vec::new(),
                boot: None,
                generation: 0,
            }),
            input,
            hotplug: tx.clone(),
            events: Mutex::new(None),
            _arrivals: Mutex::new(None),
        });
        {
            let mut state = lock(&usb.state);
            for (id, kind) in [
                (TABLET_ID, Kind::Tablet(None)),
                (KEYBOARD_ID, Kind::Keyboard(None)),
            ] {
                state.devices.push(Plugged {
                    id: id.into(),
                    kind,
                    port: None,
                    generation: 0,
                });
            }
        }
        for id in host {
            let selector = UsbSelector::Id(*id);
            // The id hospesctl and the app give a device they plug in by vendor:product.
            let name = format!("usb-{:04x}-{:04x}", id.vendor, id.product);
            // A device switched on but not plugged into the host waits for it.
            if let Err(e) = usb.add_host(name, Some(selector), None) {
                log::warn!("USB device {id}: {}", hospes_core::error_chain(&e));
            }
        }
        let weak = Arc::downgrade(&usb);
        std::thread::Builder::new()
            .name("usb-hotplug".into())
            .spawn(move || hotplug_loop(&weak, &rx))
            .map_err(UsbError::Thread)?;
        match usbfs::watch_arrivals(move |device| {
            let _ = tx.send(HotplugEvent::Arrived(device));
        }) {
            Ok(watch) => *lock(&usb._arrivals) = Some(watch),
            Err(e) => log::info!(
                "USB devices that come back are not plugged in again: {}",
                hospes_core::error_chain(&e)
            ),
        }
        Ok(usb)
    }

    /// Where DEVICE_DELETED goes.
    pub fn set_events(&self, events: EventSender) {
        *lock(&self.events) = Some(events);
    }

    /// The device registration step of a boot: the controller on PCI, every device in a
    /// port, the worker started; undone when the boot ends.
    pub fn attach(
        self: &Arc<Self>,
        machine: &mut Machine,
        pci: &mut PciSetup,
    ) -> Result<(), MachineError> {
        let setup = |what: &str, e: &dyn std::fmt::Display| {
            MachineError::Setup(format!("USB controller: {what}: {e}"))
        };
        let router = pci
            .router
            .clone()
            .ok_or_else(|| setup("MSI-X", &"no MSI routing"))?;
        let vectors = Arc::new(
            KvmMsixVectors::new(&machine.vm_fd, router, XHCI_VECTORS)
                .map_err(|e| setup("MSI-X", &e))?,
        );
        // Direct kernel boot routes no PCI interrupts (its DSDT has no _PRT): MSI-X only.
        let (intx, line) = PciIntx::for_function(machine);
        let xhci = Xhci::new(
            machine.guest_memory.clone(),
            XhciInterrupts {
                msix: vectors.clone(),
                routes: vectors,
                intx: line,
            },
        )
        .map_err(|e| setup("create", &e))?;
        let xhci = Arc::new(Mutex::new(xhci));
        // Its save freezes it: the worker's completions no longer reach the guest.
        machine.states.add(
            "usb/xhci",
            Arc::new(PciSaved::new(xhci.clone(), pci.relocator())),
        );
        let slot = pci.add_device(xhci.clone()).map_err(|e| setup("PCI", &e))?;
        if let Some(intx) = intx {
            intx.connect(slot);
        }
        let waiter = lock(&xhci).completion_waiter();
        let worker = spawn_worker(&xhci, waiter.clone()).map_err(|e| setup("worker", &e))?;
        let mut state = lock(&self.state);
        state.boot = Some(Booted {
            xhci,
            waiter,
            worker: Some(worker),
        });
        self.plug_all(&mut state);
        drop(state);
        let usb = self.clone();
        machine.on_boot_end(move || usb.end_boot());
        Ok(())
    }

    /// Plugs every device that is not in a port yet into this boot's controller.
    fn plug_all(&self, state: &mut State) {
        let Some(boot) = &state.boot else { return };
        let xhci = boot.xhci.clone();
        for entry in state.devices.iter_mut().filter(|d| d.port.is_none()) {
            let device: Box<dyn UsbDevice> = match &mut entry.kind {
                Kind::Tablet(handle) => {
                    let t = UsbTablet::new();
                    *handle = Some(t.handle());
                    Box::new(t)
                }
                Kind::Keyboard(handle) => {
                    let k = UsbKeyboard::new();
                    *handle = Some(k.handle());
                    Box::new(k)
                }
                Kind::Host {
                    device: Some(host), ..
                } => match self.passthrough(host, &entry.id, entry.generation) {
                    Ok(p) => p,
                    Err(e) => {
                        log::warn!("{}", hospes_core::error_chain(&e));
                        continue;
                    }
                },
                Kind::Host { device: None, .. } => continue,
            };
            match lock(&xhci).attach(device) {
                Ok(port) => entry.port = Some(port),
                Err(e) => log::warn!("USB device {}: {e}", entry.id),
            }
        }
        self.route_input(state);
    }

    /// Points the input router at the first tablet and keyboard in a port.
    fn route_input(&self, state: &State) {
        let Some(input) = &self.input else { return };
        let plugged = || state.devices.iter().filter(|d| d.port.is_some());
        let tablet = plugged().find_map(|d| match &d.kind {
            Kind::Tablet(handle) => handle.clone(),
            _ => None,
        });
        let keyboard = plugged().find_map(|d| match &d.kind {
            Kind::Keyboard(handle) => handle.clone(),
            _ => None,
        });
        input.set_usb(keyboard, tablet);
    }

    /// The guest's view of `host`, reporting its leaving to the hot-plug thread.
    fn passthrough(
        &self,
        host: &Arc<UsbfsDevice>,
        id: &str,
        generation: u64,
    ) -> Result<Box<dyn UsbDevice>, UsbError> {
        let device = host
            .passthrough()
            .map_err(|e| UsbError::Passthrough(id.to_owned(), e))?;
        let tx = self.hotplug.clone();
        let id = id.to_owned();
        device.on_gone(move || {
            let _ = tx.send(HotplugEvent::Gone { id, generation });
        });
        Ok(Box::new(device))
    }

    /// The boot ended: its controller and worker go, the devices wait for the next one.
    fn end_boot(&self) {
        let mut state = lock(&self.state);
        if let Some(mut boot) = state.boot.take() {
            boot.waiter.stop();
            if let Some(worker) = boot.worker.take() {
                drop(state);
                let _ = worker.join();
                state = lock(&self.state);
            }
        }
        for entry in &mut state.devices {
            entry.port = None;
            if let Kind::Tablet(handle) = &mut entry.kind {
                *handle = None;
            }
            if let Kind::Keyboard(handle) = &mut entry.kind {
                *handle = None;
            }
        }
        self.route_input(&state);
    }

    /// Opens a host device, from the portal's descriptor `fd` or else by `selector`, and
    /// plugs it in (now if a boot runs, else at the next boot).
    fn add_host(
        &self,
        id: String,
        selector: Option<UsbSelector>,
        fd: Option<std::os::fd::OwnedFd>,
    ) -> Result<(), UsbError> {
        let mut state = lock(&self.state);
        let device = match (fd, &selector) {
            (Some(fd), _) => Some(UsbfsDevice::from_fd(fd)?),
            (None, Some(selector)) => match UsbfsDevice::open(selector) {
                Ok(d) => Some(d),
                // Switched on at start but not on the host yet: plugged in on arrival.
                Err(usbfs::UsbfsError::NotFound(_)) if state.boot.is_none() => None,
                Err(e) => return Err(e.into()),
            },
            (None, None) => None,
        };
        self.push(&mut state, id, Kind::Host { selector, device })
    }

    /// Adds a device to the list and plugs it in if a boot runs.
    fn push(&self, state: &mut State, id: String, kind: Kind) -> Result<(), UsbError> {
        if state.devices.iter().any(|d| d.id == id) {
            return Err(UsbError::DuplicateId(id));
        }
        state.generation += 1;
        let generation = state.generation;
        state.devices.push(Plugged {
            id,
            kind,
            port: None,
            generation,
        });
        self.plug_all(state);
        Ok(())
    }

    /// QMP `device_add` of a USB device.
    pub fn add(&self, spec: UsbDeviceSpec) -> Result<(), ControlError> {
        let failed = |e: UsbError| ControlError::Failed(hospes_core::error_chain(&e));
        let kind = match spec.driver {
            UsbDriver::Host(UsbHostSpec {
                vendor_product,
                bus_addr,
                fd,
            }) => {
                let selector = match (&fd, bus_addr, vendor_product) {
                    // A device given by descriptor is not reopened after it left.
                    (Some(_), _, _) => None,
                    (None, Some((bus, address)), _) => {
                        Some(UsbSelector::BusAddress { bus, address })
                    }
                    (None, None, Some((vendor, product))) => {
                        Some(UsbSelector::Id(UsbId { vendor, product }))
                    }
                    (None, None, None) => {
                        return Err(ControlError::Failed(
                            "usb-host needs vendorid and productid, hostbus and hostaddr, or fd"
                                .into(),
                        ));
                    }
                };
                if lock(&self.state).boot.is_none() {
                    return Err(ControlError::Failed("the VM is not running".into()));
                }
                return self.add_host(spec.id, selector, fd).map_err(failed);
            }
            UsbDriver::Tablet => Kind::Tablet(None),
            UsbDriver::Keyboard => Kind::Keyboard(None),
        };
        let mut state = lock(&self.state);
        self.push(&mut state, spec.id, kind).map_err(failed)
    }

    /// QMP `device_del`: unplugs `id`, then emits DEVICE_DELETED.
    pub fn remove(&self, id: &str) -> Result<(), ControlError> {
        let mut state = lock(&self.state);
        let at = state
            .devices
            .iter()
            .position(|d| d.id == id)
            .ok_or_else(|| ControlError::DeviceNotFound(id.to_owned()))?;
        let entry = state.devices.remove(at);
        if let (Some(port), Some(boot)) = (entry.port, &state.boot) {
            drop(lock(&boot.xhci).detach(port));
        }
        self.route_input(&state);
        drop(state);
        // The host device (closed with `entry`) goes back to its host driver.
        drop(entry);
        self.deleted(id);
        Ok(())
    }

    fn deleted(&self, id: &str) {
        if let Some(events) = &*lock(&self.events) {
            events.emit(Event::DeviceDeleted {
                device: id.to_owned(),
            });
        }
    }

    /// QMP `query-usb`: the devices in a port now, and the host devices switched on that
    /// wait for the host to have them (port `""`, speed unknown), so they can be removed.
    pub fn query(&self) -> Vec<UsbInfo> {
        let state = lock(&self.state);
        // What the devices in the ports say of themselves.
        let in_port: HashMap<u8, (UsbSpeed, String)> = match &state.boot {
            Some(boot) => lock(&boot.xhci)
                .ports()
                .map(|(port, d)| (port, (d.speed(), d.description())))
                .collect(),
            None => HashMap::new(),
        };
        state
            .devices
            .iter()
            .filter_map(|d| {
                let Some(port) = d.port else {
                    let Kind::Host {
                        selector: Some(UsbSelector::Id(id)),
                        device: None,
                    } = &d.kind
                    else {
                        return None;
                    };
                    return Some(UsbInfo {
                        id: d.id.clone(),
                        port: String::new(),
                        vendorid: id.vendor,
                        productid: id.product,
                        speed: QmpSpeed::Unknown,
                        description: format!("{id} (not plugged into the host)"),
                        host: None,
                    });
                };
                let (speed, description) = in_port.get(&port)?.clone();
                let ((vendorid, productid), host) = match &d.kind {
                    Kind::Tablet(_) => ((hid::VENDOR_ID, hid::tablet::PRODUCT_ID), None),
                    Kind::Keyboard(_) => ((hid::VENDOR_ID, hid::keyboard::PRODUCT_ID), None),
                    Kind::Host { device, .. } => {
                        let device = device.as_ref()?;
                        let host = device.bus_address();
                        (
                            device.vendor_product(),
                            host.map(|(bus, addr)| UsbHostAddr { bus, addr }),
                        )
                    }
                };
                Some(UsbInfo {
                    id: d.id.clone(),
                    port: port.to_string(),
                    vendorid,
                    productid,
                    speed: match speed {
                        UsbSpeed::Low => QmpSpeed::Low,
                        UsbSpeed::Full => QmpSpeed::Full,
                        UsbSpeed::High => QmpSpeed::High,
                        UsbSpeed::Super => QmpSpeed::Super,
                    },
                    description,
                    host,
                })
            })
            .collect()
    }

    /// A host device left: off its port; reopened when it comes back, unless it was a
    /// portal descriptor, which only the app can open again.
    fn gone(&self, id: &str, generation: u64) {
        let mut state = lock(&self.state);
        let Some(at) = state
            .devices
            .iter()
            .position(|d| d.id == id && d.generation == generation)
        else {
            return;
        };
        if let (Some(port), Some(boot)) = (state.devices[at].port, &state.boot) {
            drop(lock(&boot.xhci).detach(port));
        }
        let entry = &mut state.devices[at];
        entry.port = None;
        log::info!("USB device {id} left the host");
        match &mut entry.kind {
            Kind::Host {
                selector: Some(_),
                device,
            } => *device = None,
            _ => {
                state.devices.remove(at);
                drop(state);
                self.deleted(id);
            }
        }
    }

    /// A device arrived on the host: plugs in the switched-on device it is.
    fn arrived(&self, found: &HostDevice) {
        let mut state = lock(&self.state);
        let mut reopened = false;
        let mut generation = state.generation;
        for entry in &mut state.devices {
            if let Kind::Host {
                selector: Some(selector),
                device: device @ None,
            } = &mut entry.kind
                && selector.matches(found)
            {
                match UsbfsDevice::open(&UsbSelector::BusAddress {
                    bus: found.bus,
                    address: found.address,
                }) {
                    Ok(d) => {
                        generation += 1;
                        entry.generation = generation;
                        *device = Some(d);
                        reopened = true;
                        log::info!("USB device {} is back", entry.id);
                    }
                    Err(e) => {
                        log::warn!("USB device {}: {}", entry.id, hospes_core::error_chain(&e))
                    }
                }
                break;
            }
        }
        state.generation = generation;
        if reopened {
            self.plug_all(&mut state);
        }
    }
}

fn hotplug_loop(usb: &std::sync::Weak<Usb>, rx: &Receiver<HotplugEvent>) {
    while let Ok(event) = rx.recv() {
        let Some(usb) = usb.upgrade() else { return };
        match event {
            HotplugEvent::Gone { id, generation } => usb.gone(&id, generation),
            HotplugEvent::Arrived(device) => usb.arrived(&device),
        }
    }
}

/// The controller's completion worker: locks it whenever devices finished transfers.
fn spawn_worker(
    xhci: &Arc<Mutex<Xhci>>,
    waiter: CompletionWaiter,
) -> std::io::Result<JoinHandle<()>> {
    let xhci = xhci.clone();
    std::thread::Builder::new()
        .name("xhci".into())
        .spawn(move || {
            while waiter.wait() {
                lock(&xhci).process_completions();
            }
        })
}
