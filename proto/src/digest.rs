//! The canonical version-set digest: equal sets give equal digests, whatever
//! order the entries were found in, and any change to any digested field of
//! any entry changes it.
//!
//! Encoding (all integers big-endian), hashed with SHA-256:
//! `"lockstep.v1.version-set\0"`, u64 entry count, then per entry sorted by
//! path bytes: u32 path length, path, u8 kind, u32 sha256 length, sha256,
//! u64 size, u32 mode, u32 uid, u32 gid, u32 link-target length, target,
//! u32 value length, value.
//! The `error` text is not digested: it explains an entry, it is not content.

use ring::digest::{Context, SHA256};

use crate::paths;
use crate::pb::Entry;

pub type Digest = [u8; 32];

const DOMAIN: &[u8] = b"lockstep.v1.version-set\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("path {path} appears more than once in the version set")]
    DuplicatePath { path: String },
    #[error("entry with an empty path in the version set")]
    EmptyPath,
}

/// Sorts entries by path and refuses duplicates, giving the canonical order.
pub fn canonicalize(mut entries: Vec<Entry>) -> Result<Vec<Entry>, DigestError> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    for pair in entries.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(DigestError::DuplicatePath {
                path: paths::display(&pair[0].path),
            });
        }
    }
    if entries.first().is_some_and(|e| e.path.is_empty()) {
        return Err(DigestError::EmptyPath);
    }
    Ok(entries)
}

/// Digest of canonical (sorted, unique) entries for which `keep` holds.
/// The controller uses `keep` to leave per-host paths out of comparisons.
pub fn digest_where(entries: &[Entry], keep: impl Fn(&Entry) -> bool) -> Digest {
    let kept: Vec<&Entry> = entries.iter().filter(|e| keep(e)).collect();
    let mut ctx = Context::new(&SHA256);
    ctx.update(DOMAIN);
    ctx.update(&(kept.len() as u64).to_be_bytes());
    for e in kept {
        put_bytes(&mut ctx, &e.path);
        ctx.update(&[u8::try_from(e.kind).unwrap_or(u8::MAX)]);
        put_bytes(&mut ctx, &e.sha256);
        ctx.update(&e.size.to_be_bytes());
        ctx.update(&e.mode.to_be_bytes());
        ctx.update(&e.uid.to_be_bytes());
        ctx.update(&e.gid.to_be_bytes());
        put_bytes(&mut ctx, &e.link_target);
        put_bytes(&mut ctx, e.value.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Digest of a whole canonical version set.
pub fn digest(entries: &[Entry]) -> Digest {
    digest_where(entries, |_| true)
}

fn put_bytes(ctx: &mut Context, bytes: &[u8]) {
    ctx.update(&(u32::try_from(bytes.len()).unwrap_or(u32::MAX)).to_be_bytes());
    ctx.update(bytes);
}

/// First 8 hex digits and "..", the way digests are shown to people.
pub fn short_hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".into();
    }
    let h = hex::encode(bytes);
    format!("{}..", &h[..h.len().min(8)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::EntryKind;

    fn file(path: &str, hash: u8) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File as i32,
            sha256: vec![hash; 32],
            size: 10,
            mode: 0o644,
            ..Default::default()
        }
    }

    #[test]
    fn order_does_not_matter() {
        let a = canonicalize(vec![file("/a", 1), file("/b", 2)]).unwrap();
        let b = canonicalize(vec![file("/b", 2), file("/a", 1)]).unwrap();
        assert_eq!(digest(&a), digest(&b));
    }

    #[test]
    fn every_digested_field_changes_the_digest() {
        let base = canonicalize(vec![file("/a", 1), file("/b", 2)]).unwrap();
        let d0 = digest(&base);
        type Mutation = Box<dyn Fn(&mut Entry)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|e| e.path = b"/c".to_vec()),
            Box::new(|e| e.kind = EntryKind::Unstable as i32),
            Box::new(|e| e.sha256[0] ^= 1),
            Box::new(|e| e.size += 1),
            Box::new(|e| e.mode = 0o755),
            Box::new(|e| e.uid = 1),
            Box::new(|e| e.gid = 1),
            Box::new(|e| e.link_target = b"/x".to_vec()),
            Box::new(|e| e.value = "1".into()),
        ];
        for (i, m) in mutations.iter().enumerate() {
            let mut set = base.clone();
            m(&mut set[1]);
            let set = canonicalize(set).unwrap();
            assert_ne!(digest(&set), d0, "mutation {i} did not change the digest");
        }
    }

    #[test]
    fn error_text_is_not_digested() {
        let mut a = canonicalize(vec![file("/a", 1)]).unwrap();
        let d0 = digest(&a);
        a[0].error = "Permission denied".into();
        assert_eq!(digest(&a), d0);
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        // Same concatenated bytes, different split between path and target.
        let mut a = file("/ab", 1);
        a.link_target = b"c".to_vec();
        let mut b = file("/a", 1);
        b.link_target = b"bc".to_vec();
        assert_ne!(digest(&[a]), digest(&[b]));
    }

    #[test]
    fn duplicates_are_refused() {
        let err = canonicalize(vec![file("/a", 1), file("/a", 2)]).unwrap_err();
        assert_eq!(err, DigestError::DuplicatePath { path: "/a".into() });
    }

    #[test]
    fn filtered_digest_equals_digest_of_the_kept_entries() {
        let all = canonicalize(vec![file("/a", 1), file("/etc/hostname", 2)]).unwrap();
        let kept = digest_where(&all, |e| e.path != b"/etc/hostname");
        assert_eq!(kept, digest(&[file("/a", 1)]));
    }

    #[test]
    fn empty_set_has_a_stable_digest() {
        assert_eq!(digest(&[]), digest(&[]));
        assert_ne!(digest(&[]), digest(&[file("/a", 1)]));
    }
}
