//! A small blocking QMP client, used by `hospesctl` and the app (on a worker thread).
//!
//! Data flow: [`QmpClient::connect`] reads the greeting and negotiates capabilities.
//! [`QmpClient::execute`] writes one request with a fresh `id` and reads messages until
//! the reply with that `id` arrives; events read meanwhile are queued and returned by
//! [`QmpClient::wait_event`] or [`QmpClient::take_events`]. Every read is bounded by the
//! client's timeout, and every message by [`MAX_REPLY_LEN`].
//! It works against QEMU as well as `hospes-vmm`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::protocol::{
    Framer, MAX_REPLY_LEN, ProtocolError, QmpError, StatusInfo, Timestamp, VersionInfo,
};

/// How long a read waits by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket did not accept the connection.
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP connection failed")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("the QMP server closed the connection")]
    Closed,
    /// Nothing arrived in time.
    #[error("timed out waiting for the QMP server")]
    Timeout,
    /// The server sent something that is not QMP.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
    /// The server sent a message that is too long.
    #[error("QMP message rejected")]
    Framing(#[from] ProtocolError),
    /// The command failed on the server.
    #[error("command failed: {0}")]
    Command(QmpError),
}

/// An event received from the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// Event name, e.g. `SHUTDOWN`.
    pub name: String,
    /// The `data` member, `null` when absent.
    pub data: Value,
    /// When the server emitted it.
    pub timestamp: Timestamp,
}

/// The wire shape of an event.
#[derive(Deserialize)]
struct WireEvent {
    event: String,
    #[serde(default)]
    data: Value,
    timestamp: Timestamp,
}

/// A connected, negotiated QMP session.
pub struct QmpClient {
    stream: UnixStream,
    framer: Framer,
    texts: VecDeque<Vec<u8>>,
    events: VecDeque<ReceivedEvent>,
    greeting: Value,
    next_id: u64,
    timeout: Duration,
}

