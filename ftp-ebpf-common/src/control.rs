//! What the programs remember per FTP control connection: its TCP windows (so that only
//! segments the real ends could have sent are believed), where each direction's byte
//! stream stands (so a line split across segments is read whole and a retransmitted
//! segment is not read twice) and which expectations the connection made (so they can be
//! capped, as the kernel helper's `max_expected`, and removed when it ends).
//!
//! A control connection is keyed client -> server, whichever direction a segment travels.
//! It is remembered from the client's SYN on; a connection whose opening was not seen is
//! believed only when the loader adopted it from the host's own sockets at start.

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::Addr,
    expect::ExpectKey,
    flow::FlowKey,
    parse::{LineScanner, Sender, Signal},
    seq::SeqNumber,
    tls::{PlainStreams, clear_accepted, starts_record},
    window::{Numbers, Side, TCP_FIN, TCP_RST, TcpDirection, TcpWindows},
};

/// Most expectations one control connection may hold at once; `--max-expected` picks the
/// cap from 1 (the kernel helper's default) to this. A power of two, so that an index can
/// be masked into range.
pub const MAX_EXPECTED: usize = 4;
// `ControlState::remember` masks slot indices with MAX_EXPECTED - 1.
const _: () = assert!(MAX_EXPECTED.is_power_of_two());

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
        let ahead = SeqNumber(seq) - SeqNumber(self.next_seq);
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
        self.next_seq = (SeqNumber(seq) + len).0;
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

/// The side of the TCP connection a control segment's sender is: the client opened it.
pub fn side(sender: Sender) -> Side {
    match sender {
        Sender::Client => Side::Initiator,
        Sender::Server => Side::Responder,
    }
}

/// `ControlState::flags`: the loader adopted the connection from the host's sockets; each
/// direction's window is picked up from its first segment, which is believed only when it
/// fits the other direction's numbers (`TcpWindows::pick_up`).
pub const ADOPTED: u8 = 1;
/// `ControlState::flags`: a SYN came for the open connection's addresses and ports;
/// `reopening` holds it.
pub const REOPENING: u8 = 2;
/// `ControlState::flags`: an in-window FIN or RST ended the connection. The state stays
/// (the table reuses it when full) so that the segments still to come of the closing,
/// the other FIN and the last ACKs, are known as such rather than counted as strangers'.
pub const CLOSED: u8 = 4;
/// `ControlState::tls`: the client asked for TLS (`AUTH`); the server's `234` starts it.
pub const AUTH_REQUESTED: u8 = 1;
/// `ControlState::tls`: the client's direction is TLS records (`AUTH` accepted, or an
/// implicit-TLS port): nothing in it can be read on the wire.
pub const TLS_CLIENT: u8 = 2;
/// `ControlState::tls`: the server's direction is TLS records.
pub const TLS_SERVER: u8 = 4;
/// `ControlState::tls`: the client sent `CCC` (seen through its TLS library calls).
pub const CLEAR_REQUESTED: u8 = 8;
/// `ControlState::tls`: the server accepted `CCC`: each direction still TLS leaves it
/// with its first segment that is not a TLS record (`leaves_tls`).
pub const CLEARING: u8 = 16;
/// `ControlState::tls`: the switch to TLS was counted and reported (`first_tls_segment`).
pub const TLS_REPORTED: u8 = 32;
/// Both directions' TLS flags.
pub const TLS: u8 = TLS_CLIENT | TLS_SERVER;

/// The TLS flag of `sender`'s direction.
const fn tls_flag(sender: Sender) -> u8 {
    match sender {
        Sender::Client => TLS_CLIENT,
        Sender::Server => TLS_SERVER,
    }
}

/// Where a segment was seen: arriving on an interface, or leaving through one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

/// `ControlState::paths`: nothing of the direction seen yet.
pub const PATH_UNKNOWN: u32 = 0;
/// `ControlState::paths`: the direction's first segment was seen leaving, not arriving: it
/// comes from this host, or from behind an interface without the programs. Its segments
/// never arrive on one with them.
pub const PATH_FROM_INSIDE: u32 = u32::MAX;

