//! FTP over TLS on the loader's side: `--tls-uprobes` (finding the TLS libraries of the
//! FTP servers on the host, probing them and the kernel's TCP send and receive, telling
//! the programs where the kernel keeps a socket's addresses), and the one sentence that
//! explains TLS data connections dropped without it.

use std::{
    collections::BTreeMap,
    fmt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{TracePoint, UProbe, uprobe::UProbeScope},
};
use ftp_ebpf_common::{
    contract::{
        TLS_READ_DONE_PROGRAM, TLS_READ_EX_DONE_PROGRAM, TLS_READ_PROGRAM, TLS_RECV_PROGRAM,
        TLS_RECV_SYSCALLS, TLS_SEND_PROGRAM, TLS_SEND_SYSCALLS, TLS_WRITE_PROGRAM, TlsLibrary,
    },
    stats::Counter,
    tls::KernelLayout,
};
use log::{info, warn};

/// The FTP servers whose processes `--tls-uprobes` looks for, by command name.
pub const FTP_SERVERS: [&str; 3] = ["vsftpd", "proftpd", "pure-ftpd"];

/// Where the running kernel describes its types.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A TLS library found to probe, and the FTP server processes seen using it.
#[derive(Debug)]
pub struct Library {
    pub path: PathBuf,
    pub kind: TlsLibrary,
    pub users: Vec<String>,
    /// The library held open while it is probed: a path through a process
    /// (`/proc/PID/...`) goes with the process, a session's fork may end at any moment,
    /// and the loader's own descriptor (`/proc/self/fd/N`) does not.
    held: Option<std::fs::File>,
}

impl Library {
    /// The path the probes are attached through.
    fn attach_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        self.held.as_ref().map_or_else(
            || self.path.clone(),
            |file| PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
        )
    }
}

/// What `--tls-uprobes` probes.
#[derive(Debug)]
pub struct Probed {
    pub libraries: Vec<Library>,
}

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let libraries: Vec<String> = self
            .libraries
            .iter()
            .map(|library| {
                let functions: Vec<&str> = library
                    .kind
                    .probes()
                    .iter()
                    .filter(|(_, _, ret)| !ret)
                    .map(|(_, function, _)| *function)
                    .collect();
                let users = if library.users.is_empty() {
                    "named by --tls-library".to_owned()
                } else {
                    format!("used by {}", library.users.join(", "))
                };
                format!(
                    "{} {} ({}), {users}",
                    library.kind.name(),
                    library.path.display(),
                    functions.join(", ")
                )
            })
            .collect();
        write!(
            f,
            "TLS plaintext of FTP control connections read at {}; every process using these libraries is covered, new ones (each session's fork, a restarted server) included",
            libraries.join("; ")
        )
    }
}

/// Loads the probes' programs through the verifier.
pub fn load(ebpf: &mut Ebpf) -> Result<()> {
    for program in [TLS_SEND_PROGRAM, TLS_RECV_PROGRAM] {
        let tracepoint: &mut TracePoint = program_mut(ebpf, program)?.try_into()?;
        tracepoint
            .load()
            .map_err(|error| unsupported("tracepoint programs", error))?;
    }
    for program in [
        TLS_WRITE_PROGRAM,
        TLS_READ_PROGRAM,
        TLS_READ_DONE_PROGRAM,
        TLS_READ_EX_DONE_PROGRAM,
    ] {
        let uprobe: &mut UProbe = program_mut(ebpf, program)?.try_into()?;
        uprobe
            .load()
            .map_err(|error| unsupported("uprobes", error))?;
    }
    Ok(())
}

