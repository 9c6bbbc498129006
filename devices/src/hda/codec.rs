//! The duplex codec at address 0 of the HD Audio link: one output converter feeding a
//! line-out pin and one input converter fed by a line-in pin (the layout of QEMU's
//! `hda-duplex`, vendor 0x1af4, which Windows' inbox driver and Linux' generic parser
//! both turn into a playback and a capture device).
//!
//! Data flow: the controller hands each verb the guest sends (through the CORB or the
//! immediate command registers) to [`Codec::verb`] and queues the answer in the RIRB.
//! The controller's DMA asks [`Codec::converter_for`] which converter a running stream
//! tag feeds, for the converter's gain and mute.
//!
//! Nodes: 0x00 root, 0x01 audio function group, 0x02 output converter (DAC), 0x03
//! line-out pin (connected to 0x02), 0x04 input converter (ADC, connected to 0x05),
//! 0x05 line-in pin.

/// Codec vendor and device id (GET_PARAMETER 0x00 of the root node).
pub const VENDOR_ID: u32 = 0x1af4_0022;
/// Revision id (GET_PARAMETER 0x02).
const REVISION_ID: u32 = 0x0010_0101;
/// Subsystem id (verb 0xF20).
const SUBSYSTEM_ID: u32 = 0x1af4_1100;

pub const NID_ROOT: u8 = 0x00;
pub const NID_AFG: u8 = 0x01;
pub const NID_DAC: u8 = 0x02;
pub const NID_OUT_PIN: u8 = 0x03;
pub const NID_ADC: u8 = 0x04;
pub const NID_IN_PIN: u8 = 0x05;

/// GET_PARAMETER ids.
pub const PARAM_VENDOR_ID: u8 = 0x00;
pub const PARAM_REVISION_ID: u8 = 0x02;
pub const PARAM_NODE_COUNT: u8 = 0x04;
pub const PARAM_FG_TYPE: u8 = 0x05;
pub const PARAM_AFG_CAPS: u8 = 0x08;
pub const PARAM_WIDGET_CAPS: u8 = 0x09;
pub const PARAM_PCM: u8 = 0x0a;
pub const PARAM_STREAM_FORMATS: u8 = 0x0b;
pub const PARAM_PIN_CAPS: u8 = 0x0c;
pub const PARAM_IN_AMP_CAPS: u8 = 0x0d;
pub const PARAM_CONN_LEN: u8 = 0x0e;
pub const PARAM_POWER_STATES: u8 = 0x0f;
pub const PARAM_GPIO: u8 = 0x11;
pub const PARAM_OUT_AMP_CAPS: u8 = 0x12;

/// Widget capability bits (GET_PARAMETER 0x09).
const WCAP_STEREO: u32 = 1 << 0;
const WCAP_IN_AMP: u32 = 1 << 1;
const WCAP_OUT_AMP: u32 = 1 << 2;
const WCAP_AMP_OVRD: u32 = 1 << 3;
const WCAP_FORMAT_OVRD: u32 = 1 << 4;
const WCAP_CONN_LIST: u32 = 1 << 8;
const WCAP_TYPE_SHIFT: u32 = 20;
const TYPE_OUTPUT: u32 = 0;
const TYPE_INPUT: u32 = 1;
const TYPE_PIN: u32 = 4;

/// 16-bit samples at 8, 11.025, 16, 22.05, 32, 44.1, 48, 88.2 and 96 kHz.
pub const PCM_CAPS: u32 = (1 << 17) | 0x1ff;
/// PCM streams only.
const STREAM_FORMATS_PCM: u32 = 1;
/// Pin capabilities: output capable, input capable.
const PINCAP_OUT: u32 = 1 << 4;
const PINCAP_IN: u32 = 1 << 5;
/// Amplifier: mute capable, 1 dB steps (field 3), 74 steps, 0 dB at step 74.
pub const AMP_STEPS: u8 = 0x4a;
pub const AMP_CAPS: u32 = (1 << 31) | (3 << 16) | (AMP_STEPS as u32) << 8 | AMP_STEPS as u32;
/// Configuration defaults, as QEMU's `hda-duplex` answers (the values Windows' inbox
/// driver is known to take): a green line-out jack (association 1) and a red line-in
/// jack (association 2).
pub const CONFIG_LINE_OUT: u32 = 0x0000_4010;
pub const CONFIG_LINE_IN: u32 = 0x0080_5020;
/// Pin widget control: out enable, in enable.
const PIN_OUT_EN: u8 = 0x40;
const PIN_IN_EN: u8 = 0x20;

/// One converter's settings, as the guest left them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Converter {
    /// Stream tag (1..15; 0 = none) and lowest channel.
    pub stream: u8,
    pub channel: u8,
    /// The stream format word (verb 0x2).
    pub format: u16,
    /// Amplifier per side: gain (0..=AMP_STEPS) and mute.
    pub gain: [u8; 2],
    pub mute: [bool; 2],
}

