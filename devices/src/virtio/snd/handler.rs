//! The sound device's worker thread: serves the control, transmit and receive queues and
//! wakes when a backend moved samples. See the parent module for the data flow.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::control::{self, S_BAD_MSG, S_IO_ERR, S_OK, StreamState};
use super::{
    AudioBackend, CONTROL_QUEUE, Direction, PcmBuffer, PcmParams, RX_QUEUE, STREAMS, StreamSlot,
    TX_QUEUE,
};
use crate::virtio::worker::DeviceThread;
use crate::virtio::{Activation, GuestMemory, QueuePosition, VirtioError, VirtioInterrupt};

/// `virtio_snd_pcm_status`: status, latency_bytes.
const STATUS_LEN: usize = 8;
/// Control requests are at most 24 bytes; more is read no further.
const MAX_REQUEST: usize = 64;

/// A playback request held until the backend played its bytes.
struct PendingTx {
    head: u16,
    status: GuestAddress,
    buffer: Arc<PcmBuffer>,
    /// The buffer's `moved` count at which this request's last byte was played.
    end: u64,
}

/// What a restored device starts from: the streams as the guest left them, and whether
/// playback requests were returned at the save (the driver is told once the worker runs).
pub struct Resume {
    pub streams: Vec<(StreamState, Option<PcmParams>)>,
    pub returned_tx: bool,
}

/// Starts the worker; dropping the handle stops the thread, and
/// [`DeviceThread::stop_and_take`] hands back the [`Handler`] for a save.
pub fn spawn(
    a: Activation,
    backend: Arc<dyn AudioBackend>,
    resume: Option<Resume>,
) -> Result<DeviceThread, VirtioError> {
    let got = a.queues.len();
    if got != 4
        || a.queues
            .iter()
            .enumerate()
            .any(|(i, q)| usize::from(q.index) != i)
    {
        return Err(VirtioError::QueueCount { got, want: 4 });
    }
    let (queues, events): (Vec<Queue>, Vec<EventFd>) =
        a.queues.into_iter().map(|q| (q.queue, q.event)).unzip();
    let mut h = Handler {
        mem: a.mem,
        interrupt: a.interrupt,
        queues,
        backend,
        streams: [
            StreamSlot::new(0, Direction::Output),
            StreamSlot::new(1, Direction::Input),
        ],
        pending: VecDeque::new(),
        scratch: Vec::new(),
        underruns: 0,
        overruns: 0,
    };
    if let Some(r) = resume {
        h.resume(r);
    }
    let thread = DeviceThread::spawn("hospes-snd", move |stop| {
        h.run(&stop, &events);
        h
    })?;
    Ok(thread)
}

pub struct Handler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Queue>,
    backend: Arc<dyn AudioBackend>,
    streams: [StreamSlot; STREAMS],
    pending: VecDeque<PendingTx>,
    scratch: Vec<u8>,
    underruns: u64,
    overruns: u64,
}

impl Handler {
    /// Takes back the streams of a saved device: a stream that was prepared, running or
    /// stopped opens its backend stream again (on a fresh, empty buffer), a running one
    /// starts; the driver is interrupted for requests returned at the save.
    fn resume(&mut self, r: Resume) {
        for (s, (state, params)) in self.streams.iter_mut().zip(r.streams) {
            s.state = state;
            s.params = params;
            if matches!(
                state,
                StreamState::Prepared | StreamState::Running | StreamState::Stopped
            ) {
                if let Err(e) = s.open(&*self.backend) {
                    crate::guest_warn!(
                        "snd: stream {}: cannot open again after a resume: {e}",
                        s.id
                    );
                    continue;
                }
                if state == StreamState::Running {
                    self.backend.start(s.id);
                }
            }
        }
        if r.returned_tx {
            self.notify(TX_QUEUE);
        }
    }

    /// For a save, on the stopped worker: returns every playback request still held,
    /// with an OK status, to the used ring (no interrupt: the restored worker raises it),
    /// and says whether there were any. The bytes of those not yet played are not heard.
    pub fn return_held(&mut self) -> bool {
        let held = std::mem::take(&mut self.pending);
        let any = !held.is_empty();
        for p in held {
            self.finish_tx(p.head, p.status, S_OK, 0);
        }
        any
    }

