//! The contract between the kernel programs and the loader: every map, program and global
//! by name, with the types of its entries, and every setting's default and bounds. Nothing
//! outside this module names a map, program or global by a string.
//!
//! The kernel side (`ftp-ebpf/src/maps.rs`) declares its maps and globals under these same
//! names (a static's identifier is its name in the object) and sizes them from the defaults
//! here; ftp-loader's unit tests check every name, key, value and global size here against
//! the built object, so the two cannot drift. Under the `user` feature each map has typed
//! accessors: a map whose types change here no longer compiles where it is used.

use core::marker::PhantomData;

use crate::{
    addr::AddrKey,
    allow::SourceKey,
    config::Config,
    control::ControlState,
    event::EventBucket,
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
    nat::{NatBinding, NatControl, NatFlow, NatInside, PublicAddr},
    policy::PortInfo,
    share::ClientShare,
    stats::COUNTERS,
    tls::{TlsCall, TlsPeerSeen, TlsSession},
};

pub const NS_PER_SEC: u64 = 1_000_000_000;

// Defaults and bounds of the settings (ftp-loader's options of the same names).

/// Guarded ports, inclusive (`--data-ports`).
pub const DEFAULT_DATA_PORTS: (u16, u16) = (1024, u16::MAX);
/// The FTP control port (`--control-port`).
pub const DEFAULT_CONTROL_PORT: u16 = 21;
/// The implicit-FTPS control port (`--tls-control-port`): TLS from the first byte.
pub const DEFAULT_TLS_CONTROL_PORT: u16 = 990;
/// Seconds an announced data connection may take to open (`--expect-timeout`).
pub const DEFAULT_EXPECT_TIMEOUT_SECS: u64 = 300;
/// Seconds of silence after which a tracked data connection is forgotten (`--flow-timeout`).
pub const DEFAULT_FLOW_TIMEOUT_SECS: u64 = 300;
/// Capacity of EXPECTATIONS (`--max-expectations`), and so of CLIENTS.
pub const DEFAULT_MAX_EXPECTATIONS: u32 = 65536;
/// Capacity of FLOWS (`--max-flows`).
pub const DEFAULT_MAX_FLOWS: u32 = 262144;
/// Capacity of CONTROLS (`--max-controls`).
pub const DEFAULT_MAX_CONTROLS: u32 = 65536;
/// Expectations one control connection may hold (`--max-expected`), 1..=MAX_EXPECTED.
pub const DEFAULT_MAX_EXPECTED: u8 = 1;
/// The most expectations one control connection may hold: the slots of a `ControlState`.
pub const MAX_EXPECTED: u8 = crate::control::MAX_EXPECTED as u8;
/// Expectations one client address may hold by default (`--max-expectations-per-client`):
/// a NAT gateway's many users each hold one for the milliseconds between PASV and the
/// connection, and 65536 entries still leave room for hundreds of addresses at their cap.
pub const DEFAULT_MAX_PER_CLIENT: u32 = 256;
/// Lowest data port an announcement may name (`--min-data-port`).
pub const DEFAULT_MIN_DATA_PORT: u16 = 1024;
/// The longest expectation timeout the programs' coarse clock can judge.
pub const MAX_EXPECT_TIMEOUT_SECS: u64 = crate::policy::MAX_EXPECT_TIMEOUT_NS / NS_PER_SEC;
/// Entries of LOCAL_ADDRS: this host's own addresses.
pub const LOCAL_ADDRS_ENTRIES: u32 = 4096;
/// Entries of PORTS: one per TCP port.
pub const PORTS_ENTRIES: u32 = u16::MAX as u32 + 1;
/// Entries of PUBLIC_ADDRS: the most `--public-address` mappings.
pub const PUBLIC_ADDRS_ENTRIES: u32 = 256;
/// Entries of NAT_INSIDE: the most `--nat-inside` interfaces.
pub const NAT_INSIDE_ENTRIES: u32 = 64;
/// Entries of ALLOW_FROM: the most `--allow-from` networks.
pub const ALLOW_FROM_ENTRIES: u32 = 1024;
/// Entries of the per-CPU scratch buffers: one per direction, and one for each program of
/// the TLS probes that scans (`TLS_WRITE_SCRATCH`, `TLS_READ_SCRATCH`).
pub const SCRATCH_ENTRIES: u32 = 4;
/// The scratch entry of `TLS_SEND_PROGRAM`: an fentry program, which its CPU never runs
/// twice at once, but which may be preempted by a task whose read probe then runs; a packet
/// program may interrupt either.
pub const TLS_WRITE_SCRATCH: u32 = 2;
/// The scratch entry of the read probes' returns, which run with preemption off.
pub const TLS_READ_SCRATCH: u32 = 3;
/// Entries of TLS_CALLS: TLS library calls in progress, one per thread at most.
pub const TLS_CALLS_ENTRIES: u32 = 16384;
/// Bytes of the EVENTS ring buffer (a power-of-two number of pages): 2730 events of 88
/// bytes behind the ring's 8-byte headers, seconds of a busy server's announcements should
/// the reader stall.
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
/// How often a reader of the events looks for new ones: the programs wake it only when
/// the ring is half full (a wakeup costs an interrupt per event), so this bounds how late
/// an event is shown.
pub const EVENTS_POLL_MS: u64 = 100;
/// Drop and refusal events (`event::EventKind::limited`) one CPU writes at once before
/// the rate limit applies...
pub const EVENT_BURST: u32 = 100;
/// ...and a second after that (one token every `EVENT_TOKEN_NS`); the rest are counted
/// (`events_suppressed`).
pub const EVENT_RATE_PER_SEC: u64 = 100;
pub const EVENT_TOKEN_NS: u64 = NS_PER_SEC / EVENT_RATE_PER_SEC;

