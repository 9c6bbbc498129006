//! Tests of the xHCI controller, driven through BAR0 and guest memory by the mock driver.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::context::{EndpointState, SLOT_STATE_ADDRESSED, SLOT_STATE_DEFAULT, ep_type};
use super::port::*;
use super::regs::*;
use super::testing::*;
use super::trb::*;
use super::*;
use crate::usb::{SetupPacket, Transfer, TransferKind, TransferStatus, request};

const SUCCESS: u8 = CompletionCode::Success as u8;

fn code(e: &Trb) -> u8 {
    (e.status >> 24) as u8
}

fn residual(e: &Trb) -> u32 {
    e.status & 0xff_ffff
}

/// Runs command `ty` for `slot` with `param` and further control-word `flags`.
fn slot_command(d: &mut MockDriver, ty: u8, param: u64, slot: u8, flags: u32) -> Trb {
    d.command(Trb::new(param, 0, ty, flags | u32::from(slot) << 24))
}

fn started() -> MockDriver {
    let mut d = MockDriver::new(MEM_SIZE);
    d.start();
    d
}

/// A device answering every IN transfer with `len` bytes counting up, taking every OUT.
fn echo_device(speed: UsbSpeed) -> (TestDevice, Arc<Mutex<DeviceLog>>) {
    TestDevice::new(speed, |t: &Transfer| {
        if t.is_in() {
            Reply::Now(TransferResult::data_in(
                (0..t.length.min(18)).map(|i| i as u8).collect(),
            ))
        } else {
            Reply::Now(TransferResult::data_out(t.data.len()))
        }
    })
}

fn get_descriptor(length: u16) -> SetupPacket {
    SetupPacket {
        request_type: 0x80,
        request: request::GET_DESCRIPTOR,
        value: 0x0100,
        index: 0,
        length,
    }
}

/// A driver with an echo device addressed in slot 1 and a bulk IN (DCI 3), bulk OUT
/// (DCI 4) and interrupt IN (DCI 5) endpoint.
fn configured(
    reply: impl FnMut(&Transfer) -> Reply + Send + 'static,
) -> (MockDriver, u8, Arc<Mutex<DeviceLog>>) {
    let mut d = started();
    let (dev, log) = TestDevice::new(UsbSpeed::High, reply);
    let (_, slot) = d.plug(Box::new(dev));
    let rc = d.configure_endpoints(
        slot,
        &[
            (3, ep_type::BULK_IN, 512),
            (4, ep_type::BULK_OUT, 512),
            (5, ep_type::INTERRUPT_IN, 8),
        ],
    );
    assert_eq!(rc, SUCCESS);
    (d, slot, log)
}

#[test]
fn capability_registers_describe_the_qemu_xhci_layout() {
    let d = MockDriver::new(MEM_SIZE);
    assert_eq!(d.read32(0x00), 0x0100_0040);
    let hcs1 = d.read32(0x04);
    assert_eq!((hcs1 & 0xff, (hcs1 >> 8) & 0x7ff, hcs1 >> 24), (64, 16, 8));
    assert_eq!((d.read32(0x08) >> 4) & 0xf, 4, "ERST Max 2^4");
    assert_eq!(d.read32(0x08) >> 27, 0, "no scratchpad buffers");
    let hcc1 = d.read32(0x10);
    assert_eq!(hcc1 & 1, 1, "AC64");
    assert_eq!(hcc1 & 4, 0, "32-byte contexts");
    let xecp = u64::from(hcc1 >> 16) * 4;
    assert_eq!(xecp, 0x20);
    assert_eq!(u64::from(d.read32(0x14)), DOORBELL_OFFSET);
    assert_eq!(u64::from(d.read32(0x18)), RUNTIME_OFFSET);
    // Walk the Supported Protocol capabilities.
    let mut at = xecp;
    let mut found = Vec::new();
    loop {
        let h = d.read32(at);
        assert_eq!(h & 0xff, 2);
        assert_eq!(d.read32(at + 4), 0x2042_5355, "\"USB \"");
        let ports = d.read32(at + 8);
        found.push((h >> 24, ports & 0xff, (ports >> 8) & 0xff));
        let next = u64::from((h >> 8) & 0xff) * 4;
        if next == 0 {
            break;
        }
        at += next;
    }
    assert_eq!(found, vec![(3, 1, 4), (2, 5, 4)]);
}

#[test]
fn pci_function_is_qemu_xhci_with_msix_and_inta() {
    let d = MockDriver::new(MEM_SIZE);
    let mut x = d.xhci.lock().unwrap();
    assert_eq!(x.read_config(0), 0x000d_1b36);
    assert_eq!(x.read_config(2), 0x0c03_3001);
    assert_eq!(x.config().bar_size(0), Some(0x4000));
    assert_eq!((x.read_config(0x3c / 4) >> 8) & 0xff, 1, "INTA#");
    assert_eq!(x.read_config(0x60 / 4) & 0xff, 0x30, "SBRN USB 3.0");
    let cap = (x.read_config(0x34 / 4) & 0xff) as usize;
    let h = x.read_config(cap / 4);
    assert_eq!(h & 0xff, 0x11);
    assert_eq!((h >> 16) & 0x7ff, 15, "16 vectors");
    assert_eq!(u64::from(x.read_config(cap / 4 + 1)), MSIX_TABLE_OFFSET);
    assert_eq!(u64::from(x.read_config(cap / 4 + 2)), MSIX_PBA_OFFSET);
}

#[test]
fn run_stop_and_hcrst_drive_the_halted_bit() {
    let d = MockDriver::new(MEM_SIZE);
    assert_eq!(d.op_read(USBSTS) & USBSTS_HCH, USBSTS_HCH);
    assert_eq!(d.op_read(PAGESIZE), 1);
    d.op_write(CONFIG, 8);
    d.op_write(DNCTRL, 0x2);
    d.op_write(USBCMD, USBCMD_RS | USBCMD_INTE);
    assert_eq!(d.op_read(USBSTS) & USBSTS_HCH, 0);
    assert_eq!(d.op_read(USBCMD), USBCMD_RS | USBCMD_INTE);
    assert_eq!(d.op_read(CONFIG), 8);
    assert_eq!(d.op_read(DNCTRL), 2);
    d.op_write(USBCMD, 0);
    assert_eq!(d.op_read(USBSTS) & USBSTS_HCH, USBSTS_HCH);
    d.op_write(USBCMD, USBCMD_RS);
    d.op_write(USBCMD, USBCMD_HCRST);
    assert_eq!(d.op_read(USBCMD), 0, "HCRST clears itself");
    assert_eq!(d.op_read(USBSTS), USBSTS_HCH, "halted, controller ready");
    assert_eq!(d.op_read(CONFIG), 0);
}

#[test]
fn usbsts_change_bits_clear_when_written_one() {
    let d = started();
    let (dev, _) = echo_device(UsbSpeed::High);
    d.xhci.lock().unwrap().attach(Box::new(dev)).unwrap();
    let sts = d.op_read(USBSTS);
    assert_ne!(sts & USBSTS_PCD, 0);
    assert_ne!(sts & USBSTS_EINT, 0);
    d.op_write(USBSTS, USBSTS_PCD);
    assert_eq!(d.op_read(USBSTS) & USBSTS_PCD, 0);
    assert_ne!(
        d.op_read(USBSTS) & USBSTS_EINT,
        0,
        "EINT not written: stays"
    );
    d.op_write(USBSTS, USBSTS_EINT | USBSTS_HCH);
    assert_eq!(d.op_read(USBSTS) & (USBSTS_EINT | USBSTS_HCH), 0);
}

