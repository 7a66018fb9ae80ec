//! [`Store`] on etcd. Keys live under the prefix as `host/<id>`,
//! `release/<number>`, `halt/<id>`, `incident/<id>`, `token/<hash>`,
//! `audit/<seq>` (numbers zero-padded so keys sort as numbers), the
//! per-host index `audit-host/<host>/<seq>` (empty values), and
//! `manifest/<digest>` (its chunk count) with `chunk/<digest>/<i>`. Records
//! are JSON, as in sled; manifests are protobuf in chunks of at most 1 MB,
//! under etcd's 1.5 MiB request limit. A record over 1 MB (the audit record
//! of a `gate check` over 10,000 hosts) is stored the same way: its chunks
//! under its SHA-256, and at its key a [`CHUNKED`] marker with that digest
//! and the chunk count.
//!
//! Writes are buffered and sent at `flush` (the ledger flushes once a commit)
//! as one transaction guarded by the fence: the leader key must still have
//! the create revision this controller won it at (its epoch). A deposed
//! leader's writes are refused by etcd, not by a check that could race.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lockstep_proto::pb::{Entry, Manifest};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::{self, Compare, RangeRequest, RequestOp, TxnRequest, compare, range_request, request_op};
use super::{Etcd, prefix_end};
use crate::store::IncidentRecord;
use crate::store::{BoardRecord, HaltRecord, HostRecord, ReleaseRecord, Store, StoreError, StoreSize, TokenRecord};
use lockstep_evidence::chain::AuditRecord;

const CHUNK: usize = 1_000_000;
/// A transaction is cut before it grows past this (etcd refuses 1.5 MiB).
const TXN_BYTES: usize = 1_200_000;
const PAGE: i64 = 1000;

/// What one page of a Range aims at: far below the client's 64 MiB
/// message bound, so one large record after small ones does not cross it.
const PAGE_BYTES: usize = 4 << 20;

/// The next page's size, from the size of the values in the last one.
fn next_page_limit(kvs: &[api::KeyValue]) -> i64 {
    let bytes: usize = kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
    let per_key = (bytes / kvs.len().max(1)).max(1);
    i64::try_from(PAGE_BYTES / per_key).unwrap_or(PAGE).clamp(1, PAGE)
}
/// Starts the value of a record stored in chunks, then `<sha256 hex>:<count>`
/// (no JSON value starts with a NUL byte).
const CHUNKED: &[u8] = b"\0chunked:";

/// What a write must find true to be applied.
#[derive(Debug, Clone)]
pub enum Fence {
    /// This controller still leads in `epoch` (the leader key's create revision).
    Leader { epoch: i64 },
    /// No controller leads: for `lockstep-controller migrate`, which must not
    /// write under a running leader.
    NoLeader,
    /// Reads only: a standby following the ledger. Every write is refused
    /// here, before it reaches etcd.
    ReadOnly,
}

pub struct EtcdStore {
    etcd: Arc<Etcd>,
    fence: Fence,
    pending: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Manifests read or written here, by digest (few: hosts share them).
    manifests: Mutex<HashMap<String, Vec<Entry>>>,
    /// Told when etcd refuses a write because the fence no longer holds.
    deposed: tokio::sync::watch::Sender<bool>,
    /// Reads see the store at this revision (0: its head).
    revision: i64,
}

impl EtcdStore {
    pub fn new(etcd: Arc<Etcd>, fence: Fence) -> Self {
        Self {
            etcd,
            fence,
            pending: Mutex::new(Vec::new()),
            manifests: Mutex::new(HashMap::new()),
            deposed: tokio::sync::watch::channel(false).0,
            revision: 0,
        }
    }

    /// Every read sees the store as it was at `revision` (a follower loads
    /// one consistent view, then watches from the next revision).
    pub fn pinned_at(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }

