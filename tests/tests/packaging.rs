//! The Debian package `cargo xtask package` built (cargo xtask test builds it first),
//! installed into a throwaway root with `dpkg --root`: what it installs runs and documents
//! itself, its unit verifies, and its binary, started the way the unit starts it (its
//! ExecStart= as written, the unit's user, capabilities, no-new-privileges, environment,
//! pin directory arrangement, and the installed configuration at its default path),
//! refuses the shipped configuration in one sentence, and with the interfaces named in it
//! tells systemd it is ready only once the guard is attached, and reloads edits of it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, TcpListener},
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use ftp_lab::{
    ftp::{self, Ftp},
    lab::{
        BLOB_PATH, Lab, Running, SERVER_IF, SERVER_IP, UNANNOUNCED, default_loader_bin, in_netns,
        output_within, run, wait_within,
    },
    package::built_deb,
    require_root,
    servers::Server,
};
use ftp_loader::{config::DEFAULT_CONFIG, notify, pins::DEFAULT_PIN_DIR, record::RECORD_DIR};

const LIMIT: Duration = Duration::from_secs(60);
/// Where the package puts what the tests look at.
const BINARY: &str = "usr/sbin/ftp-loader";
const UNIT: &str = "usr/lib/systemd/system/ftp-tracker.service";
const MAN_PAGE: &str = "usr/share/man/man8/ftp-loader.8.gz";
const DOCS: &str = "usr/share/doc/ftp-tracker";

/// The package installed with `dpkg --root` into a directory of the lab (removed with
/// it), its maintainer scripts run outside a chroot (`--force-script-chrootless`, with
/// DPKG_ROOT set) since the root holds no shell: the scripts are written for that.
fn install(lab: &Lab) -> PathBuf {
    let root = lab.file("root-fs");
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    std::fs::write(admin.join("available"), "").unwrap();
    // What useradd --prefix needs to add the postinst's system user.
    std::fs::create_dir_all(root.join("etc")).unwrap();
    for (file, line, mode) in [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("group", "root:x:0:\n", 0o644),
        ("shadow", "root:*:19000:0:99999:7:::\n", 0o640),
        ("gshadow", "root:*::\n", 0o640),
    ] {
        let path = root.join("etc").join(file);
        std::fs::write(&path, line).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let deb = built_deb().unwrap();
    // The root has no libc6 for the package's dependency on it to be met.
    let output = output_within(
        Command::new("dpkg")
            .arg("--root")
            .arg(&root)
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--log=/dev/null",
                "-i",
            ])
            .arg(&deb),
        LIMIT,
    )
    .unwrap();
    assert!(
        output.status.success(),
        "dpkg --root {} -i {}: {}{}",
        root.display(),
        deb.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    root
}

