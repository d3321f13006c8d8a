//! Tracked TCP connections: admitted data connections, keyed by the initiator's 5-tuple.

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::{Addr, Family, split},
    window::{Numbers, Side, TCP_FIN, TCP_RST, TCP_SYN, TcpWindows},
};

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
    pub const fn new(family: Family, src: Addr, src_port: u16, dst: Addr, dst_port: u16) -> Self {
        Self {
            family: family.as_u8(),
            _pad: [0; 3],
            src_port,
            dst_port,
            src,
            dst,
        }
    }

    /// `src` connecting to `dst`; None when their families differ (IPv4-mapped IPv6
    /// addresses count as IPv4).
    pub const fn from_sockets(
        src: core::net::SocketAddr,
        dst: core::net::SocketAddr,
    ) -> Option<Self> {
        let (family, src_addr) = split(src.ip());
        let (dst_family, dst_addr) = split(dst.ip());
        if family as u8 != dst_family as u8 {
            return None;
        }
        Some(Self::new(
            family,
            src_addr,
            src.port(),
            dst_addr,
            dst.port(),
        ))
    }

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
    /// The connection's windows, from its SYN and SYN-ACK and the sampled packets, so that
    /// only a FIN or RST the real ends could have sent marks it closing.
    pub windows: TcpWindows,
}

/// How far a flow's FIN or RST may stray beyond its windows: they move only with the
/// sampled packets (`refreshes`), about one per 64 KiB of progress, so a real FIN can be
/// that far ahead of them, more when samples are missed. 4 MiB covers sixty missed samples
/// and still leaves a blind forger a chance of one in a few hundred per frame, against a
/// flow whose worst case (marked closing early) costs nothing but its listing: its
/// packets pass regardless, the guard judges SYNs alone.
pub const FLOW_WINDOW_SLACK: u32 = 1 << 22;

/// What a packet of a tracked flow did to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Nothing to write down.
    Nothing,
    /// An in-window FIN or RST: the flow is closing from now on.
    Closing,
    /// A FIN or RST outside the flow's windows: ignored.
    OutOfWindow,
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
    /// The flow its SYN opens, admitted at `now_ns`.
    pub fn admitted(now_ns: u64, syn: &Numbers) -> Self {
        Self {
            admitted_ns: now_ns,
            last_seen_ns: now_ns,
            closing_since_ns: 0,
            windows: TcpWindows::open(syn),
        }
    }

    /// A SYN-ACK, FIN, RST or sampled packet of the flow, sent by `from`.
    pub fn observe(&mut self, from: Side, segment: &Numbers, now_ns: u64) -> Observed {
        if segment.flags & TCP_SYN != 0 {
            if from == Side::Responder && !self.windows.is_open() {
                self.windows.accept(segment);
            }
            return Observed::Nothing;
        }
        if !self.windows.directions[from as usize].is_known() {
            // The SYN-ACK went by unseen (another path, or a loader started in between):
            // the responder's numbers are taken from its first packet seen.
            self.windows.pick_up(from, segment, 0);
        }
        let ends = segment.flags & (TCP_FIN | TCP_RST) != 0;
        if !self.windows.admit(from, segment, FLOW_WINDOW_SLACK) {
            return if ends {
                Observed::OutOfWindow
            } else {
                Observed::Nothing
            };
        }
        if ends {
            if self.closing_since_ns == 0 {
                self.closing_since_ns = now_ns;
                return Observed::Closing;
            }
        } else if self.needs_refresh(now_ns) {
            self.last_seen_ns = now_ns;
        }
        Observed::Nothing
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
    use crate::window::numbers;

    const S: u64 = 1_000_000_000;

    #[test]
    fn reversed_twice_is_identity() {
        let key = FlowKey::new(Family::V4, [1; 16], 1, [2; 16], 2);
        assert_eq!(key.reversed().src_port, 2);
        assert_eq!(key.reversed().dst, [1; 16]);
        assert_eq!(key.reversed().reversed(), key);
    }

    fn admitted(now_ns: u64) -> FlowValue {
        FlowValue::admitted(now_ns, &numbers(1000, 0, 0, TCP_SYN, 1000))
    }

    #[test]
    fn only_in_window_fin_and_rst_close_a_flow() {
        use crate::window::TCP_ACK;
        let mut flow = admitted(S);
        let syn_ack = numbers(5000, 1001, 0, TCP_SYN | TCP_ACK, 1000);
        assert_eq!(
            flow.observe(Side::Responder, &syn_ack, S),
            Observed::Nothing
        );
        assert!(flow.windows.is_open());
        let forged = numbers(5001 + (1 << 30), 0, 0, TCP_RST, 1000);
        assert_eq!(
            flow.observe(Side::Responder, &forged, 2 * S),
            Observed::OutOfWindow
        );
        let forged = numbers(1001 + (1 << 31), 0, 0, TCP_RST, 1000);
        assert_eq!(
            flow.observe(Side::Initiator, &forged, 2 * S),
            Observed::OutOfWindow
        );
        assert_eq!(flow.closing_since_ns, 0);
        // Data went by unsampled: a FIN 1 MiB ahead of the last sample is still the flow's.
        let fin = numbers(5001 + (1 << 20), 1001, 0, TCP_FIN | TCP_ACK, 1000);
        assert_eq!(
            flow.observe(Side::Responder, &fin, 3 * S),
            Observed::Closing
        );
        assert_eq!(flow.closing_since_ns, 3 * S);
    }

    #[test]
    fn open_flow_ends_only_when_idle() {
        let flow = admitted(100 * S);
        assert!(!flow.is_finished(399 * S, 300 * S));
        assert!(flow.is_finished(400 * S, 300 * S));
    }

    #[test]
    fn closing_flow_ends_after_grace() {
        let mut flow = admitted(100 * S);
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
        let flow = admitted(10 * S);
        assert!(!flow.needs_refresh(10 * S + S / 2));
        assert!(flow.needs_refresh(11 * S));
    }
}
