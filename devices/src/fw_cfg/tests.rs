//! The fw_cfg device driven as SeaBIOS and OVMF drive it: through a port bus holding the
//! device at 0x510 and 0x514, and through 1 MiB of guest memory for DMA.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::bus::{Bus, lock};

const RAM: u64 = 1 << 20;
/// Where the tests put the FWCfgDmaAccess and the DMA buffer.
const ACCESS: u64 = 0x1000;
const BUF: u64 = 0x2000;

const CTL_ERROR: u32 = 0x01;
const CTL_READ: u32 = 0x02;
const CTL_SKIP: u32 = 0x04;
const CTL_SELECT: u32 = 0x08;
const CTL_WRITE: u32 = 0x10;

struct Guest {
    io: Bus,
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<FwCfg>>,
}

impl Guest {
    /// A machine with `setup` applied to its fw_cfg, placed as the helper places it.
    fn new(setup: impl FnOnce(&mut FwCfg)) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let mut fw = FwCfg::new(mem.clone());
        setup(&mut fw);
        let dev = Arc::new(Mutex::new(fw));
        let mut io = Bus::new();
        io.insert(dev.clone(), FW_CFG_PORT_SEL, FW_CFG_PORT_SEL_LEN)
            .unwrap();
        io.insert(dev.clone(), FW_CFG_PORT_DMA, FW_CFG_PORT_DMA_LEN)
            .unwrap();
        Self { io, mem, dev }
    }

    fn select(&self, key: u16) {
        assert!(self.io.write(FW_CFG_PORT_SEL, &key.to_le_bytes()));
    }

    /// `insb` from the data port.
    fn read_port(&self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0xaa];
                assert!(self.io.read(FW_CFG_PORT_SEL + 1, &mut b));
                b[0]
            })
            .collect()
    }

    /// Writes an access structure at `at` and triggers it as SeaBIOS does (one 32-bit
    /// write of the big-endian address to the low half); returns the control word after.
    fn dma_at(&self, at: u64, control: u32, length: u32, address: u64) -> u32 {
        let mut s = [0u8; 16];
        s[0..4].copy_from_slice(&control.to_be_bytes());
        s[4..8].copy_from_slice(&length.to_be_bytes());
        s[8..16].copy_from_slice(&address.to_be_bytes());
        self.mem.write_slice(&s, GuestAddress(at)).unwrap();
        assert!(
            self.io
                .write(FW_CFG_PORT_DMA + 4, &(at as u32).to_be_bytes())
        );
        self.control_at(at)
    }

    fn dma(&self, control: u32, length: u32, address: u64) -> u32 {
        self.dma_at(ACCESS, control, length, address)
    }

    fn control_at(&self, at: u64) -> u32 {
        let mut c = [0u8; 4];
        self.mem.read_slice(&mut c, GuestAddress(at)).unwrap();
        u32::from_be_bytes(c)
    }

    fn mem_at(&self, at: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    fn fill(&self, at: u64, n: usize, byte: u8) {
        self.mem
            .write_slice(&vec![byte; n], GuestAddress(at))
            .unwrap();
    }

    /// The directory as SeaBIOS' `qemu_cfg_init` reads it: a BE32 count, then 64-byte
    /// entries read one after the other. Returns (name, select, size).
    fn directory(&self) -> Vec<(String, u16, u32)> {
        self.select(FW_CFG_FILE_DIR);
        let count = u32::from_be_bytes(self.read_port(4).try_into().unwrap());
        (0..count)
            .map(|_| {
                let e = self.read_port(64);
                let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
                let select = u16::from_be_bytes(e[4..6].try_into().unwrap());
                assert_eq!(&e[6..8], &[0, 0], "reserved");
                let name = &e[8..64];
                let end = name.iter().position(|&c| c == 0).expect("NUL-terminated");
                (
                    String::from_utf8(name[..end].to_vec()).unwrap(),
                    select,
                    size,
                )
            })
            .collect()
    }

    fn key_of(&self, name: &str) -> u16 {
        self.directory()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, k, _)| k)
            .unwrap()
    }
}

#[test]
fn reads_signature_through_the_selector_port() {
    let g = Guest::new(|_| {});
    g.select(FW_CFG_SIGNATURE);
    assert_eq!(g.read_port(4), b"QEMU");
    assert_eq!(g.read_port(2), [0, 0], "zeros past the end");
}

