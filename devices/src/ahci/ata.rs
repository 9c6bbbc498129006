//! The ATA command set of a hard disk behind an AHCI port (ATA8-ACS).
//!
//! Data flow: the port hands [`AtaDisk::execute`] the command's Register H2D FIS and the
//! command's [`Transfer`]; DMA and PIO commands alike move their data through the PRDT (as
//! AHCI does), streamed in chunks between the image and guest memory. The answer
//! is a [`Reply`]: the task-file registers the device ends with, and whether it ends with a
//! PIO Setup FIS (PIO data-in) or a Register D2H FIS. Any failure becomes ERR in the status
//! and ABRT (or IDNF for an address past the end) in the error register.

use super::AhciError;
use super::backend::Medium;
use super::fis::{H2dFis, TaskFile};
use super::prdt::Transfer;

/// Bytes per sector of a disk.
pub const SECTOR: u64 = 512;

/// ATA Status register bits (ATA8-ACS §6.1.9).
pub const STATUS_BSY: u8 = 0x80;
pub const STATUS_DRDY: u8 = 0x40;
pub const STATUS_DSC: u8 = 0x10;
pub const STATUS_DRQ: u8 = 0x08;
pub const STATUS_ERR: u8 = 0x01;
/// Status of an idle, ready device.
pub const STATUS_READY: u8 = STATUS_DRDY | STATUS_DSC;
/// Error register bits (ATA8-ACS §6.1.4).
pub const ERROR_ABRT: u8 = 0x04;
pub const ERROR_IDNF: u8 = 0x10;
/// Error register after a reset: diagnostic code "device 0 passed".
pub const ERROR_DIAG_PASSED: u8 = 0x01;

/// ATA commands (ATA8-ACS §7).
pub const CMD_DEVICE_RESET: u8 = 0x08;
pub const CMD_RECALIBRATE: u8 = 0x10;
pub const CMD_READ_SECTORS: u8 = 0x20;
pub const CMD_READ_SECTORS_NR: u8 = 0x21;
pub const CMD_READ_SECTORS_EXT: u8 = 0x24;
pub const CMD_READ_DMA_EXT: u8 = 0x25;
pub const CMD_READ_MULTIPLE_EXT: u8 = 0x29;
pub const CMD_WRITE_SECTORS: u8 = 0x30;
pub const CMD_WRITE_SECTORS_NR: u8 = 0x31;
pub const CMD_WRITE_SECTORS_EXT: u8 = 0x34;
pub const CMD_WRITE_DMA_EXT: u8 = 0x35;
pub const CMD_WRITE_MULTIPLE_EXT: u8 = 0x39;
pub const CMD_READ_VERIFY: u8 = 0x40;
pub const CMD_READ_VERIFY_NR: u8 = 0x41;
pub const CMD_READ_VERIFY_EXT: u8 = 0x42;
pub const CMD_INIT_DEVICE_PARAMS: u8 = 0x91;
pub const CMD_PACKET: u8 = 0xa0;
pub const CMD_IDENTIFY_PACKET: u8 = 0xa1;
pub const CMD_READ_MULTIPLE: u8 = 0xc4;
pub const CMD_WRITE_MULTIPLE: u8 = 0xc5;
pub const CMD_SET_MULTIPLE: u8 = 0xc6;
pub const CMD_READ_DMA: u8 = 0xc8;
pub const CMD_WRITE_DMA: u8 = 0xca;
pub const CMD_STANDBY_IMMEDIATE: u8 = 0xe0;
pub const CMD_IDLE_IMMEDIATE: u8 = 0xe1;
pub const CMD_STANDBY: u8 = 0xe2;
pub const CMD_IDLE: u8 = 0xe3;
pub const CMD_CHECK_POWER_MODE: u8 = 0xe5;
pub const CMD_FLUSH_CACHE: u8 = 0xe7;
pub const CMD_FLUSH_CACHE_EXT: u8 = 0xea;
pub const CMD_IDENTIFY: u8 = 0xec;
pub const CMD_SET_FEATURES: u8 = 0xef;

