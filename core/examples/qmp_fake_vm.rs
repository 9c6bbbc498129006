//! A pretend `hospes-vmm` that serves QMP (and an echoing serial socket) for a fake VM,
//! for trying QMP tools and for developing `hospesctl` or the app without a guest:
//!
//! ```text
//! cargo run -p hospes-vmm --example qmp_fake_vm -- --qmp unix:/tmp/q.sock --serial unix:/tmp/s.sock
//! .venv/bin/qmp-shell /tmp/q.sock
//! ```
//!
//! It exits on `quit`, or when the power button is pressed unless `--ignore-powerdown`.

fn main() {
    if let Err(e) = hospes_core::control::fake::run_fake_helper(std::env::args_os().skip(1)) {
        eprintln!("qmp_fake_vm: {e}");
        std::process::exit(2);
    }
}
