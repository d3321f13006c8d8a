//! `run --metrics-listen ADDR:PORT`: the counters, the tables' occupancy, the attach state
//! and the build as an OpenMetrics / Prometheus text endpoint (`GET /metrics`). Each scrape
//! reads the pinned tables and the record afresh (`pins::open`, `Record::read`), as
//! `ftp-loader stats` does from another process: the endpoint borrows nothing from the
//! running instance and shows what an admin's own commands would.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Pod,
    maps::{IterableMap, MapData},
};
use ftp_ebpf_common::{
    contract::{CLIENTS, CONTROLS, EXPECTATIONS, FLOWS, HashTable, WOULD_DROP},
    policy::PortClass,
    stats::Counter,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    runtime::Runtime,
};

use crate::{
    ebpf::Settings,
    monitor::{self, Mode, WouldDrop},
    pins,
    record::{self, Record},
    stats,
};

/// What every metric's name starts with.
pub const PREFIX: &str = "ftp_tracker";
/// The one path served.
pub const PATH: &str = "/metrics";

/// The OpenMetrics text format, served to scrapers that ask for it (Prometheus does).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format 0.0.4, served to everyone else (curl, promtool, browsers).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A request head larger than this is no scrape.
const MAX_HEAD: usize = 8192;
/// A client that has not sent its request by then is dropped, so that idle connections
/// cannot pile up.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `--metrics-listen`: an IP address and a port (IPv6 in brackets).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "`{text}` is not ADDR:PORT: give an IP address and a port, e.g. 127.0.0.1:9640 or [::1]:9640"
        )
    })
}

/// Binds the endpoint's socket (before anything is attached, so that a refusal leaves
/// nothing behind).
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)
        .map_err(|error| anyhow!("{}", bind_refusal(address, &error)))?;
    // Tokio's listener needs it (`TcpListener::from_std`).
    listener
        .set_nonblocking(true)
        .context("setting the metrics socket non-blocking")?;
    Ok(listener)
}

/// Why `address` cannot be listened on, in one sentence naming the fix.
fn bind_refusal(address: SocketAddr, error: &std::io::Error) -> String {
    let (ip, port) = (address.ip(), address.port());
    match error.raw_os_error() {
        Some(libc::EADDRINUSE) => format!(
            "--metrics-listen {address}: another socket listens on port {port} already: give another port, or find its owner with `ss -ltnp 'sport = :{port}'`"
        ),
        Some(libc::EADDRNOTAVAIL) => format!(
            "--metrics-listen {address}: {ip} is not an address of this host: give one of its addresses (`ip addr`), a loopback address, or {} for all of them",
            if ip.is_ipv4() { "0.0.0.0" } else { "[::]" }
        ),
        Some(libc::EACCES) => format!(
            "--metrics-listen {address}: ports below 1024 need CAP_NET_BIND_SERVICE: give a port of 1024 or above, such as 9640"
        ),
        _ => format!(
            "--metrics-listen {address}: cannot listen there ({error}): give another address"
        ),
    }
}

/// One table's occupancy.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// Entries held, stale ones included until a lookup removes them or a new entry reuses
    /// them (the tables are LRU maps, nothing sweeps them).
    pub entries: u64,
    pub capacity: u32,
}

/// What one scrape reports.
#[derive(Debug)]
pub struct Snapshot {
    pub counters: Vec<(Counter, u64)>,
    pub tables: Vec<Table>,
    /// The instance's record: which interfaces, hooks and modes; `None` before it is
    /// written.
    pub record: Option<Record>,
    /// `record::build()` of this binary.
    pub build: String,
    /// Whether the programs enforce or only monitor; `None` if CONFIG cannot be read.
    pub mode: Option<Mode>,
    /// The guarded ports SYNs were refused to while monitoring.
    pub would_drop: Vec<WouldDrop>,
}

fn table<K: Pod, V: Pod>(pin_dir: &Path, table: HashTable<K, V>) -> Result<Table> {
    let map = table.from_map(pins::open(pin_dir, table.name)?)?;
    let data: &MapData = map.map();
    let capacity = data
        .info()
        .with_context(|| format!("reading the size of table {}", table.name))?
        .max_entries();
    // Bounded: a walk restarts from the first key when the one it stood on is removed
    // meanwhile, which a busy table could repeat.
    let entries = map.keys().take(capacity as usize).count() as u64;
    Ok(Table {
        name: table.name,
        entries,
        capacity,
    })
}

