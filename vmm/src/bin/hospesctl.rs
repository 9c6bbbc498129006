//! `hospesctl`: the Hospes command line. Everything lives in `hospes_vmm::ctl`.

fn main() -> std::process::ExitCode {
    hospes_vmm::ctl::main()
}
