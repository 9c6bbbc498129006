//! Physical keys in the two numberings Hospes uses, one table for both directions: Linux
//! evdev key codes (`KEY_*` in linux/input-event-codes.h; GTK's hardware keycode less 8,
//! virtio-input's codes) and XT set-1 scancodes in the "qnum" form the QEMU Extended Key
//! Event carries and the helper routes: the make code, with bit 7 set for a key whose make
//! code has the 0xE0 prefix.
//!
//! The app turns a key press into a scancode with [`evdev_to_qnum`]; the helper's
//! virtio-input keyboard turns it back with [`qnum_to_evdev`] and announces [`evdev_keys`].
//! Covered: the keys of PC keyboards (the 104/105-key block, the JIS and ABNT extras) and
//! the common media keys.

/// Keys outside the main block (`KEY_ESC` (1) ..= `KEY_KPDOT` (83), whose evdev code is
/// the set-1 make code): (evdev code, qnum).
const KEYS: &[(u16, u16)] = &[
    (85, 0x76),  // KEY_ZENKAKUHANKAKU
    (86, 0x56),  // KEY_102ND (the extra key left of Z on ISO keyboards)
    (87, 0x57),  // KEY_F11
    (88, 0x58),  // KEY_F12
    (89, 0x73),  // KEY_RO
    (90, 0x78),  // KEY_KATAKANA
    (91, 0x77),  // KEY_HIRAGANA
    (92, 0x79),  // KEY_HENKAN
    (93, 0x70),  // KEY_KATAKANAHIRAGANA
    (94, 0x7b),  // KEY_MUHENKAN
    (95, 0x5c),  // KEY_KPJPCOMMA
    (96, 0x9c),  // KEY_KPENTER: E0 1C
    (97, 0x9d),  // KEY_RIGHTCTRL: E0 1D
    (98, 0xb5),  // KEY_KPSLASH: E0 35
    (99, 0xb7),  // KEY_SYSRQ (Print Screen): E0 37
    (100, 0xb8), // KEY_RIGHTALT (AltGr): E0 38
    (102, 0xc7), // KEY_HOME: E0 47
    (103, 0xc8), // KEY_UP: E0 48
    (104, 0xc9), // KEY_PAGEUP: E0 49
    (105, 0xcb), // KEY_LEFT: E0 4B
    (106, 0xcd), // KEY_RIGHT: E0 4D
    (107, 0xcf), // KEY_END: E0 4F
    (108, 0xd0), // KEY_DOWN: E0 50
    (109, 0xd1), // KEY_PAGEDOWN: E0 51
    (110, 0xd2), // KEY_INSERT: E0 52
    (111, 0xd3), // KEY_DELETE: E0 53
    (113, 0xa0), // KEY_MUTE: E0 20
    (114, 0xae), // KEY_VOLUMEDOWN: E0 2E
    (115, 0xb0), // KEY_VOLUMEUP: E0 30
    (116, 0xde), // KEY_POWER: E0 5E
    (117, 0x59), // KEY_KPEQUAL
    (119, 0xc6), // KEY_PAUSE (E1 1D 45 on the wire; numbered E0 46)
    (121, 0x7e), // KEY_KPCOMMA
    (124, 0x7d), // KEY_YEN
    (125, 0xdb), // KEY_LEFTMETA: E0 5B
    (126, 0xdc), // KEY_RIGHTMETA: E0 5C
    (127, 0xdd), // KEY_COMPOSE (Menu): E0 5D
    (128, 0xe8), // KEY_STOP: E0 68
    (140, 0xa1), // KEY_CALC: E0 21
    (142, 0xdf), // KEY_SLEEP: E0 5F
    (143, 0xe3), // KEY_WAKEUP: E0 63
    (155, 0xec), // KEY_MAIL: E0 6C
    (156, 0xe6), // KEY_BOOKMARKS: E0 66
    (157, 0xeb), // KEY_COMPUTER: E0 6B
    (158, 0xea), // KEY_BACK: E0 6A
    (159, 0xe9), // KEY_FORWARD: E0 69
    (163, 0x99), // KEY_NEXTSONG: E0 19
    (164, 0xa2), // KEY_PLAYPAUSE: E0 22
    (165, 0x90), // KEY_PREVIOUSSONG: E0 10
    (166, 0xa4), // KEY_STOPCD: E0 24
    (172, 0xb2), // KEY_HOMEPAGE: E0 32
    (173, 0xe7), // KEY_REFRESH: E0 67
    (217, 0xe5), // KEY_SEARCH: E0 65
    (226, 0xed), // KEY_MEDIA: E0 6D
];

