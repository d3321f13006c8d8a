//! Following control connections, scanning their segments and recording what they announce.
//!
//! Each control connection's state (its TCP windows, where each direction's stream stands,
//! its scanner mid-line, its expectations) lives in CONTROLS and is worked on in place; a
//! segment counts only when it falls within the connection's windows. Its bytes are copied
//! into this CPU's scratch space for the bpf_loop callback to read.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_loop, bpf_probe_read_user},
    macros::map,
    maps::PerCpuArray,
};
use ftp_ebpf_common::{
    addr::FAMILY_IPV4,
    contract::{SCRATCH_ENTRIES, TLS_READ_SCRATCH, TLS_WRITE_SCRATCH},
    control::{ADOPTED, ControlState, Hook, SegmentPlan, Tracked, control_key},
    event::{EventKind, Reason},
    expect::{ExpectKey, ExpectValue},
    flow::FlowKey,
    parse::{AddressText, Announcement, FAMILY_OWN_ADDRESS, LineScanner, ParseError, Sender, Step},
    policy::{self, Refusal, coarse_time},
    stats::Counter,
    tls::CallEnd,
    window::{Numbers, TCP_ACK, TCP_SYN},
};

use crate::{
    events,
    maps::{self, CONTROLS, EXPECTATIONS, config, count, now_ns},
    nat,
    packet::{Direction, Frame, Segment},
    share, tls,
};

/// One workspace per CPU and direction: an egress program and an ingress program (XDP or
/// tc) never share one, whatever runs on that CPU when.
#[map]
static SCAN: PerCpuArray<ControlScan> = PerCpuArray::with_max_entries(SCRATCH_ENTRIES, 0);

/// Bytes of a control segment scanned; a power of two so that an index can be masked into
/// range. Control segments are short lines in practice; after a longer one, scanning
/// resumes at the next line (`scan_truncated`).
pub const SCAN_WINDOW: usize = 1024;

/// Announcements one segment may carry; a segment with more is not FTP, and its rest is
/// left unread (`scan_truncated`). A power of two, so that an index can be masked.
const MAX_ANNOUNCEMENTS: usize = 4;

/// What scanning needs of a segment.
#[repr(C)]
#[derive(Clone, Copy)]
struct SegmentBytes {
    seq: u32,
    /// Packet offset of the payload.
    offset: u32,
    len: u32,
}

/// This CPU's workspace for one segment.
///
/// `scan` passes the segment through here, a map value whose contents the verifier does
/// not track, before anything else: from then on nothing the verifier knows of how the
/// headers were parsed (VLAN or not, IPv4 options, which IPv6 extension headers) is left,
/// and it checks the scanning once rather than once per parse path. That matters on 6.1,
/// whose verifier, when a subprogram needs one number precise, marks every number of the
/// path precise, which keeps all the parse paths apart down to the end of the program.
#[repr(C)]
pub struct ControlScan {
    buf: [u8; SCAN_WINDOW],
    /// A new connection's state, made here and inserted into CONTROLS.
    fresh: ControlState,
    numbers: Numbers,
    /// The scanner of the stream being read, stepped here by the callback and stored back
    /// into the connection's state after the loop: the callback reaches this one map value,
    /// whichever table holds the state.
    scanner: LineScanner,
    control: FlowKey,
    segment: SegmentBytes,
    now_ns: u64,
    /// The interface the segment was seen on, and whether arriving (`Direction`).
    ifindex: u32,
    hook: u8,
    sender: u8,
    /// Announcements found by the callback, recorded after the loop: recording needs more
    /// stack than the callback's frame can have on top of its callers'.
    announced: u8,
    /// Set when the callback stopped before the end (too many announcements).
    stopped: u8,
    /// Set when the segment has more unread bytes than the window holds.
    truncated: u8,
    /// The TLS switches (`parse::Signal` bits) the lines gave.
    signals: u8,
    /// 1 while the bytes are a TLS control connection's plaintext (`scan_plain`).
    tls: u8,
    /// The `Reason` of the segment's last line refused unparsed, or 0: its event is written
    /// after the loop, as code in the callback must stay small.
    unparsed: u8,
    /// Bytes of `buf` to scan.
    len: u32,
    pending: [Announcement; MAX_ANNOUNCEMENTS],
    /// Where each pending announcement's address text lies in `buf`.
    texts: [Located; MAX_ANNOUNCEMENTS],
    /// The packet offset of `buf[0]`.
    base: u32,
    /// What the NAT ingress program is to rewrite in this segment (`take_rewrite`).
    rewrite: Rewrite,
    /// The expectation being written or removed; kept here, not on the stack, for room.
    key: ExpectKey,
    value: ExpectValue,
}

