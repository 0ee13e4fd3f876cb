//! Peak dense FP16 tensor throughput of NVIDIA models, for [`tf_hal::DeviceInfo::fp16_tflops`].
//!
//! The driver cannot say how fast a GPU is, so the figure comes from this table, matched on the
//! name the driver reports (`cuDeviceGetName`, e.g. "NVIDIA H100 80GB HBM3", "Tesla T4"). Numbers
//! are NVIDIA's datasheet (or architecture whitepaper) figures for FP16 on tensor cores, **dense**:
//! where a sheet quotes "with sparsity" the figure here is half of it. Where a sheet lists FP16
//! and FP32 accumulation separately (GeForce, L40), the figure is the FP16-accumulate peak and
//! the comment gives the FP32-accumulate one. Models not in the table get an estimate from the
//! SM count, the clock and the per-SM tensor throughput of the compute capability
//! ([`estimate_fp16_tflops`]).

/// One model of the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSpec {
    /// A short canonical name ("H100 SXM5").
    pub name: &'static str,
    /// Peak dense FP16 tensor TFLOPS.
    pub fp16_tflops: f64,
    /// Words that must appear consecutively in the normalised driver name.
    pattern: &'static [&'static str],
    /// Words that must also appear somewhere in it.
    requires: &'static [&'static str],
}

const fn m(
    name: &'static str,
    pattern: &'static [&'static str],
    requires: &'static [&'static str],
    fp16_tflops: f64,
) -> ModelSpec {
    ModelSpec {
        name,
        fp16_tflops,
        pattern,
        requires,
    }
}

