//! The embedded kernel object and how it is loaded with an instance's settings.

use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{ProgramError, SchedClassifier, Xdp},
};
use ftp_ebpf_common::{
    policy::{PortInfo, PortPlan},
    share::DEFAULT_MAX_PER_CLIENT,
};

use crate::{
    checks,
    pins::{PinDir, STATE_MAP_NAMES},
};

/// The compiled programs, built by build.rs; 8-byte aligned as the ELF parser wants.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ftp-ebpf.o"));

pub const INGRESS_PROGRAM: &str = "ftp_ingress";
/// The same guard as a tc program, for interfaces where XDP costs more.
pub const INGRESS_TC_PROGRAM: &str = "ftp_ingress_tc";
pub const EGRESS_PROGRAM: &str = "ftp_egress";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Inclusive range of guarded ports.
    pub data_ports: (u16, u16),
    pub control_ports: Vec<u16>,
    /// Listeners inside the guarded range that anyone may connect to.
    pub allowed_ports: Vec<u16>,
    pub expect_timeout_secs: u64,
    pub flow_idle_timeout_secs: u64,
    pub max_expectations: u32,
    pub max_flows: u32,
    pub max_controls: u32,
    /// Expectations one control connection may hold (1..=MAX_EXPECTED); the newest
    /// displaces the oldest.
    pub max_expected: u8,
    /// Expectations one client address (an IPv6 client's /64) may hold, so that one client
    /// cannot fill the expectation table for everyone.
    pub max_per_client: u32,
    /// Accept announced addresses other than the announcer's own.
    pub loose: bool,
    /// Lowest data port an announcement may name.
    pub min_data_port: u16,
    /// Lets the programs' debug-level log lines through.
    pub verbose: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_ports: (1024, 65535),
            control_ports: vec![21],
            allowed_ports: Vec::new(),
            expect_timeout_secs: 300,
            flow_idle_timeout_secs: 300,
            max_expectations: 65536,
            max_flows: 262144,
            max_controls: 65536,
            max_expected: 1,
            max_per_client: DEFAULT_MAX_PER_CLIENT,
            loose: false,
            min_data_port: 1024,
            verbose: false,
        }
    }
}

impl Settings {
    /// The tables an option sizes: (map, option, entries).
    pub fn table_sizes(&self) -> [(&'static str, &'static str, u32); 4] {
        let expectations = "--max-expectations";
        [
            ("EXPECTATIONS", expectations, self.max_expectations),
            // Each client that holds a share holds an expectation, at least for a moment:
            // there are never more shares in use than expectations.
            ("CLIENTS", expectations, self.max_expectations),
            ("FLOWS", "--max-flows", self.max_flows),
            ("CONTROLS", "--max-controls", self.max_controls),
        ]
    }

    pub fn port_plan(&self) -> PortPlan<'_> {
        PortPlan {
            data_ports: self.data_ports,
            control_ports: &self.control_ports,
            allowed_ports: &self.allowed_ports,
        }
    }
}

/// Loads the maps and the programs into the kernel (through the verifier) without
/// attaching anything; the tables are this process's own.
pub fn load(settings: &Settings) -> Result<Ebpf> {
    load_with(settings, None)
}

/// As `load`, with the tables pinned in `pins`: those a previous instance left there (and
/// `PinDir::prepare` found fitting) are reused as they are.
pub fn load_pinned(settings: &Settings, pins: &PinDir) -> Result<Ebpf> {
    load_with(settings, Some(pins))
}

