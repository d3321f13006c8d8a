//! SYN-flood resistance: SYNs from the client's own address and random ports to random
//! ports of the guarded passive range, sent from the client's veth by an AF_PACKET socket
//! with `sendmmsg`; how fast each guard drops them, what each dropped SYN costs the server
//! host, and what is left for a legitimate transfer during a flood.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use ftp_lab::{
    frame::{self, SYN, Tcp},
    ftp::Ftp,
    inject::{Link, PacketSocket},
    lab,
    lab::{CLIENT_IF, CLIENT_IP, Lab, PASSIVE_PORTS, SERVER_IP, in_netns},
    servers::Server,
};

use super::{
    Bench, Figure, Section, alternate,
    bulk::{Transfer, zeros},
    guard::Guard,
    median,
};

/// How long one unpaced flood lasts; the reference flood into the ifb lasts half as long.
const FULL_FLOOD: Duration = Duration::from_secs(2);
const QUICK_FLOOD: Duration = Duration::from_millis(300);
/// Far above what one core sends here (~1 Mpps): the packet bound of a flood.
const MAX_RATE: u64 = 5_000_000;
/// The flood during the legitimate transfer, paced so that every guard faces the same one;
/// below what iptables + helper can drop, so that the transfer, not the flood's own
/// limit, tells the guards apart.
const PACED_RATE: u64 = 250_000;
const FULL_TRANSFER: u64 = 1 << 30;
const QUICK_TRANSFER: u64 = 64 << 20;
/// The longest a flood during a transfer may last.
const TRANSFER_LIMIT: Duration = Duration::from_secs(60);
/// Frames per `sendmmsg`.
const BATCH: usize = 64;
/// Ethernet, IPv4 and TCP headers, no options, no payload.
const FRAME_LEN: usize = 14 + 20 + 20;
const TCP: usize = 14 + 20;
/// An ifb device in the client namespace: it discards every frame it is given that tc did
/// not redirect to it, which makes it the cheapest place to send a frame to.
const SINK: &str = "sink0";

const AUTO: Guard = Guard::Tracker("auto");
/// The guards that drop the flood, and the one that lets the server's stack answer it.
const GUARDS: [Guard; 3] = [Guard::KernelHelper, AUTO, Guard::None];

