//! The main window: a header bar and the VM library.
//!
//! The library is read on relm4's background pool ([`library_model::load_default`] through
//! `spawn_oneshot_command`), never on the main loop. Until the first load finishes the window
//! shows a spinner; then one of three pages: the list, the empty state, or why the library
//! could not be read. Refreshing (button, F5, Ctrl+R) reloads it the same way while the
//! current page stays up.
//!
//! Lifecycle: a row asks for an action ([`MachineRowOutput`]); the window runs it with
//! [`vm_control::perform`] on the background pool and tells the row the state that
//! follows. Every live VM has a watcher thread ([`vm_control::watch`]) that follows its
//! helper's QMP events and reports through the command channel; when a helper dies without
//! the guest powering off, the window shows the end of its log and stays up. Loading the
//! library also probes each VM's runtime directory, so VMs left running by an earlier
//! window (or started by `hospesctl`) are found again and watched.

use adw::prelude::*;
use gettextrs::gettext;
use gtk::{gio, glib};
use relm4::actions::{AccelsPlus, ActionablePlus, RelmAction, RelmActionGroup};
use relm4::factory::FactoryVecDeque;
use relm4::{Component, ComponentController, ComponentParts, ComponentSender, Controller};

use std::collections::{HashMap, HashSet};

use crate::a11y;
use crate::assistant::{Assistant, AssistantOutput};
use crate::bench;
use crate::demo;
use crate::i18n::gettext_f;
use crate::library_model::{self, LibraryLoad};
use crate::machine_row::{MachineRow, MachineRowInit, MachineRowInput, MachineRowOutput};
use crate::settings_window::{SettingsInit, SettingsOutput, SettingsWindow};
use crate::vm_control::{self, VmAction, VmRef, VmState, WatchEvent};
use crate::vm_window::{VmWindow, VmWindowInit, VmWindowOutput};
use crate::window_state;

relm4::new_action_group!(WindowActionGroup, "win");
relm4::new_stateless_action!(RefreshAction, WindowActionGroup, "refresh");
relm4::new_stateless_action!(NewVmAction, WindowActionGroup, "new-vm");
relm4::new_stateless_action!(SearchAction, WindowActionGroup, "search");

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
    /// Library ids of the VMs with a watcher thread.
    watched: HashSet<String>,
    /// Library ids of the VMs this window forced off: their end is no surprise.
    forced: HashSet<String>,
    /// Open VM windows by library id.
    vm_windows: HashMap<String, Controller<VmWindow>>,
    /// VMs being started from their row's activation: their window opens once they run.
    open_when_started: HashSet<String>,
    /// Open settings panes by library id.
    settings_panes: HashMap<String, Controller<SettingsWindow>>,
    /// A VM to open once the next load has listed it (the Demo VM just added).
    open_after_load: Option<String>,
    /// The new-VM assistant while it is open.
    assistant: Option<Controller<Assistant>>,
    window: adw::ApplicationWindow,
}

/// Requests to the window.
#[derive(Debug)]
pub enum AppWindowInput {
    /// Read the library again.
    Refresh,
    /// Carry out an action on the VM with this library id.
    Act(String, VmAction),
    /// The person answered the question before an action that loses something: carry
    /// it out when `true`.
    Confirmed(String, VmAction, bool),
    /// Open the window of the VM with this library id (starting it when stopped).
    Open(String),
    /// A VM window closed.
    VmWindowClosed(String),
    /// Open the settings of the VM with this library id.
    Settings(String),
    /// Open the settings of the VM with this library id on its Snapshots page.
    Snapshots(String),
    /// A settings pane closed; the settings changed when `true`.
    SettingsClosed(String, bool),
    /// Put the Demo VM in the library; open (and start) it when `true`.
    AddDemo(bool),
    /// Open the new-VM assistant.
    NewVm,
    /// The assistant closed; it created the VM with this id, if any.
    AssistantDone(Option<String>),
    /// Focus the search entry.
    Search,
    /// A minute passed: the rows show their saved states' ages anew.
    Tick,
}

