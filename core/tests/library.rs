//! VM library tests: create, list, find, rename, delete (with and without disks),
//! import (copy and move), id collisions, and the disk images created.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use hospes_core::config::{
    self, Boot, Clock, DiskBus, DiskFormat, DisplayDevice, HostLimits, Network, NetworkCard,
    OsKind, RebootAction, Size, SoundCard, UsbDevice,
};
use hospes_core::library::{
    CreateRequest, HostResources, ImportMode, Library, LibraryError, Preset,
};

const HOST: HostResources = HostResources {
    cpus: 8,
    memory: Size::gib(16),
    free_disk: Size::gib(100),
};

const LIMITS: HostLimits = HostLimits {
    cpus: Some(8),
    memory: Some(Size::gib(16)),
};

fn library(root: &Path) -> Library {
    Library::open(root.join("machines"))
        .unwrap()
        .with_host_limits(LIMITS)
        .with_host_resources(HOST)
}

fn create(lib: &Library, name: &str, preset: Preset) -> hospes_core::library::Machine {
    lib.create(&CreateRequest::new(name, preset)).unwrap()
}

#[test]
fn creates_a_linux_vm_sized_for_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let machine = create(&lib, "Debian 12", Preset::Linux);
    assert_eq!(machine.id, "debian-12");
    assert_eq!(machine.dir, lib.root().join("debian-12"));
    let cfg = machine.config.unwrap();
    assert_eq!(cfg.name, "Debian 12");
    assert_eq!(cfg.os, OsKind::Linux);
    assert_eq!(cfg.cpus, 4);
    assert_eq!(cfg.memory, Size::gib(4));
    assert_eq!(cfg.boot, Boot::Bios { firmware: None });
    let uuid = cfg.uuid.expect("a firmware-boot VM gets a machine UUID");
    assert_eq!(uuid.0[6] >> 4, 4, "a random (version 4) UUID: {uuid}");
    assert_ne!(
        create(&lib, "Debian 13", Preset::Linux)
            .config
            .unwrap()
            .uuid,
        Some(uuid),
        "each VM its own"
    );
    assert_eq!(cfg.display.device, DisplayDevice::StdVga);
    assert!(matches!(cfg.network, Network::User { .. }));
    assert!(cfg.sound);
    assert_eq!(cfg.disks.len(), 1);
    assert_eq!(cfg.disks[0].path, Path::new("disk.raw"));
    assert_eq!(cfg.disks[0].format, DiskFormat::Raw);
    // What is on disk loads to the same settings.
    assert_eq!(
        config::load_with(&machine.dir.join("vm.ron"), &LIMITS).unwrap(),
        cfg
    );
}

#[test]
fn disk_images_are_sparse_and_private() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let mut request = CreateRequest::new("sparse", Preset::Linux);
    request.disk_size = Some(Size::gib(40));
    let machine = lib.create(&request).unwrap();
    let meta = fs::metadata(machine.dir.join("disk.raw")).unwrap();
    assert_eq!(meta.len(), 40 << 30);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "{} blocks allocated",
        meta.blocks()
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = fs::metadata(&machine.dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
}

