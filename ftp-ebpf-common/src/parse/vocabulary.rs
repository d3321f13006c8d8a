//! What the scanner reads and says: who wrote the bytes, and what a line announced or why
//! it announced nothing. Shared with the policy, which judges what was announced.

use bytemuck::{Pod, Zeroable};

use crate::addr::Addr;

/// Which end of the control connection wrote the bytes being scanned.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// Destination port is a control port: commands.
    Client = 0,
    /// Source port is a control port: replies.
    Server = 1,
}

impl Sender {
    /// The sender stored as `sender as u8` in a map value (which cannot hold the enum: not
    /// every byte is a `Sender`). Total rather than fallible, so that the kernel's reading
    /// costs one comparison: every byte but `Server`'s reads as the client.
    pub const fn from_u8(byte: u8) -> Self {
        if byte == Self::Server as u8 {
            Self::Server
        } else {
            Self::Client
        }
    }
}

/// How the announced port will be used.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `227`: the client will connect to the server's announced address and port.
    Passive = 1,
    /// `PORT`: the server will connect to the client's announced address and port.
    Active = 2,
    /// `229`: the client will connect to the announced port on the server's own address.
    ExtendedPassive = 3,
    /// `EPRT`: the server will connect to the client's announced address and port.
    ExtendedActive = 4,
}

/// Family of an announcement that names no address (`229`): the announcer's own address.
pub const FAMILY_OWN_ADDRESS: u8 = 0;

/// An address and port a control line announced.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Announcement {
    /// `FAMILY_IPV4`, `FAMILY_IPV6` or `FAMILY_OWN_ADDRESS`.
    pub family: u8,
    pub mode: u8,
    pub port: u16,
    pub addr: Addr,
}

/// Why a recognised line announced nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A number above 255 (an octet) or 65535 (a port).
    NumberTooLarge,
    /// Fewer numbers than the format has, or an empty one (`1,,2`).
    MissingNumber,
    /// More than six numbers.
    ExtraNumber,
    /// The verb is followed by something that is not its argument.
    NotANumber,
    /// The numbers of a `PORT` line are followed by text.
    TrailingText,
    /// A `227` line without any digit, or a `229` line without `(`.
    NoNumbers,
    /// Port 0.
    PortZero,
    /// An `EPRT`/`229` delimiter that is not a printable non-digit, or not the same one.
    BadDelimiter,
    /// An `EPRT` address family other than 1 or 2.
    BadFamily,
    /// An `EPRT` address that is not a valid dotted quad or IPv6 text address.
    BadAddress,
    /// A line of interest longer than `MAX_LINE`.
    LineTooLong,
}

/// A line that changes how the connection's bytes must be read: FTP over TLS (RFC 4217)
/// starts with `AUTH` answered by `234`, after which both directions are TLS records, and
/// may end with `CCC` (RFC 2228), after which they are plaintext again. A bit each, so that
/// the lines of one segment can be gathered in a byte.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The client's `AUTH <mechanism>`.
    AuthRequested = 1,
    /// The server's `234`: the security exchange (the TLS handshake) starts after this line.
    AuthAccepted = 2,
    /// The client's `CCC`: back to plaintext, if the server agrees.
    ClearRequested = 4,
}

/// What one byte did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    Announced(Announcement),
    Malformed(ParseError),
    Signalled(Signal),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_reads_back_from_its_byte() {
        for sender in [Sender::Client, Sender::Server] {
            assert_eq!(Sender::from_u8(sender as u8), sender);
        }
        assert_eq!(Sender::from_u8(0xff), Sender::Client);
    }
}
