//! The VM library as the window shows it: plain data, no GTK.
//!
//! This is the only module that touches the vmm crate's library and config types. It turns
//! each [`Machine`] into a [`LibraryEntry`] holding the strings and icon name a row shows,
//! already translated, so the view code only copies them into widgets. Loading reads every
//! `vm.ron` from disk: call [`load_default`] off the GTK main loop.

use std::path::{Path, PathBuf};

use gettextrs::gettext;
use hospes_core::config::{Boot, OsKind};
use hospes_core::library::{Library, Machine};

use crate::i18n::{gettext_f, ngettext_f};

/// Icon of a machine whose settings do not load.
pub const BROKEN_ICON: &str = "dialog-warning-symbolic";

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One row of the library list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryEntry {
    /// The VM's folder name, unique in the library.
    pub id: String,
    /// The name to show: the configured name, or the folder name when `vm.ron` is broken.
    pub name: String,
    /// "Linux · 2 vCPUs · 4 GiB"; empty when `vm.ron` is broken.
    pub summary: String,
    /// A symbolic icon name for the guest OS, or [`BROKEN_ICON`].
    pub icon_name: &'static str,
    /// Why `vm.ron` did not load, with line and column; the file is named relative to the
    /// VM's folder (`vm.ron:6:5: ...`), since the row's title already names the folder.
    pub error: Option<String>,
    /// The same error with the full path, for the tooltip.
    pub error_detail: Option<String>,
    /// The VM's `vm.ron`, which the helper is started with.
    pub config_path: PathBuf,
    /// The VM has a display (the helper serves it over RFB).
    pub display: bool,
    /// The guest's resolution follows the VM window.
    pub follow_window: bool,
    /// The VM boots a kernel directly (kernel testing: a serial console tab).
    pub kernel_boot: bool,
}

impl LibraryEntry {
    /// The second line of the row: the error when there is one, else the summary.
    pub fn subtitle(&self) -> &str {
        self.error.as_deref().unwrap_or(&self.summary)
    }

    /// The row's tooltip: the error with its full path, or the summary.
    pub fn tooltip(&self) -> &str {
        self.error_detail.as_deref().unwrap_or(&self.summary)
    }
}

/// The outcome of loading the library: its entries sorted by name, or why it could not be
/// read at all (a single broken VM is an entry with an error, not a failed load).
pub type LibraryLoad = Result<Vec<LibraryEntry>, String>;

/// Opens the default library (`$XDG_DATA_HOME/hospes/machines`) and lists it. Blocking.
pub fn load_default() -> LibraryLoad {
    let library = open_library().map_err(|err| error_chain(&err))?;
    load(&library)
}

/// The library the app shows: the vmm's default (`$XDG_DATA_HOME/hospes/machines`), or,
/// inside Flatpak, the host's `~/.local/share/hospes/machines`, which the manifest shares
/// (`--filesystem=xdg-data/hospes:create`) so the app and a host `hospesctl` see the same
/// VMs. (Flatpak points `$XDG_DATA_HOME` at the app's private `~/.var/app/...` instead.)
pub fn open_library() -> Result<Library, hospes_core::library::LibraryError> {
    let in_flatpak = std::env::var_os("FLATPAK_ID").is_some();
    match library_root(in_flatpak, std::env::var_os("HOME").map(PathBuf::from)) {
        Some(root) => Library::open(root),
        None => Library::open_default(),
    }
}

/// The host library's root inside Flatpak; None elsewhere (use the vmm's default).
fn library_root(in_flatpak: bool, home: Option<PathBuf>) -> Option<PathBuf> {
    let home = home.filter(|home| home.is_absolute())?;
    in_flatpak.then(|| home.join(".local/share/hospes/machines"))
}

/// Lists `library` as rows. Blocking.
pub fn load(library: &Library) -> LibraryLoad {
    let machines = library.list().map_err(|err| error_chain(&err))?;
    Ok(machines.iter().map(entry_from_machine).collect())
}

/// The row for one machine.
pub fn entry_from_machine(machine: &Machine) -> LibraryEntry {
    match &machine.config {
        Ok(config) => LibraryEntry {
            id: machine.id.clone(),
            name: config.name.clone(),
            summary: summary(config.os, config.cpus, config.memory.0),
            icon_name: os_icon_name(config.os),
            error: None,
            error_detail: None,
            config_path: machine.config_path(),
            display: config.display.enabled,
            follow_window: config.display.follow_window,
            kernel_boot: matches!(config.boot, Boot::Kernel { .. }),
        },
        Err(err) => {
            let detail = error_chain(err);
            LibraryEntry {
                id: machine.id.clone(),
                name: machine.id.clone(),
                summary: String::new(),
                icon_name: BROKEN_ICON,
                error: Some(relative_to(&machine.dir, &detail).to_owned()),
                error_detail: Some(detail),
                config_path: machine.config_path(),
                display: false,
                follow_window: false,
                kernel_boot: false,
            }
        }
    }
}

