//! Run-time choice of backend: `--backend`, then `TF_BACKEND`, then a config file, then `fake`.
//!
//! The config file is TOML, found at `$TF_CONFIG`, else `/etc/tensor-fusion/config.toml`:
//!
//! ```toml
//! backend = "cuda"   # fake | cuda | ascend
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use tf_hal::{BackendKind, Error, ErrorKind, Result};

/// Environment variable naming the backend.
pub const BACKEND_ENV: &str = "TF_BACKEND";
/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "TF_CONFIG";
/// Where the config file lives when `TF_CONFIG` is unset.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tensor-fusion/config.toml";

/// The node-level configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub backend: Option<String>,
}

impl NodeConfig {
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("{}: {}", origin.display(), e.message()),
            )
        })
    }

    /// Load the file named by `TF_CONFIG` (which must exist), else the default path if it exists.
    pub fn load() -> Result<Option<(PathBuf, Self)>> {
        let (path, required) = match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => (PathBuf::from(p), true),
            _ => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some((path.clone(), NodeConfig::parse(&text, &path)?))),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::new(
                ErrorKind::Config,
                format!("cannot read config file {}: {e}", path.display()),
            )),
        }
    }
}

/// Resolve which backend to use. `explicit` is a command-line choice, which wins.
pub fn select_backend(explicit: Option<&str>) -> Result<BackendKind> {
    if let Some(name) = explicit {
        return name.parse();
    }
    if let Ok(name) = std::env::var(BACKEND_ENV)
        && !name.trim().is_empty()
    {
        return name
            .parse()
            .map_err(|e: Error| Error::new(e.kind, format!("{BACKEND_ENV}: {}", e.message)));
    }
    if let Some((path, cfg)) = NodeConfig::load()?
        && let Some(name) = cfg.backend
    {
        return name
            .parse()
            .map_err(|e: Error| Error::new(e.kind, format!("{}: {}", path.display(), e.message)));
    }
    Ok(BackendKind::Fake)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_choice_wins_and_unknown_names_are_rejected() {
        assert_eq!(select_backend(Some("cuda")).unwrap(), BackendKind::Cuda);
        assert_eq!(select_backend(Some("FAKE")).unwrap(), BackendKind::Fake);
        let err = select_backend(Some("rocm")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.contains("rocm"), "{err}");
        assert!(err.message.contains("fake, cuda, ascend"), "{err}");
    }

    #[test]
    fn config_file_is_strict() {
        let cfg = NodeConfig::parse("backend = \"ascend\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(cfg.backend.as_deref(), Some("ascend"));
        let err = NodeConfig::parse("backnd = \"cuda\"\n", Path::new("x.toml")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.contains("x.toml"));
    }
}
