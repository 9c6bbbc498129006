//! Legacy PC devices: COM1 (16550), i8042, CMOS RTC, the port 0x80 debug sink and the ACPI
//! PM block.
//!
//! Each model is plain data behind a [`BusDevice`](super::bus::BusDevice); it raises
//! interrupts through [`IrqLine`] and asks for a reset or power-off through [`PowerEvents`],
//! so tests drive them from the host side without /dev/kvm. `machine` wires the real ones
//! (irqfds, `KVM_IRQ_LINE`, the VM's event channel).

pub mod debug_port;
pub mod firmware_log;
pub mod i8042;
pub mod pm;
pub mod port92;
pub mod rtc;
pub mod serial;

/// An interrupt line into the guest's interrupt controller.
pub trait IrqLine: Send + Sync {
    /// Sends an edge (for edge-triggered lines; level lines pulse).
    fn trigger(&self);
    /// Sets the line's level (for level-triggered lines such as the SCI).
    fn set_level(&self, high: bool);
}

/// What a device can ask of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    /// The guest asked for a reset (i8042 0xfe, ACPI reset register).
    Reset,
    /// The guest turned itself off (ACPI S5).
    PowerOff,
}

/// Where devices send [`PowerEvent`]s.
pub trait PowerEvents: Send + Sync {
    fn request(&self, event: PowerEvent);
}

/// An [`IrqLine`] that goes nowhere, for devices whose interrupt is not wired.
pub struct NoIrq;

impl IrqLine for NoIrq {
    fn trigger(&self) {}
    fn set_level(&self, _high: bool) {}
}

#[cfg(test)]
pub(crate) mod testing {
    //! Recording stand-ins for the machine, shared by the device tests.
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct RecordingIrq {
        pub edges: Mutex<u32>,
        pub level: Mutex<bool>,
    }

    impl IrqLine for RecordingIrq {
        fn trigger(&self) {
            *self.edges.lock().unwrap() += 1;
        }
        fn set_level(&self, high: bool) {
            *self.level.lock().unwrap() = high;
        }
    }

    #[derive(Default)]
    pub struct RecordingPower {
        pub events: Mutex<Vec<PowerEvent>>,
    }

    impl PowerEvents for RecordingPower {
        fn request(&self, event: PowerEvent) {
            self.events.lock().unwrap().push(event);
        }
    }
}
