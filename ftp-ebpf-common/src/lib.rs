//! Everything the kernel programs and the loader must agree on: the FTP control-line
//! scanner, the map key and value layouts, the port policy and the counters.
//!
//! The code is `no_std`, allocation-free and panic-free, so the same functions run inside
//! the verifier-checked programs and in host unit tests.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod addr;
pub mod allow;
pub mod config;
pub mod contract;
pub mod control;
pub mod event;
pub mod expect;
pub mod flow;
pub mod nat;
pub mod parse;
pub mod policy;
pub mod seq;
pub mod seqadj;
pub mod share;
pub mod stats;
pub mod tls;
pub mod window;

#[cfg(feature = "user")]
mod pod {
    /// aya's `Pod` for map keys and values, each of which derives bytemuck's `Pod`, whose
    /// derive checks what aya's asks (`#[repr(C)]`, no padding, any bytes valid).
    macro_rules! aya_pod {
        ($($t:ty),+ $(,)?) => {$(
            const _: () = {
                fn derives_bytemuck_pod<T: bytemuck::Pod>() {}
                let _ = derives_bytemuck_pod::<$t>;
            };
            // SAFETY: the type is bytemuck::Pod (checked just above at compile time), which
            // promises plain data without padding, valid for any bytes: what aya::Pod needs.
            unsafe impl aya::Pod for $t {}
        )+};
    }

    aya_pod!(
        crate::expect::ExpectKey,
        crate::expect::ExpectValue,
        crate::flow::FlowKey,
        crate::flow::FlowValue,
        crate::control::ControlState,
        crate::policy::PortInfo,
        crate::addr::AddrKey,
        crate::share::ClientShare,
        crate::config::Config,
        crate::allow::SourceKey,
        crate::nat::PublicAddr,
        crate::nat::NatInside,
        crate::nat::NatControl,
        crate::nat::NatBinding,
        crate::nat::NatFlow,
        crate::event::Event,
        crate::event::EventBucket,
        crate::tls::TlsCall,
        crate::tls::TlsSession,
    );
}
