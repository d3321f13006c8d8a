//! Mistakes an admin can make, caught before anything is loaded or attached, and the
//! kernel's refusals traced back to the option or permission behind them: each becomes one
//! sentence naming the fix, never a raw OS error.

use std::{
    ffi::CString,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow, bail};
use aya::{EbpfError, maps::MapError};
use aya_obj::generated::{BPF_F_NO_PREALLOC, bpf_attr, bpf_cmd, bpf_map_type};
use ftp_ebpf_common::contract::{
    ALLOW_FROM_ENTRIES, MAX_EXPECT_TIMEOUT_SECS, MAX_EXPECTED, PUBLIC_ADDRS_ENTRIES,
};

use crate::{
    ebpf::{OBJECT, Settings},
    link,
    record::RECORD_DIR,
};

/// A capability the kernel checks on the way: its number and name.
type Capability = (u32, &'static str);

/// Any bpf() use once unprivileged BPF is disabled: creating maps, loading programs,
/// opening pins (`bpf_capable`).
const CAP_BPF: Capability = (39, "CAP_BPF");
/// Loading XDP and tc programs at all, and attaching them to interfaces.
const CAP_NET_ADMIN: Capability = (12, "CAP_NET_ADMIN");
/// Without it (`bpf_allow_ptr_leaks`), the verifier refuses the programs' arithmetic on
/// packet pointers ("pointer arithmetic with it prohibited for !root").
const CAP_PERFMON: Capability = (38, "CAP_PERFMON");
/// The kernel lets it stand in for CAP_BPF and CAP_PERFMON (as before 5.8).
const CAP_SYS_ADMIN: u32 = 21;

/// What a command does to the kernel, and so which capabilities it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Load, attach and pin (`ftp-loader INTERFACE...`).
    Run,
    /// Read the maps a running instance pinned (`stats`, `expectations`, `flows`).
    Read,
    /// Detach what an instance left attached, through rtnetlink (`unload`).
    Detach,
}

/// The capabilities in this process's effective set, or None if the kernel would not say
/// (then the kernel's own refusal has to speak).
fn effective_capabilities() -> Option<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: version 3 takes two Data structs, which `data` holds.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    (rc == 0).then(|| u64::from(data[0].effective) | u64::from(data[1].effective) << 32)
}

/// Whether every user may use bpf() for what `Task::Read` does
/// (kernel.unprivileged_bpf_disabled = 0).
fn unprivileged_bpf_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .is_ok_and(|value| value.trim() == "0")
}

/// Refuses to go on without the capabilities `task` needs, naming the missing ones and how
/// to grant them.
pub fn capabilities(task: Task) -> Result<()> {
    let Some(effective) = effective_capabilities() else {
        return Ok(());
    };
    let has = |number: u32| effective & (1 << number) != 0;
    // Each with what it is needed for here.
    let needed: &[(Capability, &str)] = match task {
        Task::Run => &[
            (CAP_BPF, "to create maps and load programs"),
            (CAP_NET_ADMIN, "to attach to interfaces"),
            (
                CAP_PERFMON,
                "for the verifier to accept the programs' packet-pointer arithmetic",
            ),
        ],
        Task::Read if unprivileged_bpf_allowed() => &[],
        Task::Read => &[(CAP_BPF, "to open the running instance's maps")],
        Task::Detach => &[(CAP_NET_ADMIN, "to detach from interfaces")],
    };
    let missing: Vec<String> = needed
        .iter()
        .filter(|((number, _), _)| {
            let stand_in = *number != CAP_NET_ADMIN.0 && has(CAP_SYS_ADMIN);
            !has(*number) && !stand_in
        })
        .map(|((_, name), needed_for)| format!("{name} ({needed_for})"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = needed.iter().map(|((_, name), _)| *name).collect();
    bail!(
        "this process lacks {}: run it with sudo, or grant it {} (in a systemd unit: AmbientCapabilities={})",
        missing.join(" and "),
        names.join(", "),
        names.join(" ")
    );
}

/// The user this process acts as, by name if it has one.
fn user_name(uid: libc::uid_t) -> String {
    // SAFETY: getpwuid returns a pointer to a static record or null; it is read before any
    // other call could overwrite it.
    unsafe {
        let entry = libc::getpwuid(uid);
        if entry.is_null() {
            uid.to_string()
        } else {
            std::ffi::CStr::from_ptr((*entry).pw_name)
                .to_string_lossy()
                .into_owned()
        }
    }
}

fn effective_user() -> String {
    // SAFETY: geteuid has no preconditions.
    user_name(unsafe { libc::geteuid() })
}

/// Whether this process, with its effective ids and capabilities, may access `path` in
/// `mode` (R_OK, W_OK, X_OK); Err(errno) if not.
fn access(path: &Path, mode: libc::c_int) -> Result<(), i32> {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return Err(libc::EINVAL);
    };
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c_path.as_ptr(), mode, libc::AT_EACCESS) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// The first directory on the way to `path` this process may not pass through.
fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    ancestors
        .into_iter()
        .find(|dir| access(dir, libc::X_OK) == Err(libc::EACCES))
        .map(Path::to_owned)
}

