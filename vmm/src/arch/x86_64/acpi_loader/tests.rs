//! The files are checked the way firmware consumes them: a small table-loader interpreter
//! (ALLOCATE, ADD_POINTER, ADD_CHECKSUM, with SeaBIOS' bounds checks) places them at
//! chosen addresses, and the result is walked from the RSDP as an OS would. ACPICA's
//! disassembler (Debian acpica-tools, installed by the test command) reads every table.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;

use hospes_devices::bus::BusDevice;
use hospes_devices::fw_cfg::{FW_CFG_FILE_DIR, FW_CFG_PORT_SEL, FwCfg};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;

/// Where the interpreter puts the F-segment and high-memory allocations.
const FSEG_BASE: u64 = 0xf_5a00;
const HIGH_BASE: u64 = 0x0fff_0000;

/// SeaBIOS's 256 MiB q35 machine after PCI setup: ECAM at 0xb0000000.
fn seabios_q35() -> Q35Platform {
    Q35Platform {
        cpus: 2,
        memory: 256 << 20,
        window: (0x8000_0000, layout::FW_PCI_MMIO_END),
        ecam: Some((0xb000_0000, 0x1000_0000)),
        pm_base: 0x600,
        tpm: false,
    }
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
}

fn le(b: &[u8], at: usize, width: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(&b[at..at + width]);
    u64::from_le_bytes(v)
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    le(b, at, 4)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    le(b, at, 8)
}

fn name_at(entry: &[u8], at: usize) -> String {
    let field = &entry[at..at + 56];
    let end = field
        .iter()
        .position(|&c| c == 0)
        .expect("NUL-terminated name");
    String::from_utf8(field[..end].to_vec()).unwrap()
}

/// Guest memory after the loader ran: each allocated file at its address.
struct Loaded {
    blobs: BTreeMap<String, (u64, Vec<u8>)>,
}

impl Loaded {
    /// Runs `loader` over `files` (name -> content) as SeaBIOS' romfile_loader does.
    fn run(loader: &[u8], files: &BTreeMap<&str, Vec<u8>>) -> Self {
        assert_eq!(loader.len() % 128, 0, "whole 128-byte entries");
        let mut blobs: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
        let (mut fseg, mut high) = (FSEG_BASE, HIGH_BASE);
        for e in loader.chunks(128) {
            match u32_at(e, 0) {
                1 => {
                    let name = name_at(e, 4);
                    let align = u32_at(e, 60);
                    assert!(align.is_power_of_two(), "{name}: alignment {align}");
                    let next = match e[64] {
                        1 => &mut high,
                        2 => &mut fseg,
                        z => panic!("{name}: zone {z}"),
                    };
                    let at = next.next_multiple_of(align);
                    let data = files
                        .get(name.as_str())
                        .expect("allocated file exists")
                        .clone();
                    *next = at + data.len() as u64;
                    assert!(blobs.insert(name, (at, data)).is_none(), "allocated once");
                }
                2 => {
                    let (dest, src) = (name_at(e, 4), name_at(e, 60));
                    let (offset, size) = (u32_at(e, 116) as usize, usize::from(e[120]));
                    assert!([1, 2, 4, 8].contains(&size), "pointer size {size}");
                    let src_base = blobs.get(&src).expect("source allocated first").0;
                    let src_len = blobs[&src].1.len() as u64;
                    let data = &mut blobs.get_mut(&dest).expect("dest allocated first").1;
                    assert!(offset + size <= data.len(), "{dest}+{offset:#x} in bounds");
                    let old = le(data, offset, size);
                    assert!(old < src_len, "{dest}+{offset:#x} points inside {src}");
                    let new = old + src_base;
                    assert!(size == 8 || new >> (size * 8) == 0, "fits {size} bytes");
                    data[offset..offset + size].copy_from_slice(&new.to_le_bytes()[..size]);
                }
                3 => {
                    let file = name_at(e, 4);
                    let (result, start, len) = (
                        u32_at(e, 60) as usize,
                        u32_at(e, 64) as usize,
                        u32_at(e, 68) as usize,
                    );
                    let data = &mut blobs.get_mut(&file).expect("allocated").1;
                    assert!(result < data.len() && start + len <= data.len());
                    assert!(
                        (start..start + len).contains(&result),
                        "result inside range"
                    );
                    let s = sum(&data[start..start + len]);
                    data[result] = data[result].wrapping_sub(s);
                }
                c => panic!("unexpected loader command {c}"),
            }
        }
        Self { blobs }
    }

