//! The `vm.ron` schema, version 1: every setting a VM has, as plain serde types.
//!
//! Each struct denies unknown fields, so a misspelt setting is an error rather than a
//! setting silently ignored. Optional sections have defaults, so a short file is a valid
//! file. docs/settings.md documents every field; keep the two in step.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::size::Size;

/// The schema version this code reads and writes.
pub const CURRENT_VERSION: u32 = 1;

/// One VM's settings: the contents of its `vm.ron`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Schema version; always [`CURRENT_VERSION`] for files this code writes.
    pub version: u32,
    /// The name people see. Unique within a library.
    pub name: String,
    /// The guest operating system family; picks guest-friendly defaults.
    pub os: OsKind,
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// Guest RAM.
    pub memory: Size,
    /// How the VM boots.
    pub boot: Boot,
    /// Disk images, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// An install or live image attached as a CD-ROM.
    #[serde(default)]
    pub cdrom: Option<PathBuf>,
    /// More CD-ROM drives after the first, each with its image (the virtio-win drivers
    /// disc of a Windows VM). Firmware boot only.
    #[serde(default)]
    pub extra_cdroms: Vec<PathBuf>,
    /// The screen.
    #[serde(default)]
    pub display: Display,
    /// Networking.
    #[serde(default)]
    pub network: Network,
    /// Whether the guest has a sound card (played through PipeWire).
    #[serde(default)]
    pub sound: bool,
    /// The emulated sound card, when `sound` is on.
    #[serde(default)]
    pub sound_card: SoundCard,
    /// What the guest's hardware clock (the CMOS RTC) keeps: UTC, or local time as
    /// Windows expects.
    #[serde(default)]
    pub clock: Clock,
    /// Host USB devices handed to the guest.
    #[serde(default)]
    pub usb: Vec<UsbDevice>,
    /// What a reboot requested by the guest does.
    #[serde(default)]
    pub on_reboot: RebootAction,
    /// The machine's UUID, as firmware reports it (SMBIOS); guests (Windows activation,
    /// licence managers) tie themselves to it. `None`: derived from the VM's id.
    #[serde(default)]
    pub uuid: Option<MachineUuid>,
}

/// Guest operating system family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OsKind {
    /// Linux and other free Unix-likes with virtio drivers built in.
    Linux,
    /// Microsoft Windows.
    Windows,
    /// Anything else.
    Other,
}

/// How the VM boots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Boot {
    /// Load a Linux kernel (bzImage or ELF vmlinux) directly, without firmware.
    Kernel {
        /// The kernel image.
        kernel: PathBuf,
        /// An initial ramdisk.
        #[serde(default)]
        initrd: Option<PathBuf>,
        /// The kernel command line.
        #[serde(default)]
        cmdline: String,
    },
    /// Boot PC BIOS firmware (SeaBIOS), which boots the disks or the CD-ROM like a PC
    /// of the 2000s: every Linux installer and Windows up to 10.
    Bios {
        /// The firmware image; `None` uses the SeaBIOS installed with Hospes.
        #[serde(default)]
        firmware: Option<PathBuf>,
    },
    /// Boot UEFI firmware (OVMF), which boots the disks or the CD-ROM.
    Uefi {
        /// The firmware image; `None` uses the one installed with Hospes.
        #[serde(default)]
        firmware: Option<PathBuf>,
        /// Give the guest a TPM 2.0 (backed by swtpm), as Windows 11 requires.
        #[serde(default)]
        tpm: bool,
        /// Boot with UEFI Secure Boot on (OVMF's Secure Boot build, with SMM, and a
        /// variable store with Microsoft's keys enrolled), as Windows 11 expects.
        #[serde(default)]
        secure_boot: bool,
    },
}

/// The emulated sound card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SoundCard {
    /// virtio-snd: Linux has the driver built in.
    #[default]
    Virtio,
    /// Intel HD Audio (ICH9, 8086:293E) with a duplex codec: Windows has the driver inbox.
    Hda,
}

/// What the guest's hardware clock keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Clock {
    /// Coordinated Universal Time, as Linux expects.
    #[default]
    Utc,
    /// The host's local time, as Windows expects.
    Local,
}

/// The emulated network card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum NetworkCard {
    /// virtio-net: fastest; Linux has the driver built in.
    #[default]
    Virtio,
    /// Intel 82574L (e1000e, 8086:10D3): Windows has the driver inbox.
    E1000e,
}

/// One disk image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// The image file: relative to the VM folder, or absolute.
    pub path: PathBuf,
    /// The image format.
    #[serde(default)]
    pub format: DiskFormat,
    /// Attach read-only.
    #[serde(default)]
    pub read_only: bool,
    /// The controller the disk hangs off.
    #[serde(default)]
    pub bus: DiskBus,
}

/// Disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum DiskFormat {
    /// A plain image the host can loop-mount.
    #[default]
    Raw,
    /// QEMU copy-on-write v2.
    Qcow2,
}

/// Disk controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum DiskBus {
    /// virtio-blk: fastest, needs guest drivers (built into Linux).
    #[default]
    Virtio,
    /// AHCI SATA: slower, but every installer has a driver (Windows has no inbox virtio).
    Sata,
}

/// The screen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Display {
    /// Whether the VM has a screen at all; without one, use the serial console.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The resolution the guest starts with.
    #[serde(default)]
    pub resolution: Resolution,
    /// Change the guest resolution when the window is resized.
    #[serde(default = "default_true")]
    pub follow_window: bool,
    /// The emulated graphics card.
    #[serde(default)]
    pub device: DisplayDevice,
}

