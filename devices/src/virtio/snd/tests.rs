//! The sound device driven through guest memory, with a backend the test plays and
//! records by hand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::control::{
    R_CHMAP_INFO, R_JACK_INFO, R_JACK_REMAP, R_PCM_INFO, R_PCM_PREPARE, R_PCM_RELEASE,
    R_PCM_SET_PARAMS, R_PCM_START, R_PCM_STOP, S_BAD_MSG, S_IO_ERR, S_NOT_SUPP, S_OK,
};
use super::*;
use crate::virtio::ActiveQueue;
use crate::virtio::test_rings::{Irq, Ring};
use virtio_queue::QueueT;

const RINGS: [u64; 4] = [0x1_0000, 0x1_2000, 0x1_4000, 0x1_6000];
const REQ: u64 = 0x10_0000;
const RESP: u64 = 0x10_1000;
const PCM: u64 = 0x11_0000;
const STATUS: u64 = 0x12_0000;
const PERIOD: u32 = 960;

/// Records calls and keeps the buffers so the test can play and record.
#[derive(Default)]
struct FakeBackend {
    calls: Mutex<Vec<String>>,
    buffers: Mutex<HashMap<u32, Arc<PcmBuffer>>>,
    /// Refuse every stream, as a PipeWire without a sink for it would.
    refuse: std::sync::atomic::AtomicBool,
}

impl FakeBackend {
    fn buffer(&self, id: u32) -> Arc<PcmBuffer> {
        self.buffers.lock().unwrap()[&id].clone()
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl AudioBackend for FakeBackend {
    fn open(
        &self,
        id: u32,
        direction: Direction,
        params: PcmParams,
        buffer: Arc<PcmBuffer>,
    ) -> Result<(), AudioError> {
        if self.refuse.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(AudioError::Unavailable("refused".into()));
        }
        self.calls.lock().unwrap().push(format!(
            "open {id} {direction:?} {}x{:?}@{}",
            params.channels, params.format, params.rate
        ));
        self.buffers.lock().unwrap().insert(id, buffer);
        Ok(())
    }
    fn start(&self, id: u32) {
        self.calls.lock().unwrap().push(format!("start {id}"));
    }
    fn stop(&self, id: u32) {
        self.calls.lock().unwrap().push(format!("stop {id}"));
    }
    fn close(&self, id: u32) {
        self.calls.lock().unwrap().push(format!("close {id}"));
    }
}

struct Setup {
    mem: GuestMemoryMmap,
    dev: Snd,
    rings: Vec<Ring>,
    backend: Arc<FakeBackend>,
    irq: Arc<Irq>,
}

fn started() -> Setup {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let backend = Arc::new(FakeBackend::default());
    let mut dev = Snd::new(backend.clone());
    let mut rings = Vec::new();
    let mut queues = Vec::new();
    for (i, base) in RINGS.iter().enumerate() {
        let (ring, queue) = Ring::new(&mem, *base);
        queues.push(ActiveQueue {
            index: i as u16,
            queue,
            event: ring.kick.try_clone().unwrap(),
        });
        rings.push(ring);
    }
    let irq = Arc::new(Irq::default());
    dev.activate(Activation {
        mem: mem.clone(),
        interrupt: irq.clone(),
        queues,
        acked_features: 1 << 32,
    })
    .unwrap();
    Setup {
        mem,
        dev,
        rings,
        backend,
        irq,
    }
}

fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

impl Setup {
    /// Saves the device as the transport does (pause, then its state) and goes on with a
    /// fresh device on the same backend, restored and activated with the queues at their
    /// saved positions, as the transport's restore does.
    fn save_and_restore(&mut self) {
        let positions = self.dev.pause().unwrap();
        assert_eq!(positions.len(), 4);
        let state = self.dev.save_device_state().unwrap();
        let mut dev = Snd::new(self.backend.clone());
        dev.restore_device_state(&state).unwrap();
        let mut queues = Vec::new();
        for (i, base) in RINGS.iter().enumerate() {
            let mut q = virtio_queue::Queue::new(crate::virtio::test_rings::QSIZE).unwrap();
            q.set_size(crate::virtio::test_rings::QSIZE);
            q.set_desc_table_address(Some(*base as u32), Some(0));
            q.set_avail_ring_address(Some((base + 0x800) as u32), Some(0));
            q.set_used_ring_address(Some((base + 0x1000) as u32), Some(0));
            q.set_ready(true);
            let p = positions[i];
            assert_eq!(usize::from(p.index), i);
            q.set_next_avail(p.next_avail);
            q.set_next_used(p.next_used);
            queues.push(ActiveQueue {
                index: i as u16,
                queue: q,
                event: self.rings[i].kick.try_clone().unwrap(),
            });
        }
        self.irq = Arc::new(Irq::default());
        dev.activate(Activation {
            mem: self.mem.clone(),
            interrupt: self.irq.clone(),
            queues,
            acked_features: 1 << 32,
        })
        .unwrap();
        self.dev = dev;
    }

