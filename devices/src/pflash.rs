//! A CFI parallel flash with the Intel/Sharp command set ("cfi.pflash01" in QEMU), holding
//! OVMF's code and its UEFI variable store just below 4 GiB.
//!
//! QEMU-flavoured OVMF (`OVMF_CODE_4M.fd` + `OVMF_VARS_4M.fd`) finds its variable store
//! on such a flash: `OvmfPkg/QemuFlashFvbServicesRuntimeDxe/QemuFlash.c` probes it
//! (`QemuFlashDetected`), programs variables one byte at a time (`0x10`, data, ..., `0xFF`)
//! and erases 4 KiB blocks (`0x20`, `0xD0`). Without a flash that answers the probe,
//! variables are not persistent (and SMM builds stop with an `ASSERT`).
//!
//! One [`Pflash`] serves one image: the CODE image read-only, the per-VM VARS image
//! writable. [`ovmf_layout`] places them: VARS at the bottom, CODE after it, ending at
//! 4 GiB (VARS at 0xFFC00000 for the 4 MiB build).
//!
//! Data flow:
//! - The whole image lives in memory, in an anonymous shared mapping ([`FbMemory`], the
//!   framebuffer's buffer type). Reads in read-array mode come from there. Under KVM the
//!   helper maps that buffer as a read-only memory slot while the flash is in read-array
//!   mode, so those reads never exit; [`FlashMapping::set_array_mode`] tells it when the
//!   mode changes (any write leaves read-array mode, and a write to a read-only slot exits
//!   as MMIO, so the device sees every command).
//! - A write is a command (its low byte) unless the previous write set up a program or an
//!   erase. A program or erase changes the memory image and goes straight to the VARS file
//!   with `pwrite`.
//! - Durability: the file is `fdatasync`ed before the guest can observe that an operation
//!   finished, that is before any read of the device and before the flash returns to
//!   read-array mode (where the guest reads through the memory slot), and around every
//!   erase. OVMF's byte loop never reads status between bytes, so one variable write costs
//!   one sync, not one per byte; a host crash leaves at most the one unfinished write (or
//!   erase) torn, which OVMF's fault-tolerant write recovers from.
//!
//! Status register (Intel SR): bit 7 ready, bit 5 erase error, bit 4 program error, bit 1
//! block locked. Error bits stay until Clear Status. As in QEMU (and unlike a real part),
//! Clear Status also clears the ready bit: OVMF's probe writes Clear Status, then Read
//! Status, and calls the device a flash only if the status then reads 0x00.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::framebuffer::{DisplayError, FbMemory};
use crate::state::{Snapshot, StateError, decode, encode};

/// Erase block size: OVMF's FVB block size (`BLOCK_SIZE` = 0x1000 in
/// `OvmfPkg/Include/Fdf/OvmfPkgDefines.fdf.inc`, `PcdOvmfFirmwareBlockSize`).
pub const BLOCK_SIZE: usize = 0x1000;
/// Largest image accepted (the 4 MiB build needs 4 MiB; leave room for larger builds).
pub const MAX_IMAGE_LEN: usize = 32 << 20;
/// The flash images end at 4 GiB, where the reset vector is.
pub const FLASH_END: u64 = 1 << 32;

/// Command: read array (Intel command set); QEMU also takes 0x00 and AMD's reset 0xF0.
const CMD_READ_ARRAY: u8 = 0xff;
const CMD_READ_ARRAY_QEMU: u8 = 0x00;
const CMD_AMD_RESET: u8 = 0xf0;
/// Command: single byte program setup; the next write is the data (0x40 is its alias).
const CMD_PROGRAM: u8 = 0x10;
const CMD_PROGRAM_ALT: u8 = 0x40;
/// Command: block erase setup; 0xD0 at the block confirms.
const CMD_ERASE: u8 = 0x20;
/// Command: erase confirm.
const CMD_CONFIRM: u8 = 0xd0;
/// Command: clear status register.
const CMD_CLEAR_STATUS: u8 = 0x50;
/// Command: read status register.
const CMD_READ_STATUS: u8 = 0x70;
/// Command: read identifier codes (manufacturer at 0, device at 1).
const CMD_READ_ID: u8 = 0x90;
/// Command: CFI query.
const CMD_CFI_QUERY: u8 = 0x98;

/// Status: write state machine ready.
pub const SR_READY: u8 = 0x80;
/// Status: erase error (also set with SR_PROGRAM_ERROR for a bad command sequence).
pub const SR_ERASE_ERROR: u8 = 0x20;
/// Status: program error.
pub const SR_PROGRAM_ERROR: u8 = 0x10;
/// Status: the operation hit a locked (read-only) block.
pub const SR_LOCKED: u8 = 0x02;

/// Identifier: Intel's manufacturer code.
pub const MANUFACTURER_ID: u8 = 0x89;
/// Identifier: device code of the Intel 28F128J3, an x8/x16 part with this command set.
/// Nothing OVMF or Linux runs on x86 reads it.
pub const DEVICE_ID: u8 = 0x18;

