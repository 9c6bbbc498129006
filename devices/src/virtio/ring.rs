//! A split virtqueue's avail and used rings through host pointers, for devices on a hot
//! path.
//!
//! virtio-queue reaches every ring field through vm-memory's general path, a region search
//! and bounds checks per access: taking a chain and returning it costs several hundred
//! instructions, as much as a 4 KiB read from the page cache leaves for the device. A
//! [`SplitRing`] checks once, when a worker wakes up, that each ring lies whole in one guest
//! memory region, then reads avail entries and writes used elements through the mapping.
//!
//! Ordering is the virtio spec's: the avail index is loaded with Acquire before the entries
//! it covers; used elements are written before a Release store of the used index, which is
//! stored once per batch ([`SplitRing::needs_notification`]); a full fence separates that
//! store from reading `used_event`, and the `avail_event` store from reading the avail index
//! again. The queue's position (`next_avail`, `next_used`) comes from the [`Queue`] and goes
//! back to it in [`SplitRing::finish`].

use std::marker::PhantomData;
use std::num::Wrapping;
use std::sync::atomic::{AtomicU16, Ordering, fence};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::GuestMemory;

/// `virtq_used.flags`: the device does not want kicks (without EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = 1;

/// One queue's rings, mapped for the length of a worker's wake-up.
pub struct SplitRing<'m> {
    /// `virtq_avail`: flags, idx, ring[size], used_event.
    avail: *mut u8,
    /// `virtq_used`: flags, idx, ring[size] of (id: u32, len: u32), avail_event.
    used: *mut u8,
    size: u16,
    /// `size - 1`: the size is a power of two, so this turns an index into its slot.
    mask: u16,
    event_idx: bool,
    next_avail: Wrapping<u16>,
    /// The avail index as last read: entries before it are taken without reading it again.
    avail_end: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// `next_used` as last stored in the used index.
    published: Wrapping<u16>,
    /// `next_used` when the device last decided whether to interrupt.
    signalled: Wrapping<u16>,
    /// The pointers stay valid while the guest memory they came from lives.
    _mem: PhantomData<&'m GuestMemory>,
}

/// Host address of guest bytes `[addr, addr + len)` if they lie in one region and the
/// address has the alignment `align` (the mapping is page aligned, so guest and host
/// alignment agree).
fn map(mem: &GuestMemory, addr: u64, len: usize, align: usize) -> Option<*mut u8> {
    let slice = mem.get_slice(GuestAddress(addr), len).ok()?;
    let ptr = slice.ptr_guard_mut().as_ptr();
    ptr.addr().is_multiple_of(align).then_some(ptr)
}

impl<'m> SplitRing<'m> {
    /// Maps the rings of `queue`; `None` if the queue is not ready, its size is not a power
    /// of two (virtio-queue refuses those) or a ring does not lie whole in one region (the
    /// caller then takes virtio-queue's general path).
    pub fn new(mem: &'m GuestMemory, queue: &Queue) -> Option<Self> {
        let size = queue.size();
        if !queue.ready() || !size.is_power_of_two() {
            return None;
        }
        let n = usize::from(size);
        let avail = map(mem, queue.avail_ring(), 6 + 2 * n, 2)?;
        let used = map(mem, queue.used_ring(), 6 + 8 * n, 4)?;
        let (next_avail, next_used) = (Wrapping(queue.next_avail()), Wrapping(queue.next_used()));
        Some(Self {
            avail,
            used,
            size,
            mask: size - 1,
            event_idx: queue.event_idx_enabled(),
            next_avail,
            avail_end: next_avail,
            next_used,
            published: next_used,
            signalled: next_used,
            _mem: PhantomData,
        })
    }

    /// The 16-bit field at byte `offset` of the avail ring.
    fn avail_field(&self, offset: usize) -> &AtomicU16 {
        debug_assert!(offset + 2 <= 6 + 2 * usize::from(self.size));
        // SAFETY: every caller passes the offset of a 2-byte field of `virtq_avail`, which
        // `new` mapped whole (2-byte aligned, in one region that outlives `'m`). Guest memory
        // is only reached through atomics and volatile accesses, never references to plain
        // data, so viewing the field as an `AtomicU16` aliases nothing.
        unsafe { AtomicU16::from_ptr(self.avail.add(offset).cast()) }
    }

    /// The 16-bit field at byte `offset` of the used ring.
    fn used_field(&self, offset: usize) -> &AtomicU16 {
        debug_assert!(offset + 2 <= 6 + 8 * usize::from(self.size));
        // SAFETY: as in `avail_field`, for `virtq_used` (4-byte aligned, mapped whole).
        unsafe { AtomicU16::from_ptr(self.used.add(offset).cast()) }
    }

    fn avail_idx(&self, order: Ordering) -> Wrapping<u16> {
        Wrapping(u16::from_le(self.avail_field(2).load(order)))
    }

