//! USB switches acting on a running VM, without GTK: plug in, unplug, and whether the
//! XDG USB portal is there when the app runs inside a Flatpak.
//!
//! Data flow: the settings pane calls [`switch`] on the background pool when a person
//! flips a device's switch while the VM runs. It writes the change to vm.ron's `usb` list
//! first (so the device comes back on the next start, whatever the helper says), then
//! connects to the helper's QMP socket: on → `device_add` (driver `usb-host`, id
//! `usb-VVVV-PPPP`), off → `query-usb` to find the device, then `device_del`. Inside a
//! Flatpak the sandbox cannot open `/dev/bus/usb`: an [`Opener`] (the portal, in
//! `usb_portal.rs`) opens the device and the descriptor goes to the helper with `getfd`
//! before `device_add fd=...`. The error is a sentence with the helper's own reason.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use hospes_core::config::{self, UsbDevice};
use hospes_core::control::client::{ClientError, QmpClient, UsbAddRequest, UsbTarget};
use hospes_core::control::usb::host_device_id;
use hospes_core::error_chain;

use crate::i18n::gettext_f;

/// How long the helper has to answer (opening a device can take a moment).
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// The file that exists inside every Flatpak sandbox.
pub const FLATPAK_INFO: &str = ".flatpak-info";

/// The first `org.freedesktop.portal.Usb` version (xdg-desktop-portal 1.19.1).
pub const PORTAL_MIN_VERSION: u32 = 1;

/// Opens a host USB device for the helper: the XDG USB portal inside a Flatpak.
pub trait Opener {
    /// An open usbfs descriptor for the device with these ids, or why not (a sentence).
    fn open(&self, device: UsbDevice) -> Result<OwnedFd, String>;
}

/// Whether the app runs in a Flatpak sandbox whose root is `root` (`/`).
pub fn in_flatpak(root: &Path) -> bool {
    root.join(FLATPAK_INFO).exists()
}

/// What the USB portal offers, from its `version` property (`None`: the interface is
/// missing on the session bus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortalSupport {
    /// The portal can open devices.
    Available,
    /// No portal, or one too old: USB devices cannot be passed through.
    Missing,
}

impl PortalSupport {
    /// From the portal's `version` property.
    pub fn from_version(version: Option<u32>) -> PortalSupport {
        match version {
            Some(v) if v >= PORTAL_MIN_VERSION => PortalSupport::Available,
            _ => PortalSupport::Missing,
        }
    }

    /// What the settings pane says about it, if anything.
    pub fn notice(self) -> Option<String> {
        match self {
            PortalSupport::Available => None,
            PortalSupport::Missing => Some(gettext_f(
                // Translators: shown in the USB settings of the Flatpak when the desktop
                // lacks the USB portal; {version} is a version number like 1.19.1.
                "Passing USB devices to a running machine needs xdg-desktop-portal {version} or newer, which this computer does not have. Devices switched on are still saved with the machine.",
                &[("version", "1.19.1")],
            )),
        }
    }
}

/// One device the portal lists: its portal id and udev properties as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalDevice {
    /// The portal's id for it.
    pub id: String,
    /// udev properties (`ID_VENDOR_ID`, `ID_MODEL_ID`, ...).
    pub properties: HashMap<String, String>,
}

/// The portal id of the device with `device`'s ids among `listed`.
pub fn find_portal_device(listed: &[PortalDevice], device: UsbDevice) -> Option<&str> {
    let hex = |props: &HashMap<String, String>, key: &str| {
        props
            .get(key)
            .and_then(|v| u16::from_str_radix(v.trim(), 16).ok())
    };
    listed
        .iter()
        .find(|d| {
            hex(&d.properties, "ID_VENDOR_ID") == Some(device.vendor)
                && hex(&d.properties, "ID_MODEL_ID") == Some(device.product)
        })
        .map(|d| d.id.as_str())
}

