use globset::{GlobBuilder, GlobSetBuilder};
use lockstep_proto::digest::{canonicalize, digest_where};
use lockstep_proto::pb::EntryKind;

use super::*;
use crate::config::RoleMode;
use crate::store::Rejection;

const NOW: i64 = 1_000_000;
const TTL: i64 = 30_000;

fn clock() -> Clock {
    Clock {
        now_unix_ms: NOW,
        freshness_ttl_ms: TTL,
        quote_max_age_ms: 180_000,
    }
}

fn role(n: usize) -> RoleConfig {
    let mut set = GlobSetBuilder::new();
    set.add(GlobBuilder::new("/etc/hostname").build().unwrap());
    RoleConfig {
        name: "smars".into(),
        mode: RoleMode::Release,
        hosts: (1..=n).map(|i| format!("smars-{i:02}")).collect(),
        per_host_patterns: vec!["/etc/hostname".into()],
        per_host: set.build().unwrap(),
        retired_flags: vec!["power_peg".into(), "--power-peg".into()],
        require_tpm: false,
    }
}

fn set(version: u8, hostname: &str) -> Vec<Entry> {
    canonicalize(vec![
        Entry {
            path: b"/opt/smars/bin/smars".to_vec(),
            kind: EntryKind::File as i32,
            sha256: vec![version; 32],
            size: 100,
            mode: 0o755,
            ..Default::default()
        },
        Entry {
            path: b"/etc/hostname".to_vec(),
            kind: EntryKind::File as i32,
            sha256: hostname.as_bytes().iter().cycle().take(32).copied().collect(),
            ..Default::default()
        },
    ])
    .unwrap()
}

fn comparable(entries: &[Entry], r: &RoleConfig) -> Digest {
    digest_where(entries, |e| !r.is_excluded_from_comparison(&e.path))
}

fn record(accepted_ago_ms: i64) -> HostRecord {
    HostRecord {
        host: "smars-01".into(),
        role: "smars".into(),
        accepted_at_unix_ms: NOW - accepted_ago_ms,
        ..Default::default()
    }
}

struct Case {
    name: &'static str,
    record: Option<HostRecord>,
    version: u8,
    expected: fn(&RoleConfig, &[Entry]) -> Expected<'static>,
    state: GateState,
    reasons: &'static [(ReasonKind, &'static str)],
}

static RELEASE_V1: std::sync::LazyLock<Vec<Entry>> = std::sync::LazyLock::new(|| set(1, "release-build"));

fn release_v1(r: &RoleConfig, _: &[Entry]) -> Expected<'static> {
    Expected::Release {
        number: 7,
        comparable: comparable(&RELEASE_V1, r),
        entries: &RELEASE_V1,
        boot: &NO_BOOT,
    }
}

static NO_BOOT: std::collections::BTreeMap<u32, String> = std::collections::BTreeMap::new();

fn no_release(_: &RoleConfig, _: &[Entry]) -> Expected<'static> {
    Expected::NoRelease
}

fn no_majority(_: &RoleConfig, _: &[Entry]) -> Expected<'static> {
    Expected::NoMajority { largest: 4, of: 8 }
}

