//! Events: what the programs tell whoever follows them (`ftp-loader events`, `run
//! --log-events`) through the EVENTS ring buffer. The programs write them only while
//! somebody reads (`Config::events`), and the drops and refusals among them no faster than
//! `EventBucket` allows, so that a SYN flood costs a reader a bounded number of lines.

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::Addr,
    contract::{EVENT_BURST, EVENT_TOKEN_NS},
    flow::FlowKey,
    parse::{FAMILY_OWN_ADDRESS, Sender},
};

/// What happened. The numbers are the ring buffer's layout; 0 is no event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A control connection announced a data connection, now expected.
    Announced = 1,
    /// An expected data connection opened.
    Admitted = 2,
    /// An announcement was refused (`Reason`).
    Refused = 3,
    /// A SYN found only an expired expectation, and was dropped.
    Expired = 4,
    /// A SYN to a guarded port that nothing announced, dropped.
    UnsolicitedDropped = 5,
    /// Monitor mode: a SYN that enforcement would have dropped, passed.
    WouldDrop = 6,
    /// A SYN from an allowed source network, passed without an announcement.
    AllowedFrom = 7,
    /// A NAT gateway's admitted data connection, sent on to the host behind it that
    /// announced it (`--nat-inside`).
    Translated = 8,
    /// A control connection switched to TLS: its lines cannot be read on the wire.
    Tls = 9,
    /// A SYN to a guarded port that nothing announced, from an end of a TLS control
    /// connection, dropped: the announcement was encrypted.
    TlsDropped = 10,
    /// A TLS control connection back to plaintext (CCC accepted).
    Cleared = 11,
}

impl EventKind {
    pub const ALL: [Self; 11] = [
        Self::Announced,
        Self::Admitted,
        Self::Refused,
        Self::Expired,
        Self::UnsolicitedDropped,
        Self::WouldDrop,
        Self::AllowedFrom,
        Self::Translated,
        Self::Tls,
        Self::TlsDropped,
        Self::Cleared,
    ];

    pub const fn from_u8(kind: u8) -> Option<Self> {
        match kind {
            1 => Some(Self::Announced),
            2 => Some(Self::Admitted),
            3 => Some(Self::Refused),
            4 => Some(Self::Expired),
            5 => Some(Self::UnsolicitedDropped),
            6 => Some(Self::WouldDrop),
            7 => Some(Self::AllowedFrom),
            8 => Some(Self::Translated),
            9 => Some(Self::Tls),
            10 => Some(Self::TlsDropped),
            11 => Some(Self::Cleared),
            _ => None,
        }
    }

    /// As the event stream spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Announced => "announced",
            Self::Admitted => "admitted",
            Self::Refused => "refused",
            Self::Expired => "expired",
            Self::UnsolicitedDropped => "unsolicited_dropped",
            Self::WouldDrop => "would_drop",
            Self::AllowedFrom => "allowed_from",
            Self::Translated => "translated",
            Self::Tls => "tls",
            Self::TlsDropped => "tls_dropped",
            Self::Cleared => "cleared",
        }
    }

    /// Whether the rate limit applies: to everything a stranger can cause at will. An
    /// announcement or an admission takes a control connection seen opening, and each
    /// leaves an entry in a table, so those are never suppressed.
    pub const fn limited(self) -> bool {
        !matches!(
            self,
            Self::Announced | Self::Admitted | Self::Translated | Self::Tls | Self::Cleared
        )
    }
}

/// Why an announcement was refused (`EventKind::Refused`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Another host's address (third party, FTP bounce).
    AddressMismatch = 1,
    /// An EPRT of another family than its control connection's.
    FamilyMismatch = 2,
    /// A data port below `--min-data-port`.
    LowPort = 3,
    /// A PORT/EPRT/227/229 line with bad numbers, fields, delimiters or addresses.
    ParseError = 4,
    /// A PORT/EPRT/227/229 line longer than the scanner reads.
    LineTooLong = 5,
    /// The client address holds its share of the expectation table.
    ClientShare = 6,
    /// The expectation table could not take it.
    TableFull = 7,
}

impl Reason {
    pub const ALL: [Self; 7] = [
        Self::AddressMismatch,
        Self::FamilyMismatch,
        Self::LowPort,
        Self::ParseError,
        Self::LineTooLong,
        Self::ClientShare,
        Self::TableFull,
    ];

    pub const fn from_u8(reason: u8) -> Option<Self> {
        match reason {
            1 => Some(Self::AddressMismatch),
            2 => Some(Self::FamilyMismatch),
            3 => Some(Self::LowPort),
            4 => Some(Self::ParseError),
            5 => Some(Self::LineTooLong),
            6 => Some(Self::ClientShare),
            7 => Some(Self::TableFull),
            _ => None,
        }
    }

    /// As the event stream spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AddressMismatch => "address_mismatch",
            Self::FamilyMismatch => "family_mismatch",
            Self::LowPort => "low_port",
            Self::ParseError => "parse_error",
            Self::LineTooLong => "line_too_long",
            Self::ClientShare => "client_share",
            Self::TableFull => "table_full",
        }
    }
}

impl Reason {
    /// Whether the line was understood, so that the refusal names what it announced.
    pub const fn understood(self) -> bool {
        !matches!(self, Self::ParseError | Self::LineTooLong)
    }
}

