//! Display devices: the guest-visible side of [`crate::framebuffer`].
//!
//! [`stdvga::StdVga`] is QEMU's std-VGA / bochs-display (PCI 1234:1111). Its framebuffer
//! is a KVM memory slot with dirty-page logging; [`refresh`] polls that log only while a
//! display consumer waits for damage and turns dirty pages into damage rectangles. The KVM
//! calls live in [`kvm`] behind the small [`FbSlot`] trait, so the device logic is tested
//! without /dev/kvm. Its legacy half, [`vga::Vga`] (VGA registers, planar memory behind the
//! 0xA0000 window, text and 16/256-colour scanout), has the display while DISPI is off;
//! guest writes to it trap and only mark it dirty, and the same refresh thread renders it.

pub mod refresh;
pub mod stdvga;
pub mod vga;

/// Where the framebuffer memory is mapped in guest physical memory, and which of its pages
/// the guest wrote since the last look.
pub trait FbSlot: Send {
    /// Maps the framebuffer at `at` (None: unmapped).
    fn map(&mut self, at: Option<u64>);
    /// The dirty-page bitmap (bit n: page n) since the last call, or None when unmapped.
    fn take_dirty(&mut self) -> Option<Vec<u64>>;
}

/// Errors of the display devices.
#[derive(Debug, thiserror::Error)]
pub enum DisplayDeviceError {
    #[error(transparent)]
    Display(#[from] crate::framebuffer::DisplayError),
    #[error(transparent)]
    Pci(#[from] crate::pci::PciError),
    #[error("cannot start the display refresh thread")]
    Thread(#[source] std::io::Error),
}
