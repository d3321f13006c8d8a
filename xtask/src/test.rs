//! `cargo xtask test`: every test, then fmt and clippy, then the benchmark harness once,
//! small; or, with `--kernel`, the end-to-end essentials on a Debian kernel under qemu.

use anyhow::Result;
use clap::Parser;

use crate::{
    bench, build,
    cargo::{HOST_PACKAGES, cargo},
    kernel::{self, Kernel},
    package, setup,
};

#[derive(Parser)]
pub struct Options {
    /// Instead, boot this Debian kernel under qemu and run the end-to-end essentials
    /// there: the programs verify, passive and active transfers, an unannounced
    /// connection dropped, a clean detach.
    #[arg(long, value_name = "VERSION")]
    kernel: Option<Kernel>,
}

pub fn run(Options { kernel }: Options) -> Result<()> {
    setup::prepare()?;
    if let Some(kernel) = kernel {
        return kernel::run(kernel);
    }
    // The end-to-end tests run the loader binary next to them; the packaging tests install
    // the .deb.
    cargo(&["build", "--package", "ftp-loader"])?;
    package::package()?;
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
    bench::benchmark(build::release()?, true, &[])
}
