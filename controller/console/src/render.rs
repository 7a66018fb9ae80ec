//! How console answers are shown: aligned tables for people, JSON for scripts.

use std::io::{self, Write};

use lockstep_proto::digest::short_hex;
use lockstep_proto::manifest::kind_name;
use lockstep_proto::pb::{
    AuditRecord, CreateTokenReply, Incident, RequestScanReply, RevokeHostReply, VerifyAuditReply,
};
use lockstep_proto::pb::{
    ChangeKind, DiffReply, Gate, GateCheckReply, Halt, HaltReply, HostDetail, HostStatus, Release, ReleaseState,
    ResumeReply, halt_scope::Scope,
};
use lockstep_proto::{now_unix_ms, paths};
use serde_json::{Value, json};

use lockstep_evidence::gate_check::{state_word, summary, why};

/// Prints rows under a header with columns padded to their widest cell.
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c.to_string()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn ago(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "never".into();
    }
    let s = (now_unix_ms() - unix_ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn gate_json(g: &Gate) -> Value {
    json!({
        "host": g.host,
        "role": g.role,
        "state": state_word(g.state()),
        "release": g.release,
        "lease_expires_unix_ms": g.lease_expires_unix_ms,
        "reasons": g.reasons.iter().map(|r| json!({
            "kind": r.kind().as_str_name().trim_start_matches("REASON_KIND_").to_lowercase(),
            "text": r.text,
        })).collect::<Vec<_>>(),
    })
}

fn host_json(h: &HostStatus) -> Value {
    json!({
        "host": h.host,
        "role": h.role,
        "gate": h.gate.as_ref().map(gate_json),
        "last_seq": h.last_seq,
        "measured_at_unix_ms": h.last_measured_at_unix_ms,
        "accepted_at_unix_ms": h.last_received_at_unix_ms,
        "digest": hex::encode(&h.digest),
        "entries": h.entry_count,
        "boot_id": h.boot_id,
        "agent_version": h.agent_version,
        "last_rejection": h.last_rejection,
        "tpm": h.tpm.as_ref().map(|t| json!({
            "bound": t.bound,
            "ek_id": t.ek_id,
            "ek_trust": t.ek_trust,
            "last_quote_unix_ms": t.last_quote_unix_ms,
            "verdict": t.verdict,
        })),
    })
}

fn print_json(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(v).unwrap_or_default())
}

fn first_reason(g: Option<&Gate>) -> String {
    let Some(g) = g else { return String::new() };
    match g.reasons.len() {
        0 => String::new(),
        1 => g.reasons[0].text.clone(),
        n => format!("{} (+{} more)", g.reasons[0].text, n - 1),
    }
}

pub fn hosts(out: &mut dyn Write, hosts: &[HostStatus], json: bool) -> io::Result<()> {
    if json {
        return print_json(out, &Value::Array(hosts.iter().map(host_json).collect()));
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let g = h.gate.as_ref();
            vec![
                h.host.clone(),
                h.role.clone(),
                g.map_or("UNKNOWN", |g| state_word(g.state())).to_string(),
                short_hex(&h.digest),
                ago(h.last_received_at_unix_ms),
                first_reason(g),
            ]
        })
        .collect();
    table(out, &["HOST", "ROLE", "GATE", "DIGEST", "LAST SEEN", "REASON"], &rows)
}

