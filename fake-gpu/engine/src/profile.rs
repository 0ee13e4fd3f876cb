//! Device profiles of the simulated GPU, from a TOML file (`TF_FAKE_GPU_CONFIG`) or the default.
//!
//! ```toml
//! # Where the shared-memory segments live; it must exist. Default: $TF_FAKE_GPU_SHM_DIR, else a
//! # folder of this user's own, /dev/shm/tf-fake-gpu-<uid> (created, mode 0700), so that users
//! # never share, or lock each other out of, a simulated machine by accident.
//! shm_dir = "/dev/shm/my-machine"
//!
//! [[device]]
//! model = "NVIDIA H100 80GB HBM3"
//! memory = "81559MiB"
//! sms = 132
//! fp16_tflops = 989.4
//! # optional: uuid (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx; default: derived from the
//! #           profile, so different profiles never collide), vendor, pci_bus_id, numa_node,
//! #           compute_capability, memory_bandwidth_gbps, launch_overhead_ns, wave_ns, nvlink
//! ```
//!
//! The default is two devices modeled on the NVIDIA H100 SXM5 80GB. Sources: NVIDIA H100 Tensor
//! Core GPU datasheet (SXM5 column): FP16 Tensor Core 1,979 TFLOPS *with sparsity*, so 989.4 dense;
//! 80 GB HBM3 at 3.35 TB/s; the full GH100 has 144 SMs of which the SXM5 product enables 132
//! (NVIDIA H100 architecture whitepaper); `nvidia-smi` on an H100 SXM5 reports 81559 MiB of
//! memory; compute capability 9.0 (CUDA C Programming Guide, compute capabilities table).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tf_hal::{DeviceUuid, Error, ErrorKind, Result, Vendor, units::parse_bytes};

/// Environment variable naming the profile file.
pub const CONFIG_ENV: &str = "TF_FAKE_GPU_CONFIG";
/// Environment variable naming the shared-memory directory.
pub const SHM_DIR_ENV: &str = "TF_FAKE_GPU_SHM_DIR";

/// One simulated device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProfile {
    pub model: String,
    pub uuid: String,
    pub vendor: Vendor,
    pub memory_bytes: u64,
    pub sms: u32,
    pub fp16_tflops: f64,
    pub pci_bus_id: String,
    pub numa_node: u32,
    /// (major, minor)
    pub compute_capability: (u32, u32),
    pub memory_bandwidth_gbps: f64,
    /// Fixed cost of every kernel, added to its modeled duration.
    pub launch_overhead_ns: u64,
    /// Modeled time for one wave of blocks of a kernel the engine does not know.
    pub wave_ns: u64,
    /// Devices with `nvlink = true` are linked to each other by NVLink.
    pub nvlink: bool,
}

/// The whole simulated machine.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeGpuConfig {
    pub devices: Vec<DeviceProfile>,
    /// Where the devices' shared-memory segments live.
    pub shm_dir: PathBuf,
    /// Whether `shm_dir` is the per-user default (created when missing); a folder named by the
    /// profile or `$TF_FAKE_GPU_SHM_DIR` must exist.
    pub shm_dir_is_default: bool,
    /// Where the profile came from (for messages), `None` for the built-in default.
    pub source: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    shm_dir: Option<PathBuf>,
    #[serde(default)]
    device: Vec<FileDevice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDevice {
    model: String,
    memory: toml::Value,
    sms: u32,
    fp16_tflops: f64,
    uuid: Option<String>,
    vendor: Option<String>,
    pci_bus_id: Option<String>,
    numa_node: Option<u32>,
    compute_capability: Option<String>,
    memory_bandwidth_gbps: Option<f64>,
    launch_overhead_ns: Option<u64>,
    wave_ns: Option<u64>,
    nvlink: Option<bool>,
}

const H100_MODEL: &str = "NVIDIA H100 80GB HBM3";

impl DeviceProfile {
    /// The default device: an NVIDIA H100 SXM5 80GB.
    pub fn h100_sxm(index: u32) -> Self {
        DeviceProfile {
            model: H100_MODEL.to_string(),
            uuid: default_uuid(H100_MODEL, 81559 << 20, 132, index),
            vendor: Vendor::Nvidia,
            memory_bytes: 81559 << 20,
            sms: 132,
            fp16_tflops: 989.4,
            pci_bus_id: default_pci_bus_id(index),
            numa_node: 0,
            compute_capability: (9, 0),
            memory_bandwidth_gbps: 3350.0,
            launch_overhead_ns: 2_000,
            wave_ns: 5_000,
            nvlink: true,
        }
    }
}

