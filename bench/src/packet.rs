//! Per-packet cost of the kernel programs, by class of packet, with `BPF_PROG_TEST_RUN`,
//! against a do-nothing XDP program measured in the same run.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use ftp_ebpf_common::{
    addr::{Family, ipv4},
    contract::{CONTROLS, EGRESS_PROGRAM, FLOWS, INGRESS_PROGRAM},
    flow::{FlowKey, FlowValue},
};
use ftp_lab::frame::{ACK, ControlSession, IPPROTO_UDP, PSH, SYN, Tcp, WINDOW, ip_frame};
use ftp_loader::ebpf::{self, Settings};

use super::{
    Bench, Figure, Section, alternate,
    baseline::Baseline,
    median,
    scale::{self, syn},
};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// A class of packet and the most it may cost.
struct Class {
    name: &'static str,
    /// One frame, run `repeat` times; or, for control segments, one frame per control
    /// connection, each run once (see `fresh`).
    frames: Vec<Vec<u8>>,
    /// Frames run, untimed, before each round of `frames`: the control connections'
    /// handshakes.
    setup: Vec<Vec<u8>>,
    /// At most this many times the baseline, or at most this many ns.
    target: Target,
}

#[derive(Clone, Copy)]
enum Target {
    Ratio(f64),
    Nanoseconds(f64),
    None,
}

/// Control connections each control class is measured on.
pub const FRESH_CONNECTIONS: u16 = 4000;

/// The same segment on `FRESH_CONNECTIONS` control connections (client ports), with their
/// handshakes to run first: each segment is the first of its connection after the
/// handshake, so it is judged by the connection's windows and read. The same frame run
/// again would be a retransmission, which is not read, and the control table (LRU) keeps
/// every connection.
pub fn fresh(segment: impl Fn(&ControlSession) -> Vec<u8>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut setup = Vec::new();
    let mut frames = Vec::new();
    for i in 0..FRESH_CONNECTIONS {
        let mut session = ControlSession::new(CLIENT, SERVER);
        session.client_port = 20000 + i;
        setup.extend(session.handshake());
        frames.push(segment(&session));
    }
    (setup, frames)
}

/// A class of control segments, from `fresh`.
fn control(
    name: &'static str,
    segment: impl Fn(&ControlSession) -> Vec<u8>,
    target: Target,
) -> Class {
    let (setup, frames) = fresh(segment);
    Class {
        name,
        frames,
        setup,
        target,
    }
}

fn classes() -> Vec<Class> {
    vec![
        Class {
            name: "non-TCP (UDP)",
            frames: vec![ip_frame(
                CLIENT.into(),
                SERVER.into(),
                IPPROTO_UDP,
                &[0x9c, 0x40, 0, 53, 0, 8, 0, 0],
            )],
            setup: vec![],
            target: Target::Ratio(1.5),
        },
        Class {
            name: "TCP outside the guarded range",
            frames: vec![Tcp::new(CLIENT, 443, SERVER, 80, ACK).frame(b"GET")],
            setup: vec![],
            target: Target::Ratio(1.5),
        },
        Class {
            name: "packet of a tracked flow",
            frames: vec![
                Tcp::new(CLIENT, 51000, SERVER, 10000, ACK | PSH)
                    .seq(1 << 10)
                    .frame(&[0u8; 64]),
            ],
            setup: vec![],
            target: Target::Ratio(1.5),
        },
        Class {
            name: "packet of a tracked flow, 1 in 64: refreshes the flow",
            frames: vec![
                Tcp::new(CLIENT, 51000, SERVER, 10000, ACK | PSH)
                    .seq(1 << 16)
                    .frame(&[0u8; 64]),
            ],
            setup: vec![],
            target: Target::None,
        },
        Class {
            name: "unsolicited SYN (dropped)",
            frames: vec![Tcp::new(CLIENT, 51001, SERVER, 10001, SYN).frame(&[])],
            setup: vec![],
            target: Target::Ratio(1.5),
        },
        {
            // Run a million times: the first is read, the rest are retransmissions, judged
            // by the connection's windows and found read already. The cost of following
            // a control connection, without the scanning.
            let session = ControlSession::new(CLIENT, SERVER);
            Class {
                name: "control segment again (a retransmission: judged, not read)",
                frames: vec![session.reply_at(session.server_seq(), b"150 Here it comes.\r\n")],
                setup: session.handshake().to_vec(),
                target: Target::None,
            }
        },
        control(
            "control, acknowledgement only (moves the window)",
            |s| {
                Tcp::new(s.client, s.client_port, s.server, s.server_port, ACK)
                    .seq(s.client_seq())
                    .ack(s.server_seq())
                    .window(WINDOW)
                    .frame(&[])
            },
            Target::None,
        ),
        control(
            "control, nothing to parse (150)",
            |s| {
                s.reply_at(
                    s.server_seq(),
                    b"150 Opening BINARY mode data connection for blob (2097152 bytes).\r\n",
                )
            },
            Target::None,
        ),
        control(
            "227 reply",
            |s| {
                s.reply_at(
                    s.server_seq(),
                    b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n",
                )
            },
            Target::Nanoseconds(500.0),
        ),
        control(
            "229 reply",
            |s| {
                s.reply_at(
                    s.server_seq(),
                    b"229 Entering Extended Passive Mode (|||10000|)\r\n",
                )
            },
            Target::None,
        ),
        control(
            "EPRT command",
            |s| s.command_at(s.client_seq(), b"EPRT |1|192.0.2.2|6275|\r\n"),
            Target::None,
        ),
    ]
}

