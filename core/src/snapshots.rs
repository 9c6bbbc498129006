//! Named snapshots of a stopped VM's disks, as external qcow2 overlays.
//!
//! A snapshot freezes each disk's current image (its "top") and puts a new, empty qcow2
//! overlay `<disk>.<snapshot>.qcow2` on it, whose backing file is the frozen image (named
//! relative to the VM folder); vm.ron's disk then names the overlay. The chain of a disk
//! snapshotted twice is `disk.qcow2 <- disk.s1.qcow2 <- disk.s2.qcow2` (active). Nothing
//! ever writes a frozen image again except [`delete`], which merges.
//!
//! - [`create`]: as above; a raw disk is first converted to qcow2 (`<disk>.qcow2`, with
//!   progress) only when asked, because the VM's disk file changes.
//! - [`revert`]: drops the overlays made at and after the snapshot (and so the snapshots
//!   taken after it) and starts a fresh overlay with the snapshot's own overlay name on
//!   the frozen image: the disks read as at the snapshot, and it can be reverted to again.
//! - [`delete`]: the snapshot's overlay (what changed after it) is committed into its
//!   frozen image, the overlay file is removed and the merged image takes its name (or,
//!   for the newest snapshot, vm.ron names the merged image again). Nothing is lost: the
//!   VM's current disk contents stay the same, only the restore point goes away. A crash
//!   half-way through the commit leaves the current contents intact too, since the overlay
//!   still sits over every byte being written below it.
//!
//! A saved VM (one with [`saved_state::FILE_NAME`], after Save and Quit) is snapshotted
//! with its saved state: the file is hard-linked (copied where links are refused) to
//! `<snapshot>.saved-state.hospes` next to it and the snapshot names it. [`revert`] puts it
//! back as the VM's saved state (or removes the VM's current saved state when the snapshot
//! had none, since that state belongs to disks the revert throws away); [`delete`] removes
//! it. A saved state lives with the disks it was saved with: a deleted snapshot's state is
//! not merged anywhere, since the VM's current state is the one that resumes.
//!
//! The list lives in `snapshots.ron` in the VM folder (written atomically), paths in it
//! relative to the folder. Images are created, read and merged with the `imago` crate.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{
    FormatAccess, FormatCreateBuilder, FormatDriverBuilder, PermissiveImplicitOpenGate,
    ShallowMapping, Storage, StorageCreateOptions,
};
use serde::{Deserialize, Serialize};

use crate::config::{self, DiskFormat, VmConfig};
use crate::runtime::{self, RuntimeDir};
use crate::saved_state;

/// The snapshot list in a VM folder.
pub const FILE_NAME: &str = "snapshots.ron";

/// The name of snapshot `name`'s copy of the saved state, in the VM folder.
fn saved_state_name(name: &str) -> PathBuf {
    PathBuf::from(format!("{name}.{}", saved_state::FILE_NAME))
}

/// Links (or copies, where the file system refuses links) `from` to the new file `to`.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(io_err("create", to)(e)),
        Err(_) => std::fs::copy(from, to)
            .map(drop)
            .map_err(io_err("copy the saved state to", to)),
    }
}

/// Removes `path`; one already gone is fine.
fn remove_if_there(path: &Path) -> Result<(), SnapshotError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Bytes copied at a time when converting or merging.
const CHUNK: u64 = 1 << 20;

/// What went wrong with a snapshot operation.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the VM is running (process {0}); stop it first: snapshots are taken of stopped VMs")]
    Running(i32),
    #[error("cannot read the VM's settings")]
    Config(#[from] config::ConfigError),
    #[error("the VM has no disks to snapshot")]
    NoDisks,
    #[error("`{0}` is not a usable snapshot name (letters, digits, `-`, `_`, `.`; not empty)")]
    BadName(String),
    #[error("a snapshot named `{0}` exists already")]
    Exists(String),
    #[error("no snapshot named `{0}`")]
    NotFound(String),
    #[error(
        "disk {0} is a raw image; snapshots need qcow2: convert it first (`--convert` makes {1} \
         and points the VM at it; the raw file is kept)"
    )]
    RawDisk(PathBuf, PathBuf),
    #[error("disk {0} is read-only; a snapshot of it is not needed and not taken")]
    ReadOnlyDisk(PathBuf),
    #[error(
        "the VM's disks no longer match {FILE_NAME} (disk {0} is not the image the last snapshot made); fix or remove {FILE_NAME}"
    )]
    Mismatch(PathBuf),
    #[error("{FILE_NAME} is damaged: {0}")]
    List(String),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io {
        action,
        path,
        source,
    }
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    /// When it was taken, seconds since the Unix epoch.
    pub created: u64,
    /// Per disk (vm.ron's order).
    pub disks: Vec<SnapshotDisk>,
    /// The VM's saved state when it was taken (a saved VM), relative to the VM folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_state: Option<PathBuf>,
}

