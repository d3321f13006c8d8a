use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use aya::Ebpf;
use clap::{
    ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, error::ErrorKind,
    parser::ValueSource,
};
use ftp_ebpf_common::contract::{
    CONTROLS, EVENTS, EXPECTATIONS, FLOWS, NAT_BINDINGS, NAT_FLOWS, STATS, TLS_PEERS, WOULD_DROP,
};
use ftp_loader::{
    addrs, adopt,
    attach::{self, Attached, XdpChoice},
    checks::{self, Task},
    config::{self, DEFAULT_CONFIG},
    ebpf::{self, Settings},
    events::{self, Reader},
    generate, logging, metrics,
    monitor::{self, Mode},
    monotonic_ns, notify,
    pins::{self, DEFAULT_PIN_DIR, Inherited, PinDir},
    record::{Record, current_netns, now_unix},
    reload, stats,
    status::Status,
    tables::{self, Row},
    tls,
    watch::{Event, Watch},
};
use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
};

/// FTP connection tracking in eBPF: admits a data connection only when an FTP control
/// connection announced it.
///
/// `ftp-loader INTERFACE...` is `ftp-loader run INTERFACE...`; an interface named like a
/// command (`stats`, say) needs the explicit form, `ftp-loader run stats`.
#[derive(Parser)]
#[command(
    name = "ftp-loader",
    version,
    subcommand_negates_reqs = true,
    override_usage = "ftp-loader [OPTIONS] <INTERFACE>...\n       ftp-loader [OPTIONS] <COMMAND>"
)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// The options every command takes, before or after its name.
#[derive(Args)]
struct Options {
    /// bpffs directory of the instance's pins: where `run` pins its tables and the other
    /// commands find them.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Print JSON: `stats` one flat object of counter name to integer, `expectations`,
    /// `flows` and `would-drop` an array of objects, `status` one object, `events` one
    /// object per line.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the interfaces and guard them (what `ftp-loader INTERFACE...` does).
    Run(Box<RunArgs>),
    /// Print the counters of the running instance.
    Stats,
    /// List the live expectations (announced data connections), like `conntrack -L expect`.
    Expectations,
    /// List the tracked data connections, like `conntrack -L`.
    Flows,
    /// List the guarded ports SYNs were refused to while monitoring (--monitor), most
    /// first, with the --allow-port that would admit them.
    WouldDrop,
    /// Follow the events (announced, admitted, refused, expired, dropped) as they happen,
    /// like `conntrack -E expect`, until SIGINT or SIGTERM.
    Events,
    /// Show what is attached where, since when, by which build, and whether a loader
    /// process is alive.
    Status,
    /// Detach what an instance left attached (after a crash, or a stop that left the guard
    /// in place) and remove its pins.
    Unload {
        /// Interfaces to detach from (default: all of them).
        #[arg(value_name = "INTERFACE", conflicts_with = "all")]
        interfaces: Vec<String>,
        /// Every interface (the default when none is named).
        #[arg(long)]
        all: bool,
    },
    /// Print the completion script for SHELL (e.g. `ftp-loader completions bash >
    /// /etc/bash_completion.d/ftp-loader`); the package installs them for bash, zsh and fish.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), for the package.
    #[command(hide = true)]
    Manpage,
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Self::Run(_) => "run",
            Self::Stats => "stats",
            Self::Expectations => "expectations",
            Self::Flows => "flows",
            Self::WouldDrop => "would-drop",
            Self::Events => "events",
            Self::Status => "status",
            Self::Unload { .. } => "unload",
            Self::Completions { .. } => "completions",
            Self::Manpage => "manpage",
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// Interfaces to attach to (or the configuration file's); runs until SIGINT or
    /// SIGTERM, then detaches.
    #[arg(value_name = "INTERFACE")]
    interfaces: Vec<String>,
    /// TOML file whose keys are these options' long names (and `interfaces`); options on
    /// the command line win. Read again at SIGHUP. The default file is read if it exists.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(flatten)]
    settings: Settings,
    /// Where the ingress guard runs: auto picks native XDP on a physical NIC whose driver
    /// has it, tc ingress elsewhere (on a veth, tc costs least: generic XDP runs per wire
    /// packet, native XDP takes TSO away from the peer); native, skb (generic XDP) and tc
    /// force one.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpChoice,
    /// Exit (status 1) when an interface is deleted, instead of waiting for it to come
    /// back and attaching again.
    #[arg(long)]
    exit_on_interface_loss: bool,
    /// Serve OpenMetrics / Prometheus metrics at http://ADDR:PORT/metrics (IPv6 in
    /// brackets: [::1]:9640). A port in --data-ports needs --allow-port for remote scrapers.
    #[arg(long, value_name = "ADDR:PORT", value_parser = metrics::parse_listen)]
    metrics_listen: Option<SocketAddr>,
    /// Log each event (announced, admitted, refused, expired, dropped) with its addresses,
    /// one line each; it is then the events' one reader (`ftp-loader events` is refused).
    #[arg(long)]
    log_events: bool,
}

