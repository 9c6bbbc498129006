//! The PCI root complex: bus 0 with up to 32 single-function devices, reached through the
//! legacy configuration mechanism (ports 0xCF8/0xCFC) and ECAM (MMCONFIG).
//!
//! A configuration access goes: vCPU exit -> PIO or MMIO bus -> [`PciConfigIo`] or
//! [`PciConfigMmio`] -> [`PciRoot`] -> the addressed [`PciDevice`]. A write that moves a BAR
//! comes back as [`BarChange`]s; the access device then, with no PCI lock held, hands each
//! one to a [`BarRelocator`], which moves the device on the bus its BARs live on.
//!
//! BARs do not sit on the machine's MMIO bus directly but on a bus of their own behind a
//! [`PciMmioWindow`], the host bridge's forwarding window. An ECAM write arrives while the
//! vCPU holds the machine's MMIO bus for reading; moving a BAR on that same bus would need
//! its write lock and deadlock. The window's own bus has no such reader, and holding no PCI
//! lock while taking it keeps a vCPU in a BAR access and a vCPU moving that BAR apart.

use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::PciError;
use super::config::{BarChange, PciConfig, PciIds};
use crate::bus::{Bus, BusDevice, SharedDevice, lock};

/// Slots on bus 0.
pub const SLOTS: usize = 32;

/// A PCI function: its configuration space, plus `BusDevice` for accesses to its BARs
/// (the bus hands it the BAR base, which names the BAR).
pub trait PciDevice: Send {
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;

    /// Reads configuration dword `reg`.
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config().read_reg(reg)
    }

    /// Writes configuration space; devices with capability state (MSI-X) override this,
    /// call [`PciConfig::write_reg`] and then look at what changed.
    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarChange> {
        self.config_mut().write_reg(reg, offset, data)
    }
}

/// Moves a device's BAR on the machine's MMIO bus. The machine implements it.
pub trait BarRelocator: Send + Sync {
    fn relocate(&self, device: SharedDevice, change: BarChange) -> Result<(), PciError>;
}

/// A PCI function in a machine's [`crate::state::StateRegistry`]: its own
/// [`crate::state::Snapshot`] restores its configuration space ([`PciConfig::restore`]);
/// this wrapper then moves every BAR whose decoded place changed on the bus, through the
/// same [`BarRelocator`] a guest's BAR write takes, with no device lock held.
pub struct PciSaved<T> {
    device: Arc<Mutex<T>>,
    relocator: Arc<dyn BarRelocator>,
}

impl<T> PciSaved<T>
where
    T: PciDevice + BusDevice + crate::state::Snapshot + 'static,
{
    pub fn new(device: Arc<Mutex<T>>, relocator: Arc<dyn BarRelocator>) -> Self {
        Self { device, relocator }
    }
}

/// BAR slots including the expansion ROM.
const BAR_SLOTS: usize = super::config::ROM_SLOT + 1;

fn decoded_bars(config: &PciConfig) -> [(Option<u64>, u64); BAR_SLOTS] {
    std::array::from_fn(|i| (config.bar_mapped(i), config.bar_size(i).unwrap_or(0)))
}

impl<T> crate::state::SavedState for PciSaved<T>
where
    T: PciDevice + BusDevice + crate::state::Snapshot + 'static,
{
    fn save(&self) -> Result<Vec<u8>, crate::state::StateError> {
        lock(&self.device).save_state()
    }

    fn restore(&self, state: &[u8]) -> Result<(), crate::state::StateError> {
        let mut dev = lock(&self.device);
        let before = decoded_bars(dev.config());
        dev.restore_state(state)?;
        let after = decoded_bars(dev.config());
        drop(dev);
        let shared: SharedDevice = self.device.clone();
        for (bar, (old, new)) in before.iter().zip(after).enumerate() {
            if old.0 != new.0 {
                let change = BarChange {
                    bar: bar as u8,
                    old: old.0,
                    new: new.0,
                    len: new.1,
                };
                self.relocator
                    .relocate(shared.clone(), change)
                    .map_err(|e| {
                        crate::state::StateError::device(
                            "PCI function",
                            format!("cannot place BAR{bar}: {e}"),
                        )
                    })?;
            }
        }
        Ok(())
    }
}