/// Length of the CFI query table: the standard part (0x10..0x31) and a minimal
/// Intel primary extended table ("PRI", 0x31..0x40).
const CFI_LEN: usize = 0x40;

/// Errors from opening a flash image.
#[derive(Debug, thiserror::Error)]
pub enum PflashError {
    #[error("cannot read the flash image")]
    Read(#[source] std::io::Error),
    #[error(
        "the flash image is {0} bytes; it must be a non-zero multiple of {BLOCK_SIZE} up to {MAX_IMAGE_LEN}"
    )]
    BadSize(u64),
    #[error("cannot map the flash image in memory")]
    Map(#[source] DisplayError),
}

/// Whether the guest may change the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// OVMF's CODE: program and erase fail with status error bits.
    ReadOnly,
    /// The VARS store: changes go through to the file.
    ReadWrite,
}

/// Who may change a writable image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteGate {
    /// Any access (a machine without SMM).
    Anyone,
    /// Only accesses made in System Management Mode ([`crate::bus::Initiator::smm`]),
    /// as QEMU's `secure=on`: the variable store of a Secure Boot firmware, which only
    /// its SMM code may write. Other writes are dropped (with a rate-limited warning) and
    /// other reads see the array, whatever mode SMM code left the flash in.
    SmmOnly,
}

/// What the helper does when the flash enters or leaves read-array mode: map the image
/// ([`Pflash::memory`]) as a read-only KVM memory slot at the flash's base while `on`, and
/// remove the slot while off, so command-mode reads (status, CFI) reach the device.
///
/// The flash starts in read-array mode (map the slot when inserting the device); it calls
/// this only on a change, from the vCPU thread whose write or read caused it, with the
/// device lock held.
pub trait FlashMapping: Send + Sync {
    fn set_array_mode(&self, on: bool);
}

/// Where the two OVMF images go: VARS below CODE, CODE ending at [`FLASH_END`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashLayout {
    pub vars_base: u64,
    pub code_base: u64,
}

/// Places a VARS image of `vars_len` bytes and a CODE image of `code_len` bytes so that
/// CODE ends at 4 GiB and VARS sits right below it (OVMF's FD layout: 0xFFC00000 and
/// 0xFFC84000 for the 4 MiB build). None if together they exceed twice [`MAX_IMAGE_LEN`].
pub fn ovmf_layout(code_len: u64, vars_len: u64) -> Option<FlashLayout> {
    let total = code_len.checked_add(vars_len)?;
    if total > 2 * MAX_IMAGE_LEN as u64 {
        return None;
    }
    Some(FlashLayout {
        vars_base: FLASH_END - total,
        code_base: FLASH_END - code_len,
    })
}

/// What reads of the device return, and what the next write means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Mode {
    /// Reads return the image.
    Array,
    /// Reads return the status register.
    Status,
    /// Reads return the identifier codes.
    Identifier,
    /// Reads return the CFI table.
    Query,
    /// The next write is data to program; reads return status.
    ProgramSetup,
    /// The next write should be the erase confirm; reads return status.
    EraseSetup,
}

/// One CFI flash device over one image (see the module header).
pub struct Pflash {
    mem: Arc<FbMemory>,
    /// Image length (the mapping may be rounded up to a page; the image is a whole
    /// number of blocks, so it is not).
    len: usize,
    /// The VARS file, written through; None for a read-only image.
    file: Option<File>,
    mode: Mode,
    status: u8,
    /// A program reached the file but is not yet synced.
    unsynced: bool,
    mapping: Option<Arc<dyn FlashMapping>>,
    cfi: [u8; CFI_LEN],
    gate: WriteGate,
}

impl Pflash {
    /// Reads `file` whole into memory. A [`Access::ReadWrite`] flash keeps the file (opened
    /// read-write by the helper) and writes every change through to it.
    pub fn new(file: File, access: Access) -> Result<Self, PflashError> {
        let size = file.metadata().map_err(PflashError::Read)?.len();
        let len = usize::try_from(size)
            .ok()
            .filter(|&n| n > 0 && n <= MAX_IMAGE_LEN && n % BLOCK_SIZE == 0)
            .ok_or(PflashError::BadSize(size))?;
        let mut image = vec![0u8; len];
        file.read_exact_at(&mut image, 0)
            .map_err(PflashError::Read)?;
        let mem = FbMemory::new(len).map_err(PflashError::Map)?;
        mem.write(0, &image);
        Ok(Self {
            mem: Arc::new(mem),
            len,
            file: (access == Access::ReadWrite).then_some(file),
            mode: Mode::Array,
            status: SR_READY,
            unsynced: false,
            mapping: None,
            cfi: cfi_table(len),
            gate: WriteGate::Anyone,
        })
    }

    /// Sets who may access the device beyond reading the array (see [`WriteGate`]).
    pub fn set_write_gate(&mut self, gate: WriteGate) {
        self.gate = gate;
    }

    /// Whether the access in progress is refused commands: made outside SMM on a flash
    /// only SMM may drive.
    fn outsider(&self) -> bool {
        self.gate == WriteGate::SmmOnly && !crate::bus::initiator().smm
    }