    /// Sends a control request and returns the reply (as many bytes as the device wrote).
    fn control(&mut self, req: &[u8], resp_len: u32) -> Vec<u8> {
        self.mem.write_slice(req, GuestAddress(REQ)).unwrap();
        let head = self.rings[CONTROL_QUEUE].add(
            &self.mem,
            &[(REQ, req.len() as u32, false), (RESP, resp_len, true)],
        );
        let (id, len) = self.rings[CONTROL_QUEUE].used(&self.mem);
        assert_eq!(id, u32::from(head));
        let mut out = vec![0u8; len as usize];
        self.mem.read_slice(&mut out, GuestAddress(RESP)).unwrap();
        out
    }

    fn status(&mut self, req: &[u8]) -> u32 {
        let r = self.control(req, 4);
        u32::from_le_bytes(r[..4].try_into().unwrap())
    }

    /// SET_PARAMS for mono S16 at 48 kHz with a 4-period ring.
    fn set_params(&mut self, stream: u32) -> u32 {
        let mut req = le(&[R_PCM_SET_PARAMS, stream, 4 * PERIOD, PERIOD, 0]);
        req.extend_from_slice(&[1, SampleFormat::S16.code(), 7, 0]);
        self.status(&req)
    }

    fn pcm(&mut self, code: u32, stream: u32) -> u32 {
        self.status(&le(&[code, stream]))
    }

    fn running(&mut self, stream: u32) {
        assert_eq!(self.set_params(stream), S_OK);
        assert_eq!(self.pcm(R_PCM_PREPARE, stream), S_OK);
        assert_eq!(self.pcm(R_PCM_START, stream), S_OK);
    }

    /// Queues one playback period `{stream}` + bytes + 8-byte status at slot `k`.
    fn play(&mut self, stream: u32, data: &[u8], k: u64) -> u16 {
        let at = PCM + k * 0x1000;
        self.mem.write_obj(stream, GuestAddress(at)).unwrap();
        self.mem.write_slice(data, GuestAddress(at + 4)).unwrap();
        self.rings[TX_QUEUE].add(
            &self.mem,
            &[
                (at, 4 + data.len() as u32, false),
                (STATUS + k * 8, 8, true),
            ],
        )
    }