    /// Where each queue stands.
    pub fn positions(&self) -> Vec<QueuePosition> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueuePosition::of(i as u16, q))
            .collect()
    }

    /// Each stream's state and parameters as the guest set them.
    pub fn streams(&self) -> Vec<(StreamState, Option<PcmParams>)> {
        self.streams.iter().map(|s| (s.state, s.params)).collect()
    }

    fn run(&mut self, stop: &EventFd, events: &[EventFd]) {
        loop {
            self.control();
            self.complete_played();
            self.transmit();
            self.receive();
            self.report_xruns();
            let buffers: Vec<Arc<PcmBuffer>> = self
                .streams
                .iter()
                .filter_map(|s| s.buffer.clone())
                .collect();
            let mut fds: Vec<libc::pollfd> = std::iter::once(stop)
                .chain(events)
                .chain(buffers.iter().map(|b| b.event()))
                .map(|e| libc::pollfd {
                    fd: e.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a live array of `fds.len()` initialised pollfd structs the
            // kernel may write `revents` into during the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("snd: poll failed: {e}");
                break;
            }
            if fds[0].revents != 0 {
                break;
            }
            let all = events.iter().chain(buffers.iter().map(|b| b.event()));
            for (pfd, ev) in fds[1..].iter().zip(all) {
                if pfd.revents != 0 {
                    // The count is irrelevant; reading resets it so poll sleeps again.
                    let _ = ev.read();
                }
            }
        }
        // Close whatever the guest left open.
        for s in &mut self.streams {
            s.close(&*self.backend);
        }
    }

    fn notify(&mut self, queue: usize) {
        if self.queues[queue]
            .needs_notification(&self.mem)
            .unwrap_or(true)
        {
            self.interrupt.notify_queue(queue as u16);
        }
    }

    fn control(&mut self) {
        let mut used_any = false;
        while let Some(chain) = self.queues[CONTROL_QUEUE].pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let before: Vec<StreamState> = self.streams.iter().map(|s| s.state).collect();
            let reply = match chain.clone().reader(&self.mem) {
                Ok(r) => {
                    let mut req = Vec::with_capacity(MAX_REQUEST);
                    match r.take(MAX_REQUEST as u64).read_to_end(&mut req) {
                        Ok(_) => control::handle(&req, &mut self.streams, &*self.backend),
                        Err(_) => S_BAD_MSG.to_le_bytes().to_vec(),
                    }
                }
                Err(_) => S_BAD_MSG.to_le_bytes().to_vec(),
            };
            let written = match chain.writer(&self.mem) {
                Ok(mut w) => {
                    let n = reply.len().min(w.available_bytes());
                    w.write_all(&reply[..n]).map_or(0, |_| n as u32)
                }
                Err(_) => {
                    crate::guest_warn!("snd: control reply buffer not in guest memory");
                    0
                }
            };
            if self.queues[CONTROL_QUEUE]
                .add_used(&self.mem, head, written)
                .is_err()
            {
                crate::guest_warn!("snd: cannot return control chain {head}");
            }
            used_any = true;
            // A stream that stopped or was released returns all its pending I/O.
            for (i, was) in before.into_iter().enumerate() {
                let now = self.streams[i].state;
                if was != now && matches!(now, StreamState::Stopped | StreamState::Released) {
                    self.flush_stream(i);
                }
            }
        }
        if used_any {
            self.notify(CONTROL_QUEUE);
        }
    }

    /// Completes every held playback request of stream `i` (or every capture buffer
    /// waiting in the receive queue, with silence).
    fn flush_stream(&mut self, i: usize) {
        match self.streams[i].direction {
            Direction::Output => {
                let held = std::mem::take(&mut self.pending);
                for p in held {
                    self.finish_tx(p.head, p.status, S_OK, 0);
                }
                self.notify(TX_QUEUE);
            }
            Direction::Input => {
                let mut used_any = false;
                while let Some(chain) = self.queues[RX_QUEUE].pop_descriptor_chain(&self.mem) {
                    let head = chain.head_index();
                    let len = write_capture(&self.mem, chain, None, S_OK);
                    let _ = self.queues[RX_QUEUE].add_used(&self.mem, head, len);
                    used_any = true;
                }
                if used_any {
                    self.notify(RX_QUEUE);
                }
            }
        }
    }

    fn finish_tx(&mut self, head: u16, status: GuestAddress, code: u32, latency: u32) {
        let mut st = [0u8; STATUS_LEN];
        st[..4].copy_from_slice(&code.to_le_bytes());
        st[4..].copy_from_slice(&latency.to_le_bytes());
        let len = match self.mem.write_slice(&st, status) {
            Ok(()) => STATUS_LEN as u32,
            Err(_) => 0,
        };
        if self.queues[TX_QUEUE]
            .add_used(&self.mem, head, len)
            .is_err()
        {
            crate::guest_warn!("snd: cannot return transmit chain {head}");
        }
    }

    /// Returns the playback requests whose bytes the backend has played.
    fn complete_played(&mut self) {
        let mut used_any = false;
        while let Some(p) = self.pending.front() {
            if p.buffer.moved() < p.end {
                break;
            }
            let latency = p.buffer.len() as u32;
            let (head, status) = (p.head, p.status);
            self.pending.pop_front();
            self.finish_tx(head, status, S_OK, latency);
            used_any = true;
        }
        if used_any {
            self.notify(TX_QUEUE);
        }
    }

    fn transmit(&mut self) {
        let mut used_any = false;
        while let Some(chain) = self.queues[TX_QUEUE].pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let Some(status) = status_address(&chain) else {
                crate::guest_warn!("snd: transmit request without an 8-byte status buffer");
                let _ = self.queues[TX_QUEUE].add_used(&self.mem, head, 0);
                used_any = true;
                continue;
            };
            let buffer = match read_xfer(&self.mem, &self.streams, &mut self.scratch, chain) {
                Ok((0, buffer)) => buffer,
                Ok(_) | Err(()) => {
                    self.finish_tx(head, status, S_BAD_MSG, 0);
                    used_any = true;
                    continue;
                }
            };
            if self.scratch.len() > buffer.capacity() {
                crate::guest_warn!("snd: a playback request is larger than the stream's buffer");
                self.finish_tx(head, status, S_BAD_MSG, 0);
                used_any = true;
                continue;
            }
            match buffer.push(&self.scratch) {
                Some(end) => self.pending.push_back(PendingTx {
                    head,
                    status,
                    buffer,
                    end,
                }),
                None => {
                    // No room until the backend plays some: leave it in the ring.
                    self.queues[TX_QUEUE].go_to_previous_position();
                    break;
                }
            }
        }
        if used_any {
            self.notify(TX_QUEUE);
        }
    }

    fn receive(&mut self) {
        let mut used_any = false;
        while let Some(chain) = self.queues[RX_QUEUE].pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let stream = chain
                .clone()
                .reader(&self.mem)
                .ok()
                .and_then(|mut r| {
                    let mut id = [0u8; 4];
                    r.read_exact(&mut id).ok().map(|_| u32::from_le_bytes(id))
                })
                .and_then(|id| self.streams.get(id as usize))
                .filter(|s| s.direction == Direction::Input);
            let data_len = chain
                .clone()
                .writer(&self.mem)
                .map_or(0, |w| w.available_bytes())
                .checked_sub(STATUS_LEN);
            let (Some(s), Some(data_len)) = (stream, data_len) else {
                let len = write_capture(&self.mem, chain, None, S_BAD_MSG);
                let _ = self.queues[RX_QUEUE].add_used(&self.mem, head, len);
                used_any = true;
                continue;
            };
            let buffer = match (s.state, &s.buffer) {
                (StreamState::Prepared | StreamState::Running, Some(b)) => b.clone(),
                _ => {
                    let len = write_capture(&self.mem, chain, None, S_IO_ERR);
                    let _ = self.queues[RX_QUEUE].add_used(&self.mem, head, len);
                    used_any = true;
                    continue;
                }
            };
            if data_len > buffer.capacity() {
                let len = write_capture(&self.mem, chain, None, S_BAD_MSG);
                let _ = self.queues[RX_QUEUE].add_used(&self.mem, head, len);
                used_any = true;
                continue;
            }
            self.scratch.resize(data_len, 0);
            if !buffer.take_exact(&mut self.scratch) {
                // Not recorded yet: leave it in the ring until the backend gives more.
                self.queues[RX_QUEUE].go_to_previous_position();
                break;
            }
            let len = write_capture(&self.mem, chain, Some(&self.scratch), S_OK);
            let _ = self.queues[RX_QUEUE].add_used(&self.mem, head, len);
            used_any = true;
        }
        if used_any {
            self.notify(RX_QUEUE);
        }
    }

    /// Logs (rate-limited) when a backend reports new underruns or overruns.
    fn report_xruns(&mut self) {
        let (mut under, mut over) = (0, 0);
        for b in self.streams.iter().filter_map(|s| s.buffer.as_ref()) {
            under += b.underruns();
            over += b.overruns();
        }
        if under > self.underruns {
            crate::guest_warn!("snd: playback underrun ({under} in this stream so far)");
        }
        if over > self.overruns {
            crate::guest_warn!("snd: capture overrun ({over} in this stream so far)");
        }
        (self.underruns, self.overruns) = (under, over);
    }
}

