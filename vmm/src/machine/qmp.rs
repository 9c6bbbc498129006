//! The bridge between the QMP server (`control`) and the VM: QMP commands arrive on the
//! server's client threads and become [`VmHandle`] calls; the VM's state changes go back
//! to every client as QMP events (STOP, RESUME, POWERDOWN, RESET, SHUTDOWN). The CD
//! commands (`query-block`, `eject`, `blockdev-change-medium`) go to the CD drive's
//! [`CdTray`], set with [`QmpBridge::set_cdrom`].
//!
//! `main` starts it with [`start`] when `--qmp unix:PATH` is given, calls
//! [`QmpBridge::on_boot`] from the device registration step of every boot (a boot after
//! the first one is a reset: RESET with `guest: true` unless QMP asked for it) and
//! [`Qmp::finish`] when the VM ends (SHUTDOWN, then the server closes).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hospes_core::control::block::{BlockInfo, CDROM_ID};
use hospes_core::control::display::{InputEvent, VncInfo};
use hospes_core::control::{
    ControlError, Event, EventSender, QmpServer, QmpServerHandle, RunState as QmpState,
    ShutdownReason, VmControl,
};
use hospes_core::error_chain;
use hospes_devices::bus::lock;

use super::display::DisplayStack;
use super::save::SaveReporter;
use super::storage::CdTray;
use super::usb::Usb;
use super::{Exit, HandleError, MachineError, RunState, VmHandle};
use hospes_core::control::usb::{UsbDeviceSpec, UsbInfo};

/// Implements the QMP commands on a [`VmHandle`].
pub struct QmpBridge {
    handle: VmHandle,
    events: EventSender,
    host_reset: AtomicBool,
    quit_reason: std::sync::Mutex<ShutdownReason>,
    display: std::sync::Mutex<Option<Arc<DisplayStack>>>,
    cdrom: std::sync::Mutex<Option<Arc<CdTray>>>,
    usb: std::sync::Mutex<Option<Arc<Usb>>>,
}

fn qmp_state(s: RunState) -> QmpState {
    match s {
        RunState::Prelaunch => QmpState::Prelaunch,
        RunState::Running => QmpState::Running,
        RunState::Paused => QmpState::Paused,
        RunState::Shutdown => QmpState::Shutdown,
    }
}

impl QmpBridge {
    /// Called on boot number `boot` (1 for the first): later boots follow a reset.
    pub fn on_boot(&self, boot: u32) {
        if boot > 1 && !self.host_reset.swap(false, Ordering::SeqCst) {
            self.events.emit(Event::Reset {
                guest: true,
                reason: ShutdownReason::GuestReset,
            });
        }
    }

    /// Serves `screendump`, `query-vnc` and `input-send-event` from `display`.
    pub fn set_display(&self, display: Arc<DisplayStack>) {
        *lock(&self.display) = Some(display);
    }

    fn display(&self) -> Result<Arc<DisplayStack>, ControlError> {
        lock(&self.display).clone().ok_or(ControlError::Unsupported)
    }

    /// Serves `query-block`, `eject` and `blockdev-change-medium` from the CD drive's
    /// `tray`.
    pub fn set_cdrom(&self, tray: Arc<CdTray>) {
        *lock(&self.cdrom) = Some(tray);
    }

    /// Serves USB hot-plug (`device_add`, `device_del`, `query-usb`) from `usb`.
    pub fn set_usb(&self, usb: Arc<Usb>) {
        usb.set_events(self.events.clone());
        *lock(&self.usb) = Some(usb);
    }

    fn usb(&self) -> Result<Arc<Usb>, ControlError> {
        lock(&self.usb)
            .clone()
            .ok_or_else(|| ControlError::Failed("this VM has no USB controller".into()))
    }

    /// The CD drive named `id`.
    fn cdrom(&self, id: &str) -> Result<Arc<CdTray>, ControlError> {
        lock(&self.cdrom)
            .clone()
            .filter(|_| id == CDROM_ID)
            .ok_or_else(|| ControlError::DeviceNotFound(id.to_owned()))
    }

    /// Quits because a signal arrived (SHUTDOWN then says host-signal).
    pub fn quit_on_signal(&self) {
        *lock(&self.quit_reason) = ShutdownReason::HostSignal;
        self.handle.quit();
    }

    fn shutdown_event(&self, exit: &Result<Exit, MachineError>) -> Event {
        let (guest, reason) = match exit {
            Ok(Exit::PowerOff) => (true, ShutdownReason::GuestShutdown),
            Ok(Exit::Reset) => (true, ShutdownReason::GuestReset),
            Ok(Exit::Quit) => (false, *lock(&self.quit_reason)),
            Ok(Exit::Saved) => (false, ShutdownReason::HostQmpQuit),
            Err(_) => (false, ShutdownReason::HostError),
        };
        Event::Shutdown { guest, reason }
    }
}

impl VmControl for QmpBridge {
    fn status(&self) -> QmpState {
        qmp_state(self.handle.status())
    }