    /// Tells `mapping` about every later change into or out of read-array mode.
    pub fn set_mapping(&mut self, mapping: Arc<dyn FlashMapping>) {
        self.mapping = Some(mapping);
    }

    /// The in-memory image, for the helper's read-only memory slot (its host address is
    /// [`FbMemory::host_address`]; map [`Pflash::len`] bytes). Keep the `Arc` for as long
    /// as the slot exists.
    pub fn memory(&self) -> Arc<FbMemory> {
        Arc::clone(&self.mem)
    }

    /// Image length in bytes: the length of the bus range and of the memory slot.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether reads now return the image (the memory slot should be mapped).
    pub fn in_array_mode(&self) -> bool {
        self.mode == Mode::Array
    }

    /// Machine reset: back to read-array mode with a ready status, as after power-on.
    pub fn reset(&mut self) {
        self.status = SR_READY;
        self.set_mode(Mode::Array);
    }

    /// Makes every change so far durable. Called on the guest-visible points (see the
    /// module header) and by Drop; the helper may call it when the VM stops.
    pub fn flush(&mut self) {
        if !self.unsynced {
            return;
        }
        self.unsynced = false;
        if let Some(file) = &self.file
            && let Err(e) = file.sync_data()
        {
            log::error!("cannot sync the UEFI variable store: {e}");
            self.status |= SR_PROGRAM_ERROR;
        }
    }

    fn set_mode(&mut self, mode: Mode) {
        let was_array = self.mode == Mode::Array;
        self.mode = mode;
        let is_array = mode == Mode::Array;
        if is_array {
            self.flush();
        }
        if was_array != is_array
            && let Some(m) = &self.mapping
        {
            m.set_array_mode(is_array);
        }
    }

    /// A write while no program or erase is set up: a command in its low byte.
    fn command(&mut self, cmd: u8, offset: u64) {
        match cmd {
            CMD_READ_ARRAY | CMD_READ_ARRAY_QEMU | CMD_AMD_RESET => self.set_mode(Mode::Array),
            CMD_READ_STATUS => self.set_mode(Mode::Status),
            CMD_CLEAR_STATUS => {
                // QEMU clears the ready bit too, and OVMF's probe expects 0x00 afterwards.
                self.status = 0;
                self.set_mode(Mode::Array);
            }
            CMD_PROGRAM | CMD_PROGRAM_ALT => self.set_mode(Mode::ProgramSetup),
            CMD_ERASE => self.set_mode(Mode::EraseSetup),
            CMD_READ_ID => self.set_mode(Mode::Identifier),
            CMD_CFI_QUERY => self.set_mode(Mode::Query),
            _ => {
                crate::guest_warn!("pflash: unknown command {cmd:#04x} at {offset:#x}");
                self.set_mode(Mode::Array);
            }
        }
    }

    /// The data cycle of a byte program: `data` (the whole access) at `offset`.
    fn program(&mut self, offset: u64, data: &[u8]) {
        self.status |= SR_READY;
        let Some(start) = self.span(offset, data.len()) else {
            crate::guest_warn!("pflash: program past the end at {offset:#x}");
            self.status |= SR_PROGRAM_ERROR;
            return;
        };
        let Some(file) = &self.file else {
            crate::guest_warn!("pflash: program refused on a read-only image at {offset:#x}");
            self.status |= SR_PROGRAM_ERROR | SR_LOCKED;
            return;
        };
        // Like QEMU's model, a program stores the value as written (a real part can only
        // clear bits); OVMF always erases before it rewrites.
        self.mem.write(start, data);
        self.unsynced = true;
        if let Err(e) = file.write_all_at(data, offset) {
            log::error!("cannot write the UEFI variable store: {e}");
            self.status |= SR_PROGRAM_ERROR;
        }
    }

    /// The confirm cycle of a block erase at the block holding `offset`.
    fn erase(&mut self, offset: u64) {
        self.status |= SR_READY;
        let block = offset & !(BLOCK_SIZE as u64 - 1);
        let Some(start) = self.span(block, BLOCK_SIZE) else {
            crate::guest_warn!("pflash: erase past the end at {offset:#x}");
            self.status |= SR_ERASE_ERROR;
            return;
        };
        if self.file.is_none() {
            crate::guest_warn!("pflash: erase refused on a read-only image at {offset:#x}");
            self.status |= SR_ERASE_ERROR | SR_LOCKED;
            return;
        }
        // Earlier programs reach the disk before the erase, and the erase before anything
        // after it: a crash tears at most this one block.
        self.flush();
        self.mem.fill32(start, BLOCK_SIZE, u32::MAX);
        self.unsynced = true;
        if let Some(file) = &self.file
            && let Err(e) = file.write_all_at(&[0xff; BLOCK_SIZE], block)
        {
            log::error!("cannot erase in the UEFI variable store: {e}");
            self.status |= SR_ERASE_ERROR;
        }
        self.flush();
    }

