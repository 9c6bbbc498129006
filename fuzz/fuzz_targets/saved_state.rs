//! The saved-state file parser (`saved_state::parse`, then `SavedFile::load_ram`), the code
//! a resume runs on a file from disk. Half the inputs are a file's bytes as they are; the
//! other half build a valid file with `saved_state::write` from input-chosen sections and
//! RAM runs, then change one byte at an input-chosen place (or none). Must hold: no panic,
//! no allocation the file's length does not justify; an unchanged file loads back exactly
//! what was written; a file with any byte changed is refused by `parse` or `load_ram`.
#![no_main]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hospes_core::saved_state::{self, Meta, RamRun, Section};
use libfuzzer_sys::fuzz_target;

/// Guest RAM of the pretend VM the RAM is loaded into.
const RAM: usize = 256 << 10;

fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // tmpfs where there is one: `write` fsyncs, which a disk makes slow.
        let base = Path::new("/dev/shm");
        let base = match base.is_dir() {
            true => base.to_path_buf(),
            false => std::env::temp_dir(),
        };
        let dir = base.join(format!("hospes-fuzz-saved-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Parses the file at `path` and loads its RAM into a fresh buffer.
fn load(path: &Path) -> Result<(Vec<Section>, Vec<u8>), ()> {
    let parsed = saved_state::parse(File::open(path).unwrap(), path).map_err(drop)?;
    let mut ram = vec![0u8; RAM];
    let sections = parsed.sections.clone();
    let ptr = ram.as_mut_ptr();
    parsed
        .load_ram(
            |gpa, len| {
                let end = gpa.checked_add(len)?;
                (end <= RAM as u64).then(|| {
                    // SAFETY: the runs are in increasing order without overlap (parse
                    // checks it), so every slice handed out is a distinct part of `ram`,
                    // which outlives this call.
                    unsafe { std::slice::from_raw_parts_mut(ptr.add(gpa as usize), len as usize) }
                })
            },
            |_, _| {},
        )
        .map_err(drop)?;
    Ok((sections, ram))
}

/// A reader of the input's bytes, zero when they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("vm.hospes");
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // The file as the input has it.
        std::fs::write(&path, rest).unwrap();
        let _ = load(&path);
        return;
    }
    // A file written by `write`, then one byte changed (or none).
    let mut input = Bytes(rest);
    let mut sections = Vec::new();
    for i in 0..input.u8() % 4 {
        let len = usize::from(input.u8());
        sections.push(Section {
            name: format!("device/{i}"),
            data: input.take(len).to_vec(),
        });
    }
    let mut ram_bytes = Vec::new();
    let mut places = Vec::new();
    let mut gpa = 0u64;
    for _ in 0..input.u8() % 4 {
        gpa += u64::from(input.u16() % 64 + 1) * 4096;
        let len = usize::from(input.u8() % 8 + 1) * 512;
        if gpa + len as u64 > RAM as u64 {
            break;
        }
        let fill = input.u8();
        places.push((gpa, ram_bytes.len(), len));
        ram_bytes.extend(std::iter::repeat_n(fill, len));
        gpa += len as u64;
    }
    let runs: Vec<RamRun<'_>> = places
        .iter()
        .map(|&(gpa, at, len)| RamRun {
            gpa,
            data: &ram_bytes[at..at + len],
        })
        .collect();
    let meta = Meta::now(RAM as u64, 1, "serial\nrtc\n".into());
    let size = saved_state::write(&path, &meta, &sections, &runs, |_, _| {}).unwrap();
    let flip_at = u64::from(input.u16()) | (u64::from(input.u8()) << 16);
    let flip = input.u8();
    if flip != 0 && flip_at < size {
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[flip_at as usize] ^= flip;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            load(&path).is_err(),
            "a file with byte {flip_at} of {size} changed (xor {flip:#x}) was accepted"
        );
    } else {
        let (loaded, ram) = load(&path).expect("a file just written loads");
        assert_eq!(loaded, sections);
        for &(gpa, at, len) in &places {
            assert_eq!(&ram[gpa as usize..gpa as usize + len], &ram_bytes[at..at + len]);
        }
    }
});
