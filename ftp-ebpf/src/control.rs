//! Scanning control segments and recording what they announce.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use aya_log_ebpf::warn;
use ftp_ebpf_common::{
    flow::FlowKey,
    parse::{Announcement, LineScanner, Sender, Step},
    policy::{self, Refusal},
    stats::Counter,
};

use crate::{
    Direction,
    maps::{EXPECT_TIMEOUT_NS, EXPECTATIONS, SCAN, count, now_ns},
    packet::{Frame, Segment},
};

/// Bytes of a control segment scanned; a power of two so an index can be masked into
/// range. FTP control segments are single short lines in practice; the rest of a longer
/// segment is counted in `scan_truncated`.
pub const SCAN_WINDOW: usize = 256;

/// What the per-byte callback works on: the copied payload and the scanner state.
#[repr(C)]
pub struct ControlScan {
    buf: [u8; SCAN_WINDOW],
    scanner: LineScanner,
    control: FlowKey,
    now_ns: u64,
}

#[inline(always)]
pub fn scan(frame: &impl Frame, segment: &Segment, sender: Sender, direction: Direction) {
    if segment.payload_len == 0 {
        return;
    }
    count(Counter::ControlPackets);
    let Some(state) = SCAN.get_ptr_mut(direction as u32) else {
        return;
    };
    // SAFETY: this CPU's slot for this direction; nothing else uses it meanwhile.
    let state = unsafe { &mut *state };
    let window = if segment.payload_len as usize > SCAN_WINDOW {
        count(Counter::ScanTruncated);
        SCAN_WINDOW as u32
    } else {
        segment.payload_len
    };
    // The verifier needs to see 1 <= len <= SCAN_WINDOW; the mask proves it.
    let len = ((window - 1) & (SCAN_WINDOW as u32 - 1)) + 1;
    if frame.load_bytes(segment.payload_offset, state.buf.as_mut_ptr(), len) != 0 {
        count(Counter::MalformedPackets);
        return;
    }
    state.scanner = LineScanner::new(sender);
    state.control = segment.flow;
    state.now_ns = now_ns();
    // bpf_loop takes its callback's context only from the stack: pass a stack cell that
    // points to the map value.
    let mut context: *mut ControlScan = state;
    // SAFETY: the callback only touches the ControlScan the cell points to.
    unsafe {
        bpf_loop(
            len,
            scan_byte as *mut c_void,
            (&mut context as *mut *mut ControlScan).cast(),
            0,
        )
    };
}

unsafe extern "C" fn scan_byte(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the stack cell given in `scan`, which points to a
    // ControlScan map value.
    let state = unsafe { &mut **ctx.cast::<*mut ControlScan>() };
    let byte = state.buf[index as usize & (SCAN_WINDOW - 1)];
    match state.scanner.step(byte) {
        Step::Continue => {}
        Step::Malformed(_) => count(Counter::ParseErrors),
        Step::Announced(announcement) => record(&announcement, &state.control, state.now_ns),
    }
    0
}

#[inline(always)]
fn record(announcement: &Announcement, control: &FlowKey, now_ns: u64) {
    match policy::expectation(announcement, control, now_ns, EXPECT_TIMEOUT_NS.load()) {
        Ok((key, value)) => {
            if EXPECTATIONS.insert(&key, &value, 0).is_ok() {
                count(Counter::ExpectationsCreated);
            } else {
                count(Counter::ExpectationTableFull);
            }
        }
        Err(Refusal::AddressMismatch) => {
            count(Counter::AddressMismatch);
            let [a, b, c, d, ..] = announcement.addr;
            let [s1, s2, s3, s4, ..] = control.src;
            warn!(
                &(),
                "refused: {}.{}.{}.{} announced {}.{}.{}.{}:{} on its control connection",
                s1,
                s2,
                s3,
                s4,
                a,
                b,
                c,
                d,
                announcement.port
            );
        }
    }
}
