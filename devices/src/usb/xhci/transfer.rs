//! Transfer rings: endpoints, transfer descriptors (TDs) and the Transfer Events that end
//! them (xHCI 1.2 §4.10-4.11).
//!
//! Data flow: a doorbell for slot `n`, target DCI `d` lands in [`Xhci::ring_endpoint`].
//! While the endpoint runs and has room for another transfer in flight, the controller
//! reads the next TD from its ring ([`fetch_td`]): TRBs up to one without the Chain bit,
//! or on a control endpoint a Setup Stage through its Status Stage. The TD becomes one
//! [`Transfer`] (OUT data gathered from its buffers across chained TRBs, or Immediate
//! Data from the TRB itself) that goes to the device with a completion; the TD waits in
//! the endpoint's `pending` queue. Results are applied in ring order ([`Xhci::complete`]):
//! IN data is scattered into the buffers, and a walk over the TD's TRBs posts Transfer
//! Events where IOC, ISP after a short packet, or an error asks for one (Event Data TRBs
//! report the bytes moved since the last one). A Stall, Babble or transaction error halts
//! the endpoint; TDs queued behind it are cancelled and stay on the ring.

use std::collections::VecDeque;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Xhci;
use super::context::{Context, EndpointState, device_context_addr, ep_type};
use super::ring::{RingCursor, RingError};
use super::trb::{
    CompletionCode, TRB_CHAIN, TRB_IDT, TRB_IOC, TRB_ISP, Trb, transfer_event, trb_type,
};
use crate::usb::{SetupPacket, Transfer, TransferKind, TransferResult, TransferStatus, request};

/// TRBs one TD may span, Link TRBs included (a bound on Link TRB loops).
pub const MAX_TD_TRBS: u32 = 4096;
/// TRBs one doorbell may read in all, across TDs completed at once.
const KICK_TRB_BUDGET: u32 = 65536;
/// Longest TD accepted.
pub const MAX_TD_BYTES: u64 = 16 << 20;
/// TDs handed to a device at once per endpoint.
pub const MAX_INFLIGHT: usize = 32;

/// What is wrong with a TD.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TdError {
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("TRB type {trb_type} does not belong in this TD (at {addr:#x})")]
    TrbType { trb_type: u8, addr: u64 },
    #[error("TD at {addr:#x} moves more than {MAX_TD_BYTES} bytes")]
    TooLong { addr: u64 },
    #[error("TD buffer at {addr:#x} is outside guest RAM")]
    Buffer { addr: u64 },
}

/// One transfer descriptor read from a ring.
#[derive(Clone, Debug, Default)]
pub struct Td {
    /// Where the TD starts (the cursor to go back to if it is cancelled).
    pub start: RingCursor,
    pub trbs: Vec<(u64, Trb)>,
    pub setup: Option<SetupPacket>,
}

impl Td {
    /// Data buffers in order: (address, length, immediate data).
    fn buffers(&self) -> impl Iterator<Item = (u64, u32, &Trb)> + '_ {
        self.trbs.iter().filter_map(|(_, t)| {
            matches!(
                t.trb_type(),
                trb_type::NORMAL | trb_type::DATA | trb_type::ISOCH
            )
            .then_some((t.param, t.transfer_length(), t))
        })
    }

    fn total(&self) -> u64 {
        self.buffers().map(|(_, len, _)| u64::from(len)).sum()
    }

    fn first_addr(&self) -> u64 {
        self.trbs.first().map_or(self.start.addr, |(a, _)| *a)
    }

    /// Gathers OUT data from the buffers (Immediate Data from the TRBs themselves).
    fn gather(&self, mem: &GuestMemoryMmap) -> Result<Vec<u8>, TdError> {
        let mut out = Vec::with_capacity(self.total() as usize);
        for (addr, len, trb) in self.buffers() {
            if trb.has(TRB_IDT) {
                let bytes = addr.to_le_bytes();
                out.extend_from_slice(&bytes[..(len as usize).min(8)]);
                continue;
            }
            let at = out.len();
            out.resize(at + len as usize, 0);
            mem.read_slice(&mut out[at..], GuestAddress(addr))
                .map_err(|_| TdError::Buffer { addr })?;
        }
        Ok(out)
    }

    /// Scatters IN data into the buffers.
    fn scatter(&self, mem: &GuestMemoryMmap, mut data: &[u8]) -> Result<(), TdError> {
        for (addr, len, _) in self.buffers() {
            if data.is_empty() {
                break;
            }
            let n = (len as usize).min(data.len());
            mem.write_slice(&data[..n], GuestAddress(addr))
                .map_err(|_| TdError::Buffer { addr })?;
            data = &data[n..];
        }
        Ok(())
    }
}

