//! GPU topology from the HAL: NVLink domains and NUMA nodes of a node's GPUs, and the node
//! description the engine takes.
//!
//! The HAL's `Backend::topology()` lists how each pair of devices is connected
//! ([`tf_hal::LinkKind`]). Devices joined by NVLink/HCCS links (directly or through others)
//! form an NVLink domain; a device with no such link has none. NUMA nodes come from
//! [`tf_hal::DeviceInfo::numa_node`]; where the driver does not say, devices joined by
//! same-NUMA links (PCIe switch or host bridge, NVLink/HCCS) share a NUMA node.

use tf_hal::{DeviceInfo, Link, LinkKind};

use crate::types::{GpuSpec, NodeSpec, Topology, TopologyMode, TopologyTier};

/// Per-device topology (by position in `devices`) from the HAL's device list and links.
/// Links naming devices not in the list are ignored.
pub fn gpu_topology(devices: &[DeviceInfo], links: &[Link]) -> Vec<Topology> {
    let pos = |index: u32| devices.iter().position(|d| d.index == index);
    let n = devices.len();
    let mut nvlink = UnionFind::new(n);
    let mut same_numa = UnionFind::new(n);
    let mut linked = vec![false; n];
    for l in links {
        let (Some(a), Some(b)) = (pos(l.a), pos(l.b)) else {
            continue;
        };
        match l.kind {
            LinkKind::NvLink { .. } | LinkKind::Hccs => {
                nvlink.union(a, b);
                linked[a] = true;
                linked[b] = true;
            }
            LinkKind::PcieSwitch | LinkKind::PcieHostBridge => same_numa.union(a, b),
            LinkKind::CrossNuma => {}
        }
    }
    // Dense ids in device order: the first device of a group names it.
    let mut domain_of_root: Vec<Option<u16>> = vec![None; n];
    let mut next_domain = 0u16;
    let mut numa_of_root: Vec<Option<u8>> = vec![None; n];
    let mut next_numa = 0u8;
    (0..n)
        .map(|i| {
            let nvlink_domain = if linked[i] {
                let r = nvlink.find(i);
                Some(*domain_of_root[r].get_or_insert_with(|| {
                    next_domain += 1;
                    next_domain - 1
                }))
            } else {
                None
            };
            let numa_node = match devices[i].numa_node {
                Some(x) => x.min(u8::MAX as u32) as u8,
                None => {
                    let r = same_numa.find(i);
                    *numa_of_root[r].get_or_insert_with(|| {
                        next_numa = next_numa.saturating_add(1);
                        next_numa - 1
                    })
                }
            };
            Topology {
                numa_node,
                nvlink_domain,
            }
        })
        .collect()
}

/// A node description from what the HAL reports: one GPU per device (model, vendor, peak FP16
/// TFLOPS, memory) with its NVLink domain and NUMA node, plus the node's host CPU and memory.
pub fn node_from_hal(
    name: &str,
    pool: &str,
    cpu_milli: u64,
    memory_bytes: u64,
    devices: &[DeviceInfo],
    links: &[Link],
) -> NodeSpec {
    let topo = gpu_topology(devices, links);
    NodeSpec {
        name: name.to_string(),
        pool: pool.to_string(),
        cpu_milli,
        memory_bytes,
        gpus: devices
            .iter()
            .zip(topo)
            .map(|(d, topology)| GpuSpec {
                model: d.model.clone(),
                vendor: d.vendor,
                tflops_milli: ((d.fp16_tflops * 1000.0).round() as u64).max(1),
                vram_bytes: d.total_memory_bytes.max(1),
                topology,
            })
            .collect(),
    }
}

/// The tier a set of GPUs (by topology) reaches.
pub fn tier_of<'a>(gpus: impl IntoIterator<Item = &'a Topology>) -> TopologyTier {
    let mut it = gpus.into_iter();
    let Some(first) = it.next() else {
        return TopologyTier::NvLink;
    };
    let (mut link, mut numa) = (first.nvlink_domain.is_some(), true);
    for t in it {
        link &= t.nvlink_domain.is_some() && t.nvlink_domain == first.nvlink_domain;
        numa &= t.numa_node == first.numa_node;
    }
    if link {
        TopologyTier::NvLink
    } else if numa {
        TopologyTier::Numa
    } else {
        TopologyTier::Node
    }
}

impl std::str::FromStr for TopologyMode {
    type Err = crate::SchedError;
    /// `prefer`, `ignore`, `require-nvlink`, `require-numa` (and `require-node`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "prefer" | "soft" | "" => TopologyMode::Prefer,
            "ignore" | "none" => TopologyMode::Ignore,
            "require-nvlink" | "nvlink" => TopologyMode::Require(TopologyTier::NvLink),
            "require-numa" | "numa" => TopologyMode::Require(TopologyTier::Numa),
            "require-node" => TopologyMode::Require(TopologyTier::Node),
            other => {
                return Err(crate::SchedError::InvalidRequest(format!(
                    "unknown topology mode {other:?} (expected prefer, ignore, require-nvlink or \
                     require-numa)"
                )));
            }
        })
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind((0..n).collect())
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // The smaller root stays, so ids follow device order.
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.0[hi] = lo;
        }
    }
}
