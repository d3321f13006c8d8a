//! `cargo xtask test --kernel 6.1`: the end-to-end essentials on a Debian kernel booted
//! under qemu with virtme-ng, the guest seeing this machine's root filesystem (read-only,
//! with writable overlays on /tmp, /var and /run). The loader and the test binaries are
//! built here; the guest runs a few of their tests and writes what happened into a
//! directory it may write to, since `vng` exits 255 whatever the guest's command did.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;

use crate::{
    cargo::{cargo, cargo_command, stream, workspace},
    setup,
};

/// The kernels users run: Debian 12's own and bookworm-backports'.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kernel {
    #[value(name = "6.1")]
    Debian12,
    #[value(name = "6.12")]
    Backports,
}

impl Kernel {
    /// The image package names of the series, around the number that grows with updates
    /// (`linux-image-6.1.0-57-amd64`, `linux-image-6.12.117+deb12-amd64`).
    fn package_pattern(self) -> (&'static str, &'static str) {
        match self {
            Kernel::Debian12 => ("linux-image-6.1.0-", "-amd64"),
            Kernel::Backports => ("linux-image-6.12.", "+deb12-amd64"),
        }
    }
}

/// What booting a Debian kernel under qemu needs, and why.
const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86", "boots the kernel under test"),
    ("busybox-static", "virtme-ng's init in the guest"),
    ("kmod", "depmod, to index the unpacked kernel's modules"),
    ("file", "virtme-ng reads the kernel image's version with it"),
    ("bc", "virtme-ng's guest set-up uses it"),
];

/// The tests run in the guest, by test target: the programs verify (each prints its
/// verified instruction count), a passive and an active transfer, an unannounced
/// connection dropped and a clean detach; a killed loader taken over with the range
/// closed throughout; a session open before the start adopted; forged control segments
/// opening nothing; FTPS sessions guarded through the TLS library probes. Software emulation is slow: this is all.
const GUEST_TESTS: &[(&str, &[&str])] = &[
    (
        "e2e",
        &[
            "programs_verify_within_budget",
            "passive_mode_lists_and_downloads",
            "active_mode_downloads",
            "unannounced_listener_is_unreachable_until_the_loader_exits",
        ],
    ),
    (
        "resilience",
        &[
            "a_killed_loader_leaves_the_guard_and_a_new_one_takes_over",
            "a_session_open_before_the_first_start_is_adopted",
        ],
    ),
    ("forgery", &["forged_control_segments_open_nothing"]),
    (
        "ftps",
        &["one_session_of_each_kind_is_guarded_with_uprobes"],
    ),
    (
        "events",
        &["a_session_and_an_unannounced_syn_appear_with_their_addresses"],
    ),
    (
        "monitor",
        &["monitoring_passes_and_lists_what_enforcement_drops_and_flipping_keeps_state"],
    ),
    (
        "reload",
        &["sighup_applies_the_file_and_keeps_every_expectation_and_flow"],
    ),
    (
        "verdict",
        &[
            "public_addresses_are_this_hosts_own_behind_one_to_one_nat",
            "a_gateway_rewrites_a_private_address_and_keeps_the_numbers_straight",
            "a_gateway_rewrites_client_commands_for_thousands_of_lines_without_drift",
            "a_gateway_leaves_alone_what_it_cannot_or_must_not_rewrite",
            "a_gateway_translates_the_data_connection_it_announced",
        ],
    ),
];

/// How long the guest may take: it boots in about a minute and runs the tests in a few.
const GUEST_TIMEOUT_SECS: u32 = 1800;

