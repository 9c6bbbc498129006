//! Turns KVM's dirty-page log of the framebuffer into damage on the [`Display`].
//!
//! A thread per display device sleeps until some consumer waits for damage
//! ([`Display::wait_for_waiters`]); then it reads the dirty log every [`POLL`] while the
//! wait lasts, and reports each run of dirty pages as the band of whole rows it covers.
//! The thread ends when the device (the only strong owner of the slot) is dropped.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{DisplayDeviceError, FbSlot};
use crate::bus::lock;
use crate::framebuffer::{Display, Rect, Surface};

/// Dirty-log poll interval while a consumer waits.
pub const POLL: Duration = Duration::from_micros(250);
const PAGE: usize = 4096;

/// The rows `[y0, y1)` of `s` that bytes `[offset, offset + len)` of its memory touch.
pub fn rows_of(s: &Surface, offset: usize, len: usize) -> Option<(u32, u32)> {
    let start = offset.max(s.offset);
    let end = (offset + len).min(s.offset + s.stride as usize * s.height as usize);
    if start >= end {
        return None;
    }
    let y0 = (start - s.offset) / s.stride as usize;
    let y1 = (end - 1 - s.offset) / s.stride as usize + 1;
    Some((y0 as u32, (y1 as u32).min(s.height)))
}

/// Damage bands for the pages set in `bitmap`.
pub fn damage_from_bitmap(bitmap: &[u64], s: &Surface) -> Vec<Rect> {
    let mut out = Vec::new();
    let mut run: Option<(usize, usize)> = None;
    let flush = |run: (usize, usize), out: &mut Vec<Rect>| {
        if let Some((y0, y1)) = rows_of(s, run.0 * PAGE, (run.1 - run.0) * PAGE) {
            out.push(Rect::new(0, y0, s.width, y1 - y0));
        }
    };
    for (wi, &word) in bitmap.iter().enumerate() {
        if word == 0 {
            if let Some(r) = run.take() {
                flush(r, &mut out);
            }
            continue;
        }
        for bit in 0..64 {
            let page = wi * 64 + bit;
            if word & (1 << bit) != 0 {
                run = match run {
                    Some((a, b)) if b == page => Some((a, page + 1)),
                    Some(r) => {
                        flush(r, &mut out);
                        Some((page, page + 1))
                    }
                    None => Some((page, page + 1)),
                };
            }
        }
    }
    if let Some(r) = run {
        flush(r, &mut out);
    }
    out
}

/// Starts the refresh thread for `slot` (held weakly) feeding `display`.
pub fn spawn(
    display: Arc<Display>,
    slot: Weak<Mutex<Box<dyn FbSlot>>>,
) -> Result<(), DisplayDeviceError> {
    std::thread::Builder::new()
        .name("display-refresh".into())
        .spawn(move || {
            loop {
                let waiting = display.wait_for_waiters(Duration::from_millis(100));
                let Some(slot) = slot.upgrade() else { return };
                if !waiting {
                    continue;
                }
                let bitmap = lock(&slot).take_dirty();
                drop(slot);
                if let (Some(b), Some(s)) = (bitmap, display.surface()) {
                    let rects = damage_from_bitmap(&b, &s);
                    if !rects.is_empty() {
                        display.add_damage(&rects);
                    }
                }
                std::thread::sleep(POLL);
            }
        })
        .map(drop)
        .map_err(DisplayDeviceError::Thread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framebuffer::FbMemory;

    #[test]
    fn dirty_pages_become_row_bands() {
        let mem = Arc::new(FbMemory::new(16 << 20).unwrap());
        // 1920x1080, 7680 bytes a row, starting one page in.
        let s = Surface::new(mem, PAGE, 1920, 1080, 7680).unwrap();
        let mut bitmap = vec![0u64; 64];
        bitmap[0] = 0b1; // before the surface
        bitmap[0] |= 0b110; // pages 1-2: bytes 0..8192 of the surface: rows 0..2
        bitmap[1] = 1 << 63; // page 127
        let rects = damage_from_bitmap(&bitmap, &s);
        assert_eq!(rects[0], Rect::new(0, 0, 1920, 2));
        let (y0, y1) = rows_of(&s, 127 * PAGE, PAGE).unwrap();
        assert_eq!(rects[1], Rect::new(0, y0, 1920, y1 - y0));
        assert_eq!(rects.len(), 2);
        assert!(rows_of(&s, 0, PAGE).is_none());
    }
}
