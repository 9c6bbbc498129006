//! The guest physical address map.
//!
//! ```text
//! 0x0000_0000  RAM (low)           boot structures below 1 MiB, kernel at 1 MiB
//! 0x0009_fc00  reserved            EBDA, ACPI tables at 0xe_0000 (RSDP first), BIOS area
//! 0x0010_0000  RAM                 up to min(memory, 3 GiB)
//! 0xc000_0000  PCI MMIO hole       BARs (PCI_MMIO_START..PCI_MMIO_END)
//! 0xe000_0000  PCI ECAM            256 buses x 1 MiB (reserved in e820, MCFG)
//! 0xf000_0000  free MMIO           up to the IOAPIC
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC (in-kernel)
//! 0x1_0000_0000 RAM (high)         the rest of the memory above 3 GiB
//! after RAM    64-bit PCI MMIO     HIGH_MMIO_SIZE bytes for 64-bit BARs
//! ```
//!
//! Port I/O: COM1 0x3f8 (IRQ 4), i8042 0x60/0x64 (IRQ 1, 12), RTC 0x70/0x71, debug 0x80,
//! PCI config 0xcf8..0xcff (PCI engineer), ACPI PM block 0x600..0x620 (SCI IRQ 9).

/// Where the Linux zero page (`boot_params`) goes.
pub const ZERO_PAGE: u64 = 0x7000;
/// The boot GDT.
pub const BOOT_GDT: u64 = 0x500;
/// PVH `hvm_start_info`, followed by the module list and the memory map.
pub const PVH_INFO: u64 = 0x6000;
/// PVH module list (one entry: the initrd).
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP: u64 = 0x6080;
/// Most PVH memory map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX: usize = ((ZERO_PAGE - PVH_MEMMAP) / 24) as usize;
/// The kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Longest command line, NUL included.
pub const CMDLINE_MAX: usize = 0x10000;
/// End of the usable RAM below the EBDA.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables: the RSDP first (Linux also finds it by scanning 0xe0000..0x100000).
pub const ACPI_START: u64 = 0xe0000;
/// End of the area the ACPI tables may use.
pub const ACPI_END: u64 = 0xf0000;
/// Start of RAM above the legacy hole; kernels load here.
pub const HIMEM_START: u64 = 0x10_0000;

/// Most RAM placed below 4 GiB.
pub const LOW_RAM_MAX: u64 = 0xc000_0000;
/// Start of the 32-bit PCI MMIO window.
pub const PCI_MMIO_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit PCI MMIO window.
pub const PCI_MMIO_END: u64 = 0xe000_0000;
/// PCI Express enhanced configuration space (ECAM).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM window: 256 buses of 1 MiB.
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// The IOAPIC's MMIO page.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' MMIO page.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS for real-mode emulation (3 pages; Intel only). Below 0xff00_0000, so it
/// stays clear of firmware flash mapped below 4 GiB (OVMF takes the top 4 MiB).
pub const KVM_TSS: u64 = 0xfeff_d000;
/// KVM's identity-map page (Intel only), just below the TSS.
pub const KVM_IDENTITY_MAP: u64 = 0xfeff_c000;
/// Start of RAM above 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// Size of the 64-bit PCI MMIO window placed after the end of RAM.
pub const HIGH_MMIO_SIZE: u64 = 0x40_0000_0000;

/// The ACPI PM block in I/O space.
pub const PM_BASE: u16 = 0x600;
/// Its length.
pub const PM_LEN: u16 = 0x20;
/// PM1a event block (status + enable).
pub const PM1A_EVT: u16 = PM_BASE;
/// PM1a control block.
pub const PM1A_CNT: u16 = PM_BASE + 4;
/// ACPI PM timer.
pub const PM_TMR: u16 = PM_BASE + 8;
/// GPE0 block (status + enable).
pub const GPE0: u16 = PM_BASE + 0xc;
/// The FADT reset register. Not at 0xcf9: the PCI host bridge claims 0xcf8..0xcff.
pub const RESET_REG: u16 = PM_BASE + 0x10;
/// Value written to [`RESET_REG`] to reset (the PM device defines it).
pub use hospes_devices::legacy::pm::RESET_VALUE;
/// SLP_TYP value for S5 (soft off), as `_S5` in the DSDT says (the PM device defines it).
pub use hospes_devices::legacy::pm::S5_SLP_TYP;
/// The SCI's IRQ (ISA and GSI).
pub const SCI_IRQ: u32 = 9;
/// COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IRQ.
pub const COM1_IRQ: u32 = 4;
/// i8042 keyboard IRQ.
pub const I8042_KBD_IRQ: u32 = 1;
/// i8042 mouse IRQ.
pub const I8042_AUX_IRQ: u32 = 12;

