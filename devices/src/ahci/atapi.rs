//! An ATAPI CD/DVD drive behind an AHCI port: SCSI/MMC packet commands over an ISO image.
//!
//! Data flow: a PACKET command (ATA 0xA0) carries a 12- or 16-byte CDB in the command
//! table's ACMD field; [`Cdrom::packet`] runs it (SPC-3, MMC-5) and streams its data
//! through the command's [`Transfer`], never more than the CDB's allocation length nor the
//! PRDT allows. A command that fails ends in CHECK CONDITION: ERR in the status, the sense
//! key in the error register's high nibble, and the full sense data kept for REQUEST SENSE.
//! The medium is an image of 2048-byte sectors that the host changes at run time
//! ([`Cdrom::insert`], [`Cdrom::eject`]) and the guest ejects with START STOP UNIT; every
//! change raises a unit attention, reported once: by REQUEST SENSE, or as CHECK
//! CONDITION to the first command other than INQUIRY, GET CONFIGURATION and GET EVENT
//! STATUS NOTIFICATION; and a media event for GET EVENT STATUS NOTIFICATION.

use super::AhciError;
use super::ata::{
    CMD_CHECK_POWER_MODE, CMD_DEVICE_RESET, CMD_IDENTIFY, CMD_IDENTIFY_PACKET, CMD_IDLE,
    CMD_IDLE_IMMEDIATE, CMD_SET_FEATURES, CMD_STANDBY, CMD_STANDBY_IMMEDIATE, ERROR_ABRT,
    ERROR_DIAG_PASSED, Ending, IdentifyData, Reply, STATUS_ERR, STATUS_READY, XferMode,
};
use super::backend::Medium;
use super::fis::{H2dFis, TaskFile};
use super::prdt::Transfer;

/// Bytes per CD/DVD sector.
pub const SECTOR: u64 = 2048;
/// Discs larger than this many sectors (80 minutes of CD) are reported as DVDs.
const CD_MAX_SECTORS: u64 = 80 * 60 * 75;
/// MSF addresses start 2 seconds (150 frames) before LBA 0.
const MSF_OFFSET: u64 = 150;

/// SCSI/MMC operation codes.
const TEST_UNIT_READY: u8 = 0x00;
const REQUEST_SENSE: u8 = 0x03;
const INQUIRY: u8 = 0x12;
const START_STOP_UNIT: u8 = 0x1b;
const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
const READ_CAPACITY_10: u8 = 0x25;
const READ_10: u8 = 0x28;
const SEEK_10: u8 = 0x2b;
const READ_TOC: u8 = 0x43;
const GET_CONFIGURATION: u8 = 0x46;
const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4a;
const READ_DISC_INFORMATION: u8 = 0x51;
const MODE_SENSE_10: u8 = 0x5a;
const READ_12: u8 = 0xa8;
const READ_DVD_STRUCTURE: u8 = 0xad;
const SET_CD_SPEED: u8 = 0xbb;
const MECHANISM_STATUS: u8 = 0xbd;
const READ_CD: u8 = 0xbe;

/// Sense keys (SPC-3 §4.5.6).
const NO_SENSE: u8 = 0x00;
const NOT_READY: u8 = 0x02;
const MEDIUM_ERROR: u8 = 0x03;
const ILLEGAL_REQUEST: u8 = 0x05;
const UNIT_ATTENTION: u8 = 0x06;
const ABORTED_COMMAND: u8 = 0x0b;
/// Additional sense codes (SPC-3 Annex D, MMC-5 Annex F).
const ASC_UNRECOVERED_READ_ERROR: u8 = 0x11;
const ASC_INVALID_OPCODE: u8 = 0x20;
const ASC_LBA_OUT_OF_RANGE: u8 = 0x21;
const ASC_INVALID_FIELD_IN_CDB: u8 = 0x24;
const ASC_MEDIUM_MAY_HAVE_CHANGED: u8 = 0x28;
const ASC_INCOMPATIBLE_FORMAT: u8 = 0x30;
const ASCQ_INCOMPATIBLE_FORMAT: u8 = 0x02;
const ASC_SAVING_NOT_SUPPORTED: u8 = 0x39;
const ASC_MEDIUM_NOT_PRESENT: u8 = 0x3a;
const ASC_MEDIUM_REMOVAL_PREVENTED: u8 = 0x53;
const ASCQ_MEDIUM_REMOVAL_PREVENTED: u8 = 0x02;