#[test]
fn dcbaap_reads_back_and_crcr_reads_only_running() {
    let mut d = started();
    assert_eq!(u64::from(d.op_read(DCBAAP_LO)), DCBAA);
    assert_eq!(d.op_read(CRCR_LO), 0);
    d.command(Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    assert_eq!(u64::from(d.op_read(CRCR_LO)), CRCR_CRR);
    // While running, a new pointer is ignored; Command Abort stops the ring.
    d.write64(CAP_LENGTH + CRCR_LO, 0x9000 | CRCR_RCS);
    d.write64(CAP_LENGTH + CRCR_LO, CRCR_CA);
    assert_eq!(d.op_read(CRCR_LO), 0);
    let e = d.next_event().expect("Command Ring Stopped");
    assert_eq!(code(&e), CompletionCode::CommandRingStopped as u8);
    assert_eq!(e.param, COMMAND_RING + 16, "where the ring stopped");
    // The next doorbell continues from there.
    let e = d.command(Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    assert_eq!(code(&e), SUCCESS);
}

#[test]
fn mfindex_counts_microframes_only_while_running() {
    let d = MockDriver::new(MEM_SIZE);
    assert_eq!(d.read32(RUNTIME_OFFSET), 0);
    d.op_write(USBCMD, USBCMD_RS);
    let first = d.read32(RUNTIME_OFFSET);
    let start = std::time::Instant::now();
    while d.read32(RUNTIME_OFFSET) == first {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "MFINDEX never moved"
        );
    }
    assert!(d.read32(RUNTIME_OFFSET) <= MFINDEX_MASK);
}

#[test]
fn no_op_and_unknown_commands_complete() {
    let mut d = started();
    let e = d.command(Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    assert_eq!(code(&e), SUCCESS);
    assert_eq!(e.trb_type(), trb_type::COMMAND_COMPLETION_EVENT);
    let e = d.command(Trb::new(0, 0, 47, 0));
    assert_eq!(code(&e), CompletionCode::Trb as u8);
    // A transfer TRB on the command ring is no command either.
    let e = d.command(Trb::new(0, 0, trb_type::NORMAL, 0));
    assert_eq!(code(&e), CompletionCode::Trb as u8);
}

#[test]
fn enable_slot_hands_out_every_slot_then_reports_none_left() {
    let mut d = started();
    for want in 1..=MAX_SLOTS {
        assert_eq!(d.enable_slot(), want);
    }
    let e = d.command(Trb::new(0, 0, trb_type::ENABLE_SLOT, 0));
    assert_eq!(code(&e), CompletionCode::NoSlotsAvailable as u8);
    // Disable one: it is handed out again. The command ring wrapped meanwhile.
    let e = d.command(Trb::new(0, 0, trb_type::DISABLE_SLOT, 7 << 24));
    assert_eq!((code(&e), e.slot_id()), (SUCCESS, 7));
    assert_eq!(d.enable_slot(), 7);
}

#[test]
fn slot_commands_check_the_slot() {
    let mut d = started();
    let e = d.command(Trb::new(0, 0, trb_type::DISABLE_SLOT, 3 << 24));
    assert_eq!(code(&e), CompletionCode::SlotNotEnabled as u8);
    let e = d.command(Trb::new(0, 0, trb_type::DISABLE_SLOT, 0));
    assert_eq!(code(&e), CompletionCode::Trb as u8);
    let e = d.command(Trb::new(0, 0, trb_type::RESET_DEVICE, 200 << 24));
    assert_eq!(code(&e), CompletionCode::Trb as u8);
    let slot = d.enable_slot();
    let e = slot_command(&mut d, trb_type::STOP_ENDPOINT, 0, slot, 3 << 16);
    assert_eq!(code(&e), CompletionCode::EndpointNotEnabled as u8);
    let e = slot_command(&mut d, trb_type::CONFIGURE_ENDPOINT, INPUT_CONTEXT, slot, 0);
    assert_eq!(
        code(&e),
        CompletionCode::ContextState as u8,
        "not addressed yet"
    );
}

#[test]
fn address_device_fills_the_slot_context_and_never_sends_set_address() {
    let mut d = started();
    let (dev, log) = echo_device(UsbSpeed::High);
    let port = d.xhci.lock().unwrap().attach(Box::new(dev)).unwrap();
    assert_eq!(port, USB2_FIRST_PORT);
    d.events();
    d.reset_port(port);
    let slot = d.enable_slot();
    // BSR: Default state, address 0.
    assert_eq!(d.address_device(slot, port, true), SUCCESS);
    let ctx = d.device_context(slot, 0);
    assert_eq!(
        (ctx.slot_state(), ctx.device_address()),
        (SLOT_STATE_DEFAULT, 0)
    );
    assert_eq!(ctx.root_port(), port);
    // A second BSR is refused; without BSR the slot gets its address.
    assert_eq!(
        d.address_device(slot, port, true),
        CompletionCode::ContextState as u8
    );
    assert_eq!(d.address_device(slot, port, false), SUCCESS);
    let ctx = d.device_context(slot, 0);
    assert_eq!(
        (ctx.slot_state(), ctx.device_address()),
        (SLOT_STATE_ADDRESSED, slot)
    );
    assert_eq!(
        d.device_context(slot, 1).ep_state(),
        EndpointState::Running as u32
    );
    assert!(log.lock().unwrap().transfers.is_empty(), "no SET_ADDRESS");
    // A SET_ADDRESS the guest sends anyway completes without reaching the device.
    d.control(
        slot,
        SetupPacket {
            request: request::SET_ADDRESS,
            value: 9,
            ..SetupPacket::default()
        },
        0,
    );
    let e = d.next_event().unwrap();
    assert_eq!(code(&e), SUCCESS);
    assert!(log.lock().unwrap().transfers.is_empty());
}

#[test]
fn address_device_refuses_empty_and_impossible_ports() {
    let mut d = started();
    let slot = d.enable_slot();
    assert_eq!(
        d.address_device(slot, 1, false),
        CompletionCode::UsbTransaction as u8
    );
    assert_eq!(d.address_device(slot, 9, false), CompletionCode::Trb as u8);
    assert_eq!(d.address_device(slot, 0, false), CompletionCode::Trb as u8);
    // An Input Context outside RAM.
    let e = slot_command(&mut d, trb_type::ADDRESS_DEVICE, 1 << 40, slot, 0);
    assert_eq!(code(&e), CompletionCode::Trb as u8);
}

#[test]
fn configure_endpoint_adds_drops_and_deconfigures() {
    let (mut d, slot, _) = configured(|_| Reply::Later);
    assert_eq!(d.device_context(slot, 0).slot_state(), 3, "configured");
    assert_eq!(d.device_context(slot, 0).context_entries(), 5);
    for dci in [3, 4, 5] {
        assert_eq!(d.device_context(slot, dci).ep_state(), 1);
    }
    // Drop DCI 4 only.
    d.mem
        .write_slice(&[0u8; 64], GuestAddress(INPUT_CONTEXT))
        .unwrap();
    d.mem
        .write_obj(1u32 << 4, GuestAddress(INPUT_CONTEXT))
        .unwrap();
    let e = slot_command(&mut d, trb_type::CONFIGURE_ENDPOINT, INPUT_CONTEXT, slot, 0);
    assert_eq!(code(&e), SUCCESS);
    assert_eq!(d.device_context(slot, 4).ep_state(), 0);
    assert_eq!(d.device_context(slot, 3).ep_state(), 1);
    // An endpoint of type "not valid" is refused.
    assert_eq!(
        d.configure_endpoints(slot, &[(6, 0, 64)]),
        CompletionCode::Parameter as u8
    );
    // Deconfigure: everything but EP0 goes, the slot is Addressed again.
    let e = slot_command(
        &mut d,
        trb_type::CONFIGURE_ENDPOINT,
        0,
        slot,
        TRB_DECONFIGURE,
    );
    assert_eq!(code(&e), SUCCESS);
    assert_eq!(d.device_context(slot, 0).slot_state(), SLOT_STATE_ADDRESSED);
    assert_eq!(d.device_context(slot, 3).ep_state(), 0);
    assert_eq!(d.device_context(slot, 1).ep_state(), 1);
}

#[test]
fn evaluate_context_updates_ep0_max_packet_and_interrupter_target() {
    let mut d = started();
    let (dev, _) = echo_device(UsbSpeed::Full);
    let (_, slot) = d.plug(Box::new(dev));
    d.mem
        .write_slice(&[0u8; 33 * 32], GuestAddress(INPUT_CONTEXT))
        .unwrap();
    d.mem
        .write_obj(3u32, GuestAddress(INPUT_CONTEXT + 4))
        .unwrap();
    d.mem
        .write_obj(5u32 << 22, GuestAddress(INPUT_CONTEXT + 32 + 8))
        .unwrap();
    d.mem
        .write_obj(8u32 << 16, GuestAddress(INPUT_CONTEXT + 64 + 4))
        .unwrap();
    let e = slot_command(&mut d, trb_type::EVALUATE_CONTEXT, INPUT_CONTEXT, slot, 0);
    assert_eq!(code(&e), SUCCESS);
    assert_eq!(d.device_context(slot, 1).max_packet_size(), 8);
    assert_eq!(d.device_context(slot, 0).slot_interrupter(), 5);
}

#[test]
fn control_in_scatters_the_descriptor_and_reports_a_short_packet() {
    let mut d = started();
    let (dev, log) = echo_device(UsbSpeed::High);
    let (_, slot) = d.plug(Box::new(dev));
    d.control(slot, get_descriptor(64), DATA);
    let events = d.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(code(&events[0]), CompletionCode::ShortPacket as u8);
    assert_eq!(residual(&events[0]), 64 - 18);
    assert_eq!(events[0].endpoint_id(), 1);
    assert_eq!(events[0].slot_id(), slot);
    assert_eq!(code(&events[1]), SUCCESS);
    let mut got = [0u8; 18];
    d.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got.to_vec(), (0..18).collect::<Vec<u8>>());
    let log = log.lock().unwrap();
    assert_eq!(
        log.transfers[0].kind,
        TransferKind::Control(get_descriptor(64))
    );
    assert_eq!(log.transfers[0].length, 64);
    assert_eq!(log.transfers[0].endpoint, 0);
}

#[test]
fn control_out_gathers_the_data_stage() {
    let mut d = started();
    let (dev, log) = echo_device(UsbSpeed::High);
    let (_, slot) = d.plug(Box::new(dev));
    d.mem.write_slice(&[9, 8, 7], GuestAddress(DATA)).unwrap();
    let setup = SetupPacket {
        request_type: 0x21,
        request: 9,
        value: 0x200,
        index: 0,
        length: 3,
    };
    d.control(slot, setup, DATA);
    let e = d.events();
    assert_eq!(e.len(), 1);
    assert_eq!(code(&e[0]), SUCCESS);
    assert_eq!(log.lock().unwrap().transfers[0].data, vec![9, 8, 7]);
}

#[test]
fn bulk_out_gathers_across_chained_trbs_and_immediate_data() {
    let (mut d, slot, log) = configured(|t| Reply::Now(TransferResult::data_out(t.data.len())));
    d.mem.write_slice(&[1, 2, 3], GuestAddress(DATA)).unwrap();
    d.mem
        .write_slice(&[4, 5], GuestAddress(DATA + 0x1000))
        .unwrap();
    let at = d.chained(slot, 4, &[(DATA, 3), (DATA + 0x1000, 2)]);
    let e = d.events();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (code(&e[0]), e[0].param, residual(&e[0])),
        (SUCCESS, at[1], 0)
    );
    let mem = d.mem.clone();
    d.ring(slot, 4).push(
        &mem,
        Trb::new(
            u64::from_le_bytes([0xa, 0xb, 0xc, 0, 0, 0, 0, 0]),
            3,
            trb_type::NORMAL,
            TRB_IDT | TRB_IOC,
        ),
    );
    d.doorbell(slot, 4);
    assert_eq!(code(&d.events()[0]), SUCCESS);
    let log = log.lock().unwrap();
    assert_eq!(log.transfers[0].data, vec![1, 2, 3, 4, 5]);
    assert_eq!(log.transfers[0].kind, TransferKind::Bulk);
    assert_eq!(log.transfers[0].endpoint, 0x02);
    assert_eq!(log.transfers[1].data, vec![0xa, 0xb, 0xc]);
}

