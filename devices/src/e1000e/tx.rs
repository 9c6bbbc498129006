//! The transmit ring: legacy descriptors, and the extended context and data descriptors
//! with IP/TCP/UDP checksum insertion and TCP/UDP segmentation (TSO).
//!
//! Data flow: the worker calls [`Core::transmit`] when the driver moved TDT. Descriptors
//! from TDH to TDT are read from guest memory; their buffers are gathered into one packet
//! until a descriptor with EOP; then offloads run and each finished frame goes to the
//! worker's sink (the passt connection). Descriptors with RS get their DD bit written
//! back and TXDW is raised. A descriptor outside RAM, of an unknown type or a packet too
//! large drops that packet with a `guest_warn!` and an error count; the ring goes on.

use vm_memory::{Bytes, GuestAddress};

use super::core::{Core, E1000eCounters};
use super::regs::*;
use crate::virtio::net::csum::ones_complement_sum;
use crate::virtio::net::stream::MAX_FRAME;

/// The largest packet a driver may gather before segmentation (a 64 KiB TSO payload
/// with its headers, with room to spare).
pub const MAX_PACKET: usize = 256 * 1024;
/// Descriptor command bits (legacy CMD, extended DCMD).
const CMD_EOP: u8 = 1 << 0;
const CMD_IC: u8 = 1 << 2;
const CMD_TSE: u8 = 1 << 2;
const CMD_RS: u8 = 1 << 3;
const CMD_DEXT: u8 = 1 << 5;
const CMD_VLE: u8 = 1 << 6;
/// Data descriptor POPTS: insert the IP checksum, the TCP/UDP checksum.
const POPTS_IXSM: u8 = 1 << 0;
const POPTS_TXSM: u8 = 1 << 1;
/// Context TUCMD: TCP (else UDP), IPv4 (else IPv6).
const TUCMD_TCP: u8 = 1 << 0;
const TUCMD_IP: u8 = 1 << 1;
const DTYP_CONTEXT: u32 = 0;
const DTYP_DATA: u32 = 1;
const STA_DD: u8 = 1 << 0;

/// Why a packet was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    #[error("descriptor {0} is not in guest memory")]
    Descriptor(u32),
    #[error("a {len}-byte buffer at {addr:#x} is not in guest memory")]
    Buffer { addr: u64, len: usize },
    #[error("packet grew past {MAX_PACKET} bytes")]
    TooLong,
    #[error("descriptor type {0} is not a transmit descriptor")]
    Type(u32),
    #[error("checksum offsets {start}..{end} -> {at} do not fit a {len}-byte frame")]
    Checksum {
        start: usize,
        end: usize,
        at: usize,
        len: usize,
    },
    #[error("segmentation with header {hdr}, MSS {mss} does not fit a {len}-byte packet")]
    Segmentation { hdr: usize, mss: usize, len: usize },
    #[error("a {0}-byte frame is outside 14..={MAX_FRAME}")]
    FrameLength(usize),
}

/// The offload context the last context descriptor set.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Context {
    ipcss: usize,
    ipcso: usize,
    ipcse: usize,
    tucss: usize,
    tucso: usize,
    tucse: usize,
    tucmd: u8,
    hdrlen: usize,
    mss: usize,
}

/// The packet being gathered across descriptors (saved with the card: its first
/// descriptors are already behind TDH).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TxState {
    ctx: Context,
    packet: Vec<u8>,
    /// Options of the packet's first data descriptor.
    popts: u8,
    tse: bool,
    extended: bool,
    started: bool,
    /// An error hit this packet: its remaining descriptors are skipped up to EOP.
    failed: bool,
}

/// One 16-byte descriptor.
struct Desc([u8; 16]);

impl Desc {
    fn addr(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().unwrap_or_default())
    }
    fn dword2(&self) -> u32 {
        u32::from_le_bytes([self.0[8], self.0[9], self.0[10], self.0[11]])
    }
    fn cmd(&self) -> u8 {
        self.0[11]
    }
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
}

