//! Finishing a partial checksum the guest left to the device (`VIRTIO_NET_F_CSUM`).
//!
//! The driver sums the pseudo-header into the checksum field and asks the device to add
//! the one's-complement sum of the bytes from `csum_start` to the end of the frame, then
//! store the result at `csum_start + csum_offset` (virtio 1.2, 5.1.6.2). passt's socket
//! carries plain frames, so the device finishes the checksum before the frame leaves.

/// Errors finishing a checksum: the offsets the guest gave do not fit the frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsumError {
    #[error("checksum at {start}+{offset} is outside the {len}-byte frame")]
    OutOfFrame {
        start: usize,
        offset: usize,
        len: usize,
    },
}

/// The 16-bit one's-complement sum of `data` (big-endian words, odd byte padded).
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Sums `frame[start..]` (which includes the pseudo-header sum already in the field) and
/// writes the complement at `start + offset`.
pub fn finish_checksum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), CsumError> {
    let len = frame.len();
    let at = start
        .checked_add(offset)
        .filter(|at| at.checked_add(2).is_some_and(|end| end <= len))
        .ok_or(CsumError::OutOfFrame { start, offset, len })?;
    let sum = !ones_complement_sum(&frame[start..]);
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_an_ipv4_header_to_zero_once_its_checksum_is_in() {
        // RFC 1071 style example: a real IPv4 header with a correct checksum sums to 0xffff.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ones_complement_sum(&hdr), 0xffff);
        let mut blank = hdr;
        blank[10..12].fill(0);
        finish_checksum(&mut blank, 0, 10).unwrap();
        assert_eq!(blank, hdr);
    }

    #[test]
    fn pads_an_odd_length() {
        assert_eq!(ones_complement_sum(&[0x12, 0x34, 0x56]), 0x6834);
    }

    #[test]
    fn rejects_offsets_outside_the_frame() {
        let mut f = [0u8; 20];
        assert!(finish_checksum(&mut f, 10, 9).is_err());
        assert!(finish_checksum(&mut f, usize::MAX, 2).is_err());
        assert!(finish_checksum(&mut f, 30, 0).is_err());
        assert!(finish_checksum(&mut f, 10, 8).is_ok());
    }
}
