//! Serving one virtio-blk queue on the worker thread.
//!
//! A request is read as two byte streams, whatever the descriptor framing: the
//! device-readable bytes (16-byte header, then write data or discard segments) and the
//! device-writable bytes (read data or the ID, then the status byte, always last). Data moves
//! between the file and guest memory with `preadv`/`pwritev` on iovecs that point into guest
//! memory, built in vectors reused from request to request.
//!
//! Chain heads come off the avail ring and go back on the used ring through a host mapping
//! of both rings ([`drain_heads_polling`], [`crate::virtio::ring::SplitRing`]); the
//! chain itself (descriptors, indirect tables) is walked here, through a cache of the guest
//! memory region the last access hit ([`HostView`]), as are the header, the status byte and
//! the iovecs: vm-memory's general path searches the regions on every access, which at 4 KiB
//! costs more than the device's own work. After a batch the worker watches the ring for a
//! moment so a driver that resubmits at once needs no kick.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SECTOR_SIZE};
use crate::disk_image::DiskImage;
use crate::virtio::worker::{MAX_POLL, drain_heads_polling};
use crate::virtio::{GuestMemory, VirtioInterrupt};

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

const HEADER_LEN: u64 = 16;
const SEGMENT_LEN: u64 = 16;
/// More descriptors than this in one chain is malformed (a queue holds 256; an indirect
/// table could hold 65535).
const MAX_DESCRIPTORS: usize = 1024;

/// Why a request failed; each maps to the status byte the guest sees.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request shorter than its header")]
    ShortHeader,
    #[error("data length {0} is not a multiple of the sector size")]
    UnalignedLength(u64),
    #[error("sectors past the end of the disk")]
    OutOfRange,
    #[error("guest buffer is not in guest memory")]
    BadBuffer,
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("malformed discard or write-zeroes segment")]
    BadSegment,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("host I/O failed")]
    Io(#[source] io::Error),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

/// A run of guest bytes a descriptor names.
#[derive(Debug, Clone, Copy)]
struct Seg {
    addr: u64,
    len: u64,
}

/// Calls `f(addr, len)` for each guest range covering bytes `[skip, skip + len)` of `segs`.
fn for_ranges(
    segs: &[Seg],
    mut skip: u64,
    mut len: u64,
    mut f: impl FnMut(GuestAddress, u64) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    for s in segs {
        if len == 0 {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = (s.len - skip).min(len);
        let addr = s.addr.checked_add(skip).ok_or(RequestError::BadBuffer)?;
        f(GuestAddress(addr), n)?;
        len -= n;
        skip = 0;
    }
    if len == 0 {
        Ok(())
    } else {
        Err(RequestError::BadBuffer)
    }
}

/// The disk side: the image and what the device offers.
pub struct Disk {
    /// The image; when it is raw ([`DiskImage::raw_file`]), data moves with
    /// `preadv`/`pwritev` straight between its file and guest memory, and discards become
    /// `fallocate`.
    image: Arc<dyn DiskImage>,
    sectors: u64,
    read_only: bool,
    id: [u8; 20],
}

impl Disk {
    /// A disk over `image`, of `sectors` sectors.
    pub fn new(image: Arc<dyn DiskImage>, sectors: u64, read_only: bool, id: [u8; 20]) -> Self {
        Self {
            image,
            sectors,
            read_only,
            id,
        }
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            image: self.image.clone(),
            ..*self
        })
    }

    fn check_range(&self, sector: u64, bytes: u64) -> Result<u64, RequestError> {
        let start = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or(RequestError::OutOfRange)?;
        let end = start.checked_add(bytes).ok_or(RequestError::OutOfRange)?;
        if end > self.sectors.saturating_mul(SECTOR_SIZE) {
            return Err(RequestError::OutOfRange);
        }
        Ok(start)
    }

    fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by `file`.
        let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Reused per-request scratch space.
#[derive(Default)]
struct Scratch {
    readable: Vec<Seg>,
    writable: Vec<Seg>,
    iovecs: Vec<libc::iovec>,
    view: HostView,
    /// Bounce buffer for images that are not plain files.
    bounce: Vec<u8>,
}

// SAFETY: the raw pointers in `iovecs` and `view` point into the guest memory held by the
// same handler (moved with it to the worker thread, never unmapped while it lives); `iovecs`
// is rewritten before every use.
unsafe impl Send for Scratch {}

/// The guest memory region the last access hit, with its host address: requests keep
/// touching the same region (descriptor table, headers, buffers, status bytes), so most
/// accesses skip vm-memory's region search. A miss looks the region up again.
struct HostView {
    start: u64,
    end: u64,
    host: *mut u8,
}

impl Default for HostView {
    fn default() -> Self {
        Self {
            start: 0,
            end: 0,
            host: std::ptr::null_mut(),
        }
    }
}

impl HostView {
    /// The host address of guest bytes `[addr, addr + len)` if they lie in one region.
    /// Inlined: every request makes several of these, and the hit is a few instructions.
    #[inline(always)]
    fn get(&mut self, mem: &GuestMemory, addr: u64, len: u64) -> Option<*mut u8> {
        let end = addr.checked_add(len)?;
        if addr < self.start || end > self.end {
            self.remap(mem, addr, end)?;
        }
        // SAFETY: `[addr, end)` lies in the cached region, so the offset stays inside its
        // mapping, which starts at `host`.
        Some(unsafe { self.host.add((addr - self.start) as usize) })
    }

    /// Caches the region holding `addr`; `None` if there is none or `[addr, end)` runs
    /// past it.
    #[cold]
    #[inline(never)]
    fn remap(&mut self, mem: &GuestMemory, addr: u64, end: u64) -> Option<()> {
        let region = mem.find_region(GuestAddress(addr))?;
        let host = region.get_host_address(MemoryRegionAddress(0)).ok()?;
        self.start = region.start_addr().0;
        self.end = self.start.checked_add(region.len())?;
        self.host = host;
        (end <= self.end).then_some(())
    }

    /// Reads `N` guest bytes at `addr`, from the cached mapping or vm-memory's general path
    /// for a range across regions.
    #[inline(always)]
    fn read<const N: usize>(&mut self, mem: &GuestMemory, addr: u64) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        match self.get(mem, addr, N as u64) {
            // SAFETY: `get` checked that the N bytes are mapped guest memory, which no Rust
            // reference aliases; `out` is a distinct local of N bytes.
            Some(p) => unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), N) },
            None => read_across_regions(mem, addr, &mut out)?,
        }
        Some(out)
    }

    /// Writes one guest byte at `addr`.
    fn write_u8(&mut self, mem: &GuestMemory, addr: u64, v: u8) -> Result<(), RequestError> {
        let p = self.get(mem, addr, 1).ok_or(RequestError::BadBuffer)?;
        // SAFETY: `get` checked that the byte is mapped guest memory.
        unsafe { std::ptr::write_volatile(p, v) };
        Ok(())
    }
}