#[cfg(test)]
mod config_tests;

/// `stats`, the listings and `status` exit with this when what they read is there but no
/// loader process is alive.
const NO_LOADER: i32 = 3;

/// Parses the command line; exits (as clap does) on a mistake.
fn parse() -> Cli {
    let mut command = Cli::command();
    let matches = command.get_matches_mut();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit());
    if let Some(sub) = &cli.command {
        // An option of `run` given before another command's name (`ftp-loader --loose stats`).
        let misplaced = command.get_arguments().find(|arg| {
            !arg.is_global_set()
                && matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
        });
        if let Some(arg) = misplaced {
            let option = arg
                .get_long()
                .map_or_else(|| arg.get_id().to_string(), |long| format!("--{long}"));
            let message = match sub {
                Command::Run(_) => {
                    format!("{option} goes after `run`: `ftp-loader run {option} ...`")
                }
                other => format!(
                    "{option} is an option of `run`, not of `{}`: drop it",
                    other.name()
                ),
            };
            command.error(ErrorKind::ArgumentConflict, message).exit();
        }
    }
    let json_for = match &cli.command {
        None => Some("run"),
        Some(
            sub @ (Command::Run(_)
            | Command::Unload { .. }
            | Command::Completions { .. }
            | Command::Manpage),
        ) => Some(sub.name()),
        Some(_) => None,
    };
    if let Some(name) = json_for.filter(|_| cli.options.json) {
        let message = format!(
            "--json is for stats, expectations, flows, would-drop, events and status, not `{name}`: drop it"
        );
        command.error(ErrorKind::ArgumentConflict, message).exit();
    }
    cli
}

/// The run options as the command line `argv` and the configuration file give them.
struct Configured {
    args: RunArgs,
    /// clap's matches of them (the `run` command's): what a reload compares.
    matches: ArgMatches,
    /// The file read, if any.
    file: Option<PathBuf>,
}