/// MMC profiles (MMC-5 §5.3.1).
const PROFILE_NONE: u16 = 0x0000;
const PROFILE_CD_ROM: u16 = 0x0008;
const PROFILE_DVD_ROM: u16 = 0x0010;
/// Mode pages.
const PAGE_ERROR_RECOVERY: u8 = 0x01;
const PAGE_CAPABILITIES: u8 = 0x2a;
const PAGE_ALL: u8 = 0x3f;
/// GET EVENT STATUS NOTIFICATION: the media class, and its event codes.
const EVENT_CLASS_MEDIA: u8 = 4;
const EVENT_NO_CHANGE: u8 = 0;
const EVENT_NEW_MEDIA: u8 = 2;
const EVENT_MEDIA_REMOVAL: u8 = 3;
/// ATAPI interrupt reason in the count register: I/O and C/D, the command is done.
const INT_REASON_DONE: u16 = 0x03;
/// TOC: control nibble of a data track, and ADR 1 (Q sub-channel position).
const TOC_DATA_TRACK: u8 = 0x14;
const TOC_LEAD_OUT: u8 = 0xaa;
/// Full-TOC POINT values: first track, last track, lead-out start (MMC-5 §6.26.3.4).
const TOC_POINT_FIRST_TRACK: u8 = 0xa0;
const TOC_POINT_LAST_TRACK: u8 = 0xa1;
const TOC_POINT_LEAD_OUT: u8 = 0xa2;

/// Fixed-format sense data, as REQUEST SENSE returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Self { key, asc, ascq }
    }
    const NONE: Self = Self::new(NO_SENSE, 0, 0);
    const NOT_PRESENT: Self = Self::new(NOT_READY, ASC_MEDIUM_NOT_PRESENT, 0);
    const CHANGED: Self = Self::new(UNIT_ATTENTION, ASC_MEDIUM_MAY_HAVE_CHANGED, 0);
    const INVALID_OPCODE: Self = Self::new(ILLEGAL_REQUEST, ASC_INVALID_OPCODE, 0);
    const INVALID_FIELD: Self = Self::new(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0);
    const LBA_RANGE: Self = Self::new(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE, 0);

    /// The 18 bytes of fixed-format sense data (SPC-3 §4.5.3).
    fn bytes(self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key;
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        b
    }
}

/// What a failed packet command leaves: its sense data, and a cause worth logging.
struct Failure {
    sense: Sense,
    cause: Option<AhciError>,
}

impl From<Sense> for Failure {
    fn from(sense: Sense) -> Self {
        Self { sense, cause: None }
    }
}

impl From<AhciError> for Failure {
    fn from(e: AhciError) -> Self {
        let sense = match &e {
            AhciError::Image(_) => Sense::new(MEDIUM_ERROR, ASC_UNRECOVERED_READ_ERROR, 0),
            _ => Sense::new(ABORTED_COMMAND, 0, 0),
        };
        Self {
            sense,
            cause: Some(e),
        }
    }
}

/// The task file of an ATAPI device after reset: the packet signature (LBA 0xEB1401).
pub fn atapi_signature() -> TaskFile {
    TaskFile {
        status: 0,
        error: ERROR_DIAG_PASSED,
        lba: 0xeb_1401,
        device: 0,
        count: 1,
    }
}

/// Big-endian field readers for a CDB (which is always 16 bytes here).
fn be16(c: &[u8; 16], at: usize) -> u16 {
    u16::from_be_bytes([c[at], c[at + 1]])
}
fn be32(c: &[u8; 16], at: usize) -> u32 {
    u32::from_be_bytes([c[at], c[at + 1], c[at + 2], c[at + 3]])
}

