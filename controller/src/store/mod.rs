//! What the controller keeps durably, and the [`Store`] trait it is kept
//! behind. sled is the one backend (`sled_store`); no sled type appears
//! outside that module. [`Put`] is one record as a change writes it.

pub mod audit_reads;
pub mod etcd;
mod incident;
pub mod migrate;
pub mod sled;

use std::sync::Arc;

use lockstep_proto::pb::Entry;

pub use incident::{IncidentRecord, Notified};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage at {path}: {reason}")]
    Backend { path: String, reason: String },
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "disk full: {path} has {free_mib} MiB free, below the {need_mib} MiB kept in reserve ([store] min_free_mib); free space there"
    )]
    DiskFull { path: String, free_mib: u64, need_mib: u64 },
    #[error(
        "a write to the store has not finished in {after_s}s (disk full or failing?); nothing more is written until the controller restarts"
    )]
    Stalled { after_s: u64 },
}

/// A rejected attestation, kept so the gate can say why it is closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub at_unix_ms: i64,
    pub reason: String,
}

/// Everything the controller knows about one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host: String,
    pub role: String,
    /// The Ed25519 attestation key pinned for this host (hex).
    pub pinned_key_hex: String,
    pub pinned_at_unix_ms: i64,
    pub last_seq: u64,
    /// Digest (hex) of the version set in the last accepted attestation.
    pub digest_hex: String,
    pub measured_at_unix_ms: i64,
    /// When the last attestation was accepted (controller clock): freshness.
    pub accepted_at_unix_ms: i64,
    pub boot_id: String,
    pub agent_version: String,
    pub last_rejection: Option<Rejection>,
    /// When the host last enrolled with a token (0: never).
    #[serde(default)]
    pub enrolled_at_unix_ms: i64,
    /// Set by `lockstep host revoke` / `host remove`; cleared by enrolling again.
    #[serde(default)]
    pub revoked: Option<Revocation>,
    /// The TPM the host's identity is bound to (enrolled with `[identity] tpm`).
    /// Boxed: most hosts have none, and every host record is moved around.
    #[serde(default)]
    pub tpm: Option<Box<TpmBinding>>,
}

/// A host's TPM: its EK and AK as bound at enrollment, and its last
/// verified quote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmBinding {
    /// TPMT_PUBLIC of the endorsement key (hex).
    pub ek_public_hex: String,
    /// TPMT_PUBLIC of the attestation key the credential activation proved
    /// to live in that TPM (hex).
    pub ak_public_hex: String,
    /// How the EK was trusted ("pinned at first enrollment", ...).
    pub ek_trust: String,
    pub bound_at_unix_ms: i64,
    #[serde(default)]
    pub quote: Option<QuoteRecord>,
}

/// The last verified quote of a TPM-bound host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteRecord {
    pub at_unix_ms: i64,
    /// The Ed25519 key this agent run signs attestations with (hex): the
    /// quote's session PCR binds it.
    pub session_key_hex: String,
    pub boot_id: String,
    /// PCR index → SHA-256 value (hex).
    pub pcrs: std::collections::BTreeMap<u32, String>,
    pub reset_count: u32,
}

/// An operator's revocation of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub by: String,
    pub at_unix_ms: i64,
    pub reason: String,
    /// Decommissioned (`host remove`), not just distrusted.
    pub removed: bool,
}

/// A join token, kept as the SHA-256 of its text: the token itself is shown
/// once to the operator who made it and never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub hash_hex: String,
    pub host: String,
    pub role: String,
    pub created_by: String,
    pub created_at_unix_ms: i64,
    pub expires_at_unix_ms: i64,
    /// 0 until used; a token is good for one enrollment.
    pub used_at_unix_ms: i64,
    /// The enrollment may bind another TPM than the host's (or none).
    #[serde(default)]
    pub allow_new_tpm: bool,
}

/// A board login link or session, kept as the SHA-256 of its secret (the
/// link's token, the session's cookie): the secret itself lives only in
/// the operator's hands and browser. In the ledger, so a new leader knows
/// every session the old one opened, every link it spent and every session
/// it ended: a failover logs no board out and reopens nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardRecord {
    pub hash_hex: String,
    /// A session (false: a login link).
    pub session: bool,
    /// The session's short public name (`lockstep board sessions`).
    pub id: String,
    pub operator: String,
    /// viewer, operator or approver: the role of the certificate that asked.
    pub role: String,
    pub created_at_unix_ms: i64,
    pub expires_at_unix_ms: i64,
    /// A link: when it was spent (0: not yet).
    pub used_at_unix_ms: i64,
    /// A session: when it was revoked or logged out (0: live).
    pub ended_at_unix_ms: i64,
}

