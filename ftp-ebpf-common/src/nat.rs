//! NAT, in two roles.
//!
//! `--public-address PUBLIC[=LOCAL]`: a host behind 1:1 NAT (a cloud VM, a server behind a
//! port-forwarding router) announces the address its peers reach it at, PUBLIC, while its
//! packets carry its own address. The loader writes each mapping into PUBLIC_ADDRS; an
//! announcement of PUBLIC by this host is then its own, and its expectation is keyed on the
//! address the data connection's SYN will carry once the NAT has translated it: LOCAL, or
//! when LOCAL is omitted the address the control connection reached.

//!
//! `--nat-inside IFACE=PUBLIC`: a NAT gateway whose interface IFACE faces the hosts it
//! translates to PUBLIC (masqueraded clients, servers behind a port forward), which announce
//! their own private addresses. As the kernel's `nf_nat_ftp` does, the gateway rewrites
//! each such IPv4 address in the announcement to PUBLIC as the segment arrives on IFACE,
//! before netfilter sees it, and adjusts the sequence numbers of the rest of the control
//! connection (`seqadj`): netfilter, the outside interface and the far end then see one
//! consistent connection whose announcements name PUBLIC.

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::{Addr, AddrKey, Family, split},
    parse::Mode,
    seqadj::SeqAdjust,
};

/// NAT_INSIDE's value, by the inside interface's index: what its hosts are translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NatInside {
    /// The IPv4 address, as `addr::ipv4` stores it.
    pub public: Addr,
}

/// The longest address text: `255,255,255,255`.
pub const MAX_ADDRESS_TEXT: usize = 15;

/// An IPv4 address as an announcement of `mode` writes it: `198,51,100,1` in a 227 or a
/// PORT, `198.51.100.1` in an EPRT. Returns the text's length.
pub fn address_text(addr: &Addr, mode: u8, out: &mut [u8; 16]) -> usize {
    let separator = if mode == Mode::ExtendedActive as u8 {
        b'.'
    } else {
        b','
    };
    let mut len = 0;
    for (i, &octet) in addr[..4].iter().enumerate() {
        if i > 0 {
            out[len & 15] = separator;
            len += 1;
        }
        if octet >= 100 {
            out[len & 15] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len & 15] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len & 15] = b'0' + octet % 10;
        len += 1;
    }
    len
}

/// NAT_BINDINGS' value, keyed by the data connection a rewritten announcement expects as
/// the outside sees it (`expect::ExpectKey`: the far end connecting to PUBLIC and the
/// port): where the gateway sends it, as `nf_nat_ftp`'s expectation does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NatBinding {
    /// The host behind the gateway that announced the port.
    pub inside: Addr,
    pub expires_ns: u64,
}

/// NAT_FLOWS' value: a translated data connection, one entry per direction, keyed by the
/// 5-tuple as it reaches the outside interface: arriving (the far end to PUBLIC), the
/// destination becomes the inside host; leaving (the inside host to the far end), the
/// source becomes PUBLIC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NatFlow {
    /// The address written in place of the key's.
    pub addr: Addr,
    /// `NAT_TO_INSIDE` (the destination is rewritten) or `NAT_TO_OUTSIDE` (the source).
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// `NatFlow::direction` of a segment arriving from the far end.
pub const NAT_TO_INSIDE: u8 = 1;
/// `NatFlow::direction` of a segment of the inside host leaving.
pub const NAT_TO_OUTSIDE: u8 = 2;

/// NAT_CONTROLS' value, by control connection (client -> server, as the inside interface
/// sees it): what the gateway rewrote in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NatControl {
    /// The rewritten direction's sequence numbers (its acknowledgements, the other way).
    pub adjust: SeqAdjust,
    /// The stream position (its sender's numbering) of the latest rewritten address text,
    /// so that a retransmission carrying it is rewritten identically.
    pub text_seq: u32,
    pub old_len: u8,
    pub new_len: u8,
    /// The `parse::Sender` whose announcements were rewritten (the inside host).
    pub sender: u8,
    pub _pad: u8,
    /// The text written in place of the old one.
    pub text: [u8; 16],
}

/// PUBLIC_ADDRS' value: where connections to the key's PUBLIC address arrive.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PublicAddr {
    /// LOCAL, when `has_local`.
    pub local: Addr,
    pub has_local: u8,
    pub _pad: [u8; 3],
}

impl PublicAddr {
    /// The listener of an announcement of this PUBLIC address on a control connection that
    /// reached `own`.
    pub fn listener(&self, own: Addr) -> Addr {
        if self.has_local != 0 { self.local } else { own }
    }
}

/// One `--public-address`: PUBLIC, or PUBLIC=LOCAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublicMapping {
    family: Family,
    public: Addr,
    local: Option<Addr>,
}

impl PublicMapping {
    /// The PUBLIC_ADDRS entry of this mapping.
    pub fn entry(&self) -> (AddrKey, PublicAddr) {
        (
            AddrKey::new(self.family.as_u8(), self.public),
            PublicAddr {
                local: self.local.unwrap_or([0; 16]),
                has_local: u8::from(self.local.is_some()),
                _pad: [0; 3],
            },
        )
    }

    pub fn public(&self) -> core::net::IpAddr {
        self.family.ip(&self.public)
    }

    pub fn local(&self) -> Option<core::net::IpAddr> {
        self.local.map(|local| self.family.ip(&local))
    }
}

