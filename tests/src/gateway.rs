//! The gateway lab: the client host and the server host joined through a third network
//! namespace, a Linux router doing NAT with netfilter as an office or home gateway does,
//! either with the kernel's FTP helper (`nf_conntrack_ftp` with `nf_nat_ftp`: the reference
//! for ftp-loader's NAT mode), without any helper, or with ftp-loader's NAT mode in its
//! place ([`Gateway::start_tracker`]).
//!
//! ```text
//!   inside host ── gw-in [ gateway ] gw-out ── outside host
//!   10.0.2.2       10.0.2.1    198.51.100.1    198.51.100.2
//!                              (PUBLIC)
//! ```
//!
//! Two placements: with [`Placement::ServerBehind`] the server is the inside host and the
//! client reaches it at [`PUBLIC`], whose port 21 (and, if the rules say so, the servers'
//! passive ports) the gateway forwards to it (DNAT), while what the server opens (active
//! data connections) leaves masqueraded as [`PUBLIC`]. With [`Placement::ClientsBehind`]
//! the client is the inside host, masqueraded as [`PUBLIC`], and the server is the outside
//! host, at a public address of its own.
//!
//! The inside network is private: the inside host's default route is the gateway, but the
//! outside host has no route to the inside network, so a connection to a private address
//! that an announcement named fails at once (network unreachable), where on the Internet
//! it would die unanswered at the first router. IPv6 is routed untranslated: the server
//! keeps the lab's 2001:db8::1 in 2001:db8::/64, the client has [`CLIENT_IP6`] in
//! 2001:db8:1::/64, the gateway is `::fe` in both and each host's default route.
//!
//! The gateway's namespace is the lab's `router_ns`, removed with the lab like the hosts'.
//! [`ControlCapture`] reads the control connection off one host's interface, as that host
//! received it: what an announcement said once the gateway was done with it.

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Result, ensure};

use crate::{
    frame::SYN,
    inject::PacketSocket,
    lab::{
        CLIENT_IF, Lab, PASSIVE_PORTS, SERVER_IF, SERVER_IP6, bring_up, default_loader_bin, netns,
        route_through, run, veth,
    },
};

/// The gateway's outside address: what its NAT shows the inside host as.
pub const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The outside host's address, on the gateway's outside network.
pub const OUTSIDE_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The inside host's private address.
pub const INSIDE_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The inside network, which the gateway masquerades.
const INSIDE_NET: &str = "10.0.2.0/24";
/// The gateway's address on the inside network.
const GATEWAY_INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// The client's IPv6 address, in a network of its own (the server keeps the lab's
/// [`SERVER_IP6`], in 2001:db8::/64): IPv6 crosses the gateway routed, as it is.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The gateway's IPv6 addresses on the server's and the client's networks.
const GATEWAY_SERVER_SIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
const GATEWAY_CLIENT_SIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
/// The gateway's interfaces: the outside one (with [`PUBLIC`]) and the inside one.
pub const OUTSIDE_IF: &str = "gw-out";
pub const INSIDE_IF: &str = "gw-in";

/// Which host is behind the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The server is the inside host, reached through port forwarding to [`PUBLIC`].
    ServerBehind,
    /// The client is the inside host, masqueraded as [`PUBLIC`].
    ClientsBehind,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::ServerBehind => "server behind the gateway",
            Self::ClientsBehind => "clients behind the gateway",
        })
    }
}

/// The gateway's netfilter rules besides its NAT (port 21 forwarded to a server behind it,
/// the inside network masqueraded), which every configuration has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Also forward the servers' passive ports ([`PASSIVE_PORTS`]) to a server behind the
    /// gateway, as admins do for servers behind NAT without a helper.
    pub forward_passive: bool,
    /// Assign the kernel's FTP helper to port 21. It is never assigned automatically:
    /// kernels since 6.0 attach helpers only by rule.
    pub helper: bool,
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let helper = if self.helper { "helper" } else { "none" };
        let ports = if self.forward_passive {
            "21+pasv"
        } else {
            "21"
        };
        f.pad(&format!("{helper}/{ports}"))
    }
}

/// The iptables rule that assigns the kernel's FTP helper to port 21's connections (kernels
/// since 6.0 attach helpers only by rule): the reference set-ups, here and in the bench.
pub const FTP_HELPER_RULE: &[&str] = &[
    "-t",
    "raw",
    "-A",
    "PREROUTING",
    "-p",
    "tcp",
    "--dport",
    "21",
    "-j",
    "CT",
    "--helper",
    "ftp",
];

