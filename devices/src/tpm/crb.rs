//! The CRB register page of locality 0 (TCG PC Client Platform TPM Profile, "CRB
//! Interface"), laid out as QEMU's tpm-crb lays it out, so guests see the same device:
//! registers in the first 0x80 bytes, one command/response buffer in the rest.
//!
//! Data flow: register reads and writes come from a vCPU through the MMIO bus. A write of
//! CTRL_START with locality 0 granted copies the command out of the buffer and sends it
//! to the worker thread ([`TpmCrb::new`] starts it; it ends when the device is dropped,
//! after the command it is running). The worker runs the command on the shared backend,
//! puts the response into the buffer and clears CTRL_START; until then CTRL_START reads
//! 1 and buffer writes are dropped. A command whose size field is shorter than a header
//! or larger than the buffer is answered at once with TPM_RC_COMMAND_SIZE; a backend
//! error (or a response that does not fit) is answered with TPM_RC_FAILURE and sets
//! CTRL_STS.tpmSts, which stays set for this boot. There is no interrupt line: drivers
//! poll CTRL_START, as the TPM2 table's start method 7 lets them.
//!
//! Save and restore ([`TpmCrb::save_regs`], [`TpmCrb::restore_regs`], used by
//! `super::state`): a save waits until the worker has finished the command it runs, so
//! the state is always an idle device whose buffer holds what the guest last saw.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    CRB_BASE, CRB_BUFFER_OFFSET, CRB_BUFFER_SIZE, TPM_HEADER_LEN, TPM_RC_COMMAND_SIZE,
    TPM_RC_FAILURE, TpmBackend, error_response, header_size,
};
use crate::bus::{BusDevice, lock};
use crate::guest_warn;

/// The backend as the devices of successive boots share it.
pub type SharedBackend = Arc<Mutex<dyn TpmBackend>>;

/// Register offsets in the page.
pub const LOC_STATE: u64 = 0x00;
pub const LOC_CTRL: u64 = 0x08;
pub const LOC_STS: u64 = 0x0c;
pub const INTF_ID: u64 = 0x30;
pub const INTF_ID_HIGH: u64 = 0x34;
pub const CTRL_EXT: u64 = 0x38;
pub const CTRL_REQ: u64 = 0x40;
pub const CTRL_STS: u64 = 0x44;
pub const CTRL_CANCEL: u64 = 0x48;
pub const CTRL_START: u64 = 0x4c;
pub const CTRL_INT_ENABLE: u64 = 0x50;
pub const CTRL_INT_STS: u64 = 0x54;
pub const CTRL_CMD_SIZE: u64 = 0x58;
pub const CTRL_CMD_LADDR: u64 = 0x5c;
pub const CTRL_CMD_HADDR: u64 = 0x60;
pub const CTRL_RSP_SIZE: u64 = 0x64;
pub const CTRL_RSP_ADDR: u64 = 0x68;
pub const CTRL_RSP_ADDR_HIGH: u64 = 0x6c;

/// LOC_STATE: tpmEstablished (1: no dynamic root of trust was established, and Hospes
/// has none), locAssigned, activeLocality (bits 2..4, always 0), tpmRegValidSts.
pub const LOC_STATE_NOT_ESTABLISHED: u32 = 1 << 0;
pub const LOC_STATE_ASSIGNED: u32 = 1 << 1;
pub const LOC_STATE_REG_VALID: u32 = 1 << 7;
/// LOC_CTRL: requestAccess, relinquish, seize.
pub const LOC_CTRL_REQUEST: u32 = 1 << 0;
pub const LOC_CTRL_RELINQUISH: u32 = 1 << 1;
pub const LOC_CTRL_SEIZE: u32 = 1 << 2;
/// LOC_STS: granted.
pub const LOC_STS_GRANTED: u32 = 1 << 0;
/// CTRL_REQ: cmdReady, goIdle.
pub const CTRL_REQ_CMD_READY: u32 = 1 << 0;
pub const CTRL_REQ_GO_IDLE: u32 = 1 << 1;
/// CTRL_STS: tpmSts (fatal error), tpmIdle.
pub const CTRL_STS_ERROR: u32 = 1 << 0;
pub const CTRL_STS_IDLE: u32 = 1 << 1;
/// CTRL_START and CTRL_CANCEL: the one bit that invokes.
pub const INVOKE: u32 = 1 << 0;
/// CTRL_INT_STS: the command completed.
pub const INT_STS_START: u32 = 1 << 0;

