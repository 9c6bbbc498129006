//! One AHCI port: its registers (AHCI 1.3.1 §3.3), the device behind it, and the command
//! engine.
//!
//! Data flow: a guest writes PxCI with PxCMD.ST set; for each slot newly issued the engine
//! reads the command header from the command list (PxCLB + 32 * slot), the command FIS and
//! ATAPI command from the command table, and the PRDT; the disk ([`AtaDisk`]) or CD drive
//! ([`Cdrom`]) runs the command, moving data through the PRDT; the engine writes back the
//! byte count (PRDBC), stores the device's answer (a Register D2H FIS, or a PIO Setup FIS
//! for PIO data-in) in the received-FIS area at PxFB when PxCMD.FRE is set, updates PxTFD
//! and PxIS, and clears the slot's PxCI bit. All of it runs synchronously on the vCPU
//! thread that wrote PxCI. A failed command (ERR in the status) sets PxIS.TFES, keeps its
//! PxCI bit and halts the engine until the guest clears PxCMD.ST, as AHCI 1.3.1 §6.2.2.1
//! describes. Reset (COMRESET through PxSCTL.DET, a software reset FIS, or an HBA reset)
//! puts the device's signature in PxSIG and PxTFD and, once FIS reception is on, a
//! signature D2H FIS in the received-FIS area.

use std::fs::File;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::AhciError;
use super::ata::{
    AtaDisk, CMD_PACKET, ERROR_ABRT, ERROR_IDNF, Ending, Reply, STATUS_BSY, STATUS_DRQ,
    disk_signature,
};
use super::atapi::{Cdrom, atapi_signature};
use super::backend::{Drive, DriveKind, Medium};
use super::fis::{
    CFL_MAX, CFL_MIN, CONTROL_SRST, CT_ACMD, CT_ACMD_LEN, CT_CFIS_LEN, CT_PRDT, CommandHeader,
    H2dFis, HDR_PRDBC, HEADER_LEN, RFIS_D2H, RFIS_PIO_SETUP, TaskFile,
};
use super::prdt::Transfer;
use super::state::{DeviceState, PortState};

/// Port register offsets inside the port's 0x80-byte block (AHCI 1.3.1 §3.3).
pub const PXCLB: u64 = 0x00;
pub const PXCLBU: u64 = 0x04;
pub const PXFB: u64 = 0x08;
pub const PXFBU: u64 = 0x0c;
pub const PXIS: u64 = 0x10;
pub const PXIE: u64 = 0x14;
pub const PXCMD: u64 = 0x18;
pub const PXTFD: u64 = 0x20;
pub const PXSIG: u64 = 0x24;
pub const PXSSTS: u64 = 0x28;
pub const PXSCTL: u64 = 0x2c;
pub const PXSERR: u64 = 0x30;
pub const PXSACT: u64 = 0x34;
pub const PXCI: u64 = 0x38;

/// PxIS bits (§3.3.5).
pub const IS_DHRS: u32 = 1 << 0;
pub const IS_PSS: u32 = 1 << 1;
pub const IS_DPS: u32 = 1 << 5;
pub const IS_TFES: u32 = 1 << 30;
/// PxIS/PxIE bits that exist.
const IS_VALID: u32 = 0xfdc0_00ff;

/// PxCMD bits (§3.3.7).
pub const CMD_ST: u32 = 1 << 0;
pub const CMD_SUD: u32 = 1 << 1;
pub const CMD_POD: u32 = 1 << 2;
pub const CMD_CLO: u32 = 1 << 3;
pub const CMD_FRE: u32 = 1 << 4;
const CMD_CCS_SHIFT: u32 = 8;
const CMD_CCS_MASK: u32 = 0x1f << CMD_CCS_SHIFT;
pub const CMD_FR: u32 = 1 << 14;
pub const CMD_CR: u32 = 1 << 15;
const CMD_ATAPI: u32 = 1 << 24;
const CMD_DLAE: u32 = 1 << 25;
/// Bits a guest stores in PxCMD (the rest are status or act on write).
const CMD_STORED: u32 = CMD_ST | CMD_FRE | CMD_ATAPI | CMD_DLAE;