#[test]
fn bulk_in_scatters_across_chained_trbs_and_reports_the_short_trb() {
    let (mut d, slot, log) =
        configured(|_| Reply::Now(TransferResult::data_in((0..100u8).collect())));
    let at = d.chained(slot, 3, &[(DATA, 64), (DATA + 0x1000, 64)]);
    let e = d.events();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(code(&e[0]), CompletionCode::ShortPacket as u8);
    assert_eq!(e[0].param, at[1], "the TRB where the packet came short");
    assert_eq!(residual(&e[0]), 28);
    let mut a = [0u8; 64];
    d.mem.read_slice(&mut a, GuestAddress(DATA)).unwrap();
    assert_eq!(a[63], 63);
    let mut b = [0u8; 36];
    d.mem
        .read_slice(&mut b, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(b[0], 64);
    assert_eq!(b[35], 99);
    let log = log.lock().unwrap();
    assert_eq!(log.transfers[0].length, 128);
    assert_eq!(log.transfers[0].endpoint, 0x81);
}

#[test]
fn a_device_returning_too_much_babbles_and_halts_the_endpoint() {
    let (mut d, slot, _) = configured(|_| Reply::Now(TransferResult::data_in(vec![0; 600])));
    d.normal(slot, 3, DATA, 512);
    let e = d.events();
    assert_eq!(code(&e[0]), CompletionCode::Babble as u8);
    assert_eq!(
        d.device_context(slot, 3).ep_state(),
        EndpointState::Halted as u32
    );
}

#[test]
fn event_data_trbs_report_the_bytes_moved() {
    let (mut d, slot, _) = configured(|_| Reply::Now(TransferResult::data_in(vec![7; 40])));
    let mem = d.mem.clone();
    let ring = d.ring(slot, 3);
    ring.push(&mem, Trb::new(DATA, 64, trb_type::NORMAL, TRB_CHAIN));
    ring.push(&mem, Trb::new(0xfeed, 0, trb_type::EVENT_DATA, TRB_IOC));
    d.doorbell(slot, 3);
    let e = d.events();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].has(TRB_EVENT_DATA));
    assert_eq!(e[0].param, 0xfeed);
    assert_eq!(residual(&e[0]), 40, "EDTLA");
    assert_eq!(code(&e[0]), CompletionCode::ShortPacket as u8);
}

