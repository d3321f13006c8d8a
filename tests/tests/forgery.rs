//! Forged control traffic never opens a port (issue 8): frames written onto the lab's link
//! from the client's side with AF_PACKET, past the client's own stack, claiming to be
//! segments of a real, logged-in control connection (placed relative to its real sequence
//! numbers, which the test reads off the link where an attacker would have to guess them)
//! or of no connection at all. Whatever they say, the expectation table gains nothing, a
//! listener inside the passive range stays unreachable, the counters say why, and the real
//! session goes on working. One client address opening thousands of idle sessions cannot
//! take the expectation table from another.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use ftp_lab::{
    frame::{ACK, PSH, RST, Tcp},
    ftp::Ftp,
    inject::OnLink,
    lab::{
        BLOB_PATH, CLIENT_IP, Lab, SERVER_IP, default_loader_bin, in_netns, output_within, wait_for,
    },
    require_root,
    servers::Server,
};

/// The forged reply announcing the lab's unannounced listener: 40 * 256 + 10 =
/// `UNANNOUNCED`. Each forgery starts
/// with a line end: a segment ahead of the stream looks like one after a gap, and a guard
/// that reads such a segment from its next line on (as this one did before it tracked
/// windows) then reads the forged line; without it, the forgery would fail against that
/// guard by luck.
const FORGED_227: &[u8] = b"\r\n227 Entering Passive Mode (192,0,2,1,40,10).\r\n";
/// A forged command asking the server to connect to the client's port 40000 (156 * 256 +
/// 64): a segment from the client's side, which the check of the source address lets
/// through, so that only the window and the connection's state stand in its way.
const FORGED_PORT: &[u8] = b"\r\nPORT 192,0,2,2,156,64\r\n";

const SPOOFED: &str = "spoofed_source_dropped";
const OUT_OF_WINDOW: &str = "control_out_of_window";
const UNKNOWN: &str = "control_unknown";

/// A logged-in session from the client, its control connection open and idle.
fn session(lab: &Lab) -> Ftp {
    in_netns(&lab.client_ns, Ftp::login).unwrap()
}

/// The live expectations, without their remaining lifetimes (which tick): two listings
/// are equal when the table holds the same expectations.
fn expectations(lab: &Lab) -> Vec<serde_json::Value> {
    let listing = lab.loader_json("expectations").unwrap();
    let mut entries = listing.as_array().expect("a JSON array").clone();
    for entry in &mut entries {
        entry.as_object_mut().unwrap().remove("expires_in_secs");
    }
    entries
}

fn counter(lab: &Lab, name: &str) -> u64 {
    let stats = lab.stats().unwrap();
    *stats
        .get(name)
        .unwrap_or_else(|| panic!("ftp-loader stats has no {name}: {stats:?}"))
}

/// Where a real control connection's streams stand: the next sequence number each side
/// sends, and the window the server announces.
#[derive(Clone, Copy, Debug)]
struct Stream {
    server_next: u32,
    client_next: u32,
    window: u16,
}

/// The attacker on the client's side of the link, plus the cheat: a sniffer that reads a
/// real connection's sequence numbers off the link.
struct Forger {
    on: OnLink,
}

impl Forger {
    fn new(lab: &Lab) -> Self {
        Self {
            on: OnLink::new(lab).unwrap(),
        }
    }

    /// The streams of `ftp`'s control connection now: a NOOP makes the server send a
    /// segment, read off the link once the reply has arrived.
    fn stream(&self, ftp: &mut Ftp) -> Stream {
        let (client, server) = (ftp.local_addr().unwrap(), ftp.peer_addr().unwrap());
        // What queued before (a transfer may have filled the queue, and then the NOOP's
        // segment would find no room) is dropped first.
        self.on.sniffer.last_segment(server, client).unwrap();
        ftp.command("NOOP", 200).unwrap();
        let segment = self
            .on
            .sniffer
            .last_segment(server, client)
            .unwrap()
            .expect("the server's reply to NOOP crossed the link");
        Stream {
            server_next: segment.seq_end(),
            client_next: segment.ack,
            window: segment.window,
        }
    }

    /// Writes the segment onto the link and waits until the guard counts it under
    /// `counted`: only then has the guard judged it, and the table can be read.
    fn send(&self, lab: &Lab, tcp: Tcp, payload: &[u8], counted: &str, what: &str) {
        let before = counter(lab, counted);
        self.on
            .sender
            .send(&tcp.frame_on(self.on.link.to_server(), payload))
            .unwrap();
        wait_for(&format!("{counted} to count {what}"), || {
            Ok(counter(lab, counted) > before)
        })
        .unwrap_or_else(|e| panic!("{e:#}\nstats: {:?}", lab.stats()));
    }
}

