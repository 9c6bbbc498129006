//! The settings pane of one VM: the `vm.ron` fields (memory, vCPUs, disks, CD-ROM, display,
//! network, sound, USB) in a window over the library.
//!
//! The file is read and, on Save, validated and written on the background pool
//! ([`settings_model`]); a refused value shows its reason under its own field. A running
//! VM reads its settings when it starts, so the pane says that changes wait for the next
//! start. The widgets hold the values being edited; Save reads them into a
//! [`settings_model::Form`].

use std::path::PathBuf;

use adw::prelude::*;
use gettextrs::gettext;
use gtk::glib;
use hospes_vmm::config::VmConfig;
use relm4::{Component, ComponentParts, ComponentSender};

use crate::a11y;
use crate::i18n::gettext_f;
use crate::settings_model::{self, Field, FieldError, Form};
use crate::vm_control::VmRef;

/// What the pane opens with.
#[derive(Debug, Clone)]
pub struct SettingsInit {
    /// The VM.
    pub vm: VmRef,
    /// The VM runs now.
    pub running: bool,
}

/// The settings pane.
pub struct SettingsWindow {
    init: SettingsInit,
    base: Option<VmConfig>,
    disks: Vec<(PathBuf, gtk::Switch)>,
    usb: Vec<String>,
    error: Option<FieldError>,
    load_error: Option<String>,
    saving: bool,
    finished: bool,
}

/// What the pane is told.
#[derive(Debug)]
pub enum SettingsInput {
    /// Check and write the settings.
    Save,
    /// The window is closing.
    Closing,
}

/// What the pane tells the library window.
#[derive(Debug)]
pub enum SettingsOutput {
    /// The pane closed; the settings of the VM with this id changed when `true`.
    Closed(String, bool),
}

/// Results of background work.
#[derive(Debug)]
pub enum SettingsCommand {
    /// The settings were read.
    Loaded(Box<Result<(VmConfig, Form), String>>),
    /// Saving ended.
    Saved(Result<(), FieldError>),
}

impl SettingsWindow {
    fn error_at(&self, field: Field) -> Option<&str> {
        self.error
            .as_ref()
            .filter(|error| error.field == field)
            .map(|error| error.message.as_str())
    }
}

#[relm4::component(pub)]
impl Component for SettingsWindow {
    type Init = SettingsInit;
    type Input = SettingsInput;
    type Output = SettingsOutput;
    type CommandOutput = SettingsCommand;

