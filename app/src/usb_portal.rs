//! The XDG USB portal (`org.freedesktop.portal.Usb`, xdg-desktop-portal 1.19.1+), for
//! the Flatpak: the sandbox cannot open `/dev/bus/usb`, the portal opens the device for
//! us after asking the person, and hands back a descriptor.
//!
//! Data flow, all on the calling (background) thread with GIO's blocking D-Bus calls on
//! the session bus: [`version`] reads the interface's `version` property (absent: no
//! portal). [`PortalOpener::open`] lists the devices the app may see
//! (`EnumerateDevices`), picks the one with the wanted udev `ID_VENDOR_ID`/`ID_MODEL_ID`
//! ([`usb_live::find_portal_device`]), asks for it (`AcquireDevices`, which returns a
//! Request object; its `Response` signal is awaited on a main context of this thread),
//! then collects the descriptor with `FinishAcquireDevices` (its `fd` is a handle into
//! the reply's descriptor list). GIO comes with GTK, so this costs no extra crate: ashpd's
//! `desktop::usb` would bring zbus and an async runtime into the build for four calls.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gettextrs::gettext;
use gtk::gio::prelude::*;
use gtk::{gio, glib};
use hospes_core::config::UsbDevice;

use crate::usb_live::{Opener, PortalDevice, find_portal_device};

const PORTAL_BUS_NAME: &str = "org.freedesktop.portal.Desktop";
const PORTAL_PATH: &str = "/org/freedesktop/portal/desktop";
const USB_INTERFACE: &str = "org.freedesktop.portal.Usb";
const REQUEST_INTERFACE: &str = "org.freedesktop.portal.Request";
/// How long a plain call may take.
const CALL_TIMEOUT_MS: i32 = 10_000;
/// How long the person has to answer the portal's dialog.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

fn session_bus() -> Result<gio::DBusConnection, String> {
    gio::bus_get_sync(gio::BusType::Session, gio::Cancellable::NONE).map_err(|e| e.to_string())
}

fn call(
    bus: &gio::DBusConnection,
    method: &str,
    args: &glib::Variant,
) -> Result<(glib::Variant, Option<gio::UnixFDList>), String> {
    bus.call_with_unix_fd_list_sync(
        Some(PORTAL_BUS_NAME),
        PORTAL_PATH,
        USB_INTERFACE,
        method,
        Some(args),
        None,
        gio::DBusCallFlags::NONE,
        CALL_TIMEOUT_MS,
        gio::UnixFDList::NONE,
        gio::Cancellable::NONE,
    )
    .map_err(|e| e.to_string())
}

/// The USB portal's version; `None` when the session bus has no USB portal.
pub fn version() -> Option<u32> {
    let bus = session_bus().ok()?;
    let reply = bus
        .call_sync(
            Some(PORTAL_BUS_NAME),
            PORTAL_PATH,
            "org.freedesktop.DBus.Properties",
            "Get",
            Some(&(USB_INTERFACE, "version").to_variant()),
            None,
            gio::DBusCallFlags::NONE,
            CALL_TIMEOUT_MS,
            gio::Cancellable::NONE,
        )
        .ok()?;
    // (v): the variant holds a u.
    reply.child_value(0).as_variant()?.get::<u32>()
}

/// Opens devices through the portal.
pub struct PortalOpener;

impl Opener for PortalOpener {
    fn open(&self, device: UsbDevice) -> Result<OwnedFd, String> {
        let bus = session_bus()?;
        let id = portal_id(&bus, device)?;
        acquire(&bus, &id)
    }
}

/// The portal's id for the device with `device`'s ids.
fn portal_id(bus: &gio::DBusConnection, device: UsbDevice) -> Result<String, String> {
    let options: HashMap<String, glib::Variant> = HashMap::new();
    let (reply, _) = call(bus, "EnumerateDevices", &(options,).to_variant())?;
    let listed: Vec<(String, HashMap<String, glib::Variant>)> = reply
        .child_value(0)
        .get()
        .ok_or_else(|| "the USB portal sent an unexpected device list".to_owned())?;
    let devices: Vec<PortalDevice> = listed
        .into_iter()
        .map(|(id, info)| {
            let properties = info
                .get("properties")
                .and_then(|v| v.get::<HashMap<String, glib::Variant>>())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(key, value)| Some((key, value.str()?.to_owned())))
                .collect();
            PortalDevice { id, properties }
        })
        .collect();
    find_portal_device(&devices, device)
        .map(str::to_owned)
        // Translators: the USB portal does not list the device (not plugged in, or not
        // allowed by the app's permissions).
        .ok_or_else(|| gettext("the USB portal does not offer this device"))
}

