//! The device worker thread: sleeps in poll(2) on the queues' eventfds and a stop eventfd,
//! and calls the device's [`QueueHandler`] for each queue the driver kicked. All guest I/O of
//! a device happens here, never on a vCPU thread.

use std::any::Any;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use virtio_queue::{DescriptorChain, Queue, QueueT};

use super::ring::SplitRing;
use super::{GuestMemory, VirtioError, VirtioInterrupt};

/// What a device does when queue `index` was notified.
pub trait QueueHandler: Send + 'static {
    fn process(&mut self, index: usize);
}

/// What a stopped thread hands back: its handler, for a device pausing for a save.
type Returned = Box<dyn Any + Send>;

/// A running worker; dropping it stops and joins the thread.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<Returned>>,
}

impl Worker {
    /// Starts `handler` on a thread named `name`, woken by `events` (one per queue, in the
    /// order the handler numbers its queues).
    pub fn spawn<H: QueueHandler>(
        name: &str,
        events: Vec<EventFd>,
        mut handler: H,
    ) -> Result<Self, VirtioError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        let stop_thread = stop.try_clone().map_err(VirtioError::EventFd)?;
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                run(&stop_thread, &events, &mut handler);
                Box::new(handler) as Returned
            })
            .map_err(VirtioError::SpawnWorker)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it to finish the request it is serving.
    pub fn stop(&mut self) {
        let _ = stop_thread(&self.stop, &mut self.thread, "virtio worker");
    }

    /// Stops the thread as [`stop`](Self::stop) does and hands back its handler (a device
    /// pausing for a save reads its queues' positions from it); `None` when the thread had
    /// already stopped, panicked, or `H` is not the handler's type.
    pub fn stop_and_take<H: 'static>(&mut self) -> Option<H> {
        stop_thread(&self.stop, &mut self.thread, "virtio worker")?
            .downcast::<H>()
            .ok()
            .map(|h| *h)
    }
}

