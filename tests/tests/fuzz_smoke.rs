//! A bounded run of every fuzz target on stable (issue 8, part 5): seeds
//! plus deterministic mutations, so the targets in `fuzz/` cannot rot and
//! the entry points they cover are shaken on every CI run. The real,
//! coverage-guided runs are `cargo +nightly fuzz run <target>` (see
//! docs/reliability.md).

use lockstep_tests::fuzz::{TARGETS, seeds, smoke};

#[test]
fn every_fuzz_target_survives_its_seeds_and_thousands_of_mutations() {
    for (name, _) in TARGETS {
        assert!(!seeds(name).is_empty(), "{name} has no seeds");
    }
    let runs = smoke(5_000);
    assert_eq!(
        runs,
        TARGETS.len() * 5_000 + TARGETS.iter().map(|(n, _)| seeds(n).len()).sum::<usize>()
    );
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let manifest = include_str!("../../fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
    }
}
