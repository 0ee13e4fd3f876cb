//! Virtual NPUs: created from a chip's templates, kept in a file per device in the machine's
//! shared folder (changed under an exclusive file lock), so that they outlive the process that
//! made them and every process sees the same ones, like the real driver's.

use std::ffi::{c_int, c_uint, c_void};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use ascend_sys::dcmi::*;
use serde::{Deserialize, Serialize};
use tf_fake_gpu::FakeDevice;
use tf_fake_gpu::profile::{AscendChip, VnpuTemplate, ascend_chip};
use tf_fake_gpu::sys::FileLock;

use crate::ffi::{out, read};
use crate::imp::{DcmiResult, code, device, machine};

/// vNPU slots per device; IDs are `100 + 16 × device + slot`.
pub const SLOTS: u32 = 16;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Store {
    vnpus: Vec<Vnpu>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Vnpu {
    id: u32,
    template: String,
}

fn base_id(card: c_int) -> u32 {
    100 + SLOTS * card as u32
}

fn store_path(d: &FakeDevice) -> DcmiResult<PathBuf> {
    let dir = &machine()?.gpu.config().shm_dir;
    Ok(dir.join(format!("tf-fake-npu-vnpus-{}.json", d.profile().uuid)))
}

/// Run `f` on the device's vNPUs under the file lock; what it leaves is written back.
fn with_store<T>(d: &FakeDevice, f: impl FnOnce(&mut Store) -> DcmiResult<T>) -> DcmiResult<T> {
    let path = store_path(d)?;
    let fail = |what: &str, e: std::io::Error| {
        tracing::warn!("vNPU table {}: {what}: {e}", path.display());
        code(DCMI_ERR_CODE_INNER_ERR)
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| fail("open", e))?;
    let _lock = FileLock::exclusive(file.as_raw_fd()).map_err(|e| fail("lock", e))?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| fail("read", e))?;
    let mut store: Store = if text.trim().is_empty() {
        Store::default()
    } else {
        serde_json::from_str(&text).unwrap_or_default()
    };
    let before = serde_json::to_string(&store).unwrap_or_default();
    let result = f(&mut store)?;
    let after = serde_json::to_string(&store).unwrap_or_default();
    if after != before {
        file.set_len(0).map_err(|e| fail("truncate", e))?;
        file.rewind().map_err(|e| fail("rewind", e))?;
        file.write_all(after.as_bytes())
            .map_err(|e| fail("write", e))?;
    }
    Ok(result)
}

fn chip(d: &FakeDevice) -> DcmiResult<&'static AscendChip> {
    ascend_chip(&d.profile().model).ok_or(code(DCMI_ERR_CODE_NOT_SUPPORT))
}

fn template(chip: &AscendChip, name: &str) -> Option<&'static VnpuTemplate> {
    let t: &'static [VnpuTemplate] = chip.templates;
    t.iter().find(|t| t.name == name)
}

/// (AI cores, AI CPUs, bytes) the device's vNPUs hold.
fn used(chip: &AscendChip, store: &Store) -> (u32, u32, u64) {
    store
        .vnpus
        .iter()
        .filter_map(|v| template(chip, &v.template))
        .fold((0, 0, 0), |(c, p, m), t| {
            (c + t.ai_cores, p + t.ai_cpus, m + t.memory_bytes)
        })
}

