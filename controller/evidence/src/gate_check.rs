//! `lockstep gate check`: the exit code scripts and `ExecStartPre=` rely on,
//! and the one-line summary people read.

use lockstep_proto::pb::{Gate, GateCheckReply, GateState, ReasonKind};

/// Documented exit codes of `lockstep gate check` (docs/operations.md).
/// When hosts fail for several reasons, the highest in this order wins:
/// halted, drift, boot, rejected, stale/missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    AllOpen = 0,
    /// Bad arguments, denied, or any other error.
    Error = 1,
    /// A host's version set differs from the expected one (or there is
    /// none), a process runs another image, or a retired flag is set.
    Drift = 3,
    /// A host is stale (silent past the TTL) or missing (never reported).
    StaleOrMissing = 4,
    /// A halt covers a host.
    Halted = 5,
    /// The controller could not be reached: nobody can say the gate is open.
    Unreachable = 6,
    /// A host's last attestation was rejected (signature, replay, skew...).
    Rejected = 7,
    /// A host's boot state is not the release's, its TPM quote is not
    /// fresh, or it has no TPM identity where one is needed.
    Boot = 8,
}

pub fn exit_code(gates: &[Gate]) -> ExitCode {
    let has = |k: ReasonKind| gates.iter().any(|g| g.reasons.iter().any(|r| r.kind() == k));
    if gates.iter().all(|g| g.state() == GateState::Open) && !gates.is_empty() {
        ExitCode::AllOpen
    } else if has(ReasonKind::Halted) {
        ExitCode::Halted
    } else if [
        ReasonKind::Drift,
        ReasonKind::NoRelease,
        ReasonKind::NoMajority,
        ReasonKind::Process,
        ReasonKind::RetiredFlag,
    ]
    .into_iter()
    .any(has)
    {
        ExitCode::Drift
    } else if has(ReasonKind::Boot) {
        ExitCode::Boot
    } else if has(ReasonKind::Rejected) {
        ExitCode::Rejected
    } else if has(ReasonKind::Stale) || has(ReasonKind::Missing) || gates.is_empty() {
        ExitCode::StaleOrMissing
    } else {
        ExitCode::Error
    }
}

/// Hosts a recorded summary names at most: a check's record costs a few
/// bytes however many hosts are closed (its gate state names them all).
pub const RECORDED_HOSTS: usize = 10;

/// e.g. `smars: 7/8 OPEN on release 2; smars-08 CLOSED (drift: 3 files)`.
pub fn summary(reply: &GateCheckReply) -> String {
    summary_naming(reply, usize::MAX)
}

/// [`summary`] naming at most [`RECORDED_HOSTS`] hosts that are not OPEN,
/// then how many more: what a `gate.checked` record keeps.
pub fn recorded_summary(reply: &GateCheckReply) -> String {
    summary_naming(reply, RECORDED_HOSTS)
}

fn summary_naming(reply: &GateCheckReply, at_most: usize) -> String {
    let open = reply.gates.iter().filter(|g| g.state() == GateState::Open).count();
    let against = match reply.release {
        0 if reply.mode == "consensus" => "by consensus".to_string(),
        0 => "with no approved release".to_string(),
        n => format!("on release {n}"),
    };
    let mut line = format!("{}: {open}/{} OPEN {against}", reply.role, reply.gates.len());
    let not_open: Vec<&Gate> = reply.gates.iter().filter(|g| g.state() != GateState::Open).collect();
    for g in not_open.iter().take(at_most) {
        line.push_str(&format!("; {} {}", g.host, state_word(g.state())));
        if g.state() == GateState::Closed {
            line.push_str(&format!(" ({})", why(g)));
        }
    }
    if not_open.len() > at_most {
        line.push_str(&format!("; and {} more not OPEN", not_open.len() - at_most));
    }
    line
}

pub fn state_word(s: GateState) -> &'static str {
    match s {
        GateState::Open => "OPEN",
        GateState::Closed => "CLOSED",
        GateState::Missing => "MISSING",
        GateState::Unspecified => "UNKNOWN",
    }
}

