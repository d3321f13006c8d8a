//! The real FTP clients, each made to fetch the lab's file with exactly one way of setting
//! up the data connection, in plain FTP or FTPS ([`download_tls`]), and the checks that it
//! used that way and nothing else (clients fall back silently: curl retries with PASV when
//! an EPSV data connection fails) and that the file arrived intact.

use std::{
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Result, ensure};

use crate::{
    lab::{BLOB_PATH, Family, Lab, last_lines, output_within},
    servers::Tls,
};

/// The longest one transfer may take: in the lab it takes milliseconds, and a client whose
/// connection is dropped gives up after its own [`TIMEOUT_SECS`].
const LIMIT: Duration = Duration::from_secs(20);
/// The clients' own connect and idle timeout: a SYN that is answered at all is answered
/// within microseconds in the lab.
const TIMEOUT_SECS: &str = "5";

/// Every command that sets up a data connection, including the long forms (RFC 1639) that
/// some clients fall back to when EPSV or EPRT fails.
const DATA_COMMANDS: [&str; 6] = ["PASV", "EPSV", "PORT", "EPRT", "LPSV", "LPRT"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Curl,
    Lftp,
    Wget,
    /// Python's ftplib, run by Debian's /usr/bin/python3.
    Ftplib,
}

impl Client {
    pub const ALL: [Self; 4] = [Self::Curl, Self::Lftp, Self::Wget, Self::Ftplib];

    pub fn name(self) -> &'static str {
        match self {
            Self::Curl => "curl",
            Self::Lftp => "lftp",
            Self::Wget => "wget",
            Self::Ftplib => "ftplib",
        }
    }

    /// What starts a line of the client's debug output that shows a command it sent.
    fn sent_marker(self) -> &'static str {
        match self {
            Self::Curl => "> ",
            Self::Lftp => "---> ",
            Self::Wget => "--> ",
            Self::Ftplib => "*cmd* '",
        }
    }

    /// What starts a line of the client's debug output that shows a reply it received
    /// (wget prints replies bare, each right after its command).
    fn reply_marker(self) -> &'static str {
        match self {
            Self::Curl => "< ",
            Self::Lftp => "<--- ",
            Self::Wget => "",
            Self::Ftplib => "*resp* '",
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pasv,
    Epsv,
    Port,
    Eprt,
}

impl Mode {
    pub const ALL: [Self; 4] = [Self::Pasv, Self::Epsv, Self::Port, Self::Eprt];

    /// The command that sets up the data connection.
    pub fn command(self) -> &'static str {
        match self {
            Self::Pasv => "PASV",
            Self::Epsv => "EPSV",
            Self::Port => "PORT",
            Self::Eprt => "EPRT",
        }
    }

    /// Whether the client opens the data connection, to a port the server announced: the
    /// connection a guard on the server has to admit.
    pub fn passive(self) -> bool {
        matches!(self, Self::Pasv | Self::Epsv)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.command())
    }
}

/// Whether `client` can be made to use `mode` over `family`.
pub fn supports(client: Client, family: Family, mode: Mode) -> bool {
    match (family, mode) {
        // PASV's reply and PORT's argument carry a 32-bit address: they exist for IPv4
        // only (RFC 2428 made EPSV and EPRT for IPv6, and for both families).
        (Family::V6, Mode::Pasv | Mode::Port) => false,
        (Family::V6, Mode::Epsv | Mode::Eprt) | (Family::V4, Mode::Pasv | Mode::Port) => true,
        // Over IPv4, wget sends PASV and PORT and ftplib sends PASV and PORT, with no option
        // for EPSV or EPRT: both choose by the control connection's family.
        (Family::V4, Mode::Epsv) => matches!(client, Client::Curl | Client::Lftp),
        // lftp has ftp:prefer-epsv but nothing like it for EPRT: over IPv4 it always sends
        // PORT (as wget and ftplib do).
        (Family::V4, Mode::Eprt) => client == Client::Curl,
    }
}

