//! Mistakes and missing permissions, made with the real ftp-loader binary: each must end
//! in one sentence naming the fix, with no raw OS error, no panic and nothing attached. And
//! a listing piped into a reader that stops early must end quietly.

use std::{
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::process::ExitStatusExt,
    },
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use ftp_ebpf_common::contract::STATS;
use ftp_lab::{
    lab::{
        Lab, Running, SERVER_IF, SERVER_IP, default_loader_bin, nsenter, output_within, run,
        wait_for, wait_within,
    },
    require_root,
};
use ftp_loader::record::RECORD_DIR;

const LIMIT: Duration = Duration::from_secs(60);
/// The capabilities ftp-loader needs to run, in setpriv's spelling.
const RUN_CAPS: [&str; 3] = ["bpf", "net_admin", "perfmon"];

fn lab(tag: &str) -> Lab {
    require_root();
    Lab::new(tag, &default_loader_bin()).expect("lab")
}

/// ftp-loader with `args`, in the lab's server namespace, as root.
fn loader(lab: &Lab, args: &[&str]) -> Output {
    output_within(
        nsenter(&lab.server_ns, &default_loader_bin()).args(args),
        LIMIT,
    )
    .expect("running ftp-loader")
}

/// The one sentence a refused command printed, after checking that it is one: exit
/// status 1, a single `ftp-loader: ` line on stderr, no OS error, no panic.
fn refusal(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected a refusal, got {}: {stderr}",
        output.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr:\n{stderr}");
    let sentence = lines[0]
        .strip_prefix("ftp-loader: ")
        .unwrap_or_else(|| panic!("not ftp-loader's error line: {stderr}"));
    for raw in ["os error", "panicked", "backtrace", "Error {"] {
        assert!(!sentence.contains(raw), "`{raw}` in: {sentence}");
    }
    sentence.to_owned()
}

fn assert_mentions(sentence: &str, parts: &[&str]) {
    for part in parts {
        assert!(sentence.contains(part), "`{part}` missing from: {sentence}");
    }
}

/// ftp-loader on the lab's server interface with `args` and the lab's pin directory;
/// asserts that it was refused and left no pins behind, and returns its sentence.
fn refused_run(lab: &Lab, args: &[&str]) -> String {
    let pin_dir = lab.pin_dir.to_str().unwrap();
    let output = loader(lab, &[&[SERVER_IF, "--pin-dir", pin_dir], args].concat());
    let sentence = refusal(&output);
    assert!(!lab.pin_dir.exists(), "a refused run left {pin_dir} behind");
    sentence
}

#[test]
fn an_interface_named_twice_is_refused() {
    let lab = lab("twice");
    let sentence = refused_run(&lab, &[SERVER_IF]);
    assert_mentions(
        &sentence,
        &["`srv0` is named twice", "name each interface once"],
    );

    // An alternative name is the same interface too.
    run(Command::new("ip").args([
        "-n",
        &lab.server_ns,
        "link",
        "property",
        "add",
        "dev",
        SERVER_IF,
        "altname",
        "srvalt0",
    ]))
    .unwrap();
    let sentence = refused_run(&lab, &["srvalt0"]);
    assert_mentions(&sentence, &["`srv0` and `srvalt0` name the same interface"]);
}

/// An interface named like a command is named after `run` (or after `--`): there it is
/// an interface, whatever its name.
#[test]
fn an_interface_named_like_a_command_is_named_after_run() {
    let lab = lab("named-stats");
    // In the lab's namespace, which goes (with the link) when the lab does. A veth: the
    // dummy driver may be missing.
    run(Command::new("ip").args([
        "-n",
        &lab.server_ns,
        "link",
        "add",
        "stats",
        "type",
        "veth",
        "peer",
        "name",
        "stats-peer",
    ]))
    .unwrap();
    let pin_dir = lab.pin_dir.to_str().unwrap();
    // Named twice, to be refused before anything is loaded: both are taken as interfaces,
    // and the first found to exist.
    for args in [
        ["run", "stats", "stats", "--pin-dir", pin_dir],
        ["--pin-dir", pin_dir, "--", "stats", "stats"],
    ] {
        let sentence = refusal(&loader(&lab, &args));
        assert_mentions(&sentence, &["`stats` is named twice"]);
        assert!(!lab.pin_dir.exists(), "a refused run left {pin_dir} behind");
    }
    // Without either, `stats` is the command.
    let sentence = refusal(&loader(&lab, &["stats", "--pin-dir", pin_dir]));
    assert_mentions(&sentence, &["no ftp-loader is running with pin directory"]);
}

