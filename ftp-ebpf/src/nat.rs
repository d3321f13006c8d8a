//! NAT (`ftp_ebpf_common::nat`): `--public-address`, this host's addresses as the far side
//! of its 1:1 NAT knows them, which its announcements name; and `--nat-inside`, the
//! interfaces of a gateway whose hosts' announcements are rewritten (`rewrite`).

use aya_ebpf::{macros::map, maps::HashMap};
use ftp_ebpf_common::{
    addr::AddrKey,
    contract::{NAT_INSIDE_ENTRIES, PUBLIC_ADDRS_ENTRIES},
    flow::FlowKey,
    nat::{NatInside, PublicAddr},
    parse::{Announcement, Sender},
    policy,
};

use crate::maps::{config, local};

/// The mappings by PUBLIC (`contract::PUBLIC_ADDRS`), written by the loader at start and
/// reload.
#[map]
pub static PUBLIC_ADDRS: HashMap<AddrKey, PublicAddr> =
    HashMap::with_max_entries(PUBLIC_ADDRS_ENTRIES, 0);

/// The `--nat-inside` interfaces by index (`contract::NAT_INSIDE`), written by the loader
/// as it attaches.
#[map]
pub static NAT_INSIDE: HashMap<u32, NatInside> = HashMap::with_max_entries(NAT_INSIDE_ENTRIES, 0);

/// What the hosts behind interface `ifindex` are translated to, if it is `--nat-inside`.
#[inline(always)]
pub fn inside(ifindex: u32) -> Option<&'static NatInside> {
    if config().nat_inside == 0 {
        return None;
    }
    // SAFETY: a plain-data map value, only read.
    unsafe { NAT_INSIDE.get(&ifindex) }
}

/// The `--public-address` mapping of an address this host announced (None for an
/// announcement by the far end: a peer naming this host's public address is no more its
/// own than any other). Looked up only when mappings exist and the address is not the
/// announcer's own already.
#[inline(always)]
pub fn public_address(
    announcement: &Announcement,
    control: &FlowKey,
    announcer: Sender,
) -> Option<&'static PublicAddr> {
    let own = policy::own_address(control, announcer);
    if config().public_addresses == 0
        || announcement.family != control.family
        || announcement.addr == own
        || !local(control.family, own)
    {
        return None;
    }
    // SAFETY: a plain-data map value, only read.
    unsafe { PUBLIC_ADDRS.get(&AddrKey::new(control.family, announcement.addr)) }
}
