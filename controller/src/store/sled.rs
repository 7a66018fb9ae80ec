//! The sled backend of [`Store`]. Records are JSON (readable with any tool in
//! an incident); manifests are protobuf (`Manifest`), stored once per digest
//! so a thousand identical hosts cost one copy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lockstep_proto::pb::{Entry, Manifest};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::IncidentRecord;
use crate::store::{
    ArchiveMark, BoardRecord, HaltRecord, HostRecord, ReleaseRecord, Store, StoreError, StoreSize, TokenRecord,
};
use lockstep_evidence::chain::AuditRecord;

pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    hosts: sled::Tree,
    manifests: sled::Tree,
    releases: sled::Tree,
    halts: sled::Tree,
    audit: sled::Tree,
    incidents: sled::Tree,
    tokens: sled::Tree,
    boards: sled::Tree,
    /// One key, [`ARCHIVE_MARK`]: where the log kept here begins.
    meta: sled::Tree,
    /// `host` 0x00 `seq` (big-endian) for each audit record about a host.
    audit_hosts: sled::Tree,
    /// The pieces of audit records too large to keep whole
    /// ([`AUDIT_WHOLE_MAX`]): `seq` then the piece's index, big-endian.
    audit_chunks: sled::Tree,
}

fn host_key(host: &str, seq: u64) -> Vec<u8> {
    [host.as_bytes(), &[0], &seq.to_be_bytes()].concat()
}

const ARCHIVE_MARK: &[u8] = b"archive_mark";

/// An audit record whose JSON is longer than this (a large role's gate
/// state: 2 MB at 10,000 hosts) is kept deflated, in pieces of
/// [`AUDIT_CHUNK`] bytes, its `audit` value a [`DEFLATED`] marker.
/// Deflated, because sled 0.34 keeps every page a read has touched in
/// memory whatever `cache_capacity` says (upstream #1036, #1093): one
/// `audit verify` of a 10,000-host window left ~100 MiB resident, nearly
/// all of it those states. In pieces, because sled writes a node over
/// 128 KiB (a quarter of its segment) to a blob file of its own; a leaf
/// holds at most 17 entries, so 4 KiB pieces keep every node below that.
const AUDIT_WHOLE_MAX: usize = 16 << 10;
const AUDIT_CHUNK: usize = 4 << 10;

/// Starts the `audit` value of a record kept deflated in pieces, then
/// `<pieces>:<deflated bytes>:<JSON bytes>` (no JSON starts with NUL).
const DEFLATED: &[u8] = b"\0deflated:";

/// What a [`DEFLATED`] marker says.
struct Pieces {
    count: u32,
    deflated: usize,
    json: usize,
}

fn chunk_key(seq: u64, index: u32) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The marker an `audit` value holds; `None` for a record kept whole.
fn pieces(value: &[u8]) -> Option<Result<Pieces, String>> {
    let rest = value.strip_prefix(DEFLATED)?;
    let parsed = std::str::from_utf8(rest).ok().and_then(|t| {
        let mut n = t.split(':');
        let pieces = Pieces {
            count: n.next()?.parse().ok()?,
            deflated: n.next()?.parse().ok()?,
            json: n.next()?.parse().ok()?,
        };
        n.next().is_none().then_some(pieces)
    });
    Some(parsed.ok_or_else(|| "its piece marker is not <pieces>:<deflated bytes>:<JSON bytes>".to_string()))
}

