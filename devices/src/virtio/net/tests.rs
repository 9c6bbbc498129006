//! The network device driven through guest memory: split rings written here as a driver
//! would, a socketpair standing in for passt.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::ActiveQueue;
use crate::virtio::QueuePosition;
use crate::virtio::test_rings::{CONFIG, Irq, Ring};

const RX_RINGS: u64 = 0x1000;
const TX_RINGS: u64 = 0x4000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;
const MAC: MacAddress = MacAddress([0x52, 0x54, 0x00, 1, 2, 3]);

struct Setup {
    mem: GuestMemoryMmap,
    dev: Net,
    rx: Ring,
    tx: Ring,
    peer: UnixStream,
    slot: Arc<ConnectionSlot>,
    irq: Arc<Irq>,
}

/// A started card with the given features acked and a connected peer.
fn started(features: u64) -> Setup {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let slot = Arc::new(ConnectionSlot::new().unwrap());
    let (ours, peer) = UnixStream::pair().unwrap();
    slot.put(Connection::new(ours, 1).unwrap());
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let irq = Arc::new(Irq::default());
    let (dev, rx, tx) = activate(&slot, &mem, 0, irq.clone(), features);
    Setup {
        mem,
        dev,
        rx,
        tx,
        peer,
        slot,
        irq,
    }
}

const ALL: u64 = 1 << F_CSUM | 1 << F_GUEST_CSUM | 1 << F_MRG_RXBUF | 1 << 32;

fn read_framed(peer: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    peer.read_exact(&mut len).unwrap();
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    peer.read_exact(&mut frame).unwrap();
    frame
}

fn write_framed(peer: &mut UnixStream, frame: &[u8]) {
    peer.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    peer.write_all(frame).unwrap();
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn offers_mac_status_and_checksum_offloads() {
    let s = started(ALL);
    let f = s.dev.features();
    for bit in [F_CSUM, F_GUEST_CSUM, F_MAC, F_MRG_RXBUF, F_STATUS] {
        assert_ne!(f & 1 << bit, 0, "feature {bit}");
    }
    wait_link(&s.dev, STATUS_LINK_UP);
    let mut cfg = [0u8; 8];
    s.dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x52, 0x54, 0, 1, 2, 3, 1, 0], "MAC, link up");
    assert_eq!(s.dev.queue_max_sizes().len(), 2);
}