#[test]
fn id_announces_the_traditional_and_dma_interfaces() {
    let g = Guest::new(|_| {});
    g.select(FW_CFG_ID);
    assert_eq!(u32::from_le_bytes(g.read_port(4).try_into().unwrap()), 0b11);
}

#[test]
fn dma_register_reads_back_the_qemu_cfg_signature() {
    let g = Guest::new(|_| {});
    let mut b = [0u8; 8];
    assert!(g.io.read(FW_CFG_PORT_DMA, &mut b));
    assert_eq!(&b, b"QEMU CFG");
    let mut hi = [0u8; 4];
    g.io.read(FW_CFG_PORT_DMA, &mut hi);
    assert_eq!(u32::from_be_bytes(hi), 0x5145_4d55);
    let mut lo = [0u8; 4];
    g.io.read(FW_CFG_PORT_DMA + 4, &mut lo);
    assert_eq!(u32::from_be_bytes(lo), 0x2043_4647);
}

#[test]
fn wide_data_reads_take_successive_bytes() {
    let g = Guest::new(|_| {});
    g.select(FW_CFG_SIGNATURE);
    let mut w = [0u8; 2];
    g.io.read(FW_CFG_PORT_SEL, &mut w);
    assert_eq!(&w, b"QE");
    let mut b = [0u8; 1];
    g.io.read(FW_CFG_PORT_SEL + 1, &mut b);
    assert_eq!(&b, b"M");
}

#[test]
fn numbered_items_hold_what_the_setters_set() {
    let g = Guest::new(|fw| {
        fw.set_nb_cpus(4);
        fw.set_max_cpus(288);
        fw.set_ram_size(0x1_2345_6789);
        fw.set_boot_menu(true);
        fw.add_item(0x8003, vec![1, 2, 3]).unwrap();
    });
    g.select(FW_CFG_NB_CPUS);
    assert_eq!(g.read_port(3), [4, 0, 0]);
    g.select(FW_CFG_MAX_CPUS);
    assert_eq!(g.read_port(2), 288u16.to_le_bytes());
    g.select(FW_CFG_RAM_SIZE);
    assert_eq!(g.read_port(8), 0x1_2345_6789u64.to_le_bytes());
    g.select(FW_CFG_BOOT_MENU);
    assert_eq!(g.read_port(2), [1, 0]);
    g.select(0x8003);
    assert_eq!(g.read_port(4), [1, 2, 3, 0]);
}

#[test]
fn unknown_keys_read_zeros_and_the_write_channel_bit_is_ignored() {
    let g = Guest::new(|_| {});
    g.select(0x1234);
    assert_eq!(g.read_port(2), [0, 0]);
    g.select(0x4000 | FW_CFG_SIGNATURE);
    assert_eq!(g.read_port(4), b"QEMU");
}

#[test]
fn directory_lists_files_by_name_with_keys_from_0x20() {
    let g = Guest::new(|fw| {
        fw.add_file("etc/e820", vec![0; 40]).unwrap();
        fw.add_file("bootorder", b"/rom@x\0".to_vec()).unwrap();
        fw.add_file("etc/boot-menu-wait", vec![0; 2]).unwrap();
    });
    assert_eq!(
        g.directory(),
        [
            ("bootorder".to_owned(), 0x20, 7),
            ("etc/boot-menu-wait".to_owned(), 0x21, 2),
            ("etc/e820".to_owned(), 0x22, 40),
        ]
    );
    // The directory is 4 + 3 * 64 bytes: nothing after the last entry.
    g.select(FW_CFG_FILE_DIR);
    let all = g.read_port(4 + 3 * 64 + 4);
    assert_eq!(&all[196..], &[0, 0, 0, 0]);
}

#[test]
fn directory_reads_by_dma_the_way_seabios_does() {
    let g = Guest::new(|fw| {
        fw.add_file("etc/e820", vec![0; 40]).unwrap();
    });
    // qemu_cfg_read_entry(&count, FILE_DIR, 4), then qemu_cfg_read(&entry, 64).
    let ctl = (u32::from(FW_CFG_FILE_DIR) << 16) | CTL_SELECT | CTL_READ;
    assert_eq!(g.dma(ctl, 4, BUF), 0);
    assert_eq!(g.mem_at(BUF, 4), 1u32.to_be_bytes());
    assert_eq!(g.dma(CTL_READ, 64, BUF), 0);
    let e = g.mem_at(BUF, 64);
    assert_eq!(&e[0..4], &40u32.to_be_bytes());
    assert_eq!(&e[4..6], &0x20u16.to_be_bytes());
    assert_eq!(&e[8..17], b"etc/e820\0");
}

