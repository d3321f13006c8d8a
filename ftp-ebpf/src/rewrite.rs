//! A NAT gateway's work (`--nat-inside`, `ftp_ebpf_common::nat`), done by the gateway's tc
//! programs around the usual guarding and scanning.
//!
//! On an inside interface: arriving, what a host behind the gateway announced is rewritten
//! to the public address and its sequence numbers are adjusted; leaving, the
//! acknowledgements the far end sends it are adjusted back. Both happen on the inside
//! interface, so netfilter's conntrack, between the two, sees one consistent connection, as
//! the outside interface and the far end do. Each rewritten announcement binds the data
//! connection it expects to the announcing host.
//!
//! On the other interfaces (the outside): a bound data connection, once the guard admits
//! its SYN, is translated to the inside host and back for its whole life, as the expectation
//! of the kernel's `nf_nat_ftp` has netfilter do.
//!
//! SACK blocks would need the same adjustment on every acknowledgement; instead, the
//! SACK-permitted option is taken off a control connection's SYN and SYN-ACK here, so that
//! its ends never send any (control connections carry a few hundred bytes: SACK gains them
//! nothing).

use aya_ebpf::{
    bindings::BPF_F_PSEUDO_HDR,
    helpers::generated::{bpf_csum_diff, bpf_skb_change_tail, bpf_skb_store_bytes},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::TcContext,
};
use ftp_ebpf_common::{
    addr::Family,
    contract::SCRATCH_ENTRIES,
    control::control_key,
    event::EventKind,
    expect::ExpectKey,
    flow::FlowKey,
    nat::{NAT_TO_INSIDE, NAT_TO_OUTSIDE, NatBinding, NatControl, NatFlow, address_text},
    parse::Sender,
    policy::PortClass,
    stats::Counter,
};

use crate::{
    control::{self, Rewrite},
    events,
    maps::{self, config, count, now_ns},
    nat,
    packet::{Direction, Frame, Parsed, Segment},
};

/// What was rewritten in each control connection (`contract::NAT_CONTROLS`). One entry
/// as declared; the loader gives it CONTROLS' size on a gateway.
#[map]
static NAT_CONTROLS: LruHashMap<FlowKey, NatControl> = LruHashMap::with_max_entries(1, 0);

/// The data connections rewritten announcements expect (`contract::NAT_BINDINGS`), and
/// the translated ones (`contract::NAT_FLOWS`); one entry each as declared, sized by the
/// loader on a gateway.
#[map]
static NAT_BINDINGS: LruHashMap<ExpectKey, NatBinding> = LruHashMap::with_max_entries(1, 0);
#[map]
static NAT_FLOWS: LruHashMap<FlowKey, NatFlow> = LruHashMap::with_max_entries(1, 0);

/// The most bytes rewritten in one segment, from the address text to the payload's end,
/// each way (what the segment held, what it holds after): `bpf_csum_diff` takes 512 in all.
const SPAN: usize = 256;
/// The most payload bytes after an address text that a rewrite moves.
const MAX_TAIL: u32 = 224;
/// The longest span, before or after: its checksum words (rounded up to 4 bytes) stay
/// within `SPAN` / 2 + ... of what `bpf_csum_diff` takes.
const MAX_SPAN: u32 = 248;
/// Zeros written past each span (`splice`).
const PAD: usize = 32;

/// This CPU's copies of a segment's rewritten span, before and after, and of its
/// connection's NAT_CONTROLS entry: kept here rather than on the stack, which the guard's
/// and the scanner's frames leave short.
#[repr(C)]
pub struct Surgery {
    old: [u8; SPAN + PAD],
    new: [u8; SPAN + PAD],
    nat: NatControl,
    /// The arriving segment: its control connection, sender, numbers and offsets, and what
    /// its scan found to rewrite.
    key: FlowKey,
    at: Offsets,
    seq: u32,
    payload_len: u32,
    sender: u8,
    found: Rewrite,
    /// The outside interface's: a binding's key, a translation being made.
    binding: ExpectKey,
    flow: NatFlow,
}

