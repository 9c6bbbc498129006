//! Intel HD Audio: the ICH9 controller (8086:293E) with a duplex codec, the sound card
//! Windows drives with its inbox driver.
//!
//! Data flow: the guest's register accesses arrive on the vCPU through the controller's
//! 16 KiB memory BAR ([`Hda`] as a [`BusDevice`]). Codec verbs go through the CORB (a ring
//! in guest memory the guest advances with CORBWP) or the immediate command registers;
//! both are answered at once on the vCPU by the [`codec::Codec`], the CORB's answers
//! written to the RIRB in guest memory. Streams ([`stream::Stream`]: 4 input, then 4
//! output descriptors) move sound on the `hda` worker ([`worker`]): once the guest sets
//! RUN, the worker opens the stream on the [`AudioBackend`] (PipeWire in the helper) and
//! then, whenever the backend played or recorded some (its [`PcmBuffer`] signals), locks
//! the controller and walks the stream's BDL as far as the ring allows; so the guest is
//! paced by the host's audio clock, as virtio-snd is. A stream with no backend (none
//! reachable, a format the backend does not take) is paced by the host's clock and its
//! sound dropped (playback) or silent (capture). Interrupts go out through MSI when the
//! guest enabled it, else INTA#.
//!
//! Lock order: the controller, then a stream's [`PcmBuffer`] (which the backend's thread
//! only `try_lock`s).

pub mod codec;
mod state;
pub mod stream;
pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::audio::{AudioBackend, PcmBuffer};
use crate::bus::BusDevice;
use crate::legacy::IrqLine;
use crate::pci::config::{
    BarChange, BarKind, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, PciConfig, PciIds,
};
use crate::pci::{MsiCap, MsiRoutes, MsixInterrupt, PciDevice, PciError};
use codec::Codec;
use stream::{Format, STS_DESE, STS_FIFORDY, Stream, StreamError};

/// PCI identity: ICH9 HD Audio, subsystem Red Hat/QEMU as QEMU's `ich9-intel-hda`.
pub const VENDOR: u16 = 0x8086;
pub const DEVICE: u16 = 0x293e;
pub const SUBSYSTEM_VENDOR: u16 = 0x1af4;
pub const SUBSYSTEM: u16 = 0x1100;
/// The memory BAR's size.
pub const BAR_SIZE: u64 = 0x4000;
/// Input streams, then output streams.
pub const INPUT_STREAMS: usize = 4;
pub const OUTPUT_STREAMS: usize = 4;
pub const STREAMS: usize = INPUT_STREAMS + OUTPUT_STREAMS;
/// Playback runs this far ahead of the host; capture keeps this much for a slow guest.
pub const PLAYBACK_RING_MS: u32 = 20;
pub const CAPTURE_RING_MS: u32 = 200;

/// Global registers (offsets in the BAR).
pub const GCAP: u64 = 0x00;
pub const VMIN: u64 = 0x02;
pub const VMAJ: u64 = 0x03;
pub const OUTPAY: u64 = 0x04;
pub const INPAY: u64 = 0x06;
pub const GCTL: u64 = 0x08;
pub const WAKEEN: u64 = 0x0c;
pub const STATESTS: u64 = 0x0e;
pub const GSTS: u64 = 0x10;
pub const OUTSTRMPAY: u64 = 0x18;
pub const INSTRMPAY: u64 = 0x1a;
pub const INTCTL: u64 = 0x20;
pub const INTSTS: u64 = 0x24;
pub const WALCLK: u64 = 0x30;
pub const SSYNC_OLD: u64 = 0x34;
pub const SSYNC: u64 = 0x38;
pub const CORBLBASE: u64 = 0x40;
pub const CORBUBASE: u64 = 0x44;
pub const CORBWP: u64 = 0x48;
pub const CORBRP: u64 = 0x4a;
pub const CORBCTL: u64 = 0x4c;
pub const CORBSTS: u64 = 0x4d;
pub const CORBSIZE: u64 = 0x4e;
pub const RIRBLBASE: u64 = 0x50;
pub const RIRBUBASE: u64 = 0x54;
pub const RIRBWP: u64 = 0x58;
pub const RINTCNT: u64 = 0x5a;
pub const RIRBCTL: u64 = 0x5c;
pub const RIRBSTS: u64 = 0x5d;
pub const RIRBSIZE: u64 = 0x5e;
pub const ICOI: u64 = 0x60;
pub const IRII: u64 = 0x64;
pub const ICS: u64 = 0x68;
pub const DPLBASE: u64 = 0x70;
pub const DPUBASE: u64 = 0x74;
/// Stream descriptors: 0x20 bytes each from here.
pub const SD_BASE: u64 = 0x80;
pub const SD_SIZE: u64 = 0x20;
pub const SD_CTL: u64 = 0x00;
pub const SD_STS: u64 = 0x03;
pub const SD_LPIB: u64 = 0x04;
pub const SD_CBL: u64 = 0x08;
pub const SD_LVI: u64 = 0x0c;
pub const SD_FIFOW: u64 = 0x0e;
pub const SD_FIFOS: u64 = 0x10;
pub const SD_FMT: u64 = 0x12;
pub const SD_BDPL: u64 = 0x18;
pub const SD_BDPU: u64 = 0x1c;
/// Aliases of WALCLK and the LPIBs.
pub const ALIAS_BASE: u64 = 0x2000;

