//! KVM state: the VM file descriptor with its in-kernel irqchip and PIT ([`vm`]), guest
//! memory and its KVM memory slots ([`memory`]), the vCPUs with their run loop and the
//! kick signal ([`vcpu`]), and the KVM side of the device models' traits: MSI routes,
//! irqfds and ioeventfds for PCI devices ([`pci_kvm`]), the framebuffer's memory slot with
//! dirty-page logging ([`fb_slot`]), firmware images as read-only slots ([`rom`]), the BIOS
//! area under the chipset's PAM registers ([`shadow`]), the CFI flash's image slots that
//! follow its read-array mode ([`flash`]), the SMM address space and SMRAM slots behind the
//! Q35 SMRAM registers ([`smram`]). This is the only module of Hospes that calls
//! KVM.

pub mod fb_slot;
pub mod flash;
pub mod hyperv;
pub mod memory;
pub mod pci_kvm;
pub mod rom;
pub mod save;
pub mod shadow;
pub mod smram;
pub mod vcpu;
pub mod vm;
