//! The decisions: which ports are guarded, and which announcements become expectations.

use crate::{
    expect::{ExpectKey, ExpectValue},
    flow::FlowKey,
    parse::Announcement,
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

/// The guarded range, the control ports and the listeners exempted from the guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPlan<'a> {
    pub data_ports: (u16, u16),
    pub control_ports: &'a [u16],
    pub allowed_ports: &'a [u16],
}

impl PortPlan<'_> {
    pub fn class(&self, port: u16) -> PortClass {
        if port == 0 {
            PortClass::Open
        } else if self.control_ports.contains(&port) {
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

/// Why an announcement created nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The announced address is not the announcer's own: a third-party or bounce attempt.
    AddressMismatch,
}

/// The expectation an announcement carried by a control segment creates.
///
/// Whoever announces is the segment's sender and will listen; the segment's receiver will
/// connect. The announced address must be the sender's own (the kernel helper's rule), so
/// a control connection can only ever open a port on the host at its own end.
pub fn expectation(
    announcement: &Announcement,
    control: &FlowKey,
    now_ns: u64,
    timeout_ns: u64,
) -> Result<(ExpectKey, ExpectValue), Refusal> {
    if announcement.family != control.family || announcement.addr != control.src {
        return Err(Refusal::AddressMismatch);
    }
    Ok((
        ExpectKey {
            family: control.family,
            _pad: 0,
            port: announcement.port,
            connector: control.dst,
            listener: control.src,
        },
        ExpectValue {
            expires_ns: now_ns.saturating_add(timeout_ns),
            control: *control,
        },
    ))
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
        addr::{FAMILY_IPV4, FAMILY_IPV6, ipv4},
        parse::Mode,
    };

    const SERVER: [u8; 16] = ipv4([192, 0, 2, 1]);
    const CLIENT: [u8; 16] = ipv4([192, 0, 2, 2]);

    fn reply(src: [u8; 16], dst: [u8; 16]) -> FlowKey {
        FlowKey {
            family: FAMILY_IPV4,
            _pad: [0; 3],
            src_port: 21,
            dst_port: 40000,
            src,
            dst,
        }
    }

    fn passive(addr: [u8; 16], port: u16) -> Announcement {
        Announcement {
            family: FAMILY_IPV4,
            mode: Mode::Passive as u8,
            port,
            addr,
        }
    }

    #[test]
    fn port_plan() {
        let plan = PortPlan {
            data_ports: (1024, 65535),
            control_ports: &[21, 2121],
            allowed_ports: &[8080],
        };
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
    fn passive_reply_lets_the_client_connect_to_the_server() {
        let control = reply(SERVER, CLIENT);
        let (key, value) = expectation(&passive(SERVER, 10000), &control, 5, 300).unwrap();
        assert_eq!(key.connector, CLIENT);
        assert_eq!(key.listener, SERVER);
        assert_eq!(key.port, 10000);
        assert_eq!(value.expires_ns, 305);
        assert_eq!(value.control, control);
        let syn = FlowKey {
            family: FAMILY_IPV4,
            _pad: [0; 3],
            src_port: 51000,
            dst_port: 10000,
            src: CLIENT,
            dst: SERVER,
        };
        assert_eq!(ExpectKey::for_syn(&syn), key);
    }

    #[test]
    fn third_party_address_is_refused() {
        let control = reply(SERVER, CLIENT);
        let elsewhere = ipv4([198, 51, 100, 7]);
        assert_eq!(
            expectation(&passive(elsewhere, 10000), &control, 0, 300),
            Err(Refusal::AddressMismatch)
        );
        let mut other_family = passive(SERVER, 10000);
        other_family.family = FAMILY_IPV6;
        assert_eq!(
            expectation(&other_family, &control, 0, 300),
            Err(Refusal::AddressMismatch)
        );
    }

    #[test]
    fn syn_verdicts() {
        let live = ExpectValue {
            expires_ns: 100,
            control: reply(SERVER, CLIENT),
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
