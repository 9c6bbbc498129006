//! The built-in Demo VM: a tiny guest the app carries (assembled from `app/demo/demo.S` by
//! `build.rs`), so a newcomer sees a running VM within seconds without an ISO.
//!
//! [`ensure`] puts it in the library: a kernel-boot VM named "Demo" with 64 MiB, one vCPU
//! and a std-VGA display at 1280×800, its guest written as `demo-guest.elf` in the VM's
//! folder (and rewritten when the app carries a newer one). The guest draws a test card
//! and shows every key typed into the window as a coloured bar. Blocking: call it off the
//! GTK main loop.

use std::fs;
use std::path::Path;

use hospes_core::config::{self, Boot, DisplayDevice, OsKind, Resolution, Size};
use hospes_core::library::{CreateRequest, Library, LibraryError, Preset};

use crate::vm_control::error_chain;

/// The Demo VM's name (and, through the library's slug, its id).
pub const NAME: &str = "Demo";
/// The guest image inside the VM's folder.
const GUEST_FILE: &str = "demo-guest.elf";
/// The guest, built by `build.rs`.
static GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.elf"));

/// Makes sure the Demo VM is in `library` with the current guest; returns its id.
pub fn ensure(library: &Library) -> Result<String, String> {
    match library.find(NAME) {
        Ok(machine) => {
            write_guest(&machine.dir)?;
            Ok(machine.id)
        }
        Err(LibraryError::NotFound(_)) => create(library),
        Err(err) => Err(error_chain(&err)),
    }
}

fn create(library: &Library) -> Result<String, String> {
    // The library wants an existing kernel file; the guest moves into the VM's folder
    // right after.
    let staging = library.root().join(".demo-guest.tmp");
    fs::write(&staging, GUEST).map_err(|err| format!("{}: {err}", staging.display()))?;
    let mut request = CreateRequest::new(NAME, Preset::Kernel);
    request.kernel = Some(staging.clone());
    request.memory = Some(Size::mib(64));
    request.cpus = Some(1);
    request.cmdline = Some(String::new());
    let result = create_with(library, &request);
    let _ = fs::remove_file(&staging);
    result
}

/// Creates the VM from `request`, then points it at its own copy of the guest. (Loading
/// `vm.ron` checks the staged kernel still exists, so the caller removes it afterwards.)
fn create_with(library: &Library, request: &CreateRequest) -> Result<String, String> {
    let machine = library.create(request).map_err(|err| error_chain(&err))?;
    let guest = write_guest(&machine.dir)?;

    let path = machine.config_path();
    let mut vm = config::load(&path).map_err(|err| error_chain(&err))?;
    vm.os = OsKind::Other;
    vm.boot = Boot::Kernel {
        kernel: guest,
        initrd: None,
        cmdline: String::new(),
    };
    vm.display.enabled = true;
    vm.display.device = DisplayDevice::StdVga;
    vm.display.resolution = Resolution {
        width: 1280,
        height: 800,
    };
    vm.display.follow_window = false;
    config::save(&path, &vm).map_err(|err| error_chain(&err))?;
    Ok(machine.id)
}

/// Writes the guest into `dir` unless the same bytes are there; returns its path.
fn write_guest(dir: &Path) -> Result<std::path::PathBuf, String> {
    let path = dir.join(GUEST_FILE);
    if fs::read(&path).is_ok_and(|bytes| bytes == GUEST) {
        return Ok(path);
    }
    fs::write(&path, GUEST).map_err(|err| format!("{}: {err}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_is_a_pvh_elf() {
        assert_eq!(&GUEST[..4], b"\x7fELF");
        // The Xen PVH note's name sits in the image.
        assert!(GUEST.windows(4).any(|w| w == b"Xen\0"));
    }

    #[test]
    fn ensure_creates_the_demo_once_with_a_std_vga_display() {
        let dir = tempfile::tempdir().unwrap();
        let library = Library::open(dir.path().join("machines")).unwrap();
        let id = ensure(&library).unwrap();
        assert_eq!(
            ensure(&library).unwrap(),
            id,
            "found again, not created twice"
        );
        assert_eq!(library.list().unwrap().len(), 1);
        let machine = library.find(&id).unwrap();
        let vm = machine.config.unwrap();
        assert_eq!(vm.name, NAME);
        assert!(vm.display.enabled);
        assert_eq!(vm.display.device, DisplayDevice::StdVga);
        let Boot::Kernel { kernel, .. } = vm.boot else {
            panic!("not a kernel boot: {:?}", vm.boot)
        };
        assert_eq!(kernel, machine.dir.join(GUEST_FILE));
        assert_eq!(fs::read(kernel).unwrap(), GUEST);
        assert!(!library.root().join(".demo-guest.tmp").exists());
    }
}
