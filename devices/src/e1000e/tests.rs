//! The card driven the way a driver drives it: registers through BAR0, descriptor rings
//! and buffers in guest memory, interrupts recorded.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::core::{EEPROM_SUM, MSI_VECTOR};
use super::regs::*;
use super::worker::E1000eWorker;
use super::*;
use crate::legacy::IrqLine;
use crate::pci::config::{COMMAND_BUS_MASTER, COMMAND_MEMORY};
use crate::pci::{MsiRoutes, MsixInterrupt};
use crate::virtio::net::csum::ones_complement_sum;
use crate::virtio::net::{Connection, ConnectionSlot};

const MEM: usize = 4 << 20;
const BAR0: u64 = 0xc000_0000;
const BAR3: u64 = 0xc002_0000;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const TX_RING: u64 = 0x10_0000;
const RX_RING: u64 = 0x11_0000;
const TX_BUF: u64 = 0x20_0000;
const RX_BUF: u64 = 0x30_0000;
const RING: u32 = 8;

#[derive(Default)]
struct Recorder {
    fired: Mutex<Vec<u16>>,
    routes: Mutex<Vec<(u16, u64, u32, bool)>>,
    level: AtomicBool,
}

impl MsixInterrupt for Recorder {
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        self.fired.lock().unwrap().push(vector);
        Ok(())
    }
}

impl MsiRoutes for Recorder {
    fn update(&self, vector: u16, addr: u64, data: u32, masked: bool) {
        self.routes
            .lock()
            .unwrap()
            .push((vector, addr, data, masked));
    }
}

impl IrqLine for Recorder {
    fn trigger(&self) {}
    fn set_level(&self, high: bool) {
        self.level.store(high, Ordering::SeqCst);
    }
}

/// A driver on the host side: BARs mapped, memory decoding and bus mastering on.
struct Driver {
    dev: E1000e,
    mem: GuestMemoryMmap,
    irq: Arc<Recorder>,
    tx_tail: u32,
    rx_tail: u32,
}

impl Driver {
    fn new() -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let irq = Arc::new(Recorder::default());
        let mut dev = E1000e::new(
            mem.clone(),
            MAC,
            E1000eInterrupts {
                msix: irq.clone(),
                routes: irq.clone(),
                intx: irq.clone(),
            },
        )
        .unwrap();
        dev.config_mut().set_bar_address(BAR_REGS, BAR0).unwrap();
        dev.config_mut().set_bar_address(BAR_MSIX, BAR3).unwrap();
        let cmd = (COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes();
        let changes = dev.write_config(1, 0, &cmd);
        assert_eq!(changes.len(), 2);
        Driver {
            dev,
            mem,
            irq,
            tx_tail: 0,
            rx_tail: 0,
        }
    }

    fn read(&mut self, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read(BAR0, reg, &mut b);
        u32::from_le_bytes(b)
    }

    fn write(&mut self, reg: u64, v: u32) {
        self.dev.write(BAR0, reg, &v.to_le_bytes());
    }

    fn link_up(&mut self) {
        self.dev.core().lock().unwrap().set_link(true);
    }

    fn eeprom(&mut self, word: u32) -> u16 {
        self.write(EERD, word << EERD_ADDR_SHIFT | EERD_START);
        let v = self.read(EERD);
        assert_ne!(v & EERD_DONE, 0);
        (v >> 16) as u16
    }

    fn phy_read(&mut self, phy: u32, reg: u32) -> Result<u16, ()> {
        self.write(
            MDIC,
            MDIC_OP_READ | phy << MDIC_PHY_SHIFT | reg << MDIC_REG_SHIFT,
        );
        let v = self.read(MDIC);
        assert_ne!(v & MDIC_READY, 0);
        if v & MDIC_ERROR != 0 {
            return Err(());
        }
        Ok(v as u16)
    }

    fn setup_tx(&mut self) {
        self.write(TDBAL, TX_RING as u32);
        self.write(TDBAH, 0);
        self.write(TDLEN, RING * 16);
        self.write(TDH, 0);
        self.write(TDT, 0);
        self.write(TCTL, TCTL_EN);
    }

    /// Rx ring of RING descriptors with 2 KiB buffers; all but one handed to the card.
    fn setup_rx(&mut self, rctl_extra: u32) {
        for i in 0..u64::from(RING) {
            self.put_rx_desc(i, RX_BUF + i * 0x800);
        }
        self.write(RDBAL, RX_RING as u32);
        self.write(RDBAH, 0);
        self.write(RDLEN, RING * 16);
        self.write(RDH, 0);
        self.rx_tail = RING - 1;
        self.write(RDT, self.rx_tail);
        self.write(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC | rctl_extra);
    }

