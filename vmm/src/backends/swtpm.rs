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
//! Saved state ([`TpmStateBackend`] on the channel): CMD_GET_STATEBLOB hands out the
//! permanent, volatile and savestate blobs while the TPM runs (the answer's header
//! carries the length still to come, the data follows it on the channel, in as many
//! requests as it takes); on resume CMD_STOP, CMD_SET_STATEBLOB for each blob (only a
//! stopped TPM takes them), then CMD_SET_BUFFERSIZE and CMD_INIT without
//! INIT_FLAG_DELETE_VOLATILE: the TPM goes on with the PCRs, sessions and objects it had.
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
use hospes_devices::tpm::state::{BackendStateError, TpmBlob, TpmBlobs, TpmStateBackend};
use hospes_devices::tpm::{CRB_BUFFER_SIZE, TPM_HEADER_LEN, TpmBackend, TpmBackendError};

/// Control channel commands (`tpm_ioctl.h`, "Commands used by the non-CUSE TPMs").
const CMD_GET_CAPABILITY: u32 = 1;
const CMD_INIT: u32 = 2;
const CMD_GET_STATEBLOB: u32 = 12;
const CMD_SET_STATEBLOB: u32 = 13;
const CMD_STOP: u32 = 14;
const CMD_SET_DATAFD: u32 = 16;
const CMD_SET_BUFFERSIZE: u32 = 17;
/// Capability bits CMD_GET_CAPABILITY reports, of the commands Hospes sends.
const CAP_INIT: u64 = 1;
const CAP_GET_STATEBLOB: u64 = 1 << 8;
const CAP_SET_STATEBLOB: u64 = 1 << 9;
const CAP_STOP: u64 = 1 << 10;
const CAP_SET_DATAFD: u64 = 1 << 12;
const CAP_SET_BUFFERSIZE: u64 = 1 << 13;
const CAPS_NEEDED: u64 = CAP_INIT
    | CAP_STOP
    | CAP_SET_DATAFD
    | CAP_SET_BUFFERSIZE
    | CAP_GET_STATEBLOB
    | CAP_SET_STATEBLOB;
/// The state blobs (PTM_BLOB_TYPE_*).
const BLOB_PERMANENT: u32 = 1;
const BLOB_VOLATILE: u32 = 2;
const BLOB_SAVESTATE: u32 = 3;
/// A blob's state_flags: it is encrypted (PTM_STATE_FLAG_ENCRYPTED). Hospes never asks
/// for decrypted blobs (PTM_STATE_FLAG_DECRYPTED): they go back as they came.
const STATE_FLAG_ENCRYPTED: u32 = 2;
/// CMD_GET_STATEBLOB's answer before the data: result, state_flags, totlength, length.
const GETSTATE_HEADER_LEN: usize = 16;
/// The result with which CMD_GET_STATEBLOB says a blob does not exist.
const TPM_RETRY: u32 = 0x800;
/// The largest blob accepted (swtpm's are tens of KiB; this only bounds a bad length).
const MAX_BLOB: usize = 64 << 20;

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
    #[error("swtpm's {blob} state blob: {why}")]
    BadBlob { blob: &'static str, why: String },
}

/// The name of blob type `blob` in messages.
fn blob_name(blob: u32) -> &'static str {
    match blob {
        BLOB_PERMANENT => "permanent",
        BLOB_VOLATILE => "volatile",
        BLOB_SAVESTATE => "savestate",
        _ => "unknown",
    }
}

/// CMD_GET_STATEBLOB for blob type `blob` from byte `offset` (not decrypted).
fn get_stateblob_request(blob: u32, offset: u32) -> Vec<u8> {
    let mut msg = Vec::with_capacity(16);
    for word in [CMD_GET_STATEBLOB, 0, blob, offset] {
        msg.extend_from_slice(&word.to_be_bytes());
    }
    msg
}

/// The header of a CMD_GET_STATEBLOB answer.
#[derive(Debug, PartialEq, Eq)]
struct GetStateHeader {
    encrypted: bool,
    /// The bytes of the blob from the requested offset to its end.
    total: usize,
    /// The bytes that follow this header.
    length: usize,
}