/// INTF_ID's low half: InterfaceType 1 (CRB active), InterfaceVersion 1 (CRB),
/// CapLocality 0 (locality 0 only), CapCRBIdleBypass 0, CapDataXferSizeSupport 3 (64
/// bytes), CapFIFO 0, CapCRB 1, InterfaceSelector 1 (CRB), IntfSelLock 0, RID 0: the
/// value QEMU's tpm-crb shows, which Windows and OVMF are known to take.
pub const INTF_ID_LOW_VALUE: u32 = 1 | (1 << 4) | (3 << 11) | (1 << 14) | (1 << 17);
/// INTF_ID's high half: vendor 0x1014 (IBM, whose swtpm is behind it), device 1.
pub const INTF_ID_HIGH_VALUE: u32 = 0x1014 | (1 << 16);

/// Where the guest finds the buffer (the same one for commands and responses).
const BUFFER_ADDR: u64 = CRB_BASE + CRB_BUFFER_OFFSET;

/// The register state a vCPU and the worker share.
struct Regs {
    /// Locality 0 is assigned (and granted).
    assigned: bool,
    idle: bool,
    /// CTRL_STS.tpmSts: the backend failed this boot.
    error: bool,
    cancel: u32,
    /// A command is with the worker.
    running: bool,
    int_enable: u32,
    int_status: u32,
    buffer: Vec<u8>,
}

impl Regs {
    fn new() -> Self {
        Self {
            assigned: false,
            idle: true,
            error: false,
            cancel: 0,
            running: false,
            int_enable: 0,
            int_status: 0,
            buffer: vec![0; CRB_BUFFER_SIZE],
        }
    }

    fn reg(&self, offset: u64) -> u32 {
        match offset {
            LOC_STATE => {
                let assigned = if self.assigned { LOC_STATE_ASSIGNED } else { 0 };
                LOC_STATE_NOT_ESTABLISHED | assigned | LOC_STATE_REG_VALID
            }
            LOC_STS => u32::from(self.assigned) * LOC_STS_GRANTED,
            INTF_ID => INTF_ID_LOW_VALUE,
            INTF_ID_HIGH => INTF_ID_HIGH_VALUE,
            CTRL_STS => {
                let error = if self.error { CTRL_STS_ERROR } else { 0 };
                let idle = if self.idle { CTRL_STS_IDLE } else { 0 };
                error | idle
            }
            CTRL_CANCEL => self.cancel,
            CTRL_START => u32::from(self.running) * INVOKE,
            CTRL_INT_ENABLE => self.int_enable,
            CTRL_INT_STS => self.int_status,
            CTRL_CMD_SIZE | CTRL_RSP_SIZE => CRB_BUFFER_SIZE as u32,
            CTRL_CMD_LADDR | CTRL_RSP_ADDR => BUFFER_ADDR as u32,
            CTRL_CMD_HADDR | CTRL_RSP_ADDR_HIGH => (BUFFER_ADDR >> 32) as u32,
            // LOC_CTRL and CTRL_REQ read 0 (their bits act and clear at once); CTRL_EXT
            // and the reserved words are 0.
            _ => 0,
        }
    }

    fn byte(&self, offset: u64) -> u8 {
        match offset.checked_sub(CRB_BUFFER_OFFSET) {
            Some(i) => self.buffer.get(i as usize).copied().unwrap_or(0xff),
            None => (self.reg(offset & !3) >> (8 * (offset & 3))) as u8,
        }
    }

    /// Puts `response` into the buffer: the command has completed.
    fn complete(&mut self, response: &[u8]) {
        let len = response.len().min(self.buffer.len());
        self.buffer[..len].copy_from_slice(&response[..len]);
        self.running = false;
        self.int_status |= INT_STS_START;
    }
}