impl Converter {
    fn new() -> Self {
        Self {
            stream: 0,
            channel: 0,
            format: 0x0011, // 48 kHz, 16 bit, stereo
            gain: [AMP_STEPS; 2],
            mute: [false; 2],
        }
    }

    /// The linear factor for side `side` (0 left, 1 right): 0 when muted, else 1 dB
    /// per step below 0 dB.
    pub fn factor(&self, side: usize) -> f32 {
        let side = side.min(1);
        if self.mute[side] {
            return 0.0;
        }
        let db = f32::from(self.gain[side]) - f32::from(AMP_STEPS);
        10f32.powf(db / 20.0)
    }
}

/// The codec's state (saved with the controller as it is).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Codec {
    pub dac: Converter,
    pub adc: Converter,
    pin_ctl: [u8; 2],
    config: [u32; 2],
    power: u8,
    unsol: [u8; 6],
    eapd: u8,
    subsystem: u32,
    coef_index: u16,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    pub fn new() -> Self {
        Self {
            dac: Converter::new(),
            adc: Converter::new(),
            pin_ctl: [PIN_OUT_EN, PIN_IN_EN],
            config: [CONFIG_LINE_OUT, CONFIG_LINE_IN],
            power: 0,
            unsol: [0; 6],
            eapd: 0,
            subsystem: SUBSYSTEM_ID,
            coef_index: 0,
        }
    }

    /// The converter a stream tag in direction `output` feeds or is fed by.
    pub fn converter_for(&self, output: bool, tag: u8) -> Option<&Converter> {
        let c = if output { &self.dac } else { &self.adc };
        (tag != 0 && c.stream == tag).then_some(c)
    }

    /// Answers a verb addressed to this codec: `nid`, and `verb` as the low 20 bits of
    /// the command. Unknown verbs and nodes answer 0, as hardware does.
    pub fn verb(&mut self, nid: u8, verb: u32) -> u32 {
        if nid > NID_IN_PIN {
            return 0;
        }
        let id12 = (verb >> 8) & 0xfff;
        let low8 = (verb & 0xff) as u8;
        match id12 {
            0xf00 => return parameter(nid, low8),
            0xf01 => return 0,
            0xf02 => return connection_entries(nid, low8),
            0xf05 | 0x705 => {
                if id12 == 0x705 && nid == NID_AFG {
                    self.power = low8 & 0xf;
                }
                return u32::from(self.power) << 4 | u32::from(self.power);
            }
            0xf06 => {
                return self
                    .converter(nid)
                    .map_or(0, |c| u32::from(c.stream) << 4 | u32::from(c.channel));
            }
            0x706 => {
                if let Some(c) = self.converter_mut(nid) {
                    c.stream = low8 >> 4;
                    c.channel = low8 & 0xf;
                }
                return 0;
            }
            0xf07 => {
                return self
                    .pin_index(nid)
                    .map_or(0, |i| u32::from(self.pin_ctl[i]));
            }
            0x707 => {
                if let Some(i) = self.pin_index(nid) {
                    self.pin_ctl[i] = low8;
                }
                return 0;
            }
            0xf08 => return u32::from(self.unsol[usize::from(nid)]),
            0x708 => {
                self.unsol[usize::from(nid)] = low8;
                return 0;
            }
            // Presence: nothing senses jacks here; report "nothing plugged" as 0.
            0xf09 | 0x709 => return 0,
            0xf0c => return u32::from(self.eapd),
            0x70c => {
                self.eapd = low8;
                return 0;
            }
            0xf1c => return self.pin_index(nid).map_or(0, |i| self.config[i]),
            0x71c..=0x71f => {
                if let Some(i) = self.pin_index(nid) {
                    let shift = (id12 - 0x71c) * 8;
                    self.config[i] = (self.config[i] & !(0xff << shift)) | u32::from(low8) << shift;
                }
                return 0;
            }
            0xf20 => return if nid == NID_AFG { self.subsystem } else { 0 },
            // Converter channel count: stereo converters carry two channels (count - 1).
            0xf2d => return u32::from(self.converter(nid).is_some()),
            0x720..=0x723 => {
                if nid == NID_AFG {
                    let shift = (id12 - 0x720) * 8;
                    self.subsystem = (self.subsystem & !(0xff << shift)) | u32::from(low8) << shift;
                }
                return 0;
            }
            0x7ff => {
                if nid == NID_AFG {
                    *self = Self::new();
                }
                return 0;
            }
            _ => {}
        }
        let id4 = (verb >> 16) & 0xf;
        let payload = (verb & 0xffff) as u16;
        match id4 {
            0x2 => {
                if let Some(c) = self.converter_mut(nid) {
                    c.format = payload;
                }
                0
            }
            0xa => self.converter(nid).map_or(0, |c| u32::from(c.format)),
            0x3 => {
                self.set_amp(nid, payload);
                0
            }
            0xb => self.get_amp(nid, payload),
            0x4 => {
                self.coef_index = payload;
                0
            }
            0xd => u32::from(self.coef_index),
            _ => 0,
        }
    }

    fn converter(&self, nid: u8) -> Option<&Converter> {
        match nid {
            NID_DAC => Some(&self.dac),
            NID_ADC => Some(&self.adc),
            _ => None,
        }
    }

    fn converter_mut(&mut self, nid: u8) -> Option<&mut Converter> {
        match nid {
            NID_DAC => Some(&mut self.dac),
            NID_ADC => Some(&mut self.adc),
            _ => None,
        }
    }

    fn pin_index(&self, nid: u8) -> Option<usize> {
        match nid {
            NID_OUT_PIN => Some(0),
            NID_IN_PIN => Some(1),
            _ => None,
        }
    }

    /// The amplifier a get/set names: the DAC's output amp and the ADC's input amp
    /// (index 0) exist; others read as 0 and ignore writes.
    fn amp(&mut self, nid: u8, output: bool, index: u16) -> Option<&mut Converter> {
        match (nid, output, index) {
            (NID_DAC, true, _) | (NID_ADC, false, 0) => self.converter_mut(nid),
            _ => None,
        }
    }

    fn get_amp(&mut self, nid: u8, payload: u16) -> u32 {
        let output = payload & (1 << 15) != 0;
        let side = usize::from(payload & (1 << 13) == 0);
        self.amp(nid, output, payload & 0xf).map_or(0, |c| {
            u32::from(c.gain[side]) | if c.mute[side] { 0x80 } else { 0 }
        })
    }

    fn set_amp(&mut self, nid: u8, payload: u16) {
        let gain = (payload & 0x7f) as u8;
        let mute = payload & 0x80 != 0;
        let index = (payload >> 8) & 0xf;
        for (dir_bit, output) in [(15, true), (14, false)] {
            if payload & (1 << dir_bit) == 0 {
                continue;
            }
            if let Some(c) = self.amp(nid, output, index) {
                for (side, bit) in [(0, 13), (1, 12)] {
                    if payload & (1 << bit) != 0 {
                        c.gain[side] = gain.min(AMP_STEPS);
                        c.mute[side] = mute;
                    }
                }
            }
        }
    }
}

