//! The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command).
//!
//! Enough of the controller for Linux's probe and for resets: the configuration byte,
//! controller and port self-tests, port enable/disable, the output port (bit 0 low = reset)
//! and command 0xfe (pulse reset). The keyboard answers its commands with ACK (0xfa) and
//! passes its self-test (0xaa). Output-buffer-full raises IRQ 1 (keyboard) or IRQ 12
//! (mouse) when the configuration byte enables it.
//!
//! Input (through [`Ps2Input`]): keys arrive as XT scancodes; the keyboard speaks scancode
//! set 2 and, with translation on in the configuration byte (the default, what firmware
//! and Linux use), the controller hands the guest set 1, as a PC's does. The keyboard
//! keeps its LED state (command 0xED) and scanning switch (0xF4/0xF5). The PS/2 mouse
//! answers the commands Linux's psmouse and firmware send (reset, get ID, defaults,
//! enable/disable reporting, sample rate, resolution, status) and reports motion as
//! standard 3-byte packets.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{IrqLine, PowerEvent, PowerEvents};
use crate::bus::BusDevice;
use crate::input::Ps2Input;

/// Status: output buffer full.
const SB_OUT_FULL: u8 = 0x01;
/// Status: system flag (self-test passed).
const SB_SYSTEM: u8 = 0x04;
/// Status: last write was a command.
const SB_COMMAND: u8 = 0x08;
/// Status: keyboard not inhibited.
const SB_KBD_ENABLED: u8 = 0x10;
/// Status: output buffer holds mouse data.
const SB_AUX_DATA: u8 = 0x20;

/// Config: keyboard interrupt enabled.
const CFG_KBD_INT: u8 = 0x01;
/// Config: mouse interrupt enabled.
const CFG_AUX_INT: u8 = 0x02;
/// Config: system flag.
const CFG_SYSTEM: u8 = 0x04;
/// Config: keyboard clock disabled.
const CFG_KBD_DISABLED: u8 = 0x10;
/// Config: mouse clock disabled.
const CFG_AUX_DISABLED: u8 = 0x20;
/// Config: scancode translation.
const CFG_TRANSLATE: u8 = 0x40;

/// Keyboard ACK.
const KBD_ACK: u8 = 0xfa;
/// Output bytes held at most (a key is up to 4 bytes, a mouse packet 3).
const QUEUE_MAX: usize = 64;

/// Set 1 (XT) to set 2 for codes 0x00..=0x58; 0 where there is no key.
#[rustfmt::skip]
const SET1_TO_SET2: [u8; 0x59] = [
    0x00, 0x76, 0x16, 0x1e, 0x26, 0x25, 0x2e, 0x36, 0x3d, 0x3e, 0x46, 0x45, 0x4e, 0x55, 0x66, 0x0d,
    0x15, 0x1d, 0x24, 0x2d, 0x2c, 0x35, 0x3c, 0x43, 0x44, 0x4d, 0x54, 0x5b, 0x5a, 0x14, 0x1c, 0x1b,
    0x23, 0x2b, 0x34, 0x33, 0x3b, 0x42, 0x4b, 0x4c, 0x52, 0x0e, 0x12, 0x5d, 0x1a, 0x22, 0x21, 0x2a,
    0x32, 0x31, 0x3a, 0x41, 0x49, 0x4a, 0x59, 0x7c, 0x11, 0x29, 0x58, 0x05, 0x06, 0x04, 0x0c, 0x03,
    0x0b, 0x83, 0x0a, 0x01, 0x09, 0x77, 0x7e, 0x6c, 0x75, 0x7d, 0x7b, 0x6b, 0x73, 0x74, 0x79, 0x69,
    0x72, 0x7a, 0x70, 0x71, 0x00, 0x00, 0x61, 0x78, 0x07,
];

