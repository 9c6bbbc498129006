//! The receive ring: legacy and extended descriptors, address filtering, checksum
//! status.
//!
//! Data flow: the worker hands each frame from passt to [`Core::receive`]. A frame the
//! filters (RA, MTA, BAM, UPE/MPE) do not accept, or any frame while RCTL.EN is off, is
//! dropped as a real card drops it. Otherwise it goes into as many descriptors (of the
//! RCTL buffer size) as it needs, from RDH on: their buffers get the data, the
//! descriptors the status (DD, EOP, checksum results), RDH moves and RXT0 is raised. When
//! the descriptors between RDH and RDT are too few, the frame waits ([`Rx::NoRoom`]) and
//! the worker tries again after the next RDT write. A descriptor outside RAM drops the
//! frame with an error count; the descriptors it used are returned to the driver.

use vm_memory::{Bytes, GuestAddress};

use super::core::{Core, E1000eCounters};
use super::regs::*;
use crate::virtio::net::csum::ones_complement_sum;

/// Where one receive attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    Delivered,
    /// Too few descriptors: wait for the driver to add some (RDT).
    NoRoom,
    /// The card does not take this frame (disabled, filtered, too long, bad ring).
    Dropped,
}

/// Receive status bits (legacy status byte; extended status low byte).
const STAT_DD: u32 = 1 << 0;
const STAT_EOP: u32 = 1 << 1;
const STAT_IXSM: u32 = 1 << 2;
const STAT_UDPCS: u32 = 1 << 4;
const STAT_TCPCS: u32 = 1 << 5;
const STAT_IPCS: u32 = 1 << 6;
/// Error bits (legacy error byte; extended bits 31:24).
const ERR_TCPE: u32 = 1 << 5;
const ERR_IPE: u32 = 1 << 6;
/// Ethernet frames longer than this need RCTL.LPE (1518 with a VLAN tag, no FCS).
const MAX_NORMAL_FRAME: usize = 1518;

/// What the receive checksum check found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Checks {
    /// (checked, good) for the IPv4 header and the TCP/UDP checksum.
    ip: Option<bool>,
    l4: Option<bool>,
    udp: bool,
}

impl Core {
    /// Tries to put `frame` into the receive ring.
    pub fn receive(&mut self, frame: &[u8]) -> Rx {
        // Saved: the frame waits in the connection (the VM's process ends).
        if self.frozen {
            return Rx::NoRoom;
        }
        let rctl = self.get(RCTL);
        if rctl & RCTL_EN == 0 || frame.len() < 14 {
            self.rx_drop();
            return Rx::Dropped;
        }
        if !self.accepts(frame, rctl) {
            return Rx::Dropped;
        }
        if frame.len() > MAX_NORMAL_FRAME && rctl & RCTL_LPE == 0 {
            self.stat(ROC, 1, false);
            self.rx_drop();
            return Rx::Dropped;
        }
        let count = self.get(RDLEN) / 16;
        let (head, tail) = (self.get(RDH), self.get(RDT));
        if count == 0 || head >= count || tail >= count {
            if count != 0 {
                crate::guest_warn!("e1000e: receive ring head {head} or tail {tail} past {count}");
            }
            self.stat(RNBC, 1, false);
            self.rx_drop();
            return Rx::Dropped;
        }
        let mut data = frame.to_vec();
        if rctl & RCTL_SECRC == 0 {
            data.extend_from_slice(&crc32(frame).to_le_bytes());
        }
        let bufsize = buffer_size(rctl);
        let need = data.len().div_ceil(bufsize) as u32;
        let free = (tail + count - head) % count;
        if need > free {
            if need >= count {
                // It can never fit this ring.
                self.stat(RNBC, 1, false);
                self.rx_drop();
                return Rx::Dropped;
            }
            return Rx::NoRoom;
        }
        let checks = self.checks(frame);
        let extended = self.get(RFCTL) & RFCTL_EXSTEN != 0;
        let base = u64::from(self.get(RDBAH)) << 32 | u64::from(self.get(RDBAL));
        let mut head = head;
        let mut ok = true;
        let chunks = data.chunks(bufsize).count();
        for (i, chunk) in data.chunks(bufsize).enumerate() {
            let at = GuestAddress(base.wrapping_add(u64::from(head) * 16));
            let eop = i + 1 == chunks;
            if !self.fill_descriptor(at, chunk, eop, extended, checks) {
                ok = false;
            }
            head = (head + 1) % count;
        }
        self.set(RDH, head);
        self.raise(ICR_RXT0);
        if !ok {
            E1000eCounters::add(&self.counters.descriptor_errors, 1);
            self.rx_drop();
            crate::guest_warn!("e1000e: receive descriptor or buffer not in guest memory");
            return Rx::Dropped;
        }
        let len = frame.len() as u64;
        self.stat(GPRC, 1, false);
        self.stat(TPR, 1, false);
        self.stat(GORCL, len, true);
        self.stat(TORL, len, true);
        if frame[..6] == [0xff; 6] {
            self.stat(BPRC, 1, false);
        } else if frame[0] & 1 != 0 {
            self.stat(MPRC, 1, false);
        }
        E1000eCounters::add(&self.counters.rx_frames, 1);
        E1000eCounters::add(&self.counters.rx_bytes, len);
        Rx::Delivered
    }

