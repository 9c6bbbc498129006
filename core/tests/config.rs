//! `vm.ron` schema tests: every field parsed and written back, defaults, the example file,
//! and every kind of error with its exact file, line, column and field.

use std::fs;
use std::path::{Path, PathBuf};

use hospes_core::config::{
    self, Boot, Clock, ConfigError, Disk, DiskBus, DiskFormat, Display, DisplayDevice, HostLimits,
    MacAddress, MachineUuid, Network, NetworkCard, OsKind, PortForward, Problem, Protocol,
    RebootAction, Resolution, Size, SoundCard, UsbDevice, VmConfig,
};

const MINIMAL: &str = r#"(
    version: 1,
    name: "t",
    os: Linux,
    cpus: 2,
    memory: "1G",
    boot: Kernel(kernel: "bzImage"),
    disks: [(path: "disk.raw")],
)
"#;

const FULL: &str = r#"(
    version: 1,
    name: "Every Field",
    os: Windows,
    cpus: 3,
    memory: "1536M",
    boot: Uefi(firmware: Some("/opt/OVMF_CODE.fd"), tpm: true, secure_boot: true),
    disks: [
        (path: "system.qcow2", format: Qcow2, read_only: false, bus: Sata),
        (path: "/srv/data.raw", format: Raw, read_only: true, bus: Virtio),
    ],
    cdrom: Some("/srv/win11.iso"),
    extra_cdroms: ["/usr/share/virtio-win/virtio-win.iso"],
    display: (enabled: true, resolution: "1920x1080", follow_window: false, device: StdVga),
    network: User(
        mac: "52:54:00:ab:cd:ef",
        forwards: [(protocol: Tcp, host: 3389, guest: 3389), (protocol: Udp, host: 6000, guest: 60)],
        card: E1000e,
    ),
    sound: true,
    sound_card: Hda,
    clock: Local,
    usb: ["046d:c52b", "1050:0407"],
    on_reboot: PowerOff,
    uuid: Some("0d475e6f-6592-51ec-a52f-7d556bdbdc48"),
)
"#;

fn full_expected() -> VmConfig {
    VmConfig {
        version: 1,
        name: "Every Field".into(),
        os: OsKind::Windows,
        cpus: 3,
        memory: Size::mib(1536),
        boot: Boot::Uefi {
            firmware: Some("/opt/OVMF_CODE.fd".into()),
            tpm: true,
            secure_boot: true,
        },
        disks: vec![
            Disk {
                path: "system.qcow2".into(),
                format: DiskFormat::Qcow2,
                read_only: false,
                bus: DiskBus::Sata,
            },
            Disk {
                path: "/srv/data.raw".into(),
                format: DiskFormat::Raw,
                read_only: true,
                bus: DiskBus::Virtio,
            },
        ],
        cdrom: Some("/srv/win11.iso".into()),
        extra_cdroms: vec!["/usr/share/virtio-win/virtio-win.iso".into()],
        display: Display {
            enabled: true,
            resolution: Resolution {
                width: 1920,
                height: 1080,
            },
            follow_window: false,
            device: DisplayDevice::StdVga,
        },
        network: Network::User {
            mac: MacAddress([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]),
            forwards: vec![
                PortForward {
                    protocol: Protocol::Tcp,
                    host: 3389,
                    guest: 3389,
                },
                PortForward {
                    protocol: Protocol::Udp,
                    host: 6000,
                    guest: 60,
                },
            ],
            card: NetworkCard::E1000e,
        },
        sound: true,
        sound_card: SoundCard::Hda,
        clock: Clock::Local,
        usb: vec![
            UsbDevice {
                vendor: 0x046d,
                product: 0xc52b,
            },
            UsbDevice {
                vendor: 0x1050,
                product: 0x0407,
            },
        ],
        on_reboot: RebootAction::PowerOff,
        uuid: Some(MachineUuid([
            0x0d, 0x47, 0x5e, 0x6f, 0x65, 0x92, 0x51, 0xec, 0xa5, 0x2f, 0x7d, 0x55, 0x6b, 0xdb,
            0xdc, 0x48,
        ])),
    }
}