#[test]
fn creates_windows_and_kernel_presets() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let iso = tmp.path().join("win11.iso");
    fs::write(&iso, b"iso").unwrap();
    let mut request = CreateRequest::new("Windows 11", Preset::Windows11);
    request.iso = Some(iso.clone());
    let win = lib.create(&request).unwrap().config.unwrap();
    assert_eq!(win.os, OsKind::Windows);
    assert_eq!(win.cpus, 4);
    assert_eq!(win.memory, Size::gib(8));
    assert_eq!(
        win.boot,
        Boot::Uefi {
            firmware: None,
            tpm: true,
            secure_boot: true,
        }
    );
    assert_eq!(win.display.device, DisplayDevice::StdVga);
    assert_eq!(win.disks[0].bus, DiskBus::Sata);
    assert_eq!(
        fs::metadata(tmp.path().join("machines/windows-11/disk.raw"))
            .unwrap()
            .len(),
        64 << 30
    );
    assert_eq!(win.cdrom, Some(iso.canonicalize().unwrap()));
    // Devices Windows drives with its inbox drivers, and the clock it keeps.
    assert!(matches!(
        win.network,
        Network::User {
            card: NetworkCard::E1000e,
            ..
        }
    ));
    assert!(win.sound);
    assert_eq!(win.sound_card, SoundCard::Hda);
    assert_eq!(win.clock, Clock::Local);

    // The drivers disc goes in a second drive.
    let drivers = tmp.path().join("virtio-win.iso");
    fs::write(&drivers, b"drivers").unwrap();
    let mut request = CreateRequest::new("Windows drivers", Preset::Windows11);
    request.drivers_iso = Some(drivers.clone());
    let win = lib.create(&request).unwrap().config.unwrap();
    assert_eq!(win.extra_cdroms, [drivers.canonicalize().unwrap()]);
    // ... for Windows only.
    let mut request = CreateRequest::new("Linux drivers", Preset::Linux);
    request.drivers_iso = Some(drivers.clone());
    let err = lib.create(&request).unwrap_err().to_string();
    assert!(err.contains("windows11"), "{err}");
    let linux = lib
        .create(&CreateRequest::new("Linux", Preset::Linux))
        .unwrap()
        .config
        .unwrap();
    assert!(linux.extra_cdroms.is_empty());
    assert_eq!(linux.sound_card, SoundCard::Virtio);
    assert_eq!(linux.clock, Clock::Utc);

    let kernel = tmp.path().join("bzImage");
    fs::write(&kernel, b"kernel").unwrap();
    let mut request = CreateRequest::new("k", Preset::Kernel);
    request.kernel = Some(kernel.clone());
    request.cmdline = Some("console=ttyS0 quiet".into());
    request.memory = Some(Size::mib(256));
    let k = lib.create(&request).unwrap().config.unwrap();
    assert_eq!(
        k.boot,
        Boot::Kernel {
            kernel: kernel.canonicalize().unwrap(),
            initrd: None,
            cmdline: "console=ttyS0 quiet".into()
        }
    );
    assert_eq!(k.memory, Size::mib(256));
    assert!(k.disks.is_empty());
    assert!(!k.display.enabled);
    assert_eq!(k.network, Network::None);
    assert_eq!(k.on_reboot, RebootAction::PowerOff);
}

#[test]
fn refuses_requests_it_cannot_meet() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let error = lib
        .create(&CreateRequest::new("k", Preset::Kernel))
        .unwrap_err();
    assert!(matches!(error, LibraryError::Missing { .. }), "{error}");
    let mut request = CreateRequest::new("big", Preset::Linux);
    request.memory = Some(Size::gib(32));
    let error = lib.create(&request).unwrap_err();
    assert_eq!(
        error.to_string(),
        "memory: 32G is more memory than this computer has (16G)"
    );
    let mut request = CreateRequest::new("iso", Preset::Linux);
    request.iso = Some(tmp.path().join("missing.iso"));
    assert!(matches!(
        lib.create(&request).unwrap_err(),
        LibraryError::InputNotFound(_)
    ));
    let error = lib
        .create(&CreateRequest::new("  ", Preset::Linux))
        .unwrap_err();
    assert!(matches!(error, LibraryError::BadName { .. }), "{error}");
    // Nothing was left behind by the refused requests.
    assert_eq!(fs::read_dir(lib.root()).unwrap().count(), 0);
}

#[test]
fn gives_colliding_names_unique_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    assert_eq!(create(&lib, "Fedora 40", Preset::Linux).id, "fedora-40");
    assert_eq!(create(&lib, "fedora-40", Preset::Linux).id, "fedora-40-2");
    assert_eq!(create(&lib, "Fedora (40)", Preset::Linux).id, "fedora-40-3");
    // A leftover folder (kept disks of a deleted VM) also takes its id.
    fs::create_dir(lib.root().join("arch")).unwrap();
    assert_eq!(create(&lib, "Arch", Preset::Linux).id, "arch-2");
}

#[test]
fn refuses_a_name_already_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    create(&lib, "Debian", Preset::Linux);
    let error = lib
        .create(&CreateRequest::new("debian", Preset::Linux))
        .unwrap_err();
    assert_eq!(error.to_string(), "a VM named \"debian\" already exists");
}

