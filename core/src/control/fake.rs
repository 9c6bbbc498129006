//! A fake VM for tests of everything that drives a helper: the QMP server's own tests,
//! `hospesctl`, the app, and `qemu.qmp` interop tests. It is a test double, not a VMM:
//! no guest runs. [`FakeVm`] keeps a run state and emits the events a real VM would;
//! [`run_fake_helper`] is a whole pretend `hospes-vmm` process (QMP socket plus an echoing
//! serial socket) used by `examples/qmp_fake_vm.rs` and the launch tests.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use super::block::{BlockInfo, CDROM_ID, open_disc_image};
use super::server::{EventSender, QmpServer, QmpServerHandle, ServerError};
use super::usb::{UsbDeviceSpec, UsbDriver, UsbHostAddr, UsbInfo, UsbSpeed};
use super::{ControlError, Event, RunState, ShutdownReason, VmControl, parse_unix_endpoint};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// Bad command line.
    #[error("usage: {0}")]
    Usage(String),
    /// The QMP server did not start.
    #[error("QMP server")]
    Server(#[from] ServerError),
    /// The serial socket did not start.
    #[error("serial socket")]
    Serial(#[source] io::Error),
}

/// What the fake VM was asked to do that its owner should act on.
#[derive(Debug, Default, Clone, Copy)]
struct Requests {
    quit: bool,
    powerdown: bool,
}

/// The fake VM's CD drive: the image in it and whether the "guest" locked it.
#[derive(Debug, Default)]
struct FakeDrive {
    image: Option<PathBuf>,
    locked: bool,
}

/// A host USB device the fake VM can "pass through".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeHostUsb {
    /// Bus number and device address.
    pub bus_addr: (u8, u8),
    /// Vendor and product id.
    pub vendor_product: (u16, u16),
    /// Its product name.
    pub description: String,
}

/// The host devices every fake VM can pass through: a receiver on bus 3 address 2 and a
/// storage stick on bus 1 address 5.
pub fn default_host_usb() -> Vec<FakeHostUsb> {
    vec![
        FakeHostUsb {
            bus_addr: (3, 2),
            vendor_product: (0x046d, 0xc52b),
            description: "USB Receiver".into(),
        },
        FakeHostUsb {
            bus_addr: (1, 5),
            vendor_product: (0x0781, 0x5581),
            description: "Ultra".into(),
        },
    ]
}

/// Ports of the fake VM's USB controller.
const FAKE_USB_PORTS: usize = 4;
/// The ids QEMU's emulated HID devices report (vendor 0627, product 0001).
const EMULATED_HID_IDS: (u16, u16) = (0x0627, 0x0001);

/// A USB device plugged into the fake VM, with the descriptor it was given, if any.
#[derive(Debug)]
struct FakeUsb {
    info: UsbInfo,
    fd: Option<fs::File>,
}

/// A VM that only keeps state and emits events.
pub struct FakeVm {
    state: Mutex<RunState>,
    requests: Mutex<Requests>,
    wake: Condvar,
    events: EventSender,
    cdrom: Mutex<Option<FakeDrive>>,
    host_usb: Vec<FakeHostUsb>,
    usb: Mutex<Vec<FakeUsb>>,
}

impl FakeVm {
    /// A running fake VM that reports events through `events`.
    pub fn new(events: EventSender) -> Self {
        Self {
            state: Mutex::new(RunState::Running),
            requests: Mutex::default(),
            wake: Condvar::new(),
            events,
            cdrom: Mutex::new(None),
            host_usb: default_host_usb(),
            usb: Mutex::default(),
        }
    }

    /// A running fake VM serving QMP on a socket at `path`: the one set-up of the fake
    /// helper and of every test that talks to it over a real socket.
    pub fn serve(path: &Path) -> Result<(Arc<FakeVm>, QmpServerHandle), ServerError> {
        let events = EventSender::new();
        let vm = Arc::new(FakeVm::new(events.clone()));
        let server =
            QmpServer::start_with_events(path, Arc::clone(&vm) as Arc<dyn VmControl>, events)?;
        Ok((vm, server))
    }

