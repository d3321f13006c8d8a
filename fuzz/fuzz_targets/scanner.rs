//! Arbitrary bytes, cut into segments at arbitrary points, through a `LineScanner` of
//! each sender: it must not panic, must announce only what its sender can announce, at
//! most once a line, and must say the same however the bytes are cut.
#![no_main]

use ftp_ebpf_common::{
    addr::{FAMILY_IPV4, FAMILY_IPV6},
    parse::{FAMILY_OWN_ADDRESS, LineScanner, Mode, Sender, Step},
};
use libfuzzer_sys::fuzz_target;

/// Feeds `text` as the kernel does: in segments ending at `ends`, the scanner stored
/// between them as the bytes of a map value, and a byte it ignores not stepped over.
fn scan(sender: Sender, text: &[u8], ends: &[usize]) -> Vec<Step> {
    let mut stored = LineScanner::new(sender);
    let mut steps = Vec::new();
    let mut start = 0;
    for &end in ends.iter().chain([&text.len()]) {
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

fuzz_target!(|input: (Vec<u16>, &[u8])| {
    let (cuts, text) = input;
    let mut ends: Vec<usize> = cuts
        .iter()
        .map(|&cut| usize::from(cut) % (text.len() + 1))
        .collect();
    ends.sort_unstable();
    let lines = text.iter().filter(|&&b| b == b'\n').count() + 1;
    for sender in [Sender::Client, Sender::Server] {
        let whole = scan(sender, text, &[]);
        assert!(whole.len() <= lines);
        let modes = match sender {
            Sender::Client => [Mode::Active, Mode::ExtendedActive],
            Sender::Server => [Mode::Passive, Mode::ExtendedPassive],
        };
        for step in &whole {
            if let Step::Announced(a) = step {
                assert_ne!(a.port, 0);
                assert!(modes.iter().any(|&m| m as u8 == a.mode));
                assert!([FAMILY_IPV4, FAMILY_IPV6, FAMILY_OWN_ADDRESS].contains(&a.family));
            }
        }
        assert_eq!(scan(sender, text, &ends), whole, "cut at {ends:?}");
    }
});
