//! The audit archive's files. A closed segment of the log is one file of
//! gzip-compressed JSON lines, a record a line in seq order, its
//! checkpoint record last: `audit-<first seq>-<last seq>.jsonl.gz`, seqs
//! zero-padded to 20 digits so names sort as the log does. Beside it,
//! `…​.checkpoint.json` holds that checkpoint record alone, so the archive
//! is indexed (which seqs and times each file holds) without opening one.
//!
//! A file is written under a temporary name, fsynced, renamed, and its
//! directory fsynced: a crash leaves the whole file or none (a stray
//! `.tmp` is ignored and overwritten).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use ring::digest::{Context, SHA256};

use crate::chain::{AuditRecord, ChainHead};
use crate::checkpoint::{self, Checked};

const PREFIX: &str = "audit-";
const SEGMENT: &str = ".jsonl.gz";
const CHECKPOINT: &str = ".checkpoint.json";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("archive {path}: line {line} is not an audit record: {reason}")]
    Corrupt { path: PathBuf, line: usize, reason: String },
    #[error("archive {path}: {problem}")]
    Broken { path: PathBuf, problem: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |cause| ArchiveError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// One archived segment, as its name gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub path: PathBuf,
    pub first_seq: u64,
    /// Its checkpoint record's seq.
    pub last_seq: u64,
}

impl SegmentFile {
    /// Its checkpoint record, from the file beside it.
    pub fn checkpoint_record(&self) -> Result<AuditRecord, ArchiveError> {
        let path = checkpoint_path(&self.path);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        AuditRecord::from_json(&text).map_err(|reason| ArchiveError::Corrupt { path, line: 1, reason })
    }

    /// Every record of the segment, in order.
    pub fn read(&self) -> Result<Vec<AuditRecord>, ArchiveError> {
        let file = std::fs::File::open(&self.path).map_err(io(&self.path))?;
        let mut out = Vec::new();
        for (i, line) in BufReader::new(GzDecoder::new(file)).lines().enumerate() {
            let line = line.map_err(io(&self.path))?;
            let record = AuditRecord::from_json(&line).map_err(|reason| ArchiveError::Corrupt {
                path: self.path.clone(),
                line: i + 1,
                reason,
            })?;
            out.push(record);
        }
        Ok(out)
    }

    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn checkpoint_path(segment: &Path) -> PathBuf {
    let name = segment.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    segment.with_file_name(format!("{}{CHECKPOINT}", name.trim_end_matches(SEGMENT)))
}

/// The name of the segment from `first_seq` to `last_seq`.
pub fn file_name(first_seq: u64, last_seq: u64) -> String {
    format!("{PREFIX}{first_seq:020}-{last_seq:020}{SEGMENT}")
}

/// The segments in `dir`, in seq order (other files are not the archive's).
pub fn list(dir: &Path) -> Result<Vec<SegmentFile>, ArchiveError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry.map_err(io(dir))?.file_name().to_string_lossy().into_owned();
        let Some(seqs) = name.strip_prefix(PREFIX).and_then(|n| n.strip_suffix(SEGMENT)) else {
            continue;
        };
        let Some((first, last)) = seqs.split_once('-') else {
            continue;
        };
        if let (Ok(first_seq), Ok(last_seq)) = (first.parse(), last.parse()) {
            out.push(SegmentFile {
                path: dir.join(&name),
                first_seq,
                last_seq,
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// Writes `records` (a closed segment, its checkpoint record last) to
/// `dir`, durably, and reads the file back to check it holds them. Gives
/// the file and the SHA-256 (hex) of its bytes.
pub fn write(dir: &Path, records: &[AuditRecord]) -> Result<(SegmentFile, String), ArchiveError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(ArchiveError::Broken {
            path: dir.to_path_buf(),
            problem: "a segment with no records".into(),
        });
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let segment = SegmentFile {
        path: dir.join(file_name(first.seq, last.seq)),
        first_seq: first.seq,
        last_seq: last.seq,
    };
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for r in records {
        let line = serde_json::to_vec(r).map_err(|e| ArchiveError::Corrupt {
            path: segment.path.clone(),
            line: 0,
            reason: e.to_string(),
        })?;
        gz.write_all(&line)
            .and_then(|()| gz.write_all(b"\n"))
            .map_err(io(&segment.path))?;
    }
    let bytes = gz.finish().map_err(io(&segment.path))?;
    let closing = serde_json::to_vec_pretty(last).unwrap_or_default();
    write_durably(&checkpoint_path(&segment.path), &closing)?;
    write_durably(&segment.path, &bytes)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    // Read back from the disk: what is deleted from the store next must be here.
    let back = segment.read()?;
    if back.as_slice() != records {
        return Err(ArchiveError::Broken {
            path: segment.path.clone(),
            problem: "the file read back differs from the records written".into(),
        });
    }
    let sha = sha256_file(&segment.path)?;
    Ok((segment, sha))
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The SHA-256 (hex) of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String, ArchiveError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(hex::encode(ctx.finish().as_ref()));
        }
        ctx.update(&buf[..n]);
    }
}

/// What checking an archive found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveVerdict {
    pub segments: usize,
    pub records: u64,
    /// The head the live log's first record must follow (none: empty).
    pub head: Option<ChainHead>,
}

