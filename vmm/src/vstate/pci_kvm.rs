//! The KVM side of PCI interrupts and notifications: `hospes_devices::pci::interrupt`'s
//! traits on the VM fd.
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

use hospes_devices::bus::lock;
use hospes_devices::pci::PciError;
use hospes_devices::virtio::{IoEventRegistrar, MsiRoutes, MsixInterrupt};

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
            hospes_devices::guest_warn!("pci: cannot route MSI-X vector {vector}: {e}");
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

    /// A 32-bit guest, as a minimal driver would: finds 00:01.0 through 0xCF8/0xCFC, reads
    /// BAR0, negotiates VERSION_1, sets up queue 0 (rings at 0x1000/0x2000/0x3000), makes
    /// the request the host left at descriptor 0 available, kicks the notify register and
    /// polls the used ring (bounded), then writes port 0xf4 to say it is done (`hlt` would
    /// wait in the in-kernel LAPIC). Assembled from:
    ///
    /// ```text
    /// mov $0x80000800,%eax; mov $0xcf8,%dx; out %eax,(%dx); mov $0xcfc,%dx; in (%dx),%eax
    /// mov %eax,0x500
    /// mov $0x80000810,%eax; mov $0xcf8,%dx; out %eax,(%dx); mov $0xcfc,%dx; in (%dx),%eax
    /// and $0xfffffff0,%eax; mov %eax,%ebx
    /// movb $1,0x14(%ebx); movb $3,0x14(%ebx); movl $1,0x8(%ebx); movl $1,0xc(%ebx)
    /// movb $0xb,0x14(%ebx); movw $0,0x16(%ebx); movw $8,0x18(%ebx)
    /// movl $0x1000,0x20(%ebx); movl $0x2000,0x28(%ebx); movl $0x3000,0x30(%ebx)
    /// movw $1,0x1c(%ebx); movb $0xf,0x14(%ebx)
    /// movw $1,0x2002; movw $0,0x3000(%ebx)
    /// mov $10000000,%ecx; 1: cmpw $0,0x3002; jne 2f; loop 1b; 2: out %al,$0xf4
    /// ```
    const GUEST: &[u8] = &[
        0xb8, 0x00, 0x08, 0x00, 0x80, 0x66, 0xba, 0xf8, 0x0c, 0xef, 0x66, 0xba, 0xfc, 0x0c, 0xed,
        0xa3, 0x00, 0x05, 0x00, 0x00, 0xb8, 0x10, 0x08, 0x00, 0x80, 0x66, 0xba, 0xf8, 0x0c, 0xef,
        0x66, 0xba, 0xfc, 0x0c, 0xed, 0x83, 0xe0, 0xf0, 0x89, 0xc3, 0xc6, 0x43, 0x14, 0x01, 0xc6,
        0x43, 0x14, 0x03, 0xc7, 0x43, 0x08, 0x01, 0x00, 0x00, 0x00, 0xc7, 0x43, 0x0c, 0x01, 0x00,
        0x00, 0x00, 0xc6, 0x43, 0x14, 0x0b, 0x66, 0xc7, 0x43, 0x16, 0x00, 0x00, 0x66, 0xc7, 0x43,
        0x18, 0x08, 0x00, 0xc7, 0x43, 0x20, 0x00, 0x10, 0x00, 0x00, 0xc7, 0x43, 0x28, 0x00, 0x20,
        0x00, 0x00, 0xc7, 0x43, 0x30, 0x00, 0x30, 0x00, 0x00, 0x66, 0xc7, 0x43, 0x1c, 0x01, 0x00,
        0xc6, 0x43, 0x14, 0x0f, 0x66, 0xc7, 0x05, 0x02, 0x20, 0x00, 0x00, 0x01, 0x00, 0x66, 0xc7,
        0x83, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0xb9, 0x80, 0x96, 0x98, 0x00, 0x66, 0x83, 0x3d,
        0x02, 0x30, 0x00, 0x00, 0x00, 0x75, 0x02, 0xe2, 0xf4, 0xe6, 0xf4,
    ];

    /// A guest that does what [`GUEST`] does, but sets queue 0's MSI-X vector to 1, installs
    /// an interrupt gate for vector 0x40 whose handler sets a flag at 0x600 and says it is
    /// done on port 0xf4 (no `iret`: this test machine's nested KVM cannot emulate it),
    /// enables the local APIC and interrupts, kicks, and waits (bounded) for the flag. Loaded at
    /// 0x8000 (`ld -Ttext=0x8000`); the host programs MSI-X vector 1 to APIC 0, vector 0x40.
    ///
    /// ```text
    /// lidt idtr; mov $handler,%eax; mov %ax,IDT+0x200; movw $8,IDT+0x202; movb $0,IDT+0x204
    /// movb $0x8e,IDT+0x205; shr $16,%eax; mov %ax,IDT+0x206; orl $0x100,0xfee000f0
    /// (BAR0 and queue setup as in GUEST, plus movw $1,0x1a(%ebx) before queue_enable)
    /// movw $1,0x2002; sti; movw $0,0x3000(%ebx)
    /// mov $10000000,%ecx; 1: cmpb $0,0x600; jne 2f; loop 1b; 2: out %al,$0xf4
    /// handler: movb $1,0x600; out %al,$0xf4; (9 x nop)
    /// idtr: .word 0x7ff; .long 0x7000
    /// ```
    const MSI_GUEST: &[u8] = &[
        0x0f, 0x01, 0x1d, 0xd4, 0x80, 0x00, 0x00, 0xb8, 0xc0, 0x80, 0x00, 0x00, 0x66, 0xa3, 0x00,
        0x72, 0x00, 0x00, 0x66, 0xc7, 0x05, 0x02, 0x72, 0x00, 0x00, 0x08, 0x00, 0xc6, 0x05, 0x04,
        0x72, 0x00, 0x00, 0x00, 0xc6, 0x05, 0x05, 0x72, 0x00, 0x00, 0x8e, 0xc1, 0xe8, 0x10, 0x66,
        0xa3, 0x06, 0x72, 0x00, 0x00, 0x81, 0x0d, 0xf0, 0x00, 0xe0, 0xfe, 0x00, 0x01, 0x00, 0x00,
        0xb8, 0x10, 0x08, 0x00, 0x80, 0x66, 0xba, 0xf8, 0x0c, 0xef, 0x66, 0xba, 0xfc, 0x0c, 0xed,
        0x83, 0xe0, 0xf0, 0x89, 0xc3, 0xc6, 0x43, 0x14, 0x01, 0xc6, 0x43, 0x14, 0x03, 0xc7, 0x43,
        0x08, 0x01, 0x00, 0x00, 0x00, 0xc7, 0x43, 0x0c, 0x01, 0x00, 0x00, 0x00, 0xc6, 0x43, 0x14,
        0x0b, 0x66, 0xc7, 0x43, 0x16, 0x00, 0x00, 0x66, 0xc7, 0x43, 0x18, 0x08, 0x00, 0x66, 0xc7,
        0x43, 0x1a, 0x01, 0x00, 0xc7, 0x43, 0x20, 0x00, 0x10, 0x00, 0x00, 0xc7, 0x43, 0x28, 0x00,
        0x20, 0x00, 0x00, 0xc7, 0x43, 0x30, 0x00, 0x30, 0x00, 0x00, 0x66, 0xc7, 0x43, 0x1c, 0x01,
        0x00, 0xc6, 0x43, 0x14, 0x0f, 0x66, 0xc7, 0x05, 0x02, 0x20, 0x00, 0x00, 0x01, 0x00, 0xfb,
        0x66, 0xc7, 0x83, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0xb9, 0x80, 0x96, 0x98, 0x00, 0x80,
        0x3d, 0x00, 0x06, 0x00, 0x00, 0x00, 0x75, 0x02, 0xe2, 0xf5, 0xe6, 0xf4, 0xc6, 0x05, 0x00,
        0x06, 0x00, 0x00, 0x01, 0xe6, 0xf4, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
        0x66, 0x90, 0xff, 0x07, 0x00, 0x70, 0x00, 0x00,
    ];

    /// A VM with 1 MiB of RAM, one virtio-blk disk (sector n filled with n * 0x11) attached
    /// with [`attach_pci`], and a read of sector 3 into 0x5000 (status at 0x6000) left at
    /// descriptor 0 for the guest to publish.
    struct Rig {
        vm: Arc<VmFd>,
        mem: vm_memory::GuestMemoryMmap,
        pio: hospes_devices::bus::Bus,
        mmio: hospes_devices::bus::Bus,
        setup: crate::machine::pci::PciSetup,
        _img: tempfile::NamedTempFile,
    }

    const BAR: u64 = 0xc000_0000;

    impl Rig {
        fn new() -> Option<Self> {
            use std::io::Write;

            use kvm_bindings::kvm_userspace_memory_region;
            use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

            use crate::machine::pci::{DiskSpec, PciParams, attach_pci, test_params};
            use hospes_devices::bus::Bus;

            let kvm = kvm_ioctls::Kvm::new().ok()?;
            let vm = Arc::new(kvm.create_vm().unwrap());
            vm.create_irq_chip().unwrap();
            let size = 1usize << 20;
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap();
            let host = mem.get_host_address(GuestAddress(0)).unwrap();
            let region = kvm_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: size as u64,
                userspace_addr: host as u64,
            };
            // SAFETY: the region is `mem`'s single mapping, which outlives the VM (both live
            // in the rig, and the VM fd closes first).
            unsafe { vm.set_user_memory_region(region) }.unwrap();

            let mut img = tempfile::NamedTempFile::new().unwrap();
            for n in 0..8u8 {
                img.write_all(&[n.wrapping_mul(0x11); 512]).unwrap();
            }
            let mut pio = Bus::new();
            let mut mmio = Bus::new();
            let disks = [DiskSpec {
                path: img.path().to_owned(),
                read_only: false,
                format: hospes_core::config::DiskFormat::Raw,
            }];
            let setup = attach_pci(
                &mut pio,
                &mut mmio,
                PciParams {
                    mem: mem.clone(),
                    vm: Some(vm.clone()),
                    ..test_params(&disks, false)
                },
            )
            .unwrap();

            let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
                let at = 0x1000 + i * 16;
                mem.write_obj(addr, GuestAddress(at)).unwrap();
                mem.write_obj(len, GuestAddress(at + 8)).unwrap();
                mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
                mem.write_obj(next, GuestAddress(at + 14)).unwrap();
            };
            desc(0, 0x4000, 16, 1, 1);
            desc(1, 0x5000, 512, 3, 2);
            desc(2, 0x6000, 1, 2, 0);
            mem.write_obj(0u32, GuestAddress(0x4000)).unwrap();
            mem.write_obj(3u64, GuestAddress(0x4008)).unwrap();
            mem.write_obj(0xffu8, GuestAddress(0x6000)).unwrap();
            Some(Self {
                vm,
                mem,
                pio,
                mmio,
                setup,
                _img: img,
            })
        }

        /// Runs `code` at 0x8000 in flat 32-bit protected mode (GDT at 0x7800: code 0x08,
        /// data 0x10; stack below 0xa000) until it writes port 0xf4. Returns the MMIO exits that hit the notify
        /// register.
        fn run(&self, code: &[u8]) -> usize {
            use kvm_ioctls::VcpuExit;
            use vm_memory::{Bytes, GuestAddress};

            use hospes_devices::virtio::pci::NOTIFY_OFFSET;

            let gdt: [u64; 3] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
            for (i, e) in gdt.iter().enumerate() {
                self.mem
                    .write_obj(*e, GuestAddress(0x7800 + i as u64 * 8))
                    .unwrap();
            }
            self.mem.write_slice(code, GuestAddress(0x8000)).unwrap();
            let mut vcpu = self.vm.create_vcpu(0).unwrap();
            let mut sregs = vcpu.get_sregs().unwrap();
            for seg in [
                &mut sregs.cs,
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.ss,
                &mut sregs.fs,
                &mut sregs.gs,
            ] {
                seg.base = 0;
                seg.limit = 0xffff_ffff;
                seg.g = 1;
                seg.db = 1;
                seg.s = 1;
                seg.present = 1;
                seg.type_ = 3;
                seg.selector = 0x10;
            }
            sregs.cs.type_ = 0xb;
            sregs.cs.selector = 0x8;
            sregs.gdt.base = 0x7800;
            sregs.gdt.limit = 23;
            sregs.cr0 |= 1;
            vcpu.set_sregs(&sregs).unwrap();
            let mut regs = vcpu.get_regs().unwrap();
            regs.rip = 0x8000;
            regs.rsp = 0xa000;
            regs.rflags = 2;
            vcpu.set_regs(&regs).unwrap();

            let mut notify_exits = 0;
            loop {
                match vcpu.run().unwrap() {
                    VcpuExit::IoOut(0xf4, _) => return notify_exits,
                    VcpuExit::IoOut(port, data) => {
                        self.pio.write(u64::from(port), data);
                    }
                    VcpuExit::IoIn(port, data) => {
                        self.pio.read(u64::from(port), data);
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        self.mmio.read(addr, data);
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        if addr == BAR + NOTIFY_OFFSET {
                            notify_exits += 1;
                        }
                        self.mmio.write(addr, data);
                    }
                    other => {
                        let exit = format!("{other:?}");
                        let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                        panic!("unexpected exit {exit} at rip {rip:#x}");
                    }
                }
            }
        }

        /// Whether the read of sector 3 completed with status OK and the right data.
        fn request_done(&self) -> bool {
            use vm_memory::{Bytes, GuestAddress};
            let mut data = [0u8; 512];
            self.mem
                .read_slice(&mut data, GuestAddress(0x5000))
                .unwrap();
            self.mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap() == 1
                && self.mem.read_obj::<u8>(GuestAddress(0x6000)).unwrap() == 0
                && data == [0x33; 512]
        }
    }

    /// Needs /dev/kvm; skipped where there is none.
    #[test]
    fn tiny_guest_reads_a_disk_sector_through_ioeventfd() {
        use vm_memory::{Bytes, GuestAddress};

        let Some(rig) = Rig::new() else {
            return;
        };
        let notify_exits = rig.run(GUEST);
        assert_eq!(
            rig.mem.read_obj::<u32>(GuestAddress(0x500)).unwrap(),
            0x1042_1af4
        );
        assert!(rig.request_done());
        // The kick went through KVM's ioeventfd, not through this process.
        assert_eq!(notify_exits, 0);
    }

    /// Needs /dev/kvm; skipped where there is none.
    #[test]
    fn completion_reaches_the_guest_as_an_msix_interrupt() {
        use vm_memory::{Bytes, GuestAddress};

        use hospes_devices::pci::PciDevice;
        use hospes_devices::pci::config::{CAP_ID_MSIX, REG_CAP_POINTER};
        use hospes_devices::virtio::pci::MSIX_TABLE_OFFSET;

        let Some(rig) = Rig::new() else {
            return;
        };
        // As firmware or the guest's PCI code would: enable MSI-X, point vector 1 at
        // APIC 0 with vector 0x40, unmask it.
        {
            let mut dev = lock(&rig.setup.devices[0].1);
            let mut at = dev.read_config(REG_CAP_POINTER) as usize & 0xff;
            while dev.read_config(at / 4) as u8 != CAP_ID_MSIX {
                at = (dev.read_config(at / 4) >> 8) as usize & 0xff;
            }
            dev.write_config(at / 4, 3, &[0x80]);
        }
        let entry = BAR + MSIX_TABLE_OFFSET + 16;
        rig.mmio.write(entry, &0xfee0_0000u32.to_le_bytes());
        rig.mmio.write(entry + 4, &0u32.to_le_bytes());
        rig.mmio.write(entry + 8, &0x40u32.to_le_bytes());
        rig.mmio.write(entry + 12, &0u32.to_le_bytes());
        rig.run(MSI_GUEST);
        assert!(rig.request_done());
        assert_eq!(
            rig.mem.read_obj::<u8>(GuestAddress(0x600)).unwrap(),
            1,
            "the guest's handler for vector 0x40 ran"
        );
    }
}