/// Finds the libraries, loads the probes and attaches them. Nothing is attached when
/// anything fails.
pub fn attach(ebpf: &mut Ebpf, named: &[PathBuf]) -> Result<Probed> {
    let libraries = libraries(named)?;
    let probed = Probed { libraries };
    load(ebpf)?;
    mount_tracefs()?;
    for (program, syscalls) in [
        (TLS_SEND_PROGRAM, TLS_SEND_SYSCALLS),
        (TLS_RECV_PROGRAM, TLS_RECV_SYSCALLS),
    ] {
        let tracepoint: &mut TracePoint = program_mut(ebpf, program)?.try_into()?;
        for (category, name) in syscalls {
            tracepoint
                .attach(category, name)
                .map_err(|error| unsupported("syscall tracepoints", error))?;
        }
    }
    for library in &probed.libraries {
        for &(program, function, _) in library.kind.probes() {
            let uprobe: &mut UProbe = program_mut(ebpf, program)?.try_into()?;
            uprobe
                .attach(function, library.attach_path(), UProbeScope::AllProcesses)
                .map_err(|error| {
                    log::debug!("probing {function}: {error}");
                    anyhow::anyhow!(
                        "{function} cannot be probed in {}: is it {}? Name the FTP server's TLS library with --tls-library",
                        library.path.display(),
                        library.kind.name()
                    )
                })?;
        }
    }
    Ok(probed)
}

/// Where the syscall tracepoints are found: tracefs, mounted where every tool expects it
/// when it is not (as bpftool mounts bpffs).
const TRACEFS: &str = "/sys/kernel/tracing";

fn mount_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    // SAFETY: constant NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "--tls-uprobes attaches to syscall tracepoints, found in tracefs, which is not mounted at {TRACEFS} and could not be mounted ({}): mount it with `sudo mount -t tracefs tracefs {TRACEFS}`",
            std::io::Error::last_os_error()
        );
    }
    info!("mounted tracefs at {TRACEFS} (it was not mounted)");
    Ok(())
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("the object has no program {name}"))
}

/// A probe the kernel refused: one sentence naming what is missing (the kernel's own words
/// at debug level).
fn unsupported(what: &str, error: impl fmt::Display) -> anyhow::Error {
    log::debug!("the kernel refused the {what}: {error}");
    anyhow::anyhow!(
        "this kernel refused ftp-tracker's {what}: --tls-uprobes needs uprobes and syscall tracepoints (CONFIG_UPROBE_EVENTS and CONFIG_FTRACE_SYSCALLS, as Debian's kernels have); on this kernel, run without --tls-uprobes: TLS data connections are then dropped and counted under tls_data_dropped"
    )
}

/// The libraries named, then those the FTP servers running here use; one entry per file.
fn libraries(named: &[PathBuf]) -> Result<Vec<Library>> {
    let mut found: BTreeMap<(u64, u64), Library> = BTreeMap::new();
    for path in named {
        let metadata = std::fs::metadata(path).map_err(|_| {
            anyhow::anyhow!(
                "--tls-library {}: no such file; name the TLS library the FTP server loads (e.g. /usr/lib/x86_64-linux-gnu/libssl.so.3)",
                path.display()
            )
        })?;
        let kind = kind_of(path)?;
        found.insert(
            (metadata.dev(), metadata.ino()),
            Library {
                path: path.clone(),
                kind,
                users: Vec::new(),
                held: None,
            },
        );
    }
    for (process, path, kind) in servers_libraries() {
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue;
        };
        let library = found
            .entry((metadata.dev(), metadata.ino()))
            .or_insert_with(|| Library {
                held: path
                    .starts_with("/proc")
                    .then(|| std::fs::File::open(&path).ok())
                    .flatten(),
                path: path.clone(),
                kind,
                users: Vec::new(),
            });
        if !library.users.contains(&process) {
            library.users.push(process);
        }
    }
    if found.is_empty() {
        bail!(
            "--tls-uprobes found no FTP server ({}) running with a TLS library: start the FTP server before ftp-loader, or name its TLS library with --tls-library PATH (e.g. /usr/lib/x86_64-linux-gnu/libssl.so.3)",
            FTP_SERVERS.join(", ")
        );
    }
    Ok(found.into_values().collect())
}

