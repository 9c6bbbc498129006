//! KVM state: the VM file descriptor with its in-kernel irqchip and PIT ([`vm`]), guest
//! memory and its KVM memory slots ([`memory`]), and the vCPUs with their run loop and the
//! kick signal ([`vcpu`]).

pub mod memory;
pub mod vcpu;
pub mod vm;
