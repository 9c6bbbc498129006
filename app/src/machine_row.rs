//! One row of the library list: a VM's name, a summary line, an OS icon, its state and the
//! buttons that start, pause, resume and stop it.
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
use crate::vm_control::{VmAction, VmState};

/// A library row.
pub struct MachineRow {
    entry: LibraryEntry,
    state: VmState,
    /// An action is under way; the buttons wait for it.
    busy: bool,
    /// The latest picture of the guest's screen while it runs.
    thumbnail: Option<gtk::gdk::Texture>,
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
            set_subtitle: self.entry.subtitle(),
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
                    set_label: &self.state.label(),
                    #[watch]
                    set_css_classes: &["caption-heading", self.state_css()],
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
                    set_tooltip_text: Some(&gettext("Start")),
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
        Self {
            entry: init.entry,
            state: init.state,
            busy: false,
            thumbnail: None,
        }
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
        a11y::set_label(&widgets.start_button, &label(&gettext("Start")));
        a11y::set_label(&widgets.pause_button, &label(&gettext("Pause")));
        a11y::set_label(&widgets.resume_button, &label(&gettext("Resume")));
        a11y::set_label(&widgets.power_button, &label(&gettext("Shut Down")));
        a11y::set_label(&widgets.more_button, &label(&gettext("More Actions")));
        widgets
    }

    fn update(&mut self, message: Self::Input, sender: FactorySender<Self>) {
        match message {
            MachineRowInput::SetState(state) => {
                self.state = state;
                self.busy = false;
                if !state.is_live() {
                    self.thumbnail = None;
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
