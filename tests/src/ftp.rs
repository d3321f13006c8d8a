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
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::lab::SERVER_IP;

/// Any reply or data segment in the lab comes within microseconds; a dropped connection
/// must fail the caller, not hang it.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Ftp {
    control: BufReader<TcpStream>,
}

impl Ftp {
    pub fn login() -> Result<Self> {
        let stream = TcpStream::connect_timeout(&SocketAddr::from((SERVER_IP, 21)), TIMEOUT)
            .context("connecting to the FTP server")?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut ftp = Self {
            control: BufReader::new(stream),
        };
        ftp.reply(220)?;
        ftp.command("USER anonymous", 331)?;
        ftp.command("PASS ftp-tracker@", 230)?;
        ftp.command("TYPE I", 200)?;
        Ok(ftp)
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
        let numbers = reply
            .split(['(', ')'])
            .nth(1)
            .map(|inner| {
                inner
                    .split(',')
                    .map(|n| n.trim().parse::<u8>())
                    .collect::<Result<Vec<_>, _>>()
            })
            .and_then(Result::ok)
            .filter(|numbers| numbers.len() == 6)
            .with_context(|| format!("no address in `{}`", reply.trim_end()))?;
        let ip = Ipv4Addr::new(numbers[0], numbers[1], numbers[2], numbers[3]);
        Ok(SocketAddr::from((
            ip,
            u16::from_be_bytes([numbers[4], numbers[5]]),
        )))
    }

    /// PASV, and a data connection to the address and port it announced.
    pub fn data(&mut self) -> Result<TcpStream> {
        let announced = self.pasv()?;
        connect_data(announced)
    }

    /// Downloads `path` over a data connection to `announced` (from an earlier
    /// [`Ftp::pasv`]) and returns its bytes.
    pub fn retr_from(&mut self, announced: SocketAddr, path: &str) -> Result<Vec<u8>> {
        let mut data = connect_data(announced)?;
        self.command(&format!("RETR {path}"), 150)?;
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes)
            .with_context(|| format!("RETR {path}"))?;
        self.reply(226)?;
        Ok(bytes)
    }

    /// PASV and RETR `path`: its bytes.
    pub fn retr(&mut self, path: &str) -> Result<Vec<u8>> {
        let announced = self.pasv()?;
        self.retr_from(announced, path)
    }
}

fn connect_data(announced: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&announced, TIMEOUT)
        .with_context(|| format!("opening the data connection to {announced}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}
