use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use super::*;
use crate::bus::BusDevice;
use crate::tpm::crb::{
    CTRL_INT_ENABLE, CTRL_REQ, CTRL_REQ_CMD_READY, CTRL_START, CTRL_STS, CTRL_STS_IDLE, INVOKE,
    LOC_CTRL, LOC_CTRL_REQUEST, LOC_STS, LOC_STS_GRANTED,
};
use crate::tpm::{CRB_BASE, CRB_BUFFER_OFFSET, CRB_BUFFER_SIZE, TpmBackend, TpmBackendError};

/// TPM2_GetRandom(16).
const GET_RANDOM: [u8; 12] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0x00, 0x10];
/// A success response with two bytes of body.
const ANSWER: [u8; 12] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0, 0, 0xab, 0xcd];

/// Answers every command with [`ANSWER`]; with a gate, each command waits for the test.
struct Answering(Option<Receiver<()>>);

impl TpmBackend for Answering {
    fn execute(&mut self, _command: &[u8]) -> Result<Vec<u8>, TpmBackendError> {
        if let Some(gate) = &self.0 {
            let _ = gate.recv();
        }
        Ok(ANSWER.to_vec())
    }
}

/// A backend state that hands out `give` and records what it is given back.
struct Blobs {
    give: TpmBlobs,
    got: Mutex<Vec<TpmBlobs>>,
    refuse: bool,
}

impl Blobs {
    fn new(give: TpmBlobs) -> Arc<Self> {
        Arc::new(Self {
            give,
            got: Mutex::new(Vec::new()),
            refuse: false,
        })
    }

    fn refusing() -> Arc<Self> {
        Arc::new(Self {
            give: TpmBlobs::default(),
            got: Mutex::new(Vec::new()),
            refuse: true,
        })
    }
}

impl TpmStateBackend for Blobs {
    fn save_blobs(&self) -> Result<TpmBlobs, BackendStateError> {
        Ok(self.give.clone())
    }

    fn restore_blobs(&self, blobs: &TpmBlobs) -> Result<(), BackendStateError> {
        if self.refuse {
            return Err("result 0x9 (bad state)".into());
        }
        lock(&self.got).push(blobs.clone());
        Ok(())
    }
}

fn some_blobs() -> TpmBlobs {
    TpmBlobs {
        permanent: TpmBlob {
            encrypted: false,
            data: (0..20_000u32).map(|i| i as u8).collect(),
        },
        volatile: TpmBlob {
            encrypted: true,
            data: vec![7; 3000],
        },
        savestate: TpmBlob::default(),
    }
}

fn device(gate: Option<Receiver<()>>) -> Arc<Mutex<TpmCrb>> {
    let backend = Arc::new(Mutex::new(Answering(gate)));
    Arc::new(Mutex::new(TpmCrb::new(backend).unwrap()))
}

fn gated_device() -> (Arc<Mutex<TpmCrb>>, SyncSender<()>) {
    let (open, gate) = sync_channel(0);
    (device(Some(gate)), open)
}

fn read32(dev: &Mutex<TpmCrb>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    lock(dev).read(CRB_BASE, offset, &mut b);
    u32::from_le_bytes(b)
}

fn write32(dev: &Mutex<TpmCrb>, offset: u64, value: u32) {
    lock(dev).write(CRB_BASE, offset, &value.to_le_bytes());
}

fn buffer(dev: &Mutex<TpmCrb>) -> Vec<u8> {
    let mut b = vec![0u8; CRB_BUFFER_SIZE];
    lock(dev).read(CRB_BASE, CRB_BUFFER_OFFSET, &mut b);
    b
}

/// Locality 0, cmdReady, and `command` started.
fn start(dev: &Mutex<TpmCrb>, command: &[u8]) {
    write32(dev, LOC_CTRL, LOC_CTRL_REQUEST);
    write32(dev, CTRL_REQ, CTRL_REQ_CMD_READY);
    lock(dev).write(CRB_BASE, CRB_BUFFER_OFFSET, command);
    write32(dev, CTRL_START, INVOKE);
}

fn wait_done(dev: &Mutex<TpmCrb>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while read32(dev, CTRL_START) & INVOKE != 0 {
        assert!(Instant::now() < deadline, "CTRL_START never cleared");
        std::thread::yield_now();
    }
}

/// Every register a guest can read, and the buffer.
fn view(dev: &Mutex<TpmCrb>) -> (Vec<u32>, Vec<u8>) {
    let regs = (0..0x80).step_by(4).map(|o| read32(dev, o)).collect();
    (regs, buffer(dev))
}

