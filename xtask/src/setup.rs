//! Installs what is missing, saying what and why; does nothing when all is there.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Result, bail, ensure};
use clap::Parser;
use ftp_lab::servers::{PEERS_DIR, UNPACKED, unpacked_path};

use crate::cargo::stream;

/// Debian packages and why the project needs each.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "the Rust compiler that builds the eBPF programs",
    ),
    ("cargo-web", "the cargo that goes with it"),
    (
        "libstd-rust-web-dev-bpf",
        "a precompiled `core` for the BPF targets",
    ),
    ("llvm-22-dev", "LLVM 22, which bpf-linker links against"),
    (
        "libpolly-22-dev",
        "needed to link bpf-linker against LLVM 22",
    ),
    ("zlib1g-dev", "needed to link bpf-linker"),
    ("libzstd-dev", "needed to link bpf-linker"),
    ("iproute2", "network namespaces and veth pairs for the lab"),
    (
        "util-linux",
        "nsenter, to run the loader inside a lab namespace",
    ),
    ("vsftpd", "an FTP server of the lab"),
    ("curl", "an FTP client of the lab"),
    (
        "python3",
        "ftplib sessions and a plain TCP listener in the lab",
    ),
    ("lftp", "an FTP client of the interoperability matrix"),
    ("wget", "an FTP client of the interoperability matrix"),
    (
        "python3-pyftpdlib",
        "an FTP server of the interoperability matrix",
    ),
    // proftpd-core's libraries: unpacked rather than installed, it brings none of them.
    (
        "libhiredis0.14",
        "a library the unpacked proftpd links against",
    ),
    (
        "libmemcached11",
        "a library the unpacked proftpd links against",
    ),
    (
        "libmemcachedutil2",
        "a library the unpacked proftpd links against",
    ),
    (
        "libpcre2-posix3",
        "a library the unpacked proftpd links against",
    ),
    (
        "libssl3",
        "a library the unpacked proftpd's FTPS module (mod_tls) links against",
    ),
    (
        "openssl",
        "the self-signed certificate each lab makes for its FTPS servers",
    ),
    (
        "iptables",
        "to show the lab runs without netfilter rules, and to attach the kernel's FTP helper \
         that the differential tests compare with",
    ),
    (
        "conntrack",
        "to read the kernel FTP helper's expectations in the differential tests",
    ),
    (
        "bpftool",
        "to check nothing stays attached after the loader exits",
    ),
    (
        "prometheus",
        "promtool, which checks a live scrape of the loader's metrics endpoint",
    ),
    (
        "systemd",
        "systemd-analyze, to verify the packaged unit in the package test",
    ),
    (
        "man-db",
        "man, to read the packaged man page in the package test",
    ),
    (
        "dpkg-dev",
        "dpkg-shlibdeps, with which cargo-deb works out the package's dependencies",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const CARGO_DEB_VERSION: &str = "3.8.0";

#[derive(Parser)]
pub struct Options {}

pub fn run(Options {}: Options) -> Result<()> {
    prepare()
}

/// What every other command needs first.
pub fn prepare() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "the tracker's setup, tests and demo need root (apt, eBPF, network namespaces): run them as root"
    );
    install(PACKAGES)?;
    unpack_peers()?;
    install_bpf_linker()?;
    install_cargo_deb()?;
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs those of `packages` (name, why) that are missing, saying why.
pub fn install(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&(&str, &str)> = packages.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (package, why) in &missing {
        println!("xtask: installing {package}: {why}");
    }
    stream(Command::new("apt-get").args(["update", "-qq"]))?;
    stream(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(missing.iter().map(|(p, _)| *p))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}

/// The FTP daemons whose packages conflict with vsftpd's (all provide `ftp-server`, so
/// installing one removes the other), and proftpd's FTPS module, whose package depends on
/// one of them ([`UNPACKED`]): unpacked side by side instead, never configured or started
/// by the package system. Each package is unpacked when its file is missing.
fn unpack_peers() -> Result<()> {
    let missing: Vec<(&str, &str)> = UNPACKED
        .iter()
        .filter(|(package, file, _)| !unpacked_path(package, file).exists())
        .map(|(package, _, why)| (*package, *why))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (package, why) in &missing {
        println!("xtask: unpacking {package} into {PEERS_DIR}/{package}: {why}");
    }
    let packages: Vec<&str> = missing.iter().map(|(package, _)| *package).collect();
    unpack(&packages, Path::new(PEERS_DIR))
}

/// Downloads Debian packages and unpacks each into `into/<package>`, never configuring or
/// installing them.
pub fn unpack(packages: &[&str], into: &Path) -> Result<()> {
    let debs = std::env::temp_dir().join(format!("ftp-tracker-debs-{}", std::process::id()));
    std::fs::create_dir_all(&debs)?;
    let result = download_and_unpack(packages, &debs, into);
    let _ = std::fs::remove_dir_all(&debs);
    result
}

fn download_and_unpack(packages: &[&str], debs: &Path, into: &Path) -> Result<()> {
    stream(Command::new("apt-get").args(["update", "-qq"]))?;
    // apt's sandbox user cannot write to a root-owned temporary directory.
    stream(
        Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root"])
            .args(packages)
            .current_dir(debs),
    )?;
    for package in packages {
        let target = into.join(package);
        // dpkg -x creates its target directory but not the parents.
        std::fs::create_dir_all(&target)?;
        let deb = std::fs::read_dir(debs)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            });
        let Some(deb) = deb else {
            bail!(
                "apt-get download {package} left no .deb in {}",
                debs.display()
            );
        };
        stream(Command::new("dpkg").arg("-x").arg(&deb).arg(&target))?;
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cargo"))
}

fn install_bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker")
        .arg("--version")
        .stderr(Stdio::null())
        .output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    println!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} from crates.io: it links the eBPF programs (builds against LLVM 22, about a minute)"
    );
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    stream(
        Command::new(cargo)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--root"])
            .arg(cargo_home())
            .env("PATH", path),
    )?;
    Ok(())
}

fn install_cargo_deb() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let version = Command::new(&cargo)
        .args(["deb", "--version"])
        .stderr(Stdio::null())
        .output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION)) {
        return Ok(());
    }
    println!(
        "xtask: installing cargo-deb {CARGO_DEB_VERSION} from crates.io: it builds the Debian package (`cargo xtask package`, which the tests install; a minute or two)"
    );
    stream(
        Command::new(cargo)
            .args([
                "install",
                "cargo-deb",
                "--version",
                CARGO_DEB_VERSION,
                "--locked",
                "--root",
            ])
            .arg(cargo_home()),
    )?;
    Ok(())
}
