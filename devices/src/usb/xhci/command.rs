//! The command ring (xHCI 1.2 §4.6): slot and endpoint management.
//!
//! Data flow: a write to doorbell 0 runs [`Xhci::run_command_ring`], which reads command
//! TRBs until the ring is empty (cycle bit) and answers each one with a Command Completion
//! Event on interrupter 0, carrying the command TRB's address, a completion code and the
//! slot. Slot and endpoint state lives in the controller ([`super::Slot`],
//! [`super::transfer::Endpoint`]); commands read Input Contexts from guest memory and
//! write the results into the slot's Output Device Context, which the guest reads back.
//! SET_ADDRESS never reaches a device: Address Device assigns the address here.

use vm_memory::{Bytes, GuestAddress};

use super::context::{
    Context, EndpointState, SLOT_STATE_ADDRESSED, SLOT_STATE_CONFIGURED, SLOT_STATE_DEFAULT,
    SLOT_STATE_ENABLED, device_context_addr, input_context_addr,
};
use super::regs::{MAX_PORTS, MAX_SLOTS, USBSTS_HCE};
use super::transfer::Endpoint;
use super::trb::{
    CompletionCode, TRB_BSR, TRB_DECONFIGURE, Trb, command_completion_event, transfer_event,
    trb_type,
};
use super::{Slot, Xhci};

/// TRBs one command doorbell may read (a bound on Link TRB loops).
const COMMAND_TRB_BUDGET: u32 = 4096;

/// Free bandwidth Get Port Bandwidth reports per port, in percent.
const PORT_BANDWIDTH_FREE: u8 = 80;

type CommandResult = Result<u8, CompletionCode>;

impl Xhci {
    /// Runs the commands the guest has placed on the command ring.
    pub(crate) fn run_command_ring(&mut self) {
        let mem = self.mem.clone();
        let mut budget = COMMAND_TRB_BUDGET;
        while self.command_ring_running {
            let mut cursor = self.command_ring;
            match cursor.next(&mem, &mut budget) {
                Ok(None) => return,
                Ok(Some((addr, trb))) => {
                    self.command_ring = cursor;
                    let (code, slot) = match self.run_command(trb) {
                        Ok(slot) => (CompletionCode::Success, slot),
                        Err(code) => (code, trb.slot_id()),
                    };
                    self.post_event(0, command_completion_event(addr, code, slot));
                }
                Err(e) => {
                    crate::guest_warn!("xhci: command ring: {e}");
                    self.usbsts |= USBSTS_HCE;
                    self.command_ring_running = false;
                    return;
                }
            }
        }
    }

    fn run_command(&mut self, trb: Trb) -> CommandResult {
        let slot = trb.slot_id();
        match trb.trb_type() {
            trb_type::NOOP_COMMAND => Ok(0),
            trb_type::ENABLE_SLOT => self.enable_slot(),
            trb_type::DISABLE_SLOT => {
                self.check_slot(slot)?;
                self.disable_slot_state(slot);
                Ok(slot)
            }
            trb_type::ADDRESS_DEVICE => self.address_device(slot, trb),
            trb_type::CONFIGURE_ENDPOINT => self.configure_endpoint(slot, trb),
            trb_type::EVALUATE_CONTEXT => self.evaluate_context(slot, trb),
            trb_type::RESET_ENDPOINT => self.reset_endpoint(slot, trb.endpoint_id()),
            trb_type::STOP_ENDPOINT => self.stop_endpoint(slot, trb.endpoint_id()),
            trb_type::SET_TR_DEQUEUE => self.set_tr_dequeue(slot, trb),
            trb_type::RESET_DEVICE => self.reset_device(slot),
            trb_type::NEGOTIATE_BANDWIDTH => self.check_slot(slot).map(|()| slot),
            trb_type::GET_PORT_BANDWIDTH => self.port_bandwidth(trb.param & !0xf),
            other => {
                crate::guest_warn!("xhci: unknown command TRB type {other}");
                Err(CompletionCode::Trb)
            }
        }
    }