/// Serves one queue: owned by the worker thread.
pub struct BlockHandler {
    mem: GuestMemory,
    queue: Queue,
    index: u16,
    interrupt: Arc<dyn VirtioInterrupt>,
    disk: Disk,
    scratch: Scratch,
}

impl BlockHandler {
    pub fn new(
        mem: GuestMemory,
        queue: Queue,
        index: u16,
        interrupt: Arc<dyn VirtioInterrupt>,
        disk: Disk,
    ) -> Self {
        Self {
            mem,
            queue,
            index,
            interrupt,
            disk,
            scratch: Scratch::default(),
        }
    }

    /// Where the queue stands (for a save, once the worker has stopped).
    pub fn position(&self) -> crate::virtio::QueuePosition {
        crate::virtio::QueuePosition::of(self.index, &self.queue)
    }

    /// Serves every available request, interrupting the driver after each batch if it wants
    /// it, and watches the ring up to [`MAX_POLL`] for the driver's next requests.
    pub fn process_queue(&mut self) {
        let (disk, scratch) = (&self.disk, &mut self.scratch);
        let ring = Ring {
            table: self.queue.desc_table(),
            size: self.queue.size(),
        };
        drain_heads_polling(
            &self.mem,
            &mut self.queue,
            self.index,
            &*self.interrupt,
            MAX_POLL,
            |head| serve(&self.mem, disk, scratch, ring, head),
        );
    }
}

impl crate::virtio::worker::QueueHandler for BlockHandler {
    fn process(&mut self, _index: usize) {
        self.process_queue();
    }
}

/// Where the descriptor table is and how many entries it has.
#[derive(Clone, Copy)]
struct Ring {
    table: u64,
    size: u16,
}

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