/// PxSSTS / PxSCTL fields (§3.3.10, §3.3.11).
const DET_MASK: u32 = 0xf;
const DET_PRESENT: u32 = 3;
const DET_COMRESET: u32 = 1;
const DET_OFFLINE: u32 = 4;
const SPD_SHIFT: u32 = 4;
/// Gen3 (6 Gb/s), the speed CAP.ISS advertises.
pub const SPEED_GEN3: u32 = 3;
const IPM_ACTIVE: u32 = 1 << 8;
const SCTL_STORED: u32 = 0x000f_ffff;

/// PxTFD with no device: every status bit but BSY, as a floating bus reads.
const TFD_NO_DEVICE: u32 = 0x7f;
/// PxSIG before any device answered.
const SIG_NONE: u32 = 0xffff_ffff;

/// Command slots (CAP.NCS + 1).
pub const SLOTS: u32 = 32;

/// A CD drive's tray: what [`AhciPort::tray`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrayState {
    /// A disc is in and the tray is closed.
    pub media_present: bool,
    /// The tray is open (the guest's START STOP UNIT with LoEj).
    pub open: bool,
    /// The guest forbade removing the disc.
    pub locked: bool,
}

/// The device behind a port.
enum Device {
    Disk(AtaDisk),
    Cdrom(Cdrom),
}

impl Device {
    fn signature(&self) -> TaskFile {
        match self {
            Device::Disk(_) => disk_signature(),
            Device::Cdrom(_) => atapi_signature(),
        }
    }

    fn reset(&mut self) {
        match self {
            Device::Disk(d) => d.reset(),
            Device::Cdrom(c) => c.reset(),
        }
    }
}

/// How a command ended, for the engine.
struct Outcome {
    reply: Reply,
    bytes: u64,
    dps: bool,
}

/// One port of the HBA.
pub struct AhciPort {
    clb: u64,
    fb: u64,
    is: u32,
    ie: u32,
    cmd: u32,
    tfd: u32,
    sig: u32,
    ssts: u32,
    sctl: u32,
    serr: u32,
    sact: u32,
    ci: u32,
    device: Option<Device>,
    /// The signature FIS of the last reset still waits for FIS reception to be enabled.
    sig_pending: bool,
    /// A command failed: nothing runs until PxCMD.ST is cleared.
    halted: bool,
}

impl Default for AhciPort {
    fn default() -> Self {
        Self::new()
    }
}

impl AhciPort {
    /// An empty port, as after an HBA reset.
    pub fn new() -> Self {
        let mut p = Self {
            clb: 0,
            fb: 0,
            is: 0,
            ie: 0,
            cmd: 0,
            tfd: 0,
            sig: 0,
            ssts: 0,
            sctl: 0,
            serr: 0,
            sact: 0,
            ci: 0,
            device: None,
            sig_pending: false,
            halted: false,
        };
        p.reset(None);
        p
    }

    /// Plugs a device in, for machine assembly before the guest runs: PxSSTS and PxSIG
    /// show it at once, and its signature FIS arrives when FIS reception is turned on.
    /// Hot-plug while a guest runs is not modelled (no PxIS.PCS / PxSERR.DIAG.X).
    pub fn attach(&mut self, drive: Drive) -> Result<(), AhciError> {
        let device = match drive.kind {
            DriveKind::Disk => {
                let medium = match (drive.file, drive.image) {
                    (Some(file), _) => Medium::new(file, drive.read_only)?,
                    (None, Some(image)) => Medium::from_image(image, drive.read_only),
                    (None, None) => return Err(AhciError::NoImage),
                };
                Device::Disk(AtaDisk::new(medium, &drive.serial))
            }
            DriveKind::Cdrom => {
                let medium = drive.file.map(|f| Medium::new(f, true)).transpose()?;
                Device::Cdrom(Cdrom::new(medium, &drive.serial))
            }
        };
        self.device = Some(device);
        self.link_up(None);
        Ok(())
    }