/// Checks every segment in `dir` and their links, one segment in memory
/// at a time: each segment's chain and signed checkpoint
/// ([`checkpoint::check_segment`]), the file beside it, and that each
/// starts where the one before ended. The first segment may start after
/// seq 1 only when `from_start` is false (an archive kept in parts).
pub fn verify_dir(dir: &Path, expected_key: Option<&str>, from_start: bool) -> Result<ArchiveVerdict, ArchiveError> {
    let mut head: Option<ChainHead> = from_start.then(|| ChainHead::after(None));
    let mut verdict = ArchiveVerdict {
        segments: 0,
        records: 0,
        head: None,
    };
    for segment in list(dir)? {
        let broken = |problem: String| ArchiveError::Broken {
            path: segment.path.clone(),
            problem,
        };
        let records = segment.read()?;
        if records.first().map(|r| r.seq) != Some(segment.first_seq)
            || records.last().map(|r| r.seq) != Some(segment.last_seq)
        {
            return Err(broken(format!(
                "its name says records {}..{}, it holds {}..{}",
                segment.first_seq,
                segment.last_seq,
                records.first().map_or(0, |r| r.seq),
                records.last().map_or(0, |r| r.seq)
            )));
        }
        let Checked { head: next, .. } =
            checkpoint::check_segment(&records, head.as_ref(), expected_key).map_err(|p| {
                broken(match &head {
                    Some(h) if records[0].seq != h.next_seq || records[0].prev_hash != h.last_hash => {
                        format!(
                            "it does not follow the segment before it (expected record {}): {p}",
                            h.next_seq
                        )
                    }
                    _ => p,
                })
            })?;
        if segment.checkpoint_record()? != records[records.len() - 1] {
            return Err(broken(
                "the checkpoint file beside it differs from its last record".into(),
            ));
        }
        verdict.segments += 1;
        verdict.records += records.len() as u64;
        head = Some(next);
    }
    verdict.head = head.filter(|_| verdict.segments > 0);
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::segment;
    use crate::report::key::ReportKey;

    #[test]
    fn segments_written_list_read_back_and_verify_linked() {
        let d = tempfile::tempdir().unwrap();
        let (key, _) = ReportKey::generate().unwrap();
        let (one, head) = segment(&key, &ChainHead::after(None), 5);
        let (two, head) = segment(&key, &head, 3);
        let (file, sha) = write(d.path(), &one).unwrap();
        assert_eq!(sha, sha256_file(&file.path).unwrap());
        write(d.path(), &two).unwrap();
        std::fs::write(d.path().join("notes.txt"), "not the archive's").unwrap();
        let listed = list(d.path()).unwrap();
        assert_eq!(
            listed.iter().map(|s| (s.first_seq, s.last_seq)).collect::<Vec<_>>(),
            vec![(1, 6), (7, 10)]
        );
        assert_eq!(listed[1].read().unwrap(), two);
        let verdict = verify_dir(d.path(), Some(key.public_hex()), true).unwrap();
        assert_eq!((verdict.segments, verdict.records), (2, 10));
        assert_eq!(verdict.head, Some(head));
    }

    #[test]
    fn a_missing_segment_and_an_edited_file_are_named() {
        let d = tempfile::tempdir().unwrap();
        let (key, _) = ReportKey::generate().unwrap();
        let (one, head) = segment(&key, &ChainHead::after(None), 2);
        let (two, head) = segment(&key, &head, 2);
        let (three, _) = segment(&key, &head, 2);
        write(d.path(), &one).unwrap();
        let (lost, _) = write(d.path(), &two).unwrap();
        write(d.path(), &three).unwrap();
        std::fs::remove_file(&lost.path).unwrap();
        let err = verify_dir(d.path(), None, true).unwrap_err().to_string();
        assert!(err.contains("does not follow the segment before it"), "{err}");
        assert!(err.contains("audit-00000000000000000007"), "{err}");

        let d = tempfile::tempdir().unwrap();
        let mut edited = one.clone();
        edited[0].detail = "nothing happened".into();
        let path = d.path().join(file_name(1, 3));
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        for r in &edited {
            gz.write_all(&serde_json::to_vec(r).unwrap()).unwrap();
            gz.write_all(b"\n").unwrap();
        }
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        std::fs::write(checkpoint_path(&path), serde_json::to_vec(&one[2]).unwrap()).unwrap();
        let err = verify_dir(d.path(), None, true).unwrap_err().to_string();
        assert!(err.contains("record 1 is broken") && err.contains("edited"), "{err}");
    }
}
