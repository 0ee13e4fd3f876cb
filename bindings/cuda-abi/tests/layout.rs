//! The hand-written structs and `#define` constants of `tf-cuda-abi` have the layout and values of
//! NVIDIA's real `cuda.h` and `nvml.h`: a C program compiled against the real headers prints
//! sizes, alignments, offsets and values, and they must equal what Rust says.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::mem::{align_of, offset_of, size_of};
use std::process::Command;

use tf_cuda_abi::cuda_types::*;
use tf_cuda_abi::nvml_types::*;

/// Lines `<what> <number>` from the Rust side, and the C expressions that print the same.
struct Checks {
    rust: Vec<String>,
    c: Vec<String>,
}

impl Checks {
    fn line(&mut self, label: String, value: u64, c_expr: String) {
        self.rust.push(format!("{label} {value}"));
        self.c.push(format!(
            "printf(\"%s %llu\\n\", \"{label}\", (unsigned long long)({c_expr}));"
        ));
    }
}

/// `layout!(checks, c_type => RustType { field, ... })`: size, alignment and every field's offset;
/// `layout!(checks, c_type => RustType prefix { field, ... })`: the offsets only (a Rust struct
/// that is a leading part of the C one).
///
/// A field named differently in C (a Rust keyword) is written `rust_name: "c_name"`.
macro_rules! layout {
    ($checks:ident, $c:literal => $t:ident { $($f:ident $(: $cf:literal)?),* $(,)? }) => {{
        $checks.line(format!("{} size", $c), size_of::<$t>() as u64, format!("sizeof({})", $c));
        $checks.line(format!("{} align", $c), align_of::<$t>() as u64, format!("_Alignof({})", $c));
        layout!($checks, $c => $t prefix { $($f $(: $cf)?),* });
    }};
    ($checks:ident, $c:literal => $t:ident prefix { $($f:ident $(: $cf:literal)?),* $(,)? }) => {{
        $(
            let c_field = [$($cf,)? stringify!($f)][0];
            $checks.line(
                format!("{}.{}", $c, c_field),
                offset_of!($t, $f) as u64,
                format!("offsetof({}, {})", $c, c_field),
            );
        )*
    }};
}

macro_rules! constants {
    ($checks:ident, $($name:literal = $value:expr),* $(,)?) => {{
        $( $checks.line($name.to_string(), $value as u64, format!("(unsigned long long)({})", $name)); )*
    }};
}

