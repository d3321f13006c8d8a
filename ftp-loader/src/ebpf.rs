//! The embedded kernel object and how it is loaded with an instance's settings.

use std::{borrow::BorrowMut, net::Ipv4Addr, path::Path, sync::LazyLock};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, lpm_trie::LpmTrie},
    programs::ProgramError,
};
use clap::Args;
use ftp_ebpf_common::{
    addr::AddrKey,
    allow::{Cidr, SourceKey},
    config::Config,
    contract::{
        self, ALLOW_FROM, CLIENTS, CONFIG, CONTROLS, DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORTS,
        DEFAULT_EXPECT_TIMEOUT_SECS, DEFAULT_FLOW_TIMEOUT_SECS, DEFAULT_MAX_CONTROLS,
        DEFAULT_MAX_EXPECTATIONS, DEFAULT_MAX_EXPECTED, DEFAULT_MAX_FLOWS, DEFAULT_MAX_PER_CLIENT,
        DEFAULT_MIN_DATA_PORT, DEFAULT_TLS_CONTROL_PORT, EGRESS_PROGRAM, EXPECTATIONS, FLOWS,
        INGRESS_PROGRAM, INGRESS_TC_PROGRAM, MAX_EXPECTED, NAT_BINDINGS, NAT_CONTROLS, NAT_FLOWS,
        NS_PER_SEC, PORTS, PUBLIC_ADDRS, TLS_PEERS,
    },
    nat::{PublicAddr, PublicMapping},
    policy::{PortInfo, PortPlan},
};

use crate::{
    checks,
    pins::{PinDir, STATE_MAP_NAMES},
};

/// The compiled programs, built by build.rs; 8-byte aligned as the ELF parser wants.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ftp-ebpf.o"));

/// `DEFAULT_DATA_PORTS` as `--data-ports` spells it.
static DEFAULT_DATA_PORTS_TEXT: LazyLock<String> =
    LazyLock::new(|| format!("{}-{}", DEFAULT_DATA_PORTS.0, DEFAULT_DATA_PORTS.1));