    fn of(files: &FirmwareAcpi) -> Self {
        let mut map = BTreeMap::new();
        map.insert(RSDP_FILE, files.rsdp.clone());
        map.insert(TABLES_FILE, files.tables.clone());
        map.insert(TPM_LOG_FILE, vec![0; TPM_LOG_LEN as usize]);
        Self::run(&files.loader, &map)
    }

    /// `len` bytes at guest address `addr`, inside one loaded file.
    fn read(&self, addr: u64, len: usize) -> &[u8] {
        for (base, data) in self.blobs.values() {
            if addr >= *base && addr + len as u64 <= base + data.len() as u64 {
                let at = (addr - base) as usize;
                return &data[at..at + len];
            }
        }
        panic!("{addr:#x}+{len} is in no loaded file");
    }

    /// The table at `addr`, as long as its header says.
    fn table(&self, addr: u64) -> &[u8] {
        let len = u32_at(self.read(addr, 8), 4) as usize;
        self.read(addr, len)
    }

    fn rsdp(&self) -> &[u8] {
        let (base, data) = &self.blobs[RSDP_FILE];
        assert_eq!(*base % 16, 0);
        data
    }

    /// The tables a root table lists, by address.
    fn entries(&self, root: u64, width: usize) -> Vec<u64> {
        let t = self.table(root);
        t[36..].chunks(width).map(|c| le(c, 0, width)).collect()
    }

    /// The table with signature `sig` the XSDT lists.
    fn find(&self, sig: &[u8; 4]) -> &[u8] {
        let xsdt = u64_at(self.rsdp(), 24);
        self.entries(xsdt, 8)
            .into_iter()
            .map(|a| self.table(a))
            .find(|t| &t[..4] == sig)
            .unwrap_or_else(|| panic!("{:?} in the XSDT", String::from_utf8_lossy(sig)))
    }
}

#[test]
fn the_rsdp_reaches_every_table_through_rsdt_and_xsdt_with_good_checksums() {
    let mem = Loaded::of(&build(&seabios_q35()).unwrap());
    let rsdp = mem.rsdp();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(rsdp[15], 2, "ACPI 2.0 RSDP");
    assert_eq!(rsdp.len(), 36);
    assert_eq!(u32_at(rsdp, 20), 36, "length field");
    assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(sum(rsdp), 0, "extended checksum");
    let (rsdt, xsdt) = (u32_at(rsdp, 16), u64_at(rsdp, 24));
    assert_eq!(&mem.table(rsdt)[..4], b"RSDT");
    assert_eq!(&mem.table(xsdt)[..4], b"XSDT");
    let by_rsdt = mem.entries(rsdt, 4);
    assert_eq!(by_rsdt, mem.entries(xsdt, 8), "both list the same tables");
    let sigs: Vec<&[u8]> = by_rsdt.iter().map(|&a| &mem.table(a)[..4]).collect();
    assert_eq!(sigs, [b"FACP", b"APIC", b"MCFG"]);
    for addr in by_rsdt.iter().chain([&rsdt, &xsdt]) {
        let t = mem.table(*addr);
        assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(&t[..4]));
    }
    let fadt = mem.find(b"FACP");
    let dsdt = mem.table(u32_at(fadt, 40));
    assert_eq!(&dsdt[..4], b"DSDT");
    assert_eq!(sum(dsdt), 0, "DSDT checksum");
    let facs = mem.table(u32_at(fadt, 36));
    assert_eq!(&facs[..4], b"FACS");
    assert_eq!(facs.len(), 64);
}