    fn pcm_status(&self, k: u64) -> u32 {
        self.mem.read_obj(GuestAddress(STATUS + k * 8)).unwrap()
    }
}

#[test]
fn configuration_names_two_jacks_two_streams_two_maps() {
    let dev = Snd::new(Arc::new(FakeBackend::default()));
    let mut c = [0u8; 12];
    dev.read_config(0, &mut c);
    assert_eq!(c, le(&[2, 2, 2])[..]);
    assert_eq!(dev.queue_max_sizes().len(), 4);
    assert_eq!(dev.device_type(), 25);
}

#[test]
fn answers_pcm_jack_and_chmap_queries() {
    let mut s = started();
    let r = s.control(&le(&[R_PCM_INFO, 0, 2, 32]), 4 + 64);
    assert_eq!(r.len(), 68);
    assert_eq!(u32::from_le_bytes(r[..4].try_into().unwrap()), S_OK);
    let info = |i: usize| &r[4 + 32 * i..4 + 32 * (i + 1)];
    let formats = u64::from_le_bytes(info(0)[8..16].try_into().unwrap());
    let rates = u64::from_le_bytes(info(0)[16..24].try_into().unwrap());
    assert_ne!(formats & 1 << 5, 0, "S16");
    assert_ne!(rates & 1 << 7, 0, "48 kHz");
    assert_ne!(rates & 1 << 6, 0, "44.1 kHz");
    assert_eq!(&info(0)[24..27], &[0, 1, 2], "output, 1..2 channels");
    assert_eq!(info(1)[24], 1, "stream 1 records");

    let r = s.control(&le(&[R_JACK_INFO, 0, 2, 24]), 4 + 48);
    assert_eq!(u32::from_le_bytes(r[..4].try_into().unwrap()), S_OK);
    assert_eq!(
        r[4 + 8..4 + 12],
        0x0101_4010u32.to_le_bytes(),
        "green line out"
    );
    assert_eq!(r[4 + 16], 1, "connected");
    let r = s.control(&le(&[R_CHMAP_INFO, 1, 1, 24]), 4 + 24);
    assert_eq!(&r[4 + 4..4 + 8], &[1, 2, 3, 4], "input, stereo FL FR");

    // Past the last stream, a short request, an unknown or unsupported request.
    assert_eq!(s.status(&le(&[R_PCM_INFO, 1, 2, 32])), S_BAD_MSG);
    assert_eq!(s.status(&le(&[R_PCM_INFO, u32::MAX, 2, 32])), S_BAD_MSG);
    assert_eq!(s.status(&le(&[R_PCM_INFO, 0])), S_BAD_MSG);
    assert_eq!(s.status(&[1, 0]), S_BAD_MSG);
    assert_eq!(s.status(&le(&[0x9999])), S_NOT_SUPP);
    assert_eq!(s.status(&le(&[R_JACK_REMAP, 0, 0, 0])), S_NOT_SUPP);
}

#[test]
fn streams_follow_the_state_machine_and_reach_the_backend() {
    let mut s = started();
    assert_eq!(s.pcm(R_PCM_START, 0), S_BAD_MSG, "start before prepare");
    assert_eq!(s.pcm(R_PCM_PREPARE, 0), S_BAD_MSG, "prepare before params");
    assert_eq!(s.pcm(R_PCM_PREPARE, 7), S_BAD_MSG, "no such stream");
    // Unknown format, no channels, period longer than the ring, a ring over 1 MiB.
    for tail in [[1, 3, 7, 0], [0, 5, 7, 0], [1, 5, 0, 0]] {
        let mut req = le(&[R_PCM_SET_PARAMS, 0, 4 * PERIOD, PERIOD, 0]);
        req.extend_from_slice(&tail);
        assert_eq!(s.status(&req), S_BAD_MSG);
    }
    for (buffer, period) in [(PERIOD, 2 * PERIOD), (2 << 20, PERIOD), (PERIOD, 3)] {
        let mut req = le(&[R_PCM_SET_PARAMS, 0, buffer, period, 0]);
        req.extend_from_slice(&[1, 5, 7, 0]);
        assert_eq!(s.status(&req), S_BAD_MSG);
    }
    s.running(0);
    assert_eq!(s.pcm(R_PCM_RELEASE, 0), S_BAD_MSG, "release while running");
    assert_eq!(s.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(s.pcm(R_PCM_START, 0), S_OK);
    assert_eq!(s.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(
        s.pcm(R_PCM_PREPARE, 0),
        S_OK,
        "xrun recovery: prepare after stop"
    );
    assert_eq!(s.pcm(R_PCM_STOP, 0), S_BAD_MSG, "stop while prepared");
    assert_eq!(s.pcm(R_PCM_RELEASE, 0), S_OK);
    assert_eq!(s.pcm(R_PCM_RELEASE, 0), S_BAD_MSG, "release twice");
    assert_eq!(
        s.backend.calls(),
        [
            "open 0 Output 1xS16@48000",
            "start 0",
            "stop 0",
            "start 0",
            "stop 0",
            "close 0",
            "open 0 Output 1xS16@48000",
            "close 0"
        ]
    );
}

#[test]
fn a_playback_period_returns_once_the_backend_played_it() {
    let mut s = started();
    s.running(0);
    let data: Vec<u8> = (0..PERIOD).map(|i| i as u8).collect();
    let head = s.play(0, &data, 0);
    assert!(s.rings[TX_QUEUE].idle(&s.mem), "held until played");
    let buffer = s.backend.buffer(0);
    let mut out = vec![0u8; 500];
    assert_eq!(buffer.play_into(&mut out, true), 500);
    assert_eq!(out[..], data[..500]);
    assert!(s.rings[TX_QUEUE].idle(&s.mem), "half played is not played");
    let mut out = vec![0u8; 600];
    assert_eq!(buffer.play_into(&mut out, true), 460);
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(head), 8));
    assert_eq!(s.pcm_status(0), S_OK);
    assert_eq!(buffer.underruns(), 1, "the last callback ran short");
}

#[test]
fn stopping_returns_held_playback_periods() {
    let mut s = started();
    s.running(0);
    let a = s.play(0, &[1; PERIOD as usize], 0);
    let b = s.play(0, &[2; PERIOD as usize], 1);
    assert!(s.rings[TX_QUEUE].idle(&s.mem));
    assert_eq!(s.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(a), 8));
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(b), 8));
}

