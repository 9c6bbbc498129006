//! ACPI tables, built once per boot and copied into guest memory at
//! [`layout::ACPI_START`].
//!
//! The blob starts with the RSDP (so a kernel scanning 0xe0000.. finds it, and PVH/zero page
//! carry its address too), then FACS, DSDT, FADT, MADT, MCFG and the XSDT that lists them.
//! The FADT is a full (not hardware-reduced) one: a PM1a event and control block, a PM timer
//! and GPE0 in I/O space, SCI on IRQ 9, a fixed-hardware power button and a reset register,
//! all served by `devices::legacy::pm`. The DSDT holds `_S5`, a PCI root bridge (ECAM, bus
//! range, I/O and MMIO windows), a power button device and COM1.
//!
//! Firmware boot builds its own set for the Q35 platform in [`super::acpi_loader`], from
//! the pieces here that both share ([`fadt_for`], [`madt`], [`mcfg_for`], `_S5`, the power
//! button).

use acpi_tables::Aml;
use acpi_tables::aml::Device as AmlDevice;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, EISAName, IO, Interrupt, Memory32Fixed, Method, Name,
    Package, ResourceTemplate, Return,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;

use super::layout;
use hospes_devices::tpm::{CRB_BASE, CRB_CTRL_AREA_OFFSET, CRB_SIZE};

pub(super) const OEM_ID: [u8; 6] = *b"HOSPES";
pub(super) const OEM_TABLE_ID: [u8; 8] = *b"HOSPESVM";
pub(super) const OEM_REVISION: u32 = 1;

/// Errors building the ACPI tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("ACPI tables need {0} bytes, more than the space reserved for them")]
    TooLarge(usize),
    #[error("{0} vCPUs do not fit in the MADT (at most 255)")]
    TooManyCpus(u32),
}

/// The tables as one blob to copy to `base`, and the RSDP's address.
pub struct AcpiTables {
    pub base: u64,
    pub blob: Vec<u8>,
    pub rsdp_addr: u64,
}

pub(super) fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// `Name (_S5, Package { SLP_TYP, SLP_TYP, 0, 0 })`: the sleep type the PM block powers off on.
pub(super) fn s5() -> Vec<u8> {
    to_bytes(&Name::new(
        "_S5_".into(),
        &Package::new(vec![&layout::S5_SLP_TYP, &layout::S5_SLP_TYP, &0u8, &0u8]),
    ))
}

/// `\_SB.PWRB`, the power button device (PNP0C0C).
pub(super) fn power_button() -> Vec<u8> {
    to_bytes(&AmlDevice::new(
        "_SB_.PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &0u8),
        ],
    ))
}

/// The DSDT: `_S5`, the PCI root bridge, the power button, COM1, and the TPM when the
/// machine has one.
pub fn dsdt(mem: u64, tpm: bool) -> Vec<u8> {
    let last_bus = ((layout::PCI_ECAM_SIZE >> 20) - 1) as u16;
    let buses = AddressSpace::new_bus_number(0u16, last_bus);
    let cf8 = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AddressSpace::new_io(0u16, 0x0cf7, None);
    let io_high = AddressSpace::new_io(0x0d00u16, 0xffff, None);
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        layout::PCI_MMIO_START as u32,
        (layout::PCI_MMIO_END - 1) as u32,
        None,
    );
    let high = layout::high_mmio_start(mem);
    let mmio64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        high,
        high + layout::HIGH_MMIO_SIZE - 1,
        None,
    );
    let pci_crs = ResourceTemplate::new(vec![&buses, &cf8, &io_low, &io_high, &mmio32, &mmio64]);
    let mut body = s5();
    body.extend(pci_root(&pci_crs, &[]));
    body.extend(power_button());

    let com1_io = IO::new(layout::COM1_PORT, layout::COM1_PORT, 1, 8);
    let com1_irq = Interrupt::new(true, true, false, false, layout::COM1_IRQ);
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    body.extend(to_bytes(&AmlDevice::new(
        "_SB_.COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &0u8),
            &Name::new("_CRS".into(), &com1_crs),
        ],
    )));
    if tpm {
        body.extend(tpm_device());
    }

    dsdt_of(&body)
}

