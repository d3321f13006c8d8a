//! The interoperability matrix: every real FTP server with every real FTP client, over
//! IPv4 and IPv6, with each way of setting up the data connection (PASV, EPSV, PORT, EPRT)
//! the client can be made to use, ftp-loader guarding the server throughout. Every file is
//! compared byte for byte with the served one, and every transfer must show in the
//! loader's counters as a matched expectation: a passive one was admitted by the guard, an
//! active one was recognised (its SYN leaves the server, where nothing is dropped, so
//! arriving alone proves nothing).
//!
//! One test and one lab per server, so the servers run in parallel. Each prints its table;
//! `cargo test -p ftp-lab --test matrix -- --nocapture` shows the tables of passing ones too.

use std::{fmt::Write, time::Instant};

use anyhow::{Result, ensure};
use ftp_lab::{
    clients::{self, Client, Mode, supports},
    lab::{Family, Lab, default_loader_bin},
    require_root,
    servers::Server,
};

#[test]
fn vsftpd() {
    matrix(Server::Vsftpd);
}

#[test]
fn proftpd() {
    matrix(Server::Proftpd);
}

#[test]
fn pure_ftpd() {
    matrix(Server::PureFtpd);
}

#[test]
fn pyftpdlib() {
    matrix(Server::Pyftpdlib);
}

struct Row {
    client: Client,
    family: Family,
    mode: Mode,
    outcome: Outcome,
}

enum Outcome {
    /// The client cannot be made to use this mode over this family (see `supports`).
    NotExpressible,
    Ran {
        result: Result<usize>,
        /// How much `expectations_matched` and `unsolicited_dropped` grew meanwhile.
        matched: u64,
        dropped: u64,
    },
}

fn matrix(server: Server) {
    require_root();
    let started = Instant::now();
    let mut lab = Lab::new(server.name(), &default_loader_bin()).expect("lab");
    server.start(&mut lab).expect("starting the server");
    lab.start_loader(&[]).expect("starting ftp-loader");

    let mut rows = Vec::new();
    for client in Client::ALL {
        for family in Family::ALL {
            for mode in Mode::ALL {
                let outcome = if supports(client, family, mode) {
                    transfer(&lab, client, family, mode)
                } else {
                    Outcome::NotExpressible
                };
                rows.push(Row {
                    client,
                    family,
                    mode,
                    outcome,
                });
            }
        }
    }
    println!(
        "{}({server}: {:.1} s)",
        table(server, &rows),
        started.elapsed().as_secs_f64()
    );

    let ran = rows
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ran { .. }))
        .count();
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| match &row.outcome {
            Outcome::Ran { result: Err(e), .. } => Some(format!(
                "  {server} {} {} {}: {e:#}",
                row.client, row.family, row.mode
            )),
            _ => None,
        })
        .collect();
    let log = server.log(&lab);
    let log: Vec<&str> = log.lines().collect();
    assert!(
        failures.is_empty(),
        "{} of {ran} transfers with {server} failed:\n{}\n\nftp-loader log:\n{}\n{server} log, last lines:\n{}",
        failures.len(),
        failures.join("\n"),
        lab.loader_log(),
        log[log.len().saturating_sub(20)..].join("\n"),
    );
}

fn transfer(lab: &Lab, client: Client, family: Family, mode: Mode) -> Outcome {
    let before = guard_counters(lab);
    let result = clients::download(lab, client, family, mode);
    let after = guard_counters(lab);
    let (matched, dropped) = (after.0 - before.0, after.1 - before.1);
    let result = result.and_then(|bytes| {
        ensure!(
            matched > 0,
            "the file arrived, but expectations_matched did not grow: {}",
            if mode.passive() {
                "the guard did not admit the connection as an announced one"
            } else {
                "the tracker did not recognise the server's connection to the announced port"
            }
        );
        Ok(bytes)
    });
    Outcome::Ran {
        result,
        matched,
        dropped,
    }
}

/// `expectations_matched` and `unsolicited_dropped`.
fn guard_counters(lab: &Lab) -> (u64, u64) {
    let stats = lab.stats().expect("ftp-loader stats");
    let counter = |name: &str| {
        *stats
            .get(name)
            .unwrap_or_else(|| panic!("ftp-loader stats has no {name}: {stats:?}"))
    };
    (
        counter("expectations_matched"),
        counter("unsolicited_dropped"),
    )
}

fn table(server: Server, rows: &[Row]) -> String {
    let mut out = format!(
        "\n{:<10} {:<7} {:<6} {:<5} {:<6} {:>7} {:>7}  detail\n",
        "server", "client", "family", "mode", "result", "matched", "dropped"
    );
    for row in rows {
        let (result, matched, dropped, detail) = match &row.outcome {
            Outcome::NotExpressible => (
                "-",
                String::new(),
                String::new(),
                format!("{} cannot be made to use it", row.client),
            ),
            Outcome::Ran {
                result,
                matched,
                dropped,
            } => {
                let (verdict, detail) = match result {
                    Ok(bytes) => ("ok", format!("{bytes} bytes, identical")),
                    Err(e) => ("FAILED", format!("{e:#}")),
                };
                (
                    verdict,
                    format!("+{matched}"),
                    format!("+{dropped}"),
                    detail,
                )
            }
        };
        let _ = writeln!(
            out,
            "{:<10} {:<7} {:<6} {:<5} {result:<6} {matched:>7} {dropped:>7}  {detail}",
            server, row.client, row.family, row.mode,
        );
    }
    out
}
