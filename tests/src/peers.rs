//! Running the helper next to real peer daemons (passt, PipeWire): a VM whose serial
//! output is read line by line while the test talks to it, checks that a peer is
//! installed, a private headless PipeWire daemon, and WAV files to play and analyse.
//!
//! Data flow: [`LiveVm::spawn`] starts `hospes-vmm` with stdout and stderr piped; a thread
//! per stream forwards lines into channels, so [`LiveVm::wait_line`] can wait for a guest's
//! "ready" while the VM keeps running, and [`LiveVm::finish`] collects the rest.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::{vmm_binary, wait_timeout};

/// The host's IPv4 addresses and default gateway, as `ip` reports them; passt hands the
/// guest the same ones.
pub fn host_ipv4() -> (Vec<String>, Option<String>) {
    let run = |args: &[&str]| {
        let o = Command::new("ip").args(args).output().expect("run ip(8)");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let addrs = run(&["-4", "-o", "addr", "show"])
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "inet");
            w.nth(1)
                .and_then(|a| a.split('/').next())
                .map(str::to_owned)
        })
        .collect();
    let gw = run(&["-4", "route", "show", "default"])
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .map(str::to_owned);
    (addrs, gw)
}

/// Panics with the install step unless `program` runs (`program --version`, or `--help`).
pub fn require_program(program: &str, package: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`{program}` is missing: this test needs the Debian package `{package}`; \
         `make test` installs it (scripts/install-deps.sh, or `make deps`)"
    );
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    s.local_addr().expect("local address").port()
}

/// A running helper whose output is read as it comes.
pub struct LiveVm {
    pub child: Child,
    lines: Receiver<String>,
    /// Every stdout line seen so far.
    pub seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl LiveVm {
    /// Starts `hospes-vmm args...` with `env` added to its environment.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(vmm_binary())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hospes-vmm");
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Waits for a stdout line starting with `prefix`; `None` after `timeout` or when the
    /// helper's output ends.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return Some(line);
            }
        }
    }

    /// Waits for the helper to exit (killing it after `timeout`); returns its status (None
    /// when killed), all stdout lines and stderr.
    pub fn finish(mut self, timeout: Duration) -> (Option<ExitStatus>, Vec<String>, String) {
        let status = wait_timeout(&mut self.child, timeout);
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        let err = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        (status, std::mem::take(&mut self.seen), err)
    }

    /// The pids of the helper's child processes (passt).
    pub fn children(&self) -> Vec<u32> {
        let task_dir = format!("/proc/{}/task", self.child.id());
        let mut pids = Vec::new();
        for task in std::fs::read_dir(task_dir).into_iter().flatten().flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids
    }
}

impl Drop for LiveVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The name a process runs as (`/proc/PID/comm`).
pub fn process_name(pid: u32) -> String {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Ends a client (`pw-record`, `pw-play`) the way Ctrl-C would, so it finishes its file.
pub fn interrupt(mut child: Child) {
    // SAFETY: kill(2) on a child the caller started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
        let _ = child.kill();
    }
}

/// A headless PipeWire daemon with WirePlumber, on a D-Bus session bus of its own, in a
/// temporary `XDG_RUNTIME_DIR`, with one null sink (`hospes-test-sink`) as the default
/// output. Everything it started ends when it is dropped.
pub struct PipeWireDaemon {
    pub runtime_dir: tempfile::TempDir,
    child: Child,
}

/// The null sink every PipeWire test plays into and records from.
pub const TEST_SINK: &str = "hospes-test-sink";

impl PipeWireDaemon {
    /// Starts the daemon and waits until the sink is there and WirePlumber is connected.
    pub fn start() -> Self {
        for (program, package) in [
            ("pipewire", "pipewire-bin"),
            ("pw-cli", "pipewire-bin"),
            ("wireplumber", "wireplumber"),
            ("dbus-run-session", "dbus-bin"),
        ] {
            require_program(program, package);
        }
        let runtime_dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(runtime_dir.path().join("daemon.log")).expect("log file");
        let child = Command::new("dbus-run-session")
            .args(["--", "sh", "-c", "pipewire & sleep 0.3; wireplumber & wait"])
            .env("XDG_RUNTIME_DIR", runtime_dir.path())
            .env_remove("PIPEWIRE_REMOTE")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dbus-run-session");
        let d = Self { runtime_dir, child };
        d.wait_for(&["ls", "Client"], "WirePlumber");
        let sink = format!(
            "{{ factory.name=support.null-audio-sink node.name={TEST_SINK} \
             media.class=Audio/Sink audio.position=[FL FR] object.linger=true }}"
        );
        let ok = d
            .command("pw-cli")
            .args(["create-node", "adapter", &sink])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pw-cli create-node failed: {}", d.log());
        d.wait_for(&["ls", "Node"], TEST_SINK);
        d
    }

