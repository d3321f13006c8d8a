//! What a NAT gateway's work costs (`BPF_PROG_TEST_RUN`, tc): on a `--nat-inside`
//! interface, a 227 reply rewritten to the public address (the splice, its checksums, the
//! NAT_CONTROLS entry) and a later segment of a rewritten connection renumbered; on the
//! outside interface, a data packet of a translated connection (its destination address
//! and checksums rewritten). Each is judged against the plain tc guard on the same
//! packets, which rewrites nothing, and against the do-nothing tc program.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use ftp_ebpf_common::{
    addr::{Family, ipv4},
    contract::{
        EGRESS_NAT_PROGRAM, FLOWS, INGRESS_NAT_PROGRAM, INGRESS_TC_PROGRAM, NAT_FLOWS, NAT_INSIDE,
    },
    flow::{FlowKey, FlowValue},
    nat::{NAT_TO_INSIDE, NatFlow, NatInside},
    window::Numbers,
};
use ftp_lab::frame::{ACK, ControlSession, Tcp};
use ftp_loader::ebpf::{self, Settings};

use super::{
    Bench, Figure, Section, alternate,
    baseline::Baseline,
    median,
    packet::{CLIENT, FRESH_CONNECTIONS, SERVER, forget_controls},
};

/// The address the rewritten replies name.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const REPLY: &[u8] = b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n";

/// Runs a tc program of the product on `frame` once; the kernel's duration, in ns.
fn run_once(ebpf: &Ebpf, program: &str, frame: &[u8]) -> Result<f64> {
    let classifier: &SchedClassifier = ebpf
        .program(program)
        .context("no such program")?
        .try_into()?;
    let mut out = vec![0u8; frame.len() + 64];
    let result = classifier.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    Ok(result.duration.as_nanos() as f64)
}

