//! The KVM side of PCI interrupts and notifications: the only file of `devices/pci` and
//! `devices/virtio` that touches KVM.
//!
//! * [`KvmGsiRouter`] owns the VM's GSI routing table. KVM_SET_GSI_ROUTING replaces the
//!   whole table, so it always re-sends the default PIC/IOAPIC pin routes (GSIs 0-23, what
//!   KVM sets up with the in-kernel irqchip) together with every MSI route; MSI GSIs are
//!   handed out from 24 upwards.
//! * [`KvmMsixVectors`] gives one function a GSI and an irqfd per MSI-X vector:
//!   `trigger` writes the irqfd, `update` rewrites the vector's MSI route.
//! * [`KvmIoEvents`] registers notify addresses as KVM ioeventfds, so a queue kick is an
//!   eventfd signal inside the kernel rather than an exit to this process.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::PciError;
use crate::devices::bus::lock;
use crate::devices::virtio::{IoEventRegistrar, MsiRoutes, MsixInterrupt};

/// IOAPIC pins; MSI GSIs start after them.
pub const IOAPIC_PINS: u32 = 24;
/// PIC pins routed by default (both 8259s).
const PIC_PINS: u32 = 16;

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_route(gsi: u32, addr: u64, data: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = addr as u32;
    e.u.msi.address_hi = (addr >> 32) as u32;
    e.u.msi.data = data;
    e
}

/// The default routes KVM installs with KVM_CREATE_IRQCHIP: GSI n to IOAPIC pin n, and
/// GSIs 0-15 also to the PICs.
fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < PIC_PINS {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            v.push(irqchip_route(gsi, chip, gsi % 8));
        }
        v.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

struct RouterState {
    next_gsi: u32,
    msi: BTreeMap<u32, (u64, u32)>,
}

/// The VM's GSI routing table.
pub struct KvmGsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

impl KvmGsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            state: Mutex::new(RouterState {
                next_gsi: IOAPIC_PINS,
                msi: BTreeMap::new(),
            }),
        }
    }

    /// A fresh GSI for an MSI route.
    pub fn allocate_gsi(&self) -> u32 {
        let mut s = lock(&self.state);
        let gsi = s.next_gsi;
        s.next_gsi += 1;
        gsi
    }

    /// Points `gsi` at the MSI message `addr`/`data` and installs the table.
    pub fn set_msi(&self, gsi: u32, addr: u64, data: u32) -> io::Result<()> {
        let mut s = lock(&self.state);
        if s.msi.insert(gsi, (addr, data)) == Some((addr, data)) {
            return Ok(());
        }
        let mut entries = default_routes();
        entries.extend(s.msi.iter().map(|(&g, &(a, d))| msi_route(g, a, d)));
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.vm.set_gsi_routing(&table).map_err(io::Error::from)
    }
}

/// A function's MSI-X vectors as KVM GSIs with irqfds.
pub struct KvmMsixVectors {
    router: Arc<KvmGsiRouter>,
    vectors: Vec<(u32, EventFd)>,
}

impl KvmMsixVectors {
    /// Allocates `count` GSIs and binds an irqfd to each.
    pub fn new(vm: &VmFd, router: Arc<KvmGsiRouter>, count: u16) -> Result<Self, PciError> {
        let kvm = |what, source| PciError::Kvm { what, source };
        let mut vectors = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let gsi = router.allocate_gsi();
            let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| kvm("eventfd", e))?;
            vm.register_irqfd(&fd, gsi)
                .map_err(|e| kvm("KVM_IRQFD", io::Error::from(e)))?;
            vectors.push((gsi, fd));
        }
        Ok(Self { router, vectors })
    }
}

impl MsixInterrupt for KvmMsixVectors {
    fn trigger(&self, vector: u16) -> io::Result<()> {
        match self.vectors.get(usize::from(vector)) {
            Some((_, fd)) => fd.write(1),
            None => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
}

impl MsiRoutes for KvmMsixVectors {
    fn update(&self, vector: u16, addr: u64, data: u32, masked: bool) {
        // A masked vector keeps its route: the transport does not signal it while masked.
        if masked {
            return;
        }
        if let Some((gsi, _)) = self.vectors.get(usize::from(vector))
            && let Err(e) = self.router.set_msi(*gsi, addr, data)
        {
            crate::guest_warn!("pci: cannot route MSI-X vector {vector}: {e}");
        }
    }
}

/// Notify addresses as KVM ioeventfds (MMIO, any access width, no data match).
pub struct KvmIoEvents {
    vm: Arc<VmFd>,
}

impl KvmIoEvents {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self { vm }
    }
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, addr: u64, event: &EventFd) -> io::Result<()> {
        self.vm
            .register_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(io::Error::from)
    }

    fn unregister(&self, addr: u64, event: &EventFd) -> io::Result<()> {
        self.vm
            .unregister_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_cover_pic_and_ioapic_pins() {
        let r = default_routes();
        assert_eq!(r.len(), 16 + 24);
        // SAFETY: these entries were built as irqchip routes, so `irqchip` is the live field.
        let pins: Vec<_> = r.iter().map(|e| (e.gsi, unsafe { e.u.irqchip })).collect();
        assert!(
            pins.iter()
                .any(|(g, c)| *g == 9 && c.irqchip == KVM_IRQCHIP_PIC_SLAVE && c.pin == 1)
        );
        assert!(
            pins.iter()
                .any(|(g, c)| *g == 23 && c.irqchip == KVM_IRQCHIP_IOAPIC && c.pin == 23)
        );
    }

    /// Needs /dev/kvm; skipped where there is none.
    #[test]
    fn routes_msi_and_registers_irqfds_on_a_real_vm() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let router = Arc::new(KvmGsiRouter::new(vm.clone()));
        let v = KvmMsixVectors::new(&vm, router.clone(), 2).unwrap();
        v.update(1, 0xfee0_0000, 0x4041, false);
        v.trigger(1).unwrap();
        assert!(v.trigger(2).is_err());
        assert_eq!(router.allocate_gsi(), IOAPIC_PINS + 2);
        let io = KvmIoEvents::new(vm);
        let e = EventFd::new(EFD_NONBLOCK).unwrap();
        io.register(0xc000_3000, &e).unwrap();
        io.unregister(0xc000_3000, &e).unwrap();
    }
}
