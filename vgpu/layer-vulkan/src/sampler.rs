//! Timing submissions, so that the controller knows how much device time a submission takes
//! on any driver (the Vulkan twin of the CUDA interposer's sampler).
//!
//! At most one submission per queue family is timed at a time, and at most every
//! [`INTERVAL_NS`]: a command buffer of ours goes before the batch's command buffers (reset two
//! timestamp queries, write the first once everything before it has finished) and one after
//! them (write the second, copy both with their availability into host-visible memory). On a
//! later submission the copied values are read — never with `vkGetQueryPoolResults`, which on
//! some drivers (lavapipe) waits for the whole queue — and the device time is added to the
//! region (`Region::add_sample`). Batches that carry device-group or protected-submit info
//! (whose arrays must match the command buffers) are never timed.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

use ash::vk;
use tf_vgpu_limiter::Client;

use crate::{DeviceData, lock};

/// How often a submission is timed.
pub const INTERVAL_NS: u64 = 5_000_000;

static NEXT_SAMPLE: AtomicU64 = AtomicU64::new(0);

/// One queue family's timing objects (created by the next layer, never charged).
pub(crate) struct Sampler {
    pool: vk::CommandPool,
    start: vk::CommandBuffer,
    end: vk::CommandBuffer,
    queries: vk::QueryPool,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    /// The host mapping of `memory`: first timestamp, its availability, second, availability.
    results: usize,
    mask: u64,
    pending: bool,
}

/// Submit infos with one batch timed; the command-buffer arrays they point at live here.
pub(crate) struct Timed<T> {
    pub infos: Vec<T>,
    pub family: u32,
    _cmds: Vec<vk::CommandBuffer>,
    _cmd_infos: Vec<vk::CommandBufferSubmitInfo<'static>>,
}

/// Whether a batch's `pNext` chain has structs whose arrays follow the command buffers.
fn untimeable(mut next: *const c_void) -> bool {
    while !next.is_null() {
        // SAFETY: a valid chain of the caller's: every element starts with sType and pNext.
        let base = unsafe { &*(next as *const vk::BaseInStructure<'_>) };
        if matches!(
            base.s_type,
            vk::StructureType::DEVICE_GROUP_SUBMIT_INFO | vk::StructureType::PROTECTED_SUBMIT_INFO
        ) {
            return true;
        }
        next = base.p_next.cast();
    }
    false
}

/// Read a finished sample into the region.
fn collect(s: &mut Sampler, data: &DeviceData, c: &Client) {
    if !s.pending {
        return;
    }
    let p = s.results as *const u64;
    // SAFETY: our mapping of four u64 (host-coherent memory the device writes once the timed
    // batch completes; availability words are written with the values).
    let [t0, a0, t1, a1] = unsafe {
        [
            p.read_volatile(),
            p.add(1).read_volatile(),
            p.add(2).read_volatile(),
            p.add(3).read_volatile(),
        ]
    };
    if a0 == 0 || a1 == 0 {
        return;
    }
    let ticks = t1.wrapping_sub(t0) & s.mask;
    c.region()
        .add_sample((ticks as f64 * data.timestamp_period) as u64);
    s.pending = false;
}

/// The family's sampler, created on first use; `None` where the family or device cannot time
/// (remembered, so that it is tried once).
fn sampler<'a>(
    data: &DeviceData,
    samplers: &'a mut std::collections::HashMap<u32, Option<Sampler>>,
    family: u32,
) -> Option<&'a mut Sampler> {
    samplers
        .entry(family)
        .or_insert_with(|| create(data, family))
        .as_mut()
}