/// GCAP: 4 output, 4 input, no bidirectional streams, one SDO, 64-bit addressing.
const GCAP_VALUE: u32 = (OUTPUT_STREAMS as u32) << 12 | (INPUT_STREAMS as u32) << 8 | 1;
pub const GCTL_CRST: u32 = 1 << 0;
const GCTL_UNSOL: u32 = 1 << 8;
pub const INTCTL_CIE: u32 = 1 << 30;
pub const INTCTL_GIE: u32 = 1 << 31;
pub const CORBRP_RST: u16 = 1 << 15;
pub const CORBCTL_CMEIE: u8 = 1 << 0;
pub const CORBCTL_RUN: u8 = 1 << 1;
pub const CORBSTS_CMEI: u8 = 1 << 0;
/// CORBSIZE / RIRBSIZE: 256 entries supported (bit 6), size field 2 = 256.
const RING_SIZE_CAP: u8 = 0x40;
pub const RIRBWP_RST: u16 = 1 << 15;
pub const RIRBCTL_RINTCTL: u8 = 1 << 0;
pub const RIRBCTL_DMAEN: u8 = 1 << 1;
pub const RIRBCTL_OIC: u8 = 1 << 2;
pub const RIRBSTS_RINTFL: u8 = 1 << 0;
pub const RIRBSTS_OIS: u8 = 1 << 2;
pub const ICS_BUSY: u16 = 1 << 0;
pub const ICS_VALID: u16 = 1 << 1;
pub const DPLBASE_ENABLE: u32 = 1 << 0;
/// WALCLK counts at 24 MHz.
const WALCLK_HZ: u128 = 24_000_000;

