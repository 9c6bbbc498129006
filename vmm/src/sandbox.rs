//! The helper confines itself once its host-side set-up is done: Landlock limits the file
//! system to what this VM uses, `PR_SET_NO_NEW_PRIVS` forbids gaining privileges, and a
//! seccomp filter allows only the system calls the helper makes while it runs a guest.
//!
//! Both are per thread and inherited by threads started later: [`Sandbox::confine`] runs
//! on the main thread after the peers (passt, swtpm) and PipeWire are started and before
//! the VM is built, so every thread that handles guest or client data (vCPUs, device
//! workers, QMP, VNC, serial input, USB, the signal thread) starts confined. The threads
//! started before it stay outside on purpose: the passt and swtpm supervisors `execve` the
//! peers again when they die (a peer would inherit the filter and the Landlock domain),
//! and PipeWire's loop loads its plugins on its own schedule.
//!
//! A system call outside the list does not kill the helper: it fails with `EPERM`, and a
//! SIGSYS handler writes one line naming it to stderr (`helper.log` under the app), so a
//! missing entry shows up as an error with its cause rather than as a mysterious death.
//! `clone3` fails with `ENOSYS` instead (a second, stacked filter), silently: glibc then
//! starts threads with `clone`, whose flags the filter checks (threads only, no new
//! processes). A refused call made with SIGSYS blocked (none known) kills the helper.
//!
//! `--sandbox off` (or `HOSPES_SANDBOX=off`) leaves the helper unconfined, for debugging.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::machine::{MachineConfig, SerialConfig};
use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, path_beneath_rules,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The Landlock ABI whose file rights the helper asks for (truncate, device ioctls);
/// older kernels enforce what they know (best effort).
const LANDLOCK_ABI: ABI = ABI::V5;

/// Environment variable: `off` disables the sandbox like `--sandbox off`.
pub const ENV: &str = "HOSPES_SANDBOX";

/// Test hook (see `tests/tests/sandbox.rs`): when set, the helper makes one system call the
/// filter refuses, `unshare(0)` (a no-op that succeeds unconfined), right after confining
/// itself and logs the result. No client of the helper can make it call anything outside
/// the list, so a test needs this to see the filter refuse a call in a running helper.
pub const PROBE_ENV: &str = "HOSPES_SANDBOX_PROBE";

/// Set once [`Sandbox::confine`] succeeded: vCPU threads then add [`vcpu_filter`].
static CONFINED: AtomicBool = AtomicBool::new(false);

