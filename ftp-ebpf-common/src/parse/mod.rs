//! The FTP control-line scanner.
//!
//! It consumes a control connection's bytes one at a time (`LineScanner::step`), so the
//! kernel can drive it from a `bpf_loop` callback whose body the verifier checks once,
//! instead of an unrolled loop over the payload, and so a line split across segments is
//! read as one: the state between two bytes is the whole state. Every line is examined;
//! only a verb or code at the very start of a line counts, so text echoed in the middle of
//! a line (`550 227 Entering Passive Mode (...)`) never announces anything.
//!
//! Recognised, case-insensitively:
//! - from the client: `PORT h1,h2,h3,h4,p1,p2` (RFC 959) and `EPRT <d>af<d>addr<d>port<d>`
//!   (RFC 2428, af 1 = IPv4 dotted quad, 2 = IPv6 text), one or more spaces after the verb;
//! - from the server: `227 ...` (RFC 959), its numbers found as RFC 1123 says (the first
//!   digit on, parentheses optional), and `229 ... (<d><d><d>port<d>)` (RFC 2428).
//!
//! Also recognised, as `Step::Signalled`: the client's `AUTH <mechanism>` and `CCC` and the
//! server's `234`, which switch the connection to TLS and back (RFC 2228, RFC 4217).
//!
//! `<d>` is any printable character but a digit, the same one throughout. Every number is
//! range-checked (octets 0..=255, ports 1..=65535); a line that breaks a rule, or a line
//! of interest longer than `MAX_LINE` bytes, announces nothing and reports why.
//!
//! This module holds the state and the dispatch on it; each grammar is a module of its
//! own, adding the steps it takes to `LineScanner`: `verb` (the keyword and what follows
//! it), `numbers` (PORT's and 227's six numbers), `eprt` (EPRT's and 229's delimited
//! fields, the dotted quad and the port) and `ipv6` (IPv6 text).

use bytemuck::{Pod, Zeroable};

use crate::addr::Addr;

mod eprt;
mod ipv6;
mod numbers;
mod verb;
mod vocabulary;

#[cfg(test)]
mod properties;

pub use vocabulary::{Announcement, FAMILY_OWN_ADDRESS, Mode, ParseError, Sender, Signal, Step};

/// Longest `PORT`/`EPRT`/`227`/`229` line read (the longest valid one, an EPRT with a full
/// IPv6 address, is about 60 bytes); longer ones are refused rather than half-parsed.
pub const MAX_LINE: u16 = 512;

/// Where in a line the scanner stands. Kept in `LineScanner` as a byte: the scanner is a
/// map value, which must be `Pod`, and an enum is not (not every byte is a phase).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Matching the keyword at the start of the line.
    Verb = 0,
    /// The spaces between a client verb and its argument.
    ArgumentGap,
    /// 227: looking for the first digit.
    SeekDigit,
    /// 229: looking for `(`.
    SeekParen,
    /// PORT's and 227's six numbers.
    Numbers,
    /// 229's three delimiters.
    Delimiters,
    /// EPRT's address family.
    Family,
    /// The delimiter after EPRT's address family.
    FamilyEnd,
    DottedQuad,
    Ipv6Text,
    /// EPRT's and 229's port, up to the closing delimiter.
    Port,
    /// The rest of a line that can announce nothing more.
    SkipLine,
}

impl Phase {
    /// The phase stored as `phase as u8`. A byte no phase has (which the scanner never
    /// writes) reads as `SkipLine`, harmless whatever the line.
    fn from_u8(byte: u8) -> Self {
        match byte {
            0 => Self::Verb,
            1 => Self::ArgumentGap,
            2 => Self::SeekDigit,
            3 => Self::SeekParen,
            4 => Self::Numbers,
            5 => Self::Delimiters,
            6 => Self::Family,
            7 => Self::FamilyEnd,
            8 => Self::DottedQuad,
            9 => Self::Ipv6Text,
            10 => Self::Port,
            _ => Self::SkipLine,
        }
    }
}

