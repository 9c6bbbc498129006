//! The e1000e card on guest memory from the input: the input fills the transmit and
//! receive rings and the memory behind them, writes registers (ring bases, lengths, heads
//! and tails, RCTL/TCTL/RFCTL, interrupt and MSI-X registers) and hands frames to the
//! receive path. The card must never panic or hang.
#![no_main]

use std::sync::Arc;

use hospes_devices::bus::BusDevice;
use hospes_devices::e1000e::regs::*;
use hospes_devices::e1000e::{BAR_MSIX, BAR_REGS, E1000e, E1000eInterrupts};
use hospes_devices::legacy::IrqLine;
use hospes_devices::pci::config::{COMMAND_BUS_MASTER, COMMAND_MEMORY, REG_COMMAND_STATUS};
use hospes_devices::pci::{MsiRoutes, MsixInterrupt, PciDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x10_0000;
const BAR0: u64 = 0xc000_0000;
const BAR3: u64 = 0xc002_0000;
const TX_RING: u64 = 0x1000;
const RX_RING: u64 = 0x2000;

struct Nowhere;

impl MsixInterrupt for Nowhere {
    fn trigger(&self, _vector: u16) -> std::io::Result<()> {
        Ok(())
    }
}

impl MsiRoutes for Nowhere {
    fn update(&self, _vector: u16, _addr: u64, _data: u32, _masked: bool) {}
}

impl IrqLine for Nowhere {
    fn trigger(&self) {}
    fn set_level(&self, _high: bool) {}
}

/// Registers the input may write, with their interesting values nearby.
const REGS: &[u64] = &[
    CTRL, EERD, MDIC, ICR, ICS, IMS, IMC, EIAC, IAM, IVAR, CTRL_EXT, RCTL, TCTL, RDBAL,
    RDBAH, RDLEN, RDH, RDT, TDBAL, TDBAH, TDLEN, TDH, TDT, RXCSUM, RFCTL, MTA, RA, RA + 4,
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (ops, bytes) = data.split_at((data.len() / 4).min(128));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = Arc::new(Nowhere);
    let mut card = E1000e::new(
        mem.clone(),
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        E1000eInterrupts {
            msix: n.clone(),
            routes: n.clone(),
            intx: n,
        },
    )
    .unwrap();
    card.config_mut().set_bar_address(BAR_REGS, BAR0).unwrap();
    card.config_mut().set_bar_address(BAR_MSIX, BAR3).unwrap();
    let cmd = (COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes();
    card.write_config(REG_COMMAND_STATUS, 0, &cmd);
    let w = |card: &mut E1000e, reg: u64, v: u32| card.write(BAR0, reg, &v.to_le_bytes());
    // A plausible start: both rings at fixed places, both queues on.
    w(&mut card, TDBAL, TX_RING as u32);
    w(&mut card, TDLEN, 256);
    w(&mut card, RDBAL, RX_RING as u32);
    w(&mut card, RDLEN, 256);
    w(&mut card, RDT, 15);
    w(&mut card, RCTL, RCTL_EN | RCTL_BAM | RCTL_UPE | RCTL_LPE);
    w(&mut card, TCTL, TCTL_EN);
    // Rings and buffers from the input.
    let _ = mem.write_slice(bytes, GuestAddress(TX_RING));
    let core = card.core();
    for op in ops.chunks(6) {
        let b = |i: usize| op.get(i).copied().unwrap_or(0);
        let value = u32::from_le_bytes([b(2), b(3), b(4), b(5)]);
        match b(0) % 8 {
            0 | 1 => {
                let reg = REGS[usize::from(b(1)) % REGS.len()];
                // Small values for lengths and indices, raw ones otherwise.
                let v = if b(0) & 0x80 != 0 { value & 0x3ff } else { value };
                w(&mut card, reg, v);
            }
            2 => {
                let reg = u64::from(u16::from_le_bytes([b(1), b(2)])) * 4 % (128 * 1024);
                let mut out = [0u8; 4];
                card.read(BAR0, reg, &mut out);
            }
            3 => {
                let reg = u64::from(b(1)) * 4 % 0x4000;
                card.write(BAR3, reg, &value.to_le_bytes());
            }
            4 | 5 => {
                let mut sent = 0usize;
                core.lock()
                    .unwrap()
                    .transmit(&mut |f| sent += f.len(), usize::from(b(1)) + 1);
            }
            _ => {
                let start = usize::from(b(1)) * 16 % bytes.len().max(1);
                let len = (value as usize) % 9000;
                let end = (start + len).min(bytes.len());
                let mut frame = bytes[start..end].to_vec();
                if frame.len() >= 6 && b(0) & 0x80 != 0 {
                    frame[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
                }
                core.lock().unwrap().receive(&frame);
            }
        }
    }
});
