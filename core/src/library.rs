//! The VM library: one self-contained folder per VM under
//! `$XDG_DATA_HOME/hospes/machines/<id>/`, holding `vm.ron` and its disk images.
//!
//! The folder name is the VM's id: a slug of the name when it was created (`debian-12`),
//! with a suffix when taken (`debian-12-2`). The id never changes; renaming a VM changes
//! only the name in `vm.ron`, so running VMs (whose runtime files are keyed by id) are not
//! disturbed. Listing reads every folder that has a `vm.ron`; one that does not load is
//! listed with its error. Deleting keeps disk images unless asked otherwise, and never
//! touches a disk outside the VM's folder.

use std::collections::hash_map::RandomState;
use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{
    self, Boot, Clock, ConfigError, Disk, DiskBus, DiskFormat, Display, DisplayDevice, HostLimits,
    MacAddress, MachineUuid, Network, NetworkCard, OsKind, Problem, RebootAction, Resolution, Size,
    SoundCard, UsbDevice, VmConfig,
};
use crate::runtime::{self, Pid, RuntimeDir};

/// File extensions of disk and CD images, kept on delete even when `vm.ron` is unreadable.
const IMAGE_EXTENSIONS: [&str; 8] = ["raw", "img", "qcow2", "iso", "vmdk", "vdi", "vhd", "vhdx"];

/// Errors of library operations.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// Neither `XDG_DATA_HOME` nor `HOME` is set.
    #[error("cannot find the data folder: neither XDG_DATA_HOME nor HOME is set")]
    NoDataHome,
    /// A file-system operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done ("cannot create", "cannot read"...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// No VM has this name or id.
    #[error("no VM named {0:?}")]
    NotFound(String),
    /// Several VMs match a name given in another letter case.
    #[error("{name:?} matches several VMs: {}", ids.join(", "))]
    Ambiguous {
        /// The name as given.
        name: String,
        /// The ids it matches.
        ids: Vec<String>,
    },
    /// Another VM already has this name.
    #[error("a VM named {0:?} already exists")]
    NameTaken(String),
    /// The name cannot be used.
    #[error("bad VM name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Why not.
        reason: &'static str,
    },
    /// A VM's settings are broken or do not fit this computer.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A requested setting does not fit this computer or is invalid.
    #[error("{field}: {problem}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        problem: Problem,
    },
    /// Something the chosen preset needs was not given.
    #[error("the {preset} preset needs {what}")]
    Missing {
        /// The preset.
        preset: &'static str,
        /// What to give (like "--kernel FILE").
        what: &'static str,
    },
    /// An input file (ISO, kernel, initrd) does not exist.
    #[error("file not found: {}", .0.display())]
    InputNotFound(PathBuf),
    /// A folder to import has no `vm.ron`.
    #[error("{} is not a VM folder (it has no vm.ron)", .0.display())]
    NotAVmFolder(PathBuf),
    /// A folder to import is already in the library.
    #[error("{} is already in the library", .0.display())]
    AlreadyInLibrary(PathBuf),
    /// The VM is running; it must be stopped first.
    #[error("{id} is running (process {pid}); stop it first")]
    Running {
        /// The VM's id.
        id: String,
        /// The helper's process id.
        pid: Pid,
    },
    /// `qemu-img`, needed for qcow2 images, is not installed.
    #[error(
        "creating a qcow2 disk needs qemu-img, which is not installed (install qemu-utils, or use a raw disk)"
    )]
    QemuImgMissing,
    /// `qemu-img` failed.
    #[error("qemu-img failed: {0}")]
    QemuImgFailed(String),
    /// No free id could be found for a name.
    #[error("no free folder name for {0:?}")]
    NoFreeId(String),
}

impl LibraryError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LibraryError {
        let path = path.to_owned();
        move |source| LibraryError::Io {
            action,
            path,
            source,
        }
    }
}

/// A VM in the library.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The folder name; stable for the VM's life.
    pub id: String,
    /// The VM's folder.
    pub dir: PathBuf,
    /// The settings, or why they do not load.
    pub config: Result<VmConfig, ConfigError>,
}

impl Machine {
    /// The name from the settings, or the id when they do not load.
    pub fn name(&self) -> &str {
        self.config.as_ref().map_or(&self.id, |c| c.name.as_str())
    }

    /// The settings file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(config::FILE_NAME)
    }

    /// The settings as written, even when they fail the checks against files and host
    /// (a deleted ISO, more memory than this computer has); `None` when the text itself
    /// is broken.
    pub fn written_config(&self) -> Option<VmConfig> {
        match &self.config {
            Ok(cfg) => Some(cfg.clone()),
            Err(_) => {
                let path = self.config_path();
                let text = config::read(&path).ok()?;
                config::parse(&text, &path).ok()
            }
        }
    }
}