impl Snapshot {
    /// Reads the instance with pin directory `pin_dir`.
    pub fn read(pin_dir: &Path) -> Result<Self> {
        let counters = stats::read_pinned(pin_dir)?;
        let tables = vec![
            table(pin_dir, EXPECTATIONS)?,
            table(pin_dir, FLOWS)?,
            table(pin_dir, CONTROLS)?,
            table(pin_dir, CLIENTS)?,
        ];
        let would_drop =
            monitor::would_drop(&WOULD_DROP.from_map(pins::open(pin_dir, WOULD_DROP.name)?)?)?;
        Ok(Self {
            counters,
            tables,
            record: Record::read(pin_dir),
            build: record::build(),
            mode: Mode::running(pin_dir),
            would_drop,
        })
    }

    /// The snapshot in the OpenMetrics text format (`openmetrics`) or Prometheus's 0.0.4.
    pub fn encode(self, openmetrics: bool) -> Result<String, fmt::Error> {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
        }
        Ok(text)
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // Every counter of the programs under its own name (the encoder adds `_total`).
        for &(counter, value) in &self.counters {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(
                counter.name(),
                counter.help(),
                None,
                metric.metric_type(),
            )?)?;
        }
        let mut entries = encoder.encode_descriptor(
            "table_entries",
            "entries a table holds, expired ones included until a lookup removes or a new entry reuses them",
            None,
            MetricType::Gauge,
        )?;
        for table in &self.tables {
            let label = table.name.to_ascii_lowercase();
            entries
                .encode_family(&[("table", label.as_str())])?
                .encode_gauge(&table.entries)?;
        }
        let mut capacity = encoder.encode_descriptor(
            "table_capacity",
            "entries a table can hold (--max-expectations, --max-flows, --max-controls)",
            None,
            MetricType::Gauge,
        )?;
        for table in &self.tables {
            let label = table.name.to_ascii_lowercase();
            capacity
                .encode_family(&[("table", label.as_str())])?
                .encode_gauge(&table.capacity)?;
        }
        let mut attached = encoder.encode_descriptor(
            "attached",
            "1 where a program of the instance is attached (interface, ingress or egress, and how), 0 while its interface is deleted",
            None,
            MetricType::Gauge,
        )?;
        for interface in self.record.iter().flat_map(|r| &r.interfaces) {
            for (hook, mode) in [("ingress", interface.ingress), ("egress", interface.egress)] {
                let labels = [
                    ("interface", interface.name.as_str()),
                    ("hook", hook),
                    ("mode", mode.mode()),
                ];
                attached
                    .encode_family(&labels)?
                    .encode_gauge(&u32::from(interface.present))?;
            }
        }
        if let Some(mode) = self.mode {
            encoder
                .encode_descriptor(
                    "monitoring",
                    "1 while the programs only monitor (--monitor: nothing is dropped), 0 while they enforce",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&u32::from(mode == Mode::Monitor))?;
        }
        let mut would_drop = encoder.encode_descriptor(
            "would_drop_syns",
            "SYNs to this guarded port the guard refused while monitoring (what enforcement would drop; --allow-port admits them)",
            None,
            MetricType::Counter,
        )?;
        for row in &self.would_drop {
            let port = row.port.to_string();
            would_drop
                .encode_family(&[("port", port.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&row.syns, None)?;
        }
        let mut build = encoder.encode_descriptor(
            "build_info",
            "the loader's version and a digest of the programs it embeds",
            None,
            MetricType::Gauge,
        )?;
        build
            .encode_family(&[("version", self.build.as_str())])?
            .encode_gauge(&1u32)?;
        Ok(())
    }
}

/// Why scrapers on other hosts cannot reach `address`: its port is guarded (and not
/// allowed), so their SYNs are dropped like any unannounced connection's.
fn unreachable_from_elsewhere(address: SocketAddr, settings: &Settings) -> Option<String> {
    let port = address.port();
    (!address.ip().is_loopback() && settings.port_plan().class(port) == PortClass::Guarded).then(
        || {
            format!(
                "the metrics port {port} lies in --data-ports: scrapers on other hosts are dropped unless it is given with --allow-port {port}"
            )
        },
    )
}

