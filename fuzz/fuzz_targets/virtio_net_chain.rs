//! The virtio-net worker driven from arbitrary bytes, one pass at a time on this thread
//! (`SteppedWorker`): the first part of the input becomes guest RAM holding both queues'
//! descriptor tables and avail rings (transmit chains with their virtio-net headers and
//! frames, receive buffers), the rest is what the peer (the other end of a socketpair, as
//! passt would be) writes: length-prefixed frames of any length, split over the rounds.
//! Leading bytes choose queue sizes, the negotiated offloads (MRG_RXBUF, CSUM, GUEST_CSUM),
//! whether a peer is connected, whether descriptor addresses are folded into RAM, and the
//! avail index moves between rounds. The worker must never panic or hang; what it sends
//! the peer must be well-framed.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use hospes_devices::virtio::net::stream::MAX_FRAME;
use hospes_devices::virtio::net::{
    Connection, ConnectionSlot, F_CSUM, F_GUEST_CSUM, F_MRG_RXBUF, NetCounters, SteppedWorker,
};
use hospes_devices::virtio::{Activation, ActiveQueue, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM: u64 = 0x10_0000;
/// Receive rings: descriptors, avail, used; transmit rings 0x3000 higher.
const RX: [u64; 3] = [0, 0x1000, 0x2000];
const TX: [u64; 3] = [0x3000, 0x4000, 0x5000];
const HEADER: usize = 8;

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn notify_queue(&self, _queue: u16) {}
    fn notify_config(&self) {}
}

fn queue(mem: &GuestMemoryMmap, sel: u8, rings: [u64; 3], fold: bool) -> Queue {
    let size = 1u16 << (sel % 9);
    if fold {
        // Descriptor addresses into RAM, lengths below 64 KiB.
        for i in 0..u64::from(size) {
            let at = rings[0] + i * 16;
            let addr: u64 = mem.read_obj(GuestAddress(at)).unwrap();
            mem.write_obj(addr % MEM, GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 8)).unwrap();
            mem.write_obj(len & 0xffff, GuestAddress(at + 8)).unwrap();
        }
    }
    mem.write_obj(0u32, GuestAddress(rings[2])).unwrap();
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(rings[0] as u32), Some(0));
    q.set_avail_ring_address(Some(rings[1] as u32), Some(0));
    q.set_used_ring_address(Some(rings[2] as u32), Some(0));
    q.set_ready(true);
    q
}

/// Reads what the worker sent and checks its framing; returns the bytes left over.
fn drain(peer: &mut UnixStream, pending: &mut Vec<u8>) {
    let mut buf = [0u8; 65536];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    while let Some(prefix) = pending.first_chunk::<4>() {
        let len = u32::from_be_bytes(*prefix) as usize;
        assert!(len <= MAX_FRAME, "the worker sent a {len}-byte frame");
        if pending.len() < 4 + len {
            break;
        }
        pending.drain(..4 + len);
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (h, rest) = data.split_at(HEADER);
    let flags = h[0];
    let fold = flags & 1 != 0;
    let connected = flags & 2 != 0;
    let mut features = 0u64;
    for (bit, feature) in [(4, F_MRG_RXBUF), (5, F_CSUM), (6, F_GUEST_CSUM)] {
        if flags & 1 << bit != 0 {
            features |= 1 << feature;
        }
    }
    let rounds = 1 + usize::from(h[3] % 4);
    let bump = h[4];
    let split = usize::from(u16::from_le_bytes([h[5], h[6]])).min(rest.len());
    let (image, stream) = rest.split_at(split);

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    mem.write_slice(image, GuestAddress(0)).unwrap();
    let rx = queue(&mem, h[1], RX, fold);
    let tx = queue(&mem, h[2], TX, fold);

    let slot = Arc::new(ConnectionSlot::new().unwrap());
    let mut peer = None;
    if connected {
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        slot.put(Connection::new(ours, 1).unwrap());
        peer = Some(theirs);
    }
    let activation = Activation {
        mem: mem.clone(),
        interrupt: Arc::new(NoInterrupt),
        queues: vec![
            ActiveQueue {
                index: 0,
                queue: rx,
                event: EventFd::new(0).unwrap(),
            },
            ActiveQueue {
                index: 1,
                queue: tx,
                event: EventFd::new(0).unwrap(),
            },
        ],
        acked_features: features,
    };
    let mut worker =
        SteppedWorker::new(activation, slot, Arc::new(NetCounters::default())).unwrap();
    let mut sent = Vec::new();
    let per_round = stream.len().div_ceil(rounds).max(1);
    let mut parts = stream.chunks(per_round);
    for round in 0..rounds {
        if let (Some(p), Some(part)) = (peer.as_mut(), parts.next()) {
            let _ = p.write(part);
        }
        worker.service(round > 0);
        if let Some(p) = peer.as_mut() {
            drain(p, &mut sent);
        }
        for avail in [RX[1], TX[1]] {
            let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
            mem.write_obj(idx.wrapping_add(u16::from(bump)), GuestAddress(avail + 2))
                .unwrap();
        }
    }
});
