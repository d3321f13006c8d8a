//! Addresses as the maps store them: both families in one 16-byte field, network order.

/// IPv4; the address sits in the first four bytes, the rest is zero.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

pub type Addr = [u8; 16];

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
