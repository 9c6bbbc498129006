use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use super::*;
use crate::tpm::{CRB_SIZE, TPM_RC_SUCCESS, TpmBackendError};

/// A backend that answers from a script and records what it was sent; with a gate, each
/// command waits until the test opens it.
struct Scripted {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    replies: VecDeque<Result<Vec<u8>, TpmBackendError>>,
    gate: Option<Receiver<()>>,
}

impl TpmBackend for Scripted {
    fn execute(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmBackendError> {
        lock(&self.seen).push(command.to_vec());
        if let Some(gate) = &self.gate {
            let _ = gate.recv();
        }
        self.replies
            .pop_front()
            .unwrap_or(Err(TpmBackendError::Dead))
    }
}

struct Rig {
    dev: TpmCrb,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn rig(replies: Vec<Result<Vec<u8>, TpmBackendError>>) -> Rig {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = Scripted {
        seen: seen.clone(),
        replies: replies.into(),
        gate: None,
    };
    let dev = TpmCrb::new(Arc::new(Mutex::new(backend))).unwrap();
    Rig { dev, seen }
}

fn gated_rig(replies: Vec<Result<Vec<u8>, TpmBackendError>>) -> (Rig, SyncSender<()>) {
    let (open, gate) = sync_channel(0);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = Scripted {
        seen: seen.clone(),
        replies: replies.into(),
        gate: Some(gate),
    };
    let dev = TpmCrb::new(Arc::new(Mutex::new(backend))).unwrap();
    (Rig { dev, seen }, open)
}

fn read32(dev: &mut TpmCrb, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(CRB_BASE, offset, &mut b);
    u32::from_le_bytes(b)
}

fn read64(dev: &mut TpmCrb, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    dev.read(CRB_BASE, offset, &mut b);
    u64::from_le_bytes(b)
}

fn write32(dev: &mut TpmCrb, offset: u64, value: u32) {
    dev.write(CRB_BASE, offset, &value.to_le_bytes());
}

fn read_buffer(dev: &mut TpmCrb, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    dev.read(CRB_BASE, CRB_BUFFER_OFFSET, &mut b);
    b
}

/// TPM2_GetRandom(16).
fn get_random() -> Vec<u8> {
    vec![0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0x00, 0x10]
}

fn response(code: u32, body: &[u8]) -> Vec<u8> {
    let mut r = vec![0x80, 0x01];
    r.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    r.extend_from_slice(&code.to_be_bytes());
    r.extend_from_slice(body);
    r
}

fn code_of(buffer: &[u8]) -> u32 {
    u32::from_be_bytes(buffer[6..10].try_into().unwrap())
}

/// Locality 0 requested and cmdReady set, as a driver starts.
fn ready(dev: &mut TpmCrb) {
    write32(dev, LOC_CTRL, LOC_CTRL_REQUEST);
    write32(dev, CTRL_REQ, CTRL_REQ_CMD_READY);
}

/// Writes `command` and CTRL_START, then polls CTRL_START as a driver does.
fn run(dev: &mut TpmCrb, command: &[u8]) {
    dev.write(CRB_BASE, CRB_BUFFER_OFFSET, command);
    write32(dev, CTRL_START, INVOKE);
    wait_done(dev);
}

fn wait_done(dev: &mut TpmCrb) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while read32(dev, CTRL_START) & INVOKE != 0 {
        assert!(Instant::now() < deadline, "CTRL_START never cleared");
        std::thread::yield_now();
    }
}

#[test]
fn locality_zero_is_granted_on_request_and_released_on_relinquish() {
    let mut r = rig(vec![]);
    let state = read32(&mut r.dev, LOC_STATE);
    assert_eq!(
        state,
        LOC_STATE_REG_VALID | LOC_STATE_NOT_ESTABLISHED,
        "valid, unassigned, active locality 0"
    );
    assert_eq!(read32(&mut r.dev, LOC_STS), 0);
    // A one-byte write, as some drivers do.
    r.dev.write(CRB_BASE, LOC_CTRL, &[LOC_CTRL_REQUEST as u8]);
    assert_eq!(
        read32(&mut r.dev, LOC_STATE),
        LOC_STATE_REG_VALID | LOC_STATE_NOT_ESTABLISHED | LOC_STATE_ASSIGNED
    );
    assert_eq!(read32(&mut r.dev, LOC_STS), LOC_STS_GRANTED);
    assert_eq!(read32(&mut r.dev, LOC_CTRL), 0, "LOC_CTRL reads 0");
    write32(&mut r.dev, LOC_CTRL, LOC_CTRL_RELINQUISH);
    assert_eq!(read32(&mut r.dev, LOC_STATE) & LOC_STATE_ASSIGNED, 0);
    assert_eq!(read32(&mut r.dev, LOC_STS), 0);
    write32(&mut r.dev, LOC_CTRL, LOC_CTRL_SEIZE);
    assert_eq!(read32(&mut r.dev, LOC_STS), LOC_STS_GRANTED);
}

#[test]
fn interface_id_says_crb_tpm_with_locality_zero_only() {
    let mut r = rig(vec![]);
    let id = read64(&mut r.dev, INTF_ID);
    assert_eq!(id & 0xf, 1, "InterfaceType: CRB active");
    assert_eq!((id >> 4) & 0xf, 1, "InterfaceVersion: CRB");
    assert_eq!((id >> 8) & 1, 0, "CapLocality: locality 0 only");
    assert_eq!((id >> 11) & 3, 3, "64-byte transfers");
    assert_eq!((id >> 13) & 1, 0, "no FIFO");
    assert_eq!((id >> 14) & 1, 1, "CapCRB");
    assert_eq!((id >> 17) & 3, 1, "InterfaceSelector: CRB");
    assert_eq!(id >> 32, 0x0001_1014);
    // Read-only.
    write32(&mut r.dev, INTF_ID, 0);
    assert_eq!(read64(&mut r.dev, INTF_ID), id);
    assert_eq!(read64(&mut r.dev, CTRL_EXT), 0);
}

#[test]
fn the_buffer_registers_name_the_buffer_inside_the_page_and_are_read_only() {
    let mut r = rig(vec![]);
    let buffer = CRB_BASE + CRB_BUFFER_OFFSET;
    for _ in 0..2 {
        assert_eq!(read32(&mut r.dev, CTRL_CMD_SIZE), 0xf80);
        assert_eq!(read32(&mut r.dev, CTRL_CMD_LADDR), buffer as u32);
        assert_eq!(read32(&mut r.dev, CTRL_CMD_HADDR), 0);
        assert_eq!(read32(&mut r.dev, CTRL_RSP_SIZE), 0xf80);
        assert_eq!(read64(&mut r.dev, CTRL_RSP_ADDR), buffer);
        for reg in [CTRL_CMD_SIZE, CTRL_CMD_LADDR, CTRL_CMD_HADDR, CTRL_RSP_SIZE] {
            write32(&mut r.dev, reg, 0x1234);
        }
        r.dev
            .write(CRB_BASE, CTRL_RSP_ADDR, &0x5678u64.to_le_bytes());
    }
    assert_eq!(CRB_BUFFER_OFFSET + CRB_BUFFER_SIZE as u64, CRB_SIZE);
}

#[test]
fn cmd_ready_and_go_idle_move_tpm_idle_and_ctrl_req_reads_zero() {
    let mut r = rig(vec![]);
    assert_eq!(
        read32(&mut r.dev, CTRL_STS),
        CTRL_STS_IDLE,
        "idle after reset"
    );
    write32(&mut r.dev, CTRL_REQ, CTRL_REQ_CMD_READY);
    assert_eq!(read32(&mut r.dev, CTRL_STS), 0);
    assert_eq!(
        read32(&mut r.dev, CTRL_REQ),
        0,
        "the request completed at once"
    );
    write32(&mut r.dev, CTRL_REQ, CTRL_REQ_GO_IDLE);
    assert_eq!(read32(&mut r.dev, CTRL_STS), CTRL_STS_IDLE);
    write32(&mut r.dev, CTRL_STS, 0);
    assert_eq!(
        read32(&mut r.dev, CTRL_STS),
        CTRL_STS_IDLE,
        "CTRL_STS is read-only"
    );
}

#[test]
fn a_command_runs_on_the_backend_and_its_response_replaces_it() {
    let answer = response(TPM_RC_SUCCESS, &[0, 2, 0xab, 0xcd]);
    let mut r = rig(vec![Ok(answer.clone())]);
    ready(&mut r.dev);
    run(&mut r.dev, &get_random());
    assert_eq!(*lock(&r.seen), [get_random()]);
    assert_eq!(read_buffer(&mut r.dev, answer.len()), answer);
    assert_eq!(read32(&mut r.dev, CTRL_STS) & CTRL_STS_ERROR, 0);
    assert_eq!(read32(&mut r.dev, CTRL_INT_STS), INT_STS_START);
    write32(&mut r.dev, CTRL_INT_STS, INT_STS_START);
    assert_eq!(read32(&mut r.dev, CTRL_INT_STS), 0, "write 1 to clear");
}

#[test]
fn only_the_bytes_the_size_field_counts_go_to_the_backend() {
    let mut r = rig(vec![Ok(response(TPM_RC_SUCCESS, &[]))]);
    ready(&mut r.dev);
    let mut command = get_random();
    command.extend_from_slice(&[0xee; 20]);
    run(&mut r.dev, &command);
    assert_eq!(*lock(&r.seen), [get_random()]);
}

#[test]
fn start_stays_set_and_buffer_writes_are_dropped_while_the_backend_works() {
    let answer = response(TPM_RC_SUCCESS, &[0, 1, 0x42]);
    let (mut r, open) = gated_rig(vec![Ok(answer.clone())]);
    ready(&mut r.dev);
    r.dev.write(CRB_BASE, CRB_BUFFER_OFFSET, &get_random());
    write32(&mut r.dev, CTRL_START, INVOKE);
    // The worker holds the command at the gate: the device waits with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock(&r.seen).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the backend never got the command"
        );
        std::thread::yield_now();
    }
    assert_eq!(read32(&mut r.dev, CTRL_START), INVOKE);
    r.dev.write(CRB_BASE, CRB_BUFFER_OFFSET, &[0xff; 12]);
    assert_eq!(read_buffer(&mut r.dev, 12), get_random(), "write dropped");
    // A second START while running starts nothing.
    write32(&mut r.dev, CTRL_START, INVOKE);
    open.send(()).unwrap();
    wait_done(&mut r.dev);
    assert_eq!(read_buffer(&mut r.dev, answer.len()), answer);
    assert_eq!(lock(&r.seen).len(), 1);
    // Writes work again once the response is in.
    r.dev.write(CRB_BASE, CRB_BUFFER_OFFSET, &[7]);
    assert_eq!(read_buffer(&mut r.dev, 1), [7]);
}

