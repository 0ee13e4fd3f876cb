//! One NPU: its description (from DCMI), metrics, vNPU partitions, and contexts.

use std::ffi::c_int;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ascend_sys::chips::ascend_chip;
use ascend_sys::dcmi::*;
use tf_hal::{
    BackendKind, BusySample, Capabilities, Context, DeviceInfo, DeviceUuid, Error, ErrorKind,
    MemoryInfo, PartitionInfo, PartitionTemplate, ProcessUsage, Result, Vendor,
};

use crate::Libs;
use crate::error::{acl_call, dcmi_call};

/// How often [`tf_hal::Device::utilization`] reads DCMI's AI-core rate over its window.
pub const UTILIZATION_SAMPLE: Duration = Duration::from_millis(100);

pub struct AscendDevice {
    libs: Arc<Libs>,
    info: DeviceInfo,
    card: c_int,
    chip: c_int,
}

fn c_text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Every device ACL numbers, described through DCMI (matched by logic ID).
pub fn enumerate(libs: &Arc<Libs>) -> Result<Vec<Arc<AscendDevice>>> {
    let mut count = 0u32;
    acl_call!(libs, aclrtGetDeviceCount(&mut count))?;
    let mut cards = [0 as c_int; 64];
    let mut n = 0 as c_int;
    dcmi_call!(
        libs,
        dcmi_get_card_list(&mut n, cards.as_mut_ptr(), cards.len() as c_int)
    )?;
    let mut by_logic = Vec::new();
    for &card in &cards[..n.clamp(0, 64) as usize] {
        let mut chips = 0 as c_int;
        dcmi_call!(libs, dcmi_get_device_num_in_card(card, &mut chips))?;
        for chip in 0..chips {
            let mut logic = 0 as c_int;
            dcmi_call!(libs, dcmi_get_device_logic_id(&mut logic, card, chip))?;
            by_logic.push((logic, card, chip));
        }
    }
    let mut devices = Vec::new();
    for id in 0..count {
        let (_, card, chip) = *by_logic
            .iter()
            .find(|(l, ..)| *l == id as c_int)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidDevice,
                    format!("ACL device {id} has no DCMI logic ID {id}"),
                )
            })?;
        devices.push(Arc::new(describe(libs, id, card, chip)?));
    }
    Ok(devices)
}

fn describe(libs: &Arc<Libs>, index: u32, card: c_int, chip: c_int) -> Result<AscendDevice> {
    // SAFETY: an all-zero dcmi_chip_info is valid (bytes and an int).
    let mut ci: dcmi_chip_info = unsafe { std::mem::zeroed() };
    dcmi_call!(libs, dcmi_get_device_chip_info(card, chip, &mut ci))?;
    let model = format!("{}{}", c_text(&ci.chip_type), c_text(&ci.chip_name));
    let memory_mb = hbm_or_memory(libs, card, chip)?.0;
    let mut pcie = dcmi_pcie_info {
        deviceid: 0,
        venderid: 0,
        subvenderid: 0,
        subdeviceid: 0,
        bdf_deviceid: 0,
        bdf_busid: 0,
        bdf_funcid: 0,
    };
    let pci_bus_id = match dcmi_call!(libs, dcmi_get_device_pcie_info(card, chip, &mut pcie)) {
        Ok(()) => format!(
            "00000000:{:02X}:{:02X}.{:X}",
            pcie.bdf_busid, pcie.bdf_deviceid, pcie.bdf_funcid
        ),
        Err(_) => String::new(),
    };
    let mut die = dcmi_die_id { soc_die: [0; 5] };
    let uuid = match dcmi_call!(libs, dcmi_get_device_die_v2(card, chip, VDIE, &mut die)) {
        Ok(()) => {
            // 20 bytes of die ID folded into 16: the fifth word into the first.
            let mut b = [0u8; 16];
            for (i, w) in die.soc_die[..4].iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
            }
            for (i, x) in die.soc_die[4].to_be_bytes().iter().enumerate() {
                b[i] ^= x;
            }
            b
        }
        Err(_) => {
            // No die ID: derive one from the card and chip (stable on this machine).
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&(card as u32).to_be_bytes());
            b[4..8].copy_from_slice(&(chip as u32).to_be_bytes());
            b
        }
    };
    // Ascend has no GPU-… UUIDs: 32 hex digits, dashed like one.
    let uuid = DeviceUuid::from_bytes(uuid).to_string()[4..].to_string();
    let mut version = [0 as core::ffi::c_char; 64];
    let driver_version = match dcmi_call!(
        libs,
        dcmi_get_driver_version(version.as_mut_ptr(), version.len() as u32)
    ) {
        Ok(()) => c_text(&version.map(|c| c as u8)),
        Err(_) => String::new(),
    };
    let known = ascend_chip(&model);
    Ok(AscendDevice {
        libs: libs.clone(),
        info: DeviceInfo {
            index,
            uuid,
            vendor: Vendor::Ascend,
            model,
            total_memory_bytes: memory_mb << 20,
            compute_units: ci.aicore_cnt,
            fp16_tflops: known.map_or(0.0, |c| c.fp16_tflops),
            pci_bus_id,
            numa_node: None,
            driver_version,
            capabilities: Capabilities {
                soft_limit: true,
                hard_limit: false,
                partitioning: known.is_some_and(|c| !c.templates.is_empty()),
                snapshot: false,
                remoting: false,
            },
            backend: BackendKind::Ascend,
        },
        card,
        chip,
    })
}

