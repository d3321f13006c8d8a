//! `--allow-from` (`ftp_ebpf_common::allow`): a SYN the guard would refuse passes when its
//! source lies in one of the listed networks.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use ftp_ebpf_common::{
    allow::{LOOKUP_PREFIX, SourceKey},
    contract::ALLOW_FROM_ENTRIES,
    stats::Counter,
};

use crate::{
    maps::{count, local},
    packet::{Frame, Segment},
};

/// The listed networks (`contract::ALLOW_FROM`), written by the loader at start and reload.
#[map]
pub static ALLOW_FROM: LpmTrie<SourceKey, u8> = LpmTrie::with_max_entries(ALLOW_FROM_ENTRIES, 0);

/// Whether a SYN to a guarded port that nothing admits comes from a listed network, and so
/// passes (counted). Never from one of this host's own addresses, which no packet arriving
/// from outside carries, even when a listed network holds them. A subprogram of its own:
/// only refused SYNs reach it, and only while the list is not empty; its key lives on its
/// own stack, not on that of the entry point, which the control scanner's chain shares.
#[inline(never)]
pub fn admits(frame: &impl Frame, segment: &Segment) -> bool {
    let Some(src) = segment.load_source(frame) else {
        return false;
    };
    let key = Key::new(LOOKUP_PREFIX, SourceKey::new(segment.family, src));
    if ALLOW_FROM.get(&key).is_none() || local(segment.family, src) {
        return false;
    }
    count(Counter::AllowedFromSource);
    true
}
