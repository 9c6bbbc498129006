//! Library subcommands: `list`, `create`, `show`, `check`, `edit`, `rm`, `import`,
//! `rename`. Each parses into [`LibraryCommand`], calls [`hospes_core::library`] or
//! [`hospes_core::config`], and prints the result through [`Output`].

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::{CtlError, Output, config_error_json};
use hospes_core::config::{
    self, Boot, DiskFormat, HostLimits, Network, NetworkCard, Size, SoundCard, VmConfig,
};
use hospes_core::library::{CreateRequest, Deleted, ImportMode, Library, Machine, Preset};

/// Library subcommands.
#[derive(Debug, Subcommand)]
pub enum LibraryCommand {
    /// List the VMs in the library
    List,
    /// Create a VM from a preset, sized for this computer unless told otherwise
    Create(CreateArgs),
    /// Print a VM's settings (its vm.ron)
    Show {
        /// The VM's name or id
        name: String,
    },
    /// Check a settings file; exit 1 with the error's line, column and field if broken
    Check {
        /// The vm.ron file
        file: PathBuf,
    },
    /// Edit a VM's settings in $VISUAL or $EDITOR; a broken file is never saved
    Edit {
        /// The VM's name or id
        name: String,
    },
    /// Delete a VM; its disk images are kept unless --delete-disks is given
    Rm {
        /// The VM's name or id
        name: String,
        /// Delete the disk images in the VM's folder too (never those outside it)
        #[arg(long)]
        delete_disks: bool,
    },
    /// Bring a VM folder (one with a vm.ron) into the library, by copy or move
    Import {
        /// The folder
        dir: PathBuf,
        /// Move the folder instead of copying it
        #[arg(long = "move")]
        move_dir: bool,
    },
    /// Rename a VM (its id and folder stay the same)
    Rename {
        /// The VM's name or id
        name: String,
        /// The new name
        new_name: String,
    },
}

/// Options of `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The VM's name
    pub name: String,
    /// The starting point
    #[arg(long, value_enum, default_value_t = PresetArg::Linux)]
    pub preset: PresetArg,
    /// Guest memory, like 4G or 512M (default: sized from this computer's RAM)
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<Size>,
    /// Number of vCPUs (default: half this computer's cores, capped)
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Size of the new disk image, like 40G; 0 for no disk (default: by preset, capped by
    /// free space)
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<Size>,
    /// Format of the new disk image (qcow2 needs qemu-img)
    #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
    pub disk_format: FormatArg,
    /// An install image to attach as CD-ROM
    #[arg(long, value_name = "FILE")]
    pub iso: Option<PathBuf>,
    /// The Windows drivers disc (virtio-win.iso) as a second CD-ROM (windows11 preset;
    /// default: /usr/share/virtio-win/virtio-win.iso if installed)
    #[arg(long, value_name = "FILE")]
    pub drivers_iso: Option<PathBuf>,
    /// A Linux kernel to boot directly (kernel preset)
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// An initrd for the kernel (kernel preset)
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line (kernel preset; default "console=ttyS0")
    #[arg(long, value_name = "TEXT")]
    pub cmdline: Option<String>,
}

/// `--preset` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// A Linux desktop: BIOS (SeaBIOS), std-VGA, virtio disk, network, sound
    Linux,
    /// Windows 11: UEFI with Secure Boot and TPM, SATA disk, e1000e, HD Audio, std-VGA
    Windows11,
    /// Direct kernel boot: serial console, no display, no disk
    Kernel,
}

impl From<PresetArg> for Preset {
    fn from(arg: PresetArg) -> Preset {
        match arg {
            PresetArg::Linux => Preset::Linux,
            PresetArg::Windows11 => Preset::Windows11,
            PresetArg::Kernel => Preset::Kernel,
        }
    }
}

/// `--disk-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Sparse raw image (the host can loop-mount it)
    Raw,
    /// QEMU copy-on-write v2
    Qcow2,
}

