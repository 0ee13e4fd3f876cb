//! A small Vulkan compute program on the system's Vulkan loader (through this backend and
//! ash), used to check the Vulkan layer from outside: it knows nothing of vGPUs. Each mode
//! prints one JSON object per line.
//!
//! ```text
//! vkprobe vector-add [N]            # N-element vector add, every element checked (exit 1 if wrong)
//! vkprobe memory                    # the device's memory as the program sees it
//! vkprobe alloc-blocks [MIB]        # MIB-sized blocks (default 16) until one fails; free; again
//! vkprobe hold MIB SECONDS          # allocate MIB, say so, and sleep (to be killed)
//! vkprobe busy MS SECONDS           # MS-millisecond busy kernels back to back for SECONDS
//! vkprobe device-leak MIB           # raw Vulkan: allocate MIB, destroy the device without
//!                                   # freeing it, then 16 MiB blocks on a new device until one fails
//! ```
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::time::{Duration, Instant};

use tf_backend_vulkan::VulkanBackend;
use tf_hal::{Backend, BackendKind, Context, KernelArgs, LaunchConfig, StreamHandle};

const MIB: u64 = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| {
        args.get(i)
            .map(|s| s.parse::<u64>().unwrap_or_else(|_| usage()))
            .unwrap_or(default)
    };
    if args.first().map(String::as_str) == Some("device-leak") {
        return device_leak(arg(1, 128) * MIB);
    }
    let backend = VulkanBackend::new().unwrap_or_else(|e| fail(&format!("{e}")));
    let device = backend.device(0).unwrap_or_else(|e| fail(&format!("{e}")));
    let ctx = device
        .create_context()
        .unwrap_or_else(|e| fail(&format!("{e}")));
    match args.first().map(String::as_str) {
        Some("vector-add") => vector_add(&*ctx, arg(1, 1 << 20) as u32),
        Some("memory") => {
            let m = ctx.mem_info().unwrap_or_else(|e| fail(&format!("{e}")));
            println!(
                "{{\"model\":{:?},\"total_bytes\":{},\"used_bytes\":{},\"free_bytes\":{}}}",
                device.info().model,
                m.total_bytes,
                m.used_bytes,
                m.free_bytes
            );
        }
        Some("alloc-blocks") => {
            // Until one fails, twice: everything is freed in between.
            let block = arg(1, 16) * MIB;
            let fill = || {
                let mut held = Vec::new();
                let error = loop {
                    match ctx.mem_alloc(block) {
                        Ok(p) => held.push(p),
                        Err(e) => break e,
                    }
                    if held.len() > 100_000 {
                        fail("no allocation failed after 100000 blocks");
                    }
                };
                let total = held.len() as u64 * block;
                for p in held {
                    ctx.mem_free(p)
                        .unwrap_or_else(|e| fail(&format!("free: {e}")));
                }
                (total, error)
            };
            let (total, error) = fill();
            let (again, _) = fill();
            println!(
                "{{\"block_bytes\":{block},\"blocks\":{},\"total_bytes\":{total},\"again_total_bytes\":{again},\"error\":{:?},\"vendor_code\":{:?}}}",
                total / block,
                error.kind.to_string(),
                error.vendor.map(|v| v.name).unwrap_or_default()
            );
        }
        Some("hold") => {
            let p = ctx
                .mem_alloc(arg(1, 64) * MIB)
                .unwrap_or_else(|e| fail(&format!("{e}")));
            println!("{{\"holding_bytes\":{}}}", arg(1, 64) * MIB);
            std::thread::sleep(Duration::from_secs(arg(2, 60)));
            let _ = ctx.mem_free(p);
        }
        Some("busy") => busy(&*ctx, arg(1, 10), arg(2, 3)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: vkprobe vector-add [N] | memory | alloc-blocks [MIB] | hold MIB SECONDS | busy MS SECONDS | device-leak MIB"
    );
    std::process::exit(2)
}

fn fail(why: &str) -> ! {
    eprintln!("vkprobe: {why}");
    std::process::exit(1)
}