fn create(data: &DeviceData, family: u32) -> Option<Sampler> {
    let (bits, capable) = *data.families.get(family as usize)?;
    let set_loader_data = data.set_loader_data?;
    let host_type = data.host_type?;
    if bits == 0 || !capable {
        return None;
    }
    let d = &data.next;
    // SAFETY: the next layer's functions on the caller's live device; everything created here
    // is owned by the returned Sampler (destroyed with the device) or destroyed on failure.
    let made = unsafe {
        (|| -> Result<Sampler, vk::Result> {
            let pool = d.create_command_pool(
                &vk::CommandPoolCreateInfo::default().queue_family_index(family),
                None,
            )?;
            let cmds = d.allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default()
                    .command_pool(pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(2),
            )?;
            for &cmd in &cmds {
                // A command buffer made below the loader needs its dispatch set up.
                let r =
                    set_loader_data(data.handle, vk::Handle::as_raw(cmd) as usize as *mut c_void);
                if r != vk::Result::SUCCESS {
                    return Err(r);
                }
            }
            let queries = d.create_query_pool(
                &vk::QueryPoolCreateInfo::default()
                    .query_type(vk::QueryType::TIMESTAMP)
                    .query_count(2),
                None,
            )?;
            let buffer = d.create_buffer(
                &vk::BufferCreateInfo::default()
                    .size(32)
                    .usage(vk::BufferUsageFlags::TRANSFER_DST),
                None,
            )?;
            let req = d.get_buffer_memory_requirements(buffer);
            if req.memory_type_bits & (1 << host_type) == 0 {
                return Err(vk::Result::ERROR_FEATURE_NOT_PRESENT);
            }
            let memory = d.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(req.size)
                    .memory_type_index(host_type),
                None,
            )?;
            d.bind_buffer_memory(buffer, memory, 0)?;
            let results = d.map_memory(memory, 0, 32, vk::MemoryMapFlags::empty())? as usize;
            let (start, end) = (cmds[0], cmds[1]);
            d.begin_command_buffer(start, &vk::CommandBufferBeginInfo::default())?;
            d.cmd_reset_query_pool(start, queries, 0, 2);
            // Written once all earlier work has finished: when the batch can start.
            d.cmd_write_timestamp(start, vk::PipelineStageFlags::BOTTOM_OF_PIPE, queries, 0);
            d.end_command_buffer(start)?;
            d.begin_command_buffer(end, &vk::CommandBufferBeginInfo::default())?;
            d.cmd_write_timestamp(end, vk::PipelineStageFlags::BOTTOM_OF_PIPE, queries, 1);
            d.cmd_copy_query_pool_results(
                end,
                queries,
                0,
                2,
                buffer,
                0,
                16,
                vk::QueryResultFlags::TYPE_64
                    | vk::QueryResultFlags::WITH_AVAILABILITY
                    | vk::QueryResultFlags::WAIT,
            );
            let host = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ)];
            d.cmd_pipeline_barrier(
                end,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &host,
                &[],
                &[],
            );
            d.end_command_buffer(end)?;
            Ok(Sampler {
                pool,
                start,
                end,
                queries,
                buffer,
                memory,
                results,
                mask: if bits >= 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                },
                pending: false,
            })
        })()
    };
    match made {
        Ok(s) => Some(s),
        Err(r) => {
            // Partly made objects stay with the device (a few handles, once per family).
            if tf_os::first_time("tf-vulkan-layer: sampler") {
                tracing::warn!(
                    "{}: cannot time submissions ({r:?}); the compute share is paced on an estimate",
                    crate::LAYER_NAME
                );
            }
            None
        }
    }
}

/// Pick a batch to time now, if one is due: returns the family's sampler state updated and
/// the two command buffers to put around that batch.
fn begin(
    data: &DeviceData,
    c: &Client,
    queue: vk::Queue,
) -> Option<(u32, vk::CommandBuffer, vk::CommandBuffer)> {
    let family = *lock(&data.queue_family).get(&vk::Handle::as_raw(queue))?;
    let mut samplers = lock(&data.samplers);
    let s = sampler(data, &mut samplers, family)?;
    collect(s, data, c);
    let now = tf_os::now_ns();
    if s.pending || now < NEXT_SAMPLE.load(Ordering::Relaxed) {
        return None;
    }
    NEXT_SAMPLE.store(now + INTERVAL_NS, Ordering::Relaxed);
    let p = s.results as *mut u64;
    for i in 0..4 {
        // SAFETY: our mapping of four u64; no timed batch is in flight (not pending).
        unsafe { p.add(i).write_volatile(0) };
    }
    s.pending = true;
    Some((family, s.start, s.end))
}

