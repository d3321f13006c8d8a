//! Verdicts of the real compiled programs, loaded through the kernel verifier with the
//! loader's own code, run on crafted frames with `BPF_PROG_TEST_RUN`; the real maps are
//! read back after each run.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    Ebpf, TestRunResult,
    programs::{TestRun, TestRunOptions},
};
use ftp_ebpf_common::{
    addr::AddrKey,
    contract::{
        self, CONTROLS, EGRESS_L3_PROGRAM, EGRESS_PROGRAM, EXPECTATIONS, FLOWS,
        INGRESS_TC_L3_PROGRAM, INGRESS_TC_PROGRAM, LOCAL_ADDRS, STATS, WOULD_DROP,
    },
    control::CLOSED,
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
    parse::Sender,
};
use ftp_lab::{
    frame::{
        ACK, ControlSession, ETH_P_8021AD, ETH_P_8021Q, FIN, IPPROTO_DSTOPTS, IPPROTO_TCP,
        IPPROTO_UDP, PSH, RST, Random, SYN, Tcp, dest_options, ip_frame, ipv4_first_fragment,
        vlan_tagged, without_ethernet,
    },
    lab::{Lab, SERVER_IF, default_loader_bin, in_netns, run},
    require_root,
};
use ftp_loader::ebpf::{self, Settings};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: u32 = -1i32 as u32;
const TC_ACT_SHOT: u32 = 2;

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

struct Programs {
    ebpf: Ebpf,
}

/// Where the programs run, which decides the hook each end's segments pass through.
#[derive(Clone, Copy, Debug)]
enum Host {
    /// The FTP server's host: the client's segments arrive (ingress), the server's leave
    /// (egress).
    Server,
    /// The FTP client's host: the other way round.
    Client,
    /// A router between them: both ends' segments arrive, each on its own interface.
    Gateway,
}

impl Programs {
    fn load(settings: Settings) -> Self {
        require_root();
        Self {
            ebpf: ebpf::load(&settings).expect("the programs load and verify"),
        }
    }

    fn new() -> Self {
        Self::load(Settings {
            allowed_ports: vec![8080],
            ..Settings::default()
        })
    }

    fn ingress(&self, frame: &[u8]) -> u32 {
        test_run(contract::ingress(&self.ebpf).unwrap(), frame)
    }

    fn egress(&self, frame: &[u8]) -> u32 {
        self.tc(EGRESS_PROGRAM, frame)
    }

    /// The tc ingress guard, what `auto` picks on virtual devices.
    fn ingress_tc(&self, frame: &[u8]) -> u32 {
        self.tc(INGRESS_TC_PROGRAM, frame)
    }

    fn tc(&self, program: &'static str, frame: &[u8]) -> u32 {
        test_run(contract::classifier(&self.ebpf, program).unwrap(), frame)
    }

    /// Runs a segment that `sender`'s end sent where `host` sees it; whether it passed.
    fn deliver(&self, host: Host, sender: Sender, frame: &[u8]) -> bool {
        let inbound = match (host, sender) {
            (Host::Server, Sender::Client)
            | (Host::Client, Sender::Server)
            | (Host::Gateway, _) => true,
            (Host::Server, Sender::Server) | (Host::Client, Sender::Client) => false,
        };
        if inbound {
            self.ingress(frame) == XDP_PASS
        } else {
            self.egress(frame) == TC_ACT_UNSPEC
        }
    }

    /// Shows the programs the handshake of `session` as `host` sees it, and gives the
    /// session back: they believe only control connections they saw open.
    fn open_at(&self, host: Host, session: ControlSession) -> ControlSession {
        let [syn, syn_ack, ack] = session.handshake();
        for (sender, frame) in [
            (Sender::Client, syn),
            (Sender::Server, syn_ack),
            (Sender::Client, ack),
        ] {
            assert!(
                self.deliver(host, sender, &frame),
                "a handshake segment of the {sender:?} was dropped"
            );
        }
        session
    }

    /// `open_at` on the FTP server's host, where most tests stand.
    fn open(&self, session: ControlSession) -> ControlSession {
        self.open_at(Host::Server, session)
    }

    /// Tells the programs this host's own addresses, as the loader keeps them.
    fn set_local_addrs(&mut self, addrs: &[IpAddr]) {
        let mut map = LOCAL_ADDRS.of_mut(&mut self.ebpf).unwrap();
        for &ip in addrs {
            map.insert(AddrKey::from_ip(ip), 1, 0).unwrap();
        }
    }

    fn expectations(&self) -> Vec<(ExpectKey, ExpectValue)> {
        let map = EXPECTATIONS.of(&self.ebpf).unwrap();
        map.iter().map(Result::unwrap).collect()
    }

    fn expected_keys(&self) -> Vec<ExpectKey> {
        let mut keys: Vec<ExpectKey> = self.expectations().into_iter().map(|(k, _)| k).collect();
        keys.sort_by_key(|k| k.port);
        keys
    }

    fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        let map = FLOWS.of(&self.ebpf).unwrap();
        map.iter().map(Result::unwrap).collect()
    }

    /// The control connections being followed. One that ended stays in the table, marked
    /// closed, only so that the rest of its closing is not taken for a stranger's: left out.
    fn controls(&self) -> Vec<FlowKey> {
        let map = CONTROLS.of(&self.ebpf).unwrap();
        map.iter()
            .map(Result::unwrap)
            .filter(|(_, state)| state.flags & CLOSED == 0)
            .map(|(key, _)| key)
            .collect()
    }

    /// Counters that are not zero.
    fn stats(&self) -> BTreeMap<&'static str, u64> {
        ftp_loader::stats::read(&STATS.of(&self.ebpf).unwrap())
            .unwrap()
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .map(|(c, v)| (c.name(), v))
            .collect()
    }
}

fn test_run<'a>(
    program: &impl TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
    frame: &'a [u8],
) -> u32 {
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..Default::default()
    };
    program.test_run(opts).expect("test run").return_value
}

fn expect_key(connector: impl Into<IpAddr>, listener: impl Into<IpAddr>, port: u16) -> ExpectKey {
    ExpectKey::from_ips(connector.into(), listener.into(), port).expect("one family")
}

fn flow_key(
    src: impl Into<IpAddr>,
    src_port: u16,
    dst: impl Into<IpAddr>,
    dst_port: u16,
) -> FlowKey {
    FlowKey::from_sockets((src.into(), src_port).into(), (dst.into(), dst_port).into())
        .expect("one family")
}

fn syn(src: impl Into<IpAddr>, src_port: u16, dst: impl Into<IpAddr>, dst_port: u16) -> Vec<u8> {
    Tcp::new(src, src_port, dst, dst_port, SYN).frame(&[])
}

fn session() -> ControlSession {
    ControlSession::new(CLIENT, SERVER)
}

fn session6() -> ControlSession {
    ControlSession::new(CLIENT6, SERVER6)
}

/// A passive data connection from the client's port 51000 to `port` of the server,
/// numbered as TCP does: its FIN and RST are judged by its window.
fn data_connection(port: u16) -> ControlSession {
    let mut data = ControlSession::new(CLIENT, SERVER).numbered(300_000, 7_000_000);
    data.client_port = 51000;
    data.server_port = port;
    data
}

#[test]
fn passive_reply_on_egress_creates_an_expectation() {
    let p = Programs::new();
    let mut s = p.open(session());
    assert_eq!(
        p.egress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n")),
        TC_ACT_UNSPEC,
        "egress never decides"
    );
    let expectations = p.expectations();
    assert_eq!(expectations.len(), 1);
    let (key, value) = expectations[0];
    assert_eq!(key, expect_key(CLIENT, SERVER, 10000));
    assert_eq!(
        value.control,
        flow_key(CLIENT, 40000, SERVER, 21),
        "client -> server"
    );
    let ttl = value.expires_ns.saturating_sub(ftp_loader::monotonic_ns());
    assert!(
        (299_000_000_000..=300_000_000_000).contains(&ttl),
        "expires in 300 s, not {ttl} ns"
    );
    assert_eq!(p.controls(), [flow_key(CLIENT, 40000, SERVER, 21)]);
    assert_eq!(
        p.stats(),
        BTreeMap::from([("control_packets", 1), ("expectations_created", 1)])
    );
}

#[test]
fn passive_reply_on_ingress_creates_an_expectation_for_a_client_host() {
    let p = Programs::new();
    // On a client host (or a gateway) the reply arrives on ingress.
    assert_eq!(
        p.ingress(
            &p.open_at(Host::Client, session())
                .reply(b"227 Entering Passive Mode (192,0,2,1,4,1)\r\n")
        ),
        XDP_PASS
    );
    assert_eq!(p.expected_keys(), [expect_key(CLIENT, SERVER, 1025)]);
}

#[test]
fn port_command_creates_an_expectation_for_the_server_to_connect() {
    let p = Programs::new();
    assert_eq!(
        p.ingress(
            &p.open(session())
                .command(b"TYPE I\r\nPORT 192,0,2,2,7,138\r\n")
        ),
        XDP_PASS
    );
    let expectations = p.expectations();
    assert_eq!(expectations.len(), 1);
    assert_eq!(expectations[0].0, expect_key(SERVER, CLIENT, 1930));
    assert_eq!(
        expectations[0].1.control,
        flow_key(CLIENT, 40000, SERVER, 21)
    );

    // The server's outbound connection to it consumes the expectation on egress.
    assert_eq!(p.egress(&syn(SERVER, 20, CLIENT, 1930)), TC_ACT_UNSPEC);
    assert!(p.expectations().is_empty());
    assert_eq!(p.flows()[0].0, flow_key(SERVER, 20, CLIENT, 1930));
    assert_eq!(p.stats()["expectations_matched"], 1);
}

#[test]
fn extended_passive_reply_expects_the_server_itself() {
    let p = Programs::new();
    p.egress(
        &p.open(session())
            .reply(b"229 Entering Extended Passive Mode (|||6446|)\r\n"),
    );
    assert_eq!(p.expected_keys(), [expect_key(CLIENT, SERVER, 6446)]);
    p.egress(
        &p.open(session6())
            .reply(b"229 Entering Extended Passive Mode (!!!6447!)\r\n"),
    );
    assert_eq!(
        p.expected_keys(),
        [
            expect_key(CLIENT, SERVER, 6446),
            expect_key(CLIENT6, SERVER6, 6447)
        ]
    );
}

