//! The real FTP servers a lab can run: each serves the lab's FTP root anonymously and
//! read-only, on port 21 of both server addresses (192.0.2.1 and 2001:db8::1, or the
//! server's own IPv4 address in the gateway lab: [`Lab::server_own`]), with its
//! passive ports in [`PASSIVE_PORTS`], in the foreground, and is killed with the lab.
//! vsftpd, proftpd and pure-ftpd also speak FTPS (RFC 4217, [`Server::start_tls`]) with a
//! self-signed certificate the lab makes ([`certificate`]).
//!
//! Their configurations (config files, pure-ftpd's options, pyftpdlib's script) are the
//! files in tests/fixtures, with `{placeholders}` for what only a lab knows (its paths);
//! this module only fills them in and runs the servers.

use std::{
    fmt,
    fs::File,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::lab::{Family, Lab, PASSIVE_PORTS, SERVER_IP6, run, wait_for};

/// Where `cargo xtask setup` unpacks the daemons it cannot install (and proftpd's FTPS
/// module, whose package depends on one of them): their Debian packages and vsftpd's all
/// provide `ftp-server` and conflict, so apt would remove one to install another.
pub const PEERS_DIR: &str = "/opt/ftp-tracker-peers";

/// (Debian package, the file the lab needs of it, why) unpacked under
/// `PEERS_DIR/<package>`. proftpd's daemon is in `proftpd-core`; `proftpd-basic` only
/// depends on it and modules the lab does not use, and FTPS's mod_tls is in
/// `proftpd-mod-crypto`, which depends on `proftpd-core` and so is unpacked too.
pub const UNPACKED: [(&str, &str, &str); 3] = [PROFTPD, PROFTPD_TLS, PURE_FTPD];
const PROFTPD: (&str, &str, &str) = (
    "proftpd-core",
    "usr/sbin/proftpd",
    "an FTP server of the interoperability matrix (its package conflicts with vsftpd's)",
);
const PROFTPD_TLS: (&str, &str, &str) = (
    "proftpd-mod-crypto",
    "usr/lib/proftpd/mod_tls.so",
    "proftpd's FTPS module (its package depends on proftpd-core, which conflicts with vsftpd's)",
);
const PURE_FTPD: (&str, &str, &str) = (
    "pure-ftpd",
    "usr/sbin/pure-ftpd",
    "an FTP server of the interoperability matrix (its package conflicts with vsftpd's)",
);

/// The port of FTP's control connections, and of explicit FTPS's.
pub const CONTROL_PORT: u16 = 21;
/// The port of implicit FTPS's control connections (`ftps://`).
pub const IMPLICIT_PORT: u16 = 990;

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

/// How an FTPS session (RFC 4217) is secured: the control connection from `AUTH TLS` or
/// from its first byte, and every data connection protected (`PROT P`) either way. A
/// guard on the path reads none of the PASV, EPSV, PORT or EPRT exchanges, except after
/// CCC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// `AUTH TLS` on port 21; the server refuses a session that does not send it, and
    /// data connections without TLS.
    Explicit,
    /// As `Explicit`, but after logging in the client sends CCC (RFC 4217 section 5)
    /// and the control connection goes on in plaintext, while the data connections stay
    /// protected: what RFC 4217 offers for firewalls and NAT that must read the
    /// announcements. vsftpd has no CCC.
    ExplicitThenClear,
    /// TLS from the first byte, on port 990 (`ftps://`), as before RFC 4217; pure-ftpd
    /// has no implicit FTPS.
    Implicit,
}

impl Tls {
    pub const ALL: [Self; 3] = [Self::Explicit, Self::ExplicitThenClear, Self::Implicit];

    pub fn name(self) -> &'static str {
        match self {
            Self::Explicit => "explicit",
            Self::ExplicitThenClear => "explicit+CCC",
            Self::Implicit => "implicit",
        }
    }

    /// The port the server takes control connections on.
    pub fn port(self) -> u16 {
        match self {
            Self::Explicit | Self::ExplicitThenClear => CONTROL_PORT,
            Self::Implicit => IMPLICIT_PORT,
        }
    }
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

