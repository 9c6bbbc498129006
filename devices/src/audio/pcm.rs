//! PCM data between the device worker and the audio backend.
//!
//! Data flow: each stream has a [`PcmBuffer`], a bounded byte ring shared by two threads.
//! Playback: the worker pushes the bytes of guest transmit buffers; the backend's real-time
//! callback takes them ([`PcmBuffer::play_into`]), filling any shortfall with silence and
//! counting an underrun. Capture: the callback pushes what the host recorded
//! ([`PcmBuffer::record_from`], dropping what does not fit and counting an overrun); the
//! worker fills guest receive buffers from it. The callback never waits: it only
//! `try_lock`s the ring and treats a busy ring like an empty (or full) one. After moving
//! data the callback signals the buffer's eventfd, which wakes the worker.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Sample formats the device offers (virtio-snd `VIRTIO_SND_PCM_FMT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    S16,
    S32,
    Float,
}

impl SampleFormat {
    /// The virtio-snd format code.
    pub fn code(self) -> u8 {
        match self {
            Self::S16 => 5,
            Self::S32 => 17,
            Self::Float => 19,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        [Self::S16, Self::S32, Self::Float]
            .into_iter()
            .find(|f| f.code() == code)
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::S16 => 2,
            Self::S32 | Self::Float => 4,
        }
    }
}

/// Frame rates the device offers, indexed by the virtio-snd rate code.
pub const RATES: [(u8, u32); 9] = [
    (1, 8000),
    (2, 11025),
    (3, 16000),
    (4, 22050),
    (5, 32000),
    (6, 44100),
    (7, 48000),
    (9, 88200),
    (10, 96000),
];

/// The frame rate for a virtio-snd rate code the device offers.
pub fn rate_from_code(code: u8) -> Option<u32> {
    RATES.iter().find(|r| r.0 == code).map(|r| r.1)
}

/// What a stream plays or records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmParams {
    pub format: SampleFormat,
    pub rate: u32,
    pub channels: u8,
    /// The guest's ring size and period size, in bytes.
    pub buffer_bytes: u32,
    pub period_bytes: u32,
}

impl PcmParams {
    pub fn frame_bytes(&self) -> usize {
        self.format.bytes() * usize::from(self.channels)
    }
}

/// A bounded byte ring between the worker and the backend callback.
pub struct PcmBuffer {
    ring: Mutex<VecDeque<u8>>,
    capacity: usize,
    /// Bytes per frame: capture keeps whole frames only.
    frame: usize,
    /// Bytes the backend took (playback) or gave (capture), in total.
    moved: AtomicU64,
    /// Bytes the worker pushed (playback), in total.
    pushed: AtomicU64,
    underruns: AtomicU64,
    overruns: AtomicU64,
    event: EventFd,
}

impl PcmBuffer {
    /// A ring of `capacity` bytes for frames of `frame` bytes.
    pub fn new(capacity: usize, frame: usize) -> std::io::Result<Self> {
        Ok(Self {
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            frame: frame.max(1),
            moved: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            underruns: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Signalled by the backend after it moved data.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes in the ring now.
    pub fn len(&self) -> usize {
        crate::bus::lock(&self.ring).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes the backend moved.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Acquire)
    }

    pub fn underruns(&self) -> u64 {
        self.underruns.load(Ordering::Relaxed)
    }

    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::Relaxed)
    }

    /// Worker side, playback: appends `data` if it fits whole. Returns the total pushed
    /// so far, which [`moved`](Self::moved) reaches once the backend played `data`.
    pub fn push(&self, data: &[u8]) -> Option<u64> {
        let mut ring = crate::bus::lock(&self.ring);
        if ring.len() + data.len() > self.capacity {
            return None;
        }
        ring.extend(data);
        Some(self.pushed.fetch_add(data.len() as u64, Ordering::AcqRel) + data.len() as u64)
    }

    /// Worker side, capture: takes exactly `out.len()` bytes if that many are there.
    pub fn take_exact(&self, out: &mut [u8]) -> bool {
        let mut ring = crate::bus::lock(&self.ring);
        if ring.len() < out.len() {
            return false;
        }
        let n = out.len();
        for (o, b) in out.iter_mut().zip(ring.drain(..n)) {
            *o = b;
        }
        true
    }

    /// Worker side, playback: bytes that fit now.
    pub fn room(&self) -> usize {
        self.capacity - self.len().min(self.capacity)
    }

