//! Bulk transfer throughput through each guard: a multi-GB passive download, where the
//! server's ingress (the guard's XDP program) carries only ACKs, and a multi-GB passive
//! upload with STOR, where it carries the data.

use std::{
    fmt,
    io::{Read, Write},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use ftp_lab::{
    ftp::Ftp,
    lab::{Lab, SERVER_IF, in_netns},
    servers::{SCRATCH_DIR, Server, ZEROS},
};

use super::{Bench, Figure, Section, alternate, guard::Guard, median};

const FULL_BYTES: u64 = 2 << 30;
const QUICK_BYTES: u64 = 64 << 20;
/// Reads and writes of the data connection: large, so that the client's system calls cost
/// little next to what the guard costs.
const BUFFER: usize = 1 << 20;
/// The longest one transfer may take: 2 GB at 0.3 Gbit/s, a quarter of the slowest rate
/// seen here.
const LIMIT: Duration = Duration::from_secs(60);

const AUTO: Guard = Guard::Tracker("auto");
const GUARDS: [Guard; 5] = [
    Guard::None,
    Guard::KernelHelper,
    Guard::Tracker("skb"),
    Guard::Tracker("native"),
    AUTO,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Download,
    Upload,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Download => "download",
            Self::Upload => "upload",
        })
    }
}

pub fn run(bench: &Bench) -> Result<Section> {
    let bytes = if bench.quick { QUICK_BYTES } else { FULL_BYTES };
    let mut lab = Lab::new("bulk", &bench.loader)?;
    Server::Vsftpd.start_with_scratch(&mut lab, bytes)?;
    let variants: Vec<(Guard, Direction)> = GUARDS
        .iter()
        .flat_map(|&guard| [(guard, Direction::Download), (guard, Direction::Upload)])
        .collect();
    // Both directions run under one installation of each guard.
    let mut installed = Guard::None;
    let mut auto_attached = String::new();
    let samples = alternate(&variants, bench.rounds(), |&(guard, direction)| {
        if guard != installed {
            installed.remove(&mut lab)?;
            guard.install(&mut lab)?;
            installed = guard;
            if guard == AUTO {
                auto_attached = attachment(&lab)?;
            }
        }
        in_netns(&lab.client_ns, || {
            let mut ftp = Ftp::login()?;
            match direction {
                Direction::Download => ftp.download(&zeros(), bytes, || ()),
                Direction::Upload => ftp.upload(&format!("{SCRATCH_DIR}/upload"), bytes),
            }
        })
        .with_context(|| format!("{direction} through {guard}"))
    })?;
    installed.remove(&mut lab)?;

    let mut section = Section::new(format!(
        "bulk transfer throughput ({} MiB per transfer, vsftpd, passive, IPv4)",
        bytes >> 20
    ));
    let samples_of = |guard: Guard, direction: Direction| {
        let index = variants
            .iter()
            .position(|&v| v == (guard, direction))
            .expect("every guard runs in both directions");
        &samples[index][..]
    };
    let of = |guard, direction| median(samples_of(guard, direction));
    for direction in [Direction::Download, Direction::Upload] {
        let none = of(Guard::None, direction);
        for guard in GUARDS {
            let value = of(guard, direction);
            let mut figure = Figure::new(format!("{direction}, {guard}"), value, "Gbit/s")
                .samples(samples_of(guard, direction));
            if guard != Guard::None {
                figure = figure.against(Guard::None.to_string(), none);
            }
            if guard == AUTO {
                figure = figure.target(">= 0.95x", value >= 0.95 * none);
            }
            section.figures.push(figure);
        }
        let (auto, helper) = (of(AUTO, direction), of(Guard::KernelHelper, direction));
        section.figures.push(
            Figure::new(format!("{direction}, {AUTO} vs iptables"), auto, "Gbit/s")
                .samples(samples_of(AUTO, direction))
                .against(Guard::KernelHelper.to_string(), helper)
                .target(">= 1.00x", auto >= helper),
        );
    }

    section.notes.push(
        "Throughput is the payload from the first data byte to the last (to the server's 226 \
         for uploads), with the bench's own FTP client reading into and writing from memory; \
         vsftpd sends a sparse file from a tmpfs (its holes read from the zero page) and \
         writes uploads into a tmpfs, deleting each after it is measured. Each guard carries \
         both directions of a round, in turn."
            .to_owned(),
    );
    let kept = |guard, direction| of(guard, direction) / of(Guard::None, direction);
    let (skb, native) = (Guard::Tracker("skb"), Guard::Tracker("native"));
    let cheapest = if kept(skb, Direction::Upload) >= kept(native, Direction::Upload) {
        "generic"
    } else {
        "native"
    };
    let picked = if auto_attached.starts_with("XDP native") {
        "native"
    } else {
        "generic"
    };
    section.notes.push(format!(
        "XDP modes on a veth: uploads, where the server's ingress carries the data, keep \
         {:.2}x of no filter in generic mode and {:.2}x in native mode (downloads, only ACKs \
         through the program: {:.2}x and {:.2}x), so {cheapest} XDP costs least here. \
         Attaching native XDP to a veth takes the software segmentation offloads (TSO) away \
         from its peer, because an XDP buffer is one page: the client's TCP segments are cut \
         to MSS size before they cross the veth, and the server's veth, whose GRO is off \
         unless an admin turns it on, hands its stack one MSS at a time. Generic XDP runs \
         on the super-packets as they come. auto attached as `{auto_attached}`: it picked \
         {picked}, {} on a veth.",
        kept(skb, Direction::Upload),
        kept(native, Direction::Upload),
        kept(skb, Direction::Download),
        kept(native, Direction::Download),
        if picked == cheapest {
            "the right choice"
        } else {
            "NOT the right choice"
        }
    ));
    Ok(section)
}

