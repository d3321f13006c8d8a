use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::Ebpf;
use clap::{Args, Parser, Subcommand};
use ftp_ebpf_common::share::DEFAULT_MAX_PER_CLIENT;
use ftp_loader::{
    addrs, adopt,
    attach::{self, Attached, XdpChoice},
    checks::{self, Task},
    ebpf::{self, Settings},
    monotonic_ns,
    pins::{self, DEFAULT_PIN_DIR, Inherited, PinDir},
    record::{Record, current_netns, now_unix},
    stats, tables,
    watch::{Event, Watch},
};
use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
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
    /// Show what is attached where, since when, by which build, and whether a loader
    /// process is alive.
    Status {
        /// One JSON object.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach what an instance left attached (after a crash, or a stop that left the guard
    /// in place) and remove its pins.
    Unload {
        /// Interfaces to detach from (default: all of them).
        #[arg(value_name = "INTERFACE", conflicts_with = "all")]
        interfaces: Vec<String>,
        /// Every interface (the default when none is named).
        #[arg(long)]
        all: bool,
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
    /// Expectations one client address (an IPv6 client's /64) may hold, 1 to
    /// --max-expectations: a client at its cap gets no more until one of its own is used,
    /// replaced or expires.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PER_CLIENT)]
    max_expectations_per_client: u32,
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
    /// Exit (status 1) when an interface is deleted, instead of waiting for it to come
    /// back and attaching again.
    #[arg(long)]
    exit_on_interface_loss: bool,
}

/// `stats`, the listings and `status` exit with this when what they read is there but no
/// loader process is alive.
const NO_LOADER: i32 = 3;

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
    let listing = matches!(
        cli.command,
        Some(
            Command::Stats { .. }
                | Command::Expectations { .. }
                | Command::Flows { .. }
                | Command::Status { .. }
        )
    );
    if listing {
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
        Some(Command::Status { json, pin_dir }) => status(&pin_dir, json),
        Some(Command::Unload {
            interfaces,
            all: _,
            pin_dir,
        }) => unload(&pin_dir, &interfaces),
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
    require_live_loader(pin_dir);
    Ok(())
}

/// After printing what a dead instance left: says so, and exits NO_LOADER.
fn require_live_loader(pin_dir: &Path) {
    if pins::loader_alive(pin_dir) {
        return;
    }
    let attached = Record::read(pin_dir).is_some_and(|r| r.interfaces.iter().any(|i| i.present));
    if attached {
        eprintln!(
            "ftp-loader: no loader process is alive for {}: the guard it left attached is still working and counting; start `ftp-loader` with this --pin-dir to take it over, or remove it with `ftp-loader unload` (see `ftp-loader status`)",
            pin_dir.display()
        );
    } else {
        eprintln!(
            "ftp-loader: no loader process is alive for {} and nothing is attached: these are left-over pins; remove them with `ftp-loader unload --pin-dir {}`",
            pin_dir.display(),
            pin_dir.display()
        );
    }
    std::process::exit(NO_LOADER);
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
    require_live_loader(pin_dir);
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    checks::capabilities(Task::Run)?;
    checks::interfaces(&args.interfaces)?;
    let settings = Settings {
        data_ports: args.data_ports,
        control_ports: args.control_ports.clone(),
        allowed_ports: args.allowed_ports.clone(),
        expect_timeout_secs: args.expect_timeout,
        flow_idle_timeout_secs: args.flow_timeout,
        max_expectations: args.max_expectations,
        max_flows: args.max_flows,
        max_controls: args.max_controls,
        max_expected: args.max_expected,
        max_per_client: args.max_expectations_per_client,
        loose: args.loose,
        min_data_port: args.min_data_port,
        verbose: args.verbose,
    };
    // Refused before the pin directory is taken or bpffs mounted; `ebpf::load` checks the
    // settings again for callers other than this one.
    checks::settings(&settings)?;
    checks::dirs_writable(&args.pin_dir)?;
    refuse_guarded_elsewhere(&args.interfaces, &args.pin_dir)?;
    let pin_dir = PinDir::acquire(&args.pin_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Before anything is attached: a signal that arrives while the programs load is served
    // once they are attached, instead of killing the loader half-way (SIGHUP's and SIGUSR1's
    // default action is to terminate).
    let signals = {
        let _entered = runtime.enter();
        Signals::install()?
    };
    // What the previous instance with this pin directory attached: taken over in place.
    let previous = Record::read(&args.pin_dir).filter(|r| r.netns == current_netns());
    let had_state = pin_dir.has_state();
    let set_aside = pin_dir.prepare(&settings)?;
    let mut ebpf = ebpf::load_pinned(&settings, &pin_dir).inspect_err(|_| {
        // A first start refused here (a table too large, say) leaves no half-made pins.
        if !had_state {
            pin_dir.remove_all();
        }
    })?;
    let inherited = pin_dir.inherit(&mut ebpf, had_state, set_aside);
    // Opened before the addresses are first read, so that no change after that read goes
    // unnoticed.
    let watch = Watch::open().context("watching interfaces and addresses (rtnetlink)")?;
    // Before anything is attached: the guard knows the host's addresses from the first
    // packet.
    let addresses = addrs::sync(&mut ebpf).inspect_err(|_| {
        if !had_state {
            pin_dir.remove_all();
        }
    })?;
    let logger = aya_log::EbpfLogger::init(&mut ebpf).context("starting the eBPF log reader")?;

    let mut record = Record::new(&args.pin_dir);
    let mut attached: Vec<Attached> = Vec::new();
    for interface in &args.interfaces {
        let before = previous.as_ref().and_then(|r| r.interface(interface));
        match attach::attach(&mut ebpf, interface, args.xdp_mode, before) {
            Ok(done) => {
                record.set(done.record.clone());
                attached.push(done);
            }
            Err(error) => {
                // A first start leaves nothing behind; a takeover leaves the guard as it
                // is, running (so never opening the range).
                if previous.is_none() {
                    for done in &attached {
                        let _ = done.detach();
                    }
                    drop(ebpf);
                    pin_dir.remove_all();
                }
                return Err(error);
            }
        }
    }
    // Interfaces the previous instance guarded and this one was not given.
    for old in previous.iter().flat_map(|r| &r.interfaces) {
        if record.interface(&old.name).is_none() {
            attach::detach(old)?;
            info!(
                "detached from {} (guarded by the previous instance, not named this time)",
                old.name
            );
        }
    }
    record.write()?;
    // After attaching: a connection that opens meanwhile is the programs' own from its SYN.
    let adopted = adopt::adopt(&mut ebpf, &settings.control_ports);

    info!("{}", describe(&settings));
    info!(
        "this host's addresses: {} known to the guard",
        addresses.known
    );
    info!(
        "{}",
        match inherited {
            Inherited::Nothing => "state: new tables",
            Inherited::Kept => "state: the previous instance's tables, kept as they were",
            Inherited::Migrated =>
                "state: the previous instance's tables, copied into tables of the new size",
            Inherited::Dropped =>
                "state: the previous instance's tables had another layout; some start empty",
        }
    );
    for done in &attached {
        info!("attached to {done}");
    }
    match adopted {
        Ok(count) => info!("adopted {count} control connection(s) open before the start"),
        // Not fatal: those connections' announcements go unread, as on a gateway.
        Err(error) => warn!(
            "{error:#}; the control connections open before the start are not adopted, their announcements go unread"
        ),
    }
    info!(
        "counters: `ftp-loader stats --pin-dir {}`; stop with Ctrl-C or SIGTERM (detaches), or SIGUSR1 (leaves the guard attached for the next loader to take over)",
        args.pin_dir.display()
    );

    let mut instance = Instance {
        ebpf,
        pins: pin_dir,
        record,
        attached,
        choice: args.xdp_mode,
        exit_on_interface_loss: args.exit_on_interface_loss,
    };
    let exit = runtime.block_on(serve(&mut instance, signals, logger, watch));
    let Instance {
        ebpf,
        pins,
        attached,
        ..
    } = instance;
    match exit {
        Ok(Exit::Detach) => {
            // Every interface is tried; one that cannot be detached keeps the pins and the
            // record, so that `ftp-loader unload` can finish the job.
            let mut failed = None;
            for done in &attached {
                match done.detach() {
                    Ok(()) => info!("detached from {}", done.record.name),
                    Err(error) => failed = Some(error),
                }
            }
            drop(ebpf);
            if let Some(error) = failed {
                return Err(error.context(
                    "detaching failed; `ftp-loader unload` with this --pin-dir removes what is left",
                ));
            }
            pins.remove_all();
            Record::remove(&args.pin_dir);
            Ok(())
        }
        Ok(Exit::Leave) => {
            info!(
                "left the guard attached with its tables pinned in {}: the next ftp-loader with this --pin-dir takes it over, `ftp-loader unload` removes it",
                args.pin_dir.display()
            );
            Ok(())
        }
        // Failing here is the loader's problem, not the guard's: it stays attached.
        Err(error) => Err(error),
    }
}

/// Refuses interfaces that another instance (another pin directory) guards.
fn refuse_guarded_elsewhere(interfaces: &[String], pin_dir: &Path) -> Result<()> {
    let netns = current_netns();
    for other in Record::all() {
        if other.pin_dir == pin_dir || other.netns != netns {
            continue;
        }
        for interface in interfaces {
            if other.interface(interface).is_some_and(|i| i.present) {
                let state = if pins::loader_alive(&other.pin_dir) {
                    format!("ftp-loader pid {}", other.pid)
                } else {
                    "a guard whose loader has exited".to_owned()
                };
                bail!(
                    "{interface} is already guarded by {state} with pin directory {}: stop it (or `ftp-loader unload {interface} --pin-dir {}`), or run this one with that --pin-dir to take it over",
                    other.pin_dir.display(),
                    other.pin_dir.display()
                );
            }
        }
    }
    Ok(())
}

fn status(pin_dir: &Path, json: bool) -> Result<()> {
    let Some(record) = Record::read(pin_dir) else {
        bail!(
            "no ftp-loader has run with pin directory {} since boot (nothing recorded): start one with `ftp-loader <interface>`",
            pin_dir.display()
        );
    };
    let alive = pins::loader_alive(pin_dir);
    let now = now_unix();
    let exists = |name: &str| attach::check_interface(name).is_ok();
    if json {
        let mut value = record.to_json();
        value["alive"] = alive.into();
        for interface in value["interfaces"].as_array_mut().into_iter().flatten() {
            let name = interface["name"].as_str().unwrap_or_default().to_owned();
            interface["exists"] = exists(&name).into();
        }
        println!("{value}");
    } else {
        if alive {
            println!(
                "ftp-loader {} (pid {}) running for {}s with pin directory {}",
                record.version,
                record.pid,
                now.saturating_sub(record.started),
                pin_dir.display()
            );
        } else {
            println!(
                "no loader process is alive for pin directory {} (the last was ftp-loader {}, pid {}); what it attached stays attached and keeps guarding",
                pin_dir.display(),
                record.version,
                record.pid
            );
        }
        for i in &record.interfaces {
            if i.present && exists(&i.name) {
                println!(
                    "{}: guard on {} ingress, scanner on egress via {}, attached for {}s",
                    i.name,
                    i.ingress.name(),
                    i.egress.name(),
                    now.saturating_sub(i.since)
                );
            } else {
                println!(
                    "{}: deleted; nothing guards it until it comes back and a loader attaches again",
                    i.name
                );
            }
        }
    }
    if !alive {
        std::process::exit(NO_LOADER);
    }
    Ok(())
}

fn unload(pin_dir: &Path, names: &[String]) -> Result<()> {
    checks::capabilities(Task::Detach)?;
    let record = Record::read(pin_dir);
    if pins::loader_alive(pin_dir) {
        let pid = record.map_or_else(|| "?".to_owned(), |r| r.pid.to_string());
        bail!(
            "an ftp-loader (pid {pid}) is running with pin directory {}: stop it with `kill -TERM {pid}`, which detaches everything",
            pin_dir.display()
        );
    }
    let Some(mut record) = record else {
        if pin_dir.exists() {
            pins::remove_pins(pin_dir);
            println!("removed the left-over pins in {}", pin_dir.display());
            return Ok(());
        }
        bail!(
            "nothing to unload: no ftp-loader has run with pin directory {}",
            pin_dir.display()
        );
    };
    if record.netns != current_netns() {
        bail!(
            "the interfaces of pin directory {} are in another network namespace: run `ftp-loader unload` there (e.g. with `nsenter --net=...`)",
            pin_dir.display()
        );
    }
    for name in names {
        if record.interface(name).is_none() {
            bail!(
                "{name} is not attached by the instance with pin directory {} (see `ftp-loader status`)",
                pin_dir.display()
            );
        }
    }
    let pins = PinDir::acquire(pin_dir)?;
    let chosen: Vec<_> = record
        .interfaces
        .iter()
        .filter(|i| names.is_empty() || names.contains(&i.name))
        .cloned()
        .collect();
    for interface in &chosen {
        // A deleted interface took its attachments with it.
        if interface.present {
            attach::detach(interface)?;
            println!("detached from {}", interface.name);
        }
        record.interfaces.retain(|i| i.name != interface.name);
    }
    if record.interfaces.is_empty() {
        pins.remove_all();
        Record::remove(pin_dir);
    } else {
        record.write()?;
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
        " need an FTP announcement (PORT, EPRT, 227, 229) on control port {}; announced data ports >= {}, {} per control connection and {} per client address, expiring after {}s",
        controls.join(", "),
        settings.min_data_port,
        settings.max_expected,
        settings.max_per_client,
        settings.expect_timeout_secs
    );
    if settings.loose {
        text += "; LOOSE: addresses other than the announcer's are accepted (third-party transfers and FTP bounce possible)";
    }
    text
}

/// A running instance: what `serve` works on.
struct Instance {
    ebpf: Ebpf,
    pins: PinDir,
    record: Record,
    attached: Vec<Attached>,
    choice: XdpChoice,
    exit_on_interface_loss: bool,
}

/// How the loader stops.
enum Exit {
    /// SIGTERM, SIGINT: take everything off and remove the pins.
    Detach,
    /// SIGUSR1: leave the guard and its tables for the next loader.
    Leave,
}

/// The signals the loader answers.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    leave: Signal,
}

impl Signals {
    /// Must run inside the runtime that will serve them.
    fn install() -> Result<Signals> {
        let install = |kind: SignalKind| signal(kind).context("installing signal handlers");
        Ok(Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
            hangup: install(SignalKind::hangup())?,
            leave: install(SignalKind::user_defined1())?,
        })
    }
}

