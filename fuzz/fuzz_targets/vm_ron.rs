//! `vm.ron` parsing and the load-time checks on arbitrary text: `config::parse` (RON, the
//! schema checks) and `config::validate` (files resolved against a VM folder, host limits).
//! Neither may panic; every error about the text must carry a position inside it (line
//! and column from 1). Settings that parse must survive `to_text` and parse back equal.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hospes_core::config::{self, ConfigError, HostLimits, Size};
use libfuzzer_sys::fuzz_target;

/// A VM folder holding `disk.img`, so relative disk paths can be found or missing.
fn vm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hospes-fuzz-vm-ron-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("disk.img"), b"").unwrap();
        dir
    })
}

fn check_position(e: &ConfigError, text: &str) {
    let Some((line, column)) = e.position() else {
        panic!("an error about the text has no position: {e}");
    };
    let lines = text.split('\n').count();
    assert!(line >= 1 && column >= 1, "position {line}:{column}: {e}");
    assert!(
        line <= lines,
        "line {line} past the text's {lines} lines: {e}"
    );
    let longest = text
        .split('\n')
        .nth(line - 1)
        .map_or(0, |l| l.chars().count());
    assert!(
        column <= longest + 1,
        "column {column} past line {line}: {e}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("vm.ron");
    let host = HostLimits {
        cpus: Some(4),
        memory: Some(Size::gib(8)),
    };
    match config::validate(text, origin, vm_dir(), &host) {
        Ok(_) => {}
        Err(e) => check_position(&e, text),
    }
    match config::parse(text, origin) {
        Ok(cfg) => {
            let again = config::to_text(&cfg).expect("parsed settings serialize");
            let back = config::parse(&again, origin)
                .unwrap_or_else(|e| panic!("written settings do not parse: {e}\n{again}"));
            assert_eq!(back, cfg, "settings change through to_text");
        }
        Err(e) => check_position(&e, text),
    }
});