pub fn host(out: &mut dyn Write, d: &HostDetail, json: bool) -> io::Result<()> {
    let Some(h) = &d.status else { return Ok(()) };
    if json {
        let mut v = host_json(h);
        v["entries_list"] = Value::Array(
            d.entries
                .iter()
                .map(|e| json!({"path": paths::display(&e.path), "kind": kind_name(e.kind()), "sha256": hex::encode(&e.sha256), "size": e.size, "mode": format!("{:04o}", e.mode), "uid": e.uid, "gid": e.gid}))
                .collect(),
        );
        return print_json(out, &v);
    }
    let g = h.gate.as_ref();
    writeln!(out, "host:        {} (role {})", h.host, h.role)?;
    writeln!(out, "gate:        {}", g.map_or("UNKNOWN", |g| state_word(g.state())))?;
    if let Some(g) = g.filter(|g| g.release > 0) {
        writeln!(out, "judged by:   release {}", g.release)?;
    }
    writeln!(
        out,
        "digest:      {} ({} entries)",
        hex::encode(&h.digest),
        h.entry_count
    )?;
    writeln!(
        out,
        "last seen:   {} (seq {}, boot {})",
        ago(h.last_received_at_unix_ms),
        h.last_seq,
        h.boot_id
    )?;
    match &h.tpm {
        Some(t) => {
            writeln!(out, "TPM:         bound (EK {}, {})", t.ek_id, t.ek_trust)?;
            writeln!(out, "last quote:  {} ({})", ago(t.last_quote_unix_ms), t.verdict)?;
        }
        None => writeln!(out, "TPM:         none (file keys)")?,
    }
    if !h.last_rejection.is_empty() {
        writeln!(out, "rejected:    {}", h.last_rejection)?;
    }
    for r in g.map(|g| g.reasons.as_slice()).unwrap_or_default() {
        writeln!(out, "  - {}", r.text)?;
    }
    if !d.entries.is_empty() {
        let rows: Vec<Vec<String>> = d
            .entries
            .iter()
            .map(|e| {
                vec![
                    kind_name(e.kind()).to_string(),
                    short_hex(&e.sha256),
                    e.size.to_string(),
                    format!("{:04o}", e.mode),
                    format!("{}:{}", e.uid, e.gid),
                    paths::display(&e.path),
                ]
            })
            .collect();
        writeln!(out)?;
        table(out, &["KIND", "SHA256", "SIZE", "MODE", "OWNER", "PATH"], &rows)?;
    }
    Ok(())
}

pub fn diff(out: &mut dyn Write, d: &DiffReply, json: bool) -> io::Result<()> {
    if json {
        let changes: Vec<Value> = d
            .changes
            .iter()
            .map(|c| {
                let kind = match c.kind() {
                    ChangeKind::Added => "only-right",
                    ChangeKind::Removed => "only-left",
                    _ => "modified",
                };
                json!({"path": paths::display(&c.path), "kind": kind, "text": c.text})
            })
            .collect();
        return print_json(
            out,
            &json!({"left": d.left, "right": d.right, "changes": changes, "per_host_excluded": d.per_host_excluded}),
        );
    }
    if d.changes.is_empty() {
        writeln!(
            out,
            "{} matches {} ({} per-host entries left out)",
            d.left, d.right, d.per_host_excluded
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{} differs from {} in {} entries:",
        d.left,
        d.right,
        d.changes.len()
    )?;
    for c in &d.changes {
        writeln!(out, "  {}", c.text)?;
    }
    Ok(())
}

pub fn gate_check(out: &mut dyn Write, r: &GateCheckReply, json: bool) -> io::Result<()> {
    if json {
        return print_json(
            out,
            &json!({"role": r.role, "mode": r.mode, "release": r.release, "gates": r.gates.iter().map(gate_json).collect::<Vec<_>>(), "summary": summary(r)}),
        );
    }
    let rows: Vec<Vec<String>> = r
        .gates
        .iter()
        .map(|g| vec![g.host.clone(), state_word(g.state()).to_string(), why(g)])
        .collect();
    table(out, &["HOST", "GATE", "WHY"], &rows)?;
    for g in r.gates.iter().filter(|g| !g.reasons.is_empty()) {
        writeln!(out, "{}:", g.host)?;
        for reason in &g.reasons {
            writeln!(out, "  - {}", reason.text)?;
        }
    }
    writeln!(out, "{}", summary(r))
}

fn release_word(s: ReleaseState) -> &'static str {
    match s {
        ReleaseState::Proposed => "proposed",
        ReleaseState::Active => "active",
        ReleaseState::Superseded => "superseded",
        ReleaseState::Unspecified => "unknown",
    }
}

fn release_json(r: &Release) -> Value {
    json!({
        "number": r.number, "role": r.role, "state": release_word(r.state()), "digest": hex::encode(&r.digest),
        "entries": r.entry_count, "source": r.source, "note": r.note, "proposed_by": r.proposed_by,
        "approved_by": r.approved_by, "proposed_at_unix_ms": r.proposed_at_unix_ms, "approved_at_unix_ms": r.approved_at_unix_ms,
        "boot_from_host": r.boot_from_host,
        "boot_pcrs": r.boot_pcrs.iter().map(|p| (p.index.to_string(), Value::String(hex::encode(&p.sha256)))).collect::<serde_json::Map<_, _>>(),
    })
}