impl Core {
    /// Processes up to `budget` descriptors between TDH and TDT, handing each finished
    /// frame to `send`. Returns whether descriptors are left.
    pub fn transmit(&mut self, send: &mut dyn FnMut(&[u8]), budget: usize) -> bool {
        if self.frozen {
            return false;
        }
        if self.get(TCTL) & TCTL_EN == 0 {
            return false;
        }
        let count = self.get(TDLEN) / 16;
        let (mut head, tail) = (self.get(TDH), self.get(TDT));
        if count == 0 || head == tail {
            return false;
        }
        if head >= count || tail >= count {
            crate::guest_warn!("e1000e: transmit ring head {head} or tail {tail} past {count}");
            return false;
        }
        let base = u64::from(self.get(TDBAH)) << 32 | u64::from(self.get(TDBAL));
        let mut written_back = false;
        let mut done = 0;
        while head != tail && done < budget {
            let at = GuestAddress(base.wrapping_add(u64::from(head) * 16));
            let mut d = Desc([0; 16]);
            match self.mem.read_slice(&mut d.0, at) {
                Ok(()) => {
                    if let Err(e) = self.tx_descriptor(&d, send) {
                        self.tx_error(&e);
                    }
                    if d.cmd() & CMD_RS != 0 {
                        // STA is byte 12 in every layout.
                        let sta = d.0[12] | STA_DD;
                        if self
                            .mem
                            .write_slice(&[sta], GuestAddress(at.0.wrapping_add(12)))
                            .is_err()
                        {
                            self.tx_error(&TxError::Descriptor(head));
                        }
                        written_back = true;
                    }
                }
                Err(_) => {
                    self.tx_error(&TxError::Descriptor(head));
                    self.tx.failed = self.tx.started;
                }
            }
            head = (head + 1) % count;
            done += 1;
        }
        self.set(TDH, head);
        let mut causes = 0;
        if written_back {
            causes |= ICR_TXDW;
        }
        if head == tail {
            causes |= ICR_TXQE;
        }
        if causes != 0 {
            self.raise(causes);
        }
        head != tail
    }

    fn tx_error(&mut self, e: &TxError) {
        E1000eCounters::add(&self.counters.descriptor_errors, 1);
        crate::guest_warn!("e1000e: transmit: {e}");
    }

    fn tx_descriptor(&mut self, d: &Desc, send: &mut dyn FnMut(&[u8])) -> Result<(), TxError> {
        let cmd = d.cmd();
        if cmd & CMD_DEXT == 0 {
            let len = usize::from(d.u16_at(8));
            self.tx.extended = false;
            return self.tx_data(
                d.addr(),
                (len, d.u16_at(14)),
                cmd,
                0,
                send,
                |core, frame| {
                    if cmd & CMD_IC != 0 {
                        let (cso, css) = (usize::from(d.0[10]), usize::from(d.0[13]));
                        insert_checksum(frame, css, 0, cso, false)?;
                    }
                    core.insert_vlan(frame, cmd, d.u16_at(14));
                    Ok(())
                },
            );
        }
        match (d.dword2() >> 20) & 0xf {
            DTYP_CONTEXT => {
                self.tx.ctx = Context {
                    ipcss: usize::from(d.0[0]),
                    ipcso: usize::from(d.0[1]),
                    ipcse: usize::from(d.u16_at(2)),
                    tucss: usize::from(d.0[4]),
                    tucso: usize::from(d.0[5]),
                    tucse: usize::from(d.u16_at(6)),
                    tucmd: cmd,
                    hdrlen: usize::from(d.0[13]),
                    mss: usize::from(d.u16_at(14)),
                };
                Ok(())
            }
            DTYP_DATA => {
                let len = (d.dword2() & 0xf_ffff) as usize;
                self.tx.extended = true;
                let special = d.u16_at(14);
                self.tx_data(
                    d.addr(),
                    (len, special),
                    cmd,
                    d.0[13],
                    send,
                    |core, frame| {
                        core.offload(frame)?;
                        core.insert_vlan(frame, cmd, special);
                        Ok(())
                    },
                )
            }
            t => {
                self.tx.failed = self.tx.started;
                if cmd & CMD_EOP != 0 {
                    self.tx_end();
                }
                Err(TxError::Type(t))
            }
        }
    }