    fn put_rx_desc(&mut self, i: u64, buf: u64) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&buf.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(RX_RING + i * 16))
            .unwrap();
    }

    fn rx_desc(&self, i: u32) -> [u8; 16] {
        let mut d = [0u8; 16];
        self.mem
            .read_slice(&mut d, GuestAddress(RX_RING + u64::from(i) * 16))
            .unwrap();
        d
    }

    /// Puts a descriptor at the tail and moves TDT past it (without processing).
    fn push_tx(&mut self, d: [u8; 16]) {
        let at = TX_RING + u64::from(self.tx_tail) * 16;
        self.mem.write_slice(&d, GuestAddress(at)).unwrap();
        self.tx_tail = (self.tx_tail + 1) % RING;
        self.write(TDT, self.tx_tail);
    }

    /// Runs the transmit ring and returns the frames it sent.
    fn transmit(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let core = self.dev.core();
        while core
            .lock()
            .unwrap()
            .transmit(&mut |f| out.push(f.to_vec()), 4)
        {}
        out
    }

    fn receive(&mut self, frame: &[u8]) -> Rx {
        self.dev.core().lock().unwrap().receive(frame)
    }

    fn tx_sta(&self, i: u32) -> u8 {
        let mut b = [0u8; 1];
        self.mem
            .read_slice(&mut b, GuestAddress(TX_RING + u64::from(i) * 16 + 12))
            .unwrap();
        b[0]
    }

    fn errors(&self) -> u64 {
        self.dev
            .counters()
            .descriptor_errors
            .load(Ordering::Relaxed)
    }

    fn fired(&self) -> Vec<u16> {
        std::mem::take(&mut *self.irq.fired.lock().unwrap())
    }

    fn enable_msix(&mut self) {
        // The MSI-X capability's control is the last capability; find it by id.
        let cap = self.find_cap(0x11);
        let dword = self.dev.read_config(cap / 4);
        let v = dword | 0x8000 << 16;
        self.dev.write_config(cap / 4, 0, &v.to_le_bytes());
        for vector in 0..5u64 {
            // Unmask each entry with an address and data.
            let entry = vector * 16;
            self.dev.write(BAR3, entry, &(0xfee0_0000u32).to_le_bytes());
            self.dev
                .write(BAR3, entry + 8, &(0x40 + vector as u32).to_le_bytes());
            self.dev.write(BAR3, entry + 12, &0u32.to_le_bytes());
        }
    }

    fn find_cap(&mut self, id: u8) -> usize {
        let mut at = (self.dev.read_config(13) & 0xff) as usize;
        while at != 0 {
            let v = self.dev.read_config(at / 4);
            if v as u8 == id {
                return at;
            }
            at = ((v >> 8) & 0xff) as usize;
        }
        panic!("no capability {id:#x}");
    }
}

fn legacy_tx(addr: u64, len: u16, cmd: u8, cso: u8, css: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..10].copy_from_slice(&len.to_le_bytes());
    d[10] = cso;
    d[11] = cmd;
    d[13] = css;
    d
}

const EOP: u8 = 1;
const IC: u8 = 4;
const RS: u8 = 8;
const DEXT: u8 = 0x20;
const TSE: u8 = 4;

struct Ctx {
    ipcss: u8,
    ipcso: u8,
    ipcse: u16,
    tucss: u8,
    tucso: u8,
    tucse: u16,
    tucmd: u8,
    paylen: u32,
    hdrlen: u8,
    mss: u16,
}

fn context_tx(c: &Ctx) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0] = c.ipcss;
    d[1] = c.ipcso;
    d[2..4].copy_from_slice(&c.ipcse.to_le_bytes());
    d[4] = c.tucss;
    d[5] = c.tucso;
    d[6..8].copy_from_slice(&c.tucse.to_le_bytes());
    let dw = c.paylen & 0xf_ffff | u32::from(c.tucmd | DEXT) << 24;
    d[8..12].copy_from_slice(&dw.to_le_bytes());
    d[13] = c.hdrlen;
    d[14..16].copy_from_slice(&c.mss.to_le_bytes());
    d
}

fn data_tx(addr: u64, len: u32, dcmd: u8, popts: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    let dw = len & 0xf_ffff | 1 << 20 | u32::from(dcmd | DEXT) << 24;
    d[8..12].copy_from_slice(&dw.to_le_bytes());
    d[13] = popts;
    d
}

/// An IPv4 frame from 10.0.0.2 to 10.0.0.1 with `proto` and `l4` (whose checksum field
/// the caller filled as it likes); the IP header checksum is left zero.
fn ipv4_frame(dst: [u8; 6], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[
        0x12, 0x34, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
    ]);
    f.extend_from_slice(l4);
    f
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0x30, 0x39, 0x00, 0x07];
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0x30, 0x39, 0x00, 0x50];
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// The pseudo-header sum (not complemented) of an IPv4 frame, with `len` as the
/// L4 length.
fn pseudo_sum(f: &[u8], len: usize) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(&f[26..34]);
    p.extend_from_slice(&[0, f[23]]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    ones_complement_sum(&p)
}

fn ip_ok(f: &[u8]) -> bool {
    ones_complement_sum(&f[14..34]) == 0xffff
}

fn l4_ok(f: &[u8]) -> bool {
    let l4 = &f[34..];
    let s = u32::from(pseudo_sum(f, l4.len())) + u32::from(ones_complement_sum(l4));
    ((s & 0xffff) + (s >> 16)) as u16 == 0xffff
}

fn with_ip_checksum(mut f: Vec<u8>) -> Vec<u8> {
    let s = !ones_complement_sum(&f[14..34]);
    f[24..26].copy_from_slice(&s.to_be_bytes());
    f
}

