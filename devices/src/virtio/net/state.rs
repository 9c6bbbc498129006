//! virtio-net's own saved state (the transport saves the queues, features, ISR and MSI-X
//! itself, a pending configuration interrupt included).
//!
//! Data flow: [`Net::pause_worker`] stops the worker thread, which hands back its handler:
//! the queue positions go to the transport, and the whole frames the card still held
//! (transmitted ones not yet written to passt, received ones not yet in guest buffers)
//! stay in `Net::paused`; the connection is closed and a frame half-written or
//! half-read on it is dropped. [`Net::save`] writes a [`NetSaved`]: the MAC, the link
//! state the guest last saw and those frames. [`Net::restore`] checks the MAC against the
//! configuration and the frames against the limits of the stream, then leaves the frames
//! and the link state for the next activation: the worker sends and delivers the frames
//! first, on the connection to the passt the resumed helper started, and raises the
//! configuration interrupt if the link is not what the guest last saw.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::Net;
use super::handler::{Carried, Handler};
use super::stream::{MAX_FRAME, WRITE_LIMIT};
use crate::state::{StateError, decode, encode};
use crate::virtio::QueuePosition;
use hospes_core::config::MacAddress;

/// The device's name in saved-state errors.
pub const NAME: &str = "virtio-net";
/// Most bytes of carried frames a save can hold: a full transmit buffer plus a frame, and
/// the receive buffer (two frames).
const MAX_CARRIED: usize = WRITE_LIMIT + 3 * MAX_FRAME;

/// What the card saves.
#[derive(Debug, Serialize, Deserialize)]
struct NetSaved {
    mac: [u8; 6],
    /// The link state in the configuration when the card stopped.
    link_up: bool,
    tx_frames: Vec<Vec<u8>>,
    rx_frames: Vec<Vec<u8>>,
}

impl Net {
    /// Stops the worker for a save and keeps what it held; returns the queue positions.
    pub(super) fn pause_worker(&mut self) -> Result<Vec<QueuePosition>, StateError> {
        let mut handler = self
            .worker
            .take()
            .and_then(|mut w| w.stop_and_take::<Handler>())
            .ok_or_else(|| StateError::device(NAME, "its worker was not running"))?;
        let positions = handler.positions();
        self.paused = handler.take_frames();
        Ok(positions)
    }

    pub(super) fn save(&mut self) -> Result<Vec<u8>, StateError> {
        let carried = std::mem::take(&mut self.paused);
        encode(
            NAME,
            &NetSaved {
                mac: self.mac.0,
                link_up: self.counters.link_up.load(Ordering::Acquire),
                tx_frames: carried.tx,
                rx_frames: carried.rx.into(),
            },
        )
    }

    pub(super) fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let s: NetSaved = decode(NAME, bytes)?;
        if s.mac != self.mac.0 {
            return Err(StateError::mismatch(
                NAME,
                format!("saved MAC {}, the card has {}", MacAddress(s.mac), self.mac),
            ));
        }
        let mut total = 0usize;
        for frame in s.tx_frames.iter().chain(&s.rx_frames) {
            if frame.len() > MAX_FRAME {
                return Err(StateError::mismatch(
                    NAME,
                    format!("a {}-byte frame (at most {MAX_FRAME})", frame.len()),
                ));
            }
            total += frame.len();
        }
        if total > MAX_CARRIED {
            return Err(StateError::mismatch(
                NAME,
                format!("{total} bytes of frames held (at most {MAX_CARRIED})"),
            ));
        }
        self.counters.link_up.store(s.link_up, Ordering::Release);
        self.restored = Carried {
            tx: s.tx_frames,
            rx: s.rx_frames.into(),
        };
        Ok(())
    }
}
