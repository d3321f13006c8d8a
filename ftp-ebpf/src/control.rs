//! Scanning control segments and recording what they announce.
//!
//! Each control connection's state (where each direction's stream stands, its scanner
//! mid-line, its expectations) lives in CONTROLS and is worked on in place; the segment's
//! bytes are copied into this CPU's scratch space for the bpf_loop callback to read.

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_loop};
use aya_log_ebpf::warn;
use ftp_ebpf_common::{
    control::{ControlState, SegmentPlan, control_key},
    expect::{ExpectKey, ExpectValue},
    flow::FlowKey,
    parse::{Announcement, LineScanner, ParseError, Sender, Step},
    policy::{self, Refusal, coarse_time},
    stats::Counter,
};

use crate::{
    Direction,
    maps::{
        self, CONTROLS, EXPECT_TIMEOUT_NS, EXPECTATIONS, SCAN, count, max_expected, now_ns, rules,
    },
    packet::{Frame, Segment},
};

/// Bytes of a control segment scanned; a power of two so that an index can be masked into
/// range. Control segments are short lines in practice; after a longer one, scanning
/// resumes at the next line (`scan_truncated`).
pub const SCAN_WINDOW: usize = 1024;

/// Announcements one segment may carry; a segment with more is not FTP, and its rest is
/// left unread (`scan_truncated`). A power of two, so that an index can be masked.
const MAX_ANNOUNCEMENTS: usize = 4;

/// This CPU's workspace for one segment.
#[repr(C)]
pub struct ControlScan {
    buf: [u8; SCAN_WINDOW],
    /// The state of a connection the full table has no room for: used for one segment.
    spare: ControlState,
    control: FlowKey,
    now_ns: u64,
    sender: u8,
    /// Announcements found by the callback, recorded after the loop: recording needs more
    /// stack than the callback's frame can have on top of its callers'.
    announced: u8,
    /// Set when the callback stopped before the end (too many announcements).
    stopped: u8,
    /// Bytes of `buf` to scan.
    len: u32,
    pending: [Announcement; MAX_ANNOUNCEMENTS],
    /// The expectation being written or removed; kept here, not on the stack, for room.
    key: ExpectKey,
    value: ExpectValue,
}

impl ControlScan {
    fn sender(&self) -> Sender {
        if self.sender == Sender::Server as u8 {
            Sender::Server
        } else {
            Sender::Client
        }
    }
}

/// What the bpf_loop callback gets, on the stack (the only place bpf_loop takes a context
/// from): the scratch space and the connection's state, both map values.
#[repr(C)]
struct LoopContext {
    work: *mut ControlScan,
    state: *mut ControlState,
}

/// A subprogram of its own: its locals and the callback's must not add up with the
/// guard's in one frame (the verifier allows 512 bytes of stack across the call chain).
#[inline(never)]
pub fn scan(
    frame: &impl Frame,
    segment: &Segment,
    flow: &FlowKey,
    sender: Sender,
    direction: Direction,
) {
    let Some(work) = SCAN.get_ptr_mut(direction as u32) else {
        return;
    };
    // SAFETY: this CPU's slot for this direction; nothing else uses it meanwhile.
    let work = unsafe { &mut *work };
    work.control = control_key(flow, sender);
    if segment.ends_connection() {
        close(work);
        return;
    }
    count(Counter::ControlPackets);
    let now = now_ns();
    work.now_ns = now;
    work.sender = sender as u8;
    let state: *mut ControlState = match CONTROLS.get_ptr_mut(&work.control) {
        Some(state) => state,
        None => {
            work.spare.reset(now);
            let inserted = CONTROLS
                .insert(&work.control, &work.spare, BPF_NOEXIST.into())
                .is_ok();
            match CONTROLS.get_ptr_mut(&work.control) {
                Some(state) if inserted => state,
                _ => {
                    count(Counter::ControlTableFull);
                    &mut work.spare
                }
            }
        }
    };
    // SAFETY: a map value, valid for the program's run; on another CPU, only a segment of
    // the same connection at the same moment could touch it.
    let state = unsafe { &mut *state };

    let skip = match state.stream(sender).plan(segment.seq, segment.payload_len) {
        SegmentPlan::AlreadyRead => {
            count(Counter::ControlAlreadyRead);
            return;
        }
        SegmentPlan::ReadAfterGap => {
            count(Counter::ControlGaps);
            state.stream(sender).scanner = LineScanner::resync(sender);
            0
        }
        SegmentPlan::Read { skip } => skip,
    };
    let unread = segment.payload_len - skip;
    let window = if unread as usize > SCAN_WINDOW {
        SCAN_WINDOW as u32
    } else {
        unread
    };
    // The verifier needs to see 1 <= len <= SCAN_WINDOW; the mask proves it.
    let len = ((window - 1) & (SCAN_WINDOW as u32 - 1)) + 1;
    if frame.load_bytes(segment.payload_offset + skip, work.buf.as_mut_ptr(), len) != 0 {
        return;
    }
    work.announced = 0;
    work.stopped = 0;
    work.len = len;
    let mut context = LoopContext { work, state };
    // SAFETY: the callback only touches the two map values the context points to.
    unsafe {
        bpf_loop(
            len.div_ceil(CHUNK as u32),
            scan_chunk as *mut c_void,
            (&mut context as *mut LoopContext).cast(),
            0,
        )
    };
    for index in 0..MAX_ANNOUNCEMENTS {
        if index < usize::from(work.announced) {
            record(work, state, index);
        }
    }
    if unread > len || work.stopped != 0 {
        count(Counter::ScanTruncated);
        // The next segment starts a line if this one ended one; otherwise its first
        // line is unknown ground.
        let last = segment.payload_offset + segment.payload_len - 1;
        let mut byte = 0u8;
        let ends_line = frame.load_bytes(last, &mut byte, 1) == 0 && byte == b'\n';
        state.stream(sender).scanner = if ends_line {
            LineScanner::new(sender)
        } else {
            LineScanner::resync(sender)
        };
    }
    state
        .stream(sender)
        .advance(segment.seq, segment.payload_len);
    state.last_seen_ns = now;
}

