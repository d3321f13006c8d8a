//! Control connections open before the loader started. The programs believe a control
//! connection only from its opening handshake on, which they did not see for these; the
//! host's own sockets tell what the handshake settled (each end's window scale), so the
//! loader adopts the connections whose end is on this host. A gateway forwards connections
//! it holds no socket of: it adopts nothing, and their announcements go unread until they
//! open again.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, anyhow};
use aya::{Ebpf, maps::MapError};
use aya_obj::generated::BPF_NOEXIST;
use ftp_ebpf_common::{control::ControlState, flow::FlowKey};

use ftp_ebpf_common::contract::CONTROLS;

use crate::watch;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_INFO: u16 = 2;
const TCP_ESTABLISHED: u32 = 1;
/// `tcpi_options`: window scaling is in use (both ends announced it).
const TCPI_OPT_WSCALE: u8 = 4;
/// struct inet_diag_req_v2: family, protocol, extensions, pad, states, then the socket id
/// (all zero: any socket).
const REQUEST_LEN: usize = 56;
/// Where struct inet_diag_sockid starts in struct inet_diag_msg.
const SOCKID: usize = 4;
/// struct inet_diag_msg, up to its attributes.
const INET_DIAG_MSG_LEN: usize = 72;
/// In struct tcp_info: `tcpi_options`, and the byte of the bitfields `tcpi_snd_wscale:4,
/// tcpi_rcv_wscale:4`.
const TCPI_OPTIONS: usize = 5;
const TCPI_WSCALE: usize = 6;

/// An established TCP socket of this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Socket {
    local: SocketAddr,
    remote: SocketAddr,
    /// The window scale this end announced in the handshake, 0 without scaling.
    local_scale: u8,
    /// The window scale the peer announced, 0 without scaling.
    peer_scale: u8,
}

/// Adopts every control connection (one of `control_ports` at either end) that has a
/// socket on this host, unless the programs track it already (they saw it open, or a
/// previous loader adopted it): says how many were adopted. Run after the programs are
/// attached, so that a connection opening meanwhile is the programs' own from its SYN.
pub fn adopt(ebpf: &mut Ebpf, control_ports: &[u16]) -> Result<usize> {
    let sockets = established()?;
    let mut controls = CONTROLS.of_mut(ebpf)?;
    let mut adopted = 0;
    for socket in &sockets {
        let Some((key, state)) = adoption(socket, control_ports) else {
            continue;
        };
        match controls.insert(key, state, u64::from(BPF_NOEXIST)) {
            Ok(()) => adopted += 1,
            // Tracked already; or both ends are on this host, and the other end's socket
            // came first.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(error) => {
                return Err(anyhow!(error).context(format!(
                    "adopting the control connection {} -> {} ({CONTROLS}) failed",
                    socket.local, socket.remote
                )));
            }
        }
    }
    Ok(adopted)
}

/// The established TCP sockets of this network namespace, both families.
fn established() -> Result<Vec<Socket>> {
    let mut sockets = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let datagrams = watch::dump(
            libc::NETLINK_SOCK_DIAG,
            SOCK_DIAG_BY_FAMILY,
            &request(family),
        )
        .context("listing this host's established TCP connections (sock_diag)")?;
        sockets.extend(datagrams.iter().flat_map(|d| parse(d)));
    }
    Ok(sockets)
}

/// A dump request for the established TCP sockets of `family`, with their tcp_info.
fn request(family: libc::c_int) -> [u8; REQUEST_LEN] {
    let mut request = [0u8; REQUEST_LEN];
    request[0] = family as u8;
    request[1] = libc::IPPROTO_TCP as u8;
    request[2] = 1 << (INET_DIAG_INFO - 1);
    request[4..8].copy_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    request
}

/// The sockets in one datagram of sock_diag replies.
fn parse(datagram: &[u8]) -> Vec<Socket> {
    watch::messages(datagram)
        .filter(|(kind, _)| *kind == SOCK_DIAG_BY_FAMILY)
        .filter_map(|(_, body)| socket(body))
        .collect()
}

/// One struct inet_diag_msg and its attributes.
fn socket(body: &[u8]) -> Option<Socket> {
    let family = i32::from(*body.first()?);
    let id = body.get(SOCKID..SOCKID + 36)?;
    let address = |bytes: &[u8]| -> Option<IpAddr> {
        match family {
            libc::AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(&bytes[..4]).ok()?)),
            libc::AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
            _ => None,
        }
    };
    let port = |at: usize| u16::from_be_bytes([id[at], id[at + 1]]);
    let local = SocketAddr::new(address(&id[4..20])?, port(0));
    let remote = SocketAddr::new(address(&id[20..36])?, port(2));
    let info = watch::attributes(body.get(INET_DIAG_MSG_LEN..)?)
        .find(|(kind, _)| *kind == INET_DIAG_INFO)
        .map(|(_, info)| info);
    let (local_scale, peer_scale) = match info {
        Some(info) if info.len() > TCPI_WSCALE && info[TCPI_OPTIONS] & TCPI_OPT_WSCALE != 0 => {
            let (snd, rcv) = nibbles(info[TCPI_WSCALE]);
            // The local end sends with the scale its peer announced, and receives with its own.
            (rcv, snd)
        }
        _ => (0, 0),
    };
    Some(Socket {
        local,
        remote,
        local_scale,
        peer_scale,
    })
}

