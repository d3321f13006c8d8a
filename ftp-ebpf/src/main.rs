//! ftp-tracker's kernel programs: on each interface's ingress the guard, as XDP or as a tc
//! program (the loader attaches whichever costs less there), and a tc program on its
//! egress; interfaces without an Ethernet header get tc programs of their own. All of them
//! scan FTP control segments in whichever direction they travel; the ingress ones also
//! guard the data ports. With `--tls-uprobes`, probes of the TLS library of the FTP
//! processes on the host and of the kernel's TCP send and receive read the plaintext of
//! TLS control connections (`tls`).
#![no_std]
#![no_main]
// BPF inline assembly, for the atomic add of `monitor` (built with RUSTC_BOOTSTRAP, as
// aya-ebpf itself needs).
#![feature(asm_experimental_arch)]

mod allow;
mod control;
mod events;
mod guard;
mod maps;
mod monitor;
mod nat;
mod packet;
mod rewrite;
mod share;
mod tls;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, tracepoint, uprobe, uretprobe, xdp},
    programs::{ProbeContext, RetProbeContext, TcContext, TracePointContext, XdpContext},
};
use ftp_ebpf_common::{
    contract::{LinkLayer, SYSCALL_FIRST_ARG_OFFSET},
    event::EventKind,
    flow::refreshes,
    parse::Sender,
    policy::PortClass,
    stats::Counter,
    tls::CallEnd,
};

use crate::{
    maps::{config, count, now_ns},
    packet::{Direction, Frame, Parsed, Segment},
};