/// Errors building the controller.
#[derive(Debug, thiserror::Error)]
pub enum HdaError {
    #[error("cannot lay out its PCI configuration space")]
    Pci(#[from] PciError),
    #[error("cannot create its worker's eventfd")]
    EventFd(#[source] std::io::Error),
}

/// How the controller reaches the machine.
pub struct HdaInterrupts {
    /// MSI vector 0 and its route (KVM irqfd and GSI route in the helper).
    pub msi: Arc<dyn MsixInterrupt>,
    pub routes: Arc<dyn MsiRoutes>,
    /// INTA#, used while MSI is off.
    pub intx: Arc<dyn IrqLine>,
}

/// A stream's link to the audio backend.
#[derive(Default)]
pub(crate) struct Link {
    /// The format word the backend stream was opened with.
    pub fmt: Option<u16>,
    /// The ring, when the backend took the stream.
    pub buffer: Option<Arc<PcmBuffer>>,
    /// Started on the backend.
    pub started: bool,
    /// Clock pacing (no backend): when the stream started and the bytes moved since.
    pub clock: Option<(Instant, u64)>,
}

/// The global registers (all but the streams'), at their power-on values by default.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Regs {
    gctl: u32,
    wakeen: u16,
    statests: u16,
    intctl: u32,
    ssync: u32,
    corb_base: u64,
    corb_wp: u16,
    corb_rp: u16,
    corb_rp_reset: bool,
    corb_ctl: u8,
    corb_sts: u8,
    corb_size: u8,
    rirb_base: u64,
    rirb_wp: u16,
    rintcnt: u16,
    rirb_ctl: u8,
    rirb_sts: u8,
    rirb_size: u8,
    /// Responses since RINTFL was last raised.
    rirb_count: u16,
    icoi: u32,
    irii: u32,
    ics: u16,
    dpbase: u64,
}

impl Default for Regs {
    fn default() -> Self {
        Regs {
            gctl: 0,
            wakeen: 0,
            statests: 0,
            intctl: 0,
            ssync: 0,
            corb_base: 0,
            corb_wp: 0,
            corb_rp: 0,
            corb_rp_reset: false,
            corb_ctl: 0,
            corb_sts: 0,
            corb_size: RING_SIZE_CAP | 2,
            rirb_base: 0,
            rirb_wp: 0,
            rintcnt: 0,
            rirb_ctl: 0,
            rirb_sts: 0,
            rirb_size: RING_SIZE_CAP | 2,
            rirb_count: 0,
            icoi: 0,
            irii: 0,
            ics: 0,
            dpbase: 0,
        }
    }
}

/// The controller.
pub struct Hda {
    config: PciConfig,
    msi: MsiCap,
    intx: Arc<dyn IrqLine>,
    intx_level: bool,
    /// The level as of the last MSI decision (a message goes out when it rises).
    msi_level: bool,
    mem: GuestMemoryMmap,
    pub(crate) backend: Option<Arc<dyn AudioBackend>>,
    codec: Codec,
    created: Instant,
    regs: Regs,
    pub(crate) streams: [Stream; STREAMS],
    pub(crate) links: [Link; STREAMS],
    /// Tells the worker that a stream started or stopped.
    wake: Arc<EventFd>,
    /// Saved for a VM's save: no stream moves any more (see [`state`]).
    frozen: bool,
}

impl Hda {
    /// A controller in reset, its DMA in guest memory `mem`, its sound through `backend`
    /// (None: clock-paced silence).
    pub fn new(
        mem: GuestMemoryMmap,
        backend: Option<Arc<dyn AudioBackend>>,
        interrupts: HdaInterrupts,
    ) -> Result<Hda, HdaError> {
        let mut config = PciConfig::new(PciIds {
            vendor: VENDOR,
            device: DEVICE,
            revision: 3,
            class: 0x04,
            subclass: 0x03,
            prog_if: 0,
            subsystem_vendor: SUBSYSTEM_VENDOR,
            subsystem: SUBSYSTEM,
        });
        config.add_bar(0, BAR_SIZE, BarKind::Mem64, false)?;
        config.set_interrupt_pin(1);
        // HDCTL, TCSEL, DCKCTL/DCKSTS (drivers clear TCSEL at 0x44): plain storage, and
        // MSI at 0x60 as on ICH9 and QEMU.
        config.add_device_specific(0x60);
        let msi = MsiCap::add(&mut config, interrupts.msi, interrupts.routes)?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(HdaError::EventFd)?;
        Ok(Hda {
            config,
            msi,
            intx: interrupts.intx,
            intx_level: false,
            msi_level: false,
            mem,
            backend,
            codec: Codec::new(),
            created: Instant::now(),
            regs: Regs::default(),
            streams: std::array::from_fn(|i| Stream::new(i >= INPUT_STREAMS)),
            links: std::array::from_fn(|_| Link::default()),
            wake: Arc::new(wake),
            frozen: false,
        })
    }

    /// The eventfd the worker waits on for stream starts and stops.
    pub fn wake_event(&self) -> Arc<EventFd> {
        self.wake.clone()
    }

    /// The codec, for tests and the worker.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    fn wake_worker(&self) {
        // A full counter still wakes the worker.
        let _ = self.wake.write(1);
    }

    /// Controller reset (GCTL.CRST cleared): everything but the PCI side to power-on
    /// values; streams stop.
    fn controller_reset(&mut self) {
        self.regs = Regs::default();
        for s in &mut self.streams {
            s.reset();
        }
        self.codec = Codec::new();
        self.wake_worker();
        self.update_irq(false);
    }

    fn wallclock(&self) -> u32 {
        (self.created.elapsed().as_nanos() * WALCLK_HZ / 1_000_000_000) as u32
    }

    /// INTSTS: a bit per stream with an enabled status, CIS, GIS.
    fn intsts(&self) -> u32 {
        let mut sts = 0u32;
        for (i, s) in self.streams.iter().enumerate() {
            if s.interrupting() {
                sts |= 1 << i;
            }
        }
        let cis = (self.regs.rirb_sts & RIRBSTS_RINTFL != 0
            && self.regs.rirb_ctl & RIRBCTL_RINTCTL != 0)
            || (self.regs.rirb_sts & RIRBSTS_OIS != 0 && self.regs.rirb_ctl & RIRBCTL_OIC != 0)
            || (self.regs.corb_sts & CORBSTS_CMEI != 0 && self.regs.corb_ctl & CORBCTL_CMEIE != 0);
        if cis {
            sts |= INTCTL_CIE;
        }
        if sts & self.regs.intctl & !INTCTL_GIE != 0 {
            sts |= INTCTL_GIE;
        }
        sts
    }