    fn rx_drop(&mut self) {
        self.stat(MPC, 1, false);
        E1000eCounters::add(&self.counters.rx_dropped, 1);
    }

    /// Writes one buffer and its descriptor's write-back; false if either is not in RAM
    /// (the descriptor then still gets DD, with no data, so the ring moves on).
    fn fill_descriptor(
        &mut self,
        at: GuestAddress,
        chunk: &[u8],
        eop: bool,
        extended: bool,
        c: Checks,
    ) -> bool {
        let mut addr = [0u8; 8];
        if self.mem.read_slice(&mut addr, at).is_err() {
            return false;
        }
        let buffer = GuestAddress(u64::from_le_bytes(addr));
        let written = self.mem.write_slice(chunk, buffer).is_ok();
        let len = if written { chunk.len() as u16 } else { 0 };
        let mut status = STAT_DD | if eop { STAT_EOP } else { 0 };
        let mut errors = 0;
        let rxcsum = self.get(RXCSUM);
        if rxcsum & (RXCSUM_IPOFLD | RXCSUM_TUOFLD) == 0 && !extended {
            status |= STAT_IXSM;
        }
        if eop {
            if rxcsum & RXCSUM_IPOFLD != 0
                && let Some(good) = c.ip
            {
                status |= STAT_IPCS;
                errors |= if good { 0 } else { ERR_IPE };
            }
            if rxcsum & RXCSUM_TUOFLD != 0
                && let Some(good) = c.l4
            {
                status |= STAT_TCPCS | if c.udp && extended { STAT_UDPCS } else { 0 };
                errors |= if good { 0 } else { ERR_TCPE };
            }
        }
        let mut wb = [0u8; 16];
        if extended {
            // MRQ, IP id + packet checksum, extended status/errors, length, VLAN.
            let staterr = status | errors << 24;
            wb[8..12].copy_from_slice(&staterr.to_le_bytes());
            wb[12..14].copy_from_slice(&len.to_le_bytes());
        } else {
            wb[..8].copy_from_slice(&addr);
            wb[8..10].copy_from_slice(&len.to_le_bytes());
            wb[12] = status as u8;
            wb[13] = errors as u8;
        }
        self.mem.write_slice(&wb, at).is_ok() && written
    }

