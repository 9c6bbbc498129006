//! ACPI tables for firmware boot (the Q35 platform), handed to SeaBIOS or OVMF as fw_cfg
//! files together with the table-loader script that places and links them.
//!
//! Data flow: the firmware reads the fw_cfg directory, then `etc/table-loader`; the
//! machine generates all three files ([`FILES`]) lazily from a [`Q35Platform`] snapshot
//! taken at that moment, so the tables describe what the firmware programmed (the ECAM
//! window PCIEXBAR decodes, the PM block at PMBASE). [`build`] returns:
//!
//! - `etc/acpi/tables`: FACS, DSDT, FADT, MADT, MCFG, RSDT, XSDT, each 8-byte aligned in
//!   one blob (the FACS first, so the blob's 64-byte alignment is the FACS's).
//! - `etc/acpi/rsdp`: an ACPI 2.0 RSDP naming both the RSDT and the XSDT.
//! - `etc/table-loader`: ALLOCATE the RSDP in the F-segment (where OSes scan for it) and
//!   the tables in high memory; ADD_POINTER for every pointer field, whose unpatched
//!   value is the target's offset inside `etc/acpi/tables` (the firmware adds the address
//!   it loaded that file at); ADD_CHECKSUM for every table once its pointers are patched,
//!   and both RSDP checksums (`qemu:hw/acpi/bios-linker-loader.c`, SeaBIOS
//!   `src/fw/romfile_loader.c`). OVMF installs each table an ADD_POINTER reaches through
//!   EFI_ACPI_TABLE_PROTOCOL (`OvmfPkg/Library/AcpiPlatformLib/QemuFwCfgAcpi.c`), so
//!   every table is complete and reached from the FADT or the RSDT/XSDT.
//!
//! The fw_cfg device runs the generator twice (for the directory, then for good when a
//! file is first read) and a file must not grow in between, so every size is independent
//! of the programmed values: a fixed table set, one MCFG entry, and the same number of
//! resource descriptors in the root bridge's `_CRS` whatever the ECAM window is.
//!
//! The DSDT describes the Q35 machine as QEMU's q35 does (`qemu:hw/i386/acpi-build.c`):
//! `_S5`; the PCI Express root bridge `\_SB.PCI0` (PNP0A08/PNP0A03) with its `_CRS` (bus
//! range, the 0xCF8 ports, the I/O space around them, the VGA window, the 32-bit window
//! less the ECAM, the 64-bit window above RAM) and `_PRT` (slot and pin to PIRQ by
//! [`q35_pirq`]); the LPC bridge `PCI0.ISA` at 00:1f.0 holding the RTC, the i8042
//! keyboard and mouse and COM1; the GSI link devices `\_SB.GSIA`..`GSIH` the `_PRT`
//! names (PIRQ A..H fixed at GSI 16..23, level, active high); the power button. The
//! `_PRT` is the APIC-mode one only: there is no `_PIC` switch to PIC-mode links. With
//! a TPM, the DSDT has its device (`\_SB.TPM`, MSFT0101) and the tables a TPM2 table
//! whose event log area is the fw_cfg file [`TPM_LOG_FILE`], allocated and pointed at
//! through the loader as the tables are.

use std::sync::Arc;

use acpi_tables::Aml;
use acpi_tables::aml::Device as AmlDevice;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, EISAName, IO, Interrupt, Method, Name, PackageBuilder,
    Path, ResourceTemplate,
};
use acpi_tables::facs::FACS;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use hospes_devices::chipset::reset_control::{RESET_CONTROL_PORT, RST_CPU, SYS_RST};
use hospes_devices::fw_cfg::{AllocZone, LazyGenerator, LoaderError, TableLoader};
use hospes_devices::legacy::pm::PmLayout;
use hospes_devices::pci::root::EcamOverlay;

use super::acpi::{self, AcpiError, FixedHardware, OEM_ID, OEM_REVISION, OEM_TABLE_ID, to_bytes};
use super::layout;