pub use ascend_sys::chips::{ASCEND_CHIPS, AscendChip, VnpuTemplate, ascend_chip};

const GIB: u64 = 1 << 30;

impl DeviceProfile {
    /// An Ascend 910B3 (see [`ASCEND_CHIPS`] for the sources).
    pub fn ascend_910b3(index: u32) -> Self {
        Self::ascend("Ascend910B3", 64 * GIB, 20, 313.0, 1600.0, index)
    }

    /// An Ascend 310P3, as on an Atlas 300I Pro card (see [`ASCEND_CHIPS`]).
    pub fn ascend_310p3(index: u32) -> Self {
        Self::ascend("Ascend310P3", 24 * GIB, 8, 70.0, 204.8, index)
    }

    fn ascend(model: &str, memory: u64, cores: u32, tflops: f64, bw: f64, index: u32) -> Self {
        DeviceProfile {
            model: model.to_string(),
            uuid: default_uuid(model, memory, cores, index),
            vendor: Vendor::Ascend,
            memory_bytes: memory,
            sms: cores,
            fp16_tflops: tflops,
            pci_bus_id: default_pci_bus_id(index),
            numa_node: 0,
            compute_capability: (0, 0),
            memory_bandwidth_gbps: bw,
            launch_overhead_ns: 2_000,
            wave_ns: 5_000,
            nvlink: false,
        }
    }
}

/// A device's UUID derived from what makes its profile (model, memory, SMs) and its index, so
/// that two different profiles never name their devices alike, and one profile always does.
fn default_uuid(model: &str, memory_bytes: u64, sms: u32, index: u32) -> String {
    // FNV-1a over the fields, twice with different seeds for 128 bits.
    let hash = |seed: u64| {
        let mut h = seed;
        for b in model
            .bytes()
            .chain(memory_bytes.to_le_bytes())
            .chain(sms.to_le_bytes())
            .chain(index.to_le_bytes())
        {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hash(0xcbf2_9ce4_8422_2325).to_be_bytes());
    bytes[8..].copy_from_slice(&hash(0x8422_2325_cbf2_9ce4).to_be_bytes());
    DeviceUuid::from_bytes(bytes).to_string()
}

fn default_pci_bus_id(index: u32) -> String {
    format!("00000000:{:02X}:00.0", 0x18 + index * 0x10)
}

fn config_error(origin: &Path, msg: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("simulated GPU profile {}: {msg}", origin.display()),
    )
}

impl FakeGpuConfig {
    /// The built-in default: two H100 SXM5 80GB.
    pub fn default_h100x2() -> Self {
        let (shm_dir, shm_dir_is_default) = default_shm_dir();
        FakeGpuConfig {
            devices: vec![DeviceProfile::h100_sxm(0), DeviceProfile::h100_sxm(1)],
            shm_dir,
            shm_dir_is_default,
            source: None,
        }
    }

    /// The built-in Ascend machine: two Ascend 910B3 (the simulated `libascendcl.so` and
    /// `libdcmi.so` use it when no profile is named).
    pub fn default_ascend() -> Self {
        let (shm_dir, shm_dir_is_default) = default_shm_dir();
        FakeGpuConfig {
            devices: vec![
                DeviceProfile::ascend_910b3(0),
                DeviceProfile::ascend_910b3(1),
            ],
            shm_dir,
            shm_dir_is_default,
            source: None,
        }
    }

