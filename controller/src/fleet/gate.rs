//! The gate rule, as pure code: no I/O, no clock of its own. Given what is
//! known about a host, the expected set of its role, and the time, decide
//! OPEN or CLOSED with every failing reason. Unknown is never OPEN.

use std::collections::BTreeMap;

use lockstep_proto::diff;
use lockstep_proto::digest::Digest;
use lockstep_proto::digest::short_hex;
use lockstep_proto::pb::{Entry, EntryKind, Gate, GateState, Reason, ReasonKind};

use crate::config::{ControllerConfig, RoleConfig};
use crate::store::{HaltRecord, HaltScope, HostRecord};

/// Drift reasons listed per host before the rest are summarised.
pub const MAX_DRIFT_REASONS: usize = 50;

/// What is known about one host of a role.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts<'a> {
    pub host: &'a str,
    pub record: Option<&'a HostRecord>,
    /// Entries of the last accepted version set.
    pub entries: Option<&'a [Entry]>,
    /// Digest of those entries without the role's per-host paths.
    pub comparable: Option<Digest>,
}

/// The version set a role's hosts must hold.
#[derive(Debug, Clone, Copy)]
pub enum Expected<'a> {
    Release {
        number: u64,
        comparable: Digest,
        entries: &'a [Entry],
        /// The release's approved boot state (PCR → SHA-256 hex); empty: none.
        boot: &'a BTreeMap<u32, String>,
    },
    Consensus {
        comparable: Digest,
        entries: &'a [Entry],
        holders: usize,
        of: usize,
    },
    NoRelease,
    NoMajority {
        largest: usize,
        of: usize,
    },
}

impl Expected<'_> {
    pub fn release_number(&self) -> u64 {
        match self {
            Self::Release { number, .. } => *number,
            _ => 0,
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Release { number, .. } => format!("release {number}"),
            _ => "the majority".into(),
        }
    }
}

/// Time inputs of a decision, in controller-clock milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now_unix_ms: i64,
    pub freshness_ttl_ms: i64,
    /// How old a TPM-bound host's last verified quote may be.
    pub quote_max_age_ms: i64,
}

impl Clock {
    /// `now_unix_ms`, and the lease a fresh attestation buys under `config`.
    pub fn at(config: &ControllerConfig, now_unix_ms: i64) -> Self {
        Self {
            now_unix_ms,
            freshness_ttl_ms: i64::try_from(config.freshness_ttl.as_millis()).unwrap_or(i64::MAX),
            quote_max_age_ms: i64::try_from(config.tpm_quote_max_age.as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn is_fresh(&self, record: &HostRecord) -> bool {
        record.has_reported() && self.now_unix_ms - record.accepted_at_unix_ms <= self.freshness_ttl_ms
    }
}

fn was_rejected_last(record: &HostRecord) -> bool {
    record
        .last_rejection
        .as_ref()
        .is_some_and(|r| r.at_unix_ms >= record.accepted_at_unix_ms)
}

/// The consensus expectation: the comparable set held by a strict majority of
/// the role's whole inventory, counting only fresh, unrejected hosts, so
/// silent hosts make a majority harder, never easier.
pub fn consensus<'a>(role: &RoleConfig, facts: &[HostFacts<'a>], clock: Clock) -> Expected<'a> {
    let of = role.hosts.len();
    let mut groups: Vec<(Digest, usize, &'a [Entry])> = Vec::new();
    for f in facts {
        let (Some(record), Some(comparable), Some(entries)) = (f.record, f.comparable, f.entries) else {
            continue;
        };
        if !clock.is_fresh(record) || was_rejected_last(record) {
            continue;
        }
        match groups.iter_mut().find(|g| g.0 == comparable) {
            Some(g) => g.1 += 1,
            None => groups.push((comparable, 1, entries)),
        }
    }
    let largest = groups.iter().max_by_key(|g| g.1);
    match largest {
        Some(&(comparable, holders, entries)) if holders * 2 > of => Expected::Consensus {
            comparable,
            entries,
            holders,
            of,
        },
        _ => Expected::NoMajority {
            largest: largest.map_or(0, |g| g.1),
            of,
        },
    }
}

fn reason(kind: ReasonKind, text: String) -> Reason {
    Reason {
        kind: kind as i32,
        text,
    }
}

/// Rule 4: each active halt over the host is a reason, saying who, when, why
/// and how to lift it.
fn halt_reasons(halts: &[&HaltRecord]) -> Vec<Reason> {
    halts
        .iter()
        .map(|h| {
            let at = std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(h.halted_at_unix_ms).unwrap_or(0));
            let lift = match &h.scope {
                HaltScope::Fleet => "--fleet".to_string(),
                HaltScope::Role(r) => format!("--role {r}"),
                HaltScope::Host(x) => format!("--host {x}"),
            };
            reason(
                ReasonKind::Halted,
                format!(
                    "halted ({}) by {} at {}: {} (lift with: lockstep resume {lift})",
                    h.scope,
                    h.halted_by,
                    humantime::format_rfc3339_seconds(at),
                    h.reason
                ),
            )
        })
        .collect()
}

