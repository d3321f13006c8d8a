//! SIGHUP reads the configuration file again and applies it to the running loader: the
//! settings change, interfaces are attached and detached, and nothing the tables hold is
//! lost; an invalid file changes nothing.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use ftp_ebpf_common::contract::DEFAULT_MAX_FLOWS;
use ftp_lab::{
    lab::{
        CLIENT_IP, Family, Lab, SERVER_IF, SERVER_IP, UNANNOUNCED, default_loader_bin, in_netns,
        run,
    },
    require_root,
    session::{self, ControlConnection, Expectation, Step},
};

/// A lab with no FTP server (the test plays the control connections) and a plain listener
/// on `UNANNOUNCED`, its loader reading the lab's configuration file `text`.
fn lab_with_config(tag: &str, text: &str, interfaces: &[&str], args: &[&str]) -> Lab {
    require_root();
    let mut lab = Lab::new(tag, &default_loader_bin()).expect("lab");
    lab.start_listener(UNANNOUNCED).unwrap();
    lab.write_config(text).unwrap();
    let file = lab.config_path();
    let mut all = vec!["--config", file.to_str().unwrap()];
    all.extend_from_slice(args);
    lab.start_loader_on(interfaces, &all).unwrap();
    lab
}

/// A listener bound (not accepting: the kernel completes the handshakes) on the server's
/// `port`, for announced data connections.
fn data_listener(lab: &Lab, port: u16) -> TcpListener {
    in_netns(&lab.server_ns, || Ok(TcpListener::bind((SERVER_IP, port))?)).unwrap()
}

/// A control connection announcing (227) the server's `port`.
fn announce(lab: &Lab, control: &TcpListener, port: u16) -> ControlConnection {
    let mut connection = ControlConnection::open(lab, control).unwrap();
    let reply: &'static str = format!(
        "227 Entering Passive Mode ({{server}},{},{}).\r\n",
        port >> 8,
        port & 0xff
    )
    .leak();
    connection
        .play(&[
            Step::Server("220 ready\r\n"),
            Step::Client("PASV\r\n"),
            Step::Server(reply),
        ])
        .unwrap();
    connection
}

fn connects(lab: &Lab, port: u16) -> bool {
    lab.client_connects(SERVER_IP.into(), port, Duration::from_millis(500))
        .unwrap()
}

fn expected(port: u16) -> Expectation {
    Expectation {
        family: Family::V4,
        connector: CLIENT_IP.into(),
        listener: SERVER_IP.into(),
        port,
    }
}

fn flows(lab: &Lab) -> usize {
    lab.loader_json("flows").unwrap().as_array().unwrap().len()
}

/// `allow-port` and `min-data-port` change at SIGHUP; the expectation announced before
/// still admits its data connection, and the flow admitted before is still tracked.
#[test]
fn sighup_applies_the_file_and_keeps_every_expectation_and_flow() {
    let lab = lab_with_config("reload-settings", "", &[SERVER_IF], &[]);
    let control = session::listen(&lab, Family::V4).unwrap();
    let _data = [10300, 10301].map(|port| data_listener(&lab, port));
    // A flow: announced, then opened and kept open.
    let _first = announce(&lab, &control, 10300);
    let flow = in_netns(&lab.client_ns, || {
        Ok(TcpStream::connect_timeout(
            &SocketAddr::from((SERVER_IP, 10300)),
            Duration::from_secs(2),
        )?)
    })
    .unwrap();
    // An expectation, announced and not yet used.
    let second = announce(&lab, &control, 10301);
    let ends = second.ends().unwrap();
    assert_eq!(
        ends.tracker_expectations(&lab).unwrap(),
        [expected(10301)].into()
    );
    let flows_before = flows(&lab);
    assert!(flows_before >= 1, "the data connection is not tracked");
    assert!(!lab.unannounced_reachable());

    lab.write_config(&format!(
        "allow-port = [{UNANNOUNCED}]\nmin-data-port = 10302\n"
    ))
    .unwrap();
    let line = lab.reload().unwrap();
    assert!(
        line.contains(&format!("allow-port (none) -> {UNANNOUNCED}"))
            && line.contains("min-data-port 1024 -> 10302"),
        "{line}"
    );

    assert_eq!(
        ends.tracker_expectations(&lab).unwrap(),
        [expected(10301)].into(),
        "the expectation did not outlive the reload"
    );
    assert_eq!(flows(&lab), flows_before, "a flow was lost");
    assert!(lab.unannounced_reachable(), "allow-port was not applied");
    assert!(
        connects(&lab, 10301),
        "the kept expectation no longer admits"
    );
    // The new lower bound refuses what the old one accepted.
    let refused_before = lab.stats().unwrap()["low_port_refused"];
    let _third = announce(&lab, &control, 10300);
    assert_eq!(lab.stats().unwrap()["low_port_refused"], refused_before + 1);
    drop(flow);
}