    /// Drives the interrupt: INTA# follows the level while MSI is off; with MSI on a
    /// message goes out when the level rises, or when `event` brought a new condition
    /// while it was already up.
    fn update_irq(&mut self, event: bool) {
        let level = self.regs.intctl & INTCTL_GIE != 0 && self.intsts() & INTCTL_GIE != 0;
        let msi = self.msi.enabled();
        let intx = level && !msi && self.config.command() & COMMAND_INTX_DISABLE == 0;
        if intx != self.intx_level {
            self.intx_level = intx;
            self.intx.set_level(intx);
        }
        if msi && level && (!self.msi_level || event) {
            self.msi.signal();
        }
        self.msi_level = msi && level;
    }

    fn ring_entries(size: u8) -> u16 {
        match size & 3 {
            0 => 2,
            1 => 16,
            _ => 256,
        }
    }

    /// Runs the verbs between CORBRP and CORBWP, answering each in the RIRB.
    fn process_corb(&mut self) {
        if self.regs.corb_ctl & CORBCTL_RUN == 0 || self.regs.rirb_ctl & RIRBCTL_DMAEN == 0 {
            return;
        }
        let entries = Self::ring_entries(self.regs.corb_size);
        let wp = self.regs.corb_wp % entries;
        let mut answered = false;
        // At most one lap: a write pointer past the ring's size wraps.
        for _ in 0..entries {
            if self.regs.corb_rp % entries == wp {
                break;
            }
            let rp = (self.regs.corb_rp + 1) % entries;
            let at = self.regs.corb_base.wrapping_add(u64::from(rp) * 4);
            let verb = match self.mem.read_obj::<u32>(GuestAddress(at)) {
                Ok(v) => v,
                Err(_) => {
                    crate::guest_warn!("hda: CORB entry at {at:#x} is outside guest memory");
                    self.regs.corb_sts |= CORBSTS_CMEI;
                    self.regs.corb_ctl &= !CORBCTL_RUN;
                    break;
                }
            };
            self.regs.corb_rp = rp;
            if let Some(response) = self.command(verb) {
                if !self.push_response(response) {
                    break;
                }
                answered = true;
            }
        }
        if answered && self.regs.corb_rp % entries == wp {
            // The CORB is drained: tell the guest even short of RINTCNT.
            self.raise_rintfl();
        }
        self.update_irq(answered);
    }

    /// RINTFL is the response interrupt: set only while RINTCTL enables it.
    fn raise_rintfl(&mut self) {
        if self.regs.rirb_count > 0 && self.regs.rirb_ctl & RIRBCTL_RINTCTL != 0 {
            self.regs.rirb_sts |= RIRBSTS_RINTFL;
            self.regs.rirb_count = 0;
        }
    }

    /// Writes one response to the RIRB; false if the RIRB is unusable.
    fn push_response(&mut self, response: u32) -> bool {
        let entries = Self::ring_entries(self.regs.rirb_size);
        let wp = (self.regs.rirb_wp + 1) % entries;
        let at = self.regs.rirb_base.wrapping_add(u64::from(wp) * 8);
        // Extended word: codec address 0, solicited.
        let mut entry = [0u8; 8];
        entry[..4].copy_from_slice(&response.to_le_bytes());
        if self.mem.write_slice(&entry, GuestAddress(at)).is_err() {
            crate::guest_warn!("hda: RIRB entry at {at:#x} is outside guest memory");
            self.regs.rirb_ctl &= !RIRBCTL_DMAEN;
            self.regs.corb_sts |= CORBSTS_CMEI;
            return false;
        }
        self.regs.rirb_wp = wp;
        self.regs.rirb_count += 1;
        let limit = match self.regs.rintcnt & 0xff {
            0 => 256,
            n => n,
        };
        if self.regs.rirb_count >= limit {
            self.raise_rintfl();
        }
        true
    }

    /// Hands a command to the codec it names; None when no codec answers.
    fn command(&mut self, verb: u32) -> Option<u32> {
        let cad = verb >> 28;
        let nid = ((verb >> 20) & 0x7f) as u8;
        if cad != 0 || self.regs.gctl & GCTL_CRST == 0 {
            return None;
        }
        Some(self.codec.verb(nid, verb & 0xf_ffff))
    }

    fn stream_index(offset: u64) -> Option<(usize, u64)> {
        let i = offset.checked_sub(SD_BASE)? / SD_SIZE;
        ((i as usize) < STREAMS).then(|| (i as usize, (offset - SD_BASE) % SD_SIZE))
    }

