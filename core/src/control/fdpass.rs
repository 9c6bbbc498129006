//! File descriptors over the QMP unix socket (`SCM_RIGHTS`), as QEMU's `getfd` takes them.
//!
//! Data flow: the client writes the `getfd` request with one descriptor attached
//! ([`send_with_fd`]); the server's reader reads every chunk with [`recv_with_fds`], which
//! returns the bytes and any descriptors that came with them as [`OwnedFd`]s (closed on
//! drop, so a descriptor nobody claims never leaks). Descriptors arrive close-on-exec
//! (`MSG_CMSG_CLOEXEC`), so a helper that spawns a child never hands them on.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use serde::Deserialize;
use serde_json::{Value, json};

use super::VmControl;
use super::protocol::QmpError;

/// The control buffer, in u64s (so it is aligned for `cmsghdr`): 64 bytes, room for one
/// `SCM_RIGHTS` message of up to 10 descriptors. QMP's `getfd` passes one; the kernel
/// closes any that do not fit (`MSG_CTRUNC`).
const CONTROL_WORDS: usize = 8;

/// Writes all of `bytes` with `fd` attached to the first chunk sent.
pub fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw: RawFd = fd.as_raw_fd();
    let fd_len = std::mem::size_of::<RawFd>();
    let mut control = [0u64; CONTROL_WORDS];
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(fd_len as u32) } as usize;
    if space > std::mem::size_of_val(&control) {
        return Err(io::Error::other("control buffer too small"));
    }
    let iov = [IoSlice::new(bytes)];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `control`, which holds `space` bytes, so the first
    // header fits; CMSG_FIRSTHDR returns a pointer inside it (non-null, checked).
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err(io::Error::other("no room for the control message"));
    }
    // SAFETY: `cmsg` points at a header inside `control` (see above), and CMSG_DATA of it
    // has room for one descriptor because the buffer was sized with CMSG_SPACE(fd_len);
    // write_unaligned copes with any alignment of the data.
    unsafe {
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_len as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), raw);
    }
    let sent = loop {
        // SAFETY: `msg` describes `iov` and `control`, both alive across the call; the
        // socket is open (borrowed from `stream`).
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    // The descriptor went with the first byte; the rest is plain data.
    let rest = bytes.get(sent..).unwrap_or_default();
    io::Write::write_all(&mut &*stream, rest)
}

/// Reads into `buf` like `read(2)`, appending the descriptors that came with these bytes
/// to `fds`. Returns the number of bytes read (0 at end of stream).
pub fn recv_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = [IoSliceMut::new(buf)];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr().cast();
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes `iov` (the caller's buffer) and `control`, both alive
    // across the call; the socket is open (borrowed from `stream`).
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `msg.msg_control` with `msg_controllen` bytes of control
    // messages; CMSG_FIRSTHDR/CMSG_NXTHDR walk only inside that length.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a header inside the control buffer (see above).
        let header = unsafe { std::ptr::read_unaligned(cmsg) };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) only computes the header's size.
            let data_len = header.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            let count = data_len / std::mem::size_of::<RawFd>();
            // SAFETY: the data of this header holds `count` descriptors, inside the buffer.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: `i < count`, inside this header's data; read_unaligned copes
                // with any alignment.
                let raw = unsafe { std::ptr::read_unaligned(data.add(i)) };
                // SAFETY: the kernel just installed `raw` in this process for us; no one
                // else owns it, so the OwnedFd is its only owner and closes it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as above, NXTHDR stays inside msg_controllen or returns null.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(n as usize)
}

/// Most named descriptors one connection may hold; `getfd` past that is refused, so a
/// client cannot make the helper keep descriptors without bound.
pub const MAX_NAMED_FDS: usize = 16;