/// Why a text is no `--public-address`; each says what to give instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicMappingError {
    /// Not ADDRESS or ADDRESS=ADDRESS.
    NotAMapping,
    /// PUBLIC and LOCAL of different families: a 1:1 NAT keeps the family.
    Families,
    /// PUBLIC is LOCAL: nothing to map.
    Same,
    /// An address no packet carries as a host's (unspecified, multicast, broadcast).
    NotAHost,
}

impl core::fmt::Display for PublicMappingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NotAMapping => {
                "expected PUBLIC or PUBLIC=LOCAL (the address peers reach this host at, and the one the NAT translates it to), e.g. 203.0.113.5 or 203.0.113.5=10.0.0.5"
            }
            Self::Families => "PUBLIC and LOCAL must be of one family: a 1:1 NAT keeps it",
            Self::Same => "PUBLIC and LOCAL are the same address: nothing is translated, so leave the option out",
            Self::NotAHost => {
                "not a host's address (unspecified, multicast or broadcast): give the address peers connect to"
            }
        })
    }
}

impl core::error::Error for PublicMappingError {}

impl core::str::FromStr for PublicMapping {
    type Err = PublicMappingError;

    fn from_str(text: &str) -> Result<Self, PublicMappingError> {
        let host = |text: &str| -> Result<(Family, Addr), PublicMappingError> {
            let ip: core::net::IpAddr = text
                .trim()
                .parse()
                .map_err(|_| PublicMappingError::NotAMapping)?;
            let ip = ip.to_canonical();
            let unusable = match ip {
                core::net::IpAddr::V4(v4) => {
                    v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
                }
                core::net::IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
            };
            if unusable {
                return Err(PublicMappingError::NotAHost);
            }
            Ok(split(ip))
        };
        let (public, local) = match text.split_once('=') {
            Some((public, local)) => (public, Some(local)),
            None => (text, None),
        };
        let (family, public) = host(public)?;
        let local = match local.map(host).transpose()? {
            Some((local_family, _)) if local_family != family => {
                return Err(PublicMappingError::Families);
            }
            Some((_, local)) if local == public => return Err(PublicMappingError::Same),
            local => local.map(|(_, local)| local),
        };
        Ok(Self {
            family,
            public,
            local,
        })
    }
}

/// PUBLIC, or PUBLIC=LOCAL, as parsed.
impl core::fmt::Display for PublicMapping {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.local() {
            Some(local) => write!(f, "{}={local}", self.public()),
            None => write!(f, "{}", self.public()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::string::ToString;

    #[test]
    fn addresses_are_written_as_each_announcement_writes_them() {
        for (octets, mode, text) in [
            ([198, 51, 100, 1], Mode::Passive, &b"198,51,100,1"[..]),
            ([0, 0, 0, 0], Mode::Active, b"0,0,0,0"),
            ([255, 255, 255, 255], Mode::Active, b"255,255,255,255"),
            ([10, 0, 2, 2], Mode::ExtendedActive, b"10.0.2.2"),
            ([203, 0, 113, 99], Mode::ExtendedActive, b"203.0.113.99"),
        ] {
            let mut out = [0u8; 16];
            let len = address_text(&ipv4(octets), mode as u8, &mut out);
            assert_eq!(&out[..len], text);
            assert!(len <= MAX_ADDRESS_TEXT);
        }
    }

    use super::*;
    use crate::addr::{FAMILY_IPV4, FAMILY_IPV6, ipv4};

    #[test]
    fn public_alone_keys_on_the_address_the_control_connection_reached() {
        let mapping: PublicMapping = "203.0.113.5".parse().unwrap();
        let (key, value) = mapping.entry();
        assert_eq!(key, AddrKey::new(FAMILY_IPV4, ipv4([203, 0, 113, 5])));
        let own = ipv4([10, 0, 0, 5]);
        assert_eq!(value.listener(own), own);
        assert_eq!(mapping.to_string(), "203.0.113.5");
    }

    #[test]
    fn public_with_local_keys_on_local() {
        let mapping: PublicMapping = "203.0.113.5=10.0.0.6".parse().unwrap();
        let (_, value) = mapping.entry();
        assert_eq!(value.listener(ipv4([10, 0, 0, 5])), ipv4([10, 0, 0, 6]));
        assert_eq!(mapping.to_string(), "203.0.113.5=10.0.0.6");
        let v6: PublicMapping = "2001:db8::5=fd00::5".parse().unwrap();
        assert_eq!(v6.entry().0.family, FAMILY_IPV6);
        // A dual-stack spelling of an IPv4 address is that address.
        let mapped: PublicMapping = "::ffff:203.0.113.5".parse().unwrap();
        assert_eq!(mapped, "203.0.113.5".parse().unwrap());
    }

    #[test]
    fn what_is_no_mapping_says_what_to_give() {
        for (text, error) in [
            ("", PublicMappingError::NotAMapping),
            ("203.0.113.5=", PublicMappingError::NotAMapping),
            ("example.com", PublicMappingError::NotAMapping),
            ("203.0.113.0/24", PublicMappingError::NotAMapping),
            ("203.0.113.5=fd00::5", PublicMappingError::Families),
            ("203.0.113.5=203.0.113.5", PublicMappingError::Same),
            ("0.0.0.0", PublicMappingError::NotAHost),
            ("203.0.113.5=224.0.0.1", PublicMappingError::NotAHost),
            ("::", PublicMappingError::NotAHost),
        ] {
            assert_eq!(text.parse::<PublicMapping>(), Err(error), "{text:?}");
        }
    }
}
