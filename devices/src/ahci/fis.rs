//! The SATA frames (FIS) and AHCI in-memory structures a command passes through.
//!
//! Data flow: the guest builds a command header in its command list (AHCI 1.3.1 §4.2.2)
//! pointing at a command table whose first bytes are a Register Host-to-Device FIS
//! ([`H2dFis`], SATA 3.x §10.5.5); the device answers by the HBA writing a Register
//! Device-to-Host FIS or a PIO Setup FIS ([`TaskFile::d2h_fis`], [`TaskFile::pio_setup_fis`])
//! into the port's received-FIS area at the offsets below. Everything here is plain byte
//! layout: parsing reads fixed-size arrays, so no index can fall outside them.

/// FIS type of a Register Host-to-Device FIS.
pub const FIS_TYPE_REG_H2D: u8 = 0x27;
/// FIS type of a Register Device-to-Host FIS.
pub const FIS_TYPE_REG_D2H: u8 = 0x34;
/// FIS type of a PIO Setup FIS.
pub const FIS_TYPE_PIO_SETUP: u8 = 0x5f;

/// H2D FIS byte 1, bit 7: the FIS updates the Command register (otherwise the Control one).
const H2D_C: u8 = 0x80;
/// D2H / PIO Setup FIS byte 1, bit 6: interrupt.
const FIS_I: u8 = 0x40;
/// PIO Setup FIS byte 1, bit 5: data direction is device to host.
const PIO_D: u8 = 0x20;
/// Device Control register bit 2: software reset (SRST).
pub const CONTROL_SRST: u8 = 0x04;

/// Received-FIS area (AHCI 1.3.1 §4.2.1): offsets of the frames the HBA stores.
pub const RFIS_PIO_SETUP: u64 = 0x20;
pub const RFIS_D2H: u64 = 0x40;
/// Length of a Register D2H FIS and of a PIO Setup FIS.
pub const D2H_LEN: usize = 20;
pub const PIO_SETUP_LEN: usize = 20;

/// Command list: 32 headers of 32 bytes (AHCI 1.3.1 §4.2.2).
pub const HEADER_LEN: u64 = 32;
/// Command table: the command FIS at 0x00, the ATAPI command at 0x40, the PRDT at 0x80.
pub const CT_CFIS_LEN: usize = 64;
pub const CT_ACMD: u64 = 0x40;
pub const CT_ACMD_LEN: usize = 16;
pub const CT_PRDT: u64 = 0x80;
/// Header DW0 fields.
const HDR_CFL_MASK: u32 = 0x1f;
const HDR_ATAPI: u32 = 1 << 5;
const HDR_WRITE: u32 = 1 << 6;
/// A command FIS is at least 2 and at most 16 dwords; a Register H2D FIS needs 5.
pub const CFL_MIN: u8 = 5;
pub const CFL_MAX: u8 = 16;
/// The PRD byte count offset within a header (DW1), written back after a command.
pub const HDR_PRDBC: u64 = 4;
/// The command table base is 128-byte aligned: the low 7 bits are reserved.
const CTBA_RESERVED: u64 = 0x7f;

/// One command header from the command list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandHeader {
    /// Command FIS length in dwords.
    pub cfl: u8,
    /// The command is an ATAPI command (the CDB is at [`CT_ACMD`]).
    pub atapi: bool,
    /// Data flows host to device.
    pub write: bool,
    /// Number of PRDT entries.
    pub prdtl: u16,
    /// Command table base address.
    pub ctba: u64,
}

impl CommandHeader {
    pub fn parse(b: &[u8; HEADER_LEN as usize]) -> Self {
        let dw =
            |i: usize| u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let dw0 = dw(0);
        Self {
            cfl: (dw0 & HDR_CFL_MASK) as u8,
            atapi: dw0 & HDR_ATAPI != 0,
            write: dw0 & HDR_WRITE != 0,
            prdtl: (dw0 >> 16) as u16,
            ctba: (u64::from(dw(3)) << 32 | u64::from(dw(2))) & !CTBA_RESERVED,
        }
    }
}

/// A Register Host-to-Device FIS: the ATA command and its task-file registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct H2dFis {
    /// Updates the Command register (a command) rather than Device Control.
    pub is_command: bool,
    pub command: u8,
    /// Features 7:0 and 15:8.
    pub features: u16,
    /// LBA 47:0 as sent (LBA28 commands use bits 27:24 from `device`).
    pub lba48: u64,
    pub device: u8,
    /// Count 7:0 and 15:8.
    pub count: u16,
    pub control: u8,
}

impl H2dFis {
    /// Parses the first bytes of a command table; `None` if it is not a Register H2D FIS.
    pub fn parse(b: &[u8; CT_CFIS_LEN]) -> Option<Self> {
        if b[0] != FIS_TYPE_REG_H2D {
            return None;
        }
        Some(Self {
            is_command: b[1] & H2D_C != 0,
            command: b[2],
            features: u16::from_le_bytes([b[3], b[11]]),
            lba48: u64::from_le_bytes([b[4], b[5], b[6], b[8], b[9], b[10], 0, 0]),
            device: b[7],
            count: u16::from_le_bytes([b[12], b[13]]),
            control: b[15],
        })
    }

