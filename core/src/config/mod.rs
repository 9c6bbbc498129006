//! VM settings: the `vm.ron` file in each VM folder.
//!
//! Text flows one way: [`parse`] runs ron over the text into [`VmConfig`] (the schema in
//! [`schema`]), then checks what the types alone cannot (version, ranges, duplicates);
//! [`load`] adds the checks that look at the host: files named in the settings exist
//! (relative paths are resolved against the VM folder) and the VM fits this computer.
//! Every failure is a [`ConfigError`] naming file, line, column and setting, located by
//! [`locate`]. [`save`] writes atomically through [`write_atomic`], so a crash leaves the
//! old file or the new one, never half of one.

mod atomic;
mod host;
pub mod locate;
mod schema;
mod size;

use std::fmt;
use std::path::{Path, PathBuf};

pub use atomic::write_atomic;
pub use host::HostLimits;
pub use schema::{
    Boot, CURRENT_VERSION, Clock, Disk, DiskBus, DiskFormat, Display, DisplayDevice, MacAddress,
    MachineUuid, Network, NetworkCard, OsKind, PortForward, Protocol, RebootAction, Resolution,
    SoundCard, UsbDevice, VmConfig,
};
pub use size::{BadSize, Size};

use locate::{FieldMap, LineCol};

/// The file name of a VM's settings inside its folder.
pub const FILE_NAME: &str = "vm.ron";

/// Most vCPUs a VM may have, whatever the host.
pub const MAX_CPUS: u32 = 255;

/// Least memory a VM may have.
pub const MIN_MEMORY: Size = Size::mib(16);

/// Errors reading, checking or writing `vm.ron`. Cloneable: causes are kept as text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {message}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The operating system's reason.
        message: String,
    },
    /// The file could not be written.
    #[error("{}: cannot save: {message}", file.display())]
    Write {
        /// The file.
        file: PathBuf,
        /// The operating system's reason.
        message: String,
    },
    /// The text is not valid settings.
    #[error("{}:{line}:{column}: {}: {problem}", file.display(), field_label(field))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Line, from 1.
        line: usize,
        /// Column in characters, from 1.
        column: usize,
        /// The setting, as a path like `disks[0].path`; empty for the file as a whole.
        field: String,
        /// What is wrong.
        problem: Problem,
    },
}

fn field_label(field: &str) -> &str {
    if field.is_empty() { "settings" } else { field }
}

impl ConfigError {
    /// The problem, for errors in the text.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ConfigError::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// `(line, column)` of errors in the text.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Invalid { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }

    /// The setting an error in the text is about.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// What is wrong with a setting.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// The text is not RON.
    Syntax(String),
    /// A field this version does not know.
    UnknownField {
        /// The field as written.
        found: String,
        /// The fields allowed there.
        expected: Vec<String>,
    },
    /// A required field is absent.
    MissingField,
    /// A field is given twice.
    DuplicateField,
    /// A choice (like `os: Linux`) this version does not know.
    UnknownVariant {
        /// The choice as written.
        found: String,
        /// The choices allowed there.
        expected: Vec<String>,
    },
    /// The value has the wrong type (a string where a number belongs...).
    WrongType(String),
    /// The value has the right type but cannot be used (a size like "4Q", port 0...).
    BadValue(String),
    /// The file is for another version of Hospes.
    UnsupportedVersion(u32),
    /// A file the settings name does not exist.
    MissingFile(PathBuf),
    /// More memory than this computer has.
    MemoryAboveHost {
        /// What the settings ask for.
        memory: Size,
        /// What the host has.
        host: Size,
    },
    /// More vCPUs than this computer has.
    TooManyCpus {
        /// What the settings ask for.
        cpus: u32,
        /// What the host has.
        host: u32,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Syntax(message) => write!(f, "{message}"),
            Problem::UnknownField { found, expected } => {
                write!(f, "unknown field `{found}` (expected {})", one_of(expected))
            }
            Problem::MissingField => f.write_str("missing (this field is required)"),
            Problem::DuplicateField => f.write_str("given more than once"),
            Problem::UnknownVariant { found, expected } => {
                write!(f, "unknown value `{found}` (expected {})", one_of(expected))
            }
            Problem::WrongType(message) | Problem::BadValue(message) => f.write_str(message),
            Problem::UnsupportedVersion(version) => write!(
                f,
                "version {version} is not supported (this Hospes reads version {CURRENT_VERSION})"
            ),
            Problem::MissingFile(path) => write!(f, "file not found: {}", path.display()),
            Problem::MemoryAboveHost { memory, host } => {
                write!(f, "{memory} is more memory than this computer has ({host})")
            }
            Problem::TooManyCpus { cpus, host } => {
                write!(f, "{cpus} vCPUs is more than this computer has ({host})")
            }
        }
    }
}

