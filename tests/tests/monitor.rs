//! `--monitor` and `--allow-from`, with the real loader in the namespace lab: monitoring
//! passes what enforcement drops and lists it by port; flipping to enforcement on the
//! running instance by a reload keeps its expectations and flows and drops again; an allowed
//! network reaches an unannounced listener, any other source (nor a forgery of the host's
//! own address inside the network) still does not, and a reload that replaces the network
//! closes it again.

use std::net::Ipv4Addr;

use ftp_lab::{
    frame::{SYN, Tcp},
    ftp::Ftp,
    inject::{Link, PacketSocket},
    lab::{
        BLOB_PATH, CLIENT_IF, CLIENT_IP, Lab, SERVER_IF, SERVER_IP, UNANNOUNCED,
        default_loader_bin, in_netns, nsenter, run, wait_for,
    },
    require_root,
    servers::Server,
};
use serde_json::Value;

/// Where the monitoring test's loader serves its metrics (loopback of the server host).
const METRICS: &str = "127.0.0.1:9645";

/// Starts the lab's loader reading the lab's configuration file, `text`.
fn start_with_config(lab: &mut Lab, text: &str) {
    lab.write_config(text).unwrap();
    let file = lab.config_path();
    lab.start_loader(&["--config", file.to_str().unwrap()])
        .unwrap();
}

/// Writes `text` as the configuration file and has the running loader apply it.
fn reload_with(lab: &Lab, text: &str) {
    lab.write_config(text).unwrap();
    let line = lab.reload().unwrap();
    assert!(line.contains("SIGHUP: applied"), "{line}");
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.stats().unwrap()[name]
}

fn mode(lab: &Lab) -> Value {
    lab.loader_json("status").unwrap()["mode"].clone()
}

/// The rows of `ftp-loader would-drop --json`.
fn would_drop(lab: &Lab) -> Vec<Value> {
    lab.loader_json("would-drop")
        .unwrap()
        .as_array()
        .expect("would-drop --json is an array")
        .clone()
}

/// The ports of the live expectations.
fn expected_ports(lab: &Lab) -> Vec<u64> {
    let listing = lab.loader_json("expectations").unwrap();
    listing
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["port"].as_u64().unwrap())
        .collect()
}

fn flow_ports(lab: &Lab) -> Vec<u64> {
    let listing = lab.loader_json("flows").unwrap();
    listing
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["dst_port"].as_u64().unwrap())
        .collect()
}

#[test]
fn monitoring_passes_and_lists_what_enforcement_drops_and_flipping_keeps_state() {
    require_root();
    let mut lab = Lab::new("monitor", &default_loader_bin()).expect("lab");
    Server::Vsftpd.start(&mut lab).unwrap();
    lab.start_listener(UNANNOUNCED).unwrap();
    start_with_config(
        &mut lab,
        &format!("monitor = true\nmetrics-listen = \"{METRICS}\"\n"),
    );
    let log = lab.loader_log();
    assert!(log.contains("MONITORING ONLY"), "{log}");
    assert_eq!(mode(&lab), "monitor");
    let status = lab.loader_report(&["status"]).unwrap();
    assert!(status.contains("MONITORING ONLY"), "{status}");

    // Tracked as when enforcing: an announced transfer is admitted and its flow recorded,
    // and an announcement not yet used is expected.
    let blob = lab.blob().unwrap();
    let mut ftp = in_netns(&lab.client_ns, Ftp::login).unwrap();
    let transferred = in_netns(&lab.client_ns, || ftp.retr(BLOB_PATH)).unwrap();
    assert_eq!(transferred, blob);
    let admitted = flow_ports(&lab);
    assert_eq!(admitted.len(), 1, "the transfer's flow: {admitted:?}");
    let announced = ftp.pasv().unwrap();
    assert_eq!(expected_ports(&lab), [u64::from(announced.port())]);

    // What enforcement drops passes, counted as a would-be drop and listed by its port.
    assert_eq!(counter(&lab, "would_drop"), 0);
    assert!(lab.unannounced_reachable());
    assert!(lab.unannounced_reachable());
    let unsolicited = counter(&lab, "unsolicited_dropped");
    assert!(unsolicited >= 2, "unsolicited_dropped {unsolicited}");
    assert_eq!(counter(&lab, "would_drop"), unsolicited);
    let rows = would_drop(&lab);
    assert_eq!(rows.len(), 1, "only the unannounced port: {rows:?}");
    assert_eq!(rows[0]["port"], UNANNOUNCED);
    assert_eq!(rows[0]["syns"], unsolicited);
    assert_eq!(rows[0]["admit_with"], format!("--allow-port {UNANNOUNCED}"));
    let text = lab.loader_report(&["would-drop"]).unwrap();
    assert!(
        text.contains(&format!("--allow-port {UNANNOUNCED}")) && text.contains("1 port listed"),
        "{text}"
    );
    // The metrics say so too, by port.
    let scrape = run(lab
        .server("curl")
        .args(["-sf", &format!("http://{METRICS}/metrics")]))
    .unwrap();
    let scrape = String::from_utf8_lossy(&scrape.stdout);
    assert!(scrape.contains("ftp_tracker_monitoring 1"), "{scrape}");
    assert!(
        scrape.contains(&format!(
            "ftp_tracker_would_drop_syns_total{{port=\"{UNANNOUNCED}\"}} {unsolicited}"
        )),
        "{scrape}"
    );
    // The announced data port was admitted, not counted.
    assert!(
        rows.iter().all(|r| r["port"] != announced.port()),
        "{rows:?}"
    );

    // Enforcement, by a reload of the running instance.
    reload_with(
        &lab,
        &format!("monitor = false\nmetrics-listen = \"{METRICS}\"\n"),
    );
    assert_eq!(mode(&lab), "enforce");
    assert!(
        !lab.unannounced_reachable(),
        "the unannounced listener is reachable after switching to enforcement"
    );
    assert!(counter(&lab, "unsolicited_dropped") > unsolicited);
    assert_eq!(
        counter(&lab, "would_drop"),
        unsolicited,
        "a real drop counted as a would-be one"
    );
    let text = lab.loader_report(&["would-drop"]).unwrap();
    assert!(text.contains("the running loader enforces"), "{text}");
    // Nothing tracked was lost: the flow is listed, and the expectation made while
    // monitoring is still there and admits its data connection.
    assert_eq!(flow_ports(&lab), admitted);
    assert_eq!(expected_ports(&lab), [u64::from(announced.port())]);
    let transferred = in_netns(&lab.client_ns, || ftp.retr_from(announced, BLOB_PATH)).unwrap();
    assert_eq!(transferred, blob);
    assert!(expected_ports(&lab).is_empty(), "the expectation was used");

    // And back to monitoring, again by a reload.
    reload_with(
        &lab,
        &format!("monitor = true\nmetrics-listen = \"{METRICS}\"\n"),
    );
    assert_eq!(mode(&lab), "monitor");
    assert!(lab.unannounced_reachable());
    assert_eq!(counter(&lab, "would_drop"), unsolicited + 1);
    ftp.quit().unwrap();
}

