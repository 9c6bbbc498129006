//! How PCI functions reach the machine: MSI-X vectors raised, MSI routes changed, and
//! doorbell addresses turned into eventfds. The helper implements these on KVM (irqfds,
//! KVM_SET_GSI_ROUTING, KVM_IOEVENTFD); tests implement them with counters.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// Raises MSI-X vector `vector` of one function (an irqfd write under KVM).
pub trait MsixInterrupt: Send + Sync {
    fn trigger(&self, vector: u16) -> io::Result<()>;
}

/// Told about every MSI-X table entry change, so the machine can route the vector
/// (KVM_SET_GSI_ROUTING under KVM).
pub trait MsiRoutes: Send + Sync {
    fn update(&self, vector: u16, addr: u64, data: u32, masked: bool);
}

/// Lets the machine turn a guest write to `addr` into an eventfd signal without leaving the
/// kernel (KVM_IOEVENTFD). `register` and `unregister` are called when the notify region
/// appears at, or leaves, an address.
pub trait IoEventRegistrar: Send + Sync {
    fn register(&self, addr: u64, event: &EventFd) -> io::Result<()>;
    fn unregister(&self, addr: u64, event: &EventFd) -> io::Result<()>;
}
