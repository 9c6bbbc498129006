//! `hospesctl`, the command line: argument parsing, output and exit codes.
//!
//! Each group of subcommands
//! lives in its own file with its own clap `Subcommand` enum, flattened into [`Command`]:
//! [`library_cmds`] manages the VM library, [`vm_cmds`] running VMs, [`media_cmds`] the
//! CD drive, [`usb_cmds`] host USB devices. A command prints through [`Output`], which
//! writes text for people or, with `--json`, one JSON document for scripts, and fails
//! with a [`CtlError`], whose [`CtlError::exit_code`] is the process's exit status.
//!
//! This crate depends on `hospes-core` alone: the settings, the library, launching and the
//! QMP client are all it needs, and it never builds device or KVM code.

mod library_cmds;
mod media_cmds;
mod snapshot_cmds;
mod usb_cmds;
mod vm_cmds;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;

use hospes_core::config::ConfigError;
use hospes_core::control::client::ClientError;
use hospes_core::control::console::ConsoleError;
use hospes_core::error_chain;
use hospes_core::launch::LaunchError;
use hospes_core::library::LibraryError;
use hospes_core::runtime::RuntimeError;

/// Exit statuses of `hospesctl`.
mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Invalid settings, or a request that cannot be met (name taken, missing input...).
    pub const INVALID: u8 = 1;
    /// Bad command line (unknown option, missing argument).
    pub const USAGE: u8 = 2;
    /// No such VM or file.
    pub const NOT_FOUND: u8 = 3;
    /// The host failed us: a file could not be read or written, a tool is missing.
    pub const FAILED: u8 = 4;
    /// The VM is in the wrong state for the command (running when it must be stopped...).
    pub const WRONG_STATE: u8 = 5;
}

const EXIT_CODES_HELP: &str = "\
Exit status:
  0  success
  1  invalid settings, or a request that cannot be met (the error says why and where)
  2  bad command line
  3  no such VM or file
  4  a file could not be read or written, or a needed tool is missing
  5  the VM is in the wrong state (running when it must be stopped, or the reverse)

VMs live in $XDG_DATA_HOME/hospes/machines/<id>/ (~/.local/share/... by default).
With --json, results go to stdout and errors to stderr, each as one JSON document.";