    /// The destination filters: broadcast (BAM), multicast (MPE or the MTA hash),
    /// unicast (UPE or a valid receive address).
    fn accepts(&self, frame: &[u8], rctl: u32) -> bool {
        let dst = &frame[..6];
        if dst == [0xff; 6] {
            return rctl & RCTL_BAM != 0;
        }
        if dst[0] & 1 != 0 {
            if rctl & RCTL_MPE != 0 {
                return true;
            }
            let shift = match (rctl >> RCTL_MO_SHIFT) & 3 {
                0 => 4,
                1 => 3,
                2 => 2,
                _ => 0,
            };
            let hash = ((u16::from(dst[4]) >> shift) | (u16::from(dst[5]) << (8 - shift))) & 0xfff;
            let word = self.get(MTA + u64::from(hash >> 5) * 4);
            return word & 1 << (hash & 31) != 0;
        }
        if rctl & RCTL_UPE != 0 {
            return true;
        }
        (0..RA_ENTRIES).any(|i| {
            let (lo, hi) = (self.get(RA + 8 * i), self.get(RA + 8 * i + 4));
            let mut addr = [0u8; 6];
            addr[..4].copy_from_slice(&lo.to_le_bytes());
            addr[4..].copy_from_slice(&hi.to_le_bytes()[..2]);
            hi & RAH_AV != 0 && addr == dst
        })
    }

    /// Verifies the IPv4 header checksum and the TCP/UDP checksum (IPv4 or IPv6) of a
    /// frame, as the card's receive offload reports them.
    fn checks(&self, frame: &[u8]) -> Checks {
        let mut c = Checks::default();
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let ip = &frame[14..];
        let (proto, l4, pseudo) = match ethertype {
            0x0800 => {
                let Some(&vihl) = ip.first() else { return c };
                let ihl = usize::from(vihl & 0xf) * 4;
                if vihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
                    return c;
                }
                c.ip = Some(ones_complement_sum(&ip[..ihl]) == 0xffff);
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
                if fragment || total < ihl || total > ip.len() {
                    return c;
                }
                let l4 = &ip[ihl..total];
                let mut pseudo = [0u8; 12];
                pseudo[..8].copy_from_slice(&ip[12..20]);
                pseudo[9] = ip[9];
                pseudo[10..].copy_from_slice(&(l4.len() as u16).to_be_bytes());
                (ip[9], l4, pseudo.to_vec())
            }
            0x86dd => {
                if ip.len() < 40 {
                    return c;
                }
                let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                if 40 + plen > ip.len() {
                    return c;
                }
                let l4 = &ip[40..40 + plen];
                let mut pseudo = vec![0u8; 40];
                pseudo[..32].copy_from_slice(&ip[8..40]);
                pseudo[32..36].copy_from_slice(&(l4.len() as u32).to_be_bytes());
                pseudo[39] = ip[6];
                (ip[6], l4, pseudo)
            }
            _ => return c,
        };
        let min = match proto {
            6 => 20,
            17 => 8,
            _ => return c,
        };
        if l4.len() < min {
            return c;
        }
        c.udp = proto == 17;
        if c.udp && ethertype == 0x0800 && l4[6..8] == [0, 0] {
            // No UDP checksum sent.
            return c;
        }
        let mut sum = u32::from(ones_complement_sum(&pseudo)) + u32::from(ones_complement_sum(l4));
        sum = (sum & 0xffff) + (sum >> 16);
        c.l4 = Some(sum as u16 == 0xffff);
        c
    }
}

/// RCTL's buffer size: BSIZE 2048/1024/512/256, or 16384/8192/4096 with BSEX.
fn buffer_size(rctl: u32) -> usize {
    let bsize = (rctl >> RCTL_BSIZE_SHIFT) & 3;
    match (rctl & RCTL_BSEX != 0, bsize) {
        (false, 0) => 2048,
        (false, 1) => 1024,
        (false, 2) => 512,
        (false, _) => 256,
        (true, 1) => 16384,
        (true, 2) => 8192,
        (true, 3) => 4096,
        (true, _) => 2048,
    }
}

/// The Ethernet FCS (CRC-32, reflected, polynomial 0xEDB88320) for drivers that leave
/// CRC stripping off.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
