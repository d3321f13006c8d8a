//! Crafted FTP control sessions over real TCP between the lab's two namespaces, watched at
//! the same time by ftp-loader (on the server's interface) and by the kernel's own FTP
//! helper, the oracle of the differential tests.
//!
//! The oracle only watches copies. Inline, the kernel helper would change the session it
//! is compared on: it drops every segment in which it finds the start of a command it
//! cannot parse (a `PORT` line ending in a bare LF, the first half of a split line), TCP
//! retransmits that segment in vain, and ftp-loader never sees a dropped reply (its egress
//! hook runs after netfilter). So the client's interface mirrors every frame it sends and
//! receives into a third namespace, where the helper tracks the copies as forwarded traffic
//! and a route into an ifb device (which discards what it is given) ends them.

use std::{
    collections::BTreeSet,
    fmt,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    frame::{ACK, PSH, RST, Random, Tcp},
    inject::{Link, PacketSocket},
    lab::{
        CLIENT_IF, CLIENT_IP, CLIENT_IP6, Family, Lab, LabAddrs, SERVER_IF, SERVER_IP, SERVER_IP6,
        in_netns, netns, run,
    },
};

/// The FTP control port both watchers know.
pub const CONTROL_PORT: u16 = 21;
/// Lets the oracle's namespace finish with a step's copy before the next step: the copy of
/// a reply is queued behind the frame the client reads.
const STEP_PAUSE: Duration = Duration::from_millis(10);
/// A step not delivered by then was dropped, which no watcher may do.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// One `send()` by one end, which travels as one TCP segment, or a segment neither end
/// sent. Templates: `{client}` and `{server}` are the hosts' IPv4 addresses as `PORT` and
/// `227` write them (`192,0,2,2`), `{client_ip}` and `{server_ip}` their addresses in the
/// session's family as `EPRT` writes them (`192.0.2.2`, `2001:db8::2`).
#[derive(Clone, Copy, Debug)]
pub enum Step {
    Client(&'static str),
    Server(&'static str),
    /// Written onto the wire by someone who cannot see the connection's traffic: both
    /// watchers see it, neither end's socket sent it.
    Forged(Forgery),
}

#[derive(Clone, Copy, Debug)]
pub enum Forgery {
    /// The text as the server's, this many bytes past the server's next sequence number,
    /// leaving the server's host.
    ServerAhead(&'static str, u32),
    /// A RST at a random sequence number far from the client's next one, leaving the
    /// client's host.
    ClientReset,
    /// The same as the server's, leaving the server's host.
    ServerReset,
}

/// A data connection an FTP helper expects, in `conntrack -L expect`'s terms: `connector`
/// will connect, from any port, to `listener`:`port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Expectation {
    pub family: Family,
    pub connector: IpAddr,
    pub listener: IpAddr,
    pub port: u16,
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listener = SocketAddr::from((self.listener, self.port));
        write!(f, "{} {} -> {listener}", self.family.name(), self.connector)
    }
}

/// The fake FTP server's listening socket on port 21 of the server, in `family`.
pub fn listen(lab: &Lab, family: Family) -> Result<TcpListener> {
    let listener = in_netns(&lab.server_ns, || {
        TcpListener::bind((family.server_ip(), CONTROL_PORT))
            .with_context(|| format!("binding {}:{CONTROL_PORT}", family.server_ip()))
    })?;
    // Accepting polls, so that a connection that never arrives fails in bounded time.
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Both ends of one FTP control connection: the client in the client's namespace, the
/// server in the server's, joined by real TCP.
pub struct ControlConnection {
    family: Family,
    client: TcpStream,
    server: TcpStream,
    /// Writes forgeries of the client's onto its interface, through its tc egress, where
    /// the oracle's mirror copies them.
    client_forger: PacketSocket,
    /// Writes forgeries of the server's onto its interface, through its tc egress, where
    /// ftp-loader scans them.
    server_forger: PacketSocket,
    /// Reads every segment crossing the server's interface, for the numbers the
    /// forgeries must miss.
    sniffer: PacketSocket,
    link: Link,
    /// The client's and the server's next sequence numbers, as far as seen.
    next: [Option<u32>; 2],
    /// The forgeries' senders and sequence numbers, which the sniffer reads too.
    forged: Vec<(SocketAddr, u32)>,
    /// Made (and its seed printed) at the first forgery.
    random: Option<Random>,
}

impl ControlConnection {
    /// Connects a new client to `listener` (from `listen`) and accepts it.
    pub fn open(lab: &Lab, listener: &TcpListener) -> Result<Self> {
        let server_addr = listener.local_addr()?;
        let family = Family::of(server_addr.ip());
        // Before connecting, so that the sniffer reads the connection from its SYN.
        let sniffer = PacketSocket::sniffer_in(&lab.server_ns, SERVER_IF)?;
        let client_forger = PacketSocket::queued_in(&lab.client_ns, CLIENT_IF)?;
        let server_forger = PacketSocket::queued_in(&lab.server_ns, SERVER_IF)?;
        // A socket stays in the namespace it was made in, whichever thread uses it later.
        let client = in_netns(&lab.client_ns, || {
            TcpStream::connect_timeout(&server_addr, DELIVERY_TIMEOUT)
                .with_context(|| format!("connecting to {server_addr}"))
        })?;
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let server = loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    ensure!(
                        peer == client.local_addr()?,
                        "a stray connection from {peer}"
                    );
                    break stream;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e).context("accepting the control connection"),
            }
        };
        server.set_nonblocking(false)?;
        for stream in [&client, &server] {
            // Each step leaves at once, in a segment of its own.
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(DELIVERY_TIMEOUT))?;
        }
        Ok(Self {
            family,
            client,
            server,
            client_forger,
            server_forger,
            sniffer,
            link: Link::find(lab)?,
            next: [None; 2],
            forged: Vec::new(),
            random: None,
        })
    }

    pub fn ends(&self) -> Result<Ends> {
        Ok(Ends {
            client: self.client.local_addr()?,
            server: self.server.local_addr()?,
        })
    }

    /// Sends the steps in order, each as one `send()` that the other end reads in full
    /// before the next: so each step is one TCP segment, and a step split in two is two.
    pub fn play(&mut self, steps: &[Step]) -> Result<()> {
        for (index, step) in steps.iter().enumerate() {
            let (text, from, to) = match step {
                Step::Client(text) => (text, &mut self.client, &mut self.server),
                Step::Server(text) => (text, &mut self.server, &mut self.client),
                Step::Forged(forgery) => {
                    self.forge(*forgery)
                        .with_context(|| format!("step {index} ({step:?})"))?;
                    std::thread::sleep(STEP_PAUSE);
                    continue;
                }
            };
            let bytes = render(text, self.family).into_bytes();
            let sent = from.write(&bytes)?;
            ensure!(sent == bytes.len(), "step {index} left in pieces");
            let mut received = vec![0; bytes.len()];
            to.read_exact(&mut received).with_context(|| {
                format!("step {index} ({step:?}) was not delivered: something dropped it")
            })?;
            ensure!(received == bytes, "step {index} arrived altered");
            std::thread::sleep(STEP_PAUSE);
        }
        Ok(())
    }

    /// Writes a forged segment onto the link, numbered from what the sniffer saw of the
    /// connection.
    fn forge(&mut self, forgery: Forgery) -> Result<()> {
        let ends = self.ends()?;
        for (src, dst, segment) in self.sniffer.segments()? {
            if self.forged.contains(&(src, segment.seq)) {
                continue;
            }
            let sender = if (src, dst) == (ends.client, ends.server) {
                0
            } else if (src, dst) == (ends.server, ends.client) {
                1
            } else {
                continue;
            };
            let end = segment.seq_end();
            // Sequence numbers wrap: the later is the one less than 2^31 ahead.
            if self.next[sender].is_none_or(|next| (end.wrapping_sub(next) as i32) > 0) {
                self.next[sender] = Some(end);
            }
        }
        let [Some(client_next), Some(server_next)] = self.next else {
            bail!("the sniffer saw no segment of both ends");
        };
        let from_client = Tcp::new(
            ends.client.ip(),
            ends.client.port(),
            ends.server.ip(),
            ends.server.port(),
            RST,
        );
        let from_server = Tcp::new(
            ends.server.ip(),
            ends.server.port(),
            ends.client.ip(),
            ends.client.port(),
            RST,
        );
        let far = self.random.get_or_insert_with(Random::new).far();
        let (forger, macs, segment, text) = match forgery {
            Forgery::ServerAhead(text, ahead) => (
                &self.server_forger,
                self.link.to_client(),
                Tcp {
                    flags: PSH | ACK,
                    ..from_server
                }
                .seq(server_next.wrapping_add(ahead))
                .ack(client_next),
                render(text, self.family),
            ),
            Forgery::ClientReset => (
                &self.client_forger,
                self.link.to_server(),
                from_client.seq(client_next.wrapping_add(far)),
                String::new(),
            ),
            Forgery::ServerReset => (
                &self.server_forger,
                self.link.to_client(),
                from_server.seq(server_next.wrapping_add(far)),
                String::new(),
            ),
        };
        self.forged.push((
            SocketAddr::from((segment.src, segment.src_port)),
            segment.seq,
        ));
        forger.send(&segment.frame_on(macs, text.as_bytes()))
    }

    /// Ends the connection as FTP does: each end closes and sees the other's FIN.
    pub fn close(self) -> Result<()> {
        for (from, mut to) in [(&self.client, &self.server), (&self.server, &self.client)] {
            from.shutdown(Shutdown::Write)?;
            let mut rest = Vec::new();
            to.read_to_end(&mut rest)
                .context("waiting for the control connection's FIN")?;
        }
        std::thread::sleep(STEP_PAUSE);
        Ok(())
    }
}