    view! {
        #[root]
        adw::Window {
            set_modal: true,
            set_default_size: (560, 680),
            set_title: Some(&gettext_f(
                // Translators: the title of a virtual machine's settings window.
                "{name} Settings",
                &[("name", &model.init.vm.name)],
            )),

            gtk::Box {
                set_orientation: gtk::Orientation::Vertical,

                adw::HeaderBar {
                    #[name = "save_button"]
                    pack_end = &gtk::Button {
                        set_label: &gettext("Save"),
                        add_css_class: "suggested-action",
                        #[watch]
                        set_sensitive: model.base.is_some() && !model.saving,
                        connect_clicked => SettingsInput::Save,
                    },
                },

                gtk::Label {
                    set_label: &settings_model::restart_note(),
                    set_wrap: true,
                    set_margin_top: 12,
                    set_margin_start: 12,
                    set_margin_end: 12,
                    add_css_class: "warning",
                    set_visible: model.init.running,
                },

                gtk::Label {
                    set_wrap: true,
                    set_margin_top: 12,
                    set_margin_start: 12,
                    set_margin_end: 12,
                    add_css_class: "error",
                    #[watch]
                    set_visible: model.load_error.is_some() || model.error_at(Field::Other).is_some(),
                    #[watch]
                    set_label: model
                        .load_error
                        .as_deref()
                        .or(model.error_at(Field::Other))
                        .unwrap_or_default(),
                },

                adw::PreferencesPage {
                    set_vexpand: true,

                    adw::PreferencesGroup {
                        set_title: &gettext("Hardware"),

                        adw::ActionRow {
                            set_title: &gettext("Memory (MiB)"),
                            set_activatable_widget: Some(&memory_spin),
                            #[watch]
                            set_subtitle: model.error_at(Field::Memory).unwrap_or_default(),
                            #[name = "memory_spin"]
                            add_suffix = &gtk::SpinButton::with_range(16.0, 1_048_576.0, 256.0) {
                                set_valign: gtk::Align::Center,
                            },
                        },
                        adw::ActionRow {
                            set_title: &gettext("Virtual Processors"),
                            set_activatable_widget: Some(&cpus_spin),
                            #[watch]
                            set_subtitle: model.error_at(Field::Cpus).unwrap_or_default(),
                            #[name = "cpus_spin"]
                            add_suffix = &gtk::SpinButton::with_range(1.0, 255.0, 1.0) {
                                set_valign: gtk::Align::Center,
                            },
                        },
                    },

                    #[name = "disks_group"]
                    adw::PreferencesGroup {
                        set_title: &gettext("Disks"),
                        #[watch]
                        set_description: Some(model.error_at(Field::Disks).unwrap_or_default()),

                        #[name = "cdrom_row"]
                        adw::EntryRow {
                            set_title: &gettext("CD-ROM Image (empty for none)"),
                        },
                        gtk::Label {
                            set_xalign: 0.0,
                            set_wrap: true,
                            set_margin_top: 6,
                            add_css_class: "error",
                            #[watch]
                            set_visible: model.error_at(Field::Cdrom).is_some(),
                            #[watch]
                            set_label: model.error_at(Field::Cdrom).unwrap_or_default(),
                        },
                    },

                    adw::PreferencesGroup {
                        set_title: &gettext("Display"),

                        adw::ActionRow {
                            set_title: &gettext("Display"),
                            set_activatable_widget: Some(&display_switch),
                            #[name = "display_switch"]
                            add_suffix = &gtk::Switch {
                                set_valign: gtk::Align::Center,
                            },
                        },
                        #[name = "device_row"]
                        adw::ComboRow {
                            set_title: &gettext("Adapter"),
                            set_model: Some(&gtk::StringList::new(&[
                                &gettext("virtio-gpu"),
                                &gettext("Standard VGA"),
                            ])),
                        },
                        #[name = "resolution_row"]
                        adw::EntryRow {
                            set_title: &gettext("Resolution"),
                        },
                        gtk::Label {
                            set_xalign: 0.0,
                            set_wrap: true,
                            set_margin_top: 6,
                            add_css_class: "error",
                            #[watch]
                            set_visible: model.error_at(Field::Resolution).is_some(),
                            #[watch]
                            set_label: model.error_at(Field::Resolution).unwrap_or_default(),
                        },
                        adw::ActionRow {
                            set_title: &gettext("Resolution Follows the Window"),
                            set_activatable_widget: Some(&follow_switch),
                            #[name = "follow_switch"]
                            add_suffix = &gtk::Switch {
                                set_valign: gtk::Align::Center,
                            },
                        },
                    },

                    adw::PreferencesGroup {
                        set_title: &gettext("Devices"),

                        adw::ActionRow {
                            set_title: &gettext("Network"),
                            set_subtitle: &gettext("Shared with this computer, no setup needed"),
                            set_activatable_widget: Some(&network_switch),
                            #[name = "network_switch"]
                            add_suffix = &gtk::Switch {
                                set_valign: gtk::Align::Center,
                            },
                        },
                        adw::ActionRow {
                            set_title: &gettext("Sound"),
                            set_activatable_widget: Some(&sound_switch),
                            #[name = "sound_switch"]
                            add_suffix = &gtk::Switch {
                                set_valign: gtk::Align::Center,
                            },
                        },
                        #[name = "usb_row"]
                        adw::ActionRow {
                            set_title: &gettext("USB Devices"),
                            #[watch]
                            set_subtitle: &if model.usb.is_empty() {
                                // Translators: no USB devices are handed to the machine.
                                gettext("None")
                            } else {
                                model.usb.join(", ")
                            },
                        },
                    },
                },
            },

            connect_close_request[sender] => move |_| {
                sender.input(SettingsInput::Closing);
                glib::Propagation::Proceed
            },
        }
    }

