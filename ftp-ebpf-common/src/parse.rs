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
//! `<d>` is any printable character but a digit, the same one throughout. Every number is
//! range-checked (octets 0..=255, ports 1..=65535); a line that breaks a rule, or a line
//! of interest longer than `MAX_LINE` bytes, announces nothing and reports why.

use bytemuck::{Pod, Zeroable};

use crate::addr::{Addr, FAMILY_IPV4, FAMILY_IPV6, ipv4};

/// Which end of the control connection wrote the bytes being scanned.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// Destination port is a control port: commands.
    Client = 0,
    /// Source port is a control port: replies.
    Server = 1,
}

/// How the announced port will be used.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `227`: the client will connect to the server's announced address and port.
    Passive = 1,
    /// `PORT`: the server will connect to the client's announced address and port.
    Active = 2,
    /// `229`: the client will connect to the announced port on the server's own address.
    ExtendedPassive = 3,
    /// `EPRT`: the server will connect to the client's announced address and port.
    ExtendedActive = 4,
}

/// Family of an announcement that names no address (`229`): the announcer's own address.
pub const FAMILY_OWN_ADDRESS: u8 = 0;

/// An address and port a control line announced.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Announcement {
    /// `FAMILY_IPV4`, `FAMILY_IPV6` or `FAMILY_OWN_ADDRESS`.
    pub family: u8,
    pub mode: u8,
    pub port: u16,
    pub addr: Addr,
}

/// Why a recognised line announced nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A number above 255 (an octet) or 65535 (a port).
    NumberTooLarge,
    /// Fewer numbers than the format has, or an empty one (`1,,2`).
    MissingNumber,
    /// More than six numbers.
    ExtraNumber,
    /// The verb is followed by something that is not its argument.
    NotANumber,
    /// The numbers of a `PORT` line are followed by text.
    TrailingText,
    /// A `227` line without any digit, or a `229` line without `(`.
    NoNumbers,
    /// Port 0.
    PortZero,
    /// An `EPRT`/`229` delimiter that is not a printable non-digit, or not the same one.
    BadDelimiter,
    /// An `EPRT` address family other than 1 or 2.
    BadFamily,
    /// An `EPRT` address that is not a valid dotted quad or IPv6 text address.
    BadAddress,
    /// A line of interest longer than `MAX_LINE`.
    LineTooLong,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    Announced(Announcement),
    Malformed(ParseError),
}

/// Longest `PORT`/`EPRT`/`227`/`229` line read (the longest valid one, an EPRT with a full
/// IPv6 address, is about 60 bytes); longer ones are refused rather than half-parsed.
pub const MAX_LINE: u16 = 512;

const PHASE_VERB: u8 = 0;
const PHASE_ARGUMENT_GAP: u8 = 1;
const PHASE_SEEK_DIGIT: u8 = 2;
const PHASE_SEEK_PAREN: u8 = 3;
const PHASE_NUMBERS: u8 = 4;
const PHASE_DELIMITERS: u8 = 5;
const PHASE_FAMILY: u8 = 6;
const PHASE_FAMILY_END: u8 = 7;
const PHASE_DOTTED_QUAD: u8 = 8;
const PHASE_IPV6_TEXT: u8 = 9;
const PHASE_PORT: u8 = 10;
const PHASE_SKIP_LINE: u8 = 11;

/// The two keywords of each sender, as a verb index: PORT/227 = 0, EPRT/229 = 1.
const CLIENT_VERBS: [&[u8; 4]; 2] = [b"port", b"eprt"];
const SERVER_CODES: [&[u8; 4]; 2] = [b"227 ", b"229 "];
const SIX_NUMBERS: u8 = 6;
const NO_GAP: u8 = 0xff;

/// Scanner state, kept in a map value between bytes and between segments.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LineScanner {
    phase: u8,
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
    /// IPv6 text: the group index where `::` stands, or NO_GAP.
    gap: u8,
    family: u8,
    /// Bytes of the current line so far, saturating.
    line_len: u16,
    value: u32,
    /// Octets read; 8 rather than 6 so an index can be masked into range.
    numbers: [u8; 8],
    groups: [u16; 8],
}