/// Runs a library subcommand.
pub fn run(command: LibraryCommand, out: &Output) -> Result<(), CtlError> {
    match command {
        LibraryCommand::List => list(&Library::open_default()?, out),
        LibraryCommand::Create(args) => create(&Library::open_default()?, args, out),
        LibraryCommand::Show { name } => show(&Library::open_default()?, &name, out),
        LibraryCommand::Check { file } => check(&file, out),
        LibraryCommand::Edit { name } => edit(&Library::open_default()?, &name, out),
        LibraryCommand::Rm { name, delete_disks } => {
            remove(&Library::open_default()?, &name, delete_disks, out)
        }
        LibraryCommand::Import { dir, move_dir } => {
            let mode = if move_dir {
                ImportMode::Move
            } else {
                ImportMode::Copy
            };
            import(&Library::open_default()?, &dir, mode, out)
        }
        LibraryCommand::Rename { name, new_name } => {
            rename(&Library::open_default()?, &name, &new_name, out)
        }
    }
}

/// A VM as JSON: id, name, folder, and its settings or its error.
pub fn machine_json(machine: &Machine) -> Value {
    match &machine.config {
        Ok(cfg) => json!({
            "id": machine.id,
            "name": cfg.name,
            "dir": machine.dir,
            "ok": true,
            "config": cfg,
        }),
        Err(error) => json!({
            "id": machine.id,
            "name": machine.name(),
            "dir": machine.dir,
            "ok": false,
            "error": config_error_json(error),
        }),
    }
}

fn os_label(cfg: &VmConfig) -> String {
    format!("{:?}", cfg.os)
}

fn list(library: &Library, out: &Output) -> Result<(), CtlError> {
    let machines = library.list()?;
    let value = Value::Array(machines.iter().map(machine_json).collect());
    if machines.is_empty() {
        return out.emit(
            "No VMs yet. Create one with: hospesctl create NAME --preset linux",
            &value,
        );
    }
    let mut rows = vec![[
        "NAME".to_owned(),
        "ID".to_owned(),
        "OS".to_owned(),
        "CPUS".to_owned(),
        "MEMORY".to_owned(),
        "DISKS".to_owned(),
    ]];
    let mut problems = Vec::new();
    for machine in &machines {
        match &machine.config {
            Ok(cfg) => rows.push([
                cfg.name.clone(),
                machine.id.clone(),
                os_label(cfg),
                cfg.cpus.to_string(),
                cfg.memory.to_string(),
                cfg.disks.len().to_string(),
            ]),
            Err(error) => {
                rows.push([
                    machine.id.clone(),
                    machine.id.clone(),
                    "broken".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                ]);
                problems.push(error.to_string());
            }
        }
    }
    let mut text = table(&rows);
    for problem in problems {
        let _ = writeln!(text, "broken: {problem}");
    }
    out.emit(&text, &value)
}

/// Left-aligned columns two spaces apart, the last one unpadded.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// A few lines describing a VM's settings, for people.
fn summary(machine: &Machine, cfg: &VmConfig) -> String {
    let mut text = format!(
        "{} (id {})\n  folder:  {}\n  os:      {:?}\n  cpus:    {}\n  memory:  {}\n",
        cfg.name,
        machine.id,
        machine.dir.display(),
        cfg.os,
        cfg.cpus,
        cfg.memory
    );
    let boot = match &cfg.boot {
        Boot::Kernel { kernel, .. } => format!("kernel {}", kernel.display()),
        Boot::Bios { .. } => "BIOS".to_owned(),
        Boot::Uefi {
            tpm, secure_boot, ..
        } => match (secure_boot, tpm) {
            (true, true) => "UEFI with Secure Boot and TPM",
            (true, false) => "UEFI with Secure Boot",
            (false, true) => "UEFI with TPM",
            (false, false) => "UEFI",
        }
        .to_owned(),
    };
    let _ = writeln!(text, "  boot:    {boot}");
    for disk in &cfg.disks {
        let path = VmConfig::resolve(&machine.dir, &disk.path);
        let size =
            fs::metadata(&path).map_or_else(|_| "?".to_owned(), |m| Size(m.len()).to_string());
        let _ = writeln!(
            text,
            "  disk:    {} ({:?}, {size})",
            disk.path.display(),
            disk.format
        );
    }
    if let Some(cdrom) = &cfg.cdrom {
        let _ = writeln!(text, "  cd-rom:  {}", cdrom.display());
    }
    for cdrom in &cfg.extra_cdroms {
        let _ = writeln!(text, "  cd-rom:  {}", cdrom.display());
    }
    if let Network::User { mac, card, .. } = &cfg.network {
        let card = match card {
            NetworkCard::Virtio => "virtio-net",
            NetworkCard::E1000e => "e1000e",
        };
        let _ = writeln!(text, "  network: user (passt), {card}, MAC {mac}");
    }
    if cfg.sound {
        let card = match cfg.sound_card {
            SoundCard::Virtio => "virtio-snd",
            SoundCard::Hda => "Intel HD Audio",
        };
        let _ = writeln!(text, "  sound:   {card} (PipeWire)");
    }
    text
}

