//! One row of the library list: a VM's name, a summary line, an OS icon, its state and the
//! buttons that start, pause, resume and stop it.
//!
//! A stopped VM with a saved state (after Save and Quit) shows "Saved" and when, and its
//! Start button resumes it ("Resume"); a saved-state file that cannot be resumed shows
//! why in the subtitle. Its menu offers Discard Saved State (the window asks first).
//! While a save runs, the state reads "Saving… N %" beside a progress bar.
//!
//! A VM whose `vm.ron` does not load shows its folder name, the located error and a
//! warning icon instead, so the person can go and fix the file; it has no buttons.
//! The row does no work itself: it sends a [`MachineRowOutput`] to the window, which runs
//! the action off the main loop and sends the new state back with
//! [`MachineRowInput::SetState`].

use adw::prelude::*;
use gettextrs::gettext;
use relm4::factory::{DynamicIndex, FactoryComponent, FactorySender};

use crate::a11y;
use crate::i18n::gettext_f;
use crate::library_model::LibraryEntry;
use crate::vm_control::{self, SavedInfo, VmAction, VmState};

/// A library row.
pub struct MachineRow {
    entry: LibraryEntry,
    state: VmState,
    /// An action is under way; the buttons wait for it.
    busy: bool,
    /// The latest picture of the guest's screen while it runs.
    thumbnail: Option<gtk::gdk::Texture>,
    /// A stopped VM's saved state, if it has one.
    saved: Option<SavedInfo>,
    /// A save runs: the percent of guest RAM written.
    saving: Option<u32>,
}

/// What a row is told.
#[derive(Debug)]
pub enum MachineRowInput {
    /// The VM is now in this state (and any action on it has ended).
    SetState(VmState),
    /// An action was sent to the window.
    Act(VmAction),
    /// Open the VM's window.
    Open,
    /// A new picture of the guest's screen.
    SetThumbnail(gtk::gdk::Texture),
    /// Open the VM's settings.
    Settings,
    /// Open the VM's snapshots.
    Snapshots,
    /// Time passed: show the saved state's age anew.
    Tick,
    /// A save runs and is this far (percent), or it ended (`None`).
    SetSaving(Option<u32>),
}

/// What a row asks of the window.
#[derive(Debug)]
pub enum MachineRowOutput {
    /// Carry out an action on the VM with this library id.
    Act(String, VmAction),
    /// Open the VM's window.
    Open(String),
    /// Open the VM's settings.
    Settings(String),
    /// Open the VM's snapshots (a page of its settings window).
    Snapshots(String),
}

/// What a new row starts with.
#[derive(Debug)]
pub struct MachineRowInit {
    /// The library entry.
    pub entry: LibraryEntry,
    /// The state found when the library was read.
    pub state: VmState,
}

impl MachineRow {
    /// The VM's library id.
    pub fn id(&self) -> &str {
        &self.entry.id
    }

    /// The library entry shown.
    pub fn entry(&self) -> &LibraryEntry {
        &self.entry
    }

    /// The state shown.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// Whether a saved state that can be resumed waits: Start resumes it.
    fn resumable(&self) -> bool {
        self.state == VmState::Stopped && matches!(self.saved, Some(SavedInfo::Resumable(_)))
    }

    fn has_saved_state(&self) -> bool {
        self.state == VmState::Stopped && self.saved.is_some()
    }

    /// The state as the row shows it.
    fn state_text(&self) -> String {
        if let Some(percent) = self.saving {
            return gettext_f(
                // Translators: the state of a virtual machine being saved; {percent} is a
                // number from 0 to 100.
                "Saving… {percent} %",
                &[("percent", &percent.to_string())],
            );
        }
        match (&self.saved, self.state) {
            (Some(SavedInfo::Resumable(at)), VmState::Stopped) => {
                vm_control::saved_label(*at, vm_control::unix_now())
            }
            // Translators: the state of a virtual machine whose saved state is damaged or
            // from another version; the reason shows below the name.
            (Some(SavedInfo::Unusable(_)), VmState::Stopped) => gettext("Saved State Unusable"),
            _ => self.state.label(),
        }
    }