#[test]
fn lists_by_name_with_broken_vms_included() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    create(&lib, "zeta", Preset::Linux);
    create(&lib, "Alpha", Preset::Linux);
    let broken = lib.root().join("broken");
    fs::create_dir(&broken).unwrap();
    fs::write(broken.join("vm.ron"), "(version: 1, colour: 3)").unwrap();
    fs::create_dir(lib.root().join("not-a-vm")).unwrap();
    let machines = lib.list().unwrap();
    let names: Vec<&str> = machines.iter().map(|m| m.name()).collect();
    assert_eq!(names, ["Alpha", "broken", "zeta"]);
    let error = machines[1].config.as_ref().unwrap_err();
    assert_eq!(error.position(), Some((1, 14)));
    assert_eq!(error.field(), Some("colour"));
}

#[test]
fn finds_by_id_or_name() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    create(&lib, "Debian 12", Preset::Linux);
    assert_eq!(lib.find("debian-12").unwrap().name(), "Debian 12");
    assert_eq!(lib.find("Debian 12").unwrap().id, "debian-12");
    assert_eq!(lib.find("DEBIAN 12").unwrap().id, "debian-12");
    assert!(matches!(lib.find("ubuntu"), Err(LibraryError::NotFound(_))));
}

#[test]
fn renames_keeping_the_id_and_comments() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let machine = create(&lib, "Old", Preset::Linux);
    let path = machine.dir.join("vm.ron");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("    cpus:", "    // mine\n    cpus:");
    fs::write(&path, &text).unwrap();
    let renamed = lib.rename("Old", "New \"quoted\" name").unwrap();
    assert_eq!(renamed.id, "old");
    assert_eq!(renamed.dir, machine.dir);
    assert_eq!(renamed.config.unwrap().name, "New \"quoted\" name");
    let new_text = fs::read_to_string(&path).unwrap();
    assert!(new_text.contains("    // mine\n    cpus:"));
    assert_eq!(lib.find("New \"quoted\" name").unwrap().id, "old");
    create(&lib, "Other", Preset::Linux);
    assert!(matches!(
        lib.rename("other", "new \"QUOTED\" name"),
        Err(LibraryError::NameTaken(_))
    ));
}

#[test]
fn delete_keeps_disk_images_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let machine = create(&lib, "keep", Preset::Linux);
    fs::write(machine.dir.join("OVMF_VARS.fd"), b"vars").unwrap();
    let deleted = lib.delete("keep", false).unwrap();
    assert!(!deleted.dir_removed);
    assert_eq!(deleted.kept_disks, [machine.dir.join("disk.raw")]);
    assert!(deleted.deleted_disks.is_empty());
    assert!(machine.dir.join("disk.raw").exists());
    assert!(!machine.dir.join("vm.ron").exists());
    assert!(!machine.dir.join("OVMF_VARS.fd").exists());
    assert!(lib.list().unwrap().is_empty());
    assert!(matches!(lib.find("keep"), Err(LibraryError::NotFound(_))));
}

#[test]
fn delete_with_disks_removes_the_folder_but_never_outside_disks() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let machine = create(&lib, "gone", Preset::Linux);
    let outside = tmp.path().join("shared-data.raw");
    fs::write(&outside, b"data").unwrap();
    let path = machine.dir.join("vm.ron");
    let mut cfg = config::load_with(&path, &LIMITS).unwrap();
    cfg.disks.push(hospes_core::config::Disk {
        path: outside.clone(),
        format: DiskFormat::Raw,
        read_only: false,
        bus: DiskBus::Virtio,
    });
    config::save(&path, &cfg).unwrap();
    let deleted = lib.delete("gone", true).unwrap();
    assert!(deleted.dir_removed);
    assert_eq!(deleted.deleted_disks, [machine.dir.join("disk.raw")]);
    assert_eq!(deleted.kept_disks, std::slice::from_ref(&outside));
    assert!(!machine.dir.exists());
    assert_eq!(fs::read(&outside).unwrap(), b"data");
}

#[test]
fn deletes_a_broken_vm_by_id_keeping_image_files() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let dir = lib.root().join("broken");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("vm.ron"), "not ron at all").unwrap();
    fs::write(dir.join("system.qcow2"), b"q").unwrap();
    let deleted = lib.delete("broken", false).unwrap();
    assert_eq!(deleted.kept_disks, [dir.join("system.qcow2")]);
    assert!(dir.join("system.qcow2").exists());
}