#[test]
fn interrupt_in_waits_for_a_completion_from_another_thread() {
    let (mut d, slot, log) = configured(|_| Reply::Later);
    d.normal(slot, 5, DATA, 8);
    assert!(d.events().is_empty(), "NAK: nothing to report yet");
    let held = log.lock().unwrap().held.pop().expect("transfer held");
    assert_eq!(held.0.kind, TransferKind::Interrupt);
    assert_eq!(held.0.endpoint, 0x82);
    let t = std::thread::spawn(move || {
        held.1.complete(TransferResult::data_in(vec![1, 2, 3, 4]));
    });
    t.join().unwrap();
    let e = d
        .wait_event(Duration::from_secs(5))
        .expect("transfer event");
    assert_eq!(code(&e), CompletionCode::ShortPacket as u8);
    assert_eq!(residual(&e), 4);
    let mut got = [0u8; 4];
    d.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [1, 2, 3, 4]);
}

#[test]
fn the_worker_waiter_wakes_for_results_and_stops() {
    let (mut d, slot, log) = configured(|_| Reply::Later);
    d.normal(slot, 5, DATA, 8);
    let waiter = d.xhci.lock().unwrap().completion_waiter();
    let xhci = d.xhci.clone();
    let worker = std::thread::spawn(move || {
        let mut rounds = 0;
        while waiter.wait() {
            xhci.lock().unwrap().process_completions();
            rounds += 1;
        }
        rounds
    });
    let (_, done) = log.lock().unwrap().held.pop().unwrap();
    done.complete(TransferResult::data_in(vec![5; 8]));
    let start = std::time::Instant::now();
    let e = loop {
        if let Some(e) = d.next_event() {
            break e;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "worker never ran");
        std::thread::yield_now();
    };
    assert_eq!(code(&e), SUCCESS);
    d.waiter.stop();
    assert!(worker.join().unwrap() >= 1);
}

#[test]
fn transfers_beyond_the_in_flight_limit_wait_on_the_ring() {
    let (mut d, slot, log) = configured(|_| Reply::Later);
    for i in 0..40u64 {
        d.normal(slot, 3, DATA + i * 512, 512);
    }
    assert_eq!(log.lock().unwrap().held.len(), transfer::MAX_INFLIGHT);
    let held: Vec<_> = log.lock().unwrap().held.drain(..).collect();
    for (_, done) in held {
        done.complete(TransferResult::data_in(vec![1; 512]));
    }
    d.xhci.lock().unwrap().process_completions();
    assert_eq!(log.lock().unwrap().held.len(), 40 - transfer::MAX_INFLIGHT);
    assert_eq!(d.events().len(), transfer::MAX_INFLIGHT);
}

#[test]
fn a_stall_halts_until_reset_endpoint_and_set_tr_dequeue() {
    let stall = Arc::new(Mutex::new(true));
    let s = stall.clone();
    let (mut d, slot, log) = configured(move |_| {
        if *s.lock().unwrap() {
            Reply::Now(TransferResult::failed(TransferStatus::Stall))
        } else {
            Reply::Now(TransferResult::data_in(vec![3; 4]))
        }
    });
    d.normal(slot, 3, DATA, 64);
    let e = d.events();
    assert_eq!(code(&e[0]), CompletionCode::Stall as u8);
    assert_eq!(
        d.device_context(slot, 3).ep_state(),
        EndpointState::Halted as u32
    );
    // A doorbell on a halted endpoint does nothing.
    d.normal(slot, 3, DATA, 64);
    assert!(d.events().is_empty());
    assert_eq!(log.lock().unwrap().transfers.len(), 1);
    // Set TR Dequeue is refused while halted; Reset Endpoint moves it to Stopped.
    let deq = d.ring(slot, 3).base + 16;
    let set_deq = Trb::new(
        deq | 1,
        0,
        trb_type::SET_TR_DEQUEUE,
        u32::from(slot) << 24 | 3 << 16,
    );
    assert_eq!(
        code(&d.command(set_deq)),
        CompletionCode::ContextState as u8
    );
    let reset = Trb::new(
        0,
        0,
        trb_type::RESET_ENDPOINT,
        u32::from(slot) << 24 | 3 << 16,
    );
    assert_eq!(code(&d.command(reset)), SUCCESS);
    assert_eq!(code(&d.command(reset)), CompletionCode::ContextState as u8);
    assert_eq!(
        d.device_context(slot, 3).ep_state(),
        EndpointState::Stopped as u32
    );
    assert_eq!(code(&d.command(set_deq)), SUCCESS);
    assert_eq!(d.device_context(slot, 3).dequeue(), (deq, true));
    *stall.lock().unwrap() = false;
    d.doorbell(slot, 3);
    let e = d.events();
    assert_eq!(code(&e[0]), CompletionCode::ShortPacket as u8);
    assert_eq!(
        d.device_context(slot, 3).ep_state(),
        EndpointState::Running as u32
    );
}

#[test]
fn stop_endpoint_cancels_the_pending_transfer_and_ignores_its_late_result() {
    let (mut d, slot, log) = configured(|_| Reply::Later);
    let at = d.normal(slot, 5, DATA, 8);
    // Keep the completion outside the device, as a host thread would.
    let (_, done) = log.lock().unwrap().held.pop().unwrap();
    let e = slot_command(&mut d, trb_type::STOP_ENDPOINT, 0, slot, 5 << 16);
    assert_eq!(code(&e), SUCCESS);
    let events = d.events();
    let _ = events;
    assert_eq!(log.lock().unwrap().cancels, vec![0x82]);
    let ctx = d.device_context(slot, 5);
    assert_eq!(ctx.ep_state(), EndpointState::Stopped as u32);
    assert_eq!(ctx.dequeue().0, at, "stopped on the cancelled TD");
    done.complete(TransferResult::data_in(vec![1; 8]));
    d.xhci.lock().unwrap().process_completions();
    assert!(
        d.events().is_empty(),
        "a cancelled transfer's result is dropped"
    );
    // Stop again: the endpoint is not running.
    let e = slot_command(&mut d, trb_type::STOP_ENDPOINT, 0, slot, 5 << 16);
    assert_eq!(code(&e), CompletionCode::ContextState as u8);
    // A doorbell restarts it and the TD goes to the device again.
    d.doorbell(slot, 5);
    assert_eq!(log.lock().unwrap().held.len(), 1);
    assert_eq!(
        d.device_context(slot, 5).ep_state(),
        EndpointState::Running as u32
    );
}

#[test]
fn stop_endpoint_reports_the_stopped_trb_before_completing() {
    let (mut d, slot, _) = configured(|_| Reply::Later);
    let at = d.normal(slot, 3, DATA, 512);
    let mem = d.mem.clone();
    let cmd = d.command_ring.push(
        &mem,
        Trb::new(
            0,
            0,
            trb_type::STOP_ENDPOINT,
            u32::from(slot) << 24 | 3 << 16,
        ),
    );
    d.write32(DOORBELL_OFFSET, 0);
    let e = d.events();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].trb_type(), trb_type::TRANSFER_EVENT);
    assert_eq!(e[0].param, at);
    assert_eq!(code(&e[0]), CompletionCode::StoppedLengthInvalid as u8);
    assert_eq!((e[1].param, code(&e[1])), (cmd, SUCCESS));
}

#[test]
fn a_device_vanishing_mid_transfer_ends_it_with_a_transaction_error() {
    let (mut d, slot, _) = configured(|_| Reply::Later);
    d.normal(slot, 3, DATA, 512);
    let port = d.xhci.lock().unwrap().ports().next().unwrap().0;
    let dev = d.xhci.lock().unwrap().detach(port);
    assert!(dev.is_some());
    let e = d.events();
    assert!(e.iter().any(|e| e.trb_type() == trb_type::TRANSFER_EVENT
        && code(e) == CompletionCode::UsbTransaction as u8));
    assert!(
        e.iter()
            .any(|e| e.trb_type() == trb_type::PORT_STATUS_CHANGE_EVENT
                && e.param >> 24 == u64::from(port))
    );
    let sc = d.portsc(port);
    assert_eq!(sc & (PORTSC_CCS | PORTSC_PED), 0);
    assert_ne!(sc & PORTSC_CSC, 0);
    // The guest disables the slot itself.
    let e = slot_command(&mut d, trb_type::DISABLE_SLOT, 0, slot, 0);
    assert_eq!(code(&e), SUCCESS);
    assert!(d.xhci.lock().unwrap().detach(port).is_none());
}

