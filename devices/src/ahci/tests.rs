//! A mock AHCI driver: it programs the HBA through the ABAR, builds command lists, tables
//! and PRDTs in a small guest RAM and reads the answers back, as a guest driver would.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::port::*;
use super::*;
use crate::legacy::testing::RecordingIrq;
use crate::pci::config::{REG_BAR0, REG_CLASS_REVISION, REG_COMMAND_STATUS, REG_ID};

const MEM_SIZE: usize = 4 << 20;
const ABAR: u64 = 0xfebf_0000;
/// Per-port structures: command list, received FIS, command table.
const LISTS: u64 = 0x1_0000;
const TABLES: u64 = 0x4_0000;
/// Data buffers.
const DATA: u64 = 0x10_0000;

const ATA_DISK_SECTORS: u64 = 2048;
const ISO_SECTORS: u64 = 64;

fn clb(port: usize) -> u64 {
    LISTS + port as u64 * 0x1000
}
fn fb(port: usize) -> u64 {
    clb(port) + 0x400
}
fn table(port: usize, slot: u32) -> u64 {
    TABLES + port as u64 * 0x4000 + u64::from(slot) * 0x200
}

/// Byte `i` of the test image pattern.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 9)) as u8
}

fn image(bytes: u64) -> File {
    let mut f = tempfile::tempfile().unwrap();
    let data: Vec<u8> = (0..bytes).map(pattern).collect();
    f.write_all(&data).unwrap();
    f
}

/// A Register H2D FIS.
fn h2d(command: u8, lba: u64, count: u16) -> [u8; 20] {
    let l = lba.to_le_bytes();
    let c = count.to_le_bytes();
    [
        0x27, 0x80, command, 0, l[0], l[1], l[2], 0x40, l[3], l[4], l[5], 0, c[0], c[1], 0, 0, 0,
        0, 0, 0,
    ]
}

struct Cmd {
    fis: [u8; 20],
    cdb: Option<[u8; 12]>,
    write: bool,
    prds: Vec<(u64, u32)>,
}

impl Cmd {
    fn ata(fis: [u8; 20], prds: &[(u64, u32)]) -> Self {
        Self {
            fis,
            cdb: None,
            write: false,
            prds: prds.to_vec(),
        }
    }

    fn packet(cdb: [u8; 12], len: u32) -> Self {
        Self {
            fis: h2d(0xa0, 0, 0),
            cdb: Some(cdb),
            write: false,
            prds: vec![(DATA, len)],
        }
    }
}

struct Driver {
    hba: Ahci,
    mem: GuestMemoryMmap,
    irq: Arc<RecordingIrq>,
}

impl Driver {
    fn new(drives: Vec<(usize, Drive)>) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let irq = Arc::new(RecordingIrq::default());
        let mut hba = Ahci::new(mem.clone(), irq.clone()).unwrap();
        for (port, drive) in drives {
            hba.attach(port, drive).unwrap();
        }
        let mut d = Self { hba, mem, irq };
        d.w(0x04, 1);
        assert_eq!(d.r(0x04) & 1, 0, "HR self-clears");
        d
    }

    fn disk_and_cd() -> Self {
        Self::new(vec![
            (
                0,
                Drive::disk(image(ATA_DISK_SECTORS * 512), false, "DISK0"),
            ),
            (1, Drive::cdrom(Some(image(ISO_SECTORS * 2048)), "CD1")),
        ])
    }

    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.hba.read(ABAR, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&mut self, off: u64, v: u32) {
        self.hba.write(ABAR, off, &v.to_le_bytes());
    }

    fn pr(&mut self, port: usize, reg: u64) -> u32 {
        self.r(0x100 + port as u64 * 0x80 + reg)
    }

    fn pw(&mut self, port: usize, reg: u64, v: u32) {
        self.w(0x100 + port as u64 * 0x80 + reg, v)
    }

    fn level(&self) -> bool {
        *self.irq.level.lock().unwrap()
    }

    /// What every driver does: AHCI enable, lists, FIS receive, start.
    fn start(&mut self, port: usize) {
        self.w(0x04, 1 << 31);
        self.pw(port, PXCLB, clb(port) as u32);
        self.pw(port, PXCLBU, 0);
        self.pw(port, PXFB, fb(port) as u32);
        self.pw(port, PXFBU, 0);
        self.pw(port, PXCMD, CMD_SUD | CMD_POD | CMD_FRE);
        self.pw(port, PXSERR, !0);
        self.pw(port, PXIS, !0);
        self.pw(port, PXCMD, CMD_SUD | CMD_POD | CMD_FRE | CMD_ST);
    }

    /// Stops and restarts the engine, as drivers do after an error.
    fn restart(&mut self, port: usize) {
        let cmd = self.pr(port, PXCMD);
        self.pw(port, PXCMD, cmd & !CMD_ST);
        assert_eq!(self.pr(port, PXCMD) & CMD_CR, 0);
        self.pw(port, PXIS, !0);
        self.pw(port, PXCMD, cmd | CMD_ST);
    }

    /// Builds `cmd` in `slot` without issuing it.
    fn build(&mut self, port: usize, slot: u32, cmd: &Cmd, cfl: u32) {
        let t = table(port, slot);
        self.mem.write_slice(&[0u8; 0x80], GuestAddress(t)).unwrap();
        self.mem.write_slice(&cmd.fis, GuestAddress(t)).unwrap();
        if let Some(cdb) = cmd.cdb {
            self.mem.write_slice(&cdb, GuestAddress(t + 0x40)).unwrap();
        }
        for (i, (addr, len)) in cmd.prds.iter().enumerate() {
            let mut e = [0u8; 16];
            e[..8].copy_from_slice(&addr.to_le_bytes());
            e[12..].copy_from_slice(&(len - 1).to_le_bytes());
            self.mem
                .write_slice(&e, GuestAddress(t + 0x80 + 16 * i as u64))
                .unwrap();
        }
        let dw0 = cfl
            | u32::from(cmd.cdb.is_some()) << 5
            | u32::from(cmd.write) << 6
            | (cmd.prds.len() as u32) << 16;
        let h = clb(port) + u64::from(slot) * 32;
        let mut hdr = [0u8; 32];
        hdr[..4].copy_from_slice(&dw0.to_le_bytes());
        hdr[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        hdr[8..16].copy_from_slice(&t.to_le_bytes());
        self.mem.write_slice(&hdr, GuestAddress(h)).unwrap();
    }

    /// Issues `cmd` in slot 0 and returns PxIS after it (cleared again).
    fn issue(&mut self, port: usize, cmd: &Cmd) -> u32 {
        self.build(port, 0, cmd, 5);
        self.pw(port, PXCI, 1);
        let is = self.pr(port, PXIS);
        self.pw(port, PXIS, is);
        is
    }

    fn prdbc(&self, port: usize, slot: u32) -> u32 {
        self.mem
            .read_obj(GuestAddress(clb(port) + u64::from(slot) * 32 + 4))
            .unwrap()
    }

    fn d2h(&self, port: usize) -> [u8; 20] {
        let mut f = [0u8; 20];
        self.mem
            .read_slice(&mut f, GuestAddress(fb(port) + 0x40))
            .unwrap();
        f
    }

    fn pio_setup(&self, port: usize) -> [u8; 20] {
        let mut f = [0u8; 20];
        self.mem
            .read_slice(&mut f, GuestAddress(fb(port) + 0x20))
            .unwrap();
        f
    }

    fn data(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(DATA)).unwrap();
        v
    }

    /// Runs a packet command on port 1; returns (PxIS, the data).
    fn packet(&mut self, cdb: [u8; 12], len: u32) -> (u32, Vec<u8>) {
        self.mem
            .write_slice(&vec![0u8; len as usize], GuestAddress(DATA))
            .unwrap();
        let is = self.issue(1, &Cmd::packet(cdb, len));
        (is, self.data(len as usize))
    }

    /// REQUEST SENSE: (key, asc, ascq).
    fn sense(&mut self) -> (u8, u8, u8) {
        let (is, d) = self.packet([0x03, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0], 18);
        assert_eq!(is & IS_TFES, 0);
        (d[2] & 0xf, d[12], d[13])
    }
}

