//! One simulated device as seen from this process: its profile, its shared segment, and the
//! process's allocations on it (device memory is host memory; a device pointer is the address of
//! its backing pages).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tf_hal::{
    BackendKind, Capabilities, DeviceInfo, Error, ErrorKind, MemoryInfo, PartitionInfo,
    PartitionTemplate, Result,
};

use crate::profile::DeviceProfile;
use crate::shm::{DeviceSegment, SegmentMap};
use crate::sys::{self, Mapping};

/// What kind of memory an allocation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemKind {
    /// Device memory: counted against the device's capacity.
    Device,
    /// Page-locked host memory (cuMemAllocHost): addressable by kernels, not counted.
    Host,
    /// Managed (unified) memory: counted against the device's capacity.
    Managed,
    /// A virtual range mapped onto a physical allocation (cuMemMap): the physical allocation is
    /// what is counted.
    Mapped,
}

struct Allocation {
    /// The pages, when the engine owns them (everything but `Mapped`).
    map: Option<Arc<Mapping>>,
    /// What a `Mapped` range keeps alive (its physical allocation).
    _hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
    size: u64,
    kind: MemKind,
    owner: u64,
}

/// A piece of device memory a job holds on to while it runs.
pub struct Region {
    _map: Option<Arc<Mapping>>,
    pub ptr: *mut u8,
}

/// The driver version string of the simulated GPU.
pub const DRIVER_VERSION: &str = concat!("tf-fake-gpu ", env!("CARGO_PKG_VERSION"));