/// The path of a direction whose first segment arrived on interface `ifindex`.
fn arrived_on(ifindex: u32) -> u32 {
    ifindex.wrapping_add(1)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ControlState {
    /// Indexed by `Side` (the client is the initiator).
    pub windows: TcpWindows,
    /// Indexed by `Sender`: where each direction's segments come from, learned from its
    /// first segment (its SYN or SYN-ACK): `arrived_on(ifindex)`, `PATH_FROM_INSIDE` or
    /// `PATH_UNKNOWN`. One end of the connection forging the other's segments sends them
    /// from its own side, which the real ones never come from: on a gateway, whose
    /// servers' addresses are not its own, that is what gives them away.
    pub paths: [u32; 2],
    /// The client direction a new SYN would open, when `REOPENING`: the old connection
    /// ended unseen and its addresses and ports are used again. It takes over only when
    /// the server's SYN-ACK acknowledges it, as conntrack's "ignored SYN" does: a forged
    /// SYN changes nothing.
    pub reopening: TcpDirection,
    /// Indexed by `Sender`.
    pub streams: [StreamScan; 2],
    pub expected: [ExpectSlot; MAX_EXPECTED],
    pub expected_count: u8,
    /// Where the next expectation goes; when full, the oldest is there.
    pub expected_next: u8,
    pub flags: u8,
    /// Where the connection stands with TLS: `AUTH_REQUESTED`, `TLS_CLIENT`, ...
    pub tls: u8,
    /// While TLS: the plaintext its ends' TLS library calls passed (`--tls-uprobes`).
    pub plain: PlainStreams,
}

/// What a control segment's TCP numbers make of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracked {
    /// In window: its bytes (if any) are the real stream's.
    InWindow,
    /// In window, and it ends the connection (FIN or RST).
    Ends,
    /// Part of the handshake, or the first segment of a picked-up direction: it sets the
    /// window and is believed for nothing else.
    Learned,
    /// Outside the window, or of a direction whose window is not known: it changes nothing.
    OutOfWindow,
    /// A segment of a connection that ended: nothing to read or judge.
    Closed,
    /// The server acknowledged a SYN that reuses the connection's addresses and ports: the
    /// old connection is over (what it announced must go) and the new one starts, which
    /// `restart` records.
    Reopened,
}

impl ControlState {
    /// A connection as its client's SYN opens it, written in place: the BPF stack (512
    /// bytes) has no room for a temporary copy.
    pub fn open(&mut self, syn: &Numbers) {
        self.clear();
        self.windows = TcpWindows::open(syn);
    }

    /// A connection open before the programs were attached, as the loader adopts it from
    /// the host's socket: each direction's window scale is known (from the socket), its
    /// numbers are picked up from its first segment.
    pub fn adopted(client_scale: u8, server_scale: u8) -> Self {
        let mut state = Self::zeroed();
        state.clear();
        state.flags = ADOPTED;
        state.windows.directions[Side::Initiator as usize].scale = client_scale;
        state.windows.directions[Side::Responder as usize].scale = server_scale;
        state
    }

    fn clear(&mut self) {
        bytemuck::bytes_of_mut(self).fill(0);
        self.streams[0].scanner = LineScanner::new(Sender::Client);
        self.streams[1].scanner = LineScanner::new(Sender::Server);
    }

    /// After `Tracked::Reopened` (and the old expectations' removal): the new connection,
    /// from the SYN kept in `reopening` and the server's SYN-ACK. The same addresses and
    /// ports take the same paths.
    pub fn restart(&mut self, syn_ack: &Numbers) {
        let client = self.reopening;
        let paths = self.paths;
        self.clear();
        self.paths = paths;
        self.windows.directions[Side::Initiator as usize] = client;
        self.windows.accept(syn_ack);
    }

