//! The benchmarks' baselines: an XDP program that does nothing but pass (`r0 = XDP_PASS;
//! exit`), and its tc twin (`r0 = TC_ACT_UNSPEC; exit`), loaded and run with the bpf(2) syscall directly, so that the cost of ftp-tracker's
//! programs can be stated as a ratio measured in the same run. Two instructions assembled
//! here: nothing of it is built into, or shipped with, the product.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const XDP_PASS: i32 = 2;
/// TC_ACT_UNSPEC: what the product's tc programs return for a packet they pass.
const TC_ACT_UNSPEC: i32 = -1;

/// One eBPF instruction (`struct bpf_insn`): opcode, dst_reg | src_reg << 4, offset, imm.
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `r0 = verdict; exit`.
const fn program(verdict: i32) -> [Insn; 2] {
    [
        // BPF_ALU64 | BPF_MOV | BPF_K: r0 = imm
        Insn {
            code: 0x07 | 0xb0,
            regs: 0,
            off: 0,
            imm: verdict,
        },
        // BPF_JMP | BPF_EXIT
        Insn {
            code: 0x05 | 0x90,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ]
}

/// `union bpf_attr` is larger than either command's part of it; the kernel wants the rest
/// zero.
const ATTR_SIZE: usize = 128;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to the fields used.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    _rest: [u8; ATTR_SIZE - 64],
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`, up to the fields used.
#[repr(C)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    _rest: [u8; ATTR_SIZE - 40],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of ATTR_SIZE bytes whose pointers
    // outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A do-nothing program, loaded: XDP, or tc for the tc programs' figures.
pub struct Baseline {
    fd: OwnedFd,
    verdict: i32,
}

impl Baseline {
    pub const NAME: &str = "do-nothing XDP";
    pub const TC_NAME: &str = "do-nothing tc";

    /// The do-nothing XDP program.
    pub fn load() -> Result<Self> {
        Self::load_as(BPF_PROG_TYPE_XDP, XDP_PASS, *b"xdp_pass")
    }

    /// The do-nothing tc program, passing as the product's tc programs do.
    pub fn load_tc() -> Result<Self> {
        Self::load_as(BPF_PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC, *b"tc_unspc")
    }

    fn load_as(prog_type: u32, verdict: i32, short_name: [u8; 8]) -> Result<Self> {
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..8].copy_from_slice(&short_name);
        let instructions = program(verdict);
        let mut attr = ProgLoad {
            prog_type,
            insn_cnt: instructions.len() as u32,
            insns: instructions.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            _rest: [0; ATTR_SIZE - 64],
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading a do-nothing program")?;
        // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { fd, verdict })
    }

    /// Runs the program on `frame` `repeat` times in the kernel (`BPF_PROG_TEST_RUN`, as
    /// aya's `test_run` does, no output buffer) and returns the kernel's mean duration of
    /// one run, in ns.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<f64> {
        let mut attr = TestRun {
            prog_fd: self.fd.as_raw_fd() as u32,
            retval: 0,
            data_size_in: frame.len() as u32,
            data_size_out: 0,
            data_in: frame.as_ptr() as u64,
            data_out: 0,
            repeat,
            duration: 0,
            _rest: [0; ATTR_SIZE - 40],
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).context("running a do-nothing program")?;
        if attr.retval != self.verdict as u32 {
            bail!("a do-nothing program returned {}", attr.retval);
        }
        Ok(f64::from(attr.duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_bpf_attr() {
        assert_eq!(size_of::<ProgLoad>(), ATTR_SIZE);
        assert_eq!(size_of::<TestRun>(), ATTR_SIZE);
        assert_eq!(std::mem::offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(std::mem::offset_of!(TestRun, repeat), 32);
        assert_eq!(std::mem::offset_of!(TestRun, duration), 36);
    }
}