/// The RSDP's fw_cfg file.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
/// The tables' fw_cfg file.
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// The table-loader script's fw_cfg file.
pub const LOADER_FILE: &str = "etc/table-loader";
/// The three files, in the order [`FirmwareAcpi::into_blobs`] returns them.
pub const FILES: [&str; 3] = [RSDP_FILE, TABLES_FILE, LOADER_FILE];
/// The TPM's event log area (a fixed file of zeros the firmware allocates and fills; the
/// TPM2 table points at it), present with a TPM only.
pub const TPM_LOG_FILE: &str = "etc/tpm/log";
/// Its size: the TCG's minimum log area for a client platform.
pub const TPM_LOG_LEN: u32 = 0x1_0000;
/// Its alignment.
const TPM_LOG_ALIGN: u32 = 16;

/// The RSDP's alignment in the F-segment (ACPI 6.5 §5.2.5.1: 16-byte boundary).
const RSDP_ALIGN: u32 = 16;
/// The tables blob's alignment: the FACS at its start must be 64-byte aligned (§5.2.10).
const TABLES_ALIGN: u32 = 64;
/// Alignment of each table after the FACS inside the blob.
const TABLE_ALIGN: usize = 8;

/// Header fields every description table has (ACPI §5.2.6).
const SDT_CHECKSUM: u32 = 9;
const SDT_HEADER_LEN: usize = 36;
/// RSDP fields (§5.2.5.3): the ACPI 1.0 checksum covers the first 20 bytes, the extended
/// one the whole 36-byte structure.
const RSDP_CHECKSUM: u32 = 8;
const RSDP_RSDT: u32 = 16;
const RSDP_V1_LEN: u32 = 20;
const RSDP_XSDT: u32 = 24;
const RSDP_EXT_CHECKSUM: u32 = 32;
/// FADT pointer fields (§5.2.9): FIRMWARE_CTRL and DSDT (32-bit), X_FIRMWARE_CTRL and
/// X_DSDT (64-bit).
const FADT_FIRMWARE_CTRL: u32 = 36;
const FADT_DSDT: u32 = 40;
const FADT_X_FIRMWARE_CTRL: u32 = 132;
const FADT_X_DSDT: u32 = 140;

/// PIRQ A..H reach the IOAPIC at GSI 16..23 (ICH9 in APIC mode; QEMU's q35 wiring).
pub const PIRQ_GSI_BASE: u32 = 16;
/// Device slots on bus 0 (the `_PRT` has an entry per slot and pin).
const PCI_SLOTS: u8 = 32;
/// INTA..INTD.
const PCI_PINS: u8 = 4;

/// The RTC's ISA IRQ.
const RTC_IRQ: u8 = 8;
/// The RTC's index/data ports.
const RTC_PORT: u16 = 0x70;
const RTC_PORTS: u8 = 2;
/// The i8042's data and command ports.
const I8042_DATA_PORT: u16 = 0x60;
const I8042_CMD_PORT: u16 = 0x64;
/// COM1's eight registers.
const COM1_PORTS: u8 = 8;
/// The LPC bridge's address on bus 0: device 0x1f, function 0 (`_ADR` is device << 16).
const LPC_ADR: u32 = 0x001f_0000;

/// The PCI configuration address/data ports the root bridge itself decodes.
const PCI_CONFIG_PORT: u16 = 0xcf8;
const PCI_CONFIG_PORTS: u8 = 8;
/// The I/O space below and above them that the root bridge passes on.
const IO_BELOW_CONFIG_END: u16 = 0x0cf7;
const IO_ABOVE_CONFIG_START: u16 = 0x0d00;
/// The last bus when PCIEXBAR decodes nothing (the Q35 root's bus range).
const LAST_BUS: u8 = 0xff;
/// One bus of ECAM is 1 MiB.
const ECAM_BUS_SHIFT: u32 = 20;

