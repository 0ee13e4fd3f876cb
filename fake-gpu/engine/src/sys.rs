//! The few operating-system calls the engine needs, each wrapped once.

use std::io;

/// This process's id.
pub fn pid() -> u32 {
    std::process::id()
}

pub use tf_os::{now_ns, process_start_time};

/// Sleep until the monotonic clock reads `deadline_ns` (absolute, so no drift accumulates).
pub fn sleep_until(deadline_ns: u64) {
    // A deadline already passed needs no timer: arming one costs microseconds in a VM, which
    // capped back-to-back short kernels at tens of thousands per second.
    if now_ns() >= deadline_ns {
        return;
    }
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; a null remainder is allowed with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// Ask the kernel to wake this thread from sleeps as precisely as it can (the default slack of
/// 50 µs would stretch every modeled kernel).
pub fn precise_timers_for_this_thread() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// An exclusive `flock` held until dropped.
pub struct FileLock(libc::c_int);

impl FileLock {
    pub fn exclusive(fd: libc::c_int) -> io::Result<Self> {
        loop {
            // SAFETY: flock on a descriptor the caller keeps open for the guard's lifetime.
            let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock(fd));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking a lock this guard took on a still-open descriptor.
        unsafe { libc::flock(self.0, libc::LOCK_UN) };
    }
}

/// Anonymous private memory that backs one simulated allocation. Pages are only committed when
/// touched (MAP_NORESERVE), so an 80 GiB device costs nothing until used.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Mapping is a plain region of process memory; who may read or write it is decided
// by the engine (like device memory shared by a GPU's streams), not by the owning thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; the Mapping itself has no interior state besides the region.
unsafe impl Sync for Mapping {}

pub const PAGE: usize = 4096;

impl Mapping {
    /// Map at least `len` bytes, at `fixed` if given (failing if that range is taken).
    pub fn new(len: usize, fixed: Option<usize>) -> io::Result<Mapping> {
        let len = len.max(1).div_ceil(PAGE) * PAGE;
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let hint = match fixed {
            Some(addr) => {
                flags |= libc::MAP_FIXED_NOREPLACE;
                addr as *mut libc::c_void
            }
            None => std::ptr::null_mut(),
        };
        // SAFETY: anonymous mapping; with MAP_FIXED_NOREPLACE the kernel refuses (EEXIST)
        // rather than replace any existing mapping.
        let p = unsafe { libc::mmap(hint, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if let Some(addr) = fixed
            && p as usize != addr
        {
            // Old kernels ignore MAP_FIXED_NOREPLACE and treat the address as a hint.
            // SAFETY: unmapping the region this call just mapped.
            unsafe { libc::munmap(p, len) };
            return Err(io::Error::from(io::ErrorKind::AddrInUse));
        }
        Ok(Mapping {
            ptr: p as *mut u8,
            len,
        })
    }

    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Mapped length (a whole number of pages).
    pub fn mapped_len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region `new` mapped; no reference into it outlives the
        // last Arc<Mapping> (the engine hands out raw pointers only while holding one).
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}