fn is_delimiter(byte: u8) -> bool {
    (33..=126).contains(&byte) && !byte.is_ascii_digit()
}

impl LineScanner {
    /// A scanner positioned at the start of a line.
    pub fn new(sender: Sender) -> Self {
        Self {
            sender: sender as u8,
            verbs: 0b11,
            gap: NO_GAP,
            ..Self::zeroed()
        }
    }

    /// A scanner that ignores everything up to the next line, for when the bytes before
    /// were not seen.
    pub fn resync(sender: Sender) -> Self {
        Self {
            phase: PHASE_SKIP_LINE,
            ..Self::new(sender)
        }
    }

    pub fn sender(&self) -> Sender {
        if self.sender == Sender::Server as u8 {
            Sender::Server
        } else {
            Sender::Client
        }
    }

    /// Whether `byte` would leave the scanner as it is: anything but a line end while the
    /// rest of a line is being ignored. Lets a caller skip most bytes without a call.
    pub fn ignores(&self, byte: u8) -> bool {
        self.phase == PHASE_SKIP_LINE && byte != b'\n'
    }

    pub fn step(&mut self, byte: u8) -> Step {
        if byte == b'\n' {
            let end = self.end_of_line();
            *self = Self::new(self.sender());
            return end;
        }
        if self.phase == PHASE_SKIP_LINE {
            return Step::Continue;
        }
        self.line_len = self.line_len.saturating_add(1);
        if self.line_len > MAX_LINE && self.phase != PHASE_VERB {
            return self.fail(ParseError::LineTooLong);
        }
        match self.phase {
            PHASE_VERB => self.match_verb(byte),
            PHASE_ARGUMENT_GAP => self.argument(byte),
            PHASE_SEEK_DIGIT => match byte {
                b'0'..=b'9' => self.start_numbers(byte),
                _ => Step::Continue,
            },
            PHASE_SEEK_PAREN => {
                if byte == b'(' {
                    self.phase = PHASE_DELIMITERS;
                }
                Step::Continue
            }
            PHASE_NUMBERS => self.six_numbers(byte),
            PHASE_DELIMITERS => self.epsv_delimiters(byte),
            PHASE_FAMILY => self.eprt_family(byte),
            PHASE_FAMILY_END => self.eprt_family_end(byte),
            PHASE_DOTTED_QUAD => self.dotted_quad(byte),
            PHASE_IPV6_TEXT => self.ipv6_text(byte),
            PHASE_PORT => self.port_number(byte),
            _ => Step::Continue,
        }
    }

    fn end_of_line(&mut self) -> Step {
        match self.phase {
            // A bare LF ends a PORT line as well as CRLF does.
            PHASE_NUMBERS => self.six_numbers(b'\r'),
            PHASE_ARGUMENT_GAP => Step::Malformed(ParseError::NotANumber),
            PHASE_SEEK_DIGIT | PHASE_SEEK_PAREN => Step::Malformed(ParseError::NoNumbers),
            PHASE_DELIMITERS | PHASE_FAMILY | PHASE_FAMILY_END => {
                Step::Malformed(ParseError::BadDelimiter)
            }
            PHASE_DOTTED_QUAD | PHASE_IPV6_TEXT => Step::Malformed(ParseError::BadAddress),
            PHASE_PORT => Step::Malformed(ParseError::MissingNumber),
            _ => Step::Continue,
        }
    }

    fn is_server(&self) -> bool {
        self.sender == Sender::Server as u8
    }

    fn match_verb(&mut self, byte: u8) -> Step {
        let keywords = if self.is_server() {
            SERVER_CODES
        } else {
            CLIENT_VERBS
        };
        let index = self.matched as usize;
        if index == 4 {
            // Only a client verb gets here: it must be followed by a space, or it is
            // another verb (PORTS, EPRTX).
            self.phase = if byte == b' ' {
                PHASE_ARGUMENT_GAP
            } else {
                PHASE_SKIP_LINE
            };
            return Step::Continue;
        }
        let lower = byte.to_ascii_lowercase();
        for (verb, keyword) in keywords.iter().enumerate() {
            if keyword[index & 3] != lower {
                self.verbs &= !(1 << verb);
            }
        }
        if self.verbs == 0 {
            self.phase = PHASE_SKIP_LINE;
            return Step::Continue;
        }
        self.matched += 1;
        if self.matched == 4 {
            self.verbs = if self.verbs & 1 != 0 { 0 } else { 1 };
            if self.is_server() {
                self.phase = if self.verbs == 0 {
                    PHASE_SEEK_DIGIT
                } else {
                    PHASE_SEEK_PAREN
                };
            }
        }
        Step::Continue
    }