/// A control connection's two ends, which tell it from every other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl Ends {
    /// What ftp-loader expects for this control connection.
    pub fn tracker_expectations(self, lab: &Lab) -> Result<BTreeSet<Expectation>> {
        let ends = BTreeSet::from([self.client, self.server]);
        let listing = lab.loader_json("expectations")?;
        let mut found = BTreeSet::new();
        for entry in listing.as_array().context("expectations is not an array")? {
            let control = &entry["control"];
            let endpoint = |ip: &str, port: &str| -> Result<SocketAddr> {
                Ok(SocketAddr::from((
                    text(&control[ip])?.parse::<IpAddr>()?,
                    number(&control[port])?,
                )))
            };
            if BTreeSet::from([endpoint("src", "src_port")?, endpoint("dst", "dst_port")?]) != ends
            {
                continue;
            }
            found.insert(Expectation {
                family: parse_family(text(&entry["family"])?)?,
                connector: text(&entry["connector"])?.parse()?,
                listener: text(&entry["listener"])?.parse()?,
                port: number(&entry["port"])?,
            });
        }
        Ok(found)
    }
}

fn text(value: &serde_json::Value) -> Result<&str> {
    value
        .as_str()
        .with_context(|| format!("{value} is not a string"))
}

fn number(value: &serde_json::Value) -> Result<u16> {
    Ok(u16::try_from(
        value
            .as_u64()
            .with_context(|| format!("{value} is not a number"))?,
    )?)
}

