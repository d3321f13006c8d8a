//! Listing the live expectations and tracked flows, as `conntrack -L expect` and
//! `conntrack -L` do for the kernel's tables. Each table is walked once, into typed rows,
//! which are then rendered as JSON (serde) or as text, from the same fields.

use std::{borrow::Borrow, net::IpAddr};

use aya::maps::{HashMap, MapData};
use ftp_ebpf_common::{
    addr::{Addr, AddrKey, Family, to_ip},
    contract::NS_PER_SEC,
    control::ControlState,
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
    nat::{NAT_TO_INSIDE, NatBinding, NatFlow},
    tls::TlsPeerSeen,
};
use serde::Serialize;

fn ip(family: u8, addr: &Addr) -> String {
    to_ip(family, addr).map_or_else(|| format!("family {family}?"), |ip: IpAddr| ip.to_string())
}

fn family(family: u8) -> &'static str {
    Family::from_u8(family).map_or("unknown", Family::name)
}

/// `address:port`, an IPv6 address in brackets, as a listed row shows it.
fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn secs(ns: u64) -> u64 {
    ns / NS_PER_SEC
}

/// A listed entry: its fields are the JSON object (`--json`), and its line of text is
/// made of the same fields.
pub trait Row: Serialize {
    /// What one row is, as the count after the text names it.
    const WHAT: &'static str;
    fn text(&self) -> String;
}

/// A JSON array of the rows.
pub fn to_json<R: Row>(rows: &[R]) -> String {
    serde_json::to_string(rows).expect("rows of strings and integers serialize")
}

/// A line per row, then a count as conntrack prints it.
pub fn to_text<R: Row>(rows: &[R]) -> String {
    summary(rows.iter().map(Row::text).collect(), R::WHAT)
}

/// The control connection that announced an expectation, as the client opened it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Control {
    pub src: String,
    pub src_port: u16,
    pub dst: String,
    pub dst_port: u16,
}

/// An announced data connection: `connector` may open a connection to `listener`:`port`
/// from any source port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Expectation {
    pub family: &'static str,
    pub connector: String,
    pub listener: String,
    pub port: u16,
    pub expires_in_secs: u64,
    pub control: Control,
    /// On a NAT gateway: where the data connection goes, translated (`--nat-inside`),
    /// as `conntrack -L` shows a connection's reply tuple.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translated_to: Option<String>,
    /// Announced by a TLS control connection (read through --tls-uprobes).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

impl Expectation {
    pub fn new(k: &ExpectKey, v: &ExpectValue, now_ns: u64) -> Self {
        let c = &v.control;
        Self {
            translated_to: None,
            tls: false,
            family: family(k.family),
            connector: ip(k.family, &k.connector),
            listener: ip(k.family, &k.listener),
            port: k.port,
            expires_in_secs: secs(v.expires_ns.saturating_sub(now_ns)),
            control: Control {
                src: ip(c.family, &c.src),
                src_port: c.src_port,
                dst: ip(c.family, &c.dst),
                dst_port: c.dst_port,
            },
        }
    }
}

/// The live expectations, oldest expiry first, with where a gateway translates each
/// (`bindings`: NAT_BINDINGS, when the instance has it) and whether its control connection
/// is TLS (`controls`: CONTROLS).
pub fn expectations<T: Borrow<MapData>, B: Borrow<MapData>, C: Borrow<MapData>>(
    table: &HashMap<T, ExpectKey, ExpectValue>,
    bindings: Option<&HashMap<B, ExpectKey, NatBinding>>,
    controls: Option<&HashMap<C, FlowKey, ControlState>>,
    now_ns: u64,
) -> Vec<Expectation> {
    let mut entries: Vec<(ExpectKey, ExpectValue)> = table
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.is_live(now_ns))
        .collect();
    entries.sort_by_key(|(k, v)| (v.expires_ns, k.port));
    entries
        .iter()
        .map(|(k, v)| Expectation {
            translated_to: bindings
                .and_then(|b| b.get(k, 0).ok())
                .map(|b| endpoint(&ip(k.family, &b.inside), k.port)),
            // Keyed client -> server; `control` is as the announcing line travelled.
            tls: controls.is_some_and(|c| {
                [v.control, v.control.reversed()]
                    .iter()
                    .any(|key| c.get(key, 0).is_ok_and(|state| state.is_tls()))
            }),
            ..Expectation::new(k, v, now_ns)
        })
        .collect()
}