/// How long `open` waits for the store's file lock when it is taken.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens the sled database, waiting briefly for its file lock. sled 0.34
/// releases the lock from a background thread after the last handle drops,
/// so a store closed and reopened in one process (a restart in place, the
/// tests) can find it still held for a few milliseconds. Another process
/// holding it is still refused, after `LOCK_WAIT`.
fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).cache_capacity(cache_bytes).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl SledStore {
    /// Opens the store at `path` with the default page cache.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, crate::config::DEFAULT_SLED_CACHE_MIB << 20)
    }

    /// Opens the store at `path` with a page cache of `cache_bytes`
    /// (`[store] cache_mib`).
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let err = |e: sled::Error| StoreError::Backend {
            path: path.display().to_string(),
            reason: format!("{e}; is another controller using this data_dir?"),
        };
        let db = open_db(path, cache_bytes).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            hosts: db.open_tree("hosts").map_err(err)?,
            manifests: db.open_tree("manifests").map_err(err)?,
            releases: db.open_tree("releases").map_err(err)?,
            halts: db.open_tree("halts").map_err(err)?,
            audit: db.open_tree("audit").map_err(err)?,
            incidents: db.open_tree("incidents").map_err(err)?,
            tokens: db.open_tree("tokens").map_err(err)?,
            boards: db.open_tree("boards").map_err(err)?,
            meta: db.open_tree("meta").map_err(err)?,
            audit_hosts: db.open_tree("audit_hosts").map_err(err)?,
            audit_chunks: db.open_tree("audit_chunks").map_err(err)?,
            db,
        })
    }

    fn backend(&self, e: sled::Error) -> StoreError {
        StoreError::Backend {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    fn put_json<T: Serialize>(&self, tree: &sled::Tree, key: &[u8], value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })?;
        tree.insert(key, bytes).map_err(|e| self.backend(e))?;
        Ok(())
    }

    /// An audit record from its `audit` value, put back together from its
    /// pieces and inflated when it was kept that way.
    fn audit_record(&self, key: &[u8], value: &[u8]) -> Result<AuditRecord, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: format!("audit {}", hex::encode(key)),
            reason,
        };
        let Some(marker) = pieces(value) else {
            return serde_json::from_slice(value).map_err(|e| corrupt(e.to_string()));
        };
        let marker = marker.map_err(corrupt)?;
        let seq: [u8; 8] = key.try_into().map_err(|_| corrupt("its key is not a seq".into()))?;
        let seq = u64::from_be_bytes(seq);
        let mut deflated = Vec::with_capacity(marker.deflated);
        let mut found = 0;
        for piece in self.audit_chunks.range(chunk_key(seq, 0)..chunk_key(seq, marker.count)) {
            let (_, piece) = piece.map_err(|e| self.backend(e))?;
            deflated.extend_from_slice(&piece);
            found += 1;
        }
        if found != marker.count || deflated.len() != marker.deflated {
            return Err(corrupt(format!(
                "{found} of its {} pieces are stored ({} of {} bytes)",
                marker.count,
                deflated.len(),
                marker.deflated
            )));
        }
        let mut json = Vec::with_capacity(marker.json);
        std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&deflated[..]), &mut json)
            .map_err(|e| corrupt(format!("its pieces do not inflate: {e}")))?;
        serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))
    }

    /// How many bytes of JSON the record behind an `audit` value holds.
    fn audit_len(value: &[u8]) -> usize {
        match pieces(value) {
            Some(Ok(p)) => p.json,
            _ => value.len(),
        }
    }

    fn all_json<T: DeserializeOwned>(&self, tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|item| {
                let (k, v) = item.map_err(|e| self.backend(e))?;
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

impl Store for SledStore {
    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.all_json(&self.hosts)
    }

    fn put_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.put_json(&self.hosts, host.host.as_bytes(), host)
    }

    fn has_manifest(&self, digest_hex: &str) -> Result<bool, StoreError> {
        self.manifests.contains_key(digest_hex).map_err(|e| self.backend(e))
    }

    fn put_manifest(&self, digest_hex: &str, entries: &[Entry]) -> Result<(), StoreError> {
        let bytes = Manifest {
            entries: entries.to_vec(),
        }
        .encode_to_vec();
        self.manifests.insert(digest_hex, bytes).map_err(|e| self.backend(e))?;
        Ok(())
    }

    fn manifest(&self, digest_hex: &str) -> Result<Option<Vec<Entry>>, StoreError> {
        let Some(bytes) = self.manifests.get(digest_hex).map_err(|e| self.backend(e))? else {
            return Ok(None);
        };
        let m = Manifest::decode(bytes.as_ref()).map_err(|e| StoreError::Corrupt {
            key: format!("manifest {digest_hex}"),
            reason: e.to_string(),
        })?;
        Ok(Some(m.entries))
    }

    fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.all_json(&self.releases)
    }

    fn put_release(&self, release: &ReleaseRecord) -> Result<(), StoreError> {
        self.put_json(&self.releases, &release.number.to_be_bytes(), release)
    }

    fn halts(&self) -> Result<Vec<HaltRecord>, StoreError> {
        self.all_json(&self.halts)
    }

    fn put_halt(&self, halt: &HaltRecord) -> Result<(), StoreError> {
        self.put_json(&self.halts, &halt.id.to_be_bytes(), halt)
    }

    fn incidents(&self) -> Result<Vec<IncidentRecord>, StoreError> {
        self.all_json(&self.incidents)
    }

    fn put_incident(&self, incident: &IncidentRecord) -> Result<(), StoreError> {
        self.put_json(&self.incidents, &incident.id.to_be_bytes(), incident)
    }

    fn token(&self, hash_hex: &str) -> Result<Option<TokenRecord>, StoreError> {
        let Some(bytes) = self.tokens.get(hash_hex).map_err(|e| self.backend(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: format!("token {hash_hex}"),
                reason: e.to_string(),
            })
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.put_json(&self.tokens, token.hash_hex.as_bytes(), token)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.all_json(&self.tokens)
    }

    fn board(&self, hash_hex: &str) -> Result<Option<BoardRecord>, StoreError> {
        let Some(bytes) = self.boards.get(hash_hex).map_err(|e| self.backend(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: format!("board {hash_hex}"),
                reason: e.to_string(),
            })
    }

    fn put_board(&self, record: &BoardRecord) -> Result<(), StoreError> {
        self.put_json(&self.boards, record.hash_hex.as_bytes(), record)
    }

    fn boards(&self) -> Result<Vec<BoardRecord>, StoreError> {
        self.all_json(&self.boards)
    }

    fn manifest_digests(&self) -> Result<Vec<String>, StoreError> {
        self.manifests
            .iter()
            .keys()
            .map(|k| {
                let k = k.map_err(|e| self.backend(e))?;
                Ok(String::from_utf8_lossy(&k).into_owned())
            })
            .collect()
    }

    fn put_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        if !record.host.is_empty() {
            self.audit_hosts
                .insert(host_key(&record.host, record.seq), &[])
                .map_err(|e| self.backend(e))?;
        }
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
            key: format!("audit {}", record.seq),
            reason: e.to_string(),
        })?;
        let key = record.seq.to_be_bytes();
        if bytes.len() <= AUDIT_WHOLE_MAX {
            self.audit.insert(key, bytes).map_err(|e| self.backend(e))?;
            return Ok(());
        }
        let mut deflating = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut deflating, &bytes)
            .and_then(|()| deflating.finish())
            .map_err(|e| StoreError::Corrupt {
                key: format!("audit {}", record.seq),
                reason: format!("cannot deflate it: {e}"),
            })
            .and_then(|deflated| {
                // The pieces first: sled recovers a prefix of its writes, so
                // a marker never survives a crash without its pieces. A
                // reader takes exactly the pieces the marker counts (a
                // crash's leftovers under the same seq are overwritten or
                // ignored, and dropped with the archived records).
                let mut batch = sled::Batch::default();
                let mut count: u32 = 0;
                for piece in deflated.chunks(AUDIT_CHUNK) {
                    batch.insert(&chunk_key(record.seq, count)[..], piece);
                    count += 1;
                }
                self.audit_chunks.apply_batch(batch).map_err(|e| self.backend(e))?;
                let marker = [
                    DEFLATED,
                    format!("{count}:{}:{}", deflated.len(), bytes.len()).as_bytes(),
                ]
                .concat();
                self.audit.insert(key, marker).map_err(|e| self.backend(e))?;
                Ok(())
            })
    }

    fn host_audit_seqs(&self, host: &str, before: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        self.audit_hosts
            .range(host_key(host, 0)..host_key(host, before))
            .keys()
            .rev()
            .take(limit)
            .map(|k| {
                let k = k.map_err(|e| self.backend(e))?;
                let seq: [u8; 8] = k[k.len().saturating_sub(8)..].try_into().unwrap_or_default();
                Ok(u64::from_be_bytes(seq))
            })
            .collect()
    }

    fn audit_page(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let mut page = Vec::new();
        let mut bytes = 0;
        for item in self.audit.range(from.to_be_bytes()..).take(limit.max(1)) {
            let (k, v) = item.map_err(|e| self.backend(e))?;
            // Fewer records when they are large (a 10,000-host gate state
            // is megabytes): a page holds about PAGE_BYTES, at least one.
            let len = Self::audit_len(&v);
            if !page.is_empty() && bytes + len > super::audit_reads::PAGE_BYTES {
                break;
            }
            bytes += len;
            page.push(self.audit_record(&k, &v)?);
        }
        Ok(page)
    }

    fn last_audit(&self) -> Result<Option<AuditRecord>, StoreError> {
        let Some((k, v)) = self.audit.last().map_err(|e| self.backend(e))? else {
            return Ok(None);
        };
        self.audit_record(&k, &v).map(Some)
    }

    fn size(&self) -> Result<StoreSize, StoreError> {
        Ok(StoreSize {
            bytes: self.db.size_on_disk().map_err(|e| self.backend(e))?,
            quota_bytes: 0,
        })
    }

    fn check_space(&self, min_free: u64) -> Result<(), StoreError> {
        let st = rustix::fs::statvfs(&self.path).map_err(|e| StoreError::Backend {
            path: self.path.display().to_string(),
            reason: format!("cannot read free space: {e}"),
        })?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < min_free {
            return Err(StoreError::DiskFull {
                path: self.path.display().to_string(),
                free_mib: free >> 20,
                need_mib: min_free.div_ceil(1 << 20),
            });
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.backend(e))?;
        Ok(())
    }

    fn archive_mark(&self) -> Result<Option<ArchiveMark>, StoreError> {
        let Some(v) = self.meta.get(ARCHIVE_MARK).map_err(|e| self.backend(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::Corrupt {
            key: "meta archive_mark".into(),
            reason: e.to_string(),
        })
    }

    /// The mark first, flushed; then the records, in batches: a crash
    /// between leaves records the mark already counts archived, which
    /// readers skip and the next call deletes.
    fn drop_archived(&self, mark: &ArchiveMark) -> Result<(), StoreError> {
        self.put_json(&self.meta, ARCHIVE_MARK, mark)?;
        self.db.flush().map_err(|e| self.backend(e))?;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for key in self.audit.range(..=mark.through_seq.to_be_bytes()).keys().take(4096) {
                batch.remove(key.map_err(|e| self.backend(e))?);
                n += 1;
            }
            if n == 0 {
                break;
            }
            self.audit.apply_batch(batch).map_err(|e| self.backend(e))?;
        }
        // The pieces of large records, after their markers.
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for key in self
                .audit_chunks
                .range(..=chunk_key(mark.through_seq, u32::MAX))
                .keys()
                .take(4096)
            {
                batch.remove(key.map_err(|e| self.backend(e))?);
                n += 1;
            }
            if n == 0 {
                break;
            }
            self.audit_chunks.apply_batch(batch).map_err(|e| self.backend(e))?;
        }
        // The per-host index of what left: it holds the online window only.
        let mut batch = sled::Batch::default();
        for key in self.audit_hosts.iter().keys() {
            let key = key.map_err(|e| self.backend(e))?;
            let seq: [u8; 8] = key[key.len().saturating_sub(8)..].try_into().unwrap_or_default();
            if u64::from_be_bytes(seq) <= mark.through_seq {
                batch.remove(key);
            }
        }
        self.audit_hosts.apply_batch(batch).map_err(|e| self.backend(e))?;
        self.db.flush().map_err(|e| self.backend(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_proto::pb::EntryKind;

    #[test]
    fn records_survive_reopening() {
        let d = tempfile::tempdir().unwrap();
        let host = HostRecord {
            host: "smars-01".into(),
            role: "smars".into(),
            last_seq: 9,
            ..Default::default()
        };
        let entries = vec![Entry {
            path: b"/opt/x".to_vec(),
            kind: EntryKind::File as i32,
            sha256: vec![1; 32],
            ..Default::default()
        }];
        {
            let s = SledStore::open(d.path()).unwrap();
            s.put_host(&host).unwrap();
            s.put_manifest("abcd", &entries).unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(d.path()).unwrap();
        assert_eq!(s.hosts().unwrap(), vec![host]);
        assert!(s.has_manifest("abcd").unwrap());
        assert_eq!(s.manifest("abcd").unwrap().unwrap(), entries);
        assert_eq!(s.manifest("ffff").unwrap(), None);
    }

    #[test]
    fn a_page_of_large_records_stops_near_page_bytes() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        for seq in 1..=12u64 {
            s.put_audit(&AuditRecord {
                seq,
                at_unix_ms: 0,
                actor: "controller".into(),
                action: "gate.state".into(),
                host: String::new(),
                role: "smars".into(),
                detail: String::new(),
                // A 10,000-host gate state is megabytes.
                facts: "x".repeat(1 << 20),
                prev_hash: String::new(),
                hash: String::new(),
            })
            .unwrap();
        }
        let page = s.audit_page(1, 512).unwrap();
        assert_eq!(page.len(), 3, "about 4 MiB of 1 MiB records");
        assert_eq!(page[0].seq, 1);
        assert_eq!(s.audit_page(12, 512).unwrap().len(), 1, "at least one");
    }

    #[test]
    fn releases_come_back_in_number_order() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        for n in [10u64, 2, 300] {
            s.put_release(&ReleaseRecord {
                number: n,
                role: "smars".into(),
                digest_hex: String::new(),
                entry_count: 0,
                source: String::new(),
                note: String::new(),
                proposed_by: "alice".into(),
                proposed_at_unix_ms: 0,
                approved_by: None,
                approved_at_unix_ms: 0,
                boot_pcrs: Default::default(),
                boot_from_host: String::new(),
            })
            .unwrap();
        }
        let numbers: Vec<u64> = s.releases().unwrap().iter().map(|r| r.number).collect();
        assert_eq!(numbers, vec![2, 10, 300]);
    }

    #[test]
    fn a_store_closed_and_reopened_at_once_opens_every_time() {
        // sled frees its file lock from a background thread after the last
        // handle drops; an immediate reopen must wait for it, not fail.
        let d = tempfile::tempdir().unwrap();
        for n in 0..30u64 {
            let s = SledStore::open(d.path()).unwrap();
            let host = HostRecord {
                host: "smars-01".into(),
                last_seq: n,
                ..Default::default()
            };
            s.put_host(&host).unwrap();
            s.flush().unwrap();
        }
        assert_eq!(SledStore::open(d.path()).unwrap().hosts().unwrap()[0].last_seq, 29);
    }

    #[test]
    fn a_store_held_open_elsewhere_is_refused_naming_the_path() {
        let d = tempfile::tempdir().unwrap();
        let _held = SledStore::open(d.path()).unwrap();
        let err = SledStore::open(d.path()).err().expect("a second open must be refused");
        let text = err.to_string();
        assert!(text.contains(&d.path().display().to_string()), "{text}");
        assert!(text.contains("another controller using this data_dir"), "{text}");
    }
}

