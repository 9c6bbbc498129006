//! The new-VM assistant's logic, without GTK: guessing a name and an OS preset from the
//! chosen file, the defaults sized from this computer, and creating the VM folder through
//! the vmm library. [`create`] and [`host_defaults`] touch the disk: call them off the GTK
//! main loop.

use std::path::{Path, PathBuf};

use hospes_core::config::{self, Disk, DiskBus, DiskFormat, Size};
use hospes_core::library::{self, CreateRequest, HostResources, Library, Preset};

use crate::library_model;
use crate::vm_control::error_chain;

/// What the new VM starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// An install image, attached as CD-ROM.
    #[default]
    Iso,
    /// A Linux kernel booted directly (kernel testing).
    Kernel,
    /// A disk image that already holds a system.
    Disk,
}

/// Everything the summary page shows and [`create`] makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Where the VM comes from.
    pub source: Source,
    /// The chosen file.
    pub file: PathBuf,
    /// The VM's name.
    pub name: String,
    /// The OS preset.
    pub preset: Preset,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Size of the new disk in GiB; 0 for none.
    pub disk_gib: u64,
    /// The Windows drivers disc for a second CD drive (windows11 preset); `None` lets the
    /// library look where distributions install it.
    pub drivers: Option<PathBuf>,
}

/// The Windows drivers disc installed on this computer, if any, to offer in the assistant.
pub fn installed_drivers_iso() -> Option<PathBuf> {
    library::find_drivers_iso(&library::VIRTIO_WIN_ISOS)
}

/// Known distribution names in install image file names, and how to write them.
const DISTRIBUTIONS: &[(&str, &str)] = &[
    ("debian", "Debian"),
    ("ubuntu", "Ubuntu"),
    ("fedora", "Fedora"),
    ("archlinux", "Arch Linux"),
    ("opensuse", "openSUSE"),
    ("linuxmint", "Linux Mint"),
    ("alpine", "Alpine Linux"),
    ("rocky", "Rocky Linux"),
    ("almalinux", "AlmaLinux"),
    ("centos", "CentOS"),
    ("manjaro", "Manjaro"),
    ("pop-os", "Pop!_OS"),
    ("elementary", "elementary OS"),
    ("nixos", "NixOS"),
    ("kali", "Kali Linux"),
    ("win11", "Windows 11"),
    ("win10", "Windows 10"),
    ("windows", "Windows"),
];

/// The OS preset a file suggests: Windows for Windows install images, the kernel preset
/// for kernels, Linux otherwise.
pub fn guess_preset(source: Source, file: &Path) -> Preset {
    if source == Source::Kernel {
        return Preset::Kernel;
    }
    let name = file_name_lower(file);
    if name.starts_with("win") || name.contains("windows") {
        Preset::Windows11
    } else {
        Preset::Linux
    }
}

/// A name for the VM from the file name: "debian-12.5.0-amd64-netinst.iso" becomes
/// "Debian 12.5.0"; an unknown name is the file's stem.
pub fn guess_name(file: &Path) -> String {
    let lower = file_name_lower(file);
    let stem = file
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((key, pretty)) = DISTRIBUTIONS.iter().find(|(key, _)| lower.starts_with(key)) else {
        return stem;
    };
    if pretty.ends_with(|c: char| c.is_ascii_digit()) {
        // "Windows 11" already names its version; what follows is a build.
        return (*pretty).to_owned();
    }
    let rest = &lower[key.len()..];
    let version: String = rest
        .trim_start_matches(['-', '_', ' '])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let version = version.trim_end_matches('.');
    if version.is_empty() {
        (*pretty).to_owned()
    } else {
        format!("{pretty} {version}")
    }
}