/// Which library a named file is: by its name, else by the symbols it exports.
fn kind_of(path: &Path) -> Result<TlsLibrary> {
    if let Some(kind) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(TlsLibrary::of_file_name)
    {
        return Ok(kind);
    }
    let bytes = std::fs::read(path).map_err(|_| {
        anyhow::anyhow!(
            "--tls-library {}: cannot be read; name a file ftp-loader's user may read",
            path.display()
        )
    })?;
    let exports = |symbol: &str| {
        bytes.windows(symbol.len() + 2).any(|w| {
            w[0] == 0 && &w[1..=symbol.len()] == symbol.as_bytes() && w[symbol.len() + 1] == 0
        })
    };
    if exports("SSL_write") {
        Ok(TlsLibrary::OpenSsl)
    } else if exports("gnutls_record_send") {
        Ok(TlsLibrary::GnuTls)
    } else {
        bail!(
            "--tls-library {}: neither OpenSSL (SSL_write) nor GnuTLS (gnutls_record_send) is in it",
            path.display()
        )
    }
}

/// (`name[pid]`, library path as this process can open it, which library) for each TLS
/// library mapped by a running FTP server. The path goes through the process's root, so that a server in
/// another mount namespace (a container, a lab namespace) names its own file.
fn servers_libraries() -> Vec<(String, PathBuf, TlsLibrary)> {
    let mut found = Vec::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in processes.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = entry.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        if !FTP_SERVERS.contains(&comm) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(dir.join("maps")) else {
            continue;
        };
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(path)) = (fields.next(), fields.nth(4)) else {
                continue;
            };
            let file = Path::new(path);
            let Some(kind) = file
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(TlsLibrary::of_file_name)
            else {
                continue;
            };
            // The mapped file itself, whatever its path says: a server in another mount
            // namespace (a container, a chroot, `ip netns exec`) may name it by a path
            // that means nothing here. Probed through the first path that leads to it:
            // this namespace's own (which outlives the process), the process's root, or
            // the mapping.
            let mapped = dir.join("map_files").join(range);
            let Ok(target) = std::fs::metadata(&mapped) else {
                continue;
            };
            let leads = |candidate: &Path| {
                std::fs::metadata(candidate)
                    .is_ok_and(|m| (m.dev(), m.ino()) == (target.dev(), target.ino()))
            };
            let inside = dir.join("root").join(path.trim_start_matches('/'));
            let chosen = [file.to_owned(), inside]
                .into_iter()
                .find(|candidate| leads(candidate))
                .unwrap_or(mapped);
            let entry = (format!("{comm}[{pid}]"), chosen, kind);
            if !found.contains(&entry) {
                found.push(entry);
            }
        }
    }
    found
}

/// Where the running kernel keeps what leads from a thread's file descriptor to its
/// socket's addresses and ports, from its BTF.
pub fn kernel_layout() -> Result<KernelLayout> {
    let btf = std::fs::read(KERNEL_BTF).with_context(|| {
        format!(
            "--tls-uprobes reads where the kernel keeps a socket's addresses from {KERNEL_BTF}, which this kernel lacks (it needs CONFIG_DEBUG_INFO_BTF=y, as Debian's kernels have): run without --tls-uprobes"
        )
    })?;
    let types = btf::Types::parse(&btf).with_context(|| format!("reading {KERNEL_BTF}"))?;
    let offset = |structure: &str, field: &str| -> Result<u16> {
        let bits = types
            .field_bits(structure, field)
            .with_context(|| format!("{KERNEL_BTF}: no {structure}.{field}"))?;
        Ok(u16::try_from(bits / 8)?)
    };
    let sock = |field: &str| offset("sock_common", field);
    Ok(KernelLayout {
        task_files: offset("task_struct", "files")?,
        files_fdt: offset("files_struct", "fdt")?,
        fdt_fd: offset("fdtable", "fd")?,
        fdt_max_fds: offset("fdtable", "max_fds")?,
        file_private_data: offset("file", "private_data")?,
        socket_sk: offset("socket", "sk")?,
        family: sock("skc_family")?,
        daddr: sock("skc_daddr")?,
        rcv_saddr: sock("skc_rcv_saddr")?,
        dport: sock("skc_dport")?,
        num: sock("skc_num")?,
        v6_daddr: sock("skc_v6_daddr")?,
        v6_rcv_saddr: sock("skc_v6_rcv_saddr")?,
        _pad: [0; 3],
    })
}