/// An instance's settings; `ftp-loader run` parses its options straight into them.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Guarded ports: a new inbound TCP connection to one of them needs an announcement.
    #[arg(long, value_name = "LO-HI", default_value = DEFAULT_DATA_PORTS_TEXT.as_str(),
          value_parser = parse_range)]
    pub data_ports: (u16, u16),
    /// An FTP control port whose traffic is scanned (repeatable).
    #[arg(long = "control-port", value_name = "PORT", default_values_t = [DEFAULT_CONTROL_PORT],
          value_parser = clap::value_parser!(u16).range(1..))]
    pub control_ports: Vec<u16>,
    /// An implicit-FTPS control port, whose connections are TLS from their first byte
    /// (repeatable).
    #[arg(long = "tls-control-port", value_name = "PORT",
          default_values_t = [DEFAULT_TLS_CONTROL_PORT],
          value_parser = clap::value_parser!(u16).range(1..))]
    pub tls_control_ports: Vec<u16>,
    /// Read the plaintext of FTP-over-TLS control connections inside the FTP server's
    /// processes on this host, at their TLS library's calls (uprobes), so that their data
    /// connections are guarded as plaintext FTP's are.
    #[arg(long)]
    pub tls_uprobes: bool,
    /// The TLS library (or statically linked server binary) to probe with --tls-uprobes,
    /// besides those the running FTP servers are found to use (repeatable).
    #[arg(long = "tls-library", value_name = "PATH")]
    pub tls_libraries: Vec<std::path::PathBuf>,
    /// A listener inside the guarded range that stays open to everyone (repeatable).
    #[arg(long = "allow-port", value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub allowed_ports: Vec<u16>,
    /// Seconds an announced data connection may take to open.
    #[arg(long = "expect-timeout", value_name = "SECONDS",
          default_value_t = DEFAULT_EXPECT_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub expect_timeout_secs: u64,
    /// Seconds of silence after which a tracked data connection is forgotten.
    #[arg(long = "flow-timeout", value_name = "SECONDS",
          default_value_t = DEFAULT_FLOW_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub flow_idle_timeout_secs: u64,
    /// Capacity of the expectation table.
    #[arg(long, default_value_t = DEFAULT_MAX_EXPECTATIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_expectations: u32,
    /// Capacity of the tracked-flow table.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_flows: u32,
    /// Capacity of the control-connection table.
    #[arg(long, default_value_t = DEFAULT_MAX_CONTROLS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_controls: u32,
    /// Expectations one control connection may hold (1-4; the kernel helper's max_expected
    /// is 1): the newest displaces the oldest.
    #[arg(long, default_value_t = DEFAULT_MAX_EXPECTED,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_EXPECTED)))]
    pub max_expected: u8,
    /// Expectations one client address (an IPv6 client's /64) may hold, 1 to
    /// --max-expectations: a client at its cap gets no more until one of its own is used,
    /// replaced or expires.
    #[arg(long = "max-expectations-per-client", value_name = "N",
          default_value_t = DEFAULT_MAX_PER_CLIENT)]
    pub max_per_client: u32,
    /// Accept announced addresses other than the announcer's own, like the kernel helper's
    /// loose=1. This opens third-party transfers and with them FTP bounce.
    #[arg(long)]
    pub loose: bool,
    /// Refuse announcements of data ports below this (1 accepts all).
    #[arg(long, default_value_t = DEFAULT_MIN_DATA_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub min_data_port: u16,
    /// Track and count as when enforcing, but let every packet pass: `ftp-loader
    /// would-drop` then lists, by port, the connections enforcement would refuse.
    #[arg(long)]
    pub monitor: bool,
    /// A network (ADDRESS/LENGTH or ADDRESS, IPv4 or IPv6) whose new connections to the
    /// guarded ports pass, announced or not: monitoring hosts, backup servers (repeatable).
    #[arg(long = "allow-from", value_name = "CIDR")]
    pub allow_from: Vec<Cidr>,
    /// This host sits behind a 1:1 NAT that peers reach it through at PUBLIC: announcements
    /// of PUBLIC made here (a server's 227 set by its masquerade option, a client's PORT)
    /// are this host's own, and the data connection is expected at LOCAL, or when LOCAL is
    /// omitted at the address the control connection reached (repeatable).
    #[arg(long = "public-address", value_name = "PUBLIC[=LOCAL]")]
    pub public_addresses: Vec<PublicMapping>,
    /// On a NAT gateway: INTERFACE faces hosts that the gateway's NAT shows as the IPv4
    /// address PUBLIC (masqueraded clients, servers behind a port forward). What they
    /// announce (227, PORT, EPRT) is rewritten to PUBLIC, as the kernel's nf_nat_ftp does;
    /// INTERFACE must be guarded too, as must the outside interface (repeatable).
    #[arg(long = "nat-inside", value_name = "INTERFACE=PUBLIC")]
    pub nat_inside: Vec<NatInterface>,
    /// Log debug lines too (each admission and drop, with addresses: --log-events).
    #[arg(short, long)]
    pub verbose: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_ports: DEFAULT_DATA_PORTS,
            control_ports: vec![DEFAULT_CONTROL_PORT],
            tls_control_ports: vec![DEFAULT_TLS_CONTROL_PORT],
            tls_uprobes: false,
            tls_libraries: Vec::new(),
            allowed_ports: Vec::new(),
            expect_timeout_secs: DEFAULT_EXPECT_TIMEOUT_SECS,
            flow_idle_timeout_secs: DEFAULT_FLOW_TIMEOUT_SECS,
            max_expectations: DEFAULT_MAX_EXPECTATIONS,
            max_flows: DEFAULT_MAX_FLOWS,
            max_controls: DEFAULT_MAX_CONTROLS,
            max_expected: DEFAULT_MAX_EXPECTED,
            max_per_client: DEFAULT_MAX_PER_CLIENT,
            loose: false,
            min_data_port: DEFAULT_MIN_DATA_PORT,
            monitor: false,
            allow_from: Vec::new(),
            public_addresses: Vec::new(),
            nat_inside: Vec::new(),
            verbose: false,
        }
    }
}

