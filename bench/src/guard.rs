//! What guards the lab's server during a measurement: nothing, the classic iptables rule
//! set with the kernel's FTP helper, or ftp-tracker in one of its ingress modes.

use std::{fmt, process::Command};

use anyhow::Result;
use ftp_lab::{
    gateway::FTP_HELPER_RULE,
    lab::{Lab, run},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    None,
    /// raw PREROUTING `-j CT --helper ftp`, INPUT: ESTABLISHED,RELATED and port 21
    /// accepted, everything else dropped (iptables and ip6tables alike).
    KernelHelper,
    /// ftp-loader with `--xdp-mode` set to this ("skb", "native" or "auto").
    Tracker(&'static str),
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guard::None => write!(f, "no filter"),
            Guard::KernelHelper => write!(f, "iptables + kernel helper"),
            Guard::Tracker(mode) => write!(f, "ftp-tracker (--xdp-mode {mode})"),
        }
    }
}

const CLASSIC_RULES: &[&[&str]] = &[
    FTP_HELPER_RULE,
    &[
        "-A",
        "INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ],
    &["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
    &["-A", "INPUT", "-p", "tcp", "--dport", "21", "-j", "ACCEPT"],
    &["-A", "INPUT", "-p", "ipv6-icmp", "-j", "ACCEPT"],
    &["-P", "INPUT", "DROP"],
];

impl Guard {
    /// Puts the guard in front of the lab's server; `remove` takes it away again.
    pub fn install(self, lab: &mut Lab) -> Result<()> {
        match self {
            Guard::None => Ok(()),
            Guard::KernelHelper => {
                for tool in ["iptables", "ip6tables"] {
                    for rule in CLASSIC_RULES {
                        if tool == "iptables" && rule.contains(&"ipv6-icmp") {
                            continue;
                        }
                        run(lab.server(tool).args(*rule))?;
                    }
                }
                Ok(())
            }
            Guard::Tracker(mode) => lab.start_loader(&["--xdp-mode", mode]),
        }
    }

    pub fn remove(self, lab: &mut Lab) -> Result<()> {
        match self {
            Guard::None => Ok(()),
            Guard::KernelHelper => {
                for tool in ["iptables", "ip6tables"] {
                    for table in [
                        &["-t", "raw", "-F"][..],
                        &["-F"],
                        &["-P", "INPUT", "ACCEPT"],
                    ] {
                        run(lab.server(tool).args(table))?;
                    }
                }
                // Connections the helper tracked would otherwise outlive the rules.
                let _ = Command::new("ip")
                    .args(["netns", "exec", &lab.server_ns, "conntrack", "-F"])
                    .output();
                Ok(())
            }
            Guard::Tracker(_) => lab.stop_loader().map(drop),
        }
    }
}