/// Says where the endpoint is (and whether other hosts can reach it), then serves it on
/// `runtime` for as long as that runs.
pub fn start(
    runtime: &Runtime,
    listener: std::net::TcpListener,
    settings: &Settings,
    pin_dir: &Path,
) -> Result<()> {
    let address = listener
        .local_addr()
        .context("reading the metrics socket's address")?;
    log::info!("metrics: http://{address}{PATH}");
    if let Some(warning) = unreachable_from_elsewhere(address, settings) {
        log::warn!("{warning}");
    }
    runtime.spawn(serve(listener, pin_dir.to_owned()));
    Ok(())
}

/// Serves `GET /metrics` on `listener` until the runtime stops.
pub async fn serve(listener: std::net::TcpListener, pin_dir: PathBuf) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            log::error!("serving metrics: {error}; the guard runs on without them");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(answer(stream, peer, pin_dir.clone()));
            }
            // Out of descriptors, say: the next attempt may succeed, the guard is unharmed.
            Err(error) => {
                log::warn!("accepting a metrics connection: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request and answers it; the connection then closes.
async fn answer(mut stream: TcpStream, peer: SocketAddr, pin_dir: PathBuf) {
    let Ok(Some(head)) = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .unwrap_or(Ok(None))
    else {
        return;
    };
    let reply = match Request::parse(&head) {
        Err(reply) => reply,
        Ok(request) => {
            // Walking a large table takes a while: off the thread that serves signals.
            let read = tokio::task::spawn_blocking(move || Snapshot::read(&pin_dir)).await;
            match read {
                Ok(Ok(snapshot)) => match snapshot.encode(request.openmetrics) {
                    Ok(body) => Reply::ok(
                        if request.openmetrics {
                            OPENMETRICS
                        } else {
                            PROMETHEUS_TEXT
                        },
                        body,
                    ),
                    Err(fmt::Error) => Reply::error(503, "encoding the metrics failed"),
                },
                Ok(Err(error)) => Reply::error(503, &format!("{error:#}")),
                Err(error) => Reply::error(503, &error.to_string()),
            }
            .head_only(request.head_only)
        }
    };
    let _ = stream.write_all(&reply.bytes()).await;
    let _ = stream.shutdown().await;
    // A scraper that gets nothing useful can be found with -v.
    log::debug!("metrics: answered {peer} with {}", reply.status);
}

/// The request head, up to its blank line; `None` when the client sent none.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).await?;
        if read == 0 || head.len() + read > MAX_HEAD {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..read]);
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

/// A scrape: `GET /metrics` (or `HEAD`).
#[derive(Debug, PartialEq, Eq)]
struct Request {
    head_only: bool,
    /// The client accepts the OpenMetrics format.
    openmetrics: bool,
}

impl Request {
    /// The scrape `head` asks for, or the reply that refuses it.
    fn parse(head: &str) -> Result<Self, Reply> {
        let mut lines = head.split("\r\n");
        let mut parts = lines.next().unwrap_or_default().split(' ');
        let (method, target) = (parts.next().unwrap_or_default(), parts.next());
        let head_only = match method {
            "GET" => false,
            "HEAD" => true,
            _ => return Err(Reply::error(405, "only GET and HEAD are served")),
        };
        let path = target.unwrap_or_default().split('?').next();
        if path != Some(PATH) {
            return Err(Reply::error(404, &format!("metrics are at {PATH}")).head_only(head_only));
        }
        let openmetrics = lines.any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("accept")
                    && value.contains("application/openmetrics-text")
            })
        });
        Ok(Self {
            head_only,
            openmetrics,
        })
    }
}

/// An HTTP/1.1 response; the connection closes after it.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

impl Reply {
    fn ok(content_type: &'static str, body: String) -> Self {
        Self {
            status: 200,
            content_type,
            body,
            head_only: false,
        }
    }