/// Reads the configuration's link status until it is `want` (5 s at most).
fn wait_link(dev: &Net, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut st = [0u8; 2];
        dev.read_config(6, &mut st);
        if u16::from_le_bytes(st) == want {
            return;
        }
        assert!(Instant::now() < deadline, "link status never became {want}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn transmits_a_frame_behind_a_big_endian_length() {
    let mut s = started(ALL);
    let frame = pattern(1500);
    s.mem
        .write_slice(&[0u8; HDR_LEN], GuestAddress(TX_BUFS))
        .unwrap();
    s.mem
        .write_slice(&frame, GuestAddress(TX_BUFS + 0x1000))
        .unwrap();
    // Header and frame in separate descriptors, the frame itself split in two.
    let head = s.tx.add(
        &s.mem,
        &[
            (TX_BUFS, HDR_LEN as u32, false),
            (TX_BUFS + 0x1000, 1000, false),
            (TX_BUFS + 0x1000 + 1000, 500, false),
        ],
    );
    assert_eq!(read_framed(&mut s.peer), frame);
    assert_eq!(s.tx.used(&s.mem), (u32::from(head), 0));
    let c = s.dev.counters();
    assert_eq!(c.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(c.tx_bytes.load(Ordering::Relaxed), 1500);
    // The interrupt follows the used entry.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.irq.0.lock().unwrap().contains(&(TX_QUEUE as u16)) {
        assert!(Instant::now() < deadline, "no transmit interrupt");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn finishes_a_partial_udp_checksum() {
    let mut s = started(ALL);
    // Ethernet + IPv4 + UDP with 4 payload bytes; the driver put the pseudo-header sum in.
    let mut frame = vec![0u8; 14 + 20 + 8 + 4];
    frame[42..].copy_from_slice(b"ping");
    frame[38..40].copy_from_slice(&12u16.to_be_bytes());
    frame[40..42].copy_from_slice(&0x1234u16.to_be_bytes());
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = HDR_F_NEEDS_CSUM;
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
    s.mem.write_slice(&hdr, GuestAddress(TX_BUFS)).unwrap();
    s.mem
        .write_slice(&frame, GuestAddress(TX_BUFS + HDR_LEN as u64))
        .unwrap();
    s.tx.add(&s.mem, &[(TX_BUFS, (HDR_LEN + frame.len()) as u32, false)]);
    let out = read_framed(&mut s.peer);
    // UDP header and payload plus the pseudo-header sum (the seed) now total 0xffff.
    let total = u32::from(csum::ones_complement_sum(&out[34..])) + 0x1234;
    assert_eq!((total & 0xffff) + (total >> 16), 0xffff);
    assert_ne!(&out[40..42], &[0x12, 0x34]);
    assert_eq!(&out[..34], &frame[..34]);
}

#[test]
fn receives_a_large_frame_across_merged_buffers() {
    let mut s = started(ALL);
    let heads: Vec<u16> = (0..4)
        .map(|i| s.rx.add(&s.mem, &[(RX_BUFS + i * 0x1000, 1024, true)]))
        .collect();
    let frame = pattern(3000);
    write_framed(&mut s.peer, &frame);
    let used: Vec<_> = (0..3).map(|_| s.rx.used(&s.mem)).collect();
    assert_eq!(
        used,
        [
            (u32::from(heads[0]), 1024),
            (u32::from(heads[1]), 1024),
            (u32::from(heads[2]), 3012 - 2048)
        ]
    );
    let mut got = vec![0u8; 3 * 1024];
    for i in 0..3 {
        s.mem
            .read_slice(
                &mut got[i * 1024..(i + 1) * 1024],
                GuestAddress(RX_BUFS + i as u64 * 0x1000),
            )
            .unwrap();
    }
    assert_eq!(got[0], HDR_F_DATA_VALID);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[HDR_LEN..HDR_LEN + 3000], &frame[..]);
    assert!(s.rx.idle(&s.mem), "the fourth buffer stays with the device");
}

#[test]
fn a_frame_waits_for_receive_buffers_instead_of_being_lost() {
    let mut s = started(ALL);
    write_framed(&mut s.peer, b"early frame");
    std::thread::sleep(Duration::from_millis(50));
    let head = s.rx.add(&s.mem, &[(RX_BUFS, 2048, true)]);
    assert_eq!(s.rx.used(&s.mem), (u32::from(head), 12 + 11));
    let mut got = [0u8; 11];
    s.mem
        .read_slice(&mut got, GuestAddress(RX_BUFS + HDR_LEN as u64))
        .unwrap();
    assert_eq!(&got, b"early frame");
}

#[test]
fn without_merged_buffers_a_frame_too_big_for_one_buffer_is_dropped() {
    let mut s = started(1 << 32);
    let head = s.rx.add(&s.mem, &[(RX_BUFS, 100, true)]);
    write_framed(&mut s.peer, &pattern(500));
    write_framed(&mut s.peer, b"small");
    // The big frame is dropped and the buffer kept for the small one.
    assert_eq!(s.rx.used(&s.mem), (u32::from(head), 12 + 5));
    let mut flags = [0u8; 1];
    s.mem.read_slice(&mut flags, GuestAddress(RX_BUFS)).unwrap();
    assert_eq!(flags[0], 0, "no DATA_VALID without GUEST_CSUM");
    assert_eq!(s.dev.counters().rx_dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn hostile_transmit_chains_are_dropped_and_the_card_carries_on() {
    let mut s = started(ALL);
    // Past guest memory, shorter than the header, a GSO request, a checksum offset
    // outside the frame: each is returned unused and nothing reaches the peer.
    let mut bad_csum = [0u8; HDR_LEN];
    bad_csum[0] = HDR_F_NEEDS_CSUM;
    bad_csum[6..8].copy_from_slice(&60000u16.to_le_bytes());
    s.mem.write_slice(&bad_csum, GuestAddress(TX_BUFS)).unwrap();
    let mut gso = [0u8; HDR_LEN];
    gso[1] = 1;
    s.mem
        .write_slice(&gso, GuestAddress(TX_BUFS + 0x100))
        .unwrap();
    for chain in [
        &[(1u64 << 40, 64u32, false)][..],
        &[(TX_BUFS + 0x200, 4, false)][..],
        &[(TX_BUFS + 0x100, 60, false)][..],
        &[(TX_BUFS, 60, false)][..],
        &[(TX_BUFS, 0x10_0000, false), (TX_BUFS, 0x10_0000, false)][..],
    ] {
        let head = s.tx.add(&s.mem, chain);
        assert_eq!(s.tx.used(&s.mem), (u32::from(head), 0));
    }
    assert_eq!(s.dev.counters().tx_dropped.load(Ordering::Relaxed), 5);
    s.mem
        .write_slice(&[0u8; HDR_LEN], GuestAddress(TX_BUFS))
        .unwrap();
    s.mem
        .write_slice(b"fine", GuestAddress(TX_BUFS + HDR_LEN as u64))
        .unwrap();
    s.tx.add(&s.mem, &[(TX_BUFS, HDR_LEN as u32 + 4, false)]);
    assert_eq!(read_framed(&mut s.peer), b"fine");
}

#[test]
fn a_receive_buffer_outside_guest_memory_costs_one_frame() {
    let mut s = started(ALL);
    s.rx.add(&s.mem, &[(1 << 40, 2048, true)]);
    let good = s.rx.add(&s.mem, &[(RX_BUFS, 2048, true)]);
    write_framed(&mut s.peer, b"lost");
    write_framed(&mut s.peer, b"kept");
    let _bad = s.rx.used(&s.mem);
    assert_eq!(s.rx.used(&s.mem), (u32::from(good), 12 + 4));
}

#[test]
fn a_peer_announcing_an_oversized_frame_is_disconnected() {
    let mut s = started(ALL);
    s.rx.add(&s.mem, &[(RX_BUFS, 2048, true)]);
    s.peer.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        s.peer.read(&mut buf).unwrap(),
        0,
        "device closed the socket"
    );
}

#[test]
fn frames_without_a_peer_are_dropped_and_a_new_peer_is_picked_up() {
    let mut s = started(ALL);
    drop(std::mem::replace(
        &mut s.peer,
        UnixStream::pair().unwrap().0,
    ));
    s.mem
        .write_slice(&[0u8; HDR_LEN], GuestAddress(TX_BUFS))
        .unwrap();
    // The worker notices the closed socket on its next look at it.
    let rx_head = s.rx.add(&s.mem, &[(RX_BUFS, 2048, true)]);
    std::thread::sleep(Duration::from_millis(50));
    let head = s.tx.add(&s.mem, &[(TX_BUFS, HDR_LEN as u32 + 10, false)]);
    assert_eq!(s.tx.used(&s.mem), (u32::from(head), 0));
    assert_eq!(s.dev.counters().tx_dropped.load(Ordering::Relaxed), 1);
    // The guest saw the cable unplugged, with a configuration interrupt.
    wait_link(&s.dev, 0);
    assert!(s.irq.0.lock().unwrap().contains(&CONFIG));
    // A restarted passt: a new connection through the slot.
    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.slot.put(Connection::new(ours, 2).unwrap());
    write_framed(&mut peer, b"again");
    assert_eq!(s.rx.used(&s.mem), (u32::from(rx_head), 12 + 5));
    wait_link(&s.dev, STATUS_LINK_UP);
    s.tx.add(&s.mem, &[(TX_BUFS, HDR_LEN as u32 + 3, false)]);
    assert_eq!(read_framed(&mut peer).len(), 3);
}

#[test]
fn a_reset_hands_the_connection_back_for_the_next_activation() {
    let mut s = started(ALL);
    s.dev.reset();
    let conn = s.slot.take().expect("connection handed back");
    assert_eq!(conn.generation, 1);
    s.slot.put(conn);
    // A card activated again (fresh rings) reaches the same peer.
    let (mut dev, mut rx, _tx) = activate(&s.slot, &s.mem, 0x8000, Arc::default(), ALL);
    let head = rx.add(&s.mem, &[(RX_BUFS, 2048, true)]);
    write_framed(&mut s.peer, b"after reset");
    assert_eq!(rx.used(&s.mem), (u32::from(head), 12 + 11));
    dev.reset();
}

/// A card on `slot` activated with fresh rings `offset` bytes past the usual ones.
fn activate(
    slot: &Arc<ConnectionSlot>,
    mem: &GuestMemoryMmap,
    offset: u64,
    irq: Arc<Irq>,
    features: u64,
) -> (Net, Ring, Ring) {
    let mut dev = Net::new(MAC, slot.clone());
    let (rx, rxq) = Ring::new(mem, RX_RINGS + offset);
    let (tx, txq) = Ring::new(mem, TX_RINGS + offset);
    dev.activate(Activation {
        mem: mem.clone(),
        interrupt: irq,
        queues: vec![
            ActiveQueue {
                index: 0,
                queue: rxq,
                event: rx.kick.try_clone().unwrap(),
            },
            ActiveQueue {
                index: 1,
                queue: txq,
                event: tx.kick.try_clone().unwrap(),
            },
        ],
        acked_features: features,
    })
    .unwrap();
    (dev, rx, tx)
}

#[test]
fn activation_with_one_queue_is_refused() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let slot = Arc::new(ConnectionSlot::new().unwrap());
    let mut dev = Net::new(MAC, slot);
    let (rx, rxq) = Ring::new(&mem, RX_RINGS);
    let err = dev
        .activate(Activation {
            mem,
            interrupt: Arc::new(Irq::default()),
            queues: vec![ActiveQueue {
                index: 0,
                queue: rxq,
                event: rx.kick,
            }],
            acked_features: ALL,
        })
        .err();
    assert!(matches!(err, Some(VirtioError::QueueCount { got: 1, .. })));
}

#[test]
fn a_transmit_avail_index_far_ahead_does_not_stall_the_worker() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let slot = Arc::new(ConnectionSlot::new().unwrap());
    let (ours, _peer) = UnixStream::pair().unwrap();
    slot.put(Connection::new(ours, 1).unwrap());
    let (_rx, rxq) = Ring::new(&mem, RX_RINGS);
    let (_tx, txq) = Ring::new(&mem, TX_RINGS);
    // The driver claims 0x35 chains in a 16-entry ring: virtio-queue refuses to pop any,
    // while the index still differs from the device's position.
    mem.write_obj(0x35u16, GuestAddress(TX_RINGS + 0x802))
        .unwrap();
    let mut worker = SteppedWorker::new(
        Activation {
            mem: mem.clone(),
            interrupt: Arc::new(Irq::default()),
            queues: vec![
                ActiveQueue {
                    index: 0,
                    queue: rxq,
                    event: vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
                },
                ActiveQueue {
                    index: 1,
                    queue: txq,
                    event: vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
                },
            ],
            acked_features: ALL,
        },
        slot,
        Arc::default(),
    )
    .unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    // On its own thread: a worker that spins never returns, and the test must still end.
    std::thread::spawn(move || {
        worker.service(true);
        let _ = done.send(());
    });
    assert!(
        finished.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the worker spins on an avail index more than a ring ahead"
    );
    let used_idx: u16 = mem.read_obj(GuestAddress(TX_RINGS + 0x1002)).unwrap();
    assert_eq!(used_idx, 0, "nothing was taken from the broken ring");
}

/// A queue on the rings at `base` that a restored transport hands over: the driver's
/// addresses, the device's saved positions, the ring memory left as the guest has it.
fn queue_at(base: u64, p: &QueuePosition) -> virtio_queue::Queue {
    use virtio_queue::QueueT;
    let mut q = virtio_queue::Queue::new(crate::virtio::test_rings::QSIZE).unwrap();
    q.set_size(crate::virtio::test_rings::QSIZE);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x800) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x1000) as u32), Some(0));
    q.set_ready(true);
    q.set_next_avail(p.next_avail);
    q.set_next_used(p.next_used);
    q
}

