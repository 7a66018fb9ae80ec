use lockstep_proto::envelope::Signer;
use lockstep_proto::pb::EntryKind;

use super::*;

const NOW: i64 = 5_000_000;

fn signer() -> Signer {
    Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap()
}

fn entries() -> Vec<Entry> {
    vec![Entry {
        path: b"/opt/smars/bin/smars".to_vec(),
        kind: EntryKind::File as i32,
        sha256: vec![1; 32],
        ..Default::default()
    }]
}

fn attestation() -> Attestation {
    Attestation {
        host: "smars-01".into(),
        role: "smars".into(),
        seq: 10,
        measured_at_unix_ms: NOW,
        digest: digest::digest(&entries()).to_vec(),
        full: true,
        entries: entries(),
        ..Default::default()
    }
}

fn check(s: &Signer, a: &Attestation) -> Result<Verified, Rejection> {
    let record = HostRecord {
        last_seq: 9,
        ..Default::default()
    };
    verify(
        &s.seal_attestation(a),
        &Checks {
            peer_host: "smars-01",
            inventory_role: "smars",
            record: &record,
            pinned_key: s.public_key(),
            limits: Limits::default(),
            max_skew_ms: 30_000,
            now_unix_ms: NOW,
        },
    )
}

#[test]
fn good_attestation_verifies() {
    let s = signer();
    let v = check(&s, &attestation()).unwrap();
    assert_eq!(v.entries.unwrap(), entries());
}

#[test]
fn each_violation_is_named() {
    let s = signer();
    type Mutation = Box<dyn Fn(&mut Attestation)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "other host",
            Box::new(|a| a.host = "smars-02".into()),
            "certificate names host smars-01 but the attestation names smars-02",
        ),
        (
            "other role",
            Box::new(|a| a.role = "risk".into()),
            "puts smars-01 in role smars",
        ),
        (
            "replayed seq",
            Box::new(|a| a.seq = 9),
            "replay: seq 9 is not greater than the last accepted seq 9",
        ),
        (
            "future",
            Box::new(|a| a.measured_at_unix_ms = NOW + 120_000),
            "120s ahead of",
        ),
        ("past", Box::new(|a| a.measured_at_unix_ms = NOW - 31_000), "31s behind"),
        (
            "lying digest",
            Box::new(|a| a.digest = vec![0; 32]),
            "does not match the entries",
        ),
        ("short digest", Box::new(|a| a.digest = vec![0; 3]), "digest is 3 bytes"),
        (
            "heartbeat with entries",
            Box::new(|a| a.full = false),
            "must carry no entries",
        ),
        (
            "duplicate paths",
            Box::new(|a| a.entries.push(a.entries[0].clone())),
            "appears more than once",
        ),
    ];
    for (name, mutate, needle) in cases {
        let mut a = attestation();
        mutate(&mut a);
        let err = check(&s, &a).unwrap_err().to_string();
        assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
    }
}

#[test]
fn signature_by_another_key_is_refused() {
    let (s, other) = (signer(), signer());
    let record = HostRecord::default();
    let err = verify(
        &other.seal_attestation(&attestation()),
        &Checks {
            peer_host: "smars-01",
            inventory_role: "smars",
            record: &record,
            pinned_key: s.public_key(),
            limits: Limits::default(),
            max_skew_ms: 30_000,
            now_unix_ms: NOW,
        },
    )
    .unwrap_err();
    assert!(matches!(err, Rejection::Signature(_)), "{err}");
}