/// Errors building the firmware's ACPI files.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiLoaderError {
    #[error("cannot build the ACPI tables")]
    Tables(#[from] AcpiError),
    #[error("cannot write the table-loader script")]
    Loader(#[from] LoaderError),
    #[error("the ACPI tables need {0} bytes, past what a 32-bit pointer field reaches")]
    TooLarge(usize),
}

/// The Q35 machine as the firmware has set it up when the tables are generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Q35Platform {
    pub cpus: u32,
    /// Guest RAM in bytes, placed as [`layout::firmware_ram_ranges`] says.
    pub memory: u64,
    /// The 32-bit PCI window, `[start, end)`.
    pub window: (u64, u64),
    /// The ECAM window PCIEXBAR decodes now, `(base, len)`; None while off.
    pub ecam: Option<(u64, u64)>,
    /// The ICH9 PM block's base (PMBASE; 0x600 as SeaBIOS and OVMF program it).
    pub pm_base: u16,
    /// A TPM at `hospes_devices::tpm::CRB_BASE`: a DSDT device and a TPM2 table whose
    /// log area is [`TPM_LOG_FILE`].
    pub tpm: bool,
}

/// The three fw_cfg files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareAcpi {
    pub rsdp: Vec<u8>,
    pub tables: Vec<u8>,
    pub loader: Vec<u8>,
}

impl FirmwareAcpi {
    /// The files in the order of [`FILES`] (what a fw_cfg lazy generator returns).
    pub fn into_blobs(self) -> Vec<Vec<u8>> {
        vec![self.rsdp, self.tables, self.loader]
    }
}

/// The fw_cfg generator of [`FILES`]: builds them from `platform` with the ECAM window
/// `ecam` decodes at that moment. A build that fails (it cannot once [`build`] has
/// succeeded for the same platform) is logged and leaves the files empty, and the
/// firmware then boots without ACPI tables.
pub fn generator(platform: Q35Platform, ecam: Arc<EcamOverlay>) -> LazyGenerator {
    Box::new(move || {
        let now = Q35Platform {
            ecam: ecam.range(),
            ..platform
        };
        match build(&now) {
            Ok(files) => files.into_blobs(),
            Err(e) => {
                log::error!("ACPI tables for the firmware: {e}");
                Vec::new()
            }
        }
    })
}

/// PIRQ (0 = A .. 7 = H) that INTx `pin` (0 = INTA) of a device in `slot` on bus 0 raises:
/// QEMU's q35 swizzle, which SeaBIOS and OVMF program the LPC's PIRQ routing for. Slots
/// below 0x18 rotate over E..H; 0x18 and 0x1e start at E, 0x19..0x1d and 0x1f at A.
pub fn q35_pirq(slot: u8, pin: u8) -> u8 {
    let pin = pin % PCI_PINS;
    match slot {
        0..0x18 => 4 + (slot + pin) % PCI_PINS,
        0x18 | 0x1e => 4 + pin,
        _ => pin,
    }
}

/// The GSI INTx `pin` of a device in `slot` reaches in APIC mode.
pub fn q35_intx_gsi(slot: u8, pin: u8) -> u32 {
    PIRQ_GSI_BASE + u32::from(q35_pirq(slot, pin))
}

