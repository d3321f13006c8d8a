//! What `ftp-loader status` reports: the instance's record, whether its loader is alive and
//! whether each interface still exists. One typed report, shown as JSON (`--json`, serde) or
//! as text made of the same fields.

use std::path::Path;

use serde::Serialize;

use crate::{
    monitor::Mode,
    record::{Interface, Record},
};

fn mode_name<S: serde::Serializer>(mode: &Option<Mode>, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_some(&mode.map(Mode::name))
}

/// An interface of the record, and whether an interface of that name exists now.
#[derive(Debug, Serialize)]
pub struct InterfaceStatus<'a> {
    #[serde(flatten)]
    pub interface: &'a Interface,
    pub exists: bool,
}

/// The report: the record's fields, `alive`, and the interfaces with `exists`.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub pin_dir: &'a Path,
    pub netns: u64,
    pub pid: u32,
    pub version: &'a str,
    /// Unix time the loader started.
    pub started: u64,
    /// Whether a loader process holds the pin directory.
    pub alive: bool,
    /// Whether the programs enforce or only monitor, from the pinned CONFIG (which a
    /// reload rewrites); None when this user cannot read it.
    #[serde(serialize_with = "mode_name")]
    pub mode: Option<Mode>,
    pub interfaces: Vec<InterfaceStatus<'a>>,
}

impl<'a> Status<'a> {
    /// `exists` says whether an interface of that name exists now.
    pub fn new(
        record: &'a Record,
        alive: bool,
        mode: Option<Mode>,
        exists: impl Fn(&str) -> bool,
    ) -> Self {
        Self {
            pin_dir: &record.pin_dir,
            netns: record.netns,
            pid: record.pid,
            version: &record.version,
            started: record.started,
            alive,
            mode,
            interfaces: record
                .interfaces
                .iter()
                .map(|interface| InterfaceStatus {
                    interface,
                    exists: exists(&interface.name),
                })
                .collect(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("strings, integers and booleans serialize")
    }

    /// The report as lines of text, at Unix time `now`.
    pub fn to_text(&self, now: u64) -> String {
        let mut text = if self.alive {
            format!(
                "ftp-loader {} (pid {}) running for {}s with pin directory {}\n",
                self.version,
                self.pid,
                now.saturating_sub(self.started),
                self.pin_dir.display()
            )
        } else {
            format!(
                "no loader process is alive for pin directory {} (the last was ftp-loader {}, pid {}); what it attached stays attached and keeps guarding\n",
                self.pin_dir.display(),
                self.version,
                self.pid
            )
        };
        if let Some(mode) = self.mode {
            text += mode.describe();
            text += "\n";
        }
        for InterfaceStatus {
            interface: i,
            exists,
        } in &self.interfaces
        {
            text += &if i.present && *exists {
                format!(
                    "{}: guard on {} ingress, scanner on egress via {}, attached for {}s\n",
                    i.name,
                    i.ingress.name(),
                    i.egress.name(),
                    now.saturating_sub(i.since)
                )
            } else {
                format!(
                    "{}: deleted; nothing guards it until it comes back and a loader attaches again\n",
                    i.name
                )
            };
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Hook;

    /// The JSON keeps the shape scripts read (the record's fields, `alive`, and each
    /// interface's with `exists`), and the text says the same.
    #[test]
    fn json_and_text_come_from_one_report() {
        let mut record = Record::new(Path::new("/sys/fs/bpf/x"));
        record.started = 100;
        for (name, present) in [("eth0", true), ("eth1", false)] {
            record.set(Interface {
                name: name.into(),
                ingress: Hook::XdpNative,
                egress: Hook::Clsact,
                since: 110,
                present,
            });
        }
        let status = Status::new(&record, true, Some(Mode::Monitor), |name| name == "eth0");
        let json: serde_json::Value = serde_json::from_str(&status.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "pin_dir": "/sys/fs/bpf/x",
                "netns": record.netns,
                "pid": record.pid,
                "version": record.version,
                "started": 100,
                "alive": true,
                "mode": "monitor",
                "interfaces": [
                    {"name": "eth0", "ingress": "native XDP", "egress": "tc", "since": 110, "present": true, "exists": true},
                    {"name": "eth1", "ingress": "native XDP", "egress": "tc", "since": 110, "present": false, "exists": false},
                ],
            })
        );
        assert_eq!(
            status.to_text(130),
            format!(
                "ftp-loader {} (pid {}) running for 30s with pin directory /sys/fs/bpf/x\n{}\neth0: guard on native XDP ingress, scanner on egress via tc, attached for 20s\neth1: deleted; nothing guards it until it comes back and a loader attaches again\n",
                record.version,
                record.pid,
                Mode::Monitor.describe()
            )
        );
    }
}
