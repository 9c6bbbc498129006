//! Register offsets in BAR0 and the bits the model acts on (Intel 82574 GbE Controller
//! Family datasheet, chapter 10). Every other register in BAR0 is plain storage.

/// Device control: link up, reset, VLAN mode, GIO master disable.
pub const CTRL: u64 = 0x0000;
pub const CTRL_GIO_MASTER_DISABLE: u32 = 1 << 2;
pub const CTRL_SLU: u32 = 1 << 6;
pub const CTRL_RST: u32 = 1 << 26;
pub const CTRL_VME: u32 = 1 << 30;
pub const CTRL_PHY_RST: u32 = 1 << 31;
/// A second, older address of CTRL the datasheet keeps.
pub const CTRL_DUP: u64 = 0x0004;

pub const STATUS: u64 = 0x0008;
pub const STATUS_FD: u32 = 1 << 0;
pub const STATUS_LU: u32 = 1 << 1;
pub const STATUS_SPEED_1000: u32 = 2 << 6;
/// Auto-speed detection value: 1000 Mb/s.
pub const STATUS_ASDV_1000: u32 = 2 << 8;
pub const STATUS_GIO_MASTER_ENABLE: u32 = 1 << 19;

/// EEPROM/flash control: request/grant, present, auto-read done.
pub const EECD: u64 = 0x0010;
pub const EECD_REQ: u32 = 1 << 6;
pub const EECD_GNT: u32 = 1 << 7;
pub const EECD_PRES: u32 = 1 << 8;
pub const EECD_AUTO_RD: u32 = 1 << 9;
/// EEPROM read: START, DONE, word address in bits 15:2, data in 31:16.
pub const EERD: u64 = 0x0014;
pub const EERD_START: u32 = 1 << 0;
pub const EERD_DONE: u32 = 1 << 1;
pub const EERD_ADDR_SHIFT: u32 = 2;

pub const CTRL_EXT: u64 = 0x0018;
/// Extended interrupt auto-mask enable (MSI-X).
pub const CTRL_EXT_EIAME: u32 = 1 << 24;
/// Interrupt acknowledge auto-mask enable (ICR read).
pub const CTRL_EXT_IAME: u32 = 1 << 27;

/// MDI control: PHY register access.
pub const MDIC: u64 = 0x0020;
pub const MDIC_DATA_MASK: u32 = 0xffff;
pub const MDIC_REG_SHIFT: u32 = 16;
pub const MDIC_PHY_SHIFT: u32 = 21;
pub const MDIC_OP_WRITE: u32 = 1 << 26;
pub const MDIC_OP_READ: u32 = 2 << 26;
pub const MDIC_READY: u32 = 1 << 28;
pub const MDIC_ERROR: u32 = 1 << 30;

/// Interrupt cause read, set, mask set/read, mask clear, auto-mask.
pub const ICR: u64 = 0x00c0;
pub const ITR: u64 = 0x00c4;
pub const ICS: u64 = 0x00c8;
pub const IMS: u64 = 0x00d0;
pub const IMC: u64 = 0x00d8;
/// Extended interrupt auto-clear (MSI-X queue causes).
pub const EIAC: u64 = 0x00dc;
pub const IAM: u64 = 0x00e0;
/// MSI-X vector of each queue cause and of "other".
pub const IVAR: u64 = 0x00e4;
/// Per-vector throttling (accepted, not applied).
pub const EITR0: u64 = 0x00e8;

/// Interrupt cause bits.
pub const ICR_TXDW: u32 = 1 << 0;
pub const ICR_TXQE: u32 = 1 << 1;
pub const ICR_LSC: u32 = 1 << 2;
pub const ICR_RXDMT0: u32 = 1 << 4;
pub const ICR_RXO: u32 = 1 << 6;
pub const ICR_RXT0: u32 = 1 << 7;
pub const ICR_RXQ0: u32 = 1 << 20;
pub const ICR_RXQ1: u32 = 1 << 21;
pub const ICR_TXQ0: u32 = 1 << 22;
pub const ICR_TXQ1: u32 = 1 << 23;
pub const ICR_OTHER: u32 = 1 << 24;
pub const ICR_INT_ASSERTED: u32 = 1 << 31;
/// The MSI-X queue and "other" bits.
pub const ICR_MSIX_MASK: u32 = ICR_RXQ0 | ICR_RXQ1 | ICR_TXQ0 | ICR_TXQ1 | ICR_OTHER;
/// IVAR: a 4-bit field per cause (vector in bits 2:0, valid in bit 3): RxQ0, RxQ1, TxQ0,
/// TxQ1, Other.
pub const IVAR_VALID: u32 = 1 << 3;