fn one_of(names: &[String]) -> String {
    match names {
        [] => "nothing here".to_owned(),
        [one] => format!("`{one}`"),
        _ => {
            let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            format!("one of {}", quoted.join(", "))
        }
    }
}

impl VmConfig {
    /// `path` as the VM sees it: relative paths are inside the VM folder `vm_dir`.
    pub fn resolve(vm_dir: &Path, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            vm_dir.join(path)
        }
    }
}

fn ron_options() -> ron::Options {
    ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
}

/// Parses settings text and checks what needs no file system: `origin` names the file
/// in error messages only.
pub fn parse(text: &str, origin: &Path) -> Result<VmConfig, ConfigError> {
    let cfg: VmConfig = ron_options()
        .from_str(text)
        .map_err(|e| from_ron_error(&e, text, origin))?;
    check_schema(&cfg, &Locator::new(text, origin))?;
    Ok(cfg)
}

/// Reads, parses and fully checks the settings at `path` against this computer.
pub fn load(path: &Path) -> Result<VmConfig, ConfigError> {
    load_with(path, &HostLimits::detect())
}

/// [`load`] with given host limits (tests, or a host described by hand).
pub fn load_with(path: &Path, host: &HostLimits) -> Result<VmConfig, ConfigError> {
    let text = read(path)?;
    let vm_dir = path.parent().unwrap_or(Path::new("."));
    validate(&text, path, vm_dir, host)
}

/// Reads a settings file as text.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: path.to_owned(),
        message: e.to_string(),
    })
}

/// Parses `text` and checks it as if it were the `vm.ron` of the folder `vm_dir`: schema,
/// files and host limits. `origin` names the file in errors.
pub fn validate(
    text: &str,
    origin: &Path,
    vm_dir: &Path,
    host: &HostLimits,
) -> Result<VmConfig, ConfigError> {
    let cfg = parse(text, origin)?;
    let locator = Locator::new(text, origin);
    check_files(&cfg, vm_dir, &locator)?;
    check_host(&cfg, host, &locator)?;
    Ok(cfg)
}

/// The settings as `vm.ron` text, with a header comment.
pub fn to_text(cfg: &VmConfig) -> Result<String, ConfigError> {
    let pretty = ron::ser::PrettyConfig::new()
        .indentor("    ")
        .struct_names(false)
        .separate_tuple_members(false);
    let body = ron::Options::default()
        .to_string_pretty(cfg, pretty)
        .map_err(|e| ConfigError::Write {
            file: PathBuf::from(FILE_NAME),
            message: e.to_string(),
        })?;
    Ok(format!(
        "// Hospes VM settings. Every field is described in docs/settings.md.\n{body}\n"
    ))
}

/// Writes the settings atomically; refuses settings that would not load back.
pub fn save(path: &Path, cfg: &VmConfig) -> Result<(), ConfigError> {
    let text = to_text(cfg)?;
    parse(&text, path)?;
    write_atomic(path, text.as_bytes())
}

