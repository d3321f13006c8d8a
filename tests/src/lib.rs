//! Test fixtures built from real parts: a two-host lab in network namespaces running real
//! FTP servers, clients and ftp-loader, crafted FTP control sessions watched by ftp-loader
//! and the kernel's own FTP helper, and hand-made Ethernet frames for `BPF_PROG_TEST_RUN`
//! or written onto the lab's link (`inject`), a layer-3 link between the hosts
//! (`tunnel`), and the hosts behind a router doing 1:1 NAT (`nat`).

pub mod clients;
pub mod frame;
pub mod ftp;
pub mod gateway;
pub mod inject;
pub mod lab;
pub mod nat;
pub mod package;
pub mod servers;
pub mod session;
pub mod tunnel;

/// The tests attach programs and create namespaces: say so plainly when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "these tests load eBPF programs and create network namespaces: run them as root (`sudo cargo xtask test`)"
    );
}

/// The executable cargo built for the integration test `name`, found in the output of
/// `cargo test --no-run --message-format=json` (one JSON message a line).
pub fn test_executable(cargo_messages: &str, name: &str) -> Option<std::path::PathBuf> {
    cargo_messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["name"] == name
                && message["target"]["kind"][0] == "test"
        })
        .find_map(|message| message["executable"].as_str().map(Into::into))
}

/// Where the dynamic linker finds the library `binary` links whose file name starts with
/// `prefix` (`libssl.so`, `libgnutls.so`): the TLS library a server or client uses.
pub fn linked_library(binary: &str, prefix: &str) -> Option<std::path::PathBuf> {
    let output = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let (name, rest) = line.trim().split_once(" => ")?;
            let path = rest.split_whitespace().next()?;
            name.starts_with(prefix).then(|| path.into())
        })
}
