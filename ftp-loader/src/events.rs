//! Following the programs' events (`ftp_ebpf_common::event`) in the pinned EVENTS ring
//! buffer, as `conntrack -E expect` follows the kernel's: `ftp-loader events` prints them,
//! `run --log-events` logs them. Each event becomes a typed row, printed as one JSON object
//! or as one line of text.
//!
//! A ring buffer has one consumer position, so one reader at a time: it holds an exclusive
//! flock on a directory in the pin directory (bpffs holds directories, not plain files),
//! and sets `Config::events` while it reads, so that the programs write events only then.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, MapData, RingBuf};
use ftp_ebpf_common::{
    addr::{Family, to_ip},
    config::Config,
    contract::{CONFIG, EVENTS, EVENTS_POLL_MS},
    event::{Event, EventKind, Reason},
    flow::FlowKey,
};
use serde::Serialize;

use crate::pins;

/// The directory in the pin directory whose flock the reader holds.
pub const READER_LOCK: &str = "events-reader";

/// A TCP endpoint of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

/// A TCP connection, initiator first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Connection {
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

/// One event, as `events --json` prints it: `{"event": "<kind>", ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Row {
    /// `connector` may now connect to `listener`:`port` (from any source port).
    Announced {
        family: &'static str,
        connector: IpAddr,
        listener: IpAddr,
        port: u16,
        control: Connection,
        /// Read in a TLS control connection's plaintext (--tls-uprobes).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        tls: bool,
    },
    /// An announcement refused: what it announced (None when the line was not understood).
    Refused {
        reason: &'static str,
        family: Option<&'static str>,
        announced: Option<Endpoint>,
        control: Connection,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        tls: bool,
    },
    /// A NAT gateway's data connection (`syn`, as it arrived) sent on as `translated`.
    Translated {
        family: &'static str,
        #[serde(flatten)]
        syn: Connection,
        translated: Connection,
    },
    /// A SYN: admitted, dropped, or (monitor mode, allow-lists) passed.
    #[serde(untagged)]
    Syn {
        event: &'static str,
        family: &'static str,
        #[serde(flatten)]
        syn: Connection,
        /// The control connection that announced it, when one did.
        #[serde(skip_serializing_if = "Option::is_none")]
        control: Option<Connection>,
    },
}

fn connection(key: &FlowKey) -> Option<Connection> {
    Some(Connection {
        src: to_ip(key.family, &key.src)?,
        src_port: key.src_port,
        dst: to_ip(key.family, &key.dst)?,
        dst_port: key.dst_port,
    })
}