/// Whether `client` can be made to use `mode` over `family` in an FTPS session secured as
/// `tls` says, against a server that requires TLS.
pub fn supports_tls(client: Client, family: Family, mode: Mode, tls: Tls) -> bool {
    supports(client, family, mode)
        && match (client, tls) {
            // Debian 12's curl (7.88) does not start TLS on an active-mode data connection
            // (curl issue 10666, from 7.87 until 8.0): it waits for data while the server
            // waits for its handshake.
            (Client::Curl, _) if !mode.passive() => false,
            // lftp 4.9 sends CCC (ftp:ssl-use-ccc), but then takes the server's TLS
            // close_notify for the end of the control connection in about one session of
            // three (with proftpd and pure-ftpd alike), and gives up: a race, not a mode.
            // wget has no option to send CCC; ftplib only knows AUTH TLS (FTP_TLS).
            (Client::Lftp | Client::Wget, Tls::ExplicitThenClear)
            | (Client::Ftplib, Tls::Implicit) => false,
            (Client::Curl | Client::Lftp | Client::Wget | Client::Ftplib, _) => true,
        }
}

/// Fetches the lab's file from the server over `family` with `client` forced to `mode`,
/// checks that the client set up its data connection with `mode` alone and that the file
/// arrived byte for byte; returns its size. Takes at most [`LIMIT`].
pub fn download(lab: &Lab, client: Client, family: Family, mode: Mode) -> Result<usize> {
    ensure!(
        supports(client, family, mode),
        "{client} cannot be made to use {mode} over {family}"
    );
    fetch(lab, client, family, mode, None)
}

/// As [`download`], in an FTPS session secured as `tls` says, from a server started with
/// [`crate::servers::Server::start_tls`]; the clients take its self-signed certificate
/// unverified. With [`Tls::ExplicitThenClear`] the server must also have accepted the
/// client's CCC (curl goes on in TLS when it is refused).
pub fn download_tls(
    lab: &Lab,
    client: Client,
    family: Family,
    mode: Mode,
    tls: Tls,
) -> Result<usize> {
    ensure!(
        supports_tls(client, family, mode, tls),
        "{client} cannot be made to use {mode} over {family} in {tls} FTPS"
    );
    fetch(lab, client, family, mode, Some(tls))
}

/// `download`'s and `download_tls`'s transfer and checks.
fn fetch(lab: &Lab, client: Client, family: Family, mode: Mode, tls: Option<Tls>) -> Result<usize> {
    let target = fresh_target(lab)?;
    let output = output_within(&mut command(lab, client, family, mode, tls, &target), LIMIT)?;
    let transcript = [&output.stdout[..], &output.stderr[..]].concat();
    let sent = data_commands(client, &transcript);
    ensure!(
        output.status.success(),
        "{client} failed ({}) after sending {sent:?}: {}",
        output.status,
        last_lines(&output.stderr, 2)
    );
    ensure!(
        sent == [mode.command()],
        "{client} was to use {mode} alone but sent {sent:?}"
    );
    if tls == Some(Tls::ExplicitThenClear) {
        let reply = reply_to(client, &transcript, "CCC");
        ensure!(
            reply.as_deref().is_some_and(|r| r.starts_with('2')),
            "{client} was to clear the control connection, but the reply to its CCC was {reply:?}"
        );
    }
    received_intact(lab, &target)
}

/// Fetches the lab's file over IPv4 as a client behind 1:1 NAT that knows its public
/// address does in active mode: listening on its own `port`, it announces `announced` and
/// `port` with `mode` (PORT or EPRT), so the server connects to the NAT's public address.
/// Real clients announce the address their data socket is bound to, which behind NAT is
/// the private one; this one is Python's ftplib, told what to send. Checks that the file
/// arrived byte for byte and returns its size. Takes at most [`LIMIT`].
pub fn download_announcing(lab: &Lab, mode: Mode, announced: Ipv4Addr, port: u16) -> Result<usize> {
    ensure!(
        matches!(mode, Mode::Port | Mode::Eprt),
        "{mode} announces no address of the client's"
    );
    let target = fresh_target(lab)?;
    let output = output_within(
        lab.client("/usr/bin/python3")
            .args(["-c", FTPLIB_ANNOUNCING])
            .arg(lab.server_addr(Family::V4).to_string())
            .arg(mode.command())
            .arg(announced.to_string())
            .arg(port.to_string())
            .arg(TIMEOUT_SECS)
            .arg(BLOB_PATH)
            .arg(&target),
        LIMIT,
    )?;
    ensure!(
        output.status.success(),
        "ftplib announcing {announced} port {port} with {mode} failed ({}): {}",
        output.status,
        last_lines(&output.stderr, 2)
    );
    received_intact(lab, &target)
}