    fn check_slot(&self, slot: u8) -> Result<(), CompletionCode> {
        if slot == 0 || slot > MAX_SLOTS {
            return Err(CompletionCode::Trb);
        }
        if !self.slot(slot).is_some_and(|s| s.enabled) {
            return Err(CompletionCode::SlotNotEnabled);
        }
        Ok(())
    }

    fn enable_slot(&mut self) -> CommandResult {
        // CONFIG.MaxSlotsEn: how many slots the driver set up.
        let max = usize::from(self.max_slots_enabled());
        let index = self
            .slots
            .iter()
            .take(max)
            .position(|s| !s.enabled)
            .ok_or(CompletionCode::NoSlotsAvailable)?;
        self.slots[index] = Slot {
            enabled: true,
            state: SLOT_STATE_ENABLED,
            ..Slot::default()
        };
        Ok(index as u8 + 1)
    }

    /// Disables a slot: transfers cancelled, endpoints gone (also HCRST and reset).
    pub(crate) fn disable_slot_state(&mut self, slot: u8) {
        for dci in 1..=31 {
            self.cancel_endpoint(slot, dci);
        }
        if let Some(s) = self.slot_mut(slot) {
            *s = Slot::default();
        }
    }

    /// Get Port Bandwidth (xHCI 1.2 §4.6.15): a Port Bandwidth Context of one reserved
    /// byte and each port's free bandwidth in percent; as QEMU, 80 % everywhere.
    fn port_bandwidth(&mut self, addr: u64) -> CommandResult {
        let mut ctx = [PORT_BANDWIDTH_FREE; 1 + MAX_PORTS as usize];
        ctx[0] = 0;
        self.mem
            .write_slice(&ctx, GuestAddress(addr))
            .map_err(|_| CompletionCode::Trb)?;
        Ok(0)
    }

    fn read_ctx(&self, addr: u64) -> Result<Context, CompletionCode> {
        Context::read(&self.mem, addr).map_err(|e| {
            crate::guest_warn!("xhci: {e}");
            CompletionCode::Trb
        })
    }

    fn write_ctx(&self, ctx: &Context, addr: u64) {
        if let Err(e) = ctx.write(&self.mem, addr) {
            crate::guest_warn!("xhci: {e}");
        }
    }

    fn address_device(&mut self, slot: u8, trb: Trb) -> CommandResult {
        self.check_slot(slot)?;
        let bsr = trb.has(TRB_BSR);
        let state = self.slot(slot).map_or(SLOT_STATE_ENABLED, |s| s.state);
        if !(state == SLOT_STATE_ENABLED || (state == SLOT_STATE_DEFAULT && !bsr)) {
            return Err(CompletionCode::ContextState);
        }
        let input = trb.param & !0xf;
        let icc = self.read_ctx(input)?;
        if icc.add_flags() & 3 != 3 {
            return Err(CompletionCode::Trb);
        }
        let mut slot_ctx = self.read_ctx(input_context_addr(input, 1))?;
        let mut ep0 = self.read_ctx(input_context_addr(input, 2))?;
        let port = slot_ctx.root_port();
        if port == 0 || port > MAX_PORTS {
            return Err(CompletionCode::Trb);
        }
        let present = self
            .ports
            .get(usize::from(port) - 1)
            .is_some_and(|p| p.device.is_some());
        if !present {
            return Err(CompletionCode::UsbTransaction);
        }
        let dcbaa_entry = self.dcbaap.wrapping_add(8 * u64::from(slot));
        let output: u64 = self
            .mem
            .read_obj(GuestAddress(dcbaa_entry))
            .map_err(|_| CompletionCode::Trb)?;
        let output = output & !0x3f;
        let address = if bsr { 0 } else { slot };
        let new_state = if bsr {
            SLOT_STATE_DEFAULT
        } else {
            SLOT_STATE_ADDRESSED
        };
        slot_ctx.set_slot_state(new_state, address);
        ep0.set_ep_state(EndpointState::Running);
        self.cancel_endpoint(slot, 1);
        self.write_ctx(&slot_ctx, device_context_addr(output, 0));
        self.write_ctx(&ep0, device_context_addr(output, 1));
        let ep = Endpoint::from_context(&ep0);
        if let Some(s) = self.slot_mut(slot) {
            s.state = new_state;
            s.port = port;
            s.address = address;
            s.output = output;
            s.endpoints[0] = Some(ep);
        }
        Ok(slot)
    }