#[test]
fn a_completion_dropped_by_the_device_is_a_transaction_error() {
    let (mut d, slot, _) = configured(|_| Reply::Drop);
    d.normal(slot, 3, DATA, 512);
    let e = d.events();
    assert_eq!(code(&e[0]), CompletionCode::UsbTransaction as u8);
}

#[test]
fn isochronous_tds_are_one_transfer_each() {
    let mut d = started();
    let (dev, log) = echo_device(UsbSpeed::High);
    let (_, slot) = d.plug(Box::new(dev));
    assert_eq!(
        d.configure_endpoints(slot, &[(3, ep_type::ISOCH_IN, 192)]),
        SUCCESS
    );
    let mem = d.mem.clone();
    let ring = d.ring(slot, 3);
    ring.push(&mem, Trb::new(DATA, 192, trb_type::ISOCH, TRB_IOC));
    ring.push(&mem, Trb::new(DATA + 192, 192, trb_type::ISOCH, TRB_IOC));
    d.doorbell(slot, 3);
    assert_eq!(d.events().len(), 2);
    let log = log.lock().unwrap();
    assert_eq!(log.transfers.len(), 2);
    assert!(
        log.transfers
            .iter()
            .all(|t| t.kind == TransferKind::Isochronous)
    );
}

#[test]
fn reset_device_returns_the_slot_to_default() {
    let (mut d, slot, _) = configured(|_| Reply::Later);
    let e = slot_command(&mut d, trb_type::RESET_DEVICE, 0, slot, 0);
    assert_eq!(code(&e), SUCCESS);
    let ctx = d.device_context(slot, 0);
    assert_eq!(
        (ctx.slot_state(), ctx.device_address()),
        (SLOT_STATE_DEFAULT, 0)
    );
    assert_eq!(d.device_context(slot, 3).ep_state(), 0);
    let e = slot_command(&mut d, trb_type::RESET_DEVICE, 0, slot, 0);
    assert_eq!(code(&e), CompletionCode::ContextState as u8);
    let port = d.device_context(slot, 0).root_port();
    assert_eq!(d.address_device(slot, port, false), SUCCESS);
}

#[test]
fn wrong_cycle_bits_leave_the_ring_untouched() {
    let (mut d, slot, log) = configured(|_| Reply::Now(TransferResult::data_in(vec![1])));
    let base = d.ring(slot, 3).base;
    // A TRB with cycle 0 while the consumer expects 1.
    d.mem
        .write_obj(
            Trb::new(DATA, 8, trb_type::NORMAL, TRB_IOC),
            GuestAddress(base),
        )
        .unwrap();
    d.doorbell(slot, 3);
    assert!(d.events().is_empty());
    assert!(log.lock().unwrap().transfers.is_empty());
    // Same on the command ring.
    d.mem
        .write_obj(
            Trb::new(0, 0, trb_type::NOOP_COMMAND, 0),
            GuestAddress(COMMAND_RING + 16 * u64::from(d.command_ring.index)),
        )
        .unwrap();
    d.write32(DOORBELL_OFFSET, 0);
    assert!(d.events().is_empty());
}

#[test]
fn a_transfer_ring_outside_ram_is_a_trb_error_and_halts() {
    let (mut d, slot, _) = configured(|_| Reply::Later);
    // Point DCI 3 past RAM: stop it, move its dequeue pointer, ring.
    let stop = Trb::new(
        0,
        0,
        trb_type::STOP_ENDPOINT,
        u32::from(slot) << 24 | 3 << 16,
    );
    assert_eq!(code(&d.command(stop)), SUCCESS);
    let set = Trb::new(
        (1u64 << 40) | 1,
        0,
        trb_type::SET_TR_DEQUEUE,
        u32::from(slot) << 24 | 3 << 16,
    );
    assert_eq!(code(&d.command(set)), SUCCESS);
    d.doorbell(slot, 3);
    let e = d.events();
    assert_eq!(code(&e[0]), CompletionCode::Trb as u8);
    assert_eq!(
        d.device_context(slot, 3).ep_state(),
        EndpointState::Halted as u32
    );
    // A data buffer outside RAM: the OUT endpoint cannot gather it.
    d.normal(slot, 4, 1 << 40, 16);
    let e = d.events();
    assert_eq!(code(&e[0]), CompletionCode::DataBuffer as u8);
}

#[test]
fn a_link_trb_loop_ends_in_a_trb_error_not_a_hang() {
    let (mut d, slot, _) = configured(|_| Reply::Later);
    let base = d.ring(slot, 3).base;
    // A Link TRB pointing at itself, cycle matching.
    d.mem
        .write_obj(Trb::new(base, 0, trb_type::LINK, 1), GuestAddress(base))
        .unwrap();
    d.doorbell(slot, 3);
    let e = d.events();
    assert_eq!(code(&e[0]), CompletionCode::Trb as u8);
    // A chained TD that never ends (links back into itself).
    let base = d.ring(slot, 4).base;
    d.mem
        .write_obj(
            Trb::new(DATA, 8, trb_type::NORMAL, TRB_CHAIN | 1),
            GuestAddress(base),
        )
        .unwrap();
    d.mem
        .write_obj(
            Trb::new(base, 0, trb_type::LINK, 1),
            GuestAddress(base + 16),
        )
        .unwrap();
    d.doorbell(slot, 4);
    assert_eq!(code(&d.events()[0]), CompletionCode::Trb as u8);
    // On the command ring: the controller reports a Host Controller Error.
    d.mem
        .write_obj(
            Trb::new(COMMAND_RING, 0, trb_type::LINK, 1),
            GuestAddress(COMMAND_RING + 16 * u64::from(d.command_ring.index)),
        )
        .unwrap();
    let mem = d.mem.clone();
    let _ = mem;
    // Make the link point at itself.
    let at = COMMAND_RING + 16 * u64::from(d.command_ring.index);
    d.mem
        .write_obj(Trb::new(at, 0, trb_type::LINK, 1), GuestAddress(at))
        .unwrap();
    d.write32(DOORBELL_OFFSET, 0);
    assert_ne!(d.op_read(USBSTS) & USBSTS_HCE, 0);
}

#[test]
fn a_looping_ring_of_completing_tds_is_bounded_per_doorbell() {
    let (mut d, slot, log) = configured(|t| Reply::Now(TransferResult::data_out(t.data.len())));
    let base = d.ring(slot, 4).base;
    d.mem
        .write_obj(Trb::new(DATA, 4, trb_type::NORMAL, 1), GuestAddress(base))
        .unwrap();
    d.mem
        .write_obj(
            Trb::new(base, 0, trb_type::LINK, 1),
            GuestAddress(base + 16),
        )
        .unwrap();
    d.doorbell(slot, 4);
    let n = log.lock().unwrap().transfers.len();
    assert!(n > 1000 && n <= 65536, "{n} transfers");
}