#[test]
fn reset_loads_the_mac_into_ra0_and_reports_a_gigabit_link() {
    let mut d = Driver::new();
    d.link_up();
    d.write(RA, 0);
    d.write(IMS, 0xffff);
    d.write(CTRL, CTRL_RST);
    assert_eq!(d.read(CTRL) & CTRL_RST, 0, "RST clears itself");
    // A byte read takes the byte of its dword.
    let mut b = [0u8; 2];
    d.dev.read(BAR0, RA + 4 + 1, &mut b[..1]);
    d.dev.read(BAR0, RA + 4 + 2, &mut b[1..]);
    assert_eq!(b, [0x56, 0]);
    assert_eq!(d.read(RA), 0x1200_5452);
    assert_eq!(d.read(RA + 4), 0x5634 | RAH_AV);
    assert_eq!(d.read(IMS), 0, "reset masks every cause");
    let status = d.read(STATUS);
    assert_eq!(
        status & (STATUS_LU | STATUS_FD | 3 << 6),
        STATUS_LU | STATUS_FD | STATUS_SPEED_1000
    );
    assert_ne!(d.read(EECD) & EECD_AUTO_RD, 0);
    // The link change of the start waits in ICR for the driver.
    assert_ne!(d.read(ICR) & ICR_LSC, 0);
    assert_eq!(d.read(ICR), 0, "ICR clears on read");
    // GIO master disable is reported back through STATUS.
    d.write(CTRL, CTRL_SLU | CTRL_GIO_MASTER_DISABLE);
    assert_eq!(d.read(STATUS) & STATUS_GIO_MASTER_ENABLE, 0);
}

#[test]
fn eeprom_holds_the_mac_and_sums_to_baba() {
    let mut d = Driver::new();
    let words: Vec<u16> = (0..64).map(|w| d.eeprom(w)).collect();
    assert_eq!(words[..3], [0x5452, 0x1200, 0x5634]);
    assert_eq!(
        words.iter().fold(0u16, |s, w| s.wrapping_add(*w)),
        EEPROM_SUM
    );
    assert_eq!(words[0x0d], DEVICE_ID);
    // Past the EEPROM: all ones, not a panic.
    assert_eq!(d.eeprom(0x3fff), 0xffff);
    // EECD request/grant handshake.
    d.write(EECD, EECD_REQ);
    assert_ne!(d.read(EECD) & EECD_GNT, 0);
    d.write(EECD, 0);
    assert_eq!(d.read(EECD) & EECD_GNT, 0);
}

#[test]
fn the_phy_answers_at_address_1_with_its_id_and_a_negotiated_link() {
    let mut d = Driver::new();
    d.link_up();
    assert_eq!(d.phy_read(1, 2), Ok(0x0141));
    assert_eq!(d.phy_read(1, 3), Ok(0x0cb0));
    let bmsr = d.phy_read(1, 1).unwrap();
    assert_eq!(bmsr & 0x24, 0x24, "link up, autonegotiation complete");
    assert_eq!(d.phy_read(2, 1), Err(()), "no PHY at address 2");
    // A write sticks; BMCR reset restores the defaults.
    d.write(
        MDIC,
        MDIC_OP_WRITE | 1 << MDIC_PHY_SHIFT | 4 << MDIC_REG_SHIFT | 0x01e1,
    );
    assert_eq!(d.phy_read(1, 4), Ok(0x01e1));
    d.write(MDIC, MDIC_OP_WRITE | 1 << MDIC_PHY_SHIFT | 0x8000);
    assert_eq!(d.phy_read(1, 4), Ok(0x0de1));
    assert_eq!(d.phy_read(1, 0), Ok(0x1140));
    // Without a peer the link is down.
    d.dev.core().lock().unwrap().set_link(false);
    assert_eq!(d.phy_read(1, 1).unwrap() & 4, 0);
    assert_eq!(d.read(STATUS) & STATUS_LU, 0);
}

#[test]
fn legacy_transmit_inserts_the_checksum_and_writes_back_dd() {
    let mut d = Driver::new();
    d.setup_tx();
    let mut f = with_ip_checksum(ipv4_frame([0xff; 6], 17, &udp(b"hello e1000e")));
    // Seed the UDP checksum with the pseudo-header sum, as a driver does for CSO/CSS.
    let seed = pseudo_sum(&f, f.len() - 34);
    f[40..42].copy_from_slice(&seed.to_be_bytes());
    // Two buffers for one frame.
    d.mem.write_slice(&f[..20], GuestAddress(TX_BUF)).unwrap();
    d.mem
        .write_slice(&f[20..], GuestAddress(TX_BUF + 0x1000))
        .unwrap();
    d.push_tx(legacy_tx(TX_BUF, 20, 0, 0, 0));
    d.push_tx(legacy_tx(
        TX_BUF + 0x1000,
        (f.len() - 20) as u16,
        EOP | IC | RS,
        40,
        34,
    ));
    let sent = d.transmit();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].len(), f.len());
    assert!(l4_ok(&sent[0]), "UDP checksum finished");
    assert_eq!(sent[0][42..], f[42..]);
    assert_eq!(d.read(TDH), 2);
    assert_eq!(d.tx_sta(1) & 1, 1, "DD on the RS descriptor");
    assert_eq!(d.tx_sta(0) & 1, 0, "no write-back without RS");
    assert_ne!(d.read(ICR) & (ICR_TXDW | ICR_TXQE), 0);
    assert_eq!(d.read(GPTC), 1);
    assert_eq!(d.read(GOTCL), f.len() as u32);
    assert_eq!(d.read(GPTC), 0, "statistics clear on read");
}

