//! A mock xHCI driver and a scripted USB device, for unit tests, other USB devices' tests
//! and the benchmark (`test-support` feature).
//!
//! [`MockDriver`] does what a guest's xHCI driver does, through the controller's BAR0
//! (as a [`BusDevice`]) and guest memory: reset, DCBAA, command ring, one-segment event
//! ring on interrupter 0, Enable Slot, Address Device, Configure Endpoint, transfer rings
//! with Link TRBs, doorbells, and reading events back while moving ERDP. [`TestDevice`]
//! answers transfers from a closure, now or later ([`Reply::Later`] keeps the completion
//! in its log for the test to finish from any thread). Interrupt doubles count MSI-X
//! vectors and follow the INTx level.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::context::{CONTEXT_SIZE, Context, ep_type};
use super::port::PORTSC_PR;
use super::regs::*;
use super::trb::{
    TRB_CHAIN, TRB_CYCLE, TRB_DIR_IN, TRB_IDT, TRB_IOC, TRB_ISP, TRB_SIZE, TRB_TOGGLE_CYCLE, Trb,
    trb_type,
};
use super::{CompletionWaiter, Xhci, XhciInterrupts};
use crate::bus::{BusDevice, lock};
use crate::legacy::IrqLine;
use crate::pci::{MsiRoutes, MsixInterrupt, PciDevice};
use crate::usb::{Completion, SetupPacket, Transfer, TransferResult, UsbDevice, UsbSpeed};

/// Where the mock driver puts BAR0 (the controller ignores the base).
pub const BAR: u64 = 0xe000_0000;
/// Guest RAM the mock driver builds.
pub const MEM_SIZE: usize = 16 << 20;
pub const DCBAA: u64 = 0x1000;
pub const COMMAND_RING: u64 = 0x2000;
pub const ERST: u64 = 0x3000;
pub const EVENT_RING: u64 = 0x4000;
/// Input Context used by every command.
pub const INPUT_CONTEXT: u64 = 0x8000;
/// Output Device Context of slot `n` at `OUTPUT_CONTEXTS + n * 0x800`.
pub const OUTPUT_CONTEXTS: u64 = 0x1_0000;
/// Transfer ring of (slot, DCI) at `TRANSFER_RINGS + ((slot - 1) * 32 + dci) * RING_BYTES`.
pub const TRANSFER_RINGS: u64 = 0x10_0000;
pub const RING_BYTES: u64 = 0x400;
/// Where tests put data buffers.
pub const DATA: u64 = 0x40_0000;
/// TRBs in the command and event rings.
pub const RING_TRBS: u32 = 256;

/// Counts MSI-X vectors raised.
#[derive(Default)]
pub struct CountingMsix {
    pub fired: Mutex<Vec<u16>>,
}

impl MsixInterrupt for CountingMsix {
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        lock(&self.fired).push(vector);
        Ok(())
    }
}

/// Records MSI-X table updates.
#[derive(Default)]
pub struct CountingRoutes {
    pub updates: Mutex<Vec<(u16, u64, u32, bool)>>,
}

impl MsiRoutes for CountingRoutes {
    fn update(&self, vector: u16, addr: u64, data: u32, masked: bool) {
        lock(&self.updates).push((vector, addr, data, masked));
    }
}

/// Follows the INTx level and counts rising edges.
#[derive(Default)]
pub struct LevelIrq {
    pub level: AtomicBool,
    pub rises: AtomicU32,
}

impl IrqLine for LevelIrq {
    fn trigger(&self) {
        self.rises.fetch_add(1, Ordering::SeqCst);
    }
    fn set_level(&self, high: bool) {
        if high && !self.level.load(Ordering::SeqCst) {
            self.rises.fetch_add(1, Ordering::SeqCst);
        }
        self.level.store(high, Ordering::SeqCst);
    }
}

/// How a [`TestDevice`] answers a transfer.
pub enum Reply {
    /// Completes inside `submit`.
    Now(TransferResult),
    /// Keeps the completion in [`DeviceLog::held`].
    Later,
    /// Drops the completion unfinished (the device gave up: Disconnected).
    Drop,
}

/// What a [`TestDevice`] saw.
#[derive(Default)]
pub struct DeviceLog {
    pub transfers: Vec<Transfer>,
    pub resets: u32,
    pub cancels: Vec<u8>,
    pub held: Vec<(Transfer, Completion)>,
}

type Responder = Box<dyn FnMut(&Transfer) -> Reply + Send>;