/// The directories a running instance writes, the pin directory and the record
/// directory, must be ones this user can create (or has) and write to. Checked up front:
/// the kernel's refusal would come only after the programs were loaded or attached.
pub fn dirs_writable(pin_dir: &Path) -> Result<()> {
    writable(pin_dir, "its pins", "once the BPF filesystem is mounted")?;
    let record_dir = Path::new(RECORD_DIR);
    let unit = format!(
        "in a systemd unit: RuntimeDirectory={}",
        record_dir.file_name().unwrap_or_default().to_string_lossy()
    );
    writable(record_dir, "its record of what it attached", &unit)
}

fn writable(dir: &Path, what: &str, note: &str) -> Result<()> {
    let user = effective_user();
    let create = format!("sudo install -d -o {user} {}", dir.display());
    if let Some(closed) = closed_ancestor(dir) {
        bail!(
            "user {user} cannot reach {}, where it keeps {what}, because {} is closed to it: open the way with `sudo chmod o+x {}` and create the directory for it with `{create}`",
            dir.display(),
            closed.display(),
            closed.display()
        );
    }
    let existing = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    if access(existing, libc::W_OK | libc::X_OK).is_err() {
        bail!(
            "user {user} may not write to {}, so it cannot keep {what} in {}: create that directory for it with `{create}` ({note})",
            existing.display(),
            dir.display()
        );
    }
    Ok(())
}

/// The pin `map` of a running instance must be one this user may open (read and write,
/// as BPF_OBJ_GET asks); a missing pin is for `pins::open` to explain.
pub fn pin_readable(dir: &Path, map: &str) -> Result<()> {
    let user = effective_user();
    if let Some(closed) = closed_ancestor(dir) {
        bail!(
            "user {user} cannot see the pins in {} because {} is closed to it: run this as the user that runs ftp-loader, or with sudo",
            dir.display(),
            closed.display()
        );
    }
    let pin = dir.join(map);
    if access(&pin, libc::R_OK | libc::W_OK) == Err(libc::EACCES) {
        let owner = std::fs::metadata(&pin).map_or_else(
            |_| "another user".to_owned(),
            |m| user_name(std::os::unix::fs::MetadataExt::uid(&m)),
        );
        bail!(
            "user {user} may not open {}, which belongs to {owner}: run this as {owner}, or with sudo",
            pin.display()
        );
    }
    Ok(())
}

/// Each interface once, each one existing, and each of a link type that can be guarded.
/// `--nat-inside` names guarded interfaces, each once, and leaves one to face the outside:
/// the expectations of rewritten announcements are made where those leave.
pub fn nat_inside(settings: &Settings, interfaces: &[String]) -> Result<()> {
    for (i, nat) in settings.nat_inside.iter().enumerate() {
        if !interfaces.contains(&nat.interface) {
            bail!(
                "--nat-inside {nat} names an interface that is not guarded: add {} to the interfaces",
                nat.interface
            );
        }
        if settings.nat_inside[..i]
            .iter()
            .any(|other| other.interface == nat.interface)
        {
            bail!(
                "--nat-inside names {} twice: give it once, with the address its hosts are shown as",
                nat.interface
            );
        }
    }
    if !settings.nat_inside.is_empty()
        && interfaces
            .iter()
            .all(|name| settings.nat_public(name).is_some())
    {
        bail!(
            "every guarded interface is --nat-inside: guard the outside interface too, where the rewritten announcements leave and their data connections arrive"
        );
    }
    Ok(())
}

pub fn interfaces(names: &[String]) -> Result<()> {
    let mut seen: Vec<(u32, &str)> = Vec::new();
    for name in names {
        link::link(name)?;
        let c_name = CString::new(name.as_str())?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        // By index, so that an alternative name of an interface counts as that interface.
        match seen.iter().find(|(i, _)| *i == index) {
            Some((_, first)) if *first == name => {
                bail!("the interface `{name}` is named twice: name each interface once")
            }
            Some((_, first)) => bail!(
                "`{first}` and `{name}` name the same interface (one is an alternative name of the other): name it once"
            ),
            None => seen.push((index, name)),
        }
    }
    Ok(())
}

