//! An execution context: one logical device and queue, with the HAL's memory, modules,
//! launches, streams and events on top (see the crate's documentation for the mapping).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ash::vk;
use tf_hal::{
    ContextSnapshot, DevicePtr, Error, ErrorKind, EventHandle, FunctionHandle, KernelArgs,
    LaunchConfig, MemoryInfo, ModuleHandle, ModuleImage, Result, StreamHandle,
};

use crate::DeviceShared;
use crate::error::{vk_err, vk_error};
use crate::spirv::SpirV;

/// Size of the staging buffer copies go through (a copy of more moves in pieces of this size).
const STAGING_BYTES: u64 = 8 << 20;
/// Most bytes of kernel arguments (push constants) a launch may pass.
const MAX_ARG_BYTES: u32 = 256;
/// Slots of 16 bytes in the host-visible buffer that timestamps are copied into (reading a
/// query pool directly waits for the whole queue on some drivers, lavapipe among them).
const RESULT_SLOTS: u32 = 4096;

/// A HAL context on a Vulkan device.
pub struct VulkanContext {
    inner: Arc<Inner>,
}

/// The context's device, queue and state (shared with the device's busy-time readings).
pub(crate) struct Inner {
    shared: Arc<DeviceShared>,
    device: ash::Device,
    queue: vk::Queue,
    layout: vk::PipelineLayout,
    /// Bytes of push constants the pipeline layout declares.
    push_bytes: u32,
    /// Nanoseconds per timestamp tick, and the bits a timestamp has.
    timestamp_period: f64,
    timestamp_mask: u64,
    /// Memory type indices: device-local buffers, host-visible staging.
    device_type: u32,
    staging_type: u32,
    /// Where submissions copy their timestamps (RESULT_SLOTS slots of two u64), mapped.
    results: Alloc,
    results_ptr: usize,
    state: Mutex<State>,
}

struct State {
    pool: vk::CommandPool,
    free_cmds: Vec<vk::CommandBuffer>,
    free_timers: Vec<Timer>,
    free_slots: Vec<u32>,
    inflight: Vec<Inflight>,
    allocs: BTreeMap<u64, Alloc>,
    modules: HashMap<u64, Module>,
    functions: HashMap<u64, Function>,
    streams: HashMap<u64, Stream>,
    /// Semaphores of destroyed streams (events recorded on them may still be queried).
    retired: Vec<vk::Semaphore>,
    events: HashMap<u64, Event>,
    staging: Option<Alloc>,
    staging_ptr: usize,
    next: u64,
}

/// A submission not yet seen complete.
struct Inflight {
    sem: vk::Semaphore,
    value: u64,
    cmd: vk::CommandBuffer,
    /// Two timestamps around a launch, for the device's busy time.
    timer: Option<Timer>,
}

/// Two timestamp queries and the result slot they are copied into.
#[derive(Clone, Copy)]
struct Timer {
    pool: vk::QueryPool,
    slot: u32,
}

struct Alloc {
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    size: u64,
}

struct Module {
    shader: vk::ShaderModule,
    entries: Vec<String>,
}

struct Function {
    module: u64,
    name: CString,
    /// One pipeline per block shape.
    pipelines: HashMap<[u32; 3], vk::Pipeline>,
}

struct Stream {
    sem: vk::Semaphore,
    /// The value the stream's last submission signals.
    value: u64,
}

struct Event {
    /// One timestamp query, copied into slot 0 of the timer's result slot.
    timer: Timer,
    /// The stream semaphore and value that complete the last record.
    recorded: Option<(vk::Semaphore, u64)>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bad_handle(what: &str, h: u64) -> Error {
    Error::invalid_handle(format!("unknown {what} {h:#x}"))
}

impl VulkanContext {
    pub(crate) fn create(shared: Arc<DeviceShared>) -> Result<VulkanContext> {
        let inner = Arc::new(Inner::create(shared.clone())?);
        tracing::debug!(
            device = %shared.physical.info.model,
            push_bytes = inner.push_bytes,
            "Vulkan context created"
        );
        shared
            .contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&inner));
        Ok(VulkanContext { inner })
    }
}