/// The set 2 code of an XT code (bit 7: 0xE0 prefix, kept as bit 7 here too).
fn set2_code(xt: u16) -> Option<u8> {
    let code = (xt & 0x7f) as u8;
    let extended = xt & 0x80 != 0;
    let base = match (extended, code) {
        (true, 0x5b) => 0x1f,
        (true, 0x5c) => 0x27,
        (true, 0x5d) => 0x2f,
        _ => *SET1_TO_SET2.get(usize::from(code))?,
    };
    (base != 0).then_some(base)
}

/// PS/2 mouse state.
struct Mouse {
    reporting: bool,
    /// A command waiting for its argument byte.
    arg_for: Option<u8>,
    sample_rate: u8,
    resolution: u8,
    buttons: u8,
}

impl Default for Mouse {
    fn default() -> Self {
        Self {
            reporting: false,
            arg_for: None,
            sample_rate: 100,
            resolution: 2,
            buttons: 0,
        }
    }
}

/// What the next data-port write means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Keyboard,
    Config,
    OutputPort,
    AuxLoopback,
    KbdLoopback,
    ToAux,
}

/// The controller.
pub struct I8042 {
    config: u8,
    output_port: u8,
    status_cmd: bool,
    pending: Pending,
    queue: VecDeque<(u8, bool)>,
    kbd_irq: Arc<dyn IrqLine>,
    aux_irq: Option<Arc<dyn IrqLine>>,
    power: Arc<dyn PowerEvents>,
    /// Keyboard: scanning enabled, LED state, waiting for the LED byte.
    scanning: bool,
    leds: u8,
    kbd_arg: Option<u8>,
    mouse: Mouse,
}

impl I8042 {
    pub fn new(kbd_irq: Arc<dyn IrqLine>, power: Arc<dyn PowerEvents>) -> Self {
        Self {
            config: CFG_KBD_INT | CFG_SYSTEM | CFG_TRANSLATE | CFG_AUX_DISABLED,
            output_port: 0x03,
            status_cmd: false,
            pending: Pending::Keyboard,
            queue: VecDeque::new(),
            kbd_irq,
            aux_irq: None,
            power,
            scanning: true,
            leds: 0,
            kbd_arg: None,
            mouse: Mouse::default(),
        }
    }

    /// Connects the mouse's interrupt (IRQ 12); without one the mouse never interrupts.
    pub fn set_aux_irq(&mut self, irq: Arc<dyn IrqLine>) {
        self.aux_irq = Some(irq);
    }

    /// The keyboard LEDs the guest set: bit 0 scroll, 1 num, 2 caps lock.
    pub fn leds(&self) -> u8 {
        self.leds
    }

    fn push(&mut self, byte: u8, aux: bool) {
        if self.queue.len() < QUEUE_MAX {
            self.queue.push_back((byte, aux));
        }
        self.raise(aux);
    }

    fn raise(&self, aux: bool) {
        if !aux && self.config & CFG_KBD_INT != 0 {
            self.kbd_irq.trigger();
        } else if aux
            && self.config & CFG_AUX_INT != 0
            && let Some(irq) = &self.aux_irq
        {
            irq.trigger();
        }
    }

    /// Queues `bytes` only if all of them fit (a key or packet is never cut).
    fn push_all(&mut self, bytes: &[u8], aux: bool) {
        if self.queue.len() + bytes.len() > QUEUE_MAX {
            return;
        }
        for &b in bytes {
            self.push(b, aux);
        }
    }

