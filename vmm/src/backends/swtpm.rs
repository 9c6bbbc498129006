//! swtpm, the TPM 2.0 emulator behind the guest's TPM (`hospes_devices::tpm`): one
//! process per VM, for the whole run, keeping the TPM's state in the VM's folder.
//!
//! Data flow: [`Swtpm::start`] starts a watcher thread, which runs `swtpm socket --tpm2
//! --tpmstate dir=<state> --ctrl type=unixio,clientfd=N` with N one end of a socket pair
//! (the control channel: no socket file anywhere), and waits for it. The helper then
//! checks swtpm's capabilities on the control channel, makes a second socket pair for the
//! TPM commands and hands swtpm one end with CMD_SET_DATAFD (SCM_RIGHTS). Control
//! messages are a big-endian command number and its fields, answered by a big-endian
//! result (0: success) and the answer's fields (`swtpm`'s `tpm_ioctl.h`). Every boot
//! calls [`Swtpm::reset`] (CMD_STOP, CMD_SET_BUFFERSIZE to the CRB buffer, CMD_INIT): the
//! TPM starts as after a power cycle and waits for the firmware's TPM2_Startup. TPM
//! commands go through [`SwtpmChannel`], the device's [`TpmBackend`]: the command written
//! whole, the response read by its header's size.
//!
//! Supervision: swtpm's stderr becomes `swtpm: ...` log lines; it gets SIGTERM when the
//! watcher thread (alive as long as [`Swtpm`]) ends (parent-death signal), and dropping
//! [`Swtpm`] stops it (SIGTERM, on which swtpm saves its state, then SIGKILL if it
//! lingers). If swtpm dies while the VM runs, the watcher logs it once (also when the
//! death is only found as the VM ends) and marks the channel dead: from then on every
//! command fails at once and the guest's TPM answers TPM_RC_FAILURE; the VM runs on.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::child::inherit_fd_and_die_with_thread;
use hospes_core::control::fdpass::send_with_fd;
use hospes_devices::bus::lock;
use hospes_devices::tpm::crb::SharedBackend;
use hospes_devices::tpm::{CRB_BUFFER_SIZE, TPM_HEADER_LEN, TpmBackend, TpmBackendError};

/// Control channel commands (`tpm_ioctl.h`, "Commands used by the non-CUSE TPMs").
const CMD_GET_CAPABILITY: u32 = 1;
const CMD_INIT: u32 = 2;
const CMD_STOP: u32 = 14;
const CMD_SET_DATAFD: u32 = 16;
const CMD_SET_BUFFERSIZE: u32 = 17;
/// Capability bits CMD_GET_CAPABILITY reports, of the commands Hospes sends.
const CAP_INIT: u64 = 1;
const CAP_STOP: u64 = 1 << 10;
const CAP_SET_DATAFD: u64 = 1 << 12;
const CAP_SET_BUFFERSIZE: u64 = 1 << 13;
const CAPS_NEEDED: u64 = CAP_INIT | CAP_STOP | CAP_SET_DATAFD | CAP_SET_BUFFERSIZE;

/// The largest response accepted from swtpm (its own largest buffer).
const MAX_RESPONSE: usize = 4096;
/// How long a TPM command may take (key generation on a slow host takes seconds).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a control command may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long swtpm may take to exit after SIGTERM before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Errors starting or driving swtpm.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    #[error("cannot run {binary} for the TPM (install the swtpm package)")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the TPM state folder {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a socket pair for swtpm")]
    SocketPair(#[source] std::io::Error),
    #[error("cannot start the swtpm watcher thread")]
    Thread(#[source] std::io::Error),
    #[error("swtpm exited at start ({0}); see its messages above")]
    EarlyExit(String),
    #[error("swtpm's control channel failed (command {command})")]
    Control {
        command: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("swtpm refused control command {command} with result {result:#x}")]
    Refused { command: u32, result: u32 },
    #[error("this swtpm lacks control commands Hospes needs (capabilities {0:#x})")]
    Capabilities(u64),
    #[error("swtpm is not running")]
    Dead,
}

/// How to run swtpm.
#[derive(Debug, Clone)]
pub struct SwtpmConfig {
    /// The program, `swtpm` from PATH by default.
    pub binary: PathBuf,
    /// Where the TPM keeps its state (created 0700 if missing).
    pub state_dir: PathBuf,
}

impl SwtpmConfig {
    /// swtpm from PATH keeping its state in `state_dir`.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            binary: PathBuf::from("swtpm"),
            state_dir,
        }
    }

    /// swtpm's arguments, the control channel on descriptor `ctrl_fd`.
    pub fn args(&self, ctrl_fd: i32) -> Vec<String> {
        vec![
            "socket".into(),
            "--tpm2".into(),
            "--tpmstate".into(),
            format!("dir={}", self.state_dir.display()),
            "--ctrl".into(),
            format!("type=unixio,clientfd={ctrl_fd}"),
        ]
    }
}

