//! Scale and memory: the kernel memory of the tables at 10k, 100k and 1M entries (from the
//! kernel's own accounting of each map), bytes per tracked FTP session against the kernel's
//! conntrack (its slab objects), and what happens at the cap.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf, Pod,
    maps::{Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use ftp_ebpf_common::{
    addr::{Family, ipv4},
    contract::{self, CONTROLS, EXPECTATIONS, FLOWS, HashTable, STATS},
    control::ControlState,
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
    stats::Counter,
    window::{Numbers, TCP_SYN},
};
use ftp_lab::frame::{ControlSession, SYN, Tcp};
use ftp_loader::ebpf::{self, Settings};

use super::{Bench, Figure, Section};

/// The tables that grow with the sessions: each name with how to count its entries.
type Count = fn(&Ebpf) -> Result<u64>;
const TABLES: [(&str, Count); 3] = [
    (CONTROLS.name, |ebpf| entries(ebpf, CONTROLS)),
    (EXPECTATIONS.name, |ebpf| entries(ebpf, EXPECTATIONS)),
    (FLOWS.name, |ebpf| entries(ebpf, FLOWS)),
];

/// The kernel's accounting of a map's memory (`memlock` in its fdinfo; exact for hash maps
/// since 6.5).
fn map_memory(map: &Map) -> Result<u64> {
    let data: &MapData = match map {
        Map::HashMap(data) | Map::LruHashMap(data) => data,
        _ => anyhow::bail!("not a hash map"),
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .context("no memlock in fdinfo")?
        .trim()
        .parse()
        .context("memlock is not a number")
}

fn key(i: u32, port: u16) -> FlowKey {
    FlowKey::new(
        Family::V4,
        ipv4((0x0a00_0000 | i).to_be_bytes()),
        1024 + (i % 60000) as u16,
        ipv4([192, 0, 2, 1]),
        port,
    )
}

/// Fills every table to `count` entries, as `count` FTP sessions each with its control
/// connection, one expectation and one data connection would.
fn fill(ebpf: &mut Ebpf, count: u32) -> Result<()> {
    let now = ftp_loader::monotonic_ns();
    let mut state: ControlState = bytemuck::Zeroable::zeroed();
    state.open(&syn(1000));
    let mut controls = CONTROLS.of_mut(ebpf)?;
    for i in 0..count {
        controls.insert(key(i, 21), state, 0)?;
    }
    fill_expectations(ebpf, count, now)?;
    fill_flows(ebpf, count, now)
}

/// `count` expectations of sessions from 10.0.0.0/8 to 192.0.2.1, none of the lab's hosts.
pub(super) fn fill_expectations(ebpf: &mut Ebpf, count: u32, now: u64) -> Result<()> {
    let mut expectations = EXPECTATIONS.of_mut(ebpf)?;
    for i in 0..count {
        let control = key(i, 21);
        let expect = ExpectKey::new(Family::V4, control.src, control.dst, 10000);
        let value = ExpectValue {
            expires_ns: now + 3_600_000_000_000,
            control,
        };
        expectations.insert(expect, value, 0)?;
    }
    Ok(())
}

/// A SYN's numbers, which open a connection's windows.
pub(super) fn syn(seq: u32) -> Numbers {
    Numbers {
        seq,
        ack: 0,
        payload_len: 0,
        flags: TCP_SYN,
        window: 64240,
        window_scale: 7,
    }
}

/// `count` admitted data connections from 10.0.0.0/8, none of the lab's hosts.
pub(super) fn fill_flows(ebpf: &mut Ebpf, count: u32, now: u64) -> Result<()> {
    let mut flows = FLOWS.of_mut(ebpf)?;
    for i in 0..count {
        flows.insert(key(i, 20000), FlowValue::admitted(now, &syn(1)), 0)?;
    }
    Ok(())
}

fn load(count: u32) -> Result<Ebpf> {
    ebpf::load(&Settings {
        max_expectations: count,
        max_flows: count,
        max_controls: count,
        ..Settings::default()
    })
}

/// Bytes of slab the kernel's conntrack spends on one FTP session: two connection entries
/// and one expectation, at the slab object sizes this kernel uses.
fn kernel_session_bytes() -> Result<u64> {
    let slab = |cache: &str| -> Result<u64> {
        let path = format!("/sys/kernel/slab/{cache}/slab_size");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| {
                format!("reading {path} (is nf_conntrack loaded? an iptables CT rule loads it)")
            })?
            .trim()
            .parse()?)
    };
    Ok(2 * slab("nf_conntrack")? + slab("nf_conntrack_expect")?)
}