impl Row for Expectation {
    const WHAT: &'static str = "expectation";

    fn text(&self) -> String {
        let c = &self.control;
        format!(
            "{:>5}s {} tcp {} -> {} (any source port){} announced by {} -> {}{}",
            self.expires_in_secs,
            self.family,
            self.connector,
            endpoint(&self.listener, self.port),
            translated(self.translated_to.as_deref()),
            endpoint(&c.src, c.src_port),
            endpoint(&c.dst, c.dst_port),
            if self.tls { " (TLS)" } else { "" },
        )
    }
}

/// Whether a tracked data connection has sent FIN or RST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    Open,
    Closing,
}

impl FlowState {
    fn of(v: &FlowValue) -> Self {
        if v.closing_since_ns == 0 {
            Self::Open
        } else {
            Self::Closing
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closing => "closing",
        }
    }
}

/// By name, as the text shows it.
impl Serialize for FlowState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// An admitted data connection, by its initiator's 5-tuple.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub family: &'static str,
    pub src: String,
    pub src_port: u16,
    pub dst: String,
    pub dst_port: u16,
    pub state: FlowState,
    pub age_secs: u64,
    pub idle_secs: u64,
    /// On a NAT gateway: where the connection goes, translated (`--nat-inside`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translated_to: Option<String>,
    /// Between the ends of a TLS control connection: a data connection of FTP over TLS.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

impl Flow {
    pub fn new(k: &FlowKey, v: &FlowValue, now_ns: u64) -> Self {
        Self {
            translated_to: None,
            tls: false,
            family: family(k.family),
            src: ip(k.family, &k.src),
            src_port: k.src_port,
            dst: ip(k.family, &k.dst),
            dst_port: k.dst_port,
            state: FlowState::of(v),
            age_secs: secs(now_ns.saturating_sub(v.admitted_ns)),
            idle_secs: secs(now_ns.saturating_sub(v.last_seen_ns)),
        }
    }
}

/// The tracked flows, oldest first, with where a gateway translates each (`translations`:
/// NAT_FLOWS, when the instance has it) and whether both ends are a TLS control
/// connection's (`tls_peers`: TLS_PEERS).
pub fn flows<T: Borrow<MapData>, N: Borrow<MapData>, P: Borrow<MapData>>(
    table: &HashMap<T, FlowKey, FlowValue>,
    translations: Option<&HashMap<N, FlowKey, NatFlow>>,
    tls_peers: Option<&HashMap<P, AddrKey, TlsPeerSeen>>,
    now_ns: u64,
) -> Vec<Flow> {
    let mut entries: Vec<(FlowKey, FlowValue)> = table.iter().filter_map(Result::ok).collect();
    entries.sort_by_key(|(_, v)| v.admitted_ns);
    entries
        .iter()
        .map(|(k, v)| Flow {
            translated_to: translations
                .and_then(|t| t.get(k, 0).ok())
                .filter(|t| t.direction == NAT_TO_INSIDE)
                .map(|t| endpoint(&ip(k.family, &t.addr), k.dst_port)),
            tls: tls_peers.is_some_and(|peers| {
                [k.src, k.dst]
                    .iter()
                    .all(|addr| peers.get(&AddrKey::new(k.family, *addr), 0).is_ok())
            }),
            ..Flow::new(k, v, now_ns)
        })
        .collect()
}

impl Row for Flow {
    const WHAT: &'static str = "flow";