/// Results of background work.
#[derive(Debug)]
pub enum AppWindowCommand {
    /// The library finished loading, with each entry's state in the same order.
    Loaded(LibraryLoad, Vec<VmState>),
    /// An action ended; the VM is now in `state`.
    Acted {
        /// The VM's library id.
        id: String,
        /// The action.
        action: VmAction,
        /// Why it failed, translated.
        result: Result<(), String>,
        /// The state found afterwards.
        state: VmState,
    },
    /// A save of this VM is this far (percent of guest RAM written).
    SaveProgress(String, u32),
    /// A watcher saw something.
    Watch(String, WatchEvent),
    /// A new thumbnail of a running VM's screen.
    Thumbnail(String, gtk::gdk::Texture),
    /// The Demo VM is in the library (its id), or why not; open it when `true`.
    DemoReady(Result<String, String>, bool),
}

/// How the app was started.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// `--demo`: add the Demo VM if missing, start it and open its window.
    pub demo: bool,
    /// `--open NAME`: start the VM with this name or id and open its window.
    pub open: Option<String>,
}

#[relm4::component(pub)]
impl Component for AppWindow {
    type Init = Launch;
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
                    #[name = "new_button"]
                    pack_start = &gtk::Button {
                        set_icon_name: "list-add-symbolic",
                        ActionablePlus::set_stateless_action::<NewVmAction>: &(),
                        set_tooltip_text: Some(&gettext("New Virtual Machine (Ctrl+N)")),
                    },

