//! The settings pane of one VM: the `vm.ron` fields (memory, vCPUs, disks, CD-ROM, display,
//! network, sound, USB) in a window over the library.
//!
//! The file is read and, on Save, validated and written on the background pool
//! ([`settings_model`]); a refused value shows its reason under its own field. A running
//! VM reads its settings when it starts, so the pane says that changes wait for the next
//! start. The widgets hold the values being edited; Save reads them into a
//! [`settings_model::Form`].
//!
//! USB: the host's devices (sysfs, scanned with the settings) each get a switch; devices
//! `vm.ron` names that are not plugged in get a Remove button; an id typed in the entry
//! below is checked there ([`usb_choices::parse_id`]) and added to the list, and one still
//! in the entry on Save is saved too, or refused at the entry. While the VM runs, a
//! switch acts at once ([`usb_live::switch`] on the background pool): on plugs the device
//! into the guest, off unplugs it, and vm.ron's list follows; a refusal shows the
//! helper's reason under the list. Inside a Flatpak the device is opened through the USB
//! portal ([`usb_portal`]); without the portal the group says which one it needs.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;

use adw::prelude::*;
use gettextrs::gettext;
use gtk::glib;
use hospes_core::config::{UsbDevice, VmConfig};
use hospes_core::usb_host;
use relm4::{
    Component, ComponentController, ComponentParts, ComponentSender, Controller, RelmWidgetExt,
    WidgetTemplate,
};

use crate::a11y;
use crate::i18n::gettext_f;
use crate::settings_model::{self, Field, FieldError, Form, Loaded};
use crate::snapshots_page::{SnapshotsInit, SnapshotsOutput, SnapshotsPage};
use crate::usb_choices::{self, UsbChange, UsbChoice};
use crate::usb_live::{self, PortalSupport};
use crate::usb_portal;
use crate::vm_control::VmRef;

/// How often the pane looks for USB devices plugged in or out.
const USB_WATCH: std::time::Duration = std::time::Duration::from_secs(2);

/// What the pane opens with.
#[derive(Debug, Clone)]
pub struct SettingsInit {
    /// The VM.
    pub vm: VmRef,
    /// The VM runs now.
    pub running: bool,
    /// Open on the Snapshots page rather than the settings.
    pub snapshots: bool,
}

/// The settings pane.
pub struct SettingsWindow {
    init: SettingsInit,
    base: Option<VmConfig>,
    disks: Vec<(PathBuf, gtk::Switch)>,
    usb: Vec<UsbRow>,
    /// Why the id typed in the USB entry was not added.
    usb_error: Option<String>,
    /// Why the host's USB devices could not be listed.
    usb_scan_error: Option<String>,
    /// The timer that looks for USB devices plugged in or out while the pane is open.
    usb_watch: Option<glib::SourceId>,
    /// Why the running VM did not take the last switched device (the helper's words).
    usb_live_error: Option<String>,
    /// Inside a Flatpak: the portal's state once known (`None` outside one, or not
    /// asked yet).
    usb_portal: Option<PortalSupport>,
    error: Option<FieldError>,
    load_error: Option<String>,
    saving: bool,
    finished: bool,
    /// The Snapshots page.
    snapshots: Controller<SnapshotsPage>,
    /// A snapshot was taken, reverted to or deleted.
    snapshots_changed: bool,
}

/// A listed USB device.
struct UsbRow {
    id: UsbDevice,
    row: adw::ActionRow,
    /// The switch of a plugged-in device; a device that is not plugged in has none and is
    /// handed to the machine as long as it is listed.
    switch: Option<gtk::Switch>,
}

impl UsbRow {
    fn chosen(&self) -> bool {
        self.switch.as_ref().is_none_or(gtk::Switch::is_active)
    }
}

