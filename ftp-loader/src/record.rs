//! What an instance attached where, since when and by which build: written by the loader
//! under /run/ftp-tracker, read by `status`, `unload` and by a loader that takes over.
//! bpffs holds only BPF objects, so this lives beside it; both are gone after a reboot.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

pub const RECORD_DIR: &str = "/run/ftp-tracker";

/// Where a program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    XdpNative,
    XdpGeneric,
    /// A tc program attached as a filter of the clsact qdisc.
    Clsact,
}

impl Hook {
    const ALL: [Hook; 3] = [Hook::XdpNative, Hook::XdpGeneric, Hook::Clsact];

    pub fn name(self) -> &'static str {
        match self {
            Hook::XdpNative => "native XDP",
            Hook::XdpGeneric => "generic XDP",
            Hook::Clsact => "tc",
        }
    }

    /// As `--xdp-mode` spells it: the metrics' label, which has no spaces.
    pub fn mode(self) -> &'static str {
        match self {
            Hook::XdpNative => "native",
            Hook::XdpGeneric => "skb",
            Hook::Clsact => "tc",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }

    pub fn is_xdp(self) -> bool {
        matches!(self, Hook::XdpNative | Hook::XdpGeneric)
    }
}

/// By name, as `status` shows it.
impl Serialize for Hook {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Hook {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::from_name(&name).ok_or_else(|| D::Error::custom(format!("no hook is named {name}")))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub ingress: Hook,
    pub egress: Hook,
    /// Unix time of the first attach; a loader that takes over keeps it.
    pub since: u64,
    /// False once the interface was deleted (until it comes back).
    pub present: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub pin_dir: PathBuf,
    /// The network namespace the interfaces belong to (its inode): interface names are
    /// only unique within one.
    pub netns: u64,
    pub pid: u32,
    pub version: String,
    /// Unix time the loader started.
    pub started: u64,
    pub interfaces: Vec<Interface>,
}

/// The loader's version and a digest of the programs it embeds (FNV-1a): two builds of one
/// version with different programs tell apart.
pub fn build() -> String {
    let digest = crate::ebpf::OBJECT
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!(
        "{}+programs.{:08x}",
        env!("CARGO_PKG_VERSION"),
        digest as u32
    )
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The inode of this process's network namespace.
pub fn current_netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
}

fn path_for(pin_dir: &Path) -> PathBuf {
    let flat: String = pin_dir
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    Path::new(RECORD_DIR).join(format!("{flat}.json"))
}

impl Record {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_owned(),
            netns: current_netns(),
            pid: std::process::id(),
            version: build(),
            started: now_unix(),
            interfaces: Vec::new(),
        }
    }

    /// The record of the instance with pin directory `pin_dir`, if one was written.
    pub fn read(pin_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path_for(pin_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every record on this machine.
    pub fn all() -> Vec<Self> {
        let Ok(entries) = std::fs::read_dir(RECORD_DIR) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect()
    }

    pub fn write(&self) -> Result<()> {
        std::fs::create_dir_all(RECORD_DIR).with_context(|| format!("creating {RECORD_DIR}"))?;
        let path = path_for(&self.pin_dir);
        // Written whole and renamed, so that a reader never sees half of it.
        let partial = path.with_extension("json.partial");
        let text = serde_json::to_string(self).context("serializing the record")?;
        std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn remove(pin_dir: &Path) {
        let _ = std::fs::remove_file(path_for(pin_dir));
    }

    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// Records `interface`, replacing an earlier entry of the same name.
    pub fn set(&mut self, interface: Interface) {
        self.interfaces.retain(|i| i.name != interface.name);
        self.interfaces.push(interface);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let mut record = Record::new(Path::new("/sys/fs/bpf/x"));
        record.set(Interface {
            name: "eth0".into(),
            ingress: Hook::XdpNative,
            egress: Hook::Clsact,
            since: 5,
            present: true,
        });
        let text = serde_json::to_string(&record).unwrap();
        assert!(
            text.contains(r#""ingress":"native XDP","egress":"tc""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), record);
        assert_eq!(
            path_for(Path::new("/sys/fs/bpf/ftp-tracker")),
            Path::new("/run/ftp-tracker/sys_fs_bpf_ftp-tracker.json")
        );
    }
}