/// Reads the next TD from `cursor`. `Ok(None)`: the ring holds no complete TD yet (the
/// cursor stays). On success the cursor is past the TD.
pub fn fetch_td(
    mem: &GuestMemoryMmap,
    cursor: &mut RingCursor,
    control: bool,
    budget: &mut u32,
) -> Result<Option<Td>, TdError> {
    let start = *cursor;
    let mut c = *cursor;
    let mut td = Td {
        start,
        ..Td::default()
    };
    let mut bytes = 0u64;
    loop {
        let Some((addr, trb)) = c.next(mem, budget)? else {
            return Ok(None);
        };
        let t = trb.trb_type();
        let first = td.trbs.is_empty();
        td.trbs.push((addr, trb));
        if matches!(t, trb_type::NORMAL | trb_type::DATA | trb_type::ISOCH) {
            bytes += u64::from(trb.transfer_length());
            if bytes > MAX_TD_BYTES {
                *cursor = c;
                return Err(TdError::TooLong { addr });
            }
        }
        let in_control_td = control && td.setup.is_some();
        let done = match t {
            trb_type::SETUP if control && first => {
                td.setup = Some(SetupPacket::from_bytes(trb.param.to_le_bytes()));
                false
            }
            trb_type::STATUS if in_control_td => true,
            trb_type::DATA if in_control_td => false,
            trb_type::NORMAL | trb_type::EVENT_DATA | trb_type::NOOP if in_control_td => false,
            trb_type::NORMAL | trb_type::ISOCH if !control => !trb.has(TRB_CHAIN),
            trb_type::EVENT_DATA | trb_type::NOOP if !in_control_td => !trb.has(TRB_CHAIN),
            _ => {
                *cursor = c;
                return Err(TdError::TrbType { trb_type: t, addr });
            }
        };
        if done {
            *cursor = c;
            return Ok(Some(td));
        }
    }
}

/// A TD handed to the device, waiting for its result.
#[derive(Debug)]
pub struct PendingTd {
    pub id: u64,
    pub td: Td,
    pub result: Option<TransferResult>,
}

/// One enabled endpoint: the controller's copy of its context and its TDs in flight.
#[derive(Debug)]
pub struct Endpoint {
    pub state: EndpointState,
    pub ep_type: u8,
    pub max_packet: u16,
    /// Where the next TD is read.
    pub cursor: RingCursor,
    pub pending: VecDeque<PendingTd>,
    /// The in-flight limit stopped the ring walk; go on when a result frees room.
    pub waiting: bool,
}

impl Endpoint {
    /// An endpoint configured from its context.
    pub fn from_context(ctx: &Context) -> Endpoint {
        let (addr, cycle) = ctx.dequeue();
        Endpoint {
            state: EndpointState::Running,
            ep_type: ctx.ep_type(),
            max_packet: ctx.max_packet_size(),
            cursor: RingCursor::new(addr, cycle),
            pending: VecDeque::new(),
            waiting: false,
        }
    }

    /// Where the guest sees the dequeue pointer: the first TD not finished.
    pub fn dequeue(&self) -> RingCursor {
        self.pending.front().map_or(self.cursor, |p| p.td.start)
    }

    fn is_in(&self) -> bool {
        matches!(
            self.ep_type,
            ep_type::ISOCH_IN | ep_type::BULK_IN | ep_type::INTERRUPT_IN
        )
    }
}

/// The USB endpoint address of DCI `dci` (xHCI 1.2 §4.5.1): 0 for the control endpoint.
pub fn endpoint_address(dci: u8) -> u8 {
    if dci <= 1 {
        0
    } else {
        (dci / 2) | if dci % 2 == 1 { 0x80 } else { 0 }
    }
}

fn error_code(status: TransferStatus) -> Option<CompletionCode> {
    match status {
        TransferStatus::Success => None,
        TransferStatus::Stall => Some(CompletionCode::Stall),
        TransferStatus::Babble => Some(CompletionCode::Babble),
        TransferStatus::Disconnected | TransferStatus::Error => {
            Some(CompletionCode::UsbTransaction)
        }
    }
}

