//! Clients' shares of the expectation table (`ftp_ebpf_common::share`).

use aya_ebpf::bindings::BPF_NOEXIST;
use ftp_ebpf_common::{
    flow::FlowKey,
    share::{ClientShare, client_key},
};

use crate::maps::{CLIENTS, config};

/// Takes one expectation of the share of `control`'s client (control connections are keyed
/// client -> server); false when the client holds its share already.
#[inline(never)]
pub fn take(control: &FlowKey, now_ns: u64) -> bool {
    let key = client_key(control.family, &control.src);
    if CLIENTS.get_ptr_mut(&key).is_none() {
        // Another CPU may insert it meanwhile: then that one is taken from below.
        let _ = CLIENTS.insert(&key, &ClientShare::new(now_ns), BPF_NOEXIST.into());
    }
    match CLIENTS.get_ptr_mut(&key) {
        // SAFETY: a map value, valid for the program's run; a race with another CPU can
        // only miscount by the racing announcements.
        Some(share) => {
            let config = config();
            unsafe { &mut *share }.take(now_ns, config.expect_timeout_ns, config.max_per_client)
        }
        // The table could not take the client (allocation failure): no share to judge by.
        None => true,
    }
}

/// One of the expectations of `control`'s client is gone.
#[inline(never)]
pub fn give_back(control: &FlowKey) {
    let key = client_key(control.family, &control.src);
    if let Some(share) = CLIENTS.get_ptr_mut(&key) {
        // SAFETY: as in `take`.
        unsafe { &mut *share }.give_back();
    }
}
