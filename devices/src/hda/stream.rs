//! One stream descriptor of the controller: its registers, and the DMA engine that walks
//! its buffer descriptor list (BDL) between guest memory and a [`PcmBuffer`].
//!
//! Data flow: the guest fills a cyclic buffer of CBL bytes described by BDL entries 0..=LVI
//! (16 bytes each: address, length, flags with IOC in bit 0) and sets RUN. The worker then
//! calls [`Stream::transfer`] with how many bytes may move now (the room in the playback
//! ring, the bytes recorded, or what the clock allows when no backend plays). It copies
//! entry by entry, advances LPIB (wrapping at CBL) and the BDL position (wrapping after
//! LVI), and reports each completed entry whose IOC bit is set. A BDL or buffer outside
//! guest RAM, a zero CBL or a BDL of zero-length entries is a descriptor error: the stream
//! stops with DESE set, and the guest may reset it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::audio::{PcmParams, SampleFormat};

/// SDnCTL bits.
pub const CTL_SRST: u32 = 1 << 0;
pub const CTL_RUN: u32 = 1 << 1;
pub const CTL_IOCE: u32 = 1 << 2;
pub const CTL_FEIE: u32 = 1 << 3;
pub const CTL_DEIE: u32 = 1 << 4;
pub const CTL_TAG_SHIFT: u32 = 20;
/// SDnSTS bits.
pub const STS_BCIS: u8 = 1 << 2;
pub const STS_FIFOE: u8 = 1 << 3;
pub const STS_DESE: u8 = 1 << 4;
pub const STS_FIFORDY: u8 = 1 << 5;
/// Bytes of a BDL entry, and the most entries a list has.
pub const BDL_ENTRY: u64 = 16;
pub const BDL_MAX: u16 = 256;
/// The most bytes one transfer call moves, so a call never holds the controller long.
pub const TRANSFER_MAX: usize = 16384;
/// FIFO size the stream reports (bytes - 1).
const FIFO_SIZE: u16 = 0xff;

/// Why a stream stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("its BDL entry {0} lies outside guest memory")]
    Bdl(u16),
    #[error("its buffer at {0:#x} lies outside guest memory")]
    Buffer(u64),
    #[error("its cyclic buffer length is zero")]
    NoLength,
    #[error("its BDL holds no bytes")]
    EmptyBdl,
}

/// What one transfer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub bytes: usize,
    /// Entries with IOC completed.
    pub ioc: bool,
}

/// A stream's registers and DMA position.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stream {
    pub output: bool,
    pub ctl: u32,
    pub sts: u8,
    pub lpib: u32,
    pub cbl: u32,
    pub lvi: u16,
    pub fifow: u16,
    pub fmt: u16,
    pub bdpl: u32,
    pub bdpu: u32,
    /// BDL entry being transferred and the bytes of it done.
    pub entry: u16,
    pub entry_done: u32,
}

impl Stream {
    pub fn new(output: bool) -> Self {
        Self {
            output,
            ..Self::default()
        }
    }

    /// Back to the power-on state (SRST, controller reset).
    pub fn reset(&mut self) {
        *self = Self::new(self.output);
    }

    pub fn running(&self) -> bool {
        self.ctl & (CTL_RUN | CTL_SRST) == CTL_RUN
    }

    /// The stream tag the guest set (1..15; 0 = none).
    pub fn tag(&self) -> u8 {
        ((self.ctl >> CTL_TAG_SHIFT) & 0xf) as u8
    }

    pub fn fifos(&self) -> u16 {
        FIFO_SIZE
    }

    /// Status bits that request an interrupt (those whose enable is set).
    pub fn interrupting(&self) -> bool {
        (self.sts & STS_BCIS != 0 && self.ctl & CTL_IOCE != 0)
            || (self.sts & STS_FIFOE != 0 && self.ctl & CTL_FEIE != 0)
            || (self.sts & STS_DESE != 0 && self.ctl & CTL_DEIE != 0)
    }

    fn bdl_base(&self) -> u64 {
        (u64::from(self.bdpu) << 32 | u64::from(self.bdpl)) & !0x7f
    }

