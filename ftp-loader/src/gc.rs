//! Deleting expired expectations, finished flows and idle control connections, which the
//! programs leave behind.

use anyhow::Result;
use aya::{Ebpf, maps::HashMap};
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
    let mut swept = Swept::default();
    if let Some(map) = ebpf.map_mut("EXPECTATIONS") {
        let mut expectations: HashMap<_, ExpectKey, ExpectValue> = HashMap::try_from(map)?;
        let expired: Vec<ExpectKey> = expectations
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| !v.is_live(now_ns))
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            // The programs may have consumed it meanwhile.
            if expectations.remove(&key).is_ok() {
                swept.expectations += 1;
            }
        }
    }
    if let Some(map) = ebpf.map_mut("FLOWS") {
        let mut flows: HashMap<_, FlowKey, FlowValue> = HashMap::try_from(map)?;
        let finished: Vec<FlowKey> = flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.is_finished(now_ns, flow_idle_timeout_ns))
            .map(|(k, _)| k)
            .collect();
        for key in finished {
            if flows.remove(&key).is_ok() {
                swept.flows += 1;
            }
        }
    }
    if let Some(map) = ebpf.map_mut("CONTROLS") {
        let mut controls: HashMap<_, FlowKey, ControlState> = HashMap::try_from(map)?;
        let idle: Vec<FlowKey> = controls
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.is_idle(now_ns))
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            if controls.remove(&key).is_ok() {
                swept.controls += 1;
            }
        }
    }
    Ok(swept)
}
