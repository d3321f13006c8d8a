//! The programs' counters, summed over CPUs.

use std::{borrow::Borrow, path::Path};

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray};
use ftp_ebpf_common::{contract::STATS, stats::Counter};
use serde::Serialize;

/// The counters of STATS (`ftp_ebpf_common::contract::STATS`).
pub fn read<T: Borrow<MapData>>(array: &PerCpuArray<T, u64>) -> Result<Vec<(Counter, u64)>> {
    Counter::ALL
        .iter()
        .map(|&counter| {
            let per_cpu = array
                .get(&(counter as u32), 0)
                .with_context(|| format!("reading counter {}", counter.name()))?;
            Ok((counter, per_cpu.iter().sum()))
        })
        .collect()
}

/// The counters of the running instance that pinned its tables in `pin_dir`.
pub fn read_pinned(pin_dir: &Path) -> Result<Vec<(Counter, u64)>> {
    read(&STATS.from_map(crate::pins::open(pin_dir, STATS.name)?)?)
}

/// The counters as `stats` reports them: one flat JSON object of name to value, and a
/// line of name, value and meaning per counter.
pub struct Counters<'a>(pub &'a [(Counter, u64)]);

impl Serialize for Counters<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(c, v)| (c.name(), v)))
    }
}

impl Counters<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("names and integers serialize")
    }

    pub fn to_text(&self) -> String {
        let width = self
            .0
            .iter()
            .map(|(c, _)| c.name().len())
            .max()
            .unwrap_or(0);
        self.0
            .iter()
            .map(|(c, v)| format!("{:<width$}  {:>12}  {}\n", c.name(), v, c.help()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One flat object of every counter, and a line per counter of the same values.
    #[test]
    fn json_and_text_come_from_the_same_counters() {
        let counters: Vec<(Counter, u64)> = Counter::ALL
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u64))
            .collect();
        let counters = Counters(&counters);
        let json: serde_json::Value = serde_json::from_str(&counters.to_json()).unwrap();
        let text = counters.to_text();
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(json[counter.name()], i as u64);
            assert!(
                text.lines().any(|l| {
                    let mut words = l.split_whitespace();
                    words.next() == Some(counter.name()) && words.next() == Some(&i.to_string())
                }),
                "{text}"
            );
        }
        assert_eq!(json.as_object().unwrap().len(), Counter::ALL.len());
    }

    /// Admins read the table in docs/usage.md; it must say what the code counts.
    #[test]
    fn usage_lists_every_counter_as_the_code_names_and_explains_it() {
        let readme = include_str!("../../docs/usage.md");
        for counter in Counter::ALL {
            let row = format!("| `{}` | {} |", counter.name(), counter.help());
            assert!(readme.contains(&row), "docs/usage.md lacks the row {row}");
        }
        let rows = readme
            .lines()
            .filter(|l| l.starts_with("| `") && l.matches('|').count() == 3);
        let listed = rows.filter(|l| {
            Counter::ALL
                .iter()
                .any(|c| l.starts_with(&format!("| `{}`", c.name())))
        });
        assert_eq!(
            listed.count(),
            Counter::ALL.len(),
            "docs/usage.md lists a counter twice"
        );
    }
}