/// Bytes one callback scans: each bpf_loop iteration is an indirect call, which costs as
/// much as scanning several bytes; the call to `scan_byte` is a direct one.
const CHUNK: usize = 4;

unsafe extern "C" fn scan_chunk(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the LoopContext given in `scan`.
    let context = unsafe { &*ctx.cast::<LoopContext>() };
    // SAFETY: both point to map values, valid for the program's run.
    let (work, state) = unsafe { (&mut *context.work, &mut *context.state) };
    let sender = work.sender();
    let start = index as usize * CHUNK;
    for offset in 0..CHUNK {
        let position = start + offset;
        if position >= work.len as usize {
            return 1;
        }
        let byte = work.buf[position & (SCAN_WINDOW - 1)];
        let scanner = &mut state.stream(sender).scanner;
        if scanner.ignores(byte) {
            continue;
        }
        if scan_byte(work, scanner, byte) {
            work.stopped = 1;
            return 1;
        }
    }
    0
}

/// Steps the scanner over one byte; true when no more announcements fit.
#[inline(never)]
fn scan_byte(work: &mut ControlScan, scanner: &mut LineScanner, byte: u8) -> bool {
    match scanner.step(byte) {
        Step::Continue => false,
        Step::Malformed(ParseError::LineTooLong) => {
            count(Counter::LineTooLong);
            false
        }
        Step::Malformed(_) => {
            count(Counter::ParseErrors);
            false
        }
        Step::Announced(announcement) => {
            let slot = usize::from(work.announced) & (MAX_ANNOUNCEMENTS - 1);
            work.pending[slot] = announcement;
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
    let slot = match policy::judge(&announcement, &work.control, announcer, &rules()) {
        Ok(slot) => slot,
        Err(Refusal::FamilyMismatch) => return count(Counter::FamilyMismatch),
        Err(Refusal::LowPort) => return count(Counter::LowPortRefused),
        Err(Refusal::AddressMismatch) => {
            count(Counter::AddressMismatch);
            warn!(
                &(),
                "refused: control connection to port {} announced another host's address (port {})",
                work.control.dst_port,
                announcement.port
            );
            return;
        }
    };
    if let Some(displaced) = state.remember(slot, max_expected()) {
        work.key = displaced.key(&work.control);
        remove_owned(&work.key, &work.control);
        count(Counter::ExpectationsReplaced);
    }
    work.key = slot.key(&work.control);
    work.value.expires_ns = work.now_ns.saturating_add(EXPECT_TIMEOUT_NS.load());
    work.value.control = work.control;
    if EXPECTATIONS.insert(&work.key, &work.value, 0).is_ok() {
        count(Counter::ExpectationsCreated);
        if let Some(port) = maps::port(work.key.port) {
            // SAFETY: an array map value; racing writers only ever store timestamps.
            unsafe { (*port).announced = coarse_time(work.now_ns) };
        }
    } else {
        count(Counter::ExpectationTableFull);
    }
}

/// Removes an expectation if `control` made it: the same key may since have been
/// announced again by another control connection.
#[inline(always)]
fn remove_owned(key: &ExpectKey, control: &FlowKey) -> bool {
    // SAFETY: a plain-data map value, read.
    let owned = unsafe { EXPECTATIONS.get(key) }.is_some_and(|e| e.control == *control);
    owned && EXPECTATIONS.remove(key).is_ok()
}

/// A control connection ended (FIN or RST): what it announced and did not use goes, as
/// does its state.
#[inline(always)]
fn close(work: &mut ControlScan) {
    // SAFETY: a plain-data map value, only read.
    let Some(state) = (unsafe { CONTROLS.get(&work.control) }) else {
        return;
    };
    let held = usize::from(state.expected_count);
    for (i, slot) in state.expected.iter().enumerate() {
        if i < held {
            work.key = slot.key(&work.control);
            if remove_owned(&work.key, &work.control) {
                count(Counter::ExpectationsRemoved);
            }
        }
    }
    let _ = CONTROLS.remove(&work.control);
}
