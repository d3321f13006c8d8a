//! The decisions: which ports are guarded, and which announcements become expectations.

use bytemuck::{Pod, Zeroable};

use crate::{
    addr::Addr,
    control::ExpectSlot,
    expect::ExpectValue,
    flow::FlowKey,
    nat::PublicAddr,
    parse::{Announcement, FAMILY_OWN_ADDRESS, Sender},
};

/// What a local TCP port is to the programs. Stored one byte per port in an array map, so
/// a packet's classification is a single array lookup.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortClass {
    /// Not ours to judge: passed untouched.
    Open = 0,
    /// New inbound connections need an expectation.
    Guarded = 1,
    /// An FTP control port: its payload is scanned.
    Control = 2,
}

impl PortClass {
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Guarded,
            2 => Self::Control,
            _ => Self::Open,
        }
    }
}

/// What the programs know about a local TCP port: its class, and when it was last
/// announced and last admitted, so that a SYN to a port nothing recently announced is
/// dropped without a hash lookup (the cheap path a flood takes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortInfo {
    pub class: u8,
    /// 1: a control port whose connections are TLS from their first byte (implicit FTPS,
    /// `--tls-control-port`).
    pub implicit_tls: u8,
    pub _pad: [u8; 2],
    /// `coarse_time` of the latest announcement of this port, by anyone.
    pub announced: u32,
    /// `coarse_time` of the latest admission of a connection to this port.
    pub admitted: u32,
    pub _pad2: u32,
}

/// Time in units of 2^30 ns (about 1.07 s), enough for timeouts counted in seconds and
/// cheap to compute (a shift).
pub fn coarse_time(now_ns: u64) -> u32 {
    (now_ns >> 30) as u32
}

/// The longest expectation timeout the programs can judge (2^62 ns, about 146 years): in
/// `coarse_time` units it must fit a u32, or `may_be_solicited` would take it for a short
/// one and drop the SYNs of announcements older than that.
pub const MAX_EXPECT_TIMEOUT_NS: u64 = (1 << 62) - 1;

/// How long after an admission a SYN of that connection may still arrive: Linux gives up
/// retrying a SYN after about 127 s, other stacks sooner.
pub const SYN_RETRY_WINDOW_NS: u64 = 130 * 1_000_000_000;

/// `PortInfo::announced`/`admitted` of a port that never was.
pub const NEVER: u32 = u32::MAX;

impl PortInfo {
    pub fn new(class: PortClass) -> Self {
        Self {
            class: class as u8,
            announced: NEVER,
            admitted: NEVER,
            ..Self::default()
        }
    }

    /// Nothing ever announced or admitted this port: a SYN to it is unsolicited, and no
    /// clock needs reading to know it (the floods' ports, mostly).
    pub fn never_used(&self) -> bool {
        self.announced == NEVER && self.admitted == NEVER
    }

    /// Whether a SYN to this port could match an expectation or retransmit an admitted
    /// SYN; when not, the SYN is unsolicited without looking further. Errs on the side of
    /// "could" (a unit of slack either way).
    pub fn may_be_solicited(&self, now_ns: u64, expect_timeout_ns: u64) -> bool {
        let now = coarse_time(now_ns);
        let within = |then: u32, window_ns: u64| {
            then != NEVER
                && u64::from(now.wrapping_sub(then)) <= u64::from(coarse_time(window_ns)) + 1
        };
        within(self.announced, expect_timeout_ns) || within(self.admitted, SYN_RETRY_WINDOW_NS)
    }
}

/// The guarded range, the control ports and the listeners exempted from the guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPlan<'a> {
    pub data_ports: (u16, u16),
    pub control_ports: &'a [u16],
    /// Control ports whose connections are TLS from their first byte (implicit FTPS).
    pub tls_control_ports: &'a [u16],
    pub allowed_ports: &'a [u16],
}

impl PortPlan<'_> {
    /// What the programs keep of `port`.
    pub fn info(&self, port: u16) -> PortInfo {
        PortInfo {
            implicit_tls: u8::from(self.implicit_tls(port)),
            ..PortInfo::new(self.class(port))
        }
    }

    /// Whether `port` is an implicit-TLS control port.
    pub fn implicit_tls(&self, port: u16) -> bool {
        port != 0 && self.tls_control_ports.contains(&port)
    }

    pub fn class(&self, port: u16) -> PortClass {
        if port == 0 {
            PortClass::Open
        } else if self.control_ports.contains(&port) || self.implicit_tls(port) {
            PortClass::Control
        } else if (self.data_ports.0..=self.data_ports.1).contains(&port)
            && !self.allowed_ports.contains(&port)
        {
            PortClass::Guarded
        } else {
            PortClass::Open
        }
    }
}

