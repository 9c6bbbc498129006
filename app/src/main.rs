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
mod vm_control;
mod vm_window;
mod vnc_session;
mod window;
mod window_state;

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
