//! Frames written straight onto the lab's link, as an attacker on the client's side of it
//! would: an AF_PACKET socket bound to the client's veth sends hand-made frames (built
//! with [`crate::frame`]) that the server's end receives like any other, past every socket
//! and every check of the client's own stack. A second kind of AF_PACKET socket watches the
//! link, so that a test can place its forgeries relative to a real connection's sequence
//! numbers (an attacker would have to guess them; the tests cheat, to show that even a
//! good guess outside the window changes nothing).

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    frame::{Macs, Random},
    lab::{self, CLIENT_IF, Lab, SERVER_IF, in_netns},
};

/// The MAC address of `interface` in the namespace `ns`.
pub fn mac(ns: &str, interface: &str) -> Result<[u8; 6]> {
    let output =
        lab::run(Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", interface]))?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let text = links[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC address for {interface} in {ns}"))?;
    let bytes = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<Vec<_>, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("`{text}` is not a MAC address"))
}

/// The lab's veth pair's MAC addresses, which frames written onto it must carry.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub client_mac: [u8; 6],
    pub server_mac: [u8; 6],
}

impl Link {
    pub fn find(lab: &Lab) -> Result<Self> {
        Ok(Self {
            client_mac: mac(&lab.client_ns, CLIENT_IF)?,
            server_mac: mac(&lab.server_ns, SERVER_IF)?,
        })
    }

    /// The addresses of a frame the client's veth sends to the server's: whatever IP
    /// addresses it claims, it crosses the link as the client host's.
    pub fn to_server(&self) -> Macs {
        Macs {
            dst: self.server_mac,
            src: self.client_mac,
        }
    }

    /// The addresses of a frame the server's veth sends to the client's.
    pub fn to_client(&self) -> Macs {
        Macs {
            dst: self.client_mac,
            src: self.server_mac,
        }
    }
}

/// An AF_PACKET socket bound to one interface: [`PacketSocket::sender`] writes raw frames
/// out of it and receives nothing, [`PacketSocket::queued_in`] writes them through the
/// interface's tc egress as the host's own, [`PacketSocket::sniffer`] receives every frame
/// that crosses it, in both directions.
pub struct PacketSocket {
    fd: OwnedFd,
    interface: String,
}

impl PacketSocket {
    /// A socket that only sends. Protocol 0: no frame is ever queued to it.
    pub fn sender(interface: &str) -> Result<Self> {
        let socket = Self::bind(interface, 0)?;
        // Straight to the driver, past any queueing discipline: a frame goes out when it
        // is written, and a flood measures the guard, not a qdisc.
        socket.set_int(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)?;
        Ok(socket)
    }

    /// [`PacketSocket::sender`] opened in the namespace `ns`, where `interface` is; the
    /// socket stays bound to it whichever thread uses it.
    pub fn sender_in(ns: &str, interface: &str) -> Result<Self> {
        in_netns(ns, || Self::sender(interface))
    }

    /// A socket that only sends, through the interface's queueing discipline and so its tc
    /// egress hook, where ftp-loader scans what the host sends and the differential tests'
    /// mirror copies it for the kernel's helper: its frames are seen as the host's own.
    pub fn queued_in(ns: &str, interface: &str) -> Result<Self> {
        in_netns(ns, || Self::bind(interface, 0))
    }

    /// A socket that receives a copy of every frame `interface` sends or receives (from
    /// the moment it is opened), and sends nothing.
    pub fn sniffer_in(ns: &str, interface: &str) -> Result<Self> {
        in_netns(ns, || Self::bind(interface, libc::ETH_P_ALL as u16))
    }

    fn bind(interface: &str, protocol: u16) -> Result<Self> {
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(index != 0, "no interface {interface} here");
        let protocol = protocol.to_be();
        // SAFETY: plain socket creation; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let socket = Self {
            // SAFETY: fd is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            interface: interface.to_owned(),
        };
        // SAFETY: an all-zero sockaddr_ll is valid; bind reads exactly its size.
        let rc = unsafe {
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = protocol;
            address.sll_ifindex = index as i32;
            libc::bind(
                fd,
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            rc == 0,
            "binding to {interface}: {}",
            std::io::Error::last_os_error()
        );
        Ok(socket)
    }