impl Snapshot {
    /// Whether the snapshot carries a saved state (the VM was saved, not shut down).
    pub fn has_saved_state(&self) -> bool {
        self.saved_state.is_some()
    }
}

/// What a snapshot did to one disk; paths relative to the VM folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDisk {
    /// The image frozen by the snapshot: the disk's contents at the snapshot.
    pub frozen: PathBuf,
    /// The overlay made on it.
    pub overlay: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SnapshotList {
    snapshots: Vec<Snapshot>,
}

/// Progress of a long step: (what, bytes done, bytes in all).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// The VM's snapshots, oldest first.
pub fn list(vm_dir: &Path) -> Result<Vec<Snapshot>, SnapshotError> {
    Ok(read_list(vm_dir)?.snapshots)
}

fn read_list(vm_dir: &Path) -> Result<SnapshotList, SnapshotError> {
    let path = vm_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => ron::from_str(&text).map_err(|e| SnapshotError::List(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SnapshotList::default()),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

fn write_list(vm_dir: &Path, list: &SnapshotList) -> Result<(), SnapshotError> {
    let text = ron::ser::to_string_pretty(list, ron::ser::PrettyConfig::new())
        .map_err(|e| SnapshotError::List(e.to_string()))?;
    config::write_atomic(&vm_dir.join(FILE_NAME), text.as_bytes())?;
    Ok(())
}

/// Refuses while the helper of the VM in `vm_dir` (its id is the folder name) runs.
fn ensure_stopped(vm_dir: &Path) -> Result<(), SnapshotError> {
    let Some(id) = vm_dir.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let pid = RuntimeDir::open(id)
        .ok()
        .and_then(|d| d.read_pid().ok().flatten())
        .filter(|&pid| runtime::is_helper_alive(pid));
    match pid {
        Some(pid) => Err(SnapshotError::Running(pid.0)),
        None => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), SnapshotError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::BadName(name.to_owned()))
    }
}

/// `path` relative to `dir` when it is inside it.
fn relative(dir: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(dir)
        .map_or_else(|_| path.to_owned(), Path::to_owned)
}

/// The name of the overlay snapshot `name` makes for the disk whose base image is
/// `frozen`: `<stem>.<name>.qcow2` next to the disk's first image.
fn overlay_name(base: &Path, name: &str) -> PathBuf {
    let stem = base
        .file_stem()
        .map_or_else(|| "disk".into(), |s| s.to_string_lossy().into_owned());
    base.with_file_name(format!("{stem}.{name}.qcow2"))
}

/// Creates an empty qcow2 image at `path` of `size` bytes, with `backing` (a qcow2 image,
/// named relative to `path`'s folder) if given. Fails if `path` exists.
pub fn create_qcow2(path: &Path, size: u64, backing: Option<&str>) -> Result<(), SnapshotError> {
    let make = || -> std::io::Result<()> {
        let file = ImagoFile::create_open(StorageCreateOptions::new().filename(path))?;
        let mut builder = Qcow2::<ImagoFile>::create_builder(file).size(size);
        if let Some(b) = backing {
            builder = builder.backing(b.to_owned(), "qcow2".to_owned());
        }
        builder.create()
    };
    make().map_err(io_err("create the qcow2 image", path))
}

/// Opens the qcow2 image at `path` with its backing chain.
pub fn open_qcow2(path: &Path, write: bool) -> Result<FormatAccess<ImagoFile>, SnapshotError> {
    let q = Qcow2::<ImagoFile>::builder_path(path)
        .write(write)
        .open(PermissiveImplicitOpenGate::default())
        .map_err(io_err("open the qcow2 image", path))?;
    Ok(FormatAccess::new(q))
}

