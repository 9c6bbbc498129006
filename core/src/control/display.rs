//! QMP display and input commands: `screendump`, `query-vnc`, `input-send-event`. The
//! argument and reply types, with QEMU's spelling, and the command functions the table in
//! `commands.rs` points at. The VMM does the work through [`VmControl`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::protocol::{NoArgs, QmpError};
use super::{ControlError, VmControl};

/// `screendump` arguments: a PNG is written to `filename` (QEMU's `format` is accepted
/// when it says png).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScreendumpArgs {
    filename: PathBuf,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    head: Option<u32>,
    #[serde(default)]
    format: Option<String>,
}

/// One client of the VNC server in `query-vnc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VncClientInfo {
    pub host: String,
    pub service: String,
    pub family: String,
    pub websocket: bool,
}

/// The `query-vnc` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VncInfo {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<VncClientInfo>>,
}

impl VncInfo {
    /// No VNC server.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            host: None,
            service: None,
            family: None,
            auth: None,
            clients: None,
        }
    }
}

/// A key as QMP names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum KeyValue {
    /// QEMU's key names (`a`, `ret`, `shift`, `f1`...).
    Qcode(String),
    /// An XT scancode, 0xE0-prefixed keys with bit 7 set (QEMU's "qnum").
    Number(u32),
}

/// A pointer button as QMP names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Button {
    Left,
    Middle,
    Right,
    WheelUp,
    WheelDown,
    Side,
    Extra,
    WheelLeft,
    WheelRight,
    Touch,
}

/// An axis as QMP names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    X,
    Y,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyEvent {
    pub down: bool,
    pub key: KeyValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct BtnEvent {
    pub down: bool,
    pub button: Button,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct MoveEvent {
    pub axis: Axis,
    pub value: i64,
}

/// One `input-send-event` event. `abs` values run 0..=0x7fff across the screen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum InputEvent {
    Key(KeyEvent),
    Btn(BtnEvent),
    Abs(MoveEvent),
    Rel(MoveEvent),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InputSendEventArgs {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    head: Option<u32>,
    events: Vec<InputEvent>,
}

fn failed(e: ControlError) -> QmpError {
    QmpError::generic(e.to_string())
}

pub(super) fn screendump(vm: &dyn VmControl, a: ScreendumpArgs) -> Result<Value, QmpError> {
    if a.format.as_deref().is_some_and(|f| f != "png") {
        return Err(QmpError::generic("only the png format is supported"));
    }
    let _ = (a.device, a.head);
    vm.screendump(&a.filename).map_err(failed)?;
    Ok(json!({}))
}

pub(super) fn query_vnc(vm: &dyn VmControl, _: NoArgs) -> Result<Value, QmpError> {
    serde_json::to_value(vm.query_vnc()).map_err(|e| QmpError::generic(e.to_string()))
}

pub(super) fn input_send_event(
    vm: &dyn VmControl,
    a: InputSendEventArgs,
) -> Result<Value, QmpError> {
    let _ = (a.device, a.head);
    vm.input_send_event(&a.events).map_err(failed)?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_events_parse_with_qemu_spelling() {
        let v = json!([
            {"type": "key", "data": {"down": true, "key": {"type": "qcode", "data": "a"}}},
            {"type": "key", "data": {"down": false, "key": {"type": "number", "data": 157}}},
            {"type": "btn", "data": {"down": true, "button": "wheel-up"}},
            {"type": "abs", "data": {"axis": "y", "value": 16384}}
        ]);
        let ev: Vec<InputEvent> = serde_json::from_value(v).unwrap();
        assert_eq!(
            ev[0],
            InputEvent::Key(KeyEvent {
                down: true,
                key: KeyValue::Qcode("a".into())
            })
        );
        assert_eq!(
            ev[1],
            InputEvent::Key(KeyEvent {
                down: false,
                key: KeyValue::Number(157)
            })
        );
        assert_eq!(
            ev[2],
            InputEvent::Btn(BtnEvent {
                down: true,
                button: Button::WheelUp
            })
        );
        assert_eq!(
            ev[3],
            InputEvent::Abs(MoveEvent {
                axis: Axis::Y,
                value: 16384
            })
        );
    }

    #[test]
    fn disabled_vnc_reports_only_enabled_false() {
        assert_eq!(
            serde_json::to_value(VncInfo::disabled()).unwrap(),
            json!({"enabled": false})
        );
    }
}