/// `message` without a leading `<dir>/`, so `/home/a/.local/share/hospes/machines/vm1/vm.ron:3:1: ...`
/// reads `vm.ron:3:1: ...`.
fn relative_to<'m>(dir: &Path, message: &'m str) -> &'m str {
    let prefix = format!("{}/", dir.display());
    message.strip_prefix(prefix.as_str()).unwrap_or(message)
}

/// "Linux · 2 vCPUs · 4 GiB".
pub fn summary(os: OsKind, cpus: u32, memory_bytes: u64) -> String {
    let cpus_text = cpus.to_string();
    let cpus_label = ngettext_f(
        // Translators: the number of virtual processors of a virtual machine.
        "{count} vCPU",
        "{count} vCPUs",
        cpus,
        &[("count", &cpus_text)],
    );
    gettext_f(
        // Translators: one line about a virtual machine, e.g. "Linux · 2 vCPUs · 4 GiB":
        // {os} is the guest operating system, {cpus} the number of virtual processors,
        // {memory} the amount of memory.
        "{os} · {cpus} · {memory}",
        &[
            ("os", &os_label(os)),
            ("cpus", &cpus_label),
            ("memory", &memory_label(memory_bytes)),
        ],
    )
}

/// The guest OS family as a person reads it.
pub fn os_label(os: OsKind) -> String {
    match os {
        OsKind::Linux => gettext("Linux"),
        OsKind::Windows => gettext("Windows"),
        // Translators: the operating system of a virtual machine that is neither Linux
        // nor Windows.
        OsKind::Other => gettext("Other"),
    }
}

/// A symbolic icon for the guest OS family (Hospes ships the two `hospes-os-*` icons in its
/// GResource; `computer-symbolic` comes from the Adwaita theme).
pub fn os_icon_name(os: OsKind) -> &'static str {
    match os {
        OsKind::Linux => "hospes-os-linux-symbolic",
        OsKind::Windows => "hospes-os-windows-symbolic",
        OsKind::Other => "computer-symbolic",
    }
}

/// Memory in the largest binary unit that shows it exactly: "4 GiB", "1536 MiB".
pub fn memory_label(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        let size = (bytes / GIB).to_string();
        // Translators: an amount of memory in gibibytes (1024³ bytes).
        gettext_f("{size} GiB", &[("size", &size)])
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        let size = (bytes / MIB).to_string();
        // Translators: an amount of memory in mebibytes (1024² bytes).
        gettext_f("{size} MiB", &[("size", &size)])
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        let size = (bytes / KIB).to_string();
        // Translators: an amount of memory in kibibytes (1024 bytes).
        gettext_f("{size} KiB", &[("size", &size)])
    } else {
        let size = bytes.to_string();
        let count = u32::try_from(bytes).unwrap_or(u32::MAX);
        // Translators: an amount of memory in bytes.
        ngettext_f("{size} byte", "{size} bytes", count, &[("size", &size)])
    }
}

/// An error and its causes, outermost first: "cannot read X: permission denied" (the
/// one-line form every Hospes program uses).
pub use hospes_core::error_chain;

#[cfg(test)]
mod tests {
    use hospes_core::config::{HostLimits, Size};
    use hospes_core::library::{CreateRequest, HostResources, Preset};

    use std::error::Error;

    use super::*;

    /// A library in a temporary folder, sized and checked as if on an 8-CPU, 16 GiB host.
    fn temp_library() -> (tempfile::TempDir, Library) {
        let dir = tempfile::tempdir().expect("temp dir");
        let library = Library::open(dir.path().join("machines"))
            .expect("open library")
            .with_host_limits(HostLimits {
                cpus: Some(8),
                memory: Some(Size::gib(16)),
            })
            .with_host_resources(HostResources {
                cpus: 8,
                memory: Size::gib(16),
                free_disk: Size::gib(100),
            });
        (dir, library)
    }

    fn create(library: &Library, name: &str, preset: Preset, cpus: u32, memory: Size) -> Machine {
        let request = CreateRequest {
            cpus: Some(cpus),
            memory: Some(memory),
            disk_size: Some(Size(0)),
            ..CreateRequest::new(name, preset)
        };
        library.create(&request).expect("create VM")
    }

