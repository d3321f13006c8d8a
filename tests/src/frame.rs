//! Ethernet frames carrying IPv4 or IPv6 and TCP, as a NIC would hand them to XDP, and
//! control sessions that number their segments as TCP does.

use std::net::IpAddr;

/// The flags the programs judge, as the programs name them.
pub use ftp_ebpf_common::window::{TCP_ACK as ACK, TCP_FIN as FIN, TCP_RST as RST, TCP_SYN as SYN};
/// Push: the programs never look at it; frames carry it as stacks do on data.
pub const PSH: u8 = 0x08;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_DSTOPTS: u8 = 60;

#[derive(Clone, Copy, Debug)]
pub struct Tcp {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// The window field as sent (scaled by the receiver after the handshake).
    pub window: u16,
    /// A window scale option (with MSS, as SYNs carry them).
    pub window_scale: Option<u8>,
    /// A SACK-permitted option too (with a window scale only).
    pub sack_permitted: bool,
}

impl Tcp {
    pub fn new(
        src: impl Into<IpAddr>,
        src_port: u16,
        dst: impl Into<IpAddr>,
        dst_port: u16,
        flags: u8,
    ) -> Self {
        Self {
            src: src.into(),
            dst: dst.into(),
            src_port,
            dst_port,
            flags,
            seq: 1,
            ack: 0,
            window: 65535,
            window_scale: None,
            sack_permitted: false,
        }
    }

    pub fn seq(self, seq: u32) -> Self {
        Self { seq, ..self }
    }

    pub fn ack(self, ack: u32) -> Self {
        Self { ack, ..self }
    }

    pub fn window(self, window: u16) -> Self {
        Self { window, ..self }
    }

    pub fn window_scale(self, scale: u8) -> Self {
        Self {
            window_scale: Some(scale),
            ..self
        }
    }

    /// With the SACK-permitted option (and a window scale, which carries it here).
    pub fn sack_permitted(self) -> Self {
        Self {
            sack_permitted: true,
            ..self
        }
    }

    /// The TCP header and payload, with a valid checksum, so that a frame written onto a
    /// real link is one the stack accepts.
    pub fn segment(&self, payload: &[u8]) -> Vec<u8> {
        // MSS 1460, NOP, window scale: 8 bytes, as a SYN carries them; with SACK
        // permitted between them (and two NOPs more), 12.
        let options: &[u8] = match (self.window_scale, self.sack_permitted) {
            (Some(scale), false) => &[2, 4, 0x05, 0xb4, 1, 3, 3, scale],
            (Some(scale), true) => &[2, 4, 0x05, 0xb4, 4, 2, 1, 1, 1, 3, 3, scale],
            (None, _) => &[],
        };
        let header_len = 20 + options.len();
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&self.ack.to_be_bytes());
        tcp[12] = ((header_len / 4) as u8) << 4;
        tcp[13] = self.flags;
        tcp[14..16].copy_from_slice(&self.window.to_be_bytes());
        tcp.extend_from_slice(options);
        tcp.extend_from_slice(payload);
        let sum = words(&pseudo_header(self.src, self.dst, tcp.len())) + words(&tcp);
        tcp[16..18].copy_from_slice(&(!fold(sum)).to_be_bytes());
        tcp
    }

    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        self.frame_on(Macs::FIXED, payload)
    }

    /// The frame with real MAC addresses, to be written onto a link whose far end takes
    /// only frames addressed to it.
    pub fn frame_on(&self, macs: Macs, payload: &[u8]) -> Vec<u8> {
        ip_frame_on(
            macs,
            self.src,
            self.dst,
            IPPROTO_TCP,
            &self.segment(payload),
        )
    }
}

/// The Ethernet addresses of a frame. Programs run with `BPF_PROG_TEST_RUN` never look at
/// them ([`Macs::FIXED`]); a frame written onto a veth must carry its peer's address as
/// destination, or the peer's stack discards it as meant for another host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Macs {
    pub dst: [u8; 6],
    pub src: [u8; 6],
}

impl Macs {
    /// Two locally administered addresses, for frames that never reach a link.
    pub const FIXED: Self = Self {
        dst: [0x02, 0, 0, 0, 0, 1],
        src: [0x02, 0, 0, 0, 0, 2],
    };
}

/// An IP packet in an Ethernet frame; the addresses' family picks IPv4 or IPv6.
pub fn ip_frame(src: IpAddr, dst: IpAddr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    ip_frame_on(Macs::FIXED, src, dst, protocol, l4)
}

