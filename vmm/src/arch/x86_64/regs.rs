//! Boot-time register state of the boot vCPU.
//!
//! Both boot protocols start the kernel the same way: 32-bit protected mode, paging off,
//! flat 4 GiB code and data segments from a GDT in guest memory (selectors 0x10 code and
//! 0x18 data, as Linux's 32-bit boot protocol names them), interrupts off. Only the register
//! carrying the boot information differs: `esi` = zero page (bzImage), `ebx` =
//! `hvm_start_info` (PVH).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

/// Code segment selector.
pub const BOOT_CS: u16 = 0x10;
/// Data segment selector.
pub const BOOT_DS: u16 = 0x18;
/// TSS selector (a null-ish 32-bit TSS so VMX entry checks pass).
pub const BOOT_TSS: u16 = 0x20;

/// CR0.PE.
const CR0_PE: u64 = 1;
/// CR0.ET.
const CR0_ET: u64 = 1 << 4;

/// The boot GDT: null, null, code, data, TSS.
pub const fn gdt() -> [u64; 5] {
    [
        0,
        0,
        gdt_entry(0xc09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x008b, 0, 0x67),
    ]
}

/// Packs a GDT descriptor from flags (type, S, DPL, P in the low byte; AVL, L, D/B, G in
/// bits 12..16), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Unpacks a GDT descriptor into KVM's segment form.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// Turns `sregs` (as KVM reports them after creation) into flat 32-bit protected mode with
/// the GDT at `gdt_addr`.
pub fn protected_mode_sregs(mut sregs: kvm_sregs, gdt_addr: u64) -> kvm_sregs {
    let table = gdt();
    let code = segment(table[2], BOOT_CS);
    let data = segment(table[3], BOOT_DS);
    sregs.gdt.base = gdt_addr;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(table[4], BOOT_TSS);
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !(1u64 << 31);
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// General registers: `entry` in eip, interrupts off, `boot_info` in `esi` (bzImage) or
/// `ebx` (PVH).
pub fn boot_regs(entry: u64, boot_info: BootInfoReg) -> kvm_regs {
    let mut regs = kvm_regs {
        rip: entry,
        rflags: 0x2,
        ..Default::default()
    };
    match boot_info {
        BootInfoReg::Esi(a) => regs.rsi = a,
        BootInfoReg::Ebx(a) => regs.rbx = a,
    }
    regs
}

/// Which register carries the boot information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoReg {
    /// bzImage: `esi` = zero page.
    Esi(u64),
    /// PVH: `ebx` = `hvm_start_info`.
    Ebx(u64),
}

/// FPU at its reset state: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Offset of LVT LINT0 in the local APIC register page.
pub const APIC_LVT0: usize = 0x350;
/// Offset of LVT LINT1.
pub const APIC_LVT1: usize = 0x360;
/// Delivery mode ExtINT.
const APIC_MODE_EXTINT: u32 = 0x7;
/// Delivery mode NMI.
const APIC_MODE_NMI: u32 = 0x4;

/// Sets a local APIC LVT entry's delivery mode in a KVM APIC register page.
pub fn set_lvt_mode(regs: &mut [std::ffi::c_char], offset: usize, mode: u32) {
    let Some(bytes) = regs.get_mut(offset..offset + 4) else {
        return;
    };
    let mut raw = [0u8; 4];
    for (r, b) in raw.iter_mut().zip(bytes.iter()) {
        *r = *b as u8;
    }
    let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (b, r) in bytes.iter_mut().zip(v.to_le_bytes()) {
        *b = r as std::ffi::c_char;
    }
}

/// LINT0 as ExtINT (the 8259 PIC) and LINT1 as NMI, as a BIOS leaves them.
pub fn setup_lint(regs: &mut [std::ffi::c_char]) {
    set_lvt_mode(regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(regs, APIC_LVT1, APIC_MODE_NMI);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let t = gdt();
        assert_eq!(t[2], 0x00cf_9b00_0000_ffff);
        assert_eq!(t[3], 0x00cf_9300_0000_ffff);
        let cs = segment(t[2], BOOT_CS);
        assert_eq!(
            (cs.base, cs.limit, cs.db, cs.g, cs.type_, cs.present),
            (0, 0xffff_ffff, 1, 1, 0xb, 1)
        );
        assert_eq!(cs.unusable, 0);
        let tss = segment(t[4], BOOT_TSS);
        assert_eq!((tss.limit, tss.type_, tss.s), (0x67, 0xb, 0));
    }

    #[test]
    fn protected_mode_has_pe_and_no_paging() {
        let s = protected_mode_sregs(
            kvm_sregs {
                cr0: 0x6000_0010 | (1 << 31),
                ..Default::default()
            },
            0x500,
        );
        assert_eq!(s.cr0 & 1, 1);
        assert_eq!(s.cr0 >> 31, 0);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 39));
        assert_eq!(
            (s.cs.selector, s.ds.selector, s.ss.selector),
            (0x10, 0x18, 0x18)
        );
    }

    #[test]
    fn boot_info_goes_to_the_protocol_register() {
        let r = boot_regs(0x100000, BootInfoReg::Ebx(0x6000));
        assert_eq!((r.rip, r.rbx, r.rsi, r.rflags), (0x100000, 0x6000, 0, 2));
        let r = boot_regs(0x100000, BootInfoReg::Esi(0x7000));
        assert_eq!((r.rbx, r.rsi), (0, 0x7000));
    }

    #[test]
    fn lint_modes_are_extint_and_nmi() {
        let mut page = [0 as std::ffi::c_char; 1024];
        page[APIC_LVT0 + 1] = 0x17;
        setup_lint(&mut page);
        assert_eq!(page[APIC_LVT0 + 1] as u8, 0x17 & !0x7 | 0x7);
        assert_eq!(page[APIC_LVT1 + 1] as u8, 0x4);
    }
}