#[map]
static NAT_SCRATCH: PerCpuArray<Surgery> = PerCpuArray::with_max_entries(SCRATCH_ENTRIES, 0);

/// A rewrite of the payload: the `old_len` bytes at packet offset `offset` become
/// `new_len` bytes.
#[derive(Clone, Copy)]
struct Span {
    offset: u32,
    old_len: u32,
    new_len: u32,
}

/// Where a segment's headers lie.
#[repr(C)]
#[derive(Clone, Copy)]
struct Offsets {
    ip: u32,
    tcp: u32,
    payload: u32,
    end: u32,
}

impl Offsets {
    fn of(segment: &Segment) -> Self {
        let payload = segment.payload_offset;
        Self {
            ip: segment.ip_offset() as u32,
            tcp: payload - u32::from(segment.options_len) - 20,
            payload,
            end: payload + segment.payload_len,
        }
    }

    fn checksum(&self) -> u32 {
        self.tcp + 16
    }
}

/// The control connection an IPv4 segment belongs to on this interface, and who sent it.
#[inline(always)]
fn control_segment(ctx: &TcContext) -> Option<(Segment, FlowKey, Sender)> {
    // IPv6 carries no address that NAT changes: left untouched.
    let Parsed::Tcp(segment) = Segment::parse_ipv4(ctx) else {
        return None;
    };
    let class = |port| {
        // SAFETY: array map values, valid for the program's run.
        maps::port(port).map(|info| PortClass::from_u8(unsafe { (*info).class }))
    };
    let sender = if class(segment.dst_port)? == PortClass::Control {
        Sender::Client
    } else if class(segment.src_port)? == PortClass::Control {
        Sender::Server
    } else {
        return None;
    };
    let flow = segment.flow(ctx)?;
    Some((segment, control_key(&flow, sender), sender))
}

/// After the guard and the scan of a segment arriving on an inside interface: when it
/// passes, rewrites what the scan found, or again what an earlier rewrite changed when this
/// is its retransmission, then numbers the segment as the far end expects it. Each step is
/// a subprogram called from here, which keeps no frame of its own to speak of: the
/// guard's frame and the rewrite's must fit 512 bytes together.
#[inline(never)]
pub fn arriving(ctx: &TcContext, passes: bool) {
    // Taken whether or not the segment passes: what one scan found is for its own packet.
    let found = control::take_rewrite();
    if !passes {
        return;
    }
    if nat::inside(ctx.ifindex()).is_none() {
        translate(ctx, Direction::Ingress);
        return;
    }
    let Some(work) = NAT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; the program using it runs to its end uninterrupted.
    let work = unsafe { &mut *work };
    work.found = found.unwrap_or(Rewrite {
        offset: 0,
        len: 0,
        mode: 0,
        found: 0,
        port: 0,
        _pad: 0,
    });
    if describe(ctx, work) {
        apply(ctx, work);
    }
}

/// Reads an arriving control segment into `work`, and takes the SACK-permitted option
/// off a handshake. False for anything else.
#[inline(never)]
fn describe(ctx: &TcContext, work: &mut Surgery) -> bool {
    let Some((segment, key, sender)) = control_segment(ctx) else {
        return false;
    };
    if segment.is_syn() || segment.is_syn_ack() {
        no_sack(ctx, &segment, Direction::Ingress);
    }
    work.key = key;
    work.at = Offsets::of(&segment);
    work.seq = segment.seq;
    work.payload_len = segment.payload_len;
    work.sender = sender as u8;
    true
}