#[test]
fn a_tpm_gets_a_tpm2_table_pointing_at_its_log_area_and_a_dsdt_device() {
    let p = Q35Platform {
        tpm: true,
        ..seabios_q35()
    };
    let mem = Loaded::of(&build(&p).unwrap());
    let xsdt = u64_at(mem.rsdp(), 24);
    let rsdt = u32_at(mem.rsdp(), 16);
    assert_eq!(mem.entries(xsdt, 8), mem.entries(rsdt, 4));
    let tpm2 = mem.find(b"TPM2");
    assert_eq!(tpm2.len(), 76);
    assert_eq!(tpm2[8], 4, "revision 4");
    assert_eq!(sum(tpm2), 0, "checksum after the pointer was patched");
    assert_eq!(u64_at(tpm2, 40), 0xfed4_0040, "CRB control area");
    assert_eq!(u32_at(tpm2, 48), 7, "start method: CRB");
    assert_eq!(u32_at(tpm2, 64), u64::from(TPM_LOG_LEN));
    let (log_at, log) = &mem.blobs[TPM_LOG_FILE];
    assert_eq!(
        u64_at(tpm2, 68),
        *log_at,
        "LASA: where the log was allocated"
    );
    assert_eq!(log.len(), TPM_LOG_LEN as usize);
    let dsdt = mem.table(u32_at(mem.find(b"FACP"), 40));
    assert!(dsdt.windows(8).any(|w| w == b"MSFT0101"));
    let plain = Loaded::of(&build(&seabios_q35()).unwrap());
    assert!(!plain.blobs.contains_key(TPM_LOG_FILE), "no TPM, no log");
}

#[test]
fn fadt_describes_the_ich9_pm_block_the_0xcf9_reset_and_both_pointer_forms() {
    let mem = Loaded::of(&build(&seabios_q35()).unwrap());
    let fadt = mem.find(b"FACP");
    assert_eq!(le(fadt, 46, 2), 9, "SCI_INT");
    assert_eq!(u32_at(fadt, 48), 0, "SMI_CMD: no SMM to hand over from");
    assert_eq!(u32_at(fadt, 56), 0x600, "PM1a_EVT_BLK at PMBASE");
    assert_eq!(u32_at(fadt, 64), 0x604, "PM1a_CNT_BLK");
    assert_eq!(u32_at(fadt, 76), 0x608, "PM_TMR_BLK");
    assert_eq!(u32_at(fadt, 80), 0x620, "GPE0_BLK (ICH9: PMBASE + 0x20)");
    assert_eq!((fadt[88], fadt[89], fadt[91], fadt[92]), (4, 2, 4, 0x10));
    assert_eq!(fadt[108], hospes_devices::legacy::rtc::REG_CENTURY);
    let flags = u32_at(fadt, 112);
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
    // RESET_REG: system I/O, 8 bits, port 0xcf9; RESET_VALUE 6.
    assert_eq!((fadt[116], fadt[117]), (1, 8));
    assert_eq!(u64_at(fadt, 120), 0xcf9);
    assert_eq!(fadt[128], 6);
    // X_PM1a_EVT_BLK, X_GPE0_BLK as generic addresses in I/O space.
    assert_eq!((fadt[148], u64_at(fadt, 152)), (1, 0x600));
    assert_eq!((fadt[220], fadt[221], u64_at(fadt, 224)), (1, 128, 0x620));
    let (facs, dsdt) = (u32_at(fadt, 36), u32_at(fadt, 40));
    assert_eq!(u64_at(fadt, 132), facs, "X_FIRMWARE_CTRL = FIRMWARE_CTRL");
    assert_eq!(u64_at(fadt, 140), dsdt, "X_DSDT = DSDT");
    assert_eq!(facs % 64, 0, "FACS 64-byte aligned");

    let moved = Q35Platform {
        pm_base: 0xb000,
        ..seabios_q35()
    };
    let mem = Loaded::of(&build(&moved).unwrap());
    let fadt = mem.find(b"FACP");
    assert_eq!(
        [56, 64, 76, 80].map(|at| u32_at(fadt, at)),
        [0xb000, 0xb004, 0xb008, 0xb020]
    );
}

