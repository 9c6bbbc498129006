//! The card's worker thread: moves frames between the rings and the passt connection.
//!
//! Data flow: the thread sleeps in poll(2) on a stop eventfd, the card's doorbell (rung by
//! TDT/RDT/RCTL/TCTL writes on the vCPU thread), the [`ConnectionSlot`]'s eventfd (a new
//! peer) and the peer socket. Each wake-up it runs the transmit ring into the socket's
//! [`FrameWriter`](crate::virtio::net::stream::FrameWriter) (stopping while the writer is
//! full, resuming on POLLOUT) and reads frames into the receive ring until one finds no
//! room; that frame stays in the reader, and the socket is not read, until the doorbell
//! rings again. The link is up while there is a peer; losing it (passt restarting) shows
//! as a link change to the guest. Stopping hands the connection back to the slot.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::core::Core;
use super::rx::Rx;
use crate::bus::lock;
use crate::virtio::net::{Connection, ConnectionSlot, pollfd};

/// Transmit descriptors handled per lock of the card.
const TX_BATCH: usize = 64;

/// The running worker; dropping it stops and joins the thread.
pub struct E1000eWorker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl E1000eWorker {
    /// Starts the worker for `core`, woken by `doorbell`, with its peer from `slot`.
    pub fn spawn(
        core: Arc<Mutex<Core>>,
        doorbell: Arc<EventFd>,
        slot: Arc<ConnectionSlot>,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_thread = stop.try_clone()?;
        let mut w = Worker {
            core,
            doorbell,
            slot,
            conn: None,
            rx_blocked: false,
        };
        let thread = std::thread::Builder::new()
            .name("hospes-e1000e".into())
            .spawn(move || w.run(&stop_thread))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for E1000eWorker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(e) = self.stop.write(1) {
                log::error!("e1000e: cannot stop the worker: {e}");
                return;
            }
            if t.join().is_err() {
                log::error!("e1000e worker panicked");
            }
        }
    }
}

struct Worker {
    core: Arc<Mutex<Core>>,
    doorbell: Arc<EventFd>,
    slot: Arc<ConnectionSlot>,
    conn: Option<Connection>,
    /// A whole frame waits in the reader for receive descriptors.
    rx_blocked: bool,
}

impl Worker {
    fn run(&mut self, stop: &EventFd) {
        self.conn = self.slot.take();
        lock(&self.core).set_link(self.conn.is_some());
        loop {
            self.transmit();
            self.receive();
            let mut fds = vec![
                pollfd(stop.as_raw_fd(), libc::POLLIN),
                pollfd(self.doorbell.as_raw_fd(), libc::POLLIN),
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
                log::error!("e1000e: poll failed: {e}");
                break;
            }
            if fds[0].revents != 0 {
                break;
            }
            if fds[1].revents != 0 {
                // The count is irrelevant; reading resets it so poll sleeps again.
                let _ = self.doorbell.read();
                self.rx_blocked = false;
            }
            if fds[2].revents != 0
                && let Some(c) = self.slot.take()
            {
                log::info!("e1000e: peer connected");
                self.conn = Some(c);
                self.rx_blocked = false;
                lock(&self.core).set_link(true);
            }
        }
        if let Some(c) = self.conn.take() {
            self.slot.give_back(c);
        }
    }

    fn lose_connection(&mut self, why: &str) {
        if self.conn.take().is_some() {
            log::warn!("e1000e: peer connection lost ({why}); frames are dropped until it is back");
            lock(&self.core).set_link(false);
        }
        self.rx_blocked = false;
    }

    fn flush(&mut self) {
        if let Some(c) = &mut self.conn
            && let Err(e) = c.writer.flush(&mut c.stream)
        {
            self.lose_connection(&e.to_string());
        }
    }

    fn transmit(&mut self) {
        loop {
            if self.conn.as_ref().is_some_and(|c| c.writer.is_full()) {
                self.flush();
                if self.conn.as_ref().is_some_and(|c| c.writer.is_full()) {
                    // The rest waits for POLLOUT.
                    return;
                }
            }
            let conn = &mut self.conn;
            let more = lock(&self.core).transmit(
                &mut |frame| {
                    if let Some(c) = conn.as_mut() {
                        let _ = c.writer.push_with(frame.len(), |b| {
                            b.copy_from_slice(frame);
                            Ok::<(), ()>(())
                        });
                    }
                },
                TX_BATCH,
            );
            self.flush();
            if !more {
                return;
            }
        }
    }

    fn receive(&mut self) {
        while !self.rx_blocked {
            let Some(conn) = &mut self.conn else { return };
            let frame = match conn.reader.peek() {
                Ok(Some(frame)) => frame,
                Ok(None) => match conn.reader.fill(&mut conn.stream) {
                    Ok(0) => return self.lose_connection("peer closed the socket"),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return self.lose_connection(&e.to_string()),
                },
                Err(e) => return self.lose_connection(&e.to_string()),
            };
            match lock(&self.core).receive(frame) {
                Rx::Delivered | Rx::Dropped => conn.reader.consume(),
                Rx::NoRoom => self.rx_blocked = true,
            }
        }
    }
}
