//! The main window: a header bar and the VM library.
//!
//! The library is read on relm4's background pool ([`library_model::load_default`] through
//! `spawn_oneshot_command`), never on the main loop. Until the first load finishes the window
//! shows a spinner; then one of three pages: the list, the empty state, or why the library
//! could not be read. Refreshing (button, F5, Ctrl+R) reloads it the same way while the
//! current page stays up.

use adw::prelude::*;
use gettextrs::gettext;
use gtk::{gio, glib};
use relm4::actions::{AccelsPlus, ActionablePlus, RelmAction, RelmActionGroup};
use relm4::factory::FactoryVecDeque;
use relm4::{Component, ComponentParts, ComponentSender};

use crate::a11y;
use crate::library_model::{self, LibraryLoad};
use crate::machine_row::MachineRow;
use crate::window_state;

relm4::new_action_group!(WindowActionGroup, "win");
relm4::new_stateless_action!(RefreshAction, WindowActionGroup, "refresh");

/// What the window shows below its header bar.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Page {
    /// The first load has not finished.
    Loading,
    /// The library has no VMs.
    Empty,
    /// The list of VMs.
    List,
    /// The library could not be read; the text says why.
    Failed(String),
}

impl Page {
    fn name(&self) -> &'static str {
        match self {
            Page::Loading => "loading",
            Page::Empty => "empty",
            Page::List => "list",
            Page::Failed(_) => "failed",
        }
    }
}

/// The main window.
pub struct AppWindow {
    page: Page,
    /// A load is running; refresh requests are ignored until it ends.
    loading: bool,
    machines: FactoryVecDeque<MachineRow>,
    settings: Option<gio::Settings>,
}

/// Requests to the window.
#[derive(Debug)]
pub enum AppWindowInput {
    /// Read the library again.
    Refresh,
}

/// Results of background work.
#[derive(Debug)]
pub enum AppWindowCommand {
    /// The library finished loading.
    Loaded(LibraryLoad),
}

#[relm4::component(pub)]
impl Component for AppWindow {
    type Init = ();
    type Input = AppWindowInput;
    type Output = ();
    type CommandOutput = AppWindowCommand;