/// A USB device scripted by a closure.
pub struct TestDevice {
    pub speed: UsbSpeed,
    pub log: Arc<Mutex<DeviceLog>>,
    reply: Responder,
}

impl TestDevice {
    pub fn new(
        speed: UsbSpeed,
        reply: impl FnMut(&Transfer) -> Reply + Send + 'static,
    ) -> (TestDevice, Arc<Mutex<DeviceLog>>) {
        let log = Arc::new(Mutex::new(DeviceLog::default()));
        (
            TestDevice {
                speed,
                log: log.clone(),
                reply: Box::new(reply),
            },
            log,
        )
    }
}

impl UsbDevice for TestDevice {
    fn speed(&self) -> UsbSpeed {
        self.speed
    }
    fn reset(&mut self) {
        lock(&self.log).resets += 1;
    }
    fn submit(&mut self, transfer: Transfer, done: Completion) {
        let reply = (self.reply)(&transfer);
        let mut log = lock(&self.log);
        log.transfers.push(transfer.clone());
        match reply {
            Reply::Now(r) => {
                drop(log);
                done.complete(r);
            }
            Reply::Later => log.held.push((transfer, done)),
            Reply::Drop => {
                drop(log);
                drop(done);
            }
        }
    }
    fn cancel(&mut self, endpoint: u8) {
        let mut log = lock(&self.log);
        log.cancels.push(endpoint);
        log.held.retain(|(t, _)| t.endpoint != endpoint);
    }
    fn description(&self) -> String {
        "test device".into()
    }
}

/// A producer ring the driver fills: `trbs` TRBs, the last one a Link TRB home.
#[derive(Clone, Copy, Debug)]
pub struct ProducerRing {
    pub base: u64,
    pub trbs: u32,
    pub index: u32,
    pub cycle: bool,
}

impl ProducerRing {
    pub fn new(base: u64, trbs: u32) -> ProducerRing {
        ProducerRing {
            base,
            trbs,
            index: 0,
            cycle: true,
        }
    }

    /// Writes `trb` with the producer cycle bit; returns its address.
    pub fn push(&mut self, mem: &GuestMemoryMmap, mut trb: Trb) -> u64 {
        let at = self.base + u64::from(self.index) * TRB_SIZE;
        trb.control = (trb.control & !TRB_CYCLE) | u32::from(self.cycle);
        mem.write_obj(trb, GuestAddress(at)).expect("ring in RAM");
        self.index += 1;
        if self.index == self.trbs - 1 {
            let link = Trb::new(
                self.base,
                0,
                trb_type::LINK,
                TRB_TOGGLE_CYCLE | u32::from(self.cycle),
            );
            let at = self.base + u64::from(self.index) * TRB_SIZE;
            mem.write_obj(link, GuestAddress(at)).expect("ring in RAM");
            self.index = 0;
            self.cycle = !self.cycle;
        }
        at
    }
}

/// A guest's xHCI driver, from the host side.
pub struct MockDriver {
    pub xhci: Arc<Mutex<Xhci>>,
    pub mem: GuestMemoryMmap,
    pub msix: Arc<CountingMsix>,
    pub routes: Arc<CountingRoutes>,
    pub intx: Arc<LevelIrq>,
    pub waiter: CompletionWaiter,
    pub command_ring: ProducerRing,
    event_index: u32,
    event_cycle: bool,
    pub rings: HashMap<(u8, u8), ProducerRing>,
}

