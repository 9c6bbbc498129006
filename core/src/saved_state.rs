//! A saved VM: the file `saved-state.hospes` in the VM's folder that "Save and Quit" (QMP
//! `hospes-save`, `hospesctl save`) writes and the next start reads back.
//!
//! The helper (`hospes-vmm`) fills it: named sections of machine and device state, and the
//! guest RAM that holds anything (pages never touched and pages of zeros are left out). This
//! module owns the format, so the app and `hospesctl` can tell a saved VM and its age
//! without the helper, and the parser is fuzzed on its own (`fuzz/`).
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "HOSPES-SAVED-VM\n" | format version u32 | meta length u32 | meta | crc32(meta)
//! section count u32 | per section: name length u16, name, length u64, data, crc32(name, data)
//! RAM run count u64 | per run: guest address u64, length u64 | crc32(run table)
//! the runs' bytes, in table order | crc32(RAM bytes) | "HOSPES-SAVED-END"
//! ```
//!
//! The file is written beside its final name and renamed into place after an fsync, so a
//! crash or a kill during a save leaves the previous file (or none) as it was. Reading
//! checks everything but the RAM bytes before a machine is built ([`open`]); the RAM
//! checksum is checked as the bytes land in guest memory ([`SavedFile::load_ram`]), before
//! any vCPU runs, so a damaged file never starts a half-restored VM.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The saved state's file name in a VM's folder.
pub const FILE_NAME: &str = "saved-state.hospes";
/// Bumped whenever the layout or any state struct changes meaning.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 16] = b"HOSPES-SAVED-VM\n";
const END_MAGIC: &[u8; 16] = b"HOSPES-SAVED-END";
const MAX_META: u32 = 64 << 10;
const MAX_SECTIONS: u32 = 4096;
const MAX_NAME: u16 = 256;
/// RAM is read in pieces of this size, for progress.
const RAM_CHUNK: usize = 32 << 20;

/// The saved state of the VM whose folder is `vm_dir`.
pub fn path_in(vm_dir: &Path) -> PathBuf {
    vm_dir.join(FILE_NAME)
}

/// The saved state of the VM in `vm_dir`, if it has one: its meta, or why it cannot be
/// read (another version, damaged).
pub fn find(vm_dir: &Path) -> Option<Result<Meta, SaveFileError>> {
    let path = path_in(vm_dir);
    path.exists().then(|| read_meta(&path))
}

/// Deletes the saved state of the VM in `vm_dir` (the next start boots afresh); false
/// when it had none.
pub fn discard(vm_dir: &Path) -> io::Result<bool> {
    let _ = std::fs::remove_file(partial_path(&path_in(vm_dir)));
    match std::fs::remove_file(path_in(vm_dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Errors writing or reading a saved state.
#[derive(Debug, thiserror::Error)]
pub enum SaveFileError {
    #[error("cannot write the saved state {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the saved state {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a Hospes saved state")]
    NotSavedState { path: PathBuf },
    #[error(
        "{path} was saved by {saved_by} (format {format}); this Hospes {ours} (format \
         {FORMAT_VERSION}) cannot resume it: start the VM afresh with `hospesctl discard NAME` \
         (the guest loses what it did not write to disk)"
    )]
    Version {
        path: PathBuf,
        saved_by: String,
        format: u32,
        ours: &'static str,
    },
    #[error("{path} is damaged: {what}")]
    Damaged { path: PathBuf, what: String },
}

/// What the file says about the saved VM, readable without the helper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The Hospes version that saved it.
    pub hospes_version: String,
    /// When, in seconds since the Unix epoch.
    pub saved_at: u64,
    /// Guest RAM in bytes and vCPUs, as configured when saved.
    pub memory: u64,
    pub cpus: u32,
    /// The machine's devices as the helper names them, one per line: a restore into a
    /// machine built differently (vm.ron edited since) is refused with the difference.
    pub machine: String,
    /// Bytes of guest RAM stored (what was not zero).
    pub ram_stored: u64,
}

impl Meta {
    /// Meta for a save made now by this build.
    pub fn now(memory: u64, cpus: u32, machine: String) -> Self {
        let saved_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            hospes_version: env!("CARGO_PKG_VERSION").to_string(),
            saved_at,
            memory,
            cpus,
            machine,
            ram_stored: 0,
        }
    }
}

/// One named piece of state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub data: Vec<u8>,
}

/// Guest RAM bytes at a guest address, to be saved.
#[derive(Clone, Copy, Debug)]
pub struct RamRun<'a> {
    pub gpa: u64,
    pub data: &'a [u8],
}

