//! Attaching to interfaces: the guard on ingress, on the hook that costs least there
//! (native XDP on a NIC whose driver runs it, tc elsewhere), and the scanner on tc egress.

use std::{
    fmt, io,
    os::fd::{AsFd, AsRawFd, RawFd},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{
        ProgramError, TcAttachType,
        links::Link,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
};

use ftp_ebpf_common::contract::{self, LinkLayer};

use crate::{
    ebpf::{self, NatRole},
    link,
    record::{Hook, Interface, now_unix},
};

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
    // SAFETY: all-zero is a valid DrvInfo (plain integers and byte arrays).
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: all-zero is a valid ifreq (a name and a union of plain data).
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

/// The clsact filters of an instance sit at this fixed priority and handle, so that a
/// loader taking over finds its predecessor's filter and replaces it in place, and
/// `unload` finds it after a crash.
const CLSACT_PRIORITY: u16 = 21;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 0xf7f);

/// An interface as attached by this loader.
///
/// Every attachment is one that outlives the process: a clsact filter, or XDP set through
/// rtnetlink. (tcx and XDP links would go with the loader unless pinned, and pinning a
/// link is refused on some kernels, this project's own machines among them.) A killed
/// loader therefore leaves the guard working.
pub struct Attached {
    pub record: Interface,
    pub reason: String,
    /// Whether the programs replaced those of a previous instance in place.
    pub took_over: bool,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: guard on {} ingress ({}), scanner on egress via {}",
            self.record.name,
            self.record.ingress.name(),
            self.reason,
            self.record.egress.name()
        )?;
        if self.took_over {
            f.write_str("; the previous instance's programs were replaced in place")?;
        }
        Ok(())
    }
}

impl Attached {
    /// Takes the programs off the interface.
    pub fn detach(&self) -> Result<()> {
        detach(&self.record)
    }
}

/// Attaches the programs to `interface`. `previous` is what the last instance with this
/// pin directory attached there: where the hook is the same, its program is replaced in
/// place (no moment unguarded); where it differs, the new hook is attached before the old
/// one is removed. `nat`: what the interface is to a NAT gateway.
pub fn attach(
    ebpf: &mut Ebpf,
    interface: &str,
    choice: XdpChoice,
    previous: Option<&Interface>,
    nat: NatRole,
) -> Result<Attached> {
    let link = link::link(interface)?;
    let (programs, nat_reason) = match nat {
        NatRole::None => (Programs::of(link), None),
        NatRole::Inside(public) => {
            gateway(interface, choice, link, "--nat-inside")?;
            let c_name = std::ffi::CString::new(interface)?;
            // SAFETY: a valid NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
            let value = ftp_ebpf_common::nat::NatInside {
                public: ftp_ebpf_common::addr::ipv4(public.octets()),
            };
            contract::NAT_INSIDE
                .of_mut(ebpf)?
                .insert(index, value, 0)
                .with_context(|| format!("writing {}", contract::NAT_INSIDE))?;
            (
                Programs::NAT,
                Some(format!(
                    "--nat-inside: rewrites what its hosts announce to {public}, which takes tc"
                )),
            )
        }
        NatRole::Outside => {
            gateway(interface, choice, link, "a NAT gateway's outside interface")?;
            (
                Programs::NAT,
                Some(
                    "NAT gateway: translates the data connections its --nat-inside hosts announced, which takes tc"
                        .to_owned(),
                ),
            )
        }
    };
    let (wanted, mut reason, fall_back) = match nat_reason {
        None => choose(interface, choice, link)?,
        Some(reason) => (Hook::Clsact, reason, false),
    };
    // The tc programs need the clsact qdisc; it may already be there.
    if let Err(e) = tc::qdisc_add_clsact(interface) {
        let exists =
            matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(e).with_context(|| format!("adding the clsact qdisc to {interface}"));
        }
    }
    let previous = previous.filter(|p| p.present);
    let old_ingress = previous.map(|p| p.ingress);
    let tc_ingress = |ebpf: &mut Ebpf| {
        attach_tc(
            ebpf,
            interface,
            TcAttachType::Ingress,
            old_ingress,
            programs,
        )
    };
    let ingress = if wanted.is_xdp() {
        match attach_xdp(ebpf, interface, wanted, old_ingress) {
            Ok(()) => {
                if fall_back {
                    reason = format!("auto: {reason} runs XDP natively");
                }
                wanted
            }
            Err(error) if fall_back => {
                reason = format!("auto: {reason} refused native XDP ({error:#})");
                tc_ingress(ebpf)?;
                Hook::Clsact
            }
            Err(error) => return Err(error),
        }
    } else {
        tc_ingress(ebpf)?;
        Hook::Clsact
    };
    // The old ingress hook goes only once the new one guards.
    if let Some(old) = old_ingress.filter(|&old| old != ingress) {
        detach_ingress(interface, old)?;
    }
    let old_egress = previous.map(|p| p.egress);
    attach_tc(ebpf, interface, TcAttachType::Egress, old_egress, programs)?;
    Ok(Attached {
        record: Interface {
            name: interface.to_owned(),
            ingress,
            egress: Hook::Clsact,
            since: previous.map_or_else(now_unix, |p| p.since),
            present: true,
        },
        reason,
        took_over: old_ingress == Some(ingress) && old_egress == Some(Hook::Clsact),
    })
}

