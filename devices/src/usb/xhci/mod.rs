//! xHCI USB host controller (xHCI 1.2), PCI 1b36:000d as QEMU's "qemu-xhci", class
//! 0C/03/30: the controller Linux (`xhci_pci`) and Windows 10+ (`USBXHCI`) drive with
//! inbox drivers. Four USB 3 root ports (1-4) and four USB 2 ports (5-8), as QEMU lays
//! them out; 64 device slots; 16 interrupters, one MSI-X vector each, INTx for
//! interrupter 0 when MSI-X is off.
//!
//! Data flow: every register lives in BAR0 ([`regs`]); [`Xhci`] is its [`BusDevice`] and
//! the [`PciDevice`]. The guest builds a DCBAA, a command ring and an event ring (ERST) in
//! its RAM and writes their addresses; a doorbell write runs the work synchronously on
//! the vCPU thread of that write: doorbell 0 walks the command ring ([`command`]) and
//! answers each command with a Command Completion Event; doorbell `n` walks the transfer
//! ring of endpoint DCI `target` of slot `n` ([`transfer`]), turns each transfer
//! descriptor (TD) into one [`Transfer`](crate::usb::Transfer) and submits it to the
//! port's [`UsbDevice`](crate::usb::UsbDevice). The device answers through a
//! [`Completion`](crate::usb::Completion) that only pushes `(id, result)` onto a queue
//! ([`CompletionWaiter`] waits on it) — inside `submit` or later from any thread. The
//! controller drains that queue at the end of every MMIO access and when the helper's
//! worker calls [`Xhci::process_completions`]: IN data is scattered into the TD's buffers,
//! Transfer Events are written to the interrupter's event ring ([`ring`]), and the
//! interrupter fires (MSI-X through [`MsixState`], or INTx through
//! [`IrqLine::set_level`]). Results of transfers the guest cancelled meanwhile (Stop
//! Endpoint, a disabled slot, a reset) carry an id the controller no longer knows and are
//! dropped.
//!
//! Lock order: the controller's lock (the `Mutex<Xhci>` the helper holds around any
//! call) comes first; the completion queue's lock is taken inside it and only for a
//! moment. A device never takes the controller's lock: completing only takes the queue's.
//! The worker waits on [`CompletionWaiter::wait`] holding no lock, then locks the
//! controller and calls [`Xhci::process_completions`].
//!
//! Hostile input (rings or contexts outside RAM, Link TRB loops, impossible lengths,
//! doorbells for slots that do not exist) ends the request it belongs to with an error
//! completion code and a `guest_warn!`, never a panic.

pub mod command;
pub mod context;
pub mod port;
pub mod regs;
pub mod ring;
mod state;
pub mod transfer;
pub mod trb;

#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use self::port::Port;
use self::regs::*;
use self::ring::{EventRing, RingCursor, RingError};
use self::transfer::Endpoint;
use self::trb::{Trb, port_status_change_event};
use crate::bus::{BusDevice, lock};
use crate::legacy::IrqLine;
use crate::pci::config::BarChange;
use crate::pci::{
    BarKind, MsiRoutes, MsixInterrupt, MsixState, PciConfig, PciDevice, PciError, PciIds,
};
use crate::usb::{TransferResult, UsbDevice, UsbSpeed};

/// PCI identity: Red Hat's qemu-xhci.
pub const VENDOR_ID: u16 = 0x1b36;
pub const DEVICE_ID: u16 = 0x000d;
const REVISION: u8 = 0x01;
/// Class 0C (serial bus), subclass 03 (USB), interface 30 (xHCI).
const CLASS: u8 = 0x0c;
const SUBCLASS: u8 = 0x03;
const PROG_IF: u8 = 0x30;
const SUBSYSTEM_VENDOR: u16 = 0x1af4;
const SUBSYSTEM: u16 = 0x1100;
/// Interrupt pin register value for INTA#.
const INTERRUPT_PIN_A: u8 = 1;
/// PCI command register: INTx disable.
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// xHCI 1.2 §5.2.3-4: SBRN (0x60, USB 3.0 = 0x30) and FLADJ (0x61, default 0x20).
const REG_SBRN_FLADJ: usize = 0x60 / 4;
const SBRN_FLADJ: u32 = 0x30 | 0x20 << 8;

