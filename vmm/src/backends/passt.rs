//! passt, the user-mode network stack behind the virtio-net card: no root, no bridge, no
//! TAP.
//!
//! Data flow: [`Passt::start`] starts a supervisor thread, which makes a socketpair, starts
//! `passt --foreground --fd N` on one end (port forwards as `-t`/`-u` on loopback) and puts
//! the other end, wrapped as a [`Connection`], into the card's [`ConnectionSlot`]. passt
//! exchanges Ethernet frames on it, each behind a 4-byte big-endian length. The supervisor
//! waits for passt to exit; if it dies while the VM runs, it logs why and starts a new one
//! on a new socketpair (the card picks the new connection up from the slot), giving up
//! after [`MAX_RESTARTS`] deaths within [`RESTART_WINDOW`]. passt's own messages are logged
//! as `passt: ...` lines. Dropping [`Passt`] stops passt; passt also stops by itself when
//! its socket closes or this process dies (parent-death signal).

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::child::inherit_fd_and_die_with_thread;
use hospes_core::config::{MacAddress, Network, NetworkCard, PortForward, Protocol};
use hospes_devices::bus::lock;
use hospes_devices::virtio::VirtioDevice;
use hospes_devices::virtio::net::{Connection, ConnectionSlot, Net};

/// Deaths within [`RESTART_WINDOW`] after which the supervisor stops restarting passt.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Errors starting passt.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error("cannot create the socket pair for passt")]
    SocketPair(#[source] std::io::Error),
    #[error("cannot run {binary} (is the passt package installed? `make deps` installs it)")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("passt exited at start ({0}); see its messages above")]
    EarlyExit(String),
    #[error("cannot start the passt supervisor thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot create the connection slot")]
    Slot(#[source] std::io::Error),
}

/// How to run passt.
#[derive(Debug, Clone)]
pub struct PasstConfig {
    /// The program, `passt` from PATH by default.
    pub binary: PathBuf,
    /// Host ports (on loopback) forwarded to guest ports.
    pub forwards: Vec<PortForward>,
}

impl Default for PasstConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("passt"),
            forwards: Vec::new(),
        }
    }
}

impl PasstConfig {
    /// passt's arguments besides `--fd`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--foreground".to_owned(), "--quiet".to_owned()];
        for f in &self.forwards {
            let flag = match f.protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
            };
            args.push(flag.to_owned());
            args.push(format!("127.0.0.1/{}:{}", f.host, f.guest));
        }
        args
    }
}

/// What the supervisor reports.
#[derive(Debug, Default)]
pub struct PasstStatus {
    /// passt's process id while one runs.
    pub pid: Mutex<Option<u32>>,
    /// Times passt was started again after dying.
    pub restarts: AtomicU32,
    /// The supervisor gave up: the network is down for the rest of the run.
    pub failed: AtomicBool,
}

