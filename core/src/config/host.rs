//! What this computer has, for the checks that a VM fits it.

use super::size::Size;

/// Host limits a VM's settings are checked against. `None` skips that check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostLimits {
    /// Logical CPUs this process may use.
    pub cpus: Option<u32>,
    /// Total RAM.
    pub memory: Option<Size>,
}

impl HostLimits {
    /// Reads the limits of this computer (`/proc/meminfo`, the CPUs this process may use).
    pub fn detect() -> HostLimits {
        let cpus = std::thread::available_parallelism()
            .ok()
            .and_then(|n| u32::try_from(n.get()).ok());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_total(&text));
        HostLimits { cpus, memory }
    }

    /// No limits: only the schema and files are checked.
    pub fn unlimited() -> HostLimits {
        HostLimits::default()
    }
}

/// `MemTotal` from `/proc/meminfo` text.
fn mem_total(meminfo: &str) -> Option<Size> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Size::kib(kib))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total_from_meminfo() {
        let text = "MemTotal:       24567890 kB\nMemFree:        1234 kB\n";
        assert_eq!(mem_total(text), Some(Size::kib(24_567_890)));
        assert_eq!(mem_total("MemFree: 12 kB\n"), None);
    }

    #[test]
    fn detects_a_host_with_cpus_and_memory() {
        let host = HostLimits::detect();
        assert!(host.cpus.is_some_and(|n| n >= 1));
        assert!(host.memory.is_some_and(|m| m > Size::mib(64)));
    }
}