pub fn release_done(out: &mut dyn Write, r: &Release, verb: &str, json: bool) -> io::Result<()> {
    if json {
        return print_json(out, &release_json(r));
    }
    let boot = if r.boot_pcrs.is_empty() {
        String::new()
    } else {
        let from = if r.boot_from_host.is_empty() {
            String::new()
        } else {
            format!(" from {}", r.boot_from_host)
        };
        format!(", boot state{from}: PCRs {}", pcr_list(&r.boot_pcrs))
    };
    writeln!(
        out,
        "release {} for role {} {verb} ({}, {} entries{boot}, now {})",
        r.number,
        r.role,
        r.source,
        r.entry_count,
        release_word(r.state())
    )
}

/// "0-9" for a run of PCRs, "0, 4, 7" otherwise.
fn pcr_list(pcrs: &[lockstep_proto::pb::PcrValue]) -> String {
    let idx: Vec<u32> = pcrs.iter().map(|p| p.index).collect();
    match (idx.first(), idx.last()) {
        (Some(a), Some(b)) if idx.len() > 2 && (b - a) as usize + 1 == idx.len() => format!("{a}-{b}"),
        _ => idx.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
    }
}

pub fn releases(out: &mut dyn Write, list: &[Release], json: bool) -> io::Result<()> {
    if json {
        return print_json(out, &Value::Array(list.iter().map(release_json).collect()));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                r.number.to_string(),
                r.role.clone(),
                release_word(r.state()).to_string(),
                short_hex(&r.digest),
                r.proposed_by.clone(),
                if r.approved_by.is_empty() {
                    "-".into()
                } else {
                    r.approved_by.clone()
                },
                r.source.clone(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "RELEASE",
            "ROLE",
            "STATE",
            "DIGEST",
            "PROPOSED BY",
            "APPROVED BY",
            "SOURCE",
        ],
        &rows,
    )
}

fn scope_text(h: &Halt) -> String {
    match h.scope.as_ref().and_then(|s| s.scope.as_ref()) {
        Some(Scope::Fleet(_)) => "fleet".into(),
        Some(Scope::Role(r)) => format!("role {r}"),
        Some(Scope::Host(x)) => format!("host {x}"),
        None => "?".into(),
    }
}

