//! The content of the fw_cfg file `etc/e820`: the memory map SeaBIOS
//! (`src/fw/paravirt.c`, `qemu_early_e820`) and OVMF (`PlatformInitLib/MemDetect.c`) read
//! instead of the CMOS memory bytes.
//!
//! Each entry is 20 bytes, little-endian, packed: `u64 address, u64 length, u32 type`.
//! SeaBIOS adds the RAM and reserved entries to its own map; OVMF takes the RAM entries
//! as system memory.

/// Bytes per entry.
pub const E820_ENTRY_SIZE: usize = 20;
/// Entry types (ACPI "Address Range Types").
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
pub const E820_ACPI: u32 = 3;
pub const E820_NVS: u32 = 4;

/// Lays out `(address, length, type)` entries as `etc/e820` holds them.
pub fn e820_table(entries: &[(u64, u64, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * E820_ENTRY_SIZE);
    for &(addr, len, kind) in entries {
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_entries_are_twenty_packed_little_endian_bytes() {
        let t = e820_table(&[
            (0, 0x9fc00, E820_RAM),
            (0x1_0000_0000, 0x2_4000_0000, E820_RAM),
            (0xfeff_c000, 0x4000, E820_RESERVED),
        ]);
        assert_eq!(t.len(), 3 * E820_ENTRY_SIZE);
        let second = &t[20..40];
        assert_eq!(&second[0..8], &[0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&second[8..16], &[0, 0, 0, 0x40, 2, 0, 0, 0]);
        assert_eq!(&second[16..20], &[1, 0, 0, 0]);
        let third = &t[40..60];
        assert_eq!(
            u64::from_le_bytes(third[0..8].try_into().unwrap()),
            0xfeff_c000
        );
        assert_eq!(u64::from_le_bytes(third[8..16].try_into().unwrap()), 0x4000);
        assert_eq!(
            u32::from_le_bytes(third[16..20].try_into().unwrap()),
            E820_RESERVED
        );
        assert_eq!(&t[8..16], &0x9fc00u64.to_le_bytes());
    }

    #[test]
    fn an_empty_map_is_an_empty_file() {
        assert!(e820_table(&[]).is_empty());
    }
}
