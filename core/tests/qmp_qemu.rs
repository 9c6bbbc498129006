//! Differential test against QEMU's own QMP server (Debian's `qemu-system-x86`, run with
//! `-M none`, no guest): the same byte sequences, good and bad, sent to QEMU and to
//! ours must get replies of the same shape and error class. Also runs the typed client
//! against QEMU. Needs `qemu-system-x86_64` on PATH (`apt-get install qemu-system-x86`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hospes_core::control::client::{ClientError, QmpClient};
use hospes_core::control::fake::FakeVm;
use hospes_core::control::{ErrorClass, EventSender, QmpServer, RunState, VmControl};
use serde_json::Value;

/// QEMU, killed when dropped.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_qemu(socket: &Path) -> Qemu {
    let child = Command::new("qemu-system-x86_64")
        .args(["-M", "none", "-nodefaults", "-display", "none", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run qemu-system-x86_64 ({e}): apt-get install qemu-system-x86")
        });
    let qemu = Qemu(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "QEMU's QMP socket did not appear"
        );
        thread::sleep(Duration::from_millis(20));
    }
    qemu
}

/// Sends each input in turn on one connection; returns the greeting and each reply.
fn exchange(socket: &Path, inputs: &[&str]) -> Vec<Value> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut read = || {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let mut out = vec![read()];
    for input in inputs {
        stream.write_all(input.as_bytes()).unwrap();
        let mut reply = read();
        // Events are not part of the comparison here; `stop` is sent last.
        while reply.get("event").is_some() {
            reply = read();
        }
        out.push(reply);
    }
    out
}

/// What must agree: which top-level members a message has, and the error class.
fn shape(msg: &Value) -> String {
    let mut keys: Vec<&str> = msg
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    format!("{keys:?} {}", msg["error"]["class"])
}

#[test]
fn replies_have_the_same_shape_and_error_class_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let qemu_socket = dir.path().join("qemu.sock");
    let ours_socket = dir.path().join("ours.sock");
    let _qemu = start_qemu(&qemu_socket);
    let vm: Arc<dyn VmControl> = Arc::new(FakeVm::new(EventSender::new()));
    let _server = QmpServer::start(&ours_socket, vm).unwrap();

    let inputs = [
        r#"{"execute":"query-status","id":1}"#,
        r#"{"execute":"qmp_capabilities","id":"neg"}"#,
        r#"{"execute":"qmp_capabilities"}"#,
        "{\"execute\": }\n",
        "hello\n",
        "42\n",
        r#"["execute"]"#,
        r#"{"arguments":{}}"#,
        r#"{"execute":"no-such-command","id":{"n":[1]}}"#,
        r#"{"execute":"stop","arguments":{"force":true},"id":5}"#,
        r#"{"execute":"stop","arguments":"x"}"#,
        r#"{"execute":["stop"]}"#,
        r#"{"execute":"stop","bogus":1}"#,
        r#"{"execute":"query-version"}"#,
        r#"{"execute":"system_reset"}"#,
        r#"{"execute":"stop","id":"last"}"#,
    ];
    let theirs = exchange(&qemu_socket, &inputs);
    let ours = exchange(&ours_socket, &inputs);
    for (i, (t, o)) in theirs.iter().zip(&ours).enumerate() {
        let input = if i == 0 { "<greeting>" } else { inputs[i - 1] };
        assert_eq!(shape(o), shape(t), "{input}\n qemu: {t}\n ours: {o}");
        assert_eq!(o.get("id"), t.get("id"), "{input}");
    }
    assert_eq!(
        ours[1]["error"]["desc"], theirs[1]["error"]["desc"],
        "same text before negotiation"
    );
    assert_eq!(
        ours[14]["return"]["qemu"].as_object().map(|m| m.len()),
        Some(3)
    );
}

#[test]
fn typed_client_drives_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qemu.sock");
    let _qemu = start_qemu(&socket);
    let mut client = QmpClient::connect(&socket).unwrap();
    assert_eq!(client.query_status().unwrap().status, RunState::Running);
    assert!(client.query_version().unwrap().qemu.major >= 7);
    client.stop().unwrap();
    client.wait_event("STOP", Duration::from_secs(5)).unwrap();
    assert_eq!(client.query_status().unwrap().status, RunState::Paused);
    client.cont().unwrap();
    client.wait_event("RESUME", Duration::from_secs(5)).unwrap();
    let err = client.execute("no-such-command", None).unwrap_err();
    assert!(matches!(err, ClientError::Command(e) if e.class == ErrorClass::CommandNotFound));
    // A reply far larger than what our server accepts from clients.
    let schema = client.execute("query-qmp-schema", None).unwrap();
    assert!(schema.as_array().is_some_and(|s| s.len() > 100));
    client.quit().unwrap();
    let shutdown = client
        .wait_event("SHUTDOWN", Duration::from_secs(5))
        .unwrap();
    assert_eq!(shutdown.data["reason"], "host-qmp-quit");
}