    /// The register at `offset` (start, width), if any.
    fn register_at(offset: u64) -> Option<(u64, u64)> {
        const GLOBAL: &[(u64, u64)] = &[
            (GCAP, 2),
            (VMIN, 1),
            (VMAJ, 1),
            (OUTPAY, 2),
            (INPAY, 2),
            (GCTL, 4),
            (WAKEEN, 2),
            (STATESTS, 2),
            (GSTS, 2),
            (OUTSTRMPAY, 2),
            (INSTRMPAY, 2),
            (INTCTL, 4),
            (INTSTS, 4),
            (WALCLK, 4),
            (SSYNC_OLD, 4),
            (SSYNC, 4),
            (CORBLBASE, 4),
            (CORBUBASE, 4),
            (CORBWP, 2),
            (CORBRP, 2),
            (CORBCTL, 1),
            (CORBSTS, 1),
            (CORBSIZE, 1),
            (RIRBLBASE, 4),
            (RIRBUBASE, 4),
            (RIRBWP, 2),
            (RINTCNT, 2),
            (RIRBCTL, 1),
            (RIRBSTS, 1),
            (RIRBSIZE, 1),
            (ICOI, 4),
            (IRII, 4),
            (ICS, 2),
            (DPLBASE, 4),
            (DPUBASE, 4),
        ];
        const STREAM: &[(u64, u64)] = &[
            (SD_CTL, 3),
            (SD_STS, 1),
            (SD_LPIB, 4),
            (SD_CBL, 4),
            (SD_LVI, 2),
            (SD_FIFOW, 2),
            (SD_FIFOS, 2),
            (SD_FMT, 2),
            (SD_BDPL, 4),
            (SD_BDPU, 4),
        ];
        let find = |table: &[(u64, u64)], at: u64| {
            table
                .iter()
                .find(|(base, width)| (*base..base + width).contains(&at))
                .copied()
        };
        if offset >= ALIAS_BASE {
            return Self::register_at(offset - ALIAS_BASE)
                .filter(|(b, _)| {
                    *b == WALCLK || Self::stream_index(*b).is_some_and(|s| s.1 == SD_LPIB)
                })
                .map(|(b, w)| (b + ALIAS_BASE, w));
        }
        if let Some((i, reg)) = Self::stream_index(offset) {
            let base = SD_BASE + i as u64 * SD_SIZE;
            return find(STREAM, reg).map(|(b, w)| (base + b, w));
        }
        find(GLOBAL, offset)
    }

    /// Reads the register starting at `base`.
    fn read_register(&mut self, base: u64) -> u32 {
        if base >= ALIAS_BASE {
            return self.read_register(base - ALIAS_BASE);
        }
        if let Some((i, reg)) = Self::stream_index(base) {
            let s = &self.streams[i];
            return match reg {
                SD_CTL => s.ctl,
                // The FIFO is always ready (as QEMU's controller reports it, which
                // Windows' driver is known to accept), except while the stream is in reset.
                SD_STS => u32::from(
                    s.sts
                        | if s.ctl & stream::CTL_SRST == 0 {
                            STS_FIFORDY
                        } else {
                            0
                        },
                ),
                SD_LPIB => s.lpib,
                SD_CBL => s.cbl,
                SD_LVI => u32::from(s.lvi),
                SD_FIFOW => u32::from(s.fifow),
                SD_FIFOS => u32::from(s.fifos()),
                SD_FMT => u32::from(s.fmt),
                SD_BDPL => s.bdpl,
                SD_BDPU => s.bdpu,
                _ => 0,
            };
        }
        match base {
            GCAP => GCAP_VALUE,
            VMIN => 0,
            VMAJ => 1,
            OUTPAY => 0x3c,
            INPAY => 0x1d,
            GCTL => self.regs.gctl,
            WAKEEN => u32::from(self.regs.wakeen),
            STATESTS => u32::from(self.regs.statests),
            INTCTL => self.regs.intctl,
            INTSTS => self.intsts(),
            WALCLK => self.wallclock(),
            SSYNC | SSYNC_OLD => self.regs.ssync,
            CORBLBASE => self.regs.corb_base as u32,
            CORBUBASE => (self.regs.corb_base >> 32) as u32,
            CORBWP => u32::from(self.regs.corb_wp),
            CORBRP => {
                u32::from(self.regs.corb_rp) | if self.regs.corb_rp_reset { 0x8000 } else { 0 }
            }
            CORBCTL => u32::from(self.regs.corb_ctl),
            CORBSTS => u32::from(self.regs.corb_sts),
            CORBSIZE => u32::from(self.regs.corb_size),
            RIRBLBASE => self.regs.rirb_base as u32,
            RIRBUBASE => (self.regs.rirb_base >> 32) as u32,
            RIRBWP => u32::from(self.regs.rirb_wp),
            RINTCNT => u32::from(self.regs.rintcnt),
            RIRBCTL => u32::from(self.regs.rirb_ctl),
            RIRBSTS => u32::from(self.regs.rirb_sts),
            RIRBSIZE => u32::from(self.regs.rirb_size),
            ICOI => self.regs.icoi,
            IRII => self.regs.irii,
            ICS => u32::from(self.regs.ics),
            DPLBASE => self.regs.dpbase as u32,
            DPUBASE => (self.regs.dpbase >> 32) as u32,
            _ => 0,
        }
    }