    fn usb(&self) -> MutexGuard<'_, Vec<FakeUsb>> {
        self.usb.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The metadata of the descriptor USB device `id` was plugged in with (`device_add`
    /// with `fd`): tests compare it with the file they passed.
    pub fn usb_passed_file(&self, id: &str) -> Option<fs::Metadata> {
        self.usb()
            .iter()
            .find(|d| d.info.id == id)
            .and_then(|d| d.fd.as_ref())
            .and_then(|f| f.metadata().ok())
    }

    /// The host device a `usb-host` spec names, checked against all it gives.
    fn find_host(
        &self,
        vendor_product: Option<(u16, u16)>,
        bus_addr: Option<(u8, u8)>,
    ) -> Result<FakeHostUsb, ControlError> {
        self.host_usb
            .iter()
            .find(|h| {
                vendor_product.is_none_or(|vp| vp == h.vendor_product)
                    && bus_addr.is_none_or(|ba| ba == h.bus_addr)
            })
            .cloned()
            .ok_or_else(|| {
                let what = match (vendor_product, bus_addr) {
                    (Some((v, p)), _) => format!("{v:04x}:{p:04x}"),
                    (None, Some((b, a))) => format!("on bus {b} address {a}"),
                    (None, None) => "given".into(),
                };
                ControlError::Failed(format!("no host USB device {what}"))
            })
    }

    /// A running fake VM with a CD drive ([`CDROM_ID`]) holding `image`, or empty.
    pub fn with_cdrom(events: EventSender, image: Option<PathBuf>) -> Self {
        let vm = Self::new(events);
        *vm.drive() = Some(FakeDrive {
            image,
            locked: false,
        });
        vm
    }

    fn drive(&self) -> MutexGuard<'_, Option<FakeDrive>> {
        self.cdrom.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The image in the CD drive; `None` when it is empty or there is no drive.
    pub fn cdrom_image(&self) -> Option<PathBuf> {
        self.drive().as_ref().and_then(|d| d.image.clone())
    }

    /// Simulates the guest locking (PREVENT MEDIUM REMOVAL) or unlocking the CD drive.
    pub fn lock_cdrom(&self, locked: bool) {
        if let Some(d) = self.drive().as_mut() {
            d.locked = locked;
        }
    }

    /// The CD drive named `id`, unless it is locked and `force` is not given.
    fn removable(
        &self,
        id: &str,
        force: bool,
    ) -> Result<MutexGuard<'_, Option<FakeDrive>>, ControlError> {
        let drive = self.drive();
        match drive.as_ref() {
            Some(d) if id == CDROM_ID => {
                if d.locked && !force {
                    return Err(ControlError::Failed(format!(
                        "Device '{id}' is locked and force was not specified"
                    )));
                }
                Ok(drive)
            }
            _ => Err(ControlError::DeviceNotFound(id.to_owned())),
        }
    }

