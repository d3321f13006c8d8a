//! The shell completions and the man page, made from the command line's own definition so
//! that they can never describe other options than the binary takes. The package
//! (`cargo xtask package`) runs the built binary for them: xtask cannot link ftp-loader,
//! whose build needs the BPF toolchain.

use std::io::Write;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// `ftp-loader completions SHELL`: the completion script for `shell` on stdout, as
/// `rustup completions` does, for an admin to install by hand.
pub fn completions(shell: Shell, mut command: clap::Command) {
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
}

/// The man page (roff), section 8: ftp-loader administers the system.
pub fn manpage(command: clap::Command) -> Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .section("8")
        .render(&mut page)
        .context("rendering the man page")?;
    std::io::stdout()
        .write_all(&page)
        .context("writing the man page")
}