    /// `offset` as an index when `[offset, offset + n)` lies inside the image.
    fn span(&self, offset: u64, n: usize) -> Option<usize> {
        let start = usize::try_from(offset).ok()?;
        (start.checked_add(n)? <= self.len).then_some(start)
    }
}

impl BusDevice for Pflash {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        // A read is where the guest learns an operation finished.
        self.flush();
        let mode = if self.outsider() {
            Mode::Array
        } else {
            self.mode
        };
        match mode {
            Mode::Array => match self.span(offset, data.len()) {
                Some(start) => self.mem.read(start, data),
                None => data.fill(0xff),
            },
            Mode::Status | Mode::ProgramSetup | Mode::EraseSetup => data.fill(self.status),
            Mode::Identifier => {
                for (i, b) in data.iter_mut().enumerate() {
                    // The codes repeat every 256 bytes; other offsets (block lock status)
                    // read as 0, unlocked.
                    *b = match offset.wrapping_add(i as u64) & 0xff {
                        0 => MANUFACTURER_ID,
                        1 => DEVICE_ID,
                        _ => 0,
                    };
                }
            }
            Mode::Query => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = usize::try_from(offset.wrapping_add(i as u64)).unwrap_or(usize::MAX);
                    *b = self.cfi.get(at).copied().unwrap_or(0);
                }
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&cmd) = data.first() else {
            return;
        };
        if self.outsider() {
            crate::guest_warn!(
                "pflash: write {cmd:#04x} at {offset:#x} from outside SMM to the secure \
                 variable store dropped"
            );
            return;
        }
        match self.mode {
            Mode::ProgramSetup => {
                self.program(offset, data);
                self.set_mode(Mode::Status);
            }
            Mode::EraseSetup => match cmd {
                CMD_CONFIRM => {
                    self.erase(offset);
                    self.set_mode(Mode::Status);
                }
                CMD_READ_ARRAY => self.set_mode(Mode::Array),
                _ => {
                    crate::guest_warn!("pflash: erase setup followed by {cmd:#04x}");
                    // Intel's "improper command sequence": both error bits.
                    self.status |= SR_READY | SR_ERASE_ERROR | SR_PROGRAM_ERROR;
                    self.set_mode(Mode::Status);
                }
            },
            _ => self.command(cmd, offset),
        }
    }
}

/// The saved state of a flash: the command state machine only.
///
/// The image is not part of it. CODE is the firmware file, read-only, loaded again at
/// every start. VARS is the VM's own variable store file (`OVMF_VARS.fd` in the VM's
/// folder): every program and erase is written through to it and synced before the
/// guest sees it done (and [`Snapshot::save_state`] syncs what is left), so the file the
/// restored VM loads already holds the variables the saved guest wrote.
#[derive(Debug, Serialize, Deserialize)]
struct PflashState {
    /// The image length, to refuse a state saved over another image.
    len: u64,
    mode: Mode,
    status: u8,
}

/// The name a saved flash goes by in errors.
const STATE_NAME: &str = "pflash";

impl Snapshot for Pflash {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        self.flush();
        encode(
            STATE_NAME,
            &PflashState {
                len: self.len as u64,
                mode: self.mode,
                status: self.status,
            },
        )
    }

    /// Puts the state machine back; a mode other than read-array takes the image's
    /// memory slot away through [`FlashMapping::set_array_mode`], as the command that
    /// entered it did.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let s: PflashState = decode(STATE_NAME, state)?;
        if s.len != self.len as u64 {
            return Err(StateError::mismatch(
                STATE_NAME,
                format!(
                    "saved over a {}-byte image, this one is {}",
                    s.len, self.len
                ),
            ));
        }
        self.status = s.status;
        self.set_mode(s.mode);
        Ok(())
    }
}