/// How announcements are judged; set at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Accept an announced address other than the announcer's own (the kernel helper's
    /// `loose=1`): opens third-party transfers, and with them FTP bounce.
    pub loose: bool,
    /// Data ports below this are refused: no FTP bounce to port 25 and friends.
    pub min_data_port: u16,
}

/// Why an announcement created nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The announced address is not the announcer's own: a third-party or bounce attempt.
    AddressMismatch,
    /// An EPRT whose address family is not the control connection's.
    FamilyMismatch,
    /// A data port below `Rules::min_data_port`.
    LowPort,
}

/// The expectation an announcement creates, on control connection `control` (client ->
/// server), announced by `announcer`; `ExpectSlot::key` gives its key.
///
/// The announcer will listen, the other end of the control connection will connect. The
/// announced address must be the announcer's own (the kernel helper's rule), so a control
/// connection can only open a port on the host at its own end. `public` is the
/// `--public-address` mapping of the announced address, given only when the announcer is
/// this host (the caller checks that `own_address` is local): this host's public address is
/// then its own too, and the listener is the address the NAT translates it to.
pub fn judge(
    announcement: &Announcement,
    control: &FlowKey,
    announcer: Sender,
    rules: &Rules,
    public: Option<&PublicAddr>,
) -> Result<ExpectSlot, Refusal> {
    let own = own_address(control, announcer);
    let listener = if announcement.family == FAMILY_OWN_ADDRESS {
        own
    } else if announcement.family != control.family {
        return Err(Refusal::FamilyMismatch);
    } else if announcement.addr == own || (rules.loose && public.is_none()) {
        announcement.addr
    } else if let Some(public) = public {
        public.listener(own)
    } else {
        return Err(Refusal::AddressMismatch);
    };
    if announcement.port < rules.min_data_port {
        return Err(Refusal::LowPort);
    }
    Ok(ExpectSlot {
        port: announcement.port,
        announcer: announcer as u8,
        _pad: 0,
        listener,
    })
}

/// The announcer's own address on control connection `control`.
pub fn own_address(control: &FlowKey, announcer: Sender) -> Addr {
    match announcer {
        Sender::Server => control.dst,
        Sender::Client => control.src,
    }
}

/// What to do with a SYN (without ACK) to a guarded port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynVerdict {
    /// The connection was already admitted: a retransmitted SYN.
    Retransmission,
    /// A live expectation covers it: consume the expectation, track the flow.
    Admit,
    /// An expectation covered it once but has expired: delete it, drop.
    Expired,
    /// Nothing announced it.
    Unsolicited,
}

