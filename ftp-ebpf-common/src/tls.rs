//! FTP over TLS (RFC 4217): what the programs need to know of a control connection whose
//! bytes are TLS records, and of the plaintext its ends' TLS library calls pass.
//!
//! On the wire a TLS control connection is ciphertext: nothing can be read from it, so its
//! data connections are announced where no packet program sees them. On the host that
//! runs an end (the FTP server, or a client), the plaintext exists inside that process,
//! before the TLS library encrypts a reply or after it decrypts a command: `--tls-uprobes`
//! reads it there, at `SSL_write` and `SSL_read`, and attributes it to its connection by the
//! socket the call wrote to or read from: the file descriptor of the system call the same
//! thread makes inside the library call, followed through the kernel's structures to the
//! socket's addresses (`KernelLayout`). The same lines are then scanned by the same
//! scanner, and judged by the same rules, as plaintext FTP's.

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::{Addr, FAMILY_IPV4, FAMILY_IPV6, ipv4},
    flow::FlowKey,
    parse::Sender,
};

/// Whether a payload starting with `first`, `second` starts a TLS record: a content type
/// (change_cipher_spec 20, alert 21, handshake 22, application_data 23) then major version
/// 3 (SSL 3.0 to TLS 1.3). An FTP line never starts so: a reply starts with a digit, a
/// command with a letter.
pub const fn starts_record(first: u8, second: u8) -> bool {
    matches!(first, 20..=23) && second == 3
}

/// Where a TLS library call stands in the byte stream of one direction of a control
/// connection: the sender's `SSL_write` and the receiver's `SSL_read` pass the same
/// plaintext, each counted from the end of the TLS handshake.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEnd {
    /// The sender encrypting (`SSL_write`).
    Writer = 1,
    /// The receiver decrypting (`SSL_read`).
    Reader = 2,
}

impl CallEnd {
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Writer),
            2 => Some(Self::Reader),
            _ => None,
        }
    }
}

/// Which ends of a TLS control connection pass its plaintext through probed library
/// calls, per direction (indexed by `Sender`). When both ends run on this host (a client
/// and a server in namespaces of one machine, or a local client), each line passes twice:
/// at the sender's write, then at the receiver's read. The writer's is read, and the
/// reader's only while no write of that direction was seen: a write always comes first,
/// so nothing is read twice, and a connection adopted mid-session, whose ends' first
/// calls after the switch may have been missed, never has its lines read from their
/// middle (counting bytes on each side could not say where they start).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PlainStreams {
    pub written: [u8; 2],
    pub _pad: [u8; 2],
}

impl PlainStreams {
    /// Plaintext of `sender`'s direction passed a call at `end`: whether to read it.
    pub fn pass(&mut self, sender: Sender, end: CallEnd) -> bool {
        let direction = sender as usize & 1;
        match end {
            CallEnd::Writer => {
                self.written[direction] = 1;
                true
            }
            CallEnd::Reader => self.written[direction] == 0,
        }
    }
}

/// Whether a reply answering `CCC` accepts it: the server's `200` (RFC 2228), after which
/// each direction leaves TLS. Anything else refuses it, and TLS goes on.
pub fn clear_accepted(reply: [u8; 4]) -> bool {
    reply[0] == b'2' && reply[1] == b'0' && reply[2] == b'0' && matches!(reply[3], b' ' | b'-')
}

