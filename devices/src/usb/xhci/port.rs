//! Root hub ports (xHCI 1.2 §4.19, §5.4.8): PORTSC state per port and the device plugged in.
//!
//! Data flow: [`super::Xhci::attach`] plugs a [`UsbDevice`] into a free port; the port
//! sets Current Connect Status and Connect Status Change and the controller posts a Port
//! Status Change Event. The guest sees PORTSC, resets the port (PR, or WPR on USB 3
//! ports), which resets the device and enables the port at the device's speed; then it
//! addresses the device through a slot. Change bits are write-1-to-clear; setting one asks the controller for a Port
//! Status Change Event.
//! As in QEMU, a USB 3 port with a device is enabled at once (link in U0), a USB 2 port
//! waits in Polling for the guest's reset.

use crate::usb::{UsbDevice, UsbSpeed};

/// PORTSC bits (xHCI 1.2 Table 5-27).
pub const PORTSC_CCS: u32 = 1 << 0;
pub const PORTSC_PED: u32 = 1 << 1;
pub const PORTSC_OCA: u32 = 1 << 3;
pub const PORTSC_PR: u32 = 1 << 4;
const PORTSC_PLS_SHIFT: u32 = 5;
const PORTSC_PLS_MASK: u32 = 0xf << PORTSC_PLS_SHIFT;
pub const PORTSC_PP: u32 = 1 << 9;
const PORTSC_SPEED_SHIFT: u32 = 10;
const PORTSC_SPEED_MASK: u32 = 0xf << PORTSC_SPEED_SHIFT;
pub const PORTSC_LWS: u32 = 1 << 16;
pub const PORTSC_CSC: u32 = 1 << 17;
pub const PORTSC_PEC: u32 = 1 << 18;
pub const PORTSC_WRC: u32 = 1 << 19;
pub const PORTSC_OCC: u32 = 1 << 20;
pub const PORTSC_PRC: u32 = 1 << 21;
pub const PORTSC_PLC: u32 = 1 << 22;
pub const PORTSC_CEC: u32 = 1 << 23;
/// Wake on Connect/Disconnect/Over-current Enable: plain read-write bits.
const PORTSC_WAKE_BITS: u32 = 7 << 25;
pub const PORTSC_WPR: u32 = 1 << 31;
/// The write-1-to-clear change bits.
pub const PORTSC_CHANGE_BITS: u32 =
    PORTSC_CSC | PORTSC_PEC | PORTSC_WRC | PORTSC_OCC | PORTSC_PRC | PORTSC_PLC | PORTSC_CEC;

/// Port Link States (xHCI 1.2 Table 5-27, PLS).
pub const PLS_U0: u32 = 0;
pub const PLS_U3: u32 = 3;
pub const PLS_DISABLED: u32 = 4;
pub const PLS_RX_DETECT: u32 = 5;
pub const PLS_POLLING: u32 = 7;
pub const PLS_RESUME: u32 = 15;

/// The Protocol Speed ID default of `speed` (xHCI 1.2 §7.2.2.1.1).
pub fn speed_id(speed: UsbSpeed) -> u32 {
    match speed {
        UsbSpeed::Full => 1,
        UsbSpeed::Low => 2,
        UsbSpeed::High => 3,
        UsbSpeed::Super => 4,
    }
}

/// One root hub port.
pub struct Port {
    /// A USB 3 (SuperSpeed) port; otherwise USB 2.
    pub usb3: bool,
    pub device: Option<Box<dyn UsbDevice>>,
    portsc: u32,
    /// PORTPMSC, PORTLI, PORTHLPMC: kept as plain registers.
    pub pmsc: u32,
    pub li: u32,
    pub hlpmc: u32,
}

impl Port {
    pub fn new(usb3: bool) -> Port {
        Port {
            usb3,
            device: None,
            portsc: PORTSC_PP | PLS_RX_DETECT << PORTSC_PLS_SHIFT,
            pmsc: 0,
            li: 0,
            hlpmc: 0,
        }
    }

    pub fn portsc(&self) -> u32 {
        self.portsc
    }

    /// Sets PORTSC as a saved VM had it.
    pub fn set_portsc(&mut self, portsc: u32) {
        self.portsc = portsc;
    }

    pub fn link_state(&self) -> u32 {
        (self.portsc & PORTSC_PLS_MASK) >> PORTSC_PLS_SHIFT
    }