/// The two channels to swtpm: the TPM's [`TpmBackend`].
pub struct SwtpmChannel {
    ctrl: UnixStream,
    data: Option<UnixStream>,
    dead: Arc<AtomicBool>,
}

impl SwtpmChannel {
    /// Sends control command `command` with `fields`; returns the answer's fields after
    /// the result word (which must be 0).
    fn control(
        &mut self,
        command: u32,
        fields: &[u8],
        answer_len: usize,
    ) -> Result<Vec<u8>, SwtpmError> {
        let mut msg = command.to_be_bytes().to_vec();
        msg.extend_from_slice(fields);
        let io = |source| SwtpmError::Control { command, source };
        self.ctrl.write_all(&msg).map_err(io)?;
        self.read_answer(command, answer_len)
    }

    fn read_answer(&mut self, command: u32, answer_len: usize) -> Result<Vec<u8>, SwtpmError> {
        let io = |source| SwtpmError::Control { command, source };
        let mut answer = vec![0u8; 4 + answer_len];
        self.ctrl.read_exact(&mut answer).map_err(io)?;
        let result = u32::from_be_bytes([answer[0], answer[1], answer[2], answer[3]]);
        if result != 0 {
            return Err(SwtpmError::Refused { command, result });
        }
        Ok(answer.split_off(4))
    }

    /// CMD_GET_CAPABILITY: its answer is the 64-bit capability mask alone.
    fn capabilities(&mut self) -> Result<u64, SwtpmError> {
        let command = CMD_GET_CAPABILITY;
        let io = |source| SwtpmError::Control { command, source };
        self.ctrl.write_all(&command.to_be_bytes()).map_err(io)?;
        let mut caps = [0u8; 8];
        self.ctrl.read_exact(&mut caps).map_err(io)?;
        Ok(u64::from_be_bytes(caps))
    }

    /// Makes the TPM command channel and hands swtpm its end (CMD_SET_DATAFD).
    fn connect_data(&mut self) -> Result<(), SwtpmError> {
        let (ours, theirs) = UnixStream::pair().map_err(SwtpmError::SocketPair)?;
        let command = CMD_SET_DATAFD;
        send_with_fd(&self.ctrl, &command.to_be_bytes(), theirs.as_fd())
            .map_err(|source| SwtpmError::Control { command, source })?;
        self.read_answer(command, 0)?;
        ours.set_read_timeout(Some(COMMAND_TIMEOUT))
            .map_err(SwtpmError::SocketPair)?;
        self.data = Some(ours);
        Ok(())
    }

    /// A TPM reset: the TPM stops, takes the CRB buffer's size as its own and starts
    /// afresh, waiting for TPM2_Startup.
    fn reset(&mut self) -> Result<(), SwtpmError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(SwtpmError::Dead);
        }
        self.control(CMD_STOP, &[], 0)?;
        let size = (CRB_BUFFER_SIZE as u32).to_be_bytes();
        self.control(CMD_SET_BUFFERSIZE, &size, 12)?;
        self.control(CMD_INIT, &0u32.to_be_bytes(), 0)?;
        Ok(())
    }
}