    /// Whether a segment of `sender`'s direction, seen at `hook` of interface `ifindex`,
    /// can have taken the path that direction's segments take: arriving where its first
    /// segment arrived, and never leaving back through that interface; or, for a direction
    /// from inside, never arriving at all.
    pub fn on_path(&self, sender: Sender, hook: Hook, ifindex: u32) -> bool {
        if self.flags & CLOSED != 0 {
            // Whoever reuses the addresses and ports may come another way.
            return true;
        }
        match (self.paths[sender as usize], hook) {
            (PATH_UNKNOWN, _) => true,
            (PATH_FROM_INSIDE, Hook::Ingress) => false,
            (PATH_FROM_INSIDE, Hook::Egress) => true,
            (path, Hook::Ingress) => path == arrived_on(ifindex),
            (path, Hook::Egress) => path != arrived_on(ifindex),
        }
    }

    /// A segment of `sender`'s direction was believed (its handshake segment, or an
    /// adopted connection's first): the first one sets the direction's path.
    pub fn learn_path(&mut self, sender: Sender, hook: Hook, ifindex: u32) {
        let path = &mut self.paths[sender as usize];
        if *path == PATH_UNKNOWN {
            *path = match hook {
                Hook::Ingress => arrived_on(ifindex),
                Hook::Egress => PATH_FROM_INSIDE,
            };
        }
    }

    /// Judges a segment of this connection by its TCP numbers, and moves the windows when
    /// it is in them. A client SYN for a connection not yet answered starts it over (a
    /// retransmission, or a new attempt); one for an open connection waits in `reopening`.
    pub fn track(&mut self, sender: Sender, segment: &Numbers) -> Tracked {
        let from = side(sender);
        let syn = segment.flags & crate::window::TCP_SYN != 0;
        let ack = segment.flags & crate::window::TCP_ACK != 0;
        if self.flags & CLOSED != 0 {
            // The addresses and ports may be used again at once (conntrack reopens a
            // connection in TIME_WAIT on a SYN too).
            if syn && !ack && from == Side::Initiator {
                self.open(segment);
                return Tracked::Learned;
            }
            return Tracked::Closed;
        }
        if syn && !ack {
            if from != Side::Initiator {
                return Tracked::OutOfWindow;
            }
            if self.windows.is_open() {
                self.reopening = TcpDirection::opened_by(segment);
                self.flags |= REOPENING;
            } else if self.flags & ADOPTED == 0 {
                // The SYN again before an answer: a retransmission, a new attempt, or, on a
                // router, the same SYN leaving by the second interface. The way it came
                // stands: forgetting it would take the SYN leaving for the client's path.
                let paths = self.paths;
                self.open(segment);
                self.paths = paths;
            } else {
                return Tracked::OutOfWindow;
            }
            return Tracked::Learned;
        }
        if syn {
            if from != Side::Responder {
                return Tracked::OutOfWindow;
            }
            if !self.windows.is_open() {
                return if self.windows.accept(segment) {
                    Tracked::Learned
                } else {
                    Tracked::OutOfWindow
                };
            }
            if self.flags & REOPENING != 0 && segment.ack == self.reopening.end {
                return Tracked::Reopened;
            }
            // A retransmitted SYN-ACK.
            return if self.windows.admit(from, segment, 0) {
                Tracked::Learned
            } else {
                Tracked::OutOfWindow
            };
        }
        if self.flags & ADOPTED != 0 && !self.windows.directions[from as usize].is_known() {
            let scale = self.windows.directions[from as usize].scale;
            if !self.windows.pick_up(from, segment, scale) {
                return Tracked::Learned;
            }
        } else if !self.windows.is_open() || !self.windows.admit(from, segment, 0) {
            return Tracked::OutOfWindow;
        }
        if segment.flags & (TCP_FIN | TCP_RST) != 0 {
            Tracked::Ends
        } else {
            Tracked::InWindow
        }
    }

    /// After `Tracked::Ends` (and the expectations' removal).
    pub fn close(&mut self) {
        self.flags |= CLOSED;
        self.expected_count = 0;
        self.expected_next = 0;
    }

    /// Applies the TLS switches (`Signal` bits) that lines of `sender`'s direction gave;
    /// true when the connection has just become TLS.
    pub fn signalled(&mut self, sender: Sender, signals: u8) -> bool {
        match sender {
            Sender::Client => {
                if signals & Signal::AuthRequested as u8 != 0 {
                    self.tls |= AUTH_REQUESTED;
                }
                if signals & Signal::ClearRequested as u8 != 0 && self.is_tls() {
                    self.tls |= CLEAR_REQUESTED;
                }
                false
            }
            Sender::Server => {
                let accepted = signals & Signal::AuthAccepted as u8 != 0
                    && self.tls & AUTH_REQUESTED != 0
                    && !self.is_tls();
                if accepted {
                    self.start_tls();
                }
                accepted
            }
        }
    }

