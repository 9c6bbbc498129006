//! The HD Audio controller on guest memory from the input: the first part of the input
//! becomes guest RAM (BDLs, buffers, CORB entries land wherever the registers point),
//! the rest a sequence of register writes and reads, each followed by one DMA pass of
//! the worker's (backend bookkeeping, then a service pass) while the test drains the
//! playback rings and fills the capture rings. The controller must never panic or hang.
#![no_main]

use std::sync::{Arc, Mutex};

use hospes_devices::audio::{AudioBackend, AudioError, Direction, PcmBuffer, PcmParams};
use hospes_devices::bus::BusDevice;
use hospes_devices::hda::{Hda, HdaInterrupts, worker};
use hospes_devices::legacy::IrqLine;
use hospes_devices::pci::{MsiRoutes, MsixInterrupt, PciDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x2_0000;

struct Nothing;

impl MsixInterrupt for Nothing {
    fn trigger(&self, _vector: u16) -> std::io::Result<()> {
        Ok(())
    }
}

impl MsiRoutes for Nothing {
    fn update(&self, _vector: u16, _addr: u64, _data: u32, _masked: bool) {}
}

impl IrqLine for Nothing {
    fn trigger(&self) {}
    fn set_level(&self, _high: bool) {}
}

/// Keeps every ring the controller opens, so the target can play and record.
#[derive(Default)]
struct Rings(Mutex<Vec<(Direction, Arc<PcmBuffer>)>>);

impl AudioBackend for Rings {
    fn open(
        &self,
        _id: u32,
        direction: Direction,
        _params: PcmParams,
        buffer: Arc<PcmBuffer>,
    ) -> Result<(), AudioError> {
        self.0.lock().unwrap().push((direction, buffer));
        Ok(())
    }
    fn start(&self, _id: u32) {}
    fn stop(&self, _id: u32) {}
    fn close(&self, _id: u32) {}
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (ram, ops) = data.split_at(data.len() / 2);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let _ = mem.write_slice(&ram[..ram.len().min(MEM)], GuestAddress(0));
    let rings = Arc::new(Rings::default());
    let n = Arc::new(Nothing);
    let Ok(mut hda) = Hda::new(
        mem,
        Some(rings.clone()),
        HdaInterrupts {
            msi: n.clone(),
            routes: n.clone(),
            intx: n,
        },
    ) else {
        return;
    };
    // Memory decoding and bus mastering; out of reset.
    hda.write_config(1, 0, &[0x06, 0]);
    hda.write(0, 0x08, &1u32.to_le_bytes());
    let hda = Arc::new(Mutex::new(hda));
    // Each op: offset (2 bytes, within the 16 KiB BAR), width (1 byte), value (4 bytes).
    for op in ops.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[0], op[1]])) & 0x3fff;
        let width = [1, 2, 4, 4][usize::from(op[2] & 3)];
        let value = &op[3..3 + width];
        {
            let mut h = hda.lock().unwrap();
            if op[2] & 0x80 != 0 {
                let mut out = [0u8; 4];
                h.read(0, offset, &mut out[..width]);
            } else {
                h.write(0, offset, value);
            }
        }
        worker::sync_backend(&hda);
        hda.lock().unwrap().service();
        for (direction, ring) in rings.0.lock().unwrap().iter() {
            let mut buf = [0u8; 512];
            match direction {
                Direction::Output => {
                    ring.play_into(&mut buf, true);
                }
                Direction::Input => {
                    ring.record_from(&buf);
                }
            }
        }
    }
});
