//! FTP sessions through a NAT gateway (the gateway lab, `ftp_lab::gateway`): the kernel's
//! answer (netfilter NAT with `nf_conntrack_ftp` and `nf_nat_ftp` assigned to port 21)
//! against ftp-tracker's (`--nat-inside`, no helper), the gateway forwarding only port 21.
//! Each session is curl fetching the lab's 2 MiB file from vsftpd: passive with the server
//! behind the gateway (the 227 rewritten, the data connection translated to the server),
//! active with the client behind it (the PORT rewritten, the server's connection translated
//! to the client). Two labs per placement, one per gateway, measured alternately.

use std::time::Instant;

use anyhow::Result;
use ftp_lab::{
    clients::{self, Client, Mode},
    gateway::{Gateway, Placement, Rules},
    lab::Family,
    servers::Server,
};

use super::{Bench, Figure, Section, alternate, median};

/// A gateway lab of `placement` with vsftpd behind or in front of it, and either the
/// kernel's helper or ftp-tracker doing the FTP part of the NAT.
fn gateway(placement: Placement, helper: bool) -> Result<Gateway> {
    let tag = if helper { "bench-gwk" } else { "bench-gwt" };
    let mut gateway = Gateway::new(tag, placement)?;
    Server::Vsftpd.start(&mut gateway.lab)?;
    gateway.set_rules(Rules {
        forward_passive: false,
        helper,
    })?;
    if !helper {
        gateway.start_tracker()?;
    }
    Ok(gateway)
}

pub fn run(bench: &Bench) -> Result<Section> {
    let sessions = if bench.quick { 2 } else { 20 };
    let mut section = Section::new("NAT gateway sessions (gateway lab, vsftpd and curl)");
    for (placement, mode, what) in [
        (
            Placement::ServerBehind,
            Mode::Pasv,
            "passive session, server behind the gateway",
        ),
        (
            Placement::ClientsBehind,
            Mode::Port,
            "active session, client behind the gateway",
        ),
    ] {
        let labs = [gateway(placement, true)?, gateway(placement, false)?];
        let samples = alternate(&labs, bench.rounds(), |gateway| {
            let started = Instant::now();
            for _ in 0..sessions {
                clients::download(&gateway.lab, Client::Curl, Family::V4, mode)?;
            }
            Ok(started.elapsed().as_secs_f64() * 1000.0 / f64::from(sessions))
        })?;
        let (kernel, tracker) = (median(&samples[0]), median(&samples[1]));
        section.figures.push(
            Figure::new(
                format!("{what}, ftp-tracker --nat-inside"),
                tracker,
                "ms/session",
            )
            .samples(&samples[1])
            .against("netfilter NAT with nf_nat_ftp", kernel),
        );
    }
    section.notes.push(format!(
        "Each round fetches the file {sessions} times in a row through each gateway; medians of {} rounds. A session is a curl process, its control connection through the gateway's DNAT or masquerade, a rewritten announcement and a translated 2 MiB data connection: the figure says whether doing nf_nat_ftp's work in eBPF costs a session anything against the kernel doing it, not what either costs alone.",
        bench.rounds()
    ));
    Ok(section)
}