/// Starting points for a new VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Preset {
    /// A Linux desktop: UEFI, virtio-gpu, virtio disk, network and sound.
    #[default]
    Linux,
    /// Windows 11: UEFI with Secure Boot and TPM, SATA disk and the drivers disc, e1000e,
    /// HD Audio, std-VGA, local time, at least 4 GiB where the host allows.
    Windows11,
    /// Direct kernel boot for kernel testing: serial console, no display, no disk.
    Kernel,
}

impl Preset {
    /// The preset's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Linux => "linux",
            Preset::Windows11 => "windows11",
            Preset::Kernel => "kernel",
        }
    }
}

/// What to create. Unset fields take the preset's defaults, sized from the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateRequest {
    /// The name people see.
    pub name: String,
    /// The starting point.
    pub preset: Preset,
    /// Guest RAM.
    pub memory: Option<Size>,
    /// vCPUs.
    pub cpus: Option<u32>,
    /// Size of a new disk image; `Some(Size(0))` for none.
    pub disk_size: Option<Size>,
    /// Format of the new disk image.
    pub disk_format: DiskFormat,
    /// An install image to attach as CD-ROM.
    pub iso: Option<PathBuf>,
    /// The Windows drivers disc (virtio-win) to attach as a second CD-ROM (windows11
    /// preset); `None` looks where distributions install it ([`VIRTIO_WIN_ISOS`]).
    pub drivers_iso: Option<PathBuf>,
    /// Kernel for direct boot (kernel preset).
    pub kernel: Option<PathBuf>,
    /// Initrd for direct boot.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
}

impl CreateRequest {
    /// A request for `preset` defaults.
    pub fn new(name: impl Into<String>, preset: Preset) -> CreateRequest {
        CreateRequest {
            name: name.into(),
            preset,
            ..CreateRequest::default()
        }
    }
}

/// How [`Library::import`] brings a folder in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Copy it (sparse files stay sparse); the original stays.
    Copy,
    /// Move it.
    Move,
}

/// What [`Library::delete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The VM's id.
    pub id: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Whether the folder is gone (false when kept disk images are still in it).
    pub dir_removed: bool,
    /// Disk images deleted.
    pub deleted_disks: Vec<PathBuf>,
    /// Disk images left in place.
    pub kept_disks: Vec<PathBuf>,
}

/// What the host offers, for sizing new VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    /// Logical CPUs.
    pub cpus: u32,
    /// Total RAM.
    pub memory: Size,
    /// Free space where the library lives.
    pub free_disk: Size,
}

impl HostResources {
    /// This computer, with free space measured at `dir`.
    pub fn detect(dir: &Path) -> HostResources {
        let limits = HostLimits::detect();
        HostResources {
            cpus: limits.cpus.unwrap_or(1),
            memory: limits.memory.unwrap_or(Size::gib(2)),
            free_disk: free_space(dir).unwrap_or(Size::gib(64)),
        }
    }
}

/// The VM library.
#[derive(Debug, Clone)]
pub struct Library {
    root: PathBuf,
    limits: HostLimits,
    resources: Option<HostResources>,
}

impl Library {
    /// The library of this user: `$XDG_DATA_HOME/hospes/machines` (or
    /// `~/.local/share/hospes/machines`), created if needed.
    pub fn open_default() -> Result<Library, LibraryError> {
        Library::open(default_root()?)
    }