#[test]
fn start_without_locality_is_ignored() {
    let mut r = rig(vec![Ok(response(TPM_RC_SUCCESS, &[]))]);
    write32(&mut r.dev, CTRL_REQ, CTRL_REQ_CMD_READY);
    r.dev.write(CRB_BASE, CRB_BUFFER_OFFSET, &get_random());
    write32(&mut r.dev, CTRL_START, INVOKE);
    assert_eq!(read32(&mut r.dev, CTRL_START), 0);
    assert_eq!(
        read_buffer(&mut r.dev, 12),
        get_random(),
        "nothing answered"
    );
    assert!(lock(&r.seen).is_empty());
    // Writing 0 to CTRL_START never starts anything either.
    write32(&mut r.dev, LOC_CTRL, LOC_CTRL_REQUEST);
    write32(&mut r.dev, CTRL_START, 0);
    assert!(lock(&r.seen).is_empty());
}

#[test]
fn malformed_command_sizes_get_a_command_size_error_without_reaching_the_backend() {
    let mut r = rig(vec![]);
    ready(&mut r.dev);
    let mut too_big = get_random();
    too_big[2..6].copy_from_slice(&0xf81u32.to_be_bytes());
    let mut short = get_random();
    short[2..6].copy_from_slice(&9u32.to_be_bytes());
    let mut huge = get_random();
    huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
    // An empty buffer: START with no command at all.
    for command in [vec![0u8; 12], short, too_big, huge] {
        run(&mut r.dev, &command);
        let out = read_buffer(&mut r.dev, 10);
        assert_eq!(out, error_response(TPM_RC_COMMAND_SIZE));
        assert_eq!(header_size(&out), Some(10));
    }
    assert!(lock(&r.seen).is_empty());
    assert_eq!(read32(&mut r.dev, CTRL_STS) & CTRL_STS_ERROR, 0);
}