#[test]
fn extended_port_commands_in_both_families() {
    let p = Programs::new();
    p.ingress(&p.open(session()).command(b"EPRT |1|192.0.2.2|6275|\r\n"));
    p.ingress(&p.open(session6()).command(b"eprt |2|2001:db8::2|6276|\r\n"));
    assert_eq!(
        p.expected_keys(),
        [
            expect_key(SERVER, CLIENT, 6275),
            expect_key(SERVER6, CLIENT6, 6276)
        ]
    );
}

#[test]
fn eprt_of_the_other_family_is_refused() {
    let p = Programs::new();
    p.ingress(&p.open(session()).command(b"EPRT |2|2001:db8::2|6275|\r\n"));
    p.ingress(&p.open(session6()).command(b"EPRT |1|192.0.2.2|6275|\r\n"));
    assert!(p.expectations().is_empty());
    assert_eq!(p.stats()["family_mismatch"], 2);
}

#[test]
fn ipv6_data_connections_are_guarded_like_ipv4() {
    let p = Programs::new();
    p.egress(
        &p.open(session6())
            .reply(b"229 Entering Extended Passive Mode (|||10000|)\r\n"),
    );
    assert_eq!(p.ingress(&syn(CLIENT6, 51000, SERVER6, 10001)), XDP_DROP);
    assert_eq!(p.ingress(&syn(CLIENT6, 51000, SERVER6, 10000)), XDP_PASS);
    assert_eq!(
        p.ingress(&syn(CLIENT6, 51000, SERVER6, 10000)),
        XDP_PASS,
        "retransmission"
    );
    assert_eq!(p.ingress(&syn(CLIENT6, 51001, SERVER6, 10000)), XDP_DROP);
    assert_eq!(p.flows()[0].0, flow_key(CLIENT6, 51000, SERVER6, 10000));
    // An extension header in front of TCP hides nothing.
    let hidden = ip_frame(
        CLIENT6.into(),
        SERVER6.into(),
        IPPROTO_DSTOPTS,
        &dest_options(
            IPPROTO_TCP,
            &Tcp::new(CLIENT6, 51002, SERVER6, 10002, SYN).segment(&[]),
        ),
    );
    assert_eq!(p.ingress(&hidden), XDP_DROP);
    assert_eq!(p.stats()["unsolicited_dropped"], 3);
}

#[test]
fn packets_that_hide_their_tcp_flags_are_dropped_inbound() {
    let p = Programs::new();
    // RFC 1858's tiny fragment: the first fragment ends before the TCP flags.
    let tcp = Tcp::new(CLIENT, 51000, SERVER, 10000, SYN).segment(&[]);
    let tiny = ipv4_first_fragment(CLIENT.into(), SERVER.into(), &tcp[..8]);
    assert_eq!(p.ingress(&tiny), XDP_DROP);
    // More IPv6 extension headers than the parser walks: five, the innermost naming TCP.
    let mut deep = dest_options(IPPROTO_TCP, &tcp);
    for _ in 0..4 {
        deep = dest_options(IPPROTO_DSTOPTS, &deep);
    }
    let deep = ip_frame(CLIENT6.into(), SERVER6.into(), IPPROTO_DSTOPTS, &deep);
    assert_eq!(p.ingress(&deep), XDP_DROP);
    assert_eq!(p.egress(&deep), TC_ACT_UNSPEC, "outbound is never dropped");
    assert_eq!(p.stats()["uninspectable_dropped"], 2);
}

#[test]
fn expected_syn_is_admitted_once_and_tracked() {
    let p = Programs::new();
    p.egress(
        &p.open(session())
            .reply(b"227 Entering Passive Mode (192,0,2,1,39,16)\r\n"),
    );

    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_PASS);
    assert!(
        p.expectations().is_empty(),
        "admission consumes the expectation"
    );
    let flows = p.flows();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].0, flow_key(CLIENT, 51000, SERVER, 10000));
    assert_eq!(flows[0].1.closing_since_ns, 0);

    assert_eq!(
        p.ingress(&syn(CLIENT, 51000, SERVER, 10000)),
        XDP_PASS,
        "a retransmitted SYN still passes"
    );
    assert_eq!(
        p.ingress(&syn(CLIENT, 51001, SERVER, 10000)),
        XDP_DROP,
        "a second connection to the consumed port is dropped"
    );
    assert_eq!(
        p.ingress(&syn(STRANGER, 51000, SERVER, 10000)),
        XDP_DROP,
        "so is one from another host"
    );
    assert_eq!(
        p.stats(),
        BTreeMap::from([
            ("control_packets", 1),
            ("expectations_created", 1),
            ("expectations_matched", 1),
            ("flows_tracked", 1),
            ("syn_retransmissions", 1),
            ("unsolicited_dropped", 2),
        ])
    );
}

#[test]
fn admitted_flow_is_marked_closing_by_fin_from_either_side() {
    let p = Programs::new();
    p.egress(&p.open(session()).reply(b"227 (192,0,2,1,39,17)\r\n"));
    // `open` asserts that the client's SYN passed.
    let mut d = p.open(data_connection(10001));
    assert_eq!(p.ingress(&d.command(b"data")), XDP_PASS);
    assert_eq!(p.flows()[0].1.closing_since_ns, 0);
    // The server closes: its FIN leaves through egress, in the reverse direction.
    assert_eq!(p.egress(&d.server_fin()), TC_ACT_UNSPEC);
    assert_ne!(p.flows()[0].1.closing_since_ns, 0);
    assert_eq!(p.stats()["flows_closing"], 1);
}

#[test]
fn unsolicited_syn_is_dropped() {
    let p = Programs::new();
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_DROP);
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 1024)), XDP_DROP);
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 65535)), XDP_DROP);
    assert_eq!(p.ingress(&syn(CLIENT6, 51000, SERVER6, 10000)), XDP_DROP);
    assert!(p.flows().is_empty());
    assert_eq!(p.stats(), BTreeMap::from([("unsolicited_dropped", 4)]));
}

#[test]
fn third_party_address_creates_nothing_unless_loose() {
    let p = Programs::new();
    let mut s = p.open(session());
    p.egress(&s.reply(b"227 Entering Passive Mode (198,51,100,9,39,16)\r\n"));
    p.ingress(&s.command(b"PORT 198,51,100,9,39,17\r\n"));
    p.ingress(&s.command(b"EPRT |1|198.51.100.9|10002|\r\n"));
    assert!(p.expectations().is_empty());
    assert_eq!(
        p.stats(),
        BTreeMap::from([("address_mismatch", 3), ("control_packets", 3)])
    );
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_DROP);

    let loose = Programs::load(Settings {
        loose: true,
        ..Settings::default()
    });
    loose.ingress(
        &loose
            .open(session())
            .command(b"PORT 198,51,100,9,39,17\r\n"),
    );
    assert_eq!(loose.expected_keys(), [expect_key(SERVER, STRANGER, 10001)]);
}

/// `--public-address`: a server behind 1:1 NAT announces its public address (a 227 set by
/// its masquerade option), a client host behind one announces its own (PORT, EPRT); each
/// is expected at the address its data connection's SYN reaches once translated. Only
/// this host's announcements: a peer naming this host's public address is refused.
#[test]
fn public_addresses_are_this_hosts_own_behind_one_to_one_nat() {
    let translated = Ipv4Addr::new(192, 0, 2, 7);
    let mut p = Programs::load(Settings {
        public_addresses: vec![
            "203.0.113.5".parse().unwrap(),
            format!("203.0.113.6={translated}").parse().unwrap(),
        ],
        max_expected: 2,
        ..Settings::default()
    });
    p.set_local_addrs(&[SERVER.into()]);
    let mut s = p.open(session());
    p.egress(&s.reply(b"227 Entering Passive Mode (203,0,113,5,39,16)\r\n"));
    p.egress(&s.reply(b"227 Entering Passive Mode (203,0,113,6,39,17)\r\n"));
    assert_eq!(
        p.expected_keys(),
        [
            expect_key(CLIENT, SERVER, 10000),
            expect_key(CLIENT, translated, 10001)
        ]
    );
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_PASS);
    // The client naming the server's public address asks for a bounce to it.
    p.ingress(&s.command(b"PORT 203,0,113,5,39,18\r\n"));
    p.ingress(&s.command(b"EPRT |1|203.0.113.5|10003|\r\n"));
    assert_eq!(p.stats()["address_mismatch"], 2);
    assert_eq!(p.expected_keys(), [expect_key(CLIENT, translated, 10001)]);

    let mut c = Programs::load(Settings {
        public_addresses: vec!["198.51.100.20".parse().unwrap()],
        max_expected: 2,
        ..Settings::default()
    });
    c.set_local_addrs(&[CLIENT.into()]);
    let mut s = c.open_at(Host::Client, session());
    c.egress(&s.command(b"PORT 198,51,100,20,39,16\r\n"));
    c.egress(&s.command(b"EPRT |1|198.51.100.20|10001|\r\n"));
    assert_eq!(
        c.expected_keys(),
        [
            expect_key(SERVER, CLIENT, 10000),
            expect_key(SERVER, CLIENT, 10001)
        ]
    );
    assert_eq!(c.ingress(&syn(SERVER, 20, CLIENT, 10000)), XDP_PASS);
    assert!(!c.stats().contains_key("address_mismatch"));
    // A reload without the mapping takes it away.
    ebpf::configure(
        &mut c.ebpf,
        &Settings {
            max_expected: 2,
            ..Settings::default()
        },
    )
    .unwrap();
    c.egress(&s.command(b"PORT 198,51,100,20,39,18\r\n"));
    assert_eq!(c.stats()["address_mismatch"], 1);
}

#[test]
fn privileged_data_ports_are_refused_by_default() {
    let p = Programs::new();
    let mut s = p.open(session());
    p.ingress(&s.command(b"PORT 192,0,2,2,0,25\r\n"));
    p.egress(&s.reply(b"229 Entering Extended Passive Mode (|||1023|)\r\n"));
    assert!(p.expectations().is_empty());
    assert_eq!(p.stats()["low_port_refused"], 2);

    let open = Programs::load(Settings {
        min_data_port: 1,
        ..Settings::default()
    });
    open.ingress(&open.open(session()).command(b"PORT 192,0,2,2,0,25\r\n"));
    assert_eq!(open.expected_keys(), [expect_key(SERVER, CLIENT, 25)]);
}