/// A hash map (LRU or plain) of `K` to `V`.
pub struct HashTable<K, V> {
    pub name: &'static str,
    /// An LRU map: the kernel evicts the least recently used entry when it is full.
    pub lru: bool,
    types: PhantomData<fn() -> (K, V)>,
}

/// An array of `V`, one per index (u32): shared by all CPUs (`Shared`) or one per CPU
/// (`PerCpu`).
pub struct ArrayTable<V, K: ArrayKind> {
    pub name: &'static str,
    pub entries: u32,
    types: PhantomData<fn() -> (V, K)>,
}

/// Whether an `ArrayTable` holds one value per CPU.
pub trait ArrayKind {
    const PER_CPU: bool;
}

/// One value per index, shared by all CPUs.
pub struct Shared;

/// One value per index and CPU.
pub struct PerCpu;

impl ArrayKind for Shared {
    const PER_CPU: bool = false;
}

impl ArrayKind for PerCpu {
    const PER_CPU: bool = true;
}

/// A longest-prefix-match trie of `K` (the key's data after its prefix length) to `V`.
pub struct LpmTable<K, V> {
    pub name: &'static str,
    pub entries: u32,
    types: PhantomData<fn() -> (K, V)>,
}

/// A ring buffer of `bytes` bytes (BPF_MAP_TYPE_RINGBUF).
pub struct RingBuffer {
    pub name: &'static str,
    pub bytes: u32,
}

impl<K, V> HashTable<K, V> {
    const fn lru(name: &'static str) -> Self {
        Self {
            name,
            lru: true,
            types: PhantomData,
        }
    }

    const fn plain(name: &'static str) -> Self {
        Self {
            name,
            lru: false,
            types: PhantomData,
        }
    }
}

impl<V, K: ArrayKind> ArrayTable<V, K> {
    const fn new(name: &'static str, entries: u32) -> Self {
        Self {
            name,
            entries,
            types: PhantomData,
        }
    }

    pub const fn per_cpu(&self) -> bool {
        K::PER_CPU
    }
}

impl<K, V> LpmTable<K, V> {
    const fn new(name: &'static str, entries: u32) -> Self {
        Self {
            name,
            entries,
            types: PhantomData,
        }
    }
}

impl<K, V> core::fmt::Display for LpmTable<K, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

impl<K, V> core::fmt::Display for HashTable<K, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

impl<V, K: ArrayKind> core::fmt::Display for ArrayTable<V, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