                    #[wrap(Some)]
                    #[name = "search_entry"]
                    set_title_widget = &gtk::SearchEntry {
                        set_placeholder_text: Some(&gettext("Search virtual machines")),
                        set_width_chars: 24,
                    },

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
                            "Create one from an install image, a kernel or a disk image.",
                        )),

                        #[wrap(Some)]
                        set_child = &gtk::Box {
                            set_orientation: gtk::Orientation::Vertical,
                            set_spacing: 12,
                            set_halign: gtk::Align::Center,

                            gtk::Button {
                                set_label: &gettext("Create a Virtual Machine"),
                                add_css_class: "pill",
                                add_css_class: "suggested-action",
                                ActionablePlus::set_stateless_action::<NewVmAction>: &(),
                            },
                            gtk::Button {
                                set_label: &gettext("Try the Demo"),
                                set_tooltip_text: Some(&gettext(
                                    "A tiny machine that draws a test card and shows the keys you type",
                                )),
                                add_css_class: "pill",
                                connect_clicked => AppWindowInput::AddDemo(true),
                            },
                            gtk::Button {
                                set_label: &gettext("Refresh"),
                                add_css_class: "pill",
                                ActionablePlus::set_stateless_action::<RefreshAction>: &(),
                            },
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

    fn init(
        launch: Launch,
        root: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        let machines = FactoryVecDeque::builder()
            .launch(gtk::ListBox::default())
            .forward(sender.input_sender(), |output| match output {
                MachineRowOutput::Act(id, action) => AppWindowInput::Act(id, action),
                MachineRowOutput::Open(id) => AppWindowInput::Open(id),
                MachineRowOutput::Settings(id) => AppWindowInput::Settings(id),
                MachineRowOutput::Snapshots(id) => AppWindowInput::Snapshots(id),
            });
        let mut model = AppWindow {
            page: Page::Loading,
            loading: false,
            machines,
            settings: window_state::settings(),
            watched: HashSet::new(),
            forced: HashSet::new(),
            vm_windows: HashMap::new(),
            open_when_started: HashSet::new(),
            open_after_load: launch.open.clone(),
            settings_panes: HashMap::new(),
            assistant: None,
            window: root.clone(),
        };
        let machine_list = model.machines.widget();
        let widgets = view_output!();

        install_search(machine_list, &widgets.search_entry);
        a11y::set_label(&widgets.new_button, &gettext("New Virtual Machine"));
        a11y::set_label(&widgets.search_entry, &gettext("Search virtual machines"));
        a11y::set_label(&widgets.refresh_button, &gettext("Refresh"));
        a11y::set_label(&widgets.spinner, &gettext("Loading virtual machines…"));
        a11y::set_label(machine_list, &gettext("Virtual machines"));
        if let Some(settings) = &model.settings {
            window_state::restore(&root, settings);
        }
        install_actions(&root, &sender);
        // "Saved 5 minutes ago" grows older.
        let ticks = sender.input_sender().clone();
        glib::timeout_add_seconds_local(60, move || {
            ticks.emit(AppWindowInput::Tick);
            glib::ControlFlow::Continue
        });
        if launch.demo {
            sender.input(AppWindowInput::AddDemo(true));
        } else if let Some((load, states)) = take_finished_prefetch() {
            // Read already: straight to the list, without a trip through the pool.
            model.loading = true;
            sender
                .command_sender()
                .emit(AppWindowCommand::Loaded(load, states));
        } else {
            sender.input(AppWindowInput::Refresh);
        }

        ComponentParts { model, widgets }
    }

    fn update_with_view(
        &mut self,
        widgets: &mut Self::Widgets,
        message: Self::Input,
        sender: ComponentSender<Self>,
        root: &Self::Root,
    ) {
        if let AppWindowInput::Search = message {
            widgets.search_entry.grab_focus();
        } else {
            self.update(message, sender.clone(), root);
        }
        self.update_view(widgets, sender);
    }

    fn update(&mut self, message: Self::Input, sender: ComponentSender<Self>, _root: &Self::Root) {
        match message {
            AppWindowInput::Refresh if self.loading => {}
            AppWindowInput::Refresh => {
                self.loading = true;
                // The first load was started in `main`, beside GTK's own start-up.
                let prefetched = PREFETCH
                    .lock()
                    .ok()
                    .and_then(|mut prefetch| prefetch.take());
                sender.spawn_oneshot_command(move || {
                    let (load, states) = prefetched
                        .and_then(|thread| thread.join().ok())
                        .unwrap_or_else(load_snapshot);
                    AppWindowCommand::Loaded(load, states)
                });
            }
            AppWindowInput::Act(id, VmAction::DiscardSaved) => {
                self.confirm_discard(id, &sender);
            }
            AppWindowInput::Act(id, action) => self.act(id, action, &sender),
            AppWindowInput::Confirmed(id, action, true) => self.act(id, action, &sender),
            AppWindowInput::Confirmed(id, _, false) => {
                // The row waits for an answer: tell it nothing changed.
                let state = self
                    .machines
                    .iter()
                    .find(|row| row.id() == id)
                    .map(MachineRow::state);
                if let Some(state) = state {
                    self.set_state(&id, state);
                }
            }
            AppWindowInput::Open(id) => self.open_vm(id, &sender),
            AppWindowInput::VmWindowClosed(id) => {
                self.vm_windows.remove(&id);
            }
            AppWindowInput::AddDemo(open) => {
                sender.spawn_oneshot_command(move || {
                    let result = library_model::open_library()
                        .map_err(|err| vm_control::error_chain(&err))
                        .and_then(|library| demo::ensure(&library));
                    AppWindowCommand::DemoReady(result, open)
                });
            }
            AppWindowInput::Settings(id) => self.open_settings(id, false, &sender),
            AppWindowInput::Snapshots(id) => self.open_settings(id, true, &sender),
            AppWindowInput::SettingsClosed(id, changed) => {
                self.settings_panes.remove(&id);
                if changed {
                    sender.input(AppWindowInput::Refresh);
                }
            }
            AppWindowInput::NewVm => self.open_assistant(&sender),
            AppWindowInput::AssistantDone(created) => {
                self.assistant = None;
                if created.is_some() {
                    sender.input(AppWindowInput::Refresh);
                }
            }
            AppWindowInput::Search => {}
            AppWindowInput::Tick => {
                for index in 0..self.machines.len() {
                    self.machines.send(index, MachineRowInput::Tick);
                }
            }
        }
    }

    fn update_cmd(
        &mut self,
        message: Self::CommandOutput,
        sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match message {
            AppWindowCommand::Loaded(result, states) => {
                self.loading = false;
                // The flag goes on at the first load either way: a library that is not
                // empty on the first run needs no demo.
                let first_run = result.is_ok() && self.first_run();
                let first_run_empty =
                    first_run && matches!(&result, Ok(entries) if entries.is_empty());
                self.show(result, states, &sender);
                if bench::startup_probe() {
                    bench::report_startup_after_paint(&self.window);
                }
                if first_run_empty {
                    sender.input(AppWindowInput::AddDemo(false));
                }
                if let Some(wanted) = self.open_after_load.take() {
                    let id = self
                        .machines
                        .iter()
                        .find(|row| row.id() == wanted || row.entry().name == wanted)
                        .map(|row| row.id().to_owned());
                    match id {
                        Some(id) => self.open_vm(id, &sender),
                        None => log::warn!("no VM called {wanted:?} to open"),
                    }
                }
            }
            AppWindowCommand::DemoReady(Ok(id), open) => {
                if open {
                    self.open_after_load = Some(id);
                }
                self.loading = false;
                sender.input(AppWindowInput::Refresh);
            }
            AppWindowCommand::DemoReady(Err(message), _) => {
                log::warn!("cannot add the Demo VM: {message}");
                self.show_error(&gettext("Cannot add the Demo machine"), &message);
                sender.input(AppWindowInput::Refresh);
            }
            AppWindowCommand::Acted {
                id,
                action,
                result,
                state,
            } => {
                if action == VmAction::SaveAndQuit {
                    self.send_row(&id, MachineRowInput::SetSaving(None));
                }
                self.set_state(&id, state);
                let open = self.open_when_started.remove(&id);
                match result {
                    Ok(()) if state.is_live() => {
                        self.watch(&id, &sender);
                        if open {
                            self.open_window(id, &sender);
                        }
                    }
                    Ok(()) => {}
                    Err(message) => {
                        log::warn!("{action:?} failed: {message}");
                        self.show_error(&gettext("The action failed"), &message);
                    }
                }
            }
            AppWindowCommand::SaveProgress(id, percent) => {
                self.send_row(&id, MachineRowInput::SetSaving(Some(percent)));
            }
            AppWindowCommand::Watch(id, WatchEvent::State(state)) => self.set_state(&id, state),
            AppWindowCommand::Watch(_, WatchEvent::Thumbnail(_)) => {}
            AppWindowCommand::Thumbnail(id, texture) => {
                if let Some(index) = self.machines.iter().position(|row| row.id() == id) {
                    self.machines
                        .send(index, MachineRowInput::SetThumbnail(texture));
                }
            }
            AppWindowCommand::Watch(id, WatchEvent::Exited { clean, log }) => {
                self.watched.remove(&id);
                self.set_state(&id, VmState::Stopped);
                if let Some(window) = self.vm_windows.remove(&id) {
                    window.widget().destroy();
                }
                let forced = self.forced.remove(&id);
                if !clean && !forced {
                    self.report_crash(&id, &log);
                }
            }
        }
    }
}

