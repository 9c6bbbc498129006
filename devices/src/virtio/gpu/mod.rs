//! virtio-gpu, 2D only (virtio 1.2 section 5.7): one scanout, display info and EDID, 2D
//! resources in host memory, the cursor queue, and a display-change event when a display
//! client asks for another size.
//!
//! Data flow: the guest creates a resource (host memory, [`FbMemory`]), attaches guest
//! pages as its backing, copies rectangles from the backing into it (TRANSFER_TO_HOST_2D),
//! points the scanout at it (SET_SCANOUT: a [`Surface`] on the shared [`Display`]) and
//! reports changes (RESOURCE_FLUSH: damage). UPDATE_CURSOR turns a 64x64 resource into the
//! display's cursor image, which VNC clients draw themselves. A client's SetDesktopSize goes
//! through the display's resize handler: the new size becomes the preferred mode in
//! GET_DISPLAY_INFO and EDID, and the device raises VIRTIO_GPU_EVENT_DISPLAY with a
//! configuration interrupt; the guest driver then asks again and sets a new mode.
//!
//! Everything runs on the device's worker thread; a malformed request gets an error
//! response (or is dropped when it has no room for one), never a panic.
//!
//! Saved state ([`state`]): pausing stops the worker and takes its resources back; the
//! saved state holds each resource (id, format, size, the host copy's non-zero pages, the
//! backing page list), the scanout, the cursor image and the configuration events. A
//! restore rebuilds them, shows the scanout at once, and hands them to the worker that
//! the transport's activation starts.

mod protocol;
mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestAddress};

use self::protocol::*;
use super::worker::{QueueHandler, Worker, drain_queue};
use super::{
    Activation, GuestMemory, QueuePosition, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, VirtioError,
    VirtioInterrupt,
};
use crate::bus::lock;
use crate::framebuffer::{
    BYTES_PER_PIXEL, Cursor, Display, FbMemory, MAX_HEIGHT, MAX_WIDTH, Rect, Surface, edid,
};
use crate::state::StateError;

/// Virtio device id of a GPU.
pub const DEVICE_TYPE: u16 = 16;
pub const QUEUE_SIZE: u16 = 256;
/// Host memory all resources together may take.
pub const MAX_RESOURCE_BYTES: usize = 256 << 20;
/// Longest request read from the guest (an ATTACH_BACKING with 4096 entries).
const MAX_REQUEST: usize = 24 + 8 + 4096 * 16;

/// State shared between the transport side (configuration space) and the worker.
struct Shared {
    events_read: AtomicU32,
    preferred: Mutex<(u32, u32)>,
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
}

/// The device.
pub struct Gpu {
    shared: Arc<Shared>,
    display: Arc<Display>,
    worker: Option<Worker>,
    /// The resources while no worker holds them: taken back by a pause for the save, or
    /// restored and waiting for the activation.
    held: Option<GpuState>,
}

impl Gpu {
    /// A GPU showing on `display`, announcing `preferred` as its mode.
    pub fn new(display: Arc<Display>, preferred: (u32, u32)) -> Self {
        let shared = Arc::new(Shared {
            events_read: AtomicU32::new(0),
            preferred: Mutex::new(clamp_mode(preferred.0, preferred.1)),
            interrupt: Mutex::new(None),
        });
        let s = shared.clone();
        display.set_resize_handler(Some(Box::new(move |w, h| {
            *lock(&s.preferred) = clamp_mode(w, h);
            s.events_read.fetch_or(EVENT_DISPLAY, Ordering::SeqCst);
            if let Some(irq) = lock(&s.interrupt).as_ref() {
                irq.notify_config();
            }
            true
        })));
        Self {
            shared,
            display,
            worker: None,
            held: None,
        }
    }

