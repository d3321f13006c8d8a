//! `cargo xtask build`: the release ftp-loader, one binary with the eBPF programs embedded.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

use crate::{
    cargo::{cargo, workspace},
    setup,
};

#[derive(Parser)]
pub struct Options {}

pub fn run(Options {}: Options) -> Result<()> {
    setup::prepare()?;
    release().map(drop)
}

/// Builds target/release/ftp-loader (set-up must have run) and returns its path.
pub fn release() -> Result<PathBuf> {
    cargo(&["build", "--release", "--package", "ftp-loader"])?;
    Ok(workspace().join("target/release/ftp-loader"))
}
