//! Running VMs from the app: start, pause, resume, power button, reset, force off, and a
//! watcher that follows one helper's QMP events. Plain blocking code, no GTK.
//!
//! Every function here blocks (it waits on sockets or on a starting helper), so the window
//! calls them from relm4's background pool or from a watcher thread, never from the main
//! loop. A VM's runtime directory (`$XDG_RUNTIME_DIR/hospes/<id>/`) is named after its
//! library id, so a helper started by `hospesctl` and one started here are the same VM.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gettextrs::gettext;
use hospes_core::control::RunState;
use hospes_core::control::client::{ClientError, QmpClient};
use hospes_core::launch::{self, HelperStatus, LaunchSpec};
use hospes_core::runtime::{Liveness, RuntimeDir};
use hospes_core::saved_state;

use crate::i18n::{gettext_f, ngettext_f};

/// How many lines of `helper.log` the app shows when a helper dies.
pub const LOG_LINES: usize = 12;
/// How long one QMP answer may take before the app gives up on it.
const QMP_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the watcher looks at a helper whose events are quiet.
const WATCH_TICK: Duration = Duration::from_millis(500);
/// How often a running VM with a display gets a new library thumbnail.
const THUMBNAIL_INTERVAL: Duration = Duration::from_secs(3);
/// How long a screendump may take.
const SCREENDUMP_TIMEOUT: Duration = Duration::from_secs(15);
/// The thumbnail's file in the runtime directory (QMP `screendump` writes PNG).
const THUMBNAIL_FILE: &str = "thumbnail.png";

/// What a VM is doing, as the library shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// No helper runs.
    Stopped,
    /// A helper is being started, or runs but does not answer yet.
    Starting,
    /// The guest runs.
    Running,
    /// The guest is paused by the host.
    Paused,
    /// The power button was pressed or the helper is being stopped.
    Stopping,
}

impl VmState {
    /// The state as a person reads it.
    pub fn label(self) -> String {
        match self {
            // Translators: the state of a virtual machine.
            VmState::Stopped => gettext("Stopped"),
            // Translators: the state of a virtual machine.
            VmState::Starting => gettext("Starting"),
            // Translators: the state of a virtual machine.
            VmState::Running => gettext("Running"),
            // Translators: the state of a virtual machine.
            VmState::Paused => gettext("Paused"),
            // Translators: the state of a virtual machine.
            VmState::Stopping => gettext("Stopping"),
        }
    }

    /// Whether a helper process belongs to this state.
    pub fn is_live(self) -> bool {
        !matches!(self, VmState::Stopped)
    }

    /// The state a QMP run state maps to.
    pub fn from_run_state(state: RunState) -> VmState {
        match state {
            RunState::Paused | RunState::Suspended => VmState::Paused,
            RunState::Prelaunch => VmState::Starting,
            RunState::Shutdown => VmState::Stopping,
            RunState::Running
            | RunState::InternalError
            | RunState::GuestPanicked
            | RunState::Unknown => VmState::Running,
        }
    }
}

/// Something a person asked a VM to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    /// Start the helper.
    Start,
    /// Pause the guest.
    Pause,
    /// Resume a paused guest.
    Resume,
    /// Press the ACPI power button.
    PowerButton,
    /// Reset the guest.
    Reset,
    /// Kill the helper at once.
    ForceOff,
    /// Save the guest's state to the VM folder and end the helper (QMP `hospes-save`).
    SaveAndQuit,
    /// Delete a stopped VM's saved state, so its next start boots afresh.
    DiscardSaved,
}

/// A VM to act on: its library id, name and settings file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRef {
    /// The library id (folder name), also the runtime directory's name.
    pub id: String,
    /// The name people see.
    pub name: String,
    /// Its `vm.ron`.
    pub config: PathBuf,
    /// It has a display, served over RFB on the runtime directory's `vnc.sock`.
    pub display: bool,
}

/// The current state of the VM with library id `id`. Blocking, bounded by [`QMP_TIMEOUT`].
pub fn probe(id: &str) -> VmState {
    let Ok(runtime) = RuntimeDir::open(id) else {
        return VmState::Stopped;
    };
    match launch::status(&runtime, QMP_TIMEOUT) {
        Ok(HelperStatus::NotRunning) => VmState::Stopped,
        Ok(HelperStatus::NotAnswering(_)) => VmState::Starting,
        Ok(HelperStatus::Running { state, .. }) => VmState::from_run_state(state),
        Err(err) => {
            log::warn!("cannot ask VM {id} for its state: {err}");
            VmState::Starting
        }
    }
}

