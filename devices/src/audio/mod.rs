//! Sound shared by the sound cards (virtio-snd, Intel HD Audio): the [`AudioBackend`] the
//! helper implements on PipeWire, and the [`PcmBuffer`] ring between a card's worker and
//! the backend's real-time thread.
//!
//! Data flow: a card opens a stream on the backend with a fresh [`PcmBuffer`]; its worker
//! pushes guest samples into the ring (playback) or takes recorded ones out (capture);
//! the backend's callback does the other side and signals the ring's eventfd, which wakes
//! the worker. The ring's size sets how far the card runs ahead of the host: the pacing.

pub mod pcm;

use std::sync::Arc;

pub use pcm::{PcmBuffer, PcmParams, SampleFormat};

/// A stream's direction (numbered as virtio-snd numbers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Output = 0,
    Input = 1,
}

/// Errors of an audio backend.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("audio backend unavailable: {0}")]
    Unavailable(String),
    #[error("cannot create the stream buffer")]
    Buffer(#[source] std::io::Error),
}

/// Where the streams' sound goes. Called from the device worker; implementations hand
/// the work to their own thread and return at once.
pub trait AudioBackend: Send + Sync {
    /// Opens stream `id` with `params`; its samples move through `buffer`.
    fn open(
        &self,
        id: u32,
        direction: Direction,
        params: PcmParams,
        buffer: Arc<PcmBuffer>,
    ) -> Result<(), AudioError>;
    /// Starts moving samples.
    fn start(&self, id: u32);
    /// Pauses (the stream stays open).
    fn stop(&self, id: u32);
    /// Closes the stream.
    fn close(&self, id: u32);
}