#[test]
fn gate_rule_table() {
    let rejected = HostRecord {
        last_rejection: Some(Rejection {
            at_unix_ms: NOW - 10,
            reason: "signature does not verify".into(),
        }),
        ..record(1_000)
    };
    let rejected_then_accepted = HostRecord {
        last_rejection: Some(Rejection {
            at_unix_ms: NOW - 5_000,
            reason: "old".into(),
        }),
        ..record(1_000)
    };
    let cases = [
        Case {
            name: "matching fresh host is open",
            record: Some(record(1_000)),
            version: 1,
            expected: release_v1,
            state: GateState::Open,
            reasons: &[],
        },
        Case {
            name: "never heard is missing",
            record: None,
            version: 1,
            expected: release_v1,
            state: GateState::Missing,
            reasons: &[(ReasonKind::Missing, "smars-01 has never reported")],
        },
        Case {
            name: "silent past TTL is closed",
            record: Some(record(TTL + 15_000)),
            version: 1,
            expected: release_v1,
            state: GateState::Closed,
            reasons: &[(
                ReasonKind::Stale,
                "stale: last attestation accepted 45s ago, freshness TTL is 30s",
            )],
        },
        Case {
            name: "exactly at TTL is still fresh",
            record: Some(record(TTL)),
            version: 1,
            expected: release_v1,
            state: GateState::Open,
            reasons: &[],
        },
        Case {
            name: "drift names file and release",
            record: Some(record(1_000)),
            version: 2,
            expected: release_v1,
            state: GateState::Closed,
            reasons: &[(
                ReasonKind::Drift,
                "drift: /opt/smars/bin/smars sha256 02020202.. != release 7 (01010101..)",
            )],
        },
        Case {
            name: "stale and drifting lists both",
            record: Some(record(TTL + 1_000)),
            version: 2,
            expected: release_v1,
            state: GateState::Closed,
            reasons: &[(ReasonKind::Stale, "stale:"), (ReasonKind::Drift, "drift:")],
        },
        Case {
            name: "last rejection closes",
            record: Some(rejected),
            version: 1,
            expected: release_v1,
            state: GateState::Closed,
            reasons: &[(
                ReasonKind::Rejected,
                "last attestation rejected: signature does not verify",
            )],
        },
        Case {
            name: "rejection followed by acceptance is forgotten",
            record: Some(rejected_then_accepted),
            version: 1,
            expected: release_v1,
            state: GateState::Open,
            reasons: &[],
        },
        Case {
            name: "no release closes",
            record: Some(record(1_000)),
            version: 1,
            expected: no_release,
            state: GateState::Closed,
            reasons: &[(ReasonKind::NoRelease, "role smars has no approved release")],
        },
        Case {
            name: "no majority closes",
            record: Some(record(1_000)),
            version: 1,
            expected: no_majority,
            state: GateState::Closed,
            reasons: &[(ReasonKind::NoMajority, "largest agreeing group is 4 of 8")],
        },
    ];
    let r = role(8);
    for case in cases {
        let entries = set(case.version, "this-host");
        let facts = HostFacts {
            host: "smars-01",
            record: case.record.as_ref(),
            entries: Some(&entries),
            comparable: Some(comparable(&entries, &r)),
        };
        let expected = (case.expected)(&r, &entries);
        let gate = decide(&r, &facts, &expected, &[], clock());
        assert_eq!(gate.state(), case.state, "{}: {:?}", case.name, gate.reasons);
        assert_eq!(
            gate.reasons.len(),
            case.reasons.len(),
            "{}: {:?}",
            case.name,
            gate.reasons
        );
        for (got, (kind, text)) in gate.reasons.iter().zip(case.reasons) {
            assert_eq!(got.kind(), *kind, "{}", case.name);
            assert!(
                got.text.contains(text),
                "{}: {:?} lacks {:?}",
                case.name,
                got.text,
                text
            );
        }
        if case.state == GateState::Open {
            let rec = case.record.as_ref().unwrap();
            assert_eq!(
                gate.lease_expires_unix_ms,
                rec.accepted_at_unix_ms + TTL,
                "{}",
                case.name
            );
        } else {
            assert_eq!(gate.lease_expires_unix_ms, 0, "{}", case.name);
        }
    }
}

#[test]
fn per_host_paths_are_left_out_of_comparison() {
    let r = role(1);
    // Same binary, different hostname file: still equal to the release.
    let entries = set(1, "smars-01");
    let facts = HostFacts {
        host: "smars-01",
        record: Some(&record(0)),
        entries: Some(&entries),
        comparable: Some(comparable(&entries, &r)),
    };
    let gate = decide(&r, &facts, &release_v1(&r, &entries), &[], clock());
    assert_eq!(gate.state(), GateState::Open, "{:?}", gate.reasons);
}

#[test]
fn drift_reasons_are_capped_with_a_pointer_to_the_full_diff() {
    let r = role(1);
    let many: Vec<Entry> = (0..MAX_DRIFT_REASONS + 5)
        .map(|i| Entry {
            path: format!("/opt/smars/lib/{i:03}.so").into_bytes(),
            kind: EntryKind::File as i32,
            sha256: vec![9; 32],
            ..Default::default()
        })
        .collect();
    let many = canonicalize(many).unwrap();
    let facts = HostFacts {
        host: "smars-01",
        record: Some(&record(0)),
        entries: Some(&many),
        comparable: Some(comparable(&many, &r)),
    };
    let gate = decide(&r, &facts, &release_v1(&r, &many), &[], clock());
    assert_eq!(gate.reasons.len(), MAX_DRIFT_REASONS + 1);
    let last = &gate.reasons.last().unwrap().text;
    assert!(
        last.contains("more differences (lockstep diff smars-01 --release)"),
        "{last}"
    );
}

