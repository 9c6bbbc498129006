//! Slow tier (opt-in, `cargo test -p hospes-tests --test slow_usb -- --ignored`): a real
//! Linux kernel on `hospes-vmm --usb` drives its xHCI controller (PCI 1b36:000d), binds
//! the emulated USB tablet (1209:7701) and keyboard (1209:7702) to its HID drivers, and
//! sees a host USB device that QMP `device_add usb-host` passes through, and its unplug.
//! Designed for a laptop with VT-x/AMD-V; a nested KVM without it takes minutes to boot.
//!
//! Environment (the setup is in `docs/usb.md`, "Slow tier"):
//! - `HOSPES_LINUX_KERNEL`: a bzImage, e.g. Debian's `/boot/vmlinuz-$(uname -r)`.
//! - `HOSPES_LINUX_MODULES`: that kernel's modules directory. Default: `/lib/modules/REL`
//!   when the kernel file is named `vmlinuz-REL` and that exists, else
//!   `/lib/modules/$(uname -r)`.
//! - `HOSPES_USB_TEST_DEVICE=VVVV:PPPP` (hex, as `lsusb` prints them), for the hot-plug
//!   test only: a host device the user may open read-write, e.g. through the udev rule
//!   `SUBSYSTEM=="usb", ATTR{idVendor}=="VVVV", ATTR{idProduct}=="PPPP", TAG+="uaccess"`.
//!   It is taken from the host while the test runs: pick a spare one (a USB stick).
//!
//! Data flow: the test builds an initramfs holding the freestanding `/init`
//! (`tests/guests/linux/init.c`), the modules `xhci-pci`, `usbhid` and `hid-generic` need
//! with their dependencies (resolved through the kernel's `modules.dep`, skipping those in
//! `modules.builtin`) as `/lib/m/NN-FILE`, and `/mods` naming them in load order. The
//! kernel boots with `hospes.linger=N`: `/init` loads the modules, then stays up N seconds
//! printing `/sys/bus/usb/devices` and the input device names on COM1 (a file here)
//! whenever they change, and once more after `hospes-init: linger over`, then powers off.
//! The tests read those listings and talk QMP to the helper while the guest lingers.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hospes_core::control::client::{QmpClient, UsbAddRequest, UsbTarget};
use hospes_core::control::usb::UsbInfo;
use hospes_tests::{skip_without_kvm, vmm_binary, wait_timeout};

/// What the guest needs from the kernel's modules: the xHCI driver, USB HID, and the
/// generic HID driver that makes input devices of a tablet and a keyboard.
const WANTED_MODULES: &[&str] = &["usbhid", "hid-generic", "xhci-pci"];
/// Booting a stock kernel, loading modules: a laptop needs seconds; leave room.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Hospes' emulated devices (see `docs/usb.md`): pid.codes vendor 1209.
const TABLET: (u16, u16, &str) = (0x1209, 0x7701, "Hospes USB Tablet");
const KEYBOARD: (u16, u16, &str) = (0x1209, 0x7702, "Hospes USB Keyboard");
/// Linux's root hubs: vendor 1d6b (Linux Foundation).
const ROOT_HUB_VENDOR: &str = "1d6b";
/// What `/init` prints.
const LINGERING: &str = "hospes-init: lingering";
const LINGER_OVER: &str = "hospes-init: linger over";
const LISTING: &str = "hospes-init: /sys/bus/usb/devices:";
const POWERING_OFF: &str = "hospes-init: powering off";

// ---------------------------------------------------------------------------------------
// The kernel's modules: modules.dep and the load order.

/// A module's name as the kernel knows it: the file name less `.ko` and any compression
/// suffix, `-` read as `_` (`kernel/drivers/usb/host/xhci-pci.ko.zst` -> `xhci_pci`).
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

/// A parsed `modules.dep`: each module's file (relative to the modules directory) and the
/// names of what it needs (every line lists them all, transitively).
#[derive(Debug, Default)]
struct ModuleDeps {
    modules: HashMap<String, (String, Vec<String>)>,
}

