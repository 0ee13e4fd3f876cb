//! The command line as a user runs it: real processes, real exit codes.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::process::{Command, Output};

use tf_fake_gpu::testing::{isolated_config, to_toml};

const BIN: &str = env!("CARGO_BIN_EXE_tensor-fusion");

/// Run tensor-fusion on an isolated simulated machine.
fn tf(args: &[&str], profile: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.toml");
    std::fs::write(&path, profile).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "backend = \"fake\"\n").unwrap();
    Command::new(BIN)
        .args(args)
        .env("TF_FAKE_GPU_CONFIG", &path)
        .env_remove("TF_BACKEND")
        .env("TF_CONFIG", &config)
        .output()
        .unwrap()
}

fn isolated() -> String {
    to_toml(&isolated_config("cli", 2))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn devices_json_lists_every_field() {
    let o = tf(&["devices", "--json"], &isolated());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arr = v.as_array().expect("a JSON array");
    assert_eq!(arr.len(), 2);
    for (i, d) in arr.iter().enumerate() {
        assert_eq!(d["index"], i);
        for field in [
            "uuid",
            "model",
            "total_memory_bytes",
            "compute_units",
            "fp16_tflops",
            "vendor",
            "backend",
        ] {
            assert!(!d[field].is_null(), "field {field} missing in {d}");
        }
        assert_eq!(d["backend"], "fake");
        assert_eq!(d["vendor"], "nvidia");
        assert_eq!(d["compute_units"], 132);
        assert_eq!(d["total_memory_bytes"], 81559u64 << 20);
    }
}

#[test]
fn devices_table_is_human_readable() {
    let o = tf(&["devices"], &isolated());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("INDEX"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("NVIDIA H100 80GB HBM3"))
            .count(),
        2,
        "{out}"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_a_non_zero_exit() {
    let o = tf(&["devices", "--backend", "rocm"], &isolated());
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown backend \"rocm\""),
        "{}",
        stderr(&o)
    );

    let o = tf(
        &["devices"],
        "[[device]]\nmodel = \"x\"\nmemory = \"a lot\"\nsms = 1\nfp16_tflops = 1\n",
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("gpu.toml") && e.contains("a lot"), "{e}");

    let o = tf(&["devices"], "[[device]]\nmodel = \"x\"\n");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("memory"), "{}", stderr(&o));

    let o = Command::new(BIN)
        .args(["devices"])
        .env_remove("TF_BACKEND")
        .env("TF_CONFIG", "/nonexistent/tf-config.toml")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/tf-config.toml"),
        "{}",
        stderr(&o)
    );

    let o = tf(&["no-such-command"], &isolated());
    assert!(!o.status.success());
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["devices", "--help"],
        vec!["demo", "--help"],
        vec!["fake-gpu", "--help"],
        vec!["fake-gpu", "info", "--help"],
        vec!["sim", "--help"],
    ] {
        let o = tf(&args, &isolated());
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
}

#[test]
fn demo_runs_on_the_simulated_gpu() {
    let o = tf(
        &["demo", "--json", "--seconds", "1"],
        &to_toml(&isolated_config("demo", 1)),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["vector_add"]["checked"], v["vector_add"]["elements"]);
    let shares = v["contention"]["process_share_pct"].as_array().unwrap();
    assert_eq!(shares.len(), 2);
    for s in shares {
        let s = s.as_f64().unwrap();
        assert!((s - 50.0).abs() < 6.0, "share {s} in {v}");
    }
    let f = &v["fraction"];
    assert_eq!(f["vram_total_seen"], 1u64 << 30, "{v}");
    assert_eq!(f["vram_allocated"], 1u64 << 30, "{v}");
    let pct = f["achieved_percent"].as_f64().unwrap();
    assert!((pct - 30.0).abs() <= 3.0, "{v}");
    let util = v["contention"]["device_utilization_pct"].as_f64().unwrap();
    let busy = v["contention"]["arbitrated_busy_pct"].as_f64().unwrap();
    assert!((util - busy).abs() <= 2.0, "{v}");
}

