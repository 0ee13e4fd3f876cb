//! Mapping CUDA driver (`CUresult`) and NVML errors to the HAL's [`ErrorKind`], keeping the
//! vendor's code and symbolic name.

use cudarc::driver::DriverError;
use nvml_wrapper::error::NvmlError;
use tf_hal::{Error, ErrorKind};

/// The HAL kind of a CUDA driver error, by its symbolic name (`CUDA_ERROR_OUT_OF_MEMORY`).
pub fn cuda_error_kind(name: &str) -> ErrorKind {
    use ErrorKind::*;
    match name {
        "CUDA_ERROR_INVALID_VALUE"
        | "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"
        | "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"
        | "CUDA_ERROR_INVALID_CLUSTER_SIZE"
        | "CUDA_ERROR_INVALID_RESOURCE_TYPE"
        | "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION"
        | "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED"
        | "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED" => InvalidValue,
        "CUDA_ERROR_OUT_OF_MEMORY" => OutOfMemory,
        "CUDA_ERROR_NOT_INITIALIZED"
        | "CUDA_ERROR_DEINITIALIZED"
        | "CUDA_ERROR_SYSTEM_NOT_READY" => NotInitialized,
        // The toolkit's link-time stub was loaded instead of the driver.
        "CUDA_ERROR_STUB_LIBRARY" => LibraryNotFound,
        "CUDA_ERROR_NO_DEVICE" | "CUDA_ERROR_INVALID_DEVICE" => InvalidDevice,
        "CUDA_ERROR_INVALID_IMAGE"
        | "CUDA_ERROR_NO_BINARY_FOR_GPU"
        | "CUDA_ERROR_INVALID_PTX"
        | "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"
        | "CUDA_ERROR_INVALID_SOURCE" => InvalidImage,
        "CUDA_ERROR_INVALID_CONTEXT"
        | "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT"
        | "CUDA_ERROR_INVALID_HANDLE"
        | "CUDA_ERROR_CONTEXT_IS_DESTROYED"
        | "CUDA_ERROR_FUNCTION_NOT_LOADED" => InvalidHandle,
        "CUDA_ERROR_NOT_FOUND"
        | "CUDA_ERROR_FILE_NOT_FOUND"
        | "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND" => NotFound,
        "CUDA_ERROR_NOT_READY" => NotReady,
        "CUDA_ERROR_ILLEGAL_ADDRESS"
        | "CUDA_ERROR_MISALIGNED_ADDRESS"
        | "CUDA_ERROR_INVALID_ADDRESS_SPACE" => IllegalAddress,
        "CUDA_ERROR_LAUNCH_FAILED"
        | "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"
        | "CUDA_ERROR_LAUNCH_TIMEOUT"
        | "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING"
        | "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE"
        | "CUDA_ERROR_ASSERT"
        | "CUDA_ERROR_HARDWARE_STACK_ERROR"
        | "CUDA_ERROR_ILLEGAL_INSTRUCTION"
        | "CUDA_ERROR_INVALID_PC"
        | "CUDA_ERROR_TENSOR_MEMORY_LEAK"
        | "CUDA_ERROR_EXTERNAL_DEVICE" => LaunchFailed,
        "CUDA_ERROR_ECC_UNCORRECTABLE"
        | "CUDA_ERROR_NVLINK_UNCORRECTABLE"
        | "CUDA_ERROR_DEVICE_UNAVAILABLE"
        | "CUDA_ERROR_CONTAINED" => DeviceLost,
        "CUDA_ERROR_NOT_SUPPORTED"
        | "CUDA_ERROR_NOT_PERMITTED"
        | "CUDA_ERROR_UNSUPPORTED_LIMIT"
        | "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED"
        | "CUDA_ERROR_JIT_COMPILER_NOT_FOUND"
        | "CUDA_ERROR_JIT_COMPILATION_DISABLED"
        | "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY"
        | "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC"
        | "CUDA_ERROR_DEVICE_NOT_LICENSED"
        | "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE" => NotSupported,
        _ => Other,
    }
}

/// A HAL error from a `CUresult` code: the kind, `what` failed, the driver's own words, and the
/// vendor code and name.
pub fn cuda_code_error(what: &str, code: u32) -> Error {
    let name = tf_cuda_abi::cu_error_name(code)
        .map(str::to_string)
        .unwrap_or_else(|| format!("CUresult({code})"));
    let kind = cuda_error_kind(&name);
    let mut message = format!("{what}: {}", tf_cuda_abi::describe(&name));
    match kind {
        ErrorKind::IllegalAddress | ErrorKind::LaunchFailed => {
            message.push_str(" (the CUDA context is unusable after a kernel fault)")
        }
        ErrorKind::LibraryNotFound => message.push_str(
            " (the CUDA toolkit's stub libcuda.so was loaded instead of the NVIDIA driver: \
             remove the toolkit's stubs directory from LD_LIBRARY_PATH)",
        ),
        _ => {}
    }
    Error::new(kind, message).with_vendor(code as i64, name)
}

/// A HAL error from a cudarc [`DriverError`].
pub fn cuda_error(what: &str, e: DriverError) -> Error {
    cuda_code_error(what, e.0 as u32)
}

