//! ftp-loader: loads ftp-tracker's kernel programs, attaches them to interfaces and
//! reports what they track.

pub mod addrs;
pub mod adopt;
pub mod attach;
pub mod checks;
pub mod config;
pub mod ebpf;
pub mod events;
pub mod generate;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod pins;
pub mod record;
pub mod reload;
pub mod stats;
pub mod status;
pub mod tables;
pub mod tls;
pub mod watch;

/// Nanoseconds on the clock `bpf_ktime_get_ns` reads, so userspace can judge the
/// timestamps the programs store.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
