//! `cargo xtask`: the project's own commands, each in a module of its own with its options;
//! this file only dispatches.
//!
//!   setup  install what building and testing need, when missing
//!   build  the release ftp-loader with the eBPF programs embedded
//!   test   every test: unit, BPF_PROG_TEST_RUN verdicts, end to end; then fmt and clippy;
//!          with --kernel 6.1|6.12, the end-to-end essentials on that Debian kernel under qemu
//!   demo   the tracker in a two-host namespace lab, start to finish
//!   bench  what it costs, against doing nothing and against iptables + the kernel helper
//!   package  the Debian package (cargo-deb): binary, unit, configuration, man page, completions

mod bench;
mod build;
mod cargo;
mod demo;
mod kernel;
mod package;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the packages and tools that building and testing need, when missing.
    Setup(setup::Options),
    /// Build target/release/ftp-loader, one binary with the eBPF programs embedded.
    Build(build::Options),
    /// Run every test (installing what is missing first), then cargo fmt and clippy.
    Test(test::Options),
    /// Show the tracker at work in a two-host lab in network namespaces.
    Demo(demo::Options),
    /// Measure speed and memory against baselines measured in the same run; prints a table,
    /// writes target/bench/report.json and, unless --quick, docs/benchmarks.md.
    Bench(bench::Options),
    /// Build the Debian package into target/package: the release binary, the systemd unit,
    /// the default configuration, the man page, completions, README and licences.
    Package(package::Options),
}

fn main() {
    let result = match Cli::parse().command {
        Command::Setup(options) => setup::run(options),
        Command::Build(options) => build::run(options),
        Command::Test(options) => test::run(options),
        Command::Demo(options) => demo::run(options),
        Command::Bench(options) => bench::run(options),
        Command::Package(options) => package::run(options),
    };
    if let Err(error) = result {
        eprintln!("xtask: {error:#}");
        std::process::exit(1);
    }
}