#[cfg(test)]
mod large_record_tests {
    use super::*;

    fn record(seq: u64, facts_len: usize) -> AuditRecord {
        AuditRecord {
            seq,
            at_unix_ms: 1,
            actor: "controller".into(),
            action: "gate.state".into(),
            host: String::new(),
            role: "smars".into(),
            detail: String::new(),
            // Hex of a pseudo-random stream, like the digests a gate state is
            // made of: it deflates to about half, so it still takes pieces.
            facts: {
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seq;
                (0..facts_len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(b"0123456789abcdef"[(x % 16) as usize])
                    })
                    .collect()
            },
            prev_hash: String::new(),
            hash: format!("h{seq}"),
        }
    }

    fn blob_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("blobs")).map_or(0, |d| d.count())
    }

    #[test]
    fn a_large_record_is_kept_in_small_pieces_and_read_back_whole_after_reopening() {
        let d = tempfile::tempdir().unwrap();
        // A 10,000-host gate state is megabytes; a small record stays whole.
        let records = vec![record(1, 100), record(2, 5 << 20), record(3, AUDIT_WHOLE_MAX + 1)];
        {
            let s = SledStore::open(d.path()).unwrap();
            records.iter().for_each(|r| s.put_audit(r).unwrap());
            s.flush().unwrap();
            assert!(s.audit_chunks.iter().values().all(|v| v.unwrap().len() <= AUDIT_CHUNK));
            assert!(pieces(&s.audit.get(1u64.to_be_bytes()).unwrap().unwrap()).is_none());
        }
        let s = SledStore::open(d.path()).unwrap();
        let mut read = Vec::new();
        for page in crate::store::audit_reads::pages(&s, 1) {
            read.extend(page.unwrap());
        }
        // (Compared without printing: the records are megabytes.)
        assert!(read == records, "the records read back differ");
        assert!(
            s.last_audit().unwrap().as_ref() == records.last(),
            "the last record differs"
        );
        // No node of sled's grew past its blob size: nothing escapes its cache.
        assert_eq!(blob_files(d.path()), 0, "sled wrote blob files");
    }

    #[test]
    fn a_missing_piece_is_named_and_a_crashs_leftover_pieces_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        // Leftovers of a larger record a crash cut short, under seq 2.
        s.audit_chunks.insert(chunk_key(2, 5000), &b"leftover"[..]).unwrap();
        let r = record(2, 64 << 10);
        s.put_audit(&r).unwrap();
        assert!(s.audit_page(2, 1).unwrap() == vec![r], "the record read back differs");
        s.audit_chunks.remove(chunk_key(2, 3)).unwrap();
        let err = s.audit_page(2, 1).unwrap_err().to_string();
        assert!(err.contains(&hex::encode(2u64.to_be_bytes())), "{err}");
        assert!(err.contains("pieces are stored"), "{err}");
    }

    #[test]
    fn archived_records_take_their_pieces_with_them() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        let records = [record(1, 40 << 10), record(2, 10), record(3, 40 << 10)];
        records.iter().for_each(|r| s.put_audit(r).unwrap());
        s.drop_archived(&ArchiveMark {
            through_seq: 2,
            through_hash: "h2".into(),
            through_at_unix_ms: 1,
            file: "f".into(),
            file_sha256: String::new(),
            recorded: false,
        })
        .unwrap();
        let left: Vec<u64> = s
            .audit_chunks
            .iter()
            .keys()
            .map(|k| u64::from_be_bytes(k.unwrap()[..8].try_into().unwrap()))
            .collect();
        assert!(!left.is_empty() && left.iter().all(|&seq| seq == 3), "{left:?}");
        assert!(
            s.audit_page(1, 512).unwrap() == vec![records[2].clone()],
            "what is left is not record 3"
        );
    }
}

