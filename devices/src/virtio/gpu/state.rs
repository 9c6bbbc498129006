//! virtio-gpu's own saved state (the transport saves the queues and features itself).
//!
//! Data flow: [`Gpu::pause_worker`] stops the worker thread, which hands back its handler:
//! the queue positions go to the transport, the resources stay in `Gpu::held`.
//! [`Gpu::save`] turns them into a [`GpuSaved`]: each resource's id, format, size, backing
//! page list (guest addresses: guest RAM is saved by the machine) and the pages of its
//! host copy that are not all zero, plus the scanout, the cursor image, the pending
//! configuration events and the preferred mode. [`Gpu::restore`] checks everything
//! against the limits a guest's requests meet before it changes anything, rebuilds the
//! resources into `held` for the next activation, and shows the scanout and cursor at
//! once, so display clients see the restored picture before the guest does anything.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{Gpu, GpuHandler, MAX_RESOURCE_BYTES, Resource, clamp_mode, valid_resource};
use crate::bus::lock;
use crate::framebuffer::fbmem::SavedPage;
use crate::framebuffer::{Cursor, FbMemory, Rect};
use crate::state::{StateError, decode, encode};
use crate::virtio::QueuePosition;

/// The device's name in saved-state errors.
pub const NAME: &str = "virtio-gpu";
/// Most backing entries one ATTACH_BACKING can carry (see `MAX_REQUEST`).
const MAX_BACKING: usize = 4096;
/// Largest cursor image UPDATE_CURSOR makes.
const MAX_CURSOR: u32 = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ResourceSaved {
    pub(super) id: u32,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) format: u32,
    pub(super) backing: Vec<(u64, u32)>,
    pub(super) pixels: Vec<SavedPage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CursorSaved {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) hot_x: u32,
    pub(super) hot_y: u32,
    pub(super) pixels: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct GpuSaved {
    pub(super) events_read: u32,
    pub(super) preferred: (u32, u32),
    /// By id, lowest first.
    pub(super) resources: Vec<ResourceSaved>,
    /// The resource shown and its part (x, y, w, h).
    pub(super) scanout: Option<(u32, [u32; 4])>,
    pub(super) cursor: Option<CursorSaved>,
}

/// For the tests, which build inconsistent states from a good one.
#[cfg(test)]
pub(super) type GpuSavedForTests = GpuSaved;

fn mismatch(reason: impl std::fmt::Display) -> StateError {
    StateError::mismatch(NAME, reason)
}

impl Gpu {
    /// Stops the worker and keeps its resources; returns where its queues stand.
    pub(super) fn pause_worker(&mut self) -> Result<Vec<QueuePosition>, StateError> {
        let Some(mut worker) = self.worker.take() else {
            return Ok(Vec::new());
        };
        let handler: GpuHandler = worker
            .stop_and_take()
            .ok_or_else(|| StateError::device(NAME, "its worker thread had already ended"))?;
        let positions = handler
            .queues
            .iter()
            .flatten()
            .map(|(queue, index)| QueuePosition::of(*index, queue))
            .collect();
        self.held = Some(handler.state);
        Ok(positions)
    }

    pub(super) fn save(&mut self) -> Result<Vec<u8>, StateError> {
        if self.worker.is_some() {
            return Err(StateError::device(NAME, "saved while its worker runs"));
        }
        let mut resources: Vec<ResourceSaved> = self
            .held
            .as_ref()
            .map(|h| {
                h.resources
                    .iter()
                    .map(|(&id, r)| ResourceSaved {
                        id,
                        width: r.width,
                        height: r.height,
                        format: r.format,
                        backing: r.backing.clone(),
                        pixels: r.mem.save_pages(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        resources.sort_by_key(|r| r.id);
        let scanout = self
            .held
            .as_ref()
            .and_then(|h| h.scanout)
            .map(|(id, r)| (id, [r.x, r.y, r.w, r.h]));
        let cursor = self.display.cursor().map(|c| CursorSaved {
            width: c.width,
            height: c.height,
            hot_x: c.hot_x,
            hot_y: c.hot_y,
            pixels: c.pixels,
        });
        let saved = GpuSaved {
            events_read: self.shared.events_read.load(Ordering::SeqCst),
            preferred: *lock(&self.shared.preferred),
            resources,
            scanout,
            cursor,
        };
        encode(NAME, &saved)
    }

    pub(super) fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let saved: GpuSaved = decode(NAME, bytes)?;
        let mut state = self.empty_state();
        for r in &saved.resources {
            let res = rebuild(r)?;
            state.used_bytes += res.bytes();
            if state.used_bytes > MAX_RESOURCE_BYTES {
                return Err(mismatch("its resources take more memory than allowed"));
            }
            if state.resources.insert(r.id, res).is_some() {
                return Err(mismatch(format!("resource {} saved twice", r.id)));
            }
        }
        let surface = match saved.scanout {
            Some((id, [x, y, w, h])) => {
                let r = Rect::new(x, y, w, h);
                let surface = state
                    .resources
                    .get(&id)
                    .and_then(|res| res.surface(&r))
                    .ok_or_else(|| mismatch(format!("scanout of resource {id} at {r:?}")))?;
                state.scanout = Some((id, r));
                Some(surface)
            }
            None => None,
        };
        let cursor = saved.cursor.map(cursor_of).transpose()?;

        self.shared
            .events_read
            .store(saved.events_read, Ordering::SeqCst);
        *lock(&self.shared.preferred) = clamp_mode(saved.preferred.0, saved.preferred.1);
        self.held = Some(state);
        self.display.set_cursor(cursor);
        self.display.set_surface(surface);
        if let Some(s) = self.display.surface() {
            self.display.add_damage(&[s.full()]);
        }
        Ok(())
    }
}

/// A saved resource back in host memory, checked as CREATE_2D and ATTACH_BACKING check.
fn rebuild(r: &ResourceSaved) -> Result<Resource, StateError> {
    if r.id == 0 || !valid_resource(r.format, r.width, r.height) {
        return Err(mismatch(format!(
            "resource {} of format {} and size {}x{}",
            r.id, r.format, r.width, r.height
        )));
    }
    if r.backing.len() > MAX_BACKING {
        return Err(mismatch(format!(
            "resource {} has {} backing entries",
            r.id,
            r.backing.len()
        )));
    }
    let bytes = r.width as usize * r.height as usize * 4;
    if bytes > MAX_RESOURCE_BYTES {
        return Err(mismatch(format!("resource {} is too large", r.id)));
    }
    let mem = FbMemory::new(bytes).map_err(|e| StateError::device(NAME, e))?;
    mem.restore_pages(&r.pixels)
        .map_err(|e| mismatch(format!("resource {}: {e}", r.id)))?;
    Ok(Resource {
        width: r.width,
        height: r.height,
        format: r.format,
        mem: Arc::new(mem),
        backing: r.backing.clone(),
    })
}

fn cursor_of(c: CursorSaved) -> Result<Cursor, StateError> {
    let fits = (1..=MAX_CURSOR).contains(&c.width)
        && (1..=MAX_CURSOR).contains(&c.height)
        && c.hot_x < c.width
        && c.hot_y < c.height
        && c.pixels.len() == (c.width * c.height) as usize;
    if !fits {
        return Err(mismatch(format!("a {}x{} cursor", c.width, c.height)));
    }
    Ok(Cursor {
        width: c.width,
        height: c.height,
        hot_x: c.hot_x,
        hot_y: c.hot_y,
        pixels: c.pixels,
    })
}
