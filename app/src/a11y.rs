//! Accessibility helpers the GTK 4.8 bindings do not offer.
//!
//! gtk4-rs gates the whole `GtkAccessible` interface behind GTK 4.10, but the C function
//! `gtk_accessible_update_property_value` exists since GTK 4.0 and every widget implements
//! the interface. Icon-only buttons and unlabelled containers get their accessible name
//! (what a screen reader announces) through [`set_label`]. [`close_on_escape`] gives
//! dialog-like windows the Escape key.

use gtk::glib::translate::ToGlibPtr;
use gtk::glib::value::ToValue;
use gtk::prelude::*;

unsafe extern "C" {
    /// GTK 4.0: `void gtk_accessible_update_property_value (GtkAccessible *self,
    /// int n_properties, GtkAccessibleProperty properties[], const GValue values[])`.
    fn gtk_accessible_update_property_value(
        accessible: *mut gtk::ffi::GtkWidget,
        n_properties: std::ffi::c_int,
        properties: *mut gtk::ffi::GtkAccessibleProperty,
        values: *const gtk::glib::gobject_ffi::GValue,
    );
}

/// Sets the accessible name screen readers announce for `widget`.
pub fn set_label(widget: &impl IsA<gtk::Widget>, label: &str) {
    let value = label.to_value();
    let mut properties = [gtk::ffi::GTK_ACCESSIBLE_PROPERTY_LABEL];
    let widget: &gtk::Widget = widget.upcast_ref();
    // SAFETY: every GtkWidget implements GtkAccessible, so the widget pointer is a valid
    // `GtkAccessible *`. `properties` and the single GValue behind `value` each hold one
    // element, matching `n_properties`; the label property takes a string, which `value`
    // holds. GTK copies the value before returning.
    unsafe {
        gtk_accessible_update_property_value(
            widget.to_glib_none().0,
            1,
            properties.as_mut_ptr(),
            value.to_glib_none().0,
        );
    }
}

/// Escape closes `window` (dialog-like windows: the assistant, a settings pane).
pub fn close_on_escape(window: &impl IsA<gtk::Window>) {
    let controller = gtk::ShortcutController::new();
    controller.add_shortcut(gtk::Shortcut::new(
        gtk::ShortcutTrigger::parse_string("Escape"),
        Some(gtk::NamedAction::new("window.close")),
    ));
    window.as_ref().add_controller(controller);
}
