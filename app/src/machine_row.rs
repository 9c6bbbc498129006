//! One row of the library list: a VM's name, a summary line and an OS icon.
//!
//! A VM whose `vm.ron` does not load shows its folder name, the located error and a
//! warning icon instead, so the person can go and fix the file.

use adw::prelude::*;
use relm4::factory::{DynamicIndex, FactoryComponent, FactorySender};

use crate::library_model::LibraryEntry;

/// A library row. Shows data only; it sends nothing yet.
pub struct MachineRow {
    entry: LibraryEntry,
}

#[relm4::factory(pub)]
impl FactoryComponent for MachineRow {
    type Init = LibraryEntry;
    type Input = ();
    type Output = ();
    type CommandOutput = ();
    type ParentWidget = gtk::ListBox;

    view! {
        adw::ActionRow {
            set_use_markup: false,
            set_title: &self.entry.name,
            set_subtitle: self.entry.subtitle(),
            set_tooltip_text: Some(self.entry.tooltip()),

            add_prefix = &gtk::Image {
                set_icon_name: Some(self.entry.icon_name),
                set_icon_size: gtk::IconSize::Large,
                add_css_class?: self.entry.error.as_ref().map(|_| "warning"),
            },
        }
    }

    fn init_model(entry: Self::Init, _index: &DynamicIndex, _sender: FactorySender<Self>) -> Self {
        Self { entry }
    }
}
