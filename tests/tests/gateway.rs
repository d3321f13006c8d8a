//! FTP through a NAT gateway ([`ftp_lab::gateway`]): a client, a Linux router doing NAT
//! with netfilter, and a real server, the server behind the gateway (port forwarding) or the
//! clients behind it (masquerading).
//!
//! - The reference: with the kernel's FTP helper (`nf_conntrack_ftp` and `nf_nat_ftp`,
//!   assigned to port 21 by rule), every server with every client in every IPv4 mode the
//!   client can be forced to use transfers the file intact, and the announcement made by
//!   the host behind the gateway (a server's 227, a client's PORT or EPRT) arrives naming
//!   the gateway's public address.
//! - Without any helper, the transfers whose data connection the NAT cannot place fail,
//!   exactly those [`without_helper`] lists and for the reasons it gives, and every
//!   announcement arrives as its host made it.
//! - With ftp-loader's NAT mode (`--nat-inside`) on the gateway instead of the helper, every
//!   transfer passes as with the helper, the announcements arrive rewritten, each data
//!   connection is admitted through an expectation, and a listener behind the gateway that
//!   no session announced stays out of the client's reach although the passive ports are
//!   forwarded to it. Where the gateway forwards only port 21, or the clients are behind
//!   it, ftp-loader translates the data connection to the public address itself, as
//!   `nf_nat_ftp`'s expectation does; where netfilter forwards the passive ports as well,
//!   its translation comes first and netfilter's rule finds nothing left to do.
//! - IPv6 crosses the gateway routed: passive and active transfers pass untouched, with and
//!   without ftp-loader in the gateway.
//!
//! Each test prints its table (`cargo test -p ftp-lab --test gateway -- --nocapture` shows
//! those of passing tests too): one cell per transfer, `ok` or `FAIL`, the address the
//! announcement named where it arrived (`-` for EPSV, which names none) and, with
//! ftp-loader, how much `expectations_matched` grew.

use std::{
    collections::BTreeMap,
    fmt::Write,
    net::{IpAddr, TcpListener},
    time::{Duration, Instant},
};

use anyhow::Result;
use ftp_lab::{
    clients::{self, Client, Mode, supports},
    gateway::{
        CLIENT_IP6, ControlCapture, Gateway, INSIDE_HOST, INSIDE_IF, OUTSIDE_HOST, OUTSIDE_IF,
        PUBLIC, Placement, Rules,
    },
    lab::{Family, Lab, UNANNOUNCED, in_netns},
    require_root,
    servers::Server,
};

const HELPER: Rules = Rules {
    forward_passive: false,
    helper: true,
};
const HELPER_PASSIVE_FORWARDED: Rules = Rules {
    forward_passive: true,
    helper: true,
};
const NO_HELPER: Rules = Rules {
    forward_passive: false,
    helper: false,
};
const NO_HELPER_PASSIVE_FORWARDED: Rules = Rules {
    forward_passive: true,
    helper: false,
};

#[test]
fn server_behind_gateway() {
    reference(
        Placement::ServerBehind,
        &[
            HELPER,
            HELPER_PASSIVE_FORWARDED,
            NO_HELPER,
            NO_HELPER_PASSIVE_FORWARDED,
        ],
    );
}

#[test]
fn clients_behind_gateway() {
    // Forwarding ports to the server means nothing when the server is outside.
    reference(Placement::ClientsBehind, &[HELPER, NO_HELPER]);
}

#[test]
fn tracker_server_behind_gateway() {
    with_tracker(Placement::ServerBehind, NO_HELPER_PASSIVE_FORWARDED);
}

#[test]
fn tracker_server_behind_gateway_port_21_only() {
    with_tracker(Placement::ServerBehind, NO_HELPER);
}

#[test]
fn tracker_clients_behind_gateway() {
    with_tracker(Placement::ClientsBehind, NO_HELPER);
}

#[test]
fn ipv6_routed_through_gateway() {
    ipv6(false);
}