#[test]
fn the_s5_sleep_type_is_the_one_the_pm_block_powers_off_on() {
    let files = build(&seabios_q35()).unwrap();
    let s5 = [
        b"_S5_".as_slice(),
        // Package, length 6, 4 elements: BytePrefix SLP_TYP twice, Zero, Zero.
        &[
            0x12,
            0x08,
            0x04,
            0x0a,
            layout::S5_SLP_TYP,
            0x0a,
            layout::S5_SLP_TYP,
            0,
            0,
        ],
    ]
    .concat();
    assert!(files.tables.windows(s5.len()).any(|w| w == s5));
}

#[test]
fn mcfg_and_the_bus_range_follow_the_ecam_window() {
    let mcfg_of = |ecam| {
        let p = Q35Platform {
            ecam,
            ..seabios_q35()
        };
        let mem = Loaded::of(&build(&p).unwrap());
        let m = mem.find(b"MCFG").to_vec();
        assert_eq!(m.len(), 44 + 16, "one entry");
        (u64_at(&m, 44), le(&m, 52, 2), m[54], m[55])
    };
    assert_eq!(
        mcfg_of(Some((0xb000_0000, 256 << 20))),
        (0xb000_0000, 0, 0, 255)
    );
    assert_eq!(
        mcfg_of(Some((0xe000_0000, 64 << 20))),
        (0xe000_0000, 0, 0, 63)
    );
    assert_eq!(
        mcfg_of(None),
        (0, 0, 0, 0),
        "nothing decoded: an empty entry"
    );
}

#[test]
fn sizes_do_not_depend_on_what_the_firmware_programmed() {
    let sizes = |p: Q35Platform| {
        let f = build(&p).unwrap();
        (f.rsdp.len(), f.tables.len(), f.loader.len())
    };
    let base = sizes(seabios_q35());
    for (ecam, pm_base) in [
        (None, 0x600),
        (Some((0x8000_0000, 256 << 20)), 0x600),
        (Some((0xe000_0000, 64 << 20)), 0xb000),
        (Some((0xeec0_0000, 256 << 20)), 0x600),
        (Some((0xb000_0000, 128 << 20)), 0xff80),
    ] {
        let p = Q35Platform {
            ecam,
            pm_base,
            ..seabios_q35()
        };
        assert_eq!(sizes(p), base, "{ecam:x?} {pm_base:#x}");
    }
}

#[test]
fn the_32_bit_window_leaves_the_ecam_window_out() {
    let w = (0x8000_0000, 0xfec0_0000);
    assert_eq!(
        window_parts(w, Some((0xb000_0000, 0x1000_0000))),
        [
            Some((0x8000_0000, 0xafff_ffff)),
            Some((0xc000_0000, 0xfebf_ffff))
        ]
    );
    assert_eq!(
        window_parts(w, Some((0x8000_0000, 0x1000_0000))),
        [None, Some((0x9000_0000, 0xfebf_ffff))]
    );
    assert_eq!(
        window_parts(w, Some((0xeec0_0000, 0x1000_0000))),
        [Some((0x8000_0000, 0xeebf_ffff)), None]
    );
    assert_eq!(
        window_parts(w, None),
        [Some((0x8000_0000, 0xfebf_ffff)), None]
    );
    assert_eq!(
        window_parts(w, Some((0x4000_0000, 0x1000_0000))),
        [Some((0x8000_0000, 0xfebf_ffff)), None],
        "a window outside is ignored"
    );
    assert_eq!(
        window_parts(w, Some((u64::MAX - 5, 0x1000))),
        [Some((0x8000_0000, 0xfebf_ffff)), None]
    );
    assert_eq!(
        window_parts((0x1_0000_0000, 0x2_0000_0000), None),
        [None, None]
    );
}