fn lab(tag: &str) -> Lab {
    require_root();
    Lab::new(tag, &default_loader_bin()).expect("lab")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The installed binary with `args`: its output, which must be a success.
fn installed_binary(root: &Path, args: &[&str]) -> String {
    let output = output_within(Command::new(root.join(BINARY)).args(args), LIMIT).unwrap();
    assert!(output.status.success(), "{args:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The installed configuration file (DEFAULT_CONFIG in the throwaway root).
fn config(root: &Path) -> PathBuf {
    root.join(DEFAULT_CONFIG.trim_start_matches('/'))
}

/// Edits the installed configuration as an admin does: the line `from` becomes `to`. In
/// place, so that the file the service sees through its bind mount changes.
fn edit_config(root: &Path, from: &str, to: &str) {
    let path = config(root);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines().filter(|l| *l == from).count(),
        1,
        "{DEFAULT_CONFIG} has no line `{from}` to edit:\n{text}"
    );
    let edited: String = text
        .lines()
        .map(|l| if l == from { to } else { l })
        .flat_map(|l| [l, "\n"])
        .collect();
    std::fs::write(&path, edited).unwrap();
}

#[test]
fn the_package_installs_its_binary_man_page_completions_configuration_and_licences() {
    let lab = lab("deb");
    let root = install(&lab);
    let query = |field: &str| {
        let output = run(Command::new("dpkg-query")
            .arg("--admindir")
            .arg(root.join("var/lib/dpkg"))
            .args(["-W", &format!("-f=${{{field}}}"), "ftp-tracker"]))
        .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(query("Status"), "install ok installed");

    let help = installed_binary(&root, &["--help"]);
    for part in ["Usage: ftp-loader", "--pin-dir", "completions", "stats"] {
        assert!(help.contains(part), "--help lacks {part}:\n{help}");
    }
    // The binary's version is the package's, less the Debian revision.
    let version = installed_binary(&root, &["--version"]);
    let package_version = query("Version");
    let upstream = package_version.split('-').next().unwrap();
    assert_eq!(version.trim(), format!("ftp-loader {upstream}"));

    let page = output_within(
        Command::new("man")
            .args(["-P", "cat", "-l"])
            .arg(root.join(MAN_PAGE))
            .env("MANWIDTH", "100"),
        LIMIT,
    )
    .unwrap();
    let page_text = String::from_utf8_lossy(&page.stdout);
    assert!(page.status.success(), "man -l: {}", text(&page));
    for part in [
        "NAME",
        "ftp-loader",
        "--data-ports",
        "expectations",
        "VERSION",
    ] {
        assert!(
            page_text.contains(part),
            "the man page lacks {part}:\n{page_text}"
        );
    }
    assert!(
        !page_text.contains("manpage"),
        "the man page lists the hidden subcommand that prints it"
    );

    for (file, shell_syntax) in [
        (
            "usr/share/bash-completion/completions/ftp-loader",
            "complete -F",
        ),
        (
            "usr/share/zsh/vendor-completions/_ftp-loader",
            "#compdef ftp-loader",
        ),
        (
            "usr/share/fish/vendor_completions.d/ftp-loader.fish",
            "complete -c ftp-loader",
        ),
    ] {
        let script =
            std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            script.contains(shell_syntax),
            "{file} is not the script: {script}"
        );
        assert!(
            script.contains("expectations"),
            "{file} lacks the subcommands"
        );
    }
    // The bash script parses.
    run(Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/ftp-loader")))
    .unwrap();

    // The configuration survives upgrades and edits: a conffile, the repository's template.
    assert!(
        query("Conffiles").contains(&format!("{DEFAULT_CONFIG} ")),
        "{DEFAULT_CONFIG} is not a conffile: {}",
        query("Conffiles")
    );
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = std::fs::read_to_string(config(&root)).unwrap();
    assert_eq!(
        shipped,
        std::fs::read_to_string(source.join("dist/ftp-tracker.toml")).unwrap()
    );
    // Every setting commented out (its default), and no interface named: what the admin
    // edits before the first start.
    let set: Vec<&str> = shipped
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(set, ["interfaces = []"], "{DEFAULT_CONFIG} sets more");
    assert_eq!(
        std::fs::read_to_string(root.join(UNIT)).unwrap(),
        std::fs::read_to_string(source.join("dist/ftp-tracker.service")).unwrap()
    );
    for file in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        assert_eq!(
            std::fs::read(root.join(DOCS).join(file)).unwrap(),
            std::fs::read(source.join(file)).unwrap(),
            "{file} is not the repository's"
        );
    }
    // The README's links lead somewhere.
    assert!(root.join(DOCS).join("docs/operations.md").is_file());
    // The postinst made the unit's user.
    let unit = Unit::read(&root);
    let user = unit.one("User");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with(&format!("{user}:")) && l.ends_with(":/usr/sbin/nologin")),
        "the postinst did not add the system user {user}:\n{passwd}"
    );
}

/// `systemd-analyze verify` on the unit as installed, with its ExecStart= naming the
/// binary installed beside it (verify wants every command to exist, and the throwaway root
/// is not /), and MANPATH the root's, where its Documentation= man page must be found.
#[test]
fn the_installed_unit_verifies() {
    let lab = lab("verify");
    let root = install(&lab);
    let unit = std::fs::read_to_string(root.join(UNIT)).unwrap();
    let binary = format!("/{BINARY}");
    assert!(unit.contains(&format!("ExecStart={binary} ")), "{unit}");
    let dir = lab.file("units");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("ftp-tracker.service");
    std::fs::write(
        &copy,
        unit.replace(&binary, &root.join(BINARY).to_string_lossy()),
    )
    .unwrap();
    let output = output_within(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .env("MANPATH", root.join("usr/share/man")),
        LIMIT,
    )
    .unwrap();
    // Warnings (an unknown key, a missing man page) go to stderr.
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&output)
    );
}