fn word(d: &[u8], w: usize) -> u16 {
    u16::from_le_bytes([d[w * 2], d[w * 2 + 1]])
}

fn ata_string(d: &[u8], w: usize, words: usize) -> String {
    (w..w + words)
        .flat_map(|i| word(d, i).to_be_bytes())
        .map(char::from)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

#[test]
fn pci_function_is_an_ich9_ahci_with_a_4k_abar() {
    let mut d = Driver::new(vec![]);
    let c = d.hba.config_mut();
    assert_eq!(c.read_reg(REG_ID), 0x2922_8086);
    assert_eq!(c.read_reg(REG_CLASS_REVISION) >> 8, 0x01_0601);
    assert_eq!(c.read_reg(11), 0x1100_1af4);
    assert_eq!(c.read_reg(15) >> 8 & 0xff, 1, "INTA#");
    c.write_reg(REG_BAR0 + 5, 0, &[0xff; 4]);
    assert_eq!(c.read_reg(REG_BAR0 + 5), 0xffff_f000);
}

#[test]
fn global_registers_advertise_six_ports_and_hba_reset_restores_them() {
    let mut d = Driver::disk_and_cd();
    let cap = d.r(0x00);
    assert_eq!(cap & 0x1f, 5, "6 ports");
    assert_eq!(cap >> 8 & 0x1f, 31, "32 slots");
    assert_ne!(cap & 1 << 31, 0, "S64A");
    assert_ne!(cap & 1 << 18, 0, "SAM");
    assert_eq!(cap & 1 << 30, 0, "no NCQ");
    assert_eq!(cap >> 20 & 0xf, 3, "Gen3");
    assert_eq!(d.r(0x0c), 0x3f);
    assert_eq!(d.r(0x10), 0x0001_0300);
    assert_eq!(d.r(0x04), 1 << 31, "AE is always on");
    d.w(0x04, 2);
    d.pw(0, PXIE, 0xffff_ffff);
    d.pw(0, PXCLB, 0x8000);
    d.pw(0, PXCMD, CMD_FRE | CMD_ST);
    d.w(0x04, 1);
    assert_eq!(d.r(0x04), 1 << 31);
    assert_eq!(d.pr(0, PXIE), 0);
    assert_eq!(d.pr(0, PXCMD), CMD_SUD | CMD_POD);
    assert_eq!(d.pr(0, PXCLB), 0x8000, "PxCLB survives an HBA reset");
    // A qword write fills PxCLB and PxCLBU; a word write to the high half of PxIE keeps
    // the low half; a write across two registers is ignored.
    d.hba
        .write(ABAR, 0x100, &0x0000_0001_2345_6400u64.to_le_bytes());
    assert_eq!((d.pr(0, PXCLB), d.pr(0, PXCLBU)), (0x2345_6400, 1));
    d.pw(0, PXIE, 0x0000_00ff);
    d.hba.write(ABAR, 0x116, &0x4000u16.to_le_bytes());
    assert_eq!(d.pr(0, PXIE), 0x4000_00ff);
    d.hba.write(ABAR, 0x117, &[0xff, 0xff]);
    assert_eq!(d.pr(0, PXIE), 0x4000_00ff);
    // Unknown registers read as zero and ignore writes.
    d.w(0x80, 0x1234);
    assert_eq!(d.r(0x80), 0);
    assert_eq!(d.r(0xffc), 0);
}

#[test]
fn port_start_sets_cr_and_fr_and_stop_clears_them() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    let cmd = d.pr(0, PXCMD);
    assert_ne!(cmd & CMD_CR, 0);
    assert_ne!(cmd & CMD_FR, 0);
    d.pw(0, PXCMD, CMD_SUD | CMD_POD);
    assert_eq!(d.pr(0, PXCMD) & (CMD_CR | CMD_FR), 0);
}

