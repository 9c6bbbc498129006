//! Transfer Request Blocks (xHCI 1.2 §4.11, §6.4): the 16-byte unit of every ring.
//!
//! Data flow: [`super::ring`] reads raw TRBs from guest memory into [`Trb`]; commands and
//! transfer descriptors are decoded from its fields here; events are built with the
//! `*_event` constructors and written to the event ring by the producer.

use vm_memory::ByteValued;

/// Bytes per TRB.
pub const TRB_SIZE: u64 = 16;

/// TRB types (xHCI 1.2 Table 6-91).
pub mod trb_type {
    pub const NORMAL: u8 = 1;
    pub const SETUP: u8 = 2;
    pub const DATA: u8 = 3;
    pub const STATUS: u8 = 4;
    pub const ISOCH: u8 = 5;
    pub const LINK: u8 = 6;
    pub const EVENT_DATA: u8 = 7;
    pub const NOOP: u8 = 8;
    pub const ENABLE_SLOT: u8 = 9;
    pub const DISABLE_SLOT: u8 = 10;
    pub const ADDRESS_DEVICE: u8 = 11;
    pub const CONFIGURE_ENDPOINT: u8 = 12;
    pub const EVALUATE_CONTEXT: u8 = 13;
    pub const RESET_ENDPOINT: u8 = 14;
    pub const STOP_ENDPOINT: u8 = 15;
    pub const SET_TR_DEQUEUE: u8 = 16;
    pub const RESET_DEVICE: u8 = 17;
    pub const NEGOTIATE_BANDWIDTH: u8 = 19;
    pub const GET_PORT_BANDWIDTH: u8 = 21;
    pub const NOOP_COMMAND: u8 = 23;
    pub const TRANSFER_EVENT: u8 = 32;
    pub const COMMAND_COMPLETION_EVENT: u8 = 33;
    pub const PORT_STATUS_CHANGE_EVENT: u8 = 34;
    pub const HOST_CONTROLLER_EVENT: u8 = 37;
}

/// Completion codes (xHCI 1.2 Table 6-90).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CompletionCode {
    Success = 1,
    DataBuffer = 2,
    Babble = 3,
    UsbTransaction = 4,
    Trb = 5,
    Stall = 6,
    Resource = 7,
    NoSlotsAvailable = 9,
    SlotNotEnabled = 11,
    EndpointNotEnabled = 12,
    ShortPacket = 13,
    Parameter = 17,
    ContextState = 19,
    EventRingFull = 21,
    CommandRingStopped = 24,
    CommandAborted = 25,
    Stopped = 26,
    StoppedLengthInvalid = 27,
}

/// Control-word bits shared by TRBs (xHCI 1.2 §6.4.1).
pub const TRB_CYCLE: u32 = 1 << 0;
/// Link TRB: Toggle Cycle.
pub const TRB_TOGGLE_CYCLE: u32 = 1 << 1;
/// Interrupt on Short Packet.
pub const TRB_ISP: u32 = 1 << 2;
/// Chain bit.
pub const TRB_CHAIN: u32 = 1 << 4;
/// Interrupt On Completion.
pub const TRB_IOC: u32 = 1 << 5;
/// Immediate Data: the parameter field holds up to 8 data bytes.
pub const TRB_IDT: u32 = 1 << 6;
/// Event TRBs: Event Data (the parameter is an Event Data TRB's value).
pub const TRB_EVENT_DATA: u32 = 1 << 2;
/// Address Device: Block Set Address Request.
pub const TRB_BSR: u32 = 1 << 9;
/// Configure Endpoint: Deconfigure.
pub const TRB_DECONFIGURE: u32 = 1 << 9;
/// Data/Status stage: direction IN.
pub const TRB_DIR_IN: u32 = 1 << 16;
/// Longest transfer a single TRB may describe (Transfer Length, 17 bits).
pub const TRB_MAX_LENGTH: u32 = 0x1_ffff;