/// Decides one host's gate; `halts` are the active halts covering it.
pub fn decide(
    role: &RoleConfig,
    facts: &HostFacts<'_>,
    expected: &Expected<'_>,
    halts: &[&HaltRecord],
    clock: Clock,
) -> Gate {
    let mut gate = Gate {
        host: facts.host.to_string(),
        role: role.name.clone(),
        release: expected.release_number(),
        decided_at_unix_ms: clock.now_unix_ms,
        ..Default::default()
    };
    if let Some(rev) = facts.record.and_then(|r| r.revoked.as_ref()) {
        gate.state = GateState::Closed as i32;
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(rev.at_unix_ms).unwrap_or(0));
        let text = if rev.removed {
            format!(
                "removed from service by {} at {}: {} (take it out of role {}'s hosts in the controller config)",
                rev.by,
                humantime::format_rfc3339_seconds(at),
                rev.reason,
                role.name
            )
        } else {
            format!(
                "revoked by {} at {}: {} (it must enroll again with a new token)",
                rev.by,
                humantime::format_rfc3339_seconds(at),
                rev.reason
            )
        };
        gate.reasons = vec![reason(ReasonKind::Revoked, text)];
        return gate;
    }
    let Some(record) = facts.record.filter(|r| r.has_reported()) else {
        gate.state = GateState::Missing as i32;
        gate.reasons = halt_reasons(halts);
        gate.reasons.push(reason(
            ReasonKind::Missing,
            format!(
                "{} has never reported (inventory of role {}): is its agent installed and enrolled?",
                facts.host, role.name
            ),
        ));
        return gate;
    };
    let mut reasons = halt_reasons(halts);
    if let Some(rej) = record.last_rejection.as_ref().filter(|_| was_rejected_last(record)) {
        reasons.push(reason(
            ReasonKind::Rejected,
            format!("last attestation rejected: {}", rej.reason),
        ));
    }
    if !clock.is_fresh(record) {
        let age_s = (clock.now_unix_ms - record.accepted_at_unix_ms) / 1000;
        reasons.push(reason(
            ReasonKind::Stale,
            format!(
                "stale: last attestation accepted {age_s}s ago, freshness TTL is {}s",
                clock.freshness_ttl_ms / 1000
            ),
        ));
    }
    reasons.extend(compare(role, facts, expected));
    reasons.extend(running(facts, expected));
    reasons.extend(retired_flags(role, facts));
    reasons.extend(boot(role, record, expected, clock));
    if reasons.is_empty() {
        gate.state = GateState::Open as i32;
        gate.lease_expires_unix_ms = record.accepted_at_unix_ms + clock.freshness_ttl_ms;
        // A TPM-bound host's lease also ends when its quote gets too old.
        if let Some(q) = record.tpm.as_ref().and_then(|t| t.quote.as_ref()) {
            gate.lease_expires_unix_ms = gate.lease_expires_unix_ms.min(q.at_unix_ms + clock.quote_max_age_ms);
        }
    } else {
        gate.state = GateState::Closed as i32;
        gate.reasons = reasons;
    }
    gate
}