impl Xhci {
    pub(crate) fn endpoint_mut(&mut self, slot: u8, dci: u8) -> Option<&mut Endpoint> {
        self.slot_mut(slot)?
            .endpoints
            .get_mut(usize::from(dci).checked_sub(1)?)?
            .as_mut()
    }

    /// A doorbell for endpoint `dci` of `slot`.
    pub(crate) fn ring_endpoint(&mut self, slot: u8, dci: u8) {
        if !self.slot(slot).is_some_and(|s| s.enabled) {
            crate::guest_warn!("xhci: doorbell for disabled slot {slot}");
            return;
        }
        let Some(ep) = self.endpoint_mut(slot, dci) else {
            crate::guest_warn!("xhci: doorbell for disabled endpoint {dci} of slot {slot}");
            return;
        };
        match ep.state {
            EndpointState::Running => {}
            // A doorbell restarts a stopped endpoint (xHCI 1.2 §4.6.9).
            EndpointState::Stopped => {
                ep.state = EndpointState::Running;
                self.write_ep_context(slot, dci);
            }
            _ => return,
        }
        self.kick_endpoint(slot, dci);
    }

    /// Reads TDs and hands them to the device while the endpoint runs and has room.
    pub(crate) fn kick_endpoint(&mut self, slot: u8, dci: u8) {
        let mut total = KICK_TRB_BUDGET;
        loop {
            let mem = self.mem.clone();
            let Some(ep) = self.endpoint_mut(slot, dci) else {
                return;
            };
            if ep.state != EndpointState::Running {
                return;
            }
            if ep.pending.len() >= MAX_INFLIGHT {
                ep.waiting = true;
                return;
            }
            let control = ep.ep_type == ep_type::CONTROL;
            let mut cursor = ep.cursor;
            let given = MAX_TD_TRBS.min(total);
            let mut budget = given;
            let fetched = fetch_td(&mem, &mut cursor, control, &mut budget);
            total -= given - budget;
            match fetched {
                Ok(None) => return,
                Err(TdError::Ring(RingError::Budget { .. })) if given < MAX_TD_TRBS => return,
                Err(e) => {
                    crate::guest_warn!("xhci: slot {slot} endpoint {dci}: {e}");
                    let at = ep.cursor.addr;
                    // A TD that was read whole is consumed; a ring that could not be
                    // read stays where it was.
                    if !matches!(e, TdError::Ring(_)) {
                        ep.cursor = cursor;
                    }
                    self.halt_endpoint(slot, dci);
                    self.post_event(
                        0,
                        transfer_event(at, 0, CompletionCode::Trb, false, slot, dci),
                    );
                    return;
                }
                Ok(Some(td)) => {
                    ep.cursor = cursor;
                    self.start_td(slot, dci, td);
                }
            }
            if total == 0 {
                return;
            }
        }
    }

    fn start_td(&mut self, slot: u8, dci: u8, td: Td) {
        let Some(ep) = self.endpoint_mut(slot, dci) else {
            return;
        };
        let is_in = match td.setup {
            Some(s) => s.is_in(),
            None => ep.is_in(),
        };
        let kind = match (td.setup, ep.ep_type) {
            (Some(s), _) => Some(TransferKind::Control(s)),
            (None, ep_type::BULK_IN | ep_type::BULK_OUT) => Some(TransferKind::Bulk),
            (None, ep_type::INTERRUPT_IN | ep_type::INTERRUPT_OUT) => Some(TransferKind::Interrupt),
            (None, ep_type::ISOCH_IN | ep_type::ISOCH_OUT) => Some(TransferKind::Isochronous),
            (None, _) => None,
        };
        // No-Op and Event Data TRBs alone (a cancelled TD turned into No-Ops): no device.
        let Some(kind) = kind.filter(|_| td.setup.is_some() || td.buffers().next().is_some())
        else {
            self.finish_locally(slot, dci, td, TransferResult::data_out(0));
            return;
        };
        let (data, length) = if is_in {
            let room = td.total() as usize;
            let room = match td.setup {
                Some(s) => room.min(usize::from(s.length)),
                None => room,
            };
            (Vec::new(), room)
        } else {
            match td.gather(&self.mem) {
                Ok(d) => {
                    let n = d.len();
                    (d, n)
                }
                Err(e) => {
                    crate::guest_warn!("xhci: slot {slot} endpoint {dci}: {e}");
                    let at = td.first_addr();
                    self.halt_endpoint(slot, dci);
                    self.post_event(
                        0,
                        transfer_event(at, 0, CompletionCode::DataBuffer, false, slot, dci),
                    );
                    return;
                }
            }
        };
        let transfer = Transfer {
            endpoint: endpoint_address(dci),
            kind,
            data,
            length,
        };
        // The controller did SET_ADDRESS itself (Address Device): the device never sees it.
        let local = match td.setup {
            Some(s) if s.request == request::SET_ADDRESS && s.request_type == 0 => {
                Some(TransferResult::data_out(0))
            }
            _ => None,
        };
        let present = self.slot_device(slot).is_some();
        if local.is_some() || !present {
            let result =
                local.unwrap_or_else(|| TransferResult::failed(TransferStatus::Disconnected));
            self.finish_locally(slot, dci, td, result);
            return;
        }
        let (id, done) = self.completion_for(slot, dci);
        if let Some(ep) = self.endpoint_mut(slot, dci) {
            ep.pending.push_back(PendingTd {
                id,
                td,
                result: None,
            });
        }
        if let Some(dev) = self.slot_device(slot) {
            dev.submit(transfer, done);
        }
        // A device that answered inside `submit` has its result queued: apply it now.
        for (id, result) in self.queue.take() {
            self.complete(id, result);
        }
    }

