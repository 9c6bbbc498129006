//! COM1: a 16550A UART (vm-superio's model) on the port bus.
//!
//! Guest writes to THR go straight to the output sink (stdout, a file, a unix socket
//! client); bytes from the host side are queued with [`SerialDevice::enqueue`] and raise the
//! receive interrupt. The interrupt leaves through an [`IrqLine`] (an irqfd on IRQ 4).

use std::io::Write;
use std::sync::Arc;

use vm_superio::{Serial, Trigger};

use super::IrqLine;
use crate::devices::bus::BusDevice;

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

/// The 16550 on the bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, SerialOut>,
}

impl SerialDevice {
    pub fn new(irq: Arc<dyn IrqLine>, out: SerialOut) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
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

    /// Flushes the output sink.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.uart.write(off, b) {
            // The only failure is the output sink (a closed pipe or socket): the guest keeps
            // running, its output is lost.
            crate::guest_warn!("serial: output failed: {e:?}");
        }
        if off == 0 && b == b'\n' {
            let _ = self.uart.writer_mut().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::testing::RecordingIrq;
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