/// SET FEATURES subcommands (ATA8-ACS §7.48).
const SF_ENABLE_WRITE_CACHE: u8 = 0x02;
const SF_SET_TRANSFER_MODE: u8 = 0x03;
const SF_DISABLE_READ_LOOK_AHEAD: u8 = 0x55;
const SF_DISABLE_REVERT: u8 = 0x66;
const SF_DISABLE_WRITE_CACHE: u8 = 0x82;
const SF_ENABLE_READ_LOOK_AHEAD: u8 = 0xaa;
const SF_ENABLE_REVERT: u8 = 0xcc;
/// Transfer-mode values of SET FEATURES 03h: PIO default/flow control, multiword DMA, UDMA.
const XFER_PIO: u8 = 0x08;
const XFER_MWDMA: u8 = 0x20;
const XFER_UDMA: u8 = 0x40;

/// CHECK POWER MODE count: the device is active or idle.
const POWER_ACTIVE: u16 = 0xff;
/// Largest DRQ block of READ/WRITE MULTIPLE (IDENTIFY word 47).
const MAX_MULTIPLE: u8 = 16;
/// CHS geometry IDENTIFY reports for old software.
const HEADS: u64 = 16;
const SECTORS_PER_TRACK: u64 = 63;
const MAX_CYLINDERS: u64 = 16383;
/// Largest LBA28 sector count.
const LBA28_MAX: u64 = 0x0fff_ffff;

/// How a command ends on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A Register D2H FIS with the I bit (PxIS.DHRS).
    D2h,
    /// A PIO Setup FIS announcing `bytes` (PxIS.PSS), for PIO data-in commands.
    PioIn { bytes: u16 },
}

/// What a device answers to one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub tf: TaskFile,
    pub ending: Ending,
}

impl Reply {
    /// Success with no data of note.
    pub fn ok() -> Self {
        Self::with(TaskFile {
            status: STATUS_READY,
            ..TaskFile::default()
        })
    }

    pub fn with(tf: TaskFile) -> Self {
        Self {
            tf,
            ending: Ending::D2h,
        }
    }

    /// Failure with `error` in the error register.
    pub fn error(error: u8) -> Self {
        Self::with(TaskFile {
            status: STATUS_READY | STATUS_ERR,
            error,
            ..TaskFile::default()
        })
    }

    pub fn failed(&self) -> bool {
        self.tf.status & STATUS_ERR != 0
    }
}

/// The task file of a disk after reset: the ATA signature (count 1, LBA 0x000001).
pub fn disk_signature() -> TaskFile {
    TaskFile {
        status: STATUS_READY,
        error: ERROR_DIAG_PASSED,
        lba: 0x00_0001,
        device: 0,
        count: 1,
    }
}

/// IDENTIFY data: 256 little-endian words.
pub struct IdentifyData(pub [u16; 256]);

impl IdentifyData {
    pub fn new() -> Self {
        Self([0; 256])
    }

    pub fn set(&mut self, word: usize, value: u16) {
        if let Some(w) = self.0.get_mut(word) {
            *w = value;
        }
    }

    /// An ATA string: `words` words from `word` on, space padded, two characters per word
    /// with the first in the high byte.
    pub fn set_string(&mut self, word: usize, words: usize, s: &str) {
        let mut bytes = vec![b' '; words * 2];
        for (d, c) in bytes
            .iter_mut()
            .zip(s.bytes().filter(|c| c.is_ascii_graphic() || *c == b' '))
        {
            *d = c;
        }
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            self.set(word + i, u16::from_be_bytes([pair[0], pair[1]]));
        }
    }

    /// The words a disk and a packet device share: serial, firmware revision and model
    /// strings, capabilities (IORDY, LBA, DMA), transfer modes, SATA speeds, versions.
    pub fn set_common(&mut self, serial: &str, model: &str, mode: XferMode) {
        self.set_string(10, 10, serial);
        self.set_string(23, 4, env!("CARGO_PKG_VERSION"));
        self.set_string(27, 20, model);
        self.set(49, 1 << 11 | 1 << 9 | 1 << 8);
        let (w63, w88) = mode.words();
        self.set(63, w63);
        // Word 64: PIO modes 3 and 4; words 65-68: cycle times in ns.
        self.set(64, 0x0003);
        for w in 65..=68 {
            self.set(w, 120);
        }
        // Word 76: SATA Gen1, Gen2 and Gen3 signalling speeds.
        self.set(76, 1 << 3 | 1 << 2 | 1 << 1);
        // Word 80: ATA/ATAPI-4 to ATA8-ACS.
        self.set(80, 0x01f0);
        self.set(88, w88);
    }

    /// Sets word 255: the signature 0xA5 and the checksum that makes all 512 bytes sum to 0.
    pub fn seal(mut self) -> [u8; 512] {
        self.0[255] = 0x00a5;
        let mut out = [0u8; 512];
        for (o, w) in out.chunks_exact_mut(2).zip(self.0.iter()) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        let sum = out.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        out[511] = sum.wrapping_neg();
        out
    }
}

