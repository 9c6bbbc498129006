//! The RFB (VNC) server: the guest's screen, keyboard and pointer for any VNC client and
//! for the Hospes app.
//!
//! Data flow: [`VncServer::start`] binds a unix socket (security None, mode 0600) or a TCP
//! address (VNC authentication, password from a file) and runs an accept thread. Each
//! client gets two threads (`session.rs`): a reader that parses client messages
//! ([`proto`]) and hands key and pointer events to the [`InputSink`] at once, and a sender
//! that waits for an update request and for damage on the shared [`Display`], then encodes
//! ([`encode`]) and writes. A client's state is one pending request and its settings, never
//! a queue of frames, so a slow client costs memory for nothing but its own socket buffer;
//! a write that stalls past its write timeout ([`WRITE_TIMEOUT`]) or a malformed message drops that client
//! alone. Nothing here touches KVM or blocks a vCPU.

pub mod auth;
pub mod encode;
pub mod proto;
mod session;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hospes_devices::bus::lock;
use hospes_devices::framebuffer::Display;
use hospes_devices::input::InputSink;

/// A client whose socket takes no bytes for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most clients at once.
pub const MAX_CLIENTS: usize = 16;

/// Errors of the VNC server.
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    #[error("cannot listen on {0}")]
    Listen(String, #[source] std::io::Error),
    #[error("cannot bind the VNC socket")]
    Bind(#[source] hospes_core::control::ServerError),
    #[error("cannot read the VNC password file {path}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VNC password file {0} is empty")]
    EmptyPassword(PathBuf),
    #[error("'{0}' is not unix:PATH or HOST:PORT")]
    BadAddress(String),
    #[error("VNC over TCP needs a password (--vnc-password-file)")]
    NoPassword,
    #[error("cannot start a VNC thread")]
    Thread(#[source] std::io::Error),
    #[error("client I/O failed")]
    Io(#[from] std::io::Error),
    #[error("client protocol error")]
    Proto(#[from] proto::ProtoError),
    #[error("client failed authentication")]
    AuthFailed,
}

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VncListen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl VncListen {
    /// `unix:PATH`, `HOST:PORT`, or `:PORT` (loopback).
    pub fn parse(s: &str) -> Result<Self, VncError> {
        if let Some(p) = s.strip_prefix("unix:") {
            let p = p.split(',').next().unwrap_or(p);
            if p.is_empty() {
                return Err(VncError::BadAddress(s.into()));
            }
            return Ok(Self::Unix(p.into()));
        }
        let full = if s.starts_with(':') {
            format!("127.0.0.1{s}")
        } else {
            s.to_string()
        };
        std::net::ToSocketAddrs::to_socket_addrs(&full)
            .ok()
            .and_then(|mut a| a.next())
            .map(Self::Tcp)
            .ok_or_else(|| VncError::BadAddress(s.into()))
    }
}

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct VncConfig {
    pub listen: VncListen,
    /// The VNC password (first 8 bytes count); required for TCP.
    pub password: Option<Vec<u8>>,
    /// The desktop name clients show.
    pub name: String,
    /// A client whose socket takes no bytes for this long is dropped ([`WRITE_TIMEOUT`]).
    pub write_timeout: Duration,
}

/// Reads a VNC password: the file's first line.
pub fn read_password_file(path: &Path) -> Result<Vec<u8>, VncError> {
    let text = std::fs::read(path).map_err(|source| VncError::PasswordFile {
        path: path.to_owned(),
        source,
    })?;
    let line: Vec<u8> = text.split(|&b| b == b'\n').next().unwrap_or(&[]).to_vec();
    let line = line.strip_suffix(b"\r").map(<[u8]>::to_vec).unwrap_or(line);
    if line.is_empty() {
        return Err(VncError::EmptyPassword(path.to_owned()));
    }
    Ok(line)
}

/// One connected client, as `query-vnc` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    pub id: u64,
    /// "unix" or the peer's address.
    pub peer: String,
}

/// What `query-vnc` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VncInfo {
    /// The socket path or `host:port`.
    pub service: String,
    pub family: &'static str,
    pub auth: &'static str,
    pub clients: Vec<ClientInfo>,
}

pub(crate) struct Shared {
    display: Arc<Display>,
    input: Arc<dyn InputSink>,
    password: Option<Vec<u8>>,
    name: String,
    write_timeout: Duration,
    clients: Mutex<Vec<ClientInfo>>,
    next_id: AtomicU64,
}

/// The running server. Dropping it stops accepting; connected clients go on until they
/// leave or the process ends.
pub struct VncServer {
    shared: Arc<Shared>,
    listen: VncListen,
}

impl VncServer {
    /// Binds and starts the accept thread.
    pub fn start(
        cfg: VncConfig,
        display: Arc<Display>,
        input: Arc<dyn InputSink>,
    ) -> Result<Self, VncError> {
        let shared = Arc::new(Shared {
            display,
            input,
            password: cfg.password.clone(),
            name: cfg.name.clone(),
            write_timeout: cfg.write_timeout,
            clients: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let listen = match &cfg.listen {
            VncListen::Unix(path) => {
                let l = hospes_core::control::server::bind(path).map_err(VncError::Bind)?;
                spawn_accept(shared.clone(), move || {
                    l.accept()
                        .map(|(s, _)| (session::Stream::Unix(s), "unix".to_string()))
                })?;
                cfg.listen.clone()
            }
            VncListen::Tcp(addr) => {
                if cfg.password.is_none() {
                    return Err(VncError::NoPassword);
                }
                let l =
                    TcpListener::bind(addr).map_err(|e| VncError::Listen(addr.to_string(), e))?;
                let bound = l.local_addr().unwrap_or(*addr);
                spawn_accept(shared.clone(), move || {
                    l.accept().map(|(s, a)| {
                        let _ = s.set_nodelay(true);
                        (session::Stream::Tcp(s), a.to_string())
                    })
                })?;
                VncListen::Tcp(bound)
            }
        };
        Ok(Self { shared, listen })
    }

    /// Where it listens (a TCP port 0 becomes the port chosen).
    pub fn listen(&self) -> &VncListen {
        &self.listen
    }

    pub fn info(&self) -> VncInfo {
        let (service, family) = match &self.listen {
            VncListen::Unix(p) => (p.display().to_string(), "unix"),
            VncListen::Tcp(a) => (a.to_string(), if a.is_ipv6() { "ipv6" } else { "ipv4" }),
        };
        VncInfo {
            service,
            family,
            auth: if self.shared.password.is_some() {
                "vnc"
            } else {
                "none"
            },
            clients: lock(&self.shared.clients).clone(),
        }
    }
}

fn spawn_accept(
    shared: Arc<Shared>,
    mut accept: impl FnMut() -> std::io::Result<(session::Stream, String)> + Send + 'static,
) -> Result<(), VncError> {
    std::thread::Builder::new()
        .name("vnc-accept".into())
        .spawn(move || {
            loop {
                let (stream, peer) = match accept() {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("vnc: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if lock(&shared.clients).len() >= MAX_CLIENTS {
                    log::warn!("vnc: refusing {peer}: {MAX_CLIENTS} clients already");
                    continue;
                }
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                let sh = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("vnc-client{id}"))
                    .spawn(move || session::run(sh, stream, id, peer));
                if let Err(e) = spawned {
                    log::warn!("vnc: cannot start a client thread: {e}");
                }
            }
        })
        .map(drop)
        .map_err(VncError::Thread)
}

#[cfg(test)]
mod tests;
