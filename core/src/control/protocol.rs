//! QMP wire format shared by the server and the client.
//!
//! Data flow: bytes from a socket go through a [`Framer`], which cuts the stream into
//! complete top-level JSON texts (QMP clients such as Python `qemu.qmp` send objects
//! back to back *without* a newline, so the protocol is not line based), bounded to
//! [`MAX_MESSAGE_LEN`] bytes. Outgoing messages (greeting, replies, events) are built
//! here as `serde_json::Value`s and written one per line, terminated by `\r\n` as QEMU
//! does.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Event, RunState};

/// Arguments of a command that takes none: any member is an error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// Largest JSON text, in bytes, that a client may send to the server; a client that
/// sends more is dropped (it cannot make the helper buffer without bound).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// Largest JSON text the client accepts from a server (QEMU's `query-qmp-schema` reply
/// alone is a few hundred KiB).
pub const MAX_REPLY_LEN: usize = 16 * 1024 * 1024;

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A JSON text grew past the framer's limit without ending.
    #[error("QMP input exceeds {0} bytes")]
    MessageTooLong(usize),
}

/// The class of a QMP error reply, as QEMU names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorClass {
    /// Any error without a more specific class.
    GenericError,
    /// The command does not exist (or is not allowed in the current mode).
    CommandNotFound,
    /// A device named in the arguments was not found.
    DeviceNotFound,
    /// The command needs KVM and KVM is not available.
    KVMMissingCap,
    /// A class this client does not know (only produced when parsing replies).
    #[serde(other)]
    Other,
}

/// A QMP error: class and human readable description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpError {
    /// Error class.
    pub class: ErrorClass,
    /// Description for humans.
    pub desc: String,
}

impl QmpError {
    /// A `GenericError` with the given description.
    pub fn generic(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// A `CommandNotFound` error with the given description.
    pub fn command_not_found(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.class, self.desc)
    }
}

/// Version triple as QMP reports it (in the `qemu` member, which every QMP tool reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionTriple {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Micro version.
    pub micro: u64,
}

/// The reply of `query-version` and the `version` member of the greeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Numeric version (of hospes-vmm; QMP calls the member `qemu`).
    pub qemu: VersionTriple,
    /// Free-form package string.
    pub package: String,
}

impl VersionInfo {
    /// The version of this build of Hospes.
    pub fn current() -> Self {
        let num = |s: &str| s.parse().unwrap_or(0);
        Self {
            qemu: VersionTriple {
                major: num(env!("CARGO_PKG_VERSION_MAJOR")),
                minor: num(env!("CARGO_PKG_VERSION_MINOR")),
                micro: num(env!("CARGO_PKG_VERSION_PATCH")),
            },
            package: format!("hospes-vmm {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// True only when the VM state is [`RunState::Running`].
    pub running: bool,
    /// Always false (single-stepping is not supported); kept for old clients.
    #[serde(default)]
    pub singlestep: bool,
    /// The VM's run state.
    pub status: RunState,
}

impl StatusInfo {
    /// The status reply for a VM in `state`.
    pub fn new(state: RunState) -> Self {
        Self {
            running: state == RunState::Running,
            singlestep: false,
            status: state,
        }
    }
}

/// Time of an event, as QMP sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Microseconds within that second.
    pub microseconds: i64,
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Self {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                microseconds: i64::from(d.subsec_micros()),
            },
            // A clock before 1970: QEMU reports -1 in both fields when it has no time.
            Err(_) => Self {
                seconds: -1,
                microseconds: -1,
            },
        }
    }
}

/// The greeting the server sends when a client connects.
pub fn greeting() -> Value {
    json!({ "QMP": { "version": VersionInfo::current(), "capabilities": [] } })
}

