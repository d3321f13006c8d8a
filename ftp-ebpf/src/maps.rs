//! The maps and settings the modules share, and the helpers to reach them: the
//! bottom layer, importing nothing of the crate. A module's own scratch space (SCAN,
//! OPTIONS) is declared beside the module.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use ftp_ebpf_common::{
    addr::{Addr, AddrKey},
    config::Config,
    contract::{
        DEFAULT_MAX_CONTROLS, DEFAULT_MAX_EXPECTATIONS, DEFAULT_MAX_FLOWS, LOCAL_ADDRS_ENTRIES,
        PORTS_ENTRIES,
    },
    control::ControlState,
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
    policy::PortInfo,
    share::ClientShare,
    stats::{COUNTERS, Counter},
};

// Each map's identifier is its name in `ftp_ebpf_common::contract`, which the
// loader finds it by (its tests check the two agree). The loader sizes the tables at load
// time; these are the defaults. The three tables are
// LRU maps so that nothing has to sweep them: what is stale is judged when it is looked up
// (an expired expectation, a finished flow), and the kernel reuses the least recently used
// entries when a table is full. All expectations live equally long, so the least recently
// used one is the first to expire; a flow or control connection evicted while still in use
// loses nothing the guard needs, as only SYNs are judged.
#[map]
pub static EXPECTATIONS: LruHashMap<ExpectKey, ExpectValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_EXPECTATIONS, 0);

/// Control connections, keyed client -> server.
#[map]
pub static CONTROLS: LruHashMap<FlowKey, ControlState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONTROLS, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Each client address's (an IPv6 client's /64's) share of EXPECTATIONS.
#[map]
pub static CLIENTS: LruHashMap<AddrKey, ClientShare> =
    LruHashMap::with_max_entries(DEFAULT_MAX_EXPECTATIONS, 0);

/// This host's own addresses, kept current by the loader: a segment from one of them
/// cannot arrive from outside, so one that does is spoofed.
#[map]
pub static LOCAL_ADDRS: HashMap<AddrKey, u8> = HashMap::with_max_entries(LOCAL_ADDRS_ENTRIES, 0);

/// One `PortInfo` per TCP port: the class the loader gave it, and when it was last
/// announced and admitted.
#[map]
pub static PORTS: Array<PortInfo> = Array::with_max_entries(PORTS_ENTRIES, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// The settings (`Config`), written by the loader at start and at reload.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The current settings. Looked up per use rather than passed around: an array lookup is
/// inlined by the verifier, and BPF calls have only five argument registers.
#[inline(always)]
pub fn config() -> &'static Config {
    CONFIG.get(0).unwrap_or(&Config::DEFAULT)
}

/// Whether `addr` is one of this host's own addresses.
#[inline(always)]
pub fn local(family: u8, addr: Addr) -> bool {
    let key = AddrKey::new(family, addr);
    // SAFETY: a plain-data map value, only tested for presence.
    unsafe { LOCAL_ADDRS.get(&key) }.is_some()
}

#[inline(always)]
pub fn port(port: u16) -> Option<*mut PortInfo> {
    PORTS.get_ptr_mut(u32::from(port))
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; nothing else on this CPU writes it concurrently.
        unsafe { *value += 1 };
    }
}

/// CLOCK_MONOTONIC, as of the last tick: every timeout here counts seconds, and the coarse
/// clock is a memory read where the precise one reads the clock source.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}

/// The same clock read precisely: what tracing programs (the TLS probes) may read, as
/// they may not read the coarse one. Both count from boot, so their times compare.
#[inline(always)]
pub fn precise_now_ns() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}