#[test]
fn extended_transmit_fills_ip_and_tcp_checksums() {
    let mut d = Driver::new();
    d.setup_tx();
    let mut f = ipv4_frame(MAC, 6, &tcp(1000, 0x18, &[7u8; 333]));
    f[24] = 0xaa; // garbage where the IP checksum goes
    let seed = pseudo_sum(&f, f.len() - 34);
    f[50..52].copy_from_slice(&seed.to_be_bytes());
    d.mem.write_slice(&f, GuestAddress(TX_BUF)).unwrap();
    d.push_tx(context_tx(&Ctx {
        ipcss: 14,
        ipcso: 24,
        ipcse: 33,
        tucss: 34,
        tucso: 50,
        tucse: 0,
        tucmd: 0x03,
        paylen: f.len() as u32,
        hdrlen: 54,
        mss: 0,
    }));
    d.push_tx(data_tx(TX_BUF, f.len() as u32, EOP | RS, 3));
    let sent = d.transmit();
    assert_eq!(sent.len(), 1);
    assert!(ip_ok(&sent[0]), "IP header checksum");
    assert!(l4_ok(&sent[0]), "TCP checksum");
}

#[test]
fn tso_splits_the_payload_into_mss_sized_frames_with_valid_headers() {
    let mut d = Driver::new();
    d.setup_tx();
    let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
    let mut f = ipv4_frame(MAC, 6, &tcp(0x1000_0000, 0x19, &payload)); // FIN|PSH|ACK
    // The TSO seed: pseudo-header sum without the length.
    let seed = pseudo_sum(&f, 0);
    f[50..52].copy_from_slice(&seed.to_be_bytes());
    d.mem.write_slice(&f[..54], GuestAddress(TX_BUF)).unwrap();
    d.mem
        .write_slice(&f[54..], GuestAddress(TX_BUF + 0x1000))
        .unwrap();
    d.push_tx(context_tx(&Ctx {
        ipcss: 14,
        ipcso: 24,
        ipcse: 33,
        tucss: 34,
        tucso: 50,
        tucse: 0,
        tucmd: 0x03 | TSE,
        paylen: payload.len() as u32,
        hdrlen: 54,
        mss: 1000,
    }));
    d.push_tx(data_tx(TX_BUF, 54, TSE, 3));
    d.push_tx(data_tx(
        TX_BUF + 0x1000,
        payload.len() as u32,
        EOP | RS | TSE,
        3,
    ));
    let sent = d.transmit();
    assert_eq!(
        sent.iter().map(Vec::len).collect::<Vec<_>>(),
        [1054, 1054, 554]
    );
    let mut rebuilt = Vec::new();
    for (i, s) in sent.iter().enumerate() {
        assert!(ip_ok(s), "segment {i} IP checksum");
        assert!(l4_ok(s), "segment {i} TCP checksum");
        assert_eq!(
            u16::from_be_bytes([s[16], s[17]]) as usize,
            s.len() - 14,
            "IP total length"
        );
        assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16);
        let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
        assert_eq!(seq, 0x1000_0000 + 1000 * i as u32);
        let flags = s[47];
        assert_eq!(flags & 0x09 != 0, i == 2, "FIN/PSH only on the last");
        rebuilt.extend_from_slice(&s[54..]);
    }
    assert_eq!(rebuilt, payload);
    assert_eq!(d.read(TSCTC), 3);
}

#[test]
fn legacy_receive_writes_the_frame_status_and_checksum_results() {
    let mut d = Driver::new();
    d.setup_rx(0);
    d.write(IMS, ICR_RXT0);
    let mut u = udp(b"to the guest");
    let f0 = with_ip_checksum(ipv4_frame(MAC, 17, &u));
    let s = !{
        let l4 = &f0[34..];
        let t = u32::from(pseudo_sum(&f0, l4.len())) + u32::from(ones_complement_sum(l4));
        ((t & 0xffff) + (t >> 16)) as u16
    };
    u[6..8].copy_from_slice(&s.to_be_bytes());
    let f = with_ip_checksum(ipv4_frame(MAC, 17, &u));
    assert!(l4_ok(&f));
    assert_eq!(d.receive(&f), Rx::Delivered);
    let desc = d.rx_desc(0);
    assert_eq!(u16::from_le_bytes([desc[8], desc[9]]) as usize, f.len());
    assert_eq!(desc[12] & 0x63, 0x63, "DD, EOP, IPCS, TCPCS");
    assert_eq!(desc[13], 0, "no errors");
    let mut got = vec![0u8; f.len()];
    d.mem.read_slice(&mut got, GuestAddress(RX_BUF)).unwrap();
    assert_eq!(got, f);
    assert_eq!(d.read(RDH), 1);
    assert!(d.irq.level.load(Ordering::SeqCst), "INTx follows ICR & IMS");
    assert_ne!(d.read(ICR) & ICR_RXT0, 0);
    assert!(!d.irq.level.load(Ordering::SeqCst));
    // A corrupted checksum is reported as an error, the frame still delivered.
    let mut bad = f.clone();
    bad[44] ^= 0xff;
    assert_eq!(d.receive(&bad), Rx::Delivered);
    assert_eq!(d.rx_desc(1)[13] & 0x20, 0x20, "TCPE");
    assert_eq!(d.read(GPRC), 2);
}

