//! `ScreenView`: the widget that draws the guest's screen.
//!
//! It holds a [`Framebuffer`] and one texture per 128×128 tile. An RFB update rewrites
//! pixels and marks tiles dirty; the next snapshot rebuilds only the dirty tiles'
//! textures and draws every tile, scaled to fit with the aspect ratio kept. GTK draws at
//! the display's scale, so on HiDPI the textures are sampled at device pixels.

use std::cell::RefCell;

use gtk::glib;
use gtk::prelude::*;
use gtk::subclass::prelude::*;

use crate::framebuffer::{self, Framebuffer, Rect, TILE};

mod imp {
    use super::*;

    /// The widget's state.
    #[derive(Default)]
    pub struct ScreenView {
        pub(super) screen: RefCell<Framebuffer>,
        pub(super) tiles: RefCell<Vec<Option<gtk::gdk::Texture>>>,
        pub(super) on_resized: RefCell<Vec<ResizeHandler>>,
        pub(super) size: std::cell::Cell<(i32, i32)>,
        /// Frames painted with new pixels in them (for the frame-rate probe).
        pub(super) fresh_frames: std::cell::Cell<u64>,
    }

    pub(super) type ResizeHandler = Box<dyn Fn(&super::ScreenView, i32, i32)>;

    #[glib::object_subclass]
    impl ObjectSubclass for ScreenView {
        const NAME: &'static str = "HospesScreenView";
        type Type = super::ScreenView;
        type ParentType = gtk::Widget;
    }

    impl ObjectImpl for ScreenView {}

    impl WidgetImpl for ScreenView {
        fn size_allocate(&self, width: i32, height: i32, baseline: i32) {
            self.parent_size_allocate(width, height, baseline);
            if self.size.replace((width, height)) != (width, height) {
                for handler in self.on_resized.borrow().iter() {
                    handler(&self.obj(), width, height);
                }
            }
        }

        fn measure(&self, orientation: gtk::Orientation, _for_size: i32) -> (i32, i32, i32, i32) {
            let screen = self.screen.borrow();
            let natural = match orientation {
                gtk::Orientation::Horizontal => screen.width(),
                _ => screen.height(),
            };
            (64, i32::try_from(natural).unwrap_or(64).max(64), -1, -1)
        }

        fn snapshot(&self, snapshot: &gtk::Snapshot) {
            let widget = self.obj();
            let area = (
                f64::from(WidgetExt::width(&*widget)),
                f64::from(WidgetExt::height(&*widget)),
            );
            let mut screen = self.screen.borrow_mut();
            let mut tiles = self.tiles.borrow_mut();
            let (tiles_x, tiles_y) = (screen.tiles_x(), screen.tiles_y());
            tiles.resize((tiles_x * tiles_y) as usize, None);
            let mut fresh = false;
            let (scale, left, top) =
                framebuffer::fit(screen.width(), screen.height(), area.0, area.1);
            for ty in 0..tiles_y {
                for tx in 0..tiles_x {
                    let index = (ty * tiles_x + tx) as usize;
                    if let Some((width, height, pixels)) = screen.take_dirty_tile(tx, ty) {
                        tiles[index] = Some(texture(width, height, pixels).upcast());
                        fresh = true;
                    }
                    let Some(texture) = &tiles[index] else {
                        continue;
                    };
                    let x = left + f64::from(tx * TILE) * scale;
                    let y = top + f64::from(ty * TILE) * scale;
                    // Round the edges to whole pixels so tiles meet without seams.
                    let right =
                        (left + f64::from(tx * TILE + texture.width() as u32) * scale).round();
                    let bottom =
                        (top + f64::from(ty * TILE + texture.height() as u32) * scale).round();
                    let bounds = gtk::graphene::Rect::new(
                        x.round() as f32,
                        y.round() as f32,
                        (right - x.round()) as f32,
                        (bottom - y.round()) as f32,
                    );
                    snapshot.append_texture(texture, &bounds);
                }
            }
            if fresh {
                self.fresh_frames.set(self.fresh_frames.get() + 1);
            }
        }
    }
}

glib::wrapper! {
    /// Draws the guest's screen; see the module docs.
    pub struct ScreenView(ObjectSubclass<imp::ScreenView>)
        @extends gtk::Widget,
        @implements gtk::Buildable, gtk::ConstraintTarget;
}

impl Default for ScreenView {
    fn default() -> Self {
        glib::Object::new()
    }
}

impl ScreenView {
    /// Sets the screen size; a new size clears the screen.
    pub fn set_resolution(&self, width: u32, height: u32) {
        let imp = self.imp();
        let mut screen = imp.screen.borrow_mut();
        if screen.width() == width && screen.height() == height {
            return;
        }
        screen.resize(width, height);
        imp.tiles.borrow_mut().clear();
        drop(screen);
        self.queue_resize();
    }

    /// New pixels for `rect`.
    pub fn put(&self, rect: Rect, data: &[u8]) {
        if !self.imp().screen.borrow_mut().put(rect, data) {
            log::warn!("short RFB update for {rect:?}");
        }
        self.queue_draw();
    }

    /// RFB CopyRect.
    pub fn copy(&self, dst: Rect, src_x: u32, src_y: u32) {
        self.imp().screen.borrow_mut().copy(dst, src_x, src_y);
        self.queue_draw();
    }

    /// Calls `handler` with the new size (logical pixels) whenever the widget is given a
    /// different size.
    pub fn connect_resized(&self, handler: impl Fn(&ScreenView, i32, i32) + 'static) {
        self.imp().on_resized.borrow_mut().push(Box::new(handler));
    }

    /// How many frames were painted with new guest pixels in them.
    pub fn fresh_frames(&self) -> u64 {
        self.imp().fresh_frames.get()
    }

    /// The screen size.
    pub fn resolution(&self) -> (u32, u32) {
        let screen = self.imp().screen.borrow();
        (screen.width(), screen.height())
    }

    /// The guest pixel under a point of this widget.
    pub fn to_guest(&self, x: f64, y: f64) -> Option<(u16, u16)> {
        let (width, height) = self.resolution();
        let area = (
            f64::from(WidgetExt::width(self)),
            f64::from(WidgetExt::height(self)),
        );
        framebuffer::to_guest(width, height, area, x, y)
    }
}

/// A texture from BGRA pixels (the RFB pixel format the session asks for: little-endian
/// 32-bit with red in bits 16..24, which is B, G, R, A in memory; the framebuffer makes
/// every alpha byte opaque).
fn texture(width: u32, height: u32, pixels: Vec<u8>) -> gtk::gdk::MemoryTexture {
    let bytes = glib::Bytes::from_owned(pixels);
    gtk::gdk::MemoryTexture::new(
        width as i32,
        height as i32,
        gtk::gdk::MemoryFormat::B8g8r8a8,
        &bytes,
        width as usize * 4,
    )
}