#[test]
fn a_full_ring_leaves_later_periods_queued_until_there_is_room() {
    let mut s = started();
    s.running(0);
    let heads: Vec<u16> = (0..5)
        .map(|k| s.play(0, &[k as u8; PERIOD as usize], k))
        .collect();
    let buffer = s.backend.buffer(0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        buffer.len(),
        4 * PERIOD as usize,
        "the fifth waits in the queue"
    );
    let mut out = vec![0u8; PERIOD as usize];
    buffer.play_into(&mut out, true);
    assert_eq!(out, vec![0u8; PERIOD as usize]);
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(heads[0]), 8));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(buffer.len(), 4 * PERIOD as usize, "the fifth moved in");
}

#[test]
fn a_capture_period_returns_once_the_backend_recorded_enough() {
    let mut s = started();
    s.running(1);
    s.mem.write_obj(1u32, GuestAddress(PCM)).unwrap();
    let head = s.rings[RX_QUEUE].add(&s.mem, &[(PCM, 4, false), (PCM + 0x1000, PERIOD + 8, true)]);
    let buffer = s.backend.buffer(1);
    let recorded: Vec<u8> = (0..PERIOD).map(|i| (i * 3) as u8).collect();
    buffer.record_from(&recorded[..400]);
    assert!(s.rings[RX_QUEUE].idle(&s.mem), "not a whole period yet");
    buffer.record_from(&recorded[400..]);
    assert_eq!(
        s.rings[RX_QUEUE].used(&s.mem),
        (u32::from(head), PERIOD + 8)
    );
    let mut got = vec![0u8; PERIOD as usize];
    s.mem
        .read_slice(&mut got, GuestAddress(PCM + 0x1000))
        .unwrap();
    assert_eq!(got, recorded);
    let st: u32 = s
        .mem
        .read_obj(GuestAddress(PCM + 0x1000 + u64::from(PERIOD)))
        .unwrap();
    assert_eq!(st, S_OK);
}

#[test]
fn hostile_pcm_requests_fail_alone() {
    let mut s = started();
    s.running(0);
    // No status descriptor; a status split in two; playback into the capture stream;
    // more bytes than the ring holds; a buffer outside guest memory.
    s.mem.write_obj(0u32, GuestAddress(PCM)).unwrap();
    let h = s.rings[TX_QUEUE].add(&s.mem, &[(PCM, 64, false)]);
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(h), 0));
    let h = s.rings[TX_QUEUE].add(
        &s.mem,
        &[(PCM, 64, false), (STATUS, 4, true), (STATUS + 4, 4, true)],
    );
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(h), 0));
    let h = s.play(1, &[0; 64], 0);
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(h), 8));
    assert_eq!(s.pcm_status(0), S_BAD_MSG);
    let h = s.play(0, &vec![0; 5 * PERIOD as usize], 0);
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(h), 8));
    assert_eq!(s.pcm_status(0), S_BAD_MSG);
    let h = s.rings[TX_QUEUE].add(&s.mem, &[(1 << 40, 64, false), (STATUS, 8, true)]);
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(h), 8));
    assert_eq!(s.pcm_status(0), S_BAD_MSG);
    // Capture: a status that does not fit, and a stream that does not record.
    let h = s.rings[RX_QUEUE].add(&s.mem, &[(PCM, 4, false), (STATUS, 4, true)]);
    assert_eq!(s.rings[RX_QUEUE].used(&s.mem), (u32::from(h), 0));
    let h = s.rings[RX_QUEUE].add(&s.mem, &[(PCM, 4, false), (STATUS, 8, true)]);
    assert_eq!(s.rings[RX_QUEUE].used(&s.mem), (u32::from(h), 8));
    assert_eq!(s.pcm_status(0), S_BAD_MSG);
    // A control request outside guest memory gets no reply but the device carries on.
    let h = s.rings[CONTROL_QUEUE].add(&s.mem, &[(1 << 40, 8, false), (RESP, 4, true)]);
    assert_eq!(s.rings[CONTROL_QUEUE].used(&s.mem), (u32::from(h), 4));
    assert_eq!(s.pcm(R_PCM_STOP, 0), S_OK);
    s.dev.reset();
    assert_eq!(
        s.backend.calls().last().map(String::as_str),
        Some("close 0")
    );
}

