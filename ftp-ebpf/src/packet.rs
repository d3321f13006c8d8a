//! Header parsing with direct packet access, common to XDP and tc.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_loop, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};
use ftp_ebpf_common::{
    addr::{Addr, FAMILY_IPV4, FAMILY_IPV6},
    contract::{LinkLayer, SCRATCH_ENTRIES},
    flow::FlowKey,
    window::{MAX_TCP_OPTIONS, NO_WINDOW_SCALE, Numbers, OPTIONS_BUFFER, OptionsWalk},
};

/// Which way a packet goes past the program: the ingress guard (XDP or tc) or the egress
/// scanner. Per-CPU scratch space is kept per direction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

/// One TCP options walk per CPU and direction, for the same reason as the control
/// scanner's workspace.
#[map]
static OPTIONS: PerCpuArray<OptionsWalk> = PerCpuArray::with_max_entries(SCRATCH_ENTRIES, 0);

unsafe extern "C" fn walk_option(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer given in `window_scale`, to a map value
    // valid for the program's run.
    let walk = unsafe { &mut **ctx.cast::<*mut OptionsWalk>() };
    if walk.step(index as u32) { 0 } else { 1 }
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;

use ftp_ebpf_common::window::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// What a header parse reads directly when it can: Ethernet, two VLAN tags, IPv6 with a
/// few extension headers or IPv4 with options, TCP with options.
const MAX_HEADERS: u32 = 256;
/// Ethernet + IPv6 + TCP without options: less than this in the linear area means the
/// headers were not put there (a packet built in pieces); with more, they were (the stack
/// keeps all headers of a packet it built or aggregated linear, the payload in fragments).
const MIN_HEADERS: u32 = 14 + 40 + 20;

pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Copies `len` bytes of the packet at `offset` to `dst`; `len` must be provably
    /// non-zero and at most the buffer's size.
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> i64;
    /// The interface the packet arrives on (ingress) or leaves through (egress).
    fn ifindex(&self) -> u32;
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
    fn ifindex(&self) -> u32 {
        // SAFETY: the context the kernel gave the program.
        unsafe { (*self.ctx).ingress_ifindex }
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
    fn ifindex(&self) -> u32 {
        // SAFETY: the context the kernel gave the program; at tc, `ifindex` is the
        // device the packet is on, arriving or leaving.
        unsafe { (*self.skb.skb).ifindex }
    }
}

/// Pulls the headers into the linear area that direct packet access sees when they are not
/// there. Only then: a pull is a copy, and a GSO or GRO packet, whose payload lies in
/// fragments, would otherwise pay it on every packet of a bulk transfer.
#[inline(always)]
pub fn linearize_headers(ctx: &TcContext) {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < MIN_HEADERS && linear < ctx.len() {
        let wanted = if ctx.len() < MAX_HEADERS {
            ctx.len()
        } else {
            MAX_HEADERS
        };
        let _ = ctx.pull_data(wanted);
    }
}

// Header fields wider than a byte are read as u16/u32 in network order: one load each
// instead of a byte at a time (unaligned packet loads are fine for the verifier and JIT).

#[repr(C)]
struct EthHdr {
    _dst: [u8; 6],
    _src: [u8; 6],
    proto: u16,
}

#[repr(C)]
struct VlanHdr {
    _tci: u16,
    proto: u16,
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    _tos: u8,
    total_len: u16,
    _id: u16,
    frag: u16,
    _ttl: u8,
    proto: u8,
    _csum: u16,
    src: u32,
    dst: u32,
}

#[repr(C)]
struct Ipv6Hdr {
    _version_class_label: u32,
    payload_len: u16,
    next_header: u8,
    _hop_limit: u8,
    src: [u32; 4],
    dst: [u32; 4],
}

/// The common start of hop-by-hop, routing, destination-options and fragment headers.
#[repr(C)]
struct Ipv6ExtHdr {
    next_header: u8,
    len: u8,
    /// Fragment header: offset and flags.
    frag: u16,
}

#[repr(C)]
struct TcpHdr {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    data_offset: u8,
    flags: u8,
    window: u16,
    _csum: u16,
    _urgent: u16,
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

/// A TCP segment as far as the fast path needs it; `flow` reads its addresses when a
/// slower path needs the whole connection.
pub struct Segment {
    pub family: u8,
    /// Offset of the IP header.
    ip_offset: usize,
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// Bytes of TCP options, which end where the payload starts.
    pub options_len: u8,
    pub payload_offset: u32,
    pub payload_len: u32,
}

/// What a frame is, as far as the programs care.
pub enum Parsed {
    Tcp(Segment),
    /// Not TCP, not IP, or a later fragment (which cannot open a connection).
    Other,
    /// Truncated or inconsistent headers the stack will reject anyway: passed, counted.
    Malformed,
    /// A packet whose TCP flags cannot be seen although the stack would accept it: a first
    /// fragment too short to hold them, IPv6 extension headers deeper than we walk, or
    /// more VLAN tags than we read.
    Uninspectable,
}

/// VLAN tags read in the data: QinQ (802.1ad outer, 802.1Q inner) or 802.1Q twice.
const MAX_VLAN_TAGS: usize = 2;

/// IPv6 extension headers walked before giving up; real traffic carries one or two.
const MAX_IPV6_EXTENSIONS: usize = 4;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// An address as the maps store it, from its 32-bit words as they lie in the packet.
#[inline(always)]
fn addr(words: [u32; 4]) -> Addr {
    let mut addr = [0u8; 16];
    for (bytes, word) in addr.chunks_exact_mut(4).zip(words) {
        bytes.copy_from_slice(&word.to_ne_bytes());
    }
    addr
}

impl Segment {
    pub fn is_syn(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    pub fn is_syn_ack(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
    }

    pub fn ends_connection(&self) -> bool {
        self.flags & (TCP_FIN | TCP_RST) != 0
    }

    /// The numbers window tracking judges, without a SYN's window scale (`window_scale`).
    #[inline(always)]
    pub fn numbers(&self) -> Numbers {
        Numbers {
            seq: self.seq,
            ack: self.ack,
            payload_len: self.payload_len,
            flags: self.flags,
            window: self.window,
            window_scale: NO_WINDOW_SCALE,
        }
    }

    /// A SYN's window scale option, or `NO_WINDOW_SCALE`. Read only where a SYN opens
    /// something (a control connection, an admitted flow), not for every SYN: the walk
    /// takes a bpf_loop.
    #[inline(never)]
    pub fn window_scale(&self, frame: &impl Frame, direction: Direction) -> u8 {
        self.walk_options(frame, direction).0
    }

    /// Where a SYN's SACK-permitted option starts in its options, plus one; 0 without one.
    #[inline(never)]
    pub fn sack_permitted(&self, frame: &impl Frame, direction: Direction) -> u8 {
        self.walk_options(frame, direction).1
    }

    /// The window scale and the SACK-permitted position.
    #[inline(always)]
    fn walk_options(&self, frame: &impl Frame, direction: Direction) -> (u8, u8) {
        if self.options_len == 0 {
            return (NO_WINDOW_SCALE, 0);
        }
        let Some(walk) = OPTIONS.get_ptr_mut(direction as u32) else {
            return (NO_WINDOW_SCALE, 0);
        };
        // SAFETY: this CPU's slot for this direction; nothing else uses it meanwhile.
        let walk = unsafe { &mut *walk };
        // The verifier needs to see 1 <= len <= the buffer's size; the mask proves it
        // (the parse already bounds options to MAX_TCP_OPTIONS, but not in a way every
        // kernel's verifier follows).
        let len = ((u32::from(self.options_len) - 1) & (OPTIONS_BUFFER as u32 - 1)) + 1;
        let start = self.payload_offset - u32::from(self.options_len);
        if frame.load_bytes(start, walk.bytes.as_mut_ptr(), len) != 0 {
            return (NO_WINDOW_SCALE, 0);
        }
        walk.start(len);
        let mut context: *mut OptionsWalk = walk;
        // SAFETY: the callback only touches the map value the context points to.
        unsafe {
            bpf_loop(
                MAX_TCP_OPTIONS as u32,
                walk_option as *mut c_void,
                (&mut context as *mut *mut OptionsWalk).cast(),
                0,
            )
        };
        (walk.scale, walk.sack_permitted)
    }

    /// Offset of the IP header.
    pub fn ip_offset(&self) -> usize {
        self.ip_offset
    }

    /// The source address, as `addr::split` lays it out, copied by the load-bytes helper
    /// rather than read directly: a subprogram given the frame can use it, where direct
    /// packet access there fails the verifier once the compiler passes it the data
    /// pointers as numbers.
    #[inline(always)]
    pub fn load_source(&self, frame: &impl Frame) -> Option<Addr> {
        let mut addr = [0u8; 16];
        self.load_address(frame, 0, &mut addr).then_some(addr)
    }

    /// Copies the source (`which` 0) or destination (1) address into `addr`. Always 16
    /// bytes, whatever the family (an IPv4 address is followed by the rest of its header
    /// and the TCP header's first bytes, then cleared): a length that depends on the
    /// family is a number the verifier must know exactly, and on 6.1 that keeps every
    /// parse path (VLAN tags, IP options, IPv6 extension headers) apart to the end of the
    /// program.
    #[inline(always)]
    fn load_address(&self, frame: &impl Frame, which: usize, addr: &mut Addr) -> bool {
        let ipv4 = self.family == FAMILY_IPV4;
        let offset = if ipv4 {
            self.ip_offset + 12 + 4 * which
        } else {
            self.ip_offset + 8 + 16 * which
        };
        if frame.load_bytes(offset as u32, addr.as_mut_ptr(), 16) != 0 {
            return false;
        }
        if ipv4 {
            addr[4..].fill(0);
        }
        true
    }

    /// `flow`, written into `key` (ring memory, say) with the load-bytes helper, as
    /// `load_source` reads.
    #[inline(always)]
    pub fn load_flow(&self, frame: &impl Frame, key: &mut FlowKey) -> bool {
        key.family = self.family;
        key._pad = [0; 3];
        key.src_port = self.src_port;
        key.dst_port = self.dst_port;
        self.load_address(frame, 0, &mut key.src) && self.load_address(frame, 1, &mut key.dst)
    }

    /// The connection as this segment travels.
    #[inline(always)]
    pub fn flow(&self, frame: &impl Frame) -> Option<FlowKey> {
        let (src, dst) = if self.family == FAMILY_IPV4 {
            let ip = header::<Ipv4Hdr>(frame, self.ip_offset)?;
            ([ip.src, 0, 0, 0], [ip.dst, 0, 0, 0])
        } else {
            let ip = header::<Ipv6Hdr>(frame, self.ip_offset)?;
            (ip.src, ip.dst)
        };
        Some(FlowKey {
            family: self.family,
            _pad: [0; 3],
            src_port: self.src_port,
            dst_port: self.dst_port,
            src: addr(src),
            dst: addr(dst),
        })
    }

    #[inline(always)]
    pub fn parse(frame: &impl Frame, link: LinkLayer) -> Parsed {
        if link == LinkLayer::Ip {
            // No protocol field precedes the header: its version says, as it does to the
            // stack (ip_rcv and ipv6_rcv drop a packet whose version is not theirs). Read
            // through the shorter IP header, which either family's packet holds (a
            // one-byte bound becomes `data >= data_end`, which the verifier does not follow).
            let Some(ip) = header::<Ipv4Hdr>(frame, 0) else {
                return Parsed::Malformed;
            };
            return match ip.version_ihl >> 4 {
                4 => Self::ipv4(frame, 0),
                6 => Self::ipv6(frame, 0),
                _ => Parsed::Other,
            };
        }
        let (proto, offset) = match Self::ethernet(frame) {
            Ok(found) => found,
            Err(parsed) => return parsed,
        };
        match proto {
            ETH_P_IPV4 => Self::ipv4(frame, offset),
            ETH_P_IPV6 => Self::ipv6(frame, offset),
            // The stack strips tag after tag (priority tags, VLAN 0, even without a VLAN
            // device): a deeper stack could hide a SYN from the guard but not from it.
            ETH_P_8021Q | ETH_P_8021AD => Parsed::Uninspectable,
            _ => Parsed::Other,
        }
    }

    /// An Ethernet frame's IPv4 TCP segment, if it carries one (`Other` for anything
    /// else): for the NAT programs, which rewrite only IPv4, without the verifier paths of
    /// IPv6's extension headers.
    #[inline(always)]
    pub fn parse_ipv4(frame: &impl Frame) -> Parsed {
        match Self::ethernet(frame) {
            Ok((ETH_P_IPV4, offset)) => Self::ipv4(frame, offset),
            Ok(_) => Parsed::Other,
            Err(parsed) => parsed,
        }
    }

    /// The type and offset of what an Ethernet frame carries after its VLAN tags.
    #[inline(always)]
    fn ethernet(frame: &impl Frame) -> Result<(u16, usize), Parsed> {
        let Some(eth) = header::<EthHdr>(frame, 0) else {
            return Err(Parsed::Malformed);
        };
        let mut proto = u16::from_be(eth.proto);
        let mut offset = size_of::<EthHdr>();
        // A tag the NIC or the stack took off (vlan offload; at tc ingress the stack always
        // takes the outer one off first) lives in the skb's metadata, not in the data, so
        // the data holds at most the rest: reading it is right in both cases.
        for _ in 0..MAX_VLAN_TAGS {
            if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
                break;
            }
            let Some(vlan) = header::<VlanHdr>(frame, offset) else {
                return Err(Parsed::Malformed);
            };
            proto = u16::from_be(vlan.proto);
            offset += size_of::<VlanHdr>();
        }
        Ok((proto, offset))
    }

    #[inline(always)]
    fn ipv4(frame: &impl Frame, offset: usize) -> Parsed {
        let Some(ip) = header::<Ipv4Hdr>(frame, offset) else {
            return Parsed::Malformed;
        };
        let frag = u16::from_be(ip.frag);
        // Later fragments carry no TCP header; they cannot open a connection.
        if ip.proto != IPPROTO_TCP || frag & 0x1fff != 0 {
            return Parsed::Other;
        }
        let ip_header_len = usize::from(ip.version_ihl & 0x0f) * 4;
        if ip_header_len < size_of::<Ipv4Hdr>() {
            return Parsed::Malformed;
        }
        let Some(l4_len) = usize::from(u16::from_be(ip.total_len)).checked_sub(ip_header_len)
        else {
            return Parsed::Malformed;
        };
        let first_fragment = frag & 0x2000 != 0;
        Self::tcp(
            frame,
            FAMILY_IPV4,
            offset,
            offset + ip_header_len,
            l4_len,
            first_fragment,
        )
    }

    #[inline(always)]
    fn ipv6(frame: &impl Frame, offset: usize) -> Parsed {
        let Some(ip) = header::<Ipv6Hdr>(frame, offset) else {
            return Parsed::Malformed;
        };
        let mut next = ip.next_header;
        let mut l4_offset = offset + size_of::<Ipv6Hdr>();
        let mut l4_len = usize::from(u16::from_be(ip.payload_len));
        let mut first_fragment = false;
        // One pass more than the headers walked: it can only find TCP.
        for _ in 0..=MAX_IPV6_EXTENSIONS {
            let len = match next {
                IPPROTO_TCP => {
                    return Self::tcp(
                        frame,
                        FAMILY_IPV6,
                        offset,
                        l4_offset,
                        l4_len,
                        first_fragment,
                    );
                }
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {
                    let Some(ext) = header::<Ipv6ExtHdr>(frame, l4_offset) else {
                        return Parsed::Malformed;
                    };
                    if next == IPPROTO_FRAGMENT {
                        let frag = u16::from_be(ext.frag);
                        if frag & 0xfff8 != 0 {
                            return Parsed::Other;
                        }
                        first_fragment = frag & 1 != 0;
                        next = ext.next_header;
                        8
                    } else {
                        next = ext.next_header;
                        (usize::from(ext.len) + 1) * 8
                    }
                }
                _ => return Parsed::Other,
            };
            let Some(rest) = l4_len.checked_sub(len) else {
                return Parsed::Malformed;
            };
            l4_len = rest;
            l4_offset += len;
        }
        Parsed::Uninspectable
    }

    /// `l4_len`: bytes from the TCP header to the end of the IP payload, as the IP
    /// header says (the frame may be padded).
    #[inline(always)]
    fn tcp(
        frame: &impl Frame,
        family: u8,
        ip_offset: usize,
        offset: usize,
        l4_len: usize,
        first_fragment: bool,
    ) -> Parsed {
        let Some(tcp) = header::<TcpHdr>(frame, offset) else {
            // Reassembly would show the flags to the stack, but not to us.
            return if first_fragment {
                Parsed::Uninspectable
            } else {
                Parsed::Malformed
            };
        };
        let tcp_header_len = usize::from(tcp.data_offset >> 4) * 4;
        if tcp_header_len < size_of::<TcpHdr>() || l4_len < tcp_header_len {
            return Parsed::Malformed;
        }
        Parsed::Tcp(Self {
            family,
            ip_offset,
            src_port: u16::from_be(tcp.src_port),
            dst_port: u16::from_be(tcp.dst_port),
            flags: tcp.flags,
            seq: u32::from_be(tcp.seq),
            ack: u32::from_be(tcp.ack),
            window: u16::from_be(tcp.window),
            options_len: (tcp_header_len - size_of::<TcpHdr>()) as u8,
            payload_offset: (offset + tcp_header_len) as u32,
            payload_len: (l4_len - tcp_header_len) as u32,
        })
    }
}
