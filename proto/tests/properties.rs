//! Property tests of the shared rules (issue 8, part 5): envelope sealing and
//! verification, digest canonicality, diff symmetry. Each property runs over
//! a few hundred generated cases (proptest shrinks any failure to a minimal
//! one).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use lockstep_proto::diff::diff;
use lockstep_proto::digest::{canonicalize, digest};
use lockstep_proto::envelope::{self, Limits, Signer};
use lockstep_proto::pb::{Attestation, ChangeKind, Entry};
use proptest::prelude::*;

fn entry() -> impl Strategy<Value = Entry> {
    (
        // A small alphabet (with a non-UTF-8 byte) so paths collide and sort interestingly.
        proptest::collection::vec(prop_oneof![Just(b'/'), Just(b'a'), Just(b'b'), Just(0xffu8)], 1..6),
        1i32..=13,
        prop_oneof![Just(Vec::new()), proptest::collection::vec(any::<u8>(), 32)],
        any::<u64>(),
        0u32..0o7777,
        0u32..3,
        0u32..3,
        proptest::collection::vec(any::<u8>(), 0..4),
        "[a-z=]{0,4}",
    )
        .prop_map(|(path, kind, sha256, size, mode, uid, gid, link_target, value)| Entry {
            path,
            kind,
            sha256,
            size,
            mode,
            uid,
            gid,
            link_target,
            value,
            ..Default::default()
        })
}

/// A canonical version set: unique paths, sorted.
fn version_set() -> impl Strategy<Value = Vec<Entry>> {
    proptest::collection::vec(entry(), 0..12).prop_map(|list| {
        let unique: BTreeMap<Vec<u8>, Entry> = list.into_iter().map(|e| (e.path.clone(), e)).collect();
        canonicalize(unique.into_values().collect()).unwrap()
    })
}

fn signer() -> Signer {
    Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_sealed_attestation_opens_to_itself(set in version_set(), seq in any::<u64>(), host in "[a-z0-9-]{1,16}") {
        let key = signer();
        let a = Attestation { host, seq, digest: digest(&set).to_vec(), entries: set, full: true, ..Default::default() };
        let env = key.seal_attestation(&a);
        let opened = envelope::open_attestation(&env, key.public_key(), Limits::default()).unwrap();
        prop_assert_eq!(opened, a);
    }

    #[test]
    fn any_flipped_bit_or_other_key_fails_verification(set in version_set(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let key = signer();
        let a = Attestation { host: "h".into(), seq: 1, entries: set, ..Default::default() };
        let mut env = key.seal_attestation(&a);
        prop_assert!(envelope::verify(&env, signer().public_key()).is_err(), "another key verified it");
        if env.payload.is_empty() {
            env.payload.push(1 << bit);
        } else {
            let i = at.index(env.payload.len());
            env.payload[i] ^= 1 << bit;
        }
        prop_assert!(envelope::verify(&env, key.public_key()).is_err(), "a changed payload verified");
    }

    #[test]
    fn the_digest_does_not_depend_on_the_order_entries_were_found_in(set in version_set(), seed in any::<u64>()) {
        let mut shuffled = set.clone();
        // A deterministic shuffle from the seed (xorshift).
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(digest(&canonicalize(shuffled).unwrap()), digest(&set));
    }

    #[test]
    fn any_change_to_a_digested_field_changes_the_digest(set in version_set(), at in any::<prop::sample::Index>(), field in 0usize..8) {
        prop_assume!(!set.is_empty());
        let before = digest(&set);
        let i = at.index(set.len());
        let mut changed = set.clone();
        let e = &mut changed[i];
        match field {
            0 => e.path.push(b'z'),
            1 => e.kind = if e.kind == 13 { 1 } else { e.kind + 1 },
            2 => e.sha256 = if e.sha256.is_empty() { vec![0; 32] } else { Vec::new() },
            3 => e.size = e.size.wrapping_add(1),
            4 => e.mode ^= 1,
            5 => e.uid += 1,
            6 => e.link_target.push(0),
            _ => e.value.push('x'),
        }
        // A renamed path may collide with another entry's: not a version set.
        if let Ok(changed) = canonicalize(changed) {
            prop_assert_ne!(digest(&changed), before);
        }
        // The error text explains an entry; it is not content.
        let mut explained = set.clone();
        explained[i].error = "permission denied".into();
        prop_assert_eq!(digest(&explained), before);
    }

    #[test]
    fn diff_is_symmetric_and_empty_exactly_when_digests_match(a in version_set(), b in version_set()) {
        let ab = diff(&a, &b, "right", |_| false);
        let ba = diff(&b, &a, "right", |_| false);
        prop_assert_eq!(ab.len(), ba.len());
        for (x, y) in ab.iter().zip(&ba) {
            prop_assert_eq!(&x.path, &y.path);
            let mirrored = match x.kind() {
                ChangeKind::Added => ChangeKind::Removed,
                ChangeKind::Removed => ChangeKind::Added,
                other => other,
            };
            prop_assert_eq!(y.kind(), mirrored);
        }
        prop_assert_eq!(ab.is_empty(), digest(&a) == digest(&b));
        prop_assert!(diff(&a, &a, "right", |_| false).is_empty());
    }
}