impl MockDriver {
    /// A controller over `mem_size` bytes of fresh guest RAM.
    pub fn new(mem_size: usize) -> MockDriver {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)]).expect("RAM");
        Self::with_memory(mem)
    }

    /// A controller over `mem` (which must hold the mock's layout up to [`DATA`]).
    pub fn with_memory(mem: GuestMemoryMmap) -> MockDriver {
        let msix = Arc::new(CountingMsix::default());
        let routes = Arc::new(CountingRoutes::default());
        let intx = Arc::new(LevelIrq::default());
        let xhci = Xhci::new(
            mem.clone(),
            XhciInterrupts {
                msix: msix.clone(),
                routes: routes.clone(),
                intx: intx.clone(),
            },
        )
        .expect("controller");
        let waiter = xhci.completion_waiter();
        MockDriver {
            xhci: Arc::new(Mutex::new(xhci)),
            mem,
            msix,
            routes,
            intx,
            waiter,
            command_ring: ProducerRing::new(COMMAND_RING, RING_TRBS),
            event_index: 0,
            event_cycle: true,
            rings: HashMap::new(),
        }
    }

    pub fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        lock(&self.xhci).read(BAR, offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write32(&self, offset: u64, val: u32) {
        lock(&self.xhci).write(BAR, offset, &val.to_le_bytes());
    }

    pub fn write64(&self, offset: u64, val: u64) {
        lock(&self.xhci).write(BAR, offset, &val.to_le_bytes());
    }

    pub fn op_read(&self, reg: u64) -> u32 {
        self.read32(CAP_LENGTH + reg)
    }

    pub fn op_write(&self, reg: u64, val: u32) {
        self.write32(CAP_LENGTH + reg, val);
    }

    /// Interrupter `i` register `reg`.
    pub fn intr_offset(i: u64, reg: u64) -> u64 {
        RUNTIME_OFFSET + INTERRUPTER_BASE + i * INTERRUPTER_STRIDE + reg
    }

    pub fn portsc(&self, port: u8) -> u32 {
        self.op_read(PORT_BASE + u64::from(port - 1) * PORT_STRIDE)
    }

    pub fn write_portsc(&self, port: u8, val: u32) {
        self.op_write(PORT_BASE + u64::from(port - 1) * PORT_STRIDE, val);
    }

    /// Turns MSI-X on with every vector unmasked (the capability through config space).
    pub fn enable_msix(&self) {
        let mut x = lock(&self.xhci);
        let cap = (x.config().read_reg(0x34 / 4) & 0xff) as usize;
        x.write_config(cap / 4, 3, &[0x80]);
        for v in 0..u64::from(MAX_INTRS) {
            let at = MSIX_TABLE_OFFSET + v * 16;
            x.write(BAR, at, &0xfee0_0000u32.to_le_bytes());
            x.write(BAR, at + 8, &(v as u32).to_le_bytes());
            x.write(BAR, at + 12, &0u32.to_le_bytes());
        }
    }

    /// Resets the controller and sets up DCBAA, command ring, event ring and interrupter
    /// 0, then runs it, as a guest driver's init does.
    pub fn start(&mut self) {
        self.op_write(USBCMD, USBCMD_HCRST);
        self.op_write(CONFIG, u32::from(MAX_SLOTS));
        self.mem
            .write_slice(&[0u8; 0x800], GuestAddress(DCBAA))
            .expect("RAM");
        self.mem
            .write_slice(
                &[0u8; (RING_TRBS as usize) * 16],
                GuestAddress(COMMAND_RING),
            )
            .expect("RAM");
        self.mem
            .write_slice(&[0u8; (RING_TRBS as usize) * 16], GuestAddress(EVENT_RING))
            .expect("RAM");
        self.write64(CAP_LENGTH + DCBAAP_LO, DCBAA);
        self.command_ring = ProducerRing::new(COMMAND_RING, RING_TRBS);
        self.write64(CAP_LENGTH + CRCR_LO, COMMAND_RING | CRCR_RCS);
        self.mem
            .write_obj(EVENT_RING, GuestAddress(ERST))
            .expect("RAM");
        self.mem
            .write_obj(RING_TRBS, GuestAddress(ERST + 8))
            .expect("RAM");
        self.event_index = 0;
        self.event_cycle = true;
        self.write32(Self::intr_offset(0, ERSTSZ), 1);
        self.write64(Self::intr_offset(0, ERDP_LO), EVENT_RING);
        self.write64(Self::intr_offset(0, ERSTBA_LO), ERST);
        self.write32(Self::intr_offset(0, IMAN), IMAN_IE);
        self.op_write(USBCMD, USBCMD_RS | USBCMD_INTE);
    }

    /// The next event, if the controller wrote one; moves ERDP past it (clearing EHB).
    pub fn next_event(&mut self) -> Option<Trb> {
        let at = EVENT_RING + u64::from(self.event_index) * TRB_SIZE;
        let trb: Trb = self.mem.read_obj(GuestAddress(at)).ok()?;
        if trb.cycle() != self.event_cycle {
            return None;
        }
        self.event_index += 1;
        if self.event_index == RING_TRBS {
            self.event_index = 0;
            self.event_cycle = !self.event_cycle;
        }
        let deq = EVENT_RING + u64::from(self.event_index) * TRB_SIZE;
        self.write64(Self::intr_offset(0, ERDP_LO), deq | ERDP_EHB);
        Some(trb)
    }

    /// Every event now on the ring.
    pub fn events(&mut self) -> Vec<Trb> {
        std::iter::from_fn(|| self.next_event()).collect()
    }

    /// Waits up to `timeout` for devices' late completions and applies them (what the
    /// helper's worker does), then returns the next event.
    pub fn wait_event(&mut self, timeout: Duration) -> Option<Trb> {
        if let Some(e) = self.next_event() {
            return Some(e);
        }
        if self.waiter.wait_timeout(timeout) {
            lock(&self.xhci).process_completions();
        }
        self.next_event()
    }

    /// Places a command and rings doorbell 0; returns its completion event.
    pub fn command(&mut self, trb: Trb) -> Trb {
        let at = self.command_ring.push(&self.mem, trb);
        self.write32(DOORBELL_OFFSET, 0);
        let events = self.events();
        events
            .into_iter()
            .find(|e| e.trb_type() == trb_type::COMMAND_COMPLETION_EVENT && e.param == at)
            .expect("command completion event")
    }

    /// Enable Slot; returns the slot.
    pub fn enable_slot(&mut self) -> u8 {
        let e = self.command(Trb::new(0, 0, trb_type::ENABLE_SLOT, 0));
        assert_eq!(e.status >> 24, 1, "Enable Slot failed");
        e.slot_id()
    }

    /// Resets root port `port` and takes the Port Status Change event.
    pub fn reset_port(&mut self, port: u8) -> Vec<Trb> {
        self.write_portsc(port, PORTSC_PR);
        self.events()
    }

    fn clear_input(&self) {
        self.mem
            .write_slice(&[0u8; 33 * 32], GuestAddress(INPUT_CONTEXT))
            .expect("RAM");
    }

    /// Output Device Context of `slot`.
    pub fn output_context(slot: u8) -> u64 {
        OUTPUT_CONTEXTS + u64::from(slot) * 0x800
    }

    /// Reads context `dci` (0: slot) of `slot`'s Output Device Context.
    pub fn device_context(&self, slot: u8, dci: u8) -> Context {
        Context::read(
            &self.mem,
            Self::output_context(slot) + u64::from(dci) * CONTEXT_SIZE,
        )
        .expect("context")
    }

    /// The transfer ring of (`slot`, `dci`), created on first use.
    pub fn ring(&mut self, slot: u8, dci: u8) -> &mut ProducerRing {
        let base = TRANSFER_RINGS + ((u64::from(slot) - 1) * 32 + u64::from(dci)) * RING_BYTES;
        self.rings
            .entry((slot, dci))
            .or_insert_with(|| ProducerRing::new(base, (RING_BYTES / TRB_SIZE) as u32))
    }

    fn fresh_ring(&mut self, slot: u8, dci: u8) -> u64 {
        self.rings.remove(&(slot, dci));
        let base = self.ring(slot, dci).base;
        self.mem
            .write_slice(&[0u8; RING_BYTES as usize], GuestAddress(base))
            .expect("RAM");
        base
    }

    /// Address Device for `slot` on root `port`; returns the completion code.
    pub fn address_device(&mut self, slot: u8, port: u8, bsr: bool) -> u8 {
        self.clear_input();
        let ring = self.fresh_ring(slot, 1);
        let out = Self::output_context(slot);
        self.mem
            .write_slice(&[0u8; 0x800], GuestAddress(out))
            .expect("RAM");
        self.mem
            .write_obj(out, GuestAddress(DCBAA + 8 * u64::from(slot)))
            .expect("RAM");
        let mut icc = Context::default();
        icc.0[1] = 3;
        let mut slot_ctx = Context::default();
        slot_ctx.0[0] = 1 << 27;
        slot_ctx.0[1] = u32::from(port) << 16;
        let mut ep0 = Context::default();
        ep0.0[1] = 3 << 1 | u32::from(ep_type::CONTROL) << 3 | 64 << 16;
        ep0.set_dequeue(ring, true);
        icc.write(&self.mem, INPUT_CONTEXT).expect("RAM");
        slot_ctx.write(&self.mem, INPUT_CONTEXT + 32).expect("RAM");
        ep0.write(&self.mem, INPUT_CONTEXT + 64).expect("RAM");
        let flags = if bsr { super::trb::TRB_BSR } else { 0 };
        let e = self.command(Trb::new(
            INPUT_CONTEXT,
            0,
            trb_type::ADDRESS_DEVICE,
            flags | u32::from(slot) << 24,
        ));
        (e.status >> 24) as u8
    }

    /// Configure Endpoint adding `(dci, ep type, max packet)` endpoints; returns the code.
    pub fn configure_endpoints(&mut self, slot: u8, eps: &[(u8, u8, u16)]) -> u8 {
        self.clear_input();
        let mut icc = Context::default();
        icc.0[1] = 1;
        let mut last = 1;
        for &(dci, ty, mps) in eps {
            icc.0[1] |= 1 << dci;
            last = last.max(dci);
            let ring = self.fresh_ring(slot, dci);
            let mut ep = Context::default();
            ep.0[1] = 3 << 1 | u32::from(ty) << 3 | u32::from(mps) << 16;
            ep.set_dequeue(ring, true);
            ep.write(
                &self.mem,
                INPUT_CONTEXT + (u64::from(dci) + 1) * CONTEXT_SIZE,
            )
            .expect("RAM");
        }
        icc.write(&self.mem, INPUT_CONTEXT).expect("RAM");
        let mut slot_ctx = Context::default();
        slot_ctx.set_context_entries(u32::from(last));
        slot_ctx.write(&self.mem, INPUT_CONTEXT + 32).expect("RAM");
        let e = self.command(Trb::new(
            INPUT_CONTEXT,
            0,
            trb_type::CONFIGURE_ENDPOINT,
            u32::from(slot) << 24,
        ));
        (e.status >> 24) as u8
    }

    /// Plugs `device` in, resets its port, enables a slot and addresses it: the slot.
    pub fn plug(&mut self, device: Box<dyn UsbDevice>) -> (u8, u8) {
        let port = lock(&self.xhci).attach(device).expect("free port");
        self.events();
        self.reset_port(port);
        let slot = self.enable_slot();
        assert_eq!(self.address_device(slot, port, false), 1, "Address Device");
        (port, slot)
    }

    pub fn doorbell(&self, slot: u8, dci: u8) {
        self.write32(DOORBELL_OFFSET + 4 * u64::from(slot), u32::from(dci));
    }

    /// Queues a control transfer on EP0 (Setup, Data at `buf` if `setup.length > 0`,
    /// Status with IOC) and rings the doorbell; OUT data must already be at `buf`.
    pub fn control(&mut self, slot: u8, setup: SetupPacket, buf: u64) {
        let mem = self.mem.clone();
        let has_data = setup.length > 0;
        let trt = match (has_data, setup.is_in()) {
            (false, _) => 0,
            (true, false) => 2,
            (true, true) => 3,
        };
        let param = u64::from_le_bytes(setup.to_bytes());
        let ring = self.ring(slot, 1);
        ring.push(
            &mem,
            Trb::new(param, 8, trb_type::SETUP, TRB_IDT | trt << 16),
        );
        if has_data {
            let dir = if setup.is_in() { TRB_DIR_IN } else { 0 };
            ring.push(
                &mem,
                Trb::new(buf, u32::from(setup.length), trb_type::DATA, dir | TRB_ISP),
            );
        }
        let status_dir = if has_data && setup.is_in() {
            0
        } else {
            TRB_DIR_IN
        };
        ring.push(&mem, Trb::new(0, 0, trb_type::STATUS, status_dir | TRB_IOC));
        self.doorbell(slot, 1);
    }

    /// Queues one Normal TRB (ISP, IOC) of `len` bytes at `buf` and rings the doorbell.
    pub fn normal(&mut self, slot: u8, dci: u8, buf: u64, len: u32) -> u64 {
        let mem = self.mem.clone();
        let at = self.ring(slot, dci).push(
            &mem,
            Trb::new(buf, len, trb_type::NORMAL, TRB_ISP | TRB_IOC),
        );
        self.doorbell(slot, dci);
        at
    }

    /// Queues a TD of chained Normal TRBs over `bufs` (IOC on the last) and rings.
    pub fn chained(&mut self, slot: u8, dci: u8, bufs: &[(u64, u32)]) -> Vec<u64> {
        let mem = self.mem.clone();
        let ring = self.ring(slot, dci);
        let mut at = Vec::new();
        for (i, &(buf, len)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags = TRB_ISP | if last { TRB_IOC } else { TRB_CHAIN };
            at.push(ring.push(&mem, Trb::new(buf, len, trb_type::NORMAL, flags)));
        }
        self.doorbell(slot, dci);
        at
    }
}
