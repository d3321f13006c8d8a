//! Everything the kernel programs and the loader must agree on: the FTP control-line
//! scanner, the map key and value layouts, the port policy and the counters.
//!
//! The code is `no_std`, allocation-free and panic-free, so the same functions run inside
//! the verifier-checked programs and in host unit tests.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod addr;
pub mod contract;
pub mod control;
pub mod expect;
pub mod flow;
pub mod parse;
pub mod policy;
pub mod seq;
pub mod share;
pub mod stats;
pub mod window;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain-old-data without padding (bytemuck::Pod).
    unsafe impl aya::Pod for crate::expect::ExpectKey {}
    unsafe impl aya::Pod for crate::expect::ExpectValue {}
    unsafe impl aya::Pod for crate::flow::FlowKey {}
    unsafe impl aya::Pod for crate::flow::FlowValue {}
    unsafe impl aya::Pod for crate::control::ControlState {}
    unsafe impl aya::Pod for crate::policy::PortInfo {}
    unsafe impl aya::Pod for crate::addr::AddrKey {}
    unsafe impl aya::Pod for crate::share::ClientShare {}
}