fn stop_thread(
    stop: &EventFd,
    thread: &mut Option<JoinHandle<Returned>>,
    what: &str,
) -> Option<Returned> {
    let thread = thread.take()?;
    if let Err(e) = stop.write(1) {
        log::error!("{what}: cannot signal stop: {e}");
        return None;
    }
    match thread.join() {
        Ok(r) => Some(r),
        Err(_) => {
            log::error!("{what} panicked");
            None
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run<H: QueueHandler>(stop: &EventFd, events: &[EventFd], handler: &mut H) {
    let mut fds: Vec<libc::pollfd> = std::iter::once(stop)
        .chain(events)
        .map(|e| libc::pollfd {
            fd: e.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Serve anything queued before the worker started.
    for index in 0..events.len() {
        handler.process(index);
    }
    loop {
        // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd structs that the
        // kernel may write `revents` into for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("virtio worker: poll failed: {err}");
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        for (index, (pfd, event)) in fds[1..].iter().zip(events).enumerate() {
            if pfd.revents & libc::POLLIN != 0 {
                // The count is irrelevant; reading resets it so poll sleeps again.
                let _ = event.read();
                handler.process(index);
            }
        }
    }
}

/// A device thread with its own event loop (for devices whose loop watches more than
/// queue eventfds, like a peer socket): it gets a stop eventfd to poll, and dropping the
/// handle signals it and joins the thread.
pub struct DeviceThread {
    stop: EventFd,
    thread: Option<JoinHandle<Returned>>,
}

impl DeviceThread {
    /// Starts `run` on a thread named `name`; `run` must return once its eventfd is
    /// readable. What it returns comes back from [`DeviceThread::stop_and_take`].
    pub fn spawn<R: Send + 'static>(
        name: &str,
        run: impl FnOnce(EventFd) -> R + Send + 'static,
    ) -> Result<Self, VirtioError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        let stop_thread = stop.try_clone().map_err(VirtioError::EventFd)?;
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || Box::new(run(stop_thread)) as Returned)
            .map_err(VirtioError::SpawnWorker)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl DeviceThread {
    /// Stops the thread and hands back what its `run` returned (`None` when it had
    /// already stopped, panicked, or returned another type).
    pub fn stop_and_take<R: 'static>(&mut self) -> Option<R> {
        stop_thread(&self.stop, &mut self.thread, "device thread")?
            .downcast::<R>()
            .ok()
            .map(|r| *r)
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        let _ = stop_thread(&self.stop, &mut self.thread, "device thread");
    }
}

/// Serves every available chain of `queue` with `serve` (which returns the bytes it wrote
/// into guest memory), then interrupts the driver if it asked for it. A ring that claims
/// buffers but yields none is broken: the loop stops instead of spinning the thread.
pub fn drain_queue(
    mem: &GuestMemory,
    queue: &mut Queue,
    index: u16,
    interrupt: &dyn VirtioInterrupt,
    serve: impl FnMut(DescriptorChain<&GuestMemory>) -> u32,
) {
    drain_queue_polling(mem, queue, index, interrupt, Duration::ZERO, serve);
}

/// Longest [`drain_queue_polling`] window a device may ask for.
pub const MAX_POLL: Duration = Duration::from_micros(50);

/// As [`drain_queue`], but after each batch (once the driver has had its one interrupt for
/// it) keeps watching the avail index for up to `poll` (at most [`MAX_POLL`]) before
/// re-enabling notifications and going back to sleep. A driver that resubmits as soon as it
/// sees completions then needs no kick, and the worker no wake-up, to keep requests flowing.
/// The window only opens after the device did work, so an idle guest costs no CPU; a busy
/// one pays at most `poll` of spinning per batch.
pub fn drain_queue_polling(
    mem: &GuestMemory,
    queue: &mut Queue,
    index: u16,
    interrupt: &dyn VirtioInterrupt,
    poll: Duration,
    mut serve: impl FnMut(DescriptorChain<&GuestMemory>) -> u32,
) {
    let poll = poll.min(MAX_POLL);
    if queue.disable_notification(mem).is_err() {
        log::debug!("virtio: queue {index}: rings not in guest memory");
        return;
    }
    loop {
        let mut served = 0usize;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let used = serve(chain);
            if queue.add_used(mem, head, used).is_err() {
                log::debug!("virtio: queue {index}: cannot return chain {head}");
            }
            served += 1;
        }
        if served > 0 && queue.needs_notification(mem).unwrap_or(true) {
            interrupt.notify_queue(index);
        }
        if served > 0 && wait_for_avail(mem, queue, poll) {
            continue;
        }
        match queue.enable_notification(mem) {
            Ok(true) if served > 0 => {
                if queue.disable_notification(mem).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// As [`drain_queue_polling`] for a device that walks its chains itself and only needs each
/// chain's head index from the ring (`serve` returns the bytes it wrote into guest memory).
/// The rings are reached through a [`SplitRing`] mapping and the used index is stored once
/// per batch, right before the interrupt decision; a queue whose rings are not each in one
/// guest memory region goes through [`drain_queue_polling`].
pub fn drain_heads_polling(
    mem: &GuestMemory,
    queue: &mut Queue,
    index: u16,
    interrupt: &dyn VirtioInterrupt,
    poll: Duration,
    mut serve: impl FnMut(u16) -> u32,
) {
    let Some(mut ring) = SplitRing::new(mem, queue) else {
        drain_queue_polling(mem, queue, index, interrupt, poll, |chain| {
            serve(chain.head_index())
        });
        return;
    };
    let poll = poll.min(MAX_POLL);
    ring.disable_notification();
    loop {
        let mut served = 0usize;
        while let Some(head) = ring.pop() {
            let used = serve(head);
            if !ring.push(head, used) {
                crate::guest_warn!("virtio: queue {index}: chain head {head} is past the ring");
            }
            served += 1;
        }
        if served > 0 && ring.needs_notification() {
            interrupt.notify_queue(index);
        }
        if served > 0 && spin_until(poll, || ring.has_avail()) {
            continue;
        }
        // Unlike the general path, a broken avail index does not count as work here, so a
        // chain published just before notifications came back on is served, not slept on.
        if !ring.enable_notification() {
            break;
        }
        ring.disable_notification();
    }
    ring.finish(queue);
}

/// Spins up to `poll` until the driver makes a new chain available; says whether it did.
fn wait_for_avail(mem: &GuestMemory, queue: &Queue, poll: Duration) -> bool {
    spin_until(poll, || {
        queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0 != queue.next_avail())
    })
}

/// Spins up to `poll` until `ready` holds; says whether it did. Each round yields the CPU,
/// so a thread that shares it (the vCPU whose requests the worker waits for, on a busy
/// host) runs instead of waiting out the window; alone on its CPU the yield returns at once.
fn spin_until(poll: Duration, mut ready: impl FnMut() -> bool) -> bool {
    if poll.is_zero() {
        return false;
    }
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= poll {
            return false;
        }
        std::thread::yield_now();
    }
}
