//! Intel HD Audio (`--sound hda`) through a real, private PipeWire daemon: the tiny guest
//! (`tests/guests/hda.S`) resets the controller, talks to the codec through the CORB and
//! RIRB, plays a 1 kHz square wave through an output stream that `pw-record` picks up
//! from the sink, and records a 1 kHz sine that `pw-play` plays into the sink through an
//! input stream; the first codec answer arrives as an MSI. The same guest under QEMU (`ich9-intel-hda` + `hda-duplex`) must see
//! the same controller and codec.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hospes_tests::peers::{
    LiveVm, PipeWireDaemon, TEST_SINK, interrupt, read_wav_samples, require_program,
    tone_frequency, write_sine_wav,
};
use hospes_tests::{Guest, GuestKind, build_guest_with, skip_without_kvm, wait_timeout};

const RUN: Duration = Duration::from_secs(60);
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// One sound test at a time: each runs its own daemon and a real-time guest.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hda guest with an HD Audio card, as VM `name`.
fn hda_vm(g: &Guest, name: &str, env: &[(&str, &str)]) -> LiveVm {
    let kernel = g.path.to_str().unwrap();
    LiveVm::spawn(
        &[
            "--kernel", kernel, "-m", "64M", "--no-rng", "--sound", "hda", "--name", name,
        ],
        env,
    )
}

