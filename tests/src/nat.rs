//! The lab behind 1:1 NAT, as a cloud gives a machine a public address: a third namespace,
//! a router, joins the client and the server hosts and translates between them with
//! netfilter's NAT alone. Traffic to [`PUBLIC_IP`] (an address of the router's client-side
//! link) goes on to the server's own [`SERVER_IP`], and what the server opens leaves from
//! [`PUBLIC_IP`]. Over IPv4 the client reaches the server through the public address only:
//! it has no route to the server's network. IPv6 is routed untranslated (as clouds route
//! it), only so that the servers, which listen in both families, start as in the classic
//! lab.
//!
//! No FTP helper runs on the router: nothing reads or rewrites the addresses in the control
//! connection, so each host's announcements reach the other as the host made them, and a
//! server must announce its public address itself (`Server::start_masquerading`).
//! [`Lab::nat_helper_traces`] checks that no helper took part.
//!
//! [`Lab::nat_client`] puts the client behind the same kind of NAT: it then reaches the
//! server from [`CLIENT_PUBLIC_IP`], and what is sent there reaches its own
//! [`NAT_CLIENT_IP`].

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context, Result};

use crate::lab::{
    CLIENT_IF, Lab, SERVER_IF, SERVER_IP, SERVER_IP6, bring_up, netns, route_through, run, veth,
};

/// The server's public address, where the router takes the client's traffic for it.
pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The client's own address, on the router's client-side network (the router's own is
/// [`ROUTER_CLIENT_SIDE`]).
pub const NAT_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The client's public address once [`Lab::nat_client`] puts it behind NAT too; the server
/// routes it to the router.
pub const CLIENT_PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
const ROUTER_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The IPv6 networks: the server keeps [`SERVER_IP6`] in 2001:db8::/64, the client is
/// in a /64 of its own; the router is `::fe` in both.
const CLIENT_NAT_IP6: &str = "2001:db8:1::2";
const ROUTER_CLIENT_SIDE6: &str = "2001:db8:1::fe";
const ROUTER_SERVER_SIDE6: &str = "2001:db8::fe";
/// The router's ends of the veth pairs to the server and the client.
const ROUTER_SERVER_IF: &str = "nat-srv";
const ROUTER_CLIENT_IF: &str = "nat-cli";

impl Lab {
    /// A lab whose client reaches the server through a router doing 1:1 NAT (see the
    /// module's documentation); the server is to announce [`PUBLIC_IP`].
    pub fn behind_nat(tag: &str, loader_bin: &Path) -> Result<Self> {
        let mut lab = Self::unlinked(tag, loader_bin)?;
        let router = lab.add_namespace("nat")?;
        lab.router_ns = Some(router.clone());
        veth((&lab.server_ns, SERVER_IF), (&router, ROUTER_SERVER_IF))?;
        veth((&lab.client_ns, CLIENT_IF), (&router, ROUTER_CLIENT_IF))?;
        bring_up(
            &lab.server_ns,
            SERVER_IF,
            &[format!("{SERVER_IP}/24"), format!("{SERVER_IP6}/64")],
        )?;
        bring_up(
            &lab.client_ns,
            CLIENT_IF,
            &[
                format!("{NAT_CLIENT_IP}/24"),
                format!("{CLIENT_NAT_IP6}/64"),
            ],
        )?;
        bring_up(
            &router,
            ROUTER_SERVER_IF,
            &[
                format!("{ROUTER_SERVER_SIDE}/24"),
                format!("{ROUTER_SERVER_SIDE6}/64"),
            ],
        )?;
        // The public address is the router's on the client's link, so the router answers
        // the client's ARP for it.
        bring_up(
            &router,
            ROUTER_CLIENT_IF,
            &[
                format!("{ROUTER_CLIENT_SIDE}/24"),
                format!("{PUBLIC_IP}/24"),
                format!("{ROUTER_CLIENT_SIDE6}/64"),
            ],
        )?;
        // The server reaches everything through the router: the client it answers in
        // active mode, and the client's public address. The client gets no IPv4 route
        // beyond its link: the server's own address is out of its reach.
        route_through(
            &router,
            &[
                (&lab.server_ns, "-4", ROUTER_SERVER_SIDE.to_string()),
                (&lab.server_ns, "-6", ROUTER_SERVER_SIDE6.to_owned()),
                (&lab.client_ns, "-6", ROUTER_CLIENT_SIDE6.to_owned()),
            ],
        )?;
        // Kernels before 6.0 attach the FTP helper to port 21 unless told not to; later
        // ones attach helpers only by rule (and this router has none) and lack the setting.
        run(netns(&router, "sh").args([
            "-c",
            "f=/proc/sys/net/netfilter/nf_conntrack_helper; [ ! -e $f ] || echo 0 > $f",
        ]))?;
        one_to_one(&router, PUBLIC_IP, SERVER_IP)?;
        lab.server_v4 = PUBLIC_IP;
        Ok(lab)
    }

    /// Puts the client behind the router's 1:1 NAT too: the server sees it as
    /// [`CLIENT_PUBLIC_IP`], and connections to that address reach the client.
    pub fn nat_client(&self) -> Result<()> {
        one_to_one(self.router()?, CLIENT_PUBLIC_IP, NAT_CLIENT_IP)
    }

    /// Whatever shows that an FTP helper took part on the router: its connections marked
    /// `helper=`, or the expectations only a helper makes. Empty when none did.
    pub fn nat_helper_traces(&self) -> Result<String> {
        let router = self.router()?;
        let mut traces = String::new();
        for table in ["conntrack", "expect"] {
            let output = run(netns(router, "conntrack").args(["-L", table]))?;
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                if table == "expect" || line.contains("helper=") {
                    traces.push_str(line);
                    traces.push('\n');
                }
            }
        }
        Ok(traces)
    }

    fn router(&self) -> Result<&str> {
        self.router_ns
            .as_deref()
            .context("the lab has no NAT router: make it with Lab::behind_nat")
    }
}

/// A cloud's 1:1 NAT on `router`: what is sent to `public` goes to `private`, and what
/// `private` opens leaves from `public` (answers follow each connection's translation).
fn one_to_one(router: &str, public: Ipv4Addr, private: Ipv4Addr) -> Result<()> {
    let (public, private) = (public.to_string(), private.to_string());
    run(netns(router, "iptables").args([
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        &public,
        "-j",
        "DNAT",
        "--to-destination",
        &private,
    ]))?;
    run(netns(router, "iptables").args([
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        &private,
        "-j",
        "SNAT",
        "--to-source",
        &public,
    ]))?;
    Ok(())
}