    fn pause(&self) -> Result<(), ControlError> {
        self.handle.pause().map_err(|e| match e {
            HandleError::NotRunning => ControlError::InvalidState(self.status()),
            HandleError::PauseTimeout | HandleError::CannotSave(_) => {
                ControlError::Failed(e.to_string())
            }
        })?;
        self.events.emit(Event::Stop);
        Ok(())
    }

    fn resume(&self) -> Result<(), ControlError> {
        self.handle.resume();
        self.events.emit(Event::Resume);
        Ok(())
    }

    fn powerdown(&self) -> Result<(), ControlError> {
        self.handle
            .powerdown()
            .map_err(|_| ControlError::InvalidState(self.status()))?;
        self.events.emit(Event::Powerdown);
        Ok(())
    }

    fn reset(&self) -> Result<(), ControlError> {
        self.host_reset.store(true, Ordering::SeqCst);
        self.handle.reset();
        self.events.emit(Event::Reset {
            guest: false,
            reason: ShutdownReason::HostQmpSystemReset,
        });
        Ok(())
    }

    fn quit(&self) {
        *lock(&self.quit_reason) = ShutdownReason::HostQmpQuit;
        self.handle.quit();
    }

    fn save(&self) -> Result<(), ControlError> {
        let reporter = Arc::new(QmpSaveReporter(self.events.clone()));
        self.handle.save(reporter).map_err(|e| match e {
            HandleError::NotRunning => ControlError::InvalidState(self.status()),
            e => ControlError::Failed(e.to_string()),
        })
    }

    fn screendump(&self, filename: &Path) -> Result<(), ControlError> {
        self.display()?.screendump(filename)
    }

    fn query_vnc(&self) -> VncInfo {
        self.display()
            .map_or_else(|_| VncInfo::disabled(), |d| d.query_vnc())
    }

    fn input_send_event(&self, events: &[InputEvent]) -> Result<(), ControlError> {
        self.display()?.input_send_event(events)
    }

    fn device_add_usb(&self, spec: UsbDeviceSpec) -> Result<(), ControlError> {
        self.usb()?.add(spec)
    }

    fn device_del(&self, id: &str) -> Result<(), ControlError> {
        match lock(&self.usb).clone() {
            Some(usb) => usb.remove(id),
            None => Err(ControlError::DeviceNotFound(id.to_owned())),
        }
    }

    fn query_usb(&self) -> Vec<UsbInfo> {
        lock(&self.usb).iter().flat_map(|u| u.query()).collect()
    }

    fn query_block(&self) -> Vec<BlockInfo> {
        lock(&self.cdrom).iter().map(|t| t.info()).collect()
    }

    fn eject(&self, id: &str, force: bool) -> Result<(), ControlError> {
        self.cdrom(id)?
            .eject(force)
            .map_err(|e| ControlError::Failed(error_chain(&e)))
    }

    fn change_medium(&self, id: &str, filename: &Path, force: bool) -> Result<(), ControlError> {
        self.cdrom(id)?
            .insert(filename, force)
            .map_err(|e| ControlError::Failed(error_chain(&e)))
    }
}

/// A running QMP server and its bridge.
/// A save's progress as QMP events.
struct QmpSaveReporter(EventSender);

impl SaveReporter for QmpSaveReporter {
    fn progress(&self, done: u64, total: u64) {
        self.0.emit(Event::SaveProgress { done, total });
    }

    fn completed(&self, file: &Path, bytes: u64, ms: u64) {
        log::info!("saved to {} ({bytes} bytes) in {ms} ms", file.display());
        self.0.emit(Event::SaveCompleted {
            file: file.display().to_string(),
            bytes,
            ms,
        });
    }

    fn failed(&self, error: &str) {
        log::error!("save failed: {error}");
        self.0.emit(Event::SaveFailed {
            error: error.to_string(),
        });
    }
}

pub struct Qmp {
    pub bridge: Arc<QmpBridge>,
    server: QmpServerHandle,
}

impl Qmp {
    /// Reports how the VM ended and closes the server.
    pub fn finish(self, exit: &Result<Exit, MachineError>) {
        self.server.emit(self.bridge.shutdown_event(exit));
        self.server.shutdown();
    }
}

/// Starts the QMP server on `path` for the VM behind `handle`.
pub fn start(path: &Path, handle: VmHandle) -> Result<Qmp, MachineError> {
    let events = EventSender::new();
    let bridge = Arc::new(QmpBridge {
        handle,
        events: events.clone(),
        host_reset: AtomicBool::new(false),
        quit_reason: std::sync::Mutex::new(ShutdownReason::HostQmpQuit),
        display: std::sync::Mutex::new(None),
        cdrom: std::sync::Mutex::new(None),
        usb: std::sync::Mutex::new(None),
    });
    let vm: Arc<dyn VmControl> = bridge.clone();
    let server = QmpServer::start_with_events(path, vm, events)
        .map_err(|e| MachineError::Setup(format!("QMP: {e}")))?;
    Ok(Qmp { bridge, server })
}
