//! The QMP server over a real unix socket, driven byte for byte as QMP tools do, against
//! the fake VM; and the typed client against the same server.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hospes_core::control::client::{ClientError, QmpClient};
use hospes_core::control::fake::FakeVm;
use hospes_core::control::protocol::MAX_MESSAGE_LEN;
use hospes_core::control::server::MAX_CLIENTS;
use hospes_core::control::{
    ErrorClass, Event, EventSender, QmpServer, QmpServerHandle, RunState, ServerError,
    ShutdownReason, VmControl,
};
use serde_json::{Value, json};

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    vm: Arc<FakeVm>,
    server: QmpServerHandle,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let (vm, server) = FakeVm::serve(&path).unwrap();
    Fixture {
        _dir: dir,
        path,
        vm,
        server,
    }
}

/// A raw QMP connection: writes text, reads one JSON message per line.
struct Raw {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Raw {
    fn connect(path: &Path) -> Self {
        let writer = UnixStream::connect(path).unwrap();
        writer
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let reader = BufReader::new(writer.try_clone().unwrap());
        Self { writer, reader }
    }

    /// Connects, checks the greeting and negotiates.
    fn negotiated(path: &Path) -> Self {
        let mut raw = Self::connect(path);
        assert!(raw.recv()["QMP"].is_object());
        assert_eq!(
            raw.call(r#"{"execute":"qmp_capabilities"}"#),
            json!({"return": {}})
        );
        raw
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "connection closed");
        assert!(line.ends_with("\r\n"), "QMP lines end with CRLF: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    /// Sends a request and returns its reply, checking no event came in between.
    fn call(&mut self, text: &str) -> Value {
        self.send(text);
        self.recv()
    }

    /// True if nothing arrives within a short while.
    fn is_quiet(&mut self) -> bool {
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut line = String::new();
        let quiet = matches!(
            self.reader.read_line(&mut line),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
        );
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        quiet
    }

    /// True once the server has closed the connection.
    fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    }
}

/// Waits up to five seconds for `cond` to hold.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn greets_with_version_and_no_capabilities() {
    let f = start();
    let mut c = Raw::connect(&f.path);
    let greeting = c.recv();
    assert_eq!(greeting["QMP"]["capabilities"], json!([]));
    let version = &greeting["QMP"]["version"];
    assert!(version["qemu"]["major"].is_u64() && version["qemu"]["micro"].is_u64());
    assert!(
        version["package"]
            .as_str()
            .unwrap()
            .starts_with("hospes-vmm")
    );
}

#[test]
fn socket_is_private_to_the_owner() {
    let f = start();
    let mode = std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn commands_before_negotiation_fail_with_command_not_found_and_echo_the_id() {
    let f = start();
    let mut c = Raw::connect(&f.path);
    c.recv();
    let reply = c.call(r#"{"execute":"stop","id":"x1"}"#);
    assert_eq!(reply["error"]["class"], "CommandNotFound");
    assert_eq!(reply["id"], "x1");
    assert_eq!(f.vm.status(), RunState::Running);
    let reply = c.call(r#"{"execute":"qmp_capabilities","arguments":{},"id":2}"#);
    assert_eq!(reply, json!({"return": {}, "id": 2}));
}

#[test]
fn query_status_reports_the_run_state() {
    let f = start();
    let mut c = Raw::negotiated(&f.path);
    let reply = c.call(r#"{"execute":"query-status","id":7}"#);
    assert_eq!(
        reply,
        json!({"return": {"running": true, "singlestep": false, "status": "running"}, "id": 7})
    );
}

#[test]
fn stop_and_cont_pause_and_resume_with_events() {
    let f = start();
    let mut c = Raw::negotiated(&f.path);
    c.send(r#"{"execute":"stop","id":1}"#);
    let event = c.recv();
    assert_eq!(event["event"], "STOP");
    assert!(event.get("data").is_none());
    assert!(event["timestamp"]["seconds"].as_i64().unwrap() > 1_600_000_000);
    assert!(event["timestamp"]["microseconds"].as_i64().unwrap() < 1_000_000);
    assert_eq!(c.recv(), json!({"return": {}, "id": 1}));
    let status = c.call(r#"{"execute":"query-status"}"#);
    assert_eq!(status["return"]["status"], "paused");
    assert_eq!(status["return"]["running"], false);

    c.send(r#"{"execute":"cont"}"#);
    assert_eq!(c.recv()["event"], "RESUME");
    assert_eq!(c.recv(), json!({"return": {}}));
    assert_eq!(f.vm.status(), RunState::Running);
}

#[test]
fn system_reset_and_powerdown_emit_their_events() {
    let f = start();
    let mut c = Raw::negotiated(&f.path);
    c.send(r#"{"execute":"system_reset"}"#);
    let reset = c.recv();
    assert_eq!(reset["event"], "RESET");
    assert_eq!(
        reset["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    assert_eq!(c.recv(), json!({"return": {}}));

    c.send(r#"{"execute":"system_powerdown"}"#);
    assert_eq!(c.recv()["event"], "POWERDOWN");
    assert_eq!(c.recv(), json!({"return": {}}));
    assert!(f.vm.powerdown_requested());
}

#[test]
fn quit_replies_before_the_vm_is_told_to_quit() {
    let f = start();
    let mut c = Raw::negotiated(&f.path);
    assert_eq!(
        c.call(r#"{"execute":"quit","id":"q"}"#),
        json!({"return": {}, "id": "q"})
    );
    assert!(eventually(|| f.vm.quit_requested()));
}

#[test]
fn query_version_and_query_commands_answer() {
    let f = start();
    let mut c = Raw::negotiated(&f.path);
    let version = c.call(r#"{"execute":"query-version"}"#);
    assert!(version["return"]["qemu"]["minor"].is_u64());
    let commands = c.call(r#"{"execute":"query-commands"}"#);
    let names: Vec<&str> = commands["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for expected in [
        "qmp_capabilities",
        "query-status",
        "stop",
        "cont",
        "system_powerdown",
        "system_reset",
        "quit",
        "query-version",
        "query-commands",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
}

#[test]
fn bad_input_gets_an_error_and_the_connection_and_vm_stay_up() {
    let f = start();
    let mut c = Raw::negotiated(&f.path);
    let cases = [
        (r#"{"execute": }"#, "GenericError"),
        ("hello\n", "GenericError"),
        ("42\n", "GenericError"),
        (r#"["execute","stop"]"#, "GenericError"),
        (r#"{"arguments":{}}"#, "GenericError"),
        (r#"{"execute":"no-such-command"}"#, "CommandNotFound"),
        (
            r#"{"execute":"stop","arguments":{"force":true}}"#,
            "GenericError",
        ),
        (r#"{"execute":"stop","arguments":"now"}"#, "GenericError"),
        (r#"{"execute":["stop"]}"#, "GenericError"),
        (
            r#"{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}"#,
            "CommandNotFound",
        ),
    ];
    for (text, class) in cases {
        let reply = c.call(text);
        assert_eq!(reply["error"]["class"], class, "{text} -> {reply}");
        assert!(
            reply["error"]["desc"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
    assert_eq!(f.vm.status(), RunState::Running);
    assert_eq!(
        c.call(r#"{"execute":"query-status"}"#)["return"]["running"],
        true
    );
}

#[test]
fn wrong_argument_types_are_generic_errors() {
    let f = start();
    let mut c = Raw::connect(&f.path);
    c.recv();
    let reply = c.call(r#"{"execute":"qmp_capabilities","arguments":{"enable":"oob"},"id":3}"#);
    assert_eq!(reply["error"]["class"], "GenericError");
    assert_eq!(reply["id"], 3);
}

#[test]
fn objects_sent_back_to_back_without_newlines_each_get_a_reply() {
    let f = start();
    let mut c = Raw::connect(&f.path);
    c.recv();
    c.send(r#"{"execute":"qmp_capabilities","id":1}{"execute":"query-status","id":2}"#);
    assert_eq!(c.recv()["id"], 1);
    assert_eq!(c.recv()["id"], 2);
}

#[test]
fn an_endless_line_drops_only_that_client() {
    let f = start();
    let mut good = Raw::negotiated(&f.path);
    let mut bad = Raw::negotiated(&f.path);
    let chunk = vec![b'a'; 8192];
    let mut sent = 0;
    while sent <= MAX_MESSAGE_LEN + chunk.len() {
        if bad.writer.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let reply = bad.recv();
    assert_eq!(reply["error"]["class"], "GenericError");
    assert!(bad.is_closed());
    assert_eq!(
        good.call(r#"{"execute":"query-status"}"#)["return"]["running"],
        true
    );
    let mut fresh = Raw::negotiated(&f.path);
    assert_eq!(
        fresh.call(r#"{"execute":"query-status"}"#)["return"]["running"],
        true
    );
}

#[test]
fn events_reach_every_negotiated_client_and_no_client_still_negotiating() {
    let f = start();
    let mut a = Raw::negotiated(&f.path);
    let mut b = Raw::negotiated(&f.path);
    let mut pending = Raw::connect(&f.path);
    pending.recv();
    a.send(r#"{"execute":"stop"}"#);
    assert_eq!(a.recv()["event"], "STOP");
    assert_eq!(a.recv(), json!({"return": {}}));
    assert_eq!(b.recv()["event"], "STOP");
    assert!(pending.is_quiet(), "no events before negotiation");

    f.server.emit(Event::Shutdown {
        guest: true,
        reason: ShutdownReason::GuestShutdown,
    });
    for c in [&mut a, &mut b] {
        let event = c.recv();
        assert_eq!(event["event"], "SHUTDOWN");
        assert_eq!(
            event["data"],
            json!({"guest": true, "reason": "guest-shutdown"})
        );
    }
    assert!(pending.is_quiet());
}

#[test]
fn connections_beyond_the_limit_are_closed() {
    let f = start();
    let _clients: Vec<Raw> = (0..MAX_CLIENTS).map(|_| Raw::negotiated(&f.path)).collect();
    let mut extra = Raw::connect(&f.path);
    assert!(extra.is_closed());
}

#[test]
fn shutdown_flushes_the_last_event_closes_clients_and_removes_the_socket() {
    let f = start();
    let mut c = Raw::negotiated(&f.path);
    f.server.emit(Event::Shutdown {
        guest: false,
        reason: ShutdownReason::HostQmpQuit,
    });
    let path = f.path.clone();
    f.server.shutdown();
    assert_eq!(c.recv()["data"]["reason"], "host-qmp-quit");
    assert!(c.is_closed());
    assert!(!path.exists());
}

#[test]
fn a_stale_socket_is_replaced_but_a_live_one_is_refused() {
    let f = start();
    let vm: Arc<dyn VmControl> = Arc::new(FakeVm::new(EventSender::new()));
    let err = QmpServer::start(&f.path, Arc::clone(&vm)).err().unwrap();
    assert!(matches!(err, ServerError::InUse(_)), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("qmp.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let server = QmpServer::start(&stale, vm).unwrap();
    let mut c = Raw::negotiated(&stale);
    assert_eq!(
        c.call(r#"{"execute":"query-status"}"#)["return"]["running"],
        true
    );
    drop(server);
}

#[test]
fn typed_client_runs_commands_and_collects_events() {
    let f = start();
    let mut client = QmpClient::connect(&f.path).unwrap();
    assert!(client.greeting()["QMP"]["version"].is_object());
    assert_eq!(client.query_status().unwrap().status, RunState::Running);
    assert!(
        client
            .query_version()
            .unwrap()
            .package
            .starts_with("hospes-vmm")
    );
    client.stop().unwrap();
    assert!(!client.query_status().unwrap().running);
    client.cont().unwrap();
    client.system_reset().unwrap();
    let stop = client.wait_event("STOP", Duration::from_secs(1)).unwrap();
    assert!(stop.timestamp.seconds > 0);
    let names: Vec<String> = client.take_events().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["RESUME", "RESET"]);

    let err = client.execute("no-such-command", None).unwrap_err();
    assert!(matches!(&err, ClientError::Command(e) if e.class == ErrorClass::CommandNotFound));
    let err = client
        .execute("stop", Some(json!({"bogus": 1})))
        .unwrap_err();
    assert!(matches!(&err, ClientError::Command(e) if e.class == ErrorClass::GenericError));

    client.system_powerdown().unwrap();
    assert_eq!(
        client
            .wait_event("POWERDOWN", Duration::from_secs(1))
            .unwrap()
            .data,
        Value::Null
    );
    f.vm.guest_shutdown();
    let shutdown = client
        .wait_event("SHUTDOWN", Duration::from_secs(1))
        .unwrap();
    assert_eq!(shutdown.data["reason"], "guest-shutdown");
    client.quit().unwrap();
    assert!(eventually(|| f.vm.quit_requested()));
}

#[test]
fn typed_client_watches_events_from_another_client() {
    let f = start();
    let mut watcher = QmpClient::connect(&f.path).unwrap();
    let mut actor = QmpClient::connect(&f.path).unwrap();
    actor.stop().unwrap();
    actor.cont().unwrap();
    let names: Vec<String> = (0..2)
        .map(|_| watcher.next_event(Duration::from_secs(5)).unwrap().name)
        .collect();
    assert_eq!(names, ["STOP", "RESUME"]);
    let err = watcher.next_event(Duration::from_millis(50)).unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err}");
}

#[test]
fn typed_client_times_out_waiting_for_an_event_that_never_comes() {
    let f = start();
    let mut client = QmpClient::connect(&f.path).unwrap();
    let err = client
        .wait_event("RESET", Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err}");
    // The session is still usable afterwards.
    assert!(client.query_status().unwrap().running);
}