/// Firmware boot (the Q35 platform): RAM below 4 GiB ends here at most, so the ECAM
/// window SeaBIOS programs (0xb000_0000) and the 32-bit PCI window fit above it.
pub const FW_LOW_RAM_LIMIT: u64 = 0xb000_0000;
/// Firmware boot: with more RAM than [`FW_LOW_RAM_LIMIT`], 2 GiB stay below 4 GiB and
/// the rest goes above (QEMU's q35 rule, which firmware and guests are used to).
pub const FW_LOW_RAM_SPLIT: u64 = 0x8000_0000;
/// The legacy VGA window (0xa0000..0xc0000): MMIO, not RAM, on every PC.
pub const VGA_WINDOW_START: u64 = 0xa_0000;
/// End of the VGA window.
pub const VGA_WINDOW_END: u64 = 0xc_0000;
/// The BIOS area (option ROMs and the system BIOS, 0xc0000..0x100000), shadow RAM
/// under the chipset's PAM registers.
pub const BIOS_AREA_START: u64 = 0xc_0000;
/// Where the system BIOS's low alias starts (its last 128 KiB, 0xe0000..0x100000).
pub const BIOS_LOW_ALIAS: u64 = 0xe_0000;
/// End of the 32-bit PCI window under firmware boot: the IOAPIC page.
pub const FW_PCI_MMIO_END: u64 = IOAPIC_START;
/// The firmware debug console (SeaBIOS and OVMF write their log to port 0x402).
pub const FW_DEBUG_PORT: u16 = 0x402;

/// Guest RAM placement under firmware boot: `(start, len)` pairs. Below 1 MiB the VGA
/// window is left out; the BIOS area (0xc0000..0x100000) is RAM the chipset's PAM
/// registers govern.
pub fn firmware_ram_ranges(mem: u64) -> Vec<(u64, u64)> {
    let low = firmware_low_ram(mem);
    let mut ranges = vec![(0, low.min(VGA_WINDOW_START))];
    if low > BIOS_AREA_START {
        ranges.push((BIOS_AREA_START, low - BIOS_AREA_START));
    }
    if mem > low {
        ranges.push((HIGH_RAM_START, mem - low));
    }
    ranges
}

/// RAM below 4 GiB under firmware boot, as the firmware's memory map counts it (from 0,
/// the legacy holes included, as on a PC).
pub fn firmware_low_ram(mem: u64) -> u64 {
    if mem >= FW_LOW_RAM_LIMIT {
        FW_LOW_RAM_SPLIT
    } else {
        mem
    }
}

/// Guest RAM placement for `mem` bytes: `(start, len)` pairs, low then high.
pub fn ram_ranges(mem: u64) -> Vec<(u64, u64)> {
    let low = mem.min(LOW_RAM_MAX);
    let mut ranges = vec![(0, low)];
    if mem > low {
        ranges.push((HIGH_RAM_START, mem - low));
    }
    ranges
}

/// Start of the 64-bit PCI MMIO window: after the end of RAM, 1 GiB aligned.
pub fn high_mmio_start(mem: u64) -> u64 {
    let end = ram_ranges(mem)
        .last()
        .map_or(HIGH_RAM_START, |&(s, l)| (s + l).max(HIGH_RAM_START));
    end.next_multiple_of(1 << 30)
}

// The PCI windows stay out of RAM and the APIC pages.
const _: () = assert!(PCI_MMIO_START >= LOW_RAM_MAX);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= IOAPIC_START);
const _: () = assert!(PCI_MMIO_END <= PCI_ECAM_START);
const _: () = assert!(KVM_IDENTITY_MAP > LAPIC_START);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_ram_leaves_the_vga_window_out_and_splits_at_2_gib_when_large() {
        assert_eq!(
            firmware_ram_ranges(256 << 20),
            vec![(0, 0xa_0000), (0xc_0000, (256 << 20) - 0xc_0000)]
        );
        assert_eq!(
            firmware_ram_ranges(4 << 30),
            vec![
                (0, 0xa_0000),
                (0xc_0000, FW_LOW_RAM_SPLIT - 0xc_0000),
                (HIGH_RAM_START, 2 << 30)
            ]
        );
        assert_eq!(firmware_low_ram(4 << 30), FW_LOW_RAM_SPLIT);
        assert_eq!(firmware_low_ram(0xa000_0000), 0xa000_0000);
    }

    #[test]
    fn splits_ram_around_the_pci_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, 3 << 30), (HIGH_RAM_START, 1 << 30)]
        );
        assert_eq!(high_mmio_start(256 << 20), HIGH_RAM_START);
        assert_eq!(high_mmio_start(4 << 30), 5 << 30);
    }
}