/// A real reply's flags: forgeries look like the server's next segment.
const DATA: u8 = PSH | ACK;

/// Which end of the client's control connection a forged segment claims to come from.
#[derive(Clone, Copy, Debug)]
enum End {
    Server,
    Client,
}

impl End {
    /// A segment of the control connection whose client end is `client`, from this end.
    fn segment(self, client: SocketAddr, flags: u8) -> Tcp {
        match self {
            End::Server => Tcp::new(SERVER_IP, 21, client.ip(), client.port(), flags),
            End::Client => Tcp::new(client.ip(), client.port(), SERVER_IP, 21, flags),
        }
    }

    /// This end's next sequence number and what it acknowledges.
    fn numbers(self, stream: &Stream) -> (u32, u32) {
        match self {
            End::Server => (stream.server_next, stream.client_next),
            End::Client => (stream.client_next, stream.server_next),
        }
    }
}

/// A forged 227 naming the listener, into the client's real control connection ahead of
/// the server's stream and into no connection at all; a forged PORT from the client's
/// side out of window and on no connection. None creates an expectation, the listener
/// stays unreachable, and the session's own PASV works afterwards.
#[test]
fn forged_control_segments_open_nothing() {
    let lab = Lab::guarded("forge");
    let mut forger = Forger::new(&lab);
    let mut ftp = session(&lab);
    let client = ftp.local_addr().unwrap();
    assert!(expectations(&lab).is_empty());
    assert!(!lab.unannounced_reachable());
    let check = |what: &str| {
        assert_eq!(
            expectations(&lab),
            Vec::<serde_json::Value>::new(),
            "after {what}"
        );
        // Also none created and gone again: the server's stack answers a segment of no
        // connection with a RST, which would end what the forgery made.
        assert_eq!(counter(&lab, "expectations_created"), 0, "after {what}");
        assert!(!lab.unannounced_reachable(), "after {what}");
    };

    // The server's address arrives on the server's ingress: the host's own address as a
    // source there is a forgery whatever the segment's numbers. The client's address is
    // not the server's own: the source check lets its segments through, and the window
    // and the connection's state must stop them.
    for (end, name, line, ahead_counter, nowhere_counter) in [
        (End::Server, "227", FORGED_227, SPOOFED, SPOOFED),
        (End::Client, "PORT", FORGED_PORT, OUT_OF_WINDOW, UNKNOWN),
    ] {
        for ahead in [100_000, 1 << 20, (1 << 31) - 1] {
            let stream = forger.stream(&mut ftp);
            let (next, acked) = end.numbers(&stream);
            let what = format!("a forged {name} {ahead} bytes ahead of the {end:?}'s stream");
            let forged = end
                .segment(client, DATA)
                .seq(next.wrapping_add(ahead))
                .ack(acked)
                .window(stream.window);
            forger.send(&lab, forged, line, ahead_counter, &what);
            check(&what);
        }
        for _ in 0..3 {
            let port = forger.on.random.port_except(client.port());
            let what = format!("a forged {name} on no connection (client port {port})");
            let forged = end
                .segment(SocketAddr::new(client.ip(), port), DATA)
                .seq(forger.on.random.next_u32())
                .ack(forger.on.random.next_u32());
            forger.send(&lab, forged, line, nowhere_counter, &what);
            check(&what);
        }
    }

    // The real session was not disturbed: its own PASV is believed and its transfer
    // arrives whole.
    downloads_through_an_expectation(&lab, |ftp| ftp.retr(BLOB_PATH), &mut ftp);
    assert!(!lab.unannounced_reachable());
}

/// `download` on the session (in the client's namespace) brings the whole blob, through
/// one expectation.
fn downloads_through_an_expectation(
    lab: &Lab,
    download: impl FnOnce(&mut Ftp) -> anyhow::Result<Vec<u8>> + Send,
    ftp: &mut Ftp,
) {
    let matched = counter(lab, "expectations_matched");
    let blob = lab.blob().unwrap();
    let received = in_netns(&lab.client_ns, || download(ftp)).unwrap();
    assert!(
        received == blob,
        "{} of {} bytes",
        received.len(),
        blob.len()
    );
    assert_eq!(counter(lab, "expectations_matched"), matched + 1);
}