#[test]
fn signature_fis_reaches_the_received_fis_area_for_disk_and_cd() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    d.start(1);
    assert_eq!(d.pr(0, PXSIG), 0x0000_0101);
    assert_eq!(d.pr(1, PXSIG), 0xeb14_0101);
    assert_eq!(d.pr(0, PXSSTS), 0x133);
    assert_eq!(d.pr(0, PXTFD) & 0x88, 0, "not busy");
    let f = d.d2h(0);
    assert_eq!((f[0], f[4], f[5], f[6], f[12]), (0x34, 1, 0, 0, 1));
    let f = d.d2h(1);
    assert_eq!((f[0], f[4], f[5], f[6], f[12]), (0x34, 1, 0x14, 0xeb, 1));
    // An empty port shows no device.
    assert_eq!(d.pr(2, PXSSTS) & 0xf, 0);
    assert_eq!(d.pr(2, PXTFD), 0x7f);
}

#[test]
fn comreset_through_sctl_drops_the_link_and_resends_the_signature() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    d.mem
        .write_slice(&[0u8; 20], GuestAddress(fb(0) + 0x40))
        .unwrap();
    d.pw(0, PXSCTL, 0x301);
    assert_eq!(d.pr(0, PXSSTS) & 0xf, 0);
    assert_ne!(d.pr(0, PXTFD) & 0x80, 0, "busy during COMRESET");
    d.pw(0, PXSCTL, 0x300);
    assert_eq!(d.pr(0, PXSSTS), 0x133);
    assert_eq!(d.pr(0, PXTFD) & 0xff, 0x50);
    assert_eq!(d.d2h(0)[0], 0x34);
}

#[test]
fn software_reset_fis_pair_resets_the_device() {
    let mut d = Driver::disk_and_cd();
    d.start(1);
    let mut fis = [0u8; 20];
    fis[0] = 0x27;
    fis[15] = 0x04; // SRST, C bit clear
    d.build(1, 0, &Cmd::ata(fis, &[]), 5);
    d.pw(1, PXCI, 1);
    assert_eq!(d.pr(1, PXCI), 0);
    assert_ne!(d.pr(1, PXTFD) & 0x80, 0);
    fis[15] = 0;
    d.build(1, 0, &Cmd::ata(fis, &[]), 5);
    d.pw(1, PXCI, 1);
    assert_eq!(d.pr(1, PXCI), 0);
    assert_eq!(d.pr(1, PXTFD) & 0x80, 0);
    assert_eq!(d.pr(1, PXSIG), 0xeb14_0101);
}

#[test]
fn identify_reports_model_serial_and_sector_count() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    let is = d.issue(0, &Cmd::ata(h2d(0xec, 0, 0), &[(DATA, 512)]));
    assert_ne!(is & IS_PSS, 0);
    assert_eq!(is & IS_TFES, 0);
    assert_eq!(d.prdbc(0, 0), 512);
    let ps = d.pio_setup(0);
    assert_eq!((ps[0], ps[1] & 0x20, ps[15]), (0x5f, 0x20, 0x50));
    assert_eq!(d.pr(0, PXCI), 0);
    let id = d.data(512);
    assert_eq!(ata_string(&id, 27, 20), "HOSPES HARDDISK");
    assert_eq!(ata_string(&id, 10, 10), "DISK0");
    let lba48 = (0..4).fold(0u64, |a, i| a | u64::from(word(&id, 100 + i)) << (16 * i));
    assert_eq!(lba48, ATA_DISK_SECTORS);
    assert_eq!(
        u32::from(word(&id, 60)) | u32::from(word(&id, 61)) << 16,
        ATA_DISK_SECTORS as u32
    );
    assert_ne!(word(&id, 83) & 1 << 10, 0, "LBA48");
    assert_ne!(word(&id, 49) & 1 << 8, 0, "DMA");
    assert_ne!(word(&id, 85) & 1 << 5, 0, "write cache on");
    assert_eq!(
        id.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
        0,
        "checksum"
    );
    // SET FEATURES: disable write cache shows in word 85.
    let mut f = h2d(0xef, 0, 0);
    f[3] = 0x82;
    assert_eq!(d.issue(0, &Cmd::ata(f, &[])) & IS_TFES, 0);
    d.issue(0, &Cmd::ata(h2d(0xec, 0, 0), &[(DATA, 512)]));
    assert_eq!(word(&d.data(512), 85) & 1 << 5, 0);
}

#[test]
fn disk_aborts_identify_packet_and_cd_aborts_identify_with_its_signature() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    d.start(1);
    let is = d.issue(0, &Cmd::ata(h2d(0xa1, 0, 0), &[(DATA, 512)]));
    assert_ne!(is & IS_TFES, 0);
    assert_ne!(is & IS_DHRS, 0, "the error arrives as a D2H FIS");
    assert_eq!(d.pr(0, PXTFD), 0x0451);
    let is = d.issue(1, &Cmd::ata(h2d(0xec, 0, 0), &[(DATA, 512)]));
    assert_ne!(is & IS_TFES, 0);
    let f = d.d2h(1);
    assert_eq!((f[2] & 1, f[3], f[5], f[6]), (1, 0x04, 0x14, 0xeb));
    d.restart(1);
    let is = d.issue(1, &Cmd::ata(h2d(0xa1, 0, 0), &[(DATA, 512)]));
    assert_ne!(is & IS_PSS, 0);
    let id = d.data(512);
    assert_eq!(word(&id, 0) >> 8 & 0x1f, 5, "CD/DVD device");
    assert_ne!(word(&id, 0) & 0x80, 0, "removable");
    assert_eq!(ata_string(&id, 27, 20), "HOSPES DVD-ROM");
}

#[test]
fn read_dma_ext_scatters_across_prdt_entries() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    let prds = [
        (DATA, 1024),
        (DATA + 0x10_000, 2560),
        (DATA + 0x20_000, 512),
    ];
    let is = d.issue(0, &Cmd::ata(h2d(0x25, 100, 8), &prds));
    assert_ne!(is & IS_DHRS, 0);
    assert_eq!(is & IS_TFES, 0);
    assert_eq!(d.prdbc(0, 0), 4096);
    assert_eq!(d.d2h(0)[2], 0x50);
    let mut got = Vec::new();
    for (addr, len) in prds {
        let mut v = vec![0u8; len as usize];
        d.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        got.extend(v);
    }
    let want: Vec<u8> = (100 * 512..108 * 512).map(pattern).collect();
    assert_eq!(got, want);
}

