//! Starting and stopping helper processes (`hospes-vmm`, one per running VM).
//!
//! [`spawn_helper`] starts the helper detached in its own session (so closing the app or
//! the terminal never takes the VM down) with stdin from `/dev/null` and stdout/stderr
//! appended to `helper.log`, writes the pid file and waits until the QMP socket answers.
//! The helper is started with `argv[0]` = `hospes-vmm: <vm name>`, which is what `ps`
//! and `top -c` show: Rust cannot safely grow its own argv memory later, so the name is
//! given at exec time instead. [`set_process_title`] sets the 15-byte kernel name
//! (`comm`, shown by `top` and `ps -o comm`) from inside the helper.
//!
//! [`stop`] presses the power button and waits, then kills; [`kill`] kills at once.
//! Both leave `helper.log` in place for the app to show.

use std::ffi::{CString, OsString};
use std::fs::OpenOptions;
use std::io;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::control::RunState;
use crate::control::client::{ClientError, QmpClient};
use crate::runtime::{Liveness, Pid, RuntimeDir, RuntimeError, is_helper_alive};

/// How many lines of `helper.log` an error carries.
const LOG_TAIL_LINES: usize = 20;
/// Pause between checks while waiting for a helper.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A helper already runs for this VM.
    #[error("the VM is already running (pid {0})")]
    AlreadyRunning(Pid),
    /// The runtime directory is unusable.
    #[error("runtime directory")]
    Runtime(#[from] RuntimeError),
    /// `helper.log` could not be opened.
    #[error("cannot open {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The helper binary could not be executed.
    #[error("cannot run {helper}")]
    Spawn {
        /// The helper binary.
        helper: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The helper exited before its QMP socket answered.
    #[error("the VM helper exited ({status}) while starting; last lines of its log:\n{log}")]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// The end of `helper.log`.
        log: String,
    },
    /// The QMP socket did not answer in time; the helper was killed.
    #[error("the VM helper did not answer within {timeout:?}; last lines of its log:\n{log}")]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// The end of `helper.log`.
        log: String,
    },
    /// Talking to the helper over QMP failed.
    #[error("QMP")]
    Qmp(#[from] ClientError),
    /// Sending a signal failed.
    #[error("cannot signal process {pid}")]
    Signal {
        /// The process.
        pid: Pid,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What to start.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The `hospes-vmm` binary.
    pub helper: PathBuf,
    /// The VM's display name (process title and `--name`).
    pub vm_name: String,
    /// The VM's `vm.ron`.
    pub config: PathBuf,
    /// More arguments for the helper (e.g. `--vnc unix:PATH`).
    pub extra_args: Vec<OsString>,
    /// How long to wait for the QMP socket.
    pub ready_timeout: Duration,
}

impl LaunchSpec {
    /// A spec with no extra arguments and a 10 s ready timeout.
    pub fn new(helper: impl Into<PathBuf>, vm_name: &str, config: impl Into<PathBuf>) -> Self {
        Self {
            helper: helper.into(),
            vm_name: vm_name.to_string(),
            config: config.into(),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(10),
        }
    }
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// No helper was running.
    NotRunning,
    /// The helper exited after the power button (or by itself).
    PoweredOff,
    /// The helper was killed.
    Killed,
}

/// What `hospesctl status` and the app show for a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelperStatus {
    /// No helper runs.
    NotRunning,
    /// A helper process lives but does not answer on QMP (starting, or hung).
    NotAnswering(Pid),
    /// A helper answers; the VM is in `state`.
    Running {
        /// The helper's process id.
        pid: Pid,
        /// The VM's run state, from `query-status`.
        state: RunState,
    },
}

/// Asks the VM's helper for its state, waiting at most `timeout` for an answer.
pub fn status(runtime: &RuntimeDir, timeout: Duration) -> Result<HelperStatus, LaunchError> {
    match runtime.probe() {
        Liveness::Stale => Ok(HelperStatus::NotRunning),
        Liveness::NotAnswering(pid) => Ok(HelperStatus::NotAnswering(pid)),
        Liveness::Running(pid) => {
            let mut client = QmpClient::connect_with_timeout(&runtime.qmp_socket(), timeout)?;
            let state = client.query_status()?.status;
            Ok(HelperStatus::Running { pid, state })
        }
    }
}

