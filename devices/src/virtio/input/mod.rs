//! virtio-input (virtio 1.2 section 5.8): a keyboard and an absolute tablet, so a guest
//! with drivers follows the client's pointer exactly, with no grab.
//!
//! Data flow: display clients' input reaches [`crate::input::InputRouter`], which sends it
//! here once the guest driver is up ([`VirtioInputHandle::ready`]), else to PS/2. Events
//! (evdev type, code, value, with a SYN_REPORT after each group) wait in a bounded queue
//! ([`MAX_PENDING`]; past it the oldest groups are dropped) and the worker copies them into
//! the buffers the driver posted on the event queue. The handle kicks the worker through an
//! eventfd, so the client thread never touches guest memory. The status queue (LED state
//! from the guest) is drained and ignored.
//!
//! Saved state: the configuration selector (select, subsel) the driver wrote, the events
//! not yet delivered, and the kind, which a restore checks. The worker takes event-queue
//! buffers only when it has an event for them, so the buffers the driver posted stay in
//! the ring across a save; the restored worker delivers the saved events into them first.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::worker::{QueueHandler, Worker, drain_queue};
use super::{Activation, GuestMemory, QueuePosition, VirtioDevice, VirtioError, VirtioInterrupt};
use crate::bus::lock;
use crate::state::{self, StateError};

/// Virtio device id of an input device.
pub const DEVICE_TYPE: u16 = 18;
pub const QUEUE_SIZE: u16 = 64;
/// Events waiting for guest buffers at most.
pub const MAX_PENDING: usize = 1024;
/// Absolute axes run 0..=ABS_MAX.
pub const ABS_MAX: u32 = 0x7fff;

const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_PROP_BITS: u8 = 0x10;
const CFG_EV_BITS: u8 = 0x11;
const CFG_ABS_INFO: u8 = 0x12;

pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_REL: u16 = 0x02;
pub const EV_ABS: u16 = 0x03;
pub const EV_REP: u16 = 0x14;
pub const BTN_LEFT: u16 = 0x110;
pub const BTN_RIGHT: u16 = 0x111;
pub const BTN_MIDDLE: u16 = 0x112;
pub const REL_WHEEL: u16 = 0x08;
const INPUT_PROP_POINTER: u16 = 0;

/// Which device this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputKind {
    Keyboard,
    Tablet,
}

/// One evdev event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: u32,
}

impl InputEvent {
    pub const SYN: InputEvent = InputEvent {
        kind: EV_SYN,
        code: 0,
        value: 0,
    };

    fn bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }
}

/// The Linux key code of an XT scancode (bit 7: 0xE0 prefix).
pub fn xt_to_evdev(xt: u16) -> Option<u16> {
    hospes_core::keycodes::qnum_to_evdev(xt)
}

struct Pending {
    events: VecDeque<InputEvent>,
}

/// The host side of a device: queues events and says whether the guest listens.
pub struct VirtioInputHandle {
    pending: Mutex<Pending>,
    kick: EventFd,
    active: AtomicBool,
}

impl VirtioInputHandle {
    /// Whether the guest driver has started the device.
    pub fn ready(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Queues a group of events (a SYN_REPORT is appended) and wakes the worker.
    pub fn send(&self, group: &[InputEvent]) {
        let mut p = lock(&self.pending);
        while p.events.len() + group.len() + 1 > MAX_PENDING {
            if p.events.pop_front().is_none() {
                return;
            }
        }
        p.events.extend(group.iter().copied());
        p.events.push_back(InputEvent::SYN);
        drop(p);
        let _ = self.kick.write(1);
    }
}

/// What a save keeps of a device (see the module notes).
#[derive(Serialize, Deserialize)]
struct SavedInput {
    kind: InputKind,
    select: u8,
    subsel: u8,
    pending: Vec<InputEvent>,
}

/// The device.
pub struct VirtioInput {
    kind: InputKind,
    config: [u8; 136],
    handle: Arc<VirtioInputHandle>,
    worker: Option<Worker>,
}

impl VirtioInput {
    pub fn new(kind: InputKind) -> Result<Self, VirtioError> {
        Ok(Self {
            kind,
            config: [0; 136],
            handle: Arc::new(VirtioInputHandle {
                pending: Mutex::new(Pending {
                    events: VecDeque::new(),
                }),
                kick: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
                active: AtomicBool::new(false),
            }),
            worker: None,
        })
    }

    pub fn handle(&self) -> Arc<VirtioInputHandle> {
        self.handle.clone()
    }