    /// Both directions are TLS records from the next byte on: after `234`, or from the
    /// start on an implicit-TLS port. The plaintext read through TLS library calls starts
    /// at a line, counted from 0.
    pub fn start_tls(&mut self) {
        self.tls = TLS;
        self.plain = PlainStreams::default();
        self.streams[0].scanner = LineScanner::new(Sender::Client);
        self.streams[1].scanner = LineScanner::new(Sender::Server);
    }

    /// A segment of a connection adopted from the host's sockets, which may have switched
    /// to TLS before the programs were there: true (and the connection is TLS from now on)
    /// when it starts with a TLS record, which no FTP line does.
    pub fn adopted_tls(&mut self, first: u8, second: u8) -> bool {
        let tls = self.flags & ADOPTED != 0 && !self.is_tls() && starts_record(first, second);
        if tls {
            self.start_tls();
        }
        tls
    }

    /// True once per TLS connection, at its first segment with bytes: when its switch to
    /// TLS is counted and reported (a SYN to an implicit-TLS port alone is not).
    pub fn first_tls_segment(&mut self) -> bool {
        let first = self.tls & TLS_REPORTED == 0;
        self.tls |= TLS_REPORTED;
        first
    }

    /// Whether either direction is TLS records.
    pub fn is_tls(&self) -> bool {
        self.tls & TLS != 0
    }

    /// Whether `sender`'s direction is TLS records, unreadable on the wire.
    pub fn encrypted(&self, sender: Sender) -> bool {
        self.tls & tls_flag(sender) != 0
    }

    /// The server's reply read through its TLS library (its first bytes), which answers a
    /// `CCC` when one awaits: `200` clears the connection, anything else refuses.
    pub fn answered(&mut self, reply: [u8; 4]) {
        if self.tls & CLEAR_REQUESTED != 0 {
            self.tls &= !CLEAR_REQUESTED;
            if clear_accepted(reply) {
                self.tls |= CLEARING;
            }
        }
    }

    /// A segment of `sender`'s direction starting with `first`, `second`, while it is TLS:
    /// true when the direction leaves TLS with it (a `CCC` was accepted and the segment
    /// is not a TLS record, so it is the first plaintext). Its stream then starts afresh
    /// at this segment, at a line.
    pub fn leaves_tls(&mut self, sender: Sender, first: u8, second: u8) -> bool {
        if self.tls & CLEARING == 0 || starts_record(first, second) {
            return false;
        }
        self.tls &= !tls_flag(sender);
        if !self.is_tls() {
            self.tls &= !CLEARING;
        }
        let stream = self.stream(sender);
        stream.started = 0;
        stream.scanner = LineScanner::new(sender);
        true
    }

    /// One direction's stream: the commands' or the replies'.
    pub fn stream(&mut self, sender: Sender) -> &mut StreamScan {
        let [client, server] = &mut self.streams;
        match sender {
            Sender::Client => client,
            Sender::Server => server,
        }
    }

