//! The data-port guard: new inbound connections need an expectation; admitted ones are
//! tracked until they end.

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_log_ebpf::debug;
use ftp_ebpf_common::{
    expect::ExpectKey,
    flow::{FlowKey, FlowValue},
    policy::{SynVerdict, syn_verdict},
    stats::Counter,
};

use crate::{
    Direction,
    maps::{EXPECTATIONS, FLOWS, count, now_ns},
    packet::Segment,
};

/// A TCP packet to or from a guarded port. Returns whether it may pass. A subprogram of
/// its own, so its locals do not count against the control scanner's stack.
#[inline(never)]
pub fn data_packet(segment: &Segment, to_guarded: bool, direction: Direction) -> bool {
    if to_guarded && segment.is_syn() {
        return new_connection(&segment.flow, direction);
    }
    let tracked = FLOWS
        .get_ptr_mut(&segment.flow)
        .or_else(|| FLOWS.get_ptr_mut(&segment.flow.reversed()));
    if let Some(flow) = tracked {
        // SAFETY: a valid map value pointer; racing writers only ever store timestamps.
        let flow = unsafe { &mut *flow };
        let now = now_ns();
        if segment.ends_connection() {
            if flow.closing_since_ns == 0 {
                flow.closing_since_ns = now;
                count(Counter::FlowsClosing);
            }
        } else if flow.needs_refresh(now) {
            flow.last_seen_ns = now;
        }
    }
    true
}

#[inline(always)]
fn new_connection(syn: &FlowKey, direction: Direction) -> bool {
    let now = now_ns();
    // SAFETY: map lookups of plain data.
    let tracked = unsafe { FLOWS.get(syn) }.is_some();
    let key = ExpectKey::for_syn(syn);
    let expectation = if tracked {
        None
    } else {
        // SAFETY: as above.
        unsafe { EXPECTATIONS.get(&key) }
    };
    let inbound = direction == Direction::Ingress;
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
        SynVerdict::Admit | SynVerdict::Unsolicited => refuse(inbound),
        SynVerdict::Expired => {
            let _ = EXPECTATIONS.remove(&key);
            if inbound {
                count(Counter::ExpectationsExpired);
            }
            refuse(inbound)
        }
    }
}

/// Outbound SYNs are the host's own connections: never dropped.
#[inline(always)]
fn refuse(inbound: bool) -> bool {
    if inbound {
        count(Counter::UnsolicitedDropped);
    }
    !inbound
}
