//! One RFB connection to a helper's display socket, run by the `vnc-rs` client on a
//! tokio runtime in a thread of its own. No GTK.
//!
//! Frames go out through a callback as [`FrameEvent`]s (the VM view forwards them to the
//! main loop); keyboard, pointer and resize requests come in through [`Session::send`].
//! The session asks for an incremental update every 16 ms; the server answers when it has
//! something to send, so an idle guest costs nothing but the requests.
//!
//! Keys and the pointer go down a second connection to the same socket, the
//! [`InputChannel`], which sends keys as scancodes (vnc-rs has no QEMU Extended Key Event);
//! resize requests go through vnc-rs. When either connection ends, the session ends.
//!
//! A resize request waits until the server has told its layout (vnc-rs refuses one
//! before) and until the previous one was answered: vnc-rs gives up resizing for the
//! rest of a connection whose request was cancelled, so the last size asked for waits
//! its turn instead of replacing the one in flight. vnc-rs also gives up when the answer
//! is not the size it asked for (the guest picked another one, which the helper reports
//! as a success with the size shown) or does not come within five seconds; the session
//! then opens a new picture connection, which starts with the layout as it is, so the
//! next window size is asked for again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use vnc::{PixelFormat, ResizeError, VncConnector, VncEncoding, VncError, VncEvent, X11Event};

use crate::framebuffer::Rect;
use crate::rfb_input::InputChannel;
use crate::vm_control::error_chain;

/// How often the session asks for an incremental update.
const REFRESH: Duration = Duration::from_millis(16);

/// What the session reports.
#[derive(Debug)]
pub enum FrameEvent {
    /// The screen has this size now (all pixels follow).
    Resolution(u32, u32),
    /// New BGRA pixels for a rectangle.
    Pixels(Rect, Vec<u8>),
    /// Copy the rectangle's size from (x, y) to the rectangle.
    Copy(Rect, u32, u32),
    /// The connection ended; the text says why when it failed.
    Closed(Option<String>),
}

/// What the view sends.
#[derive(Debug, Clone, Copy)]
pub enum InputEvent {
    /// A key: by scancode when it has one, else by X11 keysym.
    Key {
        /// The keysym (GDK key values are X11 keysyms).
        keysym: u32,
        /// The XT scancode in QEMU's qnum form (see [`crate::keymap`]).
        scancode: Option<u16>,
        /// Pressed or released.
        down: bool,
    },
    /// The pointer at a framebuffer position with a button mask (bit 0 left, 1 middle,
    /// 2 right, 3/4 wheel up/down).
    Pointer {
        /// Column.
        x: u16,
        /// Row.
        y: u16,
        /// RFB button mask.
        buttons: u8,
    },
    /// Ask the guest for this resolution (ExtendedDesktopSize).
    Resize {
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
}

/// A running session; dropping it ends the connection.
pub struct Session {
    input: mpsc::UnboundedSender<InputEvent>,
}

impl Session {
    /// Queues input for the guest; false when the session has ended.
    pub fn send(&self, event: InputEvent) -> bool {
        self.input.send(event).is_ok()
    }
}

/// Connects to the RFB server at `socket` on a new thread. `report` gets every frame
/// event and returns false when nobody listens any more, which ends the session.
pub fn start(
    socket: PathBuf,
    report: impl FnMut(FrameEvent) -> bool + Send + 'static,
) -> std::io::Result<Session> {
    let (input, inputs) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("vnc".into())
        .spawn(move || run_thread(socket, inputs, report))?;
    Ok(Session { input })
}

fn run_thread(
    socket: PathBuf,
    inputs: mpsc::UnboundedReceiver<InputEvent>,
    mut report: impl FnMut(FrameEvent) -> bool,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            report(FrameEvent::Closed(Some(err.to_string())));
            return;
        }
    };
    let result = runtime.block_on(run(socket, inputs, &mut report));
    report(FrameEvent::Closed(result.err()));
}

/// Opens the picture connection: vnc-rs with the view's encodings and pixel format.
async fn connect_picture(socket: &Path) -> Result<vnc::VncClient, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|err| format!("{}: {err}", socket.display()))?;
    VncConnector::new(stream)
        .set_auth_method(async { Ok::<_, VncError>(String::new()) })
        .add_encoding(VncEncoding::Zrle)
        .add_encoding(VncEncoding::CopyRect)
        .add_encoding(VncEncoding::Raw)
        .add_encoding(VncEncoding::DesktopSizePseudo)
        .add_encoding(VncEncoding::ExtendedDesktopSizePseudo)
        .allow_shared(true)
        .set_pixel_format(PixelFormat::bgra())
        .build()
        .map_err(|err| error_chain(&err))?
        .try_start()
        .await
        .map_err(|err| error_chain(&err))?
        .finish()
        .map_err(|err| error_chain(&err))
}