/// The table, most specific entries first (the first match wins).
pub const MODELS: &[ModelSpec] = &[
    // --- Blackwell ---
    // NVIDIA GB200 NVL72 datasheet: FP16/BF16 Tensor Core 360 PFLOPS (with sparsity) for 72 GPUs
    // = 5 PFLOPS sparse per GPU -> 2,500 dense.
    m("GB200", &["GB200"], &[], 2500.0),
    // NVIDIA HGX B200 datasheet: FP16/BF16 Tensor Core 36 PFLOPS (with sparsity) for 8 GPUs
    // = 4.5 PFLOPS sparse per GPU -> 2,250 dense.
    m("B200", &["B200"], &[], 2250.0),
    // NVIDIA HGX B100 datasheet: FP16/BF16 Tensor Core 28 PFLOPS (with sparsity) for 8 GPUs
    // = 3.5 PFLOPS sparse per GPU -> 1,750 dense.
    m("B100", &["B100"], &[], 1750.0),
    // NVIDIA RTX Blackwell GPU architecture whitepaper: RTX 5090 peak FP16 tensor with FP16
    // accumulate 419 dense (838 sparse); 209.5 with FP32 accumulate.
    m("GeForce RTX 5090", &["RTX", "5090"], &[], 419.0),
    // --- Hopper ---
    // NVIDIA GH200 Grace Hopper Superchip datasheet: FP16 Tensor Core 1,979 TFLOPS (with
    // sparsity) -> 989.4 dense (same GPU as H100 SXM5).
    m("GH200", &["GH200"], &[], 989.4),
    // NVIDIA H200 datasheet: H200 NVL FP16 Tensor Core 1,671 TFLOPS (with sparsity) -> 835.5.
    m("H200 NVL", &["H200"], &["NVL"], 835.5),
    // NVIDIA H200 datasheet: H200 SXM FP16 Tensor Core 1,979 TFLOPS (with sparsity) -> 989.4.
    m("H200 SXM", &["H200"], &[], 989.4),
    // NVIDIA H100 datasheet (2024 revision): H100 NVL FP16 Tensor Core 1,671 TFLOPS (with
    // sparsity) -> 835.5 per GPU.
    m("H100 NVL", &["H100"], &["NVL"], 835.5),
    // NVIDIA H100 datasheet: H100 PCIe FP16 Tensor Core 1,513 TFLOPS (with sparsity) -> 756.5.
    m("H100 PCIe", &["H100"], &["PCIE"], 756.5),
    // NVIDIA H100 datasheet / Hopper architecture whitepaper: H100 SXM5 peak FP16 tensor
    // 989.4 dense (1,979 with sparsity). The SXM5 part reports "NVIDIA H100 80GB HBM3".
    m("H100 SXM5", &["H100"], &[], 989.4),
    // NVIDIA H800 product brief: same tensor throughput as H100 PCIe / SXM5 (the export variant
    // limits NVLink, not compute).
    m("H800 PCIe", &["H800"], &["PCIE"], 756.5),
    m("H800 SXM5", &["H800"], &[], 989.4),
    // NVIDIA H20 product brief (export variant, 78 SMs): FP16/BF16 Tensor 148 TFLOPS dense
    // (296 with sparsity).
    m("H20", &["H20"], &[], 148.0),
    // --- Ada Lovelace ---
    // NVIDIA L40S datasheet: FP16 Tensor Core 362.05 TFLOPS dense (733 with sparsity).
    m("L40S", &["L40S"], &[], 362.05),
    // NVIDIA L40 datasheet: peak FP16 tensor with FP16 accumulate 362.1 dense (724.2 sparse);
    // 181.05 with FP32 accumulate.
    m("L40", &["L40"], &[], 362.1),
    // NVIDIA L20 product brief (export variant): FP16 Tensor 119.5 TFLOPS dense (239 sparse).
    m("L20", &["L20"], &[], 119.5),
    // NVIDIA L4 datasheet: FP16 Tensor Core 242 TFLOPS (with sparsity) -> 121.
    m("L4", &["L4"], &[], 121.0),
    // NVIDIA Ada GPU architecture whitepaper: RTX 6000 Ada peak FP16 tensor 364.2 dense
    // (728.5 sparse).
    m("RTX 6000 Ada", &["RTX", "6000", "ADA"], &[], 364.2),
    // NVIDIA Ada GPU architecture whitepaper: RTX 4090 peak FP16 tensor with FP16 accumulate
    // 330.3 dense (660.6 sparse); 165.2 with FP32 accumulate.
    m("GeForce RTX 4090", &["RTX", "4090"], &[], 330.3),
    // NVIDIA Ada GPU architecture whitepaper: RTX 4080 peak FP16 tensor with FP16 accumulate
    // 194.9 dense (389.9 sparse); 97.5 with FP32 accumulate.
    m("GeForce RTX 4080", &["RTX", "4080"], &[], 194.9),
    // --- Ampere ---
    // NVIDIA A100 datasheet: FP16 Tensor Core 312 TFLOPS dense (624 with sparsity), for the
    // SXM4 and PCIe, 40GB and 80GB parts alike.
    m("A100", &["A100"], &[], 312.0),
    // NVIDIA A800 datasheet: FP16 Tensor Core 312 TFLOPS dense (624 with sparsity).
    m("A800", &["A800"], &[], 312.0),
    // NVIDIA A30 datasheet: FP16 Tensor Core 165 TFLOPS dense (330 with sparsity).
    m("A30", &["A30"], &[], 165.0),
    // NVIDIA A40 datasheet: FP16 Tensor 149.7 TFLOPS dense (299.4 with sparsity).
    m("A40", &["A40"], &[], 149.7),
    // NVIDIA publishes no A10G datasheet (AWS G5). It is the A10's GA102 configuration (72 SMs)
    // at a 1.71 GHz boost: 72 x 1,024 FLOP/clk x 1.71 GHz = 126, quoted like the A10's 125.
    m("A10G", &["A10G"], &[], 125.0),
    // NVIDIA A10 datasheet: FP16 Tensor Core 125 TFLOPS dense (250 with sparsity).
    m("A10", &["A10"], &[], 125.0),
    // NVIDIA A2 datasheet: FP16 Tensor Core 18 TFLOPS dense (36 with sparsity).
    m("A2", &["A2"], &[], 18.0),
    // NVIDIA RTX A6000 datasheet: peak FP16 tensor 154.8 TFLOPS dense (309.7 with sparsity).
    m("RTX A6000", &["A6000"], &[], 154.8),
    // NVIDIA RTX A5000 datasheet: tensor performance 222.2 TFLOPS (with sparsity) -> 111.1.
    m("RTX A5000", &["A5000"], &[], 111.1),
    // NVIDIA Ampere GA102 whitepaper: RTX 3090 Ti peak FP16 tensor with FP16 accumulate 160
    // dense (320 sparse); 80 with FP32 accumulate.
    m("GeForce RTX 3090 Ti", &["RTX", "3090", "TI"], &[], 160.0),
    // NVIDIA Ampere GA102 whitepaper: RTX 3090 peak FP16 tensor with FP16 accumulate 142
    // dense (284 sparse); 71 with FP32 accumulate.
    m("GeForce RTX 3090", &["RTX", "3090"], &[], 142.0),
    // --- Turing ---
    // NVIDIA T4 datasheet: mixed precision (FP16/FP32) 65 TFLOPS.
    m("T4", &["T4"], &[], 65.0),
    // --- Volta ---
    // NVIDIA V100 datasheet: V100S PCIe tensor performance 130 TFLOPS.
    m("V100S PCIe", &["V100S"], &[], 130.0),
    // NVIDIA V100 datasheet: V100 PCIe tensor performance 112 TFLOPS.
    m("V100 PCIe", &["V100"], &["PCIE"], 112.0),
    // NVIDIA V100 datasheet: V100 SXM2 tensor performance 125 TFLOPS.
    m("V100 SXM2", &["V100"], &[], 125.0),
    // --- Pascal (no tensor cores: the FP16 vector peak) ---
    // NVIDIA Tesla P100 datasheet: half precision 18.7 TFLOPS (PCIe), 21.2 (SXM2/NVLink).
    m("P100 PCIe", &["P100"], &["PCIE"], 18.7),
    m("P100 SXM2", &["P100"], &[], 21.2),
];

