//! The rings in guest memory (xHCI 1.2 §4.9): the consumer side of the command and transfer
//! rings, and the producer side of an interrupter's event ring with its segment table.
//!
//! Data flow: a [`RingCursor`] is where the controller reads next (an address and the
//! consumer cycle state). [`RingCursor::next`] reads one TRB with vm-memory, stops when
//! its cycle bit says the guest has not written it yet, and follows Link TRBs (toggling
//! the cycle state where they say so). Every TRB read costs one unit of a caller's budget,
//! so a ring of Link TRBs pointing at each other ends in [`RingError::Budget`] instead of
//! spinning. An [`EventRing`] writes event TRBs at its enqueue pointer, walking the
//! Event Ring Segment Table (ERST) and flipping its producer cycle bit at the wrap; it
//! keeps one slot free before the guest's dequeue pointer (ERDP) and, when that slot is
//! reached, writes an Event Ring Full event there and drops events until ERDP moves.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::trb::{
    CompletionCode, TRB_CYCLE, TRB_SIZE, TRB_TOGGLE_CYCLE, Trb, host_controller_event, trb_type,
};

/// Most ERST entries the controller supports (2^ERST Max of HCSPARAMS2, xHCI 1.2 §5.3.4).
pub const ERST_MAX: u32 = 16;
/// Bytes per ERST entry (xHCI 1.2 §6.5).
const ERST_ENTRY_SIZE: u64 = 16;
/// Largest event ring segment, in TRBs (xHCI 1.2 §6.5: 16 to 4096).
const SEGMENT_MAX_TRBS: u32 = 4096;

/// Errors of ring access.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("ring TRB at {addr:#x} is outside guest RAM")]
    Memory { addr: u64 },
    #[error("TRB budget exhausted (Link TRB loop?) at {addr:#x}")]
    Budget { addr: u64 },
    #[error("event ring not set up (ERSTSZ {size}, segment of {trbs} TRBs)")]
    EventRingInvalid { size: u32, trbs: u32 },
    #[error("event ring full")]
    EventRingFull,
}

/// A consumer's place on a command or transfer ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCursor {
    /// Address of the next TRB to read (16-byte aligned).
    pub addr: u64,
    /// Consumer Cycle State: a TRB is the guest's to hand over when its cycle bit equals it.
    pub cycle: bool,
}

impl RingCursor {
    pub fn new(addr: u64, cycle: bool) -> RingCursor {
        RingCursor {
            addr: addr & !0xf,
            cycle,
        }
    }

    /// Reads the next TRB the guest handed over, following Link TRBs, and moves past it.
    /// `Ok(None)`: the ring is empty (the cursor stays). Each TRB read, Link TRBs
    /// included, takes one from `budget`.
    pub fn next(
        &mut self,
        mem: &GuestMemoryMmap,
        budget: &mut u32,
    ) -> Result<Option<(u64, Trb)>, RingError> {
        loop {
            if *budget == 0 {
                return Err(RingError::Budget { addr: self.addr });
            }
            *budget -= 1;
            let trb: Trb = mem
                .read_obj(GuestAddress(self.addr))
                .map_err(|_| RingError::Memory { addr: self.addr })?;
            if trb.cycle() != self.cycle {
                return Ok(None);
            }
            if trb.trb_type() == trb_type::LINK {
                if trb.has(TRB_TOGGLE_CYCLE) {
                    self.cycle = !self.cycle;
                }
                self.addr = trb.param & !0xf;
                continue;
            }
            let at = self.addr;
            self.addr = self.addr.wrapping_add(TRB_SIZE);
            return Ok(Some((at, trb)));
        }
    }
}

/// One Event Ring Segment Table entry.
/// An event ring's producer state, as a saved VM keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedProducer {
    pub segment: Option<(u64, u32)>,
    pub segment_index: u32,
    pub enqueue_index: u32,
    pub cycle: bool,
    pub full: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Segment {
    base: u64,
    trbs: u32,
}

/// The producer side of one interrupter's event ring.
#[derive(Debug, Default)]
pub struct EventRing {
    /// ERSTSZ: entries in the segment table.
    pub erst_size: u32,
    /// ERSTBA: the segment table's address.
    pub erst_base: u64,
    /// The guest's dequeue pointer (ERDP without its low flag bits).
    pub dequeue: u64,
    /// The segment being filled, once the table has been read.
    segment: Option<Segment>,
    segment_index: u32,
    enqueue_index: u32,
    /// Producer Cycle State.
    cycle: bool,
    /// An Event Ring Full event was written; events are dropped until ERDP moves.
    full: bool,
}

impl EventRing {
    /// Starts over at the first segment with cycle 1, as writing ERSTBA does
    /// (xHCI 1.2 §4.9.4).
    pub fn restart(&mut self) {
        self.segment = None;
        self.segment_index = 0;
        self.enqueue_index = 0;
        self.cycle = true;
        self.full = false;
    }