    /// The library in `root`, created (mode 0700) if needed.
    pub fn open(root: PathBuf) -> Result<Library, LibraryError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(LibraryError::io("cannot create", &root))?;
        Ok(Library {
            root,
            limits: HostLimits::detect(),
            resources: None,
        })
    }

    /// Checks VMs against `limits` instead of this computer's.
    pub fn with_host_limits(mut self, limits: HostLimits) -> Library {
        self.limits = limits;
        self
    }

    /// Sizes new VMs for `resources` instead of this computer's.
    pub fn with_host_resources(mut self, resources: HostResources) -> Library {
        self.resources = Some(resources);
        self
    }

    /// The folder holding the VM folders.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every VM, sorted by name. A folder whose `vm.ron` does not load is listed with
    /// its error.
    pub fn list(&self) -> Result<Vec<Machine>, LibraryError> {
        let entries =
            fs::read_dir(&self.root).map_err(LibraryError::io("cannot read", &self.root))?;
        let mut machines = Vec::new();
        for entry in entries {
            let entry = entry.map_err(LibraryError::io("cannot read", &self.root))?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let dir = entry.path();
            if id.starts_with('.') || !dir.join(config::FILE_NAME).is_file() {
                continue;
            }
            machines.push(self.machine(id, dir));
        }
        machines.sort_by(|a, b| {
            a.name()
                .to_lowercase()
                .cmp(&b.name().to_lowercase())
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(machines)
    }

    fn machine(&self, id: String, dir: PathBuf) -> Machine {
        let config = config::load_with(&dir.join(config::FILE_NAME), &self.limits);
        Machine { id, dir, config }
    }

    /// The VM with this id, or else this name (exactly, or in any letter case if only one
    /// VM matches that way).
    pub fn find(&self, name_or_id: &str) -> Result<Machine, LibraryError> {
        let machines = self.list()?;
        let names: Vec<Option<String>> = machines
            .iter()
            .map(|m| m.written_config().map(|c| c.name))
            .collect();
        let has_name = |i: usize, exact: bool| {
            names[i].as_ref().is_some_and(|name| {
                if exact {
                    name == name_or_id
                } else {
                    name.to_lowercase() == name_or_id.to_lowercase()
                }
            })
        };
        let pick = |found: Vec<&Machine>| -> Option<Result<Machine, LibraryError>> {
            match found.as_slice() {
                [] => None,
                [one] => Some(Ok((*one).clone())),
                many => Some(Err(LibraryError::Ambiguous {
                    name: name_or_id.to_owned(),
                    ids: many.iter().map(|m| m.id.clone()).collect(),
                })),
            }
        };
        if let Some(found) = pick(machines.iter().filter(|m| m.id == name_or_id).collect()) {
            return found;
        }
        for exact in [true, false] {
            let found = machines
                .iter()
                .enumerate()
                .filter(|(i, _)| has_name(*i, exact))
                .map(|(_, m)| m)
                .collect();
            if let Some(found) = pick(found) {
                return found;
            }
        }
        Err(LibraryError::NotFound(name_or_id.to_owned()))
    }

    /// Errors unless `name` is usable and no VM other than `except_id` has it.
    pub fn check_name(&self, name: &str, except_id: Option<&str>) -> Result<(), LibraryError> {
        let bad = |reason| LibraryError::BadName {
            name: name.to_owned(),
            reason,
        };
        if name.trim().is_empty() {
            return Err(bad("it is empty"));
        }
        if name.chars().any(char::is_control) {
            return Err(bad("it contains control characters"));
        }
        let wanted = name.trim().to_lowercase();
        for machine in self.list()? {
            if Some(machine.id.as_str()) == except_id {
                continue;
            }
            let taken = machine
                .written_config()
                .is_some_and(|c| c.name.trim().to_lowercase() == wanted);
            if taken {
                return Err(LibraryError::NameTaken(name.to_owned()));
            }
        }
        Ok(())
    }

    /// Claims a new, empty folder for `name`: its slug, or the slug with `-2`, `-3`...
    fn claim_folder(&self, name: &str) -> Result<(String, PathBuf), LibraryError> {
        let base = slug(name);
        for n in 1..10_000u32 {
            let id = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let dir = self.root.join(&id);
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok((id, dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(LibraryError::io("cannot create", &dir)(e)),
            }
        }
        Err(LibraryError::NoFreeId(name.to_owned()))
    }

    /// Creates a VM: its folder, disk image and `vm.ron`.
    pub fn create(&self, req: &CreateRequest) -> Result<Machine, LibraryError> {
        self.check_name(&req.name, None)?;
        let resources = self
            .resources
            .unwrap_or_else(|| HostResources::detect(&self.root));
        let plan = plan(req, &resources)?;
        if let Some((field, problem)) = config::exceeds_host(&plan.config, &self.limits) {
            return Err(LibraryError::Setting { field, problem });
        }
        let (id, dir) = self.claim_folder(&req.name)?;
        let result = write_new_vm(&dir, &plan);
        if let Err(error) = result {
            // Undo: the folder is ours alone, made a moment ago.
            let _ = fs::remove_dir_all(&dir);
            return Err(error);
        }
        Ok(self.machine(id, dir))
    }

    /// Renames a VM. Only the name in `vm.ron` changes (comments and layout are kept);
    /// the id and folder stay.
    pub fn rename(&self, name_or_id: &str, new_name: &str) -> Result<Machine, LibraryError> {
        let machine = self.find(name_or_id)?;
        self.check_name(new_name, Some(&machine.id))?;
        let path = machine.config_path();
        let text = config::read(&path)?;
        let quoted = ron::to_string(new_name).map_err(|e| ConfigError::Write {
            file: path.clone(),
            message: e.to_string(),
        })?;
        let new_text = match config::replace_value(&text, "name", &quoted) {
            Some(new_text) => new_text,
            None => {
                let mut cfg = config::parse(&text, &path)?;
                cfg.name = new_name.to_owned();
                config::to_text(&cfg)?
            }
        };
        let cfg = config::parse(&new_text, &path)?;
        if cfg.name != new_name {
            return Err(LibraryError::BadName {
                name: new_name.to_owned(),
                reason: "it does not survive being written to vm.ron",
            });
        }
        config::write_atomic(&path, new_text.as_bytes())?;
        Ok(self.machine(machine.id, machine.dir))
    }

    /// Sets the image in a VM's CD drive (`cdrom` in vm.ron) to `image`, or to none. Only
    /// that value changes when the text sets it as one value (comments and layout are
    /// kept); otherwise the file is written anew. For a stopped VM: a running one reads
    /// vm.ron only when it starts.
    pub fn set_cdrom(
        &self,
        name_or_id: &str,
        image: Option<&Path>,
    ) -> Result<Machine, LibraryError> {
        let machine = self.find(name_or_id)?;
        let path = machine.config_path();
        let text = config::read(&path)?;
        let write_error = |message: String| ConfigError::Write {
            file: path.clone(),
            message,
        };
        let value = match image {
            Some(image) => ron::to_string(image).map_err(|e| write_error(e.to_string()))?,
            None => "None".to_owned(),
        };
        let new_text = match config::replace_value(&text, "cdrom", &value) {
            Some(new_text) => new_text,
            None => {
                let mut cfg = config::parse(&text, &path)?;
                cfg.cdrom = image.map(Path::to_path_buf);
                config::to_text(&cfg)?
            }
        };
        let cfg = config::parse(&new_text, &path)?;
        if cfg.cdrom.as_deref() != image {
            return Err(write_error(
                "the CD image's path does not survive being written to vm.ron".to_owned(),
            )
            .into());
        }
        config::write_atomic(&path, new_text.as_bytes())?;
        Ok(self.machine(machine.id, machine.dir))
    }

    /// Sets the host USB devices VM `name_or_id` is given (vm.ron's `usb`), keeping the
    /// rest of the text, comments included, as it is (the whole file is rewritten only
    /// when it sets no `usb` list). Each device is kept once, in the order given.
    pub fn set_usb(
        &self,
        name_or_id: &str,
        devices: &[UsbDevice],
    ) -> Result<Machine, LibraryError> {
        let machine = self.find(name_or_id)?;
        config::set_usb(&machine.config_path(), devices)?;
        Ok(self.machine(machine.id, machine.dir))
    }

    /// Deletes a VM. Disk images in its folder are kept unless `delete_disks`; disk
    /// images outside its folder are never touched.
    pub fn delete(&self, name_or_id: &str, delete_disks: bool) -> Result<Deleted, LibraryError> {
        let machine = self.find(name_or_id)?;
        if let Some(pid) = running_pid(&machine.id) {
            return Err(LibraryError::Running {
                id: machine.id,
                pid,
            });
        }
        let images = disk_images(&machine);
        let (inside, outside): (Vec<PathBuf>, Vec<PathBuf>) = images
            .into_iter()
            .partition(|p| p.starts_with(&machine.dir));
        let mut deleted = Deleted {
            id: machine.id.clone(),
            dir: machine.dir.clone(),
            dir_removed: false,
            deleted_disks: Vec::new(),
            kept_disks: outside,
        };
        // vm.ron goes first, so an interrupted delete leaves no half-VM in the list.
        let config_path = machine.config_path();
        fs::remove_file(&config_path).map_err(LibraryError::io("cannot delete", &config_path))?;
        if delete_disks {
            fs::remove_dir_all(&machine.dir)
                .map_err(LibraryError::io("cannot delete", &machine.dir))?;
            deleted.deleted_disks = inside;
            deleted.dir_removed = true;
        } else {
            remove_all_but(&machine.dir, &inside)?;
            deleted.dir_removed = inside.is_empty();
            if deleted.dir_removed {
                fs::remove_dir(&machine.dir)
                    .map_err(LibraryError::io("cannot delete", &machine.dir))?;
            }
            deleted.kept_disks.extend(inside);
        }
        deleted.kept_disks.sort();
        Ok(deleted)
    }

    /// Brings an existing VM folder (one holding a valid `vm.ron`) into the library.
    pub fn import(&self, source: &Path, mode: ImportMode) -> Result<Machine, LibraryError> {
        let source = source
            .canonicalize()
            .map_err(LibraryError::io("cannot open", source))?;
        let source_config = source.join(config::FILE_NAME);
        if !source_config.is_file() {
            return Err(LibraryError::NotAVmFolder(source));
        }
        let root = self
            .root
            .canonicalize()
            .map_err(LibraryError::io("cannot open", &self.root))?;
        if source.starts_with(&root) {
            return Err(LibraryError::AlreadyInLibrary(source));
        }
        let cfg = config::load_with(&source_config, &self.limits)?;
        self.check_name(&cfg.name, None)?;
        let (id, dir) = self.claim_folder(&cfg.name)?;
        let brought = match mode {
            ImportMode::Copy => copy_tree(&source, &dir),
            ImportMode::Move => move_tree(&source, &dir),
        };
        if let Err(error) = brought {
            if mode == ImportMode::Copy {
                // Undo: the folder is ours alone, made a moment ago.
                let _ = fs::remove_dir_all(&dir);
            }
            return Err(error);
        }
        let machine = self.machine(id, dir);
        if let Err(error) = &machine.config {
            // A relative path that pointed out of the folder no longer resolves: undo.
            match mode {
                ImportMode::Copy => {
                    let _ = fs::remove_dir_all(&machine.dir);
                }
                ImportMode::Move => {
                    let _ = fs::rename(&machine.dir, &source);
                }
            }
            return Err(error.clone().into());
        }
        Ok(machine)
    }
}

/// `$XDG_DATA_HOME/hospes/machines`, falling back to `~/.local/share`.
pub fn default_root() -> Result<PathBuf, LibraryError> {
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".local/share"))
        })
        .ok_or(LibraryError::NoDataHome)?;
    Ok(data_home.join("hospes").join("machines"))
}