/// Options that contradict each other or exceed what the programs can represent.
pub fn settings(settings: &Settings) -> Result<()> {
    let (lo, hi) = settings.data_ports;
    if lo == 0 || lo > hi {
        bail!("--data-ports {lo}-{hi} is not a range: give LO-HI with 1 <= LO <= HI <= 65535");
    }
    if !(1..=MAX_EXPECTED).contains(&settings.max_expected) {
        bail!(
            "--max-expected {} is out of range: a control connection may hold 1 to {MAX_EXPECTED} expectations",
            settings.max_expected
        );
    }
    if settings.max_per_client == 0 {
        bail!(
            "--max-expectations-per-client 0 would refuse every announcement: give 1 to {} (--max-expectations)",
            settings.max_expectations
        );
    }
    if settings.max_per_client > settings.max_expectations {
        bail!(
            "--max-expectations-per-client {} is more than the expectation table holds (--max-expectations {}): give at most {}, or raise --max-expectations",
            settings.max_per_client,
            settings.max_expectations,
            settings.max_expectations
        );
    }
    if settings.min_data_port > hi {
        bail!(
            "--min-data-port {} is above the top of --data-ports {lo}-{hi}, so no announced data connection could ever be admitted: give a --min-data-port of at most {hi}",
            settings.min_data_port
        );
    }
    if !settings.tls_libraries.is_empty() && !settings.tls_uprobes {
        bail!(
            "--tls-library names a TLS library for --tls-uprobes to probe, which is not given: add --tls-uprobes, or drop --tls-library"
        );
    }
    for &port in &settings.tls_control_ports {
        if settings.control_ports.contains(&port) {
            bail!(
                "port {port} is given both as a --control-port (plaintext, or TLS after AUTH) and as a --tls-control-port (TLS from the first byte): keep the one its server speaks"
            );
        }
    }
    for &port in &settings.allowed_ports {
        if settings.control_ports.contains(&port) || settings.tls_control_ports.contains(&port) {
            bail!(
                "--allow-port {port} is also a --control-port, which is never guarded: drop --allow-port {port}"
            );
        }
        if !(lo..=hi).contains(&port) {
            bail!(
                "--allow-port {port} lies outside --data-ports {lo}-{hi}, where nothing is guarded anyway: drop it, or widen --data-ports to include it"
            );
        }
    }
    if settings.allow_from.len() > ALLOW_FROM_ENTRIES as usize {
        bail!(
            "--allow-from is given {} times, more than the {ALLOW_FROM_ENTRIES} networks the programs hold: merge them into wider networks",
            settings.allow_from.len()
        );
    }
    if settings.public_addresses.len() > PUBLIC_ADDRS_ENTRIES as usize {
        bail!(
            "--public-address is given {} times, more than the {PUBLIC_ADDRS_ENTRIES} mappings the programs hold: list only the addresses the FTP servers announce",
            settings.public_addresses.len()
        );
    }
    for (i, mapping) in settings.public_addresses.iter().enumerate() {
        if let Some(other) = settings.public_addresses[..i]
            .iter()
            .find(|other| other.public() == mapping.public() && *other != mapping)
        {
            bail!(
                "--public-address {other} and {mapping} map {} twice: give it once, with the LOCAL address the NAT translates it to",
                mapping.public()
            );
        }
    }
    let max_secs = MAX_EXPECT_TIMEOUT_SECS;
    if settings.expect_timeout_secs > max_secs {
        bail!(
            "--expect-timeout {} is longer than the programs' clock can judge: give 1 to {max_secs} seconds",
            settings.expect_timeout_secs
        );
    }
    Ok(())
}

/// The kernel's refusal to create a table, told as the option that sized it and the sizes
/// that would work.
pub fn map_creation(error: EbpfError, settings: &Settings) -> anyhow::Error {
    let EbpfError::MapError(MapError::CreateError { name, io_error }) = &error else {
        return anyhow::Error::new(error).context("loading the eBPF maps failed");
    };
    let sized = settings
        .table_sizes()
        .into_iter()
        .find(|(map, _, _)| map == name);
    let (Some((map, option, entries)), Some(errno)) = (sized, io_error.raw_os_error()) else {
        return anyhow::Error::new(error).context("loading the eBPF maps failed");
    };
    match errno {
        libc::E2BIG | libc::EINVAL => match largest_accepted(map, entries) {
            Some(largest) => anyhow!(
                "{option} {entries} is more than this kernel's hash tables hold: give 1 to {largest}"
            ),
            None => anyhow!("this kernel refuses {option} {entries}: give a smaller {option}"),
        },
        libc::ENOMEM => match (bytes_per_entry(map), available_memory()) {
            (Some(per_entry), Some(available)) => anyhow!(
                "{option} {entries} needs more kernel memory than this process may use now: give 1 to about {} ({} MiB are available, at {per_entry} bytes an entry, shared with the other tables)",
                available / per_entry,
                available >> 20
            ),
            _ => anyhow!(
                "{option} {entries} needs more kernel memory than this process may use now: give a smaller {option}"
            ),
        },
        _ => anyhow::Error::new(error).context("loading the eBPF maps failed"),
    }
}

