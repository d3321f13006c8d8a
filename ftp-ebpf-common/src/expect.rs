//! Expectations: data connections an FTP control connection announced and that may
//! therefore be opened, once, before they expire.

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::{Addr, Family, split},
    flow::FlowKey,
};

/// Who may connect to whom. The connecting side's source port is a wildcard, as in the
/// kernel's FTP helper: clients and servers pick it freely.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ExpectKey {
    pub family: u8,
    pub _pad: u8,
    pub port: u16,
    pub connector: Addr,
    pub listener: Addr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ExpectValue {
    pub expires_ns: u64,
    /// The control connection whose line announced the port, as that line travelled.
    pub control: FlowKey,
}

impl ExpectKey {
    pub const fn new(family: Family, connector: Addr, listener: Addr, port: u16) -> Self {
        Self {
            family: family.as_u8(),
            _pad: 0,
            port,
            connector,
            listener,
        }
    }

    /// `connector` may connect to `listener` on `port`; None when their families differ.
    pub const fn from_ips(
        connector: core::net::IpAddr,
        listener: core::net::IpAddr,
        port: u16,
    ) -> Option<Self> {
        let (family, connector) = split(connector);
        let (listener_family, listener) = split(listener);
        if family as u8 != listener_family as u8 {
            return None;
        }
        Some(Self::new(family, connector, listener, port))
    }

    /// The expectation a SYN would consume: its sender connects to its destination port.
    pub fn for_syn(syn: &FlowKey) -> Self {
        Self {
            family: syn.family,
            _pad: 0,
            port: syn.dst_port,
            connector: syn.src,
            listener: syn.dst,
        }
    }
}

impl ExpectValue {
    pub fn is_live(&self, now_ns: u64) -> bool {
        now_ns < self.expires_ns
    }
}
