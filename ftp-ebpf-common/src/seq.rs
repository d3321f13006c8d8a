//! TCP sequence numbers (after smoltcp's `TcpSeqNumber`): they wrap, so arithmetic on them
//! wraps and they compare by their signed distance (RFC 1982 serial number arithmetic, as
//! the kernel's `before`/`after`), which holds for numbers less than 2^31 apart.

use core::{
    cmp::Ordering,
    ops::{Add, Sub},
};

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

/// Not a total order (each number is after the 2^31 - 1 numbers behind it, so `a < b < c
/// < a` happens), which is why `SeqNumber` is not `Ord`: no sorting, no `max`.
impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some((*self - *other).cmp(&0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_wrap() {
        let (low, high) = (SeqNumber(5), SeqNumber(u32::MAX - 5));
        assert!(low > high);
        assert!(high < low);
        assert_eq!(low.partial_cmp(&low), Some(Ordering::Equal));
        assert_eq!(low - high, 11);
        assert_eq!(high - low, -11);
        assert_eq!(high + 11, low);
        assert_eq!(low - 11, high);
    }
}
