//! Virtual memory management (cuMemCreate / cuMemAddressReserve / cuMemMap): physical
//! allocations are memfd files charged against the device; address ranges are reserved with
//! PROT_NONE mappings; mapping puts a physical allocation's pages at a reserved address.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use tf_hal::{Error, ErrorKind, Result};

use crate::device::FakeDevice;

/// A physical allocation: charged to the device until the last handle and mapping are gone.
pub struct Physical {
    fd: OwnedFd,
    size: u64,
    device: Arc<FakeDevice>,
}

impl std::fmt::Debug for Physical {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Physical({} bytes on device {})",
            self.size,
            self.device.index()
        )
    }
}

fn os_err(what: &str) -> Error {
    Error::new(
        ErrorKind::OutOfMemory,
        format!("{what}: {}", std::io::Error::last_os_error()),
    )
}

impl Physical {
    pub fn create(device: &Arc<FakeDevice>, size: u64) -> Result<Arc<Physical>> {
        if size == 0 {
            return Err(Error::invalid_value("cannot create a 0-byte allocation"));
        }
        device.charge(size)?;
        // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"tf-fake-gpu-vmm".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            let _ = device.uncharge(size);
            return Err(os_err("memfd_create"));
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } != 0 {
            let _ = device.uncharge(size);
            return Err(os_err("ftruncate"));
        }
        Ok(Arc::new(Physical {
            fd,
            size,
            device: device.clone(),
        }))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn device(&self) -> &Arc<FakeDevice> {
        &self.device
    }
}

impl Drop for Physical {
    fn drop(&mut self) {
        let _ = self.device.uncharge(self.size);
    }
}

/// Reserve `size` bytes of address space aligned to `align` (a power of two, or 0 for 2 MiB).
pub fn reserve(size: u64, align: u64) -> Result<u64> {
    let align = if align == 0 { 2 << 20 } else { align };
    if size == 0 || !align.is_power_of_two() {
        return Err(Error::invalid_value("bad size or alignment"));
    }
    let len = (size + align) as usize;
    // SAFETY: a fresh anonymous PROT_NONE mapping chosen by the kernel.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_err("reserve address range"));
    }
    let start = p as u64;
    let aligned = start.next_multiple_of(align);
    // Trim the slack before and after the aligned range.
    // SAFETY: both ranges lie inside the mapping made above and are not used by anyone.
    unsafe {
        if aligned > start {
            libc::munmap(p, (aligned - start) as usize);
        }
        let end = aligned + size;
        let map_end = start + len as u64;
        if map_end > end {
            libc::munmap(end as *mut libc::c_void, (map_end - end) as usize);
        }
    }
    Ok(aligned)
}

/// Give back a reserved range.
///
/// # Safety
/// `[addr, addr + size)` must be a range returned by [`reserve`] with nothing of the caller's
/// still using it.
pub unsafe fn release(addr: u64, size: u64) {
    // SAFETY: the caller's contract.
    unsafe { libc::munmap(addr as *mut libc::c_void, size as usize) };
}

/// Map `size` bytes of `phys` from `offset` at `addr` (inside a reserved range), and make the
/// range addressable by kernels and copies for context `owner`.
///
/// # Safety
/// `[addr, addr + size)` must lie inside a range reserved with [`reserve`] and not be mapped.
pub unsafe fn map(
    addr: u64,
    size: u64,
    phys: &Arc<Physical>,
    offset: u64,
    owner: u64,
) -> Result<()> {
    if offset.checked_add(size).is_none_or(|e| e > phys.size) {
        return Err(Error::invalid_value(
            "mapping past the end of the physical allocation",
        ));
    }
    // SAFETY: MAP_FIXED over a range the caller reserved (PROT_NONE, unused): this replaces our
    // own placeholder pages and nothing else.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            phys.fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_err("map physical allocation"));
    }
    phys.device.register_mapped(
        addr,
        size,
        owner,
        phys.clone() as Arc<dyn std::any::Any + Send + Sync>,
    )
}

/// Undo [`map`]: the range goes back to reserved.
///
/// # Safety
/// `addr` must be the start of a range mapped with [`map`] on `device`, with no work using it.
pub unsafe fn unmap(device: &FakeDevice, addr: u64) -> Result<()> {
    let size = device.unregister_mapped(addr)?;
    // SAFETY: the caller's contract; this puts a PROT_NONE placeholder over our own mapping.
    unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            size as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        );
    }
    Ok(())
}