/// A card restored from `state` on `slot`, activated on the rings at their saved positions.
fn restored(
    state: &[u8],
    positions: &[QueuePosition],
    slot: &Arc<ConnectionSlot>,
    s: &Setup,
    irq: Arc<Irq>,
) -> Net {
    let mut dev = Net::new(MAC, slot.clone());
    dev.restore_device_state(state).unwrap();
    let queue = |index: usize, base: u64, ring: &crate::virtio::test_rings::Ring| {
        let p = positions.iter().find(|p| usize::from(p.index) == index);
        ActiveQueue {
            index: index as u16,
            queue: queue_at(base, p.expect("a position per queue")),
            event: ring.kick.try_clone().unwrap(),
        }
    };
    dev.activate(Activation {
        mem: s.mem.clone(),
        interrupt: irq,
        queues: vec![
            queue(RX_QUEUE, RX_RINGS, &s.rx),
            queue(TX_QUEUE, TX_RINGS, &s.tx),
        ],
        acked_features: ALL,
    })
    .unwrap();
    dev
}

/// The used index the device has published on the rings at `base`.
fn used_idx(mem: &GuestMemoryMmap, base: u64) -> u16 {
    mem.read_obj(GuestAddress(base + 0x1002)).unwrap()
}

/// Frame `i` of the save test: 60,000 bytes that say their number.
fn numbered(i: u16) -> Vec<u8> {
    let mut f = pattern(60_000);
    f[..2].copy_from_slice(&i.to_be_bytes());
    f
}

