//! A passive FTP session to the lab's server over IPv4, logged in anonymously in binary
//! mode, in Rust. A socket belongs to the namespace of the thread that creates it: what
//! opens a connection ([`Ftp::login`], [`Ftp::data`], [`Ftp::retr`], [`Ftp::retr_from`])
//! must run on a thread in the client namespace (`in_netns`); the control connection
//! then stays there, and commands may be sent on it from any thread. Rather than curl or ftplib
//! where the caller needs what they do not give: the control connection itself (its
//! addresses, to forge segments of it; open and idle for as long as the test likes), the
//! moment the data connection is up, or no file written on the way.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use ftp_ebpf_common::{
    addr::{FAMILY_IPV4, FAMILY_IPV6},
    parse::{LineScanner, Sender, Step},
};

use crate::lab::SERVER_IP;

/// Any reply or data segment in the lab comes within microseconds; a dropped connection
/// must fail the caller, not hang it.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Ftp {
    control: BufReader<TcpStream>,
    /// Every connect, read and write of this session.
    timeout: Duration,
}

impl Ftp {
    /// Connects, logs in anonymously and switches to binary mode.
    pub fn login() -> Result<Self> {
        let mut ftp = Self::open(TIMEOUT)?;
        ftp.log_in()?;
        Ok(ftp)
    }

    /// Connects to the server and reads its greeting; `timeout` bounds every connect, read
    /// and write of the session.
    pub fn open(timeout: Duration) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&SocketAddr::from((SERVER_IP, 21)), timeout)
            .context("connecting to the FTP server")?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut ftp = Self {
            control: BufReader::new(stream),
            timeout,
        };
        ftp.reply(220).context("the greeting")?;
        Ok(ftp)
    }

    /// Logs in anonymously and switches to binary mode.
    pub fn log_in(&mut self) -> Result<()> {
        self.command("USER anonymous", 331)?;
        self.command("PASS ftp-tracker@", 230)?;
        self.command("TYPE I", 200)?;
        Ok(())
    }

    /// QUIT, and the server closing the control connection first, as after every real
    /// session (so the TIME_WAIT is the server's).
    pub fn quit(mut self) -> Result<()> {
        self.command("QUIT", 221)?;
        let mut rest = [0u8; 64];
        let read = self.control.read(&mut rest).context("after QUIT")?;
        ensure!(read == 0, "after QUIT: more data");
        Ok(())
    }

    /// The control connection's own address (the client's end).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.control.get_ref().local_addr()?)
    }

    /// The control connection's far end: the server's port 21.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        Ok(self.control.get_ref().peer_addr()?)
    }

    /// Sends one command and reads its reply, which must have `code`.
    pub fn command(&mut self, line: &str, code: u16) -> Result<String> {
        self.control
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())?;
        self.reply(code).with_context(|| format!("after {line}"))
    }

    /// Reads one reply, all lines of it, and fails unless it has `code`.
    pub fn reply(&mut self, code: u16) -> Result<String> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            ensure!(
                self.control.read_line(&mut line)? > 0,
                "the server closed the control connection"
            );
            text += &line;
            // A reply ends with a line of its code and a space (RFC 959 4.2).
            let last = line.get(..3).is_some_and(|c| c.parse::<u16>().is_ok())
                && line.as_bytes().get(3) == Some(&b' ');
            if last {
                break;
            }
        }
        ensure!(
            text.starts_with(&code.to_string()),
            "expected a {code} reply, got `{}`",
            text.trim_end()
        );
        Ok(text)
    }

    /// PASV: the address and port the server announced.
    pub fn pasv(&mut self) -> Result<SocketAddr> {
        let reply = self.command("PASV", 227)?;
        announced(&reply, self.peer_addr()?.ip())
    }

    /// EPSV: the port the server announced, on its own address.
    pub fn epsv(&mut self) -> Result<SocketAddr> {
        let reply = self.command("EPSV", 229)?;
        announced(&reply, self.peer_addr()?.ip())
    }

    /// PASV, and a data connection to the address and port it announced.
    pub fn data(&mut self) -> Result<TcpStream> {
        let announced = self.pasv()?;
        connect_data(announced, self.timeout)
    }

    /// Downloads `path` over a data connection to `announced` (from an earlier
    /// [`Ftp::pasv`]) and returns its bytes.
    pub fn retr_from(&mut self, announced: SocketAddr, path: &str) -> Result<Vec<u8>> {
        let mut data = connect_data(announced, self.timeout)?;
        self.command(&format!("RETR {path}"), 150)?;
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes)
            .with_context(|| format!("RETR {path}"))?;
        // Closed before the 226 is awaited, as clients do: with the client's end still
        // open, vsftpd's 226 came late enough to cut the session bench's rate to a third.
        drop(data);
        self.reply(226)?;
        Ok(bytes)
    }

    /// PASV and RETR `path`: its bytes.
    pub fn retr(&mut self, path: &str) -> Result<Vec<u8>> {
        let announced = self.pasv()?;
        self.retr_from(announced, path)
    }
}

/// The address and port a `227` or `229` reply announces, read as the tracker reads it:
/// by its own scanner, fed the reply's last line as the server's. A `229` names no address:
/// it is `server`'s, the control connection's far end.
pub fn announced(reply: &str, server: IpAddr) -> Result<SocketAddr> {
    // The last line of a reply carries its code (RFC 959 4.2); the scanner reads lines.
    let line = reply.trim_end().rsplit('\n').next().unwrap_or_default();
    let mut scanner = LineScanner::new(Sender::Server);
    let mut found = None;
    for &byte in line.as_bytes().iter().chain(b"\r\n") {
        match scanner.step(byte) {
            Step::Continue | Step::Signalled(_) => {}
            Step::Announced(announcement) => found = Some(announcement),
            Step::Malformed(error) => bail!("`{line}`: {error:?}"),
        }
    }
    let announcement = found.with_context(|| format!("no address in `{line}`"))?;
    let addr = announcement.addr;
    let ip = match announcement.family {
        FAMILY_IPV4 => IpAddr::from([addr[0], addr[1], addr[2], addr[3]]),
        FAMILY_IPV6 => IpAddr::from(addr),
        // A 229: the announcer's own address.
        _ => server,
    };
    Ok(SocketAddr::new(ip, announcement.port))
}

fn connect_data(announced: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&announced, timeout)
        .with_context(|| format!("opening the data connection to {announced}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn reads_227_and_229_with_the_trackers_scanner() {
        let pasv = announced("227 Entering Passive Mode (192,0,2,9,39,16).\r\n", SERVER);
        assert_eq!(pasv.unwrap(), "192.0.2.9:10000".parse().unwrap());
        let epsv = announced("229 Entering Extended Passive Mode (|||10001|)\r\n", SERVER);
        assert_eq!(epsv.unwrap(), "192.0.2.1:10001".parse().unwrap());
        let multi = "227-Here it is\r\n227 =192,0,2,9,39,17\r\n";
        assert_eq!(
            announced(multi, SERVER).unwrap(),
            "192.0.2.9:10001".parse().unwrap()
        );
        assert!(announced("227 Entering Passive Mode (192,0,2,9,39)\r\n", SERVER).is_err());
        assert!(announced("200 OK\r\n", SERVER).is_err());
    }
}
