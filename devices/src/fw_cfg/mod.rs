//! The fw_cfg device: QEMU's firmware configuration interface, through which SeaBIOS and
//! OVMF learn the machine (CPU count, memory map, boot order) and fetch its ACPI tables.
//!
//! Layout in I/O space (`qemu:docs/specs/fw_cfg.rst`, "Register Locations", x86); the
//! machine inserts one [`FwCfg`] twice and the `base` of each access tells them apart:
//!
//! ```text
//! 0x510  selector (LE16 write)           0x514  DMA address, BE64: high half at +0,
//! 0x511  data (byte reads, next byte)           low half at +4; writing the low half
//!                                               (or all 8 bytes) starts a transfer;
//!                                               reads return "QEMU CFG"
//! ```
//!
//! Data flow: the guest writes a key to the selector, which picks an *item* and resets the
//! item offset; each data read returns the byte at the offset and advances it (zeros past
//! the end). Items are the numbered ones (signature, ID, CPU count, RAM size, boot menu,
//! anything given to [`FwCfg::add_item`]) and *files*: named blobs at keys from 0x20 up,
//! sorted by name, listed in the file directory at key 0x19. The DMA interface
//! (`dma.rs`) does the same against guest memory in one exit: the guest writes the
//! address of a `FWCfgDmaAccess` and the device selects, reads, skips or writes, then
//! reports in the structure's control word.
//!
//! Lazily generated files ([`FwCfg::add_lazy_files`]): the helper's ACPI tables must
//! describe what the firmware programmed (PCIEXBAR, BARs), so they are built from a
//! generator the device runs on demand. A group is generated when the guest first selects
//! the directory (so it lists true sizes) and generated once more, for good, when the
//! guest first selects one of its files: by then the firmware has set the machine up.
//! A second result shorter than the size the directory announced is padded with zeros,
//! so a firmware that trusts the directory reads a consistent blob. [`FwCfg::reset`]
//! drops the generated content, so the next boot generates afresh.
//!
//! Writes: only files added with [`FwCfg::add_file_writable`] take guest writes (the
//! table loader's WRITE_POINTER uses them), through DMA or the data port; the rest is
//! read-only and a write to it is logged (rate-limited) and ignored.
//!
//! [`e820_table`], [`TableLoader`] and [`bootorder()`] build the content of the files
//! `etc/e820`, `etc/table-loader` and `bootorder`.

mod bootorder;
mod dma;
mod e820;
mod loader;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use bootorder::{BOOTORDER_HALT, ahci_path, bootorder, rom_path, virtio_blk_path};
pub use e820::{E820_ACPI, E820_ENTRY_SIZE, E820_NVS, E820_RAM, E820_RESERVED, e820_table};
pub use loader::{AllocZone, LOADER_ENTRY_SIZE, LoaderError, TableLoader};

use crate::bus::BusDevice;
use crate::virtio::GuestMemory;

/// Where the selector/data pair sits in I/O space (fw_cfg.rst, "Register Locations").
pub const FW_CFG_PORT_SEL: u64 = 0x510;
/// Length of the selector/data range: selector at +0 (16 bits), data at +1.
pub const FW_CFG_PORT_SEL_LEN: u64 = 2;
/// Where the DMA address register sits in I/O space.
pub const FW_CFG_PORT_DMA: u64 = 0x514;
/// Length of the DMA address register (64 bits).
pub const FW_CFG_PORT_DMA_LEN: u64 = 8;

/// Item keys (`qemu:include/standard-headers/linux/qemu_fw_cfg.h`, SeaBIOS
/// `src/fw/paravirt.c`).
pub const FW_CFG_SIGNATURE: u16 = 0x00;
pub const FW_CFG_ID: u16 = 0x01;
/// RAM size in bytes, LE64.
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
/// Whether the guest runs without graphics, LE16 (SeaBIOS then offers a serial console).
pub const FW_CFG_NOGRAPHIC: u16 = 0x04;
/// CPUs present at boot, LE16.
pub const FW_CFG_NB_CPUS: u16 = 0x05;
/// Whether the firmware shows a boot menu, LE16.
pub const FW_CFG_BOOT_MENU: u16 = 0x0e;
/// Most CPUs the machine can hold, LE16.
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
/// The file directory.
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// Key of the first file; file `i` (in name order) has key `FW_CFG_FILE_FIRST + i`.
pub const FW_CFG_FILE_FIRST: u16 = 0x20;