#[test]
fn reads_a_file_by_selector_through_the_data_port() {
    let g = Guest::new(|fw| fw.add_file("opt/x", b"hello".to_vec()).unwrap());
    g.select(g.key_of("opt/x"));
    assert_eq!(g.read_port(7), b"hello\0\0");
}

#[test]
fn dma_select_and_read_copies_a_file_into_guest_memory() {
    let g = Guest::new(|fw| fw.add_file("opt/x", (0..=255).collect()).unwrap());
    let key = g.key_of("opt/x");
    g.fill(BUF, 300, 0xee);
    let ctl = (u32::from(key) << 16) | CTL_SELECT | CTL_READ;
    assert_eq!(g.dma(ctl, 100, BUF), 0);
    assert_eq!(g.mem_at(BUF, 100), (0..100).collect::<Vec<u8>>());
    assert_eq!(g.mem_at(BUF + 100, 1), [0xee], "nothing past the length");
    // The offset moved on: a plain read continues, and the data port agrees.
    assert_eq!(g.dma(CTL_READ, 2, BUF), 0);
    assert_eq!(g.mem_at(BUF, 2), [100, 101]);
    assert_eq!(g.read_port(1), [102]);
}

#[test]
fn dma_read_past_the_end_of_an_item_fills_zeros() {
    let g = Guest::new(|fw| fw.add_file("opt/x", vec![7; 10]).unwrap());
    let key = g.key_of("opt/x");
    g.fill(BUF, 9001, 0xee);
    let ctl = (u32::from(key) << 16) | CTL_SELECT | CTL_READ;
    assert_eq!(g.dma(ctl, 9000, BUF), 0);
    let got = g.mem_at(BUF, 9001);
    assert_eq!(&got[..10], &[7; 10]);
    assert!(got[10..9000].iter().all(|&b| b == 0));
    assert_eq!(got[9000], 0xee);
}

#[test]
fn dma_skip_advances_the_offset_but_not_past_the_end() {
    let g = Guest::new(|fw| fw.add_file("opt/x", (0..20).collect()).unwrap());
    let key = g.key_of("opt/x");
    // qemu_cfg_select, qemu_cfg_skip(5) with a null buffer, qemu_cfg_read.
    g.select(key);
    assert_eq!(g.dma(CTL_SKIP, 5, 0), 0);
    assert_eq!(g.dma(CTL_READ, 2, BUF), 0);
    assert_eq!(g.mem_at(BUF, 2), [5, 6]);
    assert_eq!(g.dma(CTL_SKIP, u32::MAX, 0), 0);
    assert_eq!(g.read_port(1), [0]);
}

#[test]
fn a_64_bit_address_is_written_in_two_halves_and_the_low_half_triggers() {
    let g = Guest::new(|_| {});
    let mut s = [0u8; 16];
    s[0..4].copy_from_slice(
        &((u32::from(FW_CFG_SIGNATURE) << 16) | CTL_SELECT | CTL_READ).to_be_bytes(),
    );
    s[4..8].copy_from_slice(&4u32.to_be_bytes());
    s[8..16].copy_from_slice(&BUF.to_be_bytes());
    g.mem.write_slice(&s, GuestAddress(ACCESS)).unwrap();
    // OVMF: IoWrite32(0x514, SwapBytes32(high)); IoWrite32(0x518, SwapBytes32(low)).
    g.io.write(FW_CFG_PORT_DMA, &0u32.to_be_bytes());
    assert_eq!(
        g.control_at(ACCESS) >> 16,
        0,
        "the high half alone starts nothing"
    );
    g.io.write(FW_CFG_PORT_DMA + 4, &(ACCESS as u32).to_be_bytes());
    assert_eq!(g.control_at(ACCESS), 0);
    assert_eq!(g.mem_at(BUF, 4), b"QEMU");
    // One 64-bit write does the same.
    g.mem.write_slice(&s, GuestAddress(ACCESS)).unwrap();
    g.fill(BUF, 4, 0);
    g.io.write(FW_CFG_PORT_DMA, &ACCESS.to_be_bytes());
    assert_eq!(g.control_at(ACCESS), 0);
    assert_eq!(g.mem_at(BUF, 4), b"QEMU");
}

