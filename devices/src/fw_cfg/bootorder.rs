//! The content of the fw_cfg file `bootorder`: OpenFirmware device paths, one per line,
//! most preferred first, the whole NUL-terminated.
//!
//! SeaBIOS (`src/boot.c`) builds a *glob* for each boot device it finds and takes the
//! first line the glob is a prefix of (up to a `/` or the line's end); `*` in the glob
//! stands for any run of characters up to the next `/` or the glob's next character.
//! Its globs, `dev`/`fn` in hex and `,fn` only when the function is not 0:
//!
//! ```text
//! PCI device (virtio-blk, NVMe)   /pci@i0cf8/*@dev[,fn]
//! ATA / AHCI port                 /pci@i0cf8/*@dev[,fn]/drive@port/disk@0
//! PCI option ROM instance n > 0   /pci@i0cf8/*@dev[,fn]:romn
//! named ROM (fw_cfg file)         /rom@name
//! ```
//!
//! OVMF (`OvmfPkg/Library/QemuBootOrderLib`) instead parses the paths and matches the
//! node names, so the lines must use QEMU's names: `pci8086,2922` for the ICH9 AHCI
//! (`/pci@i0cf8/pci8086,2922@1f,2/drive@1/disk@0` becomes `Pci(0x1F,0x2)/Sata(0x1,0,0)`)
//! and `scsi` + `disk@0,0` for virtio-blk (`/pci@i0cf8/scsi@6/disk@0,0`). The helpers
//! below write those names, which SeaBIOS' `*` matches as well. A line reading
//! [`BOOTORDER_HALT`] makes SeaBIOS boot only from the listed devices.

/// The line telling SeaBIOS to try no device that is not listed (`is_bootprio_strict`).
pub const BOOTORDER_HALT: &str = "HALT";

/// The PCI root as both firmwares name it: host bridge at I/O port 0xcf8.
const PCI_ROOT: &str = "/pci@i0cf8";
/// The ICH9 AHCI controller's node name (vendor 8086, device 2922).
const ICH9_AHCI_NODE: &str = "pci8086,2922";

/// `bootorder` from device paths: newline-separated, NUL-terminated (an empty list gives
/// a lone NUL).
pub fn bootorder(paths: &[&str]) -> Vec<u8> {
    let mut out = paths.join("\n").into_bytes();
    out.push(0);
    out
}

/// `@dev[,fn]` as both firmwares write a PCI unit address.
fn pci_unit(slot: u8, func: u8) -> String {
    if func == 0 {
        format!("@{slot:x}")
    } else {
        format!("@{slot:x},{func:x}")
    }
}

/// A disk or CD-ROM on port `port` of the ICH9 AHCI controller at `slot.func` of the root
/// bus (on Q35, 0x1f.2): `/pci@i0cf8/pci8086,2922@1f,2/drive@0/disk@0`.
pub fn ahci_path(slot: u8, func: u8, port: u8) -> String {
    format!(
        "{PCI_ROOT}/{ICH9_AHCI_NODE}{}/drive@{port:x}/disk@0",
        pci_unit(slot, func)
    )
}

/// A virtio-blk disk at `slot` (function 0) of the root bus: `/pci@i0cf8/scsi@5/disk@0,0`.
pub fn virtio_blk_path(slot: u8) -> String {
    format!("{PCI_ROOT}/scsi{}/disk@0,0", pci_unit(slot, 0))
}

/// A ROM loaded from the fw_cfg file `name` (e.g. `genroms/linuxboot.bin`):
/// `/rom@genroms/linuxboot.bin`.
pub fn rom_path(name: &str) -> String {
    format!("/rom@{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SeaBIOS' boot-order match, as its `src/boot.c` documents it: `glob` is a prefix of
    /// `line` ending at a `/` or the line's end; `*` eats characters up to a `/` or the
    /// glob's next character.
    fn seabios_matches(glob: &str, line: &str) -> bool {
        let (g, s) = (glob.as_bytes(), line.as_bytes());
        let (mut gi, mut si) = (0, 0);
        loop {
            let gc = g.get(gi).copied();
            let sc = s.get(si).copied();
            if gc.is_none() {
                return sc.is_none() || sc == Some(b'/');
            }
            if gc == Some(b'*') {
                if sc.is_none() || sc == Some(b'/') || sc == g.get(gi + 1).copied() {
                    gi += 1;
                } else {
                    si += 1;
                }
                continue;
            }
            if gc != sc {
                return false;
            }
            gi += 1;
            si += 1;
        }
    }

    #[test]
    fn bootorder_is_newline_separated_and_nul_terminated() {
        let b = bootorder(&["/a", "/b@1", BOOTORDER_HALT]);
        assert_eq!(b, b"/a\n/b@1\nHALT\0");
        assert_eq!(bootorder(&[]), b"\0");
    }

    #[test]
    fn ahci_path_has_the_node_names_ovmf_translates() {
        assert_eq!(
            ahci_path(0x1f, 2, 0),
            "/pci@i0cf8/pci8086,2922@1f,2/drive@0/disk@0"
        );
        assert_eq!(
            ahci_path(4, 0, 0xa),
            "/pci@i0cf8/pci8086,2922@4/drive@a/disk@0"
        );
    }

    #[test]
    fn virtio_blk_and_rom_paths() {
        assert_eq!(virtio_blk_path(5), "/pci@i0cf8/scsi@5/disk@0,0");
        assert_eq!(virtio_blk_path(0x1a), "/pci@i0cf8/scsi@1a/disk@0,0");
        assert_eq!(
            rom_path("genroms/linuxboot.bin"),
            "/rom@genroms/linuxboot.bin"
        );
    }

    #[test]
    fn seabios_globs_find_the_paths_the_helpers_write() {
        // bootprio_find_ata_device(pci 00:1f.2, port 0, 0) and friends.
        assert!(seabios_matches(
            "/pci@i0cf8/*@1f,2/drive@0/disk@0",
            &ahci_path(0x1f, 2, 0)
        ));
        assert!(!seabios_matches(
            "/pci@i0cf8/*@1f,2/drive@1/disk@0",
            &ahci_path(0x1f, 2, 0)
        ));
        assert!(!seabios_matches(
            "/pci@i0cf8/*@1f/drive@0/disk@0",
            &ahci_path(0x1f, 2, 0)
        ));
        // bootprio_find_pci_device(pci 00:05.0) for virtio-blk.
        assert!(seabios_matches("/pci@i0cf8/*@5", &virtio_blk_path(5)));
        assert!(!seabios_matches("/pci@i0cf8/*@6", &virtio_blk_path(5)));
        assert!(!seabios_matches("/pci@i0cf8/*@5", &virtio_blk_path(0x15)));
        // bootprio_find_named_rom.
        assert!(seabios_matches(
            "/rom@genroms/linuxboot.bin",
            &rom_path("genroms/linuxboot.bin")
        ));
    }
}