/// A VM folder outside the library, with a 1 GiB sparse disk holding a little data.
fn foreign_vm(parent: &Path, name: &str) -> std::path::PathBuf {
    let dir = parent.join(format!("{name}-folder"));
    fs::create_dir(&dir).unwrap();
    let disk = fs::File::create(dir.join("disk.raw")).unwrap();
    disk.set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&disk, b"MBR!", 0).unwrap();
    fs::create_dir(dir.join("nvram")).unwrap();
    fs::write(dir.join("nvram/vars.fd"), b"vars").unwrap();
    let text = format!(
        "(version: 1, name: {name:?}, os: Linux, cpus: 1, memory: \"512M\",\n boot: Uefi(), disks: [(path: \"disk.raw\")])\n"
    );
    fs::write(dir.join("vm.ron"), text).unwrap();
    dir
}

#[test]
fn imports_by_copy_keeping_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let source = foreign_vm(tmp.path(), "Imported");
    let machine = lib.import(&source, ImportMode::Copy).unwrap();
    assert_eq!(machine.id, "imported");
    assert_eq!(machine.config.as_ref().unwrap().name, "Imported");
    let disk = machine.dir.join("disk.raw");
    let meta = fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "copy not sparse: {} blocks",
        meta.blocks()
    );
    assert_eq!(&fs::read(&disk).unwrap()[..4], b"MBR!");
    assert_eq!(
        fs::read(machine.dir.join("nvram/vars.fd")).unwrap(),
        b"vars"
    );
    assert!(source.join("vm.ron").exists(), "copy must leave the source");
    // Importing the same VM again clashes on its name.
    assert!(matches!(
        lib.import(&source, ImportMode::Copy),
        Err(LibraryError::NameTaken(_))
    ));
}

#[test]
fn imports_by_move() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let source = foreign_vm(tmp.path(), "Moved");
    let machine = lib.import(&source, ImportMode::Move).unwrap();
    assert!(!source.exists());
    assert!(machine.dir.join("disk.raw").exists());
    assert!(machine.config.is_ok());
}

#[test]
fn refuses_to_import_a_broken_or_non_vm_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(
        lib.import(&empty, ImportMode::Copy),
        Err(LibraryError::NotAVmFolder(_))
    ));
    let source = foreign_vm(tmp.path(), "nodisk");
    fs::remove_file(source.join("disk.raw")).unwrap();
    let error = lib.import(&source, ImportMode::Copy).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:2:31: disks[0].path: file not found: {}",
            source.canonicalize().unwrap().join("vm.ron").display(),
            source.canonicalize().unwrap().join("disk.raw").display()
        )
    );
    assert!(lib.list().unwrap().is_empty());
    assert_eq!(fs::read_dir(lib.root()).unwrap().count(), 0);
}

#[test]
fn finds_a_vm_by_name_when_only_a_file_check_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let iso = tmp.path().join("install.iso");
    fs::write(&iso, b"iso").unwrap();
    let mut request = CreateRequest::new("Debian 12", Preset::Linux);
    request.iso = Some(iso.clone());
    lib.create(&request).unwrap();
    fs::remove_file(&iso).unwrap();
    let machine = lib.find("Debian 12").unwrap();
    assert_eq!(machine.id, "debian-12");
    let error = machine.config.as_ref().unwrap_err();
    assert_eq!(error.field(), Some("cdrom"));
    assert_eq!(machine.written_config().unwrap().name, "Debian 12");
    // Its name stays taken.
    let error = lib
        .create(&CreateRequest::new("debian 12", Preset::Linux))
        .unwrap_err();
    assert!(matches!(error, LibraryError::NameTaken(_)), "{error}");
}

#[test]
fn set_usb_replaces_the_list_in_place_keeping_comments() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let m = create(&lib, "Stick", Preset::Linux);
    let path = m.config_path();
    let original = fs::read_to_string(&path).unwrap();
    assert!(original.contains("usb: []"), "{original}");
    let commented = original.replace("usb: [],", "usb: [], // the receiver, later");
    let commented = format!("// my notes\n{commented}");
    fs::write(&path, &commented).unwrap();

    let receiver: UsbDevice = "046d:c52b".parse().unwrap();
    let stick: UsbDevice = "0781:5581".parse().unwrap();
    let m = lib.set_usb("Stick", &[receiver, stick, receiver]).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("// my notes\n"), "{text}");
    assert!(
        text.contains(r#"usb: ["046d:c52b", "0781:5581"], // the receiver, later"#),
        "listed once each, the comment after it kept: {text}"
    );
    assert_eq!(m.written_config().unwrap().usb, [receiver, stick]);

    lib.set_usb("stick", &[]).unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        commented,
        "back as it was"
    );
}