    /// Fills the union part of the configuration for the current select/subsel.
    fn select(&mut self) {
        let (sel, sub) = (self.config[0], self.config[1]);
        let mut data: Vec<u8> = Vec::new();
        let bits = |codes: &[u16]| {
            let mut b = vec![
                0u8;
                codes
                    .iter()
                    .map(|&c| usize::from(c) / 8 + 1)
                    .max()
                    .unwrap_or(0)
            ];
            for &c in codes {
                b[usize::from(c) / 8] |= 1 << (c % 8);
            }
            b
        };
        match (sel, self.kind) {
            (CFG_ID_NAME, InputKind::Keyboard) => data.extend_from_slice(b"Hospes Keyboard"),
            (CFG_ID_NAME, InputKind::Tablet) => data.extend_from_slice(b"Hospes Tablet"),
            (CFG_ID_SERIAL, _) => data.extend_from_slice(b"hospes"),
            (CFG_ID_DEVIDS, kind) => {
                let product: u16 = if kind == InputKind::Keyboard { 1 } else { 2 };
                for v in [0x06u16, 0x0627, product, 1] {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
            (CFG_PROP_BITS, InputKind::Tablet) => data = bits(&[INPUT_PROP_POINTER]),
            (CFG_EV_BITS, InputKind::Keyboard) => match u16::from(sub) {
                EV_KEY => {
                    let keys: Vec<u16> = hospes_core::keycodes::evdev_keys().collect();
                    data = bits(&keys);
                }
                EV_REP => data = bits(&[0]),
                _ => {}
            },
            (CFG_EV_BITS, InputKind::Tablet) => match u16::from(sub) {
                EV_KEY => data = bits(&[BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
                EV_ABS => data = bits(&[0, 1]),
                EV_REL => data = bits(&[REL_WHEEL]),
                _ => {}
            },
            (CFG_ABS_INFO, InputKind::Tablet) if sub <= 1 => {
                for v in [0u32, ABS_MAX, 0, 0, 0] {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
            _ => {}
        }
        data.truncate(128);
        self.config[2] = data.len() as u8;
        self.config[8..].fill(0);
        self.config[8..8 + data.len()].copy_from_slice(&data);
    }
}

impl VirtioDevice for VirtioInput {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        (0x09, 0x80, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            match offset + i as u64 {
                0 => self.config[0] = *b,
                1 => self.config[1] = *b,
                _ => {}
            }
        }
        self.select();
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        let Activation {
            mem,
            interrupt,
            queues,
            ..
        } = activation;
        let mut events = Vec::new();
        let mut qs = Vec::new();
        for q in queues {
            events.push(q.event);
            qs.push((q.queue, q.index));
        }
        events.push(self.handle.kick.try_clone().map_err(VirtioError::EventFd)?);
        let handler = InputHandler {
            mem,
            interrupt,
            queues: qs,
            handle: self.handle.clone(),
        };
        self.worker = Some(Worker::spawn("hospes-input", events, handler)?);
        self.handle.active.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn reset(&mut self) {
        self.handle.active.store(false, Ordering::SeqCst);
        self.worker = None;
        lock(&self.handle.pending).events.clear();
    }

    fn state_name(&self) -> &str {
        match self.kind {
            InputKind::Keyboard => "virtio-input keyboard",
            InputKind::Tablet => "virtio-input tablet",
        }
    }

    fn can_save(&self) -> bool {
        true
    }

    fn pause(&mut self) -> Result<Vec<QueuePosition>, StateError> {
        let name = self.state_name().to_string();
        super::pause_worker(&name, &mut self.worker, |h: &InputHandler| {
            h.queues
                .iter()
                .map(|(q, index)| QueuePosition::of(*index, q))
                .collect()
        })
    }

    /// Events queued until now are saved; the VM ends after the save, so later ones are
    /// the host's to lose.
    fn save_device_state(&mut self) -> Result<Vec<u8>, StateError> {
        let saved = SavedInput {
            kind: self.kind,
            select: self.config[0],
            subsel: self.config[1],
            pending: lock(&self.handle.pending).events.iter().copied().collect(),
        };
        state::encode(self.state_name(), &saved)
    }

    fn restore_device_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let name = self.state_name().to_string();
        let s: SavedInput = state::decode(&name, bytes)?;
        if s.kind != self.kind {
            return Err(StateError::mismatch(
                &name,
                match s.kind {
                    InputKind::Keyboard => "it was saved from a keyboard",
                    InputKind::Tablet => "it was saved from a tablet",
                },
            ));
        }
        if s.pending.len() > MAX_PENDING {
            return Err(StateError::mismatch(
                &name,
                format!("{} pending events, at most {MAX_PENDING}", s.pending.len()),
            ));
        }
        self.config[0] = s.select;
        self.config[1] = s.subsel;
        self.select();
        // The worker delivers these first when the transport activates the device again.
        lock(&self.handle.pending).events = s.pending.into();
        Ok(())
    }
}

impl Drop for VirtioInput {
    fn drop(&mut self) {
        self.handle.active.store(false, Ordering::SeqCst);
    }
}

struct InputHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// Queues by worker index; the host kick is the index after the last queue.
    queues: Vec<(Queue, u16)>,
    handle: Arc<VirtioInputHandle>,
}

impl InputHandler {
    /// Moves pending events into the event queue's buffers, one event per buffer.
    fn deliver(&mut self) {
        let Some((queue, index)) = self.queues.iter_mut().find(|q| q.1 == 0) else {
            return;
        };
        let mem = &self.mem;
        let mut pending = lock(&self.handle.pending);
        let mut delivered = false;
        while !pending.events.is_empty() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let mut used = 0u32;
            if let Some(d) = chain
                .into_iter()
                .find(|d| d.is_write_only() && d.len() >= 8)
                && let Some(ev) = pending.events.pop_front()
                && mem
                    .write_slice(&ev.bytes(), GuestAddress(d.addr().0))
                    .is_ok()
            {
                used = 8;
            }
            if queue.add_used(mem, head, used).is_err() {
                break;
            }
            delivered = true;
        }
        drop(pending);
        if delivered && queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.notify_queue(*index);
        }
    }
}

impl QueueHandler for InputHandler {
    fn process(&mut self, index: usize) {
        match self.queues.get_mut(index) {
            Some((queue, 1)) => {
                let qi = 1;
                drain_queue(&self.mem, queue, qi, &*self.interrupt, |_| 0);
            }
            // New buffers on the event queue, or the host kick.
            _ => self.deliver(),
        }
    }
}