impl QmpClient {
    /// Connects to the QMP socket at `path` and negotiates, waiting at most
    /// [`DEFAULT_TIMEOUT`] for each answer.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Like [`QmpClient::connect`] with a custom timeout for every read.
    pub fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        stream.set_write_timeout(Some(timeout))?;
        let mut client = Self {
            stream,
            framer: Framer::with_limit(MAX_REPLY_LEN),
            texts: VecDeque::new(),
            events: VecDeque::new(),
            greeting: Value::Null,
            next_id: 0,
            timeout,
        };
        let deadline = Instant::now() + timeout;
        let greeting = client.read_message(deadline)?;
        if !greeting.get("QMP").is_some_and(Value::is_object) {
            return Err(ClientError::Protocol(format!(
                "greeting expected, got {greeting}"
            )));
        }
        client.greeting = greeting;
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Sets how long reads wait from now on.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `command` with optional `arguments` (a JSON object) and returns its
    /// `return` value; an error reply becomes [`ClientError::Command`].
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, ClientError> {
        self.next_id += 1;
        let id = json!(format!("hospes-{}", self.next_id));
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut bytes = request.to_string().into_bytes();
        bytes.push(b'\n');
        self.stream.write_all(&bytes)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let msg = self.read_message(deadline)?;
            if self.queue_if_event(&msg)? {
                continue;
            }
            // A reply with another id answers an earlier, abandoned request.
            if msg.get("id").is_some_and(|got| *got != id) {
                continue;
            }
            return reply_value(msg);
        }
    }

    /// Runs a command and deserializes its return value.
    fn execute_typed<T: DeserializeOwned>(&mut self, command: &str) -> Result<T, ClientError> {
        let value = self.execute(command, None)?;
        serde_json::from_value(value)
            .map_err(|e| ClientError::Protocol(format!("reply to {command}: {e}")))
    }

    /// `query-status`.
    pub fn query_status(&mut self) -> Result<StatusInfo, ClientError> {
        self.execute_typed("query-status")
    }

    /// `query-version`.
    pub fn query_version(&mut self) -> Result<VersionInfo, ClientError> {
        self.execute_typed("query-version")
    }

    /// `stop`: pauses the VM.
    pub fn stop(&mut self) -> Result<(), ClientError> {
        self.execute("stop", None).map(drop)
    }

    /// `cont`: resumes the VM.
    pub fn cont(&mut self) -> Result<(), ClientError> {
        self.execute("cont", None).map(drop)
    }

    /// `system_powerdown`: presses the ACPI power button.
    pub fn system_powerdown(&mut self) -> Result<(), ClientError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// `system_reset`: resets the VM.
    pub fn system_reset(&mut self) -> Result<(), ClientError> {
        self.execute("system_reset", None).map(drop)
    }

    /// `quit`: ends the helper. A connection closed before the reply counts as success.
    pub fn quit(&mut self) -> Result<(), ClientError> {
        match self.execute("quit", None) {
            Ok(_) | Err(ClientError::Closed) => Ok(()),
            Err(ClientError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `query-block`: the VM's removable drives.
    pub fn query_block(&mut self) -> Result<Vec<super::block::BlockInfo>, ClientError> {
        self.execute_typed("query-block")
    }

    /// `eject`: takes the disc out of drive `id`; `force` even while the guest locked it.
    pub fn eject(&mut self, id: &str, force: bool) -> Result<(), ClientError> {
        self.execute("eject", Some(json!({ "id": id, "force": force })))
            .map(drop)
    }

    /// `blockdev-change-medium`: puts the raw image `filename` (a path the helper can
    /// open: make it absolute) into drive `id`; `force` even while the guest locked it.
    pub fn change_medium(
        &mut self,
        id: &str,
        filename: &Path,
        force: bool,
    ) -> Result<(), ClientError> {
        let args = json!({ "id": id, "filename": filename, "format": "raw", "force": force });
        self.execute("blockdev-change-medium", Some(args)).map(drop)
    }

    /// Returns the first event named `name`, received earlier or within `timeout`.
    /// Other events stay queued.
    pub fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<ReceivedEvent, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            if let Some(pos) = self.events.iter().skip(seen).position(|e| e.name == name)
                && let Some(event) = self.events.remove(seen + pos)
            {
                return Ok(event);
            }
            seen = self.events.len();
            let msg = self.read_message(deadline)?;
            self.queue_if_event(&msg)?;
        }
    }

    /// Returns the oldest queued event, or the next one to arrive within `timeout`: for
    /// a thread that watches a VM (the app keeps one connection per VM for this).
    pub fn next_event(&mut self, timeout: Duration) -> Result<ReceivedEvent, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            let msg = self.read_message(deadline)?;
            self.queue_if_event(&msg)?;
        }
    }

    /// Takes every event received so far.
    pub fn take_events(&mut self) -> Vec<ReceivedEvent> {
        self.events.drain(..).collect()
    }

    /// Queues `msg` if it is an event; returns whether it was one.
    fn queue_if_event(&mut self, msg: &Value) -> Result<bool, ClientError> {
        if msg.get("event").is_none() {
            return Ok(false);
        }
        let wire: WireEvent = serde_json::from_value(msg.clone())
            .map_err(|e| ClientError::Protocol(format!("bad event {msg}: {e}")))?;
        self.events.push_back(ReceivedEvent {
            name: wire.event,
            data: wire.data,
            timestamp: wire.timestamp,
        });
        Ok(true)
    }

    /// Reads the next complete message, waiting until `deadline` at most.
    fn read_message(&mut self, deadline: Instant) -> Result<Value, ClientError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(text) = self.texts.pop_front() {
                return serde_json::from_slice(&text)
                    .map_err(|e| ClientError::Protocol(format!("invalid JSON from server: {e}")));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            self.stream.set_read_timeout(Some(left))?;
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            self.framer.push(&buf[..n], &mut out)?;
            self.texts.extend(out);
        }
    }
}

/// The `return` member of a reply, or its error.
fn reply_value(mut msg: Value) -> Result<Value, ClientError> {
    if let Some(ret) = msg.get_mut("return") {
        return Ok(ret.take());
    }
    if let Some(err) = msg.get("error") {
        let err: QmpError = serde_json::from_value(err.clone())
            .map_err(|e| ClientError::Protocol(format!("bad error reply {msg}: {e}")))?;
        return Err(ClientError::Command(err));
    }
    Err(ClientError::Protocol(format!("reply expected, got {msg}")))
}
