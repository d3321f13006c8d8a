//! Property tests of the whole scanner: arbitrary input, and the address grammars checked
//! against `std::net`'s parsers.

use std::{
    format,
    net::{Ipv4Addr, Ipv6Addr},
    string::{String, ToString},
    vec::Vec,
};

use proptest::prelude::*;

use super::{testing::*, *};
use crate::addr::{FAMILY_IPV4, FAMILY_IPV6, ipv4};

/// Feeds `text` as the kernel does: in segments cut at `cuts`, the scanner stored between
/// them as the bytes of a map value, and a byte it ignores not stepped over.
fn scan_in_pieces(sender: Sender, text: &[u8], cuts: &[usize]) -> Vec<Step> {
    let mut stored = LineScanner::new(sender);
    let mut steps = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|cut| cut % (text.len() + 1)).collect();
    ends.sort_unstable();
    ends.push(text.len());
    for end in ends {
        let mut scanner: LineScanner = bytemuck::pod_read_unaligned(bytemuck::bytes_of(&stored));
        for &byte in &text[start..end] {
            if !scanner.ignores(byte) {
                steps.push(scanner.step(byte));
            }
        }
        stored = scanner;
        start = end;
    }
    steps.retain(|step| *step != Step::Continue);
    steps
}

/// Bytes the grammars care about, so that random input gets somewhere.
const ALPHABET: &[u8] = b"PORTEPRTeprtport227 229 ,0123456789abcdefABCDEF:.()|!\r\n\x00";

/// Lines that announce, so that cuts fall inside them too.
const LINES: [&[u8]; 5] = [
    b"PORT 10,0,0,2,7,138\r\n",
    b"EPRT |2|2001:db8::2|6275|\r\n",
    b"EPRT |1|192.0.2.2|6275|\n",
    b"227 Entering Passive Mode (192,0,2,1,39,16).\r\n",
    b"229 Entering Extended Passive Mode (|||6446|)\r\n",
];

/// Announcing lines and random bytes, in any order.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![4 => prop::sample::select(ALPHABET), 1 => any::<u8>()];
    let piece = prop_oneof![
        prop::sample::select(&LINES[..]).prop_map(<[u8]>::to_vec),
        prop::collection::vec(byte, 0..48),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
}

/// What `EPRT |2|text|1024|` announces, if anything.
fn eprt_address(family: char, text: &str) -> Option<Addr> {
    let line = format!("EPRT |{family}|{text}|1024|\r\n");
    match scan(Sender::Client, line.as_bytes()).as_slice() {
        [Step::Announced(announcement)] => Some(announcement.addr),
        [Step::Malformed(ParseError::BadAddress)] => None,
        other => panic!("{line:?}: {other:?}"),
    }
}

proptest! {
    /// Arbitrary bytes never panic, never announce port 0, a family or mode the sender
    /// cannot announce, or more than once a line; and cutting them into segments anywhere
    /// changes nothing.
    #[test]
    fn arbitrary_input_reads_the_same_however_cut(
        text in input(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        for sender in [Sender::Client, Sender::Server] {
            let whole = scan(sender, &text);
            let lines = text.iter().filter(|&&b| b == b'\n').count() + 1;
            prop_assert!(whole.len() <= lines);
            for step in &whole {
                if let Step::Announced(a) = step {
                    prop_assert_ne!(a.port, 0);
                    let modes = match sender {
                        Sender::Client => [Mode::Active, Mode::ExtendedActive],
                        Sender::Server => [Mode::Passive, Mode::ExtendedPassive],
                    };
                    prop_assert!(modes.iter().any(|&m| m as u8 == a.mode));
                    prop_assert!([FAMILY_IPV4, FAMILY_IPV6, FAMILY_OWN_ADDRESS].contains(&a.family));
                }
            }
            prop_assert_eq!(scan_in_pieces(sender, &text, &cuts), whole);
        }
    }

    #[test]
    fn six_numbers_announce_what_they_say(octets in any::<[u8; 4]>(), port in 1..=u16::MAX) {
        let [a, b, c, d] = octets;
        let [p1, p2] = port.to_be_bytes();
        let port_line = format!("PORT {a},{b},{c},{d},{p1},{p2}\r\n");
        prop_assert_eq!(
            scan(Sender::Client, port_line.as_bytes()),
            [announced(Mode::Active, octets, port)]
        );
        let reply = format!("227 Entering Passive Mode ({a},{b},{c},{d},{p1},{p2}).\r\n");
        prop_assert_eq!(
            scan(Sender::Server, reply.as_bytes()),
            [announced(Mode::Passive, octets, port)]
        );
    }

    #[test]
    fn eprt_announces_what_std_formats(
        v4 in any::<[u8; 4]>(),
        v6 in any::<[u8; 16]>(),
        upper in any::<bool>(),
        port in 1..=u16::MAX,
    ) {
        let line = format!("EPRT |1|{}|{port}|\r\n", Ipv4Addr::from(v4));
        prop_assert_eq!(
            scan(Sender::Client, line.as_bytes()),
            [extended(Mode::ExtendedActive, FAMILY_IPV4, ipv4(v4), port)]
        );
        let address = Ipv6Addr::from(v6);
        let full = address.segments().map(|group| format!("{group:x}")).join(":");
        for text in [address.to_string(), full] {
            let text = if upper { text.to_ascii_uppercase() } else { text };
            let line = format!("EPRT |2|{text}|{port}|\r\n");
            let expected = if text.contains('.') {
                // The mixed form (std writes IPv4-mapped addresses so): refused.
                Step::Malformed(ParseError::BadAddress)
            } else {
                extended(Mode::ExtendedActive, FAMILY_IPV6, v6, port)
            };
            prop_assert_eq!(scan(Sender::Client, line.as_bytes()), [expected], "{}", text);
        }
    }

    /// Text shaped like IPv6 text, most of it not valid: the scanner accepts what std
    /// accepts, as the same address, and nothing else (but for the refused mixed form).
    #[test]
    fn ipv6_text_agrees_with_std(text in "(([0-9a-fA-F]{1,5})?:{1,3}){0,9}[0-9a-fA-F]{0,5}(\\.[0-9]{1,3}){0,3}") {
        let std = text.parse::<Ipv6Addr>().ok().map(|a| a.octets());
        let ours = eprt_address('2', &text);
        if text.contains('.') {
            prop_assert_eq!(ours, None);
        } else {
            prop_assert_eq!(ours, std, "{}", text);
        }
    }

    /// Text shaped like a dotted quad: the scanner accepts what std accepts, as the same
    /// address; what it accepts beyond is leading zeros (read as decimal, as in `PORT`).
    #[test]
    fn dotted_quad_agrees_with_std(text in "([0-9]{0,4}\\.{1,2}){0,5}[0-9]{0,4}") {
        let ours = eprt_address('1', &text);
        if let Ok(address) = text.parse::<Ipv4Addr>() {
            prop_assert_eq!(ours, Some(ipv4(address.octets())), "{}", text);
        }
        if let Some(addr) = ours {
            let unpadded: Vec<String> = text
                .split('.')
                .map(|octet| match octet.trim_start_matches('0') {
                    "" => String::from("0"),
                    digits => String::from(digits),
                })
                .collect();
            let address = unpadded.join(".").parse::<Ipv4Addr>();
            prop_assert_eq!(address.map(|a| ipv4(a.octets())), Ok(addr), "{}", text);
        }
    }
}