/// The reasons of a closed gate, counted by kind, e.g. "drift: 3 files, stale".
pub fn why(g: &Gate) -> String {
    let count = |k: ReasonKind| g.reasons.iter().filter(|r| r.kind() == k).count();
    let mut parts = Vec::new();
    // Files, not entries: a config file's changed keys belong to that file.
    let mut files: Vec<&str> = g
        .reasons
        .iter()
        .filter(|r| r.kind() == ReasonKind::Drift)
        .filter_map(|r| r.text.strip_prefix("drift: "))
        .filter(|t| t.starts_with('/'))
        .map(|t| t.split(' ').next().unwrap_or(t).split('#').next().unwrap_or(t))
        .collect();
    files.sort_unstable();
    files.dedup();
    let more = g
        .reasons
        .iter()
        .any(|r| r.kind() == ReasonKind::Drift && r.text.contains(" more differences"));
    if count(ReasonKind::Drift) > 0 {
        let n = files.len();
        parts.push(format!(
            "drift: {n}{} file{}",
            if more { "+" } else { "" },
            if n == 1 && !more { "" } else { "s" }
        ));
    }
    for (k, word) in [
        (ReasonKind::Missing, "never reported"),
        (ReasonKind::Halted, "halted"),
        (ReasonKind::Rejected, "rejected"),
        (ReasonKind::Stale, "stale"),
        (ReasonKind::NoRelease, "no release"),
        (ReasonKind::NoMajority, "no majority"),
        (ReasonKind::Process, "process"),
        (ReasonKind::RetiredFlag, "retired flag"),
        (ReasonKind::Boot, "boot state"),
        (ReasonKind::Revoked, "revoked"),
    ] {
        if count(k) > 0 {
            parts.push(word.to_string());
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_proto::pb::Reason;

    fn gate(host: &str, state: GateState, kinds: &[ReasonKind]) -> Gate {
        Gate {
            host: host.into(),
            state: state as i32,
            reasons: kinds
                .iter()
                .map(|k| Reason {
                    kind: *k as i32,
                    text: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn exit_codes_follow_documented_precedence() {
        use GateState::*;
        use ReasonKind as K;
        let cases: Vec<(Vec<Gate>, ExitCode)> = vec![
            (vec![gate("a", Open, &[]), gate("b", Open, &[])], ExitCode::AllOpen),
            (vec![], ExitCode::StaleOrMissing),
            (
                vec![gate("a", Open, &[]), gate("b", Missing, &[K::Missing])],
                ExitCode::StaleOrMissing,
            ),
            (
                vec![gate("a", Closed, &[K::Stale]), gate("b", Closed, &[K::Drift])],
                ExitCode::Drift,
            ),
            (
                vec![gate("a", Closed, &[K::Rejected]), gate("b", Closed, &[K::Stale])],
                ExitCode::Rejected,
            ),
            (vec![gate("a", Closed, &[K::Drift, K::Halted])], ExitCode::Halted),
            (vec![gate("a", Closed, &[K::NoRelease])], ExitCode::Drift),
            (
                vec![gate("a", Closed, &[K::Boot]), gate("b", Closed, &[K::Rejected])],
                ExitCode::Boot,
            ),
            (
                vec![gate("a", Closed, &[K::Boot]), gate("b", Closed, &[K::Drift])],
                ExitCode::Drift,
            ),
        ];
        for (gates, want) in cases {
            assert_eq!(exit_code(&gates), want, "{gates:?}");
        }
    }

    #[test]
    fn a_recorded_summary_names_ten_unclean_hosts_and_counts_the_rest() {
        let gates: Vec<Gate> = (0..2_000)
            .map(|i| {
                gate(
                    &format!("smars-{i:04}"),
                    if i < 1_500 { GateState::Open } else { GateState::Missing },
                    &[],
                )
            })
            .collect();
        let reply = GateCheckReply {
            role: "smars".into(),
            mode: "release".into(),
            release: 2,
            gates,
        };
        let line = recorded_summary(&reply);
        assert!(
            line.starts_with("smars: 1500/2000 OPEN on release 2; smars-1500 MISSING;"),
            "{line}"
        );
        assert!(line.ends_with("; smars-1509 MISSING; and 490 more not OPEN"), "{line}");
        assert!(summary(&reply).contains("smars-1999 MISSING"));
    }

    #[test]
    fn summary_names_each_unclean_host() {
        use ReasonKind as K;
        let mut gates: Vec<Gate> = (1..=7)
            .map(|i| gate(&format!("smars-0{i}"), GateState::Open, &[]))
            .collect();
        let mut odd = gate("smars-08", GateState::Closed, &[K::Drift, K::Drift, K::Drift, K::Drift]);
        for (r, t) in odd.reasons.iter_mut().zip([
            "drift: /opt/smars/bin/smars sha256 a.. != release 2 (b..)",
            "drift: /opt/smars/etc/smars.conf sha256 c.. != release 2 (d..)",
            "drift: /opt/smars/etc/smars.conf#router.flag_rlp value 0 != release 2 (1)",
            "drift: /opt/smars/lib/librlp.so absent, release 2 has file sha256 e..",
        ]) {
            r.text = t.into();
        }
        gates.push(odd);
        let reply = GateCheckReply {
            role: "smars".into(),
            mode: "release".into(),
            release: 2,
            gates,
        };
        assert_eq!(
            summary(&reply),
            "smars: 7/8 OPEN on release 2; smars-08 CLOSED (drift: 3 files)"
        );
    }
}
