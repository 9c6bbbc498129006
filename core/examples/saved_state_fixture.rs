//! Writes a real saved-state file into a VM folder, as Save and Quit leaves one, for the
//! GUI test (scripts/gui-test.sh): `saved_state_fixture VM_DIR [SECONDS_AGO]`.
//!
//! The file goes through `saved_state::write`, so the app reads it as the helper's own;
//! it holds one page of RAM and no device sections, which only a resume would notice.

use std::path::PathBuf;

use hospes_core::saved_state::{self, Meta, RamRun};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: saved_state_fixture VM_DIR [SECONDS_AGO]");
        std::process::exit(2);
    };
    let ago: u64 = args
        .next()
        .and_then(|a| a.to_str()?.parse().ok())
        .unwrap_or(0);
    let mut meta = Meta::now(64 << 20, 1, String::new());
    meta.saved_at = meta.saved_at.saturating_sub(ago);
    let page = [0x5au8; 4096];
    let ram = [RamRun {
        gpa: 0x10_0000,
        data: &page,
    }];
    let path = saved_state::path_in(&dir);
    if let Err(err) = saved_state::write(&path, &meta, &[], &ram, |_, _| {}) {
        eprintln!("saved_state_fixture: {}", hospes_core::error_chain(&err));
        std::process::exit(1);
    }
    println!("{}", path.display());
}