/// Scanner state, kept in a map value between bytes and between segments.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LineScanner {
    /// A `Phase`.
    phase: u8,
    /// A `Sender`.
    sender: u8,
    /// Keyword bytes matched so far at the start of the line.
    matched: u8,
    /// While matching: which keywords still match (bit per verb); after: the verb.
    verbs: u8,
    /// Index of the number, octet or IPv6 group being read.
    field: u8,
    /// Digits read for the current number.
    digits: u8,
    delimiter: u8,
    /// IPv6 text: colons just seen in a row.
    colons: u8,
    /// IPv6 text: the group index where `::` stands, or `ipv6::NO_GAP`.
    gap: u8,
    family: u8,
    /// Bytes of the current line so far, saturating.
    line_len: u16,
    value: u32,
    /// Octets read; 8 rather than 6 so an index can be masked into range.
    numbers: [u8; 8],
    groups: [u16; 8],
    /// Line offset of the announced IPv4 address's text, while it is read.
    text_start: u16,
    /// Where the last announced IPv4 address's text lies (`address_text`).
    text: AddressText,
    _pad: u16,
}

/// Where an announced IPv4 address's text (`10,0,2,2` of a 227 or PORT, `10.0.2.2` of an
/// EPRT) lies, counted back from the byte whose step announced it: what a NAT gateway
/// rewrites. `len` 0: unknown (an IPv6 address, which NAT leaves alone).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AddressText {
    /// Bytes from the text's first byte to the announcing byte.
    pub back: u16,
    pub len: u16,
}

impl LineScanner {
    /// A scanner positioned at the start of a line.
    pub fn new(sender: Sender) -> Self {
        Self {
            sender: sender as u8,
            verbs: verb::ALL_VERBS,
            gap: ipv6::NO_GAP,
            ..Self::zeroed()
        }
    }

    /// A scanner that ignores everything up to the next line, for when the bytes before
    /// were not seen.
    pub fn resync(sender: Sender) -> Self {
        Self {
            phase: Phase::SkipLine as u8,
            ..Self::new(sender)
        }
    }

    pub fn sender(&self) -> Sender {
        Sender::from_u8(self.sender)
    }

    /// Whether `byte` would leave the scanner as it is: anything but a line end while the
    /// rest of a line is being ignored. Lets a caller skip most bytes without a call.
    pub fn ignores(&self, byte: u8) -> bool {
        self.phase() == Phase::SkipLine && byte != b'\n'
    }

    pub fn step(&mut self, byte: u8) -> Step {
        if byte == b'\n' {
            // Counted, so that an announcement ended by a bare LF places its text as one
            // ended by any other byte does.
            self.line_len = self.line_len.saturating_add(1);
            let end = self.end_of_line();
            let text = self.text;
            *self = Self::new(self.sender());
            self.text = text;
            return end;
        }
        let phase = self.phase();
        if phase == Phase::SkipLine {
            return Step::Continue;
        }
        self.line_len = self.line_len.saturating_add(1);
        if self.line_len > MAX_LINE && phase != Phase::Verb {
            return self.fail(ParseError::LineTooLong);
        }
        match phase {
            Phase::Verb => self.match_verb(byte),
            Phase::ArgumentGap => self.argument(byte),
            Phase::SeekDigit => match byte {
                b'0'..=b'9' => self.start_numbers(byte),
                _ => Step::Continue,
            },
            Phase::SeekParen => {
                if byte == b'(' {
                    self.enter(Phase::Delimiters);
                }
                Step::Continue
            }
            Phase::Numbers => self.six_numbers(byte),
            Phase::Delimiters => self.epsv_delimiters(byte),
            Phase::Family => self.eprt_family(byte),
            Phase::FamilyEnd => self.eprt_family_end(byte),
            Phase::DottedQuad => self.dotted_quad(byte),
            Phase::Ipv6Text => self.ipv6_text(byte),
            Phase::Port => self.port_number(byte),
            Phase::SkipLine => Step::Continue,
        }
    }