    /// Writes the register at `base`: `value`'s bits under `mask` were written.
    fn write_register(&mut self, base: u64, value: u32, mask: u32) {
        let merge = |old: u32| (old & !mask) | (value & mask);
        if let Some((i, reg)) = Self::stream_index(base) {
            self.write_stream(i, reg, value, mask);
            return;
        }
        let in_reset = self.regs.gctl & GCTL_CRST == 0;
        match base {
            GCTL => {
                let new = merge(self.regs.gctl) & (GCTL_CRST | GCTL_UNSOL | 2);
                if new & GCTL_CRST == 0 {
                    self.controller_reset();
                } else {
                    if in_reset {
                        // Out of reset: the codec at address 0 reports in.
                        self.regs.statests |= 1;
                    }
                    // FCNTRL (bit 1) flushes nothing here: it reads back as written.
                    self.regs.gctl = new;
                }
            }
            _ if in_reset => {} // everything else ignores writes while in reset
            WAKEEN => self.regs.wakeen = merge(u32::from(self.regs.wakeen)) as u16 & 0x7fff,
            STATESTS => self.regs.statests &= !((value & mask) as u16),
            INTCTL => {
                self.regs.intctl = merge(self.regs.intctl) & (INTCTL_GIE | INTCTL_CIE | 0xff);
                self.update_irq(false);
            }
            SSYNC | SSYNC_OLD => {
                // Streams whose bit is set hold still until it clears: guests start
                // several streams at once so.
                self.regs.ssync = merge(self.regs.ssync) & 0xff;
                self.wake_worker();
            }
            CORBLBASE => {
                self.regs.corb_base = (self.regs.corb_base & !0xffff_ffff)
                    | u64::from(merge(self.regs.corb_base as u32) & !0x7f)
            }
            CORBUBASE => {
                self.regs.corb_base = (self.regs.corb_base & 0xffff_ffff)
                    | u64::from(merge((self.regs.corb_base >> 32) as u32)) << 32
            }
            CORBWP => {
                self.regs.corb_wp = merge(u32::from(self.regs.corb_wp)) as u16 & 0xff;
                self.process_corb();
            }
            CORBRP => {
                let v = merge(u32::from(self.regs.corb_rp)) as u16;
                self.regs.corb_rp_reset = v & CORBRP_RST != 0;
                if self.regs.corb_rp_reset {
                    self.regs.corb_rp = 0;
                }
            }
            CORBCTL => {
                self.regs.corb_ctl =
                    merge(u32::from(self.regs.corb_ctl)) as u8 & (CORBCTL_RUN | CORBCTL_CMEIE);
                self.process_corb();
                self.update_irq(false);
            }
            CORBSTS => {
                self.regs.corb_sts &= !((value & mask) as u8);
                self.update_irq(false);
            }
            CORBSIZE => {
                self.regs.corb_size =
                    RING_SIZE_CAP | (merge(u32::from(self.regs.corb_size)) as u8 & 3)
            }
            RIRBLBASE => {
                self.regs.rirb_base = (self.regs.rirb_base & !0xffff_ffff)
                    | u64::from(merge(self.regs.rirb_base as u32) & !0x7f)
            }
            RIRBUBASE => {
                self.regs.rirb_base = (self.regs.rirb_base & 0xffff_ffff)
                    | u64::from(merge((self.regs.rirb_base >> 32) as u32)) << 32
            }
            RIRBWP if (value & mask) as u16 & RIRBWP_RST != 0 => {
                self.regs.rirb_wp = 0;
                self.regs.rirb_count = 0;
            }
            RINTCNT => self.regs.rintcnt = merge(u32::from(self.regs.rintcnt)) as u16 & 0xff,
            RIRBCTL => {
                self.regs.rirb_ctl = merge(u32::from(self.regs.rirb_ctl)) as u8
                    & (RIRBCTL_RINTCTL | RIRBCTL_DMAEN | RIRBCTL_OIC);
                self.process_corb();
                self.update_irq(false);
            }
            RIRBSTS => {
                self.regs.rirb_sts &= !((value & mask) as u8 & (RIRBSTS_RINTFL | RIRBSTS_OIS));
                self.update_irq(false);
            }
            RIRBSIZE => {
                self.regs.rirb_size =
                    RING_SIZE_CAP | (merge(u32::from(self.regs.rirb_size)) as u8 & 3)
            }
            ICOI => self.regs.icoi = merge(self.regs.icoi),
            ICS => {
                let v = merge(u32::from(self.regs.ics)) as u16;
                // IRV is write-one-to-clear.
                if (value & mask) as u16 & ICS_VALID != 0 {
                    self.regs.ics &= !ICS_VALID;
                }
                if v & ICS_BUSY != 0
                    && self.regs.ics & ICS_BUSY == 0
                    && let Some(r) = self.command(self.regs.icoi)
                {
                    self.regs.irii = r;
                    self.regs.ics |= ICS_VALID;
                }
            }
            DPLBASE => {
                self.regs.dpbase = (self.regs.dpbase & !0xffff_ffff)
                    | u64::from(merge(self.regs.dpbase as u32) & !0x7e)
            }
            DPUBASE => {
                self.regs.dpbase = (self.regs.dpbase & 0xffff_ffff)
                    | u64::from(merge((self.regs.dpbase >> 32) as u32)) << 32
            }
            _ => {}
        }
    }

