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
}

impl SerialDevice {
    pub fn new(irq: Arc<dyn IrqLine>, out: SerialOut) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), LineBuffer::new(out)),
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
}