/// Waits for signals, the programs' log lines and interfaces coming and going. Nothing here
/// walks the tables (the programs expire entries themselves), so a signal is served at
/// once whatever their size.
async fn serve(
    instance: &mut Instance,
    mut signals: Signals,
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    watch: Watch,
) -> Result<Exit> {
    // SAFETY: the logger owns its ring buffer descriptor, which outlives the registration
    // (both are dropped together with `logs`).
    let mut logs = unsafe { AsyncFd::register(logger) }
        .map_err(|e| anyhow::anyhow!("watching the eBPF log buffer: {}", e.into_parts().1))?;
    // SAFETY: the watch owns its socket, which outlives the registration (both are dropped
    // together with `links`).
    let mut links = unsafe { AsyncFd::register(watch) }
        .map_err(|e| anyhow::anyhow!("watching interfaces and addresses: {}", e.into_parts().1))?;
    let exit = loop {
        tokio::select! {
            _ = signals.interrupt.recv() => break Exit::Detach,
            _ = signals.terminate.recv() => break Exit::Detach,
            _ = signals.leave.recv() => break Exit::Leave,
            _ = signals.hangup.recv() => info!(
                "SIGHUP: nothing to reload; ftp-loader has no configuration file yet, its settings are its command line"
            ),
            guard = logs.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            guard = links.readable_mut() => {
                let mut guard = guard?;
                let events = guard.get_inner().read()?;
                guard.clear_ready();
                // One reading of the addresses however many changed.
                if events.contains(&Event::Addresses) {
                    instance.addresses_changed();
                }
                for event in events {
                    instance.interface_event(event)?;
                }
            }
        }
    };
    logs.get_mut().flush();
    Ok(exit)
}

