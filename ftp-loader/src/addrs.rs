//! This host's own addresses, as the guard knows them (LOCAL_ADDRS): a segment that arrives
//! from outside with one of them as its source is spoofed. The loader fills the table
//! before the programs are attached, so that the guard knows them from the first packet,
//! and keeps it equal to the addresses of its network namespace as they come and go.

use std::{collections::HashSet, net::IpAddr};

use anyhow::{Context, Result, anyhow};
use aya::{Ebpf, maps::MapError};
use ftp_ebpf_common::addr::{AddrKey, to_ip};

use ftp_ebpf_common::contract::LOCAL_ADDRS;

use crate::watch;

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
/// struct ifaddrmsg: family, prefix length, flags, scope, interface index.
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// The addresses of every interface in this network namespace, both families.
pub fn of_host() -> Result<Vec<IpAddr>> {
    // An ifaddrmsg asking for every family.
    let request = [libc::AF_UNSPEC as u8; IFADDRMSG_LEN];
    let datagrams = watch::dump(libc::NETLINK_ROUTE, RTM_GETADDR, &request)
        .context("listing this host's addresses (rtnetlink)")?;
    Ok(datagrams.iter().flat_map(|d| parse(d)).collect())
}

/// The addresses in one datagram of RTM_NEWADDR messages.
fn parse(datagram: &[u8]) -> Vec<IpAddr> {
    watch::messages(datagram)
        .filter(|(kind, _)| *kind == RTM_NEWADDR)
        .filter_map(|(_, body)| {
            let family = i32::from(*body.first()?);
            let mut local = None;
            let mut address = None;
            for (kind, value) in watch::attributes(body.get(IFADDRMSG_LEN..)?) {
                match kind {
                    IFA_LOCAL => local = Some(value),
                    IFA_ADDRESS => address = Some(value),
                    _ => {}
                }
            }
            // On a point-to-point link IFA_ADDRESS is the peer's and IFA_LOCAL ours;
            // otherwise (and always for IPv6 without a peer) IFA_ADDRESS is ours.
            let ours = local.or(address)?;
            match family {
                libc::AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(ours).ok()?)),
                libc::AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(ours).ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// What `set` changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconciled {
    /// Addresses the guard knows now.
    pub known: usize,
    pub added: usize,
    pub removed: usize,
}

impl Reconciled {
    pub fn changed(&self) -> bool {
        self.added + self.removed > 0
    }
}

/// Makes LOCAL_ADDRS hold exactly `addresses`: the new ones added, the gone removed.
pub fn set(ebpf: &mut Ebpf, addresses: &[IpAddr]) -> Result<Reconciled> {
    let mut table = LOCAL_ADDRS.of_mut(ebpf)?;
    let wanted: HashSet<AddrKey> = addresses.iter().map(|&ip| AddrKey::from_ip(ip)).collect();
    let present: HashSet<AddrKey> = table.keys().collect::<Result<_, _>>().with_context(|| {
        format!("reading the guard's table of this host's addresses ({LOCAL_ADDRS})")
    })?;
    let failed = |entry: &AddrKey, error: MapError| {
        let address = to_ip(entry.family, &entry.addr)
            .map_or_else(|| format!("{entry:?}"), |ip| ip.to_string());
        anyhow!(error).context(format!(
            "updating the guard's table of this host's addresses ({LOCAL_ADDRS}) at {address} failed"
        ))
    };
    // The gone first, so that their room is free for the new.
    let gone: Vec<&AddrKey> = present.difference(&wanted).collect();
    for entry in &gone {
        table.remove(*entry).map_err(|e| failed(entry, e))?;
    }
    let new: Vec<&AddrKey> = wanted.difference(&present).collect();
    for entry in &new {
        table.insert(*entry, 1, 0).map_err(|e| {
            let full = matches!(&e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG));
            if full {
                anyhow!(
                    "this host has {} addresses, more than the guard's table of them ({LOCAL_ADDRS}) holds",
                    wanted.len()
                )
            } else {
                failed(entry, e)
            }
        })?;
    }
    Ok(Reconciled {
        known: wanted.len(),
        added: new.len(),
        removed: gone.len(),
    })
}

/// Makes LOCAL_ADDRS hold the addresses this network namespace has now.
pub fn sync(ebpf: &mut Ebpf) -> Result<Reconciled> {
    set(ebpf, &of_host()?)
}

#[cfg(test)]
mod tests {
    use ftp_ebpf_common::addr::{FAMILY_IPV4, FAMILY_IPV6, ipv4};

    use super::*;

    /// An RTM_NEWADDR message of `family` with the attributes given.
    fn address_message(family: i32, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8; IFADDRMSG_LEN];
        body[0] = family as u8;
        for (kind, value) in attributes {
            let len = 4 + value.len();
            body.extend((len as u16).to_ne_bytes());
            body.extend(kind.to_ne_bytes());
            body.extend(*value);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut message = Vec::new();
        message.extend(((16 + body.len()) as u32).to_ne_bytes());
        message.extend(RTM_NEWADDR.to_ne_bytes());
        message.extend([0u8; 10]);
        message.extend(body);
        message
    }

    #[test]
    fn reads_the_local_address_of_each_family() {
        let v6: [u8; 16] = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let mut datagram = address_message(
            libc::AF_INET,
            &[(IFA_ADDRESS, &[192, 0, 2, 1]), (IFA_LOCAL, &[192, 0, 2, 1])],
        );
        // Point-to-point: IFA_ADDRESS is the peer.
        datagram.extend(address_message(
            libc::AF_INET,
            &[(IFA_ADDRESS, &[10, 9, 9, 9]), (IFA_LOCAL, &[10, 0, 0, 1])],
        ));
        datagram.extend(address_message(libc::AF_INET6, &[(IFA_ADDRESS, &v6)]));
        // A wrong length is no address.
        datagram.extend(address_message(libc::AF_INET, &[(IFA_LOCAL, &[1, 2, 3])]));
        assert_eq!(
            parse(&datagram),
            [
                IpAddr::from([192, 0, 2, 1]),
                IpAddr::from([10, 0, 0, 1]),
                IpAddr::from(v6)
            ]
        );
        assert!(parse(&datagram[..30]).is_empty());
    }

    #[test]
    fn a_mapped_address_is_its_ipv4_address() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let key = AddrKey::from_ip(mapped);
        assert_eq!(key, AddrKey::new(FAMILY_IPV4, ipv4([192, 0, 2, 7])));
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(AddrKey::from_ip(v6).family, FAMILY_IPV6);
    }

    #[test]
    fn this_kernel_answers_the_address_dump() {
        // Whatever addresses a test namespace has (a fresh one has none): the dump must be
        // understood to its end.
        of_host().unwrap();
    }
}
