//! The controller driven the way a driver drives it, through guest memory: reset, verbs
//! through the CORB and the immediate registers, a stream over a BDL of several entries.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::codec::VENDOR_ID;
use super::stream::{CTL_IOCE, CTL_RUN, CTL_SRST, STS_BCIS, STS_DESE};
use super::*;
use crate::audio::{AudioError, Direction, PcmParams};

const RAM: u64 = 0x10_0000;
const CORB: u64 = 0x1000;
const RIRB: u64 = 0x2000;
const BDL: u64 = 0x3000;
const POS: u64 = 0x4000;
const DATA: u64 = 0x8000;

#[derive(Default)]
struct Irqs {
    msi: AtomicU32,
    level: Mutex<bool>,
}

impl MsixInterrupt for Irqs {
    fn trigger(&self, _vector: u16) -> std::io::Result<()> {
        self.msi.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl MsiRoutes for Irqs {
    fn update(&self, _vector: u16, _addr: u64, _data: u32, _masked: bool) {}
}

impl IrqLine for Irqs {
    fn trigger(&self) {}
    fn set_level(&self, high: bool) {
        *self.level.lock().unwrap() = high;
    }
}

/// A stream the backend opened: id, direction, parameters, ring.
type Opened = (u32, Direction, PcmParams, Arc<PcmBuffer>);

/// A backend that keeps the streams' rings for the test to drain or fill.
#[derive(Default)]
struct Rings(Mutex<Vec<Opened>>);

impl AudioBackend for Rings {
    fn open(
        &self,
        id: u32,
        direction: Direction,
        params: PcmParams,
        buffer: Arc<PcmBuffer>,
    ) -> Result<(), AudioError> {
        self.0.lock().unwrap().push((id, direction, params, buffer));
        Ok(())
    }
    fn start(&self, _id: u32) {}
    fn stop(&self, _id: u32) {}
    fn close(&self, _id: u32) {}
}

struct Driver {
    hda: Arc<Mutex<Hda>>,
    mem: GuestMemoryMmap,
    irqs: Arc<Irqs>,
    rings: Arc<Rings>,
    corb_wp: u16,
    rirb_rp: u16,
}

impl Driver {
    fn new() -> Driver {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let irqs = Arc::new(Irqs::default());
        let rings = Arc::new(Rings::default());
        let mut hda = Hda::new(
            mem.clone(),
            Some(rings.clone()),
            HdaInterrupts {
                msi: irqs.clone(),
                routes: irqs.clone(),
                intx: irqs.clone(),
            },
        )
        .unwrap();
        // Memory decoding and bus mastering on.
        hda.write_config(1, 0, &[0x06, 0]);
        Driver {
            hda: Arc::new(Mutex::new(hda)),
            mem,
            irqs,
            rings,
            corb_wp: 0,
            rirb_rp: 0,
        }
    }

    fn r32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.hda.lock().unwrap().read(0, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn r16(&self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        self.hda.lock().unwrap().read(0, off, &mut b);
        u16::from_le_bytes(b)
    }
    fn r8(&self, off: u64) -> u8 {
        let mut b = [0u8; 1];
        self.hda.lock().unwrap().read(0, off, &mut b);
        b[0]
    }
    fn w32(&self, off: u64, v: u32) {
        self.hda.lock().unwrap().write(0, off, &v.to_le_bytes());
    }
    fn w16(&self, off: u64, v: u16) {
        self.hda.lock().unwrap().write(0, off, &v.to_le_bytes());
    }
    fn w8(&self, off: u64, v: u8) {
        self.hda.lock().unwrap().write(0, off, &[v]);
    }

    /// Reset, CORB and RIRB of 256 entries, RINTCNT 1, interrupts on.
    fn init(&mut self) {
        self.w32(GCTL, 0);
        assert_eq!(self.r32(GCTL) & GCTL_CRST, 0);
        self.w32(GCTL, GCTL_CRST);
        assert_eq!(self.r32(GCTL) & GCTL_CRST, 1);
        assert_eq!(self.r16(STATESTS), 1, "codec 0 reports in");
        self.w16(STATESTS, 1);
        assert_eq!(self.r16(STATESTS), 0, "write one to clear");
        self.w32(CORBLBASE, CORB as u32);
        self.w32(CORBUBASE, 0);
        self.w8(CORBSIZE, 2);
        self.w16(CORBRP, CORBRP_RST);
        assert_eq!(self.r16(CORBRP) & CORBRP_RST, CORBRP_RST);
        self.w16(CORBRP, 0);
        assert_eq!(self.r16(CORBRP), 0);
        self.w32(RIRBLBASE, RIRB as u32);
        self.w16(RIRBWP, RIRBWP_RST);
        self.w16(RINTCNT, 1);
        self.w8(RIRBCTL, RIRBCTL_DMAEN | RIRBCTL_RINTCTL);
        self.w8(CORBCTL, CORBCTL_RUN);
        self.w32(INTCTL, INTCTL_GIE | INTCTL_CIE | 0xff);
    }

    /// Sends verbs through the CORB and returns the answers from the RIRB.
    fn verbs(&mut self, verbs: &[u32]) -> Vec<u32> {
        for v in verbs {
            self.corb_wp = (self.corb_wp + 1) % 256;
            self.mem
                .write_obj(*v, GuestAddress(CORB + u64::from(self.corb_wp) * 4))
                .unwrap();
        }
        self.w16(CORBWP, self.corb_wp);
        assert_eq!(self.r16(CORBRP), self.corb_wp);
        let mut out = Vec::new();
        while self.rirb_rp != self.r16(RIRBWP) {
            self.rirb_rp = (self.rirb_rp + 1) % 256;
            let at = RIRB + u64::from(self.rirb_rp) * 8;
            out.push(self.mem.read_obj::<u32>(GuestAddress(at)).unwrap());
            assert_eq!(self.mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap(), 0);
        }
        out
    }

    fn sd(i: usize, reg: u64) -> u64 {
        SD_BASE + i as u64 * SD_SIZE + reg
    }

    /// A BDL of `lens` entries back to back from DATA, IOC on each.
    fn program_stream(&self, i: usize, lens: &[u32], fmt: u16, tag: u8) {
        let mut addr = DATA;
        for (k, len) in lens.iter().enumerate() {
            let e = BDL + k as u64 * 16;
            self.mem.write_obj(addr, GuestAddress(e)).unwrap();
            self.mem.write_obj(*len, GuestAddress(e + 8)).unwrap();
            self.mem.write_obj(1u32, GuestAddress(e + 12)).unwrap();
            addr += u64::from(*len);
        }
        self.w8(Self::sd(i, SD_CTL), CTL_SRST as u8);
        assert_eq!(self.r8(Self::sd(i, SD_CTL)) & 1, 1);
        self.w8(Self::sd(i, SD_CTL), 0);
        self.w32(Self::sd(i, SD_BDPL), BDL as u32);
        self.w32(Self::sd(i, SD_BDPU), 0);
        self.w32(Self::sd(i, SD_CBL), lens.iter().sum());
        self.w16(Self::sd(i, SD_LVI), lens.len() as u16 - 1);
        self.w16(Self::sd(i, SD_FMT), fmt);
        self.w8(Self::sd(i, SD_CTL + 2), tag << 4);
    }

    fn run(&self, i: usize) {
        self.w8(Self::sd(i, SD_CTL), (CTL_RUN | CTL_IOCE) as u8);
    }

    /// What the worker does on a wake, synchronously.
    fn pump(&self) {
        worker::sync_backend(&self.hda);
        self.hda.lock().unwrap().service();
    }

    fn ring(&self, id: u32) -> Arc<PcmBuffer> {
        let rings = self.rings.0.lock().unwrap();
        rings.iter().rev().find(|r| r.0 == id).unwrap().3.clone()
    }
}

#[test]
fn identity_and_global_registers_after_reset() {
    let d = Driver::new();
    let h = d.hda.lock().unwrap();
    assert_eq!(h.config().vendor_device(), (0x8086, 0x293e));
    assert_eq!(h.config().read_reg(2) >> 8, 0x040300, "class 0x0403");
    assert_eq!(h.config().read_reg(11), 0x1100_1af4);
    assert_eq!(h.msi.offset(), 0x60, "MSI where ICH9 has it");
    drop(h);
    // TCSEL (0x44) is storage of its own, not the MSI address.
    let mut h = d.hda.lock().unwrap();
    h.write_config(0x44 / 4, 0, &[0x07]);
    assert_eq!(h.config().read_reg(0x44 / 4) & 0xff, 0x07);
    assert_eq!(h.config().read_reg(0x64 / 4), 0);
    drop(h);
    assert_eq!(d.r16(GCAP), 0x4401, "4 out, 4 in, 64-bit");
    assert_eq!((d.r8(VMIN), d.r8(VMAJ)), (0, 1));
    assert_eq!(d.r16(OUTPAY), 0x3c);
    assert_eq!(d.r32(GCTL), 0, "in reset at power-on");
    d.w32(CORBLBASE, CORB as u32);
    assert_eq!(d.r32(CORBLBASE), 0, "ignored while in reset");
    d.w32(GCTL, GCTL_CRST);
    d.w32(CORBLBASE, 0x1234_56ff);
    assert_eq!(d.r32(CORBLBASE), 0x1234_5680, "128-byte aligned");
    assert_eq!(d.r8(CORBSIZE), 0x42);
    let a = d.r32(WALCLK);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let b = d.r32(WALCLK);
    // 24 MHz: 2 ms is at least 48000 ticks.
    assert!(b.wrapping_sub(a) >= 48_000, "{a} {b}");
    assert_eq!(d.r32(ALIAS_BASE + WALCLK) / 1000, d.r32(WALCLK) / 1000);
    d.w32(GCTL, 0);
    assert_eq!(d.r32(CORBLBASE), 0, "CRST clears the controller");
}

#[test]
fn corb_verbs_are_answered_in_the_rirb_with_an_interrupt() {
    let mut d = Driver::new();
    d.init();
    let answers = d.verbs(&[0x000f_0000, 0x001f_0004, 0x002f_0009]);
    assert_eq!(answers, [VENDOR_ID, 0x0002_0004, 0x1d]);
    assert_eq!(d.r8(RIRBSTS) & RIRBSTS_RINTFL, RIRBSTS_RINTFL);
    assert_eq!(d.r32(INTSTS), INTCTL_GIE | INTCTL_CIE);
    assert!(*d.irqs.level.lock().unwrap(), "INTA# while MSI is off");
    d.w8(RIRBSTS, RIRBSTS_RINTFL);
    assert_eq!(d.r32(INTSTS), 0);
    assert!(!*d.irqs.level.lock().unwrap());
    // A verb to a codec address with no codec gets no answer.
    assert_eq!(d.verbs(&[0x100f_0000]), Vec::<u32>::new());
}

#[test]
fn msi_replaces_intx_once_enabled() {
    let mut d = Driver::new();
    {
        let mut h = d.hda.lock().unwrap();
        let cap = h.msi.offset();
        h.write_config(cap / 4 + 1, 0, &0xfee0_0000u32.to_le_bytes());
        h.write_config(cap / 4, 2, &[1]);
    }
    d.init();
    d.verbs(&[0x000f_0000]);
    assert_eq!(d.irqs.msi.load(Ordering::SeqCst), 1);
    assert!(!*d.irqs.level.lock().unwrap());
    // A new answer while the first is unacknowledged is a new message; a register write
    // that changes nothing is not.
    d.verbs(&[0x000f_0000]);
    assert_eq!(d.irqs.msi.load(Ordering::SeqCst), 2);
    d.w32(INTCTL, INTCTL_GIE | INTCTL_CIE | 0xff);
    assert_eq!(d.irqs.msi.load(Ordering::SeqCst), 2);
    d.w8(RIRBSTS, RIRBSTS_RINTFL);
    d.verbs(&[0x000f_0000]);
    assert_eq!(d.irqs.msi.load(Ordering::SeqCst), 3, "the level rose again");
}

#[test]
fn immediate_command_registers_answer_too() {
    let mut d = Driver::new();
    d.init();
    d.w32(ICOI, 0x000f_0000);
    d.w16(ICS, ICS_BUSY);
    assert_eq!(d.r16(ICS) & (ICS_BUSY | ICS_VALID), ICS_VALID);
    assert_eq!(d.r32(IRII), VENDOR_ID);
    d.w16(ICS, ICS_VALID);
    assert_eq!(d.r16(ICS) & ICS_VALID, 0);
}

#[test]
fn a_corb_write_pointer_past_the_ring_wraps_without_looping() {
    let mut d = Driver::new();
    d.init();
    d.w8(CORBSIZE, 1); // 16 entries
    d.mem
        .write_obj(0x000f_0000u32, GuestAddress(CORB + 4))
        .unwrap();
    d.w16(CORBWP, 17);
    assert_eq!(d.r16(CORBRP), 1, "17 is entry 1 of 16");
    assert_eq!(d.r16(RIRBWP), 1);
}

#[test]
fn a_corb_outside_ram_stops_it_with_a_memory_error() {
    let mut d = Driver::new();
    d.init();
    d.w8(CORBCTL, CORBCTL_RUN | CORBCTL_CMEIE);
    d.w32(CORBUBASE, 0x10);
    d.w16(CORBWP, 1);
    assert_eq!(d.r8(CORBSTS) & CORBSTS_CMEI, CORBSTS_CMEI);
    assert_eq!(d.r8(CORBCTL) & CORBCTL_RUN, 0);
    assert_eq!(d.r32(INTSTS) & INTCTL_CIE, INTCTL_CIE);
}

#[test]
fn playback_walks_the_bdl_raises_ioc_and_wraps_at_cbl() {
    let mut d = Driver::new();
    d.init();
    d.verbs(&[0x0027_0651, 0x0022_0011]); // DAC: stream 5 channel 1, 48 kHz S16 stereo
    let out = INPUT_STREAMS;
    // Three entries: 960 bytes (5 ms), then 0 (skipped), then 960.
    d.program_stream(out, &[960, 0, 960], 0x0011, 5);
    let pattern: Vec<u8> = (0..1920u32).map(|i| (i % 251) as u8).collect();
    d.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    d.w32(DPLBASE, POS as u32 | DPLBASE_ENABLE);
    d.w8(RIRBSTS, RIRBSTS_RINTFL);
    d.run(out);
    d.pump();
    let ring = d.ring(out as u32);
    let (_, dir, params, _) = d.rings.0.lock().unwrap()[0].clone();
    assert_eq!(
        (dir, params.rate, params.channels),
        (Direction::Output, 48000, 2)
    );
    // The ring holds 40 ms: all 1920 bytes went in, then the BDL wrapped to the start.
    let mut played = vec![0u8; ring.len()];
    ring.play_into(&mut played, true);
    assert!(played.len() > 1920);
    assert_eq!(played[..1920], pattern[..], "0 dB passes samples through");
    assert_eq!(played[1920..2000], pattern[..80], "wrapped at CBL");
    let lpib = d.r32(Driver::sd(out, SD_LPIB));
    assert_eq!(lpib as usize, played.len() % 1920);
    assert_eq!(d.r32(ALIAS_BASE + Driver::sd(out, SD_LPIB)), lpib);
    assert_eq!(
        d.mem
            .read_obj::<u32>(GuestAddress(POS + 8 * out as u64))
            .unwrap(),
        lpib
    );
    assert_eq!(d.r8(Driver::sd(out, SD_STS)) & STS_BCIS, STS_BCIS);
    assert_eq!(d.r32(INTSTS), INTCTL_GIE | 1 << out);
    d.w8(Driver::sd(out, SD_STS), STS_BCIS);
    assert_eq!(d.r32(INTSTS), 0);
    // Nothing moves while the ring is full; once drained, the DMA goes on.
    d.pump();
    assert_eq!(d.r32(Driver::sd(out, SD_LPIB)), lpib);
    let mut more = vec![0u8; 960];
    ring.play_into(&mut more, true);
    d.pump();
    let lpib2 = d.r32(Driver::sd(out, SD_LPIB));
    assert_eq!(lpib2 as usize, (lpib as usize + 960) % 1920);
    assert_eq!(d.r8(Driver::sd(out, SD_STS)) & 0x20, 0x20, "FIFORDY");
    // Stopping keeps the position and drops the stale sound; in reset, FIFORDY clears.
    d.w8(Driver::sd(out, SD_CTL), 0);
    d.pump();
    assert!(ring.is_empty());
    assert_eq!(d.r32(Driver::sd(out, SD_LPIB)), lpib2);
    d.w8(Driver::sd(out, SD_CTL), CTL_SRST as u8);
    assert_eq!(d.r8(Driver::sd(out, SD_STS)) & 0x20, 0);
    assert_eq!(d.r32(Driver::sd(out, SD_LPIB)), 0);
}

#[test]
fn ssync_holds_a_running_stream_until_it_clears() {
    let mut d = Driver::new();
    d.init();
    d.verbs(&[0x0027_0610, 0x0022_0010]);
    let out = INPUT_STREAMS;
    d.program_stream(out, &[256], 0x0010, 1);
    d.w32(SSYNC, 1 << out);
    d.run(out);
    d.pump();
    assert_eq!(d.r32(Driver::sd(out, SD_LPIB)), 0, "held");
    assert!(
        d.rings.0.lock().unwrap().is_empty(),
        "not opened while held"
    );
    d.w32(SSYNC, 0);
    d.pump();
    assert_ne!(d.r32(Driver::sd(out, SD_LPIB)), 0, "started");
}

#[test]
fn the_converter_amp_scales_and_mutes_playback() {
    let mut d = Driver::new();
    d.init();
    // Stream 1, mono; output amp both sides gain 74 - 6 (-6 dB).
    d.verbs(&[0x0027_0610, 0x0022_0010, 0x0023_b000 | 68]);
    let out = INPUT_STREAMS + 1;
    d.program_stream(out, &[256], 0x0010, 1);
    let samples: Vec<u8> = (0..128).flat_map(|_| 10000i16.to_le_bytes()).collect();
    d.mem.write_slice(&samples, GuestAddress(DATA)).unwrap();
    d.run(out);
    d.pump();
    let ring = d.ring(out as u32);
    let mut got = [0u8; 4];
    ring.play_into(&mut got, true);
    let v = i16::from_le_bytes([got[0], got[1]]);
    assert!((4950..=5030).contains(&v), "{v}");
}

#[test]
fn capture_fills_the_bdl_from_the_recorded_ring() {
    let mut d = Driver::new();
    d.init();
    d.verbs(&[0x0047_0620, 0x0042_0010]); // ADC: stream 2, mono S16
    d.program_stream(0, &[64, 64], 0x0010, 2);
    d.run(0);
    d.pump();
    let ring = d.ring(0);
    let (_, dir, ..) = d.rings.0.lock().unwrap()[0].clone();
    assert_eq!(dir, Direction::Input);
    let rec: Vec<u8> = (0..100u8).collect();
    ring.record_from(&rec);
    d.pump();
    let mut got = vec![0u8; 100];
    d.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, rec);
    assert_eq!(d.r32(Driver::sd(0, SD_LPIB)), 100);
    assert_eq!(
        d.r8(Driver::sd(0, SD_STS)) & STS_BCIS,
        STS_BCIS,
        "entry 0 completed"
    );
}

#[test]
fn a_bdl_outside_ram_stops_that_stream_with_a_descriptor_error() {
    let mut d = Driver::new();
    d.init();
    d.verbs(&[0x0027_0610]);
    let out = INPUT_STREAMS;
    d.program_stream(out, &[64], 0x0010, 1);
    d.w32(Driver::sd(out, SD_BDPU), 0x100);
    d.w8(Driver::sd(out, SD_CTL), (CTL_RUN | CTL_IOCE | 1 << 4) as u8);
    d.pump();
    assert_eq!(d.r8(Driver::sd(out, SD_STS)) & STS_DESE, STS_DESE);
    assert_eq!(d.r8(Driver::sd(out, SD_CTL)) as u32 & CTL_RUN, 0);
    assert_eq!(d.r32(INTSTS) & (1 << out), 1 << out);
    // A buffer outside RAM too; the controller still answers verbs.
    d.program_stream(out, &[64], 0x0010, 1);
    d.mem.write_obj(RAM + 0x1000, GuestAddress(BDL)).unwrap();
    d.run(out);
    d.pump();
    assert_eq!(d.r8(Driver::sd(out, SD_STS)) & STS_DESE, STS_DESE);
    assert_eq!(d.verbs(&[0x000f_0000]), [VENDOR_ID]);
}

#[test]
fn a_bdl_of_zero_length_entries_is_an_error_not_a_hang() {
    let mut d = Driver::new();
    d.init();
    d.verbs(&[0x0027_0610]);
    let out = INPUT_STREAMS;
    d.program_stream(out, &[0, 0, 0], 0x0010, 1);
    d.w32(Driver::sd(out, SD_CBL), 64);
    d.run(out);
    d.pump();
    assert_eq!(d.r8(Driver::sd(out, SD_STS)) & STS_DESE, STS_DESE);
}

#[test]
fn without_a_backend_the_clock_paces_the_stream() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let irqs = Arc::new(Irqs::default());
    let mut hda = Hda::new(
        mem,
        None,
        HdaInterrupts {
            msi: irqs.clone(),
            routes: irqs.clone(),
            intx: irqs,
        },
    )
    .unwrap();
    hda.write_config(1, 0, &[0x06, 0]);
    let mut d = Driver::new();
    d.hda = Arc::new(Mutex::new(hda));
    d.mem = d.hda.lock().unwrap().mem.clone();
    d.init();
    let out = INPUT_STREAMS;
    d.program_stream(out, &[48000, 48000], 0x0011, 1);
    d.run(out);
    d.pump();
    std::thread::sleep(std::time::Duration::from_millis(50));
    d.pump();
    let lpib = d.r32(Driver::sd(out, SD_LPIB));
    // 50 ms at 192000 bytes/s is 9600 bytes; allow for a slow test machine.
    assert!((9600..96000).contains(&lpib), "{lpib}");
}

/// A small deterministic generator for the random-traffic test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_register_traffic_over_random_memory_never_panics_or_hangs() {
    // Registers worth hitting, with addresses that mostly land in RAM.
    let globals = [
        GCTL, INTCTL, CORBLBASE, CORBUBASE, CORBWP, CORBRP, CORBCTL, CORBSTS, CORBSIZE, RIRBLBASE,
        RIRBUBASE, RIRBWP, RINTCNT, RIRBCTL, RIRBSTS, RIRBSIZE, ICOI, ICS, DPLBASE, DPUBASE,
        STATESTS, SSYNC,
    ];
    let stream_regs = [
        SD_CTL,
        SD_STS,
        SD_CBL,
        SD_LVI,
        SD_FMT,
        SD_BDPL,
        SD_BDPU,
        SD_CTL + 2,
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..200 {
        let mut d = Driver::new();
        let mut junk = vec![0u8; 0x10000];
        for b in junk.iter_mut() {
            *b = rng.next() as u8;
        }
        d.mem.write_slice(&junk, GuestAddress(0)).unwrap();
        d.w32(GCTL, GCTL_CRST);
        for _ in 0..100 {
            let r = rng.next();
            let off = if r & 1 == 0 {
                globals[(r >> 8) as usize % globals.len()]
            } else {
                let i = (r >> 8) % STREAMS as u64;
                SD_BASE + i * SD_SIZE + stream_regs[(r >> 16) as usize % stream_regs.len()]
            };
            let v = rng.next() as u32;
            // Small values (addresses in RAM, short lengths) half of the time.
            let v = if r & 2 == 0 { v & 0xffff } else { v };
            match (r >> 24) % 3 {
                0 => d.w8(off, v as u8),
                1 => d.w16(off, v as u16),
                _ => d.w32(off, v),
            }
            d.pump();
            for (_, dir, _, ring) in d.rings.0.lock().unwrap().iter() {
                let mut buf = [0x11u8; 256];
                match dir {
                    Direction::Output => {
                        ring.play_into(&mut buf, true);
                    }
                    Direction::Input => {
                        ring.record_from(&buf);
                    }
                }
            }
        }
        // Still alive and answering after the storm: reset and ask the codec.
        d.corb_wp = 0;
        d.rirb_rp = 0;
        d.init();
        assert_eq!(d.verbs(&[0x000f_0000]), [VENDOR_ID], "round {round}");
    }
}

#[test]
fn intx_disable_in_the_command_register_holds_the_line_low() {
    let mut d = Driver::new();
    d.init();
    d.hda.lock().unwrap().write_config(1, 0, &[0x06, 0x04]);
    d.verbs(&[0x000f_0000]);
    assert_eq!(d.r32(INTSTS) & INTCTL_GIE, INTCTL_GIE);
    assert!(!*d.irqs.level.lock().unwrap());
    d.hda.lock().unwrap().write_config(1, 0, &[0x06, 0x00]);
    assert!(
        *d.irqs.level.lock().unwrap(),
        "pending status shows once enabled"
    );
}

/// A controller built as for a fresh boot over `d`'s memory, restored from `saved`, in
/// `d`'s place (the driver's CORB/RIRB positions carry over).
fn restore_into(d: &mut Driver, saved: &[u8]) {
    use crate::state::Snapshot;
    let fresh = Driver::new();
    let fresh = Driver {
        mem: d.mem.clone(),
        ..fresh
    };
    {
        let mut h = fresh.hda.lock().unwrap();
        h.mem = d.mem.clone();
        h.restore_state(saved).unwrap();
    }
    d.hda = fresh.hda;
    d.irqs = fresh.irqs;
    d.rings = fresh.rings;
}

/// Global and stream registers a read leaves alone.
fn steady(d: &Driver) -> Vec<u32> {
    let mut v = vec![
        d.r32(GCTL),
        d.r32(INTCTL),
        d.r32(INTSTS),
        d.r32(CORBLBASE),
        u32::from(d.r16(CORBWP)),
        u32::from(d.r16(CORBRP)),
        u32::from(d.r8(CORBCTL)),
        u32::from(d.r8(CORBSIZE)),
        d.r32(RIRBLBASE),
        u32::from(d.r16(RIRBWP)),
        u32::from(d.r16(RINTCNT)),
        u32::from(d.r8(RIRBCTL)),
        u32::from(d.r8(RIRBSTS)),
        d.r32(DPLBASE),
    ];
    for i in 0..STREAMS {
        for reg in [SD_CTL, SD_LPIB, SD_CBL, SD_BDPL] {
            v.push(d.r32(Driver::sd(i, reg)));
        }
        v.push(u32::from(d.r16(Driver::sd(i, SD_FMT))));
        v.push(u32::from(d.r16(Driver::sd(i, SD_LVI))));
    }
    v
}

#[test]
fn corb_and_rirb_go_on_after_restore_with_the_codec_settings_kept() {
    use crate::state::Snapshot;
    let mut reference = Driver::new();
    reference.init();
    let mut d = Driver::new();
    d.init();
    // Converter stream/channel and format, an amplifier, a pin control.
    let settings = [0x0027_0651, 0x0022_0031, 0x0023_a03a, 0x0037_0740];
    let reads = [
        0x002a_0000,
        0x002b_a000,
        0x002f_0709,
        0x003f_0700,
        0x000f_0000,
    ];
    reference.verbs(&settings);
    let expected = reference.verbs(&reads);
    d.verbs(&settings);
    d.w8(RIRBSTS, RIRBSTS_RINTFL);
    let before = steady(&d);
    let saved = d.hda.lock().unwrap().save_state().unwrap();
    restore_into(&mut d, &saved);
    assert_eq!(steady(&d), before);
    // The next verbs go through the CORB where it was, answers land in the next RIRB
    // entries, identical to a controller that never saved.
    assert_eq!(d.verbs(&reads), expected);
    assert!(
        *d.irqs.level.lock().unwrap(),
        "RINTFL interrupt on the new controller"
    );
}

#[test]
fn a_running_stream_reopens_its_backend_and_goes_on_from_its_position() {
    use crate::state::Snapshot;
    let mut d = Driver::new();
    d.init();
    d.verbs(&[0x0027_0651, 0x0022_0011]);
    let out = INPUT_STREAMS;
    d.program_stream(out, &[960, 960], 0x0011, 5);
    let pattern: Vec<u8> = (0..1920u32).map(|i| (i % 251) as u8).collect();
    d.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    d.run(out);
    d.pump();
    let ring = d.ring(out as u32);
    let mut played = vec![0u8; ring.len()];
    ring.play_into(&mut played, true);
    let lpib = d.r32(Driver::sd(out, SD_LPIB));
    let saved = d.hda.lock().unwrap().save_state().unwrap();
    // The saved controller moves nothing more.
    d.pump();
    assert_eq!(d.r32(Driver::sd(out, SD_LPIB)), lpib);
    assert!(ring.is_empty());

    restore_into(&mut d, &saved);
    assert_eq!(d.r32(Driver::sd(out, SD_LPIB)), lpib);
    d.pump();
    let opened = d.rings.0.lock().unwrap().clone();
    assert_eq!(opened.len(), 1, "the stream opened again on the backend");
    assert_eq!((opened[0].0, opened[0].1), (out as u32, Direction::Output));
    assert_eq!(opened[0].2.rate, 48000);
    let mut again = vec![0u8; 960];
    opened[0].3.play_into(&mut again, true);
    let at = lpib as usize % 1920;
    let want: Vec<u8> = pattern.iter().cycle().skip(at).take(960).copied().collect();
    assert_eq!(again, want, "the sound goes on from the saved position");
}

#[test]
fn truncated_or_garbage_state_is_refused_and_the_controller_still_works() {
    use crate::state::Snapshot;
    let mut d = Driver::new();
    d.init();
    let saved = d.hda.lock().unwrap().save_state().unwrap();
    let mut fresh = Driver::new();
    for bad in [&saved[..saved.len() - 1], &[0x5au8; 50][..], &[][..]] {
        assert!(fresh.hda.lock().unwrap().restore_state(bad).is_err());
    }
    fresh.init();
    assert_eq!(fresh.verbs(&[0x000f_0000]), [VENDOR_ID]);
}