/// A supervised passt; dropping it stops passt.
pub struct Passt {
    slot: Arc<ConnectionSlot>,
    status: Arc<PasstStatus>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Passt {
    /// Starts passt and waits until it runs (or failed to start).
    pub fn start(config: PasstConfig) -> Result<Self, PasstError> {
        let slot = Arc::new(ConnectionSlot::new().map_err(PasstError::Slot)?);
        let status = Arc::new(PasstStatus::default());
        let (stop_tx, stop_rx) = channel();
        let (started_tx, started_rx) = channel();
        let sup = Supervisor {
            config,
            slot: slot.clone(),
            status: status.clone(),
            stop: stop_rx,
        };
        let thread = std::thread::Builder::new()
            .name("passt".into())
            .spawn(move || sup.run(&started_tx))
            .map_err(PasstError::Thread)?;
        let mut me = Self {
            slot,
            status,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match started_rx.recv() {
            Ok(Ok(())) => Ok(me),
            Ok(Err(e)) => {
                me.shutdown();
                Err(e)
            }
            Err(_) => {
                me.shutdown();
                Err(PasstError::EarlyExit("supervisor ended".into()))
            }
        }
    }

    /// Where the network card finds passt's socket.
    pub fn slot(&self) -> Arc<ConnectionSlot> {
        self.slot.clone()
    }

    /// The supervisor's view of passt.
    pub fn status(&self) -> Arc<PasstStatus> {
        self.status.clone()
    }

    fn shutdown(&mut self) {
        // Closing the channel wakes the supervisor; it kills passt and reaps it.
        self.stop.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("passt supervisor panicked");
        }
        self.slot.clear();
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Supervisor {
    config: PasstConfig,
    slot: Arc<ConnectionSlot>,
    status: Arc<PasstStatus>,
    stop: Receiver<()>,
}

impl Supervisor {
    fn run(self, started: &Sender<Result<(), PasstError>>) {
        let mut deaths: Vec<Instant> = Vec::new();
        let mut generation = 0u64;
        let mut first = true;
        loop {
            generation += 1;
            let child = match self.spawn(generation) {
                Ok(c) => c,
                Err(e) if first => {
                    let _ = started.send(Err(e));
                    return;
                }
                Err(e) => {
                    log::error!("net: {e}; the network stays down");
                    self.status.failed.store(true, Ordering::Relaxed);
                    return;
                }
            };
            let outcome = self.watch(child, first.then_some(started));
            first = false;
            match outcome {
                Watch::Stopped => return,
                Watch::Died(why) => {
                    let now = Instant::now();
                    deaths.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
                    deaths.push(now);
                    if deaths.len() > MAX_RESTARTS {
                        log::error!(
                            "net: passt died {} times within {:?} (last: {why}); the network \
                             stays down",
                            deaths.len(),
                            RESTART_WINDOW
                        );
                        self.status.failed.store(true, Ordering::Relaxed);
                        return;
                    }
                    log::warn!("net: passt exited ({why}); starting it again");
                    self.status.restarts.fetch_add(1, Ordering::Relaxed);
                    let backoff = Duration::from_millis(100 << deaths.len().min(5));
                    if !matches!(
                        self.stop.recv_timeout(backoff),
                        Err(RecvTimeoutError::Timeout)
                    ) {
                        return;
                    }
                }
            }
        }
    }

    /// Starts one passt on a fresh socketpair and offers our end to the card.
    fn spawn(&self, generation: u64) -> Result<Child, PasstError> {
        let (ours, theirs) = UnixStream::pair().map_err(PasstError::SocketPair)?;
        let theirs = OwnedFd::from(theirs);
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&self.config.binary);
        cmd.args(self.config.args())
            .arg("--fd")
            .arg(fd.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // passt inherits its end of the socket pair and ends with this thread (the
        // supervisor, alive as long as the VM).
        inherit_fd_and_die_with_thread(&mut cmd, fd);
        let mut child = cmd.spawn().map_err(|source| PasstError::Spawn {
            binary: self.config.binary.display().to_string(),
            source,
        })?;
        drop(theirs);
        if let Some(err) = child.stderr.take() {
            forward_messages(err);
        }
        *lock(&self.status.pid) = Some(child.id());
        match Connection::new(ours, generation) {
            Ok(conn) => self.slot.put(conn),
            Err(e) => log::error!("net: cannot use passt's socket: {e}"),
        }
        log::info!("net: passt running as pid {}", child.id());
        Ok(child)
    }

    /// Waits until passt exits or the supervisor is told to stop. `started` hears whether
    /// passt survived its first moments.
    fn watch(&self, mut child: Child, started: Option<&Sender<Result<(), PasstError>>>) -> Watch {
        let mut announced = started.is_none();
        let born = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    *lock(&self.status.pid) = None;
                    let why = status.to_string();
                    if let (false, Some(tx)) = (announced, started) {
                        let _ = tx.send(Err(PasstError::EarlyExit(why.clone())));
                        return Watch::Stopped;
                    }
                    return Watch::Died(why);
                }
                Ok(None) => {}
                Err(e) => {
                    log::error!("net: cannot wait for passt: {e}");
                    return Watch::Died(e.to_string());
                }
            }
            if !announced && born.elapsed() >= Duration::from_millis(100) {
                announced = true;
                if let Some(tx) = started {
                    let _ = tx.send(Ok(()));
                }
            }
            match self.stop.recv_timeout(Duration::from_millis(20)) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => {
                    // Told to stop (or the owner is gone): end passt and reap it.
                    let pid = lock(&self.status.pid).take();
                    if pid.is_some() {
                        let _ = child.kill();
                    }
                    let _ = child.wait();
                    return Watch::Stopped;
                }
            }
        }
    }
}

