#![no_main]
// See tests/src/fuzz.rs for what this target feeds and why.
libfuzzer_sys::fuzz_target!(|data: &[u8]| lockstep_tests::fuzz::signed_payload(data));
