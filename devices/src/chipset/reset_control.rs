//! The reset control register RST_CNT at port 0xCF9 (ICH9 datasheet 316972, §13.7.5; the
//! PIIX3 has the same register).
//!
//! One byte: bit 1 SYS_RST (hard reset), bit 2 RST_CPU (start the reset), bit 3 FULL_RST
//! (power-cycle). OVMF writes 0x06 and SeaBIOS 0x02 then 0x06; Linux's `reboot=pci` writes
//! SYS_RST first and then SYS_RST | RST_CPU (0x06, or 0x0E for a cold reboot). A write with
//! RST_CPU set goes to [`PowerEvents::request`] as [`PowerEvent::Reset`]. Without SYS_RST
//! or FULL_RST the datasheet calls it a soft reset (INIT# to the CPU only); Hospes has no
//! separate INIT path and resets the whole machine then too, as QEMU does, rather than
//! leave a guest waiting on a reset that never comes. Reads return SYS_RST and FULL_RST as
//! last written; RST_CPU reads 0 (it clears itself once the reset has started).
//!
//! Port 0xCF9 sits inside the PCI configuration address register's 0xCF8-0xCFB, which a bus
//! without overlapping ranges cannot express, so the device is not placed on the bus at all:
//! [`crate::pci::PciConfigIo::with_reset_control`] hands it every byte access to 0xCF9
//! (with base 0xCF9, offset 0).

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::legacy::{PowerEvent, PowerEvents};
use crate::state::{Snapshot, StateError, decode, encode};

pub use crate::pci::root::RESET_CONTROL_PORT;
/// RST_CNT bits (ICH9 §13.7.5).
pub const SYS_RST: u8 = 1 << 1;
pub const RST_CPU: u8 = 1 << 2;
pub const FULL_RST: u8 = 1 << 3;
/// Bits that read back as written.
const STORED: u8 = SYS_RST | FULL_RST;

/// RST_CNT.
pub struct ResetControl {
    value: u8,
    power: Arc<dyn PowerEvents>,
}

impl ResetControl {
    pub fn new(power: Arc<dyn PowerEvents>) -> Self {
        Self { value: 0, power }
    }

    /// Back to the power-on value 0.
    pub fn reset(&mut self) {
        self.value = 0;
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let (0, Some(b)) = (offset, data.first_mut()) {
            *b = self.value;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (0, Some(&b)) = (offset, data.first()) else {
            crate::guest_warn!("reset control: write at offset {offset:#x} ignored");
            return;
        };
        self.value = b & STORED;
        if b & RST_CPU != 0 {
            self.power.request(PowerEvent::Reset);
        }
    }
}

/// The name a saved RST_CNT goes by in errors.
const STATE_NAME: &str = "q35/reset";

/// Saved state: the stored bits (SYS_RST, FULL_RST). RST_CPU is not state: it reads 0
/// once the reset it asked for has been requested.
impl Snapshot for ResetControl {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        encode(STATE_NAME, &self.value)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let value: u8 = decode(STATE_NAME, state)?;
        self.value = value & STORED;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::testing::RecordingPower;

    fn dev() -> (ResetControl, Arc<RecordingPower>) {
        let p = Arc::new(RecordingPower::default());
        (ResetControl::new(p.clone()), p)
    }

    fn read(d: &mut ResetControl) -> u8 {
        let mut b = [0xaa];
        d.read(RESET_CONTROL_PORT, 0, &mut b);
        b[0]
    }

    #[test]
    fn firmware_reset_sequence_resets_once() {
        let (mut d, p) = dev();
        d.write(RESET_CONTROL_PORT, 0, &[SYS_RST]);
        assert!(
            p.events.lock().unwrap().is_empty(),
            "SYS_RST alone only arms"
        );
        assert_eq!(read(&mut d), SYS_RST);
        d.write(RESET_CONTROL_PORT, 0, &[SYS_RST | RST_CPU]);
        assert_eq!(*p.events.lock().unwrap(), [PowerEvent::Reset]);
        assert_eq!(read(&mut d), SYS_RST, "RST_CPU clears itself");
    }

    #[test]
    fn full_and_soft_resets_reset_too() {
        let (mut d, p) = dev();
        d.write(RESET_CONTROL_PORT, 0, &[FULL_RST | SYS_RST | RST_CPU]);
        assert_eq!(read(&mut d), FULL_RST | SYS_RST);
        d.write(RESET_CONTROL_PORT, 0, &[RST_CPU]);
        assert_eq!(read(&mut d), 0);
        assert_eq!(
            *p.events.lock().unwrap(),
            [PowerEvent::Reset, PowerEvent::Reset]
        );
    }

    #[test]
    fn other_bits_and_offsets_do_nothing() {
        let (mut d, p) = dev();
        d.write(RESET_CONTROL_PORT, 0, &[0xf1 | FULL_RST]);
        assert_eq!(read(&mut d), FULL_RST);
        d.write(RESET_CONTROL_PORT, 1, &[RST_CPU]);
        d.write(RESET_CONTROL_PORT, 0, &[]);
        assert!(p.events.lock().unwrap().is_empty());
        let mut b = [0x55];
        d.read(RESET_CONTROL_PORT, 1, &mut b);
        assert_eq!(b, [0x55], "undecoded offset left as the bus filled it");
        d.reset();
        assert_eq!(read(&mut d), 0);
    }

    #[test]
    fn stored_bits_survive_restore_and_garbage_is_refused() {
        let power = Arc::new(RecordingPower::default());
        let mut rc = ResetControl::new(power.clone());
        rc.write(RESET_CONTROL_PORT, 0, &[SYS_RST | FULL_RST]);
        let saved = rc.save_state().unwrap();
        let mut fresh = ResetControl::new(power);
        assert!(fresh.restore_state(&[]).is_err());
        assert!(fresh.restore_state(&[1, 2]).is_err());
        fresh.restore_state(&saved).unwrap();
        let mut b = [0u8];
        fresh.read(RESET_CONTROL_PORT, 0, &mut b);
        assert_eq!(b[0], SYS_RST | FULL_RST);
    }
}