    fn state(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn requests(&self) -> MutexGuard<'_, Requests> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once `quit` was requested.
    pub fn quit_requested(&self) -> bool {
        self.requests().quit
    }

    /// True once the power button was pressed.
    pub fn powerdown_requested(&self) -> bool {
        self.requests().powerdown
    }

    /// Simulates the guest powering off: state shutdown, SHUTDOWN event.
    pub fn guest_shutdown(&self) {
        *self.state() = RunState::Shutdown;
        self.events.emit(Event::Shutdown {
            guest: true,
            reason: ShutdownReason::GuestShutdown,
        });
    }

    /// Blocks until `quit` or the power button is requested, or `timeout` passes.
    /// Returns the requests seen.
    fn wait_request(&self, timeout: Duration) -> Requests {
        let guard = self.requests();
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |r| !r.quit && !r.powerdown)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

impl VmControl for FakeVm {
    fn status(&self) -> RunState {
        *self.state()
    }

    fn pause(&self) -> Result<(), ControlError> {
        let mut state = self.state();
        match *state {
            RunState::Running => {
                *state = RunState::Paused;
                drop(state);
                self.events.emit(Event::Stop);
                Ok(())
            }
            // Like QEMU: stopping a stopped VM is a no-op.
            _ => Ok(()),
        }
    }

    fn resume(&self) -> Result<(), ControlError> {
        let mut state = self.state();
        match *state {
            RunState::Paused => {
                *state = RunState::Running;
                drop(state);
                self.events.emit(Event::Resume);
                Ok(())
            }
            RunState::Running => Ok(()),
            other => Err(ControlError::InvalidState(other)),
        }
    }

    fn powerdown(&self) -> Result<(), ControlError> {
        self.events.emit(Event::Powerdown);
        self.requests().powerdown = true;
        self.wake.notify_all();
        Ok(())
    }

    fn reset(&self) -> Result<(), ControlError> {
        *self.state() = RunState::Running;
        self.events.emit(Event::Reset {
            guest: false,
            reason: ShutdownReason::HostQmpSystemReset,
        });
        Ok(())
    }

    fn quit(&self) {
        self.requests().quit = true;
        self.wake.notify_all();
    }

    fn query_block(&self) -> Vec<BlockInfo> {
        self.drive()
            .iter()
            .map(|d| {
                let size = d
                    .image
                    .as_deref()
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map_or(0, |m| m.len());
                let image = d.image.as_deref().map(|p| (p, size));
                BlockInfo::cdrom(image, false, d.locked)
            })
            .collect()
    }

    fn eject(&self, id: &str, force: bool) -> Result<(), ControlError> {
        if let Some(d) = self.removable(id, force)?.as_mut() {
            d.image = None;
        }
        Ok(())
    }

    fn device_add_usb(&self, spec: UsbDeviceSpec) -> Result<(), ControlError> {
        let (vendor_product, description, host, fd) = match spec.driver {
            UsbDriver::Host(host) => {
                let fd = host.fd.map(fs::File::from);
                let found = match (host.vendor_product, host.bus_addr, &fd) {
                    // A descriptor alone: the fake cannot read its ids.
                    (None, None, Some(_)) => FakeHostUsb {
                        bus_addr: (0, 0),
                        vendor_product: (0, 0),
                        description: "passed by descriptor".into(),
                    },
                    (vp, ba, _) => self.find_host(vp, ba)?,
                };
                let host = UsbHostAddr {
                    bus: found.bus_addr.0,
                    addr: found.bus_addr.1,
                };
                (found.vendor_product, found.description, Some(host), fd)
            }
            UsbDriver::Tablet => (EMULATED_HID_IDS, "QEMU USB Tablet".into(), None, None),
            UsbDriver::Keyboard => (EMULATED_HID_IDS, "QEMU USB Keyboard".into(), None, None),
        };
        let mut usb = self.usb();
        if usb.iter().any(|d| d.info.id == spec.id) {
            return Err(ControlError::Failed(format!(
                "Duplicate ID '{}' for device",
                spec.id
            )));
        }
        let port = (1..=FAKE_USB_PORTS)
            .map(|p| p.to_string())
            .find(|p| usb.iter().all(|d| d.info.port != *p))
            .ok_or_else(|| ControlError::Failed("the USB controller has no free port".into()))?;
        usb.push(FakeUsb {
            info: UsbInfo {
                id: spec.id,
                port,
                vendorid: vendor_product.0,
                productid: vendor_product.1,
                speed: UsbSpeed::Full,
                description,
                host,
            },
            fd,
        });
        Ok(())
    }

    fn device_del(&self, id: &str) -> Result<(), ControlError> {
        let mut usb = self.usb();
        let at = usb
            .iter()
            .position(|d| d.info.id == id)
            .ok_or_else(|| ControlError::DeviceNotFound(id.to_owned()))?;
        usb.remove(at);
        drop(usb);
        self.events.emit(Event::DeviceDeleted {
            device: id.to_owned(),
        });
        Ok(())
    }

    fn query_usb(&self) -> Vec<UsbInfo> {
        self.usb().iter().map(|d| d.info.clone()).collect()
    }

    fn change_medium(&self, id: &str, filename: &Path, force: bool) -> Result<(), ControlError> {
        let mut drive = self.removable(id, force)?;
        open_disc_image(filename).map_err(|e| {
            ControlError::Failed(format!("cannot open {}: {e}", filename.display()))
        })?;
        if let Some(d) = drive.as_mut() {
            d.image = Some(filename.to_owned());
        }
        Ok(())
    }
}

/// Options of the fake helper, parsed from `hospes-vmm`-style arguments.
#[derive(Debug, Default)]
struct FakeHelperArgs {
    qmp: Option<PathBuf>,
    serial: Option<PathBuf>,
    name: String,
    ignore_powerdown: bool,
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<FakeHelperArgs, FakeError> {
    let mut out = FakeHelperArgs {
        name: "fake".into(),
        ..Default::default()
    };
    let mut args = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| FakeError::Usage(format!("{flag} needs a value")))
        };
        let endpoint =
            |v: String| parse_unix_endpoint(&v).map_err(|e| FakeError::Usage(e.to_string()));
        match flag.as_str() {
            "--qmp" => out.qmp = Some(endpoint(value()?)?),
            "--serial" => out.serial = Some(endpoint(value()?)?),
            "--name" => out.name = value()?,
            "--config" => drop(value()?),
            "--ignore-powerdown" => out.ignore_powerdown = true,
            other => return Err(FakeError::Usage(format!("unknown argument {other}"))),
        }
    }
    Ok(out)
}

