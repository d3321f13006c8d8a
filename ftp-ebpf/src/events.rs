//! Writing events (`ftp_ebpf_common::event`) into the EVENTS ring buffer, only while
//! somebody reads it (`Config::events`): nobody listening costs one array lookup per
//! occasion. Each writer is a subprogram of its own that writes the fields straight into
//! the reserved ring memory: an event built on the stack would not fit beside the control
//! scanner's frames (512 bytes across the bpf_loop callback chain).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use bytemuck::Zeroable;
use ftp_ebpf_common::{
    contract::EVENTS_RING_BYTES,
    event::{Event, EventBucket, EventKind, Reason},
    expect::ExpectKey,
    flow::FlowKey,
    parse::{Announcement, Sender},
    stats::Counter,
};

use crate::{
    maps::{config, count, precise_now_ns},
    packet::{Frame, Segment},
};

/// The top bit of `reserve`'s `reason`: the line was read in TLS plaintext.
const TLS: u8 = 0x80;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Each CPU's token bucket of the limited events (`EventKind::limited`).
#[map]
static EVENT_BUCKETS: PerCpuArray<EventBucket> = PerCpuArray::with_max_entries(1, 0);

/// Whether somebody follows the events.
#[inline(always)]
fn wanted() -> bool {
    config().events != 0
}

/// Reserves room for one event of `kind` and writes its head; null (and counted) when
/// the rate limit or a full ring says no. `reason`'s top bit is the `tls` flag (`TLS`),
/// so that callers need not keep a sixth value live across the helper calls (the frame
/// it would take is more than 6.1's 512 bytes of combined stack allow). The caller fills
/// `flow` and `control` in, then submits.
#[inline(always)]
fn reserve(kind: EventKind, reason: u8) -> *mut Event {
    if kind.limited() {
        let granted = match EVENT_BUCKETS.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; nothing else on this CPU runs meanwhile.
            // The precise clock: the TLS probes write these events too, and may not read
            // the coarse one. They are rare, rate-limited, and never on a fast path.
            Some(bucket) => unsafe { &mut *bucket }.take(precise_now_ns()),
            None => true,
        };
        if !granted {
            count(Counter::EventsSuppressed);
            return core::ptr::null_mut();
        }
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::EventsLost);
        return core::ptr::null_mut();
    };
    let event = entry.as_mut_ptr();
    // Submitted (or discarded) by the caller through the pointer: the entry itself cannot
    // travel, and the verifier checks that every reservation ends.
    core::mem::forget(entry);
    // SAFETY: reserved ring memory of an Event's size.
    unsafe {
        (*event).kind = kind as u8;
        (*event).reason = reason & !TLS;
        (*event).announcer = 0;
        (*event).tls = reason >> 7;
        (*event)._pad = [0; 4];
    }
    event
}

/// Hands a filled event to the reader. Without waking it: a wakeup is an interrupt (a
/// self-IPI, some 13 µs under a hypervisor, against about 100 ns for the event), and the
/// reader looks every `EVENTS_POLL_MS` anyway; only a ring half full wakes it at once.
#[inline(always)]
fn submit(event: *mut Event) {
    let wakeup = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(EVENTS_RING_BYTES / 2) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: memory reserved by `reserve` and not yet submitted.
    unsafe { aya_ebpf::helpers::bpf_ringbuf_submit(event.cast(), u64::from(wakeup)) };
}

/// A SYN's event (`Admitted`, `Expired`, `UnsolicitedDropped`, `WouldDrop`,
/// `AllowedFrom`), with the control connection that announced it when there is one.
#[inline(always)]
pub fn syn(kind: EventKind, syn: &FlowKey, control: Option<&FlowKey>) {
    if wanted() {
        write_syn(kind, syn, control);
    }
}

#[inline(never)]
fn write_syn(kind: EventKind, syn: &FlowKey, control: Option<&FlowKey>) {
    let event = reserve(kind, 0);
    if event.is_null() {
        return;
    }
    // SAFETY: a reserved event (see `reserve`).
    unsafe {
        (*event).flow = *syn;
        (*event).control = match control {
            Some(control) => *control,
            None => FlowKey::zeroed(),
        };
    }
    submit(event);
}

/// A SYN's event where the guard decided before building its key (the fast path of ports
/// nothing recently announced): the key is built only when somebody listens.
#[inline(always)]
pub fn packet(frame: &impl Frame, segment: &Segment, kind: EventKind) {
    if wanted() {
        write_packet(frame, segment, kind);
    }
}

/// The key is read from the packet straight into the reserved event: built on this stack,
/// it would take the guard's deepest chain (a refused SYN's) over 6.1's 512 bytes.
#[inline(never)]
fn write_packet(frame: &impl Frame, segment: &Segment, kind: EventKind) {
    let event = reserve(kind, 0);
    if event.is_null() {
        return;
    }
    // SAFETY: a reserved event (see `reserve`), submitted or discarded here.
    unsafe {
        (*event).control = FlowKey::zeroed();
        if segment.load_flow(frame, &mut (*event).flow) {
            submit(event);
        } else {
            aya_ebpf::helpers::bpf_ringbuf_discard(event.cast(), 0);
        }
    }
}

/// An event of a control connection itself (`Tls`, `Cleared`).
#[inline(always)]
pub fn control(kind: EventKind, control: &FlowKey) {
    if wanted() {
        write_syn(kind, control, Some(control));
    }
}

/// An expectation created: `key` announced by `control`; `tls` 1 when read in TLS
/// plaintext.
#[inline(always)]
pub fn announced(key: &ExpectKey, control: &FlowKey, tls: u8) {
    if wanted() {
        write_announced(key, control, tls);
    }
}

#[inline(never)]
fn write_announced(key: &ExpectKey, control: &FlowKey, tls: u8) {
    let event = reserve(EventKind::Announced, if tls != 0 { TLS } else { 0 });
    if event.is_null() {
        return;
    }
    // SAFETY: a reserved event (see `reserve`).
    unsafe {
        (*event).flow = FlowKey {
            family: key.family,
            _pad: [0; 3],
            src_port: 0,
            dst_port: key.port,
            src: key.connector,
            dst: key.listener,
        };
        (*event).control = *control;
    }
    submit(event);
}

/// An announcement by `announcer` refused for `reason`; `announcement` is what the line
/// announced, None when it was not understood; `tls` 1 when read in TLS plaintext.
#[inline(always)]
pub fn refused(
    reason: Reason,
    announcement: Option<&Announcement>,
    control: &FlowKey,
    announcer: Sender,
    tls: u8,
) {
    if wanted() {
        let tls = if tls != 0 { TLS } else { 0 };
        write_refused(reason as u8 | tls, announcement, control, announcer as u8);
    }
}

/// `reason` carries the TLS flag (`reserve`): a sixth argument would not fit BPF's five
/// registers.
#[inline(never)]
fn write_refused(
    reason: u8,
    announcement: Option<&Announcement>,
    control: &FlowKey,
    announcer: u8,
) {
    let event = reserve(EventKind::Refused, reason);
    if event.is_null() {
        return;
    }
    // SAFETY: a reserved event (see `reserve`).
    unsafe {
        (*event).flow = FlowKey::zeroed();
        if let Some(announced) = announcement {
            // As announced; the reader resolves a 229's address (the announcer's own) from
            // the control connection: branches here cost verification at every call.
            (*event).flow.family = announced.family;
            (*event).announcer = announcer;
            (*event).flow.dst = announced.addr;
            (*event).flow.dst_port = announced.port;
        }
        (*event).control = *control;
    }
    submit(event);
}