pub const RCTL: u64 = 0x0100;
pub const RCTL_EN: u32 = 1 << 1;
pub const RCTL_UPE: u32 = 1 << 3;
pub const RCTL_MPE: u32 = 1 << 4;
pub const RCTL_LPE: u32 = 1 << 5;
pub const RCTL_MO_SHIFT: u32 = 12;
pub const RCTL_BAM: u32 = 1 << 15;
pub const RCTL_BSIZE_SHIFT: u32 = 16;
pub const RCTL_BSEX: u32 = 1 << 25;
pub const RCTL_SECRC: u32 = 1 << 26;
/// Descriptor type in bits 11:10: 00 legacy, 01 packet split (not modelled).
pub const RCTL_DTYP_SHIFT: u32 = 10;

pub const TCTL: u64 = 0x0400;
pub const TCTL_EN: u32 = 1 << 1;

/// Software/firmware semaphore of the 82574 (MDIO software ownership, bit 5).
pub const EXTCNF_CTRL: u64 = 0x0f00;
pub const EXTCNF_CTRL_SWFLAG: u32 = 1 << 5;

/// Receive queue 0 (queue 1 at +0x100 is stored, not used).
pub const RDBAL: u64 = 0x2800;
pub const RDBAH: u64 = 0x2804;
pub const RDLEN: u64 = 0x2808;
pub const RDH: u64 = 0x2810;
pub const RDT: u64 = 0x2818;
/// Transmit queue 0 (queue 1 at +0x100 is stored, not used).
pub const TDBAL: u64 = 0x3800;
pub const TDBAH: u64 = 0x3804;
pub const TDLEN: u64 = 0x3808;
pub const TDH: u64 = 0x3810;
pub const TDT: u64 = 0x3818;
/// Transmit descriptor control: the 82574 reports GRAN/WTHRESH defaults here.
pub const TXDCTL: u64 = 0x3828;

/// Statistics: every register in this range clears when read.
pub const STATS_START: u64 = 0x4000;
pub const STATS_END: u64 = 0x4100;
pub const MPC: u64 = 0x4010;
pub const GPRC: u64 = 0x4074;
pub const BPRC: u64 = 0x4078;
pub const MPRC: u64 = 0x407c;
pub const GPTC: u64 = 0x4080;
pub const GORCL: u64 = 0x4088;
pub const GOTCL: u64 = 0x4090;
pub const RNBC: u64 = 0x40a0;
pub const ROC: u64 = 0x40ac;
pub const TORL: u64 = 0x40c0;
pub const TOTL: u64 = 0x40c8;
pub const TPR: u64 = 0x40d0;
pub const TPT: u64 = 0x40d4;
pub const MPTC: u64 = 0x40f0;
pub const BPTC: u64 = 0x40f4;
pub const TSCTC: u64 = 0x40f8;

/// Receive checksum control: IP and TCP/UDP checksum offload.
pub const RXCSUM: u64 = 0x5000;
pub const RXCSUM_IPOFLD: u32 = 1 << 8;
pub const RXCSUM_TUOFLD: u32 = 1 << 9;
/// Receive filter control: extended descriptors.
pub const RFCTL: u64 = 0x5008;
pub const RFCTL_EXSTEN: u32 = 1 << 15;
/// Multicast table array: 128 dwords.
pub const MTA: u64 = 0x5200;
/// Receive address filters: RAL/RAH pairs, 16 of them.
pub const RA: u64 = 0x5400;
pub const RAH_AV: u32 = 1 << 31;
pub const RA_ENTRIES: u64 = 16;
/// VLAN filter table: 128 dwords (stored).
pub const VFTA: u64 = 0x5600;
/// VLAN ether type for inserted tags.
pub const VET: u64 = 0x0038;

/// Size of BAR0.
pub const BAR0_SIZE: u64 = 128 * 1024;
