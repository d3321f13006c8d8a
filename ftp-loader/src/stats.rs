//! The programs' counters, summed over CPUs.

use std::borrow::Borrow;

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray};
use ftp_ebpf_common::stats::Counter;

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

/// One flat JSON object of counter name to integer.
pub fn to_json(counters: &[(Counter, u64)]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = counters
        .iter()
        .map(|(c, v)| (c.name().to_owned(), (*v).into()))
        .collect();
    serde_json::Value::Object(object).to_string()
}

pub fn to_text(counters: &[(Counter, u64)]) -> String {
    let width = counters
        .iter()
        .map(|(c, _)| c.name().len())
        .max()
        .unwrap_or(0);
    counters
        .iter()
        .map(|(c, v)| format!("{:<width$}  {:>12}  {}\n", c.name(), v, c.help()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