/// The folder name for a VM name: lower-case ASCII letters and digits, runs of anything
/// else as one `-`; `vm` when nothing is left.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out.truncate(48);
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "vm".to_owned() } else { out }
}

/// A new VM's settings and the disk image to create for it.
struct Plan {
    config: VmConfig,
    disk: Option<(PathBuf, Size, DiskFormat)>,
}

/// Where distributions (Fedora's and Arch's `virtio-win` packages) put the Windows drivers
/// disc, also as the Flatpak sees the host's /usr.
pub const VIRTIO_WIN_ISOS: [&str; 2] = [
    "/usr/share/virtio-win/virtio-win.iso",
    "/run/host/usr/share/virtio-win/virtio-win.iso",
];

/// The first of `candidates` that exists.
pub fn find_drivers_iso(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Works out a new VM's settings from a request, its preset and the host.
fn plan(req: &CreateRequest, host: &HostResources) -> Result<Plan, LibraryError> {
    let preset = req.preset;
    let iso = req.iso.as_deref().map(absolute_input).transpose()?;
    // Windows has no inbox virtio drivers: the drivers disc lets the user install them.
    let drivers = match (preset, &req.drivers_iso) {
        (Preset::Windows11, Some(path)) => Some(absolute_input(path)?),
        (Preset::Windows11, None) => find_drivers_iso(&VIRTIO_WIN_ISOS),
        (_, Some(_)) => {
            return Err(LibraryError::Missing {
                preset: "windows11",
                what: "to be chosen for a drivers disc (--preset windows11)",
            });
        }
        (_, None) => None,
    };
    let boot = match preset {
        // SeaBIOS boots every Linux installer's CD (El Torito) and disk.
        Preset::Linux => Boot::Bios { firmware: None },
        Preset::Windows11 => Boot::Uefi {
            firmware: None,
            tpm: true,
            secure_boot: true,
        },
        Preset::Kernel => {
            let kernel = req.kernel.as_deref().ok_or(LibraryError::Missing {
                preset: preset.as_str(),
                what: "a kernel (--kernel FILE)",
            })?;
            Boot::Kernel {
                kernel: absolute_input(kernel)?,
                initrd: req.initrd.as_deref().map(absolute_input).transpose()?,
                cmdline: req
                    .cmdline
                    .clone()
                    .unwrap_or_else(|| "console=ttyS0".to_owned()),
            }
        }
    };
    if preset != Preset::Kernel && (req.kernel.is_some() || req.initrd.is_some()) {
        return Err(LibraryError::Missing {
            preset: "kernel",
            what: "to be chosen for --kernel and --initrd (--preset kernel)",
        });
    }
    let defaults = preset_defaults(preset, host);
    let disk_size = req.disk_size.unwrap_or(defaults.disk_size);
    let disk = (disk_size.bytes() > 0).then(|| {
        let file = match req.disk_format {
            DiskFormat::Raw => "disk.raw",
            DiskFormat::Qcow2 => "disk.qcow2",
        };
        (PathBuf::from(file), disk_size, req.disk_format)
    });
    let disks = disk
        .iter()
        .map(|(path, _, format)| Disk {
            path: path.clone(),
            format: *format,
            read_only: false,
            bus: if preset == Preset::Windows11 {
                DiskBus::Sata
            } else {
                DiskBus::Virtio
            },
        })
        .collect();
    let display = match preset {
        // std-VGA shows the firmware, the boot menu and text installers (legacy VGA and
        // VBE), and Linux's bochs driver follows the window through its EDID.
        Preset::Linux => Display {
            enabled: true,
            resolution: Resolution::default(),
            follow_window: true,
            device: DisplayDevice::StdVga,
        },
        Preset::Windows11 => Display {
            enabled: true,
            resolution: Resolution::default(),
            follow_window: false,
            device: DisplayDevice::StdVga,
        },
        Preset::Kernel => Display {
            enabled: false,
            ..Display::default()
        },
    };
    let network = match preset {
        Preset::Kernel => Network::None,
        Preset::Linux | Preset::Windows11 => Network::User {
            mac: random_mac(&req.name),
            forwards: Vec::new(),
            // Windows has no inbox virtio-net driver, but one for Intel's 82574L.
            card: if preset == Preset::Windows11 {
                NetworkCard::E1000e
            } else {
                NetworkCard::Virtio
            },
        },
    };
    let config = VmConfig {
        version: config::CURRENT_VERSION,
        name: req.name.trim().to_owned(),
        os: if preset == Preset::Windows11 {
            OsKind::Windows
        } else {
            OsKind::Linux
        },
        cpus: req.cpus.unwrap_or(defaults.cpus),
        memory: req.memory.unwrap_or(defaults.memory),
        boot,
        disks,
        cdrom: iso,
        extra_cdroms: drivers.into_iter().collect(),
        display,
        network,
        sound: preset != Preset::Kernel,
        // Windows has no inbox virtio-snd driver, but one for Intel HD Audio.
        sound_card: if preset == Preset::Windows11 {
            SoundCard::Hda
        } else {
            SoundCard::Virtio
        },
        // Windows keeps local time in the hardware clock.
        clock: if preset == Preset::Windows11 {
            Clock::Local
        } else {
            Clock::Utc
        },
        usb: Vec::new(),
        on_reboot: if preset == Preset::Kernel {
            RebootAction::PowerOff
        } else {
            RebootAction::Restart
        },
        // Firmware reports it; direct kernel boot has no firmware to report it.
        uuid: (preset != Preset::Kernel).then(|| random_uuid(&req.name)),
    };
    Ok(Plan { config, disk })
}

/// Default size of a new VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresetDefaults {
    /// vCPUs.
    pub cpus: u32,
    /// RAM.
    pub memory: Size,
    /// Disk image size; 0 for no disk.
    pub disk_size: Size,
}