fn file_name_lower(file: &Path) -> String {
    file.file_name()
        .map(|name| name.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

/// Defaults for `preset` on this computer: (memory MiB, vCPUs, disk GiB), and the host's
/// limits (vCPUs, memory MiB) for the spin buttons. Reads /proc and the library's file
/// system.
pub fn host_defaults(preset: Preset) -> (u64, u32, u64, u32, u64) {
    let root = library_model::open_library()
        .map(|library| library.root().to_path_buf())
        .unwrap_or_else(|_| PathBuf::from("."));
    let probe_dir = root
        .ancestors()
        .find(|dir| dir.is_dir())
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let host = HostResources::detect(&probe_dir);
    let defaults = library::preset_defaults(preset, &host);
    (
        defaults.memory.bytes() / Size::mib(1).bytes(),
        defaults.cpus,
        defaults.disk_size.bytes() / Size::gib(1).bytes(),
        host.cpus.max(1),
        host.memory.bytes() / Size::mib(1).bytes(),
    )
}

/// Why a plan cannot be created, for the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// The name is taken or not usable.
    Name(String),
    /// Anything else.
    Other(String),
}

/// Creates the VM `plan` describes in the default library; returns its id. Blocking (the
/// disk image is made here).
pub fn create(plan: &Plan) -> Result<String, CreateError> {
    let library =
        library_model::open_library().map_err(|err| CreateError::Other(error_chain(&err)))?;
    create_in(&library, plan)
}

/// [`create`] in `library`.
pub fn create_in(library: &Library, plan: &Plan) -> Result<String, CreateError> {
    library
        .check_name(&plan.name, None)
        .map_err(|err| CreateError::Name(error_chain(&err)))?;
    let mut request = CreateRequest::new(plan.name.clone(), plan.preset);
    request.memory = Some(Size::mib(plan.memory_mib));
    request.cpus = Some(plan.cpus);
    request.disk_size = Some(Size::gib(plan.disk_gib));
    if plan.preset == Preset::Windows11 {
        request.drivers_iso = plan.drivers.clone();
    }
    match plan.source {
        Source::Iso => request.iso = Some(plan.file.clone()),
        Source::Kernel => request.kernel = Some(plan.file.clone()),
        Source::Disk => request.disk_size = Some(Size(0)),
    }
    let machine = library
        .create(&request)
        .map_err(|err| CreateError::Other(error_chain(&err)))?;
    if plan.source == Source::Disk {
        attach_disk(&machine.config_path(), &plan.file, plan.preset)?;
    }
    Ok(machine.id)
}

/// Adds `image` (raw, or qcow2 by its extension) as the VM's first disk.
fn attach_disk(config_path: &Path, image: &Path, preset: Preset) -> Result<(), CreateError> {
    let other = |err: config::ConfigError| CreateError::Other(error_chain(&err));
    let mut vm = config::load(config_path).map_err(other)?;
    let qcow2 = image
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("qcow2"));
    vm.disks.insert(
        0,
        Disk {
            path: image.to_path_buf(),
            format: if qcow2 {
                DiskFormat::Qcow2
            } else {
                DiskFormat::Raw
            },
            read_only: false,
            bus: if preset == Preset::Windows11 {
                DiskBus::Sata
            } else {
                DiskBus::Virtio
            },
        },
    );
    config::save(config_path, &vm).map_err(other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_image_names_suggest_name_and_preset() {
        let debian = Path::new("/isos/debian-12.5.0-amd64-netinst.iso");
        assert_eq!(guess_name(debian), "Debian 12.5.0");
        assert_eq!(guess_preset(Source::Iso, debian), Preset::Linux);
        let windows = Path::new("Win11_23H2_English_x64.iso");
        assert_eq!(guess_name(windows), "Windows 11");
        assert_eq!(guess_preset(Source::Iso, windows), Preset::Windows11);
        assert_eq!(
            guess_name(Path::new("Fedora-Workstation-Live-x86_64-40-1.14.iso")),
            "Fedora"
        );
        assert_eq!(guess_name(Path::new("mystery.img")), "mystery");
    }

    #[test]
    fn a_kernel_always_gets_the_kernel_preset() {
        assert_eq!(
            guess_preset(Source::Kernel, Path::new("windows-bzImage")),
            Preset::Kernel
        );
    }

    fn library() -> (tempfile::TempDir, Library) {
        let dir = tempfile::tempdir().unwrap();
        let resources = HostResources {
            cpus: 8,
            memory: Size::gib(16),
            free_disk: Size::gib(100),
        };
        let library = Library::open(dir.path().join("machines"))
            .unwrap()
            .with_host_resources(resources);
        (dir, library)
    }

    #[test]
    fn creates_a_kernel_vm_with_the_chosen_sizes() {
        let (dir, library) = library();
        let kernel = dir.path().join("bzImage");
        std::fs::write(&kernel, b"kernel").unwrap();
        let plan = Plan {
            source: Source::Kernel,
            file: kernel.clone(),
            name: "Kernel Test".into(),
            preset: Preset::Kernel,
            memory_mib: 256,
            cpus: 1,
            disk_gib: 0,
            drivers: None,
        };
        let id = create_in(&library, &plan).unwrap();
        let vm = library.find(&id).unwrap().config.unwrap();
        assert_eq!(vm.name, "Kernel Test");
        assert_eq!(vm.memory, Size::mib(256));
        assert_eq!(vm.cpus, 1);
        assert!(matches!(vm.boot, config::Boot::Kernel { kernel: k, .. } if k == kernel));
        assert!(
            matches!(create_in(&library, &plan), Err(CreateError::Name(_))),
            "a second VM of the same name is refused at the name field"
        );
    }

    #[test]
    fn an_existing_disk_image_becomes_the_first_disk() {
        let (dir, library) = library();
        let image = dir.path().join("system.qcow2");
        std::fs::write(&image, b"").unwrap();
        let plan = Plan {
            source: Source::Disk,
            file: image.clone(),
            name: "Old System".into(),
            preset: Preset::Linux,
            memory_mib: 1024,
            cpus: 2,
            disk_gib: 32,
            drivers: None,
        };
        let id = create_in(&library, &plan).unwrap();
        let vm = library.find(&id).unwrap().config.unwrap();
        assert_eq!(vm.disks.len(), 1);
        assert_eq!(vm.disks[0].path, image);
        assert_eq!(vm.disks[0].format, DiskFormat::Qcow2);
    }

    #[test]
    fn a_windows_vm_gets_the_chosen_drivers_disc_in_a_second_drive() {
        let (dir, library) = library();
        let iso = dir.path().join("Win11.iso");
        let drivers = dir.path().join("virtio-win.iso");
        std::fs::write(&iso, b"").unwrap();
        std::fs::write(&drivers, b"").unwrap();
        let plan = Plan {
            source: Source::Iso,
            file: iso,
            name: "Windows".into(),
            preset: Preset::Windows11,
            memory_mib: 4096,
            cpus: 2,
            disk_gib: 1,
            drivers: Some(drivers.clone()),
        };
        let id = create_in(&library, &plan).unwrap();
        let vm = library.find(&id).unwrap().config.unwrap();
        assert_eq!(vm.extra_cdroms, [drivers.canonicalize().unwrap()]);
    }
}