/// Carries out `action` on `vm`. Blocking: starting waits until the helper answers.
/// The error is a translated sentence with the cause chain.
pub fn perform(vm: &VmRef, action: VmAction) -> Result<(), String> {
    let result = match action {
        VmAction::Start => start(vm),
        VmAction::ForceOff => force_off(&vm.id),
        VmAction::Pause => qmp(&vm.id, QmpClient::stop),
        VmAction::Resume => qmp(&vm.id, QmpClient::cont),
        VmAction::PowerButton => qmp(&vm.id, QmpClient::system_powerdown),
        VmAction::Reset => qmp(&vm.id, QmpClient::system_reset),
        VmAction::SaveAndQuit => save(&vm.id, |_, _| {}),
        VmAction::DiscardSaved => discard_saved(vm),
    };
    result.map_err(|detail| {
        gettext_f(
            // Translators: shown when an action on a virtual machine failed; {name} is the
            // machine, {error} the technical reason.
            "“{name}”: {error}",
            &[("name", &vm.name), ("error", &detail)],
        )
    })
}

/// Like [`perform`] for [`VmAction::SaveAndQuit`], with the progress of the save: the
/// percent of guest RAM written.
pub fn save_and_quit(vm: &VmRef, mut progress: impl FnMut(u32)) -> Result<(), String> {
    save(&vm.id, |done, total| {
        progress(percent(done, total));
    })
    .map_err(|detail| {
        gettext_f(
            // Translators: shown when saving a virtual machine failed (it keeps running);
            // {name} is the machine, {error} the technical reason.
            "“{name}” was not saved and keeps running: {error}",
            &[("name", &vm.name), ("error", &detail)],
        )
    })
}

/// `done` of `total` in percent, 0 to 100.
pub fn percent(done: u64, total: u64) -> u32 {
    if total == 0 {
        return 0;
    }
    (u128::from(done.min(total)) * 100 / u128::from(total)) as u32
}

fn save(id: &str, progress: impl FnMut(u64, u64)) -> Result<(), String> {
    let runtime = RuntimeDir::open(id).map_err(|err| error_chain(&err))?;
    launch::save(&runtime, progress)
        .map(drop)
        .map_err(|err| error_chain(&err))
}

fn discard_saved(vm: &VmRef) -> Result<(), String> {
    let dir = vm_dir(vm);
    saved_state::discard(&dir)
        .map(drop)
        .map_err(|err| error_chain(&err))
}

/// The VM's folder (where `vm.ron` and a saved state live).
pub fn vm_dir(vm: &VmRef) -> PathBuf {
    vm.config
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A stopped VM's saved state as the library shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavedInfo {
    /// Saved at this time (seconds since the Unix epoch); Start resumes it.
    Resumable(u64),
    /// A saved-state file that cannot be resumed, and why (what to do is in the reason).
    Unusable(String),
}

/// The saved state of the VM in `vm_dir`, if it has one. Reads the file's header only.
pub fn saved_info(vm_dir: &Path) -> Option<SavedInfo> {
    saved_state::find(vm_dir).map(|found| match found {
        Ok(meta) => SavedInfo::Resumable(meta.saved_at),
        Err(err) => SavedInfo::Unusable(error_chain(&err)),
    })
}