/// Rule 5: the host's comparable set equals the role's expected set.
fn compare(role: &RoleConfig, facts: &HostFacts<'_>, expected: &Expected<'_>) -> Vec<Reason> {
    let (want, want_entries) = match expected {
        Expected::Release {
            comparable, entries, ..
        }
        | Expected::Consensus {
            comparable, entries, ..
        } => (*comparable, *entries),
        Expected::NoRelease => {
            return vec![reason(
                ReasonKind::NoRelease,
                format!(
                    "role {} has no approved release: propose one (lockstep release propose) and have another operator approve it",
                    role.name
                ),
            )];
        }
        Expected::NoMajority { largest, of } => {
            return vec![reason(
                ReasonKind::NoMajority,
                format!(
                    "no majority in role {}: the largest agreeing group is {largest} of {of} hosts",
                    role.name
                ),
            )];
        }
    };
    let (Some(have), Some(entries)) = (facts.comparable, facts.entries) else {
        return vec![reason(
            ReasonKind::Drift,
            "drift: the host's version set is unknown".into(),
        )];
    };
    if have == want {
        return Vec::new();
    }
    let label = expected.label();
    let changes = diff::diff(entries, want_entries, &label, |p| role.is_excluded_from_comparison(p));
    let mut out: Vec<Reason> = changes
        .iter()
        .take(MAX_DRIFT_REASONS)
        .map(|c| reason(ReasonKind::Drift, format!("drift: {}", c.text)))
        .collect();
    if changes.len() > MAX_DRIFT_REASONS {
        out.push(reason(
            ReasonKind::Drift,
            format!(
                "drift: and {} more differences (lockstep diff {} --release)",
                changes.len() - MAX_DRIFT_REASONS,
                facts.host
            ),
        ));
    }
    if out.is_empty() {
        // Digests differ but no listed field does: still not equal, still closed.
        out.push(reason(
            ReasonKind::Drift,
            format!("drift: version set differs from {label}"),
        ));
    }
    out
}

/// "proc:smars@ab12cd34/lib:/x" → "smars".
fn process_name(path: &str) -> &str {
    let rest = path.strip_prefix("proc:").unwrap_or(path);
    rest.split(['@', '/']).next().unwrap_or(rest)
}

/// Rule 6: every running image (and every mapped library the expected set
/// names) is the one the expected set has at that path. A deleted image is
/// drift whatever it contained.
fn running(facts: &HostFacts<'_>, expected: &Expected<'_>) -> Vec<Reason> {
    let (Expected::Release { entries: want, .. } | Expected::Consensus { entries: want, .. }) = expected else {
        return Vec::new();
    };
    let (Some(entries), label) = (facts.entries, expected.label()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries
        .iter()
        .filter(|e| matches!(e.kind(), EntryKind::Process | EntryKind::ProcessLib))
    {
        let path = String::from_utf8_lossy(&e.path);
        let name = process_name(&path);
        let shown = String::from_utf8_lossy(&e.link_target);
        let what = if e.kind() == EntryKind::Process { "runs" } else { "maps" };
        if let Some(on_disk) = shown.strip_suffix(" (deleted)") {
            // Replaced (a deploy renames over the file) or removed since the
            // process started: drift whatever it contains.
            let vs = match want.binary_search_by(|w| w.path.as_slice().cmp(on_disk.as_bytes())) {
                Ok(i) if want[i].sha256 == e.sha256 => format!(", same content as {label}"),
                Ok(i) => format!(
                    ", sha256 {} != {label} ({})",
                    short_hex(&e.sha256),
                    short_hex(&want[i].sha256)
                ),
                Err(_) => String::new(),
            };
            out.push(reason(
                ReasonKind::Process,
                format!("process {name} {what} a replaced or deleted {on_disk}{vs}: restart it on the released binary"),
            ));
            continue;
        }
        match want.binary_search_by(|w| w.path.as_slice().cmp(shown.as_bytes())) {
            Ok(i) if want[i].sha256 != e.sha256 => out.push(reason(
                ReasonKind::Process,
                format!(
                    "process {name} {what} {shown} sha256 {} != {label} ({}): not restarted since the deploy?",
                    short_hex(&e.sha256),
                    short_hex(&want[i].sha256)
                ),
            )),
            Ok(_) => {}
            // An image the expected set does not name at all; libraries it
            // does not name (libc...) are not the release's business.
            Err(_) if e.kind() == EntryKind::Process => out.push(reason(
                ReasonKind::Process,
                format!("process {name} runs {shown}, which {label} does not name"),
            )),
            Err(_) => {}
        }
    }
    out
}

fn is_set(value: &str) -> bool {
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "false" | "no" | "off"
    )
}

