//! The QMP command table and the per-connection session state.
//!
//! Data flow: the server hands each complete JSON text of a client to
//! [`Session::handle`], which validates the request envelope (`execute`, `arguments`,
//! `id`), enforces capabilities negotiation, deserializes the arguments into the
//! command's own serde type and runs it against [`VmControl`]. The result is the reply
//! to send, plus an optional action to run once the reply is queued (`quit`).
//!
//! Adding a command: write a function taking `(&dyn VmControl, ArgsType)` and add one
//! `command!` line to [`COMMANDS`]. A command that uses the descriptors the client passed
//! with `SCM_RIGHTS` (`getfd`, `device_add`'s `fd`) takes `(&dyn VmControl, &mut FdTable,
//! ArgsType)` and is listed with `command!(fds ...)`.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::fdpass::{self, FdTable};
use super::protocol::{NoArgs, QmpError, StatusInfo, VersionInfo, error_reply, return_reply};
use super::{ControlError, VmControl, block, display, usb};

/// Name of the negotiation command, valid only before any other.
const QMP_CAPABILITIES: &str = "qmp_capabilities";

/// Runs a command with the connection's descriptors and its raw `arguments` object.
type RunFn = fn(&dyn VmControl, &mut FdTable, Value) -> Result<Value, QmpError>;

/// One entry of the command table.
pub(super) struct CommandSpec {
    /// The name clients `execute`.
    pub name: &'static str,
    run: RunFn,
    /// Runs after the reply has been queued to the client.
    after_reply: Option<fn(&dyn VmControl)>,
}

/// Builds a [`CommandSpec`] whose arguments are deserialized into `$args` first.
macro_rules! command {
    (fds $name:literal, $args:ty, $f:expr) => {
        CommandSpec {
            name: $name,
            run: |vm, fds, raw| {
                let args: $args = parse_args($name, raw)?;
                $f(vm, fds, args)
            },
            after_reply: None,
        }
    };
    ($name:literal, $args:ty, $f:expr) => {
        command!($name, $args, $f, None)
    };
    ($name:literal, $args:ty, $f:expr, $after:expr) => {
        CommandSpec {
            name: $name,
            run: |vm, _fds, raw| {
                let args: $args = parse_args($name, raw)?;
                $f(vm, args)
            },
            after_reply: $after,
        }
    };
}

/// Every command the server knows, besides `qmp_capabilities`.
const COMMANDS: &[CommandSpec] = &[
    command!("query-status", NoArgs, query_status),
    command!("query-version", NoArgs, query_version),
    command!("query-commands", NoArgs, query_commands),
    command!("stop", NoArgs, stop),
    command!("cont", NoArgs, cont),
    command!("system_powerdown", NoArgs, system_powerdown),
    command!("system_reset", NoArgs, system_reset),
    command!(
        "quit",
        NoArgs,
        empty_reply,
        Some(|vm: &dyn VmControl| vm.quit())
    ),
    command!("screendump", display::ScreendumpArgs, display::screendump),
    command!("query-vnc", NoArgs, display::query_vnc),
    command!(
        "input-send-event",
        display::InputSendEventArgs,
        display::input_send_event
    ),
    command!("query-block", NoArgs, block::query_block),
    command!("eject", block::EjectArgs, block::eject),
    command!(
        "blockdev-change-medium",
        block::ChangeMediumArgs,
        block::blockdev_change_medium
    ),
    command!(fds "getfd", fdpass::GetfdArgs, fdpass::getfd),
    command!(fds "closefd", fdpass::ClosefdArgs, fdpass::closefd),
    command!(fds "device_add", usb::DeviceAddArgs, usb::device_add),
    command!("device_del", usb::DeviceDelArgs, usb::device_del),
    command!("query-usb", NoArgs, usb::query_usb),
    command!("hospes-save", NoArgs, save),
];

/// Arguments of `qmp_capabilities`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapabilitiesArgs {
    /// Capabilities to enable; the server offers none.
    #[serde(default)]
    enable: Vec<String>,
}

fn parse_args<T: DeserializeOwned>(command: &str, raw: Value) -> Result<T, QmpError> {
    serde_json::from_value(raw)
        .map_err(|e| QmpError::generic(format!("Invalid arguments for '{command}': {e}")))
}

