//! Build script: compiles the top-level `resources/` for the app.
//!
//! - `resources/resources.gresource.xml` becomes `$OUT_DIR/hospes.gresource`, embedded in
//!   the binary by `gio::resources_register_include!`.
//! - `resources/io.github.hospes.Hospes.gschema.xml` is compiled into
//!   `$OUT_DIR/schemas/gschemas.compiled`, which the app uses only when the schema is not
//!   installed (running from the build tree).
//!
//! - `demo/demo.S` (the Demo VM's guest) is assembled and linked with the system C
//!   compiler (`$CC`, default `cc`) and `demo/demo.ld` into `$OUT_DIR/demo.elf`, which the
//!   app embeds with `include_bytes!` (a prebuilt binary is never committed).
//!
//! The GLib tools come from `libglib2.0-bin`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let resources = manifest_dir.join("../resources");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());

    println!("cargo::rerun-if-changed={}", resources.display());
    compile_resources(&resources, &out_dir);
    compile_schemas(&resources, &out_dir);
    let demo = manifest_dir.join("demo");
    println!("cargo::rerun-if-changed={}", demo.display());
    println!("cargo::rerun-if-env-changed=CC");
    build_demo_guest(&demo, &out_dir);
}

fn build_demo_guest(demo: &Path, out_dir: &Path) {
    let cc = env::var_os("CC").unwrap_or_else(|| "cc".into());
    let object = out_dir.join("demo.o");
    run(Command::new(&cc)
        .arg("-c")
        .arg(demo.join("demo.S"))
        .arg("-o")
        .arg(&object));
    let mut script = std::ffi::OsString::from("-Wl,-T,");
    script.push(demo.join("demo.ld"));
    run(Command::new(&cc)
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(script)
        .arg(&object)
        .arg("-o")
        .arg(out_dir.join("demo.elf")));
}

fn compile_resources(resources: &Path, out_dir: &Path) {
    let target = out_dir.join("hospes.gresource");
    run(Command::new("glib-compile-resources")
        .arg("--sourcedir")
        .arg(resources)
        .arg("--target")
        .arg(&target)
        .arg(resources.join("resources.gresource.xml")));
}

fn compile_schemas(resources: &Path, out_dir: &Path) {
    let schemas = out_dir.join("schemas");
    if let Err(err) = std::fs::create_dir_all(&schemas) {
        panic!("cannot create {}: {err}", schemas.display());
    }
    let schema = "io.github.hospes.Hospes.gschema.xml";
    if let Err(err) = std::fs::copy(resources.join(schema), schemas.join(schema)) {
        panic!("cannot copy {schema}: {err}");
    }
    run(Command::new("glib-compile-schemas")
        .arg("--strict")
        .arg(&schemas));
}

fn run(command: &mut Command) {
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("{command:?} failed: {status}"),
        Err(err) => panic!("cannot run {command:?} (install libglib2.0-bin and gcc): {err}"),
    }
}