/// Errors of the controller's host-side API.
#[derive(Debug, thiserror::Error)]
pub enum XhciError {
    #[error("PCI setup failed")]
    Pci(#[from] PciError),
    #[error("no free {kind} root port")]
    NoFreePort { kind: &'static str },
}

/// How the controller raises interrupts.
pub struct XhciInterrupts {
    /// MSI-X vector `n` is interrupter `n`.
    pub msix: Arc<dyn MsixInterrupt>,
    /// Told about every MSI-X table change.
    pub routes: Arc<dyn MsiRoutes>,
    /// INTA#, level-triggered, used while MSI-X is off.
    pub intx: Arc<dyn IrqLine>,
}

/// Results devices have handed back, not yet applied.
struct QueueState {
    results: VecDeque<(u64, TransferResult)>,
    stopped: bool,
}

struct CompletionQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

impl CompletionQueue {
    fn push(&self, id: u64, result: TransferResult) {
        lock(&self.state).results.push_back((id, result));
        self.ready.notify_all();
    }

    fn take(&self) -> VecDeque<(u64, TransferResult)> {
        std::mem::take(&mut lock(&self.state).results)
    }
}

/// The worker's handle: waits, holding no lock, until devices have queued results.
#[derive(Clone)]
pub struct CompletionWaiter {
    queue: Arc<CompletionQueue>,
}

impl CompletionWaiter {
    /// Blocks until results are queued (true) or [`CompletionWaiter::stop`] was called
    /// (false). Then lock the controller and call [`Xhci::process_completions`].
    pub fn wait(&self) -> bool {
        self.wait_until(None)
    }

    /// As [`CompletionWaiter::wait`], giving up after `timeout` (false, as when stopped).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut st = lock(&self.queue.state);
        loop {
            if st.stopped {
                return false;
            }
            if !st.results.is_empty() {
                return true;
            }
            st = match deadline {
                None => self.queue.ready.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    match self.queue.ready.wait_timeout(st, left) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    }
                }
            };
        }
    }

    /// Wakes every waiter for good (the machine is shutting down).
    pub fn stop(&self) {
        lock(&self.queue.state).stopped = true;
        self.queue.ready.notify_all();
    }
}

/// One interrupter's registers and event ring.
#[derive(Debug, Default)]
struct Interrupter {
    iman: u32,
    imod: u32,
    /// ERDP's low flag bits: DESI and EHB.
    erdp_flags: u64,
    ring: EventRing,
}

/// One device slot.
#[derive(Default)]
pub(crate) struct Slot {
    pub enabled: bool,
    /// Slot Context state (context::SLOT_STATE_*).
    pub state: u32,
    /// Root hub port, 1-based; 0 before Address Device.
    pub port: u8,
    pub address: u8,
    /// The Output Device Context (from the DCBAA at Address Device).
    pub output: u64,
    /// Endpoints by DCI - 1.
    pub endpoints: [Option<Endpoint>; 31],
}

/// The xHCI controller.
pub struct Xhci {
    config: PciConfig,
    msix_cap: usize,
    msix: MsixState,
    intx: Arc<dyn IrqLine>,
    intx_level: bool,
    pub(crate) mem: GuestMemoryMmap,
    usbcmd: u32,
    usbsts: u32,
    dnctrl: u32,
    config_reg: u32,
    pub(crate) command_ring: RingCursor,
    command_ring_running: bool,
    pub(crate) dcbaap: u64,
    interrupters: Vec<Interrupter>,
    pub(crate) ports: Vec<Port>,
    /// Slots 1..=MAX_SLOTS at index slot - 1.
    pub(crate) slots: Vec<Slot>,
    run_start: Option<Instant>,
    queue: Arc<CompletionQueue>,
    next_id: u64,
    /// Transfers handed to devices: id -> (slot, DCI).
    pub(crate) inflight: HashMap<u64, (u8, u8)>,
    /// Saved for a VM's save: nothing more reaches guest memory (see [`state`]).
    frozen: bool,
}

