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