#[test]
fn a_high_half_pointing_above_ram_makes_the_access_fail_quietly() {
    let g = Guest::new(|_| {});
    let ctl = (u32::from(FW_CFG_SIGNATURE) << 16) | CTL_SELECT | CTL_READ;
    g.dma(ctl, 4, BUF);
    g.fill(BUF, 4, 0);
    g.mem
        .write_slice(&ctl.to_be_bytes(), GuestAddress(ACCESS))
        .unwrap();
    g.io.write(FW_CFG_PORT_DMA, &1u32.to_be_bytes());
    g.io.write(FW_CFG_PORT_DMA + 4, &(ACCESS as u32).to_be_bytes());
    assert_eq!(g.control_at(ACCESS), ctl, "1:0x1000 is not this structure");
    assert_eq!(g.mem_at(BUF, 4), [0; 4]);
}

#[test]
fn dma_write_updates_a_writable_file() {
    let g = Guest::new(|fw| {
        fw.add_file_writable("etc/vmgenid_addr", vec![0; 8])
            .unwrap()
    });
    let key = g.key_of("etc/vmgenid_addr");
    // qemu_cfg_write_file_simple(src, key, offset 2, len 4): select, skip, write.
    g.mem.write_slice(&[1, 2, 3, 4], GuestAddress(BUF)).unwrap();
    g.select(key);
    assert_eq!(g.dma(CTL_SKIP, 2, 0), 0);
    assert_eq!(g.dma(CTL_WRITE, 4, BUF), 0);
    assert_eq!(
        lock(&g.dev).file_data("etc/vmgenid_addr").unwrap(),
        [0, 0, 1, 2, 3, 4, 0, 0]
    );
    // And with select in the access.
    g.mem.write_slice(&[9; 8], GuestAddress(BUF)).unwrap();
    assert_eq!(
        g.dma((u32::from(key) << 16) | CTL_SELECT | CTL_WRITE, 8, BUF),
        0
    );
    g.select(key);
    assert_eq!(g.read_port(8), [9; 8]);
}

#[test]
fn dma_write_to_a_read_only_item_is_refused() {
    let g = Guest::new(|fw| fw.add_file("etc/e820", vec![5; 8]).unwrap());
    let key = g.key_of("etc/e820");
    g.fill(BUF, 8, 1);
    let got = g.dma((u32::from(key) << 16) | CTL_SELECT | CTL_WRITE, 8, BUF);
    assert_eq!(got, CTL_ERROR);
    assert_eq!(lock(&g.dev).file_data("etc/e820").unwrap(), [5; 8]);
    let sig = (u32::from(FW_CFG_SIGNATURE) << 16) | CTL_SELECT | CTL_WRITE;
    assert_eq!(g.dma(sig, 4, BUF), CTL_ERROR);
    g.select(FW_CFG_SIGNATURE);
    assert_eq!(g.read_port(4), b"QEMU");
}

#[test]
fn dma_write_running_past_the_end_is_dropped_whole() {
    let g = Guest::new(|fw| fw.add_file_writable("opt/w", vec![0; 8]).unwrap());
    let key = g.key_of("opt/w");
    g.fill(BUF, 16, 1);
    g.select(key);
    assert_eq!(g.dma(CTL_SKIP, 4, 0), 0);
    assert_eq!(g.dma(CTL_WRITE, 5, BUF), CTL_ERROR);
    assert_eq!(lock(&g.dev).file_data("opt/w").unwrap(), [0; 8]);
}

#[test]
fn data_port_writes_reach_only_writable_files() {
    let g = Guest::new(|fw| {
        fw.add_file_writable("opt/w", vec![0; 2]).unwrap();
        fw.add_file("opt/r", vec![0; 2]).unwrap();
    });
    g.select(g.key_of("opt/w"));
    for b in [0xa, 0xb, 0xc] {
        g.io.write(FW_CFG_PORT_SEL + 1, &[b]);
    }
    assert_eq!(
        lock(&g.dev).file_data("opt/w").unwrap(),
        [0xa, 0xb],
        "not resized"
    );
    g.select(g.key_of("opt/r"));
    g.io.write(FW_CFG_PORT_SEL + 1, &[0xa]);
    assert_eq!(lock(&g.dev).file_data("opt/r").unwrap(), [0, 0]);
}

