//! The controller's saved state (see [`crate::state`]): configuration space (MSI
//! included), the global registers with the CORB/RIRB pointers, the codec's widget
//! settings (converter formats, stream tags and channels, amplifiers, pins), and the
//! eight stream descriptors with their DMA positions.
//!
//! Save freezes the controller: [`Hda::service`] moves nothing any more, so the `hda`
//! worker writes no sound or positions into guest memory. Restore takes everything back
//! on a controller built for a fresh boot, routes MSI again from the restored
//! configuration space, drives INTA# from the restored status, and wakes the worker: a
//! stream that was running opens its backend (PipeWire) stream as the guest's start
//! would, and goes on from its saved BDL entry and position.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::codec::Codec;
use super::stream::Stream;
use super::{Hda, Link, Regs, WALCLK_HZ};
use crate::pci::PciConfigState;
use crate::state::{self, Snapshot, StateError};

const NAME: &str = "HD Audio card";

#[derive(Serialize, Deserialize)]
struct SavedHda {
    pci: PciConfigState,
    regs: Regs,
    codec: Codec,
    streams: Vec<Stream>,
    /// WALCLK at the save, in its 24 MHz ticks (it goes on from there).
    wallclock: u64,
    /// Whether an MSI went out for the interrupt level now up.
    msi_level: bool,
}

impl Snapshot for Hda {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        self.frozen = true;
        let wallclock = (self.created.elapsed().as_nanos() * WALCLK_HZ / 1_000_000_000)
            .min(u128::from(u64::MAX)) as u64;
        let saved = SavedHda {
            pci: self.config.save(),
            regs: self.regs.clone(),
            codec: self.codec.clone(),
            streams: self.streams.to_vec(),
            wallclock,
            msi_level: self.msi_level,
        };
        state::encode(NAME, &saved)
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let s: SavedHda = state::decode(NAME, bytes)?;
        if s.streams.len() != self.streams.len()
            || s.streams
                .iter()
                .zip(&self.streams)
                .any(|(a, b)| a.output != b.output)
        {
            return Err(StateError::mismatch(
                NAME,
                format!("{} saved streams of another layout", s.streams.len()),
            ));
        }
        self.config.restore(NAME, &s.pci)?;
        self.msi.sync(&self.config);
        self.regs = s.regs;
        self.codec = s.codec;
        for (stream, saved) in self.streams.iter_mut().zip(s.streams) {
            *stream = saved;
        }
        // Backend streams open again from the worker; clock-paced ones restart now.
        self.links = std::array::from_fn(|_| Link::default());
        let elapsed = Duration::from_nanos(
            (u128::from(s.wallclock) * 1_000_000_000 / WALCLK_HZ).min(u128::from(u64::MAX)) as u64,
        );
        let now = Instant::now();
        self.created = now.checked_sub(elapsed).unwrap_or(now);
        self.frozen = false;
        self.msi_level = s.msi_level;
        self.update_irq(false);
        self.wake_worker();
        Ok(())
    }
}