#[test]
fn a_td_longer_than_the_limit_is_refused() {
    let (mut d, slot, log) = configured(|_| Reply::Later);
    // A ring big enough for a 16 MiB TD of 64 KiB TRBs, put in place by Set TR Dequeue.
    let big = 0x80_0000u64;
    let stop = Trb::new(
        0,
        0,
        trb_type::STOP_ENDPOINT,
        u32::from(slot) << 24 | 3 << 16,
    );
    assert_eq!(code(&d.command(stop)), SUCCESS);
    let set = Trb::new(
        big | 1,
        0,
        trb_type::SET_TR_DEQUEUE,
        u32::from(slot) << 24 | 3 << 16,
    );
    assert_eq!(code(&d.command(set)), SUCCESS);
    let mem = d.mem.clone();
    let mut ring = ProducerRing::new(big, 1024);
    for _ in 0..(transfer::MAX_TD_BYTES / 0x1_0000) {
        ring.push(&mem, Trb::new(DATA, 0x1_0000, trb_type::NORMAL, TRB_CHAIN));
    }
    ring.push(&mem, Trb::new(DATA, 0x1_0000, trb_type::NORMAL, TRB_IOC));
    d.doorbell(slot, 3);
    assert_eq!(code(&d.events()[0]), CompletionCode::Trb as u8);
    assert!(log.lock().unwrap().transfers.is_empty());
}

#[test]
fn doorbells_for_missing_slots_and_endpoints_are_ignored() {
    let (mut d, slot, log) = configured(|_| Reply::Later);
    d.doorbell(slot, 9);
    d.doorbell(slot + 1, 1);
    d.doorbell(slot, 0);
    d.doorbell(slot, 200);
    d.write32(DOORBELL_OFFSET + 4 * 64, 1);
    d.write32(DOORBELL_OFFSET + 4 * 65, 1);
    d.write32(DOORBELL_OFFSET + 0xffc, 1);
    assert!(d.events().is_empty());
    assert!(log.lock().unwrap().transfers.is_empty());
    // A halted controller ignores doorbells.
    d.op_write(USBCMD, 0);
    d.normal(slot, 3, DATA, 8);
    assert!(log.lock().unwrap().transfers.is_empty());
}

#[test]
fn a_stray_data_trb_on_ep0_is_a_trb_error() {
    let mut d = started();
    let (dev, _) = echo_device(UsbSpeed::High);
    let (_, slot) = d.plug(Box::new(dev));
    let mem = d.mem.clone();
    d.ring(slot, 1)
        .push(&mem, Trb::new(DATA, 8, trb_type::DATA, TRB_IOC));
    d.doorbell(slot, 1);
    assert_eq!(code(&d.events()[0]), CompletionCode::Trb as u8);
}