/// `--tls-uprobes` mistakes: a library that is not there, or is no TLS library, each in one
/// sentence naming what to give; nothing is left attached or pinned.
#[test]
fn a_wrong_tls_library_is_named() {
    let lab = lab("tls-library");
    let sentence = refused_run(
        &lab,
        &["--tls-uprobes", "--tls-library", "/nonexistent/libssl.so.3"],
    );
    assert_mentions(
        &sentence,
        &[
            "--tls-library /nonexistent/libssl.so.3: no such file",
            "name the TLS library the FTP server loads",
        ],
    );
    let not_tls = lab.file("libnothing.so");
    std::fs::write(&not_tls, b"\x7fELF\0nothing here\0").unwrap();
    let sentence = refused_run(
        &lab,
        &["--tls-uprobes", "--tls-library", not_tls.to_str().unwrap()],
    );
    assert_mentions(
        &sentence,
        &["neither OpenSSL (SSL_write) nor GnuTLS (gnutls_record_send) is in it"],
    );
    let sentence = refused_run(&lab, &["--tls-library", "/usr/lib/libssl.so"]);
    assert_mentions(&sentence, &["--tls-uprobes"]);
}

#[test]
fn a_missing_interface_is_named() {
    let lab = lab("missing-if");
    let sentence = refused_run(&lab, &["nosuch0"]);
    assert_mentions(
        &sentence,
        &["no network interface named `nosuch0`", "ip link"],
    );
}

/// Configuration file mistakes name the file and the line; a file that sets a contradiction
/// is refused as the same options on the command line are; no interface anywhere is named
/// as what is missing.
#[test]
fn a_configuration_mistake_names_the_file_and_its_line() {
    let lab = lab("config");
    let file = lab.file("ftp-tracker.toml");
    let path = file.to_str().unwrap();
    for (text, parts) in [
        (
            "loose = true\ncontrol-ports = [21]\n",
            &["line 2: `control-ports` is not a setting", "control-port,"][..],
        ),
        (
            "data-ports = 1024\n",
            &["line 1: invalid value '1024' for '--data-ports"],
        ),
        (
            "allow-port = [80]\n",
            &["--allow-port 80 lies outside --data-ports"],
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let sentence = refused_run(&lab, &["--config", path]);
        assert_mentions(&sentence, parts);
    }
    std::fs::write(&file, "loose = true\n").unwrap();
    let pin_dir = lab.pin_dir.to_str().unwrap();
    let sentence = refusal(&loader(
        &lab,
        &["run", "--config", path, "--pin-dir", pin_dir],
    ));
    assert_mentions(&sentence, &["no interface to guard", path]);
    let missing = lab.file("missing.toml");
    let sentence = refused_run(&lab, &["--config", missing.to_str().unwrap()]);
    assert_mentions(&sentence, &["there is no configuration file", "--config"]);
}

/// The number after `give 1 to ` (or `give 1 to about `) in a sentence.
fn upper_bound(sentence: &str) -> u64 {
    let rest = sentence
        .split_once("give 1 to ")
        .unwrap_or_else(|| panic!("no range in: {sentence}"))
        .1;
    let rest = rest.strip_prefix("about ").unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no bound in: {sentence}"))
}

#[test]
fn a_table_larger_than_the_kernel_holds_names_its_option_and_the_sizes_that_work() {
    let lab = lab("e2big");
    for (option, entries) in [
        ("--max-flows", "4000000000"),
        ("--max-expectations", "2147483649"),
    ] {
        let sentence = refused_run(&lab, &[option, entries]);
        assert_mentions(
            &sentence,
            &[&format!("{option} {entries}"), "this kernel's hash tables"],
        );
        let largest = upper_bound(&sentence);
        assert!(
            (1..entries.parse().unwrap()).contains(&largest),
            "{largest} is no size below {entries}: {sentence}"
        );
    }
}

/// A memory cgroup of the test's own, below the test process's (v2 or v1), removed when
/// dropped.
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    fn new(name: &str, limit: &str) -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (root, limit_file) = if v2 {
            ("/sys/fs/cgroup", "memory.max")
        } else {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        };
        let path = own
            .lines()
            // hierarchy-id:controllers:path
            .filter_map(|l| l.split_once(':')?.1.split_once(':'))
            .find(|(controllers, _)| {
                if v2 {
                    controllers.is_empty()
                } else {
                    controllers.split(',').any(|c| c == "memory")
                }
            })
            .map(|(_, path)| path.trim_start_matches('/').to_owned())
            .expect("this process has no memory cgroup");
        let dir = Path::new(root).join(path).join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let cgroup = Self { dir };
        std::fs::write(cgroup.dir.join(limit_file), limit).unwrap_or_else(|e| {
            panic!(
                "limiting {}'s memory (is the memory controller enabled there?): {e}",
                cgroup.dir.display()
            )
        });
        cgroup
    }

    /// `command` run inside this cgroup.
    fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.dir)
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes have exited by now; the kernel may take a moment to let go.
        let _ = wait_for("the cgroup to empty", || {
            Ok(std::fs::remove_dir(&self.dir).is_ok())
        });
    }
}