/// The type, key and value sizes and flags of `map` in the embedded object.
fn map_layout(map: &str) -> Option<(u32, u32, u32, u32)> {
    let object = aya_obj::Object::parse(OBJECT).ok()?;
    let map = object.maps.get(map)?;
    Some((
        map.map_type(),
        map.key_size(),
        map.value_size(),
        map.map_flags(),
    ))
}

/// Creates a throwaway map.
fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    entries: u32,
    flags: u32,
) -> std::io::Result<OwnedFd> {
    // SAFETY: all-zero is a valid bpf_attr (every field unset).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the map-creation member of the union, the one BPF_MAP_CREATE reads.
    let create = unsafe { &mut attr.__bindgen_anon_1 };
    create.map_type = map_type;
    create.key_size = key_size;
    create.value_size = value_size;
    create.max_entries = entries;
    create.map_flags = flags;
    // SAFETY: attr is a valid bpf_attr of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_CREATE as libc::c_long,
            &attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The largest size below `refused` this kernel takes for `map`, asked of the kernel
/// itself. A hash table (LRU or not) gets its entries rounded up to a power of two buckets,
/// and the kernel refuses (E2BIG) a bucket array whose size overflows, so only powers of
/// two need asking, largest first. The throwaway maps are plain hash maps of the same key
/// and value sizes without preallocated entries (BPF_F_NO_PREALLOC, which LRU maps do not
/// take): a refused size allocates nothing, the first accepted one its bucket array for a
/// moment (2 GiB at 2^27, a few seconds).
fn largest_accepted(map: &str, refused: u32) -> Option<u32> {
    let (_, key_size, value_size, _) = map_layout(map)?;
    let mut size = u64::from(refused).next_power_of_two() / 2;
    while size >= 1 {
        let entries = u32::try_from(size).ok()?;
        match create_map(
            bpf_map_type::BPF_MAP_TYPE_HASH as u32,
            key_size,
            value_size,
            entries,
            BPF_F_NO_PREALLOC,
        ) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::E2BIG | libc::EINVAL)) => size /= 2,
            // Created, or refused for memory only: the size itself is one the kernel takes.
            _ => return Some(entries),
        }
    }
    None
}

/// What one entry of `map` costs in kernel memory, measured on a small table of its layout
/// (the kernel reports a map's memory as `memlock` in its fdinfo).
fn bytes_per_entry(map: &str) -> Option<u64> {
    const SAMPLE: u32 = 4096;
    let (map_type, key_size, value_size, flags) = map_layout(map)?;
    let fd = create_map(map_type, key_size, value_size, SAMPLE, flags).ok()?;
    let fdinfo = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .ok()?;
    let memlock: u64 = field(&fdinfo, "memlock:")?;
    Some((memlock / u64::from(SAMPLE)).max(1))
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// Memory this process may still allocate: what the system has available, or less if its
/// memory cgroup (or one above it) allows less.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let system = field(&meminfo, "MemAvailable:")? * 1024;
    Some(system.min(cgroup_headroom().unwrap_or(u64::MAX)))
}

/// The least room left under the memory limits of this process's cgroup and its parents,
/// cgroup v2 or v1.
fn cgroup_headroom() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (root, limit, usage, relative) = cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Some(("/sys/fs/cgroup", "memory.max", "memory.current", path))
        } else if controllers.split(',').any(|c| c == "memory") {
            Some((
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                path,
            ))
        } else {
            None
        }
    })?;
    let leaf = Path::new(root).join(relative.trim_start_matches('/'));
    leaf.ancestors()
        .take_while(|dir| dir.starts_with(root))
        .filter_map(|dir| {
            let read = |file: &str| -> Option<u64> {
                std::fs::read_to_string(dir.join(file))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            };
            // "max" (v2, no limit) does not parse: no room taken off there.
            Some(read(limit)?.saturating_sub(read(usage)?))
        })
        .min()
}
