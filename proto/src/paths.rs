//! Paths travel as raw OS bytes so that names which are not UTF-8 survive the
//! round trip; this module converts them and renders them for people.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub fn to_bytes(path: &Path) -> Vec<u8> {
    path.as_os_str().as_bytes().to_vec()
}

pub fn from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// Shows a path to a person: UTF-8 as is, any other byte as `\xNN`, so two
/// different names never look the same.
pub fn display(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_escapes_invalid_utf8_and_backslashes() {
        assert_eq!(display(b"/opt/a"), "/opt/a");
        assert_eq!(display(b"/opt/\xff\xfeb"), "/opt/\\xff\\xfeb");
        assert_eq!(display(b"/opt/\\xff"), "/opt/\\\\xff");
        assert_eq!(display(b"/a\nb"), "/a\\nb");
    }

    #[test]
    fn bytes_round_trip() {
        let raw = b"/tmp/\xc3\x28name".to_vec();
        assert_eq!(to_bytes(&from_bytes(&raw)), raw);
    }
}
