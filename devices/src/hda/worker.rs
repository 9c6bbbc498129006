//! The `hda` worker: the thread that moves every running stream's sound.
//!
//! Data flow: the thread sleeps in poll(2) on the controller's wake eventfd (a stream
//! started or stopped), the eventfds of the streams' [`PcmBuffer`]s (the backend played
//! or recorded some) and, while a stream runs without a backend, a short timeout. On each
//! wake it first brings the backend in line with the streams (opening a stream on its
//! first start or a format change, outside the controller lock since opening waits on the
//! backend's thread; starting, pausing), then locks the controller for one
//! [`Hda::service`] pass. The vCPU never waits on the backend.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::stream::Format;
use super::{CAPTURE_RING_MS, Hda, PLAYBACK_RING_MS, STREAMS};
use crate::audio::{AudioBackend, Direction, PcmBuffer};
use crate::bus::lock;

/// The running worker; dropping it stops the thread and closes its backend streams.
pub struct HdaWorker {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HdaWorker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("hda worker panicked");
        }
    }
}

/// Starts the worker of `hda`.
pub fn spawn(hda: &Arc<Mutex<Hda>>) -> std::io::Result<HdaWorker> {
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let hda = hda.clone();
    let stop_rx = stop.clone();
    let thread = std::thread::Builder::new()
        .name("hda".into())
        .spawn(move || run(&hda, &stop_rx))?;
    Ok(HdaWorker {
        stop,
        thread: Some(thread),
    })
}

fn run(hda: &Arc<Mutex<Hda>>, stop: &EventFd) {
    let wake = lock(hda).wake_event();
    loop {
        sync_backend(hda);
        let (timeout, buffers) = {
            let mut h = lock(hda);
            let t = h.service();
            let b: Vec<Arc<PcmBuffer>> = h.links.iter().filter_map(|l| l.buffer.clone()).collect();
            (t, b)
        };
        let mut fds: Vec<libc::pollfd> = [stop.as_raw_fd(), wake.as_raw_fd()]
            .into_iter()
            .chain(buffers.iter().map(|b| b.event().as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = timeout.map_or(-1, |d| d.as_millis().clamp(1, 1000) as i32);
        // SAFETY: `fds` is a live array of `fds.len()` pollfds; the eventfds they name
        // outlive the call (held by `stop`, `wake` and `buffers`).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                log::error!("hda worker: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        if fds[0].revents != 0 {
            break;
        }
        // Drain the counters (nonblocking; an empty one just says so).
        let _ = wake.read();
        for b in &buffers {
            let _ = b.event().read();
        }
    }
    close_all(hda);
}

/// What to change on the backend for one stream.
enum Action {
    Open { id: usize, fmt: u16, output: bool },
    Start(usize),
    Stop(usize),
}

/// Opens, starts and pauses backend streams to match the streams' RUN bits: one round
/// of the bookkeeping the worker does before each [`Hda::service`] pass (public for
/// tests and the fuzz target, which drive the controller without the thread).
pub fn sync_backend(hda: &Arc<Mutex<Hda>>) {
    let (backend, actions) = {
        let mut h = lock(hda);
        let mut actions = Vec::new();
        for i in 0..STREAMS {
            let running = h.active(i);
            let (fmt, output) = (h.streams[i].fmt, h.streams[i].output);
            let link = &mut h.links[i];
            if running {
                if link.fmt != Some(fmt) {
                    actions.push(Action::Open { id: i, fmt, output });
                } else if !link.started {
                    actions.push(Action::Start(i));
                }
            } else {
                link.clock = None;
                if link.started {
                    actions.push(Action::Stop(i));
                }
            }
        }
        (h.backend.clone(), actions)
    };
    for action in actions {
        match action {
            Action::Open { id, fmt, output } => {
                let buffer = backend.as_deref().and_then(|b| open(b, id, fmt, output));
                let mut h = lock(hda);
                let link = &mut h.links[id];
                if link.buffer.take().is_some()
                    && let Some(b) = &backend
                {
                    b.close(id as u32);
                }
                link.fmt = Some(fmt);
                link.started = false;
                link.clock = None;
                link.buffer = buffer;
                drop(h);
                start(hda, backend.as_deref(), id);
            }
            Action::Start(id) => start(hda, backend.as_deref(), id),
            Action::Stop(id) => {
                let mut h = lock(hda);
                h.links[id].started = false;
                if let Some(ring) = &h.links[id].buffer {
                    // A stopped stream's sound is stale by its next start.
                    ring.clear();
                    if let Some(b) = &backend {
                        b.stop(id as u32);
                    }
                }
            }
        }
    }
}

fn start(hda: &Arc<Mutex<Hda>>, backend: Option<&dyn AudioBackend>, id: usize) {
    let mut h = lock(hda);
    h.links[id].started = true;
    if h.links[id].buffer.is_some()
        && let Some(b) = backend
    {
        b.start(id as u32);
    }
}

/// Opens stream `id` on the backend; None (clock pacing) if the format does not suit it
/// or the backend refused.
fn open(backend: &dyn AudioBackend, id: usize, fmt: u16, output: bool) -> Option<Arc<PcmBuffer>> {
    let ring_ms = if output {
        PLAYBACK_RING_MS
    } else {
        CAPTURE_RING_MS
    };
    let Some(params) = Format::parse(fmt).and_then(|f| f.pcm_params(ring_ms)) else {
        crate::guest_warn!("hda: stream {id}: format {fmt:#06x} is not played on the host");
        return None;
    };
    let buffer = match PcmBuffer::new(params.buffer_bytes as usize, params.frame_bytes()) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            log::warn!("hda: stream {id}: {e}");
            return None;
        }
    };
    let direction = if output {
        Direction::Output
    } else {
        Direction::Input
    };
    match backend.open(id as u32, direction, params, buffer.clone()) {
        Ok(()) => Some(buffer),
        Err(e) => {
            crate::guest_warn!("hda: stream {id}: {e}");
            None
        }
    }
}

fn close_all(hda: &Arc<Mutex<Hda>>) {
    let mut h = lock(hda);
    let backend = h.backend.clone();
    for (i, link) in h.links.iter_mut().enumerate() {
        if link.buffer.take().is_some()
            && let Some(b) = &backend
        {
            b.close(i as u32);
        }
        link.fmt = None;
        link.started = false;
    }
}
