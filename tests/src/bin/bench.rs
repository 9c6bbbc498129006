//! `cargo run --release -p hospes-tests --bin bench`: start-up time and memory overhead of
//! hospes-vmm next to QEMU microvm on the tiny PVH guest. Prints a table; asserts nothing.
//!
//! Start-up: time from spawn to the guest's last serial line ("initrd: none"), median of
//! RUNS runs of each. Memory: the guest is started with the command line "wait" so it stays alive;
//! the helper's VmRSS minus the resident part of the guest-RAM mapping (from smaps) is the
//! overhead beyond guest pages touched.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hospes_tests::{GuestKind, build_guest, resident_split, target_dir, wait_timeout};

const RUNS: usize = 21;
const MEM_MIB: u64 = 64;

fn spawn(cmd: &mut Command) -> Option<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Reads stdout lines until one starts with `last`; returns the time since `start`.
fn until_line(child: &mut Child, last: &str, start: Instant) -> Option<Duration> {
    let out = child.stdout.take()?;
    let mut lines = BufReader::new(out).lines();
    let found = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with(last));
    let t = start.elapsed();
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    found.then_some(t)
}

fn hospes_cmd(vmm: &Path, kernel: &Path, cmdline: &str) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--kernel")
        .arg(kernel)
        .args(["--cmdline", cmdline, "--memory", &format!("{MEM_MIB}M")]);
    c
}

fn qemu_cmd(kernel: &Path, cmdline: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-accel",
        "kvm",
        "-M",
        "microvm",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
    ])
    .args([
        "-serial",
        "stdio",
        "-m",
        &format!("{MEM_MIB}M"),
        "-append",
        cmdline,
        "-kernel",
    ])
    .arg(kernel);
    c
}

/// Spawn to the last serial line of one run of `cmd`.
fn startup(mut cmd: Command) -> Option<Duration> {
    let start = Instant::now();
    let mut child = spawn(&mut cmd)?;
    let t = until_line(&mut child, "initrd:", start);
    // QEMU's microvm does not power off for this guest: it is killed, and reaped so that
    // its teardown (guest memory, the VM) is over before the next run starts.
    if wait_timeout(&mut child, Duration::from_millis(500)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    t
}

/// Median start-up of `make`'s command over RUNS runs in a row, after one warm-up run
/// (page cache, KVM module state) that does not count. The helper's and QEMU's runs are
/// not interleaved: a helper run right after a QEMU run took 0.3-0.5 ms longer here (what
/// QEMU's run left behind in the caches and the kernel), which is not the helper's own
/// start-up.
fn median_startup(mut make: impl FnMut() -> Command) -> Option<Duration> {
    let mut times = Vec::new();
    for run in 0..=RUNS {
        let t = startup(make());
        if run > 0 {
            times.push(t?);
        }
    }
    times.sort();
    times.get(times.len() / 2).copied()
}

/// (VmRSS, resident guest RAM) in KiB for a live process.
fn rss_split(pid: u32) -> Option<(u64, u64)> {
    let (vmrss, resident) = resident_split(pid, &[MEM_MIB * 1024])?;
    Some((vmrss, resident[0]))
}

fn overhead(mut cmd: Command) -> Option<(u64, u64)> {
    let mut child = spawn(&mut cmd)?;
    let ok = until_line(&mut child, "waiting", Instant::now()).is_some();
    std::thread::sleep(Duration::from_millis(100));
    let r = if ok { rss_split(child.id()) } else { None };
    let _ = child.kill();
    let _ = child.wait();
    r
}

/// Firmware boot runs per side (each takes a second or more here).
const FIRMWARE_RUNS: usize = 5;
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// Spawn -> the boot sector's first line ("BOOT drive="), through SeaBIOS; the VM is then
/// killed and reaped.
fn firmware_boot(mut cmd: Command) -> Option<Duration> {
    let start = Instant::now();
    let mut child = spawn(&mut cmd)?;
    let out = child.stdout.take()?;
    let mut lines = BufReader::new(out).lines();
    let found = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("BOOT drive="));
    let t = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    found.then_some(t)
}

