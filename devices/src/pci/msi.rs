//! MSI (PCI Local Bus 3.0 §6.8.1), the plain kind: one vector, a 64-bit address, no
//! per-vector masking; for functions such as the HD Audio controller that guests drive
//! through MSI rather than MSI-X.
//!
//! Data flow: a function adds the capability with [`MsiCap::add`] and, after every
//! configuration write to the capability, calls [`MsiCap::sync`]; an address, data or
//! enable change reaches the machine through [`MsiRoutes`] as vector 0 (masked while MSI
//! is off). [`MsiCap::signal`] sends the message through [`MsixInterrupt`] vector 0 when
//! MSI is on; the helper implements both traits with one KVM route and irqfd.

use std::sync::Arc;

use super::config::{CAP_ID_MSI, PciConfig};
use super::{MsiRoutes, MsixInterrupt, PciError};

/// Message Control (byte 2 of the capability): enable, and 64-bit capable.
const MSI_ENABLE: u8 = 0x01;
const MSI_64BIT: u8 = 0x80;
/// Multiple Message Enable (bits 6:4): writable, though one vector is all there is.
const MSI_MME: u8 = 0x70;

/// What the capability held at the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    addr: u64,
    data: u32,
    enabled: bool,
}

/// An MSI capability in a function's configuration space.
pub struct MsiCap {
    offset: usize,
    trigger: Arc<dyn MsixInterrupt>,
    routes: Arc<dyn MsiRoutes>,
    last: Route,
}

impl MsiCap {
    /// Places the capability (64-bit, one vector, MSI off) in `config`.
    pub fn add(
        config: &mut PciConfig,
        trigger: Arc<dyn MsixInterrupt>,
        routes: Arc<dyn MsiRoutes>,
    ) -> Result<Self, PciError> {
        // control(2) address low(4) address high(4) data(2).
        let mut body = [0u8; 12];
        body[0] = MSI_64BIT;
        let mut writable = [0u8; 14];
        writable[2] = MSI_ENABLE | MSI_MME;
        writable[4..8].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
        writable[8..12].fill(0xff);
        writable[12..14].fill(0xff);
        let offset = config.add_capability(CAP_ID_MSI, &body, &writable)?;
        Ok(Self {
            offset,
            trigger,
            routes,
            last: Route {
                addr: 0,
                data: 0,
                enabled: false,
            },
        })
    }

    /// The capability's offset in configuration space.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether configuration dword `reg` belongs to the capability.
    pub fn covers(&self, reg: usize) -> bool {
        (self.offset / 4..self.offset / 4 + 4).contains(&reg)
    }

    /// Whether the guest turned MSI on.
    pub fn enabled(&self) -> bool {
        self.last.enabled
    }

    fn read(config: &PciConfig, offset: usize) -> Route {
        let dword = |at: usize| {
            u32::from_le_bytes([
                config.byte(at),
                config.byte(at + 1),
                config.byte(at + 2),
                config.byte(at + 3),
            ])
        };
        Route {
            addr: u64::from(dword(offset + 4)) | u64::from(dword(offset + 8)) << 32,
            data: u32::from(config.byte(offset + 12)) | u32::from(config.byte(offset + 13)) << 8,
            enabled: config.byte(offset + 2) & MSI_ENABLE != 0,
        }
    }

    /// Takes in a configuration write: tells the machine when the route changed.
    pub fn sync(&mut self, config: &PciConfig) {
        let now = Self::read(config, self.offset);
        if now != self.last {
            self.last = now;
            self.routes.update(0, now.addr, now.data, !now.enabled);
        }
    }

    /// Sends the message; false (nothing sent) while MSI is off.
    pub fn signal(&self) -> bool {
        if !self.last.enabled {
            return false;
        }
        if let Err(e) = self.trigger.trigger(0) {
            crate::guest_warn!("pci: cannot send MSI: {e}");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::pci::PciIds;

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl MsixInterrupt for Log {
        fn trigger(&self, vector: u16) -> std::io::Result<()> {
            self.0.lock().unwrap().push(format!("irq {vector}"));
            Ok(())
        }
    }

    impl MsiRoutes for Log {
        fn update(&self, vector: u16, addr: u64, data: u32, masked: bool) {
            self.0
                .lock()
                .unwrap()
                .push(format!("route {vector} {addr:#x} {data:#x} {masked}"));
        }
    }

    #[test]
    fn routes_follow_the_capability_and_messages_go_only_while_enabled() {
        let mut config = PciConfig::new(PciIds {
            vendor: 0x8086,
            device: 0x293e,
            revision: 0,
            class: 4,
            subclass: 3,
            prog_if: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        });
        let log = Arc::new(Log::default());
        let mut msi = MsiCap::add(&mut config, log.clone(), log.clone()).unwrap();
        let at = msi.offset();
        assert_eq!(config.byte(at), CAP_ID_MSI);
        assert_eq!(config.byte(at + 2) & MSI_64BIT, MSI_64BIT);
        assert!(!msi.signal());
        config.write_reg(at / 4 + 1, 0, &0xfee0_0003u32.to_le_bytes());
        config.write_reg(at / 4 + 2, 0, &1u32.to_le_bytes());
        config.write_reg(at / 4 + 3, 0, &0x4041u16.to_le_bytes());
        msi.sync(&config);
        config.write_reg(at / 4, 2, &[MSI_ENABLE]);
        assert!(msi.covers(at / 4));
        msi.sync(&config);
        assert!(msi.signal());
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                "route 0 0x1fee00000 0x4041 true",
                "route 0 0x1fee00000 0x4041 false",
                "irq 0"
            ],
            "address bits 1:0 are read-only"
        );
    }
}
