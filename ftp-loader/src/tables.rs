//! Listing the live expectations and tracked flows, as `conntrack -L expect` and
//! `conntrack -L` do for the kernel's tables.

use std::net::IpAddr;

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map};
use ftp_ebpf_common::{
    addr::{Addr, to_ip},
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
};
use serde_json::{Value, json};

fn ip(family: u8, addr: &Addr) -> String {
    to_ip(family, addr).map_or_else(|| format!("family {family}?"), |ip: IpAddr| ip.to_string())
}

fn family(family: u8) -> &'static str {
    match family {
        4 => "ipv4",
        6 => "ipv6",
        _ => "unknown",
    }
}

fn endpoint(family: u8, addr: &Addr, port: u16) -> String {
    match to_ip(family, addr) {
        Some(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        Some(v4) => format!("{v4}:{port}"),
        None => format!("?:{port}"),
    }
}

fn secs(ns: u64) -> u64 {
    ns / 1_000_000_000
}

/// Every live expectation, oldest expiry first.
pub fn expectations(map: &Map, now_ns: u64) -> Result<Vec<Value>> {
    let table: HashMap<_, ExpectKey, ExpectValue> =
        HashMap::try_from(map).context("EXPECTATIONS is not a hash map")?;
    let mut entries: Vec<(ExpectKey, ExpectValue)> = table
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.is_live(now_ns))
        .collect();
    entries.sort_by_key(|(_, v)| v.expires_ns);
    Ok(entries
        .iter()
        .map(|(k, v)| {
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
        })
        .collect())
}

pub fn expectations_text(map: &Map, now_ns: u64) -> Result<String> {
    let table: HashMap<_, ExpectKey, ExpectValue> = HashMap::try_from(map)?;
    let mut lines = Vec::new();
    for (k, v) in table
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.is_live(now_ns))
    {
        let c = &v.control;
        lines.push((
            v.expires_ns,
            format!(
                "{:>5}s {} tcp {} -> {} (any source port) announced by {} -> {}",
                secs(v.expires_ns - now_ns),
                family(k.family),
                ip(k.family, &k.connector),
                endpoint(k.family, &k.listener, k.port),
                endpoint(c.family, &c.src, c.src_port),
                endpoint(c.family, &c.dst, c.dst_port),
            ),
        ));
    }
    lines.sort();
    Ok(summary(
        lines.into_iter().map(|(_, l)| l).collect(),
        "expectation",
    ))
}

fn flow_state(v: &FlowValue) -> &'static str {
    if v.closing_since_ns == 0 {
        "open"
    } else {
        "closing"
    }
}

pub fn flows(map: &Map, now_ns: u64) -> Result<Vec<Value>> {
    let table: HashMap<_, FlowKey, FlowValue> =
        HashMap::try_from(map).context("FLOWS is not a hash map")?;
    let mut entries: Vec<(FlowKey, FlowValue)> = table.iter().filter_map(Result::ok).collect();
    entries.sort_by_key(|(_, v)| v.admitted_ns);
    Ok(entries
        .iter()
        .map(|(k, v)| {
            json!({
                "family": family(k.family),
                "src": ip(k.family, &k.src), "src_port": k.src_port,
                "dst": ip(k.family, &k.dst), "dst_port": k.dst_port,
                "state": flow_state(v),
                "age_secs": secs(now_ns.saturating_sub(v.admitted_ns)),
                "idle_secs": secs(now_ns.saturating_sub(v.last_seen_ns)),
            })
        })
        .collect())
}

pub fn flows_text(map: &Map, now_ns: u64) -> Result<String> {
    let table: HashMap<_, FlowKey, FlowValue> = HashMap::try_from(map)?;
    let mut entries: Vec<(FlowKey, FlowValue)> = table.iter().filter_map(Result::ok).collect();
    entries.sort_by_key(|(_, v)| v.admitted_ns);
    let lines = entries
        .iter()
        .map(|(k, v)| {
            format!(
                "{} tcp {} -> {} {} age {}s idle {}s",
                family(k.family),
                endpoint(k.family, &k.src, k.src_port),
                endpoint(k.family, &k.dst, k.dst_port),
                flow_state(v),
                secs(now_ns.saturating_sub(v.admitted_ns)),
                secs(now_ns.saturating_sub(v.last_seen_ns)),
            )
        })
        .collect();
    Ok(summary(lines, "flow"))
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