impl From<crate::policy::Refusal> for Reason {
    fn from(refusal: crate::policy::Refusal) -> Self {
        match refusal {
            crate::policy::Refusal::AddressMismatch => Self::AddressMismatch,
            crate::policy::Refusal::FamilyMismatch => Self::FamilyMismatch,
            crate::policy::Refusal::LowPort => Self::LowPort,
        }
    }
}

/// One event as the ring buffer holds it. The programs write its fields straight into the
/// reserved ring memory (never building one on their small stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Event {
    /// An `EventKind`.
    pub kind: u8,
    /// A `Reason` (`EventKind::Refused`), else 0.
    pub reason: u8,
    /// `Refused`: the `parse::Sender` of the line, whose own address a 229 means.
    pub announcer: u8,
    /// `Announced`, `Refused`: 1 when the line was read in a TLS control connection's
    /// plaintext, at its TLS library call (`--tls-uprobes`).
    pub tls: u8,
    pub _pad: [u8; 4],
    /// `Announced`: the connector (`src`, any source port: 0) and the listener (`dst`,
    /// `dst_port` the announced port). `Refused`: the announcement as the scanner found it,
    /// its family (`parse::FAMILY_OWN_ADDRESS` for a 229's), address and port in `family`,
    /// `dst` and `dst_port` (nothing when the line was not understood, `Reason::understood`):
    /// the reader, not the programs, resolves it (`Event::announced`). The others: the SYN.
    pub flow: FlowKey,
    /// The control connection (client -> server) that announced it; zeros when none is
    /// known (`UnsolicitedDropped`, `WouldDrop`, `AllowedFrom`, `TlsDropped`). `Translated`:
    /// the SYN's connection as translated, its destination the host behind the gateway.
    /// `Tls`, `Cleared`: the control connection, in `flow` too.
    pub control: FlowKey,
}

impl Event {
    /// `Refused`: the family and address the announcement named, a 229's (the announcer's
    /// own) resolved from the control connection; None when the line was not understood.
    pub fn announced(&self) -> Option<(u8, Addr)> {
        if !Reason::from_u8(self.reason)?.understood() {
            return None;
        }
        match self.flow.family {
            FAMILY_OWN_ADDRESS if self.announcer == Sender::Server as u8 => {
                Some((self.control.family, self.control.dst))
            }
            FAMILY_OWN_ADDRESS => Some((self.control.family, self.control.src)),
            family => Some((family, self.flow.dst)),
        }
    }
}

/// A per-CPU token bucket for the limited events (`EventKind::limited`): `EVENT_BURST`
/// tokens, refilled by one every `EVENT_TOKEN_NS`. A zeroed bucket is full.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct EventBucket {
    /// When tokens were last added.
    pub refilled_ns: u64,
    /// Tokens taken since the bucket was last full: counting down from full would need an
    /// initialised entry, and the array's entries start as zeros.
    pub taken: u32,
    pub _pad: u32,
}

impl EventBucket {
    /// Takes a token if one is left; false when the event is to be suppressed.
    pub fn take(&mut self, now_ns: u64) -> bool {
        let earned = now_ns.saturating_sub(self.refilled_ns) / EVENT_TOKEN_NS;
        if earned > 0 {
            self.taken = self
                .taken
                .saturating_sub(u32::try_from(earned).unwrap_or(u32::MAX));
            self.refilled_ns = now_ns;
        }
        if self.taken >= EVENT_BURST {
            return false;
        }
        self.taken += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::NS_PER_SEC;

    #[test]
    fn kinds_and_reasons_round_trip_and_are_named_once() {
        for (i, kind) in EventKind::ALL.iter().enumerate() {
            assert_eq!(EventKind::from_u8(*kind as u8), Some(*kind));
            assert!(EventKind::ALL[..i].iter().all(|o| o.name() != kind.name()));
        }
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(Reason::from_u8(*reason as u8), Some(*reason));
            assert!(Reason::ALL[..i].iter().all(|o| o.name() != reason.name()));
        }
        assert_eq!(EventKind::from_u8(0), None);
        assert_eq!(Reason::from_u8(0), None);
    }

    #[test]
    fn the_bucket_allows_a_burst_then_its_rate() {
        let start = 1_000 * NS_PER_SEC;
        let mut bucket = EventBucket::zeroed();
        let granted = (0..10 * EVENT_BURST).filter(|_| bucket.take(start)).count();
        assert_eq!(granted, EVENT_BURST as usize);
        assert!(!bucket.take(start + EVENT_TOKEN_NS - 1));
        assert!(bucket.take(start + EVENT_TOKEN_NS));
        assert!(!bucket.take(start + EVENT_TOKEN_NS));
        // A second's worth of tokens, at most a burst.
        let later = start + EVENT_TOKEN_NS + NS_PER_SEC;
        let granted = (0..10 * EVENT_BURST).filter(|_| bucket.take(later)).count();
        assert_eq!(
            granted as u64,
            (NS_PER_SEC / EVENT_TOKEN_NS).min(u64::from(EVENT_BURST))
        );
        // A clock that runs backwards (another CPU's coarse clock) grants nothing new.
        assert!(!bucket.take(start));
    }

    /// The counter's help (a literal) names the bounds: it must name these.
    #[test]
    fn the_suppressed_counter_names_the_bounds() {
        let help = crate::stats::Counter::EventsSuppressed.help();
        let bounds = std::format!(
            "bursts of {EVENT_BURST}, then {} a second",
            NS_PER_SEC / EVENT_TOKEN_NS
        );
        assert!(help.contains(&bounds), "{help}");
    }
}