/// Upper-case words of a driver name: "NVIDIA A100-SXM4-80GB" -> ["A100", "SXM4", "80GB"].
/// Vendor and brand words (NVIDIA, TESLA, GEFORCE, QUADRO) are dropped.
fn words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
        .filter(|w| !matches!(w.as_str(), "NVIDIA" | "TESLA" | "GEFORCE" | "QUADRO"))
        .collect()
}

/// The table entry for a name the driver reports, if the model is known.
pub fn lookup(driver_name: &str) -> Option<&'static ModelSpec> {
    let words = words(driver_name);
    MODELS.iter().find(|spec| {
        let n = spec.pattern.len();
        n <= words.len()
            && words
                .windows(n)
                .any(|w| w.iter().zip(spec.pattern).all(|(a, b)| a == b))
            && spec.requires.iter().all(|r| words.iter().any(|w| w == r))
    })
}

/// Dense FP16 tensor FLOPs per SM per clock of a compute capability (FP16 accumulate, which is
/// the datasheet peak). Generations without tensor cores give their FP16 vector rate.
pub fn fp16_flops_per_sm_per_clock(major: u32, minor: u32) -> f64 {
    match (major, minor) {
        // Maxwell and older: no fast FP16; the FP32 rate (128 FMA/clk on 5.x).
        (0..=5, _) => 256.0,
        // GP100: 64 FP32 cores doing paired FP16 FMAs.
        (6, 0) => 256.0,
        // GP10x: FP16 at 1/64 of the FP32 rate.
        (6, _) => 4.0,
        // Volta and Turing: 8 tensor cores x 64 FMA.
        (7, _) => 1024.0,
        // GA100: 4 tensor cores x 256 FMA.
        (8, 0) => 2048.0,
        // GA10x and Ada: 4 tensor cores x 128 FMA (dense).
        (8, _) => 1024.0,
        // Hopper: 4 tensor cores x 512 FMA.
        (9, _) => 4096.0,
        // Blackwell data-centre parts (10.x, 11.x): twice Hopper per SM.
        (10 | 11, _) => 8192.0,
        // Blackwell GeForce/RTX (12.x): 4 tensor cores x 128 FMA (dense, FP16 accumulate).
        (12, _) => 1024.0,
        // Something newer: assume at least the latest data-centre rate we know.
        _ => 8192.0,
    }
}