/// A lab whose hosts are joined through a NAT gateway (see the module's documentation).
pub struct Gateway {
    pub lab: Lab,
    /// The gateway's network namespace.
    pub ns: String,
    pub placement: Placement,
}

impl Gateway {
    /// Builds the three hosts and their links, with the gateway's NAT and no helper; no
    /// server runs yet (start one with `Server::start(&mut gateway.lab)`: over IPv4 the
    /// client reaches it at [`Lab::server_addr`], through the gateway).
    pub fn new(tag: &str, placement: Placement) -> Result<Self> {
        let mut lab = Lab::unlinked(tag, &default_loader_bin())?;
        let ns = lab.add_namespace("gw")?;
        lab.router_ns = Some(ns.clone());
        let server = (lab.server_ns.clone(), SERVER_IF);
        let client = (lab.client_ns.clone(), CLIENT_IF);
        let (inside, outside) = match placement {
            Placement::ServerBehind => (&server, &client),
            Placement::ClientsBehind => (&client, &server),
        };
        veth((&inside.0, inside.1), (&ns, INSIDE_IF))?;
        veth((&outside.0, outside.1), (&ns, OUTSIDE_IF))?;
        // IPv6 addresses go with the hosts, whichever side each is on.
        let (server6, client6) = (format!("{SERVER_IP6}/64"), format!("{CLIENT_IP6}/64"));
        let (gateway_server6, gateway_client6) = (
            format!("{GATEWAY_SERVER_SIDE6}/64"),
            format!("{GATEWAY_CLIENT_SIDE6}/64"),
        );
        let (inside6, outside6, gateway_inside6, gateway_outside6) = match placement {
            Placement::ServerBehind => (server6, client6, gateway_server6, gateway_client6),
            Placement::ClientsBehind => (client6, server6, gateway_client6, gateway_server6),
        };
        bring_up(&inside.0, inside.1, &[format!("{INSIDE_HOST}/24"), inside6])?;
        bring_up(
            &outside.0,
            outside.1,
            &[format!("{OUTSIDE_HOST}/24"), outside6],
        )?;
        bring_up(
            &ns,
            INSIDE_IF,
            &[format!("{GATEWAY_INSIDE}/24"), gateway_inside6],
        )?;
        bring_up(&ns, OUTSIDE_IF, &[format!("{PUBLIC}/24"), gateway_outside6])?;
        // The inside host goes everywhere through the gateway; the outside host only over
        // IPv6 (see the module's documentation).
        let ipv6_gateway = |host: &str| {
            if *host == lab.server_ns {
                GATEWAY_SERVER_SIDE6
            } else {
                GATEWAY_CLIENT_SIDE6
            }
        };
        route_through(
            &ns,
            &[
                (&inside.0, "-4", GATEWAY_INSIDE.to_string()),
                (&inside.0, "-6", ipv6_gateway(&inside.0).to_string()),
                (&outside.0, "-6", ipv6_gateway(&outside.0).to_string()),
            ],
        )?;
        (lab.server_own_v4, lab.server_v4) = match placement {
            Placement::ServerBehind => (INSIDE_HOST, PUBLIC),
            Placement::ClientsBehind => (OUTSIDE_HOST, OUTSIDE_HOST),
        };
        let gateway = Self { lab, ns, placement };
        gateway.set_rules(Rules {
            forward_passive: false,
            helper: false,
        })?;
        Ok(gateway)
    }

    /// Replaces the gateway's netfilter rules and forgets every connection it tracked, so
    /// that nothing an earlier configuration set up (a NAT binding, an expectation) serves
    /// the next transfer.
    pub fn set_rules(&self, rules: Rules) -> Result<()> {
        ensure!(
            !rules.forward_passive || self.placement == Placement::ServerBehind,
            "only a server behind the gateway has passive ports to forward"
        );
        let iptables = |args: &[&str]| run(netns(&self.ns, "iptables").args(args));
        for table in ["nat", "raw"] {
            iptables(&["-t", table, "-F"])?;
        }
        run(netns(&self.ns, "ip6tables").args(["-t", "raw", "-F"]))?;
        let masquerade = [
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            INSIDE_NET,
            "-o",
            OUTSIDE_IF,
            "-j",
            "MASQUERADE",
        ];
        iptables(&masquerade)?;
        if self.placement == Placement::ServerBehind {
            let (low, high) = PASSIVE_PORTS;
            let passive = format!("{low}:{high}");
            let mut ports = vec!["21"];
            if rules.forward_passive {
                ports.push(&passive);
            }
            let (public, inside) = (PUBLIC.to_string(), INSIDE_HOST.to_string());
            for port in ports {
                iptables(&[
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-i",
                    OUTSIDE_IF,
                    "-d",
                    &public,
                    "-p",
                    "tcp",
                    "--dport",
                    port,
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &inside,
                ])?;
            }
        }
        if rules.helper {
            // As the kernel's documentation says to since automatic assignment went: the
            // helper is attached by rule to each new control connection, from either side.
            for program in ["iptables", "ip6tables"] {
                run(netns(&self.ns, program).args(FTP_HELPER_RULE))?;
            }
        }
        run(netns(&self.ns, "conntrack").args(["-F"]))?;
        run(netns(&self.ns, "conntrack").args(["-F", "expect"]))?;
        Ok(())
    }

