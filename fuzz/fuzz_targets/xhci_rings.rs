//! The xHCI controller on guest memory from the input: the mock driver sets the
//! controller up with a device in slot 1 (bulk IN, bulk OUT and interrupt IN endpoints),
//! then the input overwrites the command ring, the slot's transfer rings, the Input
//! Context, the Output Device Context and the DCBAA, and drives doorbells, register
//! writes, late completions and hot-plug. The controller must never panic or hang.
#![no_main]

use hospes_devices::bus::BusDevice;
use hospes_devices::usb::xhci::context::ep_type;
use hospes_devices::usb::xhci::regs::DOORBELL_OFFSET;
use hospes_devices::usb::xhci::testing::{
    BAR, COMMAND_RING, DCBAA, INPUT_CONTEXT, MockDriver, RING_BYTES, Reply, TRANSFER_RINGS,
    TestDevice,
};
use hospes_devices::usb::{TransferResult, UsbSpeed};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

/// RAM for the mock's layout (rings up to 4 MiB) plus room for data buffers.
const MEM: usize = 0x50_0000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (ops, bytes) = data.split_at((data.len() / 4).min(96));
    let mut d = MockDriver::new(MEM);
    d.start();
    let (dev, log) = TestDevice::new(UsbSpeed::High, |t| {
        if t.endpoint == 0x82 {
            Reply::Later
        } else if t.is_in() {
            Reply::Now(TransferResult::data_in(vec![0x5a; t.length.min(4096)]))
        } else {
            Reply::Now(TransferResult::data_out(t.data.len()))
        }
    });
    let (_, slot) = d.plug(Box::new(dev));
    d.configure_endpoints(
        slot,
        &[
            (3, ep_type::BULK_IN, 512),
            (4, ep_type::BULK_OUT, 512),
            (5, ep_type::INTERRUPT_IN, 8),
        ],
    );
    let ring = |dci: u64| TRANSFER_RINGS + dci * RING_BYTES;
    let targets = [
        COMMAND_RING,
        ring(1),
        ring(3),
        ring(4),
        ring(5),
        INPUT_CONTEXT,
        MockDriver::output_context(slot),
        DCBAA,
    ];
    let part = bytes.len().div_ceil(targets.len()).max(1);
    for (chunk, &at) in bytes.chunks(part).zip(&targets) {
        let _ = d.mem.write_slice(chunk, GuestAddress(at));
    }
    for op in ops.chunks(3) {
        let (a, b) = (op.get(1).copied().unwrap_or(0), op.get(2).copied().unwrap_or(0));
        match op[0] % 6 {
            0 => d.write32(DOORBELL_OFFSET, 0),
            1 => d.doorbell(a % 66, b),
            2 => {
                let offset = u64::from(u16::from_le_bytes([a, b])) & 0x3ffc;
                let value = u32::from_le_bytes([b, a, op[0], a ^ b]);
                d.xhci
                    .lock()
                    .unwrap()
                    .write(BAR, offset, &value.to_le_bytes());
            }
            3 => {
                let held: Vec<_> = log.lock().unwrap().held.drain(..).collect();
                for (t, done) in held {
                    done.complete(TransferResult::data_in(vec![a; t.length.min(usize::from(b))]));
                }
                d.xhci.lock().unwrap().process_completions();
            }
            4 => {
                let mut x = d.xhci.lock().unwrap();
                if let Some(dev) = x.detach(a % 10) {
                    let _ = x.attach(dev);
                }
            }
            _ => {
                d.events();
            }
        }
    }
});