    /// Queues a TD the controller answers itself, behind those in flight.
    fn finish_locally(&mut self, slot: u8, dci: u8, td: Td, result: TransferResult) {
        if let Some(ep) = self.endpoint_mut(slot, dci) {
            ep.pending.push_back(PendingTd {
                id: 0,
                td,
                result: Some(result),
            });
        }
        self.drain_endpoint(slot, dci);
    }

    /// Applies the result of transfer `id`, if the controller still waits for it.
    pub(crate) fn complete(&mut self, id: u64, result: TransferResult) {
        let Some((slot, dci)) = self.inflight.remove(&id) else {
            return;
        };
        let Some(ep) = self.endpoint_mut(slot, dci) else {
            return;
        };
        if let Some(p) = ep.pending.iter_mut().find(|p| p.id == id) {
            p.result = Some(result);
        }
        self.drain_endpoint(slot, dci);
    }

    /// Finishes the TDs at the head of the endpoint's queue that have results, in order.
    fn drain_endpoint(&mut self, slot: u8, dci: u8) {
        loop {
            let Some(ep) = self.endpoint_mut(slot, dci) else {
                return;
            };
            if ep.pending.front().is_none_or(|p| p.result.is_none()) {
                return;
            }
            let Some(PendingTd {
                td,
                result: Some(result),
                ..
            }) = ep.pending.pop_front()
            else {
                return;
            };
            self.finish_td(slot, dci, &td, result);
        }
    }

    fn finish_td(&mut self, slot: u8, dci: u8, td: &Td, result: TransferResult) {
        let mut code = error_code(result.status);
        let total = td.total();
        let is_in = match td.setup {
            Some(s) => s.is_in(),
            None => self.endpoint_mut(slot, dci).is_some_and(|e| e.is_in()),
        };
        let actual = if is_in {
            if result.data.len() as u64 > total && code.is_none() {
                code = Some(CompletionCode::Babble);
            }
            if code.is_none()
                && let Err(e) = td.scatter(&self.mem, &result.data)
            {
                crate::guest_warn!("xhci: slot {slot} endpoint {dci}: {e}");
                code = Some(CompletionCode::DataBuffer);
            }
            (result.data.len() as u64).min(total)
        } else {
            (result.actual as u64).min(total)
        };
        self.report(slot, dci, td, code, actual as u32);
        if code.is_some() {
            self.halt_endpoint(slot, dci);
        }
    }