    /// Starts ftp-loader's NAT mode in the gateway, as an admin would run it there:
    /// `ftp-loader gw-out gw-in --nat-inside gw-in=PUBLIC`. Its admin commands (`stats`)
    /// then run in the gateway too.
    pub fn start_tracker(&mut self) -> Result<()> {
        let ns = self.ns.clone();
        self.lab.start_loader_in(
            &ns,
            &[OUTSIDE_IF, INSIDE_IF],
            &["--nat-inside", &format!("{INSIDE_IF}={PUBLIC}")],
        )
    }

    /// The gateway's tracked connections and expectations, as `conntrack -L` lists them:
    /// shown with a failure.
    pub fn conntrack(&self) -> Result<String> {
        let mut listing = String::new();
        for table in ["conntrack", "expect"] {
            let output = run(netns(&self.ns, "conntrack").args(["-L", table]))?;
            listing += &String::from_utf8_lossy(&output.stdout);
        }
        Ok(listing)
    }
}

/// The FTP control connections (port 21) that cross one host's interface, read off it with
/// an AF_PACKET socket opened before they start: what that host received and sent, after
/// every router on the way. The frames of the data connections are read too (and skipped):
/// the socket's buffer holds a whole transfer's.
pub struct ControlCapture {
    sniffer: PacketSocket,
}

/// One control connection as a capture saw it.
#[derive(Clone, Debug)]
pub struct Conversation {
    /// The client's end, as the captured interface saw it.
    pub client: SocketAddr,
    /// The server's end (port 21), as the captured interface saw it.
    pub server: SocketAddr,
    /// What the client sent, in sequence order.
    pub commands: String,
    /// What the server sent, in sequence order.
    pub replies: String,
}

/// The buffer a capture keeps frames in until it reads them: a 2 MiB transfer's frames
/// and their overhead, several times over.
const CAPTURE_BUFFER: libc::c_int = 64 << 20;

impl ControlCapture {
    /// Starts capturing on `interface` of the namespace `ns`.
    pub fn start(ns: &str, interface: &str) -> Result<Self> {
        let sniffer = PacketSocket::sniffer_in(ns, interface)?;
        sniffer.set_receive_buffer(CAPTURE_BUFFER)?;
        Ok(Self { sniffer })
    }

    /// Starts capturing what the client receives.
    pub fn client(lab: &Lab) -> Result<Self> {
        Self::start(&lab.client_ns, CLIENT_IF)
    }

    /// Starts capturing what the server receives.
    pub fn server(lab: &Lab) -> Result<Self> {
        Self::start(&lab.server_ns, SERVER_IF)
    }

    /// The control connections seen since the capture started (or since the last call),
    /// in the order they started, each direction reassembled by sequence number: a
    /// retransmission counts once, and bytes never seen show as `[gap]`.
    pub fn conversations(&self) -> Result<Vec<Conversation>> {
        let mut streams: Vec<((SocketAddr, SocketAddr), [Stream; 2])> = Vec::new();
        for (src, dst, segment, payload) in self.sniffer.segments_with_payload()? {
            let (key, direction) = match (src.port(), dst.port()) {
                (_, 21) => ((src, dst), 0),
                (21, _) => ((dst, src), 1),
                _ => continue,
            };
            let index = match streams.iter().position(|(k, _)| *k == key) {
                Some(index) => index,
                None => {
                    streams.push((key, Default::default()));
                    streams.len() - 1
                }
            };
            let stream = &mut streams[index].1[direction];
            if segment.flags & SYN != 0 {
                stream.start = Some(segment.seq.wrapping_add(1));
            }
            if !payload.is_empty() {
                stream.pieces.push((segment.seq, payload));
            }
        }
        Ok(streams
            .into_iter()
            .map(|((client, server), [commands, replies])| Conversation {
                client,
                server,
                commands: commands.text(),
                replies: replies.text(),
            })
            .collect())
    }
}

