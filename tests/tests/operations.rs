//! Operating ftp-loader as admins operate their firewall tools: the metrics endpoint read
//! by real Prometheus tooling, and the loader's own log lines.

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
};

use ftp_lab::{
    clients::{self, Client, Mode},
    lab::{Family, Lab, SERVER_IF, SERVER_IP6, default_loader_bin, run, wait_for},
    require_root,
    servers::Server,
};

/// Where the metrics tests' loaders listen: the server's IPv6 address, in the guarded
/// range, so that a scrape from the client host crosses the guard as a remote Prometheus's
/// would (and needs --allow-port, as docs/usage.md says).
const METRICS_PORT: u16 = 9640;

fn metrics_url(path: &str) -> String {
    format!("http://[{SERVER_IP6}]:{METRICS_PORT}{path}")
}

/// A lab guarding vsftpd whose loader serves metrics to the client host.
fn metrics_lab(tag: &str) -> Lab {
    require_root();
    let mut lab = Lab::new(tag, &default_loader_bin()).expect("lab");
    Server::Vsftpd.start(&mut lab).unwrap();
    let listen = format!("[{SERVER_IP6}]:{METRICS_PORT}");
    let port = METRICS_PORT.to_string();
    lab.start_loader(&["--metrics-listen", &listen, "--allow-port", &port])
        .unwrap();
    lab
}

/// curl from the client host: (HTTP status, body).
fn fetch(lab: &Lab, url: &str, headers: &[&str]) -> (u16, String) {
    let mut command = lab.client("curl");
    command.args(["--silent", "--show-error", "--globoff", "--max-time", "10"]);
    for header in headers {
        command.args(["--header", header]);
    }
    let output = run(command.args(["--write-out", "\n%{http_code}", url])).unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

/// `promtool check metrics` on a scrape: Prometheus's own parser and linter.
fn promtool_accepts(scrape: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (Debian's prometheus package; cargo xtask setup installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics refused the scrape ({}): {}{}\n{scrape}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The samples of a scrape in the Prometheus text format: series (name and labels) to value.
fn samples(scrape: &str) -> BTreeMap<String, f64> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// A live scrape passes promtool, carries every counter, the tables, the attach state and
/// the build, and its counters rise with a real transfer.
#[test]
fn metrics_pass_promtool_and_rise_after_a_transfer() {
    let lab = metrics_lab("metrics");
    let (status, before) = fetch(&lab, &metrics_url("/metrics"), &[]);
    assert_eq!(status, 200, "{before}\nloader log:\n{}", lab.loader_log());
    promtool_accepts(&before);
    let before = samples(&before);
    let stats = lab.stats().unwrap();
    assert_eq!(
        before.keys().filter(|s| s.ends_with("_total")).count(),
        stats.len(),
        "a metric per counter: {before:?}"
    );
    for (name, value) in &stats {
        assert!(
            before.contains_key(&format!("ftp_tracker_{name}_total")),
            "{name}: {before:?}"
        );
        // Nothing runs between the two readings but the scrape.
        if name != "control_packets" {
            assert_eq!(before[&format!("ftp_tracker_{name}_total")], *value as f64);
        }
    }
    for series in [
        format!("ftp_tracker_attached{{interface=\"{SERVER_IF}\",hook=\"ingress\",mode=\"tc\"}}"),
        format!("ftp_tracker_attached{{interface=\"{SERVER_IF}\",hook=\"egress\",mode=\"tc\"}}"),
    ] {
        assert_eq!(before.get(&series), Some(&1.0), "{series}: {before:?}");
    }
    assert_eq!(
        before.get("ftp_tracker_table_capacity{table=\"flows\"}"),
        Some(&262144.0)
    );
    let build = lab.loader_json("status").unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        before.get(&format!("ftp_tracker_build_info{{version=\"{build}\"}}")),
        Some(&1.0)
    );

    clients::download(&lab, Client::Curl, Family::V4, Mode::Pasv).unwrap();
    let (_, after) = fetch(&lab, &metrics_url("/metrics"), &[]);
    let after = samples(&after);
    for name in [
        "ftp_tracker_expectations_created_total",
        "ftp_tracker_flows_tracked_total",
    ] {
        assert_eq!(after[name], before[name] + 1.0, "{name}");
    }
    let flows = "ftp_tracker_table_entries{table=\"flows\"}";
    assert!(after[flows] >= before[flows] + 1.0, "{flows}: {after:?}");
}

/// Prometheus asks for OpenMetrics and gets it; other paths and methods are refused.
#[test]
fn metrics_negotiate_openmetrics_and_refuse_other_paths() {
    let lab = metrics_lab("openmetrics");
    let accept =
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (status, scrape) = fetch(&lab, &metrics_url("/metrics"), &[accept]);
    assert_eq!(status, 200);
    assert!(scrape.trim_end().ends_with("# EOF"), "{scrape}");
    assert!(
        scrape.contains("# TYPE ftp_tracker_unsolicited_dropped counter\n"),
        "OpenMetrics names a counter's family without _total: {scrape}"
    );
    assert_eq!(fetch(&lab, &metrics_url("/"), &[]).0, 404);
    assert_eq!(fetch(&lab, &metrics_url("/metrics/x"), &[]).0, 404);
}

/// An address already in use refuses the start in one sentence, before anything is
/// attached.
#[test]
fn a_metrics_address_in_use_refuses_the_start() {
    require_root();
    let mut lab = Lab::new("metrics-busy", &default_loader_bin()).expect("lab");
    Server::Vsftpd.start(&mut lab).unwrap();
    // vsftpd listens on the server's port 21.
    let listen = format!("[{SERVER_IP6}]:21");
    let output = lab
        .loader_command(&[SERVER_IF, "--metrics-listen", &listen])
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "ftp-loader: --metrics-listen {listen}: another socket listens on port 21 already: give another port, or find its owner with `ss -ltnp 'sport = :21'`"
        )
    );
    let status = lab.loader_command(&["status"]).unwrap();
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("no ftp-loader has run"),
        "{status:?}"
    );
}