/// `arriving`'s rewriting and renumbering, on the segment as `work` describes it: a
/// subprogram of its own, whose frame does not add up with the parse's.
#[inline(never)]
fn apply(ctx: &TcContext, work: &mut Surgery) {
    let at = work.at;
    // SAFETY: a plain-data map value, copied.
    work.nat = match unsafe { NAT_CONTROLS.get(&work.key) } {
        Some(known) => *known,
        None => NatControl {
            sender: work.sender,
            ..NatControl::default()
        },
    };
    if work.found.found != 0 && work.found.len == 0 {
        // A 229: nothing to rewrite, its data connection to translate.
        bind(ctx, work);
    } else if let Some(span) = span(ctx, work) {
        if splice(ctx, &at, &span) {
            if work.found.found != 0 {
                count(Counter::NatRewritten);
                let seq = work.seq;
                let nat = &mut work.nat;
                nat.adjust
                    .rewritten(seq, span.new_len as i32 - span.old_len as i32);
                nat.text_seq = seq.wrapping_add(span.offset - at.payload);
                nat.old_len = span.old_len as u8;
                nat.new_len = span.new_len as u8;
                if NAT_CONTROLS.insert(&work.key, &work.nat, 0).is_err() {
                    count(Counter::NatUnrewritable);
                }
                bind(ctx, work);
            } else {
                count(Counter::NatRetransmissionsRewritten);
            }
        } else {
            count(Counter::NatUnrewritable);
        }
    }
    let adjust = work.nat.adjust;
    if work.nat.sender == work.sender && !adjust.is_identity() {
        replace_u32(ctx, &at, at.tcp + 4, work.seq, adjust.seq(work.seq));
    }
}

/// The data connection a rewritten (or 229) announcement expects, as it will reach the
/// outside interface (the far end connecting to the public address and the announced
/// port), bound to the inside host that announced it: `translate` sends it there.
#[inline(never)]
fn bind(ctx: &TcContext, work: &Surgery) {
    let Some(inside) = nat::inside(ctx.ifindex()) else {
        return;
    };
    let (peer, host) = if work.sender == Sender::Server as u8 {
        (work.key.src, work.key.dst)
    } else {
        (work.key.dst, work.key.src)
    };
    let key = ExpectKey::new(Family::V4, peer, inside.public, work.found.port);
    let binding = NatBinding {
        inside: host,
        expires_ns: now_ns().saturating_add(config().expect_timeout_ns),
    };
    let _ = NAT_BINDINGS.insert(&key, &binding, 0);
}

/// On the outside interface of a gateway: a segment of a data connection that a
/// rewritten announcement expected. Arriving, its destination (the public address) becomes
/// the inside host; leaving, the inside host's address becomes the public one again, as
/// `nf_nat_ftp`'s expectation sets up. The first SYN makes the pair of NAT_FLOWS entries
/// from its binding (which it uses up); the guard has admitted it by then.
#[inline(never)]
fn translate(ctx: &TcContext, direction: Direction) {
    let Parsed::Tcp(segment) = Segment::parse_ipv4(ctx) else {
        return;
    };
    let arriving = direction == Direction::Ingress;
    let port = if arriving {
        segment.dst_port
    } else {
        segment.src_port
    };
    // SAFETY: an array map value, valid for the program's run.
    let guarded = maps::port(port)
        .is_some_and(|info| PortClass::from_u8(unsafe { (*info).class }) == PortClass::Guarded);
    if !guarded {
        return;
    }
    let Some(flow) = segment.flow(ctx) else {
        return;
    };
    if arriving && segment.is_syn() && bind_flow(&flow) {
        translated(&flow);
    }
    // SAFETY: a plain-data map value, copied.
    let Some(entry) = (unsafe { NAT_FLOWS.get(&flow) }).copied() else {
        return;
    };
    let at = Offsets::of(&segment);
    let (offset, old) = match (entry.direction, arriving) {
        (NAT_TO_INSIDE, true) => (at.ip + 16, flow.dst),
        (NAT_TO_OUTSIDE, false) => (at.ip + 12, flow.src),
        _ => return,
    };
    let old = u32::from_ne_bytes([old[0], old[1], old[2], old[3]]);
    let new = u32::from_ne_bytes([entry.addr[0], entry.addr[1], entry.addr[2], entry.addr[3]]);
    if ctx.store(offset as usize, &new, 0).is_ok() {
        let _ = ctx.l3_csum_replace(at.ip as usize + 10, u64::from(old), u64::from(new), 4);
        let _ = ctx.l4_csum_replace(
            at.checksum() as usize,
            u64::from(old),
            u64::from(new),
            u64::from(BPF_F_PSEUDO_HDR) | 4,
        );
    }
}