fn checks() -> Checks {
    let mut c = Checks {
        rust: Vec::new(),
        c: Vec::new(),
    };
    // cuda.h
    layout!(c, "CUuuid" => CUuuid { bytes });
    layout!(c, "CUipcEventHandle" => CUipcEventHandle { reserved });
    layout!(c, "CUipcMemHandle" => CUipcMemHandle { reserved });
    layout!(c, "CUmemLocation" => CUmemLocation { type_: "type" });
    layout!(c, "CUlaunchConfig" => CUlaunchConfig {
        gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream,
        attrs, numAttrs
    });
    layout!(c, "CUDA_MEMCPY2D" => CUDA_MEMCPY2D {
        srcXInBytes, srcY, srcMemoryType, srcHost, srcDevice, srcArray, srcPitch, dstXInBytes,
        dstY, dstMemoryType, dstHost, dstDevice, dstArray, dstPitch, WidthInBytes, Height
    });
    layout!(c, "CUDA_ARRAY_DESCRIPTOR" => CUDA_ARRAY_DESCRIPTOR { Width, Height, Format, NumChannels });
    layout!(c, "CUDA_ARRAY3D_DESCRIPTOR" => CUDA_ARRAY3D_DESCRIPTOR {
        Width, Height, Depth, Format, NumChannels, Flags
    });
    layout!(c, "CUmemPoolProps" => CUmemPoolProps {
        allocType, handleTypes, location, win32SecurityAttributes, maxSize, usage, reserved
    });
    layout!(c, "CUmemAllocationProp" => CUmemAllocationProp prefix {
        type_: "type", requestedHandleTypes, location, win32HandleMetaData, allocFlags
    });
    constants!(
        c,
        "(size_t)CU_STREAM_LEGACY" = CU_STREAM_LEGACY,
        "(size_t)CU_STREAM_PER_THREAD" = CU_STREAM_PER_THREAD,
        "(size_t)CU_LAUNCH_PARAM_END" = CU_LAUNCH_PARAM_END,
        "(size_t)CU_LAUNCH_PARAM_BUFFER_POINTER" = CU_LAUNCH_PARAM_BUFFER_POINTER,
        "(size_t)CU_LAUNCH_PARAM_BUFFER_SIZE" = CU_LAUNCH_PARAM_BUFFER_SIZE,
    );

    // nvml.h
    layout!(c, "nvmlMemory_t" => nvmlMemory_t { total, free, used });
    layout!(c, "nvmlMemory_v2_t" => nvmlMemory_v2_t { version, total, reserved, free, used });
    layout!(c, "nvmlUtilization_t" => nvmlUtilization_t { gpu, memory });
    layout!(c, "nvmlPciInfo_t" => nvmlPciInfo_t {
        busIdLegacy, domain, bus, device, pciDeviceId, pciSubSystemId, busId
    });
    layout!(c, "nvmlPciInfo_t" => nvmlPciInfoLegacyPrefix prefix {
        busIdLegacy, domain, bus, device, pciDeviceId, pciSubSystemId
    });
    layout!(c, "nvmlPciInfoExt_v1_t" => nvmlPciInfoExt_v1_t {
        version, domain, bus, device, pciDeviceId, pciSubSystemId, baseClass, subClass, busId
    });
    layout!(c, "nvmlProcessInfo_v1_t" => nvmlProcessInfo_v1_t { pid, usedGpuMemory });
    layout!(c, "nvmlProcessInfo_v2_t" => nvmlProcessInfo_v2_t {
        pid, usedGpuMemory, gpuInstanceId, computeInstanceId
    });
    layout!(c, "nvmlProcessInfo_t" => nvmlProcessInfo_t {
        pid, usedGpuMemory, gpuInstanceId, computeInstanceId
    });
    layout!(c, "nvmlBAR1Memory_t" => nvmlBAR1Memory_t { bar1Total, bar1Free, bar1Used });
    layout!(c, "nvmlProcessUtilizationSample_t" => nvmlProcessUtilizationSample_t {
        pid, timeStamp, smUtil, memUtil, encUtil, decUtil
    });
    layout!(c, "nvmlGpuInstanceProfileInfo_t" => nvmlGpuInstanceProfileInfo_t {
        id, isP2pSupported, sliceCount, instanceCount, multiprocessorCount, copyEngineCount,
        decoderCount, encoderCount, jpegCount, ofaCount, memorySizeMB
    });
    layout!(c, "nvmlGpuInstanceProfileInfo_v2_t" => nvmlGpuInstanceProfileInfo_v2_t {
        version, id, isP2pSupported, sliceCount, instanceCount, multiprocessorCount,
        copyEngineCount, decoderCount, encoderCount, jpegCount, ofaCount, memorySizeMB, name
    });
    layout!(c, "nvmlGpuInstanceProfileInfo_v3_t" => nvmlGpuInstanceProfileInfo_v3_t {
        version, id, sliceCount, instanceCount, multiprocessorCount, copyEngineCount,
        decoderCount, encoderCount, jpegCount, ofaCount, memorySizeMB, name, capabilities
    });
    // The prefix of the first nvmlPciInfo_t must fit the original struct, which ended with four
    // reserved words where the current one has busId[32].
    assert!(size_of::<nvmlPciInfoLegacyPrefix>() <= 16 + 9 * 4);
    constants!(
        c,
        "NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE" = NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE,
        "NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE" = NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE,
        "NVML_NVLINK_MAX_LINKS" = NVML_NVLINK_MAX_LINKS,
        "NVML_DEVICE_MIG_DISABLE" = NVML_DEVICE_MIG_DISABLE,
        "NVML_DEVICE_ARCH_KEPLER" = NVML_DEVICE_ARCH_KEPLER,
        "NVML_DEVICE_ARCH_MAXWELL" = NVML_DEVICE_ARCH_MAXWELL,
        "NVML_DEVICE_ARCH_PASCAL" = NVML_DEVICE_ARCH_PASCAL,
        "NVML_DEVICE_ARCH_VOLTA" = NVML_DEVICE_ARCH_VOLTA,
        "NVML_DEVICE_ARCH_TURING" = NVML_DEVICE_ARCH_TURING,
        "NVML_DEVICE_ARCH_AMPERE" = NVML_DEVICE_ARCH_AMPERE,
        "NVML_DEVICE_ARCH_ADA" = NVML_DEVICE_ARCH_ADA,
        "NVML_DEVICE_ARCH_HOPPER" = NVML_DEVICE_ARCH_HOPPER,
        "NVML_DEVICE_ARCH_BLACKWELL" = NVML_DEVICE_ARCH_BLACKWELL,
        "NVML_DEVICE_ARCH_UNKNOWN" = NVML_DEVICE_ARCH_UNKNOWN,
        "NVML_INIT_FLAG_NO_GPUS" = NVML_INIT_FLAG_NO_GPUS,
        "NVML_INIT_FLAG_NO_ATTACH" = NVML_INIT_FLAG_NO_ATTACH,
        "(unsigned int)NVML_VALUE_NOT_AVAILABLE" = NVML_VALUE_NOT_AVAILABLE_U32,
        "nvmlClocksEventReasonGpuIdle" = NVML_CLOCKS_EVENT_REASON_GPU_IDLE,
        "nvmlClocksEventReasonNone" = NVML_CLOCKS_EVENT_REASON_NONE,
        "NVML_DEVICE_NAME_V2_BUFFER_SIZE" = NVML_DEVICE_NAME_V2_BUFFER_SIZE,
        "NVML_GPU_INSTANCE_PROFILE_1_SLICE" = NVML_GPU_INSTANCE_PROFILE_1_SLICE,
        "NVML_GPU_INSTANCE_PROFILE_2_SLICE" = NVML_GPU_INSTANCE_PROFILE_2_SLICE,
        "NVML_GPU_INSTANCE_PROFILE_3_SLICE" = NVML_GPU_INSTANCE_PROFILE_3_SLICE,
        "NVML_GPU_INSTANCE_PROFILE_4_SLICE" = NVML_GPU_INSTANCE_PROFILE_4_SLICE,
        "NVML_GPU_INSTANCE_PROFILE_7_SLICE" = NVML_GPU_INSTANCE_PROFILE_7_SLICE,
        "NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2" = NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2,
        "NVML_GPU_INSTANCE_PROFILE_COUNT" = NVML_GPU_INSTANCE_PROFILE_COUNT,
        "nvmlGpuInstanceProfileInfo_v2" = NVML_GPU_INSTANCE_PROFILE_INFO_V2,
        "nvmlGpuInstanceProfileInfo_v3" = NVML_GPU_INSTANCE_PROFILE_INFO_V3,
        "nvmlMemory_v2" = NVML_MEMORY_V2,
        "nvmlPciInfoExt_v1" = NVML_PCI_INFO_EXT_V1,
    );
    c
}

#[test]
fn structs_and_constants_match_the_real_cuda_h_and_nvml_h() {
    let inc = tf_test_support::cuda_include_dir().expect("fetch NVIDIA's cuda.h and nvml.h");
    let checks = checks();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layout.c");
    let exe = dir.path().join("layout");
    let program = format!(
        "#include <stddef.h>\n#include <stdio.h>\n#include <cuda.h>\n#include <nvml.h>\nint main(void) {{\n{}\nreturn 0;\n}}\n",
        checks.c.join("\n")
    );
    std::fs::write(&src, program).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-I")
        .arg(&inc)
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    let c_lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(c_lines.len(), checks.rust.len());
    let diffs: Vec<String> = checks
        .rust
        .iter()
        .zip(&c_lines)
        .filter(|(r, c)| r != c)
        .map(|(r, c)| format!("rust `{r}` vs the header `{c}`"))
        .collect();
    assert!(
        diffs.is_empty(),
        "layouts differ from the headers:\n{}",
        diffs.join("\n")
    );
    eprintln!(
        "{} sizes, offsets and constants match cuda.h and nvml.h",
        c_lines.len()
    );
}