/// The Hospes command line.
#[derive(Debug, Parser)]
#[command(
    name = "hospesctl",
    version,
    about = "Create, change and run Hospes virtual machines",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Print JSON for scripts instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand, by group.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Library commands: list, create, show, check, edit, rm, import, rename.
    #[command(flatten)]
    Library(library_cmds::LibraryCommand),
    /// Running VMs: start, stop, kill, save, discard, console, status.
    #[command(flatten)]
    Vm(vm_cmds::VmCommand),
    /// The CD drive: cdrom NAME eject|insert FILE.
    #[command(flatten)]
    Media(media_cmds::MediaCommand),
    /// Host USB devices: usb NAME list|attach DEV|detach DEV.
    #[command(flatten)]
    Usb(usb_cmds::UsbCommand),
    /// Disk snapshots: snapshot NAME create|list|revert|delete [SNAP].
    #[command(flatten)]
    Snapshot(snapshot_cmds::SnapshotCommand),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A library operation failed.
    #[error(transparent)]
    Library(#[from] LibraryError),
    /// A settings file is broken or could not be read or written.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file named on the command line does not exist.
    #[error("file not found: {}", .0.display())]
    FileNotFound(PathBuf),
    /// The editor could not be started or failed.
    #[error("the editor {editor:?} failed: {reason}")]
    Editor {
        /// The editor command.
        editor: String,
        /// What happened.
        reason: String,
    },
    /// An edit was not saved; the person's text is kept in `kept`.
    #[error("{reason}; vm.ron is unchanged (your edits are in {})", kept.display())]
    EditNotSaved {
        /// Why.
        reason: String,
        /// The file holding the edited text.
        kept: PathBuf,
    },
    /// A temporary file for editing could not be written or read.
    #[error("cannot use {}", path.display())]
    TempFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Output could not be written.
    #[error("cannot write output")]
    Output(#[source] io::Error),
    /// Starting, stopping or asking a VM's helper failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The runtime folder of running VMs is unusable.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The serial console could not be attached.
    #[error("serial console")]
    Console(#[source] ConsoleError),
    /// A saved-state file could not be removed.
    #[error("cannot remove the saved state {}", path.display())]
    SavedState {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The command needs a running VM.
    #[error("{0} is not running")]
    NotRunning(String),
    /// The running VM has no CD drive.
    #[error(
        "{0} has no CD drive (it started without a CD: set one with `hospesctl cdrom {0} insert FILE` while it is stopped)"
    )]
    NoCdDrive(String),
    /// No host USB device sits at that bus and address.
    #[error("no USB device {0} is plugged into this computer")]
    NoHostUsb(String),
    /// The device is plugged into the VM already.
    #[error("{name} has {device} already")]
    UsbAlreadyAttached {
        /// The VM.
        name: String,
        /// The device as given.
        device: String,
    },
    /// The VM does not have the device.
    #[error("{name} does not have USB device {device}")]
    UsbNotAttached {
        /// The VM.
        name: String,
        /// The device as given.
        device: String,
    },
    /// The running VM did not plug a USB device in or out.
    #[error("{name}'s USB")]
    Usb {
        /// The VM.
        name: String,
        /// What the helper said.
        #[source]
        source: ClientError,
    },
    /// A snapshot operation failed.
    #[error(transparent)]
    Snapshot(#[from] hospes_core::snapshots::SnapshotError),
    /// The running VM did not change its disc.
    #[error("{name}'s CD drive")]
    Cdrom {
        /// The VM.
        name: String,
        /// What the helper said.
        #[source]
        source: ClientError,
    },
}

impl CtlError {
    /// The exit status for this error; see [`exit`].
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Library(error) => match error {
                LibraryError::NotFound(_) | LibraryError::InputNotFound(_) => exit::NOT_FOUND,
                LibraryError::Io { .. }
                | LibraryError::NoDataHome
                | LibraryError::QemuImgMissing
                | LibraryError::QemuImgFailed(_)
                | LibraryError::NoFreeId(_) => exit::FAILED,
                LibraryError::Running { .. } => exit::WRONG_STATE,
                LibraryError::Config(error) => config_exit_code(error),
                LibraryError::Ambiguous { .. }
                | LibraryError::NameTaken(_)
                | LibraryError::BadName { .. }
                | LibraryError::Setting { .. }
                | LibraryError::Missing { .. }
                | LibraryError::NotAVmFolder(_)
                | LibraryError::AlreadyInLibrary(_) => exit::INVALID,
            },
            CtlError::Config(error) => config_exit_code(error),
            CtlError::FileNotFound(_) | CtlError::NoHostUsb(_) => exit::NOT_FOUND,
            CtlError::UsbAlreadyAttached { .. }
            | CtlError::UsbNotAttached { .. }
            | CtlError::Usb {
                source: ClientError::Command(_),
                ..
            } => exit::INVALID,
            CtlError::Usb { .. } => exit::FAILED,
            CtlError::Editor { .. } | CtlError::EditNotSaved { .. } => exit::INVALID,
            CtlError::TempFile { .. } | CtlError::Output(_) | CtlError::SavedState { .. } => {
                exit::FAILED
            }
            CtlError::Launch(LaunchError::AlreadyRunning(_)) | CtlError::NotRunning(_) => {
                exit::WRONG_STATE
            }
            CtlError::Launch(_) | CtlError::Runtime(_) | CtlError::Console(_) => exit::FAILED,
            CtlError::NoCdDrive(_)
            | CtlError::Cdrom {
                source: ClientError::Command(_),
                ..
            } => exit::INVALID,
            CtlError::Cdrom { .. } => exit::FAILED,
            CtlError::Snapshot(error) => {
                use hospes_core::snapshots::SnapshotError as S;
                match error {
                    S::Running(_) => exit::WRONG_STATE,
                    S::NotFound(_) => exit::NOT_FOUND,
                    S::Config(error) => config_exit_code(error),
                    S::Io { .. } | S::List(_) => exit::FAILED,
                    _ => exit::INVALID,
                }
            }
        }
    }

    /// A short name for the kind of error, for JSON output.
    pub fn kind(&self) -> &'static str {
        match self.exit_code() {
            exit::NOT_FOUND => "not_found",
            exit::FAILED => "failed",
            exit::WRONG_STATE => "wrong_state",
            _ => match self {
                CtlError::Config(ConfigError::Invalid { .. })
                | CtlError::Library(LibraryError::Config(ConfigError::Invalid { .. })) => {
                    "invalid_settings"
                }
                _ => "invalid",
            },
        }
    }

    /// The located settings error inside this one, if any.
    fn config_error(&self) -> Option<&ConfigError> {
        match self {
            CtlError::Config(error) | CtlError::Library(LibraryError::Config(error)) => Some(error),
            _ => None,
        }
    }
}

