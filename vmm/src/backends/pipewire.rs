//! PipeWire, where the sound cards (virtio-snd, Intel HD Audio) play and record.
//!
//! Data flow: [`PipeWire::start`] starts a thread that connects to the user's PipeWire
//! daemon and runs PipeWire's main loop. The device worker calls the [`AudioBackend`]
//! methods, which only send a [`Command`] through PipeWire's loop channel; the loop thread
//! creates, activates, pauses and destroys one `pw_stream` per guest stream. Each stream is
//! a node named after the VM (`node.name` `hospes.<vm>.playback` / `.capture`,
//! description "<vm>"), visible in pavucontrol and `pw-top`. Its process callback runs on
//! PipeWire's real-time thread and only copies between PipeWire's buffer and the stream's
//! [`PcmBuffer`], which never waits (see `devices::audio::pcm`). If no daemon is
//! reachable, [`PipeWire::start`] fails and the helper runs without a sound card.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use pipewire as pw;
use pw::spa;
use pw::spa::param::audio::{AudioFormat, AudioInfoRaw};
use pw::spa::pod::Pod;

use hospes_devices::audio::{
    AudioBackend, AudioError, Direction, PcmBuffer, PcmParams, SampleFormat,
};

/// Errors of the PipeWire backend.
#[derive(Debug, thiserror::Error)]
pub enum PipeWireError {
    #[error("cannot reach a PipeWire daemon (is pipewire running for this user?)")]
    Connect(#[source] pw::Error),
    #[error("cannot set up PipeWire's main loop")]
    Loop(#[source] pw::Error),
    #[error("cannot start the PipeWire thread")]
    Thread(#[source] std::io::Error),
    #[error("the PipeWire thread ended during start-up")]
    Ended,
}

/// What the device worker asks of the PipeWire thread.
enum Command {
    Open {
        id: u32,
        direction: Direction,
        params: PcmParams,
        buffer: Arc<PcmBuffer>,
        /// Told whether PipeWire took the stream.
        reply: std::sync::mpsc::Sender<Result<(), String>>,
    },
    Start(u32),
    Stop(u32),
    Close(u32),
    Quit,
}

/// How long opening a stream may take before the guest is told it failed.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The PipeWire connection of one VM.
pub struct PipeWire {
    commands: pw::channel::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl PipeWire {
    /// Connects to the daemon; streams are named after `vm_name`.
    pub fn start(vm_name: &str) -> Result<Self, PipeWireError> {
        let (commands, receiver) = pw::channel::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = vm_name.to_owned();
        let thread = std::thread::Builder::new()
            .name("pipewire".into())
            .spawn(move || run_loop(&name, receiver, &ready_tx))
            .map_err(PipeWireError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                commands,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(PipeWireError::Ended)
            }
        }
    }

    fn send(&self, c: Command) {
        if self.commands.send(c).is_err() {
            hospes_devices::guest_warn!("snd: the PipeWire thread is gone; sound is off");
        }
    }
}

impl Drop for PipeWire {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Quit);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("PipeWire thread panicked");
        }
    }
}

impl AudioBackend for PipeWire {
    fn open(
        &self,
        id: u32,
        direction: Direction,
        params: PcmParams,
        buffer: Arc<PcmBuffer>,
    ) -> Result<(), AudioError> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.commands
            .send(Command::Open {
                id,
                direction,
                params,
                buffer,
                reply,
            })
            .map_err(|_| AudioError::Unavailable("the PipeWire thread is gone".into()))?;
        // The device worker waits (never a vCPU); PipeWire answers in microseconds.
        match answer.recv_timeout(OPEN_TIMEOUT) {
            Ok(r) => r.map_err(AudioError::Unavailable),
            Err(_) => Err(AudioError::Unavailable(
                "PipeWire did not answer in time".into(),
            )),
        }
    }

    fn start(&self, id: u32) {
        self.send(Command::Start(id));
    }

    fn stop(&self, id: u32) {
        self.send(Command::Stop(id));
    }

    fn close(&self, id: u32) {
        self.send(Command::Close(id));
    }
}

/// A live PipeWire stream and what its callback uses.
struct Live {
    stream: pw::stream::StreamRc,
    _listener: pw::stream::StreamListener<()>,
    running: Arc<AtomicBool>,
}