/// Switches `device` on or off for the running VM whose QMP socket is `socket` and
/// whose settings are `config`. vm.ron is written first; then the helper plugs the
/// device in or out, through `opener` when one is given (inside a Flatpak). Blocking.
pub fn switch(
    socket: &Path,
    config: &Path,
    device: UsbDevice,
    on: bool,
    opener: Option<&dyn Opener>,
) -> Result<(), String> {
    save(config, device, on)?;
    let failed = |detail: String| {
        gettext_f(
            // Translators: shown when a USB device could not be plugged into or out of
            // a running machine; {device} is its vendor:product id, {error} the reason.
            "USB device {device}: {error}",
            &[("device", &device.to_string()), ("error", &detail)],
        )
    };
    let mut client = QmpClient::connect_with_timeout(socket, QMP_TIMEOUT)
        .map_err(|e| failed(error_chain(&e)))?;
    let id = host_device_id(device.vendor, device.product);
    let ids = (device.vendor, device.product);
    let result = if on {
        match opener {
            Some(opener) => {
                let fd = opener.open(device).map_err(failed)?;
                client.usb_add_fd(Some(&id), fd.as_fd(), Some(ids))
            }
            None => client.usb_add(&UsbAddRequest {
                id: Some(id),
                target: UsbTarget::VendorProduct(device.vendor, device.product),
            }),
        }
    } else {
        client.query_usb().and_then(|plugged| {
            match plugged
                .iter()
                // A host device: on the host now, or switched on and waiting for it.
                .find(|d| {
                    (d.vendorid, d.productid) == ids && (d.host.is_some() || d.port.is_empty())
                }) {
                Some(found) => client.device_del(&found.id),
                // Not plugged in (it failed to plug in earlier): nothing to take out.
                None => Ok(()),
            }
        })
    };
    result.map_err(|e| failed(reason(&e)))
}

/// The helper's own words for a refused command; the whole cause chain otherwise.
fn reason(error: &ClientError) -> String {
    match error {
        ClientError::Command(refused) => refused.desc.clone(),
        other => error_chain(other),
    }
}

/// Only records the switch in vm.ron (inside a Flatpak without the USB portal, where
/// the helper cannot open the device).
pub fn save_only(config: &Path, device: UsbDevice, on: bool) -> Result<(), String> {
    save(config, device, on)
}

