//! Verdicts of the real compiled programs, loaded through the kernel verifier with the
//! loader's own code, run on crafted frames with `BPF_PROG_TEST_RUN`; the real maps are
//! read back after each run.

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::{
    Ebpf, TestRunResult,
    maps::HashMap,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use ftp_ebpf_common::{
    addr::{FAMILY_IPV4, ipv4},
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
};
use ftp_loader::ebpf::{self, EGRESS_PROGRAM, INGRESS_PROGRAM, Settings};
use tests::{
    frame::{ACK, FIN, PSH, SYN, Tcp, ipv4_frame, ipv6_syn},
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: u32 = -1i32 as u32;

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);

struct Programs {
    ebpf: Ebpf,
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
        let xdp: &Xdp = self
            .ebpf
            .program(INGRESS_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        test_run(xdp, frame)
    }

    fn egress(&self, frame: &[u8]) -> u32 {
        let tc: &SchedClassifier = self
            .ebpf
            .program(EGRESS_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        test_run(tc, frame)
    }

    fn expectations(&self) -> Vec<(ExpectKey, ExpectValue)> {
        let map: HashMap<_, ExpectKey, ExpectValue> =
            HashMap::try_from(self.ebpf.map("EXPECTATIONS").unwrap()).unwrap();
        map.iter().map(Result::unwrap).collect()
    }

    fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        let map: HashMap<_, FlowKey, FlowValue> =
            HashMap::try_from(self.ebpf.map("FLOWS").unwrap()).unwrap();
        map.iter().map(Result::unwrap).collect()
    }

    /// Counters that are not zero.
    fn stats(&self) -> BTreeMap<&'static str, u64> {
        ftp_loader::stats::read(self.ebpf.map("STATS").unwrap())
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

fn addr(ip: Ipv4Addr) -> [u8; 16] {
    ipv4(ip.octets())
}

fn expect_key(connector: Ipv4Addr, listener: Ipv4Addr, port: u16) -> ExpectKey {
    ExpectKey {
        family: FAMILY_IPV4,
        _pad: 0,
        port,
        connector: addr(connector),
        listener: addr(listener),
    }
}

fn flow_key(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> FlowKey {
    FlowKey {
        family: FAMILY_IPV4,
        _pad: [0; 3],
        src_port,
        dst_port,
        src: addr(src),
        dst: addr(dst),
    }
}

/// The server's control-connection reply, as the server host's egress sees it.
fn server_reply(text: &str) -> Vec<u8> {
    Tcp::new(SERVER, 21, CLIENT, 40000, PSH | ACK).frame(text.as_bytes())
}

/// The client's command, as the server host's ingress sees it.
fn client_command(text: &str) -> Vec<u8> {
    Tcp::new(CLIENT, 40000, SERVER, 21, PSH | ACK).frame(text.as_bytes())
}

fn syn(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> Vec<u8> {
    Tcp::new(src, src_port, dst, dst_port, SYN).frame(&[])
}

#[test]
fn passive_reply_on_egress_creates_an_expectation() {
    let p = Programs::new();
    assert_eq!(
        p.egress(&server_reply(
            "227 Entering Passive Mode (192,0,2,1,39,16).\r\n"
        )),
        TC_ACT_UNSPEC,
        "egress never decides"
    );
    let expectations = p.expectations();
    assert_eq!(expectations.len(), 1);
    let (key, value) = expectations[0];
    assert_eq!(key, expect_key(CLIENT, SERVER, 10000));
    assert_eq!(value.control, flow_key(SERVER, 21, CLIENT, 40000));
    let ttl = value.expires_ns.saturating_sub(ftp_loader::monotonic_ns());
    assert!(
        (299_000_000_000..=300_000_000_000).contains(&ttl),
        "expires in 300 s, not {ttl} ns"
    );
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
        p.ingress(&server_reply(
            "227 Entering Passive Mode (192,0,2,1,4,1)\r\n"
        )),
        XDP_PASS
    );
    assert_eq!(p.expectations()[0].0, expect_key(CLIENT, SERVER, 1025));
}

#[test]
fn port_command_creates_an_expectation_for_the_server_to_connect() {
    let p = Programs::new();
    assert_eq!(
        p.ingress(&client_command("TYPE I\r\nPORT 192,0,2,2,7,138\r\n")),
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
fn expected_syn_is_admitted_once_and_tracked() {
    let p = Programs::new();
    p.egress(&server_reply(
        "227 Entering Passive Mode (192,0,2,1,39,16)\r\n",
    ));

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
    p.egress(&server_reply("227 (192,0,2,1,39,17)\r\n"));
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10001)), XDP_PASS);
    let data = Tcp::new(CLIENT, 51000, SERVER, 10001, ACK | PSH).frame(b"data");
    assert_eq!(p.ingress(&data), XDP_PASS);
    assert_eq!(p.flows()[0].1.closing_since_ns, 0);
    // The server closes: its FIN leaves through egress, in the reverse direction.
    let fin = Tcp::new(SERVER, 10001, CLIENT, 51000, FIN | ACK).frame(&[]);
    assert_eq!(p.egress(&fin), TC_ACT_UNSPEC);
    assert_ne!(p.flows()[0].1.closing_since_ns, 0);
    assert_eq!(p.stats()["flows_closing"], 1);
}

#[test]
fn unsolicited_syn_is_dropped() {
    let p = Programs::new();
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_DROP);
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 1024)), XDP_DROP);
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 65535)), XDP_DROP);
    assert!(p.flows().is_empty());
    assert_eq!(p.stats(), BTreeMap::from([("unsolicited_dropped", 3)]));
}