    /// Chains the driver made available and the device has not taken; `None` for an avail
    /// index more than a ring ahead, which no driver can produce.
    fn pending(&self, order: Ordering) -> Option<u16> {
        let n = (self.avail_idx(order) - self.next_avail).0;
        (n <= self.size).then_some(n)
    }

    /// Reads the avail index again; returns how many chains it shows that
    /// [`SplitRing::pop`] has not taken (none for an index more than a ring ahead, which no
    /// driver can produce).
    pub fn refresh(&mut self) -> u16 {
        match self.pending(Ordering::Acquire) {
            Some(n) => {
                self.avail_end = self.next_avail + Wrapping(n);
                n
            }
            None => {
                crate::guest_warn!("virtio: avail index is more than a ring ahead");
                self.avail_end = self.next_avail;
                0
            }
        }
    }

    /// Takes the next available chain's head index. The head is the driver's word: the
    /// caller checks it against the descriptor table.
    pub fn pop(&mut self) -> Option<u16> {
        if self.next_avail == self.avail_end && self.refresh() == 0 {
            return None;
        }
        let slot = usize::from(self.next_avail.0 & self.mask);
        let head = u16::from_le(self.avail_field(4 + 2 * slot).load(Ordering::Relaxed));
        self.next_avail += 1;
        Some(head)
    }

    /// Whether the driver made a chain available since the last [`SplitRing::pop`] ran dry.
    pub fn has_avail(&self) -> bool {
        self.pending(Ordering::Acquire).is_some_and(|n| n > 0)
    }

    /// Puts chain `head` on the used ring with `len` bytes written; `false` for a head past
    /// the descriptor table, which is not returned. The driver sees it at the next
    /// [`SplitRing::publish`].
    pub fn push(&mut self, head: u16, len: u32) -> bool {
        if head >= self.size {
            return false;
        }
        let slot = usize::from(self.next_used.0 & self.mask);
        let elem = 4 + 8 * slot;
        // SAFETY: `elem + 8 <= 4 + 8 * size`, inside the used ring `new` mapped, 4-byte
        // aligned; the guest may write the same bytes concurrently, so the store is volatile.
        unsafe {
            let p = self.used.add(elem).cast::<u32>();
            std::ptr::write_volatile(p, u32::from(head).to_le());
            std::ptr::write_volatile(p.add(1), len.to_le());
        }
        self.next_used += 1;
        true
    }

    /// Stores the used index, after every element pushed before it.
    pub fn publish(&mut self) {
        if self.published != self.next_used {
            self.used_field(2)
                .store(self.next_used.0.to_le(), Ordering::Release);
            self.published = self.next_used;
        }
    }

    /// Publishes, then says whether the driver wants an interrupt for the chains used since
    /// the last call: with EVENT_IDX, if `used_event` lies among them; otherwise always (as
    /// virtio-queue, which leaves `VRING_AVAIL_F_NO_INTERRUPT` aside).
    pub fn needs_notification(&mut self) -> bool {
        self.publish();
        // The used index must be visible before `used_event` is read, or an interrupt the
        // driver re-armed for in between is lost.
        fence(Ordering::SeqCst);
        let (new, old) = (self.next_used, self.signalled);
        self.signalled = new;
        if !self.event_idx {
            return new != old;
        }
        let at = 4 + 2 * usize::from(self.size);
        let event = Wrapping(u16::from_le(self.avail_field(at).load(Ordering::Relaxed)));
        new - event - Wrapping(1) < new - old
    }

    /// Asks the driver to kick for its next chain; says whether one is already there (the
    /// caller then serves it instead of sleeping).
    pub fn enable_notification(&mut self) -> bool {
        if self.event_idx {
            let at = 4 + 8 * usize::from(self.size);
            self.used_field(at)
                .store(self.next_avail.0.to_le(), Ordering::Relaxed);
        } else {
            self.used_field(0).store(0, Ordering::Relaxed);
        }
        // The request must be visible before the avail index is read again, or a chain the
        // driver published without kicking is missed.
        fence(Ordering::SeqCst);
        self.pending(Ordering::Relaxed).is_some_and(|n| n > 0)
    }

    /// Tells the driver it need not kick (with EVENT_IDX, a stale `avail_event` does that).
    pub fn disable_notification(&mut self) {
        if !self.event_idx {
            self.used_field(0)
                .store(USED_F_NO_NOTIFY.to_le(), Ordering::Relaxed);
        }
    }

