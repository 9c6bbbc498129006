//! The register map of BAR0 (xHCI 1.2 chapter 5), laid out as QEMU's qemu-xhci does:
//!
//! | offset   | block                                                        |
//! |----------|--------------------------------------------------------------|
//! | `0x0000` | capability registers; extended capabilities at `0x20`        |
//! | `0x0040` | operational registers; port register sets from `0x0440`      |
//! | `0x1000` | runtime registers: MFINDEX, interrupters from `0x1020`       |
//! | `0x2000` | doorbell array: DB0 the command ring, DBn slot n             |
//! | `0x3000` | MSI-X table                                                  |
//! | `0x3800` | MSI-X pending bit array                                      |
//!
//! Data flow: [`super::Xhci`]'s bus access splits an access into dwords and hands each
//! to the block's handler; this module holds the offsets, bit names and the read-only
//! capability values.

use super::ring::ERST_MAX;

/// BAR0 size (QEMU: 16 KiB).
pub const BAR_SIZE: u64 = 0x4000;
/// CAPLENGTH: where the operational registers start.
pub const CAP_LENGTH: u64 = 0x40;
/// RTSOFF and DBOFF (xHCI 1.2 §5.3.7, §5.3.8).
pub const RUNTIME_OFFSET: u64 = 0x1000;
pub const DOORBELL_OFFSET: u64 = 0x2000;
pub const MSIX_TABLE_OFFSET: u64 = 0x3000;
pub const MSIX_PBA_OFFSET: u64 = 0x3800;
/// Extended capabilities (Supported Protocol) start here, in the capability block.
pub const XECP_OFFSET: u64 = 0x20;

/// Device slots (HCSPARAMS1.MaxSlots).
pub const MAX_SLOTS: u8 = 64;
/// Interrupters (HCSPARAMS1.MaxIntrs), one MSI-X vector each.
pub const MAX_INTRS: u16 = 16;
/// Root hub ports (HCSPARAMS1.MaxPorts).
pub const MAX_PORTS: u8 = 8;
/// As QEMU's qemu-xhci: USB 3 ports first (1-4), then USB 2 (5-8).
pub const USB3_FIRST_PORT: u8 = 1;
pub const USB3_PORTS: u8 = 4;
pub const USB2_FIRST_PORT: u8 = 5;
pub const USB2_PORTS: u8 = 4;

/// HCIVERSION 1.0.0 in the upper half, CAPLENGTH in the lower byte (QEMU reports 0x0100).
const HCIVERSION: u32 = 0x0100;
/// HCSPARAMS2: IST (bits 3:0, 0xf as QEMU) and ERST Max (bits 7:4, log2 of the ERST size);
/// no scratchpad buffers.
const HCSPARAMS2: u32 = 0xf | ERST_MAX.trailing_zeros() << 4;
/// HCCPARAMS1: AC64 (bit 0), CSZ = 0 (32-byte contexts), xECP (bits 31:16, in dwords).
const HCCPARAMS1: u32 = 1 | ((XECP_OFFSET as u32) / 4) << 16;

/// Extended capability ID of Supported Protocol (xHCI 1.2 Table 7-1).
const XCAP_SUPPORTED_PROTOCOL: u32 = 2;
/// "USB " in the Name String dword.
const PROTOCOL_NAME_USB: u32 = 0x2042_5355;

/// Reads capability dword `offset` (extended capabilities included).
pub fn capability(offset: u64) -> u32 {
    match offset {
        0x00 => HCIVERSION << 16 | CAP_LENGTH as u32,
        0x04 => u32::from(MAX_PORTS) << 24 | u32::from(MAX_INTRS) << 8 | u32::from(MAX_SLOTS),
        0x08 => HCSPARAMS2,
        0x0c => 0,
        0x10 => HCCPARAMS1,
        0x14 => DOORBELL_OFFSET as u32,
        0x18 => RUNTIME_OFFSET as u32,
        0x1c => 0,
        // Supported Protocol, USB 3.0: next capability 4 dwords on.
        0x20 => 0x0300 << 16 | 4 << 8 | XCAP_SUPPORTED_PROTOCOL,
        0x24 | 0x34 => PROTOCOL_NAME_USB,
        0x28 => u32::from(USB3_PORTS) << 8 | u32::from(USB3_FIRST_PORT),
        // Supported Protocol, USB 2.0: the last one.
        0x30 => 0x0200 << 16 | XCAP_SUPPORTED_PROTOCOL,
        0x38 => u32::from(USB2_PORTS) << 8 | u32::from(USB2_FIRST_PORT),
        _ => 0,
    }
}

