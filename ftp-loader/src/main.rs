use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use aya::Ebpf;
use clap::{Args, Parser, Subcommand};
use ftp_loader::{
    attach::{self, Attachment, XdpChoice},
    checks::{self, Task},
    ebpf::{self, Settings},
    gc, monotonic_ns,
    pins::{self, DEFAULT_PIN_DIR, PinDir},
    stats, tables,
};
use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

/// FTP connection tracking in eBPF: admits a data connection only when an FTP control
/// connection announced it.
#[derive(Parser)]
#[command(
    name = "ftp-loader",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the counters of the running instance.
    Stats {
        /// One flat JSON object of counter name to integer.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// List the live expectations (announced data connections), like `conntrack -L expect`.
    Expectations {
        /// A JSON array of objects.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// List the tracked data connections, like `conntrack -L`.
    Flows {
        /// A JSON array of objects.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Interfaces to attach to; runs until SIGINT or SIGTERM, then detaches.
    #[arg(required = true, value_name = "INTERFACE")]
    interfaces: Vec<String>,
    /// Guarded ports: a new inbound TCP connection to one of them needs an announcement.
    #[arg(long, value_name = "LO-HI", default_value = "1024-65535", value_parser = parse_range)]
    data_ports: (u16, u16),
    /// An FTP control port whose traffic is scanned (repeatable).
    #[arg(long = "control-port", value_name = "PORT", default_value = "21",
          value_parser = clap::value_parser!(u16).range(1..))]
    control_ports: Vec<u16>,
    /// A listener inside the guarded range that stays open to everyone (repeatable).
    #[arg(long = "allow-port", value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    allowed_ports: Vec<u16>,
    /// Where the ingress guard runs: auto picks native XDP on a physical NIC whose driver
    /// has it, tc ingress elsewhere (on a veth, tc costs least: generic XDP runs per wire
    /// packet, native XDP takes TSO away from the peer); native, skb (generic XDP) and tc
    /// force one.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpChoice,
    /// Seconds an announced data connection may take to open.
    #[arg(long, value_name = "SECONDS", default_value = "300",
          value_parser = clap::value_parser!(u64).range(1..))]
    expect_timeout: u64,
    /// Seconds of silence after which a tracked data connection is forgotten.
    #[arg(long, value_name = "SECONDS", default_value = "300",
          value_parser = clap::value_parser!(u64).range(1..))]
    flow_timeout: u64,
    /// Capacity of the expectation table.
    #[arg(long, default_value = "65536", value_parser = clap::value_parser!(u32).range(1..))]
    max_expectations: u32,
    /// Capacity of the tracked-flow table.
    #[arg(long, default_value = "262144", value_parser = clap::value_parser!(u32).range(1..))]
    max_flows: u32,
    /// Capacity of the control-connection table.
    #[arg(long, default_value = "65536", value_parser = clap::value_parser!(u32).range(1..))]
    max_controls: u32,
    /// Expectations one control connection may hold (1-4; the kernel helper's max_expected
    /// is 1): the newest displaces the oldest.
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u8).range(1..=4))]
    max_expected: u8,
    /// Accept announced addresses other than the announcer's own, like the kernel helper's
    /// loose=1. This opens third-party transfers and with them FTP bounce.
    #[arg(long)]
    loose: bool,
    /// Refuse announcements of data ports below this (1 accepts all).
    #[arg(long, default_value = "1024", value_parser = clap::value_parser!(u16).range(1..))]
    min_data_port: u16,
    /// bpffs directory where the counters are pinned for `ftp-loader stats`.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Log every admitted data connection.
    #[arg(short, long)]
    verbose: bool,
}

fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not a range: expected LO-HI, e.g. 1024-65535"))?;
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("`{s}` is not a port number (1-65535)"))
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(format!(
            "the range {lo}-{hi} is empty: LO must not exceed HI"
        ));
    }
    Ok((lo, hi))
}

fn main() {
    let cli = Cli::parse();
    let verbose = cli.command.is_none() && cli.run.verbose;
    env_logger::Builder::new()
        .filter_level(if verbose {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        })
        .format_target(false)
        .format_timestamp(None)
        .init();
    if cli.command.is_some() {
        // A listing piped into `head` ends when the pipe closes, as other tools' listings
        // do, rather than panicking on the failed write (Rust ignores SIGPIPE by default).
        // SAFETY: restoring the default disposition, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Some(Command::Stats { json, pin_dir }) => print_stats(&pin_dir, json),
        Some(Command::Expectations { json, pin_dir }) => print_table(
            &pin_dir,
            "EXPECTATIONS",
            json,
            tables::expectations,
            tables::expectations_text,
        ),
        Some(Command::Flows { json, pin_dir }) => {
            print_table(&pin_dir, "FLOWS", json, tables::flows, tables::flows_text)
        }
        None => run(cli.run),
    };
    if let Err(error) = result {
        eprintln!("ftp-loader: {error:#}");
        std::process::exit(1);
    }
}

