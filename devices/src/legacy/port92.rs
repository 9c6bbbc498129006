//! Port 0x92, "System Control Port A" of PC chipsets: bit 1 gates address line 20 (the
//! fast A20 gate firmware toggles between real and protected mode), bit 0 written as 1
//! resets the CPU (the fast reset some boot loaders use).
//!
//! KVM does not wrap addresses at 1 MiB, so the A20 bit is kept and read back but gates
//! nothing, as on every PC since the 486 where firmware leaves A20 enabled.

use std::sync::Arc;

use super::{PowerEvent, PowerEvents};
use crate::bus::BusDevice;

/// Bit 0: fast reset (write 1).
const FAST_RESET: u8 = 1 << 0;
/// Bit 1: A20 enabled.
const A20: u8 = 1 << 1;

/// The port 0x92 register.
pub struct Port92 {
    value: u8,
    power: Arc<dyn PowerEvents>,
}

impl Port92 {
    /// A20 starts enabled, as firmware expects after a reset of a KVM machine.
    pub fn new(power: Arc<dyn PowerEvents>) -> Self {
        Self { value: A20, power }
    }
}

/// The A20 bit is the whole state.
impl crate::state::Snapshot for Port92 {
    fn save_state(&mut self) -> Result<Vec<u8>, crate::state::StateError> {
        crate::state::encode("port 0x92", &self.value)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::state::StateError> {
        let value: u8 = crate::state::decode("port 0x92", state)?;
        self.value = value & A20;
        Ok(())
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.value & A20;
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        self.value = b & A20;
        if b & FAST_RESET != 0 {
            self.power.request(PowerEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Events(Mutex<Vec<PowerEvent>>);

    impl PowerEvents for Events {
        fn request(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn keeps_the_a20_bit_and_resets_on_bit_0() {
        let events = Arc::new(Events::default());
        let mut p = Port92::new(events.clone());
        let mut b = [0u8];
        p.read(0x92, 0, &mut b);
        assert_eq!(b[0], A20);
        p.write(0x92, 0, &[0]);
        p.read(0x92, 0, &mut b);
        assert_eq!(b[0], 0);
        assert!(events.0.lock().unwrap().is_empty());
        p.write(0x92, 0, &[A20 | FAST_RESET]);
        p.read(0x92, 0, &mut b);
        assert_eq!(b[0], A20, "the reset bit reads back as 0");
        assert_eq!(*events.0.lock().unwrap(), [PowerEvent::Reset]);
    }

    #[test]
    fn a_restored_port_reads_back_the_a20_bit() {
        use crate::state::Snapshot;
        let events = Arc::new(Events::default());
        let mut p = Port92::new(events.clone());
        p.write(0x92, 0, &[0]);
        let state = p.save_state().unwrap();
        let mut r = Port92::new(events.clone());
        r.restore_state(&state).unwrap();
        let mut b = [0xffu8];
        r.read(0x92, 0, &mut b);
        assert_eq!(b[0], 0, "A20 off as saved");
        assert!(r.restore_state(&[]).is_err());
        assert!(r.restore_state(&[2, 0]).is_err());
        assert!(
            events.0.lock().unwrap().is_empty(),
            "restore resets nothing"
        );
    }
}
