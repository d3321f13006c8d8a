//! Hosts behind 1:1 NAT (`--public-address`): each real FTP server runs behind a router
//! that translates its public address to its own with netfilter alone, no FTP helper
//! ([`ftp_lab::nat`]), and announces the public address in its PASV replies as it must be
//! configured to there. ftp-loader guards the server's interface:
//!
//! - without `--public-address` it refuses the 227 naming the public address as another
//!   host's (`address_mismatch`) and the passive transfer fails: the lab exercises the
//!   mapping;
//! - with `--public-address PUBLIC`, every client in every mode it can be forced to use over
//!   IPv4 downloads the file intact, each transfer is a matched expectation, and the
//!   unannounced listener stays unreachable through the NAT. In active mode the client's
//!   PORT or EPRT names the client's own address, which this NAT does not translate: it
//!   passes unchanged, nothing is refused, and the server's connection to that address is
//!   a matched expectation;
//! - with `--public-address PUBLIC=LOCAL`, a passive transfer is admitted as well.
//!
//! Then the client goes behind the NAT too, guarded by a loader of its own: a client that
//! announces its public address in PORT and EPRT is refused without `--public-address`
//! (the server's connection to its listener, in the guarded range, is dropped) and admitted
//! with it. Last, nothing on the router shows an FTP helper took part.
//!
//! One test and one lab per server, so the servers run in parallel; each prints its table
//! (`cargo test -p ftp-lab --test nat -- --nocapture` shows those of passing ones too).

use std::{fmt::Write, time::Instant};

use anyhow::Result;
use ftp_lab::{
    clients::{self, Client, Mode, supports},
    lab::{CLIENT_IF, Family, Lab, SERVER_IP, UNANNOUNCED, default_loader_bin},
    nat::{CLIENT_PUBLIC_IP, PUBLIC_IP},
    require_root,
    servers::Server,
};

#[test]
fn vsftpd() {
    behind_nat(Server::Vsftpd);
}

#[test]
fn proftpd() {
    behind_nat(Server::Proftpd);
}

#[test]
fn pure_ftpd() {
    behind_nat(Server::PureFtpd);
}

#[test]
fn pyftpdlib() {
    behind_nat(Server::Pyftpdlib);
}

/// The client's listeners when it announces its public address: in the guarded range
/// (`--data-ports`, 1024-65535 in the lab as by default), so only an admitted connection
/// reaches them, and below the kernel's ephemeral ports (32768 and up), where no
/// connection of the client's own holds them. One per case, so that a refused case's
/// server, still retrying its connection, cannot take a later case's expectation.
const CLIENT_DATA_PORTS: [u16; 3] = [20000, 20001, 20002];

/// What a transfer must show.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The file arrives intact, its data connection a matched expectation, with no
    /// announcement refused.
    Admitted,
    /// The announcement is refused as another host's, the data connection dropped, and
    /// the transfer does not complete.
    Refused,
}

struct Row {
    /// Where the loader runs, and its `--public-address` (empty: none).
    guard: &'static str,
    option: String,
    client: &'static str,
    mode: Mode,
    expect: Expect,
    transfer: Result<usize>,
    delta: Counters,
    /// `Some(reachable)` where the guarded host is the server: whether the unannounced
    /// listener answered the client through the NAT after the transfer.
    unannounced: Option<bool>,
}

impl Row {
    /// Why the row is not what it should be, if it is not.
    fn failure(&self) -> Option<String> {
        let Counters {
            matched,
            mismatch,
            dropped,
        } = self.delta;
        if self.unannounced == Some(true) {
            return Some(format!(
                "the unannounced listener on port {UNANNOUNCED} answered through the NAT"
            ));
        }
        match self.expect {
            Expect::Admitted => match &self.transfer {
                Err(e) => Some(format!("{e:#}")),
                Ok(_) if matched == 0 => Some(
                    "the file arrived, but expectations_matched did not grow: the tracker did \
                     not take the data connection for the announced one"
                        .into(),
                ),
                Ok(_) if mismatch > 0 => Some(format!("{mismatch} announcement(s) refused")),
                Ok(_) => None,
            },
            Expect::Refused => match &self.transfer {
                Ok(_) => Some("the transfer completed".into()),
                Err(_) if mismatch == 0 => {
                    Some("the transfer failed, but address_mismatch did not grow".into())
                }
                Err(_) if matched > 0 || dropped == 0 => Some(format!(
                    "the data connection was not dropped (+{matched} matched, +{dropped} \
                     dropped)"
                )),
                Err(_) => None,
            },
        }
    }
}

