//! Attaching to interfaces: the guard on ingress, on the hook that costs least there
//! (native XDP on a NIC whose driver runs it, tc elsewhere), and the scanner on tc egress
//! (tcx where the kernel has it, the clsact qdisc before 6.6).

use std::fmt;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc},
    util::KernelVersion,
};

use crate::ebpf::{EGRESS_PROGRAM, INGRESS_PROGRAM, INGRESS_TC_PROGRAM};

/// What `--xdp-mode` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpChoice {
    /// Native XDP on a physical NIC whose driver runs it, tc ingress otherwise.
    Auto,
    /// Native XDP (in the driver).
    Native,
    /// Generic XDP (in the stack, before GRO).
    Skb,
    /// No XDP: the guard runs as a tc ingress program, after GRO.
    Tc,
}

/// Where the guard ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressHook {
    XdpNative,
    XdpGeneric,
    Tc,
}

impl fmt::Display for IngressHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IngressHook::XdpNative => "native XDP",
            IngressHook::XdpGeneric => "generic XDP",
            IngressHook::Tc => "tc",
        })
    }
}

/// How an interface ended up attached, for the start-up line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub ingress: IngressHook,
    pub reason: String,
    pub tcx: bool,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tc = if self.tcx { "tcx" } else { "the clsact qdisc" };
        write!(
            f,
            "{}: guard on {} ingress ({}), scanner on egress via {tc}",
            self.interface, self.ingress, self.reason
        )
    }
}

pub fn check_interface(name: &str) -> Result<()> {
    let exists = std::ffi::CString::new(name)
        // SAFETY: a valid NUL-terminated name.
        .is_ok_and(|c_name| unsafe { libc::if_nametoindex(c_name.as_ptr()) } != 0);
    if !exists {
        bail!("there is no network interface named `{name}` (list them with `ip link`)");
    }
    Ok(())
}

/// What ethtool says drives an interface: (driver, bus). Virtual devices (veth, bridge,
/// ...) have no bus. Asked through a socket rather than /sys so that it answers for the
/// caller's network namespace.
fn driver_info(interface: &str) -> Option<(String, String)> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved: [u8; 12],
        counts: [u32; 5],
    }
    fn text(bytes: &[u8]) -> String {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }
    // SAFETY: all-zero is a valid DrvInfo and ifreq.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if interface.len() >= request.ifr_name.len() {
        return None;
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(interface.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket used for one ioctl, closed right after.
    let ok = unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return None;
        }
        let ok = libc::ioctl(socket, SIOCETHTOOL, &mut request) == 0;
        libc::close(socket);
        ok
    };
    ok.then(|| (text(&info.driver), text(&info.bus_info)))
}

pub fn attach(ebpf: &mut Ebpf, interface: &str, choice: XdpChoice) -> Result<Attachment> {
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if !tcx {
        // Before tcx, a tc program needs the clsact qdisc; it may already be there.
        if let Err(e) = tc::qdisc_add_clsact(interface) {
            let exists = matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
            if !exists {
                return Err(e).with_context(|| format!("adding the clsact qdisc to {interface}"));
            }
        }
    }
    let info = driver_info(interface);
    let physical_driver = match &info {
        Some((driver, bus)) if !bus.is_empty() => Some(driver.clone()),
        _ => None,
    };
    let xdp: &mut Xdp = ebpf
        .program_mut(INGRESS_PROGRAM)
        .context("no ingress program")?
        .try_into()?;
    let (ingress, reason) = match (choice, physical_driver) {
        (XdpChoice::Native, _) => {
            attach_xdp(xdp, interface, XdpMode::Driver)?;
            (IngressHook::XdpNative, "as requested".to_owned())
        }
        (XdpChoice::Skb, _) => {
            attach_xdp(xdp, interface, XdpMode::Skb)?;
            (IngressHook::XdpGeneric, "as requested".to_owned())
        }
        (XdpChoice::Tc, _) => (IngressHook::Tc, "as requested".to_owned()),
        (XdpChoice::Auto, None) => {
            let kind = info.map_or_else(|| "virtual".to_owned(), |(driver, _)| driver);
            (
                IngressHook::Tc,
                format!(
                    "auto: {interface} is a {kind} device; there tc costs least: it runs once per GRO-aggregated packet, generic XDP once per wire packet, and native XDP takes TSO away from the peer (half the upload throughput on a veth)"
                ),
            )
        }
        (XdpChoice::Auto, Some(driver)) => match xdp.attach(interface, XdpMode::Driver) {
            Ok(_) => (
                IngressHook::XdpNative,
                format!("auto: driver {driver} runs XDP natively"),
            ),
            Err(native_error) => (
                IngressHook::Tc,
                format!("auto: driver {driver} refused native XDP ({native_error})"),
            ),
        },
    };
    if ingress == IngressHook::Tc {
        attach_tc(ebpf, INGRESS_TC_PROGRAM, interface, TcAttachType::Ingress)?;
    }
    attach_tc(ebpf, EGRESS_PROGRAM, interface, TcAttachType::Egress)?;
    Ok(Attachment {
        interface: interface.to_owned(),
        ingress,
        reason,
        tcx,
    })
}

fn attach_tc(ebpf: &mut Ebpf, program: &str, interface: &str, at: TcAttachType) -> Result<()> {
    let classifier: &mut SchedClassifier = ebpf
        .program_mut(program)
        .with_context(|| format!("no program {program}"))?
        .try_into()?;
    classifier
        .attach(interface, at)
        .map(drop)
        .with_context(|| format!("attaching {program} to {interface} ({at:?})"))
}

fn attach_xdp(xdp: &mut Xdp, interface: &str, mode: XdpMode) -> Result<()> {
    xdp.attach(interface, mode).map(drop).with_context(|| {
        format!(
            "attaching XDP ({mode:?} mode) to {interface} failed; if another XDP program is attached there, detach it first (see `ip link show {interface}`)"
        )
    })
}