/// Estimated peak dense FP16 tensor TFLOPS from the SM count, the clock in kHz (the driver's
/// `CU_DEVICE_ATTRIBUTE_CLOCK_RATE`) and the compute capability.
pub fn estimate_fp16_tflops(sms: u32, clock_khz: u32, cc: (u32, u32)) -> f64 {
    let flops = sms as f64 * clock_khz as f64 * 1e3 * fp16_flops_per_sm_per_clock(cc.0, cc.1);
    (flops / 1e12 * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tflops(name: &str) -> f64 {
        lookup(name)
            .unwrap_or_else(|| panic!("{name:?} is not in the table"))
            .fp16_tflops
    }

    #[test]
    fn realistic_driver_names_resolve() {
        let cases = [
            ("NVIDIA H100 80GB HBM3", 989.4),
            ("NVIDIA H100 PCIe", 756.5),
            ("NVIDIA H100 NVL", 835.5),
            ("NVIDIA H200", 989.4),
            ("NVIDIA H200 NVL", 835.5),
            ("NVIDIA H20", 148.0),
            ("NVIDIA H800", 989.4),
            ("NVIDIA H800 PCIe", 756.5),
            ("NVIDIA GH200 480GB", 989.4),
            ("NVIDIA A100-SXM4-80GB", 312.0),
            ("NVIDIA A100-SXM4-40GB", 312.0),
            ("NVIDIA A100-PCIE-40GB", 312.0),
            ("NVIDIA A100 80GB PCIe", 312.0),
            ("NVIDIA A800-SXM4-80GB", 312.0),
            ("NVIDIA A10", 125.0),
            ("NVIDIA A10G", 125.0),
            ("NVIDIA A30", 165.0),
            ("NVIDIA A40", 149.7),
            ("NVIDIA A2", 18.0),
            ("NVIDIA RTX A6000", 154.8),
            ("NVIDIA L4", 121.0),
            ("NVIDIA L40", 362.1),
            ("NVIDIA L40S", 362.05),
            ("NVIDIA L20", 119.5),
            ("Tesla T4", 65.0),
            ("Tesla V100-SXM2-16GB", 125.0),
            ("Tesla V100-SXM2-32GB", 125.0),
            ("Tesla V100-PCIE-32GB", 112.0),
            ("Tesla V100S-PCIE-32GB", 130.0),
            ("Tesla P100-PCIE-16GB", 18.7),
            ("NVIDIA GeForce RTX 4090", 330.3),
            ("NVIDIA GeForce RTX 4080", 194.9),
            ("NVIDIA GeForce RTX 3090", 142.0),
            ("NVIDIA GeForce RTX 3090 Ti", 160.0),
            ("NVIDIA GeForce RTX 5090", 419.0),
            ("NVIDIA RTX 6000 Ada Generation", 364.2),
            ("NVIDIA B200", 2250.0),
            ("NVIDIA GB200", 2500.0),
        ];
        for (name, want) in cases {
            assert_eq!(tflops(name), want, "{name}");
        }
    }

    #[test]
    fn names_do_not_match_by_prefix() {
        // A10 must not match A100, L40 not L40S, H20 not H200, RTX 3090 not 3090 Ti.
        assert_eq!(lookup("NVIDIA A100-SXM4-80GB").unwrap().name, "A100");
        assert_eq!(lookup("NVIDIA L40S").unwrap().name, "L40S");
        assert_eq!(lookup("NVIDIA H200").unwrap().name, "H200 SXM");
        assert_eq!(lookup("NVIDIA H20").unwrap().name, "H20");
        assert_eq!(
            lookup("NVIDIA GeForce RTX 3090 Ti").unwrap().name,
            "GeForce RTX 3090 Ti"
        );
        assert!(lookup("NVIDIA GeForce RTX 3080").is_none());
        assert!(lookup("NVIDIA A1000").is_none());
        assert!(lookup("").is_none());
        assert!(lookup("Some Other GPU").is_none());
    }

    #[test]
    fn every_entry_matches_its_own_pattern() {
        for spec in MODELS {
            let name = [spec.pattern, spec.requires].concat().join(" ");
            let found = lookup(&name).unwrap_or_else(|| panic!("{} unreachable", spec.name));
            assert_eq!(found.fp16_tflops, spec.fp16_tflops, "{}", spec.name);
            assert!(spec.fp16_tflops > 0.0);
        }
    }

    #[test]
    fn estimates_are_close_to_the_datasheets() {
        // H100 SXM5: 132 SMs at 1.83 GHz (the tensor boost) -> 989.4.
        assert_eq!(estimate_fp16_tflops(132, 1_830_000, (9, 0)), 989.4);
        // A100: 108 SMs at 1.41 GHz -> 311.9 (datasheet 312).
        assert_eq!(estimate_fp16_tflops(108, 1_410_000, (8, 0)), 311.9);
        // T4: 40 SMs at 1.59 GHz -> 65.1 (datasheet 65).
        assert_eq!(estimate_fp16_tflops(40, 1_590_000, (7, 5)), 65.1);
        // L4: 58 SMs at 2.04 GHz -> 121.2 (datasheet 121).
        assert_eq!(estimate_fp16_tflops(58, 2_040_000, (8, 9)), 121.2);
        // V100 SXM2: 80 SMs at 1.53 GHz -> 125.3 (datasheet 125).
        assert_eq!(estimate_fp16_tflops(80, 1_530_000, (7, 0)), 125.3);
        assert!(estimate_fp16_tflops(1, 1_000_000, (13, 0)) > 0.0);
    }
}
