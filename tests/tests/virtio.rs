//! A guest driving virtio-blk and virtio-rng through the modern virtio-pci transport
//! (`tests/guests/virtio_blk.S`): capacity, a read, a write read back, a flush, and entropy.

use std::path::Path;
use std::time::Duration;

use hospes_tests::{GuestKind, RunOutput, build_guest, run_vmm, skip_without_kvm};

const TIMEOUT: Duration = Duration::from_secs(60);
const SECTOR: usize = 512;

/// Byte `i` of sector 0 in the image: the guest prints the first 16.
fn sector0() -> Vec<u8> {
    (0..SECTOR).map(|i| i as u8 ^ 0xa5).collect()
}

/// Byte `i` of what the guest writes to sector 1.
fn guest_pattern() -> Vec<u8> {
    (0..SECTOR).map(|i| i as u8 ^ 0x3c).collect()
}

/// A 1 MiB image whose sector 0 holds [`sector0`], the rest zero.
fn make_image(path: &Path) -> Vec<u8> {
    let mut img = vec![0u8; 1 << 20];
    img[..SECTOR].copy_from_slice(&sector0());
    std::fs::write(path, &img).unwrap();
    img
}

/// Runs the virtio guest with 64 MiB and `--disk disk_arg` (virtio-rng is there by default).
fn run_guest(kernel: &Path, disk_arg: &str) -> RunOutput {
    let kernel = kernel.to_str().unwrap();
    run_vmm(
        &["--kernel", kernel, "-m", "64M", "--disk", disk_arg],
        TIMEOUT,
    )
}

#[test]
fn guest_reads_writes_and_flushes_virtio_blk_and_reads_virtio_rng() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("virtio_blk", GuestKind::Pvh);
    let disk = g.dir.path().join("disk.img");
    let before = make_image(&disk);
    let out = run_guest(&g.path, disk.to_str().unwrap());
    assert_eq!(
        out.stdout,
        "virtio-blk 00:01.0 capacity 2048 sectors\n\
         blk read status 00\n\
         blk sector 0: a5 a4 a7 a6 a1 a0 a3 a2 ad ac af ae a9 a8 ab aa\n\
         blk write status 00\n\
         blk readback status 00\n\
         blk write readback ok\n\
         blk flush status 00\n\
         virtio-rng 00:02.0\n\
         rng got 64 bytes\n\
         rng bytes not all zero\n\
         virtio done\n",
        "stderr: {}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after[..SECTOR], sector0());
    assert_eq!(after[SECTOR..2 * SECTOR], guest_pattern());
    assert_eq!(after[2 * SECTOR..], before[2 * SECTOR..]);
}

#[test]
fn guest_write_to_a_readonly_disk_fails_with_ioerr_and_leaves_the_file() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("virtio_blk", GuestKind::Pvh);
    let disk = g.dir.path().join("disk.img");
    let before = make_image(&disk);
    let spec = format!("{},readonly", disk.to_str().unwrap());
    let out = run_guest(&g.path, &spec);
    assert_eq!(
        out.stdout,
        "virtio-blk 00:01.0 capacity 2048 sectors\n\
         blk read status 00\n\
         blk sector 0: a5 a4 a7 a6 a1 a0 a3 a2 ad ac af ae a9 a8 ab aa\n\
         blk write status 01\n\
         blk readback status 00\n\
         blk write readback differs\n\
         blk flush status 00\n\
         virtio-rng 00:02.0\n\
         rng got 64 bytes\n\
         rng bytes not all zero\n\
         virtio done\n",
        "stderr: {}",
        out.stderr
    );
    assert!(out.success(), "{out:?}");
    assert!(std::fs::read(&disk).unwrap() == before, "the image changed");
}
