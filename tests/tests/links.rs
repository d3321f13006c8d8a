//! Link types other than plain Ethernet, end to end: a layer-3 interface (a tun device,
//! whose frames start at the IP header, as WireGuard's do) carrying a real FTP session,
//! and double-tagged (QinQ) SYNs written onto the lab's veth.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ftp_lab::{
    clients::{self, Client, Mode},
    frame::{ACK, ETH_P_8021AD, ETH_P_8021Q, SYN, Tcp, vlan_tagged},
    ftp::Ftp,
    inject::OnLink,
    lab::{CLIENT_IP, Family, Lab, SERVER_IP, UNANNOUNCED, default_loader_bin, in_netns},
    require_root,
    servers::Server,
    tunnel::{SERVER_TUN, Tunnel},
};

/// vsftpd and a plain listener on `UNANNOUNCED`, nothing guarding them yet.
fn unguarded_lab(tag: &str) -> Lab {
    require_root();
    let mut lab = Lab::new(tag, &default_loader_bin()).expect("lab");
    Server::Vsftpd.start(&mut lab).unwrap();
    lab.start_listener(UNANNOUNCED).unwrap();
    lab
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.stats().unwrap()[name]
}

/// With the hosts joined by a tun tunnel and ftp-loader guarding only the server's tun
/// device, passive and extended passive transfers pass (IPv4 and IPv6) and the
/// unannounced listener, reachable through the tunnel before, is not.
#[test]
fn a_layer_3_interface_is_guarded_end_to_end() {
    let mut lab = unguarded_lab("tun");
    let _tunnel = Tunnel::new(&lab).unwrap();
    assert!(
        lab.unannounced_reachable(),
        "the listener answers through the tunnel before the loader starts"
    );
    lab.start_loader_on(&[SERVER_TUN], &[]).unwrap();
    let log = lab.loader_log();
    assert!(
        log.contains(&format!(
            "attached to {SERVER_TUN}: guard on tc ingress (auto: {SERVER_TUN} has no Ethernet header"
        )),
        "{log}"
    );
    // Only the tunnel is guarded: had the probe crossed the veth, it would connect.
    assert!(!lab.unannounced_reachable());
    assert!(counter(&lab, "unsolicited_dropped") >= 1);
    for (family, mode) in [(Family::V4, Mode::Pasv), (Family::V6, Mode::Epsv)] {
        let matched = counter(&lab, "expectations_matched");
        if let Err(error) = clients::download(&lab, Client::Curl, family, mode) {
            panic!(
                "{family:?} {mode:?}: {error:#}\nloader log:\n{}",
                lab.loader_log()
            );
        }
        assert_eq!(
            counter(&lab, "expectations_matched"),
            matched + 1,
            "{family:?} {mode:?}"
        );
    }
    assert!(!lab.unannounced_reachable());
    lab.stop_loader().unwrap();
    assert!(lab.unannounced_reachable(), "detached on exit");
}

/// Double tags, each VLAN 0 (priority tags): the stack takes them off one by one and
/// delivers what they carry without any VLAN device.
const DOUBLE_TAGS: [[(u16, u16); 2]; 2] = [
    [(ETH_P_8021AD, 0), (ETH_P_8021Q, 0)],
    [(ETH_P_8021Q, 0), (ETH_P_8021Q, 0)],
];

/// Writes double-tagged SYNs onto the client's end of the veth and watches for the
/// server's answer.
struct Prober {
    on: OnLink,
}

impl Prober {
    fn new(lab: &Lab) -> Self {
        Self {
            on: OnLink::new(lab).unwrap(),
        }
    }

    /// Whether the server answers a SYN to `port` tagged with `tags` with a SYN-ACK
    /// within a second (the client's stack, which never sent it, then resets it).
    fn answered(&mut self, port: u16, tags: &[(u16, u16)]) -> bool {
        let client_port = self.on.random.port_except(port);
        let (from, to) = (
            SocketAddr::from((SERVER_IP, port)),
            SocketAddr::from((CLIENT_IP, client_port)),
        );
        let syn = Tcp::new(CLIENT_IP, client_port, SERVER_IP, port, SYN)
            .seq(self.on.random.next_u32())
            .frame_on(self.on.link.to_server(), &[]);
        self.on.sniffer.segments().unwrap();
        self.on.sender.send(&vlan_tagged(&syn, tags)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let answer = self
                .on
                .sniffer
                .segments()
                .unwrap()
                .into_iter()
                .any(|(src, dst, s)| {
                    (src, dst) == (from, to) && s.flags & (SYN | ACK) == SYN | ACK
                });
            if answer {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// Double-tagged SYNs written onto the veth reach the server's listener when nothing
/// guards it; with the guard on generic XDP (which sees both tags in the frame), native XDP
/// or tc (where the stack has taken the outer tag into the packet's metadata), an
/// unannounced one is dropped and one to a port a real session announced passes.
#[test]
fn double_tagged_syns_are_guarded_on_every_hook() {
    let mut lab = unguarded_lab("qinq");
    let mut prober = Prober::new(&lab);
    for tags in DOUBLE_TAGS {
        assert!(
            prober.answered(UNANNOUNCED, &tags),
            "the server's stack takes a {tags:x?} SYN"
        );
    }
    let mut ftp = in_netns(&lab.client_ns, Ftp::login).unwrap();
    for mode in ["skb", "native", "tc"] {
        lab.start_loader(&["--xdp-mode", mode]).unwrap();
        for tags in DOUBLE_TAGS {
            let dropped = counter(&lab, "unsolicited_dropped");
            assert!(
                !prober.answered(UNANNOUNCED, &tags),
                "--xdp-mode {mode}: an unannounced {tags:x?} SYN was answered"
            );
            assert_eq!(
                counter(&lab, "unsolicited_dropped"),
                dropped + 1,
                "--xdp-mode {mode}, {tags:x?}"
            );
            let announced = in_netns(&lab.client_ns, || ftp.pasv()).unwrap();
            assert!(
                prober.answered(announced.port(), &tags),
                "--xdp-mode {mode}: a {tags:x?} SYN to the announced {announced} was not answered"
            );
        }
        lab.stop_loader().unwrap();
    }
}
