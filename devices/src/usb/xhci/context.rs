//! Device, slot, endpoint and input contexts in guest memory (xHCI 1.2 §6.2), 32 bytes
//! each (HCCPARAMS1.CSZ = 0).
//!
//! Data flow: a command hands the controller an Input Context (an Input Control Context
//! with drop and add flags, then a Slot Context and 31 Endpoint Contexts); the controller
//! reads the ones flagged, keeps its own copy of the endpoint state, and writes the
//! results into the slot's Output Device Context, whose address the guest put in the
//! Device Context Base Address Array (DCBAA) entry of that slot. Contexts are plain
//! `[u32; 8]` dwords with accessors for the fields the controller uses.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes per context with CSZ = 0.
pub const CONTEXT_SIZE: u64 = 32;

/// Slot states of the Slot Context (xHCI 1.2 Table 6-7).
pub const SLOT_STATE_ENABLED: u32 = 0;
pub const SLOT_STATE_DEFAULT: u32 = 1;
pub const SLOT_STATE_ADDRESSED: u32 = 2;
pub const SLOT_STATE_CONFIGURED: u32 = 3;

/// Endpoint states of the Endpoint Context (xHCI 1.2 Table 6-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    Disabled = 0,
    Running = 1,
    Halted = 2,
    Stopped = 3,
    Error = 4,
}

/// Endpoint types (xHCI 1.2 Table 6-9, EP Type field).
pub mod ep_type {
    pub const ISOCH_OUT: u8 = 1;
    pub const BULK_OUT: u8 = 2;
    pub const INTERRUPT_OUT: u8 = 3;
    pub const CONTROL: u8 = 4;
    pub const ISOCH_IN: u8 = 5;
    pub const BULK_IN: u8 = 6;
    pub const INTERRUPT_IN: u8 = 7;
}

/// Errors of context access.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("context at {addr:#x} is outside guest RAM")]
    Memory { addr: u64 },
}

/// Eight dwords of one context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context(pub [u32; 8]);

impl Context {
    pub fn read(mem: &GuestMemoryMmap, addr: u64) -> Result<Context, ContextError> {
        let mut b = [0u8; CONTEXT_SIZE as usize];
        mem.read_slice(&mut b, GuestAddress(addr))
            .map_err(|_| ContextError::Memory { addr })?;
        let mut c = [0u32; 8];
        for (d, chunk) in c.iter_mut().zip(b.chunks_exact(4)) {
            *d = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        Ok(Context(c))
    }

    pub fn write(&self, mem: &GuestMemoryMmap, addr: u64) -> Result<(), ContextError> {
        let mut b = [0u8; CONTEXT_SIZE as usize];
        for (chunk, d) in b.chunks_exact_mut(4).zip(self.0) {
            chunk.copy_from_slice(&d.to_le_bytes());
        }
        mem.write_slice(&b, GuestAddress(addr))
            .map_err(|_| ContextError::Memory { addr })
    }

    // Input Control Context (xHCI 1.2 §6.2.5.1).

    /// Drop Context flags (D2..D31).
    pub fn drop_flags(&self) -> u32 {
        self.0[0]
    }

    /// Add Context flags (A0..A31).
    pub fn add_flags(&self) -> u32 {
        self.0[1]
    }

    // Slot Context (xHCI 1.2 §6.2.2).

    /// Root Hub Port Number (1-based).
    pub fn root_port(&self) -> u8 {
        (self.0[1] >> 16) as u8
    }

    pub fn set_slot_state(&mut self, state: u32, address: u8) {
        self.0[3] = state << 27 | u32::from(address);
    }

    pub fn slot_state(&self) -> u32 {
        self.0[3] >> 27
    }

    pub fn device_address(&self) -> u8 {
        self.0[3] as u8
    }

    pub fn context_entries(&self) -> u32 {
        self.0[0] >> 27
    }

    pub fn set_context_entries(&mut self, entries: u32) {
        self.0[0] = (self.0[0] & !(0x1f << 27)) | (entries & 0x1f) << 27;
    }

    /// Interrupter Target.
    pub fn slot_interrupter(&self) -> u16 {
        (self.0[2] >> 22) as u16
    }

    // Endpoint Context (xHCI 1.2 §6.2.3).

    pub fn ep_state(&self) -> u32 {
        self.0[0] & 7
    }

    pub fn set_ep_state(&mut self, state: EndpointState) {
        self.0[0] = (self.0[0] & !7) | state as u32;
    }

    pub fn ep_type(&self) -> u8 {
        ((self.0[1] >> 3) & 7) as u8
    }

    pub fn max_packet_size(&self) -> u16 {
        (self.0[1] >> 16) as u16
    }

    pub fn set_max_packet_size(&mut self, size: u16) {
        self.0[1] = (self.0[1] & 0xffff) | u32::from(size) << 16;
    }

    /// TR Dequeue Pointer and Dequeue Cycle State.
    pub fn dequeue(&self) -> (u64, bool) {
        let raw = u64::from(self.0[3]) << 32 | u64::from(self.0[2]);
        (raw & !0xf, raw & 1 != 0)
    }

    pub fn set_dequeue(&mut self, addr: u64, cycle: bool) {
        let raw = (addr & !0xf) | u64::from(cycle);
        self.0[2] = raw as u32;
        self.0[3] = (raw >> 32) as u32;
    }
}

/// Where context `index` of an Input Context at `base` lies (index 0 is the Input
/// Control Context, 1 the Slot Context, DCI + 1 an Endpoint Context).
pub fn input_context_addr(base: u64, index: u8) -> u64 {
    base.wrapping_add(u64::from(index) * CONTEXT_SIZE)
}

/// Where an Output Device Context at `base` keeps the Slot Context (DCI 0) or the
/// Endpoint Context of `dci`.
pub fn device_context_addr(base: u64, dci: u8) -> u64 {
    base.wrapping_add(u64::from(dci) * CONTEXT_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_fields_round_trip_through_their_dwords() {
        let mut c = Context::default();
        c.set_ep_state(EndpointState::Halted);
        c.set_dequeue(0x1234_5678_9abc_def0, true);
        c.set_max_packet_size(512);
        assert_eq!(c.ep_state(), 2);
        assert_eq!(c.dequeue(), (0x1234_5678_9abc_def0, true));
        assert_eq!(c.max_packet_size(), 512);
        let mut s = Context::default();
        s.set_slot_state(SLOT_STATE_ADDRESSED, 7);
        assert_eq!((s.slot_state(), s.device_address()), (2, 7));
    }
}