#[test]
fn pio_read_sectors_goes_through_the_prdt_too() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    let is = d.issue(0, &Cmd::ata(h2d(0x20, 5, 2), &[(DATA, 1024)]));
    assert_ne!(is & IS_PSS, 0);
    let want: Vec<u8> = (5 * 512..7 * 512).map(pattern).collect();
    assert_eq!(d.data(1024), want);
}

#[test]
fn written_sectors_read_back_and_reach_the_image() {
    let file = image(ATA_DISK_SECTORS * 512);
    let mut check = file.try_clone().unwrap();
    let mut d = Driver::new(vec![(0, Drive::disk(file, false, "W"))]);
    d.start(0);
    let payload: Vec<u8> = (0..2048u32).map(|i| (i * 13 + 1) as u8).collect();
    d.mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
    let mut write = Cmd::ata(h2d(0x35, 42, 4), &[(DATA, 1536), (DATA + 1536, 512)]);
    write.write = true;
    let is = d.issue(0, &write);
    assert_eq!(is & IS_TFES, 0);
    assert_eq!(d.prdbc(0, 0), 2048);
    assert_eq!(d.issue(0, &Cmd::ata(h2d(0xea, 0, 0), &[])) & IS_TFES, 0);
    d.mem.write_slice(&[0u8; 2048], GuestAddress(DATA)).unwrap();
    d.issue(0, &Cmd::ata(h2d(0xc8, 42, 4), &[(DATA, 2048)]));
    assert_eq!(d.data(2048), payload);
    let mut on_disk = vec![0u8; 2048];
    check.seek(SeekFrom::Start(42 * 512)).unwrap();
    check.read_exact(&mut on_disk).unwrap();
    assert_eq!(on_disk, payload);
}

#[test]
fn a_disk_given_as_an_image_reads_and_writes_through_it() {
    // The path qcow2 disks take: a DiskImage, not a file, behind the port.
    let file = image(ATA_DISK_SECTORS * 512);
    let mut check = file.try_clone().unwrap();
    let img = crate::disk_image::RawImage::new(file).unwrap();
    let mut d = Driver::new(vec![(
        0,
        Drive::disk_image(std::sync::Arc::new(img), false, "I"),
    )]);
    d.start(0);
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    d.mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
    let mut write = Cmd::ata(h2d(0x35, 9, 2), &[(DATA, 1024)]);
    write.write = true;
    assert_eq!(d.issue(0, &write) & IS_TFES, 0);
    assert_eq!(d.issue(0, &Cmd::ata(h2d(0xea, 0, 0), &[])) & IS_TFES, 0);
    let mut on_disk = vec![0u8; 1024];
    check.seek(SeekFrom::Start(9 * 512)).unwrap();
    check.read_exact(&mut on_disk).unwrap();
    assert_eq!(on_disk, payload);
    d.mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
    d.issue(0, &Cmd::ata(h2d(0xc8, 5, 1), &[(DATA, 512)]));
    let want: Vec<u8> = (5 * 512..6 * 512).map(pattern).collect();
    assert_eq!(d.data(512), want);
}

#[test]
fn write_to_a_read_only_disk_is_aborted() {
    let mut d = Driver::new(vec![(0, Drive::disk(image(64 * 512), true, "RO"))]);
    d.start(0);
    let mut write = Cmd::ata(h2d(0xca, 0, 1), &[(DATA, 512)]);
    write.write = true;
    let is = d.issue(0, &write);
    assert_ne!(is & IS_TFES, 0);
    assert_eq!(d.pr(0, PXTFD) >> 8 & 0xff, 0x04);
}

#[test]
fn interrupt_rises_with_ghc_ie_and_falls_through_is_w1c() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    d.pw(0, PXIE, IS_DHRS | IS_PSS | IS_TFES);
    d.build(0, 0, &Cmd::ata(h2d(0xe7, 0, 0), &[]), 5);
    d.pw(0, PXCI, 1);
    assert!(!d.level(), "GHC.IE is off");
    assert_eq!(d.r(0x08), 1);
    d.w(0x08, 1);
    assert_eq!(d.r(0x08), 1, "HBA IS stays set while the port's bit does");
    d.w(0x04, 1 << 31 | 2);
    assert!(d.level());
    // Clear the port, then the HBA: the line drops.
    d.pw(0, PXIS, IS_DHRS);
    assert!(d.level());
    d.w(0x08, 1);
    assert!(!d.level());
    // The next command raises it again; a byte write clearing another bit keeps it.
    d.pw(0, PXCI, 1);
    assert!(d.level());
    d.hba.write(ABAR, 0x110, &[0x02]);
    assert_eq!(d.pr(0, PXIS) & IS_DHRS, IS_DHRS);
    // INTx disable in the PCI command register masks the line.
    d.hba.write_config(REG_COMMAND_STATUS, 0, &[0x06, 0x04]);
    assert!(!d.level());
    d.hba.write_config(REG_COMMAND_STATUS, 0, &[0x06, 0x00]);
    assert!(d.level());
    // An HBA reset drops it.
    d.w(0x04, 1);
    assert!(!d.level());
}

#[test]
fn lba_past_the_end_fails_with_idnf() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    let is = d.issue(
        0,
        &Cmd::ata(h2d(0x25, ATA_DISK_SECTORS - 1, 2), &[(DATA, 1024)]),
    );
    assert_ne!(is & IS_TFES, 0);
    assert_eq!(d.pr(0, PXTFD), 0x1051);
    assert_eq!(d.pr(0, PXCI), 1, "a failed command stays issued");
    // Later commands wait for the engine to be restarted.
    d.build(0, 1, &Cmd::ata(h2d(0xe7, 0, 0), &[]), 5);
    d.pw(0, PXCI, 2);
    assert_eq!(d.pr(0, PXCI), 3);
    d.restart(0);
    assert_eq!(d.pr(0, PXCI), 0);
    let is = d.issue(
        0,
        &Cmd::ata(h2d(0x25, ATA_DISK_SECTORS - 1, 1), &[(DATA, 512)]),
    );
    assert_eq!(is & IS_TFES, 0);
}

#[test]
fn prdt_outside_ram_aborts_the_command() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    let is = d.issue(0, &Cmd::ata(h2d(0x25, 0, 8), &[(0xf000_0000, 4096)]));
    assert_ne!(is & IS_TFES, 0);
    assert_eq!(d.pr(0, PXTFD), 0x0451);
    // A PRDT too short for the sectors asked.
    d.restart(0);
    let is = d.issue(0, &Cmd::ata(h2d(0x25, 0, 8), &[(DATA, 512)]));
    assert_ne!(is & IS_TFES, 0);
}