#[test]
fn dma_access_structure_outside_guest_memory_changes_nothing() {
    let g = Guest::new(|fw| fw.add_file("opt/x", vec![3; 4]).unwrap());
    let key = g.key_of("opt/x");
    g.select(key);
    // Wholly outside: nothing to read, nowhere to report, and the device state stays.
    g.io.write(FW_CFG_PORT_DMA, &(RAM + 0x1000).to_be_bytes());
    assert_eq!(g.read_port(1), [3]);
    // Straddling the end: the control word is RAM, the rest is not. Error, nothing else.
    let at = RAM - 8;
    let ctl = (u32::from(FW_CFG_SIGNATURE) << 16) | CTL_SELECT | CTL_READ;
    g.mem
        .write_slice(&ctl.to_be_bytes(), GuestAddress(at))
        .unwrap();
    g.mem.write_slice(&[0x55; 4], GuestAddress(at + 4)).unwrap();
    g.io.write(FW_CFG_PORT_DMA + 4, &(at as u32).to_be_bytes());
    assert_eq!(g.control_at(at), CTL_ERROR);
    assert_eq!(g.mem_at(at + 4, 4), [0x55; 4]);
    assert_eq!(g.read_port(1), [3], "no select happened");
}

#[test]
fn dma_buffer_outside_guest_memory_sets_error_and_writes_nothing() {
    let g = Guest::new(|fw| fw.add_file("opt/x", vec![3; 64]).unwrap());
    let key = g.key_of("opt/x");
    let ctl = (u32::from(key) << 16) | CTL_SELECT | CTL_READ;
    g.fill(RAM - 16, 16, 0xee);
    assert_eq!(g.dma(ctl, 32, RAM - 16), CTL_ERROR);
    assert_eq!(g.mem_at(RAM - 16, 16), [0xee; 16]);
    assert_eq!(g.dma(ctl, 16, u64::MAX - 4), CTL_ERROR, "address wraps");
    assert_eq!(
        g.dma(ctl, u32::MAX, BUF),
        CTL_ERROR,
        "4 GiB in 1 MiB of RAM"
    );
    assert_eq!(g.mem_at(BUF, 4), [0; 4]);
    // A write from outside RAM into a writable file leaves the file alone.
    let g = Guest::new(|fw| fw.add_file_writable("opt/w", vec![0; 32]).unwrap());
    let key = g.key_of("opt/w");
    let ctl = (u32::from(key) << 16) | CTL_SELECT | CTL_WRITE;
    assert_eq!(g.dma(ctl, 32, RAM - 16), CTL_ERROR);
    assert_eq!(lock(&g.dev).file_data("opt/w").unwrap(), [0; 32]);
}

#[test]
fn dma_with_unknown_control_bits_is_refused() {
    let g = Guest::new(|fw| fw.add_file("opt/x", vec![3; 4]).unwrap());
    let key = g.key_of("opt/x");
    g.select(FW_CFG_SIGNATURE);
    let ctl = (u32::from(key) << 16) | CTL_SELECT | CTL_READ | 0x20;
    assert_eq!(g.dma(ctl, 4, BUF), CTL_ERROR);
    assert_eq!(g.mem_at(BUF, 4), [0; 4]);
    assert_eq!(g.read_port(1), b"Q", "the select was not done either");
    assert_eq!(g.dma(CTL_READ | CTL_WRITE, 4, BUF), CTL_ERROR);
    // Select alone is an operation: it succeeds.
    assert_eq!(g.dma((u32::from(key) << 16) | CTL_SELECT, 0, 0), 0);
    assert_eq!(g.read_port(1), [3]);
}

#[test]
fn odd_register_accesses_are_ignored() {
    let g = Guest::new(|_| {});
    g.select(FW_CFG_SIGNATURE);
    // A 16-bit write to the DMA register starts nothing; a 4-byte write to the pair is
    // not a selector write.
    g.mem
        .write_slice(&0x0000_0002u32.to_be_bytes(), GuestAddress(0))
        .unwrap();
    g.io.write(FW_CFG_PORT_DMA + 6, &[0, 0]);
    assert_eq!(g.control_at(0), 2);
    assert!(
        !g.io.write(FW_CFG_PORT_SEL, &[1, 0, 0, 0]),
        "wider than the range"
    );
    assert_eq!(g.read_port(4), b"QEMU");
}