    fn write_stream(&mut self, i: usize, reg: u64, value: u32, mask: u32) {
        if self.regs.gctl & GCTL_CRST == 0 {
            return;
        }
        let merge = |old: u32| (old & !mask) | (value & mask);
        let s = &mut self.streams[i];
        match reg {
            SD_CTL => {
                let was_running = s.running();
                let new = merge(s.ctl) & 0x00ff_001f;
                if new & stream::CTL_SRST != 0 {
                    s.reset();
                    s.ctl = new & stream::CTL_SRST;
                } else {
                    s.ctl = new;
                }
                if was_running != s.running() {
                    self.wake_worker();
                }
                self.update_irq(false);
            }
            SD_STS => {
                s.sts &=
                    !((value & mask) as u8 & (stream::STS_BCIS | stream::STS_FIFOE | STS_DESE));
                self.update_irq(false);
            }
            // LPIB is read-only; the rest only change while the stream is stopped, but
            // guests follow that rule and nothing breaks if one does not.
            SD_CBL => s.cbl = merge(s.cbl),
            SD_LVI => s.lvi = merge(u32::from(s.lvi)) as u16 & 0xff,
            SD_FIFOW => s.fifow = merge(u32::from(s.fifow)) as u16 & 7,
            SD_FMT => s.fmt = merge(u32::from(s.fmt)) as u16 & 0x7f7f,
            SD_BDPL => s.bdpl = merge(s.bdpl) & !0x7f,
            SD_BDPU => s.bdpu = merge(s.bdpu),
            _ => {}
        }
    }

    /// Whether stream `i` moves data: RUN set, out of reset, not held by SSYNC.
    pub(crate) fn active(&self, i: usize) -> bool {
        self.streams[i].running() && self.regs.ssync & (1 << i) == 0
    }

    /// Stream `i` stops with a descriptor error.
    fn stream_failed(&mut self, i: usize, e: StreamError) {
        crate::guest_warn!("hda: stream {i} stopped: {e}");
        let s = &mut self.streams[i];
        s.sts |= STS_DESE;
        s.ctl &= !stream::CTL_RUN;
        self.wake_worker();
        self.update_irq(true);
    }

    /// Moves what may move now on every running stream; the worker calls this whenever a
    /// ring or the clock lets more through. Returns the time until the next clock-paced
    /// transfer is due (None: nothing clock-paced runs).
    pub fn service(&mut self) -> Option<Duration> {
        if self.frozen {
            return None;
        }
        let mut next: Option<Duration> = None;
        let mut event = false;
        let bus_master = self.config.command() & COMMAND_BUS_MASTER != 0;
        for i in 0..STREAMS {
            if !self.active(i) || !bus_master {
                continue;
            }
            match self.service_stream(i) {
                Ok((ioc, wait)) => {
                    event |= ioc;
                    if let Some(w) = wait {
                        next = Some(next.map_or(w, |n| n.min(w)));
                    }
                }
                Err(e) => self.stream_failed(i, e),
            }
        }
        if event {
            self.update_irq(true);
        }
        next
    }