#[test]
fn malformed_lines_create_nothing_and_are_counted() {
    let p = Programs::new();
    let mut s = p.open(session());
    for line in [
        &b"PORT 192,0,2,2,256,22\r\n"[..],
        b"PORT 192,0,2,2,7\r\n",
        b"PORT 192,0,2,2,7,138,1\r\n",
        b"PORT 192,0,2,2,0,0\r\n",
        b"EPRT |3|192.0.2.2|6275|\r\n",
        b"EPRT |1|192.0.2.2.5|6275|\r\n",
        b"PORT 192,0\x00,2,2,7,138\r\n",
    ] {
        assert_eq!(p.ingress(&s.command(line)), XDP_PASS, "{line:?}");
    }
    p.egress(&s.reply(b"227 Entering Passive Mode\r\n"));
    p.egress(&s.reply(b"229 Entering Extended Passive Mode (|1|6446|)\r\n"));
    // Echoed mid-line: not a reply at all.
    p.egress(&s.reply(b"550 227 Entering Passive Mode (192,0,2,1,39,16)\r\n"));
    p.ingress(&s.command(b"CWD 227 Entering Passive Mode (192,0,2,1,39,16)\r\n"));
    assert!(p.expectations().is_empty());
    assert_eq!(
        p.stats(),
        BTreeMap::from([("control_packets", 11), ("parse_errors", 9)])
    );
}

/// FTP over TLS on the wire: once the server answers the client's AUTH with 234, nothing
/// either end sends is read (it is TLS records), even text that looks like a 227; the
/// connection is counted and marked, and a SYN between its ends that nothing announced is
/// counted as a TLS connection's. A 234 nobody asked for changes nothing.
#[test]
fn after_auth_tls_nothing_is_read_and_drops_are_counted_as_tls() {
    let p = Programs::new();
    let mut s = p.open(session());
    p.egress(&s.reply(b"234 Proceed\r\n"));
    p.egress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n"));
    assert_eq!(
        p.expected_keys(),
        [expect_key(CLIENT, SERVER, 10000)],
        "unasked 234"
    );

    let p = Programs::new();
    let mut s = p.open(session());
    p.ingress(&s.command(b"AUTH TLS\r\n"));
    p.egress(&s.reply(b"234 Proceed with negotiation.\r\n"));
    // The client's hello, then what a desynchronised reader could take for a 227.
    p.ingress(&s.command(&[22, 3, 1, 0, 4, 1, 0, 0, 0]));
    p.egress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n"));
    p.ingress(&s.command(b"PORT 192,0,2,2,39,17\r\n"));
    assert!(p.expectations().is_empty());
    let state = CONTROLS
        .of(&p.ebpf)
        .unwrap()
        .get(&flow_key(CLIENT, 40000, SERVER, 21), 0)
        .unwrap();
    assert!(state.is_tls());
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_DROP);
    assert_eq!(p.ingress(&syn(STRANGER, 51000, SERVER, 10001)), XDP_DROP);
    assert_eq!(
        p.stats(),
        BTreeMap::from([
            ("control_packets", 2),
            ("tls_control_connections", 1),
            ("tls_data_dropped", 1),
            ("unsolicited_dropped", 1),
        ])
    );
}

/// An implicit-FTPS port (`--tls-control-port`, 990 by default): TLS from the first byte.
#[test]
fn an_implicit_tls_port_is_tls_from_its_first_byte() {
    let p = Programs::new();
    let mut implicit = session();
    implicit.server_port = 990;
    let mut s = p.open(implicit);
    p.egress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n"));
    assert!(p.expectations().is_empty());
    assert_eq!(p.stats(), BTreeMap::from([("tls_control_connections", 1)]));
}

#[test]
fn bare_lf_ends_a_line() {
    let p = Programs::new();
    p.ingress(&p.open(session()).command(b"TYPE I\nPORT 192,0,2,2,7,138\n"));
    assert_eq!(p.expected_keys(), [expect_key(SERVER, CLIENT, 1930)]);
}

#[test]
fn a_line_split_across_segments_is_read_whole() {
    let p = Programs::new();
    let mut s = p.open(session());
    assert_eq!(
        p.ingress(&s.command(b"PORT 192,0,2,2,")),
        XDP_PASS,
        "never dropped"
    );
    assert!(p.expectations().is_empty());
    p.ingress(&s.command(b"7,138\r\n"));
    assert_eq!(p.expected_keys(), [expect_key(SERVER, CLIENT, 1930)]);
    // Another control connection: one holds one expectation at a time.
    let mut r = session();
    r.client_port = 40001;
    let mut r = p.open(r);
    p.egress(&r.reply(b"229 Entering Extended Pass"));
    p.egress(&r.reply(b"ive Mode (|||64"));
    p.egress(&r.reply(b"46|)\r\n"));
    assert_eq!(
        p.expected_keys(),
        [
            expect_key(SERVER, CLIENT, 1930),
            expect_key(CLIENT, SERVER, 6446)
        ]
    );
}

#[test]
fn a_retransmitted_segment_neither_adds_nor_renews() {
    let p = Programs::new();
    let mut s = p.open(session());
    let start = s.server_seq();
    let reply = b"227 Entering Passive Mode (192,0,2,1,39,16)\r\n";
    p.egress(&s.reply(reply));
    let first = p.expectations()[0].1.expires_ns;
    std::thread::sleep(std::time::Duration::from_millis(20));
    p.egress(&s.reply_at(start, reply));
    // Partly new: only the new part is read.
    let overlapping = [
        &reply[10..],
        b"227 (192,0,2,1,39,17)
",
    ]
    .concat();
    p.egress(&s.reply_at(start + 10, &overlapping));
    let expectations = p.expectations();
    assert_eq!(expectations.len(), 1, "the cap of one: the newest wins");
    assert_eq!(expectations[0].0, expect_key(CLIENT, SERVER, 10001));
    assert!(expectations[0].1.expires_ns > first);
    assert_eq!(p.stats()["control_already_read"], 1);
    assert_eq!(p.stats()["expectations_created"], 2);

    // Bytes after a gap: the line under way is given up, the next one is read.
    let q = Programs::new();
    let mut g = q.open(session());
    q.ingress(&g.command(b"NOOP\r\n"));
    let after_gap = g.client_seq() + 100;
    q.ingress(&g.command_at(after_gap, b"7,138\r\nPORT 192,0,2,2,7,139\r\n"));
    assert_eq!(q.expected_keys(), [expect_key(SERVER, CLIENT, 1931)]);
    assert_eq!(q.stats()["control_gaps"], 1);
}

#[test]
fn one_expectation_per_control_connection_by_default() {
    let p = Programs::new();
    let mut s = p.open(session());
    p.egress(&s.reply(b"227 (192,0,2,1,39,16)\r\n"));
    p.egress(&s.reply(b"227 (192,0,2,1,39,17)\r\n"));
    assert_eq!(p.expected_keys(), [expect_key(CLIENT, SERVER, 10001)]);
    assert_eq!(p.stats()["expectations_replaced"], 1);
    // Another control connection's expectations are its own.
    let mut other = p.open(ControlSession::new(STRANGER, SERVER));
    p.egress(&other.reply(b"227 (192,0,2,1,39,18)\r\n"));
    assert_eq!(p.expectations().len(), 2);

    let two = Programs::load(Settings {
        max_expected: 2,
        ..Settings::default()
    });
    let mut s = two.open(session());
    for port in [16u8, 17, 18] {
        two.egress(&s.reply(format!("227 (192,0,2,1,39,{port})\r\n").as_bytes()));
    }
    assert_eq!(
        two.expected_keys(),
        [
            expect_key(CLIENT, SERVER, 10001),
            expect_key(CLIENT, SERVER, 10002)
        ]
    );
}

#[test]
fn pipelined_announcements_beyond_four_are_not_read() {
    let p = Programs::load(Settings {
        max_expected: 4,
        ..Settings::default()
    });
    let lines: String = (0..6)
        .map(|i| format!("PORT 192,0,2,2,40,{i}\r\n"))
        .collect();
    p.ingress(&p.open(session()).command(lines.as_bytes()));
    assert_eq!(p.expectations().len(), 4);
    assert_eq!(p.stats()["scan_truncated"], 1);
}

#[test]
fn ending_a_control_connection_removes_what_it_announced() {
    let p = Programs::new();
    let mut s = p.open(session());
    p.egress(&s.reply(b"227 (192,0,2,1,39,16)\r\n"));
    let mut other = p.open(ControlSession::new(STRANGER, SERVER));
    p.egress(&other.reply(b"227 (192,0,2,1,39,17)\r\n"));
    assert_eq!(p.controls().len(), 2);
    p.ingress(&s.client_fin());
    assert_eq!(p.expected_keys(), [expect_key(STRANGER, SERVER, 10001)]);
    assert_eq!(p.controls(), [flow_key(STRANGER, 40000, SERVER, 21)]);
    p.egress(&other.server_rst());
    assert!(p.expectations().is_empty() && p.controls().is_empty());
    assert_eq!(p.stats()["expectations_removed"], 2);
}

#[test]
fn long_control_segments_are_scanned_up_to_the_window_and_counted() {
    let p = Programs::new();
    let mut text = "200-".to_owned() + &"x".repeat(1100) + "\r\n";
    text += "227 (192,0,2,1,39,16)\r\n";
    let mut s = p.open(session());
    p.egress(&s.reply(text.as_bytes()));
    assert!(
        p.expectations().is_empty(),
        "the line past the window is not read"
    );
    assert_eq!(p.stats()["scan_truncated"], 1);
    p.egress(&s.reply(b"227 (192,0,2,1,39,17)\r\n"));
    assert_eq!(
        p.expected_keys(),
        [expect_key(CLIENT, SERVER, 10001)],
        "the next segment is"
    );
    let mut long = b"227 Entering Passive Mode ".to_vec();
    long.extend(std::iter::repeat_n(b' ', 600));
    long.extend(b"(192,0,2,1,39,18)\r\n");
    p.egress(&s.reply(&long));
    assert_eq!(p.stats()["line_too_long"], 1);
}

