//! Running the helper next to real peer daemons (passt, PipeWire): a VM whose serial
//! output is read line by line while the test talks to it, and checks that a peer is
//! installed.
//!
//! Data flow: [`LiveVm::spawn`] starts `hospes-vmm` with stdout and stderr piped; a thread
//! per stream forwards lines into channels, so [`LiveVm::wait_line`] can wait for a guest's
//! "ready" while the VM keeps running, and [`LiveVm::finish`] collects the rest.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::{vmm_binary, wait_timeout};

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
