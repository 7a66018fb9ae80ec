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
    let value: Value = match serde_json::from_str(&json) {
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
        if let Err(f) = check_chain(&doc.report.segment, records) {
            verdict.findings.push(f);
        }
        if let Err(f) = check_facts(&doc.report, records) {
            verdict.findings.push(f);
        }
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

/// The export holds the segment, every record of it in order, each one's
/// hash its content's and each following the one before.
fn check_chain(seg: &Segment, records: &[AuditRecord]) -> Result<(), Finding> {
    let mut want = seg.first_seq;
    let mut prev = seg.first_prev_hash.clone();
    for r in records
        .iter()
        .filter(|r| r.seq >= seg.first_seq && r.seq <= seg.last_seq)
    {
        if r.seq != want {
            return Err(Finding::MissingRecord { seq: want });
        }
        if r.prev_hash != prev {
            return Err(Finding::BrokenChain {
                seq: r.seq,
                problem: "it does not follow the record before it (prev_hash differs)".into(),
            });
        }
        if chain::hash_of(r) != r.hash {
            return Err(Finding::BrokenChain {
                seq: r.seq,
                problem: "its content does not match its hash: it was edited".into(),
            });
        }
        prev = r.hash.clone();
        want += 1;
    }
    if want <= seg.last_seq {
        return Err(Finding::MissingRecord { seq: want });
    }
    Ok(())
}

/// The records derive exactly the report's facts.
fn check_facts(body: &Body, records: &[AuditRecord]) -> Result<(), Finding> {
    let asked = Asked {
        role: body.role.clone(),
        date: body.date.clone(),
        time_zone: body.time_zone.clone(),
        at: body.at.clone(),
    };
    let derived = derive(records, &asked).map_err(|e| Finding::NotDerivable(e.to_string()))?;
    match first_difference("report", &to_value(body), &to_value(&derived)) {
        Some((path, report, records)) => Err(Finding::Differs { path, report, records }),
        None => Ok(()),
    }
}

/// The first place two JSON values differ, as a path and both sides.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<(String, String, String)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let (l, r) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                first_difference(&format!("{path}.{k}"), l, r)
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            let at = x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (l, r))| first_difference(&format!("{path}[{i}]"), l, r));
            at.or_else(|| {
                (x.len() != y.len()).then(|| (format!("{path} (its length)"), x.len().to_string(), y.len().to_string()))
            })
        }
        _ if a == b => None,
        _ => Some((path.into(), a.to_string(), b.to_string())),
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
