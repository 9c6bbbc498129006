//! Which memory System Management Mode owns, decided from the MCH's SMRAM registers: the
//! pure logic behind the Q35 SMRAM, free of KVM (the helper's `vstate::smram` turns a
//! [`SmramView`] into memory slots).
//!
//! Registers (Intel 3 Series datasheet 316966 §5.1.16-17; edk2 `Q35MchIch9.h`; the
//! behaviour QEMU gives them, which OVMF's `SmmAccess` drivers are written against):
//!
//! - SMRAM (0x9D): D_OPEN (bit 6) shows the legacy SMRAM at 0xA0000-0xBFFFF to code outside
//!   SMM; D_CLS (bit 5, data accesses in SMM go to VGA: not modelled, as in QEMU); D_LCK
//!   (bit 4, freezes SMRAM and ESMRAMC until reset and clears D_OPEN: done in
//!   [`super::mch`]); G_SMRAME (bit 3) turns SMRAM on at all.
//! - ESMRAMC (0x9E): H_SMRAME (bit 7, moves the legacy SMRAM to 0xFEDA0000: Hospes offers
//!   no high SMRAM, so it only takes the legacy window away), TSEG_SZ (bits 2:1: 1, 2, 8 MiB
//!   or, for 3, EXT_TSEG_MB's size) and T_EN (bit 0).
//!
//! Data flow: a configuration write to 0x9D/0x9E -> [`smram_view`] of the new values ->
//! when the view changed, [`SmramMapper::set`] with it. A view says, per range, who sees RAM:
//!
//! | range | outside SMM | in SMM |
//! |---|---|---|
//! | 0xA0000-0xBFFFF | RAM when D_OPEN and not H_SMRAME, else the VGA window | RAM when it is RAM outside SMM, or G_SMRAME and not H_SMRAME; else VGA |
//! | TSEG: the top `tseg_len` bytes of RAM below 4 GiB | nothing (reads all-ones, writes dropped) when T_EN and G_SMRAME | RAM |
//! | other RAM | RAM | RAM |

/// The legacy SMRAM window (the VGA window's addresses).
pub const ASEG_START: u64 = 0xa_0000;
pub const ASEG_LEN: u64 = 0x2_0000;

/// SMRAM register bits.
pub const SMRAM_D_OPEN: u8 = 1 << 6;
pub const SMRAM_D_CLS: u8 = 1 << 5;
pub const SMRAM_D_LCK: u8 = 1 << 4;
pub const SMRAM_G_SMRAME: u8 = 1 << 3;

/// ESMRAMC register bits.
pub const ESMRAMC_H_SMRAME: u8 = 1 << 7;
pub const ESMRAMC_TSEG_SZ_SHIFT: u32 = 1;
pub const ESMRAMC_TSEG_SZ_MASK: u8 = 0b11 << ESMRAMC_TSEG_SZ_SHIFT;
pub const ESMRAMC_T_EN: u8 = 1 << 0;
/// TSEG_SZ value that takes the size from EXT_TSEG_MB.
pub const TSEG_SZ_EXT: u8 = 3;

/// Who sees RAM where (see the module header's table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmramView {
    /// 0xA0000-0xBFFFF is RAM for code outside SMM (else the VGA window).
    pub aseg_open: bool,
    /// 0xA0000-0xBFFFF is RAM for code in SMM (else the VGA window).
    pub aseg_smm: bool,
    /// Bytes at the top of RAM below 4 GiB that only SMM sees; 0 for none.
    pub tseg_len: u64,
}

/// The TSEG size ESMRAMC selects, `ext_tseg_mb` MiB for TSEG_SZ = 3.
pub fn tseg_size(esmramc: u8, ext_tseg_mb: u16) -> u64 {
    match (esmramc & ESMRAMC_TSEG_SZ_MASK) >> ESMRAMC_TSEG_SZ_SHIFT {
        0 => 1 << 20,
        1 => 2 << 20,
        2 => 8 << 20,
        _ => u64::from(ext_tseg_mb) << 20,
    }
}

