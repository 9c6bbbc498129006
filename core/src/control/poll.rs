//! Waiting on two descriptors at once with `poll(2)`: the server's accept loop (listener
//! and stop socket) and the console (terminal and serial socket) both need it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Blocks until `a` or `b` is readable, hung up or in error; returns which ones are.
/// Retries when a signal interrupts the wait.
pub(crate) fn wait_either(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd structs that lives across the call,
        // the length passed matches it, and both descriptors are borrowed, hence open.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 {
            return Ok((fds[0].revents != 0, fds[1].revents != 0));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