    /// Puts a disc in the CD drive (a running guest sees a unit attention); returns the
    /// disc it replaced.
    pub fn insert_media(&mut self, file: File) -> Result<Option<File>, AhciError> {
        let Some(Device::Cdrom(cd)) = &mut self.device else {
            return Err(AhciError::NotCdrom);
        };
        let medium = Medium::new(file, true)?;
        Ok(cd.insert(medium).and_then(Medium::into_file))
    }

    /// Takes the disc out of the CD drive (a running guest sees a unit attention).
    pub fn eject(&mut self) -> Result<Option<File>, AhciError> {
        let Some(Device::Cdrom(cd)) = &mut self.device else {
            return Err(AhciError::NotCdrom);
        };
        Ok(cd.eject().and_then(Medium::into_file))
    }

    /// Whether the CD drive holds a disc with its tray closed (false for a disk or empty
    /// port).
    pub fn media_present(&self) -> bool {
        matches!(&self.device, Some(Device::Cdrom(cd)) if cd.media_present())
    }

    /// The CD drive's tray as the host reports it (QMP `query-block`); `None` for a
    /// disk or an empty port.
    pub fn tray(&self) -> Option<TrayState> {
        match &self.device {
            Some(Device::Cdrom(cd)) => Some(TrayState {
                media_present: cd.media_present(),
                open: cd.tray_open(),
                locked: cd.locked(),
            }),
            _ => None,
        }
    }

    /// The port's registers and its device's settings, for a saved VM.
    pub(super) fn save(&self) -> PortState {
        PortState {
            clb: self.clb,
            fb: self.fb,
            is: self.is,
            ie: self.ie,
            cmd: self.cmd,
            tfd: self.tfd,
            sig: self.sig,
            ssts: self.ssts,
            sctl: self.sctl,
            serr: self.serr,
            sact: self.sact,
            ci: self.ci,
            sig_pending: self.sig_pending,
            halted: self.halted,
            device: self.device.as_ref().map(|d| match d {
                Device::Disk(disk) => DeviceState::Disk(disk.save()),
                Device::Cdrom(cd) => DeviceState::Cdrom(cd.save()),
            }),
        }
    }