/// What the vCPU side and the worker share.
struct Shared {
    regs: Mutex<Regs>,
    /// Signalled whenever a command completes (`Regs::running` turns false).
    done: Condvar,
}

/// The registers of an idle CRB device as a save takes them: locality and control
/// state, and the command/response buffer as the guest last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrbState {
    pub assigned: bool,
    pub idle: bool,
    pub error: bool,
    pub cancel: u32,
    pub int_enable: u32,
    pub int_status: u32,
    pub buffer: Vec<u8>,
}

/// Errors taking or giving back the registers.
#[derive(Debug, thiserror::Error)]
pub enum CrbStateError {
    #[error("a TPM command was still running after {0:?}")]
    Busy(Duration),
    #[error("the saved command/response buffer has {0} bytes instead of {CRB_BUFFER_SIZE}")]
    BufferSize(usize),
    #[error("the device is running a command and cannot take a saved state")]
    NotFresh,
}

/// The CRB page of one boot. Insert it on the MMIO bus at [`CRB_BASE`] for
/// [`super::CRB_SIZE`] bytes.
pub struct TpmCrb {
    shared: Arc<Shared>,
    jobs: Sender<Vec<u8>>,
}

impl TpmCrb {
    /// A device in its reset state whose commands run on `backend`, and its worker thread.
    pub fn new(backend: SharedBackend) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            regs: Mutex::new(Regs::new()),
            done: Condvar::new(),
        });
        let (jobs, rx) = channel();
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("tpm".into())
            .spawn(move || run_worker(&worker, &backend, &rx))?;
        Ok(Self { shared, jobs })
    }

    /// The registers, once the command in flight (if any) has completed; waits at most
    /// `wait` for it. No new command can start meanwhile when no vCPU runs.
    pub fn save_regs(&self, wait: Duration) -> Result<CrbState, CrbStateError> {
        let regs = lock(&self.shared.regs);
        let (regs, _) = self
            .shared
            .done
            .wait_timeout_while(regs, wait, |r| r.running)
            .unwrap_or_else(|e| e.into_inner());
        if regs.running {
            return Err(CrbStateError::Busy(wait));
        }
        Ok(CrbState {
            assigned: regs.assigned,
            idle: regs.idle,
            error: regs.error,
            cancel: regs.cancel,
            int_enable: regs.int_enable,
            int_status: regs.int_status,
            buffer: regs.buffer.clone(),
        })
    }

    /// Takes back registers [`save_regs`](Self::save_regs) gave, on a device that runs
    /// no command; an error leaves the device as it was.
    pub fn restore_regs(&mut self, state: &CrbState) -> Result<(), CrbStateError> {
        if state.buffer.len() != CRB_BUFFER_SIZE {
            return Err(CrbStateError::BufferSize(state.buffer.len()));
        }
        let mut regs = lock(&self.shared.regs);
        if regs.running {
            return Err(CrbStateError::NotFresh);
        }
        regs.assigned = state.assigned;
        regs.idle = state.idle;
        regs.error = state.error;
        regs.cancel = state.cancel & INVOKE;
        regs.int_enable = state.int_enable;
        regs.int_status = state.int_status;
        regs.buffer.copy_from_slice(&state.buffer);
        Ok(())
    }

    fn write_reg(&mut self, offset: u64, value: u32, mask: u32) {
        let mut regs = lock(&self.shared.regs);
        match offset {
            LOC_CTRL => {
                if value & (LOC_CTRL_REQUEST | LOC_CTRL_SEIZE) != 0 {
                    // Locality 0 is the only one, so a request is granted at once.
                    regs.assigned = true;
                }
                if value & LOC_CTRL_RELINQUISH != 0 {
                    regs.assigned = false;
                }
            }
            CTRL_REQ => {
                if value & CTRL_REQ_CMD_READY != 0 {
                    regs.idle = false;
                }
                if value & CTRL_REQ_GO_IDLE != 0 {
                    regs.idle = true;
                }
            }
            CTRL_CANCEL => regs.cancel = (regs.cancel & !mask) | (value & mask & INVOKE),
            CTRL_START if value & INVOKE != 0 => {
                if regs.running {
                    return;
                }
                if !regs.assigned {
                    guest_warn!("tpm: CTRL_START without locality 0 granted: ignored");
                    return;
                }
                self.start(&mut regs);
            }
            CTRL_INT_ENABLE => regs.int_enable = (regs.int_enable & !mask) | (value & mask),
            CTRL_INT_STS => regs.int_status &= !(value & mask),
            // Read-only: the status, the interface id, the buffer's place and size (the
            // buffer cannot move: it lives in this page).
            _ => {}
        }
    }

    /// Starts the command in the buffer, or answers it at once when it is malformed.
    fn start(&self, regs: &mut Regs) {
        regs.idle = false;
        let size = header_size(&regs.buffer).unwrap_or(0);
        if !(TPM_HEADER_LEN..=CRB_BUFFER_SIZE).contains(&size) {
            guest_warn!(
                "tpm: command size {size} is outside {TPM_HEADER_LEN}..={CRB_BUFFER_SIZE}: \
                 answered with TPM_RC_COMMAND_SIZE"
            );
            regs.complete(&error_response(TPM_RC_COMMAND_SIZE));
            return;
        }
        let command = regs.buffer[..size].to_vec();
        regs.running = true;
        if self.jobs.send(command).is_err() {
            // The worker is gone (it cannot end while the device lives, unless it
            // panicked): answer as a broken TPM would.
            regs.error = true;
            regs.complete(&error_response(TPM_RC_FAILURE));
        }
    }
}

