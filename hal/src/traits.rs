//! The traits every backend implements. They are object safe: binaries pick a backend at run
//! time (`TF_BACKEND`, a config file) and hold it as `Arc<dyn Backend>`.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::types::*;

/// A vendor implementation: enumerates devices and opens them.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// All devices, in a stable order (the same order on every call).
    fn devices(&self) -> Result<Vec<DeviceInfo>>;

    /// Open one device by its enumeration index.
    fn device(&self, index: u32) -> Result<Arc<dyn Device>>;

    /// How devices are connected to each other (pairs, each listed once with a < b).
    fn topology(&self) -> Result<Vec<Link>>;

    /// Find a device by UUID.
    fn device_by_uuid(&self, uuid: &str) -> Result<Arc<dyn Device>> {
        let info = self
            .devices()?
            .into_iter()
            .find(|d| crate::DeviceUuid::parse(&d.uuid).is_ok_and(|u| u.matches(uuid)))
            .ok_or_else(|| {
                Error::new(
                    crate::ErrorKind::InvalidDevice,
                    format!("no device with UUID {uuid}"),
                )
            })?;
        self.device(info.index)
    }
}

/// One device: its description, metrics, partitions, and a factory for execution contexts.
pub trait Device: Send + Sync {
    fn info(&self) -> &DeviceInfo;

    /// Device-wide memory use, all processes together.
    fn memory(&self) -> Result<MemoryInfo>;

    /// Processes holding memory on this device.
    fn processes(&self) -> Result<Vec<ProcessUsage>>;

    /// Cumulative kernel busy time, where the backend keeps such a counter.
    fn busy_sample(&self) -> Result<Option<BusySample>>;

    /// Percentage of wall time during the last `window` in which a kernel was running (NVML's
    /// meaning of GPU utilization). Backends without history sample the counter twice, so this
    /// may block for `window`.
    fn utilization(&self, window: Duration) -> Result<f64> {
        let Some(first) = self.busy_sample()? else {
            return Err(Error::not_supported("device busy time is not available"));
        };
        thread::sleep(window);
        let second = self
            .busy_sample()?
            .ok_or_else(|| Error::not_supported("device busy time is not available"))?;
        Ok(second.utilization_since(&first))
    }

    /// Temperature and power draw, each `None` where the backend cannot read it. Never blocks.
    fn sensors(&self) -> Result<Sensors> {
        Ok(Sensors::default())
    }

    /// Create an execution context on this device for the calling process.
    fn create_context(&self) -> Result<Arc<dyn Context>>;

    /// Partition profiles this device offers. Empty when it cannot be partitioned.
    fn partition_templates(&self) -> Result<Vec<PartitionTemplate>> {
        Ok(Vec::new())
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>> {
        Ok(Vec::new())
    }

    fn create_partition(&self, template: &str) -> Result<PartitionInfo> {
        Err(Error::not_supported(format!(
            "partition {template}: device {} cannot be partitioned",
            self.info().index
        )))
    }

    fn destroy_partition(&self, id: &str) -> Result<()> {
        Err(Error::not_supported(format!(
            "partition {id}: device {} cannot be partitioned",
            self.info().index
        )))
    }
}

/// An execution context: memory, modules, launches, streams and events of one process on one
/// device. Copies are synchronous with respect to the host (they return when the bytes have
/// moved, after prior work on the context has finished); launches are asynchronous on a stream.
pub trait Context: Send + Sync {
    fn device_index(&self) -> u32;

    // --- memory ---
    fn mem_alloc(&self, bytes: u64) -> Result<DevicePtr>;
    fn mem_free(&self, ptr: DevicePtr) -> Result<()>;
    /// Memory as this context sees it (a vGPU quota where one applies).
    fn mem_info(&self) -> Result<MemoryInfo>;
    fn copy_htod(&self, dst: DevicePtr, src: &[u8]) -> Result<()>;
    fn copy_dtoh(&self, dst: &mut [u8], src: DevicePtr) -> Result<()>;
    fn copy_dtod(&self, dst: DevicePtr, src: DevicePtr, bytes: u64) -> Result<()>;
    fn memset_d8(&self, dst: DevicePtr, value: u8, count: u64) -> Result<()>;
    fn memset_d32(&self, dst: DevicePtr, value: u32, count: u64) -> Result<()>;

