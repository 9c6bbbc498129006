//! Atomic file replacement: a reader (or a crash) sees the old file or the new one.
//!
//! The new text goes to a temporary file in the same folder, is flushed to disk, renamed
//! over the target (atomic within a file system), and then the folder itself is flushed so
//! the rename survives a power cut.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::ConfigError;

/// Distinguishes temporary files of concurrent saves in one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically. A new file gets mode 0644 (less the umask);
/// an existing file keeps its mode.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let write_error = |e: std::io::Error| ConfigError::Write {
        file: path.to_owned(),
        message: e.to_string(),
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| ConfigError::Write {
        file: path.to_owned(),
        message: "not a file name".into(),
    })?;
    let mode = fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let temp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_and_rename(&temp, path, bytes, mode).and_then(|()| sync_dir(dir));
    if result.is_err() {
        // Best effort: the temporary file may not exist, and its removal failing changes
        // nothing about the error to report.
        let _ = fs::remove_file(&temp);
    }
    result.map_err(write_error)?;
    remove_stale_temps(dir, &name.to_string_lossy());
    Ok(())
}

/// Removes temporary files left by saves of `name` in processes that died mid-save.
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if !alive {
            // Best effort: another save may have removed it already.
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn write_and_rename(temp: &PathBuf, path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.ron");
        write_atomic(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("vm.ron")]);
    }

    #[test]
    fn reports_a_folder_that_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/vm.ron");
        let error = write_atomic(&path, b"x").unwrap_err();
        assert!(matches!(error, ConfigError::Write { file, .. } if file == path));
    }
}