/// What the pane is told.
#[derive(Debug)]
pub enum SettingsInput {
    /// Check and write the settings.
    Save,
    /// Add the USB id typed in the entry.
    AddUsb,
    /// Take the USB device that is not plugged in off the list.
    RemoveUsb(UsbDevice),
    /// Look at the host's USB devices again.
    RescanUsb,
    /// A device's switch was flipped (acts at once on a running VM).
    UsbSwitched(UsbDevice, bool),
    /// The window is closing.
    Closing,
    /// The Snapshots page changed the VM's disks or saved state.
    SnapshotsChanged,
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
    Loaded(Box<Result<Loaded, String>>),
    /// Saving ended.
    Saved(Result<(), FieldError>),
    /// The host's USB devices now (a scan that failed changes nothing).
    UsbScanned(Vec<usb_host::HostUsbDevice>),
    /// A switch acted on the running VM: done, or why not.
    UsbSwitchDone(Result<(), String>),
    /// What the USB portal offers (inside a Flatpak).
    UsbPortal(PortalSupport),
}

/// The reason a value is refused, under its field.
#[relm4::widget_template(pub)]
impl WidgetTemplate for ErrorLabel {
    view! {
        gtk::Label {
            set_xalign: 0.0,
            set_wrap: true,
            set_margin_top: 6,
            add_css_class: "error",
        }
    }
}

impl SettingsWindow {
    /// What the USB group says about the portal, inside a Flatpak without one.
    fn usb_portal_notice(&self) -> Option<String> {
        self.usb_portal.and_then(PortalSupport::notice)
    }

    /// Plugs `device` into the running VM or out of it, on the background pool.
    fn switch_live(&mut self, device: UsbDevice, on: bool, sender: &ComponentSender<Self>) {
        let Ok(runtime) = hospes_core::runtime::RuntimeDir::open(&self.init.vm.id) else {
            return;
        };
        let socket = runtime.qmp_socket();
        let config = self.init.vm.config.clone();
        // Inside a Flatpak the portal opens the device; without a portal the helper
        // cannot open it, so only vm.ron changes (the group says why).
        let flatpak = usb_live::in_flatpak(std::path::Path::new("/"));
        let portal = self.usb_portal;
        sender.spawn_oneshot_command(move || {
            let result = match (flatpak, portal) {
                (false, _) => usb_live::switch(&socket, &config, device, on, None),
                (true, Some(PortalSupport::Missing)) => usb_live::save_only(&config, device, on),
                (true, _) => usb_live::switch(
                    &socket,
                    &config,
                    device,
                    on,
                    Some(&usb_portal::PortalOpener),
                ),
            };
            SettingsCommand::UsbSwitchDone(result)
        });
    }

    fn error_at(&self, field: Field) -> Option<&str> {
        self.error
            .as_ref()
            .filter(|error| error.field == field)
            .map(|error| error.message.as_str())
    }

    /// The problem to show under the USB entry.
    fn usb_entry_error(&self) -> Option<&str> {
        self.usb_error.as_deref().or(self.error_at(Field::Usb))
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
                    #[wrap(Some)]
                    set_title_widget = &adw::ViewSwitcher {
                        set_policy: adw::ViewSwitcherPolicy::Wide,
                        set_stack: Some(&stack),
                    },

                    #[name = "save_button"]
                    pack_end = &gtk::Button {
                        set_label: &gettext("Save"),
                        add_css_class: "suggested-action",
                        #[watch]
                        set_sensitive: model.base.is_some() && !model.saving,
                        connect_clicked => SettingsInput::Save,
                    },
                },

