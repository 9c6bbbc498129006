//! `hospesctl` run as a real process against a library in a temporary `XDG_DATA_HOME`:
//! every library command, text and JSON output, and exit codes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// A temporary home for one test's library.
struct Ctl {
    tmp: tempfile::TempDir,
}

/// What a run printed and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    fn error_json(&self) -> Value {
        serde_json::from_str(&self.stderr).unwrap_or_else(|e| panic!("{e}: {}", self.stderr))
    }
}

impl Ctl {
    fn new() -> Ctl {
        Ctl {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn machines(&self) -> PathBuf {
        self.path("data/hospes/machines")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hospesctl"));
        command
            .args(args)
            .env("XDG_DATA_HOME", self.path("data"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env_remove("VISUAL")
            .env_remove("EDITOR");
        command
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(self.command(args), "")
    }

    fn run_with(&self, mut command: Command, stdin: &str) -> Run {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().unwrap();
        Run {
            code: status.code().unwrap(),
            stdout: String::from_utf8(stdout).unwrap(),
            stderr: String::from_utf8(stderr).unwrap(),
        }
    }

    /// Runs and insists on success.
    fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(
            run.code, 0,
            "{args:?}\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        run
    }

    /// Creates a small Linux VM.
    fn create(&self, name: &str) -> Run {
        self.ok(&[
            "create",
            name,
            "--preset",
            "linux",
            "--memory",
            "256M",
            "--cpus",
            "1",
            "--disk-size",
            "2G",
        ])
    }

    /// Writes an editor script that runs `body` with the file to edit as `$1`.
    fn editor(&self, body: &str) -> PathBuf {
        let path = self.path("editor.sh");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn edit(&self, name: &str, editor: &Path, stdin: &str) -> Run {
        let mut command = self.command(&["edit", name]);
        command.env("EDITOR", editor);
        self.run_with(command, stdin)
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let ctl = Ctl::new();
    let run = ctl.ok(&["--help"]);
    for line in [
        "0  success",
        "1  invalid settings",
        "2  bad command line",
        "3  no such VM or file",
    ] {
        assert!(run.stdout.contains(line), "{line}: {}", run.stdout);
    }
    for command in [
        "list", "create", "show", "check", "edit", "rm", "import", "rename",
    ] {
        assert!(run.stdout.contains(&format!("  {command} ")), "{command}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let ctl = Ctl::new();
    assert_eq!(ctl.run(&["create"]).code, 2);
    assert_eq!(ctl.run(&["frobnicate"]).code, 2);
    let run = ctl.run(&["create", "x", "--memory", "4Q"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("bad size \"4Q\""), "{}", run.stderr);
    assert_eq!(ctl.run(&["create", "x", "--preset", "macos"]).code, 2);
}

#[test]
fn lists_an_empty_library() {
    let ctl = Ctl::new();
    let run = ctl.ok(&["list"]);
    assert!(run.stdout.starts_with("No VMs yet."), "{}", run.stdout);
    assert_eq!(ctl.ok(&["list", "--json"]).json(), Value::Array(vec![]));
}

#[test]
fn creates_and_lists_vms() {
    let ctl = Ctl::new();
    let run = ctl.create("Debian 12");
    assert!(
        run.stdout.starts_with("Created Debian 12 (id debian-12)"),
        "{}",
        run.stdout
    );
    let disk = ctl.machines().join("debian-12/disk.raw");
    let meta = fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), 2 << 30);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(meta.blocks() * 512 < 1 << 20);

    let created = ctl
        .ok(&[
            "--json",
            "create",
            "alpine",
            "--memory",
            "256M",
            "--cpus",
            "1",
            "--disk-size",
            "0",
        ])
        .json();
    assert_eq!(created["id"], "alpine");
    assert_eq!(created["config"]["memory"], "256M");
    assert_eq!(created["config"]["disks"], Value::Array(vec![]));

    let list = ctl.ok(&["list"]).stdout;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("NAME"));
    assert!(
        lines[1].starts_with("alpine     alpine     Linux  1     256M    0"),
        "{list}"
    );
    assert!(
        lines[2].starts_with("Debian 12  debian-12  Linux  1     256M    1"),
        "{list}"
    );

    let json = ctl.ok(&["list", "--json"]).json();
    let ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpine", "debian-12"]);
    assert_eq!(json[1]["ok"], true);
}

#[test]
fn create_errors_have_their_exit_codes() {
    let ctl = Ctl::new();
    ctl.create("one");
    let run = ctl.run(&["create", "ONE", "--memory", "256M", "--cpus", "1"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, "hospesctl: a VM named \"ONE\" already exists\n");
    let run = ctl.run(&["create", "k", "--preset", "kernel"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "hospesctl: the kernel preset needs a kernel (--kernel FILE)\n"
    );
    let missing = ctl.path("missing.iso");
    let run = ctl.run(&["create", "iso", "--iso", missing.to_str().unwrap()]);
    assert_eq!(run.code, 3);
    let run = ctl.run(&["--json", "create", "huge", "--memory", "64T"]);
    assert_eq!(run.code, 1);
    let error = run.error_json();
    assert_eq!(error["error"]["kind"], "invalid");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("memory: 64T is more memory than this computer has"),
        "{error}"
    );
}

#[test]
fn qcow2_disks_need_qemu_img() {
    let ctl = Ctl::new();
    let empty = ctl.path("empty-path");
    fs::create_dir(&empty).unwrap();
    let mut command = ctl.command(&["create", "q", "--disk-format", "qcow2", "--memory", "256M"]);
    command.env("PATH", &empty);
    let run = ctl.run_with(command, "");
    assert_eq!(run.code, 4);
    assert!(
        run.stderr
            .contains("needs qemu-img, which is not installed"),
        "{}",
        run.stderr
    );
    // Nothing is left of the refused VM.
    assert_eq!(fs::read_dir(ctl.machines()).unwrap().count(), 0);
}

#[test]
fn creates_a_kernel_vm() {
    let ctl = Ctl::new();
    let kernel = ctl.path("bzImage");
    fs::write(&kernel, b"kernel").unwrap();
    let run = ctl.ok(&[
        "--json",
        "create",
        "kt",
        "--preset",
        "kernel",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 panic=-1",
        "--memory",
        "128M",
        "--cpus",
        "1",
    ]);
    let boot = &run.json()["config"]["boot"]["Kernel"];
    assert_eq!(boot["kernel"], kernel.to_str().unwrap());
    assert_eq!(boot["cmdline"], "console=ttyS0 panic=-1");
}

#[test]
fn shows_the_settings_file() {
    let ctl = Ctl::new();
    ctl.create("Shown");
    let run = ctl.ok(&["show", "Shown"]);
    let text = fs::read_to_string(ctl.machines().join("shown/vm.ron")).unwrap();
    assert_eq!(run.stdout, text);
    let json = ctl.ok(&["show", "shown", "--json"]).json();
    assert_eq!(json["config"]["name"], "Shown");
    assert_eq!(json["dir"], ctl.machines().join("shown").to_str().unwrap());
    let run = ctl.run(&["show", "nope"]);
    assert_eq!(run.code, 3);
    assert_eq!(run.stderr, "hospesctl: no VM named \"nope\"\n");
    assert_eq!(
        ctl.run(&["--json", "show", "nope"]).error_json()["error"]["kind"],
        "not_found"
    );
}

#[test]
fn checks_a_file_and_locates_its_error() {
    let ctl = Ctl::new();
    let file = ctl.path("vm.ron");
    let good = "(version: 1, name: \"c\", os: Other, cpus: 1, memory: \"64M\", boot: Uefi())\n";
    fs::write(&file, good).unwrap();
    let run = ctl.ok(&["check", file.to_str().unwrap()]);
    assert_eq!(run.stdout, format!("{}: ok (c)\n", file.display()));

    fs::write(&file, good.replace("\"64M\"", "\"64Q\"")).unwrap();
    let run = ctl.run(&["check", file.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        format!(
            "hospesctl: {}:1:53: memory: bad size \"64Q\" (write it like 4G or 512M)\n",
            file.display()
        )
    );
    let error = ctl
        .run(&["--json", "check", file.to_str().unwrap()])
        .error_json();
    assert_eq!(error["error"]["kind"], "invalid_settings");
    assert_eq!(error["error"]["line"], 1);
    assert_eq!(error["error"]["column"], 53);
    assert_eq!(error["error"]["field"], "memory");

    assert_eq!(
        ctl.run(&["check", ctl.path("none.ron").to_str().unwrap()])
            .code,
        3
    );
}

#[test]
fn renames_a_vm() {
    let ctl = Ctl::new();
    ctl.create("Before");
    let run = ctl.ok(&["rename", "before", "After"]);
    assert_eq!(
        run.stdout,
        "Renamed \"Before\" to \"After\" (its id stays before)\n"
    );
    assert_eq!(ctl.ok(&["show", "After", "--json"]).json()["id"], "before");
    ctl.create("Other");
    assert_eq!(ctl.run(&["rename", "Other", "after"]).code, 1);
    assert_eq!(ctl.run(&["rename", "ghost", "x"]).code, 3);
}

#[test]
fn removes_a_vm_keeping_or_deleting_disks() {
    let ctl = Ctl::new();
    ctl.create("keep");
    let run = ctl.ok(&["rm", "keep"]);
    let disk = ctl.machines().join("keep/disk.raw");
    assert_eq!(
        run.stdout,
        format!(
            "Deleted \"keep\".\nKept its disk images:\n  {}\n",
            disk.display()
        )
    );
    assert!(disk.exists());
    assert_eq!(ctl.run(&["show", "keep"]).code, 3);

    ctl.create("gone");
    let json = ctl.ok(&["--json", "rm", "gone", "--delete-disks"]).json();
    assert_eq!(json["dir_removed"], true);
    assert_eq!(
        json["deleted_disks"][0],
        ctl.machines().join("gone/disk.raw").to_str().unwrap()
    );
    assert!(!ctl.machines().join("gone").exists());
    assert_eq!(ctl.run(&["rm", "gone"]).code, 3);
}

#[test]
fn imports_a_folder() {
    let ctl = Ctl::new();
    let source = ctl.path("elsewhere");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("disk.img"), b"disk").unwrap();
    fs::write(
        source.join("vm.ron"),
        "(version: 1, name: \"From Afar\", os: Linux, cpus: 1, memory: \"64M\",\n boot: Uefi(), disks: [(path: \"disk.img\")])\n",
    )
    .unwrap();
    let run = ctl.ok(&["import", source.to_str().unwrap()]);
    assert_eq!(
        run.stdout,
        format!(
            "Imported \"From Afar\" as from-afar (copied from {})\n",
            source.display()
        )
    );
    assert_eq!(
        fs::read(ctl.machines().join("from-afar/disk.img")).unwrap(),
        b"disk"
    );
    assert!(source.exists());
    assert_eq!(ctl.run(&["import", source.to_str().unwrap()]).code, 1);
    ctl.ok(&["rm", "from-afar", "--delete-disks"]);
    ctl.ok(&["import", "--move", source.to_str().unwrap()]);
    assert!(!source.exists());
    let not_vm = ctl.path("empty");
    fs::create_dir(&not_vm).unwrap();
    assert_eq!(ctl.run(&["import", not_vm.to_str().unwrap()]).code, 1);
    assert_eq!(
        ctl.run(&["import", ctl.path("nowhere").to_str().unwrap()])
            .code,
        3
    );
}

#[test]
fn edit_saves_a_valid_change() {
    let ctl = Ctl::new();
    ctl.create("ed");
    let editor = ctl.editor("sed -i 's/cpus: 1,/cpus: 2, \\/\\/ more/' \"$1\"");
    let run = ctl.edit("ed", &editor, "");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = fs::read_to_string(ctl.machines().join("ed/vm.ron")).unwrap();
    assert!(text.contains("cpus: 2, // more"), "{text}");
    // No temporary copy is left behind.
    let names: Vec<_> = fs::read_dir(ctl.machines().join("ed"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn edit_refuses_to_save_a_broken_file() {
    let ctl = Ctl::new();
    ctl.create("ed");
    let path = ctl.machines().join("ed/vm.ron");
    let before = fs::read_to_string(&path).unwrap();
    let editor = ctl.editor("sed -i 's/memory: \"256M\"/memory: \"lots\"/' \"$1\"");
    let run = ctl.edit("ed", &editor, "");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!(
            "{}:7:13: memory: bad size \"lots\"",
            path.display()
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("vm.ron is unchanged"), "{}", run.stderr);
    assert_eq!(fs::read_to_string(&path).unwrap(), before);

    let failing = ctl.editor("exit 3");
    assert_eq!(ctl.edit("ed", &failing, "").code, 1);
    assert_eq!(fs::read_to_string(&path).unwrap(), before);
}

#[test]
fn edit_reopens_a_broken_file_until_it_is_fixed() {
    let ctl = Ctl::new();
    ctl.create("ed");
    let count = ctl.path("count");
    // First round breaks the file, second round fixes it.
    let editor = ctl.editor(&format!(
        "if [ -e {count} ]; then sed -i 's/cpus: \"two\"/cpus: 2/' \"$1\"; \
         else touch {count}; sed -i 's/cpus: 1,/cpus: \"two\",/' \"$1\"; fi",
        count = count.display()
    ));
    let run = ctl.edit("ed", &editor, "y\n");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("cpus: expected a whole number"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Edit again? [Y/n]"), "{}", run.stderr);
    let text = fs::read_to_string(ctl.machines().join("ed/vm.ron")).unwrap();
    assert!(text.contains("cpus: 2,"), "{text}");
}

#[test]
fn edit_without_changes_writes_nothing() {
    let ctl = Ctl::new();
    ctl.create("ed");
    let path = ctl.machines().join("ed/vm.ron");
    let modified = fs::metadata(&path).unwrap().modified().unwrap();
    let run = ctl.edit("ed", &ctl.editor("true"), "");
    assert_eq!(run.stdout, "No changes.\n");
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), modified);
}

#[test]
fn lists_a_broken_vm_with_its_error() {
    let ctl = Ctl::new();
    ctl.create("fine");
    let broken = ctl.machines().join("broken");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join("vm.ron"), "(version: 1,\n  colour: 3)").unwrap();
    let list = ctl.ok(&["list"]).stdout;
    assert!(list.contains("broken  broken  broken  -"), "{list}");
    assert!(
        list.contains(&format!(
            "broken: {}:2:3: colour: unknown field `colour`",
            broken.join("vm.ron").display()
        )),
        "{list}"
    );
    let json = ctl.ok(&["list", "--json"]).json();
    assert_eq!(json[0]["id"], "broken");
    assert_eq!(json[0]["ok"], false);
    assert_eq!(json[0]["error"]["line"], 2);
    assert_eq!(json[0]["error"]["column"], 3);
    assert_eq!(json[0]["error"]["field"], "colour");
    // show prints the text and fails with the error.
    let run = ctl.run(&["show", "broken"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "(version: 1,\n  colour: 3)\n");
}

#[test]
fn edit_does_not_overwrite_a_change_made_meanwhile() {
    let ctl = Ctl::new();
    ctl.create("ed");
    let path = ctl.machines().join("ed/vm.ron");
    // The editor changes the copy while something else (the app) saves vm.ron.
    let editor = ctl.editor(&format!(
        "sed -i 's/cpus: 1,/cpus: 2,/' \"$1\"; echo '// saved by the app' >> {}",
        path.display()
    ));
    let run = ctl.edit("ed", &editor, "");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("vm.ron changed while you were editing"),
        "{}",
        run.stderr
    );
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.ends_with("// saved by the app\n") && text.contains("cpus: 1,"),
        "{text}"
    );
}

#[test]
fn refuses_to_delete_a_running_vm() {
    use std::os::unix::process::CommandExt;
    let ctl = Ctl::new();
    ctl.create("busy");
    // A process that looks like a running helper, named in the VM's runtime pid file.
    let mut helper = Command::new("sleep")
        .arg0("hospes-vmm: busy")
        .arg("30")
        .spawn()
        .unwrap();
    let runtime = ctl.path("run/hospes/busy");
    fs::create_dir_all(&runtime).unwrap();
    fs::write(runtime.join("pid"), helper.id().to_string()).unwrap();
    let run = ctl.run(&["rm", "busy", "--delete-disks"]);
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("busy is running"), "{}", run.stderr);
    assert!(ctl.machines().join("busy/vm.ron").exists());
    // Once the helper is gone, the stale pid file no longer blocks deletion.
    ctl.ok(&["rm", "busy", "--delete-disks"]);
}

#[test]
fn cdrom_on_a_stopped_vm_edits_vm_ron_and_keeps_its_comments() {
    let ctl = Ctl::new();
    ctl.create("Installer");
    let vm_ron = ctl.machines().join("installer/vm.ron");
    let original = fs::read_to_string(&vm_ron).unwrap();
    assert!(original.contains("cdrom: None"), "{original}");
    let commented = format!("// my notes\n{original}");
    fs::write(&vm_ron, &commented).unwrap();
    let iso = ctl.path("debian.iso");
    fs::write(&iso, [0u8; 2048]).unwrap();

    // A relative path is made absolute: the helper does not start in this folder.
    let mut insert = ctl.command(&["--json", "cdrom", "Installer", "insert", "debian.iso"]);
    insert.current_dir(ctl.tmp.path());
    let run = ctl.run_with(insert, "");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reply = run.json();
    assert_eq!(reply["running"], false);
    assert_eq!(reply["cdrom"], iso.display().to_string());
    let text = fs::read_to_string(&vm_ron).unwrap();
    assert!(text.starts_with("// my notes\n"), "{text}");
    assert!(
        text.contains(&format!("cdrom: \"{}\"", iso.display())),
        "{text}"
    );
    let shown = ctl.ok(&["show", "Installer", "--json"]).json();
    assert_eq!(shown["ok"], true, "the edited file loads: {shown}");
    assert_eq!(shown["config"]["cdrom"], iso.display().to_string());

    let run = ctl.ok(&["cdrom", "installer", "eject"]);
    assert_eq!(
        run.stdout,
        "Installer is stopped: it will start without a CD\n"
    );
    let text = fs::read_to_string(&vm_ron).unwrap();
    assert_eq!(text, commented, "back to what it was, notes and all");

    // A missing image or VM changes nothing.
    let missing = ctl.run(&["cdrom", "Installer", "insert", "/nonexistent/x.iso"]);
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("/nonexistent/x.iso"),
        "{}",
        missing.stderr
    );
    assert_eq!(ctl.run(&["cdrom", "ghost", "eject"]).code, 3);
    assert_eq!(ctl.run(&["cdrom", "Installer", "open"]).code, 2);
    assert_eq!(fs::read_to_string(&vm_ron).unwrap(), commented);
}

/// A pretend running helper for VM `id`: a process named `hospes-vmm: ...` in the pid
/// file and a fake VM serving QMP on the runtime folder's socket, in this test process.
struct FakeRunning {
    process: std::process::Child,
    vm: std::sync::Arc<hospes_core::control::fake::FakeVm>,
    _server: hospes_core::control::QmpServerHandle,
}

impl FakeRunning {
    fn start(ctl: &Ctl, id: &str) -> FakeRunning {
        use std::os::unix::process::CommandExt;
        let process = Command::new("sleep")
            .arg0(format!("hospes-vmm: {id}"))
            .arg("60")
            .spawn()
            .unwrap();
        let runtime = ctl.path("run/hospes").join(id);
        fs::create_dir_all(&runtime).unwrap();
        fs::write(runtime.join("pid"), process.id().to_string()).unwrap();
        let (vm, server) =
            hospes_core::control::fake::FakeVm::serve(&runtime.join("qmp.sock")).unwrap();
        FakeRunning {
            process,
            vm,
            _server: server,
        }
    }
}

impl Drop for FakeRunning {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[test]
fn usb_on_a_running_vm_plugs_in_through_qmp_and_records_it_in_vm_ron() {
    use hospes_core::control::VmControl;
    let ctl = Ctl::new();
    ctl.create("Desk");
    let vm_ron = ctl.machines().join("desk/vm.ron");
    let commented = format!("// my notes\n{}", fs::read_to_string(&vm_ron).unwrap());
    fs::write(&vm_ron, &commented).unwrap();
    let running = FakeRunning::start(&ctl, "desk");

    let run = ctl.ok(&["usb", "Desk", "attach", "046d:c52b"]);
    assert_eq!(
        run.stdout,
        "Desk: 046d:c52b is plugged in (and kept in its settings)\n"
    );
    // By bus and address, as lsusb prints them: recorded by the ids the helper reports.
    let reply = ctl
        .ok(&["--json", "usb", "Desk", "attach", "001/005"])
        .json();
    assert_eq!(reply["running"], true);
    assert_eq!(reply["device"], "0781:5581");
    let plugged: Vec<_> = running.vm.query_usb().into_iter().map(|d| d.id).collect();
    assert_eq!(plugged, ["usb-046d-c52b", "usb-1-5"]);
    let text = fs::read_to_string(&vm_ron).unwrap();
    assert!(text.starts_with("// my notes\n"), "{text}");
    assert!(
        text.contains(r#"usb: ["046d:c52b", "0781:5581"]"#),
        "{text}"
    );

    let listed = ctl.ok(&["--json", "usb", "Desk", "list"]).json();
    assert_eq!(listed["devices"][0]["id"], "usb-046d-c52b");
    assert_eq!(listed["devices"][1]["host"]["bus"], 1);
    assert_eq!(listed["settings"][1], "0781:5581");
    let again = ctl.run(&["usb", "Desk", "attach", "3/2"]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(again.stderr.contains("already"), "{}", again.stderr);
    let missing = ctl.run(&["usb", "Desk", "attach", "1234:5678"]);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("no host USB device 1234:5678"),
        "the helper's reason is shown: {}",
        missing.stderr
    );

    ctl.ok(&["usb", "Desk", "detach", "046d:c52b"]);
    ctl.ok(&["usb", "Desk", "detach", "1/5"]);
    assert!(running.vm.query_usb().is_empty());
    assert_eq!(fs::read_to_string(&vm_ron).unwrap(), commented);
    let gone = ctl.run(&["usb", "Desk", "detach", "046d:c52b"]);
    assert_eq!(gone.code, 1, "{}", gone.stderr);
}

#[test]
fn usb_on_a_stopped_vm_edits_vm_ron_only() {
    let ctl = Ctl::new();
    ctl.create("Shelf");
    let vm_ron = ctl.machines().join("shelf/vm.ron");
    let run = ctl.ok(&["usb", "Shelf", "attach", "046d:c52b"]);
    assert_eq!(
        run.stdout,
        "Shelf is stopped: it will start with 046d:c52b plugged in\n"
    );
    let text = fs::read_to_string(&vm_ron).unwrap();
    assert!(text.contains(r#"usb: ["046d:c52b"]"#), "{text}");
    let listed = ctl.ok(&["--json", "usb", "Shelf", "list"]).json();
    assert_eq!(listed["running"], false);
    assert_eq!(listed["settings"], serde_json::json!(["046d:c52b"]));

    // BUS/ADDR is looked up among the host's devices (a fake sysfs here).
    let sysfs = ctl.path("sys");
    let dev = sysfs.join("bus/usb/devices/3-2");
    fs::create_dir_all(&dev).unwrap();
    for (attr, value) in [
        ("idVendor", "0781"),
        ("idProduct", "5581"),
        ("busnum", "3"),
        ("devnum", "2"),
    ] {
        fs::write(dev.join(attr), format!("{value}\n")).unwrap();
    }
    let mut attach = ctl.command(&["usb", "Shelf", "attach", "003/002"]);
    attach.env("HOSPES_SYSFS_ROOT", &sysfs);
    assert_eq!(ctl.run_with(attach, "").code, 0);
    let mut unknown = ctl.command(&["usb", "Shelf", "attach", "9/9"]);
    unknown.env("HOSPES_SYSFS_ROOT", &sysfs);
    let unknown = ctl.run_with(unknown, "");
    assert_eq!(unknown.code, 3, "{}", unknown.stderr);
    let text = fs::read_to_string(&vm_ron).unwrap();
    assert!(
        text.contains(r#"usb: ["046d:c52b", "0781:5581"]"#),
        "{text}"
    );

    ctl.ok(&["usb", "Shelf", "detach", "046d:c52b"]);
    let not_there = ctl.run(&["usb", "Shelf", "detach", "046d:c52b"]);
    assert_eq!(not_there.code, 1, "{}", not_there.stderr);
    assert_eq!(ctl.run(&["usb", "Shelf", "attach", "logitech"]).code, 2);
    let text = fs::read_to_string(&vm_ron).unwrap();
    assert!(text.contains(r#"usb: ["0781:5581"]"#), "{text}");
}

#[test]
fn creates_a_windows_vm_with_its_devices_and_the_drivers_disc() {
    let ctl = Ctl::new();
    let iso = ctl.path("Win11.iso");
    let drivers = ctl.path("virtio-win.iso");
    std::fs::write(&iso, b"").unwrap();
    std::fs::write(&drivers, b"").unwrap();
    let run = ctl.ok(&[
        "create",
        "Win",
        "--preset",
        "windows11",
        "--memory",
        "4G",
        "--disk-size",
        "1G",
        "--iso",
        iso.to_str().unwrap(),
        "--drivers-iso",
        drivers.to_str().unwrap(),
    ]);
    for line in [
        "boot:    UEFI with Secure Boot and TPM",
        &format!("cd-rom:  {}", iso.canonicalize().unwrap().display()),
        &format!("cd-rom:  {}", drivers.canonicalize().unwrap().display()),
        "network: user (passt), e1000e, MAC 52:54:00:",
        "sound:   Intel HD Audio (PipeWire)",
    ] {
        assert!(run.stdout.contains(line), "{line}: {}", run.stdout);
    }
    // A drivers disc is for Windows only: a usage mistake, said plainly.
    let run = ctl.run(&[
        "create",
        "Lin",
        "--preset",
        "linux",
        "--drivers-iso",
        drivers.to_str().unwrap(),
    ]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("windows11"), "{}", run.stderr);
}

/// Runs a qemu-io command on the image `image` (Debian package qemu-utils).
fn qemu_io(image: &Path, format: &str, command: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", format, "-c", command])
        .arg(image)
        .output()
        .expect("qemu-io runs");
    assert!(out.status.success(), "qemu-io {command}: {out:?}");
}

/// The first MiB of the virtual disk `image` as qemu-img reads it.
fn disk_head(image: &Path) -> Vec<u8> {
    let raw = image.with_extension("head.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .output()
        .expect("qemu-img runs");
    assert!(out.status.success(), "{out:?}");
    let mut bytes = fs::read(&raw).unwrap();
    fs::remove_file(&raw).unwrap();
    bytes.truncate(1 << 20);
    bytes
}

/// The active disk image of VM `id`, from its vm.ron.
fn active_disk(ctl: &Ctl, id: &str) -> PathBuf {
    let dir = ctl.machines().join(id);
    let cfg = hospes_core::config::load(&dir.join("vm.ron")).unwrap();
    dir.join(&cfg.disks[0].path)
}

#[test]
fn snapshots_revert_the_disk_bytes_and_delete_without_loss() {
    let ctl = Ctl::new();
    ctl.ok(&[
        "create",
        "snap",
        "--preset",
        "linux",
        "--memory",
        "256M",
        "--disk-size",
        "16M",
        "--disk-format",
        "qcow2",
    ]);
    let disk = active_disk(&ctl, "snap");
    qemu_io(&disk, "qcow2", "write -P 0x11 0 64k");
    let first = disk_head(&disk);
    let run = ctl.ok(&["--json", "snapshot", "snap", "create", "one"]);
    assert_eq!(run.json()["snapshot"]["name"], "one");
    let overlay = active_disk(&ctl, "snap");
    assert_ne!(overlay, disk, "vm.ron names the new overlay");
    assert!(disk_head(&overlay) == first);
    qemu_io(&overlay, "qcow2", "write -P 0x22 4096 8k");
    let second = disk_head(&overlay);
    assert_ne!(second, first);
    ctl.ok(&["snapshot", "snap", "create", "two"]);
    qemu_io(&active_disk(&ctl, "snap"), "qcow2", "write -P 0x33 0 512");
    let third = disk_head(&active_disk(&ctl, "snap"));

    let list = ctl.ok(&["--json", "snapshot", "snap", "list"]).json();
    let names: Vec<&str> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);

    // Revert to two, twice: the bytes are two's each time.
    ctl.ok(&["snapshot", "snap", "revert", "two"]);
    assert!(disk_head(&active_disk(&ctl, "snap")) == second);
    qemu_io(&active_disk(&ctl, "snap"), "qcow2", "write -P 0x44 0 512");
    ctl.ok(&["snapshot", "snap", "revert", "two"]);
    assert!(disk_head(&active_disk(&ctl, "snap")) == second);
    let _ = third;

    // Deleting one merges; the current bytes and two's stay.
    qemu_io(
        &active_disk(&ctl, "snap"),
        "qcow2",
        "write -P 0x55 8192 512",
    );
    let now = disk_head(&active_disk(&ctl, "snap"));
    ctl.ok(&["snapshot", "snap", "delete", "one"]);
    assert!(disk_head(&active_disk(&ctl, "snap")) == now);
    ctl.ok(&["snapshot", "snap", "revert", "two"]);
    assert!(disk_head(&active_disk(&ctl, "snap")) == second);
    // Deleting the newest: vm.ron names the merged image, bytes unchanged.
    qemu_io(&active_disk(&ctl, "snap"), "qcow2", "write -P 0x66 0 512");
    let now = disk_head(&active_disk(&ctl, "snap"));
    ctl.ok(&["snapshot", "snap", "delete", "two"]);
    assert!(disk_head(&active_disk(&ctl, "snap")) == now);
    let list = ctl.ok(&["--json", "snapshot", "snap", "list"]).json();
    assert!(list["snapshots"].as_array().unwrap().is_empty());
    // What imago wrote is a consistent image to qemu-img too.
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(active_disk(&ctl, "snap"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let run = ctl.run(&["snapshot", "snap", "revert", "two"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
}

#[test]
fn snapshot_of_a_raw_disk_needs_convert() {
    let ctl = Ctl::new();
    ctl.ok(&[
        "create",
        "raw",
        "--preset",
        "linux",
        "--memory",
        "256M",
        "--disk-size",
        "16M",
    ]);
    let disk = active_disk(&ctl, "raw");
    qemu_io(&disk, "raw", "write -P 0x5a 65536 4k");
    let before = disk_head(&disk);
    let run = ctl.run(&["snapshot", "raw", "create", "s"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("--convert"), "{}", run.stderr);
    assert!(active_disk(&ctl, "raw") == disk);
    let run = ctl.ok(&["snapshot", "raw", "create", "s", "--convert"]);
    assert!(run.stderr.contains("100%"), "progress: {}", run.stderr);
    let active = active_disk(&ctl, "raw");
    assert_ne!(active, disk);
    assert!(
        disk_head(&active) == before,
        "bytes kept through the conversion"
    );
}

#[test]
fn snapshot_refuses_a_running_vm() {
    let ctl = Ctl::new();
    ctl.ok(&[
        "create",
        "busy",
        "--preset",
        "linux",
        "--memory",
        "256M",
        "--disk-size",
        "16M",
        "--disk-format",
        "qcow2",
    ]);
    let _running = FakeRunning::start(&ctl, "busy");
    let run = ctl.run(&["snapshot", "busy", "create", "s"]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("stop it first"), "{}", run.stderr);
}