/// A BAR move handed to the relocator, with the device it belongs to.
pub struct PendingMove {
    pub device: SharedDevice,
    pub change: BarChange,
}

struct Slot {
    pci: Arc<Mutex<dyn PciDevice>>,
    bus: SharedDevice,
}

/// Bus 0 and its devices.
#[derive(Default)]
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
}

impl PciRoot {
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| None).collect(),
        }
    }

    /// Places `device` at slot `slot` (function 0).
    pub fn add_device<T>(&mut self, slot: usize, device: Arc<Mutex<T>>) -> Result<(), PciError>
    where
        T: PciDevice + BusDevice + 'static,
    {
        let entry = self
            .slots
            .get_mut(slot)
            .ok_or(PciError::SlotOutOfRange { slot })?;
        if entry.is_some() {
            return Err(PciError::SlotBusy { slot });
        }
        *entry = Some(Slot {
            pci: device.clone(),
            bus: device,
        });
        Ok(())
    }

    /// The first free slot.
    pub fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }

    /// The devices by slot, for BAR assignment and tests.
    pub fn devices(
        &self,
    ) -> impl Iterator<Item = (usize, &Arc<Mutex<dyn PciDevice>>, &SharedDevice)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, &s.pci, &s.bus)))
    }

    fn function(&self, bus: u8, dev: u8, func: u8) -> Option<&Slot> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    /// Reads configuration dword `reg` of bus/dev/func; absent functions read all-ones.
    pub fn read(&self, bus: u8, dev: u8, func: u8, reg: usize) -> u32 {
        match self.function(bus, dev, func) {
            Some(s) => lock(&s.pci).read_config(reg),
            None => 0xffff_ffff,
        }
    }

    /// Writes configuration space and returns the BAR moves the machine must apply.
    pub fn write(
        &self,
        bus: u8,
        dev: u8,
        func: u8,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) -> Vec<PendingMove> {
        let Some(s) = self.function(bus, dev, func) else {
            return Vec::new();
        };
        let changes = lock(&s.pci).write_config(reg, offset, data);
        changes
            .into_iter()
            .map(|change| PendingMove {
                device: s.bus.clone(),
                change,
            })
            .collect()
    }
}

fn apply_moves(relocator: Option<&Arc<dyn BarRelocator>>, moves: Vec<PendingMove>) {
    for m in moves {
        match relocator {
            Some(r) => {
                if let Err(e) = r.relocate(m.device, m.change) {
                    crate::guest_warn!("pci: cannot move BAR{}: {e}", m.change.bar);
                }
            }
            None => log::debug!("pci: BAR{} moved with no relocator", m.change.bar),
        }
    }
}

/// Copies `data.len()` bytes of a configuration dword, starting at byte `offset`.
fn dword_to_bytes(value: u32, offset: usize, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = bytes.get(offset + i).copied().unwrap_or(0xff);
    }
}

/// The configuration address register's port (PCI 3.0 §3.2.2.3.2).
pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
/// The reset control register inside the address register's range (byte accesses only).
pub const RESET_CONTROL_PORT: u64 = 0xcf9;
/// The configuration data window's first port; the window is 4 bytes.
pub const CONFIG_DATA_PORT: u64 = 0xcfc;
const CONFIG_DATA_END: u64 = CONFIG_DATA_PORT + 4;