/// `text` with the value of `field` (a single string, number or name) replaced by the RON
/// text `value`, keeping everything else (comments, layout) as it is. `None` when the text
/// does not set `field` that way.
pub fn replace_value(text: &str, field: &str, value: &str) -> Option<String> {
    let range = FieldMap::new(text).scalar_value_range(field)?;
    let mut out = String::with_capacity(text.len() + value.len());
    out.push_str(&text[..range.start]);
    out.push_str(value);
    out.push_str(&text[range.end..]);
    Some(out)
}

/// `text` with the list value of top-level setting `field` replaced by `value` (RON
/// text), leaving comments and layout elsewhere untouched; `None` when the text does not
/// set `field` to a list.
pub fn replace_list(text: &str, field: &str, value: &str) -> Option<String> {
    let range = FieldMap::new(text).list_value_range(field)?;
    let mut out = String::with_capacity(text.len() + value.len());
    out.push_str(&text[..range.start]);
    out.push_str(value);
    out.push_str(&text[range.end..]);
    Some(out)
}

/// Sets the `usb` list of the vm.ron at `path` to `devices` (each kept once, in order),
/// editing the list in place so comments and layout stay (the whole file is rewritten
/// only when it sets no `usb` list); an atomic save.
pub fn set_usb(path: &Path, devices: &[UsbDevice]) -> Result<(), ConfigError> {
    let text = read(path)?;
    let mut unique: Vec<UsbDevice> = Vec::with_capacity(devices.len());
    for device in devices {
        if !unique.contains(device) {
            unique.push(*device);
        }
    }
    let quoted: Vec<String> = unique.iter().map(|d| format!("\"{d}\"")).collect();
    let value = format!("[{}]", quoted.join(", "));
    let new_text = match replace_list(&text, "usb", &value) {
        Some(new_text) => new_text,
        None => {
            let mut cfg = parse(&text, path)?;
            cfg.usb = unique.clone();
            to_text(&cfg)?
        }
    };
    if parse(&new_text, path)?.usb != unique {
        return Err(ConfigError::Write {
            file: path.to_owned(),
            message: "the USB list does not survive being written to vm.ron".to_owned(),
        });
    }
    write_atomic(path, new_text.as_bytes())
}

/// The first way `cfg` does not fit `host`, as (setting, problem).
pub fn exceeds_host(cfg: &VmConfig, host: &HostLimits) -> Option<(&'static str, Problem)> {
    if let Some(host_memory) = host.memory.filter(|&m| cfg.memory > m) {
        let problem = Problem::MemoryAboveHost {
            memory: cfg.memory,
            host: host_memory,
        };
        return Some(("memory", problem));
    }
    if let Some(host_cpus) = host.cpus.filter(|&c| cfg.cpus > c) {
        let problem = Problem::TooManyCpus {
            cpus: cfg.cpus,
            host: host_cpus,
        };
        return Some(("cpus", problem));
    }
    None
}

/// Turns positions and setting paths into errors for one text.
struct Locator<'a> {
    map: FieldMap<'a>,
    origin: &'a Path,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str, origin: &'a Path) -> Locator<'a> {
        Locator {
            map: FieldMap::new(text),
            origin,
        }
    }

    /// An error about setting `field`, placed at its value (or the file start if absent).
    fn error(&self, field: &str, problem: Problem) -> ConfigError {
        let at = self
            .map
            .value_position(field)
            .unwrap_or(LineCol { line: 1, column: 1 });
        ConfigError::Invalid {
            file: self.origin.to_owned(),
            line: at.line,
            column: at.column,
            field: field.to_owned(),
            problem,
        }
    }
}

