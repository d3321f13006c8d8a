//! The bpffs directory that holds an instance's tables. Pinned, they outlive the loader (as
//! do the programs' attachments): a killed loader leaves the guard working, and the next
//! loader with the same directory takes over the tables where they stood.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, Pod,
    maps::{HashMap, Map, MapData, MapType},
};
use ftp_ebpf_common::contract::{
    ALLOW_FROM, ArrayKind, ArrayTable, CLIENTS, CONFIG, CONTROLS, EVENTS, EXPECTATIONS, FLOWS,
    HashTable, LpmTable, NAT_BINDINGS, NAT_CONTROLS, NAT_FLOWS, PORTS, PUBLIC_ADDRS,
    PUBLIC_ADDRS_ENTRIES, RingBuffer, STATS, TLS_PEERS, TLS_RECENT, WOULD_DROP,
};

use crate::{ebpf::Settings, events::READER_LOCK};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ftp-tracker";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_FS: &str = "/sys/fs/bpf";

/// Copies the entries of an older table into a new one; false when the layouts differ.
type CopyEntries = fn(MapData, &mut Map) -> Result<bool>;

/// A map of the instance's state, as the programs declare it.
struct StateMap {
    name: &'static str,
    kind: MapType,
    key_size: usize,
    value_size: usize,
    /// None for the tables laid out by index (counters, port classes): another size is
    /// another layout, with nothing to copy.
    copy: Option<CopyEntries>,
    /// The size of a table the settings do not size.
    entries: Option<u32>,
}

fn hash<K: Pod, V: Pod>(table: HashTable<K, V>) -> StateMap {
    StateMap {
        name: table.name,
        kind: table.map_type(),
        key_size: size_of::<K>(),
        value_size: size_of::<V>(),
        copy: Some(copy::<K, V>),
        entries: None,
    }
}

fn array<V: Pod, K: ArrayKind>(table: ArrayTable<V, K>) -> StateMap {
    StateMap {
        name: table.name,
        kind: table.map_type(),
        key_size: size_of::<u32>(),
        value_size: size_of::<V>(),
        copy: None,
        entries: Some(table.entries),
    }
}

fn lpm<K: Pod, V: Pod>(table: LpmTable<K, V>) -> StateMap {
    StateMap {
        name: table.name,
        kind: table.map_type(),
        // The prefix length, then the data.
        key_size: size_of::<u32>() + size_of::<K>(),
        value_size: size_of::<V>(),
        copy: None,
        entries: Some(table.entries),
    }
}

fn ring(ring: RingBuffer) -> StateMap {
    StateMap {
        name: ring.name,
        kind: ring.map_type(),
        key_size: 0,
        value_size: 0,
        copy: None,
        entries: Some(ring.bytes),
    }
}

/// The names of the tables pinned for the next instance: every map whose contents must
/// survive a restart. The scan buffers and rate limits are scratch space, and each loader
/// fills LOCAL_ADDRS anew. CONFIG (and ALLOW_FROM and PUBLIC_ADDRS, which the loader also
/// writes anew) are
/// pinned so that the commands that read a running instance can see its settings and
/// `ftp-loader events` can switch the events on; EVENTS so that it can read them (across a
/// restart of the loader too).
pub const STATE_MAP_NAMES: [&str; 16] = [
    STATS.name,
    CONFIG.name,
    ALLOW_FROM.name,
    PUBLIC_ADDRS.name,
    WOULD_DROP.name,
    PORTS.name,
    EXPECTATIONS.name,
    FLOWS.name,
    CONTROLS.name,
    CLIENTS.name,
    NAT_CONTROLS.name,
    NAT_BINDINGS.name,
    NAT_FLOWS.name,
    TLS_PEERS.name,
    TLS_RECENT.name,
    EVENTS.name,
];

/// The tables of `STATE_MAP_NAMES`, as the contract types them.
fn state_maps() -> [StateMap; STATE_MAP_NAMES.len()] {
    [
        array(STATS),
        array(CONFIG),
        lpm(ALLOW_FROM),
        // Not sized by an option: as the programs declare it.
        StateMap {
            entries: Some(PUBLIC_ADDRS_ENTRIES),
            ..hash(PUBLIC_ADDRS)
        },
        array(WOULD_DROP),
        array(PORTS),
        hash(EXPECTATIONS),
        hash(FLOWS),
        hash(CONTROLS),
        hash(CLIENTS),
        hash(NAT_CONTROLS),
        hash(NAT_BINDINGS),
        hash(NAT_FLOWS),
        hash(TLS_PEERS),
        array(TLS_RECENT),
        ring(EVENTS),
    ]
}

/// The size the loader gives `map`: the sized tables from the settings, the others as the
/// programs declare them.
fn max_entries(map: &StateMap, settings: &Settings) -> u32 {
    map.entries.unwrap_or_else(|| {
        settings
            .table_sizes()
            .into_iter()
            .find(|(table, _, _)| *table == map.name)
            .map_or(0, |(_, _, size)| size)
    })
}

/// What became of the previous instance's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inherited {
    /// Nothing was pinned: a first start.
    Nothing,
    /// Every table was reused as it was.
    Kept,
    /// Some tables had another size or type: their entries were copied into new ones.
    Migrated,
    /// Some tables had another layout: they start empty.
    Dropped,
}

/// Mounts bpffs where every BPF tool expects it, as bpftool does when it is missing.
fn mount_bpffs() -> Result<()> {
    // SAFETY: constant NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        let why = if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
            "this user may not mount it (that takes CAP_SYS_ADMIN)"
        } else {
            "mounting it failed"
        };
        bail!(
            "the BPF filesystem is not mounted at {BPF_FS} and {why}: mount it with `sudo mount -t bpf bpf {BPF_FS}`"
        );
    }
    log::info!("mounted the BPF filesystem at {BPF_FS} (it was not mounted)");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct of the right type.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated path.
    (unsafe { libc::statfs(c_path.as_ptr(), &mut fs) }) == 0 && fs.f_type as i64 == BPF_FS_MAGIC
}