impl Xhci {
    /// A halted controller with empty ports, reaching guest RAM through `mem`.
    pub fn new(mem: GuestMemoryMmap, interrupts: XhciInterrupts) -> Result<Xhci, XhciError> {
        let mut config = PciConfig::new(PciIds {
            vendor: VENDOR_ID,
            device: DEVICE_ID,
            revision: REVISION,
            class: CLASS,
            subclass: SUBCLASS,
            prog_if: PROG_IF,
            subsystem_vendor: SUBSYSTEM_VENDOR,
            subsystem: SUBSYSTEM,
        });
        config.add_bar(0, BAR_SIZE, BarKind::Mem64, false)?;
        config.set_interrupt_pin(INTERRUPT_PIN_A);
        let msix_cap = MsixState::add_capability(
            &mut config,
            MAX_INTRS,
            0,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
        )?;
        let ports = (1..=MAX_PORTS)
            .map(|n| Port::new((USB3_FIRST_PORT..USB3_FIRST_PORT + USB3_PORTS).contains(&n)))
            .collect();
        let mut x = Xhci {
            config,
            msix_cap,
            msix: MsixState::new(MAX_INTRS, interrupts.msix, interrupts.routes),
            intx: interrupts.intx,
            intx_level: false,
            mem,
            usbcmd: 0,
            usbsts: USBSTS_HCH,
            dnctrl: 0,
            config_reg: 0,
            command_ring: RingCursor::default(),
            command_ring_running: false,
            dcbaap: 0,
            interrupters: (0..MAX_INTRS).map(|_| Interrupter::default()).collect(),
            ports,
            slots: (0..MAX_SLOTS).map(|_| Slot::default()).collect(),
            run_start: None,
            queue: Arc::new(CompletionQueue {
                state: Mutex::new(QueueState {
                    results: VecDeque::new(),
                    stopped: false,
                }),
                ready: Condvar::new(),
            }),
            next_id: 1,
            inflight: HashMap::new(),
            frozen: false,
        };
        x.reset_controller();
        Ok(x)
    }

    /// The handle the helper's worker waits on (see the module's lock order).
    pub fn completion_waiter(&self) -> CompletionWaiter {
        CompletionWaiter {
            queue: self.queue.clone(),
        }
    }

    /// Applies every result devices have queued: data into guest memory, Transfer
    /// Events, interrupts; then goes on with transfer rings that waited for room.
    pub fn process_completions(&mut self) {
        if self.frozen {
            return;
        }
        for _ in 0..64 {
            let results = self.queue.take();
            if results.is_empty() {
                break;
            }
            for (id, result) in results {
                self.complete(id, result);
            }
            self.kick_waiting_endpoints();
        }
        self.update_intx();
    }