/// LBA to an MSF address (minute, second, frame), as the four bytes of a TOC address.
fn msf(lba: u64) -> [u8; 4] {
    let f = lba + MSF_OFFSET;
    [
        0,
        (f / 75 / 60).min(255) as u8,
        (f / 75 % 60) as u8,
        (f % 75) as u8,
    ]
}

/// A CD/DVD drive.
pub struct Cdrom {
    medium: Option<Medium>,
    tray_open: bool,
    serial: String,
    sense: Sense,
    unit_attention: bool,
    locked: bool,
    event: u8,
    mode: XferMode,
}

impl Cdrom {
    pub fn new(medium: Option<Medium>, serial: &str) -> Self {
        Self {
            medium,
            tray_open: false,
            serial: serial.to_owned(),
            sense: Sense::NONE,
            unit_attention: false,
            locked: false,
            event: EVENT_NO_CHANGE,
            mode: XferMode::UltraDma(5),
        }
    }

    /// Puts a disc in (closing the tray); the guest sees a unit attention and a media event.
    pub fn insert(&mut self, medium: Medium) -> Option<Medium> {
        let old = self.medium.replace(medium);
        self.tray_open = false;
        self.unit_attention = true;
        self.event = EVENT_NEW_MEDIA;
        old
    }

    /// Takes the disc out (the host's eject, which a guest's PREVENT does not stop).
    pub fn eject(&mut self) -> Option<Medium> {
        let old = self.medium.take();
        self.unit_attention = true;
        self.event = EVENT_MEDIA_REMOVAL;
        old
    }

    /// The drive's state, for a saved VM.
    pub(super) fn save(&self) -> super::state::CdromState {
        super::state::CdromState {
            medium: self.medium.is_some(),
            tray_open: self.tray_open,
            sense: self.sense,
            unit_attention: self.unit_attention,
            locked: self.locked,
            event: self.event,
            mode: self.mode,
        }
    }

    /// Whether [`Cdrom::restore`] can take `s`: a disc the saved drive held must be here.
    pub(super) fn can_restore(&self, s: &super::state::CdromState) -> bool {
        !s.medium || self.medium.is_some()
    }

    /// Takes back a saved state; a disc the saved drive no longer held is taken out.
    pub(super) fn restore(&mut self, s: &super::state::CdromState) {
        if !s.medium {
            self.medium = None;
        }
        self.tray_open = s.tray_open;
        self.sense = s.sense;
        self.unit_attention = s.unit_attention;
        self.locked = s.locked;
        self.event = s.event;
        self.mode = s.mode;
    }

    /// A disc is in and the tray is closed.
    pub fn media_present(&self) -> bool {
        self.medium.is_some() && !self.tray_open
    }

    pub fn tray_open(&self) -> bool {
        self.tray_open
    }

    /// The guest forbade removing the disc (PREVENT ALLOW MEDIUM REMOVAL).
    pub fn locked(&self) -> bool {
        self.locked
    }

    /// A device reset: sense and transfer mode back to power-on; the medium stays.
    pub fn reset(&mut self) {
        self.sense = Sense::NONE;
        self.mode = XferMode::UltraDma(5);
    }

    fn disc(&self) -> Result<&Medium, Sense> {
        match &self.medium {
            Some(m) if !self.tray_open => Ok(m),
            _ => Err(Sense::NOT_PRESENT),
        }
    }

    fn sectors(&self) -> Result<u64, Sense> {
        Ok(self.disc()?.sectors(SECTOR))
    }

    fn is_dvd(&self) -> bool {
        self.disc()
            .is_ok_and(|m| m.sectors(SECTOR) > CD_MAX_SECTORS)
    }

    fn current_profile(&self) -> u16 {
        match self.disc() {
            Err(_) => PROFILE_NONE,
            Ok(_) if self.is_dvd() => PROFILE_DVD_ROM,
            Ok(_) => PROFILE_CD_ROM,
        }
    }

