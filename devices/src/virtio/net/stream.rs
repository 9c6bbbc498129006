//! The framing of a passt-style stream socket: each Ethernet frame travels as a 4-byte
//! big-endian length followed by the frame.
//!
//! Data flow: [`FrameReader`] collects bytes read from the socket and hands out whole
//! frames in place; [`FrameWriter`] queues length-prefixed frames and writes as much as the
//! non-blocking socket takes, so a slow peer pushes back on the transmit queue instead of
//! blocking the worker.

use std::io::{self, Read, Write};

/// The largest frame either side may send: passt's 65520-byte MTU plus an Ethernet header,
/// rounded up.
pub const MAX_FRAME: usize = 65_552;
const PREFIX: usize = 4;
/// Bytes the writer holds before it refuses more frames.
pub const WRITE_LIMIT: usize = 256 * 1024;

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("peer announced a {0}-byte frame (at most {MAX_FRAME})")]
    FrameTooLong(usize),
}

/// Reassembles frames from a byte stream.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    pub fn new() -> Self {
        Self {
            buf: vec![0; 2 * (MAX_FRAME + PREFIX)],
            start: 0,
            end: 0,
        }
    }

    /// The next whole frame, if one has arrived; it stays until [`consume`](Self::consume).
    pub fn peek(&self) -> Result<Option<&[u8]>, StreamError> {
        let have = &self.buf[self.start..self.end];
        let Some(prefix) = have.first_chunk::<PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_FRAME {
            return Err(StreamError::FrameTooLong(len));
        }
        Ok(have.get(PREFIX..PREFIX + len))
    }

    /// The whole frames read and not yet consumed, in order (for a save); a frame whose
    /// bytes have not all arrived is left out.
    pub fn whole_frames(&self) -> Vec<Vec<u8>> {
        whole_frames(&self.buf[self.start..self.end])
    }

    /// Drops the frame [`peek`](Self::peek) returned.
    pub fn consume(&mut self) {
        if let Ok(Some(frame)) = self.peek() {
            self.start += PREFIX + frame.len();
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `src` into the free space; returns what `read` returned (0 at end of
    /// stream). The buffer always has room for one more whole frame once the frames before
    /// it are consumed.
    pub fn fill(&mut self, src: &mut impl Read) -> io::Result<usize> {
        if self.end == self.buf.len() || self.buf.len() - self.start < PREFIX + MAX_FRAME {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = src.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}

/// The length-prefixed frames at the start of `bytes`, up to the first incomplete one (or
/// one announcing more than [`MAX_FRAME`]).
fn whole_frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Some((prefix, rest)) = bytes.split_first_chunk::<PREFIX>() {
        let len = u32::from_be_bytes(*prefix) as usize;
        let Some(frame) = rest.get(..len).filter(|_| len <= MAX_FRAME) else {
            break;
        };
        frames.push(frame.to_vec());
        bytes = &rest[len..];
    }
    frames
}

/// Queues frames for a non-blocking stream.
#[derive(Default)]
pub struct FrameWriter {
    buf: Vec<u8>,
    sent: usize,
    /// Where the frame holding byte `sent` starts: `buf` is only ever trimmed at a frame
    /// boundary, so the frames not yet started can be told from a partly written one.
    frame: usize,
}

impl FrameWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the writer holds so much that the transmit queue should wait.
    pub fn is_full(&self) -> bool {
        self.buf.len() - self.sent >= WRITE_LIMIT
    }

    /// Whether bytes wait for the socket.
    pub fn has_pending(&self) -> bool {
        self.sent < self.buf.len()
    }

    /// Appends a frame of `len` bytes filled by `fill`; nothing is queued if `fill` fails.
    pub fn push_with<E>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let at = self.buf.len();
        // `len` is at most MAX_FRAME (checked by every caller), so it fits the prefix.
        self.buf.extend_from_slice(&(len as u32).to_be_bytes());
        self.buf.resize(at + PREFIX + len, 0);
        let r = fill(&mut self.buf[at + PREFIX..]);
        if r.is_err() {
            self.buf.truncate(at);
        }
        r
    }

    /// Writes what the stream takes; `WouldBlock` is not an error.
    pub fn flush(&mut self, dst: &mut impl Write) -> io::Result<()> {
        while self.sent < self.buf.len() {
            match dst.write(&self.buf[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
            self.frame = 0;
            return Ok(());
        }
        // Step over the frames written out completely.
        while let Some(prefix) = self.buf[self.frame..].first_chunk::<PREFIX>() {
            let end = self.frame + PREFIX + u32::from_be_bytes(*prefix) as usize;
            if end > self.sent {
                break;
            }
            self.frame = end;
        }
        if self.frame > WRITE_LIMIT {
            self.buf.drain(..self.frame);
            self.sent -= self.frame;
            self.frame = 0;
        }
        Ok(())
    }

    /// The frames queued whose first byte has not been written yet, in order (for a save);
    /// a frame the stream has taken part of is left out.
    pub fn unstarted_frames(&self) -> Vec<Vec<u8>> {
        let mut frames = whole_frames(&self.buf[self.frame..]);
        if self.sent > self.frame && !frames.is_empty() {
            frames.remove(0);
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `chunk` bytes at a time.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut w = FrameWriter::new();
        for f in frames {
            w.push_with(f.len(), |b| {
                b.copy_from_slice(f);
                Ok::<_, ()>(())
            })
            .unwrap();
        }
        let mut out = Vec::new();
        w.flush(&mut out).unwrap();
        assert!(!w.has_pending());
        out
    }

    #[test]
    fn reassembles_frames_split_across_reads() {
        let big = vec![7u8; MAX_FRAME];
        let data = framed(&[b"hello", &big, b"", b"x"]);
        assert_eq!(&data[..9], &[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        let mut src = Trickle {
            data: &data,
            chunk: 1000,
        };
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        loop {
            while let Some(f) = r.peek().unwrap() {
                got.push(f.to_vec());
                r.consume();
            }
            if r.fill(&mut src).unwrap() == 0 {
                break;
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), big, vec![], b"x".to_vec()]);
    }

    #[test]
    fn an_oversized_length_is_an_error_not_an_allocation() {
        let mut r = FrameReader::new();
        let mut src: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2];
        r.fill(&mut src).unwrap();
        assert_eq!(r.peek(), Err(StreamError::FrameTooLong(0xffff_ffff)));
    }

    #[test]
    fn a_failed_fill_queues_nothing() {
        let mut w = FrameWriter::new();
        assert!(w.push_with(10, |_| Err("bad chain")).is_err());
        assert!(!w.has_pending());
    }

    /// A sink that takes `room` bytes, then would block.
    struct Narrow {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.got.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_save_keeps_the_unstarted_frames_and_drops_the_one_cut_in_the_stream() {
        let mut w = FrameWriter::new();
        let frames: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 60_000]).collect();
        for f in &frames {
            w.push_with(f.len(), |b| {
                b.copy_from_slice(f);
                Ok::<_, ()>(())
            })
            .unwrap();
        }
        assert_eq!(w.unstarted_frames(), frames);
        // Five and a half frames out: past WRITE_LIMIT, so the buffer is trimmed too.
        let mut sink = Narrow {
            got: Vec::new(),
            room: 5 * 60_004 + 30_000,
        };
        w.flush(&mut sink).unwrap();
        assert_eq!(w.unstarted_frames(), frames[6..]);
        sink.room = 30_004;
        w.flush(&mut sink).unwrap();
        assert_eq!(w.unstarted_frames(), frames[6..]);
        sink.room = 1;
        w.flush(&mut sink).unwrap();
        assert_eq!(w.unstarted_frames(), frames[7..]);

        let mut r = FrameReader::new();
        let data = framed(&[b"one", b"two", b"three"]);
        let mut src = &data[..data.len() - 2];
        r.fill(&mut src).unwrap();
        assert_eq!(r.whole_frames(), vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn a_blocked_socket_keeps_the_rest_and_pushes_back() {
        let mut w = FrameWriter::new();
        let frame = vec![1u8; 60_000];
        for _ in 0..5 {
            assert!(!w.is_full());
            w.push_with(frame.len(), |b| {
                b.copy_from_slice(&frame);
                Ok::<_, ()>(())
            })
            .unwrap();
        }
        assert!(w.is_full());
        let mut sink = Narrow {
            got: Vec::new(),
            room: 10,
        };
        w.flush(&mut sink).unwrap();
        assert!(w.has_pending());
        sink.room = usize::MAX;
        w.flush(&mut sink).unwrap();
        assert!(!w.has_pending());
        assert_eq!(sink.got.len(), 5 * 60_004);
        assert_eq!(&sink.got[60_004..60_008], &60_000u32.to_be_bytes());
    }
}