/// Says once, the first time TLS control connections are seen while nothing reads their
/// plaintext, why their data connections are dropped and what fixes it; with
/// `--tls-uprobes`, says once if they are dropped all the same.
#[derive(Debug, Default)]
pub struct Hint {
    said: bool,
}

impl Hint {
    pub fn check(&mut self, counters: &[(Counter, u64)], uprobes: bool) {
        if self.said {
            return;
        }
        let get = |wanted: Counter| {
            counters
                .iter()
                .find(|(counter, _)| *counter == wanted)
                .map_or(0, |(_, value)| *value)
        };
        let connections = get(Counter::TlsControlConnections);
        let dropped = get(Counter::TlsDataDropped);
        if !uprobes && connections > 0 {
            self.said = true;
            warn!(
                "FTP over TLS: {connections} control connection(s) switched to TLS, whose announcements cannot be read on the wire, so their data connections are dropped (counted as tls_data_dropped); on the FTP server's host, run ftp-loader with --tls-uprobes to read them where they are plaintext"
            );
        } else if uprobes && dropped > 0 {
            self.said = true;
            warn!(
                "FTP over TLS: {dropped} data connection(s) of TLS control connections dropped although --tls-uprobes is on: the FTP server's TLS library is not probed (a server started after ftp-loader with another library, or one linked statically); name it with --tls-library and restart ftp-loader"
            );
        }
    }
}

/// Logs what `--tls-uprobes` probes.
pub fn describe(probed: &Probed) {
    info!("{probed}");
}

/// Just enough of BTF (the kernel's type format) to find a struct's fields.
mod btf {

    use anyhow::{Result, bail, ensure};

    const MAGIC: u16 = 0xeb9f;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;

    struct Type {
        name: u32,
        kind: u32,
        /// The referenced type of a typedef or modifier.
        target: u32,
        /// A struct's or union's members: (name, type, bit offset).
        members: Vec<(u32, u32, u32)>,
    }

    fn u32_at(data: &[u8], at: usize) -> Result<u32> {
        let Some(bytes) = data.get(at..at + 4) else {
            bail!("truncated");
        };
        Ok(u32::from_le_bytes(bytes.try_into()?))
    }

