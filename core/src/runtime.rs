//! Runtime files of running VMs: `$XDG_RUNTIME_DIR/hospes/<vm-id>/`.
//!
//! Each running helper owns one directory (mode 0700) holding `qmp.sock`, `serial.sock`,
//! `vnc.sock`, `pid` and `helper.log`. The app and `hospesctl` find running VMs again
//! through these directories: a VM is running when its pid file names a live
//! `hospes-vmm` process and its QMP socket accepts connections. Directories that fail
//! the check are stale and can be removed with [`cleanup_stale`].

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Longest path the kernel accepts for a unix socket (`sun_path` less the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The longest socket file name in a runtime directory.
const LONGEST_SOCKET_NAME: &str = "serial.sock";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Neither `$XDG_RUNTIME_DIR` nor `/run/user/<uid>` is usable.
    #[error("no runtime directory: XDG_RUNTIME_DIR is not set and /run/user/{uid} does not exist")]
    NoRuntimeDir {
        /// The calling user.
        uid: u32,
    },
    /// The VM id cannot name a directory.
    #[error("invalid VM id '{0}'")]
    InvalidId(String),
    /// Socket paths in the directory would be too long for the kernel.
    #[error("runtime path {0} is too long for unix sockets")]
    PathTooLong(PathBuf),
    /// The directory exists but belongs to someone else, or is not a directory.
    #[error("{0} is not a private directory of this user")]
    NotPrivate(PathBuf),
    /// The pid file does not hold a process id.
    #[error("bad pid file {0}")]
    BadPidFile(PathBuf),
    /// A file operation failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A process id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pid(pub i32);

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The directory holding every VM's runtime directory: `$XDG_RUNTIME_DIR/hospes`, or
/// `/run/user/<uid>/hospes` when the variable is unset. Not created here.
pub fn base_dir() -> Result<PathBuf, RuntimeError> {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("hospes"));
    }
    let uid = uid();
    let fallback = PathBuf::from(format!("/run/user/{uid}"));
    if fallback.is_dir() {
        Ok(fallback.join("hospes"))
    } else {
        Err(RuntimeError::NoRuntimeDir { uid })
    }
}

/// Checks that `id` is usable as a single directory name.
fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_string()))
    }
}

/// Creates `dir` with mode 0700 if missing, and checks it is a directory owned by us
/// that no one else can enter.
fn ensure_private_dir(dir: &Path) -> Result<(), RuntimeError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() || meta.uid() != uid() {
        return Err(RuntimeError::NotPrivate(dir.to_path_buf()));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// One VM's runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDir {
    id: String,
    path: PathBuf,
}

impl RuntimeDir {
    /// Creates (or reuses) the runtime directory of VM `id` under [`base_dir`].
    pub fn create(id: &str) -> Result<Self, RuntimeError> {
        Self::create_in(&base_dir()?, id)
    }

    /// Creates (or reuses) the runtime directory of VM `id` under `base`.
    pub fn create_in(base: &Path, id: &str) -> Result<Self, RuntimeError> {
        let dir = Self::open_in(base, id)?;
        let socket = dir.path.join(LONGEST_SOCKET_NAME);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(RuntimeError::PathTooLong(socket));
        }
        ensure_private_dir(base)?;
        ensure_private_dir(&dir.path)?;
        Ok(dir)
    }

    /// The runtime directory of VM `id` under [`base_dir`], without creating it.
    pub fn open(id: &str) -> Result<Self, RuntimeError> {
        Self::open_in(&base_dir()?, id)
    }

    /// The runtime directory of VM `id` under `base`, without creating it.
    pub fn open_in(base: &Path, id: &str) -> Result<Self, RuntimeError> {
        validate_id(id)?;
        Ok(Self {
            id: id.to_string(),
            path: base.join(id),
        })
    }

    /// The VM id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }

    /// The serial console socket.
    pub fn serial_socket(&self) -> PathBuf {
        self.path.join("serial.sock")
    }

    /// The VNC (RFB) socket.
    pub fn vnc_socket(&self) -> PathBuf {
        self.path.join("vnc.sock")
    }

    /// The file holding the helper's process id.
    pub fn pid_file(&self) -> PathBuf {
        self.path.join("pid")
    }

    /// The helper's stdout and stderr.
    pub fn log_file(&self) -> PathBuf {
        self.path.join("helper.log")
    }

    /// Writes the pid file atomically (temporary file, then rename).
    pub fn write_pid(&self, pid: Pid) -> Result<(), RuntimeError> {
        let tmp = self.path.join(".pid.tmp");
        let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        writeln!(file, "{pid}").map_err(io_err(&tmp))?;
        let target = self.pid_file();
        fs::rename(&tmp, &target).map_err(io_err(&target))
    }

    /// Reads the pid file; `None` when there is none.
    pub fn read_pid(&self) -> Result<Option<Pid>, RuntimeError> {
        let path = self.pid_file();
        match fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<i32>() {
                Ok(pid) if pid > 0 => Ok(Some(Pid(pid))),
                _ => Err(RuntimeError::BadPidFile(path)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The last `lines` lines of `helper.log` (empty when there is no log).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read(self.log_file()).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What is running here, judged from the pid file, the process and the QMP socket.
    pub fn probe(&self) -> Liveness {
        match self.read_pid() {
            Ok(Some(pid)) if is_helper_alive(pid) => {
                if UnixStream::connect(self.qmp_socket()).is_ok() {
                    Liveness::Running(pid)
                } else {
                    Liveness::NotAnswering(pid)
                }
            }
            _ => Liveness::Stale,
        }
    }

    /// Removes the sockets and the pid file, keeping `helper.log` for post-mortems.
    pub fn clear_runtime_files(&self) -> Result<(), RuntimeError> {
        for path in [
            self.qmp_socket(),
            self.serial_socket(),
            self.vnc_socket(),
            self.pid_file(),
        ] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> Result<(), RuntimeError> {
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&self.path)(e)),
            _ => Ok(()),
        }
    }
}