    fn status(&self) -> u8 {
        let mut s = SB_SYSTEM | SB_KBD_ENABLED;
        if self.status_cmd {
            s |= SB_COMMAND;
        }
        if let Some(&(_, aux)) = self.queue.front() {
            s |= SB_OUT_FULL;
            if aux {
                s |= SB_AUX_DATA;
            }
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        self.status_cmd = true;
        match cmd {
            0x20 => self.push(self.config, false),
            0x60 => self.pending = Pending::Config,
            0xa7 => self.config |= CFG_AUX_DISABLED,
            0xa8 => self.config &= !CFG_AUX_DISABLED,
            0xa9 | 0xab => self.push(0x00, false),
            0xaa => {
                self.push(0x55, false);
            }
            0xad => self.config |= CFG_KBD_DISABLED,
            0xae => self.config &= !CFG_KBD_DISABLED,
            0xd0 => self.push(self.output_port, false),
            0xd1 => self.pending = Pending::OutputPort,
            0xd2 => self.pending = Pending::KbdLoopback,
            0xd3 => self.pending = Pending::AuxLoopback,
            0xd4 => self.pending = Pending::ToAux,
            0xfe => self.power.request(PowerEvent::Reset),
            0xf0..=0xff => {
                // Pulse output lines: bit 0 clear in the low nibble pulses reset.
                if cmd & 1 == 0 {
                    self.power.request(PowerEvent::Reset);
                }
            }
            _ => crate::guest_warn!("i8042: unknown command {cmd:#04x}"),
        }
    }

    fn data(&mut self, b: u8) {
        self.status_cmd = false;
        match std::mem::replace(&mut self.pending, Pending::Keyboard) {
            Pending::Config => self.config = b,
            Pending::OutputPort => {
                self.output_port = b;
                if b & 1 == 0 {
                    self.power.request(PowerEvent::Reset);
                }
            }
            Pending::KbdLoopback => self.push(b, false),
            Pending::AuxLoopback => self.push(b, true),
            Pending::ToAux => self.mouse_command(b),
            Pending::Keyboard => self.keyboard(b),
        }
    }

    fn mouse_command(&mut self, b: u8) {
        if let Some(cmd) = self.mouse.arg_for.take() {
            match cmd {
                0xf3 => self.mouse.sample_rate = b,
                0xe8 => self.mouse.resolution = b & 3,
                _ => {}
            }
            self.push(KBD_ACK, true);
            return;
        }
        match b {
            0xff => {
                self.mouse = Mouse::default();
                self.push_all(&[KBD_ACK, 0xaa, 0x00], true);
            }
            0xf6 => {
                self.mouse = Mouse::default();
                self.push(KBD_ACK, true);
            }
            0xf5 => {
                self.mouse.reporting = false;
                self.push(KBD_ACK, true);
            }
            0xf4 => {
                self.mouse.reporting = true;
                self.push(KBD_ACK, true);
            }
            0xf3 | 0xe8 => {
                self.mouse.arg_for = Some(b);
                self.push(KBD_ACK, true);
            }
            0xf2 => self.push_all(&[KBD_ACK, 0x00], true),
            0xe9 => {
                let status = (u8::from(self.mouse.reporting) << 5) | (self.mouse.buttons & 7);
                let (res, rate) = (self.mouse.resolution, self.mouse.sample_rate);
                self.push_all(&[KBD_ACK, status, res, rate], true);
            }
            _ => self.push(KBD_ACK, true),
        }
    }

    fn keyboard(&mut self, b: u8) {
        if let Some(cmd) = self.kbd_arg.take() {
            if cmd == 0xed {
                self.leds = b & 7;
            }
            self.push(KBD_ACK, false);
            return;
        }
        match b {
            0xed | 0xf3 | 0xf0 => {
                self.kbd_arg = Some(b);
                self.push(KBD_ACK, false);
            }
            0xf4 => {
                self.scanning = true;
                self.push(KBD_ACK, false);
            }
            0xf5 => {
                self.scanning = false;
                self.push(KBD_ACK, false);
            }
            0xff => {
                self.scanning = true;
                self.leds = 0;
                self.push(KBD_ACK, false);
                self.push(0xaa, false);
            }
            0xf2 => {
                self.push(KBD_ACK, false);
                self.push(0xab, false);
                self.push(0x83, false);
            }
            _ => self.push(KBD_ACK, false),
        }
    }
}

impl Ps2Input for I8042 {
    fn key(&mut self, xt: u16, down: bool) {
        if !self.scanning || self.config & CFG_KBD_DISABLED != 0 {
            return;
        }
        let extended = xt & 0x80 != 0;
        let mut bytes = Vec::with_capacity(4);
        if extended {
            bytes.push(0xe0);
        }
        if self.config & CFG_TRANSLATE != 0 {
            // What the controller makes of the keyboard's set 2: set 1.
            if set2_code(xt).is_none() {
                return;
            }
            bytes.push((xt & 0x7f) as u8 | if down { 0 } else { 0x80 });
        } else {
            let Some(code) = set2_code(xt) else { return };
            if !down {
                bytes.push(0xf0);
            }
            bytes.push(code);
        }
        self.push_all(&bytes, false);
    }