fn config_exit_code(error: &ConfigError) -> u8 {
    match error {
        ConfigError::Invalid { .. } => exit::INVALID,
        ConfigError::Read { .. } | ConfigError::Write { .. } => exit::FAILED,
    }
}

/// Where commands print: text for people, or JSON.
pub struct Output {
    json: bool,
}

impl Output {
    /// Output in the chosen style.
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    /// Whether JSON was asked for.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints `text` for people, or `value` as JSON.
    pub fn emit(&self, text: &str, value: &serde_json::Value) -> Result<(), CtlError> {
        let mut stdout = io::stdout().lock();
        let written = if self.json {
            writeln!(stdout, "{value}")
        } else if text.is_empty() {
            Ok(())
        } else if text.ends_with('\n') {
            write!(stdout, "{text}")
        } else {
            writeln!(stdout, "{text}")
        };
        written
            .and_then(|()| stdout.flush())
            .map_err(CtlError::Output)
    }

    /// Prints a note for people on stderr (nothing in JSON mode).
    pub fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }
}

/// A settings error as JSON: `message`, and for errors in the text `file`, `line`,
/// `column`, `field` and `problem`.
pub fn config_error_json(error: &ConfigError) -> serde_json::Value {
    match error {
        ConfigError::Invalid {
            file,
            line,
            column,
            field,
            problem,
        } => json!({
            "message": error.to_string(),
            "file": file,
            "line": line,
            "column": column,
            "field": field,
            "problem": problem.to_string(),
        }),
        ConfigError::Read { file, .. } | ConfigError::Write { file, .. } => json!({
            "message": error.to_string(),
            "file": file,
        }),
    }
}

/// Reports a failed command on stderr.
fn report(error: &CtlError, json: bool) {
    let message = error_chain(error);
    if json {
        let mut value = json!({
            "error": {
                "kind": error.kind(),
                "exit_code": error.exit_code(),
                "message": message,
            }
        });
        if let Some(config_error) = error.config_error() {
            let location = config_error_json(config_error);
            if let (Some(target), Some(fields)) =
                (value["error"].as_object_mut(), location.as_object())
            {
                for (key, field) in fields {
                    target.entry(key.clone()).or_insert_with(|| field.clone());
                }
            }
        }
        eprintln!("{value}");
    } else {
        eprintln!("hospesctl: {message}");
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), CtlError> {
    let out = Output::new(cli.json);
    match cli.command {
        Command::Library(command) => library_cmds::run(command, &out),
        Command::Vm(command) => vm_cmds::run(command, &out),
        Command::Media(command) => media_cmds::run(command, &out),
        Command::Usb(command) => usb_cmds::run(command, &out),
        Command::Snapshot(command) => snapshot_cmds::run(command, &out),
    }
}

/// The whole program: parses the command line, runs it, reports errors.
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // clap prints help and version to stdout (exit 0) and errors to stderr (exit 2).
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => {
            report(&error, json);
            ExitCode::from(error.exit_code())
        }
    }
}
