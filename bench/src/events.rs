//! What the events cost the ingress program (`BPF_PROG_TEST_RUN`), on the packets that make
//! one: with nobody listening (`Config::events` 0: the programs only look the flag up) and
//! with a reader (each event written into the ring, or, in a flood, suppressed by the rate
//! limit). Each figure is the cost with a reader against the same packets without one.

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuValues, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
    util::nr_cpus,
};
use bytemuck::Zeroable;
use ftp_ebpf_common::{
    config::Config,
    contract::{CONFIG, DEFAULT_MAX_EXPECTATIONS, EVENT_BUCKETS, EVENTS, INGRESS_PROGRAM},
    event::EventBucket,
};
use ftp_lab::frame::{SYN, Tcp};
use ftp_loader::ebpf::{self, Settings};

use super::{
    Bench, Figure, Section, alternate, median,
    packet::{CLIENT, FRESH_CONNECTIONS, SERVER, forget_controls, fresh},
};

/// A class of packet that makes an event.
struct Case {
    name: &'static str,
    /// Run before each round, untimed (control connections' handshakes).
    setup: Vec<Vec<u8>>,
    frames: Vec<Vec<u8>>,
    /// Times each frame runs in one test run.
    repeat: u32,
    /// Whether each test run starts with full token buckets: then every run of a limited
    /// event writes it, rather than counting it suppressed.
    refill: bool,
}

/// The product loaded, with its ring taken out to be drained between runs.
struct Product {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
}

impl Product {
    fn listening(&mut self, on: bool) -> Result<()> {
        CONFIG.of_mut(&mut self.ebpf)?.set(
            0,
            Config {
                events: u8::from(on),
                ..Settings::default().config()
            },
            0,
        )?;
        Ok(())
    }

    fn refill(&mut self) -> Result<()> {
        let cpus = nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let full = PerCpuValues::try_from(vec![EventBucket::zeroed(); cpus])?;
        EVENT_BUCKETS.of_mut(&mut self.ebpf)?.set(0, full, 0)?;
        Ok(())
    }

    /// Mean ns per run of `case`'s frames, the ring drained after each test run (untimed)
    /// so that every event finds room.
    fn ns_per_packet(&mut self, case: &Case, listening: bool) -> Result<f64> {
        self.listening(listening)?;
        if !case.setup.is_empty() {
            forget_controls(&mut self.ebpf)?;
        }
        let mut total = 0.0;
        for (i, frame) in case.setup.iter().chain(&case.frames).enumerate() {
            if case.refill {
                self.refill()?;
            }
            let xdp: &Xdp = self
                .ebpf
                .program(INGRESS_PROGRAM)
                .context("no such program")?
                .try_into()?;
            let timed = i >= case.setup.len();
            let result = xdp.test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: if timed { case.repeat } else { 1 },
                ..Default::default()
            })?;
            if timed {
                total += result.duration.as_nanos() as f64;
            }
            while self.ring.next().is_some() {}
        }
        Ok(total / case.frames.len() as f64)
    }
}

pub fn run(bench: &Bench) -> Result<Section> {
    let (repeat, singles) = if bench.quick {
        (10_000, 200)
    } else {
        (1_000_000, 4000)
    };
    let mut ebpf = ebpf::load(&Settings {
        max_controls: 1024 + u32::from(FRESH_CONNECTIONS),
        // One client announces on every connection: its share must not refuse them.
        max_per_client: DEFAULT_MAX_EXPECTATIONS,
        ..Settings::default()
    })?;
    let ring = EVENTS.from_map(ebpf.take_map(EVENTS.name).context("no event ring")?)?;
    let mut product = Product { ebpf, ring };

    let syn = Tcp::new(CLIENT, 51001, SERVER, 10001, SYN).frame(&[]);
    let (setup, announcements) = fresh(|s| {
        s.reply_at(
            s.server_seq(),
            b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n",
        )
    });
    let cases = [
        Case {
            name: "unsolicited SYN, each event written",
            setup: vec![],
            frames: vec![syn.clone(); singles],
            repeat: 1,
            refill: true,
        },
        Case {
            name: "unsolicited SYN flood (events suppressed by the rate limit)",
            setup: vec![],
            frames: vec![syn],
            repeat,
            refill: false,
        },
        Case {
            name: "227 reply (announced event written)",
            setup,
            frames: announcements,
            repeat: 1,
            refill: false,
        },
    ];

    let mut section = Section::new("Events (BPF_PROG_TEST_RUN, XDP ingress)");
    for case in &cases {
        let samples = alternate(&[false, true], bench.rounds(), |&listening| {
            product.ns_per_packet(case, listening)
        })?;
        let (off, on) = (median(&samples[0]), median(&samples[1]));
        section.figures.push(
            Figure::new(format!("{}, a reader", case.name), on, "ns/packet")
                .samples(&samples[1])
                .against("nobody listening", off),
        );
    }
    section.notes.push(format!(
        "Each figure is the ingress program's cost per packet with a reader (CONFIG.events = 1) against the same packets with nobody listening (the programs only look the flag up), medians of {} rounds alternating the two. Single runs (each event written: full token buckets before each, the ring drained after each) carry the timer's own cost on both sides; the flood is one SYN run {repeat} times, all but each CPU's burst suppressed.",
        bench.rounds()
    ));
    Ok(section)
}
