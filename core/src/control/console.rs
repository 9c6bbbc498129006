//! Attaching a terminal to a VM's serial console socket (`hospesctl console NAME`).
//!
//! Data flow: [`attach`] connects to `serial.sock`, puts the terminal in raw mode (so
//! every key, Ctrl-C included, goes to the guest; restored on return, also on error),
//! and [`pump`]s bytes both ways with `poll(2)` until the user types the escape
//! character (Ctrl-], as in `virsh console`), the helper closes the socket, or input
//! ends.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::poll::wait_either;

/// The default escape character: Ctrl-] (0x1d).
pub const ESCAPE: u8 = 0x1d;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The serial socket did not accept the connection.
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The terminal could not be switched to raw mode.
    #[error("cannot set up the terminal")]
    Terminal(#[source] io::Error),
    /// Copying bytes failed.
    #[error("console I/O failed")]
    Io(#[from] io::Error),
}

/// Why the console session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleExit {
    /// The user typed the escape character.
    Escape,
    /// The helper closed the serial socket (the VM stopped).
    RemoteClosed,
    /// Input reached end of file (e.g. piped input ran out).
    InputClosed,
}

/// Connects the calling process' stdin and stdout to the serial socket at `path`.
/// If stdin is a terminal it is put in raw mode for the session and restored after.
pub fn attach(path: &Path) -> Result<ConsoleExit, ConsoleError> {
    let stream = UnixStream::connect(path).map_err(|source| ConsoleError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let stdin = io::stdin();
    let _raw = RawTerminal::enable(stdin.as_fd()).map_err(ConsoleError::Terminal)?;
    let mut stdout = io::stdout().lock();
    pump(stdin.as_fd(), &mut stdout, stream, Some(ESCAPE))
}

/// Copies `input` to `stream` and `stream` to `output` until `escape` is read from
/// `input` (bytes before it are still sent), `stream` closes, or `input` ends.
pub fn pump(
    input: BorrowedFd<'_>,
    output: &mut dyn Write,
    mut stream: UnixStream,
    escape: Option<u8>,
) -> Result<ConsoleExit, ConsoleError> {
    let mut input_file = File::from(input.try_clone_to_owned()?);
    let mut buf = [0u8; 4096];
    loop {
        let (input_ready, stream_ready) = wait_either(input, stream.as_fd())?;
        if stream_ready {
            let n = read_retrying(&mut stream, &mut buf)?;
            if n == 0 {
                return Ok(ConsoleExit::RemoteClosed);
            }
            output.write_all(&buf[..n])?;
            output.flush()?;
        }
        if input_ready {
            let n = read_retrying(&mut input_file, &mut buf)?;
            if n == 0 {
                let _ = stream.shutdown(std::net::Shutdown::Write);
                return Ok(ConsoleExit::InputClosed);
            }
            let data = &buf[..n];
            match escape.and_then(|e| data.iter().position(|&b| b == e)) {
                Some(pos) => {
                    stream.write_all(&data[..pos])?;
                    return Ok(ConsoleExit::Escape);
                }
                None => stream.write_all(data)?,
            }
        }
    }
}

fn read_retrying(source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match source.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Raw mode on a terminal for as long as the value lives.
pub struct RawTerminal {
    fd: i32,
    saved: libc::termios,
}

impl RawTerminal {
    /// Switches `fd` to raw mode. Returns `None` when `fd` is not a terminal.
    pub fn enable(fd: BorrowedFd<'_>) -> io::Result<Option<Self>> {
        let fd = fd.as_raw_fd();
        // SAFETY: isatty only inspects the descriptor, which `fd` borrows.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain old data; all-zero is a valid value to be overwritten.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is an open terminal and `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only modifies the termios struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `fd` is an open terminal and `raw` a termios derived from its own.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(Self { fd, saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from this same descriptor in `enable`; the
        // caller keeps the terminal open while this guard lives.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake terminal: the test writes "keystrokes" to `keys`, `pump` reads `input`.
    fn terminal() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn forwards_keys_and_stops_at_the_escape_character() {
        let (mut keys, input) = terminal();
        let (serial, mut guest) = UnixStream::pair().unwrap();
        keys.write_all(b"ls\r\x1dnot sent").unwrap();
        let mut output = Vec::new();
        let exit = pump(input.as_fd(), &mut output, serial, Some(ESCAPE)).unwrap();
        assert_eq!(exit, ConsoleExit::Escape);
        guest.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let _ = guest.read_to_end(&mut got);
        assert_eq!(got, b"ls\r");
    }

    #[test]
    fn copies_guest_output_until_the_helper_closes_the_socket() {
        let (_keys, input) = terminal();
        let (serial, mut guest) = UnixStream::pair().unwrap();
        guest.write_all(b"login: ").unwrap();
        drop(guest);
        let mut output = Vec::new();
        let exit = pump(input.as_fd(), &mut output, serial, Some(ESCAPE)).unwrap();
        assert_eq!(exit, ConsoleExit::RemoteClosed);
        assert_eq!(output, b"login: ");
    }

    #[test]
    fn ends_when_input_ends() {
        let (keys, input) = terminal();
        let (serial, _guest) = UnixStream::pair().unwrap();
        drop(keys);
        let mut output = Vec::new();
        let exit = pump(input.as_fd(), &mut output, serial, None).unwrap();
        assert_eq!(exit, ConsoleExit::InputClosed);
    }

    #[test]
    fn raw_mode_is_skipped_for_a_non_terminal() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(RawTerminal::enable(a.as_fd()).unwrap().is_none());
    }
}