/// What an interface is to a NAT gateway (`--nat-inside`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatRole {
    /// No gateway: the usual programs.
    None,
    /// Facing the translated hosts, shown as this address: announcements are rewritten.
    Inside(Ipv4Addr),
    /// Every other interface of a gateway: data connections are translated.
    Outside,
}

/// One `--nat-inside`: INTERFACE=PUBLIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatInterface {
    pub interface: String,
    pub public: Ipv4Addr,
}

impl std::str::FromStr for NatInterface {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let form = "expected INTERFACE=PUBLIC (the interface facing the translated hosts, and the IPv4 address the NAT shows them as), e.g. eth1=198.51.100.1";
        let (interface, public) = text.split_once('=').ok_or(form)?;
        let interface = interface.trim();
        if interface.is_empty() {
            return Err(form.to_owned());
        }
        let public: Ipv4Addr = public.trim().parse().map_err(|_| {
            format!("`{public}` is not an IPv4 address: {form} (IPv6 is not translated, so nothing is rewritten there)")
        })?;
        if public.is_unspecified() || public.is_multicast() || public.is_broadcast() {
            return Err(format!(
                "{public} is no host's address: give the address the gateway's NAT shows its hosts as"
            ));
        }
        Ok(Self {
            interface: interface.to_owned(),
            public,
        })
    }
}

impl std::fmt::Display for NatInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.interface, self.public)
    }
}

/// `--data-ports`: LO-HI.
pub fn parse_range(text: &str) -> Result<(u16, u16), String> {
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

impl Settings {
    /// The tables an option sizes: (map, option, entries).
    pub fn table_sizes(&self) -> [(&'static str, &'static str, u32); 8] {
        // The gateway's tables, one entry each where nothing is `--nat-inside`.
        let on_gateway = |entries: u32| {
            if self.nat_inside.is_empty() {
                1
            } else {
                entries
            }
        };
        let expectations = "--max-expectations";
        [
            (EXPECTATIONS.name, expectations, self.max_expectations),
            // Each client that holds a share holds an expectation, at least for a moment:
            // there are never more shares in use than expectations.
            (CLIENTS.name, expectations, self.max_expectations),
            (FLOWS.name, "--max-flows", self.max_flows),
            (CONTROLS.name, "--max-controls", self.max_controls),
            // One entry per rewritten control connection, per data connection a rewritten
            // announcement expects, and two per translated data connection.
            (
                NAT_CONTROLS.name,
                "--max-controls",
                on_gateway(self.max_controls),
            ),
            (
                NAT_BINDINGS.name,
                expectations,
                on_gateway(self.max_expectations),
            ),
            (
                NAT_FLOWS.name,
                "--max-flows",
                on_gateway(self.max_flows.saturating_mul(2)),
            ),
            // Two ends per TLS control connection, the least recently seen forgotten
            // first: those are the ones whose data connections are not coming.
            (TLS_PEERS.name, "--max-controls", self.max_controls),
        ]
    }

    /// The public address of `interface`, when it is `--nat-inside`.
    pub fn nat_public(&self, interface: &str) -> Option<Ipv4Addr> {
        self.nat_inside
            .iter()
            .find(|nat| nat.interface == interface)
            .map(|nat| nat.public)
    }

    /// What `interface` is to a NAT gateway, if this is one.
    pub fn nat_role(&self, interface: &str) -> NatRole {
        match self.nat_public(interface) {
            Some(public) => NatRole::Inside(public),
            None if !self.nat_inside.is_empty() => NatRole::Outside,
            None => NatRole::None,
        }
    }

    /// The settings the programs read while they run.
    pub fn config(&self) -> Config {
        Config {
            expect_timeout_ns: self.expect_timeout_secs.saturating_mul(NS_PER_SEC),
            flow_idle_timeout_ns: self.flow_idle_timeout_secs.saturating_mul(NS_PER_SEC),
            max_per_client: self.max_per_client,
            min_data_port: self.min_data_port,
            max_expected: self.max_expected,
            loose: u8::from(self.loose),
            monitor: u8::from(self.monitor),
            allow_from: u8::from(!self.allow_from.is_empty()),
            public_addresses: u8::from(!self.public_addresses.is_empty()),
            nat_inside: u8::from(!self.nat_inside.is_empty()),
            ..Config::DEFAULT
        }
    }

    pub fn port_plan(&self) -> PortPlan<'_> {
        PortPlan {
            data_ports: self.data_ports,
            control_ports: &self.control_ports,
            tls_control_ports: &self.tls_control_ports,
            allowed_ports: &self.allowed_ports,
        }
    }
}

