//! virtio-snd control requests (virtio 1.2, 5.14.6): parsing, the stream state machine and
//! the replies, free of queues and threads so every case is a plain unit test.

use super::pcm::{PcmParams, RATES, SampleFormat, rate_from_code};
use super::{AudioBackend, Direction, STREAMS, StreamSlot};

pub const R_JACK_INFO: u32 = 1;
pub const R_JACK_REMAP: u32 = 2;
pub const R_PCM_INFO: u32 = 0x100;
pub const R_PCM_SET_PARAMS: u32 = 0x101;
pub const R_PCM_PREPARE: u32 = 0x102;
pub const R_PCM_RELEASE: u32 = 0x103;
pub const R_PCM_START: u32 = 0x104;
pub const R_PCM_STOP: u32 = 0x105;
pub const R_CHMAP_INFO: u32 = 0x200;

pub const S_OK: u32 = 0x8000;
pub const S_BAD_MSG: u32 = 0x8001;
pub const S_NOT_SUPP: u32 = 0x8002;
pub const S_IO_ERR: u32 = 0x8003;

/// The largest ring a guest may ask for, per stream.
pub const MAX_BUFFER_BYTES: u32 = 1 << 20;

/// HDA pin default configuration: a green 1/8" line-out jack and a pink microphone jack.
const JACKS: [(u32, Direction); 2] = [
    (0x0101_4010, Direction::Output),
    (0x01a1_9020, Direction::Input),
];
/// Channel positions (VIRTIO_SND_CHMAP_FL, FR) of the one map per direction.
const CHMAP_FL: u8 = 3;
const CHMAP_FR: u8 = 4;

/// Where a stream is in its life (5.14.6.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StreamState {
    /// No parameters yet.
    Fresh,
    Params,
    Prepared,
    Running,
    Stopped,
    Released,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
}

/// The reply to one control request: status and any info structures after it.
pub fn handle(
    request: &[u8],
    streams: &mut [StreamSlot; STREAMS],
    backend: &dyn AudioBackend,
) -> Vec<u8> {
    let Some(code) = le32(request, 0) else {
        return status(S_BAD_MSG);
    };
    match code {
        R_JACK_INFO | R_PCM_INFO | R_CHMAP_INFO => query(code, request),
        R_PCM_SET_PARAMS | R_PCM_PREPARE | R_PCM_RELEASE | R_PCM_START | R_PCM_STOP => {
            let stream = le32(request, 4).and_then(|id| streams.get_mut(id as usize));
            match stream {
                Some(s) => status(pcm(code, request, s, backend)),
                None => status(S_BAD_MSG),
            }
        }
        R_JACK_REMAP => status(S_NOT_SUPP),
        _ => status(S_NOT_SUPP),
    }
}

fn status(code: u32) -> Vec<u8> {
    code.to_le_bytes().to_vec()
}

/// `*_INFO`: `{ hdr, start_id, count, size }` answered with `count` items of `size` bytes.
fn query(code: u32, request: &[u8]) -> Vec<u8> {
    let (Some(start), Some(count), Some(size)) =
        (le32(request, 4), le32(request, 8), le32(request, 12))
    else {
        return status(S_BAD_MSG);
    };
    let total = match code {
        R_JACK_INFO => JACKS.len(),
        R_PCM_INFO => STREAMS,
        _ => 2,
    };
    let (start, count, size) = (start as usize, count as usize, size as usize);
    if start.checked_add(count).is_none_or(|end| end > total) || size > 1024 {
        return status(S_BAD_MSG);
    }
    let mut out = status(S_OK);
    for id in start..start + count {
        let mut item = match code {
            R_JACK_INFO => jack_info(id),
            R_PCM_INFO => pcm_info(id),
            _ => chmap_info(id),
        };
        item.resize(size, 0);
        out.extend_from_slice(&item);
    }
    out
}

fn direction_of(id: usize) -> Direction {
    if id == 0 {
        Direction::Output
    } else {
        Direction::Input
    }
}

/// `virtio_snd_jack_info`: hda_fn_nid, features, hda_reg_defconf, hda_reg_caps,
/// connected, padding.
fn jack_info(id: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&JACKS[id].0.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.push(1);
    v.extend_from_slice(&[0; 7]);
    v
}

