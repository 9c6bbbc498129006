//! Hands out naturally aligned MMIO ranges for BARs from a window the machine chooses
//! (below 4 GiB, between RAM and the IOAPIC), as firmware does before a direct-boot guest
//! starts: Linux then keeps the assignment instead of reassigning.

use super::PciError;

/// A bump allocator over `[start, start + len)`.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    pub fn new(start: u64, len: u64) -> Self {
        Self {
            next: start,
            end: start.saturating_add(len),
        }
    }

    /// A range of `size` bytes (a power of two) aligned to `size`.
    pub fn allocate(&mut self, size: u64) -> Result<u64, PciError> {
        if !size.is_power_of_two() {
            return Err(PciError::BarSize { size });
        }
        let base = self
            .next
            .checked_next_multiple_of(size)
            .filter(|b| b.checked_add(size).is_some_and(|e| e <= self.end))
            .ok_or(PciError::WindowFull { size })?;
        self.next = base + size;
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_each_range_to_its_size() {
        let mut a = BarAllocator::new(0xc000_1000, 0x10_0000);
        assert_eq!(a.allocate(0x1000).unwrap(), 0xc000_1000);
        assert_eq!(a.allocate(0x4000).unwrap(), 0xc000_4000);
        assert_eq!(a.allocate(0x1000).unwrap(), 0xc000_8000);
    }

    #[test]
    fn refuses_when_window_is_full_or_size_is_odd() {
        let mut a = BarAllocator::new(0xc000_0000, 0x8000);
        assert!(a.allocate(0x3000).is_err());
        a.allocate(0x8000).unwrap();
        assert!(matches!(
            a.allocate(0x1000),
            Err(PciError::WindowFull { .. })
        ));
        let mut b = BarAllocator::new(u64::MAX - 0x1000, 0x10_0000);
        assert!(b.allocate(0x2000).is_err());
    }
}
