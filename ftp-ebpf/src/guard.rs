//! The data-port guard: new inbound connections need an expectation; admitted ones are
//! tracked until they end.

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_log_ebpf::debug;
use ftp_ebpf_common::{
    expect::ExpectKey,
    flow::{FlowKey, FlowValue},
    policy::{PortInfo, SynVerdict, coarse_time, syn_verdict},
    stats::Counter,
};

use crate::{
    Direction,
    maps::{EXPECTATIONS, FLOW_IDLE_TIMEOUT_NS, FLOWS, count, now_ns},
    packet::{Frame, Segment},
};

/// A FIN, RST or sampled packet to or from a guarded port: marks or refreshes its flow.
/// A subprogram of its own, so its locals do not count against the control scanner's
/// stack.
#[inline(never)]
pub fn touch(flow: &FlowKey, ends_connection: bool) {
    let tracked = FLOWS
        .get_ptr_mut(flow)
        .or_else(|| FLOWS.get_ptr_mut(&flow.reversed()));
    let Some(tracked) = tracked else {
        return;
    };
    // SAFETY: a valid map value pointer; racing writers only ever store timestamps.
    let tracked = unsafe { &mut *tracked };
    let now = now_ns();
    if ends_connection {
        if tracked.closing_since_ns == 0 {
            tracked.closing_since_ns = now;
            count(Counter::FlowsClosing);
        }
    } else if tracked.needs_refresh(now) {
        tracked.last_seen_ns = now;
    }
}

/// A SYN (without ACK) to guarded port `port` that recent announcements or admissions of
/// the port may cover (`PortInfo::may_be_solicited`). Returns whether it may pass.
#[inline(never)]
pub fn new_connection(syn: &FlowKey, port: *mut PortInfo, now: u64, direction: Direction) -> bool {
    let inbound = direction == Direction::Ingress;
    // SAFETY: an array map value, valid for the program's run.
    let port = unsafe { &mut *port };
    // SAFETY: map lookups of plain data.
    let tracked = match unsafe { FLOWS.get(syn) } {
        // Nothing sweeps the table: a finished flow is judged here, so that a new
        // connection reusing its 5-tuple needs an announcement of its own.
        Some(flow) if flow.is_finished(now, FLOW_IDLE_TIMEOUT_NS.load()) => {
            let _ = FLOWS.remove(syn);
            false
        }
        found => found.is_some(),
    };
    let key = ExpectKey::for_syn(syn);
    let expectation = if tracked {
        None
    } else {
        // SAFETY: as above.
        unsafe { EXPECTATIONS.get(&key) }
    };
    match syn_verdict(tracked, expectation, now) {
        SynVerdict::Retransmission => {
            if inbound {
                count(Counter::SynRetransmissions);
            }
            true
        }
        // Another CPU may consume the same expectation at the same moment: only the one
        // whose delete succeeds admits.
        SynVerdict::Admit if EXPECTATIONS.remove(&key).is_ok() => {
            count(Counter::ExpectationsMatched);
            port.admitted = coarse_time(now);
            if FLOWS
                .insert(syn, &FlowValue::admitted(now), BPF_NOEXIST.into())
                .is_ok()
            {
                count(Counter::FlowsTracked);
            } else {
                count(Counter::FlowTableFull);
            }
            debug!(&(), "admitted data connection to port {}", syn.dst_port);
            true
        }
        SynVerdict::Admit | SynVerdict::Unsolicited => refuse(direction),
        SynVerdict::Expired => {
            let _ = EXPECTATIONS.remove(&key);
            if inbound {
                count(Counter::ExpectationsExpired);
            }
            refuse(direction)
        }
    }
}

/// Outbound SYNs are the host's own connections: never dropped.
#[inline(always)]
pub fn refuse(direction: Direction) -> bool {
    let inbound = direction == Direction::Ingress;
    if inbound {
        count(Counter::UnsolicitedDropped);
    }
    !inbound
}