fn facts_for<'a>(hosts: &'a [(String, HostRecord, Vec<Entry>)], r: &RoleConfig) -> Vec<HostFacts<'a>> {
    hosts
        .iter()
        .map(|(h, rec, e)| HostFacts {
            host: h,
            record: Some(rec),
            entries: Some(e),
            comparable: Some(comparable(e, r)),
        })
        .collect()
}

#[test]
fn consensus_needs_a_strict_majority_of_the_inventory() {
    let r = role(4);
    let host = |i: usize, v: u8, ago: i64| (format!("smars-{i:02}"), record(ago), set(v, &format!("h{i}")));
    // 3 of 4 agree (per-host hostname differs but is excluded): majority.
    let hosts = vec![host(1, 1, 0), host(2, 1, 0), host(3, 1, 0), host(4, 2, 0)];
    let f = facts_for(&hosts, &r);
    match consensus(&r, &f, clock()) {
        Expected::Consensus { holders, of, .. } => assert_eq!((holders, of), (3, 4)),
        other => panic!("expected consensus, got {other:?}"),
    }
    let odd = decide(&r, &f[3], &consensus(&r, &f, clock()), &[], clock());
    assert_eq!(odd.state(), GateState::Closed);
    assert!(odd.reasons[0].text.contains("!= the majority"), "{:?}", odd.reasons);

    // 2 of 4 is not a strict majority.
    let hosts = vec![host(1, 1, 0), host(2, 1, 0), host(3, 2, 0), host(4, 2, 0)];
    assert!(matches!(
        consensus(&r, &facts_for(&hosts, &r), clock()),
        Expected::NoMajority { largest: 2, of: 4 }
    ));

    // A stale host does not count toward the majority.
    let hosts = vec![host(1, 1, 0), host(2, 1, 0), host(3, 1, TTL + 1), host(4, 2, 0)];
    assert!(matches!(
        consensus(&r, &facts_for(&hosts, &r), clock()),
        Expected::NoMajority { largest: 2, .. }
    ));

    // Hosts that never reported count against the majority (inventory of 4, 2 reported).
    let hosts = vec![host(1, 1, 0), host(2, 1, 0)];
    assert!(matches!(
        consensus(&r, &facts_for(&hosts, &r), clock()),
        Expected::NoMajority { largest: 2, of: 4 }
    ));
}

#[test]
fn a_halt_closes_an_otherwise_open_gate_and_says_how_to_lift_it() {
    use crate::store::{HaltRecord, HaltScope};
    let r = role(1);
    let entries = set(1, "x");
    let rec = record(0);
    let facts = HostFacts {
        host: "smars-01",
        record: Some(&rec),
        entries: Some(&entries),
        comparable: Some(comparable(&entries, &r)),
    };
    let halt = HaltRecord {
        id: 1,
        scope: HaltScope::Role("smars".into()),
        reason: "runaway orders".into(),
        halted_by: "alice".into(),
        halted_at_unix_ms: 0,
        resumed_by: None,
        resumed_at_unix_ms: 0,
        resume_reason: String::new(),
        drill: false,
    };
    let gate = decide(&r, &facts, &release_v1(&r, &entries), &[&halt], clock());
    assert_eq!(gate.state(), GateState::Closed);
    assert_eq!(gate.reasons.len(), 1);
    assert_eq!(gate.reasons[0].kind(), ReasonKind::Halted);
    assert_eq!(
        gate.reasons[0].text,
        "halted (role smars) by alice at 1970-01-01T00:00:00Z: runaway orders (lift with: lockstep resume --role smars)"
    );
    // A missing host under a halt lists both.
    let missing = HostFacts { record: None, ..facts };
    let gate = decide(&r, &missing, &release_v1(&r, &entries), &[&halt], clock());
    assert_eq!(gate.state(), GateState::Missing);
    assert_eq!(gate.reasons.len(), 2);
}

