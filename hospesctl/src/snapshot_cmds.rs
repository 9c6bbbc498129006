//! `hospesctl snapshot NAME create|list|revert|delete [SNAP]`: named snapshots of a stopped
//! VM's disks (external qcow2 overlays, `hospes_core::snapshots`; docs/snapshots.md).

use clap::Subcommand;
use serde_json::json;

use super::{CtlError, Output};
use hospes_core::library::Library;
use hospes_core::snapshots::{self, Snapshot};

/// The snapshot commands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Named snapshots of a stopped VM's disks: create, list, revert, delete.
    Snapshot {
        /// The VM's name or id.
        name: String,
        /// What to do.
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

/// What to do with a VM's snapshots.
#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// Take a snapshot of the disks (the VM must be stopped).
    Create {
        /// The snapshot's name (letters, digits, `-`, `_`, `.`).
        snapshot: String,
        /// Convert raw disks to qcow2 first (a copy next to them; vm.ron then names it).
        #[arg(long)]
        convert: bool,
    },
    /// List the snapshots, oldest first (and which carry a saved VM's state).
    List,
    /// Put the disks back as they were at a snapshot; later snapshots are dropped.
    Revert {
        /// The snapshot's name.
        snapshot: String,
    },
    /// Delete a snapshot, merging what changed since into its image (no data is lost).
    Delete {
        /// The snapshot's name.
        snapshot: String,
    },
}

fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    json!({
        "name": s.name,
        "created": s.created,
        "saved_state": s.saved_state,
        "disks": s.disks.iter().map(|d| json!({
            "frozen": d.frozen,
            "overlay": d.overlay,
        })).collect::<Vec<_>>(),
    })
}

/// Runs a snapshot command.
pub fn run(command: SnapshotCommand, out: &Output) -> Result<(), CtlError> {
    let SnapshotCommand::Snapshot { name, action } = command;
    let library = Library::open_default()?;
    let machine = library.find(&name)?;
    let dir = &machine.dir;
    let vm = machine.name().to_owned();
    let json = out.is_json();
    let mut last_pct = u64::MAX;
    let mut progress = |what: &str, done: u64, total: u64| {
        if json {
            return;
        }
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if pct != last_pct && (pct.is_multiple_of(10) || done == total) {
            last_pct = pct;
            eprintln!("{what}: {pct}%");
        }
    };
    match action {
        SnapshotAction::Create { snapshot, convert } => {
            let s = snapshots::create(dir, &snapshot, convert, &mut progress)?;
            out.emit(
                &format!("{vm}: snapshot {} taken", s.name),
                &json!({ "vm": vm, "snapshot": snapshot_json(&s) }),
            )
        }
        SnapshotAction::List => {
            let list = snapshots::list(dir)?;
            let text = if list.is_empty() {
                format!("{vm} has no snapshots")
            } else {
                list.iter()
                    .map(|s| {
                        let disks: Vec<String> = s
                            .disks
                            .iter()
                            .map(|d| d.frozen.display().to_string())
                            .collect();
                        let state = if s.has_saved_state() {
                            "saved state"
                        } else {
                            "disks only"
                        };
                        format!("{}\t{}\t{}\t{}", s.name, s.created, disks.join(","), state)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            out.emit(
                &text,
                &json!({ "vm": vm, "snapshots": list.iter().map(snapshot_json).collect::<Vec<_>>() }),
            )
        }
        SnapshotAction::Revert { snapshot } => {
            let dropped = snapshots::revert(dir, &snapshot)?;
            let mut text = format!("{vm}: disks reverted to snapshot {snapshot}");
            if !dropped.is_empty() {
                text.push_str(&format!(
                    " (later snapshots dropped: {})",
                    dropped.join(", ")
                ));
            }
            out.emit(
                &text,
                &json!({ "vm": vm, "snapshot": snapshot, "dropped": dropped }),
            )
        }
        SnapshotAction::Delete { snapshot } => {
            snapshots::delete(dir, &snapshot, &mut progress)?;
            out.emit(
                &format!("{vm}: snapshot {snapshot} deleted"),
                &json!({ "vm": vm, "deleted": snapshot }),
            )
        }
    }
}