fn when(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let ms = u64::try_from(unix_ms.min(lockstep_evidence::time::LAST_RFC3339_MS)).unwrap_or(0);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn halt_json(h: &Halt) -> Value {
    json!({
        "id": h.id, "scope": scope_text(h), "reason": h.reason, "halted_by": h.halted_by,
        "halted_at_unix_ms": h.halted_at_unix_ms, "resumed_by": h.resumed_by,
        "resumed_at_unix_ms": h.resumed_at_unix_ms, "resume_reason": h.resume_reason,
    })
}

pub fn halted(out: &mut dyn Write, r: &HaltReply, json: bool) -> io::Result<()> {
    let Some(h) = &r.halt else { return Ok(()) };
    if json {
        return print_json(out, &json!({"halt": halt_json(h), "hosts": r.hosts}));
    }
    writeln!(
        out,
        "HALT {} on {}: {} gates closed ({})",
        h.id,
        scope_text(h),
        r.hosts.len(),
        h.reason
    )?;
    writeln!(out, "hosts: {}", r.hosts.join(", "))
}

pub fn resumed(out: &mut dyn Write, r: &ResumeReply, json: bool) -> io::Result<()> {
    if json {
        return print_json(
            out,
            &json!({"resumed": r.resumed.iter().map(halt_json).collect::<Vec<_>>(), "still_halted": r.still_halted}),
        );
    }
    for h in &r.resumed {
        writeln!(
            out,
            "lifted halt {} on {} (set by {}: {})",
            h.id,
            scope_text(h),
            h.halted_by,
            h.reason
        )?;
    }
    if !r.still_halted.is_empty() {
        writeln!(out, "still halted by another halt: {}", r.still_halted.join(", "))?;
    }
    writeln!(
        out,
        "gates now follow the gate rule again; check with `lockstep gate check --role ROLE`"
    )
}

pub fn halts(out: &mut dyn Write, list: &[Halt], json: bool) -> io::Result<()> {
    if json {
        return print_json(out, &Value::Array(list.iter().map(halt_json).collect()));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|h| {
            vec![
                h.id.to_string(),
                scope_text(h),
                if h.resumed_by.is_empty() {
                    "ACTIVE".into()
                } else {
                    format!("lifted by {}", h.resumed_by)
                },
                h.halted_by.clone(),
                when(h.halted_at_unix_ms),
                h.reason.clone(),
            ]
        })
        .collect();
    table(out, &["HALT", "SCOPE", "STATE", "BY", "AT", "REASON"], &rows)
}

fn audit_json(r: &AuditRecord) -> Value {
    let mut v = json!({
        "seq": r.seq, "at_unix_ms": r.at_unix_ms, "actor": r.actor, "action": r.action, "host": r.host,
        "role": r.role, "detail": r.detail, "prev_hash": r.prev_hash, "hash": r.hash,
    });
    // An export is what `report verify --audit` re-hashes: facts go with it.
    if !r.facts.is_empty() {
        v["facts"] = Value::String(r.facts.clone());
    }
    v
}

pub fn audit(out: &mut dyn Write, records: &[AuditRecord], json: bool) -> io::Result<()> {
    if json {
        for r in records {
            writeln!(out, "{}", audit_json(r))?;
        }
        return Ok(());
    }
    for r in records {
        let subject = match (r.host.as_str(), r.role.as_str()) {
            ("", "") => String::new(),
            (h, "") | ("", h) => format!(" [{h}]"),
            (h, _) => format!(" [{h}]"),
        };
        writeln!(
            out,
            "{:>5}  {}  {:<22} {}{}: {}",
            r.seq,
            when(r.at_unix_ms),
            r.action,
            r.actor,
            subject,
            r.detail
        )?;
    }
    Ok(())
}

pub fn audit_export(out: &mut dyn Write, records: &[AuditRecord]) -> io::Result<()> {
    audit(out, records, true)
}

pub fn audit_verified(out: &mut dyn Write, r: &VerifyAuditReply, json: bool) -> io::Result<()> {
    if json {
        return print_json(
            out,
            &json!({"ok": r.ok, "records": r.records, "first_broken_seq": r.first_broken_seq, "problem": r.problem,
                "archived_through": r.archived_through, "archive_file": r.archive_file}),
        );
    }
    if r.ok && r.archived_through > 0 {
        writeln!(
            out,
            "audit log intact: {} records in the store, every hash chained to the one before, the first to record {} (archived in {}); check the archive with `lockstep audit verify --archive DIR`",
            r.records, r.archived_through, r.archive_file
        )
    } else if r.ok {
        writeln!(
            out,
            "audit log intact: {} records, every hash chained to the one before",
            r.records
        )
    } else {
        writeln!(
            out,
            "AUDIT LOG BROKEN at record {} of {}: {}. Records from there on cannot be trusted; keep the store for investigation.",
            r.first_broken_seq, r.records, r.problem
        )
    }
}

/// What `lockstep audit verify --archive DIR` found in the archive.
pub fn archive_verified(
    out: &mut dyn Write,
    dir: &std::path::Path,
    verdict: &lockstep_evidence::archive::ArchiveVerdict,
    json: bool,
) -> io::Result<()> {
    let through = verdict.head.as_ref().map_or(0, |h| h.next_seq - 1);
    if json {
        return print_json(
            out,
            &json!({"archive": dir.display().to_string(), "ok": true, "segments": verdict.segments,
                "records": verdict.records, "through_seq": through}),
        );
    }
    writeln!(
        out,
        "archive {} intact: {} segments, records 1..{}, each segment's chain and signed checkpoint hold and each follows the one before",
        dir.display(),
        verdict.segments,
        through
    )
}

fn incident_json(i: &Incident) -> Value {
    json!({
        "id": i.id, "key": i.key, "title": i.title, "role": i.role, "hosts": i.hosts, "ever": i.ever,
        "count": i.count, "detail": i.detail, "opened_at_unix_ms": i.opened_at_unix_ms,
        "last_seen_unix_ms": i.last_seen_unix_ms, "resolved_at_unix_ms": i.resolved_at_unix_ms,
        "acked_by": i.acked_by, "acked_at_unix_ms": i.acked_at_unix_ms, "see": i.see,
    })
}

fn incident_state(i: &Incident) -> String {
    match (i.resolved_at_unix_ms != 0, i.acked_by.is_empty()) {
        (false, true) => "FIRING".into(),
        (false, false) => format!("FIRING, acked by {}", i.acked_by),
        (true, _) => "RESOLVED, unacknowledged".into(),
    }
}

pub fn incidents(out: &mut dyn Write, list: &[Incident], json: bool) -> io::Result<()> {
    if json {
        return print_json(out, &Value::Array(list.iter().map(incident_json).collect()));
    }
    if list.is_empty() {
        return writeln!(out, "no open incidents");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                incident_state(i),
                ago(i.opened_at_unix_ms),
                i.count.to_string(),
                i.title.clone(),
                i.see.clone(),
            ]
        })
        .collect();
    table(out, &["ID", "STATE", "OPENED", "COUNT", "INCIDENT", "SEE"], &rows)?;
    writeln!(out, "acknowledge one with: lockstep alerts ack ID")
}

