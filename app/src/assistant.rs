//! The new-VM assistant: a window over the library with four pages.
//!
//! 1. Source: an install image, a kernel (kernel testing) or an existing disk image, typed
//!    or picked with the file chooser (which opens in the folder used last, kept in
//!    GSettings).
//! 2. Settings: name and OS preset guessed from the file name ([`assistant_model`]),
//!    memory, vCPUs and disk size defaulted from this computer and adjustable.
//! 3. Summary.
//! 4. Creating: a progress bar while the vmm library makes the folder and disk image on the
//!    background pool; a refused name sends the person back to the name field with the
//!    reason under it.
//!
//! Everything is reachable from the keyboard: Enter moves on, Escape closes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use adw::prelude::*;
use gettextrs::gettext;
use gtk::{gio, glib};
use hospes_core::library::Preset;
use relm4::{Component, ComponentParts, ComponentSender};

use crate::a11y;
use crate::assistant_model::{self, CreateError, Plan, Source};
use crate::i18n::gettext_f;
use crate::library_model::memory_label;
use crate::window_state;

/// The assistant's pages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Source,
    Settings,
    Summary,
    Creating,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Source => "source",
            Step::Settings => "settings",
            Step::Summary => "summary",
            Step::Creating => "creating",
        }
    }
}

/// The presets in the order of the OS drop-down.
const PRESETS: [Preset; 3] = [Preset::Linux, Preset::Windows11, Preset::Kernel];

/// The assistant.
pub struct Assistant {
    step: Step,
    source: Source,
    file: String,
    file_error: Option<String>,
    name: String,
    name_error: Option<String>,
    preset: Preset,
    /// The Windows drivers disc's path as typed (windows11 preset).
    drivers: String,
    drivers_error: Option<String>,
    memory_mib: u64,
    cpus: u32,
    disk_gib: u64,
    max_cpus: u32,
    max_memory_mib: u64,
    error: Option<String>,
    /// The output was sent; closing the window must not send another.
    finished: bool,
    chooser: Option<gtk::FileChooserNative>,
    settings: Option<gio::Settings>,
}

/// What the assistant is told.
#[derive(Debug)]
pub enum AssistantInput {
    /// A source kind was picked.
    SetSource(Source),
    /// The path entry changed.
    FileChanged(String),
    /// Open the file chooser.
    ChooseFile,
    /// The file chooser picked a file.
    FileChosen(PathBuf),
    /// The name entry changed.
    NameChanged(String),
    /// The OS drop-down changed.
    PresetChanged(u32),
    /// The drivers disc entry changed.
    DriversChanged(String),
    /// A spin button changed.
    MemoryChanged(u64),
    /// A spin button changed.
    CpusChanged(u32),
    /// A spin button changed.
    DiskChanged(u64),
    /// Go on (Next, Create).
    Next,
    /// Go back a page.
    Back,
    /// The window is closing.
    Closing,
}

/// What the assistant tells the window.
#[derive(Debug)]
pub enum AssistantOutput {
    /// The assistant closed; it created the VM with this id, if any.
    Closed(Option<String>),
}

/// Results of background work.
#[derive(Debug)]
pub enum AssistantCommand {
    /// Defaults for the preset: memory MiB, vCPUs, disk GiB, host vCPUs, host MiB.
    Defaults(Preset, (u64, u32, u64, u32, u64)),
    /// Creating ended.
    Created(Result<String, CreateError>),
}

#[relm4::component(pub)]
impl Component for Assistant {
    type Init = ();
    type Input = AssistantInput;
    type Output = AssistantOutput;
    type CommandOutput = AssistantCommand;

