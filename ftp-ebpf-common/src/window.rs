//! TCP window tracking, after the rules of the kernel's `tcp_in_window`
//! (nf_conntrack_proto_tcp.c): a segment counts only when its sequence numbers fall within
//! what its receiver could accept and its acknowledgement within what was sent. Somebody
//! who cannot see a connection's traffic cannot guess numbers that pass, so a forged
//! segment changes nothing.
//!
//! Per direction the sender's highest sequence sent (`end`), the highest the other side
//! allowed it (`max_end`: that side's acknowledgement plus window) and the largest window
//! it announced (`max_window`, scaled) are kept; window scaling (RFC 7323) is applied from
//! the SYN options, as conntrack does.

use bytemuck::{Pod, Zeroable};

use crate::seq::SeqNumber;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The largest window scale a SYN may announce (RFC 7323 2.3).
pub const MAX_WINDOW_SCALE: u8 = 14;

/// Bytes of TCP options a header can hold.
pub const MAX_TCP_OPTIONS: usize = 40;

/// The buffer the options are read into: a power of two, so that an index masked into it
/// is in bounds for the verifier whatever it lost track of.
pub const OPTIONS_BUFFER: usize = 64;

/// conntrack's MAXACKWINCONST: how far behind an acknowledgement may lag before the
/// sender's window is known to be larger.
const MIN_ACK_WINDOW: u32 = 66000;

/// What window tracking needs of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numbers {
    pub seq: u32,
    pub ack: u32,
    pub payload_len: u32,
    pub flags: u8,
    /// The window field as sent, unscaled.
    pub window: u16,
    /// The window scale option of a SYN that carried one, else `NO_WINDOW_SCALE`. Not an
    /// `Option`: a `None` stored to memory leaves its payload byte undefined, which the
    /// verifier refuses to see read.
    pub window_scale: u8,
}

/// `Numbers::window_scale` of a segment without the option.
pub const NO_WINDOW_SCALE: u8 = u8::MAX;

impl Numbers {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// One past the last sequence number the segment occupies (SYN and FIN count one).
    pub fn end(&self) -> SeqNumber {
        SeqNumber(self.seq)
            + self.payload_len
            + u32::from(self.has(TCP_SYN))
            + u32::from(self.has(TCP_FIN))
    }
}

/// `TcpDirection::flags`: the sender's SYN carried a window scale option.
const SCALE_OFFERED: u8 = 1;

/// One direction of a connection, as its sender is known.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TcpDirection {
    /// One past the highest sequence number sent (conntrack's `td_end`).
    pub end: u32,
    /// The highest sequence number the other side allowed: its acknowledgement plus its
    /// window (`td_maxend`).
    pub max_end: u32,
    /// The largest window the sender announced, scaled (`td_maxwin`); 0 while nothing of
    /// this direction is known.
    pub max_window: u32,
    /// The window scale the sender announced on its SYN, applied to its windows after it.
    pub scale: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

impl TcpDirection {
    /// The direction as its SYN (or SYN-ACK) opens it.
    pub fn opened_by(syn: &Numbers) -> Self {
        let end = syn.end().0;
        let offered = syn.window_scale != NO_WINDOW_SCALE;
        Self {
            end,
            max_end: end,
            // A SYN's window is never scaled.
            max_window: u32::from(syn.window).max(1),
            scale: if offered {
                syn.window_scale.min(MAX_WINDOW_SCALE)
            } else {
                0
            },
            flags: if offered { SCALE_OFFERED } else { 0 },
            _pad: [0; 2],
        }
    }

    pub fn is_known(&self) -> bool {
        self.max_window != 0
    }
}

/// Both directions of a connection, indexed by `Side`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TcpWindows {
    pub directions: [TcpDirection; 2],
}

/// Which end sent a segment: the connection's initiator (the SYN's sender) or responder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Initiator = 0,
    Responder = 1,
}

impl TcpWindows {
    /// A connection its initiator's SYN opens.
    pub fn open(syn: &Numbers) -> Self {
        Self {
            directions: [TcpDirection::opened_by(syn), TcpDirection::zeroed()],
        }
    }

    /// Whether both directions' windows are known: the handshake was seen, or traffic of
    /// both directions was picked up.
    pub fn is_open(&self) -> bool {
        self.directions[0].is_known() && self.directions[1].is_known()
    }

