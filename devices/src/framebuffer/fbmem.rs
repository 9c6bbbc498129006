//! Framebuffer memory: an anonymous shared mapping that a display device hands to KVM as a
//! memory slot (the guest writes pixels at memory speed) and that the helper's display
//! consumers read at the same time.
//!
//! The guest may write while the host reads, so the host never makes a Rust reference to
//! these bytes: every access is a raw copy (as vm-memory does for guest RAM), and a torn
//! pixel is at worst one stale frame.
//!
//! Saved state: a device that owns framebuffer memory saves it as [`SavedPage`]s, the
//! pages that are not all zero ([`FbMemory::save_pages`]), and restores them over a
//! cleared mapping ([`FbMemory::restore_pages`]); a 16 MiB VRAM showing one small mode
//! saves only the pages the guest drew in. [`sparse_pages`] / [`apply_pages`] do the same
//! for a device's ordinary buffers.

use std::io;
use std::os::fd::AsRawFd;

use serde::{Deserialize, Serialize};

use super::DisplayError;

/// The page size of saved memory.
pub const PAGE_SIZE: usize = 4096;

/// One page of device-owned memory that is not all zero, in saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPage {
    /// Page number (byte offset / [`PAGE_SIZE`]).
    pub index: u32,
    /// Exactly [`PAGE_SIZE`] bytes.
    pub bytes: Vec<u8>,
}

/// The pages of `bytes` that are not all zero (a short last page is padded with zeroes).
pub fn sparse_pages(bytes: &[u8]) -> Vec<SavedPage> {
    bytes
        .chunks(PAGE_SIZE)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, c)| {
            let mut page = c.to_vec();
            page.resize(PAGE_SIZE, 0);
            SavedPage {
                index: i as u32,
                bytes: page,
            }
        })
        .collect()
}

/// Checks that `pages` fit a buffer of `len` bytes: each page whole, inside it, once.
pub fn check_pages(pages: &[SavedPage], len: usize) -> Result<(), String> {
    let count = len.div_ceil(PAGE_SIZE);
    let mut seen = vec![false; count];
    for p in pages {
        if p.bytes.len() != PAGE_SIZE {
            return Err(format!("page {} has {} bytes", p.index, p.bytes.len()));
        }
        match seen.get_mut(p.index as usize) {
            Some(s) if !*s => *s = true,
            Some(_) => return Err(format!("page {} saved twice", p.index)),
            None => return Err(format!("page {} is past the end ({count} pages)", p.index)),
        }
    }
    Ok(())
}

/// Zeroes `target` and writes `pages` into it (checked first: on error `target` is
/// untouched). Bytes of a page past the end of `target` are dropped.
pub fn apply_pages(target: &mut [u8], pages: &[SavedPage]) -> Result<(), String> {
    check_pages(pages, target.len())?;
    target.fill(0);
    for p in pages {
        let at = p.index as usize * PAGE_SIZE;
        let n = PAGE_SIZE.min(target.len() - at);
        target[at..at + n].copy_from_slice(&p.bytes[..n]);
    }
    Ok(())
}

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

impl FbMemory {
    /// The pages that are not all zero, for saved state.
    pub fn save_pages(&self) -> Vec<SavedPage> {
        let mut page = vec![0u8; PAGE_SIZE];
        let mut out = Vec::new();
        for index in 0..self.len / PAGE_SIZE {
            self.read(index * PAGE_SIZE, &mut page);
            if page.iter().any(|&b| b != 0) {
                out.push(SavedPage {
                    index: index as u32,
                    bytes: page.clone(),
                });
            }
        }
        out
    }

    /// Makes the whole mapping zero again.
    pub fn clear(&self) {
        // SAFETY: `ptr`/`len` are this live mapping; MADV_REMOVE on a shared anonymous
        // mapping frees its pages, which then read as zero (KVM sees the change through
        // its MMU notifier). No Rust reference into the mapping exists.
        let rc = unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_REMOVE) };
        if rc != 0 {
            self.fill32(0, self.len, 0);
        }
    }

    /// Clears the mapping and writes `pages` back (checked first: on error the memory
    /// is untouched).
    pub fn restore_pages(&self, pages: &[SavedPage]) -> Result<(), String> {
        check_pages(pages, self.len)?;
        self.clear();
        for p in pages {
            self.write(p.index as usize * PAGE_SIZE, &p.bytes);
        }
        Ok(())
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
    fn saved_pages_skip_zero_pages_and_restore_over_old_contents() {
        let m = FbMemory::new(16 * PAGE_SIZE).unwrap();
        m.write(5 * PAGE_SIZE + 17, &[1, 2, 3]);
        m.write(15 * PAGE_SIZE + PAGE_SIZE - 1, &[9]);
        let pages = m.save_pages();
        assert_eq!(
            pages.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![5, 15]
        );
        let n = FbMemory::new(16 * PAGE_SIZE).unwrap();
        n.write(0, &[0xee; 64]);
        n.restore_pages(&pages).unwrap();
        for i in 0..16 * PAGE_SIZE / 64 {
            let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
            m.read(i * 64, &mut a);
            n.read(i * 64, &mut b);
            assert_eq!(a, b, "bytes at {:#x}", i * 64);
        }
    }

    #[test]
    fn saved_pages_out_of_range_short_or_repeated_are_refused() {
        let m = FbMemory::new(4 * PAGE_SIZE).unwrap();
        m.write(0, &[7]);
        let page = |index, len| SavedPage {
            index,
            bytes: vec![1; len],
        };
        for bad in [
            vec![page(4, PAGE_SIZE)],
            vec![page(1, PAGE_SIZE - 1)],
            vec![page(2, PAGE_SIZE), page(2, PAGE_SIZE)],
            vec![page(u32::MAX, PAGE_SIZE)],
        ] {
            assert!(m.restore_pages(&bad).is_err(), "{bad:?}");
        }
        let mut b = [0u8];
        m.read(0, &mut b);
        assert_eq!(b, [7], "a refused restore leaves the memory as it was");
        let mut buf = vec![3u8; PAGE_SIZE + 10];
        assert!(apply_pages(&mut buf, &[page(2, PAGE_SIZE)]).is_err());
        assert_eq!(buf[0], 3);
        let saved = sparse_pages(&buf);
        let mut back = vec![0u8; PAGE_SIZE + 10];
        apply_pages(&mut back, &saved).unwrap();
        assert_eq!(back, buf);
    }

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
