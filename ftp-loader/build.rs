//! Builds the kernel programs (crate `ftp-ebpf`) for the BPF target and leaves the object
//! in OUT_DIR, where `src/ebpf.rs` embeds it.
//!
//! The BPF side needs Debian's rustc-web toolchain, which ships a precompiled `core` for
//! `bpfel-unknown-none`, and bpf-linker (see the README); it is called explicitly because
//! the default rustup toolchain has no BPF `core`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_CARGO: &str = "/usr/bin/cargo";
const BPF_RUSTC: &str = "/usr/bin/rustc";
const TARGET: &str = "bpfel-unknown-none";

fn main() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    for dir in ["ftp-ebpf/src", "ftp-ebpf-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("ftp-ebpf/Cargo.toml").display()
    );
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());

    for (tool, what) in [
        (BPF_CARGO, "Debian's cargo-web"),
        (BPF_RUSTC, "Debian's rustc-web"),
    ] {
        if !Path::new(tool).exists() {
            panic!(
                "{tool} ({what}) is missing, so the eBPF programs cannot be built: run `cargo xtask setup`"
            );
        }
    }
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "bpf-linker is not on PATH, so the eBPF programs cannot be built: run `cargo xtask setup`"
        );
    }

    let target_dir = workspace.join("target").join("bpf");
    let mut cargo = Command::new(BPF_CARGO);
    // The outer cargo's settings (its rustc, flags, jobserver) are for the host build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP")
            || key == "RUSTFLAGS"
        {
            cargo.env_remove(key.as_ref());
        }
    }
    cargo
        .current_dir(&workspace)
        .env("RUSTC", BPF_RUSTC)
        // aya-ebpf uses `asm_experimental_arch`; the precompiled core makes build-std unneeded.
        .env("RUSTC_BOOTSTRAP", "1")
        // BTF is required for the bpf_loop callback ("missing btf func_info" without it).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .args([
            "build",
            "--release",
            "--package",
            "ftp-ebpf",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    let status = cargo
        .status()
        .unwrap_or_else(|e| panic!("could not run {BPF_CARGO}: {e}"));
    if !status.success() {
        panic!("building the eBPF programs failed (see the errors above)");
    }
    let release = target_dir.join(TARGET).join("release");
    let object = release.join("ftp-ebpf");
    std::fs::copy(&object, out_dir.join("ftp-ebpf.o"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
}