/// A generator counting its runs, returning `[run; len]` for each name.
fn counting(lens: Vec<usize>) -> (Arc<AtomicUsize>, LazyGenerator) {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let generator = Box::new(move || {
        let n = r.fetch_add(1, Ordering::SeqCst) + 1;
        lens.iter().map(|&l| vec![n as u8; l]).collect()
    });
    (runs, generator)
}

#[test]
fn lazy_files_are_generated_on_first_directory_select() {
    let (runs, generator) = counting(vec![100, 36]);
    let g = Guest::new(|fw| {
        fw.add_lazy_files(&["etc/acpi/tables", "etc/acpi/rsdp"], generator)
            .unwrap();
        fw.add_file("etc/e820", vec![0; 20]).unwrap();
    });
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "nothing before the guest asks"
    );
    g.select(FW_CFG_SIGNATURE);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let dir = g.directory();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        dir,
        [
            ("etc/acpi/rsdp".to_owned(), 0x20, 36),
            ("etc/acpi/tables".to_owned(), 0x21, 100),
            ("etc/e820".to_owned(), 0x22, 20),
        ]
    );
    g.directory();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "reading it again runs nothing"
    );
}

#[test]
fn lazy_files_are_built_again_when_first_read_and_keep_their_announced_size() {
    // Second run returns shorter blobs: the firmware trusts the directory, so the device
    // pads them to the announced size.
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let generator: LazyGenerator = Box::new(move || {
        let n = r.fetch_add(1, Ordering::SeqCst) + 1;
        vec![vec![n as u8; 12 - n]]
    });
    let g = Guest::new(|fw| fw.add_lazy_files(&["etc/table-loader"], generator).unwrap());
    let dir = g.directory();
    assert_eq!(dir, [("etc/table-loader".to_owned(), 0x20, 11)]);
    let ctl = (0x20u32 << 16) | CTL_SELECT | CTL_READ;
    assert_eq!(g.dma(ctl, 11, BUF), 0);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(g.mem_at(BUF, 11), [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0]);
    // Later selects and directory reads keep this content.
    assert_eq!(g.dma(ctl, 11, BUF), 0);
    g.directory();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[test]
fn a_lazy_file_selected_without_the_directory_is_built_once() {
    let (runs, generator) = counting(vec![4]);
    let g = Guest::new(|fw| fw.add_lazy_files(&["opt/lazy"], generator).unwrap());
    g.select(0x20);
    assert_eq!(g.read_port(4), [1; 4]);
    g.select(0x20);
    g.directory();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn lazy_generation_runs_again_after_reset() {
    let (runs, generator) = counting(vec![4]);
    let g = Guest::new(|fw| fw.add_lazy_files(&["opt/lazy"], generator).unwrap());
    g.select(0x20);
    assert_eq!(g.read_port(4), [1; 4]);
    lock(&g.dev).reset();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "reset itself generates nothing"
    );
    g.select(0x20);
    assert_eq!(g.read_port(4), [2; 4]);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[test]
fn a_generator_returning_too_few_blobs_leaves_the_rest_empty() {
    let g = Guest::new(|fw| {
        let generator: LazyGenerator = Box::new(|| vec![vec![1, 2]]);
        fw.add_lazy_files(&["opt/a", "opt/b"], generator).unwrap();
    });
    assert_eq!(
        g.directory(),
        [("opt/a".to_owned(), 0x20, 2), ("opt/b".to_owned(), 0x21, 0)]
    );
}

#[test]
fn reset_selects_the_signature_and_restores_writable_files() {
    let g = Guest::new(|fw| fw.add_file_writable("opt/w", vec![0; 4]).unwrap());
    let key = g.key_of("opt/w");
    g.mem.write_slice(&[7; 4], GuestAddress(BUF)).unwrap();
    assert_eq!(
        g.dma((u32::from(key) << 16) | CTL_SELECT | CTL_WRITE, 4, BUF),
        0
    );
    g.select(key);
    g.read_port(1);
    lock(&g.dev).reset();
    assert_eq!(lock(&g.dev).file_data("opt/w").unwrap(), [0; 4]);
    assert_eq!(g.read_port(4), b"QEMU");
}

#[test]
fn add_file_refuses_bad_names_duplicates_and_too_many_files() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let mut fw = FwCfg::new(mem);
    let long = "n".repeat(56);
    assert_eq!(
        fw.add_file(&long, vec![]),
        Err(FwCfgError::BadName(long.clone()))
    );
    assert!(fw.add_file(&"n".repeat(55), vec![]).is_ok());
    assert!(matches!(
        fw.add_file("", vec![]),
        Err(FwCfgError::BadName(_))
    ));
    assert!(matches!(
        fw.add_file("a\0b", vec![]),
        Err(FwCfgError::BadName(_))
    ));
    fw.add_file("etc/e820", vec![]).unwrap();
    assert_eq!(
        fw.add_file_writable("etc/e820", vec![1]),
        Err(FwCfgError::DuplicateFile("etc/e820".to_owned()))
    );
    let generator: LazyGenerator = Box::new(Vec::new);
    assert_eq!(
        fw.add_lazy_files(&["opt/new", "etc/e820"], generator),
        Err(FwCfgError::DuplicateFile("etc/e820".to_owned()))
    );
    assert_eq!(
        fw.file_data("opt/new"),
        None,
        "nothing of a refused group is added"
    );
    let generator: LazyGenerator = Box::new(Vec::new);
    assert!(matches!(
        fw.add_lazy_files(&["opt/same", "opt/same"], generator),
        Err(FwCfgError::DuplicateFile(_))
    ));
    for i in fw.files.len()..FW_CFG_MAX_FILES {
        fw.add_file(&format!("f{i:05}"), vec![]).unwrap();
    }
    assert_eq!(
        fw.add_file("one/more", vec![]),
        Err(FwCfgError::TooManyFiles)
    );
    let generator: LazyGenerator = Box::new(Vec::new);
    assert_eq!(
        fw.add_lazy_files(&["lazy/more"], generator),
        Err(FwCfgError::TooManyFiles)
    );
}

#[test]
fn add_item_refuses_keys_of_the_device_and_its_files() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let mut fw = FwCfg::new(mem);
    for key in [
        FW_CFG_SIGNATURE,
        FW_CFG_ID,
        FW_CFG_FILE_DIR,
        0x20,
        0x3fff,
        0x4005,
    ] {
        assert_eq!(fw.add_item(key, vec![1]), Err(FwCfgError::ReservedKey(key)));
    }
    assert!(fw.add_item(FW_CFG_NOGRAPHIC, vec![1, 0]).is_ok());
    assert!(
        fw.add_item(0x8020, vec![1]).is_ok(),
        "architecture keys are not files"
    );
}