    fn end_of_line(&mut self) -> Step {
        match self.phase() {
            // A bare LF ends a PORT line as well as CRLF does.
            Phase::Numbers => self.six_numbers(b'\r'),
            Phase::ArgumentGap => Step::Malformed(ParseError::NotANumber),
            Phase::SeekDigit | Phase::SeekParen => Step::Malformed(ParseError::NoNumbers),
            Phase::Delimiters | Phase::Family | Phase::FamilyEnd => {
                Step::Malformed(ParseError::BadDelimiter)
            }
            Phase::DottedQuad | Phase::Ipv6Text => Step::Malformed(ParseError::BadAddress),
            Phase::Port => Step::Malformed(ParseError::MissingNumber),
            Phase::Verb => self.bare_verb(),
            Phase::SkipLine => Step::Continue,
        }
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase)
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase as u8;
    }

    fn is_server(&self) -> bool {
        self.sender() == Sender::Server
    }

    /// Starts reading a number (or an IPv6 group).
    fn start_field(&mut self) {
        self.value = 0;
        self.digits = 0;
    }

    /// Adds a decimal digit to the current number; false once it exceeds `max`.
    fn decimal(&mut self, byte: u8, max: u32) -> bool {
        self.value = self.value * 10 + u32::from(byte - b'0');
        self.digits = self.digits.saturating_add(1);
        self.value <= max
    }

    // Indices are masked, not bounds-checked: the verifier follows a mask, whereas the
    // compiler may check one copy of an index and use another.
    fn store_octet(&mut self) {
        self.numbers[usize::from(self.field & 7)] = self.value as u8;
    }

    /// Where the address text of the announcement the last step made lies.
    pub fn address_text(&self) -> AddressText {
        self.text
    }

    /// The address text starts at line offset `start`.
    fn text_starts_at(&mut self, start: u16) {
        self.text_start = start;
        self.text = AddressText::default();
    }

    /// The byte just stepped follows the address text.
    fn text_ends(&mut self) {
        self.text.len = self.line_len.wrapping_sub(1).wrapping_sub(self.text_start);
    }

    /// The line is read: it announces `addr` and `port`, unless the port is 0.
    fn announce(&mut self, mode: Mode, family: u8, addr: Addr, port: u16) -> Step {
        self.text.back = self.line_len.wrapping_sub(1).wrapping_sub(self.text_start);
        self.enter(Phase::SkipLine);
        if port == 0 {
            return Step::Malformed(ParseError::PortZero);
        }
        Step::Announced(Announcement {
            family,
            mode: mode as u8,
            port,
            addr,
        })
    }

    fn fail(&mut self, error: ParseError) -> Step {
        self.enter(Phase::SkipLine);
        Step::Malformed(error)
    }
}

/// What the grammars' tests share.
#[cfg(test)]
mod testing {
    use std::vec::Vec;

    use super::*;
    use crate::addr::{FAMILY_IPV4, ipv4};

    /// What `text` makes a fresh scanner of `sender` say, but `Continue`.
    pub fn scan(sender: Sender, text: &[u8]) -> Vec<Step> {
        let mut scanner = LineScanner::new(sender);
        text.iter()
            .map(|&b| scanner.step(b))
            .filter(|s| *s != Step::Continue)
            .collect()
    }

    pub fn announced(mode: Mode, octets: [u8; 4], port: u16) -> Step {
        extended(mode, FAMILY_IPV4, ipv4(octets), port)
    }