    /// Becomes true when a write was refused because another controller leads.
    pub fn deposed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.deposed.subscribe()
    }

    fn compare(&self) -> Compare {
        let (result, revision) = match self.fence {
            Fence::Leader { epoch } => (compare::CompareResult::Equal, epoch),
            Fence::NoLeader | Fence::ReadOnly => (compare::CompareResult::Equal, 0),
        };
        Compare {
            result: result as i32,
            target: compare::CompareTarget::Create as i32,
            key: self.etcd.key(super::election::LEADER_KEY),
            target_union: Some(compare::TargetUnion::CreateRevision(revision)),
        }
    }

    fn queue(&self, key: String, value: Vec<u8>) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((self.etcd.key(&key), value));
    }

    fn queue_json<T: Serialize>(&self, key: String, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        if bytes.len() <= CHUNK {
            self.queue(key, bytes);
            return Ok(());
        }
        let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
        let count = self.write_chunks(&digest, &bytes)?;
        self.queue(key, [CHUNKED, format!("{digest}:{count}").as_bytes()].concat());
        Ok(())
    }

    /// Writes `bytes` as `chunk/<digest>/<i>`, each in a transaction of its
    /// own, ahead of the commit that makes them visible (content-addressed,
    /// so chunks left by a refused commit are harmless). Gives their count.
    fn write_chunks(&self, digest: &str, bytes: &[u8]) -> Result<usize, StoreError> {
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(CHUNK).collect()
        };
        for (i, chunk) in chunks.iter().enumerate() {
            self.commit(vec![(self.etcd.key(&format!("chunk/{digest}/{i:06}")), chunk.to_vec())])?;
        }
        Ok(chunks.len())
    }

    /// The `count` chunks of `digest` put back together; `key` names what
    /// they make up in an error.
    fn read_chunks(&self, digest: &str, count: usize, key: &str) -> Result<Vec<u8>, StoreError> {
        let chunks = self.range(&format!("chunk/{digest}/"), None)?;
        if chunks.len() != count {
            return Err(StoreError::Corrupt {
                key: key.to_string(),
                reason: format!("{} of its {count} chunks are stored", chunks.len()),
            });
        }
        Ok(chunks.into_iter().flat_map(|kv| kv.value).collect())
    }

    /// A record's JSON from its stored value (put back together if chunked).
    pub(crate) fn decode<T: DeserializeOwned>(&self, kv: &api::KeyValue) -> Result<T, StoreError> {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key.clone(),
            reason,
        };
        let joined;
        let json = match kv.value.strip_prefix(CHUNKED) {
            None => kv.value.as_slice(),
            Some(rest) => {
                let rest = String::from_utf8_lossy(rest);
                let (digest, count) = rest
                    .split_once(':')
                    .and_then(|(d, n)| Some((d.to_string(), n.parse::<usize>().ok()?)))
                    .ok_or_else(|| corrupt("its chunk marker is not <digest>:<count>".into()))?;
                joined = self.read_chunks(&digest, count, &key)?;
                if hex::encode(ring::digest::digest(&ring::digest::SHA256, &joined)) != digest {
                    return Err(corrupt("its chunks do not hash to the digest it names".into()));
                }
                joined.as_slice()
            }
        };
        serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
    }

    /// A value written but not yet flushed, so reads inside a commit see it.
    fn pending_value(&self, key: &str) -> Option<Vec<u8>> {
        let full = self.etcd.key(key);
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.iter().rev().find(|(k, _)| *k == full).map(|(_, v)| v.clone())
    }

    /// Sends `ops` as fenced transactions, cut at etcd's limits, in order.
    fn commit(&self, ops: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        if matches!(self.fence, Fence::ReadOnly) && !ops.is_empty() {
            return Err(self.etcd.backend("write refused: a standby's view is read-only".into()));
        }
        let ops = last_write_per_key(ops);
        let max_ops = self.etcd.settings.max_txn_ops;
        let mut txns: Vec<Vec<RequestOp>> = Vec::new();
        let mut current: Vec<RequestOp> = Vec::new();
        let mut bytes = 0;
        for (key, value) in ops {
            let size = key.len() + value.len() + 16;
            if !current.is_empty() && (current.len() >= max_ops || bytes + size > TXN_BYTES) {
                txns.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += size;
            current.push(RequestOp {
                request: Some(request_op::Request::RequestPut(api::PutRequest {
                    key,
                    value,
                    lease: 0,
                })),
            });
        }
        txns.push(current);
        for success in txns.into_iter().filter(|t| !t.is_empty()) {
            self.send_fenced(success)?;
        }
        Ok(())
    }

    /// Sends `success` as one transaction guarded by the fence.
    fn send_fenced(&self, success: Vec<RequestOp>) -> Result<(), StoreError> {
        if matches!(self.fence, Fence::ReadOnly) {
            return Err(self.etcd.backend("write refused: a standby's view is read-only".into()));
        }
        let request = TxnRequest {
            compare: vec![self.compare()],
            success,
            failure: Vec::new(),
        };
        let mut kv = self.etcd.kv();
        // A write that failed without an answer (timeout, no quorum)
        // may still commit later: this controller's view can no longer
        // be trusted, so it stands down and whoever leads next reloads
        // from etcd. (Once its lease is gone the fence stops any late one.)
        let answer = self
            .etcd
            .wait("writing a commit", async move {
                kv.txn(request).await.map(|r| r.into_inner())
            })
            .inspect_err(|_| {
                self.deposed.send_replace(true);
            })?;
        if !answer.succeeded {
            self.deposed.send_replace(true);
            return Err(self.etcd.backend(match self.fence {
                Fence::Leader { epoch } => format!(
                    "write refused: this controller no longer leads (its epoch {epoch} was replaced); it stands down"
                ),
                Fence::NoLeader => {
                    "write refused: a controller leads this prefix; stop every controller before migrating".into()
                }
                Fence::ReadOnly => "write refused: a standby's view is read-only".into(),
            }));
        }
        Ok(())
    }

    /// Every key-value under `rest`, from `from` on (a key under it), in key order.
    fn range(&self, rest: &str, from: Option<String>) -> Result<Vec<api::KeyValue>, StoreError> {
        self.range_until(rest, from, None)
    }

    /// [`Self::range`] up to `end` (a full key, excluded) when given.
    fn range_until(
        &self,
        rest: &str,
        from: Option<String>,
        end: Option<Vec<u8>>,
    ) -> Result<Vec<api::KeyValue>, StoreError> {
        let prefix = self.etcd.key(rest);
        let end = end.unwrap_or_else(|| prefix_end(&prefix));
        let mut start = from.map_or_else(|| prefix.clone(), |f| self.etcd.key(&f));
        let mut out = Vec::new();
        let mut limit = PAGE;
        loop {
            let request = RangeRequest {
                revision: self.revision,
                key: start.clone(),
                range_end: end.clone(),
                limit,
                ..Default::default()
            };
            let page = self.etcd.range_waiting("reading", request)?;
            let more = page.more;
            if let Some(last) = page.kvs.last() {
                start = last.key.clone();
                start.push(0);
            }
            limit = next_page_limit(&page.kvs);
            out.extend(page.kvs);
            if !more {
                return Ok(out);
            }
        }
    }

    /// Every key under `rest` (full keys, no values), a page at a time.
    fn range_keys(&self, rest: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = self.etcd.key(rest);
        let end = prefix_end(&prefix);
        let mut start = prefix;
        let mut out = Vec::new();
        loop {
            let request = RangeRequest {
                revision: self.revision,
                key: start.clone(),
                range_end: end.clone(),
                limit: PAGE,
                keys_only: true,
                ..Default::default()
            };
            let page = self.etcd.range_waiting("reading keys", request)?;
            if let Some(last) = page.kvs.last() {
                start = last.key.clone();
                start.push(0);
            }
            out.extend(page.kvs.into_iter().map(|kv| kv.key));
            if !page.more {
                return Ok(out);
            }
        }
    }

    /// One record by key, decoded (`None`: no such key).
    fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.get(key)?
            .map(|value| {
                self.decode(&api::KeyValue {
                    key: key.as_bytes().to_vec(),
                    value,
                    ..Default::default()
                })
            })
            .transpose()
    }

    fn all_json<T: DeserializeOwned>(&self, rest: &str) -> Result<Vec<T>, StoreError> {
        self.range(rest, None)?.iter().map(|kv| self.decode(kv)).collect()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.pending_value(key) {
            return Ok(Some(v));
        }
        let request = RangeRequest {
            revision: self.revision,
            key: self.etcd.key(key),
            ..Default::default()
        };
        let answer = self.etcd.range_waiting("reading", request)?;
        Ok(answer.kvs.into_iter().next().map(|kv| kv.value))
    }
}

