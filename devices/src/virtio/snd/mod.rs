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

pub mod control;
mod handler;

use std::sync::Arc;

pub use crate::audio::pcm;
pub use crate::audio::{AudioBackend, AudioError, Direction, PcmBuffer, PcmParams, SampleFormat};

use super::{Activation, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, VirtioError};
use control::StreamState;

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

/// The sound card.
pub struct Snd {
    backend: Arc<dyn AudioBackend>,
    worker: Option<super::worker::DeviceThread>,
}

impl Snd {
    pub fn new(backend: Arc<dyn AudioBackend>) -> Self {
        Self {
            backend,
            worker: None,
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
        self.worker = Some(handler::spawn(activation, self.backend.clone())?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

#[cfg(test)]
mod tests;