/// Operational registers, relative to [`CAP_LENGTH`] (xHCI 1.2 §5.4).
pub const USBCMD: u64 = 0x00;
pub const USBSTS: u64 = 0x04;
pub const PAGESIZE: u64 = 0x08;
pub const DNCTRL: u64 = 0x14;
pub const CRCR_LO: u64 = 0x18;
pub const CRCR_HI: u64 = 0x1c;
pub const DCBAAP_LO: u64 = 0x30;
pub const DCBAAP_HI: u64 = 0x34;
pub const CONFIG: u64 = 0x38;
/// Port register sets: 16 bytes per port from here.
pub const PORT_BASE: u64 = 0x400;
pub const PORT_STRIDE: u64 = 0x10;

/// USBCMD bits.
pub const USBCMD_RS: u32 = 1 << 0;
pub const USBCMD_HCRST: u32 = 1 << 1;
pub const USBCMD_INTE: u32 = 1 << 2;
/// The bits kept as written: R/S, INTE, HSEE, LHCRST excluded, CSS/CRS act, EWE, EU3S, CME.
pub const USBCMD_STORED: u32 = USBCMD_RS | USBCMD_INTE | 1 << 3 | 1 << 10 | 1 << 11 | 1 << 13;
/// USBCMD CSS and CRS (save/restore state): complete at once.
pub const USBCMD_CSS: u32 = 1 << 8;
pub const USBCMD_CRS: u32 = 1 << 9;

/// USBSTS bits.
pub const USBSTS_HCH: u32 = 1 << 0;
pub const USBSTS_HSE: u32 = 1 << 2;
pub const USBSTS_EINT: u32 = 1 << 3;
pub const USBSTS_PCD: u32 = 1 << 4;
pub const USBSTS_SRE: u32 = 1 << 10;
pub const USBSTS_CNR: u32 = 1 << 11;
pub const USBSTS_HCE: u32 = 1 << 12;
/// Write-1-to-clear bits of USBSTS.
pub const USBSTS_W1C: u32 = USBSTS_HSE | USBSTS_EINT | USBSTS_PCD | USBSTS_SRE;

/// PAGESIZE: 4 KiB pages only.
pub const PAGESIZE_4K: u32 = 1;

/// CRCR bits (xHCI 1.2 §5.4.5).
pub const CRCR_RCS: u64 = 1 << 0;
pub const CRCR_CS: u64 = 1 << 1;
pub const CRCR_CA: u64 = 1 << 2;
pub const CRCR_CRR: u64 = 1 << 3;

/// Runtime registers (xHCI 1.2 §5.5), relative to [`RUNTIME_OFFSET`].
pub const MFINDEX: u64 = 0x00;
pub const INTERRUPTER_BASE: u64 = 0x20;
pub const INTERRUPTER_STRIDE: u64 = 0x20;
/// Interrupter register offsets.
pub const IMAN: u64 = 0x00;
pub const IMOD: u64 = 0x04;
pub const ERSTSZ: u64 = 0x08;
pub const ERSTBA_LO: u64 = 0x10;
pub const ERSTBA_HI: u64 = 0x14;
pub const ERDP_LO: u64 = 0x18;
pub const ERDP_HI: u64 = 0x1c;

/// IMAN bits.
pub const IMAN_IP: u32 = 1 << 0;
pub const IMAN_IE: u32 = 1 << 1;
/// ERDP: Event Handler Busy (write 1 to clear), Dequeue ERST Segment Index.
pub const ERDP_EHB: u64 = 1 << 3;
pub const ERDP_DESI: u64 = 7;

/// MFINDEX: 14 bits of 125 µs microframes.
pub const MFINDEX_MASK: u32 = 0x3fff;
pub const MICROFRAME_NS: u128 = 125_000;