#[test]
fn other_traffic_passes_untouched() {
    let p = Programs::new();
    let udp = ip_frame(
        CLIENT.into(),
        SERVER.into(),
        IPPROTO_UDP,
        &[0x9c, 0x40, 0x27, 0x10, 0, 8, 0, 0],
    );
    assert_eq!(p.ingress(&udp), XDP_PASS, "UDP");
    assert_eq!(
        p.ingress(&syn(CLIENT, 51000, SERVER, 80)),
        XDP_PASS,
        "below the range"
    );
    assert_eq!(
        p.ingress(&syn(CLIENT, 51000, SERVER, 8080)),
        XDP_PASS,
        "--allow-port"
    );
    assert_eq!(
        p.ingress(&syn(CLIENT, 51000, SERVER, 21)),
        XDP_PASS,
        "control port"
    );
    let ack = Tcp::new(CLIENT, 51000, SERVER, 10000, ACK).frame(b"payload");
    assert_eq!(
        p.ingress(&ack),
        XDP_PASS,
        "non-SYN packets of unknown connections"
    );
    let syn_ack = Tcp::new(CLIENT, 80, SERVER, 40000, SYN | ACK).frame(&[]);
    assert_eq!(
        p.ingress(&syn_ack),
        XDP_PASS,
        "replies to the host's own connections"
    );
    assert_eq!(
        p.egress(&syn(SERVER, 40000, CLIENT, 10000)),
        TC_ACT_UNSPEC,
        "outbound SYN"
    );
    let arp = [vec![0xff; 12], vec![0x08, 0x06], vec![0; 28]].concat();
    assert_eq!(p.ingress(&arp), XDP_PASS, "ARP");
    assert!(p.expectations().is_empty() && p.flows().is_empty());
    assert_eq!(p.stats(), BTreeMap::new());
}

#[test]
fn truncated_headers_pass_and_are_counted() {
    let p = Programs::new();
    let frame = syn(CLIENT, 51000, SERVER, 10000);
    assert_eq!(p.ingress(&frame[..14 + 20 + 10]), XDP_PASS);
    let mut bad_ihl = frame.clone();
    bad_ihl[14] = 0x43;
    assert_eq!(p.ingress(&bad_ihl), XDP_PASS);
    assert_eq!(p.stats(), BTreeMap::from([("malformed_packets", 2)]));
}

#[test]
fn expired_expectation_admits_nothing() {
    let p = Programs::load(Settings {
        expect_timeout_secs: 1,
        ..Settings::default()
    });
    p.egress(&p.open(session()).reply(b"227 (192,0,2,1,39,16)\r\n"));
    assert_eq!(p.expectations().len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Another client is given the same port now, so the port's own record says it was
    // announced recently and the SYN reaches the lookup, which finds the client's
    // expectation expired. (Nothing sweeps the table: the lookup is what removes it.)
    p.egress(
        &p.open(ControlSession::new(STRANGER, SERVER))
            .reply(b"227 (192,0,2,1,39,16)\r\n"),
    );
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_DROP);
    assert_eq!(
        p.expected_keys(),
        [expect_key(STRANGER, SERVER, 10000)],
        "the expired expectation is deleted, the other client's stays"
    );
    assert_eq!(p.stats()["expectations_expired"], 1);
}

#[test]
fn settings_shape_the_guard() {
    let p = Programs::load(Settings {
        data_ports: (10000, 10500),
        control_ports: vec![2121, 2122],
        ..Settings::default()
    });
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 9999)), XDP_PASS);
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10501)), XDP_PASS);
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10500)), XDP_DROP);
    // Port 21 is no control port here; 2121 and 2122 are.
    p.egress(&p.open(session()).reply(b"227 (192,0,2,1,39,16)\r\n"));
    assert!(p.expectations().is_empty());
    for (port, data) in [(2121, 16u8), (2122, 17)] {
        let mut s = session();
        s.server_port = port;
        let mut s = p.open(s);
        p.egress(&s.reply(format!("227 (192,0,2,1,39,{data})\r\n").as_bytes()));
    }
    assert_eq!(
        p.expected_keys(),
        [
            expect_key(CLIENT, SERVER, 10000),
            expect_key(CLIENT, SERVER, 10001)
        ]
    );
}

/// The tc ingress guard (what `auto` picks on virtual devices) judges SYNs as XDP does.
#[test]
fn tc_ingress_guard_judges_like_xdp() {
    let p = Programs::new();
    assert_eq!(
        p.ingress_tc(&syn(CLIENT, 51000, SERVER, 10000)),
        TC_ACT_SHOT
    );
    p.egress(
        &p.open(session())
            .reply(b"229 Entering Extended Passive Mode (|||10000|)\r\n"),
    );
    assert_eq!(
        p.ingress_tc(&syn(CLIENT, 51000, SERVER, 10000)),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        p.ingress_tc(&syn(CLIENT, 51001, SERVER, 10000)),
        TC_ACT_SHOT
    );
    let data = Tcp::new(CLIENT, 51000, SERVER, 10000, ACK).frame(b"data");
    assert_eq!(p.ingress_tc(&data), TC_ACT_UNSPEC);
    assert_eq!(p.stats()["unsolicited_dropped"], 2);
    assert_eq!(p.stats()["expectations_matched"], 1);
}

/// Nothing sweeps the tables: a finished flow is judged when its 5-tuple shows up again,
/// and a SYN reusing it needs an announcement of its own.
#[test]
fn a_finished_flow_admits_nothing_more() {
    let p = Programs::load(Settings {
        flow_idle_timeout_secs: 1,
        ..Settings::default()
    });
    p.egress(&p.open(session()).reply(b"227 (192,0,2,1,39,16)\r\n"));
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_PASS);
    assert_eq!(p.flows().len(), 1);
    // A retransmitted SYN of the tracked connection still passes.
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_PASS);
    // The programs read a clock that ticks with the scheduler: wait out the idle timeout
    // with room to spare.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_DROP);
    assert!(p.flows().is_empty(), "the finished flow was removed");
    assert_eq!(p.stats()["syn_retransmissions"], 1);
    assert_eq!(p.stats()["unsolicited_dropped"], 1);
}

// Issue 8: forged control traffic never opens a port. A forger who cannot see a control
// connection's traffic must guess its sequence numbers; one who can send from this host's
// own address must come from outside to do it.

/// A 227 forged ahead of the server's stream, as far as a guess may land, is out of window:
/// it creates nothing and moves nothing, so the real 227 after it is read.
#[test]
fn forged_passive_reply_out_of_window_opens_nothing() {
    let p = Programs::new();
    // A gateway in front of the server: both ends' segments arrive on ingress, as a
    // forger's do, and the guard judges the client's SYNs there.
    let mut s = p.open_at(Host::Gateway, session());
    p.ingress(&s.command(b"PASV\r\n"));
    // Opening with a line end, so that a reader which takes the forgery for the bytes after
    // a gap still reads its 227 line.
    let forged = b"\r\n227 Entering Passive Mode (192,0,2,1,40,10)\r\n";
    for (count, ahead) in (1..).zip([100_000u32, 1 << 20, (1 << 31) - 1]) {
        let frame = s.reply_at(s.server_seq().wrapping_add(ahead), forged);
        assert_eq!(
            p.ingress(&frame),
            XDP_PASS,
            "{ahead} ahead: judged, not dropped"
        );
        assert!(p.expectations().is_empty(), "{ahead} ahead");
        assert_eq!(p.stats()["control_out_of_window"], count, "{ahead} ahead");
    }
    p.ingress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16)\r\n"));
    assert_eq!(
        p.expected_keys(),
        [expect_key(CLIENT, SERVER, 10000)],
        "the stream position did not move"
    );
    assert_eq!(
        p.ingress(&syn(CLIENT, 51000, SERVER, 40 * 256 + 10)),
        XDP_DROP
    );
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_PASS);
    assert_eq!(
        p.stats(),
        BTreeMap::from([
            ("control_out_of_window", 3),
            ("control_packets", 2),
            ("expectations_created", 1),
            ("expectations_matched", 1),
            ("flows_tracked", 1),
            ("unsolicited_dropped", 1),
        ])
    );
}

/// The same forgery for a control connection nobody opened: nothing in it is believed.
#[test]
fn forged_announcements_of_unknown_connections_open_nothing() {
    let p = Programs::new();
    let mut random = Random::new();
    for _ in 0..3 {
        let client_port = random.port_except(session().client_port);
        let reply = Tcp::new(SERVER, 21, CLIENT, client_port, PSH | ACK)
            .seq(random.next_u32())
            .ack(random.next_u32())
            .frame(b"227 Entering Passive Mode (192,0,2,1,40,10)\r\n");
        let command = Tcp::new(CLIENT, client_port, SERVER, 21, PSH | ACK)
            .seq(random.next_u32())
            .ack(random.next_u32())
            .frame(b"PORT 192,0,2,2,40,11\r\n");
        assert_eq!(p.ingress(&reply), XDP_PASS);
        assert_eq!(p.egress(&reply), TC_ACT_UNSPEC);
        assert_eq!(p.ingress(&command), XDP_PASS);
    }
    assert!(p.expectations().is_empty());
    assert!(p.controls().is_empty(), "nothing remembered either");
    assert_eq!(
        p.ingress(&syn(CLIENT, 51000, SERVER, 40 * 256 + 10)),
        XDP_DROP
    );
    assert_eq!(
        p.stats(),
        BTreeMap::from([("control_unknown", 9), ("unsolicited_dropped", 1)])
    );
}

/// Resets with guessed sequence numbers, from either end, do not end a control connection
/// nor take its expectation; the real end's reset does.
#[test]
fn forged_resets_leave_the_control_connection_and_its_expectation() {
    let p = Programs::new();
    let mut random = Random::new();
    let mut s = p.open(session());
    p.ingress(&s.command(b"PASV\r\n"));
    p.egress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16)\r\n"));
    for _ in 0..3 {
        let client_seq = s.client_seq().wrapping_add(random.far());
        let server_seq = s.server_seq().wrapping_add(random.far());
        let from_client = Tcp::new(CLIENT, 40000, SERVER, 21, RST).seq(client_seq);
        let from_server = Tcp::new(SERVER, 21, CLIENT, 40000, RST).seq(server_seq);
        // From outside, both. With no local address known, a forged source is not told
        // by its address; but the server's segments leave this host, so one arriving is
        // off its path and dropped, whatever its numbers. The client's is out of window.
        assert_eq!(
            p.ingress(&from_client.frame(&[])),
            XDP_PASS,
            "{from_client:?}"
        );
        assert_eq!(
            p.ingress(&from_server.frame(&[])),
            XDP_DROP,
            "{from_server:?}"
        );
        assert_eq!(
            p.expected_keys(),
            [expect_key(CLIENT, SERVER, 10000)],
            "after RSTs at {client_seq} and {server_seq}"
        );
    }
    assert_eq!(p.controls(), [flow_key(CLIENT, 40000, SERVER, 21)]);
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_PASS);
    // The next transfer's expectation goes with the server's own reset.
    p.ingress(&s.command(b"PASV\r\n"));
    p.egress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,17)\r\n"));
    assert_eq!(p.expected_keys(), [expect_key(CLIENT, SERVER, 10001)]);
    p.egress(&s.server_rst());
    assert!(p.expectations().is_empty() && p.controls().is_empty());
    assert_eq!(p.ingress(&syn(CLIENT, 51001, SERVER, 10001)), XDP_DROP);
    assert_eq!(
        p.stats(),
        BTreeMap::from([
            ("control_out_of_window", 3),
            ("control_packets", 4),
            ("control_wrong_path", 3),
            ("expectations_created", 2),
            ("expectations_matched", 1),
            ("expectations_removed", 1),
            // The second 227 takes the slot the consumed expectation held.
            ("expectations_replaced", 1),
            ("flows_tracked", 1),
            ("unsolicited_dropped", 1),
        ])
    );
}