#[test]
fn extended_receive_descriptors_get_the_extended_write_back() {
    let mut d = Driver::new();
    d.setup_rx(0);
    d.write(RFCTL, RFCTL_EXSTEN);
    let f = with_ip_checksum(ipv4_frame(MAC, 99, &[1, 2, 3, 4]));
    assert_eq!(d.receive(&f), Rx::Delivered);
    let desc = d.rx_desc(0);
    let staterr = u32::from_le_bytes([desc[8], desc[9], desc[10], desc[11]]);
    assert_eq!(staterr & 0x43, 0x43, "DD, EOP, IPCS");
    assert_eq!(staterr >> 24, 0);
    assert_eq!(u16::from_le_bytes([desc[12], desc[13]]) as usize, f.len());
    let mut got = vec![0u8; f.len()];
    d.mem.read_slice(&mut got, GuestAddress(RX_BUF)).unwrap();
    assert_eq!(got, f);
}

#[test]
fn the_receive_ring_wraps_and_a_full_ring_holds_the_frame() {
    let mut d = Driver::new();
    d.setup_rx(0);
    let frame = |n: u8| {
        let mut f = vec![n; 60];
        f[..6].copy_from_slice(&MAC);
        f
    };
    let mut delivered = 0u8;
    let mut seen = 0u32;
    for round in 0..3 {
        // Fill what the driver gave: RDT - RDH descriptors.
        loop {
            match d.receive(&frame(delivered)) {
                Rx::Delivered => delivered += 1,
                Rx::NoRoom => break,
                Rx::Dropped => panic!("dropped in round {round}"),
            }
        }
        assert_eq!(d.read(RDH), d.rx_tail, "RDH == RDT: the ring is full");
        // The driver consumes everything and hands the descriptors back.
        while seen < u32::from(delivered) {
            let i = seen % RING;
            let desc = d.rx_desc(i);
            assert_eq!(desc[12] & 3, 3);
            let mut b = [0u8; 1];
            d.mem
                .read_slice(&mut b, GuestAddress(RX_BUF + u64::from(i) * 0x800 + 6))
                .unwrap();
            assert_eq!(b[0], seen as u8, "frames in order");
            d.put_rx_desc(u64::from(i), RX_BUF + u64::from(i) * 0x800);
            seen += 1;
        }
        d.rx_tail = (d.read(RDH) + RING - 1) % RING;
        d.write(RDT, d.rx_tail);
    }
    assert_eq!(delivered, 3 * (RING as u8 - 1));
    assert_eq!(d.dev.counters().rx_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn a_large_frame_spans_descriptors_only_with_long_packets_enabled() {
    let mut d = Driver::new();
    d.setup_rx(0);
    let mut f = vec![0x5a; 5000];
    f[..6].copy_from_slice(&MAC);
    assert_eq!(d.receive(&f), Rx::Dropped, "LPE off");
    d.write(RCTL, RCTL_EN | RCTL_SECRC | RCTL_LPE);
    assert_eq!(d.receive(&f), Rx::Delivered);
    assert_eq!(d.read(RDH), 3);
    assert_eq!(d.rx_desc(0)[12] & 3, 1, "DD without EOP");
    assert_eq!(d.rx_desc(2)[12] & 3, 3, "EOP on the last");
    assert_eq!(
        u16::from_le_bytes([d.rx_desc(2)[8], d.rx_desc(2)[9]]),
        5000 - 4096
    );
}

#[test]
fn filters_take_our_address_broadcast_and_hashed_multicast_only() {
    let mut d = Driver::new();
    d.setup_rx(0);
    let to = |dst: [u8; 6]| {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst);
        f
    };
    assert_eq!(d.receive(&to([2, 0, 0, 0, 0, 1])), Rx::Dropped);
    assert_eq!(d.receive(&to([0xff; 6])), Rx::Delivered);
    let mcast = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
    assert_eq!(d.receive(&to(mcast)), Rx::Dropped);
    // MO = 0: hash = dst[4] >> 4 | dst[5] << 4, and dst[4] is 0.
    let hash = 0xfbu32 << 4;
    d.write(MTA + u64::from(hash >> 5) * 4, 1 << (hash & 31));
    assert_eq!(d.receive(&to(mcast)), Rx::Delivered);
    d.write(RCTL, RCTL_EN | RCTL_SECRC | RCTL_UPE);
    assert_eq!(d.receive(&to([2, 0, 0, 0, 0, 1])), Rx::Delivered);
    // Without SECRC the card appends the FCS.
    d.write(RCTL, RCTL_EN | RCTL_BAM);
    let f = to([0xff; 6]);
    assert_eq!(d.receive(&f), Rx::Delivered);
    let i = d.read(RDH) - 1;
    assert_eq!(u16::from_le_bytes([d.rx_desc(i)[8], d.rx_desc(i)[9]]), 64);
}

#[test]
fn bad_descriptors_drop_their_packet_count_an_error_and_the_ring_goes_on() {
    let mut d = Driver::new();
    d.setup_tx();
    let f = vec![0x11u8; 64];
    d.mem.write_slice(&f, GuestAddress(TX_BUF)).unwrap();
    // A buffer outside RAM, an impossible length, a descriptor type that does not exist.
    d.push_tx(legacy_tx(1 << 40, 64, EOP | RS, 0, 0));
    d.push_tx(data_tx(TX_BUF, 0xf_ffff, EOP, 0));
    let mut weird = data_tx(TX_BUF, 64, EOP, 0);
    weird[10] |= 0xf0;
    d.push_tx(weird);
    // A checksum offset past the frame.
    d.push_tx(legacy_tx(TX_BUF, 64, EOP | IC, 200, 0));
    d.push_tx(legacy_tx(TX_BUF, 64, EOP | RS, 0, 0));
    let sent = d.transmit();
    assert_eq!(sent, vec![f.clone()], "only the good frame leaves");
    assert_eq!(d.errors(), 4);
    assert_eq!(d.read(TDH), 5);
    assert_eq!(d.tx_sta(0) & 1, 1, "the bad descriptor is still completed");

    // A ring outside RAM: every descriptor is an error, the head still moves.
    d.write(TDBAL, 0xffff_f000);
    d.write(TDBAH, 0xff);
    d.tx_tail = 2;
    d.write(TDT, 2);
    assert!(d.transmit().is_empty());
    assert_eq!(d.read(TDH), 2);
    // A tail past the ring: nothing happens.
    d.write(TDT, 500);
    assert!(d.transmit().is_empty());

    // Receive buffers outside RAM: the frame is dropped, the descriptor returned.
    d.setup_rx(0);
    d.put_rx_desc(0, 1 << 40);
    let mut g = vec![0u8; 60];
    g[..6].copy_from_slice(&MAC);
    let before = d.errors();
    assert_eq!(d.receive(&g), Rx::Dropped);
    assert_eq!(d.errors(), before + 1);
    assert_eq!(d.rx_desc(0)[12] & 1, 1);
    assert_eq!(d.receive(&g), Rx::Delivered);
    // A receive ring outside RAM and a tail past it: dropped, no panic.
    d.write(RDBAL, 0xffff_0000);
    d.write(RDBAH, 0xffff);
    assert_eq!(d.receive(&g), Rx::Dropped);
    d.write(RDT, 9999);
    assert_eq!(d.receive(&g), Rx::Dropped);
}

#[test]
fn msix_routes_causes_through_ivar_and_auto_clears() {
    let mut d = Driver::new();
    d.enable_msix();
    d.setup_rx(0);
    d.setup_tx();
    // RxQ0 -> vector 1, TxQ0 -> vector 2, Other -> vector 4.
    d.write(IVAR, (8 | 1) | (8 | 2) << 8 | (8 | 4) << 16);
    d.write(EIAC, ICR_RXQ0 | ICR_TXQ0);
    d.write(IMS, ICR_RXQ0 | ICR_TXQ0 | ICR_OTHER | ICR_LSC);
    d.fired();
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&MAC);
    assert_eq!(d.receive(&f), Rx::Delivered);
    assert_eq!(d.fired(), [1]);
    assert_eq!(d.read(ICR) & ICR_RXQ0, 0, "EIAC cleared RxQ0");
    d.mem.write_slice(&f, GuestAddress(TX_BUF)).unwrap();
    d.push_tx(legacy_tx(TX_BUF, 60, EOP | RS, 0, 0));
    d.transmit();
    assert_eq!(d.fired(), [2]);
    d.link_up();
    assert_eq!(d.fired(), [4]);
    assert!(!d.irq.level.load(Ordering::SeqCst), "no INTx under MSI-X");
    // A cause without a valid IVAR entry fires nothing.
    d.write(IVAR, 0);
    d.write(ICS, ICR_RXT0);
    assert!(d.fired().is_empty());
    // Masked in IMS: nothing; unmasking delivers the pending cause.
    d.write(IVAR, 8 | 3);
    d.write(IMC, ICR_RXQ0);
    d.write(ICS, ICR_RXT0);
    assert!(d.fired().is_empty());
    d.write(IMS, ICR_RXQ0);
    assert_eq!(d.fired(), [3]);
}