/// An invalid file keeps the running settings, and the log names its line; so does a file
/// naming an interface that does not exist.
#[test]
fn an_invalid_file_keeps_the_running_settings() {
    let interfaces = format!("interfaces = [\"{SERVER_IF}\"]\n");
    let lab = lab_with_config("reload-invalid", &interfaces, &[], &[]);
    lab.write_config(&format!(
        "{interfaces}allow-port = [{UNANNOUNCED}]\n\nmin-data-port = \"low\"\n"
    ))
    .unwrap();
    let line = lab.reload().unwrap();
    let file = lab.config_path();
    assert!(
        line.contains(&format!("SIGHUP: {} line 4: ", file.display()))
            && line.ends_with("the running settings stay"),
        "{line}"
    );
    assert!(
        !lab.unannounced_reachable(),
        "part of the invalid file was applied"
    );
    let status = lab.loader_report(&["status"]).unwrap();
    assert!(status.contains("running for"), "{status}");

    lab.write_config(&format!(
        "interfaces = [\"{SERVER_IF}\", \"nosuch0\"]\nallow-port = [{UNANNOUNCED}]\n"
    ))
    .unwrap();
    let line = lab.reload().unwrap();
    assert!(
        line.contains("no network interface named `nosuch0`")
            && line.ends_with("the running settings stay"),
        "{line}"
    );
    assert!(!lab.unannounced_reachable());

    // Fixed, it applies.
    lab.write_config(&format!("{interfaces}allow-port = [{UNANNOUNCED}]\n"))
        .unwrap();
    let line = lab.reload().unwrap();
    assert!(line.contains("SIGHUP: applied"), "{line}");
    assert!(lab.unannounced_reachable());
}

fn filters(lab: &Lab, interface: &str, direction: &str) -> String {
    let output = run(lab
        .server("tc")
        .args(["filter", "show", "dev", interface, direction]))
    .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The interface `name` in `status --json`.
fn status_of(lab: &Lab, name: &str) -> Option<serde_json::Value> {
    lab.loader_json("status").unwrap()["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
}

/// Interfaces named in the file alone: one added is attached at SIGHUP, removed is
/// detached, and the other's attachment is never touched; a changed xdp-mode moves the
/// guard to the new hook.
#[test]
fn interfaces_added_and_removed_in_the_file_attach_and_detach_only_them() {
    let lab = lab_with_config(
        "reload-ifaces",
        &format!("interfaces = [\"{SERVER_IF}\"]\n"),
        &[],
        &[],
    );
    let extra = "extra0";
    run(lab.server("ip").args([
        "link", "add", extra, "type", "veth", "peer", "name", "extra1",
    ]))
    .unwrap();
    run(lab.server("ip").args(["link", "set", extra, "up"])).unwrap();
    let ingress = filters(&lab, SERVER_IF, "ingress");
    let egress = filters(&lab, SERVER_IF, "egress");
    assert!(ingress.contains("ftp_"), "{ingress}");
    let since = status_of(&lab, SERVER_IF).unwrap()["since"].clone();

    lab.write_config(&format!("interfaces = [\"{SERVER_IF}\", \"{extra}\"]\n"))
        .unwrap();
    let line = lab.reload().unwrap();
    assert!(line.contains(&format!("attached to {extra}")), "{line}");
    assert!(filters(&lab, extra, "ingress").contains("ftp_"));
    assert!(filters(&lab, extra, "egress").contains("ftp_"));
    // The same filters, with the same program ids.
    assert_eq!(filters(&lab, SERVER_IF, "ingress"), ingress);
    assert_eq!(filters(&lab, SERVER_IF, "egress"), egress);
    assert!(status_of(&lab, extra).is_some());
    assert_eq!(status_of(&lab, SERVER_IF).unwrap()["since"], since);

    lab.write_config(&format!("interfaces = [\"{SERVER_IF}\"]\n"))
        .unwrap();
    let line = lab.reload().unwrap();
    assert!(line.contains(&format!("detached from {extra}")), "{line}");
    assert!(!filters(&lab, extra, "ingress").contains("ftp_"));
    assert!(!filters(&lab, extra, "egress").contains("ftp_"));
    assert_eq!(filters(&lab, SERVER_IF, "ingress"), ingress);
    assert!(status_of(&lab, extra).is_none());
    assert!(!lab.unannounced_reachable());

    lab.write_config(&format!(
        "interfaces = [\"{SERVER_IF}\"]\nxdp-mode = \"skb\"\n"
    ))
    .unwrap();
    let line = lab.reload().unwrap();
    assert!(line.contains("xdp-mode auto -> skb"), "{line}");
    let link = run(lab.server("ip").args(["link", "show", SERVER_IF])).unwrap();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("xdpgeneric"),
        "{link:?}"
    );
    assert!(!filters(&lab, SERVER_IF, "ingress").contains("ftp_"));
    assert_eq!(filters(&lab, SERVER_IF, "egress"), egress);
    assert_eq!(
        status_of(&lab, SERVER_IF).unwrap()["ingress"],
        "generic XDP"
    );
    assert!(!lab.unannounced_reachable());
}

/// Options on the command line beat the file's, at start and at each reload; a table size
/// is not applied by a reload, and the loader says a restart does it.
#[test]
fn the_command_line_beats_the_file_and_sizes_need_a_restart() {
    let lab = lab_with_config(
        "reload-cmdline",
        &format!("allow-port = [{UNANNOUNCED}]\n"),
        &[SERVER_IF],
        &["--allow-port", "10251"],
    );
    assert!(!lab.unannounced_reachable());
    lab.write_config(&format!("allow-port = [{UNANNOUNCED}]\nmax-flows = 1000\n"))
        .unwrap();
    let line = lab.reload().unwrap();
    assert!(
        line.contains("nothing to change")
            && line.contains(&format!(
                "max-flows {DEFAULT_MAX_FLOWS} -> 1000 not applied: it needs a restart"
            )),
        "{line}"
    );
    assert!(!lab.unannounced_reachable());
}