/// A SYN from the far end that a binding expects: its translation, both ways, in
/// NAT_FLOWS. A later SYN of the same 5-tuple (a retransmission) finds them there. A
/// subprogram of its own, for its keys' stack.
#[inline(never)]
fn bind_flow(syn: &FlowKey) -> bool {
    let Some(work) = NAT_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; the program using it runs to its end uninterrupted. The
    // outside interface has no other use for it: the keys and entries are built there
    // rather than on the stack, which 6.1's 512 bytes across the call chain leave short.
    let work = unsafe { &mut *work };
    work.binding = ExpectKey::for_syn(syn);
    // SAFETY: a plain-data map value, copied.
    let Some(binding) = (unsafe { NAT_BINDINGS.get(&work.binding) }).copied() else {
        return false;
    };
    let _ = NAT_BINDINGS.remove(&work.binding);
    if binding.expires_ns < now_ns() {
        return false;
    }
    work.flow = NatFlow {
        addr: binding.inside,
        direction: NAT_TO_INSIDE,
        _pad: [0; 3],
    };
    if NAT_FLOWS.insert(syn, &work.flow, 0).is_err() {
        return false;
    }
    work.key = *syn;
    work.key.src = binding.inside;
    work.key.src_port = syn.dst_port;
    work.key.dst = syn.src;
    work.key.dst_port = syn.src_port;
    work.flow.addr = syn.dst;
    work.flow.direction = NAT_TO_OUTSIDE;
    let bound = NAT_FLOWS.insert(&work.key, &work.flow, 0).is_ok();
    if bound {
        count(Counter::NatDataConnections);
    }
    bound
}

/// The `translated` event of a connection `bind_flow` bound. The translated connection goes
/// in the scratch space (the outside interface has no other use for it): on the stack, it
/// would take the chain past 512 bytes.
#[inline(always)]
fn translated(syn: &FlowKey) {
    // SAFETY: a plain-data map value, copied.
    let Some(entry) = (unsafe { NAT_FLOWS.get(syn) }).copied() else {
        return;
    };
    if let Some(work) = NAT_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the program using it runs to its end uninterrupted.
        let work = unsafe { &mut *work };
        work.key = *syn;
        work.key.dst = entry.addr;
        events::syn(EventKind::Translated, syn, Some(&work.key));
    }
}

/// What to rewrite in an arriving segment: the address text the scan found, written anew
/// (into `nat.text`); or, in a retransmission (or a repacking) of the segment last
/// rewritten, whatever of it the stream position says holds the old text, written as the
/// first time.
#[inline(always)]
fn span(ctx: &TcContext, work: &mut Surgery) -> Option<Span> {
    if work.found.found != 0 {
        let inside = nat::inside(ctx.ifindex())?;
        let new_len = address_text(&inside.public, work.found.mode, &mut work.nat.text);
        return Some(Span {
            offset: work.found.offset,
            old_len: u32::from(work.found.len),
            new_len: new_len as u32,
        });
    }
    let nat = &work.nat;
    if nat.sender != work.sender || nat.old_len == 0 {
        return None;
    }
    let into = nat.text_seq.wrapping_sub(work.seq);
    let old_len = u32::from(nat.old_len);
    // Unsigned: a segment starting after the text gives a huge `into`.
    if into >= work.payload_len || into + old_len > work.payload_len {
        return None;
    }
    Some(Span {
        offset: work.at.payload + into,
        old_len,
        new_len: u32::from(nat.new_len),
    })
}

/// Before a segment leaves: through an inside interface towards a host behind it, its
/// acknowledgement of that host's rewritten bytes is numbered back as the host numbered
/// them, and a handshake loses its SACK-permitted option; through the outside interface,
/// a translated data connection's segment takes the public address (`translate`).
#[inline(never)]
pub fn leaving(ctx: &TcContext) {
    if nat::inside(ctx.ifindex()).is_none() {
        translate(ctx, Direction::Egress);
    } else {
        leaving_inside(ctx);
    }
}

