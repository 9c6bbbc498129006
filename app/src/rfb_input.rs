//! The guest's keyboard and pointer: a second RFB connection to the helper's display
//! socket that only sends input. vnc-rs (the picture connection) has no QEMU Extended Key
//! Event, so keys would reach the guest as keysyms through the helper's US map; this
//! connection sends each key's scancode instead, so the guest's own layout applies.
//!
//! [`InputChannel::connect`] does the RFB 3.8 handshake (security None: the socket is the
//! user's own unix socket), shares the desktop, announces the QEMU Extended Key Event
//! pseudo-encoding (-258) and asks for an incremental update of one pixel: the server
//! acknowledges the encoding with a pseudo-rectangle in its answer. A reader task reads
//! and discards whatever the server sends (that update, and any later message) and reports
//! the acknowledgement and the end of the connection. This connection never asks for
//! anything more, so the server does not send pictures down it.
//!
//! Keys with a scancode go as Extended Key Events once the acknowledgement arrived; a key
//! without one, or every key when none arrived within [`ACK_WAIT`] of connecting, goes as
//! a plain KeyEvent with its keysym. Pointer events go down the same connection, so keys
//! and clicks reach the guest in the order they were made.
//!
//! Wire format: RFC 6143 §7.5 (client messages), §7.6 (server messages); the QEMU
//! extension is client message 255 subtype 0 (down flag u16, keysym u32, scancode u32).

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long after connecting keys wait for the server to acknowledge Extended Key Events
/// before they go as keysyms for the rest of the connection.
const ACK_WAIT: Duration = Duration::from_secs(1);

/// QEMU Extended Key Event pseudo-encoding.
const ENC_QEMU_EXT_KEY: i32 = -258;

/// Longest text (a refusal reason, the desktop name) read from the server.
const MAX_TEXT: u32 = 64 * 1024;

/// Why the input connection failed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The socket did not connect.
    #[error("cannot connect the input channel to {path}")]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading or writing failed, or the server closed the connection mid-message.
    #[error("input channel")]
    Io(#[from] io::Error),
    /// The server's ProtocolVersion is not RFB 3.8 or later.
    #[error("the display server speaks {0:?}, not RFB 3.8")]
    Version(String),
    /// The server refused the connection or the security handshake.
    #[error("the display server refused the input channel: {0}")]
    Refused(String),
    /// The server wants authentication.
    #[error("the display server offers no connection without a password")]
    NoSecurityNone,
    /// A text longer than [`MAX_TEXT`].
    #[error("the display server sent a text of {0} bytes")]
    TextTooLong(u32),
    /// A pixel size no RFB server uses.
    #[error("the display server uses {0} bits per pixel")]
    BitsPerPixel(u8),
    /// A server message type this client does not know.
    #[error("the display server sent unknown message type {0}")]
    UnknownMessage(u8),
    /// A rectangle encoding this client did not announce and cannot skip.
    #[error("the display server sent a rectangle in unknown encoding {0}")]
    UnknownEncoding(i32),
    /// The server closed the connection.
    #[error("the display server closed the input channel")]
    Closed,
}

/// Whether keys go as scancodes.
enum Ack {
    /// Not known yet: the reader fires `rx` on the acknowledgement.
    Waiting {
        rx: oneshot::Receiver<()>,
        deadline: Instant,
    },
    /// The server acknowledged Extended Key Events.
    Scancodes,
    /// It did not in time: keysyms only.
    Keysyms,
}

