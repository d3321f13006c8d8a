//! What the programs remember per FTP control connection: where each direction's byte
//! stream stands (so a line split across segments is read whole and a retransmitted
//! segment is not read twice) and which expectations the connection made (so they can be
//! capped, as the kernel helper's `max_expected`, and removed when it ends).
//!
//! A control connection is keyed client -> server, whichever direction a segment travels.

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::Addr,
    expect::ExpectKey,
    flow::FlowKey,
    parse::{LineScanner, Sender},
};

/// Most expectations one control connection may hold at once; `--max-expected` picks the
/// cap from 1 (the kernel helper's default) to this. A power of two, so that an index can
/// be masked into range.
pub const MAX_EXPECTED: usize = 4;

/// The key of the control connection a segment belongs to.
pub fn control_key(segment: &FlowKey, sender: Sender) -> FlowKey {
    match sender {
        Sender::Client => *segment,
        Sender::Server => segment.reversed(),
    }
}

/// One direction's byte stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct StreamScan {
    /// Sequence number of the first byte not yet scanned.
    pub next_seq: u32,
    /// Whether any segment of this direction was scanned yet.
    pub started: u8,
    pub _pad: [u8; 3],
    pub scanner: LineScanner,
}

/// What to do with a control segment, given what was already read of its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentPlan {
    /// Every byte of it was read before: a retransmission.
    AlreadyRead,
    /// Read it from byte `skip` on (the bytes before were read already).
    Read { skip: u32 },
    /// Bytes before it were never seen (lost, or still to come out of order): read it, but
    /// only from the next line on.
    ReadAfterGap,
}

impl StreamScan {
    pub fn plan(&self, seq: u32, len: u32) -> SegmentPlan {
        if self.started == 0 {
            // The first segment seen: a connection opens at a line boundary, and one already
            // open when the programs were attached most likely sends whole lines.
            return SegmentPlan::Read { skip: 0 };
        }
        let ahead = seq.wrapping_sub(self.next_seq) as i32;
        if ahead > 0 {
            SegmentPlan::ReadAfterGap
        } else if ahead.unsigned_abs() >= len {
            SegmentPlan::AlreadyRead
        } else {
            SegmentPlan::Read {
                skip: ahead.unsigned_abs(),
            }
        }
    }

    /// Records that the segment was read to its end.
    pub fn advance(&mut self, seq: u32, len: u32) {
        self.started = 1;
        self.next_seq = seq.wrapping_add(len);
    }
}

/// An expectation as its control connection remembers it: the connecting side is always
/// the other end of the control connection, so the port, the listener and who announced
/// suffice to rebuild the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ExpectSlot {
    pub port: u16,
    pub announcer: u8,
    pub _pad: u8,
    pub listener: Addr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ControlState {
    pub last_seen_ns: u64,
    /// Indexed by `Sender`.
    pub streams: [StreamScan; 2],
    pub expected: [ExpectSlot; MAX_EXPECTED],
    pub expected_count: u8,
    /// Where the next expectation goes; when full, the oldest is there.
    pub expected_next: u8,
    pub _pad: [u8; 6],
}

impl ControlState {
    /// The state of a connection not seen before, written in place: the BPF stack (512
    /// bytes) has no room for a temporary copy.
    pub fn reset(&mut self, now_ns: u64) {
        bytemuck::bytes_of_mut(self).fill(0);
        self.last_seen_ns = now_ns;
        self.streams[0].scanner = LineScanner::new(Sender::Client);
        self.streams[1].scanner = LineScanner::new(Sender::Server);
    }

    /// One direction's stream: the commands' or the replies'.
    pub fn stream(&mut self, sender: Sender) -> &mut StreamScan {
        let [client, server] = &mut self.streams;
        match sender {
            Sender::Client => client,
            Sender::Server => server,
        }
    }

    /// Remembers a new expectation of this connection; returns the one it displaces when
    /// the connection already holds `cap` (1..=MAX_EXPECTED) of them. Announcing the same
    /// expectation again displaces nothing.
    pub fn remember(&mut self, slot: ExpectSlot, cap: u8) -> Option<ExpectSlot> {
        // No division or slicing: the kernel side must have no panic path.
        let cap = cap.clamp(1, MAX_EXPECTED as u8);
        let held = self.expected_count.min(cap);
        if self
            .expected
            .iter()
            .take(usize::from(held))
            .any(|s| *s == slot)
        {
            return None;
        }
        let index = if self.expected_next < cap {
            self.expected_next
        } else {
            0
        };
        let target = &mut self.expected[usize::from(index) & (MAX_EXPECTED - 1)];
        let displaced = (held >= cap).then_some(*target);
        *target = slot;
        self.expected_next = if index + 1 < cap { index + 1 } else { 0 };
        self.expected_count = (held + 1).min(cap);
        displaced
    }
}