/// The main block: evdev code = set-1 make code.
const MAIN_BLOCK: std::ops::RangeInclusive<u16> = 1..=83;

/// The qnum scancode of evdev key `code`.
pub fn evdev_to_qnum(code: u16) -> Option<u16> {
    if MAIN_BLOCK.contains(&code) {
        return Some(code);
    }
    KEYS.iter()
        .find(|&&(evdev, _)| evdev == code)
        .map(|&(_, qnum)| qnum)
}

/// The evdev key code of qnum scancode `qnum`.
pub fn qnum_to_evdev(qnum: u16) -> Option<u16> {
    if MAIN_BLOCK.contains(&qnum) {
        return Some(qnum);
    }
    KEYS.iter()
        .find(|&&(_, q)| q == qnum)
        .map(|&(evdev, _)| evdev)
}

/// Every evdev key that has a scancode.
pub fn evdev_keys() -> impl Iterator<Item = u16> {
    MAIN_BLOCK.chain(KEYS.iter().map(|&(evdev, _)| evdev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_block_keys_keep_their_code() {
        assert_eq!(evdev_to_qnum(1), Some(0x01)); // KEY_ESC
        assert_eq!(evdev_to_qnum(21), Some(0x15)); // KEY_Y
        assert_eq!(evdev_to_qnum(30), Some(0x1e)); // KEY_A
        assert_eq!(evdev_to_qnum(44), Some(0x2c)); // KEY_Z
        assert_eq!(evdev_to_qnum(83), Some(0x53)); // KEY_KPDOT
        assert_eq!(evdev_to_qnum(86), Some(0x56)); // KEY_102ND
        assert_eq!(evdev_to_qnum(88), Some(0x58)); // KEY_F12
    }

    #[test]
    fn e0_prefixed_keys_set_bit_7() {
        assert_eq!(evdev_to_qnum(96), Some(0x9c)); // KEY_KPENTER
        assert_eq!(evdev_to_qnum(97), Some(0x9d)); // KEY_RIGHTCTRL
        assert_eq!(evdev_to_qnum(100), Some(0xb8)); // KEY_RIGHTALT
        assert_eq!(evdev_to_qnum(103), Some(0xc8)); // KEY_UP
        assert_eq!(evdev_to_qnum(111), Some(0xd3)); // KEY_DELETE
        assert_eq!(evdev_to_qnum(125), Some(0xdb)); // KEY_LEFTMETA
        assert_eq!(evdev_to_qnum(127), Some(0xdd)); // KEY_COMPOSE
    }

    #[test]
    fn keys_without_a_set_1_code_have_none() {
        assert_eq!(evdev_to_qnum(0), None); // KEY_RESERVED
        assert_eq!(evdev_to_qnum(84), None); // unassigned
        assert_eq!(evdev_to_qnum(240), None); // KEY_UNKNOWN
        assert_eq!(evdev_to_qnum(0x110), None); // BTN_LEFT
        assert_eq!(qnum_to_evdev(0), None);
        assert_eq!(qnum_to_evdev(0x54), None); // no key makes it
        assert_eq!(qnum_to_evdev(0xff), None);
        assert_eq!(qnum_to_evdev(0x1e5), None);
    }

    #[test]
    fn every_scancode_belongs_to_one_key_and_maps_back() {
        let mut seen = std::collections::HashMap::new();
        for code in 0..=u16::MAX {
            if let Some(qnum) = evdev_to_qnum(code) {
                assert!(qnum != 0 && qnum < 0x100, "KEY {code} -> {qnum:#x}");
                if let Some(other) = seen.insert(qnum, code) {
                    panic!("{qnum:#x} is both KEY {other} and KEY {code}");
                }
                assert_eq!(qnum_to_evdev(qnum), Some(code), "{qnum:#x} back");
            }
        }
        assert_eq!(seen.len(), evdev_keys().count());
        assert!(evdev_keys().all(|code| evdev_to_qnum(code).is_some()));
    }
}