    /// The 28-bit LBA of a non-EXT command: LBA 23:0 plus device bits 3:0.
    pub fn lba28(&self) -> u64 {
        (self.lba48 & 0x00ff_ffff) | u64::from(self.device & 0x0f) << 24
    }

    /// Features 7:0.
    pub fn feature(&self) -> u8 {
        self.features as u8
    }

    /// Byte count limit of an ATAPI PACKET command (LBA 15:0, "cylinder" registers).
    pub fn byte_count_limit(&self) -> u16 {
        self.lba48 as u16
    }
}

/// The task-file registers a device reports when it ends (or pauses) a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskFile {
    pub status: u8,
    pub error: u8,
    /// LBA 47:0 (the signature of a device after reset is in LBA 23:8).
    pub lba: u64,
    pub device: u8,
    pub count: u16,
}

impl TaskFile {
    /// The PxTFD value: error in bits 15:8, status in bits 7:0.
    pub fn tfd(&self) -> u32 {
        u32::from(self.error) << 8 | u32::from(self.status)
    }

    /// The PxSIG value: count 7:0, LBA 7:0, LBA 15:8, LBA 23:16 (AHCI 1.3.1 §3.3.9).
    pub fn signature(&self) -> u32 {
        u32::from(self.count as u8) | (self.lba as u32 & 0x00ff_ffff) << 8
    }

    fn put_registers(&self, f: &mut [u8; D2H_LEN]) {
        f[2] = self.status;
        f[3] = self.error;
        let l = self.lba.to_le_bytes();
        f[4..7].copy_from_slice(&l[0..3]);
        f[7] = self.device;
        f[8..11].copy_from_slice(&l[3..6]);
        f[12..14].copy_from_slice(&self.count.to_le_bytes());
    }

    /// A Register Device-to-Host FIS carrying these registers; `interrupt` sets its I bit.
    pub fn d2h_fis(&self, interrupt: bool) -> [u8; D2H_LEN] {
        let mut f = [0u8; D2H_LEN];
        f[0] = FIS_TYPE_REG_D2H;
        f[1] = if interrupt { FIS_I } else { 0 };
        self.put_registers(&mut f);
        f
    }

    /// A PIO Setup FIS announcing a device-to-host transfer of `bytes`, with `self.status`
    /// as the status at the end of the transfer (E_Status) and `data_status` (DRQ set)
    /// during it.
    pub fn pio_setup_fis(&self, data_status: u8, bytes: u16) -> [u8; PIO_SETUP_LEN] {
        let mut f = [0u8; PIO_SETUP_LEN];
        self.put_registers(&mut f);
        f[0] = FIS_TYPE_PIO_SETUP;
        f[1] = PIO_D | FIS_I;
        f[2] = data_status;
        f[15] = self.status;
        f[16..18].copy_from_slice(&bytes.to_le_bytes());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_lba48_read_command() {
        let mut b = [0u8; CT_CFIS_LEN];
        b[..16].copy_from_slice(&[
            0x27, 0x80, 0x25, 0x01, 0x11, 0x22, 0x33, 0x40, 0x44, 0x55, 0x66, 0x00, 0x08, 0x01, 0,
            0,
        ]);
        let f = H2dFis::parse(&b).unwrap();
        assert!(f.is_command);
        assert_eq!(f.command, 0x25);
        assert_eq!(f.lba48, 0x6655_4433_2211);
        assert_eq!(f.count, 0x108);
        b[0] = 0x34;
        assert_eq!(H2dFis::parse(&b), None);
    }

    #[test]
    fn lba28_takes_its_top_bits_from_the_device_register() {
        let f = H2dFis {
            lba48: 0xff_ff12_3456,
            device: 0xe7,
            ..H2dFis::default()
        };
        assert_eq!(f.lba28(), 0x712_3456);
    }

    #[test]
    fn header_masks_reserved_table_address_bits() {
        let mut b = [0u8; 32];
        b[0] = 0x25; // CFL 5, ATAPI
        b[2..4].copy_from_slice(&3u16.to_le_bytes());
        b[8..12].copy_from_slice(&0x1234_56ffu32.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        let h = CommandHeader::parse(&b);
        assert_eq!(
            h,
            CommandHeader {
                cfl: 5,
                atapi: true,
                write: false,
                prdtl: 3,
                ctba: 0x1_1234_5680,
            }
        );
    }

    #[test]
    fn signature_packs_count_and_lba() {
        let t = TaskFile {
            count: 1,
            lba: 0xeb_1401,
            ..TaskFile::default()
        };
        assert_eq!(t.signature(), 0xeb14_0101);
        let p = t.pio_setup_fis(0x58, 512);
        assert_eq!(
            (p[0], p[1], p[2], p[15], p[16], p[17]),
            (0x5f, 0x60, 0x58, 0, 0, 2)
        );
    }
}
