//! The controller's saved state (see [`crate::state`]): operational and runtime
//! registers, each interrupter's event ring producer, the command ring, the device slots
//! with their endpoints' ring positions, the root ports and the state of the device in
//! each port.
//!
//! Save: results devices already gave are applied first; then every device forgets the
//! transfers it holds (an interrupt IN waiting for a key press), results that came in
//! meanwhile are applied too, and the controller freezes: from then on nothing reaches
//! guest memory (the worker's [`Xhci::process_completions`] does nothing). An endpoint is
//! saved with its ring position at the first TD without a result, so its TDs still in a
//! device are read from the ring again after a restore and go to the restored device,
//! as a guest's doorbell would send them.
//!
//! Restore: the controller built for the same configuration has the same devices in the
//! same ports; each device takes its state, then the registers, rings and slots are put
//! back, INTA# follows interrupter 0 again, and every running endpoint is kicked.
//!
//! A device that cannot be saved (a host device passed through) makes the save fail with
//! its name before anything is stopped.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::context::EndpointState;
use super::regs::{MAX_INTRS, MAX_PORTS, MAX_SLOTS, MICROFRAME_NS, USBCMD_RS};
use super::ring::{RingCursor, SavedProducer};
use super::transfer::Endpoint;
use super::{Interrupter, Slot, Xhci};
use crate::pci::PciConfigState;
use crate::pci::msix::MsixSaved;
use crate::state::{self, Snapshot, StateError};
use crate::usb::TransferStatus;

const NAME: &str = "xHCI USB controller";

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct SavedCursor {
    addr: u64,
    cycle: bool,
}

impl From<RingCursor> for SavedCursor {
    fn from(c: RingCursor) -> Self {
        SavedCursor {
            addr: c.addr,
            cycle: c.cycle,
        }
    }
}

