//! `hospesctl`: the Hospes command line.

fn main() {
    eprintln!("hospesctl: not built yet");
    std::process::exit(1);
}