impl Default for IdentifyData {
    fn default() -> Self {
        Self::new()
    }
}

/// The transfer modes a guest selected with SET FEATURES (IDENTIFY words 63 and 88).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum XferMode {
    Pio,
    MultiwordDma(u8),
    UltraDma(u8),
}

impl XferMode {
    /// Parses a SET FEATURES 03h count value; `None` for modes this device lacks.
    pub fn parse(v: u8) -> Option<Self> {
        match v & 0xf8 {
            0 | XFER_PIO => Some(Self::Pio),
            XFER_MWDMA if v & 7 <= 2 => Some(Self::MultiwordDma(v & 7)),
            XFER_UDMA if v & 7 <= 6 => Some(Self::UltraDma(v & 7)),
            _ => None,
        }
    }

    /// IDENTIFY words 63 and 88: modes supported in the low byte, the selected one above.
    pub fn words(self) -> (u16, u16) {
        let mw = 0x0007u16;
        let (mw_sel, udma_sel) = match self {
            Self::Pio => (0, 0),
            Self::MultiwordDma(m) => (1u16 << (8 + m), 0),
            Self::UltraDma(m) => (0, 1u16 << (8 + m)),
        };
        (mw | mw_sel, 0x007f | udma_sel)
    }
}

/// A hard disk: the image and the settings a guest can change.
pub struct AtaDisk {
    medium: Medium,
    serial: String,
    write_cache: bool,
    look_ahead: bool,
    multiple: u8,
    mode: XferMode,
}

impl AtaDisk {
    pub fn new(medium: Medium, serial: &str) -> Self {
        Self {
            medium,
            serial: serial.to_owned(),
            write_cache: true,
            look_ahead: true,
            multiple: MAX_MULTIPLE,
            mode: XferMode::UltraDma(5),
        }
    }

    pub fn sectors(&self) -> u64 {
        self.medium.sectors(SECTOR)
    }

    /// The settings a guest changed, for a saved VM.
    pub(super) fn save(&self) -> super::state::DiskState {
        super::state::DiskState {
            write_cache: self.write_cache,
            look_ahead: self.look_ahead,
            multiple: self.multiple,
            mode: self.mode,
        }
    }

    /// Takes back saved settings.
    pub(super) fn restore(&mut self, s: &super::state::DiskState) {
        self.write_cache = s.write_cache;
        self.look_ahead = s.look_ahead;
        self.multiple = s.multiple;
        self.mode = s.mode;
    }

    pub fn read_only(&self) -> bool {
        self.medium.read_only()
    }

    /// Back to power-on settings (a COMRESET or a software reset).
    pub fn reset(&mut self) {
        self.write_cache = true;
        self.look_ahead = true;
        self.multiple = MAX_MULTIPLE;
        self.mode = XferMode::UltraDma(5);
    }