/// Starts the helper for the VM whose runtime directory is `runtime`, and waits until
/// its QMP socket answers. Returns the helper's pid.
///
/// Command line: `<argv0 "hospes-vmm: NAME"> --config FILE --qmp unix:RT/qmp.sock
/// --serial unix:RT/serial.sock --name NAME [extra args]`.
pub fn spawn_helper(spec: &LaunchSpec, runtime: &RuntimeDir) -> Result<Pid, LaunchError> {
    if let Liveness::Running(pid) | Liveness::NotAnswering(pid) = runtime.probe() {
        return Err(LaunchError::AlreadyRunning(pid));
    }
    runtime.clear_runtime_files()?;
    let log_path = runtime.log_file();
    let log_err = |source| LaunchError::Log {
        path: log_path.clone(),
        source,
    };
    let log = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(log_err)?;
    let log_for_stderr = log.try_clone().map_err(log_err)?;

    let mut command = Command::new(&spec.helper);
    command
        .arg0(format!("hospes-vmm: {}", spec.vm_name))
        .arg("--config")
        .arg(&spec.config)
        .arg("--qmp")
        .arg(unix_endpoint(&runtime.qmp_socket()))
        .arg("--serial")
        .arg(unix_endpoint(&runtime.serial_socket()))
        .arg("--name")
        .arg(&spec.vm_name)
        .args(&spec.extra_args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr);
    // SAFETY: the closure runs in the child between fork and exec, and only calls
    // setsid(2), which is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
        helper: spec.helper.clone(),
        source,
    })?;
    let pid = Pid(child.id() as i32);
    if let Err(e) = runtime.write_pid(pid) {
        kill_child(&mut child);
        return Err(e.into());
    }
    match wait_ready(&mut child, runtime, spec.ready_timeout) {
        Ok(()) => {
            reap_in_background(child, runtime.log_file());
            Ok(pid)
        }
        Err(e) => {
            kill_child(&mut child);
            let _ = runtime.clear_runtime_files();
            Err(e)
        }
    }
}

/// `unix:PATH` for a socket path.
fn unix_endpoint(path: &Path) -> OsString {
    let mut arg = OsString::from("unix:");
    arg.push(path);
    arg
}