fn vector_add(ctx: &dyn Context, n: u32) {
    let k = tf_hal::conformance::load_test_kernels(ctx, BackendKind::Vulkan);
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| 2.0 * i as f32 + 1.0).collect();
    let bytes = n as u64 * 4;
    let bufs: Vec<_> = (0..3)
        .map(|_| {
            ctx.mem_alloc(bytes)
                .unwrap_or_else(|e| fail(&format!("{e}")))
        })
        .collect();
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    ctx.copy_htod(bufs[0], &le(&a)).unwrap();
    ctx.copy_htod(bufs[1], &le(&b)).unwrap();
    ctx.launch(
        k.vector_add,
        &LaunchConfig::for_elements(n, 256),
        StreamHandle::DEFAULT,
        &KernelArgs::new()
            .ptr(bufs[0])
            .ptr(bufs[1])
            .ptr(bufs[2])
            .u32(n),
    )
    .unwrap_or_else(|e| fail(&format!("launch: {e}")));
    ctx.synchronize().unwrap();
    let mut out = vec![0u8; bytes as usize];
    ctx.copy_dtoh(&mut out, bufs[2]).unwrap();
    let wrong = out
        .chunks_exact(4)
        .enumerate()
        .filter(|(i, c)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) != a[*i] + b[*i])
        .count();
    println!("{{\"check\":\"vector_add\",\"n\":{n},\"wrong\":{wrong}}}");
    if wrong > 0 {
        std::process::exit(1);
    }
}

/// Busy kernels back to back for `seconds`, two in flight (one on each of two streams: a new
/// one is submitted as soon as the older finishes, so the device never waits for the program
/// and every submission is a kernel); the rate is of finished kernels.
fn busy(ctx: &dyn Context, ms: u64, seconds: u64) {
    let k = tf_hal::conformance::load_test_kernels(ctx, BackendKind::Vulkan);
    let launch = |s| {
        ctx.launch(
            k.busy,
            &LaunchConfig::single(),
            s,
            &KernelArgs::new().u64(ms * 1_000_000),
        )
        .unwrap_or_else(|e| fail(&format!("launch: {e}")))
    };
    // The driver compiles the kernel on its first run.
    launch(StreamHandle::DEFAULT);
    ctx.synchronize().unwrap();
    let streams = [ctx.stream_create().unwrap(), ctx.stream_create().unwrap()];
    let start = Instant::now();
    let mut kernels = 0u64;
    for &s in &streams {
        launch(s);
    }
    'run: loop {
        for &s in &streams {
            ctx.stream_synchronize(s).unwrap();
            kernels += 1;
            if start.elapsed() >= Duration::from_secs(seconds) {
                break 'run;
            }
            launch(s);
        }
    }
    let s = start.elapsed().as_secs_f64();
    ctx.synchronize().unwrap();
    println!(
        "{{\"bench\":\"vulkan_busy\",\"kernel_ms\":{ms},\"seconds\":{s:.3},\"kernels\":{kernels},\"rate_per_s\":{:.3}}}",
        kernels as f64 / s
    );
}

/// Straight on ash (no backend): memory a destroyed device still held must not stay counted.
fn device_leak(bytes: u64) {
    use ash::vk;
    // SAFETY: the system's Vulkan loader, used as the Vulkan specification says: every handle
    // is created here, used on this thread, and destroyed before the instance.
    unsafe {
        let entry = ash::Entry::load().unwrap_or_else(|e| fail(&format!("{e}")));
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_1);
        let instance = entry
            .create_instance(
                &vk::InstanceCreateInfo::default().application_info(&app),
                None,
            )
            .unwrap_or_else(|e| fail(&format!("vkCreateInstance: {e}")));
        let pd = instance.enumerate_physical_devices().unwrap()[0];
        let memory = instance.get_physical_device_memory_properties(pd);
        let local = (0..memory.memory_type_count)
            .find(|&i| {
                memory.memory_types[i as usize]
                    .property_flags
                    .contains(vk::MemoryPropertyFlags::DEVICE_LOCAL)
            })
            .unwrap_or_else(|| fail("no device-local memory type"));
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(0)
            .queue_priorities(&priorities)];
        let new_device = || {
            instance
                .create_device(
                    pd,
                    &vk::DeviceCreateInfo::default().queue_create_infos(&queues),
                    None,
                )
                .unwrap_or_else(|e| fail(&format!("vkCreateDevice: {e}")))
        };
        let alloc = |d: &ash::Device, n: u64| {
            d.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(n)
                    .memory_type_index(local),
                None,
            )
        };
        let first = new_device();
        alloc(&first, bytes).unwrap_or_else(|e| fail(&format!("vkAllocateMemory: {e}")));
        first.destroy_device(None); // the allocation is never freed
        let second = new_device();
        let mut held = Vec::new();
        let error = loop {
            match alloc(&second, 16 * MIB) {
                Ok(m) => held.push(m),
                Err(e) => break e,
            }
            if held.len() >= 1024 {
                fail("no allocation failed after 1024 blocks (16 GiB): is the layer on?");
            }
        };
        println!(
            "{{\"leaked_bytes\":{bytes},\"then_total_bytes\":{},\"error\":\"{error:?}\"}}",
            held.len() as u64 * 16 * MIB
        );
        for m in held {
            second.free_memory(m, None);
        }
        second.destroy_device(None);
        instance.destroy_instance(None);
    }
}