#[test]
fn a_command_filling_the_whole_buffer_is_accepted() {
    let mut r = rig(vec![Ok(response(TPM_RC_SUCCESS, &[]))]);
    ready(&mut r.dev);
    let mut command = vec![0u8; CRB_BUFFER_SIZE];
    command[..2].copy_from_slice(&[0x80, 0x01]);
    command[2..6].copy_from_slice(&(CRB_BUFFER_SIZE as u32).to_be_bytes());
    run(&mut r.dev, &command);
    assert_eq!(lock(&r.seen)[0].len(), CRB_BUFFER_SIZE);
    assert_eq!(code_of(&read_buffer(&mut r.dev, 10)), TPM_RC_SUCCESS);
}

#[test]
fn a_backend_failure_answers_tpm_rc_failure_sets_tpm_sts_and_the_device_goes_on() {
    let ok = response(TPM_RC_SUCCESS, &[0, 1, 9]);
    let mut r = rig(vec![Err(TpmBackendError::Dead), Ok(ok.clone())]);
    ready(&mut r.dev);
    run(&mut r.dev, &get_random());
    assert_eq!(read_buffer(&mut r.dev, 10), error_response(TPM_RC_FAILURE));
    assert_eq!(
        read32(&mut r.dev, CTRL_STS) & CTRL_STS_ERROR,
        CTRL_STS_ERROR
    );
    // The next command still reaches the backend (which decides whether it works).
    run(&mut r.dev, &get_random());
    assert_eq!(read_buffer(&mut r.dev, ok.len()), ok);
    // And once the script is exhausted (the backend dead for good), failures again.
    run(&mut r.dev, &get_random());
    assert_eq!(read_buffer(&mut r.dev, 10), error_response(TPM_RC_FAILURE));
    assert_eq!(lock(&r.seen).len(), 3);
}