/// The ingress hook `choice` asks for on `interface`: (hook, why, whether to fall back to
/// tc if native XDP is refused). For `auto` on a NIC, "why" names the driver.
fn choose(interface: &str, choice: XdpChoice, link: LinkLayer) -> Result<(Hook, String, bool)> {
    let requested = "as requested".to_owned();
    if link == LinkLayer::Ip {
        // The XDP program is built for Ethernet frames only; layer-3 devices have tc
        // variants (contract::LinkLayer), which cost one program pair to verify, not two.
        let why = format!(
            "{interface} has no Ethernet header (its frames start at the IP header), where ftp-tracker guards only on tc"
        );
        return match choice {
            XdpChoice::Auto => Ok((Hook::Clsact, format!("auto: {why}"), false)),
            XdpChoice::Tc => Ok((Hook::Clsact, requested, false)),
            XdpChoice::Native | XdpChoice::Skb => {
                let asked = clap::ValueEnum::to_possible_value(&choice)
                    .map(|value| value.get_name().to_owned())
                    .unwrap_or_default();
                bail!("{why}: drop --xdp-mode {asked}, or give --xdp-mode tc")
            }
        };
    }
    let info = driver_info(interface);
    let physical_driver = match &info {
        Some((driver, bus)) if !bus.is_empty() => Some(driver.clone()),
        _ => None,
    };
    Ok(match (choice, physical_driver) {
        (XdpChoice::Native, _) => (Hook::XdpNative, requested, false),
        (XdpChoice::Skb, _) => (Hook::XdpGeneric, requested, false),
        (XdpChoice::Tc, _) => (Hook::Clsact, requested, false),
        (XdpChoice::Auto, None) => {
            let kind = info.map_or_else(|| "virtual".to_owned(), |(driver, _)| driver);
            (
                Hook::Clsact,
                format!(
                    "auto: {interface} is a {kind} device; there tc costs least: it runs once per GRO-aggregated packet, generic XDP once per wire packet, and native XDP takes TSO away from the peer (half the upload throughput on a veth)"
                ),
                false,
            )
        }
        (XdpChoice::Auto, Some(driver)) => (Hook::XdpNative, format!("driver {driver}"), true),
    })
}

fn xdp_mode(hook: Hook) -> XdpMode {
    if hook == Hook::XdpNative {
        XdpMode::Native
    } else {
        XdpMode::Generic
    }
}

fn attach_xdp(ebpf: &mut Ebpf, interface: &str, hook: Hook, old: Option<Hook>) -> Result<()> {
    let xdp = contract::ingress_mut(ebpf)?;
    let program = xdp.fd()?.as_fd().as_raw_fd();
    let replace = match old {
        Some(old) if old == hook => true,
        // An interface runs one XDP program at most: one of another mode must go first.
        Some(old) if old.is_xdp() => {
            set_xdp(interface, None, xdp_mode(old), true)?;
            false
        }
        _ => false,
    };
    set_xdp(interface, Some(program), xdp_mode(hook), replace).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EEXIST) {
            anyhow::anyhow!(
                "{interface} already runs another XDP program: detach it first (see `ip link show {interface}`), or use --xdp-mode tc"
            )
        } else {
            anyhow::Error::from(e)
                .context(format!("attaching XDP ({} mode) to {interface}", hook.name()))
        }
    })
}

/// The tc programs an interface gets.
#[derive(Clone, Copy)]
struct Programs {
    ingress: &'static str,
    egress: &'static str,
}

impl Programs {
    const NAT: Self = Self {
        ingress: contract::INGRESS_NAT_PROGRAM,
        egress: contract::EGRESS_NAT_PROGRAM,
    };

    fn of(link: LinkLayer) -> Self {
        Self {
            ingress: link.ingress_tc_program(),
            egress: link.egress_program(),
        }
    }
}

/// Checks that `interface` can take part in a NAT gateway (`what` it would be): the
/// gateway's programs run on tc, for Ethernet frames.
fn gateway(interface: &str, choice: XdpChoice, link: LinkLayer, what: &str) -> Result<()> {
    if link != LinkLayer::Ethernet {
        bail!(
            "{interface} ({what}) has no Ethernet header, and ftp-tracker's NAT gateway runs only on Ethernet interfaces: guard an Ethernet interface there, or drop --nat-inside"
        );
    }
    if matches!(choice, XdpChoice::Native | XdpChoice::Skb) {
        bail!(
            "{interface} ({what}) runs the NAT gateway's programs, on tc, not XDP: give --xdp-mode auto or tc"
        );
    }
    Ok(())
}