    /// Runs an ATA command that is not PACKET.
    pub fn execute_ata(&mut self, fis: &H2dFis, xfer: &mut Transfer) -> Result<Reply, AhciError> {
        match fis.command {
            CMD_IDENTIFY_PACKET => {
                let data = self.identify_packet();
                xfer.put(&data)?;
                Ok(Reply {
                    tf: TaskFile {
                        status: STATUS_READY,
                        ..TaskFile::default()
                    },
                    ending: Ending::PioIn {
                        bytes: data.len() as u16,
                    },
                })
            }
            // A packet device aborts IDENTIFY DEVICE and shows its signature (ATA8-ACS
            // §7.16), which is how drivers tell it from a disk.
            CMD_IDENTIFY => Ok(Reply::with(TaskFile {
                status: STATUS_READY | STATUS_ERR,
                error: ERROR_ABRT,
                ..atapi_signature()
            })),
            CMD_DEVICE_RESET => {
                self.reset();
                Ok(Reply::with(atapi_signature()))
            }
            CMD_SET_FEATURES if fis.feature() == 0x03 => {
                self.mode = XferMode::parse(fis.count as u8).ok_or(AhciError::InvalidField)?;
                Ok(Reply::ok())
            }
            CMD_CHECK_POWER_MODE => Ok(Reply::with(TaskFile {
                status: STATUS_READY,
                count: 0xff,
                ..TaskFile::default()
            })),
            CMD_IDLE_IMMEDIATE | CMD_STANDBY_IMMEDIATE | CMD_IDLE | CMD_STANDBY => Ok(Reply::ok()),
            command => Err(AhciError::UnknownCommand { command }),
        }
    }

    /// Runs a PACKET command: `cdb` from the command table, data through `xfer`.
    pub fn packet(&mut self, cdb: &[u8; 16], xfer: &mut Transfer) -> Reply {
        let result = self
            .check_attention(cdb[0])
            .and_then(|()| self.run(cdb, xfer));
        let done = TaskFile {
            status: STATUS_READY,
            count: INT_REASON_DONE,
            ..TaskFile::default()
        };
        match result {
            Ok(()) => {
                if cdb[0] != REQUEST_SENSE {
                    self.sense = Sense::NONE;
                }
                Reply::with(done)
            }
            Err(f) => {
                if let Some(cause) = &f.cause {
                    crate::guest_warn!("ahci: ATAPI command {:#04x} failed: {cause}", cdb[0]);
                }
                self.sense = f.sense;
                Reply::with(TaskFile {
                    status: STATUS_READY | STATUS_ERR,
                    error: f.sense.key << 4,
                    ..done
                })
            }
        }
    }

    /// Reports a pending unit attention to the first command not allowed to ignore it.
    fn check_attention(&mut self, op: u8) -> Result<(), Failure> {
        let allowed = matches!(
            op,
            INQUIRY | REQUEST_SENSE | GET_CONFIGURATION | GET_EVENT_STATUS_NOTIFICATION
        );
        if self.unit_attention && !allowed {
            self.unit_attention = false;
            return Err(Sense::CHANGED.into());
        }
        Ok(())
    }