    /// A sender devices' completions use: queues `(id, result)` and wakes the worker.
    pub(crate) fn completion_for(&mut self, slot: u8, dci: u8) -> (u64, crate::usb::Completion) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.inflight.insert(id, (slot, dci));
        let queue = self.queue.clone();
        (id, crate::usb::Completion::new(move |r| queue.push(id, r)))
    }

    /// Back to power-on state (a machine reset; HCRST does the same). Devices stay
    /// plugged in; every slot is disabled and pending transfers are cancelled.
    pub fn reset(&mut self) {
        self.reset_controller();
        // The table goes back to power-on state; Enable and Function Mask stay what
        // configuration space says.
        self.msix.reset();
        self.msix.sync_control(&self.config, self.msix_cap);
        self.update_intx();
    }

    fn reset_controller(&mut self) {
        for slot in 1..=MAX_SLOTS {
            self.disable_slot_state(slot);
        }
        self.inflight.clear();
        self.queue.take();
        self.usbcmd = 0;
        self.usbsts = USBSTS_HCH;
        self.dnctrl = 0;
        self.config_reg = 0;
        self.command_ring = RingCursor::default();
        self.command_ring_running = false;
        self.dcbaap = 0;
        self.run_start = None;
        for i in &mut self.interrupters {
            *i = Interrupter::default();
            i.ring.restart();
        }
        for p in &mut self.ports {
            p.power_on();
        }
        self.update_intx();
    }

    /// Plugs `device` into a free root port of its kind (USB 3 for SuperSpeed devices, USB
    /// 2 otherwise) and tells a running guest. Returns the 1-based port number.
    pub fn attach(&mut self, device: Box<dyn UsbDevice>) -> Result<u8, XhciError> {
        let usb3 = device.speed() == UsbSpeed::Super;
        let Some(index) = self
            .ports
            .iter()
            .position(|p| p.usb3 == usb3 && p.device.is_none())
        else {
            return Err(XhciError::NoFreePort {
                kind: if usb3 { "USB 3" } else { "USB 2" },
            });
        };
        let port = &mut self.ports[index];
        port.device = Some(device);
        let notify = port.update_connection();
        let number = index as u8 + 1;
        if notify {
            self.port_changed(number);
        }
        self.update_intx();
        Ok(number)
    }

    /// Unplugs the device in 1-based `port`: its transfers end with errors, the guest sees
    /// a Connect Status Change and disables the slot itself.
    pub fn detach(&mut self, port: u8) -> Option<Box<dyn UsbDevice>> {
        let index = usize::from(port).checked_sub(1)?;
        let (dev, notify) = self.ports.get_mut(index)?.unplug();
        dev.as_ref()?;
        for slot in 1..=MAX_SLOTS {
            if self.slot(slot).is_some_and(|s| s.enabled && s.port == port) {
                self.fail_slot_transfers(slot);
            }
        }
        if notify {
            self.port_changed(port);
        }
        self.update_intx();
        dev
    }

    /// The occupied ports: 1-based number and device, for listings.
    pub fn ports(&self) -> impl Iterator<Item = (u8, &dyn UsbDevice)> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.device.as_deref().map(|d| (i as u8 + 1, d)))
    }

    /// CONFIG.MaxSlotsEn, bounded by MaxSlots.
    pub(crate) fn max_slots_enabled(&self) -> u8 {
        (self.config_reg as u8).min(MAX_SLOTS)
    }

    pub(crate) fn running(&self) -> bool {
        self.usbcmd & USBCMD_RS != 0
    }

    pub(crate) fn slot(&self, slot: u8) -> Option<&Slot> {
        self.slots.get(usize::from(slot).checked_sub(1)?)
    }

    pub(crate) fn slot_mut(&mut self, slot: u8) -> Option<&mut Slot> {
        self.slots.get_mut(usize::from(slot).checked_sub(1)?)
    }

    /// The device behind `slot`'s port.
    pub(crate) fn slot_device(&mut self, slot: u8) -> Option<&mut Box<dyn UsbDevice>> {
        let port = self.slot(slot)?.port;
        self.ports
            .get_mut(usize::from(port).checked_sub(1)?)?
            .device
            .as_mut()
    }

    fn port_changed(&mut self, port: u8) {
        self.usbsts |= USBSTS_PCD;
        if self.running() {
            self.post_event(0, port_status_change_event(port));
        }
    }

    /// Writes `event` to interrupter `target`'s event ring and raises it.
    pub(crate) fn post_event(&mut self, target: u16, event: Trb) {
        let v = if target < MAX_INTRS { target } else { 0 };
        let Some(intr) = self.interrupters.get_mut(usize::from(v)) else {
            return;
        };
        match intr.ring.push(&self.mem, event) {
            Ok(()) | Err(RingError::EventRingFull) => {}
            Err(e) => {
                crate::guest_warn!("xhci: event lost on interrupter {v}: {e}");
                return;
            }
        }
        self.raise(v);
    }

    /// Marks interrupter `v` pending and fires it unless its handler is still busy.
    fn raise(&mut self, v: u16) {
        let Some(intr) = self.interrupters.get_mut(usize::from(v)) else {
            return;
        };
        let busy = intr.erdp_flags & ERDP_EHB != 0;
        intr.erdp_flags |= ERDP_EHB;
        intr.iman |= IMAN_IP;
        self.usbsts |= USBSTS_EINT;
        if busy || intr.iman & IMAN_IE == 0 || self.usbcmd & USBCMD_INTE == 0 {
            self.update_intx();
            return;
        }
        if self.msix.enabled() {
            self.msix.signal(v);
        }
        self.update_intx();
    }

    /// INTA# follows interrupter 0 while MSI-X is off and INTx is not disabled.
    fn update_intx(&mut self) {
        let level = !self.msix.enabled()
            && self.config.command() & PCI_COMMAND_INTX_DISABLE == 0
            && self.usbcmd & USBCMD_INTE != 0
            && self
                .interrupters
                .first()
                .is_some_and(|i| i.iman & (IMAN_IP | IMAN_IE) == IMAN_IP | IMAN_IE);
        if level != self.intx_level {
            self.intx_level = level;
            self.intx.set_level(level);
        }
    }

    fn mfindex(&self) -> u32 {
        self.run_start.map_or(0, |t| {
            (t.elapsed().as_nanos() / MICROFRAME_NS) as u32 & MFINDEX_MASK
        })
    }

    fn read_operational(&self, offset: u64) -> u32 {
        match offset {
            USBCMD => self.usbcmd,
            USBSTS => self.usbsts,
            PAGESIZE => PAGESIZE_4K,
            DNCTRL => self.dnctrl,
            // CRCR reads zero but for Command Ring Running (xHCI 1.2 §5.4.5).
            CRCR_LO => u32::from(self.command_ring_running) * CRCR_CRR as u32,
            DCBAAP_LO => self.dcbaap as u32,
            DCBAAP_HI => (self.dcbaap >> 32) as u32,
            CONFIG => self.config_reg,
            o if o >= PORT_BASE => {
                let index = ((o - PORT_BASE) / PORT_STRIDE) as usize;
                self.ports.get(index).map_or(0, |p| match o % PORT_STRIDE {
                    0x0 => p.portsc(),
                    0x4 => p.pmsc,
                    0x8 => p.li,
                    _ => p.hlpmc,
                })
            }
            _ => 0,
        }
    }

    fn write_operational(&mut self, offset: u64, val: u32) {
        match offset {
            USBCMD => self.write_usbcmd(val),
            USBSTS => self.usbsts &= !(val & USBSTS_W1C),
            DNCTRL => self.dnctrl = val & 0xffff,
            CRCR_LO => self.write_crcr(val, false),
            CRCR_HI => self.write_crcr(val, true),
            DCBAAP_LO => self.dcbaap = (self.dcbaap & !0xffff_ffff) | u64::from(val & !0x3f),
            DCBAAP_HI => self.dcbaap = (self.dcbaap & 0xffff_ffff) | u64::from(val) << 32,
            CONFIG => self.config_reg = val & 0x3ff,
            o if o >= PORT_BASE => {
                let index = ((o - PORT_BASE) / PORT_STRIDE) as usize;
                let Some(p) = self.ports.get_mut(index) else {
                    return;
                };
                match o % PORT_STRIDE {
                    0x0 => {
                        if p.write_portsc(val) {
                            self.port_changed(index as u8 + 1);
                        }
                    }
                    0x4 => p.pmsc = val,
                    0x8 => {}
                    _ => p.hlpmc = val,
                }
            }
            _ => crate::guest_warn!("xhci: write to operational register {offset:#x} ignored"),
        }
    }

    fn write_usbcmd(&mut self, val: u32) {
        if val & USBCMD_HCRST != 0 {
            self.reset_controller();
            return;
        }
        let was_running = self.running();
        self.usbcmd = val & USBCMD_STORED;
        if val & (USBCMD_CSS | USBCMD_CRS) != 0 {
            // Save and restore state complete at once; nothing is saved.
            self.usbsts &= !(USBSTS_SRE);
        }
        match (was_running, self.running()) {
            (false, true) => {
                self.usbsts &= !USBSTS_HCH;
                self.run_start = Some(Instant::now());
            }
            (true, false) => {
                self.usbsts |= USBSTS_HCH;
                self.command_ring_running = false;
                self.run_start = None;
            }
            _ => {}
        }
        self.update_intx();
    }

    fn write_crcr(&mut self, val: u32, high: bool) {
        if self.command_ring_running {
            // Only Command Stop and Command Abort act while the ring runs.
            if !high && u64::from(val) & (CRCR_CS | CRCR_CA) != 0 {
                self.command_ring_running = false;
                let at = self.command_ring.addr;
                self.post_event(
                    0,
                    trb::command_completion_event(at, trb::CompletionCode::CommandRingStopped, 0),
                );
            }
            return;
        }
        let addr = self.command_ring.addr;
        self.command_ring = if high {
            RingCursor::new(
                (addr & 0xffff_ffff) | u64::from(val) << 32,
                self.command_ring.cycle,
            )
        } else {
            RingCursor::new(
                (addr & !0xffff_ffff) | u64::from(val & !0x3f),
                u64::from(val) & CRCR_RCS != 0,
            )
        };
    }

    fn interrupter_mut(&mut self, offset: u64) -> Option<(u16, u64, &mut Interrupter)> {
        let rel = offset.checked_sub(INTERRUPTER_BASE)?;
        let v = (rel / INTERRUPTER_STRIDE) as u16;
        let intr = self.interrupters.get_mut(usize::from(v))?;
        Some((v, rel % INTERRUPTER_STRIDE, intr))
    }

    fn read_runtime(&mut self, offset: u64) -> u32 {
        if offset == MFINDEX {
            return self.mfindex();
        }
        let Some((_, reg, i)) = self.interrupter_mut(offset) else {
            return 0;
        };
        match reg {
            IMAN => i.iman,
            IMOD => i.imod,
            ERSTSZ => i.ring.erst_size,
            ERSTBA_LO => i.ring.erst_base as u32,
            ERSTBA_HI => (i.ring.erst_base >> 32) as u32,
            ERDP_LO => (i.ring.dequeue | i.erdp_flags) as u32,
            ERDP_HI => (i.ring.dequeue >> 32) as u32,
            _ => 0,
        }
    }

    fn write_runtime(&mut self, offset: u64, val: u32) {
        let Some((v, reg, i)) = self.interrupter_mut(offset) else {
            return;
        };
        let v64 = u64::from(val);
        match reg {
            IMAN => {
                if val & IMAN_IP != 0 {
                    i.iman &= !IMAN_IP;
                }
                i.iman = (i.iman & IMAN_IP) | (val & IMAN_IE);
            }
            IMOD => i.imod = val,
            ERSTSZ => i.ring.erst_size = val & 0xffff,
            ERSTBA_LO => {
                i.ring.erst_base = (i.ring.erst_base & !0xffff_ffff) | (v64 & !0x3f);
                i.ring.restart();
            }
            ERSTBA_HI => {
                i.ring.erst_base = (i.ring.erst_base & 0xffff_ffff) | v64 << 32;
                i.ring.restart();
            }
            ERDP_LO => {
                let deq = (i.ring.dequeue & !0xffff_ffff) | (v64 & !0xf);
                i.ring.set_dequeue(deq);
                i.erdp_flags = (i.erdp_flags & ERDP_EHB) | (v64 & ERDP_DESI);
                if v64 & ERDP_EHB != 0 {
                    i.erdp_flags &= !ERDP_EHB;
                    // Events written since the handler's last look interrupt again.
                    if i.ring.enqueue_address().is_some_and(|e| e != deq) {
                        self.raise(v);
                    }
                }
            }
            ERDP_HI => {
                let deq = (i.ring.dequeue & 0xffff_ffff) | v64 << 32;
                i.ring.set_dequeue(deq);
            }
            _ => {}
        }
        self.update_intx();
    }

    fn write_doorbell(&mut self, index: u64, val: u32) {
        if !self.running() {
            crate::guest_warn!("xhci: doorbell {index} rung while halted");
            return;
        }
        let target = (val & 0xff) as u8;
        if index == 0 {
            if target == 0 {
                self.command_ring_running = true;
                self.run_command_ring();
            }
            return;
        }
        match u8::try_from(index) {
            Ok(slot) if slot <= MAX_SLOTS => self.ring_endpoint(slot, target),
            _ => crate::guest_warn!("xhci: doorbell {index} past the slots"),
        }
    }

    fn read_dword(&mut self, offset: u64) -> u32 {
        match offset {
            o if o < CAP_LENGTH => capability(o),
            o if o < RUNTIME_OFFSET => self.read_operational(o - CAP_LENGTH),
            o if o < DOORBELL_OFFSET => self.read_runtime(o - RUNTIME_OFFSET),
            // Doorbells read as zero.
            _ => 0,
        }
    }

    fn write_dword(&mut self, offset: u64, val: u32) {
        match offset {
            o if o < CAP_LENGTH => {}
            o if o < RUNTIME_OFFSET => self.write_operational(o - CAP_LENGTH, val),
            o if o < DOORBELL_OFFSET => self.write_runtime(o - RUNTIME_OFFSET, val),
            o if o < MSIX_TABLE_OFFSET => self.write_doorbell((o - DOORBELL_OFFSET) / 4, val),
            _ => {}
        }
    }

    fn sync_msix(&mut self) {
        self.msix.sync_control(&self.config, self.msix_cap);
        self.update_intx();
    }
}

