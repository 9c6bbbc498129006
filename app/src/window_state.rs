//! The main window's size and maximized state, kept in GSettings between runs.
//!
//! The schema `io.github.hospes.Hospes` is installed with the app. Running from the build
//! tree it is not: then the copy `app/build.rs` compiled into its `OUT_DIR` is used, and if
//! even that is missing the window simply opens at its default size.

use adw::prelude::*;
use gtk::gio;

use crate::APP_ID;

const WIDTH_KEY: &str = "window-width";
const HEIGHT_KEY: &str = "window-height";
const MAXIMIZED_KEY: &str = "is-maximized";

/// Where the build script put the compiled schema (only used when none is installed).
const BUILD_TREE_SCHEMA_DIR: &str = concat!(env!("OUT_DIR"), "/schemas");

/// The app's settings, or `None` when no schema with the keys this code uses is found
/// (GSettings aborts the process on a key its schema lacks, e.g. an older installed copy).
pub fn settings() -> Option<gio::Settings> {
    let default_source = gio::SettingsSchemaSource::default();
    let installed = default_source
        .as_ref()
        .and_then(|source| source.lookup(APP_ID, true))
        .filter(has_our_keys);
    let schema = installed.or_else(|| {
        let source = gio::SettingsSchemaSource::from_directory(
            BUILD_TREE_SCHEMA_DIR,
            default_source.as_ref(),
            false,
        )
        .ok()?;
        let schema = source.lookup(APP_ID, false).filter(has_our_keys)?;
        log::debug!("using the build tree's settings schema in {BUILD_TREE_SCHEMA_DIR}");
        Some(schema)
    });
    if schema.is_none() {
        log::info!("settings schema {APP_ID} not installed: window size is not remembered");
    }
    schema.map(|schema| gio::Settings::new_full(&schema, None::<&gio::SettingsBackend>, None))
}

fn has_our_keys(schema: &gio::SettingsSchema) -> bool {
    [WIDTH_KEY, HEIGHT_KEY, MAXIMIZED_KEY]
        .iter()
        .all(|key| schema.has_key(key))
}

/// Sizes `window` as it was when it was last closed.
pub fn restore(window: &impl IsA<gtk::Window>, settings: &gio::Settings) {
    let window = window.as_ref();
    window.set_default_size(settings.int(WIDTH_KEY), settings.int(HEIGHT_KEY));
    if settings.boolean(MAXIMIZED_KEY) {
        window.maximize();
    }
}

/// Remembers `window`'s size. A maximized window keeps the size it had before.
pub fn save(window: &impl IsA<gtk::Window>, settings: &gio::Settings) {
    let window = window.as_ref();
    let maximized = window.is_maximized();
    let mut results = vec![settings.set_boolean(MAXIMIZED_KEY, maximized)];
    if !maximized {
        let (width, height) = window.default_size();
        results.push(settings.set_int(WIDTH_KEY, width));
        results.push(settings.set_int(HEIGHT_KEY, height));
    }
    for result in results {
        if let Err(err) = result {
            log::warn!("cannot save the window size: {err}");
        }
    }
}
