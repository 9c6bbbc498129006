//! `hospesctl start`, `stop`, `kill`, `console` and `status`: running VMs.
//!
//! A VM runs as its own `hospes-vmm` process, started detached in its own session by
//! [`launch::spawn_helper`] with its runtime files under `$XDG_RUNTIME_DIR/hospes/<id>/`.
//! These commands find the VM in the library, then act on that folder: the pid file, the
//! QMP socket (status, power button) and the serial socket (console).

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{CtlError, Output};
use hospes_core::control::RunState;
use hospes_core::control::console::{self, ConsoleExit};
use hospes_core::launch::{self, HelperStatus, LaunchError, LaunchSpec, StopOutcome};
use hospes_core::library::{Library, Machine};
use hospes_core::runtime::{self, RuntimeDir};
use hospes_core::saved_state;

/// How long `status` waits for a helper's QMP answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Commands on running VMs.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Start a VM in the background, as its own process `hospes-vmm: NAME`.
    Start(StartArgs),
    /// Press the VM's power button and wait for it to shut down; force it off after the
    /// timeout.
    Stop {
        /// The VM's name or id.
        name: String,
        /// Seconds to wait for the guest to shut down before forcing it off.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Force a VM off at once, like pulling its power cord.
    Kill {
        /// The VM's name or id.
        name: String,
    },
    /// Save the running VM's whole state to its folder and stop it; the next `start`
    /// resumes it where it was.
    Save {
        /// The VM's name or id.
        name: String,
    },
    /// Delete a saved VM's state: the next `start` boots it afresh (unsaved work in the
    /// guest is lost).
    Discard {
        /// The VM's name or id.
        name: String,
    },
    /// Attach this terminal to the VM's serial console (Ctrl-] detaches).
    Console {
        /// The VM's name or id.
        name: String,
    },
    /// Show whether a VM runs, or every running VM.
    Status {
        /// The VM's name or id (default: every running VM).
        name: Option<String>,
    },
}

/// `hospesctl start`'s arguments.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The VM's name or id.
    pub name: String,
    /// Attach to the serial console once the VM runs.
    #[arg(long)]
    pub console: bool,
    /// The helper binary (default: `hospes-vmm` next to hospesctl, then on $PATH).
    #[arg(long, value_name = "FILE")]
    pub helper: Option<PathBuf>,
}

/// Runs a VM subcommand.
pub fn run(command: VmCommand, out: &Output) -> Result<(), CtlError> {
    let library = Library::open_default()?;
    match command {
        VmCommand::Start(args) => start(&library, args, out),
        VmCommand::Stop { name, timeout } => {
            stop(&library, &name, Duration::from_secs(timeout), out)
        }
        VmCommand::Kill { name } => kill(&library, &name, out),
        VmCommand::Save { name } => save(&library, &name, out),
        VmCommand::Discard { name } => discard(&library, &name, out),
        VmCommand::Console { name } => attach_console(&library, &name, out),
        VmCommand::Status { name: Some(name) } => status_one(&library, &name, out),
        VmCommand::Status { name: None } => status_all(&library, out),
    }
}

/// The `hospes-vmm` to start: the one beside this program (an installed or built tree
/// keeps them together), else whatever `$PATH` finds.
fn helper_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("hospes-vmm")))
        .filter(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("hospes-vmm"))
}

fn start(library: &Library, args: StartArgs, out: &Output) -> Result<(), CtlError> {
    let machine = library.find(&args.name)?;
    let config = machine.config.clone()?;
    let runtime = RuntimeDir::create(&machine.id)?;
    let helper = args.helper.unwrap_or_else(helper_binary);
    let spec = LaunchSpec::new(helper, &config.name, machine.config_path());
    let pid = launch::spawn_helper(&spec, &runtime)?;
    out.emit(
        &format!("{} is running (pid {pid})", config.name),
        &json!({ "id": machine.id, "name": config.name, "pid": pid.0, "state": "running",
                 "runtime_dir": runtime.path() }),
    )?;
    if args.console {
        attach(&runtime, &config.name, out)?;
    }
    Ok(())
}

fn stop(library: &Library, name: &str, timeout: Duration, out: &Output) -> Result<(), CtlError> {
    let machine = library.find(name)?;
    let runtime = RuntimeDir::open(&machine.id)?;
    let outcome = launch::stop(&runtime, timeout)?;
    report_outcome(&machine, outcome, out)
}

fn kill(library: &Library, name: &str, out: &Output) -> Result<(), CtlError> {
    let machine = library.find(name)?;
    let runtime = RuntimeDir::open(&machine.id)?;
    let outcome = launch::kill(&runtime)?;
    report_outcome(&machine, outcome, out)
}

fn save(library: &Library, name: &str, out: &Output) -> Result<(), CtlError> {
    let machine = library.find(name)?;
    let runtime = RuntimeDir::open(&machine.id)?;
    if launch::status(&runtime, STATUS_TIMEOUT)? == HelperStatus::NotRunning {
        return Err(CtlError::NotRunning(machine.name().to_string()));
    }
    // Progress on a terminal only, one line rewritten as the RAM goes out.
    let show = !out.is_json() && io::stderr().is_terminal();
    let mut shown = None;
    let report = launch::save(&runtime, |done, total| {
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        if show && shown != Some(percent) {
            shown = Some(percent);
            eprint!("\rSaving {}: {percent}%", machine.name());
        }
    })?;
    if shown.is_some() {
        eprintln!();
    }
    out.emit(
        &format!(
            "{} is saved ({}, {} ms); `hospesctl start {}` resumes it",
            machine.name(),
            human_bytes(report.bytes),
            report.ms,
            machine.name()
        ),
        &json!({ "id": machine.id, "name": machine.name(), "state": "saved",
                 "file": report.file, "bytes": report.bytes, "ms": report.ms }),
    )
}