// The maps.

/// Announced data connections, until they open or expire.
pub const EXPECTATIONS: HashTable<ExpectKey, ExpectValue> = HashTable::lru("EXPECTATIONS");
/// Control connections, keyed client -> server.
pub const CONTROLS: HashTable<FlowKey, ControlState> = HashTable::lru("CONTROLS");
/// Admitted data connections, keyed by the initiator's 5-tuple.
pub const FLOWS: HashTable<FlowKey, FlowValue> = HashTable::lru("FLOWS");
/// Each client address's (an IPv6 client's /64's) share of EXPECTATIONS.
pub const CLIENTS: HashTable<AddrKey, ClientShare> = HashTable::lru("CLIENTS");
/// This host's own addresses, kept current by the loader.
pub const LOCAL_ADDRS: HashTable<AddrKey, u8> = HashTable::plain("LOCAL_ADDRS");
/// One `PortInfo` per TCP port.
pub const PORTS: ArrayTable<PortInfo, Shared> = ArrayTable::new("PORTS", PORTS_ENTRIES);
/// The counters (`stats::Counter`), per CPU.
pub const STATS: ArrayTable<u64, PerCpu> = ArrayTable::new("STATS", COUNTERS);
/// The settings the programs read while they run (`config::Config`), in entry 0.
pub const CONFIG: ArrayTable<Config, Shared> = ArrayTable::new("CONFIG", 1);
/// SYNs to each guarded port that the guard refused while it only monitored (`--monitor`),
/// indexed by port. Shared, not per CPU (that would be 512 KiB per CPU), with atomic adds;
/// u64, not a spare u32 of `PortInfo`, which a flood would wrap within minutes.
pub const WOULD_DROP: ArrayTable<u64, Shared> = ArrayTable::new("WOULD_DROP", PORTS_ENTRIES);
/// The `--allow-from` networks (`allow::Cidr::key`), value unused (1).
pub const ALLOW_FROM: LpmTable<SourceKey, u8> = LpmTable::new("ALLOW_FROM", ALLOW_FROM_ENTRIES);
/// The `--public-address` mappings (`nat::PublicMapping::entry`), by PUBLIC.
pub const PUBLIC_ADDRS: HashTable<AddrKey, PublicAddr> = HashTable::plain("PUBLIC_ADDRS");
/// The `--nat-inside` interfaces (`nat::NatInside`), by interface index.
pub const NAT_INSIDE: HashTable<u32, NatInside> = HashTable::plain("NAT_INSIDE");
/// What a `--nat-inside` gateway rewrote in each control connection (`nat::NatControl`),
/// keyed client -> server as the inside interface sees it. As large as CONTROLS when an
/// interface is `--nat-inside`, one entry otherwise: it costs memory only where used.
pub const NAT_CONTROLS: HashTable<FlowKey, NatControl> = HashTable::lru("NAT_CONTROLS");
/// The data connections a rewritten announcement expects, as the outside sees them
/// (`nat::NatBinding`); sized like EXPECTATIONS on a gateway, one entry otherwise.
pub const NAT_BINDINGS: HashTable<ExpectKey, NatBinding> = HashTable::lru("NAT_BINDINGS");
/// The translated data connections, two entries each (`nat::NatFlow`); twice FLOWS' size
/// on a gateway, one entry otherwise.
pub const NAT_FLOWS: HashTable<FlowKey, NatFlow> = HashTable::lru("NAT_FLOWS");
/// The ends of TLS control connections, each with when one was last seen
/// (`tls::TlsPeerSeen`), as large as CONTROLS.
pub const TLS_PEERS: HashTable<AddrKey, TlsPeerSeen> = HashTable::lru("TLS_PEERS");
/// The socket each TLS session of a process was last seen to use (local end first), for
/// the calls that make no system call (a read served from what the library buffered, as
/// vsftpd's `SSL_peek` then `SSL_read` are).
pub const TLS_SESSIONS: HashTable<TlsSession, FlowKey> = HashTable::lru("TLS_SESSIONS");
/// When any TLS control connection's segment was last seen (ns), in entry 0.
pub const TLS_RECENT: ArrayTable<u64, Shared> = ArrayTable::new("TLS_RECENT", 1);
/// TLS library calls in progress (`tls::TlsCall`), by thread (`bpf_get_current_pid_tgid`).
pub const TLS_CALLS: HashTable<u64, TlsCall> = HashTable::lru("TLS_CALLS");
/// The events (`event::Event`), for `ftp-loader events` and `run --log-events`.
pub const EVENTS: RingBuffer = RingBuffer {
    name: "EVENTS",
    bytes: EVENTS_RING_BYTES,
};
/// Each CPU's token bucket of the limited events.
pub const EVENT_BUCKETS: ArrayTable<EventBucket, PerCpu> = ArrayTable::new("EVENT_BUCKETS", 1);
/// Per-CPU scratch space of the kernel programs (their types are the kernel's own).
pub const OPTIONS: &str = "OPTIONS";
pub const SCAN: &str = "SCAN";
pub const NAT_SCRATCH: &str = "NAT_SCRATCH";