/// Splits the chain starting at descriptor `head` into its device-readable and
/// device-writable segments. `None` for a chain that cannot be a request: a descriptor
/// outside guest memory, a next index past its table, a loop (more descriptors than the
/// table holds), a nested or misshapen indirect table, a readable descriptor after a writable
/// one, or more than [`MAX_DESCRIPTORS`].
fn walk_chain(mem: &GuestMemory, s: &mut Scratch, ring: Ring, head: u16) -> Option<()> {
    s.readable.clear();
    s.writable.clear();
    let (mut table, mut size, mut index) = (ring.table, u64::from(ring.size), u64::from(head));
    let (mut left, mut indirect, mut count) = (size, false, 0usize);
    loop {
        if index >= size || left == 0 {
            return None;
        }
        left -= 1;
        let d: [u8; 16] = s.view.read(mem, table.checked_add(index * 16)?)?;
        let addr = le_u64(&d[0..8]);
        let len = u64::from(le_u32(&d[8..12]));
        let flags = u16::from_le_bytes([d[12], d[13]]);
        let next = u16::from_le_bytes([d[14], d[15]]);
        if flags & DESC_F_INDIRECT != 0 {
            // One level only, a whole number of descriptors, at most a ring's worth.
            if indirect || len == 0 || len % 16 != 0 || len / 16 > u64::from(u16::MAX) {
                return None;
            }
            (table, size, index, left, indirect) = (addr, len / 16, 0, len / 16, true);
            continue;
        }
        count += 1;
        if count > MAX_DESCRIPTORS {
            // An indirect table may hold 65535 descriptors; no real request needs that many.
            return None;
        }
        let seg = Seg { addr, len };
        if flags & DESC_F_WRITE != 0 {
            s.writable.push(seg);
        } else if !s.writable.is_empty() {
            // Device-readable after device-writable: no sane place for the status byte.
            return None;
        } else {
            s.readable.push(seg);
        }
        if flags & DESC_F_NEXT == 0 {
            return Some(());
        }
        index = u64::from(next);
    }
}

/// Serves the chain at `head`; returns the number of bytes written into guest memory for
/// the used ring.
fn serve(mem: &GuestMemory, disk: &Disk, s: &mut Scratch, ring: Ring, head: u16) -> u32 {
    if walk_chain(mem, s, ring, head).is_none() {
        return 0;
    }
    s.readable.retain(|x| x.len > 0);
    s.writable.retain(|x| x.len > 0);
    let w_total: u64 = s.writable.iter().map(|x| x.len).sum();
    // The status byte is the last device-writable byte; without it the request cannot be
    // answered, so the chain goes back unused.
    let Some(status_addr) = s
        .writable
        .last()
        .and_then(|x| x.addr.checked_add(x.len - 1))
    else {
        return 0;
    };
    let data_w = w_total - 1;
    let (status, written) = match execute(mem, disk, s, data_w) {
        Ok(n) => (S_OK, n),
        Err(e) => {
            log::debug!("virtio-blk: request failed: {e}");
            (e.status(), 0)
        }
    };
    if s.view.write_u8(mem, status_addr, status).is_err() {
        return 0;
    }
    u32::try_from(written + 1).unwrap_or(u32::MAX)
}

fn read_bytes<const N: usize>(
    mem: &GuestMemory,
    view: &mut HostView,
    segs: &[Seg],
    skip: u64,
) -> Result<[u8; N], RequestError> {
    // The common case: the first segment holds all N bytes.
    if let Some(first) = segs.first().filter(|x| x.len >= skip + N as u64) {
        let addr = first
            .addr
            .checked_add(skip)
            .ok_or(RequestError::BadBuffer)?;
        return view.read(mem, addr).ok_or(RequestError::BadBuffer);
    }
    let mut out = [0u8; N];
    let mut at = 0usize;
    for_ranges(segs, skip, N as u64, |addr, n| {
        let n = n as usize;
        read_guest(mem, addr, &mut out[at..at + n])?;
        at += n;
        Ok(())
    })?;
    Ok(out)
}

/// The slow path of [`HostView::read`], out of line.
#[cold]
#[inline(never)]
fn read_across_regions(mem: &GuestMemory, addr: u64, out: &mut [u8]) -> Option<()> {
    mem.read_slice(out, GuestAddress(addr)).ok()
}