/// An announcement's address text: the `buf` index of the byte that announced it, and
/// where the text lies from there.
#[repr(C)]
#[derive(Clone, Copy)]
struct Located {
    at: u32,
    text: AddressText,
}

/// An address text a `--nat-inside` interface's ingress program rewrites: found by the
/// scan, done by `rewrite` after it, on the packet the scan read.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Rewrite {
    /// The text's packet offset.
    pub offset: u32,
    /// 0 for a 229, which names no address: only its data connection is translated.
    pub len: u16,
    /// The announcement's `parse::Mode`, which decides how the new text is written.
    pub mode: u8,
    /// 1 when there is one.
    pub found: u8,
    /// The announced port.
    pub port: u16,
    pub _pad: u16,
}

/// The rewrite this program's scan of the arriving segment found, if any; forgotten once
/// taken, so that the next packet on this CPU starts without one.
#[inline(always)]
pub fn take_rewrite() -> Option<Rewrite> {
    let work = SCAN.get_ptr_mut(Direction::Ingress as u32)?;
    // SAFETY: this CPU's ingress slot; the program using it runs to its end uninterrupted.
    let work = unsafe { &mut *work };
    let rewrite = work.rewrite;
    work.rewrite.found = 0;
    (rewrite.found != 0).then_some(rewrite)
}

impl ControlScan {
    fn sender(&self) -> Sender {
        Sender::from_u8(self.sender)
    }
}

/// Returns whether the segment may pass: all do but those arriving where their direction's
/// segments never come from (`ControlState::on_path`). A subprogram of its own: its
/// locals and the callback's must not add up with the guard's in one frame (the verifier
/// allows 512 bytes of stack across the call chain).
#[inline(never)]
pub fn scan(
    frame: &impl Frame,
    segment: &Segment,
    flow: &FlowKey,
    sender: Sender,
    direction: Direction,
) -> bool {
    let Some(work) = SCAN.get_ptr_mut(direction as u32) else {
        return true;
    };
    // SAFETY: this CPU's slot for this direction; nothing else uses it meanwhile.
    let work = unsafe { &mut *work };
    work.control = control_key(flow, sender);
    work.sender = sender as u8;
    work.hook = direction as u8;
    work.ifindex = frame.ifindex();
    work.numbers = segment.numbers();
    if segment.flags & TCP_SYN != 0 {
        work.numbers.window_scale = segment.window_scale(frame, direction);
    }
    work.segment = SegmentBytes {
        seq: segment.seq,
        offset: segment.payload_offset,
        len: segment.payload_len,
    };
    // Read back, so that the verifier sees numbers it knows nothing of (see `ControlScan`).
    // SAFETY: a field of a valid map value.
    let segment = unsafe { core::ptr::read_volatile(&work.segment) };
    let state = match follow(work) {
        Followed::Read(state) => state,
        Followed::Done => return true,
        Followed::OffPath => return direction == Direction::Egress,
    };
    // SAFETY: a map value, valid for the program's run; on another CPU, only a segment of
    // the same connection at the same moment could touch it.
    let state = unsafe { &mut *state };
    if segment.len == 0
        || ((state.is_tls() || state.flags & ADOPTED != 0)
            && encrypted(frame, &segment, work, state))
        || !prepare(frame, &segment, work, state)
    {
        return true;
    }
    read_lines(work, state);
    finish(frame, &segment, work, state);
    true
}