pub fn run(kernel: Kernel) -> Result<()> {
    setup::install(TOOLS)?;
    install_vng()?;
    let package = newest_package(kernel)?;
    let (image, release) = unpacked_kernel(&package)?;
    cargo(&["build", "--package", "ftp-loader"])?;
    let mut runs = Vec::new();
    for (target, names) in GUEST_TESTS {
        runs.push(format!(
            "{} --exact --test-threads=1 --nocapture {}",
            test_binary(target)?.display(),
            names.join(" ")
        ));
    }

    let results = workspace().join("target/kernels/results").join(&package);
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results)?;
    let log = results.join("guest.log");
    let status = results.join("status");
    let console = results.join("console.log");
    // Every target runs; the status is the first failure's, or 0. A verifier's refusal
    // leaves its log in the guest's /tmp, which the results keep. The script goes in a
    // file the guest runs: vng hands --exec to the guest on the kernel command line, whose
    // 2048 bytes a list of tests soon outgrows (the guest then hangs at boot).
    let mut script = format!(
        "uname -r > {}\nfailed=0\n",
        results.join("release").display()
    );
    for run in &runs {
        script += &format!("{run} >> {} 2>&1 || failed=$?\n", log.display());
    }
    script += &format!(
        "cp /tmp/ftp-tracker-verifier-*.log {} 2>/dev/null\necho $failed > {}\n",
        results.display(),
        status.display()
    );
    let script_file = results.join("run.sh");
    fs::write(&script_file, script)?;
    let exec = format!("sh {}", script_file.display());
    println!("xtask: booting {release} under qemu (software emulation, a few minutes)");
    let _ = Command::new("timeout")
        .arg(GUEST_TIMEOUT_SECS.to_string())
        .args(["vng", "--disable-kvm", "-m", "2G", "-p", "2", "--rwdir"])
        .arg(&results)
        .arg("-r")
        .arg(&image)
        .args(["--exec", &exec])
        .current_dir(workspace())
        // Its console output (terminal control sequences included) is no test result.
        .stdin(Stdio::null())
        .stdout(File::create(&console)?)
        .stderr(File::create(&console)?)
        .status()
        .context("running vng")?;

    let booted = fs::read_to_string(results.join("release")).unwrap_or_default();
    let output = fs::read_to_string(&log).unwrap_or_default();
    let code = fs::read_to_string(&status).unwrap_or_default();
    // libtest prints a test's own output after its name, on the same line.
    for count in output
        .lines()
        .filter_map(|line| line.find("verified ").map(|at| &line[at..]))
    {
        println!("xtask: {release}: {count}");
    }
    if booted.trim() == release && code.trim() == "0" {
        println!(
            "xtask: PASS on kernel {release}: {}",
            GUEST_TESTS
                .iter()
                .flat_map(|(_, names)| names.iter().copied())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    let tail: Vec<&str> = output.lines().rev().take(40).collect();
    for line in tail.into_iter().rev() {
        println!("{line}");
    }
    bail!(
        "FAIL on kernel {release}: the guest booted {:?} and its tests exited with {:?} (their output is in {}, the guest's console in {})",
        booted.trim(),
        code.trim(),
        log.display(),
        console.display()
    )
}

/// virtme-ng is not packaged for Debian 12.
fn install_vng() -> Result<()> {
    if Command::new("vng").arg("--version").output().is_ok() {
        return Ok(());
    }
    println!(
        "xtask: installing virtme-ng with pip: it boots a kernel on this machine's root filesystem"
    );
    stream(Command::new("pip").args(["install", "virtme-ng"]))
}

/// The newest image of the series that apt knows.
fn newest_package(kernel: Kernel) -> Result<String> {
    let (prefix, suffix) = kernel.package_pattern();
    let search = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            &format!("^{}", prefix.replace('.', "\\.")),
        ])
        .output()
        .context("running apt-cache")?;
    let listing = String::from_utf8_lossy(&search.stdout);
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            let number = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            Some((number.parse::<u32>().ok()?, name))
        })
        .max()
        .map(|(_, name)| name.to_owned())
        .with_context(|| {
            format!("apt knows no package {prefix}N{suffix}: is the right Debian suite in its sources (bookworm-backports for 6.12)?")
        })
}

/// The kernel image and its release, unpacked under target/kernels/<package> once; the
/// .deb ships no module index, which virtme-ng needs to load veth and the tc modules.
fn unpacked_kernel(package: &str) -> Result<(PathBuf, String)> {
    let kernels = workspace().join("target/kernels");
    let root = kernels.join(package);
    if release_of(&root).is_none() {
        println!("xtask: downloading {package} into {}", root.display());
        let _ = fs::remove_dir_all(&root);
        setup::unpack(&[package], &kernels)?;
    }
    let release = release_of(&root).with_context(|| format!("{package} holds no modules"))?;
    let image = root.join("boot").join(format!("vmlinuz-{release}"));
    ensure!(image.exists(), "{package} holds no {}", image.display());
    if !root
        .join("lib/modules")
        .join(&release)
        .join("modules.dep")
        .exists()
    {
        stream(
            Command::new("depmod")
                .args(["-a", "-b"])
                .arg(&root)
                .arg(&release),
        )?;
    }
    Ok((image, release))
}

fn release_of(root: &Path) -> Option<String> {
    fs::read_dir(root.join("lib/modules"))
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .next()
}

/// Builds the test target `target` without running it, and says where its binary is.
fn test_binary(target: &str) -> Result<PathBuf> {
    let build = cargo_command(&[
        "test",
        "--package",
        "ftp-lab",
        "--test",
        target,
        "--no-run",
        "--message-format=json",
    ])
    .output()
    .with_context(|| format!("building the {target} tests"))?;
    ensure!(
        build.status.success(),
        "building the {target} tests failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    ftp_lab::test_executable(&String::from_utf8_lossy(&build.stdout), target)
        .with_context(|| format!("cargo built no {target} test binary"))
}