fn create(library: &Library, args: CreateArgs, out: &Output) -> Result<(), CtlError> {
    let request = CreateRequest {
        name: args.name,
        preset: args.preset.into(),
        memory: args.memory,
        cpus: args.cpus,
        disk_size: args.disk_size,
        disk_format: match args.disk_format {
            FormatArg::Raw => DiskFormat::Raw,
            FormatArg::Qcow2 => DiskFormat::Qcow2,
        },
        iso: args.iso,
        drivers_iso: args.drivers_iso,
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
    };
    let machine = library.create(&request)?;
    let text = match &machine.config {
        Ok(cfg) => format!("Created {}", summary(&machine, cfg)),
        Err(error) => format!("Created {}, but it does not load: {error}", machine.id),
    };
    out.emit(&text, &machine_json(&machine))
}

fn show(library: &Library, name: &str, out: &Output) -> Result<(), CtlError> {
    let machine = library.find(name)?;
    if out.is_json() {
        let value = machine_json(&machine);
        out.emit("", &value)?;
    } else {
        let text = config::read(&machine.config_path())?;
        out.emit(&text, &Value::Null)?;
    }
    match machine.config {
        Ok(_) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn check(file: &Path, out: &Output) -> Result<(), CtlError> {
    if !file.exists() {
        return Err(CtlError::FileNotFound(file.to_owned()));
    }
    let cfg = config::load(file)?;
    out.emit(
        &format!("{}: ok ({})", file.display(), cfg.name),
        &json!({ "file": file, "ok": true, "config": cfg }),
    )
}

fn rename(library: &Library, name: &str, new_name: &str, out: &Output) -> Result<(), CtlError> {
    let old = library.find(name)?;
    let old_name = old.name().to_owned();
    let machine = library.rename(name, new_name)?;
    out.emit(
        &format!(
            "Renamed {old_name:?} to {:?} (its id stays {})",
            machine.name(),
            machine.id
        ),
        &machine_json(&machine),
    )
}

fn remove(library: &Library, name: &str, delete_disks: bool, out: &Output) -> Result<(), CtlError> {
    let machine = library.find(name)?;
    let label = machine.name().to_owned();
    let deleted = library.delete(&machine.id, delete_disks)?;
    let mut text = format!("Deleted {label:?}.");
    if !deleted.deleted_disks.is_empty() {
        let _ = write!(text, "\nDeleted its disk images:");
        for disk in &deleted.deleted_disks {
            let _ = write!(text, "\n  {}", disk.display());
        }
    }
    if !deleted.kept_disks.is_empty() {
        let _ = write!(text, "\nKept its disk images:");
        for disk in &deleted.kept_disks {
            let _ = write!(text, "\n  {}", disk.display());
        }
    }
    out.emit(&text, &deleted_json(&deleted))
}

fn deleted_json(deleted: &Deleted) -> Value {
    json!({
        "id": deleted.id,
        "dir": deleted.dir,
        "dir_removed": deleted.dir_removed,
        "deleted_disks": deleted.deleted_disks,
        "kept_disks": deleted.kept_disks,
    })
}

fn import(library: &Library, dir: &Path, mode: ImportMode, out: &Output) -> Result<(), CtlError> {
    if !dir.exists() {
        return Err(CtlError::FileNotFound(dir.to_owned()));
    }
    let machine = library.import(dir, mode)?;
    let how = match mode {
        ImportMode::Copy => "copied",
        ImportMode::Move => "moved",
    };
    out.emit(
        &format!(
            "Imported {:?} as {} ({how} from {})",
            machine.name(),
            machine.id,
            dir.display()
        ),
        &machine_json(&machine),
    )
}

/// The editor command: `$VISUAL`, else `$EDITOR`, else `vi`.
fn editor_command() -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|v| v.to_string_lossy().into_owned())
        .find(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned())
}

