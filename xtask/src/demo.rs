//! The demo: the classic FTP lab, where a server's data ports are closed to everything an
//! FTP control connection did not announce, with ftp-loader as the only guard.

use std::time::Duration;

use anyhow::{Result, ensure};
use clap::Parser;
use ftp_lab::{
    clients::{self, Client, Mode},
    lab::{self, Family, Lab, PASSIVE_PORTS, SERVER_IF, SERVER_IP},
    servers::Server,
};

use crate::{build, setup};

fn step(text: &str) {
    println!("\n==> {text}");
}

#[derive(Parser)]
pub struct Options {}

pub fn run(Options {}: Options) -> Result<()> {
    setup::prepare()?;
    let loader = build::release()?;
    step(
        "building the lab: namespaces `server` (vsftpd, passive ports 10000-10500) and `client`, joined by a veth pair",
    );
    let mut lab = Lab::new("demo", &loader)?;
    println!(
        "    server {SERVER_IP} in {}, client {} in {}",
        lab.server_ns,
        lab::CLIENT_IP,
        lab.client_ns
    );
    println!("    no netfilter rule or FTP helper anywhere: ftp-loader is the only guard");
    Server::Vsftpd.start(&mut lab)?;
    let listener_port = PASSIVE_PORTS.0 + 200;
    lab.start_listener(listener_port)?;

    step(&format!(
        "attaching: ftp-loader {SERVER_IF} (in the server namespace)"
    ));
    lab.start_loader(&[])?;
    for line in lab.loader_log().lines() {
        println!("    {line}");
    }

    step("passive mode: curl --disable-epsv ftp://192.0.2.1/pub/blob");
    downloaded(clients::download(
        &lab,
        Client::Curl,
        Family::V4,
        Mode::Pasv,
    )?);

    step("active mode: curl --ftp-port - --disable-eprt ftp://192.0.2.1/pub/blob");
    downloaded(clients::download(
        &lab,
        Client::Curl,
        Family::V4,
        Mode::Port,
    )?);

    step(
        "IPv6, extended passive and active modes: curl -g ftp://[2001:db8::1]/pub/blob (EPSV), then with --ftp-port - (EPRT)",
    );
    downloaded(clients::download(
        &lab,
        Client::Curl,
        Family::V6,
        Mode::Epsv,
    )?);
    downloaded(clients::download(
        &lab,
        Client::Curl,
        Family::V6,
        Mode::Eprt,
    )?);

    step("what the tracker holds now: ftp-loader flows (the data connections above, closing)");
    print!("{}", lab.loader_report(&["flows"])?);

    step(&format!(
        "unsolicited: a plain TCP connection to a listener on {SERVER_IP}:{listener_port}, inside the guarded range"
    ));
    let connected = lab.client_connects(SERVER_IP.into(), listener_port, Duration::from_secs(2))?;
    ensure!(!connected, "the unannounced listener was reachable");
    println!("    dropped: the SYN got no answer within 2 s");

    step("counters: ftp-loader stats (run from another shell while the loader runs)");
    print!("{}", lab.loader_report(&["stats"])?);

    step("stopping ftp-loader with SIGTERM");
    let status = lab.stop_loader()?;
    ensure!(status.success(), "ftp-loader exited with {status}");
    println!(
        "    {}",
        lab.loader_log().lines().last().unwrap_or_default()
    );
    let reachable = lab.client_connects(SERVER_IP.into(), listener_port, Duration::from_secs(2))?;
    ensure!(reachable, "the listener stayed unreachable after detach");
    println!(
        "    the listener on port {listener_port} is reachable again: nothing is left attached"
    );

    step("tearing the lab down");
    drop(lab);
    println!("    done");
    Ok(())
}

fn downloaded(bytes: usize) {
    println!("    ok: {bytes} bytes, identical to the served file");
}
