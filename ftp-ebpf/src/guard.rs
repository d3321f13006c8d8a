//! The data-port guard: new inbound connections need an expectation; admitted ones are
//! tracked until they end. Also the rule that this host's own addresses never arrive from
//! outside.

use aya_ebpf::bindings::BPF_NOEXIST;
use ftp_ebpf_common::{
    event::EventKind,
    expect::ExpectKey,
    flow::{FlowKey, FlowValue, Observed},
    policy::{PortInfo, SynVerdict, coarse_time, syn_verdict},
    stats::Counter,
    window::Side,
};

use crate::{
    allow, events,
    maps::{EXPECTATIONS, FLOWS, config, count, local, now_ns},
    monitor,
    packet::{Direction, Frame, Segment},
    share, tls,
};

/// Whether a segment arriving on ingress claims one of this host's own addresses as its
/// source: the host's own segments leave through egress, so this one is forged. Counted.
#[inline(never)]
pub fn spoofed(flow: &FlowKey) -> bool {
    let local = local(flow.family, flow.src);
    if local {
        count(Counter::SpoofedSourceDropped);
    }
    local
}

/// A SYN-ACK, FIN, RST or sampled packet to or from a guarded port: its flow's windows
/// judge it, and it marks or refreshes the flow. A subprogram of its own, so its locals do
/// not count against the control scanner's stack.
#[inline(never)]
pub fn touch(frame: &impl Frame, segment: &Segment, flow: &FlowKey, direction: Direction) {
    let (tracked, from) = match FLOWS.get_ptr_mut(flow) {
        Some(tracked) => (tracked, Side::Initiator),
        None => match FLOWS.get_ptr_mut(&flow.reversed()) {
            Some(tracked) => (tracked, Side::Responder),
            None => return,
        },
    };
    let mut numbers = segment.numbers();
    if segment.is_syn_ack() {
        numbers.window_scale = segment.window_scale(frame, direction);
    }
    // SAFETY: a valid map value pointer; a racing writer can only lose one update.
    let tracked = unsafe { &mut *tracked };
    match tracked.observe(from, &numbers, now_ns()) {
        Observed::Closing => count(Counter::FlowsClosing),
        Observed::OutOfWindow => count(Counter::FlowOutOfWindow),
        Observed::Nothing => {}
    }
}

/// A SYN (without ACK) to guarded port `port` that recent announcements or admissions of
/// the port may cover (`PortInfo::may_be_solicited`). Returns whether it may pass.
#[inline(never)]
pub fn new_connection(
    frame: &impl Frame,
    segment: &Segment,
    syn: &FlowKey,
    port: *mut PortInfo,
    direction: Direction,
) -> bool {
    // Read again rather than passed: a sixth argument would not fit BPF's five registers.
    let now = now_ns();
    let inbound = direction == Direction::Ingress;
    // SAFETY: an array map value, valid for the program's run.
    let port = unsafe { &mut *port };
    // SAFETY: map lookups of plain data.
    let tracked = match unsafe { FLOWS.get(syn) } {
        // Nothing sweeps the table: a finished flow is judged here, so that a new
        // connection reusing its 5-tuple needs an announcement of its own.
        Some(flow) if flow.is_finished(now, config().flow_idle_timeout_ns) => {
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
            if let Some(expectation) = expectation {
                share::give_back(&expectation.control);
            }
            count(Counter::ExpectationsMatched);
            port.admitted = coarse_time(now);
            let mut numbers = segment.numbers();
            numbers.window_scale = segment.window_scale(frame, direction);
            if FLOWS
                .insert(syn, &FlowValue::admitted(now, &numbers), BPF_NOEXIST.into())
                .is_ok()
            {
                count(Counter::FlowsTracked);
            } else {
                count(Counter::FlowTableFull);
            }
            events::syn(
                EventKind::Admitted,
                syn,
                expectation.map(|expectation| &expectation.control),
            );
            true
        }
        SynVerdict::Admit | SynVerdict::Unsolicited => {
            refuse(frame, segment, direction, EventKind::UnsolicitedDropped)
        }
        SynVerdict::Expired => {
            if EXPECTATIONS.remove(&key).is_ok() {
                if let Some(expectation) = expectation {
                    share::give_back(&expectation.control);
                }
            }
            if inbound {
                count(Counter::ExpectationsExpired);
            }
            refuse(frame, segment, direction, EventKind::Expired)
        }
    }
}

/// A SYN to a guarded port that nothing admits (`kind`: unsolicited, or one whose
/// expectation expired); returns whether it may pass. Outbound SYNs are the host's own
/// connections: never dropped. Inbound ones from an `--allow-from` network pass. The rest
/// are counted, by port too while monitoring, and make an event: what enforcement would
/// drop while monitoring (`monitor::spare` passes them then).
#[inline(always)]
pub fn refuse(
    frame: &impl Frame,
    segment: &Segment,
    direction: Direction,
    kind: EventKind,
) -> bool {
    if direction != Direction::Ingress {
        return true;
    }
    if config().allow_from != 0 && allow::admits(frame, segment) {
        // Written here, not inside `admits`: a call from there would stack the event
        // writer's frame on the trie key's, over 6.1's 512 bytes of combined stack.
        events::packet(frame, segment, EventKind::AllowedFrom);
        return true;
    }
    dropped(frame, segment, kind);
    false
}

/// Counts and reports a refused inbound SYN: as a TLS connection's when it comes from an
/// end of one (`tls::from_peer`). A subprogram of its own, so that the two verdicts of
/// that lookup part only here: inlined, they kept two copies of the guard's every path
/// after it apart, and 6.1's verifier explored each (a third more instructions).
#[inline(never)]
fn dropped(frame: &impl Frame, segment: &Segment, kind: EventKind) {
    let tls_peer = tls::from_peer(frame, segment);
    count(if tls_peer {
        Counter::TlsDataDropped
    } else {
        Counter::UnsolicitedDropped
    });
    monitor::refused_syn(segment.dst_port);
    let kind = if config().monitor != 0 {
        EventKind::WouldDrop
    } else if tls_peer {
        EventKind::TlsDropped
    } else {
        kind
    };
    events::packet(frame, segment, kind);
}