/// Loads the maps and the programs into the kernel (through the verifier) without
/// attaching anything; the tables are this process's own.
pub fn load(settings: &Settings) -> Result<Ebpf> {
    load_with(settings, None)
}

/// As `load`, with the tables pinned in `pins`: those a previous instance left there (and
/// `PinDir::prepare` found fitting) are reused as they are.
pub fn load_pinned(settings: &Settings, pins: &PinDir) -> Result<Ebpf> {
    load_with(settings, Some(pins))
}

fn load_with(settings: &Settings, pins: Option<&PinDir>) -> Result<Ebpf> {
    checks::settings(settings)?;
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, std::path::PathBuf)> = pins
        .map(|pins| {
            STATE_MAP_NAMES
                .iter()
                .map(|&name| (name, pins.map_path(name)))
                .collect()
        })
        .unwrap_or_default();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    for (map, _, entries) in settings.table_sizes() {
        loader.map_max_entries(map, entries);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|error| checks::map_creation(error, settings))?;

    configure(&mut ebpf, settings)?;
    verified(INGRESS_PROGRAM, contract::ingress_mut(&mut ebpf)?.load())?;
    for name in [INGRESS_TC_PROGRAM, EGRESS_PROGRAM] {
        verified(name, contract::classifier_mut(&mut ebpf, name)?.load())?;
    }
    Ok(ebpf)
}

/// Writes the settings the programs read while they run: ALLOW_FROM, PUBLIC_ADDRS, the
/// ports' classes and CONFIG. Called before anything is attached, and again at reload: what the tables
/// hold (the expectations, the flows, when each port was last announced and admitted, the
/// counters) is kept, so switching between monitoring and enforcing loses nothing.
pub fn configure(ebpf: &mut Ebpf, settings: &Settings) -> Result<()> {
    write_allow_from(&mut ALLOW_FROM.of_mut(ebpf)?, settings)?;
    write_public_addresses(&mut PUBLIC_ADDRS.of_mut(ebpf)?, settings)?;
    write_ports(&mut PORTS.of_mut(ebpf)?, settings)?;
    write_config(&mut CONFIG.of_mut(ebpf)?, settings)
}

/// The `--allow-from` networks, replacing the previous list: those no longer listed are
/// removed after the new ones are in, so that a network listed in both never misses.
fn write_allow_from<T: BorrowMut<MapData>>(
    trie: &mut LpmTrie<T, SourceKey, u8>,
    settings: &Settings,
) -> Result<()> {
    let listed: Vec<(u32, SourceKey)> = settings.allow_from.iter().map(Cidr::key).collect();
    for &(prefix, data) in &listed {
        trie.insert(&ALLOW_FROM.key(prefix, data), 1, 0)
            .with_context(|| format!("writing {ALLOW_FROM}"))?;
    }
    let stale: Vec<_> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !listed.contains(&(key.prefix_len(), key.data())))
        .collect();
    for key in stale {
        trie.remove(&key)
            .with_context(|| format!("writing {ALLOW_FROM}"))?;
    }
    Ok(())
}