/// (total, used) MB: HBM where the chip has it, else the device memory.
fn hbm_or_memory(libs: &Libs, card: c_int, chip: c_int) -> Result<(u64, u64)> {
    let mut h = dcmi_hbm_info {
        memory_size: 0,
        freq: 0,
        memory_usage: 0,
        temp: 0,
        bandwith_util_rate: 0,
    };
    if dcmi_call!(libs, dcmi_get_device_hbm_info(card, chip, &mut h)).is_ok() && h.memory_size > 0 {
        return Ok((h.memory_size, h.memory_usage));
    }
    // SAFETY: an all-zero dcmi_get_memory_info_stru is valid (numbers and bytes).
    let mut m: dcmi_get_memory_info_stru = unsafe { std::mem::zeroed() };
    dcmi_call!(libs, dcmi_get_device_memory_info_v3(card, chip, &mut m))?;
    Ok((
        m.memory_size,
        m.memory_size.saturating_sub(m.memory_available),
    ))
}

impl AscendDevice {
    fn vnpu_ids(&self) -> Result<Vec<u32>> {
        // SAFETY: an all-zero dcmi_soc_total_resource is valid.
        let mut t: dcmi_soc_total_resource = unsafe { std::mem::zeroed() };
        let mut size = std::mem::size_of_val(&t) as u32;
        dcmi_call!(
            self.libs,
            dcmi_get_device_info(
                self.card,
                self.chip,
                DCMI_MAIN_CMD_VDEV_MNG,
                DCMI_VMNG_SUB_CMD_GET_TOTAL_RESOURCE,
                &mut t as *mut _ as *mut core::ffi::c_void,
                &mut size
            )
        )?;
        Ok(t.vdev_id[..(t.vdev_num as usize).min(t.vdev_id.len())].to_vec())
    }

    fn vnpu(&self, id: u32) -> Result<PartitionInfo> {
        // SAFETY: an all-zero dcmi_vdev_query_stru is valid.
        let mut q: dcmi_vdev_query_stru = unsafe { std::mem::zeroed() };
        q.vdev_id = id;
        let mut size = std::mem::size_of_val(&q) as u32;
        dcmi_call!(
            self.libs,
            dcmi_get_device_info(
                self.card,
                self.chip,
                DCMI_MAIN_CMD_VDEV_MNG,
                DCMI_VMNG_SUB_CMD_GET_VDEV_RESOURCE,
                &mut q as *mut _ as *mut core::ffi::c_void,
                &mut size
            )
        )?;
        Ok(PartitionInfo {
            id: id.to_string(),
            template: c_text(&q.query_info.name.map(|c| c as u8)),
            uuid: format!("{}-vnpu{id}", self.info.uuid),
        })
    }
}

