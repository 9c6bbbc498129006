//! The guest's screen as the rest of the helper sees it: framebuffer memory, the scanout
//! currently shown, and damage (the rectangles that changed).
//!
//! Data flow: a display device (std-VGA, virtio-gpu) owns [`FbMemory`] and publishes what
//! the guest shows as a [`Surface`] on the shared [`Display`] ([`Display::set_surface`]),
//! then reports changes with [`Display::add_damage`]. Consumers (each VNC client, QMP
//! `screendump`) read the surface's pixels and ask for the damage since the last sequence
//! number they saw ([`Display::damage_since`]), or block until there is some
//! ([`Display::wait_damage`]). While any consumer waits, [`Display::wait_for_waiters`]
//! returns at once, which is how a device that must poll for changes (KVM's dirty log)
//! polls only while someone is waiting. A client asking for another size goes to the
//! device through the resize handler ([`Display::request_resize`]).
//!
//! Pixels are always 32 bits, little-endian `0x00RRGGBB` (bytes B, G, R, X): what
//! std-VGA's 32 bpp mode and virtio-gpu's B8G8R8X8 format hold, and what RFB clients
//! accept as their default format. Nothing here touches KVM.

pub mod edid;
pub mod fbmem;
pub mod png;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use fbmem::FbMemory;

/// Bytes per pixel of every surface.
pub const BYTES_PER_PIXEL: u32 = 4;
/// Largest mode any display device offers.
pub const MAX_WIDTH: u32 = 2560;
pub const MAX_HEIGHT: u32 = 1600;
/// Damage rectangles remembered; a consumer further behind gets the whole screen.
const DAMAGE_LOG: usize = 256;

/// Errors of the display model.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("cannot map {0} bytes of framebuffer memory")]
    Map(usize, #[source] std::io::Error),
    #[error("cannot encode the screen as PNG")]
    Png(#[source] ::png::EncodingError),
    #[error("the guest shows nothing")]
    NoSurface,
    #[error("cannot write {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A rectangle in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Self { x, y, w, h }
    }

    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// This rectangle cut to `width` x `height`.
    pub fn clip(&self, width: u32, height: u32) -> Rect {
        let x = self.x.min(width);
        let y = self.y.min(height);
        let w = self.w.min(width - x);
        let h = self.h.min(height - y);
        Rect { x, y, w, h }
    }

    /// The smallest rectangle holding both.
    pub fn union(&self, o: &Rect) -> Rect {
        if self.is_empty() {
            return *o;
        }
        if o.is_empty() {
            return *self;
        }
        let x = self.x.min(o.x);
        let y = self.y.min(o.y);
        let r = (self.x + self.w).max(o.x + o.w);
        let b = (self.y + self.h).max(o.y + o.h);
        Rect::new(x, y, r - x, b - y)
    }

    fn overlaps_or_touches(&self, o: &Rect) -> bool {
        self.x <= o.x + o.w
            && o.x <= self.x + self.w
            && self.y <= o.y + o.h
            && o.y <= self.y + self.h
    }
}

/// What the guest shows: `width` x `height` pixels at `offset` in `mem`, `stride` bytes
/// a row.
#[derive(Clone)]
pub struct Surface {
    pub mem: Arc<FbMemory>,
    pub offset: usize,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
}

impl std::fmt::Debug for Surface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Surface({}x{}, stride {}, offset {:#x})",
            self.width, self.height, self.stride, self.offset
        )
    }
}

impl Surface {
    /// Checks that the surface lies inside its memory; devices build surfaces from guest
    /// register values, so this is where a bad mode is refused.
    pub fn new(
        mem: Arc<FbMemory>,
        offset: usize,
        width: u32,
        height: u32,
        stride: u32,
    ) -> Option<Self> {
        if width == 0 || height == 0 || width > MAX_WIDTH.max(4096) || height > MAX_HEIGHT.max(4096)
        {
            return None;
        }
        let row = width as usize * BYTES_PER_PIXEL as usize;
        if (stride as usize) < row {
            return None;
        }
        let end = offset
            .checked_add(stride as usize * (height as usize - 1))?
            .checked_add(row)?;
        (end <= mem.len()).then_some(Self {
            mem,
            offset,
            width,
            height,
            stride,
        })
    }

