//! Save and restore of a whole machine: which pieces a saved-state file holds and in what
//! order they come back (the file format is `hospes_core::saved_state`).
//!
//! A save (QMP `hospes-save`, [`VmHandle::save`](super::VmHandle::save)) ends the boot:
//! the vCPU threads leave the guest for good and hand back their KVM handles, KVM's state
//! of each vCPU and of the VM is read (`vstate::save`), every device of the machine's
//! [`StateRegistry`] stops its workers and gives its state, and the guest RAM that holds
//! anything goes to the file; then the helper exits. Nothing is read while the guest runs,
//! so the state is consistent; the guest stays stopped only for that one pass.
//!
//! A restore builds the machine as for a fresh boot of the same configuration (but loads
//! no kernel), then, before any vCPU runs: guest RAM from the file, KVM's irqchip, PIT
//! and clock, the devices in the order they were added, the vCPUs (after their CPUID).
//! The machine's device list must match the one saved, name for name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hospes_core::saved_state::{self, Meta, RamRun, SavedFile, Section};
use hospes_devices::state::StateRegistry;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::MachineConfig;
use crate::vstate::save::{self as kvm_save, KvmStateError, VcpuState, VmState};

const PAGE: usize = 4096;
/// Progress is reported at most this often (bytes of RAM).
const REPORT_EVERY: u64 = 32 << 20;

/// Errors saving or restoring a machine.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Kvm(#[from] KvmStateError),
    #[error(transparent)]
    Device(#[from] hospes_devices::state::StateError),
    #[error(transparent)]
    File(#[from] saved_state::SaveFileError),
    #[error("the saved state's {0} does not decode: {1}")]
    Decode(String, String),
    #[error("cannot encode the {0} state: {1}")]
    Encode(&'static str, String),
    #[error("the saved state has no {0}")]
    Missing(String),
    #[error(
        "the saved state was made for another machine (vm.ron changed since?): {0}; put the \
         settings back, or start afresh with `hospesctl discard NAME`"
    )]
    OtherMachine(String),
    #[error("only {got} of {want} vCPUs stopped cleanly; the state cannot be saved")]
    VcpusLost { got: usize, want: usize },
    #[error("cannot read which guest pages are in use")]
    Mincore(#[source] std::io::Error),
    #[error("this VM has nowhere to save to (start it from a vm.ron or give --state FILE)")]
    NoFile,
}

/// Where a save reports to (the QMP server's events, or the log).
pub trait SaveReporter: Send + Sync {
    fn progress(&self, done: u64, total: u64);
    fn completed(&self, file: &Path, bytes: u64, ms: u64);
    fn failed(&self, error: &str);
}

/// A request to save, carried by the machine's event channel.
#[derive(Clone)]
pub struct SaveRequest {
    pub reporter: Arc<dyn SaveReporter>,
    pub started: Instant,
}

impl std::fmt::Debug for SaveRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaveRequest")
    }
}

impl PartialEq for SaveRequest {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.reporter, &other.reporter)
    }
}

impl Eq for SaveRequest {}

/// What the machine is, as the saved state records it: a restore into a machine that
/// differs is refused with the first difference.
pub fn machine_description(config: &MachineConfig, states: &StateRegistry) -> String {
    let boot = match &config.firmware {
        Some(fw) => format!("firmware {:?}", fw.kind),
        None => "kernel".to_string(),
    };
    let mut s = format!(
        "memory {}\ncpus {}\nboot {boot}\n",
        config.memory, config.cpus
    );
    for name in states.names() {
        s.push_str("device ");
        s.push_str(name);
        s.push('\n');
    }
    s
}

/// The first line in which two machine descriptions differ, for the error.
fn first_difference(saved: &str, now: &str) -> Option<String> {
    let mut a = saved.lines();
    let mut b = now.lines();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return None,
            (x, y) if x == y => continue,
            (x, y) => {
                return Some(format!(
                    "saved with \"{}\", now \"{}\"",
                    x.unwrap_or("(nothing)"),
                    y.unwrap_or("(nothing)")
                ));
            }
        }
    }
}

