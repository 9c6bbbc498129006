//! The QMP server: a unix socket, one accept thread, two threads per client.
//!
//! Data flow: the accept thread polls the listening socket and a stop socket. Each
//! client gets a reader thread (bytes and passed descriptors -> [`Framer`] -> `Session`
//! -> reply) and a writer thread that drains a bounded queue onto the socket with a
//! write timeout, so a client that stops reading never blocks the VMM. Replies are queued by the reader;
//! events are queued by [`EventSender::emit`] to every negotiated client without
//! blocking; a client whose queue is full is dropped. A reply is always queued before
//! the state change it causes is reported, and negotiation completes (events start)
//! only after the `qmp_capabilities` reply is queued.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::commands::Session;
use super::fdpass::recv_with_fds;
use super::poll::wait_either;
use super::protocol::{self, Framer, QmpError, Timestamp};
use super::{Event, VmControl};

/// Most clients served at once; further connections are closed at once.
pub const MAX_CLIENTS: usize = 16;
/// Messages queued for one client before it counts as stuck and is dropped.
const QUEUE_LEN: usize = 256;
/// How long one write to a client may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process answers on the socket path.
    #[error("{0} is in use by a running process")]
    InUse(PathBuf),
    /// Something other than a socket is at the path.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Binding or preparing the socket failed.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A thread or socket pair could not be created.
    #[error("cannot start the QMP server")]
    Setup(#[source] io::Error),
}

/// What a client's writer thread receives.
enum Outgoing {
    /// Bytes to write.
    Data(Vec<u8>),
    /// Flush and close the connection.
    Close,
}

/// The server's view of one connected client.
struct ClientSlot {
    id: u64,
    tx: SyncSender<Outgoing>,
    negotiated: Arc<AtomicBool>,
    /// A handle on the socket, to drop the client from any thread.
    stream: UnixStream,
}

/// The set of connected clients, shared by the server and every [`EventSender`].
#[derive(Default)]
struct Hub {
    clients: Mutex<Vec<ClientSlot>>,
}

impl Hub {
    fn clients(&self) -> MutexGuard<'_, Vec<ClientSlot>> {
        // A panic elsewhere while holding the lock leaves a usable Vec.
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remove(&self, id: u64) {
        self.clients().retain(|c| c.id != id);
    }
}

/// Sends events to every negotiated client. Cheap to clone; create it before the VM
/// object so the VM can report events, then pass it to [`QmpServer::start_with_events`].
#[derive(Clone, Default)]
pub struct EventSender {
    hub: Arc<Hub>,
}

impl EventSender {
    /// A sender with no clients yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Broadcasts `event`, stamped with the current time. Never blocks: a client whose
    /// queue is full is disconnected.
    pub fn emit(&self, event: Event) {
        let bytes = protocol::encode(&protocol::event_message(&event, Timestamp::now()));
        self.hub.clients().retain(|client| {
            if !client.negotiated.load(Ordering::Acquire) {
                return true;
            }
            match client.tx.try_send(Outgoing::Data(bytes.clone())) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    log::warn!("QMP client {} is not reading; dropping it", client.id);
                    let _ = client.stream.shutdown(std::net::Shutdown::Both);
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.hub.clients().len()
    }
}

/// Starts QMP servers.
pub struct QmpServer;

impl QmpServer {
    /// Listens on `path` (mode 0600) and serves `vm` until the handle is shut down or
    /// dropped. A stale socket left at `path` is replaced.
    pub fn start(path: &Path, vm: Arc<dyn VmControl>) -> Result<QmpServerHandle, ServerError> {
        Self::start_with_events(path, vm, EventSender::new())
    }

    /// Like [`QmpServer::start`], broadcasting the events sent through `events`.
    pub fn start_with_events(
        path: &Path,
        vm: Arc<dyn VmControl>,
        events: EventSender,
    ) -> Result<QmpServerHandle, ServerError> {
        let listener = bind(path)?;
        let bind_err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let ino = fs::metadata(path).map_err(bind_err)?.ino();
        // Closing `stop` makes `stop_for_thread` readable, which ends the accept loop.
        let (stop, stop_for_thread) = UnixStream::pair().map_err(ServerError::Setup)?;
        let shared = Arc::new(Shared {
            vm,
            events: events.clone(),
            threads: Mutex::default(),
        });
        let acceptor = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("qmp-accept".into())
            .spawn(move || acceptor.accept_loop(&listener, &stop_for_thread))
            .map_err(ServerError::Setup)?;
        Ok(QmpServerHandle {
            path: path.to_path_buf(),
            ino,
            stop,
            accept_thread: Some(accept_thread),
            shared,
            events,
        })
    }
}

/// Bytes in `sockaddr_un.sun_path`, the terminating NUL included.
const SUN_PATH_MAX: usize = 108;

/// Binds `path`, replacing a stale socket, and restricts it to the owner.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let bind_err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            fs::remove_file(path).map_err(bind_err)?;
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    // Bound under a temporary name and linked into place once listening and private, so
    // the socket appears only when it accepts connections (a client that sees the path
    // can connect; between bind and listen it would be refused) and never with the
    // umask's permissions.
    let name = path.file_name().ok_or_else(|| {
        bind_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket path has no file name",
        ))
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);
    let serial = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    temp_name.push(format!(".{}-{serial}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    if temp.as_os_str().len() >= SUN_PATH_MAX {
        // No room for the longer name: bind in place.
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        return Ok(listener);
    }
    let _ = fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).map_err(bind_err)?;
    // A hard link, not a rename: it fails if another helper placed a socket at `path`
    // since the check above, where a rename would silently take its path away.
    let placed = fs::set_permissions(&temp, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::hard_link(&temp, path));
    let _ = fs::remove_file(&temp);
    match placed {
        Ok(()) => Ok(listener),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(ServerError::InUse(path.to_path_buf()))
        }
        Err(e) => Err(bind_err(e)),
    }
}