    fn mouse(&mut self, dx: i32, dy: i32, buttons: u8, _wheel: i32) {
        self.mouse.buttons = buttons & 7;
        if !self.mouse.reporting || self.config & CFG_AUX_DISABLED != 0 {
            return;
        }
        // PS/2 y grows upwards; motion past 9 bits is clamped.
        let dx = dx.clamp(-255, 255);
        let dy = (-dy).clamp(-255, 255);
        let b0 = 0x08 | (buttons & 7) | (u8::from(dx < 0) << 4) | (u8::from(dy < 0) << 5);
        self.push_all(&[b0, dx as u8, dy as u8], true);
    }
}

/// The saved controller with its keyboard and mouse: registers, the command waiting for
/// its data byte, and the bytes queued for the guest (an interrupt for the first of them
/// is raised again on restore).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct I8042Saved {
    config: u8,
    output_port: u8,
    status_cmd: bool,
    pending: u8,
    queue: Vec<(u8, bool)>,
    scanning: bool,
    leds: u8,
    kbd_arg: Option<u8>,
    mouse_reporting: bool,
    mouse_arg_for: Option<u8>,
    mouse_sample_rate: u8,
    mouse_resolution: u8,
    mouse_buttons: u8,
}

const PENDING_KINDS: [Pending; 6] = [
    Pending::Keyboard,
    Pending::Config,
    Pending::OutputPort,
    Pending::AuxLoopback,
    Pending::KbdLoopback,
    Pending::ToAux,
];

