//! Tracked TCP connections: admitted data connections, keyed by the initiator's 5-tuple.

use bytemuck::{Pod, Zeroable};

use crate::addr::Addr;

/// A TCP connection as its initiator sent its SYN: `src` connected to `dst`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub src_port: u16,
    pub dst_port: u16,
    pub src: Addr,
    pub dst: Addr,
}

impl FlowKey {
    /// The same connection seen from the other end.
    pub fn reversed(&self) -> Self {
        Self {
            family: self.family,
            _pad: [0; 3],
            src_port: self.dst_port,
            dst_port: self.src_port,
            src: self.dst,
            dst: self.src,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowValue {
    pub admitted_ns: u64,
    pub last_seen_ns: u64,
    /// When the first FIN or RST was seen; 0 while the connection is open.
    pub closing_since_ns: u64,
}

/// Writing `last_seen_ns` on every packet would dirty a shared cache line per packet; idle
/// timeouts are counted in seconds, so a refresh per second is exact enough.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// Whether a packet of a tracked flow refreshes its idle time. Looking the flow up for every
/// packet would cost a hash lookup per packet of every transfer; one packet in 64 keeps a
/// moving transfer fresh (its sequence or acknowledgement numbers advance by roughly a
/// kilobyte per packet), and a flow that went quiet meanwhile only leaves the listing early:
/// its packets pass regardless, the guard judges SYNs alone.
pub fn refreshes(seq: u32, ack: u32) -> bool {
    ((seq ^ ack) >> 10) & 63 == 0
}

/// How long a flow lingers after FIN/RST: enough for a retransmitted FIN or a late SYN
/// retransmission to still find it.
pub const CLOSE_GRACE_NS: u64 = 10_000_000_000;

impl FlowValue {
    pub fn admitted(now_ns: u64) -> Self {
        Self {
            admitted_ns: now_ns,
            last_seen_ns: now_ns,
            closing_since_ns: 0,
        }
    }

    pub fn needs_refresh(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) >= LAST_SEEN_GRANULARITY_NS
    }

    /// Whether the flow is over: closed for the grace time, or idle for the timeout.
    pub fn is_finished(&self, now_ns: u64, idle_timeout_ns: u64) -> bool {
        let closed = self.closing_since_ns != 0
            && now_ns.saturating_sub(self.closing_since_ns) >= CLOSE_GRACE_NS;
        closed || now_ns.saturating_sub(self.last_seen_ns) >= idle_timeout_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn reversed_twice_is_identity() {
        let key = FlowKey {
            family: 4,
            _pad: [0; 3],
            src_port: 1,
            dst_port: 2,
            src: [1; 16],
            dst: [2; 16],
        };
        assert_eq!(key.reversed().src_port, 2);
        assert_eq!(key.reversed().dst, [1; 16]);
        assert_eq!(key.reversed().reversed(), key);
    }

    #[test]
    fn open_flow_ends_only_when_idle() {
        let flow = FlowValue::admitted(100 * S);
        assert!(!flow.is_finished(399 * S, 300 * S));
        assert!(flow.is_finished(400 * S, 300 * S));
    }

    #[test]
    fn closing_flow_ends_after_grace() {
        let mut flow = FlowValue::admitted(100 * S);
        flow.closing_since_ns = 105 * S;
        assert!(!flow.is_finished(105 * S + CLOSE_GRACE_NS - 1, 300 * S));
        assert!(flow.is_finished(105 * S + CLOSE_GRACE_NS, 300 * S));
    }

    #[test]
    fn about_one_packet_in_64_refreshes() {
        let refreshing = (0..64_000u32)
            .filter(|i| refreshes(1000 + i * 1448, 77))
            .count();
        assert!((700..=1300).contains(&refreshing), "{refreshing}");
        let acks = (0..64_000u32).filter(|i| refreshes(5, i * 2896)).count();
        assert!(
            (700..=1300).contains(&acks),
            "pure ACKs advance too: {acks}"
        );
    }

    #[test]
    fn refresh_once_per_second() {
        let flow = FlowValue::admitted(10 * S);
        assert!(!flow.needs_refresh(10 * S + S / 2));
        assert!(flow.needs_refresh(11 * S));
    }
}