    /// Whether remembering `slot` adds an expectation to the connection (and to its
    /// client's share): not when the connection holds it already, nor when it holds its
    /// cap and the new one displaces the oldest.
    pub fn adds(&self, slot: &ExpectSlot, cap: u8) -> bool {
        let cap = cap.clamp(1, MAX_EXPECTED as u8);
        let held = self.expected_count.min(cap);
        held < cap
            && !self
                .expected
                .iter()
                .take(usize::from(held))
                .any(|s| s == slot)
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
        // Masked before it is compared with `cap`, not after: with `cap` read from a map,
        // LLVM drops a mask applied after the comparison (the index is then below cap,
        // at most MAX_EXPECTED), and kernels before 6.8 cannot bound an index by a
        // comparison with another unknown register.
        let index = self.expected_next & (MAX_EXPECTED as u8 - 1);
        let index = if index < cap { index } else { 0 };
        let target = &mut self.expected[usize::from(index)];
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

    #[test]
    fn an_adopted_connection_is_tls_from_its_first_record() {
        let mut state = ControlState::adopted(7, 7);
        assert!(!state.adopted_tls(b'2', b'2'), "a line");
        assert!(state.adopted_tls(23, 3));
        assert!(state.encrypted(Sender::Client) && state.encrypted(Sender::Server));
        let mut opened = ControlState::zeroed();
        opened.clear();
        assert!(
            !opened.adopted_tls(23, 3),
            "seen opening: its AUTH would have been read"
        );
    }

    #[test]
    fn tls_starts_with_auth_answered_234_and_ends_with_ccc_answered_200() {
        let mut state = ControlState::zeroed();
        state.clear();
        // 234 without AUTH changes nothing; AUTH alone neither.
        assert!(!state.signalled(Sender::Server, Signal::AuthAccepted as u8));
        assert!(!state.signalled(Sender::Client, Signal::AuthRequested as u8));
        assert!(!state.is_tls());
        assert!(state.signalled(Sender::Server, Signal::AuthAccepted as u8));
        assert!(state.encrypted(Sender::Client) && state.encrypted(Sender::Server));
        // Not again.
        assert!(!state.signalled(Sender::Server, Signal::AuthAccepted as u8));
        // TLS records are not plaintext, even without CCC.
        assert!(!state.leaves_tls(Sender::Server, b'2', b'2'));
        // CCC refused: still TLS.
        state.signalled(Sender::Client, Signal::ClearRequested as u8);
        state.answered(*b"534 ");
        assert!(!state.leaves_tls(Sender::Server, b'2', b'2'));
        // A later 200 answers something else.
        state.answered(*b"200 ");
        assert!(!state.leaves_tls(Sender::Server, b'2', b'2'));
        // CCC accepted: each direction leaves at its first segment that is not a record.
        state.signalled(Sender::Client, Signal::ClearRequested as u8);
        state.answered(*b"200 ");
        assert!(
            !state.leaves_tls(Sender::Server, 21, 3),
            "a close_notify alert"
        );
        assert!(state.leaves_tls(Sender::Server, b'2', b'2'));
        assert!(!state.encrypted(Sender::Server) && state.encrypted(Sender::Client));
        assert!(state.leaves_tls(Sender::Client, b'P', b'A'));
        assert!(!state.is_tls());
        assert_eq!(state.tls & CLEARING, 0);
    }
    use crate::{
        addr::{Family, ipv4},
        window::{TCP_ACK, TCP_SYN, numbers},
    };

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
        state.open(&numbers(1000, 0, 0, TCP_SYN, 64240));
        state
    }

    /// The handshake seen: client ISN 1000, server ISN 5000.
    fn open_state() -> ControlState {
        let mut state = ControlState::zeroed();
        let syn = numbers(1000, 0, 0, TCP_SYN, 64240);
        state.open(&syn);
        assert_eq!(
            state.track(Sender::Client, &syn),
            Tracked::Learned,
            "retransmitted"
        );
        let syn_ack = numbers(5000, 1001, 0, TCP_SYN | TCP_ACK, 65160);
        assert_eq!(state.track(Sender::Server, &syn_ack), Tracked::Learned);
        state
    }

    #[test]
    fn an_opened_state_reads_both_directions_from_a_line_start() {
        let mut state = ControlState::zeroed();
        state.expected_count = 3;
        state.open(&numbers(1000, 0, 0, TCP_SYN, 64240));
        assert_eq!(state.expected_count, 0);
        assert_eq!(state.streams[0].scanner, LineScanner::new(Sender::Client));
        assert_eq!(state.streams[1].scanner, LineScanner::new(Sender::Server));
        assert_eq!(state.streams[1].started, 0);
        assert!(!state.windows.is_open());
    }

