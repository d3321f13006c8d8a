//! A layer-3 link between the lab's hosts, as a VPN joins them: a tun device in each
//! namespace (link type `none`: frames start at the IP header, as on WireGuard) and a
//! thread of this process carrying each packet one device's owner reads to the other
//! device, as a VPN daemon does after decrypting. Routes to the other host's lab addresses
//! (both families) go through the tunnel, so the lab's servers, clients and probes use it
//! unchanged, and nothing of theirs crosses the veth pair any more.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::fd::AsRawFd,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Result, ensure};

use crate::lab::{CLIENT_IP, CLIENT_IP6, Lab, SERVER_IP, SERVER_IP6, in_netns, run};

/// The tun device on the server's side, which ftp-loader guards.
pub const SERVER_TUN: &str = "tun-srv";
pub const CLIENT_TUN: &str = "tun-cli";

/// The two tun devices and the thread between them; dropping it stops the thread and
/// closes the devices, which removes them.
pub struct Tunnel {
    stop: Arc<AtomicBool>,
    relay: Option<JoinHandle<()>>,
}

/// Opens a tun device named `name` in the namespace `ns` (IFF_TUN: no Ethernet header,
/// IFF_NO_PI: no packet-information prefix either).
fn open_tun(ns: &str, name: &str) -> Result<File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    in_netns(ns, || {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        // SAFETY: all-zero is a valid ifreq (a name and a union of plain data).
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
        // SAFETY: TUNSETIFF reads the ifreq it is given.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
        ensure!(
            rc == 0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        Ok(file)
    })
}

/// A tun device in the namespace `ns` whose link type the kernel reports as `link_type`
/// (an ARPHRD_* number, set with TUNSETLINK as userspace stacks do): a real interface of a
/// link type this kernel may have no driver for. It goes when the file is closed.
pub fn tun_of_type(ns: &str, name: &str, link_type: u16) -> Result<File> {
    const TUNSETLINK: libc::c_ulong = 0x4004_54cd;
    let file = open_tun(ns, name)?;
    // SAFETY: TUNSETLINK takes the type as its integer argument.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETLINK, libc::c_ulong::from(link_type)) };
    ensure!(
        rc == 0,
        "TUNSETLINK {name}: {}",
        std::io::Error::last_os_error()
    );
    Ok(file)
}

impl Tunnel {
    /// Makes the tunnel and routes each host's lab addresses to the other through it.
    pub fn new(lab: &Lab) -> Result<Self> {
        let server = open_tun(&lab.server_ns, SERVER_TUN)?;
        let client = open_tun(&lab.client_ns, CLIENT_TUN)?;
        for (ns, device, to, to6, from, from6) in [
            (
                &lab.server_ns,
                SERVER_TUN,
                CLIENT_IP,
                CLIENT_IP6,
                SERVER_IP,
                SERVER_IP6,
            ),
            (
                &lab.client_ns,
                CLIENT_TUN,
                SERVER_IP,
                SERVER_IP6,
                CLIENT_IP,
                CLIENT_IP6,
            ),
        ] {
            let ip = |args: &[&str]| run(Command::new("ip").args(["-n", ns]).args(args));
            ip(&["link", "set", device, "up"])?;
            // More specific than the veth's /24 and /64: these win.
            ip(&[
                "route",
                "add",
                &format!("{to}/32"),
                "dev",
                device,
                "src",
                &from.to_string(),
            ])?;
            ip(&[
                "-6",
                "route",
                "add",
                &format!("{to6}/128"),
                "dev",
                device,
                "src",
                &from6.to_string(),
            ])?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let relay = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || relay(server, client, &stop))
        };
        Ok(Self {
            stop,
            relay: Some(relay),
        })
    }
}

/// Carries packets both ways until `stop`; polls so that it notices `stop` within 100 ms.
fn relay(mut a: File, mut b: File, stop: &AtomicBool) {
    let mut buffer = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds, passed with their count.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if ready <= 0 {
            continue;
        }
        for (index, fd) in fds.iter().enumerate() {
            if fd.revents & libc::POLLIN == 0 {
                continue;
            }
            let (from, to) = if index == 0 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            // A device gone (its namespace deleted) ends the relay; a packet the other
            // device refuses is lost, as on any link.
            let Ok(n) = from.read(&mut buffer) else {
                return;
            };
            let _ = to.write(&buffer[..n]);
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(relay) = self.relay.take() {
            let _ = relay.join();
        }
    }
}