fn from_ron_error(error: &ron::error::SpannedError, text: &str, origin: &Path) -> ConfigError {
    use ron::Error as E;
    let map = FieldMap::new(text);
    let at = LineCol {
        line: error.span.start.line,
        column: error.span.start.col,
    };
    let offset = locate::offset_of(text, at);
    // At a `,` or closing bracket, ron has just read the value it complains about. A
    // missing field is reported at the closing bracket of its own section, though.
    let after_value = matches!(text.as_bytes().get(offset), Some(b',' | b')' | b']' | b'}'))
        && !matches!(error.code, E::MissingStructField { .. });
    let path = if after_value {
        map.path_before(offset)
    } else {
        map.path_at(offset)
    }
    .to_owned();
    let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
    let (field, problem) = match &error.code {
        E::NoSuchStructField {
            expected, found, ..
        } => (
            path,
            Problem::UnknownField {
                found: found.clone(),
                expected: names(expected),
            },
        ),
        E::MissingStructField { field, .. } => (locate::join(&path, field), Problem::MissingField),
        E::DuplicateStructField { .. } => (path, Problem::DuplicateField),
        E::NoSuchEnumVariant {
            expected, found, ..
        } => (
            path,
            Problem::UnknownVariant {
                found: found.clone(),
                expected: names(expected),
            },
        ),
        E::Message(message) => (path, Problem::BadValue(message.clone())),
        E::InvalidValueForType { expected, found } => {
            let expected = if expected.starts_with("struct ") {
                "settings in ( )"
            } else {
                expected
            };
            (
                path,
                Problem::WrongType(format!("expected {expected}, found {found}")),
            )
        }
        E::ExpectedBoolean => (path, Problem::WrongType("expected true or false".into())),
        E::ExpectedInteger | E::ExpectedFloat => {
            (path, Problem::WrongType("expected a whole number".into()))
        }
        E::IntegerOutOfBounds => (
            path,
            Problem::WrongType("the number is out of range".into()),
        ),
        E::ExpectedIdentifier => (
            path,
            Problem::WrongType("expected a name without quotes (like Linux or Restart)".into()),
        ),
        E::ExpectedString | E::ExpectedStringEnd => (
            path,
            Problem::WrongType("expected a string in double quotes".into()),
        ),
        E::ExpectedArray => (path, Problem::WrongType("expected a list in [ ]".into())),
        E::ExpectedDifferentStructName { found, .. } => (
            path,
            Problem::WrongType(format!("expected settings in ( ), found `{found}`")),
        ),
        E::ExpectedStructLike | E::ExpectedNamedStructLike(_) => {
            (path, Problem::WrongType("expected settings in ( )".into()))
        }
        E::ExpectedOption => (path, Problem::WrongType("expected None or a value".into())),
        other => {
            let message = other.to_string();
            let mut chars = message.chars();
            let message = chars
                .next()
                .map(|first| first.to_lowercase().chain(chars).collect())
                .unwrap_or(message);
            (map.path_before(offset).to_owned(), Problem::Syntax(message))
        }
    };
    // ron points somewhere inside or just before a value it rejects; point at its start.
    let value_error = matches!(
        problem,
        Problem::BadValue(_) | Problem::WrongType(_) | Problem::UnknownVariant { .. }
    );
    let at = match map.value_position(&field) {
        Some(start) if value_error => start,
        _ => at,
    };
    ConfigError::Invalid {
        file: origin.to_owned(),
        line: at.line,
        column: at.column,
        field,
        problem,
    }
}

