//! The physical region descriptor table: where a command's data lives in guest memory.
//!
//! Data flow: the command engine reads a command's PRDT (AHCI 1.3.1 §4.2.3.3: 16 bytes per
//! entry, DBA/DBAU, DBC 21:0 = byte count - 1, bit 31 = interrupt on completion) into a
//! [`Transfer`], then the ATA or ATAPI code streams bytes through it, in order, to guest
//! memory ([`Transfer::put`]) or from it ([`Transfer::take`]). The cursor only moves
//! forward, so a table of 65535 entries costs one pass. Every guest access goes through
//! vm-memory, so an entry outside RAM is an error for the command, not a fault.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::AhciError;

/// Bytes per PRDT entry.
pub const PRD_LEN: usize = 16;
/// DW3 fields: byte count minus one, and the interrupt bit.
const DBC_MASK: u32 = 0x003f_ffff;
const PRD_I: u32 = 1 << 31;

#[derive(Debug, Clone, Copy)]
struct Prd {
    addr: u64,
    len: u64,
    irq: bool,
}

/// A command's data buffer: the PRDT entries and how far the transfer has come.
pub struct Transfer<'a> {
    mem: &'a GuestMemoryMmap,
    prds: Vec<Prd>,
    /// Entry the cursor is in, and the byte offset inside it.
    index: usize,
    within: u64,
    /// Bytes moved so far (the PRDBC the HBA reports).
    done: u64,
    total: u64,
}

impl<'a> Transfer<'a> {
    /// Reads `entries` PRDT entries at `table` from guest memory.
    pub fn read(mem: &'a GuestMemoryMmap, table: u64, entries: u16) -> Result<Self, AhciError> {
        let mut raw = vec![0u8; usize::from(entries) * PRD_LEN];
        mem.read_slice(&mut raw, GuestAddress(table))
            .map_err(|_| AhciError::GuestMemory { addr: table })?;
        let prds: Vec<Prd> = raw
            .chunks_exact(PRD_LEN)
            .map(|e| {
                let dw = |i: usize| {
                    u32::from_le_bytes([e[i * 4], e[i * 4 + 1], e[i * 4 + 2], e[i * 4 + 3]])
                };
                Prd {
                    // DBA bit 0 is reserved: data is word aligned.
                    addr: (u64::from(dw(1)) << 32 | u64::from(dw(0))) & !1,
                    len: u64::from(dw(3) & DBC_MASK) + 1,
                    irq: dw(3) & PRD_I != 0,
                }
            })
            .collect();
        let total = prds.iter().map(|p| p.len).sum();
        Ok(Self {
            mem,
            prds,
            index: 0,
            within: 0,
            done: 0,
            total,
        })
    }

    /// Bytes the table describes in all.
    pub fn capacity(&self) -> u64 {
        self.total
    }

    /// Bytes moved so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Whether an entry with its interrupt bit set was used up (PxIS.DPS).
    pub fn passed_interrupt_entry(&self) -> bool {
        self.prds.iter().take(self.index).any(|p| p.irq)
    }

    /// Walks `len` bytes from the cursor, calling `f(guest address, offset in the caller's
    /// buffer, length)` for each piece; fails if the table ends first.
    fn walk(
        &mut self,
        len: usize,
        mut f: impl FnMut(&GuestMemoryMmap, GuestAddress, usize, usize) -> Result<(), AhciError>,
    ) -> Result<(), AhciError> {
        let mut at = 0usize;
        while at < len {
            let Some(prd) = self.prds.get(self.index).copied() else {
                return Err(AhciError::PrdtTooShort);
            };
            let piece = (prd.len - self.within).min((len - at) as u64) as usize;
            let addr = prd.addr.wrapping_add(self.within);
            f(self.mem, GuestAddress(addr), at, piece)?;
            at += piece;
            self.done += piece as u64;
            self.within += piece as u64;
            if self.within == prd.len {
                self.index += 1;
                self.within = 0;
            }
        }
        Ok(())
    }

    /// Copies `data` to guest memory at the cursor (a device-to-host transfer).
    pub fn put(&mut self, data: &[u8]) -> Result<(), AhciError> {
        self.walk(data.len(), |mem, addr, at, n| {
            let src = data.get(at..at + n).ok_or(AhciError::PrdtTooShort)?;
            mem.write_slice(src, addr)
                .map_err(|_| AhciError::GuestMemory { addr: addr.0 })
        })
    }

    /// Fills `buf` from guest memory at the cursor (a host-to-device transfer).
    pub fn take(&mut self, buf: &mut [u8]) -> Result<(), AhciError> {
        self.walk(buf.len(), |mem, addr, at, n| {
            let dst = buf.get_mut(at..at + n).ok_or(AhciError::PrdtTooShort)?;
            mem.read_slice(dst, addr)
                .map_err(|_| AhciError::GuestMemory { addr: addr.0 })
        })
    }
}
