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

    /// Fills the CMOS bytes PC firmware (SeaBIOS, OVMF) reads for the memory size and CPU
    /// count, as QEMU lays them out: base memory (0x15/0x16), memory above 1 MiB in KiB
    /// (0x17/0x18, 0x30/0x31), above 16 MiB in 64 KiB units (0x34/0x35), above 4 GiB in
    /// 64 KiB units (0x5b..0x5d), and CPUs - 1 (0x5f). `below_4g` and `above_4g` are RAM
    /// bytes on either side of 4 GiB.
    pub fn set_machine_info(&mut self, below_4g: u64, above_4g: u64, cpus: u32) {
        let mut put = |reg: usize, bytes: &[u8]| {
            for (i, b) in bytes.iter().enumerate() {
                if let Some(slot) = self.cmos.get_mut(reg + i) {
                    *slot = *b;
                }
            }
        };
        put(0x15, &640u16.to_le_bytes());
        let ext_kib = (below_4g.saturating_sub(1 << 20) >> 10).min(0xffff) as u16;
        put(0x17, &ext_kib.to_le_bytes());
        put(0x30, &ext_kib.to_le_bytes());
        let above_16m = (below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        put(0x34, &above_16m.to_le_bytes());
        let high = (above_4g >> 16).to_le_bytes();
        put(0x5b, &high[..3]);
        put(0x5f, &[cpus.saturating_sub(1) as u8]);
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
    fn update_in_progress_shows_at_the_end_of_a_second() {
        assert_eq!(reg(&mut Rtc::with_clock(fixed), REG_A) & A_UIP, 0);
        assert_eq!(
            reg(&mut Rtc::with_clock(late_in_second), REG_A) & A_UIP,
            A_UIP
        );
    }

    #[test]
    fn cmos_carries_memory_size_and_cpu_count_for_firmware() {
        let mut r = Rtc::with_clock(fixed);
        r.set_machine_info(3 << 30, 5 << 30, 4);
        assert_eq!((reg(&mut r, 0x15), reg(&mut r, 0x16)), (0x80, 0x02));
        assert_eq!((reg(&mut r, 0x17), reg(&mut r, 0x18)), (0xff, 0xff));
        let above_16m = u16::from_le_bytes([reg(&mut r, 0x34), reg(&mut r, 0x35)]);
        assert_eq!(u64::from(above_16m), ((3u64 << 30) - (16 << 20)) >> 16);
        let high = u32::from_le_bytes([reg(&mut r, 0x5b), reg(&mut r, 0x5c), reg(&mut r, 0x5d), 0]);
        assert_eq!(u64::from(high), (5u64 << 30) >> 16);
        assert_eq!(reg(&mut r, 0x5f), 3);
        let mut small = Rtc::with_clock(fixed);
        small.set_machine_info(64 << 20, 0, 1);
        assert_eq!(
            u16::from_le_bytes([reg(&mut small, 0x30), reg(&mut small, 0x31)]),
            63 * 1024
        );
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
}