impl AppWindow {
    /// Replaces the rows with a fresh load, watches the live VMs and picks the page to show.
    fn show(&mut self, result: LibraryLoad, states: Vec<VmState>, sender: &ComponentSender<Self>) {
        let mut live = Vec::new();
        let mut rows = self.machines.guard();
        rows.clear();
        self.page = match result {
            Ok(entries) if entries.is_empty() => Page::Empty,
            Ok(entries) => {
                let states = states
                    .into_iter()
                    .chain(std::iter::repeat(VmState::Stopped));
                for (entry, state) in entries.into_iter().zip(states) {
                    if state.is_live() {
                        live.push(entry.id.clone());
                    }
                    rows.push_back(MachineRowInit { entry, state });
                }
                Page::List
            }
            Err(err) => {
                log::warn!("cannot read the library: {err}");
                Page::Failed(err)
            }
        };
        drop(rows);
        for id in live {
            self.watch(&id, sender);
        }
    }

    /// Runs `action` on the VM `id` on the background pool.
    fn act(&mut self, id: String, action: VmAction, sender: &ComponentSender<Self>) {
        let Some(row) = self.machines.iter().find(|row| row.id() == id) else {
            return;
        };
        let vm = vm_ref(row.entry());
        if action == VmAction::ForceOff {
            self.forced.insert(id.clone());
        }
        if action == VmAction::SaveAndQuit {
            // On the pool, never here: a save writes all of guest RAM.
            self.send_row(&id, MachineRowInput::SetSaving(Some(0)));
            let progress = sender.command_sender().clone();
            sender.spawn_oneshot_command(move || {
                let mut last = None;
                let result = vm_control::save_and_quit(&vm, |percent| {
                    if last != Some(percent) {
                        last = Some(percent);
                        let _ = progress.send(AppWindowCommand::SaveProgress(id.clone(), percent));
                    }
                });
                let state = vm_control::probe(&vm.id);
                AppWindowCommand::Acted {
                    id,
                    action,
                    result,
                    state,
                }
            });
            return;
        }
        sender.spawn_oneshot_command(move || {
            let result = vm_control::perform(&vm, action);
            let state = vm_control::probe(&vm.id);
            AppWindowCommand::Acted {
                id,
                action,
                result,
                state,
            }
        });
    }