/// Runs a pretend helper until `quit` or, unless `--ignore-powerdown` is given, until the
/// power button is pressed (the fake guest then shuts down at once).
///
/// Arguments: `--qmp unix:PATH [--serial unix:PATH] [--name NAME] [--config FILE]
/// [--ignore-powerdown]`. The serial socket echoes every byte back.
pub fn run_fake_helper(args: impl IntoIterator<Item = OsString>) -> Result<(), FakeError> {
    let args = parse_args(args)?;
    let qmp = args
        .qmp
        .ok_or_else(|| FakeError::Usage("--qmp unix:PATH is required".into()))?;
    if let Some(serial) = &args.serial {
        start_echo_serial(serial.clone()).map_err(FakeError::Serial)?;
    }
    let (vm, server) = FakeVm::serve(&qmp)?;
    log::info!("fake VM '{}' serving QMP on {}", args.name, qmp.display());
    loop {
        let requests = vm.wait_request(Duration::from_secs(3600));
        if requests.quit {
            server.emit(Event::Shutdown {
                guest: false,
                reason: ShutdownReason::HostQmpQuit,
            });
            break;
        }
        if requests.powerdown && !args.ignore_powerdown {
            // Give the reply to system_powerdown time to leave before the "guest" reacts.
            thread::sleep(Duration::from_millis(20));
            vm.guest_shutdown();
            break;
        }
        if requests.powerdown {
            vm.requests().powerdown = false;
        }
    }
    server.shutdown();
    if let Some(serial) = &args.serial {
        let _ = fs::remove_file(serial);
    }
    Ok(())
}

fn start_echo_serial(path: PathBuf) -> io::Result<()> {
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    thread::Builder::new()
        .name("fake-serial".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = thread::Builder::new()
                    .name("fake-serial-conn".into())
                    .spawn(move || echo(stream));
            }
        })?;
    Ok(())
}

fn echo(mut stream: UnixStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        if stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}
