//! `cargo xtask bench`: runs the bench crate, which links the loader, so it is built only
//! after set-up. A run that is not `--quick` also writes docs/benchmarks.md from its report
//! (the sections it ran; the page names those it left out).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

use crate::{
    build,
    cargo::{cargo, workspace},
    setup,
};

#[derive(Parser)]
pub struct Options {
    /// Every measurement once and small (under a minute): checks the harness; writes no
    /// docs.
    #[arg(long)]
    quick: bool,
    /// Sections to run (default: all).
    sections: Vec<String>,
}

pub fn run(Options { quick, sections }: Options) -> Result<()> {
    setup::prepare()?;
    benchmark(build::release()?, quick, &sections)
}

/// The generated page of figures, rewritten by every run that is not `--quick`.
const DOC: &str = "docs/benchmarks.md";

pub fn benchmark(loader: PathBuf, quick: bool, sections: &[String]) -> Result<()> {
    let report = workspace().join(if quick {
        "target/bench/report-quick.json"
    } else {
        "target/bench/report.json"
    });
    let mut args: Vec<String> = ["run", "--release", "--quiet", "--package", "bench", "--"]
        .map(String::from)
        .to_vec();
    args.extend(["--loader".into(), loader.display().to_string()]);
    args.extend(["--report".into(), report.display().to_string()]);
    if quick {
        args.push("--quick".into());
    } else {
        args.extend([
            "--markdown".into(),
            workspace().join(DOC).display().to_string(),
        ]);
    }
    args.extend(sections.iter().cloned());
    cargo(&args.iter().map(String::as_str).collect::<Vec<_>>())
}