impl TpmBackend for SwtpmChannel {
    fn execute(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmBackendError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(TpmBackendError::Dead);
        }
        let data = self.data.as_mut().ok_or(TpmBackendError::Dead)?;
        data.write_all(command).map_err(TpmBackendError::Io)?;
        let mut response = vec![0u8; TPM_HEADER_LEN];
        data.read_exact(&mut response)
            .map_err(TpmBackendError::Io)?;
        let size = hospes_devices::tpm::header_size(&response).unwrap_or(0);
        if !(TPM_HEADER_LEN..=MAX_RESPONSE).contains(&size) {
            // The stream cannot be trusted to be at a message boundary any more.
            self.data = None;
            return Err(TpmBackendError::BadResponse(format!("size field {size}")));
        }
        response.resize(size, 0);
        data.read_exact(&mut response[TPM_HEADER_LEN..])
            .map_err(TpmBackendError::Io)?;
        Ok(response)
    }
}

/// A running swtpm; dropping it shuts swtpm down.
pub struct Swtpm {
    channel: Arc<Mutex<SwtpmChannel>>,
    dead: Arc<AtomicBool>,
    pid: u32,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Swtpm {
    /// Starts swtpm on `config.state_dir` and connects its command channel.
    pub fn start(config: SwtpmConfig) -> Result<Self, SwtpmError> {
        make_private_dir(&config.state_dir)?;
        let (ctrl, theirs) = UnixStream::pair().map_err(SwtpmError::SocketPair)?;
        ctrl.set_read_timeout(Some(CONTROL_TIMEOUT))
            .map_err(SwtpmError::SocketPair)?;
        let dead = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = channel();
        let (started_tx, started_rx) = channel();
        let watcher = Watcher {
            config,
            dead: dead.clone(),
            stop: stop_rx,
        };
        let thread = std::thread::Builder::new()
            .name("swtpm".into())
            .spawn(move || watcher.run(OwnedFd::from(theirs), &started_tx))
            .map_err(SwtpmError::Thread)?;
        let mut me = Self {
            channel: Arc::new(Mutex::new(SwtpmChannel {
                ctrl,
                data: None,
                dead: dead.clone(),
            })),
            dead,
            pid: 0,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        me.pid = match started_rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(SwtpmError::EarlyExit("watcher ended".into())),
        };
        me.connect()?;
        log::info!("tpm: swtpm running as pid {}", me.pid);
        Ok(me)
    }

    fn connect(&self) -> Result<(), SwtpmError> {
        let mut ch = lock(&self.channel);
        let caps = ch.capabilities()?;
        if caps & CAPS_NEEDED != CAPS_NEEDED {
            return Err(SwtpmError::Capabilities(caps));
        }
        ch.connect_data()
    }

    /// The guest TPM's backend.
    pub fn backend(&self) -> SharedBackend {
        self.channel.clone()
    }

    /// Resets the TPM, as the platform reset of every boot does (waits for a command in
    /// progress to finish first).
    pub fn reset(&self) -> Result<(), SwtpmError> {
        lock(&self.channel).reset()
    }

    /// swtpm's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether swtpm has died.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // The watcher ends swtpm (SIGTERM: it saves its state and exits) and reaps it.
        self.stop.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("swtpm watcher panicked");
        }
    }
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
pub fn make_private_dir(dir: &std::path::Path) -> Result<(), SwtpmError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SwtpmError::StateDir {
            path: dir.to_path_buf(),
            source,
        })
}

struct Watcher {
    config: SwtpmConfig,
    dead: Arc<AtomicBool>,
    stop: Receiver<()>,
}

impl Watcher {
    fn run(self, ctrl: OwnedFd, started: &Sender<Result<u32, SwtpmError>>) {
        let child = match self.spawn(ctrl) {
            Ok(c) => c,
            Err(e) => {
                self.dead.store(true, Ordering::Relaxed);
                let _ = started.send(Err(e));
                return;
            }
        };
        let _ = started.send(Ok(child.id()));
        self.watch(child);
    }

    fn spawn(&self, ctrl: OwnedFd) -> Result<Child, SwtpmError> {
        let fd = ctrl.as_raw_fd();
        let mut cmd = Command::new(&self.config.binary);
        cmd.args(self.config.args(fd))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // swtpm inherits its end of the control channel and ends with this thread (the
        // watcher, alive as long as the VM).
        inherit_fd_and_die_with_thread(&mut cmd, fd);
        let mut child = cmd.spawn().map_err(|source| SwtpmError::Spawn {
            binary: self.config.binary.display().to_string(),
            source,
        })?;
        drop(ctrl);
        if let Some(err) = child.stderr.take() {
            forward_messages(err);
        }
        Ok(child)
    }

