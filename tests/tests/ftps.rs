//! FTPS (FTP over TLS, RFC 4217) in the lab: real FTPS sessions between the namespaces, the
//! ground the tracker's FTPS support will stand on.
//!
//! - Without the tracker, every FTPS server of the lab (vsftpd, proftpd with mod_tls,
//!   pure-ftpd), each requiring TLS, serves every client in every mode the client can be
//!   forced to use in FTPS ([`supports_tls`]), over IPv4 and IPv6: explicit FTPS (AUTH
//!   TLS), implicit FTPS (port 990) where the server has it, and explicit FTPS whose
//!   control connection the client clears with CCC after logging in, where the server
//!   accepts it. Every file is compared byte for byte, the client's own debug output must
//!   show it used that mode alone, and a CCC must have been accepted. Failures are
//!   collected into one table.
//! - With the tracker guarding vsftpd, as it is today: it cannot read the encrypted 227,
//!   expects nothing, and drops the passive data connection, so the transfer fails; the
//!   unannounced listener stays unreachable.
//!
//! `cargo test -p ftp-lab --test ftps -- --nocapture` shows the table of a passing run too.

use std::{fmt::Write, time::Instant};

use anyhow::{Context, Result, anyhow};
use ftp_lab::{
    clients::{self, Client, Mode, supports, supports_tls},
    lab::{Family, Lab, default_loader_bin, last_lines},
    require_root,
    servers::{Server, Tls},
};

/// The servers the lab runs FTPS with.
const SERVERS: [Server; 3] = [Server::Vsftpd, Server::Proftpd, Server::PureFtpd];

struct Row {
    server: Server,
    tls: Tls,
    /// None: the server itself could not be made to serve `tls`, or did not start.
    client: Option<(Client, Family, Mode)>,
    outcome: Outcome,
}

enum Outcome {
    /// The server or the client cannot do this (see `Server::tls_unsupported`,
    /// `supports_tls`).
    Impossible(String),
    Ran(Result<usize>),
}

#[test]
fn tls_sessions_work_without_the_tracker() {
    require_root();
    let started = Instant::now();
    // One thread per server, each with a lab per way of securing its sessions, so that the
    // servers run in parallel.
    let rows: Vec<Row> = std::thread::scope(|scope| {
        let runs = SERVERS.map(|server| scope.spawn(move || sessions(server)));
        runs.into_iter()
            .flat_map(|run| run.join().expect("a server's sessions panicked"))
            .collect()
    });
    println!(
        "{}(FTPS without the tracker: {:.1} s)",
        table(&rows),
        started.elapsed().as_secs_f64()
    );

    let ran = rows
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ran(_)))
        .count();
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| match &row.outcome {
            Outcome::Ran(Err(e)) => Some(format!("  {}: {e:#}", what(row))),
            _ => None,
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {ran} FTPS sessions failed:\n{}",
        failures.len(),
        failures.join("\n"),
    );
}