impl Default for Display {
    fn default() -> Display {
        Display {
            enabled: true,
            resolution: Resolution::default(),
            follow_window: true,
            device: DisplayDevice::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// The emulated graphics card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum DisplayDevice {
    /// Bochs/std-VGA (PCI 1234:1111): works with any firmware and installer.
    StdVga,
    /// virtio-gpu: resizes with the window; Linux and Windows (viogpudo) drivers.
    #[default]
    VirtioGpu,
}

/// A screen resolution, written `"1280x800"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resolution {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Resolution {
    /// The largest width or height accepted.
    pub const MAX: u32 = 16384;
    /// The smallest width or height accepted.
    pub const MIN: u32 = 320;
}

impl Default for Resolution {
    fn default() -> Resolution {
        Resolution {
            width: 1280,
            height: 800,
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for Resolution {
    type Err = String;

    fn from_str(text: &str) -> Result<Resolution, String> {
        let bad = || {
            format!(
                "bad resolution {text:?} (write it like \"1280x800\", each side {}..={})",
                Resolution::MIN,
                Resolution::MAX
            )
        };
        let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
        let side = |s: &str| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|v| (Resolution::MIN..=Resolution::MAX).contains(v))
        };
        match (side(w), side(h)) {
            (Some(width), Some(height)) => Ok(Resolution { width, height }),
            _ => Err(bad()),
        }
    }
}

/// Networking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Network {
    /// No network card.
    None,
    /// User-mode NAT through passt: no root, no bridge.
    User {
        /// The guest's MAC address; kept stable so the guest's DHCP lease and
        /// interface name stay the same.
        mac: MacAddress,
        /// Host ports forwarded to the guest.
        #[serde(default)]
        forwards: Vec<PortForward>,
        /// The emulated network card.
        #[serde(default)]
        card: NetworkCard,
    },
}

impl Default for Network {
    fn default() -> Network {
        Network::User {
            mac: MacAddress::HOSPES_DEFAULT,
            forwards: Vec::new(),
            card: NetworkCard::Virtio,
        }
    }
}

/// A host port forwarded to a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: Protocol,
    /// The port on the host (listening on loopback).
    pub host: u16,
    /// The port in the guest.
    pub guest: u16,
}

/// Transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// A MAC address, written `"52:54:00:12:34:56"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// The address used when a file names none: QEMU's locally administered prefix.
    pub const HOSPES_DEFAULT: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    /// A locally administered unicast address in the 52:54:00 prefix with the given
    /// last three bytes.
    pub fn with_suffix(suffix: [u8; 3]) -> MacAddress {
        MacAddress([0x52, 0x54, 0x00, suffix[0], suffix[1], suffix[2]])
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<MacAddress, String> {
        let bad = || format!("bad MAC address {text:?} (write it like \"52:54:00:12:34:56\")");
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if bytes[0] & 1 != 0 {
            return Err(format!(
                "MAC address {text:?} is a multicast address (the first byte must be even)"
            ));
        }
        Ok(MacAddress(bytes))
    }
}

/// A machine UUID, written `"0d475e6f-6592-51ec-a52f-7d556bdbdc48"`: 16 bytes in the
/// order the text shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MachineUuid(pub [u8; 16]);

impl fmt::Display for MachineUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for MachineUuid {
    type Err = String;

    fn from_str(text: &str) -> Result<MachineUuid, String> {
        let bad = || {
            format!("bad UUID {text:?} (write it like \"0d475e6f-6592-51ec-a52f-7d556bdbdc48\")")
        };
        let groups: Vec<&str> = text.split('-').collect();
        if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex = groups.concat();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(MachineUuid(bytes))
    }
}

/// A host USB device handed to the guest, written `"046d:c52b"` (vendor:product, hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UsbDevice {
    /// USB vendor id.
    pub vendor: u16,
    /// USB product id.
    pub product: u16,
}

impl fmt::Display for UsbDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor, self.product)
    }
}

impl FromStr for UsbDevice {
    type Err = String;

    fn from_str(text: &str) -> Result<UsbDevice, String> {
        let bad =
            || format!("bad USB device {text:?} (write vendor:product in hex, like \"046d:c52b\")");
        let (vendor, product) = text.split_once(':').ok_or_else(bad)?;
        let hex = |s: &str| {
            if s.len() == 4 {
                u16::from_str_radix(s, 16).ok()
            } else {
                None
            }
        };
        match (hex(vendor), hex(product)) {
            (Some(vendor), Some(product)) => Ok(UsbDevice { vendor, product }),
            _ => Err(bad()),
        }
    }
}

/// What a reboot requested by the guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum RebootAction {
    /// Reset the VM and boot again.
    #[default]
    Restart,
    /// Stop the VM, as `-no-reboot` does in QEMU.
    PowerOff,
}

/// Serde glue for the types written as one string (`"1280x800"`, MAC, USB ids).
macro_rules! string_serde {
    ($type:ty, $expecting:literal) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$type, D::Error> {
                struct StrVisitor;
                impl Visitor<'_> for StrVisitor {
                    type Value = $type;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, value: &str) -> Result<$type, E> {
                        value.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(StrVisitor)
            }
        }
    };
}

string_serde!(Resolution, "a resolution like \"1280x800\"");
string_serde!(MacAddress, "a MAC address like \"52:54:00:12:34:56\"");
string_serde!(UsbDevice, "a USB id like \"046d:c52b\"");
string_serde!(
    MachineUuid,
    "a UUID like \"0d475e6f-6592-51ec-a52f-7d556bdbdc48\""
);