    /// Runs one command.
    pub fn execute(&mut self, fis: &H2dFis, xfer: &mut Transfer) -> Result<Reply, AhciError> {
        match fis.command {
            CMD_IDENTIFY => {
                let data = self.identify();
                xfer.put(&data)?;
                Ok(pio_in(data.len()))
            }
            CMD_READ_DMA | CMD_READ_SECTORS | CMD_READ_SECTORS_NR | CMD_READ_MULTIPLE => {
                let (lba, n) = (fis.lba28(), count28(fis.count));
                self.read(lba, n, xfer)?;
                Ok(if fis.command == CMD_READ_DMA {
                    Reply::ok()
                } else {
                    pio_in_sectors(n)
                })
            }
            CMD_READ_DMA_EXT | CMD_READ_SECTORS_EXT | CMD_READ_MULTIPLE_EXT => {
                let (lba, n) = (fis.lba48, count48(fis.count));
                self.read(lba, n, xfer)?;
                Ok(if fis.command == CMD_READ_DMA_EXT {
                    Reply::ok()
                } else {
                    pio_in_sectors(n)
                })
            }
            CMD_WRITE_DMA | CMD_WRITE_SECTORS | CMD_WRITE_SECTORS_NR | CMD_WRITE_MULTIPLE => {
                self.write(fis.lba28(), count28(fis.count), xfer)?;
                Ok(Reply::ok())
            }
            CMD_WRITE_DMA_EXT | CMD_WRITE_SECTORS_EXT | CMD_WRITE_MULTIPLE_EXT => {
                self.write(fis.lba48, count48(fis.count), xfer)?;
                Ok(Reply::ok())
            }
            CMD_READ_VERIFY | CMD_READ_VERIFY_NR => {
                self.check_range(fis.lba28(), count28(fis.count))?;
                Ok(Reply::ok())
            }
            CMD_READ_VERIFY_EXT => {
                self.check_range(fis.lba48, count48(fis.count))?;
                Ok(Reply::ok())
            }
            CMD_FLUSH_CACHE | CMD_FLUSH_CACHE_EXT => {
                self.medium.flush()?;
                Ok(Reply::ok())
            }
            CMD_SET_FEATURES => self.set_features(fis),
            CMD_SET_MULTIPLE => {
                let n = fis.count as u8;
                if n == 0 || !n.is_power_of_two() || n > MAX_MULTIPLE {
                    return Err(AhciError::InvalidField);
                }
                self.multiple = n;
                Ok(Reply::ok())
            }
            CMD_STANDBY_IMMEDIATE
            | CMD_IDLE_IMMEDIATE
            | CMD_STANDBY
            | CMD_IDLE
            | CMD_INIT_DEVICE_PARAMS
            | CMD_RECALIBRATE => Ok(Reply::ok()),
            CMD_CHECK_POWER_MODE => Ok(Reply::with(TaskFile {
                status: STATUS_READY,
                count: POWER_ACTIVE,
                ..TaskFile::default()
            })),
            command => Err(AhciError::UnknownCommand { command }),
        }
    }

    fn check_range(&self, lba: u64, count: u64) -> Result<(), AhciError> {
        match lba.checked_add(count) {
            Some(end) if end <= self.sectors() => Ok(()),
            _ => Err(AhciError::LbaRange { lba, count }),
        }
    }

    fn read(&self, lba: u64, count: u64, xfer: &mut Transfer) -> Result<(), AhciError> {
        self.check_range(lba, count)?;
        self.medium.read_into(xfer, lba * SECTOR, count * SECTOR)
    }

    fn write(&self, lba: u64, count: u64, xfer: &mut Transfer) -> Result<(), AhciError> {
        if self.medium.read_only() {
            return Err(AhciError::ReadOnly);
        }
        self.check_range(lba, count)?;
        self.medium.write_from(xfer, lba * SECTOR, count * SECTOR)?;
        if !self.write_cache {
            self.medium.flush()?;
        }
        Ok(())
    }

    fn set_features(&mut self, fis: &H2dFis) -> Result<Reply, AhciError> {
        match fis.feature() {
            SF_ENABLE_WRITE_CACHE => self.write_cache = true,
            SF_DISABLE_WRITE_CACHE => self.write_cache = false,
            SF_ENABLE_READ_LOOK_AHEAD => self.look_ahead = true,
            SF_DISABLE_READ_LOOK_AHEAD => self.look_ahead = false,
            SF_ENABLE_REVERT | SF_DISABLE_REVERT => {}
            SF_SET_TRANSFER_MODE => {
                self.mode = XferMode::parse(fis.count as u8).ok_or(AhciError::InvalidField)?;
            }
            _ => return Err(AhciError::InvalidField),
        }
        Ok(Reply::ok())
    }