#[test]
fn garbage_prdt_of_65535_entries_fails_without_panic() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    d.build(0, 0, &Cmd::ata(h2d(0x25, 0, 16), &[]), 5);
    let garbage: Vec<u8> = (0..65535u32 * 16)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    d.mem
        .write_slice(&garbage, GuestAddress(table(0, 0) + 0x80))
        .unwrap();
    d.mem
        .write_obj(5u32 | 0xffff << 16, GuestAddress(clb(0)))
        .unwrap();
    d.pw(0, PXCI, 1);
    assert_ne!(d.pr(0, PXIS) & IS_TFES, 0);
    // A table that runs off the end of RAM.
    d.restart(0);
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&(5u32 | 0xffff << 16).to_le_bytes());
    hdr[8..16].copy_from_slice(&(MEM_SIZE as u64 - 0x1000).to_le_bytes());
    d.mem.write_slice(&hdr, GuestAddress(clb(0))).unwrap();
    d.mem
        .write_slice(&h2d(0x25, 0, 1), GuestAddress(MEM_SIZE as u64 - 0x1000))
        .unwrap();
    d.pw(0, PXCI, 1);
    assert_ne!(d.pr(0, PXIS) & IS_TFES, 0);
}

#[test]
fn impossible_command_headers_fail_cleanly() {
    let mut d = Driver::disk_and_cd();
    d.start(0);
    // CFL 0 and CFL 17 cannot hold a Register H2D FIS.
    for cfl in [0, 2, 17] {
        d.build(0, 0, &Cmd::ata(h2d(0xe7, 0, 0), &[]), cfl);
        d.pw(0, PXCI, 1);
        assert_ne!(d.pr(0, PXIS) & IS_TFES, 0, "cfl {cfl}");
        d.restart(0);
    }
    // A command table outside RAM; a FIS that is not a Register H2D FIS.
    d.mem
        .write_obj(0xffff_ff00u64, GuestAddress(clb(0) + 8))
        .unwrap();
    d.pw(0, PXCI, 1);
    assert_ne!(d.pr(0, PXIS) & IS_TFES, 0);
    d.restart(0);
    let mut f = h2d(0xe7, 0, 0);
    f[0] = 0x34;
    let is = d.issue(0, &Cmd::ata(f, &[]));
    assert_ne!(is & IS_TFES, 0);
    d.restart(0);
    // Unknown ATA commands are aborted.
    let is = d.issue(0, &Cmd::ata(h2d(0xb0, 0, 0), &[]));
    assert_ne!(is & IS_TFES, 0);
    assert_eq!(d.pr(0, PXTFD) >> 8, 0x04);
}

#[test]
fn ci_written_before_st_runs_nothing() {
    let mut d = Driver::disk_and_cd();
    d.pw(0, PXCLB, clb(0) as u32);
    d.pw(0, PXFB, fb(0) as u32);
    d.pw(0, PXCMD, CMD_FRE);
    d.build(0, 0, &Cmd::ata(h2d(0xec, 0, 0), &[(DATA, 512)]), 5);
    d.pw(0, PXCI, 1);
    assert_eq!(d.pr(0, PXCI), 0);
    assert_eq!(d.pr(0, PXIS), 0);
    assert_eq!(d.data(2), [0, 0]);
    // Nothing on an empty port runs either.
    d.start(3);
    let is = d.issue(3, &Cmd::ata(h2d(0xec, 0, 0), &[(DATA, 512)]));
    assert_ne!(is & IS_TFES, 0);
}