    view! {
        #[root]
        adw::Window {
            set_modal: true,
            set_title: Some(&gettext("New Virtual Machine")),
            set_default_size: (560, 560),

            gtk::Box {
                set_orientation: gtk::Orientation::Vertical,

                adw::HeaderBar {
                    #[name = "back_button"]
                    pack_start = &gtk::Button {
                        set_label: &gettext("Back"),
                        #[watch]
                        set_visible: matches!(model.step, Step::Settings | Step::Summary),
                        connect_clicked => AssistantInput::Back,
                    },

                    #[name = "next_button"]
                    pack_end = &gtk::Button {
                        add_css_class: "suggested-action",
                        #[watch]
                        set_label: &if model.step == Step::Summary {
                            gettext("Create")
                        } else {
                            gettext("Next")
                        },
                        #[watch]
                        set_visible: model.step != Step::Creating,
                        #[watch]
                        set_sensitive: model.can_go_on(),
                        connect_clicked => AssistantInput::Next,
                    },
                },

                gtk::Stack {
                    set_vexpand: true,
                    set_transition_type: gtk::StackTransitionType::SlideLeftRight,

                    add_named[Some("source")] = &adw::PreferencesPage {
                        adw::PreferencesGroup {
                            set_title: &gettext("Start From"),
                            set_description: Some(&gettext(
                                "What the new virtual machine boots.",
                            )),

                            adw::ActionRow {
                                set_title: &gettext("Install Image"),
                                set_subtitle: &gettext("An ISO file to install a system from"),
                                set_activatable_widget: Some(&iso_check),
                                #[name = "iso_check"]
                                add_prefix = &gtk::CheckButton {
                                    set_active: true,
                                    connect_toggled[sender] => move |check| {
                                        if check.is_active() {
                                            sender.input(AssistantInput::SetSource(Source::Iso));
                                        }
                                    },
                                },
                            },
                            adw::ActionRow {
                                set_title: &gettext("Linux Kernel"),
                                set_subtitle: &gettext(
                                    "Boot a kernel directly, with a serial console, for kernel testing",
                                ),
                                set_activatable_widget: Some(&kernel_check),
                                #[name = "kernel_check"]
                                add_prefix = &gtk::CheckButton {
                                    set_group: Some(&iso_check),
                                    connect_toggled[sender] => move |check| {
                                        if check.is_active() {
                                            sender.input(AssistantInput::SetSource(Source::Kernel));
                                        }
                                    },
                                },
                            },
                            adw::ActionRow {
                                set_title: &gettext("Existing Disk Image"),
                                set_subtitle: &gettext("A raw or qcow2 disk that already holds a system"),
                                set_activatable_widget: Some(&disk_check),
                                #[name = "disk_check"]
                                add_prefix = &gtk::CheckButton {
                                    set_group: Some(&iso_check),
                                    connect_toggled[sender] => move |check| {
                                        if check.is_active() {
                                            sender.input(AssistantInput::SetSource(Source::Disk));
                                        }
                                    },
                                },
                            },
                        },

                        adw::PreferencesGroup {
                            set_title: &gettext("File"),

                            gtk::Box {
                                set_spacing: 6,

                                #[name = "file_entry"]
                                gtk::Entry {
                                    set_hexpand: true,
                                    set_activates_default: true,
                                    set_placeholder_text: Some(&gettext("Path to the file")),
                                    connect_changed[sender] => move |entry| {
                                        sender.input(AssistantInput::FileChanged(entry.text().into()));
                                    },
                                },
                                #[name = "choose_button"]
                                gtk::Button {
                                    set_label: &gettext("Choose…"),
                                    connect_clicked => AssistantInput::ChooseFile,
                                },
                            },

                            gtk::Label {
                                set_xalign: 0.0,
                                set_wrap: true,
                                set_margin_top: 6,
                                add_css_class: "error",
                                #[watch]
                                set_visible: model.file_error.is_some(),
                                #[watch]
                                set_label: model.file_error.as_deref().unwrap_or_default(),
                            },
                        },
                    },

                    add_named[Some("settings")] = &adw::PreferencesPage {
                        adw::PreferencesGroup {
                            set_title: &gettext("Settings"),

                            #[name = "name_row"]
                            adw::EntryRow {
                                set_title: &gettext("Name"),
                                set_activates_default: true,
                                connect_changed[sender] => move |row| {
                                    sender.input(AssistantInput::NameChanged(row.text().into()));
                                },
                            },

                            gtk::Label {
                                set_xalign: 0.0,
                                set_wrap: true,
                                set_margin_top: 6,
                                set_margin_bottom: 6,
                                add_css_class: "error",
                                #[watch]
                                set_visible: model.name_error.is_some(),
                                #[watch]
                                set_label: model.name_error.as_deref().unwrap_or_default(),
                            },

                            #[name = "os_row"]
                            adw::ComboRow {
                                set_title: &gettext("Operating System"),
                                set_model: Some(&gtk::StringList::new(&[
                                    &gettext("Linux"),
                                    &gettext("Windows 11"),
                                    &gettext("Kernel testing"),
                                ])),
                                connect_selected_notify[sender] => move |row| {
                                    sender.input(AssistantInput::PresetChanged(row.selected()));
                                },
                            },

                            #[name = "drivers_row"]
                            adw::EntryRow {
                                set_title: &gettext("Windows Drivers Disc"),
                                #[watch]
                                set_visible: model.preset == Preset::Windows11,
                                connect_changed[sender] => move |row| {
                                    sender.input(AssistantInput::DriversChanged(row.text().into()));
                                },
                            },

                            gtk::Label {
                                set_xalign: 0.0,
                                set_wrap: true,
                                set_margin_top: 6,
                                add_css_class: "dim-label",
                                add_css_class: "caption",
                                set_label: &gettext("Optional: the virtio-win ISO, put in a second CD drive, to install faster disk, network and display drivers in Windows."),
                                #[watch]
                                set_visible: model.preset == Preset::Windows11,
                            },

                            gtk::Label {
                                set_xalign: 0.0,
                                set_wrap: true,
                                set_margin_top: 6,
                                set_margin_bottom: 6,
                                add_css_class: "error",
                                #[watch]
                                set_visible: model.preset == Preset::Windows11 && model.drivers_error.is_some(),
                                #[watch]
                                set_label: model.drivers_error.as_deref().unwrap_or_default(),
                            },

                            adw::ActionRow {
                                set_title: &gettext("Memory (MiB)"),
                                set_activatable_widget: Some(&memory_spin),
                                #[name = "memory_spin"]
                                add_suffix = &gtk::SpinButton::with_range(128.0, 1_048_576.0, 256.0) {
                                    set_valign: gtk::Align::Center,
                                    connect_value_changed[sender] => move |spin| {
                                        sender.input(AssistantInput::MemoryChanged(spin.value() as u64));
                                    },
                                },
                            },
                            adw::ActionRow {
                                set_title: &gettext("Virtual Processors"),
                                set_activatable_widget: Some(&cpus_spin),
                                #[name = "cpus_spin"]
                                add_suffix = &gtk::SpinButton::with_range(1.0, 255.0, 1.0) {
                                    set_valign: gtk::Align::Center,
                                    connect_value_changed[sender] => move |spin| {
                                        sender.input(AssistantInput::CpusChanged(spin.value() as u32));
                                    },
                                },
                            },
                            adw::ActionRow {
                                set_title: &gettext("Disk Size (GiB)"),
                                #[watch]
                                set_visible: model.source == Source::Iso,
                                set_activatable_widget: Some(&disk_spin),
                                #[name = "disk_spin"]
                                add_suffix = &gtk::SpinButton::with_range(0.0, 65_536.0, 1.0) {
                                    set_valign: gtk::Align::Center,
                                    connect_value_changed[sender] => move |spin| {
                                        sender.input(AssistantInput::DiskChanged(spin.value() as u64));
                                    },
                                },
                            },
                        },
                    },

                    add_named[Some("summary")] = &adw::PreferencesPage {
                        adw::PreferencesGroup {
                            set_title: &gettext("Summary"),
                            set_description: Some(&gettext("Create the virtual machine with these settings?")),

                            adw::ActionRow {
                                set_title: &gettext("Name"),
                                #[watch]
                                set_subtitle: &model.name,
                            },
                            adw::ActionRow {
                                set_title: &gettext("Start From"),
                                #[watch]
                                set_subtitle: &model.file,
                            },
                            adw::ActionRow {
                                set_title: &gettext("Operating System"),
                                #[watch]
                                set_subtitle: &preset_label(model.preset),
                            },
                            adw::ActionRow {
                                set_title: &gettext("Drivers Disc"),
                                #[watch]
                                set_visible: model.preset == Preset::Windows11,
                                #[watch]
                                set_subtitle: &drivers_label(&model.drivers),
                            },
                            adw::ActionRow {
                                set_title: &gettext("Memory"),
                                #[watch]
                                set_subtitle: &memory_label(model.memory_mib << 20),
                            },
                            adw::ActionRow {
                                set_title: &gettext("Virtual Processors"),
                                #[watch]
                                set_subtitle: &model.cpus.to_string(),
                            },
                            adw::ActionRow {
                                set_title: &gettext("New Disk"),
                                #[watch]
                                set_visible: model.source == Source::Iso,
                                #[watch]
                                set_subtitle: &disk_label(model.disk_gib),
                            },
                        },

                        adw::PreferencesGroup {
                            gtk::Label {
                                set_xalign: 0.0,
                                set_wrap: true,
                                add_css_class: "error",
                                #[watch]
                                set_visible: model.error.is_some(),
                                #[watch]
                                set_label: model.error.as_deref().unwrap_or_default(),
                            },
                        },
                    },

                    add_named[Some("creating")] = &gtk::Box {
                        set_orientation: gtk::Orientation::Vertical,
                        set_spacing: 12,
                        set_valign: gtk::Align::Center,
                        set_margin_start: 48,
                        set_margin_end: 48,

                        gtk::Label {
                            add_css_class: "title-2",
                            #[watch]
                            set_label: &gettext_f(
                                // Translators: shown while a virtual machine's folder and
                                // disk image are made; {name} is the machine.
                                "Creating “{name}”…",
                                &[("name", &model.name)],
                            ),
                        },
                        #[name = "progress"]
                        gtk::ProgressBar {
                            set_pulse_step: 0.1,
                        },
                    },

                    #[watch]
                    set_visible_child_name: model.step.name(),
                },
            },

            connect_close_request[sender] => move |_| {
                sender.input(AssistantInput::Closing);
                glib::Propagation::Proceed
            },
        }
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let model = Assistant {
            step: Step::Source,
            source: Source::Iso,
            file: String::new(),
            file_error: None,
            name: String::new(),
            name_error: None,
            preset: Preset::Linux,
            drivers: String::new(),
            drivers_error: None,
            memory_mib: 2048,
            cpus: 2,
            disk_gib: 32,
            max_cpus: 255,
            max_memory_mib: 1_048_576,
            error: None,
            finished: false,
            chooser: None,
            settings: window_state::settings(),
        };
        let widgets = view_output!();

        a11y::set_label(&widgets.iso_check, &gettext("Install Image"));
        a11y::set_label(&widgets.kernel_check, &gettext("Linux Kernel"));
        a11y::set_label(&widgets.disk_check, &gettext("Existing Disk Image"));
        a11y::set_label(&widgets.file_entry, &gettext("Path to the file"));
        a11y::set_label(&widgets.choose_button, &gettext("Choose a File"));
        // The spin buttons are named by their rows (activatable widgets).
        a11y::set_label(&widgets.progress, &gettext("Progress"));
        root.set_default_widget(Some(&widgets.next_button));
        a11y::close_on_escape(&root);
        widgets.file_entry.grab_focus();

        ComponentParts { model, widgets }
    }