/// Rule 7: no retired flag is set anywhere on the host, whatever the
/// expected set says (a release cannot bless a retired flag).
fn retired_flags(role: &RoleConfig, facts: &HostFacts<'_>) -> Vec<Reason> {
    let Some(entries) = facts.entries else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for flag in &role.retired_flags {
        for e in entries {
            let path = String::from_utf8_lossy(&e.path);
            match e.kind() {
                EntryKind::ConfigKey if !flag.starts_with('-') => {
                    let Some((file, key)) = path.rsplit_once('#') else {
                        continue;
                    };
                    let named = key == flag || key.ends_with(&format!(".{flag}"));
                    if named && is_set(&e.value) {
                        out.push(reason(
                            ReasonKind::RetiredFlag,
                            format!("retired flag: {key} = {} in {file}", e.value),
                        ));
                    }
                }
                EntryKind::ProcessArgs if flag.starts_with('-') => {
                    let hit = e
                        .value
                        .split('\0')
                        .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
                    if hit {
                        out.push(reason(
                            ReasonKind::RetiredFlag,
                            format!("retired flag: {flag} on the command line of {}", process_name(&path)),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Rule 8: a TPM-bound host has a fresh verified quote, and its boot PCRs
/// are the release's approved boot state when the release names one; a
/// role that requires a TPM has no host without one.
fn boot(role: &RoleConfig, record: &HostRecord, expected: &Expected<'_>, clock: Clock) -> Vec<Reason> {
    let release_boot = match expected {
        Expected::Release { number, boot, .. } if !boot.is_empty() => Some((*number, *boot)),
        _ => None,
    };
    let Some(tpm) = &record.tpm else {
        if role.require_tpm {
            return vec![reason(
                ReasonKind::Boot,
                format!(
                    "boot: role {} requires a TPM-bound identity and {} enrolled without one: set [identity] tpm in its agent config and enroll it again",
                    role.name, record.host
                ),
            )];
        }
        return match release_boot {
            Some((number, _)) => vec![reason(
                ReasonKind::Boot,
                format!(
                    "boot: release {number} names a boot state and {} has no TPM-bound identity to show its own",
                    record.host
                ),
            )],
            None => Vec::new(),
        };
    };
    let Some(quote) = &tpm.quote else {
        return vec![reason(
            ReasonKind::Boot,
            "boot: no verified TPM quote since the host enrolled: is its agent running with [identity] tpm?".into(),
        )];
    };
    let age_ms = clock.now_unix_ms - quote.at_unix_ms;
    if age_ms > clock.quote_max_age_ms {
        return vec![reason(
            ReasonKind::Boot,
            format!(
                "boot: last verified TPM quote {}s ago, at most {}s allowed ([tpm] quote_max_age): is the host's TPM answering?",
                age_ms / 1000,
                clock.quote_max_age_ms / 1000
            ),
        )];
    }
    let Some((number, want)) = release_boot else {
        return Vec::new();
    };
    want.iter()
        .filter_map(|(pcr, value)| match quote.pcrs.get(pcr) {
            Some(have) if have == value => None,
            Some(have) => Some(reason(
                ReasonKind::Boot,
                format!(
                    "boot: PCR {pcr} sha256 {} != release {number} ({})",
                    &have[..have.len().min(16)],
                    &value[..value.len().min(16)]
                ),
            )),
            None => Some(reason(
                ReasonKind::Boot,
                format!("boot: PCR {pcr} is not in the host's quote (release {number} names it)"),
            )),
        })
        .collect()
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