/// Every map of the object.
pub const MAP_NAMES: [&str; 24] = [
    EXPECTATIONS.name,
    CONTROLS.name,
    FLOWS.name,
    CLIENTS.name,
    LOCAL_ADDRS.name,
    PORTS.name,
    STATS.name,
    CONFIG.name,
    WOULD_DROP.name,
    ALLOW_FROM.name,
    PUBLIC_ADDRS.name,
    NAT_INSIDE.name,
    NAT_CONTROLS.name,
    NAT_BINDINGS.name,
    NAT_FLOWS.name,
    TLS_PEERS.name,
    TLS_CALLS.name,
    TLS_RECENT.name,
    TLS_SESSIONS.name,
    EVENTS.name,
    EVENT_BUCKETS.name,
    OPTIONS,
    SCAN,
    NAT_SCRATCH,
];

// The programs.

/// The ingress guard as an XDP program.
pub const INGRESS_PROGRAM: &str = "ftp_ingress";
/// The same guard as a tc program, for interfaces where XDP costs more.
pub const INGRESS_TC_PROGRAM: &str = "ftp_ingress_tc";
/// The egress scanner, a tc program.
pub const EGRESS_PROGRAM: &str = "ftp_egress";

/// The tc ingress guard for interfaces whose frames start at the IP header (tun,
/// WireGuard, PPP, raw-IP modems); loaded only when one is guarded.
pub const INGRESS_TC_L3_PROGRAM: &str = "ftp_ingress_tc_l3";
/// The egress scanner for the same interfaces.
pub const EGRESS_L3_PROGRAM: &str = "ftp_egress_l3";

/// The tc ingress guard of a `--nat-inside` interface, which also rewrites what the hosts
/// behind it announce; loaded only when one is configured.
pub const INGRESS_NAT_PROGRAM: &str = "ftp_ingress_nat";
/// The egress scanner of a `--nat-inside` interface, which also adjusts acknowledgements.
pub const EGRESS_NAT_PROGRAM: &str = "ftp_egress_nat";