pub fn incident_acked(out: &mut dyn Write, i: &Incident, json: bool) -> io::Result<()> {
    if json {
        return print_json(out, &incident_json(i));
    }
    let then = if i.resolved_at_unix_ms != 0 {
        "it is resolved, so it is closed"
    } else {
        "it stays listed until every host recovers"
    };
    writeln!(
        out,
        "incident {} acknowledged by {}: {}; {then}",
        i.id, i.acked_by, i.title
    )
}

pub fn token(out: &mut dyn Write, t: &CreateTokenReply, json: bool) -> io::Result<()> {
    if json {
        return print_json(
            out,
            &json!({"token": t.token, "host": t.host, "role": t.role, "expires_at_unix_ms": t.expires_at_unix_ms}),
        );
    }
    writeln!(out, "{}", t.token)?;
    writeln!(
        out,
        "one-time join token for {} (role {}), usable until {}; on the host run:\n  lockstep-agent enroll --token <TOKEN>",
        t.host,
        t.role,
        when(t.expires_at_unix_ms)
    )
}

pub fn scan_requested(out: &mut dyn Write, r: &RequestScanReply, json: bool) -> io::Result<()> {
    if json {
        return print_json(out, &json!({"host": r.host, "id": r.id}));
    }
    writeln!(
        out,
        "full scan {} asked of {}: every file is hashed again and its next attestation carries the result (`lockstep host {}`)",
        r.id, r.host, r.host
    )
}

pub fn revoked(out: &mut dyn Write, r: &RevokeHostReply, removed: bool, json: bool) -> io::Result<()> {
    if json {
        return print_json(
            out,
            &json!({"host": r.host, "removed": removed, "gate": r.gate.as_ref().map(gate_json)}),
        );
    }
    let verb = if removed { "removed from service" } else { "revoked" };
    writeln!(
        out,
        "{} {verb}: its calls are refused and its gate is {}; it must enroll again with a new token",
        r.host,
        r.gate.as_ref().map_or("CLOSED", |g| state_word(g.state()))
    )
}

pub fn board_link(out: &mut dyn Write, r: &lockstep_proto::pb::BoardLoginReply, json: bool) -> io::Result<()> {
    if json {
        return print_json(out, &json!({"url": r.url, "expires_at_unix_ms": r.expires_at_unix_ms}));
    }
    writeln!(out, "{}", r.url)?;
    writeln!(
        out,
        "open it in your browser before {}; it works once and logs that browser in as you",
        when(r.expires_at_unix_ms)
    )
}

