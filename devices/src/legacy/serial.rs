//! COM1: a 16550A UART (vm-superio's model) on the port bus.
//!
//! Guest writes to THR collect in a [`LineBuffer`] and reach the output sink (stdout, a
//! file, a unix socket client) a line at a time: one write(2) per line instead of per byte.
//! A partial line (a prompt) goes out as soon as the guest touches any register other than
//! LSR/MSR (what an interrupt-driven driver does when it finishes a burst), or on an LSR/MSR
//! poll once it is [`PARTIAL_LINE_DELAY`] old (what a polling firmware does while it waits
//! for input), or when the VM ends. Bytes from the host side are queued with
//! [`SerialDevice::enqueue`] and raise the receive interrupt. The interrupt leaves through an
//! [`IrqLine`] (an irqfd on IRQ 4).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_superio::{Serial, Trigger};

use super::IrqLine;
use crate::bus::BusDevice;

/// Adapts an [`IrqLine`] to vm-superio's trigger.
pub struct IrqTrigger(pub Arc<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.trigger();
        Ok(())
    }
}

/// Where the guest's serial output goes.
pub type SerialOut = Box<dyn Write + Send>;

/// How long a partial line may wait while the guest only polls LSR/MSR.
pub const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(10);
/// Buffered bytes that force a write even without a newline.
const LINE_BUFFER_MAX: usize = 1024;

/// Collects guest output and writes it to the sink a line at a time. Its `flush` is a
/// no-op (vm-superio flushes after every byte); [`LineBuffer::push_out`] really writes.
pub struct LineBuffer {
    pending: Vec<u8>,
    since: Option<Instant>,
    out: SerialOut,
}

impl LineBuffer {
    pub fn new(out: SerialOut) -> Self {
        Self {
            pending: Vec::new(),
            since: None,
            out,
        }
    }

    /// Writes out whatever is pending.
    pub fn push_out(&mut self) -> std::io::Result<()> {
        self.since = None;
        if self.pending.is_empty() {
            return Ok(());
        }
        let r = self
            .out
            .write_all(&self.pending)
            .and_then(|_| self.out.flush());
        self.pending.clear();
        r
    }

    /// Writes out a partial line that has waited at least `delay` by `now`.
    pub fn push_out_if_older(&mut self, delay: Duration, now: Instant) -> std::io::Result<()> {
        match self.since {
            Some(t) if now.saturating_duration_since(t) >= delay => self.push_out(),
            _ => Ok(()),
        }
    }
}

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            self.since = Some(Instant::now());
        }
        self.pending.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.pending.len() >= LINE_BUFFER_MAX {
            self.push_out()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Line status register offset.
const LSR: u8 = 5;
/// Modem status register offset.
const MSR: u8 = 6;

/// The 16550 on the bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, LineBuffer>,
    irq: Arc<dyn IrqLine>,
}

/// The UART's registers and receive FIFO for a saved VM (vm-superio's `SerialState`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SerialSaved {
    divisor: [u8; 2],
    ier: u8,
    iir: u8,
    lcr: u8,
    lsr: u8,
    mcr: u8,
    msr: u8,
    scratch: u8,
    rx_fifo: Vec<u8>,
}

impl SerialDevice {
    pub fn new(irq: Arc<dyn IrqLine>, out: SerialOut) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq.clone()), LineBuffer::new(out)),
            irq,
        }
    }

    /// Sends out pending output on a register access, per the module's policy.
    fn settle_output(&mut self, offset: u8, is_thr_write: bool) {
        let out = self.uart.writer_mut();
        let r = match offset {
            _ if is_thr_write => Ok(()),
            LSR | MSR => out.push_out_if_older(PARTIAL_LINE_DELAY, Instant::now()),
            _ => out.push_out(),
        };
        if let Err(e) = r {
            crate::guest_warn!("serial: output failed: {e}");
        }
    }

    /// Queues host input for the guest; returns how many bytes fitted in the FIFO.
    pub fn enqueue(&mut self, input: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(input.len());
        match self.uart.enqueue_raw_bytes(&input[..room]) {
            Ok(n) => n,
            Err(e) => {
                crate::guest_warn!("serial: input dropped: {e:?}");
                0
            }
        }
    }

    /// Free room in the receive FIFO.
    pub fn fifo_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Writes out pending output.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().push_out();
    }
}