/// Nanoseconds per run on `class`: its one frame `repeat` times in the kernel, or each of
/// several frames once. `run` runs a frame so many times and returns the kernel's mean
/// duration of one run.
fn ns_per_packet(
    class: &Class,
    repeat: u32,
    mut run: impl FnMut(&[u8], u32) -> Result<f64>,
) -> Result<f64> {
    let frames = &class.frames;
    for frame in &class.setup {
        run(frame, 0)?;
    }
    let repeat = if frames.len() == 1 { repeat } else { 1 };
    let mut total = 0.0;
    for frame in frames {
        total += run(frame, repeat)?;
    }
    Ok(total / frames.len() as f64)
}

/// `ns_per_packet` for one of the product's programs.
fn product_ns_per_packet(
    ebpf: &mut Ebpf,
    program: &str,
    class: &Class,
    repeat: u32,
) -> Result<f64> {
    if class.frames.len() > 1 {
        forget_controls(ebpf)?;
    }
    let xdp: &Xdp = ebpf
        .program(program)
        .context("no such program")?
        .try_into()?;
    ns_per_packet(class, repeat, |frame, repeat| {
        let result = xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })?;
        // The kernel reports the mean time of one run.
        Ok(result.duration.as_nanos() as f64)
    })
}

/// Empties the control table, so that the next round reads its segments as new
/// connections again.
pub fn forget_controls(ebpf: &mut Ebpf) -> Result<()> {
    if let Some(map) = ebpf.map_mut(CONTROLS.name) {
        let mut controls = CONTROLS.from_map_mut(map)?;
        let keys: Vec<FlowKey> = controls.keys().filter_map(Result::ok).collect();
        for key in keys {
            controls.remove(&key)?;
        }
    }
    Ok(())
}

fn addr(n: u32) -> [u8; 16] {
    ipv4(n.to_be_bytes())
}

/// Fills the expectation and flow tables with `count` unrelated entries each, and puts in
/// the one flow the tracked-flow class belongs to.
fn fill(ebpf: &mut Ebpf, count: u32) -> Result<()> {
    let now = ftp_loader::monotonic_ns();
    scale::fill_expectations(ebpf, count, now)?;
    scale::fill_flows(ebpf, count, now)?;
    let mut flows = FLOWS.of_mut(ebpf)?;
    let tracked = FlowKey::new(
        Family::V4,
        addr(u32::from(CLIENT)),
        51000,
        addr(u32::from(SERVER)),
        10000,
    );
    flows.insert(tracked, FlowValue::admitted(now, &syn(1)), 0)?;
    Ok(())
}

pub fn run(bench: &Bench) -> Result<Section> {
    let (repeat, filled) = if bench.quick {
        (10_000, 10_000)
    } else {
        (1_000_000, 1_000_000)
    };
    let baseline = Baseline::load()?;

    let mut tables = Vec::new();
    for entries in [0u32, filled] {
        let mut product = ebpf::load(&Settings {
            max_expectations: entries.max(1024) + 1024,
            max_flows: entries.max(1024) + 1024,
            max_controls: entries.max(1024) + u32::from(FRESH_CONNECTIONS),
            ..Settings::default()
        })?;
        fill(&mut product, entries)?;
        tables.push((entries, product));
    }

    let mut section = Section::new("Per-packet cost (BPF_PROG_TEST_RUN, XDP ingress)");
    for program in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
        let info = tables[0]
            .1
            .program(program)
            .context("no such program")?
            .info()?;
        let verified = info
            .verified_instruction_count()
            .context("the kernel reports no verified_insns")?;
        section.figures.push(Figure::new(
            format!("{program}: instructions the verifier processed"),
            f64::from(verified),
            "instructions",
        ));
        section.figures.push(Figure::new(
            format!("{program}: JIT-compiled size"),
            f64::from(info.size_jitted()),
            "bytes",
        ));
    }
    for class in classes() {
        for (entries, product) in &mut tables {
            let samples = alternate(&[false, true], bench.rounds(), |&ours| {
                if ours {
                    product_ns_per_packet(product, INGRESS_PROGRAM, &class, repeat)
                } else {
                    ns_per_packet(&class, repeat, |frame, repeat| {
                        baseline.test_run(frame, repeat)
                    })
                }
            })?;
            let (base, cost) = (median(&samples[0]), median(&samples[1]));
            let mut figure = Figure::new(
                format!("{}, tables with {} entries", class.name, entries),
                cost,
                "ns/packet",
            )
            .samples(&samples[1])
            .against(Baseline::NAME, base);
            figure = match class.target {
                Target::Ratio(max) => {
                    figure.target(format!("<= {max}x baseline"), cost <= max * base)
                }
                Target::Nanoseconds(max) => figure.target(format!("<= {max} ns"), cost <= max),
                Target::None => figure,
            };
            section.figures.push(figure);
        }
    }
    section.notes.push(format!(
        "Each figure is the kernel's mean over {repeat} runs of one frame, median of {} rounds alternating with the baseline. Control segments are measured as the first segment after the handshake of each of {FRESH_CONNECTIONS} control connections, each run once (a repeated segment would be a retransmission, which is not read), so each figure includes judging it by the connection's TCP windows; the handshakes run before, untimed. Single runs carry the timer's own cost, as do the baseline's, measured the same way.",
        bench.rounds()
    ));
    Ok(section)
}
