//! virtio-snd through a real, private PipeWire daemon: the tiny guest
//! (`tests/guests/snd.S`) plays a 1 kHz square wave that `pw-record` picks up from the
//! sink, and records a 1 kHz sine that `pw-play` plays into the sink; without a daemon the
//! VM runs without a sound card.

use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hospes_tests::peers::{
    LiveVm, PipeWireDaemon, TEST_SINK, interrupt, read_wav_samples, require_program,
    tone_frequency, write_sine_wav,
};
use hospes_tests::{Guest, GuestKind, build_guest, build_guest_with, skip_without_kvm};

const RUN: Duration = Duration::from_secs(60);

/// One sound test at a time: each runs its own daemon and a real-time guest, and on a
/// small machine two at once make each other underrun.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The snd guest with a sound card, as VM `name`.
fn snd_vm(g: &Guest, name: &str, env: &[(&str, &str)]) -> LiveVm {
    let kernel = g.path.to_str().unwrap();
    LiveVm::spawn(
        &[
            "--kernel", kernel, "-m", "64M", "--no-rng", "--sound", "on", "--name", name,
        ],
        env,
    )
}

#[test]
fn guest_tone_reaches_pipewire_at_its_frequency_through_a_node_named_after_the_vm() {
    if skip_without_kvm() {
        return;
    }
    let _one = serial();
    let pw = PipeWireDaemon::start();
    require_program("pw-record", "pipewire-bin");
    let g = build_guest("snd", GuestKind::Pvh);
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
    let mut vm = snd_vm(&g, "tone", &[(k, &v), ("HOSPES_LOG", "info")]);
    assert_eq!(
        vm.wait_line("snd", RUN).as_deref(),
        Some("snd jacks 2 streams 2 chmaps 2")
    );
    assert_eq!(
        vm.wait_line("snd pcm0", RUN).as_deref(),
        Some("snd pcm0 dir 0 ch 1-2")
    );
    // While it plays, the stream is a node named after the VM.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pw.pw_cli(&["ls", "Node"]).contains("hospes.tone.playback") {
        assert!(Instant::now() < deadline, "no hospes.tone.playback node");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    assert!(vm.wait_line("played 150 periods", RUN).is_some());
    let (status, out, err) = vm.finish(RUN);
    assert!(status.is_some_and(|s| s.success()), "{out:?} {err}");
    assert!(!out.iter().any(|l| l.contains("failed")), "{out:?}");
    // 150 periods of 10 ms, paced by PipeWire's clock (not as fast as the guest can go).
    assert!(started.elapsed() >= Duration::from_millis(1000), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    interrupt(recorder);

    let samples = read_wav_samples(&wav);
    let (freq, loud) = tone_frequency(&samples, 48000, 1000)
        .unwrap_or_else(|| panic!("silence recorded ({} samples); {err}", samples.len()));
    assert!((950.0..1050.0).contains(&freq), "{freq} Hz over {loud:?}");
    assert!(
        loud >= Duration::from_millis(1000),
        "only {loud:?} of 1.5 s of tone"
    );
    assert!(samples.iter().any(|s| s.unsigned_abs() > 4000), "too quiet");
}

#[test]
fn a_tone_played_on_the_host_reaches_the_guest_capture_stream() {
    if skip_without_kvm() {
        return;
    }
    let _one = serial();
    let pw = PipeWireDaemon::start();
    require_program("pw-play", "pipewire-bin");
    require_program("pw-link", "pipewire-bin");
    let g = build_guest_with("snd", GuestKind::Pvh, &["CAPTURE", "PERIODS=50"]);
    let tone = pw.runtime_dir.path().join("tone.wav");
    write_sine_wav(&tone, 1000.0, 48000, 20.0);
    let (k, v) = pw.env();
    let mut vm = snd_vm(&g, "mic", &[(k, &v)]);
    assert!(vm.wait_line("snd pcm0", RUN).is_some(), "{:?}", vm.seen);
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
    // "captured 50 periods crossings C clean K peak P": 10 ms periods of a 1 kHz tone
    // cross zero 20 times each. On a loaded host the player may stutter, so most
    // periods, not all, must be clean.
    let words: Vec<&str> = line.split_whitespace().collect();
    let crossings: u32 = words[4].parse().unwrap();
    let clean: u32 = words[6].parse().unwrap();
    let peak: u32 = words[8].parse().unwrap();
    assert_eq!(words[1], "50");
    assert!(clean >= 40, "{line}");
    assert!((800..=1050).contains(&crossings), "{line}");
    assert!(peak > 4000, "{line}");
}

#[test]
fn without_a_pipewire_daemon_the_vm_runs_without_a_sound_card() {
    if skip_without_kvm() {
        return;
    }
    let _one = serial();
    let empty = tempfile::tempdir().unwrap();
    let g = build_guest("snd", GuestKind::Pvh);
    let mut vm = LiveVm::spawn(
        &[
            "--kernel",
            g.path.to_str().unwrap(),
            "-m",
            "64M",
            "--sound",
            "on",
        ],
        &[("XDG_RUNTIME_DIR", empty.path().to_str().unwrap())],
    );
    assert!(vm.wait_line("no virtio-snd card", RUN).is_some());
    let (status, _, err) = vm.finish(RUN);
    assert!(status.is_some_and(|s| s.success()), "{err}");
    assert!(err.contains("sound unavailable"), "{err}");
}

/// The snd guest saved with `hospes-save` while it plays its tone, and resumed from
/// `--state FILE`: the playback stream opens again on PipeWire and the rest of the tone
/// is heard at its frequency, the guest going on to the end instead of starting over.
#[test]
fn a_guest_saved_mid_tone_is_heard_again_after_the_resume() {
    if skip_without_kvm() {
        return;
    }
    let _one = serial();
    let pw = PipeWireDaemon::start();
    require_program("pw-record", "pipewire-bin");
    // 3 s of tone: saved after about 0.7 s of it.
    let g = build_guest_with("snd", GuestKind::Pvh, &["PERIODS=300"]);
    let state = g.dir.path().join("vm.hospes");
    let kernel = g.path.display().to_string();
    let qmp = |tag: &str| g.dir.path().join(format!("qmp-{tag}.sock"));
    let args = |tag: &str| -> Vec<String> {
        [
            "--kernel", &kernel, "-m", "64M", "--no-rng", "--sound", "on", "--name", "resumed",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--qmp".to_string(),
            format!("unix:{}", qmp(tag).display()),
            "--state".to_string(),
            state.display().to_string(),
        ])
        .collect()
    };
    let (k, v) = pw.env();
    let env = [(k, v.as_str()), ("HOSPES_LOG", "info")];
    let first_args = args("first");
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut first = LiveVm::spawn(&first_args, &env);
    assert!(
        first.wait_line("snd pcm0", RUN).is_some(),
        "{:?}",
        first.seen
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pw
        .pw_cli(&["ls", "Node"])
        .contains("hospes.resumed.playback")
    {
        assert!(Instant::now() < deadline, "no hospes.resumed.playback node");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
    hospes_tests::save::save_and_wait(&qmp("first"), &mut first.child);
    let (_, out, err) = first.finish(RUN);
    assert!(
        !out.iter().any(|l| l.starts_with("played ")),
        "the tone ended before the save: {out:?} {err}"
    );

    let wav = pw.runtime_dir.path().join("resumed.wav");
    let recorder = pw
        .command("pw-record")
        .args(["--target", TEST_SINK, "-P", "{ stream.capture.sink=true }"])
        .args(["--format", "s16", "--rate", "48000", "--channels", "1"])
        .arg(&wav)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pw-record");
    std::thread::sleep(Duration::from_millis(300));
    let second_args = args("second");
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let mut second = LiveVm::spawn(&second_args, &env);
    let started = Instant::now();
    let played = second.wait_line("played ", RUN);
    let elapsed = started.elapsed();
    let (status, out, err) = second.finish(RUN);
    assert_eq!(
        played.as_deref(),
        Some("played 300 periods"),
        "{out:?} {err}"
    );
    assert!(status.is_some_and(|s| s.success()), "{out:?} {err}");
    assert!(
        !out.iter()
            .any(|l| l.starts_with("snd jacks") || l.contains("failed")),
        "the resumed guest started over or failed: {out:?}"
    );
    assert!(!state.exists(), "the state file outlived the resume");
    // The rest of the tone is paced by PipeWire's clock on the resumed stream.
    assert!(elapsed >= Duration::from_millis(800), "{elapsed:?}: {err}");
    std::thread::sleep(Duration::from_millis(300));
    interrupt(recorder);

    let samples = read_wav_samples(&wav);
    let (freq, loud) = tone_frequency(&samples, 48000, 1000).unwrap_or_else(|| {
        panic!(
            "silence recorded after the resume ({} samples); {err}",
            samples.len()
        )
    });
    assert!((950.0..1050.0).contains(&freq), "{freq} Hz over {loud:?}");
    assert!(
        loud >= Duration::from_millis(800),
        "only {loud:?} of tone after the resume"
    );
}