/// One TRB as it lies in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Trb {
    pub param: u64,
    pub status: u32,
    pub control: u32,
}

// SAFETY: `Trb` is `repr(C)` plain old data (u64, u32, u32: no padding, every bit
// pattern valid).
unsafe impl ByteValued for Trb {}

impl Trb {
    /// The TRB type field.
    pub fn trb_type(&self) -> u8 {
        ((self.control >> 10) & 0x3f) as u8
    }

    pub fn cycle(&self) -> bool {
        self.control & TRB_CYCLE != 0
    }

    pub fn has(&self, flag: u32) -> bool {
        self.control & flag != 0
    }

    /// Slot ID of commands (bits 31:24 of the control word).
    pub fn slot_id(&self) -> u8 {
        (self.control >> 24) as u8
    }

    /// Endpoint ID (DCI) of endpoint commands (bits 20:16).
    pub fn endpoint_id(&self) -> u8 {
        ((self.control >> 16) & 0x1f) as u8
    }

    /// Transfer Length of transfer TRBs.
    pub fn transfer_length(&self) -> u32 {
        self.status & TRB_MAX_LENGTH
    }

    /// Interrupter Target of transfer TRBs (bits 31:22 of the status word).
    pub fn interrupter(&self) -> u16 {
        (self.status >> 22) as u16
    }

    /// A TRB of `trb_type` with the given fields; the cycle bit is the producer's.
    pub fn new(param: u64, status: u32, trb_type: u8, flags: u32) -> Trb {
        Trb {
            param,
            status,
            control: u32::from(trb_type) << 10 | flags,
        }
    }
}

/// A Transfer Event (xHCI 1.2 §6.4.2.1).
pub fn transfer_event(
    trb_pointer: u64,
    residual: u32,
    code: CompletionCode,
    event_data: bool,
    slot: u8,
    dci: u8,
) -> Trb {
    let ed = if event_data { TRB_EVENT_DATA } else { 0 };
    Trb::new(
        trb_pointer,
        (code as u32) << 24 | (residual & 0xff_ffff),
        trb_type::TRANSFER_EVENT,
        ed | u32::from(dci & 0x1f) << 16 | u32::from(slot) << 24,
    )
}

/// A Command Completion Event (xHCI 1.2 §6.4.2.2).
pub fn command_completion_event(command: u64, code: CompletionCode, slot: u8) -> Trb {
    Trb::new(
        command,
        (code as u32) << 24,
        trb_type::COMMAND_COMPLETION_EVENT,
        u32::from(slot) << 24,
    )
}

/// A Port Status Change Event (xHCI 1.2 §6.4.2.3) for 1-based `port`.
pub fn port_status_change_event(port: u8) -> Trb {
    Trb::new(
        u64::from(port) << 24,
        (CompletionCode::Success as u32) << 24,
        trb_type::PORT_STATUS_CHANGE_EVENT,
        0,
    )
}

/// A Host Controller Event (xHCI 1.2 §6.4.2.6), here always Event Ring Full.
pub fn host_controller_event(code: CompletionCode) -> Trb {
    Trb::new(0, (code as u32) << 24, trb_type::HOST_CONTROLLER_EVENT, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_constructors_place_fields_where_the_spec_says() {
        let e = transfer_event(0x1000, 7, CompletionCode::ShortPacket, true, 3, 5);
        assert_eq!(e.param, 0x1000);
        assert_eq!(e.status, 13 << 24 | 7);
        assert_eq!(e.trb_type(), trb_type::TRANSFER_EVENT);
        assert_eq!(e.endpoint_id(), 5);
        assert_eq!(e.slot_id(), 3);
        assert!(e.has(TRB_EVENT_DATA));
        let p = port_status_change_event(6);
        assert_eq!(p.param >> 24, 6);
        assert_eq!(p.trb_type(), trb_type::PORT_STATUS_CHANGE_EVENT);
    }
}