    fn split(&mut self, from: Side) -> (&mut TcpDirection, &mut TcpDirection) {
        let [initiator, responder] = &mut self.directions;
        match from {
            Side::Initiator => (initiator, responder),
            Side::Responder => (responder, initiator),
        }
    }

    /// The responder's SYN-ACK, seen for the first time. False, and nothing changes, when
    /// it does not acknowledge the initiator's SYN.
    pub fn accept(&mut self, syn_ack: &Numbers) -> bool {
        let initiator = self.directions[0];
        if !initiator.is_known() || syn_ack.ack != initiator.end {
            return false;
        }
        let mut responder = TcpDirection::opened_by(syn_ack);
        let mut initiator = initiator;
        // RFC 7323: scaling applies only when both ends offered it.
        if initiator.flags & responder.flags & SCALE_OFFERED == 0 {
            initiator.scale = 0;
            responder.scale = 0;
        }
        // What the responder allows the initiator to send.
        initiator.max_end = (SeqNumber(syn_ack.ack) + u32::from(syn_ack.window).max(1)).0;
        self.directions = [initiator, responder];
        true
    }

    /// Picks up one direction of a connection whose opening was not seen, from its first
    /// segment (conntrack's mid-stream case); `scale` is the direction's window scale,
    /// when known otherwise. Returns whether the segment is consistent with the other
    /// direction, picked up before: it acknowledges what that direction sent, and starts
    /// where that direction's acknowledgement said it would. Only then may it be believed:
    /// nobody blind to the traffic can guess both numbers.
    pub fn pick_up(&mut self, from: Side, segment: &Numbers, scale: u8) -> bool {
        let (sender, receiver) = self.split(from);
        let consistent = receiver.is_known() && segment.has(TCP_ACK) && {
            // `sender.end` holds what the receiver's first segment acknowledged.
            let window = receiver.max_window;
            let ack_window = window.max(MIN_ACK_WINDOW);
            let (expected, sent) = (SeqNumber(sender.end), SeqNumber(receiver.end));
            let ack = SeqNumber(segment.ack);
            segment.end().after(expected - window - 1)
                && SeqNumber(segment.seq).before(expected + window + 1)
                && ack.before(sent + 1)
                && ack.after(sent - ack_window - 1)
        };
        let end = segment.end();
        let window = (u32::from(segment.window) << scale.min(MAX_WINDOW_SCALE)).max(1);
        *sender = TcpDirection {
            end: end.0,
            max_end: (end + window).0,
            max_window: window,
            scale: scale.min(MAX_WINDOW_SCALE),
            flags: sender.flags,
            _pad: [0; 2],
        };
        if segment.has(TCP_ACK) && !receiver.is_known() {
            receiver.end = segment.ack;
            receiver.max_end = segment.ack;
        }
        consistent
    }

    /// conntrack's `tcp_in_window`: whether `segment`, sent by `from`, falls within the
    /// connection's windows; if it does, the windows move with it. `slack` widens every
    /// bound, for a caller that sees only a sample of the segments (0: conntrack's rule).
    ///
    /// A direction not yet known admits nothing: its numbers are not believed.
    pub fn admit(&mut self, from: Side, segment: &Numbers, slack: u32) -> bool {
        let (sender, receiver) = self.split(from);
        if !sender.is_known() {
            return false;
        }
        let seq = SeqNumber(segment.seq);
        let end = segment.end();
        // A segment without ACK, or a RST carrying ACK 0 (broken stacks), acknowledges
        // nothing: judge it as acknowledging what the receiver sent.
        let ack = SeqNumber(
            if !segment.has(TCP_ACK) || (segment.has(TCP_RST) && segment.ack == 0) {
                receiver.end
            } else {
                segment.ack
            },
        );
        let window = if segment.has(TCP_SYN) {
            u32::from(segment.window)
        } else {
            u32::from(segment.window) << sender.scale
        };
        let in_receive_window = !receiver.is_known()
            || end.after(SeqNumber(sender.end) - receiver.max_window - 1 - slack);
        let ack_window = sender.max_window.max(MIN_ACK_WINDOW);
        let in_window = seq.before(SeqNumber(sender.max_end) + 1 + slack)
            && in_receive_window
            && ack.before(SeqNumber(receiver.end) + 1 + slack)
            && ack.after(SeqNumber(receiver.end) - ack_window - 1 - slack);
        if !in_window {
            return false;
        }
        if sender.max_window < window {
            sender.max_window = window;
        }
        if end.after(SeqNumber(sender.end)) {
            sender.end = end.0;
        }
        if receiver.is_known() && end.after(SeqNumber(sender.max_end)) {
            // The sender went past what the receiver was known to allow: the receiver's
            // window is larger than known.
            receiver.max_window = receiver
                .max_window
                .wrapping_add((end - SeqNumber(sender.max_end)) as u32);
        }
        if segment.has(TCP_ACK) {
            let allowed = ack + window;
            if allowed.after(SeqNumber(receiver.max_end) - 1) {
                receiver.max_end = if window == 0 { allowed + 1 } else { allowed }.0;
            }
        }
        true
    }
}