/// Streams a restore opened stay open no longer than the handler, even when its thread
/// never started (closing twice is a no-op).
impl Drop for Handler {
    fn drop(&mut self) {
        for s in &mut self.streams {
            s.close(&*self.backend);
        }
    }
}

/// Reads `{stream_id}` and the PCM bytes (into `scratch`) of a transmit request; the
/// stream must be prepared or running.
fn read_xfer(
    mem: &GuestMemory,
    streams: &[StreamSlot; STREAMS],
    scratch: &mut Vec<u8>,
    chain: DescriptorChain<&GuestMemory>,
) -> Result<(u32, Arc<PcmBuffer>), ()> {
    let mut r = chain.reader(mem).map_err(|_| ())?;
    let mut id = [0u8; 4];
    r.read_exact(&mut id).map_err(|_| ())?;
    let id = u32::from_le_bytes(id);
    let s = streams.get(id as usize).ok_or(())?;
    let buffer = match s.state {
        StreamState::Prepared | StreamState::Running => s.buffer.clone().ok_or(())?,
        _ => return Err(()),
    };
    let len = r.available_bytes();
    if len > buffer.capacity() {
        scratch.clear();
        scratch.resize(buffer.capacity() + 1, 0);
        return Ok((id, buffer));
    }
    scratch.resize(len, 0);
    r.read_exact(scratch).map_err(|_| ())?;
    Ok((id, buffer))
}