const VSFTPD: &str = "/usr/sbin/vsftpd";

/// The directory of the FTP root where [`Server::start_with_scratch`] takes uploads.
pub const SCRATCH_DIR: &str = "scratch";
/// The sparse file in [`SCRATCH_DIR`], as big as the scratch directory.
pub const ZEROS: &str = "zeros";

/// The servers' configurations, in tests/fixtures; placeholders in braces are filled in by
/// [`fill`].
const VSFTPD_CONF: &str = include_str!("../fixtures/vsftpd.conf");
const VSFTPD_IPV4: &str = include_str!("../fixtures/vsftpd-ipv4.conf");
const VSFTPD_IPV6: &str = include_str!("../fixtures/vsftpd-ipv6.conf");
const VSFTPD_UPLOADS: &str = include_str!("../fixtures/vsftpd-uploads.conf");
const PROFTPD_CONF: &str = include_str!("../fixtures/proftpd.conf");
const PURE_FTPD_OPTIONS: &str = include_str!("../fixtures/pure-ftpd.options");
/// What each server is told to announce its public address with, `{public}`.
const VSFTPD_MASQUERADE: &str = include_str!("../fixtures/vsftpd-masquerade.conf");
const PROFTPD_MASQUERADE: &str = include_str!("../fixtures/proftpd-masquerade.conf");
const PURE_FTPD_MASQUERADE: &str = include_str!("../fixtures/pure-ftpd-masquerade.options");
const PYFTPDLIB: &str = include_str!("../fixtures/pyftpdlib.py");
/// What makes each server speak FTPS ([`Server::start_tls`]), and implicit FTPS.
const VSFTPD_TLS: &str = include_str!("../fixtures/vsftpd-tls.conf");
const VSFTPD_IMPLICIT: &str = include_str!("../fixtures/vsftpd-implicit.conf");
const PROFTPD_TLS_CONF: &str = include_str!("../fixtures/proftpd-tls.conf");
const PROFTPD_IMPLICIT: &str = include_str!("../fixtures/proftpd-implicit.conf");
const PURE_FTPD_TLS: &str = include_str!("../fixtures/pure-ftpd-tls.options");

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
        self.start_with(lab, None, None, None)
    }

    /// As `start`, speaking FTPS as `tls` says, with the lab's [`certificate`]: on port 21
    /// of both addresses, or 990 for implicit FTPS ([`Tls::port`]). Fails at once for a
    /// server that cannot ([`Server::tls_unsupported`]).
    pub fn start_tls(self, lab: &mut Lab, tls: Tls) -> Result<()> {
        if let Some(why) = self.tls_unsupported(tls) {
            bail!("{self} cannot serve {tls} FTPS: {why}");
        }
        self.start_with(lab, None, None, Some(tls))
    }

    /// Why this server cannot serve `tls` FTPS in the lab, if it cannot.
    pub fn tls_unsupported(self, tls: Tls) -> Option<&'static str> {
        match (self, tls) {
            (Self::Pyftpdlib, _) => Some("the lab sets up pyftpdlib for plain FTP only"),
            (Self::Vsftpd, Tls::ExplicitThenClear) => {
                Some("vsftpd has no CCC (it answers `500 Unknown command`)")
            }
            (Self::PureFtpd, Tls::Implicit) => {
                Some("pure-ftpd has no implicit FTPS, only AUTH TLS on its usual port")
            }
            (Self::Vsftpd | Self::Proftpd | Self::PureFtpd, _) => None,
        }
    }

    /// As `start`, for a server behind 1:1 NAT ([`Lab::behind_nat`]): with its option to
    /// announce `public` in its PASV replies instead of the address the control connection
    /// reached (vsftpd's `pasv_address`, proftpd's `MasqueradeAddress`, pure-ftpd's `-P`,
    /// pyftpdlib's `masquerade_address`), as a server must be configured for clients on the
    /// far side of the NAT to follow its 227 replies.
    pub fn start_masquerading(self, lab: &mut Lab, public: Ipv4Addr) -> Result<()> {
        self.start_with(lab, None, Some(public), None)
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
        self.start_with(lab, Some(bytes), None, None)
    }

    fn start_with(
        self,
        lab: &mut Lab,
        scratch: Option<u64>,
        masquerade: Option<Ipv4Addr>,
        tls: Option<Tls>,
    ) -> Result<()> {
        let root = lab.ftp_root();
        let (low, high) = PASSIVE_PORTS;
        let port = tls.map_or(CONTROL_PORT, Tls::port);
        // The server's own configuration, then, for a masquerading server, the lines that
        // name its public address, and for an FTPS server those that secure it (each empty
        // otherwise).
        let masquerading = |template: &str| {
            masquerade.map_or(Ok(String::new()), |public| {
                fill(template, &[("public", &public)])
            })
        };
        let securing = match tls {
            Some(tls) => self.securing(lab, tls)?,
            None => String::new(),
        };
        match self {
            Self::Vsftpd => Self::run_vsftpd(
                lab,
                &(masquerading(VSFTPD_MASQUERADE)? + &securing),
                scratch,
                port,
            ),
            Self::Proftpd => {
                let binary = unpacked(PROFTPD)?;
                let config = lab.file("proftpd.conf");
                let own = fill(
                    PROFTPD_CONF,
                    &[
                        ("port", &port),
                        ("server_ip", &lab.server_own(Family::V4)),
                        ("server_ip6", &SERVER_IP6),
                        ("low", &low),
                        ("high", &high),
                        ("pid_file", &lab.file("proftpd.pid").display()),
                        ("scoreboard_file", &lab.file("proftpd.scoreboard").display()),
                        ("root", &root.display()),
                    ],
                )?;
                std::fs::write(
                    &config,
                    format!("{own}{}{securing}", masquerading(PROFTPD_MASQUERADE)?),
                )?;
                let mut command = lab.server(&binary.to_string_lossy());
                command.arg("--nodaemon").arg("--config").arg(&config);
                self.spawn(lab, command, &Family::ALL, port)
            }
            Self::PureFtpd => {
                let binary = unpacked(PURE_FTPD)?;
                let options = fill(
                    PURE_FTPD_OPTIONS,
                    &[
                        ("low", &low),
                        ("high", &high),
                        ("pid_file", &lab.file("pure-ftpd.pid").display()),
                    ],
                )? + &masquerading(PURE_FTPD_MASQUERADE)?
                    + &securing;
                // pure-ftpd serves the home of the user `ftp` to anonymous users and takes
                // no other directory: mount the lab's root there. `ip netns exec` runs the
                // command in a mount namespace of its own, so the host never sees it.
                let mut command = lab.server("sh");
                command
                    .arg("-c")
                    .arg(r#"mount --bind "$0" ~ftp && exec "$@""#)
                    .arg(&root)
                    .arg(&binary)
                    .args(
                        options
                            .lines()
                            .map(str::trim)
                            .filter(|line| !line.is_empty() && !line.starts_with('#')),
                    );
                self.spawn(lab, command, &Family::ALL, port)
            }
            Self::Pyftpdlib => {
                // Debian's python3-pyftpdlib is for Debian's python, maybe not the first
                // python3 on PATH.
                let mut command = lab.server("/usr/bin/python3");
                command
                    .args(["-c", PYFTPDLIB])
                    .arg(&root)
                    .args([low.to_string(), high.to_string()])
                    // The public address its PASV replies name; empty for its own.
                    .arg(
                        masquerade
                            .map(|public| public.to_string())
                            .unwrap_or_default(),
                    )
                    .args([
                        lab.server_own(Family::V4).to_string(),
                        SERVER_IP6.to_string(),
                    ]);
                self.spawn(lab, command, &Family::ALL, port)
            }
        }
    }

    /// The configuration lines (pure-ftpd: options) that make this server speak `tls`
    /// FTPS with the lab's certificate, appended to its own.
    pub fn securing(self, lab: &Lab, tls: Tls) -> Result<String> {
        let (cert, key) = certificate(lab)?;
        let (cert, key) = (cert.display(), key.display());
        let implicit = |lines: &'static str| if tls == Tls::Implicit { lines } else { "" };
        Ok(match self {
            Self::Vsftpd => {
                fill(VSFTPD_TLS, &[("cert", &cert), ("key", &key)])? + implicit(VSFTPD_IMPLICIT)
            }
            Self::Proftpd => {
                let module = unpacked(PROFTPD_TLS)?;
                let required = match tls {
                    Tls::ExplicitThenClear => "auth+data",
                    Tls::Explicit | Tls::Implicit => "on",
                };
                fill(
                    PROFTPD_TLS_CONF,
                    &[
                        ("module_path", &module.parent().unwrap_or(&module).display()),
                        ("required", &required),
                        ("cert", &cert),
                        ("key", &key),
                    ],
                )? + implicit(PROFTPD_IMPLICIT)
            }
            Self::PureFtpd => fill(PURE_FTPD_TLS, &[("cert", &cert), ("key", &key)])?,
            Self::Pyftpdlib => bail!("{}", self.tls_unsupported(tls).unwrap_or_default()),
        })
    }

    /// vsftpd, one process per address family, with `extra` configuration lines; with
    /// `scratch`, anonymous uploads go to a tmpfs of that many bytes (see
    /// [`Server::start_with_scratch`]).
    pub fn start_vsftpd(lab: &mut Lab, extra: &str, scratch: Option<u64>) -> Result<()> {
        Self::run_vsftpd(lab, extra, scratch, CONTROL_PORT)
    }

    /// As `start_vsftpd`, waiting for it on `port`, where `extra` makes it listen.
    fn run_vsftpd(lab: &mut Lab, extra: &str, scratch: Option<u64>, port: u16) -> Result<()> {
        let root = lab.ftp_root();
        let (low, high) = PASSIVE_PORTS;
        ensure!(
            Path::new(VSFTPD).exists(),
            "{VSFTPD} is missing: `cargo xtask setup` installs vsftpd"
        );
        std::fs::create_dir_all("/var/run/vsftpd/empty")?;
        let uploads = if scratch.is_some() {
            VSFTPD_UPLOADS
        } else {
            ""
        };
        let common = fill(
            VSFTPD_CONF,
            &[("root", &root.display()), ("low", &low), ("high", &high)],
        )?;
        // vsftpd listens on one address family per process.
        for family in Family::ALL {
            let listen = match family {
                Family::V4 => VSFTPD_IPV4,
                Family::V6 => VSFTPD_IPV6,
            };
            let listen = fill(listen, &[("address", &lab.server_own(family))])?;
            let config = lab.file(&format!("vsftpd-{family}.conf"));
            std::fs::write(&config, format!("{listen}{common}{uploads}{extra}"))?;
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
            Self::Vsftpd.spawn(lab, command, &[family], port)?;
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
    /// connections on `port` of the server's address in each of `families`, reached as
    /// the client reaches it.
    fn spawn(
        self,
        lab: &mut Lab,
        mut command: Command,
        families: &[Family],
        port: u16,
    ) -> Result<()> {
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
        let ready = families.iter().try_for_each(|&family| {
            let ip = lab.server_addr(family);
            wait_for(&format!("{self} listening on {ip} port {port}"), || {
                if let Some(status) = child.try_wait()? {
                    bail!("{self} exited ({status})");
                }
                answers(lab, ip, port)
            })
        });
        lab.keep(child);
        ready.with_context(|| format!("{self} log:\n{}", self.log(lab)))
    }
}

/// A connection attempt from the client, as the clients will make them: it fails at once
/// while nothing listens (the SYN is answered with a RST).
fn answers(lab: &Lab, ip: IpAddr, port: u16) -> Result<bool> {
    lab.client_connects(ip, port, Duration::from_secs(1))
}

/// The lab's TLS certificate and key files (PEM), made with the `openssl` CLI on first
/// use: self-signed, for the server's addresses, valid for a day. Every FTPS server of the
/// lab presents it; the clients are told not to verify it, so it need not be trusted, only
/// be one. The key stays readable by root alone, which starts the servers.
pub fn certificate(lab: &Lab) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (lab.file("tls-cert.pem"), lab.file("tls-key.pem"));
    if !cert.exists() {
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-noenc", "-newkey", "rsa:2048", "-days", "1",
            ])
            .args(["-subj", "/CN=ftp-tracker lab", "-addext"])
            .arg(format!(
                "subjectAltName=IP:{},IP:{SERVER_IP6}",
                lab.server_own(Family::V4)
            ))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert))
        .context("making the lab's TLS certificate: `cargo xtask setup` installs openssl")?;
    }
    Ok((cert, key))
}