/// A connection's descriptors: those that arrived with its latest bytes (waiting for the
/// `getfd` they came with) and those `getfd` named. Dropped with the connection, which
/// closes them all.
#[derive(Debug, Default)]
pub struct FdTable {
    /// Received with the latest chunk that carried any; QEMU keeps only those too.
    pending: Vec<OwnedFd>,
    named: Vec<(String, OwnedFd)>,
}

impl FdTable {
    /// Takes the descriptors that came with a chunk of bytes: they replace (close) any
    /// earlier ones that no `getfd` claimed. A chunk without any changes nothing, since
    /// a `getfd` text may end in a later chunk than the one its descriptor came with.
    pub fn receive(&mut self, fds: Vec<OwnedFd>) {
        if !fds.is_empty() {
            self.pending = fds;
        }
    }

    /// Whether a descriptor is held under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.named.iter().any(|(n, _)| n == name)
    }

    /// Takes the descriptor named `name` out of the table (the caller owns it now).
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let at = self.named.iter().position(|(n, _)| n == name)?;
        Some(self.named.remove(at).1)
    }

    /// How many named descriptors are held.
    pub fn len(&self) -> usize {
        self.named.len()
    }

    /// Whether no named descriptor is held.
    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }
}

/// `getfd` arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GetfdArgs {
    fdname: String,
}

/// `closefd` arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClosefdArgs {
    fdname: String,
}

/// `getfd`: names the descriptor that came with this command's bytes. A name already in
/// use gets the new descriptor (the old one is closed), as in QEMU.
pub(super) fn getfd(_: &dyn VmControl, fds: &mut FdTable, a: GetfdArgs) -> Result<Value, QmpError> {
    if a.fdname.is_empty() || a.fdname.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(QmpError::generic(
            "Parameter 'fdname' expects a name not starting with a digit",
        ));
    }
    if fds.pending.is_empty() {
        return Err(QmpError::generic(
            "No file descriptor supplied via SCM_RIGHTS",
        ));
    }
    let replacing = fds.contains(&a.fdname);
    if !replacing && fds.named.len() >= MAX_NAMED_FDS {
        return Err(QmpError::generic(format!(
            "Too many named file descriptors (at most {MAX_NAMED_FDS}): close some with closefd"
        )));
    }
    let fd = fds.pending.remove(0);
    // Any others that came in the same message are not ours to keep.
    fds.pending.clear();
    drop(fds.take(&a.fdname));
    fds.named.push((a.fdname, fd));
    Ok(json!({}))
}

/// `closefd`: closes the descriptor named `fdname`.
pub(super) fn closefd(
    _: &dyn VmControl,
    fds: &mut FdTable,
    a: ClosefdArgs,
) -> Result<Value, QmpError> {
    match fds.take(&a.fdname) {
        Some(fd) => {
            drop(fd);
            Ok(json!({}))
        }
        None => Err(QmpError::generic(format!(
            "File descriptor named '{}' not found",
            a.fdname
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_descriptor_sent_with_the_bytes_arrives_with_them_and_works() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut pipe_r, pipe_w) = std::io::pipe().unwrap();
        send_with_fd(&a, b"{\"execute\":\"getfd\"}", pipe_w.as_fd()).unwrap();
        drop(pipe_w);
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        let n = recv_with_fds(&b, &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"{\"execute\":\"getfd\"}");
        assert_eq!(fds.len(), 1);
        let mut writer = std::fs::File::from(fds.pop().unwrap());
        writer.write_all(b"through").unwrap();
        drop(writer);
        let mut got = String::new();
        pipe_r.read_to_string(&mut got).unwrap();
        assert_eq!(
            got, "through",
            "the received descriptor is the pipe's write end"
        );
    }

    #[test]
    fn plain_bytes_bring_no_descriptor() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"hello").unwrap();
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(&b, &mut buf, &mut fds).unwrap(), 5);
        assert!(fds.is_empty());
        drop(a);
        assert_eq!(
            recv_with_fds(&b, &mut buf, &mut fds).unwrap(),
            0,
            "end of stream"
        );
    }
}
