//! The maps and load-time settings both programs share.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use ftp_ebpf_common::{
    control::ControlState,
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
    policy::{PortInfo, Rules},
    stats::{COUNTERS, Counter},
};

use crate::control::ControlScan;

/// The loader sizes the tables at load time; these are the defaults.
#[map]
pub static EXPECTATIONS: HashMap<ExpectKey, ExpectValue> = HashMap::with_max_entries(65536, 0);

/// Control connections, keyed client -> server.
#[map]
pub static CONTROLS: HashMap<FlowKey, ControlState> = HashMap::with_max_entries(65536, 0);

#[map]
pub static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(262144, 0);

/// One `PortInfo` per TCP port: the class the loader gave it, and when it was last
/// announced and admitted.
#[map]
pub static PORTS: Array<PortInfo> = Array::with_max_entries(65536, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// One scan buffer per CPU and direction: an egress program and an ingress program (XDP or
/// tc) never share a buffer, whatever runs on that CPU when.
#[map]
pub static SCAN: PerCpuArray<ControlScan> = PerCpuArray::with_max_entries(2, 0);

#[unsafe(no_mangle)]
pub static EXPECT_TIMEOUT_NS: Global<u64> = Global::new(300_000_000_000);
/// 1 accepts announced addresses other than the announcer's own.
#[unsafe(no_mangle)]
pub static LOOSE: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
pub static MIN_DATA_PORT: Global<u16> = Global::new(1024);
/// Expectations one control connection may hold, 1..=MAX_EXPECTED.
#[unsafe(no_mangle)]
pub static MAX_EXPECTED_PER_CONTROL: Global<u8> = Global::new(1);

#[inline(always)]
pub fn rules() -> Rules {
    Rules {
        loose: LOOSE.load() != 0,
        min_data_port: MIN_DATA_PORT.load(),
        timeout_ns: EXPECT_TIMEOUT_NS.load(),
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