    /// Opens (or raises) the window of VM `id`; a stopped VM is started first and its
    /// window opens once it runs.
    fn open_vm(&mut self, id: String, sender: &ComponentSender<Self>) {
        let Some(index) = self.machines.iter().position(|row| row.id() == id) else {
            return;
        };
        if self.machines[index].state() == VmState::Stopped && !self.vm_windows.contains_key(&id) {
            self.open_when_started.insert(id);
            self.machines
                .send(index, MachineRowInput::Act(VmAction::Start));
            return;
        }
        self.open_window(id, sender);
    }

    /// Opens (or raises) the window of the running VM `id`.
    fn open_window(&mut self, id: String, sender: &ComponentSender<Self>) {
        if let Some(window) = self.vm_windows.get(&id) {
            window.widget().present();
            return;
        }
        let Some(row) = self.machines.iter().find(|row| row.id() == id) else {
            return;
        };
        let entry = row.entry();
        let runtime = hospes_core::runtime::base_dir().map(|base| base.join(&id));
        let runtime = match runtime {
            Ok(dir) => dir,
            Err(err) => {
                self.show_error(
                    &gettext("The action failed"),
                    &vm_control::error_chain(&err),
                );
                return;
            }
        };
        let init = VmWindowInit {
            vm: vm_ref(entry),
            vnc_socket: entry.display.then(|| runtime.join("vnc.sock")),
            serial_socket: entry.kernel_boot.then(|| runtime.join("serial.sock")),
            follow_window: entry.follow_window,
        };
        let window = VmWindow::builder()
            .launch(init)
            .forward(sender.input_sender(), |output| match output {
                VmWindowOutput::Act(id, action) => AppWindowInput::Act(id, action),
                VmWindowOutput::Closed(id) => AppWindowInput::VmWindowClosed(id),
            });
        window.widget().present();
        self.vm_windows.insert(id, window);
    }

    /// Starts a watcher thread for VM `id` unless one runs.
    fn watch(&mut self, id: &str, sender: &ComponentSender<Self>) {
        if !self.watched.insert(id.to_owned()) {
            return;
        }
        let out = sender.command_sender().clone();
        let watched_id = id.to_owned();
        let thumbnails = self
            .machines
            .iter()
            .find(|row| row.id() == id)
            .is_some_and(|row| row.entry().display);
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{id}"))
            .spawn(move || {
                vm_control::watch(&watched_id, thumbnails, |event| {
                    let message = match event {
                        // Decoded here, off the main loop.
                        WatchEvent::Thumbnail(path) => {
                            match gtk::gdk::Texture::from_filename(&path) {
                                Ok(texture) => {
                                    AppWindowCommand::Thumbnail(watched_id.clone(), texture)
                                }
                                Err(err) => {
                                    log::debug!("cannot read {}: {err}", path.display());
                                    return true;
                                }
                            }
                        }
                        event => AppWindowCommand::Watch(watched_id.clone(), event),
                    };
                    out.send(message).is_ok()
                });
            });
        if let Err(err) = spawned {
            log::warn!("cannot start a thread to watch VM {id}: {err}");
            self.watched.remove(id);
        }
    }

    /// Asks before deleting VM `id`'s saved state, which loses what the guest had not
    /// written to its disks.
    fn confirm_discard(&self, id: String, sender: &ComponentSender<Self>) {
        let name = self
            .machines
            .iter()
            .find(|row| row.id() == id)
            .map_or_else(|| id.clone(), |row| row.entry().name.clone());
        let heading = gettext_f(
            // Translators: the heading of the question before a saved state is deleted;
            // {name} is the virtual machine.
            "Discard the saved state of “{name}”?",
            &[("name", &name)],
        );
        let body = gettext(
            "The machine will start afresh next time, as if its power had been cut: programs that were open and work not saved inside it are lost.",
        );
        let dialog = adw::MessageDialog::new(Some(&self.window), Some(&heading), Some(&body));
        dialog.add_response("cancel", &gettext("Cancel"));
        dialog.add_response("discard", &gettext("Discard"));
        dialog.set_response_appearance("discard", adw::ResponseAppearance::Destructive);
        dialog.set_default_response(Some("cancel"));
        dialog.set_close_response("cancel");
        let input = sender.input_sender().clone();
        dialog.connect_response(None, move |_, response| {
            input.emit(AppWindowInput::Confirmed(
                id.clone(),
                VmAction::DiscardSaved,
                response == "discard",
            ));
        });
        dialog.present();
    }

