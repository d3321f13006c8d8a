//! `--monitor`: the programs track and count exactly as when they enforce, but every packet
//! the guard refuses passes, counted as enforcement would have dropped it.

use aya_ebpf::{macros::map, maps::Array};
use ftp_ebpf_common::{contract::PORTS_ENTRIES, stats::Counter};

use crate::maps::{config, count};

/// SYNs to each guarded port refused while monitoring (`contract::WOULD_DROP`).
#[map]
pub static WOULD_DROP: Array<u64> = Array::with_max_entries(PORTS_ENTRIES, 0);

/// Whether an inbound packet the guard refused passes all the same: only while monitoring,
/// and then counted. The one place a would-be drop is decided (an event stream's
/// "would_drop" event belongs here).
#[inline(never)]
pub fn spare() -> bool {
    if config().monitor == 0 {
        return false;
    }
    count(Counter::WouldDrop);
    true
}

/// Counts, while monitoring, a refused inbound SYN to guarded port `port`: what
/// `ftp-loader would-drop` lists, so that an admin sees the services enforcement would cut
/// off before enforcing.
#[inline(always)]
pub fn refused_syn(port: u16) {
    if config().monitor == 0 {
        return;
    }
    if let Some(slot) = WOULD_DROP.get_ptr_mut(u32::from(port)) {
        // Every CPU adds to the slot, so atomically: BPF's atomic add (core's atomics have
        // no read-modify-write on this target).
        // SAFETY: `slot` is an array map value, 8-byte aligned and valid for the program's
        // run; the instruction writes nothing else.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({slot} + 0) += {one}",
                slot = in(reg) slot,
                one = in(reg) 1u64,
                options(nostack),
            )
        };
    }
}