    /// Waits until swtpm exits (logged once, the channel marked dead) or the owner stops
    /// it.
    fn watch(&self, mut child: Child) {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.died(&child, status);
                    // The owner may still be waiting to stop us.
                    let _ = self.stop.recv();
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    log::error!("tpm: cannot wait for swtpm: {e}");
                    self.dead.store(true, Ordering::Relaxed);
                    return;
                }
            }
            if let Err(RecvTimeoutError::Timeout) =
                self.stop.recv_timeout(Duration::from_millis(50))
            {
                continue;
            }
            // Told to stop. Exited already: nothing asked it to, so it died.
            if let Ok(Some(status)) = child.try_wait() {
                self.died(&child, status);
                return;
            }
            self.dead.store(true, Ordering::Relaxed);
            self.terminate(&mut child);
            return;
        }
    }

    fn died(&self, child: &Child, status: std::process::ExitStatus) {
        self.dead.store(true, Ordering::Relaxed);
        log::error!(
            "tpm: swtpm (pid {}) exited ({status}); the guest's TPM fails every command \
             from now on, the VM runs on",
            child.id()
        );
    }

    /// SIGTERM, a moment to save the state and exit, then SIGKILL.
    fn terminate(&self, child: &mut Child) {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child, not reaped yet (so the pid is still its).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Logs swtpm's messages.
fn forward_messages(stderr: std::process::ChildStderr) {
    let spawned = std::thread::Builder::new()
        .name("swtpm-log".into())
        .spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log::warn!("swtpm: {line}");
            }
        });
    if let Err(e) = spawned {
        log::warn!("tpm: swtpm's messages are not logged: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hospes_devices::tpm::{TPM_RC_SUCCESS, header_size};

    fn code(r: &[u8]) -> u32 {
        u32::from_be_bytes(r[6..10].try_into().unwrap())
    }

    const STARTUP_CLEAR: [u8; 12] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x44, 0, 0];
    const GET_RANDOM_16: [u8; 12] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0, 0x10];

    #[test]
    fn a_missing_binary_is_an_error_naming_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = Swtpm::start(SwtpmConfig {
            binary: "/nonexistent/swtpm".into(),
            state_dir: dir.path().join("tpm"),
        })
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("install the swtpm package"),
            "{err}"
        );
    }

    /// Needs swtpm (installed by the test command: fails without it).
    #[test]
    fn swtpm_answers_startup_and_get_random_and_a_reset_needs_startup_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("tpm");
        let tpm = Swtpm::start(SwtpmConfig::new(state.clone())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        tpm.reset().unwrap();
        let backend = tpm.backend();
        let mut b = lock(&backend);
        assert_eq!(code(&b.execute(&STARTUP_CLEAR).unwrap()), TPM_RC_SUCCESS);
        let r = b.execute(&GET_RANDOM_16).unwrap();
        assert_eq!(code(&r), TPM_RC_SUCCESS);
        assert_eq!(header_size(&r), Some(r.len()));
        assert_eq!(r.len(), 10 + 2 + 16);
        drop(b);
        tpm.reset().unwrap();
        let r = lock(&backend).execute(&GET_RANDOM_16).unwrap();
        assert_eq!(code(&r), 0x100, "TPM_RC_INITIALIZE: Startup is due again");
        drop(tpm);
        assert!(
            std::fs::read_dir(&state).unwrap().count() > 0,
            "swtpm kept its state"
        );
    }

    #[test]
    fn a_killed_swtpm_makes_every_command_fail_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let tpm = Swtpm::start(SwtpmConfig::new(dir.path().join("tpm"))).unwrap();
        tpm.reset().unwrap();
        let backend = tpm.backend();
        // SAFETY: kill(2) on the pid of our own live child.
        assert_eq!(unsafe { libc::kill(tpm.pid() as i32, libc::SIGKILL) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tpm.is_dead() {
            assert!(Instant::now() < deadline, "the death was not noticed");
            std::thread::sleep(Duration::from_millis(10));
        }
        for _ in 0..2 {
            assert!(lock(&backend).execute(&GET_RANDOM_16).is_err());
        }
        assert!(matches!(tpm.reset(), Err(SwtpmError::Dead)));
    }
}