#[test]
fn third_party_address_creates_nothing() {
    let p = Programs::new();
    p.egress(&server_reply(
        "227 Entering Passive Mode (198,51,100,9,39,16)\r\n",
    ));
    p.ingress(&client_command("PORT 198,51,100,9,0,25\r\n"));
    assert!(p.expectations().is_empty());
    assert_eq!(
        p.stats(),
        BTreeMap::from([("address_mismatch", 2), ("control_packets", 2)])
    );
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_DROP);
}

#[test]
fn malformed_lines_create_nothing_and_are_counted() {
    let p = Programs::new();
    for line in [
        "PORT 192,0,2,2,256,22\r\n",
        "PORT 192,0,2,2,7\r\n",
        "PORT 192,0,2,2,7,138,1\r\n",
        "PORT 192,0,2,2,0,0\r\n",
    ] {
        assert_eq!(p.ingress(&client_command(line)), XDP_PASS, "{line:?}");
    }
    p.egress(&server_reply("227 Entering Passive Mode\r\n"));
    // Echoed mid-line: not a reply at all.
    p.egress(&server_reply(
        "550 227 Entering Passive Mode (192,0,2,1,39,16)\r\n",
    ));
    assert!(p.expectations().is_empty());
    assert_eq!(
        p.stats(),
        BTreeMap::from([("control_packets", 6), ("parse_errors", 5)])
    );
}

#[test]
fn long_control_segments_are_scanned_up_to_the_window_and_counted() {
    let p = Programs::new();
    let mut text = "200 ".to_owned() + &"x".repeat(300) + "\r\n";
    text += "227 (192,0,2,1,39,16)\r\n";
    p.egress(&server_reply(&text));
    assert!(
        p.expectations().is_empty(),
        "the line past the window is not read"
    );
    assert_eq!(p.stats()["scan_truncated"], 1);
}

#[test]
fn other_traffic_passes_untouched() {
    let p = Programs::new();
    let udp = ipv4_frame(CLIENT, SERVER, 17, &[0x9c, 0x40, 0x27, 0x10, 0, 8, 0, 0]);
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
        p.ingress(&ipv6_syn(10000)),
        XDP_PASS,
        "IPv6 is not guarded yet"
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
    p.egress(&server_reply("227 (192,0,2,1,39,16)\r\n"));
    assert_eq!(p.expectations().len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10000)), XDP_DROP);
    assert!(
        p.expectations().is_empty(),
        "the expired expectation is deleted"
    );
    assert_eq!(p.stats()["expectations_expired"], 1);
}

#[test]
fn settings_shape_the_guard() {
    let p = Programs::load(Settings {
        data_ports: (10000, 10500),
        control_ports: vec![2121],
        ..Settings::default()
    });
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 9999)), XDP_PASS);
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10501)), XDP_PASS);
    assert_eq!(p.ingress(&syn(CLIENT, 51000, SERVER, 10500)), XDP_DROP);
    // Port 21 is no control port here; 2121 is.
    p.egress(&server_reply("227 (192,0,2,1,39,16)\r\n"));
    assert!(p.expectations().is_empty());
    let reply =
        Tcp::new(SERVER, 2121, CLIENT, 40000, PSH | ACK).frame(b"227 (192,0,2,1,39,16)\r\n");
    p.egress(&reply);
    assert_eq!(p.expectations()[0].0, expect_key(CLIENT, SERVER, 10000));
}