    fn argument(&mut self, byte: u8) -> Step {
        match (byte, self.verbs) {
            (b' ', _) => Step::Continue,
            (b'0'..=b'9', 0) => self.start_numbers(byte),
            (_, 1) if is_delimiter(byte) => {
                self.delimiter = byte;
                self.phase = PHASE_FAMILY;
                Step::Continue
            }
            (_, 1) => self.fail(ParseError::BadDelimiter),
            _ => self.fail(ParseError::NotANumber),
        }
    }

    fn start_numbers(&mut self, digit: u8) -> Step {
        self.phase = PHASE_NUMBERS;
        self.start_field();
        self.six_numbers(digit)
    }

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

    /// `h1,h2,h3,h4,p1,p2` of PORT and 227.
    fn six_numbers(&mut self, byte: u8) -> Step {
        match byte {
            b'0'..=b'9' => {
                if self.decimal(byte, 255) {
                    Step::Continue
                } else {
                    self.fail(ParseError::NumberTooLarge)
                }
            }
            b',' => {
                if self.digits == 0 {
                    return self.fail(ParseError::MissingNumber);
                }
                if self.field + 1 >= SIX_NUMBERS {
                    return self.fail(ParseError::ExtraNumber);
                }
                self.store_octet();
                self.field += 1;
                self.start_field();
                Step::Continue
            }
            _ => {
                if self.digits == 0 || self.field + 1 < SIX_NUMBERS {
                    return self.fail(ParseError::MissingNumber);
                }
                if !self.is_server() && byte != b'\r' && byte != b' ' {
                    return self.fail(ParseError::TrailingText);
                }
                self.store_octet();
                let [h1, h2, h3, h4, p1, p2, ..] = self.numbers;
                let mode = if self.is_server() {
                    Mode::Passive
                } else {
                    Mode::Active
                };
                self.announce(
                    mode,
                    FAMILY_IPV4,
                    ipv4([h1, h2, h3, h4]),
                    u16::from_be_bytes([p1, p2]),
                )
            }
        }
    }

    /// `(|||` of 229: three identical delimiters.
    fn epsv_delimiters(&mut self, byte: u8) -> Step {
        if self.field == 0 {
            if !is_delimiter(byte) {
                return self.fail(ParseError::BadDelimiter);
            }
            self.delimiter = byte;
        } else if byte != self.delimiter {
            return self.fail(ParseError::BadDelimiter);
        }
        self.field += 1;
        if self.field == 3 {
            self.phase = PHASE_PORT;
            self.start_field();
        }
        Step::Continue
    }

    fn eprt_family(&mut self, byte: u8) -> Step {
        self.family = match byte {
            b'1' => FAMILY_IPV4,
            b'2' => FAMILY_IPV6,
            _ => return self.fail(ParseError::BadFamily),
        };
        self.phase = PHASE_FAMILY_END;
        Step::Continue
    }

    fn eprt_family_end(&mut self, byte: u8) -> Step {
        if byte != self.delimiter {
            return self.fail(ParseError::BadFamily);
        }
        self.field = 0;
        self.start_field();
        self.phase = if self.family == FAMILY_IPV4 {
            PHASE_DOTTED_QUAD
        } else {
            PHASE_IPV6_TEXT
        };
        Step::Continue
    }

    fn dotted_quad(&mut self, byte: u8) -> Step {
        if byte == self.delimiter {
            if self.digits == 0 || self.field != 3 {
                return self.fail(ParseError::BadAddress);
            }
            self.store_octet();
            self.phase = PHASE_PORT;
            self.start_field();
            return Step::Continue;
        }
        match byte {
            b'0'..=b'9' if self.digits < 3 && self.decimal(byte, 255) => Step::Continue,
            b'.' if self.digits > 0 && self.field < 3 => {
                self.store_octet();
                self.field += 1;
                self.start_field();
                Step::Continue
            }
            _ => self.fail(ParseError::BadAddress),
        }
    }

