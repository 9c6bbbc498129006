//! The VGA register file: misc output, input status, sequencer, graphics controller,
//! attribute controller, CRTC and DAC, as the guest reaches them through ports
//! 0x3B4..0x3DF (one byte per port access).
//!
//! Data flow: [`Regs::write`] stores a value and says what it changes for the picture
//! ([`Change`]): nothing, something the next render finds by comparing (cursor, start
//! address, mode geometry), or every pixel (palette, DAC, font select). [`Regs::read`]
//! answers reads; reading input status 1 toggles the retrace and display-enable bits so
//! polling loops end, and resets the attribute controller's index/data flip-flop.

/// Number of registers in each indexed file (indices past them read 0, writes are dropped).
pub const SEQ_REGS: usize = 5;
pub const GC_REGS: usize = 9;
pub const CRTC_REGS: usize = 0x19;
pub const ATTR_REGS: usize = 0x15;
/// DAC entries, three 6-bit components each.
pub const DAC_ENTRIES: usize = 256;

/// Ports (IBM VGA).
pub const PORT_ATTR: u16 = 0x3c0;
pub const PORT_ATTR_READ: u16 = 0x3c1;
pub const PORT_MISC_WRITE: u16 = 0x3c2;
pub const PORT_SEQ_INDEX: u16 = 0x3c4;
pub const PORT_SEQ_DATA: u16 = 0x3c5;
pub const PORT_DAC_MASK: u16 = 0x3c6;
pub const PORT_DAC_READ_INDEX: u16 = 0x3c7;
pub const PORT_DAC_WRITE_INDEX: u16 = 0x3c8;
pub const PORT_DAC_DATA: u16 = 0x3c9;
pub const PORT_FEATURE_READ: u16 = 0x3ca;
pub const PORT_MISC_READ: u16 = 0x3cc;
pub const PORT_GC_INDEX: u16 = 0x3ce;
pub const PORT_GC_DATA: u16 = 0x3cf;
pub const PORT_CRTC_INDEX_MONO: u16 = 0x3b4;
pub const PORT_CRTC_DATA_MONO: u16 = 0x3b5;
pub const PORT_STATUS1_MONO: u16 = 0x3ba;
pub const PORT_CRTC_INDEX_COLOR: u16 = 0x3d4;
pub const PORT_CRTC_DATA_COLOR: u16 = 0x3d5;
pub const PORT_STATUS1_COLOR: u16 = 0x3da;

/// Misc output bit 0: CRTC and input status 1 at 0x3Dx (colour) instead of 0x3Bx (mono).
const MISC_COLOR: u8 = 0x01;
/// Input status 1: display disabled (bit 0) and vertical retrace (bit 3).
const ST01_TOGGLE: u8 = 0x09;
/// Attribute index bit 5: palette address source (the screen shows while it is set).
pub const AR_INDEX_PAS: u8 = 0x20;
/// CRTC 0x11 bit 7: CR00..CR07 write-protected (CR07 bit 4 stays writable).
const CR11_PROTECT: u8 = 0x80;
const CR07_LINE_COMPARE8: u8 = 0x10;

/// Sequencer registers read by the renderer.
pub const SR_CLOCKING: usize = 0x01;
pub const SR_CHAR_MAP: usize = 0x03;
/// Attribute registers read by the renderer.
pub const AR_MODE: usize = 0x10;
pub const AR_PLANE_ENABLE: usize = 0x12;
pub const AR_COLOR_SELECT: usize = 0x14;

/// The register file in saved state (the DAC as a `Vec`: serde has no 768-byte arrays).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegsState {
    misc: u8,
    feature: u8,
    st01: u8,
    seq_index: u8,
    seq: [u8; SEQ_REGS],
    gc_index: u8,
    gc: [u8; GC_REGS],
    crtc_index: u8,
    crtc: [u8; CRTC_REGS],
    attr_index: u8,
    attr_data_next: bool,
    attr: [u8; ATTR_REGS],
    dac_mask: u8,
    dac_read_index: u8,
    dac_write_index: u8,
    dac_component: u8,
    dac_reading: bool,
    dac: Vec<u8>,
}

/// What a register write means for the picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Nothing shown changed.
    None,
    /// The next render compares and finds what changed.
    Dirty,
    /// Every pixel may have changed (palette, DAC, font, clocking).
    Full,
}

/// The register file.
pub struct Regs {
    pub misc: u8,
    pub feature: u8,
    st01: u8,
    pub seq_index: u8,
    pub seq: [u8; SEQ_REGS],
    pub gc_index: u8,
    pub gc: [u8; GC_REGS],
    pub crtc_index: u8,
    pub crtc: [u8; CRTC_REGS],
    pub attr_index: u8,
    /// The attribute flip-flop: true when the next 0x3C0 write is data.
    pub attr_data_next: bool,
    pub attr: [u8; ATTR_REGS],
    pub dac_mask: u8,
    dac_read_index: u8,
    dac_write_index: u8,
    dac_component: u8,
    dac_reading: bool,
    pub dac: [u8; DAC_ENTRIES * 3],
}