/// [`ip_frame`] with the given Ethernet addresses.
pub fn ip_frame_on(macs: Macs, src: IpAddr, dst: IpAddr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = protocol;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let sum: u32 = ip
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum();
            ip[10..12].copy_from_slice(&(!fold(sum)).to_be_bytes());
            [ethernet(macs, 0x0800), ip.to_vec(), l4.to_vec()].concat()
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            ip[6] = protocol;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            [ethernet(macs, 0x86dd), ip.to_vec(), l4.to_vec()].concat()
        }
        _ => panic!("mixed address families"),
    }
}

/// An IPv6 destination-options extension header (8 bytes, padding only) in front of
/// `next`'s bytes: `ip_frame(.., IPPROTO_DSTOPTS, &dest_options(IPPROTO_TCP, &segment))`.
pub fn dest_options(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut header = vec![next, 0, 1, 4, 0, 0, 0, 0];
    header.extend_from_slice(rest);
    header
}

/// An IPv4 first fragment (more fragments follow) carrying `l4`.
pub fn ipv4_first_fragment(src: IpAddr, dst: IpAddr, l4: &[u8]) -> Vec<u8> {
    let mut frame = ip_frame(src, dst, IPPROTO_TCP, l4);
    // Flags and offset: MF set, offset 0; the checksum is not checked on this path.
    frame[14 + 6] = 0x20;
    frame
}

/// 802.1ad (QinQ's outer tag) and 802.1Q, as a VLAN tag's first field names them.
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_8021Q: u16 = 0x8100;

/// An Ethernet frame with VLAN tags (protocol, VLAN id), outermost first, put between its
/// addresses and its type: `[(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)]` is a QinQ frame.
pub fn vlan_tagged(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    for &(protocol, id) in tags {
        tagged.extend_from_slice(&protocol.to_be_bytes());
        tagged.extend_from_slice(&id.to_be_bytes());
    }
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// The IP packet an Ethernet frame carries: what a layer-3 interface (tun, WireGuard)
/// carries, with no link header at all.
pub fn without_ethernet(frame: &[u8]) -> Vec<u8> {
    frame[14..].to_vec()
}

fn ethernet(macs: Macs, ether_type: u16) -> Vec<u8> {
    let mut frame = [macs.dst, macs.src].concat();
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

/// The TCP checksum's pseudo-header (RFC 793, RFC 8200 8.1).
fn pseudo_header(src: IpAddr, dst: IpAddr, tcp_len: usize) -> Vec<u8> {
    let mut header = match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => [src.octets(), dst.octets()].concat(),
        (IpAddr::V6(src), IpAddr::V6(dst)) => [src.octets(), dst.octets()].concat(),
        _ => panic!("mixed address families"),
    };
    header.extend_from_slice(&(tcp_len as u32).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, IPPROTO_TCP]);
    header
}

/// The sum of `bytes` as big-endian 16-bit words (an odd last byte padded with zero), for
/// a ones' complement checksum.
pub fn words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

