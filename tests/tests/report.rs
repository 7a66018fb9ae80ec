//! The pre-open report of a Knight morning: every host, its release and its
//! gate at the check chosen; it holds offline against an audit export and
//! the controller's public key, and one byte changed in the report or in
//! the export is named; the page renders in a real Chromium.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use lockstep_evidence::report::Signed;
use lockstep_proto::identity::OperatorRole;
use lockstep_tests::browser;
use lockstep_tests::knight::{BIN, Morning};

/// HH:MM:SS.mmm (UTC) and the date of a unix-ms instant.
fn utc(unix_ms: i64) -> (String, String) {
    let t = jiff::Timestamp::from_millisecond(unix_ms).unwrap();
    let z = t.to_zoned(jiff::tz::TimeZone::UTC);
    (z.date().to_string(), z.strftime("%H:%M:%S%.3f").to_string())
}

#[path = "support/report_schema.rs"]
mod report_schema;

/// A report file as the console wrote it, read strictly and checked
/// against the published schema.
fn schema_checked(path: &std::path::Path) -> Signed {
    serde_json::from_value(report_schema::checked(path)).unwrap()
}

fn json_of(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knight_morning_report_names_every_host_and_holds_offline() {
    let m = Morning::start(8).await.unwrap();
    let compliance = m.fleet.operator("carol", OperatorRole::Viewer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();

    // A report needs a check to rest on.
    let err = m
        .fleet
        .console(
            &compliance,
            &["report", "pre-open", "--role", "smars", "--out-dir", out_dir],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no `lockstep gate check --role smars` was recorded"),
        "{err}"
    );

    m.step1_release_everywhere().await.unwrap(); // bob's check: 8/8 OPEN on release 1
    let first_check = m
        .fleet
        .wait_audit("gate.checked", "8/8 OPEN on release 1")
        .await
        .unwrap();
    m.step2_new_code_on_all_but_one().await.unwrap(); // bob's check: 7/8, exit 3
    // A drill of the kill switch on the odd host, lifted, then the pre-open check.
    for args in [
        &[
            "halt",
            "--host",
            "smars-08",
            "--drill",
            "--reason",
            "RTS 6 kill-switch test",
        ][..],
        &["resume", "--host", "smars-08", "--reason", "drill over"][..],
    ] {
        let (code, out) = m.fleet.console(&m.alice, args).await.unwrap();
        assert_eq!(code, 0, "{args:?}: {out}");
    }
    m.fleet
        .wait_for("smars-08 closed by drift alone", |g| {
            g.gates
                .iter()
                .find(|x| x.host == "smars-08")
                .is_some_and(|x| x.reasons.iter().all(|r| r.text.starts_with("drift")))
        })
        .await
        .unwrap();
    let (code, _) = m
        .fleet
        .console(&m.bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 3);

    let (code, out) = m
        .fleet
        .console(
            &compliance,
            &["report", "pre-open", "--role", "smars", "--out-dir", out_dir],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let (date, _) = utc(lockstep_proto::now_unix_ms());
    let json_path = dir.path().join(format!("pre-open-smars-{date}.json"));
    let html_path = dir.path().join(format!("pre-open-smars-{date}.html"));
    let doc: Signed = schema_checked(&json_path);
    let r = &doc.report;

    // Every host, its gate and reasons, at the last check.
    let names: Vec<&str> = r.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(names, (1..=8).map(|i| format!("smars-0{i}")).collect::<Vec<_>>());
    // The check rests on a gate state: an OPEN gate is the proof of a
    // fresh attestation, and no heartbeat's seq is kept per host.
    assert_eq!(r.format, lockstep_evidence::report::FORMAT);
    for h in &r.hosts[..7] {
        assert_eq!(h.gate, "OPEN", "{h:?}");
        assert!(h.digest.len() == 64, "{h:?}");
    }
    let odd = &r.hosts[7];
    assert_eq!(odd.gate, "CLOSED");
    assert!(
        odd.reasons.iter().any(|x| x.starts_with(&format!("drift: {BIN} "))),
        "{odd:?}"
    );
    assert_eq!((r.open_hosts, r.total_hosts, r.check.exit), (7, 8, 3));
    assert_eq!(r.check.by, "bob (approver)");
    // The release they were held to, and who proposed and approved it.
    let release = r.release.as_ref().unwrap();
    assert_eq!(release.number, 2);
    assert_eq!(
        (release.proposed_by.as_str(), release.approved_by.as_str()),
        ("alice", "bob")
    );
    assert_eq!(r.hosts[0].digest, release.digest);
    // The morning's checks, the drill, the releases.
    assert_eq!(r.gate_checks.iter().map(|c| c.exit).collect::<Vec<_>>(), vec![0, 3, 3]);
    assert_eq!(r.halts_today.len(), 2, "{:?}", r.halts_today);
    assert!(r.halts_today[0].drill && r.halts_today[0].scope == "host smars-08");
    assert_eq!(r.halts_today[1].action, "resume");
    assert!(r.halts_in_force.is_empty());
    let approved: Vec<u64> = r
        .releases_today
        .iter()
        .filter(|e| e.action == "approved")
        .map(|e| e.number)
        .collect();
    assert_eq!(approved, vec![1, 2]);
    assert_eq!(r.segment.last_seq, r.check.seq);

    // At the time of the first check, the report rests on it.
    let first = json_of(&first_check);
    let (first_date, first_at) = utc(first["at_unix_ms"].as_i64().unwrap());
    let earlier = dir.path().join("earlier");
    std::fs::create_dir(&earlier).unwrap();
    let (code, out) = m
        .fleet
        .console(
            &compliance,
            &[
                "report",
                "pre-open",
                "--role",
                "smars",
                "--date",
                &first_date,
                "--at",
                &first_at,
                "--out-dir",
                earlier.to_str().unwrap(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let then: Signed = schema_checked(&earlier.join(format!("pre-open-smars-{first_date}.json")));
    assert_eq!(then.report.check.seq, first["seq"].as_u64().unwrap());
    assert_eq!((then.report.open_hosts, then.report.check.exit), (8, 0));
    assert_eq!(then.report.release.as_ref().unwrap().number, 1);
    assert!(then.report.hosts.iter().all(|h| h.gate == "OPEN"));

    // Offline: the export, the key printed on the controller, the report.
    let export = dir.path().join("audit.jsonl");
    let lines = m.fleet.audit_records().await.unwrap();
    std::fs::write(&export, lines.join("\n")).unwrap();
    let data_dir = m.fleet.controller.config.data_dir.display().to_string();
    let (code, key_line) = m
        .fleet
        .console(&compliance, &["pki", "report-key", "--data-dir", &data_dir])
        .await
        .unwrap();
    assert_eq!(code, 0, "{key_line}");
    let key = key_line.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(key, doc.signature.public_key);
    let verify = |file: &std::path::Path, audit: &std::path::Path| {
        let (file, audit, key) = (file.display().to_string(), audit.display().to_string(), key.clone());
        let fleet = &m.fleet;
        let who = &compliance;
        async move {
            fleet
                .console(
                    who,
                    &["report", "verify", &file, "--audit", &audit, "--public-key", &key],
                )
                .await
                .unwrap()
        }
    };
    for file in [&json_path, &html_path] {
        let (code, out) = verify(file, &export).await;
        assert_eq!(code, 0, "{}: {out}", file.display());
        assert!(
            out.contains("REPORT HOLDS") && out.contains("every fact follows"),
            "{out}"
        );
    }

    // An auditor's own tool, written from docs/protocol.md alone: Python
    // for the chain and the signed bytes, OpenSSL for the signature.
    let own = dir.path().join("own-tool");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/verify_report.py");
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = run(std::process::Command::new("python3")
        .arg(script)
        .arg(&json_path)
        .arg(&export)
        .arg(&own));
    assert!(ok, "{text}");
    let (ok, text) = run(std::process::Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(own.join("public.pem"))
        .arg("-in")
        .arg(own.join("signed.bin"))
        .arg("-sigfile")
        .arg(own.join("signature.bin")));
    assert!(ok && text.contains("Signature Verified Successfully"), "{text}");

    // One byte of the report: the check's exit code.
    let text = std::fs::read_to_string(&json_path).unwrap();
    let edited = dir.path().join("edited.json");
    std::fs::write(&edited, text.replacen("\"exit\": 3", "\"exit\": 0", 1)).unwrap();
    let (code, out) = verify(&edited, &export).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature does not match"), "{out}");
    assert!(
        out.contains("report.check.exit: the report says 0, the audit records say 3"),
        "{out}"
    );
    let (ok, text) = run(std::process::Command::new("python3")
        .arg(script)
        .arg(&edited)
        .arg(&export)
        .arg(dir.path().join("own-tool-edited")));
    assert!(
        !ok && text.contains("DOES NOT HOLD"),
        "the auditor's tool took an edited report: {text}"
    );

    // One byte of the export: the check record's facts name smars-09 for smars-08.
    let anchor = format!("\"seq\":{}", r.check.seq);
    let forge = |l: &String| {
        let at = l.find("\"facts\":").unwrap();
        format!("{}{}", &l[..at], l[at..].replacen("smars-08", "smars-09", 1))
    };
    let forged: Vec<String> = lines
        .iter()
        .map(|l| if l.contains(&anchor) { forge(l) } else { l.clone() })
        .collect();
    assert_ne!(forged, lines);
    let forged_export = dir.path().join("forged.jsonl");
    std::fs::write(&forged_export, forged.join("\n")).unwrap();
    let (code, out) = verify(&json_path, &forged_export).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("audit record {} in the export is broken", r.check.seq)),
        "{out}"
    );
    // ...and the fact that no longer follows is named (the check's answer names the host first).
    assert!(
        out.contains("report.check.summary: the report says")
            && out.contains("the audit records say \"smars: 7/8 OPEN on release 2; smars-09 CLOSED"),
        "{out}"
    );

    // Issuing a report is itself recorded.
    m.fleet.wait_audit("report.issued", "carol (viewer)").await.unwrap();

    // The page in a real browser, with a screenshot for docs/.
    if let Some(chromium) = browser::chromium().unwrap() {
        let dom = browser::dump_dom(&chromium, &html_path).unwrap();
        for needle in [
            "Pre-open report: role smars",
            "smars-08",
            "CLOSED",
            "drill halt",
            "<svg",
        ] {
            assert!(dom.contains(needle), "the rendered page lacks {needle:?}");
        }
        let png = browser::screenshot_path("pre-open-report.png").unwrap();
        browser::screenshot(&chromium, &html_path, &png, 1200, 2300).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
            "{} bytes",
            bytes.len()
        );
    }
    m.fleet.shutdown().await.unwrap();
}