/// A successful reply carrying `value`, with the request's `id` echoed if it had one.
pub fn return_reply(value: Value, id: Option<&Value>) -> Value {
    let mut map = Map::new();
    map.insert("return".into(), value);
    if let Some(id) = id {
        map.insert("id".into(), id.clone());
    }
    Value::Object(map)
}

/// An error reply, with the request's `id` echoed if it had one.
pub fn error_reply(err: &QmpError, id: Option<&Value>) -> Value {
    let mut map = Map::new();
    map.insert(
        "error".into(),
        json!({ "class": err.class, "desc": err.desc }),
    );
    if let Some(id) = id {
        map.insert("id".into(), id.clone());
    }
    Value::Object(map)
}

/// An event message for `event` at time `at`.
pub fn event_message(event: &Event, at: Timestamp) -> Value {
    let mut map = Map::new();
    map.insert("event".into(), Value::String(event.name().into()));
    if let Some(data) = event.data() {
        map.insert("data".into(), data);
    }
    map.insert("timestamp".into(), json!(at));
    Value::Object(map)
}

/// Serializes a message as one line of wire text (`\r\n` terminated, like QEMU).
pub fn encode(msg: &Value) -> Vec<u8> {
    let mut out = msg.to_string().into_bytes();
    out.extend_from_slice(b"\r\n");
    out
}

/// Where the [`Framer`] is inside the current JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameState {
    /// Between texts: whitespace is skipped.
    Idle,
    /// Inside an object or array, `depth` brackets deep.
    Nested { depth: usize },
    /// Inside a bare scalar (number, keyword, garbage); ends at whitespace.
    Scalar,
    /// Inside a top-level string.
    TopString,
}

/// Cuts a byte stream into complete top-level JSON texts without parsing them.
///
/// Objects and arrays end at their matching closing bracket (strings and escapes are
/// tracked so brackets inside strings do not count); anything else ends at whitespace.
/// The texts are then parsed with serde_json, whose errors become QMP error replies.
#[derive(Debug)]
pub struct Framer {
    limit: usize,
    buf: Vec<u8>,
    state: FrameState,
    in_string: bool,
    escaped: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    /// An empty framer for texts of at most [`MAX_MESSAGE_LEN`] bytes.
    pub fn new() -> Self {
        Self::with_limit(MAX_MESSAGE_LEN)
    }