    /// Sends `message` to the row of VM `id`.
    fn send_row(&self, id: &str, message: MachineRowInput) {
        if let Some(index) = self.machines.iter().position(|row| row.id() == id) {
            self.machines.send(index, message);
        }
    }

    /// Tells the row of VM `id` its new state.
    fn set_state(&mut self, id: &str, state: VmState) {
        if let Some(index) = self.machines.iter().position(|row| row.id() == id) {
            self.machines.send(index, MachineRowInput::SetState(state));
        }
    }

    /// Whether this is the first time the app lists a library (the Demo VM is then added
    /// to an empty one); remembers that it no longer is.
    fn first_run(&self) -> bool {
        let Some(settings) = &self.settings else {
            return false;
        };
        if settings.boolean("demo-offered") {
            return false;
        }
        if let Err(err) = settings.set_boolean("demo-offered", true) {
            log::warn!("cannot remember that the Demo VM was offered: {err}");
        }
        true
    }

    /// Says that VM `id` stopped unexpectedly, with the end of its helper's log.
    fn report_crash(&self, id: &str, log: &str) {
        let name = self
            .machines
            .iter()
            .find(|row| row.id() == id)
            .map_or_else(|| id.to_owned(), |row| row.entry().name.clone());
        let heading = gettext_f(
            // Translators: the heading of a message shown when a virtual machine's process
            // ended on its own; {name} is the machine.
            "“{name}” stopped unexpectedly",
            &[("name", &name)],
        );
        let body = if log.trim().is_empty() {
            gettext("Its process ended without writing a reason to its log.")
        } else {
            gettext_f(
                // Translators: {log} is the end of the virtual machine process's log.
                "The last lines of its log:\n{log}",
                &[("log", log.trim_end())],
            )
        };
        self.show_error(&heading, &body);
    }

    /// A message dialog over the window; the app stays usable behind it.
    fn show_error(&self, heading: &str, body: &str) {
        let dialog = adw::MessageDialog::new(Some(&self.window), Some(heading), Some(body));
        dialog.add_response("close", &gettext("Close"));
        dialog.set_default_response(Some("close"));
        dialog.set_close_response("close");
        dialog.present();
    }

    /// Opens (or raises) the settings pane of VM `id`.
    fn open_settings(&mut self, id: String, snapshots: bool, sender: &ComponentSender<Self>) {
        if let Some(pane) = self.settings_panes.get(&id) {
            pane.widget().present();
            return;
        }
        let Some(row) = self.machines.iter().find(|row| row.id() == id) else {
            return;
        };
        let init = SettingsInit {
            vm: vm_ref(row.entry()),
            running: row.state().is_live(),
            snapshots,
        };
        let pane = SettingsWindow::builder()
            .transient_for(&self.window)
            .launch(init)
            .forward(sender.input_sender(), |output| match output {
                SettingsOutput::Closed(id, changed) => AppWindowInput::SettingsClosed(id, changed),
            });
        pane.widget().present();
        self.settings_panes.insert(id, pane);
    }