    fn push_group(&mut self) -> bool {
        if self.field >= 8 {
            return false;
        }
        self.groups[usize::from(self.field & 7)] = self.value as u16;
        self.field += 1;
        self.start_field();
        true
    }

    /// IPv6 text (RFC 4291 2.2 forms 1 and 2; the mixed form with a dotted quad is refused).
    fn ipv6_text(&mut self, byte: u8) -> Step {
        if byte == self.delimiter {
            return self.ipv6_end();
        }
        let nibble = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            b'A'..=b'F' => byte - b'A' + 10,
            b':' => {
                if self.digits > 0 {
                    if !self.push_group() {
                        return self.fail(ParseError::BadAddress);
                    }
                    self.colons = 1;
                    return Step::Continue;
                }
                self.colons += 1;
                if self.colons > 2 || (self.colons == 2 && self.gap != NO_GAP) {
                    return self.fail(ParseError::BadAddress);
                }
                if self.colons == 2 {
                    self.gap = self.field;
                }
                return Step::Continue;
            }
            _ => return self.fail(ParseError::BadAddress),
        };
        // A lone leading colon (":1::") is not an address.
        let lone_leading_colon = self.colons == 1 && self.field == 0 && self.gap == NO_GAP;
        if self.digits == 4 || lone_leading_colon {
            return self.fail(ParseError::BadAddress);
        }
        self.colons = 0;
        self.value = self.value * 16 + u32::from(nibble);
        self.digits += 1;
        Step::Continue
    }

    fn ipv6_end(&mut self) -> Step {
        if self.digits > 0 {
            if !self.push_group() {
                return self.fail(ParseError::BadAddress);
            }
        } else if self.colons != 2 {
            // Empty, or ending in a single colon.
            return self.fail(ParseError::BadAddress);
        }
        let groups = self.field;
        let complete = if self.gap == NO_GAP {
            groups == 8
        } else {
            groups <= 7
        };
        if !complete {
            return self.fail(ParseError::BadAddress);
        }
        let (gap, tail) = if self.gap == NO_GAP {
            (8, 0)
        } else {
            (self.gap, groups - self.gap)
        };
        let mut expanded = [0u16; 8];
        for (i, slot) in expanded.iter_mut().enumerate() {
            let i = i as u8;
            *slot = if i < gap {
                self.groups[usize::from(i & 7)]
            } else if i >= 8 - tail {
                self.groups[usize::from((gap + i - (8 - tail)) & 7)]
            } else {
                0
            };
        }
        self.groups = expanded;
        self.phase = PHASE_PORT;
        self.start_field();
        Step::Continue
    }

    /// The port of EPRT and 229, up to the closing delimiter.
    fn port_number(&mut self, byte: u8) -> Step {
        if byte == self.delimiter {
            if self.digits == 0 {
                return self.fail(ParseError::MissingNumber);
            }
            let port = self.value as u16;
            return if self.is_server() {
                self.announce(Mode::ExtendedPassive, FAMILY_OWN_ADDRESS, [0; 16], port)
            } else {
                let addr = self.eprt_address();
                self.announce(Mode::ExtendedActive, self.family, addr, port)
            };
        }
        match byte {
            b'0'..=b'9' if self.decimal(byte, 65535) => Step::Continue,
            b'0'..=b'9' => self.fail(ParseError::NumberTooLarge),
            _ => self.fail(ParseError::MissingNumber),
        }
    }

    fn eprt_address(&self) -> Addr {
        if self.family == FAMILY_IPV4 {
            let [a, b, c, d, ..] = self.numbers;
            return ipv4([a, b, c, d]);
        }
        let mut addr = [0u8; 16];
        for (pair, group) in addr.chunks_exact_mut(2).zip(self.groups) {
            pair.copy_from_slice(&group.to_be_bytes());
        }
        addr
    }

    fn announce(&mut self, mode: Mode, family: u8, addr: Addr, port: u16) -> Step {
        self.phase = PHASE_SKIP_LINE;
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
        self.phase = PHASE_SKIP_LINE;
        Step::Malformed(error)
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    fn scan(sender: Sender, text: &[u8]) -> Vec<Step> {
        let mut scanner = LineScanner::new(sender);
        text.iter()
            .map(|&b| scanner.step(b))
            .filter(|s| *s != Step::Continue)
            .collect()
    }

    fn announced(mode: Mode, octets: [u8; 4], port: u16) -> Step {
        Step::Announced(Announcement {
            family: FAMILY_IPV4,
            mode: mode as u8,
            port,
            addr: ipv4(octets),
        })
    }

    #[test]
    fn port_command() {
        assert_eq!(
            scan(Sender::Client, b"PORT 10,0,0,2,7,138\r\n"),
            [announced(Mode::Active, [10, 0, 0, 2], 1930)]
        );
    }

    #[test]
    fn verbs_and_codes_are_case_insensitive_and_lf_alone_ends_a_line() {
        assert_eq!(
            scan(Sender::Client, b"port  192,0,2,1,255,255\n"),
            [announced(Mode::Active, [192, 0, 2, 1], 65535)]
        );
        assert_eq!(
            scan(Sender::Client, b"PoRt 1,2,3,4,0,1\r\n"),
            [announced(Mode::Active, [1, 2, 3, 4], 1)]
        );
    }

    #[test]
    fn passive_reply_with_and_without_parentheses() {
        assert_eq!(
            scan(
                Sender::Server,
                b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n"
            ),
            [announced(Mode::Passive, [192, 0, 2, 1], 10000)]
        );
        assert_eq!(
            scan(Sender::Server, b"227 =192,0,2,1,39,17\r\n"),
            [announced(Mode::Passive, [192, 0, 2, 1], 10001)]
        );
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
    fn text_in_the_middle_of_a_line_announces_nothing() {
        assert_eq!(
            scan(
                Sender::Server,
                b"550 227 Entering Passive Mode (10,0,0,1,4,2)\r\n"
            ),
            []
        );
        assert_eq!(scan(Sender::Client, b"CWD PORT 10,0,0,2,4,1\r\n"), []);
        assert_eq!(scan(Sender::Client, b" PORT 10,0,0,2,4,1\r\n"), []);
        assert_eq!(scan(Sender::Server, b"2270 (10,0,0,1,4,2)\r\n"), []);
        assert_eq!(scan(Sender::Server, b"227-(10,0,0,1,4,2)\r\n"), []);
    }

    #[test]
    fn other_verbs_sharing_the_prefix_are_ignored() {
        assert_eq!(scan(Sender::Client, b"PORTS 10,0,0,2,4,1\r\n"), []);
        assert_eq!(scan(Sender::Client, b"PASV\r\n"), []);
    }

    #[test]
    fn a_direction_only_accepts_its_own_keyword() {
        assert_eq!(scan(Sender::Server, b"PORT 10,0,0,2,4,1\r\n"), []);
        assert_eq!(scan(Sender::Client, b"227 (10,0,0,1,4,2)\r\n"), []);
    }

    #[test]
    fn numbers_above_255_are_refused() {
        assert_eq!(
            scan(Sender::Client, b"PORT 10,0,1,2,256,22\r\n"),
            [Step::Malformed(ParseError::NumberTooLarge)]
        );
        assert_eq!(
            scan(Sender::Server, b"227 (10,0,0,1000,4,2)\r\n"),
            [Step::Malformed(ParseError::NumberTooLarge)]
        );
        assert_eq!(
            scan(Sender::Client, b"PORT 99999999999999999999,0,0,1,4,2\r\n"),
            [Step::Malformed(ParseError::NumberTooLarge)]
        );
    }

    #[test]
    fn wrong_number_of_fields_is_refused() {
        assert_eq!(
            scan(Sender::Client, b"PORT 10,0,0,2,7\r\n"),
            [Step::Malformed(ParseError::MissingNumber)]
        );
        assert_eq!(
            scan(Sender::Client, b"PORT 10,0,0,2,7,138,1\r\n"),
            [Step::Malformed(ParseError::ExtraNumber)]
        );
        assert_eq!(
            scan(Sender::Client, b"PORT 10,0,,2,7,138\r\n"),
            [Step::Malformed(ParseError::MissingNumber)]
        );
        assert_eq!(
            scan(Sender::Server, b"227 (10,0,0,1,4,)\r\n"),
            [Step::Malformed(ParseError::MissingNumber)]
        );
        assert_eq!(
            scan(Sender::Client, b"PORT 10,0,0,2,7,"),
            [],
            "an unfinished line announces nothing"
        );
    }

    #[test]
    fn malformed_port_lines() {
        assert_eq!(
            scan(Sender::Client, b"PORT\r\n"),
            [],
            "PORT without a space is another verb"
        );
        assert_eq!(
            scan(Sender::Client, b"PORT \r\n"),
            [Step::Malformed(ParseError::NotANumber)]
        );
        assert_eq!(
            scan(Sender::Client, b"PORT x,0,0,2,7,138\r\n"),
            [Step::Malformed(ParseError::NotANumber)]
        );
        assert_eq!(
            scan(Sender::Client, b"PORT 10,0,0,2,7,138x\r\n"),
            [Step::Malformed(ParseError::TrailingText)]
        );
        assert_eq!(
            scan(Sender::Client, b"PORT 10,0,0,2,0,0\r\n"),
            [Step::Malformed(ParseError::PortZero)]
        );
        assert_eq!(
            scan(Sender::Client, b"PORT 10,0\x00,0,2,7,138\r\n"),
            [Step::Malformed(ParseError::MissingNumber)]
        );
    }

    #[test]
    fn passive_reply_without_numbers() {
        assert_eq!(
            scan(Sender::Server, b"227 Entering Passive Mode\r\n"),
            [Step::Malformed(ParseError::NoNumbers)]
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

    fn extended(mode: Mode, family: u8, addr: [u8; 16], port: u16) -> Step {
        Step::Announced(Announcement {
            family,
            mode: mode as u8,
            port,
            addr,
        })
    }

    fn v6(text: &str) -> [u8; 16] {
        text.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn extended_passive_reply() {
        assert_eq!(
            scan(
                Sender::Server,
                b"229 Entering Extended Passive Mode (|||6446|)\r\n"
            ),
            [extended(
                Mode::ExtendedPassive,
                FAMILY_OWN_ADDRESS,
                [0; 16],
                6446
            )]
        );
        assert_eq!(
            scan(Sender::Server, b"229 ok (!!!65535!)\r\n"),
            [extended(
                Mode::ExtendedPassive,
                FAMILY_OWN_ADDRESS,
                [0; 16],
                65535
            )],
            "any printable non-digit delimiter"
        );
    }

    #[test]
    fn malformed_extended_passive_replies() {
        for (line, error) in [
            (
                &b"229 Entering Extended Passive Mode\r\n"[..],
                ParseError::NoNumbers,
            ),
            (b"229 (||6446|)\r\n", ParseError::BadDelimiter),
            (b"229 (|!|6446|)\r\n", ParseError::BadDelimiter),
            (b"229 (1116446|)\r\n", ParseError::BadDelimiter),
            (b"229 (   6446 )\r\n", ParseError::BadDelimiter),
            (b"229 (|||65536|)\r\n", ParseError::NumberTooLarge),
            (b"229 (|||0|)\r\n", ParseError::PortZero),
            (b"229 (||||)\r\n", ParseError::MissingNumber),
            (b"229 (|||6446)\r\n", ParseError::MissingNumber),
            (b"229 (|||64a46|)\r\n", ParseError::MissingNumber),
        ] {
            assert_eq!(
                scan(Sender::Server, line),
                [Step::Malformed(error)],
                "{:?}",
                std::str::from_utf8(line)
            );
        }
    }

    #[test]
    fn extended_port_command() {
        assert_eq!(
            scan(Sender::Client, b"EPRT |1|192.0.2.2|6275|\r\n"),
            [extended(
                Mode::ExtendedActive,
                FAMILY_IPV4,
                ipv4([192, 0, 2, 2]),
                6275
            )]
        );
        assert_eq!(
            scan(Sender::Client, b"eprt  !2!2001:db8::2!6275!\r\n"),
            [extended(
                Mode::ExtendedActive,
                FAMILY_IPV6,
                v6("2001:db8::2"),
                6275
            )]
        );
        for text in [
            "::",
            "::1",
            "1::",
            "2001:db8:0:0:1:0:0:1",
            "2001:DB8::8:800:200C:417A",
            "fe80::1:2:3:4:5:6",
            "1:2:3:4:5:6:7::",
        ] {
            let line = std::format!("EPRT |2|{text}|1024|\r\n");
            assert_eq!(
                scan(Sender::Client, line.as_bytes()),
                [extended(Mode::ExtendedActive, FAMILY_IPV6, v6(text), 1024)],
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_extended_port_commands() {
        for (line, error) in [
            ("EPRT |3|192.0.2.2|6275|", ParseError::BadFamily),
            ("EPRT |1 192.0.2.2|6275|", ParseError::BadFamily),
            ("EPRT 1|1|192.0.2.2|6275|", ParseError::BadDelimiter),
            ("EPRT |1|192.0.2|6275|", ParseError::BadAddress),
            ("EPRT |1|192.0.2.2.1|6275|", ParseError::BadAddress),
            ("EPRT |1|192.0.2.256|6275|", ParseError::BadAddress),
            ("EPRT |1|192..2.1|6275|", ParseError::BadAddress),
            ("EPRT |1|2001:db8::2|6275|", ParseError::BadAddress),
            ("EPRT |2|192.0.2.2|6275|", ParseError::BadAddress),
            ("EPRT |2|::ffff:192.0.2.2|6275|", ParseError::BadAddress),
            ("EPRT |2|1::2::3|6275|", ParseError::BadAddress),
            ("EPRT |2|:1::3|6275|", ParseError::BadAddress),
            ("EPRT |2|1::3:|6275|", ParseError::BadAddress),
            ("EPRT |2|12345::|6275|", ParseError::BadAddress),
            ("EPRT |2|1:2:3:4:5:6:7:8:9|6275|", ParseError::BadAddress),
            ("EPRT |2|1:2:3:4:5:6:7|6275|", ParseError::BadAddress),
            ("EPRT |2||6275|", ParseError::BadAddress),
            ("EPRT |2|:::|6275|", ParseError::BadAddress),
            ("EPRT |1|192.0.2.2|65536|", ParseError::NumberTooLarge),
            ("EPRT |1|192.0.2.2|0|", ParseError::PortZero),
            ("EPRT |1|192.0.2.2||", ParseError::MissingNumber),
            ("EPRT |1|192.0.2.2|6275", ParseError::MissingNumber),
        ] {
            let line = std::format!("{line}\r\n");
            assert_eq!(
                scan(Sender::Client, line.as_bytes()),
                [Step::Malformed(error)],
                "{line:?}"
            );
        }
    }

    #[test]
    fn a_line_split_anywhere_reads_the_same() {
        let text = b"TYPE I\r\nEPRT |2|2001:db8::2|6275|\r\nPORT 10,0,0,2,7,138\r\n";
        let whole = scan(Sender::Client, text);
        assert_eq!(whole.len(), 2);
        for cut in 0..text.len() {
            let mut scanner = LineScanner::new(Sender::Client);
            let steps: Vec<Step> = text[..cut]
                .iter()
                .chain(&text[cut..])
                .map(|&b| scanner.step(b))
                .filter(|s| *s != Step::Continue)
                .collect();
            assert_eq!(steps, whole, "cut at {cut}");
        }
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

    /// Arbitrary bytes never panic and never announce a port outside 1..=65535 or more
    /// announcements than lines.
    #[test]
    fn arbitrary_input_is_handled() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"PORTEPRT227 9port,0123456789abcdef:.()\r\n\x00|!";
        for _ in 0..20_000 {
            let mut line = [0u8; 48];
            for byte in line.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *byte = alphabet[(seed % alphabet.len() as u64) as usize];
            }
            for sender in [Sender::Client, Sender::Server] {
                let steps = scan(sender, &line);
                let lines = line.iter().filter(|&&b| b == b'\n').count() + 1;
                assert!(steps.len() <= lines);
                for step in steps {
                    if let Step::Announced(a) = step {
                        assert_ne!(a.port, 0);
                    }
                }
            }
        }
    }
}