/// A file of a package that `cargo xtask setup` unpacked under [`PEERS_DIR`].
fn unpacked((package, file, _): (&str, &str, &str)) -> Result<PathBuf> {
    let path = unpacked_path(package, file);
    ensure!(
        path.exists(),
        "{} is missing: `cargo xtask setup` unpacks the Debian package {package} there",
        path.display()
    );
    Ok(path)
}

/// Where `file` of `package` is once unpacked.
pub fn unpacked_path(package: &str, file: &str) -> PathBuf {
    Path::new(PEERS_DIR).join(package).join(file)
}

/// `template` with each `{name}` replaced by its value; a placeholder left unfilled is an
/// error, so a fixture and its caller cannot drift apart silently.
fn fill(template: &str, values: &[(&str, &dyn fmt::Display)]) -> Result<String> {
    let mut filled = template.to_owned();
    for (name, value) in values {
        let placeholder = format!("{{{name}}}");
        ensure!(
            filled.contains(&placeholder),
            "the template has no {placeholder}:\n{template}"
        );
        filled = filled.replace(&placeholder, &value.to_string());
    }
    if let Some(start) = filled.find('{') {
        let rest = &filled[start..];
        bail!(
            "a placeholder is left unfilled: {}",
            &rest[..rest.find('}').map_or(rest.len(), |end| end + 1)]
        );
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::SERVER_IP;

    /// Every fixture's placeholders are the ones its caller fills.
    #[test]
    fn fixtures_fill_completely() {
        let root = Path::new("/srv/ftp");
        fill(
            VSFTPD_CONF,
            &[("root", &root.display()), ("low", &1), ("high", &2)],
        )
        .unwrap();
        fill(VSFTPD_IPV4, &[("address", &SERVER_IP)]).unwrap();
        fill(VSFTPD_IPV6, &[("address", &SERVER_IP6)]).unwrap();
        fill(
            PROFTPD_CONF,
            &[
                ("port", &21),
                ("server_ip", &SERVER_IP),
                ("server_ip6", &SERVER_IP6),
                ("low", &1),
                ("high", &2),
                ("pid_file", &"p"),
                ("scoreboard_file", &"s"),
                ("root", &root.display()),
            ],
        )
        .unwrap();
        fill(
            PURE_FTPD_OPTIONS,
            &[("low", &1), ("high", &2), ("pid_file", &"p")],
        )
        .unwrap();
        for masquerade in [VSFTPD_MASQUERADE, PROFTPD_MASQUERADE, PURE_FTPD_MASQUERADE] {
            fill(masquerade, &[("public", &SERVER_IP)]).unwrap();
        }
        for tls in [VSFTPD_TLS, PURE_FTPD_TLS] {
            fill(tls, &[("cert", &"c"), ("key", &"k")]).unwrap();
        }
        fill(
            PROFTPD_TLS_CONF,
            &[
                ("module_path", &"m"),
                ("required", &"on"),
                ("cert", &"c"),
                ("key", &"k"),
            ],
        )
        .unwrap();
        for implicit in [VSFTPD_IMPLICIT, PROFTPD_IMPLICIT] {
            fill(implicit, &[]).unwrap();
        }
        assert!(fill(VSFTPD_IPV4, &[]).is_err(), "an unfilled placeholder");
        assert!(
            fill(VSFTPD_IPV4, &[("nothing", &1)]).is_err(),
            "an unknown one"
        );
    }
}