/// RSTs with random sequence numbers, from either end, against a session that just got a
/// real 227: its expectation stays and its data connection opens.
#[test]
fn forged_resets_end_nothing() {
    let lab = Lab::guarded("reset");
    let mut forger = Forger::new(&lab);
    let mut ftp = session(&lab);
    let client = ftp.local_addr().unwrap();
    let announced = ftp.pasv().unwrap();
    let held = expectations(&lab);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["control"]["src_port"], client.port(), "{held:?}");

    let stream = forger.stream(&mut ftp);
    for (end, counted) in [(End::Client, OUT_OF_WINDOW), (End::Server, SPOOFED)] {
        let (next, _) = end.numbers(&stream);
        let seq = next.wrapping_add(forger.on.random.far());
        let what = format!("a forged RST from the {end:?} at {seq} (next {next})");
        forger.send(&lab, end.segment(client, RST).seq(seq), &[], counted, &what);
    }
    // The old guard ended the control connection on the client's RST and removed its
    // expectation with it.
    assert_eq!(expectations(&lab), held);
    assert_eq!(counter(&lab, "expectations_removed"), 0);

    downloads_through_an_expectation(&lab, |ftp| ftp.retr_from(announced, BLOB_PATH), &mut ftp);
}

/// The table and each client's share of it, small enough to fill in seconds.
const MAX_EXPECTATIONS: u32 = 1000;
const SHARE: u32 = 32;
/// Idle sessions of the crowding client, each holding a 227: twice the table.
const IDLE_SESSIONS: u32 = 2000;
/// The other client, on the client host's veth too.
const SECOND_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
/// Opening the idle sessions takes a few seconds in the lab.
const CROWDING_LIMIT: Duration = Duration::from_secs(120);

/// A passive download by Python's ftplib from `source`, both connections bound to it.
const FTPLIB_FROM: &str = r#"
import ftplib, sys
source, host, path, target = sys.argv[1:]
ftp = ftplib.FTP(timeout=10, source_address=(source, 0))
ftp.connect(host, 21)
ftp.login()
ftp.set_pasv(True)
with open(target, "wb") as out:
    ftp.retrbinary("RETR " + path, out.write)
ftp.quit()
"#;

/// One client address opens twice the table's worth of idle sessions, each of which got a
/// 227 and keeps it; it holds no more than twice its share, and a second address still
/// downloads. pyftpdlib serves them: one process for every session, where vsftpd would
/// fork thousands on the lab's two cores.
#[test]
fn one_client_cannot_crowd_out_another() {
    require_root();
    let mut lab = Lab::new("share", &default_loader_bin()).expect("lab");
    Server::Pyftpdlib.start(&mut lab).unwrap();
    lab.start_loader(&[
        "--max-expectations",
        &MAX_EXPECTATIONS.to_string(),
        "--max-expectations-per-client",
        &SHARE.to_string(),
    ])
    .unwrap();
    lab.add_client_address(SECOND_CLIENT).unwrap();

    let deadline = Instant::now() + CROWDING_LIMIT;
    // Kept open to the end: the expectations are only given back when they close.
    let idle = in_netns(&lab.client_ns, || {
        let mut sessions = Vec::new();
        for i in 0..IDLE_SESSIONS {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {i} idle sessions within {CROWDING_LIMIT:?}"
            );
            let mut ftp = Ftp::login()?;
            ftp.pasv()?;
            sessions.push(ftp);
        }
        Ok(sessions)
    })
    .unwrap();
    assert!(idle.iter().all(|ftp| {
        ftp.local_addr()
            .is_ok_and(|a| a.ip() == IpAddr::from(CLIENT_IP))
    }));

    let table = expectations(&lab);
    let held = table
        .iter()
        .filter(|e| e["connector"] == CLIENT_IP.to_string())
        .count();
    assert!(
        held <= 2 * SHARE as usize,
        "{CLIENT_IP} holds {held} expectations, its share is {SHARE}"
    );
    let refused = counter(&lab, "client_share_refused");
    assert!(
        refused >= u64::from(IDLE_SESSIONS - 2 * SHARE),
        "{refused} announcements refused"
    );

    let matched = counter(&lab, "expectations_matched");
    let target = lab.file("second-client");
    let output = output_within(
        lab.client("/usr/bin/python3")
            .args(["-c", FTPLIB_FROM])
            .arg(SECOND_CLIENT.to_string())
            .arg(SERVER_IP.to_string())
            .arg(BLOB_PATH)
            .arg(&target),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        output.status.success(),
        "{}\nstats: {:?}",
        String::from_utf8_lossy(&output.stderr),
        lab.stats()
    );
    assert!(std::fs::read(&target).unwrap() == lab.blob().unwrap());
    assert_eq!(counter(&lab, "expectations_matched"), matched + 1);
    drop(idle);
}