/// A segment of a TLS control connection, or of one adopted at start (which may be TLS
/// already): true when its bytes are TLS records, which nothing can read here; false when
/// its direction is plaintext, or leaves TLS with it (after `CCC`).
#[inline(never)]
fn encrypted(
    frame: &impl Frame,
    segment: &SegmentBytes,
    work: &mut ControlScan,
    state: &mut ControlState,
) -> bool {
    let sender = work.sender();
    let mut head = [0u8; 2];
    let loaded = segment.len >= 2 && frame.load_bytes(segment.offset, head.as_mut_ptr(), 2) == 0;
    if !state.is_tls() && !(loaded && state.adopted_tls(head[0], head[1])) {
        return false;
    }
    if !state.encrypted(sender) {
        return false;
    }
    if loaded {
        if state.leaves_tls(sender, head[0], head[1]) {
            if !state.is_tls() {
                count(Counter::TlsCleared);
                events::control(EventKind::Cleared, &work.control);
            }
            return false;
        }
    }
    tls::seen(&work.control);
    if state.first_tls_segment() {
        count(Counter::TlsControlConnections);
        events::control(EventKind::Tls, &work.control);
    }
    true
}

/// Scans `work.buf[..work.len]` with `work.scanner` and records what its lines announced
/// and switched.
#[inline(always)]
fn read_lines(work: &mut ControlScan, state: &mut ControlState) {
    work.signals = 0;
    let mut context: *mut ControlScan = work;
    // SAFETY: the callback only touches the map value the context points to.
    unsafe {
        bpf_loop(
            work.len.div_ceil(CHUNK as u32),
            scan_chunk as *mut c_void,
            (&mut context as *mut *mut ControlScan).cast(),
            0,
        )
    };
    for index in 0..MAX_ANNOUNCEMENTS {
        if index < usize::from(work.announced) {
            record(work, state, index);
        }
    }
    if let Some(reason) = Reason::from_u8(work.unparsed) {
        events::refused(reason, None, &work.control, work.sender(), work.tls);
    }
    // After the lines' announcements: a 234's segment ends with it, and TLS starts after.
    if work.signals != 0 {
        state.signalled(work.sender(), work.signals);
    }
}

/// `--tls-uprobes`: `len` bytes of plaintext at `buf` (user memory of the current thread)
/// passed a TLS library call at `end` on `socket` (local end first). When the socket is
/// a TLS control connection the programs follow, its lines are scanned as a plaintext
/// connection's would be, once (`PlainStreams`).
#[inline(never)]
pub fn scan_plain(socket: &FlowKey, end: CallEnd, buf: u64, len: u32) {
    let slot = match end {
        CallEnd::Writer => TLS_WRITE_SCRATCH,
        CallEnd::Reader => TLS_READ_SCRATCH,
    };
    let Some(work) = SCAN.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's slot of the probe that calls (see `TLS_WRITE_SCRATCH`).
    let work = unsafe { &mut *work };
    // The local end is the server when the connection is keyed remote -> local.
    work.control = socket.reversed();
    let mut local = Sender::Server;
    let mut state = CONTROLS.get_ptr_mut(&work.control);
    if state.is_none() {
        work.control = *socket;
        local = Sender::Client;
        state = CONTROLS.get_ptr_mut(&work.control);
    }
    let Some(state) = state else {
        return;
    };
    // SAFETY: as in `scan`.
    let state = unsafe { &mut *state };
    let sender = match (end, local) {
        (CallEnd::Writer, local) => local,
        (CallEnd::Reader, Sender::Server) => Sender::Client,
        (CallEnd::Reader, Sender::Client) => Sender::Server,
    };
    if !state.encrypted(sender) {
        return;
    }
    if len == 0 || !state.plain.pass(sender, end) {
        return;
    }
    let window = if len as usize > SCAN_WINDOW {
        SCAN_WINDOW as u32
    } else {
        len
    };
    let read = ((window - 1) & (SCAN_WINDOW as u32 - 1)) + 1;
    // SAFETY: the helper checks the user address; `read` is within `buf`'s size.
    if unsafe { bpf_probe_read_user(work.buf.as_mut_ptr().cast(), read, buf as *const c_void) } != 0
    {
        return;
    }
    count(Counter::TlsPlaintextScanned);
    if sender == Sender::Server {
        state.answered([work.buf[0], work.buf[1], work.buf[2], work.buf[3]]);
    }
    work.sender = sender as u8;
    // Never a `--nat-inside` interface's ingress: nothing to rewrite (`rewrites`).
    work.hook = Direction::Egress as u8;
    work.ifindex = 0;
    work.now_ns = maps::precise_now_ns();
    work.announced = 0;
    work.stopped = 0;
    work.unparsed = 0;
    work.base = 0;
    work.tls = 1;
    work.len = read;
    let stream = state.stream(sender);
    work.scanner = stream.scanner;
    read_lines(work, state);
    work.tls = 0;
    let stream = state.stream(sender);
    stream.scanner = if read < len || work.stopped != 0 {
        count(Counter::ScanTruncated);
        LineScanner::resync(sender)
    } else {
        work.scanner
    };
}

