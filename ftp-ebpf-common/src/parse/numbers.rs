//! `h1,h2,h3,h4,p1,p2`: the six numbers of `PORT` (RFC 959) and `227` (found from the
//! first digit on, as RFC 1123 says).

use super::{LineScanner, Mode, ParseError, Phase, Step};
use crate::addr::{FAMILY_IPV4, ipv4};

const SIX_NUMBERS: u8 = 6;

impl LineScanner {
    pub(super) fn start_numbers(&mut self, digit: u8) -> Step {
        self.enter(Phase::Numbers);
        self.start_field();
        self.text_starts_at(self.line_len.wrapping_sub(1));
        self.six_numbers(digit)
    }

    // Inlined into `step`, as it was before the grammars had modules of their own: as a
    // call of its own it adds a frame to the bpf_loop callback's chain, which takes 6.1's
    // combined stack past 512 bytes.
    #[inline(always)]
    pub(super) fn six_numbers(&mut self, byte: u8) -> Step {
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
                if self.field == 3 {
                    self.text_ends();
                }
                self.field += 1;
                self.start_field();
                Step::Continue
            }
            _ => {
                if self.digits == 0 || self.field + 1 < SIX_NUMBERS {
                    return self.fail(ParseError::MissingNumber);
                }
                // 227's numbers may be followed by anything (`).`); PORT's end the line.
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
}

#[cfg(test)]
mod tests {
    use super::super::{Sender, testing::*};
    use super::*;

    #[test]
    fn port_command() {
        assert_eq!(
            scan(Sender::Client, b"PORT 10,0,0,2,7,138\r\n"),
            [announced(Mode::Active, [10, 0, 0, 2], 1930)]
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
}