impl Row {
    /// The row of a ring buffer record; None for a record this build does not know (a
    /// newer kernel object's), which is skipped.
    pub fn decode(bytes: &[u8]) -> Option<Row> {
        let event: Event =
            bytemuck::try_pod_read_unaligned(bytes.get(..size_of::<Event>())?).ok()?;
        let kind = EventKind::from_u8(event.kind)?;
        let family = |key: &FlowKey| Family::from_u8(key.family).map(Family::name);
        Some(match kind {
            EventKind::Announced => Row::Announced {
                family: family(&event.flow)?,
                connector: to_ip(event.flow.family, &event.flow.src)?,
                listener: to_ip(event.flow.family, &event.flow.dst)?,
                port: event.flow.dst_port,
                control: connection(&event.control)?,
                tls: event.tls != 0,
            },
            EventKind::Refused => {
                let named = event.announced();
                Row::Refused {
                    reason: Reason::from_u8(event.reason)?.name(),
                    family: named
                        .and_then(|(family, _)| Family::from_u8(family))
                        .map(Family::name),
                    announced: named.and_then(|(family, addr)| {
                        Some(Endpoint {
                            addr: to_ip(family, &addr)?,
                            port: event.flow.dst_port,
                        })
                    }),
                    control: connection(&event.control)?,
                    tls: event.tls != 0,
                }
            }
            EventKind::Translated => Row::Translated {
                family: family(&event.flow)?,
                syn: connection(&event.flow)?,
                translated: connection(&event.control)?,
            },
            _ => Row::Syn {
                event: kind.name(),
                family: family(&event.flow)?,
                syn: connection(&event.flow)?,
                control: connection(&event.control),
            },
        })
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn endpoint(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

fn master(control: &Connection) -> String {
    format!(
        "master {} -> {}",
        endpoint(&control.src, control.src_port),
        endpoint(&control.dst, control.dst_port)
    )
}

/// One line, as `conntrack -E expect` words it: `[KIND] family tcp what master control`.
impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Row::Announced {
                family,
                connector,
                listener,
                port,
                control,
                tls,
            } => write!(
                f,
                "[ANNOUNCED] {family} tcp {connector} -> {} (any source port) {}{}",
                endpoint(listener, *port),
                master(control),
                if *tls { " (TLS)" } else { "" }
            ),
            Row::Refused {
                reason,
                family,
                announced,
                control,
                tls,
            } => {
                write!(f, "[REFUSED {reason}]")?;
                if let (Some(family), Some(announced)) = (family, announced) {
                    write!(
                        f,
                        " {family} tcp {}",
                        endpoint(&announced.addr, announced.port)
                    )?;
                }
                write!(f, " {}", master(control))?;
                if *tls {
                    write!(f, " (TLS)")?;
                }
                Ok(())
            }
            Row::Translated {
                family,
                syn,
                translated,
            } => write!(
                f,
                "[TRANSLATED] {family} tcp {} -> {} to {} -> {}",
                endpoint(&syn.src, syn.src_port),
                endpoint(&syn.dst, syn.dst_port),
                endpoint(&translated.src, translated.src_port),
                endpoint(&translated.dst, translated.dst_port)
            ),
            Row::Syn {
                event,
                family,
                syn,
                control,
            } => {
                write!(
                    f,
                    "[{}] {family} tcp {} -> {}",
                    event.to_uppercase(),
                    endpoint(&syn.src, syn.src_port),
                    endpoint(&syn.dst, syn.dst_port)
                )?;
                if let Some(control) = control {
                    write!(f, " {}", master(control))?;
                }
                Ok(())
            }
        }
    }
}

/// The one reader of an instance's events, from `open` until dropped: meanwhile the
/// programs write them.
pub struct Reader {
    ring: RingBuf<MapData>,
    config: Array<MapData, Config>,
    ring_path: PathBuf,
    _lock: File,
}

impl Reader {
    /// Becomes the reader of the instance pinned in `pin_dir`, or says who is.
    pub fn open(pin_dir: &Path) -> Result<Reader> {
        let ring = EVENTS.from_map(pins::open(pin_dir, EVENTS.name)?)?;
        let mut config = CONFIG.from_map(pins::open(pin_dir, CONFIG.name)?)?;
        let lock_dir = pin_dir.join(READER_LOCK);
        match std::fs::create_dir(&lock_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => bail!(
                "cannot create {} to mark the events' reader ({e}): run this as the loader's user",
                lock_dir.display()
            ),
        }
        let lock =
            File::open(&lock_dir).with_context(|| format!("opening {}", lock_dir.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another ftp-loader already follows the events of pin directory {} (a ring buffer has only one reader): stop it, or read its output (the loader's log, if it runs with --log-events)",
                pin_dir.display()
            );
        }
        // What a reader that ended without clearing the flag (killed) left in the ring is
        // old news: it goes before the programs are told to write again.
        set_events(&mut config, false)?;
        let mut reader = Reader {
            ring,
            config,
            ring_path: pin_dir.join(EVENTS.name),
            _lock: lock,
        };
        while reader.ring.next().is_some() {}
        set_events(&mut reader.config, true)?;
        Ok(reader)
    }

    /// The events written since the last call.
    pub fn rows(&mut self) -> Vec<Row> {
        let mut rows = Vec::new();
        while let Some(record) = self.ring.next() {
            rows.extend(Row::decode(&record));
        }
        rows
    }

    /// Whether the instance is gone (its loader removed the pins when it stopped).
    pub fn instance_gone(&self) -> bool {
        !self.ring_path.exists()
    }
}

/// At a loader's start: a reader killed before it could clear `Config::events` left the
/// programs writing for nobody (into a full ring); they stop unless a reader is alive.
pub fn stop_if_unread(pin_dir: &Path) -> Result<()> {
    // A reader creates the directory: without it there never was one.
    let Ok(lock) = File::open(pin_dir.join(READER_LOCK)) else {
        return Ok(());
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        set_events(
            &mut CONFIG.from_map(pins::open(pin_dir, CONFIG.name)?)?,
            false,
        )?;
    }
    Ok(())
}

impl AsRawFd for Reader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Nobody reads any more: the programs stop writing.
        let _ = set_events(&mut self.config, false);
    }
}