#[test]
fn atapi_inquiry_capacity_and_read10_of_an_iso() {
    let mut d = Driver::disk_and_cd();
    d.start(1);
    let (is, inq) = d.packet([0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0], 36);
    assert_eq!(is & IS_TFES, 0);
    assert_eq!((inq[0], inq[1]), (0x05, 0x80));
    assert_eq!(&inq[16..30], b"HOSPES DVD-ROM");
    let (_, cap) = d.packet([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert_eq!(&cap, &[0, 0, 0, ISO_SECTORS as u8 - 1, 0, 0, 8, 0]);
    let (is, data) = d.packet([0x28, 0, 0, 0, 0, 3, 0, 0, 2, 0, 0, 0], 4096);
    assert_eq!(is & IS_TFES, 0);
    assert_ne!(is & IS_DHRS, 0);
    assert_eq!(d.prdbc(1, 0), 4096);
    let want: Vec<u8> = (3 * 2048..5 * 2048).map(pattern).collect();
    assert_eq!(data, want);
    // READ(12) past the end: ILLEGAL REQUEST / LBA OUT OF RANGE.
    let (is, _) = d.packet(
        [0xa8, 0, 0, 0, 0, ISO_SECTORS as u8, 0, 0, 0, 1, 0, 0],
        2048,
    );
    assert_ne!(is & IS_TFES, 0);
    assert_eq!(d.pr(1, PXTFD) >> 12, 5, "sense key in the error register");
    d.restart(1);
    assert_eq!(d.sense(), (5, 0x21, 0));
    // Allocation length cuts the answer.
    let (_, inq) = d.packet([0x12, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0], 36);
    assert_eq!(d.prdbc(1, 0), 8);
    assert_eq!(inq[8], 0);
}

#[test]
fn read_toc_in_lba_and_msf_forms() {
    let mut d = Driver::disk_and_cd();
    d.start(1);
    let (_, toc) = d.packet([0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0], 100);
    assert_eq!(d.prdbc(1, 0), 20);
    assert_eq!(&toc[..4], &[0, 18, 1, 1]);
    assert_eq!(&toc[4..12], &[0, 0x14, 1, 0, 0, 0, 0, 0]);
    assert_eq!(
        &toc[12..20],
        &[0, 0x14, 0xaa, 0, 0, 0, 0, ISO_SECTORS as u8]
    );
    let (_, toc) = d.packet([0x43, 2, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0], 100);
    assert_eq!(&toc[8..12], &[0, 0, 2, 0]);
    // Lead-out at LBA 64 + 150 frames = 0:02:64.
    assert_eq!(&toc[16..20], &[0, 0, 2, 64]);
    let (_, session) = d.packet([0x43, 0, 1, 0, 0, 0, 0, 0, 12, 0, 0, 0], 12);
    assert_eq!(&session[..4], &[0, 10, 1, 1]);
    assert_eq!(session[6], 1);
    let (_, full) = d.packet([0x43, 2, 2, 0, 0, 0, 0, 0, 100, 0, 0, 0], 100);
    assert_eq!(d.prdbc(1, 0), 4 + 4 * 11);
    assert_eq!(&full[..4], &[0, 46, 1, 1]);
    assert_eq!(full[4 + 3], 0xa0);
    assert_eq!(
        &full[4 + 22..4 + 33],
        &[1, 0x14, 0, 0xa2, 0, 0, 0, 0, 0, 2, 64]
    );
    // Formats not implemented are refused.
    let (is, _) = d.packet([0x43, 0, 5, 0, 0, 0, 0, 0, 12, 0, 0, 0], 12);
    assert_ne!(is & IS_TFES, 0);
}

#[test]
fn empty_drive_reports_medium_not_present() {
    let mut d = Driver::new(vec![(1, Drive::cdrom(None, "E"))]);
    d.start(1);
    let (is, _) = d.packet([0; 12], 0x200);
    assert_ne!(is & IS_TFES, 0);
    assert_eq!(d.pr(1, PXTFD) & 0xff01, 0x2001);
    d.restart(1);
    assert_eq!(d.sense(), (2, 0x3a, 0));
    assert_eq!(d.sense(), (0, 0, 0), "REQUEST SENSE clears it");
    let (_, cfg) = d.packet([0x46, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0], 64);
    assert_eq!(&cfg[6..8], &[0, 0], "no current profile");
    let (is, _) = d.packet([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert_ne!(is & IS_TFES, 0);
}

#[test]
fn eject_and_insert_raise_unit_attention_once() {
    let mut d = Driver::disk_and_cd();
    d.start(1);
    assert!(d.hba.port_mut(1).unwrap().media_present());
    let old = d.hba.eject(1).unwrap();
    assert!(old.is_some());
    assert!(!d.hba.port_mut(1).unwrap().media_present());
    assert!(d.hba.insert_media(1, image(2048 * 10)).unwrap().is_none());
    // INQUIRY passes a unit attention by.
    let (is, _) = d.packet([0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0], 36);
    assert_eq!(is & IS_TFES, 0);
    let (is, _) = d.packet([0; 12], 0x200);
    assert_ne!(is & IS_TFES, 0);
    assert_eq!(d.pr(1, PXTFD) >> 12, 6);
    d.restart(1);
    assert_eq!(d.sense(), (6, 0x28, 0));
    let (is, _) = d.packet([0; 12], 0x200);
    assert_eq!(is & IS_TFES, 0, "reported once");
    let (_, cap) = d.packet([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert_eq!(cap[3], 9, "the new disc");
    // The media event is reported once too.
    let (_, ev) = d.packet([0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0], 8);
    assert_eq!((ev[2], ev[4], ev[5]), (4, 2, 2));
    let (_, ev) = d.packet([0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0], 8);
    assert_eq!(ev[4], 0);
    // A change seen first by REQUEST SENSE is reported there, once.
    d.hba.insert_media(1, image(2048 * 12)).unwrap();
    assert_eq!(d.sense(), (6, 0x28, 0));
    let (is, _) = d.packet([0; 12], 0x200);
    assert_eq!(is & IS_TFES, 0);
    // A disk has no disc to change.
    assert!(d.hba.eject(0).is_err());
    assert!(d.hba.eject(9).is_err());
}

#[test]
fn guest_eject_honours_prevent_medium_removal() {
    let mut d = Driver::disk_and_cd();
    d.start(1);
    d.packet([0x1e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 0x200);
    let tray = |d: &mut Driver| d.hba.port_mut(1).unwrap().tray().unwrap();
    assert_eq!(
        tray(&mut d),
        TrayState {
            media_present: true,
            open: false,
            locked: true
        },
        "the host sees the guest's lock"
    );
    let (is, _) = d.packet([0x1b, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], 0x200);
    assert_ne!(is & IS_TFES, 0);
    d.restart(1);
    assert_eq!(d.sense(), (5, 0x53, 2));
    d.packet([0x1e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0x200);
    let (is, _) = d.packet([0x1b, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], 0x200);
    assert_eq!(is & IS_TFES, 0);
    assert!(!d.hba.port_mut(1).unwrap().media_present());
    assert_eq!(
        tray(&mut d),
        TrayState {
            media_present: false,
            open: true,
            locked: false
        },
        "the guest's eject opened the tray"
    );
    assert_eq!(
        d.hba.port_mut(0).unwrap().tray(),
        None,
        "a disk has no tray"
    );
    let (is, _) = d.packet([0; 12], 0x200);
    assert_ne!(is & IS_TFES, 0);
    d.restart(1);
    assert_eq!(d.sense(), (2, 0x3a, 0));
    // Closing the tray brings the disc back with a unit attention.
    d.packet([0x1b, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0], 0x200);
    assert!(d.hba.port_mut(1).unwrap().media_present());
    let (is, _) = d.packet([0; 12], 0x200);
    assert_ne!(is & IS_TFES, 0);
    d.restart(1);
    assert_eq!(d.sense(), (6, 0x28, 0));
}

#[test]
fn cd_reports_profiles_capabilities_and_disc_information() {
    let mut d = Driver::disk_and_cd();
    d.start(1);
    let (_, cfg) = d.packet([0x46, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0], 64);
    assert_eq!(&cfg[6..8], &[0, 8], "a small disc is a CD-ROM");
    assert_eq!(&cfg[8..12], &[0, 0, 3, 8], "profile list");
    assert_eq!(&cfg[12..16], &[0, 0x10, 0, 0], "DVD-ROM, not current");
    assert_eq!(&cfg[16..20], &[0, 0x08, 1, 0], "CD-ROM, current");
    assert_eq!(
        u32::from_be_bytes(cfg[..4].try_into().unwrap()),
        4 + 12 + 12 + 8
    );
    let (_, one) = d.packet([0x46, 2, 0, 3, 0, 0, 0, 0, 64, 0, 0, 0], 64);
    assert_eq!(
        &one[8..10],
        &[0, 3],
        "RT 2: just the removable-medium feature"
    );
    let (_, ms) = d.packet([0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 64, 0, 0, 0], 64);
    assert_eq!((ms[8], ms[9]), (0x2a, 0x14));
    assert_eq!(u16::from_be_bytes([ms[0], ms[1]]), 8 + 28 - 2);
    let (_, ms) = d.packet([0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 64, 0, 0, 0], 64);
    assert_eq!((ms[8], ms[20]), (0x01, 0x2a));
    let (is, _) = d.packet([0x5a, 0, 0x05, 0, 0, 0, 0, 0, 64, 0, 0, 0], 64);
    assert_ne!(is & IS_TFES, 0, "unknown mode page");
    d.restart(1);
    let (_, di) = d.packet([0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0, 0, 0], 34);
    assert_eq!((di[1], di[2], di[3], di[4]), (32, 0x0e, 1, 1));
    let (is, ms) = d.packet([0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 8);
    assert_eq!(is & IS_TFES, 0);
    assert_eq!(ms, [0; 8]);
    let (is, _) = d.packet([0xbb, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0], 0x200);
    assert_eq!(is & IS_TFES, 0);
    // A CD has no DVD structure.
    let (is, _) = d.packet([0xad, 0, 0, 0, 0, 0, 0, 0, 8, 4, 0, 0], 0x804);
    assert_ne!(is & IS_TFES, 0);
    d.restart(1);
    assert_eq!(d.sense(), (5, 0x30, 2));
    // Unknown packet commands.
    let (is, _) = d.packet([0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0x200);
    assert_ne!(is & IS_TFES, 0);
    d.restart(1);
    assert_eq!(d.sense(), (5, 0x20, 0));
}

#[test]
fn a_large_disc_is_a_dvd_with_a_physical_format() {
    // A sparse image just past CD capacity.
    let f = tempfile::tempfile().unwrap();
    f.set_len((360_000 + 16) * 2048).unwrap();
    let mut d = Driver::new(vec![(1, Drive::cdrom(Some(f), "DVD"))]);
    d.start(1);
    let (_, cfg) = d.packet([0x46, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0], 64);
    assert_eq!(&cfg[6..8], &[0, 0x10]);
    let (is, pf) = d.packet([0xad, 0, 0, 0, 0, 0, 0, 0, 8, 4, 0, 0], 0x804);
    assert_eq!(is & IS_TFES, 0);
    assert_eq!(&pf[..2], &[8, 2]);
    assert_eq!(
        u32::from_be_bytes(pf[12..16].try_into().unwrap()),
        0x3_0000 + 360_016 - 1
    );
}

#[test]
fn random_registers_and_command_tables_never_panic() {
    // The disk is read-only so that the final read can check the image.
    let mut d = Driver::new(vec![
        (0, Drive::disk(image(ATA_DISK_SECTORS * 512), true, "FUZZ")),
        (1, Drive::cdrom(Some(image(ISO_SECTORS * 2048)), "CD1")),
    ]);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for port in 0..2 {
        d.start(port);
    }
    for round in 0..3000 {
        let r = next();
        match r % 4 {
            // Garbage command lists and tables where the ports look.
            0 => {
                let at = [clb(0), clb(1), TABLES, TABLES + 0x4000][(r >> 8) as usize % 4];
                let junk: Vec<u8> = (0..64).map(|_| next() as u8).collect();
                d.mem
                    .write_slice(&junk, GuestAddress(at + (r >> 16) % 0x200))
                    .unwrap();
            }
            // Issue whatever is there.
            1 => {
                let port = (r >> 8) as usize % 2;
                d.pw(port, PXCI, (next() as u32) | 1);
            }
            // Any register, any value, any width.
            2 => {
                let off = (r >> 8) % 0x1000;
                let len = [1usize, 2, 4, 8][(r >> 20) as usize % 4];
                let v = next().to_le_bytes();
                d.hba.write(ABAR, off, &v[..len]);
            }
            // Keep the ports mostly running so commands get through.
            _ => {
                let port = (r >> 8) as usize % 2;
                if round % 7 == 0 {
                    d.start(port);
                } else {
                    d.restart(port);
                }
            }
        }
        let mut b = [0u8; 8];
        d.hba.read(ABAR, (r >> 24) % 0x1000, &mut b);
    }
    // The HBA still works after all that.
    d.w(0x04, 1);
    d.start(0);
    let is = d.issue(0, &Cmd::ata(h2d(0xc8, 1, 1), &[(DATA, 512)]));
    assert_eq!(is & IS_TFES, 0);
    let want: Vec<u8> = (512..1024).map(pattern).collect();
    assert_eq!(d.data(512), want);
}

/// A controller as a restored VM builds it: same guest RAM, drives on the same images
/// (`disk`, `cd`: handles on the files the saved one used), then `saved` restored.
fn restored(from: &Driver, disk: &File, cd: &File, saved: &[u8]) -> Driver {
    use crate::state::Snapshot;
    let irq = Arc::new(RecordingIrq::default());
    let mut hba = Ahci::new(from.mem.clone(), irq.clone()).unwrap();
    hba.attach(0, Drive::disk(disk.try_clone().unwrap(), false, "DISK0"))
        .unwrap();
    hba.attach(1, Drive::cdrom(Some(cd.try_clone().unwrap()), "CD1"))
        .unwrap();
    hba.reset();
    hba.restore_state(saved).unwrap();
    Driver {
        hba,
        mem: from.mem.clone(),
        irq,
    }
}

fn driver_on(disk: &File, cd: &File) -> Driver {
    Driver::new(vec![
        (0, Drive::disk(disk.try_clone().unwrap(), false, "DISK0")),
        (1, Drive::cdrom(Some(cd.try_clone().unwrap()), "CD1")),
    ])
}

#[test]
fn a_controller_saved_after_a_read_dma_restores_its_registers_interrupt_and_goes_on() {
    use crate::state::Snapshot;
    let (disk, cd) = (image(ATA_DISK_SECTORS * 512), image(ISO_SECTORS * 2048));
    let mut d = driver_on(&disk, &cd);
    d.start(0);
    d.start(1);
    // SET MULTIPLE MODE 4, then READ DMA of 4 sectors at LBA 10 left pending in PxIS.
    assert_eq!(d.issue(0, &Cmd::ata(h2d(0xc6, 0, 4), &[])) & IS_TFES, 0);
    d.pw(0, PXIE, IS_DHRS);
    d.w(0x04, 1 << 31 | 2);
    d.build(0, 3, &Cmd::ata(h2d(0xc8, 10, 4), &[(DATA, 2048)]), 5);
    d.pw(0, PXCI, 1 << 3);
    assert_eq!(d.pr(0, PXCI), 0, "completed at once");
    assert_eq!(d.prdbc(0, 3), 2048);
    assert!(d.level());
    let want: Vec<u8> = (10 * 512..14 * 512).map(pattern).collect();
    assert_eq!(d.data(2048), want);
    // The guest's PCI command (memory + bus master) and a BAR address.
    d.hba
        .write_config(REG_BAR0 + ABAR_INDEX, 0, &0xfebf_0000u32.to_le_bytes());
    d.hba.write_config(REG_COMMAND_STATUS, 0, &[0x06, 0x00]);
    let saved = d.hba.save_state().unwrap();

    let mut r = restored(&d, &disk, &cd, &saved);
    assert!(r.level(), "INTA# asserted again");
    assert_eq!(r.hba.config().bar_address(ABAR_INDEX), Some(0xfebf_0000));
    assert_eq!(r.hba.config().command() & 0x6, 0x6);
    for off in [0x04, 0x08] {
        assert_eq!(r.r(off), d.r(off), "{off:#x}");
    }
    for port in 0..2 {
        for reg in [
            PXCLB, PXFB, PXIS, PXIE, PXCMD, PXTFD, PXSIG, PXSSTS, PXSCTL, PXSERR, PXSACT, PXCI,
        ] {
            assert_eq!(r.pr(port, reg), d.pr(port, reg), "port {port} reg {reg:#x}");
        }
    }
    // The interrupt clears as on the original, and the next command works.
    r.pw(0, PXIS, IS_DHRS);
    r.w(0x08, 1);
    assert!(!r.level());
    r.mem.write_slice(&[0u8; 2048], GuestAddress(DATA)).unwrap();
    let is = r.issue(0, &Cmd::ata(h2d(0xc8, 20, 4), &[(DATA, 2048)]));
    assert_eq!(is & IS_TFES, 0);
    let want: Vec<u8> = (20 * 512..24 * 512).map(pattern).collect();
    assert_eq!(r.data(2048), want);
    // SET MULTIPLE's count came back: IDENTIFY word 59 reports it.
    r.issue(0, &Cmd::ata(h2d(0xec, 0, 0), &[(DATA, 512)]));
    assert_eq!(word(&r.data(512), 59) & 0x1ff, 0x104);
}

#[test]
fn cd_sense_after_an_eject_survives_restore_and_the_disc_stays_out() {
    use crate::state::Snapshot;
    let (disk, cd) = (image(ATA_DISK_SECTORS * 512), image(ISO_SECTORS * 2048));
    let mut d = driver_on(&disk, &cd);
    d.start(1);
    d.hba.eject(1).unwrap();
    // The next command fails with the unit attention, whose sense the guest has not read.
    let (is, _) = d.packet([0; 12], 0x200);
    assert_ne!(is & IS_TFES, 0);
    d.restart(1);
    let saved = d.hba.save_state().unwrap();

    // The restored VM's configuration still names the ISO; the saved drive was empty.
    let mut r = restored(&d, &disk, &cd, &saved);
    assert!(!r.hba.port_mut(1).unwrap().media_present());
    let sense = r.sense();
    assert_eq!(sense, (6, 0x28, 0), "the unit attention");
    assert_eq!(sense, d.sense(), "as on the original");
    // Then the drive is empty: TEST UNIT READY fails with medium not present.
    let (is, _) = r.packet([0; 12], 0x200);
    assert_ne!(is & IS_TFES, 0);
    r.restart(1);
    assert_eq!(r.sense(), (2, 0x3a, 0));
    // The media event still waits too, once.
    let (_, ev) = r.packet([0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0], 8);
    assert_eq!(ev[4], 3, "media removal");
}

#[test]
fn garbage_or_mismatched_ahci_state_is_refused_and_the_controller_goes_on() {
    use crate::state::Snapshot;
    let (disk, cd) = (image(ATA_DISK_SECTORS * 512), image(ISO_SECTORS * 2048));
    let mut d = driver_on(&disk, &cd);
    d.start(0);
    let saved = d.hba.save_state().unwrap();
    // A controller with the CD and disk swapped, and one with an empty CD drive.
    let mut swapped = Driver::new(vec![
        (0, Drive::cdrom(Some(cd.try_clone().unwrap()), "CD0")),
        (1, Drive::disk(disk.try_clone().unwrap(), false, "DISK1")),
    ]);
    assert!(swapped.hba.restore_state(&saved).is_err());
    let mut fresh = driver_on(&disk, &cd);
    fresh.start(1);
    fresh.hba.eject(1).unwrap();
    fresh.sense();
    let empty_cd = fresh.hba.save_state().unwrap();
    let mut other = driver_on(&disk, &cd);
    other.hba.eject(1).unwrap();
    assert!(other.hba.restore_state(&saved[..saved.len() - 2]).is_err());
    assert!(other.hba.restore_state(&[0xff; 40]).is_err());
    // Empty saved, disc here: accepted (the disc goes); disc saved, none here: refused.
    let mut with_disc = driver_on(&disk, &cd);
    with_disc.hba.restore_state(&empty_cd).unwrap();
    let before = other.pr(0, PXCMD);
    assert!(other.hba.restore_state(&saved).is_err());
    assert_eq!(other.pr(0, PXCMD), before, "nothing changed");
    // The refused controller still runs commands.
    other.start(0);
    let is = other.issue(0, &Cmd::ata(h2d(0xc8, 1, 1), &[(DATA, 512)]));
    assert_eq!(is & IS_TFES, 0);
    let want: Vec<u8> = (512..1024).map(pattern).collect();
    assert_eq!(other.data(512), want);
}
