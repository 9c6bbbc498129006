//! A small blocking QMP client, used by `hospesctl` and the app (on a worker thread).
//!
//! Data flow: [`QmpClient::connect`] reads the greeting and negotiates capabilities.
//! [`QmpClient::execute`] writes one request with a fresh `id` and reads messages until
//! the reply with that `id` arrives; events read meanwhile are queued and returned by
//! [`QmpClient::wait_event`] or [`QmpClient::take_events`]. Every read is bounded by the
//! client's timeout, and every message by [`MAX_REPLY_LEN`]. [`QmpClient::getfd`] sends a
//! descriptor with its request (`SCM_RIGHTS`), for `device_add`'s `fd`.
//! It works against QEMU as well as `hospes-vmm`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::fdpass::send_with_fd;
use super::protocol::{
    Framer, MAX_REPLY_LEN, ProtocolError, QmpError, StatusInfo, Timestamp, VersionInfo,
};
use super::usb::{USB_HOST_DRIVER, UsbInfo};

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

/// What a finished save reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    /// The saved-state file.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Milliseconds from the command to the file in place.
    pub ms: u64,
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

/// Which host device a `usb-host` `device_add` passes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsbTarget {
    /// By vendor and product id.
    VendorProduct(u16, u16),
    /// By bus number and device address, as `lsusb` prints them.
    BusAddr(u8, u8),
    /// By a descriptor passed earlier with `getfd` under `name`.
    Fd {
        /// The descriptor's name.
        name: String,
        /// The device's ids, when known.
        vendor_product: Option<(u16, u16)>,
    },
}

/// A `device_add` of a host USB device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbAddRequest {
    /// The device id; the server makes one up (`usb0`) when absent.
    pub id: Option<String>,
    /// The host device.
    pub target: UsbTarget,
}

impl UsbAddRequest {
    /// The `device_add` arguments, QEMU's names and integer ids.
    pub fn to_args(&self) -> Value {
        let mut args = json!({ "driver": USB_HOST_DRIVER });
        if let Some(id) = &self.id {
            args["id"] = json!(id);
        }
        let ids = match &self.target {
            UsbTarget::VendorProduct(v, p) => Some((*v, *p)),
            UsbTarget::BusAddr(bus, addr) => {
                args["hostbus"] = json!(bus);
                args["hostaddr"] = json!(addr);
                None
            }
            UsbTarget::Fd {
                name,
                vendor_product,
            } => {
                args["fd"] = json!(name);
                *vendor_product
            }
        };
        if let Some((v, p)) = ids {
            args["vendorid"] = json!(v);
            args["productid"] = json!(p);
        }
        args
    }
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
        self.execute_inner(command, arguments, None)
    }

    /// Like [`QmpClient::execute`], with `fd` passed along (`SCM_RIGHTS`) with the
    /// request's bytes, as QEMU's `getfd` expects it.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, ClientError> {
        self.execute_inner(command, arguments, Some(fd))
    }

    fn execute_inner(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, ClientError> {
        self.next_id += 1;
        let id = json!(format!("hospes-{}", self.next_id));
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut bytes = request.to_string().into_bytes();
        bytes.push(b'\n');
        match fd {
            Some(fd) => send_with_fd(&self.stream, &bytes, fd)?,
            None => self.stream.write_all(&bytes)?,
        }
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

    /// `hospes-save`: saves the VM and waits until its state is written. `progress`
    /// gets (bytes of RAM written, bytes to write) as the helper reports them; the wait
    /// gives up when nothing arrives for `quiet` (a save reports at least every 32 MiB).
    pub fn save(
        &mut self,
        quiet: Duration,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<SaveReport, ClientError> {
        self.execute("hospes-save", None)?;
        loop {
            let event = self.next_event(quiet)?;
            let num = |key: &str| event.data.get(key).and_then(Value::as_u64).unwrap_or(0);
            match event.name.as_str() {
                "SAVE_PROGRESS" => progress(num("done"), num("total")),
                "SAVE_COMPLETED" => {
                    return Ok(SaveReport {
                        file: event.data["file"].as_str().unwrap_or_default().into(),
                        bytes: num("bytes"),
                        ms: num("ms"),
                    });
                }
                "SAVE_FAILED" => {
                    let error = event.data["error"].as_str().unwrap_or("unknown error");
                    return Err(ClientError::Command(QmpError::generic(error)));
                }
                _ => {}
            }
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

    /// `getfd`: passes `fd` to the server under `name`, for a later `device_add`'s `fd`.
    pub fn getfd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), ClientError> {
        self.execute_with_fd("getfd", Some(json!({ "fdname": name })), fd)
            .map(drop)
    }

    /// `closefd`: closes the descriptor passed under `name`.
    pub fn closefd(&mut self, name: &str) -> Result<(), ClientError> {
        self.execute("closefd", Some(json!({ "fdname": name })))
            .map(drop)
    }

    /// `device_add` of a USB device (see [`UsbAddRequest`]).
    pub fn usb_add(&mut self, request: &UsbAddRequest) -> Result<(), ClientError> {
        self.execute("device_add", Some(request.to_args()))
            .map(drop)
    }

    /// Passes the open usbfs device `fd` with `getfd` and plugs it in with `device_add`
    /// (`usb-host`, `fd`); `vendor_product` names the device in `query-usb` when known.
    pub fn usb_add_fd(
        &mut self,
        id: Option<&str>,
        fd: BorrowedFd<'_>,
        vendor_product: Option<(u16, u16)>,
    ) -> Result<(), ClientError> {
        let name = format!("usbfd-{}", self.next_id + 1);
        self.getfd(&name, fd)?;
        let request = UsbAddRequest {
            id: id.map(str::to_owned),
            target: UsbTarget::Fd {
                name: name.clone(),
                vendor_product,
            },
        };
        let added = self.usb_add(&request);
        if added.is_err() {
            // device_add took the descriptor only if it succeeded.
            let _ = self.closefd(&name);
        }
        added
    }

    /// `device_del`: unplugs device `id`.
    pub fn device_del(&mut self, id: &str) -> Result<(), ClientError> {
        self.execute("device_del", Some(json!({ "id": id })))
            .map(drop)
    }

    /// `query-usb`: the USB devices plugged into the VM.
    pub fn query_usb(&mut self) -> Result<Vec<UsbInfo>, ClientError> {
        self.execute_typed("query-usb")
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