    fn update_with_view(
        &mut self,
        widgets: &mut Self::Widgets,
        message: Self::Input,
        sender: ComponentSender<Self>,
        root: &Self::Root,
    ) {
        match message {
            AssistantInput::SetSource(source) => self.source = source,
            AssistantInput::FileChanged(file) => {
                self.file = file;
                self.file_error = None;
            }
            AssistantInput::ChooseFile => self.choose_file(root, &sender),
            AssistantInput::FileChosen(path) => {
                if let Some(settings) = &self.settings
                    && let Some(folder) = path.parent()
                    && let Err(err) = settings.set_string("last-folder", &folder.to_string_lossy())
                {
                    log::warn!("cannot remember the folder: {err}");
                }
                widgets.file_entry.set_text(&path.to_string_lossy());
                self.chooser = None;
            }
            AssistantInput::NameChanged(name) => {
                self.name = name;
                self.name_error = None;
            }
            AssistantInput::PresetChanged(index) => {
                let preset = PRESETS
                    .get(index as usize)
                    .copied()
                    .unwrap_or(Preset::Linux);
                if preset != self.preset {
                    self.preset = preset;
                    offer_drivers(preset, widgets);
                    request_defaults(preset, &sender);
                }
            }
            AssistantInput::DriversChanged(path) => {
                self.drivers = path;
                self.drivers_error = None;
            }
            AssistantInput::MemoryChanged(mib) => self.memory_mib = mib,
            AssistantInput::CpusChanged(cpus) => self.cpus = cpus,
            AssistantInput::DiskChanged(gib) => self.disk_gib = gib,
            AssistantInput::Next => self.next(widgets, &sender),
            AssistantInput::Back => {
                self.step = match self.step {
                    Step::Summary => Step::Settings,
                    _ => Step::Source,
                };
            }
            AssistantInput::Closing => {
                if !self.finished {
                    self.finished = true;
                    let _ = sender.output(AssistantOutput::Closed(None));
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
            AssistantCommand::Defaults(preset, (memory, cpus, disk, max_cpus, max_memory)) => {
                if preset == self.preset {
                    self.max_cpus = max_cpus;
                    self.max_memory_mib = max_memory;
                    widgets.cpus_spin.set_range(1.0, f64::from(max_cpus));
                    widgets.memory_spin.set_range(128.0, max_memory as f64);
                    widgets.memory_spin.set_value(memory as f64);
                    widgets.cpus_spin.set_value(f64::from(cpus));
                    widgets.disk_spin.set_value(disk as f64);
                    self.memory_mib = memory;
                    self.cpus = cpus;
                    self.disk_gib = disk;
                }
            }
            AssistantCommand::Created(Ok(id)) => {
                self.finished = true;
                let _ = sender.output(AssistantOutput::Closed(Some(id)));
                root.destroy();
            }
            AssistantCommand::Created(Err(CreateError::Name(reason))) => {
                self.name_error = Some(reason);
                self.step = Step::Settings;
                widgets.name_row.grab_focus();
            }
            AssistantCommand::Created(Err(CreateError::Other(reason))) => {
                self.error = Some(reason);
                self.step = Step::Summary;
            }
        }
        self.update_view(widgets, sender);
    }
}

impl Assistant {
    /// Whether Next (or Create) may be pressed on this page.
    fn can_go_on(&self) -> bool {
        match self.step {
            Step::Source => !self.file.trim().is_empty(),
            Step::Settings => !self.name.trim().is_empty() && self.name_error.is_none(),
            Step::Summary => true,
            Step::Creating => false,
        }
    }

    fn next(&mut self, widgets: &mut AssistantWidgets, sender: &ComponentSender<Self>) {
        if !self.can_go_on() {
            return;
        }
        match self.step {
            Step::Source => {
                let file = PathBuf::from(self.file.trim());
                // A single stat of a path the person typed: cheap enough for the main loop.
                if !file.is_file() {
                    self.file_error = Some(gettext_f(
                        // Translators: {path} is a file path the person typed.
                        "There is no file at {path}",
                        &[("path", &file.to_string_lossy())],
                    ));
                    return;
                }
                let preset = assistant_model::guess_preset(self.source, &file);
                let index = PRESETS.iter().position(|p| *p == preset).unwrap_or(0);
                self.preset = preset;
                widgets.os_row.set_selected(index as u32);
                offer_drivers(preset, widgets);
                if self.name.is_empty() {
                    widgets
                        .name_row
                        .set_text(&assistant_model::guess_name(&file));
                }
                request_defaults(preset, sender);
                self.step = Step::Settings;
                widgets.name_row.grab_focus();
            }
            Step::Settings => {
                let drivers = self.drivers.trim();
                if self.preset == Preset::Windows11
                    && !drivers.is_empty()
                    && !Path::new(drivers).is_file()
                {
                    self.drivers_error = Some(gettext_f(
                        // Translators: {path} is a file path the person typed.
                        "There is no file at {path}",
                        &[("path", drivers)],
                    ));
                    widgets.drivers_row.grab_focus();
                    return;
                }
                self.step = Step::Summary;
                widgets.next_button.grab_focus();
            }
            Step::Summary => {
                self.step = Step::Creating;
                self.error = None;
                pulse_while_visible(&widgets.progress);
                let plan = self.plan();
                sender.spawn_oneshot_command(move || {
                    AssistantCommand::Created(assistant_model::create(&plan))
                });
            }
            Step::Creating => {}
        }
    }

    fn plan(&self) -> Plan {
        Plan {
            source: self.source,
            file: PathBuf::from(self.file.trim()),
            name: self.name.trim().to_owned(),
            preset: self.preset,
            memory_mib: self.memory_mib.min(self.max_memory_mib),
            cpus: self.cpus.min(self.max_cpus),
            disk_gib: if self.source == Source::Iso {
                self.disk_gib
            } else {
                0
            },
            drivers: Some(self.drivers.trim())
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
        }
    }

    fn choose_file(&mut self, root: &adw::Window, sender: &ComponentSender<Self>) {
        let chooser = gtk::FileChooserNative::new(
            Some(&gettext("Choose a File")),
            Some(root),
            gtk::FileChooserAction::Open,
            Some(&gettext("Choose")),
            Some(&gettext("Cancel")),
        );
        if self.source == Source::Iso {
            let filter = gtk::FileFilter::new();
            filter.set_name(Some(&gettext("Install images")));
            filter.add_pattern("*.iso");
            filter.add_pattern("*.ISO");
            chooser.add_filter(&filter);
        }
        if let Some(folder) = self
            .settings
            .as_ref()
            .map(|settings| settings.string("last-folder"))
            .filter(|folder| !folder.is_empty() && Path::new(folder.as_str()).is_dir())
            && let Err(err) = chooser.set_current_folder(Some(&gio::File::for_path(folder)))
        {
            log::debug!("cannot open the last folder: {err}");
        }
        let input = sender.clone();
        chooser.connect_response(move |chooser, response| {
            if response == gtk::ResponseType::Accept
                && let Some(path) = chooser.file().and_then(|file| file.path())
            {
                input.input(AssistantInput::FileChosen(path));
            }
        });
        chooser.show();
        self.chooser = Some(chooser);
    }
}

fn request_defaults(preset: Preset, sender: &ComponentSender<Assistant>) {
    sender.spawn_oneshot_command(move || {
        AssistantCommand::Defaults(preset, assistant_model::host_defaults(preset))
    });
}

/// Pulses `progress` every 100 ms while it is on screen.
fn pulse_while_visible(progress: &gtk::ProgressBar) {
    let progress = progress.clone();
    glib::timeout_add_local(Duration::from_millis(100), move || {
        if progress.is_mapped() {
            progress.pulse();
            glib::ControlFlow::Continue
        } else {
            glib::ControlFlow::Break
        }
    });
}

/// Fills the drivers disc entry with the one installed on this computer when Windows is
/// chosen and the entry is still empty.
fn offer_drivers(preset: Preset, widgets: &AssistantWidgets) {
    if preset == Preset::Windows11
        && widgets.drivers_row.text().is_empty()
        && let Some(found) = assistant_model::installed_drivers_iso()
    {
        widgets.drivers_row.set_text(&found.to_string_lossy());
    }
}

/// The summary's line for the drivers disc.
fn drivers_label(path: &str) -> String {
    match path.trim() {
        "" => gettext("None (install virtio-win to have one found)"),
        path => path.to_owned(),
    }
}

fn preset_label(preset: Preset) -> String {
    match preset {
        Preset::Linux => gettext("Linux"),
        Preset::Windows11 => gettext("Windows 11"),
        Preset::Kernel => gettext("Kernel testing"),
    }
}

fn disk_label(gib: u64) -> String {
    if gib == 0 {
        // Translators: the new virtual machine gets no disk image.
        gettext("None")
    } else {
        memory_label(gib << 30)
    }
}