    /// `program` with this daemon's environment.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", self.runtime_dir.path())
            .env_remove("PIPEWIRE_REMOTE");
        c
    }

    /// The environment a client of this daemon needs.
    pub fn env(&self) -> (&'static str, String) {
        (
            "XDG_RUNTIME_DIR",
            self.runtime_dir.path().display().to_string(),
        )
    }

    /// What `pw-cli args...` prints now.
    pub fn pw_cli(&self, args: &[&str]) -> String {
        self.command("pw-cli")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits up to 10 s until `pw-cli args...` mentions `what`.
    fn wait_for(&self, args: &[&str], what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pw_cli(args).contains(what) {
            assert!(
                Instant::now() < deadline,
                "PipeWire: no {what} after 10 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Makes sure capture node `node` records the test sink: WirePlumber links a capture
    /// stream with no source to the default sink's monitor within a few seconds; should
    /// a policy not, this links it by hand.
    pub fn link_capture_to_sink(&self, node: &str) {
        let input = format!("{node}:input");
        let linked = || {
            let out = self.command("pw-link").arg("-l").output().expect("pw-link");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut lines = text.lines().peekable();
            while let Some(l) = lines.next() {
                if l.starts_with(&input)
                    && lines
                        .peek()
                        .is_some_and(|n| n.trim_start().starts_with("|<-"))
                {
                    return true;
                }
            }
            false
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        while !linked() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if linked() {
            return;
        }
        let out = self.command("pw-link").arg("-i").output().expect("pw-link");
        for port in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&input))
        {
            let _ = self
                .command("pw-link")
                .args([&format!("{TEST_SINK}:monitor_FL"), port])
                .status();
        }
    }

    /// The daemons' messages so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.runtime_dir.path().join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for PipeWireDaemon {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: kill(2) on the process group this daemon's child leads.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let _ = wait_timeout(&mut self.child, Duration::from_secs(5));
        // dbus-run-session ends at once, but the shell, PipeWire or WirePlumber may linger
        // (seen: WirePlumber outliving its bus): nothing of the group may outlive the test.
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
    }
}

/// Writes a mono 16-bit WAV file of `seconds` of a `freq` Hz sine at `rate` Hz.
pub fn write_sine_wav(path: &Path, freq: f64, rate: u32, seconds: f64) {
    let n = (f64::from(rate) * seconds) as usize;
    let mut data = Vec::with_capacity(44 + 2 * n);
    let bytes = (2 * n) as u32;
    data.extend_from_slice(b"RIFF");
    data.extend_from_slice(&(36 + bytes).to_le_bytes());
    data.extend_from_slice(b"WAVEfmt ");
    data.extend_from_slice(&16u32.to_le_bytes());
    data.extend_from_slice(&1u16.to_le_bytes());
    data.extend_from_slice(&1u16.to_le_bytes());
    data.extend_from_slice(&rate.to_le_bytes());
    data.extend_from_slice(&(2 * rate).to_le_bytes());
    data.extend_from_slice(&2u16.to_le_bytes());
    data.extend_from_slice(&16u16.to_le_bytes());
    data.extend_from_slice(b"data");
    data.extend_from_slice(&bytes.to_le_bytes());
    for i in 0..n {
        let t = i as f64 / f64::from(rate);
        let v = (12000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16;
        data.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, data).expect("write WAV");
}

/// The 16-bit mono samples of a WAV file (everything after the `data` chunk header; a
/// recorder killed before it fixed up the header still gives its samples).
pub fn read_wav_samples(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes
        .windows(4)
        .position(|w| w == b"data")
        .map_or(bytes.len(), |p| p + 8);
    bytes
        .get(start..)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// The frequency of the tone in `samples` (at `rate` Hz) and how long it sounds: zero
/// crossings with hysteresis (a swing past `+floor` and `-floor`) counted over the 1 ms
/// blocks louder than `floor`, so gaps (underruns) neither add time nor crossings.
pub fn tone_frequency(samples: &[i16], rate: u32, floor: i16) -> Option<(f64, Duration)> {
    let block = (rate / 1000).max(1) as usize;
    let (mut crossings, mut loud_blocks) = (0u32, 0u32);
    let mut above: Option<bool> = None;
    for b in samples.chunks(block) {
        if !b.iter().any(|s| s.unsigned_abs() > floor.unsigned_abs()) {
            above = None;
            continue;
        }
        loud_blocks += 1;
        for &s in b {
            let now = if s > floor {
                Some(true)
            } else if s < -floor {
                Some(false)
            } else {
                continue;
            };
            if above.is_some() && above != now {
                crossings += 1;
            }
            above = now;
        }
    }
    let secs = f64::from(loud_blocks) * block as f64 / f64::from(rate);
    (secs > 0.0).then(|| {
        (
            f64::from(crossings) / 2.0 / secs,
            Duration::from_secs_f64(secs),
        )
    })
}