impl ModuleDeps {
    /// Parses `modules.dep` lines, `FILE: DEP DEP ...`; lines that are not skipped.
    fn parse(text: &str) -> Self {
        let mut modules = HashMap::new();
        for line in text.lines() {
            let Some((file, deps)) = line.split_once(':') else {
                continue;
            };
            let Some(name) = module_name(file.trim()) else {
                continue;
            };
            let deps = deps.split_whitespace().filter_map(module_name).collect();
            modules.insert(name, (file.trim().to_owned(), deps));
        }
        ModuleDeps { modules }
    }

    /// The files to load for `wanted`, each after what it needs and each once. Modules in
    /// `builtin` (names, as [`builtin_modules`] gives them) are left out; a module neither
    /// listed nor built in, or a dependency cycle, is an error naming it.
    fn load_order(
        &self,
        wanted: &[&str],
        builtin: &HashSet<String>,
    ) -> Result<Vec<String>, String> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut visiting = Vec::new();
        for w in wanted {
            let name = w.replace('-', "_");
            self.visit(&name, builtin, &mut done, &mut visiting, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        builtin: &HashSet<String>,
        done: &mut HashSet<String>,
        visiting: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if done.contains(name) || builtin.contains(name) {
            return Ok(());
        }
        if visiting.iter().any(|v| v == name) {
            return Err(format!(
                "modules.dep has a dependency cycle: {} -> {name}",
                visiting.join(" -> ")
            ));
        }
        let Some((file, deps)) = self.modules.get(name) else {
            return Err(format!(
                "module {name} is neither in modules.dep nor in modules.builtin"
            ));
        };
        visiting.push(name.to_owned());
        for dep in deps {
            self.visit(dep, builtin, done, visiting, order)?;
        }
        visiting.pop();
        done.insert(name.to_owned());
        order.push(file.clone());
        Ok(())
    }
}

/// The module names in a `modules.builtin` (one file path a line).
fn builtin_modules(text: &str) -> HashSet<String> {
    text.lines().filter_map(|l| module_name(l.trim())).collect()
}

/// The modules directory for `kernel`: `HOSPES_LINUX_MODULES`, else `/lib/modules/REL`
/// for a kernel named `vmlinuz-REL` when that exists, else the running kernel's.
fn modules_dir(kernel: &Path, from_env: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = from_env {
        return dir;
    }
    let named = kernel
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix("vmlinuz-"))
        .map(|release| Path::new("/lib/modules").join(release));
    if let Some(dir) = named.filter(|d| d.is_dir()) {
        return dir;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Path::new("/lib/modules").join(release.trim())
}

// ---------------------------------------------------------------------------------------
// What the guest prints.

/// One `hospes-init: usb NAME VID:PID DRIVER PRODUCT` line (`-` for what is missing).
#[derive(Debug, Clone, PartialEq, Eq)]
struct UsbEntry {
    name: String,
    /// `vvvv:pppp` as sysfs spells it (lower-case hex); None for an interface.
    id: Option<String>,
    driver: Option<String>,
    product: Option<String>,
}

fn dash_none(s: &str) -> Option<String> {
    (s != "-").then(|| s.to_owned())
}

fn parse_usb_line(line: &str) -> Option<UsbEntry> {
    let rest = line.trim_end().split_once("hospes-init: usb ")?.1;
    let mut fields = rest.splitn(4, ' ');
    let name = fields.next()?.to_owned();
    let id = dash_none(fields.next()?);
    let driver = dash_none(fields.next()?);
    let product = dash_none(fields.next().unwrap_or("-").trim());
    Some(UsbEntry {
        name,
        id,
        driver,
        product,
    })
}

/// The last listing in `text`: its USB entries and input device names.
fn last_listing(text: &str) -> (Vec<UsbEntry>, Vec<String>) {
    let start = text.rfind(LISTING).unwrap_or(text.len());
    let section = &text[start..];
    let end = section.find(POWERING_OFF).unwrap_or(section.len());
    let section = &section[..end];
    let entries = section.lines().filter_map(parse_usb_line).collect();
    let inputs = section
        .lines()
        .filter_map(|l| l.split_once("hospes-init: input N: Name=").map(|(_, n)| n))
        .map(|n| n.trim().trim_matches('"').to_owned())
        .collect();
    (entries, inputs)
}

/// Whether a listing line anywhere in `text` shows device `id` (`vvvv:pppp`).
fn any_listing_shows(text: &str, id: &str) -> bool {
    text.lines()
        .filter_map(parse_usb_line)
        .any(|e| e.id.as_deref() == Some(id))
}

/// `VVVV:PPPP` (hex) as vendor and product ids.
fn parse_vid_pid(s: &str) -> Result<(u16, u16), String> {
    let (v, p) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not VVVV:PPPP"))?;
    let hex = |x: &str| {
        u16::from_str_radix(x, 16).map_err(|e| format!("'{x}' in '{s}' is not a hex id: {e}"))
    };
    Ok((hex(v)?, hex(p)?))
}

fn sysfs_id(vendor: u16, product: u16) -> String {
    format!("{vendor:04x}:{product:04x}")
}

// ---------------------------------------------------------------------------------------
// The boot.

/// The initramfs in `dir`: `/init` built from init.c, the USB modules of `modules` (a
/// modules directory) under `/lib/m`, and `/mods` listing them in load order.
fn initramfs(dir: &Path, modules: &Path) -> PathBuf {
    let read = |name: &str| std::fs::read_to_string(modules.join(name));
    let dep = read("modules.dep").unwrap_or_else(|e| {
        panic!(
            "{}/modules.dep: {e}; set HOSPES_LINUX_MODULES to the modules directory of \
             HOSPES_LINUX_KERNEL",
            modules.display()
        )
    });
    let builtin = builtin_modules(&read("modules.builtin").unwrap_or_default());
    let order = ModuleDeps::parse(&dep)
        .load_order(WANTED_MODULES, &builtin)
        .unwrap_or_else(|e| panic!("{}: {e}", modules.display()));

    let mut extra = Vec::new();
    let mut list = String::new();
    for (i, file) in order.iter().enumerate() {
        let base = file.rsplit('/').next().unwrap_or(file);
        let name = format!("lib/m/{i:02}-{base}");
        let data = std::fs::read(modules.join(file))
            .unwrap_or_else(|e| panic!("{}/{file}: {e}", modules.display()));
        list.push_str(&format!("/{name}\n"));
        extra.push((name, 0o100644, data));
    }
    extra.push(("mods".to_owned(), 0o100644, list.into_bytes()));
    hospes_tests::initramfs::build(dir, &["lib", "lib/m"], &extra)
}

/// `hospes-vmm --usb` running the kernel, killed on drop; COM1 goes to `serial`, the
/// helper's log to `log`, QMP listens on `qmp`.
struct Vm {
    child: Child,
    dir: tempfile::TempDir,
    serial: PathBuf,
    log: PathBuf,
    qmp: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// Boots `HOSPES_LINUX_KERNEL` with the USB modules and `hospes.linger=linger`.
    fn boot(linger: u32) -> Self {
        let kernel = PathBuf::from(std::env::var_os("HOSPES_LINUX_KERNEL").expect(
            "set HOSPES_LINUX_KERNEL to a bzImage, e.g. /boot/vmlinuz-$(uname -r) \
             (and HOSPES_LINUX_MODULES to its modules directory if it is not \
             /lib/modules/<release>)",
        ));
        let modules = modules_dir(
            &kernel,
            std::env::var_os("HOSPES_LINUX_MODULES").map(PathBuf::from),
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let initrd = initramfs(dir.path(), &modules);
        let serial = dir.path().join("serial.txt");
        let log = dir.path().join("helper.log");
        let qmp = dir.path().join("qmp.sock");
        // loglevel=4: the kernel's warnings and errors reach COM1, its info chatter does not
        // crowd /init's lines.
        let cmdline = format!("console=ttyS0 panic=-1 loglevel=4 hospes.linger={linger}");
        let child = Command::new(vmm_binary())
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .args(["--cmdline", &cmdline, "-m", "512M", "--cpus", "2"])
            .args(["--no-reboot", "--usb"])
            .arg("--serial")
            .arg(format!("file:{}", serial.display()))
            .arg("--qmp")
            .arg(format!("unix:{}", qmp.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create the helper's log"))
            .spawn()
            .expect("spawn hospes-vmm");
        Vm {
            child,
            dir,
            serial,
            log,
            qmp,
        }
    }

    fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// COM1 and the helper's log, for failure messages.
    fn report(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!(
            "serial:\n{}\nhelper log:\n{log}\n(in {})",
            self.serial_text(),
            self.dir.path().display()
        )
    }

    /// Waits until COM1 satisfies `done`, failing if the helper exits first or at
    /// `timeout`; returns COM1's text then.
    fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.serial_text();
            if done(&text) {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "hospes-vmm ended ({status}) before {what}; {}",
                    self.report()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}; {}",
                self.report()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for `/init` to power the machine off; its COM1 text and exit status.
    fn wait_for_power_off(&mut self, timeout: Duration) -> (String, Option<ExitStatus>) {
        let status = wait_timeout(&mut self.child, timeout);
        (self.serial_text(), status)
    }

    fn qmp(&self) -> QmpClient {
        QmpClient::connect(&self.qmp)
            .unwrap_or_else(|e| panic!("QMP {}: {e}; {}", self.qmp.display(), self.report()))
    }
}

/// Fails unless `/init` loaded every module it was given.
fn assert_modules_loaded(text: &str, report: &str) {
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("hospes-init: failed "))
        .collect();
    assert!(
        failed.is_empty(),
        "modules failed to load ({failed:?}; errno 95 is a compressed module on a kernel \
         without CONFIG_MODULE_DECOMPRESS, 8 one built for another kernel); {report}"
    );
}

/// Checks the last listing in `text`: xhci-pci bound the controller (Linux registered its
/// root hubs), and each of `devices` (vendor, product, product string) enumerated with its
/// ids and string, `usbhid` bound its interface, and an input device is named
/// "`manufacturer` product", as Linux names USB HID inputs (hid-input may add a suffix for
/// a second application collection).
fn check_hid_devices(
    text: &str,
    manufacturer: &str,
    devices: &[(u16, u16, &str)],
) -> Result<(), String> {
    let (usb, inputs) = last_listing(text);
    if !usb.iter().any(|e| {
        e.name.starts_with("usb")
            && e.id
                .as_deref()
                .is_some_and(|id| id.starts_with(ROOT_HUB_VENDOR))
    }) {
        return Err(format!("no xHCI root hub: {usb:?}"));
    }
    for &(vendor, product, name) in devices {
        let id = sysfs_id(vendor, product);
        let device = usb
            .iter()
            .find(|e| e.id.as_deref() == Some(id.as_str()) && e.product.as_deref() == Some(name))
            .ok_or_else(|| format!("the guest did not list {id} \"{name}\": {usb:?}"))?;
        let interface = format!("{}:", device.name);
        if !usb
            .iter()
            .any(|e| e.name.starts_with(&interface) && e.driver.as_deref() == Some("usbhid"))
        {
            return Err(format!("usbhid did not bind {name}'s interface: {usb:?}"));
        }
        let input = format!("{manufacturer} {name}");
        if !inputs.iter().any(|n| n.starts_with(&input)) {
            return Err(format!("no input device named '{input}': {inputs:?}"));
        }
    }
    Ok(())
}

/// The host's usbfs node of device `vendor:product`, checked to open read-write (what
/// passing it through takes).
fn host_usb_node(vendor: u16, product: u16) -> PathBuf {
    let id = sysfs_id(vendor, product);
    let devices = std::fs::read_dir("/sys/bus/usb/devices").expect("read /sys/bus/usb/devices");
    let attr = |dir: &Path, name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    for entry in devices.flatten() {
        let dir = entry.path();
        if format!("{}:{}", attr(&dir, "idVendor"), attr(&dir, "idProduct")) != id {
            continue;
        }
        let (bus, addr) = (attr(&dir, "busnum"), attr(&dir, "devnum"));
        let (Ok(bus), Ok(addr)) = (bus.parse::<u32>(), addr.parse::<u32>()) else {
            continue;
        };
        let node = PathBuf::from(format!("/dev/bus/usb/{bus:03}/{addr:03}"));
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&node)
        {
            panic!(
                "{} ({id}) cannot be opened read-write: {e}; add the udev rule \
                 SUBSYSTEM==\"usb\", ATTR{{idVendor}}==\"{vendor:04x}\", \
                 ATTR{{idProduct}}==\"{product:04x}\", TAG+=\"uaccess\" (e.g. in \
                 /etc/udev/rules.d/70-hospes-test.rules), then replug the device",
                node.display()
            );
        }
        return node;
    }
    panic!("no host USB device {id} is plugged in (HOSPES_USB_TEST_DEVICE)");
}

#[test]
#[ignore = "slow tier: needs HOSPES_LINUX_KERNEL and a KVM with VT-x/AMD-V"]
fn linux_drives_the_xhci_and_binds_the_usb_tablet_and_keyboard() {
    if skip_without_kvm() {
        return;
    }
    let mut vm = Vm::boot(10);
    vm.wait_for("hospes-init: lingering", BOOT_TIMEOUT, |t| {
        t.contains(LINGERING)
    });

    // The helper's own view: both devices on the controller.
    let plugged: Vec<UsbInfo> = vm
        .qmp()
        .query_usb()
        .unwrap_or_else(|e| panic!("query-usb: {e}; {}", vm.report()));
    for (vendor, product, name) in [TABLET, KEYBOARD] {
        assert!(
            plugged
                .iter()
                .any(|d| d.vendorid == vendor && d.productid == product),
            "query-usb lacks {name}: {plugged:?}"
        );
    }

    let (text, status) = vm.wait_for_power_off(Duration::from_secs(120));
    let report = vm.report();
    assert!(text.contains(LINGER_OVER), "{report}");
    assert_modules_loaded(&text, &report);
    if let Err(e) = check_hid_devices(&text, "Hospes", &[TABLET, KEYBOARD]) {
        panic!("{e}; {report}");
    }
    assert!(text.contains(POWERING_OFF), "{report}");
    assert!(status.is_some_and(|s| s.success()), "{status:?}; {report}");
}

#[test]
#[ignore = "slow tier: needs HOSPES_LINUX_KERNEL and a KVM with VT-x/AMD-V"]
fn a_host_usb_device_hot_plugged_through_qmp_reaches_linux() {
    let wanted = std::env::var("HOSPES_USB_TEST_DEVICE").expect(
        "set HOSPES_USB_TEST_DEVICE=VVVV:PPPP to a spare host USB device you can open (see \
         docs/usb.md, \"Slow tier\")",
    );
    let (vendor, product) =
        parse_vid_pid(&wanted).unwrap_or_else(|e| panic!("HOSPES_USB_TEST_DEVICE: {e}"));
    let node = host_usb_node(vendor, product);
    if skip_without_kvm() {
        return;
    }
    let id = sysfs_id(vendor, product);
    let mut vm = Vm::boot(30);
    let before = vm.wait_for("hospes-init: lingering", BOOT_TIMEOUT, |t| {
        t.contains(LINGERING)
    });
    let boot_listing = &before[before.find(LINGERING).unwrap_or(0)..];
    assert!(
        !any_listing_shows(boot_listing, &id),
        "the guest saw {id} before it was plugged in; {}",
        vm.report()
    );

    let mut qmp = vm.qmp();
    qmp.usb_add(&UsbAddRequest {
        id: Some("pt0".to_owned()),
        target: UsbTarget::VendorProduct(vendor, product),
    })
    .unwrap_or_else(|e| {
        panic!(
            "device_add usb-host {id} ({}): {e}; {}",
            node.display(),
            vm.report()
        )
    });
    let plugged = qmp.query_usb().expect("query-usb");
    assert!(
        plugged
            .iter()
            .any(|d| d.id == "pt0" && d.vendorid == vendor && d.productid == product),
        "query-usb lacks pt0 ({id}): {plugged:?}"
    );

    // The guest enumerates it within its linger.
    vm.wait_for(
        &format!("the guest listing {id}"),
        Duration::from_secs(20),
        |t| {
            t.find(LINGERING)
                .is_some_and(|at| any_listing_shows(&t[at..], &id))
        },
    );

    qmp.device_del("pt0")
        .unwrap_or_else(|e| panic!("device_del pt0: {e}; {}", vm.report()));
    let event = qmp
        .wait_event("DEVICE_DELETED", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no DEVICE_DELETED after device_del pt0: {e}"));
    assert_eq!(event.data["device"], "pt0", "{event:?}");
    let plugged = qmp.query_usb().expect("query-usb");
    assert!(
        plugged.iter().all(|d| d.id != "pt0"),
        "pt0 still plugged: {plugged:?}"
    );
    drop(qmp);

    // The guest saw the unplug: its last listing lacks the device.
    let (text, status) = vm.wait_for_power_off(Duration::from_secs(120));
    let report = vm.report();
    assert!(text.contains(LINGER_OVER), "{report}");
    assert_modules_loaded(&text, &report);
    let (usb, _) = last_listing(&text);
    assert!(
        usb.iter().all(|e| e.id.as_deref() != Some(id.as_str())),
        "the guest still lists {id} after device_del: {usb:?}; {report}"
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}; {report}");
}

// ---------------------------------------------------------------------------------------
// The pure parts, run with the normal tests.

/// Lines shaped like a distribution's `modules.dep` for the wanted modules (Debian 12's
/// 6.1 has these without xhci-pci-renesas and ships plain `.ko`; newer kernels add that
/// module and compress), and one unrelated line.
const MODULES_DEP: &str = "\
kernel/drivers/usb/host/xhci-pci.ko.xz: kernel/drivers/usb/host/xhci-pci-renesas.ko.xz kernel/drivers/usb/host/xhci-hcd.ko.xz kernel/drivers/usb/core/usbcore.ko.xz kernel/drivers/usb/common/usb-common.ko.xz
kernel/drivers/usb/host/xhci-pci-renesas.ko.xz: kernel/drivers/usb/host/xhci-hcd.ko.xz kernel/drivers/usb/core/usbcore.ko.xz kernel/drivers/usb/common/usb-common.ko.xz
kernel/drivers/usb/host/xhci-hcd.ko.xz: kernel/drivers/usb/core/usbcore.ko.xz kernel/drivers/usb/common/usb-common.ko.xz
kernel/drivers/usb/core/usbcore.ko.xz: kernel/drivers/usb/common/usb-common.ko.xz
kernel/drivers/usb/common/usb-common.ko.xz:
kernel/drivers/hid/usbhid/usbhid.ko.xz: kernel/drivers/hid/hid.ko.xz kernel/drivers/usb/core/usbcore.ko.xz kernel/drivers/usb/common/usb-common.ko.xz
kernel/drivers/hid/hid-generic.ko.xz: kernel/drivers/hid/hid.ko.xz
kernel/drivers/hid/hid.ko.xz:
kernel/sound/core/snd.ko.xz: kernel/sound/soundcore.ko.xz
";

fn position(order: &[String], name: &str) -> usize {
    order
        .iter()
        .position(|f| module_name(f).as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{name} missing from {order:?}"))
}

#[test]
fn module_names_drop_the_directory_and_every_compression_suffix() {
    assert_eq!(
        module_name("kernel/drivers/usb/host/xhci-pci.ko.xz").as_deref(),
        Some("xhci_pci")
    );
    assert_eq!(module_name("a/usbhid.ko.zst").as_deref(), Some("usbhid"));
    assert_eq!(
        module_name("a/hid-generic.ko").as_deref(),
        Some("hid_generic")
    );
    assert_eq!(module_name("a/b.ko.gz").as_deref(), Some("b"));
    assert_eq!(module_name("a/readme.txt"), None);
    assert_eq!(module_name("a/.ko"), None);
}

#[test]
fn load_order_puts_every_dependency_before_its_user_once() {
    let order = ModuleDeps::parse(MODULES_DEP)
        .load_order(WANTED_MODULES, &HashSet::new())
        .unwrap();
    let names: Vec<String> = order.iter().filter_map(|f| module_name(f)).collect();
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "a module twice: {order:?}");
    assert_eq!(
        unique.len(),
        8,
        "exactly the wanted modules and their dependencies: {order:?}"
    );
    for (user, needs) in [
        ("usbcore", "usb_common"),
        ("xhci_hcd", "usbcore"),
        ("xhci_pci_renesas", "xhci_hcd"),
        ("xhci_pci", "xhci_pci_renesas"),
        ("xhci_pci", "xhci_hcd"),
        ("usbhid", "hid"),
        ("usbhid", "usbcore"),
        ("hid_generic", "hid"),
    ] {
        assert!(
            position(&order, needs) < position(&order, user),
            "{needs} must load before {user}: {order:?}"
        );
    }
    // Files keep their path relative to the modules directory, suffix and all.
    assert!(order.contains(&"kernel/drivers/hid/hid.ko.xz".to_owned()));
    assert!(!order.iter().any(|f| f.contains("snd")), "{order:?}");
}

#[test]
fn built_in_modules_are_left_out_of_the_load_order() {
    // A kernel with USB and HID core built in lists only the drivers in modules.dep.
    let dep = "kernel/drivers/usb/host/xhci-pci.ko.zst: kernel/drivers/usb/host/xhci-hcd.ko.zst\n\
               kernel/drivers/usb/host/xhci-hcd.ko.zst:\n\
               kernel/drivers/hid/usbhid/usbhid.ko.zst:\n";
    let builtin = builtin_modules(
        "kernel/drivers/usb/core/usbcore.ko\nkernel/drivers/hid/hid-generic.ko\nkernel/drivers/hid/hid.ko\n",
    );
    let order = ModuleDeps::parse(dep)
        .load_order(WANTED_MODULES, &builtin)
        .unwrap();
    assert_eq!(
        order,
        [
            "kernel/drivers/hid/usbhid/usbhid.ko.zst",
            "kernel/drivers/usb/host/xhci-hcd.ko.zst",
            "kernel/drivers/usb/host/xhci-pci.ko.zst",
        ]
    );
}

#[test]
fn a_module_neither_listed_nor_built_in_is_an_error_naming_it() {
    let err = ModuleDeps::parse("kernel/drivers/hid/hid.ko:\n")
        .load_order(&["hid-generic"], &HashSet::new())
        .unwrap_err();
    assert!(err.contains("hid_generic"), "{err}");
    // A dependency that is missing too.
    let err = ModuleDeps::parse("kernel/x/usbhid.ko: kernel/x/hid.ko\n")
        .load_order(&["usbhid"], &HashSet::new())
        .unwrap_err();
    assert!(err.contains("module hid "), "{err}");
}

#[test]
fn a_dependency_cycle_is_an_error_not_a_hang() {
    let dep = "k/a.ko: k/b.ko\nk/b.ko: k/a.ko\n";
    let err = ModuleDeps::parse(dep)
        .load_order(&["a"], &HashSet::new())
        .unwrap_err();
    assert!(err.contains("cycle"), "{err}");
}

#[test]
fn malformed_modules_dep_lines_are_skipped() {
    let dep = "\nno colon here\nnot-a-module.txt: k/x.ko\nk/hid.ko:\n";
    let deps = ModuleDeps::parse(dep);
    assert_eq!(deps.modules.len(), 1, "{deps:?}");
    assert_eq!(
        deps.load_order(&["hid"], &HashSet::new()).unwrap(),
        ["k/hid.ko"]
    );
}

#[test]
fn modules_dir_prefers_the_environment_then_the_kernel_file_name() {
    let env = PathBuf::from("/srv/modules/6.1.0-18-amd64");
    assert_eq!(
        modules_dir(Path::new("/boot/vmlinuz-x"), Some(env.clone())),
        env
    );
    // A release with no modules directory here falls back to the running kernel's.
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(
        modules_dir(Path::new("/boot/vmlinuz-0.0.0-no-such-release"), None),
        Path::new("/lib/modules").join(running.trim())
    );
}

#[test]
fn the_last_listing_is_parsed_into_usb_entries_and_input_names() {
    let serial = "\
hospes-init: lingering 10 s
hospes-init: /sys/bus/usb/devices:
hospes-init: usb usb1 1d6b:0002 usb xHCI Host Controller
hospes-init: linger over
hospes-init: /sys/bus/usb/devices:
hospes-init: usb usb1 1d6b:0002 usb xHCI Host Controller
hospes-init: usb 1-1 1209:7701 usb Hospes USB Tablet
hospes-init: usb 1-1:1.0 - usbhid -
[    9.1] some kernel warning
hospes-init: input N: Name=\"Hospes Hospes USB Tablet\"
hospes-init: powering off
hospes-init: usb 9-9 dead:beef - after the power-off line
";
    let (usb, inputs) = last_listing(serial);
    assert_eq!(
        usb,
        [
            UsbEntry {
                name: "usb1".into(),
                id: Some("1d6b:0002".into()),
                driver: Some("usb".into()),
                product: Some("xHCI Host Controller".into()),
            },
            UsbEntry {
                name: "1-1".into(),
                id: Some("1209:7701".into()),
                driver: Some("usb".into()),
                product: Some("Hospes USB Tablet".into()),
            },
            UsbEntry {
                name: "1-1:1.0".into(),
                id: None,
                driver: Some("usbhid".into()),
                product: None,
            },
        ]
    );
    assert_eq!(inputs, ["Hospes Hospes USB Tablet"]);
    assert!(any_listing_shows(serial, "1209:7701"));
    assert!(!any_listing_shows(serial, "1209:7702"));
    assert_eq!(last_listing("no listing at all"), (vec![], vec![]));
}

#[test]
fn test_device_ids_parse_as_hex_vendor_and_product() {
    assert_eq!(parse_vid_pid("046d:c52b"), Ok((0x046d, 0xc52b)));
    assert_eq!(parse_vid_pid(" 0781:5581\n"), Ok((0x0781, 0x5581)));
    assert!(parse_vid_pid("046dc52b").is_err());
    assert!(parse_vid_pid("046d:xyz").is_err());
    assert!(parse_vid_pid("12345:0001").is_err());
    assert_eq!(sysfs_id(0x46d, 0xc52b), "046d:c52b");
}

/// The end of what Debian 12's kernel (6.1.0-57-amd64, modules from this initramfs) printed
/// on QEMU's q35 with qemu-xhci, usb-tablet and usb-kbd: Hospes' devices must read alike.
const QEMU_TRANSCRIPT: &str = "\
hospes-init: loaded 06-xhci-pci.ko
hospes-init: lingering 10 s
hospes-init: /sys/bus/usb/devices:
hospes-init: usb usb1 1d6b:0002 usb xHCI Host Controller
hospes-init: linger over
hospes-init: /sys/bus/usb/devices:
hospes-init: usb 1-2:1.0 - usbhid -
hospes-init: usb usb1 1d6b:0002 usb xHCI Host Controller
hospes-init: usb 1-1 0627:0001 usb QEMU USB Tablet
hospes-init: usb usb2 1d6b:0003 usb xHCI Host Controller
hospes-init: usb 1-0:1.0 - hub -
hospes-init: usb 1-2 0627:0001 usb QEMU USB Keyboard
hospes-init: usb 1-1:1.0 - usbhid -
hospes-init: usb 2-0:1.0 - hub -
hospes-init: input N: Name=\"AT Translated Set 2 keyboard\"
hospes-init: input N: Name=\"QEMU QEMU USB Tablet\"
hospes-init: input N: Name=\"QEMU QEMU USB Keyboard\"
hospes-init: powering off
[   12.567627] reboot: Power down
";

const QEMU_DEVICES: &[(u16, u16, &str)] = &[
    (0x0627, 0x0001, "QEMU USB Tablet"),
    (0x0627, 0x0001, "QEMU USB Keyboard"),
];

#[test]
fn the_hid_check_accepts_what_linux_printed_for_qemus_tablet_and_keyboard() {
    assert_eq!(
        check_hid_devices(QEMU_TRANSCRIPT, "QEMU", QEMU_DEVICES),
        Ok(())
    );
}

#[test]
fn the_hid_check_names_what_is_missing() {
    // Hospes' devices are not in QEMU's transcript.
    let err = check_hid_devices(QEMU_TRANSCRIPT, "Hospes", &[TABLET]).unwrap_err();
    assert!(err.contains("1209:7701"), "{err}");
    // The tablet's interface without a driver.
    let unbound = QEMU_TRANSCRIPT.replace("usb 1-1:1.0 - usbhid -", "usb 1-1:1.0 - - -");
    let err = check_hid_devices(&unbound, "QEMU", QEMU_DEVICES).unwrap_err();
    assert!(err.contains("usbhid did not bind QEMU USB Tablet"), "{err}");
    // No input device made of it.
    let no_input = QEMU_TRANSCRIPT.replace("Name=\"QEMU QEMU USB Keyboard\"", "Name=\"x\"");
    let err = check_hid_devices(&no_input, "QEMU", QEMU_DEVICES).unwrap_err();
    assert!(err.contains("'QEMU QEMU USB Keyboard'"), "{err}");
    // No root hub: xhci-pci never bound the controller.
    let no_hub = "hospes-init: /sys/bus/usb/devices:\nhospes-init: powering off\n";
    let err = check_hid_devices(no_hub, "QEMU", QEMU_DEVICES).unwrap_err();
    assert!(err.contains("root hub"), "{err}");
}