    /// The second line: why a saved state cannot be resumed, else the entry's own.
    fn subtitle(&self) -> &str {
        match (&self.saved, self.state) {
            (Some(SavedInfo::Unusable(why)), VmState::Stopped) => why,
            _ => self.entry.subtitle(),
        }
    }

    fn start_label(&self) -> String {
        if self.resumable() {
            gettext("Resume")
        } else {
            gettext("Start")
        }
    }

    fn read_saved(&mut self) {
        self.saved = if self.state.is_live() || self.entry.error.is_some() {
            None
        } else {
            self.entry
                .config_path
                .parent()
                .and_then(vm_control::saved_info)
        };
    }

    fn shows_thumbnail(&self) -> bool {
        self.thumbnail.is_some() && self.state.is_live()
    }

    fn usable(&self) -> bool {
        self.entry.error.is_none() && !self.busy
    }

    fn can_start(&self) -> bool {
        self.usable() && self.state == VmState::Stopped
    }

    fn can_pause(&self) -> bool {
        self.usable() && self.state == VmState::Running
    }

    fn can_resume(&self) -> bool {
        self.usable() && self.state == VmState::Paused
    }

    fn can_stop(&self) -> bool {
        self.usable() && matches!(self.state, VmState::Running | VmState::Paused)
    }

    fn state_css(&self) -> &'static str {
        if self.saving.is_some() {
            return "warning";
        }
        match (&self.saved, self.state) {
            (Some(SavedInfo::Resumable(_)), VmState::Stopped) => return "accent",
            (Some(SavedInfo::Unusable(_)), VmState::Stopped) => return "error",
            _ => {}
        }
        match self.state {
            VmState::Running => "success",
            VmState::Paused | VmState::Starting | VmState::Stopping => "warning",
            VmState::Stopped => "dim-label",
        }
    }
}

#[relm4::factory(pub)]
impl FactoryComponent for MachineRow {
    type Init = MachineRowInit;
    type Input = MachineRowInput;
    type Output = MachineRowOutput;
    type CommandOutput = ();
    type ParentWidget = gtk::ListBox;

