//! The network device's worker thread: moves frames between the two queues and the peer
//! socket. See the parent module for the data flow.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::csum::finish_checksum;
use super::stream::MAX_FRAME;
use super::{
    Connection, ConnectionSlot, F_CSUM, F_GUEST_CSUM, F_MRG_RXBUF, HDR_F_DATA_VALID,
    HDR_F_NEEDS_CSUM, HDR_GSO_NONE, HDR_LEN, NetCounters, RX_QUEUE, TX_QUEUE, pollfd,
};
use crate::virtio::worker::DeviceThread;
use crate::virtio::{Activation, GuestMemory, QueuePosition, VirtioError, VirtioInterrupt};

/// Receive chains one frame may span at most (a 64 KiB frame in 4 KiB pages needs 17).
const MAX_RX_CHAINS: usize = 64;

/// Why one transmit request was dropped.
#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error("descriptor chain is not in guest memory")]
    BadChain,
    #[error("{0}-byte request is outside 12..={max}", max = HDR_LEN + MAX_FRAME)]
    BadLength(usize),
    #[error("segmentation offload (gso_type {0}) was not negotiated")]
    Gso(u8),
    #[error("cannot read the frame from guest memory")]
    Read(#[source] io::Error),
    #[error(transparent)]
    Csum(#[from] super::csum::CsumError),
}

/// Where one receive attempt ended.
enum Rx {
    Delivered,
    /// The guest has too few buffers: wait for it to add some.
    NoRoom,
    /// The frame cannot be delivered (bad chain, too small without MRG_RXBUF).
    Dropped,
}

/// Starts the worker with `carried` (frames a restored card still holds); dropping the
/// handle stops the thread, which hands the connection back. [`DeviceThread::stop_and_take`]
/// returns the [`Handler`] instead, for a save.
pub fn spawn(
    a: Activation,
    slot: Arc<ConnectionSlot>,
    counters: Arc<NetCounters>,
    carried: Carried,
) -> Result<DeviceThread, VirtioError> {
    let (mut h, rx_event, tx_event) = handler(a, slot, counters)?;
    h.carried = carried;
    let thread = DeviceThread::spawn("hospes-net", move |stop| {
        h.run(&[stop, rx_event, tx_event]);
        h
    })?;
    Ok(thread)
}

/// Whole frames a card held when it was saved: transmitted frames the guest handed over
/// that had not reached the peer, and received ones the guest had not taken yet. A
/// restored card sends the first on its new connection and delivers the second before
/// anything the new peer sends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Carried {
    pub tx: Vec<Vec<u8>>,
    pub rx: VecDeque<Vec<u8>>,
}

/// The worker's state for activation `a`, with the receive and transmit kicks.
fn handler(
    a: Activation,
    slot: Arc<ConnectionSlot>,
    counters: Arc<NetCounters>,
) -> Result<(Handler, EventFd, EventFd), VirtioError> {
    let got = a.queues.len();
    let mut queues = a.queues.into_iter();
    let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
        return Err(VirtioError::QueueCount { got, want: 2 });
    };
    if usize::from(rx.index) != RX_QUEUE || usize::from(tx.index) != TX_QUEUE {
        return Err(VirtioError::QueueCount { got, want: 2 });
    }
    let h = Handler {
        mem: a.mem,
        interrupt: a.interrupt,
        rx: rx.queue,
        tx: tx.queue,
        mrg: a.acked_features & (1 << F_MRG_RXBUF) != 0,
        guest_csum: a.acked_features & (1 << F_GUEST_CSUM) != 0,
        host_csum: a.acked_features & (1 << F_CSUM) != 0,
        slot,
        conn: None,
        counters,
        rx_blocked: false,
        carried: Carried::default(),
    };
    Ok((h, rx.event, tx.event))
}

/// The worker without its thread, for the fuzz target: each [`SteppedWorker::service`] is
/// one pass of the worker's loop (transmit, receive, link state), on the caller's thread.
#[cfg(any(test, feature = "test-support"))]
pub struct SteppedWorker(Handler);