/// The whole length-prefixed frames in `bytes`, and whether a partial one follows.
fn split_frames(mut bytes: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut frames = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        if bytes.len() < 4 + len {
            break;
        }
        frames.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    (frames, !bytes.is_empty())
}

#[test]
fn a_saved_card_sends_each_pending_frame_once_and_receives_into_buffers_posted_before() {
    let mut s = started(ALL);
    let chains = crate::virtio::test_rings::QSIZE;
    // Receive: two 2 KiB buffers, and a 6000-byte frame from the old peer that needs
    // three: it waits in the card.
    let posted: Vec<u16> = (0..2)
        .map(|i| s.rx.add(&s.mem, &[(RX_BUFS + i * 0x1000, 2048, true)]))
        .collect();
    let held = pattern(6000);
    write_framed(&mut s.peer, &held);
    // Transmit: the old peer reads nothing, so the socket and the card's buffer fill and
    // the later chains stay in the ring.
    for i in 0..chains {
        let at = TX_BUFS + u64::from(i) * 0x10000;
        s.mem
            .write_slice(&[0u8; HDR_LEN], GuestAddress(at))
            .unwrap();
        s.mem
            .write_slice(&numbered(i), GuestAddress(at + HDR_LEN as u64))
            .unwrap();
        s.tx.add(&s.mem, &[(at, (HDR_LEN + 60_000) as u32, false)]);
    }
    let mut used = used_idx(&s.mem, TX_RINGS);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = used_idx(&s.mem, TX_RINGS);
        if now == used {
            break;
        }
        used = now;
    }
    let positions = s.dev.pause().unwrap();
    let state = s.dev.save_device_state().unwrap();
    let used = used_idx(&s.mem, TX_RINGS);
    assert!(used < chains, "back-pressure left chains in the ring");
    assert_eq!(used_idx(&s.mem, RX_RINGS), 0, "the held frame waits");
    // Every chain the worker took is in the used ring: none half-used.
    let tx_pos = positions[TX_QUEUE];
    assert_eq!(tx_pos.index, TX_QUEUE as u16);
    assert_eq!(tx_pos.next_avail, used);
    assert_eq!(tx_pos.next_used, used);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        used_idx(&s.mem, TX_RINGS),
        used,
        "nothing moves after the pause"
    );
    assert_eq!(
        positions[RX_QUEUE],
        QueuePosition {
            index: RX_QUEUE as u16,
            next_avail: 0,
            next_used: 0
        }
    );
    // The old peer gets what reached its socket, then the end of the stream.
    let mut old = Vec::new();
    s.peer.read_to_end(&mut old).unwrap();
    let (old_frames, partial) = split_frames(&old);
    let dropped = usize::from(partial);
    assert!(
        old_frames.len() + dropped < usize::from(used),
        "some frames the guest handed over were still in the card at the save"
    );

    // A resumed helper: a new passt on a new slot.
    let slot = Arc::new(ConnectionSlot::new().unwrap());
    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slot.put(Connection::new(ours, 1).unwrap());
    let irq = Arc::new(Irq::default());
    let mut dev = restored(&state, &positions, &slot, &s, irq.clone());
    let new_frames: Vec<Vec<u8>> = (0..usize::from(chains) - old_frames.len() - dropped)
        .map(|_| read_framed(&mut peer))
        .collect();
    // Each frame once, in order; only a frame cut in the old stream is missing.
    let mut want: Vec<Vec<u8>> = (0..chains).map(numbered).collect();
    if partial {
        want.remove(old_frames.len());
    }
    let got: Vec<Vec<u8>> = old_frames.into_iter().chain(new_frames).collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "frames lost, repeated or reordered");
    for i in 0..chains {
        assert_eq!(
            s.tx.used(&s.mem),
            (u32::from(i), 0),
            "chain {i} returned once"
        );
    }
    assert!(s.tx.idle(&s.mem));
    peer.set_nonblocking(true).unwrap();
    assert!(
        peer.read(&mut [0u8; 16]).is_err(),
        "nothing more reaches the new peer"
    );
    peer.set_nonblocking(false).unwrap();

    // The held frame goes first, into the buffers posted before the save and a new one.
    let more: Vec<u16> = (2..4)
        .map(|i| s.rx.add(&s.mem, &[(RX_BUFS + i * 0x1000, 2048, true)]))
        .collect();
    let first: Vec<_> = (0..3).map(|_| s.rx.used(&s.mem)).collect();
    assert_eq!(
        first,
        [
            (u32::from(posted[0]), 2048),
            (u32::from(posted[1]), 2048),
            (u32::from(more[0]), 6012 - 4096)
        ]
    );
    let mut got = vec![0u8; 3 * 2048];
    for i in 0..3 {
        s.mem
            .read_slice(
                &mut got[i * 2048..(i + 1) * 2048],
                GuestAddress(RX_BUFS + i as u64 * 0x1000),
            )
            .unwrap();
    }
    assert_eq!(&got[HDR_LEN..HDR_LEN + 6000], &held[..]);
    // Then a frame from the new peer.
    write_framed(&mut peer, b"after resume");
    assert_eq!(s.rx.used(&s.mem), (u32::from(more[1]), 12 + 12));
    let mut got = [0u8; 12];
    s.mem
        .read_slice(
            &mut got,
            GuestAddress(RX_BUFS + 3 * 0x1000 + HDR_LEN as u64),
        )
        .unwrap();
    assert_eq!(&got, b"after resume");
    // The link was up before and is up now: no configuration interrupt.
    wait_link(&dev, STATUS_LINK_UP);
    assert!(!irq.0.lock().unwrap().contains(&CONFIG));
    dev.reset();
}