    /// An empty framer for texts of at most `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            buf: Vec::new(),
            state: FrameState::Idle,
            in_string: false,
            escaped: false,
        }
    }

    /// True when no partial text is buffered.
    pub fn is_idle(&self) -> bool {
        self.state == FrameState::Idle
    }

    /// Feeds `data`, appending each completed text to `out`.
    ///
    /// Fails once a text grows past the limit; the framer is then unusable
    /// and the peer should be dropped.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), ProtocolError> {
        for &b in data {
            if let Some(text) = self.step(b) {
                out.push(text);
            }
            if self.buf.len() > self.limit {
                return Err(ProtocolError::MessageTooLong(self.limit));
            }
        }
        Ok(())
    }

    /// Ends the stream: a pending bare scalar is complete at end of input.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let pending = !self.buf.is_empty();
        self.state = FrameState::Idle;
        pending.then(|| std::mem::take(&mut self.buf))
    }

    fn step(&mut self, b: u8) -> Option<Vec<u8>> {
        match self.state {
            FrameState::Idle => {
                if b.is_ascii_whitespace() {
                    return None;
                }
                self.buf.push(b);
                self.state = match b {
                    b'{' | b'[' => FrameState::Nested { depth: 1 },
                    b'"' => FrameState::TopString,
                    _ => FrameState::Scalar,
                };
                self.in_string = b == b'"';
                self.escaped = false;
                None
            }
            FrameState::Scalar => {
                if b.is_ascii_whitespace() {
                    return self.complete();
                }
                self.buf.push(b);
                None
            }
            FrameState::TopString => {
                self.buf.push(b);
                if self.string_byte(b) {
                    self.complete()
                } else {
                    None
                }
            }
            FrameState::Nested { depth } => {
                self.buf.push(b);
                if self.in_string {
                    self.string_byte(b);
                    return None;
                }
                match b {
                    b'"' => {
                        self.in_string = true;
                        self.escaped = false;
                        None
                    }
                    b'{' | b'[' => {
                        self.state = FrameState::Nested { depth: depth + 1 };
                        None
                    }
                    b'}' | b']' if depth == 1 => self.complete(),
                    b'}' | b']' => {
                        self.state = FrameState::Nested { depth: depth - 1 };
                        None
                    }
                    _ => None,
                }
            }
        }
    }

    /// Tracks a byte inside a string; returns true when it closed the string.
    fn string_byte(&mut self, b: u8) -> bool {
        if self.escaped {
            self.escaped = false;
        } else if b == b'\\' {
            self.escaped = true;
        } else if b == b'"' {
            self.in_string = false;
            return true;
        }
        false
    }

    fn complete(&mut self) -> Option<Vec<u8>> {
        self.state = FrameState::Idle;
        self.in_string = false;
        Some(std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(input: &[u8]) -> Vec<String> {
        let mut f = Framer::new();
        let mut out = Vec::new();
        f.push(input, &mut out).unwrap();
        out.into_iter()
            .map(|t| String::from_utf8(t).unwrap())
            .collect()
    }

    #[test]
    fn splits_objects_sent_back_to_back_without_newlines() {
        let texts = frame(br#"{"execute":"a"}{"execute":"b","arguments":{"x":[1,{}]}}"#);
        assert_eq!(
            texts,
            [
                r#"{"execute":"a"}"#,
                r#"{"execute":"b","arguments":{"x":[1,{}]}}"#
            ]
        );
    }

    #[test]
    fn brackets_and_escaped_quotes_inside_strings_do_not_count() {
        let texts = frame(br#"{"id":"}\"{["} 42 "a\"b" "#);
        assert_eq!(texts, [r#"{"id":"}\"{["}"#, "42", r#""a\"b""#]);
    }

    #[test]
    fn an_object_split_across_reads_completes_once() {
        let mut f = Framer::new();
        let mut out = Vec::new();
        f.push(br#"{"exec"#, &mut out).unwrap();
        assert!(out.is_empty() && !f.is_idle());
        f.push(b"ute\":\"x\"}\n", &mut out).unwrap();
        assert_eq!(out, [br#"{"execute":"x"}"#.to_vec()]);
        assert!(f.is_idle());
    }

    #[test]
    fn rejects_a_text_longer_than_the_limit() {
        let mut f = Framer::new();
        let mut out = Vec::new();
        let big = vec![b'a'; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            f.push(&big, &mut out),
            Err(ProtocolError::MessageTooLong(MAX_MESSAGE_LEN))
        );
    }

    #[test]
    fn event_messages_omit_data_for_events_without_it() {
        let at = Timestamp {
            seconds: 5,
            microseconds: 7,
        };
        let stop = event_message(&Event::Stop, at);
        assert_eq!(
            stop,
            json!({"event": "STOP", "timestamp": {"seconds": 5, "microseconds": 7}})
        );
        let shutdown = event_message(
            &Event::Shutdown {
                guest: true,
                reason: super::super::ShutdownReason::GuestShutdown,
            },
            at,
        );
        assert_eq!(
            shutdown["data"],
            json!({"guest": true, "reason": "guest-shutdown"})
        );
    }

    #[test]
    fn replies_echo_the_id_only_when_given() {
        let id = json!({"n": 1});
        assert_eq!(
            return_reply(json!({}), Some(&id)),
            json!({"return": {}, "id": {"n": 1}})
        );
        let err = QmpError::generic("bad");
        assert_eq!(
            error_reply(&err, None),
            json!({"error": {"class": "GenericError", "desc": "bad"}})
        );
    }
}