/// Converts the raw image `raw` into a new qcow2 image `out` (zero runs stay unallocated).
pub fn convert_raw(raw: &Path, out: &Path, progress: Progress<'_>) -> Result<(), SnapshotError> {
    let src = Raw::<ImagoFile>::builder_path(raw)
        .open(PermissiveImplicitOpenGate::default())
        .map_err(io_err("open the raw image", raw))?;
    let src = FormatAccess::new(src);
    let size = src.size();
    create_qcow2(out, size, None)?;
    let dst = open_qcow2(out, true)?;
    let what = format!("converting {}", raw.display());
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(CHUNK) as usize;
        src.read(&mut buf[..n], at)
            .map_err(io_err("read the raw image", raw))?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write(&buf[..n], at)
                .map_err(io_err("write the qcow2 image", out))?;
        }
        at += n as u64;
        progress(&what, at, size);
    }
    dst.flush().map_err(io_err("write the qcow2 image", out))?;
    dst.sync().map_err(io_err("write the qcow2 image", out))?;
    Ok(())
}

/// Copies what the qcow2 image `top` holds itself (not what it reads from its backing
/// chain) into its backing image `below`, which must be qcow2.
fn commit(top: &Path, below: &Path, progress: Progress<'_>) -> Result<(), SnapshotError> {
    // Find the ranges first, then copy with the backing image open for writing.
    let mut ranges = Vec::new();
    {
        let t = open_qcow2(top, false)?;
        let size = t.size();
        let mut at = 0;
        while at < size {
            let (mapping, len) = t
                .get_shallow_mapping(at, size - at)
                .map_err(io_err("read the qcow2 image", top))?;
            if len == 0 {
                break;
            }
            if !matches!(mapping, ShallowMapping::Indirect { .. }) {
                ranges.push((at, len));
            }
            at += len;
        }
    }
    let t = Qcow2::<ImagoFile>::builder_path(top)
        .write(false)
        .backing(None)
        .open(PermissiveImplicitOpenGate::default())
        .map_err(io_err("open the qcow2 image", top))?;
    let t = FormatAccess::new(t);
    let b = open_qcow2(below, true)?;
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let what = format!("merging {} into {}", top.display(), below.display());
    let mut done = 0;
    let mut buf = vec![0u8; CHUNK as usize];
    for (start, len) in ranges {
        let mut at = start;
        while at < start + len {
            let n = (start + len - at).min(CHUNK) as usize;
            t.read(&mut buf[..n], at)
                .map_err(io_err("read the qcow2 image", top))?;
            b.write(&buf[..n], at)
                .map_err(io_err("write the qcow2 image", below))?;
            at += n as u64;
            done += n as u64;
            progress(&what, done, total);
        }
    }
    b.flush().map_err(io_err("write the qcow2 image", below))?;
    b.sync().map_err(io_err("write the qcow2 image", below))?;
    Ok(())
}