/// The guest address of a transmit request's status: the last writable descriptor,
/// which must hold exactly the 8-byte `virtio_snd_pcm_status`.
fn status_address(chain: &DescriptorChain<&GuestMemory>) -> Option<GuestAddress> {
    let mut writable = chain.clone().writable();
    let d = writable.next()?;
    (writable.next().is_none() && d.len() as usize == STATUS_LEN).then(|| d.addr())
}

/// Writes a capture reply: `data` (exactly the data area) and the status with `code`
/// after it. With no data (an error, or a stream stopped before the buffer filled) only
/// the status is written, at the end of the buffer, however large the guest made it.
/// Returns the used length: data and status, or the status alone.
fn write_capture(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    data: Option<&[u8]>,
    code: u32,
) -> u32 {
    let Ok(mut w) = chain.writer(mem) else {
        crate::guest_warn!("snd: receive buffer not in guest memory");
        return 0;
    };
    let Some(data_len) = w.available_bytes().checked_sub(STATUS_LEN) else {
        return 0;
    };
    let (mut tail, used) = match data {
        Some(d) if d.len() == data_len => {
            if w.write_all(d).is_err() {
                return 0;
            }
            (w, data_len + STATUS_LEN)
        }
        _ => match w.split_at(data_len) {
            Ok(tail) => (tail, STATUS_LEN),
            Err(_) => return 0,
        },
    };
    let mut st = [0u8; STATUS_LEN];
    st[..4].copy_from_slice(&code.to_le_bytes());
    match tail.write_all(&st) {
        Ok(()) => used as u32,
        Err(_) => 0,
    }
}