pub fn board_sessions(
    out: &mut dyn Write,
    sessions: &[lockstep_proto::pb::BoardSession],
    json: bool,
) -> io::Result<()> {
    if json {
        let list: Vec<Value> = sessions
            .iter()
            .map(|s| {
                json!({"id": s.id, "operator": s.operator, "role": s.role,
                "created_at_unix_ms": s.created_at_unix_ms, "expires_at_unix_ms": s.expires_at_unix_ms})
            })
            .collect();
        return print_json(out, &Value::Array(list));
    }
    if sessions.is_empty() {
        return writeln!(out, "no board sessions");
    }
    writeln!(
        out,
        "{:<14} {:<16} {:<10} {:<22} EXPIRES",
        "SESSION", "OPERATOR", "ROLE", "OPENED"
    )?;
    for s in sessions {
        writeln!(
            out,
            "{:<14} {:<16} {:<10} {:<22} {}",
            s.id,
            s.operator,
            s.role,
            when(s.created_at_unix_ms),
            when(s.expires_at_unix_ms)
        )?;
    }
    Ok(())
}

/// `lockstep cluster status`.
pub fn cluster_status(out: &mut dyn Write, c: &lockstep_proto::pb::ClusterStatusReply, json: bool) -> io::Result<()> {
    // Not heard from for three announcements: shown as gone.
    const GONE_MS: i64 = 3_000;
    let ago = |at: i64| (c.now_unix_ms - at).max(0);
    if json {
        let controllers: Vec<Value> = c
            .controllers
            .iter()
            .map(|k| {
                json!({"name": k.name, "address": k.address, "role": k.role, "epoch": k.epoch,
                "seen_at_unix_ms": k.seen_at_unix_ms, "running": ago(k.seen_at_unix_ms) < GONE_MS,
                "ledger_lag_revisions": k.ledger_lag_revisions})
            })
            .collect();
        let members: Vec<Value> = c
            .members
            .iter()
            .map(|m| {
                json!({"name": m.name, "client_url": m.client_url, "healthy": m.healthy,
                "raft_leader": m.raft_leader, "db_size_bytes": m.db_size_bytes,
                "raft_index": m.raft_index, "error": m.error})
            })
            .collect();
        return print_json(
            out,
            &json!({"backend": c.backend, "leader": c.leader, "leader_address": c.leader_address,
            "epoch": c.epoch, "controllers": controllers, "etcd_members": members}),
        );
    }
    if c.backend == "sled" {
        return writeln!(
            out,
            "one controller on sled at {}: it is the whole control plane (docs/ha.md for several on etcd)",
            c.leader_address
        );
    }
    if c.leader.is_empty() {
        writeln!(out, "no controller leads")?;
    } else {
        writeln!(out, "leader {} at {} in epoch {}", c.leader, c.leader_address, c.epoch)?;
    }
    writeln!(
        out,
        "\n{:<16} {:<22} {:<9} {:>7} {:>9}  SEEN",
        "CONTROLLER", "ADDRESS", "ROLE", "EPOCH", "LAG(REV)"
    )?;
    for k in &c.controllers {
        let seen = ago(k.seen_at_unix_ms);
        let state = if seen < GONE_MS {
            format!("{:.1}s ago", seen as f64 / 1000.0)
        } else {
            format!("{}s ago: NOT RUNNING?", seen / 1000)
        };
        let lag = k
            .ledger_lag_revisions
            .map_or_else(|| "loading".to_string(), |n| n.to_string());
        writeln!(
            out,
            "{:<16} {:<22} {:<9} {:>7} {lag:>9}  {state}",
            k.name, k.address, k.role, k.epoch
        )?;
    }
    writeln!(
        out,
        "\n{:<12} {:<28} {:<9} {:>10} {:>12}  RAFT",
        "ETCD MEMBER", "CLIENT URL", "HEALTH", "DB", "INDEX"
    )?;
    for m in &c.members {
        let health = if m.healthy { "ok" } else { "DOWN" };
        writeln!(
            out,
            "{:<12} {:<28} {:<9} {:>7} KiB {:>12}  {}",
            m.name,
            m.client_url,
            health,
            m.db_size_bytes / 1024,
            m.raft_index,
            if m.raft_leader {
                "leader"
            } else if m.healthy {
                "follower"
            } else {
                &m.error
            }
        )?;
    }
    Ok(())
}