    /// Takes endpoint `dci` away (Configure Endpoint drop, deconfigure, Reset Device).
    fn drop_endpoint(&mut self, slot: u8, dci: u8) {
        self.cancel_endpoint(slot, dci);
        let Some(s) = self.slot_mut(slot) else {
            return;
        };
        let Some(entry) = s.endpoints.get_mut(usize::from(dci) - 1) else {
            return;
        };
        if entry.take().is_none() {
            return;
        }
        let at = device_context_addr(s.output, dci);
        if let Ok(mut c) = self.read_ctx(at) {
            c.set_ep_state(EndpointState::Disabled);
            self.write_ctx(&c, at);
        }
    }

    fn set_slot_state(&mut self, slot: u8, state: u32, entries: Option<u32>) {
        let Some(s) = self.slot_mut(slot) else {
            return;
        };
        s.state = state;
        let (output, address) = (s.output, s.address);
        let at = device_context_addr(output, 0);
        if let Ok(mut c) = self.read_ctx(at) {
            c.set_slot_state(state, address);
            if let Some(n) = entries {
                c.set_context_entries(n);
            }
            self.write_ctx(&c, at);
        }
    }

    fn configured_endpoints(&self, slot: u8) -> bool {
        self.slot(slot)
            .is_some_and(|s| s.endpoints.iter().skip(1).any(Option::is_some))
    }

    fn configure_endpoint(&mut self, slot: u8, trb: Trb) -> CommandResult {
        self.check_slot(slot)?;
        let state = self.slot(slot).map_or(SLOT_STATE_ENABLED, |s| s.state);
        if state != SLOT_STATE_ADDRESSED && state != SLOT_STATE_CONFIGURED {
            return Err(CompletionCode::ContextState);
        }
        if trb.has(TRB_DECONFIGURE) {
            for dci in 2..=31 {
                self.drop_endpoint(slot, dci);
            }
            self.set_slot_state(slot, SLOT_STATE_ADDRESSED, None);
            return Ok(slot);
        }
        let input = trb.param & !0xf;
        let icc = self.read_ctx(input)?;
        let (drop, add) = (icc.drop_flags() & !3, icc.add_flags() & !3);
        // Read and check every added context before changing anything.
        let mut added = Vec::new();
        for dci in 2..=31u8 {
            if add & 1 << dci != 0 {
                let ctx = self.read_ctx(input_context_addr(input, dci + 1))?;
                if ctx.ep_type() == 0 {
                    return Err(CompletionCode::Parameter);
                }
                added.push((dci, ctx));
            }
        }
        let entries = if icc.add_flags() & 1 != 0 {
            Some(
                self.read_ctx(input_context_addr(input, 1))?
                    .context_entries(),
            )
        } else {
            None
        };
        for dci in 2..=31u8 {
            if drop & 1 << dci != 0 {
                self.drop_endpoint(slot, dci);
            }
        }
        for (dci, mut ctx) in added {
            self.drop_endpoint(slot, dci);
            ctx.set_ep_state(EndpointState::Running);
            let output = self.slot(slot).map_or(0, |s| s.output);
            self.write_ctx(&ctx, device_context_addr(output, dci));
            if let Some(s) = self.slot_mut(slot) {
                s.endpoints[usize::from(dci) - 1] = Some(Endpoint::from_context(&ctx));
            }
        }
        let state = if self.configured_endpoints(slot) {
            SLOT_STATE_CONFIGURED
        } else {
            SLOT_STATE_ADDRESSED
        };
        self.set_slot_state(slot, state, entries);
        Ok(slot)
    }

