//! Worker addresses: `tcp://HOST:PORT`, `unix:///PATH`, `shm://NAME`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a worker listens, and where a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// TCP, across hosts: `tcp://HOST:PORT` (`HOST` a name, an IPv4 address or `[IPv6]`).
    Tcp(String),
    /// A Unix socket on this host: `unix:///PATH`.
    Unix(PathBuf),
    /// A shared-memory ring on this host: `shm://NAME`. The worker listens on a Unix socket
    /// named after `NAME` in the user's runtime folder, and each connection gets its own pair
    /// of rings in a memory file passed over that socket.
    Shm(String),
}

/// An address that does not parse, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{given:?} is not a worker address: {why} (expected tcp://HOST:PORT, unix:///PATH or shm://NAME)"
)]
pub struct BadAddress {
    pub given: String,
    pub why: String,
}

impl FromStr for Address {
    type Err = BadAddress;
    fn from_str(s: &str) -> Result<Self, BadAddress> {
        let bad = |why: &str| BadAddress {
            given: s.to_string(),
            why: why.to_string(),
        };
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no :PORT"))?;
            if host.is_empty() {
                return Err(bad("no host"));
            }
            port.parse::<u16>()
                .map_err(|_| bad("the port is not a number in 0..=65535"))?;
            Ok(Address::Tcp(rest.to_string()))
        } else if let Some(rest) = s.strip_prefix("unix://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    "the socket path must be absolute (unix:///run/worker.sock)",
                ));
            }
            Ok(Address::Unix(PathBuf::from(rest)))
        } else if let Some(name) = s.strip_prefix("shm://") {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !name.starts_with('.');
            if !ok {
                return Err(bad(
                    "the name must be 1 to 64 letters, digits, '-', '_' or '.' (not starting with '.')",
                ));
            }
            Ok(Address::Shm(name.to_string()))
        } else {
            Err(bad("unknown scheme"))
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(hp) => write!(f, "tcp://{hp}"),
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Shm(n) => write!(f, "shm://{n}"),
        }
    }
}

impl Address {
    /// The Unix socket a `shm://NAME` worker listens on for new connections (in the user's
    /// private runtime folder, `$TMPDIR/tensor-fusion-<uid>`).
    pub fn shm_socket(name: &str) -> std::io::Result<PathBuf> {
        Ok(tf_os::user_runtime_dir()?.join(format!("remote-shm-{name}.sock")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_and_refuses_the_rest() {
        assert_eq!(
            "tcp://127.0.0.1:7000".parse::<Address>().unwrap(),
            Address::Tcp("127.0.0.1:7000".into())
        );
        assert_eq!(
            "tcp://[::1]:7000".parse::<Address>().unwrap(),
            Address::Tcp("[::1]:7000".into())
        );
        assert_eq!(
            "unix:///tmp/w.sock".parse::<Address>().unwrap(),
            Address::Unix("/tmp/w.sock".into())
        );
        assert_eq!(
            "shm://gpu0".parse::<Address>().unwrap(),
            Address::Shm("gpu0".into())
        );
        for bad in [
            "tcp://host",
            "tcp://:80",
            "tcp://h:99999",
            "unix://rel.sock",
            "shm://",
            "shm://a/b",
            "shm://..",
            "http://x",
            "",
        ] {
            let e = bad.parse::<Address>().unwrap_err();
            assert!(e.to_string().contains("expected tcp://"), "{bad}: {e}");
        }
    }
}
