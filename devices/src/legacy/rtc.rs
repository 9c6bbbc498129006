//! The CMOS RTC at ports 0x70 (index, bit 7 = NMI mask) and 0x71 (data).
//!
//! Time registers read the host's wall clock (UTC) plus an offset the guest can move by
//! writing the time, in BCD or binary and 12/24-hour form as status register B says. Status
//! A shows update-in-progress during the last 244 µs of each second, as the MC146818 does.
//! The other bytes are battery-backed CMOS RAM; the model outlives a guest reset.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Seconds register.
pub const REG_SECONDS: u8 = 0x00;
/// Status register A.
pub const REG_A: u8 = 0x0a;
/// Status register B.
pub const REG_B: u8 = 0x0b;
/// Status register C.
pub const REG_C: u8 = 0x0c;
/// Status register D.
pub const REG_D: u8 = 0x0d;
/// Century (as the FADT names it).
pub const REG_CENTURY: u8 = 0x32;

/// CMOS memory-size bytes PC firmware reads (IBM AT layout plus the Bochs/QEMU
/// extensions SeaBIOS and OVMF use).
const CMOS_EQUIPMENT: usize = 0x14;
const CMOS_BASE_MEMORY: usize = 0x15;
const CMOS_EXT_MEMORY: usize = 0x17;
const CMOS_CHECKSUM: usize = 0x2e;
const CMOS_EXT_MEMORY_COPY: usize = 0x30;
const CMOS_ABOVE_16M: usize = 0x34;
const CMOS_ABOVE_4G: usize = 0x5b;
const CMOS_CPUS: usize = 0x5f;
/// Bytes the AT checksum at 0x2E/0x2F covers.
const CHECKSUM_FIRST: usize = 0x10;
const CHECKSUM_LAST: usize = 0x2d;
/// Conventional memory below the EBDA/VGA hole.
const BASE_MEMORY_KIB: u64 = 640;
/// Equipment byte: maths coprocessor present, PS/2 mouse installed.
const EQUIPMENT_FPU: u8 = 0x02;
const EQUIPMENT_PS2_MOUSE: u8 = 0x04;
/// Status A: update in progress.
const A_UIP: u8 = 0x80;
/// Status B: 24-hour mode.
const B_24H: u8 = 0x02;
/// Status B: binary (not BCD).
const B_BINARY: u8 = 0x04;
/// Status D: valid RAM and time.
const D_VRT: u8 = 0x80;
/// Length of the update cycle at the end of each second.
const UIP_NS: u32 = 244_000;

/// Broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub weekday: u32,
}

/// Converts seconds since the Unix epoch to UTC (days-to-civil algorithm).
pub fn civil_from_unix(t: i64) -> DateTime {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    DateTime {
        year,
        month,
        day,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
        // 1970-01-01 was a Thursday; RTC weekday 1 = Sunday.
        weekday: ((days + 4).rem_euclid(7) + 1) as u32,
    }
}