#[test]
fn fake_gpu_install_lays_out_the_driver_libraries() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("libs");
    let o = tf(
        &["fake-gpu", "install", dest.to_str().unwrap()],
        &isolated(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for name in [
        "libcuda.so.1",
        "libcuda.so",
        "libnvidia-ml.so.1",
        "libnvidia-ml.so",
    ] {
        let p = dest.join(name);
        let head = std::fs::read(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&head[..4], b"\x7fELF", "{name} is not a shared library");
        // Links, not tens of MB of copies per install.
        assert!(
            std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{name} is not a link"
        );
    }
    // --copy makes copies.
    let copies = dir.path().join("copies");
    let o = tf(
        &["fake-gpu", "install", "--copy", copies.to_str().unwrap()],
        &isolated(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m = std::fs::symlink_metadata(copies.join("libcuda.so.1")).unwrap();
    assert!(m.file_type().is_file());
    assert!(stderr(&o).contains("LD_LIBRARY_PATH="), "{}", stderr(&o));
    // The installed libraries serve the CUDA backend.
    let o = Command::new(BIN)
        .args(["devices", "--backend", "cuda", "--json"])
        .env("LD_LIBRARY_PATH", &dest)
        .env("TF_FAKE_GPU_CONFIG", {
            let p = dir.path().join("gpu.toml");
            std::fs::write(&p, isolated()).unwrap();
            p
        })
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["backend"], "cuda");
}

/// Two demos started together each run on a private simulated machine: both print their
/// figures within 3 points of their targets.
#[test]
fn two_demos_at_once_both_hold_their_figures() {
    let profile = to_toml(&isolated_config("demos", 1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.toml");
    std::fs::write(&path, profile).unwrap();
    let demo = || {
        Command::new(BIN)
            .args(["demo", "--json", "--seconds", "1"])
            .env("TF_FAKE_GPU_CONFIG", &path)
            .env_remove("TF_BACKEND")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (demo(), demo());
    for child in [a, b] {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for s in v["contention"]["process_share_pct"].as_array().unwrap() {
            let s = s.as_f64().unwrap();
            assert!((s - 50.0).abs() <= 3.0, "share {s} in {v}");
        }
        let pct = v["fraction"]["achieved_percent"].as_f64().unwrap();
        assert!((pct - 30.0).abs() <= 3.0, "{v}");
    }
}

/// What a new user met on a first run, each now a clear error before anything runs.
#[test]
fn first_run_rough_edges_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    for (args, says) in [
        (
            vec!["run", "--vram", "4", "--", "sh", "-c", &touch],
            "no unit",
        ),
        (
            vec!["run", "--vram", "-1", "--", "sh", "-c", &touch],
            "negative",
        ),
        (
            vec!["run", "--device", "-1", "--", "sh", "-c", &touch],
            "start at 0",
        ),
        (
            vec!["run", "--compute-percent", "-1", "--", "sh", "-c", &touch],
            "(0, 100]",
        ),
        (
            vec![
                "run",
                "--report",
                "/nonexistent/folder/report.json",
                "--",
                "sh",
                "-c",
                &touch,
            ],
            "/nonexistent/folder/report.json",
        ),
    ] {
        let o = tf(&args, &isolated());
        let e = stderr(&o);
        assert!(!o.status.success(), "{args:?}: {e}");
        assert!(e.contains(says), "{args:?}: {e}");
        assert!(!e.contains("-- -1"), "no misleading tip: {e}");
        assert!(!e.contains("error: error:"), "{e}");
        assert!(!e.contains('\x1b'), "no ANSI colours off a terminal: {e:?}");
        assert!(!marker.exists(), "{args:?}: the command ran");
    }
    // Profiles are validated.
    let bad_uuid = "[[device]]\nmodel = \"x\"\nmemory = \"1GiB\"\nsms = 1\nfp16_tflops = 1\nuuid = \"not-a-uuid\"\n";
    let o = tf(&["devices"], bad_uuid);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not-a-uuid"), "{}", stderr(&o));
    let missing = format!(
        "shm_dir = \"{}\"\n[[device]]\nmodel = \"x\"\nmemory = \"1GiB\"\nsms = 1\nfp16_tflops = 1\n",
        dir.path().join("no-such-folder").display()
    );
    let o = tf(&["devices"], &missing);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(
        !dir.path().join("no-such-folder").exists(),
        "not silently created"
    );
    // A simulated-GPU error carries no CUDA error code.
    let o = tf(&["run", "--device", "9", "--", "true"], &isolated());
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("CUDA_ERROR"), "{}", stderr(&o));
    // -h says what the tool is, not only the crate's description.
    let o = tf(&["-h"], &isolated());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("GPU virtualization") && out.contains("Commands:"),
        "{out}"
    );
}

/// The default simulated machine lives in a folder of the user's own, and `run` keeps one set
/// of links to the driver libraries per user, not a copy per invocation.
#[test]
fn default_segments_are_per_user_and_run_leaves_no_copies_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["fake-gpu", "info"])
        .env_remove("TF_FAKE_GPU_CONFIG")
        .env_remove("TF_FAKE_GPU_SHM_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("/dev/shm/tf-fake-gpu-{uid}")),
        "{out}"
    );
    for _ in 0..2 {
        let o = Command::new(BIN)
            .args(["run", "--vram", "1GiB", "--", "true"])
            .env("TMPDIR", tmp.path())
            .env("TF_FAKE_GPU_CONFIG", {
                let p = tmp.path().join("gpu.toml");
                std::fs::write(&p, isolated()).unwrap();
                p
            })
            .env("TF_VGPU_DIR", tmp.path().join("regions"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let mut left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![
            "gpu.toml".to_string(),
            "regions".into(),
            format!("tensor-fusion-{uid}")
        ]
    );
    let driver = tmp.path().join(format!("tensor-fusion-{uid}/fake-driver"));
    for e in std::fs::read_dir(&driver).unwrap().flatten() {
        assert!(e.file_type().unwrap().is_symlink(), "{:?}", e.path());
    }
    assert_eq!(
        std::fs::read_dir(tmp.path().join("regions"))
            .unwrap()
            .count(),
        0
    );
}

/// `tensor-fusion install` lays out a product that runs from any folder on its own libraries
/// (the installed layout wins over the build folder), and a binary without its libraries says
/// where it looked and how to fix it.
#[test]
fn the_installed_product_runs_from_any_folder() {
    let root = tempfile::tempdir().unwrap();
    let prefix = root.path().join("prefix");
    let o = Command::new(BIN)
        .args(["install", "--prefix", prefix.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let installed = prefix.join("bin/tensor-fusion");
    let profile = root.path().join("gpu.toml");
    std::fs::write(&profile, isolated()).unwrap();
    let cwd = root.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    let run = |bin: &std::path::Path, args: &[&str]| {
        Command::new(bin)
            .args(args)
            .current_dir(&cwd)
            .env_remove("TF_LIB_DIR")
            .env_remove("TF_BACKEND")
            .env("TF_FAKE_GPU_CONFIG", &profile)
            .env("TF_VGPU_DIR", &cwd)
            .output()
            .unwrap()
    };
    let o = run(&installed, &["fake-gpu", "info"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        out.matches("installed beside the binary").count(),
        tf_fake_gpu::install::DRIVER_LIBS.len(),
        "every simulated driver library (CUDA, NVML, ACL, DCMI): {out}"
    );
    let o = run(
        &installed,
        &[
            "run",
            "--vram",
            "1GiB",
            "--",
            installed.to_str().unwrap(),
            "cuda-probe",
            "vram",
            "64",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["total"], 1u64 << 30);
    let libs = root.path().join("libs");
    let o = run(&installed, &["fake-gpu", "install", libs.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_link(libs.join("libcuda.so.1")).unwrap(),
        prefix.join("lib/tensor-fusion/libcuda.so")
    );
    // The binary alone, away from every library.
    let lonely = root.path().join("lonely/bin");
    std::fs::create_dir_all(&lonely).unwrap();
    std::fs::copy(&installed, lonely.join("tensor-fusion")).unwrap();
    let o = run(&lonely.join("tensor-fusion"), &["run", "--", "true"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("cannot find libtf_cuda_interposer.so"), "{e}");
    assert!(
        e.contains(&lonely.display().to_string()),
        "where it looked: {e}"
    );
    assert!(
        e.contains("TF_LIB_DIR") && e.contains("tensor-fusion install"),
        "the fix: {e}"
    );
}

/// A full shared-memory folder is an error when the region or a simulated device's segment is
/// created (space is reserved before anything is mapped), never a SIGBUS later. Runs in a mount
/// namespace of its own (`unshare`) on a 64 KiB tmpfs that is already full.
#[test]
fn a_full_shm_folder_is_an_error_not_a_crash() {
    let root = tempfile::tempdir().unwrap();
    let full = root.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let profile = root.path().join("gpu.toml");
    let mut config = isolated_config("full", 1);
    config.shm_dir = full.clone();
    std::fs::write(&profile, to_toml(&config)).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {dir} || exit 99; \
         head -c 60000 /dev/zero > {dir}/filler; \
         TF_FAKE_GPU_CONFIG={profile} {bin} devices; echo segment=$?; \
         TF_FAKE_GPU_CONFIG={ok} {bin} run --region-dir {dir} -- true; echo region=$?",
        dir = full.display(),
        profile = profile.display(),
        ok = {
            let p = root.path().join("ok.toml");
            std::fs::write(&p, isolated()).unwrap();
            p.display().to_string()
        },
        bin = BIN,
    );
    // As root a plain mount namespace will do; otherwise a user namespace maps us to root.
    let mut o = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output();
    if o.as_ref()
        .is_ok_and(|o| o.status.code() == Some(99) || !o.status.success())
    {
        o = Command::new("unshare")
            .args(["-Urm", "sh", "-c", &script])
            .output();
    }
    let o = match o {
        Ok(o) if o.status.code() != Some(99) => o,
        _ => {
            eprintln!("SKIPPED: cannot mount a tmpfs in a private mount namespace here");
            return;
        }
    };
    let out = String::from_utf8_lossy(&o.stdout);
    let err = stderr(&o);
    assert!(out.contains("segment=1"), "{out}\n{err}");
    assert!(out.contains("region=1"), "{out}\n{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        !err.contains("SIGBUS") && !err.contains("Bus error"),
        "{err}"
    );
}

/// `TF_LOG_FORMAT=json`: every line the command logs is one JSON object with its time, level,
/// target and fields; an unknown format is said so, and text is used.
#[test]
fn logs_are_json_lines_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.toml");
    std::fs::write(&path, isolated()).unwrap();
    let run = |format: &str| {
        Command::new(BIN)
            .args(["run", "--backend", "fake", "--vram", "1GiB", "--", "true"])
            .env("TF_FAKE_GPU_CONFIG", &path)
            .env("TF_LOG", "tensor_fusion=info")
            .env("TF_LOG_FORMAT", format)
            .output()
            .unwrap()
    };
    let o = run("json");
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let start = lines
        .iter()
        .find(|v| v["fields"]["message"] == "starting the command on its vGPU")
        .unwrap_or_else(|| panic!("no start line in {lines:?}"));
    assert_eq!(start["level"], "INFO", "{start}");
    assert_eq!(start["target"], "tensor_fusion::run", "{start}");
    assert!(start["timestamp"].is_string(), "{start}");
    assert!(start["fields"]["region"].is_string(), "{start}");
    let o = run("xml");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("TF_LOG_FORMAT=\"xml\" is not a format"),
        "{}",
        stderr(&o)
    );
}