    fn run(&mut self, cdb: &[u8; 16], xfer: &mut Transfer) -> Result<(), Failure> {
        match cdb[0] {
            TEST_UNIT_READY => self.disc().map(|_| ()).map_err(Into::into),
            REQUEST_SENSE => {
                // A pending unit attention is reported (and so cleared) here too (SPC-3
                // §5.9.7).
                let sense = if std::mem::take(&mut self.unit_attention) {
                    Sense::CHANGED
                } else {
                    self.sense
                };
                self.sense = Sense::NONE;
                respond(xfer, &sense.bytes(), usize::from(cdb[4]))
            }
            INQUIRY => self.inquiry(cdb, xfer),
            START_STOP_UNIT => self.start_stop(cdb[4]),
            PREVENT_ALLOW_MEDIUM_REMOVAL => {
                self.locked = cdb[4] & 1 != 0;
                Ok(())
            }
            READ_CAPACITY_10 => {
                let last = self.sectors()?.saturating_sub(1).min(u64::from(u32::MAX)) as u32;
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&last.to_be_bytes());
                b[4..].copy_from_slice(&(SECTOR as u32).to_be_bytes());
                respond(xfer, &b, b.len())
            }
            READ_10 => self.read(u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)), xfer),
            READ_12 => self.read(u64::from(be32(cdb, 2)), u64::from(be32(cdb, 6)), xfer),
            READ_CD => self.read_cd(cdb, xfer),
            SEEK_10 => {
                if u64::from(be32(cdb, 2)) >= self.sectors()? {
                    return Err(Sense::LBA_RANGE.into());
                }
                Ok(())
            }
            READ_TOC => self.read_toc(cdb, xfer),
            GET_CONFIGURATION => self.get_configuration(cdb, xfer),
            GET_EVENT_STATUS_NOTIFICATION => self.event_status(cdb, xfer),
            READ_DISC_INFORMATION => self.disc_information(cdb, xfer),
            MODE_SENSE_10 => self.mode_sense(cdb, xfer),
            MECHANISM_STATUS => {
                let mut b = [0u8; 8];
                if self.tray_open {
                    b[1] = 0x10;
                }
                respond(xfer, &b, usize::from(be16(cdb, 8)))
            }
            SET_CD_SPEED => Ok(()),
            READ_DVD_STRUCTURE => self.dvd_structure(cdb, xfer),
            _ => Err(Sense::INVALID_OPCODE.into()),
        }
    }

    fn inquiry(&self, cdb: &[u8; 16], xfer: &mut Transfer) -> Result<(), Failure> {
        // EVPD (vital product data pages) is not supported.
        if cdb[1] & 1 != 0 {
            return Err(Sense::INVALID_FIELD.into());
        }
        let mut b = [0u8; 36];
        b[0] = 0x05; // peripheral device type: CD/DVD
        b[1] = 0x80; // removable medium
        b[2] = 0x05; // SPC-3
        b[3] = 0x32; // ACA-less, HiSup, response data format 2
        b[4] = (b.len() - 5) as u8;
        b[8..16].copy_from_slice(b"HOSPES  ");
        b[16..32].copy_from_slice(b"HOSPES DVD-ROM  ");
        let mut rev = *b"    ";
        for (d, s) in rev.iter_mut().zip(env!("CARGO_PKG_VERSION").bytes()) {
            *d = s;
        }
        b[32..36].copy_from_slice(&rev);
        respond(xfer, &b, usize::from(be16(cdb, 3)))
    }

    fn start_stop(&mut self, flags: u8) -> Result<(), Failure> {
        let (start, load_eject) = (flags & 1 != 0, flags & 2 != 0);
        match (load_eject, start) {
            (true, false) => {
                if self.locked {
                    return Err(Sense::new(
                        ILLEGAL_REQUEST,
                        ASC_MEDIUM_REMOVAL_PREVENTED,
                        ASCQ_MEDIUM_REMOVAL_PREVENTED,
                    )
                    .into());
                }
                if self.medium.is_some() && !self.tray_open {
                    self.event = EVENT_MEDIA_REMOVAL;
                }
                self.tray_open = true;
            }
            (true, true) => {
                if self.tray_open && self.medium.is_some() {
                    self.event = EVENT_NEW_MEDIA;
                    self.unit_attention = true;
                }
                self.tray_open = false;
            }
            _ => {}
        }
        Ok(())
    }

    fn read(&self, lba: u64, count: u64, xfer: &mut Transfer) -> Result<(), Failure> {
        let disc = self.disc()?;
        match lba.checked_add(count) {
            Some(end) if end <= disc.sectors(SECTOR) => {}
            _ => return Err(Sense::LBA_RANGE.into()),
        }
        disc.read_into(xfer, lba * SECTOR, count * SECTOR)
            .map_err(Into::into)
    }

    /// READ CD (MMC-5 §6.19) for user data only: the 2048 bytes of each sector.
    fn read_cd(&self, cdb: &[u8; 16], xfer: &mut Transfer) -> Result<(), Failure> {
        let lba = u64::from(be32(cdb, 2));
        let count = u64::from(u32::from_be_bytes([0, cdb[6], cdb[7], cdb[8]]));
        match cdb[9] & 0xf8 {
            0 => {
                self.disc()?;
                Ok(())
            }
            0x10 => self.read(lba, count, xfer),
            _ => Err(Sense::INVALID_FIELD.into()),
        }
    }

    /// READ TOC/PMA/ATIP (MMC-5 §6.26): formats 0 (TOC), 1 (session information) and 2
    /// (full TOC).
    fn read_toc(&self, cdb: &[u8; 16], xfer: &mut Transfer) -> Result<(), Failure> {
        let sectors = self.sectors()?;
        let use_msf = cdb[1] & 2 != 0;
        let addr = |lba: u64| -> [u8; 4] {
            if use_msf {
                msf(lba)
            } else {
                (lba.min(u64::from(u32::MAX)) as u32).to_be_bytes()
            }
        };
        // The format sits in byte 2; old drivers put it in the top bits of byte 9.
        let format = match cdb[2] & 0x0f {
            0 => cdb[9] >> 6,
            f => f,
        };
        let track = cdb[6];
        let mut b = vec![0u8; 4];
        match format {
            0 => {
                if track > 1 && track != TOC_LEAD_OUT {
                    return Err(Sense::INVALID_FIELD.into());
                }
                b[2] = 1;
                b[3] = 1;
                if track <= 1 {
                    b.extend_from_slice(&[0, TOC_DATA_TRACK, 1, 0]);
                    b.extend_from_slice(&addr(0));
                }
                b.extend_from_slice(&[0, TOC_DATA_TRACK, TOC_LEAD_OUT, 0]);
                b.extend_from_slice(&addr(sectors));
            }
            1 => {
                b[2] = 1;
                b[3] = 1;
                b.extend_from_slice(&[0, TOC_DATA_TRACK, 1, 0]);
                b.extend_from_slice(&addr(0));
            }
            2 => {
                // Full TOC of session 1 (always MSF): first track (A0), last track (A1),
                // lead-out (A2), then track 1.
                b[2] = 1;
                b[3] = 1;
                let [_, m, s, f] = msf(sectors);
                let [_, m1, s1, f1] = msf(0);
                for (point, p) in [
                    (TOC_POINT_FIRST_TRACK, [1, 0, 0]),
                    (TOC_POINT_LAST_TRACK, [1, 0, 0]),
                    (TOC_POINT_LEAD_OUT, [m, s, f]),
                    (1, [m1, s1, f1]),
                ] {
                    b.extend_from_slice(&[1, TOC_DATA_TRACK, 0, point, 0, 0, 0, 0]);
                    b.extend_from_slice(&p);
                }
            }
            _ => return Err(Sense::INVALID_FIELD.into()),
        }
        let len = (b.len() - 2) as u16;
        b[..2].copy_from_slice(&len.to_be_bytes());
        respond(xfer, &b, usize::from(be16(cdb, 7)))
    }

    /// GET CONFIGURATION (MMC-5 §6.6): profile list, core and removable-medium features.
    fn get_configuration(&self, cdb: &[u8; 16], xfer: &mut Transfer) -> Result<(), Failure> {
        let rt = cdb[1] & 3;
        let start = be16(cdb, 2);
        let current = self.current_profile();
        let mut profiles = vec![0x00, 0x00, 0x03, 8];
        for p in [PROFILE_DVD_ROM, PROFILE_CD_ROM] {
            profiles.extend_from_slice(&p.to_be_bytes());
            profiles.extend_from_slice(&[u8::from(p == current), 0]);
        }
        // Core: version 2, persistent, current; physical interface ATAPI (2), INQ2.
        let core = vec![0x00, 0x01, 0x0b, 8, 0, 0, 0, 2, 0x02, 0, 0, 0];
        // Removable medium: tray loading, eject, lock, and whether locked.
        let removable = vec![
            0x00,
            0x03,
            0x03,
            4,
            0x20 | 0x08 | 0x01 | u8::from(self.locked) << 2,
            0,
            0,
            0,
        ];
        let mut b = vec![0u8; 8];
        b[6..8].copy_from_slice(&current.to_be_bytes());
        for (code, feature) in [(0u16, profiles), (1, core), (3, removable)] {
            let wanted = match rt {
                0 | 1 => code >= start,
                2 => code == start,
                _ => return Err(Sense::INVALID_FIELD.into()),
            };
            if wanted {
                b.extend_from_slice(&feature);
            }
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        respond(xfer, &b, usize::from(be16(cdb, 7)))
    }

    /// GET EVENT STATUS NOTIFICATION (MMC-5 §6.8), polled, media class only.
    fn event_status(&mut self, cdb: &[u8; 16], xfer: &mut Transfer) -> Result<(), Failure> {
        if cdb[1] & 1 == 0 {
            return Err(Sense::INVALID_FIELD.into());
        }
        let classes = cdb[4];
        let supported = 1 << EVENT_CLASS_MEDIA;
        let b = if classes & supported != 0 {
            let status = u8::from(self.tray_open) | u8::from(self.media_present()) << 1;
            let event = std::mem::replace(&mut self.event, EVENT_NO_CHANGE);
            vec![0, 6, EVENT_CLASS_MEDIA, supported, event, status, 0, 0]
        } else {
            // No event available (NEA) for the classes asked.
            vec![0, 2, 0x80, supported]
        };
        respond(xfer, &b, usize::from(be16(cdb, 7)))
    }

    /// READ DISC INFORMATION (MMC-5 §6.22): one complete session holding one data track.
    fn disc_information(&self, cdb: &[u8; 16], xfer: &mut Transfer) -> Result<(), Failure> {
        self.disc()?;
        if cdb[1] & 7 != 0 {
            return Err(Sense::INVALID_FIELD.into());
        }
        let mut b = [0u8; 34];
        b[1] = 32;
        b[2] = 0x0e; // last session complete, disc finalised
        b[3] = 1; // first track
        b[4] = 1; // sessions
        b[5] = 1; // first track of the last session
        b[6] = 1; // last track of the last session
        b[7] = 0x20; // unrestricted use
        respond(xfer, &b, usize::from(be16(cdb, 7)))
    }

    /// MODE SENSE(10) (SPC-3 §6.10): error recovery and CD/DVD capabilities pages.
    fn mode_sense(&self, cdb: &[u8; 16], xfer: &mut Transfer) -> Result<(), Failure> {
        let page = cdb[2] & 0x3f;
        let control = cdb[2] >> 6;
        if control == 3 {
            return Err(Sense::new(ILLEGAL_REQUEST, ASC_SAVING_NOT_SUPPORTED, 0).into());
        }
        let recovery = [PAGE_ERROR_RECOVERY, 0x0a, 0, 3, 0, 0, 0, 0, 3, 0, 0, 0];
        let mut caps = [0u8; 28];
        caps[0] = PAGE_CAPABILITIES;
        caps[1] = 0x14;
        caps[2] = 0x3b; // reads CD-R, CD-RW, DVD-ROM, DVD-R, DVD-RAM
        caps[4] = 0x71; // audio play, mode 2 form 1 and 2, multi-session
        caps[5] = 0x60; // ISRC, UPC
        caps[6] = 0x29 | u8::from(self.locked) << 1; // tray, eject, lock (and state)
        caps[8..10].copy_from_slice(&(16 * 176u16).to_be_bytes()); // max speed, kB/s
        caps[10..12].copy_from_slice(&2u16.to_be_bytes()); // volume levels
        caps[12..14].copy_from_slice(&512u16.to_be_bytes()); // buffer, KiB
        caps[14..16].copy_from_slice(&(16 * 176u16).to_be_bytes()); // current speed
        let mut b = vec![0u8; 8];
        let mut add = |p: &[u8]| {
            b.push(p[0]);
            b.push(p[1]);
            // Changeable values (control 1): nothing is.
            b.extend(p.iter().skip(2).map(|v| if control == 1 { 0 } else { *v }));
        };
        match page {
            PAGE_ERROR_RECOVERY => add(&recovery),
            PAGE_CAPABILITIES => add(&caps),
            PAGE_ALL => {
                add(&recovery);
                add(&caps);
            }
            _ => return Err(Sense::INVALID_FIELD.into()),
        }
        let len = (b.len() - 2) as u16;
        b[..2].copy_from_slice(&len.to_be_bytes());
        respond(xfer, &b, usize::from(be16(cdb, 7)))
    }

    /// READ DVD STRUCTURE (MMC-5 §6.29), format 0: physical format of layer 0.
    fn dvd_structure(&self, cdb: &[u8; 16], xfer: &mut Transfer) -> Result<(), Failure> {
        let sectors = self.sectors()?;
        let (layer, format) = (cdb[6], cdb[7]);
        if format != 0 || layer != 0 {
            return Err(Sense::INVALID_FIELD.into());
        }
        if !self.is_dvd() {
            return Err(Sense::new(
                ILLEGAL_REQUEST,
                ASC_INCOMPATIBLE_FORMAT,
                ASCQ_INCOMPATIBLE_FORMAT,
            )
            .into());
        }
        let mut b = vec![0u8; 4 + 2048];
        b[..2].copy_from_slice(&(2048u16 + 2).to_be_bytes());
        b[4] = 0x01; // DVD-ROM, part version 1
        b[5] = 0x0f; // 120 mm, maximum rate not specified
        b[6] = 0x01; // one layer, embossed data
        // Data area from sector 0x30000 on.
        let first = 0x3_0000u32;
        let last =
            first.saturating_add((sectors.min(u64::from(u32::MAX)) as u32).saturating_sub(1));
        b[8..12].copy_from_slice(&first.to_be_bytes());
        b[12..16].copy_from_slice(&last.to_be_bytes());
        respond(xfer, &b, usize::from(be16(cdb, 8)))
    }

    /// IDENTIFY PACKET DEVICE data (ATA8-ACS §7.17).
    pub fn identify_packet(&self) -> [u8; 512] {
        let mut id = IdentifyData::new();
        // Word 0: ATAPI, CD/DVD device, removable, DRQ within 50 us, 12-byte packets.
        id.set(0, 0x8000 | 0x05 << 8 | 0x80 | 0x40);
        id.set_common(&self.serial, "HOSPES DVD-ROM", self.mode);
        // Words 64-70 and 88 are valid.
        id.set(53, 0x0006);
        // PACKET and DEVICE RESET supported and enabled, NOP supported.
        id.set(82, 1 << 14 | 1 << 9 | 1 << 4);
        id.set(83, 1 << 14);
        id.set(84, 1 << 14);
        id.set(85, 1 << 14 | 1 << 9 | 1 << 4);
        id.set(87, 1 << 14);
        id.seal()
    }
}

/// Sends `data`, cut to the allocation length and to what the PRDT holds.
fn respond(xfer: &mut Transfer, data: &[u8], alloc: usize) -> Result<(), Failure> {
    let n = data
        .len()
        .min(alloc)
        .min(usize::try_from(xfer.capacity()).unwrap_or(usize::MAX));
    let part = data.get(..n).ok_or(AhciError::PrdtTooShort)?;
    xfer.put(part)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msf_addresses_start_two_seconds_in() {
        assert_eq!(msf(0), [0, 0, 2, 0]);
        assert_eq!(msf(75 * 60 - 150 + 1), [0, 1, 0, 1]);
    }

    #[test]
    fn sense_data_is_fixed_format() {
        let b = Sense::NOT_PRESENT.bytes();
        assert_eq!((b[0], b[2], b[7], b[12], b[13]), (0x70, 2, 10, 0x3a, 0));
    }
}