#[cfg(any(test, feature = "test-support"))]
impl SteppedWorker {
    /// The worker for activation `a`, holding the connection waiting in `slot` (if any).
    pub fn new(
        a: Activation,
        slot: Arc<ConnectionSlot>,
        counters: Arc<NetCounters>,
    ) -> Result<Self, VirtioError> {
        let (mut h, _, _) = handler(a, slot, counters)?;
        h.take_connection();
        Ok(Self(h))
    }

    /// One pass; `rx_kick` as when the guest kicked the receive queue (new buffers).
    pub fn service(&mut self, rx_kick: bool) {
        if rx_kick {
            self.0.rx_blocked = false;
        }
        self.0.service();
    }
}

pub struct Handler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
    mrg: bool,
    guest_csum: bool,
    host_csum: bool,
    slot: Arc<ConnectionSlot>,
    conn: Option<Connection>,
    counters: Arc<NetCounters>,
    /// A whole frame waits in the reader for guest buffers.
    rx_blocked: bool,
    /// Frames carried over a save and restore.
    carried: Carried,
}

impl Drop for Handler {
    /// A stopped worker hands its connection back, half-read frames included, so the next
    /// activation carries on the same stream.
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.slot.give_back(c);
        }
    }
}

impl Handler {
    /// `events`: stop, receive kick, transmit kick.
    fn run(&mut self, events: &[EventFd; 3]) {
        self.take_connection();
        self.update_link();
        loop {
            self.service();
            let mut fds = vec![
                pollfd(events[0].as_raw_fd(), libc::POLLIN),
                pollfd(events[1].as_raw_fd(), libc::POLLIN),
                pollfd(events[2].as_raw_fd(), libc::POLLIN),
                pollfd(self.slot.ready_event().as_raw_fd(), libc::POLLIN),
            ];
            if let Some(c) = &self.conn {
                fds.push(c.pollfd(self.rx_blocked));
            }
            // SAFETY: `fds` is a live array of `fds.len()` initialised pollfd structs the
            // kernel may write `revents` into during the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("net: poll failed: {e}");
                break;
            }
            if fds[0].revents != 0 {
                break;
            }
            for (pfd, ev) in fds[1..3].iter().zip(&events[1..]) {
                if pfd.revents != 0 {
                    // The count is irrelevant; reading resets it so poll sleeps again.
                    let _ = ev.read();
                }
            }
            if fds[1].revents != 0 {
                self.rx_blocked = false;
            }
            if fds[3].revents != 0 && self.take_connection() {
                log::info!("net: peer connected");
                self.rx_blocked = false;
            }
            self.update_link();
        }
    }

    /// Where the receive and transmit queues stand (the worker has stopped).
    pub fn positions(&self) -> Vec<QueuePosition> {
        vec![
            QueuePosition::of(RX_QUEUE as u16, &self.rx),
            QueuePosition::of(TX_QUEUE as u16, &self.tx),
        ]
    }

    /// For a save, once the worker has stopped: writes what the connection takes without
    /// blocking, then returns the whole frames still held. A frame partly written to or
    /// partly read from the stream is dropped, as on a wire; the connection is closed.
    pub fn take_frames(&mut self) -> Carried {
        let mut carried = std::mem::take(&mut self.carried);
        if let Some(mut c) = self.conn.take() {
            if let Err(e) = c.writer.flush(&mut c.stream) {
                log::debug!("net: last write before the save failed: {e}");
            }
            carried.tx.extend(c.writer.unstarted_frames());
            carried.rx.extend(c.reader.whole_frames());
        }
        carried
    }

    fn service(&mut self) {
        self.transmit();
        self.receive();
        self.update_link();
    }

    /// Takes the connection waiting in the slot, if any; frames carried over a restore
    /// are queued on it first.
    fn take_connection(&mut self) -> bool {
        let Some(mut c) = self.slot.take() else {
            return false;
        };
        for frame in std::mem::take(&mut self.carried.tx) {
            c.writer
                .push_with(frame.len(), |b| {
                    b.copy_from_slice(&frame);
                    Ok::<(), std::convert::Infallible>(())
                })
                .unwrap_or_else(|never| match never {});
        }
        self.conn = Some(c);
        true
    }

    /// Publishes whether there is a peer as the link state, with a configuration
    /// interrupt when it changes.
    fn update_link(&self) {
        let up = self.conn.is_some();
        if self.counters.link_up.swap(up, Ordering::AcqRel) != up {
            self.interrupt.notify_config();
        }
    }

    /// Drops the connection after an error on it.
    fn lose_connection(&mut self, why: &str) {
        if self.conn.take().is_some() {
            log::warn!("net: peer connection lost ({why}); frames are dropped until it is back");
        }
        self.rx_blocked = false;
    }

    fn transmit(&mut self) {
        let mut used_any = false;
        // The avail index moved after the ring looked empty: look once more.
        let mut looked_again = false;
        loop {
            if self.conn.as_ref().is_some_and(|c| c.writer.is_full()) {
                // Make room; chains left in the ring wait for POLLOUT (no kick comes).
                if let Some(c) = &mut self.conn
                    && let Err(e) = c.writer.flush(&mut c.stream)
                {
                    self.lose_connection(&e.to_string());
                }
                if self.conn.as_ref().is_some_and(|c| c.writer.is_full()) {
                    break;
                }
            }
            let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) else {
                match self.tx.enable_notification(&self.mem) {
                    // A chain published just before notifications came back on.
                    Ok(true) if !looked_again => {
                        looked_again = true;
                        continue;
                    }
                    Ok(true) => {
                        // Still nothing to take although the index moved: it is more than a
                        // ring ahead. Wait for the driver's next kick instead of spinning.
                        crate::guest_warn!("net: transmit avail index is more than a ring ahead");
                        break;
                    }
                    Ok(false) => break,
                    Err(_) => {
                        crate::guest_warn!("net: transmit ring is not in guest memory");
                        break;
                    }
                }
            };
            looked_again = false;
            let head = chain.head_index();
            match send_chain(&self.mem, self.conn.as_mut(), self.host_csum, chain) {
                Ok(Some(len)) => {
                    NetCounters::add(&self.counters.tx_frames, 1);
                    NetCounters::add(&self.counters.tx_bytes, len as u64);
                }
                Ok(None) => NetCounters::add(&self.counters.tx_dropped, 1),
                Err(e) => {
                    NetCounters::add(&self.counters.tx_dropped, 1);
                    crate::guest_warn!("net: transmit request dropped: {e}");
                }
            }
            if self.tx.add_used(&self.mem, head, 0).is_err() {
                crate::guest_warn!("net: cannot return transmit chain {head}");
            }
            used_any = true;
        }
        if let Some(c) = &mut self.conn
            && let Err(e) = c.writer.flush(&mut c.stream)
        {
            self.lose_connection(&e.to_string());
        }
        if used_any && self.tx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.notify_queue(TX_QUEUE as u16);
        }
    }

    fn receive(&mut self) {
        let mut used_any = false;
        let flags = if self.guest_csum { HDR_F_DATA_VALID } else { 0 };
        // Frames carried over a restore go first, connection or not.
        while !self.rx_blocked {
            let Some(frame) = self.carried.rx.front() else {
                break;
            };
            let len = frame.len();
            match deliver(&self.mem, &mut self.rx, frame, flags, self.mrg) {
                Rx::Delivered => {
                    NetCounters::add(&self.counters.rx_frames, 1);
                    NetCounters::add(&self.counters.rx_bytes, len as u64);
                }
                Rx::Dropped => NetCounters::add(&self.counters.rx_dropped, 1),
                Rx::NoRoom => {
                    self.rx_blocked = true;
                    break;
                }
            }
            used_any = true;
            self.carried.rx.pop_front();
        }
        while !self.rx_blocked {
            let Some(conn) = &mut self.conn else { break };
            let frame = match conn.reader.peek() {
                Ok(Some(frame)) => frame,
                Ok(None) => match conn.reader.fill(&mut conn.stream) {
                    Ok(0) => {
                        self.lose_connection("peer closed the socket");
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.lose_connection(&e.to_string());
                        break;
                    }
                },
                Err(e) => {
                    self.lose_connection(&e.to_string());
                    break;
                }
            };
            let len = frame.len();
            match deliver(&self.mem, &mut self.rx, frame, flags, self.mrg) {
                Rx::Delivered => {
                    used_any = true;
                    NetCounters::add(&self.counters.rx_frames, 1);
                    NetCounters::add(&self.counters.rx_bytes, len as u64);
                    conn.reader.consume();
                }
                Rx::Dropped => {
                    used_any = true;
                    NetCounters::add(&self.counters.rx_dropped, 1);
                    conn.reader.consume();
                }
                Rx::NoRoom => self.rx_blocked = true,
            }
        }
        if used_any && self.rx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.notify_queue(RX_QUEUE as u16);
        }
    }
}

