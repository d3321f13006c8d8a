//! Each client's share of the expectation table, so that one address cannot crowd out the
//! others by announcing without connecting (idle sessions that each sent PASV, say).
//!
//! A share counts the expectations a client's control connections created and gives one
//! back when one of them is consumed, displaced or removed with its connection. Entries
//! the table drops on its own (expired, or evicted when full) are never given back, so
//! the count starts over once per expectation timeout: by then everything it counted has
//! expired. A client therefore holds at most twice its share at any moment.

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::{AddrKey, FAMILY_IPV6},
    policy::coarse_time,
};

/// Whom a share belongs to: the client's address; for IPv6 its /64, which one host
/// usually holds whole and can pick addresses from at will.
pub fn client_key(family: u8, addr: &[u8; 16]) -> AddrKey {
    let mut key = AddrKey::new(family, *addr);
    if family == FAMILY_IPV6 {
        key.addr[8..].fill(0);
    }
    key
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ClientShare {
    /// `coarse_time` when the count last started over.
    pub since: u32,
    /// Expectations created since, less those given back.
    pub held: u32,
}

impl ClientShare {
    pub fn new(now_ns: u64) -> Self {
        Self {
            since: coarse_time(now_ns),
            held: 0,
        }
    }

    /// Takes one expectation of the share; false when the client holds `max` already.
    pub fn take(&mut self, now_ns: u64, expect_timeout_ns: u64, max: u32) -> bool {
        let now = coarse_time(now_ns);
        // One unit more than the timeout: `coarse_time` rounds down.
        if u64::from(now.wrapping_sub(self.since)) > u64::from(coarse_time(expect_timeout_ns)) + 1 {
            self.since = now;
            self.held = 0;
        }
        if self.held >= max {
            return false;
        }
        self.held += 1;
        true
    }

    /// An expectation of the client's is gone: consumed, displaced or removed.
    pub fn give_back(&mut self) {
        self.held = self.held.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{FAMILY_IPV4, ipv4};

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_share_is_capped_and_given_back() {
        let mut share = ClientShare::new(10 * S);
        for _ in 0..3 {
            assert!(share.take(10 * S, 300 * S, 3));
        }
        assert!(!share.take(11 * S, 300 * S, 3));
        share.give_back();
        assert!(share.take(12 * S, 300 * S, 3));
        assert!(!share.take(12 * S, 300 * S, 3));
    }

    #[test]
    fn a_share_starts_over_after_the_expectation_timeout() {
        let mut share = ClientShare::new(10 * S);
        assert!(share.take(10 * S, 300 * S, 1));
        assert!(!share.take(300 * S, 300 * S, 1), "the first may still live");
        assert!(
            share.take(313 * S, 300 * S, 1),
            "everything counted has expired"
        );
        let mut share = ClientShare::new(0);
        share.give_back();
        assert_eq!(share.held, 0, "never below nothing");
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a = client_key(
            FAMILY_IPV6,
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8],
        );
        let b = client_key(
            FAMILY_IPV6,
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9],
        );
        let c = client_key(
            FAMILY_IPV6,
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8],
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        let v4 = client_key(FAMILY_IPV4, &ipv4([192, 0, 2, 1]));
        assert_ne!(v4, client_key(FAMILY_IPV4, &ipv4([192, 0, 2, 2])));
    }
}