/// A preset's size on a host, the way Quickemu sizes guests: half the cores (capped),
/// a share of the RAM (capped, never more than half the host... or three quarters for
/// Windows, which needs 4 GiB), a disk capped by the free space.
pub fn preset_defaults(preset: Preset, host: &HostResources) -> PresetDefaults {
    let host_cpus = host.cpus.max(1);
    let ram = host.memory.bytes();
    let round = |bytes: u64, step: u64| Size(bytes / step * step);
    let quarter_gib = Size::mib(256).bytes();
    let (cpus, memory, disk) = match preset {
        Preset::Linux => {
            let memory = (ram / 4)
                .clamp(Size::gib(2).bytes(), Size::gib(4).bytes())
                .min(ram / 2);
            ((host_cpus / 2).clamp(1, 8), memory, Size::gib(32))
        }
        Preset::Windows11 => {
            let memory = (ram / 2)
                .clamp(Size::gib(4).bytes(), Size::gib(8).bytes())
                .min(ram / 4 * 3);
            (host_cpus.min(4), memory, Size::gib(64))
        }
        Preset::Kernel => (
            host_cpus.min(2),
            Size::mib(512).bytes().min(ram / 2),
            Size(0),
        ),
    };
    // Sparse images take no room at first, but one that can never fill is a trap.
    let usable = round(host.free_disk.bytes() / 10 * 9, Size::gib(1).bytes());
    let disk_size = if disk.bytes() == 0 {
        disk
    } else {
        disk.min(usable).max(Size::gib(1))
    };
    PresetDefaults {
        cpus,
        memory: round(memory, quarter_gib).max(Size::mib(256)),
        disk_size,
    }
}

