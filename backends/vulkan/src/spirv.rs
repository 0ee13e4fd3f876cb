//! The little of SPIR-V's binary form the backend reads: the header, and the names of the
//! compute entry points (so that an unknown kernel name is `NotFound` before any pipeline is
//! built).

use tf_hal::{Error, ErrorKind, Result};

const MAGIC: u32 = 0x0723_0203;
const OP_ENTRY_POINT: u32 = 15;
const EXECUTION_MODEL_GL_COMPUTE: u32 = 5;

/// A SPIR-V module's words and its compute entry points.
#[derive(Debug, Clone)]
pub struct SpirV {
    pub words: Vec<u32>,
    pub entries: Vec<String>,
}

fn invalid(why: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::InvalidImage,
        format!("not a SPIR-V module: {}", why.into()),
    )
}

impl SpirV {
    /// Read a module from its bytes (little-endian words; a big-endian module is accepted too).
    pub fn parse(bytes: &[u8]) -> Result<SpirV> {
        if bytes.len() < 20 || !bytes.len().is_multiple_of(4) {
            return Err(invalid(format!(
                "{} bytes (a module is a whole number of 32-bit words, at least 5)",
                bytes.len()
            )));
        }
        let le = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == MAGIC;
        let be = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == MAGIC;
        if !le && !be {
            return Err(invalid("bad magic number"));
        }
        let words: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if le {
                    u32::from_le_bytes(b)
                } else {
                    u32::from_be_bytes(b)
                }
            })
            .collect();
        let mut entries = Vec::new();
        let mut i = 5;
        while i < words.len() {
            let count = (words[i] >> 16) as usize;
            let op = words[i] & 0xffff;
            if count == 0 || i + count > words.len() {
                return Err(invalid(format!("truncated instruction at word {i}")));
            }
            if op == OP_ENTRY_POINT && count >= 4 && words[i + 1] == EXECUTION_MODEL_GL_COMPUTE {
                entries.push(literal_string(&words[i + 3..i + count]));
            }
            i += count;
        }
        Ok(SpirV { words, entries })
    }
}

/// A SPIR-V literal string: UTF-8 bytes in little-endian order within words, NUL-terminated.
fn literal_string(words: &[u32]) -> String {
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_kernels_have_four_entries() {
        let m = SpirV::parse(tf_hal::TEST_KERNELS_SPIRV).unwrap();
        assert_eq!(
            m.entries,
            [
                "tf_vector_add_f32",
                "tf_saxpy_f32",
                "tf_fill_u32",
                "tf_busy"
            ]
        );
    }

    #[test]
    fn garbage_is_an_invalid_image() {
        for bad in [&b""[..], b"not spir-v at all!!!", &[0u8; 22]] {
            let e = SpirV::parse(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidImage, "{e}");
        }
        let mut truncated = tf_hal::TEST_KERNELS_SPIRV[..40].to_vec();
        truncated[22] = 0xff; // a huge word count
        assert!(SpirV::parse(&truncated).is_err());
    }
}