/// The gateway's sessions: each handshake shown to the inside interface's programs, then
/// its 227 reply and the next reply.
struct Sessions {
    setup: Vec<(&'static str, Vec<u8>)>,
    replies: Vec<Vec<u8>>,
    next: Vec<Vec<u8>>,
}

fn sessions() -> Sessions {
    let mut sessions = Sessions {
        setup: Vec::new(),
        replies: Vec::new(),
        next: Vec::new(),
    };
    for i in 0..FRESH_CONNECTIONS {
        let mut session = ControlSession::new(CLIENT, SERVER);
        session.client_port = 20000 + i;
        let [syn, syn_ack, ack] = session.handshake();
        sessions.setup.extend([
            (EGRESS_NAT_PROGRAM, syn),
            (INGRESS_NAT_PROGRAM, syn_ack),
            (EGRESS_NAT_PROGRAM, ack),
        ]);
        sessions.replies.push(session.reply(REPLY));
        sessions
            .next
            .push(session.reply(b"150 Here comes the directory listing.\r\n"));
    }
    sessions
}

/// Mean ns per reply through `program`: each session's handshake first (untimed), then its
/// 227 and, when `renumbered`, the next reply, of which only the latter is timed.
fn ns_per_reply(
    ebpf: &mut Ebpf,
    program: &str,
    sessions: &Sessions,
    renumbered: bool,
) -> Result<f64> {
    forget_controls(ebpf)?;
    for (program, frame) in &sessions.setup {
        run_once(ebpf, program, frame)?;
    }
    let mut total = 0.0;
    for (reply, next) in sessions.replies.iter().zip(&sessions.next) {
        let first = run_once(ebpf, program, reply)?;
        total += if renumbered {
            run_once(ebpf, program, next)?
        } else {
            first
        };
    }
    Ok(total / sessions.replies.len() as f64)
}

/// The two figures of samples taken alternately of the plain guard, the NAT program and
/// the do-nothing program: the NAT program against each.
fn push_figures(section: &mut Section, name: &str, samples: &[Vec<f64>]) {
    let (plain, nat, nothing) = (
        median(&samples[0]),
        median(&samples[1]),
        median(&samples[2]),
    );
    section.figures.push(
        Figure::new(name, nat, "ns/packet")
            .samples(&samples[1])
            .against("the plain tc guard on the same packets", plain),
    );
    section.figures.push(
        Figure::new(format!("{name}, against doing nothing"), nat, "ns/packet")
            .samples(&samples[1])
            .against(Baseline::TC_NAME, nothing),
    );
}

pub fn run(bench: &Bench) -> Result<Section> {
    let mut product = ebpf::load(&Settings {
        max_controls: 1024 + u32::from(FRESH_CONNECTIONS),
        nat_inside: vec![format!("lo={PUBLIC}").parse().map_err(anyhow::Error::msg)?],
        ..Settings::default()
    })?;
    for program in [INGRESS_NAT_PROGRAM, EGRESS_NAT_PROGRAM] {
        ebpf::load_program(&mut product, program)?;
    }
    // BPF_PROG_TEST_RUN runs tc programs on the loopback device: index 1.
    NAT_INSIDE.of_mut(&mut product)?.insert(
        1,
        NatInside {
            public: ipv4(PUBLIC.octets()),
        },
        0,
    )?;
    let baseline = Baseline::load_tc()?;
    let sessions = sessions();

    let mut section = Section::new("NAT gateway rewriting (BPF_PROG_TEST_RUN, tc ingress)");
    for (name, renumbered) in [
        ("227 reply rewritten to the public address", false),
        ("next reply renumbered", true),
    ] {
        let samples = alternate(
            &[INGRESS_TC_PROGRAM, INGRESS_NAT_PROGRAM, "baseline"],
            bench.rounds(),
            |&program| {
                if program == "baseline" {
                    let frames = if renumbered {
                        &sessions.next
                    } else {
                        &sessions.replies
                    };
                    let mut total = 0.0;
                    for frame in frames {
                        total += baseline.test_run(frame, 1)?;
                    }
                    Ok(total / frames.len() as f64)
                } else {
                    ns_per_reply(&mut product, program, &sessions, renumbered)
                }
            },
        )?;
        push_figures(&mut section, name, &samples);
    }
    // The outside interface: the same programs, lo no longer --nat-inside, and one
    // translated data connection, admitted and tracked as the guard leaves it.
    NAT_INSIDE.of_mut(&mut product)?.remove(&1)?;
    let flow = FlowKey::new(
        Family::V4,
        ipv4(CLIENT.octets()),
        51000,
        ipv4(PUBLIC.octets()),
        10000,
    );
    let now = ftp_loader::monotonic_ns();
    let numbers = Numbers {
        seq: 1,
        ack: 0,
        payload_len: 0,
        flags: ftp_lab::frame::SYN,
        window: 65535,
        window_scale: ftp_ebpf_common::window::NO_WINDOW_SCALE,
    };
    FLOWS
        .of_mut(&mut product)?
        .insert(flow, FlowValue::admitted(now, &numbers), 0)?;
    NAT_FLOWS.of_mut(&mut product)?.insert(
        flow,
        NatFlow {
            addr: ipv4(SERVER.octets()),
            direction: NAT_TO_INSIDE,
            _pad: [0; 3],
        },
        0,
    )?;
    let data = Tcp::new(CLIENT, 51000, PUBLIC, 10000, ACK)
        .seq(2)
        .ack(1)
        .frame(&[0u8; 1400]);
    let singles = usize::from(FRESH_CONNECTIONS);
    let samples = alternate(
        &[INGRESS_TC_PROGRAM, INGRESS_NAT_PROGRAM, "baseline"],
        bench.rounds(),
        |&program| {
            let mut total = 0.0;
            for _ in 0..singles {
                total += if program == "baseline" {
                    baseline.test_run(&data, 1)?
                } else {
                    run_once(&product, program, &data)?
                };
            }
            Ok(total / singles as f64)
        },
    )?;
    let name = "data packet translated (outside interface)";
    push_figures(&mut section, name, &samples);
    section.notes.push(format!(
        "Single runs on {FRESH_CONNECTIONS} control connections, medians of {} rounds alternating the programs: `{INGRESS_NAT_PROGRAM}` rewrites each 227 (3 bytes longer) and renumbers the reply after it; `{INGRESS_TC_PROGRAM}` scans the same replies without rewriting. The translated data packet (1400 bytes of payload, a tracked connection's) runs {FRESH_CONNECTIONS} times a round through each, each run on a fresh copy. The do-nothing tc program runs on the same packets. Against netfilter's nf_nat_ftp the comparison is not per packet (the kernel helper cannot be run alone): see the gateway lab's session figures.",
        bench.rounds()
    ));
    Ok(section)
}