#[test]
fn a_table_larger_than_memory_allows_names_its_option_and_a_size_that_fits() {
    let lab = lab("enomem");
    let cgroup = MemoryCgroup::new(&format!("ftpt-{}-enomem", std::process::id()), "268435456");
    let pin_dir = lab.pin_dir.to_str().unwrap();
    let attempt = |entries: &str| {
        output_within(
            &mut cgroup.wrap(nsenter(&lab.server_ns, &default_loader_bin()).args([
                SERVER_IF,
                "--pin-dir",
                pin_dir,
                "--max-flows",
                entries,
            ])),
            LIMIT,
        )
        .unwrap()
    };
    let sentence = refusal(&attempt("20000000"));
    assert_mentions(
        &sentence,
        &[
            "--max-flows 20000000",
            "more kernel memory",
            "MiB are available",
        ],
    );
    let fits = upper_bound(&sentence);
    assert!(fits < 20_000_000, "{sentence}");
    // Half the estimate leaves room for the other tables and the programs: it must load
    // (the loader is stopped by a timeout, as an admin's Ctrl-C would).
    let half = (fits / 2).to_string();
    let output = output_within(
        &mut cgroup.wrap(
            Command::new("timeout")
                .args(["--preserve-status", "-s", "INT", "8"])
                .arg("nsenter")
                .arg(format!("--net=/run/netns/{}", lab.server_ns))
                .arg(default_loader_bin())
                .args([SERVER_IF, "--pin-dir", pin_dir, "--max-flows", &half]),
        ),
        LIMIT,
    )
    .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && log.contains("attached to srv0"),
        "--max-flows {half} did not load within the limit ({}): {log}",
        output.status
    );
}

#[test]
fn a_pin_dir_outside_bpffs_must_lie_inside_one() {
    let lab = lab("pin-tmp");
    let outside = lab.file("pins");
    let output = loader(&lab, &[SERVER_IF, "--pin-dir", outside.to_str().unwrap()]);
    let sentence = refusal(&output);
    assert_mentions(
        &sentence,
        &[
            "must lie inside a BPF filesystem (such as /sys/fs/bpf)",
            "give a --pin-dir under /sys/fs/bpf",
        ],
    );
    assert!(
        !sentence.contains("mount"),
        "no mount over /tmp: {sentence}"
    );
    assert!(!outside.exists());
}

#[test]
fn contradictory_options_are_refused() {
    let lab = lab("contradict");
    for (args, expected) in [
        (
            &["--data-ports", "1024-1500", "--min-data-port", "2000"][..],
            &[
                "--min-data-port 2000 is above the top of --data-ports 1024-1500",
                "at most 1500",
            ][..],
        ),
        (
            &["--allow-port", "80"],
            &["--allow-port 80 lies outside --data-ports 1024-65535"],
        ),
        (
            &["--control-port", "2121", "--allow-port", "2121"],
            &[
                "--allow-port 2121 is also a --control-port",
                "drop --allow-port 2121",
            ],
        ),
        (
            &["--max-expectations-per-client", "0"],
            &[
                "--max-expectations-per-client 0 would refuse every announcement",
                "give 1 to 65536",
            ],
        ),
        (
            &[
                "--public-address",
                "203.0.113.5=10.0.0.5",
                "--public-address",
                "203.0.113.5=10.0.0.6",
            ],
            &[
                "--public-address 203.0.113.5=10.0.0.5 and 203.0.113.5=10.0.0.6 map 203.0.113.5 twice",
                "give it once",
            ],
        ),
        (
            &["--expect-timeout", "5000000000"],
            &[
                "--expect-timeout 5000000000 is longer",
                "give 1 to 4611686018 seconds",
            ],
        ),
    ] {
        let sentence = refused_run(&lab, args);
        assert_mentions(&sentence, expected);
    }
}

