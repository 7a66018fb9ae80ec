//! Comparing two version sets. Both sides use this: the controller to give
//! every drift reason, the console to show `lockstep diff`.

use std::cmp::Ordering;

use crate::digest::short_hex;
use crate::paths;
use crate::pb::{Change, ChangeKind, Entry, EntryKind};

/// Differences between two canonical (sorted, unique) entry lists, leaving
/// out paths for which `skip` holds. `left` is usually the host, `right` the
/// expected set (release or consensus); `right_label` names it in the text,
/// e.g. "release 2".
pub fn diff(left: &[Entry], right: &[Entry], right_label: &str, skip: impl Fn(&[u8]) -> bool) -> Vec<Change> {
    let mut out = Vec::new();
    let (mut l, mut r) = (
        left.iter().filter(|e| !skip(&e.path)).peekable(),
        right.iter().filter(|e| !skip(&e.path)).peekable(),
    );
    loop {
        let order = match (l.peek(), r.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.path.cmp(&b.path),
        };
        let (left_e, right_e) = match order {
            Ordering::Less => (l.next(), None),
            Ordering::Greater => (None, r.next()),
            Ordering::Equal => (l.next(), r.next()),
        };
        if let Some(change) = compare(left_e, right_e, right_label) {
            out.push(change);
        }
    }
    out
}

fn compare(left: Option<&Entry>, right: Option<&Entry>, label: &str) -> Option<Change> {
    let (path, kind, text) = match (left, right) {
        (Some(a), None) => (
            &a.path,
            ChangeKind::Removed,
            format!("{} ({}) not in {label}", paths::display(&a.path), describe(a)),
        ),
        (None, Some(b)) => (
            &b.path,
            ChangeKind::Added,
            format!("{} absent, {label} has {}", paths::display(&b.path), describe(b)),
        ),
        (Some(a), Some(b)) => {
            let field = differing_field(a, b, label)?;
            (
                &a.path,
                ChangeKind::Modified,
                format!("{} {field}", paths::display(&a.path)),
            )
        }
        (None, None) => return None,
    };
    Some(Change {
        path: path.clone(),
        kind: kind as i32,
        left: left.cloned(),
        right: right.cloned(),
        text,
    })
}

/// The first digested field that differs, as "<field> <left> != <label> (<right>)".
fn differing_field(a: &Entry, b: &Entry, label: &str) -> Option<String> {
    if a.kind != b.kind {
        return Some(format!("is {}, {label} has {}", describe(a), describe(b)));
    }
    let (field, left, right) = if a.sha256 != b.sha256 {
        ("sha256", short_hex(&a.sha256), short_hex(&b.sha256))
    } else if a.value != b.value {
        ("value", a.value.replace('\0', " "), b.value.replace('\0', " "))
    } else if a.link_target != b.link_target {
        ("target", paths::display(&a.link_target), paths::display(&b.link_target))
    } else if a.size != b.size {
        ("size", a.size.to_string(), b.size.to_string())
    } else if a.mode != b.mode {
        ("mode", format!("{:04o}", a.mode), format!("{:04o}", b.mode))
    } else if (a.uid, a.gid) != (b.uid, b.gid) {
        ("owner", format!("{}:{}", a.uid, a.gid), format!("{}:{}", b.uid, b.gid))
    } else {
        return None;
    };
    Some(format!("{field} {left} != {label} ({right})"))
}

/// One entry in a few words: "file sha256 ab12cd34..", "missing", "fifo".
pub fn describe(e: &Entry) -> String {
    match e.kind() {
        EntryKind::File => format!("file sha256 {}", short_hex(&e.sha256)),
        EntryKind::Symlink => format!("symlink -> {}", paths::display(&e.link_target)),
        EntryKind::Missing => "missing".into(),
        EntryKind::Unreadable => format!("unreadable: {}", e.error),
        EntryKind::Unstable => format!("unstable: {}", e.error),
        EntryKind::Fifo => "fifo".into(),
        EntryKind::Socket => "socket".into(),
        EntryKind::BlockDevice => "block device".into(),
        EntryKind::CharDevice => "char device".into(),
        EntryKind::Process => format!("running image sha256 {}", short_hex(&e.sha256)),
        EntryKind::ProcessLib => format!("mapped library sha256 {}", short_hex(&e.sha256)),
        EntryKind::ProcessArgs => format!("command line {:?}", e.value.replace('\0', " ")),
        EntryKind::ConfigKey => format!("= {}", e.value),
        EntryKind::Unspecified => "unknown entry".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::canonicalize;

    fn file(path: &str, hash: u8) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File as i32,
            sha256: vec![hash; 32],
            size: 1,
            mode: 0o644,
            ..Default::default()
        }
    }

    fn missing(path: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::Missing as i32,
            ..Default::default()
        }
    }

    #[test]
    fn equal_sets_have_no_changes() {
        let a = vec![file("/a", 1), file("/b", 2)];
        assert!(diff(&a, &a, "release 1", |_| false).is_empty());
    }

    #[test]
    fn names_each_kind_of_change() {
        let host = canonicalize(vec![file("/bin/smars", 1), file("/extra", 3)]).unwrap();
        let rel = canonicalize(vec![file("/bin/smars", 2), file("/conf", 4)]).unwrap();
        let changes = diff(&host, &rel, "release 2", |_| false);
        let texts: Vec<&str> = changes.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "/bin/smars sha256 01010101.. != release 2 (02020202..)",
                "/conf absent, release 2 has file sha256 04040404..",
                "/extra (file sha256 03030303..) not in release 2",
            ]
        );
        let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind()).collect();
        assert_eq!(
            kinds,
            vec![ChangeKind::Modified, ChangeKind::Added, ChangeKind::Removed]
        );
    }

    #[test]
    fn diff_is_symmetric() {
        let a = canonicalize(vec![file("/x", 1), file("/y", 2), missing("/z")]).unwrap();
        let b = canonicalize(vec![file("/x", 9), file("/w", 2), file("/z", 3)]).unwrap();
        let ab = diff(&a, &b, "b", |_| false);
        let ba = diff(&b, &a, "a", |_| false);
        assert_eq!(ab.len(), 4);
        let mut pa: Vec<_> = ab.iter().map(|c| (c.path.clone(), c.kind())).collect();
        let mut pb: Vec<_> = ba
            .iter()
            .map(|c| {
                let k = match c.kind() {
                    ChangeKind::Added => ChangeKind::Removed,
                    ChangeKind::Removed => ChangeKind::Added,
                    k => k,
                };
                (c.path.clone(), k)
            })
            .collect();
        pa.sort();
        pb.sort();
        assert_eq!(pa, pb);
    }

    #[test]
    fn skipped_paths_are_left_out() {
        let a = vec![file("/etc/hostname", 1)];
        let b = vec![file("/etc/hostname", 2)];
        assert!(diff(&a, &b, "r", |p| p == b"/etc/hostname").is_empty());
    }

    #[test]
    fn mode_and_owner_differences_are_named() {
        let a = file("/a", 1);
        let mut b = a.clone();
        b.mode = 0o755;
        let c = &diff(std::slice::from_ref(&a), &[b], "release 1", |_| false)[0];
        assert_eq!(c.text, "/a mode 0644 != release 1 (0755)");
        let mut d = a.clone();
        d.uid = 1000;
        let c = &diff(&[a], &[d], "release 1", |_| false)[0];
        assert_eq!(c.text, "/a owner 0:0 != release 1 (1000:0)");
    }
}