/// `\_SB.TPM`: the TPM 2.0 (`MSFT0101`, the id Windows and Linux bind their CRB drivers
/// to) and its CRB page.
pub(super) fn tpm_device() -> Vec<u8> {
    let page = Memory32Fixed::new(true, CRB_BASE as u32, CRB_SIZE as u32);
    let crs = ResourceTemplate::new(vec![&page]);
    to_bytes(&AmlDevice::new(
        "_SB_.TPM_".into(),
        vec![
            &Name::new("_HID".into(), &"MSFT0101"),
            &Name::new("_STR".into(), &"TPM 2.0 Device"),
            &Name::new("_UID".into(), &1u8),
            &Method::new("_STA".into(), 0, false, vec![&Return::new(&0x0fu8)]),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// The TPM2 table's revision: 4 has the log area fields (TCG ACPI Specification).
const TPM2_REVISION: u8 = 4;
/// Its length at revision 4.
const TPM2_LEN: u32 = 76;
/// Fields: platform class, the CRB control area's address, start method, log area
/// minimum length and start address.
const TPM2_PLATFORM_CLASS: usize = 36;
const TPM2_CONTROL_AREA: usize = 40;
const TPM2_START_METHOD: usize = 48;
const TPM2_LAML: usize = 64;
/// Where the table holds the log area's address (a pointer the firmware patches).
pub const TPM2_LASA: u32 = 68;
/// Platform class 0: a client platform (PC Client Platform TPM Profile).
const TPM2_CLIENT: u16 = 0;
/// Start method 7: the Command Response Buffer interface.
const TPM2_START_METHOD_CRB: u32 = 7;

/// The TPM2 table of the CRB TPM, its event log area `log_len` bytes at `log_addr` (0
/// and 0: none).
pub fn tpm2(log_len: u32, log_addr: u64) -> Vec<u8> {
    let mut sdt = Sdt::new(
        *b"TPM2",
        TPM2_LEN,
        TPM2_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.write_u16(TPM2_PLATFORM_CLASS, TPM2_CLIENT);
    sdt.write_u64(TPM2_CONTROL_AREA, CRB_BASE + CRB_CTRL_AREA_OFFSET);
    sdt.write_u32(TPM2_START_METHOD, TPM2_START_METHOD_CRB);
    sdt.write_u32(TPM2_LAML, log_len);
    sdt.write_u64(TPM2_LASA as usize, log_addr);
    sdt.as_slice().to_vec()
}

/// `\_SB.PCI0`: the PCI Express root bridge (PNP0A08, compatible with PNP0A03) of segment
/// 0 from bus 0, decoding `crs`, with `more` objects inside.
pub(super) fn pci_root(crs: &dyn Aml, more: &[&dyn Aml]) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let adr = Name::new("_ADR".into(), &0u8);
    let seg = Name::new("_SEG".into(), &0u8);
    let uid = Name::new("_UID".into(), &0u8);
    let bbn = Name::new("_BBN".into(), &0u8);
    let crs = Name::new("_CRS".into(), crs);
    let mut children: Vec<&dyn Aml> = vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs];
    children.extend_from_slice(more);
    to_bytes(&AmlDevice::new("_SB_.PCI0".into(), children))
}

/// A DSDT (revision 2: 64-bit integers) holding the AML `body`.
pub(super) fn dsdt_of(body: &[u8]) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(body);
    sdt.as_slice().to_vec()
}

fn io_gas(port: u16, bits: u8, access: AccessSize) -> GAS {
    GAS::new(GasSpace::SystemIo, bits, 0, access, u64::from(port))
}

/// The fixed hardware a FADT describes: the PM registers in I/O space and the reset
/// register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedHardware {
    pub pm1a_evt: u16,
    pub pm1a_cnt: u16,
    pub pm_tmr: u16,
    pub gpe0: u16,
    /// GPE0_BLK_LEN: status and enable halves together, in bytes.
    pub gpe0_len: u8,
    /// The reset register (an I/O port) and the value that resets.
    pub reset_port: u16,
    pub reset_value: u8,
}

/// Direct kernel boot's fixed hardware: Hospes' own PM block layout at
/// [`layout::PM_BASE`].
pub const KERNEL_BOOT_HARDWARE: FixedHardware = FixedHardware {
    pm1a_evt: layout::PM1A_EVT,
    pm1a_cnt: layout::PM1A_CNT,
    pm_tmr: layout::PM_TMR,
    gpe0: layout::GPE0,
    gpe0_len: 4,
    reset_port: layout::RESET_REG,
    reset_value: layout::RESET_VALUE,
};

/// The FADT pointing at `dsdt` and `facs`, for direct kernel boot.
pub fn fadt(dsdt: u64, facs: u64) -> Vec<u8> {
    fadt_for(&KERNEL_BOOT_HARDWARE, dsdt, facs)
}

/// A FADT describing `hw`, pointing at `dsdt` (64-bit field) and `facs` (32-bit field).
pub fn fadt_for(hw: &FixedHardware, dsdt: u64, facs: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_32(facs as u32)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .flag(Flags::TmrValExt);
    // Fixed-hardware power button: the PwrButton flag stays clear.
    f.sci_int = (layout::SCI_IRQ as u16).into();
    f.pm1a_evt_blk = u32::from(hw.pm1a_evt).into();
    f.pm1a_cnt_blk = u32::from(hw.pm1a_cnt).into();
    f.pm_tmr_blk = u32::from(hw.pm_tmr).into();
    f.gpe0_blk = u32::from(hw.gpe0).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.pm_tmr_len = 4;
    f.gpe0_blk_len = hw.gpe0_len;
    f.century = hospes_devices::legacy::rtc::REG_CENTURY;
    // IA-PC boot architecture: legacy devices present, 8042 present.
    f.iapc_boot_arch = 0x3u16.into();
    f.x_pm1a_evt_blk = io_gas(hw.pm1a_evt, 32, AccessSize::WordAccess);
    f.x_pm1a_cnt_blk = io_gas(hw.pm1a_cnt, 16, AccessSize::WordAccess);
    f.x_pm_tmr_blk = io_gas(hw.pm_tmr, 32, AccessSize::DwordAccess);
    f.x_gpe0_blk = io_gas(
        hw.gpe0,
        hw.gpe0_len.saturating_mul(8),
        AccessSize::ByteAccess,
    );
    f.reset_reg = io_gas(hw.reset_port, 8, AccessSize::ByteAccess);
    f.reset_value = hw.reset_value;
    to_bytes(&f.finalize())
}

/// The MADT: a local APIC per vCPU (ids 0..cpus), the IOAPIC, and the ISA overrides
/// (IRQ 0 -> GSI 2, SCI level-triggered active-high).
pub fn madt(cpus: u32) -> Result<Vec<u8>, AcpiError> {
    if cpus == 0 || cpus > 255 {
        return Err(AcpiError::TooManyCpus(cpus));
    }
    let mut sdt = Sdt::new(*b"APIC", 44, 4, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.write_u32(36, layout::LAPIC_START as u32);
    // PCAT_COMPAT: the 8259 PICs are there too.
    sdt.write_u32(40, 1);
    let mut body = Vec::new();
    for id in 0..cpus {
        // Type 0, length 8, ACPI processor uid, APIC id, flags = enabled.
        body.extend([0, 8, id as u8, id as u8, 1, 0, 0, 0]);
    }
    // Type 1 IOAPIC: length 12, id, reserved, address, GSI base.
    body.extend([1, 12, 0, 0]);
    body.extend((layout::IOAPIC_START as u32).to_le_bytes());
    body.extend(0u32.to_le_bytes());
    // Type 2 interrupt source overrides: bus 0 (ISA), source, GSI, flags.
    let iso = |src: u8, gsi: u32, flags: u16| {
        let mut e = vec![2, 10, 0, src];
        e.extend(gsi.to_le_bytes());
        e.extend(flags.to_le_bytes());
        e
    };
    body.extend(iso(0, 2, 0));
    // Active high (01) | level triggered (11 << 2).
    body.extend(iso(layout::SCI_IRQ as u8, layout::SCI_IRQ, 0x000d));
    sdt.append_slice(&body);
    Ok(sdt.as_slice().to_vec())
}

/// An MCFG with one entry: segment 0, buses `0..=last_bus` at `base`.
pub fn mcfg_for(base: u64, last_bus: u8) -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(base, 0, 0, last_bus);
    to_bytes(&m)
}

fn mcfg() -> Vec<u8> {
    mcfg_for(
        layout::PCI_ECAM_START,
        ((layout::PCI_ECAM_SIZE >> 20) - 1) as u8,
    )
}

/// Builds every table for a machine of `cpus` vCPUs and `mem` bytes of RAM (and a TPM if
/// `tpm`: its DSDT device and a TPM2 table without an event log), laid out from
/// [`layout::ACPI_START`].
pub fn build(cpus: u32, mem: u64, tpm: bool) -> Result<AcpiTables, AcpiError> {
    let base = layout::ACPI_START;
    let mut blob = Vec::new();
    let place = |blob: &mut Vec<u8>, table: &[u8], align: usize| -> u64 {
        let at = blob.len().next_multiple_of(align);
        blob.resize(at, 0);
        blob.extend_from_slice(table);
        base + at as u64
    };
    // The RSDP goes first; its XSDT address is patched in at the end.
    blob.resize(Rsdp::len(), 0);
    let facs_addr = place(&mut blob, &to_bytes(&FACS::new()), 64);
    let dsdt_addr = place(&mut blob, &dsdt(mem, tpm), 8);
    let fadt_addr = place(&mut blob, &fadt(dsdt_addr, facs_addr), 8);
    let madt_addr = place(&mut blob, &madt(cpus)?, 8);
    let mcfg_addr = place(&mut blob, &mcfg(), 8);
    let mut listed = vec![fadt_addr, madt_addr, mcfg_addr];
    if tpm {
        listed.push(place(&mut blob, &tpm2(0, 0), 8));
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for a in listed {
        xsdt.add_entry(a);
    }
    let xsdt_addr = place(&mut blob, &to_bytes(&xsdt), 8);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    blob[..rsdp.len()].copy_from_slice(&rsdp);
    if blob.len() as u64 > layout::ACPI_END - base {
        return Err(AcpiError::TooLarge(blob.len()));
    }
    Ok(AcpiTables {
        base,
        blob,
        rsdp_addr: base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
    }

    fn table_at(t: &AcpiTables, addr: u64) -> &[u8] {
        let off = (addr - t.base) as usize;
        let len = u32_at(&t.blob, off + 4) as usize;
        &t.blob[off..off + len]
    }

    #[test]
    fn every_table_is_reachable_from_the_rsdp_with_good_checksums() {
        let t = build(4, 256 << 20, false).unwrap();
        let rsdp = &t.blob[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let xsdt = table_at(&t, u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(xsdt), 0);
        let mut sigs = Vec::new();
        for i in 0..(xsdt.len() - 36) / 8 {
            let table = table_at(&t, u64_at(xsdt, 36 + i * 8));
            assert_eq!(sum(table), 0, "{:?}", &table[..4]);
            sigs.push(table[..4].to_vec());
        }
        assert_eq!(sigs, [b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]);
    }

    #[test]
    fn fadt_names_the_pm_block_sci_and_reset_register() {
        let t = build(1, 64 << 20, false).unwrap();
        let rsdp = &t.blob[..36];
        let xsdt = table_at(&t, u64_at(rsdp, 24));
        let fadt = table_at(&t, u64_at(xsdt, 36));
        assert_eq!(u32::from(fadt[46]) | u32::from(fadt[47]) << 8, 9);
        assert_eq!(u32_at(fadt, 56), 0x600);
        assert_eq!(u32_at(fadt, 64), 0x604);
        assert_eq!(u32_at(fadt, 76), 0x608);
        assert_eq!(u32_at(fadt, 112) & (1 << 20), 0, "not hardware-reduced");
        assert_eq!(u32_at(fadt, 112) & (1 << 4), 0, "fixed power button");
        assert_eq!(u64_at(fadt, 116 + 4), 0x610);
        assert_eq!(fadt[128], 6);
        let dsdt = table_at(&t, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(dsdt), 0);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        let facs = table_at(&t, u64::from(u32_at(fadt, 36)));
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(fadt, 36) % 64, 0);
    }

    #[test]
    fn a_machine_with_a_tpm_lists_a_tpm2_table_and_describes_the_crb_page() {
        let t = build(1, 64 << 20, true).unwrap();
        let xsdt = table_at(&t, u64_at(&t.blob[..36], 24));
        let entries = (xsdt.len() - 36) / 8;
        let tpm2 = table_at(&t, u64_at(xsdt, 36 + (entries - 1) * 8));
        assert_eq!(&tpm2[..4], b"TPM2");
        assert_eq!(tpm2.len(), 76);
        assert_eq!(tpm2[8], 4, "revision 4");
        assert_eq!(sum(tpm2), 0);
        assert_eq!(u16::from_le_bytes([tpm2[36], tpm2[37]]), 0, "client");
        assert_eq!(u64_at(tpm2, 40), 0xfed4_0040, "CRB control area");
        assert_eq!(u32_at(tpm2, 48), 7, "start method: CRB");
        let fadt = table_at(&t, u64_at(xsdt, 36));
        let dsdt = table_at(&t, u64_at(fadt, 140));
        assert!(dsdt.windows(8).any(|w| w == b"MSFT0101"));
        // Memory32Fixed (0x86, length 9, read-write) at 0xfed40000, 0x1000 bytes.
        let mut crs = vec![0x86, 9, 0, 1];
        crs.extend(0xfed4_0000u32.to_le_bytes());
        crs.extend(0x1000u32.to_le_bytes());
        assert!(dsdt.windows(crs.len()).any(|w| w == crs));
        // Without a TPM, neither.
        let t = build(1, 64 << 20, false).unwrap();
        assert!(!t.blob.windows(4).any(|w| w == b"TPM2"));
        assert!(!t.blob.windows(8).any(|w| w == b"MSFT0101"));
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let m = madt(3).unwrap();
        assert_eq!(sum(&m), 0);
        assert_eq!(u32_at(&m, 36), 0xfee0_0000);
        let lapics: Vec<(u8, u8)> = m[44..].chunks(8).take(3).map(|e| (e[0], e[3])).collect();
        assert_eq!(lapics, [(0, 0), (0, 1), (0, 2)]);
        assert_eq!(m[44 + 24], 1);
        assert_eq!(u32_at(&m, 44 + 24 + 4), 0xfec0_0000);
        assert_eq!(madt(0), Err(AcpiError::TooManyCpus(0)));
        assert_eq!(madt(256), Err(AcpiError::TooManyCpus(256)));
    }
}

#[cfg(test)]
mod iasl {
    //! Cross-checks the tables with ACPICA's disassembler (Debian: acpica-tools, installed
    //! by the test command: the test fails without it).
    use super::*;
    use std::process::Command;

    #[test]
    fn acpica_disassembles_every_table_without_errors() {
        let dir = tempfile::tempdir().unwrap();
        let t = build(2, 512 << 20, true).unwrap();
        let facs_free = |sig: &[u8]| sig != b"FACS";
        let mut off = 36usize.next_multiple_of(64);
        let mut seen = Vec::new();
        while off + 8 <= t.blob.len() {
            let sig = &t.blob[off..off + 4];
            let len = u32::from_le_bytes(t.blob[off + 4..off + 8].try_into().unwrap()) as usize;
            if len == 0 {
                off += 8;
                continue;
            }
            if facs_free(sig) {
                let name = String::from_utf8_lossy(sig).to_string();
                let path = dir.path().join(format!("{name}.dat"));
                std::fs::write(&path, &t.blob[off..off + len]).unwrap();
                let out = Command::new("iasl")
                    .arg("-d")
                    .arg(&path)
                    .current_dir(dir.path())
                    .output()
                    .expect("iasl (acpica-tools) is installed by the test command");
                let text = String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "{name}: {text}");
                assert!(!text.contains("Error"), "{name}: {text}");
                if std::env::var_os("HOSPES_ACPI_DUMP").is_some() {
                    let dsl = std::fs::read_to_string(dir.path().join(format!("{name}.dsl")))
                        .unwrap_or_default();
                    eprintln!("{dsl}");
                }
                seen.push(name);
            }
            off = (off + len).next_multiple_of(8);
        }
        assert_eq!(seen, ["DSDT", "FACP", "APIC", "MCFG", "TPM2", "XSDT"]);
    }
}
