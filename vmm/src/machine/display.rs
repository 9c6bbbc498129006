//! The helper's screen and input, across boots: the shared [`Display`], the
//! [`InputRouter`] and the VNC server live as long as the process; each boot adds the
//! display adapter to PCI and points the input router at that boot's PS/2 controller
//! ([`DisplayStack::attach`]). QMP's `screendump`, `query-vnc` and `input-send-event` are
//! served from here.
//!
//! `main` builds a [`DisplayStack`] from `--display`/`--vnc` (or vm.ron) before the VM
//! starts, calls [`DisplayStack::attach`] in its device registration step right after
//! PCI is set up, and hands the stack to the QMP bridge.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::{Machine, MachineError};
use crate::machine::pci::PciSetup;
use crate::vnc::{VncConfig, VncListen, VncServer, read_password_file};
use crate::vstate::fb_slot::{FB_SLOT, KvmFbSlot};
use hospes_core::control::ControlError;
use hospes_core::control::display::{Button, InputEvent, KeyValue, VncClientInfo, VncInfo};
use hospes_core::error_chain;
use hospes_devices::bus::lock;
use hospes_devices::display::stdvga::{DISPI_PORT, DISPI_PORT_LEN, StdVga, VRAM_SIZE};
use hospes_devices::display::vga::{
    VGA_MONO_PORT_BASE, VGA_MONO_PORT_LEN, VGA_PORT_BASE, VGA_PORT_LEN, VGA_WINDOW_BASE,
    VGA_WINDOW_LEN, Vga,
};
use hospes_devices::display::{FbSlot, refresh};
use hospes_devices::framebuffer::{Display, FbMemory};
use hospes_devices::input::{InputRouter, InputSink, Ps2Input, qcode_to_xt};
use hospes_devices::pci::root::PciSaved;
use hospes_devices::virtio::VirtioDevice;
use hospes_devices::virtio::gpu::Gpu;
use hospes_devices::virtio::input::{InputKind, VirtioInput};

/// The emulated display adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisplayKind {
    /// std-VGA / bochs (PCI 1234:1111).
    StdVga,
    /// virtio-gpu, 2D.
    VirtioGpu,
    /// No screen.
    None,
}

impl std::str::FromStr for DisplayKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "std-vga" | "std" | "stdvga" => Ok(Self::StdVga),
            "virtio-gpu" | "virtio" => Ok(Self::VirtioGpu),
            "none" => Ok(Self::None),
            _ => Err(format!("'{s}' is not std-vga, virtio-gpu or none")),
        }
    }
}

/// What the display stack is built from.
#[derive(Clone, Debug)]
pub struct DisplayOptions {
    pub kind: DisplayKind,
    pub vnc: Option<VncListen>,
    pub vnc_password_file: Option<PathBuf>,
    /// The desktop name VNC clients show.
    pub name: String,
    /// The preferred mode the EDID announces.
    pub resolution: (u32, u32),
}

/// See the module docs.
pub struct DisplayStack {
    kind: DisplayKind,
    resolution: (u32, u32),
    display: Arc<Display>,
    input: Arc<InputRouter>,
    vnc: Option<VncServer>,
    /// Pointer position and buttons for QMP `abs`/`btn` events.
    qmp_pointer: Mutex<(u32, u32, u8)>,
    /// The legacy VGA of the boot in progress (firmware boot), drawn on demand before a
    /// screendump so it shows what the guest wrote last, not the last refresh tick.
    legacy: Mutex<Weak<Mutex<Vga>>>,
}

impl DisplayStack {
    /// Starts the VNC server if asked; nothing touches the VM yet.
    pub fn start(opts: &DisplayOptions) -> Result<Self, MachineError> {
        let display = Arc::new(Display::new());
        let input = Arc::new(InputRouter::new());
        let vnc = match &opts.vnc {
            Some(listen) => {
                let password = match &opts.vnc_password_file {
                    Some(f) => Some(read_password_file(f).map_err(setup_error)?),
                    None => None,
                };
                let cfg = VncConfig {
                    listen: listen.clone(),
                    password,
                    name: opts.name.clone(),
                    write_timeout: crate::vnc::WRITE_TIMEOUT,
                };
                Some(VncServer::start(cfg, display.clone(), input.clone()).map_err(setup_error)?)
            }
            None => None,
        };
        Ok(Self {
            kind: opts.kind,
            resolution: opts.resolution,
            display,
            input,
            vnc,
            qmp_pointer: Mutex::new((0, 0, 0)),
            legacy: Mutex::new(Weak::new()),
        })
    }

