//! Ascend chips: the vNPU templates each offers (what `npu-smi info -t template-info` lists and
//! `dcmi_create_vdevice` accepts), AI CPUs and peak FP16 TFLOPS. One table, used by the Ascend
//! HAL backend (partition templates, TFLOPS) and by the simulated driver (its 910B3 and 310P3).

const GIB: u64 = 1 << 30;

/// A virtual-NPU template of an Ascend chip (what `npu-smi info -t template-info` lists): a
/// vNPU gets this many AI cores and AI CPUs and this much memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnpuTemplate {
    pub name: &'static str,
    pub ai_cores: u32,
    pub ai_cpus: u32,
    pub memory_bytes: u64,
}

/// What tensor-fusion knows of an Ascend chip model that the driver does not say: its vNPU
/// templates (DCMI creates vNPUs by template name but has no call that lists them), its AI CPUs
/// and its peak FP16 throughput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AscendChip {
    /// The profile's model name, e.g. `Ascend910B3`.
    pub model: &'static str,
    /// DCMI's chip name (`dcmi_chip_info.chip_name`), e.g. `910B3`.
    pub chip_name: &'static str,
    /// AI CPUs available to vNPUs.
    pub ai_cpus: u32,
    /// Dense FP16 TFLOPS of the whole chip.
    pub fp16_tflops: f64,
    /// The vNPU templates the chip offers.
    pub templates: &'static [VnpuTemplate],
}

/// Ascend chips the simulator models, with their vNPU templates. Sources: Huawei's Ascend
/// virtual instance documentation (MindCluster "Virtualization Rules": template names, AI cores,
/// AI CPUs and memory per template) and the chips' public specifications: Ascend 910B3, 20 AI
/// cores, 64 GB HBM2e, about 313 dense FP16 TFLOPS, 1.6 TB/s; Ascend 310P3 (Atlas 300I Pro), 8 AI
/// cores, 24 GB LPDDR4X at 204.8 GB/s, 70 FP16 TFLOPS, 7 AI CPUs.
pub const ASCEND_CHIPS: &[AscendChip] = &[
    AscendChip {
        model: "Ascend910B3",
        chip_name: "910B3",
        ai_cpus: 7,
        fp16_tflops: 313.0,
        templates: &[
            VnpuTemplate {
                name: "vir05_1c_16g",
                ai_cores: 5,
                ai_cpus: 1,
                memory_bytes: 16 * GIB,
            },
            VnpuTemplate {
                name: "vir10_3c_32g",
                ai_cores: 10,
                ai_cpus: 3,
                memory_bytes: 32 * GIB,
            },
        ],
    },
    AscendChip {
        model: "Ascend310P3",
        chip_name: "310P3",
        ai_cpus: 7,
        fp16_tflops: 70.0,
        templates: &[
            VnpuTemplate {
                name: "vir01",
                ai_cores: 1,
                ai_cpus: 1,
                memory_bytes: 3 * GIB,
            },
            VnpuTemplate {
                name: "vir02",
                ai_cores: 2,
                ai_cpus: 2,
                memory_bytes: 6 * GIB,
            },
            VnpuTemplate {
                name: "vir02_1c",
                ai_cores: 2,
                ai_cpus: 1,
                memory_bytes: 6 * GIB,
            },
            VnpuTemplate {
                name: "vir04",
                ai_cores: 4,
                ai_cpus: 4,
                memory_bytes: 12 * GIB,
            },
            VnpuTemplate {
                name: "vir04_3c",
                ai_cores: 4,
                ai_cpus: 3,
                memory_bytes: 12 * GIB,
            },
        ],
    },
];

/// The chip data of an Ascend profile's model (`None` for a model the simulator does not know:
/// it then has no vNPU templates).
pub fn ascend_chip(model: &str) -> Option<&'static AscendChip> {
    ASCEND_CHIPS
        .iter()
        .find(|c| c.model.eq_ignore_ascii_case(model))
}