#[test]
fn smi_features_negotiate_the_way_ovmf_does() {
    use crate::chipset::smi::{SMI_F_BROADCAST, SmiFeatures};
    let features = Arc::new(SmiFeatures::new(SMI_F_BROADCAST));
    let f = features.clone();
    let g = Guest::new(move |fw| f.add_to(fw).unwrap());
    // OVMF's NegotiateSmiFeatures: read supported, write requested, select features-ok.
    let supported = g.key_of("etc/smi/supported-features");
    let requested = g.key_of("etc/smi/requested-features");
    let ok = g.key_of("etc/smi/features-ok");
    g.select(supported);
    assert_eq!(g.read_port(8), SMI_F_BROADCAST.to_le_bytes());
    // A request beyond what is offered: features-ok reads 0, nothing in force.
    g.mem
        .write_slice(&0b11u64.to_le_bytes(), GuestAddress(BUF))
        .unwrap();
    let write = (u32::from(requested) << 16) | CTL_SELECT | CTL_WRITE;
    assert_eq!(g.dma(write, 8, BUF), 0);
    g.select(ok);
    assert_eq!(g.read_port(1), [0]);
    assert!(!features.broadcast());
    // Broadcast alone: accepted.
    g.mem
        .write_slice(&SMI_F_BROADCAST.to_le_bytes(), GuestAddress(BUF))
        .unwrap();
    assert_eq!(g.dma(write, 8, BUF), 0);
    g.select(ok);
    assert_eq!(g.read_port(1), [1]);
    assert!(features.broadcast());
    assert_eq!(
        g.dev.lock().unwrap().file_data("etc/smi/features-ok"),
        Some(&[1u8][..])
    );
}

/// The same machine as `setup` builds, fresh, with `from`'s saved state restored.
fn restored(from: &Guest, setup: impl FnOnce(&mut FwCfg)) -> Guest {
    use crate::state::Snapshot;
    let saved = lock(&from.dev).save_state().unwrap();
    let g = Guest::new(setup);
    lock(&g.dev).restore_state(&saved).unwrap();
    g
}

