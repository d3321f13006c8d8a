//! Addresses as the maps store them: both families in one 16-byte field, network order.

/// IPv4; the address sits in the first four bytes, the rest is zero.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

pub type Addr = [u8; 16];

/// An address with its family, as a map key (this host's own addresses, clients' shares).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AddrKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: Addr,
}

impl AddrKey {
    pub fn new(family: u8, addr: Addr) -> Self {
        Self {
            family,
            _pad: [0; 3],
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

#[cfg(feature = "user")]
pub fn to_ip(family: u8, addr: &Addr) -> Option<core::net::IpAddr> {
    match family {
        FAMILY_IPV4 => Some(core::net::IpAddr::from([
            addr[0], addr[1], addr[2], addr[3],
        ])),
        FAMILY_IPV6 => Some(core::net::IpAddr::from(*addr)),
        _ => None,
    }
}
