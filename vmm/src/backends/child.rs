//! Starting a peer process (passt, swtpm) the way the helper supervises them: it
//! inherits one socket of ours, runs with no signals blocked, and ends with the thread
//! that started it.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Prepares `cmd` so that the child keeps descriptor `fd` open across exec, starts with
/// an empty signal mask (the helper blocks its quit signals in every thread, and a peer
/// must still stop on SIGTERM), and gets SIGTERM when the thread that spawns it ends
/// (spawn it from a thread that lives as long as the peer should).
pub fn inherit_fd_and_die_with_thread(cmd: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (fcntl, sigprocmask, prctl) on values it owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