fn render(template: &str, family: Family) -> String {
    let comma = |ip: IpAddr| ip.to_string().replace('.', ",");
    template
        .replace("{client}", &comma(CLIENT_IP.into()))
        .replace("{server}", &comma(SERVER_IP.into()))
        .replace("{client_ip}", &family.client_ip().to_string())
        .replace("{server_ip}", &family.server_ip().to_string())
}

/// The kernel's FTP helper watching copies of every frame the lab's client sends and
/// receives, in a namespace of its own.
pub struct KernelOracle {
    ns: String,
}

/// Interface names in the oracle's plumbing: a veth pair for the client's commands, one for
/// the server's replies, and the ifb that discards the copies once tracked.
const COMMANDS_MIRROR: (&str, &str) = ("orcc0", "orcc1");
const REPLIES_MIRROR: (&str, &str) = ("orcr0", "orcr1");
const SINK: &str = "sink";

impl KernelOracle {
    pub fn attach(lab: &mut Lab) -> Result<Self> {
        let ns = lab.add_namespace("oracle")?;
        let client = &lab.client_ns;
        // A copy reaches the stack only when its destination MAC is the receiving
        // interface's: commands are addressed to the server's MAC, replies to the client's.
        let link = Link::find(lab)?;
        let (server_mac, client_mac) = (mac_text(link.server_mac), mac_text(link.client_mac));
        run_line(&format!("tc -n {client} qdisc add dev {CLIENT_IF} clsact"))?;
        for ((near, far), mac, direction) in [
            (COMMANDS_MIRROR, &server_mac, "egress"),
            (REPLIES_MIRROR, &client_mac, "ingress"),
        ] {
            run_line(&format!(
                "ip link add {near} netns {client} type veth peer name {far} netns {ns} address {mac}"
            ))?;
            // The client's end only sends copies; without IPv6 it takes in nothing the
            // oracle's end sends back (router solicitations).
            run_line(&format!(
                "ip netns exec {client} sysctl -qw net.ipv6.conf.{near}.disable_ipv6=1"
            ))?;
            run_line(&format!("ip -n {client} link set {near} up"))?;
            run_line(&format!("ip -n {ns} link set {far} up"))?;
            // matchall and skbedit are not built into this kernel; u32 and mirred are.
            run_line(&format!(
                "tc -n {client} filter add dev {CLIENT_IF} {direction} protocol all \
                 u32 match u32 0 0 action mirred egress mirror dev {near}"
            ))?;
        }
        run_line(&format!("ip -n {ns} link add {SINK} type ifb"))?;
        run_line(&format!("ip -n {ns} link set {SINK} up"))?;
        for host in [
            IpAddr::from(SERVER_IP),
            CLIENT_IP.into(),
            SERVER_IP6.into(),
            CLIENT_IP6.into(),
        ] {
            run_line(&format!("ip -n {ns} route add {host} dev {SINK}"))?;
        }
        // Copies arrive on one interface and leave by the sink, which strict reverse-path
        // filtering would take for spoofing.
        let mut sysctls = String::from("net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
        for interface in ["all", "default", COMMANDS_MIRROR.1, REPLIES_MIRROR.1] {
            sysctls += &format!(" net.ipv4.conf.{interface}.rp_filter=0");
        }
        run_line(&format!("ip netns exec {ns} sysctl -qw {sysctls}"))?;
        // As TOOLCHAIN.md says: the helper is attached by rule, on the connection's first
        // packet; it then sees both directions.
        for iptables in ["iptables", "ip6tables"] {
            run_line(&format!(
                "ip netns exec {ns} {iptables} -t raw -A PREROUTING -p tcp \
                 --dport {CONTROL_PORT} -j CT --helper ftp"
            ))?;
        }
        Ok(Self { ns })
    }

    /// What the kernel helper expects for the control connection with these ends.
    pub fn expectations(&self, ends: Ends) -> Result<BTreeSet<Expectation>> {
        let master = (ends.client, ends.server);
        let mut found = BTreeSet::new();
        for family in ["ipv4", "ipv6"] {
            let output = run(netns(&self.ns, "conntrack").args(["-L", "expect", "-f", family]))?;
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let (expectation, line_master) =
                    parse_expect_line(line).with_context(|| format!("conntrack line {line:?}"))?;
                if line_master == master {
                    found.insert(expectation);
                }
            }
        }
        Ok(found)
    }

