//! bzImage boot through the Linux 32-bit boot protocol: the protected-mode part of the
//! image goes to `code32_start` (1 MiB), the zero page (the kernel's own setup header,
//! patched with command line, initrd and loader type, plus the e820 map and RSDP address)
//! to `layout::ZERO_PAGE`, and the boot vCPU starts at `code32_start` in flat 32-bit
//! protected mode with `esi` pointing at the zero page.

use std::fs::File;

use linux_loader::loader::KernelLoader;
use linux_loader::loader::bzimage::BzImage;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{BootEntry, BootError, BootInputs, load_initrd, low_ram_end};
use crate::arch::x86_64::e820::{ZeroPageInfo, memory_map, zero_page};
use crate::arch::x86_64::layout;
use crate::arch::x86_64::regs::BootInfoReg;

/// Highest initrd end when the header does not say (boot protocol < 2.03).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Loads a bzImage and writes its zero page.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    inputs: &BootInputs,
) -> Result<BootEntry, BootError> {
    let loaded = BzImage::load(mem, None, kernel, Some(GuestAddress(layout::HIMEM_START)))
        .map_err(|source| BootError::Loader {
            path: inputs.kernel.into(),
            source,
        })?;
    let Some(hdr) = loaded.setup_header else {
        return Err(BootError::UnknownFormat(inputs.kernel.into()));
    };
    let version = hdr.version;
    let cmdline_max = if version >= 0x206 {
        hdr.cmdline_size as usize + 1
    } else {
        256
    };
    if inputs.cmdline.len() + 1 > cmdline_max {
        return Err(BootError::CmdlineTooLong {
            len: inputs.cmdline.len(),
            max: cmdline_max - 1,
        });
    }
    let addr_max = if version >= 0x203 {
        u64::from(hdr.initrd_addr_max)
    } else {
        DEFAULT_INITRD_ADDR_MAX
    };
    let initrd_top = low_ram_end(inputs.memory).min(addr_max.saturating_add(1));
    let initrd = match inputs.initrd {
        Some(p) => Some(load_initrd(mem, p, loaded.kernel_end, initrd_top)?),
        None => None,
    };
    let info = ZeroPageInfo {
        cmdline_addr: layout::CMDLINE,
        cmdline_len: inputs.cmdline.len() as u32,
        initrd: initrd.map(|(a, s)| (a, s as u32)),
        rsdp_addr: inputs.rsdp_addr,
    };
    let params = zero_page(hdr, &memory_map(inputs.memory), &info);
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE))
        .map_err(BootError::GuestMemory)?;
    Ok(BootEntry {
        entry: loaded.kernel_load.0,
        info: BootInfoReg::Esi(layout::ZERO_PAGE),
    })
}