/// Queues one transmit chain's frame for the peer; `Ok(None)` when there is no peer.
fn send_chain(
    mem: &GuestMemory,
    conn: Option<&mut Connection>,
    host_csum: bool,
    chain: virtio_queue::DescriptorChain<&GuestMemory>,
) -> Result<Option<usize>, TxError> {
    let mut reader = chain.reader(mem).map_err(|_| TxError::BadChain)?;
    let total = reader.available_bytes();
    if !(HDR_LEN..=HDR_LEN + MAX_FRAME).contains(&total) {
        return Err(TxError::BadLength(total));
    }
    let mut hdr = [0u8; HDR_LEN];
    reader.read_exact(&mut hdr).map_err(TxError::Read)?;
    if hdr[1] != HDR_GSO_NONE {
        return Err(TxError::Gso(hdr[1]));
    }
    let Some(conn) = conn else {
        return Ok(None);
    };
    let len = total - HDR_LEN;
    let csum = (host_csum && hdr[0] & HDR_F_NEEDS_CSUM != 0).then(|| {
        (
            usize::from(u16::from_le_bytes([hdr[6], hdr[7]])),
            usize::from(u16::from_le_bytes([hdr[8], hdr[9]])),
        )
    });
    conn.writer.push_with(len, |frame| {
        reader.read_exact(frame).map_err(TxError::Read)?;
        if let Some((start, offset)) = csum {
            finish_checksum(frame, start, offset)?;
        }
        Ok::<(), TxError>(())
    })?;
    Ok(Some(len))
}

