//! x86_64 machine description: the guest physical address map ([`layout`]), CPUID and
//! MSR values for each vCPU, the boot-time register state, the e820 map and zero page, and
//! the ACPI tables. Everything here computes data; `vstate` hands it to KVM.

pub mod acpi;
pub mod acpi_loader;
pub mod cpuid;
pub mod e820;
pub mod hyperv;
pub mod layout;
pub mod msr;
pub mod regs;
pub mod smbios;
