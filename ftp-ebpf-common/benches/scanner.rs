//! The scanner's cost per byte, driven as the kernel drives it (a byte the scanner
//! ignores is not stepped over): `cargo bench -p ftp-ebpf-common`.

use divan::{Bencher, black_box, counter::BytesCount};
use ftp_ebpf_common::parse::{LineScanner, Sender, Step};

fn main() {
    divan::main();
}

/// Reads `line`, returning what it announced.
fn scan(sender: Sender, line: &[u8]) -> Option<Step> {
    let mut scanner = LineScanner::new(sender);
    let mut last = None;
    for &byte in line {
        if scanner.ignores(byte) {
            continue;
        }
        match scanner.step(byte) {
            Step::Continue => {}
            step => last = Some(step),
        }
    }
    last
}

fn bench_line(bencher: Bencher, sender: Sender, line: &'static [u8]) {
    bencher
        .counter(BytesCount::of_slice(line))
        .bench(|| scan(sender, black_box(line)));
}

/// A passive reply: the line the scanner reads most.
#[divan::bench]
fn reply_227(bencher: Bencher) {
    bench_line(
        bencher,
        Sender::Server,
        b"227 Entering Passive Mode (192,168,100,200,195,80).\r\n",
    );
}

/// A reply that announces nothing: all but its first bytes are ignored.
#[divan::bench]
fn reply_150(bencher: Bencher) {
    bench_line(
        bencher,
        Sender::Server,
        b"150 Opening BINARY mode data connection for file.bin (1048576 bytes).\r\n",
    );
}

/// The longest line there is: EPRT with a full IPv6 address.
#[divan::bench]
fn eprt_ipv6(bencher: Bencher) {
    bench_line(
        bencher,
        Sender::Client,
        b"EPRT |2|2001:db8:85a3:1234:5678:8a2e:370:7334|50000|\r\n",
    );
}
