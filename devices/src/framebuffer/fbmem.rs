//! Framebuffer memory: an anonymous shared mapping that a display device hands to KVM as a
//! memory slot (the guest writes pixels at memory speed) and that the helper's display
//! consumers read at the same time.
//!
//! The guest may write while the host reads, so the host never makes a Rust reference to
//! these bytes: every access is a raw copy (as vm-memory does for guest RAM), and a torn
//! pixel is at worst one stale frame.

use std::io;
use std::os::fd::AsRawFd;

use super::DisplayError;

/// A page-aligned, zero-filled mapping of `len` bytes.
pub struct FbMemory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this struct until Drop; all accesses are raw
// copies bounded by `len`, so sharing the pointer between threads is sound.
unsafe impl Send for FbMemory {}
// SAFETY: as above; no method hands out references into the mapping.
unsafe impl Sync for FbMemory {}

impl FbMemory {
    /// Maps `len` bytes (rounded up to a page); pages cost nothing until touched.
    pub fn new(len: usize) -> Result<Self, DisplayError> {
        let len = len.next_multiple_of(4096).max(4096);
        // SAFETY: an anonymous mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DisplayError::Map(len, io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address, for a KVM memory slot. The mapping lives as long as `self`.
    pub fn host_address(&self) -> u64 {
        self.ptr as u64
    }

    /// The part of `[offset, offset + want)` inside the mapping, as a length.
    fn span(&self, offset: usize, want: usize) -> usize {
        if offset >= self.len {
            0
        } else {
            want.min(self.len - offset)
        }
    }

    /// Copies bytes at `offset` into `buf`; bytes past the end read as zero.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let n = self.span(offset, buf.len());
        // SAFETY: `offset + n <= len`, inside the live mapping; `buf` is a distinct buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), buf.as_mut_ptr(), n) };
        buf[n..].fill(0);
    }

    /// Copies `data` to `offset`; bytes past the end are dropped.
    pub fn write(&self, offset: usize, data: &[u8]) {
        let n = self.span(offset, data.len());
        // SAFETY: `offset + n <= len`, inside the live mapping; `data` is a distinct buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), n) };
    }

    /// Fills `len` bytes at `offset` with the 32-bit `pixel`.
    pub fn fill32(&self, offset: usize, len: usize, pixel: u32) {
        let n = self.span(offset, len) / 4;
        if pixel == 0 {
            // SAFETY: `offset + 4 * n <= len`, inside the live mapping.
            unsafe { std::ptr::write_bytes(self.ptr.add(offset), 0, n * 4) };
            return;
        }
        let row = pixel.to_le_bytes().repeat(n.min(4096));
        let mut done = 0;
        while done < n {
            let k = (n - done).min(4096);
            self.write(offset + done * 4, &row[..k * 4]);
            done += k;
        }
    }

    /// Writes `len` bytes at `offset` straight from the mapping into `fd` (a socket),
    /// returning how many went out. Saves a copy on the full-frame path.
    pub fn write_to(&self, fd: &impl AsRawFd, offset: usize, len: usize) -> io::Result<usize> {
        let n = self.span(offset, len);
        // SAFETY: `offset + n <= len`, inside the live mapping; write(2) only reads it.
        let rc = unsafe { libc::write(fd.as_raw_fd(), self.ptr.add(offset).cast(), n) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }
}

impl Drop for FbMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `new`, unmapped once here. Anyone
        // who handed the address to KVM keeps an `Arc` to this struct for as long.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_writes_and_clips_at_the_end() {
        let m = FbMemory::new(5000).unwrap();
        assert_eq!(m.len(), 8192);
        m.write(8190, &[1, 2, 3, 4]);
        let mut b = [9u8; 4];
        m.read(8190, &mut b);
        assert_eq!(b, [1, 2, 0, 0]);
        m.read(1 << 30, &mut b);
        assert_eq!(b, [0; 4]);
        m.fill32(16, 8, 0x00ff_0000);
        let mut p = [0u8; 8];
        m.read(16, &mut p);
        assert_eq!(p, [0, 0, 0xff, 0, 0, 0, 0xff, 0]);
        m.fill32(20, 1 << 20, 0);
        m.read(16, &mut p);
        assert_eq!(p, [0, 0, 0xff, 0, 0, 0, 0, 0]);
    }
}