// Small guest accesses take the single-region fast path (`get_slice`) and fall back to
// vm-memory's general `Bytes` path only for a range that straddles two regions: the
// general path costs several times more, and every request makes a few of these.

fn read_guest(mem: &GuestMemory, addr: GuestAddress, buf: &mut [u8]) -> Result<(), RequestError> {
    match mem.get_slice(addr, buf.len()) {
        Ok(slice) => {
            slice.copy_to(buf);
            Ok(())
        }
        Err(_) => mem
            .read_slice(buf, addr)
            .map_err(|_| RequestError::BadBuffer),
    }
}

fn write_guest(mem: &GuestMemory, addr: GuestAddress, buf: &[u8]) -> Result<(), RequestError> {
    match mem.get_slice(addr, buf.len()) {
        Ok(slice) => {
            slice.copy_from(buf);
            Ok(())
        }
        Err(_) => mem
            .write_slice(buf, addr)
            .map_err(|_| RequestError::BadBuffer),
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Runs a parsed request; returns the data bytes it wrote into guest memory.
fn execute(
    mem: &GuestMemory,
    disk: &Disk,
    s: &mut Scratch,
    data_w: u64,
) -> Result<u64, RequestError> {
    let r_total: u64 = s.readable.iter().map(|x| x.len).sum();
    if r_total < HEADER_LEN {
        return Err(RequestError::ShortHeader);
    }
    let header: [u8; 16] = read_bytes(mem, &mut s.view, &s.readable, 0)?;
    let kind = le_u32(&header[0..4]);
    let sector = le_u64(&header[8..16]);
    match kind {
        T_IN => {
            let offset = data_range(disk, sector, data_w)?;
            build_iovecs(mem, &mut s.view, &s.writable, 0, data_w, &mut s.iovecs)?;
            transfer(disk, &mut s.iovecs, &mut s.bounce, offset, false)?;
            Ok(data_w)
        }
        T_OUT => {
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            let len = r_total - HEADER_LEN;
            let offset = data_range(disk, sector, len)?;
            build_iovecs(
                mem,
                &mut s.view,
                &s.readable,
                HEADER_LEN,
                len,
                &mut s.iovecs,
            )?;
            transfer(disk, &mut s.iovecs, &mut s.bounce, offset, true)?;
            Ok(0)
        }
        T_FLUSH => {
            if !disk.read_only {
                disk.image.flush().map_err(RequestError::Io)?;
            }
            Ok(0)
        }
        T_GET_ID => {
            let n = data_w.min(disk.id.len() as u64);
            let mut at = 0usize;
            for_ranges(&s.writable, 0, n, |addr, len| {
                let len = len as usize;
                write_guest(mem, addr, &disk.id[at..at + len])?;
                at += len;
                Ok(())
            })?;
            Ok(n)
        }
        T_DISCARD | T_WRITE_ZEROES => {
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            let body = r_total - HEADER_LEN;
            if body == 0
                || !body.is_multiple_of(SEGMENT_LEN)
                || body / SEGMENT_LEN > u64::from(MAX_DISCARD_SEG)
            {
                return Err(RequestError::BadSegment);
            }
            for i in 0..body / SEGMENT_LEN {
                let seg: [u8; 16] =
                    read_bytes(mem, &mut s.view, &s.readable, HEADER_LEN + i * SEGMENT_LEN)?;
                let (sector, count) = (le_u64(&seg[0..8]), le_u32(&seg[8..12]));
                if count > MAX_DISCARD_SECTORS {
                    return Err(RequestError::BadSegment);
                }
                let len = u64::from(count) * SECTOR_SIZE;
                let offset = disk.check_range(sector, len)?;
                if len > 0 {
                    discard_or_zero(disk, kind == T_DISCARD, offset, len)?;
                }
            }
            Ok(0)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

fn data_range(disk: &Disk, sector: u64, len: u64) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::UnalignedLength(len));
    }
    disk.check_range(sector, len)
}

fn discard_or_zero(disk: &Disk, discard: bool, offset: u64, len: u64) -> Result<(), RequestError> {
    let Some(file) = disk.image.raw_file() else {
        let done = if discard {
            disk.image.discard(offset, len)
        } else {
            disk.image.write_zeroes(offset, len)
        };
        return done.map_err(RequestError::Io);
    };
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    if discard {
        // Discard is a hint: a file system without hole punching just keeps the data.
        return match Disk::fallocate(file, punch, offset, len) {
            Err(e) if e.raw_os_error() != Some(libc::EOPNOTSUPP) => Err(RequestError::Io(e)),
            _ => Ok(()),
        };
    }
    let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    Disk::fallocate(file, zero, offset, len)
        .or_else(|_| Disk::fallocate(file, punch, offset, len))
        .or_else(|_| disk.image.write_zeroes(offset, len))
        .map_err(RequestError::Io)
}

/// Fills `iovecs` with host pointers for bytes `[skip, skip + len)` of `segs`, checking that
/// every byte lies in guest memory.
fn build_iovecs(
    mem: &GuestMemory,
    view: &mut HostView,
    segs: &[Seg],
    skip: u64,
    len: u64,
    iovecs: &mut Vec<libc::iovec>,
) -> Result<(), RequestError> {
    iovecs.clear();
    for_ranges(segs, skip, len, |addr, n| {
        let host = view.get(mem, addr.0, n);
        let n = usize::try_from(n).map_err(|_| RequestError::BadBuffer)?;
        if let Some(host) = host {
            iovecs.push(libc::iovec {
                iov_base: host.cast(),
                iov_len: n,
            });
            return Ok(());
        }
        // A buffer across regions: one iovec per region.
        for slice in mem.get_slices(addr, n) {
            let slice = slice.map_err(|_| RequestError::BadBuffer)?;
            iovecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        Ok(())
    })
}

/// Reads (or writes) the whole of `iovecs` from (to) the disk at `offset`, resuming after
/// short transfers.
fn transfer(
    disk: &Disk,
    iovecs: &mut [libc::iovec],
    bounce: &mut Vec<u8>,
    mut offset: u64,
    write: bool,
) -> Result<(), RequestError> {
    let Some(file) = disk.image.raw_file() else {
        return transfer_image(&*disk.image, iovecs, bounce, offset, write);
    };
    let mut iov = iovecs;
    let fd = file.as_raw_fd();
    while !iov.is_empty() {
        let count = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        let off = libc::off_t::try_from(offset).map_err(|_| RequestError::OutOfRange)?;
        let n = if write {
            // SAFETY: every iovec points into guest memory that `get_slices` checked and
            // that the handler keeps mapped; the kernel only reads from them.
            unsafe { libc::pwritev(fd, iov.as_ptr(), count, off) }
        } else {
            // SAFETY: as above; the kernel writes at most `iov_len` bytes to each, all of it
            // guest RAM that no Rust reference aliases.
            unsafe { libc::preadv(fd, iov.as_ptr(), count, off) }
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RequestError::Io(err));
        }
        if n == 0 {
            return Err(RequestError::Io(io::Error::from(
                io::ErrorKind::UnexpectedEof,
            )));
        }
        let mut done = n as usize;
        offset += done as u64;
        while let Some(first) = iov.first_mut() {
            if done < first.iov_len {
                // SAFETY: `done < iov_len`, so the advanced pointer stays inside the buffer.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(done) }.cast();
                first.iov_len -= done;
                break;
            }
            done -= first.iov_len;
            iov = &mut iov[1..];
        }
    }
    Ok(())
}

/// [`transfer`] for an image that is not a plain file: each guest buffer is copied
/// through `bounce` (the image's code never holds a reference into guest memory, which
/// the guest may change at any time).
fn transfer_image(
    image: &dyn DiskImage,
    iovecs: &[libc::iovec],
    bounce: &mut Vec<u8>,
    mut offset: u64,
    write: bool,
) -> Result<(), RequestError> {
    for v in iovecs {
        let len = v.iov_len;
        if bounce.len() < len {
            bounce.resize(len, 0);
        }
        let buf = &mut bounce[..len];
        if write {
            // SAFETY: the iovec points at `len` bytes of guest memory that `build_iovecs`
            // checked and the handler keeps mapped; `buf` is a distinct host buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), buf.as_mut_ptr(), len)
            };
            image.write_at(buf, offset).map_err(RequestError::Io)?;
        } else {
            image.read_at(buf, offset).map_err(RequestError::Io)?;
            // SAFETY: as above; the destination is those `len` guest bytes, which no Rust
            // reference aliases.
            unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), v.iov_base.cast::<u8>(), len) };
        }
        offset += len as u64;
    }
    Ok(())
}
