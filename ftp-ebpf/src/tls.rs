//! FTP over TLS: who the ends of TLS control connections are (so that the SYNs their
//! encrypted announcements would have admitted are counted as such), and `--tls-uprobes`,
//! which reads the plaintext at the TLS library calls of the processes on this host and
//! hands it to the scanner (`control::scan_plain`).
//!
//! A TLS library call is followed across three probes of one thread: its entry (the
//! buffer), the system call it makes (the file descriptor, hence the socket and the
//! control connection), and, for a read, its return (how much plaintext there is).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
        generated,
    },
    macros::map,
    maps::{Array, LruHashMap},
};
use bytemuck::Zeroable;
use ftp_ebpf_common::{
    addr::AddrKey,
    contract::{DEFAULT_MAX_CONTROLS, TLS_CALLS_ENTRIES},
    flow::FlowKey,
    tls::{AF_INET, AF_INET6, CallEnd, KernelLayout, TlsCall, TlsPeerSeen, TlsSession, socket_key},
};

use crate::{
    control,
    maps::{config, now_ns},
    packet::{Frame, Segment},
};

#[map]
static TLS_PEERS: LruHashMap<AddrKey, TlsPeerSeen> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONTROLS, 0);

#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(TLS_CALLS_ENTRIES, 0);

#[map]
static TLS_SESSIONS: LruHashMap<TlsSession, FlowKey> =
    LruHashMap::with_max_entries(TLS_CALLS_ENTRIES, 0);

/// When a TLS control connection's segment was last seen, by anyone: a SYN refused when
/// none was seen for an expectation's lifetime is no TLS connection's, without a lookup.
#[map]
static TLS_RECENT: Array<u64> = Array::with_max_entries(1, 0);

/// A segment of a TLS control connection was seen: its ends are TLS peers from now.
#[inline(never)]
pub fn seen(control: &FlowKey) {
    let now = now_ns();
    let mut key = AddrKey::new(control.family, control.src);
    let _ = TLS_PEERS.insert(&key, &now, 0);
    key.addr = control.dst;
    let _ = TLS_PEERS.insert(&key, &now, 0);
    if let Some(recent) = TLS_RECENT.get_ptr_mut(0) {
        // SAFETY: an array value; racing writers all store a time of now.
        unsafe { *recent = now };
    }
}

/// Whether a refused SYN comes from an end of a TLS control connection seen within an
/// expectation's lifetime: a data connection its encrypted lines announced, most likely.
#[inline(never)]
pub fn from_peer(frame: &impl Frame, segment: &Segment) -> bool {
    let now = now_ns();
    let window = config().expect_timeout_ns;
    // SAFETY: an array value, read.
    let recent = unsafe { TLS_RECENT.get(0) }.copied().unwrap_or(0);
    if recent == 0 || now.saturating_sub(recent) > window {
        return false;
    }
    let Some(src) = segment.load_source(frame) else {
        return false;
    };
    let key = AddrKey::new(segment.family, src);
    // SAFETY: a plain-data map value, read.
    unsafe { TLS_PEERS.get(&key) }.is_some_and(|seen| now.saturating_sub(*seen) <= window)
}

/// The entry of a TLS library call by this thread on `session`: `buf` holds (a write) or
/// will hold (a read) its plaintext; `len` is a write's length, `read_bytes` where
/// `SSL_read_ex` writes a read's. A read may make no system call (the library buffered
/// the record): its socket is then the one the session last used.
#[inline(always)]
pub fn call(end: CallEnd, session: u64, buf: u64, len: u32, read_bytes: u64) {
    let id = bpf_get_current_pid_tgid();
    let mut call = TlsCall::zeroed();
    call.session = session;
    call.buf = buf;
    call.len = len;
    call.read_bytes = read_bytes;
    call.end = end as u8;
    if end == CallEnd::Reader {
        let key = TlsSession {
            pid: id >> 32,
            session,
        };
        // SAFETY: a plain-data map value, copied.
        if let Some(socket) = unsafe { TLS_SESSIONS.get(&key) } {
            call.socket = *socket;
            call.done = 1;
        }
    }
    let _ = TLS_CALLS.insert(&id, &call, 0);
}

/// A system call of this thread on file descriptor `fd`: when the thread is in a TLS
/// library call, the socket is that call's. A write's plaintext is scanned here; a read's
/// waits for the call's return.
#[inline(always)]
pub fn socket(fd: u64) {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = TLS_CALLS.get_ptr_mut(&id) else {
        return;
    };
    // SAFETY: a map value of this thread's, valid for the program's run.
    let call = unsafe { &mut *call };
    // A read's socket may be known from its session already; its system call says.
    if call.done != 0 && call.end == CallEnd::Writer as u8 {
        return;
    }
    // Read into the call's own entry: the probes' stack has no room for the copies.
    if !read_socket(fd, &mut call.socket) {
        return;
    }
    call.done = 1;
    let session = TlsSession {
        pid: id >> 32,
        session: call.session,
    };
    let _ = TLS_SESSIONS.insert(&session, &call.socket, 0);
    if call.end == CallEnd::Writer as u8 {
        control::scan_plain(&call.socket, CallEnd::Writer, call.buf, call.len);
        let _ = TLS_CALLS.remove(&id);
    }
}

