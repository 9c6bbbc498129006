//! The slow tier's initramfs for a real Linux kernel: a `newc` cpio archive holding
//! `/init`, built here from the freestanding `tests/guests/linux/init.c` (it reports what
//! Linux brought up and powers off), the few directories it mounts on, `/dev/console`,
//! and any extra files a test adds (kernel modules and their load order).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A regular file to add: (path inside the archive, mode, contents).
pub type Extra = (String, u32, Vec<u8>);

/// One `newc` cpio entry (what the kernel unpacks as an initramfs).
fn entry(out: &mut Vec<u8>, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let fields = [
        0, // inode
        mode,
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        u32::try_from(data.len()).expect("a cpio member is under 4 GiB"),
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        u32::try_from(name.len() + 1).expect("a short name"),
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Writes `dir/initramfs.cpio`: `/init` (built with gcc into `dir`), `/dev`, `/proc`,
/// `/sys`, `/dev/console`, the directories `dirs` and the files `extra`; returns its path.
pub fn build(dir: &Path, dirs: &[&str], extra: &[Extra]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/linux/init.c");
    let init = dir.join("init");
    let built = Command::new("gcc")
        .args([
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-O2",
            "-o",
        ])
        .arg(&init)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(built.success(), "gcc failed on {}", src.display());
    let mut cpio = Vec::new();
    for d in ["dev", "proc", "sys"].iter().chain(dirs) {
        entry(&mut cpio, d, 0o040755, (0, 0), &[]);
    }
    entry(&mut cpio, "dev/console", 0o020600, (5, 1), &[]);
    for (name, mode, data) in extra {
        entry(&mut cpio, name, *mode, (0, 0), data);
    }
    let init = std::fs::read(&init).expect("read the built /init");
    entry(&mut cpio, "init", 0o100755, (0, 0), &init);
    entry(&mut cpio, "TRAILER!!!", 0, (0, 0), &[]);
    let path = dir.join("initramfs.cpio");
    std::fs::write(&path, cpio).expect("write the initramfs");
    path
}