impl Drop for Pflash {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The CFI query table of an x8 device of `len` bytes in uniform [`BLOCK_SIZE`] blocks
/// (JEDEC JESD68 / Intel AP-646 field offsets, byte addresses as an x8 part answers).
fn cfi_table(len: usize) -> [u8; CFI_LEN] {
    let mut t = [0u8; CFI_LEN];
    let blocks = (len / BLOCK_SIZE).saturating_sub(1);
    let block_units = BLOCK_SIZE / 256;
    // Device size as 2^n bytes: rounded up, since the VARS image (0x84000) is not a power
    // of two; the erase region below gives the exact geometry.
    let size_log2 = len.next_power_of_two().trailing_zeros() as u8;
    let fields: &[(usize, u8)] = &[
        // "QRY"
        (0x10, b'Q'),
        (0x11, b'R'),
        (0x12, b'Y'),
        // Primary command set 0x0001: Intel/Sharp extended.
        (0x13, 0x01),
        (0x14, 0x00),
        // Primary extended table at 0x31.
        (0x15, 0x31),
        (0x16, 0x00),
        // Vcc min 2.7 V, max 3.6 V (BCD volts.tenths); no Vpp pin.
        (0x1b, 0x27),
        (0x1c, 0x36),
        // Typical timeouts: byte program 2^4 us, buffer write not supported (0),
        // block erase 2^10 ms, chip erase not supported (0).
        (0x1f, 0x04),
        (0x21, 0x0a),
        // Maximum timeouts, as 2^n times typical.
        (0x23, 0x04),
        (0x25, 0x04),
        // Device size 2^n bytes.
        (0x27, size_log2),
        // Interface 0x0000: x8 asynchronous.
        (0x28, 0x00),
        (0x29, 0x00),
        // Maximum bytes in a buffered write: 2^0 (no write buffer).
        (0x2a, 0x00),
        (0x2b, 0x00),
        // One erase block region: (blocks - 1), block size in 256-byte units.
        (0x2c, 0x01),
        (0x2d, blocks as u8),
        (0x2e, (blocks >> 8) as u8),
        (0x2f, block_units as u8),
        (0x30, (block_units >> 8) as u8),
        // Intel primary extended table "PRI" version 1.0: no optional features, no
        // suspend, no lock bits, one protection register field.
        (0x31, b'P'),
        (0x32, b'R'),
        (0x33, b'I'),
        (0x34, b'1'),
        (0x35, b'0'),
        (0x3f, 0x01),
    ];
    for &(at, v) in fields {
        if let Some(slot) = t.get_mut(at) {
            *slot = v;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    /// The size of OVMF_VARS_4M.fd.
    const VARS_LEN: usize = 0x84000;

    fn image(len: usize) -> Vec<u8> {
        // Byte i holds i mod 251, so neighbouring blocks differ and no byte is 0xff.
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn open(bytes: &[u8], access: Access) -> (Pflash, tempfile::NamedTempFile) {
        let tmp = file_with(bytes);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(tmp.path())
            .unwrap();
        (Pflash::new(file, access).unwrap(), tmp)
    }

    fn rd(f: &mut Pflash, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        f.read(0, offset, &mut b);
        b[0]
    }

    fn wr(f: &mut Pflash, offset: u64, v: u8) {
        f.write(0, offset, &[v]);
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<bool>>);

    impl FlashMapping for Recorder {
        fn set_array_mode(&self, on: bool) {
            self.0.lock().unwrap().push(on);
        }
    }

    #[test]
    fn reads_the_image_in_read_array_mode() {
        let img = image(VARS_LEN);
        let (mut f, _tmp) = open(&img, Access::ReadWrite);
        assert!(f.in_array_mode());
        assert_eq!(f.len(), VARS_LEN);
        let mut buf = [0u8; 8];
        f.read(0, 0x1234, &mut buf);
        assert_eq!(&buf[..], &img[0x1234..0x123c]);
        assert_eq!(rd(&mut f, VARS_LEN as u64 - 1), img[VARS_LEN - 1]);
        let mut m = [0u8; 4];
        f.memory().read(0x40, &mut m);
        assert_eq!(&m[..], &img[0x40..0x44]);
    }

    #[test]
    fn programs_a_byte_into_memory_and_the_file() {
        let img = image(VARS_LEN);
        let (mut f, tmp) = open(&img, Access::ReadWrite);
        wr(&mut f, 0x2001, CMD_PROGRAM);
        wr(&mut f, 0x2001, 0x5a);
        wr(&mut f, 0x2001, CMD_READ_ARRAY);
        assert_eq!(rd(&mut f, 0x2001), 0x5a);
        assert_eq!(rd(&mut f, 0x2000), img[0x2000]);
        let disk = std::fs::read(tmp.path()).unwrap();
        assert_eq!(disk[0x2001], 0x5a);
        assert_eq!(disk[0x2002], img[0x2002]);
        assert_eq!(disk.len(), VARS_LEN);
    }

    #[test]
    fn ovmf_byte_loop_writes_a_run_and_returns_to_array_mode() {
        // QemuFlashWrite: 0x10 then the data for each byte, 0xFF at the last one.
        let img = image(VARS_LEN);
        let (mut f, tmp) = open(&img, Access::ReadWrite);
        let text = b"BootOrder";
        for (i, &b) in text.iter().enumerate() {
            let at = 0x3000 + i as u64;
            wr(&mut f, at, CMD_PROGRAM);
            wr(&mut f, at, b);
        }
        wr(&mut f, 0x3000 + text.len() as u64 - 1, CMD_READ_ARRAY);
        assert!(f.in_array_mode());
        let mut back = [0u8; 9];
        f.read(0, 0x3000, &mut back);
        assert_eq!(&back, text);
        let disk = std::fs::read(tmp.path()).unwrap();
        assert_eq!(&disk[0x3000..0x3009], text);
    }

    #[test]
    fn erases_a_block_to_ff_in_memory_and_on_disk() {
        let img = image(VARS_LEN);
        let (mut f, tmp) = open(&img, Access::ReadWrite);
        // OVMF erases with both cycles at the block start; any address in it works.
        wr(&mut f, 0x5000, CMD_ERASE);
        wr(&mut f, 0x5123, CMD_CONFIRM);
        assert_eq!(
            rd(&mut f, 0x5000),
            SR_READY,
            "reads return status after erase"
        );
        wr(&mut f, 0, CMD_READ_ARRAY);
        assert_eq!(rd(&mut f, 0x5000), 0xff);
        assert_eq!(rd(&mut f, 0x5fff), 0xff);
        assert_eq!(rd(&mut f, 0x4fff), img[0x4fff]);
        assert_eq!(rd(&mut f, 0x6000), img[0x6000]);
        let disk = std::fs::read(tmp.path()).unwrap();
        assert!(disk[0x5000..0x6000].iter().all(|&b| b == 0xff));
        assert_eq!(disk[0x4fff], img[0x4fff]);
        assert_eq!(disk[0x6000], img[0x6000]);
    }

    #[test]
    fn cfi_query_describes_the_geometry() {
        let (mut f, _tmp) = open(&image(VARS_LEN), Access::ReadWrite);
        wr(&mut f, 0x55, CMD_CFI_QUERY);
        assert!(!f.in_array_mode());
        let mut qry = [0u8; 3];
        f.read(0, 0x10, &mut qry);
        assert_eq!(&qry, b"QRY");
        assert_eq!(rd(&mut f, 0x13), 0x01, "Intel command set");
        assert_eq!(rd(&mut f, 0x15), 0x31, "extended table address");
        assert_eq!(rd(&mut f, 0x27), 20, "0x84000 rounds up to 2^20");
        assert_eq!(rd(&mut f, 0x28), 0x00, "x8 interface");
        assert_eq!(rd(&mut f, 0x2c), 1, "one erase region");
        let blocks = u16::from_le_bytes([rd(&mut f, 0x2d), rd(&mut f, 0x2e)]) as usize + 1;
        let block = u16::from_le_bytes([rd(&mut f, 0x2f), rd(&mut f, 0x30)]) as usize * 256;
        assert_eq!(block, BLOCK_SIZE);
        assert_eq!(blocks * block, VARS_LEN);
        let mut pri = [0u8; 3];
        f.read(0, 0x31, &mut pri);
        assert_eq!(&pri, b"PRI");
        assert_eq!(rd(&mut f, 0x1000), 0, "past the table");
        wr(&mut f, 0, CMD_READ_ARRAY);
        assert_eq!(rd(&mut f, 0x10), image(VARS_LEN)[0x10]);
    }

    #[test]
    fn read_identifier_gives_manufacturer_and_device() {
        let (mut f, _tmp) = open(&image(VARS_LEN), Access::ReadOnly);
        wr(&mut f, 0, CMD_READ_ID);
        assert_eq!(rd(&mut f, 0), MANUFACTURER_ID);
        assert_eq!(rd(&mut f, 1), DEVICE_ID);
        assert_eq!(rd(&mut f, 2), 0, "block unlocked");
        assert_eq!(rd(&mut f, 0x1001), DEVICE_ID);
    }

    #[test]
    fn status_reports_ready_after_program_in_every_byte_lane() {
        let (mut f, _tmp) = open(&image(VARS_LEN), Access::ReadWrite);
        wr(&mut f, 0x10, CMD_CLEAR_STATUS);
        wr(&mut f, 0x10, CMD_PROGRAM);
        wr(&mut f, 0x10, 0x00);
        let mut s = [0u8; 4];
        f.read(0, 0x10, &mut s);
        assert_eq!(s, [SR_READY; 4]);
        wr(&mut f, 0x10, CMD_READ_STATUS);
        assert_eq!(rd(&mut f, 0x777), SR_READY);
    }

    #[test]
    fn clear_status_zeroes_errors_and_returns_to_array_mode() {
        let (mut f, _tmp) = open(&image(VARS_LEN), Access::ReadWrite);
        wr(&mut f, 0, CMD_ERASE);
        wr(&mut f, 0, 0x42);
        assert_eq!(
            rd(&mut f, 0),
            SR_READY | SR_ERASE_ERROR | SR_PROGRAM_ERROR,
            "bad sequence"
        );
        wr(&mut f, 0, CMD_CLEAR_STATUS);
        assert!(f.in_array_mode());
        assert_eq!(rd(&mut f, 0), image(VARS_LEN)[0], "no erase happened");
        wr(&mut f, 0, CMD_READ_STATUS);
        assert_eq!(rd(&mut f, 0), 0);
    }

    #[test]
    fn read_only_image_refuses_program_and_erase() {
        let img = image(0x4000);
        let (mut f, tmp) = open(&img, Access::ReadOnly);
        wr(&mut f, 0x100, CMD_PROGRAM);
        wr(&mut f, 0x100, 0x00);
        assert_eq!(rd(&mut f, 0x100), SR_READY | SR_PROGRAM_ERROR | SR_LOCKED);
        wr(&mut f, 0x100, CMD_CLEAR_STATUS);
        wr(&mut f, 0x1000, CMD_ERASE);
        wr(&mut f, 0x1000, CMD_CONFIRM);
        assert_eq!(rd(&mut f, 0x1000), SR_READY | SR_ERASE_ERROR | SR_LOCKED);
        wr(&mut f, 0, CMD_READ_ARRAY);
        assert_eq!(rd(&mut f, 0x100), img[0x100]);
        assert_eq!(rd(&mut f, 0x1000), img[0x1000]);
        drop(f);
        assert!(std::fs::read(tmp.path()).unwrap() == img, "file unchanged");
    }

    #[test]
    fn the_mapping_is_told_on_every_switch_between_array_and_command_mode() {
        let (mut f, _tmp) = open(&image(VARS_LEN), Access::ReadWrite);
        let rec = Arc::new(Recorder::default());
        f.set_mapping(rec.clone());
        wr(&mut f, 0, CMD_READ_ARRAY); // already in array mode: nothing to say
        wr(&mut f, 0, CMD_READ_STATUS); // off
        wr(&mut f, 0, CMD_CFI_QUERY); // still off
        wr(&mut f, 0, CMD_READ_ARRAY); // on
        wr(&mut f, 0, CMD_PROGRAM); // off
        wr(&mut f, 0, 0x12); // status mode: still off
        wr(&mut f, 0, CMD_CLEAR_STATUS); // on
        wr(&mut f, 0, CMD_ERASE); // off
        f.reset(); // on
        assert_eq!(
            *rec.0.lock().unwrap(),
            [false, true, false, true, false, true]
        );
        assert!(f.in_array_mode());
    }

    #[test]
    fn a_flash_saved_mid_program_finishes_the_program_after_restore() {
        let img = image(VARS_LEN);
        let (mut f, tmp) = open(&img, Access::ReadWrite);
        // OVMF's byte loop: program setup, then the VM is saved before the data cycle.
        wr(&mut f, 0x100, CMD_PROGRAM);
        let saved = f.save_state().unwrap();
        drop(f);
        // The restored VM opens the same VARS file, as a fresh start does.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(tmp.path())
            .unwrap();
        let mut r = Pflash::new(file, Access::ReadWrite).unwrap();
        let rec = Arc::new(Recorder::default());
        r.set_mapping(rec.clone());
        r.restore_state(&saved).unwrap();
        assert!(!r.in_array_mode());
        assert_eq!(
            *rec.0.lock().unwrap(),
            [false],
            "the slot goes, as on the command"
        );
        assert_eq!(rd(&mut r, 0), SR_READY, "status reads, not the image");
        wr(&mut r, 0x100, 0x5a);
        wr(&mut r, 0, CMD_READ_ARRAY);
        assert_eq!(*rec.0.lock().unwrap(), [false, true]);
        assert_eq!(rd(&mut r, 0x100), 0x5a);
        drop(r);
        assert_eq!(std::fs::read(tmp.path()).unwrap()[0x100], 0x5a);
    }

    #[test]
    fn a_flash_in_read_array_mode_restores_without_touching_the_mapping() {
        let (mut f, _tmp) = open(&image(0x2000), Access::ReadWrite);
        wr(&mut f, 0, CMD_CLEAR_STATUS);
        let saved = f.save_state().unwrap();
        let (mut r, _tmp2) = open(&image(0x2000), Access::ReadWrite);
        let rec = Arc::new(Recorder::default());
        r.set_mapping(rec.clone());
        r.restore_state(&saved).unwrap();
        assert!(rec.0.lock().unwrap().is_empty());
        wr(&mut r, 0, CMD_READ_STATUS);
        assert_eq!(rd(&mut r, 0), 0, "Clear Status survived (OVMF's probe)");
    }

    #[test]
    fn garbage_or_another_images_flash_state_is_refused() {
        let (mut f, _tmp) = open(&image(0x2000), Access::ReadWrite);
        wr(&mut f, 0, CMD_READ_STATUS);
        let saved = f.save_state().unwrap();
        let (mut other, _tmp2) = open(&image(0x3000), Access::ReadWrite);
        assert!(other.restore_state(&saved).is_err());
        assert!(other.restore_state(&saved[..saved.len() - 1]).is_err());
        assert!(other.restore_state(&[0x80, 0x40, 9, 9]).is_err());
        assert!(other.in_array_mode(), "unchanged");
        assert_eq!(rd(&mut other, 1), image(0x3000)[1]);
    }

    #[test]
    fn accesses_past_the_end_do_not_panic_or_change_anything() {
        let img = image(0x2000);
        let (mut f, tmp) = open(&img, Access::ReadWrite);
        // A program straddling the end is refused whole.
        f.write(0, 0x1ffc, &[CMD_PROGRAM]);
        f.write(0, 0x1ffc, &[0; 8]);
        assert_eq!(rd(&mut f, 0), SR_READY | SR_PROGRAM_ERROR);
        for &at in &[0x2000u64, u64::MAX, u64::MAX - 3, 1 << 40] {
            let mut b = [0u8; 8];
            f.read(0, at, &mut b);
            f.write(0, at, &[CMD_PROGRAM]);
            f.write(0, at, &[1, 2, 3, 4, 5, 6, 7, 8]);
            f.write(0, at, &[CMD_ERASE]);
            f.write(0, at, &[CMD_CONFIRM]);
            f.write(0, at, &[CMD_CFI_QUERY]);
            f.read(0, at, &mut b);
            assert_eq!(b, [0; 8], "CFI reads past the table are 0");
            f.write(0, at, &[CMD_READ_ID]);
            f.read(0, at, &mut b);
            f.write(0, at, &[]);
            f.write(0, at, &[CMD_READ_ARRAY]);
        }
        wr(&mut f, 0, CMD_READ_STATUS);
        assert_eq!(
            rd(&mut f, 0) & (SR_PROGRAM_ERROR | SR_ERASE_ERROR),
            SR_PROGRAM_ERROR | SR_ERASE_ERROR
        );
        wr(&mut f, 0, CMD_READ_ARRAY);
        assert_eq!(rd(&mut f, 0x1ffc), img[0x1ffc]);
        drop(f);
        assert!(std::fs::read(tmp.path()).unwrap() == img, "file unchanged");
    }

    #[test]
    fn a_secure_store_takes_writes_from_smm_only() {
        use crate::bus::{Initiator, set_initiator};
        let (mut f, file) = open(&image(2 * BLOCK_SIZE), Access::ReadWrite);
        f.set_write_gate(WriteGate::SmmOnly);
        let before = rd(&mut f, 0x10);
        // Outside SMM: the program sequence is dropped, nothing reaches memory or file.
        wr(&mut f, 0x10, 0x10);
        wr(&mut f, 0x10, 0x5a);
        assert!(f.in_array_mode());
        assert_eq!(rd(&mut f, 0x10), before);
        assert_eq!(std::fs::read(file.path()).unwrap()[0x10], before);
        // In SMM: programmed, and the flash sits in status mode ...
        set_initiator(Initiator {
            vcpu: Some(0),
            smm: true,
        });
        wr(&mut f, 0x10, 0x10);
        wr(&mut f, 0x10, 0x5a);
        assert_eq!(rd(&mut f, 0), SR_READY);
        // ... which code outside SMM does not see: it reads the array.
        set_initiator(Initiator::default());
        assert_eq!(rd(&mut f, 0x10), 0x5a);
        assert_eq!(std::fs::read(file.path()).unwrap()[0x10], 0x5a);
        assert!(!f.in_array_mode(), "an outsider's read changes no mode");
    }

    #[test]
    fn unknown_command_returns_to_array_mode() {
        let (mut f, _tmp) = open(&image(0x1000), Access::ReadWrite);
        wr(&mut f, 0, CMD_READ_STATUS);
        wr(&mut f, 0, 0xe8); // buffered write: not modelled
        assert!(f.in_array_mode());
        assert_eq!(rd(&mut f, 5), 5);
    }

    /// `QemuFlashDetected` from edk2's QemuFlash.c, step by step on the device.
    fn ovmf_detects_flash(f: &mut Pflash) -> bool {
        const CLEARED_ARRAY_STATUS: u8 = 0x00;
        let Some(at) = (0..BLOCK_SIZE as u64).find(|&o| {
            let b = rd(f, o);
            b != CMD_CLEAR_STATUS && b != CMD_READ_STATUS && b != CLEARED_ARRAY_STATUS
        }) else {
            return false;
        };
        let original = rd(f, at);
        wr(f, at, CMD_CLEAR_STATUS);
        let probe = rd(f, at);
        if original != CMD_CLEAR_STATUS && probe == CMD_CLEAR_STATUS {
            return false; // RAM
        }
        wr(f, at, CMD_READ_STATUS);
        let probe = rd(f, at);
        if probe == CLEARED_ARRAY_STATUS {
            wr(f, at, CMD_READ_ARRAY);
            return true;
        }
        false
    }

    #[test]
    fn ovmf_detection_sees_a_flash_on_vars() {
        // A VARS image starts with the FV header's 16-byte zero vector.
        let mut img = image(VARS_LEN);
        img[..16].fill(0);
        let (mut f, _tmp) = open(&img, Access::ReadWrite);
        assert!(ovmf_detects_flash(&mut f));
        assert!(f.in_array_mode(), "the probe ends in read-array mode");
        assert_eq!(rd(&mut f, 16), img[16], "and leaves the image alone");
    }

    #[test]
    fn rejects_images_that_are_not_whole_blocks() {
        for len in [0usize, 100, BLOCK_SIZE + 1] {
            let tmp = file_with(&vec![0u8; len]);
            let file = File::open(tmp.path()).unwrap();
            assert!(matches!(
                Pflash::new(file, Access::ReadOnly),
                Err(PflashError::BadSize(n)) if n == len as u64
            ));
        }
    }

    #[test]
    fn layout_puts_vars_below_code_ending_at_4g() {
        let l = ovmf_layout(0x37c000, 0x84000).unwrap();
        assert_eq!(l.vars_base, 0xffc0_0000);
        assert_eq!(l.code_base, 0xffc8_4000);
        assert_eq!(ovmf_layout(u64::MAX, 1), None);
        assert_eq!(ovmf_layout(1 << 31, 0), None);
    }
}