#[test]
fn msi_fires_its_own_interrupt_once_enabled() {
    let mut d = Driver::new();
    let cap = d.find_cap(0x05);
    d.dev
        .write_config(cap / 4 + 1, 0, &0xfee0_1000u32.to_le_bytes());
    d.dev.write_config(cap / 4 + 3, 0, &0x4041u32.to_le_bytes());
    d.dev.write_config(cap / 4, 2, &[1]);
    let route = *d.irq.routes.lock().unwrap().last().unwrap();
    assert_eq!(route, (MSI_VECTOR, 0xfee0_1000, 0x4041, false));
    d.write(IMS, ICR_LSC);
    d.fired();
    d.link_up();
    assert_eq!(d.fired(), [MSI_VECTOR]);
    assert!(!d.irq.level.load(Ordering::SeqCst));
    // IAME: reading ICR auto-masks what IAM names.
    d.write(CTRL_EXT, CTRL_EXT_IAME);
    d.write(IAM, ICR_LSC);
    assert_ne!(d.read(ICR) & ICR_INT_ASSERTED, 0);
    assert_eq!(d.read(IMS), 0);
}

#[test]
fn the_io_bar_sizes_as_32_bytes_of_io() {
    let mut d = Driver::new();
    d.dev.write_config(6, 0, &u32::MAX.to_le_bytes());
    assert_eq!(d.dev.read_config(6), 0xffe1);
    d.dev.write_config(6, 0, &0xc040u32.to_le_bytes());
    assert_eq!(d.dev.read_config(6), 0xc041);
    assert_eq!(d.dev.config().vendor_device(), (0x8086, 0x10d3));
    assert_eq!(d.dev.read_config(2) >> 8, 0x02_0000, "Ethernet controller");
}

