//! Interfaces coming and going, from the kernel's rtnetlink link notifications: a deleted
//! interface takes its programs with it, and one created under the same name is not
//! guarded until the loader attaches to it again.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// A link notification about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created, or changed (up, down, renamed to this name).
    New(String),
    Deleted(String),
}

const RTMGRP_LINK: u32 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_IFNAME: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// A non-blocking rtnetlink socket subscribed to link notifications.
pub struct LinkWatch {
    socket: OwnedFd,
}

impl AsRawFd for LinkWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl LinkWatch {
    pub fn open() -> io::Result<Self> {
        let socket = rtnetlink_socket(libc::SOCK_NONBLOCK)?;
        // SAFETY: an all-zero sockaddr_nl is valid; it is filled in before use.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        address.nl_groups = RTMGRP_LINK;
        // SAFETY: binding our socket to a valid address of the right length.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&address as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { socket })
    }

    /// The notifications waiting; empty when there are none (WouldBlock).
    pub fn read(&self) -> io::Result<Vec<LinkEvent>> {
        let mut events = Vec::new();
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: reading into a buffer we own, of the given length.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                return match error.kind() {
                    io::ErrorKind::WouldBlock => Ok(events),
                    // Notifications were lost (ENOBUFS): the caller rechecks every
                    // interface it cares about, so report nothing rather than fail.
                    _ if error.raw_os_error() == Some(libc::ENOBUFS) => Ok(events),
                    _ => Err(error),
                };
            }
            events.extend(parse(&buffer[..n as usize]));
        }
    }
}

fn rtnetlink_socket(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call; the descriptor is owned right away.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Sends one rtnetlink request and waits for its acknowledgement.
pub fn request(kind: u16, body: &[u8]) -> io::Result<()> {
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLMSG_ERROR: u16 = 2;
    let socket = rtnetlink_socket(0)?;
    let mut message = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    message.extend(((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    message.extend(kind.to_ne_bytes());
    message.extend((NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    message.extend(1u32.to_ne_bytes()); // sequence number
    message.extend(0u32.to_ne_bytes()); // port id: the kernel's
    message.extend(body);
    // SAFETY: sending a buffer we own, of its length.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 4096];
    // SAFETY: reading into a buffer we own, of its length.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = &reply[..n as usize];
    // An acknowledgement is an error message whose code is 0.
    if reply.len() >= NLMSG_HDRLEN + 4 && u16::from_ne_bytes([reply[4], reply[5]]) == NLMSG_ERROR {
        let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        return if code == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(-code))
        };
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "rtnetlink sent no acknowledgement",
    ))
}

/// The link events in one datagram of netlink messages.
pub fn parse(mut data: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            break;
        }
        let body = &data[NLMSG_HDRLEN..len];
        if matches!(kind, RTM_NEWLINK | RTM_DELLINK) && body.len() >= IFINFOMSG_LEN {
            if let Some(name) = ifname(&body[IFINFOMSG_LEN..]) {
                events.push(if kind == RTM_NEWLINK {
                    LinkEvent::New(name)
                } else {
                    LinkEvent::Deleted(name)
                });
            }
        }
        data = &data[align(len).min(data.len())..];
    }
    events
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// IFLA_IFNAME among a message's attributes.
fn ifname(mut attributes: &[u8]) -> Option<String> {
    while attributes.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        if len < 4 || len > attributes.len() {
            return None;
        }
        if kind == IFLA_IFNAME {
            let value = &attributes[4..len];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        attributes = &attributes[align(len).min(attributes.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, name: &str) -> Vec<u8> {
        let mut attribute = Vec::new();
        let value_len = name.len() + 1;
        attribute.extend(((4 + value_len) as u16).to_ne_bytes());
        attribute.extend(IFLA_IFNAME.to_ne_bytes());
        attribute.extend(name.as_bytes());
        attribute.push(0);
        attribute.resize(align(attribute.len()), 0);
        let len = NLMSG_HDRLEN + IFINFOMSG_LEN + attribute.len();
        let mut message = Vec::new();
        message.extend((len as u32).to_ne_bytes());
        message.extend(kind.to_ne_bytes());
        message.extend([0u8; 10]);
        message.extend([0u8; IFINFOMSG_LEN]);
        message.extend(attribute);
        message
    }

    #[test]
    fn reads_names_of_new_and_deleted_links() {
        let mut datagram = message(RTM_DELLINK, "srv0");
        datagram.extend(message(RTM_NEWLINK, "eth12"));
        datagram.extend(message(24, "route")); // RTM_NEWROUTE: not a link
        assert_eq!(
            parse(&datagram),
            [
                LinkEvent::Deleted("srv0".into()),
                LinkEvent::New("eth12".into())
            ]
        );
        // A truncated message ends the parse without a panic.
        assert_eq!(parse(&datagram[..20]), []);
    }
}