/// A segment from this host's own address cannot arrive from outside: a reply of the
/// server's arriving at the server is dropped, sequence numbers right or not, and so are a
/// SYN to a guarded port and a data connection's FIN; the server's real reply leaves on
/// egress and is read.
#[test]
fn segments_from_this_hosts_own_address_are_dropped_inbound() {
    let mut p = Programs::new();
    p.set_local_addrs(&[SERVER.into()]);
    let mut s = p.open(session());
    p.ingress(&s.command(b"PASV\r\n"));
    let reply = s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16)\r\n");
    assert_eq!(p.ingress(&reply), XDP_DROP);
    assert_eq!(p.ingress_tc(&reply), TC_ACT_SHOT);
    assert!(p.expectations().is_empty());
    assert_eq!(p.egress(&reply), TC_ACT_UNSPEC);
    assert_eq!(p.expected_keys(), [expect_key(CLIENT, SERVER, 10000)]);
    // A SYN claiming this host as its source, to the announced port, does not take the
    // client's expectation.
    assert_eq!(p.ingress(&syn(SERVER, 51000, SERVER, 10000)), XDP_DROP);
    assert_eq!(p.expected_keys(), [expect_key(CLIENT, SERVER, 10000)]);
    // Nor does the server's FIN, forged inbound with the right numbers, end the client's
    // data connection; the real one, leaving, does.
    let data = p.open(data_connection(10000));
    assert_eq!(p.ingress(&data.server_fin()), XDP_DROP);
    assert_eq!(p.flows()[0].1.closing_since_ns, 0);
    assert_eq!(p.egress(&data.server_fin()), TC_ACT_UNSPEC);
    assert_ne!(p.flows()[0].1.closing_since_ns, 0);
    assert_eq!(
        p.stats(),
        BTreeMap::from([
            ("control_packets", 2),
            ("expectations_created", 1),
            ("expectations_matched", 1),
            ("flows_closing", 1),
            ("flows_tracked", 1),
            ("spoofed_source_dropped", 4),
        ])
    );

    // Where the server's replies do arrive, they are read: on the client's host (which
    // knows its own address only) and on a gateway (which knows none of either end's).
    for (host, local) in [(Host::Client, vec![CLIENT.into()]), (Host::Gateway, vec![])] {
        let mut q = Programs::new();
        q.set_local_addrs(&local);
        let mut s = q.open_at(host, session());
        assert!(q.deliver(host, Sender::Client, &s.command(b"PASV\r\n")));
        let reply = s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16)\r\n");
        assert_eq!(q.ingress(&reply), XDP_PASS, "{host:?}");
        assert_eq!(
            q.expected_keys(),
            [expect_key(CLIENT, SERVER, 10000)],
            "{host:?}"
        );
        assert!(
            !q.stats().contains_key("spoofed_source_dropped"),
            "{host:?}"
        );
    }
}

/// One client address holds at most its share of the expectation table; an expectation
/// consumed is given back.
#[test]
fn each_client_holds_at_most_its_share() {
    let p = Programs::load(Settings {
        max_per_client: 2,
        ..Settings::default()
    });
    let mut sessions: Vec<ControlSession> = (0..3)
        .map(|i| {
            let mut s = session();
            s.client_port = 40000 + i;
            p.open(s)
        })
        .collect();
    for (s, port) in sessions.iter_mut().zip([16u8, 17, 18]) {
        p.egress(
            &s.reply(format!("227 Entering Passive Mode (192,0,2,1,39,{port})\r\n").as_bytes()),
        );
    }
    assert_eq!(
        p.expected_keys(),
        [
            expect_key(CLIENT, SERVER, 10000),
            expect_key(CLIENT, SERVER, 10001)
        ]
    );
    assert_eq!(p.stats()["client_share_refused"], 1);
    assert_eq!(p.ingress(&syn(CLIENT, 51002, SERVER, 10002)), XDP_DROP);
    // Another client's share is its own.
    p.egress(
        &p.open(ControlSession::new(STRANGER, SERVER))
            .reply(b"227 (192,0,2,1,39,19)\r\n"),
    );
    assert_eq!(p.expectations().len(), 3);
    // A transfer consumes one: the client may announce again.
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_PASS);
    p.egress(&sessions[2].reply(b"227 Entering Passive Mode (192,0,2,1,39,18)\r\n"));
    assert_eq!(
        p.expected_keys(),
        [
            expect_key(CLIENT, SERVER, 10001),
            expect_key(CLIENT, SERVER, 10002),
            expect_key(STRANGER, SERVER, 10003)
        ]
    );
    assert_eq!(p.ingress(&syn(CLIENT, 51002, SERVER, 10002)), XDP_PASS);
    assert_eq!(
        p.stats(),
        BTreeMap::from([
            ("client_share_refused", 1),
            ("control_packets", 5),
            ("expectations_created", 4),
            ("expectations_matched", 2),
            ("flows_tracked", 2),
            ("unsolicited_dropped", 1),
        ])
    );

    // An IPv6 client picks its address from its /64 at will: the /64 holds one share.
    let q = Programs::load(Settings {
        max_per_client: 2,
        ..Settings::default()
    });
    let same_64: [Ipv6Addr; 3] =
        ["2001:db8::2", "2001:db8::3", "2001:db8::ffff:4"].map(|a| a.parse().unwrap());
    let other_64: Ipv6Addr = "2001:db8:0:1::2".parse().unwrap();
    for (port, client) in (10000..).zip(same_64.into_iter().chain([other_64])) {
        q.egress(
            &q.open(ControlSession::new(client, SERVER6))
                .reply(format!("229 Entering Extended Passive Mode (|||{port}|)\r\n").as_bytes()),
        );
    }
    assert_eq!(
        q.expected_keys(),
        [
            expect_key(same_64[0], SERVER6, 10000),
            expect_key(same_64[1], SERVER6, 10001),
            expect_key(other_64, SERVER6, 10003)
        ]
    );
    assert_eq!(q.stats()["client_share_refused"], 1);
}

/// A FIN or RST of an admitted data connection that falls outside its window (forged) does
/// not mark it closing; the real FIN does.
#[test]
fn forged_resets_of_a_data_connection_are_ignored() {
    let p = Programs::new();
    p.egress(&p.open(session()).reply(b"227 (192,0,2,1,39,17)\r\n"));
    let mut d = p.open(data_connection(10001));
    assert_eq!(p.ingress(&d.command(b"data")), XDP_PASS);
    // The flow's numbers are sampled, so it is judged with slack: the forgeries sit as far
    // from the real numbers as sequence space allows, and halfway there.
    let (client_seq, server_seq) = (d.client_seq(), d.server_seq());
    let forged = [
        Tcp::new(CLIENT, 51000, SERVER, 10001, RST).seq(client_seq.wrapping_add(1 << 31)),
        Tcp::new(CLIENT, 51000, SERVER, 10001, RST).seq(client_seq.wrapping_add(1 << 30)),
        Tcp::new(CLIENT, 51000, SERVER, 10001, FIN | ACK)
            .seq(client_seq.wrapping_sub(1 << 30))
            .ack(server_seq),
        Tcp::new(SERVER, 10001, CLIENT, 51000, RST).seq(server_seq.wrapping_add(1 << 31)),
    ];
    for segment in forged {
        assert_eq!(p.ingress(&segment.frame(&[])), XDP_PASS, "{segment:?}");
        assert_eq!(p.flows()[0].1.closing_since_ns, 0, "{segment:?}");
    }
    assert_eq!(
        p.stats(),
        BTreeMap::from([
            ("control_packets", 1),
            ("expectations_created", 1),
            ("expectations_matched", 1),
            ("flow_out_of_window", 4),
            ("flows_tracked", 1),
        ])
    );
    assert_eq!(p.egress(&d.server_fin()), TC_ACT_UNSPEC);
    assert_ne!(p.flows()[0].1.closing_since_ns, 0);
}

/// A control connection reusing an open one's addresses and ports starts over once the
/// server's SYN-ACK acknowledges the new SYN: what the old one announced goes, and the new
/// one is read from its first byte. A SYN alone, which anyone can send, changes nothing.
#[test]
fn a_reused_control_connection_starts_over_only_when_the_server_answers() {
    let p = Programs::new();
    let mut s = p.open(session());
    p.egress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16)\r\n"));
    let lone = Tcp::new(CLIENT, 40000, SERVER, 21, SYN)
        .seq(s.client_seq().wrapping_add(Random::new().far()))
        .window(64240)
        .window_scale(7);
    assert_eq!(p.ingress(&lone.frame(&[])), XDP_PASS);
    assert_eq!(p.expected_keys(), [expect_key(CLIENT, SERVER, 10000)]);
    // The old connection goes on, read where it stands.
    p.ingress(&s.command(b"PASV\r\n"));
    p.egress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,17)\r\n"));
    assert_eq!(p.expected_keys(), [expect_key(CLIENT, SERVER, 10001)]);

    // The old connection ended unseen; the client's next one has the same port.
    let mut again = p.open(session().numbered(900_000, 70_000));
    assert!(
        p.expectations().is_empty(),
        "what the old connection announced went with it"
    );
    p.ingress(&again.command(b"PORT 192,0,2,2,39,20\r\n"));
    assert_eq!(p.expected_keys(), [expect_key(SERVER, CLIENT, 10004)]);
    assert_eq!(p.controls(), [flow_key(CLIENT, 40000, SERVER, 21)]);
    assert_eq!(
        p.stats(),
        BTreeMap::from([
            ("control_packets", 4),
            ("expectations_created", 3),
            ("expectations_removed", 1),
            ("expectations_replaced", 1),
        ])
    );
}

