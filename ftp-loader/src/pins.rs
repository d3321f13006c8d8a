//! The bpffs directory where a running instance pins its maps, so that `ftp-loader stats`
//! (another process) can read them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Map, MapData},
};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ftp-tracker";
/// The maps another process reads.
pub const PINNED_MAPS: [&str; 3] = ["STATS", "EXPECTATIONS", "FLOWS"];

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_FS: &str = "/sys/fs/bpf";

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

/// Holds the pin directory for one running instance: locked against a second instance,
/// emptied again when dropped.
pub struct PinDir {
    dir: PathBuf,
    _lock: File,
}

impl PinDir {
    pub fn acquire(dir: &Path) -> Result<Self> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) && parent == Path::new(BPF_FS) {
            mount_bpffs()?;
        }
        if !is_bpffs(parent) {
            bail!(
                "--pin-dir {} must lie inside a BPF filesystem (such as {BPF_FS}), and {} is not one: give a --pin-dir under {BPF_FS}",
                dir.display(),
                parent.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another ftp-loader is running with pin directory {}: stop it first, or give this one its own --pin-dir",
                dir.display()
            );
        }
        // Pins left by an instance that was killed: nobody holds them any more.
        for name in PINNED_MAPS {
            let _ = std::fs::remove_file(dir.join(name));
        }
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    pub fn pin(&self, ebpf: &Ebpf) -> Result<()> {
        for name in PINNED_MAPS {
            let map = ebpf
                .map(name)
                .with_context(|| format!("the object has no map {name}"))?;
            map.pin(self.dir.join(name))
                .with_context(|| format!("pinning {name} in {}", self.dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        for name in PINNED_MAPS {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
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
