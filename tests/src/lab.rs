//! The classic two-host FTP lab: a server host (running one of the FTP servers of
//! [`crate::servers`], with a passive port range) and a client host, joined by a veth pair,
//! each in a network namespace of its own, both reachable over IPv4 and IPv6. No netfilter
//! rule or helper exists in either namespace: ftp-loader alone guards the server. The same
//! hosts may instead be joined through a router doing 1:1 NAT ([`Lab::behind_nat`], in
//! [`crate::nat`]).
//!
//! Names are unique per process and lab, and `Drop` removes everything the lab made (the
//! processes, the namespaces with their veth pair, the pin directory, the files), also when
//! a test fails halfway.

use std::{
    collections::BTreeMap,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::servers::{Server, Tls};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const SERVER_IF: &str = "srv0";
pub const CLIENT_IF: &str = "cli0";
pub const PASSIVE_PORTS: (u16, u16) = (10000, 10500);
/// The file every lab serves, at ftp://192.0.2.1/pub/blob.
pub const BLOB_PATH: &str = "pub/blob";
const BLOB_SIZE: usize = 2 << 20;

pub use ftp_ebpf_common::addr::Family;

/// The lab's addresses in each family.
pub trait LabAddrs {
    fn server_ip(self) -> IpAddr;
    fn client_ip(self) -> IpAddr;
}

impl LabAddrs for Family {
    fn server_ip(self) -> IpAddr {
        match self {
            Self::V4 => SERVER_IP.into(),
            Self::V6 => SERVER_IP6.into(),
        }
    }

    fn client_ip(self) -> IpAddr {
        match self {
            Self::V4 => CLIENT_IP.into(),
            Self::V6 => CLIENT_IP6.into(),
        }
    }
}

static LABS: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub server_ns: String,
    pub client_ns: String,
    pub pin_dir: PathBuf,
    id: String,
    /// The server's IPv4 address as the client reaches it: its own, or behind NAT the
    /// public one.
    pub(crate) server_v4: Ipv4Addr,
    /// The server host's own IPv4 address, where the servers listen: [`SERVER_IP`], except
    /// in the gateway lab ([`crate::gateway`]), whose placements give it another.
    pub(crate) server_own_v4: Ipv4Addr,
    /// The namespace the loader runs in: the server's, unless a test guards another host.
    loader_ns: String,
    /// The router's namespace, in a lab behind NAT ([`Lab::behind_nat`]).
    pub router_ns: Option<String>,
    /// Namespaces a test added (`add_namespace`), removed with the lab's own.
    extra_ns: Vec<String>,
    /// BPF filesystems a test mounted (`mount_bpffs`), unmounted with the lab.
    mounts: Vec<PathBuf>,
    dir: PathBuf,
    loader_bin: PathBuf,
    loader: Option<Child>,
    others: Vec<Child>,
}

/// Runs a command, failing with its output when it fails.
pub fn run(command: &mut Command) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// Runs a command to its end, or kills it after `limit` so that a peer stuck on a dropped
/// connection cannot hang a test; its exit status is the caller's to judge.
pub fn output_within(command: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, to be killed whole: whatever it starts holds its pipes too.
        .process_group(0)
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    // Drained while it runs: a chatty program would otherwise block on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            // SAFETY: signalling the process group of our own child, not yet reaped.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().expect("stdout reader panicked");
    let stderr = stderr.join().expect("stderr reader panicked");
    let Some(status) = status else {
        bail!(
            "{:?} did not finish within {limit:?}: {}",
            command.get_program(),
            last_lines(&stderr, 3)
        );
    };
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// The last `count` non-empty lines of a program's output, on one line: enough to say why
/// it failed in a table or an assertion message.
pub fn last_lines(output: &[u8], count: usize) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
}

/// The ftp-loader binary next to the running test executable (target/<profile>/), which
/// `cargo xtask test` builds before running the tests.
pub fn default_loader_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("ftp-loader")
}

impl Lab {
    /// Builds the namespaces, the veth pair and the served files.
    pub fn new(tag: &str, loader_bin: &Path) -> Result<Self> {
        let lab = Self::unlinked(tag, loader_bin)?;
        lab.add_link()?;
        Ok(lab)
    }