/// Runs the editor on `file`. The command may carry arguments (`code --wait`).
fn run_editor(editor: &str, file: &Path) -> Result<(), CtlError> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("hospesctl-edit")
        .arg(file)
        .status()
        .map_err(|e| CtlError::Editor {
            editor: editor.to_owned(),
            reason: e.to_string(),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(CtlError::Editor {
            editor: editor.to_owned(),
            reason: format!("it exited with {status}; nothing was saved"),
        })
    }
}

/// Asks on stderr whether to edit again; reads the answer from stdin. End of input is no.
fn ask_edit_again() -> bool {
    eprint!("Edit again? [Y/n] ");
    let _ = io::stderr().flush();
    let mut answer = String::new();
    match io::stdin().lock().read_line(&mut answer) {
        Ok(0) | Err(_) => {
            eprintln!();
            false
        }
        Ok(_) => !answer.trim().to_lowercase().starts_with('n'),
    }
}

fn edit(library: &Library, name: &str, out: &Output) -> Result<(), CtlError> {
    let machine = library.find(name)?;
    let path = machine.config_path();
    let original = config::read(&path)?;
    let temp = machine
        .dir
        .join(format!(".vm.ron.edit-{}.ron", std::process::id()));
    let temp_error = |source| CtlError::TempFile {
        path: temp.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(temp_error)?;
    file.write_all(original.as_bytes()).map_err(temp_error)?;
    drop(file);
    let editor = editor_command();
    let limits = HostLimits::detect();
    loop {
        if let Err(error) = run_editor(&editor, &temp) {
            let _ = fs::remove_file(&temp);
            return Err(error);
        }
        let text = fs::read_to_string(&temp).map_err(temp_error)?;
        if text == original {
            let _ = fs::remove_file(&temp);
            return out.emit(
                "No changes.",
                &json!({ "id": machine.id, "changed": false }),
            );
        }
        let checked = config::validate(&text, &path, &machine.dir, &limits)
            .map_err(CtlError::from)
            .and_then(|cfg| {
                library.check_name(&cfg.name, Some(&machine.id))?;
                Ok(cfg)
            });
        match checked {
            Ok(_) => {
                if config::read(&path)? != original {
                    return Err(CtlError::EditNotSaved {
                        reason: "vm.ron changed while you were editing".to_owned(),
                        kept: temp,
                    });
                }
                config::write_atomic(&path, text.as_bytes())?;
                let _ = fs::remove_file(&temp);
                let saved = Machine {
                    config: config::load_with(&path, &limits),
                    ..machine
                };
                return out.emit(
                    &format!("Saved {}.", path.display()),
                    &json!({ "id": saved.id, "changed": true, "machine": machine_json(&saved) }),
                );
            }
            Err(error) => {
                eprintln!("hospesctl: {error}");
                if !ask_edit_again() {
                    return Err(CtlError::EditNotSaved {
                        reason: format!("not saved: {error}"),
                        kept: temp,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lays_out_tables_in_columns() {
        let rows = [
            ["NAME".to_owned(), "ID".to_owned(), "X".to_owned()],
            [
                "Debian 12".to_owned(),
                "debian-12".to_owned(),
                "1".to_owned(),
            ],
        ];
        assert_eq!(
            table(&rows),
            "NAME       ID         X\nDebian 12  debian-12  1\n"
        );
    }
}