/// Also the regression test of a control connection routed through two guarded
/// interfaces: its SYN, seen again leaving the second, once made ControlState::open forget
/// the path its arrival set, and the client's next segments were dropped as off-path.
#[test]
fn ipv6_routed_through_tracker() {
    ipv6(true);
}

/// Why a transfer fails through the gateway with no FTP helper (and no ftp-loader), or
/// None if it passes: the NAT translates the connections it knows (the control connection,
/// forwarded ports, what the inside host opens) and nothing inside them.
fn without_helper(
    placement: Placement,
    rules: Rules,
    client: Client,
    mode: Mode,
) -> Option<&'static str> {
    match (placement, mode) {
        // The client connects to the public address's passive port, where nothing is
        // forwarded: the gateway itself answers with a RST.
        (Placement::ServerBehind, Mode::Pasv | Mode::Epsv) if !rules.forward_passive => {
            Some("nothing forwards the passive port to the server")
        }
        // curl (--ftp-skip-pasv-ip, its default), ftplib (trust_server_pasv_ipv4_address,
        // off) and lftp (ftp:fix-pasv-address, for a private address from a public server)
        // connect to the control connection's address instead; wget believes the 227.
        (Placement::ServerBehind, Mode::Pasv) if client == Client::Wget => {
            Some("wget connects to the private address the 227 names")
        }
        // The client announces its own, public address, and the server's connection
        // leaves masqueraded; EPSV names no address, and the port is forwarded.
        (Placement::ServerBehind, _) => None,
        // The client connects out, masqueraded, to the address its server announced.
        (Placement::ClientsBehind, Mode::Pasv | Mode::Epsv) => None,
        // The server sees the control connection come from the public address: vsftpd,
        // pure-ftpd and pyftpdlib refuse a PORT or EPRT naming another (against data
        // connection theft); proftpd, given a private address by a public peer, connects
        // to the peer's address instead, where nothing is forwarded. None could reach the
        // private address anyway.
        (Placement::ClientsBehind, Mode::Port | Mode::Eprt) => {
            Some("the client announces its private address")
        }
    }
}

/// One transfer and what was seen of it.
struct Transfer {
    result: Result<usize>,
    /// The address the announcement named where it arrived (the 227 at the client, the
    /// PORT or EPRT at the server); None for EPSV, or if none was seen.
    announced: Option<String>,
    /// How much ftp-loader's `expectations_matched` grew meanwhile, if it runs.
    matched: Option<u64>,
    /// Whether the capture read every byte of the control connection in both directions
    /// (a rewrite that changes a length must renumber what follows).
    intact: bool,
}

/// One table: the transfers of each server, client and mode (the rows) under each of the
/// gateway's configurations (the columns).
struct Table {
    title: String,
    columns: Vec<Rules>,
    /// The columns' headings: their rules, unless a test says otherwise.
    labels: Vec<String>,
    cells: BTreeMap<(usize, usize), Transfer>,
    rows: Vec<(Server, Client, Mode)>,
}