    fn text(&self) -> String {
        format!(
            "{} tcp {} -> {}{} {} age {}s idle {}s{}",
            self.family,
            endpoint(&self.src, self.src_port),
            endpoint(&self.dst, self.dst_port),
            translated(self.translated_to.as_deref()),
            self.state.name(),
            self.age_secs,
            self.idle_secs,
            if self.tls { " (TLS)" } else { "" },
        )
    }
}

/// The lines, then a count as conntrack prints it.
/// ` translated to ADDRESS:PORT`, or nothing.
fn translated(to: Option<&str>) -> String {
    to.map(|to| format!(" translated to {to}"))
        .unwrap_or_default()
}

fn summary(lines: Vec<String>, what: &str) -> String {
    let count = lines.len();
    let mut text: String = lines.into_iter().map(|l| l + "\n").collect();
    text += &format!(
        "{count} {what}{} listed\n",
        if count == 1 { "" } else { "s" }
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_of_test() -> Flow {
        Flow {
            family: "ipv4",
            src: "192.0.2.2".into(),
            src_port: 40001,
            dst: "192.0.2.1".into(),
            dst_port: 10001,
            state: FlowState::Closing,
            age_secs: 5,
            idle_secs: 1,
            translated_to: None,
            tls: false,
        }
    }

    /// The JSON keeps the shape scripts read, and each line of text shows the same fields.
    #[test]
    fn json_and_text_come_from_one_row() {
        let expectation = Expectation {
            family: "ipv6",
            connector: "2001:db8::2".into(),
            listener: "2001:db8::1".into(),
            port: 10001,
            expires_in_secs: 299,
            control: Control {
                src: "2001:db8::2".into(),
                src_port: 40000,
                dst: "2001:db8::1".into(),
                dst_port: 21,
            },
            translated_to: None,
            tls: false,
        };
        assert_eq!(
            to_json(std::slice::from_ref(&expectation)),
            r#"[{"family":"ipv6","connector":"2001:db8::2","listener":"2001:db8::1","port":10001,"expires_in_secs":299,"control":{"src":"2001:db8::2","src_port":40000,"dst":"2001:db8::1","dst_port":21}}]"#
        );
        assert_eq!(
            to_text(&[expectation]),
            "  299s ipv6 tcp 2001:db8::2 -> [2001:db8::1]:10001 (any source port) announced by [2001:db8::2]:40000 -> [2001:db8::1]:21\n1 expectation listed\n"
        );
        let flow = flow_of_test();
        assert_eq!(
            to_json(std::slice::from_ref(&flow)),
            r#"[{"family":"ipv4","src":"192.0.2.2","src_port":40001,"dst":"192.0.2.1","dst_port":10001,"state":"closing","age_secs":5,"idle_secs":1}]"#
        );
        assert_eq!(
            to_text(&[flow.clone(), flow]),
            "ipv4 tcp 192.0.2.2:40001 -> 192.0.2.1:10001 closing age 5s idle 1s\n".repeat(2)
                + "2 flows listed\n"
        );
        assert_eq!(to_json::<Flow>(&[]), "[]");
        // FTP over TLS: marked in both forms.
        let tls = Flow {
            tls: true,
            ..flow_of_test()
        };
        assert!(to_text(std::slice::from_ref(&tls)).contains("idle 1s (TLS)\n"));
        assert!(to_json(&[tls]).ends_with(r#""idle_secs":1,"tls":true}]"#));
        // On a gateway, where each goes after translation, as conntrack -L shows it.
        let translated = Flow {
            dst: "198.51.100.1".into(),
            state: FlowState::Open,
            translated_to: Some("10.0.2.2:10001".into()),
            ..flow_of_test()
        };
        assert_eq!(
            to_text(std::slice::from_ref(&translated)),
            "ipv4 tcp 192.0.2.2:40001 -> 198.51.100.1:10001 translated to 10.0.2.2:10001 open age 5s idle 1s\n1 flow listed\n"
        );
        assert!(to_json(&[translated]).ends_with(r#""translated_to":"10.0.2.2:10001"}]"#));
    }
}