    pub fn full(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// Byte offset of pixel (x, y) in `mem`.
    pub fn pixel_offset(&self, x: u32, y: u32) -> usize {
        self.offset + y as usize * self.stride as usize + x as usize * BYTES_PER_PIXEL as usize
    }

    /// Appends the pixels of `r` (clipped to the surface), row after row, to `out`.
    pub fn read_rect(&self, r: Rect, out: &mut Vec<u8>) {
        let r = r.clip(self.width, self.height);
        let row = (r.w * BYTES_PER_PIXEL) as usize;
        out.reserve(row * r.h as usize);
        for y in r.y..r.y + r.h {
            let start = out.len();
            out.resize(start + row, 0);
            self.mem.read(self.pixel_offset(r.x, y), &mut out[start..]);
        }
    }

    /// The pixel at (x, y) as `0x00RRGGBB`.
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        let mut b = [0u8; 4];
        if x < self.width && y < self.height {
            self.mem.read(self.pixel_offset(x, y), &mut b);
        }
        u32::from_le_bytes(b) & 0x00ff_ffff
    }
}

/// A pointer image: `width` x `height` pixels `0xAARRGGBB`, hot spot at (`hot_x`, `hot_y`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Cursor {
    pub width: u32,
    pub height: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    pub pixels: Vec<u32>,
}

/// What a consumer gets from [`Display::damage_since`].
#[derive(Clone, Debug)]
pub struct Update {
    /// The surface now shown (None: the guest shows nothing).
    pub surface: Option<Surface>,
    /// Changes each time the surface changes size or place.
    pub surface_gen: u64,
    /// Pass back to the next call.
    pub seq: u64,
    /// Changed rectangles since the last call, clipped to the surface.
    pub rects: Vec<Rect>,
    /// Changes each time the cursor image changes.
    pub cursor_gen: u64,
    /// The picture moved up by this many rows before `rects` changed (CopyRect material);
    /// `rects` then also holds the rows that came into view.
    pub scroll: Option<i32>,
}

/// One change in the damage log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Damage(Rect),
    /// The picture moved up by this many rows (down when negative): a device panned
    /// its view over the same memory.
    Scroll(i32),
}

/// Asks a display device for a new guest resolution; returns whether it will try.
pub type ResizeHandler = Box<dyn Fn(u32, u32) -> bool + Send + Sync>;

struct State {
    surface: Option<Surface>,
    surface_gen: u64,
    seq: u64,
    log: VecDeque<(u64, Entry)>,
    waiters: usize,
    cursor: Option<Cursor>,
    cursor_gen: u64,
}

/// The shared screen. See the module docs.
pub struct Display {
    state: Mutex<State>,
    changed: Condvar,
    waiting: Condvar,
    resize: Mutex<Option<ResizeHandler>>,
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}

