//! virtio-rng: entropy from the host's getrandom(2).
//!
//! Data flow: the driver queues device-writable buffers and kicks; the worker fills each
//! with random bytes (at most [`MAX_FILL`] per request, so a huge buffer cannot keep the
//! worker busy) and returns it with the length filled.

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestAddress};

use super::worker::{QueueHandler, Worker, drain_queue};
use crate::state::StateError;

use super::{
    Activation, GuestMemory, QueuePosition, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
    VirtioDevice, VirtioError, VirtioInterrupt,
};

/// Virtio device id of an entropy source.
pub const DEVICE_TYPE: u16 = 4;
pub const QUEUE_SIZE: u16 = 64;
/// Bytes one request gets at most.
pub const MAX_FILL: usize = 64 * 1024;

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    worker: Option<Worker>,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        (0xff, 0x00, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        let (mem, interrupt, q) = activation.single_queue()?;
        let handler = RngHandler {
            mem,
            queue: q.queue,
            index: q.index,
            interrupt,
        };
        self.worker = Some(Worker::spawn("hospes-rng", vec![q.event], handler)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn state_name(&self) -> &str {
        "virtio-rng"
    }

    fn can_save(&self) -> bool {
        true
    }

    fn pause(&mut self) -> Result<Vec<QueuePosition>, StateError> {
        super::pause_worker("virtio-rng", &mut self.worker, |h: &RngHandler| {
            vec![QueuePosition::of(h.index, &h.queue)]
        })
    }

    /// Entropy has no state of its own.
    fn save_device_state(&mut self) -> Result<Vec<u8>, StateError> {
        Ok(Vec::new())
    }

    fn restore_device_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(StateError::mismatch(
                "virtio-rng",
                "unexpected device state",
            ))
        }
    }
}

struct RngHandler {
    mem: GuestMemory,
    queue: Queue,
    index: u16,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// Fills `buf` from getrandom(2).
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            done += n as usize;
        }
    }
    Ok(())
}

/// Fills the chain's device-writable buffers; returns the bytes written.
fn fill_chain(mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>, buf: &mut [u8]) -> u32 {
    let mut written = 0usize;
    for d in chain.writable() {
        let mut addr = d.addr().0;
        let mut left = (d.len() as usize).min(MAX_FILL - written);
        while left > 0 {
            let n = left.min(buf.len());
            if fill_random(&mut buf[..n]).is_err() {
                return written as u32;
            }
            if mem.write_slice(&buf[..n], GuestAddress(addr)).is_err() {
                return written as u32;
            }
            written += n;
            left -= n;
            addr = addr.wrapping_add(n as u64);
        }
    }
    written as u32
}

impl QueueHandler for RngHandler {
    fn process(&mut self, _index: usize) {
        let mut buf = [0u8; 4096];
        drain_queue(
            &self.mem,
            &mut self.queue,
            self.index,
            &*self.interrupt,
            |chain| fill_chain(&self.mem, chain, &mut buf),
        );
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::testing::{DATA, MockDriver};

    #[test]
    fn fills_a_guest_buffer_with_random_bytes() {
        let mut d = MockDriver::started(Box::new(Rng::new()), 16);
        let (_, used) = d.submit(&[(DATA, 256, true), (DATA + 0x1000, 256, true)]);
        assert_eq!(used, 512);
        let mut a = [0u8; 256];
        let mut b = [0u8; 256];
        d.mem.read_slice(&mut a, GuestAddress(DATA)).unwrap();
        d.mem
            .read_slice(&mut b, GuestAddress(DATA + 0x1000))
            .unwrap();
        // 256 zero bytes (or two equal halves) from getrandom: odds of 2^-2048.
        assert_ne!(a, [0; 256]);
        assert_ne!(a, b);
        d.wait_interrupt();
        assert!(d.irq.fired.lock().unwrap().contains(&0));
    }

    #[test]
    fn caps_a_huge_request_and_skips_readable_buffers() {
        let mut d = MockDriver::started(Box::new(Rng::new()), 16);
        let (_, used) = d.submit(&[(DATA, 64, false), (DATA + 0x1000, 0x20_0000, true)]);
        assert_eq!(used as usize, MAX_FILL);
        assert_eq!(d.mem.read_obj::<u64>(GuestAddress(DATA)).unwrap(), 0);
        // A buffer past guest memory fills nothing and the device carries on.
        let (_, used) = d.submit(&[(1 << 40, 4096, true)]);
        assert_eq!(used, 0);
        let (_, used) = d.submit(&[(DATA, 16, true)]);
        assert_eq!(used, 16);
    }

    #[test]
    fn a_restored_rng_serves_the_next_request_with_the_used_index_going_on() {
        use crate::state::Snapshot;
        let mut d = MockDriver::started(Box::new(Rng::new()), 16);
        for _ in 0..3 {
            d.submit(&[(DATA, 32, true)]);
        }
        d.save_and_restore(Box::new(Rng::new())).unwrap();
        assert!(d.stays_idle());
        let (_, used) = d.submit(&[(DATA + 0x1000, 64, true)]);
        assert_eq!(used, 64);
        assert_eq!(d.used_idx(), 4);
        d.wait_interrupt();
        assert!(
            d.irq.fired.lock().unwrap().contains(&0),
            "vector 0 still routed"
        );

        let state = d.dev.lock().unwrap().save_state();
        assert!(state.is_ok());
        let mut fresh = MockDriver::new(Box::new(Rng::new()));
        let mut garbage = state.unwrap();
        garbage.truncate(garbage.len() / 2);
        assert!(fresh.dev.lock().unwrap().restore_state(&garbage).is_err());
        fresh = fresh.start(16);
        assert_eq!(fresh.submit(&[(DATA, 8, true)]).1, 8);
    }
}