/// The sparse file an upload-enabled vsftpd serves, as a path under its FTP root.
pub(super) fn zeros() -> String {
    format!("{SCRATCH_DIR}/{ZEROS}")
}

/// How the running loader attached to the server's interface, from its start-up line.
fn attachment(lab: &Lab) -> Result<String> {
    let prefix = format!("attached to {SERVER_IF}: ");
    lab.loader_log()
        .lines()
        .find_map(|line| Some(line.split_once(&prefix)?.1.to_owned()))
        .context("ftp-loader did not say how it attached")
}

fn gbits(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 * 8.0 / seconds / 1e9
}

/// The bench's transfers on the shared FTP session (rather than curl, which reads an upload
/// from a file and writes a download to one, costs that are not the guard's, and which
/// cannot say when its data connection is up).
pub(super) trait Transfer {
    /// Downloads `path`, which must be `bytes` long, and returns the throughput in Gbit/s
    /// from the first data received to the last. `started` is called once data flows.
    fn download(&mut self, path: &str, bytes: u64, started: impl FnOnce()) -> Result<f64>;

    /// Uploads `bytes` zero bytes to `path` with STOR and returns the throughput in Gbit/s
    /// from the first byte sent to the server's 226 (all of it received and written);
    /// deletes the file then.
    fn upload(&mut self, path: &str, bytes: u64) -> Result<f64>;
}

impl Transfer for Ftp {
    fn download(&mut self, path: &str, bytes: u64, started: impl FnOnce()) -> Result<f64> {
        let mut data = self.data()?;
        self.command(&format!("RETR {path}"), 150)?;
        let mut buffer = vec![0; BUFFER];
        let first = data.read(&mut buffer)? as u64;
        ensure!(first > 0, "RETR {path} sent no data");
        started();
        let start = Instant::now();
        let mut received = first;
        loop {
            let n = data.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            received += n as u64;
            ensure!(start.elapsed() < LIMIT, "RETR {path} took over {LIMIT:?}");
        }
        let seconds = start.elapsed().as_secs_f64();
        self.reply(226)?;
        ensure!(
            received == bytes,
            "RETR {path}: {received} of {bytes} bytes"
        );
        Ok(gbits(received - first, seconds))
    }

    fn upload(&mut self, path: &str, bytes: u64) -> Result<f64> {
        let mut data = self.data()?;
        self.command(&format!("STOR {path}"), 150)?;
        let buffer = vec![0; BUFFER];
        let start = Instant::now();
        let mut sent = 0;
        while sent < bytes {
            let n = (bytes - sent).min(BUFFER as u64) as usize;
            data.write_all(&buffer[..n])?;
            sent += n as u64;
            ensure!(start.elapsed() < LIMIT, "STOR {path} took over {LIMIT:?}");
        }
        // The end of the file, for the server.
        drop(data);
        self.reply(226)?;
        let seconds = start.elapsed().as_secs_f64();
        self.command(&format!("DELE {path}"), 250)?;
        Ok(gbits(bytes, seconds))
    }
}
