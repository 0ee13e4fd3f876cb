//! Shared memory that owns itself: a [`Shm<T>`] is a mapping of one `#[repr(C)]` value that
//! several processes see at once (a file in `/dev/shm`, or anonymous memory private to this
//! process), unmapped when dropped. Long-lived processes (the daemon, the worker) hold their
//! mappings as values, never as `&'static` references.
//!
//! Files are sized with `posix_fallocate` before they are mapped, so a full file system is an
//! error at creation, never a `SIGBUS` on first touch.

use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

/// A type that may live in memory shared between processes.
///
/// # Safety
///
/// Implementors promise that every bit pattern (in particular all zeros, and whatever another
/// process or a stray writer left) is a valid value, and that the value is only ever accessed
/// through shared references to atomics (or plain data read once and validated): a `#[repr(C)]`
/// struct of atomics, padding and arrays of such.
pub unsafe trait ShmSafe: Sync + Send {}

/// A mapping of one `T`, unmapped on drop.
pub struct Shm<T: ShmSafe> {
    ptr: NonNull<T>,
    len: usize,
    _owns: PhantomData<T>,
}

// SAFETY: the mapping is plain memory holding a `T: ShmSafe`, which is `Sync + Send` and only
// accessed through shared references; moving the owner to another thread moves nothing.
unsafe impl<T: ShmSafe> Send for Shm<T> {}
// SAFETY: as above: `&Shm<T>` only hands out `&T`, and `T: Sync`.
unsafe impl<T: ShmSafe> Sync for Shm<T> {}

impl<T: ShmSafe> Shm<T> {
    /// Create the file `path` (which must not exist) with `mode`, sized and zero-filled for one
    /// `T`, and map it. Returns the mapping and the open file (for locking).
    pub fn create_new(path: &Path, mode: u32) -> io::Result<(Shm<T>, File)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        let made = allocate(&file, size_of::<T>() as u64).and_then(|()| Shm::map_file(&file));
        match made {
            Ok(m) => Ok((m, file)),
            Err(e) => {
                // Do not leave a half-made file behind.
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Open an existing file `path` and map it: it must hold at least one `T`.
    pub fn open(path: &Path) -> io::Result<(Shm<T>, File)> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len < size_of::<T>() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file is {len} bytes, expected at least {}", size_of::<T>()),
            ));
        }
        Ok((Shm::map_file(&file)?, file))
    }

    /// Map an open file (read and write), growing it with `posix_fallocate` to one `T` first if
    /// it is shorter.
    pub fn map_file(file: &File) -> io::Result<Shm<T>> {
        let size = size_of::<T>();
        if file.metadata()?.len() < size as u64 {
            allocate(file, size as u64)?;
        }
        // SAFETY: a fresh shared mapping chosen by the kernel, of a file at least `size` bytes
        // long (checked or grown above), open for reading and writing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        Self::from_raw(p, size)
    }

    /// Map an open file read-only (`PROT_READ`): any store through it faults, so only `T`s whose
    /// `&T` API never stores may be read this way. The file must hold at least one `T`.
    pub fn map_file_read_only(file: &File) -> io::Result<Shm<T>> {
        let size = size_of::<T>();
        if file.metadata()?.len() < size as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file is shorter than {size} bytes"),
            ));
        }
        // SAFETY: a fresh shared read-only mapping chosen by the kernel, of a file at least
        // `size` bytes long (checked above).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        Self::from_raw(p, size)
    }

    /// Zero-filled anonymous memory private to this process (a `T` nobody else sees).
    pub fn anonymous() -> io::Result<Shm<T>> {
        let size = size_of::<T>();
        // SAFETY: a fresh private anonymous mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        Self::from_raw(p, size)
    }

    fn from_raw(p: *mut libc::c_void, len: usize) -> io::Result<Shm<T>> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p as *mut T).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Shm {
            ptr,
            len,
            _owns: PhantomData,
        })
    }
}

impl<T: ShmSafe> std::ops::Deref for Shm<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the mapping is page aligned (so aligned for T), at least size_of::<T>() bytes,
        // mapped for as long as `self` lives, and any bit pattern is a valid T (ShmSafe).
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ShmSafe> Drop for Shm<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value owns; no reference into it outlives `self`
        // (they all borrow from it).
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

impl<T: ShmSafe> std::fmt::Debug for Shm<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shm<{}>({:p})", std::any::type_name::<T>(), self.ptr)
    }
}

/// Reserve `len` bytes for `file` on its file system, so that touching the mapping later can
/// never fault for lack of space.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    loop {
        // SAFETY: posix_fallocate on a descriptor we own, for a range starting at 0.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        match rc {
            0 => return Ok(()),
            libc::EINTR => continue,
            // File systems without fallocate: fall back to setting the length.
            libc::EOPNOTSUPP | libc::EINVAL => return file.set_len(len as u64),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[repr(C)]
    struct Two {
        a: AtomicU64,
        b: [AtomicU64; 1000],
    }
    // SAFETY: atomics only.
    unsafe impl ShmSafe for Two {}

    #[test]
    fn a_file_mapping_is_shared_and_a_new_file_is_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let (m, _f) = Shm::<Two>::create_new(&path, 0o600).unwrap();
        assert_eq!(m.a.load(Ordering::Relaxed), 0);
        let (n, _f2) = Shm::<Two>::open(&path).unwrap();
        m.b[999].store(7, Ordering::Relaxed);
        assert_eq!(n.b[999].load(Ordering::Relaxed), 7);
        assert_eq!(
            Shm::<Two>::create_new(&path, 0o600).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        drop(m);
        assert_eq!(
            n.b[999].load(Ordering::Relaxed),
            7,
            "the other mapping stays"
        );
        std::fs::write(dir.path().join("short"), b"abc").unwrap();
        let e = Shm::<Two>::open(&dir.path().join("short")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let p = Shm::<Two>::anonymous().unwrap();
        p.a.store(1, Ordering::Relaxed);
        assert_eq!(p.a.load(Ordering::Relaxed), 1);
    }
}