fn parse(text: &str) -> Result<VmConfig, ConfigError> {
    config::parse(text, Path::new("vm.ron"))
}

fn error_text(text: &str) -> String {
    parse(text)
        .expect_err("the text should not parse")
        .to_string()
}

#[test]
fn parses_every_field() {
    assert_eq!(parse(FULL).unwrap(), full_expected());
}

#[test]
fn written_settings_read_back_the_same() {
    let kernel = VmConfig {
        boot: Boot::Kernel {
            kernel: "/boot/vmlinuz".into(),
            initrd: Some("initrd.img".into()),
            cmdline: "console=ttyS0 quiet \"quoted\"".into(),
        },
        network: Network::None,
        cdrom: None,
        display: Display {
            enabled: false,
            ..Display::default()
        },
        ..full_expected()
    };
    for cfg in [full_expected(), kernel] {
        let text = config::to_text(&cfg).unwrap();
        assert_eq!(parse(&text).unwrap(), cfg, "{text}");
    }
}

#[test]
fn each_field_is_read_from_the_text() {
    let base = parse(MINIMAL).unwrap();
    // (text replaced, replacement, the change it must make)
    type Change = fn(&mut VmConfig);
    let cases: [(&str, &str, Change); 16] = [
        ("name: \"t\"", "name: \"Other\"", |c| {
            c.name = "Other".into()
        }),
        ("os: Linux", "os: Other", |c| c.os = OsKind::Other),
        ("cpus: 2", "cpus: 7", |c| c.cpus = 7),
        ("memory: \"1G\"", "memory: \"20480K\"", |c| {
            c.memory = Size::kib(20480)
        }),
        ("memory: \"1G\"", "memory: 33554432", |c| {
            c.memory = Size::mib(32)
        }),
        (
            "Kernel(kernel: \"bzImage\")",
            "Kernel(kernel: \"k\", initrd: Some(\"i\"), cmdline: \"ro\")",
            |c| {
                c.boot = Boot::Kernel {
                    kernel: "k".into(),
                    initrd: Some("i".into()),
                    cmdline: "ro".into(),
                }
            },
        ),
        ("Kernel(kernel: \"bzImage\")", "Uefi()", |c| {
            c.boot = Boot::Uefi {
                firmware: None,
                tpm: false,
                secure_boot: false,
            }
        }),
        (
            "(path: \"disk.raw\")",
            "(path: \"d\", read_only: true)",
            |c| {
                c.disks[0].path = "d".into();
                c.disks[0].read_only = true;
            },
        ),
        (
            "(path: \"disk.raw\")",
            "(path: \"d\", format: Qcow2, bus: Sata)",
            |c| {
                c.disks[0].path = "d".into();
                c.disks[0].format = DiskFormat::Qcow2;
                c.disks[0].bus = DiskBus::Sata;
            },
        ),
        ("disks: [", "cdrom: \"x.iso\", disks: [", |c| {
            c.cdrom = Some("x.iso".into())
        }),
        (
            "disks: [",
            "display: (resolution: \"800x600\", enabled: false), disks: [",
            |c| {
                c.display.resolution = Resolution {
                    width: 800,
                    height: 600,
                };
                c.display.enabled = false;
            },
        ),
        (
            "disks: [",
            "display: (follow_window: false, device: StdVga), disks: [",
            |c| {
                c.display.follow_window = false;
                c.display.device = DisplayDevice::StdVga;
            },
        ),
        ("disks: [", "network: None, disks: [", |c| {
            c.network = Network::None
        }),
        ("disks: [", "sound: true, disks: [", |c| c.sound = true),
        ("disks: [", "usb: [\"abcd:0001\"], disks: [", |c| {
            c.usb = vec![UsbDevice {
                vendor: 0xabcd,
                product: 1,
            }]
        }),
        ("disks: [", "on_reboot: PowerOff, disks: [", |c| {
            c.on_reboot = RebootAction::PowerOff
        }),
    ];
    for (from, to, change) in cases {
        let text = MINIMAL.replacen(from, to, 1);
        assert_ne!(text, MINIMAL, "{from}");
        let mut expected = base.clone();
        change(&mut expected);
        assert_eq!(parse(&text).unwrap(), expected, "{to}");
    }
}

