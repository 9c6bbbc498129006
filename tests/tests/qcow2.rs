//! qcow2 disk images at run time: the virtio-blk tiny guest (`tests/guests/virtio_blk.S`:
//! reads sector 0, writes a pattern to sector 1, reads it back, flushes) on a qcow2 image
//! that `qemu-img` (Debian package qemu-utils, installed by the test command) made from a
//! raw one must see the same bytes, and what it writes must be what `qemu-img convert`
//! reads out of the image afterwards; the same through a backing chain, where the backing
//! file stays untouched. SeaBIOS boots a qcow2 disk on the SATA controller (AHCI).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hospes_tests::{GuestKind, boot_disk, build_guest, run_vmm, skip_without_kvm};

const TIMEOUT: Duration = Duration::from_secs(90);
const SECTOR: usize = 512;
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// What the guest prints on a writable 1 MiB disk whose sector 0 is [`sector0`].
const GUEST_OUTPUT: &str = "virtio-blk 00:01.0 capacity 2048 sectors\n\
     blk read status 00\n\
     blk sector 0: a5 a4 a7 a6 a1 a0 a3 a2 ad ac af ae a9 a8 ab aa\n\
     blk write status 00\n\
     blk readback status 00\n\
     blk write readback ok\n\
     blk flush status 00\n\
     virtio-rng 00:02.0\n\
     rng got 64 bytes\n\
     rng bytes not all zero\n\
     virtio done\n";

fn sector0() -> Vec<u8> {
    (0..SECTOR).map(|i| i as u8 ^ 0xa5).collect()
}

fn guest_pattern() -> Vec<u8> {
    (0..SECTOR).map(|i| i as u8 ^ 0x3c).collect()
}

/// A 1 MiB raw image whose sector 0 holds [`sector0`] and whose last sector holds 0x77s
/// (so a qcow2 image made from it has data at both ends).
fn make_raw(path: &Path) -> Vec<u8> {
    let mut img = vec![0u8; 1 << 20];
    img[..SECTOR].copy_from_slice(&sector0());
    let len = img.len();
    img[len - SECTOR..].fill(0x77);
    std::fs::write(path, &img).unwrap();
    img
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (Debian package qemu-utils) runs");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

/// Runs one `qemu-io` command on the qcow2 image at `image`.
fn qemu_io(image: &Path, command: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", command])
        .arg(image)
        .output()
        .expect("qemu-io (Debian package qemu-utils) runs");
    assert!(out.status.success(), "qemu-io {command}: {out:?}");
}

/// The virtual disk's bytes as `qemu-img` reads them.
fn qemu_img_bytes(image: &Path) -> Vec<u8> {
    let raw = image.with_extension("out.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    std::fs::read(raw).unwrap()
}

fn run_guest(kernel: &Path, disk_arg: &str) -> hospes_tests::RunOutput {
    let kernel = kernel.to_str().unwrap();
    run_vmm(
        &["--kernel", kernel, "-m", "64M", "--disk", disk_arg],
        TIMEOUT,
    )
}

/// The bytes the disk must hold after the guest ran on `before`.
fn expected_after(before: &[u8]) -> Vec<u8> {
    let mut after = before.to_vec();
    after[SECTOR..2 * SECTOR].copy_from_slice(&guest_pattern());
    after
}

#[test]
fn virtio_blk_guest_sees_and_writes_a_qcow2_image_as_on_raw() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("virtio_blk", GuestKind::Pvh);
    let raw = g.dir.path().join("disk.img");
    let before = make_raw(&raw);
    let qcow2 = g.dir.path().join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    let raw_out = run_guest(&g.path, raw.to_str().unwrap());
    assert_eq!(raw_out.stdout, GUEST_OUTPUT, "{raw_out:?}");
    let out = run_guest(&g.path, &format!("{},format=qcow2", qcow2.display()));
    assert_eq!(out.stdout, raw_out.stdout, "stderr: {}", out.stderr);
    assert!(out.success(), "{out:?}");
    qemu_img(&["check", qcow2.to_str().unwrap()]);
    assert!(qemu_img_bytes(&qcow2) == expected_after(&before));
    assert!(std::fs::read(&raw).unwrap() == expected_after(&before));
}

#[test]
fn virtio_blk_guest_writes_the_top_of_a_backing_chain() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("virtio_blk", GuestKind::Pvh);
    let dir = g.dir.path();
    // base.img (raw) <- mid.qcow2 (holds sector 0) <- top.qcow2 (empty), names relative.
    let base = dir.join("base.img");
    let mut before = make_raw(&base);
    before[..SECTOR].fill(0);
    std::fs::write(&base, &before).unwrap();
    before[..SECTOR].copy_from_slice(&sector0());
    let mid = dir.join("mid.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.img",
        "-F",
        "raw",
        mid.to_str().unwrap(),
    ]);
    let sector0_file = dir.join("s0.bin");
    std::fs::write(&sector0_file, sector0()).unwrap();
    qemu_io(
        &mid,
        &format!("write -q -s {} 0 512", sector0_file.display()),
    );
    let top = dir.join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    let base_before = std::fs::read(&base).unwrap();
    let mid_before = std::fs::read(&mid).unwrap();

    let out = run_guest(&g.path, &format!("{},format=qcow2", top.display()));
    assert_eq!(out.stdout, GUEST_OUTPUT, "stderr: {}", out.stderr);
    assert!(out.success(), "{out:?}");
    assert!(qemu_img_bytes(&top) == expected_after(&before));
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the backing file changed"
    );
    assert!(
        std::fs::read(&mid).unwrap() == mid_before,
        "the middle image changed"
    );
}

#[test]
fn a_missing_backing_file_or_a_bad_header_fails_at_start_with_the_path() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("virtio_blk", GuestKind::Pvh);
    let dir = g.dir.path();
    let base = dir.join("base.img");
    make_raw(&base);
    let top = dir.join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.img",
        "-F",
        "raw",
        top.to_str().unwrap(),
    ]);
    std::fs::remove_file(&base).unwrap();
    let out = run_guest(&g.path, &format!("{},format=qcow2", top.display()));
    assert!(!out.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "the guest must not run: {out:?}");
    assert!(
        out.stderr.contains(&top.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("base.img"), "{}", out.stderr);

    let bad = dir.join("bad.qcow2");
    make_raw(&bad);
    let out = run_guest(&g.path, &format!("{},format=qcow2", bad.display()));
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains(&bad.display().to_string()),
        "{}",
        out.stderr
    );
}

#[test]
fn seabios_boots_a_qcow2_disk_on_the_sata_controller() {
    if skip_without_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = boot_disk(dir.path(), &[]);
    let qcow2 = dir.path().join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    std::fs::remove_file(&raw).unwrap();
    let disk_arg = format!("{},format=qcow2", qcow2.display());
    let run = run_vmm(
        &[
            "--bios", SEABIOS, "--no-rng", "--serial", "stdio", "--sata", &disk_arg, "-m", "128M",
        ],
        TIMEOUT,
    );
    assert!(run.success(), "the guest powers itself off: {run:?}");
    // The only disk is on the SATA controller, so the boot sector came through AHCI and
    // imago; it prints its boot drive and the E820 map.
    assert!(run.stdout.contains("BOOT drive=80"), "{run:?}");
    assert!(run.stdout.lines().any(|l| l.contains("E820 ")), "{run:?}");
}