impl Inner {
    fn create(shared: Arc<DeviceShared>) -> Result<Inner> {
        let p = &shared.physical;
        let instance = &shared.instance.instance;
        let name = &p.info.model;
        if p.properties.api_version < vk::API_VERSION_1_2 {
            return Err(Error::not_supported(format!(
                "{name} implements Vulkan {}; the backend needs 1.2 (buffer device addresses, timeline semaphores)",
                p.details.api_version
            )));
        }
        let family = p
            .details
            .compute_queue_families
            .iter()
            .find(|f| f.timestamp_valid_bits > 0)
            .or(p.details.compute_queue_families.first())
            .copied()
            .ok_or_else(|| Error::not_supported(format!("{name} has no compute queue")))?;
        // What the device can do.
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default();
        let mut clock = vk::PhysicalDeviceShaderClockFeaturesKHR::default();
        let has_clock = p.details.shader_device_clock;
        let supported = {
            let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut f12);
            if has_clock {
                f2 = f2.push_next(&mut clock);
            }
            // SAFETY: a query of our live instance's physical device, the chain on the stack.
            unsafe { instance.get_physical_device_features2(p.handle, &mut f2) };
            f2.features
        };
        if f12.buffer_device_address != vk::TRUE || f12.timeline_semaphore != vk::TRUE {
            return Err(Error::not_supported(format!(
                "{name} lacks bufferDeviceAddress or timelineSemaphore (Vulkan 1.2 features the backend needs)"
            )));
        }
        // What we turn on.
        let mut want12 = vk::PhysicalDeviceVulkan12Features::default()
            .buffer_device_address(true)
            .timeline_semaphore(true);
        let mut want_clock = vk::PhysicalDeviceShaderClockFeaturesKHR::default()
            .shader_device_clock(has_clock)
            .shader_subgroup_clock(clock.shader_subgroup_clock == vk::TRUE);
        let features = vk::PhysicalDeviceFeatures::default()
            .shader_int64(supported.shader_int64 == vk::TRUE)
            .shader_float64(supported.shader_float64 == vk::TRUE)
            .shader_int16(supported.shader_int16 == vk::TRUE);
        let mut extensions = Vec::new();
        if has_clock {
            extensions.push(ash::khr::shader_clock::NAME.as_ptr());
        }
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family.index)
            .queue_priorities(&priorities)];
        let mut create = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&extensions)
            .enabled_features(&features)
            .push_next(&mut want12);
        if has_clock {
            create = create.push_next(&mut want_clock);
        }
        // SAFETY: the create info and everything it points at live across the call.
        let device = unsafe { instance.create_device(p.handle, &create, None) }
            .map_err(vk_err("vkCreateDevice"))?;

        let memory = &p.memory;
        let types = &memory.memory_types[..memory.memory_type_count as usize];
        let find = |want: vk::MemoryPropertyFlags| {
            types
                .iter()
                .position(|t| t.property_flags.contains(want))
                .map(|i| i as u32)
        };
        let device_type = find(vk::MemoryPropertyFlags::DEVICE_LOCAL).unwrap_or(0);
        let staging_type =
            find(vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT);
        let push_bytes = p
            .properties
            .limits
            .max_push_constants_size
            .min(MAX_ARG_BYTES);
        // SAFETY: calls on the device we just created (destroyed below if anything fails).
        let made = unsafe {
            (|| -> std::result::Result<_, Error> {
                let staging_type = staging_type.ok_or_else(|| {
                    Error::not_supported(format!("{name} has no host-visible coherent memory"))
                })?;
                let queue = device.get_device_queue(family.index, 0);
                let ranges = [vk::PushConstantRange::default()
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
                    .offset(0)
                    .size(push_bytes)];
                let layout = device
                    .create_pipeline_layout(
                        &vk::PipelineLayoutCreateInfo::default().push_constant_ranges(&ranges),
                        None,
                    )
                    .map_err(vk_err("vkCreatePipelineLayout"))?;
                let pool = device
                    .create_command_pool(
                        &vk::CommandPoolCreateInfo::default()
                            .queue_family_index(family.index)
                            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                        None,
                    )
                    .map_err(vk_err("vkCreateCommandPool"))?;
                Ok((staging_type, queue, layout, pool))
            })()
        };
        let (staging_type, queue, layout, pool) = match made {
            Ok(v) => v,
            Err(e) => {
                // SAFETY: the device we created, with nothing in flight.
                unsafe { device.destroy_device(None) };
                return Err(e);
            }
        };
        let results = create_buffer(
            &device,
            RESULT_SLOTS as u64 * 16,
            vk::BufferUsageFlags::TRANSFER_DST,
            staging_type,
        )
        .and_then(|a| map(&device, &a).map(|ptr| (a, ptr)));
        let (results, results_ptr) = match results {
            Ok(v) => v,
            Err(e) => {
                // SAFETY: our device, with nothing in flight; what we created on it goes first.
                unsafe {
                    device.destroy_command_pool(pool, None);
                    device.destroy_pipeline_layout(layout, None);
                    device.destroy_device(None);
                }
                return Err(e);
            }
        };
        let bits = family.timestamp_valid_bits;
        let inner = Inner {
            device,
            queue,
            layout,
            push_bytes,
            timestamp_period: p.properties.limits.timestamp_period as f64,
            timestamp_mask: if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            },
            device_type,
            staging_type,
            results,
            results_ptr,
            state: Mutex::new(State {
                pool,
                free_cmds: Vec::new(),
                free_timers: Vec::new(),
                free_slots: (0..RESULT_SLOTS).rev().collect(),
                inflight: Vec::new(),
                allocs: BTreeMap::new(),
                modules: HashMap::new(),
                functions: HashMap::new(),
                streams: HashMap::new(),
                retired: Vec::new(),
                events: HashMap::new(),
                staging: None,
                staging_ptr: 0,
                next: 1,
            }),
            shared,
        };
        let sem = inner.timeline()?;
        lock(&inner.state)
            .streams
            .insert(StreamHandle::DEFAULT.0, Stream { sem, value: 0 });
        Ok(inner)
    }

    fn timeline(&self) -> Result<vk::Semaphore> {
        let mut t = vk::SemaphoreTypeCreateInfo::default()
            .semaphore_type(vk::SemaphoreType::TIMELINE)
            .initial_value(0);
        // SAFETY: our device; the create info lives across the call.
        unsafe {
            self.device
                .create_semaphore(&vk::SemaphoreCreateInfo::default().push_next(&mut t), None)
        }
        .map_err(vk_err("vkCreateSemaphore"))
    }

    fn reached(&self, sem: vk::Semaphore, value: u64) -> Result<bool> {
        // SAFETY: a semaphore of our device (stream semaphores live as long as the context).
        let v = unsafe { self.device.get_semaphore_counter_value(sem) }
            .map_err(vk_err("vkGetSemaphoreCounterValue"))?;
        Ok(v >= value)
    }

    fn wait(&self, waits: &[(vk::Semaphore, u64)]) -> Result<()> {
        if waits.is_empty() {
            return Ok(());
        }
        let sems: Vec<vk::Semaphore> = waits.iter().map(|w| w.0).collect();
        let values: Vec<u64> = waits.iter().map(|w| w.1).collect();
        let info = vk::SemaphoreWaitInfo::default()
            .semaphores(&sems)
            .values(&values);
        // SAFETY: semaphores of our device; the wait info lives across the call.
        unsafe { self.device.wait_semaphores(&info, u64::MAX) }.map_err(vk_err("vkWaitSemaphores"))
    }

    /// Take back what finished submissions used, adding their kernels' device time to the
    /// device's busy time.
    pub(crate) fn reap(&self) -> Result<()> {
        let mut st = lock(&self.state);
        self.reap_locked(&mut st)
    }

    fn reap_locked(&self, st: &mut State) -> Result<()> {
        let mut i = 0;
        while i < st.inflight.len() {
            let f = &st.inflight[i];
            if !self.reached(f.sem, f.value)? {
                i += 1;
                continue;
            }
            let f = st.inflight.swap_remove(i);
            if let Some(timer) = f.timer {
                let ts = self.read_slot(timer.slot);
                let ticks = (ts[1].wrapping_sub(ts[0])) & self.timestamp_mask;
                let ns = (ticks as f64 * self.timestamp_period) as u64;
                self.shared.busy_ns.fetch_add(ns, Ordering::AcqRel);
                st.free_timers.push(timer);
            }
            // SAFETY: a command buffer of our pool whose submission has completed.
            unsafe {
                self.device
                    .reset_command_buffer(f.cmd, vk::CommandBufferResetFlags::empty())
            }
            .map_err(vk_err("vkResetCommandBuffer"))?;
            st.free_cmds.push(f.cmd);
        }
        Ok(())
    }

    /// Record a command buffer with `record` and submit it on `stream`, after the stream's
    /// previous work and `also_wait`. Returns the semaphore value that marks it complete.
    fn submit(
        &self,
        st: &mut State,
        stream: u64,
        timed: bool,
        also_wait: Option<(vk::Semaphore, u64)>,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<(vk::Semaphore, u64)> {
        self.reap_locked(st)?;
        let (sem, value) = {
            let s = st
                .streams
                .get(&stream)
                .ok_or_else(|| bad_handle("stream", stream))?;
            (s.sem, s.value)
        };
        let cmd = match st.free_cmds.pop() {
            Some(c) => c,
            None => {
                let info = vk::CommandBufferAllocateInfo::default()
                    .command_pool(st.pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(1);
                // SAFETY: our command pool, used only under the state lock we hold.
                unsafe { self.device.allocate_command_buffers(&info) }
                    .map_err(vk_err("vkAllocateCommandBuffers"))?[0]
            }
        };
        // A launch that finds no free result slot runs untimed (its time is not counted).
        let timer = if timed {
            match self.timer(st) {
                Ok(t) => t,
                Err(e) => {
                    st.free_cmds.push(cmd);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let results = self.results.buffer;
        let d = &self.device;
        // SAFETY: recording a command buffer of our pool (free, so not pending) under the state
        // lock; every handle recorded is ours and outlives the submission (frees wait first).
        let recorded = unsafe {
            (|| -> std::result::Result<(), vk::Result> {
                d.begin_command_buffer(
                    cmd,
                    &vk::CommandBufferBeginInfo::default()
                        .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                )?;
                // Everything submitted before, on any stream, is done and visible first.
                let all = [vk::MemoryBarrier::default()
                    .src_access_mask(vk::AccessFlags::MEMORY_WRITE)
                    .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE)];
                d.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::ALL_COMMANDS,
                    vk::PipelineStageFlags::ALL_COMMANDS,
                    vk::DependencyFlags::empty(),
                    &all,
                    &[],
                    &[],
                );
                if let Some(t) = timer {
                    d.cmd_reset_query_pool(cmd, t.pool, 0, 2);
                    d.cmd_write_timestamp(cmd, vk::PipelineStageFlags::TOP_OF_PIPE, t.pool, 0);
                }
                record(d, cmd);
                if let Some(t) = timer {
                    d.cmd_write_timestamp(cmd, vk::PipelineStageFlags::BOTTOM_OF_PIPE, t.pool, 1);
                    d.cmd_copy_query_pool_results(
                        cmd,
                        t.pool,
                        0,
                        2,
                        results,
                        t.slot as u64 * 16,
                        8,
                        vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
                    );
                }
                // What the device wrote is visible to the host once the semaphore says so.
                let host = [vk::MemoryBarrier::default()
                    .src_access_mask(vk::AccessFlags::MEMORY_WRITE)
                    .dst_access_mask(vk::AccessFlags::HOST_READ)];
                d.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::ALL_COMMANDS,
                    vk::PipelineStageFlags::HOST,
                    vk::DependencyFlags::empty(),
                    &host,
                    &[],
                    &[],
                );
                d.end_command_buffer(cmd)
            })()
        };
        let give_back = |st: &mut State| {
            st.free_cmds.push(cmd);
            st.free_timers.extend(timer);
        };
        if let Err(r) = recorded {
            // SAFETY: our command buffer, not submitted.
            let _ = unsafe { d.reset_command_buffer(cmd, vk::CommandBufferResetFlags::empty()) };
            give_back(st);
            return Err(vk_error("recording a command buffer", r));
        }
        let mut wait_sems = Vec::new();
        let mut wait_values = Vec::new();
        if value > 0 {
            wait_sems.push(sem);
            wait_values.push(value);
        }
        if let Some((s, v)) = also_wait {
            wait_sems.push(s);
            wait_values.push(v);
        }
        let stages = vec![vk::PipelineStageFlags::ALL_COMMANDS; wait_sems.len()];
        let signal = [sem];
        let signal_values = [value + 1];
        let mut timeline = vk::TimelineSemaphoreSubmitInfo::default()
            .wait_semaphore_values(&wait_values)
            .signal_semaphore_values(&signal_values);
        let cmds = [cmd];
        let submit = vk::SubmitInfo::default()
            .wait_semaphores(&wait_sems)
            .wait_dst_stage_mask(&stages)
            .command_buffers(&cmds)
            .signal_semaphores(&signal)
            .push_next(&mut timeline);
        // SAFETY: our queue, used only under the state lock we hold; the submit info and the
        // arrays it points at live across the call.
        if let Err(r) = unsafe { d.queue_submit(self.queue, &[submit], vk::Fence::null()) } {
            // SAFETY: our command buffer, which the failed submission did not take.
            let _ = unsafe { d.reset_command_buffer(cmd, vk::CommandBufferResetFlags::empty()) };
            give_back(st);
            return Err(vk_error("vkQueueSubmit", r));
        }
        if let Some(s) = st.streams.get_mut(&stream) {
            s.value = value + 1;
        }
        st.inflight.push(Inflight {
            sem,
            value: value + 1,
            cmd,
            timer,
        });
        Ok((sem, value + 1))
    }

    /// Submit on the default stream and wait for it (copies and memsets are synchronous).
    fn run_now(
        &self,
        st: &mut State,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        let done = self.submit(st, StreamHandle::DEFAULT.0, false, None, record)?;
        self.wait(&[done])
    }

    /// The buffer and offset of `len` bytes at `ptr`, all inside one allocation.
    fn resolve(st: &State, ptr: DevicePtr, len: u64) -> Result<(vk::Buffer, u64)> {
        let (&base, a) = st.allocs.range(..=ptr.0).next_back().ok_or_else(|| {
            Error::new(
                ErrorKind::IllegalAddress,
                format!("{ptr} is not in any allocation of this context"),
            )
        })?;
        let off = ptr.0 - base;
        if off.checked_add(len).is_none_or(|end| end > a.size) {
            return Err(Error::new(
                ErrorKind::IllegalAddress,
                format!(
                    "{len} bytes at {ptr} run past the end of the {}-byte allocation at {base:#x}",
                    a.size
                ),
            ));
        }
        Ok((a.buffer, off))
    }

    fn create_buffer(
        &self,
        bytes: u64,
        usage: vk::BufferUsageFlags,
        memory_type: u32,
    ) -> Result<Alloc> {
        create_buffer(&self.device, bytes, usage, memory_type)
    }

    /// The two timestamps a completed submission copied into `slot`.
    fn read_slot(&self, slot: u32) -> [u64; 2] {
        let at = self.results_ptr as *const u64;
        // SAFETY: the results mapping holds RESULT_SLOTS slots of two u64 (slot < RESULT_SLOTS,
        // 16-byte aligned); the submission that wrote it has completed and its last barrier
        // made the writes visible to the host (coherent memory).
        unsafe {
            [
                at.add(slot as usize * 2).read_volatile(),
                at.add(slot as usize * 2 + 1).read_volatile(),
            ]
        }
    }

    /// A free pair of timestamp queries with a result slot; `None` when every slot is taken.
    fn timer(&self, st: &mut State) -> Result<Option<Timer>> {
        if let Some(t) = st.free_timers.pop() {
            return Ok(Some(t));
        }
        let Some(slot) = st.free_slots.pop() else {
            return Ok(None);
        };
        let info = vk::QueryPoolCreateInfo::default()
            .query_type(vk::QueryType::TIMESTAMP)
            .query_count(2);
        // SAFETY: our device; the create info lives across the call.
        match unsafe { self.device.create_query_pool(&info, None) } {
            Ok(pool) => Ok(Some(Timer { pool, slot })),
            Err(r) => {
                st.free_slots.push(slot);
                Err(vk_error("vkCreateQueryPool", r))
            }
        }
    }

    fn destroy_alloc(&self, a: &Alloc) {
        // SAFETY: our buffer and memory; callers wait for all work that may use them first.
        unsafe {
            self.device.destroy_buffer(a.buffer, None);
            self.device.free_memory(a.memory, None);
        }
    }

    /// The staging buffer (created on first use) and its host mapping.
    fn staging(&self, st: &mut State) -> Result<(vk::Buffer, *mut u8)> {
        if st.staging.is_none() {
            let a = self.create_buffer(
                STAGING_BYTES,
                vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST,
                self.staging_type,
            )?;
            match map(&self.device, &a) {
                Ok(p) => {
                    st.staging_ptr = p;
                    st.staging = Some(a);
                }
                Err(e) => {
                    self.destroy_alloc(&a);
                    return Err(e);
                }
            }
        }
        let buffer = st.staging.as_ref().map(|a| a.buffer).unwrap_or_default();
        Ok((buffer, st.staging_ptr as *mut u8))
    }

    /// Write `len` bytes at `dst` piece by piece: `fill` puts each piece's bytes (its offset
    /// within the whole, and its slice of the staging buffer) before it is copied to the device.
    fn upload(&self, dst: DevicePtr, len: u64, mut fill: impl FnMut(u64, &mut [u8])) -> Result<()> {
        let mut st = lock(&self.state);
        let (buffer, offset) = Self::resolve(&st, dst, len)?;
        let (staging, ptr) = self.staging(&mut st)?;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(STAGING_BYTES);
            // SAFETY: the staging mapping is STAGING_BYTES long and n <= STAGING_BYTES; no
            // device work uses it now (each piece is waited for before the next).
            let piece = unsafe { std::slice::from_raw_parts_mut(ptr, n as usize) };
            fill(done, piece);
            let region = [vk::BufferCopy {
                src_offset: 0,
                dst_offset: offset + done,
                size: n,
            }];
            self.run_now(&mut st, |d, cmd| {
                // SAFETY: recording into the command buffer `submit` gave us.
                unsafe { d.cmd_copy_buffer(cmd, staging, buffer, &region) }
            })?;
            done += n;
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let d = &self.device;
        // SAFETY: the context is going away: wait for the device, then destroy everything we
        // created on it, and the device last.
        unsafe {
            let _ = d.device_wait_idle();
            for f in st.functions.values() {
                for &p in f.pipelines.values() {
                    d.destroy_pipeline(p, None);
                }
            }
            for m in st.modules.values() {
                d.destroy_shader_module(m.shader, None);
            }
            for a in st
                .allocs
                .values()
                .chain(st.staging.iter())
                .chain([&self.results])
            {
                d.destroy_buffer(a.buffer, None);
                d.free_memory(a.memory, None);
            }
            let released: u64 = st.allocs.values().map(|a| a.size).sum();
            self.shared.allocated.fetch_sub(released, Ordering::AcqRel);
            for t in st
                .free_timers
                .iter()
                .chain(st.inflight.iter().filter_map(|f| f.timer.as_ref()))
                .chain(st.events.values().map(|e| &e.timer))
            {
                d.destroy_query_pool(t.pool, None);
            }
            for s in st.streams.values().map(|s| &s.sem).chain(st.retired.iter()) {
                d.destroy_semaphore(*s, None);
            }
            d.destroy_command_pool(st.pool, None);
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_device(None);
        }
    }
}

fn create_buffer(
    d: &ash::Device,
    bytes: u64,
    usage: vk::BufferUsageFlags,
    memory_type: u32,
) -> Result<Alloc> {
    let info = vk::BufferCreateInfo::default()
        .size(bytes)
        .usage(usage)
        .sharing_mode(vk::SharingMode::EXCLUSIVE);
    // SAFETY: calls on the caller's live device; what is created here is destroyed here on
    // failure, or owned by the returned Alloc.
    unsafe {
        let buffer = d
            .create_buffer(&info, None)
            .map_err(vk_err("vkCreateBuffer"))?;
        let req = d.get_buffer_memory_requirements(buffer);
        let memory_type = if req.memory_type_bits & (1 << memory_type) != 0 {
            memory_type
        } else {
            req.memory_type_bits.trailing_zeros()
        };
        let mut flags =
            vk::MemoryAllocateFlagsInfo::default().flags(vk::MemoryAllocateFlags::DEVICE_ADDRESS);
        let mut alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(memory_type);
        if usage.contains(vk::BufferUsageFlags::SHADER_DEVICE_ADDRESS) {
            alloc = alloc.push_next(&mut flags);
        }
        let memory = match d.allocate_memory(&alloc, None) {
            Ok(m) => m,
            Err(r) => {
                d.destroy_buffer(buffer, None);
                return Err(vk_error("vkAllocateMemory", r));
            }
        };
        if let Err(r) = d.bind_buffer_memory(buffer, memory, 0) {
            d.destroy_buffer(buffer, None);
            d.free_memory(memory, None);
            return Err(vk_error("vkBindBufferMemory", r));
        }
        Ok(Alloc {
            buffer,
            memory,
            size: bytes,
        })
    }
}

/// Map all of a host-visible allocation, for the life of the allocation.
fn map(d: &ash::Device, a: &Alloc) -> Result<usize> {
    // SAFETY: host-visible memory of the caller's device, not mapped yet; unmapped when freed.
    unsafe { d.map_memory(a.memory, 0, a.size, vk::MemoryMapFlags::empty()) }
        .map(|p| p as usize)
        .map_err(vk_err("vkMapMemory"))
}

/// Kernel arguments as push constants: each parameter at its natural alignment (at most 8),
/// in order, like CUDA's parameter buffer; padded to a multiple of 4 bytes.
pub fn pack_args(args: &KernelArgs) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    for p in args.params() {
        let align = match p.len() {
            0 | 1 => 1,
            2 | 3 => 2,
            4..=7 => 4,
            _ => 8,
        };
        out.resize(out.len().next_multiple_of(align), 0);
        out.extend_from_slice(p);
    }
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

impl tf_hal::Context for VulkanContext {
    fn device_index(&self) -> u32 {
        self.inner.shared.physical.info.index
    }

    fn mem_alloc(&self, bytes: u64) -> Result<DevicePtr> {
        let me = &self.inner;
        let p = &me.shared.physical;
        if bytes == 0 {
            return Err(Error::invalid_value("cannot allocate 0 bytes"));
        }
        if bytes > p.info.total_memory_bytes || bytes > p.max_allocation {
            return Err(vk_error(
                &format!(
                    "{bytes} bytes: the device's local memory is {} bytes, and one allocation at most {}",
                    p.info.total_memory_bytes, p.max_allocation
                ),
                vk::Result::ERROR_OUT_OF_DEVICE_MEMORY,
            ));
        }
        let usage = vk::BufferUsageFlags::STORAGE_BUFFER
            | vk::BufferUsageFlags::TRANSFER_SRC
            | vk::BufferUsageFlags::TRANSFER_DST
            | vk::BufferUsageFlags::SHADER_DEVICE_ADDRESS;
        let a = me.create_buffer(bytes, usage, me.device_type)?;
        // SAFETY: our buffer, created with SHADER_DEVICE_ADDRESS usage and bound to memory.
        let addr = unsafe {
            me.device
                .get_buffer_device_address(&vk::BufferDeviceAddressInfo::default().buffer(a.buffer))
        };
        me.shared.allocated.fetch_add(bytes, Ordering::AcqRel);
        lock(&me.state).allocs.insert(addr, a);
        Ok(DevicePtr(addr))
    }

    fn mem_free(&self, ptr: DevicePtr) -> Result<()> {
        let me = &self.inner;
        let a = {
            let mut st = lock(&me.state);
            st.allocs.remove(&ptr.0).ok_or_else(|| {
                Error::invalid_value(format!("{ptr} is not an allocation of this context"))
            })?
        };
        // Work still in flight may use it.
        self.synchronize()?;
        me.destroy_alloc(&a);
        me.shared.allocated.fetch_sub(a.size, Ordering::AcqRel);
        Ok(())
    }

    fn mem_info(&self) -> Result<MemoryInfo> {
        crate::memory_info(&self.inner.shared)
    }

    fn copy_htod(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.inner.upload(dst, src.len() as u64, |at, piece| {
            let at = at as usize;
            piece.copy_from_slice(&src[at..at + piece.len()]);
        })
    }

    fn copy_dtoh(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        let me = &self.inner;
        let len = dst.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let mut st = lock(&me.state);
        let (buffer, offset) = Inner::resolve(&st, src, len)?;
        let (staging, ptr) = me.staging(&mut st)?;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(STAGING_BYTES);
            let region = [vk::BufferCopy {
                src_offset: offset + done,
                dst_offset: 0,
                size: n,
            }];
            me.run_now(&mut st, |d, cmd| {
                // SAFETY: recording into the command buffer `submit` gave us.
                unsafe { d.cmd_copy_buffer(cmd, buffer, staging, &region) }
            })?;
            // SAFETY: the staging mapping holds n <= STAGING_BYTES bytes the copy just wrote
            // (coherent memory, made visible to the host by the submission's last barrier).
            let piece = unsafe { std::slice::from_raw_parts(ptr, n as usize) };
            dst[done as usize..(done + n) as usize].copy_from_slice(piece);
            done += n;
        }
        Ok(())
    }

    fn copy_dtod(&self, dst: DevicePtr, src: DevicePtr, bytes: u64) -> Result<()> {
        let me = &self.inner;
        if bytes == 0 {
            return Ok(());
        }
        let mut st = lock(&me.state);
        let (from, src_offset) = Inner::resolve(&st, src, bytes)?;
        let (to, dst_offset) = Inner::resolve(&st, dst, bytes)?;
        let region = [vk::BufferCopy {
            src_offset,
            dst_offset,
            size: bytes,
        }];
        me.run_now(&mut st, |d, cmd| {
            // SAFETY: recording into the command buffer `submit` gave us.
            unsafe { d.cmd_copy_buffer(cmd, from, to, &region) }
        })
    }

    fn memset_d8(&self, dst: DevicePtr, value: u8, count: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        if dst.0.is_multiple_of(4) && count.is_multiple_of(4) {
            return self.fill(dst, u32::from_ne_bytes([value; 4]), count);
        }
        self.inner.upload(dst, count, |_, piece| piece.fill(value))
    }

    fn memset_d32(&self, dst: DevicePtr, value: u32, count: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        if !dst.0.is_multiple_of(4) {
            return Err(Error::invalid_value(format!(
                "memset_d32 at {dst}: the address must be a multiple of 4"
            )));
        }
        let bytes = count
            .checked_mul(4)
            .ok_or_else(|| Error::invalid_value("memset_d32: count too large"))?;
        self.fill(dst, value, bytes)
    }

    fn load_module(&self, image: ModuleImage<'_>) -> Result<ModuleHandle> {
        let me = &self.inner;
        let bytes = match image {
            ModuleImage::SpirV(b) => b,
            ModuleImage::Ptx(_) | ModuleImage::Binary(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidImage,
                    "the Vulkan backend loads SPIR-V modules (ModuleImage::SpirV), not PTX or vendor binaries",
                ));
            }
        };
        let m = SpirV::parse(bytes)?;
        if m.entries.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidImage,
                "the SPIR-V module has no compute entry point",
            ));
        }
        // SAFETY: our device; the words live across the call.
        let shader = unsafe {
            me.device
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&m.words), None)
        }
        .map_err(|r| {
            let mut e = vk_error("vkCreateShaderModule", r);
            e.kind = ErrorKind::InvalidImage;
            e
        })?;
        let mut st = lock(&me.state);
        let h = st.next;
        st.next += 1;
        st.modules.insert(
            h,
            Module {
                shader,
                entries: m.entries,
            },
        );
        Ok(ModuleHandle(h))
    }

    fn unload_module(&self, module: ModuleHandle) -> Result<()> {
        let me = &self.inner;
        {
            let st = lock(&me.state);
            if !st.modules.contains_key(&module.0) {
                return Err(bad_handle("module", module.0));
            }
        }
        // Launches in flight may use its pipelines.
        self.synchronize()?;
        let mut st = lock(&me.state);
        let Some(m) = st.modules.remove(&module.0) else {
            return Err(bad_handle("module", module.0));
        };
        let gone: Vec<u64> = st
            .functions
            .iter()
            .filter(|(_, f)| f.module == module.0)
            .map(|(&h, _)| h)
            .collect();
        for h in gone {
            if let Some(f) = st.functions.remove(&h) {
                for p in f.pipelines.into_values() {
                    // SAFETY: our pipeline; the context is idle.
                    unsafe { me.device.destroy_pipeline(p, None) };
                }
            }
        }
        // SAFETY: our shader module; no pipeline is being built from it (we hold the lock).
        unsafe { me.device.destroy_shader_module(m.shader, None) };
        Ok(())
    }

    fn function(&self, module: ModuleHandle, name: &str) -> Result<FunctionHandle> {
        let mut st = lock(&self.inner.state);
        let m = st
            .modules
            .get(&module.0)
            .ok_or_else(|| bad_handle("module", module.0))?;
        if !m.entries.iter().any(|e| e == name) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no kernel {name:?} in the module (its entry points: {})",
                    m.entries.join(", ")
                ),
            ));
        }
        if let Some((&h, _)) = st
            .functions
            .iter()
            .find(|(_, f)| f.module == module.0 && f.name.as_bytes() == name.as_bytes())
        {
            return Ok(FunctionHandle(h));
        }
        let c = CString::new(name).map_err(|_| Error::invalid_value("a NUL in a kernel name"))?;
        let h = st.next;
        st.next += 1;
        st.functions.insert(
            h,
            Function {
                module: module.0,
                name: c,
                pipelines: HashMap::new(),
            },
        );
        Ok(FunctionHandle(h))
    }

    fn launch(
        &self,
        function: FunctionHandle,
        config: &LaunchConfig,
        stream: StreamHandle,
        args: &KernelArgs,
    ) -> Result<()> {
        let me = &self.inner;
        let limits = &me.shared.physical.properties.limits;
        let block = config.block;
        let grid = config.grid;
        if block.contains(&0) || grid.contains(&0) {
            return Err(Error::invalid_value(format!(
                "grid {grid:?} and block {block:?} must have no zero dimension"
            )));
        }
        if (0..3).any(|i| block[i] > limits.max_compute_work_group_size[i])
            || block.iter().map(|&b| b as u64).product::<u64>()
                > limits.max_compute_work_group_invocations as u64
            || (0..3).any(|i| grid[i] > limits.max_compute_work_group_count[i])
        {
            return Err(Error::invalid_value(format!(
                "grid {grid:?} x block {block:?} is past this device's limits (block at most {:?} and {} threads, grid at most {:?})",
                limits.max_compute_work_group_size,
                limits.max_compute_work_group_invocations,
                limits.max_compute_work_group_count
            )));
        }
        if config.shared_mem_bytes > 0 {
            return Err(Error::not_supported(
                "dynamic shared memory: a SPIR-V kernel declares its shared memory itself",
            ));
        }
        let bytes = pack_args(args);
        if bytes.len() as u32 > me.push_bytes {
            return Err(Error::invalid_value(format!(
                "{} bytes of kernel arguments; at most {} fit in push constants on this device",
                bytes.len(),
                me.push_bytes
            )));
        }
        let mut st = lock(&me.state);
        if !st.streams.contains_key(&stream.0) {
            return Err(bad_handle("stream", stream.0));
        }
        let pipeline = me.pipeline(&mut st, function.0, block)?;
        let layout = me.layout;
        me.submit(&mut st, stream.0, true, None, |d, cmd| {
            // SAFETY: recording into the command buffer `submit` gave us, with our pipeline
            // and layout (whose push range covers `bytes`).
            unsafe {
                d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, pipeline);
                if !bytes.is_empty() {
                    d.cmd_push_constants(cmd, layout, vk::ShaderStageFlags::COMPUTE, 0, &bytes);
                }
                d.cmd_dispatch(cmd, grid[0], grid[1], grid[2]);
            }
        })?;
        Ok(())
    }

    fn stream_create(&self) -> Result<StreamHandle> {
        let me = &self.inner;
        let sem = me.timeline()?;
        let mut st = lock(&me.state);
        let h = st.next;
        st.next += 1;
        st.streams.insert(h, Stream { sem, value: 0 });
        Ok(StreamHandle(h))
    }

    fn stream_destroy(&self, stream: StreamHandle) -> Result<()> {
        if stream == StreamHandle::DEFAULT {
            return Err(Error::invalid_value(
                "the default stream cannot be destroyed",
            ));
        }
        let mut st = lock(&self.inner.state);
        let s = st
            .streams
            .remove(&stream.0)
            .ok_or_else(|| bad_handle("stream", stream.0))?;
        // Its work still completes; events recorded on it still read its semaphore.
        st.retired.push(s.sem);
        Ok(())
    }

    fn stream_synchronize(&self, stream: StreamHandle) -> Result<()> {
        let w = self.stream_point(stream)?;
        self.inner.wait(&[w])?;
        self.inner.reap()
    }

    /// Whether the stream's last submission has finished: its timeline semaphore has reached
    /// the stream's value (no submission, no wait; the HAL's default records an event, whose
    /// timestamp submission is itself still pending when it is queried).
    fn stream_query(&self, stream: StreamHandle) -> Result<bool> {
        let (sem, value) = self.stream_point(stream)?;
        self.inner.reached(sem, value)
    }

    fn stream_wait_event(&self, stream: StreamHandle, event: EventHandle) -> Result<()> {
        let me = &self.inner;
        let mut st = lock(&me.state);
        let recorded = st
            .events
            .get(&event.0)
            .ok_or_else(|| bad_handle("event", event.0))?
            .recorded;
        if !st.streams.contains_key(&stream.0) {
            return Err(bad_handle("stream", stream.0));
        }
        // An event never recorded is complete: nothing to wait for.
        if let Some(w) = recorded {
            me.submit(&mut st, stream.0, false, Some(w), |_, _| {})?;
        }
        Ok(())
    }

    fn event_create(&self) -> Result<EventHandle> {
        let me = &self.inner;
        let mut st = lock(&me.state);
        let timer = me.timer(&mut st)?.ok_or_else(|| {
            Error::out_of_memory(format!(
                "too many events and launches in flight on this context (at most {RESULT_SLOTS})"
            ))
        })?;
        let h = st.next;
        st.next += 1;
        st.events.insert(
            h,
            Event {
                timer,
                recorded: None,
            },
        );
        Ok(EventHandle(h))
    }

    fn event_destroy(&self, event: EventHandle) -> Result<()> {
        let me = &self.inner;
        let e = {
            let mut st = lock(&me.state);
            st.events
                .remove(&event.0)
                .ok_or_else(|| bad_handle("event", event.0))?
        };
        if let Some(w) = e.recorded {
            me.wait(&[w])?;
        }
        // The submission that writes its query has completed: it can serve again.
        lock(&me.state).free_timers.push(e.timer);
        Ok(())
    }

    fn event_record(&self, event: EventHandle, stream: StreamHandle) -> Result<()> {
        let me = &self.inner;
        let mut st = lock(&me.state);
        let t = st
            .events
            .get(&event.0)
            .ok_or_else(|| bad_handle("event", event.0))?
            .timer;
        let results = me.results.buffer;
        let done = me.submit(&mut st, stream.0, false, None, |d, cmd| {
            // SAFETY: recording into the command buffer `submit` gave us, with our query pool
            // and results buffer.
            unsafe {
                d.cmd_reset_query_pool(cmd, t.pool, 0, 1);
                d.cmd_write_timestamp(cmd, vk::PipelineStageFlags::BOTTOM_OF_PIPE, t.pool, 0);
                d.cmd_copy_query_pool_results(
                    cmd,
                    t.pool,
                    0,
                    1,
                    results,
                    t.slot as u64 * 16,
                    8,
                    vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
                );
            }
        })?;
        if let Some(e) = st.events.get_mut(&event.0) {
            e.recorded = Some(done);
        }
        Ok(())
    }

    fn event_synchronize(&self, event: EventHandle) -> Result<()> {
        let w = self.recorded(event)?;
        self.inner.wait(&w.into_iter().collect::<Vec<_>>())
    }

    fn event_query(&self, event: EventHandle) -> Result<bool> {
        match self.recorded(event)? {
            Some((sem, value)) => self.inner.reached(sem, value),
            None => Ok(true),
        }
    }

    fn event_elapsed(&self, start: EventHandle, end: EventHandle) -> Result<Duration> {
        let me = &self.inner;
        let mut ts = [0u64; 2];
        for (i, e) in [start, end].into_iter().enumerate() {
            let Some((sem, value)) = self.recorded(e)? else {
                return Err(Error::invalid_value(format!(
                    "event {e} was never recorded"
                )));
            };
            if !me.reached(sem, value)? {
                return Err(Error::new(
                    ErrorKind::NotReady,
                    format!("event {e} has not completed"),
                ));
            }
            let slot = {
                let st = lock(&me.state);
                st.events
                    .get(&e.0)
                    .ok_or_else(|| bad_handle("event", e.0))?
                    .timer
                    .slot
            };
            let one = [me.read_slot(slot)[0]];
            ts[i] = one[0];
        }
        let ticks = ts[1].wrapping_sub(ts[0]) & me.timestamp_mask;
        if ticks > me.timestamp_mask / 2 {
            return Err(Error::invalid_value(
                "the end event was recorded before the start event",
            ));
        }
        Ok(Duration::from_nanos(
            (ticks as f64 * me.timestamp_period) as u64,
        ))
    }

    fn synchronize(&self) -> Result<()> {
        let waits: Vec<(vk::Semaphore, u64)> = {
            let st = lock(&self.inner.state);
            st.streams
                .values()
                .filter(|s| s.value > 0)
                .map(|s| (s.sem, s.value))
                .chain(st.inflight.iter().map(|f| (f.sem, f.value)))
                .collect()
        };
        self.inner.wait(&waits)?;
        self.inner.reap()
    }

    fn snapshot(&self) -> Result<ContextSnapshot> {
        Err(Error::not_supported(
            "snapshot is not supported by the Vulkan backend",
        ))
    }
}