    /// Appends a buffer of `len` bytes to the packet; at EOP finishes it (`finish` runs on
    /// a single frame, segmentation runs instead when the packet asked for TSO; `special`
    /// is the VLAN tag of the EOP descriptor).
    fn tx_data(
        &mut self,
        addr: u64,
        (len, special): (usize, u16),
        cmd: u8,
        popts: u8,
        send: &mut dyn FnMut(&[u8]),
        finish: impl Fn(&mut Core, &mut Vec<u8>) -> Result<(), TxError>,
    ) -> Result<(), TxError> {
        if !self.tx.started {
            self.tx.started = true;
            self.tx.popts = popts;
            self.tx.tse = self.tx.extended && cmd & CMD_TSE != 0;
        }
        let mut result = Ok(());
        if !self.tx.failed {
            result = self.gather(addr, len);
            self.tx.failed = result.is_err();
        }
        if cmd & CMD_EOP == 0 {
            return result;
        }
        let failed = self.tx.failed;
        let mut packet = std::mem::take(&mut self.tx.packet);
        let tse = self.tx.tse;
        self.tx_end();
        if failed {
            E1000eCounters::add(&self.counters.tx_dropped, 1);
            return result;
        }
        let sent = if tse {
            self.segment(&packet, (cmd, special), send)
        } else {
            finish(self, &mut packet).and_then(|()| self.send_frame(&packet, send))
        };
        if sent.is_err() {
            E1000eCounters::add(&self.counters.tx_dropped, 1);
        }
        // Keep the allocation for the next packet.
        packet.clear();
        self.tx.packet = packet;
        sent
    }

    fn tx_end(&mut self) {
        self.tx.started = false;
        self.tx.failed = false;
        self.tx.packet.clear();
    }

    fn gather(&mut self, addr: u64, len: usize) -> Result<(), TxError> {
        let at = self.tx.packet.len();
        if at + len > MAX_PACKET {
            return Err(TxError::TooLong);
        }
        self.tx.packet.resize(at + len, 0);
        let r = self
            .mem
            .read_slice(&mut self.tx.packet[at..], GuestAddress(addr));
        if r.is_err() {
            self.tx.packet.truncate(at);
            return Err(TxError::Buffer { addr, len });
        }
        Ok(())
    }

    /// Checksum insertion of a data-descriptor packet without segmentation.
    fn offload(&self, frame: &mut [u8]) -> Result<(), TxError> {
        let c = self.tx.ctx;
        if self.tx.popts & POPTS_IXSM != 0 {
            let end = ip_header_end(frame, &c);
            insert_checksum(frame, c.ipcss, end, c.ipcso, true)?;
        }
        if self.tx.popts & POPTS_TXSM != 0 {
            insert_checksum(frame, c.tucss, c.tucse, c.tucso, false)?;
        }
        Ok(())
    }

    /// Splits a TSO packet into frames of the context's header plus at most MSS payload
    /// bytes, fixing lengths, IP id, TCP sequence and flags, and the checksums.
    fn segment(
        &mut self,
        packet: &[u8],
        (cmd, special): (u8, u16),
        send: &mut dyn FnMut(&[u8]),
    ) -> Result<(), TxError> {
        let c = self.tx.ctx;
        let (hdr, mss, len) = (c.hdrlen, c.mss, packet.len());
        let bad = TxError::Segmentation { hdr, mss, len };
        if mss == 0
            || hdr >= len
            || hdr + mss > MAX_FRAME
            || c.tucso + 2 > hdr
            || c.ipcss + 8 > hdr
            || c.tucss + 8 > hdr
        {
            return Err(bad);
        }
        let ipv4 = c.tucmd & TUCMD_IP != 0;
        let tcp = c.tucmd & TUCMD_TCP != 0;
        if (tcp && c.tucss + 20 > hdr) || (!ipv4 && c.ipcss + 40 > hdr) {
            return Err(bad);
        }
        let (header, payload) = packet.split_at(hdr);
        let seed = u16::from_be_bytes([header[c.tucso], header[c.tucso + 1]]);
        let ip_id = u16::from_be_bytes([header[c.ipcss + 4], header[c.ipcss + 5]]);
        let seq = u32::from_be_bytes([
            header[c.tucss + 4],
            header[c.tucss + 5],
            header[c.tucss + 6],
            header[c.tucss + 7],
        ]);
        let segments = payload.len().div_ceil(mss);
        let mut frame = Vec::with_capacity(hdr + mss);
        for (i, chunk) in payload.chunks(mss).enumerate() {
            frame.clear();
            frame.extend_from_slice(header);
            frame.extend_from_slice(chunk);
            let n = chunk.len();
            if ipv4 {
                put16(&mut frame, c.ipcss + 2, (hdr - c.ipcss + n) as u16);
                put16(&mut frame, c.ipcss + 4, ip_id.wrapping_add(i as u16));
            } else {
                put16(&mut frame, c.ipcss + 4, (hdr - c.ipcss - 40 + n) as u16);
            }
            if tcp {
                let s = seq.wrapping_add((i * mss) as u32).to_be_bytes();
                frame[c.tucss + 4..c.tucss + 8].copy_from_slice(&s);
                if i + 1 < segments {
                    // FIN and PSH only on the last segment.
                    frame[c.tucss + 13] &= !0x09;
                }
            } else {
                put16(&mut frame, c.tucss + 4, (hdr - c.tucss + n) as u16);
            }
            if ipv4 && self.tx.popts & POPTS_IXSM != 0 {
                let end = ip_header_end(&frame, &c);
                insert_checksum(&mut frame, c.ipcss, end, c.ipcso, true)?;
            }
            if self.tx.popts & POPTS_TXSM != 0 {
                // The driver's seed is the pseudo-header sum without the length.
                let l4len = (frame.len() - c.tucss) as u16;
                put16(&mut frame, c.tucso, add_ones_complement(seed, l4len));
                insert_checksum(&mut frame, c.tucss, 0, c.tucso, false)?;
            }
            self.insert_vlan(&mut frame, cmd, special);
            self.send_frame(&frame, send)?;
            self.stat(TSCTC, 1, false);
        }
        Ok(())
    }