    /// Where client input goes: the USB tablet and keyboard register here too.
    pub fn input(&self) -> Arc<InputRouter> {
        self.input.clone()
    }

    /// The shared screen.
    pub fn display(&self) -> &Arc<Display> {
        &self.display
    }

    /// The virtio devices of this boot's display (virtio-gpu), for the PCI setup.
    /// With a display, a virtio-input keyboard and tablet come too; the input router
    /// uses them once the guest's driver starts them.
    pub fn virtio_devices(&self) -> Vec<Box<dyn VirtioDevice>> {
        let mut out: Vec<Box<dyn VirtioDevice>> = Vec::new();
        if self.kind == DisplayKind::VirtioGpu {
            out.push(Box::new(Gpu::new(self.display.clone(), self.resolution)));
        }
        if self.kind != DisplayKind::None {
            match (
                VirtioInput::new(InputKind::Keyboard),
                VirtioInput::new(InputKind::Tablet),
            ) {
                (Ok(k), Ok(t)) => {
                    self.input.set_virtio(Some(k.handle()), Some(t.handle()));
                    out.push(Box::new(k));
                    out.push(Box::new(t));
                }
                (Err(e), _) | (_, Err(e)) => log::warn!("no virtio-input: {e}"),
            }
        }
        out
    }

