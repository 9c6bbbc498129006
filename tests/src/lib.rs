//! Shared plumbing for the end-to-end tests: finding the built binaries, building the tiny
//! guests in `tests/guests/` with the system toolchain, and running the helper on them.
//!
//! Data flow: [`build_guest`] assembles `tests/guests/<name>.S` with gcc and links it with
//! ld (PVH guests as ELF with `pvh.ld`, the bzImage guest as a flat file with
//! `bzimage.ld`) into a temporary directory; [`run_vmm`] spawns `hospes-vmm` on it, with
//! stdout (COM1) and stderr captured, and kills it at a deadline.

pub mod initramfs;
pub mod peers;
pub mod rfb;
pub mod save;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// How a guest image is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestKind {
    /// ELF with a Xen PVH note.
    Pvh,
    /// Flat bzImage.
    BzImage,
    /// A 512-byte boot sector for firmware (16-bit, loaded at 0x7c00).
    BootSector,
    /// The top 64 KiB of a system ROM (16-bit, entered at the reset vector in segment
    /// 0xf000); see [`rom_image`] for a whole image to pass with `--bios`.
    Rom,
}

/// A built guest and the directory holding it.
pub struct Guest {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// The `tests/guests` directory.
pub fn guests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guests")
}

/// The profile directory the test binary runs from (`target/debug`, `target/release`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

static BUILD: Once = Once::new();

/// The `hospes-vmm` binary next to the test binary, built first if cargo is at hand
/// (integration tests do not build a dependency's binaries by themselves).
pub fn vmm_binary() -> PathBuf {
    let dir = target_dir();
    BUILD.call_once(|| {
        if let Ok(cargo) = std::env::var("CARGO") {
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "-p", "hospes-vmm", "--bin", "hospes-vmm"]);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
            // Another change may break the build for a moment; a binary built before still
            // tests this crate's guests, so only a missing binary is fatal.
            assert!(
                ok || dir.join("hospes-vmm").exists(),
                "cargo build -p hospes-vmm failed"
            );
        }
    });
    dir.join("hospes-vmm")
}

/// Builds guest `name` from `tests/guests/<name>.S`.
pub fn build_guest(name: &str, kind: GuestKind) -> Guest {
    build_guest_with(name, kind, &[])
}

/// Builds guest `name` with extra preprocessor definitions (`-D` arguments).
pub fn build_guest_with(name: &str, kind: GuestKind, defines: &[&str]) -> Guest {
    let src = guests_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    let obj = dir.path().join(format!("{name}.o"));
    let (script, out) = match kind {
        GuestKind::Pvh => ("pvh.ld", dir.path().join(format!("{name}.elf"))),
        GuestKind::BzImage => ("bzimage.ld", dir.path().join(format!("{name}.bzImage"))),
        GuestKind::BootSector => ("bootsector.ld", dir.path().join(format!("{name}.bin"))),
        GuestKind::Rom => ("rom.ld", dir.path().join(format!("{name}.top"))),
    };
    let emulation = match kind {
        GuestKind::BootSector | GuestKind::Rom => "elf_i386",
        _ => "elf_x86_64",
    };
    let word = match kind {
        GuestKind::BootSector | GuestKind::Rom => "-m32",
        _ => "-m64",
    };
    let run = |cmd: &mut Command| {
        let o = cmd.output().expect("run the toolchain (gcc, ld)");
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(Command::new("gcc")
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg(word)
        .arg("-c")
        .arg("-I")
        .arg(&src)
        .arg(src.join(format!("{name}.S")))
        .arg("-o")
        .arg(&obj));
    run(Command::new("ld")
        .args(["-m", emulation, "-nostdlib", "--no-warn-rwx-segments", "-T"])
        .arg(src.join(script))
        .arg(&obj)
        .arg("-o")
        .arg(&out));
    Guest { dir, path: out }
}

/// A 128 KiB system ROM image at `guest.dir/<name>.rom`: 64 KiB of 0xff, then the
/// [`GuestKind::Rom`] guest, so that its reset vector ends the image.
pub fn rom_image(guest: &Guest) -> PathBuf {
    let top = std::fs::read(&guest.path).expect("read the ROM guest");
    assert_eq!(top.len(), 0x1_0000, "a ROM guest is 64 KiB (.org 0x10000)");
    let mut image = vec![0xffu8; 0x1_0000];
    image.extend_from_slice(&top);
    let path = guest.path.with_extension("rom");
    std::fs::write(&path, image).expect("write the ROM image");
    path
}

/// What a helper run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// None when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` up to `timeout`, killing it after.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `hospes-vmm args...` with stdin closed, killing it after `timeout`.
pub fn run_vmm(args: &[&str], timeout: Duration) -> RunOutput {
    run_vmm_with_input(args, None, timeout)
}

/// Runs `hospes-vmm args...` with `input` on its stdin (then end of file), or stdin closed,
/// killing it after `timeout`.
pub fn run_vmm_with_input(args: &[&str], input: Option<&[u8]>, timeout: Duration) -> RunOutput {
    let mut child = Command::new(vmm_binary())
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hospes-vmm");
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        // The helper may exit before reading everything; that shows in its output.
        let _ = stdin.write_all(data);
    }
    let out = drain(child.stdout.take().expect("stdout is piped"));
    let err = drain(child.stderr.take().expect("stderr is piped"));
    let status = wait_timeout(&mut child, timeout);
    RunOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Whether this machine can run KVM guests (tests needing it skip with a note otherwise).
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Whether a test that needs /dev/kvm must be skipped. A missing or unusable /dev/kvm is a
/// test failure (these tests are what proves the helper works), unless the person running
/// them opted out with `HOSPES_SKIP_KVM_TESTS=1`, in which case the skip is said on stderr.
pub fn skip_without_kvm() -> bool {
    if kvm_available() {
        return false;
    }
    if std::env::var_os("HOSPES_SKIP_KVM_TESTS").is_some_and(|v| v == "1") {
        eprintln!("skipped: /dev/kvm is not usable here (HOSPES_SKIP_KVM_TESTS=1)");
        return true;
    }
    panic!(
        "/dev/kvm cannot be opened read-write: add your user to the kvm group \
         (sudo usermod -aG kvm $USER, then log in again), or set HOSPES_SKIP_KVM_TESTS=1 \
         to skip the tests that run guests"
    );
}

/// The RAM a guest of `mem` bytes sees in its memory map, in KiB (all of it minus the
/// legacy hole 0x9fc00..0x100000).
pub fn visible_ram_kib(mem: u64) -> u64 {
    (mem - (0x10_0000 - 0x9_fc00)) / 1024
}

/// A process's resident memory: VmRSS and, for each size in `mappings` (KiB), the resident
/// KiB of the largest-resident mapping of that size (up to 4 MiB more, for guard pages and
/// alignment), e.g. the guest RAM and video memory of a VMM. None if the process is gone.
pub fn resident_split(pid: u32, mappings: &[u64]) -> Option<(u64, Vec<u64>)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let vmrss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut resident = vec![0u64; mappings.len()];
    let mut size = 0u64;
    for l in smaps.lines() {
        let mut f = l.split_whitespace();
        match (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) {
            (Some("Size:"), Some(v)) => size = v,
            (Some("Rss:"), Some(v)) => {
                if let Some(i) = mappings.iter().position(|&m| size >= m && size <= m + 4096) {
                    resident[i] = resident[i].max(v);
                }
            }
            _ => {}
        }
    }
    Some((vmrss, resident))
}