pub fn syn_verdict(tracked: bool, expectation: Option<&ExpectValue>, now_ns: u64) -> SynVerdict {
    match (tracked, expectation) {
        (true, _) => SynVerdict::Retransmission,
        (false, Some(e)) if e.is_live(now_ns) => SynVerdict::Admit,
        (false, Some(_)) => SynVerdict::Expired,
        (false, None) => SynVerdict::Unsolicited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        addr::{FAMILY_IPV4, FAMILY_IPV6, Family, ipv4},
        expect::ExpectKey,
        parse::Mode,
    };

    const SERVER: [u8; 16] = ipv4([192, 0, 2, 1]);
    const CLIENT: [u8; 16] = ipv4([192, 0, 2, 2]);
    const STRANGER: [u8; 16] = ipv4([198, 51, 100, 7]);
    const RULES: Rules = Rules {
        loose: false,
        min_data_port: 1024,
    };

    /// The control connection, client -> server.
    fn control() -> FlowKey {
        FlowKey::new(Family::V4, CLIENT, 40000, SERVER, 21)
    }

    fn announced(mode: Mode, family: u8, addr: [u8; 16], port: u16) -> Announcement {
        Announcement {
            family,
            mode: mode as u8,
            port,
            addr,
        }
    }

    fn expect(a: Announcement, announcer: Sender, rules: &Rules) -> Result<ExpectKey, Refusal> {
        judge(&a, &control(), announcer, rules, None).map(|slot| slot.key(&control()))
    }

    #[test]
    fn port_recency_short_cuts_only_what_cannot_match() {
        const S: u64 = 1_000_000_000;
        let timeout = 300 * S;
        let mut info = PortInfo::new(PortClass::Guarded);
        assert!(info.never_used());
        assert!(
            !info.may_be_solicited(0, timeout),
            "never announced, even at boot"
        );
        let now = 10_000 * S;
        assert!(!info.may_be_solicited(now, timeout), "never announced");
        info.announced = coarse_time(now - 299 * S);
        assert!(info.may_be_solicited(now, timeout));
        info.announced = coarse_time(now - 400 * S);
        assert!(!info.may_be_solicited(now, timeout));
        info.admitted = coarse_time(now - 100 * S);
        assert!(
            info.may_be_solicited(now, timeout),
            "a SYN retry may still come"
        );
        info.admitted = coarse_time(now - 200 * S);
        assert!(!info.may_be_solicited(now, timeout));
        // Sub-unit timeouts still cover what was just announced.
        info.announced = coarse_time(now);
        assert!(info.may_be_solicited(now + S, S));
    }

    #[test]
    fn the_longest_expectation_timeout_still_covers_old_announcements() {
        let mut info = PortInfo::new(PortClass::Guarded);
        let now = u64::MAX / 2;
        info.announced = coarse_time(now - (MAX_EXPECT_TIMEOUT_NS - (1 << 31)));
        assert!(info.may_be_solicited(now, MAX_EXPECT_TIMEOUT_NS));
        // A nanosecond longer and the window wraps to nothing: a port announced 20 minutes
        // ago would look unannounced.
        info.announced = coarse_time(now - (1 << 40));
        assert!(!info.may_be_solicited(now, MAX_EXPECT_TIMEOUT_NS + 1));
    }

    #[test]
    fn port_plan() {
        let plan = PortPlan {
            data_ports: (1024, 65535),
            control_ports: &[21, 2121],
            tls_control_ports: &[990],
            allowed_ports: &[8080],
        };
        assert_eq!(plan.class(990), PortClass::Control);
        assert_eq!(plan.info(990).implicit_tls, 1);
        assert_eq!(plan.info(21).implicit_tls, 0);
        assert_eq!(plan.class(0), PortClass::Open);
        assert_eq!(plan.class(21), PortClass::Control);
        assert_eq!(
            plan.class(2121),
            PortClass::Control,
            "control beats guarded"
        );
        assert_eq!(plan.class(80), PortClass::Open);
        assert_eq!(plan.class(1023), PortClass::Open);
        assert_eq!(plan.class(1024), PortClass::Guarded);
        assert_eq!(plan.class(65535), PortClass::Guarded);
        assert_eq!(plan.class(8080), PortClass::Open);
        for class in [PortClass::Open, PortClass::Guarded, PortClass::Control] {
            assert_eq!(PortClass::from_u8(class as u8), class);
        }
    }

    #[test]
    fn passive_replies_let_the_client_connect_to_the_server() {
        let key = expect(
            announced(Mode::Passive, FAMILY_IPV4, SERVER, 10000),
            Sender::Server,
            &RULES,
        )
        .unwrap();
        assert_eq!(
            (key.connector, key.listener, key.port),
            (CLIENT, SERVER, 10000)
        );
        let syn = FlowKey::new(Family::V4, CLIENT, 51000, SERVER, 10000);
        assert_eq!(ExpectKey::for_syn(&syn), key);
        let epsv = expect(
            announced(Mode::ExtendedPassive, FAMILY_OWN_ADDRESS, [0; 16], 10000),
            Sender::Server,
            &RULES,
        );
        assert_eq!(epsv, Ok(key), "229 names no address: the server's own");
    }

    #[test]
    fn active_commands_let_the_server_connect_to_the_client() {
        for mode in [Mode::Active, Mode::ExtendedActive] {
            let key = expect(
                announced(mode, FAMILY_IPV4, CLIENT, 5000),
                Sender::Client,
                &RULES,
            )
            .unwrap();
            assert_eq!(
                (key.connector, key.listener, key.port),
                (SERVER, CLIENT, 5000)
            );
        }
    }

    #[test]
    fn third_party_address_is_refused_unless_loose() {
        let reply = announced(Mode::Passive, FAMILY_IPV4, STRANGER, 10000);
        let command = announced(Mode::Active, FAMILY_IPV4, STRANGER, 5000);
        assert_eq!(
            expect(reply, Sender::Server, &RULES),
            Err(Refusal::AddressMismatch)
        );
        assert_eq!(
            expect(command, Sender::Client, &RULES),
            Err(Refusal::AddressMismatch)
        );
        assert_eq!(
            expect(
                announced(Mode::Active, FAMILY_IPV4, SERVER, 5000),
                Sender::Client,
                &RULES
            ),
            Err(Refusal::AddressMismatch),
            "a client may not announce the server's address either"
        );
        let loose = Rules {
            loose: true,
            ..RULES
        };
        let key = expect(command, Sender::Client, &loose).unwrap();
        assert_eq!((key.connector, key.listener), (SERVER, STRANGER));
    }

    #[test]
    fn a_public_address_is_the_announcers_own_and_keys_on_the_translated_one() {
        const PUBLIC: [u8; 16] = ipv4([203, 0, 113, 5]);
        let reply = announced(Mode::Passive, FAMILY_IPV4, PUBLIC, 10000);
        let judged = |public: Option<&PublicAddr>, rules: &Rules| {
            judge(&reply, &control(), Sender::Server, rules, public).map(|s| s.key(&control()))
        };
        assert_eq!(judged(None, &RULES), Err(Refusal::AddressMismatch));
        let own = PublicAddr {
            local: [0; 16],
            has_local: 0,
            _pad: [0; 3],
        };
        let key = judged(Some(&own), &RULES).unwrap();
        assert_eq!(
            (key.connector, key.listener, key.port),
            (CLIENT, SERVER, 10000)
        );
        let elsewhere = PublicAddr {
            local: STRANGER,
            has_local: 1,
            ..own
        };
        assert_eq!(judged(Some(&elsewhere), &RULES).unwrap().listener, STRANGER);
        // `--loose` alone keys on the public address, where no SYN arrives; the mapping
        // wins over it.
        let loose = Rules {
            loose: true,
            ..RULES
        };
        assert_eq!(judged(None, &loose).unwrap().listener, PUBLIC);
        assert_eq!(judged(Some(&own), &loose).unwrap().listener, SERVER);
        // The mapping moves nothing else: the port rule still holds, and an own address
        // announced as such is keyed on itself.
        let low = announced(Mode::Passive, FAMILY_IPV4, PUBLIC, 25);
        assert_eq!(
            judge(&low, &control(), Sender::Server, &RULES, Some(&elsewhere)),
            Err(Refusal::LowPort)
        );
        let plain = announced(Mode::Passive, FAMILY_IPV4, SERVER, 10000);
        assert_eq!(
            judge(&plain, &control(), Sender::Server, &RULES, Some(&elsewhere))
                .unwrap()
                .listener,
            SERVER
        );
    }

    #[test]
    fn eprt_family_must_match_the_control_connection() {
        let v6 = announced(Mode::ExtendedActive, FAMILY_IPV6, [0x20; 16], 5000);
        assert_eq!(
            expect(v6, Sender::Client, &RULES),
            Err(Refusal::FamilyMismatch)
        );
        let loose = Rules {
            loose: true,
            ..RULES
        };
        assert_eq!(
            expect(v6, Sender::Client, &loose),
            Err(Refusal::FamilyMismatch)
        );
    }

    #[test]
    fn privileged_data_ports_are_refused() {
        let bounce = announced(Mode::Active, FAMILY_IPV4, CLIENT, 25);
        assert_eq!(
            expect(bounce, Sender::Client, &RULES),
            Err(Refusal::LowPort)
        );
        let any = Rules {
            min_data_port: 1,
            ..RULES
        };
        assert!(expect(bounce, Sender::Client, &any).is_ok());
        assert_eq!(
            expect(
                announced(Mode::Passive, FAMILY_IPV4, SERVER, 1023),
                Sender::Server,
                &RULES
            ),
            Err(Refusal::LowPort)
        );
    }

    #[test]
    fn syn_verdicts() {
        let live = ExpectValue {
            expires_ns: 100,
            control: control(),
        };
        assert_eq!(syn_verdict(true, None, 50), SynVerdict::Retransmission);
        assert_eq!(
            syn_verdict(true, Some(&live), 50),
            SynVerdict::Retransmission
        );
        assert_eq!(syn_verdict(false, Some(&live), 99), SynVerdict::Admit);
        assert_eq!(syn_verdict(false, Some(&live), 100), SynVerdict::Expired);
        assert_eq!(syn_verdict(false, None, 50), SynVerdict::Unsolicited);
    }
}
