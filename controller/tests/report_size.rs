//! A pre-open report never makes a console answer larger than the message
//! limit: when the page does not fit beside the signed document, the answer
//! carries the document alone (the console renders the page from it); when
//! the document alone does not fit, the report is refused naming the
//! setting. Real sled, the controller library.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::sync::Arc;

use lockstep_controller::controller::Controller;
use lockstep_proto::pb;

#[path = "fixtures/one_role.rs"]
mod one_role;
use one_role::carol;

fn open(dir: &Path, max_message_bytes: Option<usize>) -> Arc<Controller> {
    let limits = max_message_bytes.map_or(String::new(), |n| format!("[limits]\nmax_message_bytes = {n}\n"));
    one_role::controller(dir, 300, &limits)
}

async fn report(c: &Controller) -> Result<pb::PreOpenReportReply, lockstep_controller::error::ApiError> {
    c.reports
        .pre_open(
            &carol(),
            pb::PreOpenReportRequest {
                role: "smars".into(),
                ..Default::default()
            },
        )
        .await
}

#[tokio::test]
async fn a_report_too_large_for_one_answer_sends_the_document_alone_or_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), None);
    c.queries.gate_check_recorded(&carol(), "smars", &[]).await.unwrap();
    let whole = report(&c).await.unwrap();
    let (json, html) = (whole.json.len(), whole.html.len());
    assert!(json > 20_000 && html > 0, "a 300-host report: {json} + {html} bytes");
    drop(c);

    // Room for the document, not for the page beside it.
    let c = open(dir.path(), Some(json + html / 2));
    let alone = report(&c).await.unwrap();
    assert!(alone.html.is_empty(), "the page left out");
    assert_eq!(alone.json.len(), json);
    let doc: lockstep_evidence::report::Signed = serde_json::from_str(&alone.json).unwrap();
    assert_eq!(
        lockstep_evidence::report::html::render(&doc),
        whole.html,
        "the console renders the same page"
    );
    drop(c);

    // Not even room for the document.
    let c = open(dir.path(), Some(json / 2));
    let err = report(&c).await.unwrap_err().to_string();
    assert!(err.contains("raise [limits] max_message_bytes"), "{err}");
    assert!(err.contains(&format!("{json} bytes of JSON")), "{err}");
}