/// GET_PARAMETER `param` of node `nid`.
pub fn parameter(nid: u8, param: u8) -> u32 {
    match (nid, param) {
        (NID_ROOT, PARAM_VENDOR_ID) => VENDOR_ID,
        (NID_ROOT, PARAM_REVISION_ID) => REVISION_ID,
        (NID_ROOT, PARAM_NODE_COUNT) => u32::from(NID_AFG) << 16 | 1,
        (NID_AFG, PARAM_NODE_COUNT) => u32::from(NID_DAC) << 16 | 4,
        (NID_AFG, PARAM_FG_TYPE) => 0x01,
        (NID_AFG, PARAM_AFG_CAPS) => 0x0000_0808,
        (NID_AFG | NID_DAC | NID_ADC, PARAM_PCM) => PCM_CAPS,
        (NID_AFG | NID_DAC | NID_ADC, PARAM_STREAM_FORMATS) => STREAM_FORMATS_PCM,
        (NID_AFG, PARAM_IN_AMP_CAPS | PARAM_OUT_AMP_CAPS) => AMP_CAPS,
        (NID_AFG, PARAM_POWER_STATES) => 0x9,
        (NID_AFG, PARAM_GPIO) => 0,
        (NID_DAC, PARAM_WIDGET_CAPS) => {
            TYPE_OUTPUT << WCAP_TYPE_SHIFT
                | WCAP_FORMAT_OVRD
                | WCAP_AMP_OVRD
                | WCAP_OUT_AMP
                | WCAP_STEREO
        }
        (NID_DAC, PARAM_OUT_AMP_CAPS) => AMP_CAPS,
        (NID_ADC, PARAM_WIDGET_CAPS) => {
            TYPE_INPUT << WCAP_TYPE_SHIFT
                | WCAP_CONN_LIST
                | WCAP_FORMAT_OVRD
                | WCAP_AMP_OVRD
                | WCAP_IN_AMP
                | WCAP_STEREO
        }
        (NID_ADC, PARAM_IN_AMP_CAPS) => AMP_CAPS,
        (NID_ADC, PARAM_CONN_LEN) => 1,
        (NID_OUT_PIN, PARAM_WIDGET_CAPS) => {
            TYPE_PIN << WCAP_TYPE_SHIFT | WCAP_CONN_LIST | WCAP_STEREO
        }
        (NID_OUT_PIN, PARAM_PIN_CAPS) => PINCAP_OUT,
        (NID_OUT_PIN, PARAM_CONN_LEN) => 1,
        (NID_IN_PIN, PARAM_WIDGET_CAPS) => TYPE_PIN << WCAP_TYPE_SHIFT | WCAP_STEREO,
        (NID_IN_PIN, PARAM_PIN_CAPS) => PINCAP_IN,
        _ => 0,
    }
}