/// On a gateway, whose servers' addresses are not its own, a client forging its server's
/// replies is given away by where they arrive: on the client's side, where the server's
/// segments never come from. Here the client's side is `lo` and the server's a veth of a
/// namespace the test makes; the tc guard sees each segment with its interface.
#[test]
fn a_client_forging_its_servers_replies_on_a_gateway_is_off_path() {
    let p = Programs::new();
    let lab = Lab::new("offpath", &default_loader_bin()).expect("lab");
    let link = run(lab.server("ip").args(["-o", "link", "show", SERVER_IF])).unwrap();
    let server_side: u32 = String::from_utf8_lossy(&link.stdout)
        .split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .expect("the veth's index");
    const CLIENT_SIDE: u32 = 1;
    // A tc run on the interface `ifindex` (the run looks it up in the current namespace).
    let on = |ifindex: u32, frame: &[u8]| {
        let tc = contract::classifier(&p.ebpf, INGRESS_TC_PROGRAM).unwrap();
        // struct __sk_buff up to `ifindex`, at offset 40; the rest zero.
        let mut context = [0u8; 44];
        context[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let frame = frame.to_vec();
        in_netns(&lab.server_ns, move || {
            Ok(tc
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ctx_in: Some(&context),
                    ..Default::default()
                })?
                .return_value)
        })
        .unwrap()
    };
    let mut s = session();
    let [syn, syn_ack, ack] = s.handshake();
    assert_eq!(on(CLIENT_SIDE, &syn), TC_ACT_UNSPEC);
    assert_eq!(on(server_side, &syn_ack), TC_ACT_UNSPEC);
    assert_eq!(on(CLIENT_SIDE, &ack), TC_ACT_UNSPEC);
    assert_eq!(on(CLIENT_SIDE, &s.command(b"PASV\r\n")), TC_ACT_UNSPEC);
    // The client knows the server's numbers exactly: the window cannot tell.
    let forged = s.reply_at(
        s.server_seq(),
        b"227 Entering Passive Mode (192,0,2,1,40,10)\r\n",
    );
    assert_eq!(on(CLIENT_SIDE, &forged), TC_ACT_SHOT);
    assert!(p.expectations().is_empty());
    assert_eq!(
        on(
            server_side,
            &s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16)\r\n")
        ),
        TC_ACT_UNSPEC
    );
    assert_eq!(p.expected_keys(), [expect_key(CLIENT, SERVER, 10000)]);
    assert_eq!(
        p.stats(),
        BTreeMap::from([
            ("control_packets", 2),
            ("control_wrong_path", 1),
            ("expectations_created", 1),
        ])
    );
}

/// QinQ: 802.1ad outside, 802.1Q inside; and 802.1Q twice.
const DOUBLE_TAGS: [[(u16, u16); 2]; 2] = [
    [(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)],
    [(ETH_P_8021Q, 100), (ETH_P_8021Q, 200)],
];

/// Double-tagged frames, with both tags in the data as XDP sees them (and tc, unless the
/// stack or the NIC took the outer one into the packet's metadata): the guard reads
/// through both. An unannounced SYN is dropped, a control session's reply announces, and
/// the announced SYN passes; a third tag hides the TCP flags, and is dropped inbound.
#[test]
fn double_tagged_frames_are_guarded() {
    for tags in DOUBLE_TAGS {
        let p = Programs::new();
        let tagged = |frame: Vec<u8>| vlan_tagged(&frame, &tags);
        let unannounced = tagged(syn(CLIENT, 51000, SERVER, 10000));
        assert_eq!(p.ingress(&unannounced), XDP_DROP, "{tags:x?}");
        assert_eq!(p.ingress_tc(&unannounced), TC_ACT_SHOT, "{tags:x?}");
        assert_eq!(
            p.ingress(&tagged(syn(CLIENT6, 51000, SERVER6, 10000))),
            XDP_DROP,
            "{tags:x?}"
        );
        let mut s = session();
        let [client_syn, syn_ack, ack] = s.handshake();
        assert_eq!(p.ingress(&tagged(client_syn)), XDP_PASS, "{tags:x?}");
        p.egress(&tagged(syn_ack));
        assert_eq!(p.ingress(&tagged(ack)), XDP_PASS, "{tags:x?}");
        p.egress(&tagged(
            s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n"),
        ));
        assert_eq!(
            p.expected_keys(),
            [expect_key(CLIENT, SERVER, 10000)],
            "{tags:x?}"
        );
        assert_eq!(p.ingress(&unannounced), XDP_PASS, "{tags:x?}");
        assert_eq!(
            p.stats(),
            BTreeMap::from([
                ("control_packets", 1),
                ("expectations_created", 1),
                ("expectations_matched", 1),
                ("flows_tracked", 1),
                ("unsolicited_dropped", 3),
            ]),
            "{tags:x?}"
        );
    }
    let p = Programs::new();
    let triple = vlan_tagged(
        &syn(CLIENT, 51000, SERVER, 10000),
        &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)],
    );
    assert_eq!(p.ingress(&triple), XDP_DROP);
    assert_eq!(p.ingress_tc(&triple), TC_ACT_SHOT);
    assert_eq!(
        p.egress(&triple),
        TC_ACT_UNSPEC,
        "outbound is never dropped"
    );
    assert_eq!(p.stats(), BTreeMap::from([("uninspectable_dropped", 2)]));
}

/// On a layer-3 interface (tun, WireGuard, PPP) frames start at the IP header; the
/// programs the loader attaches there (loaded, as there, only on demand) guard them as
/// the Ethernet ones guard Ethernet frames, in both families.
#[test]
fn layer_3_programs_guard_frames_that_start_at_the_ip_header() {
    let mut p = Programs::new();
    for name in [INGRESS_TC_L3_PROGRAM, EGRESS_L3_PROGRAM] {
        ebpf::load_program(&mut p.ebpf, name).expect("the layer-3 programs verify");
    }
    let ingress = |frame: Vec<u8>| p.tc(INGRESS_TC_L3_PROGRAM, &without_ethernet(&frame));
    let egress = |frame: Vec<u8>| p.tc(EGRESS_L3_PROGRAM, &without_ethernet(&frame));
    for (mut s, reply, port) in [
        (
            session(),
            &b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n"[..],
            10000,
        ),
        (
            session6(),
            &b"229 Entering Extended Passive Mode (|||10001|)\r\n"[..],
            10001,
        ),
    ] {
        let unannounced = syn(s.client, 51000, s.server, port);
        assert_eq!(ingress(unannounced.clone()), TC_ACT_SHOT, "{reply:?}");
        let [client_syn, syn_ack, ack] = s.handshake();
        assert_eq!(ingress(client_syn), TC_ACT_UNSPEC);
        assert_eq!(egress(syn_ack), TC_ACT_UNSPEC);
        assert_eq!(ingress(ack), TC_ACT_UNSPEC);
        assert_eq!(egress(s.reply(reply)), TC_ACT_UNSPEC);
        assert_eq!(ingress(unannounced.clone()), TC_ACT_UNSPEC, "{reply:?}");
        assert_eq!(
            ingress(syn(s.client, 51001, s.server, port)),
            TC_ACT_SHOT,
            "a second connection to the consumed port, {reply:?}"
        );
    }
    assert_eq!(
        p.stats(),
        BTreeMap::from([
            ("control_packets", 2),
            ("expectations_created", 2),
            ("expectations_matched", 2),
            ("flows_tracked", 2),
            ("unsolicited_dropped", 4),
        ])
    );
}

/// The SYNs to `port` that the guard refused while monitoring.
fn would_drop(p: &mut Programs, port: u16) -> u64 {
    WOULD_DROP
        .of_mut(&mut p.ebpf)
        .unwrap()
        .get(&u32::from(port), 0)
        .unwrap()
}

#[test]
fn monitoring_passes_what_the_guard_refuses_and_counts_it_until_switched_off() {
    let mut p = Programs::load(Settings {
        monitor: true,
        ..Settings::default()
    });
    // Refused on the fast path (a port never announced), at either ingress hook.
    assert_eq!(p.ingress(&syn(STRANGER, 51000, SERVER, 10250)), XDP_PASS);
    assert_eq!(
        p.ingress_tc(&syn(STRANGER, 51001, SERVER, 10250)),
        TC_ACT_UNSPEC
    );
    // Refused after the lookup (a port announced to another client).
    let mut s = p.open(session());
    p.egress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16)\r\n"));
    assert_eq!(p.ingress(&syn(STRANGER, 51002, SERVER, 10000)), XDP_PASS);
    // Not a SYN, but dropped when enforcing all the same.
    let tcp = Tcp::new(CLIENT, 51000, SERVER, 10000, SYN).segment(&[]);
    let tiny = ipv4_first_fragment(CLIENT.into(), SERVER.into(), &tcp[..8]);
    assert_eq!(p.ingress(&tiny), XDP_PASS);
    // The announced connection is admitted as when enforcing, and not counted.
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_PASS);
    assert_eq!(p.flows().len(), 1);
    // Outbound SYNs are never refused.
    assert_eq!(
        p.egress(&syn(SERVER, 40000, STRANGER, 10251)),
        TC_ACT_UNSPEC
    );
    let stats = p.stats();
    assert_eq!(stats["would_drop"], 4, "{stats:?}");
    assert_eq!(stats["unsolicited_dropped"], 3, "{stats:?}");
    assert_eq!(stats["uninspectable_dropped"], 1, "{stats:?}");
    assert_eq!(would_drop(&mut p, 10250), 2);
    assert_eq!(would_drop(&mut p, 10000), 1);
    assert_eq!(would_drop(&mut p, 10251), 0);

    // Enforcing, configured in place: the same SYNs are dropped, and not counted as
    // would-be drops.
    ebpf::configure(&mut p.ebpf, &Settings::default()).unwrap();
    assert_eq!(p.ingress(&syn(STRANGER, 51003, SERVER, 10250)), XDP_DROP);
    assert_eq!(p.ingress(&tiny), XDP_DROP);
    assert_eq!(p.stats()["would_drop"], 4);
    assert_eq!(would_drop(&mut p, 10250), 2);
    assert_eq!(p.flows().len(), 1, "the admitted flow is kept");
}

