//! Direct kernel boot: the kernel file goes into guest memory and the boot vCPU's first
//! register state is computed, with no firmware in between.
//!
//! [`load`] sniffs the file: an ELF with a Xen PVH note boots through PVH ([`pvh`]), a file
//! with the `HdrS` setup header through the Linux 32-bit boot protocol ([`bzimage`]). Both
//! put the command line at `layout::CMDLINE` and the initrd at the top of low RAM, then
//! write their boot-information block (`hvm_start_info` or the zero page). The result is
//! the entry point and which register carries the block.

pub mod bzimage;
pub mod pvh;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout;
use crate::arch::x86_64::regs::BootInfoReg;

/// Errors loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is neither a bzImage nor an ELF kernel")]
    UnknownFormat(PathBuf),
    #[error("{0} is an ELF file without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhNote(PathBuf),
    #[error("{path} ({size} bytes) does not fit in the guest's memory below {limit:#x}")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot load {path}")]
    Loader {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("the command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot write boot data to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// What a kernel needs besides the image.
#[derive(Clone, Copy, Debug)]
pub struct BootInputs<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Where the ACPI RSDP is.
    pub rsdp_addr: u64,
}

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    pub entry: u64,
    pub info: BootInfoReg,
}

/// Kernel formats [`load`] recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Recognises a kernel from its first bytes (at least 0x206 for a bzImage).
pub fn sniff(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

/// The end (exclusive) of RAM below 4 GiB.
pub fn low_ram_end(memory: u64) -> u64 {
    layout::ram_ranges(memory)
        .first()
        .map_or(0, |&(s, l)| s + l)
}

fn open(path: &Path) -> Result<(File, u64), BootError> {
    let mut f = File::open(path).map_err(|source| BootError::Open {
        path: path.into(),
        source,
    })?;
    let size = f
        .seek(SeekFrom::End(0))
        .and_then(|s| f.rewind().map(|_| s))
        .map_err(|source| BootError::Read {
            path: path.into(),
            source,
        })?;
    Ok((f, size))
}

/// Loads the kernel (and initrd, command line, boot information) into `mem`.
pub fn load(mem: &GuestMemoryMmap, inputs: &BootInputs) -> Result<BootEntry, BootError> {
    let (mut kernel, size) = open(inputs.kernel)?;
    let limit = low_ram_end(inputs.memory);
    if size > limit.saturating_sub(layout::HIMEM_START) {
        return Err(BootError::TooLarge {
            path: inputs.kernel.into(),
            size,
            limit,
        });
    }
    let mut head = vec![0u8; 0x206.min(size as usize)];
    kernel
        .read_exact(&mut head)
        .map_err(|source| BootError::Read {
            path: inputs.kernel.into(),
            source,
        })?;
    write_cmdline(mem, inputs.cmdline, layout::CMDLINE_MAX)?;
    match sniff(&head) {
        Some(KernelFormat::Elf) => pvh::load(mem, &mut kernel, inputs),
        Some(KernelFormat::BzImage) => bzimage::load(mem, &mut kernel, inputs),
        None => Err(BootError::UnknownFormat(inputs.kernel.into())),
    }
}

/// Writes the NUL-terminated command line at `layout::CMDLINE`.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE))
        .map_err(BootError::GuestMemory)
}

/// Loads the initrd page-aligned at the top of low RAM, below `max_end`, above
/// `kernel_end`. Returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    max_end: u64,
) -> Result<(u64, u64), BootError> {
    let (mut f, size) = open(path)?;
    let top = max_end;
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end);
    let Some(addr) = addr else {
        return Err(BootError::TooLarge {
            path: path.into(),
            size,
            limit: top,
        });
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(BootError::GuestMemory)?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_elf_and_bzimage_and_rejects_the_rest() {
        assert_eq!(sniff(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(sniff(&bz), Some(KernelFormat::BzImage));
        assert_eq!(sniff(b"#!/bin/sh\n"), None);
        assert_eq!(sniff(&[0u8; 0x300]), None);
    }

    #[test]
    fn reports_missing_and_unknown_kernels() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let inputs = |k: &'static str| (dir.path().join(k), 16u64 << 20);
        let (missing, m) = inputs("missing");
        let err = load(
            &mem,
            &BootInputs {
                kernel: &missing,
                initrd: None,
                cmdline: "",
                memory: m,
                rsdp_addr: 0,
            },
        )
        .unwrap_err();
        assert!(matches!(err, BootError::Open { .. }), "{err}");
        let (text, m) = inputs("text");
        std::fs::write(&text, "not a kernel at all").unwrap();
        let err = load(
            &mem,
            &BootInputs {
                kernel: &text,
                initrd: None,
                cmdline: "",
                memory: m,
                rsdp_addr: 0,
            },
        )
        .unwrap_err();
        assert!(matches!(err, BootError::UnknownFormat(_)), "{err}");
        let (big, _) = inputs("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let err = load(
            &mem,
            &BootInputs {
                kernel: &big,
                initrd: None,
                cmdline: "",
                memory: 16 << 20,
                rsdp_addr: 0,
            },
        )
        .unwrap_err();
        assert!(matches!(err, BootError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn initrd_goes_page_aligned_below_the_limit() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, b"INITRD!!").unwrap();
        let (addr, size) = load_initrd(&mem, &p, 0x200000, 16 << 20).unwrap();
        assert_eq!((addr, size), ((16 << 20) - 0x1000, 8));
        let mut b = [0u8; 8];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        assert_eq!(&b, b"INITRD!!");
        assert!(matches!(
            load_initrd(&mem, &p, 16 << 20, 16 << 20),
            Err(BootError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_overlong_command_lines() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(
            write_cmdline(&mem, "abcd", 4),
            Err(BootError::CmdlineTooLong { len: 4, max: 3 })
        ));
        write_cmdline(&mem, "abc", 4).unwrap();
        assert!(matches!(
            write_cmdline(&mem, "a\0b", 40),
            Err(BootError::CmdlineNul)
        ));
    }
}