/// What following a segment came to.
enum Followed {
    /// In its connection's windows, with bytes to read: the connection's state.
    Read(*mut ControlState),
    /// Nothing more to do with it.
    Done,
    /// Seen where its direction's segments never pass: forged.
    OffPath,
}

/// Judges the segment by its connection's paths and TCP windows.
#[inline(always)]
fn follow(work: &mut ControlScan) -> Followed {
    let sender = work.sender();
    let hook = if work.hook == Direction::Ingress as u8 {
        Hook::Ingress
    } else {
        Hook::Egress
    };
    let Some(state) = CONTROLS.get_ptr_mut(&work.control) else {
        if sender == Sender::Client && work.numbers.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            // The client's SYN: the connection is followed from here on.
            work.fresh.open(&work.numbers);
            work.fresh.learn_path(sender, hook, work.ifindex);
            if implicit_tls(&work.control) {
                work.fresh.start_tls();
            }
            if CONTROLS
                .insert(&work.control, &work.fresh, BPF_NOEXIST.into())
                .is_err()
            {
                count(Counter::ControlTableFull);
            }
        } else {
            count(Counter::ControlUnknown);
        }
        return Followed::Done;
    };
    // SAFETY: as in `scan`.
    let state = unsafe { &mut *state };
    if !state.on_path(sender, hook, work.ifindex) {
        count(Counter::ControlWrongPath);
        return Followed::OffPath;
    }
    let tracked = state.track(sender, &work.numbers);
    if tracked != Tracked::OutOfWindow && tracked != Tracked::Closed {
        state.learn_path(sender, hook, work.ifindex);
    }
    // A client's SYN that opened the connection again (after its end, or unanswered).
    if tracked == Tracked::Learned
        && sender == Sender::Client
        && work.numbers.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && implicit_tls(&work.control)
    {
        state.start_tls();
    }
    match tracked {
        Tracked::InWindow => Followed::Read(state),
        Tracked::Learned | Tracked::Closed => Followed::Done,
        Tracked::OutOfWindow => {
            count(Counter::ControlOutOfWindow);
            Followed::Done
        }
        Tracked::Ends => {
            remove_expectations(work, state);
            state.close();
            Followed::Done
        }
        Tracked::Reopened => {
            remove_expectations(work, state);
            state.restart(&work.numbers);
            if implicit_tls(&work.control) {
                state.start_tls();
            }
            Followed::Done
        }
    }
}

/// Whether the control connection's server port is an implicit-TLS one: TLS from its
/// first byte.
#[inline(always)]
fn implicit_tls(control: &FlowKey) -> bool {
    // SAFETY: an array map value, read.
    maps::port(control.dst_port).is_some_and(|port| unsafe { (*port).implicit_tls } != 0)
}