fn discard(library: &Library, name: &str, out: &Output) -> Result<(), CtlError> {
    let machine = library.find(name)?;
    let runtime = RuntimeDir::open(&machine.id)?;
    if let HelperStatus::Running { pid, .. } | HelperStatus::NotAnswering(pid) =
        launch::status(&runtime, STATUS_TIMEOUT)?
    {
        return Err(CtlError::Launch(LaunchError::AlreadyRunning(pid)));
    }
    let had = saved_state::discard(&machine.dir).map_err(|source| CtlError::SavedState {
        path: saved_state::path_in(&machine.dir),
        source,
    })?;
    let text = match had {
        true => format!(
            "{}: saved state discarded; the next start boots afresh",
            machine.name()
        ),
        false => format!("{} has no saved state", machine.name()),
    };
    out.emit(
        &text,
        &json!({ "id": machine.id, "name": machine.name(), "discarded": had }),
    )
}

/// 36911 -> "36.0 KiB".
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn report_outcome(machine: &Machine, outcome: StopOutcome, out: &Output) -> Result<(), CtlError> {
    let (text, word) = match outcome {
        StopOutcome::NotRunning => ("was not running", "not_running"),
        StopOutcome::PoweredOff => ("shut down", "powered_off"),
        StopOutcome::Killed => ("was forced off", "killed"),
    };
    out.emit(
        &format!("{} {text}", machine.name()),
        &json!({ "id": machine.id, "name": machine.name(), "outcome": word }),
    )
}

fn attach_console(library: &Library, name: &str, out: &Output) -> Result<(), CtlError> {
    let machine = library.find(name)?;
    let runtime = RuntimeDir::open(&machine.id)?;
    match launch::status(&runtime, STATUS_TIMEOUT)? {
        HelperStatus::NotRunning => Err(CtlError::NotRunning(machine.name().to_string())),
        _ => attach(&runtime, machine.name(), out),
    }
}

fn attach(runtime: &RuntimeDir, name: &str, out: &Output) -> Result<(), CtlError> {
    out.note(&format!(
        "Connected to {name}'s serial console; Ctrl-] detaches."
    ));
    let exit = console::attach(&runtime.serial_socket()).map_err(CtlError::Console)?;
    match exit {
        ConsoleExit::Escape => out.note("\nDetached; the VM keeps running."),
        ConsoleExit::RemoteClosed => out.note("\nThe VM closed its console (it stopped)."),
        ConsoleExit::InputClosed => {}
    }
    Ok(())
}

/// A VM's state as a word for JSON and a phrase for people.
fn state_words(status: HelperStatus) -> (&'static str, String) {
    match status {
        HelperStatus::NotRunning => ("stopped", "stopped".into()),
        HelperStatus::NotAnswering(pid) => ("not_answering", format!("not answering (pid {pid})")),
        HelperStatus::Running { pid, state } => {
            let word = match state {
                RunState::Prelaunch => "starting",
                RunState::Running => "running",
                RunState::Paused => "paused",
                RunState::Shutdown => "shut_down",
                RunState::Suspended => "suspended",
                RunState::InternalError | RunState::GuestPanicked => "failed",
                RunState::Unknown => "unknown",
            };
            (word, format!("{word} (pid {pid})"))
        }
    }
}

fn status_json(machine: &Machine, status: HelperStatus) -> Value {
    let pid = match status {
        HelperStatus::NotRunning => None,
        HelperStatus::NotAnswering(pid) | HelperStatus::Running { pid, .. } => Some(pid.0),
    };
    json!({ "id": machine.id, "name": machine.name(), "state": state_words(status).0, "pid": pid })
}

fn status_one(library: &Library, name: &str, out: &Output) -> Result<(), CtlError> {
    let machine = library.find(name)?;
    let status = launch::status(&RuntimeDir::open(&machine.id)?, STATUS_TIMEOUT)?;
    if status == HelperStatus::NotRunning
        && let Some(saved) = saved_state::find(&machine.dir)
    {
        let (text, value) = match saved {
            Ok(meta) => (
                format!(
                    "{}: saved (by Hospes {}); `hospesctl start` resumes it",
                    machine.name(),
                    meta.hospes_version
                ),
                json!({ "saved_at": meta.saved_at, "hospes_version": meta.hospes_version }),
            ),
            Err(e) => (
                format!(
                    "{}: stopped, with a saved state that cannot be resumed: {}",
                    machine.name(),
                    hospes_core::error_chain(&e)
                ),
                json!({ "error": hospes_core::error_chain(&e) }),
            ),
        };
        let mut row = status_json(&machine, status);
        row["state"] = json!("saved");
        row["saved"] = value;
        return out.emit(&text, &row);
    }
    out.emit(
        &format!("{}: {}", machine.name(), state_words(status).1),
        &status_json(&machine, status),
    )
}

fn status_all(library: &Library, out: &Output) -> Result<(), CtlError> {
    let mut rows = Vec::new();
    let mut text = String::new();
    for running in runtime::list_running()? {
        let Ok(machine) = library.find(running.dir.id()) else {
            continue;
        };
        let status = launch::status(&running.dir, STATUS_TIMEOUT)
            .unwrap_or(HelperStatus::NotAnswering(running.pid));
        text.push_str(&format!("{}: {}\n", machine.name(), state_words(status).1));
        rows.push(status_json(&machine, status));
    }
    if rows.is_empty() {
        text.push_str("No VM is running.\n");
    }
    out.emit(&text, &Value::Array(rows))
}