    /// The guest moved its dequeue pointer.
    pub fn set_dequeue(&mut self, addr: u64) {
        self.dequeue = addr & !0xf;
        self.full = false;
    }

    fn read_segment(&self, mem: &GuestMemoryMmap, index: u32) -> Result<Segment, RingError> {
        let invalid = RingError::EventRingInvalid {
            size: self.erst_size,
            trbs: 0,
        };
        if self.erst_size == 0 || self.erst_size > ERST_MAX || index >= self.erst_size {
            return Err(invalid);
        }
        let at = self
            .erst_base
            .checked_add(u64::from(index) * ERST_ENTRY_SIZE)
            .ok_or(RingError::Memory {
                addr: self.erst_base,
            })?;
        let base: u64 = mem
            .read_obj(GuestAddress(at))
            .map_err(|_| RingError::Memory { addr: at })?;
        let size: u32 = mem
            .read_obj(GuestAddress(at + 8))
            .map_err(|_| RingError::Memory { addr: at + 8 })?;
        let trbs = size & 0xffff;
        if trbs == 0 || trbs > SEGMENT_MAX_TRBS {
            return Err(RingError::EventRingInvalid {
                size: self.erst_size,
                trbs,
            });
        }
        Ok(Segment {
            base: base & !0x3f,
            trbs,
        })
    }

    fn current(&mut self, mem: &GuestMemoryMmap) -> Result<Segment, RingError> {
        match self.segment {
            Some(s) => Ok(s),
            None => {
                let s = self.read_segment(mem, self.segment_index)?;
                self.segment = Some(s);
                Ok(s)
            }
        }
    }

    /// The slot after the current one: (segment, its index, TRB index, wrapped).
    fn after(
        &self,
        mem: &GuestMemoryMmap,
        seg: Segment,
    ) -> Result<(Segment, u32, u32, bool), RingError> {
        if self.enqueue_index + 1 < seg.trbs {
            return Ok((seg, self.segment_index, self.enqueue_index + 1, false));
        }
        let next = (self.segment_index + 1) % self.erst_size.max(1);
        let s = if next == self.segment_index {
            seg
        } else {
            self.read_segment(mem, next)?
        };
        Ok((s, next, 0, next == 0))
    }

    /// Writes `event` at the enqueue pointer with the producer cycle bit and moves on.
    pub fn push(&mut self, mem: &GuestMemoryMmap, event: Trb) -> Result<(), RingError> {
        if self.full {
            return Err(RingError::EventRingFull);
        }
        let seg = self.current(mem)?;
        let (next_seg, next_index, next_trb, wrapped) = self.after(mem, seg)?;
        let next_addr = next_seg.base + u64::from(next_trb) * TRB_SIZE;
        let mut event = event;
        if next_addr == self.dequeue {
            // The last free slot: it gets the Event Ring Full event (xHCI 1.2 §4.9.4).
            event = host_controller_event(CompletionCode::EventRingFull);
            self.full = true;
        }
        event.control = (event.control & !TRB_CYCLE) | u32::from(self.cycle);
        let at = seg.base + u64::from(self.enqueue_index) * TRB_SIZE;
        mem.write_obj(event, GuestAddress(at))
            .map_err(|_| RingError::Memory { addr: at })?;
        self.segment = Some(next_seg);
        self.segment_index = next_index;
        self.enqueue_index = next_trb;
        if wrapped {
            self.cycle = !self.cycle;
        }
        if self.full {
            Err(RingError::EventRingFull)
        } else {
            Ok(())
        }
    }

    /// The producer's position for a saved VM.
    pub fn producer(&self) -> SavedProducer {
        SavedProducer {
            segment: self.segment.map(|s| (s.base, s.trbs)),
            segment_index: self.segment_index,
            enqueue_index: self.enqueue_index,
            cycle: self.cycle,
            full: self.full,
        }
    }

    /// Puts the producer back where [`EventRing::producer`] found it; Err if it does not
    /// fit the ring's registers.
    pub fn set_producer(&mut self, p: &SavedProducer) -> Result<(), RingError> {
        let trbs = p.segment.map_or(1, |(_, trbs)| trbs);
        if (self.erst_size != 0 && p.segment_index >= self.erst_size)
            || trbs == 0
            || trbs > SEGMENT_MAX_TRBS
            || p.enqueue_index >= trbs
        {
            return Err(RingError::EventRingInvalid {
                size: self.erst_size,
                trbs,
            });
        }
        self.segment = p.segment.map(|(base, trbs)| Segment { base, trbs });
        self.segment_index = p.segment_index;
        self.enqueue_index = p.enqueue_index;
        self.cycle = p.cycle;
        self.full = p.full;
        Ok(())
    }

    /// Address of the slot the next event goes to (for ERDP comparisons), if known.
    pub fn enqueue_address(&self) -> Option<u64> {
        self.segment
            .map(|s| s.base + u64::from(self.enqueue_index) * TRB_SIZE)
    }
}