    /// Publishes what is left and hands the ring position back to `queue`.
    pub fn finish(mut self, queue: &mut Queue) {
        self.publish();
        queue.set_next_avail(self.next_avail.0);
        queue.set_next_used(self.next_used.0);
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::SplitRing;
    use crate::virtio::test_rings::{QSIZE, Ring};

    const BASE: u64 = 0x1_0000;
    const AVAIL: u64 = BASE + 0x800;
    const USED: u64 = BASE + 0x1000;
    const USED_EVENT: u64 = AVAIL + 4 + 2 * QSIZE as u64;
    const AVAIL_EVENT: u64 = USED + 4 + 8 * QSIZE as u64;

    fn setup(event_idx: bool) -> (GuestMemoryMmap, Ring, Queue) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (ring, mut q) = Ring::new(&mem, BASE);
        q.set_event_idx(event_idx);
        (mem, ring, q)
    }

    fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    #[test]
    fn pops_heads_in_order_and_hands_the_position_back() {
        let (mem, mut ring, mut q) = setup(false);
        let a = ring.add(&mem, &[(0x8000, 16, false)]);
        let b = ring.add(&mem, &[(0x9000, 16, true)]);
        let mut r = SplitRing::new(&mem, &q).unwrap();
        assert_eq!((r.pop(), r.pop(), r.pop()), (Some(a), Some(b), None));
        r.finish(&mut q);
        assert_eq!(q.next_avail(), 2);
    }

    #[test]
    fn used_index_moves_once_per_batch_after_its_elements() {
        let (mem, mut ring, mut q) = setup(false);
        ring.add(&mem, &[(0x8000, 16, true)]);
        ring.add(&mem, &[(0x9000, 16, true)]);
        let mut r = SplitRing::new(&mem, &q).unwrap();
        let (a, b) = (r.pop().unwrap(), r.pop().unwrap());
        assert!(r.push(a, 7) && r.push(b, 9));
        assert_eq!(used_idx(&mem), 0, "not published before the batch ends");
        assert!(r.needs_notification());
        assert_eq!(used_idx(&mem), 2);
        assert_eq!(ring.used(&mem), (u32::from(a), 7));
        assert_eq!(ring.used(&mem), (u32::from(b), 9));
        r.finish(&mut q);
        assert_eq!(q.next_used(), 2);
    }

    #[test]
    fn refuses_a_head_past_the_descriptor_table() {
        let (mem, _ring, q) = setup(false);
        let mut r = SplitRing::new(&mem, &q).unwrap();
        assert!(!r.push(QSIZE, 1));
        assert!(!r.needs_notification(), "nothing was used");
        assert_eq!(used_idx(&mem), 0);
    }

    #[test]
    fn takes_nothing_from_an_avail_index_more_than_a_ring_ahead() {
        let (mem, _ring, q) = setup(false);
        mem.write_obj(QSIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
        let mut r = SplitRing::new(&mem, &q).unwrap();
        assert_eq!(r.pop(), None);
        assert!(!r.has_avail());
        assert!(!r.enable_notification(), "a broken index is not work to do");
    }

    #[test]
    fn event_idx_interrupts_only_once_used_event_is_passed() {
        let (mem, mut ring, q) = setup(true);
        for _ in 0..3 {
            ring.add(&mem, &[(0x8000, 16, true)]);
        }
        mem.write_obj(1u16, GuestAddress(USED_EVENT)).unwrap();
        let mut r = SplitRing::new(&mem, &q).unwrap();
        let head = r.pop().unwrap();
        r.push(head, 0);
        assert!(
            !r.needs_notification(),
            "used index 1 has not passed used_event 1"
        );
        let head = r.pop().unwrap();
        r.push(head, 0);
        assert!(r.needs_notification());
        let head = r.pop().unwrap();
        r.push(head, 0);
        assert!(!r.needs_notification(), "already signalled past used_event");
    }

    #[test]
    fn enabling_notifications_sets_avail_event_and_sees_a_late_chain() {
        let (mem, mut ring, q) = setup(true);
        ring.add(&mem, &[(0x8000, 16, true)]);
        let mut r = SplitRing::new(&mem, &q).unwrap();
        assert!(r.pop().is_some());
        assert!(!r.enable_notification());
        assert_eq!(mem.read_obj::<u16>(GuestAddress(AVAIL_EVENT)).unwrap(), 1);
        ring.add(&mem, &[(0x9000, 16, true)]);
        assert!(r.enable_notification());
    }

    #[test]
    fn without_event_idx_notifications_are_the_used_flag() {
        let (mem, _ring, q) = setup(false);
        let mut r = SplitRing::new(&mem, &q).unwrap();
        r.disable_notification();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED)).unwrap(), 1);
        r.enable_notification();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED)).unwrap(), 0);
    }

    #[test]
    fn maps_nothing_for_rings_outside_guest_memory() {
        let (mem, _ring, mut q) = setup(false);
        q.set_used_ring_address(Some(0x10_0000 - 8), Some(0));
        assert!(SplitRing::new(&mem, &q).is_none());
    }
}