    /// Forgets every expectation, so that the next session meets no clash with an earlier
    /// session's (the kernel refuses an expectation another connection already holds).
    pub fn flush(&self) -> Result<()> {
        run(netns(&self.ns, "conntrack").args(["-F", "expect"]))?;
        Ok(())
    }
}

/// One line of `conntrack -L expect`:
/// `299 proto=6 src=A dst=B sport=0 dport=P mask-src=.. mask-dst=.. sport=0 dport=65535
/// master-src=C master-dst=D sport=.. dport=21 class=0 helper=ftp`: the expectation (`A`
/// connects to `B`:`P`) and its control connection, client end first.
fn parse_expect_line(line: &str) -> Result<(Expectation, (SocketAddr, SocketAddr))> {
    // `sport`/`dport` appear once per part, and the part is told by the address keys
    // before them.
    let mut part = "";
    let mut values = std::collections::BTreeMap::new();
    for (key, value) in line.split_whitespace().filter_map(|t| t.split_once('=')) {
        let key = match key {
            "mask-src" | "master-src" => {
                part = key.trim_end_matches("src");
                key.to_owned()
            }
            "sport" | "dport" => format!("{part}{key}"),
            _ => key.to_owned(),
        };
        values.insert(key, value);
    }
    let get = |key: &str| {
        values
            .get(key)
            .copied()
            .with_context(|| format!("no {key}"))
    };
    let ip = |key: &str| -> Result<IpAddr> { Ok(get(key)?.parse()?) };
    let port = |key: &str| -> Result<u16> { Ok(get(key)?.parse()?) };
    ensure!(get("proto")? == "6", "not TCP");
    let connector = ip("src")?;
    let expectation = Expectation {
        family: Family::of(connector),
        connector,
        listener: ip("dst")?,
        port: port("dport")?,
    };
    let master = (
        SocketAddr::from((ip("master-src")?, port("master-sport")?)),
        SocketAddr::from((ip("master-dst")?, port("master-dport")?)),
    );
    Ok((expectation, master))
}