/// Adds `device` to vm.ron's `usb` list (`on`) or takes it out.
fn save(config: &Path, device: UsbDevice, on: bool) -> Result<(), String> {
    let text = config::read(config).map_err(|e| error_chain(&e))?;
    let mut saved = config::parse(&text, config)
        .map_err(|e| error_chain(&e))?
        .usb;
    saved.retain(|d| *d != device);
    if on {
        saved.push(device);
    }
    config::set_usb(config, &saved).map_err(|e| error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use hospes_core::config::Size;
    use hospes_core::control::fake::FakeVm;
    use hospes_core::control::{QmpServerHandle, VmControl};
    use hospes_core::library::{CreateRequest, HostResources, Library, Preset};

    fn id(text: &str) -> UsbDevice {
        text.parse().unwrap()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        socket: std::path::PathBuf,
        config: std::path::PathBuf,
        vm: Arc<FakeVm>,
        _server: QmpServerHandle,
    }

    fn running_vm() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let (vm, server) = FakeVm::serve(&socket).unwrap();
        let library = Library::open(dir.path().join("machines"))
            .unwrap()
            .with_host_resources(HostResources {
                cpus: 2,
                memory: Size::gib(4),
                free_disk: Size::gib(100),
            });
        let mut request = CreateRequest::new("Desk", Preset::Linux);
        request.disk_size = Some(Size(0));
        let config = library.create(&request).unwrap().config_path();
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("// kept\n{text}")).unwrap();
        Fixture {
            dir,
            socket,
            config,
            vm,
            _server: server,
        }
    }

    fn saved(f: &Fixture) -> Vec<UsbDevice> {
        let text = std::fs::read_to_string(&f.config).unwrap();
        hospes_core::config::parse(&text, &f.config).unwrap().usb
    }

    #[test]
    fn switching_on_plugs_the_device_in_and_saves_it() {
        let f = running_vm();
        switch(&f.socket, &f.config, id("046d:c52b"), true, None).unwrap();
        let plugged = f.vm.query_usb();
        assert_eq!(plugged.len(), 1);
        assert_eq!(plugged[0].id, "usb-046d-c52b");
        assert_eq!(saved(&f), [id("046d:c52b")]);
        let text = std::fs::read_to_string(&f.config).unwrap();
        assert!(text.starts_with("// kept\n"), "comments stay: {text}");

        switch(&f.socket, &f.config, id("046d:c52b"), false, None).unwrap();
        assert!(f.vm.query_usb().is_empty(), "unplugged");
        assert!(saved(&f).is_empty());
    }

    #[test]
    fn a_refusal_carries_the_helpers_reason_and_the_setting_is_still_saved() {
        let f = running_vm();
        let err = switch(&f.socket, &f.config, id("1234:5678"), true, None).unwrap_err();
        assert!(err.contains("1234:5678"), "{err}");
        assert!(
            err.contains("no host USB device"),
            "the helper's words: {err}"
        );
        assert_eq!(saved(&f), [id("1234:5678")], "kept for the next start");
        assert!(f.vm.query_usb().is_empty());
    }

    #[test]
    fn a_stopped_helper_is_an_error_after_the_setting_is_saved() {
        let f = running_vm();
        let gone = f.dir.path().join("gone.sock");
        let err = switch(&gone, &f.config, id("046d:c52b"), true, None).unwrap_err();
        assert!(err.contains("046d:c52b"), "{err}");
        assert_eq!(saved(&f), [id("046d:c52b")]);
    }

    /// Opens a plain file in place of the portal's usbfs node.
    struct FileOpener(std::path::PathBuf);

    impl Opener for FileOpener {
        fn open(&self, _: UsbDevice) -> Result<OwnedFd, String> {
            std::fs::File::open(&self.0)
                .map(OwnedFd::from)
                .map_err(|e| e.to_string())
        }
    }

    struct RefusingOpener;

    impl Opener for RefusingOpener {
        fn open(&self, _: UsbDevice) -> Result<OwnedFd, String> {
            Err("the person said no".into())
        }
    }

    #[test]
    fn inside_a_flatpak_the_opened_descriptor_goes_to_the_helper() {
        use std::os::unix::fs::MetadataExt;
        let f = running_vm();
        let node = f.dir.path().join("002");
        std::fs::write(&node, b"usbfs").unwrap();
        let opener = FileOpener(node.clone());
        switch(&f.socket, &f.config, id("046d:c52b"), true, Some(&opener)).unwrap();
        let passed = f.vm.usb_passed_file("usb-046d-c52b").expect("a descriptor");
        assert_eq!(passed.ino(), std::fs::metadata(&node).unwrap().ino());

        let err = switch(
            &f.socket,
            &f.config,
            id("0781:5581"),
            true,
            Some(&RefusingOpener),
        )
        .unwrap_err();
        assert!(err.contains("the person said no"), "{err}");
        assert_eq!(f.vm.query_usb().len(), 1, "nothing more plugged in");
    }

    #[test]
    fn the_portal_device_is_found_by_its_udev_ids() {
        let device = |id: &str, vendor: &str, model: &str| PortalDevice {
            id: id.into(),
            properties: HashMap::from([
                ("ID_VENDOR_ID".to_owned(), vendor.to_owned()),
                ("ID_MODEL_ID".to_owned(), model.to_owned()),
            ]),
        };
        let listed = [
            device("a", "0781", "5581"),
            device("b", "046d", "c52b"),
            device("c", "zz", "c52b"),
        ];
        assert_eq!(find_portal_device(&listed, id("046d:c52b")), Some("b"));
        assert_eq!(find_portal_device(&listed, id("1234:5678")), None);
    }

    #[test]
    fn a_missing_or_old_portal_gets_a_sentence_naming_the_version_needed() {
        assert_eq!(
            PortalSupport::from_version(Some(1)),
            PortalSupport::Available
        );
        assert_eq!(PortalSupport::from_version(None), PortalSupport::Missing);
        assert_eq!(PortalSupport::from_version(Some(0)), PortalSupport::Missing);
        assert!(PortalSupport::Available.notice().is_none());
        let notice = PortalSupport::Missing.notice().unwrap();
        assert!(notice.contains("xdg-desktop-portal 1.19.1"), "{notice}");
    }

    #[test]
    fn a_flatpak_is_known_by_its_info_file() {
        let root = tempfile::tempdir().unwrap();
        assert!(!in_flatpak(root.path()));
        std::fs::write(root.path().join(FLATPAK_INFO), "[Application]\n").unwrap();
        assert!(in_flatpak(root.path()));
    }
}
