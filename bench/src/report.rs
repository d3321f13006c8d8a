//! The benchmark report: a table on the terminal and JSON under target/bench/.

use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

/// One measured figure, with the baseline it is judged against and the target it must meet.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// Samples behind the median in `value`.
    pub samples: Vec<f64>,
    /// (baseline name, baseline value in the same unit), measured in the same run.
    pub baseline: Option<(String, f64)>,
    /// The bar and whether it is met, e.g. ("<= 1.5x baseline", true).
    pub target: Option<(String, bool)>,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            samples: vec![value],
            baseline: None,
            target: None,
        }
    }

    pub fn samples(mut self, samples: &[f64]) -> Self {
        self.samples = samples.to_vec();
        self
    }

    pub fn against(mut self, baseline: impl Into<String>, value: f64) -> Self {
        self.baseline = Some((baseline.into(), value));
        self
    }

    pub fn target(mut self, text: impl Into<String>, met: bool) -> Self {
        self.target = Some((text.into(), met));
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, b)| self.value / b)
    }
}

#[derive(Clone, Debug)]
pub struct Section {
    pub title: String,
    pub figures: Vec<Figure>,
    /// What the numbers mean, what was changed because of them.
    pub notes: Vec<String>,
}

impl Section {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }
}

pub struct Report {
    pub quick: bool,
    pub seconds: f64,
    pub sections: Vec<Section>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} x {cpu}, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

impl Report {
    pub fn new(quick: bool) -> Self {
        Self {
            quick,
            seconds: 0.0,
            sections: Vec::new(),
        }
    }

    pub fn table(&self) -> String {
        let mut out = format!("machine: {}\n", machine());
        for section in &self.sections {
            out += &format!(
                "\n## {}\n\n| figure | value | baseline | ratio | target |\n| --- | --- | --- | --- | --- |\n",
                section.title
            );
            for f in &section.figures {
                let baseline = f.baseline.as_ref().map_or(String::new(), |(n, v)| {
                    format!("{n}: {} {}", fmt(*v), f.unit)
                });
                let ratio = f.ratio().map_or(String::new(), |r| format!("{r:.2}x"));
                let target = f.target.as_ref().map_or(String::new(), |(t, met)| {
                    format!("{t}: {}", if *met { "met" } else { "MISSED" })
                });
                out += &format!(
                    "| {} | {} {} | {baseline} | {ratio} | {target} |\n",
                    f.name,
                    fmt(f.value),
                    f.unit
                );
            }
            for note in &section.notes {
                out += &format!("\n{note}\n");
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "machine": machine(),
            "date": utc_now(),
            "quick": self.quick,
            "seconds": self.seconds,
            "sections": self.sections.iter().map(|s| json!({
                "title": s.title,
                "notes": s.notes,
                "figures": s.figures.iter().map(|f| json!({
                    "name": f.name,
                    "value": f.value,
                    "unit": f.unit,
                    "samples": f.samples,
                    "baseline": f.baseline.as_ref().map(|(n, v)| json!({"name": n, "value": v, "unit": f.unit})),
                    "ratio": f.ratio(),
                    "target": f.target.as_ref().map(|(t, met)| json!({"text": t, "met": met})),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&self.json())?)?;
        Ok(())
    }

    /// Figures that are not finite numbers: a measurement that did not happen.
    pub fn missing(&self) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|s| s.figures.iter().map(move |f| (s, f)))
            .filter(|(_, f)| {
                !f.value.is_finite() || f.baseline.as_ref().is_some_and(|(_, b)| !b.is_finite())
            })
            .map(|(s, f)| format!("{}: {}", s.title, f.name))
            .collect()
    }
}

/// docs/benchmarks.md, rendered from a JSON report (`Report::json`) of a run of `command`;
/// `all` names every section, to say which ones the run left out.
pub fn markdown(report: &Value, command: &str, all: &[&str], run: &[&str]) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut out = format!(
        "# Benchmarks\n\n\
         <!-- Generated by `{command}` from target/bench/report.json; do not edit by hand: \
         run it again. -->\n\n\
         Generated by `{command}` on {} ({}), in {} s. `cargo xtask bench` rewrites this \
         page after every run that is not `--quick`; the figures are from one run on one \
         machine, each variant measured several times, alternating, medians reported, and \
         ratios taken only against baselines measured in the same run.\n",
        report["date"].as_str().unwrap_or("an unknown date"),
        text(&report["machine"]),
        number(&report["seconds"]).round(),
    );
    let missing: Vec<&str> = all.iter().filter(|s| !run.contains(s)).copied().collect();
    if !missing.is_empty() {
        out += &format!(
            "\nNot in this run: {} (`cargo xtask bench` runs every section).\n",
            missing.join(", ")
        );
    }
    for section in report["sections"].as_array().into_iter().flatten() {
        out += &format!(
            "\n## {}\n\n| figure | value | baseline | ratio | target |\n| --- | --- | --- | --- | --- |\n",
            text(&section["title"])
        );
        for f in section["figures"].as_array().into_iter().flatten() {
            let unit = text(&f["unit"]);
            let baseline = match &f["baseline"] {
                Value::Null => String::new(),
                b => format!("{}: {} {unit}", text(&b["name"]), fmt(number(&b["value"]))),
            };
            let ratio = f["ratio"]
                .as_f64()
                .map_or(String::new(), |r| format!("{r:.2}x"));
            let target = match &f["target"] {
                Value::Null => String::new(),
                t => format!(
                    "{}: {}",
                    text(&t["text"]),
                    if t["met"].as_bool() == Some(true) {
                        "met"
                    } else {
                        "MISSED"
                    }
                ),
            };
            out += &format!(
                "| {} | {} {unit} | {baseline} | {ratio} | {target} |\n",
                text(&f["name"]),
                fmt(number(&f["value"])),
            );
        }
        for note in section["notes"].as_array().into_iter().flatten() {
            out += &format!("\n{}\n", text(note));
        }
    }
    out
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    utc(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()))
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM UTC`.
fn utc(seconds: u64) -> String {
    let (days, rest) = ((seconds / 86400) as i64, seconds % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// Three significant digits, no exponent for the magnitudes we report.
fn fmt(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".to_owned();
    }
    let digits = if value.abs() >= 100.0 {
        0
    } else if value.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}