/// Configuration mechanism #1: address register at 0xCF8, data window at 0xCFC..0xCFF.
///
/// Accesses are decoded by port (`base + offset`), so the device works inserted on the PIO
/// bus at 0xCF8 with length 8 or as two ranges, 0xCF8 and 0xCFC with length 4 each. Only a
/// dword access at 0xCF8 is the address register; a byte access at 0xCF9 is the chipset's
/// reset control register, handed to the device given by [`PciConfigIo::with_reset_control`]
/// (with base 0xCF9 and offset 0), or dropped when there is none. Other accesses to
/// 0xCF8..0xCFB read all-ones.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    relocator: Option<Arc<dyn BarRelocator>>,
    reset_control: Option<SharedDevice>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: Arc<Mutex<PciRoot>>, relocator: Option<Arc<dyn BarRelocator>>) -> Self {
        Self {
            root,
            relocator,
            reset_control: None,
            address: 0,
        }
    }

    /// Hands byte accesses to port 0xCF9 to `device` (the Q35 chipset's
    /// [`crate::chipset::ResetControl`]), which cannot sit on the bus beside this device.
    pub fn with_reset_control(mut self, device: SharedDevice) -> Self {
        self.reset_control = Some(device);
        self
    }

    /// The decoded target of the address register, if it is enabled.
    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        (a & 0x8000_0000 != 0).then_some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            ((a & 0xfc) >> 2) as usize,
        ))
    }

    /// The reset control device, for a byte access at 0xCF9.
    fn reset_control(&self, port: u64, len: usize) -> Option<&SharedDevice> {
        (port == RESET_CONTROL_PORT && len == 1)
            .then_some(self.reset_control.as_ref())
            .flatten()
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let port = base.wrapping_add(offset);
        if let Some(dev) = self.reset_control(port, data.len()) {
            lock(dev).read(RESET_CONTROL_PORT, 0, data);
            return;
        }
        match port {
            CONFIG_ADDRESS_PORT if data.len() == 4 => {
                data.copy_from_slice(&self.address.to_le_bytes())
            }
            CONFIG_DATA_PORT..CONFIG_DATA_END => {
                let value = match self.target() {
                    Some((b, d, f, reg)) => lock(&self.root).read(b, d, f, reg),
                    None => 0xffff_ffff,
                };
                dword_to_bytes(value, (port - CONFIG_DATA_PORT) as usize, data);
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let port = base.wrapping_add(offset);
        if let Some(dev) = self.reset_control(port, data.len()) {
            lock(dev).write(RESET_CONTROL_PORT, 0, data);
            return;
        }
        match port {
            CONFIG_ADDRESS_PORT if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b) & 0x80ff_fffc;
            }
            CONFIG_DATA_PORT..CONFIG_DATA_END => {
                let Some((b, d, f, reg)) = self.target() else {
                    return;
                };
                let offset = port - CONFIG_DATA_PORT;
                let moves = lock(&self.root).write(b, d, f, reg, offset, data);
                apply_moves(self.relocator.as_ref(), moves);
            }
            _ => {}
        }
    }
}

/// The address register is the only state of the access device: a guest may have written
/// 0xCF8 and not yet touched 0xCFC when it is saved.
impl crate::state::Snapshot for PciConfigIo {
    fn save_state(&mut self) -> Result<Vec<u8>, crate::state::StateError> {
        crate::state::encode("PCI configuration ports", &self.address)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::state::StateError> {
        let address: u32 = crate::state::decode("PCI configuration ports", state)?;
        self.address = address & 0x80ff_fffc;
        Ok(())
    }
}

/// ECAM: 4 KiB of configuration space per function at `bus << 20 | dev << 15 | fn << 12`.
/// Insert on the MMIO bus at the machine's ECAM base, 1 MiB per bus decoded.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
    relocator: Option<Arc<dyn BarRelocator>>,
}

impl PciConfigMmio {
    pub fn new(root: Arc<Mutex<PciRoot>>, relocator: Option<Arc<dyn BarRelocator>>) -> Self {
        Self { root, relocator }
    }
}