/// Every session of `server`: for each way of securing them, a lab of its own (explicit
/// and explicit+CCC both take port 21, with different settings) with the server started
/// for it, and each client, family and mode that can be forced to it. A lab or server that
/// fails to start is one failed row.
fn sessions(server: Server) -> Vec<Row> {
    let mut rows = Vec::new();
    for tls in Tls::ALL {
        if let Some(why) = server.tls_unsupported(tls) {
            rows.push(Row {
                server,
                tls,
                client: None,
                outcome: Outcome::Impossible(why.to_owned()),
            });
            continue;
        }
        let lab = Lab::new(&format!("ftps-{server}"), &default_loader_bin()).and_then(|mut lab| {
            server
                .start_tls(&mut lab, tls)
                .with_context(|| format!("starting {server} for {tls} FTPS"))?;
            Ok(lab)
        });
        let lab = match lab {
            Ok(lab) => lab,
            Err(e) => {
                rows.push(Row {
                    server,
                    tls,
                    client: None,
                    outcome: Outcome::Ran(Err(e)),
                });
                continue;
            }
        };
        for client in Client::ALL {
            for family in Family::ALL {
                // PASV and PORT over IPv6, and the modes a client picks by family alone,
                // are plain FTP's impossibilities, which the matrix shows.
                let modes = Mode::ALL.into_iter();
                for mode in modes.filter(|&mode| supports(client, family, mode)) {
                    let outcome = if supports_tls(client, family, mode, tls) {
                        Outcome::Ran(
                            clients::download_tls(&lab, client, family, mode, tls)
                                .map_err(|e| anyhow!("{e:#} ({})", last_log_lines(server, &lab))),
                        )
                    } else {
                        Outcome::Impossible(format!("{client} cannot be made to do it"))
                    };
                    rows.push(Row {
                        server,
                        tls,
                        client: Some((client, family, mode)),
                        outcome,
                    });
                }
            }
        }
    }
    rows
}

/// The server's last log lines, for a failure's message: its lab is gone by the time the
/// table is printed (vsftpd logs nothing).
fn last_log_lines(server: Server, lab: &Lab) -> String {
    format!(
        "{server} log, last lines: {}",
        last_lines(server.log(lab).as_bytes(), 3)
    )
}

/// A row's server, security, and client, family and mode if any.
fn what(row: &Row) -> String {
    match row.client {
        Some((client, family, mode)) => {
            format!("{} {} {client} {family} {mode}", row.server, row.tls)
        }
        None => format!("{} {}", row.server, row.tls),
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "\n{:<10} {:<12} {:<7} {:<6} {:<5} {:<6}  detail\n",
        "server", "tls", "client", "family", "mode", "result"
    );
    for row in rows {
        let (client, family, mode) = match row.client {
            Some((client, family, mode)) => {
                (client.to_string(), family.to_string(), mode.to_string())
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        let (result, detail) = match &row.outcome {
            Outcome::Impossible(why) => ("-", why.clone()),
            Outcome::Ran(Ok(bytes)) => ("ok", format!("{bytes} bytes, identical")),
            Outcome::Ran(Err(e)) => ("FAILED", format!("{e:#}")),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<12} {client:<7} {family:<6} {mode:<5} {result:<6}  {detail}",
            row.server, row.tls,
        );
    }
    out
}

/// Today the tracker reads nothing of an FTPS control connection: the 227 that announces
/// a passive data connection is encrypted, so it expects no connection and drops the
/// client's SYN as unannounced. This documents that behaviour (and that the guard stays
/// shut), not the one FTPS support will bring.
#[test]
fn the_tracker_drops_tls_data_connections_today() {
    let lab = Lab::guarded_tls("ftps-guarded", Tls::Explicit);
    let before = lab.stats().expect("ftp-loader stats");
    let result = clients::download_tls(&lab, Client::Curl, Family::V4, Mode::Pasv, Tls::Explicit);
    let after = lab.stats().expect("ftp-loader stats");
    let grew = |name: &str| after[name] - before[name];

    let error = match result {
        Ok(bytes) => panic!(
            "the passive FTPS transfer arrived ({bytes} bytes): the tracker let its data \
             connection through (counters before {before:?}, after {after:?})"
        ),
        Err(e) => format!("{e:#}"),
    };
    // Shown with the test's output: how curl failed.
    eprintln!("curl, guarded: {error}");
    assert_eq!(
        grew("expectations_created"),
        0,
        "the tracker expected a connection it cannot have read the announcement of"
    );
    assert_eq!(grew("expectations_matched"), 0, "{after:?}");
    assert!(
        grew("unsolicited_dropped") > 0,
        "the transfer failed ({error}), but not because the guard dropped its data connection: {after:?}"
    );
    assert!(
        !lab.unannounced_reachable(),
        "the unannounced listener is reachable"
    );
}