/// A walk over a SYN's TCP options for the window scale option (and the SACK-permitted
/// option, which a NAT gateway takes off: `nat`), one byte position per step, so that the
/// programs can take the steps in a bpf_loop callback (which the verifier checks once)
/// rather than in a loop it would check once per path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct OptionsWalk {
    pub bytes: [u8; OPTIONS_BUFFER],
    /// Bytes of options the header holds, at most `MAX_TCP_OPTIONS`.
    pub len: u32,
    /// Where the next option starts.
    pub next: u32,
    /// What was found: the scale, or `NO_WINDOW_SCALE`.
    pub scale: u8,
    /// Where the SACK-permitted option starts, plus one; 0 when there is none.
    pub sack_permitted: u8,
    pub _pad: [u8; 2],
}

impl OptionsWalk {
    /// Starts over `len` bytes of options, already in `bytes`.
    pub fn start(&mut self, len: u32) {
        self.len = len.min(MAX_TCP_OPTIONS as u32);
        self.next = 0;
        self.scale = NO_WINDOW_SCALE;
        self.sack_permitted = 0;
    }

    /// Looks at byte position `at`; false once the walk is over (found, ended, malformed
    /// or out of options). Malformed options end it: the stack ignores what follows them.
    pub fn step(&mut self, at: u32) -> bool {
        const END: u8 = 0;
        const NOP: u8 = 1;
        const WINDOW_SCALE: u8 = 3;
        const SACK_PERMITTED: u8 = 4;
        if at >= self.len {
            return false;
        }
        if at != self.next {
            return true;
        }
        let byte = |at: u32| self.bytes[at as usize & (OPTIONS_BUFFER - 1)];
        match byte(at) {
            END => false,
            NOP => {
                self.next = at + 1;
                true
            }
            kind => {
                let size = u32::from(byte(at + 1));
                if size < 2 || at + size > self.len {
                    return false;
                }
                if kind == WINDOW_SCALE && size == 3 {
                    self.scale = byte(at + 2).min(MAX_WINDOW_SCALE);
                } else if kind == SACK_PERMITTED && size == 2 {
                    self.sack_permitted = at as u8 + 1;
                }
                self.next = at + size;
                true
            }
        }
    }
}

