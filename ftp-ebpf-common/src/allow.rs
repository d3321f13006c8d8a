//! `--allow-from`: networks whose new connections pass the guard (monitoring hosts, backup
//! servers). The loader writes them into the LPM trie ALLOW_FROM; the programs look a
//! refused SYN's source up there, and only then, so the fast path pays nothing.

use bytemuck::{Pod, Zeroable};

use crate::addr::{Addr, Family, split};

/// The data of an ALLOW_FROM key: the family byte first, so that one trie holds both
/// families and a prefix of one never matches an address of the other.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SourceKey {
    pub family: u8,
    pub addr: Addr,
}

/// Bits of the family byte ahead of the address in every prefix.
const FAMILY_BITS: u32 = 8;

/// The prefix length of a lookup: all of `SourceKey`.
pub const LOOKUP_PREFIX: u32 = (size_of::<SourceKey>() * 8) as u32;

impl SourceKey {
    /// The key of a packet's source address, as `addr::split` stores it.
    pub fn new(family: u8, addr: Addr) -> Self {
        Self { family, addr }
    }
}

/// A network of `--allow-from`: ADDRESS/LENGTH, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    family: Family,
    addr: Addr,
    len: u8,
}

impl Cidr {
    /// The ALLOW_FROM entry of this network: (prefix length, key data).
    pub fn key(&self) -> (u32, SourceKey) {
        (
            FAMILY_BITS + u32::from(self.len),
            SourceKey::new(self.family.as_u8(), self.addr),
        )
    }

    /// The family's address length in bits.
    fn max_len(family: Family) -> u8 {
        match family {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// Why a text is no `--allow-from` network; each says what to give instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidrError {
    /// Not ADDRESS or ADDRESS/LENGTH.
    NotANetwork,
    /// A prefix length beyond the family's bits (32 or 128).
    Length(u8),
    /// Address bits set beyond the prefix: the network it most likely means.
    HostBits(Cidr),
    /// An IPv4-mapped IPv6 network (::ffff:a.b.c.d/n): IPv4 packets never carry it.
    Mapped,
}

impl core::fmt::Display for CidrError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotANetwork => f.write_str(
                "not a network: expected ADDRESS/LENGTH or ADDRESS, e.g. 192.0.2.0/24 or 2001:db8::/32",
            ),
            Self::Length(max) => write!(f, "the prefix length must be 0-{max}"),
            Self::HostBits(network) => write!(
                f,
                "address bits are set beyond the prefix length: give the network, {network}"
            ),
            Self::Mapped => f.write_str(
                "an IPv4-mapped IPv6 network never matches (IPv4 packets carry IPv4 addresses): give it as IPv4",
            ),
        }
    }
}

impl core::error::Error for CidrError {}

impl core::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (address, len) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (text, None),
        };
        let ip: core::net::IpAddr = address.parse().map_err(|_| CidrError::NotANetwork)?;
        if let core::net::IpAddr::V6(v6) = ip {
            if v6.to_ipv4_mapped().is_some() {
                return Err(CidrError::Mapped);
            }
        }
        let (family, addr) = split(ip);
        let max = Self::max_len(family);
        let len = match len {
            None => max,
            Some(len) => {
                // Digits only: `u8::from_str` would also take "+24".
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::NotANetwork);
                }
                len.parse::<u8>()
                    .ok()
                    .filter(|&len| len <= max)
                    .ok_or(CidrError::Length(max))?
            }
        };
        let mut network = addr;
        for (i, byte) in network.iter_mut().enumerate() {
            let kept = usize::from(len).saturating_sub(i * 8).min(8);
            *byte &= !(0xffu16 >> kept) as u8;
        }
        let cidr = Self {
            family,
            addr: network,
            len,
        };
        if network != addr {
            return Err(CidrError::HostBits(cidr));
        }
        Ok(cidr)
    }
}

/// ADDRESS/LENGTH, as `--allow-from` takes it.
impl core::fmt::Display for Cidr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ip = crate::addr::to_ip(self.family.as_u8(), &self.addr).ok_or(core::fmt::Error)?;
        write!(f, "{ip}/{}", self.len)
    }
}

#[cfg(test)]
mod tests {
    use std::string::ToString;

    use super::*;
    use crate::addr::ipv4;

    fn cidr(text: &str) -> Result<Cidr, CidrError> {
        text.parse()
    }

    #[test]
    fn networks_parse_into_keys_that_match_only_their_family() {
        let v4 = cidr("192.0.2.0/24").unwrap();
        assert_eq!(
            v4.key(),
            (32, SourceKey::new(4, ipv4([192, 0, 2, 0]))),
            "8 bits of family, then 24 of address"
        );
        assert_eq!(v4.to_string(), "192.0.2.0/24");
        let host = cidr("192.0.2.7").unwrap();
        assert_eq!(host.key().0, 40);
        assert_eq!(host.to_string(), "192.0.2.7/32");
        let v6 = cidr("2001:db8::/32").unwrap();
        assert_eq!(v6.key().0, 40);
        assert_eq!(v6.key().1.family, 6);
        assert_eq!(cidr("::/0").unwrap().key(), (8, SourceKey::new(6, [0; 16])));
        assert_eq!(
            cidr("0.0.0.0/0").unwrap().key(),
            (8, SourceKey::new(4, [0; 16]))
        );
        assert_eq!(LOOKUP_PREFIX, 136);
    }

    #[test]
    fn bad_networks_say_what_to_give() {
        assert_eq!(cidr("192.0.2.0/33"), Err(CidrError::Length(32)));
        assert_eq!(cidr("2001:db8::/129"), Err(CidrError::Length(128)));
        for bad in [
            "",
            "192.0.2.0/",
            "192.0.2.0/+8",
            "192.0.2/24",
            "192.0.2.0/24/1",
            "host.example/24",
            "192.0.2.0 /24",
        ] {
            assert_eq!(cidr(bad), Err(CidrError::NotANetwork), "{bad:?}");
        }
        let Err(CidrError::HostBits(network)) = cidr("192.0.2.77/24") else {
            panic!("host bits accepted");
        };
        assert_eq!(network.to_string(), "192.0.2.0/24");
        let Err(CidrError::HostBits(network)) = cidr("2001:db8::1/127") else {
            panic!("host bits accepted");
        };
        assert_eq!(network.to_string(), "2001:db8::/127");
        assert!(cidr("10.255.255.254/31").is_ok());
        assert!(cidr("10.255.255.255/31").is_err());
        assert_eq!(cidr("::ffff:192.0.2.0/120"), Err(CidrError::Mapped));
        assert!(
            CidrError::HostBits(network)
                .to_string()
                .ends_with("give the network, 2001:db8::/127")
        );
    }
}