impl tf_hal::Device for AscendDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> Result<MemoryInfo> {
        let (total, used) = hbm_or_memory(&self.libs, self.card, self.chip)?;
        let (total, used) = (total << 20, (used << 20).min(total << 20));
        Ok(MemoryInfo {
            total_bytes: total,
            used_bytes: used,
            free_bytes: total - used,
        })
    }

    fn processes(&self) -> Result<Vec<ProcessUsage>> {
        let mut buf: Vec<dcmi_proc_mem_info> = (0..256)
            .map(|_| dcmi_proc_mem_info {
                proc_id: 0,
                proc_mem_usage: 0,
            })
            .collect();
        let mut n = buf.len() as c_int;
        dcmi_call!(
            self.libs,
            dcmi_get_device_resource_info(self.card, self.chip, buf.as_mut_ptr(), &mut n)
        )?;
        buf.truncate(n.clamp(0, 256) as usize);
        Ok(buf
            .iter()
            .map(|p| ProcessUsage {
                pid: p.proc_id as u32,
                #[allow(clippy::useless_conversion)] // `unsigned long`: u64 here
                memory_bytes: u64::from(p.proc_mem_usage),
                busy_ns: None,
            })
            .collect())
    }

    fn busy_sample(&self) -> Result<Option<BusySample>> {
        Ok(None)
    }

    /// DCMI's AI-core utilization, read every [`UTILIZATION_SAMPLE`] over `window` and averaged.
    fn utilization(&self, window: Duration) -> Result<f64> {
        let start = Instant::now();
        let samples = (window.as_nanos() / UTILIZATION_SAMPLE.as_nanos()).max(1) as u32;
        let mut sum = 0.0;
        for i in 1..=samples {
            let due = start + window * i / samples;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let mut rate = 0u32;
            dcmi_call!(
                self.libs,
                dcmi_get_device_utilization_rate(
                    self.card,
                    self.chip,
                    DCMI_UTILIZATION_RATE_AICORE as c_int,
                    &mut rate
                )
            )?;
            sum += rate as f64;
        }
        Ok(sum / samples as f64)
    }

    fn create_context(&self) -> Result<Arc<dyn Context>> {
        Ok(Arc::new(crate::context::AscendContext::new(
            self.libs.clone(),
            self.info.index,
        )?))
    }

    fn partition_templates(&self) -> Result<Vec<PartitionTemplate>> {
        let Some(chip) = ascend_chip(&self.info.model) else {
            return Ok(Vec::new());
        };
        Ok(chip
            .templates
            .iter()
            .map(|t| PartitionTemplate {
                name: t.name.to_string(),
                memory_bytes: t.memory_bytes,
                compute_units: t.ai_cores,
                max_instances: (self.info.compute_units / t.ai_cores.max(1))
                    .min((self.info.total_memory_bytes / t.memory_bytes.max(1)) as u32)
                    .min(chip.ai_cpus / t.ai_cpus.max(1)),
            })
            .collect())
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>> {
        self.vnpu_ids()?
            .into_iter()
            .map(|id| self.vnpu(id))
            .collect()
    }

    fn create_partition(&self, template: &str) -> Result<PartitionInfo> {
        if !self
            .partition_templates()?
            .iter()
            .any(|t| t.name == template)
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no vNPU template {template:?} on NPU {} ({}); templates: {}",
                    self.info.index,
                    self.info.model,
                    self.partition_templates()?
                        .iter()
                        .map(|t| t.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        // SAFETY: an all-zero dcmi_create_vdev_res_stru is valid (vdev_id 0: the driver picks).
        let mut req: dcmi_create_vdev_res_stru = unsafe { std::mem::zeroed() };
        for (d, b) in req.template_name.iter_mut().zip(template.bytes().take(31)) {
            *d = b as core::ffi::c_char;
        }
        // SAFETY: as above.
        let mut out: dcmi_create_vdev_out = unsafe { std::mem::zeroed() };
        dcmi_call!(
            self.libs,
            dcmi_create_vdevice(self.card, self.chip, &mut req, &mut out)
        )
        .map_err(|e| {
            Error::new(
                e.kind,
                format!(
                    "creating a {template} vNPU on NPU {}: {}",
                    self.info.index, e.message
                ),
            )
            .with_vendor(
                e.vendor.as_ref().map_or(0, |v| v.code),
                e.vendor.map_or(String::new(), |v| v.name),
            )
        })?;
        self.vnpu(out.vdev_id)
    }

    fn destroy_partition(&self, id: &str) -> Result<()> {
        let vdev: u32 = id.parse().map_err(|_| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "no vNPU {id:?} on NPU {} (vNPU IDs are numbers)",
                    self.info.index
                ),
            )
        })?;
        dcmi_call!(
            self.libs,
            dcmi_set_destroy_vdevice(self.card, self.chip, vdev)
        )
        .map_err(|e| {
            let kind = if e.kind == ErrorKind::InvalidValue {
                ErrorKind::NotFound
            } else {
                e.kind
            };
            Error::new(
                kind,
                format!("no vNPU {id} on NPU {}: {}", self.info.index, e.message),
            )
        })
    }
}