/// "Saved 5 minutes ago": how long ago `saved_at` was, from `now` (Unix seconds).
pub fn saved_label(saved_at: u64, now: u64) -> String {
    let ago = now.saturating_sub(saved_at);
    let (count, unit) = match ago {
        // Translators: the state of a virtual machine saved less than a minute ago.
        0..60 => return gettext("Saved just now"),
        60..3600 => (ago / 60, 0),
        3600..86400 => (ago / 3600, 1),
        _ => (ago / 86400, 2),
    };
    let n = count.to_string();
    let args = [("n", n.as_str())];
    match unit {
        0 => ngettext_f(
            // Translators: the state of a virtual machine; {n} is a number of minutes.
            "Saved {n} minute ago",
            "Saved {n} minutes ago",
            count as u32,
            &args,
        ),
        1 => ngettext_f(
            // Translators: the state of a virtual machine; {n} is a number of hours.
            "Saved {n} hour ago",
            "Saved {n} hours ago",
            count as u32,
            &args,
        ),
        _ => ngettext_f(
            // Translators: the state of a virtual machine; {n} is a number of days.
            "Saved {n} day ago",
            "Saved {n} days ago",
            count as u32,
            &args,
        ),
    }
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn start(vm: &VmRef) -> Result<(), String> {
    let runtime = RuntimeDir::create(&vm.id).map_err(|err| error_chain(&err))?;
    let mut spec = LaunchSpec::new(helper_binary(), &vm.name, &vm.config);
    spec.extra_args = extra_helper_args(&runtime, vm.display);
    launch::spawn_helper(&spec, &runtime)
        .map(|_| ())
        .map_err(|err| error_chain(&err))
}

fn force_off(id: &str) -> Result<(), String> {
    let runtime = RuntimeDir::open(id).map_err(|err| error_chain(&err))?;
    launch::kill(&runtime)
        .map(|_| ())
        .map_err(|err| error_chain(&err))
}

fn qmp(id: &str, command: fn(&mut QmpClient) -> Result<(), ClientError>) -> Result<(), String> {
    let runtime = RuntimeDir::open(id).map_err(|err| error_chain(&err))?;
    let mut client = QmpClient::connect_with_timeout(&runtime.qmp_socket(), QMP_TIMEOUT)
        .map_err(|err| error_chain(&err))?;
    command(&mut client).map_err(|err| error_chain(&err))
}

/// Helper arguments beyond the ones `launch` always passes: the RFB socket in the
/// runtime directory for a VM with a display.
fn extra_helper_args(runtime: &RuntimeDir, display: bool) -> Vec<OsString> {
    if !display {
        return Vec::new();
    }
    let mut endpoint = OsString::from("unix:");
    endpoint.push(runtime.vnc_socket());
    vec![OsString::from("--vnc"), endpoint]
}

/// The `hospes-vmm` to run: `$HOSPES_VMM`, else the one next to this binary, else the one
/// on `PATH`.
pub fn helper_binary() -> PathBuf {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    pick_helper(std::env::var_os("HOSPES_VMM"), exe_dir.as_deref())
}

fn pick_helper(env: Option<OsString>, exe_dir: Option<&Path>) -> PathBuf {
    if let Some(path) = env.filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(beside) = exe_dir.map(|dir| dir.join("hospes-vmm"))
        && beside.is_file()
    {
        return beside;
    }
    PathBuf::from("hospes-vmm")
}

/// What a watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The VM changed state.
    State(VmState),
    /// A new screenshot of the guest's screen is at this path (PNG).
    Thumbnail(PathBuf),
    /// The helper is gone. `clean` is false when it ended without the guest powering off
    /// (a crash, a kill from outside); `log` holds the last lines of `helper.log`.
    Exited {
        /// The guest powered off (or the helper was asked to quit).
        clean: bool,
        /// The end of the helper's log.
        log: String,
    },
}

/// Follows the helper of VM `id` until it exits, calling `report` for every change and,
/// with `thumbnails`, every few seconds while the guest runs, with a new screenshot.
/// Blocking: run it on a thread of its own. Returns when the helper is gone or `report`
/// returns false (nobody listens any more).
pub fn watch(id: &str, thumbnails: bool, mut report: impl FnMut(WatchEvent) -> bool) {
    let Ok(runtime) = RuntimeDir::open(id) else {
        report(WatchEvent::Exited {
            clean: true,
            log: String::new(),
        });
        return;
    };
    let mut powered_off = false;
    let mut connected_once = false;
    let mut client: Option<QmpClient> = None;
    let mut running = false;
    let mut next_thumbnail = std::time::Instant::now();
    loop {
        if thumbnails
            && running
            && std::time::Instant::now() >= next_thumbnail
            && let Some(connected) = client.as_mut()
        {
            next_thumbnail = std::time::Instant::now() + THUMBNAIL_INTERVAL;
            let path = runtime.path().join(THUMBNAIL_FILE);
            let args = serde_json::json!({ "filename": path });
            // Encoding a big screen as PNG can take a while on a busy host.
            connected.set_timeout(SCREENDUMP_TIMEOUT);
            let dumped = connected.execute("screendump", Some(args));
            connected.set_timeout(QMP_TIMEOUT);
            match dumped {
                Ok(_) => {
                    if !report(WatchEvent::Thumbnail(path)) {
                        return;
                    }
                }
                Err(err) => log::debug!("no thumbnail of VM {id}: {err}"),
            }
        }
        if client.is_none() {
            client = QmpClient::connect_with_timeout(&runtime.qmp_socket(), QMP_TIMEOUT).ok();
            connected_once |= client.is_some();
            if let Some(connected) = client.as_mut() {
                match connected.query_status() {
                    Ok(info) => {
                        let state = VmState::from_run_state(info.status);
                        running = state == VmState::Running;
                        if !report(WatchEvent::State(state)) {
                            return;
                        }
                    }
                    Err(_) => client = None,
                }
            }
        }
        let event = match client.as_mut() {
            Some(connected) => connected.next_event(WATCH_TICK),
            None => {
                std::thread::sleep(WATCH_TICK);
                Err(ClientError::Closed)
            }
        };
        match event {
            Ok(event) => {
                let state = match event.name.as_str() {
                    "STOP" => Some(VmState::Paused),
                    "RESUME" => Some(VmState::Running),
                    "POWERDOWN" => None,
                    // A saved VM's helper exits next, as asked.
                    "SHUTDOWN" | "SAVE_COMPLETED" => {
                        powered_off = true;
                        Some(VmState::Stopping)
                    }
                    _ => None,
                };
                if let Some(state) = state {
                    running = state == VmState::Running;
                    if !report(WatchEvent::State(state)) {
                        return;
                    }
                }
            }
            Err(ClientError::Timeout) => {
                // A helper still in prelaunch sends no RESUME when it starts running:
                // ask again while the guest is not known to run.
                if !running && let Some(connected) = client.as_mut() {
                    match connected.query_status() {
                        Ok(info) => {
                            let state = VmState::from_run_state(info.status);
                            running = state == VmState::Running;
                            if running && !report(WatchEvent::State(state)) {
                                return;
                            }
                        }
                        Err(_) => client = None,
                    }
                }
            }
            Err(_) => {
                client = None;
                if !matches!(
                    runtime.probe(),
                    Liveness::Running(_) | Liveness::NotAnswering(_)
                ) {
                    let log = runtime.log_tail(LOG_LINES);
                    // Without a SHUTDOWN event the helper ended on its own: a crash or a
                    // kill. Only a helper never reached may have powered off unseen.
                    let clean = powered_off || (!connected_once && exited_cleanly(&log));
                    if let Err(err) = runtime.clear_runtime_files() {
                        log::warn!("cannot clear the runtime files of VM {id}: {err}");
                    }
                    report(WatchEvent::Exited { clean, log });
                    return;
                }
            }
        }
    }
}