fn vm_result(result: Result<(), ControlError>) -> Result<Value, QmpError> {
    result
        .map(|()| json!({}))
        .map_err(|e| QmpError::generic(e.to_string()))
}

fn to_reply_value<T: serde::Serialize>(value: T) -> Result<Value, QmpError> {
    serde_json::to_value(value).map_err(|e| QmpError::generic(e.to_string()))
}

fn query_status(vm: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    to_reply_value(StatusInfo::new(vm.status()))
}

fn query_version(_: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    to_reply_value(VersionInfo::current())
}

fn query_commands(_: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    let names = std::iter::once(QMP_CAPABILITIES).chain(COMMANDS.iter().map(|c| c.name));
    Ok(Value::Array(
        names.map(|name| json!({ "name": name })).collect(),
    ))
}

fn stop(vm: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    vm_result(vm.pause())
}

fn cont(vm: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    vm_result(vm.resume())
}

fn system_powerdown(vm: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    vm_result(vm.powerdown())
}

fn system_reset(vm: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    vm_result(vm.reset())
}

fn save(vm: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    vm_result(vm.save())
}

fn empty_reply(_: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    Ok(json!({}))
}

/// A validated request envelope.
struct Request {
    name: String,
    args: Value,
}

/// Checks the envelope of a parsed text. The `id`, if any, is taken out first so that
/// even a rejected request gets it echoed.
fn parse_request(text: &[u8], id: &mut Option<Value>) -> Result<Request, QmpError> {
    let value: Value = serde_json::from_slice(text)
        .map_err(|e| QmpError::generic(format!("JSON parse error, {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(QmpError::generic("QMP input must be a JSON object"));
    };
    *id = obj.remove("id");
    let name = match obj.remove("execute") {
        Some(Value::String(name)) => name,
        Some(_) => {
            return Err(QmpError::generic(
                "QMP input member 'execute' must be a string",
            ));
        }
        None => return Err(QmpError::generic("QMP input lacks member 'execute'")),
    };
    let args = match obj.remove("arguments") {
        Some(Value::Object(args)) => Value::Object(args),
        Some(_) => {
            return Err(QmpError::generic(
                "QMP input member 'arguments' must be an object",
            ));
        }
        None => Value::Object(Map::new()),
    };
    if let Some(member) = obj.keys().next() {
        return Err(QmpError::generic(format!(
            "QMP input member '{member}' is unexpected"
        )));
    }
    Ok(Request { name, args })
}

/// What to do after handling one client text.
pub(super) struct Handled {
    /// The reply to send.
    pub reply: Value,
    /// An action to run once the reply is queued.
    pub after_reply: Option<fn(&dyn VmControl)>,
}

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub(super) struct Session {
    negotiated: bool,
    /// Descriptors the client passed (`getfd`); closed when the connection ends.
    fds: FdTable,
}

impl Session {
    /// Takes the descriptors that came with the client's latest bytes.
    pub fn receive_fds(&mut self, fds: Vec<std::os::fd::OwnedFd>) {
        self.fds.receive(fds);
    }

    /// True once `qmp_capabilities` succeeded: the client then receives events.
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Handles one complete JSON text from the client.
    pub fn handle(&mut self, text: &[u8], vm: &dyn VmControl) -> Handled {
        let mut id = None;
        match self.dispatch(text, &mut id, vm) {
            Ok((value, after_reply)) => Handled {
                reply: return_reply(value, id.as_ref()),
                after_reply,
            },
            Err(err) => Handled {
                reply: error_reply(&err, id.as_ref()),
                after_reply: None,
            },
        }
    }

    #[allow(clippy::type_complexity)]
    fn dispatch(
        &mut self,
        text: &[u8],
        id: &mut Option<Value>,
        vm: &dyn VmControl,
    ) -> Result<(Value, Option<fn(&dyn VmControl)>), QmpError> {
        let req = parse_request(text, id)?;
        if req.name == QMP_CAPABILITIES {
            if self.negotiated {
                return Err(QmpError::command_not_found(
                    "Capabilities negotiation is already complete, command ignored",
                ));
            }
            let args: CapabilitiesArgs = parse_args(QMP_CAPABILITIES, req.args)?;
            if let Some(cap) = args.enable.first() {
                return Err(QmpError::generic(format!(
                    "Capability '{cap}' not available"
                )));
            }
            self.negotiated = true;
            return Ok((json!({}), None));
        }
        if !self.negotiated {
            return Err(QmpError::command_not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        let spec = COMMANDS
            .iter()
            .find(|c| c.name == req.name)
            .ok_or_else(|| {
                QmpError::command_not_found(format!("The command {} has not been found", req.name))
            })?;
        let value = (spec.run)(vm, &mut self.fds, req.args)?;
        Ok((value, spec.after_reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::fake::FakeVm;
    use crate::control::{EventSender, RunState};

    fn negotiated() -> Session {
        Session {
            negotiated: true,
            ..Session::default()
        }
    }

    fn run(session: &mut Session, vm: &FakeVm, text: &str) -> Value {
        session.handle(text.as_bytes(), vm).reply
    }

    #[test]
    fn rejects_commands_before_negotiation_with_command_not_found() {
        let vm = FakeVm::new(EventSender::new());
        let mut s = Session::default();
        let reply = run(&mut s, &vm, r#"{"execute":"query-status","id":1}"#);
        assert_eq!(reply["error"]["class"], "CommandNotFound");
        assert_eq!(reply["id"], 1);
        assert!(!s.negotiated());
        assert_eq!(
            run(&mut s, &vm, r#"{"execute":"qmp_capabilities"}"#),
            json!({"return": {}})
        );
        assert!(s.negotiated());
        let again = run(&mut s, &vm, r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(again["error"]["class"], "CommandNotFound");
    }

    #[test]
    fn refuses_to_enable_capabilities_not_offered() {
        let vm = FakeVm::new(EventSender::new());
        let mut s = Session::default();
        let reply = run(
            &mut s,
            &vm,
            r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#,
        );
        assert_eq!(reply["error"]["class"], "GenericError");
        assert!(!s.negotiated());
    }

    #[test]
    fn envelope_errors_are_generic_errors_with_id_echoed() {
        let vm = FakeVm::new(EventSender::new());
        let mut s = negotiated();
        let cases = [
            (r#"{"execute":"stop""#, None),
            ("[1,2]", None),
            (r#""stop""#, None),
            (r#"{"id":"a"}"#, Some("a")),
            (r#"{"id":"b","execute":7}"#, Some("b")),
            (r#"{"id":"c","execute":"stop","arguments":[]}"#, Some("c")),
            (r#"{"id":"d","execute":"stop","bogus":1}"#, Some("d")),
            (
                r#"{"id":"e","execute":"stop","arguments":{"x":1}}"#,
                Some("e"),
            ),
        ];
        for (text, id) in cases {
            let reply = run(&mut s, &vm, text);
            assert_eq!(reply["error"]["class"], "GenericError", "{text}");
            assert_eq!(reply.get("id").and_then(Value::as_str), id, "{text}");
        }
        assert_eq!(
            vm.status(),
            RunState::Running,
            "no rejected request reached the VM"
        );
    }

    #[test]
    fn unknown_command_is_command_not_found() {
        let vm = FakeVm::new(EventSender::new());
        let reply = run(&mut negotiated(), &vm, r#"{"execute":"frobnicate"}"#);
        assert_eq!(reply["error"]["class"], "CommandNotFound");
        assert_eq!(
            reply["error"]["desc"],
            "The command frobnicate has not been found"
        );
    }

    #[test]
    fn vm_errors_become_generic_errors() {
        let vm = FakeVm::new(EventSender::new());
        let mut s = negotiated();
        vm.guest_shutdown();
        let reply = run(&mut s, &vm, r#"{"execute":"cont"}"#);
        assert_eq!(reply["error"]["class"], "GenericError");
    }

    #[test]
    fn query_commands_lists_every_table_entry() {
        let vm = FakeVm::new(EventSender::new());
        let reply = run(&mut negotiated(), &vm, r#"{"execute":"query-commands"}"#);
        let names: Vec<&str> = reply["return"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for name in [
            "qmp_capabilities",
            "query-status",
            "stop",
            "cont",
            "quit",
            "system_reset",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }

    /// A negotiated session on a fake VM whose CD drive holds a 4 KiB image, in `dir`.
    fn vm_with_cd(dir: &std::path::Path) -> (FakeVm, std::path::PathBuf) {
        let iso = dir.join("first.iso");
        std::fs::write(&iso, [0u8; 4096]).unwrap();
        (
            FakeVm::with_cdrom(EventSender::new(), Some(iso.clone())),
            iso,
        )
    }

    #[test]
    fn query_block_lists_the_cd_drive_with_its_disc() {
        let dir = tempfile::tempdir().unwrap();
        let (vm, iso) = vm_with_cd(dir.path());
        let reply = run(&mut negotiated(), &vm, r#"{"execute":"query-block"}"#);
        let drives = reply["return"].as_array().expect("a list");
        assert_eq!(drives.len(), 1, "{reply}");
        let cd = &drives[0];
        assert_eq!(cd["device"], "cdrom0");
        assert_eq!(cd["qdev"], "cdrom0");
        assert_eq!(cd["removable"], true);
        assert_eq!(cd["tray_open"], false);
        assert_eq!(cd["inserted"]["file"], iso.display().to_string());
        assert_eq!(cd["inserted"]["ro"], true);
        assert_eq!(cd["inserted"]["drv"], "raw");
        assert_eq!(cd["inserted"]["image"]["virtual-size"], 4096);

        let none = FakeVm::new(EventSender::new());
        let reply = run(&mut negotiated(), &none, r#"{"execute":"query-block"}"#);
        assert_eq!(reply, json!({"return": []}), "no drive, no entry");
    }

    #[test]
    fn eject_takes_the_disc_out_by_id_or_device() {
        let dir = tempfile::tempdir().unwrap();
        for args in [r#"{"id":"cdrom0"}"#, r#"{"device":"cdrom0","force":false}"#] {
            let (vm, _) = vm_with_cd(dir.path());
            let text = format!(r#"{{"execute":"eject","arguments":{args}}}"#);
            let reply = run(&mut negotiated(), &vm, &text);
            assert_eq!(reply, json!({"return": {}}), "{args}");
            assert_eq!(vm.cdrom_image(), None, "{args}");
            let listed = run(&mut negotiated(), &vm, r#"{"execute":"query-block"}"#);
            assert!(listed["return"][0].get("inserted").is_none(), "{listed}");
        }
    }

    #[test]
    fn eject_names_a_missing_drive_and_refuses_bad_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let (vm, iso) = vm_with_cd(dir.path());
        let mut s = negotiated();
        let reply = run(
            &mut s,
            &vm,
            r#"{"execute":"eject","arguments":{"id":"floppy0"}}"#,
        );
        assert_eq!(reply["error"]["class"], "DeviceNotFound");
        assert_eq!(reply["error"]["desc"], "Device 'floppy0' not found");
        let no_drive = FakeVm::new(EventSender::new());
        let reply = run(
            &mut s,
            &no_drive,
            r#"{"execute":"eject","arguments":{"id":"cdrom0"}}"#,
        );
        assert_eq!(reply["error"]["class"], "DeviceNotFound");
        assert_eq!(reply["error"]["desc"], "Device 'cdrom0' not found");
        for args in [
            "{}",
            r#"{"id":"cdrom0","device":"cdrom0"}"#,
            r#"{"id":"cdrom0","force":"yes"}"#,
            r#"{"id":"cdrom0","tray":true}"#,
            r#"{"id":7}"#,
        ] {
            let text = format!(r#"{{"execute":"eject","arguments":{args}}}"#);
            let reply = run(&mut s, &vm, &text);
            assert_eq!(reply["error"]["class"], "GenericError", "{args}: {reply}");
        }
        assert_eq!(
            vm.cdrom_image(),
            Some(iso),
            "no rejected eject took the disc"
        );
    }

    #[test]
    fn a_drive_the_guest_locked_ejects_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let (vm, iso) = vm_with_cd(dir.path());
        vm.lock_cdrom(true);
        let mut s = negotiated();
        let reply = run(
            &mut s,
            &vm,
            r#"{"execute":"eject","arguments":{"id":"cdrom0"}}"#,
        );
        assert_eq!(reply["error"]["class"], "GenericError");
        assert!(
            reply["error"]["desc"].as_str().unwrap().contains("locked"),
            "{reply}"
        );
        assert_eq!(vm.cdrom_image(), Some(iso));
        let reply = run(
            &mut s,
            &vm,
            r#"{"execute":"eject","arguments":{"id":"cdrom0","force":true}}"#,
        );
        assert_eq!(reply, json!({"return": {}}));
        assert_eq!(vm.cdrom_image(), None);
    }

    #[test]
    fn change_medium_puts_a_new_disc_in() {
        let dir = tempfile::tempdir().unwrap();
        let (vm, _) = vm_with_cd(dir.path());
        let second = dir.path().join("virtio-win.iso");
        std::fs::write(&second, [0u8; 2048]).unwrap();
        let text = json!({"execute": "blockdev-change-medium", "arguments": {
            "id": "cdrom0", "filename": second, "format": "raw", "read-only-mode": "retain"}});
        let reply = run(&mut negotiated(), &vm, &text.to_string());
        assert_eq!(reply, json!({"return": {}}));
        assert_eq!(vm.cdrom_image(), Some(second.clone()));
        let listed = run(&mut negotiated(), &vm, r#"{"execute":"query-block"}"#);
        assert_eq!(
            listed["return"][0]["inserted"]["file"],
            second.display().to_string()
        );
    }

    #[test]
    fn change_medium_errors_name_the_file_or_the_drive_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (vm, iso) = vm_with_cd(dir.path());
        let missing = dir.path().join("missing.iso");
        let mut s = negotiated();
        let change = |args: serde_json::Value| {
            json!({"execute": "blockdev-change-medium", "arguments": args}).to_string()
        };
        let reply = run(
            &mut s,
            &vm,
            &change(json!({"id": "cdrom0", "filename": missing})),
        );
        assert_eq!(reply["error"]["class"], "GenericError");
        let desc = reply["error"]["desc"].as_str().unwrap();
        assert!(desc.contains(&missing.display().to_string()), "{desc}");
        let reply = run(
            &mut s,
            &vm,
            &change(json!({"id": "cdrom0", "filename": dir.path()})),
        );
        let desc = reply["error"]["desc"].as_str().unwrap();
        assert!(desc.contains("not a regular file"), "{desc}");
        let reply = run(&mut s, &vm, &change(json!({"id": "cd9", "filename": iso})));
        assert_eq!(reply["error"]["class"], "DeviceNotFound");
        for bad in [
            json!({"id": "cdrom0", "filename": iso, "format": "qcow2"}),
            json!({"id": "cdrom0", "filename": iso, "read-only-mode": "read-write"}),
            json!({"id": "cdrom0", "filename": iso, "read-only-mode": "sometimes"}),
            json!({"id": "cdrom0", "filename": ""}),
            json!({"id": "cdrom0"}),
            json!({"filename": iso}),
        ] {
            let reply = run(&mut s, &vm, &change(bad.clone()));
            assert_eq!(reply["error"]["class"], "GenericError", "{bad}: {reply}");
        }
        assert_eq!(vm.cdrom_image(), Some(iso), "the first disc is still in");
        assert_eq!(vm.status(), RunState::Running, "the VM runs on");
    }

    #[test]
    fn device_add_checks_its_arguments_before_reaching_the_vm() {
        let vm = FakeVm::new(EventSender::new());
        let mut s = negotiated();
        let add = |args: Value| json!({"execute": "device_add", "arguments": args}).to_string();
        for (args, needle) in [
            (json!({"driver": "usb-host"}), "needs 'vendorid'"),
            (
                json!({"driver": "usb-host", "vendorid": 1133}),
                "'productid'",
            ),
            (json!({"driver": "usb-host", "hostaddr": 2}), "'hostbus'"),
            (
                json!({"driver": "usb-host", "vendorid": 70000, "productid": 1}),
                "'vendorid'",
            ),
            (
                json!({"driver": "usb-host", "hostbus": 300, "hostaddr": 1}),
                "'hostbus'",
            ),
            (
                json!({"driver": "usb-host", "id": "9lives", "vendorid": 1, "productid": 1}),
                "'9lives'",
            ),
            (
                json!({"driver": "usb-tablet", "vendorid": 1}),
                "usb-tablet.vendorid",
            ),
            (json!({"driver": "e1000"}), "usb-host, usb-tablet, usb-kbd"),
            (
                json!({"driver": "usb-host", "hostbus": 3, "hostaddr": 2, "x": 1}),
                "x",
            ),
        ] {
            let reply = run(&mut s, &vm, &add(args.clone()));
            let desc = reply["error"]["desc"].as_str().unwrap_or_default();
            assert!(desc.contains(needle), "{args}: {reply}");
        }
        assert!(
            vm.query_usb().is_empty(),
            "no refused device_add reached the VM"
        );
        let reply = run(
            &mut s,
            &vm,
            &add(json!({"driver": "usb-host", "vendorid": "0x046d", "productid": "0xc52b"})),
        );
        assert_eq!(
            reply,
            json!({"return": {}}),
            "ids as hex text are taken too"
        );
    }

    #[test]
    fn getfd_names_the_descriptor_that_came_with_it_and_device_add_takes_it() {
        let vm = FakeVm::new(EventSender::new());
        let mut s = negotiated();
        let getfd = r#"{"execute":"getfd","arguments":{"fdname":"portal"}}"#;
        let null = std::fs::File::open("/dev/null").unwrap();
        s.receive_fds(vec![null.into()]);
        assert_eq!(run(&mut s, &vm, getfd), json!({"return": {}}));
        let again = run(&mut s, &vm, getfd);
        assert_eq!(
            again["error"]["desc"], "No file descriptor supplied via SCM_RIGHTS",
            "a descriptor is named once"
        );
        let bad_name = r#"{"execute":"getfd","arguments":{"fdname":"1st"}}"#;
        s.receive_fds(vec![std::fs::File::open("/dev/null").unwrap().into()]);
        assert_eq!(run(&mut s, &vm, bad_name)["error"]["class"], "GenericError");
        let add =
            r#"{"execute":"device_add","arguments":{"driver":"usb-host","fd":"portal","id":"p"}}"#;
        assert_eq!(run(&mut s, &vm, add), json!({"return": {}}));
        assert!(
            vm.usb_passed_file("p").is_some(),
            "the VM holds the descriptor"
        );
        let closed = run(
            &mut s,
            &vm,
            r#"{"execute":"closefd","arguments":{"fdname":"portal"}}"#,
        );
        assert_eq!(
            closed["error"]["desc"], "File descriptor named 'portal' not found",
            "device_add took it out of the table"
        );
    }

    #[test]
    fn a_connection_holds_a_bounded_number_of_named_descriptors() {
        let vm = FakeVm::new(EventSender::new());
        let mut s = negotiated();
        for n in 0..=crate::control::fdpass::MAX_NAMED_FDS {
            s.receive_fds(vec![std::fs::File::open("/dev/null").unwrap().into()]);
            let text = format!(r#"{{"execute":"getfd","arguments":{{"fdname":"f{n}"}}}}"#);
            let reply = run(&mut s, &vm, &text);
            if n < crate::control::fdpass::MAX_NAMED_FDS {
                assert_eq!(reply, json!({"return": {}}), "{n}");
            } else {
                assert!(
                    reply["error"]["desc"]
                        .as_str()
                        .unwrap()
                        .contains("Too many"),
                    "{reply}"
                );
            }
        }
        assert_eq!(s.fds.len(), crate::control::fdpass::MAX_NAMED_FDS);
    }

    #[test]
    fn quit_defers_the_vm_action_until_after_the_reply() {
        let vm = FakeVm::new(EventSender::new());
        let handled = negotiated().handle(br#"{"execute":"quit"}"#, &vm);
        assert_eq!(handled.reply, json!({"return": {}}));
        assert!(!vm.quit_requested());
        (handled.after_reply.unwrap())(&vm);
        assert!(vm.quit_requested());
    }
}
