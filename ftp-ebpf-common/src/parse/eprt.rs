//! The delimited fields of RFC 2428: `EPRT <d>af<d>addr<d>port<d>` (af 1 with a dotted
//! quad; af 2's IPv6 text is `ipv6`'s) and `229 ... (<d><d><d>port<d>)`.

use super::{FAMILY_OWN_ADDRESS, LineScanner, Mode, ParseError, Phase, Step};
use crate::addr::{Addr, FAMILY_IPV4, FAMILY_IPV6, ipv4};

/// Whether `byte` may delimit the fields: any printable character but a digit.
pub(super) fn is_delimiter(byte: u8) -> bool {
    (33..=126).contains(&byte) && !byte.is_ascii_digit()
}

impl LineScanner {
    /// `(|||` of 229: three identical delimiters.
    pub(super) fn epsv_delimiters(&mut self, byte: u8) -> Step {
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
            self.start_port();
        }
        Step::Continue
    }

    pub(super) fn eprt_family(&mut self, byte: u8) -> Step {
        self.family = match byte {
            b'1' => FAMILY_IPV4,
            b'2' => FAMILY_IPV6,
            _ => return self.fail(ParseError::BadFamily),
        };
        self.enter(Phase::FamilyEnd);
        Step::Continue
    }

    pub(super) fn eprt_family_end(&mut self, byte: u8) -> Step {
        if byte != self.delimiter {
            return self.fail(ParseError::BadFamily);
        }
        self.field = 0;
        self.start_field();
        // The address starts with the next byte.
        self.text_starts_at(self.line_len);
        self.enter(if self.family == FAMILY_IPV4 {
            Phase::DottedQuad
        } else {
            Phase::Ipv6Text
        });
        Step::Continue
    }

    /// EPRT's IPv4 address: four decimal octets of one to three digits.
    pub(super) fn dotted_quad(&mut self, byte: u8) -> Step {
        if byte == self.delimiter {
            if self.digits == 0 || self.field != 3 {
                return self.fail(ParseError::BadAddress);
            }
            self.store_octet();
            self.text_ends();
            self.start_port();
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

    /// The address is read (EPRT) or there is none (229): the port comes next.
    pub(super) fn start_port(&mut self) {
        self.enter(Phase::Port);
        self.start_field();
    }

    /// The port of EPRT and 229, up to the closing delimiter.
    pub(super) fn port_number(&mut self, byte: u8) -> Step {
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
        self.ipv6_address()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Sender, testing::*};
    use super::*;

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
}
