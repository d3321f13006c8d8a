//! Telling systemd how the loader is doing, for a `Type=notify` unit
//! (`dist/ftp-tracker.service`): READY=1 once the guard is attached (so that units ordered
//! after it start behind a working guard), RELOADING=1 ... READY=1 around a SIGHUP,
//! STOPPING=1 on the way out, and STATUS= with a one-line summary of the counters for
//! `systemctl status`. Outside systemd (no NOTIFY_SOCKET) every call does nothing.

use std::{path::Path, time::Duration};

use ftp_ebpf_common::stats::Counter;
use log::warn;
use sd_notify::NotifyState;

use crate::{monitor::Mode, stats};

/// How often STATUS= is refreshed: `systemctl status` shows figures at most this old, and
/// the loader wakes no more often than this for it.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a service manager listens (systemd sets NOTIFY_SOCKET for `Type=notify`).
fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState]) {
    if !enabled() {
        return;
    }
    // A lost notification is systemd's to notice (a start that times out), not a reason
    // to stop guarding; the log says why.
    if let Err(error) = sd_notify::notify(states) {
        warn!("telling systemd {states:?} failed: {error}");
    }
}

/// The guard is attached and the loader serves: with the counters' summary.
pub fn ready(pin_dir: &Path) {
    if enabled() {
        let status = status_line(pin_dir);
        send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }
}

/// A reload begins. MONOTONIC_USEC goes with it as `Type=notify-reload` (systemd 253 on)
/// requires; older systemd ignores it.
pub fn reloading() {
    if enabled() {
        let mut states = vec![NotifyState::Reloading];
        states.extend(NotifyState::monotonic_usec_now().ok());
        send(&states);
    }
}

/// The loader is on its way out (detaching, or leaving the guard for the next one).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Refreshes STATUS= every `STATUS_INTERVAL` while the loader runs; spawned on its runtime.
pub async fn report_status(pin_dir: std::path::PathBuf) {
    if !enabled() {
        return;
    }
    let mut ticks = tokio::time::interval(STATUS_INTERVAL);
    // The first tick is immediate, and READY=1 carried that status already.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let status = status_line(&pin_dir);
        send(&[NotifyState::Status(&status)]);
    }
}

/// The counters' summary, read from the instance's pinned STATS, as `ftp-loader stats`
/// reads them; or why there is none.
fn status_line(pin_dir: &Path) -> String {
    match stats::read_pinned(pin_dir) {
        Ok(counters) => summary(&counters, Mode::running(pin_dir)),
        Err(error) => format!("guarding; counters unreadable: {error:#}"),
    }
}

pub fn summary(counters: &[(Counter, u64)], mode: Option<Mode>) -> String {
    let value = |wanted: Counter| {
        counters
            .iter()
            .find(|(c, _)| *c == wanted)
            .map_or(0, |(_, v)| *v)
    };
    let forged = value(Counter::SpoofedSourceDropped)
        + value(Counter::ControlWrongPath)
        + value(Counter::ControlOutOfWindow);
    // Monitoring, nothing is dropped: the same counts are what enforcement would drop.
    let (doing, dropped) = match mode {
        Some(Mode::Monitor) => ("monitoring only", "would be dropped"),
        _ => ("guarding", "dropped"),
    };
    format!(
        "{doing}: {} data connections announced, {} admitted, {} unannounced SYNs {dropped}, {} forged or stale control segments",
        value(Counter::ExpectationsCreated),
        value(Counter::FlowsTracked),
        value(Counter::UnsolicitedDropped),
        forged
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_the_counters_it_sums() {
        let counters: Vec<(Counter, u64)> = Counter::ALL
            .iter()
            .map(|&c| {
                let value = match c {
                    Counter::ExpectationsCreated => 7,
                    Counter::FlowsTracked => 5,
                    Counter::UnsolicitedDropped => 3,
                    Counter::SpoofedSourceDropped => 1,
                    Counter::ControlWrongPath => 2,
                    Counter::ControlOutOfWindow => 4,
                    _ => 1000,
                };
                (c, value)
            })
            .collect();
        assert_eq!(
            summary(&counters, Some(Mode::Enforce)),
            "guarding: 7 data connections announced, 5 admitted, 3 unannounced SYNs dropped, 7 forged or stale control segments"
        );
        assert_eq!(
            summary(&counters, Some(Mode::Monitor)),
            "monitoring only: 7 data connections announced, 5 admitted, 3 unannounced SYNs would be dropped, 7 forged or stale control segments"
        );
    }
}