/// A started card paused and saved with nothing in flight.
fn saved_idle() -> (Setup, Vec<QueuePosition>, Vec<u8>) {
    let mut s = started(ALL);
    wait_link(&s.dev, STATUS_LINK_UP);
    let positions = s.dev.pause().unwrap();
    let state = s.dev.save_device_state().unwrap();
    (s, positions, state)
}

#[test]
fn a_card_restored_without_a_peer_shows_the_cable_unplugged_with_a_configuration_interrupt() {
    let (s, positions, state) = saved_idle();
    let slot = Arc::new(ConnectionSlot::new().unwrap());
    let irq = Arc::new(Irq::default());
    let dev = restored(&state, &positions, &slot, &s, irq.clone());
    wait_link(&dev, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !irq.0.lock().unwrap().contains(&CONFIG) {
        assert!(Instant::now() < deadline, "no configuration interrupt");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The peer arrives: the link comes up again.
    let (ours, _peer) = UnixStream::pair().unwrap();
    slot.put(Connection::new(ours, 1).unwrap());
    wait_link(&dev, STATUS_LINK_UP);
}

#[test]
fn a_state_with_another_mac_is_refused_by_name() {
    let (s, _, state) = saved_idle();
    let mut other = Net::new(MacAddress([0x52, 0x54, 0, 9, 9, 9]), s.slot.clone());
    let err = other.restore_device_state(&state).unwrap_err().to_string();
    assert!(err.contains("virtio-net"), "{err}");
    assert!(err.contains("52:54:00:01:02:03"), "{err}");
    assert!(err.contains("52:54:00:09:09:09"), "{err}");
}

#[test]
fn a_truncated_or_garbage_state_is_an_error_not_a_panic() {
    let (s, _, state) = saved_idle();
    let mut fresh = Net::new(MAC, s.slot.clone());
    for cut in 0..state.len() {
        assert!(
            fresh.restore_device_state(&state[..cut]).is_err(),
            "{cut} of {} bytes accepted",
            state.len()
        );
    }
    let mut seed = 0x1234_5678u32;
    for len in [1, 7, 16, 64, 300] {
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        let _ = fresh.restore_device_state(&garbage);
    }
    // A frame longer than the stream allows.
    let mut big = state[..7].to_vec();
    assert_eq!(state.len(), 9, "mac, link, two empty frame lists");
    // One transmit frame of MAX_FRAME + 1 bytes: postcard's varint length, then the bytes.
    big.push(1);
    let mut len = stream::MAX_FRAME + 1;
    while len >= 0x80 {
        big.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    big.push(len as u8);
    big.extend(std::iter::repeat_n(0u8, stream::MAX_FRAME + 1));
    big.push(0);
    let err = fresh.restore_device_state(&big).unwrap_err().to_string();
    assert!(err.contains("frame"), "{err}");
    // The card is untouched: its own state still restores.
    fresh.restore_device_state(&state).unwrap();
}