#[test]
fn allowed_networks_pass_the_guard_in_their_own_family_only() {
    let mut p = Programs::load(Settings {
        allow_from: vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8:0:0:8000::/65".parse().unwrap(),
        ],
        ..Settings::default()
    });
    let inside6: Ipv6Addr = "2001:db8::8000:0:0:2".parse().unwrap();
    assert_eq!(p.ingress(&syn(STRANGER, 51000, SERVER, 10250)), XDP_PASS);
    assert_eq!(p.ingress(&syn(inside6, 51000, SERVER6, 10250)), XDP_PASS);
    assert_eq!(
        p.ingress_tc(&syn(STRANGER, 51001, SERVER, 10250)),
        TC_ACT_UNSPEC
    );
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10250)), XDP_DROP);
    assert_eq!(p.ingress(&syn(CLIENT6, 51000, SERVER6, 10250)), XDP_DROP);
    assert!(p.flows().is_empty(), "allowed connections are not tracked");
    assert_eq!(
        p.stats(),
        BTreeMap::from([("allowed_from_source", 3), ("unsolicited_dropped", 2)])
    );

    // Every IPv6 address lets no IPv4 one in.
    ebpf::configure(
        &mut p.ebpf,
        &Settings {
            allow_from: vec!["::/0".parse().unwrap()],
            ..Settings::default()
        },
    )
    .unwrap();
    assert_eq!(p.ingress(&syn(CLIENT6, 51001, SERVER6, 10250)), XDP_PASS);
    assert_eq!(p.ingress(&syn(STRANGER, 51002, SERVER, 10250)), XDP_DROP);

    // A listed network never lets the host's own addresses in from outside.
    ebpf::configure(
        &mut p.ebpf,
        &Settings {
            allow_from: vec!["0.0.0.0/0".parse().unwrap()],
            ..Settings::default()
        },
    )
    .unwrap();
    p.set_local_addrs(&[SERVER.into()]);
    assert_eq!(p.ingress(&syn(SERVER, 51000, SERVER, 10250)), XDP_DROP);
    assert_eq!(p.ingress(&syn(STRANGER, 51003, SERVER, 10250)), XDP_PASS);
}

