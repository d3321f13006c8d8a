//! TCP sequence numbers (after smoltcp's `TcpSeqNumber`): they wrap, so arithmetic on them
//! wraps and they compare by their signed distance (RFC 1982 serial number arithmetic, as
//! the kernel's `before`/`after`), which holds for numbers less than 2^31 apart.

use core::ops::{Add, Sub};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqNumber(pub u32);

impl Add<u32> for SeqNumber {
    type Output = Self;

    fn add(self, bytes: u32) -> Self {
        Self(self.0.wrapping_add(bytes))
    }
}

impl Sub<u32> for SeqNumber {
    type Output = Self;

    fn sub(self, bytes: u32) -> Self {
        Self(self.0.wrapping_sub(bytes))
    }
}

/// How far `self` is ahead of `other`: negative when it is behind.
impl Sub for SeqNumber {
    type Output = i32;

    fn sub(self, other: Self) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
}

impl SeqNumber {
    /// Whether `self` comes after `other`: the kernel's `after`, to the instruction.
    ///
    /// Methods rather than `PartialOrd`: these are not an order (each number is after the
    /// 2^31 - 1 numbers behind it, so `a < b < c < a` happens, and numbers exactly 2^31
    /// apart are each before and after the other, as in the kernel), and must not be
    /// sorted with or mistaken for one.
    pub fn after(self, other: Self) -> bool {
        other - self < 0
    }

    /// Whether `self` comes before `other`: the kernel's `before`.
    pub fn before(self, other: Self) -> bool {
        self - other < 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_wrap() {
        let (low, high) = (SeqNumber(5), SeqNumber(u32::MAX - 5));
        assert!(low.after(high) && !low.before(high));
        assert!(high.before(low) && !high.after(low));
        assert!(!low.after(low) && !low.before(low));
        let opposite = low + (1 << 31);
        assert!(
            low.after(opposite) && low.before(opposite),
            "as the kernel's"
        );
        assert_eq!(low - high, 11);
        assert_eq!(high - low, -11);
        assert_eq!(high + 11, low);
        assert_eq!(low - 11, high);
    }
}
