//! The Snapshots page of a VM's settings window: its named snapshots (name, date, disks,
//! whether it kept a saved machine's state), a name entry to take one, and per snapshot
//! Revert and Delete, each asked first.
//!
//! All the work is `hospes_core::snapshots` on the background pool; it refuses a running
//! VM with its reason, which the page shows as it shows every refusal, under the entry.
//! Raw disks are copied to qcow2 images first (the VM uses those from then on), since
//! snapshots are qcow2 overlays; the page says so.

use adw::prelude::*;
use gettextrs::gettext;
use gtk::glib;
use hospes_core::snapshots::{self, Snapshot};
use relm4::{Component, ComponentParts, ComponentSender};

use crate::a11y;
use crate::i18n::{gettext_f, ngettext_f};
use crate::vm_control::{self, VmRef};

/// What the page opens with.
#[derive(Debug, Clone)]
pub struct SnapshotsInit {
    /// The VM.
    pub vm: VmRef,
    /// The VM runs now (snapshots wait until it is stopped).
    pub running: bool,
}

/// The Snapshots page.
pub struct SnapshotsPage {
    init: SnapshotsInit,
    page: adw::PreferencesPage,
    /// The snapshots listed, oldest first.
    snapshots: Vec<Snapshot>,
    /// Their rows in the list group.
    rows: Vec<adw::ActionRow>,
    /// Why the last operation or listing failed.
    error: Option<String>,
    /// What runs now, as a sentence (with progress), if anything.
    busy: Option<String>,
}

/// An operation that loses something and is asked first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risky {
    /// Put the disks back to the snapshot.
    Revert,
    /// Delete the snapshot (merging it away).
    Delete,
}

/// What the page is told.
#[derive(Debug)]
pub enum SnapshotsInput {
    /// Take a snapshot named as the entry says.
    Create,
    /// Ask before reverting to or deleting this snapshot.
    Ask(Risky, String),
    /// The person answered: go ahead when `true`.
    Answered(Risky, String, bool),
}

/// What the page tells its window.
#[derive(Debug)]
pub enum SnapshotsOutput {
    /// The VM's disks or saved state changed (the library shows them anew).
    Changed,
}

/// Results of background work.
#[derive(Debug)]
pub enum SnapshotsCommand {
    /// The list, or why it cannot be read.
    Listed(Result<Vec<Snapshot>, String>),
    /// A long step is this far: (what, percent).
    Progress(String, u32),
    /// An operation ended: the list afterwards, or why it failed.
    Done(Result<Vec<Snapshot>, String>),
}

#[relm4::component(pub)]
impl Component for SnapshotsPage {
    type Init = SnapshotsInit;
    type Input = SnapshotsInput;
    type Output = SnapshotsOutput;
    type CommandOutput = SnapshotsCommand;

    view! {
        #[root]
        adw::PreferencesPage {
            set_vexpand: true,

            adw::PreferencesGroup {
                set_title: &gettext("New Snapshot"),
                set_description: Some(&gettext(
                    "A snapshot keeps the disks as they are now, and the machine’s saved state when it was saved. Snapshots are taken of stopped machines; raw disks are first copied to qcow2 images, which the machine uses from then on.",
                )),

                #[name = "name_row"]
                adw::EntryRow {
                    set_title: &gettext("Snapshot Name"),
                    #[watch]
                    set_sensitive: model.busy.is_none(),
                    connect_entry_activated => SnapshotsInput::Create,

                    #[name = "create_button"]
                    add_suffix = &gtk::Button {
                        set_label: &gettext("Create"),
                        set_valign: gtk::Align::Center,
                        add_css_class: "suggested-action",
                        #[watch]
                        set_sensitive: model.busy.is_none(),
                        connect_clicked => SnapshotsInput::Create,
                    },
                },

                gtk::Label {
                    set_xalign: 0.0,
                    set_wrap: true,
                    set_margin_top: 6,
                    add_css_class: "warning",
                    set_visible: model.init.running,
                    set_label: &gettext(
                        "The machine is running: shut it down or save it to take, revert or delete snapshots.",
                    ),
                },

                gtk::Label {
                    set_xalign: 0.0,
                    set_wrap: true,
                    set_margin_top: 6,
                    #[watch]
                    set_visible: model.busy.is_some(),
                    #[watch]
                    set_label: model.busy.as_deref().unwrap_or_default(),
                },

                #[name = "error_label"]
                gtk::Label {
                    set_xalign: 0.0,
                    set_wrap: true,
                    set_margin_top: 6,
                    add_css_class: "error",
                    #[watch]
                    set_visible: model.error.is_some(),
                    #[watch]
                    set_label: model.error.as_deref().unwrap_or_default(),
                },
            },

            #[name = "list_group"]
            adw::PreferencesGroup {
                set_title: &gettext("Snapshots"),

                #[name = "empty_row"]
                adw::ActionRow {
                    set_title: &gettext("No snapshots yet"),
                    #[watch]
                    set_visible: model.snapshots.is_empty(),
                },
            },
        }
    }