#[test]
fn optional_sections_take_their_defaults() {
    let cfg = parse(MINIMAL).unwrap();
    assert_eq!(cfg.cdrom, None);
    assert_eq!(cfg.display, Display::default());
    assert!(cfg.display.enabled && cfg.display.follow_window);
    assert_eq!(cfg.display.resolution.to_string(), "1280x800");
    assert_eq!(cfg.display.device, DisplayDevice::VirtioGpu);
    assert_eq!(cfg.network, Network::default());
    assert!(!cfg.sound);
    assert!(cfg.usb.is_empty());
    assert_eq!(cfg.on_reboot, RebootAction::Restart);
    assert_eq!(cfg.disks[0].format, DiskFormat::Raw);
    assert_eq!(cfg.disks[0].bus, DiskBus::Virtio);
    assert!(!cfg.disks[0].read_only);
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/vm.ron")
}

#[test]
fn the_documented_example_loads() {
    let text = fs::read_to_string(example_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.ron");
    fs::write(&path, &text).unwrap();
    fs::File::create(dir.path().join("disk.raw")).unwrap();
    let host = HostLimits {
        cpus: Some(2),
        memory: Some(Size::gib(4)),
    };
    let cfg = config::load_with(&path, &host).unwrap();
    assert_eq!(cfg.name, "Debian 12");
    assert_eq!(cfg.memory, Size::gib(4));
    assert_eq!(cfg.disks.len(), 1);
    assert_eq!(
        cfg.network,
        Network::User {
            mac: "52:54:00:3a:9c:01".parse().unwrap(),
            forwards: vec![
                PortForward {
                    protocol: Protocol::Tcp,
                    host: 2222,
                    guest: 22
                },
                PortForward {
                    protocol: Protocol::Udp,
                    host: 5353,
                    guest: 53
                },
            ],
            card: NetworkCard::Virtio,
        }
    );
    assert_eq!(cfg.usb.len(), 1);
}

#[test]
fn never_panics_on_a_truncated_file() {
    let text = fs::read_to_string(example_path()).unwrap();
    let last_paren = text.rfind(')').unwrap();
    for end in (0..=last_paren).filter(|&i| text.is_char_boundary(i)) {
        let error = parse(&text[..end]).expect_err("a truncated file is not valid");
        assert!(error.position().is_some(), "{error}");
    }
}

#[test]
fn the_example_mentions_every_field() {
    let text = fs::read_to_string(example_path()).unwrap();
    let docs = fs::read_to_string(example_path().with_file_name("../settings.md")).unwrap();
    let fields = [
        "version",
        "name",
        "os",
        "cpus",
        "memory",
        "boot",
        "kernel",
        "initrd",
        "cmdline",
        "firmware",
        "tpm",
        "disks",
        "path",
        "format",
        "read_only",
        "bus",
        "cdrom",
        "display",
        "enabled",
        "resolution",
        "follow_window",
        "device",
        "network",
        "mac",
        "forwards",
        "protocol",
        "host",
        "guest",
        "sound",
        "usb",
        "on_reboot",
    ];
    for field in fields {
        assert!(text.contains(&format!("{field}:")), "example lacks {field}");
        assert!(
            docs.contains(&format!("`{field}`")),
            "settings.md lacks {field}"
        );
    }
}

#[test]
fn reports_a_bad_size_at_its_value() {
    let text = MINIMAL.replace("\"1G\"", "\"4Q\"");
    assert_eq!(
        error_text(&text),
        "vm.ron:6:13: memory: bad size \"4Q\" (write it like 4G or 512M)"
    );
    let error = parse(&text).unwrap_err();
    assert_eq!(error.position(), Some((6, 13)));
    assert_eq!(error.field(), Some("memory"));
}

#[test]
fn reports_a_wrong_type_at_its_value() {
    let text = MINIMAL.replace("cpus: 2", "cpus: \"two\"");
    assert_eq!(
        error_text(&text),
        "vm.ron:5:11: cpus: expected a whole number"
    );
    let text = MINIMAL.replace("name: \"t\"", "name: 5");
    assert_eq!(
        error_text(&text),
        "vm.ron:3:11: name: expected a string in double quotes"
    );
    let text = MINIMAL.replace("disks: [", "sound: \"yes\", disks: [");
    assert_eq!(
        error_text(&text),
        "vm.ron:8:12: sound: expected true or false"
    );
    let text = MINIMAL.replace("[(path: \"disk.raw\")]", "\"disk.raw\"");
    assert_eq!(
        error_text(&text),
        "vm.ron:8:12: disks: expected a list in [ ]"
    );
    let text = MINIMAL.replace("Kernel(kernel: \"bzImage\")", "Kernel");
    assert_eq!(
        error_text(&text),
        "vm.ron:7:11: boot: expected settings in ( )"
    );
    let text = MINIMAL.replace("disks: [", "display: true, disks: [");
    assert_eq!(
        error_text(&text),
        "vm.ron:8:14: display: expected settings in ( ), found `true`"
    );
    let text = MINIMAL.replace("os: Linux", "os: \"Linux\"");
    assert_eq!(
        error_text(&text),
        "vm.ron:4:9: os: expected a name without quotes (like Linux or Restart)"
    );
    let text = MINIMAL.replace(
        "disks: [",
        "network: User(mac: \"52:54:00:00:00:01\", forwards: [(host: 70000, guest: 1)]), disks: [",
    );
    assert_eq!(
        error_text(&text),
        "vm.ron:8:63: network.forwards[0].host: the number is out of range"
    );
}

#[test]
fn reports_an_unknown_field_at_its_name() {
    let text = MINIMAL.replace("    cpus: 2,\n", "    cpus: 2,\n    colour: 3,\n");
    let error = parse(&text).unwrap_err();
    assert!(matches!(
        error.problem(),
        Some(Problem::UnknownField { found, .. }) if found == "colour"
    ));
    assert!(
        error
            .to_string()
            .starts_with("vm.ron:6:5: colour: unknown field `colour` (expected one of `version`"),
        "{error}"
    );
}

#[test]
fn reports_an_unknown_nested_field_with_its_path() {
    let text = MINIMAL.replace("(path: \"disk.raw\")", "(path: \"disk.raw\", size: \"1G\")");
    assert_eq!(
        error_text(&text),
        "vm.ron:8:32: disks[0].size: unknown field `size` (expected one of `path`, `format`, `read_only`, `bus`)"
    );
    let text = MINIMAL.replace(
        "kernel: \"bzImage\"",
        "kernel: \"bzImage\", initramfs: \"i\"",
    );
    assert_eq!(
        error_text(&text),
        "vm.ron:7:37: boot.initramfs: unknown field `initramfs` (expected one of `kernel`, `initrd`, `cmdline`)"
    );
}

#[test]
fn reports_a_missing_field_where_its_section_ends() {
    let text = MINIMAL.replace("    cpus: 2,\n", "");
    assert_eq!(
        error_text(&text),
        "vm.ron:8:1: cpus: missing (this field is required)"
    );
    let text = MINIMAL.replace("Kernel(kernel: \"bzImage\")", "Kernel()");
    assert_eq!(
        error_text(&text),
        "vm.ron:7:18: boot.kernel: missing (this field is required)"
    );
}

#[test]
fn reports_an_unknown_choice() {
    let text = MINIMAL.replace("os: Linux", "os: Linx");
    assert_eq!(
        error_text(&text),
        "vm.ron:4:9: os: unknown value `Linx` (expected one of `Linux`, `Windows`, `Other`)"
    );
    let text = MINIMAL.replace("(path: \"disk.raw\")", "(path: \"disk.raw\", format: Vmdk)");
    assert_eq!(
        error_text(&text),
        "vm.ron:8:40: disks[0].format: unknown value `Vmdk` (expected one of `Raw`, `Qcow2`)"
    );
}

#[test]
fn reports_values_that_do_not_make_sense() {
    let cases = [
        (
            "version: 1",
            "version: 2",
            "vm.ron:2:14: version: version 2 is not supported (this Hospes reads version 1)",
        ),
        (
            "cpus: 2",
            "cpus: 0",
            "vm.ron:5:11: cpus: 0 vCPUs: give 1 to 255",
        ),
        (
            "\"1G\"",
            "\"1M\"",
            "vm.ron:6:13: memory: 1M is too little memory (at least 16M)",
        ),
        (
            "name: \"t\"",
            "name: \" \"",
            "vm.ron:3:11: name: the name is empty",
        ),
        (
            "disks: [",
            "display: (resolution: \"1280*800\"),\n    disks: [",
            "vm.ron:8:27: display.resolution: bad resolution \"1280*800\" (write it like \"1280x800\", each side 320..=16384)",
        ),
        (
            "disks: [",
            "uuid: Some(\"0d475e6f-6592-51ec-a52f\"),\n    disks: [",
            "vm.ron:8:11: uuid: bad UUID \"0d475e6f-6592-51ec-a52f\" (write it like \"0d475e6f-6592-51ec-a52f-7d556bdbdc48\")",
        ),
        (
            "disks: [",
            "network: User(mac: \"52:54:00:00:00\"),\n    disks: [",
            "vm.ron:8:24: network.mac: bad MAC address \"52:54:00:00:00\" (write it like \"52:54:00:12:34:56\")",
        ),
        (
            "disks: [",
            "network: User(mac: \"01:54:00:00:00:01\"),\n    disks: [",
            "vm.ron:8:24: network.mac: MAC address \"01:54:00:00:00:01\" is a multicast address (the first byte must be even)",
        ),
        (
            "disks: [",
            "usb: [\"046d:c52b\", \"logitech\"],\n    disks: [",
            "vm.ron:8:24: usb[1]: bad USB device \"logitech\" (write vendor:product in hex, like \"046d:c52b\")",
        ),
        (
            "disks: [",
            "usb: [\"046d:c52b\", \"046D:C52B\"],\n    disks: [",
            "vm.ron:8:24: usb[1]: USB device 046d:c52b is listed twice",
        ),
        (
            "disks: [",
            "network: User(mac: \"52:54:00:00:00:01\", forwards: [(host: 80, guest: 0)]),\n    disks: [",
            "vm.ron:8:74: network.forwards[0].guest: port 0 cannot be forwarded (use 1 to 65535)",
        ),
        (
            "disks: [",
            "network: User(mac: \"52:54:00:00:00:01\", forwards: [\n        (host: 80, guest: 80),\n        (host: 80, guest: 8080),\n    ]),\n    disks: [",
            "vm.ron:10:16: network.forwards[1].host: host port 80 (Tcp) is forwarded twice",
        ),
        (
            "(path: \"disk.raw\")",
            "(path: \"\")",
            "vm.ron:8:20: disks[0].path: the path is empty",
        ),
        (
            "cpus: 2,",
            "cpus: 2,\n    cpus: 3,",
            "vm.ron:6:5: cpus: given more than once",
        ),
        ("cpus: 2,", "cpus: 2", "vm.ron:6:5: cpus: expected comma"),
        (
            "memory: \"1G\"",
            "memory: 99999999999999999999",
            "vm.ron:6:13: memory: expected a size like \"4G\" or \"512M\", found the floating point number `100000000000000000000`",
        ),
    ];
    for (from, to, expected) in cases {
        let text = MINIMAL.replacen(from, to, 1);
        assert_ne!(text, MINIMAL, "{from}");
        assert_eq!(error_text(&text), expected, "{text}");
    }
}

/// A VM folder holding `text` as vm.ron and the named empty files.
fn vm_folder(text: &str, files: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.ron");
    fs::write(&path, text).unwrap();
    for file in files {
        fs::write(dir.path().join(file), b"").unwrap();
    }
    (dir, path)
}

const ROOMY: HostLimits = HostLimits {
    cpus: Some(64),
    memory: Some(Size::gib(256)),
};

#[test]
fn loads_when_files_exist_and_the_host_is_big_enough() {
    let (_dir, path) = vm_folder(MINIMAL, &["bzImage", "disk.raw"]);
    assert_eq!(
        config::load_with(&path, &ROOMY).unwrap(),
        parse(MINIMAL).unwrap()
    );
}

#[test]
fn reports_a_missing_kernel_file() {
    let (dir, path) = vm_folder(MINIMAL, &["disk.raw"]);
    let error = config::load_with(&path, &ROOMY).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:7:26: boot.kernel: file not found: {}",
            path.display(),
            dir.path().join("bzImage").display()
        )
    );
}

