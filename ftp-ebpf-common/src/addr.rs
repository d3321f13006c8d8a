//! Addresses as the maps store them: both families in one 16-byte field, network order.

/// An address family. The maps store it as a `u8` (`as_u8`, `from_u8`), in keys that
/// must stay plain data.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// The address sits in the first four bytes of an `Addr`, the rest is zero.
    V4 = 4,
    V6 = 6,
}

/// `Family::V4` as the maps store it.
pub const FAMILY_IPV4: u8 = Family::V4.as_u8();
/// `Family::V6` as the maps store it.
pub const FAMILY_IPV6: u8 = Family::V6.as_u8();

impl Family {
    pub const ALL: [Self; 2] = [Self::V4, Self::V6];

    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    pub const fn from_u8(family: u8) -> Option<Self> {
        match family {
            FAMILY_IPV4 => Some(Self::V4),
            FAMILY_IPV6 => Some(Self::V6),
            _ => None,
        }
    }

    /// As ftp-loader's listings spell it: `ipv4`, `ipv6`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    /// The address a map stores as this family's.
    pub fn ip(self, addr: &Addr) -> core::net::IpAddr {
        match self {
            Self::V4 => core::net::IpAddr::from([addr[0], addr[1], addr[2], addr[3]]),
            Self::V6 => core::net::IpAddr::from(*addr),
        }
    }

    /// The family of an address as the programs see it on the wire: an IPv4-mapped IPv6
    /// address (::ffff:a.b.c.d, as a dual-stack socket shows an IPv4 peer) is IPv4.
    pub const fn of(ip: core::net::IpAddr) -> Self {
        match ip.to_canonical() {
            core::net::IpAddr::V4(_) => Self::V4,
            core::net::IpAddr::V6(_) => Self::V6,
        }
    }
}

impl From<Family> for u8 {
    fn from(family: Family) -> u8 {
        family.as_u8()
    }
}

impl TryFrom<u8> for Family {
    type Error = u8;

    fn try_from(family: u8) -> Result<Self, u8> {
        Self::from_u8(family).ok_or(family)
    }
}

/// `IPv4`, `IPv6`.
impl core::fmt::Display for Family {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// From `name`'s spelling.
impl core::str::FromStr for Family {
    type Err = ();

    fn from_str(name: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|f| f.name() == name).ok_or(())
    }
}

/// An address as the maps store it, with its family (`Family::of`).
pub const fn split(ip: core::net::IpAddr) -> (Family, Addr) {
    match ip.to_canonical() {
        core::net::IpAddr::V4(v4) => (Family::V4, ipv4(v4.octets())),
        core::net::IpAddr::V6(v6) => (Family::V6, v6.octets()),
    }
}

pub type Addr = [u8; 16];

/// An address with its family, as a map key (this host's own addresses, clients' shares).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AddrKey {
    pub family: u8,
    // Two fields, not a [u8; 3]: zeroing three unaligned bytes compiles to a call of
    // `memset`, a BPF subprogram whose frame took the control scanner's chain (through
    // `share::take`) over 6.1's 512 bytes of combined stack.
    pub _pad: u8,
    pub _pad2: u16,
    pub addr: Addr,
}

impl AddrKey {
    pub fn new(family: u8, addr: Addr) -> Self {
        Self {
            family,
            _pad: 0,
            _pad2: 0,
            addr,
        }
    }

    /// The key of `ip` (an IPv4-mapped IPv6 address is the IPv4 address it stands for).
    pub const fn from_ip(ip: core::net::IpAddr) -> Self {
        let (family, addr) = split(ip);
        Self {
            family: family.as_u8(),
            _pad: 0,
            _pad2: 0,
            addr,
        }
    }
}

pub const fn ipv4(octets: [u8; 4]) -> Addr {
    let mut addr = [0u8; 16];
    addr[0] = octets[0];
    addr[1] = octets[1];
    addr[2] = octets[2];
    addr[3] = octets[3];
    addr
}

/// The address a map stores, None for an unknown family.
pub fn to_ip(family: u8, addr: &Addr) -> Option<core::net::IpAddr> {
    Some(Family::from_u8(family)?.ip(addr))
}
