//! `cargo xtask`: the project's own commands.
//!
//!   setup  install what building and testing need, when missing
//!   build  the release ftp-loader with the eBPF programs embedded
//!   test   every test: unit, BPF_PROG_TEST_RUN verdicts, end to end; then fmt and clippy;
//!          with --kernel 6.1|6.12, the end-to-end essentials on that Debian kernel under qemu
//!   demo   the tracker in a two-host namespace lab, start to finish
//!   bench  what it costs, against doing nothing and against iptables + the kernel helper

mod demo;
mod kernel;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the packages and tools that building and testing need, when missing.
    Setup,
    /// Build target/release/ftp-loader, one binary with the eBPF programs embedded.
    Build,
    /// Run every test (installing what is missing first), then cargo fmt and clippy.
    Test {
        /// Instead, boot this Debian kernel under qemu and run the end-to-end essentials
        /// there: the programs verify, passive and active transfers, an unannounced
        /// connection dropped, a clean detach.
        #[arg(long, value_name = "VERSION")]
        kernel: Option<kernel::Kernel>,
    },
    /// Show the tracker at work in a two-host lab in network namespaces.
    Demo,
    /// Measure speed and memory against baselines measured in the same run; prints a table
    /// and writes target/bench/report.json.
    Bench {
        /// Every measurement once and small (under a minute): checks the harness.
        #[arg(long)]
        quick: bool,
        /// Sections to run (default: all).
        sections: Vec<String>,
    },
}

fn main() {
    let result = match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Build => setup::run().and_then(|()| build_release().map(drop)),
        Task::Test { kernel: None } => setup::run().and_then(|()| test()),
        Task::Test {
            kernel: Some(kernel),
        } => setup::run().and_then(|()| kernel::run(kernel)),
        Task::Demo => setup::run()
            .and_then(|()| build_release())
            .and_then(|loader| demo::run(&loader)),
        Task::Bench { quick, sections } => setup::run()
            .and_then(|()| build_release())
            .and_then(|loader| benchmark(loader, quick, &sections)),
    };
    if let Err(error) = result {
        eprintln!("xtask: {error:#}");
        std::process::exit(1);
    }
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo that runs this xtask (the default toolchain); the eBPF side is built by
/// ftp-loader's build script with Debian's toolchain.
pub fn cargo(args: &[&str]) -> Result<()> {
    stream(&mut cargo_command(args))
}

pub fn cargo_command(args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(workspace());
    command
}

/// Runs a command whose output the user should see as it comes.
pub fn stream(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(status.success(), "{command:?} failed ({status})");
    Ok(())
}

fn build_release() -> Result<PathBuf> {
    cargo(&["build", "--release", "--package", "ftp-loader"])?;
    Ok(workspace().join("target/release/ftp-loader"))
}

/// Every package but ftp-ebpf (BPF target only): the default members leave out those that
/// need root and the BPF toolchain.
const HOST_PACKAGES: &[&str] = &["--workspace", "--exclude", "ftp-ebpf"];

fn test() -> Result<()> {
    // The end-to-end tests run the loader binary next to them.
    cargo(&["build", "--package", "ftp-loader"])?;
    cargo(&[&["test", "--no-fail-fast"], HOST_PACKAGES].concat())?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(
        &[
            &["clippy", "--all-targets"],
            HOST_PACKAGES,
            &["--", "-D", "warnings"],
        ]
        .concat(),
    )?;
    // The benchmark harness must not rot: every figure must still be produced (timings
    // are not judged here).
    benchmark(build_release()?, true, &[])?;
    Ok(())
}

/// Runs the bench crate, which links the loader, so it is built only after set-up.
fn benchmark(loader: PathBuf, quick: bool, sections: &[String]) -> Result<()> {
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
    }
    args.extend(sections.iter().cloned());
    cargo(&args.iter().map(String::as_str).collect::<Vec<_>>())
}