/// Where a client writes the file it downloads, with no file left there by an earlier
/// transfer to pass for this one's.
fn fresh_target(lab: &Lab) -> Result<PathBuf> {
    let target = lab.file("download");
    if target.exists() {
        std::fs::remove_file(&target)?;
    }
    Ok(target)
}

/// Checks that `target` holds the lab's file byte for byte; returns its size.
pub fn received_intact(lab: &Lab, target: &Path) -> Result<usize> {
    let received = std::fs::read(target)?;
    let served = lab.blob()?;
    ensure!(
        received == served,
        "the downloaded file differs from the served one ({} of {} bytes received)",
        received.len(),
        served.len()
    );
    Ok(received.len())
}

/// The client's command line, in the client namespace, with its debug output on (the
/// commands it sent are read from it), in FTPS as `tls` says (none: plain FTP). Implicit
/// FTPS is the `ftps://` URL (port 990), which wget takes for explicit FTPS unless told.
fn command(
    lab: &Lab,
    client: Client,
    family: Family,
    mode: Mode,
    tls: Option<Tls>,
    target: &Path,
) -> Command {
    let host = lab.server_host(family);
    let scheme = match (client, tls) {
        (_, None) | (Client::Curl | Client::Lftp, Some(Tls::Explicit | Tls::ExplicitThenClear)) => {
            "ftp"
        }
        (_, Some(_)) => "ftps",
    };
    let url = format!("{scheme}://{host}/{BLOB_PATH}");
    match client {
        Client::Curl => {
            let mut command = lab.client("curl");
            command
                // --globoff: the brackets of an IPv6 URL are no glob.
                .args(["--silent", "--show-error", "--verbose", "--globoff"])
                .args(["--connect-timeout", TIMEOUT_SECS]);
            if tls.is_some() {
                // --insecure: the lab's certificate is self-signed.
                command.args(["--ssl-reqd", "--insecure"]);
            }
            if tls == Some(Tls::ExplicitThenClear) {
                // In its default (passive) mode curl leaves ending TLS on the control
                // connection to the server, and pure-ftpd waits for the client to: the
                // session hangs.
                command.args(["--ftp-ssl-ccc", "--ftp-ssl-ccc-mode", "active"]);
            }
            command
                .args(match mode {
                    Mode::Pasv => &["--disable-epsv"][..],
                    Mode::Epsv => &["--ftp-pasv"],
                    Mode::Port => &["--ftp-port", "-", "--disable-eprt"],
                    // curl tries EPRT first on its own.
                    Mode::Eprt => &["--ftp-port", "-"],
                })
                .arg("--output")
                .arg(target)
                .arg(url);
            command
        }
        Client::Lftp => {
            // Over IPv6 lftp sends EPSV and EPRT whatever these say.
            let data = match mode {
                Mode::Pasv => "set ftp:passive-mode on; set ftp:prefer-epsv no",
                Mode::Epsv => "set ftp:passive-mode on; set ftp:prefer-epsv yes",
                Mode::Port | Mode::Eprt => "set ftp:passive-mode off",
            };
            let security = match tls {
                // In plain FTP, not the TLS lftp tries first, which nothing on the path
                // could read.
                None => "set ftp:ssl-allow no".to_owned(),
                // lftp sends no AUTH TLS for an anonymous login unless allowed to, and goes
                // on without TLS when AUTH TLS fails unless forced.
                Some(tls) => format!(
                    "set ftp:ssl-allow yes; set ftp:ssl-allow-anonymous yes; \
                     set ftp:ssl-force yes; set ftp:ssl-protect-data yes; \
                     set ssl:verify-certificate no; set ftp:ssl-use-ccc {}",
                    if tls == Tls::ExplicitThenClear {
                        "yes"
                    } else {
                        "no"
                    }
                ),
            };
            let script = format!(
                // lftp retries a failed transfer 1000 times and flips passive mode after a
                // failure unless told not to.
                "set net:timeout {TIMEOUT_SECS}; set net:max-retries 1; \
                 set ftp:auto-passive-mode no; {security}; set xfer:clobber on; \
                 {data}; open {scheme}://{host}; get {BLOB_PATH} -o \"{}\"",
                target.display()
            );
            let mut command = lab.client("lftp");
            command.args(["-d", "-c", &script]);
            command
        }
        Client::Wget => {
            // wget sends PASV and PORT over IPv4, EPSV and EPRT over IPv6.
            let mut command = lab.client("wget");
            command
                .args(["--no-config", "--debug", "--tries=1"])
                .arg(format!("--timeout={TIMEOUT_SECS}"));
            if !mode.passive() {
                command.arg("--no-passive-ftp");
            }
            if tls.is_some() {
                // The lab's certificate is self-signed.
                command.arg("--no-check-certificate");
            }
            if tls == Some(Tls::Implicit) {
                command.arg("--ftps-implicit");
            }
            command.arg("--output-document").arg(target).arg(url);
            command
        }
        Client::Ftplib => {
            let mut command = lab.client("/usr/bin/python3");
            command
                .args(["-c", FTPLIB])
                .arg(lab.server_addr(family).to_string())
                .arg(if mode.passive() { "passive" } else { "active" })
                .arg(match tls {
                    None => "plain",
                    Some(Tls::Explicit | Tls::Implicit) => "tls",
                    Some(Tls::ExplicitThenClear) => "tls-ccc",
                })
                .arg(TIMEOUT_SECS)
                .arg(BLOB_PATH)
                .arg(target);
            command
        }
    }
}

