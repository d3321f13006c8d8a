//! The keyword at the start of a line (`PORT`, `EPRT`, `227`, `229`) and, for a client's
//! verb, the spaces up to its argument.

use super::{LineScanner, ParseError, Phase, Step, eprt::is_delimiter};

/// The two keywords of each sender, as a verb index: PORT/227 = 0, EPRT/229 = 1.
const CLIENT_VERBS: [&[u8; 4]; 2] = [b"port", b"eprt"];
const SERVER_CODES: [&[u8; 4]; 2] = [b"227 ", b"229 "];

/// `LineScanner::verbs` at the start of a line: every keyword may still match.
pub(super) const ALL_VERBS: u8 = 0b11;

/// `LineScanner::verbs` once the keyword is matched.
const SIX_NUMBERS_VERB: u8 = 0;
const DELIMITED_VERB: u8 = 1;

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
            // another verb (PORTS, EPRTX).
            self.enter(if byte == b' ' {
                Phase::ArgumentGap
            } else {
                Phase::SkipLine
            });
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
            self.verbs = if self.verbs & 1 != 0 {
                SIX_NUMBERS_VERB
            } else {
                DELIMITED_VERB
            };
            if self.is_server() {
                self.enter(if self.verbs == SIX_NUMBERS_VERB {
                    Phase::SeekDigit
                } else {
                    Phase::SeekParen
                });
            }
        }
        Step::Continue
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