#[test]
fn reports_a_missing_disk_file() {
    let text = MINIMAL.replace(
        "[(path: \"disk.raw\")]",
        "[\n        (path: \"disk.raw\"),\n        (path: \"/nonexistent/hospes/b.qcow2\", format: Qcow2),\n    ]",
    );
    let (_dir, path) = vm_folder(&text, &["bzImage", "disk.raw"]);
    let error = config::load_with(&path, &ROOMY).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:10:16: disks[1].path: file not found: /nonexistent/hospes/b.qcow2",
            path.display()
        )
    );
    assert_eq!(
        error.problem(),
        Some(&Problem::MissingFile("/nonexistent/hospes/b.qcow2".into()))
    );
}

#[test]
fn reports_memory_above_the_host_ram() {
    let (_dir, path) = vm_folder(MINIMAL, &["bzImage", "disk.raw"]);
    let host = HostLimits {
        cpus: Some(64),
        memory: Some(Size::mib(768)),
    };
    let error = config::load_with(&path, &host).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:6:13: memory: 1G is more memory than this computer has (768M)",
            path.display()
        )
    );
}

#[test]
fn reports_more_vcpus_than_the_host_has() {
    let (_dir, path) = vm_folder(MINIMAL, &["bzImage", "disk.raw"]);
    let host = HostLimits {
        cpus: Some(1),
        memory: Some(Size::gib(64)),
    };
    let error = config::load_with(&path, &host).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:5:11: cpus: 2 vCPUs is more than this computer has (1)",
            path.display()
        )
    );
    assert_eq!(
        error.problem(),
        Some(&Problem::TooManyCpus { cpus: 2, host: 1 })
    );
}