/// ftplib sends PASV and PORT over IPv4, EPSV and EPRT over IPv6; debug level 1 prints each
/// command sent and reply received. In FTPS (`tls`, `tls-ccc`) its login starts with AUTH
/// TLS, the lab's self-signed certificate is taken unverified, and the data connections are
/// protected; `tls-ccc` then clears the control connection (`ccc` raises unless the server
/// accepts).
const FTPLIB: &str = r#"
import ftplib, ssl, sys
host, mode, security, timeout, path, target = sys.argv[1:]
if security == "plain":
    ftp = ftplib.FTP(timeout=float(timeout))
else:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ftp = ftplib.FTP_TLS(context=context, timeout=float(timeout))
ftp.set_debuglevel(1)
ftp.connect(host, 21)
ftp.login()
if security != "plain":
    ftp.prot_p()
if security == "tls-ccc":
    ftp.ccc()
ftp.set_pasv(mode == "passive")
with open(target, "wb") as out:
    ftp.retrbinary("RETR " + path, out.write)
ftp.quit()
"#;

/// `download_announcing`'s client: the data socket listens before the announcement, which
/// names the address given, not the socket's own. RETR's 150 may come before the server
/// connects (pyftpdlib connects on PORT, vsftpd on RETR): the connection then waits in the
/// listener's queue.
const FTPLIB_ANNOUNCING: &str = r#"
import ftplib, socket, sys
host, command, announced, port, timeout, path, target = sys.argv[1:]
port, timeout = int(port), float(timeout)
listener = socket.create_server(("", port))
listener.settimeout(timeout)
ftp = ftplib.FTP(timeout=timeout)
ftp.set_debuglevel(1)
ftp.connect(host, 21)
ftp.login()
ftp.voidcmd("TYPE I")
if command == "PORT":
    ftp.sendport(announced, port)
else:
    ftp.sendeprt(announced, port)
ftp.sendcmd("RETR " + path)
data, _ = listener.accept()
with data, open(target, "wb") as out:
    while chunk := data.recv(65536):
        out.write(chunk)
ftp.voidresp()
ftp.quit()
"#;

/// The data-connection commands the client's debug output shows it sent, in order.
fn data_commands(client: Client, transcript: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(transcript)
        .lines()
        .filter_map(|line| sent_verb(client, line))
        .filter(|verb| DATA_COMMANDS.contains(&verb.as_str()))
        .collect()
}

/// The reply the client's debug output shows to the first `verb` it sent, if any: the next
/// reply it received.
fn reply_to(client: Client, transcript: &[u8], verb: &str) -> Option<String> {
    let text = String::from_utf8_lossy(transcript);
    let mut lines = text.lines().map(str::trim_start);
    lines.find(|line| sent_verb(client, line).is_some_and(|sent| sent == verb))?;
    lines.find_map(|line| {
        let reply = line.strip_prefix(client.reply_marker())?;
        (!reply.is_empty()).then(|| reply.to_owned())
    })
}

/// The command verb of a line of the client's debug output that shows a command it sent.
fn sent_verb(client: Client, line: &str) -> Option<String> {
    Some(
        line.trim_start()
            .strip_prefix(client.sent_marker())?
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()?
            .to_ascii_uppercase(),
    )
}