#[test]
fn pci_interrupts_follow_the_q35_swizzle_onto_gsi_16_to_23() {
    // Slots below 0x18 rotate over PIRQ E..H.
    assert_eq!(
        (0..4).map(|p| q35_pirq(0, p)).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert_eq!(
        (0..4).map(|p| q35_pirq(1, p)).collect::<Vec<_>>(),
        [5, 6, 7, 4]
    );
    assert_eq!(
        (0..4).map(|p| q35_pirq(0x17, p)).collect::<Vec<_>>(),
        [7, 4, 5, 6]
    );
    // 0x18 and 0x1e start at E, 0x19..0x1d and 0x1f at A (ICH9's D<n>IR defaults).
    assert_eq!(
        (0..4).map(|p| q35_pirq(0x18, p)).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert_eq!(
        (0..4).map(|p| q35_pirq(0x1e, p)).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    for slot in [0x19, 0x1c, 0x1d, 0x1f] {
        assert_eq!(
            (0..4).map(|p| q35_pirq(slot, p)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }
    assert_eq!(q35_intx_gsi(0, 0), 20);
    assert_eq!(q35_intx_gsi(0x1f, 3), 19);
    // Out-of-range input stays on a valid PIRQ.
    assert_eq!(q35_pirq(0xff, 9), 1);
    assert!((0..=255).all(|s| (0..8).all(|p| q35_pirq(s, p) < 8)));
}

#[test]
fn an_impossible_machine_is_an_error_and_the_generator_then_yields_nothing() {
    let none = Q35Platform {
        cpus: 0,
        ..seabios_q35()
    };
    assert_eq!(
        build(&none),
        Err(AcpiLoaderError::Tables(AcpiError::TooManyCpus(0)))
    );
    let ecam = Arc::new(EcamOverlay::new(none.window));
    assert!(generator(none, ecam)().is_empty());
}

/// The fw_cfg device as the firmware drives it: select a key, read the item byte by byte.
fn read_item(cfg: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
    cfg.write(FW_CFG_PORT_SEL, 0, &key.to_le_bytes());
    let mut out = vec![0u8; len];
    for b in &mut out {
        let mut one = [0u8];
        cfg.read(FW_CFG_PORT_SEL, 1, &mut one);
        *b = one[0];
    }
    out
}

/// The directory: name -> (key, size).
fn directory(cfg: &mut FwCfg) -> BTreeMap<String, (u16, usize)> {
    let count = u32::from_be_bytes(read_item(cfg, FW_CFG_FILE_DIR, 4).try_into().unwrap());
    let all = read_item(cfg, FW_CFG_FILE_DIR, 4 + 64 * count as usize);
    all[4..]
        .chunks(64)
        .map(|e| {
            let size = u32::from_be_bytes(e[..4].try_into().unwrap()) as usize;
            let key = u16::from_be_bytes([e[4], e[5]]);
            (name_at(e, 8), (key, size))
        })
        .collect()
}

#[test]
fn through_fw_cfg_the_tables_describe_the_ecam_window_programmed_after_the_directory_read() {
    let platform = Q35Platform {
        ecam: None,
        ..seabios_q35()
    };
    let ecam = Arc::new(EcamOverlay::new(platform.window));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let mut cfg = FwCfg::new(mem);
    cfg.add_lazy_files(&FILES, generator(platform, ecam.clone()))
        .unwrap();
    let cfg = Mutex::new(cfg);
    let mut cfg = cfg.lock().unwrap();

    // SeaBIOS reads the directory first, with PCIEXBAR still off...
    let dir = directory(&mut cfg);
    // ... then programs PCIEXBAR and runs the loader.
    assert!(ecam.set(Some((0xb000_0000, 0x1000_0000))));
    let mut files = BTreeMap::new();
    for name in FILES {
        let (key, size) = dir[name];
        assert!(size > 0, "{name} announced with its size");
        files.insert(name, read_item(&mut cfg, key, size));
    }
    let loader = files.remove(LOADER_FILE).unwrap();
    let mem = Loaded::run(&loader, &files);
    let m = mem.find(b"MCFG");
    assert_eq!(u64_at(m, 44), 0xb000_0000, "MCFG follows PCIEXBAR");
    assert_eq!(m[55], 255);
    let fresh = build(&Q35Platform {
        ecam: ecam.range(),
        ..platform
    })
    .unwrap();
    assert_eq!(files[TABLES_FILE], fresh.tables, "no padding: same size");

    // Moved again, the files stay as the firmware read them until reset.
    assert!(ecam.set(Some((0xe000_0000, 0x1000_0000))));
    let again = read_item(&mut cfg, dir[TABLES_FILE].0, dir[TABLES_FILE].1);
    assert_eq!(again, files[TABLES_FILE]);
    cfg.reset();
    let dir2 = directory(&mut cfg);
    let tables = read_item(&mut cfg, dir2[TABLES_FILE].0, dir2[TABLES_FILE].1);
    let rsdp = read_item(&mut cfg, dir2[RSDP_FILE].0, dir2[RSDP_FILE].1);
    let loader = read_item(&mut cfg, dir2[LOADER_FILE].0, dir2[LOADER_FILE].1);
    let mut next = BTreeMap::new();
    next.insert(RSDP_FILE, rsdp);
    next.insert(TABLES_FILE, tables);
    let mem = Loaded::run(&loader, &next);
    assert_eq!(
        u64_at(mem.find(b"MCFG"), 44),
        0xe000_0000,
        "next boot: regenerated"
    );
}

mod iasl {
    //! ACPICA's disassembler reads every table as the loader left it in memory.
    use super::*;

    /// Disassembles each table the XSDT reaches (and the DSDT), returning the DSL text
    /// by signature. Fails when iasl is missing: the test command installs it.
    fn disassemble(p: &Q35Platform) -> BTreeMap<String, String> {
        let mem = Loaded::of(&build(p).unwrap());
        let fadt = mem.find(b"FACP");
        let mut tables: Vec<&[u8]> = vec![mem.table(u32_at(fadt, 40))];
        let xsdt = u64_at(mem.rsdp(), 24);
        tables.extend(mem.entries(xsdt, 8).into_iter().map(|a| mem.table(a)));
        tables.push(mem.table(xsdt));
        tables.push(mem.table(u32_at(mem.rsdp(), 16)));
        let dir = tempfile::tempdir().unwrap();
        let mut out = BTreeMap::new();
        for t in tables {
            let sig = String::from_utf8_lossy(&t[..4]).to_string();
            let path = dir.path().join(format!("{sig}.dat"));
            std::fs::write(&path, t).unwrap();
            let run = Command::new("iasl")
                .arg("-d")
                .arg(&path)
                .current_dir(dir.path())
                .output()
                .expect("iasl (Debian package acpica-tools) is installed by the test command");
            let log = String::from_utf8_lossy(&run.stdout).to_string()
                + &String::from_utf8_lossy(&run.stderr);
            assert!(run.status.success(), "{sig}: {log}");
            for bad in ["Error", "Warning", "Invalid", "Mismatch"] {
                assert!(!log.contains(bad), "{sig}: {log}");
            }
            let dsl = std::fs::read_to_string(dir.path().join(format!("{sig}.dsl"))).unwrap();
            if std::env::var_os("HOSPES_ACPI_DUMP").is_some() {
                eprintln!("{dsl}");
            }
            out.insert(sig, dsl);
        }
        out
    }

    #[test]
    fn acpica_reads_every_table_without_complaint() {
        let dsl = disassemble(&seabios_q35());
        let sigs: Vec<&str> = dsl.keys().map(String::as_str).collect();
        assert_eq!(sigs, ["APIC", "DSDT", "FACP", "MCFG", "RSDT", "XSDT"]);
        for (sig, text) in &dsl {
            assert!(!text.contains("Incorrect checksum"), "{sig}: {text}");
        }
        let fadt = &dsl["FACP"];
        assert!(fadt.contains("Reset Register"), "{fadt}");
        assert!(fadt.contains("0000000000000CF9"), "{fadt}");
    }

    #[test]
    fn acpica_reads_the_tpm2_table_and_the_tpm_device() {
        let dsl = disassemble(&Q35Platform {
            tpm: true,
            ..seabios_q35()
        });
        let tpm2 = &dsl["TPM2"];
        assert!(tpm2.contains("00000000FED40040"), "{tpm2}");
        let dsdt = &dsl["DSDT"];
        assert!(dsdt.contains("\"MSFT0101\""), "{dsdt}");
        assert!(
            dsdt.contains("Memory32Fixed (ReadWrite,\n                0xFED40000,"),
            "{dsdt}"
        );
    }

    #[test]
    fn the_dsdt_holds_the_q35_root_bridge_the_pc_devices_and_the_gsi_links() {
        let dsl = disassemble(&seabios_q35()).remove("DSDT").unwrap();
        for hid in [
            "PNP0A08", "PNP0A03", "PNP0B00", "PNP0303", "PNP0F13", "PNP0501", "PNP0C0F", "PNP0C0C",
        ] {
            assert!(dsl.contains(&format!("EisaId (\"{hid}\")")), "{hid}: {dsl}");
        }
        for path in [
            "_SB.PCI0", "ISA", "RTC", "KBD", "MOU", "COM1", "_SB.GSIA", "_SB.GSIH",
        ] {
            assert!(dsl.contains(&format!("Device ({path})")), "{path}: {dsl}");
        }
        assert!(dsl.contains("Name (_S5, Package"), "{dsl}");
        assert!(dsl.contains("0x001F0000"), "the LPC bridge's _ADR: {dsl}");
        // The I/O ports and IRQs of the PC devices.
        for irq in [
            "IRQNoFlags ()\n                        {8}",
            "{1}",
            "{12}",
            "{4}",
        ] {
            assert!(dsl.contains(irq), "{irq}: {dsl}");
        }
    }

    /// The `DWordMemory` ranges of a `_CRS`, as `(min, max)` text pairs.
    fn dword_ranges(dsl: &str) -> Vec<(String, String)> {
        let lines: Vec<&str> = dsl.lines().collect();
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if l.contains("DWordMemory (") {
                // Granularity, Minimum, Maximum follow on the next lines.
                let field = |n: usize| lines[i + n].split(',').next().unwrap().trim().to_owned();
                out.push((field(2), field(3)));
            }
        }
        out
    }

    #[test]
    fn the_root_bridge_crs_gives_the_32_bit_window_less_the_ecam_and_the_64_bit_window() {
        let dsl = disassemble(&seabios_q35()).remove("DSDT").unwrap();
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            dword_ranges(&dsl),
            [
                pair("0x000A0000", "0x000BFFFF"),
                pair("0x80000000", "0xAFFFFFFF"),
                pair("0xC0000000", "0xFEBFFFFF"),
            ],
            "{dsl}"
        );
        assert!(
            dsl.contains("0x0000000100000000"),
            "64-bit window at 4 GiB: {dsl}"
        );
        assert!(
            dsl.contains("0x00FF,             // Range Maximum"),
            "buses: {dsl}"
        );

        let off = Q35Platform {
            ecam: None,
            ..seabios_q35()
        };
        let dsl = disassemble(&off).remove("DSDT").unwrap();
        assert_eq!(
            dword_ranges(&dsl),
            [
                pair("0x000A0000", "0x000BFFFF"),
                pair("0x80000000", "0xFEBFFFFF"),
            ],
            "{dsl}"
        );
        assert!(
            dsl.contains("VendorLong"),
            "the filler keeps the size: {dsl}"
        );
    }

    #[test]
    fn the_prt_routes_every_slot_and_pin_to_its_gsi_link() {
        let dsl = disassemble(&seabios_q35()).remove("DSDT").unwrap();
        // The entries as `address pin link source` token groups, in order.
        let start = dsl
            .find("Name (_PRT, Package (0x80)")
            .expect("_PRT with 128 entries");
        let tokens: Vec<&str> = dsl[start..]
            .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
            .filter(|t| t.starts_with("0x") || t.starts_with("GSI") || *t == "Zero" || *t == "One")
            .take(128 * 4)
            .collect();
        assert_eq!(tokens.len(), 512);
        for (i, e) in tokens.chunks(4).enumerate() {
            let (slot, pin) = ((i / 4) as u8, (i % 4) as u8);
            let address = u32::from_str_radix(e[0].trim_start_matches("0x"), 16).unwrap();
            assert_eq!(address, (u32::from(slot) << 16) | 0xffff, "{e:?}");
            let pin_text = match e[1] {
                "Zero" => 0,
                "One" => 1,
                t => u8::from_str_radix(t.trim_start_matches("0x"), 16).unwrap(),
            };
            assert_eq!(pin_text, pin, "{e:?}");
            assert_eq!(e[2], gsi_link_name(q35_pirq(slot, pin)), "{e:?}");
            assert!(e[3] == "Zero" || e[3] == "0x00", "{e:?}");
        }
    }
}
