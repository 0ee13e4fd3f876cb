//! The structs and `#define` constants of `cuda.h` that implementations and interposers read or
//! write, written by hand with `#[repr(C)]` (the generator maps every pointer to a raw pointer and
//! does not emit structs). `tests/layout.rs` compiles C against the real `cuda.h` and checks
//! every size, alignment, field offset and constant here.
#![allow(non_camel_case_types, non_snake_case)]

use core::ffi::c_void;

/// `CU_STREAM_LEGACY`: the legacy default stream, as a stream handle.
pub const CU_STREAM_LEGACY: usize = 0x1;
/// `CU_STREAM_PER_THREAD`: the per-thread default stream, as a stream handle.
pub const CU_STREAM_PER_THREAD: usize = 0x2;
/// `CU_LAUNCH_PARAM_END`: ends the `extra` array of `cuLaunchKernel`.
pub const CU_LAUNCH_PARAM_END: usize = 0x00;
/// `CU_LAUNCH_PARAM_BUFFER_POINTER`: next in `extra` is a pointer to the packed arguments.
pub const CU_LAUNCH_PARAM_BUFFER_POINTER: usize = 0x01;
/// `CU_LAUNCH_PARAM_BUFFER_SIZE`: next in `extra` is a pointer to their size (`size_t`).
pub const CU_LAUNCH_PARAM_BUFFER_SIZE: usize = 0x02;

/// `CUresult`.
pub type CUresult = u32;
/// `nvmlReturn_t`.
pub type nvmlReturn_t = u32;

/// `CUipcEventHandle` (passed by value).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUipcEventHandle {
    pub reserved: [core::ffi::c_char; 64],
}

/// `CUipcMemHandle` (passed by value).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUipcMemHandle {
    pub reserved: [core::ffi::c_char; 64],
}

/// `CUmemLocation` (passed by value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CUmemLocation {
    pub type_: u32,
    pub id: i32,
}

/// `CUuuid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CUuuid {
    pub bytes: [core::ffi::c_char; 16],
}

/// `CUlaunchConfig` (cuLaunchKernelEx).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUlaunchConfig {
    pub gridDimX: u32,
    pub gridDimY: u32,
    pub gridDimZ: u32,
    pub blockDimX: u32,
    pub blockDimY: u32,
    pub blockDimZ: u32,
    pub sharedMemBytes: u32,
    pub hStream: *mut c_void,
    pub attrs: *mut c_void,
    pub numAttrs: u32,
}

/// `CUDA_MEMCPY2D`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUDA_MEMCPY2D {
    pub srcXInBytes: usize,
    pub srcY: usize,
    pub srcMemoryType: u32,
    pub srcHost: *const c_void,
    pub srcDevice: u64,
    pub srcArray: *mut c_void,
    pub srcPitch: usize,
    pub dstXInBytes: usize,
    pub dstY: usize,
    pub dstMemoryType: u32,
    pub dstHost: *mut c_void,
    pub dstDevice: u64,
    pub dstArray: *mut c_void,
    pub dstPitch: usize,
    pub WidthInBytes: usize,
    pub Height: usize,
}

/// `CUDA_ARRAY_DESCRIPTOR` (`cuArrayCreate_v2`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CUDA_ARRAY_DESCRIPTOR {
    pub Width: usize,
    pub Height: usize,
    /// `CUarray_format`.
    pub Format: u32,
    pub NumChannels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` (`cuArray3DCreate_v2`, `cuMipmappedArrayCreate`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CUDA_ARRAY3D_DESCRIPTOR {
    pub Width: usize,
    pub Height: usize,
    pub Depth: usize,
    /// `CUarray_format`.
    pub Format: u32,
    pub NumChannels: u32,
    pub Flags: u32,
}

/// `CUmemPoolProps` (`cuMemPoolCreate`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemPoolProps {
    pub allocType: u32,
    pub handleTypes: u32,
    pub location: CUmemLocation,
    pub win32SecurityAttributes: *mut c_void,
    pub maxSize: usize,
    pub usage: u16,
    pub reserved: [u8; 54],
}

/// The leading fields of `CUmemAllocationProp` (the rest is reserved or Windows-only).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemAllocationProp {
    pub type_: u32,
    pub requestedHandleTypes: u32,
    pub location: CUmemLocation,
    pub win32HandleMetaData: *mut c_void,
    pub allocFlags: [u8; 8],
}