/// `--tls-uprobes`: at the entry of a TLS library's encrypting call (OpenSSL's `SSL_write`
/// and `SSL_write_ex`, GnuTLS's `gnutls_record_send`: the buffer and length are the second
/// and third arguments of each).
pub const TLS_WRITE_PROGRAM: &str = "tls_write";
/// At the entry of a decrypting call (`SSL_read`, `SSL_read_ex`, `gnutls_record_recv`).
pub const TLS_READ_PROGRAM: &str = "tls_read";
/// At the return of `SSL_read` and `gnutls_record_recv`, which return the length read.
pub const TLS_READ_DONE_PROGRAM: &str = "tls_read_done";
/// At the return of `SSL_read_ex`, which returns 1 and writes the length to its fourth
/// argument.
pub const TLS_READ_EX_DONE_PROGRAM: &str = "tls_read_ex_done";
/// At the system calls a TLS library's write makes in the same thread (`TLS_SEND_SYSCALLS`):
/// their file descriptor is the socket, and so the control connection, of the call.
pub const TLS_SEND_PROGRAM: &str = "tls_send";
/// The same for a read (`TLS_RECV_SYSCALLS`).
pub const TLS_RECV_PROGRAM: &str = "tls_recv";
/// The tracepoints (category, name) of the system calls a TLS library writes with:
/// OpenSSL's socket BIO `write`s, curl `send`s (`sendto`), GnuTLS gathers a record's parts
/// with `sendmsg`. Tracepoints rather than kernel function probes: kprobes and fentry
/// programs are missing from some kernels (built without kprobes, or locked down) that
/// have these.
pub const TLS_SEND_SYSCALLS: [(&str, &str); 4] = [
    ("syscalls", "sys_enter_write"),
    ("syscalls", "sys_enter_sendto"),
    ("syscalls", "sys_enter_sendmsg"),
    ("syscalls", "sys_enter_writev"),
];
/// ... and reads with.
pub const TLS_RECV_SYSCALLS: [(&str, &str); 4] = [
    ("syscalls", "sys_enter_read"),
    ("syscalls", "sys_enter_recvfrom"),
    ("syscalls", "sys_enter_recvmsg"),
    ("syscalls", "sys_enter_readv"),
];
/// Where a syscall tracepoint's record holds the first argument (the file descriptor).
pub const SYSCALL_FIRST_ARG_OFFSET: usize = 16;

/// A TLS library `--tls-uprobes` knows, with the functions each program probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsLibrary {
    OpenSsl,
    GnuTls,
}

impl TlsLibrary {
    /// (program, function, at its return) for each probe of the library.
    pub const fn probes(self) -> &'static [(&'static str, &'static str, bool)] {
        match self {
            Self::OpenSsl => &[
                (TLS_WRITE_PROGRAM, "SSL_write", false),
                (TLS_WRITE_PROGRAM, "SSL_write_ex", false),
                (TLS_READ_PROGRAM, "SSL_read", false),
                (TLS_READ_DONE_PROGRAM, "SSL_read", true),
                (TLS_READ_PROGRAM, "SSL_read_ex", false),
                (TLS_READ_EX_DONE_PROGRAM, "SSL_read_ex", true),
            ],
            Self::GnuTls => &[
                (TLS_WRITE_PROGRAM, "gnutls_record_send", false),
                (TLS_READ_PROGRAM, "gnutls_record_recv", false),
                (TLS_READ_DONE_PROGRAM, "gnutls_record_recv", true),
            ],
        }
    }

    /// The library a shared object's file name (`libssl.so.3`) is, if one of these.
    pub fn of_file_name(name: &str) -> Option<Self> {
        if name.starts_with("libssl.so") {
            Some(Self::OpenSsl)
        } else if name.starts_with("libgnutls.so") {
            Some(Self::GnuTls)
        } else {
            None
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::OpenSsl => "OpenSSL",
            Self::GnuTls => "GnuTLS",
        }
    }
}

/// What precedes the IP header on an interface, and so which tc programs guard it (the
/// programs are shared by interfaces, so the offset of the IP header is each program's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// An Ethernet header, possibly with VLAN tags (802.1Q, QinQ).
    Ethernet,
    /// Nothing: frames start at the IP header (tun, WireGuard, PPP, raw-IP modems).
    Ip,
}

impl LinkLayer {
    /// The tc ingress guard for this link.
    pub const fn ingress_tc_program(self) -> &'static str {
        match self {
            Self::Ethernet => INGRESS_TC_PROGRAM,
            Self::Ip => INGRESS_TC_L3_PROGRAM,
        }
    }

    /// The egress scanner for this link.
    pub const fn egress_program(self) -> &'static str {
        match self {
            Self::Ethernet => EGRESS_PROGRAM,
            Self::Ip => EGRESS_L3_PROGRAM,
        }
    }
}