/// Decides which bytes of the segment to read and copies them and the stream's scanner
/// into `work`. False when there is nothing to read.
#[inline(always)]
fn prepare(
    frame: &impl Frame,
    segment: &SegmentBytes,
    work: &mut ControlScan,
    state: &mut ControlState,
) -> bool {
    count(Counter::ControlPackets);
    work.now_ns = now_ns();
    let sender = work.sender();
    let stream = state.stream(sender);
    let skip = match stream.plan(segment.seq, segment.len) {
        SegmentPlan::AlreadyRead => {
            count(Counter::ControlAlreadyRead);
            return false;
        }
        SegmentPlan::ReadAfterGap => {
            count(Counter::ControlGaps);
            work.scanner = LineScanner::resync(sender);
            0
        }
        SegmentPlan::Read { skip } => {
            work.scanner = stream.scanner;
            skip
        }
    };
    let unread = segment.len - skip;
    let window = if unread as usize > SCAN_WINDOW {
        SCAN_WINDOW as u32
    } else {
        unread
    };
    // The verifier needs to see 1 <= len <= SCAN_WINDOW; the mask proves it.
    let len = ((window - 1) & (SCAN_WINDOW as u32 - 1)) + 1;
    if frame.load_bytes(segment.offset + skip, work.buf.as_mut_ptr(), len) != 0 {
        return false;
    }
    work.announced = 0;
    work.stopped = 0;
    work.unparsed = 0;
    work.base = segment.offset + skip;
    work.truncated = u8::from(unread > len);
    work.len = len;
    true
}

/// Records what the loop found and where the stream now stands.
#[inline(always)]
fn finish(
    frame: &impl Frame,
    segment: &SegmentBytes,
    work: &mut ControlScan,
    state: &mut ControlState,
) {
    let stream = state.stream(work.sender());
    stream.scanner = work.scanner;
    if work.truncated != 0 || work.stopped != 0 {
        count(Counter::ScanTruncated);
        // The next segment starts a line if this one ended one; otherwise its first
        // line is unknown ground.
        let last = segment.offset + segment.len - 1;
        let mut byte = 0u8;
        let ends_line = frame.load_bytes(last, &mut byte, 1) == 0 && byte == b'\n';
        stream.scanner = if ends_line {
            LineScanner::new(work.sender())
        } else {
            LineScanner::resync(work.sender())
        };
    }
    stream.advance(segment.seq, segment.len);
}

/// Bytes one callback scans: each bpf_loop iteration is an indirect call, which costs as
/// much as scanning several bytes; the call to `scan_byte` is a direct one.
const CHUNK: usize = 4;

unsafe extern "C" fn scan_chunk(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer given in `scan`, to a map value valid for
    // the program's run.
    let work = unsafe { &mut **ctx.cast::<*mut ControlScan>() };
    let start = index as usize * CHUNK;
    for offset in 0..CHUNK {
        let position = start + offset;
        if position >= work.len as usize {
            return 1;
        }
        let byte = work.buf[position & (SCAN_WINDOW - 1)];
        if work.scanner.ignores(byte) {
            continue;
        }
        if scan_byte(work, byte, position as u32) {
            work.stopped = 1;
            return 1;
        }
    }
    0
}

/// Steps the scanner over one byte, `buf[at]`; true when no more announcements fit.
#[inline(never)]
fn scan_byte(work: &mut ControlScan, byte: u8, at: u32) -> bool {
    match work.scanner.step(byte) {
        Step::Continue => false,
        Step::Malformed(ParseError::LineTooLong) => {
            count(Counter::LineTooLong);
            work.unparsed = Reason::LineTooLong as u8;
            false
        }
        Step::Malformed(_) => {
            count(Counter::ParseErrors);
            work.unparsed = Reason::ParseError as u8;
            false
        }
        Step::Signalled(signal) => {
            work.signals |= signal as u8;
            false
        }
        Step::Announced(announcement) => {
            let slot = usize::from(work.announced) & (MAX_ANNOUNCEMENTS - 1);
            work.pending[slot] = announcement;
            work.texts[slot] = Located {
                at,
                text: work.scanner.address_text(),
            };
            work.announced += 1;
            usize::from(work.announced) == MAX_ANNOUNCEMENTS
        }
    }
}