#[xdp]
pub fn ftp_ingress(ctx: XdpContext) -> u32 {
    if inspect(&ctx, Direction::Ingress, LinkLayer::Ethernet) || monitor::spare() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// The same guard on tc ingress, for interfaces where XDP costs more than it saves: on a
/// veth, XDP (generic or native) runs before GRO, once per wire packet; tc runs after it.
#[classifier]
pub fn ftp_ingress_tc(ctx: TcContext) -> i32 {
    ingress_tc(&ctx, LinkLayer::Ethernet)
}

/// Egress only learns (announcements, outbound data connections); it never drops.
#[classifier]
pub fn ftp_egress(ctx: TcContext) -> i32 {
    egress(&ctx, LinkLayer::Ethernet)
}

/// `ftp_ingress_tc` for interfaces whose frames start at the IP header (tun, WireGuard,
/// PPP, raw-IP modems). A program of its own, so that the Ethernet programs carry no test of
/// the link kind, and loaded only when such an interface is guarded.
#[classifier]
pub fn ftp_ingress_tc_l3(ctx: TcContext) -> i32 {
    ingress_tc(&ctx, LinkLayer::Ip)
}

/// `ftp_egress` for the same interfaces.
#[classifier]
pub fn ftp_egress_l3(ctx: TcContext) -> i32 {
    egress(&ctx, LinkLayer::Ip)
}

/// `ftp_ingress_tc` for a `--nat-inside` interface of a NAT gateway: after the guard and
/// the scan, what a host behind it announced is rewritten (`rewrite::arriving`). A program
/// of its own, loaded only when such an interface is configured.
#[classifier]
pub fn ftp_ingress_nat(ctx: TcContext) -> i32 {
    let verdict = ingress_tc(&ctx, LinkLayer::Ethernet);
    rewrite::arriving(&ctx, verdict == TC_ACT_UNSPEC);
    verdict
}

/// `ftp_egress` for a `--nat-inside` interface: acknowledgements of rewritten bytes are
/// numbered back before the scan sees them (`rewrite::leaving`).
#[classifier]
pub fn ftp_egress_nat(ctx: TcContext) -> i32 {
    packet::linearize_headers(&ctx);
    rewrite::leaving(&ctx);
    egress(&ctx, LinkLayer::Ethernet)
}

/// The entry of `SSL_write`, `SSL_write_ex` or `gnutls_record_send`: (session, buffer,
/// length, ...).
#[uprobe]
pub fn tls_write(ctx: ProbeContext) -> u32 {
    if let (Some(session), Some(buf), Some(len)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    {
        let len = len.min(u64::from(u32::MAX)) as u32;
        tls::call(CallEnd::Writer, session, buf, len, 0);
    }
    0
}

/// The entry of `SSL_read`, `SSL_read_ex` or `gnutls_record_recv`: (session, buffer,
/// size, and for `SSL_read_ex` where the length read goes).
#[uprobe]
pub fn tls_read(ctx: ProbeContext) -> u32 {
    if let (Some(session), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        tls::call(
            CallEnd::Reader,
            session,
            buf,
            0,
            ctx.arg::<u64>(3).unwrap_or(0),
        );
    }
    0
}

/// The return of `SSL_read` or `gnutls_record_recv`: the length read.
#[uretprobe]
pub fn tls_read_done(ctx: RetProbeContext) -> u32 {
    tls::read_done(ctx.ret::<i64>());
    0
}

/// The return of `SSL_read_ex`: 1 when it read.
#[uretprobe]
pub fn tls_read_ex_done(ctx: RetProbeContext) -> u32 {
    tls::read_ex_done(ctx.ret::<i64>() & 0xffff_ffff);
    0
}

/// The entry of a write system call (`TLS_SEND_SYSCALLS`): `write(fd, ...)` and the like.
#[tracepoint]
pub fn tls_send(ctx: TracePointContext) -> u32 {
    // SAFETY: every syscall tracepoint's record has its first argument there.
    if let Ok(fd) = unsafe { ctx.read_at::<u64>(SYSCALL_FIRST_ARG_OFFSET) } {
        tls::socket(fd);
    }
    0
}

/// The entry of a read system call (`TLS_RECV_SYSCALLS`).
#[tracepoint]
pub fn tls_recv(ctx: TracePointContext) -> u32 {
    // SAFETY: as in `tls_send`.
    if let Ok(fd) = unsafe { ctx.read_at::<u64>(SYSCALL_FIRST_ARG_OFFSET) } {
        tls::socket(fd);
    }
    0
}

#[inline(always)]
fn ingress_tc(ctx: &TcContext, link: LinkLayer) -> i32 {
    packet::linearize_headers(ctx);
    if inspect(ctx, Direction::Ingress, link) || monitor::spare() {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}

#[inline(always)]
fn egress(ctx: &TcContext, link: LinkLayer) -> i32 {
    packet::linearize_headers(ctx);
    inspect(ctx, Direction::Egress, link);
    // Let the next program in the chain (or the default action) decide.
    TC_ACT_UNSPEC
}

/// Returns whether the packet may pass. The common cases (not TCP, TCP between ports that
/// are not ours, a packet of a tracked transfer) end after the header parse and two array
/// lookups; keys are built and hash maps consulted only for SYNs to guarded ports, SYN-ACK,
/// FIN and RST of tracked ones, a sample of tracked packets and control segments.
/// `link` is a constant in each entry point, so each program is built for its own link.
#[inline(always)]
fn inspect<F: Frame>(frame: &F, direction: Direction, link: LinkLayer) -> bool {
    let segment = match Segment::parse(frame, link) {
        Parsed::Tcp(segment) => segment,
        Parsed::Other => return true,
        Parsed::Malformed => {
            count(Counter::MalformedPackets);
            return true;
        }
        Parsed::Uninspectable => {
            if direction == Direction::Ingress {
                count(Counter::UninspectableDropped);
                return false;
            }
            return true;
        }
    };
    let (Some(to), Some(from)) = (maps::port(segment.dst_port), maps::port(segment.src_port))
    else {
        return true;
    };
    // SAFETY: array map values, valid for the program's run.
    let (to_class, from_class) = unsafe {
        (
            PortClass::from_u8((*to).class),
            PortClass::from_u8((*from).class),
        )
    };
    let sender = if to_class == PortClass::Control {
        Sender::Client
    } else if from_class == PortClass::Control {
        Sender::Server
    } else if to_class == PortClass::Guarded && segment.is_syn() {
        // SAFETY: as above.
        let port = unsafe { &*to };
        // One call for both: each call of a subprogram is verified again.
        if port.never_used() || !port.may_be_solicited(now_ns(), config().expect_timeout_ns) {
            return guard::refuse(frame, &segment, direction, EventKind::UnsolicitedDropped);
        }
        let Some(syn) = segment.flow(frame) else {
            return true;
        };
        if direction == Direction::Ingress && guard::spoofed(&syn) {
            return false;
        }
        return guard::new_connection(frame, &segment, &syn, to, direction);
    } else {
        let tracked_port = to_class == PortClass::Guarded || from_class == PortClass::Guarded;
        if tracked_port
            && (segment.ends_connection()
                || segment.is_syn_ack()
                || refreshes(segment.seq, segment.ack))
        {
            if let Some(flow) = segment.flow(frame) {
                if direction == Direction::Ingress
                    && segment.ends_connection()
                    && guard::spoofed(&flow)
                {
                    return false;
                }
                guard::touch(frame, &segment, &flow, direction);
            }
        }
        return true;
    };
    // Every control segment counts: its bytes, its handshake, its acknowledgements (which
    // move the windows the next segments are judged by), its end.
    let Some(flow) = segment.flow(frame) else {
        return true;
    };
    if direction == Direction::Ingress && guard::spoofed(&flow) {
        return false;
    }
    control::scan(frame, &segment, &flow, sender, direction)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