fn attach_tc(
    ebpf: &mut Ebpf,
    interface: &str,
    at: TcAttachType,
    old: Option<Hook>,
    programs: Programs,
) -> Result<()> {
    let program = if at == TcAttachType::Egress {
        programs.egress
    } else {
        programs.ingress
    };
    ebpf::load_program(ebpf, program)?;
    let direction = if at == TcAttachType::Egress {
        "egress"
    } else {
        "ingress"
    };
    let classifier = contract::classifier_mut(ebpf, program)?;
    // The predecessor's filter is replaced in place. It may have gone meanwhile (removed by
    // hand): then it is created below.
    if old == Some(Hook::Clsact) {
        let replaced =
            SchedClassifierLink::attached(interface, at, CLSACT_PRIORITY, CLSACT_HANDLE, None)
                .ok()
                .and_then(|link| classifier.attach_to_link(link).ok());
        if let Some(id) = replaced {
            // Dropping the handle would delete the filter: it is meant to outlive us.
            std::mem::forget(classifier.take_link(id)?);
            return Ok(());
        }
    }
    let options = TcAttachOptions::Netlink(NlOptions {
        priority: CLSACT_PRIORITY,
        handle: CLSACT_HANDLE,
        ..NlOptions::default()
    });
    let id = classifier
        .attach_with_options(interface, at, options)
        .map_err(|e| {
            let exists = matches!(&e, ProgramError::TcError(tc::TcError::NetlinkError(n)) if n.raw_os_error() == Some(libc::EEXIST));
            if exists {
                anyhow::anyhow!(
                    "{interface} is already guarded by another ftp-tracker instance (its filter is on the clsact {direction} hook): stop it, or remove it with `ftp-loader unload {interface}` and its --pin-dir"
                )
            } else {
                anyhow::Error::from(e).context(format!(
                    "attaching {program} to {interface} ({direction})"
                ))
            }
        })?;
    std::mem::forget(classifier.take_link(id)?);
    Ok(())
}

fn detach_filter(interface: &str, at: TcAttachType) -> Result<()> {
    let filter =
        SchedClassifierLink::attached(interface, at, CLSACT_PRIORITY, CLSACT_HANDLE, None)?;
    filter
        .detach()
        .with_context(|| format!("removing the tc filter from {interface}"))
}

fn detach_ingress(interface: &str, hook: Hook) -> Result<()> {
    if hook.is_xdp() {
        set_xdp(interface, None, xdp_mode(hook), true)
            .with_context(|| format!("removing XDP from {interface}"))
    } else {
        detach_filter(interface, TcAttachType::Ingress)
    }
}

/// Takes an instance's programs off `interface` (its loader stopping, or `ftp-loader
/// unload` after it is gone).
pub fn detach(interface: &Interface) -> Result<()> {
    detach_ingress(&interface.name, interface.ingress)?;
    detach_filter(&interface.name, TcAttachType::Egress)
}

/// XDP mode for rtnetlink.
#[derive(Clone, Copy)]
enum XdpMode {
    Native,
    Generic,
}

/// Sets (or with `None` removes) the XDP program of `interface` through rtnetlink, where
/// the attachment belongs to the interface rather than to a descriptor of ours. Unless
/// `replace`, it fails when a program is already attached.
fn set_xdp(
    interface: &str,
    program: Option<RawFd>,
    mode: XdpMode,
    replace: bool,
) -> io::Result<()> {
    const RTM_SETLINK: u16 = 19;
    const IFLA_XDP: u16 = 43;
    const NLA_F_NESTED: u16 = 1 << 15;
    const IFLA_XDP_FD: u16 = 1;
    const IFLA_XDP_FLAGS: u16 = 3;
    const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
    const XDP_FLAGS_SKB_MODE: u32 = 2;
    const XDP_FLAGS_DRV_MODE: u32 = 4;
    let index = std::ffi::CString::new(interface)
        .ok()
        // SAFETY: a valid NUL-terminated name.
        .map(|name| unsafe { libc::if_nametoindex(name.as_ptr()) })
        .filter(|&i| i != 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
    let mut flags = match mode {
        XdpMode::Native => XDP_FLAGS_DRV_MODE,
        XdpMode::Generic => XDP_FLAGS_SKB_MODE,
    };
    if !replace && program.is_some() {
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST;
    }
    let mut attributes = Vec::new();
    attribute(
        &mut attributes,
        IFLA_XDP_FD,
        &program.unwrap_or(-1).to_ne_bytes(),
    );
    attribute(&mut attributes, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    let mut body = vec![0u8; 16]; // struct ifinfomsg, AF_UNSPEC
    body[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    attribute(&mut body, IFLA_XDP | NLA_F_NESTED, &attributes);
    crate::watch::request(RTM_SETLINK, &body)
}

/// Appends one netlink attribute, padded to 4 bytes.
fn attribute(buffer: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buffer.extend(((4 + value.len()) as u16).to_ne_bytes());
    buffer.extend(kind.to_ne_bytes());
    buffer.extend(value);
    buffer.resize(buffer.len().next_multiple_of(4), 0);
}
