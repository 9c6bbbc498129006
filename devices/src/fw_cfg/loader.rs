//! The content of the fw_cfg file `etc/table-loader`: the script by which the firmware
//! places the helper's ACPI blobs in guest memory and links them (command format in
//! `qemu:hw/acpi/bios-linker-loader.c` and SeaBIOS `src/fw/romfile_loader.h`; OVMF runs
//! it in `OvmfPkg/Library/AcpiPlatformLib/QemuFwCfgAcpi.c`).
//!
//! The file is a sequence of 128-byte entries, little-endian; after the `u32` command
//! comes a 124-byte union (names are 56-byte NUL-padded fw_cfg file names):
//!
//! ```text
//! 1 ALLOCATE       +4 file          +60 align u32     +64 zone u8 (1 high, 2 F-segment)
//! 2 ADD_POINTER    +4 dest file     +60 src file      +116 offset u32  +120 size u8
//! 3 ADD_CHECKSUM   +4 file          +60 result u32    +64 start u32    +68 length u32
//! 4 WRITE_POINTER  +4 dest file     +60 src file      +116 dst offset u32
//!                                                     +120 src offset u32  +124 size u8
//! ```
//!
//! ALLOCATE loads a file into memory; ADD_POINTER adds the address where the source file
//! landed to the `size`-byte little-endian number at `offset` in the destination file;
//! ADD_CHECKSUM makes the bytes `[start, start + length)` sum to zero by adjusting the
//! byte at `result`; WRITE_POINTER writes the address of the source file plus
//! `src offset` back into the (writable) fw_cfg file `dest` at `dst offset`.

use super::name_field;

/// Bytes per loader entry.
pub const LOADER_ENTRY_SIZE: usize = 128;

/// Command numbers (`romfile_loader.h`, `ROMFILE_LOADER_COMMAND_*`).
const CMD_ALLOCATE: u32 = 1;
const CMD_ADD_POINTER: u32 = 2;
const CMD_ADD_CHECKSUM: u32 = 3;
const CMD_WRITE_POINTER: u32 = 4;

/// Field offsets inside an entry (the union starts after the 4-byte command).
const FIRST_NAME: usize = 4;
const SECOND_NAME: usize = 60;
const AFTER_TWO_NAMES: usize = 116;

/// Where ALLOCATE puts a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AllocZone {
    /// Anywhere in high memory (below 4 GiB): most tables.
    High = 1,
    /// The F-segment (0xf0000..0x100000), where legacy OSes look for the RSDP.
    FSeg = 2,
}

/// Errors from building a loader script.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoaderError {
    #[error("file name {0:?} does not fit 55 bytes")]
    NameTooLong(String),
    #[error("alignment {0} is not a power of two")]
    BadAlign(u32),
    #[error("pointer size {0} is not 1, 2, 4 or 8")]
    BadPointerSize(u8),
}

/// A table-loader script under construction.
#[derive(Clone, Debug, Default)]
pub struct TableLoader {
    entries: Vec<[u8; LOADER_ENTRY_SIZE]>,
}

impl TableLoader {
    pub fn new() -> Self {
        Self::default()
    }

    /// ALLOCATE: load `file` at an `align`-aligned address in `zone`. Must come once per
    /// file, before any command naming it.
    pub fn allocate(&mut self, file: &str, align: u32, zone: AllocZone) -> Result<(), LoaderError> {
        if !align.is_power_of_two() {
            return Err(LoaderError::BadAlign(align));
        }
        let mut e = Entry::new(CMD_ALLOCATE);
        e.name(FIRST_NAME, file)?;
        e.u32(SECOND_NAME, align);
        e.u8(SECOND_NAME + 4, zone as u8);
        self.entries.push(e.0);
        Ok(())
    }

    /// ADD_POINTER: add the address of `src_file` to the `size`-byte number at `offset`
    /// in `dest_file`.
    pub fn add_pointer(
        &mut self,
        dest_file: &str,
        src_file: &str,
        offset: u32,
        size: u8,
    ) -> Result<(), LoaderError> {
        check_pointer_size(size)?;
        let mut e = Entry::new(CMD_ADD_POINTER);
        e.name(FIRST_NAME, dest_file)?;
        e.name(SECOND_NAME, src_file)?;
        e.u32(AFTER_TWO_NAMES, offset);
        e.u8(AFTER_TWO_NAMES + 4, size);
        self.entries.push(e.0);
        Ok(())
    }

    /// ADD_CHECKSUM: set the byte at `result_offset` in `file` so that
    /// `[start, start + length)` sums to zero.
    pub fn add_checksum(
        &mut self,
        file: &str,
        result_offset: u32,
        start: u32,
        length: u32,
    ) -> Result<(), LoaderError> {
        let mut e = Entry::new(CMD_ADD_CHECKSUM);
        e.name(FIRST_NAME, file)?;
        e.u32(SECOND_NAME, result_offset);
        e.u32(SECOND_NAME + 4, start);
        e.u32(SECOND_NAME + 8, length);
        self.entries.push(e.0);
        Ok(())
    }

    /// WRITE_POINTER: write the address of `src_file` plus `src_offset`, `size` bytes
    /// little-endian, into the fw_cfg file `dest_file` at `dst_offset`.
    pub fn write_pointer(
        &mut self,
        dest_file: &str,
        dst_offset: u32,
        size: u8,
        src_file: &str,
        src_offset: u32,
    ) -> Result<(), LoaderError> {
        check_pointer_size(size)?;
        let mut e = Entry::new(CMD_WRITE_POINTER);
        e.name(FIRST_NAME, dest_file)?;
        e.name(SECOND_NAME, src_file)?;
        e.u32(AFTER_TWO_NAMES, dst_offset);
        e.u32(AFTER_TWO_NAMES + 4, src_offset);
        e.u8(AFTER_TWO_NAMES + 8, size);
        self.entries.push(e.0);
        Ok(())
    }