    /// No resources, nothing shown.
    fn empty_state(&self) -> GpuState {
        GpuState {
            resources: HashMap::new(),
            used_bytes: 0,
            scanout: None,
            display: self.display.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        self.worker = None;
        self.display.set_resize_handler(None);
        self.display.set_surface(None);
        self.display.set_cursor(None);
    }
}

fn clamp_mode(w: u32, h: u32) -> (u32, u32) {
    (w.clamp(320, MAX_WIDTH), h.clamp(200, MAX_HEIGHT))
}

impl VirtioDevice for Gpu {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        (0x03, 0x80, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_GPU_F_EDID | 1 << VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 16];
        cfg[0..4].copy_from_slice(&self.shared.events_read.load(Ordering::SeqCst).to_le_bytes());
        cfg[8..12].copy_from_slice(&1u32.to_le_bytes());
        super::read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // events_clear: write-1-to-clear the bits of events_read.
        if offset == 4 && data.len() == 4 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.shared.events_read.fetch_and(!v, Ordering::SeqCst);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        let Activation {
            mem,
            interrupt,
            queues,
            ..
        } = activation;
        *lock(&self.shared.interrupt) = Some(interrupt.clone());
        let mut control = None;
        let mut cursor = None;
        let mut events = Vec::new();
        for q in queues {
            events.push(q.event);
            match q.index {
                0 => control = Some((q.queue, q.index)),
                _ => cursor = Some((q.queue, q.index)),
            }
        }
        let handler = GpuHandler {
            mem,
            interrupt,
            queues: [control, cursor],
            state: self.held.take().unwrap_or_else(|| self.empty_state()),
        };
        self.worker = Some(Worker::spawn("hospes-gpu", events, handler)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        self.held = None;
        *lock(&self.shared.interrupt) = None;
        self.shared.events_read.store(0, Ordering::SeqCst);
        self.display.set_surface(None);
        self.display.set_cursor(None);
    }

    fn state_name(&self) -> &str {
        state::NAME
    }

    fn can_save(&self) -> bool {
        true
    }

    fn pause(&mut self) -> Result<Vec<QueuePosition>, StateError> {
        self.pause_worker()
    }

    fn save_device_state(&mut self) -> Result<Vec<u8>, StateError> {
        self.save()
    }

    fn restore_device_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.restore(state)
    }
}

/// Whether a resource of `format`, `width` x `height` may be created.
fn valid_resource(format: u32, width: u32, height: u32) -> bool {
    matches!(
        format,
        FORMAT_B8G8R8A8 | FORMAT_B8G8R8X8 | FORMAT_R8G8B8A8 | FORMAT_R8G8B8X8
    ) && (1..=16384).contains(&width)
        && (1..=16384).contains(&height)
}

/// A 2D resource: host pixels plus the guest pages backing them.
struct Resource {
    width: u32,
    height: u32,
    format: u32,
    mem: Arc<FbMemory>,
    backing: Vec<(u64, u32)>,
}

impl Resource {
    fn stride(&self) -> u32 {
        self.width * BYTES_PER_PIXEL
    }

    /// Host bytes it takes (what counts against [`MAX_RESOURCE_BYTES`]).
    fn bytes(&self) -> usize {
        self.width as usize * self.height as usize * BYTES_PER_PIXEL as usize
    }

    /// The surface showing `r` of it, when `r` is a non-empty part of it.
    fn surface(&self, r: &Rect) -> Option<Surface> {
        if !rect_inside(r, self.width, self.height) || r.is_empty() {
            return None;
        }
        let offset = r.y as usize * self.stride() as usize + (r.x * BYTES_PER_PIXEL) as usize;
        Surface::new(self.mem.clone(), offset, r.w, r.h, self.stride())
    }
}

struct GpuState {
    resources: HashMap<u32, Resource>,
    used_bytes: usize,
    /// The resource shown and the part of it.
    scanout: Option<(u32, Rect)>,
    display: Arc<Display>,
    shared: Arc<Shared>,
}

struct GpuHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// Control and cursor queues with their indices, when the driver enabled them.
    queues: [Option<(Queue, u16)>; 2],
    state: GpuState,
}

impl QueueHandler for GpuHandler {
    fn process(&mut self, index: usize) {
        // Worker indices follow the order of `events`: control first when present.
        let which = if self.queues[0].is_some() { index } else { 1 };
        let Some(Some((queue, qindex))) = self.queues.get_mut(which) else {
            return;
        };
        let (mem, state) = (&self.mem, &mut self.state);
        drain_queue(mem, queue, *qindex, &*self.interrupt, |chain| {
            serve(mem, state, chain)
        });
    }
}

