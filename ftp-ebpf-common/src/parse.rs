//! The FTP control-line scanner.
//!
//! It consumes a control segment one byte at a time (`LineScanner::step`), so the kernel
//! can drive it from a `bpf_loop` callback whose body the verifier checks once, instead of
//! an unrolled loop over the whole payload. Every line of the segment is examined; only a
//! keyword at the very start of a line counts, so text echoed in the middle of a line
//! (`550 227 Entering Passive Mode (...)`) never announces anything.
//!
//! Recognised, case-insensitively:
//! - from the client: `PORT h1,h2,h3,h4,p1,p2` (RFC 959), one or more spaces after the verb,
//!   the numbers ending the line;
//! - from the server: `227 ...` (RFC 959), the numbers found as RFC 1123 says: scan for the
//!   first digit, parentheses optional.
//!
//! Every number is range-checked (each of the six is 0..=255, the port 1..=65535); a line
//! that breaks a rule announces nothing and reports why.

use bytemuck::{Pod, Zeroable};

use crate::addr::{Addr, FAMILY_IPV4, ipv4};

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
    /// `227`: the client will connect to the server's announced port.
    Passive = 1,
    /// `PORT`: the server will connect to the client's announced port.
    Active = 2,
}

/// An address and port a control line announced.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Announcement {
    pub family: u8,
    pub mode: u8,
    pub port: u16,
    pub addr: Addr,
}

/// Why a recognised line announced nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A number above 255.
    NumberTooLarge,
    /// Fewer than six numbers, or an empty one (`1,,2`).
    MissingNumber,
    /// More than six numbers.
    ExtraNumber,
    /// `PORT` followed by something that is not a number list.
    NotANumber,
    /// The numbers are followed by text on a `PORT` line.
    TrailingText,
    /// A `227` line without any digit after the code.
    NoNumbers,
    /// p1 = p2 = 0.
    PortZero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    Announced(Announcement),
    Malformed(ParseError),
}

const PHASE_VERB: u8 = 0;
const PHASE_ARGUMENT_GAP: u8 = 1;
const PHASE_SEEK_DIGIT: u8 = 2;
const PHASE_NUMBER: u8 = 3;
const PHASE_SKIP_LINE: u8 = 4;

const CLIENT_VERB: &[u8; 4] = b"port";
const SERVER_CODE: &[u8; 4] = b"227 ";
const NUMBERS: u8 = 6;

/// Scanner state, kept in a map value between `bpf_loop` iterations.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LineScanner {
    phase: u8,
    sender: u8,
    /// Bytes of the verb or code matched so far at the start of the line.
    matched: u8,
    /// Index of the number being read.
    field: u8,
    /// Digits read for the current number.
    digits: u8,
    _pad: u8,
    value: u16,
    numbers: [u8; 6],
    _pad2: [u8; 2],
}

impl LineScanner {
    /// A scanner positioned at the start of a line.
    pub fn new(sender: Sender) -> Self {
        Self {
            sender: sender as u8,
            ..Self::zeroed()
        }
    }

    pub fn step(&mut self, byte: u8) -> Step {
        if byte == b'\n' {
            let end = self.end_of_line();
            self.start_line();
            return end;
        }
        match self.phase {
            PHASE_VERB => self.match_verb(byte),
            PHASE_ARGUMENT_GAP => match byte {
                b' ' => Step::Continue,
                b'0'..=b'9' => self.start_number(byte),
                _ => self.fail(ParseError::NotANumber),
            },
            PHASE_SEEK_DIGIT => match byte {
                b'0'..=b'9' => self.start_number(byte),
                _ => Step::Continue,
            },
            PHASE_NUMBER => self.number(byte),
            _ => Step::Continue,
        }
    }

    fn start_line(&mut self) {
        *self = Self::new(if self.sender == Sender::Server as u8 {
            Sender::Server
        } else {
            Sender::Client
        });
    }

    fn end_of_line(&mut self) -> Step {
        match self.phase {
            // A bare LF ends a PORT line as well as CRLF does.
            PHASE_NUMBER => self.number(b'\r'),
            PHASE_ARGUMENT_GAP => Step::Malformed(ParseError::NotANumber),
            PHASE_SEEK_DIGIT => Step::Malformed(ParseError::NoNumbers),
            _ => Step::Continue,
        }
    }

    fn match_verb(&mut self, byte: u8) -> Step {
        let keyword = if self.sender == Sender::Server as u8 {
            SERVER_CODE
        } else {
            CLIENT_VERB
        };
        if keyword.get(self.matched as usize) != Some(&byte.to_ascii_lowercase()) {
            // The client verb must be followed by a space; anything else is another verb.
            if self.sender == Sender::Client as u8
                && self.matched as usize == keyword.len()
                && byte == b' '
            {
                self.phase = PHASE_ARGUMENT_GAP;
            } else {
                self.phase = PHASE_SKIP_LINE;
            }
            return Step::Continue;
        }
        self.matched += 1;
        if self.sender == Sender::Server as u8 && self.matched as usize == keyword.len() {
            self.phase = PHASE_SEEK_DIGIT;
        }
        Step::Continue
    }

    fn start_number(&mut self, digit: u8) -> Step {
        self.phase = PHASE_NUMBER;
        self.field = 0;
        self.value = 0;
        self.digits = 0;
        self.number(digit)
    }

    fn number(&mut self, byte: u8) -> Step {
        match byte {
            b'0'..=b'9' => {
                self.value = self.value * 10 + u16::from(byte - b'0');
                self.digits = self.digits.saturating_add(1);
                if self.value > 255 {
                    return self.fail(ParseError::NumberTooLarge);
                }
                Step::Continue
            }
            b',' => {
                if self.digits == 0 {
                    return self.fail(ParseError::MissingNumber);
                }
                if self.field + 1 >= NUMBERS {
                    return self.fail(ParseError::ExtraNumber);
                }
                self.store_number();
                self.field += 1;
                self.value = 0;
                self.digits = 0;
                Step::Continue
            }
            _ => {
                if self.digits == 0 || self.field + 1 < NUMBERS {
                    return self.fail(ParseError::MissingNumber);
                }
                if self.sender == Sender::Client as u8 && byte != b'\r' && byte != b' ' {
                    return self.fail(ParseError::TrailingText);
                }
                self.store_number();
                self.phase = PHASE_SKIP_LINE;
                self.announcement()
            }
        }
    }

    fn store_number(&mut self) {
        if let Some(slot) = self.numbers.get_mut(self.field as usize) {
            *slot = self.value as u8;
        }
    }

    fn announcement(&self) -> Step {
        let [h1, h2, h3, h4, p1, p2] = self.numbers;
        let port = u16::from_be_bytes([p1, p2]);
        if port == 0 {
            return Step::Malformed(ParseError::PortZero);
        }
        let mode = if self.sender == Sender::Server as u8 {
            Mode::Passive
        } else {
            Mode::Active
        };
        Step::Announced(Announcement {
            family: FAMILY_IPV4,
            mode: mode as u8,
            port,
            addr: ipv4([h1, h2, h3, h4]),
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

    /// Arbitrary bytes never panic and never announce a port outside 1..=65535 or more
    /// announcements than lines.
    #[test]
    fn arbitrary_input_is_handled() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"PORT227 port,0123456789()\r\n\x00|";
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