    /// Posts the Transfer Events a finished TD asks for.
    fn report(&mut self, slot: u8, dci: u8, td: &Td, error: Option<CompletionCode>, actual: u32) {
        let mut left = actual;
        let mut edtla = 0u32;
        let mut reported = false;
        let mut short = false;
        for &(addr, trb) in &td.trbs {
            let t = trb.trb_type();
            let mut residual = 0;
            match t {
                trb_type::NORMAL | trb_type::DATA | trb_type::ISOCH => {
                    let len = trb.transfer_length();
                    let chunk = len.min(left);
                    if chunk < len && error.is_none() {
                        short = true;
                    }
                    left -= chunk;
                    edtla += chunk;
                    residual = len - chunk;
                }
                trb_type::STATUS => {
                    reported = false;
                    short = false;
                }
                _ => {}
            }
            let fire = !reported
                && (trb.has(TRB_IOC)
                    || (short && trb.has(TRB_ISP))
                    || (error.is_some() && left == 0 && t != trb_type::SETUP));
            if fire {
                let code = error.unwrap_or(if short {
                    CompletionCode::ShortPacket
                } else {
                    CompletionCode::Success
                });
                let event = if t == trb_type::EVENT_DATA {
                    transfer_event(trb.param, edtla, code, true, slot, dci)
                } else {
                    transfer_event(addr, residual, code, false, slot, dci)
                };
                self.post_event(trb.interrupter(), event);
                reported = true;
                if error.is_some() {
                    return;
                }
            }
            match t {
                trb_type::EVENT_DATA => edtla = 0,
                trb_type::SETUP => {
                    reported = false;
                    short = false;
                }
                _ => {}
            }
        }
        if let (Some(code), Some(&(addr, trb))) = (error, td.trbs.last()) {
            self.post_event(
                trb.interrupter(),
                transfer_event(addr, 0, code, false, slot, dci),
            );
        }
    }

    /// Drops the endpoint's TDs in flight: the device forgets them, their results will be
    /// ignored, and the ring goes back to the first of them. Returns the first one.
    pub(crate) fn cancel_endpoint(&mut self, slot: u8, dci: u8) -> Option<Td> {
        let ep = self.endpoint_mut(slot, dci)?;
        let pending = std::mem::take(&mut ep.pending);
        ep.waiting = false;
        let first = pending.front().map(|p| p.td.clone());
        if let Some(f) = &first {
            ep.cursor = f.start;
        }
        let any_inflight = pending.iter().any(|p| p.result.is_none());
        for p in &pending {
            self.inflight.remove(&p.id);
        }
        if any_inflight && let Some(dev) = self.slot_device(slot) {
            dev.cancel(endpoint_address(dci));
        }
        first
    }

    /// Halts an endpoint after an error; TDs behind the failed one are cancelled.
    pub(crate) fn halt_endpoint(&mut self, slot: u8, dci: u8) {
        self.cancel_endpoint(slot, dci);
        if let Some(ep) = self.endpoint_mut(slot, dci) {
            ep.state = EndpointState::Halted;
        }
        self.write_ep_context(slot, dci);
    }

    /// Writes the endpoint's state and dequeue pointer into the Output Device Context.
    pub(crate) fn write_ep_context(&mut self, slot: u8, dci: u8) {
        let Some(output) = self.slot(slot).map(|s| s.output).filter(|&o| o != 0) else {
            return;
        };
        let Some(ep) = self.endpoint_mut(slot, dci) else {
            return;
        };
        let (state, deq) = (ep.state, ep.dequeue());
        let at = device_context_addr(output, dci);
        let result = Context::read(&self.mem, at).and_then(|mut c| {
            c.set_ep_state(state);
            c.set_dequeue(deq.addr, deq.cycle);
            c.write(&self.mem, at)
        });
        if let Err(e) = result {
            crate::guest_warn!("xhci: slot {slot}: {e}");
        }
    }

    /// Ends every transfer of `slot` with a disconnect (its device was unplugged).
    pub(crate) fn fail_slot_transfers(&mut self, slot: u8) {
        for dci in 1..=31u8 {
            let ids: Vec<u64> = self.endpoint_mut(slot, dci).map_or(Vec::new(), |ep| {
                ep.pending
                    .iter()
                    .filter(|p| p.result.is_none())
                    .map(|p| p.id)
                    .collect()
            });
            for id in ids {
                self.complete(id, TransferResult::failed(TransferStatus::Disconnected));
            }
        }
    }

    /// Goes on with rings the in-flight limit stopped, now that results freed room.
    pub(crate) fn kick_waiting_endpoints(&mut self) {
        for slot in 1..=super::MAX_SLOTS {
            for dci in 1..=31u8 {
                let go = self
                    .endpoint_mut(slot, dci)
                    .is_some_and(|ep| ep.waiting && ep.pending.len() < MAX_INFLIGHT);
                if go {
                    if let Some(ep) = self.endpoint_mut(slot, dci) {
                        ep.waiting = false;
                    }
                    self.kick_endpoint(slot, dci);
                }
            }
        }
    }
}
