//! Header parsing with direct packet access, common to XDP and tc.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use ftp_ebpf_common::{addr::FAMILY_IPV4, flow::FlowKey, stats::Counter};

use crate::maps::count;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Ethernet, one VLAN tag, IPv4 with options, TCP with options: the most a header parse
/// reads directly.
const MAX_HEADERS: u32 = 14 + 4 + 60 + 60;

pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Copies `len` bytes of the packet at `offset` to `dst`; `len` must be provably
    /// non-zero and at most the buffer's size.
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> i64;
}

impl Frame for XdpContext {
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: dst points to at least len writable bytes (caller's contract).
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, dst.cast(), len) }
    }
}

impl Frame for TcContext {
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: dst points to at least len writable bytes (caller's contract).
        unsafe { bpf_skb_load_bytes(self.as_ptr().cast_const(), offset, dst.cast(), len) }
    }
}

/// Locally generated packets may carry their headers outside the linear area that direct
/// packet access sees; pull them in (a no-op for the usual linear skb).
#[inline(always)]
pub fn linearize_headers(ctx: &TcContext) {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let wanted = if ctx.len() < MAX_HEADERS {
        ctx.len()
    } else {
        MAX_HEADERS
    };
    if linear < wanted {
        let _ = ctx.pull_data(wanted);
    }
}

#[repr(C)]
struct EthHdr {
    _dst: [u8; 6],
    _src: [u8; 6],
    proto: [u8; 2],
}

#[repr(C)]
struct VlanHdr {
    _tci: [u8; 2],
    proto: [u8; 2],
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    _tos: u8,
    total_len: [u8; 2],
    _id: [u8; 2],
    frag: [u8; 2],
    _ttl: u8,
    proto: u8,
    _csum: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
struct TcpHdr {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    _seq: [u8; 4],
    _ack: [u8; 4],
    data_offset: u8,
    flags: u8,
    _window: [u8; 2],
    _csum: [u8; 2],
    _urgent: [u8; 2],
}

#[inline(always)]
fn header<T>(frame: &impl Frame, offset: usize) -> Option<&T> {
    let start = frame.data() + offset;
    if start + size_of::<T>() > frame.data_end() {
        return None;
    }
    // SAFETY: bounds checked against data_end just above.
    Some(unsafe { &*(start as *const T) })
}

/// A TCP segment: its connection as it travels, its flags and where its payload lies.
pub struct Segment {
    pub flow: FlowKey,
    pub flags: u8,
    pub payload_offset: u32,
    pub payload_len: u32,
}

impl Segment {
    pub fn is_syn(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    pub fn ends_connection(&self) -> bool {
        self.flags & (TCP_FIN | TCP_RST) != 0
    }

    /// `None` for anything but an IPv4 TCP segment carrying its TCP header; a truncated
    /// header is counted and passed.
    #[inline(always)]
    pub fn parse(frame: &impl Frame) -> Option<Self> {
        let eth: &EthHdr = header(frame, 0)?;
        let mut proto = u16::from_be_bytes(eth.proto);
        let mut offset = size_of::<EthHdr>();
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(vlan) = header::<VlanHdr>(frame, offset) else {
                count(Counter::MalformedPackets);
                return None;
            };
            proto = u16::from_be_bytes(vlan.proto);
            offset += size_of::<VlanHdr>();
        }
        if proto != ETH_P_IPV4 {
            return None;
        }
        let Some(ip) = header::<Ipv4Hdr>(frame, offset) else {
            count(Counter::MalformedPackets);
            return None;
        };
        // Later fragments carry no TCP header; they cannot open a connection.
        if ip.proto != IPPROTO_TCP || u16::from_be_bytes(ip.frag) & 0x1fff != 0 {
            return None;
        }
        let ip_header_len = usize::from(ip.version_ihl & 0x0f) * 4;
        let ip_total_len = usize::from(u16::from_be_bytes(ip.total_len));
        let (src, dst) = (ip.src, ip.dst);
        let tcp_offset = offset + ip_header_len;
        let tcp = match header::<TcpHdr>(frame, tcp_offset) {
            Some(tcp) if ip_header_len >= size_of::<Ipv4Hdr>() => tcp,
            _ => {
                count(Counter::MalformedPackets);
                return None;
            }
        };
        let tcp_header_len = usize::from(tcp.data_offset >> 4) * 4;
        let headers_len = ip_header_len + tcp_header_len;
        if tcp_header_len < size_of::<TcpHdr>() || ip_total_len < headers_len {
            count(Counter::MalformedPackets);
            return None;
        }
        let mut flow = FlowKey {
            family: FAMILY_IPV4,
            _pad: [0; 3],
            src_port: u16::from_be_bytes(tcp.src_port),
            dst_port: u16::from_be_bytes(tcp.dst_port),
            src: [0; 16],
            dst: [0; 16],
        };
        flow.src[..4].copy_from_slice(&src);
        flow.dst[..4].copy_from_slice(&dst);
        Some(Self {
            flow,
            flags: tcp.flags,
            payload_offset: (tcp_offset + tcp_header_len) as u32,
            payload_len: (ip_total_len - headers_len) as u32,
        })
    }
}