impl crate::state::Snapshot for I8042 {
    fn save_state(&mut self) -> Result<Vec<u8>, crate::state::StateError> {
        let pending = PENDING_KINDS
            .iter()
            .position(|p| *p == self.pending)
            .unwrap_or(0) as u8;
        crate::state::encode(
            "keyboard controller",
            &I8042Saved {
                config: self.config,
                output_port: self.output_port,
                status_cmd: self.status_cmd,
                pending,
                queue: self.queue.iter().copied().collect(),
                scanning: self.scanning,
                leds: self.leds,
                kbd_arg: self.kbd_arg,
                mouse_reporting: self.mouse.reporting,
                mouse_arg_for: self.mouse.arg_for,
                mouse_sample_rate: self.mouse.sample_rate,
                mouse_resolution: self.mouse.resolution,
                mouse_buttons: self.mouse.buttons,
            },
        )
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::state::StateError> {
        let s: I8042Saved = crate::state::decode("keyboard controller", state)?;
        let refuse = |why: &str| crate::state::StateError::mismatch("keyboard controller", why);
        let pending = *PENDING_KINDS
            .get(usize::from(s.pending))
            .ok_or_else(|| refuse("unknown pending command"))?;
        if s.queue.len() > QUEUE_MAX {
            return Err(refuse("output queue longer than the controller's"));
        }
        self.config = s.config;
        self.output_port = s.output_port;
        self.status_cmd = s.status_cmd;
        self.pending = pending;
        self.queue = s.queue.into_iter().collect();
        self.scanning = s.scanning;
        self.leds = s.leds;
        self.kbd_arg = s.kbd_arg;
        self.mouse = Mouse {
            reporting: s.mouse_reporting,
            arg_for: s.mouse_arg_for,
            sample_rate: s.mouse_sample_rate,
            resolution: s.mouse_resolution,
            buttons: s.mouse_buttons & 7,
        };
        if let Some(&(_, aux)) = self.queue.front() {
            self.raise(aux);
        }
        Ok(())
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let Some(b) = data.first_mut() else { return };
        *b = match base + offset {
            0x64 => self.status(),
            0x60 => {
                let v = self.queue.pop_front().map_or(0, |(v, _)| v);
                if let Some(&(_, aux)) = self.queue.front() {
                    self.raise(aux);
                }
                v
            }
            _ => 0xff,
        };
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        match base + offset {
            0x64 => self.command(b),
            0x60 => self.data(b),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::testing::{RecordingIrq, RecordingPower};

    fn dev() -> (I8042, Arc<RecordingPower>, Arc<RecordingIrq>) {
        let p = Arc::new(RecordingPower::default());
        let i = Arc::new(RecordingIrq::default());
        (I8042::new(i.clone(), p.clone()), p, i)
    }

    fn inb(d: &mut I8042, port: u64) -> u8 {
        let mut b = [0u8];
        d.read(port, 0, &mut b);
        b[0]
    }

    #[test]
    fn command_0xfe_requests_reset() {
        let (mut d, p, _) = dev();
        d.write(0x64, 0, &[0xfe]);
        assert_eq!(*p.events.lock().unwrap(), [PowerEvent::Reset]);
    }

    #[test]
    fn self_test_and_port_tests_pass() {
        let (mut d, _, irq) = dev();
        d.write(0x64, 0, &[0xaa]);
        assert_eq!(inb(&mut d, 0x64) & SB_OUT_FULL, SB_OUT_FULL);
        assert_eq!(inb(&mut d, 0x60), 0x55);
        assert_eq!(inb(&mut d, 0x64) & SB_OUT_FULL, 0);
        d.write(0x64, 0, &[0xab]);
        assert_eq!(inb(&mut d, 0x60), 0x00);
        assert!(*irq.edges.lock().unwrap() >= 2);
    }

    #[test]
    fn config_byte_round_trips() {
        let (mut d, _, _) = dev();
        d.write(0x64, 0, &[0x60]);
        d.write(0x60, 0, &[0x65]);
        d.write(0x64, 0, &[0x20]);
        assert_eq!(inb(&mut d, 0x60), 0x65);
    }

    fn drain(d: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while inb(d, 0x64) & SB_OUT_FULL != 0 {
            out.push(inb(d, 0x60));
        }
        out
    }

    #[test]
    fn keys_arrive_as_set1_with_translation_and_set2_without() {
        let (mut d, _, _) = dev();
        d.key(0x1e, true);
        d.key(0x1e, false);
        d.key(0xc8, true);
        d.key(0xc8, false);
        assert_eq!(drain(&mut d), [0x1e, 0x9e, 0xe0, 0x48, 0xe0, 0xc8]);
        d.write(0x64, 0, &[0x60]);
        d.write(0x60, 0, &[CFG_KBD_INT | CFG_SYSTEM]);
        d.key(0x1e, true);
        d.key(0x1e, false);
        d.key(0xc8, false);
        d.key(0xdb, true);
        assert_eq!(
            drain(&mut d),
            [0x1c, 0xf0, 0x1c, 0xe0, 0xf0, 0x75, 0xe0, 0x1f]
        );
        // Scanning off: nothing.
        d.write(0x60, 0, &[0xf5]);
        assert_eq!(drain(&mut d), [KBD_ACK]);
        d.key(0x1e, true);
        assert!(drain(&mut d).is_empty());
    }

    #[test]
    fn leds_command_stores_the_led_byte() {
        let (mut d, _, _) = dev();
        d.write(0x60, 0, &[0xed]);
        d.write(0x60, 0, &[0x04]);
        assert_eq!(drain(&mut d), [KBD_ACK, KBD_ACK]);
        assert_eq!(d.leds(), 4);
    }

    #[test]
    fn mouse_reports_packets_once_enabled_and_interrupts_on_irq12() {
        let (mut d, _, _) = dev();
        let aux = Arc::new(RecordingIrq::default());
        d.set_aux_irq(aux.clone());
        d.write(0x64, 0, &[0xa8]);
        d.write(0x64, 0, &[0x60]);
        d.write(
            0x60,
            0,
            &[CFG_KBD_INT | CFG_AUX_INT | CFG_SYSTEM | CFG_TRANSLATE],
        );
        d.mouse(5, 5, 0, 0);
        assert!(drain(&mut d).is_empty());
        for cmd in [0xff, 0xf2, 0xf4] {
            d.write(0x64, 0, &[0xd4]);
            d.write(0x60, 0, &[cmd]);
        }
        assert_eq!(drain(&mut d), [KBD_ACK, 0xaa, 0x00, KBD_ACK, 0x00, KBD_ACK]);
        d.mouse(10, 3, 1, 0);
        assert_eq!(inb(&mut d, 0x64) & SB_AUX_DATA, SB_AUX_DATA);
        assert_eq!(drain(&mut d), [0x08 | 0x01 | 0x20, 10, (-3i8) as u8]);
        assert!(*aux.edges.lock().unwrap() >= 3);
    }

    #[test]
    fn output_port_bit0_low_resets_and_keyboard_acks() {
        let (mut d, p, _) = dev();
        d.write(0x60, 0, &[0xff]);
        assert_eq!((inb(&mut d, 0x60), inb(&mut d, 0x60)), (0xfa, 0xaa));
        d.write(0x64, 0, &[0xd1]);
        d.write(0x60, 0, &[0xfe]);
        assert_eq!(*p.events.lock().unwrap(), [PowerEvent::Reset]);
    }

    #[test]
    fn a_restored_controller_hands_out_the_queued_bytes_and_keeps_its_modes() {
        use crate::state::Snapshot;
        let (mut d, _, _) = dev();
        d.set_aux_irq(Arc::new(RecordingIrq::default()));
        // Mouse on with interrupts, LEDs set, a key and a mouse packet queued, and a
        // config write waiting for its data byte.
        d.write(0x64, 0, &[0x60]);
        d.write(0x60, 0, &[0x47]);
        d.write(0x64, 0, &[0xa8]);
        d.write(0x64, 0, &[0xd4]);
        d.write(0x60, 0, &[0xf4]);
        d.write(0x60, 0, &[0xed]);
        d.write(0x60, 0, &[0x04]);
        drain(&mut d);
        d.key(0x1e, true);
        d.mouse(3, 0, 1, 0);
        d.write(0x64, 0, &[0x60]);
        let state = d.save_state().unwrap();

        let (mut r, _, irq) = dev();
        let aux = Arc::new(RecordingIrq::default());
        r.set_aux_irq(aux.clone());
        r.restore_state(&state).unwrap();
        assert_eq!(
            *irq.edges.lock().unwrap(),
            1,
            "the key byte interrupts again"
        );
        assert_eq!(r.leds(), 0x04);
        assert_eq!(inb(&mut r, 0x64), inb(&mut d, 0x64));
        assert_eq!(drain(&mut r), drain(&mut d));
        // The pending config write takes the next data byte, in both.
        r.write(0x60, 0, &[0x43]);
        r.write(0x64, 0, &[0x20]);
        assert_eq!(drain(&mut r), vec![0x43]);
        r.mouse(0, 2, 0, 0);
        assert_eq!(drain(&mut r).len(), 3, "mouse still reporting");

        assert!(r.restore_state(&state[..state.len() - 1]).is_err());
        let mut bad = state.clone();
        bad[3] = 9;
        assert!(r.restore_state(&bad).is_err());
        r.key(0x1e, true);
        assert_eq!(drain(&mut r), vec![0x1e], "still a working keyboard");
    }
}
