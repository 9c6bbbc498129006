//! PVH boot: an ELF kernel with a `XEN_ELFNOTE_PHYS32_ENTRY` note is loaded at its
//! physical addresses, and the boot vCPU starts at the note's entry in 32-bit protected
//! mode with `ebx` pointing at an `hvm_start_info` (command line, memory map, initrd as
//! module 0, RSDP address) at `layout::PVH_INFO`.

use std::fs::File;

use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{BootEntry, BootError, BootInputs, load_initrd, low_ram_end};
use crate::arch::x86_64::e820::{MemoryEntry, memory_map};
use crate::arch::x86_64::layout;
use crate::arch::x86_64::regs::BootInfoReg;

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// The start info for a guest with memory map `map`.
pub fn start_info(
    map: &[MemoryEntry],
    initrd: Option<(u64, u64)>,
    rsdp_addr: u64,
) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() {
            layout::PVH_MODLIST
        } else {
            0
        },
        cmdline_paddr: layout::CMDLINE,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: layout::PVH_MEMMAP,
        memmap_entries: map.len().min(layout::PVH_MEMMAP_MAX) as u32,
        ..Default::default()
    }
}

/// Loads an ELF kernel and writes the PVH start info.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    inputs: &BootInputs,
) -> Result<BootEntry, BootError> {
    let loaded = Elf::load(mem, None, kernel, Some(GuestAddress(layout::HIMEM_START))).map_err(
        |source| BootError::Loader {
            path: inputs.kernel.into(),
            source,
        },
    )?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(BootError::NoPvhNote(inputs.kernel.into()));
    };
    let initrd = match inputs.initrd {
        Some(p) => Some(load_initrd(
            mem,
            p,
            loaded.kernel_end,
            low_ram_end(inputs.memory),
        )?),
        None => None,
    };
    let map = memory_map(inputs.memory);
    let info = start_info(&map, initrd, inputs.rsdp_addr);
    let w = |r: Result<(), vm_memory::GuestMemoryError>| r.map_err(BootError::GuestMemory);
    for (i, e) in map.iter().take(layout::PVH_MEMMAP_MAX).enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        w(mem.write_obj(entry, GuestAddress(layout::PVH_MEMMAP + 24 * i as u64)))?;
    }
    if let Some((paddr, size)) = initrd {
        let m = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        w(mem.write_obj(m, GuestAddress(layout::PVH_MODLIST)))?;
    }
    w(mem.write_obj(info, GuestAddress(layout::PVH_INFO)))?;
    Ok(BootEntry {
        entry: entry.0,
        info: BootInfoReg::Ebx(layout::PVH_INFO),
    })
}

// The start info, module list and memory map do not overlap.
const _: () = assert!(layout::PVH_MODLIST + 32 <= layout::PVH_MEMMAP);
const _: () = assert!(layout::PVH_INFO + 56 <= layout::PVH_MODLIST);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_info_points_at_cmdline_memmap_modules_and_rsdp() {
        let map = memory_map(64 << 20);
        let s = start_info(&map, Some((0x3000000, 42)), 0xe0000);
        assert_eq!(s.magic, 0x336e_c578);
        assert_eq!((s.nr_modules, s.modlist_paddr), (1, layout::PVH_MODLIST));
        assert_eq!((s.cmdline_paddr, s.rsdp_paddr), (layout::CMDLINE, 0xe0000));
        assert_eq!((s.memmap_paddr, s.memmap_entries), (layout::PVH_MEMMAP, 4));
        let s = start_info(&map, None, 0);
        assert_eq!((s.nr_modules, s.modlist_paddr), (0, 0));
    }
}