impl Display {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                surface: None,
                surface_gen: 0,
                seq: 0,
                log: VecDeque::new(),
                waiters: 0,
                cursor: None,
                cursor_gen: 0,
            }),
            changed: Condvar::new(),
            waiting: Condvar::new(),
            resize: Mutex::new(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shows `surface` (None: nothing); everything is damaged, unless the new surface is
    /// the old one panned vertically over the same memory: then it is a scroll plus the
    /// rows that came into view.
    pub fn set_surface(&self, surface: Option<Surface>) {
        let mut s = self.state();
        let pan = match (&s.surface, &surface) {
            (Some(a), Some(b)) => scrolled(a, b).map(|dy| (dy, b.width, b.height)),
            _ => None,
        };
        if let Some((dy, w, h)) = pan {
            s.surface = surface;
            s.seq += 1;
            let seq = s.seq;
            s.log.push_back((seq, Entry::Scroll(dy)));
            let band = if dy > 0 {
                Rect::new(0, h - dy as u32, w, dy as u32)
            } else {
                Rect::new(0, 0, w, dy.unsigned_abs())
            };
            s.seq += 1;
            let seq = s.seq;
            s.log.push_back((seq, Entry::Damage(band)));
            while s.log.len() > DAMAGE_LOG {
                s.log.pop_front();
            }
            drop(s);
            self.changed.notify_all();
            return;
        }
        let same = match (&s.surface, &surface) {
            (Some(a), Some(b)) => {
                Arc::ptr_eq(&a.mem, &b.mem)
                    && (a.offset, a.width, a.height, a.stride)
                        == (b.offset, b.width, b.height, b.stride)
            }
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        s.surface = surface;
        s.surface_gen += 1;
        s.seq += 1;
        let seq = s.seq;
        let full = s.surface.as_ref().map(Surface::full).unwrap_or_default();
        s.log.clear();
        s.log.push_back((seq, Entry::Damage(full)));
        drop(s);
        self.changed.notify_all();
    }

    /// The surface now shown.
    pub fn surface(&self) -> Option<Surface> {
        self.state().surface.clone()
    }

    /// Reports that `rect` changed.
    pub fn add_damage(&self, rects: &[Rect]) {
        let mut s = self.state();
        let Some((w, h)) = s.surface.as_ref().map(|x| (x.width, x.height)) else {
            return;
        };
        let mut any = false;
        for r in rects {
            let r = r.clip(w, h);
            if r.is_empty() {
                continue;
            }
            s.seq += 1;
            let seq = s.seq;
            s.log.push_back((seq, Entry::Damage(r)));
            any = true;
        }
        while s.log.len() > DAMAGE_LOG {
            s.log.pop_front();
        }
        drop(s);
        if any {
            self.changed.notify_all();
        }
    }

    /// Sets the pointer image (None: the guest draws its own or has none).
    pub fn set_cursor(&self, cursor: Option<Cursor>) {
        let mut s = self.state();
        s.cursor = cursor;
        s.cursor_gen += 1;
        s.seq += 1;
        drop(s);
        self.changed.notify_all();
    }

    pub fn cursor(&self) -> Option<Cursor> {
        self.state().cursor.clone()
    }

    fn update_locked(s: &State, since: u64) -> Update {
        let surface = s.surface.clone();
        let oldest = s.log.front().map_or(s.seq + 1, |e| e.0);
        let full = || surface.iter().map(Surface::full).collect();
        let mut scroll = None;
        let rects = if since + 1 < oldest && since < s.seq {
            // Fell behind the log: everything.
            full()
        } else {
            let new: Vec<Entry> = s.log.iter().filter(|e| e.0 > since).map(|e| e.1).collect();
            let scrolls = new.iter().filter(|e| matches!(e, Entry::Scroll(_))).count();
            match new.first() {
                // One scroll before any damage: a copy, then the damage.
                Some(Entry::Scroll(dy)) if scrolls == 1 => {
                    scroll = Some(*dy);
                    merge(new.iter().filter_map(|e| match e {
                        Entry::Damage(r) => Some(*r),
                        Entry::Scroll(_) => None,
                    }))
                }
                _ if scrolls > 0 => full(),
                _ => merge(new.iter().filter_map(|e| match e {
                    Entry::Damage(r) => Some(*r),
                    Entry::Scroll(_) => None,
                })),
            }
        };
        Update {
            surface,
            surface_gen: s.surface_gen,
            seq: s.seq,
            rects,
            cursor_gen: s.cursor_gen,
            scroll,
        }
    }

    /// The damage after sequence number `since` (0: everything).
    pub fn damage_since(&self, since: u64) -> Update {
        Self::update_locked(&self.state(), since)
    }

    /// Like [`damage_since`](Self::damage_since), but waits up to `timeout` for something
    /// to happen after `since` first.
    pub fn wait_damage(&self, since: u64, timeout: Duration) -> Update {
        let deadline = Instant::now() + timeout;
        let mut s = self.state();
        s.waiters += 1;
        self.waiting.notify_all();
        while s.seq <= since {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = match self.changed.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        s.waiters -= 1;
        Self::update_locked(&s, since)
    }

    /// Wakes every waiter (a consumer leaving, a device going away).
    pub fn kick(&self) {
        let mut s = self.state();
        s.seq += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// Returns true as soon as a consumer waits for damage, false after `timeout` with none.
    pub fn wait_for_waiters(&self, timeout: Duration) -> bool {
        let s = self.state();
        let (s, _) = match self
            .waiting
            .wait_timeout_while(s, timeout, |s| s.waiters == 0)
        {
            Ok(r) => r,
            Err(e) => e.into_inner(),
        };
        s.waiters > 0
    }

    /// Installs the device's resize handler (None: resizing is refused).
    pub fn set_resize_handler(&self, h: Option<ResizeHandler>) {
        *self.resize.lock().unwrap_or_else(|e| e.into_inner()) = h;
    }

    /// A consumer asks for a new guest resolution; false when the device cannot.
    pub fn request_resize(&self, width: u32, height: u32) -> bool {
        if width == 0 || height == 0 || width > MAX_WIDTH || height > MAX_HEIGHT {
            return false;
        }
        match &*self.resize.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(h) => h(width, height),
            None => false,
        }
    }
}

/// The rows `b` is `a` moved up by, when `b` is `a` panned vertically (same memory and
/// geometry, offset moved by whole rows, less than a screen).
fn scrolled(a: &Surface, b: &Surface) -> Option<i32> {
    if !Arc::ptr_eq(&a.mem, &b.mem)
        || (a.width, a.height, a.stride) != (b.width, b.height, b.stride)
    {
        return None;
    }
    let delta = b.offset as i64 - a.offset as i64;
    let stride = i64::from(a.stride);
    if delta == 0 || delta % stride != 0 {
        return None;
    }
    let dy = delta / stride;
    (dy.unsigned_abs() < u64::from(a.height)).then_some(dy as i32)
}

/// Merges overlapping or touching rectangles; many small ones become their bounding box.
fn merge(rects: impl Iterator<Item = Rect>) -> Vec<Rect> {
    let mut out: Vec<Rect> = Vec::new();
    for r in rects {
        if let Some(o) = out.iter_mut().find(|o| o.overlaps_or_touches(&r)) {
            *o = o.union(&r);
        } else {
            out.push(r);
        }
    }
    if out.len() > 32 {
        let all = out.iter().fold(Rect::default(), |a, r| a.union(r));
        return vec![all];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn surface(w: u32, h: u32) -> Surface {
        let mem = Arc::new(FbMemory::new(1 << 20).unwrap());
        Surface::new(mem, 0, w, h, w * 4).unwrap()
    }

    #[test]
    fn surface_outside_memory_is_refused() {
        let mem = Arc::new(FbMemory::new(1 << 20).unwrap());
        assert!(Surface::new(mem.clone(), 0, 1024, 256, 4096).is_some());
        assert!(Surface::new(mem.clone(), 0, 1024, 257, 4096).is_none());
        assert!(Surface::new(mem.clone(), 4, 1024, 256, 4096).is_none());
        assert!(Surface::new(mem.clone(), 0, 100, 10, 399).is_none());
        assert!(Surface::new(mem, usize::MAX - 2, 1, 1, 4).is_none());
    }

    #[test]
    fn damage_is_clipped_merged_and_reported_once() {
        let d = Display::new();
        d.set_surface(Some(surface(100, 100)));
        let u = d.damage_since(0);
        assert_eq!(u.rects, vec![Rect::new(0, 0, 100, 100)]);
        d.add_damage(&[
            Rect::new(10, 10, 5, 5),
            Rect::new(15, 10, 5, 5),
            Rect::new(90, 90, 50, 50),
        ]);
        let v = d.damage_since(u.seq);
        assert_eq!(
            v.rects,
            vec![Rect::new(10, 10, 10, 5), Rect::new(90, 90, 10, 10)]
        );
        assert!(d.damage_since(v.seq).rects.is_empty());
    }

    #[test]
    fn a_consumer_behind_the_log_gets_everything() {
        let d = Display::new();
        d.set_surface(Some(surface(64, 64)));
        let first = d.damage_since(0).seq;
        for i in 0..(DAMAGE_LOG as u32 + 10) {
            d.add_damage(&[Rect::new(i % 64, 0, 1, 1)]);
        }
        assert_eq!(d.damage_since(first).rects, vec![Rect::new(0, 0, 64, 64)]);
    }

    #[test]
    fn waiting_consumer_wakes_on_damage_and_is_seen_by_pollers() {
        let d = Arc::new(Display::new());
        d.set_surface(Some(surface(32, 32)));
        let seq = d.damage_since(0).seq;
        let d2 = d.clone();
        let t = std::thread::spawn(move || d2.wait_damage(seq, Duration::from_secs(5)));
        assert!(d.wait_for_waiters(Duration::from_secs(5)));
        d.add_damage(&[Rect::new(1, 2, 3, 4)]);
        let u = t.join().unwrap();
        assert_eq!(u.rects, vec![Rect::new(1, 2, 3, 4)]);
        assert!(!d.wait_for_waiters(Duration::from_millis(1)));
    }

    #[test]
    fn panning_over_the_same_memory_is_a_scroll_plus_the_exposed_rows() {
        let d = Display::new();
        let s = surface(100, 100);
        let seq = {
            d.set_surface(Some(s.clone()));
            d.damage_since(0).seq
        };
        let gen0 = d.damage_since(0).surface_gen;
        let moved = Surface::new(s.mem.clone(), s.offset + 3 * 400, 100, 100, 400).unwrap();
        d.set_surface(Some(moved));
        let u = d.damage_since(seq);
        assert_eq!(u.scroll, Some(3));
        assert_eq!(u.rects, vec![Rect::new(0, 97, 100, 3)]);
        assert_eq!(u.surface_gen, gen0);
        // Two scrolls in a row are no longer one copy: everything.
        let back = Surface::new(s.mem.clone(), s.offset, 100, 100, 400).unwrap();
        d.set_surface(Some(back));
        let v = d.damage_since(seq);
        assert_eq!((v.scroll, v.rects), (None, vec![Rect::new(0, 0, 100, 100)]));
        // A half-row move is no scroll.
        let odd = Surface::new(s.mem.clone(), s.offset + 200, 100, 100, 400).unwrap();
        d.set_surface(Some(odd));
        assert_eq!(d.damage_since(v.seq).scroll, None);
    }

    #[test]
    fn resize_without_a_handler_is_refused() {
        let d = Display::new();
        assert!(!d.request_resize(800, 600));
        d.set_resize_handler(Some(Box::new(|w, h| w == 800 && h == 600)));
        assert!(d.request_resize(800, 600));
        assert!(!d.request_resize(100_000, 600));
    }

    #[test]
    fn reads_rect_pixels_row_by_row() {
        let s = surface(4, 4);
        for y in 0..4u32 {
            for x in 0..4u32 {
                s.mem
                    .write(s.pixel_offset(x, y), &(y * 16 + x).to_le_bytes());
            }
        }
        let mut out = Vec::new();
        s.read_rect(Rect::new(1, 2, 2, 2), &mut out);
        let px: Vec<u32> = out
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(px, vec![0x21, 0x22, 0x31, 0x32]);
        assert_eq!(s.pixel(3, 3), 0x33);
    }
}