/// Selector bit 14: "write channel", ignored since QEMU 2.9 (writability is per item).
const FW_CFG_WRITE_CHANNEL: u16 = 0x4000;
/// Selector bits 0..13: the entry inside the generic or the architecture range.
const FW_CFG_ENTRY_MASK: u16 = 0x3fff;

/// Most files the directory holds: keys 0x20..0x3fff of the generic range.
pub const FW_CFG_MAX_FILES: usize = (FW_CFG_ENTRY_MASK - FW_CFG_FILE_FIRST) as usize + 1;
/// Size of a name field in the directory and the table loader, NUL included.
pub const FW_CFG_NAME_SIZE: usize = 56;
/// Longest file name: the field keeps a terminating NUL.
pub const FW_CFG_MAX_NAME_LEN: usize = FW_CFG_NAME_SIZE - 1;

/// What key 0 reads ("Signature").
const SIGNATURE: &[u8; 4] = b"QEMU";
/// What the DMA address register reads (0x51454d5520434647, big-endian).
const DMA_SIGNATURE: &[u8; 8] = b"QEMU CFG";
/// FW_CFG_ID bits: traditional interface (always), DMA interface.
const ID_TRADITIONAL: u32 = 1 << 0;
const ID_DMA: u32 = 1 << 1;
/// Bytes per directory entry: BE32 size, BE16 select, BE16 reserved, name.
const DIR_ENTRY_SIZE: usize = 8 + FW_CFG_NAME_SIZE;

/// Errors from setting up the device's items.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("file name {0:?} is empty, longer than 55 bytes or holds a NUL")]
    BadName(String),
    #[error("a file named {0:?} exists already")]
    DuplicateFile(String),
    #[error("the directory holds at most {FW_CFG_MAX_FILES} files")]
    TooManyFiles,
    #[error("key {0:#06x} belongs to the device itself or to its files")]
    ReservedKey(u16),
    #[error("an item of {0} bytes does not fit the 32-bit size field")]
    TooLarge(usize),
}

/// Generator of a group of lazy files: returns one blob per name, in the order given.
pub type LazyGenerator = Box<dyn FnMut() -> Vec<Vec<u8>> + Send>;

/// Rebuilds a file's content each time the guest selects it, from the device's other
/// files (e.g. what the guest wrote into a writable one).
pub type SelectHook = Box<dyn FnMut(&FwCfg) -> Vec<u8> + Send>;

/// A named blob listed in the directory.
struct File {
    name: String,
    data: Vec<u8>,
    /// Runs on every select of this file and replaces its content.
    on_select: Option<SelectHook>,
    /// For files the guest may write: the content to restore at reset.
    pristine: Option<Vec<u8>>,
    /// Index of the lazy group producing this file.
    lazy: Option<usize>,
}

/// How far a lazy group got since the last reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LazyState {
    /// Not generated: the files are empty.
    Stale,
    /// Generated for the directory; the sizes are announced.
    Sized,
    /// Generated when a file was first selected; frozen until reset.
    Final,
}

struct LazyGroup {
    names: Vec<String>,
    generate: LazyGenerator,
    state: LazyState,
}

/// The fw_cfg device.
pub struct FwCfg {
    mem: GuestMemory,
    /// Numbered items (signature, ID, CPU count, ...), by key.
    items: BTreeMap<u16, Vec<u8>>,
    /// Files sorted by name; the index is the key minus [`FW_CFG_FILE_FIRST`].
    files: Vec<File>,
    /// The file directory (key 0x19), rendered each time the guest selects it.
    dir: Vec<u8>,
    lazy: Vec<LazyGroup>,
    /// Selected key, write-channel bit dropped.
    selector: u16,
    /// Offset inside the selected item.
    offset: usize,
    /// High half of the DMA address, written before the low half.
    dma_high: u32,
}