    view! {
        adw::ActionRow {
            set_use_markup: false,
            set_activatable: self.entry.error.is_none(),
            connect_activated => MachineRowInput::Open,
            set_title: &self.entry.name,
            #[watch]
            set_subtitle: self.subtitle(),
            set_tooltip_text: Some(self.entry.tooltip()),

            add_prefix = &gtk::Image {
                set_icon_name: Some(self.entry.icon_name),
                set_icon_size: gtk::IconSize::Large,
                add_css_class?: self.entry.error.as_ref().map(|_| "warning"),
                #[watch]
                set_visible: !self.shows_thumbnail(),
            },

            #[name = "thumbnail"]
            add_prefix = &gtk::Picture {
                set_size_request: (96, 60),
                set_can_shrink: true,
                set_content_fit: gtk::ContentFit::Contain,
                add_css_class: "vm-thumbnail",
                #[watch]
                set_visible: self.shows_thumbnail(),
                #[watch]
                set_paintable: self.thumbnail.as_ref(),
            },

            add_suffix = &gtk::Box {
                set_spacing: 6,
                set_valign: gtk::Align::Center,
                set_visible: self.entry.error.is_none(),

                #[name = "state_label"]
                gtk::Label {
                    add_css_class: "caption-heading",
                    set_margin_end: 6,
                    #[watch]
                    set_label: &self.state_text(),
                    #[watch]
                    set_css_classes: &["caption-heading", self.state_css()],
                },

                gtk::ProgressBar {
                    set_valign: gtk::Align::Center,
                    set_width_request: 80,
                    #[watch]
                    set_visible: self.saving.is_some(),
                    #[watch]
                    set_fraction: f64::from(self.saving.unwrap_or(0)) / 100.0,
                },

                #[name = "open_button"]
                gtk::Button {
                    set_icon_name: "video-display-symbolic",
                    set_tooltip_text: Some(&gettext("Open")),
                    add_css_class: "flat",
                    #[watch]
                    set_visible: self.state.is_live(),
                    connect_clicked => MachineRowInput::Open,
                },

                #[name = "start_button"]
                gtk::Button {
                    set_icon_name: "media-playback-start-symbolic",
                    #[watch]
                    set_tooltip_text: Some(&self.start_label()),
                    add_css_class: "flat",
                    #[watch]
                    set_visible: self.state == VmState::Stopped,
                    #[watch]
                    set_sensitive: self.can_start(),
                    connect_clicked => MachineRowInput::Act(VmAction::Start),
                },

                #[name = "pause_button"]
                gtk::Button {
                    set_icon_name: "media-playback-pause-symbolic",
                    set_tooltip_text: Some(&gettext("Pause")),
                    add_css_class: "flat",
                    #[watch]
                    set_visible: self.state == VmState::Running,
                    #[watch]
                    set_sensitive: self.can_pause(),
                    connect_clicked => MachineRowInput::Act(VmAction::Pause),
                },

                #[name = "resume_button"]
                gtk::Button {
                    set_icon_name: "media-playback-start-symbolic",
                    set_tooltip_text: Some(&gettext("Resume")),
                    add_css_class: "flat",
                    #[watch]
                    set_visible: self.state == VmState::Paused,
                    #[watch]
                    set_sensitive: self.can_resume(),
                    connect_clicked => MachineRowInput::Act(VmAction::Resume),
                },

                #[name = "power_button"]
                gtk::Button {
                    set_icon_name: "system-shutdown-symbolic",
                    set_tooltip_text: Some(&gettext("Shut Down")),
                    add_css_class: "flat",
                    #[watch]
                    set_sensitive: self.can_stop(),
                    connect_clicked => MachineRowInput::Act(VmAction::PowerButton),
                },

                #[name = "more_button"]
                gtk::MenuButton {
                    set_icon_name: "view-more-symbolic",
                    set_tooltip_text: Some(&gettext("More Actions")),
                    add_css_class: "flat",
                    #[watch]
                    set_sensitive: self.usable(),

                    #[wrap(Some)]
                    #[name = "menu"]
                    set_popover = &gtk::Popover {
                        #[name = "menu_items"]
                        gtk::Box {
                            set_orientation: gtk::Orientation::Vertical,

                            gtk::Button {
                                set_label: &gettext("Settings"),
                                add_css_class: "flat",
                                connect_clicked => MachineRowInput::Settings,
                            },
                            gtk::Button {
                                set_label: &gettext("Snapshots"),
                                add_css_class: "flat",
                                connect_clicked => MachineRowInput::Snapshots,
                            },
                            gtk::Button {
                                set_label: &gettext("Save and Quit"),
                                add_css_class: "flat",
                                #[watch]
                                set_visible: self.state.is_live(),
                                #[watch]
                                set_sensitive: self.can_stop(),
                                connect_clicked => MachineRowInput::Act(VmAction::SaveAndQuit),
                            },
                            gtk::Button {
                                set_label: &gettext("Discard Saved State"),
                                add_css_class: "flat",
                                add_css_class: "destructive-action",
                                #[watch]
                                set_visible: self.has_saved_state(),
                                connect_clicked => MachineRowInput::Act(VmAction::DiscardSaved),
                            },
                            gtk::Button {
                                set_label: &gettext("Reset"),
                                add_css_class: "flat",
                                #[watch]
                                set_sensitive: self.state.is_live(),
                                connect_clicked => MachineRowInput::Act(VmAction::Reset),
                            },
                            gtk::Button {
                                set_label: &gettext("Force Off"),
                                add_css_class: "flat",
                                add_css_class: "destructive-action",
                                #[watch]
                                set_sensitive: self.state.is_live(),
                                connect_clicked => MachineRowInput::Act(VmAction::ForceOff),
                            },
                        },
                    },
                },
            },
        }
    }