    // --- modules and launches ---
    fn load_module(&self, image: ModuleImage<'_>) -> Result<ModuleHandle>;
    fn unload_module(&self, module: ModuleHandle) -> Result<()>;
    fn function(&self, module: ModuleHandle, name: &str) -> Result<FunctionHandle>;
    fn launch(
        &self,
        function: FunctionHandle,
        config: &LaunchConfig,
        stream: StreamHandle,
        args: &KernelArgs,
    ) -> Result<()>;

    // --- streams and events ---
    fn stream_create(&self) -> Result<StreamHandle>;
    fn stream_destroy(&self, stream: StreamHandle) -> Result<()>;
    fn stream_synchronize(&self, stream: StreamHandle) -> Result<()>;
    /// Make later work on `stream` wait for `event`.
    fn stream_wait_event(&self, stream: StreamHandle, event: EventHandle) -> Result<()>;
    fn event_create(&self) -> Result<EventHandle>;
    fn event_destroy(&self, event: EventHandle) -> Result<()>;
    fn event_record(&self, event: EventHandle, stream: StreamHandle) -> Result<()>;
    fn event_synchronize(&self, event: EventHandle) -> Result<()>;
    /// `Ok(true)` when all work captured by the event has finished.
    fn event_query(&self, event: EventHandle) -> Result<bool>;
    /// Device time between two recorded events.
    fn event_elapsed(&self, start: EventHandle, end: EventHandle) -> Result<Duration>;
    /// Wait for all work on the context.
    fn synchronize(&self) -> Result<()>;

    // --- stream-ordered copies and memsets (defaults: wait for the stream, then the
    // synchronous call; backends with real streams queue them instead) ---
    /// Copy `src` to device memory after the work queued on `stream`. The bytes are taken
    /// before the call returns (the caller may reuse `src` at once), like the driver's
    /// asynchronous copy from pageable memory.
    fn copy_htod_async(&self, dst: DevicePtr, src: &[u8], stream: StreamHandle) -> Result<()> {
        self.stream_synchronize(stream)?;
        self.copy_htod(dst, src)
    }

    /// Copy device memory into `dst` after the work queued on `stream`; returns when the bytes
    /// are in `dst` (the driver's asynchronous copy to pageable memory).
    fn copy_dtoh_async(&self, dst: &mut [u8], src: DevicePtr, stream: StreamHandle) -> Result<()> {
        self.stream_synchronize(stream)?;
        self.copy_dtoh(dst, src)
    }

    /// Device-to-device copy ordered on `stream`.
    fn copy_dtod_async(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        self.stream_synchronize(stream)?;
        self.copy_dtod(dst, src, bytes)
    }

    /// Set `count` 16-bit words. Default: the words are written with [`Context::copy_htod`],
    /// a megabyte at a time.
    fn memset_d16(&self, dst: DevicePtr, value: u16, count: u64) -> Result<()> {
        const CHUNK: u64 = 1 << 19; // words per copy (1 MiB)
        let buf: Vec<u8> = std::iter::repeat_n(value.to_le_bytes(), count.min(CHUNK) as usize)
            .flatten()
            .collect();
        let mut done = 0u64;
        while done < count {
            let n = (count - done).min(CHUNK);
            self.copy_htod(dst.offset(done * 2), &buf[..n as usize * 2])?;
            done += n;
        }
        Ok(())
    }

    /// `memset_d8` ordered on `stream`.
    fn memset_d8_async(
        &self,
        dst: DevicePtr,
        value: u8,
        count: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        self.stream_synchronize(stream)?;
        self.memset_d8(dst, value, count)
    }

    /// `memset_d16` ordered on `stream`.
    fn memset_d16_async(
        &self,
        dst: DevicePtr,
        value: u16,
        count: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        self.stream_synchronize(stream)?;
        self.memset_d16(dst, value, count)
    }

    /// `memset_d32` ordered on `stream`.
    fn memset_d32_async(
        &self,
        dst: DevicePtr,
        value: u32,
        count: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        self.stream_synchronize(stream)?;
        self.memset_d32(dst, value, count)
    }

    /// `Ok(true)` when all work queued on `stream` has finished. Default: an event recorded
    /// on the stream, queried.
    fn stream_query(&self, stream: StreamHandle) -> Result<bool> {
        let e = self.event_create()?;
        let done = self
            .event_record(e, stream)
            .and_then(|()| self.event_query(e));
        self.event_destroy(e)?;
        done
    }

    /// Hand `len` bytes of device memory at `src` to `sink`, in order and in pieces
    /// (`sink(offset, bytes)`), after all prior work on the context: what a worker needs to send
    /// device memory without a copy of its own. Default: through a host buffer, a megabyte at a
    /// time ([`Context::copy_dtoh`]); backends whose device memory the host can read in place
    /// (the simulated GPU) hand it over directly. The first error of `sink` stops the read and
    /// is returned.
    fn read_device(
        &self,
        src: DevicePtr,
        len: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        const PIECE: u64 = 1 << 20;
        let mut buf = vec![0u8; len.min(PIECE) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(PIECE) as usize;
            self.copy_dtoh(&mut buf[..n], src.offset(done))?;
            sink(done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Fill `len` bytes of device memory at `dst` from `source`, in order and in pieces
    /// (`source(offset, piece)` writes the piece), after all prior work on the context: what a
    /// worker needs to receive a copy without a buffer of its own. Default: through a host
    /// buffer, a megabyte at a time ([`Context::copy_htod`]); backends whose device memory the
    /// host can write in place (the simulated GPU) hand it over directly. The first error of
    /// `source` stops the write and is returned (the bytes written so far stay).
    fn write_device(
        &self,
        dst: DevicePtr,
        len: u64,
        source: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        const PIECE: u64 = 1 << 20;
        let mut buf = vec![0u8; len.min(PIECE) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(PIECE) as usize;
            source(done, &mut buf[..n])?;
            self.copy_htod(dst.offset(done), &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// The sizes in bytes of a kernel's parameters, in order (what a driver API needs to read
    /// `kernelParams`). Optional: `NotSupported` where the backend cannot tell.
    fn function_param_sizes(&self, function: FunctionHandle) -> Result<Vec<usize>> {
        let _ = function;
        Err(Error::not_supported(
            "this backend cannot tell a kernel's parameter sizes",
        ))
    }

    // --- snapshot/restore (optional capability) ---
    /// Copy the context's device memory to the host.
    fn snapshot(&self) -> Result<ContextSnapshot> {
        Err(Error::not_supported(
            "snapshot is not supported by this backend",
        ))
    }

    /// Put a snapshot back (at the same device addresses) into this context.
    fn restore(&self, snapshot: &ContextSnapshot) -> Result<()> {
        let _ = snapshot;
        Err(Error::not_supported(
            "restore is not supported by this backend",
        ))
    }
}
