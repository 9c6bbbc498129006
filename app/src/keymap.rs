//! Physical keys as the guest's keyboard knows them: GTK's hardware keycode (the Linux
//! evdev key code plus 8, on both X11 and Wayland) to the XT set-1 scancode in the "qnum"
//! form the QEMU Extended Key Event carries, through the table the helper shares
//! ([`hospes_core::keycodes`]); a key outside it has no scancode and is sent by its keysym
//! instead. No GTK.

use hospes_core::keycodes::evdev_to_qnum;

/// GTK's hardware keycode is the evdev code plus this (X11's minimum keycode; Wayland
/// compositors keep the same offset).
const XKB_EVDEV_OFFSET: u32 = 8;

/// The scancode of the key GTK reports with `keycode` (its hardware keycode).
pub fn scancode_for_keycode(keycode: u32) -> Option<u16> {
    keycode
        .checked_sub(XKB_EVDEV_OFFSET)
        .and_then(|code| u16::try_from(code).ok())
        .and_then(evdev_to_qnum)
}

/// Scancodes of the keys Ctrl+Alt+Del is pressed with (left Ctrl, left Alt, Delete).
pub const CTRL_ALT_DEL: [u16; 3] = [0x1d, 0x38, 0xd3];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_keycodes_are_evdev_plus_8() {
        assert_eq!(scancode_for_keycode(38), Some(0x1e)); // A
        assert_eq!(scancode_for_keycode(111), Some(0xc8)); // Up
        assert_eq!(scancode_for_keycode(29), Some(0x15)); // the Y key (Z on German)
        assert_eq!(scancode_for_keycode(5), None);
        assert_eq!(scancode_for_keycode(0), None);
        assert_eq!(scancode_for_keycode(u32::MAX), None);
    }

    #[test]
    fn ctrl_alt_del_is_left_ctrl_left_alt_delete() {
        assert_eq!(CTRL_ALT_DEL, [0x1d, 0x38, 0xd3]);
        assert_eq!(
            CTRL_ALT_DEL.map(hospes_core::keycodes::qnum_to_evdev),
            [Some(29), Some(56), Some(111)]
        );
    }
}