/// Checks that vm.ron's disks are the overlays the newest snapshot made (so nothing this
/// module removes or merges is an image the user put there).
fn check_active(vm_dir: &Path, list: &SnapshotList, cfg: &VmConfig) -> Result<(), SnapshotError> {
    let Some(last) = list.snapshots.last() else {
        return Ok(());
    };
    if last.disks.len() != cfg.disks.len() {
        return Err(SnapshotError::Mismatch(vm_dir.join(config::FILE_NAME)));
    }
    for (d, sd) in cfg.disks.iter().zip(&last.disks) {
        let active = VmConfig::resolve(vm_dir, &d.path);
        if active != VmConfig::resolve(vm_dir, &sd.overlay) {
            return Err(SnapshotError::Mismatch(active));
        }
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn load_config(vm_dir: &Path) -> Result<(PathBuf, VmConfig), SnapshotError> {
    let path = vm_dir.join(config::FILE_NAME);
    let text = config::read(&path)?;
    Ok((path.clone(), config::parse(&text, &path)?))
}

/// Takes snapshot `name` of the stopped VM in `vm_dir`. A raw disk is converted to qcow2
/// first when `convert` (reporting `progress`), refused otherwise.
pub fn create(
    vm_dir: &Path,
    name: &str,
    convert: bool,
    progress: Progress<'_>,
) -> Result<Snapshot, SnapshotError> {
    ensure_stopped(vm_dir)?;
    check_name(name)?;
    let mut list = read_list(vm_dir)?;
    if list.snapshots.iter().any(|s| s.name == name) {
        return Err(SnapshotError::Exists(name.to_owned()));
    }
    let (cfg_path, mut cfg) = load_config(vm_dir)?;
    if cfg.disks.is_empty() {
        return Err(SnapshotError::NoDisks);
    }
    check_active(vm_dir, &list, &cfg)?;
    for d in &cfg.disks {
        let path = VmConfig::resolve(vm_dir, &d.path);
        if d.read_only {
            return Err(SnapshotError::ReadOnlyDisk(path));
        }
        if d.format == DiskFormat::Raw && !convert {
            return Err(SnapshotError::RawDisk(
                path.clone(),
                path.with_extension("qcow2"),
            ));
        }
    }
    // Raw disks become qcow2 images next to them; vm.ron names those from then on.
    for d in &mut cfg.disks {
        if d.format != DiskFormat::Raw {
            continue;
        }
        let raw = VmConfig::resolve(vm_dir, &d.path);
        let out = raw.with_extension("qcow2");
        if out.exists() {
            return Err(SnapshotError::Io {
                action: "convert to",
                path: out,
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        convert_raw(&raw, &out, progress)?;
        d.path = relative(vm_dir, &out);
        d.format = DiskFormat::Qcow2;
    }
    config::save(&cfg_path, &cfg)?;
    let mut disks = Vec::new();
    let mut made = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        let top = VmConfig::resolve(vm_dir, &d.path);
        // The disk's first image names the overlays: the one the oldest snapshot froze.
        let base = list
            .snapshots
            .first()
            .and_then(|s| s.disks.get(i))
            .map_or_else(|| top.clone(), |sd| VmConfig::resolve(vm_dir, &sd.frozen));
        let overlay = overlay_name(&base, name);
        let size = open_qcow2(&top, false)?.size();
        let backing = top
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let backing = if overlay.parent() == top.parent() {
            backing
        } else {
            top.display().to_string()
        };
        if let Err(e) = create_qcow2(&overlay, size, Some(&backing)) {
            for m in &made {
                let _ = std::fs::remove_file(m);
            }
            return Err(e);
        }
        made.push(overlay.clone());
        disks.push(SnapshotDisk {
            frozen: relative(vm_dir, &top),
            overlay: relative(vm_dir, &overlay),
        });
    }
    // A saved VM's state belongs to these disks: the snapshot keeps its own name for it.
    let live_state = saved_state::path_in(vm_dir);
    let mut saved = None;
    if live_state.exists() {
        let rel = saved_state_name(name);
        let copy = vm_dir.join(&rel);
        if let Err(e) = link_or_copy(&live_state, &copy) {
            for m in &made {
                let _ = std::fs::remove_file(m);
            }
            return Err(e);
        }
        saved = Some(rel);
    }
    let snap = Snapshot {
        name: name.to_owned(),
        created: now(),
        disks,
        saved_state: saved,
    };
    // The list first: a crash before vm.ron changes leaves an unused overlay and a
    // snapshot whose revert works all the same.
    list.snapshots.push(snap.clone());
    write_list(vm_dir, &list)?;
    for (d, sd) in cfg.disks.iter_mut().zip(&snap.disks) {
        d.path = sd.overlay.clone();
        d.format = DiskFormat::Qcow2;
    }
    config::save(&cfg_path, &cfg)?;
    Ok(snap)
}

/// Puts the disks of the stopped VM in `vm_dir` back to snapshot `name`; returns the
/// names of the later snapshots this dropped.
pub fn revert(vm_dir: &Path, name: &str) -> Result<Vec<String>, SnapshotError> {
    ensure_stopped(vm_dir)?;
    let mut list = read_list(vm_dir)?;
    let at = list
        .snapshots
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| SnapshotError::NotFound(name.to_owned()))?;
    let (cfg_path, mut cfg) = load_config(vm_dir)?;
    check_active(vm_dir, &list, &cfg)?;
    let snap = list.snapshots[at].clone();
    // Every overlay made at or after this snapshot goes, the active image among them.
    let doomed: Vec<PathBuf> = list.snapshots[at..]
        .iter()
        .flat_map(|s| {
            s.disks
                .iter()
                .map(|d| VmConfig::resolve(vm_dir, &d.overlay))
        })
        .collect();
    let dropped: Vec<String> = list.snapshots[at + 1..]
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let doomed_states: Vec<PathBuf> = list.snapshots[at + 1..]
        .iter()
        .filter_map(|s| s.saved_state.as_ref())
        .map(|p| vm_dir.join(p))
        .collect();
    list.snapshots.truncate(at + 1);
    write_list(vm_dir, &list)?;
    for p in doomed.iter().chain(&doomed_states) {
        remove_if_there(p)?;
    }
    // The VM's saved state goes with the disks it was saved with; the snapshot's, if any,
    // comes back (a link again, so the snapshot keeps its own).
    let live_state = saved_state::path_in(vm_dir);
    saved_state::discard(vm_dir).map_err(io_err("remove", &live_state))?;
    if let Some(rel) = &snap.saved_state {
        link_or_copy(&vm_dir.join(rel), &live_state)?;
    }
    for (d, sd) in cfg.disks.iter_mut().zip(&snap.disks) {
        let frozen = VmConfig::resolve(vm_dir, &sd.frozen);
        let overlay = VmConfig::resolve(vm_dir, &sd.overlay);
        let size = open_qcow2(&frozen, false)?.size();
        let backing = if overlay.parent() == frozen.parent() {
            frozen
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            frozen.display().to_string()
        };
        create_qcow2(&overlay, size, Some(&backing))?;
        d.path = sd.overlay.clone();
        d.format = DiskFormat::Qcow2;
    }
    config::save(&cfg_path, &cfg)?;
    Ok(dropped)
}

/// Deletes snapshot `name` of the stopped VM in `vm_dir`, merging what changed after it
/// into the image it froze, so that the disks' current contents stay as they are.
pub fn delete(vm_dir: &Path, name: &str, progress: Progress<'_>) -> Result<(), SnapshotError> {
    ensure_stopped(vm_dir)?;
    let mut list = read_list(vm_dir)?;
    let at = list
        .snapshots
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| SnapshotError::NotFound(name.to_owned()))?;
    let (cfg_path, mut cfg) = load_config(vm_dir)?;
    check_active(vm_dir, &list, &cfg)?;
    let snap = list.snapshots[at].clone();
    let newest = at + 1 == list.snapshots.len();
    for sd in &snap.disks {
        let frozen = VmConfig::resolve(vm_dir, &sd.frozen);
        let overlay = VmConfig::resolve(vm_dir, &sd.overlay);
        commit(&overlay, &frozen, progress)?;
    }
    // The merged images now hold the current contents under the overlays.
    list.snapshots.remove(at);
    if newest {
        // vm.ron names the merged images again; the overlays go.
        for (d, sd) in cfg.disks.iter_mut().zip(&snap.disks) {
            d.path = sd.frozen.clone();
        }
        write_list(vm_dir, &list)?;
        config::save(&cfg_path, &cfg)?;
        for sd in &snap.disks {
            let overlay = VmConfig::resolve(vm_dir, &sd.overlay);
            std::fs::remove_file(&overlay).map_err(io_err("remove", &overlay))?;
        }
    } else {
        // The next snapshot froze this overlay by name: the merged image takes that name,
        // and the earlier snapshot whose overlay the merged image was names it anew.
        for sd in &snap.disks {
            let frozen = VmConfig::resolve(vm_dir, &sd.frozen);
            let overlay = VmConfig::resolve(vm_dir, &sd.overlay);
            std::fs::rename(&frozen, &overlay).map_err(io_err("rename", &frozen))?;
        }
        for s in &mut list.snapshots {
            for (d, sd) in s.disks.iter_mut().zip(&snap.disks) {
                if d.overlay == sd.frozen {
                    d.overlay = sd.overlay.clone();
                }
                if d.frozen == sd.frozen {
                    d.frozen = sd.overlay.clone();
                }
            }
        }
        write_list(vm_dir, &list)?;
    }
    // The VM's current saved state, if any, is not this one: it goes with the snapshot.
    if let Some(rel) = &snap.saved_state {
        remove_if_there(&vm_dir.join(rel))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 4 << 20;

    /// A VM folder with one qcow2 disk, `disk.qcow2`.
    fn vm() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        create_qcow2(&dir.path().join("disk.qcow2"), SIZE, None).unwrap();
        let text = r#"(version: 1, name: "t", os: Linux, cpus: 1, memory: "256M", boot: Bios(), disks: [(path: "disk.qcow2", format: Qcow2)])"#;
        std::fs::write(dir.path().join(config::FILE_NAME), text).unwrap();
        dir
    }

    fn active(dir: &Path) -> PathBuf {
        let (_, cfg) = load_config(dir).unwrap();
        VmConfig::resolve(dir, &cfg.disks[0].path)
    }

    fn write(dir: &Path, byte: u8, offset: u64) {
        let img = open_qcow2(&active(dir), true).unwrap();
        img.write(&[byte; 4096][..], offset).unwrap();
        img.flush().unwrap();
    }

    fn contents(dir: &Path) -> Vec<u8> {
        let img = open_qcow2(&active(dir), false).unwrap();
        let mut buf = vec![0u8; SIZE as usize];
        img.read(&mut buf[..], 0).unwrap();
        buf
    }

    fn none() -> impl FnMut(&str, u64, u64) {
        |_, _, _| {}
    }

    #[test]
    fn revert_and_delete_keep_every_state_they_promise() {
        let vm = vm();
        let dir = vm.path();
        write(dir, 1, 0);
        let at1 = contents(dir);
        create(dir, "s1", false, &mut none()).unwrap();
        assert_eq!(active(dir), dir.join("disk.s1.qcow2"));
        write(dir, 2, 8192);
        let at2 = contents(dir);
        create(dir, "s2", false, &mut none()).unwrap();
        write(dir, 3, 0);
        let at3 = contents(dir);
        create(dir, "s3", false, &mut none()).unwrap();
        write(dir, 4, 1 << 20);
        let now = contents(dir);
        assert!(at1 != at2 && at2 != at3 && at3 != now);
        assert!(matches!(
            create(dir, "s2", false, &mut none()),
            Err(SnapshotError::Exists(_))
        ));

        // Deleting the middle snapshot merges it away and keeps the others.
        delete(dir, "s2", &mut none()).unwrap();
        assert!(contents(dir) == now);
        let names: Vec<String> = list(dir).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["s1", "s3"]);
        revert(dir, "s3").unwrap();
        assert!(contents(dir) == at3);
        // Reverting to the first drops the later one; it can be reverted to again.
        assert_eq!(revert(dir, "s1").unwrap(), ["s3"]);
        assert!(contents(dir) == at1);
        write(dir, 9, 0);
        revert(dir, "s1").unwrap();
        assert!(contents(dir) == at1);
        // Deleting the last one leaves the merged image as the disk.
        write(dir, 5, 4096);
        let now = contents(dir);
        delete(dir, "s1", &mut none()).unwrap();
        assert!(contents(dir) == now);
        assert!(list(dir).unwrap().is_empty());
        // Only the disk image is left.
        let mut images: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".qcow2"))
            .collect();
        images.sort();
        assert_eq!(images, [active(dir).file_name().unwrap().to_str().unwrap()]);
        assert!(matches!(revert(dir, "s1"), Err(SnapshotError::NotFound(_))));
    }

    #[test]
    fn refuses_bad_names_and_disks_it_did_not_make() {
        let vm = vm();
        let dir = vm.path();
        for bad in ["", "a/b", "..", ".x", "a b"] {
            assert!(
                matches!(
                    create(dir, bad, false, &mut none()),
                    Err(SnapshotError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        create(dir, "one", false, &mut none()).unwrap();
        // Someone pointed vm.ron at another image: nothing is removed or merged.
        let text = r#"(version: 1, name: "t", os: Linux, cpus: 1, memory: "256M", boot: Bios(), disks: [(path: "disk.qcow2", format: Qcow2)])"#;
        std::fs::write(dir.join(config::FILE_NAME), text).unwrap();
        assert!(matches!(
            revert(dir, "one"),
            Err(SnapshotError::Mismatch(_))
        ));
        assert!(matches!(
            delete(dir, "one", &mut none()),
            Err(SnapshotError::Mismatch(_))
        ));
        assert!(dir.join("disk.one.qcow2").exists());
    }

    #[test]
    fn a_raw_disk_is_converted_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; SIZE as usize];
        bytes[3 << 20..(3 << 20) + 100].fill(0x77);
        std::fs::write(dir.path().join("disk.raw"), &bytes).unwrap();
        let text = r#"(version: 1, name: "t", os: Linux, cpus: 1, memory: "256M", boot: Bios(), disks: [(path: "disk.raw")])"#;
        std::fs::write(dir.path().join(config::FILE_NAME), text).unwrap();
        let err = create(dir.path(), "s", false, &mut none()).unwrap_err();
        assert!(matches!(err, SnapshotError::RawDisk(..)), "{err:?}");
        assert!(err.to_string().contains("--convert"));
        let mut last = 0;
        create(dir.path(), "s", true, &mut |_, done, total| {
            assert!(done > last && done <= total);
            last = done;
        })
        .unwrap();
        assert_eq!(last, SIZE);
        assert!(contents(dir.path()) == bytes);
        assert_eq!(
            std::fs::read(dir.path().join("disk.raw")).unwrap(),
            bytes,
            "the raw file is kept"
        );
    }

    /// Writes a real saved state into the VM folder, told apart by its memory size.
    fn save(dir: &Path, memory: u64) {
        let meta = saved_state::Meta::now(memory, 1, "serial\n".into());
        let ram = [saved_state::RamRun {
            gpa: 0x1000,
            data: &[0x5a; 4096],
        }];
        saved_state::write(&saved_state::path_in(dir), &meta, &[], &ram, |_, _| {}).unwrap();
    }

    fn saved_memory(dir: &Path) -> Option<u64> {
        saved_state::find(dir).map(|m| m.unwrap().memory)
    }

    #[test]
    fn a_saved_vm_is_snapshotted_with_its_saved_state() {
        let vm = vm();
        let dir = vm.path();
        write(dir, 1, 0);
        save(dir, 1 << 20);
        let s1 = create(dir, "s1", false, &mut none()).unwrap();
        assert_eq!(s1.saved_state, Some(PathBuf::from("s1.saved-state.hospes")));
        assert_eq!(saved_memory(dir), Some(1 << 20), "the VM stays saved");
        // The VM resumed (its helper removes the state) and shut down: no state now.
        saved_state::discard(dir).unwrap();
        write(dir, 2, 0);
        let s2 = create(dir, "s2", false, &mut none()).unwrap();
        assert!(!s2.has_saved_state());
        let flags: Vec<bool> = list(dir)
            .unwrap()
            .iter()
            .map(Snapshot::has_saved_state)
            .collect();
        assert_eq!(flags, [true, false]);
        // Saved again later; reverting to a snapshot without a state removes that one,
        // since it belongs to disks the revert throws away.
        write(dir, 3, 0);
        save(dir, 2 << 20);
        revert(dir, "s2").unwrap();
        assert_eq!(saved_memory(dir), None);
        // Reverting to s1 brings its saved state back, and s1 keeps its own.
        revert(dir, "s1").unwrap();
        assert_eq!(saved_memory(dir), Some(1 << 20));
        assert!(saved_state::open(&saved_state::path_in(dir)).is_ok());
        assert!(dir.join("s1.saved-state.hospes").exists());
        assert_eq!(contents(dir)[0], 1);
        // The resumed VM changes its state; reverting again gives s1's back unchanged.
        save(dir, 3 << 20);
        revert(dir, "s1").unwrap();
        assert_eq!(saved_memory(dir), Some(1 << 20));
        // Deleting the snapshot removes its copy, and the VM's current state stays.
        delete(dir, "s1", &mut none()).unwrap();
        assert!(!dir.join("s1.saved-state.hospes").exists());
        assert_eq!(saved_memory(dir), Some(1 << 20));
        assert!(list(dir).unwrap().is_empty());
    }

    #[test]
    fn a_list_from_before_saved_states_still_reads() {
        let vm = vm();
        let dir = vm.path();
        let text = r#"(snapshots: [(name: "old", created: 5, disks: [(frozen: "disk.qcow2", overlay: "disk.old.qcow2")])])"#;
        std::fs::write(dir.join(FILE_NAME), text).unwrap();
        let l = list(dir).unwrap();
        assert_eq!(l[0].name, "old");
        assert!(!l[0].has_saved_state());
    }
}