    /// The namespaces and the served files, not yet joined by any link.
    pub(crate) fn unlinked(tag: &str, loader_bin: &Path) -> Result<Self> {
        ensure!(
            loader_bin.exists(),
            "{} does not exist: build it with `cargo build -p ftp-loader` (cargo xtask test does)",
            loader_bin.display()
        );
        let id = format!(
            "ftpt-{}-{}-{tag}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&id);
        let server_ns = format!("{id}-srv");
        let mut lab = Self {
            loader_ns: server_ns.clone(),
            server_ns,
            client_ns: format!("{id}-cli"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{id}")),
            server_v4: SERVER_IP,
            server_own_v4: SERVER_IP,
            router_ns: None,
            id,
            extra_ns: Vec::new(),
            mounts: Vec::new(),
            dir,
            loader_bin: loader_bin.to_owned(),
            loader: None,
            others: Vec::new(),
        };
        // From here on, Drop cleans up whatever part was made.
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        run(Command::new("ip").args(["netns", "add", &self.server_ns]))?;
        run(Command::new("ip").args(["netns", "add", &self.client_ns]))?;
        let pub_dir = self.ftp_root().join("pub");
        std::fs::create_dir_all(&pub_dir)?;
        std::fs::write(self.ftp_root().join(BLOB_PATH), random_bytes(BLOB_SIZE))?;
        // vsftpd refuses an anonymous root the ftp user may write to; the files must be
        // readable by it.
        run(Command::new("chmod")
            .args(["-R", "a+rX,go-w"])
            .arg(&self.dir))?;
        Ok(())
    }

    /// Creates the veth pair between the namespaces, addressed in both families and up:
    /// when the lab is made, and again by a test that deleted it.
    pub fn add_link(&self) -> Result<()> {
        veth((&self.server_ns, SERVER_IF), (&self.client_ns, CLIENT_IF))?;
        for (ns, interface, ip, ip6) in [
            (&self.server_ns, SERVER_IF, SERVER_IP, SERVER_IP6),
            (&self.client_ns, CLIENT_IF, CLIENT_IP, CLIENT_IP6),
        ] {
            bring_up(ns, interface, &[format!("{ip}/24"), format!("{ip6}/64")])?;
        }
        Ok(())
    }

    /// Creates one more network namespace, named after the lab and `role`, which is removed
    /// with the lab.
    pub fn add_namespace(&mut self, role: &str) -> Result<String> {
        let ns = format!("{}-{role}", self.id);
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        self.extra_ns.push(ns.clone());
        Ok(ns)
    }

    /// Gives the client host one more IPv4 address on its veth (in the lab's /24): a second
    /// client, as far as the server can tell. Goes with the namespace.
    pub fn add_client_address(&self, ip: Ipv4Addr) -> Result<()> {
        run(self
            .client("ip")
            .args(["addr", "add", &format!("{ip}/24"), "dev", CLIENT_IF]))?;
        Ok(())
    }

    /// Mounts a BPF filesystem of its own at the lab's `name`, open to every user (mode
    /// 0755) unlike the usual /sys/fs/bpf, and unmounted with the lab.
    pub fn mount_bpffs(&mut self, name: &str) -> Result<PathBuf> {
        let dir = self.file(name);
        std::fs::create_dir_all(&dir)?;
        run(Command::new("mount")
            .args(["-t", "bpf", "-o", "mode=0755", "bpf"])
            .arg(&dir))?;
        self.mounts.push(dir.clone());
        Ok(dir)
    }

    pub fn ftp_root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// A path for the test's own files, removed with the lab.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn blob(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.ftp_root().join(BLOB_PATH))?)
    }

    /// A command run inside the server's network namespace.
    pub fn server(&self, program: &str) -> Command {
        netns(&self.server_ns, program)
    }

    /// A command run inside the client's network namespace.
    pub fn client(&self, program: &str) -> Command {
        netns(&self.client_ns, program)
    }

    /// The configuration file a test writes for the loader (`--config`).
    pub fn config_path(&self) -> PathBuf {
        self.file("ftp-tracker.toml")
    }

    pub fn write_config(&self, text: &str) -> Result<()> {
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// Sends SIGHUP and returns the loader's line about it, once written.
    pub fn reload(&self) -> Result<String> {
        let before = self.loader_log().matches("SIGHUP: ").count();
        self.signal_loader(libc::SIGHUP)?;
        wait_for("the loader to answer SIGHUP", || {
            Ok(self.loader_log().matches("SIGHUP: ").count() > before)
        })?;
        let log = self.loader_log();
        let line = log
            .lines()
            .rfind(|line| line.contains("SIGHUP: "))
            .unwrap_or_default();
        // Shown with the test's output if it fails.
        eprintln!("{line}");
        Ok(line.to_owned())
    }

    /// Starts ftp-loader on the server's interface and waits until its maps are pinned.
    pub fn start_loader(&mut self, extra_args: &[&str]) -> Result<()> {
        self.start_loader_on(&[SERVER_IF], extra_args)
    }

    /// As `start_loader`, on `interfaces` (none: those of the configuration file that
    /// `extra_args` names).
    pub fn start_loader_on(&mut self, interfaces: &[&str], extra_args: &[&str]) -> Result<()> {
        self.spawn_loader(&self.server_ns.clone(), interfaces, extra_args, &[])
    }

    /// As `start_loader_on`, in the network namespace `ns`: to guard another host than the
    /// server (the client, for its active-mode data connections). The admin commands
    /// (`stats`, `unload`) then run there too.
    pub fn start_loader_in(
        &mut self,
        ns: &str,
        interfaces: &[&str],
        extra_args: &[&str],
    ) -> Result<()> {
        self.spawn_loader(ns, interfaces, extra_args, &[])
    }

    /// As `start_loader`, with these environment variables set for the loader.
    pub fn start_loader_with_env(
        &mut self,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        self.spawn_loader(&self.server_ns.clone(), &[SERVER_IF], extra_args, env)
    }

    fn spawn_loader(
        &mut self,
        ns: &str,
        interfaces: &[&str],
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        ensure!(self.loader.is_none(), "the loader already runs");
        ns.clone_into(&mut self.loader_ns);
        // Truncated, not replaced, if it exists: a test may have taken its inode.
        let log = std::fs::File::create(self.loader_log_path())?;
        let child = nsenter(&self.loader_ns, &self.loader_bin)
            .envs(env.iter().copied())
            .args(interfaces)
            .arg("--data-ports")
            .arg(format!("{}-65535", 1024))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting ftp-loader")?;
        self.loader = Some(child);
        let log = self.loader_log_path();
        let loader = &mut self.loader;
        // Its tables may be pinned already (by a predecessor): it is ready once it has
        // attached to its interface and says how to stop it. Verifying the programs takes
        // seconds, more on a loaded machine running tests in parallel.
        // Generous: under software emulation (the qemu kernels) verifying the programs alone
        // takes most of a minute.
        wait_within("ftp-loader to attach", Duration::from_secs(180), || {
            if let Some(Ok(Some(status))) = loader.as_mut().map(Child::try_wait) {
                return Err(anyhow::anyhow!("ftp-loader exited early ({status})"));
            }
            Ok(std::fs::read_to_string(&log).is_ok_and(|l| l.contains("stop with Ctrl-C")))
        })
        .with_context(|| format!("ftp-loader log:\n{}", self.loader_log()))
    }

    /// Kills the loader as a crash would (SIGKILL): nothing of it runs any more.
    pub fn kill_loader(&mut self) -> Result<()> {
        let mut child = self.loader.take().context("the loader does not run")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Signals the running loader.
    pub fn signal_loader(&self, signal: i32) -> Result<()> {
        let child = self.loader.as_ref().context("the loader does not run")?;
        // SAFETY: signalling our own child.
        let sent = unsafe { libc::kill(child.id() as i32, signal) };
        ensure!(
            sent == 0,
            "signalling ftp-loader: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Waits for the loader to exit by itself and returns how it did.
    pub fn wait_loader(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.loader.take().context("the loader does not run")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("ftp-loader did not exit within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `ftp-loader <args> --pin-dir <the lab's>` run from another process as an admin
    /// would, whatever its exit status.
    pub fn loader_command(&self, args: &[&str]) -> Result<Output> {
        Ok(self.loader_process(args).output()?)
    }

    /// `ftp-loader <args> --pin-dir <the lab's>` in the loader's namespace (the server's,
    /// unless `start_loader_in` said otherwise), to run as an admin would from another
    /// process (or to keep running, as `events` does).
    pub fn loader_process(&self, args: &[&str]) -> Command {
        let mut command = nsenter(&self.loader_ns, &self.loader_bin);
        command.args(args).arg("--pin-dir").arg(&self.pin_dir);
        command
    }

    pub fn loader_log(&self) -> String {
        std::fs::read_to_string(self.loader_log_path()).unwrap_or_default()
    }

    /// The file the loader's stdout and stderr go to.
    pub fn loader_log_path(&self) -> PathBuf {
        self.dir.join("loader.log")
    }

    /// Stops the loader the way an admin does (SIGTERM) and returns how it exited.
    pub fn stop_loader(&mut self) -> Result<std::process::ExitStatus> {
        self.signal_loader(libc::SIGTERM)?;
        self.wait_loader()
    }

    /// The running loader's counters, read as an admin would, from another process.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>> {
        self.loader_json("stats")?
            .as_object()
            .context("stats --json is not an object")?
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    v.as_u64().context("a counter is not an integer")?,
                ))
            })
            .collect()
    }

    /// A lab guarding vsftpd, with a plain listener on `UNANNOUNCED` that nothing
    /// announces: what a forgery or a failure must never make reachable.
    pub fn guarded(tag: &str) -> Lab {
        Self::guarded_serving(tag, None)
    }

    /// As `guarded`, with vsftpd speaking FTPS as `tls` says.
    pub fn guarded_tls(tag: &str, tls: Tls) -> Lab {
        Self::guarded_serving(tag, Some(tls))
    }

    fn guarded_serving(tag: &str, tls: Option<Tls>) -> Lab {
        crate::require_root();
        let mut lab = Lab::new(tag, &default_loader_bin()).expect("lab");
        match tls {
            None => Server::Vsftpd.start(&mut lab),
            Some(tls) => Server::Vsftpd.start_tls(&mut lab, tls),
        }
        .unwrap();
        lab.start_listener(UNANNOUNCED).unwrap();
        lab.start_loader(&[]).unwrap();
        lab
    }

    /// Whether the client can connect to the listener on `UNANNOUNCED` (a dropped SYN
    /// makes the attempt time out).
    pub fn unannounced_reachable(&self) -> bool {
        self.client_connects(
            self.server_addr(Family::V4),
            UNANNOUNCED,
            Duration::from_millis(500),
        )
        .unwrap()
    }

    /// The server's address in `family` as the client reaches it: the server's own
    /// ([`LabAddrs::server_ip`]), except behind NAT, where IPv4 goes through the public one.
    pub fn server_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.server_v4.into(),
            Family::V6 => family.server_ip(),
        }
    }