/// The worker on a real socket pair: a frame written by the "peer" lands in the guest's
/// ring, a frame the guest queues comes out framed, and a frame with no room waits for
/// the next RDT write.
#[test]
fn the_worker_moves_frames_between_the_rings_and_the_peer_socket() {
    let mut d = Driver::new();
    d.setup_rx(0);
    d.setup_tx();
    let slot = Arc::new(ConnectionSlot::new().unwrap());
    let (ours, mut peer) = UnixStream::pair().unwrap();
    slot.put(Connection::new(ours, 1).unwrap());
    let _worker = E1000eWorker::spawn(d.dev.core(), d.dev.doorbell(), slot.clone()).unwrap();
    let deadline = || Instant::now() + Duration::from_secs(10);
    let wait = |what: &str, mut f: Box<dyn FnMut() -> bool + '_>| {
        let end = deadline();
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait(
        "the link",
        Box::new(|| d.dev.counters().link_up.load(Ordering::Relaxed)),
    );
    // Peer -> guest: more frames than descriptors.
    for n in 0..(RING as u8 + 2) {
        let mut f = vec![n; 64];
        f[..6].copy_from_slice(&MAC);
        peer.write_all(&64u32.to_be_bytes()).unwrap();
        peer.write_all(&f).unwrap();
    }
    let counters = d.dev.counters();
    wait(
        "a full ring",
        Box::new(|| counters.rx_frames.load(Ordering::Relaxed) == u64::from(RING) - 1),
    );
    // The rest waits; more descriptors let it in.
    for i in 0..u64::from(RING) {
        d.put_rx_desc(i, RX_BUF + i * 0x800);
    }
    let head = d.read(RDH);
    d.write(RDT, (head + 3) % RING);
    wait(
        "the waiting frames",
        Box::new(|| counters.rx_frames.load(Ordering::Relaxed) == u64::from(RING) + 2),
    );
    assert_eq!(counters.rx_dropped.load(Ordering::Relaxed), 0);

    // Guest -> peer.
    let f: Vec<u8> = (0..100u8).collect();
    d.mem.write_slice(&f, GuestAddress(TX_BUF)).unwrap();
    d.push_tx(legacy_tx(TX_BUF, 100, EOP | RS, 0, 0));
    let mut got = [0u8; 104];
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got[..4], 100u32.to_be_bytes());
    assert_eq!(got[4..], f[..]);

    // The peer goes away: the link goes down.
    drop(peer);
    wait(
        "the link to drop",
        Box::new(|| !counters.link_up.load(Ordering::Relaxed)),
    );
    assert_ne!(d.read(ICR) & ICR_LSC, 0, "the guest hears of it");
    // A new peer (passt restarted): the link comes back and frames flow again.
    let (ours, mut peer) = UnixStream::pair().unwrap();
    slot.put(Connection::new(ours, 2).unwrap());
    wait(
        "the link to return",
        Box::new(|| counters.link_up.load(Ordering::Relaxed)),
    );
    d.push_tx(legacy_tx(TX_BUF, 100, EOP | RS, 0, 0));
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got[4..], f[..]);
}

#[test]
fn a_vlan_tag_is_inserted_when_the_descriptor_and_ctrl_ask() {
    let mut d = Driver::new();
    d.setup_tx();
    let f = vec![0x22u8; 60];
    d.mem.write_slice(&f, GuestAddress(TX_BUF)).unwrap();
    let mut desc = legacy_tx(TX_BUF, 60, EOP | 0x40, 0, 0);
    desc[14..16].copy_from_slice(&0x0123u16.to_le_bytes());
    d.push_tx(desc);
    assert_eq!(
        d.transmit(),
        std::slice::from_ref(&f),
        "no tag without CTRL.VME"
    );
    d.write(CTRL, CTRL_SLU | CTRL_VME);
    d.push_tx(desc);
    let sent = [vec![], d.transmit().remove(0)];
    assert_eq!(sent[1].len(), 64);
    assert_eq!(sent[1][12..16], [0x81, 0x00, 0x01, 0x23]);
    assert_eq!(sent[1][16..], f[12..]);
}

/// Random register writes, ring contents and frames (a fixed-seed xorshift): the card
/// neither panics nor loops, whatever the driver does.
#[test]
fn random_registers_rings_and_frames_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let regs = [
        CTRL, EERD, MDIC, ICR, ICS, IMS, IMC, EIAC, IAM, IVAR, CTRL_EXT, RCTL, TCTL, RDBAL, RDH,
        RDT, RDLEN, TDBAL, TDH, TDT, TDLEN, RFCTL, RXCSUM,
    ];
    for _ in 0..50 {
        let mut d = Driver::new();
        d.enable_msix();
        d.setup_rx(RCTL_UPE | RCTL_LPE);
        d.setup_tx();
        let junk: Vec<u8> = (0..0x2000).map(|_| next() as u8).collect();
        d.mem.write_slice(&junk, GuestAddress(TX_RING)).unwrap();
        d.mem.write_slice(&junk, GuestAddress(RX_RING)).unwrap();
        for _ in 0..200 {
            let r = next();
            match r % 4 {
                0 => {
                    let reg = regs[(r >> 8) as usize % regs.len()];
                    let v = (r >> 32) as u32;
                    let v = if r & 0x80 != 0 { v & 0x1ff } else { v };
                    d.write(reg, v);
                }
                1 => {
                    d.transmit();
                }
                2 => {
                    let len = (r >> 16) as usize % 3000;
                    let f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    d.receive(&f);
                }
                _ => {
                    d.read((r >> 16) % (BAR0_SIZE / 4) * 4);
                }
            }
        }
    }
}