impl From<&SavedCursor> for RingCursor {
    fn from(c: &SavedCursor) -> Self {
        RingCursor::new(c.addr, c.cycle)
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct SavedInterrupter {
    iman: u32,
    imod: u32,
    erdp_flags: u64,
    erst_size: u32,
    erst_base: u64,
    dequeue: u64,
    producer: SavedProducer,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct SavedEndpoint {
    state: u8,
    ep_type: u8,
    max_packet: u16,
    /// The first TD not finished: where the ring is read again after a restore.
    dequeue: SavedCursor,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct SavedSlot {
    enabled: bool,
    state: u32,
    port: u8,
    address: u8,
    output: u64,
    /// By DCI - 1.
    endpoints: Vec<Option<SavedEndpoint>>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct SavedDevice {
    /// What the device was, to tell a different device in the same port.
    description: String,
    state: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct SavedPort {
    portsc: u32,
    pmsc: u32,
    li: u32,
    hlpmc: u32,
    device: Option<SavedDevice>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct SavedXhci {
    pci: PciConfigState,
    msix: MsixSaved,
    usbcmd: u32,
    usbsts: u32,
    dnctrl: u32,
    config_reg: u32,
    command_ring: SavedCursor,
    command_ring_running: bool,
    dcbaap: u64,
    /// MFINDEX while running, in microframes (it goes on from there).
    mfindex_ns: u64,
    interrupters: Vec<SavedInterrupter>,
    slots: Vec<SavedSlot>,
    ports: Vec<SavedPort>,
}

fn endpoint_state(v: u8) -> Option<EndpointState> {
    Some(match v {
        0 => EndpointState::Disabled,
        1 => EndpointState::Running,
        2 => EndpointState::Halted,
        3 => EndpointState::Stopped,
        4 => EndpointState::Error,
        _ => return None,
    })
}

impl Xhci {
    /// The devices' states, port by port; Err names a device that cannot be saved.
    fn save_devices(&mut self) -> Result<Vec<Option<SavedDevice>>, StateError> {
        self.ports
            .iter_mut()
            .map(|p| {
                p.device
                    .as_mut()
                    .map(|d| {
                        Ok(SavedDevice {
                            description: d.description(),
                            state: d.save_state()?,
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    /// Stops the controller's guest-visible work for a save (see the module docs).
    fn freeze(&mut self) {
        self.process_completions();
        let mut cancelled = HashSet::new();
        for slot in 1..=MAX_SLOTS {
            for dci in 1..=31u8 {
                let held: Vec<u64> = self.endpoint_mut(slot, dci).map_or(Vec::new(), |ep| {
                    ep.pending
                        .iter()
                        .filter(|p| p.result.is_none())
                        .map(|p| p.id)
                        .collect()
                });
                if !held.is_empty()
                    && let Some(dev) = self.slot_device(slot)
                {
                    dev.cancel(super::transfer::endpoint_address(dci));
                    cancelled.extend(held);
                }
            }
        }
        // Results given before the cancel count; a cancelled transfer's completion
        // dropped by its device (Disconnected) does not.
        for (id, result) in self.queue.take() {
            if !(cancelled.contains(&id) && result.status == TransferStatus::Disconnected) {
                self.complete(id, result);
            }
        }
        self.update_intx();
        self.frozen = true;
    }

    fn saved_slot(slot: &Slot) -> SavedSlot {
        SavedSlot {
            enabled: slot.enabled,
            state: slot.state,
            port: slot.port,
            address: slot.address,
            output: slot.output,
            endpoints: slot
                .endpoints
                .iter()
                .map(|ep| {
                    ep.as_ref().map(|ep| SavedEndpoint {
                        state: ep.state as u8,
                        ep_type: ep.ep_type,
                        max_packet: ep.max_packet,
                        dequeue: ep.dequeue().into(),
                    })
                })
                .collect(),
        }
    }

    /// Checks a saved state against this controller before anything changes.
    fn check_saved(&self, s: &SavedXhci) -> Result<(), StateError> {
        let bad = |what: String| Err(StateError::mismatch(NAME, what));
        if s.interrupters.len() != usize::from(MAX_INTRS)
            || s.slots.len() != usize::from(MAX_SLOTS)
            || s.ports.len() != usize::from(MAX_PORTS)
        {
            return bad(format!(
                "{} interrupters, {} slots, {} ports",
                s.interrupters.len(),
                s.slots.len(),
                s.ports.len()
            ));
        }
        for (i, (port, saved)) in self.ports.iter().zip(&s.ports).enumerate() {
            let here = port.device.as_ref().map(|d| d.description());
            let there = saved.device.as_ref().map(|d| d.description.clone());
            if here != there {
                return bad(format!(
                    "port {} holds {} here but held {} when saved",
                    i + 1,
                    here.as_deref().unwrap_or("nothing"),
                    there.as_deref().unwrap_or("nothing")
                ));
            }
        }
        for (i, slot) in s.slots.iter().enumerate() {
            if slot.endpoints.len() != 31 {
                return bad(format!(
                    "slot {} has {} endpoints",
                    i + 1,
                    slot.endpoints.len()
                ));
            }
            for ep in slot.endpoints.iter().flatten() {
                if endpoint_state(ep.state).is_none() {
                    return bad(format!("slot {}: endpoint state {}", i + 1, ep.state));
                }
            }
        }
        Ok(())
    }

    fn restore_interrupters(&mut self, saved: &[SavedInterrupter]) -> Result<(), StateError> {
        for (v, s) in saved.iter().enumerate() {
            let mut intr = Interrupter {
                iman: s.iman,
                imod: s.imod,
                erdp_flags: s.erdp_flags,
                ..Interrupter::default()
            };
            intr.ring.erst_size = s.erst_size;
            intr.ring.erst_base = s.erst_base;
            intr.ring.dequeue = s.dequeue;
            intr.ring
                .set_producer(&s.producer)
                .map_err(|e| StateError::mismatch(NAME, format!("interrupter {v}: {e}")))?;
            self.interrupters[v] = intr;
        }
        Ok(())
    }

    fn restore_slots(&mut self, saved: &[SavedSlot]) {
        for (slot, s) in self.slots.iter_mut().zip(saved) {
            *slot = Slot {
                enabled: s.enabled,
                state: s.state,
                port: s.port,
                address: s.address,
                output: s.output,
                endpoints: Default::default(),
            };
            for (ep, saved) in slot.endpoints.iter_mut().zip(&s.endpoints) {
                *ep = saved.as_ref().map(|e| Endpoint {
                    // Checked in check_saved.
                    state: endpoint_state(e.state).unwrap_or(EndpointState::Stopped),
                    ep_type: e.ep_type,
                    max_packet: e.max_packet,
                    cursor: (&e.dequeue).into(),
                    pending: Default::default(),
                    waiting: false,
                });
            }
        }
    }
}

impl Snapshot for Xhci {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        // Refuses a device that cannot be saved before anything stops.
        self.save_devices()?;
        self.freeze();
        let devices = self.save_devices()?;
        let mfindex_ns = self.run_start.map_or(0, |t| {
            t.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
        });
        let saved = SavedXhci {
            pci: self.config.save(),
            msix: self.msix.save(),
            usbcmd: self.usbcmd,
            usbsts: self.usbsts,
            dnctrl: self.dnctrl,
            config_reg: self.config_reg,
            command_ring: self.command_ring.into(),
            command_ring_running: self.command_ring_running,
            dcbaap: self.dcbaap,
            mfindex_ns,
            interrupters: self
                .interrupters
                .iter()
                .map(|i| SavedInterrupter {
                    iman: i.iman,
                    imod: i.imod,
                    erdp_flags: i.erdp_flags,
                    erst_size: i.ring.erst_size,
                    erst_base: i.ring.erst_base,
                    dequeue: i.ring.dequeue,
                    producer: i.ring.producer(),
                })
                .collect(),
            slots: self.slots.iter().map(Self::saved_slot).collect(),
            ports: self
                .ports
                .iter()
                .zip(devices)
                .map(|(p, device)| SavedPort {
                    portsc: p.portsc(),
                    pmsc: p.pmsc,
                    li: p.li,
                    hlpmc: p.hlpmc,
                    device,
                })
                .collect(),
        };
        state::encode(NAME, &saved)
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let s: SavedXhci = state::decode(NAME, bytes)?;
        self.check_saved(&s)?;
        // BAR moves are the registry wrapper's (PciSaved); the MSI-X routes are redone here.
        self.config.restore(NAME, &s.pci)?;
        self.msix.restore(NAME, &s.msix)?;
        for (i, (port, saved)) in self.ports.iter_mut().zip(&s.ports).enumerate() {
            if let (Some(dev), Some(saved)) = (port.device.as_mut(), &saved.device) {
                dev.restore_state(&saved.state).map_err(|e| {
                    StateError::mismatch(NAME, format!("device in port {}: {e}", i + 1))
                })?;
            }
        }
        self.restore_interrupters(&s.interrupters)?;
        // Transfers handed out before belong to the devices' earlier lives.
        self.inflight.clear();
        self.queue.take();
        self.frozen = false;
        self.usbcmd = s.usbcmd;
        self.usbsts = s.usbsts;
        self.dnctrl = s.dnctrl;
        self.config_reg = s.config_reg;
        self.command_ring = (&s.command_ring).into();
        self.command_ring_running = s.command_ring_running;
        self.dcbaap = s.dcbaap;
        self.run_start = (s.usbcmd & USBCMD_RS != 0).then(|| {
            let now = Instant::now();
            now.checked_sub(Duration::from_nanos(
                s.mfindex_ns % (MICROFRAME_NS as u64 * 16384),
            ))
            .unwrap_or(now)
        });
        for (port, saved) in self.ports.iter_mut().zip(&s.ports) {
            port.set_portsc(saved.portsc);
            port.pmsc = saved.pmsc;
            port.li = saved.li;
            port.hlpmc = saved.hlpmc;
        }
        self.restore_slots(&s.slots);
        self.update_intx();
        // TDs the devices held when saved go to them again.
        for slot in 1..=MAX_SLOTS {
            for dci in 1..=31u8 {
                let running = self
                    .endpoint_mut(slot, dci)
                    .is_some_and(|ep| ep.state == EndpointState::Running);
                if running && self.slot(slot).is_some_and(|s| s.enabled) {
                    self.kick_endpoint(slot, dci);
                }
            }
        }
        self.process_completions();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vm_memory::{Bytes, GuestAddress};

    use super::super::context::ep_type;
    use super::super::regs::*;
    use super::super::testing::{DATA, MEM_SIZE, MockDriver, Reply, TestDevice};
    use super::super::trb::{Trb, trb_type};
    use crate::bus::lock;
    use crate::state::Snapshot;
    use crate::usb::hid::{UsbTablet, UsbTabletHandle};
    use crate::usb::{SetupPacket, TransferResult, UsbSpeed, request};
    use std::sync::Arc;

    /// DCI of the tablet's interrupt IN endpoint 0x81.
    const TABLET_DCI: u8 = 3;
    const REPORT: u32 = 6;

    /// A tablet addressed and configured, an interrupt IN waiting in it.
    fn tablet_polled() -> (MockDriver, Arc<UsbTabletHandle>, u8) {
        let mut d = MockDriver::new(MEM_SIZE);
        d.start();
        d.enable_msix();
        let tablet = UsbTablet::new();
        let handle = tablet.handle();
        let (_, slot) = d.plug(Box::new(tablet));
        let set_config = SetupPacket {
            request_type: 0,
            request: request::SET_CONFIGURATION,
            value: 1,
            index: 0,
            length: 0,
        };
        d.control(slot, set_config, 0);
        assert_eq!(code(&transfer_event(&mut d)), 1);
        assert_eq!(
            d.configure_endpoints(slot, &[(TABLET_DCI, ep_type::INTERRUPT_IN, 6)]),
            1
        );
        d.normal(slot, TABLET_DCI, DATA, REPORT);
        assert!(d.events().is_empty(), "no report before input");
        (d, handle, slot)
    }

    fn code(e: &Trb) -> u8 {
        (e.status >> 24) as u8
    }

    fn transfer_event(d: &mut MockDriver) -> Trb {
        let e = d
            .wait_event(Duration::from_secs(2))
            .expect("a transfer event");
        assert_eq!(e.trb_type(), trb_type::TRANSFER_EVENT);
        e
    }

    /// Registers a guest reads back, MFINDEX aside.
    fn registers(d: &MockDriver) -> Vec<u32> {
        let mut offsets = vec![
            CAP_LENGTH + USBCMD,
            CAP_LENGTH + USBSTS,
            CAP_LENGTH + DNCTRL,
            CAP_LENGTH + CRCR_LO,
            CAP_LENGTH + DCBAAP_LO,
            CAP_LENGTH + DCBAAP_HI,
            CAP_LENGTH + CONFIG,
        ];
        for port in 0..u64::from(MAX_PORTS) {
            offsets.extend((0..4).map(|r| CAP_LENGTH + PORT_BASE + port * PORT_STRIDE + r * 4));
        }
        for i in 0..2 {
            offsets.extend(
                [IMAN, IMOD, ERSTSZ, ERSTBA_LO, ERDP_LO, ERDP_HI]
                    .map(|r| MockDriver::intr_offset(i, r)),
            );
        }
        offsets.into_iter().map(|o| d.read32(o)).collect()
    }

    /// Puts a controller restored from `saved`, with a fresh tablet in the same port,
    /// behind `d`; returns the new tablet's handle.
    fn restore_into(d: &mut MockDriver, saved: &[u8]) -> Arc<UsbTabletHandle> {
        let fresh = MockDriver::with_memory(d.mem.clone());
        let tablet = UsbTablet::new();
        let handle = tablet.handle();
        lock(&fresh.xhci).attach(Box::new(tablet)).expect("port");
        lock(&fresh.xhci).restore_state(saved).expect("restore");
        d.xhci = fresh.xhci;
        d.msix = fresh.msix;
        d.routes = fresh.routes;
        d.intx = fresh.intx;
        d.waiter = fresh.waiter;
        handle
    }

    #[test]
    fn a_waiting_interrupt_in_gets_the_next_pointer_report_after_restore() {
        // The same input on a controller that never saved, for the report to expect.
        let (mut reference, handle, slot) = tablet_polled();
        handle.pointer(300, 400, 1, 1024, 768);
        let expected_event = transfer_event(&mut reference);
        let mut expected = [0u8; REPORT as usize];
        reference
            .mem
            .read_slice(&mut expected, GuestAddress(DATA))
            .unwrap();

        let (mut d, old_handle, slot2) = tablet_polled();
        assert_eq!(slot, slot2);
        let before = registers(&d);
        let saved = lock(&d.xhci).save_state().expect("save");
        // Input reaching the old device after the save does not touch guest memory.
        old_handle.pointer(1, 1, 4, 1024, 768);
        lock(&d.xhci).process_completions();
        let e = d.next_event();
        assert!(e.is_none(), "{e:?}");

        let handle = restore_into(&mut d, &saved);
        assert_eq!(registers(&d), before);
        assert!(d.next_event().is_none(), "nothing before input");
        handle.pointer(300, 400, 1, 1024, 768);
        let event = transfer_event(&mut d);
        assert_eq!(code(&event), 1);
        assert_eq!(event.param, expected_event.param);
        assert_eq!(event.status, expected_event.status);
        assert_eq!(event.slot_id(), slot);
        assert_eq!(event.endpoint_id(), TABLET_DCI);
        let mut report = [0u8; REPORT as usize];
        d.mem.read_slice(&mut report, GuestAddress(DATA)).unwrap();
        assert_eq!(report, expected);
        assert_eq!(report[0], 1, "left button");
        // The restore routed every MSI-X vector again, as the guest had programmed them.
        assert!(lock(&d.routes.updates).contains(&(0, 0xfee0_0000, 0, false)));
        // MSI-X vector 0 fired for it on the restored controller.
        assert!(lock(&d.msix.fired).contains(&0));

        // The endpoint goes on: the next TD on the ring completes too.
        d.normal(slot, TABLET_DCI, DATA + 0x100, REPORT);
        handle.pointer(0, 0, 0, 1024, 768);
        assert_eq!(code(&transfer_event(&mut d)), 1);
    }

    #[test]
    fn reports_queued_in_the_tablet_at_save_are_sent_after_restore() {
        let (mut d, handle, slot) = tablet_polled();
        // First report fills the waiting TD, the second waits in the tablet's queue.
        handle.pointer(10, 10, 1, 100, 100);
        assert_eq!(code(&transfer_event(&mut d)), 1);
        handle.pointer(10, 10, 0, 100, 100);
        let saved = lock(&d.xhci).save_state().expect("save");
        let _handle = restore_into(&mut d, &saved);
        d.normal(slot, TABLET_DCI, DATA, REPORT);
        assert_eq!(code(&transfer_event(&mut d)), 1);
        let mut report = [0u8; REPORT as usize];
        d.mem.read_slice(&mut report, GuestAddress(DATA)).unwrap();
        assert_eq!(report[0], 0, "the button release queued before the save");
    }

    #[test]
    fn truncated_or_garbage_state_is_refused_and_the_controller_still_works() {
        let (d, _handle, _) = tablet_polled();
        let saved = lock(&d.xhci).save_state().expect("save");
        for bad in [&saved[..saved.len() / 2], &[0xffu8; 40][..], &[][..]] {
            let mut fresh = MockDriver::with_memory(d.mem.clone());
            lock(&fresh.xhci)
                .attach(Box::new(UsbTablet::new()))
                .expect("port");
            assert!(lock(&fresh.xhci).restore_state(bad).is_err());
            fresh.start();
            assert!(fresh.enable_slot() >= 1);
        }
        // A different device in the port is refused too.
        let fresh = MockDriver::with_memory(d.mem.clone());
        let (dev, _) = TestDevice::new(UsbSpeed::Full, |_| Reply::Now(TransferResult::data_out(0)));
        lock(&fresh.xhci).attach(Box::new(dev)).expect("port");
        let err = lock(&fresh.xhci).restore_state(&saved).unwrap_err();
        assert!(err.to_string().contains("test device"), "{err}");
    }

    #[test]
    fn a_device_without_saved_state_refuses_the_save_by_name_and_stops_nothing() {
        let (mut d, handle, slot) = tablet_polled();
        let (dev, _) = TestDevice::new(UsbSpeed::High, |_| Reply::Now(TransferResult::data_out(0)));
        lock(&d.xhci).attach(Box::new(dev)).expect("port");
        d.events();
        let err = lock(&d.xhci).save_state().unwrap_err();
        assert!(err.to_string().contains("USB device test device"), "{err}");
        // The tablet's transfer is still in flight and completes.
        handle.pointer(5, 5, 1, 100, 100);
        let e = transfer_event(&mut d);
        assert_eq!((code(&e), e.slot_id()), (1, slot));
    }
}
