//! What `--monitor` reports: the guarded ports enforcement would have refused SYNs to
//! (WOULD_DROP), and whether a running instance enforces or only monitors (its pinned
//! CONFIG, which a reload rewrites).

use std::{borrow::Borrow, cmp::Reverse, path::Path};

use anyhow::Result;
use aya::maps::{Array, MapData};
use ftp_ebpf_common::{config::Config, contract::CONFIG};
use serde::Serialize;

use crate::{pins, tables::Row};

/// A guarded port, and the SYNs to it the guard refused while it monitored.
#[derive(Debug, Serialize)]
pub struct WouldDrop {
    pub port: u16,
    pub syns: u64,
    /// The option that keeps the port open to everyone.
    pub admit_with: String,
}

/// The ports with refused SYNs in WOULD_DROP, most first.
pub fn would_drop<T: Borrow<MapData>>(array: &Array<T, u64>) -> Result<Vec<WouldDrop>> {
    ranked(array.iter())
}

/// The ports with refused SYNs, given each port's count in port order, most first.
fn ranked<E: std::error::Error + Send + Sync + 'static>(
    counts: impl Iterator<Item = Result<u64, E>>,
) -> Result<Vec<WouldDrop>> {
    let mut rows = Vec::new();
    for (port, syns) in (0..=u16::MAX).zip(counts) {
        let syns = syns?;
        if syns > 0 {
            rows.push(WouldDrop {
                port,
                syns,
                admit_with: format!("--allow-port {port}"),
            });
        }
    }
    rows.sort_by_key(|row| (Reverse(row.syns), row.port));
    Ok(rows)
}

impl Row for WouldDrop {
    const WHAT: &'static str = "port";

    fn text(&self) -> String {
        format!(
            "port {:>5}: {:>10} SYN(s) enforcement would drop; to keep it open to everyone: {}",
            self.port, self.syns, self.admit_with
        )
    }
}

/// How a running instance's programs treat what the guard refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// `--monitor`: passed and counted.
    Monitor,
}

impl Mode {
    pub fn of(config: &Config) -> Self {
        if config.monitor != 0 {
            Self::Monitor
        } else {
            Self::Enforce
        }
    }

    /// The instance's pinned CONFIG says; None when this user cannot read it.
    pub fn running(pin_dir: &Path) -> Option<Self> {
        let config = CONFIG
            .from_map(pins::open(pin_dir, CONFIG.name).ok()?)
            .ok()?;
        Some(Self::of(&config.get(&0, 0).ok()?))
    }

    /// As `status --json` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Monitor => "monitor",
        }
    }

    /// What `status` and the start-up line say.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Enforce => "enforcing: refused connections are dropped",
            Self::Monitor => {
                "MONITORING ONLY: nothing is dropped; what enforcement would drop is counted (`ftp-loader would-drop` lists it by port)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_ranked_by_refused_syns_then_number() {
        let mut counts = vec![0u64; 65536];
        counts[3306] = 5;
        counts[9100] = 40;
        counts[1024] = 5;
        counts[65535] = 1;
        let rows = ranked(counts.into_iter().map(Ok::<_, std::io::Error>)).unwrap();
        let ranked: Vec<(u16, u64)> = rows.iter().map(|r| (r.port, r.syns)).collect();
        assert_eq!(ranked, [(9100, 40), (1024, 5), (3306, 5), (65535, 1)]);
        assert_eq!(
            serde_json::to_value(&rows[0]).unwrap(),
            serde_json::json!({ "port": 9100, "syns": 40, "admit_with": "--allow-port 9100" })
        );
        assert!(rows[0].text().ends_with("--allow-port 9100"));
    }
}