/// Builds the three files for `p`.
pub fn build(p: &Q35Platform) -> Result<FirmwareAcpi, AcpiLoaderError> {
    let mut f = Files::new()?;
    let facs = f.place(&to_bytes(&FACS::new()))?;
    let dsdt = f.place(&dsdt(p))?;
    f.checksum(dsdt)?;

    let fadt = f.place(&acpi::fadt_for(&q35_hardware(p.pm_base), 0, 0))?;
    // Both forms of each pointer: SeaBIOS reads the 32-bit DSDT field, 64-bit readers the
    // X_ fields (equal values, as ACPICA expects when both are set).
    f.point(fadt.at + FADT_FIRMWARE_CTRL, 4, facs.at)?;
    f.point(fadt.at + FADT_X_FIRMWARE_CTRL, 8, facs.at)?;
    f.point(fadt.at + FADT_DSDT, 4, dsdt.at)?;
    f.point(fadt.at + FADT_X_DSDT, 8, dsdt.at)?;
    f.checksum(fadt)?;

    let madt = f.place(&acpi::madt(p.cpus)?)?;
    f.checksum(madt)?;
    let mcfg = f.place(&mcfg(p.ecam))?;
    f.checksum(mcfg)?;
    let mut listed = vec![fadt, madt, mcfg];
    if p.tpm {
        f.loader
            .allocate(TPM_LOG_FILE, TPM_LOG_ALIGN, AllocZone::High)?;
        let tpm2 = f.place(&acpi::tpm2(TPM_LOG_LEN, 0))?;
        // LASA holds the log's offset in its file (0): the firmware adds its address.
        f.loader
            .add_pointer(TABLES_FILE, TPM_LOG_FILE, tpm2.at + acpi::TPM2_LASA, 8)?;
        f.checksum(tpm2)?;
        listed.push(tpm2);
    }

    let rsdt = f.place(&root_table(*b"RSDT", 4, listed.len()))?;
    for (i, t) in listed.iter().enumerate() {
        f.point(entry_at(rsdt, 4, i)?, 4, t.at)?;
    }
    f.checksum(rsdt)?;
    let xsdt = f.place(&root_table(*b"XSDT", 8, listed.len()))?;
    for (i, t) in listed.iter().enumerate() {
        f.point(entry_at(xsdt, 8, i)?, 8, t.at)?;
    }
    f.checksum(xsdt)?;

    f.rsdp_points(RSDP_RSDT, 4, rsdt.at)?;
    f.rsdp_points(RSDP_XSDT, 8, xsdt.at)?;
    f.loader
        .add_checksum(RSDP_FILE, RSDP_CHECKSUM, 0, RSDP_V1_LEN)?;
    f.loader
        .add_checksum(RSDP_FILE, RSDP_EXT_CHECKSUM, 0, len_u32(f.rsdp.len())?)?;
    Ok(FirmwareAcpi {
        rsdp: f.rsdp,
        tables: f.tables,
        loader: f.loader.into_bytes(),
    })
}

/// The fixed hardware of the ICH9 PM block at `pm_base` (`PmLayout::Ich9`) and the
/// chipset's reset control register at 0xCF9.
fn q35_hardware(pm_base: u16) -> FixedHardware {
    let ich9 = PmLayout::Ich9;
    FixedHardware {
        pm1a_evt: pm_base,
        pm1a_cnt: pm_base.wrapping_add(4),
        pm_tmr: pm_base.wrapping_add(8),
        gpe0: pm_base.wrapping_add(ich9.gpe0_offset() as u16),
        gpe0_len: ich9.gpe0_len() as u8,
        reset_port: RESET_CONTROL_PORT as u16,
        // A hard reset: SYS_RST | RST_CPU, the 0x06 OVMF and Linux write.
        reset_value: SYS_RST | RST_CPU,
    }
}

/// The MCFG: one entry for the window PCIEXBAR decodes, or an empty one (base 0, bus 0
/// only) while it decodes nothing, which an OS finds unreserved and ignores.
fn mcfg(ecam: Option<(u64, u64)>) -> Vec<u8> {
    match ecam {
        Some((base, len)) => acpi::mcfg_for(base, last_bus(len)),
        None => acpi::mcfg_for(0, 0),
    }
}

/// The last bus an ECAM window of `len` bytes reaches.
fn last_bus(len: u64) -> u8 {
    let buses = (len >> ECAM_BUS_SHIFT).clamp(1, 256);
    u8::try_from(buses - 1).unwrap_or(LAST_BUS)
}

/// An RSDT or XSDT with `entries` zeroed pointer fields of `width` bytes.
fn root_table(signature: [u8; 4], width: usize, entries: usize) -> Vec<u8> {
    let mut sdt = Sdt::new(signature, 36, 1, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&vec![0; width * entries]);
    sdt.as_slice().to_vec()
}

/// Offset in the blob of entry `i` (of `width` bytes) of a root table.
fn entry_at(table: Placed, width: usize, i: usize) -> Result<u32, AcpiLoaderError> {
    len_u32(SDT_HEADER_LEN + width * i).map(|off| table.at + off)
}