impl Table {
    fn new(title: String, columns: &[Rules]) -> Self {
        Self {
            title,
            columns: columns.to_vec(),
            labels: columns.iter().map(Rules::to_string).collect(),
            cells: BTreeMap::new(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, row: (Server, Client, Mode)) -> usize {
        if let Some(index) = self.rows.iter().position(|r| *r == row) {
            return index;
        }
        self.rows.push(row);
        self.rows.len() - 1
    }

    fn add(&mut self, row: (Server, Client, Mode), column: usize, transfer: Transfer) {
        let row = self.row(row);
        self.cells.insert((row, column), transfer);
    }

    /// Every transfer with its row, its column's rules and heading.
    fn transfers(&self) -> impl Iterator<Item = ((Server, Client, Mode), Rules, &str, &Transfer)> {
        self.cells.iter().map(|(&(row, column), transfer)| {
            (
                self.rows[row],
                self.columns[column],
                self.labels[column].as_str(),
                transfer,
            )
        })
    }

    fn render(&self) -> String {
        let mut out = format!(
            "\n{}\n{:<10} {:<7} {:<5}",
            self.title, "server", "client", "mode"
        );
        for label in &self.labels {
            let _ = write!(out, " {label:<20}");
        }
        out.push('\n');
        for (index, (server, client, mode)) in self.rows.iter().enumerate() {
            let _ = write!(out, "{server:<10} {client:<7} {mode:<5}");
            for column in 0..self.columns.len() {
                let cell = self.cells.get(&(index, column)).map_or(String::new(), |t| {
                    let verdict = if t.result.is_ok() { "ok" } else { "FAIL" };
                    let matched = t.matched.map_or(String::new(), |m| format!(" +{m}"));
                    format!(
                        "{verdict} {}{matched}",
                        t.announced.as_deref().unwrap_or("-")
                    )
                });
                let _ = write!(out, " {cell:<20}");
            }
            out.push('\n');
        }
        let failures: Vec<String> = self
            .transfers()
            .filter_map(|((server, client, mode), _, label, t)| {
                let error = t.result.as_ref().err()?;
                Some(format!("  {label} {server} {client} {mode}: {error:#}"))
            })
            .collect();
        if !failures.is_empty() {
            let _ = write!(out, "failures:\n{}\n", failures.join("\n"));
        }
        out
    }
}

/// Every client and mode over IPv4, as far as the client can be forced to use the mode.
fn ipv4_transfers() -> Vec<(Client, Mode)> {
    Client::ALL
        .into_iter()
        .flat_map(|client| Mode::ALL.map(|mode| (client, mode)))
        .filter(|&(client, mode)| supports(client, Family::V4, mode))
        .collect()
}

/// Downloads the lab's file, reading the announcement where it arrives: the server's reply
/// at the client, the client's command at the server.
fn transfer(lab: &Lab, client: Client, family: Family, mode: Mode, tracker: bool) -> Transfer {
    let capture = if mode.passive() {
        ControlCapture::client(lab)
    } else {
        ControlCapture::server(lab)
    }
    .expect("starting the capture");
    let before = tracker.then(|| matched(lab));
    let result = clients::download(lab, client, family, mode);
    let matched = before.map(|before| matched(lab) - before);
    let conversations = capture.conversations().expect("reading the capture");
    let announced = conversations
        .iter()
        .find_map(|conversation| conversation.announced(mode.command()));
    let intact = conversations
        .iter()
        .all(|c| !c.commands.contains("[gap]") && !c.replies.contains("[gap]"));
    Transfer {
        result,
        announced,
        matched,
        intact,
    }
}

/// ftp-loader's `expectations_matched`.
fn matched(lab: &Lab) -> u64 {
    let stats = lab.stats().expect("ftp-loader stats");
    stats["expectations_matched"]
}

/// Whether the host that announces the data connection's address in `mode` (the server
/// in the passive modes, the client in the active ones) is the one behind the gateway.
fn announcer_is_inside(placement: Placement, mode: Mode) -> bool {
    mode.passive() == (placement == Placement::ServerBehind)
}

/// What is wrong with how `t`'s control connection arrived (`what`: its row): an
/// announcement naming another address than `announcement`, or bytes missing.
fn arrival_faults(wrong: &mut Vec<String>, what: &str, announcement: Option<String>, t: &Transfer) {
    if t.announced != announcement {
        wrong.push(format!(
            "  {what}: the announcement arrived naming {:?}, not {announcement:?}",
            t.announced
        ));
    }
    if !t.intact {
        wrong.push(format!(
            "  {what}: bytes of the control connection never arrived"
        ));
    }
}

/// The address an announcement names where it arrives: the announcer's own, unless it
/// is behind the gateway and something there (the kernel's helper, ftp-loader) rewrites it
/// to the public address.
fn expected_announcement(placement: Placement, mode: Mode, rewritten: bool) -> Option<String> {
    if mode == Mode::Epsv {
        return None;
    }
    let address = match (announcer_is_inside(placement, mode), rewritten) {
        (true, true) => PUBLIC,
        (true, false) => INSIDE_HOST,
        (false, _) => OUTSIDE_HOST,
    };
    Some(address.to_string())
}

/// Runs every server, client and IPv4 mode through the gateway under each of `columns`,
/// and checks the reference's outcome: with the helper, everything passes and the inside
/// host's announcements arrive rewritten; without it, exactly what [`without_helper`] says
/// fails, and nothing is rewritten.
fn reference(placement: Placement, columns: &[Rules]) {
    require_root();
    let started = Instant::now();
    let mut table = Table::new(format!("{placement}, IPv4"), columns);
    for server in Server::ALL {
        let mut gateway =
            Gateway::new(&format!("gw-{}", server.name()), placement).expect("gateway lab");
        server.start(&mut gateway.lab).expect("starting the server");
        for (column, &rules) in columns.iter().enumerate() {
            gateway.set_rules(rules).expect("netfilter rules");
            for (client, mode) in ipv4_transfers() {
                let transfer = transfer(&gateway.lab, client, Family::V4, mode, false);
                table.add((server, client, mode), column, transfer);
            }
        }
    }
    let rendered = table.render();
    eprintln!("{rendered}({:.0} s)", started.elapsed().as_secs_f64());

    let mut wrong = Vec::new();
    for ((server, client, mode), rules, _, t) in table.transfers() {
        let expected = if rules.helper {
            None
        } else {
            without_helper(placement, rules, client, mode)
        };
        match (&t.result, expected) {
            (Ok(_), Some(why)) => wrong.push(format!(
                "  {rules} {server} {client} {mode} passed, but should fail: {why}"
            )),
            (Err(e), None) => {
                wrong.push(format!("  {rules} {server} {client} {mode} failed: {e:#}"))
            }
            _ => {}
        }
        arrival_faults(
            &mut wrong,
            &format!("{rules} {server} {client} {mode}"),
            expected_announcement(placement, mode, rules.helper),
            t,
        );
    }
    assert!(
        wrong.is_empty(),
        "not the reference's outcome:\n{}\n{rendered}",
        wrong.join("\n")
    );
}

/// The reference's transfers with ftp-loader's NAT mode in the gateway under `rules`, with
/// no helper: every one passes as with the helper, the inside host's announcements arrive
/// naming the public address, the control connection arrives whole, and every data
/// connection is admitted through an expectation. With the server behind the gateway, a
/// listener of its in the passive range that no session announced is reachable from the
/// client before the loader starts (the passive ports forwarded) and not once it runs.
fn with_tracker(placement: Placement, rules: Rules) {
    require_root();
    let started = Instant::now();
    let mut table = Table::new(
        format!("{placement}, IPv4, ftp-loader --nat-inside"),
        &[rules],
    );
    let mut wrong = Vec::new();
    for server in Server::ALL {
        let mut gateway =
            Gateway::new(&format!("gwt-{}", server.name()), placement).expect("gateway lab");
        server.start(&mut gateway.lab).expect("starting the server");
        // Kept until the lab goes; a connection it never accepts waits in its queue, which
        // is all reaching it takes.
        let unannounced = (placement == Placement::ServerBehind).then(|| {
            in_netns(&gateway.lab.server_ns, || {
                Ok(TcpListener::bind((INSIDE_HOST, UNANNOUNCED))?)
            })
            .expect("an unannounced listener")
        });
        let reachable = |lab: &Lab| {
            lab.client_connects(PUBLIC.into(), UNANNOUNCED, Duration::from_millis(500))
                .expect("connecting")
        };
        if unannounced.is_some() {
            gateway
                .set_rules(NO_HELPER_PASSIVE_FORWARDED)
                .expect("netfilter rules");
            assert!(
                reachable(&gateway.lab),
                "the listener behind the gateway is out of reach with its port forwarded and no loader: the check below would prove nothing"
            );
        }
        gateway.set_rules(rules).expect("netfilter rules");
        gateway.start_tracker().expect("starting ftp-loader");
        // The start-up lines say what the gateway does where.
        let log = gateway.lab.loader_log();
        for said in [
            format!("what the hosts behind it announce is rewritten on {INSIDE_IF} to {PUBLIC}"),
            format!("{INSIDE_IF}: guard on tc ingress (--nat-inside: rewrites"),
            format!("{OUTSIDE_IF}: guard on tc ingress (NAT gateway: translates"),
        ] {
            assert!(log.contains(&said), "`{said}` missing from:\n{log}");
        }
        for (client, mode) in ipv4_transfers() {
            let transfer = transfer(&gateway.lab, client, Family::V4, mode, true);
            table.add((server, client, mode), 0, transfer);
        }
        if unannounced.is_some() && rules.forward_passive && reachable(&gateway.lab) {
            wrong.push(format!(
                "  {rules} {server}: the unannounced listener behind the gateway was reachable"
            ));
        }
        let failed = table
            .transfers()
            .any(|((s, ..), _, _, t)| s == server && t.result.is_err());
        if failed || !wrong.is_empty() {
            eprintln!(
                "{server}: ftp-loader log:\n{}\ngateway's conntrack:\n{}",
                gateway.lab.loader_log(),
                gateway.conntrack().unwrap_or_default()
            );
        }
    }
    let rendered = table.render();
    eprintln!("{rendered}({:.0} s)", started.elapsed().as_secs_f64());

    for ((server, client, mode), rules, _, t) in table.transfers() {
        if let Err(e) = &t.result {
            wrong.push(format!("  {rules} {server} {client} {mode} failed: {e:#}"));
        }
        arrival_faults(
            &mut wrong,
            &format!("{rules} {server} {client} {mode}"),
            expected_announcement(placement, mode, true),
            t,
        );
        if t.matched == Some(0) {
            wrong.push(format!(
                "  {rules} {server} {client} {mode}: expectations_matched did not grow"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "with ftp-loader in the gateway:\n{}\n{rendered}",
        wrong.join("\n")
    );
}

/// IPv6 crosses the gateway routed, with no NAT and no helper: each client's passive
/// (EPSV) and active (EPRT) transfer from vsftpd behind the gateway passes, the EPRT
/// arriving naming the client's own address; with ftp-loader's NAT mode in the gateway,
/// the same.
fn ipv6(tracker: bool) {
    require_root();
    let mut gateway = Gateway::new("gw6", Placement::ServerBehind).expect("gateway lab");
    Server::Vsftpd
        .start(&mut gateway.lab)
        .expect("starting the server");
    if tracker {
        gateway.start_tracker().expect("starting ftp-loader");
    }
    let mut table = Table::new(
        format!(
            "IPv6 through the gateway, routed{}",
            if tracker {
                ", ftp-loader --nat-inside"
            } else {
                ""
            }
        ),
        &[NO_HELPER],
    );
    // No rule of the gateway's touches IPv6.
    table.labels = vec![if tracker { "routed, tracker" } else { "routed" }.to_owned()];
    for client in Client::ALL {
        for mode in [Mode::Epsv, Mode::Eprt] {
            let transfer = transfer(&gateway.lab, client, Family::V6, mode, false);
            table.add((Server::Vsftpd, client, mode), 0, transfer);
        }
    }
    let rendered = table.render();
    eprintln!("{rendered}");
    if tracker && table.transfers().any(|(.., t)| t.result.is_err()) {
        eprintln!("ftp-loader log:\n{}", gateway.lab.loader_log());
    }
    let client_ip6 = IpAddr::from(CLIENT_IP6).to_string();
    for ((_, client, mode), _, _, t) in table.transfers() {
        assert!(t.result.is_ok(), "{client} {mode} failed:\n{rendered}");
        assert!(
            t.intact,
            "{client} {mode}: bytes of the control connection never arrived"
        );
        if mode == Mode::Eprt {
            assert_eq!(
                t.announced.as_deref(),
                Some(client_ip6.as_str()),
                "{client}'s EPRT arrived altered:\n{rendered}"
            );
        }
    }
}