/// The lines of the loader's log.
fn log_lines(lab: &Lab) -> Vec<String> {
    lab.loader_log().lines().map(str::to_owned).collect()
}

/// What aya logs (at debug) for each map reference it relocates: hundreds of lines.
const AYA_RELOCATION: &str = "relocating map by";

/// `-v` raises the product's own lines to debug (here the metrics endpoint's, from a scrape
/// over IPv6 loopback), not aya's.
#[test]
fn verbose_logs_the_products_debug_lines_not_ayas() {
    require_root();
    let mut lab = Lab::new("verbose", &default_loader_bin()).expect("lab");
    lab.start_loader(&["-v", "--metrics-listen", "[::1]:9641"])
        .unwrap();
    let scrape = run(lab.server("curl").args([
        "--silent",
        "--show-error",
        "--globoff",
        "--max-time",
        "10",
        "http://[::1]:9641/metrics",
    ]))
    .unwrap();
    assert!(
        String::from_utf8_lossy(&scrape.stdout).contains("ftp_tracker_build_info"),
        "{scrape:?}"
    );
    wait_for("the scrape's debug line", || {
        Ok(lab
            .loader_log()
            .contains("[DEBUG] metrics: answered [::1]:"))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", lab.loader_log()));
    let aya: Vec<String> = log_lines(&lab)
        .into_iter()
        .filter(|l| l.contains(AYA_RELOCATION))
        .collect();
    assert!(aya.is_empty(), "aya's internals logged with -v: {aya:?}");
}

/// RUST_LOG replaces the defaults: here it brings aya's relocation lines back (so the test
/// above looks for lines that do exist).
#[test]
fn rust_log_overrides_the_defaults() {
    require_root();
    let mut lab = Lab::new("rustlog", &default_loader_bin()).expect("lab");
    lab.start_loader_with_env(&[], &[("RUST_LOG", "info,aya_obj=debug")])
        .unwrap();
    let log = lab.loader_log();
    assert!(log.contains(AYA_RELOCATION), "{log}");
    assert!(!log.contains("[DEBUG] metrics"), "{log}");
}

/// When stderr is the journal (JOURNAL_STREAM names its device and inode, as systemd sets
/// it), every line starts with its sd-daemon priority and carries no other prefix.
#[test]
fn journal_lines_start_with_their_priority() {
    use std::os::unix::fs::MetadataExt;
    require_root();
    let mut lab = Lab::new("journal", &default_loader_bin()).expect("lab");
    let log = lab.loader_log_path();
    let stream = std::fs::File::create(&log).unwrap().metadata().unwrap();
    let journal_stream = format!("{}:{}", stream.dev(), stream.ino());
    lab.start_loader_with_env(&[], &[("JOURNAL_STREAM", &journal_stream)])
        .unwrap();
    let lines = log_lines(&lab);
    assert!(
        lines.iter().any(|l| l.starts_with("<6>attached to srv0")),
        "{lines:?}"
    );
    let unprefixed: Vec<&String> = lines
        .iter()
        .filter(|l| !(l.starts_with("<6>") || l.starts_with("<4>")))
        .collect();
    assert!(unprefixed.is_empty(), "{unprefixed:?}");
    // Another stream's numbers (a service's JOURNAL_STREAM inherited by a child whose
    // stderr goes elsewhere) leave the lines as they are.
    lab.stop_loader().unwrap();
    let elsewhere = format!("{}:{}", stream.dev(), stream.ino() + 1);
    lab.start_loader_with_env(&[], &[("JOURNAL_STREAM", &elsewhere)])
        .unwrap();
    let lines = log_lines(&lab);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[INFO ] attached to srv0")),
        "{lines:?}"
    );
}