fn len_u32(len: usize) -> Result<u32, AcpiLoaderError> {
    u32::try_from(len).map_err(|_| AcpiLoaderError::TooLarge(len))
}

/// Writes `value` as a `width`-byte little-endian number at `at` in `data` (nothing if it
/// does not fit: every caller writes inside a table it built).
fn set_le(data: &mut [u8], at: usize, width: usize, value: u64) {
    if let Some(field) = data.get_mut(at..at + width) {
        field.copy_from_slice(&value.to_le_bytes()[..width]);
    }
}

/// A table placed in the blob: its offset and length.
#[derive(Clone, Copy, Debug)]
struct Placed {
    at: u32,
    len: u32,
}

/// The files under construction.
struct Files {
    rsdp: Vec<u8>,
    tables: Vec<u8>,
    loader: TableLoader,
}

impl Files {
    fn new() -> Result<Self, AcpiLoaderError> {
        let mut loader = TableLoader::new();
        loader.allocate(RSDP_FILE, RSDP_ALIGN, AllocZone::FSeg)?;
        loader.allocate(TABLES_FILE, TABLES_ALIGN, AllocZone::High)?;
        Ok(Self {
            rsdp: to_bytes(&Rsdp::new(OEM_ID, 0)),
            tables: Vec::new(),
            loader,
        })
    }

    /// Appends `table` to the blob at the next aligned offset.
    fn place(&mut self, table: &[u8]) -> Result<Placed, AcpiLoaderError> {
        let at = self.tables.len().next_multiple_of(TABLE_ALIGN);
        self.tables.resize(at, 0);
        self.tables.extend_from_slice(table);
        len_u32(self.tables.len())?;
        Ok(Placed {
            at: len_u32(at)?,
            len: len_u32(table.len())?,
        })
    }

    /// A pointer field at `at` in the blob, `width` bytes, to the table at `target`.
    fn point(&mut self, at: u32, width: u8, target: u32) -> Result<(), AcpiLoaderError> {
        set_le(
            &mut self.tables,
            at as usize,
            usize::from(width),
            u64::from(target),
        );
        self.loader
            .add_pointer(TABLES_FILE, TABLES_FILE, at, width)?;
        Ok(())
    }

    /// A pointer field at `at` in the RSDP to the table at `target` in the blob.
    fn rsdp_points(&mut self, at: u32, width: u8, target: u32) -> Result<(), AcpiLoaderError> {
        set_le(
            &mut self.rsdp,
            at as usize,
            usize::from(width),
            u64::from(target),
        );
        self.loader.add_pointer(RSDP_FILE, TABLES_FILE, at, width)?;
        Ok(())
    }

    /// Checksums `t` once the firmware has patched its pointers.
    fn checksum(&mut self, t: Placed) -> Result<(), AcpiLoaderError> {
        self.loader
            .add_checksum(TABLES_FILE, t.at + SDT_CHECKSUM, t.at, t.len)?;
        Ok(())
    }
}

/// The small IRQ descriptor `IRQNoFlags () {irq}` (ACPI §6.4.2.1): an ISA interrupt,
/// edge-triggered, active high.
struct IrqNoFlags(u8);

/// Small resource item 0x04 (IRQ) with two bytes of mask.
const IRQ_NO_FLAGS_TAG: u8 = 0x22;

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let mask = 1u16.checked_shl(u32::from(self.0)).unwrap_or(0);
        sink.byte(IRQ_NO_FLAGS_TAG);
        sink.word(mask);
    }
}

/// A vendor-defined long descriptor (ACPI §6.4.3.2) of the same 26 bytes a DWord memory
/// descriptor takes: stands in for a part of the 32-bit window that is empty, so the
/// `_CRS` keeps its size wherever the ECAM window is.
struct WindowFiller;

/// Large resource item 0x04 (vendor-defined) and its length: sub-type, UUID, 6 data bytes.
const VENDOR_LONG_TAG: u8 = 0x84;
const VENDOR_LONG_LEN: u16 = 23;

