//! FTPS session rate: many short FTP-over-TLS sessions (AUTH TLS, anonymous login, PBSZ,
//! PROT P, PASV, one small RETR over TLS, QUIT) from parallel Python ftplib clients, with
//! vsftpd unguarded, guarded by ftp-tracker with its passive range left open (what FTPS
//! needed before `--tls-uprobes`: no tracker can read an encrypted 227), and guarded with
//! `--tls-uprobes`. The last two differ by the probes alone: the TLS library's calls
//! (uprobes, a trap each) and every read and write system call on the host (syscall
//! tracepoints). What each probe's program costs per run comes from the kernel's
//! own accounting (`kernel.bpf_stats_enabled`).

use std::{
    os::unix::fs::PermissionsExt,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use ftp_ebpf_common::contract::{
    TLS_READ_DONE_PROGRAM, TLS_READ_PROGRAM, TLS_RECV_PROGRAM, TLS_SEND_PROGRAM, TLS_WRITE_PROGRAM,
};
use ftp_lab::{
    lab::{self, Lab, PASSIVE_PORTS},
    servers::{Server, Tls},
};

use super::{Bench, Figure, Section, alternate, median};

/// What guards vsftpd in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    None,
    /// ftp-tracker with every passive port allowed (`--allow-port`).
    RangeOpen,
    /// ftp-tracker guarding the passive range too, with `--tls-uprobes`.
    Uprobes,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "no filter",
            Self::RangeOpen => "ftp-tracker, passive range open",
            Self::Uprobes => "ftp-tracker --tls-uprobes",
        })
    }
}

const VARIANTS: [Variant; 3] = [Variant::None, Variant::RangeOpen, Variant::Uprobes];

/// Parallel client processes: as the plain session bench, enough to keep vsftpd's forks
/// busy on both cores.
const WORKERS: usize = 8;

const FILE: &str = "pub/small";
const FILE_SIZE: usize = 4096;

/// vsftpd as the plain session bench runs it (no per-session namespaces, no limits).
const VSFTPD_TUNING: &str = "max_clients=0\nmax_per_ip=0\ndelay_failed_login=0\n\
    delay_successful_login=0\nisolate_network=NO\nisolate=NO\n";

/// One client: FTPS sessions back to back until the deadline; prints `ok failed`.
const CLIENT: &str = r#"
import ftplib, ssl, sys, time
host, path, size, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
deadline = time.monotonic() + seconds
ok = failed = 0
while time.monotonic() < deadline:
    try:
        ftp = ftplib.FTP_TLS(context=context, timeout=2)
        ftp.connect(host, 21)
        ftp.login()
        ftp.prot_p()
        chunks = []
        ftp.retrbinary("RETR " + path, chunks.append)
        ftp.quit()
        if sum(map(len, chunks)) == size:
            ok += 1
        else:
            failed += 1
    except Exception:
        failed += 1
print(ok, failed)
"#;

/// The programs whose cost per run is reported.
const PROBES: [(&str, &str); 5] = [
    (TLS_WRITE_PROGRAM, "entry of SSL_write (uprobe)"),
    (TLS_READ_PROGRAM, "entry of SSL_read (uprobe)"),
    (
        TLS_READ_DONE_PROGRAM,
        "return of SSL_read, scanning (uretprobe)",
    ),
    (
        TLS_SEND_PROGRAM,
        "a write system call of any process, scanning a TLS write (tracepoint)",
    ),
    (
        TLS_RECV_PROGRAM,
        "a read system call of any process (tracepoint)",
    ),
];