/// The lines that describe the controller and the codec.
fn identity(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| {
            ["hda gcap", "msi:", "codec vendor", "afg nodes", "widget"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .cloned()
        .collect()
}

#[test]
fn guest_tone_reaches_pipewire_at_its_frequency_through_the_hda_output_stream() {
    if skip_without_kvm() {
        return;
    }
    let _one = serial();
    let pw = PipeWireDaemon::start();
    require_program("pw-record", "pipewire-bin");
    let g = build_guest_with("hda", GuestKind::Pvh, &[]);
    let wav = pw.runtime_dir.path().join("recorded.wav");
    let recorder = pw
        .command("pw-record")
        .args(["--target", TEST_SINK, "-P", "{ stream.capture.sink=true }"])
        .args(["--format", "s16", "--rate", "48000", "--channels", "1"])
        .arg(&wav)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pw-record");
    let (k, v) = pw.env();
    let mut vm = hda_vm(&g, "tone", &[(k, &v), ("HOSPES_LOG", "info")]);
    assert_eq!(
        vm.wait_line("hda gcap", RUN).as_deref(),
        Some("hda gcap 4401 statests 0001"),
        "{:?}",
        vm.seen
    );
    // The first verb's answer arrives as an MSI (a KVM route and irqfd).
    assert_eq!(
        vm.wait_line("msi:", RUN).as_deref(),
        Some("msi: rirb interrupt on vector 0x25"),
        "{:?}",
        vm.seen
    );
    assert_eq!(
        vm.wait_line("codec vendor", RUN).as_deref(),
        Some("codec vendor 1af40022")
    );
    assert!(
        vm.wait_line("stream running", RUN).is_some(),
        "{:?}",
        vm.seen
    );
    let started = Instant::now();
    // While it plays, the stream is a node named after the VM.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pw.pw_cli(&["ls", "Node"]).contains("hospes.tone.playback") {
        assert!(Instant::now() < deadline, "no hospes.tone.playback node");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        vm.wait_line("played 150 periods", RUN).is_some(),
        "{:?}",
        vm.seen
    );
    let played_in = started.elapsed();
    let (status, out, err) = vm.finish(RUN);
    assert!(status.is_some_and(|s| s.success()), "{out:?} {err}");
    assert!(!out.iter().any(|l| l.contains("FAILED")), "{out:?}");
    // 150 periods of 10 ms, paced by PipeWire's clock (not as fast as the guest can go).
    assert!(
        played_in >= Duration::from_millis(1000),
        "{played_in:?} {err}"
    );
    std::thread::sleep(Duration::from_millis(300));
    interrupt(recorder);

    let samples = read_wav_samples(&wav);
    let (freq, loud) = tone_frequency(&samples, 48000, 1000)
        .unwrap_or_else(|| panic!("silence recorded ({} samples); {err}", samples.len()));
    eprintln!("hda playback: {freq:.1} Hz over {loud:?}; 150 periods in {played_in:?}");
    assert!((950.0..1050.0).contains(&freq), "{freq} Hz over {loud:?}");
    assert!(
        loud >= Duration::from_millis(1000),
        "only {loud:?} of 1.5 s of tone"
    );
    assert!(samples.iter().any(|s| s.unsigned_abs() > 4000), "too quiet");
}

#[test]
fn a_tone_played_on_the_host_reaches_the_hda_input_stream() {
    if skip_without_kvm() {
        return;
    }
    let _one = serial();
    let pw = PipeWireDaemon::start();
    require_program("pw-play", "pipewire-bin");
    require_program("pw-link", "pipewire-bin");
    let g = build_guest_with("hda", GuestKind::Pvh, &["CAPTURE", "PERIODS=50"]);
    let tone = pw.runtime_dir.path().join("tone.wav");
    write_sine_wav(&tone, 1000.0, 48000, 20.0);
    let (k, v) = pw.env();
    let mut vm = hda_vm(&g, "mic", &[(k, &v)]);
    assert!(
        vm.wait_line("stream running", RUN).is_some(),
        "{:?}",
        vm.seen
    );
    let player = pw
        .command("pw-play")
        .args(["--target", TEST_SINK])
        .arg(&tone)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pw-play");
    pw.link_capture_to_sink("hospes.mic.capture");
    let line = vm.wait_line("captured ", RUN);
    interrupt(player);
    let (status, out, err) = vm.finish(RUN);
    let Some(line) = line else {
        panic!("nothing captured: {out:?} {err} {}", pw.log());
    };
    assert!(status.is_some_and(|s| s.success()), "{out:?} {err}");
    // "captured 50 periods crossings C clean K peak P": 10 ms entries of a 1 kHz tone
    // cross zero 20 times each. On a loaded host the player may stutter, so most
    // periods, not all, must be clean.
    eprintln!("hda capture: {line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    let crossings: u32 = words[4].parse().unwrap();
    let clean: u32 = words[6].parse().unwrap();
    let peak: u32 = words[8].parse().unwrap();
    assert_eq!(words[1], "50");
    assert!(clean >= 40, "{line}");
    assert!((800..=1050).contains(&crossings), "{line}");
    assert!(peak > 4000, "{line}");
}

/// The guest's output under QEMU with `ich9-intel-hda` and `hda-duplex`, up to its
/// "played" line.
fn qemu_lines(kernel: &str) -> Vec<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-M", "q35", "-m", "64M", "-nodefaults"])
        .args(["-display", "none", "-bios", SEABIOS, "-serial", "stdio"])
        .args(["-kernel", kernel, "-audiodev", "none,id=a"])
        .args([
            "-device",
            "ich9-intel-hda",
            "-device",
            "hda-duplex,audiodev=a",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let out = child.stdout.take().expect("QEMU's stdout");
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let done = l.starts_with("played") || l.starts_with("FAILED");
            lines.push(l);
            if done {
                break;
            }
        }
        lines
    });
    let deadline = Instant::now() + RUN;
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = wait_timeout(&mut child, RUN);
    reader.join().expect("reader thread")
}

