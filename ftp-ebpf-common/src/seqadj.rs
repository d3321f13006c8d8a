//! Sequence adjustment: after a NAT gateway rewrote a control segment to another length
//! (`10,0,2,2` became `198,51,100,1`), every later segment of that direction carries
//! sequence numbers that many bytes off, and every acknowledgement of the other direction
//! the same the other way. The rules are those of the kernel's `nf_conntrack_seqadj.c`:
//! one correction point per direction, with the offset before it and the offset after it,
//! so that a retransmission of the rewritten segment (which starts at the correction point)
//! is numbered as it was the first time.

use bytemuck::{Pod, Zeroable};

use crate::seq::SeqNumber;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SeqAdjust {
    /// The sequence number of the latest rewritten segment, as its sender numbered it.
    pub correction_pos: u32,
    /// What is added to sequence numbers up to `correction_pos`, that segment's included.
    pub offset_before: i32,
    /// What is added to sequence numbers after it.
    pub offset_after: i32,
}

impl SeqAdjust {
    /// The segment starting at `seq` was rewritten `delta` bytes longer (shorter when
    /// negative). Its retransmission, rewritten again identically, adds nothing; nor does
    /// a segment from before the latest correction point, whose later bytes were already
    /// accounted for (the kernel's rule too).
    pub fn rewritten(&mut self, seq: u32, delta: i32) {
        if delta == 0 {
            return;
        }
        if self.offset_before == self.offset_after
            || SeqNumber(self.correction_pos).before(SeqNumber(seq))
        {
            self.correction_pos = seq;
            self.offset_before = self.offset_after;
            self.offset_after = self.offset_after.wrapping_add(delta);
        }
    }

    /// A sequence number of the rewritten direction, as the receiver must see it.
    pub fn seq(&self, seq: u32) -> u32 {
        seq.wrapping_add(self.offset(seq) as u32)
    }

    /// An acknowledgement of the rewritten direction (sent by the other end), as the
    /// rewritten direction's sender must see it.
    pub fn ack(&self, ack: u32) -> u32 {
        // The acknowledged number is in the receiver's numbering: taken back by the
        // offset before the correction point, it is compared as the sender numbered it.
        let sent = ack.wrapping_sub(self.offset_before as u32);
        ack.wrapping_sub(self.offset(sent) as u32)
    }

    /// Whether nothing is adjusted (no length changed yet).
    pub fn is_identity(&self) -> bool {
        self.offset_before == 0 && self.offset_after == 0
    }

    fn offset(&self, seq: u32) -> i32 {
        if SeqNumber(seq).after(SeqNumber(self.correction_pos)) {
            self.offset_after
        } else {
            self.offset_before
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_segments_move_and_acknowledgements_move_back() {
        let mut adjust = SeqAdjust::default();
        assert!(adjust.is_identity());
        // A 50-byte segment at 1000 grew by 4 bytes.
        adjust.rewritten(1000, 4);
        assert_eq!(
            adjust.seq(1000),
            1000,
            "the rewritten segment keeps its number"
        );
        assert_eq!(adjust.seq(1050), 1054);
        // Its end, acknowledged as the receiver saw it (1054), is 1050 to the sender.
        assert_eq!(adjust.ack(1054), 1050);
        assert_eq!(adjust.ack(1000), 1000);
        assert_eq!(adjust.ack(900), 900);
        // A retransmission of the rewritten segment changes nothing.
        adjust.rewritten(1000, 4);
        assert_eq!(adjust.seq(1050), 1054);
        // The next rewrite, shorter by 2 bytes, at 1050.
        adjust.rewritten(1050, -2);
        assert_eq!(adjust.seq(1050), 1054);
        assert_eq!(adjust.seq(1100), 1102);
        assert_eq!(adjust.ack(1102), 1100);
        assert_eq!(adjust.ack(1054), 1050);
    }

    #[test]
    fn thousands_of_rewrites_do_not_drift_and_numbers_wrap() {
        let mut adjust = SeqAdjust::default();
        // Each 40-byte line grows by 4 bytes, from just below the wrap on.
        let start = u32::MAX - 20_000;
        for line in 0..5000u32 {
            let seq = start.wrapping_add(line * 40);
            assert_eq!(adjust.seq(seq), seq.wrapping_add(line * 4), "line {line}");
            adjust.rewritten(seq, 4);
            let end = seq.wrapping_add(40);
            assert_eq!(adjust.ack(end.wrapping_add((line + 1) * 4)), end);
        }
        assert_eq!(adjust.offset_after, 20_000);
    }

    #[test]
    fn an_older_segment_moves_nothing() {
        let mut adjust = SeqAdjust::default();
        adjust.rewritten(2000, 3);
        adjust.rewritten(1000, 3);
        assert_eq!((adjust.correction_pos, adjust.offset_after), (2000, 3));
        let mut none = SeqAdjust::default();
        none.rewritten(1000, 0);
        assert!(none.is_identity());
    }
}
