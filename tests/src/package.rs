//! Where `cargo xtask package` leaves the Debian package, for the packaging tests to
//! install and xtask to report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The directory, relative to the workspace, holding the .deb; made afresh by each
/// `cargo xtask package`, so it holds one.
pub const PACKAGE_DIR: &str = "target/package";

/// `PACKAGE_DIR` in this workspace.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the lab lives in the workspace")
        .join(PACKAGE_DIR)
}

/// The one .deb `cargo xtask package` built.
pub fn built_deb() -> Result<PathBuf> {
    let dir = dir();
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "{} is missing: build the package with `cargo xtask package` (cargo xtask test does)",
                dir.display()
            )
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .collect();
    match debs.as_slice() {
        [deb] => Ok(deb.clone()),
        _ => bail!(
            "{} holds {} .deb files, not one: build the package again with `cargo xtask package`",
            dir.display(),
            debs.len()
        ),
    }
}
