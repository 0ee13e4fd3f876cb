//! The committed SPIR-V test kernels (`hal/kernels/tf_kernels.spv`, the module
//! `tf_hal::TEST_KERNELS_SPIRV`) are what their GLSL sources compile to: this rebuilds them with
//! `hal/kernels/build-spirv.sh` (glslang, spirv-link, spirv-val) and compares the bytes.
//!
//! Needs glslangValidator (Debian: glslang-tools) and spirv-link/spirv-val (Debian:
//! spirv-tools), which `.ci/run` installs; without them it fails saying what to install.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::path::Path;
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hal/kernels/build-spirv.sh")
}

#[test]
fn committed_spirv_matches_its_glsl_sources() {
    let missing: Vec<&str> = [
        ("glslangValidator", "glslang-tools"),
        ("spirv-link", "spirv-tools"),
        ("spirv-val", "spirv-tools"),
    ]
    .iter()
    .filter(|(tool, _)| !have(tool))
    .map(|(_, pkg)| *pkg)
    .collect();
    assert!(
        missing.is_empty(),
        "cannot check the SPIR-V against its GLSL: install {} (Debian/Ubuntu packages; .ci/run does)",
        missing.join(" ")
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tf_kernels.spv");
    let run = Command::new("bash")
        .arg(script())
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "build-spirv.sh failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let built = std::fs::read(&out).unwrap();
    assert!(
        built == tf_hal::TEST_KERNELS_SPIRV,
        "hal/kernels/tf_kernels.spv is not what hal/kernels/glsl/*.comp compile to \
         ({} bytes built, {} committed): run hal/kernels/build-spirv.sh and commit the result \
         (a different glslang version also changes the bytes: this one is {})",
        built.len(),
        tf_hal::TEST_KERNELS_SPIRV.len(),
        String::from_utf8_lossy(
            &Command::new("glslangValidator")
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .lines()
        .next()
        .unwrap_or("unknown")
    );
}

#[test]
fn every_kernel_has_its_ptx_twin() {
    // The same entry names in both forms, so a test can pick either by backend.
    for name in [
        "tf_vector_add_f32",
        "tf_saxpy_f32",
        "tf_fill_u32",
        "tf_busy",
    ] {
        assert!(
            tf_hal::TEST_KERNELS_PTX.contains(&format!(".entry {name}(")),
            "{name} is not in the PTX"
        );
        let bytes = tf_hal::TEST_KERNELS_SPIRV;
        let needle = name.as_bytes();
        assert!(
            bytes.windows(needle.len()).any(|w| w == needle),
            "{name} is not in the SPIR-V"
        );
    }
}
