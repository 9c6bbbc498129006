//! virtio-net: an Ethernet card whose cable is a stream socket to passt.
//!
//! Data flow: queue 0 (receive) holds guest buffers, queue 1 (transmit) guest frames. The
//! device worker ([`handler`]) sleeps in poll(2) on both queues' eventfds, the peer socket
//! and the [`ConnectionSlot`]'s eventfd. Transmit: each chain is a 12-byte virtio-net
//! header and a frame; the worker copies the frame out of guest memory, finishes a partial
//! checksum if the header asks for it, and queues it length-prefixed for the socket
//! ([`stream`]). Receive: each frame read from the socket goes into as many receive chains
//! as it needs (`VIRTIO_NET_F_MRG_RXBUF`) behind a header that marks it checksummed. When
//! the guest has no receive buffers the worker stops reading the socket, and when the
//! socket is full it stops taking transmit chains: back-pressure, never a blocked vCPU.
//! Without a peer (passt restarting) transmitted frames are dropped and the configuration
//! says the link is down (with a configuration interrupt), as on an unplugged cable.
//! Nothing here knows passt or KVM.
//!
//! Saved state ([`state`]): pausing stops the worker and takes its handler back; every
//! chain the worker took is already in the used ring, so the transport saves plain queue
//! positions. The card saves its MAC, the link state the guest saw and the whole frames it
//! held; a restored card sends and delivers those first on its new connection.
//!
//! Offloads: checksum both ways (`CSUM`, `GUEST_CSUM`). Segmentation is not offered: passt
//! gives the guest a 65520-byte MTU, so a guest already hands over 64 KiB frames.

pub mod backend;
pub mod csum;
mod handler;
mod state;
pub mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use backend::{Connection, ConnectionSlot, pollfd};
#[cfg(any(test, feature = "test-support"))]
pub use handler::SteppedWorker;

use super::{Activation, QueuePosition, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, VirtioError};
use crate::state::StateError;
use hospes_core::config::MacAddress;

/// Virtio device id of a network card.
pub const DEVICE_TYPE: u16 = 1;
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;

/// Feature bits (virtio 1.2, 5.1.3).
pub const F_CSUM: u32 = 0;
pub const F_GUEST_CSUM: u32 = 1;
pub const F_MAC: u32 = 5;
pub const F_MRG_RXBUF: u32 = 15;
pub const F_STATUS: u32 = 16;

/// `virtio_net_hdr` as every VERSION_1 device uses it: 12 bytes.
pub const HDR_LEN: usize = 12;
pub const HDR_F_NEEDS_CSUM: u8 = 1;
pub const HDR_F_DATA_VALID: u8 = 2;
pub const HDR_GSO_NONE: u8 = 0;

/// `status` in the configuration: the link is up.
pub const STATUS_LINK_UP: u16 = 1;

/// Frame counters and the link state, readable while the device runs. The link is up
/// while the card has a peer: the guest sees the cable unplugged while passt restarts.
#[derive(Default, Debug)]
pub struct NetCounters {
    pub link_up: AtomicBool,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
}

impl NetCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The network card.
pub struct Net {
    mac: MacAddress,
    slot: Arc<ConnectionSlot>,
    counters: Arc<NetCounters>,
    worker: Option<super::worker::DeviceThread>,
    /// What the worker held when it was paused for a save.
    paused: handler::Carried,
    /// What a restored card hands its next activation.
    restored: handler::Carried,
}

impl Net {
    /// A card with address `mac` whose peer arrives through `slot`.
    pub fn new(mac: MacAddress, slot: Arc<ConnectionSlot>) -> Self {
        Self {
            mac,
            slot,
            counters: Arc::default(),
            worker: None,
            paused: handler::Carried::default(),
            restored: handler::Carried::default(),
        }
    }

    /// The card's frame counters.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    fn config_bytes(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac.0);
        if self.counters.link_up.load(Ordering::Acquire) {
            c[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        }
        // max_virtqueue_pairs: one pair (only meaningful with VIRTIO_NET_F_MQ).
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Network controller, Ethernet.
        (0x02, 0x00, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        [
            F_CSUM,
            F_GUEST_CSUM,
            F_MAC,
            F_MRG_RXBUF,
            F_STATUS,
            // No EVENT_IDX: a receive queue short of buffers for a large frame relies on
            // the guest kicking for every refill, which only flag-based suppression gives.
            VIRTIO_RING_F_INDIRECT_DESC,
        ]
        .iter()
        .fold(0, |f, bit| f | 1 << bit)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        self.worker = None;
        self.worker = Some(handler::spawn(
            activation,
            self.slot.clone(),
            self.counters.clone(),
            std::mem::take(&mut self.restored),
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        self.restored = handler::Carried::default();
    }

    fn state_name(&self) -> &str {
        state::NAME
    }

    fn can_save(&self) -> bool {
        true
    }

    fn pause(&mut self) -> Result<Vec<QueuePosition>, StateError> {
        self.pause_worker()
    }

    fn save_device_state(&mut self) -> Result<Vec<u8>, StateError> {
        self.save()
    }

    fn restore_device_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.restore(state)
    }
}

#[cfg(test)]
mod tests;