pub const PROGRAM_NAMES: [&str; 13] = [
    INGRESS_PROGRAM,
    INGRESS_TC_PROGRAM,
    EGRESS_PROGRAM,
    INGRESS_TC_L3_PROGRAM,
    EGRESS_L3_PROGRAM,
    INGRESS_NAT_PROGRAM,
    EGRESS_NAT_PROGRAM,
    TLS_WRITE_PROGRAM,
    TLS_READ_PROGRAM,
    TLS_READ_DONE_PROGRAM,
    TLS_READ_EX_DONE_PROGRAM,
    TLS_SEND_PROGRAM,
    TLS_RECV_PROGRAM,
];

#[cfg(feature = "user")]
pub use user::*;

#[cfg(feature = "user")]
mod user {
    use aya::{
        Ebpf, Pod,
        maps::{
            Array, HashMap, Map, MapData, MapError, MapType, PerCpuArray, RingBuf,
            lpm_trie::{Key, LpmTrie},
        },
        programs::{SchedClassifier, Xdp},
    };

    use super::*;

    /// A map or program of the contract that the object lacks or has of another type.
    #[derive(Debug)]
    pub enum ContractError {
        NoMap(&'static str),
        NoProgram(&'static str),
        Map(&'static str, MapError),
        Program(&'static str, aya::programs::ProgramError),
    }

    impl core::fmt::Display for ContractError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                Self::NoMap(name) => write!(f, "the object has no map {name}"),
                Self::NoProgram(name) => write!(f, "the object has no program {name}"),
                Self::Map(name, error) => write!(f, "map {name}: {error}"),
                Self::Program(name, error) => write!(f, "program {name}: {error}"),
            }
        }
    }

    impl core::error::Error for ContractError {
        fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
            match self {
                Self::Map(_, error) => Some(error),
                Self::Program(_, error) => Some(error),
                _ => None,
            }
        }
    }

    pub type Result<T> = core::result::Result<T, ContractError>;

    fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Map> {
        ebpf.map(name).ok_or(ContractError::NoMap(name))
    }

    fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map> {
        ebpf.map_mut(name).ok_or(ContractError::NoMap(name))
    }

    impl<K: Pod, V: Pod> HashTable<K, V> {
        pub fn map_type(&self) -> MapType {
            if self.lru {
                MapType::LruHash
            } else {
                MapType::Hash
            }
        }