/// Runs a command line whose words hold no spaces.
fn run_line(line: &str) -> Result<()> {
    let mut words = line.split_whitespace();
    let program = words.next().context("an empty command line")?;
    run(Command::new(program).args(words))?;
    Ok(())
}

/// As `ip link` writes a MAC address.
fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

fn parse_family(name: &str) -> Result<Family> {
    name.parse()
        .map_err(|()| anyhow::anyhow!("unknown family {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_expect_lines_are_read() {
        let line = "298 proto=6 src=192.0.2.1 dst=192.0.2.2 sport=0 dport=10000 \
            mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 \
            master-src=192.0.2.2 master-dst=192.0.2.1 sport=53578 dport=21 class=0 helper=ftp";
        let (expectation, master) = parse_expect_line(line).unwrap();
        assert_eq!(
            expectation,
            Expectation {
                family: Family::V4,
                connector: SERVER_IP.into(),
                listener: CLIENT_IP.into(),
                port: 10000,
            }
        );
        assert_eq!(
            master,
            (
                SocketAddr::from((CLIENT_IP, 53578)),
                SocketAddr::from((SERVER_IP, 21))
            )
        );
        let line = "299 proto=6 src=2001:db8::2 dst=2001:db8::1 sport=0 dport=10000 \
            mask-src=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
            mask-dst=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff sport=0 dport=65535 \
            master-src=2001:db8::2 master-dst=2001:db8::1 sport=58292 dport=21 class=0 helper=ftp";
        let (expectation, master) = parse_expect_line(line).unwrap();
        assert_eq!(
            expectation.to_string(),
            "ipv6 2001:db8::2 -> [2001:db8::1]:10000"
        );
        assert_eq!(master.0, SocketAddr::from((CLIENT_IP6, 58292)));
    }

    #[test]
    fn addresses_are_written_in_each_dialect() {
        assert_eq!(
            render("PORT {client},4,1 227 ({server},4,1)", Family::V6),
            "PORT 192,0,2,2,4,1 227 (192,0,2,1,4,1)"
        );
        assert_eq!(
            render("EPRT |2|{client_ip}|1025| {server_ip}", Family::V6),
            "EPRT |2|2001:db8::2|1025| 2001:db8::1"
        );
        assert_eq!(
            render("EPRT |1|{client_ip}|1025|", Family::V4),
            "EPRT |1|192.0.2.2|1025|"
        );
    }
}