impl FwCfg {
    /// A device with the signature, the ID (traditional and DMA) and an empty directory,
    /// doing DMA into `mem`.
    pub fn new(mem: GuestMemory) -> Self {
        let mut items = BTreeMap::new();
        items.insert(FW_CFG_SIGNATURE, SIGNATURE.to_vec());
        items.insert(FW_CFG_ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        Self {
            mem,
            items,
            files: Vec::new(),
            dir: Vec::new(),
            lazy: Vec::new(),
            selector: FW_CFG_SIGNATURE,
            offset: 0,
            dma_high: 0,
        }
    }

    /// Sets key 0x05, the CPUs present at boot.
    pub fn set_nb_cpus(&mut self, n: u16) {
        self.items.insert(FW_CFG_NB_CPUS, n.to_le_bytes().to_vec());
    }

    /// Sets key 0x0f, the most CPUs the machine can hold.
    pub fn set_max_cpus(&mut self, n: u16) {
        self.items.insert(FW_CFG_MAX_CPUS, n.to_le_bytes().to_vec());
    }

    /// Sets key 0x03, the RAM size in bytes.
    pub fn set_ram_size(&mut self, bytes: u64) {
        self.items
            .insert(FW_CFG_RAM_SIZE, bytes.to_le_bytes().to_vec());
    }

    /// Sets key 0x0e, whether the firmware offers a boot menu (SeaBIOS reads two bytes).
    pub fn set_boot_menu(&mut self, on: bool) {
        self.items
            .insert(FW_CFG_BOOT_MENU, u16::from(on).to_le_bytes().to_vec());
    }

    /// Sets a numbered item, replacing one already there. Keys of the generic range below
    /// 0x20 and of the architecture range (0x8000..0xbfff, e.g. SeaBIOS' 0x8003 e820
    /// reservations) are accepted; the signature, ID, directory, file keys and keys with
    /// the write-channel bit are refused.
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let entry = key & FW_CFG_ENTRY_MASK;
        let generic = key & !FW_CFG_ENTRY_MASK == 0;
        if key & FW_CFG_WRITE_CHANNEL != 0
            || matches!(key, FW_CFG_SIGNATURE | FW_CFG_ID | FW_CFG_FILE_DIR)
            || (generic && entry >= FW_CFG_FILE_FIRST)
        {
            return Err(FwCfgError::ReservedKey(key));
        }
        check_size(data.len())?;
        self.items.insert(key, data);
        Ok(())
    }

