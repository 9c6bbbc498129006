//! The e820 memory map and the Linux zero page.
//!
//! [`memory_map`] describes guest RAM and the reserved holes once; the bzImage path copies
//! it into `boot_params.e820_table`, the PVH path into the `hvm_memmap_table`.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use super::layout;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The guest's memory map for `mem` bytes of RAM, sorted by address.
pub fn memory_map(mem: u64) -> Vec<MemoryEntry> {
    let mut map = Vec::new();
    let ram = layout::ram_ranges(mem);
    let low_end = ram.first().map_or(0, |&(s, l)| s + l);
    map.push(MemoryEntry {
        addr: 0,
        size: layout::EBDA_START.min(low_end),
        kind: E820_RAM,
    });
    map.push(MemoryEntry {
        addr: layout::EBDA_START,
        size: layout::HIMEM_START - layout::EBDA_START,
        kind: E820_RESERVED,
    });
    if low_end > layout::HIMEM_START {
        map.push(MemoryEntry {
            addr: layout::HIMEM_START,
            size: low_end - layout::HIMEM_START,
            kind: E820_RAM,
        });
    }
    map.push(MemoryEntry {
        addr: layout::PCI_ECAM_START,
        size: layout::PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    if let Some(&(start, len)) = ram.get(1) {
        map.push(MemoryEntry {
            addr: start,
            size: len,
            kind: E820_RAM,
        });
    }
    map
}

/// Where the boot loader put things, for the zero page.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZeroPageInfo {
    pub cmdline_addr: u64,
    pub cmdline_len: u32,
    pub initrd: Option<(u64, u32)>,
    pub rsdp_addr: u64,
}

/// Boot loader type "undefined" (0xff), as VMMs report themselves.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags bit: the loader may use the heap (`heap_end_ptr` is valid).
const CAN_USE_HEAP: u8 = 0x80;

/// Builds the zero page from the kernel's own setup header and the memory map.
pub fn zero_page(hdr: setup_header, map: &[MemoryEntry], info: &ZeroPageInfo) -> boot_params {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = info.cmdline_addr as u32;
    params.ext_cmd_line_ptr = (info.cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = info.cmdline_len;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size;
    }
    params.acpi_rsdp_addr = info.rsdp_addr;
    let n = map.len().min(params.e820_table.len());
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter().take(n)) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = n as u8;
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn small_guest_map_has_low_ram_hole_and_ecam() {
        let map = memory_map(64 << 20);
        assert_eq!(
            map,
            vec![
                MemoryEntry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                MemoryEntry {
                    addr: 0x9fc00,
                    size: 0x60400,
                    kind: E820_RESERVED
                },
                MemoryEntry {
                    addr: 0x10_0000,
                    size: (64 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
                MemoryEntry {
                    addr: 0xe000_0000,
                    size: 0x1000_0000,
                    kind: E820_RESERVED
                },
            ]
        );
    }

    #[test]
    fn large_guest_map_puts_the_rest_above_4g() {
        let map = memory_map(5 << 30);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (5 << 30) - 0x60400);
        assert_eq!(
            map.last().map(|e| (e.addr, e.size)),
            Some((1 << 32, 2 << 30))
        );
    }

    #[test]
    fn zero_page_fields_sit_where_the_boot_protocol_says() {
        assert_eq!(offset_of!(boot_params, hdr), 0x1f1);
        assert_eq!(offset_of!(boot_params, e820_entries), 0x1e8);
        assert_eq!(offset_of!(boot_params, e820_table), 0x2d0);
        assert_eq!(offset_of!(boot_params, acpi_rsdp_addr), 0x70);
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
        let info = ZeroPageInfo {
            cmdline_addr: 0x20000,
            cmdline_len: 11,
            initrd: Some((0x300_0000, 0x1234)),
            rsdp_addr: 0xe0000,
        };
        let p = zero_page(setup_header::default(), &memory_map(64 << 20), &info);
        let (cmd, rd, rs, n) = (
            p.hdr.cmd_line_ptr,
            p.hdr.ramdisk_image,
            p.hdr.ramdisk_size,
            p.e820_entries,
        );
        assert_eq!((cmd, rd, rs, n), (0x20000, 0x300_0000, 0x1234, 4));
        let t = p.hdr.type_of_loader;
        assert_eq!(t, 0xff);
    }
}