/// A value that is no mapping is refused by the argument parser (status 2), in one
/// sentence that gives the form.
#[test]
fn a_bad_public_address_is_one_sentence_giving_the_form() {
    let lab = lab("badpublic");
    for (value, expected) in [
        (
            "203.0.113.5=fd00::5",
            "PUBLIC and LOCAL must be of one family: a 1:1 NAT keeps it",
        ),
        (
            "203.0.113.0/24",
            "expected PUBLIC or PUBLIC=LOCAL (the address peers reach this host at, and the one the NAT translates it to), e.g. 203.0.113.5 or 203.0.113.5=10.0.0.5",
        ),
    ] {
        let output = loader(&lab, &[SERVER_IF, "--public-address", value]);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.ends_with(&format!("'--public-address <PUBLIC[=LOCAL]>': {expected}")),
            "{stderr}"
        );
        assert!(!stderr.contains("os error") && !stderr.contains("panicked"));
    }
}

#[test]
fn a_second_instance_and_a_listing_without_an_instance_are_refused() {
    let mut lab = lab("second");
    let pin_dir = lab.pin_dir.to_str().unwrap().to_owned();
    let sentence = refusal(&loader(&lab, &["stats", "--pin-dir", &pin_dir]));
    assert_mentions(
        &sentence,
        &[
            "no ftp-loader is running with pin directory",
            "ftp-loader <interface>",
        ],
    );
    lab.start_loader(&[]).unwrap();
    let sentence = refusal(&loader(&lab, &[SERVER_IF, "--pin-dir", &pin_dir]));
    assert_mentions(
        &sentence,
        &[
            "another ftp-loader is running with pin directory",
            "--pin-dir",
        ],
    );
    // The first one still runs and still has its pins.
    assert!(lab.stats().is_ok(), "{}", lab.loader_log());
}

/// `command` as user nobody with exactly the capabilities `caps` (setpriv's names).
fn as_nobody(caps: &[&str], command: &Command) -> Command {
    let set = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut wrapped = Command::new("setpriv");
    wrapped.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
    if !caps.is_empty() {
        wrapped.args([format!("--inh-caps={set}"), format!("--ambient-caps={set}")]);
    }
    wrapped.arg(command.get_program()).args(command.get_args());
    wrapped
}

/// `command` run in the lab's server namespace; outside setpriv, which drops the right to
/// enter one.
fn in_server(lab: &Lab, command: &Command) -> Command {
    let mut wrapped = nsenter(&lab.server_ns, Path::new(command.get_program()));
    wrapped.args(command.get_args());
    wrapped
}

/// `command` in a mount namespace of its own where the record directory is a fresh tmpfs
/// owned by nobody, as a systemd unit's RuntimeDirectory= makes it for its user.
fn with_record_dir_for_nobody(command: &Command) -> Command {
    // The mount point; the loader creates it as root anyway.
    std::fs::create_dir_all(RECORD_DIR).unwrap();
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o mode=0755 tmpfs "$0" && chown nobody "$0" && exec "$@""#)
        .arg(RECORD_DIR)
        .arg(command.get_program())
        .args(command.get_args());
    wrapped
}

/// A copy of the loader that user nobody may run wherever the build left it.
fn loader_for_nobody(lab: &Lab) -> PathBuf {
    let copy = lab.file("ftp-loader");
    std::fs::copy(default_loader_bin(), &copy).unwrap();
    run(Command::new("chmod").arg("755").arg(&copy)).unwrap();
    copy
}

/// A pin directory that user nobody owns, in a BPF filesystem it can reach.
fn pin_dir_for_nobody(lab: &mut Lab) -> PathBuf {
    let dir = lab.mount_bpffs("bpf").unwrap().join("pins");
    run(Command::new("install")
        .args(["-d", "-o", "nobody"])
        .arg(&dir))
    .unwrap();
    dir
}

