//! The firmware debug console at port 0x402 (QEMU's "debugcon"): SeaBIOS and OVMF write
//! their boot log there one byte at a time. SeaBIOS only logs to it when a read of the
//! port returns 0xe9, which this device answers.
//!
//! Data flow: bytes collect into a line; each finished line goes to the helper's log
//! (`helper.log` for a VM started by the app or `hospesctl`) as `firmware: <line>`, so a
//! boot that stops early says where. The guest controls the bytes, so lines are cut at
//! [`MAX_LINE`] characters, non-printable bytes are escaped, and after [`MAX_LINES`] lines
//! per boot the rest is counted, not logged.

use crate::bus::BusDevice;

/// What a read of the port returns: the "debugcon present" answer firmware checks for.
pub const PRESENT: u8 = 0xe9;
/// Longest line logged; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 240;
/// Lines logged per boot.
pub const MAX_LINES: usize = 2000;

/// Where finished lines go (the helper's logger; a list in tests).
pub trait LineSink: Send {
    fn line(&mut self, line: &str);
}

/// Lines to the `log` crate at info level.
pub struct LogSink;

impl LineSink for LogSink {
    fn line(&mut self, line: &str) {
        log::info!("firmware: {line}");
    }
}

/// The port 0x402 console.
pub struct FirmwareLog {
    sink: Box<dyn LineSink>,
    line: String,
    lines: usize,
    dropped: usize,
}

impl FirmwareLog {
    pub fn new(sink: Box<dyn LineSink>) -> Self {
        Self {
            sink,
            line: String::new(),
            lines: 0,
            dropped: 0,
        }
    }

    /// Lines not logged because the per-boot budget was spent.
    pub fn dropped_lines(&self) -> usize {
        self.dropped
    }

    fn push(&mut self, b: u8) {
        match b {
            b'\n' => self.finish_line(),
            b'\r' => {}
            _ if self.line.len() >= MAX_LINE => {}
            0x20..=0x7e | b'\t' => self.line.push(char::from(b)),
            _ => self.line.push_str(&format!("\\x{b:02x}")),
        }
    }

    fn finish_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if self.lines < MAX_LINES {
            self.lines += 1;
            self.sink.line(&line);
            if self.lines == MAX_LINES {
                self.sink
                    .line("(firmware log: line budget spent, the rest is not logged)");
            }
        } else {
            self.dropped += 1;
        }
    }
}

impl Drop for FirmwareLog {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.finish_line();
        }
    }
}

impl BusDevice for FirmwareLog {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(PRESENT);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        // A wider write is one byte per access on real hardware; firmware writes bytes.
        if let Some(&b) = data.first() {
            self.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Lines(Arc<Mutex<Vec<String>>>);

    impl LineSink for Lines {
        fn line(&mut self, line: &str) {
            self.0.lock().unwrap().push(line.to_owned());
        }
    }

    fn device() -> (FirmwareLog, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        (FirmwareLog::new(Box::new(Lines(lines.clone()))), lines)
    }

    fn write_str(d: &mut FirmwareLog, s: &[u8]) {
        for &b in s {
            d.write(0x402, 0, &[b]);
        }
    }

    #[test]
    fn answers_the_presence_check_and_logs_whole_lines() {
        let (mut d, lines) = device();
        let mut b = [0u8];
        d.read(0x402, 0, &mut b);
        assert_eq!(b[0], 0xe9);
        write_str(&mut d, b"SeaBIOS (version 1.16)\r\nBooting from Hard");
        assert_eq!(*lines.lock().unwrap(), ["SeaBIOS (version 1.16)"]);
        drop(d);
        assert_eq!(lines.lock().unwrap()[1], "Booting from Hard");
    }

    #[test]
    fn escapes_control_bytes_and_cuts_long_lines() {
        let (mut d, lines) = device();
        write_str(&mut d, b"a\x1bb\n");
        write_str(&mut d, &[b'x'; MAX_LINE + 50]);
        write_str(&mut d, b"\n");
        let lines = lines.lock().unwrap();
        assert_eq!(lines[0], "a\\x1bb");
        assert_eq!(lines[1].len(), MAX_LINE);
    }

    #[test]
    fn stops_logging_after_the_line_budget() {
        let (mut d, lines) = device();
        for _ in 0..MAX_LINES + 10 {
            write_str(&mut d, b"x\n");
        }
        assert_eq!(lines.lock().unwrap().len(), MAX_LINES + 1);
        assert_eq!(d.dropped_lines(), 10);
    }
}