/// A subprogram of its own, called after the loop, for the same stack reason.
#[inline(never)]
fn record(work: &mut ControlScan, state: &mut ControlState, index: usize) {
    let announcement = work.pending[index & (MAX_ANNOUNCEMENTS - 1)];
    let announcer = work.sender();
    if rewrites(work, &announcement, index) {
        return;
    }
    let public = nat::public_address(&announcement, &work.control, announcer);
    let slot = match policy::judge(
        &announcement,
        &work.control,
        announcer,
        &config().rules(),
        public,
    ) {
        Ok(slot) => slot,
        Err(refusal) => {
            count(match refusal {
                Refusal::FamilyMismatch => Counter::FamilyMismatch,
                Refusal::LowPort => Counter::LowPortRefused,
                Refusal::AddressMismatch => Counter::AddressMismatch,
            });
            events::refused(
                refusal.into(),
                Some(&announcement),
                &work.control,
                announcer,
                work.tls,
            );
            return;
        }
    };
    // A client holding its share may still move its own expectations around (a new PASV
    // displacing the last one), not add to them.
    if state.adds(&slot, config().max_expected) && !share::take(&work.control, work.now_ns) {
        count(Counter::ClientShareRefused);
        events::refused(
            Reason::ClientShare,
            Some(&announcement),
            &work.control,
            announcer,
            work.tls,
        );
        return;
    }
    if let Some(displaced) = state.remember(slot, config().max_expected) {
        work.key = displaced.key(&work.control);
        remove_owned(&work.key, &work.control);
        count(Counter::ExpectationsReplaced);
    }
    work.key = slot.key(&work.control);
    work.value.expires_ns = work.now_ns.saturating_add(config().expect_timeout_ns);
    work.value.control = work.control;
    if EXPECTATIONS.insert(&work.key, &work.value, 0).is_ok() {
        count(Counter::ExpectationsCreated);
        if let Some(port) = maps::port(work.key.port) {
            // SAFETY: an array map value; racing writers only ever store timestamps.
            unsafe { (*port).announced = coarse_time(work.now_ns) };
        }
        events::announced(&work.key, &work.control, work.tls);
    } else {
        count(Counter::ExpectationTableFull);
        events::refused(
            Reason::TableFull,
            Some(&announcement),
            &work.control,
            announcer,
            work.tls,
        );
    }
}

/// Whether the announcement is one a `--nat-inside` interface rewrites: an IPv4 host
/// behind it announcing its own address, arriving. Its expectation is then made where the
/// rewritten announcement leaves (the outside interface, which sees the public address),
/// not here; the rewrite is left for `rewrite` in `work.rewrite`, or counted as impossible
/// when the text began in an earlier segment (already passed) or is unknown.
#[inline(always)]
fn rewrites(work: &mut ControlScan, announcement: &Announcement, index: usize) -> bool {
    // A 229 names no address, but its data connection comes to PUBLIC all the same.
    let own_address = announcement.family == FAMILY_OWN_ADDRESS;
    if work.hook != Direction::Ingress as u8
        || work.control.family != FAMILY_IPV4
        || !(own_address
            || announcement.family == FAMILY_IPV4
                && announcement.addr == policy::own_address(&work.control, work.sender()))
        || nat::inside(work.ifindex).is_none()
    {
        return false;
    }
    let located = work.texts[index & (MAX_ANNOUNCEMENTS - 1)];
    let back = u32::from(located.text.back);
    let text = !own_address;
    if (text && (located.text.len == 0 || back > located.at)) || work.rewrite.found != 0 {
        count(Counter::NatUnrewritable);
        return true;
    }
    work.rewrite = Rewrite {
        offset: if text {
            work.base + located.at - back
        } else {
            0
        },
        len: if text { located.text.len } else { 0 },
        mode: announcement.mode,
        found: 1,
        port: announcement.port,
        _pad: 0,
    };
    true
}

/// Removes an expectation if `control` made it (the same key may since have been
/// announced again by another control connection), and gives it back to the client.
#[inline(always)]
fn remove_owned(key: &ExpectKey, control: &FlowKey) -> bool {
    // SAFETY: a plain-data map value, read.
    let owned = unsafe { EXPECTATIONS.get(key) }.is_some_and(|e| e.control == *control);
    let removed = owned && EXPECTATIONS.remove(key).is_ok();
    if removed {
        share::give_back(control);
    }
    removed
}

/// A control connection ended, or starts over: what it announced and did not use goes.
#[inline(always)]
fn remove_expectations(work: &mut ControlScan, state: &ControlState) {
    let held = usize::from(state.expected_count);
    for (i, slot) in state.expected.iter().enumerate() {
        if i < held {
            work.key = slot.key(&work.control);
            if remove_owned(&work.key, &work.control) {
                count(Counter::ExpectationsRemoved);
            }
        }
    }
}