#[test]
fn a_response_too_large_or_too_short_for_a_header_becomes_a_failure() {
    let mut r = rig(vec![
        Ok(vec![0x80; CRB_BUFFER_SIZE + 1]),
        Ok(vec![0x80, 0x01, 0]),
    ]);
    ready(&mut r.dev);
    for _ in 0..2 {
        run(&mut r.dev, &get_random());
        assert_eq!(read_buffer(&mut r.dev, 10), error_response(TPM_RC_FAILURE));
    }
}

#[test]
fn cancel_and_interrupt_enable_keep_what_is_written() {
    let mut r = rig(vec![]);
    write32(&mut r.dev, CTRL_CANCEL, INVOKE);
    assert_eq!(read32(&mut r.dev, CTRL_CANCEL), INVOKE);
    write32(&mut r.dev, CTRL_CANCEL, 0);
    assert_eq!(read32(&mut r.dev, CTRL_CANCEL), 0);
    write32(&mut r.dev, CTRL_CANCEL, 0xffff_fffe);
    assert_eq!(
        read32(&mut r.dev, CTRL_CANCEL),
        0,
        "only the invoke bit exists"
    );
    write32(&mut r.dev, CTRL_INT_ENABLE, 0x8000_0001);
    assert_eq!(read32(&mut r.dev, CTRL_INT_ENABLE), 0x8000_0001);
    // A byte write changes its byte only.
    r.dev.write(CRB_BASE, CTRL_INT_ENABLE + 3, &[0]);
    assert_eq!(read32(&mut r.dev, CTRL_INT_ENABLE), 1);
}

#[test]
fn narrow_and_straddling_accesses_see_the_registers_byte_by_byte() {
    let mut r = rig(vec![]);
    write32(&mut r.dev, LOC_CTRL, LOC_CTRL_REQUEST);
    let mut two = [0u8; 2];
    r.dev
        .write(CRB_BASE, CTRL_INT_ENABLE, &0x0302_0100u32.to_le_bytes());
    // Bytes 3 of INT_ENABLE and 0 of INT_STS.
    r.dev.read(CRB_BASE, CTRL_INT_ENABLE + 3, &mut two);
    assert_eq!(two, [0x03, 0x00]);
    let mut one = [0u8; 1];
    r.dev.read(CRB_BASE, LOC_STATE, &mut one);
    assert_eq!(one[0], 0x83);
    // A write past the page's end (the bus never sends one) changes nothing.
    r.dev.write(CRB_BASE, CRB_SIZE - 2, &[1, 2, 3, 4]);
    r.dev.read(CRB_BASE, CRB_SIZE - 2, &mut two);
    assert_eq!(two, [0, 0]);
}