/// A VM's network: passt, supervised for the whole run, and the card's address. Each boot
/// gets a fresh card ([`device`](Self::device)) on the same passt.
pub struct UserNetwork {
    passt: Passt,
    mac: MacAddress,
    card: NetworkCard,
}

impl UserNetwork {
    /// Starts passt for `network`, or nothing for [`Network::None`].
    pub fn start(network: &Network) -> Result<Option<Self>, PasstError> {
        match network {
            Network::None => Ok(None),
            Network::User {
                mac,
                forwards,
                card,
            } => {
                let passt = Passt::start(PasstConfig {
                    forwards: forwards.clone(),
                    ..PasstConfig::default()
                })?;
                Ok(Some(Self {
                    passt,
                    mac: *mac,
                    card: *card,
                }))
            }
        }
    }

    /// The emulated card vm.ron (or `--net ...,model=`) asks for.
    pub fn card(&self) -> NetworkCard {
        self.card
    }

    /// The card's MAC address.
    pub fn mac(&self) -> MacAddress {
        self.mac
    }

    /// Where a card finds passt's connection (each boot's card takes it in turn).
    pub fn slot(&self) -> Arc<ConnectionSlot> {
        self.passt.slot()
    }

    /// A virtio network card for one boot.
    pub fn device(&self) -> Box<dyn VirtioDevice> {
        Box::new(Net::new(self.mac, self.passt.slot()))
    }

    /// The supervisor's view of passt.
    pub fn status(&self) -> Arc<PasstStatus> {
        self.passt.status()
    }
}

/// Parses `--net`: `none`, or `user` followed by QEMU-style options
/// `,hostfwd=tcp:HOSTPORT-:GUESTPORT` / `,hostfwd=udp::HOSTPORT-:GUESTPORT` (repeatable)
/// , `,mac=52:54:00:12:34:56` and `,model=virtio|e1000e` (the card).
pub fn parse_net_option(s: &str) -> Result<Network, String> {
    let mut parts = s.split(',');
    match parts.next() {
        Some("none") if parts.clone().next().is_none() => return Ok(Network::None),
        Some("user") => {}
        _ => {
            return Err(format!(
                "'{s}' is not `none` or `user[,hostfwd=...][,mac=...][,model=...]`"
            ));
        }
    }
    let mut mac = MacAddress::HOSPES_DEFAULT;
    let mut forwards = Vec::new();
    let mut card = NetworkCard::Virtio;
    for opt in parts {
        match opt.split_once('=') {
            Some(("hostfwd", spec)) => forwards.push(parse_hostfwd(spec)?),
            Some(("mac", m)) => mac = m.parse()?,
            Some(("model", "virtio" | "virtio-net-pci")) => card = NetworkCard::Virtio,
            Some(("model", "e1000e")) => card = NetworkCard::E1000e,
            Some(("model", other)) => {
                return Err(format!(
                    "unknown network card `{other}` (model=virtio or model=e1000e)"
                ));
            }
            _ => return Err(format!("unknown network option `{opt}`")),
        }
    }
    Ok(Network::User {
        mac,
        forwards,
        card,
    })
}

