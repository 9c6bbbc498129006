//! Turns KVM's dirty-page log of the framebuffer into damage on the [`Display`], and
//! renders the legacy VGA.
//!
//! A thread per display device sleeps until some consumer waits for damage
//! ([`Display::wait_for_waiters`]); then it reads the dirty log every [`POLL`] while the
//! wait lasts, and reports each run of dirty pages as the band of whole rows it covers.
//! With a [`Vga`] ([`spawn_with_vga`]), the same thread renders it when the guest changed
//! it: at most once per [`VGA_FRAME`] while a consumer waits, and at every idle wake-up
//! ([`IDLE`]) otherwise, so a screendump without a waiting consumer is at most that old.
//! Guest writes to the VGA only mark it dirty, so a burst of them costs one render.
//! The thread ends when the device (the only strong owner of the slot) is dropped.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::vga::Vga;
use super::{DisplayDeviceError, FbSlot};
use crate::bus::lock;
use crate::framebuffer::{Display, Rect, Surface};

/// Dirty-log poll interval while a consumer waits.
pub const POLL: Duration = Duration::from_micros(250);
/// Shortest time between two VGA renders while a consumer waits (60 Hz).
pub const VGA_FRAME: Duration = Duration::from_micros(16_667);
/// How long the thread sleeps when no consumer waits.
pub const IDLE: Duration = Duration::from_millis(100);
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
    start(display, slot, None)
}

/// Like [`spawn`], and renders `vga` (held weakly, from
/// [`StdVga::vga`](super::stdvga::StdVga::vga)) too.
pub fn spawn_with_vga(
    display: Arc<Display>,
    slot: Weak<Mutex<Box<dyn FbSlot>>>,
    vga: Weak<Mutex<Vga>>,
) -> Result<(), DisplayDeviceError> {
    start(display, slot, Some(vga))
}

fn start(
    display: Arc<Display>,
    slot: Weak<Mutex<Box<dyn FbSlot>>>,
    vga: Option<Weak<Mutex<Vga>>>,
) -> Result<(), DisplayDeviceError> {
    std::thread::Builder::new()
        .name("display-refresh".into())
        .spawn(move || {
            let mut last_vga: Option<Instant> = None;
            loop {
                let waiting = display.wait_for_waiters(IDLE);
                let Some(slot) = slot.upgrade() else { return };
                let mut vga_shown = false;
                if let Some(vga) = vga.as_ref().and_then(Weak::upgrade) {
                    let mut vga = lock(&vga);
                    vga_shown = vga.scanout();
                    let due = !waiting || last_vga.is_none_or(|t| t.elapsed() >= VGA_FRAME);
                    if due && vga.needs_refresh() {
                        vga.refresh();
                        last_vga = Some(Instant::now());
                    }
                }
                if !waiting {
                    continue;
                }
                let bitmap = lock(&slot).take_dirty();
                drop(slot);
                // While the VGA is shown, framebuffer writes are not on the screen.
                if let (Some(b), Some(s), false) = (bitmap, display.surface(), vga_shown) {
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
    use crate::bus::BusDevice;
    use crate::display::vga::VGA_WINDOW_BASE;
    use crate::display::vga::testing::{MODE_3, program};
    use crate::framebuffer::FbMemory;

    struct NoSlot;

    impl FbSlot for NoSlot {
        fn map(&mut self, _at: Option<u64>) {}
        fn take_dirty(&mut self) -> Option<Vec<u64>> {
            Some(vec![u64::MAX; 4])
        }
    }

    #[test]
    fn the_thread_renders_vga_writes_for_a_waiting_consumer() {
        let display = Arc::new(Display::new());
        let vga = Arc::new(Mutex::new(Vga::new(display.clone()).unwrap()));
        let slot: Arc<Mutex<Box<dyn FbSlot>>> = Arc::new(Mutex::new(Box::new(NoSlot)));
        {
            let mut v = lock(&vga);
            let cell = std::cell::RefCell::new(&mut *v);
            program(
                &mut |p, x| cell.borrow_mut().port_write(p, &[x]),
                &mut |p| {
                    let mut b = [0];
                    cell.borrow_mut().port_read(p, &mut b);
                    b[0]
                },
                &MODE_3,
            );
        }
        spawn_with_vga(display.clone(), Arc::downgrade(&slot), Arc::downgrade(&vga)).unwrap();
        // The first render publishes the text mode.
        let u = display.wait_damage(0, Duration::from_secs(5));
        assert_eq!(u.surface.map(|s| (s.width, s.height)), Some((720, 400)));
        let mut seq = u.seq;
        // The guest writes a character: one cell, and no framebuffer pages as damage.
        lock(&vga).write(VGA_WINDOW_BASE, 0x1_8000 + 2 * 3, b"x\x1f");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut rects = Vec::new();
        while rects.is_empty() && std::time::Instant::now() < deadline {
            let u = display.wait_damage(seq, Duration::from_millis(200));
            seq = u.seq;
            rects = u.rects;
        }
        assert_eq!(rects, vec![Rect::new(27, 0, 9, 16)]);
        drop(slot);
    }

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