/// GET_CONNECTION_LIST_ENTRY: four short-form entries from `offset`.
fn connection_entries(nid: u8, offset: u8) -> u32 {
    let list: &[u8] = match nid {
        NID_OUT_PIN => &[NID_DAC],
        NID_ADC => &[NID_IN_PIN],
        _ => &[],
    };
    list.iter()
        .skip(usize::from(offset))
        .take(4)
        .enumerate()
        .fold(0, |acc, (i, n)| acc | u32::from(*n) << (8 * i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_param(c: &mut Codec, nid: u8, p: u8) -> u32 {
        c.verb(nid, 0xf0000 | u32::from(p))
    }

    #[test]
    fn the_tree_reaches_every_widget_from_the_root() {
        let mut c = Codec::new();
        assert_eq!(get_param(&mut c, 0, PARAM_VENDOR_ID), VENDOR_ID);
        let root = get_param(&mut c, 0, PARAM_NODE_COUNT);
        assert_eq!((root >> 16, root & 0xff), (1, 1));
        assert_eq!(get_param(&mut c, 1, PARAM_FG_TYPE) & 0xff, 1, "audio group");
        let afg = get_param(&mut c, 1, PARAM_NODE_COUNT);
        let (start, count) = (afg >> 16, afg & 0xff);
        let types: Vec<u32> = (start..start + count)
            .map(|n| get_param(&mut c, n as u8, PARAM_WIDGET_CAPS) >> 20)
            .collect();
        assert_eq!(types, [0, 4, 1, 4], "DAC, pin, ADC, pin");
        // The line-out pin lists the DAC, the ADC lists the line-in pin.
        assert_eq!(c.verb(NID_OUT_PIN, 0xf0200), u32::from(NID_DAC));
        assert_eq!(c.verb(NID_ADC, 0xf0200), u32::from(NID_IN_PIN));
        assert_eq!(c.verb(NID_OUT_PIN, 0xf1c00), CONFIG_LINE_OUT);
        assert_eq!(c.verb(NID_IN_PIN, 0xf1c00), CONFIG_LINE_IN);
        assert_eq!(get_param(&mut c, NID_OUT_PIN, PARAM_PIN_CAPS), PINCAP_OUT);
        assert_eq!(get_param(&mut c, 0x7f, PARAM_VENDOR_ID), 0, "no such node");
    }

    #[test]
    fn stream_format_and_amp_verbs_read_back() {
        let mut c = Codec::new();
        c.verb(NID_DAC, 0x70651);
        assert_eq!(c.verb(NID_DAC, 0xf0600), 0x51);
        assert_eq!(c.verb(NID_DAC, 0xf2d00), 1, "two channels");
        assert!(c.converter_for(true, 5).is_some());
        assert!(c.converter_for(false, 5).is_none());
        c.verb(NID_DAC, 0x24011);
        assert_eq!(c.verb(NID_DAC, 0xa0000), 0x4011);
        // Output amp, left only: mute, gain 0x20.
        c.verb(NID_DAC, 0x3a0a0);
        assert_eq!(c.verb(NID_DAC, 0xba000), 0xa0, "left");
        assert_eq!(
            c.verb(NID_DAC, 0xb8000),
            u32::from(AMP_STEPS),
            "right untouched"
        );
        assert_eq!(c.dac.factor(0), 0.0);
        assert!((c.dac.factor(1) - 1.0).abs() < 1e-6);
        // Gains above the steps clamp.
        c.verb(NID_ADC, 0x3707f);
        assert_eq!(c.verb(NID_ADC, 0xb2000), u32::from(AMP_STEPS));
        c.verb(NID_AFG, 0x7ff00);
        assert_eq!(c.verb(NID_DAC, 0xf0600), 0, "function reset");
    }

    #[test]
    fn config_default_bytes_are_writable() {
        let mut c = Codec::new();
        c.verb(NID_OUT_PIN, 0x71f00 | 0x40);
        assert_eq!(
            c.verb(NID_OUT_PIN, 0xf1c00),
            (CONFIG_LINE_OUT & 0x00ff_ffff) | 0x4000_0000
        );
    }
}