    #[test]
    fn lists_machines_by_name_with_summary_and_os_icon() {
        let (_dir, library) = temp_library();
        create(&library, "Windows 11", Preset::Windows11, 4, Size::gib(8));
        create(&library, "Debian Desktop", Preset::Linux, 2, Size::gib(4));

        let entries = load(&library).expect("load");

        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.summary.as_str(),
                    e.icon_name,
                    e.error.is_none(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "Debian Desktop",
                    "Linux · 2 vCPUs · 4 GiB",
                    "hospes-os-linux-symbolic",
                    true
                ),
                (
                    "Windows 11",
                    "Windows · 4 vCPUs · 8 GiB",
                    "hospes-os-windows-symbolic",
                    true
                ),
            ]
        );
    }

    #[test]
    fn broken_vm_ron_becomes_a_row_with_its_located_error() {
        let (_dir, library) = temp_library();
        let machine = create(&library, "Fedora", Preset::Linux, 2, Size::gib(2));
        let path = machine.dir.join("vm.ron");
        let text = std::fs::read_to_string(&path).expect("read vm.ron");
        std::fs::write(&path, text.replacen("cpus:", "cpuz:", 1)).expect("write vm.ron");

        let entries = load(&library).expect("load");

        let entry = &entries[0];
        let error = entry.error.as_deref().unwrap_or_default();
        assert_eq!(
            (entry.name.as_str(), entry.icon_name, entry.subtitle()),
            (machine.id.as_str(), BROKEN_ICON, error)
        );
        assert!(error.starts_with("vm.ron:"), "error not located: {error}");
        assert!(
            error.contains("cpuz"),
            "error does not name the field: {error}"
        );
        let detail = entry.error_detail.as_deref().unwrap_or_default();
        assert!(detail.starts_with(&path.display().to_string()), "{detail}");
    }

    #[test]
    fn flatpak_uses_the_host_library_under_home() {
        assert_eq!(
            library_root(true, Some(PathBuf::from("/home/ada"))),
            Some(PathBuf::from("/home/ada/.local/share/hospes/machines"))
        );
        assert_eq!(library_root(false, Some(PathBuf::from("/home/ada"))), None);
        assert_eq!(library_root(true, Some(PathBuf::from("relative"))), None);
    }

    #[test]
    fn empty_library_loads_as_no_entries() {
        let (_dir, library) = temp_library();
        assert_eq!(load(&library), Ok(Vec::new()));
    }

    #[test]
    fn unreadable_library_fails_with_the_reason() {
        let (dir, library) = temp_library();
        std::fs::remove_dir(dir.path().join("machines")).expect("remove library folder");

        let err = load(&library).expect_err("load must fail");

        assert!(err.contains("cannot read"), "{err}");
        assert!(err.contains("No such file or directory"), "{err}");
    }

    #[test]
    fn summary_names_os_cpus_and_memory() {
        assert_eq!(
            summary(OsKind::Linux, 2, 4 * GIB),
            "Linux · 2 vCPUs · 4 GiB"
        );
    }

    #[test]
    fn summary_uses_the_singular_for_one_cpu() {
        assert_eq!(
            summary(OsKind::Windows, 1, 512 * MIB),
            "Windows · 1 vCPU · 512 MiB"
        );
    }

    #[test]
    fn memory_label_picks_the_largest_exact_unit() {
        let labels = [
            memory_label(8 * GIB),
            memory_label(1536 * MIB),
            memory_label(3 * KIB),
            memory_label(1000),
            memory_label(1),
        ];
        assert_eq!(
            labels,
            ["8 GiB", "1536 MiB", "3 KiB", "1000 bytes", "1 byte"]
        );
    }

    #[test]
    fn each_os_has_its_own_icon() {
        let icons = [OsKind::Linux, OsKind::Windows, OsKind::Other].map(os_icon_name);
        assert_eq!(
            icons,
            [
                "hospes-os-linux-symbolic",
                "hospes-os-windows-symbolic",
                "computer-symbolic"
            ]
        );
    }

    #[test]
    fn relative_to_strips_the_machine_folder() {
        let dir = Path::new("/data/hospes/machines/vm1");
        let message = "/data/hospes/machines/vm1/vm.ron:6:5: memroy: unknown field";
        assert_eq!(
            relative_to(dir, message),
            "vm.ron:6:5: memroy: unknown field"
        );
    }

    #[test]
    fn relative_to_keeps_messages_about_other_files() {
        let dir = Path::new("/data/hospes/machines/vm1");
        let message = "/data/hospes/machines/vm10/vm.ron: cannot read: denied";
        assert_eq!(relative_to(dir, message), message);
    }

    #[test]
    fn error_chain_appends_causes_not_already_in_the_message() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cannot read the library")
            }
        }
        impl Error for Outer {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::other("permission denied"));
        assert_eq!(
            error_chain(&err),
            "cannot read the library: permission denied"
        );
    }
}