#[test]
fn registers_buffer_and_blobs_come_back_on_a_fresh_device() {
    let dev = device(None);
    start(&dev, &GET_RANDOM);
    wait_done(&dev);
    write32(&dev, CTRL_INT_ENABLE, 0x8000_0001);
    let before = view(&dev);
    let saved = TpmSnapshot::new(dev.clone(), Blobs::new(some_blobs()))
        .save()
        .unwrap();

    let fresh = device(None);
    assert_ne!(view(&fresh), before, "a fresh device differs");
    let blobs = Blobs::new(TpmBlobs::default());
    TpmSnapshot::new(fresh.clone(), blobs.clone())
        .restore(&saved)
        .unwrap();
    assert_eq!(view(&fresh), before);
    assert_eq!(&buffer(&fresh)[..ANSWER.len()], &ANSWER);
    assert_eq!(read32(&fresh, LOC_STS), LOC_STS_GRANTED);
    assert_eq!(read32(&fresh, CTRL_STS) & CTRL_STS_IDLE, 0);
    assert_eq!(*lock(&blobs.got), vec![some_blobs()]);
    // The restored device runs commands as before.
    write32(&fresh, CTRL_START, INVOKE);
    wait_done(&fresh);
}

#[test]
fn a_save_waits_for_the_command_in_flight_and_keeps_its_response() {
    let (dev, open) = gated_device();
    start(&dev, &GET_RANDOM);
    let snapshot = TpmSnapshot::new(dev.clone(), Blobs::new(some_blobs()));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let saver = std::thread::spawn(move || {
        let r = snapshot.save();
        let _ = done_tx.send(());
        r
    });
    assert!(
        done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "the save returned while the command was running"
    );
    open.send(()).unwrap();
    let saved = saver.join().unwrap().unwrap();

    let fresh = device(None);
    TpmSnapshot::new(fresh.clone(), Blobs::new(TpmBlobs::default()))
        .restore(&saved)
        .unwrap();
    assert_eq!(read32(&fresh, CTRL_START), 0, "the command had completed");
    assert_eq!(&buffer(&fresh)[..ANSWER.len()], &ANSWER);
}

#[test]
fn a_command_that_never_ends_fails_the_save_naming_the_tpm() {
    let (dev, open) = gated_device();
    start(&dev, &GET_RANDOM);
    let err = TpmSnapshot::new(dev.clone(), Blobs::new(some_blobs()))
        .with_wait(Duration::from_millis(50))
        .save()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("tpm: "), "{err}");
    assert!(err.contains("still running"), "{err}");
    open.send(()).unwrap();
    wait_done(&dev);
}

#[test]
fn garbage_truncated_or_misshapen_state_is_an_error_and_touches_nothing() {
    let dev = device(None);
    start(&dev, &GET_RANDOM);
    wait_done(&dev);
    let saved = TpmSnapshot::new(dev.clone(), Blobs::new(some_blobs()))
        .save()
        .unwrap();
    let mut wrong_buffer: SavedTpm = decode(STATE_NAME, &saved).unwrap();
    wrong_buffer.crb.buffer.truncate(100);
    let wrong_buffer = encode(STATE_NAME, &wrong_buffer).unwrap();
    let mut longer = saved.clone();
    longer.push(0);

    let cases: [(&str, &[u8]); 5] = [
        ("empty", &[]),
        ("garbage", &[0xff; 64]),
        ("truncated", &saved[..saved.len() / 2]),
        ("trailing bytes", &longer),
        ("a short buffer", &wrong_buffer),
    ];
    for (what, bytes) in cases {
        let fresh = device(None);
        let before = view(&fresh);
        let blobs = Blobs::new(TpmBlobs::default());
        let err = TpmSnapshot::new(fresh.clone(), blobs.clone())
            .restore(bytes)
            .expect_err(what)
            .to_string();
        assert!(err.starts_with("tpm: "), "{what}: {err}");
        assert_eq!(view(&fresh), before, "{what}: the device changed");
        assert!(lock(&blobs.got).is_empty(), "{what}: the TPM got blobs");
    }
}

#[test]
fn blobs_the_tpm_refuses_fail_the_restore_and_leave_the_registers() {
    let dev = device(None);
    start(&dev, &GET_RANDOM);
    wait_done(&dev);
    let saved = TpmSnapshot::new(dev, Blobs::new(some_blobs()))
        .save()
        .unwrap();
    let fresh = device(None);
    let before = view(&fresh);
    let err = TpmSnapshot::new(fresh.clone(), Blobs::refusing())
        .restore(&saved)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the TPM refused its saved state"), "{err}");
    assert!(err.contains("bad state"), "{err}");
    assert_eq!(view(&fresh), before);
}