    view! {
        #[root]
        adw::ApplicationWindow {
            set_title: Some("Hospes"),
            set_default_size: (960, 640),
            set_size_request: (360, 294),

            gtk::Box {
                set_orientation: gtk::Orientation::Vertical,

                adw::HeaderBar {
                    #[name = "refresh_button"]
                    pack_start = &gtk::Button {
                        set_icon_name: "view-refresh-symbolic",
                        ActionablePlus::set_stateless_action::<RefreshAction>: &(),
                        set_tooltip_text: Some(&gettext("Refresh (F5)")),
                        #[watch]
                        set_sensitive: !model.loading,
                    },
                },

                gtk::Stack {
                    set_vexpand: true,
                    set_transition_type: gtk::StackTransitionType::Crossfade,

                    #[name = "spinner"]
                    add_named[Some("loading")] = &gtk::Spinner {
                        set_spinning: true,
                        set_halign: gtk::Align::Center,
                        set_valign: gtk::Align::Center,
                        set_size_request: (32, 32),
                        set_tooltip_text: Some(&gettext("Loading virtual machines…")),
                    },

                    add_named[Some("empty")] = &adw::StatusPage {
                        set_icon_name: Some("io.github.hospes.Hospes-symbolic"),
                        set_title: &gettext("No virtual machines yet"),
                        set_description: Some(&gettext(
                            "Create one in a terminal with “hospesctl create”, then refresh.",
                        )),

                        #[wrap(Some)]
                        set_child = &gtk::Button {
                            set_label: &gettext("Refresh"),
                            set_halign: gtk::Align::Center,
                            add_css_class: "pill",
                            add_css_class: "suggested-action",
                            ActionablePlus::set_stateless_action::<RefreshAction>: &(),
                        },
                    },

                    add_named[Some("failed")] = &adw::StatusPage {
                        set_icon_name: Some("dialog-error-symbolic"),
                        set_title: &gettext("Cannot read the virtual machine library"),
                        #[watch]
                        set_description: model.failure_markup().as_deref(),

                        #[wrap(Some)]
                        set_child = &gtk::Button {
                            set_label: &gettext("Try Again"),
                            set_halign: gtk::Align::Center,
                            add_css_class: "pill",
                            ActionablePlus::set_stateless_action::<RefreshAction>: &(),
                        },
                    },

                    add_named[Some("list")] = &gtk::ScrolledWindow {
                        set_hscrollbar_policy: gtk::PolicyType::Never,

                        adw::Clamp {
                            set_maximum_size: 720,
                            set_margin_start: 12,
                            set_margin_end: 12,

                            #[local_ref]
                            machine_list -> gtk::ListBox {
                                add_css_class: "boxed-list",
                                add_css_class: "library-list",
                                set_valign: gtk::Align::Start,
                                set_selection_mode: gtk::SelectionMode::None,
                            },
                        },
                    },

                    #[watch]
                    set_visible_child_name: model.page.name(),
                },
            },

            connect_close_request[settings = model.settings.clone()] => move |window| {
                if let Some(settings) = &settings {
                    window_state::save(window, settings);
                }
                glib::Propagation::Proceed
            },
        }
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let machines = FactoryVecDeque::builder()
            .launch(gtk::ListBox::default())
            .detach();
        let model = AppWindow {
            page: Page::Loading,
            loading: false,
            machines,
            settings: window_state::settings(),
        };
        let machine_list = model.machines.widget();
        let widgets = view_output!();

        a11y::set_label(&widgets.refresh_button, &gettext("Refresh"));
        a11y::set_label(&widgets.spinner, &gettext("Loading virtual machines…"));
        a11y::set_label(machine_list, &gettext("Virtual machines"));
        if let Some(settings) = &model.settings {
            window_state::restore(&root, settings);
        }
        install_actions(&root, &sender);
        sender.input(AppWindowInput::Refresh);

        ComponentParts { model, widgets }
    }

    fn update(&mut self, message: Self::Input, sender: ComponentSender<Self>, _root: &Self::Root) {
        match message {
            AppWindowInput::Refresh if self.loading => {}
            AppWindowInput::Refresh => {
                self.loading = true;
                sender.spawn_oneshot_command(|| {
                    AppWindowCommand::Loaded(library_model::load_default())
                });
            }
        }
    }

    fn update_cmd(
        &mut self,
        message: Self::CommandOutput,
        _sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match message {
            AppWindowCommand::Loaded(result) => {
                self.loading = false;
                self.show(result);
            }
        }
    }
}

impl AppWindow {
    /// Replaces the rows with a fresh load and picks the page to show.
    fn show(&mut self, result: LibraryLoad) {
        let mut rows = self.machines.guard();
        rows.clear();
        self.page = match result {
            Ok(entries) if entries.is_empty() => Page::Empty,
            Ok(entries) => {
                for entry in entries {
                    rows.push_back(entry);
                }
                Page::List
            }
            Err(err) => {
                log::warn!("cannot read the library: {err}");
                Page::Failed(err)
            }
        };
    }

    /// The failure page's description; the status page reads it as markup.
    fn failure_markup(&self) -> Option<String> {
        match &self.page {
            Page::Failed(err) => Some(glib::markup_escape_text(err).to_string()),
            _ => None,
        }
    }
}

/// Registers `win.refresh` on the window, bound to F5 and Ctrl+R, and binds Ctrl+W to
/// GTK's built-in `window.close`.
fn install_actions(window: &adw::ApplicationWindow, sender: &ComponentSender<AppWindow>) {
    let sender = sender.clone();
    let refresh: RelmAction<RefreshAction> =
        RelmAction::new_stateless(move |_| sender.input(AppWindowInput::Refresh));
    let mut group = RelmActionGroup::<WindowActionGroup>::new();
    group.add_action(refresh);
    group.register_for_widget(window);
    let app = relm4::main_application();
    app.set_accelerators_for_action::<RefreshAction>(&["F5", "<primary>r"]);
    app.set_accels_for_action("window.close", &["<primary>w"]);
}
