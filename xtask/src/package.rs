//! `cargo xtask package`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in ftp-loader/Cargo.toml. The man page and the completions are
//! printed by the release binary itself (xtask cannot link ftp-loader: its build needs the
//! BPF toolchain that set-up installs), so they describe exactly the options it takes.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use clap::Parser;
use ftp_lab::{
    lab::run as run_command,
    package::{PACKAGE_DIR, built_deb, dir},
};

use crate::{
    build,
    cargo::{cargo, stream},
    setup,
};

/// Where the man page and completions are written, beside the binary: cargo-deb takes
/// asset paths under target/release/ as build output (`[package.metadata.deb]`).
const ASSETS: &str = "package";

/// The completion scripts: the shell, and the file name the package's assets give it.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "ftp-loader.bash"),
    ("zsh", "_ftp-loader"),
    ("fish", "ftp-loader.fish"),
];

#[derive(Parser)]
pub struct Options {}

pub fn run(Options {}: Options) -> Result<()> {
    setup::prepare()?;
    let deb = package()?;
    println!("xtask: built {}", deb.display());
    Ok(())
}

/// Builds the release binary and the .deb (set-up must have run); returns the .deb's path.
pub fn package() -> Result<PathBuf> {
    let binary = build::release()?;
    let assets = binary.with_file_name(ASSETS);
    for made_afresh in [&assets, &dir()] {
        if made_afresh.exists() {
            std::fs::remove_dir_all(made_afresh)
                .with_context(|| format!("emptying {}", made_afresh.display()))?;
        }
        std::fs::create_dir_all(made_afresh)?;
    }
    for (shell, file) in COMPLETIONS {
        std::fs::write(
            assets.join(file),
            output_of(&binary, &["completions", shell])?,
        )?;
    }
    let page = assets.join("ftp-loader.8");
    std::fs::write(&page, output_of(&binary, &["manpage"])?)?;
    // Debian's man pages are gzipped; -n keeps the name and time out, for a reproducible
    // package.
    stream(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&page))?;
    cargo(&[
        "deb",
        "--package",
        "ftp-loader",
        "--no-build",
        "--output",
        PACKAGE_DIR,
    ])?;
    built_deb()
}

fn output_of(binary: &Path, args: &[&str]) -> Result<Vec<u8>> {
    Ok(run_command(Command::new(binary).args(args))?.stdout)
}