#[cfg(test)]
mod host_index_tests {
    use super::*;

    #[test]
    fn a_hosts_records_are_indexed_newest_first_and_leave_with_their_segment() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        let events = (0..10)
            .map(|i| lockstep_evidence::chain::AuditEvent {
                host: ["smars-01", "smars-011", "smars-02"][i % 3].into(),
                ..lockstep_evidence::chain::AuditEvent::new(
                    "controller",
                    lockstep_evidence::action::AuditAction::GateChanged,
                    "",
                )
            })
            .collect();
        let (records, _) = lockstep_evidence::chain::seal(&lockstep_evidence::chain::ChainHead::after(None), events, 1);
        records.iter().for_each(|r| s.put_audit(r).unwrap());
        assert_eq!(s.host_audit_seqs("smars-01", u64::MAX, 10).unwrap(), vec![10, 7, 4, 1]);
        assert_eq!(s.host_audit_seqs("smars-01", 7, 10).unwrap(), vec![4, 1]);
        assert_eq!(s.host_audit_seqs("smars-011", u64::MAX, 1).unwrap(), vec![8]);
        s.drop_archived(&ArchiveMark {
            through_seq: 4,
            through_hash: records[3].hash.clone(),
            through_at_unix_ms: 1,
            file: "f".into(),
            file_sha256: String::new(),
            recorded: false,
        })
        .unwrap();
        assert_eq!(s.host_audit_seqs("smars-01", u64::MAX, 10).unwrap(), vec![10, 7]);
    }
}