/// Writes a saved state to `path` (through `<path>.partial` and a rename); `progress` gets
/// (bytes of RAM written, bytes to write). Returns the file's size.
pub fn write(
    path: &Path,
    meta: &Meta,
    sections: &[Section],
    ram: &[RamRun<'_>],
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, SaveFileError> {
    let partial = partial_path(path);
    let err = |source| SaveFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(err)?;
    let result = write_to(file, meta, sections, ram, &mut progress).and_then(|size| {
        std::fs::rename(&partial, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(size)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map_err(err)
}

/// Where a save in progress writes.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn write_to(
    file: File,
    meta: &Meta,
    sections: &[Section],
    ram: &[RamRun<'_>],
    progress: &mut impl FnMut(u64, u64),
) -> io::Result<u64> {
    let mut meta = meta.clone();
    meta.ram_stored = ram.iter().map(|r| r.data.len() as u64).sum();
    let meta_bytes = postcard::to_stdvec(&meta).map_err(io::Error::other)?;
    let too_many = || io::Error::other("too many sections or too long a name");
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
    out.write_all(&meta_bytes)?;
    out.write_all(&crc32fast::hash(&meta_bytes).to_le_bytes())?;
    let count = u32::try_from(sections.len())
        .ok()
        .filter(|&c| c <= MAX_SECTIONS)
        .ok_or_else(too_many)?;
    out.write_all(&count.to_le_bytes())?;
    for s in sections {
        let len = u16::try_from(s.name.len())
            .ok()
            .filter(|&l| l <= MAX_NAME)
            .ok_or_else(too_many)?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(s.name.as_bytes())?;
        out.write_all(&(s.data.len() as u64).to_le_bytes())?;
        out.write_all(&s.data)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(s.name.as_bytes());
        crc.update(&s.data);
        out.write_all(&crc.finalize().to_le_bytes())?;
    }
    let mut table = Vec::with_capacity(8 + ram.len() * 16);
    table.extend_from_slice(&(ram.len() as u64).to_le_bytes());
    for r in ram {
        table.extend_from_slice(&r.gpa.to_le_bytes());
        table.extend_from_slice(&(r.data.len() as u64).to_le_bytes());
    }
    out.write_all(&table)?;
    out.write_all(&crc32fast::hash(&table[8..]).to_le_bytes())?;
    let total = meta.ram_stored;
    let mut done = 0u64;
    let mut crc = crc32fast::Hasher::new();
    progress(0, total);
    for r in ram {
        for piece in r.data.chunks(RAM_CHUNK) {
            crc.update(piece);
            out.write_all(piece)?;
            done += piece.len() as u64;
            progress(done, total);
        }
    }
    out.write_all(&crc.finalize().to_le_bytes())?;
    out.write_all(END_MAGIC)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// A saved state whose header, sections and RAM table were read and checked.
#[derive(Debug)]
pub struct SavedFile {
    pub meta: Meta,
    pub sections: Vec<Section>,
    /// (guest address, length) of each stored run of RAM.
    pub runs: Vec<(u64, u64)>,
    file: File,
    path: PathBuf,
}

/// Reads only the meta of the saved state at `path` (for listings).
pub fn read_meta(path: &Path) -> Result<Meta, SaveFileError> {
    let file = File::open(path).map_err(|source| SaveFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut r = Parser::new(file, path)?;
    r.header()
}

/// Opens the saved state at `path` and checks all but the RAM bytes: its version, every
/// checksum, and that the file is exactly as long as its table says.
pub fn open(path: &Path) -> Result<SavedFile, SaveFileError> {
    let file = File::open(path).map_err(|source| SaveFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(file, path)
}

/// [`open`] on an open file (the fuzz target's entry).
pub fn parse(file: File, path: &Path) -> Result<SavedFile, SaveFileError> {
    let mut p = Parser::new(file, path)?;
    let meta = p.header()?;
    let count = p.u32()?;
    if count > MAX_SECTIONS {
        return Err(p.damaged(format!("{count} sections")));
    }
    let mut sections = Vec::new();
    for _ in 0..count {
        let len = p.u16()?;
        if len > MAX_NAME {
            return Err(p.damaged(format!("a section name of {len} bytes")));
        }
        let name = p.bytes(u64::from(len))?;
        let name = String::from_utf8(name).map_err(|_| p.damaged("a section name"))?;
        let len = p.u64()?;
        let data = p.bytes(len)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(name.as_bytes());
        crc.update(&data);
        if p.u32()? != crc.finalize() {
            return Err(p.damaged(format!("section {name} fails its checksum")));
        }
        if sections.iter().any(|s: &Section| s.name == name) {
            return Err(p.damaged(format!("section {name} appears twice")));
        }
        sections.push(Section { name, data });
    }
    let runs_len = p.u64()?;
    if runs_len > p.left() / 16 {
        return Err(p.damaged(format!("{runs_len} RAM runs")));
    }
    let table = p.bytes(runs_len * 16)?;
    if p.u32()? != crc32fast::hash(&table) {
        return Err(p.damaged("the RAM table fails its checksum"));
    }
    let mut runs = Vec::with_capacity(runs_len as usize);
    let mut total = 0u64;
    let mut prev_end = 0u64;
    for entry in table.chunks_exact(16) {
        let gpa = u64::from_le_bytes(entry[..8].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(entry[8..].try_into().unwrap_or_default());
        let end = gpa.checked_add(len).filter(|_| len > 0 && gpa >= prev_end);
        let Some(end) = end else {
            return Err(p.damaged(format!("a RAM run at {gpa:#x}+{len:#x} out of order")));
        };
        prev_end = end;
        total = total.saturating_add(len);
        runs.push((gpa, len));
    }
    if total != meta.ram_stored || p.left() != total.saturating_add(4 + END_MAGIC.len() as u64) {
        return Err(p.damaged(format!(
            "{} bytes after the RAM table, where {total} bytes of RAM and the end mark belong \
             (cut short?)",
            p.left()
        )));
    }
    Ok(SavedFile {
        meta,
        sections,
        runs,
        path: p.path,
        file: p.file,
    })
}

impl SavedFile {
    /// The section called `name`.
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        self.sections
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.data.as_slice())
    }

    /// Reads the RAM runs into the slices `dest` gives for (guest address, length) and
    /// checks their checksum and the end mark; `progress` gets (bytes read, bytes to read).
    pub fn load_ram<'m>(
        mut self,
        mut dest: impl FnMut(u64, u64) -> Option<&'m mut [u8]>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), SaveFileError> {
        let total = self.meta.ram_stored;
        let mut done = 0;
        let mut crc = crc32fast::Hasher::new();
        progress(0, total);
        for &(gpa, len) in &self.runs {
            let Some(slice) = dest(gpa, len) else {
                return Err(SaveFileError::Damaged {
                    path: self.path.clone(),
                    what: format!("RAM at {gpa:#x}+{len:#x} lies outside this VM's memory"),
                });
            };
            for piece in slice.chunks_mut(RAM_CHUNK) {
                self.file
                    .read_exact(piece)
                    .map_err(|source| SaveFileError::Read {
                        path: self.path.clone(),
                        source,
                    })?;
                crc.update(piece);
                done += piece.len() as u64;
                progress(done, total);
            }
        }
        let mut tail = [0u8; 20];
        self.file
            .read_exact(&mut tail)
            .map_err(|source| SaveFileError::Read {
                path: self.path.clone(),
                source,
            })?;
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        if stored != crc.finalize() || &tail[4..] != END_MAGIC {
            return Err(SaveFileError::Damaged {
                path: self.path,
                what: "the guest's memory fails its checksum".into(),
            });
        }
        Ok(())
    }
}

/// Reads the file front to back, knowing how much is left.
struct Parser {
    file: File,
    path: PathBuf,
    left: u64,
}

impl Parser {
    fn new(mut file: File, path: &Path) -> Result<Self, SaveFileError> {
        let read_err = |source| SaveFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = file.seek(SeekFrom::End(0)).map_err(read_err)?;
        file.seek(SeekFrom::Start(0)).map_err(read_err)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            left: len,
        })
    }

    fn left(&self) -> u64 {
        self.left
    }

    fn damaged(&self, what: impl Into<String>) -> SaveFileError {
        SaveFileError::Damaged {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    fn bytes(&mut self, len: u64) -> Result<Vec<u8>, SaveFileError> {
        if len > self.left {
            return Err(self.damaged("it ends early (cut short?)"));
        }
        let mut buf = vec![0; len as usize];
        self.file
            .read_exact(&mut buf)
            .map_err(|source| SaveFileError::Read {
                path: self.path.clone(),
                source,
            })?;
        self.left -= len;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SaveFileError> {
        let v = self.bytes(N as u64)?;
        Ok(v.try_into().unwrap_or([0; N]))
    }

    fn u16(&mut self) -> Result<u16, SaveFileError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, SaveFileError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, SaveFileError> {
        self.array().map(u64::from_le_bytes)
    }

    /// Magic, version and meta; refuses other versions.
    fn header(&mut self) -> Result<Meta, SaveFileError> {
        if self.left < 16 || self.array::<16>()? != *MAGIC {
            return Err(SaveFileError::NotSavedState {
                path: self.path.clone(),
            });
        }
        let format = self.u32()?;
        let len = self.u32()?;
        if len > MAX_META {
            return Err(self.damaged(format!("a header of {len} bytes")));
        }
        let bytes = self.bytes(u64::from(len))?;
        let crc = self.u32()?;
        if crc != crc32fast::hash(&bytes) {
            return Err(self.damaged("its header fails its checksum"));
        }
        let meta = postcard::from_bytes::<Meta>(&bytes).ok();
        let ours = env!("CARGO_PKG_VERSION");
        match meta {
            Some(meta) if format == FORMAT_VERSION && meta.hospes_version == ours => Ok(meta),
            other => Err(SaveFileError::Version {
                path: self.path.clone(),
                saved_by: other.map_or_else(
                    || "another version of Hospes".to_string(),
                    |m| format!("Hospes {}", m.hospes_version),
                ),
                format,
                ours,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join(FILE_NAME);
        let ram: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let meta = Meta::now(1 << 30, 2, "serial\nrtc\n".into());
        let sections = vec![
            Section {
                name: "serial".into(),
                data: vec![1, 2, 3],
            },
            Section {
                name: "rtc".into(),
                data: vec![],
            },
        ];
        let runs = [
            RamRun {
                gpa: 0x1000,
                data: &ram[..4096],
            },
            RamRun {
                gpa: 0x10_0000,
                data: &ram[4096..],
            },
        ];
        let mut last = (0, 0);
        write(&path, &meta, &sections, &runs, |d, t| last = (d, t)).unwrap();
        assert_eq!(last, (8192, 8192));
        (path, ram)
    }

    #[test]
    fn a_saved_state_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ram) = sample(dir.path());
        assert!(!partial_path(&path).exists());
        let meta = read_meta(&path).unwrap();
        assert_eq!(
            (meta.memory, meta.cpus, meta.ram_stored),
            (1 << 30, 2, 8192)
        );
        let saved = open(&path).unwrap();
        assert_eq!(saved.section("serial"), Some(&[1u8, 2, 3][..]));
        assert_eq!(saved.runs, vec![(0x1000, 4096), (0x10_0000, 4096)]);
        let mut guest = vec![0u8; 0x20_0000];
        let (low, high) = guest.split_at_mut(0x10_0000);
        let mut low = Some(&mut low[0x1000..0x2000]);
        let mut high = Some(&mut high[..0x1000]);
        saved
            .load_ram(
                |gpa, _| match gpa {
                    0x1000 => low.take(),
                    _ => high.take(),
                },
                |_, _| {},
            )
            .unwrap();
        assert_eq!(&guest[0x1000..0x2000], &ram[..4096]);
        assert_eq!(&guest[0x10_0000..0x10_1000], &ram[4096..]);
    }

    #[test]
    fn every_flipped_byte_or_cut_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample(dir.path());
        let good = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad");
        // Every byte of the header, sections and table, and a sample of the RAM.
        let positions = (0..200).chain((200..good.len()).step_by(97));
        for at in positions {
            let mut b = good.clone();
            b[at] ^= 0x40;
            std::fs::write(&bad, &b).unwrap();
            let res = open(&bad).and_then(|s| {
                let mut sink = vec![0u8; 8192];
                let mut slices = sink.chunks_mut(4096);
                s.load_ram(|_, _| slices.next(), |_, _| {})
            });
            assert!(res.is_err(), "a flip at byte {at} went unnoticed");
        }
        for cut in [0, 10, 100, good.len() / 2, good.len() - 1] {
            std::fs::write(&bad, &good[..cut]).unwrap();
            let res = open(&bad).and_then(|s| {
                let mut sink = vec![0u8; 8192];
                let mut slices = sink.chunks_mut(4096);
                s.load_ram(|_, _| slices.next(), |_, _| {})
            });
            assert!(res.is_err(), "a file cut at {cut} went unnoticed");
        }
    }

    #[test]
    fn another_version_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample(dir.path());
        let mut b = std::fs::read(&path).unwrap();
        b[16] = 99; // the format version
        std::fs::write(&path, &b).unwrap();
        let err = open(&path).unwrap_err().to_string();
        assert!(err.contains("format 99"), "{err}");
        assert!(err.contains("hospesctl discard"), "{err}");
        std::fs::write(&path, b"#!/bin/sh\n").unwrap();
        assert!(matches!(
            open(&path),
            Err(SaveFileError::NotSavedState { .. })
        ));
    }

    #[test]
    fn a_failed_save_leaves_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sample(dir.path());
        let before = std::fs::read(&path).unwrap();
        // A section name too long for the format fails the save half-way.
        let long = Section {
            name: "x".repeat(300),
            data: vec![],
        };
        let meta = Meta::now(1 << 20, 1, String::new());
        assert!(write(&path, &meta, &[long], &[], |_, _| {}).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert!(!partial_path(&path).exists());
    }
}