/// `run`'s options from the command line `argv` and the configuration file: the file's
/// keys become arguments, except those the command line gives, and clap parses the lot.
/// At start and again at each SIGHUP.
fn configured(argv: &[OsString]) -> Result<Configured> {
    let command = Cli::command();
    let parse = |argv: &[OsString]| -> Result<(RunArgs, ArgMatches)> {
        let all = command
            .clone()
            .try_get_matches_from(argv)
            .map_err(|e| anyhow::anyhow!("{}", config::clap_sentence(&e)))?;
        let matches = all.subcommand_matches("run").unwrap_or(&all).clone();
        let args = RunArgs::from_arg_matches(&matches)
            .map_err(|e| anyhow::anyhow!("{}", config::clap_sentence(&e)))?;
        Ok((args, matches))
    };
    let (args, matches) = parse(argv)?;
    let named = matches.value_source("config") == Some(ValueSource::CommandLine);
    let Some(file) = config::path(&args.config, named).map(Path::to_owned) else {
        return Ok(Configured {
            args,
            matches,
            file: None,
        });
    };
    let run = command
        .find_subcommand("run")
        .context("ftp-loader has a run command")?;
    let from_file = config::read(&file, run, |id| {
        matches.value_source(id) == Some(ValueSource::CommandLine)
    })?;
    let (args, matches) = parse(&from_file.added_to(argv))?;
    Ok(Configured {
        args,
        matches,
        file: Some(file),
    })
}

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let Cli {
        options: Options { pin_dir, json },
        command,
        run: _,
    } = parse();
    let running = matches!(command, None | Some(Command::Run(_))).then(|| {
        configured(&argv).unwrap_or_else(|error| {
            eprintln!("ftp-loader: {error:#}");
            std::process::exit(1);
        })
    });
    let verbose = running.as_ref().is_some_and(|r| r.args.settings.verbose);
    logging::init(verbose);
    let listing = matches!(
        command,
        Some(
            Command::Stats
                | Command::Expectations
                | Command::Flows
                | Command::WouldDrop
                | Command::Status
                | Command::Completions { .. }
                | Command::Manpage
        )
    );
    if listing {
        // A listing piped into `head` ends when the pipe closes, as other tools' listings
        // do, rather than panicking on the failed write (Rust ignores SIGPIPE by default).
        // SAFETY: restoring the default disposition, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match command {
        Some(Command::Stats) => print_stats(&pin_dir, json),
        Some(Command::Expectations) => print_expectations(&pin_dir, json),
        Some(Command::Flows) => print_flows(&pin_dir, json),
        Some(Command::WouldDrop) => print_would_drop(&pin_dir, json),
        Some(Command::Events) => follow_events(&pin_dir, json),
        Some(Command::Status) => status(&pin_dir, json),
        Some(Command::Unload { interfaces, all: _ }) => unload(&pin_dir, &interfaces),
        Some(Command::Completions { shell }) => {
            generate::completions(shell, Cli::command());
            Ok(())
        }
        Some(Command::Manpage) => generate::manpage(Cli::command()),
        Some(Command::Run(_)) | None => match running {
            Some(configured) => run(configured, &pin_dir, argv),
            None => unreachable!("the options of run are read before it runs"),
        },
    };
    if let Err(error) = result {
        logging::fatal(&error);
        std::process::exit(1);
    }
}

/// Opens the pin `name` of the running instance, once this user may.
fn open_pin(pin_dir: &Path, name: &str) -> Result<aya::maps::Map> {
    checks::capabilities(Task::Read)?;
    checks::pin_readable(pin_dir, name)?;
    pins::open(pin_dir, name)
}

fn print_stats(pin_dir: &Path, json: bool) -> Result<()> {
    let array = STATS.from_map(open_pin(pin_dir, STATS.name)?)?;
    let counters = stats::read(&array)?;
    let counters = stats::Counters(&counters);
    if json {
        println!("{}", counters.to_json());
    } else {
        print!("{}", counters.to_text());
    }
    require_live_loader(pin_dir);
    Ok(())
}

fn print_expectations(pin_dir: &Path, json: bool) -> Result<()> {
    let table = EXPECTATIONS.from_map(open_pin(pin_dir, EXPECTATIONS.name)?)?;
    // An instance from before the NAT gateway has no such table: nothing is translated.
    let bindings = pins::open(pin_dir, NAT_BINDINGS.name)
        .ok()
        .map(|map| NAT_BINDINGS.from_map(map))
        .transpose()?;
    let controls = CONTROLS.from_map(open_pin(pin_dir, CONTROLS.name)?)?;
    let now = monotonic_ns();
    print_rows(
        &tables::expectations(&table, bindings.as_ref(), Some(&controls), now),
        json,
    );
    require_live_loader(pin_dir);
    Ok(())
}

fn print_flows(pin_dir: &Path, json: bool) -> Result<()> {
    let table = FLOWS.from_map(open_pin(pin_dir, FLOWS.name)?)?;
    let translations = pins::open(pin_dir, NAT_FLOWS.name)
        .ok()
        .map(|map| NAT_FLOWS.from_map(map))
        .transpose()?;
    // An instance from before FTPS support has no such table.
    let tls_peers = pins::open(pin_dir, TLS_PEERS.name)
        .ok()
        .map(|map| TLS_PEERS.from_map(map))
        .transpose()?;
    print_rows(
        &tables::flows(
            &table,
            translations.as_ref(),
            tls_peers.as_ref(),
            monotonic_ns(),
        ),
        json,
    );
    require_live_loader(pin_dir);
    Ok(())
}

