//! Differential tests against the kernel's own FTP helper (`nf_conntrack_ftp`): the same
//! crafted control sessions, seen at the same time by the helper and by ftp-loader, must
//! leave the same expectations, except where ftp-tracker is deliberately stricter or better
//! (docs/kernel-helper-differences.md lists those cases and why).
//!
//! Each case runs on a control connection of its own, and each side's expectations are read
//! for that connection only, while it is still open.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use ftp_lab::{
    lab::{Family, Lab, LabAddrs, default_loader_bin},
    require_root,
    session::{self, ControlConnection, Expectation, Forgery, KernelOracle, Step},
};

use Data::{Active, Passive};
use Forgery::{ClientReset, ServerAhead, ServerReset};
use Relation::{Same, TrackerBetter, TrackerStricter};
use Step::{Client, Forged, Server};

#[derive(Clone, Copy, Debug)]
enum Relation {
    /// Both create exactly the case's data connections.
    Same,
    /// The kernel creates the case's data connections, ftp-tracker nothing, for this reason.
    TrackerStricter(&'static str),
    /// ftp-tracker creates the case's data connections, the kernel nothing, for this reason.
    TrackerBetter(&'static str),
}

/// A data connection, seen from the control connection.
#[derive(Clone, Copy, Debug)]
enum Data {
    /// The client will connect to this port of the server (227, 229).
    Passive(u16),
    /// The server will connect to this port of the client (PORT, EPRT).
    Active(u16),
}

impl Data {
    fn expectation(self, family: Family) -> Expectation {
        let (connector, listener, port) = match self {
            Passive(port) => (family.client_ip(), family.server_ip(), port),
            Active(port) => (family.server_ip(), family.client_ip(), port),
        };
        Expectation {
            family,
            connector,
            listener,
            port,
        }
    }
}

struct Case {
    name: &'static str,
    family: Family,
    /// Whether the steps follow a login, as in every real session. The kernel helper reads
    /// a segment only if it starts right after a line end it has seen in the same
    /// direction, so it never reads the first segment of either direction.
    greeting: bool,
    steps: &'static [Step],
    /// Whether the expectations are read after both ends closed the control connection.
    closed: bool,
    relation: Relation,
    data: &'static [Data],
}

const V4: Case = Case {
    name: "",
    family: Family::V4,
    greeting: true,
    steps: &[],
    closed: false,
    relation: Same,
    data: &[],
};
const V6: Case = Case {
    family: Family::V6,
    ..V4
};

/// ftp-loader sweeps its tables every 2 s, and may forget a closed connection's
/// expectations only then.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

const GREETING: &[Step] = &[
    Server("220 differential test ready\r\n"),
    Client("USER anonymous\r\n"),
    Server("230 Login successful.\r\n"),
];

const PRIVILEGED: &str = "a data port below 1024 (--min-data-port) would let a control \
    connection open a system service's port, such as SMTP";
const LINE_PARTS: &str = "a line split across segments is read whole; the kernel reads \
    only a segment that starts a line and drops one holding an incomplete command";
const PORT_ZERO: &str = "port 0 is no port anyone can connect to; the kernel expects it \
    all the same";
const FOLDED: &str = "numbers out of range are refused; the kernel folds them into the \
    neighbouring bytes, so the address or port it expects is not the one written";

/// What forgers announce: a port (10250) no real reply of these cases names.
const FORGED_227: &str = "227 Entering Passive Mode ({server},40,10)\r\n";
const FORGED_229: &str = "229 Entering Extended Passive Mode (|||10250|)\r\n";

fn cases() -> Vec<Case> {
    vec![
        // Passive mode, 227: RFC 959 and RFC 1123's variations.
        Case {
            name: "227 with parentheses",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},39,16).\r\n"),
            ],
            data: &[Passive(10000)],
            ..V4
        },
        Case {
            name: "227 without parentheses",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode {server},39,17\r\n"),
            ],
            data: &[Passive(10001)],
            ..V4
        },
        Case {
            name: "227 with text and signs before the numbers",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Passive mode on, connect to =({server},39,18)\r\n"),
            ],
            data: &[Passive(10002)],
            ..V4
        },
        Case {
            name: "227 with a digit in the text before the numbers",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode v2 ({server},39,16)\r\n"),
            ],
            ..V4
        },
        Case {
            name: "227 with leading zeros",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode (192,000,002,001,039,016)\r\n"),
            ],
            data: &[Passive(10000)],
            ..V4
        },
        Case {
            name: "227 ending in a bare LF",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},39,16)\n"),
            ],
            data: &[Passive(10000)],
            ..V4
        },
        Case {
            name: "227 with a NUL byte in its text",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering\0Passive Mode ({server},39,16)\r\n"),
            ],
            data: &[Passive(10000)],
            ..V4
        },
        Case {
            name: "227 with too few numbers",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},39)\r\n"),
            ],
            ..V4
        },
        Case {
            name: "227 with too many numbers",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},39,16,1)\r\n"),
            ],
            ..V4
        },
        Case {
            name: "227 naming another host (third party)",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode (10,0,1,2,39,16)\r\n"),
            ],
            ..V4
        },
        Case {
            name: "227 with port 0",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},0,0)\r\n"),
            ],
            relation: TrackerStricter(PORT_ZERO),
            data: &[Passive(0)],
            ..V4
        },
        Case {
            name: "227 with a privileged port",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},0,25)\r\n"),
            ],
            relation: TrackerStricter(PRIVILEGED),
            data: &[Passive(25)],
            ..V4
        },
        Case {
            name: "227 split across two segments",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},"),
                Server("39,16).\r\n"),
            ],
            relation: TrackerBetter(LINE_PARTS),
            data: &[Passive(10000)],
            ..V4
        },
        Case {
            name: "227 after another reply in one segment",
            steps: &[
                Client("TYPE I\r\nPASV\r\n"),
                Server(
                    "200 Switching to Binary mode.\r\n227 Entering Passive Mode ({server},39,16)\r\n",
                ),
            ],
            relation: TrackerBetter(
                "every line of a segment is read; the kernel reads only a segment's first line",
            ),
            data: &[Passive(10000)],
            ..V4
        },
        Case {
            name: "227 echoed inside another reply",
            steps: &[
                Client("CWD x\r\n"),
                Server("550 227 Entering Passive Mode ({server},39,16).\r\n"),
            ],
            ..V4
        },
        Case {
            name: "227 sent by the client",
            steps: &[Client("227 Entering Passive Mode ({client},39,16)\r\n")],
            ..V4
        },
        // Active mode, PORT.
        Case {
            name: "PORT",
            steps: &[
                Client("PORT {client},39,16\r\n"),
                Server("200 PORT command successful.\r\n"),
            ],
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "PORT in lowercase",
            steps: &[Client("port {client},39,16\r\n")],
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "PORT with leading zeros",
            steps: &[Client("PORT 192,000,002,002,039,016\r\n")],
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "PORT ending in a bare LF",
            steps: &[Client("PORT {client},39,16\n")],
            relation: TrackerBetter(
                "a bare LF ends a line as CRLF does; the kernel wants CR after PORT's numbers",
            ),
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "PORT with a NUL byte after the numbers",
            steps: &[Client("PORT {client},39,16\0\r\n")],
            ..V4
        },
        Case {
            name: "PORT with a NUL byte among the numbers",
            steps: &[Client("PORT {client},39\0,16\r\n")],
            ..V4
        },
        Case {
            name: "PORT with too few numbers",
            steps: &[Client("PORT {client},39\r\n")],
            ..V4
        },
        Case {
            name: "PORT with too many numbers",
            steps: &[Client("PORT {client},39,16,1\r\n")],
            ..V4
        },
        Case {
            name: "PORT with an empty last number",
            steps: &[Client("PORT {client},39,\r\n")],
            relation: TrackerStricter("an empty number is malformed; the kernel reads it as 0"),
            data: &[Active(9984)],
            ..V4
        },
        Case {
            name: "PORT with a port byte above 255",
            steps: &[Client("PORT {client},256,22\r\n")],
            relation: TrackerStricter(FOLDED),
            data: &[Active(22)],
            ..V4
        },
        Case {
            name: "PORT with an address byte above 255",
            steps: &[Client("PORT 192,0,0,514,39,16\r\n")],
            relation: TrackerStricter(FOLDED),
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "PORT naming another host, numbers above 255",
            steps: &[Client("PORT 10,0,1,2,256,22\r\n")],
            ..V4
        },
        Case {
            name: "PORT naming another host (bounce)",
            steps: &[Client("PORT 10,0,1,2,39,16\r\n")],
            ..V4
        },
        Case {
            name: "PORT naming the server",
            steps: &[Client("PORT {server},39,16\r\n")],
            ..V4
        },
        Case {
            name: "PORT with port 0",
            steps: &[Client("PORT {client},0,0\r\n")],
            relation: TrackerStricter(PORT_ZERO),
            data: &[Active(0)],
            ..V4
        },
        Case {
            name: "PORT with a privileged port",
            steps: &[Client("PORT {client},0,25\r\n")],
            relation: TrackerStricter(PRIVILEGED),
            data: &[Active(25)],
            ..V4
        },
        Case {
            name: "PORT with a space after the numbers",
            steps: &[Client("PORT {client},39,16 \r\n")],
            relation: TrackerBetter(
                "a space after the numbers ends them, and vsftpd accepts such a PORT; the \
                 kernel wants CR right after the numbers",
            ),
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "PORT after another command in one segment",
            steps: &[Client("TYPE I\r\nPORT {client},39,16\r\n")],
            relation: TrackerBetter(
                "every line of a segment is read; the kernel reads only a segment's first line",
            ),
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "PORT before another command in one segment",
            steps: &[Client("PORT {client},39,16\r\nLIST\r\n")],
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "PORT split across two segments",
            steps: &[Client("PORT {client},"), Client("39,16\r\n")],
            relation: TrackerBetter(LINE_PARTS),
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "PORT with its verb split across two segments",
            steps: &[Client("PO"), Client("RT {client},39,16\r\n")],
            relation: TrackerBetter(LINE_PARTS),
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "PORT echoed inside another command",
            steps: &[Client("CWD PORT {client},39,16\r\n")],
            ..V4
        },
        Case {
            name: "227 echoed inside a command",
            steps: &[Client("CWD 227 Entering Passive Mode ({server},39,16)\r\n")],
            ..V4
        },
        Case {
            name: "PORT sent by the server",
            steps: &[Server("PORT {server},39,16\r\n")],
            ..V4
        },
        Case {
            name: "PORT in the client's first segment",
            greeting: false,
            steps: &[Client("PORT {client},39,16\r\n")],
            relation: TrackerBetter(
                "every segment is read; the kernel reads a segment only if it follows a line \
                 end it has seen, which the first segment of a direction never does",
            ),
            data: &[Active(10000)],
            ..V4
        },
        // One expectation per control connection: the newest replaces the older.
        Case {
            name: "two 227 replies on one control connection",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},39,16)\r\n"),
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},39,17)\r\n"),
            ],
            data: &[Passive(10001)],
            ..V4
        },
        Case {
            name: "PORT then 227 on one control connection",
            steps: &[
                Client("PORT {client},39,16\r\n"),
                Server("200 PORT command successful.\r\n"),
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},39,17)\r\n"),
            ],
            data: &[Passive(10001)],
            ..V4
        },
        Case {
            name: "PORT, then the control connection closes",
            steps: &[
                Client("PORT {client},39,16\r\n"),
                Server("200 PORT command successful.\r\n"),
            ],
            closed: true,
            relation: TrackerStricter(
                "an expectation ends with its control connection; the kernel keeps it until \
                 it expires or the connection's conntrack entry goes, 2 minutes after FIN \
                 (TIME_WAIT)",
            ),
            data: &[Active(10000)],
            ..V4
        },
        // Forged segments (issue 8): written onto the wire by someone who cannot see the
        // connection, so guesses its sequence numbers. The kernel's conntrack finds them out
        // of window and hands them to no helper; ftp-tracker judges them by the same rules.
        Case {
            name: "227 forged out of window, then the real 227",
            steps: &[
                Client("PASV\r\n"),
                Forged(ServerAhead(FORGED_227, 1 << 20)),
                Forged(ServerAhead(FORGED_227, (1 << 31) - 1)),
                Server("227 Entering Passive Mode ({server},39,16)\r\n"),
            ],
            data: &[Passive(10000)],
            ..V4
        },
        Case {
            name: "RSTs at random sequence numbers after a 227",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode ({server},39,16)\r\n"),
                Forged(ClientReset),
                Forged(ServerReset),
            ],
            data: &[Passive(10000)],
            ..V4
        },
        // Extended modes over IPv4, RFC 2428.
        Case {
            name: "229",
            steps: &[
                Client("EPSV\r\n"),
                Server("229 Entering Extended Passive Mode (|||10000|)\r\n"),
            ],
            data: &[Passive(10000)],
            ..V4
        },
        Case {
            name: "229 with another delimiter",
            steps: &[
                Client("EPSV\r\n"),
                Server("229 Entering Extended Passive Mode (!!!10001!)\r\n"),
            ],
            data: &[Passive(10001)],
            ..V4
        },
        Case {
            name: "229 with port 0",
            steps: &[
                Client("EPSV\r\n"),
                Server("229 Entering Extended Passive Mode (|||0|)\r\n"),
            ],
            ..V4
        },
        Case {
            name: "229 with a port above 65535",
            steps: &[
                Client("EPSV\r\n"),
                Server("229 Entering Extended Passive Mode (|||75536|)\r\n"),
            ],
            relation: TrackerStricter(FOLDED),
            data: &[Passive(10000)],
            ..V4
        },
        Case {
            name: "EPRT |1|",
            steps: &[Client("EPRT |1|{client_ip}|10000|\r\n")],
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "EPRT in lowercase with another delimiter",
            steps: &[Client("eprt !1!{client_ip}!10000!\r\n")],
            data: &[Active(10000)],
            ..V4
        },
        Case {
            name: "EPRT |2| over IPv4 (wrong family)",
            steps: &[Client("EPRT |2|2001:db8::2|10000|\r\n")],
            ..V4
        },
        Case {
            name: "EPRT |1| naming another host",
            steps: &[Client("EPRT |1|10.0.1.2|10000|\r\n")],
            ..V4
        },
        // IPv6 control connections.
        Case {
            name: "229 over IPv6",
            steps: &[
                Client("EPSV\r\n"),
                Server("229 Entering Extended Passive Mode (|||10000|)\r\n"),
            ],
            data: &[Passive(10000)],
            ..V6
        },
        Case {
            name: "229 with another delimiter over IPv6",
            steps: &[
                Client("EPSV\r\n"),
                Server("229 Entering Extended Passive Mode (!!!10001!)\r\n"),
            ],
            data: &[Passive(10001)],
            ..V6
        },
        Case {
            name: "229 with a port above 65535 over IPv6",
            steps: &[
                Client("EPSV\r\n"),
                Server("229 Entering Extended Passive Mode (|||75536|)\r\n"),
            ],
            relation: TrackerStricter(FOLDED),
            data: &[Passive(10000)],
            ..V6
        },
        Case {
            name: "229 echoed inside another reply over IPv6",
            steps: &[
                Client("CWD x\r\n"),
                Server("550 229 Entering Extended Passive Mode (|||10000|)\r\n"),
            ],
            ..V6
        },
        Case {
            name: "229 forged out of window over IPv6, then the real 229",
            steps: &[
                Client("EPSV\r\n"),
                Forged(ServerAhead(FORGED_229, 1 << 20)),
                Server("229 Entering Extended Passive Mode (|||10000|)\r\n"),
                Forged(ClientReset),
                Forged(ServerReset),
            ],
            data: &[Passive(10000)],
            ..V6
        },
        Case {
            name: "EPRT |2| over IPv6",
            steps: &[
                Client("EPRT |2|{client_ip}|10000|\r\n"),
                Server("200 EPRT command successful.\r\n"),
            ],
            data: &[Active(10000)],
            ..V6
        },
        Case {
            name: "EPRT |2| with the address written in full",
            steps: &[Client("EPRT |2|2001:0DB8:0:0:0:0:0:2|10000|\r\n")],
            data: &[Active(10000)],
            ..V6
        },
        Case {
            name: "EPRT |2| ending in a bare LF",
            steps: &[Client("EPRT |2|{client_ip}|10000|\n")],
            data: &[Active(10000)],
            ..V6
        },
        Case {
            name: "EPRT |2| naming another host",
            steps: &[Client("EPRT |2|2001:db8::3|10000|\r\n")],
            ..V6
        },
        Case {
            name: "EPRT |1| over IPv6 (wrong family)",
            steps: &[Client("EPRT |1|192.0.2.2|10000|\r\n")],
            ..V6
        },
        Case {
            name: "EPRT |2| with a privileged port",
            steps: &[Client("EPRT |2|{client_ip}|25|\r\n")],
            relation: TrackerStricter(PRIVILEGED),
            data: &[Active(25)],
            ..V6
        },
        Case {
            name: "EPRT |2| split across two segments",
            steps: &[Client("EPRT |2|{client_ip}|"), Client("10000|\r\n")],
            relation: TrackerBetter(LINE_PARTS),
            data: &[Active(10000)],
            ..V6
        },
        Case {
            name: "EPRT |2| after another command in one segment",
            steps: &[Client("TYPE I\r\nEPRT |2|{client_ip}|10000|\r\n")],
            relation: TrackerBetter(
                "every line of a segment is read; the kernel reads only a segment's first line",
            ),
            data: &[Active(10000)],
            ..V6
        },
        Case {
            name: "two 229 replies on one control connection",
            steps: &[
                Client("EPSV\r\n"),
                Server("229 Entering Extended Passive Mode (|||10000|)\r\n"),
                Client("EPSV\r\n"),
                Server("229 Entering Extended Passive Mode (|||10001|)\r\n"),
            ],
            data: &[Passive(10001)],
            ..V6
        },
        Case {
            name: "PORT over IPv6 naming the client's IPv4 address",
            steps: &[Client("PORT {client},39,16\r\n")],
            ..V6
        },
        Case {
            name: "PORT over IPv6 naming the first 32 bits of the client's address",
            steps: &[Client("PORT 32,1,13,184,39,16\r\n")],
            relation: TrackerStricter(
                "PORT and 227 carry IPv4 addresses, meaningless on an IPv6 control connection; \
                 the kernel compares them with the first 4 bytes of the IPv6 address",
            ),
            data: &[Active(10000)],
            ..V6
        },
        Case {
            name: "227 over IPv6 naming the first 32 bits of the server's address",
            steps: &[
                Client("PASV\r\n"),
                Server("227 Entering Passive Mode (32,1,13,184,39,16)\r\n"),
            ],
            relation: TrackerStricter(
                "PORT and 227 carry IPv4 addresses, meaningless on an IPv6 control connection; \
                 the kernel compares them with the first 4 bytes of the IPv6 address",
            ),
            data: &[Passive(10000)],
            ..V6
        },
    ]
}