#[test]
fn an_empty_or_oversized_erst_loses_events_without_panicking() {
    let mut d = started();
    d.write32(MockDriver::intr_offset(0, ERSTSZ), 0);
    d.write64(MockDriver::intr_offset(0, ERSTBA_LO), ERST);
    d.write32(DOORBELL_OFFSET, 0);
    let mem = d.mem.clone();
    d.command_ring
        .push(&mem, Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    d.write32(DOORBELL_OFFSET, 0);
    assert!(d.events().is_empty());
    d.write32(MockDriver::intr_offset(0, ERSTSZ), 1000);
    d.write64(MockDriver::intr_offset(0, ERSTBA_LO), ERST);
    d.command_ring
        .push(&mem, Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    d.write32(DOORBELL_OFFSET, 0);
    assert!(d.events().is_empty());
    // A segment table outside RAM.
    d.write32(MockDriver::intr_offset(0, ERSTSZ), 1);
    d.write64(MockDriver::intr_offset(0, ERSTBA_LO), 1 << 40);
    d.command_ring
        .push(&mem, Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    d.write32(DOORBELL_OFFSET, 0);
    // Registers read back what was written.
    assert_eq!(d.read32(MockDriver::intr_offset(0, ERSTSZ)), 1);
    assert_eq!(d.read32(MockDriver::intr_offset(0, ERSTBA_HI)), 1 << 8);
}

#[test]
fn a_full_event_ring_ends_with_an_event_ring_full_event() {
    let mut d = started();
    let mem = d.mem.clone();
    // The driver never moves ERDP: 255 events fit, the last slot gets Event Ring Full.
    for _ in 0..2 {
        for _ in 0..200 {
            d.command_ring
                .push(&mem, Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
        }
        d.write32(DOORBELL_OFFSET, 0);
    }
    let last: Trb = d
        .mem
        .read_obj(GuestAddress(EVENT_RING + 16 * (u64::from(RING_TRBS) - 1)))
        .unwrap();
    assert_eq!(last.trb_type(), trb_type::HOST_CONTROLLER_EVENT);
    assert_eq!(code(&last), CompletionCode::EventRingFull as u8);
    let first: Trb = d.mem.read_obj(GuestAddress(EVENT_RING)).unwrap();
    assert_eq!(
        first.param, COMMAND_RING,
        "the oldest event was not overwritten"
    );
    assert!(first.cycle());
    // Once the driver has read them all, events flow again.
    assert_eq!(d.events().len(), RING_TRBS as usize);
    let e = d.command(Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    assert_eq!(code(&e), SUCCESS);
}

#[test]
fn event_ring_wraps_with_the_cycle_bit_flipped() {
    let mut d = started();
    for _ in 0..(RING_TRBS + 10) {
        let e = d.command(Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
        assert_eq!(code(&e), SUCCESS);
    }
    let first: Trb = d.mem.read_obj(GuestAddress(EVENT_RING)).unwrap();
    assert!(!first.cycle(), "second lap written with cycle 0");
}

#[test]
fn usb2_ports_wait_for_reset_and_usb3_ports_enable_at_once() {
    let mut d = started();
    let (dev, log) = echo_device(UsbSpeed::High);
    let port = d.xhci.lock().unwrap().attach(Box::new(dev)).unwrap();
    assert_eq!(port, 5);
    let e = d.events();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].trb_type(), trb_type::PORT_STATUS_CHANGE_EVENT);
    assert_eq!(e[0].param >> 24, 5);
    let sc = d.portsc(port);
    assert_eq!(
        sc & (PORTSC_CCS | PORTSC_PED | PORTSC_CSC | PORTSC_PP),
        PORTSC_CCS | PORTSC_CSC | PORTSC_PP
    );
    assert_eq!((sc >> 5) & 0xf, PLS_POLLING);
    assert_eq!((sc >> 10) & 0xf, 3, "high speed");
    // CSC clears when written one; writing other bits leaves it.
    d.write_portsc(port, PORTSC_PP);
    assert_ne!(d.portsc(port) & PORTSC_CSC, 0);
    d.write_portsc(port, PORTSC_CSC);
    assert_eq!(d.portsc(port) & PORTSC_CSC, 0);
    let e = d.reset_port(port);
    assert_eq!(e.len(), 1);
    let sc = d.portsc(port);
    assert_eq!(
        sc & (PORTSC_PED | PORTSC_PRC | PORTSC_PR),
        PORTSC_PED | PORTSC_PRC
    );
    assert_eq!((sc >> 5) & 0xf, PLS_U0);
    assert_eq!(log.lock().unwrap().resets, 1);
    // Writing PED disables the port.
    d.write_portsc(port, PORTSC_PED | PORTSC_PRC);
    assert_eq!(d.portsc(port) & (PORTSC_PED | PORTSC_PRC), 0);

    let (dev3, log3) = echo_device(UsbSpeed::Super);
    let port3 = d.xhci.lock().unwrap().attach(Box::new(dev3)).unwrap();
    assert_eq!(port3, 1);
    let sc = d.portsc(port3);
    assert_eq!(sc & (PORTSC_CCS | PORTSC_PED), PORTSC_CCS | PORTSC_PED);
    assert_eq!((sc >> 10) & 0xf, 4);
    d.events();
    d.write_portsc(port3, PORTSC_WPR);
    let sc = d.portsc(port3);
    assert_ne!(sc & PORTSC_WRC, 0);
    assert_ne!(sc & PORTSC_PRC, 0);
    assert_eq!(log3.lock().unwrap().resets, 1);
    assert_eq!(d.events().len(), 1);
    // Link state: U3 then back to U0 with PLC.
    d.write_portsc(port3, PORTSC_LWS | PLS_U3 << 5);
    assert_eq!((d.portsc(port3) >> 5) & 0xf, PLS_U3);
    d.write_portsc(port3, PORTSC_LWS);
    assert_ne!(d.portsc(port3) & PORTSC_PLC, 0);
    // Empty ports: reset does nothing; their other registers are plain storage.
    d.write_portsc(2, PORTSC_PR);
    assert_eq!(d.portsc(2) & (PORTSC_PRC | PORTSC_PED | PORTSC_CCS), 0);
    assert_eq!((d.portsc(2) >> 5) & 0xf, PLS_RX_DETECT);
    d.op_write(PORT_BASE + 0x10 + 4, 0x1234);
    assert_eq!(d.op_read(PORT_BASE + 0x10 + 4), 0x1234);
}

#[test]
fn attach_fills_ports_of_the_right_kind_and_lists_them() {
    let mut d = started();
    let mut x = d.xhci.lock().unwrap();
    for want in 5..=8 {
        let (dev, _) = echo_device(UsbSpeed::Full);
        assert_eq!(x.attach(Box::new(dev)).unwrap(), want);
    }
    let (dev, _) = echo_device(UsbSpeed::Low);
    assert!(matches!(
        x.attach(Box::new(dev)),
        Err(XhciError::NoFreePort { kind: "USB 2" })
    ));
    let (dev, _) = echo_device(UsbSpeed::Super);
    assert_eq!(x.attach(Box::new(dev)).unwrap(), 1);
    let listed: Vec<(u8, UsbSpeed)> = x.ports().map(|(p, d)| (p, d.speed())).collect();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0], (1, UsbSpeed::Super));
    assert!(x.detach(0).is_none());
    assert!(x.detach(42).is_none());
    assert!(x.detach(2).is_none(), "empty port");
    drop(x);
    assert_eq!(d.events().len(), 5);
}

#[test]
fn intx_follows_interrupter_zero_while_msix_is_off() {
    let mut d = started();
    assert!(!d.intx.level.load(Ordering::SeqCst));
    let mem = d.mem.clone();
    d.command_ring
        .push(&mem, Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    d.write32(DOORBELL_OFFSET, 0);
    assert!(d.intx.level.load(Ordering::SeqCst), "IP and IE: INTA# high");
    let iman = MockDriver::intr_offset(0, IMAN);
    assert_eq!(d.read32(iman), IMAN_IP | IMAN_IE);
    d.write32(iman, IMAN_IP | IMAN_IE);
    assert!(!d.intx.level.load(Ordering::SeqCst), "IP cleared: low");
    assert_eq!(d.read32(iman), IMAN_IE);
    // INTx disable in the PCI command register holds the line low.
    d.command_ring
        .push(&mem, Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    d.events();
    d.xhci
        .lock()
        .unwrap()
        .write_config(1, 0, &(1u16 << 10).to_le_bytes());
    d.write32(DOORBELL_OFFSET, 0);
    assert!(!d.intx.level.load(Ordering::SeqCst));
    d.xhci.lock().unwrap().write_config(1, 0, &[0, 0]);
    assert!(d.intx.level.load(Ordering::SeqCst));
    assert!(d.msix.fired.lock().unwrap().is_empty());
}

#[test]
fn msix_fires_once_per_busy_handler_and_not_intx() {
    let mut d = started();
    d.enable_msix();
    let mem = d.mem.clone();
    for _ in 0..3 {
        d.command_ring
            .push(&mem, Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    }
    d.write32(DOORBELL_OFFSET, 0);
    assert_eq!(
        *d.msix.fired.lock().unwrap(),
        vec![0],
        "EHB holds back the rest"
    );
    assert!(!d.intx.level.load(Ordering::SeqCst));
    assert!(
        d.routes
            .updates
            .lock()
            .unwrap()
            .contains(&(0, 0xfee0_0000, 0, false))
    );
    // The driver consumes one event and clears EHB: more are waiting, fire again.
    d.next_event();
    assert_eq!(d.msix.fired.lock().unwrap().len(), 2);
    d.events();
    // A masked vector is pending in the PBA until unmasked.
    d.write32(MSIX_TABLE_OFFSET + 12, 1);
    d.command_ring
        .push(&mem, Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    d.write32(DOORBELL_OFFSET, 0);
    let n = d.msix.fired.lock().unwrap().len();
    assert_eq!(d.read32(MSIX_PBA_OFFSET) & 1, 1);
    d.write32(MSIX_TABLE_OFFSET + 12, 0);
    assert_eq!(d.msix.fired.lock().unwrap().len(), n + 1);
    // Without IE nothing fires.
    d.events();
    d.write32(MockDriver::intr_offset(0, IMAN), IMAN_IP);
    d.command_ring
        .push(&mem, Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
    d.write32(DOORBELL_OFFSET, 0);
    assert_eq!(d.msix.fired.lock().unwrap().len(), n + 1);
}

#[test]
fn transfer_events_go_to_the_trbs_interrupter_target() {
    let (mut d, slot, _) = configured(|_| Reply::Now(TransferResult::data_in(vec![1; 8])));
    d.enable_msix();
    // Interrupter 2: its own event ring.
    let ring2 = 0x6000u64;
    let erst2 = 0x5000u64;
    d.mem.write_obj(ring2, GuestAddress(erst2)).unwrap();
    d.mem.write_obj(16u32, GuestAddress(erst2 + 8)).unwrap();
    d.write32(MockDriver::intr_offset(2, ERSTSZ), 1);
    d.write64(MockDriver::intr_offset(2, ERDP_LO), ring2);
    d.write64(MockDriver::intr_offset(2, ERSTBA_LO), erst2);
    d.write32(MockDriver::intr_offset(2, IMAN), IMAN_IE);
    let mem = d.mem.clone();
    d.ring(slot, 3)
        .push(&mem, Trb::new(DATA, 8, trb_type::NORMAL, TRB_IOC));
    // Set the interrupter target in the status word.
    let base = d.ring(slot, 3).base;
    d.mem
        .write_obj(8u32 | 2 << 22, GuestAddress(base + 8))
        .unwrap();
    d.doorbell(slot, 3);
    let e: Trb = d.mem.read_obj(GuestAddress(ring2)).unwrap();
    assert_eq!(e.trb_type(), trb_type::TRANSFER_EVENT);
    assert!(e.cycle());
    assert!(d.msix.fired.lock().unwrap().contains(&2));
    assert_ne!(d.read32(MockDriver::intr_offset(2, IMAN)) & IMAN_IP, 0);
}

#[test]
fn machine_reset_keeps_devices_and_forgets_slots() {
    let (mut d, slot, log) = configured(|_| Reply::Later);
    d.normal(slot, 5, DATA, 8);
    d.enable_msix();
    d.xhci.lock().unwrap().reset();
    assert_eq!(d.op_read(USBSTS) & USBSTS_HCH, USBSTS_HCH);
    assert_eq!(log.lock().unwrap().cancels, vec![0x82]);
    assert_eq!(d.xhci.lock().unwrap().ports().count(), 1);
    let port = d.xhci.lock().unwrap().ports().next().unwrap().0;
    assert_ne!(d.portsc(port) & (PORTSC_CCS | PORTSC_CSC), 0);
    d.start();
    let s = d.enable_slot();
    assert_eq!(s, 1, "slot {slot} was freed");
    d.reset_port(port);
    assert_eq!(d.address_device(s, port, false), SUCCESS);
}

#[test]
fn odd_width_and_unknown_register_accesses_are_harmless() {
    let d = started();
    let mut x = d.xhci.lock().unwrap();
    let mut b = [0u8; 2];
    x.read(BAR, 2, &mut b);
    assert_eq!(u16::from_le_bytes(b), 0x0100, "HCIVERSION by 16-bit read");
    let mut b1 = [0u8; 1];
    x.read(BAR, 0, &mut b1);
    assert_eq!(b1[0], 0x40);
    let mut q = [0u8; 8];
    x.read(BAR, CAP_LENGTH + DCBAAP_LO, &mut q);
    assert_eq!(u64::from_le_bytes(q), DCBAA);
    let mut wide = [0u8; 3];
    x.read(BAR, 0x3ffe, &mut wide);
    x.write(BAR, CAP_LENGTH + USBCMD, &[0]);
    x.write(BAR, CAP_LENGTH + USBCMD + 1, &[0xff; 4]);
    x.write(BAR, 0x10, &[0xff; 4]);
    x.write(BAR, 0x0fff, &[0xff; 2]);
    x.write(BAR, RUNTIME_OFFSET + 0x7fc, &[0xff; 4]);
    x.write(BAR, MSIX_PBA_OFFSET + 0x10, &[0xff; 4]);
    x.write(BAR, MSIX_TABLE_OFFSET + 3, &[1, 2]);
    x.write(BAR, 0x3ffc, &[1; 4]);
    drop(x);
    assert_eq!(
        d.op_read(USBCMD),
        USBCMD_RS | USBCMD_INTE,
        "byte writes ignored"
    );
    assert_eq!(d.read32(0x10) & 1, 1, "capabilities are read-only");
}

#[test]
fn random_ring_and_context_contents_never_panic() {
    // A small xorshift: the same hostile bytes on every run.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..40 {
        let (mut d, slot, log) = configured(|t| {
            if t.endpoint == 0x82 {
                Reply::Later
            } else if t.is_in() {
                Reply::Now(TransferResult::data_in(vec![1; t.length.min(300)]))
            } else {
                Reply::Now(TransferResult::data_out(t.data.len()))
            }
        });
        let targets = [
            d.command_ring.base,
            d.ring(slot, 1).base,
            d.ring(slot, 3).base,
            d.ring(slot, 4).base,
            d.ring(slot, 5).base,
            INPUT_CONTEXT,
            MockDriver::output_context(slot),
        ];
        for at in targets {
            for i in 0..64u64 {
                let mut v = next();
                // Keep some TRBs plausible: a valid type and the expected cycle bit.
                if v % 3 == 0 {
                    v = (v & !(0x3f << 42)) | ((v >> 50) % 24) << 42 | 1 << 32;
                }
                // Addresses inside RAM now and then.
                let param = if v % 5 == 0 {
                    next() % (MEM_SIZE as u64)
                } else {
                    next()
                };
                d.mem.write_obj(param, GuestAddress(at + i * 16)).unwrap();
                d.mem.write_obj(v, GuestAddress(at + i * 16 + 8)).unwrap();
            }
        }
        d.write32(DOORBELL_OFFSET, 0);
        for dci in [1, 3, 4, 5, (next() % 40) as u8] {
            d.doorbell(slot, dci);
        }
        let held: Vec<_> = log.lock().unwrap().held.drain(..).collect();
        for (_, done) in held {
            done.complete(TransferResult::data_in(vec![2; (round * 7) % 20]));
        }
        d.xhci.lock().unwrap().process_completions();
        d.events();
        // The controller still works after a reset.
        d.start();
        let e = d.command(Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
        assert_eq!(code(&e), SUCCESS, "round {round}");
    }
}

#[test]
fn enable_slot_honours_max_slots_enabled() {
    let mut d = started();
    d.op_write(USBCMD, 0);
    d.op_write(CONFIG, 2);
    d.op_write(USBCMD, USBCMD_RS | USBCMD_INTE);
    assert_eq!(d.enable_slot(), 1);
    assert_eq!(d.enable_slot(), 2);
    let e = d.command(Trb::new(0, 0, trb_type::ENABLE_SLOT, 0));
    assert_eq!(code(&e), CompletionCode::NoSlotsAvailable as u8);
}

#[test]
fn get_port_bandwidth_reports_every_port() {
    let mut d = started();
    let at = DATA;
    d.mem.write_slice(&[0xff; 10], GuestAddress(at)).unwrap();
    let e = d.command(Trb::new(at, 0, trb_type::GET_PORT_BANDWIDTH, 0));
    assert_eq!(code(&e), SUCCESS);
    let mut ctx = [0xffu8; 10];
    d.mem.read_slice(&mut ctx, GuestAddress(at)).unwrap();
    assert_eq!(ctx[..9], [0, 80, 80, 80, 80, 80, 80, 80, 80]);
    assert_eq!(ctx[9], 0xff, "nothing past the last port");
    let e = d.command(Trb::new(1 << 40, 0, trb_type::GET_PORT_BANDWIDTH, 0));
    assert_eq!(code(&e), CompletionCode::Trb as u8);
}

#[test]
fn events_cross_erst_segments_and_flip_the_cycle_at_the_end() {
    let mut d = started();
    // Two 16-TRB segments.
    let (seg0, seg1, erst) = (0x6000u64, 0x7000u64, 0x5000u64);
    d.mem.write_obj(seg0, GuestAddress(erst)).unwrap();
    d.mem.write_obj(16u32, GuestAddress(erst + 8)).unwrap();
    d.mem.write_obj(seg1, GuestAddress(erst + 16)).unwrap();
    d.mem.write_obj(16u32, GuestAddress(erst + 24)).unwrap();
    d.write32(MockDriver::intr_offset(0, ERSTSZ), 2);
    d.write64(MockDriver::intr_offset(0, ERDP_LO), seg0);
    d.write64(MockDriver::intr_offset(0, ERSTBA_LO), erst);
    let mem = d.mem.clone();
    for round in 0..3u64 {
        for _ in 0..20 {
            d.command_ring
                .push(&mem, Trb::new(0, 0, trb_type::NOOP_COMMAND, 0));
        }
        d.write32(DOORBELL_OFFSET, 0);
        // The driver consumed everything: ERDP where the controller writes next.
        let next = if round % 2 == 0 {
            seg1 + 4 * 16
        } else {
            seg0 + 8 * 16
        };
        d.write64(MockDriver::intr_offset(0, ERDP_LO), next | ERDP_EHB);
    }
    let e: Trb = d.mem.read_obj(GuestAddress(seg1 + 3 * 16)).unwrap();
    assert_eq!(e.trb_type(), trb_type::COMMAND_COMPLETION_EVENT);
    // 60 events in a 32-TRB ring: the first lap wrote cycle 1, the second (up to seg1
    // index 11) cycle 0.
    let cycle = |at: u64| d.mem.read_obj::<Trb>(GuestAddress(at)).unwrap().cycle();
    assert!(!cycle(seg0), "second lap");
    assert!(!cycle(seg1 + 11 * 16), "second lap");
    assert!(cycle(seg1 + 12 * 16), "first lap, not yet overwritten");
    assert!(cycle(seg1 + 15 * 16));
}