    #[test]
    fn only_in_window_segments_of_seen_connections_count() {
        let mut state = new_state();
        let reply = numbers(5001, 1001, 30, TCP_ACK, 500);
        assert_eq!(
            state.track(Sender::Server, &reply),
            Tracked::OutOfWindow,
            "the server's SYN-ACK was not seen"
        );
        let mut state = open_state();
        assert_eq!(state.track(Sender::Server, &reply), Tracked::InWindow);
        let before_forgery = state;
        let forged = numbers(5031 + 100_000, 1001, 30, TCP_ACK, 500);
        assert_eq!(state.track(Sender::Server, &forged), Tracked::OutOfWindow);
        let reset = numbers(0xdead_beef, 0, 0, TCP_RST, 0);
        assert_eq!(state.track(Sender::Client, &reset), Tracked::OutOfWindow);
        assert_eq!(state.track(Sender::Server, &reset), Tracked::OutOfWindow);
        assert_eq!(state, before_forgery, "nothing moved");
        let fin = numbers(1001, 5031, 0, TCP_FIN | TCP_ACK, 500);
        assert_eq!(state.track(Sender::Client, &fin), Tracked::Ends);
        state.close();
        let last = numbers(5031, 1002, 0, TCP_FIN | TCP_ACK, 500);
        assert_eq!(state.track(Sender::Server, &last), Tracked::Closed);
        let again = numbers(77_000, 0, 0, TCP_SYN, 64240);
        assert_eq!(state.track(Sender::Client, &again), Tracked::Learned);
        assert!(!state.windows.is_open(), "opened anew by the SYN");
        assert_eq!(state.flags & CLOSED, 0);
        // A SYN-ACK from the client's side, a SYN from the server's: not a handshake.
        let mut state = new_state();
        let wrong = numbers(5000, 1001, 0, TCP_SYN | TCP_ACK, 100);
        assert_eq!(state.track(Sender::Client, &wrong), Tracked::OutOfWindow);
        let wrong = numbers(5000, 0, 0, TCP_SYN, 100);
        assert_eq!(state.track(Sender::Server, &wrong), Tracked::OutOfWindow);
    }

    #[test]
    fn each_direction_keeps_to_its_path() {
        // A host: the client's segments arrive on interface 3, the server's leave.
        let mut host = open_state();
        host.learn_path(Sender::Client, Hook::Ingress, 3);
        host.learn_path(Sender::Server, Hook::Egress, 3);
        host.learn_path(Sender::Server, Hook::Ingress, 3);
        assert_eq!(
            host.paths[Sender::Server as usize],
            PATH_FROM_INSIDE,
            "the first counts"
        );
        assert!(host.on_path(Sender::Client, Hook::Ingress, 3));
        assert!(!host.on_path(Sender::Client, Hook::Ingress, 4));
        assert!(host.on_path(Sender::Server, Hook::Egress, 3));
        assert!(
            !host.on_path(Sender::Server, Hook::Ingress, 3),
            "a forged reply"
        );
        // A gateway guarding both sides: the client's segments arrive on 3 and leave by
        // 5, the server's arrive on 5 and leave by 3.
        let mut gateway = open_state();
        gateway.learn_path(Sender::Client, Hook::Ingress, 3);
        gateway.learn_path(Sender::Client, Hook::Egress, 5);
        gateway.learn_path(Sender::Server, Hook::Ingress, 5);
        assert!(gateway.on_path(Sender::Client, Hook::Egress, 5));
        assert!(gateway.on_path(Sender::Server, Hook::Egress, 3));
        assert!(
            !gateway.on_path(Sender::Server, Hook::Ingress, 3),
            "the client forging"
        );
        assert!(
            !gateway.on_path(Sender::Server, Hook::Egress, 5),
            "sent back where it came from"
        );
        // Nothing learned yet, or the connection over: anything goes.
        assert!(ControlState::zeroed().on_path(Sender::Server, Hook::Ingress, 9));
        host.close();
        assert!(host.on_path(Sender::Server, Hook::Ingress, 3));
    }