/// Reads a CMD_GET_STATEBLOB answer's header; Err for a refusal or lengths that cannot be.
fn parse_getstate_header(
    blob: u32,
    h: &[u8; GETSTATE_HEADER_LEN],
) -> Result<GetStateHeader, SwtpmError> {
    let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let result = word(0);
    if result != 0 {
        return Err(SwtpmError::Refused {
            command: CMD_GET_STATEBLOB,
            result,
        });
    }
    let (total, length) = (word(8) as usize, word(12) as usize);
    let bad = |why: String| SwtpmError::BadBlob {
        blob: blob_name(blob),
        why,
    };
    if total > MAX_BLOB {
        return Err(bad(format!("{total} bytes is more than {MAX_BLOB}")));
    }
    if length > total {
        return Err(bad(format!("{length} bytes sent of {total} announced")));
    }
    Ok(GetStateHeader {
        encrypted: word(4) & STATE_FLAG_ENCRYPTED != 0,
        total,
        length,
    })
}

/// CMD_SET_STATEBLOB for blob type `blob`: the header and the whole blob in one message.
fn set_stateblob_request(blob: u32, state: &TpmBlob) -> Result<Vec<u8>, SwtpmError> {
    let length = u32::try_from(state.data.len())
        .ok()
        .filter(|&n| n as usize <= MAX_BLOB)
        .ok_or_else(|| SwtpmError::BadBlob {
            blob: blob_name(blob),
            why: format!("{} bytes is more than {MAX_BLOB}", state.data.len()),
        })?;
    let flags = if state.encrypted {
        STATE_FLAG_ENCRYPTED
    } else {
        0
    };
    let mut msg = Vec::with_capacity(16 + state.data.len());
    for word in [CMD_SET_STATEBLOB, flags, blob, length] {
        msg.extend_from_slice(&word.to_be_bytes());
    }
    msg.extend_from_slice(&state.data);
    Ok(msg)
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

    /// One state blob of the running TPM, read in as many requests as swtpm needs.
    fn get_blob(&mut self, blob: u32) -> Result<TpmBlob, SwtpmError> {
        let command = CMD_GET_STATEBLOB;
        let io = |source| SwtpmError::Control { command, source };
        let mut state = TpmBlob::default();
        let mut total = None;
        loop {
            let offset = u32::try_from(state.data.len()).unwrap_or(u32::MAX);
            self.ctrl
                .write_all(&get_stateblob_request(blob, offset))
                .map_err(io)?;
            let mut h = [0u8; GETSTATE_HEADER_LEN];
            self.ctrl.read_exact(&mut h).map_err(io)?;
            let header = match parse_getstate_header(blob, &h) {
                // TPM_RETRY on the first request: the TPM has no such blob (no savestate
                // without a TPM2_Shutdown(STATE)). Its answer carries no data.
                Err(SwtpmError::Refused {
                    result: TPM_RETRY, ..
                }) if total.is_none() => return Ok(state),
                other => other?,
            };
            let end = state.data.len() + header.length;
            // The first answer says how long the blob is; later ones only carry more of it.
            let total = *total.get_or_insert(header.total);
            if end > total {
                return Err(SwtpmError::BadBlob {
                    blob: blob_name(blob),
                    why: format!("{end} bytes sent of {total} announced"),
                });
            }
            state.encrypted = header.encrypted;
            state.data.resize(end, 0);
            let at = end - header.length;
            self.ctrl.read_exact(&mut state.data[at..]).map_err(io)?;
            if end == total {
                return Ok(state);
            }
            if header.length == 0 {
                return Err(SwtpmError::BadBlob {
                    blob: blob_name(blob),
                    why: format!("it ended after {end} of {total} bytes"),
                });
            }
        }
    }

    /// The TPM's blobs, taken while it runs no command (the caller holds the channel).
    fn save_blobs(&mut self) -> Result<TpmBlobs, SwtpmError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(SwtpmError::Dead);
        }
        Ok(TpmBlobs {
            permanent: self.get_blob(BLOB_PERMANENT)?,
            volatile: self.get_blob(BLOB_VOLATILE)?,
            savestate: self.get_blob(BLOB_SAVESTATE)?,
        })
    }

    /// Stops the TPM, hands it `blobs` (an empty one is left out: the TPM had none) and
    /// starts it again on them with its volatile state.
    fn restore_blobs(&mut self, blobs: &TpmBlobs) -> Result<(), SwtpmError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(SwtpmError::Dead);
        }
        self.control(CMD_STOP, &[], 0)?;
        for (blob, state) in [
            (BLOB_PERMANENT, &blobs.permanent),
            (BLOB_VOLATILE, &blobs.volatile),
            (BLOB_SAVESTATE, &blobs.savestate),
        ] {
            if state.data.is_empty() {
                continue;
            }
            let command = CMD_SET_STATEBLOB;
            let msg = set_stateblob_request(blob, state)?;
            self.ctrl
                .write_all(&msg)
                .map_err(|source| SwtpmError::Control { command, source })?;
            self.read_answer(command, 0).map_err(|e| match e {
                SwtpmError::Refused { result, .. } => SwtpmError::BadBlob {
                    blob: blob_name(blob),
                    why: format!("refused with result {result:#x}"),
                },
                other => other,
            })?;
        }
        let size = (CRB_BUFFER_SIZE as u32).to_be_bytes();
        self.control(CMD_SET_BUFFERSIZE, &size, 12)?;
        // init_flags 0: the volatile state just set is kept (no DELETE_VOLATILE).
        self.control(CMD_INIT, &0u32.to_be_bytes(), 0)?;
        Ok(())
    }
}