impl ExpectSlot {
    /// The expectation this slot stands for, on control connection `control` (client ->
    /// server).
    pub fn key(&self, control: &FlowKey) -> ExpectKey {
        ExpectKey {
            family: control.family,
            _pad: 0,
            port: self.port,
            connector: if self.announcer == Sender::Server as u8 {
                control.src
            } else {
                control.dst
            },
            listener: self.listener,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{FAMILY_IPV4, ipv4};

    fn stream_at(next_seq: u32) -> StreamScan {
        StreamScan {
            next_seq,
            started: 1,
            ..StreamScan::zeroed()
        }
    }

    #[test]
    fn segment_plans() {
        assert_eq!(
            StreamScan::zeroed().plan(5000, 10),
            SegmentPlan::Read { skip: 0 }
        );
        let stream = stream_at(1000);
        assert_eq!(stream.plan(1000, 10), SegmentPlan::Read { skip: 0 });
        assert_eq!(stream.plan(990, 10), SegmentPlan::AlreadyRead);
        assert_eq!(stream.plan(900, 10), SegmentPlan::AlreadyRead);
        assert_eq!(stream.plan(995, 10), SegmentPlan::Read { skip: 5 });
        assert_eq!(stream.plan(1001, 10), SegmentPlan::ReadAfterGap);
    }

    #[test]
    fn plans_survive_sequence_wraparound() {
        let stream = stream_at(u32::MAX - 2);
        assert_eq!(stream.plan(u32::MAX - 2, 10), SegmentPlan::Read { skip: 0 });
        assert_eq!(stream.plan(u32::MAX - 12, 10), SegmentPlan::AlreadyRead);
        assert_eq!(stream.plan(u32::MAX - 7, 10), SegmentPlan::Read { skip: 5 });
        assert_eq!(stream.plan(3, 10), SegmentPlan::ReadAfterGap);
        let mut advanced = stream;
        advanced.advance(u32::MAX - 2, 10);
        assert_eq!(advanced.next_seq, 7);
    }

    fn slot(port: u16) -> ExpectSlot {
        ExpectSlot {
            port,
            announcer: Sender::Server as u8,
            _pad: 0,
            listener: ipv4([192, 0, 2, 1]),
        }
    }

    fn new_state() -> ControlState {
        let mut state = ControlState::zeroed();
        state.reset(0);
        state
    }

    #[test]
    fn reset_state_reads_both_directions_from_a_line_start() {
        let mut state = ControlState::zeroed();
        state.expected_count = 3;
        state.reset(7);
        assert_eq!(state.last_seen_ns, 7);
        assert_eq!(state.expected_count, 0);
        assert_eq!(state.streams[0].scanner, LineScanner::new(Sender::Client));
        assert_eq!(state.streams[1].scanner, LineScanner::new(Sender::Server));
        assert_eq!(state.streams[1].started, 0);
    }

    #[test]
    fn newest_expectation_displaces_the_oldest() {
        let mut state = new_state();
        assert_eq!(state.remember(slot(1), 1), None);
        assert_eq!(state.remember(slot(1), 1), None, "the same one again");
        assert_eq!(state.remember(slot(2), 1), Some(slot(1)));
        assert_eq!(state.remember(slot(3), 1), Some(slot(2)));

        let mut state = new_state();
        for port in 1..=3 {
            assert_eq!(state.remember(slot(port), 3), None);
        }
        assert_eq!(state.remember(slot(4), 3), Some(slot(1)));
        assert_eq!(state.remember(slot(5), 3), Some(slot(2)));
        assert_eq!(state.remember(slot(3), 3), None);
        assert_eq!(
            state.remember(slot(6), 9),
            None,
            "the cap is clamped to MAX_EXPECTED"
        );
    }

    #[test]
    fn slots_rebuild_their_keys() {
        let control = FlowKey {
            family: FAMILY_IPV4,
            _pad: [0; 3],
            src_port: 40000,
            dst_port: 21,
            src: ipv4([192, 0, 2, 2]),
            dst: ipv4([192, 0, 2, 1]),
        };
        let passive = slot(10000).key(&control);
        assert_eq!(passive.connector, control.src, "the client connects");
        assert_eq!(passive.listener, control.dst);
        let active = ExpectSlot {
            port: 5000,
            announcer: Sender::Client as u8,
            _pad: 0,
            listener: control.src,
        }
        .key(&control);
        assert_eq!(active.connector, control.dst, "the server connects");
        assert_eq!(active.listener, control.src);
        assert_eq!(
            control_key(&control.reversed(), Sender::Server),
            control,
            "a reply belongs to the same control connection"
        );
    }
}