/// A card built as for a fresh boot over `d`'s memory, restored from `saved`.
fn restored(d: &Driver, saved: &[u8]) -> Driver {
    use crate::state::Snapshot;
    let irq = Arc::new(Recorder::default());
    let mut dev = E1000e::new(
        d.mem.clone(),
        MAC,
        E1000eInterrupts {
            msix: irq.clone(),
            routes: irq.clone(),
            intx: irq.clone(),
        },
    )
    .unwrap();
    dev.core().lock().unwrap().set_link(true);
    dev.restore_state(saved).unwrap();
    Driver {
        dev,
        mem: d.mem.clone(),
        irq,
        tx_tail: d.tx_tail,
        rx_tail: d.rx_tail,
    }
}

/// Registers a read leaves as they are.
const STEADY_REGS: [u64; 14] = [
    CTRL, STATUS, RCTL, TCTL, IMS, IVAR, EIAC, RDBAL, RDLEN, RDH, RDT, TDBAL, TDH, TDT,
];

#[test]
fn a_restored_card_finishes_the_packet_sends_and_receives_into_the_next_descriptor() {
    use crate::state::Snapshot;
    let mut d = Driver::new();
    d.link_up();
    d.enable_msix();
    d.setup_rx(0);
    d.setup_tx();
    d.write(IVAR, (8 | 1) | (8 | 2) << 8 | (8 | 4) << 16);
    d.write(IMS, ICR_RXQ0 | ICR_TXQ0 | ICR_OTHER);
    let mut rx0 = vec![0x11u8; 60];
    rx0[..6].copy_from_slice(&MAC);
    assert_eq!(d.receive(&rx0), Rx::Delivered);
    // The first half of a frame is taken (TDH moves past it), the rest comes later.
    let f: Vec<u8> = (0..120u8).collect();
    d.mem.write_slice(&f, GuestAddress(TX_BUF)).unwrap();
    d.push_tx(legacy_tx(TX_BUF, 50, 0, 0, 0));
    assert!(d.transmit().is_empty());
    assert_eq!(d.read(TDH), 1);
    let before: Vec<u32> = STEADY_REGS.iter().map(|&r| d.read(r)).collect();
    let saved = d.dev.save_state().unwrap();
    // The saved card runs no more rings.
    assert_eq!(d.receive(&rx0), Rx::NoRoom);
    d.push_tx(legacy_tx(TX_BUF + 50, 70, EOP | RS, 0, 0));
    assert!(d.transmit().is_empty());
    d.tx_tail -= 1;

    let mut r = restored(&d, &saved);
    let after: Vec<u32> = STEADY_REGS.iter().map(|&reg| r.read(reg)).collect();
    assert_eq!(after, before);
    assert!(
        r.irq
            .routes
            .lock()
            .unwrap()
            .contains(&(1, 0xfee0_0000, 0x41, false)),
        "MSI-X vector 1 routed again"
    );
    // The rest of the frame: the whole frame reaches the backend, TxQ0 on vector 2.
    r.fired();
    r.push_tx(legacy_tx(TX_BUF + 50, 70, EOP | RS, 0, 0));
    let sent = r.transmit();
    assert_eq!(sent, vec![f.clone()]);
    assert_eq!(r.fired(), [2]);
    // RX lands in descriptor 1, the one after the frame received before the save.
    let mut rx1 = vec![0x22u8; 64];
    rx1[..6].copy_from_slice(&MAC);
    assert_eq!(r.receive(&rx1), Rx::Delivered);
    assert_eq!(r.read(RDH), 2);
    let desc = r.rx_desc(1);
    assert_eq!(u16::from_le_bytes([desc[8], desc[9]]), 64);
    assert_eq!(desc[12] & 1, 1, "DD");
    let mut got = vec![0u8; 64];
    r.mem
        .read_slice(&mut got, GuestAddress(RX_BUF + 0x800))
        .unwrap();
    assert_eq!(got, rx1);
    assert_eq!(r.fired(), [1]);
}

#[test]
fn intx_asserted_at_save_is_asserted_again_after_restore() {
    use crate::state::Snapshot;
    let mut d = Driver::new();
    d.setup_rx(0);
    d.write(IMS, ICR_RXT0);
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&MAC);
    assert_eq!(d.receive(&f), Rx::Delivered);
    assert!(d.irq.level.load(Ordering::SeqCst));
    let saved = d.dev.save_state().unwrap();
    let mut r = restored(&d, &saved);
    assert!(r.irq.level.load(Ordering::SeqCst), "the line is up again");
    assert_ne!(r.read(ICR) & ICR_RXT0, 0);
    assert!(!r.irq.level.load(Ordering::SeqCst));
}

#[test]
fn truncated_or_garbage_state_is_refused_and_the_card_still_works() {
    use crate::state::Snapshot;
    let mut d = Driver::new();
    d.setup_rx(0);
    let saved = d.dev.save_state().unwrap();
    let mut fresh = Driver::new();
    for bad in [&saved[..saved.len() - 3], &[0xffu8; 64][..], &[][..]] {
        assert!(fresh.dev.restore_state(bad).is_err());
    }
    fresh.setup_rx(0);
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&MAC);
    assert_eq!(fresh.receive(&f), Rx::Delivered);
}
