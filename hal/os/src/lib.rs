//! # tf-os
//!
//! Small operating-system helpers shared by crates that may not depend on each other (the
//! simulated GPU, the vGPU limiter, the driver libraries and the interposer): the clock every
//! process agrees on, whether a process is still alive, the logging set-up of libraries loaded
//! into someone else's program, and the two building blocks of every cross-process table:
//!
//! - [`shm::Shm`]: a mapping of one `#[repr(C)]` value shared between processes, owned and
//!   unmapped on drop;
//! - [`proctable::ProcTable`]: the per-process slot table inside such a value (claim by pid and
//!   start time, reclaim of dead processes), used by the simulated GPU's device segments and by
//!   the vGPU regions alike.
//!
//! And [`artifacts`]: finding the libraries tensor-fusion ships beside its binary, installed or
//! in the build folder.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

use std::collections::HashSet;
use std::io::{self, IsTerminal};
use std::sync::{Mutex, Once};

pub mod artifacts;
pub mod proctable;
pub mod shm;

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine.
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Start time (clock ticks after boot, field 22 of /proc/PID/stat) of a live process; `None`
/// if `pid` is gone or a zombie. Comparing start times tells a reused pid apart.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
    if matches!(fields.first().copied(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Copy `len` bytes from `src` to `dst` in this process's memory, each address checked by the
/// kernel (`process_vm_readv` on ourselves): an unmapped, freed or read-only range is an error
/// (`EFAULT`), never a crash. For memory a caller of a C API handed us and we cannot vouch for.
/// Overlapping ranges are not supported.
pub fn copy_checked(dst: usize, src: usize, len: usize) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: dst as *mut libc::c_void,
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: src as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: process_vm_readv checks every address itself (EFAULT, never a fault in this
    // process); the iovecs are valid structs describing one range each.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    match n {
        n if n == len as isize => Ok(()),
        -1 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only part of the range is mapped",
        )),
    }
}

/// This user's private folder for tensor-fusion's runtime files
/// (`$TMPDIR/tensor-fusion-<uid>`, mode 0700), created if missing. A folder of that name owned
/// by someone else, or open to others, is refused rather than used.
pub fn user_runtime_dir() -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("tensor-fusion-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(&dir)?;
    if !m.is_dir() || m.uid() != uid || m.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private folder of this user (uid {uid}): remove it, or set TMPDIR to another folder",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

/// Logs of a library loaded into another program: `tracing` to stderr, filtered by `TF_LOG`
/// (default: warnings), installed once and only if the program has no subscriber of its own.
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("TF_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(io::stderr)
            .with_ansi(io::stderr().is_terminal())
            .try_init();
    });
}

/// Whether this is the first time `name` is seen (for "log once per function" messages).
pub fn first_time(name: &'static str) -> bool {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    SEEN.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_copies_refuse_bad_addresses_instead_of_crashing() {
        let src = [1u8, 2, 3, 4];
        let mut dst = [0u8; 4];
        copy_checked(dst.as_mut_ptr() as usize, src.as_ptr() as usize, 4).unwrap();
        assert_eq!(dst, src);
        assert!(copy_checked(dst.as_mut_ptr() as usize, 0x10, 4).is_err());
        assert!(copy_checked(0xdead_0000, src.as_ptr() as usize, 4).is_err());
        let ro = c"read-only".as_ptr() as usize;
        assert!(
            copy_checked(ro, src.as_ptr() as usize, 4).is_err(),
            "read-only target"
        );
    }

    #[test]
    fn a_live_process_has_a_start_time_and_a_reaped_one_does_not() {
        assert!(process_start_time(std::process::id()).is_some());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(process_start_time(pid), None);
        let t0 = now_ns();
        assert!(now_ns() >= t0);
        assert!(first_time("x") && !first_time("x"));
    }
}
