//! `hospes-vmm`: runs one virtual machine in this process.

fn main() {
    eprintln!("hospes-vmm: not built yet");
    std::process::exit(1);
}