/// `leaving` on an inside interface: a subprogram of its own, so that its frame and
/// `translate`'s do not add up.
#[inline(never)]
fn leaving_inside(ctx: &TcContext) {
    let Some((segment, key, sender)) = control_segment(ctx) else {
        return;
    };
    if segment.is_syn() || segment.is_syn_ack() {
        no_sack(ctx, &segment, Direction::Egress);
    }
    // SAFETY: a plain-data map value, only read.
    let Some(nat) = (unsafe { NAT_CONTROLS.get(&key) }) else {
        return;
    };
    if nat.sender != sender as u8 && segment.flags & ftp_ebpf_common::window::TCP_ACK != 0 {
        let at = Offsets::of(&segment);
        replace_u32(
            ctx,
            &at,
            at.tcp + 8,
            segment.ack,
            nat.adjust.ack(segment.ack),
        );
    }
}

/// Writes the text in this CPU's `Surgery::nat` over `span`, moving what follows in the
/// payload, and fixes the lengths and checksums. False when the rest of the payload is too
/// long to move (nothing is changed then).
#[inline(never)]
fn splice(ctx: &TcContext, at: &Offsets, span: &Span) -> bool {
    let Span {
        offset,
        old_len,
        new_len,
    } = *span;
    let Some(work) = NAT_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; the program using it runs to its end uninterrupted.
    let work = unsafe { &mut *work };
    let tail_start = offset + old_len;
    if tail_start >= at.end || new_len == 0 || new_len > 15 {
        return false;
    }
    let tail = at.end - tail_start;
    if tail > MAX_TAIL {
        return false;
    }
    // The span starts on an even offset from the TCP header (whose offset is even), so
    // that the one's complement sums of the old and new spans line up.
    let start = offset & !1;
    let lead = offset - start;
    let old_total = lead + old_len + tail;
    let new_total = lead + new_len + tail;
    let read = (old_total.wrapping_sub(1) & (SPAN as u32 - 1)) + 1;
    if Frame::load_bytes(ctx, start, work.old.as_mut_ptr(), read) != 0 {
        return false;
    }
    // The new span: the leading byte, the text, the old tail.
    work.new[0] = work.old[0];
    // All 16 bytes of the text's buffer: what lies past its end is overwritten by the tail.
    let text = work.nat.text;
    if lead == 0 {
        work.new[..16].copy_from_slice(&text);
    } else {
        work.new[1..17].copy_from_slice(&text);
    }
    let tail_at = (opaque(lead + new_len) & 31) as usize;
    let tail_len = (tail.wrapping_sub(1) & (MAX_TAIL - 1)) + 1;
    // SAFETY: `tail_at` + `tail_len` <= 31 + 224, inside the 256-byte buffer.
    let tail_dst = unsafe { work.new.as_mut_ptr().add(tail_at) };
    if Frame::load_bytes(ctx, tail_start, tail_dst, tail_len) != 0 {
        return false;
    }
    // Zeros after each span, to a multiple of 4 for `bpf_csum_diff` and, when the segment
    // shrinks, over the bytes that go: trimmed, they then take nothing from a receive
    // checksum (CHECKSUM_COMPLETE) either. 20 bytes cover both (a text shrinks by at most
    // 14); the buffers have room for them past the longest span.
    if old_total > MAX_SPAN || new_total > MAX_SPAN {
        return false;
    }
    let old_end = (opaque(old_total) & 0xff) as usize;
    let new_end = (opaque(new_total) & 0xff) as usize;
    for i in 0..PAD {
        // SAFETY: offsets at most 255 + PAD, inside buffers of SPAN + PAD. Volatile, so
        // that the compiler writes each byte here rather than calling `memset`, whose loop
        // the verifier cannot bound.
        unsafe {
            work.old.as_mut_ptr().add(old_end + i).write_volatile(0);
            work.new.as_mut_ptr().add(new_end + i).write_volatile(0);
        }
    }
    let old_words = (opaque(old_total) + 3) & 0xfc;
    let new_words = (opaque(new_total) + 3) & 0xfc;
    // SAFETY: both buffers hold at least the sizes given, which the masks bound.
    let diff = unsafe {
        bpf_csum_diff(
            work.old.as_mut_ptr().cast(),
            old_words,
            work.new.as_mut_ptr().cast(),
            new_words,
            0,
        )
    };
    if diff < 0 {
        return false;
    }
    let delta = new_len as i32 - old_len as i32;
    let new_end = (at.end as i32 + delta) as u32;
    let skb = ctx.skb.skb;
    let stored = old_total.max(new_total);
    let stored = (stored.wrapping_sub(1) & (SPAN as u32 - 1)) + 1;
    // Grow before writing, shrink after: the bytes written always fit.
    // SAFETY: the helpers check offsets and lengths against the packet.
    unsafe {
        if delta > 0 && bpf_skb_change_tail(skb, new_end, 0) != 0 {
            return false;
        }
        if bpf_skb_store_bytes(skb, start, work.new.as_ptr().cast(), stored, 0) != 0 {
            return false;
        }
        if delta < 0 && bpf_skb_change_tail(skb, new_end, 0) != 0 {
            return false;
        }
    }
    // The payload's checksum difference, then the pseudo header's TCP length, then the
    // IPv4 total length and its header checksum. No store asks the helpers to update a
    // receive checksum (CHECKSUM_COMPLETE): each change comes with its checksum's, and
    // the two cancel out in a sum over the packet.
    let old_tcp = (at.end - at.tcp) as u16;
    let new_tcp = (new_end - at.tcp) as u16;
    let old_ip = (at.end - at.ip) as u16;
    let new_ip = (new_end - at.ip) as u16;
    let csum = at.checksum() as usize;
    let _ = ctx.l4_csum_replace(csum, 0, diff as u64, 0);
    let _ = ctx.l4_csum_replace(
        csum,
        u64::from(old_tcp.to_be()),
        u64::from(new_tcp.to_be()),
        u64::from(BPF_F_PSEUDO_HDR) | 2,
    );
    let _ = ctx.store(at.ip as usize + 2, &new_ip.to_be(), 0);
    let _ = ctx.l3_csum_replace(
        at.ip as usize + 10,
        u64::from(old_ip.to_be()),
        u64::from(new_ip.to_be()),
        2,
    );
    true
}

