//! The settings pane's logic, without GTK: a form of the `vm.ron` fields a person edits,
//! how it becomes settings again, and saving with the vmm's own validation, whose errors
//! name the field they belong to so the pane shows them there. [`load`] and [`save`]
//! touch the disk: call them off the GTK main loop.

use std::path::{Path, PathBuf};

use gettextrs::gettext;
use hospes_core::config::{self, DisplayDevice, HostLimits, Network, Resolution, Size, VmConfig};
use hospes_core::usb_host;

use crate::i18n::gettext_f;
use crate::usb_choices::{self, UsbChoice};
use crate::vm_control::error_chain;

/// Where a problem shows in the pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Memory.
    Memory,
    /// vCPUs.
    Cpus,
    /// Disks.
    Disks,
    /// The CD-ROM image.
    Cdrom,
    /// The display's resolution.
    Resolution,
    /// The USB devices (the field where an id is typed).
    Usb,
    /// Anything else: shown at the top.
    Other,
}

/// A problem with the settings, for one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where it shows.
    pub field: Field,
    /// What is wrong, for a person.
    pub message: String,
}

/// The editable settings, as the pane's widgets hold them.
#[derive(Debug, Clone, PartialEq)]
pub struct Form {
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Disk images and whether each is read-only.
    pub disks: Vec<(PathBuf, bool)>,
    /// The CD-ROM image; empty for none.
    pub cdrom: String,
    /// The display is on.
    pub display: bool,
    /// virtio-gpu (true) or std-VGA.
    pub virtio_gpu: bool,
    /// "1280x800".
    pub resolution: String,
    /// The resolution follows the window.
    pub follow_window: bool,
    /// NAT networking through passt.
    pub network: bool,
    /// Sound through PipeWire.
    pub sound: bool,
    /// USB devices handed to the guest, "vendor:product", as listed or typed.
    pub usb: Vec<String>,
}

impl Form {
    /// The form for `vm`.
    pub fn from_config(vm: &VmConfig) -> Form {
        Form {
            memory_mib: vm.memory.bytes() / Size::mib(1).bytes(),
            cpus: vm.cpus,
            disks: vm
                .disks
                .iter()
                .map(|disk| (disk.path.clone(), disk.read_only))
                .collect(),
            cdrom: vm
                .cdrom
                .as_ref()
                .map(|path| path.to_string_lossy().into_owned())
                .unwrap_or_default(),
            display: vm.display.enabled,
            virtio_gpu: vm.display.device == DisplayDevice::VirtioGpu,
            resolution: vm.display.resolution.to_string(),
            follow_window: vm.display.follow_window,
            network: !matches!(vm.network, Network::None),
            sound: vm.sound,
            usb: vm.usb.iter().map(ToString::to_string).collect(),
        }
    }

    /// `base` with this form's values; the first value that cannot be a setting is an
    /// error at its field.
    pub fn apply(&self, base: &VmConfig) -> Result<VmConfig, FieldError> {
        let mut vm = base.clone();
        vm.memory = Size::mib(self.memory_mib);
        vm.cpus = self.cpus;
        for (disk, (_, read_only)) in vm.disks.iter_mut().zip(&self.disks) {
            disk.read_only = *read_only;
        }
        let cdrom = self.cdrom.trim();
        vm.cdrom = (!cdrom.is_empty()).then(|| PathBuf::from(cdrom));
        vm.display.enabled = self.display;
        vm.display.device = if self.virtio_gpu {
            DisplayDevice::VirtioGpu
        } else {
            DisplayDevice::StdVga
        };
        vm.display.resolution = self.resolution.trim().parse::<Resolution>().map_err(|_| {
            FieldError {
                field: Field::Resolution,
                message: gettext_f(
                    // Translators: {min} and {max} are pixel counts.
                    "Write the resolution as width×height, like 1280x800, each side {min} to {max}",
                    &[
                        ("min", &Resolution::MIN.to_string()),
                        ("max", &Resolution::MAX.to_string()),
                    ],
                ),
            }
        })?;
        vm.display.follow_window = self.follow_window;
        vm.network = match (&base.network, self.network) {
            (_, false) => Network::None,
            (Network::User { .. }, true) => base.network.clone(),
            (Network::None, true) => Network::default(),
        };
        vm.sound = self.sound;
        vm.usb.clear();
        for text in &self.usb {
            let device = usb_choices::parse_id(text).map_err(|message| FieldError {
                field: Field::Usb,
                message,
            })?;
            if !vm.usb.contains(&device) {
                vm.usb.push(device);
            }
        }
        Ok(vm)
    }
}

/// What the pane opens with.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings as read.
    pub vm: VmConfig,
    /// Their form.
    pub form: Form,
    /// The USB devices to list.
    pub usb: Vec<UsbChoice>,
    /// Why the host's USB devices could not be read, if they could not.
    pub usb_error: Option<String>,
}

/// The settings in `config_path`, their form and the USB devices plugged into the host
/// whose sysfs is at `sysfs_root`. Blocking.
pub fn load(config_path: &Path, sysfs_root: &Path) -> Result<Loaded, String> {
    let vm = config::load(config_path).map_err(|err| error_chain(&err))?;
    let form = Form::from_config(&vm);
    let (host, usb_error) = match usb_host::scan(sysfs_root) {
        Ok(host) => (host, None),
        Err(err) => (Vec::new(), Some(error_chain(&err))),
    };
    let usb = usb_choices::choices(&vm.usb, &host);
    Ok(Loaded {
        vm,
        form,
        usb,
        usb_error,
    })
}