                #[name = "stack"]
                adw::ViewStack {
                set_vexpand: true,

                add_titled_with_icon[Some("settings"), &gettext("Settings"), "emblem-system-symbolic"] = &gtk::Box {
                set_orientation: gtk::Orientation::Vertical,

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
                        #[template]
                        ErrorLabel {
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
                        #[template]
                        ErrorLabel {
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
                    },

                    #[name = "usb_group"]
                    adw::PreferencesGroup {
                        set_title: &gettext("USB Devices"),
                        set_description: Some(&usb_note(model.init.running)),

                        adw::ActionRow {
                            set_title: &gettext("No USB devices are plugged in"),
                            #[watch]
                            set_visible: model.usb.is_empty(),
                        },
                        #[template]
                        ErrorLabel {
                            #[watch]
                            set_visible: model.usb_scan_error.is_some(),
                            #[watch]
                            set_label: model.usb_scan_error.as_deref().unwrap_or_default(),
                        },
                        #[name = "usb_live_error_label"]
                        #[template]
                        ErrorLabel {
                            #[watch]
                            set_visible: model.usb_live_error.is_some(),
                            #[watch]
                            set_label: model.usb_live_error.as_deref().unwrap_or_default(),
                        },
                        #[name = "usb_portal_label"]
                        gtk::Label {
                            set_xalign: 0.0,
                            set_wrap: true,
                            set_margin_top: 6,
                            add_css_class: "dim-label",
                            #[watch]
                            set_visible: model.usb_portal_notice().is_some(),
                            #[watch]
                            set_label: model.usb_portal_notice().as_deref().unwrap_or_default(),
                        },
                    },

                    adw::PreferencesGroup {
                        #[watch]
                        set_sensitive: model.base.is_some(),

                        #[name = "usb_entry"]
                        adw::EntryRow {
                            set_title: &gettext("Add a Device by ID (vendor:product)"),
                            #[watch]
                            set_class_active: ("error", model.usb_entry_error().is_some()),
                            connect_entry_activated => SettingsInput::AddUsb,
                            #[name = "usb_add_button"]
                            add_suffix = &gtk::Button {
                                set_icon_name: "list-add-symbolic",
                                set_valign: gtk::Align::Center,
                                add_css_class: "flat",
                                set_tooltip_text: Some(&gettext("Add")),
                                connect_clicked => SettingsInput::AddUsb,
                            },
                        },
                        #[name = "usb_error_label"]
                        #[template]
                        ErrorLabel {
                            #[watch]
                            set_visible: model.usb_entry_error().is_some(),
                            #[watch]
                            set_label: model.usb_entry_error().unwrap_or_default(),
                        },
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
            base: None,
            disks: Vec::new(),
            usb: Vec::new(),
            usb_error: None,
            usb_scan_error: None,
            usb_watch: None,
            usb_live_error: None,
            usb_portal: None,
            error: None,
            load_error: None,
            saving: false,
            finished: false,
            snapshots: SnapshotsPage::builder()
                .launch(SnapshotsInit {
                    vm: init.vm.clone(),
                    running: init.running,
                })
                .forward(sender.input_sender(), |output| match output {
                    SnapshotsOutput::Changed => SettingsInput::SnapshotsChanged,
                }),
            snapshots_changed: false,
            init,
        };
        let widgets = view_output!();
        widgets.stack.add_titled_with_icon(
            model.snapshots.widget(),
            Some("snapshots"),
            &gettext("Snapshots"),
            "document-open-recent-symbolic",
        );
        // Save is the settings' own; the snapshots act at once.
        let save_button = widgets.save_button.clone();
        widgets
            .stack
            .connect_visible_child_name_notify(move |stack| {
                save_button.set_visible(stack.visible_child_name().as_deref() == Some("settings"));
            });
        if model.init.snapshots {
            widgets.stack.set_visible_child_name("snapshots");
        }
        // The spin buttons and switches are named by their rows (activatable widgets).
        root.set_default_widget(Some(&widgets.save_button));
        a11y::set_label(&widgets.usb_add_button, &gettext("Add USB Device"));
        a11y::close_on_escape(&root);
        sender.spawn_oneshot_command(move || {
            SettingsCommand::Loaded(Box::new(settings_model::load(
                &config,
                &usb_host::sysfs_root(),
            )))
        });
        if usb_live::in_flatpak(std::path::Path::new("/")) {
            sender.spawn_oneshot_command(|| {
                SettingsCommand::UsbPortal(PortalSupport::from_version(usb_portal::version()))
            });
        }
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
            SettingsInput::AddUsb => self.add_typed_usb(widgets, &sender),
            SettingsInput::RemoveUsb(id) => self.remove_usb_row(widgets, id),
            SettingsInput::UsbSwitched(device, on) => self.switch_live(device, on, &sender),
            SettingsInput::SnapshotsChanged => self.snapshots_changed = true,
            SettingsInput::RescanUsb => {
                sender.spawn_oneshot_command(|| {
                    let devices = usb_host::scan(&usb_host::sysfs_root());
                    SettingsCommand::UsbScanned(devices.unwrap_or_default())
                });
            }
            SettingsInput::Closing => {
                self.stop_usb_watch();
                if !self.finished {
                    self.finished = true;
                    let _ = sender.output(SettingsOutput::Closed(
                        self.init.vm.id.clone(),
                        self.snapshots_changed,
                    ));
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
                Ok(loaded) => {
                    self.fill(widgets, &loaded.form);
                    for choice in &loaded.usb {
                        self.add_usb_row(widgets, choice, &sender);
                    }
                    self.usb_scan_error = loaded.usb_error;
                    self.base = Some(loaded.vm);
                    self.start_usb_watch(&sender);
                }
                Err(message) => self.load_error = Some(message),
            },
            SettingsCommand::UsbSwitchDone(result) => {
                self.usb_live_error = result.err();
                if let Some(error) = &self.usb_live_error {
                    log::warn!("{error}");
                    reveal_when_laid_out(widgets.usb_live_error_label.upcast_ref());
                }
            }
            SettingsCommand::UsbPortal(support) => self.usb_portal = Some(support),
            SettingsCommand::UsbScanned(devices) => {
                if !self.finished {
                    self.replug(widgets, &devices, &sender);
                }
            }
            SettingsCommand::Saved(Ok(())) => {
                self.stop_usb_watch();
                self.finished = true;
                let _ = sender.output(SettingsOutput::Closed(self.init.vm.id.clone(), true));
                root.destroy();
            }
            SettingsCommand::Saved(Err(error)) => {
                self.saving = false;
                self.refuse(widgets, error);
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
    }

    /// Looks at the host's USB devices every [`USB_WATCH`] while the pane is open, so a
    /// device plugged in shows up (there is no udev in the sandbox to say so).
    fn start_usb_watch(&mut self, sender: &ComponentSender<Self>) {
        let input = sender.input_sender().clone();
        self.usb_watch = Some(glib::timeout_add_local(USB_WATCH, move || {
            // A pane dropped without closing (its owner went) takes its timer with it.
            match input.send(SettingsInput::RescanUsb) {
                Ok(()) => glib::ControlFlow::Continue,
                Err(_) => glib::ControlFlow::Break,
            }
        }));
    }

    fn stop_usb_watch(&mut self) {
        if let Some(source) = self.usb_watch.take() {
            source.remove();
        }
    }

    /// Brings the USB list up to date with the host's devices (see [`usb_choices::replug`]).
    fn replug(
        &mut self,
        widgets: &SettingsWindowWidgets,
        host: &[usb_host::HostUsbDevice],
        sender: &ComponentSender<Self>,
    ) {
        let listed: Vec<usb_choices::Listed> = self
            .usb
            .iter()
            .map(|row| usb_choices::Listed {
                id: row.id,
                connected: row.switch.is_some(),
                chosen: row.chosen(),
            })
            .collect();
        for change in usb_choices::replug(&listed, host) {
            match change {
                UsbChange::Add(choice) => self.add_usb_row(widgets, &choice, sender),
                UsbChange::Replace(choice) => {
                    self.remove_usb_row(widgets, choice.id);
                    self.add_usb_row(widgets, &choice, sender);
                }
                UsbChange::Remove(id) => self.remove_usb_row(widgets, id),
            }
        }
    }

    fn remove_usb_row(&mut self, widgets: &SettingsWindowWidgets, id: UsbDevice) {
        if let Some(index) = self.usb.iter().position(|row| row.id == id) {
            let removed = self.usb.remove(index);
            widgets.usb_group.remove(&removed.row);
        }
    }

    /// Lists a USB device: a switch when it is plugged in, a Remove button when not.
    fn add_usb_row(
        &mut self,
        widgets: &SettingsWindowWidgets,
        choice: &UsbChoice,
        sender: &ComponentSender<Self>,
    ) {
        let id = choice.id.to_string();
        let row = adw::ActionRow::new();
        // Device names come from the device: never markup.
        row.set_use_markup(false);
        let name = choice.product.clone().unwrap_or_else(|| id.clone());
        row.set_title(&name);
        let switch = if choice.connected {
            let subtitle = match (&choice.manufacturer, &choice.product) {
                (Some(maker), Some(_)) => gettext_f(
                    // Translators: a USB device's maker and its vendor:product id.
                    "{manufacturer} · {id}",
                    &[("manufacturer", maker), ("id", &id)],
                ),
                (Some(maker), None) => maker.clone(),
                (None, Some(_)) => id.clone(),
                (None, None) => String::new(),
            };
            row.set_subtitle(&subtitle);
            let switch = gtk::Switch::new();
            switch.set_active(choice.chosen);
            switch.set_valign(gtk::Align::Center);
            // The row names the switch (its activatable widget): "USB Receiver, switch".
            row.add_suffix(&switch);
            row.set_activatable_widget(Some(&switch));
            if self.init.running {
                let device = choice.id;
                let sender = sender.clone();
                switch.connect_active_notify(move |switch| {
                    sender.input(SettingsInput::UsbSwitched(device, switch.is_active()));
                });
            }
            Some(switch)
        } else {
            // Translators: a USB device the machine lists that is not plugged in now.
            row.set_subtitle(&gettext("Not connected"));
            let remove = gtk::Button::from_icon_name("user-trash-symbolic");
            remove.set_valign(gtk::Align::Center);
            remove.add_css_class("flat");
            remove.set_tooltip_text(Some(&gettext("Remove")));
            a11y::set_label(
                &remove,
                &gettext_f(
                    // Translators: the accessible name of a button; {device} is a USB id.
                    "Remove {device}",
                    &[("device", &id)],
                ),
            );
            let device = choice.id;
            let sender = sender.clone();
            remove.connect_clicked(move |_| sender.input(SettingsInput::RemoveUsb(device)));
            row.add_suffix(&remove);
            None
        };
        widgets.usb_group.add(&row);
        self.usb.push(UsbRow {
            id: choice.id,
            row,
            switch,
        });
    }

    /// Shows why saving was refused; a refused USB id takes the focus to its entry.
    fn refuse(&mut self, widgets: &SettingsWindowWidgets, error: FieldError) {
        if error.field == Field::Usb {
            widgets.usb_entry.grab_focus();
            reveal_when_laid_out(widgets.usb_error_label.upcast_ref());
        }
        self.error = Some(error);
    }

    /// Adds the id typed in the USB entry, or says at the entry why it is not one. A
    /// plugged-in device with that id gets its switch turned on instead.
    fn add_typed_usb(&mut self, widgets: &SettingsWindowWidgets, sender: &ComponentSender<Self>) {
        let text = widgets.usb_entry.text();
        if text.trim().is_empty() {
            self.usb_error = None;
            return;
        }
        // The entry keeps the focus (the pane scrolls to it): to fix the id or add another.
        widgets.usb_entry.grab_focus();
        match usb_choices::parse_id(&text) {
            Err(message) => {
                self.usb_error = Some(message);
                reveal_when_laid_out(widgets.usb_error_label.upcast_ref());
            }
            Ok(id) => {
                self.usb_error = None;
                if self.error_at(Field::Usb).is_some() {
                    self.error = None;
                }
                match self.usb.iter().find(|row| row.id == id) {
                    Some(UsbRow {
                        switch: Some(switch),
                        ..
                    }) => switch.set_active(true),
                    Some(_) => {}
                    None => self.add_usb_row(widgets, &UsbChoice::not_connected(id), sender),
                }
                widgets.usb_entry.set_text("");
                reveal_when_laid_out(widgets.usb_entry.upcast_ref());
            }
        }
    }

    /// The USB ids to save: the devices switched on or listed, and one still typed in the
    /// entry (checked with the rest by [`Form::apply`]).
    fn usb_to_save(&self, widgets: &SettingsWindowWidgets) -> Vec<String> {
        let mut usb: Vec<String> = self
            .usb
            .iter()
            .filter(|row| row.chosen())
            .map(|row| row.id.to_string())
            .collect();
        let typed = widgets.usb_entry.text();
        if !typed.trim().is_empty() {
            usb.push(typed.into());
        }
        usb
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
            usb: self.usb_to_save(widgets),
        };
        let vm = match form.apply(base) {
            Ok(vm) => vm,
            Err(error) => {
                self.refuse(widgets, error);
                return;
            }
        };
        self.error = None;
        self.usb_error = None;
        self.saving = true;
        let path = self.init.vm.config.clone();
        sender.spawn_oneshot_command(move || {
            SettingsCommand::Saved(settings_model::save(&path, &vm))
        });
    }
}

/// What the USB group says about passthrough.
fn usb_note(running: bool) -> String {
    if running {
        gettext(
            "Switching a device on plugs it into the running machine at once, and it stays with the machine when it starts again. Switching it off unplugs it.",
        )
    } else {
        gettext("Devices switched on here are plugged into the machine when it starts.")
    }
}

/// Scrolls the pane so `widget` shows whole, once the change that shows it is laid out:
/// focus only scrolls to the focused widget, not to the error label under it, and not
/// again when a row added above moves it down.
fn reveal_when_laid_out(widget: &gtk::Widget) {
    // A widget that is still hidden has no frame clock of its own yet: take its window's.
    let Some(clock) = widget.root().and_then(|root| root.frame_clock()) else {
        return;
    };
    // The next frame lays the change out; after it is painted the bounds are current.
    let handler: Rc<Cell<Option<glib::SignalHandlerId>>> = Rc::default();
    let widget = widget.clone();
    let id = clock.connect_after_paint({
        let handler = Rc::clone(&handler);
        move |clock| {
            if let Some(id) = handler.take() {
                clock.disconnect(id);
            }
            scroll_into_view(&widget);
        }
    });
    handler.set(Some(id));
    clock.request_phase(gtk::gdk::FrameClockPhase::LAYOUT);
}

/// Scrolls the nearest scrolled window around `widget` so that all of it shows.
fn scroll_into_view(widget: &gtk::Widget) {
    let Some(scrolled) = widget
        .ancestor(gtk::ScrolledWindow::static_type())
        .and_downcast::<gtk::ScrolledWindow>()
    else {
        return;
    };
    let content = scrolled
        .child()
        .and_downcast::<gtk::Viewport>()
        .and_then(|viewport| viewport.child());
    let Some(bounds) = content.and_then(|content| widget.compute_bounds(&content)) else {
        return;
    };
    let adjustment = scrolled.vadjustment();
    let top = f64::from(bounds.y());
    let bottom = top + f64::from(bounds.height());
    if bottom > adjustment.value() + adjustment.page_size() {
        adjustment.set_value(bottom - adjustment.page_size());
    }
    if top < adjustment.value() {
        adjustment.set_value(top);
    }
}
