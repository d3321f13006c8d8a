//! Session rate: many short FTP sessions (greeting, anonymous login, `TYPE I`, `PASV`, one
//! small `RETR`, `QUIT`) from parallel clients for a fixed time, with nothing, iptables +
//! the kernel helper, or ftp-tracker guarding vsftpd. Every session opens two connections
//! the guard must judge, and the one announced by `227` only exists for milliseconds: this
//! exercises a guard's per-connection bookkeeping rather than its per-packet cost. vsftpd's
//! own forks set the rate here; the notes say by how much.

use std::{
    collections::BTreeMap,
    io::{self, ErrorKind},
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use ftp_lab::{
    ftp::Ftp,
    lab::{self, Lab, in_netns},
    servers::Server,
};

use super::{Bench, Figure, Section, alternate, guard::Guard, median};

const VARIANTS: [Guard; 3] = [Guard::None, Guard::KernelHelper, Guard::Tracker("auto")];

/// Parallel clients: enough to keep vsftpd, which forks for every session, busy on both
/// cores while a session waits for its round trips; more only queue up (see WORKERS_WHY).
const WORKERS: usize = 8;

const WORKERS_WHY: &str = "Why 8 clients: unfiltered, 1, 2, 4, 8, 16 and 32 clients made \
    110, 365, 392, 483, 507 and 492 sessions/s here (1.5 s runs): the rate is vsftpd's and \
    flat from 8 on, and the clients' own CPU (above) stays a small share of one core.";

/// The file every session fetches: small, so that the session's set-up, not the transfer,
/// is measured.
const FILE: &str = "pub/small";
const FILE_SIZE: usize = 4096;

/// Every connect, read and write. A session normally takes a few milliseconds; a dropped
/// SYN costs its 1 s retransmission, which still fits, so only a connection that does not
/// open after one retransmission, or a server that stops answering, is a failure.
const TIMEOUT: Duration = Duration::from_secs(2);

/// vsftpd, told not to hold back sessions: the limits are its defaults already (0 is
/// unlimited; the delay only applies to failed logins, which should not happen), written
/// out so that a changed default cannot throttle the bench. `isolate_network` (default YES)
/// creates a network namespace for every session and `isolate` a PID and an IPC namespace:
/// with them the rate fell from ~480 to ~300 sessions/s here, all of it vsftpd's cost. The
/// lab's passive range (501 ports) stays: a range of 50000 changed nothing, not even in
/// 60000 sessions in two minutes, with the server's TIME_WAITs (60 s) on those ports.
const VSFTPD_TUNING: &str = "max_clients=0\nmax_per_ip=0\ndelay_failed_login=0\n\
    delay_successful_login=0\nisolate_network=NO\nisolate=NO\n";

/// The server closes first (after a transfer, after `221`), so TIME_WAITs are its own; but
/// a failed session is closed by the client, and a guard that fails many could then run
/// the client out of ports and turn its failures into more. Only in the lab's namespaces.
const CLIENT_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_local_port_range=1024 65535",
    "net.ipv4.tcp_tw_reuse=1",
];

/// Counters of the tracker that explain failed or slow sessions.
const TRACKER_COUNTERS: &[&str] = &[
    "expectations_created",
    "expectations_matched",
    "unsolicited_dropped",
    "syn_retransmissions",
    "expectations_replaced",
    "expectation_table_full",
    "control_table_full",
    "flow_table_full",
];

pub fn run(bench: &Bench) -> Result<Section> {
    // Full: 5 rounds x 3 variants x 7 s stays under two minutes, with ~3500 sessions a run.
    let seconds = if bench.quick { 1.5 } else { 7.0 };
    let mut lab = Lab::new("sessions", &bench.loader)?;
    for sysctl in CLIENT_SYSCTLS {
        lab::run(lab.client("sysctl").args(["-qw", sysctl]))?;
    }
    let file = small_file();
    let path = lab.ftp_root().join(FILE);
    std::fs::write(&path, &file)?;
    // vsftpd serves anonymous users only world-readable files.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    Server::start_vsftpd(&mut lab, VSFTPD_TUNING, None)?;

    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); VARIANTS.len()];
    let rates = alternate(&VARIANTS, bench.rounds(), |guard| {
        let run = measure(&mut lab, *guard, Duration::from_secs_f64(seconds), &file)
            .with_context(|| format!("sessions under {guard}"))?;
        let rate = run.rate();
        let index = VARIANTS.iter().position(|v| v == guard).expect("a variant");
        runs[index].push(run);
        Ok(rate)
    })?;
    Ok(report(&rates, &runs, seconds))
}