/// The [Service] settings of a unit file: key to values, in order.
struct Unit(BTreeMap<String, Vec<String>>);

impl Unit {
    fn read(root: &Path) -> Self {
        let text = std::fs::read_to_string(root.join(UNIT)).unwrap();
        let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
            } else if let Some((key, value)) = line.split_once('=').filter(|_| in_service) {
                if !line.starts_with('#') {
                    settings.entry(key.into()).or_default().push(value.into());
                }
            }
        }
        Self(settings)
    }

    fn all(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    fn one(&self, key: &str) -> &str {
        match self.all(key) {
            [value] => value,
            other => panic!("the unit has {} {key}= lines, not one", other.len()),
        }
    }

    /// A capability list in setpriv's spelling: `+bpf,+net_admin,...`.
    fn caps(&self, key: &str) -> String {
        self.one(key)
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A uid for the unit's user: its own if this host has it (the package installed), else
/// one no account here has, which is all that user is (a system user with no rights).
fn service_uid(user: &str) -> u32 {
    if let Ok(output) = run(Command::new("id").args(["-u", user])) {
        return String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap();
    }
    (61000..62000)
        .find(|uid| {
            // SAFETY: getpwuid returns a static record or null; only its nullness is read.
            unsafe { libc::getpwuid(*uid).is_null() && libc::getgrgid(*uid).is_null() }
        })
        .expect("a free uid")
}

/// The installed binary started the way the unit starts it, in the lab's server
/// namespace: its ExecStart= as written, no argument added, so that it reads the installed
/// configuration at DEFAULT_CONFIG and pins in DEFAULT_PIN_DIR, as under systemd.
///
/// systemd does, and so does this: the ExecStartPre=+ commands as root, on the host, where
/// the unit's pin directory is the lab's; the RuntimeDirectory= (RECORD_DIR) fresh and the
/// user's; the private /sys/fs/bpf (TemporaryFileSystem=) with only that directory bound
/// into it at DEFAULT_PIN_DIR (BindPaths=); then User=, Group= (no supplementary groups),
/// CapabilityBoundingSet=, AmbientCapabilities=, NoNewPrivileges= and an environment of
/// PATH, the user's names and NOTIFY_SOCKET only. The rest of the sandbox (ProtectSystem=
/// and friends) only takes away. The host's /etc stays as it is: in the private mount
/// namespace, /etc is an overlay of it that has a directory for the installed root's
/// configuration directory to be bound on.
fn start_as_the_unit(
    lab: &Lab,
    root: &Path,
    unit: &Unit,
    uid: u32,
    notify: &Path,
    log: &Path,
) -> Child {
    let pin_dir = lab.pin_dir.to_string_lossy().into_owned();
    let user = unit.one("User");
    assert_eq!(unit.one("Group"), user);
    // The unit's pin directory is the loader's default; the lab's stands for it on the host.
    assert_eq!(unit.one("BindPaths"), DEFAULT_PIN_DIR);
    assert_eq!(unit.one("TemporaryFileSystem"), "/sys/fs/bpf");
    assert_eq!(
        Path::new(RECORD_DIR).file_name().unwrap(),
        unit.one("RuntimeDirectory")
    );
    for pre in unit.all("ExecStartPre") {
        let command = pre
            .strip_prefix('+')
            .unwrap_or_else(|| panic!("ExecStartPre={pre} is not run as root"))
            .replace(DEFAULT_PIN_DIR, &pin_dir)
            .replace(user, &uid.to_string());
        let words: Vec<&str> = command.split_whitespace().collect();
        run(Command::new(words[0]).args(&words[1..])).unwrap();
    }
    let exec: Vec<&str> = unit.one("ExecStart").split_whitespace().collect();
    let stage = lab.file("pin-stage");
    std::fs::create_dir_all(&stage).unwrap();
    let config_dir = Path::new(DEFAULT_CONFIG).parent().unwrap();
    let etc_layer = lab.file("etc-layer");
    std::fs::create_dir_all(etc_layer.join(config_dir.strip_prefix("/etc").unwrap())).unwrap();
    let mounts = format!(
        r#"set -e
mount -t tmpfs -o mode=0755 tmpfs {RECORD_DIR} && chown {uid}:{uid} {RECORD_DIR}
mount --bind "$PIN_DIR" "$STAGE"
mount -t tmpfs -o mode=0755 tmpfs /sys/fs/bpf
mkdir {DEFAULT_PIN_DIR} && mount --move "$STAGE" {DEFAULT_PIN_DIR}
mount -t overlay overlay -o "lowerdir=$ETC_LAYER:/etc" /etc
mount --bind "$CONFIG_DIR" {config_dir}
exec "$@""#,
        config_dir = config_dir.display()
    );
    // The mount point of the runtime directory; systemd makes it as root.
    std::fs::create_dir_all(RECORD_DIR).unwrap();
    let log = std::fs::File::create(log).unwrap();
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", lab.server_ns))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(mounts)
        .arg("sh")
        .arg("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(format!(
            "--bounding-set=-all,{}",
            unit.caps("CapabilityBoundingSet")
        ))
        .arg(format!("--inh-caps={}", unit.caps("AmbientCapabilities")))
        .arg(format!(
            "--ambient-caps={}",
            unit.caps("AmbientCapabilities")
        ));
    assert_eq!(unit.one("NoNewPrivileges"), "yes");
    command.arg("--no-new-privs");
    command
        .arg("env")
        .arg("-i")
        .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(format!("USER={user}"))
        .arg(format!("LOGNAME={user}"))
        .arg("HOME=/nonexistent")
        .arg(format!("RUNTIME_DIRECTORY={RECORD_DIR}"))
        .arg(format!("NOTIFY_SOCKET={}", notify.display()))
        .arg(root.join(exec[0].trim_start_matches('/')))
        .args(&exec[1..])
        .env("PIN_DIR", &pin_dir)
        .env("STAGE", &stage)
        .env("ETC_LAYER", &etc_layer)
        .env("CONFIG_DIR", config(root).parent().unwrap())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    command.spawn().unwrap()
}

/// The notifications a `Type=notify` service sends, received as systemd does.
struct NotifySocket(UnixDatagram);

impl NotifySocket {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        // The service's user sends to it.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
        Self(socket)
    }

    /// The next message, within `limit`.
    fn next(&self, limit: Duration) -> Option<String> {
        self.0.set_read_timeout(Some(limit)).unwrap();
        let mut buffer = [0; 4096];
        let len = self.0.recv(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..len]).into_owned())
    }

    /// Messages until one has a line starting with `wanted`: all of them, in order.
    fn until(&self, wanted: &str, limit: Duration, process: &mut Child, log: &Path) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut messages = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let status = process.try_wait().unwrap();
            assert!(
                status.is_none() && !left.is_zero(),
                "no {wanted} (got {messages:?}; the loader {}): {}",
                status.map_or("runs".to_owned(), |s| format!("exited {s}")),
                std::fs::read_to_string(log).unwrap_or_default()
            );
            if let Some(message) = self.next(left.min(Duration::from_secs(1))) {
                let done = message.lines().any(|line| line.starts_with(wanted));
                messages.push(message);
                if done {
                    return messages;
                }
            }
        }
    }
}

