//! Byte sizes written the way people write them: `"4G"`, `"512M"`, `"1536K"`.
//!
//! A [`Size`] is stored as bytes. It reads from a RON string with an optional binary unit
//! (K, M, G, T: powers of 1024, case-insensitive, an optional trailing `B` or `iB`; a
//! decimal fraction like `"1.5G"` when it makes a whole number of bytes) or from
//! a bare integer (bytes), and always writes back as the shortest exact string.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Units a size can be written in, largest first.
const UNITS: [(char, u64); 4] = [
    ('T', 1 << 40),
    ('G', 1 << 30),
    ('M', 1 << 20),
    ('K', 1 << 10),
];

/// A size in bytes. Parses and prints as `"4G"`, `"512M"`, `"1536K"` or plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl Size {
    /// `n` kibibytes.
    pub const fn kib(n: u64) -> Size {
        Size(n << 10)
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Size {
        Size(n << 20)
    }

    /// `n` gibibytes.
    pub const fn gib(n: u64) -> Size {
        Size(n << 30)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size string did not parse. The text is the message a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSize(pub String);

impl fmt::Display for BadSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad size {:?} (write it like 4G or 512M)", self.0)
    }
}

impl std::error::Error for BadSize {}

impl FromStr for Size {
    type Err = BadSize;

    fn from_str(text: &str) -> Result<Size, BadSize> {
        let bad = || BadSize(text.to_owned());
        let trimmed = text.trim();
        let number_end = trimmed
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || (number.contains('.') && fraction.is_empty()) {
            return Err(bad());
        }
        let unit = unit.trim_start();
        let unit = unit
            .strip_suffix("iB")
            .or_else(|| unit.strip_suffix("ib"))
            .or_else(|| unit.strip_suffix('B'))
            .filter(|rest| !rest.is_empty())
            .unwrap_or(unit);
        let multiplier = match unit.to_ascii_uppercase().as_str() {
            "" => 1,
            "K" => 1 << 10,
            "M" => 1 << 20,
            "G" => 1 << 30,
            "T" => 1 << 40,
            _ => return Err(bad()),
        };
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let whole_bytes = whole.checked_mul(multiplier).ok_or_else(bad)?;
        fraction_bytes(fraction, multiplier)
            .and_then(|extra| whole_bytes.checked_add(extra))
            .map(Size)
            .ok_or_else(bad)
    }
}

/// The bytes of the decimal fraction `.digits` of `multiplier`, if a whole number:
/// `"5"` of a GiB is 512 MiB; `"1"` of a byte is no whole number of bytes.
fn fraction_bytes(digits: &str, multiplier: u64) -> Option<u64> {
    if digits.is_empty() {
        return Some(0);
    }
    if digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let numerator = u128::from(digits.parse::<u64>().ok()?) * u128::from(multiplier);
    let denominator = 10u128.pow(u32::try_from(digits.len()).ok()?);
    if numerator % denominator != 0 {
        return None;
    }
    u64::try_from(numerator / denominator).ok()
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (unit, factor) in UNITS {
                if self.0.is_multiple_of(factor) {
                    return write!(f, "{}{unit}", self.0 / factor);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size like \"4G\" or \"512M\"")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Size, E> {
        value.parse().map_err(|e: BadSize| E::custom(e))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Size, E> {
        Ok(Size(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Size, E> {
        u64::try_from(value)
            .map(Size)
            .map_err(|_| E::custom(BadSize(value.to_string())))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Size, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_as_powers_of_1024() {
        assert_eq!("4G".parse(), Ok(Size(4 << 30)));
        assert_eq!("512M".parse(), Ok(Size(512 << 20)));
        assert_eq!("1536K".parse(), Ok(Size(1536 << 10)));
        assert_eq!("2T".parse(), Ok(Size(2 << 40)));
        assert_eq!("4096".parse(), Ok(Size(4096)));
        assert_eq!("4g".parse(), Ok(Size(4 << 30)));
        assert_eq!("4GiB".parse(), Ok(Size(4 << 30)));
        assert_eq!("4GB".parse(), Ok(Size(4 << 30)));
        assert_eq!(" 8 M ".parse(), Ok(Size(8 << 20)));
        assert_eq!("1.5G".parse(), Ok(Size(3 << 29)));
        assert_eq!("0.25M".parse(), Ok(Size(256 << 10)));
    }

    #[test]
    fn rejects_unknown_units_and_garbage() {
        for text in [
            "4Q",
            "",
            "G",
            "-1G",
            "4GG",
            "B",
            "99999999999999T",
            "1.",
            ".5G",
            "1.2.3G",
            "1.1",
            "0.3K",
        ] {
            assert_eq!(
                text.parse::<Size>(),
                Err(BadSize(text.to_owned())),
                "{text}"
            );
        }
    }

    #[test]
    fn prints_the_largest_exact_unit() {
        assert_eq!(Size(4 << 30).to_string(), "4G");
        assert_eq!(Size(1536 << 20).to_string(), "1536M");
        assert_eq!(Size(1536 << 10).to_string(), "1536K");
        assert_eq!(Size(1000).to_string(), "1000");
        assert_eq!(Size(0).to_string(), "0");
    }
}