/// `tcpi_snd_wscale` and `tcpi_rcv_wscale`: C bitfields, allocated from the low bits on a
/// little-endian machine and from the high bits on a big-endian one.
fn nibbles(byte: u8) -> (u8, u8) {
    let (first, second) = if cfg!(target_endian = "little") {
        (byte & 0xf, byte >> 4)
    } else {
        (byte >> 4, byte & 0xf)
    };
    (first, second)
}

/// The CONTROLS entry of a control connection's socket: keyed client -> server, and each
/// direction's window scale the one its sender announced. None for other sockets.
fn adoption(socket: &Socket, control_ports: &[u16]) -> Option<(FlowKey, ControlState)> {
    let (client, server, client_scale, server_scale) =
        if control_ports.contains(&socket.local.port()) {
            (
                socket.remote,
                socket.local,
                socket.peer_scale,
                socket.local_scale,
            )
        } else if control_ports.contains(&socket.remote.port()) {
            (
                socket.local,
                socket.remote,
                socket.local_scale,
                socket.peer_scale,
            )
        } else {
            return None;
        };
    // A dual-stack socket shows IPv4 ends as IPv4-mapped IPv6 addresses: `from_sockets`
    // keys them as IPv4, as the programs see them on the wire.
    let key = FlowKey::from_sockets(client, server)?;
    Some((key, ControlState::adopted(client_scale, server_scale)))
}

#[cfg(test)]
mod tests {
    use ftp_ebpf_common::{
        addr::{FAMILY_IPV4, FAMILY_IPV6, Family, ipv4},
        window::Side,
    };

    use super::*;