/// Errors setting up the sandbox (the helper does not start unconfined after one).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("Landlock")]
    Landlock(#[from] landlock::RulesetError),
    #[error("cannot build the seccomp filter")]
    Seccomp(#[from] seccompiler::BackendError),
    #[error("cannot install the seccomp filter")]
    Install(#[from] seccompiler::Error),
    #[error("cannot set no_new_privs or the SIGSYS handler")]
    Os(#[source] std::io::Error),
}

/// What the confined helper may open: built from the machine's configuration.
#[derive(Debug, Default, Clone)]
pub struct Sandbox {
    /// Files and folders opened read-only (firmware, kernel, read-only disks, CD images).
    read: Vec<PathBuf>,
    /// Files and folders opened read-write (disks, the VM folder, /dev/kvm).
    write: Vec<PathBuf>,
    /// Folders where the helper may remove an empty folder (its temporary TPM state).
    remove_dirs: Vec<PathBuf>,
}

/// What [`Sandbox::confine`] enforced, for the log line.
#[derive(Debug)]
pub struct Confined {
    /// The Landlock ABI the kernel offers (0: none).
    pub landlock_abi: i32,
    /// Whether Landlock enforces every right asked for.
    pub landlock: RulesetStatus,
    /// Paths in the Landlock allow-list.
    pub paths: usize,
    /// System calls the filter allows.
    pub syscalls: usize,
}

impl Sandbox {
    /// The allow-list every helper needs: KVM, a few device nodes, its own /proc, the
    /// time zone (local-time CMOS clock), and the CPU topology in /sys.
    pub fn new() -> Self {
        let mut s = Self::default();
        s.write("/dev/kvm");
        s.write("/dev/null");
        s.read("/dev/urandom");
        s.read("/proc/self");
        s.read("/proc/meminfo");
        s.read("/proc/cpuinfo");
        s.read("/sys/devices/system/cpu");
        s.read("/etc/localtime");
        s.read("/usr/share/zoneinfo");
        s
    }

    /// [`Sandbox::new`] plus what `config` opens on every boot: the kernel and initrd, the
    /// firmware (its folder too: OVMF's VARS template lies beside CODE), the VM's UEFI
    /// variable store (its folder: it is made there on the first start), the VGA BIOS,
    /// and the serial log or socket.
    pub fn for_machine(config: &MachineConfig) -> Self {
        let mut s = Self::new();
        if !config.kernel.as_os_str().is_empty() {
            s.read(&config.kernel);
        }
        if let Some(initrd) = &config.initrd {
            s.read(initrd);
        }
        if let Some(fw) = &config.firmware {
            s.read_with_folder(&fw.image);
            if let Some(rom) = &fw.vga_rom {
                s.read_with_folder(rom);
            }
            if let Some(vars) = &fw.vars {
                s.write(vars);
                s.create_beside(vars);
                let template = match fw.secure_boot {
                    true => crate::machine::uefi::secure_vars_template(&fw.image),
                    false => crate::machine::uefi::vars_template(&fw.image),
                };
                if let Ok(t) = template {
                    s.read_with_folder(&t);
                }
            }
        }
        match &config.serial {
            SerialConfig::Unix(path) | SerialConfig::File(path) => {
                s.create_beside(path);
            }
            SerialConfig::Stdio | SerialConfig::None => {}
        }
        s
    }

    /// Allows reading `path` and everything in the folder holding it (symbolic links
    /// there may point to the folder's neighbours, which Landlock checks as themselves).
    pub fn read_with_folder(&mut self, path: &Path) -> &mut Self {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            self.read(dir);
        }
        self.read(path)
    }

    /// Allows reading `path` (a file, or a folder and everything in it).
    pub fn read(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.read.push(path.into());
        self
    }

    /// Allows reading and writing `path` (a file, or a folder and everything in it,
    /// including making and removing files and sockets there).
    pub fn write(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.write.push(path.into());
        self
    }

    /// Allows making files and sockets in the folder holding `path` (a socket the helper
    /// binds, a serial log it creates).
    pub fn create_beside(&mut self, path: &Path) -> &mut Self {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        self.write(dir)
    }

    /// Allows removing the folder `dir` itself once it is empty (its contents need
    /// [`Sandbox::write`] on it).
    pub fn remove_dir(&mut self, dir: &Path) -> &mut Self {
        if let Some(parent) = dir.parent() {
            self.remove_dirs.push(parent.to_path_buf());
        }
        self
    }

    /// Host USB devices: their nodes, what the kernel and udev say about them.
    pub fn usb_host(&mut self) -> &mut Self {
        self.write("/dev/bus/usb");
        self.read("/sys/bus/usb");
        self.read("/sys/devices");
        self.read("/sys/class");
        self.read("/run/udev");
        self
    }

    /// The paths, for the docs and the log.
    pub fn paths(&self) -> impl Iterator<Item = (&Path, &'static str)> {
        let read = self.read.iter().map(|p| (p.as_path(), "read"));
        let write = self.write.iter().map(|p| (p.as_path(), "read-write"));
        let rm = self.remove_dirs.iter().map(|p| (p.as_path(), "remove-dir"));
        read.chain(write).chain(rm)
    }

    /// Confines the calling thread and every thread it starts later: Landlock (best
    /// effort: a kernel without it is logged and the helper goes on), no new privileges,
    /// then the seccomp filter.
    pub fn confine(&self) -> Result<Confined, SandboxError> {
        let landlock_abi = landlock_abi();
        let landlock = self.landlock()?;
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(SandboxError::Os(std::io::Error::last_os_error()));
        }
        install_sigsys_handler()?;
        let (filter, syscalls) = filter()?;
        seccompiler::apply_filter(&no_clone3()?)?;
        seccompiler::apply_filter(&filter)?;
        CONFINED.store(true, Ordering::SeqCst);
        let confined = Confined {
            landlock_abi,
            landlock,
            paths: self.read.len() + self.write.len() + self.remove_dirs.len(),
            syscalls,
        };
        if std::env::var_os(PROBE_ENV).is_some() {
            probe();
        }
        Ok(confined)
    }

    fn landlock(&self) -> Result<RulesetStatus, SandboxError> {
        let all = AccessFs::from_all(LANDLOCK_ABI);
        let status = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)?
            .create()?
            .add_rules(path_beneath_rules(
                &self.read,
                AccessFs::from_read(LANDLOCK_ABI),
            ))?
            .add_rules(path_beneath_rules(&self.write, all))?
            .add_rules(path_beneath_rules(&self.remove_dirs, AccessFs::RemoveDir))?
            .restrict_self()?;
        Ok(status.ruleset)
    }
}

