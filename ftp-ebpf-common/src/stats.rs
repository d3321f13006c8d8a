//! Counters, one per-CPU u64 each, summed by the loader.

macro_rules! counters {
    ($($variant:ident => $name:literal: $help:literal,)+) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($variant,)+
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)+];

            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)+
                }
            }

            pub const fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => $help,)+
                }
            }
        }
    };
}

counters! {
    ControlPackets => "control_packets": "TCP segments with payload on a control port, within their connection's window, scanned",
    ExpectationsCreated => "expectations_created": "data connections announced and expected",
    ExpectationsMatched => "expectations_matched": "expected data connections opened (expectation consumed)",
    ExpectationsExpired => "expectations_expired": "SYNs that found only an expired expectation (dropped)",
    ExpectationTableFull => "expectation_table_full": "announcements the expectation table could not take (a full table reuses its least recently used entry, so this counts failed allocations)",
    ExpectationsReplaced => "expectations_replaced": "expectations displaced by a newer one of the same control connection (--max-expected)",
    ExpectationsRemoved => "expectations_removed": "expectations removed because their control connection ended",
    AddressMismatch => "address_mismatch": "announcements naming another host's address (third-party/bounce), refused",
    FamilyMismatch => "family_mismatch": "EPRT announcements of another address family than the control connection's, refused",
    LowPortRefused => "low_port_refused": "announcements of a data port below --min-data-port, refused",
    ParseErrors => "parse_errors": "PORT/EPRT/227/229 lines with bad numbers, fields, delimiters or addresses, refused",
    LineTooLong => "line_too_long": "PORT/EPRT/227/229 lines longer than 512 bytes, refused",
    ScanTruncated => "scan_truncated": "control segments longer than the 1024-byte scan window; read again from the next line after it",
    ControlAlreadyRead => "control_already_read": "control segments whose bytes were read before (retransmissions; on a gateway, the second pass)",
    ControlGaps => "control_gaps": "control segments after bytes never seen; read from their next line on",
    ControlTableFull => "control_table_full": "control connections not remembered (failed allocation); like connections not seen opening, nothing they announce is believed",
    ControlUnknown => "control_unknown": "control segments of connections not seen opening (nor adopted from the host's sockets at start); nothing in them is believed",
    ControlOutOfWindow => "control_out_of_window": "control segments outside their connection's TCP window (forged or stale); they change nothing",
    ControlWrongPath => "control_wrong_path": "control segments seen where their direction's segments never pass (arriving on another interface than its handshake did, or arriving when it leaves from this side): forged; dropped on ingress, ignored on egress",
    SpoofedSourceDropped => "spoofed_source_dropped": "inbound control segments, SYNs and FIN/RST to guarded ports whose source is one of this host's own addresses, dropped",
    ClientShareRefused => "client_share_refused": "announcements refused because the client address (an IPv6 client's /64) holds its share of the expectation table (--max-expectations-per-client)",
    UnsolicitedDropped => "unsolicited_dropped": "SYNs to guarded ports that nothing announced, dropped",
    SynRetransmissions => "syn_retransmissions": "SYNs of already admitted connections, passed",
    FlowsTracked => "flows_tracked": "data connections admitted and tracked",
    FlowTableFull => "flow_table_full": "admitted connections that could not be tracked (failed allocation)",
    FlowsClosing => "flows_closing": "tracked connections that sent FIN or RST",
    FlowOutOfWindow => "flow_out_of_window": "FIN/RST of tracked data connections outside their TCP window, ignored",
    MalformedPackets => "malformed_packets": "truncated IP/TCP headers, passed uninspected",
    UninspectableDropped => "uninspectable_dropped": "inbound packets hiding their TCP flags (tiny first fragments, over-long IPv6 header chains, more than two VLAN tags), dropped",
    WouldDrop => "would_drop": "inbound packets the guard refused and passed anyway because it only monitors (--monitor); `ftp-loader would-drop` lists the SYNs by port",
    AllowedFromSource => "allowed_from_source": "SYNs to guarded ports that nothing announced, passed because their source is in an --allow-from network",
    NatRewritten => "nat_rewritten": "announcements of hosts behind a --nat-inside interface rewritten to its public address (227, PORT, EPRT over IPv4)",
    NatRetransmissionsRewritten => "nat_retransmissions_rewritten": "retransmitted control segments rewritten again as the first time",
    NatUnrewritable => "nat_unrewritable": "announcements of hosts behind a --nat-inside interface that could not be rewritten (the address split across segments, or more than 224 bytes after it in its segment), passed as they were",
    NatDataConnections => "nat_data_connections": "data connections to a --nat-inside public address translated to the host behind the gateway that announced them",
    NatSackDisabled => "nat_sack_disabled": "control connection handshakes through a --nat-inside interface whose SACK-permitted option was taken off: rewriting moves the numbers SACK blocks carry",
    TlsControlConnections => "tls_control_connections": "control connections that switched to TLS (AUTH answered 234, or a --tls-control-port): their lines cannot be read on the wire",
    TlsDataDropped => "tls_data_dropped": "SYNs to guarded ports that nothing announced, from an end of a TLS control connection, dropped: its announcements are encrypted (--tls-uprobes reads them on the host of the FTP server)",
    TlsPlaintextScanned => "tls_plaintext_scanned": "plaintext of TLS control connections read at their TLS library calls (--tls-uprobes) and scanned",
    TlsCleared => "tls_cleared": "TLS control connections back to plaintext after the client's CCC was accepted",
    EventsSuppressed => "events_suppressed": "drop and refusal events not written while somebody follows the events, because they came faster than the rate limit (per CPU: bursts of 100, then 100 a second)",
    EventsLost => "events_lost": "events not written because the event ring buffer was full (its reader lags behind)",
}

pub const COUNTERS: u32 = Counter::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indices_dense() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert!(Counter::ALL[..i].iter().all(|o| o.name() != c.name()));
        }
    }
}