/// The process's own view of who it is: `Uid`, `CapEff`, `CapBnd`, `NoNewPrivs` ... from
/// /proc/PID/status.
fn proc_status(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// What the unit needs started from a fresh install: the lab's notify socket, the unit
/// read, its user's uid.
struct Service {
    root: PathBuf,
    unit: Unit,
    uid: u32,
    systemd: NotifySocket,
    log: PathBuf,
}

impl Service {
    fn install(lab: &Lab) -> Self {
        let root = install(lab);
        let unit = Unit::read(&root);
        let uid = service_uid(unit.one("User"));
        Self {
            systemd: NotifySocket::bind(&lab.file("notify")),
            log: lab.file("service.log"),
            root,
            unit,
            uid,
        }
    }

    /// `systemctl start ftp-tracker`, as far as the loader can tell.
    fn start(&self, lab: &Lab) -> Running {
        Running(start_as_the_unit(
            lab,
            &self.root,
            &self.unit,
            self.uid,
            &lab.file("notify"),
            &self.log,
        ))
    }

    /// What the loader wrote to stdout and stderr (the journal, under systemd).
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Started right after the install, before the admin named an interface in the shipped
/// configuration: it says so in one sentence, exits 1 (a failed start) and was never
/// ready.
#[test]
fn with_the_shipped_configuration_the_unit_says_to_name_the_interfaces() {
    let lab = lab("unnamed");
    let service = Service::install(&lab);
    let mut loader = service.start(&lab);
    wait_within("the loader to exit", LIMIT, || {
        Ok(loader.0.try_wait()?.is_some())
    })
    .unwrap();
    let exit = loader.0.wait().unwrap();
    assert_eq!(exit.code(), Some(1), "{exit}: {}", service.log());
    assert_eq!(
        service.log(),
        format!(
            "ftp-loader: no interface to guard: name them on the command line (`ftp-loader run eth0`) or as `interfaces = [\"eth0\"]` in {DEFAULT_CONFIG}\n"
        )
    );
    assert_eq!(service.systemd.next(Duration::from_millis(100)), None);
}

/// A port in the guarded range that the configuration never opens, with a listener: what
/// the guard must close until SIGTERM detaches it.
const GUARDED: u16 = UNANNOUNCED + 1;

/// The live expectations as `ftp-loader expectations --json` lists them, less their
/// remaining time.
fn expectations(lab: &Lab) -> Vec<serde_json::Value> {
    let mut list = lab.loader_json("expectations").unwrap();
    let list = list.as_array_mut().unwrap();
    for entry in list.iter_mut() {
        entry.as_object_mut().unwrap().remove("expires_in_secs");
    }
    list.clone()
}

#[test]
fn started_as_the_unit_starts_it_the_binary_is_ready_once_guarding_and_reloads() {
    let mut lab = lab("unit");
    lab.start_listener(UNANNOUNCED).unwrap();
    let _guarded = in_netns(&lab.server_ns, || {
        Ok(TcpListener::bind((SERVER_IP, GUARDED))?)
    })
    .unwrap();
    // A control connection open before the start, for the service's user to adopt.
    Server::Vsftpd.start(&mut lab).unwrap();
    let mut ftp = in_netns(&lab.client_ns, || Ftp::open(ftp::TIMEOUT)).unwrap();
    let reachable = |port| {
        lab.client_connects(IpAddr::from(SERVER_IP), port, Duration::from_millis(500))
            .unwrap()
    };
    let service = Service::install(&lab);
    // The admin names the interface in the installed configuration, and nothing else.
    edit_config(
        &service.root,
        "interfaces = []",
        &format!("interfaces = [\"{SERVER_IF}\"]"),
    );
    let mut loader = service.start(&lab);
    let systemd = &service.systemd;
    let log = &service.log;
    let service_log = || service.log();

    // Verifying the programs takes seconds, more on a machine running tests in parallel.
    let messages = systemd.until("READY=1", LIMIT, &mut loader.0, log);
    // Ready means guarding: the unannounced listener is closed at once.
    assert!(
        !lab.unannounced_reachable(),
        "READY=1 before the guard was attached:\n{}",
        service_log()
    );
    let ready = messages.last().unwrap();
    assert!(
        ready.contains("STATUS=guarding: "),
        "READY=1 without the counters' status: {ready:?}"
    );
    // It read the installed configuration at the default path, and pinned in the default
    // directory.
    for line in [
        format!("configuration: {DEFAULT_CONFIG} "),
        format!("`ftp-loader stats --pin-dir {DEFAULT_PIN_DIR}`"),
    ] {
        assert!(service_log().contains(&line), "{line}: {}", service_log());
    }
    // As that user it found the open control connection among the host's sockets
    // (sock_diag).
    assert!(
        service_log().contains("adopted 1 control connection(s)"),
        "{}",
        service_log()
    );
    // It is who the unit says.
    let status = proc_status(loader.0.id());
    assert!(
        status["Uid"]
            .split_whitespace()
            .all(|id| id == service.uid.to_string()),
        "{status:?}"
    );
    assert_eq!(status["NoNewPrivs"], "1");
    // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39), and nothing else.
    let caps = format!("{:016x}", 1u64 << 12 | 1 << 38 | 1 << 39);
    assert_eq!(status["CapEff"], caps, "{status:?}");
    assert_eq!(status["CapBnd"], caps, "{status:?}");
    // Its pins are the host's (the lab's directory, bound at the default path), where
    // `ftp-loader stats` finds them and sees it alive.
    let counters = lab.stats().unwrap();
    assert!(counters["unsolicited_dropped"] >= 1, "{counters:?}");
    // The adopted control connection announces: an expectation.
    ftp.log_in().unwrap();
    let announced = ftp.pasv().unwrap();
    let before = expectations(&lab);
    assert!(
        before.len() == 1 && before[0]["port"] == announced.port(),
        "{announced}: {before:?}"
    );

    // The admin opens the unannounced listener in the configuration, and
    // `systemctl reload` (ExecReload=): RELOADING=1, then READY=1, still guarding.
    edit_config(
        &service.root,
        "# allow-port = []",
        &format!("allow-port = [{UNANNOUNCED}]"),
    );
    assert_eq!(service.unit.one("ExecReload"), "/bin/kill -HUP $MAINPID");
    let counters = lab.stats().unwrap();
    // SAFETY: signalling our own child (setpriv and the rest exec'd into the loader).
    unsafe { libc::kill(loader.0.id() as i32, libc::SIGHUP) };
    let messages = systemd.until("READY=1", LIMIT, &mut loader.0, log);
    let reloading = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {messages:?}"));
    assert!(
        messages[reloading].contains("MONOTONIC_USEC="),
        "{messages:?}"
    );
    assert!(loader.0.try_wait().unwrap().is_none(), "{}", service_log());
    let applied = format!("SIGHUP: applied {DEFAULT_CONFIG}: allow-port (none) -> {UNANNOUNCED}");
    assert!(service_log().contains(&applied), "{}", service_log());
    // The setting changed: the listener is open, the rest of the range still guarded.
    assert!(reachable(UNANNOUNCED), "{}", service_log());
    assert!(!reachable(GUARDED), "{}", service_log());
    // And no state was lost: the expectation is still there, and still admits its data
    // connection.
    assert_eq!(expectations(&lab), before);
    let after = lab.stats().unwrap();
    for counter in ["expectations_created", "flows_tracked"] {
        assert_eq!(after[counter], counters[counter], "{counter}");
    }
    let blob = in_netns(&lab.client_ns, || ftp.retr_from(announced, BLOB_PATH)).unwrap();
    assert!(blob == lab.blob().unwrap(), "the download differs");
    let counters = lab.stats().unwrap();
    assert_eq!(counters["flows_tracked"], after["flows_tracked"] + 1);

    // STATUS= is refreshed from the live counters: the attempts on the unannounced
    // listener, the announcement and the download since READY=1 show.
    let limit = notify::STATUS_INTERVAL + Duration::from_secs(5);
    let messages = systemd.until("STATUS=", limit, &mut loader.0, log);
    let status = messages.last().unwrap();
    let figures = format!(
        "guarding: {} data connections announced, {} admitted, {} unannounced SYNs dropped",
        counters["expectations_created"],
        counters["flows_tracked"],
        counters["unsolicited_dropped"]
    );
    assert!(status.contains(&figures), "{status:?}: not {figures}");
    assert!(counters["unsolicited_dropped"] >= 1, "{counters:?}");

    // `systemctl stop`: STOPPING=1, a clean exit, the guard detached and the pins gone.
    // SAFETY: as above.
    unsafe { libc::kill(loader.0.id() as i32, libc::SIGTERM) };
    systemd.until("STOPPING=1", LIMIT, &mut loader.0, log);
    wait_within("the loader to exit", LIMIT, || {
        Ok(loader.0.try_wait()?.is_some())
    })
    .unwrap();
    let exit = loader.0.wait().unwrap();
    assert!(exit.success(), "it ended with {exit}: {}", service_log());
    assert!(reachable(GUARDED), "still guarded after the stop");
    let pins: Vec<_> = std::fs::read_dir(&lab.pin_dir)
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
        .unwrap_or_default();
    assert!(pins.is_empty(), "pins left after the stop: {pins:?}");
}