    /// Worker side, capture: takes up to `out.len()` bytes, whole frames only. Returns
    /// how many.
    pub fn take_up_to(&self, out: &mut [u8]) -> usize {
        let mut ring = crate::bus::lock(&self.ring);
        let n = ring.len().min(out.len());
        let n = n - n % self.frame;
        for (o, b) in out.iter_mut().zip(ring.drain(..n)) {
            *o = b;
        }
        n
    }

    /// Drops everything queued (stream released).
    pub fn clear(&self) {
        crate::bus::lock(&self.ring).clear();
    }

    /// Backend side, playback: fills `out` from the ring and silence (zero bytes, silent
    /// for the signed and float formats offered). Never blocks. Returns the bytes that
    /// came from the guest; a shortfall while `running` counts as an underrun.
    pub fn play_into(&self, out: &mut [u8], running: bool) -> usize {
        let n = match self.ring.try_lock() {
            Ok(mut ring) => {
                let n = ring.len().min(out.len());
                for (o, b) in out.iter_mut().zip(ring.drain(..n)) {
                    *o = b;
                }
                n
            }
            Err(_) => 0,
        };
        out[n..].fill(0);
        if n < out.len() && running {
            self.underruns.fetch_add(1, Ordering::Relaxed);
        }
        if n > 0 {
            self.moved.fetch_add(n as u64, Ordering::AcqRel);
            self.signal();
        }
        n
    }

    /// Backend side, capture: appends the whole frames of `data` that fit. Never blocks.
    /// Returns the bytes kept; dropping any counts as an overrun.
    pub fn record_from(&self, data: &[u8]) -> usize {
        let n = match self.ring.try_lock() {
            Ok(mut ring) => {
                let room = self.capacity - ring.len().min(self.capacity);
                let n = room.min(data.len());
                let n = n - n % self.frame;
                ring.extend(&data[..n]);
                n
            }
            Err(_) => 0,
        };
        if n < data.len() {
            self.overruns.fetch_add(1, Ordering::Relaxed);
        }
        if n > 0 {
            self.moved.fetch_add(n as u64, Ordering::AcqRel);
            self.signal();
        }
        n
    }

    fn signal(&self) {
        // A full counter still wakes the worker; nothing else can go wrong here.
        let _ = self.event.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playback_pads_with_silence_and_counts_underruns_only_while_running() {
        let b = PcmBuffer::new(8, 1).unwrap();
        assert_eq!(b.push(&[1, 2, 3]), Some(3));
        assert_eq!(
            b.push(&[0; 6]),
            None,
            "a push that does not fit whole is refused"
        );
        let mut out = [9u8; 5];
        assert_eq!(b.play_into(&mut out, true), 3);
        assert_eq!(out, [1, 2, 3, 0, 0]);
        assert_eq!(b.underruns(), 1);
        assert_eq!(b.moved(), 3);
        b.play_into(&mut out, false);
        assert_eq!(b.underruns(), 1);
        assert_eq!(b.event().read().unwrap(), 1);
    }

    #[test]
    fn capture_keeps_whole_frames_that_fit_and_counts_overruns() {
        let b = PcmBuffer::new(7, 2).unwrap();
        assert_eq!(b.record_from(&[1, 2, 3, 4]), 4);
        // Three bytes of room: one whole frame is kept, half a frame never is.
        assert_eq!(b.record_from(&[5, 6, 7, 8]), 2);
        assert_eq!(b.overruns(), 1);
        let mut out = [0u8; 6];
        assert!(b.take_exact(&mut out));
        assert_eq!(out, [1, 2, 3, 4, 5, 6]);
        assert!(!b.take_exact(&mut out));
    }

    #[test]
    fn partial_takes_keep_whole_frames_and_room_shrinks_as_the_ring_fills() {
        let b = PcmBuffer::new(8, 2).unwrap();
        assert_eq!(b.room(), 8);
        b.record_from(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(b.room(), 2);
        let mut out = [0u8; 5];
        assert_eq!(b.take_up_to(&mut out), 4, "half a frame stays in the ring");
        assert_eq!(out[..4], [1, 2, 3, 4]);
        assert_eq!(b.take_up_to(&mut out), 2);
        assert_eq!(b.take_up_to(&mut out), 0);
    }

    #[test]
    fn maps_format_and_rate_codes() {
        assert_eq!(SampleFormat::from_code(5), Some(SampleFormat::S16));
        assert_eq!(SampleFormat::from_code(3), None);
        assert_eq!(rate_from_code(7), Some(48000));
        assert_eq!(rate_from_code(0), None);
    }
}