/// Reads the request, runs it, writes the response; returns the bytes written.
fn serve(mem: &GuestMemory, state: &mut GpuState, chain: DescriptorChain<&GuestMemory>) -> u32 {
    let mut req = Vec::new();
    let mut out: Vec<(u64, u32)> = Vec::new();
    for d in chain {
        if d.is_write_only() {
            out.push((d.addr().0, d.len()));
        } else if out.is_empty() && req.len() < MAX_REQUEST {
            let n = (d.len() as usize).min(MAX_REQUEST - req.len());
            let start = req.len();
            req.resize(start + n, 0);
            if mem.read_slice(&mut req[start..], d.addr()).is_err() {
                req.truncate(start);
                break;
            }
        }
    }
    let resp = match CtrlHeader::parse(&req) {
        Some(hdr) => {
            let body = &req[CtrlHeader::SIZE..];
            let mut resp = state.command(mem, hdr.kind, body);
            hdr.stamp(&mut resp);
            resp
        }
        None => CtrlHeader::response(RESP_ERR_INVALID_PARAMETER),
    };
    let mut written = 0usize;
    for (addr, len) in out {
        let Some(chunk) = resp.get(written..) else {
            break;
        };
        let n = chunk.len().min(len as usize);
        if n == 0 || mem.write_slice(&chunk[..n], GuestAddress(addr)).is_err() {
            break;
        }
        written += n;
    }
    written as u32
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(le32(b, at)?) | u64::from(le32(b, at + 4)?) << 32)
}

fn rect_at(b: &[u8], at: usize) -> Option<Rect> {
    Some(Rect::new(
        le32(b, at)?,
        le32(b, at + 4)?,
        le32(b, at + 8)?,
        le32(b, at + 12)?,
    ))
}

/// Whether `r` lies inside `w` x `h`.
fn rect_inside(r: &Rect, w: u32, h: u32) -> bool {
    r.x.checked_add(r.w).is_some_and(|e| e <= w) && r.y.checked_add(r.h).is_some_and(|e| e <= h)
}

type Reply = Result<Vec<u8>, u32>;

impl GpuState {
    fn command(&mut self, mem: &GuestMemory, kind: u32, body: &[u8]) -> Vec<u8> {
        let reply = match kind {
            CMD_GET_DISPLAY_INFO => Ok(self.display_info()),
            CMD_GET_EDID => self.get_edid(body),
            CMD_RESOURCE_CREATE_2D => self.create_2d(body),
            CMD_RESOURCE_UNREF => self.unref(body),
            CMD_SET_SCANOUT => self.set_scanout(body),
            CMD_RESOURCE_FLUSH => self.flush(body),
            CMD_TRANSFER_TO_HOST_2D => self.transfer(mem, body),
            CMD_RESOURCE_ATTACH_BACKING => self.attach_backing(body),
            CMD_RESOURCE_DETACH_BACKING => self.detach_backing(body),
            CMD_UPDATE_CURSOR => self.update_cursor(body),
            CMD_MOVE_CURSOR => Ok(CtrlHeader::response(RESP_OK_NODATA)),
            other => {
                crate::guest_warn!("virtio-gpu: unsupported command {other:#x}");
                Err(RESP_ERR_UNSPEC)
            }
        };
        reply.unwrap_or_else(CtrlHeader::response)
    }

    fn display_info(&self) -> Vec<u8> {
        let (w, h) = *lock(&self.shared.preferred);
        let mut r = CtrlHeader::response(RESP_OK_DISPLAY_INFO);
        for i in 0..MAX_SCANOUTS {
            let (enabled, w, h) = if i == 0 { (1u32, w, h) } else { (0, 0, 0) };
            for v in [0u32, 0, w, h, enabled, 0] {
                r.extend_from_slice(&v.to_le_bytes());
            }
        }
        r
    }