    pub fn extended(mode: Mode, family: u8, addr: Addr, port: u16) -> Step {
        Step::Announced(Announcement {
            family,
            mode: mode as u8,
            port,
            addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{string::String, vec::Vec};

    use super::{testing::*, *};

    #[test]
    fn phases_read_back_from_their_byte() {
        for byte in 0..=u8::MAX {
            let phase = Phase::from_u8(byte);
            assert!(phase as u8 == byte || phase == Phase::SkipLine, "{byte}");
        }
    }

    #[test]
    fn every_line_of_a_segment_is_read() {
        assert_eq!(
            scan(Sender::Client, b"TYPE I\r\nPORT 10,0,0,2,4,1\r\n"),
            [announced(Mode::Active, [10, 0, 0, 2], 1025)]
        );
        assert_eq!(
            scan(
                Sender::Server,
                b"200 Switching to Binary mode.\r\n227 Entering Passive Mode (10,0,0,1,4,2)\r\n"
            ),
            [announced(Mode::Passive, [10, 0, 0, 1], 1026)]
        );
    }

    #[test]
    fn a_bad_line_does_not_spoil_the_next() {
        assert_eq!(
            scan(Sender::Client, b"PORT 1,2,3,4,5\r\nPORT 10,0,0,2,7,138\r\n"),
            [
                Step::Malformed(ParseError::MissingNumber),
                announced(Mode::Active, [10, 0, 0, 2], 1930)
            ]
        );
    }

    #[test]
    fn resync_ignores_the_rest_of_the_line() {
        let mut scanner = LineScanner::resync(Sender::Client);
        let steps: Vec<Step> = b"7,138\r\nPORT 10,0,0,2,7,139\r\n"
            .iter()
            .map(|&b| scanner.step(b))
            .filter(|s| *s != Step::Continue)
            .collect();
        assert_eq!(steps, [announced(Mode::Active, [10, 0, 0, 2], 1931)]);
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut line = b"227 Entering Passive Mode ".to_vec();
        line.extend(std::iter::repeat_n(b'x', MAX_LINE as usize));
        line.extend(b"(10,0,0,1,4,2)\r\n");
        assert_eq!(
            scan(Sender::Server, &line),
            [Step::Malformed(ParseError::LineTooLong)]
        );
        let mut other = b"200 ".to_vec();
        other.extend(std::iter::repeat_n(b'x', 2 * MAX_LINE as usize));
        other.extend(b"\r\n227 (10,0,0,1,4,2)\r\n");
        assert_eq!(
            scan(Sender::Server, &other),
            [announced(Mode::Passive, [10, 0, 0, 1], 1026)],
            "other long lines are merely skipped"
        );
    }

    /// Each announcement says where its address's text lies, whatever ends its line.
    #[test]
    fn announced_addresses_locate_their_text() {
        for (sender, text, address) in [
            (
                Sender::Server,
                &b"227 Entering Passive Mode (10,0,2,2,39,16).\r\n"[..],
                &b"10,0,2,2"[..],
            ),
            (
                Sender::Server,
                b"227 =010,000,002,002,39,16\r\n",
                b"010,000,002,002",
            ),
            (
                Sender::Client,
                b"TYPE I\r\nPORT 10,0,2,2,39,16\r\n",
                b"10,0,2,2",
            ),
            (
                Sender::Client,
                b"PORT 192,168,100,200,39,16\n",
                b"192,168,100,200",
            ),
            (Sender::Client, b"EPRT |1|10.0.2.2|10000|\r\n", b"10.0.2.2"),
            (
                Sender::Client,
                b"eprt  !1!172.16.255.1!10000!\n",
                b"172.16.255.1",
            ),
        ] {
            let mut scanner = LineScanner::new(sender);
            let mut found = Vec::new();
            for (index, &byte) in text.iter().enumerate() {
                if let Step::Announced(_) = scanner.step(byte) {
                    let at = scanner.address_text();
                    let start = index - usize::from(at.back);
                    found.push(&text[start..start + usize::from(at.len)]);
                }
            }
            assert_eq!(found, [address], "{}", String::from_utf8_lossy(text));
        }
        // IPv6 text is not located: NAT leaves IPv6 alone.
        let mut scanner = LineScanner::new(Sender::Client);
        for &byte in b"EPRT |2|2001:db8::1|10000|\r\n" {
            scanner.step(byte);
        }
        assert_eq!(scanner.address_text().len, 0);
    }

    #[test]
    fn ignored_bytes_change_nothing() {
        let mut scanner = LineScanner::new(Sender::Server);
        let mut ignored = 0;
        for &byte in b"150 Opening BINARY mode (227 (1,2,3,4,5,6)).\r\n227 (192,0,2,1,39,16)\r\n" {
            if scanner.ignores(byte) {
                let before = scanner;
                assert_eq!(scanner.step(byte), Step::Continue);
                assert_eq!(scanner, before, "{}", byte as char);
                ignored += 1;
            } else {
                scanner.step(byte);
            }
        }
        assert!(
            ignored > 40,
            "most of a line that cannot announce is ignored: {ignored}"
        );
    }
}
