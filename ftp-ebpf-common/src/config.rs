//! The settings the programs read while they run: one `Config` in the CONFIG array, which
//! the loader writes at start and again at reload. Kept in a map rather than in load-time
//! globals so that a reload changes them without loading the programs again, and so
//! without detaching or losing an expectation or a flow.

use bytemuck::{Pod, Zeroable};

use crate::{
    contract::{
        DEFAULT_EXPECT_TIMEOUT_SECS, DEFAULT_FLOW_TIMEOUT_SECS, DEFAULT_MAX_EXPECTED,
        DEFAULT_MAX_PER_CLIENT, DEFAULT_MIN_DATA_PORT, NS_PER_SEC,
    },
    policy::Rules,
    tls::KernelLayout,
};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// How long an announced data connection may take to open.
    pub expect_timeout_ns: u64,
    /// Silence after which a tracked data connection is forgotten.
    pub flow_idle_timeout_ns: u64,
    /// Expectations one client address (an IPv6 client's /64) may hold (`share`).
    pub max_per_client: u32,
    /// Announcements of data ports below this are refused.
    pub min_data_port: u16,
    /// Expectations one control connection may hold, 1..=MAX_EXPECTED.
    pub max_expected: u8,
    /// 1 accepts announced addresses other than the announcer's own.
    pub loose: u8,
    /// 1: track and count as in enforcement, but let every packet pass.
    pub monitor: u8,
    /// 1: somebody reads the event stream, so the programs write it.
    pub events: u8,
    /// 1: ALLOW_FROM holds networks (`--allow-from`), so a refused SYN's source is looked
    /// up there; 0 spares the lookup.
    pub allow_from: u8,
    /// 1: PUBLIC_ADDRS holds `--public-address` mappings, so an announcement of another
    /// address by this host is looked up there; 0 spares the lookup.
    pub public_addresses: u8,
    /// 1: NAT_INSIDE names interfaces (`--nat-inside`), so an announcement arriving on
    /// one is looked up there; 0 spares the lookup.
    pub nat_inside: u8,
    pub _reserved: [u8; 3],
    /// Where the running kernel keeps a thread's sockets (`--tls-uprobes`).
    pub kernel: KernelLayout,
}

impl Config {
    /// What the programs use until the loader has written CONFIG (never, once loaded: the
    /// loader writes it before it attaches anything).
    pub const DEFAULT: Config = Config {
        expect_timeout_ns: DEFAULT_EXPECT_TIMEOUT_SECS * NS_PER_SEC,
        flow_idle_timeout_ns: DEFAULT_FLOW_TIMEOUT_SECS * NS_PER_SEC,
        max_per_client: DEFAULT_MAX_PER_CLIENT,
        min_data_port: DEFAULT_MIN_DATA_PORT,
        max_expected: DEFAULT_MAX_EXPECTED,
        loose: 0,
        monitor: 0,
        events: 0,
        allow_from: 0,
        public_addresses: 0,
        nat_inside: 0,
        _reserved: [0; 3],
        kernel: KernelLayout {
            task_files: 0,
            files_fdt: 0,
            fdt_fd: 0,
            fdt_max_fds: 0,
            file_private_data: 0,
            socket_sk: 0,
            family: 0,
            daddr: 0,
            rcv_saddr: 0,
            dport: 0,
            num: 0,
            v6_daddr: 0,
            v6_rcv_saddr: 0,
            _pad: [0; 3],
        },
    };

    pub fn rules(&self) -> Rules {
        Rules {
            loose: self.loose != 0,
            min_data_port: self.min_data_port,
        }
    }
}