#[test]
fn a_refused_capture_buffer_gets_only_its_status_at_the_end() {
    let mut s = started();
    s.running(0);
    s.mem.write_obj(0u32, GuestAddress(PCM)).unwrap();
    let area = PCM + 0x1000;
    s.mem
        .write_slice(&[0xaa; 0x2000], GuestAddress(area))
        .unwrap();
    // Capture from the playback stream, into two pages.
    let h = s.rings[RX_QUEUE].add(
        &s.mem,
        &[
            (PCM, 4, false),
            (area, 0x1000, true),
            (area + 0x1000, 0x1000, true),
        ],
    );
    assert_eq!(s.rings[RX_QUEUE].used(&s.mem), (u32::from(h), 8));
    let st: u32 = s.mem.read_obj(GuestAddress(area + 0x2000 - 8)).unwrap();
    assert_eq!(st, S_BAD_MSG);
    let mut data = vec![0u8; 0x2000 - 8];
    s.mem.read_slice(&mut data, GuestAddress(area)).unwrap();
    assert!(
        data.iter().all(|b| *b == 0xaa),
        "the data area is left alone"
    );
}

#[test]
fn a_stream_the_backend_refuses_fails_prepare_with_an_io_error() {
    let mut s = started();
    s.backend
        .refuse
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(s.set_params(0), S_OK);
    assert_eq!(s.pcm(R_PCM_PREPARE, 0), S_IO_ERR);
    assert_eq!(s.pcm(R_PCM_START, 0), S_BAD_MSG, "not prepared");
    s.backend
        .refuse
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(s.pcm(R_PCM_PREPARE, 0), S_OK, "a later try may succeed");
}

#[test]
fn a_running_stream_plays_again_after_a_restore_and_held_periods_come_back() {
    let mut s = started();
    s.running(0);
    let a = s.play(0, &[1; PERIOD as usize], 0);
    let b = s.play(0, &[2; PERIOD as usize], 1);
    assert!(s.rings[TX_QUEUE].idle(&s.mem), "both held until played");
    let old = s.backend.buffer(0);
    s.save_and_restore();
    // Held periods are back in the used ring, OK, and the restored worker interrupts.
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(a), 8));
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(b), 8));
    assert_eq!((s.pcm_status(0), s.pcm_status(1)), (S_OK, S_OK));
    assert!(s.rings[TX_QUEUE].idle(&s.mem), "each returned once");
    assert!(s.irq.0.lock().unwrap().contains(&(TX_QUEUE as u16)));
    let calls = s.backend.calls();
    assert_eq!(
        calls[calls.len() - 3..],
        ["close 0", "open 0 Output 1xS16@48000", "start 0"],
        "the old stream closed, the same stream opened and started again"
    );
    let buffer = s.backend.buffer(0);
    assert!(!Arc::ptr_eq(&old, &buffer), "a fresh buffer");
    assert_eq!(buffer.len(), 0);

    // The next period plays on the restored stream and completes.
    let data: Vec<u8> = (0..PERIOD).map(|i| (i * 7) as u8).collect();
    let c = s.play(0, &data, 2);
    assert!(s.rings[TX_QUEUE].idle(&s.mem));
    let mut out = vec![0u8; PERIOD as usize];
    assert_eq!(buffer.play_into(&mut out, true), PERIOD as usize);
    assert_eq!(out, data);
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(c), 8));
    assert_eq!(s.pcm_status(2), S_OK);
    // Still running: the guest's STOP is accepted, and the control queue goes on.
    assert_eq!(s.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(s.pcm(R_PCM_RELEASE, 0), S_OK);
}

#[test]
fn prepared_and_stopped_streams_come_back_open_but_silent() {
    let mut s = started();
    assert_eq!(s.set_params(0), S_OK);
    assert_eq!(s.pcm(R_PCM_PREPARE, 0), S_OK);
    s.running(1);
    assert_eq!(s.pcm(R_PCM_STOP, 1), S_OK);
    let before = s.backend.calls().len();
    s.save_and_restore();
    let mut calls = s.backend.calls()[before..].to_vec();
    calls.sort();
    assert_eq!(
        calls,
        [
            "close 0",
            "close 1",
            "open 0 Output 1xS16@48000",
            "open 1 Input 1xS16@48000"
        ],
        "opened, none started"
    );
    assert!(!s.irq.0.lock().unwrap().contains(&(TX_QUEUE as u16)));
    assert_eq!(s.pcm(R_PCM_STOP, 0), S_BAD_MSG, "stream 0 is prepared");
    assert_eq!(s.pcm(R_PCM_START, 0), S_OK);
    assert_eq!(s.pcm(R_PCM_START, 1), S_OK, "stream 1 was stopped");
}