fn saved_state_machine(fw: &mut FwCfg) {
    fw.add_file("etc/e820", (0..40).collect()).unwrap();
    fw.add_file_writable("etc/vmgenid_addr", vec![0; 8])
        .unwrap();
    let (_, generator) = counting(vec![30]);
    fw.add_lazy_files(&["etc/acpi/tables"], generator).unwrap();
}

#[test]
fn a_half_read_file_goes_on_at_the_next_byte_after_restore() {
    let g = Guest::new(saved_state_machine);
    let key = g.key_of("etc/e820");
    g.select(key);
    assert_eq!(g.read_port(13), (0..13).collect::<Vec<u8>>());
    let r = restored(&g, saved_state_machine);
    assert_eq!(r.read_port(5), [13, 14, 15, 16, 17]);
    assert_eq!(
        g.read_port(5),
        [13, 14, 15, 16, 17],
        "the same as the original"
    );
}

#[test]
fn written_files_generated_tables_and_a_pending_dma_high_half_survive_restore() {
    let g = Guest::new(saved_state_machine);
    // The guest writes the writable file and reads the generated one for good (run 2).
    let key = g.key_of("etc/vmgenid_addr");
    g.mem.write_slice(&[7; 8], GuestAddress(BUF)).unwrap();
    assert_eq!(
        g.dma((u32::from(key) << 16) | CTL_SELECT | CTL_WRITE, 8, BUF),
        0
    );
    let tables = g.key_of("etc/acpi/tables");
    assert_eq!(
        g.dma((u32::from(tables) << 16) | CTL_SELECT | CTL_READ, 30, BUF),
        0
    );
    assert_eq!(g.mem_at(BUF, 30), [2; 30]);
    // OVMF wrote the high half of a DMA address, then the VM was saved.
    g.io.write(FW_CFG_PORT_DMA, &0u32.to_be_bytes());

    let r = restored(&g, saved_state_machine);
    assert_eq!(lock(&r.dev).file_data("etc/vmgenid_addr").unwrap(), [7; 8]);
    // The tables are the ones the guest read, not a new run of the generator (which
    // would give 1s in the fresh machine).
    r.fill(BUF, 30, 0);
    let ctl = (u32::from(FW_CFG_SIGNATURE) << 16) | CTL_SELECT | CTL_READ;
    let mut s = [0u8; 16];
    s[0..4].copy_from_slice(&ctl.to_be_bytes());
    s[4..8].copy_from_slice(&4u32.to_be_bytes());
    s[8..16].copy_from_slice(&BUF.to_be_bytes());
    r.mem.write_slice(&s, GuestAddress(ACCESS)).unwrap();
    r.io.write(FW_CFG_PORT_DMA + 4, &(ACCESS as u32).to_be_bytes());
    assert_eq!(
        r.control_at(ACCESS),
        0,
        "the saved high half (0) completes it"
    );
    assert_eq!(r.mem_at(BUF, 4), b"QEMU");
    assert_eq!(
        r.dma((u32::from(tables) << 16) | CTL_SELECT | CTL_READ, 30, BUF),
        0
    );
    assert_eq!(r.mem_at(BUF, 30), [2; 30]);
}

#[test]
fn garbage_or_foreign_fw_cfg_state_is_refused_and_the_device_goes_on() {
    use crate::state::Snapshot;
    let g = Guest::new(saved_state_machine);
    g.select(g.key_of("etc/e820"));
    g.read_port(3);
    let saved = lock(&g.dev).save_state().unwrap();
    let fresh = Guest::new(saved_state_machine);
    let key = fresh.key_of("etc/e820");
    fresh.select(key);
    fresh.read_port(1);
    assert!(
        lock(&fresh.dev)
            .restore_state(&saved[..saved.len() - 1])
            .is_err()
    );
    assert!(lock(&fresh.dev).restore_state(&[0xff; 7]).is_err());
    // A machine without the writable file does not take the state.
    let other = Guest::new(|fw| fw.add_file("etc/e820", (0..40).collect()).unwrap());
    assert!(lock(&other.dev).restore_state(&saved).is_err());
    // The failed restores changed nothing: the cursor is where the guest left it.
    assert_eq!(fresh.read_port(2), [1, 2]);
}