/// State shared by the server's threads.
struct Shared {
    vm: Arc<dyn VmControl>,
    events: EventSender,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

impl Shared {
    fn accept_loop(self: Arc<Self>, listener: &UnixListener, stop: &UnixStream) {
        loop {
            match wait_either(listener.as_fd(), stop.as_fd()) {
                Ok((_, true)) => return,
                Ok(_) => {}
                Err(e) => {
                    log::error!("QMP server poll failed: {e}");
                    return;
                }
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = Arc::clone(&self).serve(stream) {
                        log::warn!("QMP client not served: {e}");
                    }
                }
                Err(e) => log::warn!("QMP accept failed: {e}"),
            }
        }
    }

    /// Registers a new client and starts its threads.
    fn serve(self: Arc<Self>, stream: UnixStream) -> io::Result<()> {
        if self.events.client_count() >= MAX_CLIENTS {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Err(io::Error::other("too many QMP clients"));
        }
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(QUEUE_LEN);
        let negotiated = Arc::new(AtomicBool::new(false));
        // Queued before the client is visible to events, so it comes first.
        tx.send(Outgoing::Data(protocol::encode(&protocol::greeting())))
            .map_err(|_| io::Error::other("client queue closed"))?;
        self.events.hub.clients().push(ClientSlot {
            id,
            tx: tx.clone(),
            negotiated: Arc::clone(&negotiated),
            stream: stream.try_clone()?,
        });
        let writer_stream = stream.try_clone()?;
        let writer = thread::Builder::new()
            .name(format!("qmp-client-{id}-w"))
            .spawn(move || write_loop(writer_stream, &rx));
        let shared = Arc::clone(&self);
        let reader = thread::Builder::new()
            .name(format!("qmp-client-{id}-r"))
            .spawn(move || shared.read_loop(id, stream, &tx, &negotiated));
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        threads.retain(|t| !t.is_finished());
        for handle in [writer, reader] {
            match handle {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    self.events.hub.remove(id);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn read_loop(
        &self,
        id: u64,
        stream: UnixStream,
        tx: &SyncSender<Outgoing>,
        negotiated: &AtomicBool,
    ) {
        let mut session = Session::default();
        let mut framer = Framer::new();
        let mut buf = [0u8; 4096];
        let mut texts = Vec::new();
        'conn: loop {
            // Descriptors (SCM_RIGHTS) come with the bytes of the `getfd` that names them.
            let mut fds = Vec::new();
            let n = match recv_with_fds(&stream, &mut buf, &mut fds) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            session.receive_fds(fds);
            if let Err(e) = framer.push(&buf[..n], &mut texts) {
                let reply = protocol::error_reply(&QmpError::generic(e.to_string()), None);
                let _ = tx.send(Outgoing::Data(protocol::encode(&reply)));
                let _ = tx.send(Outgoing::Close);
                break;
            }
            for text in texts.drain(..) {
                let was_negotiated = session.negotiated();
                let handled = session.handle(&text, self.vm.as_ref());
                let reply = Outgoing::Data(protocol::encode(&handled.reply));
                let queued = if !was_negotiated && session.negotiated() {
                    // Under the hub lock, so no event is emitted between queuing the
                    // reply and enabling events: the client misses none after the reply.
                    let _clients = self.events.hub.clients();
                    let queued = tx.try_send(reply).is_ok();
                    negotiated.store(true, Ordering::Release);
                    queued
                } else {
                    tx.send(reply).is_ok()
                };
                if !queued {
                    break 'conn;
                }
                if let Some(action) = handled.after_reply {
                    action(self.vm.as_ref());
                }
            }
        }
        self.events.hub.remove(id);
    }
}

/// One client's protocol state as its reader thread keeps it (the [`Framer`] and the
/// session), fed without a socket or threads: for the fuzz target. Bytes go through the same
/// framing, dispatch and after-reply actions as in the reader thread; descriptors are not
/// passed.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug, Default)]
pub struct ClientState {
    framer: Framer,
    session: Session,
    texts: Vec<Vec<u8>>,
}

#[cfg(any(test, feature = "test-support"))]
impl ClientState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the client; returns the encoded replies. An error is what
    /// makes the server send one error reply and close the connection.
    pub fn feed(
        &mut self,
        data: &[u8],
        vm: &dyn VmControl,
    ) -> Result<Vec<Vec<u8>>, protocol::ProtocolError> {
        self.framer.push(data, &mut self.texts)?;
        let mut replies = Vec::new();
        for text in self.texts.drain(..) {
            let handled = self.session.handle(&text, vm);
            replies.push(protocol::encode(&handled.reply));
            if let Some(action) = handled.after_reply {
                action(vm);
            }
        }
        Ok(replies)
    }

    /// True once `qmp_capabilities` succeeded.
    pub fn negotiated(&self) -> bool {
        self.session.negotiated()
    }
}

fn write_loop(mut stream: UnixStream, rx: &Receiver<Outgoing>) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Outgoing::Data(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    break;
                }
            }
            Outgoing::Close => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// A running QMP server. Dropping it stops the server like [`QmpServerHandle::shutdown`].