fn behind_nat(server: Server) {
    require_root();
    let started = Instant::now();
    let mut lab = Lab::behind_nat(server.name(), &default_loader_bin()).expect("lab");
    server
        .start_masquerading(&mut lab, PUBLIC_IP)
        .expect("starting the server");
    lab.start_listener(UNANNOUNCED).expect("a listener");
    // Unguarded, the router passes the client's connection: the probe can tell.
    assert!(
        lab.unannounced_reachable(),
        "the listener on port {UNANNOUNCED} is unreachable through the NAT with no guard"
    );
    let public = PUBLIC_IP.to_string();
    let mapped = format!("{PUBLIC_IP}={SERVER_IP}");
    let client_public = CLIENT_PUBLIC_IP.to_string();
    let mut rows = Vec::new();

    // A server guarded on its own interface, each loader option in turn, the refusal first.
    for (option, cases) in [
        ("", vec![(Client::Curl, Mode::Pasv)]),
        (public.as_str(), ipv4_cases()),
        (mapped.as_str(), vec![(Client::Curl, Mode::Pasv)]),
    ] {
        let expect = if option.is_empty() {
            Expect::Refused
        } else {
            Expect::Admitted
        };
        lab.start_loader(&public_address(option))
            .expect("starting ftp-loader");
        if let Some(public) = option.split('=').next().filter(|p| !p.is_empty()) {
            // The start-up line states the mapping.
            let log = lab.loader_log();
            assert!(
                log.contains(&format!(
                    "behind 1:1 NAT, this host's announcements of {public} (expected at "
                )),
                "{log}"
            );
        }
        for (client, mode) in cases {
            let (transfer, delta) =
                measured(&lab, || clients::download(&lab, client, Family::V4, mode));
            rows.push(Row {
                guard: "server",
                option: option.to_owned(),
                client: client.name(),
                mode,
                expect,
                transfer,
                delta,
                unannounced: Some(lab.unannounced_reachable()),
            });
        }
        lab.stop_loader().expect("stopping ftp-loader");
    }

    // The client behind the NAT as well, announcing its public address, guarded on its own
    // interface: without the option, then with it.
    lab.nat_client().expect("translating the client");
    let client_ns = lab.client_ns.clone();
    let mut ports = CLIENT_DATA_PORTS.into_iter();
    for (option, modes) in [
        ("", [Mode::Port].as_slice()),
        (client_public.as_str(), &[Mode::Port, Mode::Eprt]),
    ] {
        lab.start_loader_in(&client_ns, &[CLIENT_IF], &public_address(option))
            .expect("starting ftp-loader on the client");
        for &mode in modes {
            let port = ports.next().expect("a port for each case");
            let (transfer, delta) = measured(&lab, || {
                clients::download_announcing(&lab, mode, CLIENT_PUBLIC_IP, port)
            });
            rows.push(Row {
                guard: "client",
                option: option.to_owned(),
                client: "ftplib*",
                mode,
                expect: if option.is_empty() {
                    Expect::Refused
                } else {
                    Expect::Admitted
                },
                transfer,
                delta,
                unannounced: None,
            });
        }
        lab.stop_loader().expect("stopping ftp-loader");
    }

    println!(
        "{}({server}: {:.1} s)",
        table(server, &rows),
        started.elapsed().as_secs_f64()
    );
    let mut failures: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let why = row.failure()?;
            Some(format!(
                "  {server} {} {} {}, guard on the {} with --public-address {:?}: {why}",
                row.client,
                row.mode,
                label(row.expect),
                row.guard,
                row.option
            ))
        })
        .collect();
    let traces = lab
        .nat_helper_traces()
        .expect("reading the router's conntrack");
    if !traces.is_empty() {
        failures.push(format!(
            "  an FTP helper took part on the router:\n{traces}"
        ));
    }
    let log = server.log(&lab);
    let log: Vec<&str> = log.lines().collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases with {server} behind NAT failed:\n{}\n\nlast ftp-loader log:\n{}\n{server} log, last lines:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n"),
        lab.loader_log(),
        log[log.len().saturating_sub(20)..].join("\n"),
    );
}