/// An input file as an absolute path; it must exist.
fn absolute_input(path: &Path) -> Result<PathBuf, LibraryError> {
    path.canonicalize()
        .map_err(|_| LibraryError::InputNotFound(path.to_owned()))
}

/// A locally administered MAC address, different for every VM created.
fn random_mac(name: &str) -> MacAddress {
    let bits: [u8; 8] = random_bytes(name);
    MacAddress::with_suffix([bits[0], bits[1], bits[2]])
}

/// A random (version 4) UUID for a new machine.
fn random_uuid(name: &str) -> MachineUuid {
    let mut bytes: [u8; 16] = random_bytes(name);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    MachineUuid(bytes)
}

/// `N` random bytes: hashes of `name`, the clock and a counter, each
/// through a `RandomState`, which the OS's random source seeds afresh.
fn random_bytes<const N: usize>(name: &str) -> [u8; N] {
    let mut bytes = [0u8; N];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write(name.as_bytes());
        hasher.write_usize(i);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let word = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    bytes
}

fn write_new_vm(dir: &Path, plan: &Plan) -> Result<(), LibraryError> {
    if let Some((file, size, format)) = &plan.disk {
        create_disk_image(&dir.join(file), *size, *format)?;
    }
    config::save(&dir.join(config::FILE_NAME), &plan.config)?;
    Ok(())
}