/// NVML's return code for an error nvml-wrapper reports, where it came from NVML.
fn nvml_code(e: &NvmlError) -> Option<u32> {
    use NvmlError::*;
    #[allow(deprecated)]
    let code = match e {
        Uninitialized => 1,
        InvalidArg => 2,
        NotSupported => 3,
        NoPermission => 4,
        AlreadyInitialized => 5,
        NotFound => 6,
        InsufficientSize(_) => 7,
        InsufficientPower => 8,
        DriverNotLoaded => 9,
        Timeout => 10,
        IrqIssue => 11,
        LibraryNotFound => 12,
        FunctionNotFound => 13,
        CorruptedInfoROM => 14,
        GpuLost => 15,
        ResetRequired => 16,
        OperatingSystem => 17,
        LibRmVersionMismatch => 18,
        InUse => 19,
        InsufficientMemory => 20,
        NoData => 21,
        VgpuEccNotSupported => 22,
        Unknown => 999,
        UnexpectedVariant(code) => *code,
        _ => return None,
    };
    Some(code)
}

/// The HAL kind of an NVML error.
pub fn nvml_error_kind(e: &NvmlError) -> ErrorKind {
    use NvmlError::*;
    match e {
        Uninitialized | DriverNotLoaded | LibRmVersionMismatch => ErrorKind::NotInitialized,
        InvalidArg | InsufficientSize(_) | StringTooLong { .. } | NulError(_) => {
            ErrorKind::InvalidValue
        }
        NotSupported | NoPermission | FunctionNotFound | FailedToLoadSymbol(_) | NoData => {
            ErrorKind::NotSupported
        }
        NotFound => ErrorKind::NotFound,
        LibraryNotFound | LibloadingError(_) => ErrorKind::LibraryNotFound,
        GpuLost | ResetRequired | CorruptedInfoROM => ErrorKind::DeviceLost,
        InsufficientMemory => ErrorKind::OutOfMemory,
        _ => ErrorKind::Other,
    }
}

/// A HAL error from an NVML error, with NVML's code and name where NVML returned one.
pub fn nvml_error(what: &str, e: NvmlError) -> Error {
    let kind = nvml_error_kind(&e);
    let err = Error::new(kind, format!("{what}: NVML: {e}"));
    match nvml_code(&e) {
        Some(code) => {
            let name = tf_cuda_abi::nvml_error_name(code)
                .map(str::to_string)
                .unwrap_or_else(|| format!("nvmlReturn_t({code})"));
            err.with_vendor(code as i64, name)
        }
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_codes_map_to_kinds_and_keep_the_vendor_code() {
        let cases = [
            (1, ErrorKind::InvalidValue, "CUDA_ERROR_INVALID_VALUE"),
            (2, ErrorKind::OutOfMemory, "CUDA_ERROR_OUT_OF_MEMORY"),
            (3, ErrorKind::NotInitialized, "CUDA_ERROR_NOT_INITIALIZED"),
            (34, ErrorKind::LibraryNotFound, "CUDA_ERROR_STUB_LIBRARY"),
            (100, ErrorKind::InvalidDevice, "CUDA_ERROR_NO_DEVICE"),
            (101, ErrorKind::InvalidDevice, "CUDA_ERROR_INVALID_DEVICE"),
            (200, ErrorKind::InvalidImage, "CUDA_ERROR_INVALID_IMAGE"),
            (218, ErrorKind::InvalidImage, "CUDA_ERROR_INVALID_PTX"),
            (400, ErrorKind::InvalidHandle, "CUDA_ERROR_INVALID_HANDLE"),
            (500, ErrorKind::NotFound, "CUDA_ERROR_NOT_FOUND"),
            (600, ErrorKind::NotReady, "CUDA_ERROR_NOT_READY"),
            (700, ErrorKind::IllegalAddress, "CUDA_ERROR_ILLEGAL_ADDRESS"),
            (719, ErrorKind::LaunchFailed, "CUDA_ERROR_LAUNCH_FAILED"),
            (801, ErrorKind::NotSupported, "CUDA_ERROR_NOT_SUPPORTED"),
            (999, ErrorKind::Other, "CUDA_ERROR_UNKNOWN"),
        ];
        for (code, kind, name) in cases {
            let e = cuda_code_error("cuFoo", code);
            assert_eq!(e.kind, kind, "{code}: {e}");
            let v = e.vendor.as_ref().unwrap();
            assert_eq!((v.code, v.name.as_str()), (code as i64, name));
            assert!(e.message.starts_with("cuFoo: "), "{e}");
        }
        let e = cuda_code_error("x", 123_456);
        assert_eq!(e.kind, ErrorKind::Other);
        assert_eq!(e.vendor.unwrap().name, "CUresult(123456)");
    }

    #[test]
    fn nvml_errors_map_to_kinds_and_keep_the_vendor_code() {
        let e = nvml_error("memory", NvmlError::NotSupported);
        assert_eq!(e.kind, ErrorKind::NotSupported);
        let v = e.vendor.unwrap();
        assert_eq!((v.code, v.name.as_str()), (3, "NVML_ERROR_NOT_SUPPORTED"));
        assert_eq!(
            nvml_error("x", NvmlError::GpuLost).kind,
            ErrorKind::DeviceLost
        );
        assert_eq!(
            nvml_error("x", NvmlError::DriverNotLoaded).kind,
            ErrorKind::NotInitialized
        );
        let e = nvml_error("x", NvmlError::FailedToLoadSymbol("nvmlFoo".into()));
        assert_eq!(e.kind, ErrorKind::NotSupported);
        assert!(e.vendor.is_none());
    }
}