fn print_would_drop(pin_dir: &Path, json: bool) -> Result<()> {
    let array = WOULD_DROP.from_map(open_pin(pin_dir, WOULD_DROP.name)?)?;
    print_rows(&monitor::would_drop(&array)?, json);
    if !json && Mode::running(pin_dir) == Some(Mode::Enforce) {
        println!(
            "counted while monitoring; the running loader enforces: such SYNs are dropped now"
        );
    }
    require_live_loader(pin_dir);
    Ok(())
}

/// `ftp-loader events`: prints the events until SIGINT, SIGTERM, a closed pipe or the
/// instance's end.
fn follow_events(pin_dir: &Path, json: bool) -> Result<()> {
    checks::capabilities(Task::Read)?;
    checks::pin_readable(pin_dir, EVENTS.name)?;
    let reader = Reader::open(pin_dir)?;
    // On stderr, as tcpdump says what it listens to: the events alone go to stdout.
    eprintln!(
        "ftp-loader: following the events of pin directory {} (Ctrl-C ends)",
        pin_dir.display()
    );
    if !pins::loader_alive(pin_dir) {
        eprintln!(
            "ftp-loader: no loader process is alive for {}; the guard it left attached still writes events",
            pin_dir.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(events::follow(reader, json))
}

fn print_rows<R: Row>(rows: &[R], json: bool) {
    if json {
        println!("{}", tables::to_json(rows));
    } else {
        print!("{}", tables::to_text(rows));
    }
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

fn run(configured: Configured, pin_dir: &Path, argv: Vec<OsString>) -> Result<()> {
    let Configured {
        args,
        matches,
        file,
    } = configured;
    require_interfaces(&args.interfaces, file.as_deref())?;
    checks::capabilities(Task::Run)?;
    checks::interfaces(&args.interfaces)?;
    checks::nat_inside(&args.settings, &args.interfaces)?;
    let settings = args.settings;
    // Refused before the pin directory is taken or bpffs mounted; `ebpf::load` checks the
    // settings again for callers other than this one.
    checks::settings(&settings)?;
    checks::dirs_writable(pin_dir)?;
    refuse_guarded_elsewhere(&args.interfaces, pin_dir)?;
    // Bound before anything is attached: an address in use refuses the start, not the scrape.
    let metrics_listener = args.metrics_listen.map(metrics::bind).transpose()?;
    let pins = PinDir::acquire(pin_dir)?;
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
    let previous = Record::read(pin_dir).filter(|r| r.netns == current_netns());
    let had_state = pins.has_state();
    let set_aside = pins.prepare(&settings)?;
    let mut ebpf = ebpf::load_pinned(&settings, &pins).inspect_err(|_| {
        // A first start refused here (a table too large, say) leaves no half-made pins.
        if !had_state {
            pins.remove_all();
        }
    })?;
    let inherited = pins.inherit(&mut ebpf, had_state, set_aside);
    // Before the interfaces: refused, it leaves nothing attached.
    let probed = if settings.tls_uprobes {
        Some(
            tls::attach(&mut ebpf, &settings.tls_libraries).inspect_err(|_| {
                if !had_state {
                    pins.remove_all();
                }
            })?,
        )
    } else {
        None
    };
    // Opened before the addresses are first read, so that no change after that read goes
    // unnoticed.
    let watch = Watch::open().context("watching interfaces and addresses (rtnetlink)")?;
    // Before anything is attached: the guard knows the host's addresses from the first
    // packet.
    let addresses = addrs::sync(&mut ebpf).inspect_err(|_| {
        if !had_state {
            pins.remove_all();
        }
    })?;
    // Before anything is attached: a reader already following the events refuses
    // --log-events.
    let events = if args.log_events {
        Some(Reader::open(pin_dir).inspect_err(|_| {
            if !had_state {
                pins.remove_all();
            }
        })?)
    } else {
        events::stop_if_unread(pin_dir)?;
        None
    };

    let mut record = Record::new(pin_dir);
    let mut attached: Vec<Attached> = Vec::new();
    for interface in &args.interfaces {
        let before = previous.as_ref().and_then(|r| r.interface(interface));
        let nat = settings.nat_role(interface);
        match attach::attach(&mut ebpf, interface, args.xdp_mode, before, nat) {
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
                    pins.remove_all();
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
    if let Some(file) = &file {
        info!(
            "configuration: {} (read again at SIGHUP; the command line's options win)",
            file.display()
        );
    }
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
    if let Some(probed) = &probed {
        tls::describe(probed);
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
        pin_dir.display()
    );

    if let Some(listener) = metrics_listener {
        metrics::start(&runtime, listener, &settings, pin_dir)?;
    }

    let mut instance = Instance {
        ebpf,
        pins,
        record,
        attached,
        choice: args.xdp_mode,
        exit_on_interface_loss: args.exit_on_interface_loss,
        argv,
        matches,
        settings,
    };
    runtime.spawn(notify::report_status(pin_dir.to_owned()));
    // Attached, adopted and served from here on: units ordered after this one may start.
    notify::ready(pin_dir);
    let exit = runtime.block_on(serve(&mut instance, signals, events, watch));
    notify::stopping();
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
            Record::remove(pin_dir);
            Ok(())
        }
        Ok(Exit::Leave) => {
            info!(
                "left the guard attached with its tables pinned in {}: the next ftp-loader with this --pin-dir takes it over, `ftp-loader unload` removes it",
                pin_dir.display()
            );
            Ok(())
        }
        // Failing here is the loader's problem, not the guard's: it stays attached.
        Err(error) => Err(error),
    }
}

/// Refuses to run with no interface to guard.
fn require_interfaces(interfaces: &[String], file: Option<&Path>) -> Result<()> {
    if interfaces.is_empty() {
        let file = file.map_or(Path::new(DEFAULT_CONFIG), |f| f);
        bail!(
            "no interface to guard: name them on the command line (`ftp-loader run eth0`) or as `interfaces = [\"eth0\"]` in {}",
            file.display()
        );
    }
    Ok(())
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
    let report = Status::new(&record, alive, Mode::running(pin_dir), |name| {
        attach::check_interface(name).is_ok()
    });
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text(now_unix()));
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
    if !settings.allow_from.is_empty() {
        let networks: Vec<String> = settings.allow_from.iter().map(|n| n.to_string()).collect();
        text += &format!(
            "; new connections from {} pass without one",
            networks.join(", ")
        );
    }
    if !settings.public_addresses.is_empty() {
        let mappings: Vec<String> = settings
            .public_addresses
            .iter()
            .map(|mapping| match mapping.local() {
                Some(local) => format!("{} (expected at {local})", mapping.public()),
                None => format!(
                    "{} (expected at the address the control connection reached)",
                    mapping.public()
                ),
            })
            .collect();
        text += &format!(
            "; behind 1:1 NAT, this host's announcements of {} are its own",
            mappings.join(", ")
        );
    }
    if !settings.nat_inside.is_empty() {
        let inside: Vec<String> = settings
            .nat_inside
            .iter()
            .map(|nat| format!("on {} to {}", nat.interface, nat.public))
            .collect();
        text += &format!(
            "; NAT gateway: what the hosts behind it announce is rewritten {}",
            inside.join(", ")
        );
    }
    if settings.loose {
        text += "; LOOSE: addresses other than the announcer's are accepted (third-party transfers and FTP bounce possible)";
    }
    if settings.monitor {
        text += &format!("; {}", Mode::Monitor.describe());
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
    /// The command line, read again with the configuration file at SIGHUP.
    argv: Vec<OsString>,
    /// The run options it runs with, as clap matched them.
    matches: ArgMatches,
    settings: Settings,
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

/// Waits for signals, events (with --log-events) and interfaces coming and going. Nothing
/// here walks the tables (the programs expire entries themselves), so a signal is served
/// at once whatever their size.
/// How often the counters are read for `tls::Hint`.
const HINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

async fn serve(
    instance: &mut Instance,
    mut signals: Signals,
    events: Option<Reader>,
    watch: Watch,
) -> Result<Exit> {
    let mut events = match events {
        // SAFETY: the reader owns its ring buffer descriptor, which outlives the
        // registration (both are dropped together with `events`).
        Some(reader) => Some(unsafe { AsyncFd::register(reader) }.map_err(|e| {
            anyhow::anyhow!("watching the event ring buffer: {}", e.into_parts().1)
        })?),
        None => None,
    };
    // SAFETY: the watch owns its socket, which outlives the registration (both are dropped
    // together with `links`).
    let mut links = unsafe { AsyncFd::register(watch) }
        .map_err(|e| anyhow::anyhow!("watching interfaces and addresses: {}", e.into_parts().1))?;
    let mut poll = events::poll_interval();
    let mut hint = tls::Hint::default();
    let mut counters = tokio::time::interval(HINT_INTERVAL);
    counters.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let exit = loop {
        tokio::select! {
            _ = signals.interrupt.recv() => break Exit::Detach,
            _ = signals.terminate.recv() => break Exit::Detach,
            _ = signals.leave.recv() => break Exit::Leave,
            // Served between two signals: one that comes meanwhile waits for it (a few
            // milliseconds), it does not kill the loader.
            _ = signals.hangup.recv() => {
                notify::reloading();
                instance.reload();
                notify::ready(&instance.record.pin_dir);
            }
            guard = async { events.as_mut()?.readable_mut().await.ok() }, if events.is_some() => {
                if let Some(mut guard) = guard {
                    log_events(guard.get_inner_mut());
                    guard.clear_ready();
                }
            }
            _ = poll.tick(), if events.is_some() => {
                if let Some(events) = &mut events {
                    log_events(events.get_mut());
                }
            }
            _ = counters.tick() => {
                let counters = STATS
                    .of(&instance.ebpf)
                    .map_err(anyhow::Error::from)
                    .and_then(|table| stats::read(&table));
                if let Ok(counters) = counters {
                    hint.check(&counters, instance.settings.tls_uprobes);
                }
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
    if let Some(events) = &mut events {
        log_events(events.get_mut());
    }
    Ok(exit)
}

/// --log-events: one line per event.
fn log_events(reader: &mut Reader) {
    for row in reader.rows() {
        info!("event: {row}");
    }
}

impl Instance {
    /// SIGHUP: the command line and the configuration file read again and applied, or, if
    /// they cannot be, the running settings kept.
    fn reload(&mut self) {
        let started = Instant::now();
        match self.try_reload() {
            Ok(done) => info!("SIGHUP: {done} ({} ms)", started.elapsed().as_millis()),
            Err(error) => warn!("SIGHUP: {error:#}"),
        }
    }

    /// Everything is checked before anything changes. Then the interfaces to add are
    /// attached (what most likely fails: undone if it does) and the settings written; the
    /// rest (moving guards to another hook, detaching) cannot be undone, so a failure there
    /// is reported as partial, and the next SIGHUP tries again.
    fn try_reload(&mut self) -> Result<String> {
        let kept = |error: anyhow::Error| anyhow::anyhow!("{error:#}; the running settings stay");
        let Configured {
            args,
            matches,
            file,
        } = configured(&self.argv).map_err(kept)?;
        let run = Cli::command();
        let run = run
            .find_subcommand("run")
            .context("ftp-loader has a run command")?;
        let changes = reload::changes(run, &self.matches, &matches);
        let (applied, restart): (Vec<_>, Vec<_>) =
            changes.iter().partition(|c| reload::applies(&c.key));
        let settings = reload::effective(&self.settings, args.settings);
        let added: Vec<String> = args
            .interfaces
            .iter()
            .filter(|name| self.record.interface(name).is_none())
            .cloned()
            .collect();
        // Those waiting to come back do not exist now; every other must, once.
        let present: Vec<String> = args
            .interfaces
            .iter()
            .filter(|name| self.record.interface(name).is_none_or(|i| i.present))
            .cloned()
            .collect();
        checks::settings(&settings)
            .and_then(|()| require_interfaces(&args.interfaces, file.as_deref()))
            .and_then(|()| checks::interfaces(&present))
            .and_then(|()| checks::nat_inside(&settings, &args.interfaces))
            .and_then(|()| refuse_guarded_elsewhere(&added, &self.record.pin_dir))
            .map_err(kept)?;

        let mut new: Vec<Attached> = Vec::new();
        let attached = added.iter().try_for_each(|name| {
            let nat = settings.nat_role(name);
            new.push(attach::attach(
                &mut self.ebpf,
                name,
                args.xdp_mode,
                None,
                nat,
            )?);
            Ok(())
        });
        if let Err(error) = attached.and_then(|()| ebpf::configure(&mut self.ebpf, &settings)) {
            for done in &new {
                let _ = done.detach();
            }
            return Err(kept(error));
        }
        let mut done: Vec<String> = Vec::new();
        for attached in new {
            done.push(format!("attached to {attached}"));
            self.record.set(attached.record.clone());
            self.attached.push(attached);
        }
        let rest = self.move_and_detach(args.xdp_mode, &args.interfaces, &mut done);
        self.record.write()?;
        rest.map_err(|error| {
            anyhow::anyhow!(
                "{error:#}; the settings were applied{}, the rest not: SIGHUP again to retry",
                done.iter().map(|d| format!(", {d}")).collect::<String>()
            )
        })?;
        if settings.control_ports != self.settings.control_ports {
            // Connections already open on a new control port are followed from now on.
            match adopt::adopt(&mut self.ebpf, &settings.control_ports) {
                Ok(count) => done.push(format!("adopted {count} control connection(s)")),
                Err(error) => warn!(
                    "{error:#}; the control connections open on the new control ports are not adopted"
                ),
            }
        }
        self.choice = args.xdp_mode;
        self.exit_on_interface_loss = args.exit_on_interface_loss;
        self.settings = settings;
        self.matches = matches;

        let source = file.map_or_else(
            || "the command line (no configuration file)".to_owned(),
            |f| f.display().to_string(),
        );
        let mut text = if applied.is_empty() {
            format!("nothing to change in {source}")
        } else {
            let list: Vec<String> = applied.iter().map(ToString::to_string).collect();
            format!("applied {source}: {}", list.join(", "))
        };
        if !done.is_empty() {
            text += &format!("; {}", done.join("; "));
        }
        if !restart.is_empty() {
            text += &format!("; {}", reload::restart_sentence(&restart));
        }
        Ok(text + "; no expectation or flow was touched")
    }

    /// At reload: moves the guards to the hook a changed `--xdp-mode` asks for, and detaches
    /// from the interfaces no longer named. Each step is recorded as it is done.
    fn move_and_detach(
        &mut self,
        choice: XdpChoice,
        interfaces: &[String],
        done: &mut Vec<String>,
    ) -> Result<()> {
        if choice != self.choice {
            // Where the hook stays, the programs are replaced in place; where it changes,
            // the new hook guards before the old one goes (attach::attach).
            for attached in &mut self.attached {
                let before = attached.record.ingress;
                let nat = self.settings.nat_role(&attached.record.name);
                *attached = attach::attach(
                    &mut self.ebpf,
                    &attached.record.name,
                    choice,
                    Some(&attached.record),
                    nat,
                )?;
                self.record.set(attached.record.clone());
                if attached.record.ingress != before {
                    done.push(format!("re-attached {attached}"));
                }
            }
        }
        let removed: Vec<String> = self
            .record
            .interfaces
            .iter()
            .map(|i| i.name.clone())
            .filter(|name| !interfaces.contains(name))
            .collect();
        for name in removed {
            if let Some(at) = self.attached.iter().position(|a| a.record.name == name) {
                self.attached[at].detach()?;
                self.attached.remove(at);
            }
            self.record.interfaces.retain(|i| i.name != name);
            done.push(format!("detached from {name}"));
        }
        Ok(())
    }

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
                let nat = self.settings.nat_role(&name);
                let done = attach::attach(&mut self.ebpf, &name, self.choice, None, nat)
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