/// A segment's numbers, without a window scale option: for the crate's tests.
#[cfg(test)]
pub(crate) fn numbers(seq: u32, ack: u32, len: u32, flags: u8, window: u16) -> Numbers {
    Numbers {
        seq,
        ack,
        payload_len: len,
        flags,
        window,
        window_scale: NO_WINDOW_SCALE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake: initiator ISN 1000, responder ISN 5000, both offering `scale`.
    fn handshake(scale: u8) -> TcpWindows {
        let mut syn = numbers(1000, 0, 0, TCP_SYN, 64240);
        syn.window_scale = scale;
        let mut windows = TcpWindows::open(&syn);
        assert!(!windows.is_open());
        let mut syn_ack = numbers(5000, 1001, 0, TCP_SYN | TCP_ACK, 65160);
        syn_ack.window_scale = scale;
        assert!(windows.accept(&syn_ack));
        assert!(windows.is_open());
        // The initiator's ACK completes it.
        assert!(windows.admit(Side::Initiator, &numbers(1001, 5001, 0, TCP_ACK, 502), 0));
        windows
    }

    #[test]
    fn a_conversation_stays_in_window() {
        let mut w = handshake(7);
        let data = TCP_ACK | 0x08;
        assert!(w.admit(Side::Responder, &numbers(5001, 1001, 20, data, 510), 0));
        assert!(w.admit(Side::Initiator, &numbers(1001, 5021, 6, data, 502), 0));
        assert!(w.admit(Side::Responder, &numbers(5021, 1007, 48, data, 510), 0));
        // A retransmission of what was sent is in window.
        assert!(w.admit(Side::Responder, &numbers(5021, 1007, 48, data, 510), 0));
        // A window-full ahead with scaling (502 << 7 = 64256 bytes) is still in window.
        assert!(w.admit(
            Side::Responder,
            &numbers(5069 + 60000, 1007, 100, data, 510),
            0
        ));
    }

    #[test]
    fn forged_sequence_numbers_are_out_of_window() {
        let mut w = handshake(7);
        let before_forgery = w;
        for ahead in [
            100_000u32,
            1 << 20,
            (1 << 31) - 1,
            1 << 31,
            u32::MAX - 1_000_000,
        ] {
            let forged = numbers(5001u32.wrapping_add(ahead), 1001, 50, TCP_ACK | 0x08, 510);
            assert!(!w.admit(Side::Responder, &forged, 0), "{ahead} ahead");
            assert_eq!(w, before_forgery, "an out-of-window segment moves nothing");
        }
        // The right sequence number with an acknowledgement of data never sent.
        let forged = numbers(5001, 1001 + 1_000_000, 50, TCP_ACK, 510);
        assert!(!w.admit(Side::Responder, &forged, 0));
        assert_eq!(w, before_forgery);
    }

    #[test]
    fn random_resets_are_out_of_window_in_either_direction() {
        let mut w = handshake(NO_WINDOW_SCALE);
        let before_forgery = w;
        for seq in [3_000_000u32, 500_000_000, 0x8000_0000, 0xdead_beef] {
            assert!(!w.admit(Side::Initiator, &numbers(seq, 0, 0, TCP_RST, 0), 0));
            assert!(!w.admit(Side::Responder, &numbers(seq, 0, 0, TCP_RST, 0), 0));
        }
        assert_eq!(w, before_forgery);
        // The real ones count.
        assert!(w.admit(Side::Initiator, &numbers(1001, 0, 0, TCP_RST, 0), 0));
        assert!(w.admit(
            Side::Responder,
            &numbers(5001, 1001, 0, TCP_RST | TCP_ACK, 0),
            0
        ));
    }

    #[test]
    fn scaling_applies_only_when_both_ends_offer_it() {
        let w = handshake(7);
        assert_eq!(w.directions[0].scale, 7);
        let mut syn = numbers(1000, 0, 0, TCP_SYN, 64240);
        syn.window_scale = 7;
        let mut w = TcpWindows::open(&syn);
        assert!(w.accept(&numbers(5000, 1001, 0, TCP_SYN | TCP_ACK, 65160)));
        assert_eq!(w.directions[0].scale, 0);
        assert_eq!(w.directions[1].scale, 0);
        // Without scaling a window-full ahead is 502 bytes, not 64256.
        let mut w = handshake(NO_WINDOW_SCALE);
        assert!(!w.admit(
            Side::Responder,
            &numbers(5001 + 70000, 1001, 10, TCP_ACK, 502),
            0
        ));
    }

    #[test]
    fn a_syn_ack_must_acknowledge_the_syn() {
        let mut w = TcpWindows::open(&numbers(1000, 0, 0, TCP_SYN, 64240));
        let opened = w;
        assert!(!w.accept(&numbers(7, 4242, 0, TCP_SYN | TCP_ACK, 65160)));
        assert_eq!(w, opened);
        assert!(!TcpWindows::zeroed().accept(&numbers(7, 1, 0, TCP_SYN | TCP_ACK, 1)));
    }

    #[test]
    fn unknown_directions_admit_nothing() {
        let mut w = TcpWindows::open(&numbers(1000, 0, 0, TCP_SYN, 64240));
        assert!(!w.admit(Side::Responder, &numbers(5001, 1001, 10, TCP_ACK, 100), 0));
        assert!(!TcpWindows::zeroed().admit(Side::Initiator, &numbers(1, 1, 1, TCP_ACK, 1), 0));
    }

    #[test]
    fn picked_up_connections_are_judged_once_both_directions_are_known() {
        let mut w = TcpWindows::zeroed();
        w.pick_up(
            Side::Initiator,
            &numbers(1_000_000, 9_000_000, 6, TCP_ACK, 500),
            7,
        );
        assert!(!w.is_open());
        // The other direction's first segment, acknowledging what the first one sent.
        w.pick_up(
            Side::Responder,
            &numbers(9_000_000, 1_000_006, 40, TCP_ACK, 501),
            7,
        );
        assert!(w.is_open());
        assert!(w.admit(
            Side::Responder,
            &numbers(9_000_040, 1_000_006, 30, TCP_ACK, 501),
            0
        ));
        assert!(!w.admit(
            Side::Responder,
            &numbers(9_000_040 + (1 << 24), 1_000_006, 30, TCP_ACK, 501),
            0
        ));
    }

    #[test]
    fn slack_widens_every_bound() {
        let mut w = handshake(NO_WINDOW_SCALE);
        let late = numbers(5001 + 100_000, 1001, 10, TCP_ACK, 502);
        assert!(!w.admit(Side::Responder, &late, 0));
        assert!(w.admit(Side::Responder, &late, 1 << 20));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut w = TcpWindows::open(&numbers(u32::MAX - 1, 0, 0, TCP_SYN, 1000));
        assert!(w.accept(&numbers(5000, u32::MAX, 0, TCP_SYN | TCP_ACK, 1000)));
        assert!(w.admit(
            Side::Initiator,
            &numbers(u32::MAX, 5001, 100, TCP_ACK, 1000),
            0
        ));
        assert_eq!(w.directions[0].end, 99);
    }

    /// The walk as the programs take it: a step per byte position until it says stop.
    fn walk(options: &[u8], len: u32) -> OptionsWalk {
        let mut walk = OptionsWalk::zeroed();
        walk.bytes[..options.len()].copy_from_slice(options);
        walk.start(len);
        for at in 0..MAX_TCP_OPTIONS as u32 {
            if !walk.step(at) {
                break;
            }
        }
        walk
    }

    fn window_scale(options: &[u8], len: u32) -> u8 {
        walk(options, len).scale
    }

    #[test]
    fn sack_permitted_is_found_wherever_it_stands() {
        // Linux's SYN: MSS, SACK permitted, timestamps, NOP, window scale 7.
        let linux = [
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let found = walk(&linux, 20);
        assert_eq!((found.sack_permitted, found.scale), (5, 7));
        // After the window scale, at an odd offset.
        let late = [1, 3, 3, 7, 4, 2, 0];
        assert_eq!(walk(&late, 7).sack_permitted, 5);
        let odd = [1, 4, 2, 1];
        assert_eq!(walk(&odd, 4).sack_permitted, 2);
        assert_eq!(walk(&[2, 4, 5, 180], 4).sack_permitted, 0);
        assert_eq!(walk(&[4, 3, 0, 0], 4).sack_permitted, 0, "a wrong size");
    }

    #[test]
    fn window_scale_options() {
        // Linux's SYN: MSS, SACK permitted, timestamps, NOP, window scale 7.
        let mut linux = [
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(window_scale(&linux, 20), 7);
        assert_eq!(window_scale(&linux, 19), NO_WINDOW_SCALE, "cut short");
        linux[19] = 200;
        assert_eq!(window_scale(&linux, 20), MAX_WINDOW_SCALE);
        let mut nops = [1u8; MAX_TCP_OPTIONS];
        assert_eq!(window_scale(&nops, 40), NO_WINDOW_SCALE);
        nops[37..40].copy_from_slice(&[3, 3, 2]);
        assert_eq!(window_scale(&nops, 40), 2);
        assert_eq!(window_scale(&nops, 60), 2, "at most 40 bytes are options");
        assert_eq!(
            window_scale(&[2, 0, 3, 3, 7], 5),
            NO_WINDOW_SCALE,
            "a zero length ends the walk"
        );
        assert_eq!(
            window_scale(&[3, 4, 5, 0], 4),
            NO_WINDOW_SCALE,
            "a window scale of the wrong size"
        );
        assert_eq!(
            window_scale(&[0, 3, 3, 7], 4),
            NO_WINDOW_SCALE,
            "after the end"
        );
    }
}