    /// The script as `etc/table-loader` holds it.
    pub fn into_bytes(self) -> Vec<u8> {
        self.entries.concat()
    }
}

fn check_pointer_size(size: u8) -> Result<(), LoaderError> {
    match size {
        1 | 2 | 4 | 8 => Ok(()),
        _ => Err(LoaderError::BadPointerSize(size)),
    }
}

/// One entry being filled; offsets are constants of this module, inside the entry.
struct Entry([u8; LOADER_ENTRY_SIZE]);

impl Entry {
    fn new(command: u32) -> Self {
        let mut e = Self([0; LOADER_ENTRY_SIZE]);
        e.u32(0, command);
        e
    }

    fn put(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = self.0.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }

    fn u8(&mut self, at: usize, v: u8) {
        self.put(at, &[v]);
    }

    fn u32(&mut self, at: usize, v: u32) {
        self.put(at, &v.to_le_bytes());
    }

    fn name(&mut self, at: usize, name: &str) -> Result<(), LoaderError> {
        let field = name_field(name).ok_or_else(|| LoaderError::NameTooLong(name.to_owned()))?;
        self.put(at, &field);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn name_at(b: &[u8], at: usize) -> &[u8] {
        let field = &b[at..at + 56];
        assert!(field.contains(&0), "name field must keep a NUL");
        &field[..field.iter().position(|&c| c == 0).unwrap()]
    }

    #[test]
    fn allocate_entry_layout() {
        let mut l = TableLoader::new();
        l.allocate("etc/acpi/rsdp", 16, AllocZone::FSeg).unwrap();
        let b = l.into_bytes();
        assert_eq!(b.len(), LOADER_ENTRY_SIZE);
        assert_eq!(u32_at(&b, 0), 1);
        assert_eq!(name_at(&b, 4), b"etc/acpi/rsdp");
        assert_eq!(u32_at(&b, 60), 16);
        assert_eq!(b[64], 2);
        assert!(b[65..].iter().all(|&x| x == 0));
    }

    #[test]
    fn add_pointer_entry_layout() {
        let mut l = TableLoader::new();
        l.add_pointer("etc/acpi/tables", "etc/acpi/tables", 0x24, 4)
            .unwrap();
        let b = l.into_bytes();
        assert_eq!(u32_at(&b, 0), 2);
        assert_eq!(name_at(&b, 4), b"etc/acpi/tables");
        assert_eq!(name_at(&b, 60), b"etc/acpi/tables");
        assert_eq!(u32_at(&b, 116), 0x24);
        assert_eq!(b[120], 4);
        assert!(b[121..].iter().all(|&x| x == 0));
    }

    #[test]
    fn add_checksum_entry_layout() {
        let mut l = TableLoader::new();
        l.add_checksum("etc/acpi/tables", 0x109, 0x100, 0x24)
            .unwrap();
        let b = l.into_bytes();
        assert_eq!(u32_at(&b, 0), 3);
        assert_eq!(name_at(&b, 4), b"etc/acpi/tables");
        assert_eq!(u32_at(&b, 60), 0x109);
        assert_eq!(u32_at(&b, 64), 0x100);
        assert_eq!(u32_at(&b, 68), 0x24);
        assert!(b[72..].iter().all(|&x| x == 0));
    }

    #[test]
    fn write_pointer_entry_layout() {
        let mut l = TableLoader::new();
        l.write_pointer("etc/vmgenid_addr", 0, 8, "etc/vmgenid_guid", 40)
            .unwrap();
        let b = l.into_bytes();
        assert_eq!(u32_at(&b, 0), 4);
        assert_eq!(name_at(&b, 4), b"etc/vmgenid_addr");
        assert_eq!(name_at(&b, 60), b"etc/vmgenid_guid");
        assert_eq!(u32_at(&b, 116), 0);
        assert_eq!(u32_at(&b, 120), 40);
        assert_eq!(b[124], 8);
        assert!(b[125..].iter().all(|&x| x == 0));
    }

    #[test]
    fn entries_follow_each_other_in_order() {
        let mut l = TableLoader::new();
        l.allocate("a", 64, AllocZone::High).unwrap();
        l.add_checksum("a", 9, 0, 36).unwrap();
        let b = l.into_bytes();
        assert_eq!(b.len(), 2 * LOADER_ENTRY_SIZE);
        assert_eq!(u32_at(&b, 0), 1);
        assert_eq!(b[64], 1);
        assert_eq!(u32_at(&b, 128), 3);
    }

    #[test]
    fn refuses_long_names_bad_alignment_and_pointer_sizes() {
        let mut l = TableLoader::new();
        let long = "x".repeat(56);
        assert_eq!(
            l.allocate(&long, 4, AllocZone::High),
            Err(LoaderError::NameTooLong(long.clone()))
        );
        assert!(l.allocate(&"x".repeat(55), 4, AllocZone::High).is_ok());
        assert_eq!(
            l.allocate("a", 3, AllocZone::High),
            Err(LoaderError::BadAlign(3))
        );
        assert_eq!(
            l.allocate("a", 0, AllocZone::High),
            Err(LoaderError::BadAlign(0))
        );
        assert_eq!(
            l.add_pointer("a", "b", 0, 3),
            Err(LoaderError::BadPointerSize(3))
        );
        assert_eq!(
            l.write_pointer("a", 0, 16, "b", 0),
            Err(LoaderError::BadPointerSize(16))
        );
        assert!(l.add_pointer("a", &long, 0, 4).is_err());
        assert_eq!(
            l.into_bytes().len(),
            LOADER_ENTRY_SIZE,
            "only the good entry"
        );
    }
}