async fn run(
    socket: PathBuf,
    mut inputs: mpsc::UnboundedReceiver<InputEvent>,
    report: &mut impl FnMut(FrameEvent) -> bool,
) -> Result<(), String> {
    let mut client = connect_picture(&socket).await?;
    let mut keyboard = InputChannel::connect(&socket)
        .await
        .map_err(|err| error_chain(&err))?;
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut resize = PendingResize::default();
    loop {
        tokio::select! {
            event = client.recv_event() => {
                let event = event.map_err(|err| error_chain(&err))?;
                let Some(frame) = translate(event)? else { continue };
                if !report(frame) {
                    break;
                }
            }
            input = inputs.recv() => {
                let Some(input) = input else { break };
                match input {
                    InputEvent::Key { keysym, scancode, down } => {
                        keyboard.key(keysym, scancode, down).await
                            .map_err(|err| error_chain(&err))?;
                    }
                    InputEvent::Pointer { x, y, buttons } => {
                        keyboard.pointer(x, y, buttons).await
                            .map_err(|err| error_chain(&err))?;
                    }
                    InputEvent::Resize { width, height } => resize.wanted = Some((width, height)),
                }
            }
            err = keyboard.ended() => return Err(error_chain(&err)),
            _ = tick.tick() => {
                if resize.connection_gave_up().await {
                    let _ = client.close().await;
                    client = connect_picture(&socket).await?;
                }
                resize.dispatch(&client);
                client.input(X11Event::Refresh).await.map_err(|err| error_chain(&err))?;
            }
        }
    }
    let _ = client.close().await;
    Ok(())
}

/// The size the view last asked for and the request in flight.
#[derive(Default)]
struct PendingResize {
    wanted: Option<(u16, u16)>,
    in_flight: Option<tokio::task::JoinHandle<ResizeOutcome>>,
}

/// How a resize request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResizeOutcome {
    /// The guest shows the size, or refused it; the connection can ask again.
    Settled,
    /// vnc-rs refuses any further request on this connection.
    ConnectionGaveUp,
}

impl ResizeOutcome {
    fn of(result: &Result<vnc::DesktopLayout, ResizeError>) -> ResizeOutcome {
        match result {
            Err(ResizeError::Uncertain | ResizeError::Timeout) => ResizeOutcome::ConnectionGaveUp,
            _ => ResizeOutcome::Settled,
        }
    }
}

impl PendingResize {
    /// Takes the outcome of a finished request: true when vnc-rs gave up resizing on this
    /// connection, which only a new connection cures.
    async fn connection_gave_up(&mut self) -> bool {
        let Some(request) = self.in_flight.take_if(|r| r.is_finished()) else {
            return false;
        };
        request
            .await
            .is_ok_and(|outcome| outcome == ResizeOutcome::ConnectionGaveUp)
    }

    /// Sends the wanted size once the server told its layout and no request is in flight.
    /// The answer comes through the event stream, which keeps running meanwhile.
    fn dispatch(&mut self, client: &vnc::VncClient) {
        if self.in_flight.as_ref().is_some_and(|r| !r.is_finished())
            || client.desktop_layout().is_none()
        {
            return;
        }
        let Some((width, height)) = self.wanted.take() else {
            return;
        };
        let client = client.clone();
        self.in_flight = Some(tokio::spawn(async move {
            let result = client.resize_desktop(width, height).await;
            if let Err(err) = &result {
                log::info!("the guest did not take {width}×{height}: {err}");
            }
            ResizeOutcome::of(&result)
        }));
    }
}

/// The frame event for a client event; None for events the view ignores.
fn translate(event: VncEvent) -> Result<Option<FrameEvent>, String> {
    Ok(match event {
        VncEvent::SetResolution(screen) => Some(FrameEvent::Resolution(
            u32::from(screen.width),
            u32::from(screen.height),
        )),
        VncEvent::DesktopUpdate(update) => update.layout.map(|layout| {
            FrameEvent::Resolution(u32::from(layout.width), u32::from(layout.height))
        }),
        VncEvent::RawImage(rect, data) => Some(FrameEvent::Pixels(rect_of(rect), data)),
        VncEvent::Copy(dst, src) => Some(FrameEvent::Copy(
            rect_of(dst),
            u32::from(src.x),
            u32::from(src.y),
        )),
        VncEvent::Error(err) => return Err(err),
        _ => None,
    })
}

fn rect_of(rect: vnc::Rect) -> Rect {
    Rect {
        x: u32::from(rect.x),
        y: u32::from(rect.y),
        width: u32::from(rect.width),
        height: u32::from(rect.height),
    }
}

#[cfg(test)]
mod tests;