/// The input connection; dropping it closes it.
pub struct InputChannel {
    writer: OwnedWriteHalf,
    ack: Ack,
    ended: Option<oneshot::Receiver<InputError>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for InputChannel {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl InputChannel {
    /// Connects to the RFB server at `path` and starts its reader task (on the current
    /// tokio runtime).
    pub async fn connect(path: &Path) -> Result<InputChannel, InputError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| InputError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        InputChannel::start(stream).await
    }

    /// Runs the handshake on `stream`, asks for the acknowledgement and starts the reader.
    async fn start(stream: UnixStream) -> Result<InputChannel, InputError> {
        let (read, mut writer) = stream.into_split();
        let mut read = BufReader::new(read);
        let bits_per_pixel = handshake(&mut read, &mut writer).await?;
        let mut hello = set_encodings(&[ENC_QEMU_EXT_KEY]);
        hello.extend_from_slice(&update_request(true, 0, 0, 1, 1));
        writer.write_all(&hello).await?;
        let (ack_tx, rx) = oneshot::channel();
        let (ended_tx, ended) = oneshot::channel();
        let reader = tokio::spawn(async move {
            let err = read_loop(&mut read, bits_per_pixel, ack_tx).await;
            let _ = ended_tx.send(err);
        });
        Ok(InputChannel {
            writer,
            ack: Ack::Waiting {
                rx,
                deadline: Instant::now() + ACK_WAIT,
            },
            ended: Some(ended),
            reader,
        })
    }

    /// Sends a key: by `scancode` (qnum) when there is one and the server takes them,
    /// else by `keysym`.
    pub async fn key(
        &mut self,
        keysym: u32,
        scancode: Option<u16>,
        down: bool,
    ) -> Result<(), InputError> {
        let message = match scancode {
            Some(code) if self.scancodes().await => ext_key_event(keysym, code, down).to_vec(),
            _ => key_event(keysym, down).to_vec(),
        };
        self.writer.write_all(&message).await?;
        Ok(())
    }

    /// Sends the pointer at (`x`, `y`) with the RFB button mask `buttons`.
    pub async fn pointer(&mut self, x: u16, y: u16, buttons: u8) -> Result<(), InputError> {
        self.writer.write_all(&pointer_event(x, y, buttons)).await?;
        Ok(())
    }

    /// Whether keys go as scancodes; waits for the acknowledgement until [`ACK_WAIT`]
    /// after connecting.
    pub async fn scancodes(&mut self) -> bool {
        if let Ack::Waiting { rx, deadline } = &mut self.ack {
            let acked = matches!(tokio::time::timeout_at(*deadline, rx).await, Ok(Ok(())));
            if !acked {
                log::info!(
                    "the display server did not acknowledge QEMU extended key events: \
                     sending keysyms"
                );
            }
            self.ack = if acked { Ack::Scancodes } else { Ack::Keysyms };
        }
        matches!(self.ack, Ack::Scancodes)
    }

    /// Resolves when the connection has ended, with why; pending forever after that.
    /// Cancel-safe (for `select!`).
    pub async fn ended(&mut self) -> InputError {
        let Some(ended) = &mut self.ended else {
            return std::future::pending().await;
        };
        let err = ended.await.unwrap_or(InputError::Closed);
        self.ended = None;
        err
    }
}

/// The client side of the RFB 3.8 handshake with security None, through ServerInit;
/// returns the server's bits per pixel (the size of Raw pixels it may send).
async fn handshake<R>(read: &mut R, writer: &mut OwnedWriteHalf) -> Result<u8, InputError>
where
    R: AsyncRead + Unpin,
{
    let mut version = [0u8; 12];
    read.read_exact(&mut version).await?;
    if !supports_rfb_3_8(&version) {
        return Err(InputError::Version(
            String::from_utf8_lossy(&version).trim_end().to_owned(),
        ));
    }
    writer.write_all(b"RFB 003.008\n").await?;
    let count = read.read_u8().await?;
    if count == 0 {
        return Err(InputError::Refused(read_text(read).await?));
    }
    let mut types = vec![0u8; usize::from(count)];
    read.read_exact(&mut types).await?;
    if !types.contains(&1) {
        return Err(InputError::NoSecurityNone);
    }
    writer.write_all(&[1]).await?;
    if read.read_u32().await? != 0 {
        return Err(InputError::Refused(read_text(read).await?));
    }
    // ClientInit: share the desktop with the picture connection.
    writer.write_all(&[1]).await?;
    // ServerInit: width, height, pixel format (16 bytes, bits per pixel first), name.
    let mut init = [0u8; 20];
    read.read_exact(&mut init).await?;
    let bits_per_pixel = init[4];
    if !matches!(bits_per_pixel, 8 | 16 | 32) {
        return Err(InputError::BitsPerPixel(bits_per_pixel));
    }
    read_text(read).await?;
    Ok(bits_per_pixel)
}

/// Whether a ProtocolVersion ("RFB xxx.yyy\n") is 3.8 or later.
fn supports_rfb_3_8(version: &[u8; 12]) -> bool {
    let Ok(text) = std::str::from_utf8(version) else {
        return false;
    };
    let Some((major, minor)) = text
        .strip_prefix("RFB ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|rest| rest.split_once('.'))
    else {
        return false;
    };
    match (major.parse::<u32>(), minor.parse::<u32>()) {
        (Ok(major), Ok(minor)) => (major, minor) >= (3, 8),
        _ => false,
    }
}

/// A u32 length and that many bytes of text.
async fn read_text<R: AsyncRead + Unpin>(read: &mut R) -> Result<String, InputError> {
    let len = read.read_u32().await?;
    if len > MAX_TEXT {
        return Err(InputError::TextTooLong(len));
    }
    let mut text = vec![0u8; len as usize];
    read.read_exact(&mut text).await?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Reads server messages until the connection fails; fires `ack` on the Extended Key
/// Event acknowledgement. Returns why it stopped.
async fn read_loop<R: AsyncRead + Unpin>(
    read: &mut R,
    bits_per_pixel: u8,
    ack: oneshot::Sender<()>,
) -> InputError {
    let mut ack = Some(ack);
    loop {
        match read_message(read, bits_per_pixel).await {
            Ok(message) => {
                if message.ext_key_ack
                    && let Some(ack) = ack.take()
                {
                    let _ = ack.send(());
                }
            }
            Err(InputError::Io(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                return InputError::Closed;
            }
            Err(err) => return err,
        }
    }
}

/// What a server message said that this client cares about.
#[derive(Debug, Default, PartialEq, Eq)]
struct ServerMessage {
    /// A FramebufferUpdate acknowledged QEMU Extended Key Events.
    ext_key_ack: bool,
}

/// Reads one server message, skipping its payload.
async fn read_message<R: AsyncRead + Unpin>(
    read: &mut R,
    bits_per_pixel: u8,
) -> Result<ServerMessage, InputError> {
    let mut message = ServerMessage::default();
    match read.read_u8().await? {
        // FramebufferUpdate: padding, rectangle count, rectangles.
        0 => {
            read.read_u8().await?;
            let rects = read.read_u16().await?;
            for _ in 0..rects {
                if skip_rect(read, bits_per_pixel).await? == ENC_QEMU_EXT_KEY {
                    message.ext_key_ack = true;
                }
            }
        }
        // SetColourMapEntries: padding, first colour, count, 6 bytes per colour.
        1 => {
            skip(read, 3).await?;
            let colours = read.read_u16().await?;
            skip(read, u64::from(colours) * 6).await?;
        }
        // Bell.
        2 => {}
        // ServerCutText: padding, length, text.
        3 => {
            skip(read, 3).await?;
            let len = read.read_u32().await?;
            skip(read, u64::from(len)).await?;
        }
        // EndOfContinuousUpdates.
        150 => {}
        other => return Err(InputError::UnknownMessage(other)),
    }
    Ok(message)
}

/// Reads one rectangle and its payload; returns its encoding.
async fn skip_rect<R: AsyncRead + Unpin>(
    read: &mut R,
    bits_per_pixel: u8,
) -> Result<i32, InputError> {
    let mut header = [0u8; 12];
    read.read_exact(&mut header).await?;
    let width = u64::from(u16::from_be_bytes([header[4], header[5]]));
    let height = u64::from(u16::from_be_bytes([header[6], header[7]]));
    let encoding = i32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    let pixel = u64::from(bits_per_pixel / 8);
    let payload = match encoding {
        // Raw.
        0 => width * height * pixel,
        // CopyRect: the source position.
        1 => 4,
        // ZRLE: a length, then that many bytes.
        16 => u64::from(read.read_u32().await?),
        // Cursor: pixels, then a bit mask padded to whole bytes per row.
        -239 => width * height * pixel + width.div_ceil(8) * height,
        // ExtendedDesktopSize: screen count, padding, 16 bytes per screen.
        -308 => {
            let screens = read.read_u8().await?;
            skip(read, 3).await?;
            u64::from(screens) * 16
        }
        // DesktopSize, QEMU pointer motion and Extended Key Event: no payload.
        -223 | -257 | ENC_QEMU_EXT_KEY => 0,
        other => return Err(InputError::UnknownEncoding(other)),
    };
    skip(read, payload).await?;
    Ok(encoding)
}

/// Reads and drops `len` bytes.
async fn skip<R: AsyncRead + Unpin>(read: &mut R, len: u64) -> Result<(), InputError> {
    let copied = tokio::io::copy(&mut read.take(len), &mut tokio::io::sink()).await?;
    if copied < len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

/// SetEncodings (message 2).
fn set_encodings(encodings: &[i32]) -> Vec<u8> {
    let mut message = vec![2, 0];
    // At most a handful of encodings: the count always fits.
    let count = u16::try_from(encodings.len()).unwrap_or(u16::MAX);
    message.extend_from_slice(&count.to_be_bytes());
    for encoding in encodings.iter().take(usize::from(count)) {
        message.extend_from_slice(&encoding.to_be_bytes());
    }
    message
}

/// FramebufferUpdateRequest (message 3).
fn update_request(incremental: bool, x: u16, y: u16, width: u16, height: u16) -> [u8; 10] {
    let mut message = [3, u8::from(incremental), 0, 0, 0, 0, 0, 0, 0, 0];
    for (i, value) in [x, y, width, height].into_iter().enumerate() {
        message[2 + i * 2..4 + i * 2].copy_from_slice(&value.to_be_bytes());
    }
    message
}

/// KeyEvent (message 4).
fn key_event(keysym: u32, down: bool) -> [u8; 8] {
    let mut message = [4, u8::from(down), 0, 0, 0, 0, 0, 0];
    message[4..].copy_from_slice(&keysym.to_be_bytes());
    message
}

/// PointerEvent (message 5).
fn pointer_event(x: u16, y: u16, buttons: u8) -> [u8; 6] {
    let mut message = [5, buttons, 0, 0, 0, 0];
    message[2..4].copy_from_slice(&x.to_be_bytes());
    message[4..].copy_from_slice(&y.to_be_bytes());
    message
}

/// QEMU Extended Key Event (message 255, subtype 0).
fn ext_key_event(keysym: u32, scancode: u16, down: bool) -> [u8; 12] {
    let mut message = [255, 0, 0, u8::from(down), 0, 0, 0, 0, 0, 0, 0, 0];
    message[4..8].copy_from_slice(&keysym.to_be_bytes());
    message[8..].copy_from_slice(&u32::from(scancode).to_be_bytes());
    message
}

#[cfg(test)]
mod tests;
