//! `lockstep report`: fetch a signed pre-open report, and check one
//! offline (no controller: an auditor runs it with the report, an audit
//! export and the controller's public report key).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use lockstep_link::failover::FailoverChannel;
use lockstep_proto::pb::{self, console_service_client::ConsoleServiceClient};
use serde_json::json;

use lockstep_evidence::report::verify::{self as report_verify, Finding};
use lockstep_evidence::report::{self, Signed};

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// The signed report of a role at the day's pre-open check: a JSON document and a printable page.
    PreOpen {
        #[arg(long)]
        role: String,
        /// The day, YYYY-MM-DD (default: today in --time-zone).
        #[arg(long)]
        date: Option<String>,
        /// HH:MM, HH:MM:SS or HH:MM:SS.mmm (inclusive): rest on the last gate check at or before it (default: the day's last).
        #[arg(long)]
        at: Option<String>,
        /// The zone --date and --at are in, and the page's times (IANA name).
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// Where to write pre-open-ROLE-DATE.json and .html.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Check a report (JSON or HTML): its signature and, with --audit, that every fact follows from the records.
    Verify {
        file: PathBuf,
        /// An `lockstep audit export` holding the day the report describes.
        #[arg(long)]
        audit: Option<PathBuf>,
        /// The controller's report key (hex, from `lockstep pki report-key`): refuse any other.
        #[arg(long)]
        public_key: Option<String>,
    },
}

/// `report pre-open`: asks the controller, writes both files.
pub async fn pre_open(
    client: &mut ConsoleServiceClient<FailoverChannel>,
    cmd: ReportCommand,
    out: &mut (dyn Write + Send),
    json: bool,
) -> anyhow::Result<()> {
    let ReportCommand::PreOpen {
        role,
        date,
        at,
        time_zone,
        out_dir,
    } = cmd
    else {
        anyhow::bail!("report verify runs without a controller");
    };
    let reply = client
        .pre_open_report(pb::PreOpenReportRequest {
            role: role.clone(),
            date: date.unwrap_or_default(),
            at: at.unwrap_or_default(),
            time_zone,
        })
        .await?
        .into_inner();
    let doc: Signed = serde_json::from_str(&reply.json).context("the controller's report is not a report document")?;
    let stem = format!("pre-open-{role}-{}", doc.report.date);
    let (json_path, html_path) = (
        out_dir.join(format!("{stem}.json")),
        out_dir.join(format!("{stem}.html")),
    );
    write(&json_path, &reply.json)?;
    if reply.html.is_empty() {
        // A role whose page did not fit in the answer beside the document:
        // the same page, rendered here from the signed document.
        write(&html_path, &lockstep_evidence::report::html::render(&doc))?;
    } else {
        write(&html_path, &reply.html)?;
    }
    if json {
        let v = json!({"summary": reply.summary, "json": json_path, "html": html_path, "key_id": doc.signature.key_id});
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(out, "{}", reply.summary)?;
        writeln!(
            out,
            "wrote {} and {} (signed by report key {})",
            json_path.display(),
            html_path.display(),
            doc.signature.key_id
        )?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {} (--out-dir)", path.display()))
}

/// `report verify`: 0 when the report holds, 1 naming what does not.
pub fn verify(
    file: &Path,
    audit: Option<&Path>,
    public_key: Option<&str>,
    out: &mut (dyn Write + Send),
    json: bool,
) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let records = match audit {
        Some(p) => {
            let export = std::fs::read_to_string(p).with_context(|| format!("reading --audit {}", p.display()))?;
            Some(report::parse_export(&export).map_err(|e| anyhow::anyhow!("--audit {}: {e}", p.display()))?)
        }
        None => None,
    };
    let verdict = report_verify::verify(&text, records.as_deref(), public_key);
    if json {
        let v = json!({
            "ok": verdict.holds(),
            "key_id": verdict.doc.as_ref().map(|d| d.signature.key_id.clone()),
            "public_key": verdict.doc.as_ref().map(|d| d.signature.public_key.clone()),
            "facts_checked": records.is_some(),
            "segment": verdict.doc.as_ref().map(|d| d.report.segment.clone()),
            "findings": verdict.findings.iter().map(describe).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(u8::from(!verdict.holds()));
    }
    if !verdict.holds() {
        writeln!(out, "REPORT DOES NOT HOLD")?;
        for f in &verdict.findings {
            writeln!(out, "- {}", describe(f))?;
        }
        return Ok(1);
    }
    let Some(doc) = verdict.doc else { return Ok(1) };
    let s = &doc.report.segment;
    writeln!(
        out,
        "signature: valid, Ed25519 key {} ({})",
        doc.signature.key_id, doc.signature.public_key
    )?;
    if public_key.is_none() {
        writeln!(
            out,
            "  that is the key the report names: compare it with `lockstep pki report-key` on the controller, or pass --public-key"
        )?;
    }
    if let Some(records) = &records {
        writeln!(
            out,
            "audit records: the export's {} records each match their hash and follow the one before; the report's {} to {} are all there, ending in {}",
            records.len(),
            s.first_seq,
            s.last_seq,
            s.last_hash
        )?;
        writeln!(out, "facts: every fact follows from the audit records")?;
    } else {
        writeln!(
            out,
            "facts: not checked (give --audit EXPORT to check them against the audit log)"
        )?;
    }
    writeln!(
        out,
        "REPORT HOLDS: {} on {}, {}",
        doc.report.role, doc.report.date, doc.report.check.summary
    )?;
    Ok(0)
}

fn describe(f: &Finding) -> String {
    let text = f.to_string();
    // A page line can be long: name where it differs, not all of it.
    if text.chars().count() > 600 {
        let cut: String = text.chars().take(600).collect();
        format!("{cut}…")
    } else {
        text
    }
}
