//! Deleting expired expectations, finished flows and idle control connections, which the
//! programs leave behind.

use anyhow::Result;
use aya::{Ebpf, Pod, maps::HashMap};
use ftp_ebpf_common::{
    control::ControlState,
    expect::{ExpectKey, ExpectValue},
    flow::{FlowKey, FlowValue},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub expectations: usize,
    pub flows: usize,
    pub controls: usize,
}

pub fn sweep(ebpf: &mut Ebpf, now_ns: u64, flow_idle_timeout_ns: u64) -> Result<Swept> {
    Ok(Swept {
        expectations: remove_where(ebpf, "EXPECTATIONS", |_: &ExpectKey, v: &ExpectValue| {
            !v.is_live(now_ns)
        })?,
        flows: remove_where(ebpf, "FLOWS", |_: &FlowKey, v: &FlowValue| {
            v.is_finished(now_ns, flow_idle_timeout_ns)
        })?,
        controls: remove_where(ebpf, "CONTROLS", |_: &FlowKey, v: &ControlState| {
            v.is_idle(now_ns)
        })?,
    })
}

/// Removes the entries of table `name` that `done` picks; returns how many went (the
/// programs may have removed some meanwhile).
fn remove_where<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    done: impl Fn(&K, &V) -> bool,
) -> Result<usize> {
    let Some(map) = ebpf.map_mut(name) else {
        return Ok(0);
    };
    let mut table: HashMap<_, K, V> = HashMap::try_from(map)?;
    let finished: Vec<K> = table
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| done(k, v))
        .map(|(k, _)| k)
        .collect();
    Ok(finished
        .iter()
        .filter(|key| table.remove(key).is_ok())
        .count())
}