impl PciDevice for Xhci {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == REG_SBRN_FLADJ {
            return SBRN_FLADJ;
        }
        self.config.read_reg(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarChange> {
        let changes = self.config.write_reg(reg, offset, data);
        if reg == self.msix_cap / 4 {
            self.sync_msix();
        }
        // INTx disable may have changed.
        self.update_intx();
        changes
    }
}

impl BusDevice for Xhci {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&offset) {
            self.msix.read_table(offset - MSIX_TABLE_OFFSET, data);
            return;
        }
        if offset >= MSIX_PBA_OFFSET {
            self.msix.read_pba(offset - MSIX_PBA_OFFSET, data);
            return;
        }
        // Registers are dwords; other widths take the bytes of the dwords they cover.
        let mut cached: Option<(u64, u32)> = None;
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            let dword = at & !3;
            let value = match cached {
                Some((d, v)) if d == dword => v,
                _ => {
                    let v = self.read_dword(dword);
                    cached = Some((dword, v));
                    v
                }
            };
            *b = (value >> ((at & 3) * 8)) as u8;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&offset) {
            self.msix.write_table(offset - MSIX_TABLE_OFFSET, data);
            return;
        }
        match data.len() {
            // A qword write is two dword writes, low first (as `lo_hi_writeq`).
            8 if offset & 7 == 0 => {
                for (i, half) in data.chunks_exact(4).enumerate() {
                    let v = u32::from_le_bytes([half[0], half[1], half[2], half[3]]);
                    self.write_dword(offset + 4 * i as u64, v);
                }
            }
            4 if offset & 3 == 0 => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_dword(offset, v);
            }
            n => crate::guest_warn!("xhci: {n}-byte write at {offset:#x} ignored"),
        }
        self.process_completions();
    }
}