/// Checks `vm` the way the helper will (schema, files, this computer's limits) and writes
/// it atomically. Blocking.
pub fn save(config_path: &Path, vm: &VmConfig) -> Result<(), FieldError> {
    let other = |message: String| FieldError {
        field: Field::Other,
        message,
    };
    let text = config::to_text(vm).map_err(|err| other(error_chain(&err)))?;
    let vm_dir = config_path.parent().unwrap_or(Path::new("."));
    config::validate(&text, config_path, vm_dir, &HostLimits::detect()).map_err(|err| {
        let message = err
            .problem()
            .map_or_else(|| error_chain(&err), ToString::to_string);
        FieldError {
            field: field_of(err.field().unwrap_or_default()),
            message,
        }
    })?;
    config::save(config_path, vm).map_err(|err| other(error_chain(&err)))
}

/// The pane field for a vmm setting path such as `disks[0].path`.
pub fn field_of(setting: &str) -> Field {
    let head = setting.split(['.', '[']).next().unwrap_or_default();
    match head {
        "memory" => Field::Memory,
        "cpus" => Field::Cpus,
        "disks" => Field::Disks,
        "cdrom" => Field::Cdrom,
        "display" => Field::Resolution,
        "usb" => Field::Usb,
        _ => Field::Other,
    }
}

/// The note the pane shows for a VM that runs: settings are read when the helper starts
/// (USB switches act at once: `usb_live`).
pub fn restart_note() -> String {
    gettext(
        "The machine is running: changes take effect the next time it starts. USB devices switch at once.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hospes_core::library::{CreateRequest, HostResources, Library, Preset};

    fn machine() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let library = Library::open(dir.path().join("machines"))
            .unwrap()
            .with_host_resources(HostResources {
                cpus: 2,
                memory: Size::gib(4),
                free_disk: Size::gib(100),
            });
        let mut request = CreateRequest::new("Settings Test", Preset::Linux);
        request.disk_size = Some(Size(0));
        let machine = library.create(&request).unwrap();
        (dir, machine.config_path())
    }

    /// The settings and form at `path`, on a host without USB devices.
    fn read(path: &Path) -> (VmConfig, Form) {
        let loaded = load(path, Path::new("/nonexistent/sysfs")).unwrap();
        (loaded.vm, loaded.form)
    }

    #[test]
    fn a_form_round_trips_and_saves() {
        let (_dir, path) = machine();
        let (vm, mut form) = read(&path);
        assert_eq!(Form::from_config(&form.apply(&vm).unwrap()), form);
        form.cpus = 1;
        form.memory_mib = 512;
        form.resolution = "1024x768".into();
        form.network = false;
        form.sound = false;
        save(&path, &form.apply(&vm).unwrap()).unwrap();
        let (saved, saved_form) = read(&path);
        assert_eq!(saved_form, form);
        assert_eq!(saved.network, Network::None);
        assert_eq!(saved.memory, Size::mib(512));
    }

    #[test]
    fn a_bad_resolution_is_an_error_at_its_field() {
        let (_dir, path) = machine();
        let (vm, mut form) = read(&path);
        form.resolution = "huge".into();
        assert_eq!(form.apply(&vm).unwrap_err().field, Field::Resolution);
    }

    #[test]
    fn a_missing_cdrom_is_refused_at_the_cdrom_field() {
        let (_dir, path) = machine();
        let (vm, mut form) = read(&path);
        form.cdrom = "/nonexistent/install.iso".into();
        let err = save(&path, &form.apply(&vm).unwrap()).unwrap_err();
        assert_eq!(err.field, Field::Cdrom, "{err:?}");
        assert!(err.message.contains("install.iso"), "{}", err.message);
        let (unchanged, _) = read(&path);
        assert_eq!(unchanged.cdrom, None, "nothing written");
    }

    #[test]
    fn usb_devices_are_saved_once_each() {
        let (_dir, path) = machine();
        let (vm, mut form) = read(&path);
        form.usb = vec!["046d:c52b".into(), " 1050:0407".into(), "046D:C52B".into()];
        save(&path, &form.apply(&vm).unwrap()).unwrap();
        let (saved, saved_form) = read(&path);
        assert_eq!(saved_form.usb, ["046d:c52b", "1050:0407"]);
        assert_eq!(saved.usb.len(), 2);
    }

    #[test]
    fn a_bad_usb_id_is_an_error_at_the_usb_field() {
        let (_dir, path) = machine();
        let (vm, mut form) = read(&path);
        form.usb = vec!["046d:c52b".into(), "logitech".into()];
        let err = form.apply(&vm).unwrap_err();
        assert_eq!(err.field, Field::Usb);
        assert!(err.message.contains("“logitech”"), "{}", err.message);
    }

    #[test]
    fn load_lists_the_hosts_usb_devices() {
        let (_dir, path) = machine();
        let sysfs = tempfile::tempdir().unwrap();
        let device = sysfs.path().join("bus/usb/devices/1-1");
        std::fs::create_dir_all(&device).unwrap();
        std::fs::write(device.join("idVendor"), "046d\n").unwrap();
        std::fs::write(device.join("idProduct"), "c52b\n").unwrap();
        let loaded = load(&path, sysfs.path()).unwrap();
        assert_eq!(loaded.usb_error, None);
        assert_eq!(loaded.usb.len(), 1);
        assert!(loaded.usb[0].connected && !loaded.usb[0].chosen);
    }

    #[test]
    fn setting_paths_map_to_fields() {
        assert_eq!(field_of("disks[1].path"), Field::Disks);
        assert_eq!(field_of("display.resolution"), Field::Resolution);
        assert_eq!(field_of("memory"), Field::Memory);
        assert_eq!(field_of("usb[1]"), Field::Usb);
        assert_eq!(field_of("boot.kernel"), Field::Other);
    }
}