/// One run: the guard installed, the clients at it for `duration`, the guard removed.
fn measure(lab: &mut Lab, guard: Guard, duration: Duration, file: &[u8]) -> Result<Run> {
    guard.install(lab)?;
    let result = sessions(lab, duration, file);
    let counters = match guard {
        Guard::Tracker(_) => lab.stats().map(Some),
        _ => Ok(None),
    };
    // Removed whatever happened; a failed run's error comes first.
    let removed = guard.remove(lab);
    let mut run = result?;
    run.counters = counters?.unwrap_or_default();
    removed?;
    ensure!(
        run.ok + run.failed() > 0,
        "no session even finished under {guard} in {duration:?}"
    );
    Ok(run)
}

#[derive(Clone, Debug, Default)]
struct Run {
    ok: u64,
    /// Successful sessions that took over a second: a SYN retransmitted after a drop, or a
    /// server that stalled.
    slow: u64,
    failures: BTreeMap<String, u64>,
    seconds: f64,
    /// CPU time the clients used, user and system. On a veth pair, a sent packet goes
    /// through the receiver's stack in the sender's context, so this includes the server's
    /// ingress path: its XDP program, or conntrack with the helper reading commands.
    client_cpu: f64,
    counters: BTreeMap<String, u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// vsftpd's share cannot be had from here: some of its session processes end as
    /// orphans that init reaps, and their CPU time goes with them.
    fn client_cpu_per_session(&self) -> f64 {
        self.client_cpu / (self.ok + self.failed()) as f64
    }

    fn add(&mut self, other: Run) {
        self.ok += other.ok;
        self.slow += other.slow;
        self.seconds += other.seconds;
        self.client_cpu += other.client_cpu;
        for (failure, count) in other.failures {
            *self.failures.entry(failure).or_default() += count;
        }
    }
}

/// WORKERS clients in the client namespace, each running sessions back to back until the
/// time is up. Sessions under way then are finished and counted, and the run lasts until
/// the last one ends.
fn sessions(lab: &Lab, duration: Duration, file: &[u8]) -> Result<Run> {
    let cpu = cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<Result<Run>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|_| scope.spawn(|| in_netns(&lab.client_ns, || Ok(client(deadline, file)))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread panicked"))
            .collect()
    });
    let mut run = Run {
        seconds: started.elapsed().as_secs_f64(),
        client_cpu: cpu_seconds() - cpu,
        ..Run::default()
    };
    for worker in workers {
        run.add(worker?);
    }
    Ok(run)
}

/// This process's CPU time so far; its only busy threads during a run are the clients.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    [usage.ru_utime, usage.ru_stime]
        .iter()
        .map(|t| t.tv_sec as f64 + t.tv_usec as f64 / 1e6)
        .sum()
}

fn client(deadline: Instant, file: &[u8]) -> Run {
    let mut run = Run::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        match session(file) {
            Ok(()) => {
                run.ok += 1;
                if started.elapsed() >= Duration::from_secs(1) {
                    run.slow += 1;
                }
            }
            Err(failure) => *run.failures.entry(failure).or_default() += 1,
        }
    }
    run
}

/// One FTP session with the lab's client; a failure is described by its step and what
/// went wrong, without addresses or ports, so that failures of one kind add up.
fn session(file: &[u8]) -> Result<(), String> {
    let mut ftp = Ftp::open(TIMEOUT).map_err(failure("connect"))?;
    ftp.log_in().map_err(failure("login"))?;
    let announced = ftp.pasv().map_err(failure("PASV"))?;
    let data = ftp.retr_from(announced, FILE).map_err(failure("RETR"))?;
    if data.len() != file.len() {
        return Err("RETR: file of the wrong length".into());
    }
    if data[..] != file[..] {
        return Err("RETR: file of the wrong content".into());
    }
    ftp.quit().map_err(failure("QUIT"))
}

/// `step: what`, where what is the kind of the I/O error underneath, if any, else the
/// innermost message (a reply of the wrong code, say), which names no address.
fn failure(step: &str) -> impl Fn(anyhow::Error) -> String + '_ {
    move |error| {
        let what = match error.chain().find_map(|e| e.downcast_ref::<io::Error>()) {
            Some(error) => match error.kind() {
                // A read timeout is EAGAIN on Linux.
                ErrorKind::TimedOut | ErrorKind::WouldBlock => "timed out".to_owned(),
                ErrorKind::ConnectionRefused => "refused".to_owned(),
                ErrorKind::ConnectionReset => "reset".to_owned(),
                _ => error.to_string(),
            },
            None => error.root_cause().to_string(),
        };
        format!("{step}: {what}")
    }
}

