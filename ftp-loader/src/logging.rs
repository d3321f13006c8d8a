//! The loader's log lines: which are written, and how they look.
//!
//! By default the product's own crates log at info (debug with `-v`) and every other crate,
//! aya's included, at warn: aya's relocation and BTF notes are hundreds of debug lines that
//! say nothing to an admin. `RUST_LOG`, when set, replaces those defaults whole
//! (env_logger's syntax: `RUST_LOG=debug` brings aya's lines back).
//!
//! When stderr is the journal (systemd says so in JOURNAL_STREAM, as the device and inode
//! of the stream it gave), each line starts with its syslog priority as sd-daemon(3)
//! prefixes do (`<6>` info), which journald strips and records; the journal timestamps
//! lines itself. Elsewhere a line starts with its level in brackets (`[INFO ]`).

use std::io::Write;

use log::Level;

/// The crates whose lines are the product's own: the loader, and the kernel programs
/// (aya-log gives their lines their module's path as target).
const PRODUCT: [&str; 3] = ["ftp_loader", "ftp_ebpf", "ftp_ebpf_common"];

/// The env_logger filter used when RUST_LOG is not set.
fn default_filters(verbose: bool) -> String {
    let level = if verbose { "debug" } else { "info" };
    PRODUCT.iter().fold("warn".to_owned(), |filters, krate| {
        format!("{filters},{krate}={level}")
    })
}

/// sd-daemon(3)'s priority prefix for `level`.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether JOURNAL_STREAM (`DEVICE:INODE`, decimal) names the stream with these numbers.
fn names_stream(journal_stream: &str, device: u64, inode: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((device, inode))
}

/// Whether stderr is the stream systemd connected to the journal (not merely inherited
/// JOURNAL_STREAM from a service that started this one with another stderr).
fn stderr_is_journal() -> bool {
    let Ok(journal_stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    // SAFETY: fstat writes into a zeroed struct of the right type.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on the process's own stderr descriptor.
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut stat) } != 0 {
        return false;
    }
    names_stream(&journal_stream, stat.st_dev, stat.st_ino)
}

/// How a line starts: its priority for the journal, its level elsewhere.
#[derive(Clone, Copy)]
struct Style {
    journal: bool,
}

impl Style {
    fn prefix(self, level: Level) -> String {
        if self.journal {
            format!("<{}>", priority(level))
        } else {
            format!("[{level:<5}] ")
        }
    }
}

/// Starts logging to stderr; `verbose` is `-v`.
pub fn init(verbose: bool) {
    let mut builder = env_logger::Builder::new();
    match std::env::var("RUST_LOG") {
        Ok(filters) if !filters.trim().is_empty() => builder.parse_filters(&filters),
        _ => builder.parse_filters(&default_filters(verbose)),
    };
    let style = Style {
        journal: stderr_is_journal(),
    };
    builder
        .format(move |out, record| {
            writeln!(out, "{}{}", style.prefix(record.level()), record.args())
        })
        .init();
}

/// Prints the error that ends the process, as an error line the journal ranks as such.
pub fn fatal(error: &anyhow::Error) {
    let prefix = if stderr_is_journal() {
        Style { journal: true }.prefix(Level::Error)
    } else {
        String::new()
    };
    eprintln!("{prefix}ftp-loader: {error:#}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_raise_only_the_products_crates() {
        assert_eq!(
            default_filters(false),
            "warn,ftp_loader=info,ftp_ebpf=info,ftp_ebpf_common=info"
        );
        assert_eq!(
            default_filters(true),
            "warn,ftp_loader=debug,ftp_ebpf=debug,ftp_ebpf_common=debug"
        );
    }

    #[test]
    fn journal_lines_carry_sd_daemon_priorities() {
        let journal = Style { journal: true };
        assert_eq!(journal.prefix(Level::Error), "<3>");
        assert_eq!(journal.prefix(Level::Warn), "<4>");
        assert_eq!(journal.prefix(Level::Info), "<6>");
        assert_eq!(journal.prefix(Level::Debug), "<7>");
        assert_eq!(Style { journal: false }.prefix(Level::Info), "[INFO ] ");
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 1235));
        assert!(!names_stream("8", 8, 1234));
        assert!(!names_stream("", 0, 0));
    }
}