    /// `$TF_FAKE_GPU_CONFIG` if set (it must then be valid), else the built-in machine of
    /// `vendor` (two H100s for NVIDIA, two 910B3s for Ascend).
    pub fn from_env_for(vendor: Vendor) -> Result<Self> {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => Self::load(Path::new(&p)),
            _ if vendor == Vendor::Ascend => Ok(Self::default_ascend()),
            _ => Ok(Self::default_h100x2()),
        }
    }

    /// `$TF_FAKE_GPU_CONFIG` if set (it must then be valid), else the default.
    pub fn from_env() -> Result<Self> {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => Self::load(Path::new(&p)),
            _ => Ok(Self::default_h100x2()),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_error(path, format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| config_error(origin, e.to_string().trim_end()))?;
        if file.device.is_empty() {
            return Err(config_error(
                origin,
                "no [[device]] entries: a profile needs at least one device",
            ));
        }
        let mut devices = Vec::with_capacity(file.device.len());
        for (i, d) in file.device.into_iter().enumerate() {
            let at = |msg: String| config_error(origin, format!("device {i}: {msg}"));
            let memory_bytes = match &d.memory {
                toml::Value::Integer(n) if *n > 0 => *n as u64,
                toml::Value::String(s) => parse_bytes(s).map_err(|e| at(e.message))?,
                other => {
                    return Err(at(format!(
                        "memory must be a size like \"80GiB\", got {other}"
                    )));
                }
            };
            if memory_bytes < (1 << 20) {
                return Err(at("memory must be at least 1MiB".into()));
            }
            if d.sms == 0 {
                return Err(at("sms must be at least 1".into()));
            }
            if !(d.fp16_tflops.is_finite() && d.fp16_tflops > 0.0) {
                return Err(at("fp16_tflops must be a positive number".into()));
            }
            let vendor = match &d.vendor {
                Some(v) => v.parse().map_err(|e: Error| at(e.message))?,
                None => Vendor::Nvidia,
            };
            let compute_capability = match &d.compute_capability {
                None => (9, 0),
                Some(s) => {
                    let parsed = s
                        .split_once('.')
                        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
                    parsed.ok_or_else(|| {
                        at(format!("compute_capability {s:?} must look like \"9.0\""))
                    })?
                }
            };
            let bw = d.memory_bandwidth_gbps.unwrap_or(3350.0);
            if !(bw.is_finite() && bw > 0.0) {
                return Err(at("memory_bandwidth_gbps must be positive".into()));
            }
            let index = i as u32;
            let uuid = match &d.uuid {
                Some(u) => DeviceUuid::parse(u)
                    .map_err(|e| at(format!("uuid: {}", e.message)))?
                    .to_string(),
                None => default_uuid(&d.model, memory_bytes, d.sms, index),
            };
            devices.push(DeviceProfile {
                model: d.model,
                uuid,
                vendor,
                memory_bytes,
                sms: d.sms,
                fp16_tflops: d.fp16_tflops,
                pci_bus_id: d.pci_bus_id.unwrap_or_else(|| default_pci_bus_id(index)),
                numa_node: d.numa_node.unwrap_or(0),
                compute_capability,
                memory_bandwidth_gbps: bw,
                launch_overhead_ns: d.launch_overhead_ns.unwrap_or(2_000),
                wave_ns: d.wave_ns.unwrap_or(5_000),
                nvlink: d.nvlink.unwrap_or(false),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for d in &devices {
            if !seen.insert(d.uuid.to_ascii_lowercase()) {
                return Err(config_error(origin, format!("duplicate uuid {}", d.uuid)));
            }
        }
        let (shm_dir, shm_dir_is_default) = match file.shm_dir {
            Some(d) => (d, false),
            None => default_shm_dir(),
        };
        Ok(FakeGpuConfig {
            devices,
            shm_dir,
            shm_dir_is_default,
            source: Some(origin.to_path_buf()),
        })
    }

    /// Make sure the segment folder is there: the per-user default is created (mode 0700); a
    /// folder the profile or `$TF_FAKE_GPU_SHM_DIR` names must exist already.
    pub fn prepare_shm_dir(&self) -> Result<()> {
        let origin = || match &self.source {
            Some(p) => format!("the profile {}", p.display()),
            None => format!("${SHM_DIR_ENV}"),
        };
        if self.shm_dir_is_default {
            use std::os::unix::fs::DirBuilderExt;
            return std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.shm_dir)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::NotInitialized,
                        format!(
                            "cannot create the simulated GPU's folder {}: {e} (set {SHM_DIR_ENV} to a folder of yours)",
                            self.shm_dir.display()
                        ),
                    )
                });
        }
        if !self.shm_dir.is_dir() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the simulated GPU's shm_dir {} (from {}) does not exist: create it, or name an existing folder",
                    self.shm_dir.display(),
                    origin()
                ),
            ));
        }
        Ok(())
    }
}

