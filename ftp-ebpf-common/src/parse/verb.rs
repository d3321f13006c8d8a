//! The keyword at the start of a line (`PORT`, `EPRT`, `227`, `229`, and the TLS switches
//! `AUTH`, `CCC`, `234`) and, for a client's verb, the spaces up to its argument.

use super::{LineScanner, ParseError, Phase, Signal, Step, eprt::is_delimiter};

/// The keywords of each sender, by verb index: PORT/227 = 0, EPRT/229 = 1, AUTH/234 = 2,
/// CCC = 3 (`ccc\r`: a verb of three letters, ended by its line; a bare LF is
/// `bare_verb`'s). The server has no fourth: an LF, which ends a line before it is
/// matched, matches nothing.
const CLIENT_VERBS: [&[u8; 4]; 4] = [b"port", b"eprt", b"auth", b"ccc\r"];
const SERVER_CODES: [&[u8; 4]; 4] = [b"227 ", b"229 ", b"234 ", b"\n\n\n\n"];

/// `LineScanner::verbs` at the start of a line: every keyword may still match.
pub(super) const ALL_VERBS: u8 = 0b1111;

/// `LineScanner::verbs` once the keyword is matched: its index.
const SIX_NUMBERS_VERB: u8 = 0;
const DELIMITED_VERB: u8 = 1;
const AUTH_VERB: u8 = 2;
const CLEAR_VERB: u8 = 3;

impl LineScanner {
    pub(super) fn match_verb(&mut self, byte: u8) -> Step {
        let keywords = if self.is_server() {
            SERVER_CODES
        } else {
            CLIENT_VERBS
        };
        let index = self.matched as usize;
        if index == 4 {
            // Only a client verb gets here: it must be followed by a space, or it is
            // another verb (PORTS, EPRTX, AUTHX).
            if byte != b' ' {
                self.enter(Phase::SkipLine);
            } else if self.verbs == AUTH_VERB {
                // Whatever the mechanism: only TLS is answered with 234.
                self.enter(Phase::SkipLine);
                return Step::Signalled(Signal::AuthRequested);
            } else {
                self.enter(Phase::ArgumentGap);
            }
            return Step::Continue;
        }
        let lower = byte.to_ascii_lowercase();
        for (verb, keyword) in keywords.iter().enumerate() {
            if keyword[index & 3] != lower {
                self.verbs &= !(1 << verb);
            }
        }
        if self.verbs == 0 {
            self.enter(Phase::SkipLine);
            return Step::Continue;
        }
        self.matched += 1;
        if self.matched == 4 {
            // Four bytes match one keyword at most: its bit is the only one left.
            self.verbs = match self.verbs {
                0b0001 => SIX_NUMBERS_VERB,
                0b0010 => DELIMITED_VERB,
                0b0100 => AUTH_VERB,
                _ => CLEAR_VERB,
            };
            match (self.is_server(), self.verbs) {
                (true, SIX_NUMBERS_VERB) => self.enter(Phase::SeekDigit),
                (true, DELIMITED_VERB) => self.enter(Phase::SeekParen),
                (true, _) => {
                    self.enter(Phase::SkipLine);
                    return Step::Signalled(Signal::AuthAccepted);
                }
                (false, CLEAR_VERB) => return self.clear_requested(),
                (false, _) => {}
            }
        }
        Step::Continue
    }

    /// A line ended by a bare LF while its keyword was being matched: `CCC\n`.
    pub(super) fn bare_verb(&mut self) -> Step {
        if !self.is_server() && self.matched == 3 && self.verbs & (1 << CLEAR_VERB) != 0 {
            return self.clear_requested();
        }
        Step::Continue
    }

    fn clear_requested(&mut self) -> Step {
        self.enter(Phase::SkipLine);
        Step::Signalled(Signal::ClearRequested)
    }

    /// After a client's verb and its space: more spaces, then PORT's first digit or
    /// EPRT's delimiter.
    pub(super) fn argument(&mut self, byte: u8) -> Step {
        match (byte, self.verbs) {
            (b' ', _) => Step::Continue,
            (b'0'..=b'9', SIX_NUMBERS_VERB) => self.start_numbers(byte),
            (_, DELIMITED_VERB) if is_delimiter(byte) => {
                self.delimiter = byte;
                self.enter(Phase::Family);
                Step::Continue
            }
            (_, DELIMITED_VERB) => self.fail(ParseError::BadDelimiter),
            _ => self.fail(ParseError::NotANumber),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Mode, Sender, testing::*};
    use super::*;

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
    fn tls_switches_are_signalled() {
        for (sender, line, signal) in [
            (Sender::Client, &b"AUTH TLS\r\n"[..], Signal::AuthRequested),
            (Sender::Client, b"auth ssl\n", Signal::AuthRequested),
            (Sender::Server, b"234 Proceed.\r\n", Signal::AuthAccepted),
            (Sender::Client, b"CCC\r\n", Signal::ClearRequested),
            (Sender::Client, b"ccc\n", Signal::ClearRequested),
        ] {
            assert_eq!(scan(sender, line), [Step::Signalled(signal)], "{line:?}");
        }
        // Not at the start of a line, another verb, or the other direction's.
        for (sender, line) in [
            (Sender::Client, &b"AUTHX TLS\r\n"[..]),
            (Sender::Client, b"AUTH\r\n"),
            (Sender::Client, b"CCCX\r\n"),
            (Sender::Client, b"CC\n"),
            (Sender::Server, b"500 234 no\r\n"),
            (Sender::Server, b"2345 x\r\n"),
            (Sender::Server, b"CCC\r\n"),
            (Sender::Client, b"234 \r\n"),
        ] {
            assert_eq!(scan(sender, line), [], "{line:?}");
        }
        // The next line is read as ever.
        assert_eq!(
            scan(Sender::Client, b"AUTH TLS\r\nPORT 1,2,3,4,0,1\r\n"),
            [
                Step::Signalled(Signal::AuthRequested),
                announced(Mode::Active, [1, 2, 3, 4], 1)
            ]
        );
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
    fn what_follows_a_verb_must_be_its_argument() {
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
    }
}