fn counter(ebpf: &Ebpf, counter: Counter) -> Result<u64> {
    let stats = ftp_loader::stats::read(&STATS.of(ebpf)?)?;
    Ok(stats
        .iter()
        .find(|(c, _)| *c == counter)
        .map_or(0, |(_, v)| *v))
}

fn entries<K: Pod, V: Pod>(ebpf: &Ebpf, table: HashTable<K, V>) -> Result<u64> {
    Ok(table.of(ebpf)?.keys().count() as u64)
}

fn run_ingress(ebpf: &Ebpf, frame: &[u8]) -> Result<u32> {
    Ok(contract::ingress(ebpf)?
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })?
        .return_value)
}

/// Full tables: a new control connection, a new announcement and a new admission each take
/// the place of the least recently used entry (the tables are LRU maps, so that nothing
/// has to sweep them). Nothing new may be lost.
fn at_the_cap(section: &mut Section) -> Result<()> {
    const CAP: u32 = 1000;
    let mut ebpf = load(CAP)?;
    fill(&mut ebpf, CAP)?;
    let client = Ipv4Addr::new(192, 0, 2, 2);
    let server = Ipv4Addr::new(192, 0, 2, 1);
    let before: Vec<u64> = TABLES
        .iter()
        .map(|(_, count)| count(&ebpf))
        .collect::<Result<_>>()?;
    let mut session = ControlSession::new(client, server);
    session.client_port = 50001;
    for frame in session.handshake() {
        run_ingress(&ebpf, &frame)?;
    }
    run_ingress(&ebpf, &session.reply(b"227 (192,0,2,1,39,16)\r\n"))?;
    let verdict = run_ingress(
        &ebpf,
        &Tcp::new(client, 51000, server, 10000, SYN).frame(&[]),
    )?;
    ensure!(
        verdict == 2,
        "the announced SYN was not admitted at the cap"
    );
    let after: Vec<u64> = TABLES
        .iter()
        .map(|(_, count)| count(&ebpf))
        .collect::<Result<_>>()?;
    // What the tables would have grown by (in TABLES' order): one control connection, an
    // expectation made and consumed, one flow. Full, they stay full instead.
    let growth = [1, 0, 1];
    let reused = before
        .iter()
        .zip(&after)
        .zip(growth)
        .map(|((b, a), grown)| (b + grown).saturating_sub(*a))
        .sum::<u64>();
    section.figures.push(Figure::new(
        format!("entries reused when tables of {CAP} are full"),
        reused as f64,
        "entries",
    ));
    let lost = [
        Counter::ControlTableFull,
        Counter::ExpectationTableFull,
        Counter::FlowTableFull,
    ]
    .into_iter()
    .map(|c| counter(&ebpf, c))
    .sum::<Result<u64>>()?;
    section.figures.push(
        Figure::new(
            "new control connections, announcements and admissions lost at the cap",
            lost as f64,
            "events",
        )
        .target("0: a full table makes room", lost == 0),
    );
    Ok(())
}

pub fn run(bench: &Bench) -> Result<Section> {
    let sizes: &[u32] = if bench.quick {
        &[10_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let mut section = Section::new("Scale and kernel memory");
    let kernel = kernel_session_bytes()? as f64;
    for &size in sizes {
        let mut ebpf = load(size)?;
        fill(&mut ebpf, size)?;
        let mut total = 0.0;
        for (table, _) in TABLES {
            let bytes = map_memory(ebpf.map(table).context("no such table")?)? as f64;
            total += bytes;
            section.figures.push(Figure::new(
                format!("{table} at {size} entries"),
                bytes / (1 << 20) as f64,
                "MiB",
            ));
        }
        let per_session = total / f64::from(size);
        section.figures.push(
            Figure::new(
                format!("bytes per tracked FTP session, {size} sessions"),
                per_session,
                "bytes",
            )
            .against("kernel conntrack (2 entries + 1 expectation, slab)", kernel)
            .target("<= 0.5x kernel conntrack", per_session <= 0.5 * kernel),
        );
    }
    at_the_cap(&mut section)?;
    section.notes.push(
        "Map memory is the kernel's own accounting of each map (fdinfo `memlock`), with every table filled to the size shown; the tables are preallocated, so their memory does not depend on how full they are. The kernel's figure is its slab object sizes (`/sys/kernel/slab/*/slab_size`) for two conntrack entries and one expectation, without the helper's extension area or hash buckets, so it flatters the kernel.".to_owned(),
    );
    Ok(section)
}
