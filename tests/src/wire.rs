//! Raw access to one lab interface: every frame crossing it is read, and frames are written
//! onto it as if its host sent them, through its queueing discipline (so tc egress, where
//! ftp-loader scans and the kernel oracle's mirror copies, sees them as any other). The
//! differential tests inject forged segments into real control connections this way.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, ensure};

use crate::frame::{FIN, SYN};

pub struct Wire {
    fd: OwnedFd,
    ifindex: i32,
    /// Written into every frame sent: this host's MAC as source, the peer's as destination.
    macs: [u8; 12],
}

/// What the sequence numbers of one TCP segment say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload_len: u32,
}

impl Segment {
    /// One past the last sequence number the segment occupies.
    pub fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.payload_len)
            .wrapping_add(u32::from(self.flags & SYN != 0))
            .wrapping_add(u32::from(self.flags & FIN != 0))
    }
}

impl Wire {
    /// Opens `interface` of the current network namespace (call it inside `in_netns`);
    /// `mac` and `peer_mac` address the frames sent.
    pub fn open(interface: &str, mac: [u8; 6], peer_mac: [u8; 6]) -> Result<Self> {
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no interface {interface} here");
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                i32::from(all),
            )
        };
        ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_ll is valid; bind reads exactly its size.
        let rc = unsafe {
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = all;
            address.sll_ifindex = ifindex as i32;
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            rc == 0,
            "binding to {interface}: {}",
            std::io::Error::last_os_error()
        );
        let mut macs = [0; 12];
        macs[..6].copy_from_slice(&peer_mac);
        macs[6..].copy_from_slice(&mac);
        Ok(Self {
            fd,
            ifindex: ifindex as i32,
            macs,
        })
    }

    /// Sends `frame` (an Ethernet frame of `crate::frame`, whose MACs are replaced) out of
    /// the interface.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let mut frame = frame.to_vec();
        frame[..12].copy_from_slice(&self.macs);
        // SAFETY: the buffer outlives the call and its length is passed; no address.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        ensure!(
            sent == frame.len() as isize,
            "sending a frame on interface {}: {}",
            self.ifindex,
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// The TCP segments that crossed the interface since the last call, oldest first.
    pub fn segments(&self) -> Result<Vec<Segment>> {
        let mut segments = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: the buffer outlives the call and its length is passed.
            let len =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if len < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(segments);
                }
                return Err(error).context("reading frames");
            }
            segments.extend(parse(&buf[..len as usize]));
        }
    }
}

/// The TCP segment an Ethernet frame carries, if it carries one the plain way (no IPv6
/// extension headers, no fragments: all the lab sends).
fn parse(frame: &[u8]) -> Option<Segment> {
    let ip = frame.get(14..)?;
    let (src, dst, l4) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 if ip.len() >= 20 && ip[9] == crate::frame::IPPROTO_TCP => {
            let header = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let src = IpAddr::from(Ipv4Addr::from(<[u8; 4]>::try_from(&ip[12..16]).ok()?));
            let dst = IpAddr::from(Ipv4Addr::from(<[u8; 4]>::try_from(&ip[16..20]).ok()?));
            (src, dst, ip.get(header..total)?)
        }
        0x86dd if ip.len() >= 40 && ip[6] == crate::frame::IPPROTO_TCP => {
            let total = 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let src = IpAddr::from(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?));
            let dst = IpAddr::from(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?));
            (src, dst, ip.get(40..total)?)
        }
        _ => return None,
    };
    let header = usize::from(l4.get(12)? >> 4) * 4;
    if l4.len() < header.max(20) {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
    Some(Segment {
        src: SocketAddr::from((src, u16::from_be_bytes([l4[0], l4[1]]))),
        dst: SocketAddr::from((dst, u16::from_be_bytes([l4[2], l4[3]]))),
        seq: word(4),
        ack: word(8),
        flags: l4[13],
        payload_len: (l4.len() - header) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{ACK, PSH, Tcp};

    #[test]
    fn segments_are_read_back_from_frames() {
        for (client, server) in [
            (IpAddr::from([192, 0, 2, 2]), IpAddr::from([192, 0, 2, 1])),
            (
                "2001:db8::2".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ),
        ] {
            let frame = Tcp::new(client, 40000, server, 21, PSH | ACK)
                .seq(7)
                .ack(9)
                .frame(b"PASV\r\n");
            let segment = parse(&frame).unwrap();
            assert_eq!(segment.src, SocketAddr::from((client, 40000)));
            assert_eq!(segment.dst, SocketAddr::from((server, 21)));
            assert_eq!((segment.seq, segment.ack, segment.payload_len), (7, 9, 6));
            assert_eq!(segment.end(), 13);
        }
    }
}