pub struct FakeDevice {
    index: u32,
    profile: DeviceProfile,
    info: DeviceInfo,
    seg: SegmentMap,
    allocs: Mutex<BTreeMap<u64, Allocation>>,
    slot: Mutex<Option<(u32, usize)>>,
    partitions: Mutex<Vec<PartitionInfo>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemKind {
    /// Whether allocations of this kind count against the device's memory.
    pub fn is_counted(self) -> bool {
        matches!(self, MemKind::Device | MemKind::Managed)
    }
}

impl FakeDevice {
    pub(crate) fn new(
        index: u32,
        profile: DeviceProfile,
        shm_dir: &std::path::Path,
    ) -> Result<Self> {
        let seg = DeviceSegment::open(shm_dir, &profile.uuid, profile.memory_bytes)?;
        let info = DeviceInfo {
            index,
            uuid: profile.uuid.clone(),
            vendor: profile.vendor,
            model: profile.model.clone(),
            total_memory_bytes: profile.memory_bytes,
            compute_units: profile.sms,
            fp16_tflops: profile.fp16_tflops,
            pci_bus_id: profile.pci_bus_id.clone(),
            numa_node: Some(profile.numa_node),
            driver_version: DRIVER_VERSION.to_string(),
            capabilities: Capabilities {
                soft_limit: true,
                hard_limit: false,
                partitioning: true,
                snapshot: true,
                remoting: false,
            },
            backend: BackendKind::Fake,
        };
        Ok(FakeDevice {
            index,
            profile,
            info,
            seg,
            allocs: Mutex::new(BTreeMap::new()),
            slot: Mutex::new(None),
            partitions: Mutex::new(Vec::new()),
        })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn profile(&self) -> &DeviceProfile {
        &self.profile
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn segment(&self) -> &DeviceSegment {
        &self.seg
    }

    /// This process's slot in the shared segment (registered on first use, again after fork).
    pub fn slot(&self) -> Result<usize> {
        let pid = sys::pid();
        let mut s = lock(&self.slot);
        match *s {
            Some((p, i)) if p == pid => Ok(i),
            _ => {
                let i = self.seg.register(pid)?;
                *s = Some((pid, i));
                Ok(i)
            }
        }
    }

    /// Allocate `bytes` of memory of `kind` for context `owner`, at address `fixed` if given.
    pub fn alloc(&self, bytes: u64, kind: MemKind, owner: u64, fixed: Option<u64>) -> Result<u64> {
        if bytes == 0 {
            return Err(Error::invalid_value("cannot allocate 0 bytes"));
        }
        let counted = kind.is_counted();
        let slot = self.slot()?;
        if counted {
            self.seg.charge(slot, bytes)?;
        }
        let map = match usize::try_from(bytes)
            .ok()
            .and_then(|len| Mapping::new(len, fixed.map(|a| a as usize)).ok())
        {
            Some(m) => m,
            None => {
                if counted {
                    self.seg.uncharge(slot, bytes);
                }
                return Err(Error::out_of_memory(format!(
                    "cannot back {bytes} bytes of simulated device memory with host memory{}",
                    fixed.map(|a| format!(" at {a:#x}")).unwrap_or_default()
                )));
            }
        };
        let addr = map.addr() as u64;
        lock(&self.allocs).insert(
            addr,
            Allocation {
                map: Some(Arc::new(map)),
                _hold: None,
                size: bytes,
                kind,
                owner,
            },
        );
        Ok(addr)
    }

    /// Free the allocation that starts at `ptr`. Returns its kind and size.
    pub fn free(&self, ptr: u64) -> Result<(MemKind, u64)> {
        let a = {
            let mut allocs = lock(&self.allocs);
            match allocs.get(&ptr) {
                Some(a) if a.kind != MemKind::Mapped => allocs.remove(&ptr),
                _ => None,
            }
        }
        .ok_or_else(|| {
            Error::invalid_value(format!("{ptr:#x} is not the start of a live allocation"))
        })?;
        if a.kind.is_counted() {
            self.seg.uncharge(self.slot()?, a.size);
        }
        // The backing pages go when the last running job that uses them finishes.
        Ok((a.kind, a.size))
    }

    /// Charge device memory to this process without backing it (VMM physical allocations).
    pub fn charge(&self, bytes: u64) -> Result<()> {
        self.seg.charge(self.slot()?, bytes)
    }

    pub fn uncharge(&self, bytes: u64) -> Result<()> {
        self.seg.uncharge(self.slot()?, bytes);
        Ok(())
    }

    /// Make `[addr, addr + size)`, memory the caller has mapped, addressable by kernels and
    /// copies (a cuMemMap'ed range). Not counted: its physical allocation is.
    pub fn register_mapped(
        &self,
        addr: u64,
        size: u64,
        owner: u64,
        hold: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Result<()> {
        let mut allocs = lock(&self.allocs);
        let overlaps = allocs
            .range(..addr + size)
            .next_back()
            .is_some_and(|(&b, a)| b + a.size > addr);
        if overlaps {
            return Err(Error::invalid_value(format!(
                "{size} bytes at {addr:#x} overlap a live allocation"
            )));
        }
        allocs.insert(
            addr,
            Allocation {
                map: None,
                _hold: Some(hold),
                size,
                kind: MemKind::Mapped,
                owner,
            },
        );
        Ok(())
    }

    /// Forget a range registered with [`register_mapped`](Self::register_mapped).
    pub fn unregister_mapped(&self, addr: u64) -> Result<u64> {
        let mut allocs = lock(&self.allocs);
        match allocs.get(&addr) {
            Some(a) if a.kind == MemKind::Mapped => Ok(allocs.remove(&addr).map_or(0, |a| a.size)),
            _ => Err(Error::invalid_value(format!(
                "{addr:#x} is not a mapped range"
            ))),
        }
    }

    /// The allocation containing `addr`: (base, size, kind).
    pub fn lookup(&self, addr: u64) -> Option<(u64, u64, MemKind)> {
        let allocs = lock(&self.allocs);
        let (&base, a) = allocs.range(..=addr).next_back()?;
        (addr < base + a.size).then_some((base, a.size, a.kind))
    }

    /// Check that `[addr, addr + len)` lies inside one live allocation and pin it.
    pub fn resolve(&self, addr: u64, len: u64) -> Result<Region> {
        let allocs = lock(&self.allocs);
        let found = allocs.range(..=addr).next_back().filter(|(base, a)| {
            addr.checked_add(len)
                .is_some_and(|end| end <= **base + a.size)
        });
        match found {
            Some((_, a)) => Ok(Region {
                _map: a.map.clone(),
                ptr: addr as *mut u8,
            }),
            None => Err(Error::new(
                ErrorKind::IllegalAddress,
                format!(
                    "{len} bytes at {addr:#x} are outside every allocation on device {}",
                    self.index
                ),
            )),
        }
    }

    /// Allocations owned by context `owner`: (address, size).
    pub fn allocations_of(&self, owner: u64) -> Vec<(u64, u64)> {
        lock(&self.allocs)
            .iter()
            .filter(|(_, a)| a.owner == owner && a.kind.is_counted())
            .map(|(&p, a)| (p, a.size))
            .collect()
    }

    /// Free everything context `owner` still holds (the context is going away).
    pub fn free_all_of(&self, owner: u64) {
        for (p, _) in self.allocations_of(owner) {
            let _ = self.free(p);
        }
        let rest: Vec<(u64, MemKind)> = lock(&self.allocs)
            .iter()
            .filter(|(_, a)| a.owner == owner)
            .map(|(&p, a)| (p, a.kind))
            .collect();
        for (p, kind) in rest {
            if kind == MemKind::Mapped {
                let _ = self.unregister_mapped(p);
            } else {
                let _ = self.free(p);
            }
        }
    }

    /// Device-wide memory, every process included (dead processes are reclaimed first).
    pub fn memory(&self) -> MemoryInfo {
        self.seg.reclaim_dead();
        let total = self.seg.total_memory();
        let used = self.seg.used_memory().min(total);
        MemoryInfo {
            total_bytes: total,
            used_bytes: used,
            free_bytes: total - used,
        }
    }

    /// Hold the device for a kernel of `duration_ns` that is ready now: returns its
    /// `[start, end)`.
    pub fn reserve(&self, duration_ns: u64) -> Result<(u64, u64)> {
        self.reserve_ready(duration_ns, sys::now_ns())
    }

    /// Hold the device for a kernel of `duration_ns` that became ready at `ready_ns` (see
    /// [`DeviceSegment::reserve`]).
    pub fn reserve_ready(&self, duration_ns: u64, ready_ns: u64) -> Result<(u64, u64)> {
        Ok(self.seg.reserve(self.slot()?, duration_ns, ready_ns))
    }

    /// MIG-like profiles: 7 compute slices and 8 memory slices, as on an A100/H100.
    pub fn partition_templates(&self) -> Vec<PartitionTemplate> {
        let mem = self.profile.memory_bytes;
        let slice = mem / 8;
        let gb = |b: u64| (b as f64 / (1u64 << 30) as f64).round() as u64;
        [
            (1, 1, 7),
            (1, 2, 4),
            (2, 2, 3),
            (3, 4, 2),
            (4, 4, 1),
            (7, 8, 1),
        ]
        .into_iter()
        .map(|(c, m, max)| PartitionTemplate {
            name: format!("{c}g.{}gb", gb(slice * m)),
            memory_bytes: slice * m,
            compute_units: self.profile.sms * c / 7,
            max_instances: max,
        })
        .collect()
    }

    fn slices_of(&self, template: &str) -> Option<(u32, u32)> {
        let t = self.partition_templates();
        let pos = t.iter().position(|p| p.name == template)?;
        Some([(1, 1), (1, 2), (2, 2), (3, 4), (4, 4), (7, 8)][pos])
    }

    pub fn partitions(&self) -> Vec<PartitionInfo> {
        lock(&self.partitions).clone()
    }

    pub fn create_partition(&self, template: &str) -> Result<PartitionInfo> {
        let (c, m) = self.slices_of(template).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "no partition template {template:?} on device {}; templates: {}",
                    self.index,
                    self.partition_templates()
                        .iter()
                        .map(|t| t.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let mut parts = lock(&self.partitions);
        let (used_c, used_m) = parts
            .iter()
            .filter_map(|p| self.slices_of(&p.template))
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        if used_c + c > 7 || used_m + m > 8 {
            return Err(Error::new(
                ErrorKind::OutOfMemory,
                format!(
                    "device {} has no room for a {template} partition",
                    self.index
                ),
            ));
        }
        let n = parts.len() as u32;
        let id = (0..=n)
            .map(|i| format!("{}-mig{i}", self.index))
            .find(|id| !parts.iter().any(|p| &p.id == id))
            .unwrap_or_default();
        let info = PartitionInfo {
            uuid: format!(
                "MIG-{}-{}",
                self.profile.uuid.trim_start_matches("GPU-"),
                id
            ),
            id,
            template: template.to_string(),
        };
        parts.push(info.clone());
        Ok(info)
    }

    pub fn destroy_partition(&self, id: &str) -> Result<()> {
        let mut parts = lock(&self.partitions);
        let before = parts.len();
        parts.retain(|p| p.id != id);
        if parts.len() == before {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no partition {id:?} on device {}", self.index),
            ));
        }
        Ok(())
    }
}