/// Whether the helper's log ends the way a guest power-off or a QMP `quit` ends it. The
/// helper prints nothing on a clean exit, so an empty log counts as clean.
fn exited_cleanly(log: &str) -> bool {
    !log.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.contains("error") || line.contains("panicked")
    })
}

/// `err` and its causes, joined with ": ".
pub use hospes_core::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_is_taken_from_the_environment_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hospes-vmm"), "").unwrap();
        assert_eq!(
            pick_helper(Some("/opt/vmm".into()), Some(dir.path())),
            PathBuf::from("/opt/vmm")
        );
        assert_eq!(
            pick_helper(None, Some(dir.path())),
            dir.path().join("hospes-vmm")
        );
        assert_eq!(
            pick_helper(Some("".into()), Some(Path::new("/nonexistent"))),
            PathBuf::from("hospes-vmm")
        );
    }

    #[test]
    fn run_states_map_to_library_states() {
        assert_eq!(VmState::from_run_state(RunState::Running), VmState::Running);
        assert_eq!(VmState::from_run_state(RunState::Paused), VmState::Paused);
        assert_eq!(
            VmState::from_run_state(RunState::Shutdown),
            VmState::Stopping
        );
        assert!(!VmState::Stopped.is_live());
        assert!(VmState::Paused.is_live());
    }

    #[test]
    fn saved_states_read_their_age_and_their_trouble() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(saved_info(dir.path()), None);
        let meta = saved_state::Meta::now(1 << 20, 1, String::new());
        let path = saved_state::path_in(dir.path());
        saved_state::write(&path, &meta, &[], &[], |_, _| {}).unwrap();
        assert_eq!(
            saved_info(dir.path()),
            Some(SavedInfo::Resumable(meta.saved_at))
        );
        std::fs::write(&path, b"not a saved state").unwrap();
        match saved_info(dir.path()) {
            Some(SavedInfo::Unusable(why)) => assert!(why.contains("saved state"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(saved_label(1000, 1030), "Saved just now");
        assert_eq!(saved_label(1000, 1000 + 5 * 60 + 7), "Saved 5 minutes ago");
        assert_eq!(saved_label(1000, 1000 + 60), "Saved 1 minute ago");
        assert_eq!(saved_label(1000, 1000 + 2 * 3600), "Saved 2 hours ago");
        assert_eq!(saved_label(0, 3 * 86400), "Saved 3 days ago");
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(5, 0), 0);
        assert_eq!(percent(9, 4), 100);
    }

    #[test]
    fn a_log_with_an_error_is_not_a_clean_exit() {
        assert!(exited_cleanly(""));
        assert!(exited_cleanly("guest powered off\n"));
        assert!(!exited_cleanly("Error: KVM_RUN failed\n"));
        assert!(!exited_cleanly("thread 'vcpu0' panicked at src/x.rs\n"));
    }
}