fn ecam_decode(offset: u64) -> (u8, u8, u8, usize, u64) {
    (
        ((offset >> 20) & 0xff) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        ((offset & 0xffc) >> 2) as usize,
        offset & 3,
    )
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let (b, d, f, reg, byte) = ecam_decode(offset);
        if byte as usize + data.len() > 4 {
            data.fill(0xff);
            return;
        }
        let value = lock(&self.root).read(b, d, f, reg);
        dword_to_bytes(value, byte as usize, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (b, d, f, reg, byte) = ecam_decode(offset);
        if byte as usize + data.len() > 4 {
            return;
        }
        let moves = lock(&self.root).write(b, d, f, reg, byte, data);
        apply_moves(self.relocator.as_ref(), moves);
    }
}

/// The host bridge's MMIO forwarding window: insert it on the machine's MMIO bus over the
/// PCI MMIO window; it forwards each access to the BAR bus, where BARs come and go as the
/// guest programs them, or to a movable ECAM window inside it ([`EcamOverlay`]).
pub struct PciMmioWindow {
    bars: Arc<RwLock<Bus>>,
    ecam: Option<Arc<EcamOverlay>>,
}

impl PciMmioWindow {
    pub fn new(bars: Arc<RwLock<Bus>>) -> Self {
        Self { bars, ecam: None }
    }

    /// A window that also decodes `ecam` wherever the chipset currently places it.
    pub fn with_ecam(bars: Arc<RwLock<Bus>>, ecam: Arc<EcamOverlay>) -> Self {
        Self {
            bars,
            ecam: Some(ecam),
        }
    }
}

/// An ECAM window the chipset moves at run time (the Q35 MCH's PCIEXBAR): configuration
/// access over MMIO at whatever base the firmware programs, decoded by the
/// [`PciMmioWindow`] it sits in, so a move changes one field and no bus.
pub struct EcamOverlay {
    /// `(base, len)` while decoding is on.
    range: Mutex<Option<(u64, u64)>>,
    /// Where the window may be: the PCI window holding it.
    limits: (u64, u64),
    /// The root it reaches, once connected (the host bridge that moves the window is
    /// built before the root that holds it).
    config: OnceLock<Mutex<PciConfigMmio>>,
}

impl EcamOverlay {
    /// An overlay allowed anywhere inside `[limits.0, limits.1)`, decoding nothing until
    /// [`connect`](Self::connect)ed and [`set`](Self::set).
    pub fn new(limits: (u64, u64)) -> Self {
        Self {
            range: Mutex::new(None),
            limits,
            config: OnceLock::new(),
        }
    }

    /// Connects the window to `root` (once; later calls are ignored).
    pub fn connect(&self, root: Arc<Mutex<PciRoot>>, relocator: Option<Arc<dyn BarRelocator>>) {
        let _ = self
            .config
            .set(Mutex::new(PciConfigMmio::new(root, relocator)));
    }

    /// Moves the window to `(base, len)`, or turns it off. A window outside the limits
    /// (over RAM or the APIC pages) is refused: decoding stays off and false is returned.
    pub fn set(&self, range: Option<(u64, u64)>) -> bool {
        let fits = range.is_none_or(|(base, len)| {
            base >= self.limits.0 && base.checked_add(len).is_some_and(|e| e <= self.limits.1)
        });
        *lock(&self.range) = if fits { range } else { None };
        fits
    }

    /// The window now decoded.
    pub fn range(&self) -> Option<(u64, u64)> {
        *lock(&self.range)
    }

    /// The offset of `addr` in the window, if the window holds the access.
    fn hit(&self, addr: u64, len: usize) -> Option<(u64, u64)> {
        let (base, size) = (*lock(&self.range))?;
        let off = addr.checked_sub(base)?;
        (off.checked_add(len as u64)? <= size).then_some((base, off))
    }
}

fn read_lock(bus: &RwLock<Bus>) -> std::sync::RwLockReadGuard<'_, Bus> {
    // A panic while the lock was held leaves the map as it was: keep serving.
    bus.read().unwrap_or_else(|e| e.into_inner())
}