    fn init(
        init: Self::Init,
        root: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        let config = init.vm.config.clone();
        let model = SettingsWindow {
            init,
            base: None,
            disks: Vec::new(),
            usb: Vec::new(),
            error: None,
            load_error: None,
            saving: false,
            finished: false,
        };
        let widgets = view_output!();
        // The spin buttons and switches are named by their rows (activatable widgets).
        root.set_default_widget(Some(&widgets.save_button));
        a11y::close_on_escape(&root);
        sender.spawn_oneshot_command(move || {
            SettingsCommand::Loaded(Box::new(settings_model::load(&config)))
        });
        ComponentParts { model, widgets }
    }

    fn update_with_view(
        &mut self,
        widgets: &mut Self::Widgets,
        message: Self::Input,
        sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match message {
            SettingsInput::Save => self.save(widgets, &sender),
            SettingsInput::Closing => {
                if !self.finished {
                    self.finished = true;
                    let _ = sender.output(SettingsOutput::Closed(self.init.vm.id.clone(), false));
                }
            }
        }
        self.update_view(widgets, sender);
    }

    fn update_cmd_with_view(
        &mut self,
        widgets: &mut Self::Widgets,
        message: Self::CommandOutput,
        sender: ComponentSender<Self>,
        root: &Self::Root,
    ) {
        match message {
            SettingsCommand::Loaded(loaded) => match *loaded {
                Ok((vm, form)) => {
                    self.fill(widgets, &form);
                    self.base = Some(vm);
                }
                Err(message) => self.load_error = Some(message),
            },
            SettingsCommand::Saved(Ok(())) => {
                self.finished = true;
                let _ = sender.output(SettingsOutput::Closed(self.init.vm.id.clone(), true));
                root.destroy();
            }
            SettingsCommand::Saved(Err(error)) => {
                self.saving = false;
                self.error = Some(error);
            }
        }
        self.update_view(widgets, sender);
    }
}

impl SettingsWindow {
    /// Puts the loaded values into the widgets.
    fn fill(&mut self, widgets: &SettingsWindowWidgets, form: &Form) {
        widgets.memory_spin.set_value(form.memory_mib as f64);
        widgets.cpus_spin.set_value(f64::from(form.cpus));
        widgets.cdrom_row.set_text(&form.cdrom);
        widgets.display_switch.set_active(form.display);
        widgets.device_row.set_selected(u32::from(!form.virtio_gpu));
        widgets.resolution_row.set_text(&form.resolution);
        widgets.follow_switch.set_active(form.follow_window);
        widgets.network_switch.set_active(form.network);
        widgets.sound_switch.set_active(form.sound);
        for (path, read_only) in &form.disks {
            let switch = gtk::Switch::new();
            switch.set_active(*read_only);
            switch.set_valign(gtk::Align::Center);
            let row = adw::ActionRow::new();
            row.set_title(&path.to_string_lossy());
            row.set_subtitle(&gettext("Read only"));
            row.add_suffix(&switch);
            row.set_activatable_widget(Some(&switch));
            widgets.disks_group.add(&row);
            self.disks.push((path.clone(), switch));
        }
        self.usb = form.usb.clone();
    }

    /// Reads the widgets into a form and saves it on the background pool.
    fn save(&mut self, widgets: &SettingsWindowWidgets, sender: &ComponentSender<Self>) {
        let Some(base) = &self.base else { return };
        let form = Form {
            memory_mib: widgets.memory_spin.value() as u64,
            cpus: widgets.cpus_spin.value() as u32,
            disks: self
                .disks
                .iter()
                .map(|(path, switch)| (path.clone(), switch.is_active()))
                .collect(),
            cdrom: widgets.cdrom_row.text().into(),
            display: widgets.display_switch.is_active(),
            virtio_gpu: widgets.device_row.selected() == 0,
            resolution: widgets.resolution_row.text().into(),
            follow_window: widgets.follow_switch.is_active(),
            network: widgets.network_switch.is_active(),
            sound: widgets.sound_switch.is_active(),
            usb: self.usb.clone(),
        };
        let vm = match form.apply(base) {
            Ok(vm) => vm,
            Err(error) => {
                self.error = Some(error);
                return;
            }
        };
        self.error = None;
        self.saving = true;
        let path = self.init.vm.config.clone();
        sender.spawn_oneshot_command(move || {
            SettingsCommand::Saved(settings_model::save(&path, &vm))
        });
    }
}
