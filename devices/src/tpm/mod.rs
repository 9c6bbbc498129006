//! A TPM 2.0 for the guest: the Command Response Buffer (CRB) interface of the TCG PC
//! Client Platform TPM Profile, in front of a [`TpmBackend`] that executes the TPM
//! commands (the helper's swtpm, `hospes-vmm`'s `backends::swtpm`).
//!
//! Data flow: the guest's driver requests locality 0 and sets cmdReady through the
//! registers of [`crb::TpmCrb`] at [`CRB_BASE`], writes a TPM command into the buffer in
//! the same page ([`CRB_BUFFER_OFFSET`]) and writes CTRL_START. The device copies the
//! command out and hands it to its worker thread, which runs it on the backend, writes
//! the response into the buffer and only then clears CTRL_START, the driver's sign that
//! the response is there. The vCPU never waits for the TPM. Commands the device can see
//! are malformed, and every command while the backend is broken, get a TPM error
//! response ([`error_response`]) instead.
//!
//! What the firmware and OS need besides the registers (the TPM2 ACPI table, the DSDT
//! device `MSFT0101`) is built by the helper from the constants here.

pub mod crb;
pub mod state;

pub use crb::TpmCrb;

/// Where the CRB registers of locality 0 sit (the PC Client TPM address).
pub const CRB_BASE: u64 = 0xfed4_0000;
/// One page: locality 0's registers and its command/response buffer. Localities 1..4
/// are not implemented (INTF_ID says so) and their pages are left unclaimed.
pub const CRB_SIZE: u64 = 0x1000;
/// The control area (CTRL_REQ onwards), whose address the TPM2 ACPI table carries.
pub const CRB_CTRL_AREA_OFFSET: u64 = 0x40;
/// The command and response buffer inside the page (shared by both directions).
pub const CRB_BUFFER_OFFSET: u64 = 0x80;
/// Its size: the rest of the page.
pub const CRB_BUFFER_SIZE: usize = (CRB_SIZE - CRB_BUFFER_OFFSET) as usize;

/// The 10-byte header every TPM 2.0 command and response starts with: tag (2 bytes),
/// size of the whole message (4), command or response code (4), all big-endian.
pub const TPM_HEADER_LEN: usize = 10;
/// TPM_ST_NO_SESSIONS: the tag of a response without sessions.
pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
/// TPM_RC_SUCCESS.
pub const TPM_RC_SUCCESS: u32 = 0;
/// TPM_RC_FAILURE: the TPM cannot execute commands (its backend is gone).
pub const TPM_RC_FAILURE: u32 = 0x101;
/// TPM_RC_COMMAND_SIZE: the size field disagrees with the command (too short, or larger
/// than the buffer).
pub const TPM_RC_COMMAND_SIZE: u32 = 0x142;

/// A backend failure: the command got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TpmBackendError {
    #[error("the TPM backend is not running")]
    Dead,
    #[error("cannot talk to the TPM backend")]
    Io(#[source] std::io::Error),
    #[error("the TPM backend answered with a malformed response ({0})")]
    BadResponse(String),
}

/// What executes TPM commands: one command in, its complete response out.
pub trait TpmBackend: Send {
    fn execute(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmBackendError>;
}

/// A response that carries only the header: `code` with tag TPM_ST_NO_SESSIONS.
pub fn error_response(code: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(TPM_HEADER_LEN);
    r.extend_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    r.extend_from_slice(&(TPM_HEADER_LEN as u32).to_be_bytes());
    r.extend_from_slice(&code.to_be_bytes());
    r
}

/// The size field of a command or response header, if the header is there.
pub fn header_size(message: &[u8]) -> Option<usize> {
    let field: [u8; 4] = message.get(2..6)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(field)).ok()
}