/// Guest RAM that holds anything: pages the guest (or the loader) ever touched and that
/// are not all zeros, as runs of consecutive pages.
pub fn ram_runs(mem: &GuestMemoryMmap) -> Result<Vec<RamRun<'_>>, SaveError> {
    let mut runs = Vec::new();
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| SaveError::Mincore(std::io::Error::other("no host address")))?;
        let mut resident = vec![0u8; len.div_ceil(PAGE)];
        // SAFETY: `host` maps `len` bytes (the region's mapping, alive as long as `mem`);
        // mincore writes one byte per page into `resident`, which has that many.
        let rc = unsafe { libc::mincore(host.cast(), len, resident.as_mut_ptr()) };
        if rc != 0 {
            return Err(SaveError::Mincore(std::io::Error::last_os_error()));
        }
        // SAFETY: the region's mapping is `len` bytes of readable memory for the life of
        // `mem`, which the returned runs borrow; no vCPU or device writes it during a save.
        let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len) };
        let mut start: Option<usize> = None;
        for (page, &res) in resident.iter().enumerate() {
            let off = page * PAGE;
            let end = (off + PAGE).min(len);
            let used = res & 1 != 0 && !is_zero(&bytes[off..end]);
            match (used, start) {
                (true, None) => start = Some(off),
                (false, Some(s)) => {
                    runs.push(RamRun {
                        gpa: region.start_addr().0 + s as u64,
                        data: &bytes[s..off],
                    });
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            runs.push(RamRun {
                gpa: region.start_addr().0 + s as u64,
                data: &bytes[s..],
            });
        }
    }
    Ok(runs)
}

fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to splits at the alignment.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Everything a save takes from a stopped machine.
pub struct Parts<'a> {
    pub kvm: &'a Kvm,
    pub vm: &'a VmFd,
    pub vcpus: &'a [VcpuFd],
    pub memory: &'a GuestMemoryMmap,
    pub config: &'a MachineConfig,
    pub states: &'a StateRegistry,
}

/// Writes the machine's state to `path`; returns the file's size.
pub fn save(parts: &Parts<'_>, path: &Path, reporter: &dyn SaveReporter) -> Result<u64, SaveError> {
    let want = parts.config.cpus as usize;
    if parts.vcpus.len() != want {
        return Err(SaveError::VcpusLost {
            got: parts.vcpus.len(),
            want,
        });
    }
    let msrs = kvm_save::msr_list(parts.kvm)?;
    let mut sections = Vec::new();
    let vm = kvm_save::save_vm(parts.vm)?;
    sections.push(section("kvm/vm", "VM", &vm)?);
    for (i, fd) in parts.vcpus.iter().enumerate() {
        let state = kvm_save::save_vcpu(parts.kvm, fd, i as u32, &msrs)?;
        sections.push(section(&format!("kvm/vcpu{i}"), "vCPU", &state)?);
    }
    for (name, data) in parts.states.save()? {
        sections.push(Section {
            name: format!("dev/{name}"),
            data,
        });
    }
    let runs = ram_runs(parts.memory)?;
    let meta = Meta::now(
        parts.config.memory,
        parts.config.cpus,
        machine_description(parts.config, parts.states),
    );
    let mut next_report = 0;
    let size = saved_state::write(path, &meta, &sections, &runs, |done, total| {
        if done >= next_report || done == total {
            reporter.progress(done, total);
            next_report = done + REPORT_EVERY;
        }
    })?;
    Ok(size)
}

fn section<T: serde::Serialize>(
    name: &str,
    what: &'static str,
    value: &T,
) -> Result<Section, SaveError> {
    let data = postcard::to_stdvec(value).map_err(|e| SaveError::Encode(what, e.to_string()))?;
    Ok(Section {
        name: name.to_string(),
        data,
    })
}

fn decode<T: serde::de::DeserializeOwned>(file: &SavedFile, name: &str) -> Result<T, SaveError> {
    let bytes = file
        .section(name)
        .ok_or_else(|| SaveError::Missing(name.to_string()))?;
    postcard::from_bytes(bytes).map_err(|e| SaveError::Decode(name.to_string(), e.to_string()))
}

