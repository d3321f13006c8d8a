//! IPv6 text, as EPRT's af 2 carries it: RFC 4291 2.2 forms 1 and 2 (eight groups of one
//! to four hex digits, a run of them shortened to `::` once). The mixed form 3 with a
//! dotted quad (`::ffff:192.0.2.1`) is refused: a client announcing an IPv4 address says
//! af 1.

use super::{LineScanner, ParseError, Step};
use crate::addr::Addr;

/// `LineScanner::gap` while no `::` was read.
pub(super) const NO_GAP: u8 = 0xff;

impl LineScanner {
    pub(super) fn ipv6_text(&mut self, byte: u8) -> Step {
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

    fn push_group(&mut self) -> bool {
        if self.field >= 8 {
            return false;
        }
        self.groups[usize::from(self.field & 7)] = self.value as u16;
        self.field += 1;
        self.start_field();
        true
    }

    /// The closing delimiter: checks the group count and spreads the groups read after
    /// `::` to the end of the address.
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
        self.start_port();
        Step::Continue
    }

    /// The address the groups make, once `ipv6_end` expanded them.
    pub(super) fn ipv6_address(&self) -> Addr {
        let mut addr = [0u8; 16];
        for (pair, group) in addr.chunks_exact_mut(2).zip(self.groups) {
            pair.copy_from_slice(&group.to_be_bytes());
        }
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Mode, Sender, testing::*};
    use super::*;
    use crate::addr::FAMILY_IPV6;

    #[test]
    fn every_shortening_reads_as_std_reads_it() {
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
            let addr = text.parse::<std::net::Ipv6Addr>().unwrap().octets();
            assert_eq!(
                scan(Sender::Client, line.as_bytes()),
                [extended(Mode::ExtendedActive, FAMILY_IPV6, addr, 1024)],
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_ipv6_text() {
        for text in [
            "::ffff:192.0.2.2",
            "1::2::3",
            ":1::3",
            "1::3:",
            "12345::",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7",
            "",
            ":::",
        ] {
            let line = std::format!("EPRT |2|{text}|6275|\r\n");
            assert_eq!(
                scan(Sender::Client, line.as_bytes()),
                [Step::Malformed(ParseError::BadAddress)],
                "{text:?}"
            );
        }
    }
}