impl Aml for WindowFiller {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.byte(VENDOR_LONG_TAG);
        sink.word(VENDOR_LONG_LEN);
        for _ in 0..VENDOR_LONG_LEN {
            sink.byte(0);
        }
    }
}

/// The 32-bit window `[start, end)` less the ECAM window in it: the part below and the
/// part above, each `(first, last)` or None when empty.
type WindowParts = [Option<(u32, u32)>; 2];

fn window_parts(window: (u64, u64), ecam: Option<(u64, u64)>) -> WindowParts {
    let part = |from: u64, to: u64| -> Option<(u32, u32)> {
        let first = u32::try_from(from).ok()?;
        let last = u32::try_from(to.checked_sub(1)?).ok()?;
        (from < to).then_some((first, last))
    };
    let (start, end) = window;
    match ecam {
        Some((base, len)) if base < end && base.saturating_add(len) > start => [
            part(start, base.max(start)),
            part(base.saturating_add(len).min(end), end),
        ],
        _ => [part(start, end), None],
    }
}

/// The 64-bit PCI window: after the end of RAM above 4 GiB, 1 GiB aligned (where SeaBIOS
/// puts 64-bit BARs), [`layout::HIGH_MMIO_SIZE`] bytes.
fn high_window(memory: u64) -> (u64, u64) {
    let end = layout::firmware_ram_ranges(memory)
        .last()
        .map_or(layout::HIGH_RAM_START, |&(s, l)| {
            (s + l).max(layout::HIGH_RAM_START)
        });
    let start = end.next_multiple_of(1 << 30);
    (start, start + layout::HIGH_MMIO_SIZE - 1)
}

/// `\_SB.PCI0`'s `_CRS`.
fn root_resources(p: &Q35Platform) -> Vec<u8> {
    let last = p.ecam.map_or(LAST_BUS, |(_, len)| last_bus(len));
    let buses = AddressSpace::new_bus_number(0u16, u16::from(last));
    let config = IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORTS);
    let io_low = AddressSpace::new_io(0u16, IO_BELOW_CONFIG_END, None);
    let io_high = AddressSpace::new_io(IO_ABOVE_CONFIG_START, 0xffff, None);
    let vga = AddressSpace::new_memory(
        AddressSpaceCacheable::Cacheable,
        true,
        layout::VGA_WINDOW_START as u32,
        (layout::VGA_WINDOW_END - 1) as u32,
        None,
    );
    let parts = window_parts(p.window, p.ecam);
    let mem32: Vec<Box<dyn Aml>> = parts
        .iter()
        .map(|part| -> Box<dyn Aml> {
            match part {
                Some((first, last)) => Box::new(AddressSpace::new_memory(
                    AddressSpaceCacheable::NotCacheable,
                    true,
                    *first,
                    *last,
                    None,
                )),
                None => Box::new(WindowFiller),
            }
        })
        .collect();
    let (high_start, high_end) = high_window(p.memory);
    let mem64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        high_start,
        high_end,
        None,
    );
    let mut items: Vec<&dyn Aml> = vec![&buses, &config, &io_low, &io_high, &vga];
    items.extend(mem32.iter().map(|b| b.as_ref()));
    items.push(&mem64);
    to_bytes(&ResourceTemplate::new(items))
}

/// The name of the GSI link device for PIRQ `pirq` (0 = A).
fn gsi_link_name(pirq: u8) -> String {
    format!("GSI{}", char::from(b'A' + pirq))
}

/// `\_SB.PCI0._PRT`: every slot's INTA..INTD to its GSI link device.
fn routing_table() -> Vec<u8> {
    let mut prt = PackageBuilder::new();
    for slot in 0..PCI_SLOTS {
        // Any function of the slot: the address is slot << 16 | 0xffff.
        let address = (u32::from(slot) << 16) | 0xffff;
        for pin in 0..PCI_PINS {
            let link = Path::new(&gsi_link_name(q35_pirq(slot, pin)));
            let mut entry = PackageBuilder::new();
            entry.add_element(&address);
            entry.add_element(&pin);
            entry.add_element(&link);
            entry.add_element(&0u8);
            prt.add_element(&entry);
        }
    }
    to_bytes(&Name::new("_PRT".into(), &prt))
}