/// Replaces the 32-bit field at packet offset `offset` (a sequence or acknowledgement
/// number) and the TCP checksum with it.
#[inline(always)]
fn replace_u32(ctx: &TcContext, at: &Offsets, offset: u32, old: u32, new: u32) {
    if old == new {
        return;
    }
    if ctx.store(offset as usize, &new.to_be(), 0).is_ok() {
        let _ = ctx.l4_csum_replace(
            at.checksum() as usize,
            u64::from(old.to_be()),
            u64::from(new.to_be()),
            4,
        );
    }
}

/// Takes a handshake segment's SACK-permitted option off: two NOPs in its place.
#[inline(never)]
fn no_sack(ctx: &TcContext, segment: &Segment, direction: Direction) {
    let found = segment.sack_permitted(ctx, direction);
    if found == 0 {
        return;
    }
    let at = Offsets::of(segment);
    let offset = at.tcp + 20 + u32::from(found) - 1;
    const NOPS: [u8; 2] = [1, 1];
    if ctx.store(offset as usize, &NOPS, 0).is_err() {
        return;
    }
    // The option's two bytes as the checksum's 16-bit words hold them: swapped when the
    // option starts on an odd offset from the TCP header.
    let old = if (offset - at.tcp) & 1 == 0 {
        [4, 2]
    } else {
        [2, 4]
    };
    let _ = ctx.l4_csum_replace(
        at.checksum() as usize,
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(NOPS)),
        2,
    );
    count(Counter::NatSackDisabled);
}

/// `value`, read back through memory: the compiler cannot see what it is, so it keeps the
/// masks applied to it, where it would drop a mask it knows to change nothing (the sum is
/// at most 16, the span at most 248), and the verifier needs the mask to bound a pointer.
#[inline(always)]
fn opaque(value: u32) -> u32 {
    // SAFETY: a local, read.
    unsafe { core::ptr::read_volatile(&value) }
}