    fn set_int(&self, level: i32, option: i32, value: libc::c_int) -> Result<()> {
        // SAFETY: an int option, passed with its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                option,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        ensure!(
            rc == 0,
            "setsockopt({level}, {option}) on {}: {}",
            self.interface,
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: the buffer outlives the call and is passed with its length.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        ensure!(
            sent == frame.len() as isize,
            "sending a frame of {} bytes on {}: {}",
            frame.len(),
            self.interface,
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Sends the frames with one `sendmmsg`; returns how many went out: none when the
    /// device's queue is full (try again).
    pub fn send_batch<F: AsMut<[u8]>>(&self, frames: &mut [F]) -> Result<u64> {
        let mut iovecs: Vec<libc::iovec> = frames
            .iter_mut()
            .map(|frame| {
                let frame = frame.as_mut();
                libc::iovec {
                    iov_base: frame.as_mut_ptr().cast(),
                    iov_len: frame.len(),
                }
            })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iovec| {
                // SAFETY: an all-zero mmsghdr is valid (no name, no control data).
                let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
                message.msg_hdr.msg_iov = iovec;
                message.msg_hdr.msg_iovlen = 1;
                message
            })
            .collect();
        // SAFETY: the messages point at iovecs and frames that outlive the call.
        let sent = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                messages.as_mut_ptr(),
                messages.len() as u32,
                0,
            )
        };
        if sent < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENOBUFS) {
                return Ok(0);
            }
            bail!("sendmmsg on {}: {error}", self.interface);
        }
        Ok(sent as u64)
    }

    /// Reads every frame queued so far (without waiting for more) and returns the last TCP
    /// segment among them that went from `from` to `to`. The frames cross the link before
    /// the receiving stack sees them: once a peer has read a reply, its segment is here.
    pub fn last_segment(&self, from: SocketAddr, to: SocketAddr) -> Result<Option<Segment>> {
        Ok(self
            .segments()?
            .into_iter()
            .rev()
            .find(|(src, dst, _)| (*src, *dst) == (from, to))
            .map(|(_, _, segment)| segment))
    }

    /// Reads every frame queued so far (without waiting for more): the TCP segments among
    /// them, oldest first, each with its source and destination.
    pub fn segments(&self) -> Result<Vec<(SocketAddr, SocketAddr, Segment)>> {
        Ok(self
            .segments_with_payload()?
            .into_iter()
            .map(|(src, dst, segment, _)| (src, dst, segment))
            .collect())
    }

    /// As `segments`, with each segment's payload.
    pub fn segments_with_payload(&self) -> Result<Vec<SegmentWithPayload>> {
        let mut segments = Vec::new();
        let mut buffer = vec![0u8; 65536];
        loop {
            // SAFETY: the buffer outlives the call and is passed with its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(segments);
                }
                bail!("receiving on {}: {error}", self.interface);
            }
            segments.extend(
                Segment::parse(&buffer[..n as usize])
                    .map(|(src, dst, segment, payload)| (src, dst, segment, payload.to_vec())),
            );
        }
    }

    /// Makes the socket's receive buffer `bytes` long (root may exceed `rmem_max`): a
    /// sniffer then keeps the frames of a whole transfer until it reads them.
    pub fn set_receive_buffer(&self, bytes: libc::c_int) -> Result<()> {
        self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
    }
}

/// A TCP segment read off the link: its source and destination, and its payload.
pub type SegmentWithPayload = (SocketAddr, SocketAddr, Segment, Vec<u8>);

/// What a TCP segment seen on the link says about its sender's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Payload bytes.
    pub len: u32,
}

impl Segment {
    /// The sequence number the sender's next byte will carry: SYN and FIN take one each.
    pub fn seq_end(&self) -> u32 {
        let control = u32::from(self.flags & (crate::frame::SYN | crate::frame::FIN) != 0);
        self.seq.wrapping_add(self.len).wrapping_add(control)
    }

    /// An Ethernet frame's addresses, TCP segment and payload, if it carries IPv4 or IPv6
    /// (without extension headers) and TCP.
    fn parse(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, Self, &[u8])> {
        let ether_type = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
        let ip = frame.get(14..)?;
        let (src, dst, tcp) = match ether_type {
            0x0800 => {
                let header_len = usize::from(ip.first()? & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes(ip.get(2..4)?.try_into().ok()?));
                if ip.get(9)? != &crate::frame::IPPROTO_TCP {
                    return None;
                }
                let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
                (
                    IpAddr::from(src),
                    IpAddr::from(dst),
                    ip.get(header_len..total)?,
                )
            }
            0x86dd => {
                let payload = usize::from(u16::from_be_bytes(ip.get(4..6)?.try_into().ok()?));
                if ip.get(6)? != &crate::frame::IPPROTO_TCP {
                    return None;
                }
                let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
                (
                    IpAddr::from(src),
                    IpAddr::from(dst),
                    ip.get(40..40 + payload)?,
                )
            }
            _ => return None,
        };
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(tcp.get(at..at + 4)?.try_into().ok()?))
        };
        let port = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(tcp.get(at..at + 2)?.try_into().ok()?))
        };
        let header_len = usize::from(tcp.get(12)? >> 4) * 4;
        let segment = Self {
            seq: word(4)?,
            ack: word(8)?,
            flags: *tcp.get(13)?,
            window: port(14)?,
            len: u32::try_from(tcp.len().checked_sub(header_len)?).ok()?,
        };
        Some((
            SocketAddr::new(src, port(0)?),
            SocketAddr::new(dst, port(2)?),
            segment,
            tcp.get(header_len..)?,
        ))
    }
}

/// An attacker on the client's side of the lab's link: writes frames onto it with
/// AF_PACKET, and reads what the server answers (or a real connection's sequence numbers)
/// off it.
pub struct OnLink {
    pub sender: PacketSocket,
    pub sniffer: PacketSocket,
    pub link: Link,
    pub random: Random,
}

impl OnLink {
    pub fn new(lab: &Lab) -> Result<Self> {
        Ok(Self {
            sender: PacketSocket::sender_in(&lab.client_ns, CLIENT_IF)?,
            sniffer: PacketSocket::sniffer_in(&lab.client_ns, CLIENT_IF)?,
            link: Link::find(lab)?,
            random: Random::new(),
        })
    }
}