#[test]
fn reports_an_unreadable_file() {
    let error = config::load(Path::new("/nonexistent/hospes/vm.ron")).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/hospes/vm.ron: cannot read:")
    );
}

#[test]
fn save_writes_text_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.ron");
    config::save(&path, &full_expected()).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("// Hospes VM settings."));
    assert_eq!(parse(&text).unwrap(), full_expected());
}

#[test]
fn save_refuses_settings_that_would_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.ron");
    let broken = VmConfig {
        cpus: 0,
        ..full_expected()
    };
    let error = config::save(&path, &broken).unwrap_err();
    assert_eq!(error.field(), Some("cpus"));
    assert!(!path.exists());
}

#[test]
fn replaces_one_value_and_keeps_comments() {
    let text = "// top\n(\n    name: \"old\", // the name\n    version: 1,\n)\n";
    assert_eq!(
        config::replace_value(text, "name", "\"new\"").unwrap(),
        "// top\n(\n    name: \"new\", // the name\n    version: 1,\n)\n"
    );
    assert_eq!(config::replace_value(text, "cpus", "2"), None);
}

#[test]
fn a_uuid_reads_and_writes_in_its_text_form_and_nothing_else() {
    let text = "0d475e6f-6592-51ec-a52f-7d556bdbdc48";
    let uuid: MachineUuid = text.parse().unwrap();
    assert_eq!(uuid.0[0], 0x0d);
    assert_eq!(uuid.0[15], 0x48);
    assert_eq!(uuid.to_string(), text);
    for bad in [
        "+d475e6f-6592-51ec-a52f-7d556bdbdc48",
        "0d475e6f-6592-51ec-a52f-7d556bdbdc4g",
        "0d475e6f65925-1ec-a52f-7d556bdbdc48",
        "0d475e6f-6592-51ec-a52f",
    ] {
        assert!(bad.parse::<MachineUuid>().is_err(), "{bad}");
    }
}
