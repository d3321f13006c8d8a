//! The real FTP servers a lab can run: each serves the lab's FTP root anonymously and
//! read-only, on port 21 of both server addresses (192.0.2.1 and 2001:db8::1), with its
//! passive ports in [`PASSIVE_PORTS`], in the foreground, and is killed with the lab.

use std::{
    fmt,
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::lab::{Family, Lab, LabAddrs, PASSIVE_PORTS, SERVER_IP, SERVER_IP6, wait_for};

/// Where `cargo xtask setup` unpacks the daemons it cannot install: their Debian packages
/// and vsftpd's all provide `ftp-server` and conflict, so apt would remove one to install
/// another.
pub const PEERS_DIR: &str = "/opt/ftp-tracker-peers";

/// (Debian package, its daemon) unpacked under `PEERS_DIR/<package>`. proftpd's daemon is
/// in `proftpd-core`; `proftpd-basic` only depends on it and modules the lab does not use.
pub const UNPACKED: [(&str, &str); 2] = [PROFTPD, PURE_FTPD];
const PROFTPD: (&str, &str) = ("proftpd-core", "usr/sbin/proftpd");
const PURE_FTPD: (&str, &str) = ("pure-ftpd", "usr/sbin/pure-ftpd");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Vsftpd,
    Proftpd,
    PureFtpd,
    Pyftpdlib,
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

const VSFTPD: &str = "/usr/sbin/vsftpd";

/// The directory of the FTP root where [`Server::start_with_scratch`] takes uploads.
pub const SCRATCH_DIR: &str = "scratch";
/// The sparse file in [`SCRATCH_DIR`], as big as the scratch directory.
pub const ZEROS: &str = "zeros";

/// pyftpdlib has no command line for an anonymous server; one process serves every address
/// given (its servers share one I/O loop).
const PYFTPDLIB: &str = r#"
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
root, low, high, addresses = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
authorizer = DummyAuthorizer()
authorizer.add_anonymous(root)
FTPHandler.authorizer = authorizer
FTPHandler.passive_ports = range(low, high + 1)
# No limit of its own on connections (512 by default): a test that opens thousands of idle
# sessions means to meet the guard's limits, not pyftpdlib's.
FTPServer.max_cons = 0
servers = [FTPServer((address, 21), FTPHandler) for address in addresses]
servers[0].serve_forever()
"#;

impl Server {
    pub const ALL: [Self; 4] = [Self::Vsftpd, Self::Proftpd, Self::PureFtpd, Self::Pyftpdlib];

    pub fn name(self) -> &'static str {
        match self {
            Self::Vsftpd => "vsftpd",
            Self::Proftpd => "proftpd",
            Self::PureFtpd => "pure-ftpd",
            Self::Pyftpdlib => "pyftpdlib",
        }
    }

    /// Starts the server in the lab's server namespace and waits until it accepts
    /// connections on port 21 of both addresses.
    pub fn start(self, lab: &mut Lab) -> Result<()> {
        self.start_with(lab, None)
    }

    /// Starts vsftpd with a [`SCRATCH_DIR`] of `bytes` bytes: a tmpfs mounted in the
    /// server's own mount namespace, so that uploads never reach a disk and vanish with the
    /// server, where anonymous users may upload, overwrite and delete, and which holds
    /// [`ZEROS`], a sparse file of `bytes` bytes to download (tmpfs reads a hole from the
    /// zero page: neither the disk nor the page cache is involved). Each vsftpd instance
    /// (one per address family) has a scratch directory of its own.
    pub fn start_with_scratch(self, lab: &mut Lab, bytes: u64) -> Result<()> {
        ensure!(
            self == Self::Vsftpd,
            "only vsftpd is set up to take uploads in the lab"
        );
        std::fs::create_dir_all(lab.ftp_root().join(SCRATCH_DIR))?;
        self.start_with(lab, Some(bytes))
    }

    fn start_with(self, lab: &mut Lab, scratch: Option<u64>) -> Result<()> {
        let root = lab.ftp_root();
        let (low, high) = PASSIVE_PORTS;
        match self {
            Self::Vsftpd => Self::start_vsftpd(lab, "", scratch),
            Self::Proftpd => {
                let binary = unpacked(PROFTPD)?;
                let config = lab.file("proftpd.conf");
                std::fs::write(
                    &config,
                    format!(
                        "ServerType standalone\nUseIPv6 on\nPort 21\n\
                         DefaultAddress {SERVER_IP} {SERVER_IP6}\nSocketBindTight on\n\
                         User nobody\nGroup nogroup\nPassivePorts {low} {high}\n\
                         PidFile {}\nScoreboardFile {}\n\
                         UseReverseDNS off\nDelayEngine off\nWtmpLog off\nTransferLog none\n\
                         AuthPAM off\nUseFtpUsers off\nRequireValidShell off\n\
                         <Anonymous {}>\nUser ftp\nGroup nogroup\nUserAlias anonymous ftp\n\
                         <Limit WRITE>\nDenyAll\n</Limit>\n</Anonymous>\n",
                        lab.file("proftpd.pid").display(),
                        lab.file("proftpd.scoreboard").display(),
                        root.display()
                    ),
                )?;
                let mut command = lab.server(&binary.to_string_lossy());
                command.arg("--nodaemon").arg("--config").arg(&config);
                self.spawn(lab, command, &Family::ALL)
            }
            Self::PureFtpd => {
                let binary = unpacked(PURE_FTPD)?;
                // pure-ftpd serves the home of the user `ftp` to anonymous users and takes
                // no other directory: mount the lab's root there. `ip netns exec` runs the
                // command in a mount namespace of its own, so the host never sees it.
                let mut command = lab.server("sh");
                command
                    .arg("-c")
                    .arg(r#"mount --bind "$0" ~ftp && exec "$@""#)
                    .arg(&root)
                    .arg(&binary)
                    // Anonymous only, uploads refused, passive range, no DNS, no syslog.
                    .args(["-e", "-i", "-H", "-f", "none", "-p"])
                    .arg(format!("{low}:{high}"))
                    // No address: one listener per family, each on all of the namespace's
                    // addresses, which are the lab's.
                    .args(["-S", ",21", "-g"])
                    .arg(lab.file("pure-ftpd.pid"));
                self.spawn(lab, command, &Family::ALL)
            }
            Self::Pyftpdlib => {
                // Debian's python3-pyftpdlib is for Debian's python, maybe not the first
                // python3 on PATH.
                let mut command = lab.server("/usr/bin/python3");
                command
                    .args(["-c", PYFTPDLIB])
                    .arg(&root)
                    .args([low.to_string(), high.to_string()])
                    .args([SERVER_IP.to_string(), SERVER_IP6.to_string()]);
                self.spawn(lab, command, &Family::ALL)
            }
        }
    }

    /// vsftpd, one process per address family, with `extra` configuration lines; with
    /// `scratch`, anonymous uploads go to a tmpfs of that many bytes (see
    /// [`Server::start_with_scratch`]).
    pub fn start_vsftpd(lab: &mut Lab, extra: &str, scratch: Option<u64>) -> Result<()> {
        let root = lab.ftp_root();
        let (low, high) = PASSIVE_PORTS;
        ensure!(
            Path::new(VSFTPD).exists(),
            "{VSFTPD} is missing: `cargo xtask setup` installs vsftpd"
        );
        std::fs::create_dir_all("/var/run/vsftpd/empty")?;
        let uploads = if scratch.is_some() {
            // anon_other_write_enable: DELE, so that an upload's memory is given back as
            // soon as it is measured.
            "write_enable=YES\nanon_upload_enable=YES\nanon_other_write_enable=YES\n"
        } else {
            ""
        };
        // vsftpd listens on one address family per process.
        for family in Family::ALL {
            let listen = match family {
                Family::V4 => format!("listen=YES\nlisten_address={SERVER_IP}\n"),
                Family::V6 => {
                    format!("listen=NO\nlisten_ipv6=YES\nlisten_address6={SERVER_IP6}\n")
                }
            };
            let config = lab.file(&format!("vsftpd-{family}.conf"));
            // connect_from_port_20=NO: with it, back-to-back active transfers fail
            // with `500 OOPS: vsf_sysutil_bind` while the last port-20 socket sits
            // in TIME_WAIT.
            std::fs::write(
                &config,
                format!(
                    "{listen}anonymous_enable=YES\nlocal_enable=NO\nanon_root={}\n\
                     pasv_enable=YES\npasv_min_port={low}\npasv_max_port={high}\n\
                     port_enable=YES\nconnect_from_port_20=NO\nseccomp_sandbox=NO\n\
                     background=NO\nxferlog_enable=NO\nuse_localtime=NO\n{uploads}{extra}",
                    root.display()
                ),
            )?;
            let mut command = match scratch {
                None => lab.server(VSFTPD),
                Some(bytes) => {
                    // `ip netns exec` gives the command a mount namespace of its own: the
                    // tmpfs is invisible to the host and goes with vsftpd.
                    let dir = root.join(SCRATCH_DIR);
                    let mut command = lab.server("sh");
                    command
                        .arg("-c")
                        .arg(r#"mount -t tmpfs -o "size=$1,mode=0777" tmpfs "$2" && truncate -s "$1" "$2/$3" && shift 3 && exec "$@""#)
                        .arg("sh")
                        .arg(bytes.to_string())
                        .arg(&dir)
                        .arg(ZEROS)
                        .arg(VSFTPD);
                    command
                }
            };
            command.arg(&config);
            Self::Vsftpd.spawn(lab, command, &[family])?;
        }
        Ok(())
    }

    /// The server's output (vsftpd says nothing; proftpd and pyftpdlib log every session).
    pub fn log(self, lab: &Lab) -> String {
        std::fs::read_to_string(self.log_path(lab)).unwrap_or_default()
    }

    fn log_path(self, lab: &Lab) -> PathBuf {
        lab.file(&format!("{self}.log"))
    }

    /// Spawns one server process, hands it to the lab, and waits until it accepts
    /// connections on port 21 of the server's address in each of `families`.
    fn spawn(self, lab: &mut Lab, mut command: Command, families: &[Family]) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(lab))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {self}: {command:?}"))?;
        let ready = families.iter().try_for_each(|family| {
            let ip = family.server_ip();
            wait_for(&format!("{self} listening on {ip}:21"), || {
                if let Some(status) = child.try_wait()? {
                    bail!("{self} exited ({status})");
                }
                answers(lab, ip)
            })
        });
        lab.keep(child);
        ready.with_context(|| format!("{self} log:\n{}", self.log(lab)))
    }
}

/// A connection attempt from the client, as the clients will make them: it fails at once
/// while nothing listens (the SYN is answered with a RST).
fn answers(lab: &Lab, ip: IpAddr) -> Result<bool> {
    lab.client_connects(ip, 21, Duration::from_secs(1))
}

/// A daemon that `cargo xtask setup` unpacked under [`PEERS_DIR`].
fn unpacked((package, binary): (&str, &str)) -> Result<PathBuf> {
    let path = unpacked_path(package, binary);
    ensure!(
        path.exists(),
        "{} is missing: `cargo xtask setup` unpacks the Debian package {package} there",
        path.display()
    );
    Ok(path)
}

/// Where the daemon `binary` of `package` is once unpacked.
pub fn unpacked_path(package: &str, binary: &str) -> PathBuf {
    Path::new(PEERS_DIR).join(package).join(binary)
}