fn lock(dir: &Path, how: libc::c_int) -> Result<Option<File>> {
    let file = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on a descriptor we own.
    let locked = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0;
    Ok(locked.then_some(file))
}

/// Whether a loader process holds `dir` (it keeps an exclusive lock on it while it runs).
pub fn loader_alive(dir: &Path) -> bool {
    dir.exists() && !matches!(lock(dir, libc::LOCK_SH), Ok(Some(_)))
}

/// The pin directory of the running instance: locked against a second loader.
pub struct PinDir {
    dir: PathBuf,
    _lock: File,
}

impl PinDir {
    pub fn acquire(dir: &Path) -> Result<Self> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        // A pin directory on bpffs whose parent is not: a bind mount, as the systemd unit
        // makes one so that its user needs no way through the root-only /sys/fs/bpf.
        let bound = is_bpffs(dir) && !is_bpffs(parent);
        if !bound && !is_bpffs(parent) && parent == Path::new(BPF_FS) {
            mount_bpffs()?;
        }
        if !bound && !is_bpffs(parent) {
            bail!(
                "--pin-dir {} must lie inside a BPF filesystem (such as {BPF_FS}), and {} is not one: give a --pin-dir under {BPF_FS}",
                dir.display(),
                parent.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let Some(lock) = lock(dir, libc::LOCK_EX)? else {
            bail!(
                "another ftp-loader is running with pin directory {}: stop it first, or give this one its own --pin-dir",
                dir.display()
            );
        };
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Checks the tables a previous instance pinned against what this one would create.
    /// Those that differ are unpinned but held open (to be migrated after the load, by
    /// `inherit`), so that the load only reuses tables that fit. (bpffs cannot rename.)
    pub fn prepare(&self, settings: &Settings) -> Result<Vec<(&'static str, MapData)>> {
        let mut set_aside = Vec::new();
        for map in &state_maps() {
            let path = self.map_path(map.name);
            if !path.exists() {
                continue;
            }
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned table {}", path.display()))?;
            let info = data
                .info()
                .with_context(|| format!("reading the pinned table {}", path.display()))?;
            let fits = info.map_type().ok() == Some(map.kind)
                && info.key_size() as usize == map.key_size
                && info.value_size() as usize == map.value_size
                && info.max_entries() == max_entries(map, settings);
            if !fits {
                std::fs::remove_file(&path)
                    .with_context(|| format!("unpinning {}", path.display()))?;
                set_aside.push((map.name, data));
            }
        }
        Ok(set_aside)
    }

    /// Copies the entries of the tables `prepare` set aside into the new ones (the old go
    /// when their last user lets go); says what the instance inherited.
    pub fn inherit(
        &self,
        ebpf: &mut Ebpf,
        had_state: bool,
        set_aside: Vec<(&'static str, MapData)>,
    ) -> Inherited {
        let mut outcome = if had_state {
            Inherited::Kept
        } else {
            Inherited::Nothing
        };
        for (name, old) in set_aside {
            let copied = migrate(ebpf, name, old);
            match copied {
                Ok(true) => {
                    log::info!("table {name} had another size or type: its entries were copied");
                    if outcome != Inherited::Dropped {
                        outcome = Inherited::Migrated;
                    }
                }
                Ok(false) => {
                    log::warn!(
                        "table {name} of the previous instance has another layout: it starts empty"
                    );
                    outcome = Inherited::Dropped;
                }
                Err(e) => {
                    log::warn!("table {name} could not be migrated ({e:#}): it starts empty");
                    outcome = Inherited::Dropped;
                }
            }
        }
        outcome
    }

    /// Whether a previous instance left tables behind.
    pub fn has_state(&self) -> bool {
        STATE_MAP_NAMES
            .iter()
            .any(|name| self.map_path(name).exists())
    }

    /// Removes every pin and the directory: the maps go once no program uses them.
    pub fn remove_all(&self) {
        remove_pins(&self.dir);
    }
}

/// Removes everything an instance pinned in `dir`, and the directory.
pub fn remove_pins(dir: &Path) {
    for name in STATE_MAP_NAMES {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir.join(READER_LOCK));
    let _ = std::fs::remove_dir(dir);
}

/// Copies what fits of an older table into the new one of the same name; false when the
/// layouts differ (nothing to copy).
fn migrate(ebpf: &mut Ebpf, name: &str, old: MapData) -> Result<bool> {
    let Some(copy) = state_maps()
        .into_iter()
        .find(|m| m.name == name)
        .and_then(|m| m.copy)
    else {
        return Ok(false);
    };
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("the object has no map {name}"))?;
    copy(old, map)
}

fn copy<K: Pod, V: Pod>(old: MapData, new: &mut Map) -> Result<bool> {
    let info = old.info()?;
    if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
        return Ok(false);
    }
    let old = match info.map_type()? {
        MapType::LruHash => Map::LruHashMap(old),
        MapType::Hash => Map::HashMap(old),
        _ => return Ok(false),
    };
    let old: HashMap<_, K, V> = HashMap::try_from(old)?;
    let mut new: HashMap<_, K, V> = HashMap::try_from(new)?;
    for (key, value) in old.iter().filter_map(Result::ok) {
        // A smaller table keeps what fits.
        let _ = new.insert(key, value, 0);
    }
    Ok(true)
}

/// Opens a map a running instance pinned.
pub fn open(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "no ftp-loader is running with pin directory {} (nothing pinned there): start one with `ftp-loader <interface>`",
            dir.display()
        );
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}