/// Waits until the QMP socket answers with a greeting, the child exits, or `timeout`.
fn wait_ready(
    child: &mut Child,
    runtime: &RuntimeDir,
    timeout: Duration,
) -> Result<(), LaunchError> {
    let deadline = Instant::now() + timeout;
    let socket = runtime.qmp_socket();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LaunchError::Exited {
                status,
                log: runtime.log_tail(LOG_TAIL_LINES),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LaunchError::NotReady {
                timeout,
                log: runtime.log_tail(LOG_TAIL_LINES),
            });
        }
        if socket.exists() && QmpClient::connect_with_timeout(&socket, left).is_ok() {
            return Ok(());
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for the detached child on a thread of its own so it never lingers as a zombie
/// while this process (e.g. the app) keeps running. A helper that did not end on its own
/// terms (killed by a signal, or a failure status) gets a last line in its log saying so:
/// it could not write one itself, and whoever shows the log must not take it for a clean
/// power-off.
fn reap_in_background(mut child: Child, log: PathBuf) {
    let spawned = thread::Builder::new()
        .name("helper-reaper".into())
        .spawn(move || {
            let Ok(status) = child.wait() else { return };
            let line = match (status.signal(), status.code()) {
                (Some(signal), _) => format!("error: the VM helper was killed by signal {signal}"),
                (None, Some(code)) if code != 0 => {
                    format!("error: the VM helper exited with status {code}")
                }
                _ => return,
            };
            let appended = OpenOptions::new()
                .append(true)
                .open(&log)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = appended {
                log::warn!("cannot note the helper's end in {}: {e}", log.display());
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start a thread to reap the VM helper: {e}");
    }
}

/// Stops the VM: resumes it if paused (a paused guest cannot see the button), presses
/// the ACPI power button over QMP, waits up to `timeout` for the helper to exit, then
/// kills it. Clears the runtime files (not the log).
pub fn stop(runtime: &RuntimeDir, timeout: Duration) -> Result<StopOutcome, LaunchError> {
    let Some(pid) = live_helper(runtime)? else {
        runtime.clear_runtime_files()?;
        return Ok(StopOutcome::NotRunning);
    };
    let pressed = QmpClient::connect_with_timeout(&runtime.qmp_socket(), timeout)
        .and_then(|mut client| press_power_button(&mut client));
    if let Err(e) = pressed {
        log::warn!("power button not pressed, killing the VM: {e}");
    } else if wait_exit(pid, timeout) {
        runtime.clear_runtime_files()?;
        return Ok(StopOutcome::PoweredOff);
    }
    kill(runtime)
}

/// Saves the VM to its saved-state file (`hospes-save`) and waits until the helper has
/// exited; `progress` gets (bytes of RAM written, bytes to write). The next start resumes
/// it. Returns the helper's report; a VM that cannot be saved (a device without saved
/// state, no file to write) gets the helper's reason and keeps running.
pub fn save(
    runtime: &RuntimeDir,
    progress: impl FnMut(u64, u64),
) -> Result<crate::control::client::SaveReport, LaunchError> {
    let Some(pid) = live_helper(runtime)? else {
        return Err(LaunchError::Qmp(ClientError::Closed));
    };
    let mut client = QmpClient::connect_with_timeout(&runtime.qmp_socket(), SAVE_QUIET)?;
    let report = client.save(SAVE_QUIET, progress)?;
    if !wait_exit(pid, SAVE_QUIET) {
        log::warn!("the helper did not exit after saving; killing it");
        kill(runtime)?;
    }
    runtime.clear_runtime_files()?;
    Ok(report)
}

/// How long a save may stay silent before its caller gives up.
const SAVE_QUIET: Duration = Duration::from_secs(30);

fn press_power_button(client: &mut QmpClient) -> Result<(), ClientError> {
    if client.query_status()?.status == RunState::Paused {
        client.cont()?;
    }
    client.system_powerdown()
}

/// Kills the helper with SIGKILL at once and clears the runtime files (not the log).
pub fn kill(runtime: &RuntimeDir) -> Result<StopOutcome, LaunchError> {
    let Some(pid) = live_helper(runtime)? else {
        runtime.clear_runtime_files()?;
        return Ok(StopOutcome::NotRunning);
    };
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` was just checked to be a
    // live hospes-vmm process of ours.
    if unsafe { libc::kill(pid.0, libc::SIGKILL) } != 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() != Some(libc::ESRCH) {
            return Err(LaunchError::Signal { pid, source });
        }
    }
    wait_exit(pid, Duration::from_secs(5));
    runtime.clear_runtime_files()?;
    Ok(StopOutcome::Killed)
}

/// The helper's pid if the pid file names a live helper.
fn live_helper(runtime: &RuntimeDir) -> Result<Option<Pid>, LaunchError> {
    Ok(runtime.read_pid()?.filter(|&pid| is_helper_alive(pid)))
}

/// Waits until `pid` is gone (or a zombie); returns false on timeout.
fn wait_exit(pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_helper_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
    true
}

/// Sets the calling thread's kernel name (`comm`, at most 15 bytes, shown by `top` and
/// `ps -o comm`) to `name`, cut at a character boundary. Call it early in the helper's
/// `main`, before other threads start, so they inherit it.
pub fn set_process_title(name: &str) -> io::Result<()> {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let title = CString::new(&name[..end]).map_err(io::Error::other)?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the
    // pointer, which `title` provides and keeps alive across the call.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, title.as_ptr() as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_title_is_cut_to_fifteen_bytes_at_a_char_boundary() {
        let handle = thread::spawn(|| {
            set_process_title("hospes: Débian-12-desktop").unwrap();
            std::fs::read_to_string("/proc/thread-self/comm").unwrap()
        });
        assert_eq!(handle.join().unwrap().trim_end(), "hospes: Débian");
    }

    #[test]
    fn reports_the_log_when_the_helper_exits_early() {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = RuntimeDir::create_in(tmp.path(), "vm").unwrap();
        let mut spec = LaunchSpec::new("unused", "early", "/nonexistent/vm.ron");
        let script = tmp.path().join("helper.sh");
        std::fs::write(&script, "#!/bin/sh\necho \"boom: $*\" >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        spec.helper = script;
        let err = spawn_helper(&spec, &runtime).unwrap_err();
        let LaunchError::Exited { status, log } = err else {
            panic!("{err}")
        };
        assert_eq!(status.code(), Some(3));
        assert!(
            log.contains("boom: --config /nonexistent/vm.ron --qmp unix:"),
            "{log}"
        );
        assert_eq!(runtime.read_pid().unwrap(), None, "pid file removed");
    }
}
