//! `hospes`: the Hospes desktop app.
//!
//! Sets up logging, translations and the bundled resources, then runs the main window
//! ([`window::AppWindow`]).

mod a11y;
mod assistant;
mod assistant_model;
mod bench;
mod demo;
mod framebuffer;
mod i18n;
mod keymap;
mod library_model;
mod machine_row;
mod rfb_input;
mod screen_view;
mod settings_model;
mod settings_window;
mod snapshots_page;
mod usb_choices;
mod usb_live;
mod usb_portal;
mod vm_control;
mod vm_window;
mod vnc_session;
mod window;
mod window_state;

use std::path::Path;

use adw::prelude::*;
use gtk::{gio, glib};
use relm4::RelmApp;

/// The application id: names the desktop file, metainfo, settings schema and resources.
pub const APP_ID: &str = "io.github.hospes.Hospes";

/// Where the bundled resources live; GTK loads `style.css` and `icons/` from here itself.
const RESOURCE_BASE_PATH: &str = "/io/github/hospes/Hospes";

/// Sends `log` records to GLib's log handler (`G_MESSAGES_DEBUG=hospes` shows debug ones).
static GLIB_LOGGER: glib::GlibLogger = glib::GlibLogger::new(
    glib::GlibLoggerFormat::Plain,
    glib::GlibLoggerDomain::CrateTarget,
);

fn main() {
    choose_renderer(Path::new("/dev/dri"));
    if log::set_logger(&GLIB_LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    i18n::init();
    glib::set_application_name("Hospes");
    if let Err(err) = gio::resources_register_include!("hospes.gresource") {
        log::warn!("cannot register the bundled resources: {err}");
    }

    // Our own flags; GTK gets none (it would refuse the unknown ones).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let launch = window::Launch {
        demo: args.iter().any(|arg| arg == "--demo"),
        open: args
            .iter()
            .position(|arg| arg == "--open")
            .and_then(|at| args.get(at + 1).cloned()),
    };
    if !launch.demo {
        window::prefetch_library();
    }
    let app = RelmApp::new(APP_ID).with_args(Vec::new());
    relm4::main_application().set_resource_base_path(Some(RESOURCE_BASE_PATH));
    gtk::Window::set_default_icon_name(APP_ID);
    app.run::<window::AppWindow>(launch);
}

/// Picks GTK's cairo renderer on a machine without a GPU render node, unless
/// `GSK_RENDERER` says otherwise. GTK's default OpenGL renderer would then run on Mesa's
/// software rasterizer, which loads LLVM and compiles shaders before the first frame (half
/// a second of a cold start here, on Xvfb) and then draws the guest's screen on the CPU
/// anyway; cairo draws the same textures without that start-up cost. With a GPU (or in the
/// Flatpak, which is given /dev/dri), GTK keeps its own choice.
fn choose_renderer(dri: &Path) {
    if std::env::var_os("GSK_RENDERER").is_some() || has_render_node(dri) {
        return;
    }
    // SAFETY: called first thing in main, before any thread exists that could read the
    // environment concurrently.
    unsafe { std::env::set_var("GSK_RENDERER", "cairo") };
}

/// Whether `dri` (normally /dev/dri) holds a render node (`renderD128`, ...).
fn has_render_node(dri: &Path) -> bool {
    std::fs::read_dir(dri).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().starts_with("renderD"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_render_node_is_found_by_its_name() {
        let dri = tempfile::tempdir().expect("temp dir");
        assert!(!has_render_node(dri.path()));
        std::fs::write(dri.path().join("card0"), b"").expect("card0");
        assert!(
            !has_render_node(dri.path()),
            "a card node alone is no render node"
        );
        std::fs::write(dri.path().join("renderD128"), b"").expect("renderD128");
        assert!(has_render_node(dri.path()));
        assert!(!has_render_node(&dri.path().join("missing")));
    }
}