/// One direction of a captured connection.
#[derive(Default)]
struct Stream {
    /// The sequence number of the first byte, if the SYN was seen.
    start: Option<u32>,
    pieces: Vec<(u32, Vec<u8>)>,
}

impl Stream {
    fn text(&self) -> String {
        // Without the SYN, the earliest byte seen starts the stream; sequence numbers wrap,
        // so offsets from it are what is ordered.
        let Some(start) = self.start.or_else(|| {
            let first = self.pieces.first()?.0;
            self.pieces
                .iter()
                .map(|(seq, _)| *seq)
                .min_by_key(|seq| seq.wrapping_sub(first) as i32)
        }) else {
            return String::new();
        };
        let pieces: BTreeMap<u32, &[u8]> = self
            .pieces
            .iter()
            .rev()
            .map(|(seq, bytes)| (seq.wrapping_sub(start), &bytes[..]))
            .collect();
        let mut text = Vec::new();
        let mut next = 0u32;
        for (offset, bytes) in pieces {
            let end = offset + bytes.len() as u32;
            if end <= next {
                // Seen already (a retransmission may also overlap the next piece).
                continue;
            }
            if offset > next {
                text.extend_from_slice(b"[gap]");
                next = offset;
            }
            text.extend_from_slice(&bytes[(next - offset) as usize..]);
            next = end;
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

impl Conversation {
    /// The first line of `text` (the commands or the replies) that starts with `prefix`.
    pub fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines()
            .map(|line| line.trim_end_matches('\r'))
            .find(|line| line.starts_with(prefix))
    }

    /// The address (as text) the first announcement of this kind names: a `227` reply's,
    /// a `PORT` or `EPRT` command's. None if there is none, or it names no address.
    pub fn announced(&self, command: &str) -> Option<String> {
        match command {
            "PASV" => numbers_address(Self::line(&self.replies, "227 ")?.get(4..)?),
            "PORT" => numbers_address(Self::line(&self.commands, "PORT ")?.get(5..)?),
            "EPRT" => {
                // EPRT |1|10.0.2.2|40000|: the delimiter is the first character.
                let argument = Self::line(&self.commands, "EPRT ")?.get(5..)?;
                let delimiter = argument.chars().next()?;
                Some(argument.split(delimiter).nth(2)?.to_owned())
            }
            _ => None,
        }
    }
}

/// The IPv4 address in the first four of the numbers of a `227` reply's text or a `PORT`
/// argument (`h1,h2,h3,h4,p1,p2`, wherever they start).
fn numbers_address(text: &str) -> Option<String> {
    let numbers: Vec<u8> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let octets: [u8; 4] = numbers.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reassembled_in_sequence_order() {
        let stream = Stream {
            start: Some(u32::MAX - 2),
            pieces: vec![
                ((u32::MAX - 2).wrapping_add(4), b"two ".to_vec()),
                (u32::MAX - 2, b"one ".to_vec()),
                // A retransmission, and a piece after a lost one.
                ((u32::MAX - 2).wrapping_add(4), b"two ".to_vec()),
                ((u32::MAX - 2).wrapping_add(12), b"four".to_vec()),
            ],
        };
        assert_eq!(stream.text(), "one two [gap]four");
        // Without the SYN, the earliest byte starts it.
        let stream = Stream {
            start: None,
            pieces: vec![(3, b"ef".to_vec()), (u32::MAX, b"abcdef".to_vec())],
        };
        assert_eq!(stream.text(), "abcdef");
    }

    #[test]
    fn announcements_are_read() {
        let conversation = Conversation {
            client: "198.51.100.2:40000".parse().unwrap(),
            server: "198.51.100.1:21".parse().unwrap(),
            commands: "USER anonymous\r\nPORT 10,0,2,2,156,64\r\nEPRT |1|10.0.2.2|40001|\r\n"
                .into(),
            replies: "220 hi\r\n227 Entering Passive Mode (198,51,100,1,39,16).\r\n".into(),
        };
        assert_eq!(conversation.announced("PASV").unwrap(), "198.51.100.1");
        assert_eq!(conversation.announced("PORT").unwrap(), "10.0.2.2");
        assert_eq!(conversation.announced("EPRT").unwrap(), "10.0.2.2");
        assert_eq!(conversation.announced("EPSV"), None);
        // pure-ftpd and vsftpd write 227 differently; both name the address first.
        assert_eq!(
            numbers_address("Entering Passive Mode (10,0,2,2,39,16)").unwrap(),
            "10.0.2.2"
        );
    }
}