/// Writes the connection of this thread's socket `fd` into `key`, local end first; false
/// when `fd` is no socket whose addresses can be read.
#[inline(never)]
fn read_socket(fd: u64, key: &mut FlowKey) -> bool {
    let layout = &config().kernel;
    let Some(sk) = fd_sock(fd, layout) else {
        return false;
    };
    let field = |offset: u16| sk.wrapping_add(usize::from(offset));
    // SAFETY: the helper checks each kernel address; each destination is as large as the
    // bytes read into it.
    unsafe {
        let Ok(af) = bpf_probe_read_kernel(field(layout.family).cast::<u16>()) else {
            return false;
        };
        let (local, remote, len) = match af {
            AF_INET => (layout.rcv_saddr, layout.daddr, 4),
            AF_INET6 => (layout.v6_rcv_saddr, layout.v6_daddr, 16),
            _ => return false,
        };
        key.src = [0; 16];
        key.dst = [0; 16];
        if generated::bpf_probe_read_kernel(key.src.as_mut_ptr().cast(), len, field(local).cast())
            != 0
            || generated::bpf_probe_read_kernel(
                key.dst.as_mut_ptr().cast(),
                len,
                field(remote).cast(),
            ) != 0
        {
            return false;
        }
        let (Ok(remote_port), Ok(local_port)) = (
            bpf_probe_read_kernel(field(layout.dport).cast::<u16>()),
            bpf_probe_read_kernel(field(layout.num).cast::<u16>()),
        ) else {
            return false;
        };
        key.src_port = local_port;
        key.dst_port = u16::from_be(remote_port);
        key._pad = [0; 3];
        socket_key(af, key)
    }
}

/// The return of a read of this thread's: `len` bytes of plaintext (none when negative).
#[inline(always)]
pub fn read_done(len: i64) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: a plain-data map value, copied.
    let Some(call) = (unsafe { TLS_CALLS.get(&id) }).copied() else {
        return;
    };
    let _ = TLS_CALLS.remove(&id);
    if call.done == 0 || call.end != CallEnd::Reader as u8 || len <= 0 {
        return;
    }
    control::scan_plain(&call.socket, CallEnd::Reader, call.buf, len as u32);
}

/// The return of `SSL_read_ex`: 1 when it read, the length at its fourth argument.
#[inline(always)]
pub fn read_ex_done(succeeded: i64) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: a plain-data map value, read.
    let read_bytes = unsafe { TLS_CALLS.get(&id) }.map_or(0, |call| call.read_bytes);
    let len = if succeeded == 1 && read_bytes != 0 {
        // SAFETY: the helper checks the user address.
        unsafe { bpf_probe_read_user(read_bytes as *const u64) }.unwrap_or(0)
    } else {
        0
    };
    read_done(len as i64);
}

/// The `struct sock` of this thread's file descriptor `fd`: through its task's files, their
/// table and the file's socket, where the loader found the kernel keeps each. A descriptor
/// that is no socket reads as something else, whose addresses match no control connection.
#[inline(always)]
fn fd_sock(fd: u64, layout: &KernelLayout) -> Option<*const u8> {
    if layout.family == 0 {
        return None;
    }
    let at = |base: *const u8, offset: u16| base.wrapping_add(usize::from(offset));
    // SAFETY: the helpers check each kernel address.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files = bpf_probe_read_kernel(at(task, layout.task_files).cast::<*const u8>()).ok()?;
        let fdt = bpf_probe_read_kernel(at(files, layout.files_fdt).cast::<*const u8>()).ok()?;
        let max = bpf_probe_read_kernel(at(fdt, layout.fdt_max_fds).cast::<u32>()).ok()?;
        if fd >= u64::from(max) {
            return None;
        }
        let array = bpf_probe_read_kernel(at(fdt, layout.fdt_fd).cast::<*const u8>()).ok()?;
        let slot = array.wrapping_add(fd as usize * 8).cast::<*const u8>();
        let file = bpf_probe_read_kernel(slot).ok()?;
        let socket =
            bpf_probe_read_kernel(at(file, layout.file_private_data).cast::<*const u8>()).ok()?;
        bpf_probe_read_kernel(at(socket, layout.socket_sk).cast::<*const u8>()).ok()
    }
}