/// Runs commands until the device is dropped.
fn run_worker(shared: &Shared, backend: &SharedBackend, jobs: &Receiver<Vec<u8>>) {
    while let Ok(command) = jobs.recv() {
        let result = lock(backend).execute(&command);
        let response = match result {
            Ok(r) if (TPM_HEADER_LEN..=CRB_BUFFER_SIZE).contains(&r.len()) => Ok(r),
            Ok(r) => Err(format!(
                "a response of {} bytes does not fit the {CRB_BUFFER_SIZE}-byte buffer",
                r.len()
            )),
            Err(e) => Err(hospes_core::error_chain(&e)),
        };
        let mut regs = lock(&shared.regs);
        match response {
            Ok(r) => {
                log::debug!(
                    "tpm: command {:#x} answered {:#x}",
                    code(&command),
                    code(&r)
                );
                regs.complete(&r)
            }
            Err(why) => {
                guest_warn!("tpm: command failed, answered with TPM_RC_FAILURE: {why}");
                regs.error = true;
                regs.complete(&error_response(TPM_RC_FAILURE));
            }
        }
        drop(regs);
        shared.done.notify_all();
    }
}

/// The command or response code of a message whose header is there (0 otherwise).
fn code(message: &[u8]) -> u32 {
    message
        .get(6..10)
        .and_then(|c| <[u8; 4]>::try_from(c).ok())
        .map_or(0, u32::from_be_bytes)
}

impl BusDevice for TpmCrb {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let regs = lock(&self.shared.regs);
        for (i, b) in data.iter_mut().enumerate() {
            *b = regs.byte(offset + i as u64);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some(at) = offset.checked_sub(CRB_BUFFER_OFFSET) {
            let mut regs = lock(&self.shared.regs);
            if regs.running {
                guest_warn!("tpm: buffer write while a command runs: dropped");
                return;
            }
            let at = at as usize;
            if let Some(dst) = regs.buffer.get_mut(at..at + data.len()) {
                dst.copy_from_slice(data);
            }
            return;
        }
        // Register writes, split by 32-bit register: the bytes written and their mask.
        let mut words: Vec<(u64, u32, u32)> = Vec::with_capacity(2);
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i as u64;
            let (reg, shift) = (at & !3, 8 * (at & 3));
            match words.last_mut() {
                Some((r, value, mask)) if *r == reg => {
                    *value |= u32::from(b) << shift;
                    *mask |= 0xff << shift;
                }
                _ => words.push((reg, u32::from(b) << shift, 0xff << shift)),
            }
        }
        for (reg, value, mask) in words {
            self.write_reg(reg, value, mask);
        }
    }
}

#[cfg(test)]
mod tests;
