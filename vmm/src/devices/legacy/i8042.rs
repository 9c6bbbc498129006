//! The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command).
//!
//! Enough of the controller for Linux's probe and for resets: the configuration byte,
//! controller and port self-tests, port enable/disable, the output port (bit 0 low = reset)
//! and command 0xfe (pulse reset). The keyboard answers its commands with ACK (0xfa) and
//! passes its self-test (0xaa); no keys are generated yet. Output-buffer-full raises IRQ 1
//! (keyboard) when the configuration byte enables it.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{IrqLine, PowerEvent, PowerEvents};
use crate::devices::bus::BusDevice;

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
    power: Arc<dyn PowerEvents>,
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
            power,
        }
    }

    fn push(&mut self, byte: u8, aux: bool) {
        if self.queue.len() < 16 {
            self.queue.push_back((byte, aux));
        }
        if !aux && self.config & CFG_KBD_INT != 0 {
            self.kbd_irq.trigger();
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
            // No mouse: it does not answer (Linux then reports no AUX port).
            Pending::ToAux => {}
            Pending::Keyboard => self.keyboard(b),
        }
    }

    fn keyboard(&mut self, b: u8) {
        match b {
            0xff => {
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

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let Some(b) = data.first_mut() else { return };
        *b = match base + offset {
            0x64 => self.status(),
            0x60 => self.queue.pop_front().map_or(0, |(v, _)| v),
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
    use crate::devices::legacy::testing::{RecordingIrq, RecordingPower};

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

    #[test]
    fn output_port_bit0_low_resets_and_keyboard_acks() {
        let (mut d, p, _) = dev();
        d.write(0x60, 0, &[0xff]);
        assert_eq!((inb(&mut d, 0x60), inb(&mut d, 0x60)), (0xfa, 0xaa));
        d.write(0x64, 0, &[0xd1]);
        d.write(0x60, 0, &[0xfe]);
        assert_eq!(*p.events.lock().unwrap(), [PowerEvent::Reset]);
    }
}