/// Prints the reader's events, one line (`json`: one object) each, until SIGINT, SIGTERM,
/// a closed pipe (all three quietly: exit 0) or the instance's end (said in one sentence).
pub async fn follow(reader: Reader, json: bool) -> Result<()> {
    use std::io::Write;
    use tokio::{
        io::unix::AsyncFd,
        signal::unix::{SignalKind, signal},
    };

    let mut interrupt = signal(SignalKind::interrupt()).context("installing signal handlers")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing signal handlers")?;
    // SAFETY: the reader owns its ring buffer descriptor, which outlives the registration
    // (both are dropped together with `ring`).
    let mut ring = unsafe { AsyncFd::register(reader) }
        .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {}", e.into_parts().1))?;
    let mut tick = poll_interval();
    let mut out = std::io::stdout().lock();
    loop {
        let rows = tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = tick.tick() => {
                // Nothing signals the instance's end: it is noticed on a look like this.
                if ring.get_ref().instance_gone() {
                    eprintln!("ftp-loader: the instance stopped and removed its pins: no more events");
                    return Ok(());
                }
                ring.get_mut().rows()
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rows = guard.get_inner_mut().rows();
                guard.clear_ready();
                rows
            }
        };
        for row in rows {
            let line = if json { row.json() } else { row.to_string() };
            // A reader piped into `head` ends when the pipe closes, as a listing does.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
}

/// When a reader looks for events the programs did not wake it for.
pub fn poll_interval() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(EVENTS_POLL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

fn set_events(config: &mut Array<MapData, Config>, on: bool) -> Result<()> {
    let current = config.get(&0, 0).context("reading the settings (CONFIG)")?;
    config
        .set(
            0,
            Config {
                events: u8::from(on),
                ..current
            },
            0,
        )
        .context("writing the settings (CONFIG)")
}

#[cfg(test)]
mod tests {
    use bytemuck::Zeroable;
    use ftp_ebpf_common::parse::{FAMILY_OWN_ADDRESS, Sender};

    use super::*;

    fn key(src: &str, src_port: u16, dst: &str, dst_port: u16) -> FlowKey {
        FlowKey::from_sockets(
            std::net::SocketAddr::new(src.parse().unwrap(), src_port),
            std::net::SocketAddr::new(dst.parse().unwrap(), dst_port),
        )
        .unwrap()
    }

    fn bytes(event: &Event) -> Vec<u8> {
        bytemuck::bytes_of(event).to_vec()
    }

    #[test]
    fn an_announcement_decodes_with_its_control_connection() {
        let control = key("192.0.2.2", 40000, "192.0.2.1", 21);
        let event = Event {
            kind: EventKind::Announced as u8,
            flow: key("192.0.2.2", 0, "192.0.2.1", 10001),
            control,
            ..Event::zeroed()
        };
        let row = Row::decode(&bytes(&event)).unwrap();
        assert_eq!(
            row.json(),
            r#"{"event":"announced","family":"ipv4","connector":"192.0.2.2","listener":"192.0.2.1","port":10001,"control":{"src":"192.0.2.2","src_port":40000,"dst":"192.0.2.1","dst_port":21}}"#
        );
        assert_eq!(
            row.to_string(),
            "[ANNOUNCED] ipv4 tcp 192.0.2.2 -> 192.0.2.1:10001 (any source port) master 192.0.2.2:40000 -> 192.0.2.1:21"
        );
    }

    #[test]
    fn syns_decode_with_and_without_their_control_connection() {
        let syn = key("2001:db8::2", 50000, "2001:db8::1", 10250);
        let dropped = Event {
            kind: EventKind::UnsolicitedDropped as u8,
            flow: syn,
            ..Event::zeroed()
        };
        let row = Row::decode(&bytes(&dropped)).unwrap();
        assert_eq!(
            row.json(),
            r#"{"event":"unsolicited_dropped","family":"ipv6","src":"2001:db8::2","src_port":50000,"dst":"2001:db8::1","dst_port":10250}"#
        );
        assert_eq!(
            row.to_string(),
            "[UNSOLICITED_DROPPED] ipv6 tcp [2001:db8::2]:50000 -> [2001:db8::1]:10250"
        );
        let admitted = Event {
            kind: EventKind::Admitted as u8,
            control: key("2001:db8::2", 40000, "2001:db8::1", 21),
            ..dropped
        };
        let row = Row::decode(&bytes(&admitted)).unwrap();
        assert!(
            row.json()
                .starts_with(r#"{"event":"admitted","family":"ipv6","src":"2001:db8::2","#),
            "{}",
            row.json()
        );
        assert!(
            row.json()
                .contains(r#""control":{"src":"2001:db8::2","src_port":40000"#)
        );
    }

    #[test]
    fn refusals_decode_with_what_was_announced_if_it_was_understood() {
        let control = key("192.0.2.2", 40000, "192.0.2.1", 21);
        let bounce = Event {
            kind: EventKind::Refused as u8,
            reason: Reason::AddressMismatch as u8,
            flow: FlowKey {
                dst_port: 25,
                ..key("0.0.0.0", 0, "198.51.100.7", 25)
            },
            control,
            ..Event::zeroed()
        };
        let row = Row::decode(&bytes(&bounce)).unwrap();
        assert_eq!(
            row.to_string(),
            "[REFUSED address_mismatch] ipv4 tcp 198.51.100.7:25 master 192.0.2.2:40000 -> 192.0.2.1:21"
        );
        assert!(
            row.json()
                .contains(r#""announced":{"addr":"198.51.100.7","port":25}"#)
        );
        let garbled = Event {
            kind: EventKind::Refused as u8,
            reason: Reason::ParseError as u8,
            control,
            ..Event::zeroed()
        };
        let row = Row::decode(&bytes(&garbled)).unwrap();
        assert_eq!(
            row.json(),
            r#"{"event":"refused","reason":"parse_error","family":null,"announced":null,"control":{"src":"192.0.2.2","src_port":40000,"dst":"192.0.2.1","dst_port":21}}"#
        );
        assert_eq!(
            row.to_string(),
            "[REFUSED parse_error] master 192.0.2.2:40000 -> 192.0.2.1:21"
        );
    }

    #[test]
    fn a_refused_229_names_the_servers_own_address() {
        let event = Event {
            kind: EventKind::Refused as u8,
            reason: Reason::LowPort as u8,
            announcer: Sender::Server as u8,
            flow: FlowKey {
                family: FAMILY_OWN_ADDRESS,
                dst_port: 25,
                ..FlowKey::zeroed()
            },
            control: key("2001:db8::2", 40000, "2001:db8::1", 21),
            ..Event::zeroed()
        };
        assert_eq!(
            Row::decode(&bytes(&event)).unwrap().to_string(),
            "[REFUSED low_port] ipv6 tcp [2001:db8::1]:25 master [2001:db8::2]:40000 -> [2001:db8::1]:21"
        );
    }

    #[test]
    fn unknown_records_are_skipped() {
        let unknown = Event {
            kind: 200,
            ..Event::zeroed()
        };
        assert_eq!(Row::decode(&bytes(&unknown)), None);
        assert_eq!(Row::decode(&[1, 2, 3]), None);
    }
}