#[test]
fn a_user_with_the_capabilities_attaches_and_reads_without_root() {
    let mut lab = lab("nonroot");
    let bin = loader_for_nobody(&lab);
    let pin_dir = pin_dir_for_nobody(&mut lab);
    lab.start_listener(5000).unwrap();
    let log = std::fs::File::create(lab.file("nobody.log")).unwrap();
    let mut loader = Running(
        with_record_dir_for_nobody(&in_server(
            &lab,
            &as_nobody(
                &RUN_CAPS,
                Command::new(&bin)
                    .arg(SERVER_IF)
                    .arg("--pin-dir")
                    .arg(&pin_dir),
            ),
        ))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap(),
    );
    let log = || std::fs::read_to_string(lab.file("nobody.log")).unwrap_or_default();
    // Verifying the programs takes seconds, more on a machine running tests in parallel.
    wait_within("the loader to attach", LIMIT, || {
        if let Some(status) = loader.0.try_wait()? {
            anyhow::bail!("the loader exited ({status}): {}", log());
        }
        Ok(log().contains("attached to srv0"))
    })
    .unwrap();
    // It guards: an unannounced connection to a guarded port is dropped.
    assert!(
        !lab.client_connects(SERVER_IP.into(), 5000, Duration::from_secs(2))
            .unwrap(),
        "an unannounced connection got through:\n{}",
        log()
    );

    let stats = |caps: &[&str]| {
        output_within(
            &mut as_nobody(
                caps,
                Command::new(&bin)
                    .args(["stats", "--json", "--pin-dir"])
                    .arg(&pin_dir),
            ),
            LIMIT,
        )
        .unwrap()
    };
    // Reading takes CAP_BPF alone.
    let output = stats(&["bpf"]);
    assert!(
        output.status.success(),
        "stats with CAP_BPF: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let counters: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        counters["unsolicited_dropped"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    let unprivileged_bpf = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .unwrap()
        .trim()
        == "0";
    let output = stats(&[]);
    if unprivileged_bpf {
        assert!(output.status.success(), "unprivileged BPF is enabled here");
    } else {
        assert_mentions(
            &refusal(&output),
            &["lacks CAP_BPF", "AmbientCapabilities=CAP_BPF"],
        );
    }

    // SAFETY: signalling our own child.
    unsafe { libc::kill(loader.0.id() as i32, libc::SIGTERM) };
    let status = loader.0.wait().unwrap();
    assert!(
        status.success(),
        "the loader ended with {status}: {}",
        log()
    );
    assert!(!pin_dir.join(STATS.name).exists(), "pins left behind");
}

#[test]
fn a_missing_capability_is_named_with_how_to_grant_it() {
    let mut lab = lab("nocap");
    let bin = loader_for_nobody(&lab);
    let pin_dir = pin_dir_for_nobody(&mut lab);
    for missing in RUN_CAPS {
        let caps: Vec<&str> = RUN_CAPS.into_iter().filter(|c| *c != missing).collect();
        let output = output_within(
            &mut in_server(
                &lab,
                &as_nobody(
                    &caps,
                    Command::new(&bin)
                        .arg(SERVER_IF)
                        .arg("--pin-dir")
                        .arg(&pin_dir),
                ),
            ),
            LIMIT,
        )
        .unwrap();
        let sentence = refusal(&output);
        let name = format!("CAP_{}", missing.to_uppercase());
        assert_mentions(
            &sentence,
            &[
                &format!("lacks {name} ("),
                "sudo",
                "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
            ],
        );
        for other in &caps {
            let other = format!("lacks CAP_{}", other.to_uppercase());
            assert!(!sentence.contains(&other), "{sentence}");
        }
        assert!(!pin_dir.join(STATS.name).exists());
    }
}

/// The loader on the lab's server interface, run as nobody with the capabilities it needs.
fn loader_as_nobody(lab: &Lab, bin: &Path, pin_dir: &Path) -> Output {
    output_within(
        &mut in_server(
            lab,
            &as_nobody(
                &RUN_CAPS,
                Command::new(bin)
                    .arg(SERVER_IF)
                    .arg("--pin-dir")
                    .arg(pin_dir),
            ),
        ),
        LIMIT,
    )
    .unwrap()
}

#[test]
fn a_pin_dir_the_user_cannot_write_says_how_to_create_it() {
    let mut lab = lab("pin-perm");
    let bin = loader_for_nobody(&lab);
    let bpffs = lab.mount_bpffs("bpf").unwrap();
    let pin_dir = bpffs.join("pins");
    let output = loader_as_nobody(&lab, &bin, &pin_dir);
    let sentence = refusal(&output);
    assert_mentions(
        &sentence,
        &[
            "user nobody",
            &format!("`sudo install -d -o nobody {}`", pin_dir.display()),
        ],
    );
    assert!(!pin_dir.exists());
}

#[test]
fn a_record_dir_the_user_cannot_write_says_how_to_create_it() {
    let mut lab = lab("record-perm");
    let bin = loader_for_nobody(&lab);
    let pin_dir = pin_dir_for_nobody(&mut lab);
    // As the loader makes it when root runs it: root's.
    std::fs::create_dir_all(RECORD_DIR).unwrap();
    let output = loader_as_nobody(&lab, &bin, &pin_dir);
    let sentence = refusal(&output);
    assert_mentions(
        &sentence,
        &[
            "user nobody",
            &format!("`sudo install -d -o nobody {RECORD_DIR}`"),
            "RuntimeDirectory=ftp-tracker",
        ],
    );
    assert!(
        !pin_dir.join(STATS.name).exists(),
        "a refused run pinned maps"
    );
}

/// Runs `args` with stdout a pipe whose reading end is already closed: the first write
/// fails, as it does when `head` has read enough and gone.
fn into_closed_pipe(args: &[&str]) -> Output {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just made and are owned by nothing else.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    let child = Command::new(default_loader_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    let mut lab = lab("pipe");
    lab.start_loader(&[]).unwrap();
    let pin_dir = lab.pin_dir.to_str().unwrap();
    for listing in ["stats", "expectations", "flows", "would-drop", "status"] {
        for json in [false, true] {
            let mut args = vec![listing, "--pin-dir", pin_dir];
            if json {
                args.push("--json");
            }
            let output = into_closed_pipe(&args);
            let quiet = output.status.success() || output.status.signal() == Some(libc::SIGPIPE);
            assert!(
                quiet && output.stderr.is_empty(),
                "`ftp-loader {}` into a closed pipe ended with {}: {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// A link type the programs cannot read (here tun devices that report GRE's and
/// InfiniBand's, which this kernel has no driver for) is refused by name with its type and
/// what to do instead; a layer-3 interface (a tun device, whose frames start at the IP
/// header) is refused XDP, which reads only Ethernet, and told to use tc. Nothing is left
/// attached or pinned.
#[test]
fn unguardable_link_types_are_refused_in_one_sentence() {
    let lab = lab("links");
    let pin_dir = lab.pin_dir.to_str().unwrap();
    for (link_type, name, expected) in [
        (
            libc::ARPHRD_IPGRE,
            "gre (778)",
            "carry the FTP traffic in a WireGuard tunnel or an Ethernet one",
        ),
        (
            libc::ARPHRD_INFINIBAND,
            "infiniband (32)",
            "guard the interface its IP traffic arrives on instead",
        ),
    ] {
        let _device = ftp_lab::tunnel::tun_of_type(&lab.server_ns, "odd0", link_type).unwrap();
        let sentence = refusal(&loader(&lab, &["odd0", "--pin-dir", pin_dir]));
        assert_mentions(
            &sentence,
            &[
                &format!("cannot guard odd0, whose link type is {name}"),
                expected,
            ],
        );
        assert!(!lab.pin_dir.exists(), "a refused run left {pin_dir} behind");
    }

    let _tunnel = ftp_lab::tunnel::Tunnel::new(&lab).unwrap();
    let tun = ftp_lab::tunnel::SERVER_TUN;
    for mode in ["skb", "native"] {
        let sentence = refusal(&loader(
            &lab,
            &[tun, "--xdp-mode", mode, "--pin-dir", pin_dir],
        ));
        assert_mentions(
            &sentence,
            &[
                &format!("{tun} has no Ethernet header"),
                &format!("drop --xdp-mode {mode}, or give --xdp-mode tc"),
            ],
        );
        assert!(!lab.pin_dir.exists(), "a refused run left {pin_dir} behind");
        let filters = run(Command::new("tc").args([
            "-n",
            &lab.server_ns,
            "filter",
            "show",
            "dev",
            tun,
            "ingress",
        ]))
        .unwrap();
        assert!(
            filters.stdout.is_empty(),
            "a refused run left a filter on {tun}: {}",
            String::from_utf8_lossy(&filters.stdout)
        );
    }
}