fn load_with(settings: &Settings, pins: Option<&PinDir>) -> Result<Ebpf> {
    checks::settings(settings)?;
    let timeout_ns = settings.expect_timeout_secs.saturating_mul(1_000_000_000);
    let flow_idle_ns = settings
        .flow_idle_timeout_secs
        .saturating_mul(1_000_000_000);
    let loose = u8::from(settings.loose);
    // aya-log's levels: 3 = info, 4 = debug.
    let log_level: u8 = if settings.verbose { 4 } else { 3 };
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, std::path::PathBuf)> = pins
        .map(|pins| {
            STATE_MAP_NAMES
                .iter()
                .map(|&name| (name, pins.map_path(name)))
                .collect()
        })
        .unwrap_or_default();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .override_global("EXPECT_TIMEOUT_NS", &timeout_ns, true)
        .override_global("FLOW_IDLE_TIMEOUT_NS", &flow_idle_ns, true)
        .override_global("LOOSE", &loose, true)
        .override_global("MIN_DATA_PORT", &settings.min_data_port, true)
        .override_global("MAX_EXPECTED_PER_CONTROL", &settings.max_expected, true)
        .override_global("MAX_PER_CLIENT", &settings.max_per_client, true)
        .override_global("AYA_LOG_LEVEL", &log_level, false);
    for (map, _, entries) in settings.table_sizes() {
        loader.map_max_entries(map, entries);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|error| checks::map_creation(error, settings))?;

    let mut ports: Array<_, PortInfo> = Array::try_from(
        ebpf.map_mut("PORTS")
            .context("the object has no PORTS map")?,
    )?;
    let plan = settings.port_plan();
    for port in 0..=u16::MAX {
        // A table inherited from a previous instance keeps when each port was last
        // announced and admitted: its expectations depend on them. A new table is all
        // zeros; an initialised entry holds NEVER or a time since boot.
        let class = plan.class(port);
        let info = match ports.get(&u32::from(port), 0) {
            Ok(old) if old.announced != 0 => PortInfo {
                class: class as u8,
                ..old
            },
            _ => PortInfo::new(class),
        };
        ports.set(u32::from(port), info, 0)?;
    }

    let ingress: &mut Xdp = program(&mut ebpf, INGRESS_PROGRAM)?.try_into()?;
    verified(INGRESS_PROGRAM, ingress.load())?;
    for name in [INGRESS_TC_PROGRAM, EGRESS_PROGRAM] {
        let classifier: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
        verified(name, classifier.load())?;
    }
    Ok(ebpf)
}

/// A verifier's refusal in one sentence: its log runs to thousands of lines, so it goes to
/// a file the sentence names.
fn verified(name: &str, loaded: Result<(), ProgramError>) -> Result<()> {
    let Err(ProgramError::LoadError {
        io_error,
        verifier_log,
    }) = loaded
    else {
        return loaded.with_context(|| format!("loading program {name} failed"));
    };
    bail!(
        "{}",
        refusal(
            name,
            &io_error,
            &verifier_log.to_string(),
            &std::env::temp_dir()
        )
    )
}

/// The sentence for program `name` refused with `error`, after writing `log` into `dir`.
fn refusal(name: &str, error: &std::io::Error, log: &str, dir: &Path) -> String {
    let kernel = kernel_release();
    let path = dir.join(format!("ftp-tracker-verifier-{name}.log"));
    let refused = format!("the verifier of kernel {kernel} refused program {name} ({error})");
    match std::fs::write(&path, log) {
        Ok(()) => format!("{refused}; its log is in {}", path.display()),
        Err(e) => format!(
            "{refused}; its log could not be written to {} ({e})",
            path.display()
        ),
    }
}

/// What `uname -r` prints.
fn kernel_release() -> String {
    // SAFETY: utsname is plain data, filled in by uname.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid utsname to write to.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "(unknown release)".to_owned();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("the object has no program {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_one_sentence_naming_program_kernel_and_log_file() {
        let dir = std::env::temp_dir().join(format!("ftp-loader-refusal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = "0: R1=ctx() R10=fp0\nprocessed 1000001 insns (limit 1000000)\n";
        let e2big = std::io::Error::from_raw_os_error(libc::E2BIG);
        let sentence = refusal("ftp_ingress", &e2big, log, &dir);
        let path = dir.join("ftp-tracker-verifier-ftp_ingress.log");
        assert_eq!(
            sentence,
            format!(
                "the verifier of kernel {} refused program ftp_ingress ({e2big}); its log is in {}",
                kernel_release(),
                path.display()
            )
        );
        assert!(!kernel_release().is_empty() && !kernel_release().contains('('));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), log);

        let missing = dir.join("missing");
        let sentence = refusal("ftp_egress", &e2big, log, &missing);
        assert!(
            sentence.ends_with(&format!(
                "its log could not be written to {} (No such file or directory (os error 2))",
                missing
                    .join("ftp-tracker-verifier-ftp_egress.log")
                    .display()
            )),
            "{sentence}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