/// Puts `frame` behind a virtio-net header into the receive queue: one chain, or as many
/// as it takes when `mrg` (the header's `num_buffers` says how many).
fn deliver(mem: &GuestMemory, rx: &mut Queue, frame: &[u8], flags: u8, mrg: bool) -> Rx {
    let need = HDR_LEN + frame.len();
    let mut chains = Vec::new();
    let mut room = 0usize;
    while room < need {
        if chains.len() == if mrg { MAX_RX_CHAINS } else { 1 } {
            // Without MRG_RXBUF a frame must fit one chain; drop it and keep the buffer.
            for _ in 0..chains.len() {
                rx.go_to_previous_position();
            }
            crate::guest_warn!("net: dropped a {need}-byte frame: receive buffers too small");
            return Rx::Dropped;
        }
        match rx.pop_descriptor_chain(mem) {
            Some(chain) => {
                let head = chain.head_index();
                let cap = match chain.clone().writer(mem) {
                    Ok(w) => w.available_bytes(),
                    Err(_) => 0,
                };
                room += cap;
                chains.push((head, chain));
            }
            None => {
                // Leave the buffers for the next try. The device never suppresses receive
                // notifications (no EVENT_IDX, NO_NOTIFY never set), so the guest's next
                // buffer kicks the queue and the worker tries again.
                for _ in 0..chains.len() {
                    rx.go_to_previous_position();
                }
                return Rx::NoRoom;
            }
        }
    }
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = flags;
    hdr[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
    let mut src = (&hdr[..]).chain(frame);
    let mut ok = true;
    for (head, chain) in chains {
        let written = match chain.writer(mem) {
            Ok(mut w) => {
                let n = w.available_bytes();
                match io::copy(&mut (&mut src).take(n as u64), &mut w) {
                    Ok(n) => n as u32,
                    Err(_) => {
                        ok = false;
                        0
                    }
                }
            }
            Err(_) => {
                ok = false;
                0
            }
        };
        if rx.add_used(mem, head, written).is_err() {
            ok = false;
        }
    }
    if ok {
        Rx::Delivered
    } else {
        crate::guest_warn!("net: receive chain not in guest memory; frame dropped");
        Rx::Dropped
    }
}