impl HostRecord {
    pub fn has_reported(&self) -> bool {
        self.accepted_at_unix_ms > 0
    }
}

/// A release: an approved version set of a role, numbered and kept forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub number: u64,
    pub role: String,
    /// Digest (hex) of the full manifest, stored under that digest.
    pub digest_hex: String,
    pub entry_count: u32,
    pub source: String,
    pub note: String,
    pub proposed_by: String,
    pub proposed_at_unix_ms: i64,
    pub approved_by: Option<String>,
    pub approved_at_unix_ms: i64,
    /// The approved boot state: PCR index → SHA-256 value (hex); empty when
    /// the release names none.
    #[serde(default)]
    pub boot_pcrs: std::collections::BTreeMap<u32, String>,
    /// The TPM-bound reference host the boot state was taken from.
    #[serde(default)]
    pub boot_from_host: String,
}

/// What a halt covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaltScope {
    Fleet,
    Role(String),
    Host(String),
}

impl HaltScope {
    pub fn covers(&self, host: &str, role: &str) -> bool {
        match self {
            Self::Fleet => true,
            Self::Role(r) => r == role,
            Self::Host(h) => h == host,
        }
    }
}

impl std::fmt::Display for HaltScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fleet => write!(f, "the fleet"),
            Self::Role(r) => write!(f, "role {r}"),
            Self::Host(h) => write!(f, "host {h}"),
        }
    }
}

/// The kill switch, thrown. Kept after it is lifted, for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltRecord {
    pub id: u64,
    pub scope: HaltScope,
    pub reason: String,
    pub halted_by: String,
    pub halted_at_unix_ms: i64,
    pub resumed_by: Option<String>,
    pub resumed_at_unix_ms: i64,
    pub resume_reason: String,
    /// A test of the kill switch (`lockstep halt --drill`): it halts for real.
    #[serde(default)]
    pub drill: bool,
}

impl HaltRecord {
    pub fn is_active(&self) -> bool {
        self.resumed_by.is_none()
    }
}

/// A record the store keeps, as written by a change and read back at start.
#[derive(Debug, Clone)]
pub enum Put {
    Host(HostRecord),
    Manifest {
        digest_hex: String,
        entries: Arc<Vec<Entry>>,
    },
    Release(ReleaseRecord),
    Halt(HaltRecord),
    Token(TokenRecord),
    Incident(IncidentRecord),
    Board(BoardRecord),
}

impl Put {
    pub fn write(&self, store: &dyn Store) -> Result<(), StoreError> {
        match self {
            Self::Host(h) => store.put_host(h),
            Self::Manifest { digest_hex, entries } => store.put_manifest(digest_hex, entries),
            Self::Release(r) => store.put_release(r),
            Self::Halt(h) => store.put_halt(h),
            Self::Token(t) => store.put_token(t),
            Self::Incident(i) => store.put_incident(i),
            Self::Board(b) => store.put_board(b),
        }
    }
}

