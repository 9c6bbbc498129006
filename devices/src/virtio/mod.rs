//! Virtio devices over the modern (1.x) virtio-pci transport.
//!
//! Data flow: the guest driver programs the transport ([`pci::VirtioPciDevice`]) through a
//! memory BAR (common config, device config, ISR, MSI-X table). On DRIVER_OK the transport
//! hands the ready queues, each with the eventfd its notify address kicks, to the
//! [`VirtioDevice`], which starts a worker thread ([`worker`]). The worker pops descriptor
//! chains with `virtio-queue`, does the I/O straight into guest memory and raises the
//! queue's MSI-X vector through [`VirtioInterrupt`]. Nothing here knows KVM: interrupts leave
//! through [`MsixInterrupt`] / [`MsiRoutes`] and notify addresses through
//! [`IoEventRegistrar`], which `pci::kvm` implements on the VM fd.

pub mod block;
pub mod gpu;
pub mod input;
pub mod net;
pub mod pci;
pub mod ring;
pub mod rng;
pub mod snd;
pub mod worker;

#[cfg(test)]
mod test_rings;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use crate::pci::{IoEventRegistrar, MsiRoutes, MsixInterrupt};
use crate::state::StateError;

/// Feature bits of the transport and ring that every device shares.
pub const VIRTIO_F_VERSION_1: u32 = 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Guest memory as devices see it.
pub type GuestMemory = GuestMemoryMmap;

/// Errors of the virtio layer.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    #[error("cannot start the device worker thread")]
    SpawnWorker(#[source] io::Error),
    #[error("queue {index} is not valid in guest memory")]
    InvalidQueue { index: usize },
    #[error("device was activated with {got} queues, it needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("cannot register the queue notify address")]
    IoEvent(#[source] io::Error),
    #[error("PCI capability setup failed")]
    Pci(#[source] Box<crate::pci::PciError>),
}

/// How a device raises interrupts: per queue, or for a configuration change.
pub trait VirtioInterrupt: Send + Sync {
    fn notify_queue(&self, queue: u16);
    fn notify_config(&self);
}

/// A queue the driver made ready, handed to the device on DRIVER_OK.
pub struct ActiveQueue {
    pub index: u16,
    pub queue: Queue,
    /// Signalled by every driver notification for this queue.
    pub event: EventFd,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<ActiveQueue>,
    pub acked_features: u64,
}

impl Activation {
    /// The parts of an activation for a device with exactly one queue.
    pub fn single_queue(
        mut self,
    ) -> Result<(GuestMemory, Arc<dyn VirtioInterrupt>, ActiveQueue), VirtioError> {
        let got = self.queues.len();
        match (self.queues.pop(), got) {
            (Some(q), 1) => Ok((self.mem, self.interrupt, q)),
            _ => Err(VirtioError::QueueCount { got, want: 1 }),
        }
    }
}

/// Where a queue a device was serving stood when it was paused for a save: the next
/// avail entry it would take and the next used entry it would write. The transport puts
/// the queue back at these positions when it activates the restored device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePosition {
    pub index: u16,
    pub next_avail: u16,
    pub next_used: u16,
}

impl QueuePosition {
    /// The position of `queue`, which the device served as queue `index`.
    pub fn of(index: u16, queue: &Queue) -> Self {
        Self {
            index,
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
        }
    }
}

/// Stops a [`worker::Worker`] whose handler is an `H` for a save and reads the queue
/// positions from the handler (`positions`); an error when there is no running worker.
pub fn pause_worker<H: 'static>(
    device: &str,
    worker: &mut Option<worker::Worker>,
    positions: impl FnOnce(&H) -> Vec<QueuePosition>,
) -> Result<Vec<QueuePosition>, StateError> {
    let handler = worker
        .take()
        .and_then(|mut w| w.stop_and_take::<H>())
        .ok_or_else(|| StateError::device(device, "its worker was not running"))?;
    Ok(positions(&handler))
}

/// A virtio device model, independent of transport.
///
/// Saved state: the transport saves what the driver programmed (features, status, queue
/// addresses, vectors) itself. A device that can be saved overrides [`can_save`],
/// [`pause`], [`save_device_state`] and [`restore_device_state`]; the defaults refuse, so a
/// device with state nobody wrote the code for is never saved silently (the machine marks
/// it unsupported when `can_save` is false, and the defaults return
/// [`StateError::Unsupported`]).
///
/// [`can_save`]: VirtioDevice::can_save
/// [`pause`]: VirtioDevice::pause
/// [`save_device_state`]: VirtioDevice::save_device_state
/// [`restore_device_state`]: VirtioDevice::restore_device_state
pub trait VirtioDevice: Send {
    /// Virtio device id (2 = block, 4 = entropy).
    fn device_type(&self) -> u16;
    /// PCI class, subclass and programming interface.
    fn pci_class(&self) -> (u8, u8, u8);
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits offered (the transport adds `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device: from now on it serves the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError>;
    /// Stops the device and drops its queues; it may be activated again.
    fn reset(&mut self);

    /// Short name for saved-state errors ("virtio-blk").
    fn state_name(&self) -> &str {
        "virtio device"
    }

    /// Whether this device implements the saved-state hooks below.
    fn can_save(&self) -> bool {
        false
    }

    /// For a save (the VM ends after it): stops the device's threads so that nothing
    /// touches guest memory or raises an interrupt any more, and returns where each queue
    /// it was activated with stands. Only called on an activated device.
    fn pause(&mut self) -> Result<Vec<QueuePosition>, StateError> {
        Err(StateError::Unsupported(self.state_name().to_string()))
    }

    /// The device's own state (configuration space, backend parameters, requests it
    /// holds), after [`pause`](Self::pause) when it was active.
    fn save_device_state(&mut self) -> Result<Vec<u8>, StateError> {
        Err(StateError::Unsupported(self.state_name().to_string()))
    }

    /// Takes back [`save_device_state`](Self::save_device_state)'s state on a freshly
    /// built device, before the transport activates it again with the saved queues.
    fn restore_device_state(&mut self, _state: &[u8]) -> Result<(), StateError> {
        Err(StateError::Unsupported(self.state_name().to_string()))
    }
}

/// Copies the bytes `[offset, offset + data.len())` of a device's configuration structure;
/// bytes past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