    /// A BTF blob's types and strings.
    pub struct Types<'a> {
        types: Vec<Type>,
        strings: &'a [u8],
    }

    impl<'a> Types<'a> {
        pub fn parse(data: &'a [u8]) -> Result<Self> {
            let (types, strings) = parse(data)?;
            Ok(Self { types, strings })
        }

        /// The bit offset of field `field` of struct `structure`, looking into its
        /// anonymous structs and unions.
        pub fn field_bits(&self, structure: &str, field: &str) -> Option<u32> {
            let root = self.types.iter().position(|t| {
                t.kind == KIND_STRUCT
                    && !t.members.is_empty()
                    && name(self.strings, t.name) == structure
            })?;
            let mut pending = vec![(root, 0u32)];
            while let Some((id, base)) = pending.pop() {
                for &(member, mut ty, offset) in &self.types[id].members {
                    if member != 0 {
                        if name(self.strings, member) == field {
                            return Some(base + offset);
                        }
                        continue;
                    }
                    // Anonymous: through typedefs and modifiers to its struct or union.
                    for _ in 0..16 {
                        match self.types.get(ty as usize) {
                            Some(t) if matches!(t.kind, 8..=11 | 18) => ty = t.target,
                            _ => break,
                        }
                    }
                    if self
                        .types
                        .get(ty as usize)
                        .is_some_and(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                    {
                        pending.push((ty as usize, base + offset));
                    }
                }
            }
            None
        }
    }

    fn parse(data: &[u8]) -> Result<(Vec<Type>, &[u8])> {
        ensure!(data.len() >= 24, "truncated");
        ensure!(
            u16::from_le_bytes([data[0], data[1]]) == MAGIC,
            "not little-endian BTF"
        );
        let header = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let Some(types) = data.get(header + type_off..header + type_off + type_len) else {
            bail!("truncated");
        };
        let Some(strings) = data.get(header + str_off..header + str_off + str_len) else {
            bail!("truncated");
        };
        // Type 0 is void.
        let mut parsed = vec![Type {
            name: 0,
            kind: 0,
            target: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < types.len() {
            let (name, info, target) = (
                u32_at(types, at)?,
                u32_at(types, at + 4)?,
                u32_at(types, at + 8)?,
            );
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let bitfields = info >> 31 != 0;
            let mut members = Vec::new();
            at += match kind {
                // int, var, decl_tag
                1 | 14 | 17 => 4,
                // array
                3 => 12,
                KIND_STRUCT | KIND_UNION => {
                    for m in 0..vlen {
                        let base = at + m * 12;
                        let offset = u32_at(types, base + 8)?;
                        members.push((
                            u32_at(types, base)?,
                            u32_at(types, base + 4)?,
                            if bitfields {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        ));
                    }
                    vlen * 12
                }
                // enum, func_proto
                6 | 13 => vlen * 8,
                // datasec, enum64
                15 | 19 => vlen * 12,
                // ptr, fwd, typedef, volatile, const, restrict, func, float, type_tag
                2 | 7..=12 | 16 | 18 => 0,
                other => bail!("unknown BTF kind {other}"),
            };
            parsed.push(Type {
                name,
                kind,
                target,
                members,
            });
        }
        Ok((parsed, strings))
    }

    fn name(strings: &[u8], offset: u32) -> &str {
        let rest = strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's layout, read from its BTF: the IPv4 fields have sat at these
    /// offsets since the fields existed, the IPv6 ones depend on the build.
    #[test]
    fn the_running_kernels_socket_layout() {
        let layout = kernel_layout().unwrap();
        assert_eq!(
            (
                layout.daddr,
                layout.rcv_saddr,
                layout.dport,
                layout.num,
                layout.family
            ),
            (0, 4, 12, 14, 16)
        );
        assert!(layout.v6_daddr > layout.family);
        assert_eq!(layout.v6_rcv_saddr, layout.v6_daddr + 16);
        // A file descriptor table holds pointers; the rest differs from build to build.
        assert!(layout.task_files > 0 && layout.file_private_data > 0);
    }

    #[test]
    fn libraries_are_told_by_name_or_by_their_symbols() {
        assert_eq!(
            TlsLibrary::of_file_name("libssl.so.3"),
            Some(TlsLibrary::OpenSsl)
        );
        assert_eq!(
            TlsLibrary::of_file_name("libgnutls.so.30"),
            Some(TlsLibrary::GnuTls)
        );
        assert_eq!(TlsLibrary::of_file_name("libcrypto.so.3"), None);
        let dir = std::env::temp_dir().join(format!("ftp-tracker-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let renamed = dir.join("libcustom.so");
        std::fs::write(&renamed, b"\x7fELF\0SSL_write\0more").unwrap();
        assert_eq!(kind_of(&renamed).unwrap(), TlsLibrary::OpenSsl);
        std::fs::write(&renamed, b"\x7fELF\0nothing\0").unwrap();
        let error = kind_of(&renamed).unwrap_err().to_string();
        assert!(error.contains("neither OpenSSL"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