impl VulkanContext {
    /// The point a stream's last submission reaches: its timeline semaphore and value.
    fn stream_point(&self, stream: StreamHandle) -> Result<(vk::Semaphore, u64)> {
        let st = lock(&self.inner.state);
        let s = st
            .streams
            .get(&stream.0)
            .ok_or_else(|| bad_handle("stream", stream.0))?;
        Ok((s.sem, s.value))
    }

    fn recorded(&self, event: EventHandle) -> Result<Option<(vk::Semaphore, u64)>> {
        let st = lock(&self.inner.state);
        Ok(st
            .events
            .get(&event.0)
            .ok_or_else(|| bad_handle("event", event.0))?
            .recorded)
    }

    /// Fill `bytes` (a multiple of 4) at `dst` (4-byte aligned) with `value`.
    fn fill(&self, dst: DevicePtr, value: u32, bytes: u64) -> Result<()> {
        let me = &self.inner;
        let mut st = lock(&me.state);
        let (buffer, offset) = Inner::resolve(&st, dst, bytes)?;
        me.run_now(&mut st, |d, cmd| {
            // SAFETY: recording into the command buffer `submit` gave us, with our buffer.
            unsafe { d.cmd_fill_buffer(cmd, buffer, offset, bytes, value) }
        })
    }
}