fn with(mut base: Vec<Entry>, extra: Vec<Entry>) -> Vec<Entry> {
    base.extend(extra);
    canonicalize(base).unwrap()
}

fn decide_for(entries: &[Entry]) -> Gate {
    let r = role(1);
    let rec = record(0);
    let facts = HostFacts {
        host: "smars-01",
        record: Some(&rec),
        entries: Some(entries),
        comparable: Some(comparable(entries, &r)),
    };
    decide(&r, &facts, &release_v1(&r, entries), &[], clock())
}

fn process(image: u8, exe: &str) -> Entry {
    Entry {
        path: format!("proc:smars@{image:02x}{image:02x}{image:02x}{image:02x}").into_bytes(),
        kind: EntryKind::Process as i32,
        sha256: vec![image; 32],
        link_target: exe.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[test]
fn running_the_released_image_is_fine_and_anything_else_is_named() {
    // Release 7's binary has sha256 01...; disk matches it in every case.
    let ok = decide_for(&with(set(1, "h"), vec![process(1, "/opt/smars/bin/smars")]));
    assert_eq!(ok.state(), GateState::Open, "{:?}", ok.reasons);

    let old = decide_for(&with(set(1, "h"), vec![process(9, "/opt/smars/bin/smars")]));
    assert_eq!(old.state(), GateState::Closed);
    assert_eq!(
        old.reasons.len(),
        1,
        "running state is not set drift: {:?}",
        old.reasons
    );
    assert_eq!(old.reasons[0].kind(), ReasonKind::Process);
    assert!(
        old.reasons[0]
            .text
            .contains("process smars runs /opt/smars/bin/smars sha256 09090909.. != release 7 (01010101..)"),
        "{}",
        old.reasons[0].text
    );

    let deleted = decide_for(&with(set(1, "h"), vec![process(1, "/opt/smars/bin/smars (deleted)")]));
    assert_eq!(
        deleted.reasons[0].text,
        "process smars runs a replaced or deleted /opt/smars/bin/smars, same content as release 7: restart it on the released binary"
    );
    let replaced = decide_for(&with(set(1, "h"), vec![process(9, "/opt/smars/bin/smars (deleted)")]));
    let text = &replaced.reasons[0].text;
    assert!(
        text.contains("replaced or deleted /opt/smars/bin/smars, sha256 09090909.. != release 7 (01010101..)"),
        "{text}"
    );

    let elsewhere = decide_for(&with(set(1, "h"), vec![process(1, "/tmp/smars")]));
    assert!(
        elsewhere.reasons[0]
            .text
            .contains("runs /tmp/smars, which release 7 does not name"),
        "{:?}",
        elsewhere.reasons
    );
}

#[test]
fn retired_flags_close_the_gate_in_config_keys_and_command_lines() {
    let key = |k: &str, v: &str| Entry {
        path: format!("/opt/smars/etc/smars.conf#{k}").into_bytes(),
        kind: EntryKind::ConfigKey as i32,
        value: v.into(),
        ..Default::default()
    };
    let args = |a: &str| Entry {
        path: b"proc:smars/cmdline#0".to_vec(),
        kind: EntryKind::ProcessArgs as i32,
        value: a.replace(' ', "\0"),
        ..Default::default()
    };
    let g = decide_for(&with(set(1, "h"), vec![key("router.power_peg", "1")]));
    let retired: Vec<&str> = g
        .reasons
        .iter()
        .filter(|r| r.kind() == ReasonKind::RetiredFlag)
        .map(|r| r.text.as_str())
        .collect();
    assert_eq!(
        retired,
        vec!["retired flag: router.power_peg = 1 in /opt/smars/etc/smars.conf"]
    );
    // Present but off is not set.
    let g = decide_for(&with(set(1, "h"), vec![key("router.power_peg", "false")]));
    assert!(
        g.reasons.iter().all(|r| r.kind() != ReasonKind::RetiredFlag),
        "{:?}",
        g.reasons
    );
    let g = decide_for(&with(
        set(1, "h"),
        vec![args("/opt/smars/bin/smars --power-peg=on --venue NYSE")],
    ));
    assert_eq!(g.state(), GateState::Closed);
    assert_eq!(
        g.reasons[0].text,
        "retired flag: --power-peg on the command line of smars"
    );
    let g = decide_for(&with(set(1, "h"), vec![args("/opt/smars/bin/smars --power-pegged")]));
    assert_eq!(
        g.state(),
        GateState::Open,
        "a longer flag is another flag: {:?}",
        g.reasons
    );
}

/// Rule 8 on one host holding release 7's files: its TPM binding, its last
/// quote (`quote_ago_ms`, PCR 4's value) and release 7's boot state.
fn decide_boot(require_tpm: bool, tpm: Option<(i64, &str)>, release_pcr4: Option<&str>) -> Gate {
    let mut r = role(1);
    r.require_tpm = require_tpm;
    let mut rec = record(0);
    rec.tpm = tpm.map(|(ago, pcr4)| {
        Box::new(crate::store::TpmBinding {
            quote: (ago >= 0).then(|| crate::store::QuoteRecord {
                at_unix_ms: NOW - ago,
                pcrs: [(0, "00".repeat(32)), (4, pcr4.to_string())].into_iter().collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
    });
    let entries = set(1, "smars-01");
    let facts = HostFacts {
        host: "smars-01",
        record: Some(&rec),
        entries: Some(&entries),
        comparable: Some(comparable(&entries, &r)),
    };
    let boot: std::collections::BTreeMap<u32, String> = release_pcr4
        .map(|v| [(0, "00".repeat(32)), (4, v.to_string())].into_iter().collect())
        .unwrap_or_default();
    let expected = Expected::Release {
        number: 7,
        comparable: comparable(&RELEASE_V1, &r),
        entries: &RELEASE_V1,
        boot: &boot,
    };
    decide(&r, &facts, &expected, &[], clock())
}

fn boot_texts(g: &Gate) -> Vec<&str> {
    g.reasons
        .iter()
        .filter(|r| r.kind() == ReasonKind::Boot)
        .map(|r| r.text.as_str())
        .collect()
}

#[test]
fn rule_8_a_tpm_host_needs_a_fresh_quote_and_the_releases_boot_state() {
    let a = "aa".repeat(32);
    let b = "bb".repeat(32);
    // No TPM, none required, no boot state: rule 8 says nothing.
    let g = decide_boot(false, None, None);
    assert_eq!(g.state(), GateState::Open, "{:?}", g.reasons);
    // A role that requires a TPM closes a host without one.
    let g = decide_boot(true, None, None);
    assert_eq!(g.state(), GateState::Closed);
    assert!(
        boot_texts(&g)[0].contains("requires a TPM-bound identity"),
        "{:?}",
        g.reasons
    );
    // A release with a boot state closes a host that cannot show one.
    let g = decide_boot(false, None, Some(&a));
    assert!(
        boot_texts(&g)[0].contains("release 7 names a boot state"),
        "{:?}",
        g.reasons
    );
    // Bound but never quoted.
    let g = decide_boot(false, Some((-1, &a)), None);
    assert!(boot_texts(&g)[0].contains("no verified TPM quote"), "{:?}", g.reasons);
    // A quote older than quote_max_age (180 s here).
    let g = decide_boot(false, Some((181_000, &a)), Some(&a));
    assert_eq!(g.state(), GateState::Closed);
    assert!(boot_texts(&g)[0].contains("181s ago, at most 180s"), "{:?}", g.reasons);
    // A fresh quote on the release's boot state: OPEN, and the lease ends
    // when the quote gets too old if that comes before the freshness TTL.
    let g = decide_boot(true, Some((170_000, &a)), Some(&a));
    assert_eq!(g.state(), GateState::Open, "{:?}", g.reasons);
    assert_eq!(g.lease_expires_unix_ms, NOW - 170_000 + 180_000);
    // A PCR that differs is named, with both values.
    let g = decide_boot(false, Some((0, &b)), Some(&a));
    assert_eq!(
        boot_texts(&g),
        vec!["boot: PCR 4 sha256 bbbbbbbbbbbbbbbb != release 7 (aaaaaaaaaaaaaaaa)"]
    );
    // A TPM host in a release without a boot state: open on its fresh quote.
    let g = decide_boot(false, Some((0, &b)), None);
    assert_eq!(g.state(), GateState::Open, "{:?}", g.reasons);
}