    fn evaluate_context(&mut self, slot: u8, trb: Trb) -> CommandResult {
        self.check_slot(slot)?;
        let Some(output) = self
            .slot(slot)
            .filter(|s| s.state != SLOT_STATE_ENABLED)
            .map(|s| s.output)
        else {
            return Err(CompletionCode::ContextState);
        };
        let input = trb.param & !0xf;
        let icc = self.read_ctx(input)?;
        if icc.add_flags() & 1 != 0 {
            let new = self.read_ctx(input_context_addr(input, 1))?;
            let at = device_context_addr(output, 0);
            let mut out = self.read_ctx(at)?;
            // Interrupter Target and Max Exit Latency (xHCI 1.2 §6.2.2.3).
            out.0[2] = (out.0[2] & 0x003f_ffff) | (new.0[2] & !0x003f_ffff);
            out.0[1] = (out.0[1] & !0xffff) | (new.0[1] & 0xffff);
            self.write_ctx(&out, at);
        }
        if icc.add_flags() & 2 != 0 {
            let new = self.read_ctx(input_context_addr(input, 2))?;
            let at = device_context_addr(output, 1);
            let mut out = self.read_ctx(at)?;
            out.set_max_packet_size(new.max_packet_size());
            self.write_ctx(&out, at);
            if let Some(ep) = self.endpoint_mut(slot, 1) {
                ep.max_packet = new.max_packet_size();
            }
        }
        Ok(slot)
    }

    fn endpoint_state(&mut self, slot: u8, dci: u8) -> Result<EndpointState, CompletionCode> {
        self.check_slot(slot)?;
        if dci == 0 {
            return Err(CompletionCode::Trb);
        }
        self.endpoint_mut(slot, dci)
            .map(|e| e.state)
            .ok_or(CompletionCode::EndpointNotEnabled)
    }

    fn set_endpoint_state(&mut self, slot: u8, dci: u8, state: EndpointState) {
        if let Some(ep) = self.endpoint_mut(slot, dci) {
            ep.state = state;
        }
        self.write_ep_context(slot, dci);
    }

    fn reset_endpoint(&mut self, slot: u8, dci: u8) -> CommandResult {
        if self.endpoint_state(slot, dci)? != EndpointState::Halted {
            return Err(CompletionCode::ContextState);
        }
        self.set_endpoint_state(slot, dci, EndpointState::Stopped);
        Ok(slot)
    }

    fn stop_endpoint(&mut self, slot: u8, dci: u8) -> CommandResult {
        if self.endpoint_state(slot, dci)? != EndpointState::Running {
            return Err(CompletionCode::ContextState);
        }
        if let Some(td) = self.cancel_endpoint(slot, dci) {
            let at = td.trbs.first().map_or(td.start.addr, |(a, _)| *a);
            let target = td.trbs.first().map_or(0, |(_, t)| t.interrupter());
            self.post_event(
                target,
                transfer_event(
                    at,
                    0,
                    CompletionCode::StoppedLengthInvalid,
                    false,
                    slot,
                    dci,
                ),
            );
        }
        self.set_endpoint_state(slot, dci, EndpointState::Stopped);
        Ok(slot)
    }

    fn set_tr_dequeue(&mut self, slot: u8, trb: Trb) -> CommandResult {
        let dci = trb.endpoint_id();
        let state = self.endpoint_state(slot, dci)?;
        if state != EndpointState::Stopped && state != EndpointState::Error {
            return Err(CompletionCode::ContextState);
        }
        if let Some(ep) = self.endpoint_mut(slot, dci) {
            ep.cursor = super::ring::RingCursor::new(trb.param & !0xf, trb.param & 1 != 0);
        }
        self.write_ep_context(slot, dci);
        Ok(slot)
    }

    fn reset_device(&mut self, slot: u8) -> CommandResult {
        self.check_slot(slot)?;
        let state = self.slot(slot).map_or(SLOT_STATE_ENABLED, |s| s.state);
        if state != SLOT_STATE_ADDRESSED && state != SLOT_STATE_CONFIGURED {
            return Err(CompletionCode::ContextState);
        }
        for dci in 2..=31 {
            self.drop_endpoint(slot, dci);
        }
        self.cancel_endpoint(slot, 1);
        if let Some(s) = self.slot_mut(slot) {
            s.address = 0;
        }
        self.set_slot_state(slot, SLOT_STATE_DEFAULT, Some(1));
        Ok(slot)
    }
}