/// Creates a disk image of `size`, mode 0600: raw ones sparse (no data written), qcow2
/// ones through `qemu-img`.
pub fn create_disk_image(path: &Path, size: Size, format: DiskFormat) -> Result<(), LibraryError> {
    match format {
        DiskFormat::Raw => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(LibraryError::io("cannot create", path))?;
            file.set_len(size.bytes())
                .map_err(LibraryError::io("cannot size", path))?;
            Ok(())
        }
        DiskFormat::Qcow2 => {
            let output = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(path)
                .arg(size.bytes().to_string())
                .output()
                .map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => LibraryError::QemuImgMissing,
                    _ => LibraryError::QemuImgFailed(e.to_string()),
                })?;
            if !output.status.success() {
                return Err(LibraryError::QemuImgFailed(
                    String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                ));
            }
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(LibraryError::io("cannot set the mode of", path))
        }
    }
}

/// Free space on the file system holding `dir`.
fn free_space(dir: &Path) -> Option<Size> {
    let c_path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero bytes are a valid `statvfs` (plain integers).
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `stat` a writable statvfs, both
    // alive for the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then(|| Size(stat.f_bavail.saturating_mul(stat.f_frsize)))
}

/// The helper's pid if the VM `id` is running (its runtime pid file names a live helper).
fn running_pid(id: &str) -> Option<Pid> {
    let dir = RuntimeDir::open(id).ok()?;
    let pid = dir.read_pid().ok()??;
    runtime::is_helper_alive(pid).then_some(pid)
}

/// The disk and CD images of a VM: those its settings name (even if the settings fail
/// the host checks) and, in its folder, files with an image extension.
fn disk_images(machine: &Machine) -> Vec<PathBuf> {
    let mut images = Vec::new();
    if let Some(cfg) = machine.written_config() {
        for disk in &cfg.disks {
            images.push(VmConfig::resolve(&machine.dir, &disk.path));
        }
        if let Some(cdrom) = &cfg.cdrom {
            images.push(VmConfig::resolve(&machine.dir, cdrom));
        }
    }
    if let Ok(entries) = fs::read_dir(&machine.dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if is_image && path.is_file() {
                images.push(path);
            }
        }
    }
    images.retain(|p| p.exists());
    images.sort();
    images.dedup();
    images
}

/// Removes everything in `dir` except `keep` (and folders leading to them).
fn remove_all_but(dir: &Path, keep: &[PathBuf]) -> Result<(), LibraryError> {
    let entries = fs::read_dir(dir).map_err(LibraryError::io("cannot read", dir))?;
    for entry in entries {
        let entry = entry.map_err(LibraryError::io("cannot read", dir))?;
        let path = entry.path();
        if keep.iter().any(|k| k.starts_with(&path)) {
            continue;
        }
        let file_type = entry
            .file_type()
            .map_err(LibraryError::io("cannot read", &path))?;
        let removed = if file_type.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(LibraryError::io("cannot delete", &path))?;
    }
    Ok(())
}

/// Moves the folder `from` onto the empty folder `to`, copying across file systems.
fn move_tree(from: &Path, to: &Path) -> Result<(), LibraryError> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_tree(from, to)?;
            fs::remove_dir_all(from).map_err(LibraryError::io("cannot delete", from))
        }
        Err(e) => Err(LibraryError::io("cannot move", from)(e)),
    }
}

