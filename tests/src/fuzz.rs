//! Fuzz entry points for what takes bytes from outside: an envelope off the
//! wire, a signed payload (past the signature, where a compromised host's
//! key can reach), a manifest file, a config file. Each must return without
//! panicking, whatever the input. `fuzz/` runs them under libFuzzer
//! (`cargo +nightly fuzz run <name>`); [`smoke`] runs them on stable over
//! seeds and deterministic mutations, so the suite keeps them honest.

use std::path::Path;
use std::sync::OnceLock;

use lockstep_controller::attest::verify::{Checks, verify};
use lockstep_controller::store::HostRecord;
use lockstep_proto::envelope::{Limits, Signer};
use lockstep_proto::pb::{Attestation, Entry, EntryKind, Envelope};
use prost::Message;

/// A fuzz target: arbitrary bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope_bytes", envelope_bytes),
    ("signed_payload", signed_payload),
    ("manifest_json", manifest_json),
    ("config_text", config_text),
];

fn key() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(|| {
        Signer::generate_pkcs8()
            .and_then(|p| Signer::from_pkcs8(&p))
            .unwrap_or_else(|e| panic!("fuzz key: {e}"))
    })
}

fn check(envelope: &Envelope) {
    let record = HostRecord {
        host: "smars-01".into(),
        role: "smars".into(),
        last_seq: 7,
        ..Default::default()
    };
    let checks = Checks {
        peer_host: "smars-01",
        inventory_role: "smars",
        record: &record,
        pinned_key: key().public_key(),
        limits: Limits {
            max_payload_bytes: 1 << 20,
            max_entries: 1000,
        },
        max_skew_ms: 30_000,
        now_unix_ms: 1_800_000_000_000,
    };
    let _ = verify(envelope, &checks);
}

/// Bytes as an `Envelope` off the wire, decoded and verified.
pub fn envelope_bytes(data: &[u8]) {
    if let Ok(envelope) = Envelope::decode(data) {
        check(&envelope);
    }
}

/// Bytes as the payload of an envelope signed by the host's real key: every
/// check after the signature runs on them.
pub fn signed_payload(data: &[u8]) {
    check(&key().seal(data.to_vec()));
}

/// Bytes as a release manifest file (`lockstep release propose --manifest`).
pub fn manifest_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lockstep_proto::manifest::from_json(text);
    }
}

/// Bytes as the controller's and the agent's config files.
pub fn config_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lockstep_controller::config::ControllerConfig::parse(text, Path::new("fuzz.toml"));
        let _ = lockstep_agent::config::AgentConfig::parse(text, Path::new("fuzz.toml"));
    }
}

/// Well-formed inputs of each target, to mutate from.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let entries = vec![
        Entry {
            path: b"/opt/smars/bin/smars".to_vec(),
            kind: EntryKind::File as i32,
            sha256: vec![7; 32],
            size: 4096,
            mode: 0o755,
            ..Default::default()
        },
        Entry {
            path: b"/opt/smars/etc/smars.conf#flag_rlp".to_vec(),
            kind: EntryKind::ConfigKey as i32,
            value: "1".into(),
            ..Default::default()
        },
    ];
    let attestation = Attestation {
        host: "smars-01".into(),
        role: "smars".into(),
        seq: 8,
        measured_at_unix_ms: 1_800_000_000_000,
        digest: lockstep_proto::digest::digest(&entries).to_vec(),
        full: true,
        entries: entries.clone(),
        ..Default::default()
    };
    match target {
        "envelope_bytes" => vec![key().seal_attestation(&attestation).encode_to_vec()],
        "signed_payload" => vec![attestation.encode_to_vec()],
        "manifest_json" => vec![
            lockstep_proto::manifest::to_json(&entries)
                .unwrap_or_default()
                .into_bytes(),
        ],
        "config_text" => vec![
            include_bytes!("../../controller/tests/fixtures/controller_good.toml").to_vec(),
            include_bytes!("../../agent/tests/fixtures/agent_good.toml").to_vec(),
        ],
        _ => Vec::new(),
    }
}

/// Runs every target over its seeds and `mutations` deterministic
/// mutations of them (bit flips, byte changes, cuts, splices); returns the
/// number of inputs run. A panic in a target fails the caller.
pub fn smoke(mutations: usize) -> usize {
    let mut runs = 0;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        for seed in &seeds {
            target(seed);
            runs += 1;
        }
        for _ in 0..mutations {
            let mut input = seeds[usize::try_from(next()).unwrap_or(0) % seeds.len()].clone();
            for _ in 0..=(next() % 4) {
                let len = input.len().max(1);
                let at = usize::try_from(next()).unwrap_or(0) % len;
                match next() % 5 {
                    0 if !input.is_empty() => input[at] ^= 1 << (next() % 8),
                    1 if !input.is_empty() => input[at] = (next() & 0xff) as u8,
                    2 => input.truncate(at),
                    3 => input.insert(at.min(input.len()), (next() & 0xff) as u8),
                    _ => {
                        let from = usize::try_from(next()).unwrap_or(0) % len;
                        let piece: Vec<u8> = input.iter().skip(from).take(16).copied().collect();
                        let at = at.min(input.len());
                        input.splice(at..at, piece);
                    }
                }
            }
            target(&input);
            runs += 1;
        }
    }
    runs
}
