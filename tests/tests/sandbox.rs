//! The helper confines itself after set-up (vmm/src/sandbox.rs): a running helper has the
//! seccomp filter and no_new_privs, refuses a system call outside its list, and opens a
//! file by name only where its configuration lets it; `--sandbox off` leaves it free.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hospes_core::control::client::QmpClient;
use hospes_tests::{
    GuestKind, build_guest, skip_without_kvm, vmm_binary, wait_for_text, wait_timeout,
};

const TIMEOUT: Duration = Duration::from_secs(30);
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// The `Key:` line of /proc/<pid>/status, trimmed.
fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_owned()
}

/// The echo guest (waits for a line on COM1) with `extra` flags, its log in `log`.
fn echo_helper(dir: &Path, kernel: &Path, extra: &[&str], log: &Path) -> Child {
    Command::new(vmm_binary())
        .arg("--kernel")
        .arg(kernel)
        .args(["-m", "32M", "--no-rng", "--serial"])
        .arg(format!("file:{}", dir.join("console.txt").display()))
        .args(extra)
        .env("HOSPES_LOG", "info")
        .env("HOSPES_SANDBOX_PROBE", "1")
        .env_remove("HOSPES_SANDBOX")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn hospes-vmm")
}

#[test]
fn a_running_helper_is_confined_and_refuses_a_system_call_outside_its_list() {
    if skip_without_kvm() {
        return;
    }
    let g = build_guest("echo", GuestKind::Pvh);
    for sandbox in ["on", "off"] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("helper.log");
        let mut child = echo_helper(dir.path(), &g.path, &["--sandbox", sandbox], &log);
        // The guest runs: the helper is past its set-up.
        wait_for_text(&dir.path().join("console.txt"), "type a line", TIMEOUT);
        let (seccomp, nnp) = (
            status_field(child.id(), "Seccomp"),
            status_field(child.id(), "NoNewPrivs"),
        );
        let vcpu_seccomp = std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .unwrap()
            .map(|t| t.unwrap().path().join("comm"))
            .filter(|c| std::fs::read_to_string(c).is_ok_and(|n| n.starts_with("vcpu")))
            .map(|c| {
                let status = std::fs::read_to_string(c.with_file_name("status")).unwrap();
                // The process filters (2) plus the vCPU threads' own.
                status.lines().any(|l| l == "Seccomp:\t2")
                    && status.lines().any(|l| l == "Seccomp_filters:\t3")
            })
            .collect::<Vec<_>>();
        child.kill().unwrap();
        child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        println!("--sandbox {sandbox}: {text}");
        if sandbox == "on" {
            assert_eq!(seccomp, "2", "filter mode");
            assert_eq!(nnp, "1");
            assert!(!vcpu_seccomp.is_empty(), "no vCPU thread found");
            assert!(
                vcpu_seccomp.iter().all(|&f| f),
                "a vCPU thread runs without its own filter"
            );
            assert!(text.contains("sandbox: Landlock"), "{text}");
            // unshare(0) changes nothing and succeeds unconfined: the filter refused it,
            // the SIGSYS handler named it (272 on x86-64) and made it fail with EPERM.
            assert!(text.contains("sandbox refused system call 272 "), "{text}");
            assert!(
                text.contains("sandbox probe: unshare(0): Operation not permitted"),
                "{text}"
            );
        } else {
            assert_eq!(seccomp, "0");
            assert!(text.contains("sandbox: off"), "{text}");
            assert!(!text.contains("refused"), "{text}");
        }
    }
}

/// Connects to the QMP socket at `path` as soon as the helper serves it.
fn qmp_when_up(path: &Path) -> QmpClient {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match QmpClient::connect_with_timeout(path, TIMEOUT) {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("QMP at {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// `blockdev-change-medium` with `filename`: Ok, or the error text.
fn change_cd(client: &mut QmpClient, filename: &Path) -> Result<(), String> {
    client
        .execute(
            "blockdev-change-medium",
            Some(serde_json::json!({"id": "cdrom0", "filename": filename})),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn qmp_inserts_a_disc_from_an_allowed_folder_and_not_from_another() {
    if skip_without_kvm() || !Path::new(SEABIOS).exists() {
        return;
    }
    for sandbox in ["on", "off"] {
        // The CD's folder is allowed (the configured disc's neighbours); `elsewhere` is
        // not named by anything in the configuration.
        let (vm, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let disc = vm.path().join("disc.iso");
        // No boot image: SeaBIOS finds nothing to boot and waits, the VM keeps running.
        std::fs::write(&disc, vec![0u8; 64 * 2048]).unwrap();
        let beside = vm.path().join("beside.iso");
        let outside = elsewhere.path().join("outside.iso");
        std::fs::copy(&disc, &beside).unwrap();
        std::fs::copy(&disc, &outside).unwrap();
        let qmp = vm.path().join("qmp.sock");
        let log = vm.path().join("helper.log");
        let mut child = Command::new(vmm_binary())
            .args([
                "--bios", SEABIOS, "-m", "64M", "--no-rng", "--serial", "none",
            ])
            .arg("--cdrom")
            .arg(&disc)
            .arg("--qmp")
            .arg(format!("unix:{}", qmp.display()))
            .args(["--sandbox", sandbox])
            .env_remove("HOSPES_SANDBOX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn hospes-vmm");
        let mut client = qmp_when_up(&qmp);
        // The CD drive joins QMP just after the server starts.
        let deadline = Instant::now() + TIMEOUT;
        while client.query_block().map_or(true, |b| b.is_empty()) {
            assert!(Instant::now() < deadline, "no CD drive in QMP");
            std::thread::sleep(Duration::from_millis(5));
        }
        let from_beside = change_cd(&mut client, &beside);
        let from_outside = change_cd(&mut client, &outside);
        let block = client.execute("query-block", None).expect("query-block");
        client.quit().expect("quit");
        let status = wait_timeout(&mut child, TIMEOUT);
        let text = std::fs::read_to_string(&log).unwrap();
        println!("--sandbox {sandbox}: beside {from_beside:?}, outside {from_outside:?}\n{text}");
        assert_eq!(from_beside, Ok(()), "{text}");
        assert!(status.is_some_and(|s| s.success()), "{text}");
        if sandbox == "on" {
            let err = from_outside.expect_err("a disc outside the allowed folders");
            assert!(err.contains("Permission denied"), "{err}");
            assert!(err.contains(&outside.display().to_string()), "{err}");
            // The refused disc left the one before it in the drive.
            assert_eq!(block[0]["inserted"]["file"], beside.display().to_string());
        } else {
            assert_eq!(
                from_outside,
                Ok(()),
                "unconfined, any readable file goes in"
            );
            assert_eq!(block[0]["inserted"]["file"], outside.display().to_string());
        }
    }
}