impl BusDevice for PciMmioWindow {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let Some(addr) = base.checked_add(offset) else {
            return;
        };
        if let Some(ecam) = &self.ecam
            && let Some((b, off)) = ecam.hit(addr, data.len())
            && let Some(config) = ecam.config.get()
        {
            return lock(config).read(b, off, data);
        }
        read_lock(&self.bars).read(addr, data);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(addr) = base.checked_add(offset) else {
            return;
        };
        if let Some(ecam) = &self.ecam
            && let Some((b, off)) = ecam.hit(addr, data.len())
            && let Some(config) = ecam.config.get()
        {
            return lock(config).write(b, off, data);
        }
        read_lock(&self.bars).write(addr, data);
    }
}

/// Moves BARs on a BAR bus (the one behind a [`PciMmioWindow`]).
impl BarRelocator for RwLock<Bus> {
    fn relocate(&self, device: SharedDevice, change: BarChange) -> Result<(), PciError> {
        let mut bus = self.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = change.old {
            bus.remove(old)?;
        }
        if let Some(new) = change.new {
            bus.insert(device, new, change.len)?;
        }
        Ok(())
    }
}

/// The host bridge at 00:00.0: an Intel 440FX (8086:1237), which is what PC firmware and
/// guests expect to find first.
pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    pub fn new() -> Self {
        Self {
            config: PciConfig::new(PciIds {
                vendor: 0x8086,
                device: 0x1237,
                revision: 2,
                class: 0x06,
                subclass: 0x00,
                prog_if: 0,
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
}

/// The host bridge's configuration space (command bits, latency timer) is all it has.
impl crate::state::Snapshot for HostBridge {
    fn save_state(&mut self) -> Result<Vec<u8>, crate::state::StateError> {
        crate::state::encode("PCI host bridge", &self.config.save())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::state::StateError> {
        let saved: super::config::PciConfigState = crate::state::decode("PCI host bridge", state)?;
        self.config.restore("PCI host bridge", &saved).map(drop)
    }
}

impl BusDevice for HostBridge {
    fn read(&mut self, _base: u64, _offset: u64, _data: &mut [u8]) {}
    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{BarKind, COMMAND_MEMORY, REG_BAR0, REG_COMMAND_STATUS};

    #[test]
    fn the_ecam_overlay_decodes_where_it_is_set_and_only_inside_the_window() {
        let mut root = PciRoot::new();
        root.add_device(0, Arc::new(Mutex::new(HostBridge::new())))
            .unwrap();
        let root = Arc::new(Mutex::new(root));
        let ecam = Arc::new(EcamOverlay::new((0x8000_0000, 0xfec0_0000)));
        ecam.connect(root, None);
        let bars = Arc::new(RwLock::new(Bus::new()));
        let mut window = PciMmioWindow::with_ecam(bars, ecam.clone());
        let mut id = [0u8; 4];
        window.read(0x8000_0000, 0x3000_0000, &mut id);
        assert_eq!(
            id, [0xff; 4],
            "nothing decodes before the chipset enables ECAM"
        );
        assert!(ecam.set(Some((0xb000_0000, 0x1000_0000))));
        window.read(0x8000_0000, 0x3000_0000, &mut id);
        assert_eq!(
            u32::from_le_bytes(id),
            0x1237_8086,
            "00:00.0's ids through ECAM"
        );
        assert!(
            !ecam.set(Some((0x1000_0000, 0x1000_0000))),
            "over RAM: refused"
        );
        assert_eq!(ecam.range(), None);
        window.read(0x8000_0000, 0x3000_0000, &mut id);
        assert_eq!(id, [0xff; 4]);
    }

    struct Dummy {
        config: PciConfig,
        last_write: Option<(u64, u64)>,
    }

    impl PciDevice for Dummy {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfig {
            &mut self.config
        }
    }

    impl BusDevice for Dummy {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, _data: &[u8]) {
            self.last_write = Some((base, offset));
        }
    }

    impl crate::state::Snapshot for Dummy {
        fn save_state(&mut self) -> Result<Vec<u8>, crate::state::StateError> {
            crate::state::encode("dummy", &self.config.save())
        }
        fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::state::StateError> {
            let s: super::super::config::PciConfigState = crate::state::decode("dummy", state)?;
            self.config.restore("dummy", &s).map(drop)
        }
    }

    fn setup() -> (Bus, Bus, Arc<RwLock<Bus>>, Arc<Mutex<Dummy>>) {
        let mut root = PciRoot::new();
        root.add_device(0, Arc::new(Mutex::new(HostBridge::new())))
            .unwrap();
        let mut config = PciConfig::new(PciIds {
            vendor: 0x1234,
            device: 0x5678,
            revision: 0,
            class: 0xff,
            subclass: 0,
            prog_if: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        });
        config.add_bar(0, 0x2000, BarKind::Mem32, false).unwrap();
        config.add_bar(2, 0x10_0000, BarKind::Mem64, true).unwrap();
        let dummy = Arc::new(Mutex::new(Dummy {
            config,
            last_write: None,
        }));
        root.add_device(3, dummy.clone()).unwrap();
        let root = Arc::new(Mutex::new(root));
        let reloc = Arc::new(RwLock::new(Bus::new()));
        let mut pio = Bus::new();
        let r: Arc<dyn BarRelocator> = reloc.clone();
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(root.clone(), Some(r.clone())))),
            0xcf8,
            8,
        )
        .unwrap();
        let mut mmio = Bus::new();
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(root, Some(r)))),
            0xb000_0000,
            0x100_0000,
        )
        .unwrap();
        (pio, mmio, reloc, dummy)
    }

    fn cf8(pio: &Bus, dev: u32, reg: u32) {
        pio.write(0xcf8, &(0x8000_0000 | dev << 11 | reg << 2).to_le_bytes());
    }

    fn io_read32(pio: &Bus, dev: u32, reg: u32) -> u32 {
        cf8(pio, dev, reg);
        let mut b = [0u8; 4];
        pio.read(0xcfc, &mut b);
        u32::from_le_bytes(b)
    }

    fn io_write32(pio: &Bus, dev: u32, reg: u32, v: u32) {
        cf8(pio, dev, reg);
        pio.write(0xcfc, &v.to_le_bytes());
    }

    #[test]
    fn enumerates_through_cf8_cfc() {
        let (pio, _, _, _) = setup();
        assert_eq!(io_read32(&pio, 0, 0), 0x1237_8086);
        assert_eq!(io_read32(&pio, 3, 0), 0x5678_1234);
        assert_eq!(io_read32(&pio, 1, 0), 0xffff_ffff);
        // Class code of the host bridge, then a byte read at 0xCFE (device id high half).
        assert_eq!(io_read32(&pio, 0, 2) >> 16, 0x0600);
        cf8(&pio, 0, 0);
        let mut b = [0u8; 2];
        pio.read(0xcfe, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x1237);
        // Disabled address register: all-ones.
        pio.write(0xcf8, &0u32.to_le_bytes());
        let mut d = [0u8; 4];
        pio.read(0xcfc, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn sizes_bars_through_cf8_cfc() {
        let (pio, _, _, _) = setup();
        io_write32(&pio, 3, 4, 0xffff_ffff);
        assert_eq!(io_read32(&pio, 3, 4), 0xffff_e000);
        io_write32(&pio, 3, 6, 0xffff_ffff);
        io_write32(&pio, 3, 7, 0xffff_ffff);
        assert_eq!(io_read32(&pio, 3, 6), 0xfff0_000c);
        assert_eq!(io_read32(&pio, 3, 7), 0xffff_ffff);
    }

    #[test]
    fn enumerates_and_sizes_through_ecam() {
        let (_, mmio, _, _) = setup();
        let ecam = |dev: u64, reg: u64| 0xb000_0000 + (dev << 15) + reg;
        let mut b = [0u8; 4];
        mmio.read(ecam(3, 0), &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x5678_1234);
        mmio.read(ecam(2, 0), &mut b);
        assert_eq!(b, [0xff; 4]);
        // Function 1 and bus 1 are absent.
        mmio.read(ecam(3, 0) + (1 << 12), &mut b);
        assert_eq!(b, [0xff; 4]);
        mmio.read(ecam(3, 0) + (1 << 20), &mut b);
        assert_eq!(b, [0xff; 4]);
        mmio.write(ecam(3, 0x10), &[0xff; 4]);
        mmio.read(ecam(3, 0x10), &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xffff_e000);
        let mut w = [0u8; 2];
        mmio.read(ecam(3, 2), &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x5678);
    }

    #[test]
    fn works_inserted_as_two_ranges() {
        let mut root = PciRoot::new();
        root.add_device(0, Arc::new(Mutex::new(HostBridge::new())))
            .unwrap();
        let io = Arc::new(Mutex::new(PciConfigIo::new(
            Arc::new(Mutex::new(root)),
            None,
        )));
        let mut pio = Bus::new();
        pio.insert(io.clone(), CONFIG_ADDRESS_PORT, 4).unwrap();
        pio.insert(io, CONFIG_DATA_PORT, 4).unwrap();
        assert_eq!(io_read32(&pio, 0, 0), 0x1237_8086);
        // A data-port write is not mistaken for the address register.
        cf8(&pio, 0, 0);
        pio.write(CONFIG_DATA_PORT, &0x1234_5678u32.to_le_bytes());
        let mut a = [0u8; 4];
        pio.read(CONFIG_ADDRESS_PORT, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_0000);
        let mut w = [0u8; 2];
        pio.read(0xcfe, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1237);
    }

    #[derive(Default)]
    struct Byte {
        value: u8,
        at: Option<(u64, u64)>,
    }

    impl BusDevice for Byte {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(self.value);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.value = data[0];
            self.at = Some((base, offset));
        }
    }

    #[test]
    fn byte_accesses_at_cf9_reach_the_reset_control_register() {
        let (pio, _, _, _) = setup();
        // Without a reset control device, 0xCF9 is dropped and reads all-ones.
        pio.write(RESET_CONTROL_PORT, &[0x06]);
        let mut b = [0u8];
        pio.read(RESET_CONTROL_PORT, &mut b);
        assert_eq!(b, [0xff]);

        let reset = Arc::new(Mutex::new(Byte::default()));
        let io = PciConfigIo::new(Arc::new(Mutex::new(PciRoot::new())), None)
            .with_reset_control(reset.clone());
        let mut pio = Bus::new();
        pio.insert(Arc::new(Mutex::new(io)), CONFIG_ADDRESS_PORT, 8)
            .unwrap();
        pio.write(RESET_CONTROL_PORT, &[0x06]);
        assert_eq!(lock(&reset).at, Some((RESET_CONTROL_PORT, 0)));
        pio.read(RESET_CONTROL_PORT, &mut b);
        assert_eq!(b, [0x06]);
        // The dword address register still works around it; a word at 0xCF9 is neither.
        pio.write(CONFIG_ADDRESS_PORT, &0x8000_0800u32.to_le_bytes());
        let mut a = [0u8; 4];
        pio.read(CONFIG_ADDRESS_PORT, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_0800);
        pio.write(RESET_CONTROL_PORT, &[0x0e, 0x00]);
        assert_eq!(lock(&reset).value, 0x06);
    }

    #[test]
    fn guest_bar_programming_moves_device_on_mmio_bus() {
        let (pio, _, reloc, dummy) = setup();
        io_write32(&pio, 3, 4, 0xe000_0000);
        io_write32(&pio, 3, 6, 0x0010_0000);
        io_write32(&pio, 3, 7, 0x1);
        // Nothing decodes until memory space is enabled.
        assert!(!reloc.read().unwrap().write(0xe000_0004, &[1]));
        io_write32(
            &pio,
            3,
            REG_COMMAND_STATUS as u32,
            u32::from(COMMAND_MEMORY),
        );
        assert!(reloc.read().unwrap().write(0xe000_0004, &[1]));
        assert_eq!(lock(&dummy).last_write, Some((0xe000_0000, 4)));
        assert!(reloc.read().unwrap().write(0x1_0010_0008, &[1]));
        assert_eq!(lock(&dummy).last_write, Some((0x1_0010_0000, 8)));
        // Move BAR0; the old range is gone.
        io_write32(&pio, 3, REG_BAR0 as u32, 0xe000_4000);
        assert!(!reloc.read().unwrap().write(0xe000_0004, &[1]));
        assert!(reloc.read().unwrap().write(0xe000_4004, &[1]));
    }

    #[test]
    fn a_restored_function_decodes_its_bars_where_the_guest_had_moved_them() {
        use crate::state::SavedState;
        let (pio, _, reloc, dummy) = setup();
        io_write32(&pio, 3, 4, 0xe000_4000);
        io_write32(&pio, 3, 6, 0x0020_0000);
        io_write32(&pio, 3, 7, 0x1);
        io_write32(&pio, 3, REG_COMMAND_STATUS as u32, 0x6);
        let r: Arc<dyn BarRelocator> = reloc.clone();
        let saved = PciSaved::new(dummy.clone(), r).save().unwrap();
        // A 0xCF8 latch left pointing at 00:03.0 register 1.
        cf8(&pio, 3, 1);
        let io = PciConfigIo::new(Arc::new(Mutex::new(PciRoot::new())), None);
        let mut io = io;
        use crate::state::Snapshot;
        io.address = 0x8000_1804;
        let latch = io.save_state().unwrap();

        // A fresh boot of the same machine: the firmware-style placement differs.
        let (pio2, _, reloc2, dummy2) = setup();
        io_write32(&pio2, 3, 4, 0xc000_0000);
        io_write32(&pio2, 3, REG_COMMAND_STATUS as u32, 0x2);
        assert!(reloc2.read().unwrap().write(0xc000_0004, &[1]));
        let r2: Arc<dyn BarRelocator> = reloc2.clone();
        PciSaved::new(dummy2.clone(), r2).restore(&saved).unwrap();
        assert!(
            !reloc2.read().unwrap().write(0xc000_0004, &[1]),
            "the boot-time place is gone"
        );
        assert!(reloc2.read().unwrap().write(0xe000_4004, &[1]));
        assert_eq!(lock(&dummy2).last_write, Some((0xe000_4000, 4)));
        assert!(reloc2.read().unwrap().write(0x1_0020_0008, &[1]));
        assert_eq!(io_read32(&pio2, 3, REG_COMMAND_STATUS as u32) & 0xffff, 0x6);
        assert_eq!(io_read32(&pio2, 3, 4), io_read32(&pio, 3, 4));

        let mut io2 = PciConfigIo::new(Arc::new(Mutex::new(PciRoot::new())), None);
        io2.restore_state(&latch).unwrap();
        assert_eq!(io2.address, 0x8000_1804);
        assert!(io2.restore_state(&[0xff]).is_err());
        assert_eq!(io2.address, 0x8000_1804);

        // Garbage is refused and the function keeps working where it was.
        let r3: Arc<dyn BarRelocator> = reloc2.clone();
        assert!(
            PciSaved::new(dummy2.clone(), r3.clone())
                .restore(&saved[..3])
                .is_err()
        );
        assert!(PciSaved::new(dummy2, r3).restore(&[0xff; 9]).is_err());
        assert!(reloc2.read().unwrap().write(0xe000_4004, &[1]));
    }
}