/// With a reader, each decision is an event naming its addresses: the refusals what the
/// line announced (a 229 the server's own address), the drop its SYN.
#[test]
fn decisions_are_events_with_their_addresses() {
    use ftp_ebpf_common::{
        config::Config,
        contract::{CONFIG, EVENTS},
    };
    use ftp_loader::events::Row;

    let mut p = Programs::new();
    CONFIG
        .of_mut(&mut p.ebpf)
        .unwrap()
        .set(
            0,
            Config {
                events: 1,
                ..Settings::default().config()
            },
            0,
        )
        .unwrap();
    let mut ring = EVENTS
        .from_map(p.ebpf.take_map(EVENTS.name).unwrap())
        .unwrap();
    let mut s = p.open(session());
    p.ingress(&s.command(b"PORT 198,51,100,9,39,17\r\n"));
    p.egress(&s.reply(b"229 Entering Extended Passive Mode (|||1023|)\r\n"));
    p.ingress(&s.command(b"PORT 192,0,2,2,300,1\r\n"));
    p.egress(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n"));
    p.ingress(&Tcp::new(CLIENT, 51000, SERVER, 10001, SYN).frame(&[]));
    let mut lines = Vec::new();
    while let Some(record) = ring.next() {
        lines.push(Row::decode(&record).expect("a known event").to_string());
    }
    let control = format!("master {CLIENT}:{} -> {SERVER}:21", s.client_port);
    assert_eq!(
        lines,
        [
            format!("[REFUSED address_mismatch] ipv4 tcp 198.51.100.9:10001 {control}"),
            format!("[REFUSED low_port] ipv4 tcp {SERVER}:1023 {control}"),
            format!("[REFUSED parse_error] {control}"),
            format!("[ANNOUNCED] ipv4 tcp {CLIENT} -> {SERVER}:10000 (any source port) {control}"),
            format!("[UNSOLICITED_DROPPED] ipv4 tcp {CLIENT}:51000 -> {SERVER}:10001"),
        ]
    );

    // Monitoring, the same SYN is what enforcement would drop; from an allowed network it
    // is let in. A reconfiguration keeps the events on (their reader's switch).
    ebpf::configure(
        &mut p.ebpf,
        &Settings {
            monitor: true,
            ..Settings::default()
        },
    )
    .unwrap();
    p.ingress(&Tcp::new(CLIENT, 51001, SERVER, 10001, SYN).frame(&[]));
    ebpf::configure(
        &mut p.ebpf,
        &Settings {
            allow_from: vec![format!("{CLIENT}/32").parse().unwrap()],
            ..Settings::default()
        },
    )
    .unwrap();
    p.ingress(&Tcp::new(CLIENT, 51002, SERVER, 10001, SYN).frame(&[]));
    let mut lines = Vec::new();
    while let Some(record) = ring.next() {
        lines.push(Row::decode(&record).expect("a known event").to_string());
    }
    assert_eq!(
        lines,
        [
            format!("[WOULD_DROP] ipv4 tcp {CLIENT}:51001 -> {SERVER}:10001"),
            format!("[ALLOWED_FROM] ipv4 tcp {CLIENT}:51002 -> {SERVER}:10001"),
        ]
    );
}

/// The programs of a `--nat-inside` interface (`ftp_ingress_nat`, `ftp_egress_nat`), run
/// on frames that pass it, with the packet as they leave it.
struct Gateway {
    programs: Programs,
    settings: Settings,
}

/// The public address the gateway's NAT shows its hosts as.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

impl Gateway {
    fn new() -> Self {
        use ftp_ebpf_common::{
            addr::ipv4,
            contract::{EGRESS_NAT_PROGRAM, INGRESS_NAT_PROGRAM, NAT_INSIDE},
            nat::NatInside,
        };
        let settings = Settings {
            nat_inside: vec![format!("lo={PUBLIC}").parse().unwrap()],
            max_expected: 4,
            ..Settings::default()
        };
        let mut programs = Programs::load(settings.clone());
        for program in [INGRESS_NAT_PROGRAM, EGRESS_NAT_PROGRAM] {
            ebpf::load_program(&mut programs.ebpf, program).expect("the NAT programs verify");
        }
        // BPF_PROG_TEST_RUN runs tc programs on the loopback device: index 1.
        NAT_INSIDE
            .of_mut(&mut programs.ebpf)
            .unwrap()
            .insert(
                1,
                NatInside {
                    public: ipv4(PUBLIC.octets()),
                },
                0,
            )
            .unwrap();
        Self { programs, settings }
    }

    /// A frame arriving from a host behind the gateway: the verdict and the frame after.
    fn arriving(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(ftp_ebpf_common::contract::INGRESS_NAT_PROGRAM, frame)
    }

    /// A frame leaving towards a host behind the gateway.
    fn leaving(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(ftp_ebpf_common::contract::EGRESS_NAT_PROGRAM, frame)
    }

    fn run(&self, program: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 64];
        let program = contract::classifier(&self.programs.ebpf, program).unwrap();
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("test run");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Opens `session` with the server behind the gateway: the client's segments leave
    /// towards it, the server's arrive.
    fn open_server_behind(&self, session: ControlSession) -> ControlSession {
        let [syn, syn_ack, ack] = session.handshake();
        assert_eq!(self.leaving(&syn).0, TC_ACT_UNSPEC);
        assert_eq!(self.arriving(&syn_ack).0, TC_ACT_UNSPEC);
        assert_eq!(self.leaving(&ack).0, TC_ACT_UNSPEC);
        session
    }
}

/// The TCP payload of an Ethernet frame carrying IPv4.
fn payload(frame: &[u8]) -> &[u8] {
    let tcp = 14 + usize::from(frame[14] & 0x0f) * 4;
    &frame[tcp + usize::from(frame[tcp + 12] >> 4) * 4..]
}

fn seq_of(frame: &[u8]) -> u32 {
    let tcp = 14 + usize::from(frame[14] & 0x0f) * 4;
    u32::from_be_bytes(frame[tcp + 4..tcp + 8].try_into().unwrap())
}

fn ack_of(frame: &[u8]) -> u32 {
    let tcp = 14 + usize::from(frame[14] & 0x0f) * 4;
    u32::from_be_bytes(frame[tcp + 8..tcp + 12].try_into().unwrap())
}

/// A server behind a NAT gateway announces its private address; the gateway's inside
/// interface rewrites it to the public one, as nf_nat_ftp does, with valid checksums and
/// lengths, numbers the server's later segments and the client's acknowledgements to
/// match, and rewrites a retransmission identically.
#[test]
fn a_gateway_rewrites_a_private_address_and_keeps_the_numbers_straight() {
    use ftp_lab::frame::ipv4_tcp_checksums_hold;

    let g = Gateway::new();
    let mut s = g.open_server_behind(session());
    let reply = s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n");
    let (verdict, out) = g.arriving(&reply);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert_eq!(
        payload(&out),
        b"227 Entering Passive Mode (198,51,100,1,39,16).\r\n"
    );
    assert_eq!(out.len(), reply.len() + 3);
    assert!(ipv4_tcp_checksums_hold(&out), "checksums after the rewrite");
    assert_eq!(
        seq_of(&out),
        seq_of(&reply),
        "the rewritten segment keeps its number"
    );
    // The inside interface expects nothing: the outside one expects the public address,
    // when the rewritten reply leaves through it.
    assert!(g.programs.expectations().is_empty());
    assert_eq!(g.programs.stats()["nat_rewritten"], 1);

    // The server's next segment is numbered 3 bytes on; the client's acknowledgement of
    // it, 3 bytes back.
    let next = s.reply(b"150 Here comes the directory listing.\r\n");
    let (_, out) = g.arriving(&next);
    assert_eq!(seq_of(&out), seq_of(&next) + 3);
    assert!(ipv4_tcp_checksums_hold(&out));
    let client_ack = s.command(b"LIST\r\n");
    let seen_by_client = ack_of(&client_ack) + 3;
    // The client numbers its acknowledgement as it saw the server's bytes.
    let acked = ftp_lab::frame::Tcp::new(
        CLIENT,
        40000,
        SERVER,
        21,
        ftp_lab::frame::PSH | ftp_lab::frame::ACK,
    )
    .seq(seq_of(&client_ack))
    .ack(seen_by_client)
    .window(ftp_lab::frame::WINDOW)
    .frame(b"LIST\r\n");
    let (_, out) = g.leaving(&acked);
    assert_eq!(
        ack_of(&out),
        ack_of(&client_ack),
        "numbered back as the server numbered it"
    );
    assert!(ipv4_tcp_checksums_hold(&out));

    // A retransmission of the rewritten reply is rewritten again, identically.
    let again = s.reply_at(
        seq_of(&reply),
        b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n",
    );
    let (_, out) = g.arriving(&again);
    assert_eq!(
        payload(&out),
        b"227 Entering Passive Mode (198,51,100,1,39,16).\r\n"
    );
    assert_eq!(seq_of(&out), seq_of(&reply));
    assert!(ipv4_tcp_checksums_hold(&out));
    assert_eq!(g.programs.stats()["nat_retransmissions_rewritten"], 1);
}

/// A shorter public address shrinks the segment; PORT and EPRT of a masqueraded client
/// are rewritten like a 227; thousands of rewritten lines leave the numbers exact.
#[test]
fn a_gateway_rewrites_client_commands_for_thousands_of_lines_without_drift() {
    use ftp_lab::frame::ipv4_tcp_checksums_hold;

    let g = Gateway::new();
    // The client is behind the gateway: its segments arrive, the server's leave.
    let inside = Ipv4Addr::new(10, 200, 200, 200);
    let mut s = ControlSession::new(inside, STRANGER);
    let [syn, syn_ack, ack] = s.handshake();
    assert_eq!(g.arriving(&syn).0, TC_ACT_UNSPEC);
    assert_eq!(g.leaving(&syn_ack).0, TC_ACT_UNSPEC);
    assert_eq!(g.arriving(&ack).0, TC_ACT_UNSPEC);
    let first_seq = s.client_seq();
    let mut shift: u32 = 0;
    for line in 0..2000u32 {
        let port = 20000 + (line % 1000) as u16;
        let (text, rewritten) = if line % 2 == 0 {
            (
                format!("PORT 10,200,200,200,{},{}\r\n", port >> 8, port & 0xff),
                format!("PORT 198,51,100,1,{},{}\r\n", port >> 8, port & 0xff),
            )
        } else {
            (
                format!("EPRT |1|10.200.200.200|{port}|\r\n"),
                format!("EPRT |1|198.51.100.1|{port}|\r\n"),
            )
        };
        let frame = s.command(text.as_bytes());
        let (verdict, out) = g.arriving(&frame);
        assert_eq!(verdict, TC_ACT_UNSPEC);
        assert_eq!(payload(&out), rewritten.as_bytes(), "line {line}");
        assert_eq!(
            seq_of(&out),
            seq_of(&frame).wrapping_sub(shift),
            "line {line}"
        );
        assert!(ipv4_tcp_checksums_hold(&out), "line {line}");
        // 10,200,200,200 (14 bytes) became 198,51,100,1 (12).
        shift += 2;
    }
    assert_eq!(g.programs.stats()["nat_rewritten"], 2000);
    // The server acknowledges everything as the client's rewritten stream ends.
    let end_outside = s.client_seq().wrapping_sub(shift);
    let reply = ftp_lab::frame::Tcp::new(STRANGER, 21, inside, 40000, ftp_lab::frame::ACK)
        .seq(s.server_seq())
        .ack(end_outside)
        .window(ftp_lab::frame::WINDOW)
        .frame(&[]);
    let (_, out) = g.leaving(&reply);
    assert_eq!(
        ack_of(&out),
        s.client_seq(),
        "after {} bytes of rewriting",
        s.client_seq() - first_seq
    );
    assert!(ipv4_tcp_checksums_hold(&out));
}

/// What a gateway must not rewrite: an address that is not the sender's own (refused as
/// everywhere), a text split across segments (passed as it is, counted), IPv6 (nothing
/// to translate, untouched); and it takes SACK off control handshakes.
#[test]
fn a_gateway_leaves_alone_what_it_cannot_or_must_not_rewrite() {
    let g = Gateway::new();
    let syn = ftp_lab::frame::Tcp::new(CLIENT, 40001, SERVER, 21, SYN)
        .window_scale(7)
        .sack_permitted()
        .frame(&[]);
    let (_, out) = g.leaving(&syn);
    assert_eq!(
        &out[14 + 20 + 20..][..12],
        &[2, 4, 5, 0xb4, 1, 1, 1, 1, 1, 3, 3, 7]
    );
    assert!(ftp_lab::frame::ipv4_tcp_checksums_hold(&out));
    assert_eq!(g.programs.stats()["nat_sack_disabled"], 1);

    let mut s = g.open_server_behind(session());
    let third_party = s.reply(b"227 Entering Passive Mode (198,51,100,9,39,16).\r\n");
    let (_, out) = g.arriving(&third_party);
    assert_eq!(out, third_party, "another host's address is not rewritten");
    let first = s.reply(b"227 Entering Passive Mode (192,0,");
    let second = s.reply(b"2,1,39,17).\r\n");
    assert_eq!(g.arriving(&first).1, first);
    assert_eq!(g.arriving(&second).1, second);
    let stats = g.programs.stats();
    assert_eq!(stats["nat_unrewritable"], 1);
    assert_eq!(stats["address_mismatch"], 1);
    assert!(!stats.contains_key("nat_rewritten"));

    let mut s6 = g.open_server_behind(session6());
    let reply = s6.reply(b"229 Entering Extended Passive Mode (|||10000|)\r\n");
    assert_eq!(g.arriving(&reply).1, reply, "IPv6 passes untouched");
    let port = s6.command(b"EPRT |2|2001:db8::2|10001|\r\n");
    assert_eq!(g.leaving(&port).1, port);
}

/// The data connection of a rewritten announcement, on the gateway's outside interface:
/// the far end's SYN to the public address, once the guard admits it (the outside saw
/// the rewritten 227 leave), goes to the server behind the gateway, and the server's answer
/// leaves from the public address again, checksums intact; a 229 binds its port too.
#[test]
fn a_gateway_translates_the_data_connection_it_announced() {
    use ftp_ebpf_common::{
        config::Config,
        contract::{CONFIG, EVENTS, NAT_BINDINGS, NAT_FLOWS, NAT_INSIDE},
    };
    use ftp_lab::frame::{Tcp, ipv4_tcp_checksums_hold};

    let mut g = Gateway::new();
    // Inside: the server's 227 and 229, rewritten and bound.
    let mut s = g.open_server_behind(session());
    g.arriving(&s.reply(b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n"));
    g.arriving(&s.reply(b"229 Entering Extended Passive Mode (|||10001|)\r\n"));
    assert_eq!(g.programs.stats()["nat_rewritten"], 1);

    // The same programs as the outside interface's: lo is no longer --nat-inside.
    NAT_INSIDE
        .of_mut(&mut g.programs.ebpf)
        .unwrap()
        .remove(&1)
        .unwrap();
    // The control connection as the outside sees it (the server at the public address):
    // its replies leave, naming PUBLIC, and make the expectations.
    let mut outside = ControlSession::new(CLIENT, PUBLIC);
    let [syn, syn_ack, ack] = outside.handshake();
    assert_eq!(g.arriving(&syn).0, TC_ACT_UNSPEC);
    assert_eq!(g.leaving(&syn_ack).0, TC_ACT_UNSPEC);
    assert_eq!(g.arriving(&ack).0, TC_ACT_UNSPEC);
    g.leaving(&outside.reply(b"227 Entering Passive Mode (198,51,100,1,39,16).\r\n"));
    g.leaving(&outside.reply(b"229 Entering Extended Passive Mode (|||10001|)\r\n"));
    assert_eq!(
        g.programs.expected_keys(),
        [
            expect_key(CLIENT, PUBLIC, 10000),
            expect_key(CLIENT, PUBLIC, 10001)
        ]
    );
    // The listing shows where each goes, as conntrack -L shows a reply tuple.
    let now = ftp_loader::monotonic_ns();
    let listed = ftp_loader::tables::expectations(
        &EXPECTATIONS.of(&g.programs.ebpf).unwrap(),
        Some(&NAT_BINDINGS.of(&g.programs.ebpf).unwrap()),
        Some(&CONTROLS.of(&g.programs.ebpf).unwrap()),
        now,
    );
    let to: Vec<Option<&str>> = listed.iter().map(|e| e.translated_to.as_deref()).collect();
    assert_eq!(to, [Some("192.0.2.1:10000"), Some("192.0.2.1:10001")]);
    // Each translation is an event naming both connections.
    CONFIG
        .of_mut(&mut g.programs.ebpf)
        .unwrap()
        .set(
            0,
            Config {
                events: 1,
                ..g.settings.config()
            },
            0,
        )
        .unwrap();
    let mut ring = EVENTS
        .from_map(g.programs.ebpf.take_map(EVENTS.name).unwrap())
        .unwrap();

    for port in [10000, 10001] {
        let data = Tcp::new(CLIENT, 51000, PUBLIC, port, SYN).frame(&[]);
        let (verdict, out) = g.arriving(&data);
        assert_eq!(verdict, TC_ACT_UNSPEC, "admitted");
        assert_eq!(
            &out[14 + 16..14 + 20],
            &SERVER.octets(),
            "sent to the server"
        );
        assert!(ipv4_tcp_checksums_hold(&out));
        let answer = Tcp::new(SERVER, port, CLIENT, 51000, SYN | ftp_lab::frame::ACK)
            .ack(2)
            .frame(&[]);
        let (_, out) = g.leaving(&answer);
        assert_eq!(
            &out[14 + 12..14 + 16],
            &PUBLIC.octets(),
            "from the public address"
        );
        assert!(ipv4_tcp_checksums_hold(&out));
        // The rest of the connection both ways, translated the same.
        let more = Tcp::new(CLIENT, 51000, PUBLIC, port, ftp_lab::frame::ACK)
            .seq(2)
            .frame(b"data");
        let (_, out) = g.arriving(&more);
        assert_eq!(&out[14 + 16..14 + 20], &SERVER.octets());
        assert!(ipv4_tcp_checksums_hold(&out));
    }
    assert_eq!(g.programs.stats()["nat_data_connections"], 2);
    let mut events = Vec::new();
    while let Some(record) = ring.next() {
        events.push(
            ftp_loader::events::Row::decode(&record)
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("[TRANSLATED]"))
            .collect::<Vec<_>>(),
        [
            "[TRANSLATED] ipv4 tcp 192.0.2.2:51000 -> 198.51.100.1:10000 to 192.0.2.2:51000 -> 192.0.2.1:10000",
            "[TRANSLATED] ipv4 tcp 192.0.2.2:51000 -> 198.51.100.1:10001 to 192.0.2.2:51000 -> 192.0.2.1:10001",
        ]
    );
    let flows = ftp_loader::tables::flows(
        &FLOWS.of(&g.programs.ebpf).unwrap(),
        Some(&NAT_FLOWS.of(&g.programs.ebpf).unwrap()),
        Some(&contract::TLS_PEERS.of(&g.programs.ebpf).unwrap()),
        now,
    );
    let mut to: Vec<Option<&str>> = flows.iter().map(|f| f.translated_to.as_deref()).collect();
    to.sort();
    assert_eq!(to, [Some("192.0.2.1:10000"), Some("192.0.2.1:10001")]);
    // A port nothing announced stays closed and untranslated.
    let stranger = Tcp::new(CLIENT, 51001, PUBLIC, 10002, SYN).frame(&[]);
    let (verdict, out) = g.arriving(&stranger);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(out, stranger);
}