/// Durable state. Writes may be buffered until [`Store::flush`], which
/// returns only once everything written before it is on disk: the
/// controller acknowledges nothing before that.
pub trait Store: Send + Sync {
    /// The leadership epoch this store's writes are fenced on (0: unfenced,
    /// the single-controller sled store).
    fn epoch(&self) -> u64 {
        0
    }
    /// Refuses (DiskFull) when the store's filesystem has less than
    /// `min_free` bytes available, before anything of a change is written.
    fn check_space(&self, min_free: u64) -> Result<(), StoreError>;
    fn hosts(&self) -> Result<Vec<HostRecord>, StoreError>;
    fn put_host(&self, host: &HostRecord) -> Result<(), StoreError>;
    fn has_manifest(&self, digest_hex: &str) -> Result<bool, StoreError>;
    /// Stores canonical entries under their digest, once per digest.
    fn put_manifest(&self, digest_hex: &str, entries: &[Entry]) -> Result<(), StoreError>;
    fn manifest(&self, digest_hex: &str) -> Result<Option<Vec<Entry>>, StoreError>;
    fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError>;
    fn put_release(&self, release: &ReleaseRecord) -> Result<(), StoreError>;
    fn halts(&self) -> Result<Vec<HaltRecord>, StoreError>;
    fn put_halt(&self, halt: &HaltRecord) -> Result<(), StoreError>;
    fn put_audit(&self, record: &lockstep_evidence::chain::AuditRecord) -> Result<(), StoreError>;
    /// Audit records from seq `from` on, in order: at most `limit` (fewer
    /// when they are large), at least one while any is left. Every read of
    /// the log goes page by page ([`audit_reads`]): none holds it whole.
    fn audit_page(&self, from: u64, limit: usize) -> Result<Vec<lockstep_evidence::chain::AuditRecord>, StoreError>;
    fn last_audit(&self) -> Result<Option<lockstep_evidence::chain::AuditRecord>, StoreError>;
    /// Every stored incident, closed ones included (they keep ids unique).
    fn incidents(&self) -> Result<Vec<IncidentRecord>, StoreError>;
    fn put_incident(&self, incident: &IncidentRecord) -> Result<(), StoreError>;
    fn token(&self, hash_hex: &str) -> Result<Option<TokenRecord>, StoreError>;
    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// Every token record (migration copies them; the controller looks
    /// tokens up by hash only).
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    fn board(&self, hash_hex: &str) -> Result<Option<BoardRecord>, StoreError>;
    fn put_board(&self, record: &BoardRecord) -> Result<(), StoreError>;
    /// Every board record (`lockstep board sessions`, revocation by id).
    fn boards(&self) -> Result<Vec<BoardRecord>, StoreError>;
    /// The digest of every stored manifest (for migration).
    fn manifest_digests(&self) -> Result<Vec<String>, StoreError>;
    fn flush(&self) -> Result<(), StoreError>;
    /// How much room the store takes, and the most it may (etcd's quota).
    fn size(&self) -> Result<StoreSize, StoreError>;
    /// The seqs of the newest records about `host` (their `host` field)
    /// before seq `before`, newest first, at most `limit`: the store's
    /// per-host index, written with each record and dropped with it when
    /// it is archived.
    fn host_audit_seqs(&self, host: &str, before: u64, limit: usize) -> Result<Vec<u64>, StoreError>;
    /// Where the log kept here begins, once segments were archived.
    fn archive_mark(&self) -> Result<Option<ArchiveMark>, StoreError> {
        Ok(None)
    }
    /// Writes `mark` and deletes every audit record up to its
    /// `through_seq`, durably, outside the ledger's commits (the records
    /// are old; no commit touches them). Called again with the same mark,
    /// it finishes what a crash interrupted.
    fn drop_archived(&self, mark: &ArchiveMark) -> Result<(), StoreError> {
        let _ = mark;
        Err(StoreError::Backend {
            path: "store".into(),
            reason: "this store cannot drop archived records".into(),
        })
    }
}

/// What has left the store for the archive: every audit record up to
/// `through_seq` is in the archive's files, the last of them `file`. The
/// log kept in the store follows `through_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMark {
    pub through_seq: u64,
    pub through_hash: String,
    pub through_at_unix_ms: i64,
    pub file: String,
    pub file_sha256: String,
    /// Its `audit.archived` record is written (false: a crash came between).
    pub recorded: bool,
}

impl ArchiveMark {
    /// The head the first record kept in the store follows.
    pub fn head(&self) -> lockstep_evidence::chain::ChainHead {
        lockstep_evidence::chain::ChainHead {
            next_seq: self.through_seq + 1,
            last_hash: self.through_hash.clone(),
            last_at_unix_ms: self.through_at_unix_ms,
        }
    }
}

/// The store's size: `lockstep_store_bytes`, and on etcd the quota it is
/// measured against (etcd refuses every write past it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSize {
    pub bytes: u64,
    /// 0: no quota (sled: the disk's free space is guarded by `[store] min_free_mib`).
    pub quota_bytes: u64,
}

impl From<&ReleaseRecord> for lockstep_evidence::facts::ReleaseFact {
    fn from(r: &ReleaseRecord) -> Self {
        Self {
            number: r.number,
            role: r.role.clone(),
            digest: r.digest_hex.clone(),
            entries: r.entry_count,
            proposed_by: r.proposed_by.clone(),
            proposed_at_unix_ms: r.proposed_at_unix_ms,
            approved_by: r.approved_by.clone().unwrap_or_default(),
            approved_at_unix_ms: r.approved_at_unix_ms,
        }
    }
}

impl From<&HaltRecord> for lockstep_evidence::facts::HaltFact {
    fn from(h: &HaltRecord) -> Self {
        Self {
            id: h.id,
            scope: h.scope.to_string(),
            reason: h.reason.clone(),
            by: h.halted_by.clone(),
            at_unix_ms: h.halted_at_unix_ms,
            drill: h.drill,
        }
    }
}