/// `\_SB.GSIA`..`GSIH`: PIRQ A..H as interrupt links fixed at GSI 16..23, level-triggered
/// and active high as the IOAPIC pins are wired (QEMU's `build_gsi_link_dev`).
fn gsi_links() -> Vec<u8> {
    let mut out = Vec::new();
    for pirq in 0..8u8 {
        let gsi = PIRQ_GSI_BASE + u32::from(pirq);
        let irq = Interrupt::new(true, false, false, true, gsi);
        let crs = ResourceTemplate::new(vec![&irq]);
        let srs = Method::new("_SRS".into(), 1, false, vec![]);
        out.extend(to_bytes(&AmlDevice::new(
            format!("_SB_.{}", gsi_link_name(pirq)).as_str().into(),
            vec![
                &Name::new("_HID".into(), &EISAName::new("PNP0C0F")),
                &Name::new("_UID".into(), &pirq),
                &Name::new("_PRS".into(), &crs),
                &Name::new("_CRS".into(), &crs),
                &srs,
            ],
        )));
    }
    out
}

/// A device behind the LPC bridge: `_HID`, `_UID` where there are several of its kind,
/// `_CRS`.
fn isa_device(name: &str, hid: &str, uid: Option<u8>, resources: Vec<&dyn Aml>) -> RawAml {
    let hid = Name::new("_HID".into(), &EISAName::new(hid));
    let uid = uid.map(|u| Name::new("_UID".into(), &u));
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(resources));
    let mut children: Vec<&dyn Aml> = vec![&hid];
    if let Some(uid) = &uid {
        children.push(uid);
    }
    children.push(&crs);
    RawAml(to_bytes(&AmlDevice::new(name.into(), children)))
}

/// `PCI0.ISA`, the LPC bridge at 00:1f.0, with the PC devices behind it.
fn lpc_bridge() -> Vec<u8> {
    let rtc = isa_device(
        "RTC_",
        "PNP0B00",
        None,
        vec![
            &IO::new(RTC_PORT, RTC_PORT, 1, RTC_PORTS),
            &IrqNoFlags(RTC_IRQ),
        ],
    );
    let kbd = isa_device(
        "KBD_",
        "PNP0303",
        None,
        vec![
            &IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1),
            &IO::new(I8042_CMD_PORT, I8042_CMD_PORT, 1, 1),
            &IrqNoFlags(layout::I8042_KBD_IRQ as u8),
        ],
    );
    let mouse = isa_device(
        "MOU_",
        "PNP0F13",
        None,
        vec![&IrqNoFlags(layout::I8042_AUX_IRQ as u8)],
    );
    let com1 = isa_device(
        "COM1",
        "PNP0501",
        Some(1),
        vec![
            &IO::new(layout::COM1_PORT, layout::COM1_PORT, 0, COM1_PORTS),
            &IrqNoFlags(layout::COM1_IRQ as u8),
        ],
    );
    to_bytes(&AmlDevice::new(
        "ISA_".into(),
        vec![
            &Name::new("_ADR".into(), &LPC_ADR),
            &rtc,
            &kbd,
            &mouse,
            &com1,
        ],
    ))
}

/// The DSDT of the Q35 platform.
fn dsdt(p: &Q35Platform) -> Vec<u8> {
    let crs = RawAml(root_resources(p));
    let prt = RawAml(routing_table());
    let lpc = RawAml(lpc_bridge());
    let mut body = acpi::s5();
    // The links before the `_PRT` that names them.
    body.extend(gsi_links());
    body.extend(acpi::pci_root(&crs, &[&prt, &lpc]));
    body.extend(acpi::power_button());
    if p.tpm {
        body.extend(acpi::tpm_device());
    }
    acpi::dsdt_of(&body)
}

/// AML already encoded.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

#[cfg(test)]
mod tests;