    /// Why `s` does not fit this port (a disk saved where a CD drive is, a disc saved
    /// that this drive lacks), or `None`.
    pub(super) fn restore_mismatch(&self, s: &PortState) -> Option<&'static str> {
        match (&self.device, &s.device) {
            (None, None) | (Some(Device::Disk(_)), Some(DeviceState::Disk(_))) => None,
            (Some(Device::Cdrom(cd)), Some(DeviceState::Cdrom(c))) => {
                (!cd.can_restore(c)).then_some("a disc was in the CD drive, none is now")
            }
            _ => Some("another kind of device was on the port"),
        }
    }

    /// Takes back a saved state checked with [`AhciPort::restore_mismatch`].
    pub(super) fn restore(&mut self, s: &PortState) {
        self.clb = s.clb;
        self.fb = s.fb;
        self.is = s.is & IS_VALID;
        self.ie = s.ie & IS_VALID;
        self.cmd = s.cmd;
        self.tfd = s.tfd;
        self.sig = s.sig;
        self.ssts = s.ssts;
        self.sctl = s.sctl & SCTL_STORED;
        self.serr = s.serr;
        self.sact = s.sact;
        self.ci = s.ci;
        self.sig_pending = s.sig_pending;
        self.halted = s.halted;
        match (&mut self.device, &s.device) {
            (Some(Device::Disk(d)), Some(DeviceState::Disk(saved))) => d.restore(saved),
            (Some(Device::Cdrom(c)), Some(DeviceState::Cdrom(saved))) => c.restore(saved),
            _ => {}
        }
    }

    /// Interrupts this port has pending and enabled.
    pub fn interrupt_pending(&self) -> bool {
        self.is & self.ie != 0
    }

    /// HBA reset (GHC.HR): everything but the list and FIS addresses goes back to its
    /// reset value, and the device is reset as by a COMRESET.
    pub fn reset(&mut self, mem: Option<&GuestMemoryMmap>) {
        self.is = 0;
        self.ie = 0;
        self.cmd = CMD_SUD | CMD_POD;
        self.serr = 0;
        self.sact = 0;
        self.ci = 0;
        self.sctl = 0;
        self.halted = false;
        self.link_up(mem);
    }

    /// The end of a COMRESET: the link comes up if a device is there, which resets and
    /// sends its signature.
    fn link_up(&mut self, mem: Option<&GuestMemoryMmap>) {
        if self.device.is_none() {
            self.ssts = 0;
            self.tfd = TFD_NO_DEVICE;
            self.sig = SIG_NONE;
            self.sig_pending = false;
            return;
        }
        let speed = match (self.sctl >> SPD_SHIFT) & 0xf {
            0 => SPEED_GEN3,
            limit => limit.min(SPEED_GEN3),
        };
        self.ssts = DET_PRESENT | speed << SPD_SHIFT | IPM_ACTIVE;
        self.device_reset(mem);
    }

    /// Resets the device and posts its signature.
    fn device_reset(&mut self, mem: Option<&GuestMemoryMmap>) {
        let Some(dev) = &mut self.device else {
            return;
        };
        dev.reset();
        let tf = dev.signature();
        self.tfd = tf.tfd();
        self.sig = tf.signature();
        self.sig_pending = true;
        if let Some(mem) = mem {
            self.post_signature(mem);
        }
    }

    /// Stores the signature D2H FIS once FIS reception is on.
    fn post_signature(&mut self, mem: &GuestMemoryMmap) {
        if !self.sig_pending || self.cmd & CMD_FRE == 0 {
            return;
        }
        if let Some(dev) = &self.device {
            self.store_fis(mem, RFIS_D2H, &dev.signature().d2h_fis(false));
        }
        self.sig_pending = false;
    }

    fn store_fis(&self, mem: &GuestMemoryMmap, offset: u64, fis: &[u8]) {
        if self.cmd & CMD_FRE == 0 {
            return;
        }
        let addr = self.fb.wrapping_add(offset);
        if mem.write_slice(fis, GuestAddress(addr)).is_err() {
            crate::guest_warn!("ahci: received-FIS area at {addr:#x} is outside RAM");
        }
    }

    /// Reads port register `reg`.
    pub fn read(&self, reg: u64) -> u32 {
        match reg {
            PXCLB => self.clb as u32,
            PXCLBU => (self.clb >> 32) as u32,
            PXFB => self.fb as u32,
            PXFBU => (self.fb >> 32) as u32,
            PXIS => self.is,
            PXIE => self.ie,
            PXCMD => self.cmd,
            PXTFD => self.tfd,
            PXSIG => self.sig,
            PXSSTS => self.ssts,
            PXSCTL => self.sctl,
            PXSERR => self.serr,
            PXSACT => self.sact,
            PXCI => self.ci,
            _ => 0,
        }
    }

    /// Whether a register clears the bits written as one (so a narrow write must not merge
    /// in the bits it did not touch), or sets them (PxCI, PxSACT).
    pub fn write_one_acts(reg: u64) -> bool {
        matches!(reg, PXIS | PXSERR | PXCI | PXSACT)
    }

    /// Writes port register `reg`.
    pub fn write(&mut self, reg: u64, val: u32, mem: &GuestMemoryMmap) {
        match reg {
            // The command list is 1 KiB aligned, the FIS area 256 bytes.
            PXCLB => self.clb = (self.clb & !0xffff_ffff) | u64::from(val & !0x3ff),
            PXCLBU => self.clb = (self.clb & 0xffff_ffff) | u64::from(val) << 32,
            PXFB => self.fb = (self.fb & !0xffff_ffff) | u64::from(val & !0xff),
            PXFBU => self.fb = (self.fb & 0xffff_ffff) | u64::from(val) << 32,
            PXIS => self.is &= !val,
            PXIE => self.ie = val & IS_VALID,
            PXCMD => self.write_cmd(val, mem),
            PXSCTL => self.write_sctl(val, mem),
            PXSERR => self.serr &= !val,
            PXSACT if self.cmd & CMD_ST != 0 => self.sact |= val,
            PXCI if self.cmd & CMD_ST != 0 => {
                self.ci |= val;
                self.process(mem);
            }
            PXCI => crate::guest_warn!("ahci: PxCI written while PxCMD.ST is clear"),
            _ => {}
        }
    }

    fn write_cmd(&mut self, val: u32, mem: &GuestMemoryMmap) {
        let old = self.cmd;
        let mut cmd = (old & !CMD_STORED) | (val & CMD_STORED);
        if val & CMD_CLO != 0 {
            self.tfd &= !u32::from(STATUS_BSY | STATUS_DRQ);
        }
        if cmd & CMD_ST != 0 {
            cmd |= CMD_CR;
        } else {
            // Stopping the engine drops every issued command (§3.3.7, ST).
            cmd &= !(CMD_CR | CMD_CCS_MASK);
            self.ci = 0;
            self.sact = 0;
            self.halted = false;
        }
        if cmd & CMD_FRE != 0 {
            cmd |= CMD_FR;
        } else {
            cmd &= !CMD_FR;
        }
        self.cmd = cmd;
        if old & CMD_FRE == 0 && cmd & CMD_FRE != 0 {
            self.post_signature(mem);
        }
    }

    fn write_sctl(&mut self, val: u32, mem: &GuestMemoryMmap) {
        let old_det = self.sctl & DET_MASK;
        self.sctl = val & SCTL_STORED;
        match val & DET_MASK {
            DET_COMRESET => {
                // The link is down while COMRESET is asserted; the device is busy.
                self.ssts = 0;
                self.tfd = u32::from(STATUS_BSY);
            }
            DET_OFFLINE => self.ssts = DET_OFFLINE,
            0 if old_det != 0 => self.link_up(Some(mem)),
            _ => {}
        }
    }

    /// Runs every issued command, lowest slot first, until one fails.
    fn process(&mut self, mem: &GuestMemoryMmap) {
        if self.halted || self.cmd & CMD_ST == 0 {
            return;
        }
        for slot in 0..SLOTS {
            let bit = 1u32 << slot;
            if self.ci & bit == 0 {
                continue;
            }
            self.cmd = (self.cmd & !CMD_CCS_MASK) | slot << CMD_CCS_SHIFT;
            let Some(outcome) = self.run_slot(mem, slot) else {
                // A control FIS: no answer of its own.
                self.ci &= !bit;
                continue;
            };
            self.finish(mem, slot, &outcome);
            if outcome.reply.failed() {
                self.is |= IS_TFES;
                self.halted = true;
                return;
            }
            self.ci &= !bit;
        }
    }

    /// Writes back a command's byte count, its answer FIS, PxTFD and PxIS.
    fn finish(&mut self, mem: &GuestMemoryMmap, slot: u32, outcome: &Outcome) {
        let header = self.clb.wrapping_add(u64::from(slot) * HEADER_LEN);
        let prdbc = outcome.bytes.min(u64::from(u32::MAX)) as u32;
        // An unreachable header was already reported when it could not be read.
        let _ = mem.write_obj(prdbc, GuestAddress(header.wrapping_add(HDR_PRDBC)));
        let tf = outcome.reply.tf;
        match outcome.reply.ending {
            Ending::PioIn { bytes } => {
                let fis = tf.pio_setup_fis(tf.status | STATUS_DRQ, bytes);
                self.store_fis(mem, RFIS_PIO_SETUP, &fis);
                self.is |= IS_PSS;
            }
            Ending::D2h => {
                self.store_fis(mem, RFIS_D2H, &tf.d2h_fis(true));
                self.is |= IS_DHRS;
            }
        }
        if outcome.dps {
            self.is |= IS_DPS;
        }
        self.tfd = tf.tfd();
    }

    /// Fetches and runs the command in `slot`; `None` for a control FIS (software reset).
    fn run_slot(&mut self, mem: &GuestMemoryMmap, slot: u32) -> Option<Outcome> {
        match self.fetch_and_run(mem, slot) {
            Ok(outcome) => outcome,
            Err(e) => {
                crate::guest_warn!("ahci: command in slot {slot} failed: {e}");
                Some(Outcome {
                    reply: error_reply(&e),
                    bytes: 0,
                    dps: false,
                })
            }
        }
    }

    fn fetch_and_run(
        &mut self,
        mem: &GuestMemoryMmap,
        slot: u32,
    ) -> Result<Option<Outcome>, AhciError> {
        let at = self.clb.wrapping_add(u64::from(slot) * HEADER_LEN);
        let mut raw = [0u8; HEADER_LEN as usize];
        mem.read_slice(&mut raw, GuestAddress(at))
            .map_err(|_| AhciError::GuestMemory { addr: at })?;
        let header = CommandHeader::parse(&raw);
        if !(CFL_MIN..=CFL_MAX).contains(&header.cfl) {
            return Err(AhciError::CommandFisLength { cfl: header.cfl });
        }
        let mut cfis = [0u8; CT_CFIS_LEN];
        mem.read_slice(&mut cfis, GuestAddress(header.ctba))
            .map_err(|_| AhciError::GuestMemory { addr: header.ctba })?;
        let fis = H2dFis::parse(&cfis).ok_or(AhciError::FisType { fis_type: cfis[0] })?;
        if !fis.is_command {
            self.control(mem, &fis);
            return Ok(None);
        }
        let mut xfer = Transfer::read(mem, header.ctba.wrapping_add(CT_PRDT), header.prdtl)?;
        let reply = match &mut self.device {
            None => Err(AhciError::NoDevice),
            Some(Device::Disk(disk)) => disk.execute(&fis, &mut xfer),
            Some(Device::Cdrom(cd)) if fis.command == CMD_PACKET => {
                let mut cdb = [0u8; 16];
                let acmd = header.ctba.wrapping_add(CT_ACMD);
                let read = cdb.get_mut(..CT_ACMD_LEN).ok_or(AhciError::InvalidField)?;
                mem.read_slice(read, GuestAddress(acmd))
                    .map_err(|_| AhciError::GuestMemory { addr: acmd })?;
                Ok(cd.packet(&cdb, &mut xfer))
            }
            Some(Device::Cdrom(cd)) => cd.execute_ata(&fis, &mut xfer),
        };
        let reply = reply.unwrap_or_else(|e| {
            crate::guest_warn!("ahci: ATA command {:#04x} failed: {e}", fis.command);
            error_reply(&e)
        });
        Ok(Some(Outcome {
            reply,
            bytes: xfer.done(),
            dps: xfer.passed_interrupt_entry(),
        }))
    }

    /// A FIS that writes the Device Control register: SRST asserted holds the device in
    /// reset, and its release resets the device, which sends its signature.
    fn control(&mut self, mem: &GuestMemoryMmap, fis: &H2dFis) {
        if fis.control & CONTROL_SRST != 0 {
            self.tfd = u32::from(STATUS_BSY);
        } else if self.tfd & u32::from(STATUS_BSY) != 0 {
            self.device_reset(Some(mem));
        }
    }
}

/// The answer to a command that could not run: ABRT, or IDNF for an address past the end.
fn error_reply(e: &AhciError) -> Reply {
    match e {
        AhciError::LbaRange { .. } => Reply::error(ERROR_IDNF),
        _ => Reply::error(ERROR_ABRT),
    }
}