    fn error(status: u16, why: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{why}\n"),
            head_only: false,
        }
    }

    fn head_only(self, head_only: bool) -> Self {
        Self { head_only, ..self }
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        let mut bytes = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            if self.status == 405 {
                "Allow: GET, HEAD\r\n"
            } else {
                ""
            },
        )
        .into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::record::{Hook, Interface};

    fn snapshot() -> Snapshot {
        let mut record = Record::new(&PathBuf::from("/sys/fs/bpf/x"));
        record.set(Interface {
            name: "eth0".into(),
            ingress: Hook::XdpNative,
            egress: Hook::Clsact,
            since: 1,
            present: true,
        });
        Snapshot {
            counters: Counter::ALL.iter().map(|&c| (c, 7)).collect(),
            tables: vec![Table {
                name: FLOWS.name,
                entries: 3,
                capacity: 262144,
            }],
            record: Some(record),
            build: "0.1.0+programs.0000abcd".into(),
            mode: Some(Mode::Monitor),
            would_drop: vec![WouldDrop {
                port: 9100,
                syns: 4,
                admit_with: "--allow-port 9100".into(),
            }],
        }
    }

    /// Every counter appears under its own name, the Prometheus way, with its help, in both
    /// formats; so do the gauges.
    #[test]
    fn every_counter_and_gauge_is_encoded() {
        for openmetrics in [false, true] {
            let text = snapshot().encode(openmetrics).unwrap();
            for counter in Counter::ALL {
                let name = format!("{PREFIX}_{}_total", counter.name());
                assert!(text.contains(&format!("\n{name} 7\n")), "{name}:\n{text}");
                assert!(text.contains(counter.help()), "{name}'s help:\n{text}");
            }
            for line in [
                "ftp_tracker_table_entries{table=\"flows\"} 3",
                "ftp_tracker_table_capacity{table=\"flows\"} 262144",
                "ftp_tracker_attached{interface=\"eth0\",hook=\"ingress\",mode=\"native\"} 1",
                "ftp_tracker_attached{interface=\"eth0\",hook=\"egress\",mode=\"tc\"} 1",
                "ftp_tracker_build_info{version=\"0.1.0+programs.0000abcd\"} 1",
                "ftp_tracker_monitoring 1",
                "ftp_tracker_would_drop_syns_total{port=\"9100\"} 4",
            ] {
                assert!(text.contains(line), "{line}:\n{text}");
            }
            assert_eq!(text.ends_with("# EOF\n"), openmetrics, "{text}");
        }
    }

    #[test]
    fn requests_are_answered_by_path_method_and_accept() {
        let get = |head: &str| Request::parse(head);
        assert_eq!(
            get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Request {
                head_only: false,
                openmetrics: false
            })
        );
        assert_eq!(
            get(
                "HEAD /metrics?x=1 HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"
            ),
            Ok(Request {
                head_only: true,
                openmetrics: true
            })
        );
        assert_eq!(get("GET / HTTP/1.1\r\n\r\n").unwrap_err().status, 404);
        assert_eq!(
            get("GET /metricsx HTTP/1.1\r\n\r\n").unwrap_err().status,
            404
        );
        let post = get("POST /metrics HTTP/1.1\r\n\r\n").unwrap_err();
        assert_eq!(post.status, 405);
        assert!(
            String::from_utf8(post.bytes())
                .unwrap()
                .contains("Allow: GET, HEAD\r\n")
        );
        let head = Reply::ok(PROMETHEUS_TEXT, "abc".into()).head_only(true);
        assert_eq!(
            String::from_utf8(head.bytes()).unwrap(),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {PROMETHEUS_TEXT}\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
            )
        );
    }

    #[test]
    fn a_guarded_port_is_unreachable_from_elsewhere_unless_allowed() {
        let address = |text: &str| text.parse().unwrap();
        let mut settings = Settings::default();
        let warning = unreachable_from_elsewhere(address("[2001:db8::1]:9640"), &settings);
        assert_eq!(
            warning.as_deref(),
            Some(
                "the metrics port 9640 lies in --data-ports: scrapers on other hosts are dropped unless it is given with --allow-port 9640"
            )
        );
        assert_eq!(
            unreachable_from_elsewhere(address("[::1]:9640"), &settings),
            None
        );
        assert_eq!(
            unreachable_from_elsewhere(address("0.0.0.0:900"), &settings),
            None
        );
        settings.allowed_ports.push(9640);
        assert_eq!(
            unreachable_from_elsewhere(address("0.0.0.0:9640"), &settings),
            None
        );
    }

    #[test]
    fn a_bad_listen_address_is_one_sentence() {
        assert_eq!(
            parse_listen("[::1]:9640"),
            Ok("[::1]:9640".parse().unwrap())
        );
        let error = parse_listen("localhost").unwrap_err();
        assert!(error.contains("e.g. 127.0.0.1:9640"), "{error}");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let error = bind(address).unwrap_err().to_string();
        assert!(
            error.contains("another socket listens on port") && !error.contains("os error"),
            "{error}"
        );
        let error = bind("192.0.2.77:9640".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("192.0.2.77 is not an address of this host"),
            "{error}"
        );
    }
}