/// `batches` with one timed, or `None` to submit them as they are.
pub(crate) fn wrap_submit(
    data: &DeviceData,
    c: &Client,
    queue: vk::Queue,
    batches: &[vk::SubmitInfo<'_>],
) -> Option<Timed<vk::SubmitInfo<'static>>> {
    let at = batches
        .iter()
        .rposition(|b| b.command_buffer_count > 0 && !untimeable(b.p_next))?;
    let (family, start, end) = begin(data, c, queue)?;
    let b = &batches[at];
    let mut cmds = Vec::with_capacity(b.command_buffer_count as usize + 2);
    cmds.push(start);
    // SAFETY: the caller's array of command_buffer_count command buffers.
    cmds.extend_from_slice(unsafe {
        std::slice::from_raw_parts(b.p_command_buffers, b.command_buffer_count as usize)
    });
    cmds.push(end);
    let mut infos: Vec<vk::SubmitInfo<'static>> = batches
        .iter()
        .map(|b| {
            // SAFETY: a plain copy of the caller's struct (its pointers stay valid across the
            // call we make with it).
            unsafe { std::mem::transmute::<vk::SubmitInfo<'_>, vk::SubmitInfo<'static>>(*b) }
        })
        .collect();
    infos[at].command_buffer_count = cmds.len() as u32;
    infos[at].p_command_buffers = cmds.as_ptr();
    Some(Timed {
        infos,
        family,
        _cmds: cmds,
        _cmd_infos: Vec::new(),
    })
}

/// The same for `vkQueueSubmit2`.
pub(crate) fn wrap_submit2(
    data: &DeviceData,
    c: &Client,
    queue: vk::Queue,
    batches: &[vk::SubmitInfo2<'_>],
) -> Option<Timed<vk::SubmitInfo2<'static>>> {
    let at = batches
        .iter()
        .rposition(|b| b.command_buffer_info_count > 0 && !untimeable(b.p_next))?;
    let (family, start, end) = begin(data, c, queue)?;
    let b = &batches[at];
    let ours = |cmd| vk::CommandBufferSubmitInfo::default().command_buffer(cmd);
    let mut cmd_infos = Vec::with_capacity(b.command_buffer_info_count as usize + 2);
    cmd_infos.push(ours(start));
    // SAFETY: the caller's array of command_buffer_info_count structs, copied as they are.
    cmd_infos.extend(
        unsafe {
            std::slice::from_raw_parts(
                b.p_command_buffer_infos,
                b.command_buffer_info_count as usize,
            )
        }
        .iter()
        // SAFETY: as above.
        .map(|i| unsafe {
            std::mem::transmute::<
                vk::CommandBufferSubmitInfo<'_>,
                vk::CommandBufferSubmitInfo<'static>,
            >(*i)
        }),
    );
    cmd_infos.push(ours(end));
    let mut infos: Vec<vk::SubmitInfo2<'static>> = batches
        .iter()
        // SAFETY: a plain copy of the caller's struct (its pointers stay valid across the call).
        .map(|b| unsafe {
            std::mem::transmute::<vk::SubmitInfo2<'_>, vk::SubmitInfo2<'static>>(*b)
        })
        .collect();
    infos[at].command_buffer_info_count = cmd_infos.len() as u32;
    infos[at].p_command_buffer_infos = cmd_infos.as_ptr();
    Some(Timed {
        infos,
        family,
        _cmds: Vec::new(),
        _cmd_infos: cmd_infos,
    })
}

/// After a timed submission: if it failed, nothing will be written.
pub(crate) fn submitted(data: &DeviceData, family: u32, r: vk::Result) {
    if r != vk::Result::SUCCESS
        && let Some(Some(s)) = lock(&data.samplers).get_mut(&family)
    {
        s.pending = false;
    }
}

/// Destroy every sampler of a device that is going away (the program has waited for it).
pub(crate) fn destroy_all(data: &DeviceData) {
    let d = &data.next;
    for s in lock(&data.samplers).drain().filter_map(|(_, s)| s) {
        // SAFETY: our objects on the caller's device, which is idle before vkDestroyDevice.
        unsafe {
            d.destroy_query_pool(s.queries, None);
            d.destroy_buffer(s.buffer, None);
            d.free_memory(s.memory, None);
            d.free_command_buffers(s.pool, &[s.start, s.end]);
            d.destroy_command_pool(s.pool, None);
        }
    }
}