    /// A SOCK_DIAG_BY_FAMILY message as the kernel sends it; `wscale` is (tcpi_options,
    /// the bitfield byte), None for no INET_DIAG_INFO.
    fn reply(local: SocketAddr, remote: SocketAddr, wscale: Option<(u8, u8)>) -> Vec<u8> {
        let octets = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => {
                let mut bytes = [0u8; 16];
                bytes[..4].copy_from_slice(&v4.octets());
                bytes
            }
            IpAddr::V6(v6) => v6.octets(),
        };
        let mut body = vec![0u8; INET_DIAG_MSG_LEN];
        body[0] = if local.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u8;
        body[1] = TCP_ESTABLISHED as u8;
        body[4..6].copy_from_slice(&local.port().to_be_bytes());
        body[6..8].copy_from_slice(&remote.port().to_be_bytes());
        body[8..24].copy_from_slice(&octets(local.ip()));
        body[24..40].copy_from_slice(&octets(remote.ip()));
        // INET_DIAG_MEMINFO first, as the kernel may put other attributes before the info.
        body.extend(20u16.to_ne_bytes());
        body.extend(1u16.to_ne_bytes());
        body.extend([0u8; 16]);
        if let Some((options, wscale)) = wscale {
            let mut info = [0u8; 232];
            info[0] = TCP_ESTABLISHED as u8;
            info[TCPI_OPTIONS] = options;
            info[TCPI_WSCALE] = wscale;
            body.extend(((4 + info.len()) as u16).to_ne_bytes());
            body.extend(INET_DIAG_INFO.to_ne_bytes());
            body.extend(info);
        }
        let mut message = Vec::new();
        message.extend(((16 + body.len()) as u32).to_ne_bytes());
        message.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        message.extend([0u8; 10]);
        message.extend(body);
        message
    }

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// The bitfield byte for tcpi_snd_wscale `snd` and tcpi_rcv_wscale `rcv`.
    fn wscale(snd: u8, rcv: u8) -> u8 {
        if cfg!(target_endian = "little") {
            rcv << 4 | snd
        } else {
            snd << 4 | rcv
        }
    }

    fn scales(state: &ControlState) -> (u8, u8) {
        let d = &state.windows.directions;
        (
            d[Side::Initiator as usize].scale,
            d[Side::Responder as usize].scale,
        )
    }

    #[test]
    fn reads_ends_and_window_scales_of_each_socket() {
        let mut datagram = reply(
            at("192.0.2.1:21"),
            at("198.51.100.7:40000"),
            Some((TCPI_OPT_WSCALE | 1, wscale(7, 9))),
        );
        // Scales noted but not in use (the peer announced none): both are 0.
        datagram.extend(reply(
            at("[2001:db8::1]:21"),
            at("[2001:db8::2]:40001"),
            Some((1, wscale(7, 9))),
        ));
        datagram.extend(reply(at("192.0.2.1:22"), at("192.0.2.9:50000"), None));
        datagram.extend([1, 2, 3]);
        assert_eq!(
            parse(&datagram),
            [
                Socket {
                    local: at("192.0.2.1:21"),
                    remote: at("198.51.100.7:40000"),
                    local_scale: 9,
                    peer_scale: 7
                },
                Socket {
                    local: at("[2001:db8::1]:21"),
                    remote: at("[2001:db8::2]:40001"),
                    local_scale: 0,
                    peer_scale: 0
                },
                Socket {
                    local: at("192.0.2.1:22"),
                    remote: at("192.0.2.9:50000"),
                    local_scale: 0,
                    peer_scale: 0
                },
            ]
        );
        assert!(parse(&datagram[..40]).is_empty(), "truncated");
    }

    #[test]
    fn a_server_socket_is_keyed_from_its_peer() {
        let socket = Socket {
            local: at("192.0.2.1:21"),
            remote: at("198.51.100.7:40000"),
            local_scale: 9,
            peer_scale: 7,
        };
        let (key, state) = adoption(&socket, &[2121, 21]).unwrap();
        assert_eq!(
            key,
            FlowKey::new(
                Family::V4,
                ipv4([198, 51, 100, 7]),
                40000,
                ipv4([192, 0, 2, 1]),
                21
            )
        );
        assert_eq!(state, ControlState::adopted(7, 9));
        assert_eq!(scales(&state), (7, 9), "client's, then server's");
        assert_eq!(adoption(&socket, &[22]), None);
    }

    #[test]
    fn a_client_socket_is_keyed_from_itself() {
        let socket = Socket {
            local: at("[2001:db8::2]:40001"),
            remote: at("[2001:db8::1]:21"),
            local_scale: 8,
            peer_scale: 0,
        };
        let (key, state) = adoption(&socket, &[21]).unwrap();
        assert_eq!(key.family, FAMILY_IPV6);
        assert_eq!((key.src_port, key.dst_port), (40001, 21));
        assert_eq!(
            key.src,
            "2001:db8::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(scales(&state), (8, 0));
    }

    #[test]
    fn a_dual_stack_socket_of_an_ipv4_client_is_an_ipv4_connection() {
        let datagram = reply(
            at("[::ffff:192.0.2.1]:21"),
            at("[::ffff:198.51.100.7]:40000"),
            Some((TCPI_OPT_WSCALE, wscale(7, 9))),
        );
        let sockets = parse(&datagram);
        let (key, _) = adoption(&sockets[0], &[21]).unwrap();
        assert_eq!(key.family, FAMILY_IPV4);
        assert_eq!(key.src, ipv4([198, 51, 100, 7]));
        assert_eq!(key.dst, ipv4([192, 0, 2, 1]));
    }

    #[test]
    fn the_request_asks_for_established_tcp_sockets_with_their_info() {
        let request = request(libc::AF_INET6);
        assert_eq!(request[..4], [libc::AF_INET6 as u8, 6, 2, 0]);
        assert_eq!(request[4..8], 2u32.to_ne_bytes(), "TCP_ESTABLISHED alone");
        assert!(request[8..].iter().all(|&b| b == 0), "any socket");
    }

    #[test]
    fn both_ends_of_a_connection_on_this_host_make_the_same_entry() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // A small window for the server, so that it announces scale 0 and the client (by
        // its default buffers) a larger one: which end announced which is then told apart.
        let clamp: libc::c_int = 4096;
        // SAFETY: setting an int option on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&listener),
                libc::IPPROTO_TCP,
                libc::TCP_WINDOW_CLAMP,
                (&clamp as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0);
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let ends = [client.local_addr().unwrap(), server.local_addr().unwrap()];
        let sockets: Vec<Socket> = established()
            .unwrap()
            .into_iter()
            .filter(|s| ends.contains(&s.local) && ends.contains(&s.remote))
            .collect();
        assert_eq!(sockets.len(), 2, "{sockets:?}");
        let client_end = adoption(&sockets[0], &[port]).unwrap();
        assert_eq!(client_end, adoption(&sockets[1], &[port]).unwrap());
        assert_eq!(client_end.0.dst_port, port);
        let (client_scale, server_scale) = scales(&client_end.1);
        assert!(
            client_scale > 0 && server_scale == 0,
            "{client_scale} {server_scale}"
        );
    }
}