/// The `--public-address` mappings, replacing the previous ones in the same order as
/// `write_allow_from`: new and changed ones first, then the stale ones go.
fn write_public_addresses<T: BorrowMut<MapData>>(
    table: &mut HashMap<T, AddrKey, PublicAddr>,
    settings: &Settings,
) -> Result<()> {
    let entries: Vec<(AddrKey, PublicAddr)> = settings
        .public_addresses
        .iter()
        .map(PublicMapping::entry)
        .collect();
    for (public, value) in &entries {
        table
            .insert(public, value, 0)
            .with_context(|| format!("writing {PUBLIC_ADDRS}"))?;
    }
    let stale: Vec<AddrKey> = table
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !entries.iter().any(|(public, _)| public == key))
        .collect();
    for key in stale {
        table
            .remove(&key)
            .with_context(|| format!("writing {PUBLIC_ADDRS}"))?;
    }
    Ok(())
}

fn write_ports<T: BorrowMut<MapData>>(
    ports: &mut Array<T, PortInfo>,
    settings: &Settings,
) -> Result<()> {
    let plan = settings.port_plan();
    for port in 0..=u16::MAX {
        // A table inherited from a previous instance keeps when each port was last
        // announced and admitted: its expectations depend on them. A new table is all
        // zeros; an initialised entry holds NEVER or a time since boot.
        let new = plan.info(port);
        let info = match ports.get(&u32::from(port), 0) {
            // Left alone: rewriting it could put back an older time than one the programs
            // wrote since it was read (an announcement during a reload, lost).
            Ok(old)
                if old.announced != 0
                    && (old.class, old.implicit_tls) == (new.class, new.implicit_tls) =>
            {
                continue;
            }
            Ok(old) if old.announced != 0 => PortInfo {
                class: new.class,
                implicit_tls: new.implicit_tls,
                ..old
            },
            _ => new,
        };
        ports.set(u32::from(port), info, 0)?;
    }
    Ok(())
}

/// Loads the tc program `name` through the verifier unless it is loaded already: the
/// layer-3 variants (`contract::LinkLayer::Ip`) wait until an interface needs them, so that
/// guarding only Ethernet interfaces costs no verifier time for them.
pub fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let classifier = contract::classifier_mut(ebpf, name)?;
    if classifier.fd().is_ok() {
        return Ok(());
    }
    verified(name, classifier.load())
}

/// Written last: a flag it sets (monitoring off, say) takes effect once the tables it
/// relies on are written.
fn write_config<T: BorrowMut<MapData>>(
    config: &mut Array<T, Config>,
    settings: &Settings,
) -> Result<()> {
    // Whether somebody reads the event stream is the readers' to say, not the settings'.
    let events = config.get(&0, 0).map_or(0, |current| current.events);
    let kernel = if settings.tls_uprobes {
        crate::tls::kernel_layout()?
    } else {
        Config::DEFAULT.kernel
    };
    config.set(
        0,
        Config {
            events,
            kernel,
            ..settings.config()
        },
        0,
    )?;
    Ok(())
}

/// A verifier's refusal in one sentence: its log runs to thousands of lines, so it goes to
/// a file the sentence names.
fn verified(name: &str, loaded: Result<(), ProgramError>) -> Result<()> {
    let Err(ProgramError::LoadError {
        io_error,
        verifier_log,
    }) = loaded
    else {
        return loaded.with_context(|| format!("loading program {name} failed"));
    };
    bail!(
        "{}",
        refusal(
            name,
            &io_error,
            &verifier_log.to_string(),
            &std::env::temp_dir()
        )
    )
}

/// The sentence for program `name` refused with `error`, after writing `log` into `dir`.
fn refusal(name: &str, error: &std::io::Error, log: &str, dir: &Path) -> String {
    let kernel = kernel_release();
    let path = dir.join(format!("ftp-tracker-verifier-{name}.log"));
    let refused = format!("the verifier of kernel {kernel} refused program {name} ({error})");
    match std::fs::write(&path, log) {
        Ok(()) => format!("{refused}; its log is in {}", path.display()),
        Err(e) => format!(
            "{refused}; its log could not be written to {} ({e})",
            path.display()
        ),
    }
}

