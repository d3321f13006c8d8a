//! Listing the live expectations and tracked flows, as `conntrack -L expect` and
//! `conntrack -L` do for the kernel's tables. Each table is walked once, into typed rows,
//! which are then rendered as JSON (serde) or as text, from the same fields.

use std::{borrow::Borrow, net::IpAddr};

use aya::maps::{HashMap, MapData};
use ftp_ebpf_common::{
    addr::{Addr, Family, to_ip},
    contract::NS_PER_SEC,
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
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
}

impl Expectation {
    pub fn new(k: &ExpectKey, v: &ExpectValue, now_ns: u64) -> Self {
        let c = &v.control;
        Self {
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

/// Every live expectation, oldest expiry first.
pub fn expectations<T: Borrow<MapData>>(
    table: &HashMap<T, ExpectKey, ExpectValue>,
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
        .map(|(k, v)| Expectation::new(k, v, now_ns))
        .collect()
}

impl Row for Expectation {
    const WHAT: &'static str = "expectation";

    fn text(&self) -> String {
        let c = &self.control;
        format!(
            "{:>5}s {} tcp {} -> {} (any source port) announced by {} -> {}",
            self.expires_in_secs,
            self.family,
            self.connector,
            endpoint(&self.listener, self.port),
            endpoint(&c.src, c.src_port),
            endpoint(&c.dst, c.dst_port),
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
}

impl Flow {
    pub fn new(k: &FlowKey, v: &FlowValue, now_ns: u64) -> Self {
        Self {
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

/// Every tracked flow, oldest first.
pub fn flows<T: Borrow<MapData>>(table: &HashMap<T, FlowKey, FlowValue>, now_ns: u64) -> Vec<Flow> {
    let mut entries: Vec<(FlowKey, FlowValue)> = table.iter().filter_map(Result::ok).collect();
    entries.sort_by_key(|(_, v)| v.admitted_ns);
    entries
        .iter()
        .map(|(k, v)| Flow::new(k, v, now_ns))
        .collect()
}

impl Row for Flow {
    const WHAT: &'static str = "flow";

    fn text(&self) -> String {
        format!(
            "{} tcp {} -> {} {} age {}s idle {}s",
            self.family,
            endpoint(&self.src, self.src_port),
            endpoint(&self.dst, self.dst_port),
            self.state.name(),
            self.age_secs,
            self.idle_secs,
        )
    }
}

/// The lines, then a count as conntrack prints it.
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
        };
        assert_eq!(
            to_json(std::slice::from_ref(&expectation)),
            r#"[{"family":"ipv6","connector":"2001:db8::2","listener":"2001:db8::1","port":10001,"expires_in_secs":299,"control":{"src":"2001:db8::2","src_port":40000,"dst":"2001:db8::1","dst_port":21}}]"#
        );
        assert_eq!(
            to_text(&[expectation]),
            "  299s ipv6 tcp 2001:db8::2 -> [2001:db8::1]:10001 (any source port) announced by [2001:db8::2]:40000 -> [2001:db8::1]:21\n1 expectation listed\n"
        );
        let flow = Flow {
            family: "ipv4",
            src: "192.0.2.2".into(),
            src_port: 40001,
            dst: "192.0.2.1".into(),
            dst_port: 10001,
            state: FlowState::Closing,
            age_secs: 5,
            idle_secs: 1,
        };
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
    }
}