    #[test]
    fn a_reused_connection_starts_over_only_when_the_server_answers() {
        let mut state = open_state();
        state.expected_count = 1;
        let syn = numbers(900_000, 0, 0, TCP_SYN, 64240);
        assert_eq!(state.track(Sender::Client, &syn), Tracked::Learned);
        assert_eq!(state.expected_count, 1, "a SYN alone changes nothing");
        let reply = numbers(5001, 1001, 10, TCP_ACK, 500);
        let mut probe = state;
        assert_eq!(probe.track(Sender::Server, &reply), Tracked::InWindow);
        let stale = numbers(5000, 1001, 0, TCP_SYN | TCP_ACK, 65160);
        assert_eq!(state.track(Sender::Server, &stale), Tracked::Learned);
        let syn_ack = numbers(70_000, 900_001, 0, TCP_SYN | TCP_ACK, 65160);
        assert_eq!(state.track(Sender::Server, &syn_ack), Tracked::Reopened);
        state.paths = [7, PATH_FROM_INSIDE];
        state.restart(&syn_ack);
        assert_eq!(state.paths, [7, PATH_FROM_INSIDE], "the same ways");
        assert_eq!(state.expected_count, 0);
        assert!(state.windows.is_open());
        let command = numbers(900_001, 70_001, 6, TCP_ACK, 500);
        assert_eq!(state.track(Sender::Client, &command), Tracked::InWindow);
    }

    /// On a router both of a connection's interfaces see each segment, arriving and then
    /// leaving: the client's SYN leaving must not replace the path it arrived by.
    #[test]
    fn a_routed_syn_keeps_the_path_it_arrived_by() {
        const OUTSIDE: u32 = 3;
        const INSIDE: u32 = 4;
        let syn = numbers(100_000, 0, 0, TCP_SYN, 64240);
        let mut state = ControlState::zeroed();
        state.open(&syn);
        state.learn_path(Sender::Client, Hook::Ingress, OUTSIDE);
        assert!(state.on_path(Sender::Client, Hook::Egress, INSIDE));
        assert_eq!(state.track(Sender::Client, &syn), Tracked::Learned);
        state.learn_path(Sender::Client, Hook::Egress, INSIDE);
        let syn_ack = numbers(70_000, 100_001, 0, TCP_SYN | TCP_ACK, 65160);
        assert!(state.on_path(Sender::Server, Hook::Ingress, INSIDE));
        assert_eq!(state.track(Sender::Server, &syn_ack), Tracked::Learned);
        state.learn_path(Sender::Server, Hook::Ingress, INSIDE);
        // The client's ACK arrives where its SYN did.
        assert!(state.on_path(Sender::Client, Hook::Ingress, OUTSIDE));
        assert!(!state.on_path(Sender::Client, Hook::Ingress, INSIDE));
    }

    #[test]
    fn adopted_connections_learn_each_direction_from_its_first_segment() {
        let mut state = ControlState::adopted(7, 7);
        let command = numbers(1_000_000, 9_000_000, 6, TCP_ACK, 500);
        assert_eq!(state.track(Sender::Client, &command), Tracked::Learned);
        // The reply to it fits its numbers: it is read (the first PASV after the start
        // works).
        let reply = numbers(9_000_000, 1_000_006, 40, TCP_ACK, 501);
        assert_eq!(state.track(Sender::Server, &reply), Tracked::InWindow);
        let next = numbers(9_000_040, 1_000_006, 30, TCP_ACK, 501);
        assert_eq!(state.track(Sender::Server, &next), Tracked::InWindow);
        let forged = numbers(9_000_040 + (1 << 28), 1_000_006, 30, TCP_ACK, 501);
        assert_eq!(state.track(Sender::Server, &forged), Tracked::OutOfWindow);
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
    fn only_new_expectations_below_the_cap_add_to_a_share() {
        let mut state = new_state();
        assert!(state.adds(&slot(1), 2));
        state.remember(slot(1), 2);
        assert!(!state.adds(&slot(1), 2), "held already");
        assert!(state.adds(&slot(2), 2));
        state.remember(slot(2), 2);
        assert!(!state.adds(&slot(3), 2), "displaces the oldest");
    }

    #[test]
    fn slots_rebuild_their_keys() {
        let control = FlowKey::new(
            Family::V4,
            ipv4([192, 0, 2, 2]),
            40000,
            ipv4([192, 0, 2, 1]),
            21,
        );
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