/// Waits up to `timeout` until the file at `path` (a guest's console written with
/// `--serial file:`) contains `text`; returns what it holds then, found or not.
pub fn wait_for_text(path: &Path, text: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(text) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// hospes-vmm started in the background on the kernel `guest` with `memory` (`-m`), stdin
/// closed, and the `extra` flags.
pub fn spawn_vmm(guest: &Guest, memory: &str, extra: &[String]) -> Child {
    Command::new(vmm_binary())
        .arg("--kernel")
        .arg(&guest.path)
        .args(["-m", memory])
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn hospes-vmm")
}

/// Decodes a PNG into (width, height, 0xRRGGBB pixels).
pub fn read_png(path: &Path) -> (u32, u32, Vec<u32>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let px = buf[..info.buffer_size()]
        .chunks_exact(step)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect();
    (info.width, info.height, px)
}

/// A 1 MiB raw disk in `dir` whose first sector is the `bootsector` guest built with
/// `defines` (what firmware tests boot).
pub fn boot_disk(dir: &Path, defines: &[&str]) -> PathBuf {
    let guest = build_guest_with("bootsector", GuestKind::BootSector, defines);
    let mut image = std::fs::read(&guest.path).expect("read the boot sector");
    assert_eq!(image.len(), 512, "the boot sector guest is one sector");
    image.resize(1 << 20, 0);
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, image).expect("write the disk image");
    disk
}

/// An El Torito CD image in `dir` (no-emulation boot, as installers are made) whose boot
/// image is the `bootsector` guest built with `defines`, made with xorriso (Debian
/// package xorriso, installed by the test command).
pub fn boot_iso(dir: &Path, defines: &[&str]) -> PathBuf {
    let guest = build_guest_with("bootsector", GuestKind::BootSector, defines);
    let tree = dir.join("iso");
    std::fs::create_dir_all(&tree).expect("make the ISO's tree");
    std::fs::copy(&guest.path, tree.join("boot.bin")).expect("copy the boot image");
    let iso = dir.join("install.iso");
    let out = Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-b",
            "boot.bin",
            "-no-emul-boot",
        ])
        .args(["-boot-load-size", "4", "-o"])
        .arg(&iso)
        .arg(&tree)
        .output()
        .expect("xorriso (Debian package xorriso) is installed by the test command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    iso
}

/// `hospes-vmm --config` on a UEFI VM in `dir` (a vm.ron with `boot: Uefi(..)`, no disk,
/// display or network; its variable store is made there on start), with the firmware log
/// on stderr (`HOSPES_LOG=info`) and both output streams piped.
pub fn uefi_vm(dir: &Path, cpus: u32, memory: &str) -> Command {
    uefi_vm_with(dir, cpus, memory, false)
}

/// [`uefi_vm`] with `secure_boot` in its vm.ron.
pub fn uefi_vm_with(dir: &Path, cpus: u32, memory: &str, secure_boot: bool) -> Command {
    let config = dir.join("vm.ron");
    std::fs::write(
        &config,
        format!(
            "(version: 1, name: \"efi\", os: Linux, cpus: {cpus}, memory: \"{memory}\", \
             boot: Uefi(firmware: None, tpm: false, secure_boot: {secure_boot}), network: None, display: (enabled: false))\n"
        ),
    )
    .expect("write vm.ron");
    let mut cmd = Command::new(vmm_binary());
    cmd.arg("--config")
        .arg(&config)
        .arg("--no-rng")
        .env("HOSPES_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}