impl Default for Regs {
    fn default() -> Self {
        Self {
            misc: 0,
            feature: 0,
            st01: 0,
            seq_index: 0,
            seq: [0; SEQ_REGS],
            gc_index: 0,
            gc: [0; GC_REGS],
            crtc_index: 0,
            crtc: [0; CRTC_REGS],
            attr_index: 0,
            attr_data_next: false,
            attr: [0; ATTR_REGS],
            dac_mask: 0xff,
            dac_read_index: 0,
            dac_write_index: 0,
            dac_component: 0,
            dac_reading: false,
            dac: [0; DAC_ENTRIES * 3],
        }
    }
}

impl Regs {
    /// The registers as saved state.
    pub fn save(&self) -> RegsState {
        RegsState {
            misc: self.misc,
            feature: self.feature,
            st01: self.st01,
            seq_index: self.seq_index,
            seq: self.seq,
            gc_index: self.gc_index,
            gc: self.gc,
            crtc_index: self.crtc_index,
            crtc: self.crtc,
            attr_index: self.attr_index,
            attr_data_next: self.attr_data_next,
            attr: self.attr,
            dac_mask: self.dac_mask,
            dac_read_index: self.dac_read_index,
            dac_write_index: self.dac_write_index,
            dac_component: self.dac_component,
            dac_reading: self.dac_reading,
            dac: self.dac.to_vec(),
        }
    }

    /// Registers from saved state; Err for values no guest write can produce.
    pub fn restore(s: &RegsState) -> Result<Self, String> {
        let dac: [u8; DAC_ENTRIES * 3] = s
            .dac
            .as_slice()
            .try_into()
            .map_err(|_| format!("a DAC of {} bytes", s.dac.len()))?;
        if s.dac_component >= 3 {
            return Err(format!("DAC component {}", s.dac_component));
        }
        Ok(Self {
            misc: s.misc,
            feature: s.feature,
            st01: s.st01,
            seq_index: s.seq_index,
            seq: s.seq,
            gc_index: s.gc_index,
            gc: s.gc,
            crtc_index: s.crtc_index,
            crtc: s.crtc,
            attr_index: s.attr_index,
            attr_data_next: s.attr_data_next,
            attr: s.attr,
            dac_mask: s.dac_mask,
            dac_read_index: s.dac_read_index,
            dac_write_index: s.dac_write_index,
            dac_component: s.dac_component,
            dac_reading: s.dac_reading,
            dac,
        })
    }

    fn color(&self) -> bool {
        self.misc & MISC_COLOR != 0
    }

    /// Whether `port` is the CRTC/status port of the addressing (mono/colour) now in use.
    fn crtc_port(&self, color: u16, mono: u16, port: u16) -> bool {
        port == if self.color() { color } else { mono }
    }

    /// The sequencer register `i` (0 past the file).
    pub fn sr(&self, i: usize) -> u8 {
        self.seq.get(i).copied().unwrap_or(0)
    }

    pub fn cr(&self, i: usize) -> u8 {
        self.crtc.get(i).copied().unwrap_or(0)
    }

    pub fn ar(&self, i: usize) -> u8 {
        self.attr.get(i).copied().unwrap_or(0)
    }

    /// DAC entry `i` as `0x00RRGGBB`, 6-bit components widened to 8.
    pub fn dac_rgb(&self, i: u8) -> u32 {
        let base = usize::from(i) * 3;
        let c = |k: usize| {
            // 6 bits to 8 as QEMU's std-VGA does (the low bit repeated into the two new
            // ones: 0x2a -> 0xa8, 0x3f -> 0xff), so screens match it pixel for pixel.
            let v = u32::from(self.dac.get(base + k).copied().unwrap_or(0) & 0x3f);
            let low = v & 1;
            (v << 2) | (low << 1) | low
        };
        (c(0) << 16) | (c(1) << 8) | c(2)
    }

