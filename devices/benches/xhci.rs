//! xHCI bulk IN path vs copying the same bytes straight into guest memory.
//!
//! The device side is the whole path a guest's bulk read takes minus KVM: the mock driver
//! queues `qd` Normal TRBs of 64 KiB on a bulk IN endpoint and rings the doorbell through
//! BAR0; the controller reads each TD from the transfer ring, hands a `Transfer` to an
//! in-memory device that answers at once with 64 KiB (a copy of its buffer, as a device
//! that produces data would), scatters the data into guest memory, writes a Transfer
//! Event and raises the interrupter; the driver reads the events and moves ERDP. The
//! direct side copies the same 64 KiB from a host buffer into the same guest buffers with
//! one `write_slice` each. Each side's figure is the median of alternating runs.
//!
//! Run: `cargo bench -p hospes-devices --bench xhci --features test-support`.

use std::time::{Duration, Instant};

use hospes_devices::usb::xhci::context::ep_type;
use hospes_devices::usb::xhci::testing::{DATA, MEM_SIZE, MockDriver, Reply, TestDevice};
use hospes_devices::usb::xhci::trb::{TRB_IOC, TRB_ISP, Trb, trb_type};
use hospes_devices::usb::{TransferResult, UsbSpeed};
use vm_memory::{Bytes, GuestAddress};

const TRANSFER: usize = 64 << 10;
/// One measurement's length.
const RUN: Duration = Duration::from_millis(300);
/// Measurements per side and row, alternating (the order flipping each round).
const ROUNDS: usize = 5;
/// Bulk IN endpoint 1: DCI 3.
const DCI: u8 = 3;

fn device(qd: u64) -> f64 {
    let mut d = MockDriver::new(MEM_SIZE);
    d.start();
    let source = vec![0xa5u8; TRANSFER];
    let (dev, _log) = TestDevice::new(UsbSpeed::Super, move |t| {
        Reply::Now(TransferResult::data_in(
            source[..t.length.min(TRANSFER)].to_vec(),
        ))
    });
    let (_, slot) = d.plug(Box::new(dev));
    assert_eq!(
        d.configure_endpoints(slot, &[(DCI, ep_type::BULK_IN, 1024)]),
        1
    );
    let mem = d.mem.clone();
    let mut bytes = 0u64;
    let start = Instant::now();
    while start.elapsed() < RUN {
        for i in 0..qd {
            let buf = DATA + i * TRANSFER as u64;
            d.ring(slot, DCI).push(
                &mem,
                Trb::new(buf, TRANSFER as u32, trb_type::NORMAL, TRB_ISP | TRB_IOC),
            );
        }
        d.doorbell(slot, DCI);
        let mut done = 0;
        while let Some(e) = d.next_event() {
            assert_eq!(e.status >> 24, 1, "transfer failed");
            done += 1;
        }
        assert_eq!(done, qd);
        bytes += qd * TRANSFER as u64;
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

fn direct(qd: u64) -> f64 {
    let d = MockDriver::new(MEM_SIZE);
    let source = vec![0xa5u8; TRANSFER];
    let mut bytes = 0u64;
    let start = Instant::now();
    while start.elapsed() < RUN {
        for i in 0..qd {
            let buf = DATA + i * TRANSFER as u64;
            d.mem
                .write_slice(&source, GuestAddress(buf))
                .expect("guest RAM");
        }
        bytes += qd * TRANSFER as u64;
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    println!(
        "xHCI bulk IN of {} KiB transfers vs memcpy into guest memory; each side the median \
         of {ROUNDS} alternating {} ms runs",
        TRANSFER >> 10,
        RUN.as_millis()
    );
    println!(
        "{:<8} {:>3} {:>12} {:>12} {:>7}",
        "size", "qd", "xhci MB/s", "direct MB/s", "ratio"
    );
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    for qd in [1u64, 8] {
        let name = format!("{}K-qd{qd}", TRANSFER >> 10);
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let (mut ds, mut hs) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            if round % 2 == 0 {
                hs.push(direct(qd));
                ds.push(device(qd));
            } else {
                ds.push(device(qd));
                hs.push(direct(qd));
            }
        }
        let (h, dv) = (median(hs), median(ds));
        println!(
            "{:>7}K {:>3} {:>12.0} {:>12.0} {:>6.0}%",
            TRANSFER >> 10,
            qd,
            dv / 1e6,
            h / 1e6,
            100.0 * dv / h
        );
    }
}
