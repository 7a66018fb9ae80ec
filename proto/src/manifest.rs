//! The release manifest file: a version set as JSON, written by
//! `lockstep-agent measure` from a build's output and read by
//! `lockstep release propose --manifest`. Paths that are UTF-8 are written as
//! `path`; any other name is written losslessly as `path_hex`.

use serde::{Deserialize, Serialize};

use crate::digest::{self, DigestError};
use crate::pb::{Entry, EntryKind};

pub const FORMAT: &str = "lockstep-manifest/1";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub format: String,
    /// Hex version-set digest of `entries`, checked when read.
    pub digest: String,
    pub entries: Vec<ManifestEntry>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path_hex: Option<String>,
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub sha256: String,
    #[serde(default)]
    pub size: u64,
    /// Octal permission bits, e.g. "0755".
    pub mode: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub link_target_hex: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub error: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a lockstep manifest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest format is {found:?}; this lockstep reads {FORMAT:?}")]
    Format { found: String },
    #[error("manifest entry {index}: {problem}")]
    Entry { index: usize, problem: String },
    #[error("manifest: {0}")]
    Digest(#[from] DigestError),
    #[error("manifest digest {stated} does not match its entries ({computed}): the file was edited or truncated")]
    DigestMismatch { stated: String, computed: String },
}

const KINDS: [(EntryKind, &str); 13] = [
    (EntryKind::File, "file"),
    (EntryKind::Symlink, "symlink"),
    (EntryKind::Missing, "missing"),
    (EntryKind::Unreadable, "unreadable"),
    (EntryKind::Fifo, "fifo"),
    (EntryKind::Socket, "socket"),
    (EntryKind::BlockDevice, "block-device"),
    (EntryKind::CharDevice, "char-device"),
    (EntryKind::Unstable, "unstable"),
    (EntryKind::Process, "process"),
    (EntryKind::ProcessLib, "process-lib"),
    (EntryKind::ProcessArgs, "process-args"),
    (EntryKind::ConfigKey, "config-key"),
];

pub fn kind_name(kind: EntryKind) -> &'static str {
    KINDS.iter().find(|(k, _)| *k == kind).map_or("unknown", |(_, n)| n)
}

fn to_manifest_entry(e: &Entry) -> ManifestEntry {
    let (path, path_hex) = match std::str::from_utf8(&e.path) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(hex::encode(&e.path))),
    };
    ManifestEntry {
        path,
        path_hex,
        kind: kind_name(e.kind()).to_string(),
        sha256: hex::encode(&e.sha256),
        size: e.size,
        mode: format!("{:04o}", e.mode),
        uid: e.uid,
        gid: e.gid,
        link_target_hex: (!e.link_target.is_empty()).then(|| hex::encode(&e.link_target)),
        error: e.error.clone(),
        value: e.value.clone(),
    }
}

fn from_manifest_entry(index: usize, m: ManifestEntry) -> Result<Entry, ManifestError> {
    let bad = |problem: String| ManifestError::Entry { index, problem };
    let path = match (m.path, m.path_hex) {
        (Some(p), None) => p.into_bytes(),
        (None, Some(h)) => hex::decode(h).map_err(|e| bad(format!("path_hex: {e}")))?,
        _ => return Err(bad("needs exactly one of path or path_hex".into())),
    };
    let kind = KINDS
        .iter()
        .find(|(_, n)| *n == m.kind)
        .map(|(k, _)| *k)
        .ok_or_else(|| bad(format!("unknown kind {:?}", m.kind)))?;
    let sha256 = hex::decode(&m.sha256).map_err(|e| bad(format!("sha256: {e}")))?;
    if kind == EntryKind::File && sha256.len() != 32 {
        return Err(bad("a file needs a 64-hex-digit sha256".into()));
    }
    let mode = u32::from_str_radix(&m.mode, 8).map_err(|_| bad(format!("mode {:?} is not octal", m.mode)))?;
    let link_target = match m.link_target_hex {
        Some(h) => hex::decode(h).map_err(|e| bad(format!("link_target_hex: {e}")))?,
        None => Vec::new(),
    };
    Ok(Entry {
        path,
        kind: kind as i32,
        sha256,
        size: m.size,
        mode,
        uid: m.uid,
        gid: m.gid,
        link_target,
        error: m.error,
        value: m.value,
    })
}

/// The manifest JSON for canonical entries.
pub fn to_json(entries: &[Entry]) -> Result<String, ManifestError> {
    let file = ManifestFile {
        format: FORMAT.into(),
        digest: hex::encode(digest::digest(entries)),
        entries: entries.iter().map(to_manifest_entry).collect(),
    };
    Ok(serde_json::to_string_pretty(&file)?)
}

/// Canonical entries from manifest JSON, checking format and digest.
pub fn from_json(text: &str) -> Result<Vec<Entry>, ManifestError> {
    let file: ManifestFile = serde_json::from_str(text)?;
    if file.format != FORMAT {
        return Err(ManifestError::Format { found: file.format });
    }
    let entries = file
        .entries
        .into_iter()
        .enumerate()
        .map(|(i, m)| from_manifest_entry(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let entries = digest::canonicalize(entries)?;
    let computed = hex::encode(digest::digest(&entries));
    if computed != file.digest {
        return Err(ManifestError::DigestMismatch {
            stated: file.digest,
            computed,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        digest::canonicalize(vec![
            Entry {
                path: b"/opt/smars/bin/smars".to_vec(),
                kind: EntryKind::File as i32,
                sha256: vec![7; 32],
                size: 42,
                mode: 0o755,
                ..Default::default()
            },
            Entry {
                path: b"/opt/smars/\xffodd".to_vec(),
                kind: EntryKind::Symlink as i32,
                link_target: b"target".to_vec(),
                mode: 0o777,
                ..Default::default()
            },
            Entry {
                path: b"/opt/smars/gone".to_vec(),
                kind: EntryKind::Missing as i32,
                ..Default::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn round_trips_losslessly() {
        let json = to_json(&entries()).unwrap();
        assert!(json.contains("\"path_hex\""));
        assert_eq!(from_json(&json).unwrap(), entries());
    }

    #[test]
    fn edited_manifest_is_refused() {
        let json = to_json(&entries()).unwrap().replace("\"size\": 42", "\"size\": 43");
        let err = from_json(&json).unwrap_err();
        assert!(matches!(err, ManifestError::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let json = to_json(&entries())
            .unwrap()
            .replace("\"kind\": \"missing\"", "\"kind\": \"ghost\"");
        let err = from_json(&json).unwrap_err().to_string();
        assert!(err.contains("unknown kind \"ghost\""), "{err}");
        assert!(from_json("{\"format\":\"lockstep-manifest/1\",\"digest\":\"\",\"entries\":[],\"x\":1}").is_err());
    }
}