        /// The map of a loaded object, to read.
        pub fn of<'a>(&self, ebpf: &'a Ebpf) -> Result<HashMap<&'a MapData, K, V>> {
            HashMap::try_from(map(ebpf, self.name)?).map_err(|e| ContractError::Map(self.name, e))
        }

        /// The map of a loaded object, to write.
        pub fn of_mut<'a>(&self, ebpf: &'a mut Ebpf) -> Result<HashMap<&'a mut MapData, K, V>> {
            HashMap::try_from(map_mut(ebpf, self.name)?)
                .map_err(|e| ContractError::Map(self.name, e))
        }

        /// The map as a pin (`Map::from_map_data`) holds it.
        pub fn from_map(&self, map: Map) -> Result<HashMap<MapData, K, V>> {
            HashMap::try_from(map).map_err(|e| ContractError::Map(self.name, e))
        }

        /// As `from_map`, for an untyped map borrowed from a loaded object.
        pub fn from_map_mut<'a>(&self, map: &'a mut Map) -> Result<HashMap<&'a mut MapData, K, V>> {
            HashMap::try_from(map).map_err(|e| ContractError::Map(self.name, e))
        }
    }

    impl<V: Pod, K: ArrayKind> ArrayTable<V, K> {
        pub fn map_type(&self) -> MapType {
            if K::PER_CPU {
                MapType::PerCpuArray
            } else {
                MapType::Array
            }
        }
    }

    impl<V: Pod> ArrayTable<V, Shared> {
        /// The array of a loaded object, to write.
        pub fn of_mut<'a>(&self, ebpf: &'a mut Ebpf) -> Result<Array<&'a mut MapData, V>> {
            Array::try_from(map_mut(ebpf, self.name)?).map_err(|e| ContractError::Map(self.name, e))
        }

        /// The array as a pin (`Map::from_map_data`) holds it.
        pub fn from_map(&self, map: Map) -> Result<Array<MapData, V>> {
            Array::try_from(map).map_err(|e| ContractError::Map(self.name, e))
        }
    }

    impl<K: Pod, V: Pod> LpmTable<K, V> {
        pub fn map_type(&self) -> MapType {
            MapType::LpmTrie
        }

        /// The trie of a loaded object, to write.
        pub fn of_mut<'a>(&self, ebpf: &'a mut Ebpf) -> Result<LpmTrie<&'a mut MapData, K, V>> {
            LpmTrie::try_from(map_mut(ebpf, self.name)?)
                .map_err(|e| ContractError::Map(self.name, e))
        }

        /// The trie as a pin (`Map::from_map_data`) holds it.
        pub fn from_map(&self, map: Map) -> Result<LpmTrie<MapData, K, V>> {
            LpmTrie::try_from(map).map_err(|e| ContractError::Map(self.name, e))
        }

        /// A key of the trie: `data`'s first `prefix_len` bits.
        pub fn key(&self, prefix_len: u32, data: K) -> Key<K> {
            Key::new(prefix_len, data)
        }
    }

    impl<V: Pod> ArrayTable<V, PerCpu> {
        /// The array of a loaded object, to read.
        pub fn of<'a>(&self, ebpf: &'a Ebpf) -> Result<PerCpuArray<&'a MapData, V>> {
            PerCpuArray::try_from(map(ebpf, self.name)?)
                .map_err(|e| ContractError::Map(self.name, e))
        }

        /// The array of a loaded object, to write.
        pub fn of_mut<'a>(&self, ebpf: &'a mut Ebpf) -> Result<PerCpuArray<&'a mut MapData, V>> {
            PerCpuArray::try_from(map_mut(ebpf, self.name)?)
                .map_err(|e| ContractError::Map(self.name, e))
        }

        /// The array as a pin (`Map::from_map_data`) holds it.
        pub fn from_map(&self, map: Map) -> Result<PerCpuArray<MapData, V>> {
            PerCpuArray::try_from(map).map_err(|e| ContractError::Map(self.name, e))
        }
    }

    impl RingBuffer {
        pub fn map_type(&self) -> MapType {
            MapType::RingBuf
        }

        /// The ring as a pin (`Map::from_map_data`) holds it.
        pub fn from_map(&self, map: Map) -> Result<RingBuf<MapData>> {
            RingBuf::try_from(map).map_err(|e| ContractError::Map(self.name, e))
        }
    }

    fn program<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::programs::Program> {
        ebpf.program(name).ok_or(ContractError::NoProgram(name))
    }

    fn program_mut<'a>(
        ebpf: &'a mut Ebpf,
        name: &'static str,
    ) -> Result<&'a mut aya::programs::Program> {
        ebpf.program_mut(name).ok_or(ContractError::NoProgram(name))
    }

    /// The ingress guard, XDP (`INGRESS_PROGRAM`).
    pub fn ingress(ebpf: &Ebpf) -> Result<&Xdp> {
        program(ebpf, INGRESS_PROGRAM)?
            .try_into()
            .map_err(|e| ContractError::Program(INGRESS_PROGRAM, e))
    }

    /// As `ingress`, to load or attach.
    pub fn ingress_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
        program_mut(ebpf, INGRESS_PROGRAM)?
            .try_into()
            .map_err(|e| ContractError::Program(INGRESS_PROGRAM, e))
    }

    /// A tc program: the ingress guard (`INGRESS_TC_PROGRAM`, `INGRESS_TC_L3_PROGRAM`) or
    /// the egress scanner (`EGRESS_PROGRAM`, `EGRESS_L3_PROGRAM`).
    pub fn classifier<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a SchedClassifier> {
        debug_assert!(name != INGRESS_PROGRAM);
        program(ebpf, name)?
            .try_into()
            .map_err(|e| ContractError::Program(name, e))
    }

    /// As `classifier`, to load or attach.
    pub fn classifier_mut<'a>(
        ebpf: &'a mut Ebpf,
        name: &'static str,
    ) -> Result<&'a mut SchedClassifier> {
        debug_assert!(name != INGRESS_PROGRAM);
        program_mut(ebpf, name)?
            .try_into()
            .map_err(|e| ContractError::Program(name, e))
    }
}
