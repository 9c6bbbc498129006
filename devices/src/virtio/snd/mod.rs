//! virtio-snd: one playback and one capture stream, played and recorded through an
//! [`AudioBackend`] (PipeWire in the helper, see `backends::pipewire`).
//!
//! Data flow: the driver configures streams on the control queue (0); [`control`] answers
//! the jack, PCM and channel-map queries and walks each stream through set-params,
//! prepare (the backend opens a stream on a fresh [`PcmBuffer`]), start, stop, release.
//! Transmit buffers (queue 2) carry `{stream_id}`, PCM bytes and a writable status: the
//! worker ([`handler`]) copies the bytes into the stream's buffer and keeps the request
//! until the backend has played them, so completions pace the guest at the real rate.
//! Receive buffers (queue 3) wait until the backend recorded a full buffer's worth. The
//! backend's real-time thread only touches the [`PcmBuffer`]s and never waits; underruns
//! and overruns are counted there and logged (rate-limited) by the worker. The event queue
//! (1) is never used: jacks do not change.
//!
//! Saved state: each stream's state and parameters as the guest set them. The worker
//! holds no control or capture request (a capture buffer not yet filled stays in the
//! ring); playback requests it holds are returned to the guest at the save with an OK
//! status (their unplayed bytes are not heard). A restored stream that was prepared,
//! running or stopped opens its backend stream again, and a running one starts.

pub mod control;
mod handler;

use std::sync::Arc;

pub use crate::audio::pcm;
pub use crate::audio::{AudioBackend, AudioError, Direction, PcmBuffer, PcmParams, SampleFormat};

use serde::{Deserialize, Serialize};

use super::{Activation, QueuePosition, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, VirtioError};
use crate::state::{self, StateError};
use control::StreamState;

const NAME: &str = "virtio-snd";

/// Virtio device id of a sound card.
pub const DEVICE_TYPE: u16 = 25;
pub const QUEUE_SIZE: u16 = 64;
pub const CONTROL_QUEUE: usize = 0;
pub const EVENT_QUEUE: usize = 1;
pub const TX_QUEUE: usize = 2;
pub const RX_QUEUE: usize = 3;
/// Stream 0 plays, stream 1 records.
pub const STREAMS: usize = 2;

/// One stream's state as the device keeps it.
pub struct StreamSlot {
    pub id: u32,
    pub direction: Direction,
    pub state: StreamState,
    pub params: Option<PcmParams>,
    pub buffer: Option<Arc<PcmBuffer>>,
}

impl StreamSlot {
    fn new(id: u32, direction: Direction) -> Self {
        Self {
            id,
            direction,
            state: StreamState::Fresh,
            params: None,
            buffer: None,
        }
    }

    /// Opens the stream on the backend with a fresh buffer: the size of the guest's ring
    /// for playback (so completions pace the guest), and at least 200 ms for capture (so a
    /// slow guest loses less).
    fn open(&mut self, backend: &dyn AudioBackend) -> Result<(), AudioError> {
        let params = self
            .params
            .ok_or_else(|| AudioError::Unavailable("no parameters".into()))?;
        let ring = params.buffer_bytes as usize;
        let capacity = match self.direction {
            Direction::Output => ring,
            Direction::Input => ring.max(params.rate as usize * params.frame_bytes() / 5),
        };
        let buffer =
            Arc::new(PcmBuffer::new(capacity, params.frame_bytes()).map_err(AudioError::Buffer)?);
        backend.open(self.id, self.direction, params, buffer.clone())?;
        self.buffer = Some(buffer);
        Ok(())
    }

    fn close(&mut self, backend: &dyn AudioBackend) {
        if self.buffer.take().is_some() {
            backend.close(self.id);
        }
    }
}

/// One stream in a saved device: its state and its parameters as the SET_PARAMS request
/// that set them (checked again on restore).
#[derive(Serialize, Deserialize)]
struct SavedStream {
    state: StreamState,
    params: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct SavedSnd {
    streams: Vec<SavedStream>,
    /// Playback requests were returned at the save: the driver needs an interrupt.
    returned_tx: bool,
}

/// The sound card.
pub struct Snd {
    backend: Arc<dyn AudioBackend>,
    worker: Option<super::worker::DeviceThread>,
    /// What [`VirtioDevice::pause`] took from the worker.
    paused: Option<handler::Resume>,
    /// What a restore took back, for the next activation.
    resume: Option<handler::Resume>,
}

impl Snd {
    pub fn new(backend: Arc<dyn AudioBackend>) -> Self {
        Self {
            backend,
            worker: None,
            paused: None,
            resume: None,
        }
    }
}

impl VirtioDevice for Snd {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Multimedia controller, audio device.
        (0x04, 0x01, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 4]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // jacks, streams, chmaps.
        let mut c = [0u8; 12];
        c[..4].copy_from_slice(&2u32.to_le_bytes());
        c[4..8].copy_from_slice(&(STREAMS as u32).to_le_bytes());
        c[8..].copy_from_slice(&2u32.to_le_bytes());
        super::read_config_bytes(&c, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        self.worker = None;
        let resume = self.resume.take();
        self.worker = Some(handler::spawn(activation, self.backend.clone(), resume)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        self.resume = None;
    }

    fn state_name(&self) -> &str {
        NAME
    }

    fn can_save(&self) -> bool {
        true
    }

    fn pause(&mut self) -> Result<Vec<QueuePosition>, StateError> {
        let mut h = self
            .worker
            .take()
            .and_then(|mut w| w.stop_and_take::<handler::Handler>())
            .ok_or_else(|| StateError::device(NAME, "its worker was not running"))?;
        let returned_tx = h.return_held();
        self.paused = Some(handler::Resume {
            streams: h.streams(),
            returned_tx,
        });
        Ok(h.positions())
    }

    fn save_device_state(&mut self) -> Result<Vec<u8>, StateError> {
        // A device the driver has not started has fresh streams.
        let paused = self.paused.take().unwrap_or(handler::Resume {
            streams: vec![(StreamState::Fresh, None); STREAMS],
            returned_tx: false,
        });
        let saved = SavedSnd {
            streams: paused
                .streams
                .iter()
                .enumerate()
                .map(|(i, (state, params))| SavedStream {
                    state: *state,
                    params: params.map(|p| control::params_request(i as u32, &p)),
                })
                .collect(),
            returned_tx: paused.returned_tx,
        };
        state::encode(NAME, &saved)
    }

    fn restore_device_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let s: SavedSnd = state::decode(NAME, bytes)?;
        if s.streams.len() != STREAMS {
            return Err(StateError::mismatch(
                NAME,
                format!("{} saved streams, the card has {STREAMS}", s.streams.len()),
            ));
        }
        let mut streams = Vec::with_capacity(STREAMS);
        for (i, saved) in s.streams.into_iter().enumerate() {
            let params = match &saved.params {
                Some(req) => Some(control::parse_params(req).ok_or_else(|| {
                    StateError::mismatch(NAME, format!("stream {i}: invalid saved parameters"))
                })?),
                None => None,
            };
            let needs_params = matches!(
                saved.state,
                StreamState::Params
                    | StreamState::Prepared
                    | StreamState::Running
                    | StreamState::Stopped
            );
            if needs_params && params.is_none() {
                return Err(StateError::mismatch(
                    NAME,
                    format!("stream {i}: {:?} without parameters", saved.state),
                ));
            }
            streams.push((saved.state, params));
        }
        self.resume = Some(handler::Resume {
            streams,
            returned_tx: s.returned_tx,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
