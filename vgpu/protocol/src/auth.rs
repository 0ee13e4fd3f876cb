//! Tokens: every connection proves it knows the worker's token before any device work.
//!
//! A token file holds the token (surrounding whitespace ignored); it must not be readable by
//! other users, since whoever reads it can use the worker's GPU.

use std::io;
use std::path::Path;

/// Read a token file. Refuses an empty token and a file other users may read.
pub fn read_token_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| io::Error::new(e.kind(), format!("token file {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "token file {} is readable by other users: chmod 600 {}",
                path.display(),
                path.display()
            ),
        ));
    }
    let text = std::fs::read(path)?;
    let token = text.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("token file {} is empty", path.display()),
        ));
    }
    if token.len() > crate::wire::MAX_TOKEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "token file {} holds more than {} bytes",
                path.display(),
                crate::wire::MAX_TOKEN
            ),
        ));
    }
    Ok(token)
}

/// Compare two tokens in time that depends only on their lengths.
pub fn tokens_match(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(tokens_match(b"secret", b"secret"));
        assert!(!tokens_match(b"secret", b"secreT"));
        assert!(!tokens_match(b"secret", b"secret2"));
    }
}