/// `tcp:[127.0.0.1]:HOSTPORT-[ADDR]:GUESTPORT`, QEMU's spelling; the colon after the
/// protocol may stand alone (`tcp:8080-:80`).
fn parse_hostfwd(spec: &str) -> Result<PortForward, String> {
    let bad = || format!("bad hostfwd `{spec}` (write it like tcp:8080-:80 or udp::5353-:53)");
    let (proto, rest) = spec.split_once(':').ok_or_else(bad)?;
    let protocol = match proto {
        "tcp" | "" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(bad()),
    };
    let (host, guest) = rest.split_once('-').ok_or_else(bad)?;
    let (host_addr, host_port) = host.rsplit_once(':').unwrap_or(("", host));
    if !matches!(host_addr, "" | "127.0.0.1" | "localhost") {
        return Err(format!(
            "hostfwd `{spec}`: forwards listen on loopback only (127.0.0.1)"
        ));
    }
    let guest_port = guest.rsplit_once(':').map_or(guest, |(_, p)| p);
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
    Ok(PortForward {
        protocol,
        host: port(host_port)?,
        guest: port(guest_port)?,
    })
}

enum Watch {
    Stopped,
    Died(String),
}

/// Logs passt's messages, minus its complaints about a missing syslog.
fn forward_messages(stderr: std::process::ChildStderr) {
    let spawned = std::thread::Builder::new()
        .name("passt-log".into())
        .spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("Failed to send") && line.ends_with("to syslog") {
                    continue;
                }
                log::warn!("passt: {line}");
            }
        });
    if let Err(e) = spawned {
        log::warn!("net: passt's messages are not logged: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_become_loopback_port_specs() {
        let cfg = PasstConfig {
            binary: "passt".into(),
            forwards: vec![
                PortForward {
                    protocol: Protocol::Tcp,
                    host: 2222,
                    guest: 22,
                },
                PortForward {
                    protocol: Protocol::Udp,
                    host: 5353,
                    guest: 53,
                },
            ],
        };
        assert_eq!(
            cfg.args(),
            [
                "--foreground",
                "--quiet",
                "-t",
                "127.0.0.1/2222:22",
                "-u",
                "127.0.0.1/5353:53"
            ]
        );
    }

    #[test]
    fn parses_qemu_style_net_options() {
        assert_eq!(parse_net_option("none"), Ok(Network::None));
        assert_eq!(
            parse_net_option("user"),
            Ok(Network::User {
                mac: MacAddress::HOSPES_DEFAULT,
                forwards: vec![],
                card: NetworkCard::Virtio,
            })
        );
        let n = parse_net_option(
            "user,hostfwd=tcp:8080-:80,hostfwd=udp::5353-:53,hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22,mac=52:54:00:aa:bb:cc",
        )
        .unwrap();
        assert!(matches!(
            parse_net_option("user,model=e1000e"),
            Ok(Network::User {
                card: NetworkCard::E1000e,
                ..
            })
        ));
        assert!(parse_net_option("user,model=rtl8139").is_err());
        let Network::User { mac, forwards, .. } = n else {
            panic!("not user networking");
        };
        assert_eq!(mac.to_string(), "52:54:00:aa:bb:cc");
        let f = |protocol, host, guest| PortForward {
            protocol,
            host,
            guest,
        };
        assert_eq!(
            forwards,
            [
                f(Protocol::Tcp, 8080, 80),
                f(Protocol::Udp, 5353, 53),
                f(Protocol::Tcp, 2222, 22)
            ]
        );
        assert!(parse_net_option("tap").is_err());
        assert!(parse_net_option("none,hostfwd=tcp:1-:2").is_err());
        assert!(parse_net_option("user,hostfwd=sctp:1-:2").is_err());
        assert!(parse_net_option("user,hostfwd=tcp:0.0.0.0:80-:80").is_err());
        assert!(parse_net_option("user,hostfwd=tcp:99999-:80").is_err());
        assert!(parse_net_option("user,hostfwd=tcp:80").is_err());
        assert!(parse_net_option("user,mac=01:00:00:00:00:00").is_err());
        assert!(parse_net_option("user,vlan=1").is_err());
    }

    #[test]
    fn a_missing_binary_is_an_error_naming_the_package() {
        let err = Passt::start(PasstConfig {
            binary: "/nonexistent/passt".into(),
            forwards: Vec::new(),
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("passt package"), "{err}");
    }
}