impl std::fmt::Display for Confined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.landlock {
            RulesetStatus::NotEnforced => write!(
                f,
                "Landlock unavailable (kernel ABI {}), files unconfined",
                self.landlock_abi
            )?,
            RulesetStatus::PartiallyEnforced => write!(
                f,
                "Landlock ABI {} (partly enforced) limits files to {} paths",
                self.landlock_abi, self.paths
            )?,
            RulesetStatus::FullyEnforced => write!(
                f,
                "Landlock ABI {} limits files to {} paths",
                self.landlock_abi, self.paths
            )?,
        }
        write!(
            f,
            "; no new privileges; seccomp allows {} system calls (others fail with EPERM, \
             logged)",
            self.syscalls
        )
    }
}

/// The Landlock ABI this kernel offers, 0 without Landlock.
fn landlock_abi() -> i32 {
    // SAFETY: landlock_create_ruleset with a null attribute and the VERSION flag only
    // returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    v.max(0) as i32
}

/// System calls the confined helper makes, allowed with any arguments. Gathered with
/// `strace -f` over the test suite (see docs/sandbox.md), the set-up calls before the
/// filter left out.
const ALLOWED: &[(i64, &str)] = &[
    // KVM, usbfs, the terminal; Landlock limits which device files can be opened.
    (libc::SYS_ioctl, "ioctl"),
    // Files: images, firmware, VARS, the CD a client inserts, /proc/self.
    (libc::SYS_openat, "openat"),
    (libc::SYS_close, "close"),
    (libc::SYS_read, "read"),
    (libc::SYS_write, "write"),
    (libc::SYS_readv, "readv"),
    (libc::SYS_writev, "writev"),
    (libc::SYS_pread64, "pread64"),
    (libc::SYS_pwrite64, "pwrite64"),
    (libc::SYS_preadv, "preadv"),
    (libc::SYS_pwritev, "pwritev"),
    (libc::SYS_lseek, "lseek"),
    (libc::SYS_fstat, "fstat"),
    (libc::SYS_newfstatat, "newfstatat"),
    (libc::SYS_statx, "statx"),
    (libc::SYS_access, "access"),
    (libc::SYS_faccessat2, "faccessat2"),
    (libc::SYS_readlink, "readlink"),
    (libc::SYS_readlinkat, "readlinkat"),
    (libc::SYS_getdents64, "getdents64"),
    (libc::SYS_fcntl, "fcntl"),
    (libc::SYS_fsync, "fsync"),
    (libc::SYS_fdatasync, "fdatasync"),
    (libc::SYS_ftruncate, "ftruncate"),
    (libc::SYS_fallocate, "fallocate"),
    (libc::SYS_flock, "flock"),
    (libc::SYS_dup, "dup"),
    (libc::SYS_dup2, "dup2"),
    (libc::SYS_dup3, "dup3"),
    (libc::SYS_pipe2, "pipe2"),
    // OVMF_VARS.fd made atomically (a copy renamed or linked into place), the serial
    // socket replaced, the temporary TPM folder removed.
    (libc::SYS_linkat, "linkat"),
    (libc::SYS_rename, "rename"),
    (libc::SYS_renameat, "renameat"),
    (libc::SYS_renameat2, "renameat2"),
    (libc::SYS_mkdir, "mkdir"),
    (libc::SYS_mkdirat, "mkdirat"),
    // std::fs::copy (the VARS template).
    (libc::SYS_copy_file_range, "copy_file_range"),
    (libc::SYS_sendfile, "sendfile"),
    (libc::SYS_unlink, "unlink"),
    (libc::SYS_unlinkat, "unlinkat"),
    // A save finds the guest pages ever touched (machine::save).
    (libc::SYS_mincore, "mincore"),
    (libc::SYS_rmdir, "rmdir"),
    (libc::SYS_chmod, "chmod"),
    (libc::SYS_fchmod, "fchmod"),
    (libc::SYS_getcwd, "getcwd"),
    // Guest RAM, each boot's VM, thread stacks.
    (libc::SYS_mmap, "mmap"),
    (libc::SYS_munmap, "munmap"),
    (libc::SYS_mprotect, "mprotect"),
    (libc::SYS_mremap, "mremap"),
    (libc::SYS_madvise, "madvise"),
    (libc::SYS_brk, "brk"),
    (libc::SYS_memfd_create, "memfd_create"),
    // Threads (clone is restricted to CLONE_THREAD below) and their waiting.
    (libc::SYS_futex, "futex"),
    (libc::SYS_set_robust_list, "set_robust_list"),
    (libc::SYS_rseq, "rseq"),
    (libc::SYS_set_tid_address, "set_tid_address"),
    (libc::SYS_sched_getaffinity, "sched_getaffinity"),
    (libc::SYS_sched_yield, "sched_yield"),
    (libc::SYS_gettid, "gettid"),
    (libc::SYS_getpid, "getpid"),
    (libc::SYS_getuid, "getuid"),
    (libc::SYS_geteuid, "geteuid"),
    (libc::SYS_prctl, "prctl"),
    // Only ever narrows: each vCPU thread stacks its own filter (confine_vcpu_thread).
    (libc::SYS_seccomp, "seccomp"),
    (libc::SYS_prlimit64, "prlimit64"),
    (libc::SYS_arch_prctl, "arch_prctl"),
    (libc::SYS_exit, "exit"),
    (libc::SYS_exit_group, "exit_group"),
    (libc::SYS_restart_syscall, "restart_syscall"),
    // Signals: the quit signals, vCPU kicks (tgkill on our own threads, see below).
    (libc::SYS_rt_sigaction, "rt_sigaction"),
    (libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
    (libc::SYS_rt_sigreturn, "rt_sigreturn"),
    (libc::SYS_rt_sigtimedwait, "rt_sigtimedwait"),
    (libc::SYS_sigaltstack, "sigaltstack"),
    // Time.
    (libc::SYS_clock_gettime, "clock_gettime"),
    (libc::SYS_clock_nanosleep, "clock_nanosleep"),
    (libc::SYS_nanosleep, "nanosleep"),
    (libc::SYS_gettimeofday, "gettimeofday"),
    (libc::SYS_timerfd_create, "timerfd_create"),
    (libc::SYS_timerfd_settime, "timerfd_settime"),
    (libc::SYS_timerfd_gettime, "timerfd_gettime"),
    // Event loops: eventfds for interrupts and queue kicks.
    (libc::SYS_eventfd2, "eventfd2"),
    (libc::SYS_poll, "poll"),
    (libc::SYS_ppoll, "ppoll"),
    (libc::SYS_epoll_create1, "epoll_create1"),
    (libc::SYS_epoll_ctl, "epoll_ctl"),
    (libc::SYS_epoll_wait, "epoll_wait"),
    (libc::SYS_epoll_pwait, "epoll_pwait"),
    // Sockets: QMP, VNC, the serial socket, passt's and swtpm's, usbfs hot-plug
    // (netlink). They are bound while the sandbox is already on.
    (libc::SYS_socket, "socket"),
    (libc::SYS_socketpair, "socketpair"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_listen, "listen"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_getsockname, "getsockname"),
    (libc::SYS_getpeername, "getpeername"),
    (libc::SYS_setsockopt, "setsockopt"),
    (libc::SYS_getsockopt, "getsockopt"),
    (libc::SYS_shutdown, "shutdown"),
    (libc::SYS_sendto, "sendto"),
    (libc::SYS_recvfrom, "recvfrom"),
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_recvmsg, "recvmsg"),
    // Host facts: RAM size, entropy for virtio-rng.
    (libc::SYS_sysinfo, "sysinfo"),
    (libc::SYS_uname, "uname"),
    (libc::SYS_getrandom, "getrandom"),
];

