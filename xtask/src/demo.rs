//! The demo: the classic FTP lab, where a server's data ports are closed to everything an
//! FTP control connection did not announce, with ftp-loader as the only guard.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, Result, ensure};
use tests::lab::{self, Lab, PASSIVE_PORTS, SERVER_IF, SERVER_IP};

fn step(text: &str) {
    println!("\n==> {text}");
}

pub fn run(loader: &Path) -> Result<()> {
    step(
        "building the lab: namespaces `server` (vsftpd, passive ports 10000-10500) and `client`, joined by a veth pair",
    );
    let mut lab = Lab::new("demo", loader)?;
    println!(
        "    server {SERVER_IP} in {}, client {} in {}",
        lab.server_ns,
        lab::CLIENT_IP,
        lab.client_ns
    );
    println!("    no netfilter rule or FTP helper anywhere: ftp-loader is the only guard");
    lab.start_vsftpd()?;
    let listener_port = PASSIVE_PORTS.0 + 200;
    let mut listener = lab.server("python3");
    listener
        .args([
            "-m",
            "http.server",
            &listener_port.to_string(),
            "--bind",
            &SERVER_IP.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(listener)?;
    lab::wait_for("the listener", || lab.server_listens(listener_port))?;

    step(&format!(
        "attaching: ftp-loader {SERVER_IF} (in the server namespace)"
    ));
    lab.start_loader(&[])?;
    for line in lab.loader_log().lines() {
        println!("    {line}");
    }

    step("passive mode: curl --disable-epsv ftp://192.0.2.1/pub/blob");
    download(&lab, &["--disable-epsv"])?;

    step("active mode: curl --ftp-port - --disable-eprt ftp://192.0.2.1/pub/blob");
    download(&lab, &["--ftp-port", "-", "--disable-eprt"])?;

    step(&format!(
        "unsolicited: a plain TCP connection to a listener on {SERVER_IP}:{listener_port}, inside the guarded range"
    ));
    let connected = lab.client_connects(listener_port, Duration::from_secs(2))?;
    ensure!(!connected, "the unannounced listener was reachable");
    println!("    dropped: the SYN got no answer within 2 s");

    step("counters: ftp-loader stats (run from another shell while the loader runs)");
    let output = lab::run(
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.server_ns))
            .arg(loader)
            .args(["stats", "--pin-dir"])
            .arg(&lab.pin_dir),
    )?;
    print!("{}", String::from_utf8_lossy(&output.stdout));

    step("stopping ftp-loader with SIGTERM");
    let status = lab.stop_loader()?;
    ensure!(status.success(), "ftp-loader exited with {status}");
    println!(
        "    {}",
        lab.loader_log().lines().last().unwrap_or_default()
    );
    let reachable = lab.client_connects(listener_port, Duration::from_secs(2))?;
    ensure!(reachable, "the listener stayed unreachable after detach");
    println!(
        "    the listener on port {listener_port} is reachable again: nothing is left attached"
    );

    step("tearing the lab down");
    drop(lab);
    println!("    done");
    Ok(())
}

fn download(lab: &Lab, mode: &[&str]) -> Result<()> {
    let target = lab.file("download");
    let output = lab
        .client("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(mode)
        .arg("--output")
        .arg(&target)
        .arg(format!("ftp://{SERVER_IP}/{}", lab::BLOB_PATH))
        .output()
        .context("running curl")?;
    ensure!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let received = std::fs::read(&target)?;
    ensure!(
        received == lab.blob()?,
        "the downloaded file differs from the served one"
    );
    println!(
        "    ok: {} bytes, identical to the served file",
        received.len()
    );
    Ok(())
}