    /// Inserts an 802.1Q tag after the addresses when the descriptor asks (VLE) and
    /// VLAN mode is on.
    fn insert_vlan(&self, frame: &mut Vec<u8>, cmd: u8, special: u16) {
        if cmd & CMD_VLE != 0 && self.get(CTRL) & CTRL_VME != 0 && frame.len() >= 12 {
            let vet = self.get(VET) as u16;
            let mut tag = [0u8; 4];
            tag[..2].copy_from_slice(&vet.to_be_bytes());
            tag[2..].copy_from_slice(&special.to_be_bytes());
            frame.splice(12..12, tag);
        }
    }

    fn send_frame(&mut self, frame: &[u8], send: &mut dyn FnMut(&[u8])) -> Result<(), TxError> {
        if !(14..=MAX_FRAME).contains(&frame.len()) {
            return Err(TxError::FrameLength(frame.len()));
        }
        send(frame);
        let len = frame.len() as u64;
        self.stat(GPTC, 1, false);
        self.stat(TPT, 1, false);
        self.stat(GOTCL, len, true);
        self.stat(TOTL, len, true);
        if frame[..6] == [0xff; 6] {
            self.stat(BPTC, 1, false);
        } else if frame[0] & 1 != 0 {
            self.stat(MPTC, 1, false);
        }
        E1000eCounters::add(&self.counters.tx_frames, 1);
        E1000eCounters::add(&self.counters.tx_bytes, len);
        Ok(())
    }
}

/// Where the IPv4 header checksum region ends (inclusive): IPCSE, or the header length.
fn ip_header_end(frame: &[u8], c: &Context) -> usize {
    if c.ipcse != 0 {
        return c.ipcse;
    }
    let ihl = frame.get(c.ipcss).map_or(20, |b| usize::from(b & 0xf) * 4);
    c.ipcss + ihl.max(20) - 1
}

/// Stores the complement of the one's-complement sum of `frame[start..=end]` (`end` 0:
/// to the end of the frame) at `at`; `zero_first` clears the field before summing (the
/// IP header checksum), else its content (a pseudo-header seed) is part of the sum.
fn insert_checksum(
    frame: &mut [u8],
    start: usize,
    end: usize,
    at: usize,
    zero_first: bool,
) -> Result<(), TxError> {
    let len = frame.len();
    let stop = if end == 0 { len } else { end.saturating_add(1) };
    let bad = TxError::Checksum {
        start,
        end,
        at,
        len,
    };
    if start >= stop || stop > len || at.checked_add(2).is_none_or(|e| e > len) {
        return Err(bad);
    }
    if zero_first {
        frame[at..at + 2].fill(0);
    }
    let sum = !ones_complement_sum(&frame[start..stop]);
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

fn add_ones_complement(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Writes a big-endian u16; the callers checked the offset against the header.
fn put16(frame: &mut [u8], at: usize, v: u16) {
    if let Some(f) = frame.get_mut(at..at + 2) {
        f.copy_from_slice(&v.to_be_bytes());
    }
}
