//! Interfaces and addresses coming and going, from the kernel's rtnetlink notifications: a
//! deleted interface takes its programs with it, and one created under the same name is not
//! guarded until the loader attaches to it again; the guard must know the host's addresses
//! as they are now. And the netlink plumbing the loader's other requests share.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// A notification the loader acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An interface was created, or changed (up, down, renamed to this name).
    New(String),
    /// An interface was deleted.
    Deleted(String),
    /// An address was added or removed, or notifications were lost: the host's addresses
    /// are to be read again.
    Addresses,
}

const RTMGRP_LINK: u32 = 1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const IFLA_IFNAME: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
/// Enough for any datagram the kernel sends: it sizes dump datagrams to at most 32 KiB.
const BUFFER: usize = 32 * 1024;

/// A non-blocking rtnetlink socket subscribed to link and address notifications.
pub struct Watch {
    socket: OwnedFd,
}

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Watch {
    pub fn open() -> io::Result<Self> {
        let socket = socket(libc::NETLINK_ROUTE, libc::SOCK_NONBLOCK)?;
        // SAFETY: an all-zero sockaddr_nl is valid; it is filled in before use.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        address.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
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
    pub fn read(&self) -> io::Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut buffer = vec![0u8; BUFFER];
        loop {
            match receive(&self.socket, &mut buffer) {
                Ok(n) => events.extend(parse(&buffer[..n])),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(events),
                // Notifications were lost (ENOBUFS): the addresses are read again; the
                // caller rechecks every interface it cares about when one comes back.
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                    events.push(Event::Addresses);
                    return Ok(events);
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// A netlink socket of `protocol` (NETLINK_ROUTE, NETLINK_SOCK_DIAG).
fn socket(protocol: libc::c_int, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call; the descriptor is owned right away.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            protocol,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn receive(socket: &OwnedFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into a buffer we own, of its length.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sends one request of `kind` with `flags` besides NLM_F_REQUEST.
fn send(socket: &OwnedFd, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
    let mut message = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    message.extend(((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    message.extend(kind.to_ne_bytes());
    message.extend((NLM_F_REQUEST | flags).to_ne_bytes());
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
    Ok(())
}

/// The errno an NLMSG_ERROR (or a dump's NLMSG_DONE) carries; Ok for 0, an acknowledgement.
fn status(body: &[u8]) -> io::Result<()> {
    match body
        .first_chunk::<4>()
        .map(|code| i32::from_ne_bytes(*code))
    {
        Some(code) if code < 0 => Err(io::Error::from_raw_os_error(-code)),
        _ => Ok(()),
    }
}

/// Sends one rtnetlink request and waits for its acknowledgement.
pub fn request(kind: u16, body: &[u8]) -> io::Result<()> {
    let socket = socket(libc::NETLINK_ROUTE, 0)?;
    send(&socket, kind, NLM_F_ACK, body)?;
    let mut reply = [0u8; 4096];
    let n = receive(&socket, &mut reply)?;
    match messages(&reply[..n]).next() {
        Some((NLMSG_ERROR, body)) => status(body),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "rtnetlink sent no acknowledgement",
        )),
    }
}

/// Sends a dump request of `kind` over a new socket of `protocol` and returns the
/// datagrams of the reply, up to the one holding NLMSG_DONE.
pub fn dump(protocol: libc::c_int, kind: u16, body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let socket = socket(protocol, 0)?;
    send(&socket, kind, NLM_F_DUMP, body)?;
    let mut datagrams = Vec::new();
    loop {
        let mut buffer = vec![0u8; BUFFER];
        let n = receive(&socket, &mut buffer)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buffer.truncate(n);
        let mut done = false;
        for (kind, body) in messages(&buffer) {
            match kind {
                NLMSG_ERROR => status(body)?,
                NLMSG_DONE => {
                    status(body)?;
                    done = true;
                }
                _ => {}
            }
        }
        datagrams.push(buffer);
        if done {
            return Ok(datagrams);
        }
    }
}

/// The messages in one datagram, as (type, body); a truncated message ends them.
pub fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(*data.first_chunk::<4>()?) as usize;
        if data.len() < NLMSG_HDRLEN || len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let body = &data[NLMSG_HDRLEN..len];
        data = &data[align(len).min(data.len())..];
        Some((kind, body))
    })
}

/// The attributes (rtattr, nlattr) after a message's fixed part, as (type, value); a
/// truncated one ends them.
pub fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(*data.first_chunk::<2>()?));
        if data.len() < 4 || len < 4 || len > data.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([data[2], data[3]]);
        let value = &data[4..len];
        data = &data[align(len).min(data.len())..];
        Some((kind, value))
    })
}

/// The events in one datagram of notifications.
pub fn parse(data: &[u8]) -> Vec<Event> {
    messages(data)
        .filter_map(|(kind, body)| match kind {
            RTM_NEWLINK | RTM_DELLINK => {
                let name = ifname(body.get(IFINFOMSG_LEN..)?)?;
                Some(if kind == RTM_NEWLINK {
                    Event::New(name)
                } else {
                    Event::Deleted(name)
                })
            }
            RTM_NEWADDR | RTM_DELADDR => Some(Event::Addresses),
            _ => None,
        })
        .collect()
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// IFLA_IFNAME among a message's attributes.
fn ifname(attributes: &[u8]) -> Option<String> {
    let (_, value) = self::attributes(attributes).find(|(kind, _)| *kind == IFLA_IFNAME)?;
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    Some(String::from_utf8_lossy(&value[..end]).into_owned())
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
        datagram.extend(message(RTM_DELADDR, "eth12"));
        assert_eq!(
            parse(&datagram),
            [
                Event::Deleted("srv0".into()),
                Event::New("eth12".into()),
                Event::Addresses
            ]
        );
        // A truncated message ends the parse without a panic.
        assert_eq!(parse(&datagram[..20]), []);
    }
}