fn spread(samples: &[f64]) -> f64 {
    let max = samples.iter().copied().fold(f64::MIN, f64::max);
    let min = samples.iter().copied().fold(f64::MAX, f64::min);
    (max - min) / median(samples)
}

/// Bytes that a truncated or shifted transfer cannot match by accident.
fn small_file() -> Vec<u8> {
    (0..FILE_SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect()
}

fn report(rates: &[Vec<f64>], runs: &[Vec<Run>], seconds: f64) -> Section {
    let mut section = Section::new("Session rate (vsftpd, PASV + 4 KiB RETR per session)");
    let medians = [0, 1, 2].map(|index| median(&rates[index]));
    let [none, helper, tracker] = medians;
    for (index, guard) in VARIANTS.iter().enumerate() {
        let mut figure = Figure::new(format!("sessions/s, {guard}"), medians[index], "sessions/s")
            .samples(&rates[index]);
        figure = match guard {
            Guard::None => figure,
            Guard::KernelHelper => figure.against(Guard::None.to_string(), none),
            Guard::Tracker(_) => figure
                .against(Guard::KernelHelper.to_string(), helper)
                .target(">= the kernel helper's", tracker >= helper),
        };
        section.figures.push(figure);
    }
    let cpu: Vec<Vec<f64>> = runs
        .iter()
        .map(|runs| {
            runs.iter()
                .map(|r| 1e6 * r.client_cpu_per_session())
                .collect()
        })
        .collect();
    let [none_cpu, helper_cpu, _] = [0, 1, 2].map(|index| median(&cpu[index]));
    for (index, guard) in VARIANTS.iter().enumerate() {
        let figure = Figure::new(
            format!("client + server ingress CPU per session, {guard}"),
            median(&cpu[index]),
            "us",
        )
        .samples(&cpu[index]);
        section.figures.push(match guard {
            Guard::None => figure,
            Guard::KernelHelper => figure.against(Guard::None.to_string(), none_cpu),
            Guard::Tracker(_) => figure.against(Guard::KernelHelper.to_string(), helper_cpu),
        });
    }
    for (index, guard) in VARIANTS.iter().enumerate() {
        let failed: Vec<f64> = runs[index].iter().map(|r| r.failed() as f64).collect();
        let total: f64 = failed.iter().sum();
        let mut figure =
            Figure::new(format!("failed sessions, {guard}"), total, "sessions").samples(&failed);
        if let Guard::Tracker(_) = guard {
            figure = figure.target("0", total == 0.0);
        }
        section.figures.push(figure);
    }
    for (index, guard) in VARIANTS.iter().enumerate() {
        let mut all = Run::default();
        runs[index].iter().cloned().for_each(|r| all.add(r));
        let mut note = format!(
            "{guard}: {} sessions in {} runs, {} of them slower than 1 s, {} \
             failed; the clients used {:.0}% of one core",
            all.ok + all.failed(),
            runs[index].len(),
            all.slow,
            all.failed(),
            100.0 * all.client_cpu / all.seconds,
        );
        for (failure, count) in &all.failures {
            note += &format!("; {count} x {failure}");
        }
        if let Guard::Tracker(_) = guard {
            let counters: Vec<String> = TRACKER_COUNTERS
                .iter()
                .map(|name| {
                    let sum: u64 = runs[index]
                        .iter()
                        .map(|r| r.counters.get(*name).copied().unwrap_or(0))
                        .sum();
                    format!("{name} {sum}")
                })
                .collect();
            note += &format!("; counters: {}", counters.join(", "));
        }
        section.notes.push(note);
    }
    let spread: Vec<String> = VARIANTS
        .iter()
        .zip(rates)
        .map(|(guard, samples)| format!("{guard} {:.0}%", 100.0 * spread(samples)))
        .collect();
    section.notes.push(format!(
        "Spread of one variant's rates, (max - min) / median: {}. A session costs vsftpd \
         over 1.6 ms of CPU (the part its listener reaps, measured when choosing this \
         setup), against the guards' tens of microseconds that the ingress CPU figures \
         show, and the machine is shared: rates closer than this spread are a draw, \
         whichever side of the target they fall on.",
        spread.join(", ")
    ));
    section.notes.push(format!(
        "{WORKERS} parallel clients, {seconds} s per run, variants alternating; rate = \
         completed sessions / run time, failures summed over runs. {WORKERS_WHY}"
    ));
    section
}
