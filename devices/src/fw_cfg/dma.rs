//! The fw_cfg DMA interface (`qemu:docs/specs/fw_cfg.rst`, "Guest-side DMA Interface").
//!
//! The guest writes the guest-physical address of a 16-byte `FWCfgDmaAccess` to the DMA
//! register; the device reads it from guest memory:
//!
//! ```text
//! +0 control  BE32   bit 0 error, 1 read, 2 skip, 3 select (key in bits 16..31), 4 write
//! +4 length   BE32
//! +8 address  BE64   guest buffer
//! ```
//!
//! It selects (if asked), then reads `length` bytes of the selected item from the offset
//! into the buffer (zeros past the item's end), skips them, or writes them from the buffer
//! into a writable item, and finally stores the new control word: 0 when done, the error
//! bit when not. Every guest address is checked before anything is written, so a failed
//! access changes neither guest memory (but the control word) nor the item.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::FwCfg;

/// `FWCfgDmaAccess.control` bits.
const DMA_CTL_ERROR: u32 = 1 << 0;
const DMA_CTL_READ: u32 = 1 << 1;
const DMA_CTL_SKIP: u32 = 1 << 2;
const DMA_CTL_SELECT: u32 = 1 << 3;
const DMA_CTL_WRITE: u32 = 1 << 4;
/// Control bits 5..15, which no operation uses. Bit 0 (error) is an output and ignored.
const DMA_CTL_UNKNOWN: u32 = 0xffe0;
/// Size of `FWCfgDmaAccess`.
const DMA_ACCESS_SIZE: usize = 16;
/// Chunk of zeros written for a read past an item's end.
const ZERO_CHUNK: usize = 4096;

/// Why a DMA access failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum DmaError {
    #[error("access structure at {0:#x} is outside guest memory")]
    AccessOutsideMemory(u64),
    #[error("control {0:#x} has unknown bits or both read and write")]
    BadControl(u32),
    #[error("buffer {address:#x}+{length:#x} is outside guest memory")]
    BufferOutsideMemory { address: u64, length: u32 },
    #[error("item {0:#x} is read-only")]
    ReadOnly(u16),
    #[error("write of {length} bytes at {offset} runs past the end of item {key:#x}")]
    PastEnd {
        key: u16,
        offset: usize,
        length: u32,
    },
}

/// One `FWCfgDmaAccess`, decoded.
struct DmaAccess {
    control: u32,
    length: u32,
    address: u64,
}

impl DmaAccess {
    fn decode(raw: [u8; DMA_ACCESS_SIZE]) -> Self {
        let [c0, c1, c2, c3, l0, l1, l2, l3, a @ ..] = raw;
        Self {
            control: u32::from_be_bytes([c0, c1, c2, c3]),
            length: u32::from_be_bytes([l0, l1, l2, l3]),
            address: u64::from_be_bytes(a),
        }
    }

    /// The error for a buffer not wholly in guest memory.
    fn outside(&self) -> DmaError {
        DmaError::BufferOutsideMemory {
            address: self.address,
            length: self.length,
        }
    }
}

impl FwCfg {
    /// Runs the access whose structure is at `at` and reports in its control word.
    pub(super) fn dma_transfer(&mut self, at: u64) {
        let control = match self.run_dma(at) {
            Ok(()) => 0,
            Err(e) => {
                crate::guest_warn!("fw_cfg: DMA: {e}");
                DMA_CTL_ERROR
            }
        };
        // Fails only when the structure is outside guest memory: nowhere to report then.
        let _ = self
            .mem
            .write_slice(&control.to_be_bytes(), GuestAddress(at));
    }

    fn run_dma(&mut self, at: u64) -> Result<(), DmaError> {
        let mut raw = [0; DMA_ACCESS_SIZE];
        self.mem
            .read_slice(&mut raw, GuestAddress(at))
            .map_err(|_| DmaError::AccessOutsideMemory(at))?;
        let access = DmaAccess::decode(raw);
        let op = access.control & (DMA_CTL_READ | DMA_CTL_WRITE);
        if access.control & DMA_CTL_UNKNOWN != 0 || op == DMA_CTL_READ | DMA_CTL_WRITE {
            return Err(DmaError::BadControl(access.control));
        }
        if access.control & DMA_CTL_SELECT != 0 {
            // The selector is the upper half of the control word.
            self.select((access.control >> 16) as u16);
        }
        if access.length == 0 {
            return Ok(());
        }
        if access.control & DMA_CTL_READ != 0 {
            self.dma_read(&access)
        } else if access.control & DMA_CTL_WRITE != 0 {
            self.dma_write(&access)
        } else if access.control & DMA_CTL_SKIP != 0 {
            self.dma_skip(access.length);
            Ok(())
        } else {
            Ok(())
        }
    }

    /// Checks that the whole buffer of an access is guest memory.
    fn check_buffer(&self, access: &DmaAccess) -> Result<(), DmaError> {
        let fits = access
            .address
            .checked_add(u64::from(access.length))
            .is_some()
            && GuestMemoryBackend::check_range(
                &self.mem,
                GuestAddress(access.address),
                access.length as usize,
            );
        if fits { Ok(()) } else { Err(access.outside()) }
    }

    fn dma_read(&mut self, access: &DmaAccess) -> Result<(), DmaError> {
        self.check_buffer(access)?;
        let len = access.length as usize;
        let rest = self.item(self.selector).get(self.offset..).unwrap_or(&[]);
        let n = rest.len().min(len);
        let head = rest.get(..n).unwrap_or(&[]);
        self.mem
            .write_slice(head, GuestAddress(access.address))
            .map_err(|_| access.outside())?;
        // Past the end the guest reads zeros (fw_cfg.rst, "Data Register").
        let zeros = [0u8; ZERO_CHUNK];
        let mut done = n;
        while done < len {
            let chunk = (len - done).min(ZERO_CHUNK);
            let to = GuestAddress(access.address + done as u64);
            self.mem
                .write_slice(zeros.get(..chunk).unwrap_or(&[]), to)
                .map_err(|_| access.outside())?;
            done += chunk;
        }
        self.offset += n;
        Ok(())
    }

    fn dma_skip(&mut self, length: u32) {
        let end = self.item(self.selector).len();
        if self.offset < end {
            self.offset = self.offset.saturating_add(length as usize).min(end);
        }
    }

    fn dma_write(&mut self, access: &DmaAccess) -> Result<(), DmaError> {
        let (key, offset) = (self.selector, self.offset);
        let item_len = self
            .writable_item(key)
            .ok_or(DmaError::ReadOnly(key))?
            .len();
        let end = offset
            .checked_add(access.length as usize)
            .filter(|&e| e <= item_len)
            .ok_or(DmaError::PastEnd {
                key,
                offset,
                length: access.length,
            })?;
        self.check_buffer(access)?;
        // Bounded by the item's size, checked above.
        let mut buf = vec![0; end - offset];
        self.mem
            .read_slice(&mut buf, GuestAddress(access.address))
            .map_err(|_| access.outside())?;
        if let Some(dst) = self.writable_item(key).and_then(|d| d.get_mut(offset..end)) {
            dst.copy_from_slice(&buf);
        }
        self.offset = end;
        Ok(())
    }
}