impl Inner {
    /// The pipeline of `function` for a block shape, built on first use.
    fn pipeline(&self, st: &mut State, function: u64, block: [u32; 3]) -> Result<vk::Pipeline> {
        let f = st
            .functions
            .get(&function)
            .ok_or_else(|| bad_handle("function", function))?;
        if let Some(&p) = f.pipelines.get(&block) {
            return Ok(p);
        }
        let shader = st
            .modules
            .get(&f.module)
            .ok_or_else(|| bad_handle("module", f.module))?
            .shader;
        let data: Vec<u8> = block.iter().flat_map(|b| b.to_ne_bytes()).collect();
        let entries: Vec<vk::SpecializationMapEntry> = (0..3)
            .map(|i| vk::SpecializationMapEntry {
                constant_id: i,
                offset: i * 4,
                size: 4,
            })
            .collect();
        let spec = vk::SpecializationInfo::default()
            .map_entries(&entries)
            .data(&data);
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(shader)
            .name(&f.name)
            .specialization_info(&spec);
        let info = vk::ComputePipelineCreateInfo::default()
            .stage(stage)
            .layout(self.layout);
        // SAFETY: our device, shader module and layout; the create info and everything it
        // points at live across the call.
        let p = unsafe {
            self.device
                .create_compute_pipelines(vk::PipelineCache::null(), &[info], None)
        }
        .map_err(|(_, r)| vk_error("vkCreateComputePipelines", r))?[0];
        if let Some(f) = st.functions.get_mut(&function) {
            f.pipelines.insert(block, p);
        }
        Ok(p)
    }
}