    fn get_edid(&self, body: &[u8]) -> Reply {
        let scanout = le32(body, 0).ok_or(RESP_ERR_INVALID_PARAMETER)?;
        if scanout != 0 {
            return Err(RESP_ERR_INVALID_SCANOUT_ID);
        }
        let (w, h) = *lock(&self.shared.preferred);
        let blob = edid::build(w, h);
        let mut r = CtrlHeader::response(RESP_OK_EDID);
        r.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&blob);
        r.resize(CtrlHeader::SIZE + 8 + 1024, 0);
        Ok(r)
    }

    fn create_2d(&mut self, body: &[u8]) -> Reply {
        let bad = RESP_ERR_INVALID_PARAMETER;
        let (id, format) = (le32(body, 0).ok_or(bad)?, le32(body, 4).ok_or(bad)?);
        let (width, height) = (le32(body, 8).ok_or(bad)?, le32(body, 12).ok_or(bad)?);
        if id == 0 || self.resources.contains_key(&id) {
            return Err(RESP_ERR_INVALID_RESOURCE_ID);
        }
        if !valid_resource(format, width, height) {
            return Err(bad);
        }
        let bytes = width as usize * height as usize * BYTES_PER_PIXEL as usize;
        if self.used_bytes + bytes > MAX_RESOURCE_BYTES {
            return Err(RESP_ERR_OUT_OF_MEMORY);
        }
        let mem = Arc::new(FbMemory::new(bytes).map_err(|_| RESP_ERR_OUT_OF_MEMORY)?);
        self.used_bytes += bytes;
        self.resources.insert(
            id,
            Resource {
                width,
                height,
                format,
                mem,
                backing: Vec::new(),
            },
        );
        Ok(CtrlHeader::response(RESP_OK_NODATA))
    }

    fn unref(&mut self, body: &[u8]) -> Reply {
        let id = le32(body, 0).ok_or(RESP_ERR_INVALID_PARAMETER)?;
        let r = self
            .resources
            .remove(&id)
            .ok_or(RESP_ERR_INVALID_RESOURCE_ID)?;
        self.used_bytes -= r.bytes();
        if self.scanout.is_some_and(|(sid, _)| sid == id) {
            self.scanout = None;
            self.display.set_surface(None);
        }
        Ok(CtrlHeader::response(RESP_OK_NODATA))
    }

    fn set_scanout(&mut self, body: &[u8]) -> Reply {
        let bad = RESP_ERR_INVALID_PARAMETER;
        let r = rect_at(body, 0).ok_or(bad)?;
        let (scanout, id) = (le32(body, 16).ok_or(bad)?, le32(body, 20).ok_or(bad)?);
        if scanout != 0 {
            return Err(RESP_ERR_INVALID_SCANOUT_ID);
        }
        if id == 0 {
            self.scanout = None;
            self.display.set_surface(None);
            return Ok(CtrlHeader::response(RESP_OK_NODATA));
        }
        let res = self
            .resources
            .get(&id)
            .ok_or(RESP_ERR_INVALID_RESOURCE_ID)?;
        let surface = res.surface(&r).ok_or(bad)?;
        self.scanout = Some((id, r));
        self.display.set_surface(Some(surface));
        Ok(CtrlHeader::response(RESP_OK_NODATA))
    }

    fn flush(&mut self, body: &[u8]) -> Reply {
        let bad = RESP_ERR_INVALID_PARAMETER;
        let r = rect_at(body, 0).ok_or(bad)?;
        let id = le32(body, 16).ok_or(bad)?;
        let res = self
            .resources
            .get(&id)
            .ok_or(RESP_ERR_INVALID_RESOURCE_ID)?;
        if !rect_inside(&r, res.width, res.height) {
            return Err(bad);
        }
        if let Some((sid, s)) = self.scanout
            && sid == id
        {
            // The flushed rectangle in scanout coordinates.
            let x0 = r.x.max(s.x);
            let y0 = r.y.max(s.y);
            let x1 = (r.x + r.w).min(s.x + s.w);
            let y1 = (r.y + r.h).min(s.y + s.h);
            if x1 > x0 && y1 > y0 {
                self.display
                    .add_damage(&[Rect::new(x0 - s.x, y0 - s.y, x1 - x0, y1 - y0)]);
            }
        }
        Ok(CtrlHeader::response(RESP_OK_NODATA))
    }

    fn transfer(&mut self, mem: &GuestMemory, body: &[u8]) -> Reply {
        let bad = RESP_ERR_INVALID_PARAMETER;
        let r = rect_at(body, 0).ok_or(bad)?;
        let offset = le64(body, 16).ok_or(bad)?;
        let id = le32(body, 24).ok_or(bad)?;
        let res = self
            .resources
            .get(&id)
            .ok_or(RESP_ERR_INVALID_RESOURCE_ID)?;
        if !rect_inside(&r, res.width, res.height) || res.backing.is_empty() {
            return Err(bad);
        }
        let stride = u64::from(res.stride());
        let row_len = (r.w * BYTES_PER_PIXEL) as usize;
        let mut row = vec![0u8; row_len];
        for h in 0..r.h {
            let src = offset.checked_add(stride * u64::from(h)).ok_or(bad)?;
            read_backing(mem, &res.backing, src, &mut row).ok_or(bad)?;
            if matches!(res.format, FORMAT_R8G8B8A8 | FORMAT_R8G8B8X8) {
                for p in row.chunks_exact_mut(4) {
                    p.swap(0, 2);
                }
            }
            let dst = (r.y + h) as usize * stride as usize + (r.x * BYTES_PER_PIXEL) as usize;
            res.mem.write(dst, &row);
        }
        Ok(CtrlHeader::response(RESP_OK_NODATA))
    }

    fn attach_backing(&mut self, body: &[u8]) -> Reply {
        let bad = RESP_ERR_INVALID_PARAMETER;
        let (id, n) = (le32(body, 0).ok_or(bad)?, le32(body, 4).ok_or(bad)?);
        let res = self
            .resources
            .get_mut(&id)
            .ok_or(RESP_ERR_INVALID_RESOURCE_ID)?;
        let mut entries = Vec::with_capacity(n.min(4096) as usize);
        for i in 0..n as usize {
            let at = 8 + i * 16;
            let addr = le64(body, at).ok_or(bad)?;
            let len = le32(body, at + 8).ok_or(bad)?;
            entries.push((addr, len));
        }
        res.backing = entries;
        Ok(CtrlHeader::response(RESP_OK_NODATA))
    }

    fn detach_backing(&mut self, body: &[u8]) -> Reply {
        let id = le32(body, 0).ok_or(RESP_ERR_INVALID_PARAMETER)?;
        let res = self
            .resources
            .get_mut(&id)
            .ok_or(RESP_ERR_INVALID_RESOURCE_ID)?;
        res.backing.clear();
        Ok(CtrlHeader::response(RESP_OK_NODATA))
    }

    fn update_cursor(&mut self, body: &[u8]) -> Reply {
        let bad = RESP_ERR_INVALID_PARAMETER;
        // pos (scanout, x, y, padding), resource_id, hot_x, hot_y.
        let id = le32(body, 16).ok_or(bad)?;
        let (hot_x, hot_y) = (le32(body, 20).ok_or(bad)?, le32(body, 24).ok_or(bad)?);
        if id == 0 {
            self.display.set_cursor(None);
            return Ok(CtrlHeader::response(RESP_OK_NODATA));
        }
        let res = self
            .resources
            .get(&id)
            .ok_or(RESP_ERR_INVALID_RESOURCE_ID)?;
        let (w, h) = (res.width.min(256), res.height.min(256));
        let mut bytes = vec![0u8; (res.stride() * h) as usize];
        res.mem.read(0, &mut bytes);
        let rgba = matches!(res.format, FORMAT_R8G8B8A8 | FORMAT_R8G8B8X8);
        let pixels = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| {
                let at = (y * res.stride() + x * 4) as usize;
                let p =
                    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
                if rgba {
                    (p & 0xff00_ff00) | (p & 0xff) << 16 | (p >> 16) & 0xff
                } else {
                    p
                }
            })
            .collect();
        self.display.set_cursor(Some(Cursor {
            width: w,
            height: h,
            hot_x: hot_x.min(w.saturating_sub(1)),
            hot_y: hot_y.min(h.saturating_sub(1)),
            pixels,
        }));
        Ok(CtrlHeader::response(RESP_OK_NODATA))
    }
}

/// Reads `buf.len()` bytes at offset `at` of the backing (the concatenated guest ranges).
fn read_backing(
    mem: &GuestMemory,
    backing: &[(u64, u32)],
    mut at: u64,
    buf: &mut [u8],
) -> Option<()> {
    let mut done = 0usize;
    for &(addr, len) in backing {
        let len = u64::from(len);
        if at >= len {
            at -= len;
            continue;
        }
        let n = ((len - at) as usize).min(buf.len() - done);
        mem.read_slice(
            &mut buf[done..done + n],
            GuestAddress(addr.checked_add(at)?),
        )
        .ok()?;
        done += n;
        at = 0;
        if done == buf.len() {
            return Some(());
        }
    }
    (done == buf.len()).then_some(())
}