#[test]
fn a_capture_buffer_not_yet_filled_stays_posted_across_a_restore() {
    let mut s = started();
    s.running(1);
    s.mem.write_obj(1u32, GuestAddress(PCM)).unwrap();
    let head = s.rings[RX_QUEUE].add(&s.mem, &[(PCM, 4, false), (PCM + 0x1000, PERIOD + 8, true)]);
    s.backend.buffer(1).record_from(&[9; 100]);
    assert!(s.rings[RX_QUEUE].idle(&s.mem));
    s.save_and_restore();
    assert!(s.rings[RX_QUEUE].idle(&s.mem), "not returned at the save");
    let recorded: Vec<u8> = (0..PERIOD).map(|i| (i * 5) as u8).collect();
    s.backend.buffer(1).record_from(&recorded);
    assert_eq!(
        s.rings[RX_QUEUE].used(&s.mem),
        (u32::from(head), PERIOD + 8)
    );
    let mut got = vec![0u8; PERIOD as usize];
    s.mem
        .read_slice(&mut got, GuestAddress(PCM + 0x1000))
        .unwrap();
    assert_eq!(got, recorded, "recorded after the resume only");
}

#[test]
fn an_unstarted_card_saves_fresh_streams() {
    let mut dev = Snd::new(Arc::new(FakeBackend::default()));
    let state = dev.save_device_state().unwrap();
    let mut fresh = Snd::new(Arc::new(FakeBackend::default()));
    fresh.restore_device_state(&state).unwrap();
    assert!(dev.pause().is_err(), "no worker to pause");
}

#[test]
fn a_truncated_garbage_or_inconsistent_state_is_refused() {
    let mut s = started();
    s.running(0);
    s.dev.pause().unwrap();
    let state = s.dev.save_device_state().unwrap();
    let fresh = || Snd::new(Arc::new(FakeBackend::default()));
    assert!(fresh().restore_device_state(&state).is_ok());
    for bad in [
        &state[..state.len() - 1],
        &[][..],
        &[0xff; 64][..],
        &[state.clone(), vec![0]].concat()[..],
    ] {
        let err = fresh().restore_device_state(bad).unwrap_err().to_string();
        assert!(err.contains("virtio-snd"), "{err}");
    }
    let encode = |streams: Vec<SavedStream>| {
        crate::state::encode(
            "test",
            &SavedSnd {
                streams,
                returned_tx: false,
            },
        )
        .unwrap()
    };
    let good = || {
        let p = PcmParams {
            format: SampleFormat::S16,
            rate: 48000,
            channels: 2,
            buffer_bytes: 4 * PERIOD,
            period_bytes: PERIOD,
        };
        Some(control::params_request(0, &p))
    };
    let mut bad_rate = good().unwrap();
    bad_rate[22] = 0;
    for streams in [
        vec![],
        vec![SavedStream {
            state: StreamState::Running,
            params: good(),
        }],
        vec![
            SavedStream {
                state: StreamState::Running,
                params: None,
            },
            SavedStream {
                state: StreamState::Fresh,
                params: None,
            },
        ],
        vec![
            SavedStream {
                state: StreamState::Prepared,
                params: Some(bad_rate),
            },
            SavedStream {
                state: StreamState::Fresh,
                params: None,
            },
        ],
        vec![
            SavedStream {
                state: StreamState::Prepared,
                params: Some(vec![1, 2, 3]),
            },
            SavedStream {
                state: StreamState::Fresh,
                params: None,
            },
        ],
    ] {
        assert!(fresh().restore_device_state(&encode(streams)).is_err());
    }
}

#[test]
fn a_restored_stream_the_backend_refuses_fails_its_periods_not_the_device() {
    let mut s = started();
    s.running(0);
    s.backend
        .refuse
        .store(true, std::sync::atomic::Ordering::Relaxed);
    s.save_and_restore();
    let h = s.play(0, &[0; 64], 0);
    assert_eq!(s.rings[TX_QUEUE].used(&s.mem), (u32::from(h), 8));
    assert_eq!(s.pcm_status(0), S_BAD_MSG);
    s.backend
        .refuse
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(s.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(s.pcm(R_PCM_PREPARE, 0), S_OK, "the guest's recovery works");
}
