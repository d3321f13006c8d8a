//! An interface's link type (ARPHRD_*), which decides whether and how it can be guarded:
//! Ethernet frames and frames that start at the IP header have programs of their own
//! (`contract::LinkLayer`); every other link type is refused with one sentence.

use anyhow::{Result, bail};
use ftp_ebpf_common::contract::LinkLayer;

use crate::attach;

/// Raw IP (LTE/5G modems: qmi_wwan, rmnet); libc does not name it.
const ARPHRD_RAWIP: u16 = 519;
/// GRE over IPv6; libc does not name it.
const ARPHRD_IP6GRE: u16 = 823;

/// An interface's link type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LinkType {
    /// Its ARPHRD_* number.
    number: u16,
    /// What `ip link` calls it (`link/<name>`), for the types an admin may meet.
    name: Option<&'static str>,
}

impl std::fmt::Display for LinkType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name {
            Some(name) => write!(f, "{name} ({})", self.number),
            None => write!(f, "number {}", self.number),
        }
    }
}

impl LinkType {
    fn new(number: u16) -> Self {
        let name = Some(match number {
            libc::ARPHRD_ETHER => "ether",
            libc::ARPHRD_NONE => "none",
            libc::ARPHRD_PPP => "ppp",
            ARPHRD_RAWIP => "rawip",
            libc::ARPHRD_TUNNEL => "ipip",
            libc::ARPHRD_TUNNEL6 => "tunnel6",
            libc::ARPHRD_SIT => "sit",
            libc::ARPHRD_LOOPBACK => "loopback",
            libc::ARPHRD_IPGRE => "gre",
            ARPHRD_IP6GRE => "gre6",
            libc::ARPHRD_INFINIBAND => "infiniband",
            libc::ARPHRD_CAN => "can",
            libc::ARPHRD_IEEE80211_RADIOTAP => "ieee802.11/radiotap",
            libc::ARPHRD_IEEE802154 => "ieee802.15.4",
            _ => return Self { number, name: None },
        });
        Self { number, name }
    }

    /// The programs that guard this link type, or the sentence refusing it for
    /// `interface`.
    fn link(self, interface: &str) -> Result<LinkLayer> {
        match self.number {
            // Loopback frames carry an Ethernet header too (of zero addresses). Guarding
            // `lo` guards the host's connections to its own guarded ports.
            libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK => return Ok(LinkLayer::Ethernet),
            // tun and WireGuard (none), PPP and raw-IP modems have no header of their own
            // at tc: their drivers set the MAC header to the IP header of what they
            // receive, and nothing is prepended before what they send reaches tc.
            libc::ARPHRD_NONE | libc::ARPHRD_PPP | ARPHRD_RAWIP => return Ok(LinkLayer::Ip),
            _ => {}
        }
        let what = format!("ftp-tracker cannot guard {interface}, whose link type is {self}");
        match self.number {
            // Where tc finds their frames starting depends on the tunnel's mode (GRE
            // without a fixed remote address keeps the outer header in front) and, for the
            // IP-in-IP drivers, on whether the kernel resets the MAC header to the inner
            // packet: a guard reading the outer header would let every SYN pass.
            libc::ARPHRD_IPGRE
            | ARPHRD_IP6GRE
            | libc::ARPHRD_TUNNEL
            | libc::ARPHRD_TUNNEL6
            | libc::ARPHRD_SIT => bail!(
                "{what}: an IP tunnel's frames may start at its outer IP header, where the guard would see no TCP at all; carry the FTP traffic in a WireGuard tunnel or an Ethernet one (gretap, ip6gretap, VXLAN) instead, and guard that"
            ),
            _ => bail!(
                "{what}: only Ethernet interfaces and interfaces whose frames start at the IP header (tun, WireGuard, PPP, raw-IP modems) can be guarded; guard the interface its IP traffic arrives on instead"
            ),
        }
    }
}

/// The link type of `interface` in this process's network namespace (asked through a
/// socket, as `attach::driver_info` is, rather than /sys, which may show another
/// namespace's interfaces).
fn link_type(interface: &str) -> Result<LinkType> {
    attach::check_interface(interface)?;
    // SAFETY: all-zero is a valid ifreq (a name and a union of plain data).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(interface.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: a datagram socket used for one ioctl, closed right after; SIOCGIFHWADDR
    // fills in the request's address.
    let ok = unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        let ok = socket >= 0 && libc::ioctl(socket, libc::SIOCGIFHWADDR, &mut request) == 0;
        if socket >= 0 {
            libc::close(socket);
        }
        ok
    };
    if !ok {
        bail!("{interface} went away while its link type was read: start again once it is back");
    }
    // SAFETY: SIOCGIFHWADDR set the hardware address member of the union.
    let family = unsafe { request.ifr_ifru.ifru_hwaddr.sa_family };
    Ok(LinkType::new(family))
}

/// The programs that guard `interface`, or the sentence refusing it.
pub fn link(interface: &str) -> Result<LinkLayer> {
    link_type(interface)?.link(interface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_and_layer_3_links_are_guarded_others_refused_in_one_sentence() {
        for number in [libc::ARPHRD_ETHER, libc::ARPHRD_LOOPBACK] {
            assert_eq!(
                LinkType::new(number).link("eth0").unwrap(),
                LinkLayer::Ethernet
            );
        }
        for number in [libc::ARPHRD_NONE, libc::ARPHRD_PPP, ARPHRD_RAWIP] {
            assert_eq!(LinkType::new(number).link("tun0").unwrap(), LinkLayer::Ip);
        }
        for (number, interface, fix) in [
            (
                libc::ARPHRD_INFINIBAND,
                "ib0",
                "guard the interface its IP traffic arrives on",
            ),
            (libc::ARPHRD_IPGRE, "gre1", "gretap"),
            (libc::ARPHRD_TUNNEL, "ipip0", "WireGuard"),
            (
                libc::ARPHRD_CAN,
                "can0",
                "guard the interface its IP traffic arrives on",
            ),
            (
                4242,
                "odd0",
                "guard the interface its IP traffic arrives on",
            ),
        ] {
            let sentence = LinkType::new(number)
                .link(interface)
                .unwrap_err()
                .to_string();
            assert!(
                sentence.starts_with(&format!(
                    "ftp-tracker cannot guard {interface}, whose link type is "
                )) && sentence.contains(&number.to_string())
                    && sentence.contains(fix)
                    && !sentence.contains('\n')
                    && sentence.matches(". ").count() == 0,
                "{sentence}"
            );
        }
    }
}
