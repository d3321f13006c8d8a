//! Scanning control segments and recording what they announce.
//!
//! Each control connection's state (where each direction's stream stands, its scanner
//! mid-line, its expectations) lives in CONTROLS. A segment's state is copied into this
//! CPU's scratch space, the segment is scanned there, and the state is written back: the
//! bpf_loop callback then works on one map value only.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use aya_log_ebpf::warn;
use ftp_ebpf_common::{
    control::{ControlState, SegmentPlan, StreamScan, control_key},
    expect::{ExpectKey, ExpectValue},
    flow::FlowKey,
    parse::{Announcement, LineScanner, ParseError, Sender, Step},
    policy::{self, Refusal},
    stats::Counter,
};

use crate::{
    Direction,
    maps::{CONTROLS, EXPECT_TIMEOUT_NS, EXPECTATIONS, SCAN, count, max_expected, now_ns, rules},
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
    state: ControlState,
    control: FlowKey,
    now_ns: u64,
    sender: u8,
    /// Announcements found by the callback, recorded after the loop: recording needs more
    /// stack than the callback's frame can have on top of its callers'.
    announced: u8,
    pending: [Announcement; MAX_ANNOUNCEMENTS],
    /// The expectation being written or removed; kept here, not on the stack, for room.
    key: ExpectKey,
    value: ExpectValue,
}

impl ControlScan {
    fn stream(&mut self) -> &mut StreamScan {
        let [client, server] = &mut self.state.streams;
        if self.sender == Sender::Server as u8 {
            server
        } else {
            client
        }
    }
}

/// A subprogram of its own: its locals and the callback's must not add up with the
/// guard's in one frame (the verifier allows 512 bytes of stack across the call chain).
#[inline(never)]
pub fn scan(frame: &impl Frame, segment: &Segment, sender: Sender, direction: Direction) {
    if segment.payload_len == 0 && !segment.ends_connection() {
        return;
    }
    let Some(work) = SCAN.get_ptr_mut(direction as u32) else {
        return;
    };
    // SAFETY: this CPU's slot for this direction; nothing else uses it meanwhile.
    let work = unsafe { &mut *work };
    work.control = control_key(&segment.flow, sender);
    if segment.ends_connection() {
        close(work);
        return;
    }
    count(Counter::ControlPackets);
    let now = now_ns();
    // SAFETY: a plain-data map value, copied out.
    match unsafe { CONTROLS.get(&work.control) } {
        Some(state) => work.state = *state,
        None => work.state.reset(now),
    }
    work.now_ns = now;
    work.sender = sender as u8;

    let skip = match work.stream().plan(segment.seq, segment.payload_len) {
        SegmentPlan::AlreadyRead => {
            count(Counter::ControlAlreadyRead);
            return;
        }
        SegmentPlan::ReadAfterGap => {
            count(Counter::ControlGaps);
            work.stream().scanner = LineScanner::resync(sender);
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
    // bpf_loop takes its callback's context only from the stack: pass a stack cell that
    // points to the map value.
    let mut context: *mut ControlScan = work;
    // SAFETY: the callback only touches the ControlScan the cell points to.
    let scanned = unsafe {
        bpf_loop(
            len,
            scan_byte as *mut c_void,
            (&mut context as *mut *mut ControlScan).cast(),
            0,
        )
    };
    for index in 0..MAX_ANNOUNCEMENTS {
        if index < usize::from(work.announced) {
            record(work, index);
        }
    }
    if unread > len || scanned < i64::from(len) {
        count(Counter::ScanTruncated);
        // The next segment starts a line if this one ended one; otherwise its first
        // line is unknown ground.
        let last = segment.payload_offset + segment.payload_len - 1;
        let mut byte = 0u8;
        let ends_line = frame.load_bytes(last, &mut byte, 1) == 0 && byte == b'\n';
        work.stream().scanner = if ends_line {
            LineScanner::new(sender)
        } else {
            LineScanner::resync(sender)
        };
    }
    work.stream().advance(segment.seq, segment.payload_len);
    work.state.last_seen_ns = now;
    if CONTROLS.insert(&work.control, &work.state, 0).is_err() {
        count(Counter::ControlTableFull);
    }
}

unsafe extern "C" fn scan_byte(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the stack cell given in `scan`, which points to a
    // ControlScan map value.
    let work = unsafe { &mut **ctx.cast::<*mut ControlScan>() };
    let byte = work.buf[index as usize & (SCAN_WINDOW - 1)];
    match work.stream().scanner.step(byte) {
        Step::Continue => 0,
        Step::Malformed(ParseError::LineTooLong) => {
            count(Counter::LineTooLong);
            0
        }
        Step::Malformed(_) => {
            count(Counter::ParseErrors);
            0
        }
        Step::Announced(announcement) => {
            let slot = usize::from(work.announced) & (MAX_ANNOUNCEMENTS - 1);
            work.pending[slot] = announcement;
            work.announced += 1;
            // Full: stop here; `scan` resyncs at the next line.
            i64::from(usize::from(work.announced) == MAX_ANNOUNCEMENTS)
        }
    }
}

/// A subprogram of its own, called after the loop, for the same stack reason.
#[inline(never)]
fn record(work: &mut ControlScan, index: usize) {
    let announcement = work.pending[index & (MAX_ANNOUNCEMENTS - 1)];
    let announcer = if work.sender == Sender::Server as u8 {
        Sender::Server
    } else {
        Sender::Client
    };
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
    if let Some(displaced) = work.state.remember(slot, max_expected()) {
        work.key = displaced.key(&work.control);
        remove_owned(&work.key, &work.control);
        count(Counter::ExpectationsReplaced);
    }
    work.key = slot.key(&work.control);
    work.value.expires_ns = work.now_ns.saturating_add(EXPECT_TIMEOUT_NS.load());
    work.value.control = work.control;
    if EXPECTATIONS.insert(&work.key, &work.value, 0).is_ok() {
        count(Counter::ExpectationsCreated);
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
