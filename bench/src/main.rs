//! `cargo xtask bench` runs this after set-up and the release build: what ftp-tracker
//! costs, measured against doing nothing and against iptables with the kernel's FTP helper,
//! in one run on this machine. Prints the table and writes the JSON report.
//!
//! Timings are noisy on a shared 2-core machine: every variant runs several times, variants
//! alternate (A B A B ...), medians are reported, and only ratios taken in the same run are
//! judged. `--quick` runs every measurement once, small, so the harness itself is tested.

mod baseline;
mod bulk;
mod events;
mod flood;
mod ftps;
mod gateway;
pub mod guard;
mod nat;
mod packet;
mod report;
mod scale;
mod sessions;

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use anyhow::{Result, ensure};
use clap::Parser;

pub use report::{Figure, Report, Section};

#[derive(Parser)]
#[command(name = "cargo xtask bench")]
struct Cli {
    /// Every measurement once and small (under a minute): checks the harness.
    #[arg(long)]
    quick: bool,
    /// The release ftp-loader to run in the lab.
    #[arg(long)]
    loader: PathBuf,
    /// Where the JSON report goes.
    #[arg(long)]
    report: PathBuf,
    /// Also render the report as this Markdown page (docs/benchmarks.md).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Sections to run (default: all).
    sections: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = benchmark(cli) {
        eprintln!("xtask bench: {error:#}");
        std::process::exit(1);
    }
}

fn benchmark(cli: Cli) -> Result<()> {
    let bench = Bench {
        quick: cli.quick,
        loader: cli.loader,
    };
    let names: Vec<&str> = if cli.sections.is_empty() {
        sections()
    } else {
        cli.sections.iter().map(String::as_str).collect()
    };
    let report = run(&bench, &names)?;
    println!("{}", report.table());
    report.write(&cli.report)?;
    if let Some(page) = &cli.markdown {
        // Rendered from the report as written, so the page says what the JSON says.
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cli.report)?)?;
        let command = ["cargo xtask bench"]
            .into_iter()
            .chain(cli.sections.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(
            page,
            report::markdown(&written, &command, &sections(), &names),
        )?;
        println!("xtask bench: wrote {}", page.display());
    }
    println!(
        "xtask bench: {} s; report in {}",
        report.seconds.round(),
        cli.report.display()
    );
    let missing = report.missing();
    ensure!(
        missing.is_empty(),
        "figures not produced: {}",
        missing.join(", ")
    );
    Ok(())
}

/// What a run may use and how hard it may push.
pub struct Bench {
    pub quick: bool,
    /// The release ftp-loader, for the sections that run it in the lab.
    pub loader: PathBuf,
}

impl Bench {
    /// How many times each variant runs.
    pub fn rounds(&self) -> usize {
        if self.quick { 1 } else { 5 }
    }
}

/// Runs every variant `rounds` times, alternating (A B C A B C ...), so that slow drift of
/// the machine affects all of them alike. Returns each variant's samples.
pub fn alternate<T>(
    variants: &[T],
    rounds: usize,
    mut measure: impl FnMut(&T) -> Result<f64>,
) -> Result<Vec<Vec<f64>>> {
    let mut samples = vec![Vec::with_capacity(rounds); variants.len()];
    for _ in 0..rounds {
        for (variant, samples) in variants.iter().zip(&mut samples) {
            samples.push(measure(variant)?);
        }
    }
    Ok(samples)
}

pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

type Measure = fn(&Bench) -> Result<Section>;

/// Every section, in the order a full run takes them. Each lives in a module of its own.
const REGISTRY: &[(&str, Measure)] = &[
    ("per-packet", packet::run),
    ("events", events::run),
    ("nat", nat::run),
    ("gateway", gateway::run),
    ("bulk", bulk::run),
    ("flood", flood::run),
    ("sessions", sessions::run),
    ("ftps", ftps::run),
    ("scale", scale::run),
];

pub fn sections() -> Vec<&'static str> {
    REGISTRY.iter().map(|(name, _)| *name).collect()
}

pub fn run(bench: &Bench, sections: &[&str]) -> Result<Report> {
    let started = Instant::now();
    let mut report = Report::new(bench.quick);
    let all: BTreeMap<&str, Measure> = REGISTRY.iter().copied().collect();
    for name in sections {
        let measure = all
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no benchmark section `{name}`"))?;
        println!("xtask bench: {name} ...");
        report.sections.push(measure(bench)?);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