/// `virtio_snd_pcm_info`: hda_fn_nid, features, formats, rates, direction, channels
/// min and max, padding.
fn pcm_info(id: usize) -> Vec<u8> {
    let formats = [SampleFormat::S16, SampleFormat::S32, SampleFormat::Float]
        .iter()
        .fold(0u64, |f, s| f | 1 << s.code());
    let rates = RATES.iter().fold(0u64, |r, (code, _)| r | 1 << code);
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&formats.to_le_bytes());
    v.extend_from_slice(&rates.to_le_bytes());
    v.push(direction_of(id) as u8);
    v.push(1);
    v.push(2);
    v.extend_from_slice(&[0; 5]);
    v
}

/// `virtio_snd_chmap_info`: hda_fn_nid, direction, channels, positions[18].
fn chmap_info(id: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&0u32.to_le_bytes());
    v.push(direction_of(id) as u8);
    v.push(2);
    let mut positions = [0u8; 18];
    positions[0] = CHMAP_FL;
    positions[1] = CHMAP_FR;
    v.extend_from_slice(&positions);
    v
}

/// One PCM command on one stream.
fn pcm(code: u32, request: &[u8], s: &mut StreamSlot, backend: &dyn AudioBackend) -> u32 {
    use StreamState::*;
    match (code, s.state) {
        (R_PCM_SET_PARAMS, Fresh | Params | Prepared | Released) => match parse_params(request) {
            Some(p) => {
                if s.state == Prepared {
                    s.close(backend);
                }
                s.params = Some(p);
                s.state = Params;
                S_OK
            }
            None => S_BAD_MSG,
        },
        // The specification prepares only fresh, prepared or released streams; a stopped
        // one is accepted too (as if released first), as drivers recovering from an xrun
        // may ask for it.
        (R_PCM_PREPARE, Params | Prepared | Stopped | Released) => {
            if matches!(s.state, Prepared | Stopped) {
                s.close(backend);
            }
            match s.open(backend) {
                Ok(()) => {
                    s.state = Prepared;
                    S_OK
                }
                Err(e) => {
                    crate::guest_warn!("snd: stream {}: cannot open: {e}", s.id);
                    S_IO_ERR
                }
            }
        }
        (R_PCM_START, Prepared | Stopped) => {
            backend.start(s.id);
            s.state = Running;
            S_OK
        }
        (R_PCM_STOP, Running) => {
            backend.stop(s.id);
            s.state = Stopped;
            S_OK
        }
        (R_PCM_RELEASE, Prepared | Stopped) => {
            s.close(backend);
            s.state = Released;
            S_OK
        }
        _ => S_BAD_MSG,
    }
}

/// `virtio_snd_pcm_set_params`: hdr, stream_id, buffer_bytes, period_bytes, features,
/// channels, format, rate, padding.
pub(super) fn parse_params(r: &[u8]) -> Option<PcmParams> {
    let buffer_bytes = le32(r, 8)?;
    let period_bytes = le32(r, 12)?;
    let features = le32(r, 16)?;
    let (&channels, &format, &rate) = (r.get(20)?, r.get(21)?, r.get(22)?);
    let p = PcmParams {
        format: SampleFormat::from_code(format)?,
        rate: rate_from_code(rate)?,
        channels,
        buffer_bytes,
        period_bytes,
    };
    let valid = features == 0
        && (1..=2).contains(&channels)
        && period_bytes > 0
        && buffer_bytes <= MAX_BUFFER_BYTES
        && buffer_bytes >= period_bytes
        && (period_bytes as usize).is_multiple_of(p.frame_bytes());
    valid.then_some(p)
}

/// The SET_PARAMS request that sets `p` on `stream` (what a restore checks again with
/// [`parse_params`]).
pub(super) fn params_request(stream: u32, p: &PcmParams) -> Vec<u8> {
    let rate = RATES.iter().find(|r| r.1 == p.rate).map_or(0, |r| r.0);
    let mut r = Vec::with_capacity(24);
    for w in [R_PCM_SET_PARAMS, stream, p.buffer_bytes, p.period_bytes, 0] {
        r.extend_from_slice(&w.to_le_bytes());
    }
    r.extend_from_slice(&[p.channels, p.format.code(), rate, 0]);
    r
}