/// Output the guest wrote goes out at save (it belongs to the host side); the registers,
/// the receive FIFO and a pending interrupt come back at restore, the output sink stays
/// the one this process opened.
impl crate::state::Snapshot for SerialDevice {
    fn save_state(&mut self) -> Result<Vec<u8>, crate::state::StateError> {
        self.flush();
        let s = self.uart.state();
        crate::state::encode(
            "serial port",
            &SerialSaved {
                divisor: [s.baud_divisor_low, s.baud_divisor_high],
                ier: s.interrupt_enable,
                iir: s.interrupt_identification,
                lcr: s.line_control,
                lsr: s.line_status,
                mcr: s.modem_control,
                msr: s.modem_status,
                scratch: s.scratch,
                rx_fifo: s.in_buffer,
            },
        )
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::state::StateError> {
        let s: SerialSaved = crate::state::decode("serial port", state)?;
        let fifo = Serial::new(IrqTrigger(Arc::new(super::NoIrq)), std::io::sink()).fifo_capacity();
        if s.rx_fifo.len() > fifo {
            return Err(crate::state::StateError::mismatch(
                "serial port",
                format!("{} bytes in a {fifo}-byte FIFO", s.rx_fifo.len()),
            ));
        }
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.divisor[0],
            baud_divisor_high: s.divisor[1],
            interrupt_enable: s.ier,
            interrupt_identification: s.iir,
            line_control: s.lcr,
            line_status: s.lsr,
            modem_control: s.mcr,
            modem_status: s.msr,
            scratch: s.scratch,
            in_buffer: s.rx_fifo,
        };
        let placeholder = Serial::new(
            IrqTrigger(Arc::new(super::NoIrq)),
            LineBuffer::new(Box::new(std::io::sink())),
        );
        let out = std::mem::replace(&mut self.uart, placeholder).into_writer();
        // Raises the interrupt again when one was pending.
        match Serial::from_state(
            &state,
            IrqTrigger(self.irq.clone()),
            vm_superio::serial::NoEvents,
            out,
        ) {
            Ok(uart) => {
                self.uart = uart;
                Ok(())
            }
            Err(e) => Err(crate::state::StateError::device(
                "serial port",
                format!("{e:?}"),
            )),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            self.settle_output(off, false);
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        // THR is offset 0 unless DLAB (LCR bit 7) selects the divisor latch.
        let dlab = self.uart.read(3) & 0x80 != 0;
        self.settle_output(off, off == 0 && !dlab);
        if let Err(e) = self.uart.write(off, b) {
            // The only failure is the output sink (a closed pipe or socket): the guest keeps
            // running, its output is lost.
            crate::guest_warn!("serial: output failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::testing::RecordingIrq;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_goes_out_a_line_at_a_time() {
        let out = Shared::default();
        let mut s = SerialDevice::new(Arc::new(crate::legacy::NoIrq), Box::new(out.clone()));
        let mut lsr = [0u8];
        for &b in b"ab" {
            s.read(0x3f8, 5, &mut lsr);
            s.write(0x3f8, 0, &[b]);
        }
        assert!(
            out.0.lock().unwrap().is_empty(),
            "a fresh partial line waits"
        );
        s.write(0x3f8, 0, b"\n");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"ab\n");
    }

    #[test]
    fn partial_line_goes_out_on_other_registers_or_when_old() {
        let out = Shared::default();
        let mut s = SerialDevice::new(Arc::new(crate::legacy::NoIrq), Box::new(out.clone()));
        s.write(0x3f8, 0, b"$");
        s.write(0x3f8, 1, &[0]);
        assert_eq!(
            out.0.lock().unwrap().as_slice(),
            b"$",
            "IER write ends a burst"
        );
        s.write(0x3f8, 0, b" ");
        let mut lsr = [0u8];
        s.read(0x3f8, 5, &mut lsr);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"$");
        std::thread::sleep(PARTIAL_LINE_DELAY);
        s.read(0x3f8, 5, &mut lsr);
        assert_eq!(
            out.0.lock().unwrap().as_slice(),
            b"$ ",
            "a polling guest sees it soon"
        );
    }

    #[test]
    fn guest_writes_reach_the_output_and_input_raises_irq() {
        let irq = Arc::new(RecordingIrq::default());
        let out = Shared::default();
        let mut s = SerialDevice::new(irq.clone(), Box::new(out.clone()));
        for &b in b"hi\n" {
            s.write(0x3f8, 0, &[b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        // LSR: transmitter empty.
        let mut lsr = [0u8];
        s.read(0x3f8, 5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
        // Enable the receive-data interrupt, then feed a byte.
        s.write(0x3f8, 1, &[0x01]);
        assert_eq!(s.enqueue(b"x"), 1);
        assert!(*irq.edges.lock().unwrap() >= 1);
        let mut rbr = [0u8];
        s.read(0x3f8, 0, &mut rbr);
        assert_eq!(rbr[0], b'x');
    }

    #[test]
    fn a_restored_uart_reads_back_the_same_and_raises_its_pending_interrupt() {
        use crate::state::Snapshot;
        let mut s = SerialDevice::new(Arc::new(crate::legacy::NoIrq), Box::new(std::io::sink()));
        s.write(0x3f8, 3, &[0x80]);
        s.write(0x3f8, 0, &[0x0c]);
        s.write(0x3f8, 3, &[0x03]);
        s.write(0x3f8, 7, &[0x5a]);
        s.write(0x3f8, 4, &[0x0b]);
        s.write(0x3f8, 1, &[0x01]);
        assert_eq!(s.enqueue(b"ok"), 2);
        let state = s.save_state().unwrap();

        let irq = Arc::new(RecordingIrq::default());
        let out = Shared::default();
        let mut r = SerialDevice::new(irq.clone(), Box::new(out.clone()));
        r.restore_state(&state).unwrap();
        assert!(
            *irq.edges.lock().unwrap() >= 1,
            "receive interrupt pending again"
        );
        for reg in [1u64, 2, 3, 4, 5, 6, 7] {
            let (mut a, mut b) = ([0u8], [0u8]);
            s.read(0x3f8, reg, &mut a);
            r.read(0x3f8, reg, &mut b);
            assert_eq!(a, b, "register {reg}");
        }
        let mut rbr = [0u8];
        r.read(0x3f8, 0, &mut rbr);
        assert_eq!(rbr[0], b'o');
        r.read(0x3f8, 0, &mut rbr);
        assert_eq!(rbr[0], b'k');
        r.write(0x3f8, 3, &[0x80]);
        r.read(0x3f8, 0, &mut rbr);
        assert_eq!(rbr[0], 0x0c, "divisor latch");
        r.write(0x3f8, 3, &[0x03]);
        for &b in b"on\n" {
            r.write(0x3f8, 0, &[b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"on\n");

        assert!(r.restore_state(&state[..state.len() - 1]).is_err());
        let mut long = state.clone();
        long.push(0);
        assert!(r.restore_state(&long).is_err());
        r.write(0x3f8, 7, &[0x11]);
        let mut scr = [0u8];
        r.read(0x3f8, 7, &mut scr);
        assert_eq!(scr[0], 0x11, "still a working UART");
    }
}