/// The channel as the TPM's saved state sees it (holding it keeps TPM commands out).
struct SwtpmState(Arc<Mutex<SwtpmChannel>>);

impl TpmStateBackend for SwtpmState {
    fn save_blobs(&self) -> Result<TpmBlobs, BackendStateError> {
        Ok(lock(&self.0).save_blobs()?)
    }

    fn restore_blobs(&self, blobs: &TpmBlobs) -> Result<(), BackendStateError> {
        Ok(lock(&self.0).restore_blobs(blobs)?)
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

    /// The TPM's state blobs, for a save and a resume.
    pub fn state_backend(&self) -> Arc<dyn TpmStateBackend> {
        Arc::new(SwtpmState(self.channel.clone()))
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

    /// TPM2_PCR_Extend(PCR 16, password session, one SHA-256 digest of 0x5a bytes).
    fn pcr16_extend() -> Vec<u8> {
        let mut c = vec![0x80, 0x02, 0, 0, 0, 65, 0, 0, 0x01, 0x82, 0, 0, 0, 16];
        c.extend_from_slice(&[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0]);
        c.extend_from_slice(&[0, 0, 0, 1, 0, 0x0b]);
        c.extend_from_slice(&[0x5a; 32]);
        c
    }
    /// TPM2_PCR_Read of PCR 16 in the SHA-256 bank.
    const PCR16_READ: [u8; 20] = [
        0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, 0, 0, 0, 1, 0, 0x0b, 3, 0, 0, 1,
    ];

    /// PCR 16's SHA-256 value, or the response code when the read fails.
    fn pcr16(backend: &SharedBackend) -> Result<Vec<u8>, u32> {
        let r = lock(backend).execute(&PCR16_READ).unwrap();
        match code(&r) {
            TPM_RC_SUCCESS => Ok(r[30..62].to_vec()),
            rc => Err(rc),
        }
    }

    /// A running, started swtpm on a new state folder in `dir`.
    fn started(dir: &std::path::Path, name: &str) -> Swtpm {
        let tpm = Swtpm::start(SwtpmConfig::new(dir.join(name))).unwrap();
        tpm.reset().unwrap();
        let r = lock(&tpm.backend()).execute(&STARTUP_CLEAR).unwrap();
        assert_eq!(code(&r), TPM_RC_SUCCESS);
        tpm
    }

    /// Needs swtpm.
    #[test]
    fn blobs_taken_from_one_swtpm_carry_pcrs_into_a_fresh_one_without_startup() {
        let dir = tempfile::tempdir().unwrap();
        let a = started(dir.path(), "a");
        let r = lock(&a.backend()).execute(&pcr16_extend()).unwrap();
        assert_eq!(code(&r), TPM_RC_SUCCESS);
        let value = pcr16(&a.backend()).unwrap();
        assert_ne!(value, vec![0; 32], "the extend changed PCR 16");
        let blobs = a.state_backend().save_blobs().unwrap();
        assert!(!blobs.permanent.data.is_empty());
        assert!(!blobs.volatile.data.is_empty());
        // The TPM runs on after its state was taken.
        assert_eq!(pcr16(&a.backend()), Ok(value.clone()));
        drop(a);

        // A fresh swtpm in another folder, as after a plain boot: not started.
        let b = Swtpm::start(SwtpmConfig::new(dir.path().join("b"))).unwrap();
        b.reset().unwrap();
        assert_eq!(pcr16(&b.backend()), Err(0x100), "TPM_RC_INITIALIZE");
        b.state_backend().restore_blobs(&blobs).unwrap();
        assert_eq!(pcr16(&b.backend()), Ok(value));
        let again = b.state_backend().save_blobs().unwrap();
        assert_eq!(again.permanent, blobs.permanent);
    }

    /// Needs swtpm. Saved before the firmware sent TPM2_Startup (early boot): the
    /// restored TPM still waits for it.
    #[test]
    fn a_tpm_saved_before_startup_still_waits_for_startup_after_the_restore() {
        let dir = tempfile::tempdir().unwrap();
        let a = Swtpm::start(SwtpmConfig::new(dir.path().join("a"))).unwrap();
        a.reset().unwrap();
        let blobs = a.state_backend().save_blobs().unwrap();
        drop(a);
        let b = Swtpm::start(SwtpmConfig::new(dir.path().join("b"))).unwrap();
        b.reset().unwrap();
        b.state_backend().restore_blobs(&blobs).unwrap();
        assert_eq!(pcr16(&b.backend()), Err(0x100), "TPM_RC_INITIALIZE");
        let r = lock(&b.backend()).execute(&STARTUP_CLEAR).unwrap();
        assert_eq!(code(&r), TPM_RC_SUCCESS);
        assert_eq!(pcr16(&b.backend()), Ok(vec![0; 32]));
    }

    /// Needs swtpm.
    #[test]
    fn blobs_swtpm_refuses_are_an_error_naming_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let a = started(dir.path(), "a");
        let mut blobs = a.state_backend().save_blobs().unwrap();
        blobs.permanent.data = vec![0xee; 300];
        let err = a.state_backend().restore_blobs(&blobs).unwrap_err();
        let text = hospes_core::error_chain(err.as_ref());
        assert!(
            text.contains("permanent state blob") && text.contains("refused"),
            "{text}"
        );
    }

    #[test]
    fn get_stateblob_is_four_big_endian_words() {
        assert_eq!(
            get_stateblob_request(BLOB_VOLATILE, 0x0102_0304),
            [0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 2, 1, 2, 3, 4]
        );
    }

    #[test]
    fn set_stateblob_carries_flags_type_length_and_the_data() {
        let blob = TpmBlob {
            encrypted: true,
            data: vec![9, 8, 7],
        };
        assert_eq!(
            set_stateblob_request(BLOB_SAVESTATE, &blob).unwrap(),
            [0, 0, 0, 13, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3, 9, 8, 7]
        );
    }

    fn header(words: [u32; 4]) -> [u8; GETSTATE_HEADER_LEN] {
        let mut h = [0u8; GETSTATE_HEADER_LEN];
        for (i, w) in words.iter().enumerate() {
            h[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
        }
        h
    }

    #[test]
    fn getstate_headers_with_a_refusal_or_impossible_lengths_are_errors() {
        assert_eq!(
            parse_getstate_header(BLOB_PERMANENT, &header([0, 2, 100, 40])).unwrap(),
            GetStateHeader {
                encrypted: true,
                total: 100,
                length: 40
            }
        );
        assert!(matches!(
            parse_getstate_header(BLOB_PERMANENT, &header([0x9, 0, 0, 0])),
            Err(SwtpmError::Refused { result: 9, .. })
        ));
        let long = parse_getstate_header(BLOB_VOLATILE, &header([0, 0, 10, 11])).unwrap_err();
        assert!(long.to_string().contains("volatile"), "{long}");
        let huge = parse_getstate_header(BLOB_VOLATILE, &header([0, 0, u32::MAX, 0]));
        assert!(huge.is_err());
    }

    /// A channel whose other end is `serve`, run on a thread with the peer socket.
    fn fake_channel(serve: impl FnOnce(UnixStream) + Send + 'static) -> SwtpmChannel {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        std::thread::spawn(move || serve(theirs));
        SwtpmChannel {
            ctrl: ours,
            data: None,
            dead: Arc::new(AtomicBool::new(false)),
        }
    }

    fn read_words<const N: usize>(s: &mut UnixStream) -> [u32; N] {
        let mut b = vec![0u8; 4 * N];
        s.read_exact(&mut b).unwrap();
        std::array::from_fn(|i| u32::from_be_bytes(b[4 * i..4 * i + 4].try_into().unwrap()))
    }

    #[test]
    fn a_large_blob_sent_in_chunks_is_read_with_advancing_offsets() {
        let blob: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let sent = blob.clone();
        let mut ch = fake_channel(move |mut s| {
            let mut offset = 0usize;
            while offset < sent.len() {
                let [cmd, flags, kind, at] = read_words::<4>(&mut s);
                assert_eq!((cmd, flags, kind), (CMD_GET_STATEBLOB, 0, BLOB_PERMANENT));
                assert_eq!(at as usize, offset, "the offset advances by what was read");
                // As the ioctl interface does: the total, then at most 8 KiB a time.
                let n = (sent.len() - offset).min(8192);
                let words = [0, 0, sent.len() as u32, n as u32];
                s.write_all(&header(words)).unwrap();
                s.write_all(&sent[offset..offset + n]).unwrap();
                offset += n;
            }
        });
        let got = ch.get_blob(BLOB_PERMANENT).unwrap();
        assert_eq!(got.data, blob);
        assert!(!got.encrypted);
    }

    #[test]
    fn a_blob_that_stops_short_is_an_error_not_a_hang() {
        let mut ch = fake_channel(|mut s| {
            let _ = read_words::<4>(&mut s);
            s.write_all(&header([0, 0, 100, 10])).unwrap();
            s.write_all(&[1; 10]).unwrap();
            let _ = read_words::<4>(&mut s);
            s.write_all(&header([0, 0, 90, 0])).unwrap();
        });
        let err = ch.get_blob(BLOB_VOLATILE).unwrap_err().to_string();
        assert!(
            err.contains("volatile") && err.contains("10 of 100"),
            "{err}"
        );
    }

    #[test]
    fn restore_stops_sets_each_nonempty_blob_then_inits_keeping_volatile_state() {
        let (log_tx, log_rx) = channel();
        let mut ch = fake_channel(move |mut s| {
            let ok = 0u32.to_be_bytes();
            let [cmd] = read_words::<1>(&mut s);
            log_tx.send(format!("{cmd}")).unwrap();
            s.write_all(&ok).unwrap();
            for _ in 0..2 {
                let [cmd, flags, kind, len] = read_words::<4>(&mut s);
                let mut data = vec![0u8; len as usize];
                s.read_exact(&mut data).unwrap();
                log_tx
                    .send(format!("{cmd} {flags} {kind} {}", data.len()))
                    .unwrap();
                s.write_all(&ok).unwrap();
            }
            let [cmd, size] = read_words::<2>(&mut s);
            log_tx.send(format!("{cmd} {size}")).unwrap();
            s.write_all(&[0; 16]).unwrap();
            let [cmd, flags] = read_words::<2>(&mut s);
            log_tx.send(format!("{cmd} {flags}")).unwrap();
            s.write_all(&ok).unwrap();
        });
        let blobs = TpmBlobs {
            permanent: TpmBlob {
                encrypted: false,
                data: vec![1; 9000],
            },
            volatile: TpmBlob {
                encrypted: true,
                data: vec![2; 300],
            },
            savestate: TpmBlob::default(),
        };
        ch.restore_blobs(&blobs).unwrap();
        let log: Vec<String> = log_rx.iter().collect();
        assert_eq!(
            log,
            ["14", "13 0 1 9000", "13 2 2 300", "17 3968", "2 0"],
            "CMD_STOP, the blobs, CMD_SET_BUFFERSIZE, CMD_INIT without DELETE_VOLATILE"
        );
    }

    #[test]
    fn a_refused_blob_names_it() {
        let mut ch = fake_channel(|mut s| {
            let _ = read_words::<1>(&mut s);
            s.write_all(&0u32.to_be_bytes()).unwrap();
            let [_, _, _, len] = read_words::<4>(&mut s);
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).unwrap();
            s.write_all(&0x2du32.to_be_bytes()).unwrap();
        });
        let blobs = TpmBlobs {
            permanent: TpmBlob {
                encrypted: false,
                data: vec![1; 10],
            },
            ..TpmBlobs::default()
        };
        let err = ch.restore_blobs(&blobs).unwrap_err().to_string();
        assert!(err.contains("permanent") && err.contains("0x2d"), "{err}");
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
        let err = tpm.state_backend().save_blobs().unwrap_err();
        assert_eq!(err.to_string(), "swtpm is not running");
    }
}