    /// The server host's own address in `family`, where the servers listen: the lab's
    /// ([`LabAddrs::server_ip`]), except that the gateway lab gives it another IPv4 address.
    pub fn server_own(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.server_own_v4.into(),
            Family::V6 => family.server_ip(),
        }
    }

    /// [`Lab::server_addr`] as it goes into a URL's host part.
    pub fn server_host(&self, family: Family) -> String {
        match self.server_addr(family) {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        }
    }

    /// Starts a plain TCP listener (an HTTP server) on the server's `port`, kept until the
    /// lab is dropped, and waits until it listens.
    pub fn start_listener(&mut self, port: u16) -> Result<()> {
        let child = self
            .server("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                &SERVER_IP.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 -m http.server")?;
        self.others.push(child);
        // Python takes seconds to start on a loaded machine, tens of them under the
        // software emulation of `cargo xtask test --kernel`.
        wait_within(
            &format!("a listener on port {port}"),
            Duration::from_secs(60),
            || self.server_listens(port),
        )
    }

    /// Whether a TCP listener is bound to `port` on the server.
    pub fn server_listens(&self, port: u16) -> Result<bool> {
        let output = run(self
            .server("ss")
            .args(["-Hltn", &format!("sport = :{port}")]))?;
        Ok(!output.stdout.is_empty())
    }

    /// Whether the client can open a TCP connection to the server's `ip`:`port` within
    /// `timeout` (a dropped SYN makes it time out).
    pub fn client_connects(&self, ip: IpAddr, port: u16, timeout: Duration) -> Result<bool> {
        in_netns(&self.client_ns, || {
            Ok(TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout).is_ok())
        })
    }

    /// Keeps a process running until the lab is dropped, then kills it.
    pub fn keep(&mut self, child: Child) {
        self.others.push(child);
    }

    /// Runs `ftp-loader <subcommand> --json` against the running loader.
    pub fn loader_json(&self, subcommand: &str) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.loader_report(&[subcommand, "--json"])?,
        )?)
    }

    /// What `ftp-loader <args> --pin-dir <the lab's>` prints about the running loader, run
    /// from another process as an admin would.
    pub fn loader_report(&self, args: &[&str]) -> Result<String> {
        let output = run(&mut self.loader_process(args))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// A port in the guarded range where `Lab::guarded` keeps a plain listener.
pub const UNANNOUNCED: u16 = 10250;

/// Polls `ready` for up to 10 s.
pub fn wait_for(what: &str, ready: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_within(what, Duration::from_secs(10), ready)
}

/// Polls `ready` for up to `limit`.
pub fn wait_within(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !ready()? {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut loader) = self.loader.take() {
            let _ = loader.kill();
            let _ = loader.wait();
        }
        for mut child in self.others.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed loader leaves its guard attached and its record behind: unload removes
        // both (the attachments would go with the namespace, the record would not).
        let _ = nsenter(&self.loader_ns, &self.loader_bin)
            .args(["unload", "--pin-dir"])
            .arg(&self.pin_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Deleting a namespace also deletes its veth end, and with it the pair; a killed
        // loader's links go with its interface.
        for ns in [&self.server_ns, &self.client_ns]
            .into_iter()
            .chain(&self.extra_ns)
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for mount in &self.mounts {
            let _ = Command::new("umount").arg(mount).status();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ip netns exec`: the command also gets a fresh /sys, which is all a server or client
/// needs.
/// Makes namespace `router` forward both families, and gives each (host namespace,
/// `-4` or `-6`, address) in `routes` its default route via that router address: the
/// routers of the NAT labs.
pub fn route_through(router: &str, routes: &[(&str, &str, String)]) -> Result<()> {
    for (host, family, via) in routes {
        run(Command::new("ip").args([*family, "-n", host, "route", "add", "default", "via", via]))?;
    }
    run(netns(router, "sysctl").args([
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
    ]))?;
    Ok(())
}

pub fn netns(ns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]);
    command
}

/// Creates a veth pair with one end in each namespace.
pub(crate) fn veth((ns, interface): (&str, &str), (peer_ns, peer): (&str, &str)) -> Result<()> {
    run(Command::new("ip").args([
        "link", "add", interface, "netns", ns, "type", "veth", "peer", "name", peer, "netns",
        peer_ns,
    ]))?;
    Ok(())
}

/// Gives `interface` in `ns` these addresses (`ADDRESS/PREFIX`, of either family) and
/// brings it and the namespace's loopback up.
pub(crate) fn bring_up(ns: &str, interface: &str, addresses: &[String]) -> Result<()> {
    for address in addresses {
        let mut command = Command::new("ip");
        command.args(["-n", ns, "addr", "add", address, "dev", interface]);
        // Without nodad an IPv6 address stays tentative (unusable) for a second or two of
        // duplicate address detection, on a link where no duplicate can exist.
        if address.contains(':') {
            command.arg("nodad");
        }
        run(&mut command)?;
    }
    run(Command::new("ip").args(["-n", ns, "link", "set", interface, "up"]))?;
    run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
    Ok(())
}

/// `nsenter --net`: switches only the network namespace, so the shared bpffs (and the
/// loader's pins) stay visible.
pub fn nsenter(ns: &str, program: &Path) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net=/run/netns/{ns}")).arg(program);
    command
}

/// Runs `f` on a thread that has joined the namespace, so sockets it opens live there.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: setns on this thread only, with a namespace fd we own.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                };
                ensure!(rc == 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread panicked")
    })
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A process killed when dropped, so that a failed test leaves no loader running.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
