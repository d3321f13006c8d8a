//! The maps and load-time settings the modules share, and the helpers to reach them: the
//! bottom layer, importing nothing of the crate. A module's own scratch space (SCAN,
//! OPTIONS) is declared beside the module.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use ftp_ebpf_common::{
    addr::AddrKey,
    contract::{
        DEFAULT_EXPECT_TIMEOUT_SECS, DEFAULT_FLOW_TIMEOUT_SECS, DEFAULT_MAX_CONTROLS,
        DEFAULT_MAX_EXPECTATIONS, DEFAULT_MAX_EXPECTED, DEFAULT_MAX_FLOWS, DEFAULT_MAX_PER_CLIENT,
        DEFAULT_MIN_DATA_PORT, LOCAL_ADDRS_ENTRIES, NS_PER_SEC, PORTS_ENTRIES, SCRATCH_ENTRIES,
    },
    control::ControlState,
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
    policy::{PortInfo, Rules},
    share::ClientShare,
    stats::{COUNTERS, Counter},
};

// Each map's and global's identifier is its name in `ftp_ebpf_common::contract`, which the
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

#[unsafe(no_mangle)]
pub static EXPECT_TIMEOUT_NS: Global<u64> = Global::new(DEFAULT_EXPECT_TIMEOUT_SECS * NS_PER_SEC);
/// Silence after which a tracked data connection is forgotten.
#[unsafe(no_mangle)]
pub static FLOW_IDLE_TIMEOUT_NS: Global<u64> = Global::new(DEFAULT_FLOW_TIMEOUT_SECS * NS_PER_SEC);
/// 1 accepts announced addresses other than the announcer's own.
#[unsafe(no_mangle)]
pub static LOOSE: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
pub static MIN_DATA_PORT: Global<u16> = Global::new(DEFAULT_MIN_DATA_PORT);
/// Expectations one control connection may hold, 1..=MAX_EXPECTED.
#[unsafe(no_mangle)]
pub static MAX_EXPECTED_PER_CONTROL: Global<u8> = Global::new(DEFAULT_MAX_EXPECTED);
/// Expectations one client address may hold (`ftp_ebpf_common::share`).
#[unsafe(no_mangle)]
pub static MAX_PER_CLIENT: Global<u32> = Global::new(DEFAULT_MAX_PER_CLIENT);

#[inline(always)]
pub fn rules() -> Rules {
    Rules {
        loose: LOOSE.load() != 0,
        min_data_port: MIN_DATA_PORT.load(),
    }
}

#[inline(always)]
pub fn max_expected() -> u8 {
    MAX_EXPECTED_PER_CONTROL.load()
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
