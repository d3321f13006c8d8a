//! Listing the live expectations and tracked flows, as `conntrack -L expect` and
//! `conntrack -L` do for the kernel's tables. Each table is walked once, into rows, which
//! are then rendered as JSON or as text.

use std::{borrow::Borrow, net::IpAddr};

use aya::maps::{HashMap, MapData};
use ftp_ebpf_common::{
    addr::{Addr, Family, to_ip},
    contract::NS_PER_SEC,
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
};
use serde_json::{Value, json};

fn ip(family: u8, addr: &Addr) -> String {
    to_ip(family, addr).map_or_else(|| format!("family {family}?"), |ip: IpAddr| ip.to_string())
}

fn family(family: u8) -> &'static str {
    Family::from_u8(family).map_or("unknown", Family::name)
}

fn endpoint(family: u8, addr: &Addr, port: u16) -> String {
    match to_ip(family, addr) {
        Some(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        Some(v4) => format!("{v4}:{port}"),
        None => format!("?:{port}"),
    }
}

fn secs(ns: u64) -> u64 {
    ns / NS_PER_SEC
}

/// A listed entry, as JSON and as a line of text.
pub trait Row {
    /// What one row is, as the count after the text names it.
    const WHAT: &'static str;
    fn json(&self, now_ns: u64) -> Value;
    fn text(&self, now_ns: u64) -> String;
}

/// A JSON array of the rows.
pub fn to_json<R: Row>(rows: &[R], now_ns: u64) -> Value {
    Value::Array(rows.iter().map(|r| r.json(now_ns)).collect())
}

/// A line per row, then a count as conntrack prints it.
pub fn to_text<R: Row>(rows: &[R], now_ns: u64) -> String {
    summary(rows.iter().map(|r| r.text(now_ns)).collect(), R::WHAT)
}

pub struct Expectation(pub ExpectKey, pub ExpectValue);

/// Every live expectation, oldest expiry first.
pub fn expectations<T: Borrow<MapData>>(
    table: &HashMap<T, ExpectKey, ExpectValue>,
    now_ns: u64,
) -> Vec<Expectation> {
    let mut rows: Vec<Expectation> = table
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.is_live(now_ns))
        .map(|(k, v)| Expectation(k, v))
        .collect();
    rows.sort_by_key(|Expectation(k, v)| (v.expires_ns, k.port));
    rows
}

impl Row for Expectation {
    const WHAT: &'static str = "expectation";

    fn json(&self, now_ns: u64) -> Value {
        let Self(k, v) = self;
        let c = &v.control;
        json!({
            "family": family(k.family),
            "connector": ip(k.family, &k.connector),
            "listener": ip(k.family, &k.listener),
            "port": k.port,
            "expires_in_secs": secs(v.expires_ns - now_ns),
            "control": {
                "src": ip(c.family, &c.src), "src_port": c.src_port,
                "dst": ip(c.family, &c.dst), "dst_port": c.dst_port,
            },
        })
    }

    fn text(&self, now_ns: u64) -> String {
        let Self(k, v) = self;
        let c = &v.control;
        format!(
            "{:>5}s {} tcp {} -> {} (any source port) announced by {} -> {}",
            secs(v.expires_ns - now_ns),
            family(k.family),
            ip(k.family, &k.connector),
            endpoint(k.family, &k.listener, k.port),
            endpoint(c.family, &c.src, c.src_port),
            endpoint(c.family, &c.dst, c.dst_port),
        )
    }
}

fn flow_state(v: &FlowValue) -> &'static str {
    if v.closing_since_ns == 0 {
        "open"
    } else {
        "closing"
    }
}

pub struct Flow(pub FlowKey, pub FlowValue);

/// Every tracked flow, oldest first.
pub fn flows<T: Borrow<MapData>>(table: &HashMap<T, FlowKey, FlowValue>) -> Vec<Flow> {
    let mut rows: Vec<Flow> = table
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| Flow(k, v))
        .collect();
    rows.sort_by_key(|Flow(_, v)| v.admitted_ns);
    rows
}

impl Row for Flow {
    const WHAT: &'static str = "flow";

    fn json(&self, now_ns: u64) -> Value {
        let Self(k, v) = self;
        json!({
            "family": family(k.family),
            "src": ip(k.family, &k.src), "src_port": k.src_port,
            "dst": ip(k.family, &k.dst), "dst_port": k.dst_port,
            "state": flow_state(v),
            "age_secs": secs(now_ns.saturating_sub(v.admitted_ns)),
            "idle_secs": secs(now_ns.saturating_sub(v.last_seen_ns)),
        })
    }

    fn text(&self, now_ns: u64) -> String {
        let Self(k, v) = self;
        format!(
            "{} tcp {} -> {} {} age {}s idle {}s",
            family(k.family),
            endpoint(k.family, &k.src, k.src_port),
            endpoint(k.family, &k.dst, k.dst_port),
            flow_state(v),
            secs(now_ns.saturating_sub(v.admitted_ns)),
            secs(now_ns.saturating_sub(v.last_seen_ns)),
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