    /// Opens the new-VM assistant over the window, or raises it.
    fn open_assistant(&mut self, sender: &ComponentSender<Self>) {
        if let Some(assistant) = &self.assistant {
            assistant.widget().present();
            return;
        }
        let assistant = Assistant::builder()
            .transient_for(&self.window)
            .launch(())
            .forward(sender.input_sender(), |output| match output {
                AssistantOutput::Closed(created) => AppWindowInput::AssistantDone(created),
            });
        assistant.widget().present();
        self.assistant = Some(assistant);
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
    let input = sender.clone();
    let refresh: RelmAction<RefreshAction> =
        RelmAction::new_stateless(move |_| input.input(AppWindowInput::Refresh));
    let input = sender.clone();
    let new_vm: RelmAction<NewVmAction> =
        RelmAction::new_stateless(move |_| input.input(AppWindowInput::NewVm));
    let input = sender.clone();
    let search: RelmAction<SearchAction> =
        RelmAction::new_stateless(move |_| input.input(AppWindowInput::Search));
    let mut group = RelmActionGroup::<WindowActionGroup>::new();
    group.add_action(refresh);
    group.add_action(new_vm);
    group.add_action(search);
    group.register_for_widget(window);
    let app = relm4::main_application();
    app.set_accelerators_for_action::<RefreshAction>(&["F5", "<primary>r"]);
    app.set_accelerators_for_action::<NewVmAction>(&["<primary>n"]);
    app.set_accelerators_for_action::<SearchAction>(&["<primary>f"]);
    app.set_accels_for_action("window.close", &["<primary>w"]);
}

/// Shows only the rows whose name or summary contains the search text (case-insensitive),
/// and says so when none does.
fn install_search(list: &gtk::ListBox, entry: &gtk::SearchEntry) {
    let query = entry.clone();
    list.set_filter_func(move |row| {
        let text = query.text().to_lowercase();
        if text.is_empty() {
            return true;
        }
        row.downcast_ref::<adw::ActionRow>().is_none_or(|row| {
            row.title().to_lowercase().contains(&text)
                || row
                    .subtitle()
                    .is_some_and(|s| s.to_lowercase().contains(&text))
        })
    });
    let placeholder = gtk::Label::new(Some(&gettext("No virtual machine matches the search")));
    placeholder.add_css_class("dim-label");
    placeholder.set_margin_top(18);
    placeholder.set_margin_bottom(18);
    list.set_placeholder(Some(&placeholder));
    let filtered = list.clone();
    entry.connect_search_changed(move |_| filtered.invalidate_filter());
}

/// The library load `main` starts before GTK, taken by the first refresh.
static PREFETCH: std::sync::Mutex<Option<std::thread::JoinHandle<Snapshot>>> =
    std::sync::Mutex::new(None);

/// The library and each entry's state.
type Snapshot = (LibraryLoad, Vec<VmState>);

/// Starts reading the library on a thread of its own, so the first refresh finds it done
/// (or nearly) instead of starting once the window is up; and decodes one of our SVG icons
/// on another, which loads the SVG image loader (librsvg) while GTK starts: on a cold
/// start that load is a good part of the time to the first frame with rows. Call after
/// `i18n::init` and after the resources are registered.
pub fn prefetch_library() {
    let warmed = std::thread::Builder::new().name("icons".into()).spawn(|| {
        let icon = "/io/github/hospes/Hospes/icons/scalable/actions/hospes-os-linux-symbolic.svg";
        if let Err(err) = gtk::gdk_pixbuf::Pixbuf::from_resource(icon) {
            log::debug!("cannot decode {icon}: {err}");
        }
    });
    if let Err(err) = warmed {
        log::debug!("cannot start the icon loader early: {err}");
    }
    match std::thread::Builder::new()
        .name("library".into())
        .spawn(load_snapshot)
    {
        Ok(thread) => {
            if let Ok(mut prefetch) = PREFETCH.lock() {
                *prefetch = Some(thread);
            }
        }
        Err(err) => log::warn!("cannot start reading the library early: {err}"),
    }
}

/// The prefetched library if its thread has finished (joining it does not wait then).
fn take_finished_prefetch() -> Option<Snapshot> {
    let mut prefetch = PREFETCH.lock().ok()?;
    if !prefetch.as_ref()?.is_finished() {
        return None;
    }
    prefetch.take()?.join().ok()
}

/// Reads the library and probes each VM's state. Blocking.
fn load_snapshot() -> Snapshot {
    let load = library_model::load_default();
    let states = match &load {
        Ok(entries) => entries
            .iter()
            .map(|entry| match entry.error {
                None => vm_control::probe(&entry.id),
                Some(_) => VmState::Stopped,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    (load, states)
}

/// What `vm_control` needs to know of a library entry.
fn vm_ref(entry: &library_model::LibraryEntry) -> VmRef {
    VmRef {
        id: entry.id.clone(),
        name: entry.name.clone(),
        config: entry.config_path.clone(),
        display: entry.display,
    }
}
