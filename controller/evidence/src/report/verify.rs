//! Checking a pre-open report offline: the signature, the key an auditor
//! pinned, the page against its signed document, and with an `audit
//! export` the segment's chain and every fact (derived again and compared).

use serde_json::Value;

use crate::chain::{self, AuditRecord};
use crate::report::key::signature_holds;
use crate::report::{Asked, Body, Segment, Signed, derive, signing_input, to_value};

/// Why a report does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    #[error("the file is not a lockstep report: {0}")]
    NotAReport(String),
    #[error(
        "the signature does not match the report: the report was changed after it was signed, or signed by another key"
    )]
    BadSignature,
    #[error("signed by key {found}, not the key given ({expected}): compare with `lockstep pki report-key`")]
    OtherKey { found: String, expected: String },
    #[error(
        "the page differs from what its signed report renders, first at line {line}: {found:?} where the report gives {expected:?}"
    )]
    PageEdited {
        line: usize,
        found: String,
        expected: String,
    },
    #[error("the audit export does not hold record {seq}, which the report rests on")]
    MissingRecord { seq: u64 },
    #[error("audit record {seq} in the export is out of order: it comes after record {after}")]
    OutOfOrder { seq: u64, after: u64 },
    #[error("audit record {seq} in the export, outside the report's segment, is broken: {problem}")]
    BrokenOutside { seq: u64, problem: String },
    #[error("and {count} more findings of this kind")]
    More { count: usize },
    #[error("audit record {seq} in the export is broken: {problem}")]
    BrokenChain { seq: u64, problem: String },
    #[error("{path}: the report says {report}, the audit records say {records}")]
    Differs {
        path: String,
        report: String,
        records: String,
    },
    #[error("the audit records give no report for it: {0}")]
    NotDerivable(String),
}

/// What checking a report found: the document (when the file holds one)
/// and every way it does not hold, in the order checked.
#[derive(Debug, Default)]
pub struct Verdict {
    pub doc: Option<Signed>,
    pub findings: Vec<Finding>,
}

impl Verdict {
    pub fn holds(&self) -> bool {
        self.doc.is_some() && self.findings.is_empty()
    }
}

/// Checks a report file's text (the JSON form, or the HTML form whose page
/// must be exactly what its signed document renders to): the signature,
/// the key when `expected_key` is given, and with `records` (an audit
/// export) the segment's chain and every fact. A bad signature does not
/// stop the rest: with the records at hand, the facts that differ are named.
pub fn verify(text: &str, records: Option<&[AuditRecord]>, expected_key: Option<&str>) -> Verdict {
    let mut verdict = Verdict::default();
    let is_page = !text.trim_start().starts_with('{');
    let json = if is_page {
        match crate::report::html::embedded(text) {
            Some(j) => j,
            None => {
                verdict.findings.push(Finding::NotAReport(
                    "neither JSON nor a lockstep HTML report (no embedded report document)".into(),
                ));
                return verdict;
            }
        }
    } else {
        text.to_string()
    };
    // Read strictly: a member given twice would mean one thing to this
    // reader and another to one that keeps the first.
    let value: Value = match crate::strict_json::parse(&json) {
        Ok(v) => v,
        Err(e) => {
            verdict.findings.push(Finding::NotAReport(format!("JSON: {e}")));
            return verdict;
        }
    };
    if let Err(f) = check_signature(&value) {
        verdict.findings.push(f);
    }
    let doc: Signed = match serde_json::from_value(value) {
        Ok(d) => d,
        Err(e) => {
            verdict
                .findings
                .push(Finding::NotAReport(format!("not the report format: {e}")));
            return verdict;
        }
    };
    if let Some(e) = expected_key.filter(|e| !e.eq_ignore_ascii_case(&doc.signature.public_key)) {
        verdict.findings.push(Finding::OtherKey {
            found: doc.signature.public_key.clone(),
            expected: e.into(),
        });
    }
    if is_page {
        let rendered = crate::report::html::render(&doc);
        if let Some((line, found, expected)) = first_different_line(text, &rendered) {
            verdict.findings.push(Finding::PageEdited { line, found, expected });
        }
    }
    if let Some(records) = records {
        verdict
            .findings
            .extend(bounded(check_export(&doc.report.segment, records)));
        verdict.findings.extend(bounded(check_facts(&doc.report, records)));
    }
    verdict.doc = Some(doc);
    verdict
}