/// One put per key, the last one, where the last one was: a group commit
/// batches many changes and may hold several to one host (two reports, a
/// report and a revocation), and etcd refuses a transaction that names a
/// key twice. A host's last record in the batch is its high-water mark
/// (the highest seq it reached), which is all replay safety needs.
fn last_write_per_key(ops: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(ops.len());
    for (i, (key, _)) in ops.iter().enumerate() {
        last.insert(key.as_slice(), i);
    }
    if last.len() == ops.len() {
        return ops;
    }
    let keep: Vec<bool> = ops
        .iter()
        .enumerate()
        .map(|(i, (key, _))| last[key.as_slice()] == i)
        .collect();
    ops.into_iter()
        .zip(keep)
        .filter_map(|(op, keep)| keep.then_some(op))
        .collect()
}

fn number(n: u64) -> String {
    format!("{n:020}")
}

impl Store for EtcdStore {
    fn epoch(&self) -> u64 {
        match self.fence {
            Fence::Leader { epoch } => u64::try_from(epoch).unwrap_or(0),
            Fence::NoLeader | Fence::ReadOnly => 0,
        }
    }

    fn check_space(&self, _min_free: u64) -> Result<(), StoreError> {
        // etcd guards its own space (its quota); a full quota refuses the
        // write with "database space exceeded", named in the error.
        Ok(())
    }

    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.all_json("host/")
    }

    fn put_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.queue_json(format!("host/{}", host.host), host)
    }

    fn has_manifest(&self, digest_hex: &str) -> Result<bool, StoreError> {
        if self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(digest_hex)
        {
            return Ok(true);
        }
        Ok(self.get(&format!("manifest/{digest_hex}"))?.is_some())
    }

    fn put_manifest(&self, digest_hex: &str, entries: &[Entry]) -> Result<(), StoreError> {
        let bytes = Manifest {
            entries: entries.to_vec(),
        }
        .encode_to_vec();
        // The count that makes the manifest visible goes with the commit.
        let count = self.write_chunks(digest_hex, &bytes)?;
        self.queue(format!("manifest/{digest_hex}"), count.to_string().into_bytes());
        let mut cache = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(digest_hex.to_string(), entries.to_vec());
        Ok(())
    }

    fn manifest(&self, digest_hex: &str) -> Result<Option<Vec<Entry>>, StoreError> {
        if let Some(m) = self.manifests.lock().unwrap_or_else(|p| p.into_inner()).get(digest_hex) {
            return Ok(Some(m.clone()));
        }
        let Some(count) = self.get(&format!("manifest/{digest_hex}"))? else {
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            key: format!("manifest/{digest_hex}"),
            reason,
        };
        let count: usize = String::from_utf8_lossy(&count)
            .parse()
            .map_err(|_| corrupt("its chunk count is not a number".into()))?;
        let bytes = self.read_chunks(digest_hex, count, &format!("manifest/{digest_hex}"))?;
        let entries = Manifest::decode(bytes.as_slice())
            .map_err(|e| corrupt(e.to_string()))?
            .entries;
        let mut cache = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(digest_hex.to_string(), entries.clone());
        Ok(Some(entries))
    }

    fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.all_json("release/")
    }

    fn put_release(&self, release: &ReleaseRecord) -> Result<(), StoreError> {
        self.queue_json(format!("release/{}", number(release.number)), release)
    }

    fn halts(&self) -> Result<Vec<HaltRecord>, StoreError> {
        self.all_json("halt/")
    }

    fn put_halt(&self, halt: &HaltRecord) -> Result<(), StoreError> {
        self.queue_json(format!("halt/{}", number(halt.id)), halt)
    }

    fn put_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        if !record.host.is_empty() {
            self.queue(host_key(&record.host, record.seq), Vec::new());
        }
        self.queue_json(format!("audit/{}", number(record.seq)), record)
    }

    fn host_audit_seqs(&self, host: &str, before: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        let prefix = format!("audit-host/{host}/");
        let request = RangeRequest {
            revision: self.revision,
            key: self.etcd.key(&prefix),
            range_end: self.etcd.key(&host_key(host, before)),
            limit: i64::try_from(limit).unwrap_or(PAGE).min(PAGE),
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Key as i32,
            keys_only: true,
            ..Default::default()
        };
        let answer = self.etcd.range_waiting("reading a host's audit index", request)?;
        let full = self.etcd.key(&prefix);
        Ok(answer
            .kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(full.as_slice()))
            .filter_map(|seq| std::str::from_utf8(seq).ok()?.parse().ok())
            .collect())
    }

    fn size(&self) -> Result<StoreSize, StoreError> {
        Ok(StoreSize {
            bytes: self.etcd.db_size()?,
            quota_bytes: self.etcd.settings.quota_bytes,
        })
    }

    fn audit_page(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let prefix = self.etcd.key("audit/");
        let request = RangeRequest {
            revision: self.revision,
            key: self.etcd.key(&format!("audit/{}", number(from))),
            range_end: prefix_end(&prefix),
            limit: i64::try_from(limit.max(1)).unwrap_or(PAGE).min(PAGE),
            ..Default::default()
        };
        let page = self.etcd.range_waiting("reading the audit log", request)?;
        page.kvs.iter().map(|kv| self.decode(kv)).collect()
    }

    fn last_audit(&self) -> Result<Option<AuditRecord>, StoreError> {
        let prefix = self.etcd.key("audit/");
        let request = RangeRequest {
            revision: self.revision,
            range_end: prefix_end(&prefix),
            key: prefix,
            limit: 1,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Key as i32,
            ..Default::default()
        };
        let answer = self.etcd.range_waiting("reading the audit log", request)?;
        answer.kvs.first().map(|kv| self.decode(kv)).transpose()
    }

    fn incidents(&self) -> Result<Vec<IncidentRecord>, StoreError> {
        self.all_json("incident/")
    }

    fn put_incident(&self, incident: &IncidentRecord) -> Result<(), StoreError> {
        self.queue_json(format!("incident/{}", number(incident.id)), incident)
    }

    fn token(&self, hash_hex: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get_json(&format!("token/{hash_hex}"))
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.queue_json(format!("token/{}", token.hash_hex), token)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.all_json("token/")
    }

    fn board(&self, hash_hex: &str) -> Result<Option<BoardRecord>, StoreError> {
        self.get_json(&format!("board/{hash_hex}"))
    }

    fn put_board(&self, record: &BoardRecord) -> Result<(), StoreError> {
        self.queue_json(format!("board/{}", record.hash_hex), record)
    }

    fn boards(&self) -> Result<Vec<BoardRecord>, StoreError> {
        self.all_json("board/")
    }

    fn manifest_digests(&self) -> Result<Vec<String>, StoreError> {
        let prefix = self.etcd.key("manifest/");
        Ok(self
            .range("manifest/", None)?
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
            .collect())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let ops = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if ops.is_empty() {
            return Ok(());
        }
        self.commit(ops)
    }

    fn archive_mark(&self) -> Result<Option<super::super::ArchiveMark>, StoreError> {
        self.get_json(ARCHIVE_MARK)
    }

    /// The mark and the deletion of the records it covers in one fenced
    /// transaction (a DeleteRange over their keys), then the chunks of any
    /// record stored in chunks: a crash before those only leaves chunks
    /// that nothing names.
    fn drop_archived(&self, mark: &super::super::ArchiveMark) -> Result<(), StoreError> {
        let through = number(mark.through_seq);
        let mut end = self.etcd.key(&format!("audit/{through}"));
        end.push(0);
        let mut chunked = Vec::new();
        for kv in self.range_until("audit/", None, Some(end.clone()))? {
            if let Some(rest) = kv.value.strip_prefix(CHUNKED) {
                let rest = String::from_utf8_lossy(rest);
                if let Some((digest, _)) = rest.split_once(':') {
                    chunked.push(digest.to_string());
                }
            }
        }
        let value = serde_json::to_vec(mark).map_err(|e| StoreError::Corrupt {
            key: ARCHIVE_MARK.into(),
            reason: e.to_string(),
        })?;
        let delete = |key: Vec<u8>, range_end: Vec<u8>| RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(api::DeleteRangeRequest {
                key,
                range_end,
            })),
        };
        self.send_fenced(vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(api::PutRequest {
                    key: self.etcd.key(ARCHIVE_MARK),
                    value,
                    lease: 0,
                })),
            },
            delete(self.etcd.key("audit/"), end),
        ])?;
        for digest in chunked {
            let prefix = self.etcd.key(&format!("chunk/{digest}/"));
            let end = prefix_end(&prefix);
            self.send_fenced(vec![delete(prefix, end)])?;
        }
        // The per-host index of what left (it holds the online window only).
        let prefix = self.etcd.key("audit-host/");
        let mut gone = Vec::new();
        for kv in self.range_keys("audit-host/")? {
            let seq = kv
                .rsplit(|b| *b == b'/')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u64>().ok());
            if kv.starts_with(&prefix) && seq.is_some_and(|s| s <= mark.through_seq) {
                gone.push(delete(kv, Vec::new()));
            }
        }
        let per_txn = self.etcd.settings.max_txn_ops.max(1);
        while !gone.is_empty() {
            let rest = gone.split_off(gone.len().min(per_txn));
            self.send_fenced(std::mem::replace(&mut gone, rest))?;
        }
        Ok(())
    }
}

/// Where the log kept in etcd begins, once segments were archived.
const ARCHIVE_MARK: &str = "archive_mark";

/// A record's entry in the per-host index: `audit-host/<host>/<seq>`.
fn host_key(host: &str, seq: u64) -> String {
    format!("audit-host/{host}/{}", number(seq))
}