pub fn run(bench: &Bench) -> Result<Section> {
    let (flood_time, transfer) = if bench.quick {
        (QUICK_FLOOD, QUICK_TRANSFER)
    } else {
        (FULL_FLOOD, FULL_TRANSFER)
    };
    let mut lab = Lab::new("flood", &bench.loader)?;
    Server::Vsftpd.start_with_scratch(&mut lab, transfer)?;
    let link = Link::find(&lab)?;
    for args in [
        &["link", "add", SINK, "type", "ifb"][..],
        &["link", "set", SINK, "up"],
    ] {
        lab::run(lab.client("ip").args(args))?;
    }

    let mut rounds: Vec<Vec<Round>> = GUARDS.iter().map(|_| Vec::new()).collect();
    let flooded = alternate(&GUARDS, bench.rounds(), |&guard| {
        guard.install(&mut lab)?;
        let round = measure(&lab, guard, &link, flood_time, transfer)
            .with_context(|| format!("flooding {guard}"));
        guard.remove(&mut lab)?;
        let round = round?;
        let flooded = round.flooded;
        rounds[index(guard)].push(round);
        Ok(flooded)
    })?;
    let samples = |guard: Guard, metric: fn(&Round) -> Option<f64>| -> Vec<f64> {
        rounds[index(guard)].iter().filter_map(metric).collect()
    };
    let figure = |name: String, unit: &str, samples: Vec<f64>| {
        Figure::new(name, median(&samples), unit).samples(&samples)
    };

    let helper = Guard::KernelHelper;
    let mut section = Section::new(format!(
        "SYN-flood resistance (flood to ports {}-{}, vsftpd, passive, IPv4)",
        PASSIVE_PORTS.0, PASSIVE_PORTS.1
    ));
    let rate = |guard: Guard| samples(guard, |r| r.dropped_per_second);
    let name = |guard: Guard| format!("SYNs dropped per second, {guard}");
    section
        .figures
        .push(figure(name(helper), "packets/s", rate(helper)));
    section.figures.push(
        figure(name(AUTO), "packets/s", rate(AUTO))
            .against(helper.to_string(), median(&rate(helper))),
    );
    let cost = |guard: Guard| samples(guard, |r| r.ns_per_drop);
    let name = |guard: Guard| format!("receiving CPU per dropped SYN, {guard}");
    let (helper_cost, auto_cost) = (median(&cost(helper)), median(&cost(AUTO)));
    section
        .figures
        .push(figure(name(helper), "ns", cost(helper)));
    section.figures.push(
        figure(name(AUTO), "ns", cost(AUTO))
            .against(helper.to_string(), helper_cost)
            .target("<= 0.33x", auto_cost <= helper_cost / 3.0),
    );
    let sending: Vec<f64> = GUARDS
        .iter()
        .flat_map(|&guard| samples(guard, |r| r.ns_per_send))
        .collect();
    section.figures.push(figure(
        "the generator's own CPU per SYN (sent into an ifb)".to_owned(),
        "ns",
        sending,
    ));
    for (guard, flooded) in GUARDS.iter().zip(&flooded) {
        let unflooded = median(&samples(*guard, |r| Some(r.unflooded)));
        let mut figure = figure(
            format!(
                "download during a {} kpps flood, {guard}",
                PACED_RATE / 1000
            ),
            "Gbit/s",
            flooded.clone(),
        )
        .against(format!("{guard}, unflooded"), unflooded);
        if *guard == AUTO {
            let met = median(flooded) >= 0.9 * unflooded;
            figure = figure.target(">= 0.90x", met);
        }
        section.figures.push(figure);
    }
    section.figures.push(
        figure(
            format!(
                "download beside the generator, its {} kpps into the ifb",
                PACED_RATE / 1000
            ),
            "Gbit/s",
            samples(Guard::None, |r| r.beside_generator),
        )
        .against(
            format!("{}, unflooded", Guard::None),
            median(&samples(Guard::None, |r| Some(r.unflooded))),
        ),
    );
    section.notes.push(
        "Receiving CPU per dropped SYN: the veth hands each frame to the server's stack in \
         softirq on the sending CPU, inside the generator's sendmmsg (or in that CPU's \
         ksoftirqd when softirq has run too long), so the server's work is done on the \
         generator's time. This kernel samples CPU time per tick (TICK_CPU_ACCOUNTING, no \
         IRQ_TIME_ACCOUNTING) and charges such softirq ticks to the generator thread: \
         'busy CPU minus the generator's time' would subtract the very cost measured, and \
         /proc/stat's softirq column, which does count them apart, also counts every other \
         softirq on that CPU (other benchmarks' traffic on this shared machine made it \
         worthless). So the generator is pinned to one CPU and its exact run time, plus \
         that CPU's ksoftirqd's, is read from schedstat (nanoseconds, only those two \
         threads); the same generator then sends the same frames into an ifb device, \
         which discards them on arrival, to measure what sending alone costs. Receiving \
         CPU = (run time of the flood - sending cost x SYNs sent) / SYNs the guard \
         counted as dropped (ftp-tracker: unsolicited_dropped; iptables: the INPUT \
         policy's packet counter). It covers the veth's delivery, the guard's work and \
         freeing the packet, on the hook ftp-tracker's auto mode picks (tc ingress on a veth)."
            .to_owned(),
    );
    section.notes.push(format!(
        "Each unpaced flood lasts {:.1} s (its reference into the ifb half as long); the \
         generator sends as fast as its core lets it, the guard's work included, so the \
         drop rates are what one attacking core gets through. The download ({} MiB from a \
         tmpfs) runs once alone and once with a flood paced at {} kpps ({:.0}% of what \
         iptables + helper drops at most here) that starts once its data flows, so that no \
         flood SYN takes the place of the expected data connection; the flood rates reached \
         were {}. The generator shares the lab's two cores with the transfer, and the veth \
         delivers its frames on its own core: 'beside the generator' is the same paced \
         flood sent into the ifb, what the generator alone takes from the download, and \
         the rest of each guard's loss is the delivery and the guard's work. 'no filter' \
         has the server's stack answer the flood (a RST for each SYN).",
        flood_time.as_secs_f64(),
        transfer >> 20,
        PACED_RATE / 1000,
        PACED_RATE as f64 * 100.0 / median(&rate(helper)),
        GUARDS
            .iter()
            .map(|&g| format!(
                "{g}: {:.0} kpps",
                median(&samples(g, |r| Some(r.paced_rate))) / 1000.0
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(section)
}

/// One guard's figures from one round. The flood's figures only for the guards that drop.
struct Round {
    dropped_per_second: Option<f64>,
    ns_per_drop: Option<f64>,
    /// What sending one SYN costs the generator by itself.
    ns_per_send: Option<f64>,
    /// The download's Gbit/s alone and during the paced flood.
    unflooded: f64,
    flooded: f64,
    /// The paced flood's rate, packets per second.
    paced_rate: f64,
    /// The download's Gbit/s while the same paced flood goes into the ifb (measured in
    /// the round without a guard): what the generator alone takes from it.
    beside_generator: Option<f64>,
}

fn index(guard: Guard) -> usize {
    GUARDS
        .iter()
        .position(|&g| g == guard)
        .expect("one of GUARDS")
}

fn measure(
    lab: &Lab,
    guard: Guard,
    link: &Link,
    flood_time: Duration,
    transfer: u64,
) -> Result<Round> {
    let (dropped_per_second, ns_per_drop, ns_per_send) = if guard == Guard::None {
        (None, None, None)
    } else {
        let stop = AtomicBool::new(false);
        let reference = in_netns(&lab.client_ns, || {
            flood(link, SINK, Pace::Unpaced(flood_time / 2), None, &stop)
        })?;
        let before = dropped(lab, guard)?;
        let flooded = in_netns(&lab.client_ns, || {
            flood(link, CLIENT_IF, Pace::Unpaced(flood_time), None, &stop)
        })?;
        let count = dropped(lab, guard)? - before;
        ensure!(
            reference.sent > 0 && flooded.sent > 0,
            "the generator sent nothing"
        );
        // Fewer drops than SYNs sent: the frames went somewhere else than to the guard.
        ensure!(
            count as f64 >= 0.9 * flooded.sent as f64,
            "{guard} dropped {count} of {} flood SYNs",
            flooded.sent
        );
        let sending = reference.cpu_seconds / reference.sent as f64;
        let receiving = flooded.cpu_seconds - sending * flooded.sent as f64;
        ensure!(
            receiving > 0.0,
            "flooding {guard} cost less CPU than sending alone"
        );
        (
            Some(count as f64 / flooded.seconds),
            Some(receiving * 1e9 / count as f64),
            Some(sending * 1e9),
        )
    };
    let unflooded = in_netns(&lab.client_ns, || {
        Ftp::login()?.download(&zeros(), transfer, || ())
    })?;
    let (flooded, paced_rate) = download_flooded(lab, link, CLIENT_IF, transfer)?;
    let beside_generator = if guard == Guard::None {
        Some(download_flooded(lab, link, SINK, transfer)?.0)
    } else {
        None
    };
    Ok(Round {
        dropped_per_second,
        ns_per_drop,
        ns_per_send,
        unflooded,
        flooded,
        paced_rate,
        beside_generator,
    })
}

/// The download with a paced flood out of `interface` from its first data to its end:
/// Gbit/s, and the flood's rate in packets per second.
fn download_flooded(lab: &Lab, link: &Link, interface: &str, bytes: u64) -> Result<(f64, f64)> {
    let stop = &AtomicBool::new(false);
    let (started, start) = mpsc::channel();
    std::thread::scope(|scope| {
        let generator = scope.spawn(move || {
            in_netns(&lab.client_ns, || {
                flood(link, interface, Pace::Paced(PACED_RATE), Some(start), stop)
            })
        });
        let download = in_netns(&lab.client_ns, || {
            Ftp::login()?.download(&zeros(), bytes, move || {
                // The generator is gone only if it failed, which it reports itself.
                let _ = started.send(());
            })
        });
        stop.store(true, Ordering::Relaxed);
        let flooded = generator.join().expect("the generator panicked")?;
        let gbits = download?;
        ensure!(
            flooded.sent > 0,
            "no flood ran during the transfer ({bytes} bytes)"
        );
        Ok((gbits, flooded.sent as f64 / flooded.seconds))
    })
}

/// SYNs the guard has dropped so far.
fn dropped(lab: &Lab, guard: Guard) -> Result<u64> {
    match guard {
        Guard::Tracker(_) => lab
            .stats()?
            .get("unsolicited_dropped")
            .copied()
            .context("ftp-loader stats has no unsolicited_dropped"),
        Guard::KernelHelper => {
            // `Chain INPUT (policy DROP 1234 packets, 56789 bytes)`
            let output = lab::run(lab.server("iptables").args(["-nvxL", "INPUT"]))?;
            let text = String::from_utf8_lossy(&output.stdout);
            text.split_once("policy DROP")
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
                .with_context(|| {
                    format!("no policy DROP counter in `iptables -nvxL INPUT`: {text}")
                })
        }
        Guard::None => bail!("nothing drops SYNs without a guard"),
    }
}

#[derive(Clone, Copy)]
enum Pace {
    /// As fast as one core sends, for this long; the generator is pinned to its core and
    /// its CPU time measured.
    Unpaced(Duration),
    /// This many packets per second, until told to stop (or [`TRANSFER_LIMIT`]).
    Paced(u64),
}

#[derive(Default)]
struct Flooded {
    sent: u64,
    seconds: f64,
    /// CPU time of the generator thread and of its core's ksoftirqd (unpaced floods
    /// only): sending, and whatever the veth's delivery to the server's stack cost.
    cpu_seconds: f64,
}

/// Floods out of `interface`; to be run on a thread in the client namespace. Waits for
/// `start` if given (and returns having sent nothing if its sender is dropped), stops at
/// `stop`, at its time limit and at its packet bound.
fn flood(
    link: &Link,
    interface: &str,
    pace: Pace,
    start: Option<mpsc::Receiver<()>>,
    stop: &AtomicBool,
) -> Result<Flooded> {
    let (limit, packets) = match pace {
        Pace::Unpaced(limit) => (limit, (MAX_RATE as f64 * limit.as_secs_f64()) as u64),
        Pace::Paced(rate) => (TRANSFER_LIMIT, rate * TRANSFER_LIMIT.as_secs()),
    };
    let socket = PacketSocket::sender(interface)?;
    let mut generator = Syns::new(link);
    let ksoftirqd = match pace {
        Pace::Unpaced(_) => Some(ksoftirqd(pin()?)?),
        Pace::Paced(_) => None,
    };
    if let Some(start) = start {
        if start.recv_timeout(TRANSFER_LIMIT).is_err() {
            return Ok(Flooded::default());
        }
    }
    let cpu_before = ksoftirqd.as_deref().map(cpu_seconds).transpose()?;
    let began = Instant::now();
    let mut sent = 0;
    while sent < packets && !stop.load(Ordering::Relaxed) {
        let elapsed = began.elapsed();
        if elapsed >= limit {
            break;
        }
        if let Pace::Paced(rate) = pace {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if elapsed < due {
                std::thread::sleep(due - elapsed);
                continue;
            }
        }
        let count = (packets - sent).min(BATCH as u64) as usize;
        sent += socket.send_batch(generator.next_batch(count))?;
    }
    let seconds = began.elapsed().as_secs_f64();
    let cpu_seconds = match (ksoftirqd, cpu_before) {
        (Some(ksoftirqd), Some(before)) => cpu_seconds(&ksoftirqd)? - before,
        _ => 0.0,
    };
    Ok(Flooded {
        sent,
        seconds,
        cpu_seconds,
    })
}

/// Pins the calling thread to the CPU it runs on, and returns that CPU.
fn pin() -> Result<usize> {
    // SAFETY: no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    ensure!(
        cpu >= 0,
        "sched_getcpu: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays inside it for any CPU the
    // kernel reports; sched_setaffinity(0) applies to the calling thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        rc == 0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    Ok(cpu as usize)
}

/// The /proc directory of `cpu`'s ksoftirqd.
fn ksoftirqd(cpu: usize) -> Result<String> {
    let name = format!("ksoftirqd/{cpu}");
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return Ok(path.to_string_lossy().into_owned());
        }
    }
    bail!("no {name} in /proc")
}

/// The CPU time of the calling thread and of the ksoftirqd at `ksoftirqd`: precise
/// run times from schedstat, not tick samples, and only theirs.
fn cpu_seconds(ksoftirqd: &str) -> Result<f64> {
    let runtime = |path: &str| -> Result<f64> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let nanoseconds: u64 = text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no run time in {path}"))?;
        Ok(nanoseconds as f64 / 1e9)
    };
    Ok(runtime("/proc/thread-self/schedstat")? + runtime(&format!("{ksoftirqd}/schedstat"))?)
}

/// SYN frames from the client to the server, differing in source port, destination port
/// (inside the passive range) and sequence number, with valid IPv4 and TCP checksums.
struct Syns {
    frames: Vec<[u8; FRAME_LEN]>,
    /// The TCP checksum's sum over the pseudo-header and the template's header, whose
    /// ports, sequence number and checksum are zero: each frame adds its own fields.
    sum: u32,
    random: u64,
}

impl Syns {
    fn new(link: &Link) -> Self {
        let template: [u8; FRAME_LEN] = Tcp::new(CLIENT_IP, 0, SERVER_IP, 0, SYN)
            .seq(0)
            .frame_on(link.to_server(), &[])
            .try_into()
            .expect("an Ethernet + IPv4 + TCP header");
        let pseudo = [
            &CLIENT_IP.octets()[..],
            &SERVER_IP.octets(),
            &[0, frame::IPPROTO_TCP, 0, 20],
        ]
        .concat();
        let sum = frame::words(&pseudo) + frame::words(&template[TCP..]);
        Self {
            frames: vec![template; BATCH],
            sum,
            random: u64::from(std::process::id()) | 1,
        }
    }

    fn next_batch(&mut self, count: usize) -> &mut [[u8; FRAME_LEN]] {
        let (low, high) = PASSIVE_PORTS;
        for frame in &mut self.frames[..count] {
            // xorshift64: nothing here needs more than a spread of ports.
            self.random ^= self.random << 13;
            self.random ^= self.random >> 7;
            self.random ^= self.random << 17;
            let src_port = 1024 + (self.random % (65536 - 1024)) as u16;
            let dst_port = low + ((self.random >> 16) % u64::from(high - low + 1)) as u16;
            let seq = (self.random >> 32) as u32;
            let tcp = &mut frame[TCP..];
            tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
            tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
            tcp[4..8].copy_from_slice(&seq.to_be_bytes());
            let sum =
                self.sum + u32::from(src_port) + u32::from(dst_port) + (seq >> 16) + (seq & 0xffff);
            tcp[16..18].copy_from_slice(&(!frame::fold(sum)).to_be_bytes());
        }
        &mut self.frames[..count]
    }
}
