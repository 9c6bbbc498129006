//! Port 0x80, the POST-code port: firmware and kernels write progress bytes and use it as
//! an I/O delay. Writes are recorded (the last code is kept for debugging) and reads return
//! the last code, like a POST card.

use crate::bus::BusDevice;

/// The port 0x80 sink.
#[derive(Debug, Default)]
pub struct DebugPort {
    last: u8,
}

impl DebugPort {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last byte written.
    pub fn last_code(&self) -> u8 {
        self.last
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(self.last);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            self.last = b;
            log::trace!("POST code {b:#04x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_code() {
        let mut d = DebugPort::new();
        d.write(0x80, 0, &[0x12]);
        d.write(0x80, 0, &[0x34]);
        let mut b = [0u8];
        d.read(0x80, 0, &mut b);
        assert_eq!((d.last_code(), b[0]), (0x34, 0x34));
    }
}