    /// Adds a read-only file. Files are kept in name order, so adding one renumbers the
    /// files after it: add every file before the guest runs.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        self.insert_file(name, data, false, None)
    }

    /// Adds a file the guest may overwrite (in place, never resized), e.g. the target of
    /// a table-loader WRITE_POINTER. [`FwCfg::reset`] restores `data`.
    pub fn add_file_writable(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        self.insert_file(name, data, true, None)
    }

    /// Adds a read-only file whose content `hook` rebuilds each time the guest selects it
    /// (`data` until then). The hook should keep the size `data` has, which the directory
    /// announces.
    pub fn add_file_on_select(
        &mut self,
        name: &str,
        data: Vec<u8>,
        hook: SelectHook,
    ) -> Result<(), FwCfgError> {
        self.insert_file(name, data, false, None)?;
        if let Ok(i) = self.find_file(name)
            && let Some(f) = self.files.get_mut(i)
        {
            f.on_select = Some(hook);
        }
        Ok(())
    }

    /// Adds files whose content `generate` builds on demand (see the module doc): it runs
    /// when the guest first selects the directory or one of these files, and once more
    /// when the guest first selects one of these files after reading the directory. It
    /// must return one blob per name, in the order of `names`. Nothing is added if any
    /// name is refused.
    pub fn add_lazy_files(
        &mut self,
        names: &[&str],
        generate: LazyGenerator,
    ) -> Result<(), FwCfgError> {
        for (i, name) in names.iter().enumerate() {
            check_name(name)?;
            if self.find_file(name).is_ok() || names.get(..i).is_some_and(|b| b.contains(name)) {
                return Err(FwCfgError::DuplicateFile((*name).to_owned()));
            }
        }
        if self.files.len() + names.len() > FW_CFG_MAX_FILES {
            return Err(FwCfgError::TooManyFiles);
        }
        let group = self.lazy.len();
        for name in names {
            self.insert_file(name, Vec::new(), false, Some(group))?;
        }
        self.lazy.push(LazyGroup {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            generate,
            state: LazyState::Stale,
        });
        Ok(())
    }

    /// The current content of a file: for a writable one, what the guest wrote into it.
    pub fn file_data(&self, name: &str) -> Option<&[u8]> {
        let i = self.find_file(name).ok()?;
        self.files.get(i).map(|f| f.data.as_slice())
    }

    /// Machine reset: the signature is selected, the DMA address cleared, writable files
    /// get their first content back and lazy files are dropped until next needed.
    pub fn reset(&mut self) {
        self.selector = FW_CFG_SIGNATURE;
        self.offset = 0;
        self.dma_high = 0;
        for g in &mut self.lazy {
            g.state = LazyState::Stale;
        }
        for f in &mut self.files {
            if let Some(p) = &f.pristine {
                f.data.clone_from(p);
            } else if f.lazy.is_some() {
                f.data = Vec::new();
            }
        }
    }

    fn insert_file(
        &mut self,
        name: &str,
        data: Vec<u8>,
        writable: bool,
        lazy: Option<usize>,
    ) -> Result<(), FwCfgError> {
        check_name(name)?;
        check_size(data.len())?;
        let at = match self.find_file(name) {
            Ok(_) => return Err(FwCfgError::DuplicateFile(name.to_owned())),
            Err(at) => at,
        };
        if self.files.len() >= FW_CFG_MAX_FILES {
            return Err(FwCfgError::TooManyFiles);
        }
        let pristine = writable.then(|| data.clone());
        self.files.insert(
            at,
            File {
                name: name.to_owned(),
                data,
                on_select: None,
                pristine,
                lazy,
            },
        );
        Ok(())
    }

    /// Index of the file named `name`, or where it would go.
    fn find_file(&self, name: &str) -> Result<usize, usize> {
        self.files.binary_search_by(|f| f.name.as_str().cmp(name))
    }

    /// The file a key selects.
    fn file_index(key: u16) -> Option<usize> {
        (FW_CFG_FILE_FIRST..=FW_CFG_ENTRY_MASK)
            .contains(&key)
            .then(|| usize::from(key - FW_CFG_FILE_FIRST))
    }

    fn render_directory(&mut self) {
        let mut dir = Vec::with_capacity(4 + self.files.len() * DIR_ENTRY_SIZE);
        // Both fit: at most FW_CFG_MAX_FILES files, each at most u32::MAX bytes.
        let count = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        dir.extend_from_slice(&count.to_be_bytes());
        for (i, f) in self.files.iter().enumerate() {
            let size = u32::try_from(f.data.len()).unwrap_or(u32::MAX);
            let key = u16::try_from(i)
                .ok()
                .and_then(|i| FW_CFG_FILE_FIRST.checked_add(i))
                .unwrap_or(u16::MAX);
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            dir.extend_from_slice(&name_field(&f.name).unwrap_or([0; FW_CFG_NAME_SIZE]));
        }
        self.dir = dir;
    }

    /// Selects an item, as a selector write or a DMA select does.
    fn select(&mut self, key: u16) {
        self.selector = key & !FW_CFG_WRITE_CHANNEL;
        self.offset = 0;
        if self.selector == FW_CFG_FILE_DIR {
            for g in 0..self.lazy.len() {
                if self
                    .lazy
                    .get(g)
                    .is_some_and(|g| g.state == LazyState::Stale)
                {
                    self.generate(g, LazyState::Sized);
                }
            }
            self.render_directory();
        } else if let Some(g) = Self::file_index(self.selector)
            .and_then(|i| self.files.get(i))
            .and_then(|f| f.lazy)
            && self
                .lazy
                .get(g)
                .is_some_and(|g| g.state != LazyState::Final)
        {
            self.generate(g, LazyState::Final);
        }
        if let Some(i) = Self::file_index(self.selector)
            && let Some(mut hook) = self.files.get_mut(i).and_then(|f| f.on_select.take())
        {
            let data = hook(self);
            if let Some(f) = self.files.get_mut(i) {
                f.data = data;
                f.on_select = Some(hook);
            }
        }
    }

    /// Runs lazy group `g`'s generator and stores its blobs, leaving the group in `to`.
    fn generate(&mut self, g: usize, to: LazyState) {
        let Some(group) = self.lazy.get_mut(g) else {
            return;
        };
        let announced = group.state == LazyState::Sized;
        group.state = to;
        let mut blobs = (group.generate)().into_iter();
        if blobs.len() != group.names.len() {
            log::error!(
                "fw_cfg: generator of {:?} returned {} blobs",
                group.names,
                blobs.len()
            );
        }
        let names = group.names.clone();
        for name in &names {
            let mut blob = blobs.next().unwrap_or_default();
            if check_size(blob.len()).is_err() {
                log::error!("fw_cfg: generated {name} of {} bytes dropped", blob.len());
                blob = Vec::new();
            }
            let Some(file) = self
                .find_file(name)
                .ok()
                .and_then(|i| self.files.get_mut(i))
            else {
                continue;
            };
            if announced && blob.len() < file.data.len() {
                blob.resize(file.data.len(), 0);
            } else if announced && blob.len() > file.data.len() {
                log::warn!(
                    "fw_cfg: {name} grew from {} to {} bytes after the directory was read",
                    file.data.len(),
                    blob.len()
                );
            }
            file.data = blob;
        }
    }

    /// The bytes of the item a key selects.
    fn item(&self, key: u16) -> &[u8] {
        if key == FW_CFG_FILE_DIR {
            &self.dir
        } else if let Some(i) = Self::file_index(key) {
            self.files.get(i).map_or(&[], |f| &f.data)
        } else {
            self.items.get(&key).map_or(&[], Vec::as_slice)
        }
    }

    /// The bytes of the item a key selects, if the guest may write them.
    fn writable_item(&mut self, key: u16) -> Option<&mut Vec<u8>> {
        let file = self.files.get_mut(Self::file_index(key)?)?;
        file.pristine.is_some().then_some(&mut file.data)
    }

    /// A data-port read: the byte at the offset, or zero past the end.
    fn read_data(&mut self) -> u8 {
        match self.item(self.selector).get(self.offset) {
            Some(&b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }

    /// A data-port write: only into writable files, never past their end.
    fn write_data(&mut self, b: u8) {
        let (key, offset) = (self.selector, self.offset);
        match self.writable_item(key).and_then(|d| d.get_mut(offset)) {
            Some(slot) => {
                *slot = b;
                self.offset += 1;
            }
            None => crate::guest_warn!("fw_cfg: data write to item {key:#x}+{offset} ignored"),
        }
    }

    fn write_dma_register(&mut self, offset: u64, data: &[u8]) {
        // The register is big-endian: the guest's bytes are the address, most significant
        // first (SeaBIOS writes `cpu_to_be32(addr)` with one outl at +4).
        match (offset, data.len()) {
            (0, 4) => self.dma_high = u32::from_be_bytes(array(data)),
            (4, 4) => {
                let addr =
                    (u64::from(self.dma_high) << 32) | u64::from(u32::from_be_bytes(array(data)));
                self.dma_high = 0;
                self.dma_transfer(addr);
            }
            (0, 8) => {
                self.dma_high = 0;
                self.dma_transfer(u64::from_be_bytes(array(data)));
            }
            _ => crate::guest_warn!(
                "fw_cfg: {}-byte write to DMA register +{offset} ignored",
                data.len()
            ),
        }
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        match base {
            // Any read of the pair reads data; wider ones take successive bytes, as QEMU
            // does on x86.
            FW_CFG_PORT_SEL => data.iter_mut().for_each(|b| *b = self.read_data()),
            FW_CFG_PORT_DMA => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .saturating_add(i);
                    *b = DMA_SIGNATURE.get(at).copied().unwrap_or(0);
                }
            }
            _ => {}
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        match (base, offset, data) {
            (FW_CFG_PORT_SEL, 0, &[lo, hi]) => self.select(u16::from_le_bytes([lo, hi])),
            (FW_CFG_PORT_SEL, _, &[b]) => self.write_data(b),
            (FW_CFG_PORT_DMA, _, _) => self.write_dma_register(offset, data),
            _ => crate::guest_warn!(
                "fw_cfg: {}-byte write to {:#x} ignored",
                data.len(),
                base.wrapping_add(offset)
            ),
        }
    }
}

/// `data` as an array, zero-padded or cut: callers have matched its length already.
fn array<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.iter_mut().zip(data).for_each(|(d, s)| *d = *s);
    a
}

fn check_name(name: &str) -> Result<(), FwCfgError> {
    if name.is_empty() || name.len() > FW_CFG_MAX_NAME_LEN || name.contains('\0') {
        return Err(FwCfgError::BadName(name.to_owned()));
    }
    Ok(())
}

fn check_size(len: usize) -> Result<(), FwCfgError> {
    u32::try_from(len)
        .map(|_| ())
        .map_err(|_| FwCfgError::TooLarge(len))
}

/// A name as the directory and the table loader store it: NUL-padded to 56 bytes. `None`
/// if it does not fit with its NUL.
pub(crate) fn name_field(name: &str) -> Option<[u8; FW_CFG_NAME_SIZE]> {
    if name.len() > FW_CFG_MAX_NAME_LEN {
        return None;
    }
    let mut field = [0; FW_CFG_NAME_SIZE];
    field
        .iter_mut()
        .zip(name.as_bytes())
        .for_each(|(d, s)| *d = *s);
    Some(field)
}