    fn init_model(init: Self::Init, _index: &DynamicIndex, _sender: FactorySender<Self>) -> Self {
        let mut row = Self {
            entry: init.entry,
            state: init.state,
            busy: false,
            thumbnail: None,
            saved: None,
            saving: None,
        };
        row.read_saved();
        row
    }

    fn init_widgets(
        &mut self,
        _index: &DynamicIndex,
        root: Self::Root,
        _returned_widget: &gtk::ListBoxRow,
        sender: FactorySender<Self>,
    ) -> Self::Widgets {
        let widgets = view_output!();
        // Every menu item closes the menu.
        let mut item = widgets.menu_items.first_child();
        while let Some(widget) = item {
            if let Some(button) = widget.downcast_ref::<gtk::Button>() {
                let menu = widgets.menu.clone();
                button.connect_clicked(move |_| menu.popdown());
            }
            item = widget.next_sibling();
        }
        let name = &self.entry.name;
        let label = |text: &str| {
            gettext_f(
                // Translators: the accessible name of a button in a library row, e.g.
                // "Start Debian Desktop"; {action} is the button's label, {name} the
                // virtual machine.
                "{action} {name}",
                &[("action", text), ("name", name)],
            )
        };
        a11y::set_label(
            &widgets.thumbnail,
            &gettext_f(
                // Translators: the accessible name of a small live picture of a virtual
                // machine's screen in the library; {name} is the machine.
                "Live picture of {name}",
                &[("name", name)],
            ),
        );
        a11y::set_label(&widgets.open_button, &label(&gettext("Open")));
        a11y::set_label(&widgets.start_button, &label(&self.start_label()));
        a11y::set_label(&widgets.pause_button, &label(&gettext("Pause")));
        a11y::set_label(&widgets.resume_button, &label(&gettext("Resume")));
        a11y::set_label(&widgets.power_button, &label(&gettext("Shut Down")));
        a11y::set_label(&widgets.more_button, &label(&gettext("More Actions")));
        widgets
    }

    fn update_with_view(
        &mut self,
        widgets: &mut Self::Widgets,
        message: Self::Input,
        sender: FactorySender<Self>,
    ) {
        let start = self.start_label();
        self.update(message, sender.clone());
        self.update_view(widgets, sender);
        if self.start_label() != start {
            a11y::set_label(
                &widgets.start_button,
                &gettext_f(
                    "{action} {name}",
                    &[("action", &self.start_label()), ("name", &self.entry.name)],
                ),
            );
        }
    }

    fn update(&mut self, message: Self::Input, sender: FactorySender<Self>) {
        match message {
            MachineRowInput::SetState(state) => {
                self.state = state;
                self.busy = false;
                if !state.is_live() {
                    self.thumbnail = None;
                    self.saving = None;
                }
                self.read_saved();
            }
            MachineRowInput::SetSaving(saving) => self.saving = saving,
            MachineRowInput::Tick => {}
            MachineRowInput::Snapshots => {
                if sender
                    .output(MachineRowOutput::Snapshots(self.entry.id.clone()))
                    .is_err()
                {
                    log::debug!("the library window is gone");
                }
            }
            MachineRowInput::SetThumbnail(texture) => self.thumbnail = Some(texture),
            MachineRowInput::Settings => {
                if sender
                    .output(MachineRowOutput::Settings(self.entry.id.clone()))
                    .is_err()
                {
                    log::debug!("the library window is gone");
                }
            }
            MachineRowInput::Open => {
                if sender
                    .output(MachineRowOutput::Open(self.entry.id.clone()))
                    .is_err()
                {
                    log::debug!("the library window is gone");
                }
            }
            MachineRowInput::Act(action) => {
                self.busy = true;
                if action == VmAction::Start {
                    self.state = VmState::Starting;
                }
                if sender
                    .output(MachineRowOutput::Act(self.entry.id.clone(), action))
                    .is_err()
                {
                    log::debug!("the library window is gone");
                }
            }
        }
    }
}