impl Instance {
    fn addresses_changed(&mut self) {
        match addrs::sync(&mut self.ebpf) {
            Ok(done) if done.changed() => info!(
                "this host's addresses changed (+{} -{}): {} known to the guard",
                done.added, done.removed, done.known
            ),
            Ok(_) => {}
            // Not fatal: the loader has interfaces to watch; the next change tries again.
            Err(error) => {
                warn!("{error:#}; the guard keeps the addresses it knew until they change again")
            }
        }
    }

    fn interface_event(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Addresses => {}
            Event::Deleted(name) => {
                let Some(index) = self.attached.iter().position(|a| a.record.name == name) else {
                    return Ok(());
                };
                // Its attachments went with it.
                let mut gone = self.attached.remove(index).record;
                gone.present = false;
                self.record.set(gone);
                self.record.write()?;
                if self.exit_on_interface_loss {
                    bail!(
                        "interface {name} was deleted, and its guard with it (--exit-on-interface-loss)"
                    );
                }
                warn!(
                    "interface {name} was deleted, and its guard with it; it will be attached again when an interface of that name appears"
                );
            }
            Event::New(name) => {
                let returns = self.record.interface(&name).is_some_and(|i| !i.present);
                if !returns {
                    return Ok(());
                }
                let done = attach::attach(&mut self.ebpf, &name, self.choice, None)
                    .with_context(|| format!("attaching again to {name}, which came back"))?;
                info!("interface {name} is back: attached to {done}");
                self.record.set(done.record.clone());
                self.record.write()?;
                self.attached.push(done);
            }
        }
        Ok(())
    }
}