/// What the registers `smram` (0x9D) and `esmramc` (0x9E) show, with EXT_TSEG_MB's size
/// `ext_tseg_mb` for TSEG_SZ = 3.
pub fn smram_view(smram: u8, esmramc: u8, ext_tseg_mb: u16) -> SmramView {
    let g_smrame = smram & SMRAM_G_SMRAME != 0;
    let h_smrame = esmramc & ESMRAMC_H_SMRAME != 0;
    let aseg_open = smram & SMRAM_D_OPEN != 0 && !h_smrame;
    let tseg_on = esmramc & ESMRAMC_T_EN != 0 && g_smrame;
    SmramView {
        aseg_open,
        aseg_smm: aseg_open || (g_smrame && !h_smrame),
        tseg_len: if tseg_on {
            tseg_size(esmramc, ext_tseg_mb)
        } else {
            0
        },
    }
}

/// Applies a [`SmramView`] to the machine's memory. The helper implements it on KVM
/// memory slots (address space 0 for code outside SMM, 1 for SMM).
///
/// Called from inside a configuration write to the MCH (PCI root and host bridge
/// locked), on the vCPU thread that made it, once for every change of the view; at
/// power-on and after reset the view is [`SmramView::default`] (no SMRAM anywhere) and
/// the helper maps that state itself when it builds the machine.
pub trait SmramMapper: Send + Sync {
    fn set(&self, view: SmramView);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_on_values_show_no_smram_anywhere() {
        // SMRAM 0x02 (C_BASE_SEG), ESMRAMC 0x38 (cache bits).
        assert_eq!(smram_view(0x02, 0x38, 16), SmramView::default());
    }

    #[test]
    fn g_smrame_gives_smm_the_legacy_window_and_d_open_gives_it_to_everyone() {
        let closed = smram_view(0x02 | SMRAM_G_SMRAME, 0x38, 16);
        assert!(closed.aseg_smm && !closed.aseg_open);
        assert_eq!(closed.tseg_len, 0, "T_EN clear: no TSEG");
        let open = smram_view(0x02 | SMRAM_G_SMRAME | SMRAM_D_OPEN, 0x38, 16);
        assert!(open.aseg_smm && open.aseg_open);
        // D_OPEN without G_SMRAME still shows the RAM outside SMM (and so in SMM too).
        let open_only = smram_view(SMRAM_D_OPEN, 0, 16);
        assert!(open_only.aseg_open && open_only.aseg_smm);
    }

    #[test]
    fn h_smrame_takes_the_legacy_window_away_from_both_modes() {
        let v = smram_view(
            SMRAM_G_SMRAME | SMRAM_D_OPEN,
            ESMRAMC_H_SMRAME | ESMRAMC_T_EN,
            16,
        );
        assert!(!v.aseg_open && !v.aseg_smm);
        assert_eq!(v.tseg_len, 1 << 20);
    }

    #[test]
    fn tseg_needs_both_t_en_and_g_smrame_and_takes_its_size_from_tseg_sz() {
        let ext = ESMRAMC_T_EN | TSEG_SZ_EXT << ESMRAMC_TSEG_SZ_SHIFT;
        assert_eq!(smram_view(SMRAM_G_SMRAME, ext, 16).tseg_len, 16 << 20);
        assert_eq!(smram_view(0, ext, 16).tseg_len, 0, "G_SMRAME clear");
        assert_eq!(
            smram_view(SMRAM_G_SMRAME, TSEG_SZ_EXT << ESMRAMC_TSEG_SZ_SHIFT, 16).tseg_len,
            0,
            "T_EN clear"
        );
        let sized = |sz: u8| smram_view(SMRAM_G_SMRAME, ESMRAMC_T_EN | sz << 1, 16).tseg_len;
        assert_eq!(
            [sized(0), sized(1), sized(2), sized(3)],
            [1 << 20, 2 << 20, 8 << 20, 16 << 20]
        );
        // D_OPEN does not open TSEG (only the legacy window).
        let v = smram_view(SMRAM_G_SMRAME | SMRAM_D_OPEN, ext, 16);
        assert_eq!(v.tseg_len, 16 << 20);
    }
}