/// A token unique in this process, for the Request object's path.
fn handle_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "hospes{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The Request object path the portal uses for `token` (documented in
/// `org.freedesktop.portal.Request`): the sender's unique name without `:`, `.` as `_`.
fn request_path(bus: &gio::DBusConnection, token: &str) -> Result<String, String> {
    let unique = bus
        .unique_name()
        .ok_or_else(|| "no name on the session bus".to_owned())?;
    let sender = unique.trim_start_matches(':').replace('.', "_");
    Ok(format!("{PORTAL_PATH}/request/{sender}/{token}"))
}

/// Asks for device `id` (read-write) and returns its descriptor.
fn acquire(bus: &gio::DBusConnection, id: &str) -> Result<OwnedFd, String> {
    let context = glib::MainContext::new();
    context
        .with_thread_default(|| acquire_on(bus, id, &context))
        .map_err(|e| e.to_string())?
}

fn acquire_on(
    bus: &gio::DBusConnection,
    id: &str,
    context: &glib::MainContext,
) -> Result<OwnedFd, String> {
    let token = handle_token();
    let path = request_path(bus, &token)?;
    let answer: std::rc::Rc<std::cell::Cell<Option<u32>>> = std::rc::Rc::default();
    // Subscribed before the call, so a quick answer is not missed.
    let subscription = bus.subscribe_to_signal(
        Some(PORTAL_BUS_NAME),
        Some(REQUEST_INTERFACE),
        Some("Response"),
        Some(&path),
        None,
        gio::DBusSignalFlags::NONE,
        {
            let answer = answer.clone();
            // (ua{sv}): 0 granted, 1 cancelled, 2 other.
            move |signal| answer.set(Some(signal.parameters.child_value(0).get().unwrap_or(2)))
        },
    );
    let access: HashMap<String, glib::Variant> =
        HashMap::from([("writable".to_owned(), true.to_variant())]);
    let options: HashMap<String, glib::Variant> =
        HashMap::from([("handle_token".to_owned(), token.to_variant())]);
    let args = ("", vec![(id.to_owned(), access)], options).to_variant();
    let called = call(bus, "AcquireDevices", &args);
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while called.is_ok() && answer.get().is_none() && Instant::now() < deadline {
        context.iteration(true);
    }
    drop(subscription);
    called?;
    match answer.get() {
        Some(0) => {}
        // Translators: the person declined the portal's request, or it timed out.
        _ => return Err(gettext("access to the device was not granted")),
    }
    finish(bus, &path)
}

/// Collects the descriptors of the granted request at `path`.
fn finish(bus: &gio::DBusConnection, path: &str) -> Result<OwnedFd, String> {
    let handle = glib::variant::ObjectPath::try_from(path.to_owned())
        .map_err(|_| "bad request path".to_owned())?;
    let options: HashMap<String, glib::Variant> = HashMap::new();
    loop {
        let (reply, fds) = call(
            bus,
            "FinishAcquireDevices",
            &(handle.clone(), options.clone()).to_variant(),
        )?;
        let results: Vec<(String, HashMap<String, glib::Variant>)> =
            reply.child_value(0).get().unwrap_or_default();
        let finished = reply.child_value(1).get::<bool>().unwrap_or(true);
        for (_, result) in results {
            let success = result
                .get("success")
                .and_then(|v| v.get::<bool>())
                .unwrap_or(false);
            if !success {
                let error = result
                    .get("error")
                    .and_then(|v| v.str().map(str::to_owned))
                    .unwrap_or_else(|| gettext("the portal could not open the device"));
                return Err(error);
            }
            let index = result
                .get("fd")
                .and_then(|v| v.get::<glib::variant::Handle>())
                .map(|h| h.0);
            if let (Some(index), Some(fds)) = (index, &fds) {
                return fds.get(index).map_err(|e| e.to_string());
            }
        }
        if finished {
            return Err(gettext("the portal could not open the device"));
        }
    }
}