/// Where the running kernel keeps what leads from a thread's file descriptor to its
/// socket's addresses and ports: byte offsets read from the kernel's BTF by the loader, so
/// that the probes read them on any kernel build. 0 in `family`: not known (no
/// `--tls-uprobes`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KernelLayout {
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.fd` and `fdtable.max_fds`,
    /// `file.private_data` (a socket file's `struct socket`), `socket.sk`.
    pub task_files: u16,
    pub files_fdt: u16,
    pub fdt_fd: u16,
    pub fdt_max_fds: u16,
    pub file_private_data: u16,
    pub socket_sk: u16,
    /// `struct sock_common`'s `skc_family` (u16): AF_INET or AF_INET6.
    pub family: u16,
    /// `skc_daddr`, `skc_rcv_saddr` (IPv4, network order).
    pub daddr: u16,
    pub rcv_saddr: u16,
    /// `skc_dport` (network order) and `skc_num` (the local port, host order).
    pub dport: u16,
    pub num: u16,
    /// `skc_v6_daddr`, `skc_v6_rcv_saddr`.
    pub v6_daddr: u16,
    pub v6_rcv_saddr: u16,
    pub _pad: [u16; 3],
}

/// The kernel's address families.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A socket's connection as the maps key it, local end first: `key` holds its addresses
/// as the socket keeps them (an IPv4 one in its first four bytes, an IPv6 one whole) and
/// its ports; this sets its family, an IPv4-mapped IPv6 address (a dual-stack socket's
/// IPv4 peer) becoming the IPv4 address it stands for, as on the wire. False for a family
/// that is neither. In place: the probes' stack has no room for a copy.
#[inline(always)]
pub fn socket_key(af: u16, key: &mut FlowKey) -> bool {
    let mapped =
        |addr: &Addr| addr[..10].iter().all(|&b| b == 0) && addr[10] == 0xff && addr[11] == 0xff;
    match af {
        AF_INET => key.family = FAMILY_IPV4,
        AF_INET6 if mapped(&key.src) && mapped(&key.dst) => {
            key.family = FAMILY_IPV4;
            key.src = ipv4([key.src[12], key.src[13], key.src[14], key.src[15]]);
            key.dst = ipv4([key.dst[12], key.dst[13], key.dst[14], key.dst[15]]);
        }
        AF_INET6 => key.family = FAMILY_IPV6,
        _ => return false,
    }
    true
}

/// A TLS session of a process (TLS_SESSIONS' key): the library's session object (OpenSSL's
/// `SSL *`, GnuTLS's `gnutls_session_t`) in the process `pid` (the thread group id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct TlsSession {
    pub pid: u64,
    pub session: u64,
}

/// A TLS library call in progress on a thread (TLS_CALLS, by thread id): what its entry
/// probe learned, for the probe of the system call it makes, or its return probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct TlsCall {
    /// The session object the call is on.
    pub session: u64,
    /// The plaintext buffer (user memory).
    pub buf: u64,
    /// `SSL_read_ex`'s `size_t *readbytes`, read at its return; 0 for the others.
    pub read_bytes: u64,
    /// `SSL_write`'s length.
    pub len: u32,
    /// A `CallEnd`.
    pub end: u8,
    /// 1 once the socket is known (`socket`); for a write, once its plaintext was read.
    pub done: u8,
    pub _pad: u16,
    /// The socket the call wrote to or read from, local end first.
    pub socket: FlowKey,
}

/// `TLS_PEERS`: the addresses of the ends of TLS control connections, each with the last
/// time (ns) one was seen, so that a SYN dropped between them is counted as a TLS
/// connection's (`tls_data_dropped`), the cause an admin must know.
pub type TlsPeerSeen = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_lines_are_told_apart() {
        for first in 20..=23 {
            assert!(starts_record(first, 3));
        }
        assert!(!starts_record(24, 3));
        assert!(!starts_record(23, 2));
        assert!(!starts_record(b'2', b'2'));
        assert!(!starts_record(b'P', b'O'));
    }

    #[test]
    fn each_line_is_read_once_at_its_writer_when_the_writer_is_seen() {
        let mut streams = PlainStreams::default();
        // Only the reader is local (a remote client's commands): every read is read.
        assert!(streams.pass(Sender::Client, CallEnd::Reader));
        assert!(streams.pass(Sender::Client, CallEnd::Reader));
        // The server writes: from then on its direction is read at the writer alone.
        assert!(streams.pass(Sender::Server, CallEnd::Reader));
        assert!(streams.pass(Sender::Server, CallEnd::Writer));
        assert!(!streams.pass(Sender::Server, CallEnd::Reader));
        assert!(streams.pass(Sender::Server, CallEnd::Writer));
        // The other direction is counted apart.
        assert!(streams.pass(Sender::Client, CallEnd::Reader));
    }

    #[test]
    fn only_200_accepts_ccc() {
        assert!(clear_accepted(*b"200 "));
        assert!(clear_accepted(*b"200-"));
        assert!(!clear_accepted(*b"534 "));
        assert!(!clear_accepted(*b"2000"));
    }

    #[test]
    fn a_dual_stack_socket_of_an_ipv4_peer_is_ipv4() {
        let mut local = [0u8; 16];
        local[10] = 0xff;
        local[11] = 0xff;
        local[12..].copy_from_slice(&[192, 0, 2, 1]);
        let mut remote = local;
        remote[15] = 2;
        let mut key = FlowKey {
            family: 0,
            _pad: [0; 3],
            src_port: 21,
            dst_port: 40000,
            src: local,
            dst: remote,
        };
        assert!(socket_key(AF_INET6, &mut key));
        assert_eq!(key.family, FAMILY_IPV4);
        assert_eq!(key.src, ipv4([192, 0, 2, 1]));
        assert_eq!(key.dst, ipv4([192, 0, 2, 2]));
        let mut v6 = FlowKey {
            src: [1; 16],
            dst: [2; 16],
            ..key
        };
        assert!(socket_key(AF_INET6, &mut v6));
        assert_eq!((v6.family, v6.src), (FAMILY_IPV6, [1; 16]));
        assert!(!socket_key(1, &mut key));
    }
}
