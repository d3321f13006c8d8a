//! ftp-tracker's kernel programs: an XDP program on each interface's ingress and a tc
//! program on its egress. Both scan FTP control segments in whichever direction they
//! travel; the XDP program also guards the data ports.
#![no_std]
#![no_main]

mod control;
mod guard;
mod maps;
mod packet;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use ftp_ebpf_common::{parse::Sender, policy::PortClass, stats::Counter};

use crate::{
    maps::count,
    packet::{Frame, Parsed, Segment},
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

#[xdp]
pub fn ftp_ingress(ctx: XdpContext) -> u32 {
    if inspect(&ctx, Direction::Ingress) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Egress only learns (announcements, outbound data connections); it never drops.
#[classifier]
pub fn ftp_egress(ctx: TcContext) -> i32 {
    packet::linearize_headers(&ctx);
    inspect(&ctx, Direction::Egress);
    // Let the next program in the chain (or the default action) decide.
    TC_ACT_UNSPEC
}

/// Returns whether the packet may pass.
#[inline(always)]
fn inspect<F: Frame>(frame: &F, direction: Direction) -> bool {
    let segment = match Segment::parse(frame) {
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
    let to = maps::port_class(segment.flow.dst_port);
    let from = maps::port_class(segment.flow.src_port);
    if to == PortClass::Control {
        control::scan(frame, &segment, Sender::Client, direction);
        true
    } else if from == PortClass::Control {
        control::scan(frame, &segment, Sender::Server, direction);
        true
    } else if to == PortClass::Guarded || from == PortClass::Guarded {
        guard::data_packet(&segment, to == PortClass::Guarded, direction)
    } else {
        true
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