/// Every client with every mode it can be forced to use over IPv4.
fn ipv4_cases() -> Vec<(Client, Mode)> {
    Client::ALL
        .into_iter()
        .flat_map(|client| Mode::ALL.map(|mode| (client, mode)))
        .filter(|&(client, mode)| supports(client, Family::V4, mode))
        .collect()
}

/// The loader's arguments for `--public-address option` (none for an empty one).
fn public_address(option: &str) -> Vec<&str> {
    if option.is_empty() {
        vec![]
    } else {
        vec!["--public-address", option]
    }
}

/// The counters a case is judged by.
#[derive(Clone, Copy, Default)]
struct Counters {
    matched: u64,
    mismatch: u64,
    dropped: u64,
}

impl Counters {
    fn read(lab: &Lab) -> Self {
        let stats = lab.stats().expect("ftp-loader stats");
        let counter = |name: &str| {
            *stats
                .get(name)
                .unwrap_or_else(|| panic!("ftp-loader stats has no {name}: {stats:?}"))
        };
        Self {
            matched: counter("expectations_matched"),
            mismatch: counter("address_mismatch"),
            dropped: counter("unsolicited_dropped"),
        }
    }
}

/// Runs a transfer and returns its result and how much the counters grew meanwhile.
fn measured(lab: &Lab, transfer: impl FnOnce() -> Result<usize>) -> (Result<usize>, Counters) {
    let before = Counters::read(lab);
    let result = transfer();
    let after = Counters::read(lab);
    let delta = Counters {
        matched: after.matched - before.matched,
        mismatch: after.mismatch - before.mismatch,
        dropped: after.dropped - before.dropped,
    };
    (result, delta)
}

fn label(expect: Expect) -> &'static str {
    match expect {
        Expect::Admitted => "admitted",
        Expect::Refused => "refused",
    }
}

fn table(server: Server, rows: &[Row]) -> String {
    let mut out = format!(
        "\n{:<10} {:<6} {:<29} {:<7} {:<4} {:<8} {:<6} {:>7} {:>8} {:>7}  detail\n",
        "server",
        "guard",
        "--public-address",
        "client",
        "mode",
        "expected",
        "result",
        "matched",
        "mismatch",
        "dropped"
    );
    for row in rows {
        let (result, detail) = match (row.failure(), &row.transfer) {
            (Some(why), _) => ("FAILED", why),
            (None, Ok(bytes)) => ("ok", format!("{bytes} bytes, identical")),
            (None, Err(e)) => ("ok", format!("failed as it must: {e:#}")),
        };
        let option = if row.option.is_empty() {
            "(none)"
        } else {
            &row.option
        };
        let _ = writeln!(
            out,
            "{server:<10} {:<6} {option:<29} {:<7} {:<4} {:<8} {result:<6} {:>7} {:>8} {:>7}  {detail}",
            row.guard,
            row.client,
            row.mode,
            label(row.expect),
            format!("+{}", row.delta.matched),
            format!("+{}", row.delta.mismatch),
            format!("+{}", row.delta.dropped),
        );
    }
    out.push_str(
        "(ftplib*: a client behind NAT announcing its public address, \
         clients::download_announcing)\n",
    );
    out
}
