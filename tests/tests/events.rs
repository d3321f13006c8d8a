//! The event stream: `ftp-loader events` following a real vsftpd + curl session and
//! unannounced SYNs, `run --log-events`, the one-reader rule and the rate limit of drops.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, ChildStderr, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData};
use ftp_ebpf_common::{
    contract::{CONFIG, EVENT_BURST, EVENT_TOKEN_NS},
    window::TCP_SYN,
};
use ftp_lab::{
    frame::Tcp,
    inject::{Link, PacketSocket},
    lab::{CLIENT_IF, CLIENT_IP, Lab, SERVER_IP, UNANNOUNCED, wait_for},
    servers::Server,
};
use serde_json::{Value, json};

/// `ftp-loader events --json`, running, once it says it follows the events.
struct Follower {
    /// Taken when it is stopped.
    child: Option<Child>,
    /// What it says after its first line; kept open, as its later sentences would
    /// otherwise hit a closed pipe.
    stderr: BufReader<ChildStderr>,
}

impl Follower {
    fn start(lab: &Lab) -> Follower {
        let mut child = lab
            .loader_process(&["events", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ftp-loader events");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(
            line.contains("following the events"),
            "ftp-loader events said: {line:?}"
        );
        Follower {
            child: Some(child),
            stderr,
        }
    }

    /// Stops it as Ctrl-C does and returns the events it printed; it must exit 0.
    fn stop(mut self) -> Vec<Value> {
        let child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "ftp-loader events: {output:?}");
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `Config::events` as the programs read it: whether they write events.
fn events_flag(lab: &Lab) -> u8 {
    let pin = MapData::from_pin(lab.pin_dir.join(CONFIG.name)).unwrap();
    let config = CONFIG.from_map(Map::from_map_data(pin).unwrap()).unwrap();
    config.get(&0, 0).unwrap().events
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// A passive download by curl: the data port the server announced and the client's
/// control connection's source port.
fn passive_download(lab: &Lab) -> (u16, u16) {
    let output = lab
        .client("curl")
        .args(["--silent", "--show-error", "--verbose", "--disable-epsv"])
        .args(["--max-time", "20", "--output", "/dev/null"])
        .args(["--write-out", "%{local_port}"])
        .arg(format!("ftp://{SERVER_IP}/pub/blob"))
        .output()
        .unwrap();
    assert!(output.status.success(), "curl: {output:?}");
    let transcript = String::from_utf8_lossy(&output.stderr);
    let numbers: Vec<u16> = transcript
        .lines()
        .find_map(|l| l.strip_prefix("< 227 "))
        .and_then(|l| Some(&l[l.find('(')? + 1..l.find(')')?]))
        .expect("curl's transcript has the 227 reply")
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    let data_port = numbers[4] * 256 + numbers[5];
    let control_port = String::from_utf8(output.stdout).unwrap().parse().unwrap();
    (data_port, control_port)
}

/// An unanswered connection attempt to the listener nothing announced.
fn unannounced_syn(lab: &Lab) {
    assert!(!lab.unannounced_reachable());
}

#[test]
fn a_session_and_an_unannounced_syn_appear_with_their_addresses() {
    let lab = Lab::guarded("events");
    assert_eq!(
        events_flag(&lab),
        0,
        "nobody reads: the programs write nothing"
    );
    let follower = Follower::start(&lab);
    assert_eq!(events_flag(&lab), 1);

    // The one-reader rule: a second reader gets one sentence.
    let second = lab.loader_command(&["events"]).unwrap();
    assert_eq!(second.status.code(), Some(1));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.starts_with(
            "ftp-loader: another ftp-loader already follows the events of pin directory"
        ) && said.lines().count() == 1,
        "{said}"
    );

    let (data_port, control_port) = passive_download(&lab);
    unannounced_syn(&lab);
    let events = follower.stop();

    let control = json!({
        "src": CLIENT_IP.to_string(), "src_port": control_port,
        "dst": SERVER_IP.to_string(), "dst_port": 21,
    });
    let announced = of_kind(&events, "announced");
    assert_eq!(
        announced,
        [&json!({
            "event": "announced", "family": "ipv4",
            "connector": CLIENT_IP.to_string(), "listener": SERVER_IP.to_string(),
            "port": data_port, "control": control,
        })],
        "{events:#?}"
    );
    let admitted = of_kind(&events, "admitted");
    assert_eq!(admitted.len(), 1, "{events:#?}");
    let admitted = admitted[0];
    assert_eq!(admitted["src"], CLIENT_IP.to_string());
    assert_eq!(admitted["dst"], SERVER_IP.to_string());
    assert_eq!(admitted["dst_port"], data_port);
    assert_eq!(admitted["control"], control);

    let dropped = of_kind(&events, "unsolicited_dropped");
    assert!(!dropped.is_empty(), "{events:#?}");
    for syn in dropped {
        assert_eq!(syn["family"], "ipv4");
        assert_eq!(syn["src"], CLIENT_IP.to_string());
        assert_eq!(syn["dst"], SERVER_IP.to_string());
        assert_eq!(syn["dst_port"], UNANNOUNCED);
        assert!(syn.get("control").is_none(), "{syn}");
    }
    assert_eq!(
        events_flag(&lab),
        0,
        "the reader ended: the programs stop writing"
    );
}

#[test]
fn a_closed_pipe_ends_the_reader_quietly() {
    let lab = Lab::guarded("eventpipe");
    let mut follower = Follower::start(&lab);
    let mut child = follower.child.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    unannounced_syn(&lab);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("unsolicited_dropped"), "{line}");
    drop(stdout);
    // The next event finds the pipe closed.
    unannounced_syn(&lab);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ftp-loader events outlived its pipe"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let mut said = String::new();
    follower.stderr.read_to_string(&mut said).unwrap();
    assert_eq!(said, "", "a closed pipe ends it quietly");
    assert_eq!(events_flag(&lab), 0);
}

#[test]
fn the_loader_logs_events_with_log_events() {
    ftp_lab::require_root();
    let mut lab = Lab::new("logevents", &ftp_lab::lab::default_loader_bin()).unwrap();
    Server::Vsftpd.start(&mut lab).unwrap();
    lab.start_listener(UNANNOUNCED).unwrap();
    lab.start_loader(&["--log-events"]).unwrap();

    let (data_port, control_port) = passive_download(&lab);
    unannounced_syn(&lab);
    let announced = format!(
        "[ANNOUNCED] ipv4 tcp {CLIENT_IP} -> {SERVER_IP}:{data_port} (any source port) master {CLIENT_IP}:{control_port} -> {SERVER_IP}:21"
    );
    let dropped = format!("[UNSOLICITED_DROPPED] ipv4 tcp {CLIENT_IP}:");
    wait_for("the loader to log the events", || {
        let log = lab.loader_log();
        Ok(log.contains(&announced) && log.contains(&dropped))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nloader log:\n{}", lab.loader_log()));
    let log = lab.loader_log();
    let admitted = log
        .lines()
        .find(|l| l.contains("[ADMITTED]"))
        .unwrap_or_else(|| panic!("no admission logged:\n{log}"));
    assert!(
        admitted.contains(&format!(
            " -> {SERVER_IP}:{data_port} master {CLIENT_IP}:{control_port} -> {SERVER_IP}:21"
        )),
        "{admitted}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("[UNSOLICITED_DROPPED]"))
            .all(|l| l.ends_with(&format!("-> {SERVER_IP}:{UNANNOUNCED}"))),
        "{log}"
    );
    // The loader is the events' reader: `events` is refused.
    let second = lab.loader_command(&["events"]).unwrap();
    assert_eq!(second.status.code(), Some(1), "{second:?}");
}

#[test]
fn a_burst_of_drops_yields_at_most_the_buckets_events() {
    let lab = Lab::guarded("eventburst");
    let follower = Follower::start(&lab);
    const BURST: u64 = 2000;
    let before = lab.stats().unwrap();
    let link = Link::find(&lab).unwrap();
    let sender = PacketSocket::sender_in(&lab.client_ns, CLIENT_IF).unwrap();
    let started = Instant::now();
    for i in 0..BURST {
        let syn = Tcp::new(CLIENT_IP, 20000 + i as u16, SERVER_IP, UNANNOUNCED, TCP_SYN);
        sender.send(&syn.frame_on(link.to_server(), b"")).unwrap();
    }
    wait_for("the guard to drop the burst", || {
        Ok(lab.stats()?["unsolicited_dropped"] - before["unsolicited_dropped"] >= BURST)
    })
    .unwrap();
    let elapsed = started.elapsed();
    // Written ones reach the reader within moments.
    std::thread::sleep(Duration::from_millis(300));
    let after = lab.stats().unwrap();
    let events = follower.stop();
    let seen = of_kind(&events, "unsolicited_dropped")
        .iter()
        .filter(|e| e["src"] == CLIENT_IP.to_string() && e["dst_port"] == UNANNOUNCED)
        .count() as u64;
    let suppressed = after["events_suppressed"] - before["events_suppressed"];
    let lost = after["events_lost"] - before["events_lost"];
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) } as u64;
    let bound = cpus * (u64::from(EVENT_BURST) + elapsed.as_nanos() as u64 / EVENT_TOKEN_NS + 1);
    assert!(
        seen >= 1 && seen <= bound,
        "{seen} events of {BURST} drops (bound {bound} on {cpus} CPUs in {elapsed:?})"
    );
    assert!(suppressed > 0);
    assert_eq!(
        seen + suppressed + lost,
        BURST,
        "every drop is an event, suppressed or lost"
    );
}