    fn init(
        init: Self::Init,
        root: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        let model = SnapshotsPage {
            init,
            page: root.clone(),
            snapshots: Vec::new(),
            rows: Vec::new(),
            error: None,
            busy: None,
        };
        let widgets = view_output!();
        a11y::set_label(&widgets.create_button, &gettext("Create Snapshot"));
        let dir = vm_control::vm_dir(&model.init.vm);
        sender.spawn_oneshot_command(move || {
            SnapshotsCommand::Listed(snapshots::list(&dir).map_err(|e| vm_control::error_chain(&e)))
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
            SnapshotsInput::Create => self.create(widgets, &sender),
            SnapshotsInput::Ask(risky, name) => self.ask(risky, name, &sender),
            SnapshotsInput::Answered(risky, name, true) => self.run_risky(risky, name, &sender),
            SnapshotsInput::Answered(_, _, false) => {}
        }
        self.update_view(widgets, sender);
    }

    fn update_cmd_with_view(
        &mut self,
        widgets: &mut Self::Widgets,
        message: Self::CommandOutput,
        sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match message {
            SnapshotsCommand::Listed(Ok(list)) => self.show(widgets, list, &sender),
            SnapshotsCommand::Listed(Err(error)) => self.error = Some(error),
            SnapshotsCommand::Progress(what, percent) => {
                self.busy = Some(gettext_f(
                    // Translators: a long snapshot step; {what} says which (converting or
                    // merging a disk image), {percent} is 0 to 100.
                    "{what}: {percent} %",
                    &[("what", &what), ("percent", &percent.to_string())],
                ));
            }
            SnapshotsCommand::Done(result) => {
                self.busy = None;
                match result {
                    Ok(list) => {
                        self.error = None;
                        let _ = sender.output(SnapshotsOutput::Changed);
                        widgets.name_row.set_text("");
                        self.show(widgets, list, &sender);
                    }
                    Err(error) => {
                        log::warn!("snapshot operation failed: {error}");
                        self.error = Some(error);
                    }
                }
            }
        }
        self.update_view(widgets, sender);
    }
}

impl SnapshotsPage {
    /// Replaces the rows with `list`.
    fn show(
        &mut self,
        widgets: &SnapshotsPageWidgets,
        list: Vec<Snapshot>,
        sender: &ComponentSender<Self>,
    ) {
        for row in self.rows.drain(..) {
            widgets.list_group.remove(&row);
        }
        // A disk is named by its first image, the one the oldest snapshot froze.
        let disks: Vec<String> = list
            .first()
            .map(|s| {
                s.disks
                    .iter()
                    .map(|d| {
                        d.frozen.file_name().map_or_else(
                            || d.frozen.display().to_string(),
                            |n| n.to_string_lossy().into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        for snap in &list {
            let row = snapshot_row(snap, &disks, sender);
            widgets.list_group.add(&row);
            self.rows.push(row);
        }
        self.snapshots = list;
    }

    fn create(&mut self, widgets: &SnapshotsPageWidgets, sender: &ComponentSender<Self>) {
        if self.busy.is_some() {
            return;
        }
        let name = widgets.name_row.text().trim().to_owned();
        self.busy = Some(gettext_f(
            // Translators: {name} is the snapshot being taken.
            "Taking snapshot “{name}”…",
            &[("name", &name)],
        ));
        let dir = vm_control::vm_dir(&self.init.vm);
        let progress = sender.command_sender().clone();
        sender.spawn_oneshot_command(move || {
            let mut last = u32::MAX;
            let mut report = |what: &str, done: u64, total: u64| {
                let percent = vm_control::percent(done, total);
                if percent != last {
                    last = percent;
                    let _ = progress.send(SnapshotsCommand::Progress(what.to_owned(), percent));
                }
            };
            let result = snapshots::create(&dir, &name, true, &mut report)
                .and_then(|_| snapshots::list(&dir));
            SnapshotsCommand::Done(result.map_err(|e| vm_control::error_chain(&e)))
        });
    }

    /// Asks before a revert or a delete.
    fn ask(&self, risky: Risky, name: String, sender: &ComponentSender<Self>) {
        let (heading, body, yes) = match risky {
            Risky::Revert => {
                let later = self
                    .snapshots
                    .iter()
                    .skip_while(|s| s.name != name)
                    .skip(1)
                    .count();
                let mut body = gettext(
                    "The disks go back to how they were at the snapshot (and the machine’s saved state with them). What changed since is lost.",
                );
                if later > 0 {
                    body.push(' ');
                    body.push_str(&ngettext_f(
                        // Translators: {n} is a number of snapshots.
                        "The {n} snapshot taken after it is deleted too.",
                        "The {n} snapshots taken after it are deleted too.",
                        u32::try_from(later).unwrap_or(u32::MAX),
                        &[("n", &later.to_string())],
                    ));
                }
                (
                    gettext_f(
                        // Translators: {name} is a snapshot.
                        "Revert to “{name}”?",
                        &[("name", &name)],
                    ),
                    body,
                    gettext("Revert"),
                )
            }
            Risky::Delete => (
                gettext_f(
                    // Translators: {name} is a snapshot.
                    "Delete snapshot “{name}”?",
                    &[("name", &name)],
                ),
                gettext("The disks keep their contents; only this point to go back to is removed."),
                gettext("Delete"),
            ),
        };
        let parent = self.page.root().and_downcast::<gtk::Window>();
        let dialog = adw::MessageDialog::new(parent.as_ref(), Some(&heading), Some(&body));
        dialog.add_response("cancel", &gettext("Cancel"));
        dialog.add_response("go", &yes);
        dialog.set_response_appearance("go", adw::ResponseAppearance::Destructive);
        dialog.set_default_response(Some("cancel"));
        dialog.set_close_response("cancel");
        let input = sender.input_sender().clone();
        dialog.connect_response(None, move |_, response| {
            input.emit(SnapshotsInput::Answered(
                risky,
                name.clone(),
                response == "go",
            ));
        });
        dialog.present();
    }

    fn run_risky(&mut self, risky: Risky, name: String, sender: &ComponentSender<Self>) {
        if self.busy.is_some() {
            return;
        }
        self.busy = Some(match risky {
            Risky::Revert => gettext_f(
                // Translators: {name} is a snapshot.
                "Reverting to “{name}”…",
                &[("name", &name)],
            ),
            Risky::Delete => gettext_f(
                // Translators: {name} is a snapshot.
                "Deleting snapshot “{name}”…",
                &[("name", &name)],
            ),
        });
        let dir = vm_control::vm_dir(&self.init.vm);
        let progress = sender.command_sender().clone();
        sender.spawn_oneshot_command(move || {
            let mut last = u32::MAX;
            let mut report = |what: &str, done: u64, total: u64| {
                let percent = vm_control::percent(done, total);
                if percent != last {
                    last = percent;
                    let _ = progress.send(SnapshotsCommand::Progress(what.to_owned(), percent));
                }
            };
            let result = match risky {
                Risky::Revert => snapshots::revert(&dir, &name).map(drop),
                Risky::Delete => snapshots::delete(&dir, &name, &mut report),
            }
            .and_then(|()| snapshots::list(&dir));
            SnapshotsCommand::Done(result.map_err(|e| vm_control::error_chain(&e)))
        });
    }
}

/// A snapshot's row: name; date, disks and whether it kept a saved state; Revert, Delete.
fn snapshot_row(
    snap: &Snapshot,
    disks: &[String],
    sender: &ComponentSender<SnapshotsPage>,
) -> adw::ActionRow {
    let row = adw::ActionRow::new();
    row.set_use_markup(false);
    row.set_title(&snap.name);
    let when = i64::try_from(snap.created)
        .ok()
        .and_then(|t| glib::DateTime::from_unix_local(t).ok())
        .and_then(|t| t.format("%x %X").ok())
        .map_or_else(|| snap.created.to_string(), |t| t.to_string());
    let mut subtitle = format!("{when} · {}", disks.join(", "));
    if snap.has_saved_state() {
        subtitle.push_str(" · ");
        // Translators: in a snapshot's row: it kept the saved machine's state too.
        subtitle.push_str(&gettext("with saved state"));
    }
    row.set_subtitle(&subtitle);

    let revert = gtk::Button::with_label(&gettext("Revert"));
    let revert_label = gettext_f(
        // Translators: the accessible name of a snapshot's Revert button; {name} is
        // the snapshot.
        "Revert to {name}",
        &[("name", &snap.name)],
    );
    row.add_suffix(&risky_button(
        revert,
        &revert_label,
        Risky::Revert,
        &snap.name,
        sender,
    ));

    let delete = gtk::Button::from_icon_name("user-trash-symbolic");
    delete.add_css_class("flat");
    delete.set_tooltip_text(Some(&gettext("Delete")));
    let delete_label = gettext_f(
        // Translators: the accessible name of a snapshot's Delete button; {name} is
        // the snapshot.
        "Delete {name}",
        &[("name", &snap.name)],
    );
    row.add_suffix(&risky_button(
        delete,
        &delete_label,
        Risky::Delete,
        &snap.name,
        sender,
    ));
    row
}

/// Finishes a snapshot row's button: centred, named for assistive technology, and asking
/// before it runs `risky` on the snapshot `name`.
fn risky_button(
    button: gtk::Button,
    label: &str,
    risky: Risky,
    name: &str,
    sender: &ComponentSender<SnapshotsPage>,
) -> gtk::Button {
    button.set_valign(gtk::Align::Center);
    a11y::set_label(&button, label);
    let input = sender.input_sender().clone();
    let name = name.to_string();
    button.connect_clicked(move |_| input.emit(SnapshotsInput::Ask(risky, name.clone())));
    button
}