/// What `uname -r` prints.
fn kernel_release() -> String {
    // SAFETY: utsname is plain data, filled in by uname.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid utsname to write to.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "(unknown release)".to_owned();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use aya::Pod;
    use aya_obj::generated::bpf_map_type;
    use ftp_ebpf_common::contract::{
        ArrayKind, ArrayTable, CLIENTS, CONTROLS, EVENT_BUCKETS, EVENTS, EXPECTATIONS, FLOWS,
        HashTable, LOCAL_ADDRS, LpmTable, MAP_NAMES, PROGRAM_NAMES, STATS, WOULD_DROP,
    };

    use super::*;

    fn check_hash<K: Pod, V: Pod>(object: &aya_obj::Object, table: HashTable<K, V>) {
        let map = &object.maps[table.name];
        let kind = if table.lru {
            bpf_map_type::BPF_MAP_TYPE_LRU_HASH
        } else {
            bpf_map_type::BPF_MAP_TYPE_HASH
        };
        assert_eq!(map.map_type(), kind as u32, "{table}'s type");
        assert_eq!(map.key_size() as usize, size_of::<K>(), "{table}'s key");
        assert_eq!(map.value_size() as usize, size_of::<V>(), "{table}'s value");
    }

    fn check_array<V: Pod, K: ArrayKind>(object: &aya_obj::Object, table: ArrayTable<V, K>) {
        let map = &object.maps[table.name];
        let kind = if table.per_cpu() {
            bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY
        } else {
            bpf_map_type::BPF_MAP_TYPE_ARRAY
        };
        assert_eq!(map.map_type(), kind as u32, "{table}'s type");
        assert_eq!(map.key_size() as usize, size_of::<u32>(), "{table}'s key");
        assert_eq!(map.value_size() as usize, size_of::<V>(), "{table}'s value");
        assert_eq!(map.max_entries(), table.entries, "{table}'s entries");
    }

    fn check_lpm<K: Pod, V: Pod>(object: &aya_obj::Object, table: LpmTable<K, V>) {
        let map = &object.maps[table.name];
        let kind = bpf_map_type::BPF_MAP_TYPE_LPM_TRIE;
        assert_eq!(map.map_type(), kind as u32, "{table}'s type");
        let key = size_of::<u32>() + size_of::<K>();
        assert_eq!(map.key_size() as usize, key, "{table}'s key");
        assert_eq!(map.value_size() as usize, size_of::<V>(), "{table}'s value");
        assert_eq!(map.max_entries(), table.entries, "{table}'s entries");
    }

    /// The kernel side names its maps and globals by its statics' identifiers and its
    /// programs by its functions': each must be what the contract says, typed as it says.
    #[test]
    fn the_object_is_what_the_contract_says() {
        let object = aya_obj::Object::parse(OBJECT).unwrap();
        for name in MAP_NAMES {
            assert!(
                object.maps.contains_key(name),
                "the object has no map {name}"
            );
        }
        let unknown: Vec<&String> = object
            .maps
            .keys()
            .filter(|name| !name.starts_with('.'))
            .filter(|name| !MAP_NAMES.contains(&name.as_str()))
            .collect();
        assert!(unknown.is_empty(), "maps the contract lacks: {unknown:?}");
        check_hash(&object, EXPECTATIONS);
        check_hash(&object, CONTROLS);
        check_hash(&object, FLOWS);
        check_hash(&object, CLIENTS);
        check_hash(&object, LOCAL_ADDRS);
        check_hash(&object, PUBLIC_ADDRS);
        check_hash(&object, contract::NAT_INSIDE);
        check_hash(&object, NAT_CONTROLS);
        check_hash(&object, NAT_BINDINGS);
        check_hash(&object, NAT_FLOWS);
        check_hash(&object, TLS_PEERS);
        check_hash(&object, contract::TLS_CALLS);
        check_hash(&object, contract::TLS_SESSIONS);
        check_array(&object, contract::TLS_RECENT);
        check_array(&object, PORTS);
        check_array(&object, STATS);
        check_array(&object, CONFIG);
        check_array(&object, WOULD_DROP);
        check_lpm(&object, ALLOW_FROM);
        check_array(&object, EVENT_BUCKETS);
        let ring = &object.maps[EVENTS.name];
        assert_eq!(
            ring.map_type(),
            bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
            "{}'s type",
            EVENTS.name
        );
        assert_eq!(ring.max_entries(), EVENTS.bytes, "{}'s size", EVENTS.name);
        for name in PROGRAM_NAMES {
            assert!(
                object.programs.contains_key(name),
                "the object has no program {name}"
            );
        }
        assert_eq!(object.programs.len(), PROGRAM_NAMES.len());
        // The sizes the kernel declares are the defaults.
        let defaults = Settings::default();
        for (name, _, entries) in defaults.table_sizes() {
            assert_eq!(
                object.maps[name].max_entries(),
                entries,
                "{name}'s default size"
            );
        }
    }

    #[test]
    fn the_options_default_to_the_contracts_settings() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["ftp-loader"]).unwrap();
        assert_eq!(parsed.settings, Settings::default());
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(
            help.contains(&format!("(1-{MAX_EXPECTED};")),
            "--max-expected's help names another bound than MAX_EXPECTED: {help}"
        );
    }

    /// docs/usage.md's options table gives each option's default as clap has it (and so
    /// as the contract defines it): the docs cannot drift from the code.
    #[test]
    fn the_usage_page_gives_the_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let usage = include_str!("../../docs/usage.md");
        let rows: Vec<(Vec<&str>, Vec<&str>)> = usage
            .lines()
            .filter_map(|line| {
                let mut cells = line.split(" | ");
                let options = cells.next()?.trim_start_matches("| ");
                let defaults = cells.next()?;
                Some((
                    options.split(" / ").collect(),
                    defaults.split(" / ").collect(),
                ))
            })
            .collect();
        let command = <Cli as clap::CommandFactory>::command();
        let mut checked = 0;
        for arg in command.get_arguments() {
            let (Some(long), [default]) = (arg.get_long(), arg.get_default_values()) else {
                continue;
            };
            let default = default.to_string_lossy();
            if default == "false" {
                continue;
            }
            let written = rows.iter().find_map(|(options, defaults)| {
                // `--name VALUE` or `--name`, not `--name-longer`.
                let at = options.iter().position(|o| {
                    o.strip_prefix(&format!("`--{long}"))
                        .is_some_and(|rest| rest.starts_with([' ', '`']))
                })?;
                defaults.get(at)
            });
            assert_eq!(
                written.copied(),
                Some(format!("`{default}`").as_str()),
                "docs/usage.md's default for --{long}"
            );
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} options with defaults found");
    }

    #[test]
    fn data_ports_parse() {
        assert_eq!(
            parse_range(&DEFAULT_DATA_PORTS_TEXT),
            Ok(DEFAULT_DATA_PORTS)
        );
        assert!(parse_range("2000-1000").is_err());
        assert!(parse_range("0-10").is_err());
    }

    #[test]
    fn a_refusal_is_one_sentence_naming_program_kernel_and_log_file() {
        let dir = std::env::temp_dir().join(format!("ftp-loader-refusal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = "0: R1=ctx() R10=fp0\nprocessed 1000001 insns (limit 1000000)\n";
        let e2big = std::io::Error::from_raw_os_error(libc::E2BIG);
        let sentence = refusal(INGRESS_PROGRAM, &e2big, log, &dir);
        let path = dir.join(format!("ftp-tracker-verifier-{INGRESS_PROGRAM}.log"));
        assert_eq!(
            sentence,
            format!(
                "the verifier of kernel {} refused program {INGRESS_PROGRAM} ({e2big}); its log is in {}",
                kernel_release(),
                path.display()
            )
        );
        assert!(!kernel_release().is_empty() && !kernel_release().contains('('));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), log);

        let missing = dir.join("missing");
        let sentence = refusal(EGRESS_PROGRAM, &e2big, log, &missing);
        assert!(
            sentence.ends_with(&format!(
                "its log could not be written to {} (No such file or directory (os error 2))",
                missing
                    .join(format!("ftp-tracker-verifier-{EGRESS_PROGRAM}.log"))
                    .display()
            )),
            "{sentence}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
