//! Running cargo and other commands from xtask, in the workspace.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Every package but ftp-ebpf (BPF target only): the default members leave out those that
/// need root and the BPF toolchain.
pub const HOST_PACKAGES: &[&str] = &["--workspace", "--exclude", "ftp-ebpf"];

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