    /// Moves up to `limit` bytes (at most [`TRANSFER_MAX`]): from guest memory into
    /// `sink` (playback), or from `source` into guest memory (capture). `sink` takes a
    /// chunk and `source` fills one, returning how many bytes it gave. Stops at entry
    /// ends so each completed entry is seen.
    pub fn transfer(
        &mut self,
        mem: &GuestMemoryMmap,
        limit: usize,
        sink: &mut dyn FnMut(&[u8]),
        source: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Result<Moved, StreamError> {
        if self.cbl == 0 {
            return Err(StreamError::NoLength);
        }
        let mut moved = Moved::default();
        let mut chunk = [0u8; 4096];
        let mut empty_entries = 0u16;
        let limit = limit.min(TRANSFER_MAX);
        while moved.bytes < limit {
            let (addr, len, ioc) = self.read_entry(mem)?;
            if self.entry_done >= len {
                // A zero-length (or shortened) entry: skip it, but not forever.
                empty_entries += 1;
                if empty_entries > BDL_MAX {
                    return Err(StreamError::EmptyBdl);
                }
                self.next_entry();
                continue;
            }
            empty_entries = 0;
            let n = (limit - moved.bytes)
                .min((len - self.entry_done) as usize)
                .min(self.cbl.saturating_sub(self.lpib).max(1) as usize)
                .min(chunk.len());
            let at = addr.wrapping_add(u64::from(self.entry_done));
            let buf = &mut chunk[..n];
            let n = if self.output {
                mem.read_slice(buf, GuestAddress(at))
                    .map_err(|_| StreamError::Buffer(at))?;
                sink(buf);
                n
            } else {
                let got = source(buf);
                if got == 0 {
                    break;
                }
                mem.write_slice(&buf[..got], GuestAddress(at))
                    .map_err(|_| StreamError::Buffer(at))?;
                got
            };
            moved.bytes += n;
            self.entry_done += n as u32;
            self.lpib += n as u32;
            if self.lpib >= self.cbl {
                self.lpib = 0;
            }
            if self.entry_done >= len {
                if ioc {
                    moved.ioc = true;
                }
                self.next_entry();
            }
        }
        Ok(moved)
    }

    fn next_entry(&mut self) {
        self.entry_done = 0;
        self.entry = if self.entry >= self.lvi.min(BDL_MAX - 1) {
            0
        } else {
            self.entry + 1
        };
    }

    /// The current BDL entry: buffer address, length, IOC.
    fn read_entry(&self, mem: &GuestMemoryMmap) -> Result<(u64, u32, bool), StreamError> {
        let at = self
            .bdl_base()
            .wrapping_add(u64::from(self.entry) * BDL_ENTRY);
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, GuestAddress(at))
            .map_err(|_| StreamError::Bdl(self.entry))?;
        let word = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let addr = u64::from(word(0)) | u64::from(word(4)) << 32;
        Ok((addr, word(8), word(12) & 1 != 0))
    }
}

/// A stream format word (SDnFMT, codec verb 0x2) taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub rate: u32,
    /// Bits per sample as stored: 8, 16, 20, 24 or 32 (20 and 24 in 32-bit containers).
    pub bits: u8,
    pub channels: u8,
}

impl Format {
    pub fn parse(word: u16) -> Option<Format> {
        if word & 0x8000 != 0 {
            return None; // not PCM
        }
        let base = if word & 0x4000 != 0 { 44100 } else { 48000 };
        let mult = u32::from((word >> 11) & 7) + 1;
        let div = u32::from((word >> 8) & 7) + 1;
        if mult > 4 {
            return None;
        }
        let bits = match (word >> 4) & 7 {
            0 => 8,
            1 => 16,
            2 => 20,
            3 => 24,
            4 => 32,
            _ => return None,
        };
        Some(Format {
            rate: base * mult / div,
            bits,
            channels: (word & 0xf) as u8 + 1,
        })
    }

    /// Bytes per frame in memory.
    pub fn frame_bytes(&self) -> usize {
        let sample = match self.bits {
            8 => 1,
            16 => 2,
            _ => 4,
        };
        sample * usize::from(self.channels)
    }

    /// Bytes per second.
    pub fn byte_rate(&self) -> u64 {
        u64::from(self.rate) * self.frame_bytes() as u64
    }

    /// The parameters for the audio backend, when it can play this format: 16 or 32
    /// bits, one or two channels. The backend's period is 10 ms; the ring holds
    /// `ring_ms` of sound.
    pub fn pcm_params(&self, ring_ms: u32) -> Option<PcmParams> {
        let format = match self.bits {
            16 => SampleFormat::S16,
            32 => SampleFormat::S32,
            _ => return None,
        };
        if !(1..=2).contains(&self.channels) {
            return None;
        }
        let frame = self.frame_bytes() as u32;
        let frames_per_ms = self.rate.div_ceil(1000);
        Some(PcmParams {
            format,
            rate: self.rate,
            channels: self.channels,
            buffer_bytes: frames_per_ms * ring_ms * frame,
            period_bytes: (self.rate / 100).max(1) * frame,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stream_format_words() {
        assert_eq!(
            Format::parse(0x0011),
            Some(Format {
                rate: 48000,
                bits: 16,
                channels: 2
            })
        );
        assert_eq!(Format::parse(0x4011).unwrap().rate, 44100);
        // 48 kHz / 6 = 8 kHz, mono.
        let f = Format::parse(0x0510).unwrap();
        assert_eq!((f.rate, f.channels, f.frame_bytes()), (8000, 1, 2));
        // x2 -> 96 kHz, 32 bit.
        assert_eq!(Format::parse(0x0841).unwrap().rate, 96000);
        assert_eq!(Format::parse(0x8011), None, "non-PCM");
        assert_eq!(Format::parse(0x0071), None, "reserved sample size");
        assert!(
            Format::parse(0x0013).unwrap().pcm_params(40).is_none(),
            "4 channels"
        );
    }
}