/// A saved state on its way back into a machine.
pub struct Restore {
    file: SavedFile,
    path: PathBuf,
    /// Delete the file once the machine resumed (the VM folder's own saved state: it must
    /// not be resumed twice, the disks have moved on).
    pub consume: bool,
}

impl Restore {
    /// Opens and checks the saved state at `path` (all but the RAM bytes).
    pub fn open(path: &Path, consume: bool) -> Result<Self, SaveError> {
        Ok(Self {
            file: saved_state::open(path)?,
            path: path.to_path_buf(),
            consume,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the freshly built machine against the saved one.
    pub fn check_machine(
        &self,
        config: &MachineConfig,
        states: &StateRegistry,
    ) -> Result<(), SaveError> {
        let now = machine_description(config, states);
        match first_difference(&self.file.meta.machine, &now) {
            Some(diff) => Err(SaveError::OtherMachine(diff)),
            None => Ok(()),
        }
    }

    /// The VM's KVM state and each vCPU's, decoded before anything is changed.
    pub fn kvm_state(&self, cpus: u32) -> Result<(VmState, Vec<VcpuState>), SaveError> {
        let vm = decode(&self.file, "kvm/vm")?;
        let vcpus = (0..cpus)
            .map(|i| decode(&self.file, &format!("kvm/vcpu{i}")))
            .collect::<Result<_, _>>()?;
        Ok((vm, vcpus))
    }

    /// The devices' sections (names without the `dev/` prefix).
    pub fn device_sections(&self) -> Vec<(String, Vec<u8>)> {
        self.file
            .sections
            .iter()
            .filter_map(|s| Some((s.name.strip_prefix("dev/")?.to_string(), s.data.clone())))
            .collect()
    }

    /// Reads the guest RAM into `mem` and checks it.
    pub fn load_ram(self, mem: &GuestMemoryMmap) -> Result<(), SaveError> {
        let started = Instant::now();
        let bytes = self.file.meta.ram_stored;
        self.file.load_ram(
            |gpa, len| {
                let len = usize::try_from(len).ok()?;
                let region = mem.find_region(GuestAddress(gpa))?;
                let offset = gpa - region.start_addr().0;
                if offset.checked_add(len as u64)? > region.len() {
                    return None;
                }
                let host = region
                    .get_host_address(vm_memory::MemoryRegionAddress(offset))
                    .ok()?;
                // SAFETY: `host..host+len` lies inside the region's mapping (checked just
                // above), which lives as long as `mem`; no vCPU runs yet and no device
                // touches RAM during a restore, and the file's runs do not overlap (the
                // parser checks they ascend), so no two slices alias.
                Some(unsafe { std::slice::from_raw_parts_mut(host, len) })
            },
            |_, _| {},
        )?;
        let ms = started.elapsed().as_millis();
        log::info!("restored {bytes} bytes of guest RAM in {ms} ms");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_touched_nonzero_pages_are_saved() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 * PAGE)]).unwrap();
        use vm_memory::Bytes;
        // Touched with data: pages 1, 2 (one run) and 10; page 5 touched with zeros.
        mem.write_slice(&[7; 2 * PAGE], GuestAddress(PAGE as u64))
            .unwrap();
        mem.write_slice(&[0; PAGE], GuestAddress(5 * PAGE as u64))
            .unwrap();
        mem.write_obj(1u8, GuestAddress(10 * PAGE as u64 + 4095))
            .unwrap();
        let runs = ram_runs(&mem).unwrap();
        let got: Vec<(u64, usize)> = runs.iter().map(|r| (r.gpa, r.data.len())).collect();
        assert_eq!(got, vec![(PAGE as u64, 2 * PAGE), (10 * PAGE as u64, PAGE)]);
        assert!(runs[0].data.iter().all(|&b| b == 7));
    }

    #[test]
    fn a_changed_machine_is_named_in_the_error() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        let d = first_difference("memory 1\ndevice serial\n", "memory 1\n").unwrap();
        assert!(
            d.contains("device serial") && d.contains("(nothing)"),
            "{d}"
        );
    }
}