fn median_firmware_boot(mut make: impl FnMut() -> Command) -> Option<Duration> {
    let mut times = Vec::new();
    for _ in 0..FIRMWARE_RUNS {
        times.push(firmware_boot(make())?);
    }
    times.sort();
    times.get(times.len() / 2).copied()
}

/// SeaBIOS to a boot sector on a disk: Hospes' Q35 platform (virtio disk) against QEMU's
/// q35 (its AHCI disk), both with Debian's SeaBIOS and no display.
fn firmware_table(vmm: &Path) {
    let guest = build_guest("bootsector", GuestKind::BootSector);
    let Ok(mut image) = std::fs::read(&guest.path) else {
        println!("firmware boot: n/a (no boot sector)");
        return;
    };
    image.resize(1 << 20, 0);
    let disk = guest.dir.path().join("disk.raw");
    if std::fs::write(&disk, image).is_err() {
        println!("firmware boot: n/a (cannot write the disk)");
        return;
    }
    let h = median_firmware_boot(|| {
        let mut c = Command::new(vmm);
        c.args([
            "--bios", SEABIOS, "-m", "128M", "--no-rng", "--serial", "stdio", "--disk",
        ])
        .arg(&disk);
        c
    });
    let q = median_firmware_boot(|| {
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-accel",
            "kvm",
            "-M",
            "q35",
            "-m",
            "128M",
            "-nodefaults",
            "-display",
        ])
        .args(["none", "-serial", "stdio", "-bios", SEABIOS, "-drive"])
        .arg(format!("file={},format=raw,if=none,id=d", disk.display()))
        .args(["-device", "ide-hd,drive=d,bus=ide.0"]);
        c
    });
    println!();
    println!("SeaBIOS to a boot sector, 128 MiB, no display, median of {FIRMWARE_RUNS} runs");
    println!("{:<28} {:>12} {:>12}", "", "hospes-vmm", "qemu q35");
    println!(
        "{:<28} {:>12} {:>12}",
        "spawn -> boot sector's line",
        ms(h),
        ms(q)
    );
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("n/a".into(), |d| {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    })
}

fn kib(r: Option<(u64, u64)>) -> String {
    r.map_or("n/a".into(), |(rss, g)| {
        format!(
            "{:.2} MiB (VmRSS {rss} KiB, guest {g} KiB)",
            rss.saturating_sub(g) as f64 / 1024.0
        )
    })
}

fn main() {
    let guest = build_guest("pvh", GuestKind::Pvh);
    let vmm = target_dir().join("hospes-vmm");
    if !vmm.exists() {
        eprintln!("build hospes-vmm first: cargo build --release -p hospes-vmm");
        std::process::exit(1);
    }
    let k = guest.path.clone();
    let h = median_startup(|| hospes_cmd(&vmm, &k, "bench"));
    let q = median_startup(|| qemu_cmd(&k, "bench"));
    let hm = overhead(hospes_cmd(&vmm, &k, "wait"));
    let qm = overhead(qemu_cmd(&k, "wait"));
    println!(
        "tiny PVH guest, {MEM_MIB} MiB, median of {RUNS} runs ({})",
        vmm.display()
    );
    println!("{:<28} {:>12} {:>12}", "", "hospes-vmm", "qemu microvm");
    println!(
        "{:<28} {:>12} {:>12}",
        "spawn -> last serial line",
        ms(h),
        ms(q)
    );
    if let (Some(h), Some(q)) = (h, q) {
        println!(
            "{:<28} {:>12.1}x",
            "speed-up",
            q.as_secs_f64() / h.as_secs_f64()
        );
    }
    println!("RSS beyond guest RAM: hospes-vmm {}", kib(hm));
    println!("RSS beyond guest RAM: qemu       {}", kib(qm));
    firmware_table(&vmm);
}