/// The filter: [`ALLOWED`] with any arguments, `clone` for threads only, `tgkill` on this
/// process only; anything else traps to [`on_sigsys`].
fn filter() -> Result<(BpfProgram, usize), SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|(nr, _)| (*nr, Vec::new())).collect();
    let thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )?;
    rules.insert(libc::SYS_clone, vec![SeccompRule::new(vec![thread])?]);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    let own = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, pid)?;
    rules.insert(libc::SYS_tgkill, vec![SeccompRule::new(vec![own])?]);
    // Answered by no_clone3's filter (stacked filters: its ERRNO beats this ALLOW).
    rules.insert(libc::SYS_clone3, Vec::new());
    let count = rules.len();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok((filter.try_into()?, count))
}

/// Calls a vCPU thread (and the device workers it starts) never needs: opening, making
/// or removing files, new sockets. Guest-driven device code runs in these threads.
const VCPU_FORBIDDEN: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_linkat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rmdir,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_getdents64,
];

/// The vCPU threads' own filter, stacked on the process filter: [`VCPU_FORBIDDEN`] trap.
fn vcpu_filter() -> Result<BpfProgram, SandboxError> {
    let rules = VCPU_FORBIDDEN.iter().map(|nr| (*nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Trap,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Narrows the calling vCPU thread's system calls further (see [`VCPU_FORBIDDEN`]) when
/// the helper is confined; a no-op with `--sandbox off`.
pub fn confine_vcpu_thread() {
    if !CONFINED.load(Ordering::SeqCst) {
        return;
    }
    if let Err(e) = vcpu_filter().and_then(|f| Ok(seccompiler::apply_filter(&f)?)) {
        log::warn!("sandbox: the vCPU filter is not installed: {e}");
    }
}

/// `clone3` fails with `ENOSYS`, so that glibc starts threads with `clone`, whose flags
/// [`filter`] checks (`clone3` takes them in memory). A filter of its own, since glibc
/// calls it with every signal blocked, where a trap would kill the helper.
fn no_clone3() -> Result<BpfProgram, SandboxError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Installs [`on_sigsys`] for SIGSYS (the filter's trap).
fn install_sigsys_handler() -> Result<(), SandboxError> {
    // SAFETY: sigaction is plain data, all-zero is a valid empty action; the handler has
    // the SA_SIGINFO signature.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(SandboxError::Os(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Offset of `si_syscall` in the kernel's `siginfo_t` on x86-64 (signo, errno, code, a
/// pad, then `_sigsys { void *call_addr; int syscall; }`).
const SI_SYSCALL_OFFSET: usize = 24;

/// SIGSYS from the filter: the system call did not run. Makes it return `-EPERM` and says
/// which call it was.
/// Async-signal-safe: no allocation, one `write`.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext for an SA_SIGINFO handler;
    // si_syscall is an int at SI_SYSCALL_OFFSET for SIGSYS.
    let nr =
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) };
    let mut line = [0u8; 96];
    let len = refusal_line(nr, &mut line);
    // SAFETY: writing a stack buffer to stderr.
    unsafe { libc::write(2, line.as_ptr().cast(), len) };
    let errno = libc::EPERM;
    // SAFETY: ctx is this thread's ucontext; RAX becomes the system call's result.
    unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(errno);
    }
}

/// Formats "hospes-vmm: sandbox refused system call N\n" into `buf` without allocating;
/// returns its length.
fn refusal_line(nr: i32, buf: &mut [u8; 96]) -> usize {
    const HEAD: &[u8] = b"hospes-vmm: sandbox refused system call ";
    buf[..HEAD.len()].copy_from_slice(HEAD);
    let mut len = HEAD.len();
    let mut digits = [0u8; 12];
    let mut n = i64::from(nr).unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if nr < 0 {
        buf[len] = b'-';
        len += 1;
    }
    let d = &digits[i..];
    buf[len..len + d.len()].copy_from_slice(d);
    len += d.len();
    const TAIL: &[u8] = b" (x86-64 number; see docs/sandbox.md)\n";
    buf[len..len + TAIL.len()].copy_from_slice(TAIL);
    len + TAIL.len()
}

/// The test hook: one call the filter refuses, its result logged.
fn probe() {
    // SAFETY: unshare(0) changes nothing.
    let r = unsafe { libc::unshare(0) };
    let result = match r {
        0 => "allowed".to_owned(),
        _ => std::io::Error::last_os_error().to_string(),
    };
    log::info!("sandbox probe: unshare(0): {result}");
    let _ = std::io::stderr().flush();
}

/// Whether `--sandbox`/`HOSPES_SANDBOX` leave the sandbox on (`flag`: the flag's value).
pub fn enabled(flag: Option<bool>) -> bool {
    match flag {
        Some(on) => on,
        None => std::env::var(ENV).map_or(true, |v| v != "off"),
    }
}

/// Confines the helper as `sandbox` says, logging what it did; an error is fatal to the
/// helper (it does not run a guest unconfined when asked not to).
pub fn confine_or_log(sandbox: &Sandbox) -> Result<(), SandboxError> {
    for (path, how) in sandbox.paths() {
        log::debug!("sandbox: {how} {}", path.display());
    }
    let confined = sandbox.confine()?;
    log::info!("sandbox: {confined}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_line_names_the_number() {
        let mut buf = [0u8; 96];
        let len = refusal_line(272, &mut buf);
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert_eq!(
            text,
            "hospes-vmm: sandbox refused system call 272 (x86-64 number; see docs/sandbox.md)\n"
        );
        let len = refusal_line(0, &mut buf);
        assert!(
            std::str::from_utf8(&buf[..len])
                .unwrap()
                .contains(" call 0 ")
        );
        let len = refusal_line(i32::MIN, &mut buf);
        assert!(
            std::str::from_utf8(&buf[..len])
                .unwrap()
                .contains("-2147483648")
        );
    }

    #[test]
    fn the_filter_compiles_and_leaves_out_process_creation() {
        let (_, count) = filter().unwrap();
        assert!(count > 50, "{count}");
        no_clone3().unwrap();
        vcpu_filter().unwrap();
        for nr in VCPU_FORBIDDEN {
            assert!(
                ALLOWED.iter().any(|(a, _)| a == nr),
                "{nr} is not allowed anyway"
            );
        }
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_clone3,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_kill,
        ] {
            assert!(
                !ALLOWED.iter().any(|(nr, _)| *nr == forbidden),
                "{forbidden}"
            );
        }
    }

    #[test]
    fn socket_and_log_folders_become_writable() {
        let mut s = Sandbox::default();
        s.create_beside(Path::new("/run/user/1/hospes/qmp.sock"));
        s.create_beside(Path::new("serial.sock"));
        s.remove_dir(Path::new("/tmp/hospes-tpm-1-0"));
        let paths: Vec<_> = s.paths().map(|(p, h)| (p.to_path_buf(), h)).collect();
        assert_eq!(
            paths,
            vec![
                (PathBuf::from("/run/user/1/hospes"), "read-write"),
                (PathBuf::from("."), "read-write"),
                (PathBuf::from("/tmp"), "remove-dir"),
            ]
        );
    }
}