/// Checks that need only the parsed settings.
fn check_schema(cfg: &VmConfig, at: &Locator<'_>) -> Result<(), ConfigError> {
    if cfg.version != CURRENT_VERSION {
        return Err(at.error("version", Problem::UnsupportedVersion(cfg.version)));
    }
    if cfg.name.trim().is_empty() {
        return Err(at.error("name", Problem::BadValue("the name is empty".into())));
    }
    if cfg.name.chars().any(char::is_control) {
        return Err(at.error(
            "name",
            Problem::BadValue("the name contains control characters".into()),
        ));
    }
    if !(1..=MAX_CPUS).contains(&cfg.cpus) {
        return Err(at.error(
            "cpus",
            Problem::BadValue(format!("{} vCPUs: give 1 to {MAX_CPUS}", cfg.cpus)),
        ));
    }
    if cfg.memory < MIN_MEMORY {
        return Err(at.error(
            "memory",
            Problem::BadValue(format!(
                "{} is too little memory (at least {MIN_MEMORY})",
                cfg.memory
            )),
        ));
    }
    match &cfg.boot {
        Boot::Kernel { kernel, initrd, .. } => {
            empty_path_check(kernel, "boot.kernel", at)?;
            if let Some(initrd) = initrd {
                empty_path_check(initrd, "boot.initrd", at)?;
            }
        }
        Boot::Bios { firmware } | Boot::Uefi { firmware, .. } => {
            if let Some(firmware) = firmware {
                empty_path_check(firmware, "boot.firmware", at)?;
            }
        }
    }
    for (i, disk) in cfg.disks.iter().enumerate() {
        empty_path_check(&disk.path, &format!("disks[{i}].path"), at)?;
    }
    if let Some(cdrom) = &cfg.cdrom {
        empty_path_check(cdrom, "cdrom", at)?;
    }
    for (i, cdrom) in cfg.extra_cdroms.iter().enumerate() {
        empty_path_check(cdrom, &format!("extra_cdroms[{i}]"), at)?;
    }
    if let Network::User { forwards, .. } = &cfg.network {
        check_forwards(forwards, at)?;
    }
    for (i, device) in cfg.usb.iter().enumerate() {
        if cfg.usb[..i].contains(device) {
            return Err(at.error(
                &format!("usb[{i}]"),
                Problem::BadValue(format!("USB device {device} is listed twice")),
            ));
        }
    }
    Ok(())
}

fn empty_path_check(path: &Path, field: &str, at: &Locator<'_>) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(at.error(field, Problem::BadValue("the path is empty".into())));
    }
    Ok(())
}

fn check_forwards(forwards: &[PortForward], at: &Locator<'_>) -> Result<(), ConfigError> {
    for (i, forward) in forwards.iter().enumerate() {
        for (port, name) in [(forward.host, "host"), (forward.guest, "guest")] {
            if port == 0 {
                return Err(at.error(
                    &format!("network.forwards[{i}].{name}"),
                    Problem::BadValue("port 0 cannot be forwarded (use 1 to 65535)".into()),
                ));
            }
        }
        let clash = forwards[..i]
            .iter()
            .any(|f| f.host == forward.host && f.protocol == forward.protocol);
        if clash {
            return Err(at.error(
                &format!("network.forwards[{i}].host"),
                Problem::BadValue(format!(
                    "host port {} ({:?}) is forwarded twice",
                    forward.host, forward.protocol
                )),
            ));
        }
    }
    Ok(())
}

/// Checks that files the settings name exist.
fn check_files(cfg: &VmConfig, vm_dir: &Path, at: &Locator<'_>) -> Result<(), ConfigError> {
    let mut files: Vec<(String, &Path)> = Vec::new();
    match &cfg.boot {
        Boot::Kernel { kernel, initrd, .. } => {
            files.push(("boot.kernel".into(), kernel));
            if let Some(initrd) = initrd {
                files.push(("boot.initrd".into(), initrd));
            }
        }
        Boot::Bios { firmware } | Boot::Uefi { firmware, .. } => {
            if let Some(firmware) = firmware {
                files.push(("boot.firmware".into(), firmware));
            }
        }
    }
    for (i, disk) in cfg.disks.iter().enumerate() {
        files.push((format!("disks[{i}].path"), &disk.path));
    }
    if let Some(cdrom) = &cfg.cdrom {
        files.push(("cdrom".into(), cdrom));
    }
    for (i, cdrom) in cfg.extra_cdroms.iter().enumerate() {
        files.push((format!("extra_cdroms[{i}]"), cdrom));
    }
    for (field, path) in files {
        let resolved = VmConfig::resolve(vm_dir, path);
        if !resolved.exists() {
            return Err(at.error(&field, Problem::MissingFile(resolved)));
        }
    }
    Ok(())
}

/// Checks that the VM fits this computer.
fn check_host(cfg: &VmConfig, host: &HostLimits, at: &Locator<'_>) -> Result<(), ConfigError> {
    match exceeds_host(cfg, host) {
        Some((field, problem)) => Err(at.error(field, problem)),
        None => Ok(()),
    }
}