    /// A byte read of `port`; None for a port this device does not decode.
    pub fn read(&mut self, port: u16) -> Option<u8> {
        Some(match port {
            PORT_ATTR => self.attr_index,
            PORT_ATTR_READ => self.ar(usize::from(self.attr_index & 0x1f)),
            // Input status 0: no interrupt pending, switch sense 0.
            PORT_MISC_WRITE => 0,
            PORT_SEQ_INDEX => self.seq_index,
            PORT_SEQ_DATA => self.sr(usize::from(self.seq_index)),
            PORT_DAC_MASK => self.dac_mask,
            PORT_DAC_READ_INDEX => {
                if self.dac_reading {
                    0x03
                } else {
                    0x00
                }
            }
            PORT_DAC_WRITE_INDEX => self.dac_write_index,
            PORT_DAC_DATA => {
                let at = usize::from(self.dac_read_index) * 3 + usize::from(self.dac_component);
                let v = self.dac.get(at).copied().unwrap_or(0);
                self.dac_component += 1;
                if self.dac_component == 3 {
                    self.dac_component = 0;
                    self.dac_read_index = self.dac_read_index.wrapping_add(1);
                }
                v
            }
            PORT_FEATURE_READ => self.feature,
            PORT_MISC_READ => self.misc,
            PORT_GC_INDEX => self.gc_index,
            PORT_GC_DATA => self
                .gc
                .get(usize::from(self.gc_index))
                .copied()
                .unwrap_or(0),
            p if self.crtc_port(PORT_CRTC_INDEX_COLOR, PORT_CRTC_INDEX_MONO, p) => self.crtc_index,
            p if self.crtc_port(PORT_CRTC_DATA_COLOR, PORT_CRTC_DATA_MONO, p) => {
                self.cr(usize::from(self.crtc_index))
            }
            p if self.crtc_port(PORT_STATUS1_COLOR, PORT_STATUS1_MONO, p) => {
                // Toggle so that "wait for retrace" and "wait for display" loops both end.
                self.st01 ^= ST01_TOGGLE;
                self.attr_data_next = false;
                self.st01
            }
            _ => return None,
        })
    }

    /// A byte write of `val` to `port`.
    pub fn write(&mut self, port: u16, val: u8) -> Change {
        match port {
            PORT_ATTR => self.write_attr(val),
            PORT_MISC_WRITE => {
                self.misc = val;
                Change::Full
            }
            PORT_SEQ_INDEX => {
                self.seq_index = val;
                Change::None
            }
            PORT_SEQ_DATA => {
                let i = usize::from(self.seq_index);
                match self.seq.get_mut(i) {
                    Some(r) => *r = val,
                    None => return Change::None,
                }
                if i == SR_CLOCKING || i == SR_CHAR_MAP {
                    Change::Full
                } else {
                    Change::None
                }
            }
            PORT_DAC_MASK => {
                self.dac_mask = val;
                Change::Full
            }
            PORT_DAC_READ_INDEX => {
                self.dac_read_index = val;
                self.dac_component = 0;
                self.dac_reading = true;
                Change::None
            }
            PORT_DAC_WRITE_INDEX => {
                self.dac_write_index = val;
                self.dac_component = 0;
                self.dac_reading = false;
                Change::None
            }
            PORT_DAC_DATA => {
                let at = usize::from(self.dac_write_index) * 3 + usize::from(self.dac_component);
                if let Some(c) = self.dac.get_mut(at) {
                    *c = val & 0x3f;
                }
                self.dac_component += 1;
                if self.dac_component == 3 {
                    self.dac_component = 0;
                    self.dac_write_index = self.dac_write_index.wrapping_add(1);
                }
                Change::Full
            }
            PORT_GC_INDEX => {
                self.gc_index = val;
                Change::None
            }
            PORT_GC_DATA => match self.gc.get_mut(usize::from(self.gc_index)) {
                Some(r) => {
                    *r = val;
                    Change::Dirty
                }
                None => Change::None,
            },
            p if self.crtc_port(PORT_CRTC_INDEX_COLOR, PORT_CRTC_INDEX_MONO, p) => {
                self.crtc_index = val;
                Change::None
            }
            p if self.crtc_port(PORT_CRTC_DATA_COLOR, PORT_CRTC_DATA_MONO, p) => {
                self.write_crtc(val)
            }
            p if self.crtc_port(PORT_STATUS1_COLOR, PORT_STATUS1_MONO, p) => {
                self.feature = val;
                Change::None
            }
            _ => Change::None,
        }
    }

    fn write_crtc(&mut self, val: u8) -> Change {
        let i = usize::from(self.crtc_index);
        let protected = self.cr(0x11) & CR11_PROTECT != 0;
        let Some(r) = self.crtc.get_mut(i) else {
            return Change::None;
        };
        *r = match i {
            0x07 if protected => (*r & !CR07_LINE_COMPARE8) | (val & CR07_LINE_COMPARE8),
            0x00..=0x06 if protected => return Change::None,
            _ => val,
        };
        Change::Dirty
    }

    fn write_attr(&mut self, val: u8) -> Change {
        let data = self.attr_data_next;
        self.attr_data_next = !data;
        if !data {
            let was = self.attr_index & AR_INDEX_PAS;
            self.attr_index = val & 0x3f;
            // Turning the palette source on or off blanks or shows the screen.
            return if was != self.attr_index & AR_INDEX_PAS {
                Change::Full
            } else {
                Change::None
            };
        }
        let i = usize::from(self.attr_index & 0x1f);
        let masked = match i {
            0x00..=0x0f => val & 0x3f,
            0x10 => val & !0x10,
            0x12 => val & 0x3f,
            0x13 | 0x14 => val & 0x0f,
            _ => val,
        };
        match self.attr.get_mut(i) {
            Some(r) => {
                *r = masked;
                Change::Full
            }
            None => Change::None,
        }
    }
}