fn print_stats(pin_dir: &std::path::Path, json: bool) -> Result<()> {
    checks::capabilities(Task::Read)?;
    checks::pin_readable(pin_dir, "STATS")?;
    let map = pins::open(pin_dir, "STATS")?;
    let counters = stats::read(&map)?;
    if json {
        println!("{}", stats::to_json(&counters));
    } else {
        print!("{}", stats::to_text(&counters));
    }
    Ok(())
}

type Json = fn(&aya::maps::Map, u64) -> Result<Vec<serde_json::Value>>;
type Text = fn(&aya::maps::Map, u64) -> Result<String>;

fn print_table(
    pin_dir: &std::path::Path,
    map: &str,
    json: bool,
    as_json: Json,
    as_text: Text,
) -> Result<()> {
    checks::capabilities(Task::Read)?;
    checks::pin_readable(pin_dir, map)?;
    let map = pins::open(pin_dir, map)?;
    if json {
        println!(
            "{}",
            serde_json::Value::Array(as_json(&map, monotonic_ns())?)
        );
    } else {
        print!("{}", as_text(&map, monotonic_ns())?);
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    checks::capabilities(Task::Run)?;
    checks::interfaces(&args.interfaces)?;
    let settings = Settings {
        data_ports: args.data_ports,
        control_ports: args.control_ports,
        allowed_ports: args.allowed_ports,
        expect_timeout_secs: args.expect_timeout,
        flow_idle_timeout_secs: args.flow_timeout,
        max_expectations: args.max_expectations,
        max_flows: args.max_flows,
        max_controls: args.max_controls,
        max_expected: args.max_expected,
        loose: args.loose,
        min_data_port: args.min_data_port,
        verbose: args.verbose,
    };
    // Refused before the pin directory is taken or bpffs mounted; `ebpf::load` checks the
    // settings again for callers other than this one.
    checks::settings(&settings)?;
    checks::pin_dir_writable(&args.pin_dir)?;
    let pin_dir = PinDir::acquire(&args.pin_dir)?;
    let mut ebpf = ebpf::load(&settings)?;
    let logger = aya_log::EbpfLogger::init(&mut ebpf).context("starting the eBPF log reader")?;
    let attachments: Vec<Attachment> = args
        .interfaces
        .iter()
        .map(|interface| attach::attach(&mut ebpf, interface, args.xdp_mode))
        .collect::<Result<_>>()?;
    pin_dir.pin(&ebpf)?;

    info!("{}", describe(&settings));
    for attachment in &attachments {
        info!("attached to {attachment}");
    }
    info!(
        "counters: `ftp-loader stats --pin-dir {}`; stop with Ctrl-C or SIGTERM",
        args.pin_dir.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(&mut ebpf, logger, &settings))?;

    drop(ebpf);
    drop(pin_dir);
    for attachment in &attachments {
        info!("detached from {}", attachment.interface);
    }
    Ok(())
}

fn describe(settings: &Settings) -> String {
    let (lo, hi) = settings.data_ports;
    let mut text =
        format!("ftp-tracker: new inbound IPv4 and IPv6 TCP connections to ports {lo}-{hi}");
    let exceptions: Vec<String> = settings
        .allowed_ports
        .iter()
        .chain(&settings.control_ports)
        .filter(|p| (lo..=hi).contains(*p))
        .map(u16::to_string)
        .collect();
    if !exceptions.is_empty() {
        text += &format!(" (except {})", exceptions.join(", "));
    }
    let controls: Vec<String> = settings.control_ports.iter().map(u16::to_string).collect();
    text += &format!(
        " need an FTP announcement (PORT, EPRT, 227, 229) on control port {}; announced data ports >= {}, {} per control connection, expiring after {}s",
        controls.join(", "),
        settings.min_data_port,
        settings.max_expected,
        settings.expect_timeout_secs
    );
    if settings.loose {
        text += "; LOOSE: addresses other than the announcer's are accepted (third-party transfers and FTP bounce possible)";
    }
    text
}

async fn serve(
    ebpf: &mut Ebpf,
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    settings: &Settings,
) -> Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // SAFETY: the logger owns its ring buffer descriptor, which outlives the registration
    // (both are dropped together with `logs`).
    let mut logs = unsafe { AsyncFd::register(logger) }
        .map_err(|e| anyhow::anyhow!("watching the eBPF log buffer: {}", e.into_parts().1))?;
    let mut sweep = tokio::time::interval(Duration::from_secs(2));
    let idle_ns = settings
        .flow_idle_timeout_secs
        .saturating_mul(1_000_000_000);
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            guard = logs.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = sweep.tick() => {
                match gc::sweep(ebpf, monotonic_ns(), idle_ns) {
                    Ok(swept) if swept != gc::Swept::default() => log::debug!(
                        "removed {} expired expectations, {} finished flows, {} idle control connections",
                        swept.expectations, swept.flows, swept.controls
                    ),
                    Ok(_) => {}
                    Err(e) => warn!("sweeping the tables failed: {e:#}"),
                }
            }
        }
    }
    logs.get_mut().flush();
    Ok(())
}