pub fn run(bench: &Bench) -> Result<Section> {
    let seconds = if bench.quick { 1.5 } else { 6.0 };
    let mut lab = Lab::new("ftps-bench", &bench.loader)?;
    let path = lab.ftp_root().join(FILE);
    std::fs::write(&path, vec![0x5a; FILE_SIZE])?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    let securing = Server::Vsftpd.securing(&lab, Tls::Explicit)?;
    Server::start_vsftpd(&mut lab, &format!("{VSFTPD_TUNING}{securing}"), None)?;
    lab::run(Command::new("sysctl").args(["-qw", "kernel.bpf_stats_enabled=1"]))?;
    let mut failures = [0u64; 3];
    let mut probes: Vec<(u64, u64)> = vec![(0, 0); PROBES.len()];
    let rates = alternate(&VARIANTS, bench.rounds(), |variant| {
        let index = VARIANTS
            .iter()
            .position(|v| v == variant)
            .expect("a variant");
        install(&mut lab, *variant)?;
        let result = sessions(&lab, seconds);
        if *variant == Variant::Uprobes {
            for (total, (program, _)) in probes.iter_mut().zip(PROBES) {
                let (time, count) = program_stats(program)?;
                total.0 += time;
                total.1 += count;
            }
        }
        lab.stop_loader().ok();
        let (rate, failed) = result?;
        failures[index] += failed;
        Ok(rate)
    });
    let _ = lab::run(Command::new("sysctl").args(["-qw", "kernel.bpf_stats_enabled=0"]));
    let rates = rates?;
    let mut section =
        Section::new("FTPS session rate (vsftpd, AUTH TLS, PROT P, PASV + 4 KiB RETR)");
    let medians = [0, 1, 2].map(|i| median(&rates[i]));
    for (index, variant) in VARIANTS.iter().enumerate() {
        let figure = Figure::new(
            format!("sessions/s, {variant}"),
            medians[index],
            "sessions/s",
        )
        .samples(&rates[index]);
        section.figures.push(match variant {
            Variant::None => figure,
            Variant::RangeOpen => figure.against(Variant::None.to_string(), medians[0]),
            Variant::Uprobes => figure.against(Variant::RangeOpen.to_string(), medians[1]),
        });
    }
    let failed = failures[2] as f64;
    section.figures.push(
        Figure::new(
            "failed sessions, ftp-tracker --tls-uprobes",
            failed,
            "sessions",
        )
        .target("0", failed == 0.0),
    );
    for ((program, what), (time, count)) in PROBES.iter().zip(&probes) {
        if *count > 0 {
            section.figures.push(Figure::new(
                format!("{program}: {what}, per run"),
                *time as f64 / *count as f64,
                "ns",
            ));
        }
    }
    section.notes.push(format!(
        "{WORKERS} Python ftplib clients (FTP_TLS, a TLS handshake per control and data \
         connection), {seconds} s per run, variants alternating; failures: {} / {} / {} \
         (in the order above). The per-run costs are the programs' own (the kernel's \
         run_time_ns / run_cnt over the --tls-uprobes runs, summed over their \
         attachments); a uprobe's trap into the kernel comes on top of its program, and \
         is in the session rate.",
        failures[0], failures[1], failures[2]
    ));
    section.notes.push(
        "The tracepoint programs run for every read and write system call on the host \
         while --tls-uprobes is on; for a thread in no TLS call they end after one hash \
         lookup (the tls_send and tls_recv figures are mostly such runs)."
            .to_owned(),
    );
    Ok(section)
}

fn install(lab: &mut Lab, variant: Variant) -> Result<()> {
    match variant {
        Variant::None => Ok(()),
        Variant::RangeOpen => {
            // Every passive port an --allow-port: what an admin opens for FTPS today.
            let ports: Vec<String> = (PASSIVE_PORTS.0..=PASSIVE_PORTS.1)
                .flat_map(|port| ["--allow-port".to_owned(), port.to_string()])
                .collect();
            let args: Vec<&str> = ports.iter().map(String::as_str).collect();
            lab.start_loader(&args)
        }
        Variant::Uprobes => lab.start_loader(&["--tls-uprobes"]),
    }
}

/// WORKERS client processes for `seconds`; returns (completed sessions / s, failures).
fn sessions(lab: &Lab, seconds: f64) -> Result<(f64, u64)> {
    let started = Instant::now();
    let limit = Duration::from_secs_f64(seconds + 30.0);
    let outputs: Vec<Result<std::process::Output>> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..WORKERS)
            .map(|_| {
                scope.spawn(|| {
                    lab::output_within(
                        lab.client("/usr/bin/python3")
                            .args(["-c", CLIENT, &lab.server_addr(lab::Family::V4).to_string()])
                            .args([FILE, &FILE_SIZE.to_string(), &seconds.to_string()]),
                        limit,
                    )
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("an FTPS client thread panicked"))
            .collect()
    });
    let (mut ok, mut failed) = (0u64, 0u64);
    for output in outputs {
        let output = output.context("an FTPS client")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut counts = text.split_whitespace().map(str::parse::<u64>);
        match (counts.next(), counts.next()) {
            (Some(Ok(o)), Some(Ok(f))) => {
                ok += o;
                failed += f;
            }
            _ => bail!("an FTPS client printed `{}`", text.trim()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(ok > 0, "no FTPS session completed");
    Ok((ok as f64 / elapsed, failed))
}

/// (run_time_ns, run_cnt) of the loaded program `name`, from bpftool.
fn program_stats(name: &str) -> Result<(u64, u64)> {
    let output = lab::run(Command::new("bpftool").args(["prog", "show", "name", name, "--json"]))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut time = 0;
    let mut count = 0;
    // One JSON object per loaded program of that name (one loader runs at a time).
    for value in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        let value = value?;
        let programs = value.as_array().cloned().unwrap_or_else(|| vec![value]);
        for program in programs {
            time += program["run_time_ns"].as_u64().unwrap_or(0);
            count += program["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok((time, count))
}