/// What one case left on each side.
struct Outcome {
    kernel: BTreeSet<Expectation>,
    tracker: BTreeSet<Expectation>,
}

fn run_case(
    lab: &Lab,
    oracle: &KernelOracle,
    listener: &std::net::TcpListener,
    case: &Case,
    want_tracker: &BTreeSet<Expectation>,
) -> Result<Outcome> {
    oracle.flush()?;
    let mut connection = ControlConnection::open(lab, listener)?;
    if case.greeting {
        connection.play(GREETING)?;
    }
    let judged = || -> Result<u64> {
        Ok(lab
            .stats()?
            .get("control_out_of_window")
            .copied()
            .unwrap_or(0))
    };
    let judged_before = judged()?;
    connection.play(case.steps)?;
    // A forgery that never reached ftp-loader would make the case pass for nothing.
    let forged = case
        .steps
        .iter()
        .filter(|step| matches!(step, Forged(_)))
        .count() as u64;
    let judged = judged()? - judged_before;
    ensure!(
        judged == forged,
        "ftp-loader found {judged} segments out of window, not the {forged} forged"
    );
    let ends = connection.ends()?;
    if !case.closed {
        // Read while the control connection is open: its end may take its expectations
        // along.
        return Ok(Outcome {
            kernel: oracle.expectations(ends)?,
            tracker: ends.tracker_expectations(lab)?,
        });
    }
    connection.close()?;
    let deadline = Instant::now() + CLOSE_GRACE;
    loop {
        let tracker = ends.tracker_expectations(lab)?;
        if tracker == *want_tracker || Instant::now() > deadline {
            return Ok(Outcome {
                kernel: oracle.expectations(ends)?,
                tracker,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn show(set: &BTreeSet<Expectation>) -> String {
    if set.is_empty() {
        return "nothing".to_owned();
    }
    set.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn run_family(family: Family, tag: &str) {
    require_root();
    let mut lab = Lab::new(tag, &default_loader_bin()).expect("lab");
    lab.start_loader(&[]).expect("ftp-loader");
    let oracle = KernelOracle::attach(&mut lab).expect("kernel oracle");
    let listener = session::listen(&lab, family).expect("FTP listener");

    let mut table = String::from(
        "| case | kernel helper | ftp-tracker | relation | |\n|---|---|---|---|---|\n",
    );
    let mut failed = Vec::new();
    for case in cases().iter().filter(|c| c.family == family) {
        let data: BTreeSet<Expectation> = case.data.iter().map(|d| d.expectation(family)).collect();
        let (relation, want_kernel, want_tracker) = match case.relation {
            Same => ("same".to_owned(), data.clone(), data),
            TrackerStricter(why) => (format!("tracker stricter: {why}"), data, BTreeSet::new()),
            TrackerBetter(why) => (format!("tracker better: {why}"), BTreeSet::new(), data),
        };
        let (kernel, tracker, verdict) =
            match run_case(&lab, &oracle, &listener, case, &want_tracker) {
                Ok(Outcome { kernel, tracker }) => {
                    let verdict = if kernel == want_kernel && tracker == want_tracker {
                        "ok".to_owned()
                    } else {
                        failed.push(case.name);
                        format!(
                            "FAILED: wanted kernel {}, tracker {}",
                            show(&want_kernel),
                            show(&want_tracker)
                        )
                    };
                    (show(&kernel), show(&tracker), verdict)
                }
                Err(error) => {
                    failed.push(case.name);
                    ("?".to_owned(), "?".to_owned(), format!("FAILED: {error:#}"))
                }
            };
        table += &format!(
            "| {} | {kernel} | {tracker} | {relation} | {verdict} |\n",
            case.name.replace('|', "\\|")
        );
    }
    // Shown on failure, or always with --nocapture: both sides of every case.
    println!("{table}");
    assert!(
        failed.is_empty(),
        "{} cases differ from the kernel helper other than as documented (table above): \
         {failed:#?}",
        failed.len()
    );
}

/// The differences docs/kernel-helper-differences.md lists are exactly the tested ones, and
/// every difference says what the kernel or ftp-tracker expects.
#[test]
fn documented_differences_are_the_tested_ones() {
    let doc = include_str!("../../docs/kernel-helper-differences.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split_once("` |"))
        .map(|(name, _)| name.replace("\\|", "|"))
        .collect();
    let differences: BTreeSet<String> = cases()
        .iter()
        .filter(|case| !matches!(case.relation, Same))
        .inspect(|case| {
            assert!(
                !case.data.is_empty(),
                "{}: a difference needs data",
                case.name
            )
        })
        .map(|case| case.name.to_owned())
        .collect();
    assert_eq!(documented, differences);
}

#[test]
fn ipv4_sessions_match_the_kernel_helper() {
    run_family(Family::V4, "diff4");
}

#[test]
fn ipv6_sessions_match_the_kernel_helper() {
    run_family(Family::V6, "diff6");
}