/// Folds a sum of 16-bit words into 16 bits, ones' complement style (RFC 1071).
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Whether an Ethernet frame's IPv4 header checksum and TCP checksum hold, and its IPv4
/// total length is what it carries: what a receiver checks of a rewritten segment.
pub fn ipv4_tcp_checksums_hold(frame: &[u8]) -> bool {
    let ip = &frame[14..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total != ip.len() || fold(words(&ip[..header_len])) != 0xffff {
        return false;
    }
    let tcp = &ip[header_len..total];
    let (src, dst): ([u8; 4], [u8; 4]) = (
        ip[12..16].try_into().unwrap(),
        ip[16..20].try_into().unwrap(),
    );
    let pseudo = pseudo_header(IpAddr::from(src), IpAddr::from(dst), tcp.len());
    fold(words(&pseudo) + words(tcp)) == 0xffff
}

/// Numbers nobody chose, as a forger who cannot see a connection's traffic must use:
/// xorshift64 (arbitrary, not unpredictable) from a seed that is printed, so that a failure
/// can be replayed with [`Random::seeded`].
pub struct Random(u64);

impl Random {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        println!("random seed {seed:#x}");
        Self::seeded(seed)
    }

    pub fn seeded(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    /// A distance from a real sequence number that no window of the tests' connections
    /// reaches, in either direction: at least 2^24 (16 MiB) away.
    pub fn far(&mut self) -> u32 {
        (1 << 24) + (self.next_u64() % ((1 << 32) - (2 << 24))) as u32
    }

    /// A client port (1024 and up) other than `taken`.
    pub fn port_except(&mut self, taken: u16) -> u16 {
        loop {
            let port = 1024 + (self.next_u64() % (65536 - 1024)) as u16;
            if port != taken {
                return port;
            }
        }
    }
}

impl Default for Random {
    fn default() -> Self {
        Self::new()
    }
}

/// One FTP control connection (or any TCP connection, given other ports: a data connection
/// is numbered the same way): each call gives the next segment of one direction,
/// numbered and acknowledged as TCP does, so the programs see a coherent connection. Its
/// `handshake` must be shown to the programs first: they believe only connections they saw
/// open. Both ends offer window scale 7 and announce windows of 512 << 7 bytes.
/// The window field `ControlSession`'s segments carry (scale 7: 64 KiB).
pub const WINDOW: u16 = 512;

pub struct ControlSession {
    pub client: IpAddr,
    pub server: IpAddr,
    pub client_port: u16,
    pub server_port: u16,
    client_seq: u32,
    server_seq: u32,
}

impl ControlSession {
    pub fn new(client: impl Into<IpAddr>, server: impl Into<IpAddr>) -> Self {
        Self {
            client: client.into(),
            server: server.into(),
            client_port: 40000,
            server_port: 21,
            client_seq: 1000,
            server_seq: 5000,
        }
    }

    /// The same connection numbered from other initial sequence numbers: `client_seq` and
    /// `server_seq` are each end's first byte (one past its SYN), as a new connection
    /// reusing the addresses and ports would pick them.
    pub fn numbered(self, client_seq: u32, server_seq: u32) -> Self {
        Self {
            client_seq,
            server_seq,
            ..self
        }
    }

    /// The client's SYN, the server's SYN-ACK and the client's ACK, which open the
    /// connection at the sequence numbers its segments then use.
    pub fn handshake(&self) -> [Vec<u8>; 3] {
        let (client, server) = (
            self.client_seq.wrapping_sub(1),
            self.server_seq.wrapping_sub(1),
        );
        [
            self.client_segment(SYN, client, 0)
                .window(64240)
                .window_scale(7)
                .frame(&[]),
            self.server_segment(SYN | ACK, server, self.client_seq)
                .window(65160)
                .window_scale(7)
                .frame(&[]),
            self.client_segment(ACK, self.client_seq, self.server_seq)
                .frame(&[]),
        ]
    }

    fn client_segment(&self, flags: u8, seq: u32, ack: u32) -> Tcp {
        Tcp::new(
            self.client,
            self.client_port,
            self.server,
            self.server_port,
            flags,
        )
        .seq(seq)
        .ack(ack)
        .window(WINDOW)
    }

    fn server_segment(&self, flags: u8, seq: u32, ack: u32) -> Tcp {
        Tcp::new(
            self.server,
            self.server_port,
            self.client,
            self.client_port,
            flags,
        )
        .seq(seq)
        .ack(ack)
        .window(WINDOW)
    }

    /// The client's next segment.
    pub fn command(&mut self, text: &[u8]) -> Vec<u8> {
        let frame = self.command_at(self.client_seq, text);
        self.client_seq += text.len() as u32;
        frame
    }

    /// The server's next segment.
    pub fn reply(&mut self, text: &[u8]) -> Vec<u8> {
        let frame = self.reply_at(self.server_seq, text);
        self.server_seq += text.len() as u32;
        frame
    }

    /// A client segment at an explicit sequence number (a retransmission, a gap).
    pub fn command_at(&self, seq: u32, text: &[u8]) -> Vec<u8> {
        self.client_segment(PSH | ACK, seq, self.server_seq)
            .frame(text)
    }

    pub fn reply_at(&self, seq: u32, text: &[u8]) -> Vec<u8> {
        self.server_segment(PSH | ACK, seq, self.client_seq)
            .frame(text)
    }

    pub fn client_seq(&self) -> u32 {
        self.client_seq
    }

    pub fn server_seq(&self) -> u32 {
        self.server_seq
    }

    /// The client closing the connection.
    pub fn client_fin(&self) -> Vec<u8> {
        self.client_segment(FIN | ACK, self.client_seq, self.server_seq)
            .frame(&[])
    }

    /// The server closing the connection.
    pub fn server_fin(&self) -> Vec<u8> {
        self.server_segment(FIN | ACK, self.server_seq, self.client_seq)
            .frame(&[])
    }

    /// The server resetting the connection, at its own next sequence number.
    pub fn server_rst(&self) -> Vec<u8> {
        self.server_segment(RST | ACK, self.server_seq, self.client_seq)
            .frame(&[])
    }
}