/// The signature over the document's `report`, checked on the JSON as read
/// (a member added or changed anywhere in it breaks it).
fn check_signature(doc: &Value) -> Result<(), Finding> {
    let field = |name: &str| {
        doc.pointer(&format!("/signature/{name}"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Finding::NotAReport(format!("no signature.{name}")))
    };
    let body = doc
        .get("report")
        .ok_or_else(|| Finding::NotAReport("no report member".into()))?;
    if field("algorithm")? != "Ed25519" {
        return Err(Finding::NotAReport("signature.algorithm is not Ed25519".into()));
    }
    if signature_holds(&field("public_key")?, &signing_input(body), &field("value")?) {
        Ok(())
    } else {
        Err(Finding::BadSignature)
    }
}

/// At most this many findings of one kind are listed; the rest are counted.
pub const MAX_FINDINGS: usize = 20;

fn bounded(mut findings: Vec<Finding>) -> Vec<Finding> {
    if findings.len() > MAX_FINDINGS {
        let count = findings.len() - MAX_FINDINGS;
        findings.truncate(MAX_FINDINGS);
        findings.push(Finding::More { count });
    }
    findings
}

/// The whole export, in the order given: each record's hash is its
/// content's and it follows the record before it; records out of order
/// are named as such, not as missing. Then the segment: every record of it
/// present. A broken record outside the segment is named too (the report
/// may still hold; the export does not).
fn check_export(seg: &Segment, records: &[AuditRecord]) -> Vec<Finding> {
    let in_segment = |seq: u64| seq >= seg.first_seq && seq <= seg.last_seq;
    let broken = |seq: u64, problem: &str| {
        if in_segment(seq) {
            Finding::BrokenChain {
                seq,
                problem: problem.into(),
            }
        } else {
            Finding::BrokenOutside {
                seq,
                problem: problem.into(),
            }
        }
    };
    let mut findings = Vec::new();
    let mut highest: Option<&AuditRecord> = None;
    let mut present = std::collections::BTreeSet::new();
    for r in records {
        if chain::hash_of(r) != r.hash {
            findings.push(broken(r.seq, "its content does not match its hash: it was edited"));
        }
        match highest {
            Some(h) if r.seq <= h.seq => findings.push(Finding::OutOfOrder {
                seq: r.seq,
                after: h.seq,
            }),
            Some(h) if r.seq == h.seq + 1 && r.prev_hash != h.hash => findings.push(broken(
                r.seq,
                "it does not follow the record before it (prev_hash differs)",
            )),
            _ => {}
        }
        if r.seq == seg.first_seq && r.prev_hash != seg.first_prev_hash {
            findings.push(broken(
                r.seq,
                "it does not follow the hash the report names before it (prev_hash differs)",
            ));
        }
        if highest.is_none_or(|h| r.seq > h.seq) {
            highest = Some(r);
        }
        present.insert(r.seq);
    }
    findings.extend(
        (seg.first_seq..=seg.last_seq)
            .filter(|seq| !present.contains(seq))
            .map(|seq| Finding::MissingRecord { seq }),
    );
    findings
}

/// The records derive exactly the report's facts: every fact that differs, each once.
fn check_facts(body: &Body, records: &[AuditRecord]) -> Vec<Finding> {
    let asked = Asked {
        role: body.role.clone(),
        date: body.date.clone(),
        time_zone: body.time_zone.clone(),
        at: body.at.clone(),
    };
    let derived = match derive(records, &asked) {
        Ok(d) => d,
        Err(e) => return vec![Finding::NotDerivable(e.to_string())],
    };
    let mut out = Vec::new();
    differences("report", &to_value(body), &to_value(&derived), &mut out);
    out.into_iter()
        .map(|(path, report, records)| Finding::Differs { path, report, records })
        .collect()
}

/// Every place two JSON values differ, as a path and both sides, in
/// document order; a list of another length is one difference (its
/// length) beside those of the items both have.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<(String, String, String)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (l, r) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                differences(&format!("{path}.{k}"), l, r, out);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), l, r, out);
            }
            if x.len() != y.len() {
                out.push((format!("{path} (its length)"), x.len().to_string(), y.len().to_string()));
            }
        }
        _ if a == b => {}
        _ => out.push((path.into(), a.to_string(), b.to_string())),
    }
}

fn first_different_line(found: &str, expected: &str) -> Option<(usize, String, String)> {
    let mut f = found.lines();
    let mut e = expected.lines();
    for n in 1.. {
        match (f.next(), e.next()) {
            (None, None) => return None,
            (a, b) if a == b => continue,
            (a, b) => return Some((n, a.unwrap_or("").into(), b.unwrap_or("").into())),
        }
    }
    None
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