fn c_name(chars: &[core::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn create(
    card: c_int,
    dev: c_int,
    vdev: *mut dcmi_create_vdev_res_stru,
    out_info: *mut dcmi_create_vdev_out,
) -> DcmiResult {
    let d = device(card, dev)?;
    let req = read(vdev as *const dcmi_create_vdev_res_stru)?;
    if out_info.is_null() {
        return Err(code(DCMI_ERR_CODE_INVALID_PARAMETER));
    }
    let name = c_name(&req.template_name);
    let chip = chip(d)?;
    let t = template(chip, &name).ok_or_else(|| {
        tracing::debug!("no vNPU template {name:?} on a {}", chip.model);
        code(DCMI_ERR_CODE_INVALID_PARAMETER)
    })?;
    let p = d.profile();
    let base = base_id(card);
    let id = with_store(d, |s| {
        let (cores, cpus, mem) = used(chip, s);
        if cores + t.ai_cores > p.sms
            || cpus + t.ai_cpus > chip.ai_cpus
            || mem + t.memory_bytes > p.memory_bytes
        {
            return Err(code(DCMI_ERR_CODE_RESOURCE_OCCUPIED));
        }
        let taken = |id: u32| s.vnpus.iter().any(|v| v.id == id);
        let id = if req.vdev_id == 0 {
            (base..base + SLOTS)
                .find(|&i| !taken(i))
                .ok_or(code(DCMI_ERR_CODE_RESOURCE_OCCUPIED))?
        } else if (base..base + SLOTS).contains(&req.vdev_id) && !taken(req.vdev_id) {
            req.vdev_id
        } else {
            return Err(code(DCMI_ERR_CODE_INVALID_PARAMETER));
        };
        s.vnpus.push(Vnpu {
            id,
            template: name.clone(),
        });
        Ok(id)
    })?;
    tracing::info!(card, vdev_id = id, template = name, "vNPU created");
    out(
        out_info,
        dcmi_create_vdev_out {
            vdev_id: id,
            pcie_bus: 0,
            pcie_device: id - base + 1,
            pcie_func: 0,
            vfg_id: id - base,
            reserved: [0; 32],
        },
    )
}

pub fn destroy(card: c_int, dev: c_int, id: c_uint) -> DcmiResult {
    let d = device(card, dev)?;
    with_store(d, |s| {
        let before = s.vnpus.len();
        s.vnpus.retain(|v| v.id != id);
        if s.vnpus.len() == before {
            return Err(code(DCMI_ERR_CODE_INVALID_PARAMETER));
        }
        Ok(())
    })
}

/// `computing` with AI cores, AI CPUs and memory (MB).
fn computing(cores: u32, cpus: u32, bytes: u64) -> dcmi_computing_resource {
    // SAFETY: an all-zero dcmi_computing_resource is valid (numbers and byte arrays).
    let mut c: dcmi_computing_resource = unsafe { std::mem::zeroed() };
    c.aic = cores as f32;
    c.device_aicpu = cpus as u16;
    c.memory_size = bytes >> 20;
    c.vdev_memory_total = bytes;
    c.vdev_memory_free = bytes;
    c
}

/// Write `v` into the caller's `buf` of `*size` bytes; `*size` becomes the answer's size.
fn answer<T>(buf: *mut c_void, size: *mut c_uint, v: T) -> DcmiResult {
    let cap = read(size as *const c_uint)? as usize;
    if buf.is_null() || cap < std::mem::size_of::<T>() {
        return Err(code(DCMI_ERR_CODE_INVALID_PARAMETER));
    }
    out(buf as *mut T, v)?;
    out(size, std::mem::size_of::<T>() as c_uint)
}

pub fn device_info(
    card: c_int,
    dev: c_int,
    main: dcmi_main_cmd,
    sub: c_uint,
    buf: *mut c_void,
    size: *mut c_uint,
) -> DcmiResult {
    let d = device(card, dev)?;
    if main != DCMI_MAIN_CMD_VDEV_MNG {
        return Err(code(DCMI_ERR_CODE_NOT_SUPPORT));
    }
    let chip = chip(d)?;
    let p = d.profile();
    let store = with_store(d, |s| Ok(s.clone()))?;
    match sub {
        DCMI_VMNG_SUB_CMD_GET_TOTAL_RESOURCE => {
            // SAFETY: an all-zero dcmi_soc_total_resource is valid.
            let mut t: dcmi_soc_total_resource = unsafe { std::mem::zeroed() };
            t.vdev_num = store.vnpus.len() as u32;
            for (slot, v) in t.vdev_id.iter_mut().zip(&store.vnpus) {
                *slot = v.id;
            }
            t.computing = computing(p.sms, chip.ai_cpus, p.memory_bytes);
            answer(buf, size, t)
        }
        DCMI_VMNG_SUB_CMD_GET_FREE_RESOURCE => {
            let (cores, cpus, mem) = used(chip, &store);
            // SAFETY: an all-zero dcmi_soc_free_resource is valid.
            let mut f: dcmi_soc_free_resource = unsafe { std::mem::zeroed() };
            f.computing = computing(
                p.sms - cores.min(p.sms),
                chip.ai_cpus - cpus.min(chip.ai_cpus),
                p.memory_bytes - mem.min(p.memory_bytes),
            );
            answer(buf, size, f)
        }
        DCMI_VMNG_SUB_CMD_GET_VDEV_RESOURCE => {
            let q = read(buf as *const dcmi_vdev_query_stru)?;
            let v = store
                .vnpus
                .iter()
                .find(|v| v.id == q.vdev_id)
                .ok_or(code(DCMI_ERR_CODE_INVALID_PARAMETER))?;
            let t = template(chip, &v.template).ok_or(code(DCMI_ERR_CODE_INNER_ERR))?;
            let mut answer_q = q;
            answer_q.query_info.name = [0; 16];
            for (d, b) in answer_q
                .query_info
                .name
                .iter_mut()
                .zip(v.template.bytes().take(15))
            {
                *d = b as core::ffi::c_char;
            }
            answer_q.query_info.vfg_id = v.id - base_id(card);
            answer_q.query_info.computing = computing(t.ai_cores, t.ai_cpus, t.memory_bytes);
            answer(buf, size, answer_q)
        }
        _ => Err(code(DCMI_ERR_CODE_NOT_SUPPORT)),
    }
}