/// A second client address on the client host, outside the allowed network.
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

/// Whether the client host reaches the unannounced listener from source address `from`.
fn reachable_from(lab: &Lab, from: Ipv4Addr) -> bool {
    let url = format!("http://{SERVER_IP}:{UNANNOUNCED}/");
    let output = run(lab.client("curl").args([
        "--silent",
        "--output",
        "/dev/null",
        // Shorter than the first SYN retransmission (1 s): one SYN per attempt.
        "--connect-timeout",
        "0.5",
        "--interface",
        &from.to_string(),
        &url,
    ]));
    output.is_ok()
}

#[test]
fn an_allowed_network_reaches_unannounced_listeners_and_no_other_source_does() {
    require_root();
    let mut lab = Lab::new("allowfrom", &default_loader_bin()).expect("lab");
    lab.start_listener(UNANNOUNCED).unwrap();
    lab.add_client_address(STRANGER).unwrap();
    // The client's own address (192.0.2.2) lies in the /30; STRANGER does not. The IPv6
    // network shares the trie: it must not let IPv4 sources in.
    start_with_config(&mut lab, "allow-from = [\"192.0.2.0/30\", \"::/0\"]\n");
    let log = lab.loader_log();
    assert!(
        log.contains("; new connections from 192.0.2.0/30, ::/0 pass without one"),
        "{log}"
    );

    assert!(!reachable_from(&lab, STRANGER));
    assert_eq!(counter(&lab, "allowed_from_source"), 0);
    let dropped = counter(&lab, "unsolicited_dropped");
    assert!(dropped >= 1);

    assert!(lab.unannounced_reachable(), "the allowed client is refused");
    assert!(reachable_from(&lab, CLIENT_IP));
    assert!(counter(&lab, "allowed_from_source") >= 2);
    assert_eq!(counter(&lab, "unsolicited_dropped"), dropped);
    assert!(!reachable_from(&lab, STRANGER), "another source got in");

    // The allowed network holds the server's own address too: a SYN claiming it, written
    // onto the link from outside, is a forgery and is refused, not allowed.
    let allowed = counter(&lab, "allowed_from_source");
    let sender = PacketSocket::sender_in(&lab.client_ns, CLIENT_IF).unwrap();
    let forged = Tcp::new(SERVER_IP, 40000, SERVER_IP, UNANNOUNCED, SYN);
    let link = Link::find(&lab).unwrap();
    sender
        .send(&forged.frame_on(link.to_server(), &[]))
        .unwrap();
    wait_for("the guard to refuse the forged SYN", || {
        Ok(counter(&lab, "unsolicited_dropped") > dropped)
    })
    .unwrap();
    assert_eq!(counter(&lab, "allowed_from_source"), allowed);

    // A reload that lists another network replaces the list: the old one is closed again,
    // the new one open.
    reload_with(&lab, "allow-from = [\"192.0.2.64/26\"]\n");
    assert!(
        !lab.unannounced_reachable(),
        "a dropped network still gets in"
    );
    assert!(reachable_from(&lab, STRANGER));
    // And one that lists none closes it for everyone.
    reload_with(&lab, "");
    assert!(!reachable_from(&lab, STRANGER));
    assert!(!lab.unannounced_reachable());
}

#[test]
fn a_bad_network_is_one_sentence_naming_the_network_meant() {
    require_root();
    let lab = Lab::new("badcidr", &default_loader_bin()).expect("lab");
    let output = nsenter(&lab.server_ns, &default_loader_bin())
        .args([SERVER_IF, "--allow-from", "192.0.2.7/24", "--pin-dir"])
        .arg(&lab.pin_dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.ends_with(
            "'--allow-from <CIDR>': address bits are set beyond the prefix length: give the network, 192.0.2.0/24"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("os error") && !stderr.contains("panicked"));
    assert!(!lab.pin_dir.exists(), "a refused run left its pins behind");
}