/// The state of a runtime directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// A live helper answers on the QMP socket.
    Running(Pid),
    /// The helper process lives but its QMP socket does not answer (starting up, hung,
    /// or run without `--qmp`).
    NotAnswering(Pid),
    /// No live helper: leftovers of a crash.
    Stale,
}

/// A VM found running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVm {
    /// Its runtime directory.
    pub dir: RuntimeDir,
    /// The helper's process id.
    pub pid: Pid,
}

/// Whether `pid` is a live (not zombie) process that looks like a Hospes helper: its
/// `argv[0]` file name starts with `hospes-vmm` (spawned helpers are named
/// `hospes-vmm: <vm name>`). This guards against a recycled pid.
pub fn is_helper_alive(pid: Pid) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself hold ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    let Ok(cmdline) = fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    let file_name = argv0.rsplit('/').next().unwrap_or_default();
    file_name.starts_with("hospes-vmm")
}

/// Lists the runtime directories under `base` with their liveness.
pub fn scan_in(base: &Path) -> Result<Vec<(RuntimeDir, Liveness)>, RuntimeError> {
    let entries = match fs::read_dir(base) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(base)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(base))?;
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(dir) = RuntimeDir::open_in(base, &id) else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let liveness = dir.probe();
            out.push((dir, liveness));
        }
    }
    out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    Ok(out)
}

/// The VMs running now, from [`base_dir`].
pub fn list_running() -> Result<Vec<RunningVm>, RuntimeError> {
    list_running_in(&base_dir()?)
}

/// The VMs running now under `base`.
pub fn list_running_in(base: &Path) -> Result<Vec<RunningVm>, RuntimeError> {
    Ok(scan_in(base)?
        .into_iter()
        .filter_map(|(dir, liveness)| match liveness {
            Liveness::Running(pid) => Some(RunningVm { dir, pid }),
            _ => None,
        })
        .collect())
}

/// Removes stale runtime directories under [`base_dir`]; returns the ids removed.
pub fn cleanup_stale() -> Result<Vec<String>, RuntimeError> {
    cleanup_stale_in(&base_dir()?)
}

/// Removes stale runtime directories under `base`; returns the ids removed.
pub fn cleanup_stale_in(base: &Path) -> Result<Vec<String>, RuntimeError> {
    let mut removed = Vec::new();
    for (dir, liveness) in scan_in(base)? {
        if liveness == Liveness::Stale {
            dir.remove()?;
            removed.push(dir.id);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("hospes");
        let dir = RuntimeDir::create_in(&base, "vm-1").unwrap();
        for path in [&base, &dir.path().to_path_buf()] {
            let mode = fs::metadata(path).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", path.display());
        }
        assert_eq!(dir.qmp_socket(), base.join("vm-1/qmp.sock"));
    }

    #[test]
    fn rejects_ids_that_escape_the_base_directory() {
        for id in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(
                RuntimeDir::open_in(Path::new("/tmp"), id).is_err(),
                "{id:?}"
            );
        }
    }

    #[test]
    fn rejects_socket_paths_too_long_for_the_kernel() {
        let base = PathBuf::from("/tmp").join("d".repeat(90));
        assert!(matches!(
            RuntimeDir::create_in(&base, "vm"),
            Err(RuntimeError::PathTooLong(_))
        ));
    }

    #[test]
    fn pid_file_round_trips_and_rejects_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RuntimeDir::create_in(tmp.path(), "vm").unwrap();
        assert_eq!(dir.read_pid().unwrap(), None);
        dir.write_pid(Pid(4242)).unwrap();
        assert_eq!(dir.read_pid().unwrap(), Some(Pid(4242)));
        fs::write(dir.pid_file(), "nope").unwrap();
        assert!(dir.read_pid().is_err());
    }

    #[test]
    fn a_directory_whose_process_is_gone_is_stale_and_cleaned_up() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = RuntimeDir::create_in(tmp.path(), "dead").unwrap();
        // The test process itself is alive but is not a hospes-vmm helper.
        dead.write_pid(Pid(std::process::id() as i32)).unwrap();
        let no_pid = RuntimeDir::create_in(tmp.path(), "nopid").unwrap();
        assert_eq!(dead.probe(), Liveness::Stale);
        assert!(list_running_in(tmp.path()).unwrap().is_empty());
        let removed = cleanup_stale_in(tmp.path()).unwrap();
        assert_eq!(removed, ["dead", "nopid"]);
        assert!(!dead.path().exists() && !no_pid.path().exists());
    }

    #[test]
    fn log_tail_returns_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RuntimeDir::create_in(tmp.path(), "vm").unwrap();
        fs::write(dir.log_file(), "one\ntwo\nthree\n").unwrap();
        assert_eq!(dir.log_tail(2), "two\nthree");
        assert_eq!(dir.log_tail(10), "one\ntwo\nthree");
    }
}
