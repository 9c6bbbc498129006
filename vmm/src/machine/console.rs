//! The serial console backends: where COM1's output goes and where its input comes from.
//!
//! `stdio` writes to stdout and reads stdin on a thread; `file:` appends output; `unix:`
//! listens on a socket and serves one client at a time (output to it, input from it);
//! `none` drops output. When stdin is a terminal, [`RawTerminal`] turns off line editing
//! and echo for the run (the guest echoes), leaving Ctrl-C to end the helper.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{MachineError, SerialConfig};
use hospes_devices::bus::lock;
use hospes_devices::legacy::serial::{SerialDevice, SerialOut};

/// Where console input comes from.
pub enum Input {
    Stdin,
    Socket(UnixListener, Arc<Mutex<Option<UnixStream>>>),
}

/// Output to whichever client is connected to the console socket.
struct SocketOut(Arc<Mutex<Option<UnixStream>>>);

impl Write for SocketOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut client = lock(&self.0);
        if let Some(s) = client.as_mut()
            && s.write_all(buf).is_err()
        {
            *client = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether stdin is /dev/null (a scripted or spawned helper): no reader thread then.
fn stdin_is_null() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (Ok(stdin), Ok(null)) = (
        std::fs::metadata("/proc/self/fd/0"),
        std::fs::metadata("/dev/null"),
    ) else {
        return false;
    };
    stdin.file_type().is_char_device() && stdin.rdev() == null.rdev()
}

/// Opens the output side of `cfg` and says where input comes from.
pub fn open(cfg: &SerialConfig) -> Result<(SerialOut, Option<Input>), MachineError> {
    Ok(match cfg {
        SerialConfig::Stdio => {
            let input = (!stdin_is_null()).then_some(Input::Stdin);
            (Box::new(std::io::stdout()), input)
        }
        SerialConfig::None => (Box::new(std::io::sink()), None),
        SerialConfig::File(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| MachineError::SerialOutput {
                    path: path.clone(),
                    source,
                })?;
            (Box::new(f), None)
        }
        SerialConfig::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path).map_err(|source| MachineError::SerialOutput {
                path: path.clone(),
                source,
            })?;
            let client = Arc::new(Mutex::new(None));
            (
                Box::new(SocketOut(client.clone())),
                Some(Input::Socket(l, client)),
            )
        }
    })
}

fn feed(serial: &Mutex<SerialDevice>, mut data: &[u8]) {
    while !data.is_empty() {
        let n = lock(serial).enqueue(data);
        data = &data[n..];
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn pump(mut from: impl Read, serial: &Mutex<SerialDevice>) {
    let mut buf = [0u8; 64];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        feed(serial, &buf[..n]);
    }
}

/// Starts the thread that feeds console input into COM1.
pub fn spawn_input(input: Input, serial: Arc<Mutex<SerialDevice>>) -> Result<(), MachineError> {
    let body = move || match input {
        Input::Stdin => pump(std::io::stdin(), &serial),
        Input::Socket(listener, client) => {
            for conn in listener.incoming().flatten() {
                let Ok(reader) = conn.try_clone() else {
                    continue;
                };
                *lock(&client) = Some(conn);
                pump(reader, &serial);
                *lock(&client) = None;
            }
        }
    };
    std::thread::Builder::new()
        .name("console".into())
        .spawn(body)
        .map(drop)
        .map_err(MachineError::Thread)
}

/// Puts a terminal on stdin into non-canonical, no-echo mode until dropped.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Switches stdin's terminal to character mode; None when stdin is not a terminal.
    pub fn enable() -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid, writable termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::IEXTEN);
        raw.c_iflag &= !(libc::ICRNL | libc::IXON);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: `raw` is a valid termios derived from the current settings.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores settings read from the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}