    /// IDENTIFY DEVICE data (ATA8-ACS §7.16, the words libata and storahci read).
    pub fn identify(&self) -> [u8; 512] {
        let sectors = self.sectors();
        let mut id = IdentifyData::new();
        let cylinders = (sectors / (HEADS * SECTORS_PER_TRACK)).clamp(1, MAX_CYLINDERS);
        let chs = (cylinders * HEADS * SECTORS_PER_TRACK) as u32;
        let lba28 = sectors.min(LBA28_MAX) as u32;
        // Word 0: fixed ATA device.
        id.set(0, 0x0040);
        id.set(1, cylinders as u16);
        id.set(3, HEADS as u16);
        id.set(6, SECTORS_PER_TRACK as u16);
        id.set_common(&self.serial, "HOSPES HARDDISK", self.mode);
        // Word 47: READ/WRITE MULTIPLE up to 16 sectors per DRQ block.
        id.set(47, 0x8000 | u16::from(MAX_MULTIPLE));
        // Word 50: bit 14 shall be one.
        id.set(50, 0x4000);
        // Word 53: words 54-58, 64-70 and 88 are valid.
        id.set(53, 0x0007);
        id.set(54, cylinders as u16);
        id.set(55, HEADS as u16);
        id.set(56, SECTORS_PER_TRACK as u16);
        id.set(57, chs as u16);
        id.set(58, (chs >> 16) as u16);
        id.set(59, 0x0100 | u16::from(self.multiple));
        id.set(60, lba28 as u16);
        id.set(61, (lba28 >> 16) as u16);
        // Words 82-87: command sets supported and enabled: NOP, look-ahead, write cache,
        // FLUSH CACHE, FLUSH CACHE EXT, 48-bit addresses.
        id.set(82, 1 << 14 | 1 << 6 | 1 << 5);
        id.set(83, 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10);
        id.set(84, 1 << 14);
        id.set(
            85,
            1 << 14 | u16::from(self.look_ahead) << 6 | u16::from(self.write_cache) << 5,
        );
        id.set(86, 1 << 13 | 1 << 12 | 1 << 10);
        id.set(87, 1 << 14);
        for (i, w) in (100..104).enumerate() {
            id.set(w, (sectors >> (16 * i)) as u16);
        }
        // Word 106: valid, one 512-byte logical sector per physical sector.
        id.set(106, 0x4000);
        // Word 217: non-rotating medium.
        id.set(217, 1);
        id.seal()
    }
}

/// Sector count of an LBA28 command: 0 means 256.
fn count28(c: u16) -> u64 {
    match c & 0xff {
        0 => 256,
        n => u64::from(n),
    }
}

/// Sector count of an LBA48 command: 0 means 65536.
fn count48(c: u16) -> u64 {
    match c {
        0 => 65536,
        n => u64::from(n),
    }
}

fn pio_in(bytes: usize) -> Reply {
    Reply {
        tf: TaskFile {
            status: STATUS_READY,
            ..TaskFile::default()
        },
        ending: Ending::PioIn {
            bytes: bytes.min(usize::from(u16::MAX)) as u16,
        },
    }
}

/// A PIO read ends with a PIO Setup FIS for its last DRQ block.
fn pio_in_sectors(count: u64) -> Reply {
    pio_in((count * SECTOR).min(u64::from(u16::MAX)) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ata_strings_swap_bytes_and_pad_with_spaces() {
        let mut id = IdentifyData::new();
        id.set_string(27, 3, "ABC\u{7f}");
        assert_eq!(&id.0[27..30], &[0x4142, 0x4320, 0x2020]);
    }

    #[test]
    fn sealed_identify_sums_to_zero() {
        let mut id = IdentifyData::new();
        id.set(0, 0x1234);
        let b = id.seal();
        assert_eq!(b[510], 0xa5);
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
    }

    #[test]
    fn transfer_modes_outside_the_device_are_refused() {
        assert_eq!(XferMode::parse(0x45), Some(XferMode::UltraDma(5)));
        assert_eq!(XferMode::parse(0x22), Some(XferMode::MultiwordDma(2)));
        assert_eq!(XferMode::parse(0x47), None);
        assert_eq!(XferMode::parse(0x10), None);
        assert_eq!(XferMode::UltraDma(5).words(), (0x0007, 0x207f));
    }
}