/// `$TF_FAKE_GPU_SHM_DIR`, else this user's own folder under `/dev/shm`; and whether it is the
/// latter.
fn default_shm_dir() -> (PathBuf, bool) {
    match std::env::var_os(SHM_DIR_ENV) {
        Some(p) if !p.is_empty() => (PathBuf::from(p), false),
        _ => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            (PathBuf::from(format!("/dev/shm/tf-fake-gpu-{uid}")), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_two_h100s() {
        let c = FakeGpuConfig::default_h100x2();
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[0].sms, 132);
        assert_eq!(c.devices[0].memory_bytes, 81559 * 1024 * 1024);
        assert_ne!(c.devices[0].uuid, c.devices[1].uuid);
        // Derived from the profile: stable, valid, and different for a different profile.
        assert_eq!(
            c.devices[0].uuid,
            FakeGpuConfig::default_h100x2().devices[0].uuid
        );
        assert!(DeviceUuid::parse(&c.devices[0].uuid).is_ok());
        let l4 =
            "[[device]]\nmodel = \"NVIDIA L4\"\nmemory = \"24GiB\"\nsms = 58\nfp16_tflops = 121\n";
        let other = FakeGpuConfig::parse(l4, Path::new("p.toml")).unwrap();
        assert_ne!(other.devices[0].uuid, c.devices[0].uuid);
    }

    #[test]
    fn ascend_profiles_have_their_chips_and_templates() {
        let c = FakeGpuConfig::default_ascend();
        assert_eq!(c.devices.len(), 2);
        let d = &c.devices[0];
        assert_eq!(
            (d.vendor, d.sms, d.memory_bytes),
            (Vendor::Ascend, 20, 64 << 30)
        );
        let chip = ascend_chip(&d.model).unwrap();
        let names: Vec<_> = chip.templates.iter().map(|t| t.name).collect();
        assert_eq!(names, ["vir05_1c_16g", "vir10_3c_32g"]);
        let p = DeviceProfile::ascend_310p3(0);
        let chip = ascend_chip(&p.model).unwrap();
        assert!(
            chip.templates
                .iter()
                .any(|t| t.name == "vir04" && t.ai_cores == 4)
        );
        assert!(
            chip.templates
                .iter()
                .all(|t| t.ai_cores <= p.sms && t.memory_bytes <= p.memory_bytes)
        );
        assert_ne!(p.uuid, d.uuid);
    }

    #[test]
    fn uuids_and_folders_are_validated() {
        let bad =
            "[[device]]\nmodel=\"x\"\nmemory=\"1GiB\"\nsms=1\nfp16_tflops=1\nuuid=\"not-a-uuid\"\n";
        let e = FakeGpuConfig::parse(bad, Path::new("p.toml")).unwrap_err();
        assert!(
            e.message.contains("not-a-uuid") && e.message.contains("GPU-xxxxxxxx"),
            "{e}"
        );
        let spelled = "[[device]]\nmodel=\"x\"\nmemory=\"1GiB\"\nsms=1\nfp16_tflops=1\nuuid=\"GPU-0035D580-93C6-DD7D-14D6-DF43090ACB4F\"\n";
        let c = FakeGpuConfig::parse(spelled, Path::new("p.toml")).unwrap();
        assert_eq!(
            c.devices[0].uuid,
            "GPU-0035d580-93c6-dd7d-14d6-df43090acb4f"
        );
        let missing = format!("shm_dir = \"/no/such/folder\"\n{spelled}");
        let c = FakeGpuConfig::parse(&missing, Path::new("p.toml")).unwrap();
        let e = c.prepare_shm_dir().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(
            e.message.contains("/no/such/folder") && e.message.contains("does not exist"),
            "{e}"
        );
        assert!(
            !Path::new("/no/such/folder").exists(),
            "not silently created"
        );
    }

    #[test]
    fn file_parses_and_errors_are_clear() {
        let ok =
            "[[device]]\nmodel = \"NVIDIA L4\"\nmemory = \"24GiB\"\nsms = 58\nfp16_tflops = 121\n";
        let c = FakeGpuConfig::parse(ok, Path::new("p.toml")).unwrap();
        assert_eq!(c.devices[0].memory_bytes, 24 << 30);
        assert!(!c.devices[0].nvlink);

        let cases = [
            (
                "[[device]]\nmodel = \"x\"\nsms = 1\nfp16_tflops = 1\n",
                "memory",
            ),
            (
                "[[device]]\nmodel=\"x\"\nmemory=\"lots\"\nsms=1\nfp16_tflops=1\n",
                "lots",
            ),
            (
                "[[device]]\nmodel=\"x\"\nmemory=\"1GiB\"\nsms=0\nfp16_tflops=1\n",
                "sms",
            ),
            (
                "[[device]]\nmodel=\"x\"\nmemory=\"1GiB\"\nsms=1\nfp16_tflops=1\ncolour=1\n",
                "colour",
            ),
            ("shm_dir = \"/tmp\"\n", "no [[device]]"),
            ("this is not toml", "p.toml"),
        ];
        for (text, needle) in cases {
            let err = FakeGpuConfig::parse(text, Path::new("p.toml")).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Config);
            assert!(err.message.contains(needle), "{needle:?} not in {err}");
            assert!(err.message.contains("p.toml"), "{err}");
        }
    }
}
