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
    ControlPackets => "control_packets": "TCP segments with payload on a control port, scanned",
    ExpectationsCreated => "expectations_created": "data connections announced and expected",
    ExpectationsMatched => "expectations_matched": "expected data connections opened (expectation consumed)",
    ExpectationsExpired => "expectations_expired": "SYNs that found only an expired expectation (dropped)",
    ExpectationTableFull => "expectation_table_full": "announcements lost because the expectation table was full",
    AddressMismatch => "address_mismatch": "announcements naming another host's address (third-party/bounce), refused",
    ParseErrors => "parse_errors": "PORT/227 lines with bad numbers or fields, refused",
    ScanTruncated => "scan_truncated": "control segments longer than the scan window; the rest was not scanned",
    UnsolicitedDropped => "unsolicited_dropped": "SYNs to guarded ports that nothing announced, dropped",
    SynRetransmissions => "syn_retransmissions": "SYNs of already admitted connections, passed",
    FlowsTracked => "flows_tracked": "data connections admitted and tracked",
    FlowTableFull => "flow_table_full": "admitted connections that could not be tracked (table full)",
    FlowsClosing => "flows_closing": "tracked connections that sent FIN or RST",
    MalformedPackets => "malformed_packets": "truncated IP/TCP headers, passed uninspected",
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