    /// One stream's transfer: returns whether an IOC entry completed, and when the clock
    /// lets the next bytes through (clock-paced streams).
    fn service_stream(&mut self, i: usize) -> Result<(bool, Option<Duration>), StreamError> {
        let output = self.streams[i].output;
        let fmt = Format::parse(self.streams[i].fmt);
        let frame = fmt.map_or(1, |f| f.frame_bytes());
        let tag = self.streams[i].tag();
        let converter = self.codec.converter_for(output, tag).copied();
        let gain = |data: &mut [u8]| apply_gain(data, fmt, converter.as_ref());
        let link = &mut self.links[i];
        let mut ioc = false;
        let mut wait = None;
        if let Some(buffer) = link.buffer.clone() {
            let s = &mut self.streams[i];
            if output {
                let room = buffer.room();
                let limit = room - room % frame;
                let m = s.transfer(
                    &self.mem,
                    limit,
                    &mut |chunk| {
                        let mut data = chunk.to_vec();
                        gain(&mut data);
                        // The room was checked under the controller lock; only this
                        // thread pushes, so the chunk fits.
                        let _ = buffer.push(&data);
                    },
                    &mut |_| 0,
                )?;
                ioc = m.ioc;
            } else {
                let m = s.transfer(&self.mem, usize::MAX, &mut |_| {}, &mut |out| {
                    let n = buffer.take_up_to(out);
                    gain(&mut out[..n]);
                    n
                })?;
                ioc = m.ioc;
            }
        } else if let Some(f) = fmt {
            // No backend stream: the host's clock paces, sound is dropped or silent.
            let (start, done) = *link.clock.get_or_insert((Instant::now(), 0));
            let due =
                (start.elapsed().as_nanos() * u128::from(f.byte_rate()) / 1_000_000_000) as u64;
            let limit = due.saturating_sub(done) as usize;
            let limit = limit - limit % frame;
            let s = &mut self.streams[i];
            let m = s.transfer(&self.mem, limit, &mut |_| {}, &mut |out| {
                out.fill(0);
                out.len()
            })?;
            ioc = m.ioc;
            if let Some((_, d)) = &mut link.clock {
                *d += m.bytes as u64;
            }
            // Next due after ~5 ms of sound.
            wait = Some(Duration::from_millis(5));
        }
        self.write_position(i);
        if ioc {
            self.streams[i].sts |= stream::STS_BCIS;
        }
        Ok((ioc, wait))
    }

    /// The DMA position buffer: LPIB of stream `i` at DPBASE + 8 * i.
    fn write_position(&mut self, i: usize) {
        if self.regs.dpbase & u64::from(DPLBASE_ENABLE) == 0 {
            return;
        }
        let at = (self.regs.dpbase & !0x7f).wrapping_add(i as u64 * 8);
        if self
            .mem
            .write_obj(self.streams[i].lpib, GuestAddress(at))
            .is_err()
        {
            crate::guest_warn!("hda: position buffer at {at:#x} is outside guest memory");
            self.regs.dpbase &= !u64::from(DPLBASE_ENABLE);
        }
    }
}

/// Scales 16-bit samples by the converter's amplifier (0 dB leaves them alone); a stream
/// no converter listens to is silent.
fn apply_gain(data: &mut [u8], fmt: Option<Format>, converter: Option<&codec::Converter>) {
    let Some(c) = converter else {
        data.fill(0);
        return;
    };
    let Some(f) = fmt.filter(|f| f.bits == 16) else {
        return;
    };
    let factors = [c.factor(0), c.factor(1)];
    if factors == [1.0, 1.0] {
        return;
    }
    let channels = usize::from(f.channels);
    for (k, sample) in data.chunks_exact_mut(2).enumerate() {
        let side = usize::from(channels > 1 && k % channels == 1);
        let v = f32::from(i16::from_le_bytes([sample[0], sample[1]])) * factors[side];
        sample.copy_from_slice(&(v as i16).to_le_bytes());
    }
}

impl PciDevice for Hda {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarChange> {
        let changes = self.config.write_reg(reg, offset, data);
        if self.msi.covers(reg) {
            self.msi.sync(&self.config);
        }
        // INTx disable or bus mastering may have changed.
        self.update_irq(false);
        self.wake_worker();
        changes
    }
}

impl BusDevice for Hda {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let mut i = 0;
        while i < data.len() {
            let at = offset + i as u64;
            let Some((base, width)) = Self::register_at(at) else {
                data[i] = 0;
                i += 1;
                continue;
            };
            let value = self.read_register(base);
            let mut k = at - base;
            while k < width && i < data.len() {
                data[i] = (value >> (8 * k)) as u8;
                k += 1;
                i += 1;
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            let at = offset + i as u64;
            let Some((base, width)) = Self::register_at(at) else {
                i += 1;
                continue;
            };
            let (mut value, mut mask) = (0u32, 0u32);
            let mut k = at - base;
            while k < width && i < data.len() {
                value |= u32::from(data[i]) << (8 * k);
                mask |= 0xff << (8 * k);
                k += 1;
                i += 1;
            }
            // Aliases are read-only.
            if base < ALIAS_BASE {
                self.write_register(base, value, mask);
            }
        }
    }
}

#[cfg(test)]
mod tests;