pub struct QmpServerHandle {
    path: PathBuf,
    ino: u64,
    stop: UnixStream,
    accept_thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    events: EventSender,
}

impl QmpServerHandle {
    /// Broadcasts `event` to every negotiated client.
    pub fn emit(&self, event: Event) {
        self.events.emit(event);
    }

    /// A sender for events, for the VMM's other threads.
    pub fn events(&self) -> EventSender {
        self.events.clone()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, flushes what is queued to each client (each write bounded by a
    /// timeout), closes every connection and removes the socket. Call it after emitting
    /// the final SHUTDOWN event. Must not be called from within a [`VmControl`] method.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        let _ = self.stop.shutdown(std::net::Shutdown::Both);
        let _ = accept_thread.join();
        for client in self.events.hub.clients().iter() {
            if client.tx.try_send(Outgoing::Close).is_err() {
                let _ = client.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let me = thread::current().id();
        for handle in threads {
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
        // Remove the socket only if it is still ours (not replaced by a new helper).
        if fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for QmpServerHandle {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    #[test]
    fn a_bound_socket_is_private_connectable_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vnc.sock");
        // A stale socket from a helper that died is replaced.
        drop(UnixListener::bind(&path).expect("stale socket"));
        let listener = bind(&path).expect("bind");
        let meta = fs::symlink_metadata(&path).expect("socket");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        UnixStream::connect(&path).expect("connect");
        assert!(listener.accept().is_ok());
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("vnc.sock")]);
        // A live one is not taken over.
        assert!(matches!(bind(&path), Err(ServerError::InUse(_))));
    }

    #[test]
    fn of_two_binds_racing_for_one_path_only_one_gets_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("qmp.sock");
        let results: Vec<_> = std::thread::scope(|scope| {
            let binds: Vec<_> = (0..8).map(|_| scope.spawn(|| bind(&path))).collect();
            binds
                .into_iter()
                .map(|b| b.join().expect("bind thread"))
                .collect()
        });
        let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        for lost in results.iter().filter(|r| r.is_err()) {
            assert!(matches!(lost, Err(ServerError::InUse(_))), "{lost:?}");
        }
        UnixStream::connect(&path).expect("connect");
        assert!(
            won[0].accept().is_ok(),
            "the path leads to the one that won"
        );
    }
}