/// Copies the contents of folder `from` into the existing folder `to`; files keep their
/// modes and holes, symbolic links are copied as links.
fn copy_tree(from: &Path, to: &Path) -> Result<(), LibraryError> {
    let entries = fs::read_dir(from).map_err(LibraryError::io("cannot read", from))?;
    for entry in entries {
        let entry = entry.map_err(LibraryError::io("cannot read", from))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let file_type = entry
            .file_type()
            .map_err(LibraryError::io("cannot read", &source))?;
        if file_type.is_dir() {
            let mode = entry.metadata().map_or(0o700, |m| m.permissions().mode());
            DirBuilder::new()
                .mode(mode)
                .create(&target)
                .map_err(LibraryError::io("cannot create", &target))?;
            copy_tree(&source, &target)?;
        } else if file_type.is_symlink() {
            let link = fs::read_link(&source).map_err(LibraryError::io("cannot read", &source))?;
            std::os::unix::fs::symlink(link, &target)
                .map_err(LibraryError::io("cannot create", &target))?;
        } else {
            copy_sparse(&source, &target).map_err(LibraryError::io("cannot copy", &source))?;
        }
    }
    Ok(())
}

/// Copies a file, writing only its data: holes stay holes, and so do runs of zeros.
fn copy_sparse(from: &Path, to: &Path) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let source = File::open(from)?;
    let meta = source.metadata()?;
    let target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.permissions().mode() & 0o7777)
        .open(to)?;
    let len = meta.len();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let Some(data_start) = seek(&source, offset, libc::SEEK_DATA)? else {
            break;
        };
        let data_end = seek(&source, data_start, libc::SEEK_HOLE)?.unwrap_or(len);
        let mut at = data_start;
        while at < data_end {
            let want = usize::try_from(data_end - at).map_or(CHUNK, |n| n.min(CHUNK));
            let n = source.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            if chunk.iter().any(|&b| b != 0) {
                target.write_all_at(chunk, at)?;
            }
            at += n as u64;
        }
        offset = data_end;
    }
    target.set_len(len)?;
    target.sync_all()
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`: `None` past the last data. File systems without
/// hole support report the whole file as data, which is still correct.
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek only moves the file offset of a descriptor `file` keeps open.
    let result = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if result < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(error),
        };
    }
    Ok(u64::try_from(result).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_drivers_disc_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("virtio-win.iso");
        std::fs::write(&there, b"iso").unwrap();
        let missing = dir.path().join("nowhere/virtio-win.iso");
        let (missing, there) = (missing.to_str().unwrap(), there.to_str().unwrap());
        assert_eq!(find_drivers_iso(&[missing, there]), Some(there.into()));
        assert_eq!(find_drivers_iso(&[missing]), None);
        // A folder of that name is not a disc.
        assert_eq!(find_drivers_iso(&[dir.path().to_str().unwrap()]), None);
    }

    #[test]
    fn slugs_names_into_folder_names() {
        assert_eq!(slug("Debian 12"), "debian-12");
        assert_eq!(slug("  Windows 11 (work)!"), "windows-11-work");
        assert_eq!(slug("Ünïcode"), "n-code");
        assert_eq!(slug("日本"), "vm");
        assert_eq!(slug("a--b__c"), "a-b-c");
    }

    #[test]
    fn sizes_presets_from_the_host() {
        let big = HostResources {
            cpus: 32,
            memory: Size::gib(64),
            free_disk: Size::gib(500),
        };
        let small = HostResources {
            cpus: 2,
            memory: Size::gib(4),
            free_disk: Size::gib(20),
        };
        let cases = [
            (Preset::Linux, &big, 8, Size::gib(4), Size::gib(32)),
            (Preset::Windows11, &big, 4, Size::gib(8), Size::gib(64)),
            (Preset::Kernel, &big, 2, Size::mib(512), Size(0)),
            (Preset::Linux, &small, 1, Size::gib(2), Size::gib(18)),
            (Preset::Windows11, &small, 2, Size::gib(3), Size::gib(18)),
            (Preset::Kernel, &small, 2, Size::mib(512), Size(0)),
        ];
        for (preset, host, cpus, memory, disk_size) in cases {
            let expected = PresetDefaults {
                cpus,
                memory,
                disk_size,
            };
            assert_eq!(
                preset_defaults(preset, host),
                expected,
                "{preset:?} on {host:?}"
            );
        }
    }

    #[test]
    fn copies_files_sparsely() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a.raw");
        let file = File::create(&from).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(b"hello", 10 << 20).unwrap();
        drop(file);
        let to = dir.path().join("b.raw");
        copy_sparse(&from, &to).unwrap();
        let copied = fs::read(&to).unwrap();
        assert_eq!(copied.len(), 64 << 20);
        assert_eq!(&copied[10 << 20..(10 << 20) + 5], b"hello");
        assert_eq!(copied.iter().filter(|&&b| b != 0).count(), 5);
        let blocks = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&to).unwrap());
        assert!(
            blocks * 512 < 4 << 20,
            "copy is not sparse: {blocks} blocks"
        );
    }
}