    /// The device registration step for this boot: the adapter on PCI (and its DISPI
    /// ports), its refresh thread, and PS/2 input.
    pub fn attach(&self, machine: &mut Machine, pci: &mut PciSetup) -> Result<(), MachineError> {
        let ps2: Arc<Mutex<dyn Ps2Input>> = machine.i8042.clone();
        self.input.set_ps2(Some(ps2));
        if self.kind != DisplayKind::StdVga {
            return Ok(());
        }
        let vram = Arc::new(FbMemory::new(VRAM_SIZE).map_err(setup_error)?);
        let slot: Box<dyn FbSlot> =
            Box::new(KvmFbSlot::new(machine.vm_fd.clone(), FB_SLOT, vram.clone()));
        let slot = Arc::new(Mutex::new(slot));
        let mut vga = StdVga::new(vram, slot.clone(), self.display.clone(), self.resolution)
            .map_err(setup_error)?;
        // Under firmware boot the VGA BIOS is the adapter's option ROM, behind its
        // expansion ROM BAR, where SeaBIOS finds it as it does on QEMU.
        let vga_rom = machine
            .config
            .firmware
            .as_ref()
            .and_then(|f| f.vga_rom.as_ref());
        if let Some(path) = vga_rom {
            let image = std::fs::read(path).map_err(|e| {
                MachineError::Setup(format!(
                    "cannot read the VGA BIOS {}: {}",
                    path.display(),
                    error_chain(&e)
                ))
            })?;
            vga = vga.with_option_rom(image).map_err(setup_error)?;
        }
        let legacy = vga.vga();
        let vga = Arc::new(Mutex::new(vga));
        pci.add_device(vga.clone()).map_err(setup_error)?;
        // One adapter per machine: its name needs no slot. Its state holds its PCI
        // configuration; PciSaved moves restored BARs on the bus.
        machine.states.add(
            "display/stdvga",
            Arc::new(PciSaved::new(vga.clone(), pci.relocator())),
        );
        let mut pio = machine.pio_bus.write().unwrap_or_else(|e| e.into_inner());
        pio.insert(vga.clone(), DISPI_PORT, DISPI_PORT_LEN)?;
        if machine.chipset.is_none() {
            drop(pio);
            refresh::spawn(self.display.clone(), Arc::downgrade(&slot)).map_err(setup_error)?;
            return Ok(());
        }
        // Under firmware boot the adapter is a whole VGA: its ports and the 0xa0000
        // window (guest RAM leaves a hole there), for the VGA BIOS, boot loaders and text
        // screens.
        pio.insert(vga.clone(), VGA_PORT_BASE, VGA_PORT_LEN)?;
        pio.insert(vga.clone(), VGA_MONO_PORT_BASE, VGA_MONO_PORT_LEN)?;
        drop(pio);
        machine
            .mmio_bus
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vga, VGA_WINDOW_BASE, VGA_WINDOW_LEN)?;
        refresh::spawn_with_vga(
            self.display.clone(),
            Arc::downgrade(&slot),
            Arc::downgrade(&legacy),
        )
        .map_err(setup_error)?;
        *lock(&self.legacy) = Arc::downgrade(&legacy);
        Ok(())
    }

    /// QMP `screendump`.
    pub fn screendump(&self, path: &Path) -> Result<(), ControlError> {
        let legacy = lock(&self.legacy).upgrade();
        if let Some(vga) = legacy {
            lock(&vga).refresh();
        }
        let s = self
            .display
            .surface()
            .ok_or_else(|| ControlError::Failed("the guest shows nothing".into()))?;
        hospes_devices::framebuffer::png::save(&s, path)
            .map_err(|e| ControlError::Failed(error_chain(&e)))
    }

    /// QMP `query-vnc`.
    pub fn query_vnc(&self) -> VncInfo {
        let Some(vnc) = &self.vnc else {
            return VncInfo::disabled();
        };
        let info = vnc.info();
        let (host, service) = match vnc.listen() {
            VncListen::Unix(p) => (p.display().to_string(), String::new()),
            VncListen::Tcp(a) => (a.ip().to_string(), a.port().to_string()),
        };
        VncInfo {
            enabled: true,
            host: Some(host),
            service: Some(service),
            family: Some(info.family.into()),
            auth: Some(info.auth.into()),
            clients: Some(
                info.clients
                    .into_iter()
                    .map(|c| {
                        let (host, service) = c
                            .peer
                            .rsplit_once(':')
                            .map_or((c.peer.clone(), String::new()), |(h, p)| {
                                (h.to_string(), p.to_string())
                            });
                        VncClientInfo {
                            host,
                            service,
                            family: info.family.into(),
                            websocket: false,
                        }
                    })
                    .collect(),
            ),
        }
    }

    /// QMP `input-send-event`.
    pub fn input_send_event(&self, events: &[InputEvent]) -> Result<(), ControlError> {
        let (w, h) = self
            .display
            .surface()
            .map_or((640, 480), |s| (s.width, s.height));
        for ev in events {
            match ev {
                InputEvent::Key(k) => {
                    let xt = match &k.key {
                        KeyValue::Qcode(name) => qcode_to_xt(name)
                            .ok_or_else(|| ControlError::Failed(format!("unknown key '{name}'")))?,
                        KeyValue::Number(n) => u16::try_from(*n)
                            .map_err(|_| ControlError::Failed(format!("bad key number {n}")))?,
                    };
                    self.input.key(0, Some(xt), k.down);
                }
                InputEvent::Btn(b) => {
                    let bit = match b.button {
                        Button::Left => 1,
                        Button::Middle => 2,
                        Button::Right => 4,
                        Button::WheelUp => 8,
                        Button::WheelDown => 16,
                        _ => 0,
                    };
                    let mut p = lock(&self.qmp_pointer);
                    p.2 = if b.down { p.2 | bit } else { p.2 & !bit };
                    self.input.pointer(p.0, p.1, p.2, w, h);
                }
                InputEvent::Abs(m) => {
                    let mut p = lock(&self.qmp_pointer);
                    let v = m.value.clamp(0, 0x7fff) as u64;
                    match m.axis {
                        hospes_core::control::display::Axis::X => {
                            p.0 = (v * u64::from(w) / 0x8000) as u32
                        }
                        hospes_core::control::display::Axis::Y => {
                            p.1 = (v * u64::from(h) / 0x8000) as u32
                        }
                    }
                    self.input.pointer(p.0, p.1, p.2, w, h);
                }
                InputEvent::Rel(m) => {
                    let mut p = lock(&self.qmp_pointer);
                    let d = m.value.clamp(-0x7fff, 0x7fff);
                    match m.axis {
                        hospes_core::control::display::Axis::X => {
                            p.0 = (i64::from(p.0) + d).clamp(0, i64::from(w) - 1) as u32
                        }
                        hospes_core::control::display::Axis::Y => {
                            p.1 = (i64::from(p.1) + d).clamp(0, i64::from(h) - 1) as u32
                        }
                    }
                    self.input.pointer(p.0, p.1, p.2, w, h);
                }
            }
        }
        Ok(())
    }
}

fn setup_error(e: impl std::error::Error) -> MachineError {
    MachineError::Setup(error_chain(&e))
}