/// Converts UTC to seconds since the Unix epoch.
pub fn unix_from_civil(d: &DateTime) -> i64 {
    let y = d.year - i64::from(d.month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(d.month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d.day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86400 + i64::from(d.hour) * 3600 + i64::from(d.minute) * 60 + i64::from(d.second)
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u32 {
    u32::from(v >> 4) * 10 + u32::from(v & 0xf)
}

/// The host clock as (Unix seconds, nanoseconds).
pub type Clock = fn() -> (i64, u32);

fn host_clock() -> (i64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// The RTC and its 128 bytes of CMOS.
pub struct Rtc {
    index: u8,
    cmos: [u8; 128],
    offset: i64,
    clock: Clock,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    /// An RTC reading the host clock, 24-hour BCD.
    pub fn new() -> Self {
        Self::with_clock(host_clock)
    }

    /// An RTC reading `clock` (tests pin the time).
    pub fn with_clock(clock: Clock) -> Self {
        let mut cmos = [0u8; 128];
        cmos[usize::from(REG_A)] = 0x26;
        cmos[usize::from(REG_B)] = B_24H;
        cmos[usize::from(REG_D)] = D_VRT;
        Self {
            index: 0,
            cmos,
            offset: 0,
            clock,
        }
    }

    /// Keeps the clock `seconds` ahead of the host's UTC: the host's offset from UTC for a
    /// guest that keeps local time in its hardware clock (Windows).
    pub fn set_utc_offset(&mut self, seconds: i64) {
        self.offset = seconds;
    }

    /// Fills the CMOS bytes PC firmware (SeaBIOS, OVMF) reads for the memory size and CPU
    /// count, as QEMU lays them out (`hw/i386/pc.c`): base memory in KiB, at most 640
    /// (0x15/0x16); memory from 1 MiB up in KiB, capped at 0xFFFF (0x17/0x18 and 0x30/0x31);
    /// memory from 16 MiB up to 4 GiB in 64 KiB units, capped (0x34/0x35); memory above
    /// 4 GiB in 64 KiB units (0x5B..0x5D, 24 bits, capped); CPUs - 1 (0x5F); the equipment
    /// byte (0x14: FPU, PS/2 mouse); and the standard checksum of 0x10..=0x2D, big-endian
    /// at 0x2E/0x2F. `below_4g` and `above_4g` are RAM bytes on either side of 4 GiB. The
    /// shutdown status byte 0x0F is left alone (0 at power-on: a normal boot, not an S3
    /// resume).
    pub fn set_machine_info(&mut self, below_4g: u64, above_4g: u64, cpus: u32) {
        let base_kib = (below_4g >> 10).min(BASE_MEMORY_KIB) as u16;
        self.put(CMOS_BASE_MEMORY, &base_kib.to_le_bytes());
        let ext_kib = (below_4g.saturating_sub(1 << 20) >> 10).min(0xffff) as u16;
        self.put(CMOS_EXT_MEMORY, &ext_kib.to_le_bytes());
        self.put(CMOS_EXT_MEMORY_COPY, &ext_kib.to_le_bytes());
        let above_16m = (below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        self.put(CMOS_ABOVE_16M, &above_16m.to_le_bytes());
        let high = (above_4g >> 16).min(0xff_ffff).to_le_bytes();
        self.put(CMOS_ABOVE_4G, &high[..3]);
        self.put(CMOS_CPUS, &[cpus.saturating_sub(1).min(0xff) as u8]);
        self.put(CMOS_EQUIPMENT, &[EQUIPMENT_FPU | EQUIPMENT_PS2_MOUSE]);
        let sum: u16 = (CHECKSUM_FIRST..=CHECKSUM_LAST)
            .map(|r| u16::from(self.cmos[r]))
            .fold(0, u16::wrapping_add);
        self.put(CMOS_CHECKSUM, &sum.to_be_bytes());
    }

    /// Stores `bytes` from CMOS register `reg` on, as battery-backed RAM.
    fn put(&mut self, reg: usize, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            if let Some(slot) = self.cmos.get_mut(reg + i) {
                *slot = *b;
            }
        }
    }

    fn binary(&self) -> bool {
        self.cmos[usize::from(REG_B)] & B_BINARY != 0
    }

    fn encode(&self, v: u32) -> u8 {
        if self.binary() { v as u8 } else { to_bcd(v) }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.binary() {
            u32::from(v)
        } else {
            from_bcd(v)
        }
    }

    fn now(&self) -> (DateTime, u32) {
        let (s, ns) = (self.clock)();
        (civil_from_unix(s.saturating_add(self.offset)), ns)
    }

    fn encode_hour(&self, h: u32) -> u8 {
        if self.cmos[usize::from(REG_B)] & B_24H != 0 {
            return self.encode(h);
        }
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
    }

    /// Reads CMOS register `reg`.
    pub fn read_reg(&mut self, reg: u8) -> u8 {
        let (t, ns) = self.now();
        match reg {
            0x00 => self.encode(t.second),
            0x02 => self.encode(t.minute),
            0x04 => self.encode_hour(t.hour),
            0x06 => self.encode(t.weekday),
            0x07 => self.encode(t.day),
            0x08 => self.encode(t.month),
            0x09 => self.encode(t.year.rem_euclid(100) as u32),
            REG_CENTURY => self.encode(t.year.div_euclid(100) as u32),
            REG_A => {
                let a = self.cmos[usize::from(REG_A)] & !A_UIP;
                if ns >= 1_000_000_000 - UIP_NS {
                    a | A_UIP
                } else {
                    a
                }
            }
            REG_C => std::mem::take(&mut self.cmos[usize::from(REG_C)]),
            _ => self.cmos[usize::from(reg & 0x7f)],
        }
    }

    fn set_time_field(&mut self, reg: u8, value: u8) {
        let (mut t, _) = self.now();
        let v = if reg == 0x04 && self.cmos[usize::from(REG_B)] & B_24H == 0 {
            let h = self.decode(value & 0x7f) % 12;
            h + if value & 0x80 != 0 { 12 } else { 0 }
        } else {
            self.decode(value)
        };
        match reg {
            0x00 => t.second = v.min(59),
            0x02 => t.minute = v.min(59),
            0x04 => t.hour = v.min(23),
            0x07 => t.day = v.clamp(1, 31),
            0x08 => t.month = v.clamp(1, 12),
            0x09 => t.year = t.year.div_euclid(100) * 100 + i64::from(v % 100),
            REG_CENTURY => t.year = i64::from(v) * 100 + t.year.rem_euclid(100),
            _ => return,
        }
        let (host, _) = (self.clock)();
        self.offset = unix_from_civil(&t) - host;
    }

    /// Writes CMOS register `reg`.
    pub fn write_reg(&mut self, reg: u8, value: u8) {
        match reg {
            0x00 | 0x02 | 0x04 | 0x07 | 0x08 | 0x09 | REG_CENTURY => {
                self.set_time_field(reg, value)
            }
            // Alarms and weekday: stored, weekday is derived from the date.
            0x01 | 0x03 | 0x05 | 0x06 => self.cmos[usize::from(reg)] = value,
            REG_A => self.cmos[usize::from(REG_A)] = value & !A_UIP,
            // SET halts updates; this model keeps time regardless.
            REG_B => self.cmos[usize::from(REG_B)] = value,
            REG_C | REG_D => {}
            _ => self.cmos[usize::from(reg & 0x7f)] = value,
        }
    }
}

/// The saved RTC: the index latch, the 128 CMOS bytes and the clock as an offset from the
/// host's UTC. Like a real RTC on its battery, the restored clock keeps counting while the
/// VM was saved: it reads the host's time at restore plus the guest's offset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RtcSaved {
    index: u8,
    cmos: Vec<u8>,
    offset: i64,
}

impl crate::state::Snapshot for Rtc {
    fn save_state(&mut self) -> Result<Vec<u8>, crate::state::StateError> {
        crate::state::encode(
            "CMOS clock",
            &RtcSaved {
                index: self.index,
                cmos: self.cmos.to_vec(),
                offset: self.offset,
            },
        )
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::state::StateError> {
        let s: RtcSaved = crate::state::decode("CMOS clock", state)?;
        let cmos: [u8; 128] = s.cmos.as_slice().try_into().map_err(|_| {
            crate::state::StateError::mismatch("CMOS clock", format!("{} CMOS bytes", s.cmos.len()))
        })?;
        self.index = s.index & 0x7f;
        self.cmos = cmos;
        self.offset = s.offset;
        Ok(())
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let Some(b) = data.first_mut() else { return };
        *b = match offset {
            0 => self.index,
            _ => self.read_reg(self.index),
        };
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        match offset {
            0 => self.index = b & 0x7f,
            _ => self.write_reg(self.index, b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-21 23:45:06 UTC, a Saturday; 0.5 s into the second.
    fn fixed() -> (i64, u32) {
        (1_795_304_706, 500_000_000)
    }

    fn late_in_second() -> (i64, u32) {
        (1_795_304_706, 999_900_000)
    }

    fn reg(r: &mut Rtc, index: u8) -> u8 {
        r.write(0x70, 0, &[index]);
        let mut b = [0u8];
        r.read(0x70, 1, &mut b);
        b[0]
    }

    #[test]
    fn converts_between_unix_time_and_dates() {
        let d = civil_from_unix(fixed().0);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.minute, d.second),
            (2026, 11, 21, 23, 45, 6)
        );
        assert_eq!(d.weekday, 7);
        assert_eq!(unix_from_civil(&d), fixed().0);
        assert_eq!(civil_from_unix(0).weekday, 5);
    }

    #[test]
    fn reads_bcd_24h_by_default_and_binary_on_request() {
        let mut r = Rtc::with_clock(fixed);
        assert_eq!(reg(&mut r, 0x04), 0x23);
        assert_eq!(reg(&mut r, 0x02), 0x45);
        assert_eq!(reg(&mut r, 0x09), 0x26);
        assert_eq!(reg(&mut r, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut r, REG_D), 0x80);
        r.write(0x70, 0, &[REG_B]);
        r.write(0x70, 1, &[B_24H | B_BINARY]);
        assert_eq!(reg(&mut r, 0x04), 23);
        r.write(0x70, 0, &[REG_B]);
        r.write(0x70, 1, &[0]);
        assert_eq!(reg(&mut r, 0x04), 0x80 | 0x11);
    }

    #[test]
    fn local_time_runs_the_hosts_offset_ahead_of_utc() {
        // Central European Summer Time: UTC+2; 23:45 UTC is 01:45 the next day.
        let mut r = Rtc::with_clock(fixed);
        r.set_utc_offset(2 * 3600);
        assert_eq!(reg(&mut r, 0x04), 0x01);
        assert_eq!(reg(&mut r, 0x02), 0x45);
        assert_eq!(reg(&mut r, 0x07), 0x22);
        // West of Greenwich the day is still the 21st.
        r.set_utc_offset(-5 * 3600);
        assert_eq!((reg(&mut r, 0x04), reg(&mut r, 0x07)), (0x18, 0x21));
    }

    #[test]
    fn update_in_progress_shows_at_the_end_of_a_second() {
        assert_eq!(reg(&mut Rtc::with_clock(fixed), REG_A) & A_UIP, 0);
        assert_eq!(
            reg(&mut Rtc::with_clock(late_in_second), REG_A) & A_UIP,
            A_UIP
        );
    }

    fn word(r: &mut Rtc, lo: u8) -> u64 {
        u64::from(u16::from_le_bytes([reg(r, lo), reg(r, lo + 1)]))
    }

    fn above_4g(r: &mut Rtc) -> u64 {
        u64::from(u32::from_le_bytes([
            reg(r, 0x5b),
            reg(r, 0x5c),
            reg(r, 0x5d),
            0,
        ]))
    }

    /// What SeaBIOS and OVMF compute from the bytes when fw_cfg has no `etc/e820`.
    fn firmware_view(r: &mut Rtc) -> (u64, u64) {
        let low = (word(r, 0x34) << 16) + (16 << 20);
        (low, above_4g(r) << 16)
    }

    fn checksum_holds(r: &mut Rtc) -> bool {
        let sum = (0x10..=0x2d).map(|i| u16::from(reg(r, i))).sum::<u16>();
        sum == u16::from_be_bytes([reg(r, 0x2e), reg(r, 0x2f)])
    }

    #[test]
    fn cmos_describes_a_256_mib_machine() {
        let mut r = Rtc::with_clock(fixed);
        r.set_machine_info(256 << 20, 0, 1);
        assert_eq!(word(&mut r, 0x15), 640);
        assert_eq!(word(&mut r, 0x17), 0xffff, "255 MiB in KiB does not fit");
        assert_eq!(word(&mut r, 0x30), 0xffff);
        assert_eq!(word(&mut r, 0x34), (240 << 20) >> 16);
        assert_eq!(firmware_view(&mut r), (256 << 20, 0));
        assert_eq!(reg(&mut r, 0x5f), 0);
        assert_eq!(reg(&mut r, 0x0f), 0, "shutdown status: normal boot");
        assert_eq!(reg(&mut r, 0x14), 0x06);
        assert!(checksum_holds(&mut r));
    }

    #[test]
    fn cmos_describes_a_machine_with_a_pci_hole() {
        // 3.5 GiB of RAM on a layout whose low RAM ends at 3 GiB: 512 MiB above 4 GiB.
        let mut r = Rtc::with_clock(fixed);
        r.set_machine_info(3 << 30, 512 << 20, 4);
        assert_eq!(word(&mut r, 0x17), 0xffff, "capped");
        assert_eq!(word(&mut r, 0x30), 0xffff, "capped");
        assert_eq!(word(&mut r, 0x34), ((3u64 << 30) - (16 << 20)) >> 16);
        assert_eq!(firmware_view(&mut r), (3 << 30, 512 << 20));
        assert_eq!(reg(&mut r, 0x5f), 3);
        assert!(checksum_holds(&mut r));
    }

    #[test]
    fn cmos_describes_an_8_gib_machine() {
        let mut r = Rtc::with_clock(fixed);
        r.set_machine_info(0xb000_0000, (8 << 30) - 0xb000_0000, 8);
        assert_eq!(
            firmware_view(&mut r),
            (0xb000_0000, (8 << 30) - 0xb000_0000)
        );
        assert_eq!(above_4g(&mut r), 0x1_5000, "5.25 GiB in 64 KiB units");
        assert_eq!(reg(&mut r, 0x5f), 7);
        assert!(checksum_holds(&mut r));
    }

    #[test]
    fn cmos_memory_fields_saturate_instead_of_wrapping() {
        let mut r = Rtc::with_clock(fixed);
        r.set_machine_info(512 << 10, 1 << 50, 1000);
        assert_eq!(
            word(&mut r, 0x15),
            512,
            "less than 640 KiB is reported as is"
        );
        assert_eq!(word(&mut r, 0x17), 0);
        assert_eq!(word(&mut r, 0x34), 0);
        assert_eq!(above_4g(&mut r), 0xff_ffff);
        assert_eq!(reg(&mut r, 0x5f), 0xff);
        r.set_machine_info(u64::MAX, 0, 0);
        assert_eq!(word(&mut r, 0x34), 0xffff);
        assert_eq!(reg(&mut r, 0x5f), 0);
        let mut small = Rtc::with_clock(fixed);
        small.set_machine_info(64 << 20, 0, 1);
        assert_eq!(word(&mut small, 0x30), 63 * 1024);
    }

    #[test]
    fn guest_can_set_the_time_and_use_cmos_ram() {
        let mut r = Rtc::with_clock(fixed);
        r.write(0x70, 0, &[0x04]);
        r.write(0x70, 1, &[0x05]);
        assert_eq!(reg(&mut r, 0x04), 0x05);
        assert_eq!(reg(&mut r, 0x02), 0x45);
        r.write(0x70, 0, &[0x80 | 0x40]);
        r.write(0x70, 1, &[0xab]);
        assert_eq!(reg(&mut r, 0x40), 0xab);
    }

    #[test]
    fn a_restored_clock_keeps_the_guest_time_and_cmos_bytes() {
        use crate::state::Snapshot;
        let mut r = Rtc::with_clock(fixed);
        r.set_machine_info(512 << 20, 0, 2);
        // The guest sets the clock one hour back and binary mode, and leaves the index on
        // the minutes register.
        r.write(0x70, 0, &[REG_B]);
        r.write(0x70, 1, &[B_24H | B_BINARY]);
        r.write(0x70, 0, &[0x04]);
        r.write(0x70, 1, &[22]);
        r.write(0x70, 0, &[0x40]);
        r.write(0x70, 1, &[0x99]);
        r.write(0x70, 0, &[0x02]);
        let state = r.save_state().unwrap();

        let mut n = Rtc::with_clock(fixed);
        n.restore_state(&state).unwrap();
        let mut b = [0u8];
        n.read(0x70, 1, &mut b);
        assert_eq!(b[0], 45, "the index latch survives");
        for reg_index in [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, REG_B, 0x15, 0x2e, 0x40] {
            assert_eq!(
                reg(&mut n, reg_index),
                reg(&mut r, reg_index),
                "register {reg_index:#x}"
            );
        }
        assert_eq!(reg(&mut n, 0x04), 22);

        // Restored later on the host's clock: the guest's time went on meanwhile.
        fn later() -> (i64, u32) {
            (1_795_304_706 + 120, 0)
        }
        let mut l = Rtc::with_clock(later);
        l.restore_state(&state).unwrap();
        assert_eq!(reg(&mut l, 0x02), 47);
        assert_eq!(reg(&mut l, 0x04), 22);

        assert!(l.restore_state(&state[..state.len() - 1]).is_err());
        assert!(
            l.restore_state(&[0, 3, 1, 2, 3, 0]).is_err(),
            "3 CMOS bytes"
        );
        assert_eq!(reg(&mut l, 0x04), 22, "unchanged");
    }
}