#[test]
fn controller_and_codec_answer_as_qemus_ich9_hda_with_hda_duplex() {
    if skip_without_kvm() {
        return;
    }
    let _one = serial();
    require_program("qemu-system-x86_64", "qemu-system-x86");
    assert!(
        std::path::Path::new(SEABIOS).exists(),
        "{SEABIOS} is missing: install the Debian package seabios"
    );
    let pw = PipeWireDaemon::start();
    let g = build_guest_with("hda", GuestKind::Pvh, &["PERIODS=5"]);
    let (k, v) = pw.env();
    let vm = hda_vm(&g, "diff", &[(k, &v)]);
    let (status, ours, err) = vm.finish(RUN);
    assert!(status.is_some_and(|s| s.success()), "{ours:?} {err}");
    assert!(ours.iter().any(|l| l == "played 5 periods"), "{ours:?}");
    let qemu = qemu_lines(g.path.to_str().unwrap());
    assert!(qemu.iter().any(|l| l == "played 5 periods"), "{qemu:?}");
    let ours = identity(&ours);
    assert!(ours.len() >= 7, "{ours:?}");
    assert_eq!(ours, identity(&qemu));
}

#[test]
fn seabios_finds_the_controller_on_the_q35_platform_and_the_machine_boots() {
    if skip_without_kvm() {
        return;
    }
    let _one = serial();
    require_program("qemu-system-x86_64", "qemu-system-x86");
    assert!(
        std::path::Path::new(SEABIOS).exists(),
        "{SEABIOS} is missing: install the Debian package seabios"
    );
    let pw = PipeWireDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = hospes_tests::boot_disk(dir.path(), &[]);
    let disk_arg = disk.display().to_string();
    let (k, v) = pw.env();
    let vm = LiveVm::spawn(
        &[
            "--bios", SEABIOS, "--disk", &disk_arg, "-m", "256M", "--no-rng", "--serial", "stdio",
            "--sound", "hda", "--name", "fw",
        ],
        &[(k, &v), ("HOSPES_LOG", "info")],
    );
    let (status, out, err) = vm.finish(RUN);
    assert!(status.is_some_and(|s| s.success()), "{out:?} {err}");
    assert!(out.iter().any(|l| l == "DONE"), "{out:?}");
    // SeaBIOS enumerated it and placed its 16 KiB BAR (below 4 GiB: it is small).
    let bdf = err
        .lines()
        .find_map(|l| {
            l.strip_suffix(" id=8086:293e")?
                .rsplit_once("bdf=")
                .map(|x| x.1)
        })
        .unwrap_or_else(|| panic!("SeaBIOS did not see 8086:293e: {err}"));
    assert!(
        err.lines()
            .any(|l| l.contains(&format!("bdf={bdf}  bar 0")) && l.contains("size 00004000")),
        "{err}"
    );
}

#[test]
fn vm_ron_sound_card_hda_attaches_it_and_the_sound_flag_picks_the_card() {
    if skip_without_kvm() {
        return;
    }
    let _one = serial();
    let pw = PipeWireDaemon::start();
    let g = build_guest_with("hda", GuestKind::Pvh, &["PERIODS=5"]);
    let ron = g.dir.path().join("vm.ron");
    let kernel = g.path.file_name().unwrap().to_str().unwrap();
    std::fs::write(
        &ron,
        format!(
            "(version: 1, name: \"ron\", os: Windows, cpus: 1, memory: \"64M\",\n \
             boot: Kernel(kernel: \"{kernel}\"), network: None,\n \
             sound: true, sound_card: Hda)\n"
        ),
    )
    .unwrap();
    let (k, v) = pw.env();
    let ron = ron.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--config", ron, "--no-rng"];
        args.extend_from_slice(extra);
        let (status, out, err) = LiveVm::spawn(&args, &[(k, &v)]).finish(RUN);
        assert!(status.is_some_and(|s| s.success()), "{out:?} {err}");
        out
    };
    // vm.ron's card, and `--sound on` keeps it.
    for extra in [&[][..], &["--sound", "on"]] {
        let out = run(extra);
        assert!(
            out.iter().any(|l| l == "played 5 periods"),
            "{extra:?}: {out:?}"
        );
    }
    // `--sound virtio` and `--sound off` take it away.
    for extra in [["--sound", "virtio"], ["--sound", "off"]] {
        let out = run(&extra);
        assert_eq!(
            out.last().map(String::as_str),
            Some("FAILED: no hda 8086:293e on bus 0"),
            "{extra:?}"
        );
    }
}