fn run_loop(
    vm_name: &str,
    receiver: pw::channel::Receiver<Command>,
    ready: &std::sync::mpsc::Sender<Result<(), PipeWireError>>,
) {
    pw::init();
    let setup = || -> Result<_, PipeWireError> {
        let mainloop = pw::main_loop::MainLoopRc::new(None).map_err(PipeWireError::Loop)?;
        let context = pw::context::ContextRc::new(&mainloop, None).map_err(PipeWireError::Loop)?;
        let core = context.connect_rc(None).map_err(PipeWireError::Connect)?;
        Ok((mainloop, context, core))
    };
    let (mainloop, _context, core) = match setup() {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let streams: Rc<RefCell<HashMap<u32, Live>>> = Rc::default();
    let weak_loop = mainloop.downgrade();
    let name = vm_name.to_owned();
    let _attached = receiver.attach(mainloop.loop_(), move |cmd| match cmd {
        Command::Open {
            id,
            direction,
            params,
            buffer,
            reply,
        } => {
            streams.borrow_mut().remove(&id);
            let result = match open_stream(&core, &name, direction, params, buffer) {
                Ok(live) => {
                    streams.borrow_mut().insert(id, live);
                    Ok(())
                }
                Err(e) => Err(format!("PipeWire refused stream {id}: {e}")),
            };
            // The worker may have given up waiting; then nobody needs the answer.
            let _ = reply.send(result);
        }
        Command::Start(id) | Command::Stop(id) => {
            let on = matches!(cmd, Command::Start(_));
            if let Some(live) = streams.borrow().get(&id) {
                live.running.store(on, Ordering::Release);
                if let Err(e) = live.stream.set_active(on) {
                    log::warn!("snd: stream {id}: cannot (de)activate: {e}");
                }
            }
        }
        Command::Close(id) => {
            if let Some(live) = streams.borrow_mut().remove(&id) {
                let _ = live.stream.disconnect();
            }
        }
        Command::Quit => {
            streams.borrow_mut().clear();
            if let Some(l) = weak_loop.upgrade() {
                l.quit();
            }
        }
    });
    let _ = ready.send(Ok(()));
    log::info!("snd: connected to PipeWire");
    mainloop.run();
}

fn audio_format(f: SampleFormat) -> AudioFormat {
    match f {
        SampleFormat::S16 => AudioFormat::S16LE,
        SampleFormat::S32 => AudioFormat::S32LE,
        SampleFormat::Float => AudioFormat::F32LE,
    }
}

/// The `EnumFormat` parameter for `params`.
fn format_pod(params: &PcmParams) -> Result<Vec<u8>, pw::Error> {
    let mut info = AudioInfoRaw::new();
    info.set_format(audio_format(params.format));
    info.set_rate(params.rate);
    info.set_channels(u32::from(params.channels));
    let mut position = [0; spa::param::audio::MAX_CHANNELS];
    if params.channels == 1 {
        position[0] = spa::sys::SPA_AUDIO_CHANNEL_MONO;
    } else {
        position[0] = spa::sys::SPA_AUDIO_CHANNEL_FL;
        position[1] = spa::sys::SPA_AUDIO_CHANNEL_FR;
    }
    info.set_position(position);
    let obj = pw::spa::pod::Value::Object(pw::spa::pod::Object {
        type_: spa::sys::SPA_TYPE_OBJECT_Format,
        id: spa::sys::SPA_PARAM_EnumFormat,
        properties: info.into(),
    });
    pw::spa::pod::serialize::PodSerializer::serialize(std::io::Cursor::new(Vec::new()), &obj)
        .map(|(cursor, _)| cursor.into_inner())
        .map_err(|_| pw::Error::CreationFailed)
}

fn open_stream(
    core: &pw::core::CoreRc,
    vm_name: &str,
    direction: Direction,
    params: PcmParams,
    buffer: Arc<PcmBuffer>,
) -> Result<Live, pw::Error> {
    let (suffix, category) = match direction {
        Direction::Output => ("playback", "Playback"),
        Direction::Input => ("capture", "Capture"),
    };
    let period_frames = params.period_bytes as usize / params.frame_bytes().max(1);
    let node_name = format!("hospes.{vm_name}.{suffix}");
    let latency = format!("{}/{}", period_frames.max(1), params.rate);
    let props = pw::properties::properties! {
        *pw::keys::MEDIA_TYPE => "Audio",
        *pw::keys::MEDIA_CATEGORY => category,
        *pw::keys::MEDIA_ROLE => "Game",
        *pw::keys::NODE_NAME => node_name.as_str(),
        *pw::keys::NODE_DESCRIPTION => vm_name,
        *pw::keys::MEDIA_NAME => suffix,
        *pw::keys::APP_NAME => "Hospes",
        *pw::keys::NODE_LATENCY => latency.as_str(),
    };
    let stream = pw::stream::StreamRc::new(core.clone(), &node_name, props)?;
    let running = Arc::new(AtomicBool::new(false));
    let frame = params.frame_bytes().max(1);
    let flag = running.clone();
    let listener = match direction {
        Direction::Output => stream
            .add_local_listener_with_user_data(())
            .process(move |s, _| {
                let Some(mut b) = s.dequeue_buffer() else {
                    return;
                };
                let requested = b.requested() as usize;
                let Some(d) = b.datas_mut().first_mut() else {
                    return;
                };
                let n = match d.data() {
                    Some(slice) => {
                        let mut n = slice.len() - slice.len() % frame;
                        if requested > 0 {
                            n = n.min(requested.saturating_mul(frame));
                        }
                        buffer.play_into(&mut slice[..n], flag.load(Ordering::Acquire));
                        n
                    }
                    None => 0,
                };
                let chunk = d.chunk_mut();
                *chunk.offset_mut() = 0;
                *chunk.stride_mut() = frame as i32;
                *chunk.size_mut() = n as u32;
            })
            .register()?,
        Direction::Input => stream
            .add_local_listener_with_user_data(())
            .process(move |s, _| {
                let Some(mut b) = s.dequeue_buffer() else {
                    return;
                };
                let Some(d) = b.datas_mut().first_mut() else {
                    return;
                };
                let (off, size) = (d.chunk().offset() as usize, d.chunk().size() as usize);
                if let Some(slice) = d.data()
                    && let Some(rec) = slice.get(off..off.saturating_add(size))
                    && flag.load(Ordering::Acquire)
                {
                    buffer.record_from(rec);
                }
            })
            .register()?,
    };
    let pod = format_pod(&params)?;
    let pod = Pod::from_bytes(&pod).ok_or(pw::Error::CreationFailed)?;
    let dir = match direction {
        Direction::Output => spa::utils::Direction::Output,
        Direction::Input => spa::utils::Direction::Input,
    };
    stream.connect(
        dir,
        None,
        pw::stream::StreamFlags::AUTOCONNECT
            | pw::stream::StreamFlags::MAP_BUFFERS
            | pw::stream::StreamFlags::RT_PROCESS
            | pw::stream::StreamFlags::INACTIVE,
        &mut [pod],
    )?;
    Ok(Live {
        stream,
        _listener: listener,
        running,
    })
}