    pub fn enabled(&self) -> bool {
        self.portsc & PORTSC_PED != 0
    }

    fn set_link_state(&mut self, pls: u32) {
        self.portsc = (self.portsc & !PORTSC_PLS_MASK) | (pls & 0xf) << PORTSC_PLS_SHIFT;
    }

    /// Sets change bits; an event is due (as QEMU, even when a bit was set already, so a
    /// guest that has not acknowledged an attach still hears of the detach).
    fn raise(&mut self, bits: u32) -> bool {
        self.portsc |= bits;
        true
    }

    /// Recomputes connection state from the device present (plug, unplug, controller
    /// reset). Returns true when a Port Status Change Event is due.
    pub fn update_connection(&mut self) -> bool {
        let changes = self.portsc & (PORTSC_CHANGE_BITS | PORTSC_WAKE_BITS);
        self.portsc = PORTSC_PP | changes;
        let mut pls = PLS_RX_DETECT;
        if let Some(speed) = self.device.as_ref().map(|d| d.speed()) {
            self.portsc |= PORTSC_CCS | speed_id(speed) << PORTSC_SPEED_SHIFT;
            if self.usb3 {
                self.portsc |= PORTSC_PED;
                pls = PLS_U0;
            } else {
                pls = PLS_POLLING;
            }
        }
        self.set_link_state(pls);
        self.raise(PORTSC_CSC)
    }

    /// Power-on state, the device kept: connection recomputed, change bits cleared but
    /// for Connect Status Change when a device is present.
    pub fn power_on(&mut self) {
        self.portsc = PORTSC_PP;
        self.pmsc = 0;
        self.li = 0;
        self.hlpmc = 0;
        if self.device.is_some() {
            self.update_connection();
        } else {
            self.set_link_state(PLS_RX_DETECT);
        }
    }

    /// A port reset (hot, or warm on USB 3): resets the device and enables the port.
    fn reset(&mut self, warm: bool) -> bool {
        let Some(dev) = self.device.as_mut() else {
            return false;
        };
        dev.reset();
        let speed = dev.speed();
        self.portsc = (self.portsc & !(PORTSC_PR | PORTSC_SPEED_MASK))
            | PORTSC_PED
            | speed_id(speed) << PORTSC_SPEED_SHIFT;
        self.set_link_state(PLS_U0);
        let mut bits = PORTSC_PRC;
        if warm && self.usb3 {
            bits |= PORTSC_WRC;
        }
        self.raise(bits)
    }

    /// A guest write to PORTSC. Returns true when a Port Status Change Event is due.
    pub fn write_portsc(&mut self, val: u32) -> bool {
        self.portsc &= !(val & PORTSC_CHANGE_BITS);
        self.portsc = (self.portsc & !PORTSC_WAKE_BITS) | (val & PORTSC_WAKE_BITS);
        let mut notify = false;
        if val & PORTSC_PED != 0 && self.portsc & PORTSC_PED != 0 {
            // Writing 1 to PED disables the port (xHCI 1.2 §4.19.1.1).
            self.portsc &= !PORTSC_PED;
        }
        if val & PORTSC_LWS != 0 {
            let pls = (val & PORTSC_PLS_MASK) >> PORTSC_PLS_SHIFT;
            let old = self.link_state();
            match pls {
                PLS_U0 if old != PLS_U0 && self.device.is_some() => {
                    self.set_link_state(PLS_U0);
                    notify |= self.raise(PORTSC_PLC);
                }
                PLS_U3 if old < PLS_U3 => self.set_link_state(PLS_U3),
                PLS_RESUME => {}
                other => crate::guest_warn!("xhci: port link state {other} request ignored"),
            }
        }
        if val & PORTSC_WPR != 0 && self.usb3 {
            notify |= self.reset(true);
        } else if val & PORTSC_PR != 0 {
            notify |= self.reset(false);
        }
        notify
    }

    /// Takes the device out; true when an event is due.
    pub fn unplug(&mut self) -> (Option<Box<dyn UsbDevice>>, bool) {
        let dev = self.device.take();
        if dev.is_none() {
            return (None, false);
        }
        // As QEMU: Connect Status Change only (the port is disabled with it).
        let notify = self.update_connection();
        (dev, notify)
    }
}
