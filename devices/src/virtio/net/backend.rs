//! Where the network device finds its peer: a [`ConnectionSlot`] shared with whoever
//! provides the stream socket (the passt supervisor in `backends::passt`, or a test).
//!
//! Data flow: the provider [`put`](ConnectionSlot::put)s a fresh connection and the slot's
//! eventfd wakes the device worker, which [`take`](ConnectionSlot::take)s it. When the
//! device stops (driver reset, reboot) it hands the connection back with
//! [`give_back`](ConnectionSlot::give_back), half-read frames included, so the next
//! activation carries on the same stream. A connection the worker finds broken is dropped;
//! closing it tells the peer, and the provider replaces it.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::stream::{FrameReader, FrameWriter};

/// A stream to the peer and the framing state on both directions.
pub struct Connection {
    pub stream: UnixStream,
    pub reader: FrameReader,
    pub writer: FrameWriter,
    /// Bumped by the provider for each new peer (a restarted passt).
    pub generation: u64,
}

impl Connection {
    /// Wraps a connected stream socket, made non-blocking.
    pub fn new(stream: UnixStream, generation: u64) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            reader: FrameReader::new(),
            writer: FrameWriter::new(),
            generation,
        })
    }

    /// The poll entry for the stream: readable while the device can take a frame
    /// (`!rx_blocked`), writable while frames wait to be sent. Shared by the network cards'
    /// workers.
    pub fn pollfd(&self, rx_blocked: bool) -> libc::pollfd {
        use std::os::fd::AsRawFd;
        let mut events = 0;
        if !rx_blocked {
            events |= libc::POLLIN;
        }
        if self.writer.has_pending() {
            events |= libc::POLLOUT;
        }
        pollfd(self.stream.as_raw_fd(), events)
    }
}

/// A poll entry for `fd` waiting for `events`.
pub fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Holds the current connection until the device worker takes it.
pub struct ConnectionSlot {
    conn: Mutex<Option<Connection>>,
    ready: EventFd,
}

impl ConnectionSlot {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            conn: Mutex::new(None),
            ready: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Readable when a connection may be waiting.
    pub fn ready_event(&self) -> &EventFd {
        &self.ready
    }

    /// Offers a new connection, replacing any the worker has not taken yet.
    pub fn put(&self, conn: Connection) {
        *crate::bus::lock(&self.conn) = Some(conn);
        self.signal();
    }

    /// Hands back a connection the worker was using; a newer one put meanwhile wins.
    pub fn give_back(&self, conn: Connection) {
        let mut slot = crate::bus::lock(&self.conn);
        match &*slot {
            Some(newer) if newer.generation >= conn.generation => {}
            _ => *slot = Some(conn),
        }
        drop(slot);
        self.signal();
    }

    /// Takes the waiting connection, if any.
    pub fn take(&self) -> Option<Connection> {
        // Reading resets the counter so poll sleeps again; empty is fine.
        let _ = self.ready.read();
        crate::bus::lock(&self.conn).take()
    }

    /// Drops any waiting connection (the provider is shutting down).
    pub fn clear(&self) {
        crate::bus::lock(&self.conn).take();
    }

    fn signal(&self) {
        if let Err(e) = self.ready.write(1) {
            log::warn!("net: cannot wake the device worker: {e}");
        }
    }
}
